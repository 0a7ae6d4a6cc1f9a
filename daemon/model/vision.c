/* vision.c - SigLIP vision tower (spec 4), downsample_mlp_gelu projector
 * (spec 5) and the 2-D image token layout with image_newline and
 * view_seperator (spec 6.1). */
#include "model-impl.h"

#include "image.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define VIT_LN_EPS 1e-6f

/* Tokens per tile after the projector: (ceil(grid / 2))^2. */
static int32_t proj_side(const struct vl2_model *m)
{
    return (m->cfg.vision.grid + 1) / 2;
}

int vl2__vision_scratch_init(struct vl2_model *m, struct vl2_err *err)
{
    const struct vl2_vision_config *v = &m->cfg.vision;
    struct vl2_vision_scratch *s = &m->vs;
    const int64_t B = m->params.vision_batch, P = (int64_t)v->grid * v->grid;
    const int64_t Q = (int64_t)proj_side(m) * proj_side(m), S = v->image_size;
    const int64_t p = v->patch_size, Dv = v->d_model, D = m->cfg.proj.d_model;
    int r;

    if ((r = vl2__model_alloc(m, &s->img, B, 3 * S * S, err)) < 0 ||
        (r = vl2__model_alloc(m, &s->patches, B * P, 3 * p * p, err)) < 0 ||
        (r = vl2__model_alloc(m, &s->x, B * P, Dv, err)) < 0 ||
        (r = vl2__model_alloc(m, &s->h, B * P, Dv, err)) < 0 ||
        (r = vl2__model_alloc(m, &s->o, B * P, Dv, err)) < 0 ||
        (r = vl2__model_alloc(m, &s->qkv, B * P, 3 * Dv, err)) < 0 ||
        (r = vl2__model_alloc(m, &s->mlp, B * P, v->d_mlp, err)) < 0 ||
        (r = vl2__model_alloc(m, &s->unf, B * Q, 4 * Dv, err)) < 0 ||
        (r = vl2__model_alloc(m, &s->p1, B * Q, D, err)) < 0)
        return r;
    s->host = malloc((size_t)(B * 3 * S * S) * sizeof(*s->host));
    if (!s->host)
        return vl2_err_set(err, VL2_ENOMEM, "model: out of memory for pixels");
    m->vs_rows = (int32_t)B;
    return 0;
}

void vl2_image_trace_done(struct vl2_image_trace *t)
{
    if (!t)
        return;
    free(t->vision_features);
    free(t->projector_out);
    t->vision_features = NULL;
    t->projector_out = NULL;
}

void vl2_image_embed_free(struct vl2_model *m, struct vl2_image_embed *e)
{
    if (!e)
        return;
    if (e->rows.data || e->rows.priv)
        m->ops->free_tensor(m->ctx, &e->rows);
    free(e);
}

#define VIEW(t, n) vl2_tensor_rows(&(t), 0, (n))

/* Vision tower + projector for @nt tiles whose normalised pixels are in the
 * img scratch; projector output to rows [0, nt*Q) of @out. */
static int tower(struct vl2_model *m, int32_t nt, struct vl2_tensor *out, float *feat_trace,
                 struct vl2_err *err)
{
    const struct vl2_backend_ops *ops = m->ops;
    struct vl2_backend_ctx *ctx = m->ctx;
    const struct vl2_vision_config *v = &m->cfg.vision;
    struct vl2_vision_scratch *s = &m->vs;
    const int32_t P = v->grid * v->grid, Q = proj_side(m) * proj_side(m);
    const int64_t n = (int64_t)nt * P;
    struct vl2_tensor img = VIEW(s->img, nt), pt = VIEW(s->patches, n);
    struct vl2_tensor x = VIEW(s->x, n), h = VIEW(s->h, n), o = VIEW(s->o, n);
    struct vl2_tensor qkv = VIEW(s->qkv, n), mlp = VIEW(s->mlp, n);
    struct vl2_tensor unf = VIEW(s->unf, (int64_t)nt * Q), p1 = VIEW(s->p1, (int64_t)nt * Q);
    const float scale = 1.0f / sqrtf((float)v->d_head);
    int r, b;

    if ((r = ops->patchify(ctx, &pt, &img, v->image_size, v->patch_size, err)) < 0 ||
        (r = ops->linear(ctx, &x, &pt, &m->patch_w, &m->patch_b, err)) < 0 ||
        (r = ops->add(ctx, &x, &x, &m->pos, err)) < 0)
        return r;
    for (b = 0; b < v->n_layer; b++) {
        const struct vl2_vit_block *k = &m->vit[b];
        if ((r = ops->layernorm(ctx, &h, &x, &k->ln1_w, &k->ln1_b, VIT_LN_EPS, err)) < 0 ||
            (r = ops->linear(ctx, &qkv, &h, &k->qkv_w, &k->qkv_b, err)) < 0 ||
            (r = ops->attn_full(ctx, &o, &qkv, P, v->n_head, v->d_head, scale, err)) < 0 ||
            (r = ops->linear(ctx, &h, &o, &k->proj_w, &k->proj_b, err)) < 0 ||
            (r = ops->add(ctx, &x, &x, &h, err)) < 0 ||
            (r = ops->layernorm(ctx, &h, &x, &k->ln2_w, &k->ln2_b, VIT_LN_EPS, err)) < 0 ||
            (r = ops->linear(ctx, &mlp, &h, &k->fc1_w, &k->fc1_b, err)) < 0 ||
            (r = ops->gelu_tanh(ctx, &mlp, err)) < 0 ||
            (r = ops->linear(ctx, &h, &mlp, &k->fc2_w, &k->fc2_b, err)) < 0 ||
            (r = ops->add(ctx, &x, &x, &h, err)) < 0)
            return r;
    }
    r = ops->layernorm(ctx, &h, &x, &m->vit_norm_w, &m->vit_norm_b, VIT_LN_EPS, err);
    if (r < 0)
        return r;
    if (feat_trace) {
        r = ops->read(ctx, &h, 0, feat_trace, (size_t)n * (size_t)v->d_model * sizeof(float),
                      err);
        if (r < 0)
            return r;
    }
    if ((r = ops->unfold2x2(ctx, &unf, &h, v->grid, err)) < 0 ||
        (r = ops->linear(ctx, &p1, &unf, &m->proj0_w, &m->proj0_b, err)) < 0 ||
        (r = ops->gelu_erf(ctx, &p1, err)) < 0 ||
        (r = ops->linear(ctx, out, &p1, &m->proj2_w, &m->proj2_b, err)) < 0)
        return r;
    return 0;
}

/* Token layout of spec 6.1: the rows of the output that come from the
 * projector (dst_img <- src_img; tile t's projector rows start at
 * slot[t] * Q) and those that are newline (special row 0) or separator
 * (special row 1). */
static void layout(int32_t hs, int32_t tw, int32_t th, const int32_t *slot, int32_t *dst_img,
                   int32_t *src_img, int32_t *ret_n_img, int32_t *dst_sp, int32_t *src_sp,
                   int32_t *ret_n_sp)
{
    const int32_t Q = hs * hs;
    int32_t k = 0, n_img = 0, n_sp = 0, r, c;

    for (r = 0; r < hs; r++) {
        for (c = 0; c < hs; c++) {
            dst_img[n_img] = k++;
            src_img[n_img++] = slot[0] * Q + r * hs + c;
        }
        dst_sp[n_sp] = k++;
        src_sp[n_sp++] = 0;
    }
    dst_sp[n_sp] = k++;
    src_sp[n_sp++] = 1;
    for (r = 0; r < th * hs; r++) {
        int32_t ty = r / hs, rr = r % hs;
        for (c = 0; c < tw * hs; c++) {
            int32_t tx = c / hs, cc = c % hs;
            dst_img[n_img] = k++;
            src_img[n_img++] = slot[1 + ty * tw + tx] * Q + rr * hs + cc;
        }
        dst_sp[n_sp] = k++;
        src_sp[n_sp++] = 0;
    }
    *ret_n_img = n_img;
    *ret_n_sp = n_sp;
}

/* An image on its way through the vision tower (vl2_model_image_begin). */
struct vl2_image_job {
    const uint8_t    *tiles;     /* the caller's, [n_tiles, 3, S, S] */
    int32_t           n_tiles, tiles_w, tiles_h, n_tok;
    int32_t          *slot;      /* [n_tiles] distinct index of each tile, then
                                  * uniq [n_tiles]: first tile of each distinct one */
    int32_t           n_uniq;    /* distinct tiles */
    int32_t           n_done;    /* distinct tiles through the tower */
    struct vl2_tensor proj;      /* [n_uniq * Q, D] projector rows, distinct order */
    float            *feat;      /* trace only: [n_tiles, P, Dv] */
    float            *pout;      /* trace only: [n_tiles, Q, D] */
};

void vl2_model_image_abort(struct vl2_model *m, struct vl2_image_job *j)
{
    if (!j)
        return;
    if (j->proj.data || j->proj.priv)
        m->ops->free_tensor(m->ctx, &j->proj);
    free(j->slot);
    free(j->feat);
    free(j->pout);
    free(j);
}

/* vl2_model_image_begin, with host buffers for @trace when not NULL. */
static int image_begin(struct vl2_model *m, const uint8_t *tiles, int32_t n_tiles,
                       int32_t tiles_w, int32_t tiles_h, struct vl2_image_trace *trace,
                       struct vl2_image_job **ret, struct vl2_err *err)
{
    const struct vl2_vision_config *v = &m->cfg.vision;
    const int32_t Q = proj_side(m) * proj_side(m), P = v->grid * v->grid;
    const int64_t S = v->image_size, D = m->cfg.proj.d_model;
    const size_t tile_bytes = 3 * (size_t)(S * S), Dv = (size_t)v->d_model;
    struct vl2_image_job *j;
    int32_t t, *uniq, n_tok;
    int r;

    if (!tiles || !ret || tiles_w <= 0 || tiles_h <= 0 || tiles_w > 64 || tiles_h > 64 ||
        n_tiles != 1 + tiles_w * tiles_h)
        return vl2_err_set(err, VL2_EINVAL, "model: image of %d tiles for a %dx%d tiling "
                           "(expected 1 global + %d local tiles)", n_tiles, tiles_w, tiles_h,
                           tiles_w > 0 && tiles_h > 0 ? tiles_w * tiles_h : 0);
    n_tok = vl2_model_image_tokens(m, tiles_w, tiles_h);
    if (n_tok > m->n_ctx)
        return vl2_err_set(err, VL2_ELIMIT, "model: an image of %dx%d tiles takes %d tokens, "
                           "more than the context of %d", tiles_w, tiles_h, n_tok, m->n_ctx);
    if (!m->vs_rows) {
        r = vl2__vision_scratch_init(m, err);
        if (r < 0)
            return r;
    }
    j = calloc(1, sizeof(*j));
    if (!j)
        return vl2_err_set(err, VL2_ENOMEM, "model: out of memory");
    j->tiles = tiles;
    j->n_tiles = n_tiles;
    j->tiles_w = tiles_w;
    j->tiles_h = tiles_h;
    j->n_tok = n_tok;
    j->slot = malloc(2 * (size_t)n_tiles * sizeof(*j->slot));
    if (!j->slot) {
        r = vl2_err_set(err, VL2_ENOMEM, "model: out of memory");
        goto out_free;
    }
    if (trace) {
        memset(trace, 0, sizeof(*trace));
        trace->n_patches = P;
        trace->n_proj = Q;
        j->feat = malloc((size_t)n_tiles * (size_t)P * Dv * sizeof(*j->feat));
        j->pout = malloc((size_t)n_tiles * (size_t)Q * (size_t)D * sizeof(*j->pout));
        if (!j->feat || !j->pout) {
            r = vl2_err_set(err, VL2_ENOMEM, "model: out of memory for the image trace");
            goto out_free;
        }
    }
    /* Identical tiles give identical rows: run the tower once for each
     * distinct tile.  (A 1x1 tiling always repeats the global view, spec 3.4.) */
    uniq = j->slot + n_tiles;
    for (t = 0; t < n_tiles; t++) {
        int32_t k;
        for (k = 0; k < j->n_uniq; k++)
            if (!memcmp(tiles + (size_t)t * tile_bytes, tiles + (size_t)uniq[k] * tile_bytes,
                        tile_bytes))
                break;
        if (k == j->n_uniq)
            uniq[j->n_uniq++] = t;
        j->slot[t] = k;
    }
    {
        int64_t ne[2] = { (int64_t)j->n_uniq * Q, D };
        r = m->ops->alloc(m->ctx, &j->proj, VL2_DTYPE_F32, 2, ne, err);
        if (r < 0)
            goto out_free;
    }
    *ret = j;
    return 0;

out_free:
    vl2_model_image_abort(m, j);
    return r;
}

int vl2_model_image_begin(struct vl2_model *m, const uint8_t *tiles, int32_t n_tiles,
                          int32_t tiles_w, int32_t tiles_h, struct vl2_image_job **ret,
                          struct vl2_err *err)
{
    return image_begin(m, tiles, n_tiles, tiles_w, tiles_h, NULL, ret, err);
}

int vl2_model_image_step(struct vl2_model *m, struct vl2_image_job *j, int32_t max_tiles,
                         int *ret_done, struct vl2_err *err)
{
    const struct vl2_backend_ops *ops = m->ops;
    const struct vl2_vision_config *v = &m->cfg.vision;
    const int32_t Q = proj_side(m) * proj_side(m), P = v->grid * v->grid;
    const int64_t plane = (int64_t)v->image_size * v->image_size;
    const size_t tile_bytes = 3 * (size_t)plane, Dv = (size_t)v->d_model;
    const int32_t *uniq;
    int32_t end;
    int r;

    if (!j)
        return vl2_err_set(err, VL2_EINVAL, "model: no image job");
    uniq = j->slot + j->n_tiles;
    end = max_tiles <= 0 || max_tiles >= j->n_uniq - j->n_done ? j->n_uniq
                                                                : j->n_done + max_tiles;
    while (j->n_done < end) {
        const int32_t u0 = j->n_done;
        int32_t nt = end - u0 < m->vs_rows ? end - u0 : m->vs_rows, k;
        struct vl2_tensor dst = vl2_tensor_rows(&j->proj, (int64_t)u0 * Q, (int64_t)nt * Q);
        for (k = 0; k < nt; k++)
            vl2_image_normalize(m->vs.host + (size_t)k * tile_bytes,
                                j->tiles + (size_t)uniq[u0 + k] * tile_bytes, tile_bytes,
                                (size_t)plane, m->pcfg.image_mean, m->pcfg.image_std,
                                m->pcfg.normalize);
        r = ops->write(m->ctx, &m->vs.img, 0, m->vs.host, (size_t)nt * tile_bytes * sizeof(float),
                       err);
        if (r < 0)
            return r;
        /* features of distinct tile u go to the slot of the tile itself */
        r = tower(m, nt, &dst, j->feat ? j->feat + (size_t)u0 * P * Dv : NULL, err);
        if (r < 0)
            return r;
        j->n_done += nt;
    }
    if (ret_done)
        *ret_done = j->n_done == j->n_uniq;
    return 0;
}

void vl2_model_image_progress(const struct vl2_image_job *j, int32_t *ret_done,
                              int32_t *ret_total)
{
    *ret_done = j ? j->n_done : 0;
    *ret_total = j ? j->n_uniq : 0;
}

/* vl2_model_image_finish, filling @trace (begun with image_begin) when not
 * NULL. */
static int image_finish(struct vl2_model *m, struct vl2_image_job *j,
                        struct vl2_image_embed **ret, struct vl2_image_trace *trace,
                        struct vl2_err *err)
{
    const struct vl2_backend_ops *ops = m->ops;
    const struct vl2_vision_config *v = &m->cfg.vision;
    const int32_t hs = proj_side(m), Q = hs * hs, P = v->grid * v->grid;
    const int64_t D = m->cfg.proj.d_model;
    const size_t Dv = (size_t)v->d_model;
    struct vl2_image_embed *e = NULL;
    int32_t *idx = NULL, n_img = 0, n_sp = 0, n_tok, t;
    int r;

    if (!j)
        return vl2_err_set(err, VL2_EINVAL, "model: no image job");
    n_tok = j->n_tok;
    if (j->n_done != j->n_uniq) {
        r = vl2_err_set(err, VL2_EINVAL, "model: image finished with %d of its %d distinct "
                        "tiles encoded", j->n_done, j->n_uniq);
        goto out_free;
    }
    e = calloc(1, sizeof(*e));
    idx = malloc(4 * (size_t)n_tok * sizeof(*idx));
    if (!e || !idx) {
        r = vl2_err_set(err, VL2_ENOMEM, "model: out of memory");
        goto out_free;
    }
    {
        int64_t ne[2] = { n_tok, D };
        r = ops->alloc(m->ctx, &e->rows, VL2_DTYPE_F32, 2, ne, err);
        if (r < 0)
            goto out_free;
    }
    if (trace && j->pout) {
        /* expand distinct tiles (slot order) to every tile, last first so
         * that no slot is overwritten before it is read (slot[t] <= t) */
        r = ops->read(m->ctx, &j->proj, 0, j->pout,
                      (size_t)j->n_uniq * Q * (size_t)D * sizeof(float), err);
        if (r < 0)
            goto out_free;
        for (t = j->n_tiles - 1; t >= 0; t--) {
            memmove(j->feat + (size_t)t * P * Dv, j->feat + (size_t)j->slot[t] * P * Dv,
                    (size_t)P * Dv * sizeof(float));
            memmove(j->pout + (size_t)t * Q * (size_t)D,
                    j->pout + (size_t)j->slot[t] * Q * (size_t)D,
                    (size_t)Q * (size_t)D * sizeof(float));
        }
    }

    layout(hs, j->tiles_w, j->tiles_h, j->slot, idx, idx + n_tok, &n_img, idx + 2 * n_tok,
           idx + 3 * n_tok, &n_sp);
    if (n_img + n_sp != n_tok) {
        r = vl2_err_set(err, VL2_EINTERNAL, "model: image layout has %d rows, expected %d",
                        n_img + n_sp, n_tok);
        goto out_free;
    }
    r = ops->copy_rows(m->ctx, &e->rows, idx, &j->proj, idx + n_tok, n_img, err);
    if (r < 0)
        goto out_free;
    r = ops->copy_rows(m->ctx, &e->rows, idx + 2 * n_tok, &m->special, idx + 3 * n_tok, n_sp,
                       err);
    if (r < 0)
        goto out_free;
    r = ops->sync(m->ctx, err);
    if (r < 0)
        goto out_free;
    free(idx);
    e->n_tokens = n_tok;
    e->n_tiles = j->n_tiles;
    e->n_distinct = j->n_uniq;
    e->tiles_w = j->tiles_w;
    e->tiles_h = j->tiles_h;
    if (trace && j->pout) {
        trace->vision_features = j->feat;
        trace->projector_out = j->pout;
        j->feat = NULL;
        j->pout = NULL;
    }
    vl2_model_image_abort(m, j);
    *ret = e;
    return 0;

out_free:
    vl2_image_embed_free(m, e);
    free(idx);
    vl2_model_image_abort(m, j);
    return r;
}

int vl2_model_image_finish(struct vl2_model *m, struct vl2_image_job *j,
                           struct vl2_image_embed **ret, struct vl2_err *err)
{
    return image_finish(m, j, ret, NULL, err);
}

int vl2_model_encode_image(struct vl2_model *m, const uint8_t *tiles, int32_t n_tiles,
                           int32_t tiles_w, int32_t tiles_h, struct vl2_image_embed **ret,
                           struct vl2_image_trace *trace, struct vl2_err *err)
{
    struct vl2_image_job *j = NULL;
    int r, done = 0;

    r = image_begin(m, tiles, n_tiles, tiles_w, tiles_h, trace, &j, err);
    if (r < 0)
        return r;
    r = vl2_model_image_step(m, j, 0, &done, err);
    if (r < 0) {
        vl2_model_image_abort(m, j);
        return r;
    }
    return image_finish(m, j, ret, trace, err);
}

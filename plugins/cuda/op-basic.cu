/* op-basic.cu - the small ops: embed, rmsnorm, layernorm, add, argmax,
 * gelu, swiglu, copy_rows, patchify, unfold2x2 and rope.  Each is validated
 * and recorded here (one struct of cuda-ctx.h per shape of record) and
 * executed by vl2__cu_exec_basic, one kernel of k-basic.cu each. */
#include <stdlib.h>
#include <string.h>

#include "cuda-ctx.h"

int vl2__cu_op_embed(struct vl2_backend_ctx *ctx, struct vl2_tensor *out,
                  const struct vl2_tensor *table, const int32_t *ids, struct vl2_err *err)
{
    struct op_rec r;
    int64_t i;
    int rc;

    if ((rc = vl2__cu_check_t(out, "embed", "out", 1, err)) < 0 ||
        (rc = vl2__cu_check_t(table, "embed", "table", 0, err)) < 0)
        return rc;
    if (out->cols != table->cols)
        return vl2_err_set(err, VL2_EINVAL, "cuda: embed: out has %lld columns, table %lld",
                           (long long)out->cols, (long long)table->cols);
    if (out->rows > 0 && !ids)
        return vl2_err_set(err, VL2_EINVAL, "cuda: embed: ids is NULL");
    for (i = 0; i < out->rows; i++)
        if (ids[i] < 0 || ids[i] >= table->rows)
            return vl2_err_set(err, VL2_EINVAL,
                               "cuda: embed: token id %d at %lld is outside the table "
                               "(%lld rows)",
                               ids[i], (long long)i, (long long)table->rows);
    if (out->rows == 0)
        return 0;
    rec_init(&r, OPK_EMBED);
    r.u.embed.out = td(out);
    r.u.embed.table = td(table);
    r.u.embed.n = out->rows;
    return vl2__cu_submit(ctx, &r, ids, (size_t)out->rows * sizeof(int32_t), err);
}

int vl2__cu_op_rmsnorm(struct vl2_backend_ctx *ctx, struct vl2_tensor *out,
                    const struct vl2_tensor *x, const struct vl2_tensor *w, float eps,
                    struct vl2_err *err)
{
    struct op_rec r;
    int rc;

    if ((rc = vl2__cu_check_t(out, "rmsnorm", "out", 1, err)) < 0 ||
        (rc = vl2__cu_check_t(x, "rmsnorm", "x", 1, err)) < 0 ||
        (rc = vl2__cu_check_t(w, "rmsnorm", "w", 0, err)) < 0)
        return rc;
    if (out->rows != x->rows || out->cols != x->cols || w->rows * w->cols != x->cols ||
        (w->rows != 1 && w->ld != w->cols))
        return vl2_err_set(err, VL2_EINVAL, "cuda: rmsnorm: shapes differ (x %lld x %lld, "
                           "out %lld x %lld, w %lld)",
                           (long long)x->rows, (long long)x->cols, (long long)out->rows,
                           (long long)out->cols, (long long)(w->rows * w->cols));
    if (x->rows == 0)
        return 0;
    rec_init(&r, OPK_RMSNORM);
    r.u.norm.out = td(out);
    r.u.norm.x = td(x);
    r.u.norm.w = td(w);
    r.u.norm.eps = eps;
    return vl2__cu_submit(ctx, &r, NULL, 0, err);
}

int vl2__cu_op_layernorm(struct vl2_backend_ctx *ctx, struct vl2_tensor *out,
                      const struct vl2_tensor *x, const struct vl2_tensor *w,
                      const struct vl2_tensor *b, float eps, struct vl2_err *err)
{
    struct op_rec r;
    int rc;

    if ((rc = vl2__cu_check_t(out, "layernorm", "out", 1, err)) < 0 ||
        (rc = vl2__cu_check_t(x, "layernorm", "x", 1, err)) < 0 ||
        (rc = vl2__cu_check_t(w, "layernorm", "w", 0, err)) < 0 ||
        (b && (rc = vl2__cu_check_t(b, "layernorm", "b", 0, err)) < 0))
        return rc;
    if (out->rows != x->rows || out->cols != x->cols || w->rows * w->cols != x->cols ||
        (b && b->rows * b->cols != x->cols) || (w->rows != 1 && w->ld != w->cols) ||
        (b && b->rows != 1 && b->ld != b->cols))
        return vl2_err_set(err, VL2_EINVAL, "cuda: layernorm: shapes differ");
    if (x->rows == 0)
        return 0;
    rec_init(&r, OPK_LAYERNORM);
    r.u.norm.out = td(out);
    r.u.norm.x = td(x);
    r.u.norm.w = td(w);
    r.u.norm.b = td(b);
    r.u.norm.eps = eps;
    return vl2__cu_submit(ctx, &r, NULL, 0, err);
}

int vl2__cu_op_add(struct vl2_backend_ctx *ctx, struct vl2_tensor *out, const struct vl2_tensor *a,
                const struct vl2_tensor *b, struct vl2_err *err)
{
    struct op_rec r;
    int rc;

    if ((rc = vl2__cu_check_t(out, "add", "out", 1, err)) < 0 ||
        (rc = vl2__cu_check_t(a, "add", "a", 0, err)) < 0 ||
        (rc = vl2__cu_check_t(b, "add", "b", 0, err)) < 0)
        return rc;
    if (out->rows != a->rows || out->cols != a->cols || b->cols != a->cols ||
        b->rows > a->rows || (b->rows == 0 && a->rows > 0))
        return vl2_err_set(err, VL2_EINVAL,
                           "cuda: add: shapes a %lld x %lld, b %lld x %lld, out %lld x %lld",
                           (long long)a->rows, (long long)a->cols, (long long)b->rows,
                           (long long)b->cols, (long long)out->rows, (long long)out->cols);
    if (a->rows == 0)
        return 0;
    rec_init(&r, OPK_ADD);
    r.u.bin.out = td(out);
    r.u.bin.a = td(a);
    r.u.bin.b = td(b);
    return vl2__cu_submit(ctx, &r, NULL, 0, err);
}

int vl2__cu_op_argmax(struct vl2_backend_ctx *ctx, struct vl2_tensor *out,
                   const struct vl2_tensor *x, struct vl2_err *err)
{
    struct op_rec r;
    int rc;

    if ((rc = vl2__cu_check_t(x, "argmax", "x", 1, err)) < 0)
        return rc;
    if (!out || !out->data || out->dtype != VL2_DTYPE_I32 || out->rows * out->cols != x->rows ||
        (out->cols != 1 && out->rows != 1))
        return vl2_err_set(err, VL2_EINVAL, "cuda: argmax: 'out' must be an I32 vector of %lld "
                           "entries", (long long)x->rows);
    if (x->rows == 0)
        return 0;
    rec_init(&r, OPK_ARGMAX);
    r.u.bin.out = td(out);
    r.u.bin.a = td(x);
    return vl2__cu_submit(ctx, &r, NULL, 0, err);
}

static int gelu_any(struct vl2_backend_ctx *ctx, struct vl2_tensor *x, int kind,
                    struct vl2_err *err)
{
    struct op_rec r;
    int rc;

    if ((rc = vl2__cu_check_t(x, kind ? "gelu_erf" : "gelu_tanh", "x", 1, err)) < 0)
        return rc;
    if (x->rows == 0)
        return 0;
    rec_init(&r, OPK_GELU);
    r.u.gelu.x = td(x);
    r.u.gelu.kind = kind;
    return vl2__cu_submit(ctx, &r, NULL, 0, err);
}

int vl2__cu_op_gelu_tanh(struct vl2_backend_ctx *ctx, struct vl2_tensor *x, struct vl2_err *err)
{
    return gelu_any(ctx, x, 0, err);
}

int vl2__cu_op_gelu_erf(struct vl2_backend_ctx *ctx, struct vl2_tensor *x, struct vl2_err *err)
{
    return gelu_any(ctx, x, 1, err);
}

int vl2__cu_op_swiglu(struct vl2_backend_ctx *ctx, struct vl2_tensor *out,
                   const struct vl2_tensor *gate, const struct vl2_tensor *up,
                   struct vl2_err *err)
{
    struct op_rec r;
    int rc;

    if ((rc = vl2__cu_check_t(out, "swiglu", "out", 1, err)) < 0 ||
        (rc = vl2__cu_check_t(gate, "swiglu", "gate", 1, err)) < 0 ||
        (rc = vl2__cu_check_t(up, "swiglu", "up", 1, err)) < 0)
        return rc;
    if (out->rows != gate->rows || out->cols != gate->cols || up->rows != gate->rows ||
        up->cols != gate->cols)
        return vl2_err_set(err, VL2_EINVAL, "cuda: swiglu: shapes differ");
    if (gate->rows == 0)
        return 0;
    rec_init(&r, OPK_SWIGLU);
    r.u.bin.out = td(out);
    r.u.bin.a = td(gate);
    r.u.bin.b = td(up);
    return vl2__cu_submit(ctx, &r, NULL, 0, err);
}

int vl2__cu_op_copy_rows(struct vl2_backend_ctx *ctx, struct vl2_tensor *dst,
                      const int32_t *dst_rows, const struct vl2_tensor *src,
                      const int32_t *src_rows, int32_t n, struct vl2_err *err)
{
    struct op_rec r;
    int32_t *idx;
    int32_t k;
    int rc;

    if ((rc = vl2__cu_check_t(dst, "copy_rows", "dst", 0, err)) < 0 ||
        (rc = vl2__cu_check_t(src, "copy_rows", "src", 0, err)) < 0)
        return rc;
    if (n < 0 || (n > 0 && (!dst_rows || !src_rows)))
        return vl2_err_set(err, VL2_EINVAL, "cuda: copy_rows: %d rows, index arrays %s", n,
                           n > 0 ? "missing" : "");
    if (dst->cols != src->cols)
        return vl2_err_set(err, VL2_EINVAL, "cuda: copy_rows: dst has %lld columns, src %lld",
                           (long long)dst->cols, (long long)src->cols);
    for (k = 0; k < n; k++)
        if (dst_rows[k] < 0 || dst_rows[k] >= dst->rows || src_rows[k] < 0 ||
            src_rows[k] >= src->rows)
            return vl2_err_set(err, VL2_EINVAL,
                               "cuda: copy_rows: pair %d (dst row %d of %lld, src row %d of "
                               "%lld) out of range",
                               k, dst_rows[k], (long long)dst->rows, src_rows[k],
                               (long long)src->rows);
    if (n == 0)
        return 0;
    idx = (int32_t *)malloc(2 * (size_t)n * sizeof(int32_t));
    if (!idx)
        return vl2_err_set(err, VL2_ENOMEM, "cuda: out of host memory");
    memcpy(idx, dst_rows, (size_t)n * sizeof(int32_t));
    memcpy(idx + n, src_rows, (size_t)n * sizeof(int32_t));
    rec_init(&r, OPK_COPY_ROWS);
    r.u.copy_rows.dst = td(dst);
    r.u.copy_rows.src = td(src);
    r.u.copy_rows.n = n;
    rc = vl2__cu_submit(ctx, &r, idx, 2 * (size_t)n * sizeof(int32_t), err);
    free(idx);
    return rc;
}

int vl2__cu_op_patchify(struct vl2_backend_ctx *ctx, struct vl2_tensor *out,
                     const struct vl2_tensor *img, int32_t image_size, int32_t patch,
                     struct vl2_err *err)
{
    struct op_rec r;
    int64_t g;
    int rc;

    if ((rc = vl2__cu_check_t(out, "patchify", "out", 1, err)) < 0 ||
        (rc = vl2__cu_check_t(img, "patchify", "img", 1, err)) < 0)
        return rc;
    if (image_size <= 0 || patch <= 0 || patch > image_size || image_size > 16384)
        return vl2_err_set(err, VL2_EINVAL, "cuda: patchify: image size %d, patch %d",
                           image_size, patch);
    g = image_size / patch;
    if (img->cols != 3 * (int64_t)image_size * image_size || out->rows != img->rows * g * g ||
        out->cols != 3 * (int64_t)patch * patch)
        return vl2_err_set(err, VL2_EINVAL,
                           "cuda: patchify: img %lld x %lld, out %lld x %lld do not match "
                           "size %d, patch %d",
                           (long long)img->rows, (long long)img->cols, (long long)out->rows,
                           (long long)out->cols, image_size, patch);
    if (img->rows == 0)
        return 0;
    rec_init(&r, OPK_PATCHIFY);
    r.u.patchify.out = td(out);
    r.u.patchify.img = td(img);
    r.u.patchify.image_size = image_size;
    r.u.patchify.patch = patch;
    r.u.patchify.n_img = img->rows;
    return vl2__cu_submit(ctx, &r, NULL, 0, err);
}

int vl2__cu_op_unfold2x2(struct vl2_backend_ctx *ctx, struct vl2_tensor *out,
                      const struct vl2_tensor *feat, int32_t grid, struct vl2_err *err)
{
    struct op_rec r;
    int64_t g2, n_img;
    int rc;

    if ((rc = vl2__cu_check_t(out, "unfold2x2", "out", 1, err)) < 0 ||
        (rc = vl2__cu_check_t(feat, "unfold2x2", "feat", 1, err)) < 0)
        return rc;
    if (grid <= 0 || grid > 4096 || feat->rows % ((int64_t)grid * grid) != 0)
        return vl2_err_set(err, VL2_EINVAL, "cuda: unfold2x2: grid %d does not divide %lld rows",
                           grid, (long long)feat->rows);
    n_img = feat->rows / ((int64_t)grid * grid);
    g2 = (grid + 1) / 2;
    if (out->rows != n_img * g2 * g2 || out->cols != 4 * feat->cols)
        return vl2_err_set(err, VL2_EINVAL, "cuda: unfold2x2: out is %lld x %lld, expected "
                           "%lld x %lld",
                           (long long)out->rows, (long long)out->cols,
                           (long long)(n_img * g2 * g2), (long long)(4 * feat->cols));
    if (n_img == 0)
        return 0;
    rec_init(&r, OPK_UNFOLD);
    r.u.unfold.out = td(out);
    r.u.unfold.feat = td(feat);
    r.u.unfold.grid = grid;
    r.u.unfold.n_img = n_img;
    return vl2__cu_submit(ctx, &r, NULL, 0, err);
}

int vl2__cu_op_rope(struct vl2_backend_ctx *ctx, struct vl2_tensor *x, int32_t n_head,
                 int32_t head_stride, int32_t rot_off, int32_t rot_dim, float theta,
                 int32_t layout, struct vl2_err *err)
{
    struct op_rec r;
    int rc;

    if ((rc = vl2__cu_check_t(x, "rope", "x", 1, err)) < 0 ||
        (rc = vl2__cu_need_batch(ctx, "rope", x, err)) < 0)
        return rc;
    if (n_head <= 0 || head_stride <= 0 || rot_off < 0 || rot_dim <= 0 || (rot_dim & 1) ||
        rot_dim > 512 || rot_off + rot_dim > head_stride ||
        (int64_t)(n_head - 1) * head_stride + rot_off + rot_dim > x->cols)
        return vl2_err_set(err, VL2_EINVAL,
                           "cuda: rope: %d heads, stride %d, rotated [%d, %d) do not fit %lld "
                           "columns (rot_dim even, at most 512)",
                           n_head, head_stride, rot_off, rot_off + rot_dim, (long long)x->cols);
    if (layout != VL2_ROPE_NEOX && layout != VL2_ROPE_INTERLEAVED)
        return vl2_err_set(err, VL2_EINVAL, "cuda: rope: layout %d", layout);
    if (!(theta > 0.0f))
        return vl2_err_set(err, VL2_EINVAL, "cuda: rope: theta %g", (double)theta);
    rec_init(&r, OPK_ROPE);
    r.u.rope.x = td(x);
    r.u.rope.n_head = n_head;
    r.u.rope.head_stride = head_stride;
    r.u.rope.rot_off = rot_off;
    r.u.rope.rot_dim = rot_dim;
    r.u.rope.layout = layout;
    r.u.rope.theta = theta;
    return vl2__cu_submit(ctx, &r, NULL, 0, err);
}

int vl2__cu_exec_basic(struct vl2_backend_ctx *ctx, const struct op_rec *r, struct vl2_err *err)
{
    const void *stage = ctx->stage_d + r->stage_off;
    cudaError_t e;

    switch (r->kind) {
    case OPK_EMBED: {
        const struct rec_embed *o = &r->u.embed;
        e = vl2__cu_embed((float *)o->out.data, o->out.ld, o->table.data, o->table.ld,
                          o->table.dtype, (const int32_t *)stage, (int)o->n, (int)o->out.cols,
                          ctx->ks);
        return launched(e, "embed", err);
    }
    case OPK_RMSNORM: {
        const struct rec_norm *o = &r->u.norm;
        e = vl2__cu_rmsnorm((float *)o->out.data, o->out.ld, (const float *)o->x.data, o->x.ld,
                            o->w.data, o->w.dtype, (int)o->x.rows, (int)o->x.cols, o->eps,
                            ctx->ks);
        return launched(e, "rmsnorm", err);
    }
    case OPK_LAYERNORM: {
        const struct rec_norm *o = &r->u.norm;
        e = vl2__cu_layernorm((float *)o->out.data, o->out.ld, (const float *)o->x.data,
                              o->x.ld, o->w.data, o->w.dtype, o->b.data, o->b.dtype,
                              (int)o->x.rows, (int)o->x.cols, o->eps, ctx->ks);
        return launched(e, "layernorm", err);
    }
    case OPK_ADD: {
        const struct rec_binary *o = &r->u.bin;
        e = vl2__cu_add((float *)o->out.data, o->out.ld, o->a.data, o->a.ld, o->a.dtype,
                        o->b.data, o->b.ld, o->b.dtype, o->b.rows, (int)o->a.rows,
                        (int)o->a.cols, ctx->ks);
        return launched(e, "add", err);
    }
    case OPK_ARGMAX: {
        /* out: a column ([n, 1], rows ld apart) or a row ([1, n]) */
        const struct rec_binary *o = &r->u.bin;
        e = vl2__cu_argmax((int32_t *)o->out.data, o->out.cols == 1 ? o->out.ld : 1,
                           (const float *)o->a.data, o->a.ld, (int)o->a.rows, (int)o->a.cols,
                           ctx->ks);
        return launched(e, "argmax", err);
    }
    case OPK_GELU: {
        const struct rec_gelu *o = &r->u.gelu;
        e = vl2__cu_gelu((float *)o->x.data, o->x.ld, (int)o->x.rows, (int)o->x.cols,
                         (int)o->kind, ctx->ks);
        return launched(e, "gelu", err);
    }
    case OPK_SWIGLU: {
        const struct rec_binary *o = &r->u.bin;
        e = vl2__cu_swiglu((float *)o->out.data, o->out.ld, (const float *)o->a.data, o->a.ld,
                           (const float *)o->b.data, o->b.ld, (int)o->a.rows, (int)o->a.cols,
                           ctx->ks);
        return launched(e, "swiglu", err);
    }
    case OPK_COPY_ROWS: {
        const struct rec_copy_rows *o = &r->u.copy_rows;
        e = vl2__cu_copy_rows(o->dst.data, o->dst.ld, o->dst.dtype, (const int32_t *)stage,
                              o->src.data, o->src.ld, o->src.dtype,
                              (const int32_t *)stage + o->n, (int)o->n, (int)o->dst.cols,
                              ctx->ks);
        return launched(e, "copy_rows", err);
    }
    case OPK_PATCHIFY: {
        const struct rec_patchify *o = &r->u.patchify;
        e = vl2__cu_patchify((float *)o->out.data, o->out.ld, (const float *)o->img.data,
                             o->img.ld, (int)o->n_img, (int)o->image_size, (int)o->patch,
                             ctx->ks);
        return launched(e, "patchify", err);
    }
    case OPK_UNFOLD: {
        const struct rec_unfold *o = &r->u.unfold;
        e = vl2__cu_unfold2x2((float *)o->out.data, o->out.ld, (const float *)o->feat.data,
                              o->feat.ld, (int)o->n_img, (int)o->grid, (int)o->feat.cols,
                              ctx->ks);
        return launched(e, "unfold2x2", err);
    }
    case OPK_ROPE: {
        const struct rec_rope *o = &r->u.rope;
        e = vl2__cu_rope((float *)o->x.data, o->x.ld, meta_rows(ctx), (int)o->x.rows,
                         (int)o->n_head, (int)o->head_stride, (int)o->rot_off, (int)o->rot_dim,
                         o->theta, (int)o->layout, ctx->ks);
        return launched(e, "rope", err);
    }
    }
    return vl2_err_set(err, VL2_EINTERNAL, "cuda: op record %d is no basic op", r->kind);
}

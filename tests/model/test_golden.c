/* test_golden.c - golden parity of every stage for one micro preset:
 * vision features, projector output, input embeddings, logits of the last
 * prompt position and after the first generated token, the top-20 ids of
 * every greedy step, and the 12 greedy ids; the image embedding encoded
 * tile by tile (vl2_model_image_step) equals the one-shot one bit for bit.
 *
 * usage: test_golden --model CKPT_DIR --golden GOLDEN_PRESET_DIR
 *                    --pixels PIXELS_DIR [--plugin-dir DIR] [--threads N]
 *                    [--max-rows N] [--case NAME]... [--backend-options K=V,...]
 *                    [--bf16]
 *
 * --bf16: the bf16 tolerances of the golden README (as tests/gpu/gpu_golden.c):
 * max|mine - golden| / max|golden| <= 5e-2 for vision features, projector
 * output and input embeddings, <= 2e-2 for the logits rows; the top-20 ids
 * are not compared and a greedy id only where the golden top-1 margin is at
 * least 0.5 (a flip below is legitimate).  For precision=bf16 of the CPU
 * backend (--backend-options precision=bf16).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "testutil.h"

#define TOL 1e-3
#define TOL_BF16_FEAT 5e-2
#define TOL_BF16_LOGIT 2e-2
#define BF16_MARGIN_MIN 0.5f
#define TOPK 20

struct opts {
    const char *model, *golden, *pixels, *plugin_dir, *backend_options;
    int threads, max_rows;
    int bf16;
    const char *cases[8];
    int n_cases;
};

/* Top-k ids equal to the golden ones, except swaps of near-equal values. */
static void check_topk(const char *cs, int step, const float *logits, size_t V,
                       const struct vl2_npy *gi, const struct vl2_npy *gv)
{
    const int64_t *gid = (const int64_t *)gi->data + (size_t)step * TOPK;
    const float *gval = (const float *)gv->data + (size_t)step * TOPK;
    int32_t mine[TOPK];
    float scale = fabsf(gval[0]);
    int j, bad = 0;

    tu_topk(logits, V, TOPK, mine);
    for (j = 0; j < TOPK; j++) {
        if (mine[j] == gid[j])
            continue;
        /* a swap with a neighbour whose golden value is within tolerance */
        if ((j > 0 && fabsf(gval[j] - gval[j - 1]) <= 1e-3f * scale) ||
            (j + 1 < TOPK && fabsf(gval[j] - gval[j + 1]) <= 1e-3f * scale))
            continue;
        bad++;
    }
    CHECK_MSG(bad == 0, "%s step %d: %d of the top-%d ids differ from the golden ones", cs,
             step, bad, TOPK);
}

/* Encode one image piecewise: begin, steps of @per tiles (the first of
 * @first when > 0), finish. */
static int encode_steps(struct vl2_model *m, const uint8_t *tiles, int32_t nt, int32_t tw,
                        int32_t th, int32_t first, int32_t per, struct vl2_image_embed **ret,
                        int *ret_steps, struct vl2_err *err)
{
    struct vl2_image_job *job = NULL;
    int r, done = 0, steps = 0;

    r = vl2_model_image_begin(m, tiles, nt, tw, th, &job, err);
    if (r < 0)
        return r;
    while (!done) {
        int32_t was, now, total;
        vl2_model_image_progress(job, &was, &total);
        r = vl2_model_image_step(m, job, steps == 0 && first > 0 ? first : per, &done, err);
        if (r < 0) {
            vl2_model_image_abort(m, job);
            return r;
        }
        vl2_model_image_progress(job, &now, &total);
        CHECK_MSG(now > was && now <= total && (done == (now == total)),
                 "step %d: %d -> %d of %d distinct tiles, done %d", steps, (int)was, (int)now,
                 (int)total, done);
        steps++;
    }
    *ret_steps = steps;
    return vl2_model_image_finish(m, job, ret, err);
}

/* Rows of two embeddings equal bit for bit. */
static void check_same_embed(struct vl2_model *m, const char *what,
                             const struct vl2_image_embed *a, const struct vl2_image_embed *b)
{
    struct vl2_backend_ctx *ctx;
    const struct vl2_backend_ops *ops = vl2_model_backend(m, &ctx);
    const size_t D = (size_t)vl2_model_config(m)->lm.d_model;
    struct vl2_err err = { 0 };
    float *ra, *rb;
    size_t n;

    CHECK_MSG(a->n_tokens == b->n_tokens && a->n_distinct == b->n_distinct &&
             a->n_tiles == b->n_tiles, "%s: %d/%d tokens, %d/%d distinct tiles", what,
             (int)a->n_tokens, (int)b->n_tokens, (int)a->n_distinct, (int)b->n_distinct);
    if (a->n_tokens != b->n_tokens)
        return;
    n = (size_t)a->n_tokens * D;
    ra = malloc(n * sizeof(*ra));
    rb = malloc(n * sizeof(*rb));
    if (!ra || !rb) {
        CHECK_MSG(0, "%s: out of memory", what);
    } else if (ops->read(ctx, &a->rows, 0, ra, n * sizeof(*ra), &err) < 0 ||
               ops->read(ctx, &b->rows, 0, rb, n * sizeof(*rb), &err) < 0) {
        CHECK_MSG(0, "%s: read: %s", what, err.msg);
    } else {
        CHECK_MSG(memcmp(ra, rb, n * sizeof(*ra)) == 0, "%s: embeddings differ", what);
    }
    free(ra);
    free(rb);
}

/* An unfinished job: finish refuses it (and frees it), abort frees one. */
static void check_unfinished(struct vl2_model *m, const char *cs, const uint8_t *tiles,
                             int32_t nt, int32_t tw, int32_t th)
{
    struct vl2_image_job *job = NULL;
    struct vl2_image_embed *e = NULL;
    struct vl2_err err = { 0 };
    int done = 1, r;

    r = vl2_model_image_begin(m, tiles, nt, tw, th, &job, &err);
    CHECK_MSG(r == 0, "%s: begin: %s", cs, err.msg);
    if (r < 0)
        return;
    r = vl2_model_image_step(m, job, 1, &done, &err);
    CHECK_MSG(r == 0 && !done, "%s: one step of %d tiles: %d done %d", cs, (int)nt, r, done);
    r = vl2_model_image_finish(m, job, &e, &err);
    CHECK_MSG(r == VL2_EINVAL && !e, "%s: finish of an unfinished image gave %d", cs, r);
    job = NULL;
    r = vl2_model_image_begin(m, tiles, nt, tw, th, &job, &err);
    CHECK_MSG(r == 0, "%s: begin: %s", cs, err.msg);
    if (r == 0 && vl2_model_image_step(m, job, 1, &done, &err) < 0)
        CHECK_MSG(0, "%s: step: %s", cs, err.msg);
    vl2_model_image_abort(m, job);
    r = vl2_model_image_begin(m, tiles, nt, tw + 1, th, &job, &err);
    CHECK_MSG(r == VL2_EINVAL, "%s: begin with a wrong tiling gave %d", cs, r);
}

static void run_case(struct vl2_model *m, const struct opts *o, const char *cs)
{
    const struct vl2_model_config *cfg = vl2_model_config(m);
    const size_t D = (size_t)cfg->lm.d_model, V = (size_t)cfg->lm.n_vocab;
    char *cdir = tu_path(o->golden, cs), *pdir = tu_path(o->pixels, cs);
    const double tol_f = o->bf16 ? TOL_BF16_FEAT : TOL, tol_l = o->bf16 ? TOL_BF16_LOGIT : TOL;
    struct vl2_image_embed *img[16] = { 0 };
    struct vl2_npy px = { 0 }, g = { 0 }, gl = { 0 }, gi = { 0 }, gv = { 0 };
    struct vl2_seq_params sp = vl2_seq_default_params();
    struct vl2_seq *seq = NULL;
    struct vl2_err err = { 0 };
    struct tu_case c;
    float *embeds = NULL;
    int i, t0 = 0, r;
    size_t step;

    printf("case %s\n", cs);
    tu_case_load(&c, cdir);
    CHECK_MSG(c.n_images == 0 || c.image_token_id == 128815, "%s: image token id %d", cs,
             (int)c.image_token_id);

    /* vision tower and projector, image by image */
    if (c.n_images > 0) {
        size_t tile_bytes, off_f = 0, off_p = 0;
        struct vl2_npy gf = { 0 }, gp = { 0 };
        tu_npy_load(&px, pdir, "pixel_values_u8.npy");
        tu_npy_load(&gf, cdir, "vision_features.npy");
        tu_npy_load(&gp, cdir, "projector_out.npy");
        tile_bytes = (size_t)(px.shape[1] * px.shape[2] * px.shape[3]);
        for (i = 0; i < c.n_images; i++) {
            struct vl2_image_trace tr;
            int32_t tw = c.crop[i][0], th = c.crop[i][1], nt = 1 + tw * th;
            size_t nf, np;
            struct vl2_npy sub;
            const uint8_t *tiles = (const uint8_t *)px.data + (size_t)t0 * tile_bytes;
            struct vl2_image_embed *whole = NULL, *mixed = NULL;
            int steps = 0, steps2 = 0;
            r = vl2_model_encode_image(m, tiles, nt, tw, th, &whole, &tr, &err);
            CHECK_MSG(r == 0, "%s: encode image %d: %s", cs, i, err.msg);
            if (r < 0)
                goto out;
            /* a 1x1 tiling repeats the global view: the tower runs once */
            CHECK_MSG(whole->n_distinct == (tw * th == 1 ? 1 : nt), "%s: %d distinct tiles of %d",
                     cs, (int)whole->n_distinct, (int)nt);
            /* piecewise, one tile per step: the prompt below uses this
             * embedding (inputs_embeds against the golden ones), and it is
             * bit for bit the one-shot one; so is 1, then 2 at a time */
            r = encode_steps(m, tiles, nt, tw, th, 0, 1, &img[i], &steps, &err);
            CHECK_MSG(r == 0, "%s: encode image %d tile by tile: %s", cs, i, err.msg);
            if (r == 0) {
                CHECK_MSG(steps == whole->n_distinct, "%s: %d steps for %d distinct tiles", cs,
                         steps, (int)whole->n_distinct);
                check_same_embed(m, "one tile per step", img[i], whole);
            }
            r = encode_steps(m, tiles, nt, tw, th, 1, 2, &mixed, &steps2, &err);
            CHECK_MSG(r == 0, "%s: encode image %d 1, then 2 tiles per step: %s", cs, i, err.msg);
            if (r == 0)
                check_same_embed(m, "1 then 2 tiles per step", mixed, whole);
            if (whole->n_distinct > 1)
                check_unfinished(m, cs, tiles, nt, tw, th);
            vl2_image_embed_free(m, mixed);
            vl2_image_embed_free(m, whole);
            if (!img[i])
                goto out;
            nf = (size_t)nt * (size_t)tr.n_patches * (size_t)cfg->vision.d_model;
            np = (size_t)nt * (size_t)tr.n_proj * D;
            /* compare this image's slice of the golden arrays */
            sub = gf;
            sub.count = nf;
            sub.data = (float *)gf.data + off_f;
            tu_compare("vision_features", tr.vision_features, &sub, nf, tol_f);
            sub = gp;
            sub.count = np;
            sub.data = (float *)gp.data + off_p;
            tu_compare("projector_out", tr.projector_out, &sub, np, tol_f);
            off_f += nf;
            off_p += np;
            t0 += nt;
            vl2_image_trace_done(&tr);
        }
        CHECK_MSG(off_f == gf.count && off_p == gp.count && t0 == px.shape[0],
                 "%s: tiles do not cover the golden arrays", cs);
        vl2_npy_done(&gf);
        vl2_npy_done(&gp);
    }

    /* prefill with the input embeddings traced */
    sp.capacity = (int32_t)(c.n_ids + c.n_gen + 1);
    r = vl2_seq_new(m, &sp, &seq, &err);
    CHECK_MSG(r == 0, "%s: seq: %s", cs, err.msg);
    if (r < 0)
        goto out;
    embeds = malloc(c.n_ids * D * sizeof(*embeds));
    {
        struct vl2_step_item it = {
            .seq = seq, .ids = c.ids, .n_ids = (int32_t)c.n_ids,
            .images = (const struct vl2_image_embed *const *)img, .n_images = c.n_images,
            .want_logits = 1, .ret_embeds = embeds,
        };
        r = vl2_model_step(m, &it, 1, &err);
        CHECK_MSG(r == 0, "%s: prefill: %s", cs, err.msg);
        if (r < 0)
            goto out;
    }
    tu_npy_load(&g, cdir, "inputs_embeds.npy");
    tu_compare("inputs_embeds", embeds, &g, c.n_ids * D, tol_f);
    tu_npy_load(&gl, cdir, "logits.npy");
    tu_npy_load(&gi, cdir, "logits_topk_ids.npy");
    tu_npy_load(&gv, cdir, "logits_topk_values.npy");
    CHECK_MSG(gl.count == 2 * V && gi.dtype == VL2_NPY_I64 && gi.shape[1] == TOPK &&
             (size_t)gi.shape[0] == c.n_gen, "%s: golden logits shapes", cs);
    {
        struct vl2_npy row = gl;
        row.count = V;
        tu_compare("logits[0]", vl2_seq_logits(seq), &row, V, tol_l);
    }

    /* greedy generation */
    for (step = 0; step < c.n_gen; step++) {
        int32_t id;
        const float *gval = (const float *)gv.data + step * TOPK;
        if (!o->bf16)
            check_topk(cs, (int)step, vl2_seq_logits(seq), V, &gi, &gv);
        id = vl2_seq_sample(seq);
        if (!o->bf16 || gval[0] - gval[1] >= BF16_MARGIN_MIN)
            CHECK_MSG(id == c.gen[step], "%s step %zu: generated %d, golden %d", cs, step, (int)id,
                     (int)c.gen[step]);
        if (step + 1 == c.n_gen)
            break;
        id = c.gen[step];  /* follow the golden path */
        r = vl2_model_decode(m, &seq, &id, 1, &err);
        CHECK_MSG(r == 0, "%s: decode: %s", cs, err.msg);
        if (r < 0)
            goto out;
        if (step == 0) {
            struct vl2_npy row = gl;
            row.count = V;
            row.data = (float *)gl.data + V;
            tu_compare("logits[1]", vl2_seq_logits(seq), &row, V, tol_l);
        }
    }
    printf("  generated %zu ids checked\n", c.n_gen);

out:
    vl2_seq_free(seq);
    for (i = 0; i < 16; i++)
        vl2_image_embed_free(m, img[i]);
    free(embeds);
    vl2_npy_done(&px);
    vl2_npy_done(&g);
    vl2_npy_done(&gl);
    vl2_npy_done(&gi);
    vl2_npy_done(&gv);
    tu_case_done(&c);
    free(cdir);
    free(pdir);
}

int main(int argc, char **argv)
{
    static const char *all[] = { "a384", "wide", "tall", "textonly" };
    struct opts o = { .threads = 0, .max_rows = 0 };
    struct vl2_model_params mp = vl2_model_default_params();
    struct vl2_model *m = NULL;
    struct vl2_err err = { 0 };
    int i;

    for (i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--bf16")) {
            o.bf16 = 1;
            continue;
        }
        if (!v) {
            fprintf(stderr, "%s: missing value\n", a);
            return 2;
        }
        if (!strcmp(a, "--model"))
            o.model = v;
        else if (!strcmp(a, "--golden"))
            o.golden = v;
        else if (!strcmp(a, "--pixels"))
            o.pixels = v;
        else if (!strcmp(a, "--plugin-dir"))
            o.plugin_dir = v;
        else if (!strcmp(a, "--threads"))
            o.threads = atoi(v);
        else if (!strcmp(a, "--max-rows"))
            o.max_rows = atoi(v);
        else if (!strcmp(a, "--backend-options"))
            o.backend_options = v;
        else if (!strcmp(a, "--case") && o.n_cases < 8)
            o.cases[o.n_cases++] = v;
        else {
            fprintf(stderr, "unknown option %s\n", a);
            return 2;
        }
        i++;
    }
    if (!o.model || !o.golden || !o.pixels) {
        fprintf(stderr, "usage: test_golden --model DIR --golden DIR --pixels DIR\n");
        return 2;
    }
    mp.plugin_dir = o.plugin_dir;
    mp.n_threads = o.threads;
    mp.backend_options = o.backend_options;
    mp.image_token_id = 128815;
    if (o.max_rows > 0)
        mp.max_rows = o.max_rows;
    if (vl2_model_load(&m, o.model, &mp, &err) < 0) {
        fprintf(stderr, "FAIL load %s: %s\n", o.model, err.msg);
        return 1;
    }
    if (!o.n_cases)
        for (i = 0; i < 4; i++)
            o.cases[o.n_cases++] = all[i];
    for (i = 0; i < o.n_cases; i++)
        run_case(m, &o, o.cases[i]);
    vl2_model_free(m);
    if (check_failures) {
        printf("%d failures\n", check_failures);
        return 1;
    }
    printf("all stages within tolerance\n");
    return 0;
}

/* test_batch.c - results do not depend on how work is batched:
 *   - chunked prefill (small max_rows, and a prompt fed in pieces across
 *     calls with image_row0) equals one-shot prefill;
 *   - several sequences decoding together give the logits each gets alone;
 *   - a pass mixing a prompt and decode rows equals separate passes;
 *   - 1 and 2 backend threads give the same logits (float rounding only);
 *   - a greedy sequence whose ids the backend chooses (device_greedy, the
 *     argmax op) gets the ids the host sampler picks from the logits, in
 *     passes that mix it with a sequence whose logits are read back.
 * Also checks against the golden logits so that "equal" means "right".
 *
 * usage: test_batch --model CKPT_DIR --golden GOLDEN_PRESET_DIR
 *                   --pixels PIXELS_DIR [--plugin-dir DIR]
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "testutil.h"

#define SAME 1e-5   /* same computation, different batching or threads */
#define TOL 1e-3    /* golden tolerance */

static const char *o_model, *o_golden, *o_pixels, *o_plugin_dir;

static struct vl2_model *load2(int threads, int max_rows, int max_logit_rows)
{
    struct vl2_model_params mp = vl2_model_default_params();
    struct vl2_model *m;
    struct vl2_err err = { 0 };

    mp.plugin_dir = o_plugin_dir;
    mp.n_threads = threads;
    mp.max_rows = max_rows;
    mp.max_logit_rows = max_logit_rows;
    mp.image_token_id = 128815;
    if (vl2_model_load(&m, o_model, &mp, &err) < 0) {
        fprintf(stderr, "FAIL load: %s\n", err.msg);
        exit(1);
    }
    return m;
}

static struct vl2_model *load(int threads, int max_rows)
{
    return load2(threads, max_rows, 64);
}

static struct vl2_seq *new_seq(struct vl2_model *m, int32_t cap)
{
    struct vl2_seq_params sp = vl2_seq_default_params();
    struct vl2_seq *s;
    struct vl2_err err = { 0 };

    sp.capacity = cap;
    if (vl2_seq_new(m, &sp, &s, &err) < 0) {
        fprintf(stderr, "FAIL seq: %s\n", err.msg);
        exit(1);
    }
    return s;
}

static struct vl2_image_embed *encode(struct vl2_model *m, const struct tu_case *c,
                                      const struct vl2_npy *px)
{
    struct vl2_image_embed *e;
    struct vl2_err err = { 0 };

    if (vl2_model_encode_image(m, px->data, 1 + c->crop[0][0] * c->crop[0][1], c->crop[0][0],
                               c->crop[0][1], &e, NULL, &err) < 0) {
        fprintf(stderr, "FAIL encode: %s\n", err.msg);
        exit(1);
    }
    return e;
}

/* Prefill the a384 case at @max_rows rows per pass; returns a copy of the logits. */
static float *prefill_a384(struct vl2_model *m, const struct tu_case *c,
                           const struct vl2_npy *px)
{
    const size_t V = (size_t)vl2_model_config(m)->lm.n_vocab;
    struct vl2_image_embed *e = encode(m, c, px);
    struct vl2_seq *s = new_seq(m, (int32_t)c->n_ids + 8);
    struct vl2_err err = { 0 };
    float *out = malloc(V * sizeof(*out));
    int r;

    r = vl2_model_prefill(m, s, c->ids, c->n_ids, (const struct vl2_image_embed *const *)&e, 1,
                          &err);
    CHECK_MSG(r == 0, "prefill: %s", err.msg);
    memcpy(out, vl2_seq_logits(s), V * sizeof(*out));
    vl2_seq_free(s);
    vl2_image_embed_free(m, e);
    return out;
}

static void check_same(const char *what, const float *a, const float *b, size_t n, double tol)
{
    double e = tu_rel_err(a, b, n);

    printf("  %-44s err %.3g\n", what, e);
    CHECK_MSG(e <= tol, "%s: relative difference %.3g over %.1g", what, e, tol);
}

/* Three sequences decoding together vs each alone on model @m2, then one
 * pass mixing a whole prompt with two decode rows. */
static void batched(struct vl2_model *m2, const struct tu_case *ca_, const struct tu_case *ct_,
                    const struct vl2_npy *px_)
{
    const size_t V = (size_t)vl2_model_config(m2)->lm.n_vocab;
    const struct tu_case ca = *ca_, ct = *ct_;
    struct vl2_err err = { 0 };
    int r;

    enum { NS = 3, STEPS = 5 };
    struct vl2_image_embed *e = encode(m2, &ca, px_);
    const struct vl2_image_embed *const *imgs = (const struct vl2_image_embed *const *)&e;
    struct vl2_seq *alone[NS], *batch[NS];
    const int32_t *ids[NS] = { ct.ids, ct.ids, ca.ids };
    size_t n_ids[NS] = { ct.n_ids, 7, ca.n_ids };
    int32_t tok[NS];
    int k, st;

    printf("batched decode of %d sequences, %d steps\n", NS, STEPS);
    for (k = 0; k < NS; k++) {
        int with_img = ids[k] == ca.ids;
        alone[k] = new_seq(m2, 2048);
        batch[k] = new_seq(m2, 2048);
        r = vl2_model_prefill(m2, alone[k], ids[k], n_ids[k], with_img ? imgs : NULL,
                              (size_t)with_img, &err);
        CHECK_MSG(r == 0, "prefill alone: %s", err.msg);
        r = vl2_model_prefill(m2, batch[k], ids[k], n_ids[k], with_img ? imgs : NULL,
                              (size_t)with_img, &err);
        CHECK_MSG(r == 0, "prefill batch: %s", err.msg);
    }
    for (st = 0; st < STEPS; st++) {
        for (k = 0; k < NS; k++) {
            tok[k] = vl2_seq_sample(alone[k]);
            r = vl2_model_decode(m2, &alone[k], &tok[k], 1, &err);
            CHECK_MSG(r == 0, "decode alone: %s", err.msg);
        }
        r = vl2_model_decode(m2, batch, tok, NS, &err);
        CHECK_MSG(r == 0, "decode batch: %s", err.msg);
        for (k = 0; k < NS; k++) {
            char what[64];
            snprintf(what, sizeof(what), "step %d seq %d: batch vs alone", st, k);
            check_same(what, vl2_seq_logits(batch[k]), vl2_seq_logits(alone[k]), V, SAME);
            CHECK_MSG(vl2_seq_len(batch[k]) == vl2_seq_len(alone[k]), "lengths differ");
        }
    }

    /* one pass with a whole prompt and two decode rows */
    {
        struct vl2_seq *fresh = new_seq(m2, 2048), *ref = new_seq(m2, 2048);
        struct vl2_step_item it[3] = {
            { .seq = batch[0], .ids = &tok[0], .n_ids = 1, .want_logits = 1 },
            { .seq = fresh, .ids = ct.ids, .n_ids = (int32_t)ct.n_ids, .want_logits = 1 },
            { .seq = batch[2], .ids = &tok[2], .n_ids = 1, .want_logits = 1 },
        };
        for (k = 0; k < NS; k++)
            tok[k] = vl2_seq_sample(alone[k]);
        r = vl2_model_step(m2, it, 3, &err);
        CHECK_MSG(r == 0, "mixed step: %s", err.msg);
        r = vl2_model_decode(m2, &alone[0], &tok[0], 1, &err);
        CHECK_MSG(r == 0, "decode: %s", err.msg);
        r = vl2_model_decode(m2, &alone[2], &tok[2], 1, &err);
        CHECK_MSG(r == 0, "decode: %s", err.msg);
        r = vl2_model_prefill(m2, ref, ct.ids, ct.n_ids, NULL, 0, &err);
        CHECK_MSG(r == 0, "prefill: %s", err.msg);
        check_same("mixed pass: decode row 0", vl2_seq_logits(batch[0]),
                   vl2_seq_logits(alone[0]), V, SAME);
        check_same("mixed pass: prompt", vl2_seq_logits(fresh), vl2_seq_logits(ref), V,
                   SAME);
        check_same("mixed pass: decode row 2", vl2_seq_logits(batch[2]),
                   vl2_seq_logits(alone[2]), V, SAME);
        vl2_seq_free(fresh);
        vl2_seq_free(ref);
    }
    for (k = 0; k < NS; k++) {
        vl2_seq_free(alone[k]);
        vl2_seq_free(batch[k]);
    }
    vl2_image_embed_free(m2, e);
}

/* Device greedy vs host greedy over a prompt and 8 decode steps, the two
 * sequences in the same passes. */
static void device_greedy(struct vl2_model *m, const struct tu_case *ct)
{
    struct vl2_seq_params sp = vl2_seq_default_params();
    struct vl2_seq *host = new_seq(m, 2048), *dev, *warm, *two[2];
    struct vl2_err err = { 0 };
    int32_t tok[2];
    int r, st, same = 0;

    printf("device greedy vs host greedy\n");
    sp.capacity = 2048;
    sp.device_greedy = 1;
    r = vl2_seq_new(m, &sp, &dev, &err);
    CHECK_MSG(r == 0, "seq: %s", err.msg);
    sp.sampler.temperature = 0.7f;   /* not greedy: the logits come back */
    r = vl2_seq_new(m, &sp, &warm, &err);
    CHECK_MSG(r == 0, "seq: %s", err.msg);
    CHECK_MSG(vl2_seq_device_greedy(dev) == 1, "the CPU backend has argmax: device greedy is on");
    CHECK_MSG(vl2_seq_device_greedy(host) == 0 && vl2_seq_device_greedy(warm) == 0,
             "device greedy only when asked for and greedy");
    {
        struct vl2_step_item it[2] = {
            { .seq = host, .ids = ct->ids, .n_ids = (int32_t)ct->n_ids, .want_logits = 1 },
            { .seq = dev, .ids = ct->ids, .n_ids = (int32_t)ct->n_ids, .want_logits = 1 },
        };
        r = vl2_model_step(m, it, 2, &err);
        CHECK_MSG(r == 0, "prefill: %s", err.msg);
    }
    CHECK_MSG(vl2_seq_logits(dev) == NULL && vl2_seq_logits(host) != NULL,
             "logits are read back only for the host-sampled sequence");
    two[0] = host;
    two[1] = dev;
    for (st = 0; st < 8; st++) {
        tok[0] = vl2_seq_sample(host);
        tok[1] = vl2_seq_sample(dev);
        CHECK_MSG(tok[0] == tok[1], "step %d: device chose %d, the host sampler %d", st,
                 (int)tok[1], (int)tok[0]);
        same += tok[0] == tok[1];
        r = vl2_model_decode(m, two, tok, 2, &err);
        CHECK_MSG(r == 0, "decode: %s", err.msg);
    }
    printf("  %d of 8 ids the same\n", same);
    vl2_seq_free(host);
    vl2_seq_free(dev);
    vl2_seq_free(warm);
}

int main(int argc, char **argv)
{
    struct vl2_model *m1, *m2, *mc;
    struct tu_case ca, ct;
    struct vl2_npy px = { 0 }, gl = { 0 };
    struct vl2_err err = { 0 };
    float *one_shot, *chunked, *two_threads;
    size_t V;
    char *dir;
    int i, r;

    for (i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--model"))
            o_model = argv[i + 1];
        else if (!strcmp(argv[i], "--golden"))
            o_golden = argv[i + 1];
        else if (!strcmp(argv[i], "--pixels"))
            o_pixels = argv[i + 1];
        else if (!strcmp(argv[i], "--plugin-dir"))
            o_plugin_dir = argv[i + 1];
    }
    if (!o_model || !o_golden || !o_pixels) {
        fprintf(stderr, "usage: test_batch --model DIR --golden DIR --pixels DIR\n");
        return 2;
    }
    dir = tu_path(o_golden, "a384");
    tu_case_load(&ca, dir);
    tu_npy_load(&gl, dir, "logits.npy");
    free(dir);
    dir = tu_path(o_golden, "textonly");
    tu_case_load(&ct, dir);
    free(dir);
    dir = tu_path(o_pixels, "a384");
    tu_npy_load(&px, dir, "pixel_values_u8.npy");
    free(dir);

    m1 = load(1, 512);
    m2 = load(2, 512);
    mc = load(1, 37);
    V = (size_t)vl2_model_config(m1)->lm.n_vocab;

    /* ---- chunked prefill and threads ---- */
    printf("prefill of a384 (%zu tokens)\n", ca.n_ids);
    one_shot = prefill_a384(m1, &ca, &px);
    chunked = prefill_a384(mc, &ca, &px);
    two_threads = prefill_a384(m2, &ca, &px);
    {
        struct vl2_npy row = gl;
        row.count = V;
        tu_compare("one-shot vs golden", one_shot, &row, V, TOL);
    }
    check_same("chunked (37 rows a pass) vs one-shot", chunked, one_shot, V, SAME);
    check_same("2 threads vs 1 thread", two_threads, one_shot, V, SAME);

    /* the prompt fed in three calls, cutting through the image rows */
    {
        struct vl2_image_embed *e = encode(m1, &ca, &px);
        const struct vl2_image_embed *const *imgs = (const struct vl2_image_embed *const *)&e;
        struct vl2_seq *s = new_seq(m1, (int32_t)ca.n_ids);
        int32_t cut[4] = { 0, 100, 300, (int32_t)ca.n_ids };
        int64_t used = 0;
        int k, j;
        for (k = 0; k < 3; k++) {
            struct vl2_step_item it = {
                .seq = s,
                .ids = ca.ids + cut[k],
                .n_ids = cut[k + 1] - cut[k],
                .images = imgs,
                .n_images = 1,
                .image_row0 = used,
                .want_logits = k == 2,
            };
            r = vl2_model_step(m1, &it, 1, &err);
            CHECK_MSG(r == 0, "piecewise prefill: %s", err.msg);
            for (j = cut[k]; j < cut[k + 1]; j++)
                used += ca.ids[j] == 128815;
        }
        CHECK_MSG(vl2_seq_len(s) == (int32_t)ca.n_ids, "piecewise: length %d", (int)vl2_seq_len(s));
        check_same("piecewise prefill (3 calls) vs one-shot", vl2_seq_logits(s), one_shot, V, SAME);
        vl2_seq_free(s);
        vl2_image_embed_free(m1, e);
    }

    batched(m2, &ca, &ct, &px);
    device_greedy(m2, &ct);
    {
        struct vl2_model *ml = load2(1, 512, 2);
        printf("(again with at most 2 logit rows a pass)\n");
        batched(ml, &ca, &ct, &px);
        vl2_model_free(ml);
    }

    free(one_shot);
    free(chunked);
    free(two_threads);
    vl2_model_free(m1);
    vl2_model_free(m2);
    vl2_model_free(mc);
    vl2_npy_done(&px);
    vl2_npy_done(&gl);
    tu_case_done(&ca);
    tu_case_done(&ct);
    if (check_failures) {
        printf("%d failures\n", check_failures);
        return 1;
    }
    printf("batching and threads do not change results\n");
    return 0;
}

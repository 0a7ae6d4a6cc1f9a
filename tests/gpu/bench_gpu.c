/* bench_gpu.c - speed of the model on the CUDA backend (docs/PERF.md):
 * time to first token for one image (vision tower + prefill + first sample),
 * decode tokens/s at batch 1, aggregate tokens/s at N concurrent sequences,
 * GPU memory held by the model, KV bytes per token, and each decode figure's
 * share of the bandwidth limit (bytes read per token / measured copy
 * bandwidth, given with --copy-gbps from gpu_bw).  Prints figures, one
 * markdown table row last; never fails on speed.
 *
 * The prompts come from the project's tokenizer; for a checkpoint with a
 * smaller vocabulary (the `small` preset: 102400) ids past it are folded into
 * it and the image placeholder becomes the last id (random weights: only the
 * shapes matter).  Host-side sampling (vl2_seq_sample) is timed apart.
 *
 * usage: bench_gpu --model DIR --image FILE [--plugin-dir DIR] [--copy-gbps X]
 *                  [--decode-steps N] [--batch N] [--label TEXT]
 *                  [--sampling device|host] [--backend-options OPTIONS]
 * Greedy ids are chosen by the backend (argmax on the device, one id read
 * back per sequence: what vl2d does for requests without log-probabilities)
 * unless --sampling host, which reads the logits back and samples on the
 * host.
 * --backend-options: vl2_backend_params.options (plugins/cuda/cuda-options.h),
 * e.g. profile=1 or graphs=0; VL2_BENCH_BACKEND=cpu runs it on the CPU backend
 * instead. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "image.h"
#include "model.h"
#include "prompt.h"
#include "tokenizer.h"
#include "weights.h"

#define MAX_BATCH 64
#define TTFT_RUNS 5

static double now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void die(const char *what, const struct vl2_err *err)
{
    fprintf(stderr, "bench_gpu: %s: %s\n", what, err ? err->msg : "failed");
    exit(1);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

struct opts {
    const char *model, *image, *plugin_dir, *label, *prompt, *backend_options;
    double      copy_gbps;
    int         steps, batch;
    int         host_sampling; /* --sampling host: logits read back, sampled here */
    int32_t     n_vocab;     /* of the checkpoint */
    int32_t     tok_image;   /* the tokenizer's <image> id */
    int32_t     image_id;    /* the id the model is told (tok_image, or folded) */
};

/* Ids of the tokenizer as ids of the checkpoint (see the head comment). */
static void fold_ids(const struct opts *o, int32_t *ids, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++) {
        if (ids[i] == o->tok_image)
            ids[i] = o->image_id;
        else if (ids[i] >= o->n_vocab)
            ids[i] %= o->n_vocab - 1;
    }
}

static double t_sample;     /* host time in vl2_seq_sample */

static int32_t sample(struct vl2_seq *s)
{
    double t0 = now();
    int32_t id = vl2_seq_sample(s);
    t_sample += now() - t0;
    return id;
}

/* The image as tiles and the prompt ids around it. */
struct input {
    struct vl2_image  img;
    struct vl2_tiling tiling;
    uint8_t          *tiles;
    int32_t          *ids;
    size_t            n_ids;
    double            prep_s;   /* decode + tile on the host */
};

static char *read_file(const char *path, size_t *ret_n)
{
    FILE *f = fopen(path, "rb");
    char *d;
    long n;

    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fseek(f, 0, SEEK_SET);
    d = malloc((size_t)n);
    if (d && fread(d, 1, (size_t)n, f) != (size_t)n) {
        free(d);
        d = NULL;
    }
    fclose(f);
    *ret_n = (size_t)n;
    return d;
}

static void prepare(struct input *in, const struct opts *o, const struct vl2_model *m,
                    const struct vl2_tokenizer *tok)
{
    const struct vl2_model_config *c = vl2_model_config(m);
    const struct vl2_processor_config *pc = vl2_model_processor_config(m);
    struct vl2_image_limits lim = vl2_image_default_limits();
    struct vl2_message msg = { .role = VL2_ROLE_USER };
    struct vl2_err err = { 0 };
    const int S = c->vision.image_size;
    char text[512];
    size_t size;
    char *data;
    int32_t nt;
    double t0 = now();

    data = read_file(o->image, &size);
    if (!data)
        die(o->image, NULL);
    if (vl2_image_decode(&in->img, data, size, &lim, &err) < 0)
        die(o->image, &err);
    free(data);
    vl2_image_plan(&in->tiling, in->img.width, in->img.height, pc->candidates,
                   pc->n_candidates, 1, S, c->vision.patch_size, c->proj.downsample);
    in->tiles = malloc((size_t)in->tiling.n_tiles * 3 * (size_t)S * (size_t)S);
    if (!in->tiles || vl2_image_tile(&in->img, &in->tiling, S, in->tiles, &err) < 0)
        die("tile", &err);
    in->prep_s = now() - t0;
    snprintf(text, sizeof(text), "<image>\n%s", o->prompt);
    msg.text = text;
    msg.len = strlen(text);
    nt = in->tiling.n_tokens;
    if (vl2_prompt_build(tok, &msg, 1, &nt, 1, &in->ids, &in->n_ids, &err) < 0)
        die("prompt", &err);
    fold_ids(o, in->ids, in->n_ids);
}

/* Vision + prefill of the image prompt into a new sequence; returns the
 * first sampled id and the times. */
static struct vl2_seq *first_token(struct vl2_model *m, const struct input *in, int capacity,
                                   int dev_greedy, int32_t *ret_id, double *ret_vis,
                                   double *ret_pre)
{
    struct vl2_seq_params sp = vl2_seq_default_params();
    struct vl2_image_embed *e = NULL;
    struct vl2_seq *s;
    struct vl2_err err = { 0 };
    double t0, t1, t2;

    sp.capacity = capacity;
    sp.device_greedy = dev_greedy;
    if (vl2_seq_new(m, &sp, &s, &err) < 0)
        die("seq", &err);
    t0 = now();
    if (vl2_model_encode_image(m, in->tiles, in->tiling.n_tiles, in->tiling.tiles_w,
                               in->tiling.tiles_h, &e, NULL, &err) < 0)
        die("vision", &err);
    t1 = now();
    if (vl2_model_prefill(m, s, in->ids, in->n_ids, (const struct vl2_image_embed *const *)&e,
                          1, &err) < 0)
        die("prefill", &err);
    *ret_id = sample(s);
    t2 = now();
    vl2_image_embed_free(m, e);
    *ret_vis = t1 - t0;
    *ret_pre = t2 - t1;
    return s;
}

int main(int argc, char **argv)
{
    struct opts o = { .label = "model", .prompt = "Describe this image.", .steps = 128,
                      .batch = 16 };
    struct vl2_model_params mp = vl2_model_default_params();
    const struct vl2_backend_ops *ops;
    struct vl2_backend_ctx *bctx;
    struct vl2_tokenizer *tok = NULL;
    struct vl2_model *m = NULL;
    struct vl2_err err = { 0 };
    struct input in;
    double t0, load_s, tt[TTFT_RUNS], vis[TTFT_RUNS], pre[TTFT_RUNS], ttft, dec_s, agg_s;
    double w_bytes, kv_tok, b1_bytes, bb_bytes, mem_gib, b1_tok_s, agg_tok_s;
    int i, step;

    setvbuf(stdout, NULL, _IOLBF, 0);
    memset(&in, 0, sizeof(in));
    for (i = 1; i + 1 < argc; i += 2) {
        const char *a = argv[i], *v = argv[i + 1];
        if (!strcmp(a, "--model"))
            o.model = v;
        else if (!strcmp(a, "--image"))
            o.image = v;
        else if (!strcmp(a, "--plugin-dir"))
            o.plugin_dir = v;
        else if (!strcmp(a, "--copy-gbps"))
            o.copy_gbps = atof(v);
        else if (!strcmp(a, "--decode-steps"))
            o.steps = atoi(v) > 0 ? atoi(v) : 1;
        else if (!strcmp(a, "--batch"))
            o.batch = atoi(v) > 0 && atoi(v) <= MAX_BATCH ? atoi(v) : 16;
        else if (!strcmp(a, "--label"))
            o.label = v;
        else if (!strcmp(a, "--sampling") && (!strcmp(v, "device") || !strcmp(v, "host")))
            o.host_sampling = !strcmp(v, "host");
        else if (!strcmp(a, "--backend-options"))
            o.backend_options = v[0] ? v : NULL;
        else {
            fprintf(stderr, "bench_gpu: unknown option %s\n", a);
            return 2;
        }
    }
    if (!o.model || !o.image) {
        fprintf(stderr, "usage: bench_gpu --model DIR --image FILE [--plugin-dir DIR] "
                "[--copy-gbps X] [--decode-steps N] [--batch N] [--label TEXT] "
                "[--sampling device|host] [--backend-options OPTIONS]\n");
        return 2;
    }
    if (vl2_tokenizer_load(&tok, o.model, &err) < 0)
        die("tokenizer", &err);
    {
        struct vl2_model_config cfg;
        if (vl2_config_load(&cfg, o.model, &err) < 0)
            die("config", &err);
        o.n_vocab = cfg.lm.n_vocab;
    }
    o.tok_image = vl2_tokenizer_id(tok, "<image>");
    o.image_id = o.tok_image < o.n_vocab ? o.tok_image : o.n_vocab - 1;
    mp.backend = getenv("VL2_BENCH_BACKEND") ? getenv("VL2_BENCH_BACKEND") : "cuda";
    mp.plugin_dir = o.plugin_dir;
    mp.backend_options = o.backend_options;
    mp.image_token_id = o.image_id;
    mp.max_rows = 512;
    mp.max_logit_rows = MAX_BATCH;
    mp.n_ctx = 1024;
    t0 = now();
    if (vl2_model_load(&m, o.model, &mp, &err) < 0)
        die("load", &err);
    load_s = now() - t0;
    ops = vl2_model_backend(m, &bctx);
    mem_gib = (double)ops->mem_used(bctx) / 1073741824.0;
    printf("%s: %s\n", o.label, ops->describe(bctx));
    printf("%s: load %.1f s, GPU memory after load %.2f GiB, KV %zu bytes per token\n", o.label,
           load_s, mem_gib, vl2_model_kv_token_bytes(m));
    prepare(&in, &o, m, tok);
    printf("%s: image %dx%d -> %d tiles, %d image tokens, prompt %zu tokens; host decode+tile "
           "%.1f ms\n", o.label, in.img.width, in.img.height, in.tiling.n_tiles,
           in.tiling.n_tokens, in.n_ids, in.prep_s * 1e3);

    /* time to first token: one warm-up, then the median of TTFT_RUNS */
    {
        int32_t id;
        double v, p;
        struct vl2_seq *s = first_token(m, &in, (int)in.n_ids + 1, !o.host_sampling, &id, &v, &p);
        vl2_seq_free(s);
        for (i = 0; i < TTFT_RUNS; i++) {
            s = first_token(m, &in, (int)in.n_ids + 1, !o.host_sampling, &id, &vis[i],
                            &pre[i]);
            tt[i] = vis[i] + pre[i];
            vl2_seq_free(s);
        }
        qsort(tt, TTFT_RUNS, sizeof(double), cmp_double);
        qsort(vis, TTFT_RUNS, sizeof(double), cmp_double);
        qsort(pre, TTFT_RUNS, sizeof(double), cmp_double);
        ttft = tt[TTFT_RUNS / 2];
        printf("%s: time to first token %.1f ms (median of %d; vision %.1f ms for %d tiles, "
               "prefill %.1f ms for %zu tokens)\n", o.label, ttft * 1e3, TTFT_RUNS,
               vis[TTFT_RUNS / 2] * 1e3, in.tiling.n_tiles, pre[TTFT_RUNS / 2] * 1e3, in.n_ids);
        printf("%s: after TTFT runs: %s\n", o.label, ops->describe(bctx));
    }

    /* decode at batch 1 after the image prompt */
    {
        int32_t id;
        double v, p;
        struct vl2_seq *s = first_token(m, &in, (int)in.n_ids + o.steps + 8, !o.host_sampling,
                                        &id, &v, &p);
        for (step = 0; step < 4; step++) {       /* warm-up: capture the step graph */
            if (vl2_model_decode(m, &s, &id, 1, &err) < 0)
                die("decode", &err);
            id = sample(s);
        }
        t_sample = 0;
        t0 = now();
        for (step = 0; step < o.steps; step++) {
            if (vl2_model_decode(m, &s, &id, 1, &err) < 0)
                die("decode", &err);
            id = sample(s);
        }
        dec_s = (now() - t0) / o.steps;
        printf("%s: %s sampling %.3f ms per token of the %.3f ms\n", o.label,
               vl2_seq_device_greedy(s) ? "device (argmax; host part)" : "host",
               t_sample * 1e3 / o.steps, dec_s * 1e3);
        vl2_seq_free(s);
    }
    printf("%s: after decode batch 1: %s\n", o.label, ops->describe(bctx));
    w_bytes = (double)vl2_model_decode_bytes(m);
    kv_tok = (double)vl2_model_kv_token_bytes(m);
    b1_bytes = w_bytes + kv_tok * ((double)in.n_ids + 4 + o.steps / 2.0);
    b1_tok_s = 1.0 / dec_s;
    printf("%s: decode batch 1: %.1f tokens/s (%.3f ms/token over %d steps)\n", o.label,
           b1_tok_s, dec_s * 1e3, o.steps);
    printf("%s: bytes read per token %.3f GB (weights %.3f GB + KV %.1f MB)\n", o.label,
           b1_bytes / 1e9, w_bytes / 1e9, (b1_bytes - w_bytes) / 1e6);

    /* aggregate: o.batch sequences with short text prompts, decoded together */
    {
        const struct vl2_lm_config *lc = &vl2_model_config(m)->lm;
        struct vl2_seq *seqs[MAX_BATCH];
        struct vl2_step_item items[MAX_BATCH];
        int32_t ids[MAX_BATCH], *pids;
        size_t n_p;
        struct vl2_message msg = { .role = VL2_ROLE_USER };
        struct vl2_seq_params sp = vl2_seq_default_params();
        const int B = o.batch;
        double moe_layers = 0, expert_bytes, distinct;

        msg.text = "Write a haiku about GPUs.";
        msg.len = strlen(msg.text);
        if (vl2_prompt_build(tok, &msg, 1, NULL, 0, &pids, &n_p, &err) < 0)
            die("prompt", &err);
        fold_ids(&o, pids, n_p);
        sp.capacity = (int32_t)n_p + o.steps + 8;
        sp.device_greedy = !o.host_sampling;
        for (i = 0; i < B; i++) {
            if (vl2_seq_new(m, &sp, &seqs[i], &err) < 0)
                die("seq", &err);
            memset(&items[i], 0, sizeof(items[i]));
            items[i].seq = seqs[i];
            items[i].ids = pids;
            items[i].n_ids = (int32_t)n_p;
            items[i].want_logits = 1;
        }
        if (vl2_model_step(m, items, (size_t)B, &err) < 0)
            die("batched prefill", &err);
        for (i = 0; i < B; i++)
            ids[i] = sample(seqs[i]);
        for (step = 0; step < 4; step++) {
            if (vl2_model_decode(m, seqs, ids, (size_t)B, &err) < 0)
                die("decode", &err);
            for (i = 0; i < B; i++)
                ids[i] = sample(seqs[i]);
        }
        t_sample = 0;
        t0 = now();
        for (step = 0; step < o.steps; step++) {
            if (vl2_model_decode(m, seqs, ids, (size_t)B, &err) < 0)
                die("decode", &err);
            for (i = 0; i < B; i++)
                ids[i] = sample(seqs[i]);
        }
        agg_s = (now() - t0) / o.steps;
        printf("%s: %s sampling %.3f ms per step of the %.3f ms\n", o.label,
               vl2_seq_device_greedy(seqs[0]) ? "device (argmax; host part)" : "host",
               t_sample * 1e3 / o.steps, agg_s * 1e3);
        agg_tok_s = B / agg_s;
        /* weights of one step: batch-1 weights plus the experts that the other
         * rows add (expected distinct experts under uniform routing) */
        for (i = 0; i < lc->n_layer; i++)
            if (lc->n_expert > 0 && i >= lc->first_dense &&
                (lc->moe_layer_freq <= 1 || i % lc->moe_layer_freq == 0))
                moe_layers += 1;
        expert_bytes = 3.0 * lc->d_ff_expert * lc->d_model * 2.0;
        distinct = lc->n_expert > 0
                       ? lc->n_expert * (1.0 - pow(1.0 - (double)lc->top_k / lc->n_expert, B))
                       : 0.0;
        bb_bytes = w_bytes + moe_layers * (distinct - lc->top_k) * expert_bytes +
                   kv_tok * B * ((double)n_p + 4 + o.steps / 2.0);
        printf("%s: decode %d sequences: %.1f tokens/s aggregate (%.3f ms per step over %d "
               "steps; about %.2f GB read per step)\n", o.label, B, agg_tok_s, agg_s * 1e3,
               o.steps, bb_bytes / 1e9);
        for (i = 0; i < B; i++)
            vl2_seq_free(seqs[i]);
        free(pids);
    }
    printf("%s: %s\n", o.label, ops->describe(bctx));
    if (o.copy_gbps > 0) {
        const double bw = o.copy_gbps * 1e9;
        printf("%s: copy bandwidth %.0f GB/s: batch 1 bound %.0f tokens/s -> %.0f%% of the "
               "bound; %d sequences bound %.0f steps/s -> %.0f%%\n", o.label, o.copy_gbps,
               bw / b1_bytes, 100.0 * b1_tok_s * b1_bytes / bw, o.batch, bw / bb_bytes,
               100.0 * (agg_tok_s / o.batch) * bb_bytes / bw);
    }
    printf("| %s | %.1f | %.0f | %.0f%% | %.0f | %.0f%% | %.2f | %zu |\n", o.label, ttft * 1e3,
           b1_tok_s, o.copy_gbps > 0 ? 100.0 * b1_tok_s * b1_bytes / (o.copy_gbps * 1e9) : 0.0,
           agg_tok_s,
           o.copy_gbps > 0 ? 100.0 * (agg_tok_s / o.batch) * bb_bytes / (o.copy_gbps * 1e9)
                           : 0.0,
           mem_gib, vl2_model_kv_token_bytes(m));
    /* the ids the device picks (argmax) are those the host sampler picks from
     * the logits read back: the same prompt, then 16 steps, side by side.
     * Last: two sequences taking turns change the captured decode step every
     * time (graph fallbacks), which must not touch the figures above. */
    {
        int32_t ih, idv, k, same;
        double v, p;
        struct vl2_seq *sh = first_token(m, &in, (int)in.n_ids + 24, 0, &ih, &v, &p);
        struct vl2_seq *sd = first_token(m, &in, (int)in.n_ids + 24, 1, &idv, &v, &p);
        same = ih == idv;
        for (k = 0; k < 16 && ih == idv; k++) {
            if (vl2_model_decode(m, &sh, &ih, 1, &err) < 0 ||
                vl2_model_decode(m, &sd, &idv, 1, &err) < 0)
                die("decode", &err);
            ih = sample(sh);
            idv = sample(sd);
            same += ih == idv;
        }
        printf("%s: greedy ids chosen on the device (%s) vs sampled on the host: %d of 17 "
               "the same\n", o.label, vl2_seq_device_greedy(sd) ? "argmax" : "not available",
               same);
        if (same != 17) {
            fprintf(stderr, "bench_gpu: device greedy id %d differs from the host's %d\n",
                    (int)idv, (int)ih);
            return 1;
        }
        vl2_seq_free(sh);
        vl2_seq_free(sd);
    }

    vl2_image_done(&in.img);
    free(in.tiles);
    free(in.ids);
    vl2_model_free(m);
    vl2_tokenizer_free(tok);
    return 0;
}

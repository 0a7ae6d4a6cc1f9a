/* bench_model.c - speed of the forward pass on a checkpoint (the `tiny`
 * preset of vl2-mkweights): vision tower time per tile, prefill tokens/s,
 * decode tokens/s, time to first token for one image, peak RSS, and the
 * memory bandwidth of this machine measured in the same run, with the ratio
 * of decode speed to the bandwidth-bound speed for the bytes read per token.
 * Prints figures; never fails on speed.
 *
 * The compute peak (tests/bench/peak: f32 FMA and bf16 vdpbf16ps) is measured
 * in the same run, for the same thread count: the vision tower prints its
 * GFLOP/s (products and attention counted from the configuration) and their
 * share of both peaks; --prefill-tokens N adds a text-only prefill of N
 * tokens (the "tiny prefill 512" figure), with about 2 FLOP per active
 * weight read per token as its share of the peaks.
 *
 * usage: bench_model --model DIR [--image FILE] [--plugin-dir DIR]
 *                    [--threads N[,N...]] [--decode-steps N] [--prompt TEXT]
 *                    [--backend-options K=V,...] [--prefill-tokens N] [--repeat N]
 *
 * --repeat N: the vision tower and the text prefill run N times, the best is
 * printed (the first run also faults the weights in from the page cache).
 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "image.h"
#include "model.h"
#include "prompt.h"
#include "tokenizer.h"
#include "peak.h"

static double now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double cpu_now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double peak_rss_mib(void)
{
    struct rusage ru;

    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_maxrss / 1024.0;
}

static void die(const char *what, const struct vl2_err *err)
{
    fprintf(stderr, "bench_model: %s: %s\n", what, err ? err->msg : "failed");
    exit(1);
}

/* ---- memory bandwidth: threads summing disjoint parts of a large buffer ---- */

struct bw_part {
    const uint64_t *p;
    size_t          n;
    uint64_t        sum;
};

static void *bw_read(void *arg)
{
    struct bw_part *t = arg;
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    size_t i;

    for (i = 0; i + 4 <= t->n; i += 4) {
        s0 += t->p[i];
        s1 += t->p[i + 1];
        s2 += t->p[i + 2];
        s3 += t->p[i + 3];
    }
    t->sum = s0 + s1 + s2 + s3;
    return NULL;
}

/* Best read bandwidth in bytes/s over a few passes of @size bytes. */
static double bandwidth(int n_threads, size_t size)
{
    uint64_t *buf = malloc(size);
    size_t n = size / sizeof(*buf), i;
    struct bw_part parts[64];
    pthread_t th[64];
    double best = 0.0;
    int rep, t;
    uint64_t sink = 0;

    if (!buf)
        return 0.0;
    for (i = 0; i < n; i++)
        buf[i] = i * 0x9e3779b97f4a7c15ull;
    if (n_threads > 64)
        n_threads = 64;
    for (rep = 0; rep < 5; rep++) {
        double t0 = now(), dt;
        for (t = 0; t < n_threads; t++) {
            parts[t].p = buf + n / (size_t)n_threads * (size_t)t;
            parts[t].n = n / (size_t)n_threads;
            pthread_create(&th[t], NULL, bw_read, &parts[t]);
        }
        for (t = 0; t < n_threads; t++) {
            pthread_join(th[t], NULL);
            sink += parts[t].sum;
        }
        dt = now() - t0;
        if ((double)size / dt > best)
            best = (double)size / dt;
    }
    free(buf);
    if (sink == 42)
        printf("#\n");
    return best;
}

/* ---- model runs -------------------------------------------------------------- */

struct bench {
    const char *model, *image, *plugin_dir, *prompt, *backend_options;
    int         threads[8], n_threads, decode_steps, prefill_tokens, repeat;
    struct vl2_tokenizer *tok;
    struct vl2_image img;
    struct vl2_tiling tiling;
    uint8_t    *tiles;
    int32_t    *ids;
    size_t      n_ids;
    double      bw[8];
    double      dec_bytes[8], tok_s[8];
    double      t_start;
};

static struct vl2_model *load(struct bench *b, int threads, double *ret_s)
{
    struct vl2_model_params mp = vl2_model_default_params();
    struct vl2_model *m;
    struct vl2_err err = { 0 };
    double t0 = now();

    mp.plugin_dir = b->plugin_dir;
    mp.backend_options = b->backend_options;
    mp.n_threads = threads;
    mp.image_token_id = vl2_tokenizer_id(b->tok, "<image>");
    mp.max_rows = 512;
    if (vl2_model_load(&m, b->model, &mp, &err) < 0)
        die("load", &err);
    *ret_s = now() - t0;
    return m;
}

/* Image file -> decoded -> planned -> tiles -> prompt ids. */
static void prepare(struct bench *b, const struct vl2_model *m)
{
    const struct vl2_model_config *c = vl2_model_config(m);
    const struct vl2_processor_config *pc = vl2_model_processor_config(m);
    struct vl2_image_limits lim = vl2_image_default_limits();
    struct vl2_message msg = { .role = VL2_ROLE_USER };
    struct vl2_err err = { 0 };
    size_t size;
    char *text, *data;
    FILE *f;
    int32_t nt;

    f = fopen(b->image, "rb");
    if (!f)
        die(b->image, NULL);
    fseek(f, 0, SEEK_END);
    size = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    data = malloc(size);
    if (!data || fread(data, 1, size, f) != size)
        die(b->image, NULL);
    fclose(f);
    if (vl2_image_decode(&b->img, data, size, &lim, &err) < 0)
        die(b->image, &err);
    free(data);
    vl2_image_plan(&b->tiling, b->img.width, b->img.height, pc->candidates, pc->n_candidates, 1,
                   c->vision.image_size, c->vision.patch_size, c->proj.downsample);
    b->tiles = malloc((size_t)b->tiling.n_tiles * 3 * (size_t)c->vision.image_size *
                      (size_t)c->vision.image_size);
    if (vl2_image_tile(&b->img, &b->tiling, c->vision.image_size, b->tiles, &err) < 0)
        die("tile", &err);
    if (asprintf(&text, "<image>\n%s", b->prompt) < 0)
        die("prompt", NULL);
    msg.text = text;
    msg.len = strlen(text);
    nt = b->tiling.n_tokens;
    if (vl2_prompt_build(b->tok, &msg, 1, &nt, 1, &b->ids, &b->n_ids, &err) < 0)
        die("prompt", &err);
    free(text);
}

static void run(struct bench *b, int ti, int first)
{
    int threads = b->threads[ti];
    double load_s, t0, t_vis, t_pre, t_first, t_dec, dec_bytes, c0, c_vis, c_pre, c_dec;
    struct vl2_model *m = load(b, threads, &load_s);
    struct vl2_seq_params sp = vl2_seq_default_params();
    struct vl2_image_embed *e;
    struct vl2_seq *s;
    struct vl2_err err = { 0 };
    int32_t id;
    int step;
    size_t kv_read;

    if (first)
        prepare(b, m);
    t_vis = c_vis = 0;
    e = NULL;
    for (int rep = 0; rep < b->repeat; rep++) {
        /* --repeat: the best run (the first one also faults the weights in) */
        double tv, cv;
        if (e)
            vl2_image_embed_free(m, e);
        t0 = now();
        c0 = cpu_now();
        if (vl2_model_encode_image(m, b->tiles, b->tiling.n_tiles, b->tiling.tiles_w,
                                   b->tiling.tiles_h, &e, NULL, &err) < 0)
            die("vision", &err);
        tv = now() - t0;
        cv = cpu_now() - c0;
        if (rep == 0 || tv < t_vis) {
            t_vis = tv;
            c_vis = cv;
        }
    }
    sp.capacity = (int32_t)b->n_ids + b->decode_steps + 1;
    if (vl2_seq_new(m, &sp, &s, &err) < 0)
        die("seq", &err);
    t0 = now();
    c0 = cpu_now();
    if (vl2_model_prefill(m, s, b->ids, b->n_ids, (const struct vl2_image_embed *const *)&e, 1,
                          &err) < 0)
        die("prefill", &err);
    t_pre = now() - t0;
    c_pre = cpu_now() - c0;
    id = vl2_seq_sample(s);
    t_first = t_vis + t_pre;
    if (first)
        printf("threads %d: from process start to first token %.2f s (tokenizer, model load, "
               "image decode and tiling, vision, prefill)\n", threads, now() - b->t_start);
    t0 = now();
    c0 = cpu_now();
    for (step = 0; step < b->decode_steps; step++) {
        if (vl2_model_decode(m, &s, &id, 1, &err) < 0)
            die("decode", &err);
        id = vl2_seq_sample(s);
    }
    t_dec = (now() - t0) / b->decode_steps;
    c_dec = (cpu_now() - c0) / b->decode_steps;

    /* weights of one token plus the KV cache it attends to (mid-run length) */
    kv_read = vl2_model_kv_token_bytes(m) * (b->n_ids + (size_t)b->decode_steps / 2);
    dec_bytes = (double)vl2_model_decode_bytes(m) + (double)kv_read;
    printf("threads %d: load %.2f s\n", threads, load_s);
    printf("threads %d: vision %.2f s per tile (%d tiles, %d distinct, in %.2f s; CPU time "
           "%.2f s)\n", threads, t_vis / e->n_distinct, b->tiling.n_tiles, e->n_distinct, t_vis,
           c_vis);
    printf("threads %d: prefill %.1f tokens/s (%zu tokens, %d image tokens, %.2f s; CPU time "
           "%.2f s)\n", threads, (double)b->n_ids / t_pre, b->n_ids, b->tiling.n_tokens, t_pre,
           c_pre);
    printf("threads %d: time to first token %.2f s (vision + prefill, one %dx%d image)\n",
           threads, t_first, b->img.width, b->img.height);
    printf("threads %d: decode %.2f tokens/s (%.1f ms/token over %d steps; CPU time %.1f "
           "ms/token)\n", threads, 1.0 / t_dec, 1e3 * t_dec, b->decode_steps, 1e3 * c_dec);
    printf("threads %d: KV cache %zu bytes per token\n", threads, vl2_model_kv_token_bytes(m));
    printf("threads %d: bytes read per token %.3f GB (weights %.3f GB + KV %.1f MB)\n", threads,
           dec_bytes / 1e9, (double)vl2_model_decode_bytes(m) / 1e9, (double)kv_read / 1e6);
    {
        /* FLOPs of one tile: patch embedding, per layer qkv, proj, fc1, fc2 and
         * the two attention products */
        const struct vl2_vision_config *v = &vl2_model_config(m)->vision;
        double P = (double)v->grid * v->grid, d = v->d_model;
        double fl = 2 * P * 3.0 * v->patch_size * v->patch_size * d +
                    v->n_layer * (2 * P * (4 * d * d + 2 * d * v->d_mlp) + 4 * P * P * d);
        double gf = fl * e->n_distinct / t_vis / 1e9;
        struct vl2_peak pk;
        vl2_peak_measure(&pk, threads, 0.1);
        vl2_peak_print(&pk);
        printf("threads %d: vision %.1f GFLOP per tile, %.1f GFLOP/s = %.0f%% of the f32 zmm "
               "peak, %.0f%% of the bf16 peak (%d threads)\n", threads, fl / 1e9, gf,
               100 * gf / vl2_peak_for(&pk, VL2_PEAK_F32_ZMM, threads),
               100 * gf / vl2_peak_for(&pk, VL2_PEAK_BF16, threads), threads);
        if (b->prefill_tokens > 0) {
            struct vl2_seq_params sq = vl2_seq_default_params();
            struct vl2_seq *s2;
            int32_t *ids = malloc((size_t)b->prefill_tokens * sizeof(*ids));
            double tp, gp;
            for (int i = 0; i < b->prefill_tokens; i++)
                ids[i] = b->ids[i % b->n_ids] == vl2_tokenizer_id(b->tok, "<image>")
                             ? 1000 + i : b->ids[i % b->n_ids];
            sq.capacity = b->prefill_tokens + 1;
            tp = 0;
            for (int rep = 0; rep < b->repeat; rep++) {
                double t;
                if (vl2_seq_new(m, &sq, &s2, &err) < 0)
                    die("seq", &err);
                t0 = now();
                if (vl2_model_prefill(m, s2, ids, (size_t)b->prefill_tokens, NULL, 0, &err) < 0)
                    die("prefill", &err);
                t = now() - t0;
                tp = rep == 0 || t < tp ? t : tp;
                if (rep + 1 < b->repeat)
                    vl2_seq_free(s2);
            }
            /* about 2 FLOP per active weight (decode_bytes: bf16 weights of one
             * token, less lm_head: prefill applies it to the last row only) */
            gp = ((double)vl2_model_decode_bytes(m) -
                  2.0 * vl2_model_config(m)->lm.n_vocab * vl2_model_config(m)->lm.d_model) *
                 b->prefill_tokens / tp / 1e9;
            printf("threads %d: text prefill %d tokens: %.1f tokens/s (%.2f s), about %.0f "
                   "GFLOP/s = %.0f%% of the bf16 peak\n", threads, b->prefill_tokens,
                   b->prefill_tokens / tp, tp, gp,
                   100 * gp / vl2_peak_for(&pk, VL2_PEAK_BF16, threads));
            vl2_seq_free(s2);
            free(ids);
        }
    }
    b->dec_bytes[ti] = dec_bytes;
    b->tok_s[ti] = 1.0 / t_dec;
    /* bandwidth right after the decode steps, under the same conditions */
    b->bw[ti] = bandwidth(threads, (size_t)1 << 30);
    vl2_seq_free(s);
    vl2_image_embed_free(m, e);
    vl2_model_free(m);
}

int main(int argc, char **argv)
{
    struct bench b = {
        .image = NULL, .prompt = "Describe this image.", .decode_steps = 32,
        .threads = { 1, 2 }, .n_threads = 2, .repeat = 1,
    };
    struct vl2_err err = { 0 };
    int i;

    b.t_start = now();
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (i = 1; i + 1 < argc; i += 2) {
        const char *a = argv[i], *v = argv[i + 1];
        if (!strcmp(a, "--model"))
            b.model = v;
        else if (!strcmp(a, "--image"))
            b.image = v;
        else if (!strcmp(a, "--plugin-dir"))
            b.plugin_dir = v;
        else if (!strcmp(a, "--prompt"))
            b.prompt = v;
        else if (!strcmp(a, "--backend-options"))
            b.backend_options = v;
        else if (!strcmp(a, "--repeat"))
            b.repeat = atoi(v) > 0 ? atoi(v) : 1;
        else if (!strcmp(a, "--prefill-tokens"))
            b.prefill_tokens = atoi(v) > 0 ? atoi(v) : 0;
        else if (!strcmp(a, "--decode-steps"))
            b.decode_steps = atoi(v) > 0 ? atoi(v) : 1;
        else if (!strcmp(a, "--threads")) {
            char *s = (char *)v, *end;
            b.n_threads = 0;
            while (*s && b.n_threads < 8) {
                b.threads[b.n_threads++] = (int)strtol(s, &end, 10);
                s = *end == ',' ? end + 1 : end;
                if (end == s && *s)
                    break;
            }
        }
    }
    if (!b.model || !b.image) {
        fprintf(stderr, "usage: bench_model --model DIR --image FILE [--plugin-dir DIR] "
                "[--threads 1,2] [--decode-steps N] [--backend-options K=V,...] "
                "[--prefill-tokens N] [--repeat N]\n");
        return 2;
    }
    if (vl2_tokenizer_load(&b.tok, b.model, &err) < 0)
        die("tokenizer", &err);
    for (i = 0; i < b.n_threads; i++)
        run(&b, i, i == 0);
    printf("peak RSS %.0f MiB\n", peak_rss_mib());
    for (i = 0; i < b.n_threads; i++) {
        double bound;
        bound = b.bw[i] / b.dec_bytes[i];
        printf("threads %d: memory read bandwidth %.2f GB/s -> bandwidth-bound decode %.2f "
               "tokens/s; measured %.2f tokens/s = %.0f%% of the bound\n", b.threads[i],
               b.bw[i] / 1e9, bound, b.tok_s[i], 100.0 * b.tok_s[i] / bound);
    }
    vl2_image_done(&b.img);
    free(b.tiles);
    free(b.ids);
    vl2_tokenizer_free(b.tok);
    return 0;
}

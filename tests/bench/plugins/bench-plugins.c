/* bench-plugins.c - speed of the CPU backend's matrix products.
 *
 *   bench-plugins [PLUGIN_DIR] [--threads 1,2] [--quick] [--gemm-only] [--options K=V,...]
 *
 * Prints, for 1 and 2 threads:
 *   - memory read bandwidth (a 512 MiB buffer summed by the same threads);
 *   - linear() with one row (decode GEMV) on BF16 weights at the decode shapes
 *     of DeepSeek-VL2 tiny (d_model 1280): dense 6848x1280 and 1280x6848,
 *     expert 896x1280 and 1280x896, lm_head 129280x1280, cycling through
 *     enough copies that weights come from memory, with GB/s of weights read
 *     and the ratio to the measured bandwidth;
 *   - linear() with many rows (prefill, vision) in GFLOP/s;
 *   - attention and moe calls at tiny's shapes.
 * Figures only; never pass/fail.
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---- memory bandwidth -------------------------------------------------------- */

struct bw_arg {
    const uint64_t *p;
    size_t n;
    uint64_t sum;
};

static void *bw_thread(void *v)
{
    struct bw_arg *a = v;
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0;
    for (size_t i = 0; i + 8 <= a->n; i += 8) {
        s0 += a->p[i]; s1 += a->p[i + 1]; s2 += a->p[i + 2]; s3 += a->p[i + 3];
        s4 += a->p[i + 4]; s5 += a->p[i + 5]; s6 += a->p[i + 6]; s7 += a->p[i + 7];
    }
    a->sum = s0 + s1 + s2 + s3 + s4 + s5 + s6 + s7;
    return NULL;
}

/* Best of 5 passes over @size bytes read by @nt threads, GB/s. */
static double read_bandwidth(const void *buf, size_t size, int nt)
{
    double best = 0;
    for (int rep = 0; rep < 5; rep++) {
        pthread_t th[16];
        struct bw_arg a[16];
        size_t per = size / 8 / (size_t)nt;
        double t0 = now(), t;
        for (int i = 0; i < nt; i++) {
            a[i].p = (const uint64_t *)buf + per * (size_t)i;
            a[i].n = per;
            pthread_create(&th[i], NULL, bw_thread, &a[i]);
        }
        for (int i = 0; i < nt; i++)
            pthread_join(th[i], NULL);
        t = now() - t0;
        if (size / t / 1e9 > best)
            best = size / t / 1e9;
    }
    return best;
}

/* ---- helpers ------------------------------------------------------------------ */

struct bk {
    struct vl2_backend *b;
    const struct vl2_backend_ops *o;
    struct vl2_backend_ctx *c;
};

static uint16_t *rand_bf16(size_t n)
{
    uint16_t *p = malloc(n * 2);
    uint32_t s = 12345;
    for (size_t i = 0; i < n; i++) {
        s = s * 1664525u + 1013904223u;
        /* values in about (-0.06, 0.06): exponent 0x3d, random mantissa and sign */
        p[i] = (uint16_t)(0x3d00u | ((s >> 16) & 0x7fu) | ((s >> 8) & 0x8000u));
    }
    return p;
}

static void act(struct bk *k, struct vl2_tensor *t, int64_t rows, int64_t cols)
{
    int64_t ne[2] = { rows, cols };
    struct vl2_err err = { 0 };
    float *h = malloc((size_t)(rows * cols) * 4);
    for (int64_t i = 0; i < rows * cols; i++)
        h[i] = (float)((i * 7919) % 1000) / 1000.0f - 0.5f;
    if (k->o->alloc(k->c, t, VL2_DTYPE_F32, 2, ne, &err) < 0 ||
        k->o->write(k->c, t, 0, h, (size_t)(rows * cols) * 4, &err) < 0) {
        fprintf(stderr, "alloc: %s\n", err.msg);
        exit(1);
    }
    free(h);
}

/* GEMV over n_copies weight matrices [n, kdim] (bf16) in turn, GB/s of weights. */
static double bench_gemv(struct bk *k, int64_t n, int64_t kdim, int n_copies, double min_time)
{
    struct vl2_tensor *w = calloc((size_t)n_copies, sizeof(*w)), x, y;
    uint16_t *raw = rand_bf16((size_t)(n * kdim) * (size_t)n_copies);
    struct vl2_err err = { 0 };
    int64_t ne[2] = { n, kdim };
    double t0, t, bytes = 0;
    long calls = 0;

    for (int i = 0; i < n_copies; i++)
        k->o->weight(k->c, &w[i], VL2_DTYPE_BF16, 2, ne, raw + (size_t)(n * kdim) * (size_t)i, &err);
    act(k, &x, 1, kdim);
    act(k, &y, 1, n);
    for (int i = 0; i < n_copies; i++)  /* warm-up: page in */
        k->o->linear(k->c, &y, &x, &w[i], NULL, &err);
    t0 = now();
    do {
        for (int i = 0; i < n_copies; i++) {
            if (k->o->linear(k->c, &y, &x, &w[i], NULL, &err) < 0) {
                fprintf(stderr, "linear: %s\n", err.msg);
                exit(1);
            }
            calls++;
        }
        t = now() - t0;
    } while (t < min_time);
    bytes = (double)calls * (double)(n * kdim) * 2;
    for (int i = 0; i < n_copies; i++)
        k->o->free_tensor(k->c, &w[i]);
    k->o->free_tensor(k->c, &x);
    k->o->free_tensor(k->c, &y);
    free(w);
    free(raw);
    return bytes / t / 1e9;
}

/* linear with m rows: GFLOP/s */
static double bench_gemm(struct bk *k, int64_t m, int64_t n, int64_t kdim, int dtype, double min_time)
{
    struct vl2_tensor w, x, y;
    uint16_t *raw = NULL;
    float *rawf = NULL;
    struct vl2_err err = { 0 };
    int64_t ne[2] = { n, kdim };
    double t0, t;
    long calls = 0;

    if (dtype == VL2_DTYPE_BF16) {
        raw = rand_bf16((size_t)(n * kdim));
        k->o->weight(k->c, &w, dtype, 2, ne, raw, &err);
    } else {
        rawf = malloc((size_t)(n * kdim) * 4);
        for (int64_t i = 0; i < n * kdim; i++)
            rawf[i] = (float)(i % 17) * 0.01f;
        k->o->weight(k->c, &w, dtype, 2, ne, rawf, &err);
    }
    act(k, &x, m, kdim);
    act(k, &y, m, n);
    k->o->linear(k->c, &y, &x, &w, NULL, &err);
    t0 = now();
    do {
        if (k->o->linear(k->c, &y, &x, &w, NULL, &err) < 0) {
            fprintf(stderr, "linear: %s\n", err.msg);
            exit(1);
        }
        calls++;
        t = now() - t0;
    } while (t < min_time);
    k->o->free_tensor(k->c, &w);
    k->o->free_tensor(k->c, &x);
    k->o->free_tensor(k->c, &y);
    free(raw);
    free(rawf);
    return 2.0 * m * n * kdim * calls / t / 1e9;
}

/* vision attention of n tiles (729 x 16 heads x 72): ms per tile */
static double bench_attn_full(struct bk *k, int n_tiles, double min_time)
{
    struct vl2_tensor qkv, out;
    struct vl2_err err = { 0 };
    double t0, t;
    long calls = 0;

    act(k, &qkv, 729L * n_tiles, 3 * 1152);
    act(k, &out, 729L * n_tiles, 1152);
    t0 = now();
    do {
        k->o->attn_full(k->c, &out, &qkv, 729, 16, 72, 1.0f / sqrtf(72.0f), &err);
        calls++;
        t = now() - t0;
    } while (t < min_time);
    k->o->free_tensor(k->c, &qkv);
    k->o->free_tensor(k->c, &out);
    return t / calls / n_tiles * 1e3;
}

/* gelu_tanh over 729 x 4304 (one tile's MLP activation): ms */
static double bench_gelu(struct bk *k, double min_time)
{
    struct vl2_tensor x;
    struct vl2_err err = { 0 };
    double t0, t;
    long calls = 0;

    act(k, &x, 729, 4304);
    t0 = now();
    do {
        k->o->gelu_tanh(k->c, &x, &err);
        calls++;
        t = now() - t0;
    } while (t < min_time);
    k->o->free_tensor(k->c, &x);
    return t / calls * 1e3;
}

/* MHA decode attention at context n_ctx (tiny: 10 heads x 128): ms per call (one layer) */
static double bench_mha_decode(struct bk *k, int n_ctx, double min_time)
{
    struct vl2_kv_shape ks = { .kind = VL2_ATTN_MHA, .n_layer = 1, .n_kv_head = 10,
                               .head_dim = 128, .dtype = VL2_DTYPE_F32, .capacity = n_ctx + 1 };
    struct vl2_kv *kv;
    struct vl2_tensor q, kk, v, out;
    struct vl2_batch_seq seq = { .row0 = 0, .n_rows = 1, .n_past = n_ctx };
    struct vl2_batch b = { .n_rows = 1, .n_seqs = 1, .seqs = &seq };
    struct vl2_err err = { 0 };
    double t0, t;
    long calls = 0;

    if (k->o->kv_new(k->c, &ks, &kv, &err) < 0) {
        fprintf(stderr, "kv_new: %s\n", err.msg);
        exit(1);
    }
    /* fill the cache (as prefill would) so its pages are real */
    {
        struct vl2_tensor pk, pv, pq, po;
        struct vl2_batch_seq ps = { .row0 = 0, .n_rows = n_ctx, .n_past = 0, .kv = kv };
        struct vl2_batch pb = { .n_rows = n_ctx, .n_seqs = 1, .seqs = &ps };
        act(k, &pq, n_ctx, 1280);
        act(k, &pk, n_ctx, 1280);
        act(k, &pv, n_ctx, 1280);
        act(k, &po, n_ctx, 1280);
        k->o->begin_batch(k->c, &pb, &err);
        k->o->attn_mha(k->c, 0, &po, &pq, &pk, &pv, 10, 10, 128, 0.088f, &err);
        k->o->free_tensor(k->c, &pq);
        k->o->free_tensor(k->c, &pk);
        k->o->free_tensor(k->c, &pv);
        k->o->free_tensor(k->c, &po);
    }
    seq.kv = kv;
    act(k, &q, 1, 1280);
    act(k, &kk, 1, 1280);
    act(k, &v, 1, 1280);
    act(k, &out, 1, 1280);
    k->o->begin_batch(k->c, &b, &err);
    t0 = now();
    do {
        if (k->o->attn_mha(k->c, 0, &out, &q, &kk, &v, 10, 10, 128, 0.088f, &err) < 0) {
            fprintf(stderr, "attn_mha: %s\n", err.msg);
            exit(1);
        }
        calls++;
        t = now() - t0;
    } while (t < min_time);
    k->o->free_tensor(k->c, &q);
    k->o->free_tensor(k->c, &kk);
    k->o->free_tensor(k->c, &v);
    k->o->free_tensor(k->c, &out);
    k->o->kv_free(k->c, kv);
    return t / calls * 1e3;
}

int main(int argc, char **argv)
{
    const char *dir = NULL;
    int threads[4] = { 1, 2 }, n_thr = 2;
    double min_time = 1.0;
    const char *options = NULL;
    int gemm_only = 0;
    size_t bw_size = (size_t)512 << 20;
    void *bw_buf;

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0)
            min_time = 0.3;
        else if (strcmp(argv[i], "--gemm-only") == 0)
            gemm_only = 1;
        else if (strcmp(argv[i], "--options") == 0 && i + 1 < argc)
            options = argv[++i];
        else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc) {
            n_thr = sscanf(argv[++i], "%d,%d,%d,%d", &threads[0], &threads[1], &threads[2],
                           &threads[3]);
        } else
            dir = argv[i];
    }
    bw_buf = malloc(bw_size);
    memset(bw_buf, 1, bw_size);

    for (int ti = 0; ti < n_thr; ti++) {
        struct vl2_backend_params p = { .n_threads = threads[ti], .options = options };
        struct vl2_err err = { 0 };
        struct bk k;
        double bw, g;

        if (vl2_backend_load(&k.b, "cpu", dir, &p, &err) < 0) {
            fprintf(stderr, "%s\n", err.msg);
            return 1;
        }
        k.o = k.b->ops;
        k.c = k.b->ctx;
        printf("== %s\n", k.o->describe(k.c));
        if (gemm_only)
            goto gemm;
        bw = read_bandwidth(bw_buf, bw_size, threads[ti]);
        printf("memory read bandwidth (%d thread%s): %.1f GB/s\n", threads[ti],
               threads[ti] > 1 ? "s" : "", bw);
        printf("decode GEMV, bf16 weights, 1 row:\n");
        g = bench_gemv(&k, 6848, 1280, 8, min_time);
        printf("  dense gate/up 6848x1280 : %6.1f GB/s (%3.0f%% of bandwidth)\n", g, 100 * g / bw);
        g = bench_gemv(&k, 1280, 6848, 8, min_time);
        printf("  dense down    1280x6848 : %6.1f GB/s (%3.0f%% of bandwidth)\n", g, 100 * g / bw);
        g = bench_gemv(&k, 896, 1280, 64, min_time);
        printf("  expert gate/up 896x1280 : %6.1f GB/s (%3.0f%% of bandwidth)\n", g, 100 * g / bw);
        g = bench_gemv(&k, 1280, 896, 64, min_time);
        printf("  expert down   1280x896  : %6.1f GB/s (%3.0f%% of bandwidth)\n", g, 100 * g / bw);
        g = bench_gemv(&k, 129280, 1280, 1, min_time);
        printf("  lm_head     129280x1280 : %6.1f GB/s (%3.0f%% of bandwidth)\n", g, 100 * g / bw);
    gemm:
        printf("many rows (blocked product), GFLOP/s:\n");
        printf("  vision fc1  729x1152 -> 4304, bf16 : %6.1f\n",
               bench_gemm(&k, 729, 4304, 1152, VL2_DTYPE_BF16, min_time));
        printf("  vision qkv  729x1152 -> 3456, f32  : %6.1f\n",
               bench_gemm(&k, 729, 3456, 1152, VL2_DTYPE_F32, min_time));
        printf("  prefill up  432x1280 -> 6848, bf16 : %6.1f\n",
               bench_gemm(&k, 432, 6848, 1280, VL2_DTYPE_BF16, min_time));
        printf("  expert      16x1280 -> 896, bf16   : %6.1f\n",
               bench_gemm(&k, 16, 896, 1280, VL2_DTYPE_BF16, min_time));
        printf("  small m     4x1280 -> 6848, bf16   : %6.1f\n",
               bench_gemm(&k, 4, 6848, 1280, VL2_DTYPE_BF16, min_time));
        if (gemm_only) {
            vl2_backend_unload(k.b);
            continue;
        }
        printf("vision attention 729x16x72: %.1f ms per tile\n", bench_attn_full(&k, 2, min_time));
        printf("gelu_tanh 729x4304: %.2f ms\n", bench_gelu(&k, min_time));
        printf("MHA decode attention (10x128), one layer: ctx 512 %.3f ms, ctx 4096 %.3f ms\n",
               bench_mha_decode(&k, 512, min_time), bench_mha_decode(&k, 4096, min_time));
        vl2_backend_unload(k.b);
    }
    free(bw_buf);
    return 0;
}

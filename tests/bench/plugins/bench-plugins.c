/* bench-plugins.c - speed of the CPU backend's kernels.
 *
 *   bench-plugins [PLUGIN_DIR] [--threads 1,2] [--quick] [--gemm-only] [--options K=V,...]
 *
 * For each thread count:
 *   - memory read bandwidth (a 512 MiB buffer summed by that many threads);
 *   - linear() with one row (decode GEMV) on BF16 weights at the decode shapes
 *     of DeepSeek-VL2 tiny (d_model 1280): dense 6848x1280 and 1280x6848,
 *     expert 896x1280 and 1280x896, lm_head 129280x1280, cycling through
 *     enough copies that the weights come from memory: GB/s of weights read
 *     and the ratio to the bandwidth measured in the same run;
 *   - linear() with many rows (prefill, vision): GFLOP/s;
 *   - vision attention, gelu_tanh, MHA decode attention, one MoE layer;
 *   - the compute peak measured in the same run (tests/bench/peak): the
 *     blocked products print their share of the f32 FMA zmm and bf16 dot
 *     peaks for that many threads.
 * Every figure is the best of several repetitions (the machine may be shared:
 * the best repetition is the one least disturbed).  "per core" divides by the
 * process CPU time instead of the wall time: the speed of the code when it
 * runs, whatever else the machine does.  Figures only; never pass/fail.
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend.h"
#include "peak.h"

static double wall(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double cpu_time(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int n_reps = 5;
static double rep_time = 0.25;

/* Run fn(arg) repeatedly: best wall seconds per call over n_reps repetitions
 * of at least rep_time each; *cpu gets process CPU seconds per call of that
 * repetition. */
static double measure(void (*fn)(void *), void *arg, double *cpu)
{
    double best = 1e30, best_cpu = 0;

    fn(arg); /* warm-up */
    for (int r = 0; r < n_reps; r++) {
        double t0 = wall(), c0 = cpu_time(), t;
        long calls = 0;
        do {
            fn(arg);
            calls++;
            t = wall() - t0;
        } while (t < rep_time);
        if (t / calls < best) {
            best = t / calls;
            best_cpu = (cpu_time() - c0) / calls;
        }
    }
    if (cpu)
        *cpu = best_cpu;
    return best;
}

/* ---- memory bandwidth ---------------------------------------------------------- */

struct bw_arg {
    const uint64_t *p;
    size_t n;
    uint64_t sum;
};

/* Sum 64-byte blocks with GCC vector types (vector loads on any target). */
typedef uint64_t v8u64 __attribute__((vector_size(64), aligned(8)));

static void *bw_thread(void *v)
{
    struct bw_arg *a = v;
    v8u64 s0 = { 0 }, s1 = { 0 }, s2 = { 0 }, s3 = { 0 };
    const v8u64 *p = (const v8u64 *)a->p;
    size_t n = a->n / 8;

    for (size_t i = 0; i + 4 <= n; i += 4) {
        s0 += p[i];
        s1 += p[i + 1];
        s2 += p[i + 2];
        s3 += p[i + 3];
    }
    s0 += s1 + s2 + s3;
    a->sum = s0[0] + s0[1] + s0[2] + s0[3] + s0[4] + s0[5] + s0[6] + s0[7];
    return NULL;
}

struct bw_job {
    const void *buf;
    size_t size;
    int nt;
};

static void bw_run(void *v)
{
    struct bw_job *j = v;
    pthread_t th[16];
    struct bw_arg a[16];
    size_t per = j->size / 8 / (size_t)j->nt;

    for (int i = 0; i < j->nt; i++) {
        a[i].p = (const uint64_t *)j->buf + per * (size_t)i;
        a[i].n = per;
        pthread_create(&th[i], NULL, bw_thread, &a[i]);
    }
    for (int i = 0; i < j->nt; i++)
        pthread_join(th[i], NULL);
}

/* ---- helpers --------------------------------------------------------------------- */

struct bk {
    struct vl2_backend *b;
    const struct vl2_backend_ops *o;
    struct vl2_backend_ctx *c;
};

static void die(const char *what, const struct vl2_err *err)
{
    fprintf(stderr, "%s: %s\n", what, err->msg);
    exit(1);
}

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
        k->o->write(k->c, t, 0, h, (size_t)(rows * cols) * 4, &err) < 0)
        die("alloc", &err);
    free(h);
}

/* ---- linear ------------------------------------------------------------------------- */

struct lin_job {
    struct bk *k;
    struct vl2_tensor *w, x, y;
    int n_w, next;
};

static void lin_run(void *v)
{
    struct lin_job *j = v;
    struct vl2_err err = { 0 };
    for (int i = 0; i < j->n_w; i++)
        if (j->k->o->linear(j->k->c, &j->y, &j->x, &j->w[i], NULL, &err) < 0)
            die("linear", &err);
}

/* linear with m rows over n_copies weights [n, kdim] in turn; returns seconds
 * per product, *cpu CPU seconds per product. */
static double bench_linear(struct bk *k, int64_t m, int64_t n, int64_t kdim, int dtype,
                           int n_copies, double *cpu)
{
    struct lin_job j = { .k = k, .n_w = n_copies };
    size_t nel = (size_t)(n * kdim) * (size_t)n_copies;
    uint16_t *raw16 = NULL;
    float *raw32 = NULL;
    int64_t ne[2] = { n, kdim };
    struct vl2_err err = { 0 };
    double t;

    j.w = calloc((size_t)n_copies, sizeof(*j.w));
    if (dtype == VL2_DTYPE_BF16) {
        raw16 = rand_bf16(nel);
    } else {
        raw32 = malloc(nel * 4);
        for (size_t i = 0; i < nel; i++)
            raw32[i] = (float)(i % 17) * 0.01f;
    }
    for (int i = 0; i < n_copies; i++)
        if (k->o->weight(k->c, &j.w[i], dtype, 2, ne,
                         raw16 ? (const void *)(raw16 + (size_t)(n * kdim) * (size_t)i)
                               : (const void *)(raw32 + (size_t)(n * kdim) * (size_t)i),
                         &err) < 0)
            die("weight", &err);
    act(k, &j.x, m, kdim);
    act(k, &j.y, m, n);
    t = measure(lin_run, &j, cpu) / n_copies;
    if (cpu)
        *cpu /= n_copies;
    for (int i = 0; i < n_copies; i++)
        k->o->free_tensor(k->c, &j.w[i]);
    k->o->free_tensor(k->c, &j.x);
    k->o->free_tensor(k->c, &j.y);
    free(j.w);
    free(raw16);
    free(raw32);
    return t;
}

/* ---- attention, activations, moe ------------------------------------------------------ */

struct full_job {
    struct bk *k;
    struct vl2_tensor qkv, out;
};

static void full_run(void *v)
{
    struct full_job *j = v;
    struct vl2_err err = { 0 };
    if (j->k->o->attn_full(j->k->c, &j->out, &j->qkv, 729, 16, 72, 1.0f / sqrtf(72.0f), &err) < 0)
        die("attn_full", &err);
}

static void gelu_run(void *v)
{
    struct full_job *j = v;
    struct vl2_err err = { 0 };
    j->k->o->gelu_tanh(j->k->c, &j->out, &err);
}

struct mha_job {
    struct bk *k;
    struct vl2_tensor q, kk, v, out;
};

static void mha_run(void *v)
{
    struct mha_job *j = v;
    struct vl2_err err = { 0 };
    if (j->k->o->attn_mha(j->k->c, 0, &j->out, &j->q, &j->kk, &j->v, 10, 10, 128, 0.088f, &err) < 0)
        die("attn_mha", &err);
}

/* MHA decode attention at context n_ctx (tiny: 10 heads x 128): seconds per call */
static double bench_mha_decode(struct bk *k, int n_ctx)
{
    struct vl2_kv_shape ks = { .struct_size = sizeof(ks), .kind = VL2_ATTN_MHA, .n_layer = 1,
                               .n_kv_head = 10, .head_dim = 128, .dtype = VL2_DTYPE_F32, .capacity = n_ctx + 1 };
    struct vl2_kv *kv;
    struct mha_job j = { .k = k };
    struct vl2_batch_seq seq = { .row0 = 0, .n_rows = 1, .n_past = n_ctx };
    struct vl2_batch b = { .struct_size = sizeof(b), .n_rows = 1, .n_seqs = 1, .seqs = &seq };
    struct vl2_err err = { 0 };
    double t;

    if (k->o->kv_new(k->c, &ks, &kv, &err) < 0)
        die("kv_new", &err);
    {   /* fill the cache as prefill would, so its pages are real */
        struct mha_job pj = { .k = k };
        struct vl2_batch_seq ps = { .row0 = 0, .n_rows = n_ctx, .n_past = 0, .kv = kv };
        struct vl2_batch pb = { .struct_size = sizeof(pb), .n_rows = n_ctx, .n_seqs = 1,
                                .seqs = &ps };
        act(k, &pj.q, n_ctx, 1280);
        act(k, &pj.kk, n_ctx, 1280);
        act(k, &pj.v, n_ctx, 1280);
        act(k, &pj.out, n_ctx, 1280);
        if (k->o->begin_batch(k->c, &pb, &err) < 0)
            die("begin_batch", &err);
        mha_run(&pj);
        k->o->free_tensor(k->c, &pj.q);
        k->o->free_tensor(k->c, &pj.kk);
        k->o->free_tensor(k->c, &pj.v);
        k->o->free_tensor(k->c, &pj.out);
    }
    seq.kv = kv;
    act(k, &j.q, 1, 1280);
    act(k, &j.kk, 1, 1280);
    act(k, &j.v, 1, 1280);
    act(k, &j.out, 1, 1280);
    if (k->o->begin_batch(k->c, &b, &err) < 0)
        die("begin_batch", &err);
    t = measure(mha_run, &j, NULL);
    k->o->free_tensor(k->c, &j.q);
    k->o->free_tensor(k->c, &j.kk);
    k->o->free_tensor(k->c, &j.v);
    k->o->free_tensor(k->c, &j.out);
    k->o->kv_free(k->c, kv);
    return t;
}

struct moe_job {
    struct bk *k;
    struct vl2_moe_layer L;
    struct vl2_tensor x, out;
};

static void moe_run(void *v)
{
    struct moe_job *j = v;
    struct vl2_err err = { 0 };
    if (j->k->o->moe(j->k->c, &j->out, &j->x, &j->L, &err) < 0)
        die("moe", &err);
}

/* One tiny MoE layer (64 experts 896x1280, top-6, 2 shared) with m rows. */
static double bench_moe(struct bk *k, int m, double *bytes_per_call, double *cpu)
{
    enum { E = 64, D = 1280, I = 896 };
    struct moe_job j = { .k = k };
    uint16_t *raw = rand_bf16((size_t)E * 3 * I * D + (size_t)3 * 2 * I * D + (size_t)E * D);
    struct vl2_tensor *t = calloc(3 * E + 4, sizeof(*t));
    const struct vl2_tensor **pg = calloc(E, sizeof(*pg)), **pu = calloc(E, sizeof(*pu)),
                            **pd = calloc(E, sizeof(*pd));
    struct vl2_err err = { 0 };
    size_t off = 0;
    double s;
    int64_t ne_gu[2] = { I, D }, ne_d[2] = { D, I }, ne_sgu[2] = { 2 * I, D }, ne_sd[2] = { D, 2 * I },
            ne_r[2] = { E, D };

    for (int e = 0; e < E; e++) {
        k->o->weight(k->c, &t[3 * e], VL2_DTYPE_BF16, 2, ne_gu, raw + off, &err);
        off += (size_t)I * D;
        k->o->weight(k->c, &t[3 * e + 1], VL2_DTYPE_BF16, 2, ne_gu, raw + off, &err);
        off += (size_t)I * D;
        k->o->weight(k->c, &t[3 * e + 2], VL2_DTYPE_BF16, 2, ne_d, raw + off, &err);
        off += (size_t)I * D;
        pg[e] = &t[3 * e];
        pu[e] = &t[3 * e + 1];
        pd[e] = &t[3 * e + 2];
    }
    k->o->weight(k->c, &t[3 * E], VL2_DTYPE_BF16, 2, ne_sgu, raw + off, &err);
    off += (size_t)2 * I * D;
    k->o->weight(k->c, &t[3 * E + 1], VL2_DTYPE_BF16, 2, ne_sgu, raw + off, &err);
    off += (size_t)2 * I * D;
    k->o->weight(k->c, &t[3 * E + 2], VL2_DTYPE_BF16, 2, ne_sd, raw + off, &err);
    off += (size_t)2 * I * D;
    k->o->weight(k->c, &t[3 * E + 3], VL2_DTYPE_BF16, 2, ne_r, raw + off, &err);
    j.L = (struct vl2_moe_layer){ .struct_size = sizeof(struct vl2_moe_layer),
                                  .router = &t[3 * E + 3], .gate = pg, .up = pu, .down = pd,
                                  .sh_gate = &t[3 * E], .sh_up = &t[3 * E + 1],
                                  .sh_down = &t[3 * E + 2], .n_expert = E, .top_k = 6,
                                  .scoring = VL2_MOE_SOFTMAX, .method = VL2_MOE_GREEDY,
                                  .routed_scale = 1.0f };
    act(k, &j.x, m, D);
    act(k, &j.out, m, D);
    s = measure(moe_run, &j, cpu);
    /* decode (m = 1): 6 routed + 2 shared expert MLPs + router */
    *bytes_per_call = (6.0 * 3 * I * D + 3.0 * 2 * I * D + (double)E * D) * 2;
    for (int i = 0; i < 3 * E + 4; i++)
        k->o->free_tensor(k->c, &t[i]);
    k->o->free_tensor(k->c, &j.x);
    k->o->free_tensor(k->c, &j.out);
    free(t);
    free(pg);
    free(pu);
    free(pd);
    free(raw);
    return s;
}

int main(int argc, char **argv)
{
    const char *dir = NULL, *options = NULL;
    int threads[4] = { 1, 2 }, n_thr = 2, gemm_only = 0;
    size_t bw_size = (size_t)512 << 20;
    void *bw_buf;

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0) {
            n_reps = 3;
            rep_time = 0.1;
        } else if (strcmp(argv[i], "--gemm-only") == 0) {
            gemm_only = 1;
        } else if (strcmp(argv[i], "--options") == 0 && i + 1 < argc) {
            options = argv[++i];
        } else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc) {
            n_thr = sscanf(argv[++i], "%d,%d,%d,%d", &threads[0], &threads[1], &threads[2],
                           &threads[3]);
        } else {
            dir = argv[i];
        }
    }
    bw_buf = malloc(bw_size);
    memset(bw_buf, 1, bw_size);

    for (int ti = 0; ti < n_thr; ti++) {
        struct vl2_backend_params p = { .struct_size = sizeof(p), .n_threads = threads[ti],
                                        .options = options };
        struct vl2_err err = { 0 };
        struct bk k;
        struct bw_job bj = { bw_buf, bw_size, threads[ti] };
        static const struct { const char *name; int64_t n, kd; int copies; } gv[] = {
            { "dense gate/up 6848x1280", 6848, 1280, 8 },
            { "dense down    1280x6848", 1280, 6848, 8 },
            { "expert gate/up 896x1280", 896, 1280, 64 },
            { "expert down    1280x896", 1280, 896, 64 },
            { "lm_head     129280x1280", 129280, 1280, 1 },
        };
        static const struct { const char *name; int64_t m, n, kd; int dt; } gm[] = {
            { "vision qkv   729x1152 -> 3456, bf16", 729, 3456, 1152, VL2_DTYPE_BF16 },
            { "vision fc1   729x1152 -> 4304, bf16", 729, 4304, 1152, VL2_DTYPE_BF16 },
            { "vision fc1   729x1152 -> 4304, f32 ", 729, 4304, 1152, VL2_DTYPE_F32 },
            { "prefill up   432x1280 -> 6848, bf16", 432, 6848, 1280, VL2_DTYPE_BF16 },
            { "expert        40x1280 -> 896,  bf16", 40, 896, 1280, VL2_DTYPE_BF16 },
            { "few rows       8x1280 -> 6848, bf16", 8, 6848, 1280, VL2_DTYPE_BF16 },
        };
        struct vl2_peak pk;
        double bw, pf, pb;

        if (vl2_backend_load(&k.b, "cpu", dir, &p, &err) < 0)
            die("load", &err);
        k.o = k.b->ops;
        k.c = k.b->ctx;
        printf("== %s\n", k.o->describe(k.c));
        if (!gemm_only) {
            bw = bw_size / measure(bw_run, &bj, NULL) / 1e9;
            printf("memory read bandwidth, %d thread%s: %.1f GB/s\n", threads[ti],
                   threads[ti] > 1 ? "s" : "", bw);
            printf("decode GEMV (linear, 1 row), bf16 weights from memory:\n");
            for (size_t i = 0; i < sizeof(gv) / sizeof(gv[0]); i++) {
                double s = bench_linear(&k, 1, gv[i].n, gv[i].kd, VL2_DTYPE_BF16, gv[i].copies, NULL);
                double g = gv[i].n * gv[i].kd * 2 / s / 1e9;
                printf("  %s : %6.1f GB/s  %3.0f%% of bandwidth  (%.3f ms)\n", gv[i].name, g,
                       100 * g / bw, s * 1e3);
            }
            {
                double bytes, s = bench_moe(&k, 1, &bytes, NULL);
                printf("  moe layer, 1 row (6+2 experts 896x1280 + router): %.3f ms, %.1f GB/s, %.0f%% of bandwidth\n",
                       s * 1e3, bytes / s / 1e9, 100 * bytes / s / 1e9 / bw);
            }
        }
        vl2_peak_measure(&pk, threads[ti], 0.1);
        vl2_peak_print(&pk);
        pf = vl2_peak_for(&pk, VL2_PEAK_F32_ZMM, threads[ti]);
        pb = vl2_peak_for(&pk, VL2_PEAK_BF16, threads[ti]);
        printf("many rows (blocked product), GFLOP/s wall / per core (CPU time), share of the f32 zmm / bf16 peak:\n");
        for (size_t i = 0; i < sizeof(gm) / sizeof(gm[0]); i++) {
            double cpu, s = bench_linear(&k, gm[i].m, gm[i].n, gm[i].kd, gm[i].dt, 1, &cpu);
            double fl = 2.0 * gm[i].m * gm[i].n * gm[i].kd;
            printf("  %s : %6.1f / %5.1f  %3.0f%% / %3.0f%%\n", gm[i].name, fl / s / 1e9,
                   fl / cpu / 1e9, pf > 0 ? 100 * fl / s / 1e9 / pf : 0,
                   pb > 0 ? 100 * fl / s / 1e9 / pb : 0);
        }
        if (!gemm_only) {
            struct full_job fj = { .k = &k };
            double cpu, s, bytes;
            act(&k, &fj.qkv, 729L * 2, 3 * 1152);
            act(&k, &fj.out, 729L * 2, 1152);
            s = measure(full_run, &fj, &cpu);
            printf("vision attention 729 x 16 heads x 72: %.1f ms per tile (%.1f GFLOP/s, %.1f per core; %.0f%% of the f32 zmm peak, %.0f%% of bf16)\n",
                   s / 2 * 1e3, 2 * 4.0 * 729 * 729 * 72 * 16 / s / 1e9,
                   2 * 4.0 * 729 * 729 * 72 * 16 / cpu / 1e9,
                   pf > 0 ? 100 * 2 * 4.0 * 729 * 729 * 72 * 16 / s / 1e9 / pf : 0,
                   pb > 0 ? 100 * 2 * 4.0 * 729 * 729 * 72 * 16 / s / 1e9 / pb : 0);
            k.o->free_tensor(k.c, &fj.out);
            act(&k, &fj.out, 729, 4304);
            s = measure(gelu_run, &fj, NULL);
            printf("gelu_tanh 729 x 4304: %.2f ms\n", s * 1e3);
            k.o->free_tensor(k.c, &fj.qkv);
            k.o->free_tensor(k.c, &fj.out);
            printf("MHA decode attention, one layer (10 heads x 128, F32 cache): ctx 512 %.3f ms, ctx 4096 %.3f ms\n",
                   bench_mha_decode(&k, 512) * 1e3, bench_mha_decode(&k, 4096) * 1e3);
            s = bench_moe(&k, 432, &bytes, &cpu);
            printf("moe layer, 432 rows (prefill): %.1f ms (%.0f rows/s; CPU time %.1f ms)\n",
                   s * 1e3, 432 / s, cpu * 1e3);
        }
        vl2_backend_unload(k.b);
    }
    free(bw_buf);
    return 0;
}

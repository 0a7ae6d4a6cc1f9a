/* peak.c - measured FMA and bf16 dot-product peak (see peak.h). */
#include "peak.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#if defined(__x86_64__)
#include <immintrin.h>
#define PEAK_X86 1
#else
#define PEAK_X86 0
#endif

#define N_ACC 16    /* independent accumulators: > latency x units of any current core */
#define N_REPS 3

static double wall(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

#if PEAK_X86
/* Each loop iteration issues N_ACC independent instructions; the result is
 * returned so that nothing is optimised away. */
__attribute__((target("avx512f"))) static float run_zmm(long iters)
{
    __m512 acc[N_ACC];
    const __m512 x = _mm512_set1_ps(0.999999f), y = _mm512_set1_ps(1e-6f);
    for (int j = 0; j < N_ACC; j++)
        acc[j] = _mm512_set1_ps((float)j);
    for (long i = 0; i < iters; i++)
#pragma GCC unroll 16
        for (int j = 0; j < N_ACC; j++)
            acc[j] = _mm512_fmadd_ps(acc[j], x, y);
    for (int j = 1; j < N_ACC; j++)
        acc[0] = _mm512_add_ps(acc[0], acc[j]);
    return _mm512_reduce_add_ps(acc[0]);
}

__attribute__((target("avx2,fma"))) static float run_ymm(long iters)
{
    __m256 acc[N_ACC];
    const __m256 x = _mm256_set1_ps(0.999999f), y = _mm256_set1_ps(1e-6f);
    float out[8], s = 0;
    for (int j = 0; j < N_ACC; j++)
        acc[j] = _mm256_set1_ps((float)j);
    for (long i = 0; i < iters; i++)
#pragma GCC unroll 16
        for (int j = 0; j < N_ACC; j++)
            acc[j] = _mm256_fmadd_ps(acc[j], x, y);
    for (int j = 1; j < N_ACC; j++)
        acc[0] = _mm256_add_ps(acc[0], acc[j]);
    _mm256_storeu_ps(out, acc[0]);
    for (int j = 0; j < 8; j++)
        s += out[j];
    return s;
}

__attribute__((target("avx512f,avx512bf16"))) static float run_bf16(long iters)
{
    __m512 acc[N_ACC];
    /* 0x3f80 = 1.0, 0x3380 ~ 6e-8: products stay tiny, sums finite */
    const __m512bh a = (__m512bh)_mm512_set1_epi16(0x3f80), b = (__m512bh)_mm512_set1_epi16(0x3380);
    for (int j = 0; j < N_ACC; j++)
        acc[j] = _mm512_set1_ps((float)j);
    for (long i = 0; i < iters; i++)
#pragma GCC unroll 16
        for (int j = 0; j < N_ACC; j++)
            acc[j] = _mm512_dpbf16_ps(acc[j], a, b);
    for (int j = 1; j < N_ACC; j++)
        acc[0] = _mm512_add_ps(acc[0], acc[j]);
    return _mm512_reduce_add_ps(acc[0]);
}
#endif

static const double flop_per_insn[VL2_PEAK_N] = { 32, 16, 64 };

static int supported(int kind)
{
#if PEAK_X86
    __builtin_cpu_init();
    switch (kind) {
    case VL2_PEAK_F32_ZMM: return __builtin_cpu_supports("avx512f");
    case VL2_PEAK_F32_YMM: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case VL2_PEAK_BF16:
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bf16");
    }
#endif
    (void)kind;
    return 0;
}

static float run_kind(int kind, long iters)
{
#if PEAK_X86
    switch (kind) {
    case VL2_PEAK_F32_ZMM: return run_zmm(iters);
    case VL2_PEAK_F32_YMM: return run_ymm(iters);
    case VL2_PEAK_BF16: return run_bf16(iters);
    }
#endif
    (void)kind;
    (void)iters;
    return 0;
}

static double thread_cpu(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

struct peak_thr {
    pthread_barrier_t *bar;
    int kind;
    long iters;
    double cpu;     /* thread CPU seconds of the run */
    volatile float sink;
};

static void run_one(struct peak_thr *t)
{
    double c0 = thread_cpu();
    t->sink = run_kind(t->kind, t->iters);
    t->cpu = thread_cpu() - c0;
}

static void *peak_thread(void *v)
{
    struct peak_thr *t = v;
    pthread_barrier_wait(t->bar);
    run_one(t);
    pthread_barrier_wait(t->bar);
    return NULL;
}

/* Best GFLOP/s of @n threads each running @iters iterations of @kind, by
 * wall time; *per_cpu gets the best rate of one thread by its CPU time. */
static double run_threads(int kind, int n, long iters, double *per_cpu)
{
    pthread_barrier_t bar;
    pthread_t *tid = calloc((size_t)n, sizeof(*tid));
    struct peak_thr *th = calloc((size_t)n, sizeof(*th));
    double best = 0;
    int started = 0;

    if (!tid || !th || pthread_barrier_init(&bar, NULL, (unsigned)n) != 0) {
        free(tid);
        free(th);
        return -1;
    }
    for (int rep = 0; rep < N_REPS; rep++) {
        double t0, t;
        for (int i = 0; i < n; i++)
            th[i] = (struct peak_thr){ .bar = &bar, .kind = kind, .iters = iters };
        started = 1;
        for (int i = 1; i < n; i++)
            if (pthread_create(&tid[i], NULL, peak_thread, &th[i]) != 0) {
                /* cannot happen after the first repetition succeeded; give up */
                started = 0;
                break;
            }
        if (!started)
            break;
        pthread_barrier_wait(&bar);
        t0 = wall();
        run_one(&th[0]);
        pthread_barrier_wait(&bar);
        t = wall() - t0;
        for (int i = 1; i < n; i++)
            pthread_join(tid[i], NULL);
        for (int i = 0; i < n && per_cpu; i++)
            if (th[i].cpu > 0 && iters * N_ACC * flop_per_insn[kind] / th[i].cpu / 1e9 > *per_cpu)
                *per_cpu = iters * N_ACC * flop_per_insn[kind] / th[i].cpu / 1e9;
        if (t > 0 && (double)n * iters * N_ACC * flop_per_insn[kind] / t / 1e9 > best)
            best = (double)n * iters * N_ACC * flop_per_insn[kind] / t / 1e9;
    }
    pthread_barrier_destroy(&bar);
    free(tid);
    free(th);
    return started ? best : -1;
}

int vl2_peak_measure(struct vl2_peak *p, int n_threads, double seconds)
{
    double la[1];

    if (n_threads < 1)
        n_threads = 1;
    if (seconds <= 0)
        seconds = 0.1;
    p->n_threads = n_threads;
    p->load1 = getloadavg(la, 1) == 1 ? la[0] : -1;
    for (int k = 0; k < VL2_PEAK_N; k++) {
        double g;
        long iters;
        p->core[k] = p->core_wall[k] = p->all[k] = 0;
        if (!supported(k))
            continue;
        /* calibrate: iterations for about @seconds on one thread */
        g = run_threads(k, 1, 20000, NULL);
        if (g <= 0)
            return -1;
        iters = (long)(seconds * g * 1e9 / (N_ACC * flop_per_insn[k]) / N_REPS);
        if (iters < 1000)
            iters = 1000;
        p->core_wall[k] = run_threads(k, 1, iters, &p->core[k]);
        p->all[k] = n_threads > 1 ? run_threads(k, n_threads, iters, &p->core[k]) : p->core_wall[k];
        if (p->core_wall[k] < 0 || p->all[k] < 0)
            return -1;
    }
    return 0;
}

const char *vl2_peak_name(int kind)
{
    switch (kind) {
    case VL2_PEAK_F32_ZMM: return "f32 fma zmm (vfmadd231ps)";
    case VL2_PEAK_F32_YMM: return "f32 fma ymm (vfmadd231ps)";
    case VL2_PEAK_BF16: return "bf16 dot zmm (vdpbf16ps)";
    }
    return "?";
}

void vl2_peak_print(const struct vl2_peak *p)
{
    printf("peak (measured now, load average %.2f):\n", p->load1);
    for (int k = 0; k < VL2_PEAK_N; k++) {
        if (p->core[k] <= 0)
            printf("  %-26s : not supported by this CPU\n", vl2_peak_name(k));
        else
            printf("  %-26s : %7.1f GFLOP/s per core (CPU time; %.1f wall), %7.1f wall with %d thread%s\n",
                   vl2_peak_name(k), p->core[k], p->core_wall[k], p->all[k], p->n_threads,
                   p->n_threads > 1 ? "s" : "");
    }
}

double vl2_peak_for(const struct vl2_peak *p, int kind, int n_threads)
{
    if (kind < 0 || kind >= VL2_PEAK_N)
        return 0;
    if (n_threads == p->n_threads)
        return p->all[kind];
    if (n_threads == 1)
        return p->core_wall[kind];
    return p->core_wall[kind] * n_threads;
}

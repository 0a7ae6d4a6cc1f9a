/* peak.h - the compute peak of this machine, measured in the same run as a
 * benchmark (tests/bench/peak, linked by the compute-bound benchmarks).
 *
 * Three instruction streams, each of many independent accumulators so that
 * the FMA (or dot-product) units, not the latency, bound them:
 *   f32_zmm   vfmadd231ps zmm    32 FLOP per instruction (16 lanes, mul+add)
 *   f32_ymm   vfmadd231ps ymm    16 FLOP per instruction
 *   bf16      vdpbf16ps zmm      64 FLOP per instruction (32 bf16 pairs, mul+add)
 * each run on one thread (per core) and on n threads at once (all threads).
 * A stream this CPU lacks (cpuid at run time) is reported as 0.  Figures are
 * the best of a few repetitions (the least disturbed one on a shared
 * machine).  Nothing is assumed about the processor: Zen 4 and Zen 5 differ
 * by 2x in zmm FMA throughput.
 */
#ifndef VL2_BENCH_PEAK_H
#define VL2_BENCH_PEAK_H

enum vl2_peak_kind { VL2_PEAK_F32_ZMM = 0, VL2_PEAK_F32_YMM = 1, VL2_PEAK_BF16 = 2,
                     VL2_PEAK_N = 3 };

struct vl2_peak {
    int    n_threads;             /* threads of the "all" figures */
    double core[VL2_PEAK_N];      /* GFLOP/s of one thread by its CPU time (the speed
                                   * of a core while it runs: stable on a shared machine) */
    double core_wall[VL2_PEAK_N]; /* GFLOP/s of one thread by wall time */
    double all[VL2_PEAK_N];       /* GFLOP/s of n_threads together, wall time */
    double load1;                 /* 1-minute load average when measured (-1: unknown) */
};

/* Measure every stream for one thread and for @n_threads threads (at least
 * 1), about @seconds per figure (0: 0.1 s).  Returns 0, -1 if threads could
 * not be started. */
int vl2_peak_measure(struct vl2_peak *p, int n_threads, double seconds);

/* Name of @kind ("f32 fma zmm", "f32 fma ymm", "bf16 dot zmm"). */
const char *vl2_peak_name(int kind);

/* Print the figures on one line each, with the load average, to stdout. */
void vl2_peak_print(const struct vl2_peak *p);

/* The wall-time peak for a product of @n_threads threads in @kind: the
 * all-thread figure when n_threads == p->n_threads, the one-thread wall
 * figure times n_threads otherwise (0 when not measured).  Compare CPU-time
 * rates with p->core[kind]. */
double vl2_peak_for(const struct vl2_peak *p, int kind, int n_threads);

#endif /* VL2_BENCH_PEAK_H */

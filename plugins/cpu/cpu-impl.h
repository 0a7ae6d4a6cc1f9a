/* cpu-impl.h - internals of the CPU backend (vl2-backend-cpu.so).
 *
 * Everything here is private to plugins/cpu.  The backend runs every op
 * synchronously on the calling thread plus a pool of worker threads; the
 * asynchronous contract of vl2-backend.h is met trivially (an op has finished
 * when it returns, sync() has nothing to wait for).
 */
#ifndef VL2_CPU_IMPL_H
#define VL2_CPU_IMPL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vl2-backend.h"
#include "vl2-float.h"

/* ---- instruction sets ---------------------------------------------------- */

enum cpu_isa { CPU_ISA_SCALAR = 0, CPU_ISA_AVX2 = 1, CPU_ISA_AVX512 = 2 };

/* Kernels that differ per instruction set.  All take F32 activations and
 * accumulate in F32; per output element the order of operations is fixed
 * (independent of tiling and of the thread that runs it). */
struct cpu_kernels {
    int isa;  /* enum cpu_isa */
    /* y[i * ldy + j] = sum_k x[i * ldx + k] * w[j][k] for i < m, j < n;
     * w rows are @ldw elements apart, in @wdtype (F32, F16, BF16), any alignment. */
    void (*gemm_small)(const float *x, int64_t ldx, int64_t m, const void *w, int64_t ldw,
                       int wdtype, int64_t n, int64_t k, float *y, int64_t ldy);
    /* dst[i] = (float) src[i] for i < n, src in @dtype (F32, F16, BF16). */
    void (*to_f32)(float *dst, const void *src, int dtype, int64_t n);
    /* sum_i a[i] * b[i] */
    float (*dot)(const float *a, const float *b, int64_t n);
    /* y[i] += a * x[i] */
    void (*axpy)(float *y, float a, const float *x, int64_t n);
    /* y[i] += a * w[i], w in @dtype (F32, F16, BF16), any alignment */
    void (*axpy_w)(float *y, float a, const void *w, int dtype, int64_t n);
    /* o[i] = gelu_tanh(a[i]) = a / (1 + exp(-2 sqrt(2/pi) (a + 0.044715 a^3))); o may be a */
    void (*gelu_tanh)(float *o, const float *a, int64_t n);
    /* o[i] = silu(g[i]) * u[i]; o may be g */
    void (*swiglu)(float *o, const float *g, const float *u, int64_t n);
    /* s[0..nv) = softmax(scale * s[0..nv)), s[nv..n) = 0 */
    void (*softmax)(float *s, int64_t nv, int64_t n, float scale);
};

/* Table for @isa (falls back to a lower one the compiler could not build). */
const struct cpu_kernels *cpu_kernels_get(int isa);
/* Best instruction set this machine supports. */
int cpu_isa_detect(void);
/* Bit mask (1 << enum cpu_isa) of the sets this machine supports. */
unsigned cpu_isa_supported(void);
bool cpu_has_avx512bf16(void);

/* ---- scalar conversions -------------------------------------------------- */

/* bf16 and f16 to float32: vl2_bf16_to_f32, vl2_f16_to_f32 (vl2-float.h) */

/* F32 data that may be read through a float pointer: weights from the
 * checkpoint can have any alignment, and those are read with memcpy or
 * unaligned vector loads instead. */
static inline bool f32_direct(const struct vl2_tensor *t)
{
    return t->dtype == VL2_DTYPE_F32 && ((uintptr_t)t->data & 3u) == 0;
}

/* Element (r, c) of a weight-like tensor as float (any float dtype). */
static inline float tensor_get_f32(const struct vl2_tensor *t, int64_t r, int64_t c)
{
    int64_t i = r * t->ld + c;
    switch (t->dtype) {
    case VL2_DTYPE_F32: { float f; memcpy(&f, (const char *)t->data + i * 4, 4); return f; }
    case VL2_DTYPE_BF16: { uint16_t h; memcpy(&h, (const char *)t->data + i * 2, 2); return vl2_bf16_to_f32(h); }
    case VL2_DTYPE_F16: { uint16_t h; memcpy(&h, (const char *)t->data + i * 2, 2); return vl2_f16_to_f32(h); }
    }
    return 0.0f;
}

/* ---- thread pool ---------------------------------------------------------- */

/* Run @fn(arg, task, tid) for task = 0 .. n_tasks-1, spread over the pool;
 * tid < pool size identifies the thread (0 = the caller). */
typedef void (*cpu_task_fn)(void *arg, int64_t task, int tid);

struct cpu_pool;

int  cpu_pool_new(struct cpu_pool **ret, int n_threads);
void cpu_pool_free(struct cpu_pool *p);
void cpu_pool_run(struct cpu_pool *p, int64_t n_tasks, cpu_task_fn fn, void *arg);

/* ---- context -------------------------------------------------------------- */

#define CPU_ALIGN 64

struct cpu_scratch {
    void  *p;
    size_t size;
};

struct vl2_backend_ctx {
    int                        n_threads;
    struct cpu_pool           *pool;
    const struct cpu_kernels  *k;
    size_t                     mem_budget;
    _Atomic size_t             mem_used;
    struct cpu_scratch        *scratch;    /* n_threads per-thread buffers */
    struct vl2_batch_seq      *seqs;       /* current batch (copied) */
    int32_t                    n_seqs;
    int32_t                    n_rows;
    int32_t                    seqs_cap;
    int32_t                   *row_pos;    /* position of each batch row */
    int32_t                    row_pos_cap;
    int32_t                    blas_min_rows; /* linear: rows from which sgemm is used */
    int32_t                    own_gemm;   /* many rows: cpu_gemm512 instead of OpenBLAS */
    int32_t                    mla_mode;   /* 0 auto, 1 absorbed only, 2 expanded only */
    int32_t                    precision;  /* enum cpu_precision (kern.h) */
    int32_t                    bf16_dp;    /* bf16 precision through vdpbf16ps kernels */
    int32_t                    attn_mode;  /* enum cpu_attn_mode (kern.h) */
    uint8_t                   *mla_exp;    /* per sequence of the batch: expanded form */
    int32_t                    mla_exp_cap;
    struct cpu_scratch         vec[4];     /* parameter vectors converted to F32 */
    struct cpu_scratch         big;        /* moe: routing and expert activations */
    struct cpu_scratch         tasks;      /* attention: task list */
    char                       desc[256];
};

struct cpu_kv_layer {
    float *a;   /* MHA: K [n_kv_head, capacity, head_dim]; MLA: [capacity, kv_lora+rope] = c | k_pe */
    float *b;   /* MHA: V [n_kv_head, capacity, head_dim]; MLA: NULL */
};

struct vl2_kv {
    struct vl2_kv_shape  shape;
    int64_t              width_a;   /* floats per token per layer in a */
    int64_t              width_b;   /* floats per token per layer in b */
    float               *mem;
    size_t               size;
    struct cpu_kv_layer *layers;
};

/* Memory of a tensor from alloc()/weight(). */
struct cpu_buf {
    uint32_t magic;
    uint32_t owned;   /* 1: data was allocated by us (alloc), 0: weight reference */
    size_t   size;
    void    *base;
};
#define CPU_BUF_MAGIC 0x76326370u

/* Per-thread scratch of at least @size bytes for every thread (call before a
 * parallel region).  Returns 0 or VL2_ENOMEM. */
int cpu_scratch_reserve(struct vl2_backend_ctx *ctx, size_t size, struct vl2_err *err);
static inline void *cpu_scratch(struct vl2_backend_ctx *ctx, int tid)
{
    return ctx->scratch[tid].p;
}

void *cpu_aligned_alloc(size_t size);
/* Grow @s to @size bytes (contents lost).  0 or VL2_ENOMEM. */
int cpu_buf_reserve(struct vl2_backend_ctx *ctx, struct cpu_scratch *s, size_t size,
                    struct vl2_err *err);

/* Vector tensor @t (checked with cpu_check_vec) as F32: its own data when it
 * is F32, else converted into ctx->vec[slot].  NULL only for out of memory. */
const float *cpu_vec_f32(struct vl2_backend_ctx *ctx, const struct vl2_tensor *t, int64_t n,
                         int slot, struct vl2_err *err);

/* ---- argument checks (every op validates its inputs) ------------------------ */

int cpu_check_tensor(const struct vl2_tensor *t, const char *op, const char *what,
                     struct vl2_err *err);
int cpu_check_f32(const struct vl2_tensor *t, const char *op, const char *what,
                  struct vl2_err *err);
int cpu_check_float(const struct vl2_tensor *t, const char *op, const char *what,
                    struct vl2_err *err);
/* Whether the storage spanned by the rows of a and b intersects. */
bool cpu_overlaps(const struct vl2_tensor *a, const struct vl2_tensor *b);
int cpu_check_no_alias(const struct vl2_tensor *out, const struct vl2_tensor *in, const char *op,
                       const char *what, struct vl2_err *err);
int cpu_check_vec(const struct vl2_tensor *t, int64_t n, const char *op, const char *what,
                  struct vl2_err *err);
/* VL2_EABI unless @got (a struct_size) is @want (our sizeof). */
int cpu_check_size(uint32_t got, size_t want, const char *op, const char *what,
                   struct vl2_err *err);

/* ---- ops (one file each group) ------------------------------------------------ */

/* Matrix product used by linear and moe: y[m, n] = x[m, k] * w[n, k]^T over
 * the rows [j0, j1) of w (written to y columns j0 .. j1); single-threaded,
 * may use per-thread scratch @tmp of cpu_mm_scratch(k) bytes. */
size_t cpu_mm_scratch(int64_t k);
void cpu_mm(struct vl2_backend_ctx *ctx, const float *x, int64_t ldx, int64_t m,
            const struct vl2_tensor *w, int64_t j0, int64_t j1, float *y, int64_t ldy,
            void *tmp);

/* AVX-512 blocked product C[m, n] = A[m, k] * W[n, k]^T (see gemm.c);
 * @scratch: cpu_gemm512_scratch(n) bytes, 64-byte aligned. */
size_t cpu_gemm512_scratch(int64_t n);
void cpu_gemm512(const float *a, int64_t lda, int64_t m, const void *w, int64_t ldw,
                 int wdtype, int64_t n, int64_t k, float *c, int64_t ldc, float *scratch);

int cpu_embed(struct vl2_backend_ctx *, struct vl2_tensor *, const struct vl2_tensor *,
              const int32_t *, struct vl2_err *);
int cpu_linear(struct vl2_backend_ctx *, struct vl2_tensor *, const struct vl2_tensor *,
               const struct vl2_tensor *, const struct vl2_tensor *, struct vl2_err *);
int cpu_rmsnorm(struct vl2_backend_ctx *, struct vl2_tensor *, const struct vl2_tensor *,
                const struct vl2_tensor *, float, struct vl2_err *);
int cpu_layernorm(struct vl2_backend_ctx *, struct vl2_tensor *, const struct vl2_tensor *,
                  const struct vl2_tensor *, const struct vl2_tensor *, float, struct vl2_err *);
int cpu_add(struct vl2_backend_ctx *, struct vl2_tensor *, const struct vl2_tensor *,
            const struct vl2_tensor *, struct vl2_err *);
int cpu_argmax(struct vl2_backend_ctx *, struct vl2_tensor *, const struct vl2_tensor *,
               struct vl2_err *);
int cpu_gelu_tanh(struct vl2_backend_ctx *, struct vl2_tensor *, struct vl2_err *);
int cpu_gelu_erf(struct vl2_backend_ctx *, struct vl2_tensor *, struct vl2_err *);
int cpu_swiglu(struct vl2_backend_ctx *, struct vl2_tensor *, const struct vl2_tensor *,
               const struct vl2_tensor *, struct vl2_err *);
int cpu_copy_rows(struct vl2_backend_ctx *, struct vl2_tensor *, const int32_t *,
                  const struct vl2_tensor *, const int32_t *, int32_t, struct vl2_err *);
int cpu_patchify(struct vl2_backend_ctx *, struct vl2_tensor *, const struct vl2_tensor *,
                 int32_t, int32_t, struct vl2_err *);
int cpu_unfold2x2(struct vl2_backend_ctx *, struct vl2_tensor *, const struct vl2_tensor *,
                  int32_t, struct vl2_err *);
int cpu_attn_full(struct vl2_backend_ctx *, struct vl2_tensor *, const struct vl2_tensor *,
                  int32_t, int32_t, int32_t, float, struct vl2_err *);
int cpu_rope(struct vl2_backend_ctx *, struct vl2_tensor *, int32_t, int32_t, int32_t, int32_t,
             float, int32_t, struct vl2_err *);
int cpu_attn_mha(struct vl2_backend_ctx *, int32_t, struct vl2_tensor *,
                 const struct vl2_tensor *, const struct vl2_tensor *,
                 const struct vl2_tensor *, int32_t, int32_t, int32_t, float, struct vl2_err *);
int cpu_attn_mla(struct vl2_backend_ctx *, int32_t, struct vl2_tensor *,
                 const struct vl2_tensor *, const struct vl2_tensor *,
                 const struct vl2_tensor *, const struct vl2_tensor *, int32_t, int32_t,
                 int32_t, int32_t, float, struct vl2_err *);
int cpu_moe(struct vl2_backend_ctx *, struct vl2_tensor *, const struct vl2_tensor *,
            const struct vl2_moe_layer *, struct vl2_err *);

#endif /* VL2_CPU_IMPL_H */

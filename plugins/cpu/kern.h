/* kern.h - compute-bound kernels of the CPU backend (the bf16 precision mode
 * and the fused vision attention), private to plugins/cpu.
 *
 * Precision modes (option precision=f32|bf16, ctx->precision):
 *   f32   every product in F32 (the float32-exact path of the golden tests);
 *   bf16  the blocked products of linear(), moe and the expanded MLA form
 *         (rows >= blas_min_rows) round both operands to bf16 (round to
 *         nearest even) and accumulate in F32, as PyTorch's bf16 model does:
 *         with AVX512-BF16 through vdpbf16ps (ctx->bf16_dp), elsewhere the
 *         same rounding with F32 FMA kernels (same values up to summation
 *         order).  attn_full runs the fused kernel (attn-fused.c) where
 *         AVX-512 is used: q, k, v and the probabilities rounded to bf16 with
 *         vdpbf16ps, F32 without it; the score-matrix form of attn.c (F32)
 *         on AVX2 and scalar.  Products of fewer rows (decode GEMVs,
 *         memory-bound) keep F32 activations.
 */
#ifndef VL2_CPU_KERN_H
#define VL2_CPU_KERN_H

#include <stddef.h>
#include <stdint.h>

#include "cpu-impl.h"

enum cpu_precision { CPU_PREC_F32 = 0, CPU_PREC_BF16 = 1 };

/* ---- gemm-bf16.c (AVX512-BF16; call only where ctx->bf16_dp) ------------------ */

#define CPU_GEMMBF_NB 256   /* weight rows per cpu_gemmbf call, at most */

/* Bytes of 64-byte aligned scratch cpu_gemmbf needs (any m, n <= CPU_GEMMBF_NB, any k). */
size_t cpu_gemmbf_scratch(void);
/* C[m, n] = bf16(A)[m, k] * bf16(W)[n, k]^T (+ bias[n]), F32 accumulation; W
 * rows @ldw elements apart in @wdtype (BF16, F32, F16), any alignment;
 * n <= CPU_GEMMBF_NB; @bias F32 or NULL, added after the last block of k. */
void cpu_gemmbf(const float *a, int64_t lda, int64_t m, const void *w, int64_t ldw, int wdtype,
                int64_t n, int64_t k, const float *bias, float *c, int64_t ldc, void *scratch);

/* The same with the activations packed once for every call of an op
 * (cpu_gemmbf_pack_a: groups [g0, g1) of 12 rows of the m x k activations,
 * all of k, into a buffer of cpu_gemmbf_pa_size(m, k) bytes; threads may pack
 * disjoint groups), then any number of cpu_gemmbf_pa calls over column
 * ranges: the same results as cpu_gemmbf, bit for bit. */
#define CPU_GEMMBF_GROUP 12
size_t cpu_gemmbf_pa_size(int64_t m, int64_t k);
void cpu_gemmbf_pack_a(uint32_t *dst, const float *a, int64_t lda, int64_t m, int64_t k,
                       int64_t g0, int64_t g1);
void cpu_gemmbf_pa(const uint32_t *apk, int64_t m, const void *w, int64_t ldw, int wdtype,
                   int64_t n, int64_t k, const float *bias, float *c, int64_t ldc, void *scratch);

/* The packings of cpu_gemmbf, for other kernels (AVX512-BF16 only):
 * panels: rows [0, nr) of W (rows @ldw apart, @dt), columns [k0, k0 + kc), as
 *   panels of 32 rows of [ceil(kc/2)][32] bf16-pair words (zero past nr);
 * groups: F32 rows [0, mr) of A as groups of 12 rows of [ceil(kc/2)][12]
 *   words (zero past mr). */
void cpu_bf16_pack_panels(uint32_t *dst, const void *w, int64_t ldw, int dt, int64_t nr,
                          int64_t k0, int64_t kc);
void cpu_bf16_pack_groups(uint32_t *dst, const float *a, int64_t lda, int64_t mr, int64_t k0,
                          int64_t kc);

/* ---- attn-fused.c (AVX-512; bf16 != 0 needs AVX512-BF16) --------------------------- */

/* attn_full test knob (ctx->attn_mode): auto = fused where AVX-512 is used
 * and the precision is bf16, the score-matrix form (attn.c) otherwise, so
 * that precision=f32 keeps its former results bit for bit; fused/matrix
 * force one (fused needs AVX-512, else the matrix form runs). */
enum cpu_attn_mode { CPU_ATTN_AUTO = 0, CPU_ATTN_FUSED = 1, CPU_ATTN_MATRIX = 2 };

/* Bytes of 64-byte aligned scratch for one head of @L tokens of @D. */
size_t cpu_attn_fused_scratch(int64_t L, int64_t D, int bf16);
/* Head @h of one sequence: @qkv its L rows (q | k | v, H heads of D each,
 * rows @ldq apart), out its L rows (@ldo apart), columns h*D .. h*D+D. */
void cpu_attn_fused(const float *qkv, int64_t ldq, int64_t L, int64_t H, int64_t D, int64_t h,
                    float scale, float *out, int64_t ldo, void *scratch, int bf16);

/* ---- bf16 rounding ------------------------------------------------------------- */

/* f rounded to the nearest bf16 (ties to even), as float; NaN stays NaN. */
static inline float cpu_round_bf16(float f)
{
    union { float f; uint32_t u; } v = { .f = f };
    if ((v.u & 0x7fffffffu) > 0x7f800000u)
        return f;
    v.u += 0x7fffu + ((v.u >> 16) & 1u);
    v.u &= 0xffff0000u;
    return v.f;
}

#endif /* VL2_CPU_KERN_H */

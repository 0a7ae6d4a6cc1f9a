/* gemm.c - blocked AVX-512 matrix product for many activation rows:
 *
 *     C[m, n] = A[m, k] * W[n, k]^T        (A, C: F32; W: F32, BF16 or F16)
 *
 * W is packed per block of KC columns into panels of 32 weight rows,
 * converted to F32 ([KC][32] per panel); A is packed per 12 rows ([KC][12]);
 * a 12 x 32 register tile (24 accumulators) runs over KC.  Each element of C
 * is accumulated in the same order whatever the blocking of the caller.
 */
#include <string.h>

#include "cpu-impl.h"

#if defined(__x86_64__)
#include <immintrin.h>

#define T_512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")))

#define MR 12
#define NR 32
#define KC 128

size_t cpu_gemm512_scratch(int64_t nb)
{
    /* packed W (nb rounded up to NR) + packed A */
    return (size_t)(((nb + NR - 1) / NR) * NR * KC + MR * KC) * sizeof(float);
}

/* Pack rows [0, nr) of W (rows ld elements apart), columns [k0, k0 + kc),
 * into panels: panel p, column kk, lane r = W[p*32 + r][k0 + kk]; zero rows
 * beyond nr and columns beyond kc are not read by the kernel except as 0. */
T_512 static void pack_w(float *dst, const uint8_t *w, int64_t ldw, int dt, int64_t nr, int64_t k0,
                         int64_t kc, float *row)
{
    size_t es = vl2_dtype_size(dt);
    int64_t np = (nr + NR - 1) / NR;

    for (int64_t p = 0; p < np; p++) {
        float *pd = dst + p * KC * NR;
        for (int64_t r = 0; r < NR; r++) {
            int64_t j = p * NR + r;
            if (j >= nr) {
                for (int64_t kk = 0; kk < kc; kk++)
                    pd[kk * NR + r] = 0.0f;
                continue;
            }
            const uint8_t *src = w + (size_t)(j * ldw + k0) * es;
            const float *f;
            if (dt == VL2_DTYPE_F32) {
                memcpy(row, src, (size_t)kc * sizeof(float));  /* any alignment */
                f = row;
            } else {
                int64_t kk = 0;
                for (; kk + 16 <= kc; kk += 16) {
                    __m512 v;
                    __m256i h = _mm256_loadu_si256((const __m256i *)(src + kk * 2));
                    if (dt == VL2_DTYPE_BF16)
                        v = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
                    else
                        v = _mm512_cvtph_ps(h);
                    _mm512_storeu_ps(row + kk, v);
                }
                if (kk < kc) {
                    __mmask16 mk = (__mmask16)((1u << (kc - kk)) - 1u);
                    __m256i h = _mm256_maskz_loadu_epi16(mk, src + kk * 2);
                    __m512 v = dt == VL2_DTYPE_BF16
                        ? _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))
                        : _mm512_cvtph_ps(h);
                    _mm512_mask_storeu_ps(row + kk, mk, v);
                }
                f = row;
            }
            for (int64_t kk = 0; kk < kc; kk++)
                pd[kk * NR + r] = f[kk];
        }
    }
}

/* Pack A rows [0, mr) (mr <= 12), columns [k0, k0 + kc) as [kc][12]. */
static void pack_a(float *dst, const float *a, int64_t lda, int64_t mr, int64_t k0, int64_t kc)
{
    for (int64_t i = 0; i < MR; i++) {
        if (i < mr) {
            const float *src = a + i * lda + k0;
            for (int64_t kk = 0; kk < kc; kk++)
                dst[kk * MR + i] = src[kk];
        } else {
            for (int64_t kk = 0; kk < kc; kk++)
                dst[kk * MR + i] = 0.0f;
        }
    }
}

#define ROW_FMA(i)                                                                         \
    do {                                                                                   \
        __m512 av = _mm512_set1_ps(ap[i]);                                                 \
        c##i##0 = _mm512_fmadd_ps(av, b0, c##i##0);                                        \
        c##i##1 = _mm512_fmadd_ps(av, b1, c##i##1);                                        \
    } while (0)

#define ROW_STORE(i)                                                                       \
    do {                                                                                   \
        if (i < mr) {                                                                      \
            float *cr = c + (i) * ldc;                                                     \
            if (acc) {                                                                     \
                c##i##0 = _mm512_add_ps(c##i##0, _mm512_maskz_loadu_ps(m0, cr));          \
                c##i##1 = _mm512_add_ps(c##i##1, _mm512_maskz_loadu_ps(m1, cr + 16));     \
            }                                                                              \
            _mm512_mask_storeu_ps(cr, m0, c##i##0);                                        \
            _mm512_mask_storeu_ps(cr + 16, m1, c##i##1);                                   \
        }                                                                                  \
    } while (0)

/* C[0..mr, 0..32) (+)= Apack[kc][12] * Bpack[kc][32]; columns masked by m0, m1. */
T_512 static void kernel_12x32(int64_t kc, const float *ap, const float *bp, float *c,
                               int64_t ldc, int64_t mr, __mmask16 m0, __mmask16 m1, int acc)
{
    __m512 c00 = _mm512_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
    __m512 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    __m512 c60 = c00, c61 = c00, c70 = c00, c71 = c00, c80 = c00, c81 = c00;
    __m512 c90 = c00, c91 = c00, c100 = c00, c101 = c00, c110 = c00, c111 = c00;

    for (int64_t kk = 0; kk < kc; kk++, ap += MR, bp += NR) {
        __m512 b0 = _mm512_loadu_ps(bp), b1 = _mm512_loadu_ps(bp + 16);
        ROW_FMA(0); ROW_FMA(1); ROW_FMA(2); ROW_FMA(3); ROW_FMA(4); ROW_FMA(5);
        ROW_FMA(6); ROW_FMA(7); ROW_FMA(8); ROW_FMA(9); ROW_FMA(10); ROW_FMA(11);
    }
    ROW_STORE(0); ROW_STORE(1); ROW_STORE(2); ROW_STORE(3); ROW_STORE(4); ROW_STORE(5);
    ROW_STORE(6); ROW_STORE(7); ROW_STORE(8); ROW_STORE(9); ROW_STORE(10); ROW_STORE(11);
}

T_512 void cpu_gemm512(const float *a, int64_t lda, int64_t m, const void *w, int64_t ldw,
                       int wdtype, int64_t n, int64_t k, float *c, int64_t ldc, float *scratch)
{
    int64_t np = (n + NR - 1) / NR;
    float *bpk = scratch;
    float *apk = scratch + np * NR * KC;
    float row[KC];

    for (int64_t k0 = 0; k0 < k; k0 += KC) {
        int64_t kc = k - k0 < KC ? k - k0 : KC;
        pack_w(bpk, w, ldw, wdtype, n, k0, kc, row);
        for (int64_t i0 = 0; i0 < m; i0 += MR) {
            int64_t mr = m - i0 < MR ? m - i0 : MR;
            pack_a(apk, a + i0 * lda, lda, mr, k0, kc);
            for (int64_t p = 0; p < np; p++) {
                int64_t nc = n - p * NR;
                __mmask16 m0 = nc >= 16 ? 0xffff : (__mmask16)((1u << nc) - 1u);
                __mmask16 m1 = nc >= 32 ? 0xffff : nc <= 16 ? 0 : (__mmask16)((1u << (nc - 16)) - 1u);
                kernel_12x32(kc, apk, bpk + p * NR * KC, c + i0 * ldc + p * NR, ldc, mr, m0, m1,
                             k0 > 0);
            }
        }
    }
}

#else

size_t cpu_gemm512_scratch(int64_t nb)
{
    (void)nb;
    return 0;
}

void cpu_gemm512(const float *a, int64_t lda, int64_t m, const void *w, int64_t ldw, int wdtype,
                 int64_t n, int64_t k, float *c, int64_t ldc, float *scratch)
{
    (void)a; (void)lda; (void)m; (void)w; (void)ldw; (void)wdtype; (void)n; (void)k; (void)c;
    (void)ldc; (void)scratch;
}

#endif

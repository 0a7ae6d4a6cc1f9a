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

/* 16 x 16 transpose of F32 vectors in registers. */
T_512 static inline void transpose16(__m512 r[16])
{
    __m512 t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        r[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
        r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xee);
        r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xee);
    }
    for (int i = 0; i < 4; i++) {
        t[i] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88);
        t[i + 4] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xdd);
        t[i + 8] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
        t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xdd);
    }
    for (int i = 0; i < 4; i++) {
        r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
        r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
        r[i + 4] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0x88);
        r[i + 12] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0xdd);
    }
}

/* Pack rows [0, nr) of W (rows ldw elements apart), columns [k0, k0 + kc),
 * into panels of NR rows: Bp[p][kk][r] = W[p*NR + r][k0 + kk] as F32, zero
 * for rows at or beyond nr.  16 x 16 blocks are converted and transposed in
 * registers. */
T_512 static void pack_w(float *dst, const uint8_t *w, int64_t ldw, int dt, int64_t nr, int64_t k0,
                         int64_t kc)
{
    size_t es = vl2_dtype_size(dt);
    int64_t np = (nr + NR - 1) / NR;

    for (int64_t p = 0; p < np; p++) {
        float *pd = dst + p * KC * NR;
        for (int64_t r0 = 0; r0 < NR; r0 += 16) {
            for (int64_t kk = 0; kk < kc; kk += 16) {
                __mmask16 mk = kc - kk >= 16 ? (__mmask16)0xffff
                                             : (__mmask16)((1u << (kc - kk)) - 1u);
                int64_t nk = kc - kk < 16 ? kc - kk : 16;
                __m512 v[16];
                for (int t = 0; t < 16; t++) {
                    int64_t j = p * NR + r0 + t;
                    const uint8_t *src = w + (size_t)(j * ldw + k0 + kk) * es;
                    if (j >= nr) {
                        v[t] = _mm512_setzero_ps();
                    } else if (dt == VL2_DTYPE_BF16) {
                        __m256i h = _mm256_maskz_loadu_epi16(mk, src);
                        v[t] = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
                    } else if (dt == VL2_DTYPE_F16) {
                        v[t] = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mk, src));
                    } else {
                        v[t] = _mm512_maskz_loadu_ps(mk, src);
                    }
                }
                transpose16(v);
                for (int64_t t = 0; t < nk; t++)
                    _mm512_storeu_ps(pd + (kk + t) * NR + r0, v[t]);
            }
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
        if ((i) < mrv_c) {                                                                   \
            __m512 av = _mm512_set1_ps(ap[i]);                                             \
            c##i##0 = _mm512_fmadd_ps(av, b0, c##i##0);                                    \
            c##i##1 = _mm512_fmadd_ps(av, b1, c##i##1);                                    \
        }                                                                                  \
    } while (0)

#define ROW_STORE(i)                                                                       \
    do {                                                                                   \
        if ((i) < mrv_c && (i) < mr) {                                                       \
            float *cr = c + (i) * ldc;                                                     \
            if (acc) {                                                                     \
                c##i##0 = _mm512_add_ps(c##i##0, _mm512_maskz_loadu_ps(m0, cr));          \
                c##i##1 = _mm512_add_ps(c##i##1, _mm512_maskz_loadu_ps(m1, cr + 16));     \
            }                                                                              \
            _mm512_mask_storeu_ps(cr, m0, c##i##0);                                        \
            _mm512_mask_storeu_ps(cr + 16, m1, c##i##1);                                   \
        }                                                                                  \
    } while (0)

/* C[0..mr, 0..32) (+)= Apack[kc][12] * Bpack[kc][32] for the first MRV rows
 * of the packed A (mr <= MRV); columns masked by m0, m1. */
#define KERNEL(MRV)                                                                        \
    T_512 static void kernel_##MRV##x32(int64_t kc, const float *ap, const float *bp,      \
                                        float *c, int64_t ldc, int64_t mr, __mmask16 m0,   \
                                        __mmask16 m1, int acc)                             \
    {                                                                                      \
        enum { mrv_c = MRV };                                                              \
        __m512 c00 = _mm512_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00;      \
        __m512 c21 = c00, c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00;           \
        __m512 c51 = c00, c60 = c00, c61 = c00, c70 = c00, c71 = c00, c80 = c00;           \
        __m512 c81 = c00, c90 = c00, c91 = c00, c100 = c00, c101 = c00, c110 = c00;        \
        __m512 c111 = c00;                                                                 \
        for (int64_t kk = 0; kk < kc; kk++, ap += MR, bp += NR) {                          \
            __m512 b0 = _mm512_loadu_ps(bp), b1 = _mm512_loadu_ps(bp + 16);                \
            ROW_FMA(0); ROW_FMA(1); ROW_FMA(2); ROW_FMA(3); ROW_FMA(4); ROW_FMA(5);        \
            ROW_FMA(6); ROW_FMA(7); ROW_FMA(8); ROW_FMA(9); ROW_FMA(10); ROW_FMA(11);      \
        }                                                                                  \
        ROW_STORE(0); ROW_STORE(1); ROW_STORE(2); ROW_STORE(3); ROW_STORE(4); ROW_STORE(5); \
        ROW_STORE(6); ROW_STORE(7); ROW_STORE(8); ROW_STORE(9); ROW_STORE(10); ROW_STORE(11); \
    }

KERNEL(12)
KERNEL(8)
KERNEL(4)

T_512 void cpu_gemm512(const float *a, int64_t lda, int64_t m, const void *w, int64_t ldw,
                       int wdtype, int64_t n, int64_t k, float *c, int64_t ldc, float *scratch)
{
    int64_t np = (n + NR - 1) / NR;
    float *bpk = scratch;
    float *apk = scratch + np * NR * KC;

    for (int64_t k0 = 0; k0 < k; k0 += KC) {
        int64_t kc = k - k0 < KC ? k - k0 : KC;
        pack_w(bpk, w, ldw, wdtype, n, k0, kc);
        for (int64_t i0 = 0; i0 < m; i0 += MR) {
            int64_t mr = m - i0 < MR ? m - i0 : MR;
            pack_a(apk, a + i0 * lda, lda, mr, k0, kc);
            for (int64_t p = 0; p < np; p++) {
                int64_t nc = n - p * NR;
                __mmask16 m0 = nc >= 16 ? 0xffff : (__mmask16)((1u << nc) - 1u);
                __mmask16 m1 = nc >= 32 ? 0xffff : nc <= 16 ? 0 : (__mmask16)((1u << (nc - 16)) - 1u);
                float *cp = c + i0 * ldc + p * NR;
                const float *bq = bpk + p * NR * KC;
                if (mr > 8)
                    kernel_12x32(kc, apk, bq, cp, ldc, mr, m0, m1, k0 > 0);
                else if (mr > 4)
                    kernel_8x32(kc, apk, bq, cp, ldc, mr, m0, m1, k0 > 0);
                else
                    kernel_4x32(kc, apk, bq, cp, ldc, mr, m0, m1, k0 > 0);
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

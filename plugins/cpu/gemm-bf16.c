/* gemm-bf16.c - blocked AVX512-BF16 matrix product of the bf16 precision mode:
 *
 *     C[m, n] = bf16(A)[m, k] * bf16(W)[n, k]^T      (A, C: F32; W: BF16, F32 or F16)
 *
 * Both operands are rounded to bf16 (round to nearest even, as PyTorch's
 * bf16 model rounds its activations; BF16 weights are used as stored) and
 * multiplied with vdpbf16ps, which adds the two exact products of a pair of
 * k values to an F32 accumulator.  Layouts, per block of KC values of k
 * (KP = ceil(kc / 2) pairs):
 *   W panel of NR = 32 weight rows: [KP][32] 32-bit words, word (p, r) =
 *     the bf16 pair (w[r][2p], w[r][2p+1]), zero past the ends;
 *   A group of MR = 12 rows: [KP][12] words (the pair of row i broadcast to
 *     every lane by the kernel).
 * A 12 x 32 register tile (24 accumulators) runs over the pairs of a block;
 * blocks of k are added to C in order, so each element of C is accumulated
 * in the same order whatever the caller's blocking of rows and columns (the
 * result does not depend on the thread count).
 *
 * Compiled with per-function target attributes: the plugin still loads on a
 * CPU without AVX-512 (cpu_gemmbf is only called where cpu_has_avx512bf16()).
 */
#include <string.h>

#include "cpu-impl.h"
#include "kern.h"

#if defined(__x86_64__)
#include <immintrin.h>

#define T_BF __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma,f16c")))

#define MR 12
#define NR 32
#define KC 256                 /* k values per block */
#define KP (KC / 2)            /* pairs per block */
#define NB CPU_GEMMBF_NB       /* weight rows per call (at most) */
#define MB 768                 /* activation rows packed at once (a multiple of MR): the
                                * vision tower's 729 rows in one block, W packed once */

size_t cpu_gemmbf_scratch(void)
{
    return (size_t)(NB + MB) * KP * sizeof(uint32_t);
}

/* 16 x 16 transpose of 32-bit words in registers. */
T_BF static inline void transpose16(__m512i r[16])
{
    __m512i t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
        r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
        r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    for (int i = 0; i < 4; i++) {
        t[i] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0x88);
        t[i + 4] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0xdd);
        t[i + 8] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0x88);
        t[i + 12] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0xdd);
    }
    for (int i = 0; i < 4; i++) {
        r[i] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0x88);
        r[i + 8] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0xdd);
        r[i + 4] = _mm512_shuffle_i32x4(t[i + 4], t[i + 12], 0x88);
        r[i + 12] = _mm512_shuffle_i32x4(t[i + 4], t[i + 12], 0xdd);
    }
}

static inline __mmask16 mask16(int64_t n)
{
    return n >= 16 ? (__mmask16)0xffff : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1u);
}

/* Elements [0, nk) (nk <= 32) of @src in @dt as 32 bf16 (zero past nk). */
T_BF static inline __m512i load32_bf(const uint8_t *src, int dt, int64_t nk)
{
    __mmask16 lo = mask16(nk), hi = mask16(nk - 16);
    __m512 a, b;

    switch (dt) {
    case VL2_DTYPE_BF16:
        return _mm512_maskz_loadu_epi16(nk >= 32 ? (__mmask32)0xffffffffu
                                                 : (__mmask32)((1u << nk) - 1u), src);
    case VL2_DTYPE_F16:
        a = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(lo, src));
        b = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(hi, src + 32));
        break;
    default:
        a = _mm512_maskz_loadu_ps(lo, src);
        b = _mm512_maskz_loadu_ps(hi, src + 64);
        break;
    }
    return (__m512i)_mm512_cvtne2ps_pbh(b, a);
}

/* Pack weight rows [0, nr) (nr <= NB), k columns [k0, k0 + kc) into panels
 * of NR rows ([kp][32] words each, panel stride kp * NR words). */
T_BF static void pack_w(uint32_t *dst, const uint8_t *w, int64_t ldw, int dt, int64_t nr,
                        int64_t k0, int64_t kc)
{
    size_t es = vl2_dtype_size(dt);
    int64_t np = (nr + NR - 1) / NR, kp = (kc + 1) / 2;

    for (int64_t p = 0; p < np; p++) {
        uint32_t *pd = dst + p * kp * NR;
        for (int64_t r0 = 0; r0 < NR; r0 += 16)
            for (int64_t kk = 0; kk < kc; kk += 32) {
                int64_t np2 = (kc - kk + 1) / 2 < 16 ? (kc - kk + 1) / 2 : 16;
                __m512i v[16];
                for (int t = 0; t < 16; t++) {
                    int64_t j = p * NR + r0 + t;
                    v[t] = j < nr ? load32_bf(w + (size_t)(j * ldw + k0 + kk) * es, dt, kc - kk)
                                  : _mm512_setzero_si512();
                }
                transpose16(v);
                for (int64_t t = 0; t < np2; t++)
                    _mm512_storeu_si512(pd + (kk / 2 + t) * NR + r0, v[t]);
            }
    }
}

/* Pack activation rows [0, mr) (mr <= MB), columns [k0, k0 + kc), rounded
 * to bf16, into groups of MR rows ([kp][12] words each, group stride
 * kp * MR words; rows past mr are zero): 16 x 16 word transposes, 12 lanes
 * stored. */
T_BF static void pack_a(uint32_t *dst, const float *a, int64_t lda, int64_t mr, int64_t k0,
                        int64_t kc)
{
    int64_t kp = (kc + 1) / 2, ng = (mr + MR - 1) / MR;

    for (int64_t g = 0; g < ng; g++) {
        uint32_t *gd = dst + g * kp * MR;
        for (int64_t kk = 0; kk < kc; kk += 32) {
            int64_t np2 = (kc - kk + 1) / 2 < 16 ? (kc - kk + 1) / 2 : 16;
            __m512i v[16];
            for (int t = 0; t < 16; t++) {
                int64_t row = g * MR + t;
                v[t] = t < MR && row < mr
                           ? load32_bf((const uint8_t *)(a + row * lda + k0 + kk), VL2_DTYPE_F32,
                                       kc - kk)
                           : _mm512_setzero_si512();
            }
            transpose16(v);
            for (int64_t t = 0; t < np2; t++)
                _mm512_mask_storeu_epi32(gd + (kk / 2 + t) * MR, (__mmask16)0x0fff, v[t]);
        }
    }
}

void cpu_bf16_pack_panels(uint32_t *dst, const void *w, int64_t ldw, int dt, int64_t nr,
                          int64_t k0, int64_t kc)
{
    pack_w(dst, w, ldw, dt, nr, k0, kc);
}

void cpu_bf16_pack_groups(uint32_t *dst, const float *a, int64_t lda, int64_t mr, int64_t k0,
                          int64_t kc)
{
    pack_a(dst, a, lda, mr, k0, kc);
}

#define BF_ROW_DP(i)                                                                       \
    do {                                                                                   \
        if ((i) < mrv_c) {                                                                 \
            __m512bh av = (__m512bh)_mm512_set1_epi32((int)ap[i]);                         \
            c##i##0 = _mm512_dpbf16_ps(c##i##0, av, b0);                                   \
            c##i##1 = _mm512_dpbf16_ps(c##i##1, av, b1);                                   \
        }                                                                                  \
    } while (0)

#define BF_ROW_STORE(i)                                                                    \
    do {                                                                                   \
        if ((i) < mrv_c && (i) < mr) {                                                     \
            float *cr = c + (i) * ldc;                                                     \
            if (acc) {                                                                     \
                c##i##0 = _mm512_add_ps(c##i##0, _mm512_maskz_loadu_ps(m0, cr));          \
                c##i##1 = _mm512_add_ps(c##i##1, _mm512_maskz_loadu_ps(m1, cr + 16));     \
            }                                                                              \
            if (bias) {                                                                    \
                c##i##0 = _mm512_add_ps(c##i##0, bv0);                                     \
                c##i##1 = _mm512_add_ps(c##i##1, bv1);                                     \
            }                                                                              \
            _mm512_mask_storeu_ps(cr, m0, c##i##0);                                        \
            _mm512_mask_storeu_ps(cr + 16, m1, c##i##1);                                   \
        }                                                                                  \
    } while (0)

/* C[0..mr, 0..32) (+)= Agroup[kp][12] . Wpanel[kp][32] for the first MRV rows
 * (mr <= MRV); columns masked by m0, m1; acc: add to C; bias (32 floats, NULL
 * for none): added last (the last block of k). */
#define BF_KERNEL(MRV)                                                                     \
    T_BF static void kernel_##MRV(int64_t kp, const uint32_t *ap, const uint32_t *bp,      \
                                  float *c, int64_t ldc, int64_t mr, __mmask16 m0,         \
                                  __mmask16 m1, int acc, const float *bias)                \
    {                                                                                      \
        enum { mrv_c = MRV };                                                              \
        __m512 bv0 = bias ? _mm512_maskz_loadu_ps(m0, bias) : _mm512_setzero_ps();         \
        __m512 bv1 = bias ? _mm512_maskz_loadu_ps(m1, bias + 16) : _mm512_setzero_ps();    \
        __m512 c00 = _mm512_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00;      \
        __m512 c21 = c00, c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00;           \
        __m512 c51 = c00, c60 = c00, c61 = c00, c70 = c00, c71 = c00, c80 = c00;           \
        __m512 c81 = c00, c90 = c00, c91 = c00, c100 = c00, c101 = c00, c110 = c00;        \
        __m512 c111 = c00;                                                                 \
        for (int64_t p = 0; p < kp; p++, ap += MR, bp += NR) {                             \
            __m512bh b0 = (__m512bh)_mm512_loadu_si512(bp);                                \
            __m512bh b1 = (__m512bh)_mm512_loadu_si512(bp + 16);                           \
            BF_ROW_DP(0); BF_ROW_DP(1); BF_ROW_DP(2); BF_ROW_DP(3); BF_ROW_DP(4);          \
            BF_ROW_DP(5); BF_ROW_DP(6); BF_ROW_DP(7); BF_ROW_DP(8); BF_ROW_DP(9);          \
            BF_ROW_DP(10); BF_ROW_DP(11);                                                  \
        }                                                                                  \
        BF_ROW_STORE(0); BF_ROW_STORE(1); BF_ROW_STORE(2); BF_ROW_STORE(3);                \
        BF_ROW_STORE(4); BF_ROW_STORE(5); BF_ROW_STORE(6); BF_ROW_STORE(7);                \
        BF_ROW_STORE(8); BF_ROW_STORE(9); BF_ROW_STORE(10); BF_ROW_STORE(11);              \
    }

BF_KERNEL(12)
BF_KERNEL(8)
BF_KERNEL(4)

/* The products of one block of k: packed W (panels of kp pairs), groups of
 * packed A @gstride words apart, rows [0, mb) of C. */
T_BF static void run_block(const uint32_t *bpk, int64_t n, int64_t kp, const uint32_t *apk,
                           int64_t gstride, int64_t mb, float *c, int64_t ldc, int acc,
                           const float *bias)
{
    int64_t np = (n + NR - 1) / NR, ng = (mb + MR - 1) / MR;

    for (int64_t p = 0; p < np; p++) {
        int64_t nc = n - p * NR;
        __mmask16 m0 = mask16(nc), m1 = mask16(nc - 16);
        const uint32_t *bq = bpk + p * kp * NR;
        const float *bb = bias ? bias + p * NR : NULL;
        for (int64_t g = 0; g < ng; g++) {
            int64_t mr = mb - g * MR < MR ? mb - g * MR : MR;
            float *cp = c + g * MR * ldc + p * NR;
            const uint32_t *aq = apk + g * gstride;
            if (mr > 8)
                kernel_12(kp, aq, bq, cp, ldc, mr, m0, m1, acc, bb);
            else if (mr > 4)
                kernel_8(kp, aq, bq, cp, ldc, mr, m0, m1, acc, bb);
            else
                kernel_4(kp, aq, bq, cp, ldc, mr, m0, m1, acc, bb);
        }
    }
}

T_BF void cpu_gemmbf(const float *a, int64_t lda, int64_t m, const void *w, int64_t ldw,
                     int wdtype, int64_t n, int64_t k, const float *bias, float *c, int64_t ldc,
                     void *scratch)
{
    uint32_t *bpk = scratch, *apk = (uint32_t *)scratch + (size_t)NB * KP;

    for (int64_t i0 = 0; i0 < m; i0 += MB) {
        int64_t mb = m - i0 < MB ? m - i0 : MB;
        for (int64_t k0 = 0; k0 < k; k0 += KC) {
            int64_t kc = k - k0 < KC ? k - k0 : KC, kp = (kc + 1) / 2;
            pack_w(bpk, w, ldw, wdtype, n, k0, kc);
            pack_a(apk, a + i0 * lda, lda, mb, k0, kc);
            run_block(bpk, n, kp, apk, kp * MR, mb, c + i0 * ldc, ldc, k0 > 0,
                      k0 + kc >= k ? bias : NULL);
        }
    }
}

/* Prepacked activations: group g, block kb of k at (g * nkb + kb) * KP * MR words. */
size_t cpu_gemmbf_pa_size(int64_t m, int64_t k)
{
    return (size_t)((m + MR - 1) / MR) * (size_t)((k + KC - 1) / KC) * KP * MR * sizeof(uint32_t);
}

T_BF void cpu_gemmbf_pack_a(uint32_t *dst, const float *a, int64_t lda, int64_t m, int64_t k,
                            int64_t g0, int64_t g1)
{
    int64_t nkb = (k + KC - 1) / KC;

    for (int64_t g = g0; g < g1; g++)
        for (int64_t kb = 0; kb < nkb; kb++) {
            int64_t k0 = kb * KC, kc = k - k0 < KC ? k - k0 : KC;
            int64_t mr = m - g * MR < MR ? m - g * MR : MR;
            pack_a(dst + (g * nkb + kb) * KP * MR, a + g * MR * lda, lda, mr, k0, kc);
        }
}

T_BF void cpu_gemmbf_pa(const uint32_t *apk, int64_t m, const void *w, int64_t ldw, int wdtype,
                        int64_t n, int64_t k, const float *bias, float *c, int64_t ldc,
                        void *scratch)
{
    uint32_t *bpk = scratch;
    int64_t nkb = (k + KC - 1) / KC;

    for (int64_t kb = 0; kb < nkb; kb++) {
        int64_t k0 = kb * KC, kc = k - k0 < KC ? k - k0 : KC, kp = (kc + 1) / 2;
        pack_w(bpk, w, ldw, wdtype, n, k0, kc);
        run_block(bpk, n, kp, apk + kb * KP * MR, nkb * KP * MR, m, c, ldc, k0 > 0,
                  k0 + kc >= k ? bias : NULL);
    }
}

#else

size_t cpu_gemmbf_scratch(void)
{
    return 0;
}

void cpu_bf16_pack_panels(uint32_t *dst, const void *w, int64_t ldw, int dt, int64_t nr,
                          int64_t k0, int64_t kc)
{
    (void)dst; (void)w; (void)ldw; (void)dt; (void)nr; (void)k0; (void)kc;
}

void cpu_bf16_pack_groups(uint32_t *dst, const float *a, int64_t lda, int64_t mr, int64_t k0,
                          int64_t kc)
{
    (void)dst; (void)a; (void)lda; (void)mr; (void)k0; (void)kc;
}

void cpu_gemmbf(const float *a, int64_t lda, int64_t m, const void *w, int64_t ldw, int wdtype,
                int64_t n, int64_t k, const float *bias, float *c, int64_t ldc, void *scratch)
{
    (void)a; (void)lda; (void)m; (void)w; (void)ldw; (void)wdtype; (void)n; (void)k; (void)c;
    (void)bias;
    (void)ldc; (void)scratch;
}

size_t cpu_gemmbf_pa_size(int64_t m, int64_t k)
{
    (void)m; (void)k;
    return 0;
}

void cpu_gemmbf_pack_a(uint32_t *dst, const float *a, int64_t lda, int64_t m, int64_t k,
                       int64_t g0, int64_t g1)
{
    (void)dst; (void)a; (void)lda; (void)m; (void)k; (void)g0; (void)g1;
}

void cpu_gemmbf_pa(const uint32_t *apk, int64_t m, const void *w, int64_t ldw, int wdtype,
                   int64_t n, int64_t k, const float *bias, float *c, int64_t ldc, void *scratch)
{
    (void)apk; (void)m; (void)w; (void)ldw; (void)wdtype; (void)n; (void)k; (void)bias; (void)c;
    (void)ldc; (void)scratch;
}

#endif

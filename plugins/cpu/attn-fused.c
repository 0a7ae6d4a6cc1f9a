/* attn-fused.c - fused blocked full attention (the vision tower's attn_full):
 * flash-attention style online softmax over blocks of keys, no score matrix
 * beyond one block of G x KB scores.
 *
 * One call computes one head of one sequence: out[t, h*D .. h*D+D) =
 * softmax(scale * q_t K^T) V for every query t.  The head's keys are packed
 * once into panels of 32 keys ([D][32] floats, or [ceil(D/2)][32] bf16 pairs
 * in bf16 mode) and its values into rows of DV = D rounded up to 16 lanes
 * ([L][DV] floats, or [ceil(L/2)][DV] pairs of consecutive keys); then for
 * each group of G = 12 queries and each block of KB = 128 keys:
 *   S = Q K_blk^T (12 x 32 register tiles), m' = max(m, rowmax(scale S)),
 *   P = exp(scale S - m'), l = l e^(m - m') + rowsum(P), O = O e^(m - m') + P V_blk;
 * finally out = O / l.  In bf16 mode q, k, v and P are rounded to bf16 (ties
 * to even) and both products use vdpbf16ps; scores, softmax and O are F32.
 * Per element the order of operations is fixed: results do not depend on the
 * thread that computed the head.
 */
#include <math.h>
#include <string.h>

#include "cpu-impl.h"
#include "kern.h"

#if defined(__x86_64__)
#include <immintrin.h>

#define T_AF __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma,f16c")))
#define T_A5 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")))

#define G 12        /* queries per group (rows of the score tile) */
#define KB 128      /* keys per block (a multiple of 32) */
#define PV_R 4      /* query rows per P.V register tile */
#define PV_V 5      /* 16-lane vectors of O per P.V register tile */

static int64_t rup(int64_t a, int64_t b)
{
    return (a + b - 1) / b * b;
}

/* Scratch layout (all in 32-bit words, each part rounded up to 16 words). */
struct af_layout {
    int64_t D, DP, DV, np, kp, v, q, s, p, o, ml, total;
};

static void af_layout(struct af_layout *y, int64_t L, int64_t D, int bf16)
{
    y->D = D;
    y->DP = (D + 1) / 2;
    y->DV = rup(D, 16);
    y->np = (L + 31) / 32;
    y->kp = 0;
    y->v = y->kp + rup(y->np * 32 * (bf16 ? y->DP : D), 16);
    y->q = y->v + rup((bf16 ? (L + 1) / 2 : L) * y->DV, 16);
    y->s = y->q + rup((int64_t)G * (bf16 ? y->DP : D), 16);
    y->p = y->s + (int64_t)G * KB;
    y->o = y->p + (int64_t)G * KB / 2;
    y->ml = y->o + (int64_t)G * y->DV;
    y->total = y->ml + 2 * G + 16;
}

size_t cpu_attn_fused_scratch(int64_t L, int64_t D, int bf16)
{
    struct af_layout y;
    af_layout(&y, L, D, bf16);
    return (size_t)y.total * 4;
}

/* exp(x) as exp_512 in kernels.c: Cephes polynomial, about 1 ulp. */
T_A5 static inline __m512 af_exp(__m512 x)
{
    const __m512 hi = _mm512_set1_ps(88.72283f), lo = _mm512_set1_ps(-87.33654f);
    __m512 n, r, p;

    x = _mm512_min_ps(_mm512_max_ps(x, lo), hi);
    n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}

static inline __mmask16 m16(int64_t n)
{
    return n >= 16 ? (__mmask16)0xffff : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1u);
}

/* ---- score tiles: S[12][32] = Q[12] . K_panel ----------------------------------- */

T_A5 static void score_f32(const float *qp, const float *kp, int64_t D, float *s)
{
    __m512 c[G][2];
#pragma GCC unroll 12
    for (int i = 0; i < G; i++)
        c[i][0] = c[i][1] = _mm512_setzero_ps();
    for (int64_t d = 0; d < D; d++, qp += G, kp += 32) {
        __m512 b0 = _mm512_loadu_ps(kp), b1 = _mm512_loadu_ps(kp + 16);
#pragma GCC unroll 12
        for (int i = 0; i < G; i++) {
            __m512 a = _mm512_set1_ps(qp[i]);
            c[i][0] = _mm512_fmadd_ps(a, b0, c[i][0]);
            c[i][1] = _mm512_fmadd_ps(a, b1, c[i][1]);
        }
    }
#pragma GCC unroll 12
    for (int i = 0; i < G; i++) {
        _mm512_storeu_ps(s + i * KB, c[i][0]);
        _mm512_storeu_ps(s + i * KB + 16, c[i][1]);
    }
}

T_AF static void score_bf16(const uint32_t *qp, const uint32_t *kp, int64_t DP, float *s)
{
    __m512 c[G][2];
#pragma GCC unroll 12
    for (int i = 0; i < G; i++)
        c[i][0] = c[i][1] = _mm512_setzero_ps();
    for (int64_t d = 0; d < DP; d++, qp += G, kp += 32) {
        __m512bh b0 = (__m512bh)_mm512_loadu_si512(kp);
        __m512bh b1 = (__m512bh)_mm512_loadu_si512(kp + 16);
#pragma GCC unroll 12
        for (int i = 0; i < G; i++) {
            __m512bh a = (__m512bh)_mm512_set1_epi32((int)qp[i]);
            c[i][0] = _mm512_dpbf16_ps(c[i][0], a, b0);
            c[i][1] = _mm512_dpbf16_ps(c[i][1], a, b1);
        }
    }
#pragma GCC unroll 12
    for (int i = 0; i < G; i++) {
        _mm512_storeu_ps(s + i * KB, c[i][0]);
        _mm512_storeu_ps(s + i * KB + 16, c[i][1]);
    }
}

/* ---- O[4][16 nv] += P[4][bk] . V[bk][16 nv] ------------------------------------------- */

T_A5 static void pv_f32(const float *p, const float *v, int64_t DV, int64_t bk, int nv, float *o)
{
    __m512 c[PV_R][PV_V];
#pragma GCC unroll 4
    for (int i = 0; i < PV_R; i++)
#pragma GCC unroll 5
        for (int q = 0; q < PV_V; q++)
            c[i][q] = q < nv ? _mm512_loadu_ps(o + i * DV + 16 * q) : _mm512_setzero_ps();
    for (int64_t t = 0; t < bk; t++, v += DV) {
        __m512 b[PV_V];
#pragma GCC unroll 5
        for (int q = 0; q < PV_V; q++)
            b[q] = q < nv ? _mm512_loadu_ps(v + 16 * q) : _mm512_setzero_ps();
#pragma GCC unroll 4
        for (int i = 0; i < PV_R; i++) {
            __m512 a = _mm512_set1_ps(p[i * KB + t]);
#pragma GCC unroll 5
            for (int q = 0; q < PV_V; q++)
                c[i][q] = _mm512_fmadd_ps(a, b[q], c[i][q]);
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < PV_R; i++)
#pragma GCC unroll 5
        for (int q = 0; q < PV_V; q++)
            if (q < nv)
                _mm512_storeu_ps(o + i * DV + 16 * q, c[i][q]);
}

/* bf16: p words [4][KB/2] (pairs of keys), v words [ceil(bk/2)][DV] */
T_AF static void pv_bf16(const uint32_t *p, const uint32_t *v, int64_t DV, int64_t bk, int nv,
                         float *o)
{
    __m512 c[PV_R][PV_V];
#pragma GCC unroll 4
    for (int i = 0; i < PV_R; i++)
#pragma GCC unroll 5
        for (int q = 0; q < PV_V; q++)
            c[i][q] = q < nv ? _mm512_loadu_ps(o + i * DV + 16 * q) : _mm512_setzero_ps();
    for (int64_t u = 0; u < (bk + 1) / 2; u++, v += DV) {
        __m512bh b[PV_V];
#pragma GCC unroll 5
        for (int q = 0; q < PV_V; q++)
            b[q] = (__m512bh)(q < nv ? _mm512_loadu_si512(v + 16 * q) : _mm512_setzero_si512());
#pragma GCC unroll 4
        for (int i = 0; i < PV_R; i++) {
            __m512bh a = (__m512bh)_mm512_set1_epi32((int)p[i * (KB / 2) + u]);
#pragma GCC unroll 5
            for (int q = 0; q < PV_V; q++)
                c[i][q] = _mm512_dpbf16_ps(c[i][q], a, b[q]);
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < PV_R; i++)
#pragma GCC unroll 5
        for (int q = 0; q < PV_V; q++)
            if (q < nv)
                _mm512_storeu_ps(o + i * DV + 16 * q, c[i][q]);
}

/* ---- online softmax of one block ------------------------------------------------------ */

/* Rows of S (bk valid scores each) -> P (in place as F32, or as bf16 pairs
 * into @pb), running max @mx and sum @l updated, O rows rescaled. */
T_AF static void softmax_block(float *s, uint32_t *pb, int64_t bk, float scale, float *mx,
                               float *l, float *o, int64_t DV)
{
    const __m512 sc = _mm512_set1_ps(scale);

    for (int i = 0; i < G; i++) {
        float *row = s + i * KB;
        __m512 vm = _mm512_set1_ps(-INFINITY), vs = _mm512_setzero_ps(), mn, al;
        float m_new, alpha;
        int64_t j;

        for (j = 0; j < bk; j += 16) {
            __mmask16 k = m16(bk - j);
            __m512 x = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, row + j), sc);
            _mm512_storeu_ps(row + j, x);
            vm = _mm512_mask_max_ps(vm, k, vm, x);
        }
        m_new = _mm512_reduce_max_ps(vm);
        if (mx[i] > m_new)
            m_new = mx[i];
        alpha = expf(mx[i] - m_new);   /* 0 for the first block (mx = -inf) */
        mx[i] = m_new;
        mn = _mm512_set1_ps(m_new);
        if (pb) {
            /* exp straight to bf16 pairs; lanes past bk are 0: the pad pair is (p, 0) */
            for (j = 0; j < bk; j += 32) {
                __m512 lo = _mm512_maskz_mov_ps(
                    m16(bk - j), af_exp(_mm512_sub_ps(_mm512_loadu_ps(row + j), mn)));
                __m512 hi = _mm512_maskz_mov_ps(
                    m16(bk - j - 16), af_exp(_mm512_sub_ps(_mm512_loadu_ps(row + j + 16), mn)));
                vs = _mm512_add_ps(vs, _mm512_add_ps(lo, hi));
                _mm512_storeu_si512(pb + i * (KB / 2) + j / 2,
                                    (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
            }
        } else {
            for (j = 0; j < bk; j += 16) {
                __mmask16 k = m16(bk - j);
                __m512 e = _mm512_maskz_mov_ps(k, af_exp(_mm512_sub_ps(_mm512_loadu_ps(row + j), mn)));
                _mm512_storeu_ps(row + j, e);
                vs = _mm512_add_ps(vs, e);
            }
        }
        l[i] = l[i] * alpha + _mm512_reduce_add_ps(vs);
        al = _mm512_set1_ps(alpha);
        for (int64_t q = 0; q < DV; q += 16)
            _mm512_storeu_ps(o + i * DV + q, _mm512_mul_ps(_mm512_loadu_ps(o + i * DV + q), al));
    }
}

/* ---- one head --------------------------------------------------------------------------- */

T_AF void cpu_attn_fused(const float *qkv, int64_t ldq, int64_t L, int64_t H, int64_t D,
                         int64_t h, float scale, float *out, int64_t ldo, void *scratch, int bf16)
{
    struct af_layout y;
    uint32_t *w = scratch;
    const float *qb = qkv + h * D, *kb = qkv + H * D + h * D, *vb = qkv + 2 * H * D + h * D;
    float *s, *o, *mx, *l;
    uint32_t *pb;

    af_layout(&y, L, D, bf16);
    s = (float *)(w + y.s);
    o = (float *)(w + y.o);
    mx = (float *)(w + y.ml);
    l = mx + G;
    pb = bf16 ? w + y.p : NULL;

    /* keys: panels of 32 (bf16: the GEMM's weight panels) */
    if (bf16) {
        cpu_bf16_pack_panels(w + y.kp, kb, ldq, VL2_DTYPE_F32, L, 0, D);
    } else {
        for (int64_t t = 0; t < y.np * 32; t++) {
            const float *kr = kb + t * ldq;
            float *kp = (float *)(w + y.kp) + (t / 32) * D * 32 + t % 32;
            for (int64_t d = 0; d < D; d++)
                kp[d * 32] = t < L ? kr[d] : 0.0f;
        }
    }
    /* values: rows of DV lanes (bf16: pairs of consecutive keys, interleaved) */
    if (bf16) {
        /* bf16 lanes 0..15 of v0, then of v1 -> v0[0] v1[0] v0[1] v1[1] ... */
        static const int16_t il[32] = { 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23,
                                        8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15,
                                        31 };
        const __m512i idx = _mm512_loadu_si512(il);
        for (int64_t u = 0; u < (L + 1) / 2; u++) {
            const float *v0 = vb + 2 * u * ldq, *v1 = vb + (2 * u + 1) * ldq;
            uint32_t *vp = w + y.v + u * y.DV;
            for (int64_t d = 0; d < y.DV; d += 16) {
                __mmask16 k = m16(D - d);
                __m512 a = _mm512_maskz_loadu_ps(k, v0 + d);
                __m512 b = 2 * u + 1 < L ? _mm512_maskz_loadu_ps(k, v1 + d) : _mm512_setzero_ps();
                __m512i pr = (__m512i)_mm512_cvtne2ps_pbh(b, a);
                _mm512_storeu_si512(vp + d, _mm512_permutexvar_epi16(idx, pr));
            }
        }
    } else {
        for (int64_t t = 0; t < L; t++) {
            float *vp = (float *)(w + y.v) + t * y.DV;
            memcpy(vp, vb + t * ldq, (size_t)D * sizeof(float));
            memset(vp + D, 0, (size_t)(y.DV - D) * sizeof(float));
        }
    }

    for (int64_t r0 = 0; r0 < L; r0 += G) {
        int64_t nr = L - r0 < G ? L - r0 : G;
        /* queries of the group: [D][12] floats or [DP][12] pairs, zero past nr */
        if (bf16)
            cpu_bf16_pack_groups(w + y.q, qb + r0 * ldq, ldq, nr, 0, D);
        for (int64_t i = 0; i < G; i++) {
            const float *qr = qb + (r0 + i) * ldq;
            if (!bf16) {
                float *qp = (float *)(w + y.q) + i;
                for (int64_t d = 0; d < D; d++)
                    qp[d * G] = i < nr ? qr[d] : 0.0f;
            }
            mx[i] = -INFINITY;
            l[i] = 0.0f;
        }
        memset(o, 0, (size_t)(G * y.DV) * sizeof(float));
        for (int64_t k0 = 0; k0 < L; k0 += KB) {
            int64_t bk = L - k0 < KB ? L - k0 : KB;
            for (int64_t c = 0; c < bk; c += 32) {
                int64_t pan = (k0 + c) / 32;
                if (bf16)
                    score_bf16(w + y.q, w + y.kp + pan * y.DP * 32, y.DP, s + c);
                else
                    score_f32((const float *)(w + y.q), (const float *)(w + y.kp) + pan * D * 32,
                              D, s + c);
            }
            softmax_block(s, pb, bk, scale, mx, l, o, y.DV);
            for (int64_t i = 0; i < G; i += PV_R)
                for (int64_t q0 = 0; q0 < y.DV / 16; q0 += PV_V) {
                    int nv = (int)(y.DV / 16 - q0 < PV_V ? y.DV / 16 - q0 : PV_V);
                    if (bf16)
                        pv_bf16(pb + i * (KB / 2), w + y.v + (k0 / 2) * y.DV + 16 * q0, y.DV, bk,
                                nv, o + i * y.DV + 16 * q0);
                    else
                        pv_f32(s + i * KB, (const float *)(w + y.v) + k0 * y.DV + 16 * q0, y.DV,
                               bk, nv, o + i * y.DV + 16 * q0);
                }
        }
        for (int64_t i = 0; i < nr; i++) {
            __m512 inv = _mm512_set1_ps(1.0f / l[i]);
            float *dst = out + (r0 + i) * ldo + h * D;
            for (int64_t d = 0; d < D; d += 16)
                _mm512_mask_storeu_ps(dst + d, m16(D - d),
                                      _mm512_mul_ps(_mm512_loadu_ps(o + i * y.DV + d), inv));
        }
    }
}

#else

size_t cpu_attn_fused_scratch(int64_t L, int64_t D, int bf16)
{
    (void)L; (void)D; (void)bf16;
    return 0;
}

void cpu_attn_fused(const float *qkv, int64_t ldq, int64_t L, int64_t H, int64_t D, int64_t h,
                    float scale, float *out, int64_t ldo, void *scratch, int bf16)
{
    (void)qkv; (void)ldq; (void)L; (void)H; (void)D; (void)h; (void)scale; (void)out;
    (void)ldo; (void)scratch; (void)bf16;
}

#endif

/* kernels.c - per-instruction-set inner loops of the CPU backend.
 *
 * Three builds of the same kernels: portable C, AVX2+FMA+F16C and AVX-512F,
 * selected at run time (cpu_kernels_get).  Each output element of
 * gemm_small is one F32 dot product computed in a fixed order: one vector
 * accumulator over k in steps of the vector width, a masked or scalar tail,
 * then a horizontal sum.  So a result does not depend on which tile or thread
 * computed it.
 */
#include <math.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
#define HAVE_X86 1
#else
#define HAVE_X86 0
#endif

#include "cpu-impl.h"

/* ---- portable C ---------------------------------------------------------- */

static void to_f32_scalar(float *dst, const void *src, int dtype, int64_t n)
{
    int64_t i;
    const uint8_t *s = src;

    switch (dtype) {
    case VL2_DTYPE_F32:
        memcpy(dst, src, (size_t)n * 4);
        break;
    case VL2_DTYPE_BF16:
        for (i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, s + 2 * i, 2);
            dst[i] = vl2_bf16_to_f32(h);
        }
        break;
    case VL2_DTYPE_F16:
        for (i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, s + 2 * i, 2);
            dst[i] = vl2_f16_to_f32(h);
        }
        break;
    }
}

static float dot_scalar(const float *a, const float *b, int64_t n)
{
    float s = 0.0f;
    int64_t i;
    for (i = 0; i < n; i++)
        s += a[i] * b[i];
    return s;
}

static void axpy_scalar(float *y, float a, const float *x, int64_t n)
{
    int64_t i;
    for (i = 0; i < n; i++)
        y[i] += a * x[i];
}

static float dot_w_scalar(const float *x, const void *w, int wdtype, int64_t k)
{
    const uint8_t *p = w;
    float s = 0.0f;
    int64_t i;

    switch (wdtype) {
    case VL2_DTYPE_F32:
        for (i = 0; i < k; i++) {
            float f;
            memcpy(&f, p + 4 * i, 4);
            s += x[i] * f;
        }
        break;
    case VL2_DTYPE_BF16:
        for (i = 0; i < k; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            s += x[i] * vl2_bf16_to_f32(h);
        }
        break;
    case VL2_DTYPE_F16:
        for (i = 0; i < k; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            s += x[i] * vl2_f16_to_f32(h);
        }
        break;
    }
    return s;
}

static void axpy_w_scalar(float *y, float a, const void *w, int dtype, int64_t n)
{
    const uint8_t *p = w;
    for (int64_t i = 0; i < n; i++) {
        float v = 0.0f;
        uint16_t h;
        switch (dtype) {
        case VL2_DTYPE_F32: memcpy(&v, p + 4 * i, 4); break;
        case VL2_DTYPE_BF16: memcpy(&h, p + 2 * i, 2); v = vl2_bf16_to_f32(h); break;
        case VL2_DTYPE_F16: memcpy(&h, p + 2 * i, 2); v = vl2_f16_to_f32(h); break;
        }
        y[i] += a * v;
    }
}

static void gemm_small_scalar(const float *x, int64_t ldx, int64_t m, const void *w, int64_t ldw,
                              int wdtype, int64_t n, int64_t k, float *y, int64_t ldy)
{
    size_t es = vl2_dtype_size(wdtype);
    int64_t i, j;

    for (j = 0; j < n; j++) {
        const uint8_t *wj = (const uint8_t *)w + (size_t)(j * ldw) * es;
        for (i = 0; i < m; i++)
            y[i * ldy + j] = dot_w_scalar(x + i * ldx, wj, wdtype, k);
    }
}

/* gelu_tanh(x) = 0.5 x (1 + tanh(u)) = x * sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3) */
#define GELU_K0 1.5957691216057308f   /* 2 sqrt(2/pi) */
#define GELU_K1 0.0713548162726009f   /* 2 sqrt(2/pi) 0.044715 */

static void gelu_tanh_scalar(float *o, const float *a, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        float x = a[i];
        o[i] = x / (1.0f + expf(-(GELU_K0 * x + GELU_K1 * x * x * x)));
    }
}

static void swiglu_scalar(float *o, const float *g, const float *u, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        o[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

static void softmax_scalar(float *s, int64_t nv, int64_t n, float scale)
{
    float mx = -INFINITY, sum = 0.0f, inv;
    int64_t j;

    for (j = 0; j < nv; j++) {
        s[j] *= scale;
        if (s[j] > mx)
            mx = s[j];
    }
    for (j = 0; j < nv; j++) {
        s[j] = expf(s[j] - mx);
        sum += s[j];
    }
    inv = 1.0f / sum;
    for (j = 0; j < nv; j++)
        s[j] *= inv;
    for (; j < n; j++)
        s[j] = 0.0f;
}

static const struct cpu_kernels kernels_scalar = {
    .isa = CPU_ISA_SCALAR,
    .gemm_small = gemm_small_scalar,
    .to_f32 = to_f32_scalar,
    .dot = dot_scalar,
    .axpy = axpy_scalar,
    .axpy_w = axpy_w_scalar,
    .gelu_tanh = gelu_tanh_scalar,
    .swiglu = swiglu_scalar,
    .softmax = softmax_scalar,
};

#if HAVE_X86

/* ---- AVX2 + FMA + F16C ---------------------------------------------------- */

#define T_AVX2 __attribute__((target("avx2,fma,f16c")))

T_AVX2 static inline __m256 load8_avx2(const uint8_t *p, int dtype)
{
    switch (dtype) {
    case VL2_DTYPE_BF16: {
        __m128i h = _mm_loadu_si128((const __m128i *)p);
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
    case VL2_DTYPE_F16:
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
    default:
        return _mm256_loadu_ps((const float *)p);
    }
}

T_AVX2 static inline float hsum_avx2(__m256 v)
{
    __m128 lo = _mm256_castps256_ps128(v);
    __m128 hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}

/* One weight row against IB activation rows.  Per output element: four
 * vector accumulators (k blocks of 32 in lanes of 8, acc[q] takes the q-th
 * 8-lane chunk of each block), a scalar tail, then ((a0+a1)+(a2+a3)) and a
 * horizontal sum: the same order whatever IB is, so a result does not depend
 * on how the rows were grouped.  Weight rows are read once, sequentially. */
#define AVX2_ROW(IB)                                                                       \
    T_AVX2 static void row_avx2_##IB(const float *x, int64_t ldx, const uint8_t *w, int dt, \
                                     int64_t k, float *y, int64_t ldy)                     \
    {                                                                                      \
        __m256 acc[IB][4];                                                                 \
        int64_t kk = 0;                                                                    \
        size_t es = vl2_dtype_size(dt);                                                    \
        for (int b = 0; b < IB; b++)                                                       \
            for (int q = 0; q < 4; q++)                                                    \
                acc[b][q] = _mm256_setzero_ps();                                           \
        for (; kk + 32 <= k; kk += 32)                                                     \
            for (int q = 0; q < 4; q++) {                                                  \
                __m256 wv = load8_avx2(w + (size_t)(kk + 8 * q) * es, dt);                 \
                for (int b = 0; b < IB; b++)                                               \
                    acc[b][q] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + b * ldx + kk + 8 * q), \
                                                acc[b][q]);                                \
            }                                                                              \
        for (int q = 0; kk + 8 <= k; kk += 8, q++) {                                       \
            __m256 wv = load8_avx2(w + (size_t)kk * es, dt);                               \
            for (int b = 0; b < IB; b++)                                                   \
                acc[b][q] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + b * ldx + kk), acc[b][q]); \
        }                                                                                  \
        for (int b = 0; b < IB; b++) {                                                     \
            __m256 t = _mm256_add_ps(_mm256_add_ps(acc[b][0], acc[b][1]),                  \
                                     _mm256_add_ps(acc[b][2], acc[b][3]));                 \
            float s = hsum_avx2(t);                                                        \
            if (kk < k)                                                                    \
                s += dot_w_scalar(x + b * ldx + kk, w + (size_t)kk * es, dt, k - kk);      \
            y[b * ldy] = s;                                                                \
        }                                                                                  \
    }

AVX2_ROW(2)
AVX2_ROW(1)

T_AVX2 static void gemm_small_avx2(const float *x, int64_t ldx, int64_t m, const void *w,
                                   int64_t ldw, int wdtype, int64_t n, int64_t k, float *y,
                                   int64_t ldy)
{
    size_t wrow = (size_t)ldw * vl2_dtype_size(wdtype);
    const uint8_t *wb = w;

    for (int64_t j = 0; j < n; j++) {
        int64_t i = 0;
        for (; i + 2 <= m; i += 2)
            row_avx2_2(x + i * ldx, ldx, wb + j * wrow, wdtype, k, y + i * ldy + j, ldy);
        if (i < m)
            row_avx2_1(x + i * ldx, ldx, wb + j * wrow, wdtype, k, y + i * ldy + j, ldy);
    }
}

T_AVX2 static void to_f32_avx2(float *dst, const void *src, int dtype, int64_t n)
{
    const uint8_t *s = src;
    size_t es = vl2_dtype_size(dtype);
    int64_t i = 0;

    if (dtype != VL2_DTYPE_F32)
        for (; i + 8 <= n; i += 8)
            _mm256_storeu_ps(dst + i, load8_avx2(s + (size_t)i * es, dtype));
    if (i < n)
        to_f32_scalar(dst + i, s + (size_t)i * es, dtype, n - i);
}

T_AVX2 static float dot_avx2(const float *a, const float *b, int64_t n)
{
    __m256 acc = _mm256_setzero_ps();
    int64_t i;
    float s;

    for (i = 0; i + 8 <= n; i += 8)
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
    s = hsum_avx2(acc);
    for (; i < n; i++)
        s += a[i] * b[i];
    return s;
}

T_AVX2 static void axpy_avx2(float *y, float a, const float *x, int64_t n)
{
    __m256 av = _mm256_set1_ps(a);
    int64_t i;

    for (i = 0; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i),
                                                _mm256_loadu_ps(y + i)));
    for (; i < n; i++)
        y[i] += a * x[i];
}

/* exp(x), Cephes-style: x = n ln2 + r, degree-6 polynomial for exp(r), 2^n
 * through the exponent bits; about 1 ulp; inputs clamped to [-87.3, 88.7]. */
T_AVX2 static inline __m256 exp_avx2(__m256 x)
{
    const __m256 hi = _mm256_set1_ps(88.72283f), lo = _mm256_set1_ps(-87.33654f);
    __m256 n, r, p;
    __m256i e;

    x = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
    n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

T_AVX2 static void gelu_tanh_avx2(float *o, const float *a, int64_t n)
{
    const __m256 k0 = _mm256_set1_ps(-GELU_K0), k1 = _mm256_set1_ps(-GELU_K1);
    const __m256 one = _mm256_set1_ps(1.0f);
    int64_t i;

    for (i = 0; i + 8 <= n; i += 8) {
        __m256 x = _mm256_loadu_ps(a + i);
        __m256 x2 = _mm256_mul_ps(x, x);
        __m256 t = _mm256_mul_ps(x, _mm256_fmadd_ps(k1, x2, k0));
        _mm256_storeu_ps(o + i, _mm256_div_ps(x, _mm256_add_ps(one, exp_avx2(t))));
    }
    gelu_tanh_scalar(o + i, a + i, n - i);
}

T_AVX2 static void swiglu_avx2(float *o, const float *g, const float *u, int64_t n)
{
    const __m256 one = _mm256_set1_ps(1.0f);
    int64_t i;

    for (i = 0; i + 8 <= n; i += 8) {
        __m256 x = _mm256_loadu_ps(g + i);
        __m256 e = exp_avx2(_mm256_sub_ps(_mm256_setzero_ps(), x));
        _mm256_storeu_ps(o + i, _mm256_mul_ps(_mm256_div_ps(x, _mm256_add_ps(one, e)),
                                              _mm256_loadu_ps(u + i)));
    }
    swiglu_scalar(o + i, g + i, u + i, n - i);
}

T_AVX2 static void softmax_avx2(float *s, int64_t nv, int64_t n, float scale)
{
    __m256 vmx = _mm256_set1_ps(-INFINITY), vsum = _mm256_setzero_ps(), sc = _mm256_set1_ps(scale);
    float mx, sum, inv;
    int64_t j;

    for (j = 0; j + 8 <= nv; j += 8) {
        __m256 v = _mm256_mul_ps(_mm256_loadu_ps(s + j), sc);
        _mm256_storeu_ps(s + j, v);
        vmx = _mm256_max_ps(vmx, v);
    }
    {
        __m128 m = _mm_max_ps(_mm256_castps256_ps128(vmx), _mm256_extractf128_ps(vmx, 1));
        m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        m = _mm_max_ss(m, _mm_movehdup_ps(m));
        mx = _mm_cvtss_f32(m);
    }
    for (; j < nv; j++) {
        s[j] *= scale;
        if (s[j] > mx)
            mx = s[j];
    }
    {
        __m256 vm = _mm256_set1_ps(mx);
        for (j = 0; j + 8 <= nv; j += 8) {
            __m256 e = exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(s + j), vm));
            _mm256_storeu_ps(s + j, e);
            vsum = _mm256_add_ps(vsum, e);
        }
    }
    sum = hsum_avx2(vsum);
    for (; j < nv; j++) {
        s[j] = expf(s[j] - mx);
        sum += s[j];
    }
    inv = 1.0f / sum;
    {
        __m256 vi = _mm256_set1_ps(inv);
        for (j = 0; j + 8 <= nv; j += 8)
            _mm256_storeu_ps(s + j, _mm256_mul_ps(_mm256_loadu_ps(s + j), vi));
    }
    for (; j < nv; j++)
        s[j] *= inv;
    for (; j < n; j++)
        s[j] = 0.0f;
}

T_AVX2 static void axpy_w_avx2(float *y, float a, const void *w, int dtype, int64_t n)
{
    const uint8_t *p = w;
    size_t es = vl2_dtype_size(dtype);
    __m256 av = _mm256_set1_ps(a);
    int64_t i;

    for (i = 0; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, load8_avx2(p + (size_t)i * es, dtype),
                                                _mm256_loadu_ps(y + i)));
    if (i < n)
        axpy_w_scalar(y + i, a, p + (size_t)i * es, dtype, n - i);
}

static const struct cpu_kernels kernels_avx2 = {
    .isa = CPU_ISA_AVX2,
    .gemm_small = gemm_small_avx2,
    .to_f32 = to_f32_avx2,
    .dot = dot_avx2,
    .axpy = axpy_avx2,
    .axpy_w = axpy_w_avx2,
    .gelu_tanh = gelu_tanh_avx2,
    .swiglu = swiglu_avx2,
    .softmax = softmax_avx2,
};

/* ---- AVX-512F --------------------------------------------------------------- */

#define T_512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")))

T_512 static inline __m512 load16_512(const uint8_t *p, int dtype)
{
    switch (dtype) {
    case VL2_DTYPE_BF16: {
        __m256i h = _mm256_loadu_si256((const __m256i *)p);
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    case VL2_DTYPE_F16:
        return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
    default:
        return _mm512_loadu_ps((const float *)p);
    }
}

T_512 static inline __m512 load16_512_mask(const uint8_t *p, int dtype, __mmask16 mk)
{
    switch (dtype) {
    case VL2_DTYPE_BF16: {
        __m256i h = _mm256_maskz_loadu_epi16(mk, p);
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    case VL2_DTYPE_F16:
        return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mk, p));
    default:
        return _mm512_maskz_loadu_ps(mk, p);
    }
}

/* As AVX2_ROW with 16 lanes: k blocks of 64, four accumulators, a masked
 * tail chunk into the next accumulator, then ((a0+a1)+(a2+a3)). */
#define A512_ROW(IB)                                                                       \
    T_512 static void row_512_##IB(const float *x, int64_t ldx, const uint8_t *w, int dt,  \
                                   int64_t k, float *y, int64_t ldy)                       \
    {                                                                                      \
        __m512 acc[IB][4];                                                                 \
        int64_t kk = 0;                                                                    \
        size_t es = vl2_dtype_size(dt);                                                    \
        int q;                                                                             \
        for (int b = 0; b < IB; b++)                                                       \
            for (q = 0; q < 4; q++)                                                        \
                acc[b][q] = _mm512_setzero_ps();                                           \
        for (; kk + 64 <= k; kk += 64)                                                     \
            for (q = 0; q < 4; q++) {                                                      \
                __m512 wv = load16_512(w + (size_t)(kk + 16 * q) * es, dt);                \
                for (int b = 0; b < IB; b++)                                               \
                    acc[b][q] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x + b * ldx + kk + 16 * q), \
                                                acc[b][q]);                                \
            }                                                                              \
        for (q = 0; kk < k; kk += 16, q++) {                                               \
            __mmask16 mk = k - kk >= 16 ? (__mmask16)0xffff                                \
                                        : (__mmask16)((1u << (k - kk)) - 1u);              \
            __m512 wv = load16_512_mask(w + (size_t)kk * es, dt, mk);                      \
            for (int b = 0; b < IB; b++)                                                   \
                acc[b][q] = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(mk, x + b * ldx + kk), \
                                            acc[b][q]);                                    \
        }                                                                                  \
        for (int b = 0; b < IB; b++)                                                       \
            y[b * ldy] = _mm512_reduce_add_ps(_mm512_add_ps(                               \
                _mm512_add_ps(acc[b][0], acc[b][1]), _mm512_add_ps(acc[b][2], acc[b][3]))); \
    }

A512_ROW(4)
A512_ROW(2)
A512_ROW(1)

T_512 static void gemm_small_512(const float *x, int64_t ldx, int64_t m, const void *w,
                                 int64_t ldw, int wdtype, int64_t n, int64_t k, float *y,
                                 int64_t ldy)
{
    size_t wrow = (size_t)ldw * vl2_dtype_size(wdtype);
    const uint8_t *wb = w;

    for (int64_t j = 0; j < n; j++) {
        int64_t i = 0;
        for (; i + 4 <= m; i += 4)
            row_512_4(x + i * ldx, ldx, wb + j * wrow, wdtype, k, y + i * ldy + j, ldy);
        for (; i + 2 <= m; i += 2)
            row_512_2(x + i * ldx, ldx, wb + j * wrow, wdtype, k, y + i * ldy + j, ldy);
        if (i < m)
            row_512_1(x + i * ldx, ldx, wb + j * wrow, wdtype, k, y + i * ldy + j, ldy);
    }
}

T_512 static void to_f32_512(float *dst, const void *src, int dtype, int64_t n)
{
    const uint8_t *s = src;
    size_t es = vl2_dtype_size(dtype);
    int64_t i = 0;

    if (dtype != VL2_DTYPE_F32) {
        for (; i + 16 <= n; i += 16)
            _mm512_storeu_ps(dst + i, load16_512(s + (size_t)i * es, dtype));
        if (i < n) {
            __mmask16 mk = (__mmask16)((1u << (n - i)) - 1u);
            _mm512_mask_storeu_ps(dst + i, mk, load16_512_mask(s + (size_t)i * es, dtype, mk));
        }
        return;
    }
    memcpy(dst, src, (size_t)n * 4);
}

T_512 static float dot_512(const float *a, const float *b, int64_t n)
{
    __m512 acc = _mm512_setzero_ps();
    int64_t i;

    for (i = 0; i + 16 <= n; i += 16)
        acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc);
    if (i < n) {
        __mmask16 mk = (__mmask16)((1u << (n - i)) - 1u);
        acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mk, a + i), _mm512_maskz_loadu_ps(mk, b + i),
                              acc);
    }
    return _mm512_reduce_add_ps(acc);
}

T_512 static void axpy_512(float *y, float a, const float *x, int64_t n)
{
    __m512 av = _mm512_set1_ps(a);
    int64_t i;

    for (i = 0; i + 16 <= n; i += 16)
        _mm512_storeu_ps(y + i, _mm512_fmadd_ps(av, _mm512_loadu_ps(x + i),
                                                _mm512_loadu_ps(y + i)));
    if (i < n) {
        __mmask16 mk = (__mmask16)((1u << (n - i)) - 1u);
        _mm512_mask_storeu_ps(y + i, mk,
                              _mm512_fmadd_ps(av, _mm512_maskz_loadu_ps(mk, x + i),
                                              _mm512_maskz_loadu_ps(mk, y + i)));
    }
}

T_512 static inline __m512 exp_512(__m512 x)
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

T_512 static void gelu_tanh_512(float *o, const float *a, int64_t n)
{
    const __m512 k0 = _mm512_set1_ps(-GELU_K0), k1 = _mm512_set1_ps(-GELU_K1);
    const __m512 one = _mm512_set1_ps(1.0f);
    int64_t i;

    for (i = 0; i < n; i += 16) {
        __mmask16 mk = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1u);
        __m512 x = _mm512_maskz_loadu_ps(mk, a + i);
        __m512 x2 = _mm512_mul_ps(x, x);
        __m512 t = _mm512_mul_ps(x, _mm512_fmadd_ps(k1, x2, k0));
        _mm512_mask_storeu_ps(o + i, mk, _mm512_div_ps(x, _mm512_add_ps(one, exp_512(t))));
    }
}

T_512 static void swiglu_512(float *o, const float *g, const float *u, int64_t n)
{
    const __m512 one = _mm512_set1_ps(1.0f);
    int64_t i;

    for (i = 0; i < n; i += 16) {
        __mmask16 mk = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1u);
        __m512 x = _mm512_maskz_loadu_ps(mk, g + i);
        __m512 e = exp_512(_mm512_sub_ps(_mm512_setzero_ps(), x));
        _mm512_mask_storeu_ps(o + i, mk, _mm512_mul_ps(_mm512_div_ps(x, _mm512_add_ps(one, e)),
                                                       _mm512_maskz_loadu_ps(mk, u + i)));
    }
}

T_512 static void softmax_512(float *s, int64_t nv, int64_t n, float scale)
{
    __m512 vmx = _mm512_set1_ps(-INFINITY), vsum = _mm512_setzero_ps(), sc = _mm512_set1_ps(scale);
    __m512 vm, vi;
    int64_t j;

    for (j = 0; j < nv; j += 16) {
        __mmask16 mk = nv - j >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (nv - j)) - 1u);
        __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(mk, s + j), sc);
        _mm512_mask_storeu_ps(s + j, mk, v);
        vmx = _mm512_mask_max_ps(vmx, mk, vmx, v);
    }
    vm = _mm512_set1_ps(_mm512_reduce_max_ps(vmx));
    for (j = 0; j < nv; j += 16) {
        __mmask16 mk = nv - j >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (nv - j)) - 1u);
        __m512 e = exp_512(_mm512_sub_ps(_mm512_maskz_loadu_ps(mk, s + j), vm));
        _mm512_mask_storeu_ps(s + j, mk, e);
        vsum = _mm512_mask_add_ps(vsum, mk, vsum, e);
    }
    vi = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(vsum));
    for (j = 0; j < nv; j += 16) {
        __mmask16 mk = nv - j >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (nv - j)) - 1u);
        _mm512_mask_storeu_ps(s + j, mk, _mm512_mul_ps(_mm512_maskz_loadu_ps(mk, s + j), vi));
    }
    for (j = nv; j < n; j++)
        s[j] = 0.0f;
}

T_512 static void axpy_w_512(float *y, float a, const void *w, int dtype, int64_t n)
{
    const uint8_t *p = w;
    size_t es = vl2_dtype_size(dtype);
    __m512 av = _mm512_set1_ps(a);

    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 mk = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1u);
        _mm512_mask_storeu_ps(y + i, mk,
                              _mm512_fmadd_ps(av, load16_512_mask(p + (size_t)i * es, dtype, mk),
                                              _mm512_maskz_loadu_ps(mk, y + i)));
    }
}

static const struct cpu_kernels kernels_512 = {
    .isa = CPU_ISA_AVX512,
    .gemm_small = gemm_small_512,
    .to_f32 = to_f32_512,
    .dot = dot_512,
    .axpy = axpy_512,
    .axpy_w = axpy_w_512,
    .gelu_tanh = gelu_tanh_512,
    .swiglu = swiglu_512,
    .softmax = softmax_512,
};

#endif /* HAVE_X86 */

/* ---- selection --------------------------------------------------------------- */

unsigned cpu_isa_supported(void)
{
    unsigned m = 1u << CPU_ISA_SCALAR;
#if HAVE_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
        __builtin_cpu_supports("f16c"))
        m |= 1u << CPU_ISA_AVX2;
    if ((m & (1u << CPU_ISA_AVX2)) && __builtin_cpu_supports("avx512f") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
        m |= 1u << CPU_ISA_AVX512;
#endif
    return m;
}

int cpu_isa_detect(void)
{
    unsigned m = cpu_isa_supported();
    if (m & (1u << CPU_ISA_AVX512))
        return CPU_ISA_AVX512;
    if (m & (1u << CPU_ISA_AVX2))
        return CPU_ISA_AVX2;
    return CPU_ISA_SCALAR;
}

bool cpu_has_avx512bf16(void)
{
#if HAVE_X86
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512bf16");
#else
    return false;
#endif
}

const struct cpu_kernels *cpu_kernels_get(int isa)
{
#if HAVE_X86
    if (isa == CPU_ISA_AVX512)
        return &kernels_512;
    if (isa == CPU_ISA_AVX2)
        return &kernels_avx2;
#endif
    (void)isa;
    return &kernels_scalar;
}

/* resize.c - Pillow-exact BICUBIC resize of RGB8 images (spec 3.7).
 *
 * Pillow (src/libImaging/Resample.c) resamples separably with 22-bit
 * fixed-point coefficients: a horizontal pass into an 8-bit intermediate
 * (only the source rows the vertical pass needs), then a vertical pass.
 * The arithmetic here is the same integer arithmetic, organised for speed:
 *   - the horizontal pass works on blocks of 8 source rows transposed so
 *     that one vector lane holds one row (one coefficient for all lanes);
 *   - the vertical pass accumulates whole output rows, tap by tap.
 * Integer sums are exact in any order (no partial sum can overflow int32:
 * 255 * sum|k| < 2^31), so the result is bit-identical to Pillow's.
 */
#include "image.h"
#include "image-impl.h"

#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define HAVE_SSE2_TRANSPOSE 1
#endif

#define PRECISION_BITS 22
#define ROWS 8   /* source rows per horizontal block = vector lanes */

/* ---- coefficients ------------------------------------------------------ */

static double bicubic(double x)
{
    const double a = -0.5;

    if (x < 0.0)
        x = -x;
    if (x < 1.0)
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0)
        return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

void vl2__image_coeffs_done(struct vl2__coeffs *c)
{
    free(c->bounds);
    free(c->k);
    c->bounds = NULL;
    c->k = NULL;
}

int vl2__image_coeffs_init(struct vl2__coeffs *c, int32_t in_size, int32_t out_size)
{
    double scale, filterscale, support;
    double *kd;
    int32_t xx;
    int ksize;

    memset(c, 0, sizeof(*c));
    if (in_size < 1 || out_size < 1)
        return VL2_EINVAL;
    scale = (double)in_size / out_size;
    filterscale = scale < 1.0 ? 1.0 : scale;
    support = 2.0 * filterscale;
    ksize = (int)ceil(support) * 2 + 1;
    if ((size_t)out_size > SIZE_MAX / sizeof(double) / (size_t)ksize)
        return VL2_ENOMEM;
    c->out_size = out_size;
    c->ksize = ksize;
    c->bounds = malloc((size_t)out_size * 2 * sizeof(*c->bounds));
    c->k = malloc((size_t)out_size * ksize * sizeof(*c->k));
    kd = malloc((size_t)ksize * sizeof(*kd));
    if (!c->bounds || !c->k || !kd) {
        free(kd);
        vl2__image_coeffs_done(c);
        return VL2_ENOMEM;
    }
    for (xx = 0; xx < out_size; xx++) {
        double center = (xx + 0.5) * scale;
        double ww = 0.0;
        double ss = 1.0 / filterscale;
        int32_t *k = c->k + (size_t)xx * ksize;
        int xmin, xmax, x;

        xmin = (int)(center - support + 0.5);
        if (xmin < 0)
            xmin = 0;
        xmax = (int)(center + support + 0.5);
        if (xmax > in_size)
            xmax = in_size;
        xmax -= xmin;
        for (x = 0; x < xmax; x++) {
            double w = bicubic((x + xmin - center + 0.5) * ss);
            kd[x] = w;
            ww += w;
        }
        for (x = 0; x < xmax; x++)
            if (ww != 0.0)
                kd[x] /= ww;
        for (x = 0; x < xmax; x++)
            k[x] = kd[x] < 0 ? (int32_t)(-0.5 + kd[x] * (1 << PRECISION_BITS))
                             : (int32_t)(0.5 + kd[x] * (1 << PRECISION_BITS));
        for (; x < ksize; x++)
            k[x] = 0;
        c->bounds[2 * xx] = xmin;
        c->bounds[2 * xx + 1] = xmax;
    }
    free(kd);
    return 0;
}

static inline uint8_t clip8(int32_t v)
{
    if (v >= (1 << PRECISION_BITS << 8))
        return 255;
    if (v <= 0)
        return 0;
    return (uint8_t)(v >> PRECISION_BITS);
}

/* ---- horizontal pass --------------------------------------------------- */

/* Transpose 8 rows of @n bytes into @t: t[b * 8 + r] = rows[r][b]. */
static void transpose8(const uint8_t *const rows[ROWS], size_t n, uint8_t *t)
{
    size_t b = 0;

#ifdef HAVE_SSE2_TRANSPOSE
    for (; b + 16 <= n; b += 16) {
        __m128i r0 = _mm_loadu_si128((const __m128i *)(rows[0] + b));
        __m128i r1 = _mm_loadu_si128((const __m128i *)(rows[1] + b));
        __m128i r2 = _mm_loadu_si128((const __m128i *)(rows[2] + b));
        __m128i r3 = _mm_loadu_si128((const __m128i *)(rows[3] + b));
        __m128i r4 = _mm_loadu_si128((const __m128i *)(rows[4] + b));
        __m128i r5 = _mm_loadu_si128((const __m128i *)(rows[5] + b));
        __m128i r6 = _mm_loadu_si128((const __m128i *)(rows[6] + b));
        __m128i r7 = _mm_loadu_si128((const __m128i *)(rows[7] + b));
        __m128i t0 = _mm_unpacklo_epi8(r0, r1), t1 = _mm_unpackhi_epi8(r0, r1);
        __m128i t2 = _mm_unpacklo_epi8(r2, r3), t3 = _mm_unpackhi_epi8(r2, r3);
        __m128i t4 = _mm_unpacklo_epi8(r4, r5), t5 = _mm_unpackhi_epi8(r4, r5);
        __m128i t6 = _mm_unpacklo_epi8(r6, r7), t7 = _mm_unpackhi_epi8(r6, r7);
        __m128i u0 = _mm_unpacklo_epi16(t0, t2), u1 = _mm_unpackhi_epi16(t0, t2);
        __m128i u2 = _mm_unpacklo_epi16(t1, t3), u3 = _mm_unpackhi_epi16(t1, t3);
        __m128i u4 = _mm_unpacklo_epi16(t4, t6), u5 = _mm_unpackhi_epi16(t4, t6);
        __m128i u6 = _mm_unpacklo_epi16(t5, t7), u7 = _mm_unpackhi_epi16(t5, t7);
        __m128i *o = (__m128i *)(t + b * ROWS);

        _mm_storeu_si128(o + 0, _mm_unpacklo_epi32(u0, u4));
        _mm_storeu_si128(o + 1, _mm_unpackhi_epi32(u0, u4));
        _mm_storeu_si128(o + 2, _mm_unpacklo_epi32(u1, u5));
        _mm_storeu_si128(o + 3, _mm_unpackhi_epi32(u1, u5));
        _mm_storeu_si128(o + 4, _mm_unpacklo_epi32(u2, u6));
        _mm_storeu_si128(o + 5, _mm_unpackhi_epi32(u2, u6));
        _mm_storeu_si128(o + 6, _mm_unpacklo_epi32(u3, u7));
        _mm_storeu_si128(o + 7, _mm_unpackhi_epi32(u3, u7));
    }
#endif
    for (; b < n; b++)
        for (int r = 0; r < ROWS; r++)
            t[b * ROWS + r] = rows[r][b];
}

/* One block: @t holds 8 transposed source rows (t[(x*3 + ch) * 8 + r]);
 * write output pixels of rows out[r] (r < n_rows).  Portable version. */
static void hblock_generic(const uint8_t *t, const struct vl2__coeffs *c,
                           uint8_t *const out[ROWS], int n_rows)
{
    for (int32_t xx = 0; xx < c->out_size; xx++) {
        const int32_t xmin = c->bounds[2 * xx], n = c->bounds[2 * xx + 1];
        const int32_t *k = c->k + (size_t)xx * c->ksize;
        int32_t acc[3 * ROWS];

        for (int j = 0; j < 3 * ROWS; j++)
            acc[j] = 1 << (PRECISION_BITS - 1);
        for (int32_t x = 0; x < n; x++) {
            const uint8_t *p = t + (size_t)(xmin + x) * 3 * ROWS;

            for (int j = 0; j < 3 * ROWS; j++)
                acc[j] += p[j] * k[x];
        }
        for (int r = 0; r < n_rows; r++) {
            uint8_t *o = out[r] + (size_t)xx * 3;

            o[0] = clip8(acc[r]);
            o[1] = clip8(acc[ROWS + r]);
            o[2] = clip8(acc[2 * ROWS + r]);
        }
    }
}

#if defined(__x86_64__) && defined(__GNUC__)
#define HAVE_AVX2_DISPATCH 1

/* clip8 of 8 lanes: (v >> 22) saturated to 0..255 equals clip8(v) */
__attribute__((target("avx2"))) static inline __m128i clip8x8(__m256i v)
{
    __m256i s = _mm256_srai_epi32(v, PRECISION_BITS);
    __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));

    return _mm_packus_epi16(w, w);   /* 8 bytes in the low half */
}

__attribute__((target("avx2"))) static void hblock_avx2(const uint8_t *t,
                                                        const struct vl2__coeffs *c,
                                                        uint8_t *const out[ROWS], int n_rows)
{
    const __m256i bias = _mm256_set1_epi32(1 << (PRECISION_BITS - 1));

    for (int32_t xx = 0; xx < c->out_size; xx++) {
        const int32_t xmin = c->bounds[2 * xx], n = c->bounds[2 * xx + 1];
        const int32_t *k = c->k + (size_t)xx * c->ksize;
        const uint8_t *p = t + (size_t)xmin * 3 * ROWS;
        __m256i a0 = bias, a1 = bias, a2 = bias;
        uint8_t b[3][16];

        for (int32_t x = 0; x < n; x++, p += 3 * ROWS) {
            const __m256i kx = _mm256_set1_epi32(k[x]);
            __m256i v0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p));
            __m256i v1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(p + ROWS)));
            __m256i v2 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(p + 2 * ROWS)));

            a0 = _mm256_add_epi32(a0, _mm256_mullo_epi32(v0, kx));
            a1 = _mm256_add_epi32(a1, _mm256_mullo_epi32(v1, kx));
            a2 = _mm256_add_epi32(a2, _mm256_mullo_epi32(v2, kx));
        }
        _mm_storeu_si128((__m128i *)b[0], clip8x8(a0));
        _mm_storeu_si128((__m128i *)b[1], clip8x8(a1));
        _mm_storeu_si128((__m128i *)b[2], clip8x8(a2));
        for (int r = 0; r < n_rows; r++) {
            uint8_t *o = out[r] + (size_t)xx * 3;

            o[0] = b[0][r];
            o[1] = b[1][r];
            o[2] = b[2][r];
        }
    }
}

/* AVX2 where the CPU has it, unless VL2_IMAGE_SIMD=0 (tests of the
 * portable path). */
static int have_avx2(void)
{
    const char *e = getenv("VL2_IMAGE_SIMD");

    if (e && !strcmp(e, "0"))
        return 0;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2");
}
#endif

/* Horizontal pass over source rows [y0, y0 + n_rows) of @src (sw pixels
 * wide, stride @src_stride) into rows of @dst (c->out_size pixels, stride
 * @dst_stride). */
static int hpass(const uint8_t *src, int32_t sw, size_t src_stride, int32_t y0, int32_t n_rows,
                 const struct vl2__coeffs *c, uint8_t *dst, size_t dst_stride)
{
    void (*block)(const uint8_t *, const struct vl2__coeffs *, uint8_t *const[ROWS], int) =
        hblock_generic;
    size_t row_bytes = (size_t)sw * 3;
    uint8_t *t, *zero;

#ifdef HAVE_AVX2_DISPATCH
    if (have_avx2())
        block = hblock_avx2;
#endif
    t = malloc(row_bytes * ROWS);
    zero = calloc(1, row_bytes);
    if (!t || !zero) {
        free(t);
        free(zero);
        return VL2_ENOMEM;
    }
    for (int32_t y = 0; y < n_rows; y += ROWS) {
        const uint8_t *in[ROWS];
        uint8_t *out[ROWS];
        int n = n_rows - y < ROWS ? n_rows - y : ROWS;

        for (int r = 0; r < ROWS; r++) {
            in[r] = r < n ? src + (size_t)(y0 + y + r) * src_stride : zero;
            out[r] = r < n ? dst + (size_t)(y + r) * dst_stride : NULL;
        }
        transpose8(in, row_bytes, t);
        block(t, c, out, n);
    }
    free(t);
    free(zero);
    return 0;
}

/* ---- vertical pass ----------------------------------------------------- */

/* Vertical pass, portable version; @acc holds row_bytes sums. */
static void vpass_generic(const uint8_t *src, size_t src_stride, size_t row_bytes,
                          const struct vl2__coeffs *c, uint8_t *dst, size_t dst_stride,
                          int32_t *restrict acc)
{
    for (int32_t yy = 0; yy < c->out_size; yy++) {
        const int32_t ymin = c->bounds[2 * yy], n = c->bounds[2 * yy + 1];
        const int32_t *k = c->k + (size_t)yy * c->ksize;
        uint8_t *o = dst + (size_t)yy * dst_stride;

        for (size_t i = 0; i < row_bytes; i++)
            acc[i] = 1 << (PRECISION_BITS - 1);
        for (int32_t y = 0; y < n; y++) {
            const uint8_t *restrict r0 = src + (size_t)(ymin + y) * src_stride;
            const int32_t k0 = k[y];

            for (size_t i = 0; i < row_bytes; i++)
                acc[i] += r0[i] * k0;
        }
        for (size_t i = 0; i < row_bytes; i++)
            o[i] = clip8(acc[i]);
    }
}

#ifdef HAVE_AVX2_DISPATCH
/* 32 output bytes at a time, the sums in registers, taps innermost. */
__attribute__((target("avx2"))) static void vpass_avx2(const uint8_t *src, size_t src_stride,
                                                       size_t row_bytes,
                                                       const struct vl2__coeffs *c,
                                                       uint8_t *dst, size_t dst_stride,
                                                       int32_t *acc)
{
    const __m256i bias = _mm256_set1_epi32(1 << (PRECISION_BITS - 1));

    (void)acc;
    for (int32_t yy = 0; yy < c->out_size; yy++) {
        const int32_t ymin = c->bounds[2 * yy], n = c->bounds[2 * yy + 1];
        const int32_t *k = c->k + (size_t)yy * c->ksize;
        const uint8_t *base = src + (size_t)ymin * src_stride;
        uint8_t *o = dst + (size_t)yy * dst_stride;
        size_t i = 0;

        for (; i + 32 <= row_bytes; i += 32) {
            __m256i a0 = bias, a1 = bias, a2 = bias, a3 = bias;
            const uint8_t *p = base + i;

            for (int32_t y = 0; y < n; y++, p += src_stride) {
                const __m256i ky = _mm256_set1_epi32(k[y]);
                __m128i lo = _mm_loadu_si128((const __m128i *)p);
                __m128i hi = _mm_loadu_si128((const __m128i *)(p + 16));

                a0 = _mm256_add_epi32(a0, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(lo), ky));
                a1 = _mm256_add_epi32(a1, _mm256_mullo_epi32(
                                              _mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8)), ky));
                a2 = _mm256_add_epi32(a2, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(hi), ky));
                a3 = _mm256_add_epi32(a3, _mm256_mullo_epi32(
                                              _mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8)), ky));
            }
            a0 = _mm256_srai_epi32(a0, PRECISION_BITS);
            a1 = _mm256_srai_epi32(a1, PRECISION_BITS);
            a2 = _mm256_srai_epi32(a2, PRECISION_BITS);
            a3 = _mm256_srai_epi32(a3, PRECISION_BITS);
            /* packs work per 128-bit lane: undo the lane interleave after */
            __m256i w01 = _mm256_permute4x64_epi64(_mm256_packs_epi32(a0, a1), 0xd8);
            __m256i w23 = _mm256_permute4x64_epi64(_mm256_packs_epi32(a2, a3), 0xd8);
            __m256i b = _mm256_permute4x64_epi64(_mm256_packus_epi16(w01, w23), 0xd8);

            _mm256_storeu_si256((__m256i *)(o + i), b);
        }
        for (; i < row_bytes; i++) {
            const uint8_t *p = base + i;
            int32_t s = 1 << (PRECISION_BITS - 1);

            for (int32_t y = 0; y < n; y++, p += src_stride)
                s += *p * k[y];
            o[i] = clip8(s);
        }
    }
}
#endif

/* Vertical pass: @src rows (stride @src_stride, bounds relative to @src) of
 * @w pixels into c->out_size rows of @dst. */
static int vpass(const uint8_t *src, size_t src_stride, int32_t w, const struct vl2__coeffs *c,
                 uint8_t *dst, size_t dst_stride)
{
    size_t row_bytes = (size_t)w * 3;
    int32_t *acc = malloc(row_bytes * sizeof(*acc));

    if (!acc)
        return VL2_ENOMEM;
#ifdef HAVE_AVX2_DISPATCH
    if (have_avx2())
        vpass_avx2(src, src_stride, row_bytes, c, dst, dst_stride, acc);
    else
#endif
        vpass_generic(src, src_stride, row_bytes, c, dst, dst_stride, acc);
    free(acc);
    return 0;
}

/* ---- resize ------------------------------------------------------------ */

int vl2_image_resize(const uint8_t *src, int32_t sw, int32_t sh, uint8_t *dst, int32_t dw,
                     int32_t dh, size_t dst_stride, struct vl2_err *err)
{
    struct vl2__coeffs ch = {0}, cv = {0};
    size_t src_stride = (size_t)sw * 3;
    uint8_t *tmp = NULL;
    int32_t first, last;
    int r;

    if (sw < 1 || sh < 1 || dw < 1 || dh < 1)
        return vl2_err_set(err, VL2_EINVAL, "image: cannot resize %dx%d to %dx%d", (int)sw,
                           (int)sh, (int)dw, (int)dh);
    if (sw == dw && sh == dh) {
        for (int32_t y = 0; y < sh; y++)
            memcpy(dst + (size_t)y * dst_stride, src + (size_t)y * src_stride, src_stride);
        return 0;
    }
    if (sw != dw) {
        r = vl2__image_coeffs_init(&ch, sw, dw);
        if (r < 0)
            goto out_nomem;
    }
    if (sh != dh) {
        r = vl2__image_coeffs_init(&cv, sh, dh);
        if (r < 0)
            goto out_nomem;
    }
    if (sh == dh) {
        r = hpass(src, sw, src_stride, 0, sh, &ch, dst, dst_stride);
        if (r < 0)
            goto out_nomem;
    } else if (sw == dw) {
        r = vpass(src, src_stride, sw, &cv, dst, dst_stride);
        if (r < 0)
            goto out_nomem;
    } else {
        /* only the source rows the vertical pass reads */
        first = cv.bounds[0];
        last = cv.bounds[2 * dh - 2] + cv.bounds[2 * dh - 1];
        for (int32_t i = 0; i < dh; i++)
            cv.bounds[2 * i] -= first;
        tmp = malloc((size_t)dw * 3 * (size_t)(last - first));
        if (!tmp)
            goto out_nomem;
        r = hpass(src, sw, src_stride, first, last - first, &ch, tmp, (size_t)dw * 3);
        if (r < 0)
            goto out_nomem;
        r = vpass(tmp, (size_t)dw * 3, dw, &cv, dst, dst_stride);
        if (r < 0)
            goto out_nomem;
    }
    free(tmp);
    vl2__image_coeffs_done(&ch);
    vl2__image_coeffs_done(&cv);
    return 0;

out_nomem:
    free(tmp);
    vl2__image_coeffs_done(&ch);
    vl2__image_coeffs_done(&cv);
    return vl2_err_set(err, VL2_ENOMEM, "image: out of memory resizing %dx%d to %dx%d",
                       (int)sw, (int)sh, (int)dw, (int)dh);
}

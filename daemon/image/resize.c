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
#include <emmintrin.h>
#define HAVE_SSE2_TRANSPOSE 1
#endif

#define PRECISION_BITS 22
#define ROWS 8   /* source rows per horizontal block = vector lanes */

typedef int32_t v8i __attribute__((vector_size(32)));
typedef uint8_t v8b __attribute__((vector_size(8)));

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

static inline v8i load8(const uint8_t *p)
{
    v8b b;

    memcpy(&b, p, sizeof(b));
    return __builtin_convertvector(b, v8i);
}

/* One block: @t holds 8 transposed source rows (t[(x*3 + ch) * 8 + r]);
 * write output pixels of rows out[r] (r < n_rows). */
static inline __attribute__((always_inline)) void
hblock_kernel(const uint8_t *t, const struct vl2__coeffs *c, uint8_t *const out[ROWS],
              int n_rows)
{
    const v8i bias = (v8i){0} + (1 << (PRECISION_BITS - 1));

    for (int32_t xx = 0; xx < c->out_size; xx++) {
        const int32_t xmin = c->bounds[2 * xx], n = c->bounds[2 * xx + 1];
        const int32_t *k = c->k + (size_t)xx * c->ksize;
        const uint8_t *p = t + (size_t)xmin * 3 * ROWS;
        v8i a0 = bias, a1 = bias, a2 = bias;
        int32_t s0[ROWS], s1[ROWS], s2[ROWS];

        for (int32_t x = 0; x < n; x++, p += 3 * ROWS) {
            const int32_t kx = k[x];
            a0 += load8(p) * kx;
            a1 += load8(p + ROWS) * kx;
            a2 += load8(p + 2 * ROWS) * kx;
        }
        memcpy(s0, &a0, sizeof(s0));
        memcpy(s1, &a1, sizeof(s1));
        memcpy(s2, &a2, sizeof(s2));
        for (int r = 0; r < n_rows; r++) {
            uint8_t *o = out[r] + (size_t)xx * 3;
            o[0] = clip8(s0[r]);
            o[1] = clip8(s1[r]);
            o[2] = clip8(s2[r]);
        }
    }
}

static void hblock_generic(const uint8_t *t, const struct vl2__coeffs *c,
                           uint8_t *const out[ROWS], int n_rows)
{
    hblock_kernel(t, c, out, n_rows);
}

#if defined(__x86_64__) && defined(__GNUC__)
#define HAVE_AVX2_DISPATCH 1
__attribute__((target("avx2"))) static void hblock_avx2(const uint8_t *t,
                                                        const struct vl2__coeffs *c,
                                                        uint8_t *const out[ROWS], int n_rows)
{
    hblock_kernel(t, c, out, n_rows);
}

static int have_avx2(void)
{
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

static inline __attribute__((always_inline)) void
vpass_kernel(const uint8_t *src, size_t src_stride, size_t row_bytes, const struct vl2__coeffs *c,
             uint8_t *dst, size_t dst_stride, int32_t *acc)
{
    for (int32_t yy = 0; yy < c->out_size; yy++) {
        const int32_t ymin = c->bounds[2 * yy], n = c->bounds[2 * yy + 1];
        const int32_t *k = c->k + (size_t)yy * c->ksize;
        uint8_t *o = dst + (size_t)yy * dst_stride;
        int32_t y = 0;

        for (size_t i = 0; i < row_bytes; i++)
            acc[i] = 1 << (PRECISION_BITS - 1);
        for (; y + 2 <= n; y += 2) {
            const uint8_t *r0 = src + (size_t)(ymin + y) * src_stride;
            const uint8_t *r1 = r0 + src_stride;
            const int32_t k0 = k[y], k1 = k[y + 1];

            for (size_t i = 0; i < row_bytes; i++)
                acc[i] += r0[i] * k0 + r1[i] * k1;
        }
        for (; y < n; y++) {
            const uint8_t *r0 = src + (size_t)(ymin + y) * src_stride;
            const int32_t k0 = k[y];

            for (size_t i = 0; i < row_bytes; i++)
                acc[i] += r0[i] * k0;
        }
        for (size_t i = 0; i < row_bytes; i++)
            o[i] = clip8(acc[i]);
    }
}

static void vpass_generic(const uint8_t *src, size_t src_stride, size_t row_bytes,
                          const struct vl2__coeffs *c, uint8_t *dst, size_t dst_stride,
                          int32_t *acc)
{
    vpass_kernel(src, src_stride, row_bytes, c, dst, dst_stride, acc);
}

#ifdef HAVE_AVX2_DISPATCH
__attribute__((target("avx2"))) static void vpass_avx2(const uint8_t *src, size_t src_stride,
                                                       size_t row_bytes,
                                                       const struct vl2__coeffs *c,
                                                       uint8_t *dst, size_t dst_stride,
                                                       int32_t *acc)
{
    vpass_kernel(src, src_stride, row_bytes, c, dst, dst_stride, acc);
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

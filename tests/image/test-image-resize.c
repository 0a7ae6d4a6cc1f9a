/* test-image-resize.c - vl2_image_resize against
 *   1. a naive reference of Pillow's BICUBIC algorithm written here as
 *      plainly as possible (weights computed per output sample in double,
 *      22-bit fixed point, full horizontal pass into an 8-bit image, then
 *      the vertical pass), over many sizes: up, down, 1 pixel, 4000x20...;
 *   2. Pillow's own output (tests/data/image/resize/, made by Pillow).
 *
 * usage: test-image-resize TESTS_DATA_IMAGE_DIR */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/check.h"
#include "../common/util.h"
#include "image.h"
#include "npy.h"

/* ---- the reference ------------------------------------------------------ */

static double ref_cubic(double x)
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

/* Fixed-point weights of output sample @o of an in -> out axis. */
static int ref_weights(int in, int out, int o, int *first, int32_t *w)
{
    double scale = (double)in / out;
    double fscale = scale > 1.0 ? scale : 1.0;
    double support = 2.0 * fscale;
    double center = (o + 0.5) * scale;
    static double d[20000];
    double sum = 0, ss = 1.0 / fscale;
    int lo = (int)(center - support + 0.5), hi = (int)(center + support + 0.5), n;

    if (lo < 0)
        lo = 0;
    if (hi > in)
        hi = in;
    n = hi - lo;
    for (int i = 0; i < n; i++) {
        d[i] = ref_cubic((i + lo - center + 0.5) * ss);
        sum += d[i];
    }
    for (int i = 0; i < n; i++) {
        double v = sum != 0.0 ? d[i] / sum : d[i];

        w[i] = (int32_t)(v < 0 ? v * 4194304.0 - 0.5 : v * 4194304.0 + 0.5);
    }
    *first = lo;
    return n;
}

static uint8_t ref_clip(int64_t acc)
{
    int64_t v = acc >> 22;

    return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

static uint8_t *ref_resize(const uint8_t *src, int sw, int sh, int dw, int dh)
{
    uint8_t *mid = malloc((size_t)dw * sh * 3), *out = malloc((size_t)dw * dh * 3);
    static int32_t w[20000];
    int first, n;

    if (sw == dw) {
        memcpy(mid, src, (size_t)sw * sh * 3);
    } else {
        for (int x = 0; x < dw; x++) {
            n = ref_weights(sw, dw, x, &first, w);
            for (int y = 0; y < sh; y++)
                for (int c = 0; c < 3; c++) {
                    int64_t acc = 1 << 21;

                    for (int i = 0; i < n; i++)
                        acc += (int64_t)src[((size_t)y * sw + first + i) * 3 + c] * w[i];
                    mid[((size_t)y * dw + x) * 3 + c] = ref_clip(acc);
                }
        }
    }
    if (sh == dh) {
        memcpy(out, mid, (size_t)dw * dh * 3);
    } else {
        for (int y = 0; y < dh; y++) {
            n = ref_weights(sh, dh, y, &first, w);
            for (int x = 0; x < dw; x++)
                for (int c = 0; c < 3; c++) {
                    int64_t acc = 1 << 21;

                    for (int i = 0; i < n; i++)
                        acc += (int64_t)mid[((size_t)(first + i) * dw + x) * 3 + c] * w[i];
                    out[((size_t)y * dw + x) * 3 + c] = ref_clip(acc);
                }
        }
    }
    free(mid);
    return out;
}

/* ---- images ------------------------------------------------------------- */

static uint32_t seed = 12345;

static uint8_t *random_image(int w, int h, int kind)
{
    uint8_t *p = malloc((size_t)w * h * 3);

    for (size_t i = 0; i < (size_t)w * h * 3; i++) {
        seed = seed * 1103515245u + 12345u;
        if (kind == 0)
            p[i] = (uint8_t)(seed >> 24);                          /* noise */
        else if (kind == 1)
            p[i] = ((i / 3 % (size_t)w + i / 3 / (size_t)w) & 1) ? 255 : 0;  /* checker: overshoot */
        else
            p[i] = (uint8_t)((i / 3 % (size_t)w) * 255 / (size_t)(w > 1 ? w - 1 : 1)); /* ramp */
    }
    return p;
}

static void check_size(int sw, int sh, int dw, int dh, int kind)
{
    uint8_t *src = random_image(sw, sh, kind), *ref = ref_resize(src, sw, sh, dw, dh);
    /* written into a larger canvas: the margins must stay untouched */
    const int pad = 3;
    size_t stride = (size_t)(dw + 2 * pad) * 3;
    uint8_t *canvas = malloc(stride * (dh + 2));
    struct vl2_err err = { 0 };
    size_t n_diff = 0, n_margin = 0;
    int r;

    memset(canvas, 0xa5, stride * (dh + 2));
    r = vl2_image_resize(src, sw, sh, canvas + stride + pad * 3, dw, dh, stride, &err);
    CHECK_MSG(r == 0, "%dx%d -> %dx%d: %s", sw, sh, dw, dh, err.msg);
    for (int y = 0; y < dh + 2; y++)
        for (size_t x = 0; x < stride; x++) {
            uint8_t v = canvas[y * stride + x];
            int inside = y >= 1 && y <= dh && x >= (size_t)pad * 3 && x < (size_t)(pad + dw) * 3;

            if (!inside)
                n_margin += v != 0xa5;
            else if (v != ref[(size_t)(y - 1) * dw * 3 + x - pad * 3])
                n_diff++;
        }
    CHECK_MSG(n_diff == 0, "%dx%d -> %dx%d (kind %d): %zu values differ from the reference", sw, sh,
          dw, dh, kind, n_diff);
    CHECK_MSG(n_margin == 0, "%dx%d -> %dx%d: %zu bytes written outside", sw, sh, dw, dh, n_margin);
    free(src);
    free(ref);
    free(canvas);
}

static void test_reference(void)
{
    static const int sizes[][4] = {
        { 1, 1, 1, 1 },       { 1, 1, 384, 384 },   { 1, 1, 7, 1 },       { 5, 1, 1, 1 },
        { 1, 5, 1, 1 },       { 2, 2, 3, 3 },       { 3, 7, 384, 384 },   { 37, 23, 384, 239 },
        { 384, 384, 384, 384 }, { 400, 400, 384, 384 }, { 383, 385, 381, 384 },
        { 4000, 20, 384, 2 }, { 20, 4000, 2, 384 }, { 4000, 20, 3456, 17 }, { 4000, 3, 1, 1 },
        { 3, 4000, 1, 1 },    { 1000, 300, 384, 115 }, { 1000, 300, 1152, 346 },
        { 724, 1086, 256, 384 }, { 724, 1086, 768, 1152 }, { 100, 100, 100, 37 },
        { 100, 100, 37, 100 }, { 17, 9, 16, 8 },    { 9, 17, 10, 18 },    { 640, 480, 768, 576 },
        { 123, 457, 11, 999 }, { 999, 11, 457, 123 }, { 2, 2000, 1, 768 },
    };

    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++)
        for (int kind = 0; kind < 3; kind++)
            check_size(sizes[i][0], sizes[i][1], sizes[i][2], sizes[i][3], kind);
    /* random sizes, both directions */
    for (int i = 0; i < 150; i++) {
        int s[4];

        for (int j = 0; j < 4; j++) {
            seed = seed * 1103515245u + 12345u;
            s[j] = 1 + (int)((seed >> 16) % (j < 2 ? 300u : 420u));
        }
        check_size(s[0], s[1], s[2], s[3], i % 3);
    }
}

/* Same pattern as make_test_data.py's pattern(). */
static uint8_t *pattern(int w, int h)
{
    uint8_t *p = malloc((size_t)w * h * 3);

    for (int64_t y = 0; y < h; y++)
        for (int64_t x = 0; x < w; x++)
            for (int64_t c = 0; c < 3; c++)
                p[((size_t)y * w + x) * 3 + c] =
                    (uint8_t)((x * 255 / (w > 1 ? w - 1 : 1) + c * 85 + ((x / 5 + y / 3) % 2) * 120 +
                               (x * y * (c + 1)) % 37) % 256);
    return p;
}

static void test_pillow(const char *dir)
{
    static const int sizes[][2] = { { 1, 1 },   { 41, 1 },  { 1, 27 }, { 41, 13 },
                                    { 20, 27 }, { 7, 5 },   { 82, 54 }, { 100, 9 },
                                    { 3, 90 },  { 384, 253 }, { 13, 40 } };
    char path[1024];
    struct vl2_npy src = { 0 }, e;
    struct vl2_err err = { 0 };
    uint8_t *pat = pattern(41, 27);
    int r;

    snprintf(path, sizeof(path), "%s/resize/src.npy", dir);
    r = vl2_npy_read(&src, path, &err);
    CHECK_MSG(r == 0, "%s", err.msg);
    if (r < 0)
        goto out;
    CHECK_MSG(src.count == 41 * 27 * 3 && !memcmp(src.data, pat, src.count),
          "pattern() equals the Python pattern");
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        int w = sizes[i][0], h = sizes[i][1];
        uint8_t *out = malloc((size_t)w * h * 3);
        size_t n_diff = 0;

        memset(&e, 0, sizeof(e));
        snprintf(path, sizeof(path), "%s/resize/%dx%d.npy", dir, w, h);
        r = vl2_npy_read(&e, path, &err);
        CHECK_MSG(r == 0, "%s", err.msg);
        if (r == 0 && e.count == (size_t)w * h * 3) {
            r = vl2_image_resize(src.data, 41, 27, out, w, h, (size_t)w * 3, &err);
            CHECK_MSG(r == 0, "%s", err.msg);
            for (size_t k = 0; k < e.count; k++)
                n_diff += out[k] != ((uint8_t *)e.data)[k];
            CHECK_MSG(n_diff == 0, "41x27 -> %dx%d: %zu values differ from Pillow", w, h, n_diff);
        } else {
            CHECK_MSG(0, "%s: wrong size", path);
        }
        vl2_npy_done(&e);
        free(out);
    }
out:
    vl2_npy_done(&src);
    free(pat);
}

static void test_errors(void)
{
    uint8_t px[3] = { 1, 2, 3 }, out[3];
    struct vl2_err err = { 0 };

    CHECK_MSG(vl2_image_resize(px, 1, 1, out, 0, 1, 3, &err) == VL2_EINVAL, "0 wide");
    CHECK_MSG(strstr(err.msg, "1x1 to 0x1") != NULL, "message: %s", err.msg);
    CHECK_MSG(vl2_image_resize(px, 1, 0, out, 1, 1, 3, &err) == VL2_EINVAL, "0 high source");
    CHECK_MSG(vl2_image_resize(px, 1, 1, out, 1, 1, 3, &err) == 0 && !memcmp(px, out, 3), "copy");
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s TESTS_DATA_IMAGE_DIR\n", argv[0]);
        return 2;
    }
    test_errors();
    test_pillow(argv[1]);
    test_reference();
    /* the portable (non-SIMD) code as well */
    setenv("VL2_IMAGE_SIMD", "0", 1);
    test_pillow(argv[1]);
    test_reference();
    return check_report("test-image-resize");
}

/* test-image-decode.c - decoders against Pillow's pixels, EXIF orientation,
 * limits, and malformed input (truncated, corrupt, lying headers, bombs,
 * other formats).
 *
 * Expected pixels are tests/data/image/decode/<file>.rgb.npy (and
 * .exif.npy), made by Pillow (make_test_data.py), never by vl2d.
 *
 * usage: test-image-decode TESTS_DATA_IMAGE_DIR */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../common/check.h"
#include "../common/util.h"
#include "image-impl.h"
#include "image.h"
#include "npy.h"

static const char *dir;

static const char *const pillow_files[] = {
    /* JPEG */
    "baseline420.jpg", "baseline444.jpg", "baseline422.jpg", "progressive.jpg", "gray.jpg",
    "gray_progressive.jpg", "cmyk_pil.jpg", "cmyk_im.jpg", "ycck.jpg", "sample411.jpg",
    "sample440.jpg", "rgb_colorspace.jpg",
    /* PNG */
    "rgb.png", "rgba8.png", "gray8.png", "gray_alpha8.png", "gray1.png", "gray2.png",
    "gray4.png", "palette8.png", "palette4.png", "palette1.png", "gray16.png", "rgb16.png",
    "rgba16.png", "gray_alpha16.png", "interlaced_rgb8.png", "interlaced_rgb16.png",
    "interlaced_palette.png",
    /* WebP */
    "lossy.webp", "lossless.webp", "lossy_alpha.webp", "lossless_alpha.webp", "animated.webp",
};

static unsigned char *load(const char *name, size_t *size)
{
    char path[1024];

    snprintf(path, sizeof(path), "%s/decode/%s", dir, name);
    return (unsigned char *)test_slurp(path, size);
}

/* Compare @img with the Pillow pixels in <name><suffix>. */
static void compare(const char *name, const char *suffix, const struct vl2_image *img)
{
    char path[1024];
    struct vl2_npy e = { 0 };
    struct vl2_err err = { 0 };
    size_t n_diff = 0;
    int r;

    snprintf(path, sizeof(path), "%s/decode/%s%s", dir, name, suffix);
    r = vl2_npy_read(&e, path, &err);
    CHECK_MSG(r == 0, "%s", err.msg);
    if (r < 0)
        return;
    CHECK_MSG(e.dtype == VL2_NPY_U8 && e.ndim == 3 && e.shape[2] == 3, "%s: npy layout", path);
    CHECK_MSG(e.shape[0] == img->height && e.shape[1] == img->width, "%s: %dx%d, Pillow %lldx%lld",
          name, img->width, img->height, (long long)e.shape[1], (long long)e.shape[0]);
    if (e.count == (size_t)img->width * img->height * 3) {
        for (size_t i = 0; i < e.count; i++)
            if (img->rgb[i] != ((uint8_t *)e.data)[i]) {
                if (!n_diff)
                    fprintf(stderr, "%s%s: first difference at pixel %zu channel %zu: %u vs %u\n",
                            name, suffix, i / 3, i % 3, img->rgb[i], ((uint8_t *)e.data)[i]);
                n_diff++;
            }
        CHECK_MSG(n_diff == 0, "%s%s: %zu values differ from Pillow", name, suffix, n_diff);
    }
    vl2_npy_done(&e);
}

static void test_pillow_parity(void)
{
    for (size_t i = 0; i < sizeof(pillow_files) / sizeof(pillow_files[0]); i++) {
        struct vl2_image img;
        struct vl2_err err = { 0 };
        size_t size;
        unsigned char *data = load(pillow_files[i], &size);
        int r;

        CHECK_MSG(data != NULL, "%s", pillow_files[i]);
        if (!data)
            continue;
        r = vl2_image_decode(&img, data, size, NULL, &err);
        CHECK_MSG(r == 0, "%s: %s", pillow_files[i], err.msg);
        if (r == 0) {
            int32_t w = 0, h = 0;

            compare(pillow_files[i], ".rgb.npy", &img);
            CHECK_MSG(vl2_image_probe(data, size, &w, &h, &err) == 0 && w == img.width &&
                      h == img.height,
                  "%s: probe %dx%d", pillow_files[i], w, h);
            vl2_image_done(&img);
        }
        free(data);
    }
}

static void test_exif(void)
{
    static const char *const files[] = {
        "exif1.jpg", "exif2.jpg", "exif3.jpg", "exif4.jpg", "exif5.jpg",
        "exif6.jpg", "exif7.jpg", "exif8.jpg", "exif6.png", "exif8.webp",
    };

    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        struct vl2_image_limits lim = vl2_image_default_limits();
        struct vl2_image img;
        struct vl2_err err = { 0 };
        size_t size;
        unsigned char *data = load(files[i], &size);
        int r;

        if (!data) {
            CHECK_MSG(0, "%s", files[i]);
            continue;
        }
        /* default: stored orientation, as the official code */
        r = vl2_image_decode(&img, data, size, &lim, &err);
        CHECK_MSG(r == 0, "%s: %s", files[i], err.msg);
        if (r == 0) {
            compare(files[i], ".rgb.npy", &img);
            vl2_image_done(&img);
        }
        lim.apply_exif = 1;
        r = vl2_image_decode(&img, data, size, &lim, &err);
        CHECK_MSG(r == 0, "%s: %s", files[i], err.msg);
        if (r == 0) {
            compare(files[i], ".exif.npy", &img);
            vl2_image_done(&img);
        }
        free(data);
    }
    /* the tag parser on its own */
    {
        static const uint8_t be[] = { 'M', 'M', 0, 42, 0, 0, 0, 8, 0, 1,
                                      0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, 6, 0, 0 };
        static const uint8_t le_long[] = { 'I', 'I', 42, 0, 8, 0, 0, 0, 1, 0,
                                           0x12, 0x01, 4, 0, 1, 0, 0, 0, 3, 0, 0, 0 };
        static const uint8_t bad_offset[] = { 'I', 'I', 42, 0, 0xff, 0xff, 0, 0, 1, 0 };
        static const uint8_t short_ifd[] = { 'I', 'I', 42, 0, 8, 0, 0, 0, 5, 0, 0x12, 0x01 };

        CHECK_MSG(vl2__image_exif_orientation(be, sizeof(be)) == 6, "big-endian SHORT");
        CHECK_MSG(vl2__image_exif_orientation(le_long, sizeof(le_long)) == 3, "LONG");
        CHECK_MSG(vl2__image_exif_orientation(bad_offset, sizeof(bad_offset)) == 0, "bad offset");
        CHECK_MSG(vl2__image_exif_orientation(short_ifd, sizeof(short_ifd)) == 0, "cut IFD");
        CHECK_MSG(vl2__image_exif_orientation(be, 7) == 0, "cut header");
    }
}

/* ---- malformed input ---------------------------------------------------- */

static uint32_t crc32_of(const uint8_t *p, size_t n)
{
    uint32_t c = 0xffffffffu;

    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1)));
    }
    return c ^ 0xffffffffu;
}

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* Signature + IHDR (with a correct CRC) + an empty IDAT + IEND. */
static size_t png_header(uint8_t *out, uint32_t w, uint32_t h)
{
    static const uint8_t tail[] = { 0, 0, 0, 0, 'I', 'D', 'A', 'T', 0x35, 0xaf, 0x06, 0x1e,
                                    0, 0, 0, 0, 'I', 'E', 'N', 'D', 0xae, 0x42, 0x60, 0x82 };

    memcpy(out, "\x89PNG\r\n\x1a\n", 8);
    put32(out + 8, 13);
    memcpy(out + 12, "IHDR", 4);
    put32(out + 16, w);
    put32(out + 20, h);
    memcpy(out + 24, "\x08\x02\x00\x00\x00", 5);   /* 8-bit RGB */
    put32(out + 29, crc32_of(out + 12, 17));
    memcpy(out + 33, tail, sizeof(tail));
    return 33 + sizeof(tail);
}

static double now_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static int decode_code(const void *data, size_t size, const struct vl2_image_limits *lim,
                       struct vl2_err *err)
{
    struct vl2_image img;
    int r;

    vl2_err_clear(err);
    r = vl2_image_decode(&img, data, size, lim, err);
    if (r == 0)
        vl2_image_done(&img);
    else
        CHECK_MSG(img.rgb == NULL && img.width == 0, "failed decode leaves the image empty");
    return r;
}

static void test_bombs_and_limits(void)
{
    struct vl2_image_limits lim = vl2_image_default_limits();
    struct vl2_err err;
    uint8_t png[128];
    size_t n, size;
    double t0, t;
    int r;
    int32_t w, h;
    unsigned char *data;

    CHECK_MSG(lim.max_pixels == 50000000 && lim.max_bytes == 64u << 20 && lim.apply_exif == 0,
          "default limits");

    /* 100000 x 100000 PNG: refused from the header, fast */
    n = png_header(png, 100000, 100000);
    t0 = now_us();
    r = decode_code(png, n, NULL, &err);
    t = now_us() - t0;
    CHECK_MSG(r == VL2_ELIMIT, "huge PNG: %d %s", r, err.msg);
    CHECK_MSG(strstr(err.msg, "100000x100000") != NULL, "message names the size: %s", err.msg);
    CHECK_MSG(t < 5000, "huge PNG refused in %.0f us", t);
    printf("100000x100000 PNG refused in %.1f us: %s\n", t, err.msg);
    CHECK_MSG(vl2_image_probe(png, n, &w, &h, &err) == 0 && w == 100000 && h == 100000,
          "probe of the huge PNG");

    /* zero width, absurd width */
    n = png_header(png, 0, 10);
    r = decode_code(png, n, NULL, &err);
    CHECK_MSG(r == VL2_EFORMAT, "zero-width PNG: %d %s", r, err.msg);
    n = png_header(png, 0x80000000u, 1);
    r = decode_code(png, n, NULL, &err);
    CHECK_MSG(r == VL2_EFORMAT || r == VL2_ELIMIT, "2^31-wide PNG: %d %s", r, err.msg);

    /* header within limits, no pixel data */
    n = png_header(png, 64, 64);
    r = decode_code(png, n, NULL, &err);
    CHECK_MSG(r == VL2_EFORMAT, "PNG without pixel data: %d %s", r, err.msg);

    /* compressed size and pixel limits */
    data = load("rgb.png", &size);
    if (data) {
        lim.max_bytes = size - 1;
        r = decode_code(data, size, &lim, &err);
        CHECK_MSG(r == VL2_ELIMIT, "max_bytes: %d %s", r, err.msg);
        lim.max_bytes = size;
        lim.max_pixels = 37 * 29 - 1;
        r = decode_code(data, size, &lim, &err);
        CHECK_MSG(r == VL2_ELIMIT, "max_pixels: %d %s", r, err.msg);
        lim.max_pixels = 37 * 29;
        r = decode_code(data, size, &lim, &err);
        CHECK_MSG(r == 0, "exactly at the limits: %s", err.msg);
        free(data);
    }

    /* JPEG frame header patched: 65535 x 65535 (limit), 0 high (zero-sized),
     * 1000 x 1000 with the data of 37 x 29 (lying: runs out of data) */
    data = load("baseline420.jpg", &size);
    if (data) {
        size_t sof = 2;

        while (sof + 4 < size && !(data[sof] == 0xff && data[sof + 1] == 0xc0))
            sof += 2 + ((size_t)data[sof + 2] << 8 | data[sof + 3]);
        CHECK_MSG(sof + 9 < size, "SOF0 found");
        if (sof + 9 < size) {
            uint8_t *p = data + sof + 5;   /* height, then width (big-endian) */

            memcpy(p, "\xff\xff\xff\xff", 4);
            r = decode_code(data, size, NULL, &err);
            CHECK_MSG(r == VL2_ELIMIT, "65535x65535 JPEG: %d %s", r, err.msg);
            memcpy(p, "\x00\x00\x00\x25", 4);
            r = decode_code(data, size, NULL, &err);
            CHECK_MSG(r == VL2_EFORMAT, "zero-height JPEG: %d %s", r, err.msg);
            memcpy(p, "\x03\xe8\x03\xe8", 4);
            r = decode_code(data, size, NULL, &err);
            CHECK_MSG(r == VL2_EFORMAT, "lying JPEG header: %d %s", r, err.msg);
        }
        free(data);
    }

    /* PNG IHDR patched to 1000 x 1000 (CRC fixed): not enough pixel data */
    data = load("rgb.png", &size);
    if (data) {
        put32(data + 16, 1000);
        put32(data + 20, 1000);
        put32(data + 29, crc32_of(data + 12, 17));
        r = decode_code(data, size, NULL, &err);
        CHECK_MSG(r == VL2_EFORMAT, "lying PNG header: %d %s", r, err.msg);
        free(data);
    }

    /* animated WebP whose canvas claims 20000 x 20000 */
    data = load("animated.webp", &size);
    if (data) {
        CHECK_MSG(size > 30 && !memcmp(data + 12, "VP8X", 4), "animated.webp has VP8X");
        if (size > 30) {
            memcpy(data + 24, "\x1f\x4e\x00\x1f\x4e\x00", 6);
            r = decode_code(data, size, NULL, &err);
            CHECK_MSG(r == VL2_ELIMIT, "huge WebP canvas: %d %s", r, err.msg);
        }
        free(data);
    }
}

static void test_other_formats(void)
{
    static const struct {
        const char *data;
        size_t size;
        const char *name;
    } cases[] = {
        { "GIF89a\x01\x00\x01\x00\x00\x00\x00", 13, "GIF" },
        { "BM\x36\x00\x00\x00\x00\x00\x00\x00\x36\x00\x00\x00", 14, "BMP" },
        { "II*\0\x08\0\0\0", 8, "TIFF" },
        { "\0\0\0\x1c" "ftypavif\0\0\0\0", 16, "AVIF" },
        { "\0\0\0\x18" "ftypheic\0\0\0\0", 16, "HEIF" },
        { "%PDF-1.4\n", 9, "PDF" },
        { "P6\n1 1\n255\n\0\0\0", 14, "PNM" },
        { "RIFF\x10\0\0\0WAVEfmt ", 16, "RIFF (not WebP)" },
        { "hello, world", 12, "unknown (first bytes 68 65 6c 6c 6f 2c 20 77)" },
        { "\x89PN", 3, "truncated PNG signature" },
    };
    struct vl2_err err;
    int r;

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        r = decode_code(cases[i].data, cases[i].size, NULL, &err);
        CHECK_MSG(r == VL2_EUNSUPPORTED, "%s: %d", cases[i].name, r);
        CHECK_MSG(strstr(err.msg, cases[i].name) != NULL, "'%s' not named in: %s", cases[i].name,
              err.msg);
    }
    r = decode_code("", 0, NULL, &err);
    CHECK_MSG(r == VL2_EFORMAT && strstr(err.msg, "empty"), "empty input: %d %s", r, err.msg);
    r = decode_code(NULL, 0, NULL, &err);
    CHECK_MSG(r == VL2_EFORMAT, "NULL input: %d", r);
    /* signatures alone */
    r = decode_code("\xff\xd8\xff", 3, NULL, &err);
    CHECK_MSG(r == VL2_EFORMAT, "JPEG signature only: %d %s", r, err.msg);
    r = decode_code("\x89PNG\r\n\x1a\n", 8, NULL, &err);
    CHECK_MSG(r == VL2_EFORMAT, "PNG signature only: %d %s", r, err.msg);
    r = decode_code("RIFF\x04\0\0\0WEBP", 12, NULL, &err);
    CHECK_MSG(r == VL2_EFORMAT, "WebP signature only: %d %s", r, err.msg);
    printf("example messages: %s\n", err.msg);
}

/* Every prefix (in steps) of every test file: an error for the first half,
 * never a crash; flipped bytes: never a crash. */
static void test_truncated_and_corrupt(void)
{
    uint32_t seed = 1;

    for (size_t i = 0; i < sizeof(pillow_files) / sizeof(pillow_files[0]); i++) {
        struct vl2_err err;
        size_t size, step, n_err = 0, n_half = 0;
        unsigned char *data = load(pillow_files[i], &size), *copy;

        if (!data)
            continue;
        step = size / 97 + 1;
        for (size_t n = 0; n < size; n += step) {
            /* a private copy of exactly n bytes: overreads hit ASan */
            copy = malloc(n ? n : 1);
            memcpy(copy, data, n);
            if (decode_code(copy, n, NULL, &err) < 0) {
                n_err++;
                CHECK_MSG(err.msg[0] != '\0', "%s cut at %zu: no message", pillow_files[i], n);
            } else if (n <= size / 2) {
                n_half++;
            }
            free(copy);
        }
        CHECK_MSG(n_half == 0, "%s: %zu prefixes up to half the file decoded without error",
              pillow_files[i], n_half);
        copy = malloc(size);
        for (int k = 0; k < 60; k++) {
            memcpy(copy, data, size);
            for (int j = 0; j < 1 + k % 4; j++) {
                seed = seed * 1103515245u + 12345u;
                size_t at = 16 + (seed >> 8) % (size > 16 ? size - 16 : 1);

                if (at < size)
                    copy[at] ^= (uint8_t)(1u << (seed >> 29));
            }
            (void)decode_code(copy, size, NULL, &err);
        }
        free(copy);
        free(data);
    }
}

static void test_truncated_messages(void)
{
    struct vl2_err err;
    size_t size;
    unsigned char *data;
    int r;
    static const char *const files[] = { "baseline420.jpg", "progressive.jpg", "rgb.png",
                                         "interlaced_rgb16.png", "lossy.webp", "lossless.webp",
                                         "animated.webp" };

    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        data = load(files[i], &size);
        if (!data)
            continue;
        r = decode_code(data, size * 2 / 3, NULL, &err);
        CHECK_MSG(r == VL2_EFORMAT, "%s cut to 2/3: %d %s", files[i], r, err.msg);
        printf("%s cut to 2/3: %s\n", files[i], err.msg);
        free(data);
    }
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s TESTS_DATA_IMAGE_DIR\n", argv[0]);
        return 2;
    }
    dir = argv[1];
    test_pillow_parity();
    test_exif();
    test_bombs_and_limits();
    test_other_formats();
    test_truncated_messages();
    test_truncated_and_corrupt();
    return check_report("test-image-decode");
}

/* bench-image.c - decode + tile speed on one thread.
 *
 * Makes a 12-megapixel JPEG (4000x3000, quality 90, 4:2:0, TurboJPEG) and a
 * 4-megapixel PNG (2304x1728, libspng) from a deterministic photo-like
 * pattern, then times decode, plan + tile (one image, cropping on, the 23
 * official candidates) and normalisation.  Prints one line per measurement:
 *     bench image <what> <WxH> min_ms=<..> median_ms=<..> runs=<n>
 * usage: bench-image [RUNS] */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <spng.h>
#include <turbojpeg.h>

#include "image.h"

static const int cands[][2] = {
    { 384, 384 },   { 384, 768 },   { 768, 384 },   { 384, 1152 }, { 1152, 384 },
    { 384, 1536 },  { 1536, 384 },  { 768, 768 },   { 384, 1920 }, { 1920, 384 },
    { 384, 2304 },  { 2304, 384 },  { 768, 1152 },  { 1152, 768 }, { 384, 2688 },
    { 2688, 384 },  { 384, 3072 },  { 3072, 384 },  { 768, 1536 }, { 1536, 768 },
    { 384, 3456 },  { 3456, 384 },  { 1152, 1152 },
};

static double now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return x < y ? -1 : x > y;
}

static uint8_t *pattern(int w, int h)
{
    uint8_t *p = malloc((size_t)w * h * 3);
    uint32_t s = 12345;

    if (!p)
        return NULL;
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            for (int c = 0; c < 3; c++) {
                int v = (x * 200 / w + y * 150 / h + c * 40 + ((x / 97 + y / 61) % 3) * 30);

                s = s * 1103515245u + 12345u;
                v += (int)(s >> 28) - 8;   /* mild noise */
                p[((size_t)y * w + x) * 3 + c] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
            }
    return p;
}

static unsigned char *make_jpeg(int w, int h, unsigned long *ret_size)
{
    uint8_t *p = pattern(w, h);
    unsigned char *jpeg = NULL;
    tjhandle tj = tjInitCompress();

    if (!p || !tj || tjCompress2(tj, p, w, 0, h, TJPF_RGB, &jpeg, ret_size, TJSAMP_420, 90,
                                 0) < 0) {
        fprintf(stderr, "bench-image: cannot make the JPEG\n");
        exit(1);
    }
    tjDestroy(tj);
    free(p);
    return jpeg;
}

static void *make_png(int w, int h, size_t *ret_size)
{
    uint8_t *p = pattern(w, h);
    spng_ctx *ctx = spng_ctx_new(SPNG_CTX_ENCODER);
    struct spng_ihdr ihdr = { .width = (uint32_t)w, .height = (uint32_t)h, .bit_depth = 8,
                              .color_type = SPNG_COLOR_TYPE_TRUECOLOR };
    void *png;
    int e;

    if (!p || !ctx) {
        fprintf(stderr, "bench-image: out of memory\n");
        exit(1);
    }
    spng_set_option(ctx, SPNG_ENCODE_TO_BUFFER, 1);
    spng_set_ihdr(ctx, &ihdr);
    e = spng_encode_image(ctx, p, (size_t)w * h * 3, SPNG_FMT_PNG, SPNG_ENCODE_FINALIZE);
    png = e ? NULL : spng_get_png_buffer(ctx, ret_size, &e);
    if (!png) {
        fprintf(stderr, "bench-image: cannot make the PNG: %s\n", spng_strerror(e));
        exit(1);
    }
    spng_ctx_free(ctx);
    free(p);
    return png;
}

static void report(const char *what, int w, int h, double *t, int runs)
{
    qsort(t, (size_t)runs, sizeof(*t), cmp_double);
    printf("bench image %s %dx%d min_ms=%.1f median_ms=%.1f runs=%d\n", what, w, h, t[0],
           t[runs / 2], runs);
}

static void bench(const char *name, const void *data, size_t size, int runs)
{
    const float mean[3] = { 0.5f, 0.5f, 0.5f }, std[3] = { 0.5f, 0.5f, 0.5f };
    double *td = calloc((size_t)runs, sizeof(double)), *tt = calloc((size_t)runs, sizeof(double));
    double *tn = calloc((size_t)runs, sizeof(double)), *ta = calloc((size_t)runs, sizeof(double));
    struct vl2_err err = { 0 };
    struct vl2_tiling t = { 0 };
    uint8_t *tiles = NULL;
    float *f = NULL;
    int w = 0, h = 0;
    char label[64];

    for (int i = 0; i < runs; i++) {
        struct vl2_image img;
        double t0 = now_ms(), t1, t2, t3;

        if (vl2_image_decode(&img, data, size, NULL, &err) < 0) {
            fprintf(stderr, "bench-image: %s\n", err.msg);
            exit(1);
        }
        t1 = now_ms();
        vl2_image_plan(&t, img.width, img.height, cands, 23, 1, 384, 14, 2);
        if (!tiles) {
            tiles = malloc((size_t)t.n_tiles * 3 * 384 * 384);
            f = malloc((size_t)t.n_tiles * 3 * 384 * 384 * sizeof(float));
        }
        if (!tiles || !f || vl2_image_tile(&img, &t, 384, tiles, &err) < 0) {
            fprintf(stderr, "bench-image: tile: %s\n", err.msg);
            exit(1);
        }
        t2 = now_ms();
        vl2_image_normalize(f, tiles, (size_t)t.n_tiles * 3 * 384 * 384, 384 * 384, mean, std,
                            1);
        t3 = now_ms();
        w = img.width;
        h = img.height;
        vl2_image_done(&img);
        td[i] = t1 - t0;
        tt[i] = t2 - t1;
        tn[i] = t3 - t2;
        ta[i] = t2 - t0;
    }
    snprintf(label, sizeof(label), "%s-decode", name);
    report(label, w, h, td, runs);
    snprintf(label, sizeof(label), "%s-tile(%dx%d,%dtiles)", name, t.tiles_w, t.tiles_h,
             t.n_tiles);
    report(label, w, h, tt, runs);
    snprintf(label, sizeof(label), "%s-normalize", name);
    report(label, w, h, tn, runs);
    snprintf(label, sizeof(label), "%s-decode+tile", name);
    report(label, w, h, ta, runs);
    free(td);
    free(tt);
    free(tn);
    free(ta);
    free(tiles);
    free(f);
}

int main(int argc, char **argv)
{
    int runs = argc > 1 ? atoi(argv[1]) : 7;
    unsigned long jpeg_size;
    unsigned char *jpeg;
    size_t png_size;
    void *png;

    if (runs < 1)
        runs = 1;
    jpeg = make_jpeg(4000, 3000, &jpeg_size);
    png = make_png(2304, 1728, &png_size);
    printf("bench image inputs jpeg=%lu bytes png=%zu bytes\n", jpeg_size, png_size);
    bench("jpeg12mp", jpeg, jpeg_size, runs);
    bench("png4mp", png, png_size, runs);
    tjFree(jpeg);
    free(png);
    return 0;
}

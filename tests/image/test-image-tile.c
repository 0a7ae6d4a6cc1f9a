/* test-image-tile.c - tile grid, pad geometry, tiles and normalisation.
 *
 * Expected values: the token table of spec 6.2, hand-worked Python round()
 * cases, and tests/data/image/pipeline.txt (hashes of the tiles that Pillow
 * + the official processor logic make of pattern images of many shapes,
 * with one image and with three).
 *
 * usage: test-image-tile TESTS_DATA_IMAGE_DIR */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/check.h"
#include "../common/util.h"
#include "image.h"

static const int cands[][2] = {
    { 384, 384 },   { 384, 768 },   { 768, 384 },   { 384, 1152 }, { 1152, 384 },
    { 384, 1536 },  { 1536, 384 },  { 768, 768 },   { 384, 1920 }, { 1920, 384 },
    { 384, 2304 },  { 2304, 384 },  { 768, 1152 },  { 1152, 768 }, { 384, 2688 },
    { 2688, 384 },  { 384, 3072 },  { 3072, 384 },  { 768, 1536 }, { 1536, 768 },
    { 384, 3456 },  { 3456, 384 },  { 1152, 1152 },
};
#define N_CANDS ((int)(sizeof(cands) / sizeof(cands[0])))

/* spec 6.2: image tokens for every candidate (same order) */
static const int spec_tokens[N_CANDS] = {
    421, 631, 617, 841, 813, 1051, 1009, 1023, 1261, 1205, 1471, 1401,
    1429, 1415, 1681, 1597, 1891, 1793, 1835, 1807, 2101, 1989, 2017,
};

static void test_plan(void)
{
    struct vl2_tiling t;

    /* an image of exactly a candidate's size picks that candidate */
    for (int i = 0; i < N_CANDS; i++) {
        vl2_image_plan(&t, cands[i][0], cands[i][1], cands, N_CANDS, 1, 384, 14, 2);
        CHECK_MSG(t.best_w == cands[i][0] && t.best_h == cands[i][1], "%dx%d picked %dx%d",
              cands[i][0], cands[i][1], t.best_w, t.best_h);
        CHECK_MSG(t.tiles_w == cands[i][0] / 384 && t.tiles_h == cands[i][1] / 384 &&
                  t.n_tiles == 1 + t.tiles_w * t.tiles_h,
              "%dx%d grid", cands[i][0], cands[i][1]);
        CHECK_MSG(t.n_tokens == spec_tokens[i], "%dx%d: %d tokens, spec %d", cands[i][0],
              cands[i][1], t.n_tokens, spec_tokens[i]);
    }
    /* cropping off (3+ images): one local tile */
    vl2_image_plan(&t, 4000, 3000, cands, N_CANDS, 0, 384, 14, 2);
    CHECK_MSG(t.best_w == 384 && t.best_h == 384 && t.n_tiles == 2 && t.n_tokens == 421,
          "no cropping: %dx%d %d tiles %d tokens", t.best_w, t.best_h, t.n_tiles, t.n_tokens);
    /* no candidates */
    vl2_image_plan(&t, 4000, 3000, cands, 0, 1, 384, 14, 2);
    CHECK_MSG(t.best_w == 384 && t.n_tiles == 2, "no candidates");
    /* ties: the first candidate wins.  A 10x10 image fits every candidate
     * with effective area 100; the least waste is 384x384 (first). */
    vl2_image_plan(&t, 10, 10, cands, N_CANDS, 1, 384, 14, 2);
    CHECK_MSG(t.best_w == 384 && t.best_h == 384, "tiny image: %dx%d", t.best_w, t.best_h);
    {
        static const int tie[][2] = { { 768, 384 }, { 384, 768 }, { 768, 384 } };

        /* square 400x400 in 768x384 and 384x768: same effective area and
         * waste: the first listed wins */
        vl2_image_plan(&t, 400, 400, tie, 3, 1, 384, 14, 2);
        CHECK_MSG(t.best_w == 768 && t.best_h == 384, "tie: %dx%d", t.best_w, t.best_h);
        vl2_image_plan(&t, 400, 400, tie + 1, 2, 1, 384, 14, 2);
        CHECK_MSG(t.best_w == 384 && t.best_h == 768, "tie reversed: %dx%d", t.best_w, t.best_h);
    }
    /* the spec 13 worked example: 1000x600 */
    vl2_image_plan(&t, 1000, 600, cands, N_CANDS, 1, 384, 14, 2);
    CHECK_MSG(t.best_w == 1152 && t.best_h == 768 && t.tiles_w == 3 && t.tiles_h == 2 &&
              t.n_tiles == 7 && t.n_tokens == 1415,
          "spec 13: 1000x600 -> %dx%d, %d tokens", t.best_w, t.best_h, t.n_tokens);
    CHECK_MSG(vl2_image_n_tokens(3, 2, 384, 14, 2) == 1415, "tokens 3x2");
    CHECK_MSG(vl2_image_n_tokens(1, 1, 0, 14, 2) == 0, "bad sizes give 0");
}

static void test_pad_geometry(void)
{
    int32_t rw, rh, x, y;

    /* 102x300 into 384: width round(130.56) = 131, x = round(126.5) = 126
     * (half to even; floor(x + 0.5) would give 127) */
    vl2_image_pad_geometry(102, 300, 384, 384, &rw, &rh, &x, &y);
    CHECK_MSG(rw == 131 && rh == 384 && x == 126 && y == 0, "102x300: %d %d %d %d", rw, rh, x, y);
    /* 5x768: width round(2.5) = 2 */
    vl2_image_pad_geometry(5, 768, 384, 384, &rw, &rh, &x, &y);
    CHECK_MSG(rw == 2 && rh == 384 && x == 191, "5x768: %d %d %d", rw, rh, x);
    /* 1000x300: height round(115.2) = 115, y = round(134.5) = 134 */
    vl2_image_pad_geometry(1000, 300, 384, 384, &rw, &rh, &x, &y);
    CHECK_MSG(rw == 384 && rh == 115 && x == 0 && y == 134, "1000x300: %d %d %d %d", rw, rh, x, y);
    /* spec 13: global 384x230 at y 77, local 1152x691 at y = round(38.5) = 38 */
    vl2_image_pad_geometry(1000, 600, 384, 384, &rw, &rh, &x, &y);
    CHECK_MSG(rw == 384 && rh == 230 && x == 0 && y == 77, "1000x600 global: %d %d %d", rw, rh, y);
    vl2_image_pad_geometry(1000, 600, 1152, 768, &rw, &rh, &x, &y);
    CHECK_MSG(rw == 1152 && rh == 691 && x == 0 && y == 38, "1000x600 local: %d %d %d", rw, rh, y);
    /* same ratio: plain resize */
    vl2_image_pad_geometry(200, 100, 768, 384, &rw, &rh, &x, &y);
    CHECK_MSG(rw == 768 && rh == 384 && x == 0 && y == 0, "same ratio");
    /* 1x768: round(0.5) = 0 */
    vl2_image_pad_geometry(1, 768, 384, 384, &rw, &rh, &x, &y);
    CHECK_MSG(rw == 0, "1x768: width %d", rw);
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

static uint64_t fnv1a64(const uint8_t *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;

    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

static void test_pipeline(const char *dir)
{
    char path[1024], line[256];
    FILE *f;
    int n_lines = 0;

    snprintf(path, sizeof(path), "%s/pipeline.txt", dir);
    f = fopen(path, "r");
    CHECK_MSG(f != NULL, "%s", path);
    if (!f)
        return;
    while (fgets(line, sizeof(line), f)) {
        int w, h, n_images, bw = 0, bh = 0, r;
        char hash[32] = "";
        struct vl2_image img;
        struct vl2_tiling t;
        struct vl2_err err = { 0 };
        uint8_t *tiles;
        unsigned long long want;

        if (line[0] == '#')
            continue;
        r = sscanf(line, "%d %d %d %d %d %31s", &w, &h, &n_images, &bw, &bh, hash);
        if (r < 4) {   /* "w h n error": the official code fails too */
            CHECK_MSG(sscanf(line, "%d %d %d %31s", &w, &h, &n_images, hash) == 4 &&
                      !strcmp(hash, "error"),
                  "bad line: %s", line);
        }
        n_lines++;
        img.width = w;
        img.height = h;
        img.rgb = pattern(w, h);
        vl2_image_plan(&t, w, h, cands, N_CANDS, n_images <= 2, 384, 14, 2);
        tiles = malloc((size_t)t.n_tiles * 3 * 384 * 384);
        r = vl2_image_tile(&img, &t, 384, tiles, &err);
        if (!strcmp(hash, "error")) {
            CHECK_MSG(r == VL2_EUNSUPPORTED, "%dx%d: %d", w, h, r);
            printf("%dx%d: %s\n", w, h, err.msg);
        } else {
            want = strtoull(hash, NULL, 16);
            CHECK_MSG(t.best_w == bw && t.best_h == bh, "%dx%d (%d images): best %dx%d, Python %dx%d",
                  w, h, n_images, t.best_w, t.best_h, bw, bh);
            CHECK_MSG(r == 0, "%dx%d: %s", w, h, err.msg);
            if (r == 0)
                CHECK_MSG(fnv1a64(tiles, (size_t)t.n_tiles * 3 * 384 * 384) == want,
                      "%dx%d (%d images): tiles differ from Pillow's", w, h, n_images);
        }
        free(tiles);
        vl2_image_done(&img);
    }
    fclose(f);
    CHECK_MSG(n_lines >= 30, "%d pipeline cases", n_lines);
}

static void test_tile_errors(void)
{
    uint8_t px[3] = { 1, 2, 3 }, *out = malloc(3 * 384 * 384 * 2);
    struct vl2_image img = { 1, 1, px };
    struct vl2_tiling t = { 500, 384, 1, 1, 2, 421 };
    struct vl2_err err = { 0 };

    CHECK_MSG(vl2_image_tile(&img, &t, 384, out, &err) == VL2_EINVAL, "500 wide plan");
    t.best_w = 384;
    t.n_tiles = 3;
    CHECK_MSG(vl2_image_tile(&img, &t, 384, out, &err) == VL2_EINVAL, "inconsistent n_tiles");
    t.n_tiles = 2;
    img.rgb = NULL;
    CHECK_MSG(vl2_image_tile(&img, &t, 384, out, &err) == VL2_EINVAL, "no pixels");
    img.rgb = px;
    CHECK_MSG(vl2_image_tile(&img, &t, 384, out, &err) == 0, "1x1: %s", err.msg);
    /* a 1x1 image fills both tiles with its colour, and the two are equal */
    CHECK_MSG(out[0] == 1 && out[384 * 384] == 2 && out[2 * 384 * 384] == 3, "1x1 colour");
    CHECK_MSG(!memcmp(out, out + 3 * 384 * 384, 3 * 384 * 384), "local tile = global view");
    free(out);
}

static void test_normalize(void)
{
    const float mean[3] = { 0.48145466f, 0.4578275f, 0.40821073f };
    const float std[3] = { 0.26862954f, 0.26130258f, 0.27577711f };
    const size_t plane = 7, n = plane * 3 * 2 + 5;   /* two tiles and a bit */
    uint8_t in[256];
    float out[256];
    int bad = 0;

    for (size_t i = 0; i < n; i++)
        in[i] = (uint8_t)(i * 37 + 11);
    vl2_image_normalize(out, in, n, plane, mean, std, 1);
    for (size_t i = 0; i < n; i++) {
        size_t c = (i / plane) % 3;
        float v = (float)in[i] / 255.0f;

        v = (v - mean[c]) / std[c];
        bad += out[i] != v;
    }
    CHECK_MSG(bad == 0, "%d normalised values differ", bad);
    {
        const float h[3] = { 0.5f, 0.5f, 0.5f };
        uint8_t v127 = 127, v0 = 0, v255 = 255;
        float o;

        vl2_image_normalize(&o, &v127, 1, 1, h, h, 1);
        CHECK_MSG(fabsf(o - (-0.0039215686f)) < 1e-9f, "127 -> %g", o);
        vl2_image_normalize(&o, &v0, 1, 1, h, h, 1);
        CHECK_MSG(o == -1.0f, "0 -> %g", o);
        vl2_image_normalize(&o, &v255, 1, 1, h, h, 1);
        CHECK_MSG(o == 1.0f, "255 -> %g", o);
    }
    /* processor_config.normalize false: ToTensor only (v / 255), whatever
     * mean and std say */
    vl2_image_normalize(out, in, n, plane, mean, std, 0);
    bad = 0;
    for (size_t i = 0; i < n; i++)
        bad += out[i] != (float)in[i] / 255.0f;
    CHECK_MSG(bad == 0, "normalize false: %d values are not v / 255", bad);
    vl2_image_normalize(out, in, n, plane, NULL, NULL, 0);
    CHECK_MSG(out[0] == (float)in[0] / 255.0f && out[n - 1] == (float)in[n - 1] / 255.0f,
          "normalize false without mean and std: %g %g", out[0], out[n - 1]);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s TESTS_DATA_IMAGE_DIR\n", argv[0]);
        return 2;
    }
    test_plan();
    test_pad_geometry();
    test_tile_errors();
    test_normalize();
    test_pipeline(argv[1]);
    return check_report("test-image-tile");
}

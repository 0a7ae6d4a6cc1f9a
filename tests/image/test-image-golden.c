/* test-image-golden.c - golden parity of preprocessing: for every golden
 * case the decoded, tiled uint8 pixels equal pixels/<case>/pixel_values_u8.npy
 * exactly, the float32 tiles equal (v/255 - 0.5)/0.5 within 1e-6, and the
 * grid and image-token count equal input_ids.json of every preset.
 *
 * usage: test-image-golden TESTS_DATA_DIR IMAGES_DIR */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "../common/check.h"
#include "../common/util.h"
#include "image.h"
#include "npy.h"

static const char *const presets[] = { "micro-mha", "micro-mla", "micro-base" };

static const struct {
    const char *name, *file;
} cases[] = {
    { "a384", "g_a_384.jpg" },
    { "wide", "g_b_wide.png" },
    { "tall", "g_c_tall.jpg" },
};

static cJSON *load_json(const char *path)
{
    size_t n;
    unsigned char *s = (unsigned char *)test_slurp(path, &n);
    cJSON *j;

    if (!s)
        return NULL;
    j = cJSON_ParseWithLength((const char *)s, n);
    free(s);
    return j;
}

/* candidate_resolutions of processor_config.json; returns the count */
static int load_candidates(const char *path, int cands[][2], int cap)
{
    cJSON *j = load_json(path), *c, *e;
    int n = 0;

    if (!j)
        return 0;
    c = cJSON_GetObjectItemCaseSensitive(j, "candidate_resolutions");
    cJSON_ArrayForEach(e, c) {
        if (n < cap && cJSON_GetArraySize(e) == 2) {
            cands[n][0] = cJSON_GetArrayItem(e, 0)->valueint;
            cands[n][1] = cJSON_GetArrayItem(e, 1)->valueint;
            n++;
        }
    }
    cJSON_Delete(j);
    return n;
}

static void check_case(const char *data_dir, const char *images_dir, int ci)
{
    char path[1024];
    struct vl2_image img = { 0 };
    struct vl2_err err = { 0 };
    struct vl2_tiling t;
    struct vl2_npy gold = { 0 };
    int cands[64][2], n_cands;
    unsigned char *file;
    size_t size, n, n_diff = 0;
    uint8_t *tiles;
    float *f;
    double max_err = 0;
    const float mean[3] = { 0.5f, 0.5f, 0.5f }, std[3] = { 0.5f, 0.5f, 0.5f };
    int r;

    snprintf(path, sizeof(path), "%s/%s", images_dir, cases[ci].file);
    file = (unsigned char *)test_slurp(path, &size);
    CHECK_MSG(file != NULL, "%s", path);
    if (!file)
        return;
    r = vl2_image_decode(&img, file, size, NULL, &err);
    free(file);
    CHECK_MSG(r == 0, "%s: %s", cases[ci].name, err.msg);
    if (r < 0)
        return;
    snprintf(path, sizeof(path), "%s/golden/pixels/%s/pixel_values_u8.npy", data_dir,
             cases[ci].name);
    r = vl2_npy_read(&gold, path, &err);
    CHECK_MSG(r == 0, "%s", err.msg);
    if (r < 0)
        goto out_img;

    for (size_t p = 0; p < sizeof(presets) / sizeof(presets[0]); p++) {
        cJSON *j, *crop, *tok, *sizes;

        snprintf(path, sizeof(path), "%s/golden/%s/processor_config.json", data_dir,
                 presets[p]);
        n_cands = load_candidates(path, cands, 64);
        CHECK_MSG(n_cands == 23, "%s: %d candidates", path, n_cands);
        /* one image in the prompt: cropping on */
        vl2_image_plan(&t, img.width, img.height, (const int(*)[2])cands, n_cands, 1, 384, 14,
                       2);
        snprintf(path, sizeof(path), "%s/golden/%s/%s/input_ids.json", data_dir, presets[p],
                 cases[ci].name);
        j = load_json(path);
        CHECK_MSG(j != NULL, "%s", path);
        if (!j)
            continue;
        crop = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "images_spatial_crop"), 0);
        tok = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "num_image_tokens"), 0);
        sizes = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "image_sizes"), 0);
        CHECK_MSG(crop && cJSON_GetArrayItem(crop, 0)->valueint == t.tiles_w &&
                  cJSON_GetArrayItem(crop, 1)->valueint == t.tiles_h,
              "%s %s: grid %dx%d", presets[p], cases[ci].name, t.tiles_w, t.tiles_h);
        CHECK_MSG(tok && tok->valueint == t.n_tokens, "%s %s: %d tokens, golden %d", presets[p],
              cases[ci].name, t.n_tokens, tok ? tok->valueint : -1);
        CHECK_MSG(sizes && cJSON_GetArrayItem(sizes, 0)->valueint == img.width &&
                  cJSON_GetArrayItem(sizes, 1)->valueint == img.height,
              "%s: decoded size %dx%d", cases[ci].name, img.width, img.height);
        cJSON_Delete(j);
    }

    CHECK_MSG(gold.dtype == VL2_NPY_U8 && gold.ndim == 4 && gold.shape[0] == t.n_tiles &&
              gold.shape[1] == 3 && gold.shape[2] == 384 && gold.shape[3] == 384,
          "%s: golden shape [%lld,...] vs %d tiles", cases[ci].name, (long long)gold.shape[0],
          t.n_tiles);
    n = (size_t)t.n_tiles * 3 * 384 * 384;
    if (gold.count != n)
        goto out_gold;
    tiles = malloc(n);
    f = malloc(n * sizeof(*f));
    if (!tiles || !f) {
        CHECK_MSG(0, "out of memory");
        goto out_buf;
    }
    r = vl2_image_tile(&img, &t, 384, tiles, &err);
    CHECK_MSG(r == 0, "%s: %s", cases[ci].name, err.msg);
    for (size_t i = 0; i < n; i++)
        if (tiles[i] != ((uint8_t *)gold.data)[i]) {
            if (n_diff < 5)
                fprintf(stderr, "%s: tile %zu c %zu y %zu x %zu: %u, golden %u\n",
                        cases[ci].name, i / (3 * 384 * 384), i / (384 * 384) % 3,
                        i / 384 % 384, i % 384, tiles[i], ((uint8_t *)gold.data)[i]);
            n_diff++;
        }
    CHECK_MSG(n_diff == 0, "%s: %zu of %zu uint8 values differ", cases[ci].name, n_diff, n);

    vl2_image_normalize(f, tiles, n, 384 * 384, mean, std, 1);
    for (size_t i = 0; i < n; i++) {
        float ref = ((float)((uint8_t *)gold.data)[i] / 255.0f - 0.5f) / 0.5f;
        double d = fabs((double)f[i] - ref);

        if (d > max_err)
            max_err = d;
    }
    CHECK_MSG(max_err <= 1e-6, "%s: float tiles max |diff| %g", cases[ci].name, max_err);
    printf("%s: %dx%d -> best %dx%d, %d tiles, %d tokens, %zu values differ, float max %g\n",
           cases[ci].name, img.width, img.height, t.best_w, t.best_h, t.n_tiles, t.n_tokens,
           n_diff, max_err);
out_buf:
    free(tiles);
    free(f);
out_gold:
    vl2_npy_done(&gold);
out_img:
    vl2_image_done(&img);
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s TESTS_DATA_DIR IMAGES_DIR\n", argv[0]);
        return 2;
    }
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        check_case(argv[1], argv[2], (int)i);
    return check_report("test-image-golden");
}

/* test-image-preprocess.c - `vl2d preprocess` end to end: the dump of the
 * golden images equals the golden pixels (two images: tiled; three images:
 * global view + one identical local tile each), images.json carries the
 * golden grid and token counts, and bad input exits 1 with a message.
 *
 * usage: test-image-preprocess VL2D TESTS_DATA_DIR IMAGES_DIR SCRATCH_DIR */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "../common/check.h"
#include "../common/util.h"
#include "npy.h"

#define TILE ((size_t)3 * 384 * 384)

static const char *vl2d, *data_dir, *images_dir, *scratch;

static int run(const char *const *args)
{
    pid_t pid = fork();
    int st;

    if (pid < 0)
        return -1;
    if (pid == 0) {
        /* keep the test log short: stdout to /dev/null */
        if (!freopen("/dev/null", "w", stdout))
            _exit(127);
        execv(vl2d, (char *const *)args);
        _exit(127);
    }
    if (waitpid(pid, &st, 0) < 0 || !WIFEXITED(st))
        return -1;
    return WEXITSTATUS(st);
}

static int load_gold(const char *c, struct vl2_npy *a)
{
    char path[1024];
    struct vl2_err err = { 0 };

    snprintf(path, sizeof(path), "%s/golden/pixels/%s/pixel_values_u8.npy", data_dir, c);
    if (vl2_npy_read(a, path, &err) < 0) {
        CHECK_MSG(0, "%s", err.msg);
        return -1;
    }
    return 0;
}

static int load_dump(const char *out, const char *name, struct vl2_npy *a)
{
    char path[1024];
    struct vl2_err err = { 0 };

    snprintf(path, sizeof(path), "%s/%s", out, name);
    if (vl2_npy_read(a, path, &err) < 0) {
        CHECK_MSG(0, "%s", err.msg);
        return -1;
    }
    return 0;
}

static void test_two_images(void)
{
    char model[1024], wide[1024], tall[1024], out[1024], path[2048];
    struct vl2_npy u8 = { 0 }, f32 = { 0 }, gw = { 0 }, gt = { 0 };
    size_t n_bad = 0;
    double max_err = 0;

    snprintf(model, sizeof(model), "%s/golden/micro-mla", data_dir);
    snprintf(wide, sizeof(wide), "%s/g_b_wide.png", images_dir);
    snprintf(tall, sizeof(tall), "%s/g_c_tall.jpg", images_dir);
    snprintf(out, sizeof(out), "%s/preprocess-two", scratch);
    {
        const char *args[] = { vl2d, "preprocess", "--model", model, "--image", wide,
                               "--image", tall, "--dump", out, NULL };
        CHECK_MSG(run(args) == 0, "vl2d preprocess (two images) failed");
    }
    if (load_dump(out, "pixel_values_u8.npy", &u8) < 0 ||
        load_dump(out, "pixel_values.npy", &f32) < 0 || load_gold("wide", &gw) < 0 ||
        load_gold("tall", &gt) < 0)
        goto out;
    CHECK_MSG(u8.ndim == 4 && u8.shape[0] == 11 && u8.count == 11 * TILE, "11 tiles, got %lld",
          (long long)u8.shape[0]);
    CHECK_MSG(f32.dtype == VL2_NPY_F32 && f32.count == u8.count, "float tiles");
    if (u8.count != 11 * TILE || f32.count != u8.count)
        goto out;
    CHECK_MSG(!memcmp(u8.data, gw.data, 4 * TILE), "wide tiles differ from golden");
    CHECK_MSG(!memcmp((uint8_t *)u8.data + 4 * TILE, gt.data, 7 * TILE),
          "tall tiles differ from golden");
    for (size_t i = 0; i < u8.count; i++) {
        uint8_t g = i < 4 * TILE ? ((uint8_t *)gw.data)[i] : ((uint8_t *)gt.data)[i - 4 * TILE];
        float ref = ((float)g / 255.0f - 0.5f) / 0.5f;
        double d = fabs((double)((float *)f32.data)[i] - ref);

        if (d > max_err)
            max_err = d;
        n_bad += d > 1e-6;
    }
    CHECK_MSG(n_bad == 0, "%zu float values off by more than 1e-6 (max %g)", n_bad, max_err);
    {
        size_t n;
        unsigned char *s;
        cJSON *j, *crop, *tok;

        snprintf(path, sizeof(path), "%s/images.json", out);
        s = (unsigned char *)test_slurp(path, &n);
        j = s ? cJSON_ParseWithLength((const char *)s, n) : NULL;
        CHECK_MSG(j != NULL, "%s", path);
        crop = cJSON_GetObjectItemCaseSensitive(j, "images_spatial_crop");
        tok = cJSON_GetObjectItemCaseSensitive(j, "num_image_tokens");
        CHECK_MSG(cJSON_GetArraySize(crop) == 2 &&
                  cJSON_GetArrayItem(cJSON_GetArrayItem(crop, 0), 0)->valueint == 3 &&
                  cJSON_GetArrayItem(cJSON_GetArrayItem(crop, 0), 1)->valueint == 1 &&
                  cJSON_GetArrayItem(cJSON_GetArrayItem(crop, 1), 0)->valueint == 2 &&
                  cJSON_GetArrayItem(cJSON_GetArrayItem(crop, 1), 1)->valueint == 3,
              "images_spatial_crop");
        CHECK_MSG(cJSON_GetArraySize(tok) == 2 && cJSON_GetArrayItem(tok, 0)->valueint == 813 &&
                  cJSON_GetArrayItem(tok, 1)->valueint == 1429,
              "num_image_tokens");
        cJSON_Delete(j);
        free(s);
    }
out:
    vl2_npy_done(&u8);
    vl2_npy_done(&f32);
    vl2_npy_done(&gw);
    vl2_npy_done(&gt);
}

/* Three images: no tiling; each image is its global view twice. */
static void test_three_images(void)
{
    static const char *const cases[3] = { "a384", "wide", "tall" };
    static const char *const files[3] = { "g_a_384.jpg", "g_b_wide.png", "g_c_tall.jpg" };
    char model[1024], img[3][1024], out[1024];
    struct vl2_npy u8 = { 0 };

    snprintf(model, sizeof(model), "%s/golden/micro-base", data_dir);
    for (int i = 0; i < 3; i++)
        snprintf(img[i], sizeof(img[i]), "%s/%s", images_dir, files[i]);
    snprintf(out, sizeof(out), "%s/preprocess-three", scratch);
    {
        const char *args[] = { vl2d, "preprocess", "--model", model, "--image", img[0],
                               "--image", img[1], "--image", img[2], "--dump", out,
                               "--no-float", NULL };
        CHECK_MSG(run(args) == 0, "vl2d preprocess (three images) failed");
    }
    if (load_dump(out, "pixel_values_u8.npy", &u8) < 0)
        return;
    CHECK_MSG(u8.count == 6 * TILE, "6 tiles");
    for (int i = 0; i < 3 && u8.count == 6 * TILE; i++) {
        struct vl2_npy g = { 0 };
        const uint8_t *p = (const uint8_t *)u8.data + 2 * i * TILE;

        if (load_gold(cases[i], &g) < 0)
            continue;
        /* the global view does not depend on tiling */
        CHECK_MSG(!memcmp(p, g.data, TILE), "%s: global view differs from golden", cases[i]);
        CHECK_MSG(!memcmp(p + TILE, p, TILE), "%s: local tile is not the global view", cases[i]);
        vl2_npy_done(&g);
    }
    vl2_npy_done(&u8);
}

static void test_errors(void)
{
    char model[1024], out[1024], bad[1024];
    FILE *f;

    snprintf(model, sizeof(model), "%s/golden/micro-mha", data_dir);
    snprintf(out, sizeof(out), "%s/preprocess-bad", scratch);
    snprintf(bad, sizeof(bad), "%s/not-an-image.txt", scratch);
    f = fopen(bad, "w");
    if (f) {
        fputs("hello\n", f);
        fclose(f);
    }
    {
        const char *args[] = { vl2d, "preprocess", "--model", model, "--image", bad, "--dump",
                               out, NULL };
        CHECK_MSG(run(args) == 1, "unsupported format exits 1");
    }
    {
        const char *args[] = { vl2d, "preprocess", "--model", model, "--image",
                               "/nonexistent.png", "--dump", out, NULL };
        CHECK_MSG(run(args) == 1, "missing file exits 1");
    }
    {
        const char *args[] = { vl2d, "preprocess", "--model", model, "--dump", out, NULL };
        CHECK_MSG(run(args) == 2, "no image: usage error");
    }
    {
        const char *args[] = { vl2d, "preprocess", "--model", model, "--image", bad,
                               "--max-pixels", "x", "--dump", out, NULL };
        CHECK_MSG(run(args) == 2, "bad --max-pixels: usage error");
    }
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: %s VL2D TESTS_DATA_DIR IMAGES_DIR SCRATCH_DIR\n", argv[0]);
        return 2;
    }
    vl2d = argv[1];
    data_dir = argv[2];
    images_dir = argv[3];
    scratch = argv[4];
    test_two_images();
    test_three_images();
    test_errors();
    return check_report("test-image-preprocess");
}

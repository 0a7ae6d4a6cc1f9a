/* cmd_preprocess.c - vl2d preprocess: decode and tile images exactly as the
 * official processor, and dump the tiles in the golden formats:
 *
 *   OUT/pixel_values_u8.npy  uint8   [n_tiles, 3, S, S]  all images, in order
 *   OUT/pixel_values.npy     float32 [n_tiles, 3, S, S]  normalised (spec 3.6)
 *   OUT/images.json          images, image_sizes ([w, h]), images_spatial_crop
 *                            ([tiles_w, tiles_h]), num_image_tokens (the keys
 *                            of the golden input_ids.json), best_resolutions
 *                            ([W, H]) and n_tiles per image
 *
 * Tiling (cropping) is on when there are at most 2 images, as in one
 * conversation of the official code. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>

#include "cmd.h"
#include "image.h"
#include "npy.h"
#include "weights.h"

#define PRE_MAX_IMAGES 64

static void usage(FILE *f)
{
    fprintf(f,
"usage: vl2d preprocess --model DIR --image FILE [--image FILE]... --dump OUT [options]\n"
"\n"
"Decode and tile images as DeepSeek-VL2's processor does, for the model in DIR\n"
"(config.json, processor_config.json; weights are not read), and write\n"
"OUT/pixel_values_u8.npy, OUT/pixel_values.npy and OUT/images.json.\n"
"Tiling is on for 1 or 2 images, off for 3 or more (one conversation).\n"
"\n"
"options:\n"
"  --apply-exif        rotate/flip per the EXIF orientation (default: ignore it,\n"
"                      as the official code does)\n"
"  --max-pixels N      refuse larger images (default 50000000)\n"
"  --max-bytes N       refuse larger files (default 67108864)\n"
"  --no-float          do not write pixel_values.npy\n");
}

static cJSON *pair(int a, int b)
{
    const int v[2] = { a, b };

    return cJSON_CreateIntArray(v, 2);
}

static int write_json(const char *dir, cJSON *j, struct vl2_err *err)
{
    char path[4096], *text = cJSON_Print(j);
    FILE *f;
    int ok;

    if (!text)
        return vl2_err_set(err, VL2_ENOMEM, "out of memory");
    snprintf(path, sizeof(path), "%s/images.json", dir);
    f = fopen(path, "wb");
    if (!f) {
        free(text);
        return vl2_err_set(err, VL2_EIO, "'%s': %s", path, strerror(errno));
    }
    ok = fputs(text, f) >= 0 && fputc('\n', f) != EOF;
    ok &= fclose(f) == 0;
    free(text);
    return ok ? 0 : vl2_err_set(err, VL2_EIO, "'%s': write error", path);
}

static int parse_size(const char *s, uint64_t *ret)
{
    char *end;
    unsigned long long v;

    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-' || v == 0)
        return -1;
    *ret = v;
    return 0;
}

int vl2d_cmd_preprocess(int argc, char **argv)
{
    struct vl2_image_limits lim = vl2_image_default_limits();
    const char *model = NULL, *out = NULL, *images[PRE_MAX_IMAGES], *ctx = NULL;
    struct vl2_model_config cfg;
    struct vl2_processor_config pc;
    struct vl2_tiling t[PRE_MAX_IMAGES];
    struct vl2_err err = { 0 };
    int n_images = 0, want_float = 1, n_cands, S, r, status = 1;
    const int (*cands)[2];
    size_t tile, n_tiles = 0, off = 0;
    uint8_t *px = NULL;
    float *fx = NULL;
    cJSON *j = NULL, *a_img, *a_size, *a_crop, *a_tok, *a_best, *a_nt;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        uint64_t v;

        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--apply-exif")) {
            lim.apply_exif = 1;
            continue;
        } else if (!strcmp(a, "--no-float")) {
            want_float = 0;
            continue;
        }
        if (i + 1 >= argc || strncmp(a, "--", 2)) {
            fprintf(stderr, "vl2d preprocess: %s '%s'\n",
                    strncmp(a, "--", 2) ? "unexpected argument" : "missing value after", a);
            usage(stderr);
            return 2;
        }
        if (!strcmp(a, "--model")) {
            model = argv[++i];
        } else if (!strcmp(a, "--dump")) {
            out = argv[++i];
        } else if (!strcmp(a, "--image")) {
            if (n_images == PRE_MAX_IMAGES) {
                fprintf(stderr, "vl2d preprocess: more than %d images\n", PRE_MAX_IMAGES);
                return 2;
            }
            images[n_images++] = argv[++i];
        } else if (!strcmp(a, "--max-pixels") || !strcmp(a, "--max-bytes")) {
            if (parse_size(argv[++i], &v) < 0) {
                fprintf(stderr, "vl2d preprocess: %s: '%s' is not a positive integer\n", a,
                        argv[i]);
                return 2;
            }
            if (a[6] == 'p')
                lim.max_pixels = v;
            else
                lim.max_bytes = v > SIZE_MAX ? SIZE_MAX : (size_t)v;
        } else {
            fprintf(stderr, "vl2d preprocess: unknown option '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (!model || !out || n_images == 0) {
        fprintf(stderr, "vl2d preprocess: --model, --dump and at least one --image are "
                        "required\n");
        usage(stderr);
        return 2;
    }

    r = vl2_config_load(&cfg, model, &err);
    if (r >= 0)
        r = vl2_processor_config_load(&pc, model, &err);
    if (r < 0)
        goto out_report;
    cands = pc.n_candidates ? (const int(*)[2])pc.candidates : (const int(*)[2])cfg.candidates;
    n_cands = pc.n_candidates ? pc.n_candidates : cfg.n_candidates;
    S = cfg.vision.image_size;
    tile = (size_t)3 * S * S;

    j = cJSON_CreateObject();
    a_img = cJSON_AddArrayToObject(j, "images");
    a_size = cJSON_AddArrayToObject(j, "image_sizes");
    a_crop = cJSON_AddArrayToObject(j, "images_spatial_crop");
    a_tok = cJSON_AddArrayToObject(j, "num_image_tokens");
    a_best = cJSON_AddArrayToObject(j, "best_resolutions");
    a_nt = cJSON_AddArrayToObject(j, "n_tiles");

    for (int i = 0; i < n_images; i++) {
        struct vl2_image img;
        char *data = NULL;
        size_t size = 0;
        uint8_t *p;

        r = vl2_file_read(images[i], lim.max_bytes, "image", &data, &size, &err);
        if (r < 0)
            goto out_report;
        r = vl2_image_decode(&img, (const uint8_t *)data, size, &lim, &err);
        free(data);
        if (r < 0) {
            ctx = images[i];
            goto out_report;
        }
        vl2_image_plan(&t[i], img.width, img.height, cands, n_cands, n_images <= 2, S,
                       cfg.vision.patch_size, pc.downsample);
        p = realloc(px, (n_tiles + (size_t)t[i].n_tiles) * tile);
        if (!p) {
            vl2_image_done(&img);
            r = vl2_err_set(&err, VL2_ENOMEM, "out of memory for the tiles");
            goto out_report;
        }
        px = p;
        r = vl2_image_tile(&img, &t[i], S, px + off, &err);
        if (r < 0) {
            vl2_image_done(&img);
            ctx = images[i];
            goto out_report;
        }
        n_tiles += (size_t)t[i].n_tiles;
        off += (size_t)t[i].n_tiles * tile;
        printf("%s: %dx%d -> %dx%d local view, %dx%d tiles + global, %d image tokens\n",
               images[i], img.width, img.height, t[i].best_w, t[i].best_h, t[i].tiles_w,
               t[i].tiles_h, t[i].n_tokens);
        cJSON_AddItemToArray(a_img, cJSON_CreateString(images[i]));
        cJSON_AddItemToArray(a_size, pair(img.width, img.height));
        cJSON_AddItemToArray(a_crop, pair(t[i].tiles_w, t[i].tiles_h));
        cJSON_AddItemToArray(a_tok, cJSON_CreateNumber(t[i].n_tokens));
        cJSON_AddItemToArray(a_best, pair(t[i].best_w, t[i].best_h));
        cJSON_AddItemToArray(a_nt, cJSON_CreateNumber(t[i].n_tiles));
        vl2_image_done(&img);
    }

    if (mkdir(out, 0777) < 0 && errno != EEXIST) {
        r = vl2_err_set(&err, VL2_EIO, "--dump '%s': %s", out, strerror(errno));
        goto out_report;
    }
    {
        const int64_t shape[4] = { (int64_t)n_tiles, 3, S, S };
        char path[4096];

        snprintf(path, sizeof(path), "%s/pixel_values_u8.npy", out);
        r = vl2_npy_write(path, VL2_NPY_U8, 4, shape, px, &err);
        if (r < 0)
            goto out_report;
        if (want_float) {
            fx = malloc(n_tiles * tile * sizeof(*fx));
            if (!fx) {
                r = vl2_err_set(&err, VL2_ENOMEM, "out of memory for the float tiles");
                goto out_report;
            }
            vl2_image_normalize(fx, px, n_tiles * tile, (size_t)S * S, pc.image_mean,
                                pc.image_std, pc.normalize);
            snprintf(path, sizeof(path), "%s/pixel_values.npy", out);
            r = vl2_npy_write(path, VL2_NPY_F32, 4, shape, fx, &err);
            if (r < 0)
                goto out_report;
        }
    }
    r = write_json(out, j, &err);
    if (r < 0)
        goto out_report;
    printf("%zu tiles written to %s\n", n_tiles, out);
    status = 0;

out_report:
    if (status)
        fprintf(stderr, "vl2d preprocess: %s%s%s\n", ctx ? ctx : "", ctx ? ": " : "",
                err.msg[0] ? err.msg : vl2_status_name(r));
    cJSON_Delete(j);
    free(px);
    free(fx);
    return status;
}

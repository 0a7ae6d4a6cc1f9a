/* gpu_golden.c - compare one `vl2d run --backend cuda --dump` folder with the
 * golden case it reproduces, within the bf16 tolerances of the golden README:
 *   err = max|mine - golden| / max|golden| <= 5e-2 for vision_features,
 *   projector_out and inputs_embeds, <= 2e-2 for each logits row;
 *   input_ids identical; pixel_values_u8 identical;
 *   generated_ids identical up to the first step whose golden top1_margin is
 *   below 0.5 (a flip there is legitimate; later ids are not comparable).
 * Logits row 1 (after feeding generated token 0) is compared only when token 0
 * matched.  Prints one table row (markdown) per case; exit 0 when all pass.
 *
 * usage: gpu_golden --golden CASE_DIR --dump DUMP_DIR [--pixels PIXELS_CASE_DIR]
 *                   [--label TEXT] [--f32]
 * --f32 checks the float32 tolerance (1e-3) instead. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "npy.h"

#define MARGIN_MIN 0.5

static int n_fail;

static char *join(const char *dir, const char *name)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (p)
        snprintf(p, n, "%s/%s", dir, name);
    return p;
}

static cJSON *load_json(const char *dir, const char *name)
{
    char *path = join(dir, name);
    FILE *f = path ? fopen(path, "rb") : NULL;
    cJSON *j = NULL;
    long n;
    char *buf;

    free(path);
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fseek(f, 0, SEEK_SET);
    buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) == (size_t)n) {
        buf[n] = 0;
        j = cJSON_Parse(buf);
    }
    free(buf);
    fclose(f);
    return j;
}

static int load_npy(struct vl2_npy *a, const char *dir, const char *name)
{
    struct vl2_err err = { 0, "" };
    char *path = join(dir, name);
    int r = path ? vl2_npy_read(a, path, &err) : -1;
    free(path);
    return r;
}

/* Relative error of @n floats starting at element @off of both arrays;
 * -1 when a shape differs or a value is not finite. */
static double rel_err(const struct vl2_npy *a, const struct vl2_npy *g, size_t off, size_t n)
{
    const float *x = (const float *)a->data + off, *y = (const float *)g->data + off;
    double md = 0.0, mr = 0.0;
    size_t i;

    if (a->dtype != VL2_NPY_F32 || g->dtype != VL2_NPY_F32 || a->count != g->count ||
        off + n > g->count)
        return -1.0;
    for (i = 0; i < n; i++) {
        double d = fabs((double)x[i] - (double)y[i]);
        if (!isfinite(x[i]))
            return -1.0;
        if (d > md)
            md = d;
        if (fabs((double)y[i]) > mr)
            mr = fabs((double)y[i]);
    }
    return mr > 0 ? md / mr : md;
}

/* One stage: prints "err" into @cell; a missing golden file is "-". */
static void stage(const char *dump, const char *gold, const char *name, double tol,
                  char *cell, size_t cell_size)
{
    struct vl2_npy a = { 0 }, g = { 0 };
    double e;

    if (load_npy(&g, gold, name) < 0) {
        snprintf(cell, cell_size, "-");
        return;
    }
    if (load_npy(&a, dump, name) < 0) {
        snprintf(cell, cell_size, "missing");
        printf("FAIL %s: not in the dump\n", name);
        n_fail++;
        vl2_npy_done(&g);
        return;
    }
    e = rel_err(&a, &g, 0, g.count);
    snprintf(cell, cell_size, "%.1e", e);
    if (e < 0 || e > tol) {
        printf("FAIL %s: err %.3g (tolerance %.0e)%s\n", name, e, tol,
               e < 0 ? ": shape differs or not finite" : "");
        n_fail++;
    }
    vl2_npy_done(&a);
    vl2_npy_done(&g);
}

static int same_int_arrays(const cJSON *a, const cJSON *b)
{
    int i, n;

    if (!cJSON_IsArray(a) || !cJSON_IsArray(b) || cJSON_GetArraySize(a) != cJSON_GetArraySize(b))
        return 0;
    n = cJSON_GetArraySize(a);
    for (i = 0; i < n; i++)
        if (cJSON_GetArrayItem(a, i)->valuedouble != cJSON_GetArrayItem(b, i)->valuedouble)
            return 0;
    return 1;
}

int main(int argc, char **argv)
{
    const char *gold = NULL, *dump = NULL, *pixels = NULL, *label = "case";
    double tol_feat = 5e-2, tol_logit = 2e-2;
    char c_vf[32], c_po[32], c_ie[32], c_l0[32] = "-", c_l1[32] = "-", c_px[32] = "-";
    cJSON *gi, *mi, *gg, *mg;
    int i, n_same = 0, first_low = -1, tok0_same = 0;

    for (i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--f32")) {
            tol_feat = tol_logit = 1e-3;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "%s: missing value\n", argv[i]);
            return 2;
        }
        if (!strcmp(argv[i], "--golden"))
            gold = argv[++i];
        else if (!strcmp(argv[i], "--dump"))
            dump = argv[++i];
        else if (!strcmp(argv[i], "--pixels"))
            pixels = argv[++i];
        else if (!strcmp(argv[i], "--label"))
            label = argv[++i];
        else {
            fprintf(stderr, "unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if (!gold || !dump) {
        fprintf(stderr, "usage: gpu_golden --golden CASE_DIR --dump DUMP_DIR "
                "[--pixels DIR] [--label TEXT] [--f32]\n");
        return 2;
    }

    gi = load_json(gold, "input_ids.json");
    mi = load_json(dump, "input_ids.json");
    if (!gi || !mi || !same_int_arrays(cJSON_GetObjectItem(gi, "input_ids"),
                                       cJSON_GetObjectItem(mi, "input_ids"))) {
        printf("FAIL input_ids differ or are missing\n");
        n_fail++;
    }
    if (pixels) {
        struct vl2_npy a = { 0 }, g = { 0 };
        if (load_npy(&g, pixels, "pixel_values_u8.npy") == 0) {
            int same = load_npy(&a, dump, "pixel_values_u8.npy") == 0 && a.count == g.count &&
                       !memcmp(a.data, g.data, g.count);
            snprintf(c_px, sizeof(c_px), "%s", same ? "exact" : "DIFFER");
            if (!same) {
                printf("FAIL pixel_values_u8 differ\n");
                n_fail++;
            }
            vl2_npy_done(&a);
            vl2_npy_done(&g);
        }
    }
    stage(dump, gold, "vision_features.npy", tol_feat, c_vf, sizeof(c_vf));
    stage(dump, gold, "projector_out.npy", tol_feat, c_po, sizeof(c_po));
    stage(dump, gold, "inputs_embeds.npy", tol_feat, c_ie, sizeof(c_ie));

    gg = load_json(gold, "generated.json");
    mg = load_json(dump, "generated.json");
    if (!gg || !mg) {
        printf("FAIL generated.json missing\n");
        n_fail++;
    } else {
        const cJSON *ga = cJSON_GetObjectItem(gg, "generated_ids");
        const cJSON *ma = cJSON_GetObjectItem(mg, "generated_ids");
        const cJSON *mar = cJSON_GetObjectItem(gg, "top1_margin");
        int n = cJSON_GetArraySize(ga);
        for (i = 0; i < n; i++) {
            const cJSON *m = cJSON_GetArrayItem(mar, i);
            const cJSON *x = cJSON_GetArrayItem(ma, i);
            int same = x && x->valuedouble == cJSON_GetArrayItem(ga, i)->valuedouble;
            if (m && m->valuedouble < MARGIN_MIN && first_low < 0)
                first_low = i;
            if (i == 0)
                tok0_same = same;
            if (first_low >= 0 && i >= first_low) {
                /* this step may flip; nothing after a flip is comparable */
                if (!same)
                    break;
                n_same++;
                continue;
            }
            if (same) {
                n_same++;
            } else {
                printf("FAIL generated id %d: %d, golden %d (golden margin %.3f)\n", i,
                       x ? (int)x->valuedouble : -1, (int)cJSON_GetArrayItem(ga, i)->valuedouble,
                       m ? m->valuedouble : 0.0);
                n_fail++;
                break;
            }
        }
    }
    {
        struct vl2_npy a = { 0 }, g = { 0 };
        if (load_npy(&g, gold, "logits.npy") == 0 && load_npy(&a, dump, "logits.npy") == 0 &&
            g.ndim == 2) {
            const size_t V = (size_t)g.shape[1];
            double e0 = rel_err(&a, &g, 0, V);
            snprintf(c_l0, sizeof(c_l0), "%.1e", e0);
            if (e0 < 0 || e0 > tol_logit) {
                printf("FAIL logits row 0: err %.3g (tolerance %.0e)\n", e0, tol_logit);
                n_fail++;
            }
            if (g.shape[0] > 1 && tok0_same) {
                double e1 = rel_err(&a, &g, V, V);
                snprintf(c_l1, sizeof(c_l1), "%.1e", e1);
                if (e1 < 0 || e1 > tol_logit) {
                    printf("FAIL logits row 1: err %.3g (tolerance %.0e)\n", e1, tol_logit);
                    n_fail++;
                }
            }
        } else {
            printf("FAIL logits.npy missing\n");
            n_fail++;
        }
        vl2_npy_done(&a);
        vl2_npy_done(&g);
    }
    {
        char ids[64];
        int n_gen = gg ? cJSON_GetArraySize(cJSON_GetObjectItem(gg, "generated_ids")) : 0;
        if (first_low >= 0)
            snprintf(ids, sizeof(ids), "%d/%d (margin < 0.5 from step %d)", n_same, n_gen,
                     first_low);
        else
            snprintf(ids, sizeof(ids), "%d/%d", n_same, n_gen);
        printf("| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", label, c_px, c_vf, c_po,
               c_ie, c_l0, c_l1, ids, n_fail ? "FAIL" : "ok");
    }
    cJSON_Delete(gi);
    cJSON_Delete(mi);
    cJSON_Delete(gg);
    cJSON_Delete(mg);
    return n_fail ? 1 : 0;
}

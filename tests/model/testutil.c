/* testutil.c - see testutil.h. */
#include "testutil.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>


char *tu_path(const char *dir, const char *name)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);

    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    snprintf(p, n, "%s/%s", dir, name);
    return p;
}

static cJSON *read_json(const char *dir, const char *name)
{
    char *path = tu_path(dir, name), *buf;
    FILE *f = fopen(path, "rb");
    long size;
    cJSON *j;

    if (!f) {
        fprintf(stderr, "cannot open %s\n", path);
        exit(1);
    }
    fseek(f, 0, SEEK_END);
    size = ftell(f);
    fseek(f, 0, SEEK_SET);
    buf = malloc((size_t)size + 1);
    if (!buf || fread(buf, 1, (size_t)size, f) != (size_t)size) {
        fprintf(stderr, "cannot read %s\n", path);
        exit(1);
    }
    buf[size] = 0;
    fclose(f);
    j = cJSON_Parse(buf);
    if (!j) {
        fprintf(stderr, "%s: bad JSON\n", path);
        exit(1);
    }
    free(buf);
    free(path);
    return j;
}

static int32_t *int_array(cJSON *a, size_t *ret_n)
{
    size_t n = (size_t)cJSON_GetArraySize(a), i = 0;
    int32_t *v = malloc((n ? n : 1) * sizeof(*v));
    cJSON *e;

    cJSON_ArrayForEach(e, a)
        v[i++] = (int32_t)e->valuedouble;
    *ret_n = n;
    return v;
}

void tu_case_load(struct tu_case *c, const char *dir)
{
    cJSON *j = read_json(dir, "input_ids.json"), *g, *e;

    memset(c, 0, sizeof(*c));
    c->ids = int_array(cJSON_GetObjectItem(j, "input_ids"), &c->n_ids);
    e = cJSON_GetObjectItem(j, "image_token_id");
    c->image_token_id = e ? (int32_t)e->valuedouble : -1;
    e = cJSON_GetObjectItem(j, "images_spatial_crop");
    if (e) {
        cJSON *p;
        cJSON_ArrayForEach(p, e) {
            if (c->n_images >= 16)
                break;
            c->crop[c->n_images][0] = (int32_t)cJSON_GetArrayItem(p, 0)->valuedouble;
            c->crop[c->n_images][1] = (int32_t)cJSON_GetArrayItem(p, 1)->valuedouble;
            /* the golden lists [0, 0] for a prompt without images */
            if (c->crop[c->n_images][0] > 0)
                c->n_images++;
        }
    }
    cJSON_Delete(j);
    g = read_json(dir, "generated.json");
    c->gen = int_array(cJSON_GetObjectItem(g, "generated_ids"), &c->n_gen);
    cJSON_Delete(g);
}

void tu_case_done(struct tu_case *c)
{
    free(c->ids);
    free(c->gen);
}

void tu_npy_load(struct vl2_npy *a, const char *dir, const char *name)
{
    char *path = tu_path(dir, name);
    struct vl2_err err = { 0 };

    if (vl2_npy_read(a, path, &err) < 0) {
        fprintf(stderr, "%s\n", err.msg);
        exit(1);
    }
    free(path);
}

double tu_rel_err(const float *a, const float *b, size_t n)
{
    double md = 0.0, mb = 0.0;
    size_t i;

    for (i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (d > md || isnan(d))
            md = isnan(d) ? INFINITY : d;
        if (fabs((double)b[i]) > mb)
            mb = fabs((double)b[i]);
    }
    return mb > 0 ? md / mb : md;
}

double tu_compare_err(const char *what, const float *mine, const struct vl2_npy *g, size_t n,
                      double tol)
{
    double e;

    if (g->dtype != VL2_NPY_F32 || g->count != n) {
        fprintf(stderr, "FAIL %s: golden has %zu elements, mine %zu\n", what, g->count, n);
        return INFINITY;
    }
    e = tu_rel_err(mine, g->data, n);
    printf("  %-28s err %.3g%s\n", what, e, e <= tol ? "" : "  <-- over tolerance");
    return e;
}

void tu_topk(const float *z, size_t n, int k, int32_t *ret_ids)
{
    int i, j;
    size_t t;

    for (i = 0; i < k; i++)
        ret_ids[i] = -1;
    for (t = 0; t < n; t++) {
        for (i = 0; i < k; i++)
            if (ret_ids[i] < 0 || z[t] > z[ret_ids[i]])
                break;
        if (i == k)
            continue;
        for (j = k - 1; j > i; j--)
            ret_ids[j] = ret_ids[j - 1];
        ret_ids[i] = (int32_t)t;
    }
}

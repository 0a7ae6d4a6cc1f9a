/* testutil.h - helpers for the model tests: golden files, comparisons. */
#ifndef VL2_TEST_MODEL_UTIL_H
#define VL2_TEST_MODEL_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include "npy.h"

#include "../common/check.h"

/* The fields of a golden case's input_ids.json. */
struct tu_case {
    int32_t *ids;
    size_t   n_ids;
    int32_t  image_token_id;
    int      n_images;
    int32_t  crop[16][2];      /* images_spatial_crop: [tiles_w, tiles_h] */
    int32_t *gen;              /* generated.json generated_ids */
    size_t   n_gen;
};

/* Read DIR/input_ids.json and DIR/generated.json; exits on error. */
void tu_case_load(struct tu_case *c, const char *dir);
void tu_case_done(struct tu_case *c);

/* Read an npy file; exits on error. */
void tu_npy_load(struct vl2_npy *a, const char *dir, const char *name);

/* max|a - b| / max|b| over n floats. */
double tu_rel_err(const float *a, const float *b, size_t n);

/* Compare @mine [n] with golden @g (float32, count n); prints and counts a
 * failure above @tol.  Returns the error. */
double tu_compare_err(const char *what, const float *mine, const struct vl2_npy *g, size_t n,
                      double tol);

/* tu_compare_err counted as one check of the calling test. */
static inline double tu_compare(const char *what, const float *mine, const struct vl2_npy *g,
                                size_t n, double tol)
{
    double e = tu_compare_err(what, mine, g, n, tol);
    CHECK_MSG(e <= tol, "%s: relative error %.3g, tolerance %.3g", what, e, tol);
    return e;
}

/* Ids of the @k largest of @z[n] in descending order. */
void tu_topk(const float *z, size_t n, int k, int32_t *ret_ids);

char *tu_path(const char *dir, const char *name);

#endif

/* test-ops.c - every op of vl2-backend-cpu.so against a naive double-precision
 * computation written here, on random inputs: odd sizes, BF16/F16/F32
 * weights, views with ld > cols, 1 and 3 threads, every instruction set the
 * machine supports (isa=scalar|avx2|avx512).  Also: results identical for 1
 * and 3 threads, and clear errors for bad arguments.
 *
 * argv[1]: folder with vl2-backend-cpu.so; argv[2]: folder with its copy
 * built with the measurement knobs (tests/plugins/knobs), for attn_mla in
 * each form.
 *
 * Error bounds (|got - ref| per element):
 *   linear, moe experts, attention products: <= 2e-5 * sum_k |a_k b_k| + 1e-6
 *     (F32 accumulation of k products: a few ulp of the absolute sum);
 *   norms, activations: <= 2e-5 * (|ref| + 1e-2) for the tanh/erf/exp forms;
 *   rope: <= 1e-5 * (1 + |x|) (float32 angle pos * inv_freq as the reference);
 *   embed, add, copy_rows, patchify, unfold2x2: exact (one rounding for add).
 */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "../common/check.h"

struct be {
    struct vl2_backend *b;
    const struct vl2_backend_ops *o;
    struct vl2_backend_ctx *c;
    char name[64];
};

static uint64_t rng = 0x1234567;

static double urand(void)
{
    uint64_t z = (rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return (double)(z >> 11) / (double)(1ull << 53) * 2.0 - 1.0;
}

static uint16_t f2bf(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static double bf2d(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* float -> IEEE half (round to nearest even), normal range only (tests use |v| < 8) */
static uint16_t f2h(float f)
{
    uint32_t u, sign, man;
    int ex;
    memcpy(&u, &f, 4);
    sign = (u >> 16) & 0x8000u;
    ex = (int)((u >> 23) & 0xff) - 127 + 15;
    man = u & 0x7fffffu;
    if (ex <= 0)
        return (uint16_t)sign; /* flush tiny values to zero */
    {
        uint32_t h = ((uint32_t)ex << 10) | (man >> 13);
        uint32_t rem = man & 0x1fffu;
        if (rem > 0x1000u || (rem == 0x1000u && (h & 1u)))
            h++;
        return (uint16_t)(sign | h);
    }
}

static double h2d(uint16_t h)
{
    int ex = (h >> 10) & 0x1f;
    int man = h & 0x3ff;
    double v = ex == 0 ? ldexp(man, -24) : ldexp(1024 + man, ex - 25);
    return (h & 0x8000) ? -v : v;
}

/* ---- host-side tensors ------------------------------------------------------- */

/* A weight: raw bytes (rows x ld elements of dtype), its exact values in
 * double, and a backend tensor viewing columns [0, cols). */
struct hw {
    void *raw;
    double *val;  /* rows x cols */
    int dtype;
    int64_t rows, cols, ld;
    struct vl2_tensor full, t;
};

static void hw_init(struct be *be, struct hw *w, int dtype, int64_t rows, int64_t cols,
                    int64_t ld, double scale)
{
    size_t es = vl2_dtype_size(dtype);
    int64_t ne[2] = { rows, ld };
    struct vl2_err err = { 0 };

    w->dtype = dtype;
    w->rows = rows;
    w->cols = cols;
    w->ld = ld;
    w->raw = malloc((size_t)(rows * ld) * es + 1);
    w->val = malloc((size_t)(rows * cols + 1) * sizeof(double));
    /* misaligned on purpose: the checkpoint gives any alignment */
    w->raw = (char *)w->raw + 1;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < ld; c++) {
            float f = (float)(urand() * scale);
            double v;
            char *p = (char *)w->raw + (size_t)(r * ld + c) * es;
            if (dtype == VL2_DTYPE_F32) {
                memcpy(p, &f, 4);
                v = f;
            } else if (dtype == VL2_DTYPE_BF16) {
                uint16_t h = f2bf(f);
                memcpy(p, &h, 2);
                v = bf2d(h);
            } else {
                uint16_t h = f2h(f);
                memcpy(p, &h, 2);
                v = h2d(h);
            }
            if (c < cols)
                w->val[r * cols + c] = v;
        }
    CHECK(be->o->weight(be->c, &w->full, dtype, 2, ne, w->raw, &err) == 0);
    w->t = ld > cols ? vl2_tensor_cols(&w->full, 0, cols) : w->full;
}

static void hw_done(struct be *be, struct hw *w)
{
    be->o->free_tensor(be->c, &w->full);
    free((char *)w->raw - 1);
    free(w->val);
}

/* An F32 activation [rows, cols] stored with row stride ld (a column view of
 * an allocated [rows, ld] tensor), with a host copy. */
struct ha {
    float *h;     /* rows x ld */
    int64_t rows, cols, ld;
    struct vl2_tensor full, t;
};

static void ha_init(struct be *be, struct ha *a, int64_t rows, int64_t cols, int64_t ld,
                    double scale)
{
    int64_t ne[2] = { rows, ld };
    struct vl2_err err = { 0 };

    a->rows = rows;
    a->cols = cols;
    a->ld = ld;
    a->h = malloc((size_t)(rows * ld + 1) * sizeof(float));
    for (int64_t i = 0; i < rows * ld; i++)
        a->h[i] = (float)(urand() * scale);
    CHECK(be->o->alloc(be->c, &a->full, VL2_DTYPE_F32, 2, ne, &err) == 0);
    CHECK(be->o->write(be->c, &a->full, 0, a->h, (size_t)(rows * ld) * 4, &err) == 0);
    a->t = ld > cols ? vl2_tensor_cols(&a->full, 0, cols) : a->full;
}

static void ha_read(struct be *be, struct ha *a)
{
    struct vl2_err err = { 0 };
    CHECK(be->o->read(be->c, &a->full, 0, a->h, (size_t)(a->rows * a->ld) * 4, &err) == 0);
}

static void ha_write(struct be *be, struct ha *a)
{
    struct vl2_err err = { 0 };
    CHECK(be->o->write(be->c, &a->full, 0, a->h, (size_t)(a->rows * a->ld) * 4, &err) == 0);
}

static void ha_done(struct be *be, struct ha *a)
{
    be->o->free_tensor(be->c, &a->full);
    free(a->h);
}

#define A(a, r, c) ((a)->h[(r) * (a)->ld + (c)])

/* Compare got (rows x cols, stride ld) with ref; bound[i] per element
 * (NULL: tol * (|ref| + floor)). Returns the worst ratio err / bound. */
static double compare(const char *what, const float *got, int64_t ld, const double *ref,
                      const double *bound, int64_t rows, int64_t cols, double tol, double floor_)
{
    double worst = 0.0;
    int64_t wi = -1;

    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++) {
            double g = got[r * ld + c], e = ref[r * cols + c];
            double b = bound ? bound[r * cols + c] : tol * (fabs(e) + floor_);
            double q = g == e ? 0.0 : fabs(g - e) / b;
            if (!(q <= worst)) {
                worst = isnan(q) ? INFINITY : q;
                wi = r * cols + c;
            }
        }
    CHECK_MSG(worst <= 1.0, "%s: error %.3g x bound at [%lld, %lld]: got %.9g, expected %.9g", what,
              worst, (long long)(wi / cols), (long long)(wi % cols),
              (double)got[(wi / cols) * ld + wi % cols], ref[wi]);
    return worst;
}

/* ---- linear --------------------------------------------------------------------- */

static void test_linear(struct be *be)
{
    static const int64_t shapes[][3] = {
        { 1, 67, 45 }, { 2, 16, 5 }, { 3, 130, 33 }, { 5, 257, 70 }, { 8, 64, 9 },
        { 17, 300, 129 }, { 40, 33, 200 }, { 300, 64, 40 },
    };
    static const int dts[] = { VL2_DTYPE_F32, VL2_DTYPE_BF16, VL2_DTYPE_F16 };
    char what[128];

    for (size_t si = 0; si < sizeof(shapes) / sizeof(shapes[0]); si++)
        for (size_t di = 0; di < 3; di++)
            for (int variant = 0; variant < 2; variant++) {
                int64_t m = shapes[si][0], k = shapes[si][1], n = shapes[si][2];
                struct hw w, bias;
                struct ha x, out;
                struct vl2_err err = { 0 };
                double *ref = malloc((size_t)(m * n) * sizeof(double));
                double *bnd = malloc((size_t)(m * n) * sizeof(double));
                int r;

                hw_init(be, &w, dts[di], n, k, variant ? k + 3 : k, 1.0);
                hw_init(be, &bias, VL2_DTYPE_BF16, 1, n, n, 1.0);
                ha_init(be, &x, m, k, variant ? k + 5 : k, 1.0);
                ha_init(be, &out, m, n, variant ? n + 2 : n, 1.0);
                r = be->o->linear(be->c, &out.t, &x.t, &w.t, variant ? &bias.t : NULL, &err);
                CHECK_MSG(r == 0, "linear: %s", err.msg);
                ha_read(be, &out);
                for (int64_t i = 0; i < m; i++)
                    for (int64_t j = 0; j < n; j++) {
                        double s = 0, a = 0;
                        for (int64_t c = 0; c < k; c++) {
                            s += A(&x, i, c) * w.val[j * k + c];
                            a += fabs(A(&x, i, c) * w.val[j * k + c]);
                        }
                        if (variant) {
                            s += bias.val[j];
                            a += fabs(bias.val[j]);
                        }
                        ref[i * n + j] = s;
                        bnd[i * n + j] = 2e-5 * a + 1e-6;
                    }
                snprintf(what, sizeof(what), "%s linear %lldx%lldx%lld dtype %d%s", be->name,
                         (long long)m, (long long)k, (long long)n, dts[di],
                         variant ? " strided+bias" : "");
                compare(what, out.h, out.ld, ref, bnd, m, n, 0, 0);
                /* untouched padding of the strided output */
                ha_done(be, &x);
                ha_done(be, &out);
                hw_done(be, &w);
                hw_done(be, &bias);
                free(ref);
                free(bnd);
            }
}

/* ---- element-wise, norms, embed ------------------------------------------------------ */

static void test_rowops(struct be *be)
{
    const int64_t m = 7, n = 203, ld = 210;
    struct ha x, out, up;
    struct hw w, b, table, pos;
    struct vl2_err err = { 0 };
    double *ref = malloc((size_t)(m * 1000) * sizeof(double));
    char what[128];
    int32_t ids[7] = { 0, 5, 17, 3, 3, 16, 9 };

    /* rmsnorm (in place) */
    ha_init(be, &x, m, n, ld, 2.0);
    hw_init(be, &w, VL2_DTYPE_BF16, 1, n, n, 1.0);
    for (int64_t i = 0; i < m; i++) {
        double ss = 0;
        for (int64_t c = 0; c < n; c++)
            ss += (double)A(&x, i, c) * A(&x, i, c);
        for (int64_t c = 0; c < n; c++)
            ref[i * n + c] = w.val[c] * A(&x, i, c) / sqrt(ss / n + 1e-6);
    }
    CHECK_MSG(be->o->rmsnorm(be->c, &x.t, &x.t, &w.t, 1e-6f, &err) == 0, "%s", err.msg);
    ha_read(be, &x);
    snprintf(what, sizeof(what), "%s rmsnorm", be->name);
    compare(what, x.h, ld, ref, NULL, m, n, 2e-5, 1e-2);
    ha_done(be, &x);

    /* layernorm (out of place, F32 weights, offset mean) */
    ha_init(be, &x, m, n, ld, 1.0);
    for (int64_t i = 0; i < m * ld; i++)
        x.h[i] += 3.0f;
    ha_write(be, &x);
    ha_init(be, &out, m, n, n, 1.0);
    hw_init(be, &b, VL2_DTYPE_F32, 1, n, n, 1.0);
    for (int64_t i = 0; i < m; i++) {
        double mean = 0, var = 0;
        for (int64_t c = 0; c < n; c++)
            mean += A(&x, i, c);
        mean /= n;
        for (int64_t c = 0; c < n; c++)
            var += (A(&x, i, c) - mean) * (A(&x, i, c) - mean);
        var /= n;
        for (int64_t c = 0; c < n; c++)
            ref[i * n + c] = (A(&x, i, c) - mean) / sqrt(var + 1e-6) * w.val[c] + b.val[c];
    }
    CHECK_MSG(be->o->layernorm(be->c, &out.t, &x.t, &w.t, &b.t, 1e-6f, &err) == 0, "%s", err.msg);
    ha_read(be, &out);
    snprintf(what, sizeof(what), "%s layernorm", be->name);
    compare(what, out.h, n, ref, NULL, m, n, 2e-5, 1e-2);
    hw_done(be, &b);
    hw_done(be, &w);

    /* gelu_tanh, gelu_erf in place on a strided view */
    for (int kind = 0; kind < 2; kind++) {
        struct ha g;
        ha_init(be, &g, m, n, ld, 6.0);
        for (int64_t i = 0; i < m; i++)
            for (int64_t c = 0; c < n; c++) {
                double v = A(&g, i, c);
                ref[i * n + c] = kind == 0
                    ? 0.5 * v * (1 + tanh(sqrt(2 / M_PI) * (v + 0.044715 * v * v * v)))
                    : 0.5 * v * (1 + erf(v / sqrt(2.0)));
            }
        if (kind == 0)
            CHECK(be->o->gelu_tanh(be->c, &g.t, &err) == 0);
        else
            CHECK(be->o->gelu_erf(be->c, &g.t, &err) == 0);
        ha_read(be, &g);
        snprintf(what, sizeof(what), "%s gelu_%s", be->name, kind ? "erf" : "tanh");
        compare(what, g.h, ld, ref, NULL, m, n, 2e-5, 1e-2);
        /* padding columns untouched: still the random inputs in (-6, 6) */
        for (int64_t i = 0; i < m; i++)
            for (int64_t c = n; c < ld; c++)
                CHECK(fabsf(A(&g, i, c)) < 6.0f);
        ha_done(be, &g);
    }

    /* swiglu: out aliases gate */
    ha_init(be, &up, m, n, n + 1, 2.0);
    {
        struct ha g;
        ha_init(be, &g, m, n, ld, 6.0);
        for (int64_t i = 0; i < m; i++)
            for (int64_t c = 0; c < n; c++) {
                double z = A(&g, i, c);
                ref[i * n + c] = z / (1 + exp(-z)) * A(&up, i, c);
            }
        CHECK(be->o->swiglu(be->c, &g.t, &g.t, &up.t, &err) == 0);
        ha_read(be, &g);
        snprintf(what, sizeof(what), "%s swiglu", be->name);
        compare(what, g.h, ld, ref, NULL, m, n, 2e-5, 1e-2);
        ha_done(be, &g);
    }
    ha_done(be, &up);

    /* add with broadcast of a BF16 table (position embeddings) into out = a */
    ha_done(be, &x);
    ha_init(be, &x, m, n, ld, 1.0);
    hw_init(be, &pos, VL2_DTYPE_BF16, 3, n, n + 4, 1.0);
    for (int64_t i = 0; i < m; i++)
        for (int64_t c = 0; c < n; c++)
            ref[i * n + c] = (double)(float)(A(&x, i, c) + (float)pos.val[(i % 3) * n + c]);
    CHECK_MSG(be->o->add(be->c, &x.t, &x.t, &pos.t, &err) == 0, "%s", err.msg);
    ha_read(be, &x);
    snprintf(what, sizeof(what), "%s add", be->name);
    compare(what, x.h, ld, ref, NULL, m, n, 1e-300, 0);
    hw_done(be, &pos);

    /* embed: bf16 and f16 tables, exact */
    for (int dt = 1; dt <= 2; dt++) {
        hw_init(be, &table, dt == 1 ? VL2_DTYPE_BF16 : VL2_DTYPE_F16, 18, n, n + 1, 3.0);
        CHECK_MSG(be->o->embed(be->c, &x.t, &table.t, ids, &err) == 0, "%s", err.msg);
        ha_read(be, &x);
        for (int64_t i = 0; i < m; i++)
            for (int64_t c = 0; c < n; c++)
                ref[i * n + c] = table.val[ids[i] * n + c];
        snprintf(what, sizeof(what), "%s embed dtype %d", be->name, table.dtype);
        compare(what, x.h, ld, ref, NULL, m, n, 1e-300, 0);
        /* out-of-range id: error, nothing read */
        ids[3] = 18;
        CHECK(be->o->embed(be->c, &x.t, &table.t, ids, &err) == VL2_EINVAL);
        CHECK(strstr(err.msg, "out of range") != NULL);
        ids[3] = 3;
        hw_done(be, &table);
    }
    ha_done(be, &x);
    ha_done(be, &out);
    free(ref);
}

/* ---- data movement ------------------------------------------------------------------ */

static void test_movement(struct be *be)
{
    struct vl2_err err = { 0 };
    char what[128];

    /* copy_rows */
    {
        struct ha src, dst;
        int32_t dr[4] = { 5, 0, 2, 4 }, sr[4] = { 1, 1, 0, 2 };
        double *ref = malloc(6 * 11 * sizeof(double));
        ha_init(be, &src, 3, 11, 13, 1.0);
        ha_init(be, &dst, 6, 11, 11, 1.0);
        for (int r = 0; r < 6; r++)
            for (int c = 0; c < 11; c++)
                ref[r * 11 + c] = A(&dst, r, c);
        for (int i = 0; i < 4; i++)
            for (int c = 0; c < 11; c++)
                ref[dr[i] * 11 + c] = A(&src, sr[i], c);
        CHECK(be->o->copy_rows(be->c, &dst.t, dr, &src.t, sr, 4, &err) == 0);
        ha_read(be, &dst);
        snprintf(what, sizeof(what), "%s copy_rows", be->name);
        compare(what, dst.h, 11, ref, NULL, 6, 11, 1e-300, 0);
        sr[2] = 3;
        CHECK(be->o->copy_rows(be->c, &dst.t, dr, &src.t, sr, 4, &err) == VL2_EINVAL);
        dr[0] = -1;
        sr[2] = 0;
        CHECK(be->o->copy_rows(be->c, &dst.t, dr, &src.t, sr, 4, &err) == VL2_EINVAL);
        ha_done(be, &src);
        ha_done(be, &dst);
        free(ref);
    }
    /* patchify: 2 images of 3 x 17 x 17, patch 4 -> grid 4 (one trailing pixel ignored) */
    {
        const int S = 17, p = 4, g = 4, n_img = 2;
        struct ha img, out;
        double *ref = malloc((size_t)(n_img * g * g * 3 * p * p) * sizeof(double));
        ha_init(be, &img, n_img, 3 * S * S, 3 * S * S, 1.0);
        ha_init(be, &out, n_img * g * g, 3 * p * p, 3 * p * p + 3, 1.0);
        for (int i = 0; i < n_img; i++)
            for (int gy = 0; gy < g; gy++)
                for (int gx = 0; gx < g; gx++)
                    for (int c = 0; c < 3; c++)
                        for (int ky = 0; ky < p; ky++)
                            for (int kx = 0; kx < p; kx++)
                                ref[(i * g * g + gy * g + gx) * 3 * p * p + c * p * p + ky * p + kx] =
                                    A(&img, i, c * S * S + (gy * p + ky) * S + gx * p + kx);
        CHECK_MSG(be->o->patchify(be->c, &out.t, &img.t, S, p, &err) == 0, "%s", err.msg);
        ha_read(be, &out);
        snprintf(what, sizeof(what), "%s patchify", be->name);
        compare(what, out.h, out.ld, ref, NULL, n_img * g * g, 3 * p * p, 1e-300, 0);
        CHECK(be->o->patchify(be->c, &out.t, &img.t, 16, p, &err) == VL2_EINVAL);
        ha_done(be, &img);
        ha_done(be, &out);
        free(ref);
    }
    /* unfold2x2: odd grid (padded) and even grid */
    for (int g = 3; g <= 4; g++) {
        const int c = 5, n_img = 2, h2 = (g + (g & 1)) / 2;
        struct ha feat, out;
        double *ref = malloc((size_t)(n_img * h2 * h2 * 4 * c) * sizeof(double));
        ha_init(be, &feat, n_img * g * g, c, c + 2, 1.0);
        ha_init(be, &out, n_img * h2 * h2, 4 * c, 4 * c, 1.0);
        for (int i = 0; i < n_img; i++)
            for (int by = 0; by < h2; by++)
                for (int bx = 0; bx < h2; bx++)
                    for (int ch = 0; ch < c; ch++)
                        for (int ky = 0; ky < 2; ky++)
                            for (int kx = 0; kx < 2; kx++) {
                                int y = 2 * by + ky, x = 2 * bx + kx;
                                ref[(i * h2 * h2 + by * h2 + bx) * 4 * c + ch * 4 + ky * 2 + kx] =
                                    (y < g && x < g) ? A(&feat, i * g * g + y * g + x, ch) : 0.0;
                            }
        CHECK_MSG(be->o->unfold2x2(be->c, &out.t, &feat.t, g, &err) == 0, "%s", err.msg);
        ha_read(be, &out);
        snprintf(what, sizeof(what), "%s unfold2x2 grid %d", be->name, g);
        compare(what, out.h, out.ld, ref, NULL, n_img * h2 * h2, 4 * c, 1e-300, 0);
        ha_done(be, &feat);
        ha_done(be, &out);
        free(ref);
    }
}

/* ---- vision attention ------------------------------------------------------------- */

static void test_attn_full(struct be *be)
{
    const int L = 45, H = 3, D = 10, n_seq = 2;
    const float scale = 1.0f / sqrtf((float)D);
    struct ha qkv, out;
    struct vl2_err err = { 0 };
    double *ref = malloc((size_t)(n_seq * L * H * D) * sizeof(double));
    double *bnd = malloc((size_t)(n_seq * L * H * D) * sizeof(double));
    double *p = malloc((size_t)L * sizeof(double));
    char what[128];

    ha_init(be, &qkv, n_seq * L, 3 * H * D, 3 * H * D + 7, 1.0);
    ha_init(be, &out, n_seq * L, H * D, H * D, 1.0);
    for (int s = 0; s < n_seq; s++)
        for (int h = 0; h < H; h++)
            for (int t = 0; t < L; t++) {
                double mx = -1e300, sum = 0;
                int row = s * L + t;
                for (int u = 0; u < L; u++) {
                    double d = 0;
                    for (int c = 0; c < D; c++)
                        d += (double)A(&qkv, row, h * D + c) * A(&qkv, s * L + u, H * D + h * D + c);
                    p[u] = d * scale;
                    if (p[u] > mx)
                        mx = p[u];
                }
                for (int u = 0; u < L; u++)
                    sum += (p[u] = exp(p[u] - mx));
                for (int c = 0; c < D; c++) {
                    double o = 0, a = 0;
                    for (int u = 0; u < L; u++) {
                        o += p[u] / sum * A(&qkv, s * L + u, 2 * H * D + h * D + c);
                        a += fabs(A(&qkv, s * L + u, 2 * H * D + h * D + c));
                    }
                    ref[row * H * D + h * D + c] = o;
                    bnd[row * H * D + h * D + c] = 2e-5 * a / L * 4 + 1e-6;
                }
            }
    CHECK_MSG(be->o->attn_full(be->c, &out.t, &qkv.t, L, H, D, scale, &err) == 0, "%s", err.msg);
    ha_read(be, &out);
    snprintf(what, sizeof(what), "%s attn_full", be->name);
    compare(what, out.h, out.ld, ref, bnd, n_seq * L, H * D, 0, 0);
    CHECK(be->o->attn_full(be->c, &out.t, &qkv.t, 44, H, D, scale, &err) == VL2_EINVAL);
    ha_done(be, &qkv);
    ha_done(be, &out);
    free(ref);
    free(bnd);
    free(p);
}

/* ---- rope ----------------------------------------------------------------------------- */

static void rope_ref(double *v, int d, int pos, double theta, int layout)
{
    double tmp[256];
    int half = d / 2;
    for (int i = 0; i < half; i++) {
        float inv = (float)(1.0 / pow(theta, 2.0 * i / d));
        float ang = (float)pos * inv;  /* float32 angle, as the reference model */
        double cs = cos(ang), sn = sin(ang);
        double a = layout == VL2_ROPE_NEOX ? v[i] : v[2 * i];
        double b = layout == VL2_ROPE_NEOX ? v[i + half] : v[2 * i + 1];
        tmp[i] = a * cs - b * sn;
        tmp[i + half] = b * cs + a * sn;
    }
    memcpy(v, tmp, (size_t)d * sizeof(double));
}

static void test_rope(struct be *be)
{
    struct vl2_kv_shape ks = { .struct_size = sizeof(ks), .kind = VL2_ATTN_MHA, .n_layer = 1,
                               .n_kv_head = 1, .head_dim = 4, .dtype = VL2_DTYPE_F32, .capacity = 400 };
    struct vl2_kv *kv[3];
    struct vl2_batch_seq seqs[3] = {
        { .row0 = 0, .n_rows = 5, .n_past = 0 },
        { .row0 = 5, .n_rows = 1, .n_past = 317 },
        { .row0 = 6, .n_rows = 3, .n_past = 40 },
    };
    struct vl2_batch batch = { .struct_size = sizeof(batch), .n_rows = 9, .n_seqs = 3,
                               .seqs = seqs };
    struct vl2_err err = { 0 };
    char what[128];

    for (int i = 0; i < 3; i++) {
        CHECK(be->o->kv_new(be->c, &ks, &kv[i], &err) == 0);
        seqs[i].kv = kv[i];
    }
    /* a batch from a caller built with another header: refused */
    batch.struct_size = sizeof(batch) + 4;
    CHECK(be->o->begin_batch(be->c, &batch, &err) == VL2_EABI);
    CHECK_MSG(strstr(err.msg, "vl2_batch"), "%s", err.msg);
    batch.struct_size = sizeof(batch);
    CHECK_MSG(be->o->begin_batch(be->c, &batch, &err) == 0, "%s", err.msg);
    for (int layout = 0; layout < 2; layout++) {
        /* 3 heads of stride 14, rotating dims [4, 4 + 8) of each */
        const int H = 3, hs = 14, off = 4, d = 8;
        struct ha x;
        double *ref = malloc((size_t)(9 * H * hs) * sizeof(double));
        ha_init(be, &x, 9, H * hs, H * hs + 3, 2.0);
        for (int r = 0; r < 9; r++) {
            int s = r < 5 ? 0 : r < 6 ? 1 : 2;
            int pos = seqs[s].n_past + r - seqs[s].row0;
            for (int c = 0; c < H * hs; c++)
                ref[r * H * hs + c] = A(&x, r, c);
            for (int h = 0; h < H; h++)
                rope_ref(ref + r * H * hs + h * hs + off, d, pos, 10000.0, layout);
        }
        CHECK_MSG(be->o->rope(be->c, &x.t, H, hs, off, d, 10000.0f, layout, &err) == 0, "%s",
                  err.msg);
        ha_read(be, &x);
        snprintf(what, sizeof(what), "%s rope layout %d", be->name, layout);
        compare(what, x.h, x.ld, ref, NULL, 9, H * hs, 1e-5, 1.0);
        CHECK(be->o->rope(be->c, &x.t, H, hs, off + 3, d, 10000.0f, layout, &err) == VL2_EINVAL);
        ha_done(be, &x);
        free(ref);
    }
    /* wrong row count for the batch */
    {
        struct ha y;
        ha_init(be, &y, 8, 8, 8, 1.0);
        CHECK(be->o->rope(be->c, &y.t, 1, 8, 0, 8, 10000.0f, 0, &err) == VL2_EINVAL);
        ha_done(be, &y);
    }
    /* batch errors: over capacity, shared cache, bad row0 */
    seqs[1].n_past = 400;
    CHECK(be->o->begin_batch(be->c, &batch, &err) == VL2_ELIMIT);
    seqs[1].n_past = 3;
    seqs[2].kv = kv[0];
    CHECK(be->o->begin_batch(be->c, &batch, &err) == VL2_EINVAL);
    seqs[2].kv = kv[2];
    seqs[2].row0 = 7;
    CHECK(be->o->begin_batch(be->c, &batch, &err) == VL2_EINVAL);
    seqs[2].row0 = 6;
    for (int i = 0; i < 3; i++)
        be->o->kv_free(be->c, kv[i]);
}

/* ---- MHA / MLA over caches ------------------------------------------------------------- */

/* Host history of one sequence: rows of K, V (MHA) or c|k_pe (MLA), double. */
struct hist {
    double *k, *v;
    int n;
};

static void softmax_d(double *p, int n)
{
    double mx = -1e300, s = 0;
    for (int i = 0; i < n; i++)
        if (p[i] > mx)
            mx = p[i];
    for (int i = 0; i < n; i++)
        s += (p[i] = exp(p[i] - mx));
    for (int i = 0; i < n; i++)
        p[i] /= s;
}

/* Two steps over 3 sequences: step 1 prefills (7, 3, 40 rows), step 2 mixes a
 * prefill continuation with single-row decodes. */
static const int att_steps[2][3] = { { 7, 3, 40 }, { 1, 5, 1 } };

static void test_attn_mha(struct be *be)
{
    const int H = 4, KVH = 2, D = 12, NL = 2, cap = 64;
    const float scale = 1.0f / sqrtf((float)D);
    struct vl2_kv_shape ks = { .struct_size = sizeof(ks), .kind = VL2_ATTN_MHA, .n_layer = NL,
                               .n_kv_head = KVH, .head_dim = D, .dtype = VL2_DTYPE_F32, .capacity = cap };
    struct vl2_kv *kv[3];
    struct hist hs[3][2];
    int n_past[3] = { 0, 0, 0 };
    struct vl2_err err = { 0 };
    char what[128];

    CHECK(be->o->kv_token_bytes(&ks) == (size_t)NL * 2 * KVH * D * 4);
    for (int s = 0; s < 3; s++) {
        CHECK(be->o->kv_new(be->c, &ks, &kv[s], &err) == 0);
        for (int l = 0; l < NL; l++) {
            hs[s][l].k = calloc((size_t)cap * KVH * D, sizeof(double));
            hs[s][l].v = calloc((size_t)cap * KVH * D, sizeof(double));
        }
    }
    for (int step = 0; step < 2; step++) {
        struct vl2_batch_seq seqs[3];
        struct vl2_batch batch = { .struct_size = sizeof(batch), .n_seqs = 3, .seqs = seqs };
        int rows = 0;
        for (int s = 0; s < 3; s++) {
            seqs[s] = (struct vl2_batch_seq){ .row0 = rows, .n_rows = att_steps[step][s],
                                              .n_past = n_past[s], .kv = kv[s] };
            rows += att_steps[step][s];
        }
        batch.n_rows = rows;
        CHECK_MSG(be->o->begin_batch(be->c, &batch, &err) == 0, "%s", err.msg);
        for (int l = 0; l < NL; l++) {
            struct ha q, k, v, out;
            double *ref = malloc((size_t)(rows * H * D) * sizeof(double));
            double *bnd = malloc((size_t)(rows * H * D) * sizeof(double));
            double p[128];
            ha_init(be, &q, rows, H * D, H * D + 1, 1.0);
            ha_init(be, &k, rows, KVH * D, KVH * D, 1.0);
            ha_init(be, &v, rows, KVH * D, 3 * KVH * D, 1.0);
            ha_init(be, &out, rows, H * D, H * D, 1.0);
            for (int s = 0; s < 3; s++)
                for (int i = 0; i < seqs[s].n_rows; i++)
                    for (int c = 0; c < KVH * D; c++) {
                        hs[s][l].k[(n_past[s] + i) * KVH * D + c] = A(&k, seqs[s].row0 + i, c);
                        hs[s][l].v[(n_past[s] + i) * KVH * D + c] = A(&v, seqs[s].row0 + i, c);
                    }
            for (int s = 0; s < 3; s++)
                for (int i = 0; i < seqs[s].n_rows; i++) {
                    int row = seqs[s].row0 + i, pos = n_past[s] + i;
                    for (int h = 0; h < H; h++) {
                        int g = h / (H / KVH);
                        for (int u = 0; u <= pos; u++) {
                            double d = 0;
                            for (int c = 0; c < D; c++)
                                d += A(&q, row, h * D + c) * hs[s][l].k[u * KVH * D + g * D + c];
                            p[u] = d * scale;
                        }
                        softmax_d(p, pos + 1);
                        for (int c = 0; c < D; c++) {
                            double o = 0, a = 0;
                            for (int u = 0; u <= pos; u++) {
                                o += p[u] * hs[s][l].v[u * KVH * D + g * D + c];
                                a += fabs(hs[s][l].v[u * KVH * D + g * D + c]);
                            }
                            ref[row * H * D + h * D + c] = o;
                            bnd[row * H * D + h * D + c] = 1e-4 * a / (pos + 1) + 1e-5;
                        }
                    }
                }
            CHECK_MSG(be->o->attn_mha(be->c, l, &out.t, &q.t, &k.t, &v.t, H, KVH, D, scale, &err) == 0,
                      "%s", err.msg);
            ha_read(be, &out);
            snprintf(what, sizeof(what), "%s attn_mha step %d layer %d", be->name, step, l);
            compare(what, out.h, out.ld, ref, bnd, rows, H * D, 0, 0);
            CHECK(be->o->attn_mha(be->c, NL, &out.t, &q.t, &k.t, &v.t, H, KVH, D, scale, &err) ==
                  VL2_EINVAL);
            CHECK(be->o->attn_mha(be->c, l, &out.t, &q.t, &k.t, &v.t, H, 3, D, scale, &err) ==
                  VL2_EINVAL);
            CHECK(be->o->attn_mha(be->c, l, &q.t, &q.t, &k.t, &v.t, H, KVH, D, scale, &err) ==
                  VL2_EINVAL);  /* out aliasing q */
            ha_done(be, &q);
            ha_done(be, &k);
            ha_done(be, &v);
            ha_done(be, &out);
            free(ref);
            free(bnd);
        }
        for (int s = 0; s < 3; s++)
            n_past[s] += att_steps[step][s];
    }
    for (int s = 0; s < 3; s++) {
        be->o->kv_free(be->c, kv[s]);
        for (int l = 0; l < NL; l++) {
            free(hs[s][l].k);
            free(hs[s][l].v);
        }
    }
}

static void test_attn_mla(struct be *be)
{
    const int H = 3, NOPE = 8, ROPE = 6, VD = 5, LORA = 20, NL = 1, cap = 64;
    const float scale = 1.0f / sqrtf((float)(NOPE + ROPE));
    struct vl2_kv_shape ks = { .struct_size = sizeof(ks), .kind = VL2_ATTN_MLA, .n_layer = NL,
                               .kv_lora_rank = LORA, .rope_dim = ROPE, .dtype = VL2_DTYPE_F32, .capacity = cap };
    struct vl2_kv *kv[3];
    struct hist hs[3];
    int n_past[3] = { 0, 0, 0 };
    struct hw kvb;
    struct vl2_err err = { 0 };
    char what[128];

    CHECK(be->o->kv_token_bytes(&ks) == (size_t)NL * (LORA + ROPE) * 4);
    hw_init(be, &kvb, VL2_DTYPE_BF16, H * (NOPE + VD), LORA, LORA + 3, 0.5);  /* strided */
    for (int s = 0; s < 3; s++) {
        CHECK(be->o->kv_new(be->c, &ks, &kv[s], &err) == 0);
        hs[s].k = calloc((size_t)cap * LORA, sizeof(double));   /* c */
        hs[s].v = calloc((size_t)cap * ROPE, sizeof(double));   /* k_pe */
    }
    for (int step = 0; step < 2; step++) {
        struct vl2_batch_seq seqs[3];
        struct vl2_batch batch = { .struct_size = sizeof(batch), .n_seqs = 3, .seqs = seqs };
        int rows = 0;
        struct ha q, ckv, out;
        double *ref, *bnd;
        for (int s = 0; s < 3; s++) {
            seqs[s] = (struct vl2_batch_seq){ .row0 = rows, .n_rows = att_steps[step][s],
                                              .n_past = n_past[s], .kv = kv[s] };
            rows += att_steps[step][s];
        }
        batch.n_rows = rows;
        CHECK_MSG(be->o->begin_batch(be->c, &batch, &err) == 0, "%s", err.msg);
        ref = malloc((size_t)(rows * H * VD) * sizeof(double));
        bnd = malloc((size_t)(rows * H * VD) * sizeof(double));
        ha_init(be, &q, rows, H * (NOPE + ROPE), H * (NOPE + ROPE), 1.0);
        ha_init(be, &ckv, rows, LORA + ROPE, LORA + ROPE + 2, 1.0);  /* c | k_pe, as the runtime has it */
        ha_init(be, &out, rows, H * VD, H * VD + 4, 1.0);
        for (int s = 0; s < 3; s++)
            for (int i = 0; i < seqs[s].n_rows; i++) {
                for (int c = 0; c < LORA; c++)
                    hs[s].k[(n_past[s] + i) * LORA + c] = A(&ckv, seqs[s].row0 + i, c);
                for (int c = 0; c < ROPE; c++)
                    hs[s].v[(n_past[s] + i) * ROPE + c] = A(&ckv, seqs[s].row0 + i, LORA + c);
            }
        /* reference in the non-absorbed form: k_nope = W_UK c, v = W_UV c */
        for (int s = 0; s < 3; s++)
            for (int i = 0; i < seqs[s].n_rows; i++) {
                int row = seqs[s].row0 + i, pos = n_past[s] + i;
                for (int h = 0; h < H; h++) {
                    double p[128], vv[128][8], va[128][8];
                    for (int u = 0; u <= pos; u++) {
                        double d = 0;
                        for (int a = 0; a < NOPE; a++) {
                            double kn = 0;
                            for (int c = 0; c < LORA; c++)
                                kn += kvb.val[(h * (NOPE + VD) + a) * LORA + c] * hs[s].k[u * LORA + c];
                            d += A(&q, row, h * (NOPE + ROPE) + a) * kn;
                        }
                        for (int a = 0; a < ROPE; a++)
                            d += A(&q, row, h * (NOPE + ROPE) + NOPE + a) * hs[s].v[u * ROPE + a];
                        p[u] = d * scale;
                        for (int a = 0; a < VD; a++) {
                            double x = 0, ab = 0;
                            for (int c = 0; c < LORA; c++) {
                                double t = kvb.val[(h * (NOPE + VD) + NOPE + a) * LORA + c] *
                                           hs[s].k[u * LORA + c];
                                x += t;
                                ab += fabs(t);
                            }
                            vv[u][a] = x;
                            va[u][a] = ab;
                        }
                    }
                    softmax_d(p, pos + 1);
                    for (int a = 0; a < VD; a++) {
                        double o = 0, ab = 0;
                        for (int u = 0; u <= pos; u++) {
                            o += p[u] * vv[u][a];
                            ab += va[u][a];
                        }
                        ref[row * H * VD + h * VD + a] = o;
                        bnd[row * H * VD + h * VD + a] = 1e-4 * ab / (pos + 1) + 1e-5;
                    }
                }
            }
        {
            struct vl2_tensor c = vl2_tensor_cols(&ckv.full, 0, LORA);
            struct vl2_tensor kpe = vl2_tensor_cols(&ckv.full, LORA, ROPE);
            CHECK_MSG(be->o->attn_mla(be->c, 0, &out.t, &q.t, &c, &kpe, &kvb.t, H, NOPE, ROPE, VD,
                                      scale, &err) == 0, "%s", err.msg);
            ha_read(be, &out);
            snprintf(what, sizeof(what), "%s attn_mla step %d", be->name, step);
            compare(what, out.h, out.ld, ref, bnd, rows, H * VD, 0, 0);
            CHECK(be->o->attn_mla(be->c, 0, &out.t, &q.t, &c, &kpe, &kvb.t, H, NOPE, ROPE, VD + 1,
                                  scale, &err) == VL2_EINVAL);
        }
        ha_done(be, &q);
        ha_done(be, &ckv);
        ha_done(be, &out);
        free(ref);
        free(bnd);
        for (int s = 0; s < 3; s++)
            n_past[s] += att_steps[step][s];
    }
    for (int s = 0; s < 3; s++) {
        be->o->kv_free(be->c, kv[s]);
        free(hs[s].k);
        free(hs[s].v);
    }
    hw_done(be, &kvb);
}

/* ---- MoE ------------------------------------------------------------------------------- */

struct moe_case {
    const char *name;
    int n_expert, top_k, scoring, method, n_group, topk_group, norm, shared, rows;
    float scale;
    float bias_off;  /* added to the random correction bias */
};

/* Naive expert MLP in double; accumulates |terms| for the bound. */
static void mlp_ref(const double *x, int d, int inter, const double *g, const double *u,
                    const double *dn, double *y, double *ya)
{
    double *h = malloc((size_t)inter * sizeof(double));
    double *ha = malloc((size_t)inter * sizeof(double));
    for (int i = 0; i < inter; i++) {
        double a = 0, b = 0, aa = 0, ba = 0;
        for (int c = 0; c < d; c++) {
            a += g[i * d + c] * x[c];
            b += u[i * d + c] * x[c];
            aa += fabs(g[i * d + c] * x[c]);
            ba += fabs(u[i * d + c] * x[c]);
        }
        h[i] = a / (1 + exp(-a)) * b;
        ha[i] = aa * ba + fabs(h[i]);
    }
    for (int c = 0; c < d; c++) {
        double s = 0, sa = 0;
        for (int i = 0; i < inter; i++) {
            s += dn[c * inter + i] * h[i];
            sa += fabs(dn[c * inter + i]) * ha[i];
        }
        y[c] = s;
        ya[c] = sa;
    }
    free(h);
    free(ha);
}

/* top-k indices of v (largest first); returns the gap between the k-th and
 * (k+1)-th value (how safe the choice is against rounding). */
static double topk_d(const double *v, int n, int k, int *idx)
{
    char used[512] = { 0 };
    double next = -1e300;
    for (int s = 0; s < k; s++) {
        int best = -1;
        for (int i = 0; i < n; i++)
            if (!used[i] && (best < 0 || v[i] > v[best]))
                best = i;
        used[best] = 1;
        idx[s] = best;
    }
    for (int i = 0; i < n; i++)
        if (!used[i] && v[i] > next)
            next = v[i];
    return k < n ? v[idx[k - 1]] - next : 1e300;
}

static void test_moe_case(struct be *be, const struct moe_case *mc)
{
    const int d = 37, inter = 21, E = mc->n_expert, K = mc->top_k, n = mc->rows;
    const int S = mc->shared ? 2 * inter : 0;
    struct hw router, bias, *gate = calloc((size_t)E, sizeof(*gate)), *up = calloc((size_t)E, sizeof(*up)),
              *down = calloc((size_t)E, sizeof(*down)), shg, shu, shd;
    const struct vl2_tensor **pg = calloc((size_t)E, sizeof(*pg)), **pu = calloc((size_t)E, sizeof(*pu)),
                            **pd = calloc((size_t)E, sizeof(*pd));
    struct ha x, out;
    struct vl2_moe_layer L = { .struct_size = sizeof(L) };
    struct vl2_err err = { 0 };
    double *ref = calloc((size_t)n * d, sizeof(double)), *bnd = calloc((size_t)n * d, sizeof(double));
    double *y = malloc((size_t)d * sizeof(double)), *ya = malloc((size_t)d * sizeof(double));
    int skipped = 0;
    char what[160];

    hw_init(be, &router, VL2_DTYPE_BF16, E, d, d, 1.0);
    hw_init(be, &bias, VL2_DTYPE_F32, 1, E, E, 0.3);
    for (int e = 0; e < E; e++) {
        float f = (float)(bias.val[e] + mc->bias_off);
        memcpy((char *)bias.raw + 4 * e, &f, 4);
        bias.val[e] = f;
    }
    for (int e = 0; e < E; e++) {
        hw_init(be, &gate[e], e % 3 == 0 ? VL2_DTYPE_F32 : VL2_DTYPE_BF16, inter, d, d, 0.5);
        hw_init(be, &up[e], VL2_DTYPE_BF16, inter, d, d, 0.5);
        hw_init(be, &down[e], e % 2 ? VL2_DTYPE_F16 : VL2_DTYPE_BF16, d, inter, inter, 0.5);
        pg[e] = &gate[e].t;
        pu[e] = &up[e].t;
        pd[e] = &down[e].t;
    }
    if (S) {
        hw_init(be, &shg, VL2_DTYPE_BF16, S, d, d, 0.5);
        hw_init(be, &shu, VL2_DTYPE_BF16, S, d, d, 0.5);
        hw_init(be, &shd, VL2_DTYPE_BF16, d, S, S, 0.5);
        L.sh_gate = &shg.t;
        L.sh_up = &shu.t;
        L.sh_down = &shd.t;
    }
    L.router = &router.t;
    L.bias = mc->method == VL2_MOE_NOAUX_TC ? &bias.t : NULL;
    L.gate = pg;
    L.up = pu;
    L.down = pd;
    L.n_expert = E;
    L.top_k = K;
    L.scoring = mc->scoring;
    L.method = mc->method;
    L.n_group = mc->n_group;
    L.topk_group = mc->topk_group;
    L.norm_topk_prob = mc->norm;
    L.routed_scale = mc->scale;
    ha_init(be, &x, n, d, d + 3, 1.0);
    ha_init(be, &out, n, d, d, 1.0);

    for (int i = 0; i < n; i++) {
        double xr[64], lg[64], sc[64], ch[64], gs[64], w[16], wsum = 0, gap;
        int idx[16], gidx[64];
        for (int c = 0; c < d; c++)
            xr[c] = A(&x, i, c);
        for (int e = 0; e < E; e++) {
            lg[e] = 0;
            for (int c = 0; c < d; c++)
                lg[e] += router.val[e * d + c] * xr[c];
        }
        if (mc->scoring == VL2_MOE_SOFTMAX) {
            memcpy(sc, lg, (size_t)E * sizeof(double));
            softmax_d(sc, E);
        } else {
            for (int e = 0; e < E; e++)
                sc[e] = 1 / (1 + exp(-lg[e]));
        }
        if (mc->method == VL2_MOE_GREEDY) {
            gap = topk_d(sc, E, K, idx);
            for (int s = 0; s < K; s++)
                w[s] = sc[idx[s]];
        } else {
            int per = E / mc->n_group;
            bool noaux = mc->method == VL2_MOE_NOAUX_TC;
            double ggap;
            for (int e = 0; e < E; e++)
                ch[e] = noaux ? sc[e] + bias.val[e] : sc[e];
            for (int g = 0; g < mc->n_group; g++) {
                int t2[2];
                if (noaux) {
                    topk_d(ch + g * per, per, 2, t2);
                    gs[g] = ch[g * per + t2[0]] + ch[g * per + t2[1]];
                } else {
                    topk_d(ch + g * per, per, 1, t2);
                    gs[g] = ch[g * per + t2[0]];
                }
            }
            ggap = topk_d(gs, mc->n_group, mc->topk_group, gidx);
            for (int g = 0; g < mc->n_group; g++) {
                bool keep = false;
                for (int t = 0; t < mc->topk_group; t++)
                    keep |= gidx[t] == g;
                if (!keep)
                    for (int e = 0; e < per; e++)
                        ch[g * per + e] = 0.0;
            }
            gap = topk_d(ch, E, K, idx);
            if (ggap < gap)
                gap = ggap;
            for (int s = 0; s < K; s++)
                w[s] = noaux ? sc[idx[s]] : ch[idx[s]];
        }
        if (gap < 1e-5) {
            skipped++;
            for (int c = 0; c < d; c++)
                bnd[i * d + c] = INFINITY;
            continue;
        }
        for (int s = 0; s < K; s++)
            wsum += w[s];
        for (int s = 0; s < K; s++)
            w[s] = (K > 1 && mc->norm) ? w[s] / (wsum + 1e-20) * mc->scale : w[s] * mc->scale;
        for (int s = 0; s < K; s++) {
            int e = idx[s];
            mlp_ref(xr, d, inter, gate[e].val, up[e].val, down[e].val, y, ya);
            for (int c = 0; c < d; c++) {
                ref[i * d + c] += w[s] * y[c];
                bnd[i * d + c] += fabs(w[s]) * ya[c];
            }
        }
        if (S) {
            mlp_ref(xr, d, S, shg.val, shu.val, shd.val, y, ya);
            for (int c = 0; c < d; c++) {
                ref[i * d + c] += y[c];
                bnd[i * d + c] += ya[c];
            }
        }
        for (int c = 0; c < d; c++)
            bnd[i * d + c] = bnd[i * d + c] * 2e-5 + 1e-6;
    }
    CHECK(skipped * 10 <= n);
    CHECK_MSG(be->o->moe(be->c, &out.t, &x.t, &L, &err) == 0, "%s", err.msg);
    ha_read(be, &out);
    snprintf(what, sizeof(what), "%s moe %s (%d rows, %d skipped as near ties)", be->name, mc->name,
             n, skipped);
    compare(what, out.h, out.ld, ref, bnd, n, d, 0, 0);

    /* errors: out aliasing x, bad group count, missing bias for noaux */
    CHECK(be->o->moe(be->c, &x.t, &x.t, &L, &err) == VL2_EINVAL);
    {
        struct vl2_moe_layer bad = L;
        bad.method = VL2_MOE_NOAUX_TC;
        bad.bias = NULL;
        bad.n_group = 1;
        bad.topk_group = 1;
        CHECK(be->o->moe(be->c, &out.t, &x.t, &bad, &err) == VL2_EINVAL);
        bad = L;
        bad.method = VL2_MOE_GROUP_LIMITED;
        bad.n_group = 3;
        bad.topk_group = 1;
        CHECK(be->o->moe(be->c, &out.t, &x.t, &bad, &err) == VL2_EINVAL);
        bad = L;
        bad.top_k = E + 1;
        CHECK(be->o->moe(be->c, &out.t, &x.t, &bad, &err) == VL2_EINVAL);
        bad = L;
        bad.struct_size = sizeof(bad) - 4;
        CHECK(be->o->moe(be->c, &out.t, &x.t, &bad, &err) == VL2_EABI);
        CHECK_MSG(strstr(err.msg, "vl2_moe_layer"), "%s", err.msg);
    }

    ha_done(be, &x);
    ha_done(be, &out);
    hw_done(be, &router);
    hw_done(be, &bias);
    for (int e = 0; e < E; e++) {
        hw_done(be, &gate[e]);
        hw_done(be, &up[e]);
        hw_done(be, &down[e]);
    }
    if (S) {
        hw_done(be, &shg);
        hw_done(be, &shu);
        hw_done(be, &shd);
    }
    free(gate);
    free(up);
    free(down);
    free(pg);
    free(pu);
    free(pd);
    free(ref);
    free(bnd);
    free(y);
    free(ya);
}

static void test_moe(struct be *be)
{
    static const struct moe_case cases[] = {
        { "softmax greedy (tiny/small)", 8, 2, VL2_MOE_SOFTMAX, VL2_MOE_GREEDY, 0, 0, 0, 1, 1, 1.0f, 0.0f },
        { "softmax greedy, 40 rows", 8, 2, VL2_MOE_SOFTMAX, VL2_MOE_GREEDY, 0, 0, 0, 1, 40, 1.0f, 0.0f },
        { "softmax greedy, no shared, 600 rows", 6, 3, VL2_MOE_SOFTMAX, VL2_MOE_GREEDY, 0, 0, 0, 0, 600, 1.0f, 0.0f },
        { "softmax group-limited", 16, 3, VL2_MOE_SOFTMAX, VL2_MOE_GROUP_LIMITED, 4, 2, 0, 1, 9, 1.0f, 0.0f },
        { "sigmoid noaux_tc (base)", 16, 4, VL2_MOE_SIGMOID, VL2_MOE_NOAUX_TC, 4, 2, 1, 1, 33, 2.0f, 0.0f },
        { "sigmoid noaux_tc, one group", 8, 2, VL2_MOE_SIGMOID, VL2_MOE_NOAUX_TC, 1, 1, 1, 1, 5, 2.0f, 0.0f },
        { "sigmoid greedy top-1 norm", 8, 1, VL2_MOE_SIGMOID, VL2_MOE_GREEDY, 0, 0, 1, 0, 3, 1.5f, 0.0f },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        test_moe_case(be, &cases[i]);
}

/* ---- memory, arguments ------------------------------------------------------------------ */

/* argmax: the first largest per row; NaN never wins; a row starting with
 * NaN gives 0; all -inf gives 0.  Output as a column and as a row. */
static void test_argmax(struct be *be)
{
    enum { N = 6, C = 1000, LD = 1003 };
    struct vl2_err err = { 0 };
    struct vl2_tensor out, bad;
    int64_t ne_col[2] = { N, 1 }, ne_row[2] = { 1, N }, ne_bad[2] = { N, 1 };
    int32_t got[N], want[N];
    struct ha x;

    ha_init(be, &x, N, C, LD, 4.0);
    A(&x, 1, 100) = 9.0f;            /* ties: the first */
    A(&x, 1, 700) = 9.0f;
    A(&x, 2, 0) = NAN;               /* starts with NaN: 0 */
    A(&x, 2, 5) = 50.0f;
    A(&x, 3, 17) = NAN;              /* NaN inside: skipped */
    A(&x, 3, 900) = 20.0f;
    for (int c = 0; c < C; c++)
        A(&x, 4, c) = -INFINITY;
    A(&x, 5, C - 1) = 30.0f;         /* the last column */
    ha_write(be, &x);
    for (int r = 0; r < N; r++) {
        float best = A(&x, r, 0);
        want[r] = 0;
        if (best == best)
            for (int c = 1; c < C; c++)
                if (A(&x, r, c) > best) {
                    best = A(&x, r, c);
                    want[r] = c;
                }
    }
    CHECK(want[1] == 100 && want[2] == 0 && want[3] == 900 && want[4] == 0 && want[5] == C - 1);
    for (int form = 0; form < 2; form++) {
        CHECK(be->o->alloc(be->c, &out, VL2_DTYPE_I32, 2, form ? ne_row : ne_col, &err) == 0);
        memset(got, 0xff, sizeof(got));
        CHECK_MSG(be->o->argmax(be->c, &out, &x.t, &err) == 0, "%s", err.msg);
        CHECK(be->o->read(be->c, &out, 0, got, sizeof(got), &err) == 0);
        for (int r = 0; r < N; r++)
            CHECK_MSG(got[r] == want[r], "%s argmax row %d (%s): %d, expected %d", be->name, r,
                      form ? "row" : "column", got[r], want[r]);
        be->o->free_tensor(be->c, &out);
    }
    /* an F32 output and one of the wrong length are refused */
    CHECK(be->o->alloc(be->c, &bad, VL2_DTYPE_F32, 2, ne_bad, &err) == 0);
    CHECK(be->o->argmax(be->c, &bad, &x.t, &err) == VL2_EINVAL);
    be->o->free_tensor(be->c, &bad);
    ne_bad[0] = N - 1;
    CHECK(be->o->alloc(be->c, &bad, VL2_DTYPE_I32, 2, ne_bad, &err) == 0);
    CHECK(be->o->argmax(be->c, &bad, &x.t, &err) == VL2_EINVAL);
    be->o->free_tensor(be->c, &bad);
    ha_done(be, &x);
}

static void test_memory(struct be *be)
{
    struct vl2_tensor t;
    struct vl2_err err = { 0 };
    int64_t ne[2] = { 10, 20 }, bad[2] = { -1, 4 };
    size_t before = be->o->mem_used(be->c);
    float buf[200];

    CHECK(be->o->alloc(be->c, &t, VL2_DTYPE_F32, 2, ne, &err) == 0);
    CHECK(t.rows == 10 && t.cols == 20 && t.ld == 20);
    CHECK(((uintptr_t)t.data & 63) == 0);  /* documented: 64-byte aligned */
    CHECK(be->o->mem_used(be->c) >= before + 800);
    CHECK(be->o->write(be->c, &t, 0, buf, 800, &err) == 0);
    CHECK(be->o->write(be->c, &t, 4, buf, 800, &err) == VL2_EINVAL);
    CHECK(be->o->read(be->c, &t, 796, buf, 8, &err) == VL2_EINVAL);
    CHECK(be->o->sync(be->c, &err) == 0);
    be->o->free_tensor(be->c, &t);
    CHECK(be->o->mem_used(be->c) == before);
    CHECK(be->o->alloc(be->c, &t, VL2_DTYPE_F32, 2, bad, &err) == VL2_EINVAL);
    CHECK(be->o->alloc(be->c, &t, VL2_DTYPE_Q4, 2, ne, &err) == VL2_EUNSUPPORTED);
    CHECK(be->o->alloc(be->c, &t, VL2_DTYPE_F32, 5, ne, &err) == VL2_EINVAL);
    {
        struct vl2_kv_shape ks = { .struct_size = sizeof(ks), .kind = VL2_ATTN_MLA, .n_layer = 2,
                                   .kv_lora_rank = 8, .rope_dim = 4, .dtype = VL2_DTYPE_BF16,
                                   .capacity = 4 };
        struct vl2_kv *kv;
        CHECK(be->o->kv_new(be->c, &ks, &kv, &err) == VL2_EUNSUPPORTED);
        ks.dtype = VL2_DTYPE_F32;
        CHECK(be->o->kv_token_bytes(&ks) == 2 * (8 + 4) * sizeof(float));
        /* a shape from a caller built with another header: refused, not read */
        ks.struct_size = sizeof(ks) - 4;
        CHECK(be->o->kv_new(be->c, &ks, &kv, &err) == VL2_EABI);
        CHECK_MSG(strstr(err.msg, "vl2_kv_shape") && strstr(err.msg, "struct_size"), "%s",
                  err.msg);
        CHECK(be->o->kv_token_bytes(&ks) == 0);
        ks.struct_size = 0;
        CHECK(be->o->kv_new(be->c, &ks, &kv, &err) == VL2_EABI);
        ks.struct_size = sizeof(ks) + 8;
        CHECK(be->o->kv_new(be->c, &ks, &kv, &err) == VL2_EABI);
        ks.struct_size = sizeof(ks);
        ks.kind = 7;
        CHECK(be->o->kv_new(be->c, &ks, &kv, &err) == VL2_EINVAL);
        CHECK(be->o->kv_token_bytes(&ks) == 0);
    }
    /* linear with mismatched shapes, and NULL tensors */
    {
        struct ha x, o;
        struct hw w;
        ha_init(be, &x, 2, 5, 5, 1.0);
        ha_init(be, &o, 2, 3, 3, 1.0);
        hw_init(be, &w, VL2_DTYPE_BF16, 3, 6, 6, 1.0);
        CHECK(be->o->linear(be->c, &o.t, &x.t, &w.t, NULL, &err) == VL2_EINVAL);
        CHECK(strstr(err.msg, "linear") != NULL);
        CHECK(be->o->linear(be->c, &o.t, NULL, &w.t, NULL, &err) == VL2_EINVAL);
        CHECK(be->o->linear(be->c, &x.t, &x.t, &w.t, NULL, &err) == VL2_EINVAL);
        ha_done(be, &x);
        ha_done(be, &o);
        hw_done(be, &w);
    }
}

/* ---- supports_op ---------------------------------------------------------------------------- */

/* What supports_op says is what the ops do: weight() and kv_new() succeed
 * for exactly the dtypes it accepts (F32, F16, BF16 weights; F32 caches) and
 * refuse the others (Q8, Q4; 16-bit caches) with VL2_EUNSUPPORTED. */
static void test_supports(struct be *be)
{
    static const int dtypes[] = { VL2_DTYPE_F32, VL2_DTYPE_F16, VL2_DTYPE_BF16, VL2_DTYPE_I32,
                                  VL2_DTYPE_Q8, VL2_DTYPE_Q4 };
    static const int weight_ops[] = { VL2_OP_WEIGHT, VL2_OP_EMBED, VL2_OP_LINEAR, VL2_OP_MOE };
    static const int cache_ops[] = { VL2_OP_KV, VL2_OP_ATTN_MHA, VL2_OP_ATTN_MLA };
    static const uint16_t host[64];
    const int64_t ne[2] = { 4, 8 };
    struct vl2_err err = { 0 };

    CHECK(be->o->supports_op != NULL);
    if (!be->o->supports_op)
        return;
    for (size_t i = 0; i < sizeof(dtypes) / sizeof(dtypes[0]); i++) {
        const int dt = dtypes[i];
        const int wok = dt == VL2_DTYPE_F32 || dt == VL2_DTYPE_F16 || dt == VL2_DTYPE_BF16;
        struct vl2_kv_shape ks = { .struct_size = sizeof(ks), .kind = VL2_ATTN_MHA, .n_layer = 1,
                                   .n_kv_head = 1, .head_dim = 4, .dtype = dt, .capacity = 4 };
        struct vl2_tensor t;
        struct vl2_kv *kv = NULL;
        int r;

        for (size_t k = 0; k < sizeof(weight_ops) / sizeof(weight_ops[0]); k++)
            CHECK_MSG(be->o->supports_op(be->c, weight_ops[k], dt) == wok, "op %d dtype %d",
                      weight_ops[k], dt);
        for (size_t k = 0; k < sizeof(cache_ops) / sizeof(cache_ops[0]); k++)
            CHECK_MSG(be->o->supports_op(be->c, cache_ops[k], dt) == (dt == VL2_DTYPE_F32),
                      "op %d dtype %d", cache_ops[k], dt);
        if (dt == VL2_DTYPE_I32)
            continue;  /* weight() takes I32 tensors (ids), which no model op reads */
        r = be->o->weight(be->c, &t, dt, 2, ne, host, &err);
        CHECK_MSG(wok ? r == 0 : r == VL2_EUNSUPPORTED, "weight dtype %d: %d %s", dt, r,
                  err.msg);
        if (r == 0)
            be->o->free_tensor(be->c, &t);
        r = be->o->kv_new(be->c, &ks, &kv, &err);
        CHECK_MSG(dt == VL2_DTYPE_F32 ? r == 0 : r == VL2_EUNSUPPORTED, "kv dtype %d: %d %s",
                  dt, r, err.msg);
        if (r == 0)
            be->o->kv_free(be->c, kv);
    }
    /* ops without weights take F32 activations (dtype -1: no weight) */
    for (int op = VL2_OP_RMSNORM; op <= VL2_OP_ATTN_FULL; op++) {
        CHECK_MSG(be->o->supports_op(be->c, op, -1) == 1, "op %d", op);
        CHECK_MSG(be->o->supports_op(be->c, op, VL2_DTYPE_Q8) == 0, "op %d", op);
    }
    CHECK(be->o->supports_op(be->c, VL2_OP_ROPE, -1) == 1);
    CHECK(be->o->supports_op(be->c, VL2_OP_ARGMAX, -1) == 1);
    /* operations the table does not know */
    CHECK(be->o->supports_op(be->c, 0, VL2_DTYPE_F32) == 0);
    CHECK(be->o->supports_op(be->c, VL2_OP_COUNT, VL2_DTYPE_F32) == 0);
    CHECK(be->o->supports_op(be->c, -5, -1) == 0);
}

/* ---- thread-count independence ------------------------------------------------------------ */

/* linear (both paths), attention and moe on 1 and 3 threads: bit-identical. */
static void run_fixed(struct be *be, float *res, size_t *n_res)
{
    struct vl2_err err = { 0 };
    size_t n = 0;

    rng = 777;
    for (int m = 1; m <= 40; m += 39) {
        struct hw w;
        struct ha x, o;
        hw_init(be, &w, VL2_DTYPE_BF16, 300, 129, 129, 1.0);
        ha_init(be, &x, m, 129, 129, 1.0);
        ha_init(be, &o, m, 300, 300, 1.0);
        CHECK(be->o->linear(be->c, &o.t, &x.t, &w.t, NULL, &err) == 0);
        ha_read(be, &o);
        memcpy(res + n, o.h, (size_t)m * 300 * 4);
        n += (size_t)m * 300;
        hw_done(be, &w);
        ha_done(be, &x);
        ha_done(be, &o);
    }
    *n_res = n;
}

static void test_threads(const char *dir, const char *isa)
{
    struct be a, b;
    struct vl2_backend_params p = { .struct_size = sizeof(p), .n_threads = 1 };
    struct vl2_err err = { 0 };
    char opt[64];
    float *ra = malloc(40000 * 4), *rb = malloc(40000 * 4);
    size_t na = 0, nb = 0;

    snprintf(opt, sizeof(opt), "isa=%s", isa);
    p.options = opt;
    CHECK(vl2_backend_load(&a.b, "cpu", dir, &p, &err) == 0);
    p.n_threads = 3;
    CHECK(vl2_backend_load(&b.b, "cpu", dir, &p, &err) == 0);
    a.o = a.b->ops;
    a.c = a.b->ctx;
    b.o = b.b->ops;
    b.c = b.b->ctx;
    run_fixed(&a, ra, &na);
    run_fixed(&b, rb, &nb);
    CHECK(na == nb && memcmp(ra, rb, na * 4) == 0);
    vl2_backend_unload(a.b);
    vl2_backend_unload(b.b);
    free(ra);
    free(rb);
}

/* ---- bf16 precision (kern.h) --------------------------------------------------------- */

static double round_bf(double v)
{
    return bf2d(f2bf((float)v));
}

/* linear with precision=bf16: both operands rounded to bf16 (ties to even)
 * for products of at least @min_rows rows, F32 accumulation: the reference
 * rounds x and w the same way and keeps the F32 bound of test_linear (the
 * products of bf16 values are exact in F32).  Without the rounding the
 * error would be ~2^-9 of each product, far over the bound. */
static void test_linear_bf16(struct be *be, int64_t min_rows)
{
    static const int64_t shapes[][3] = {
        { 1, 67, 45 }, { 2, 33, 5 }, { 3, 130, 33 }, { 17, 300, 129 }, { 16, 513, 70 },
        { 40, 31, 300 }, { 300, 64, 40 }, { 729, 100, 70 }, { 800, 40, 37 },
        { 40, 64, 300 }, { 64, 130, 45 }, { 33, 2100, 50 }, { 48, 256, 13 }, { 65, 64, 40 },
    };
    static const int dts[] = { VL2_DTYPE_BF16, VL2_DTYPE_F32, VL2_DTYPE_F16 };
    char what[160];

    for (size_t si = 0; si < sizeof(shapes) / sizeof(shapes[0]); si++)
        for (size_t di = 0; di < 3; di++)
            for (int variant = 0; variant < 2; variant++) {
                int64_t m = shapes[si][0], k = shapes[si][1], n = shapes[si][2];
                int rounded = m >= min_rows;
                struct hw w, bias;
                struct ha x, out;
                struct vl2_err err = { 0 };
                double *ref, *bnd;
                int r;

                if (m >= 729 && di > 0)
                    continue;   /* one dtype is enough for the big one */
                ref = malloc((size_t)(m * n) * sizeof(double));
                bnd = malloc((size_t)(m * n) * sizeof(double));
                hw_init(be, &w, dts[di], n, k, variant ? k + 3 : k, 1.0);
                hw_init(be, &bias, VL2_DTYPE_F32, 1, n, n, 1.0);
                ha_init(be, &x, m, k, variant ? k + 5 : k, 1.0);
                ha_init(be, &out, m, n, variant ? n + 2 : n, 1.0);
                r = be->o->linear(be->c, &out.t, &x.t, &w.t, variant ? &bias.t : NULL, &err);
                CHECK_MSG(r == 0, "linear: %s", err.msg);
                ha_read(be, &out);
                for (int64_t i = 0; i < m; i++)
                    for (int64_t j = 0; j < n; j++) {
                        double s = 0, a = 0;
                        for (int64_t c = 0; c < k; c++) {
                            double xv = A(&x, i, c), wv = w.val[j * k + c];
                            if (rounded) {
                                xv = round_bf(xv);
                                wv = round_bf(wv);
                            }
                            s += xv * wv;
                            a += fabs(xv * wv);
                        }
                        if (variant) {
                            s += bias.val[j];
                            a += fabs(bias.val[j]);
                        }
                        ref[i * n + j] = s;
                        bnd[i * n + j] = 2e-5 * a + 1e-6;
                    }
                snprintf(what, sizeof(what), "%s bf16 linear %lldx%lldx%lld dtype %d%s%s", be->name,
                         (long long)m, (long long)k, (long long)n, dts[di],
                         variant ? " strided+bias" : "", rounded ? "" : " (gemv, f32)");
                compare(what, out.h, out.ld, ref, bnd, m, n, 0, 0);
                ha_done(be, &x);
                ha_done(be, &out);
                hw_done(be, &w);
                hw_done(be, &bias);
                free(ref);
                free(bnd);
            }
}

/* The same results for 1 and 3 threads in bf16 precision (@opt: isa=...). */
static void test_threads_bf16(const char *dir, const char *isa)
{
    struct be a, b;
    struct vl2_backend_params p = { .struct_size = sizeof(p), .n_threads = 1 };
    struct vl2_err err = { 0 };
    char opt[96];
    float *ra = malloc(40000 * 4), *rb = malloc(40000 * 4);
    size_t na = 0, nb = 0;

    snprintf(opt, sizeof(opt), "isa=%s,precision=bf16,blas_min_rows=1", isa);
    p.options = opt;
    CHECK_MSG(vl2_backend_load(&a.b, "cpu", dir, &p, &err) == 0, "%s", err.msg);
    if (check_failures)
        goto out_free;
    p.n_threads = 3;
    CHECK_MSG(vl2_backend_load(&b.b, "cpu", dir, &p, &err) == 0, "%s", err.msg);
    if (check_failures) {
        vl2_backend_unload(a.b);
        goto out_free;
    }
    a.o = a.b->ops;
    a.c = a.b->ctx;
    b.o = b.b->ops;
    b.c = b.b->ctx;
    run_fixed(&a, ra, &na);
    run_fixed(&b, rb, &nb);
    CHECK_MSG(na == nb && memcmp(ra, rb, na * 4) == 0, "bf16 %s: 1 and 3 threads differ", isa);
    vl2_backend_unload(a.b);
    vl2_backend_unload(b.b);
out_free:
    free(ra);
    free(rb);
}

/* precision= (a production option): f32 and bf16 accepted, anything else
 * refused with a message naming it. */
static void test_precision_option(const char *dir)
{
    static const char *bad[] = { "precision=f16", "precision=BF16", "precision=" };
    struct vl2_backend_params p = { .struct_size = sizeof(p), .n_threads = 1,
                                    .options = "precision=f32" };
    struct vl2_err err = { 0 };
    struct vl2_backend *b = NULL;

    CHECK_MSG(vl2_backend_load(&b, "cpu", dir, &p, &err) == 0, "%s", err.msg);
    if (b) {
        CHECK(strstr(b->ops->describe(b->ctx), "precision f32") != NULL);
        vl2_backend_unload(b);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        b = NULL;
        p.options = bad[i];
        memset(&err, 0, sizeof(err));
        CHECK_MSG(vl2_backend_load(&b, "cpu", dir, &p, &err) == VL2_EINVAL, "%s accepted", bad[i]);
        CHECK_MSG(strstr(err.msg, "precision") != NULL, "%s: message '%s'", bad[i], err.msg);
        if (b)
            vl2_backend_unload(b);
    }
}

/* attn_full of n_seq sequences of L tokens, H heads of D, against a double
 * reference; @rounded: q, k, v rounded to bf16 in the reference and the
 * bound widened by the bf16 rounding of the probabilities (2^-9 of
 * sum_u p_u |v_u| / sum_u p_u). */
static void attn_full_case(struct be *be, int L, int H, int D, int n_seq, int rounded)
{
    const float scale = 1.0f / sqrtf((float)D);
    struct ha qkv, out;
    struct vl2_err err = { 0 };
    double *ref = malloc((size_t)n_seq * L * H * D * sizeof(double));
    double *bnd = malloc((size_t)n_seq * L * H * D * sizeof(double));
    double *p = malloc((size_t)L * sizeof(double));
    char what[160];
#define QKV(r, c) (rounded ? round_bf(A(&qkv, (r), (c))) : (double)A(&qkv, (r), (c)))

    ha_init(be, &qkv, (int64_t)n_seq * L, 3 * H * D, 3 * H * D + 7, 1.0);
    ha_init(be, &out, (int64_t)n_seq * L, H * D, H * D + 3, 1.0);
    for (int s = 0; s < n_seq; s++)
        for (int h = 0; h < H; h++)
            for (int t = 0; t < L; t++) {
                double mx = -1e300, sum = 0;
                int row = s * L + t;
                for (int u = 0; u < L; u++) {
                    double d = 0;
                    for (int c = 0; c < D; c++)
                        d += QKV(row, h * D + c) * QKV(s * L + u, H * D + h * D + c);
                    p[u] = d * scale;
                    if (p[u] > mx)
                        mx = p[u];
                }
                for (int u = 0; u < L; u++)
                    sum += (p[u] = exp(p[u] - mx));
                for (int c = 0; c < D; c++) {
                    double o = 0, a = 0, pa = 0;
                    for (int u = 0; u < L; u++) {
                        double v = QKV(s * L + u, 2 * H * D + h * D + c);
                        o += p[u] / sum * v;
                        a += fabs(v);
                        pa += p[u] / sum * fabs(v);
                    }
                    ref[(size_t)row * H * D + h * D + c] = o;
                    bnd[(size_t)row * H * D + h * D + c] =
                        2e-5 * a / L * 4 + 1e-6 + (rounded ? 1.1 * pa / 512 : 0);
                }
            }
#undef QKV
    CHECK_MSG(be->o->attn_full(be->c, &out.t, &qkv.t, L, H, D, scale, &err) == 0, "%s", err.msg);
    ha_read(be, &out);
    snprintf(what, sizeof(what), "%s attn_full L %d H %d D %d x%d%s", be->name, L, H, D, n_seq,
             rounded ? " bf16" : "");
    compare(what, out.h, out.ld, ref, bnd, (int64_t)n_seq * L, H * D, 0, 0);
    ha_done(be, &qkv);
    ha_done(be, &out);
    free(ref);
    free(bnd);
    free(p);
}

/* The fused attn_full kernel (attn_full=fused, and precision=bf16 where it
 * is the default) on one and several key blocks, odd sizes, D over 80. */
static void test_attn_fused(const char *dir)
{
    static const char *opts[] = { "isa=avx512,attn_full=fused", "isa=avx512,precision=bf16",
                                  "isa=avx2,precision=bf16", "isa=avx512,attn_full=matrix" };
    static const int cases[][4] = {
        { 45, 3, 10, 2 }, { 1, 2, 16, 3 }, { 2, 1, 7, 1 }, { 130, 2, 72, 1 },
        { 129, 1, 100, 2 }, { 257, 2, 17, 1 }, { 729, 1, 72, 1 },
    };

    for (int oi = 0; oi < 4; oi++)
        for (int nt = 1; nt <= 3; nt += 2) {
            struct vl2_backend_params p = { .struct_size = sizeof(p), .n_threads = nt,
                                            .options = opts[oi] };
            struct vl2_err err = { 0 };
            struct be be;
            int before = check_failures, r, rounded;

            r = vl2_backend_load(&be.b, "cpu", dir, &p, &err);
            if (r == VL2_EUNSUPPORTED) {
                printf("skip %s: %s\n", opts[oi], err.msg);
                break;
            }
            CHECK_MSG(r == 0, "%s", err.msg);
            if (r < 0)
                continue;
            be.o = be.b->ops;
            be.c = be.b->ctx;
            snprintf(be.name, sizeof(be.name), "[%s x%d]", opts[oi], nt);
            rounded = oi == 1 && strstr(be.o->describe(be.c), "vdpbf16ps") != NULL;
            for (size_t ci = 0; ci < sizeof(cases) / sizeof(cases[0]); ci++)
                attn_full_case(&be, cases[ci][0], cases[ci][1], cases[ci][2], cases[ci][3],
                               rounded);
            printf("%s attn_full: %s\n", be.name, check_failures == before ? "ok" : "FAILED");
            vl2_backend_unload(be.b);
        }
}

/* bf16 linear on every instruction set (@dir: the plugin with the knobs,
 * for blas_min_rows=1: the blocked kernel on 1..15 rows too). */
static void test_bf16_all(const char *dir)
{
    static const char *isas[] = { "scalar", "avx2", "avx512" };
    static const char *extra[] = { "", ",blas_min_rows=1" };
    static const int threads[] = { 1, 3 };

    for (int ii = 0; ii < 3; ii++) {
        int skipped = 0;
        for (int ti = 0; ti < 2 && !skipped; ti++)
            for (int ei = 0; ei < 2; ei++) {
                struct vl2_backend_params p = { .struct_size = sizeof(p), .n_threads = threads[ti] };
                struct vl2_err err = { 0 };
                struct be be;
                char opt[96];
                int before = check_failures;
                int r;

                snprintf(opt, sizeof(opt), "isa=%s,precision=bf16%s", isas[ii], extra[ei]);
                p.options = opt;
                r = vl2_backend_load(&be.b, "cpu", dir, &p, &err);
                if (r == VL2_EUNSUPPORTED) {
                    printf("skip %s: %s\n", opt, err.msg);
                    skipped = 1;
                    break;
                }
                CHECK_MSG(r == 0, "%s", err.msg);
                if (r < 0)
                    continue;
                be.o = be.b->ops;
                be.c = be.b->ctx;
                snprintf(be.name, sizeof(be.name), "[bf16 %s%s x%d]", isas[ii],
                         ei ? " min_rows 1" : "", threads[ti]);
                test_linear_bf16(&be, ei ? 1 : 16);
                printf("%s %s: %s\n", be.name, be.o->describe(be.c),
                       check_failures == before ? "ok" : "FAILED");
                vl2_backend_unload(be.b);
            }
        if (!skipped)
            test_threads_bf16(dir, isas[ii]);
    }
}

int main(int argc, char **argv)
{
    static const char *isas[] = { "scalar", "avx2", "avx512" };
    static const int threads[] = { 1, 3 };

    if (argc < 3) {
        fprintf(stderr, "usage: %s CPU_PLUGIN_DIR CPU_KNOBS_PLUGIN_DIR\n", argv[0]);
        return 2;
    }
    for (int ii = 0; ii < 3; ii++)
        for (int ti = 0; ti < 2; ti++) {
            struct vl2_backend_params p = { .struct_size = sizeof(p), .n_threads = threads[ti] };
            struct vl2_err err = { 0 };
            struct be be;
            char opt[64];
            int before = check_failures;
            int r;

            snprintf(opt, sizeof(opt), "isa=%s", isas[ii]);
            p.options = opt;
            r = vl2_backend_load(&be.b, "cpu", argv[1], &p, &err);
            if (r == VL2_EUNSUPPORTED) {
                printf("skip %s: %s\n", isas[ii], err.msg);
                break;
            }
            CHECK_MSG(r == 0, "%s", err.msg);
            if (r < 0)
                continue;
            be.o = be.b->ops;
            be.c = be.b->ctx;
            snprintf(be.name, sizeof(be.name), "[%s x%d]", isas[ii], threads[ti]);
            test_memory(&be);
            test_supports(&be);
            test_linear(&be);
            test_rowops(&be);
            test_movement(&be);
            test_attn_full(&be);
            test_rope(&be);
            test_attn_mha(&be);
            test_attn_mla(&be);
            test_moe(&be);
            test_argmax(&be);
            printf("%s %s: %s\n", be.name, be.o->describe(be.c),
                   check_failures == before ? "ok" : "FAILED");
            vl2_backend_unload(be.b);
            if (ti == 0)
                test_threads(argv[1], isas[ii]);
        }
    /* attn_mla in each form (auto above mixes them: expanded for the 40-row
     * prefill, absorbed for single rows) */
    for (int mode = 0; mode < 2; mode++) {
        struct vl2_backend_params p = { .struct_size = sizeof(p), .n_threads = 2,
                                        .options = mode ? "mla=expanded" : "mla=absorbed" };
        struct vl2_err err = { 0 };
        struct be be;
        if (vl2_backend_load(&be.b, "cpu", argv[2], &p, &err) < 0) {
            CHECK_MSG(0, "%s", err.msg);
            continue;
        }
        be.o = be.b->ops;
        be.c = be.b->ctx;
        snprintf(be.name, sizeof(be.name), "[%s]", p.options);
        test_attn_mla(&be);
        vl2_backend_unload(be.b);
    }
    test_precision_option(argv[1]);
    test_bf16_all(argv[2]);
    test_attn_fused(argv[2]);
    printf("%d failures\n", check_failures);
    return check_failures ? 1 : 0;
}

/* test_cuda_ops.c - every op of vl2-backend-cuda.so against a naive CPU
 * reference computed here in double precision from the same (dtype-rounded)
 * inputs, plus error paths and CUDA-graph replay of decode steps.
 *
 *     test_cuda_ops PLUGIN.so [--quick] [--any-backend] [--options OPTIONS]
 *
 * --options: vl2_backend_params.options of the context the ops run on
 * (tests/gpu/run.sh runs the tests again with test knobs).  The refusals of
 * open() (struct size, unknown option, bad numbers) and supports_op are
 * checked before the device is probed, so they run without a GPU too.
 *
 * --any-backend runs the same checks on another plugin of the ABI (the CPU
 * backend), minus the CUDA-specific ones: a check of the references here.
 *
 * Without a usable GPU the plugin must refuse open() with one clear line
 * (VL2_EBACKEND, "cuda: no CUDA device: ..."); the test checks that and
 * exits 77 (skipped).  Exit 0: all checks passed; 1: a check failed. */
#include <dlfcn.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vl2-backend.h"
#include "vl2-status.h"

#include "../common/check.h"

static const struct vl2_backend_ops *O;
static struct vl2_backend_ctx *C;
static int any_backend;     /* --any-backend: another plugin (checks the references) */

#define OK(call)                                                          \
    do {                                                                  \
        struct vl2_err e_ = { 0, "" };                                    \
        int r_ = (call);                                                  \
        (void)e_;                                                         \
        check_total++;                                                    \
        if (r_ < 0) {                                                     \
            printf("FAIL %s:%d: %s -> %d\n", __FILE__, __LINE__, #call, r_); \
            check_failures++;                                             \
        }                                                                 \
    } while (0)

/* Calls take &Er as their error record. */
static struct vl2_err Er;

static void die_if(int r, const char *what)
{
    if (r < 0) {
        printf("FAIL %s: %d %s\n", what, r, Er.msg);
        check_failures++;
    }
}

/* ---- random numbers, dtypes ------------------------------------------------ */

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static float frand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((double)(rng >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static uint16_t f2bf(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static float bf2f(uint16_t b)
{
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static uint16_t f2h(float f)
{
    _Float16 h = (_Float16)f;
    uint16_t u;
    memcpy(&u, &h, 2);
    return u;
}

static float h2f(uint16_t u)
{
    _Float16 h;
    memcpy(&h, &u, 2);
    return (float)h;
}

/* @v rounded to what @dtype stores. */
static float round_to(float v, int dtype)
{
    if (dtype == VL2_DTYPE_BF16)
        return bf2f(f2bf(v));
    if (dtype == VL2_DTYPE_F16)
        return h2f(f2h(v));
    return v;
}

/* ---- tensors ------------------------------------------------------------------ */

#define MAX_KEEP 4096
static void *keep[MAX_KEEP];
static int n_keep;
static struct vl2_tensor *owned[MAX_KEEP];
static int n_owned;

static void keep_host(void *p)
{
    if (n_keep < MAX_KEEP)
        keep[n_keep++] = p;
}

/* A weight tensor [rows, cols] of @dtype with random values * scale;
 * @vals (rows*cols) receives the stored (rounded) values. */
static struct vl2_tensor *mk_weight(int dtype, int64_t rows, int64_t cols, float scale,
                                    float *vals)
{
    struct vl2_tensor *t = calloc(1, sizeof(*t));
    const int64_t n = rows * cols;
    const size_t es = vl2_dtype_size(dtype);
    unsigned char *buf = malloc((size_t)n * es);
    int64_t ne[2] = { rows, cols };
    int64_t i;

    for (i = 0; i < n; i++) {
        float v = round_to(frand() * scale, dtype);
        if (vals)
            vals[i] = v;
        if (dtype == VL2_DTYPE_BF16) {
            uint16_t b = f2bf(v);
            memcpy(buf + i * 2, &b, 2);
        } else if (dtype == VL2_DTYPE_F16) {
            uint16_t b = f2h(v);
            memcpy(buf + i * 2, &b, 2);
        } else {
            memcpy(buf + i * 4, &v, 4);
        }
    }
    keep_host(buf);
    die_if(O->weight(C, t, dtype, rows == 1 ? 1 : 2, rows == 1 ? ne + 1 : ne, buf, &Er),
           "weight");
    owned[n_owned++] = t;
    return t;
}

/* An F32 activation [rows, ld] filled from @vals (rows x cols, or random
 * when vals is NULL... then written back into vals if given). */
static struct vl2_tensor *mk_act(int64_t rows, int64_t cols, int64_t ld, float scale,
                                 float *vals)
{
    struct vl2_tensor *t = calloc(1, sizeof(*t));
    int64_t ne[2] = { rows, ld };
    float *buf = malloc((size_t)(rows * ld) * sizeof(float));
    int64_t r, c;

    for (r = 0; r < rows; r++)
        for (c = 0; c < ld; c++) {
            float v = frand() * scale;
            buf[r * ld + c] = v;
            if (vals && c < cols)
                vals[r * cols + c] = v;
        }
    die_if(O->alloc(C, t, VL2_DTYPE_F32, 2, ne, &Er), "alloc");
    die_if(O->write(C, t, 0, buf, (size_t)(rows * ld) * sizeof(float), &Er), "write");
    free(buf);
    owned[n_owned++] = t;
    if (ld > cols) {
        struct vl2_tensor *v = calloc(1, sizeof(*v));
        *v = vl2_tensor_cols(t, 0, cols);
        keep_host(v);
        return v;
    }
    return t;
}

/* An F32 tensor [rows, cols] filled with NaN (to see unwritten outputs). */
static struct vl2_tensor *mk_out(int64_t rows, int64_t cols)
{
    struct vl2_tensor *t = calloc(1, sizeof(*t));
    int64_t ne[2] = { rows, cols };
    float *buf = malloc((size_t)(rows * cols) * sizeof(float));
    int64_t i;

    for (i = 0; i < rows * cols; i++)
        buf[i] = NAN;
    die_if(O->alloc(C, t, VL2_DTYPE_F32, 2, ne, &Er), "alloc");
    die_if(O->write(C, t, 0, buf, (size_t)(rows * cols) * sizeof(float), &Er), "write");
    free(buf);
    owned[n_owned++] = t;
    return t;
}

/* Rows x cols of @t (a view or a tensor) into a new host array. */
static float *fetch(const struct vl2_tensor *t)
{
    float *h = malloc((size_t)(t->rows * t->cols) * sizeof(float));
    float *row = malloc((size_t)t->cols * sizeof(float));
    int64_t r;

    for (r = 0; r < t->rows; r++) {
        die_if(O->read(C, t, (size_t)(r * t->ld) * sizeof(float), row,
                       (size_t)t->cols * sizeof(float), &Er),
               "read");
        memcpy(h + r * t->cols, row, (size_t)t->cols * sizeof(float));
    }
    free(row);
    return h;
}

/* max|got - ref| / max|ref| within @tol, and no NaN. */
/* sc[0..n) = exp(sc - max) in place; returns their sum (the softmax divisor). */
static double softmax_d(double *sc, int n)
{
    double m = -1e300, sum = 0;
    int i;

    for (i = 0; i < n; i++)
        if (sc[i] > m)
            m = sc[i];
    for (i = 0; i < n; i++) {
        sc[i] = exp(sc[i] - m);
        sum += sc[i];
    }
    return sum;
}

static double compare(const char *name, const float *got, const double *ref, int64_t n,
                      double tol)
{
    double md = 0.0, mr = 0.0;
    int64_t i, bad = -1;

    for (i = 0; i < n; i++) {
        double d = fabs((double)got[i] - ref[i]);
        if (isnan(got[i]) || isnan(ref[i])) {
            bad = i;
            break;
        }
        if (d > md)
            md = d;
        if (fabs(ref[i]) > mr)
            mr = fabs(ref[i]);
    }
    if (bad >= 0) {
        CHECK_MSG(0, "%s: NaN at %lld (got %g, ref %g)", name, (long long)bad, got[bad], ref[bad]);
        return INFINITY;
    }
    {
        double err = mr > 0 ? md / mr : md;
        CHECK_MSG(err <= tol, "%s: err %.3g > tol %.3g", name, err, tol);
        printf("  %-44s err %.2e (tol %.0e)\n", name, err, tol);
        return err;
    }
}

static void expect_err(int r, int code, const char *what)
{
    if (any_backend) {
        CHECK_MSG(r < 0 && Er.msg[0], "%s: got %d (%s)", what, r, Er.msg);
        vl2_err_clear(&Er);
        return;
    }
    CHECK_MSG(r == code, "%s: got %d, expected %d (%s)", what, r, code, Er.msg);
    CHECK_MSG(r >= 0 || (Er.msg[0] && strncmp(Er.msg, "cuda: ", 6) == 0 && !strchr(Er.msg, '\n')),
          "%s: message '%s'", what, Er.msg);
    vl2_err_clear(&Er);
}

/* ---- naive references ------------------------------------------------------------ */

static void ref_linear(double *y, const float *x, const float *w, const float *b, int n, int I,
                       int O_)
{
    int r, o, k;
    for (r = 0; r < n; r++)
        for (o = 0; o < O_; o++) {
            double s = b ? b[o] : 0.0;
            for (k = 0; k < I; k++)
                s += (double)x[r * I + k] * w[o * I + k];
            y[r * O_ + o] = s;
        }
}

static double silu(double g)
{
    return g / (1.0 + exp(-g));
}

/* ---- tests: element-wise and row ops ------------------------------------------------ */

static void test_embed(void)
{
    const int V = 50, D = 24, n = 7;
    float tab[50 * 24];
    struct vl2_tensor *t = mk_weight(VL2_DTYPE_BF16, V, D, 1.0f, tab);
    struct vl2_tensor *out = mk_out(n, D);
    int32_t ids[7] = { 3, 0, 49, 17, 17, 8, 22 };
    double ref[7 * 24];
    float *got;
    int i, c;

    printf("embed\n");
    OK(O->embed(C, out, t, ids, &Er));
    for (i = 0; i < n; i++)
        for (c = 0; c < D; c++)
            ref[i * D + c] = tab[ids[i] * D + c];
    got = fetch(out);
    compare("embed bf16", got, ref, n * D, 0.0);
    free(got);
    ids[3] = 50;
    expect_err(O->embed(C, out, t, ids, &Er), VL2_EINVAL, "embed id out of range");
    ids[3] = -1;
    expect_err(O->embed(C, out, t, ids, &Er), VL2_EINVAL, "embed negative id");
}

static void one_linear(int n, int I, int Od, int dtype, int with_bias, int xld, double tol)
{
    float *w = malloc((size_t)Od * I * sizeof(float));
    float *x = malloc((size_t)n * I * sizeof(float));
    float b[4096];
    double *ref = malloc((size_t)n * Od * sizeof(double));
    struct vl2_tensor *tw = mk_weight(dtype, Od, I, 0.5f, w);
    struct vl2_tensor *tb = with_bias ? mk_weight(VL2_DTYPE_BF16, 1, Od, 0.5f, b) : NULL;
    struct vl2_tensor *tx = mk_act(n, I, xld, 1.0f, x);
    struct vl2_tensor *to = mk_out(n, Od);
    char name[96];
    float *got;

    OK(O->linear(C, to, tx, tw, tb, &Er));
    ref_linear(ref, x, w, with_bias ? b : NULL, n, I, Od);
    got = fetch(to);
    snprintf(name, sizeof(name), "linear n=%d %dx%d %s%s%s", n, Od, I,
             dtype == VL2_DTYPE_BF16 ? "bf16" : dtype == VL2_DTYPE_F16 ? "f16" : "f32",
             with_bias ? " bias" : "", xld > I ? " view" : "");
    compare(name, got, ref, (int64_t)n * Od, tol);
    free(got);
    free(w);
    free(x);
    free(ref);
}

static void test_linear(int quick)
{
    printf("linear\n");
    one_linear(1, 64, 40, VL2_DTYPE_BF16, 1, 64, 1e-5);
    one_linear(3, 96, 33, VL2_DTYPE_F16, 0, 96, 1e-5);
    one_linear(8, 72, 50, VL2_DTYPE_F32, 1, 72, 1e-5);
    one_linear(1, 37, 20, VL2_DTYPE_BF16, 0, 37, 1e-5);
    one_linear(5, 64, 48, VL2_DTYPE_BF16, 0, 80, 1e-5);
    one_linear(2, 1280, 300, VL2_DTYPE_BF16, 0, 1280, 1e-5);
    one_linear(20, 64, 48, VL2_DTYPE_BF16, 1, 64, 2e-2);
    one_linear(33, 96, 200, VL2_DTYPE_BF16, 1, 104, 2e-2);
    one_linear(64, 1280, 130, VL2_DTYPE_BF16, 0, 1280, 2e-2);
    one_linear(17, 64, 40, VL2_DTYPE_F32, 1, 64, 1e-5);
    one_linear(12, 64, 40, VL2_DTYPE_F16, 0, 70, 5e-3);
    if (!quick)
        one_linear(300, 512, 384, VL2_DTYPE_BF16, 1, 512, 2e-2);
    {
        struct vl2_tensor *w = mk_weight(VL2_DTYPE_BF16, 16, 32, 1.0f, NULL);
        struct vl2_tensor *x = mk_act(2, 30, 30, 1.0f, NULL);
        struct vl2_tensor *o = mk_out(2, 16);
        expect_err(O->linear(C, o, x, w, NULL, &Er), VL2_EINVAL, "linear shape mismatch");
        expect_err(O->linear(C, o, NULL, w, NULL, &Er), VL2_EINVAL, "linear NULL x");
    }
}

static void test_norms(void)
{
    const int n = 6, D = 200;
    float x[6 * 200], w[200], b[200];
    double ref[6 * 200];
    struct vl2_tensor *tx = mk_act(n, D, D, 2.0f, x);
    struct vl2_tensor *tw = mk_weight(VL2_DTYPE_BF16, 1, D, 1.0f, w);
    struct vl2_tensor *tb = mk_weight(VL2_DTYPE_BF16, 1, D, 1.0f, b);
    struct vl2_tensor *to = mk_out(n, D);
    float *got;
    int r, c;

    printf("norms\n");
    OK(O->layernorm(C, to, tx, tw, tb, 1e-6f, &Er));
    for (r = 0; r < n; r++) {
        double m = 0, v = 0;
        for (c = 0; c < D; c++)
            m += x[r * D + c];
        m /= D;
        for (c = 0; c < D; c++)
            v += (x[r * D + c] - m) * (x[r * D + c] - m);
        v /= D;
        for (c = 0; c < D; c++)
            ref[r * D + c] = (x[r * D + c] - m) / sqrt(v + 1e-6) * w[c] + b[c];
    }
    got = fetch(to);
    compare("layernorm", got, ref, n * D, 1e-5);
    free(got);
    /* rmsnorm in place */
    OK(O->rmsnorm(C, tx, tx, tw, 1e-6f, &Er));
    for (r = 0; r < n; r++) {
        double s = 0;
        for (c = 0; c < D; c++)
            s += (double)x[r * D + c] * x[r * D + c];
        s = 1.0 / sqrt(s / D + 1e-6);
        for (c = 0; c < D; c++)
            ref[r * D + c] = w[c] * x[r * D + c] * s;
    }
    got = fetch(tx);
    compare("rmsnorm in place", got, ref, n * D, 1e-5);
    free(got);
}

static void test_elementwise(void)
{
    const int n = 9, D = 70;
    float a[9 * 70], b[3 * 70], g[9 * 70], u[9 * 70];
    double ref[9 * 70];
    struct vl2_tensor *ta = mk_act(n, D, D, 2.0f, a);
    struct vl2_tensor *tb = mk_weight(VL2_DTYPE_BF16, 3, D, 1.0f, b);
    struct vl2_tensor *to = mk_out(n, D);
    struct vl2_tensor *tg, *tu;
    float *got;
    int i;

    printf("element-wise\n");
    OK(O->add(C, to, ta, tb, &Er));
    for (i = 0; i < n * D; i++)
        ref[i] = (double)a[i] + b[(i / D % 3) * D + i % D];
    got = fetch(to);
    compare("add broadcast bf16", got, ref, n * D, 1e-6);
    free(got);
    OK(O->gelu_tanh(C, to, &Er));
    for (i = 0; i < n * D; i++) {
        double v = ref[i];
        ref[i] = 0.5 * v * (1.0 + tanh(sqrt(2.0 / M_PI) * (v + 0.044715 * v * v * v)));
    }
    got = fetch(to);
    compare("gelu_tanh", got, ref, n * D, 1e-5);
    free(got);
    OK(O->gelu_erf(C, ta, &Er));
    for (i = 0; i < n * D; i++)
        ref[i] = 0.5 * a[i] * (1.0 + erf(a[i] / sqrt(2.0)));
    got = fetch(ta);
    compare("gelu_erf", got, ref, n * D, 1e-5);
    free(got);
    tg = mk_act(n, D, D, 3.0f, g);
    tu = mk_act(n, D, D, 1.0f, u);
    OK(O->swiglu(C, tg, tg, tu, &Er));
    for (i = 0; i < n * D; i++)
        ref[i] = silu(g[i]) * u[i];
    got = fetch(tg);
    compare("swiglu in place", got, ref, n * D, 1e-5);
    free(got);
    expect_err(O->add(C, to, tb, ta, &Er), VL2_EINVAL, "add with b larger than a");
}

/* The first largest of @z[0..n), NaN never winning, 0 when z[0] is NaN. */
static int ref_argmax(const float *z, int n)
{
    float best = z[0];
    int bi = 0, i;
    if (best != best)
        return 0;
    for (i = 1; i < n; i++)
        if (z[i] > best) {
            best = z[i];
            bi = i;
        }
    return bi;
}

/* argmax over vocabulary-sized rows: ties, NaN, -inf, the last column, as a
 * column [n, 1] and as a row [1, n]. */
static void test_argmax(void)
{
    enum { N = 6, V = 129280 };
    float *x = malloc((size_t)N * V * sizeof(float));
    struct vl2_tensor *tx = mk_act(N, V, V, 1.0f, x);
    struct vl2_tensor out;
    int64_t ne_col[2] = { N, 1 }, ne_row[2] = { 1, N };
    int32_t got[N];
    int r, form, c;

    printf("argmax\n");
    x[1 * V + 1000] = 5.0f;          /* ties: the first */
    x[1 * V + 90000] = 5.0f;
    x[2 * V + 0] = NAN;              /* starts with NaN: 0 */
    x[2 * V + 7] = 9.0f;
    x[3 * V + 3] = NAN;              /* NaN inside: skipped */
    x[3 * V + 77777] = 9.0f;
    for (c = 0; c < V; c++)
        x[4 * V + c] = -INFINITY;    /* all -inf: 0 */
    x[5 * V + V - 1] = 7.0f;         /* the last column */
    die_if(O->write(C, tx, 0, x, (size_t)N * V * sizeof(float), &Er), "write");
    for (form = 0; form < 2; form++) {
        die_if(O->alloc(C, &out, VL2_DTYPE_I32, 2, form ? ne_row : ne_col, &Er), "alloc");
        OK(O->argmax(C, &out, tx, &Er));
        die_if(O->read(C, &out, 0, got, sizeof(got), &Er), "read");
        for (r = 0; r < N; r++) {
            const int want = ref_argmax(x + (size_t)r * V, V);
            CHECK_MSG(got[r] == want, "argmax row %d (%s): %d, expected %d", r,
                  form ? "row" : "column", (int)got[r], want);
        }
        O->free_tensor(C, &out);
    }
    CHECK_MSG(ref_argmax(x + 1 * V, V) == 1000 && ref_argmax(x + 3 * V, V) == 77777 &&
              ref_argmax(x + 5 * V, V) == V - 1,
          "argmax reference");
    printf("  %d rows of %d\n", N, V);
    ne_col[0] = N - 1;
    die_if(O->alloc(C, &out, VL2_DTYPE_I32, 2, ne_col, &Er), "alloc");
    expect_err(O->argmax(C, &out, tx, &Er), VL2_EINVAL, "argmax into too short an output");
    O->free_tensor(C, &out);
    ne_col[0] = N;
    die_if(O->alloc(C, &out, VL2_DTYPE_F32, 2, ne_col, &Er), "alloc");
    expect_err(O->argmax(C, &out, tx, &Er), VL2_EINVAL, "argmax into an F32 output");
    O->free_tensor(C, &out);
    free(x);
}

static void test_copy_rows(void)
{
    const int D = 16;
    float s[6 * 16], w[2 * 16];
    double ref[10 * 16];
    struct vl2_tensor *ts = mk_act(6, D, D, 1.0f, s);
    struct vl2_tensor *tw = mk_weight(VL2_DTYPE_BF16, 2, D, 1.0f, w);
    struct vl2_tensor *td = mk_out(10, D);
    int32_t dr[6] = { 9, 0, 4, 5, 1, 2 }, sr[6] = { 0, 5, 3, 3, 1, 2 };
    int32_t dr2[4] = { 3, 6, 7, 8 }, sr2[4] = { 0, 1, 1, 0 };
    float *got;
    int k, c;

    printf("copy_rows\n");
    OK(O->copy_rows(C, td, dr, ts, sr, 6, &Er));
    OK(O->copy_rows(C, td, dr2, tw, sr2, 4, &Er));
    for (k = 0; k < 6; k++)
        for (c = 0; c < D; c++)
            ref[dr[k] * D + c] = s[sr[k] * D + c];
    for (k = 0; k < 4; k++)
        for (c = 0; c < D; c++)
            ref[dr2[k] * D + c] = w[sr2[k] * D + c];
    got = fetch(td);
    compare("copy_rows f32 + bf16 rows", got, ref, 10 * D, 0.0);
    free(got);
    sr[2] = 6;
    expect_err(O->copy_rows(C, td, dr, ts, sr, 6, &Er), VL2_EINVAL, "copy_rows src out of range");
}

static void test_vision_ops(int quick)
{
    const int n_img = 2, S = 30, p = 7, g = S / p;
    float *img = malloc((size_t)n_img * 3 * S * S * sizeof(float));
    struct vl2_tensor *ti = mk_act(n_img, 3 * S * S, 3 * S * S, 1.0f, img);
    struct vl2_tensor *to = mk_out(n_img * g * g, 3 * p * p);
    double *ref = malloc((size_t)n_img * g * g * 3 * p * p * sizeof(double));
    float *got;
    int i, gy, gx, c, ky, kx;

    printf("vision ops\n");
    OK(O->patchify(C, to, ti, S, p, &Er));
    for (i = 0; i < n_img; i++)
        for (gy = 0; gy < g; gy++)
            for (gx = 0; gx < g; gx++)
                for (c = 0; c < 3; c++)
                    for (ky = 0; ky < p; ky++)
                        for (kx = 0; kx < p; kx++)
                            ref[((i * g + gy) * g + gx) * 3 * p * p + (c * p + ky) * p + kx] =
                                img[i * 3 * S * S + c * S * S + (gy * p + ky) * S + gx * p + kx];
    got = fetch(to);
    compare("patchify 30/7", got, ref, (int64_t)n_img * g * g * 3 * p * p, 0.0);
    free(got);
    free(ref);
    free(img);

    {
        const int G = 5, Cc = 6, G2 = 3;
        float f[2 * 25 * 6];
        double r2[2 * 9 * 24];
        struct vl2_tensor *tf = mk_act(2 * G * G, Cc, Cc, 1.0f, f);
        struct vl2_tensor *tu = mk_out(2 * G2 * G2, 4 * Cc);
        int by, bx;
        OK(O->unfold2x2(C, tu, tf, G, &Er));
        for (i = 0; i < 2; i++)
            for (by = 0; by < G2; by++)
                for (bx = 0; bx < G2; bx++)
                    for (c = 0; c < Cc; c++)
                        for (ky = 0; ky < 2; ky++)
                            for (kx = 0; kx < 2; kx++) {
                                int y = 2 * by + ky, x = 2 * bx + kx;
                                r2[((i * G2 + by) * G2 + bx) * 4 * Cc + c * 4 + ky * 2 + kx] =
                                    (y < G && x < G) ? f[(i * G * G + y * G + x) * Cc + c] : 0.0;
                            }
        got = fetch(tu);
        compare("unfold2x2 odd grid", got, r2, 2 * G2 * G2 * 4 * Cc, 0.0);
        free(got);
    }

    {
        const int L = quick ? 37 : 200, H = 3, hd = 24, ns = 2;
        const float scale = 1.0f / sqrtf((float)hd);
        float *qkv = malloc((size_t)ns * L * 3 * H * hd * sizeof(float));
        double *r3 = malloc((size_t)ns * L * H * hd * sizeof(double));
        double *sc = malloc((size_t)L * sizeof(double));
        struct vl2_tensor *tq = mk_act(ns * L, 3 * H * hd, 3 * H * hd, 1.0f, qkv);
        struct vl2_tensor *tout = mk_out(ns * L, H * hd);
        int s, h, t, u, d;
        OK(O->attn_full(C, tout, tq, L, H, hd, scale, &Er));
        for (s = 0; s < ns; s++)
            for (h = 0; h < H; h++)
                for (t = 0; t < L; t++) {
                    const float *q = qkv + (size_t)(s * L + t) * 3 * H * hd + h * hd;
                    double sum;
                    for (u = 0; u < L; u++) {
                        const float *k = qkv + (size_t)(s * L + u) * 3 * H * hd + H * hd + h * hd;
                        double v = 0;
                        for (d = 0; d < hd; d++)
                            v += (double)q[d] * k[d];
                        sc[u] = v * scale;
                    }
                    sum = softmax_d(sc, L);
                    for (d = 0; d < hd; d++) {
                        double o = 0;
                        for (u = 0; u < L; u++)
                            o += sc[u] * qkv[(size_t)(s * L + u) * 3 * H * hd + 2 * H * hd +
                                             h * hd + d];
                        r3[(size_t)(s * L + t) * H * hd + h * hd + d] = o / sum;
                    }
                }
        got = fetch(tout);
        compare("attn_full (tf32)", got, r3, (int64_t)ns * L * H * hd, 5e-3);
        free(got);
        free(qkv);
        free(r3);
        free(sc);
    }
}

/* ---- batch, rope, attention ------------------------------------------------------------ */

/* rotate row @x (head layout as the op) at position @pos, in double */
static void ref_rope(double *x, int n_head, int hs, int off, int rd, float theta, int layout,
                     int pos)
{
    int h, i;
    for (h = 0; h < n_head; h++) {
        double *p = x + h * hs + off;
        double tmp[1024];
        for (i = 0; i < rd; i++)
            tmp[i] = p[i];
        for (i = 0; i < rd / 2; i++) {
            float e = (float)(2 * i) / (float)rd;
            float inv = 1.0f / powf(theta, e);
            double ang = (double)((float)pos * inv);
            double a, b;
            if (layout == VL2_ROPE_NEOX) {
                a = tmp[i];
                b = tmp[i + rd / 2];
            } else {
                a = tmp[2 * i];
                b = tmp[2 * i + 1];
            }
            p[i] = a * cos(ang) - b * sin(ang);
            p[i + rd / 2] = b * cos(ang) + a * sin(ang);
        }
    }
}

static struct vl2_kv *mk_kv(int kind, int n_layer, int nkv, int hd, int R, int rp, int dtype,
                            int cap)
{
    struct vl2_kv_shape s;
    struct vl2_kv *kv = NULL;
    memset(&s, 0, sizeof(s));
    s.struct_size = sizeof(s);
    s.kind = kind;
    s.n_layer = n_layer;
    s.n_kv_head = nkv;
    s.head_dim = hd;
    s.kv_lora_rank = R;
    s.rope_dim = rp;
    s.dtype = dtype;
    s.capacity = cap;
    die_if(O->kv_new(C, &s, &kv, &Er), "kv_new");
    return kv;
}

static int set_batch(int n_seqs, const int *rows, const int *past, struct vl2_kv **kv)
{
    struct vl2_batch_seq bs[16];
    struct vl2_batch b;
    int i, n = 0;
    for (i = 0; i < n_seqs; i++) {
        bs[i].row0 = n;
        bs[i].n_rows = rows[i];
        bs[i].n_past = past[i];
        bs[i].kv = kv[i];
        n += rows[i];
    }
    b.struct_size = sizeof(b);
    b.n_rows = n;
    b.n_seqs = n_seqs;
    b.seqs = bs;
    return O->begin_batch(C, &b, &Er);
}

static void test_rope(void)
{
    struct vl2_kv *kv[2];
    int rows[2] = { 2, 3 }, past[2] = { 3, 10 };
    float x[5 * 48];
    double ref[5 * 48];
    struct vl2_tensor *tx;
    float *got;
    int r, i;

    printf("rope\n");
    kv[0] = mk_kv(VL2_ATTN_MHA, 1, 1, 16, 0, 0, VL2_DTYPE_F32, 32);
    kv[1] = mk_kv(VL2_ATTN_MHA, 1, 1, 16, 0, 0, VL2_DTYPE_F32, 32);
    OK(set_batch(2, rows, past, kv));
    tx = mk_act(5, 48, 48, 1.0f, x);
    OK(O->rope(C, tx, 3, 16, 0, 16, 10000.0f, VL2_ROPE_NEOX, &Er));
    for (i = 0; i < 5 * 48; i++)
        ref[i] = x[i];
    for (r = 0; r < 5; r++)
        ref_rope(ref + r * 48, 3, 16, 0, 16, 10000.0f, VL2_ROPE_NEOX, r < 2 ? 3 + r : 10 + r - 2);
    got = fetch(tx);
    compare("rope neox", got, ref, 5 * 48, 1e-5);
    free(got);
    tx = mk_act(5, 48, 48, 1.0f, x);
    OK(O->rope(C, tx, 2, 24, 16, 8, 500.0f, VL2_ROPE_INTERLEAVED, &Er));
    for (i = 0; i < 5 * 48; i++)
        ref[i] = x[i];
    for (r = 0; r < 5; r++)
        ref_rope(ref + r * 48, 2, 24, 16, 8, 500.0f, VL2_ROPE_INTERLEAVED,
                 r < 2 ? 3 + r : 10 + r - 2);
    got = fetch(tx);
    compare("rope interleaved (partial)", got, ref, 5 * 48, 1e-5);
    free(got);
    {
        int rows2[1] = { 30 }, past2[1] = { 5 };
        expect_err(set_batch(1, rows2, past2, kv), VL2_ELIMIT, "begin_batch over capacity");
        tx = mk_act(5, 48, 48, 1.0f, NULL);
        expect_err(O->rope(C, tx, 3, 16, 0, 16, 10000.0f, VL2_ROPE_NEOX, &Er), VL2_EINVAL,
                   "rope without a batch");
    }
    O->kv_free(C, kv[0]);
    O->kv_free(C, kv[1]);
}

/* Host mirror of a cache: per sequence, per token, K and V rows (or the MLA row). */
struct hcache {
    int     row;        /* floats per token */
    float  *data;       /* [cap, row] */
};

/* out[t, h] = softmax over s <= pos(t) of (q . k_s * scale) v_s, GQA */
static void ref_attn_mha(double *out, const float *q, const struct hcache *hc, int n_rows,
                         int n_past, int H, int nkv, int hd, float scale)
{
    const int g = H / nkv;
    double sc[4096];
    int t, h, s, d;
    for (t = 0; t < n_rows; t++)
        for (h = 0; h < H; h++) {
            const int kh = h / g, L = n_past + t + 1;
            double sum;
            for (s = 0; s < L; s++) {
                const float *k = hc->data + (size_t)s * hc->row + kh * hd;
                double v = 0;
                for (d = 0; d < hd; d++)
                    v += (double)q[(t * H + h) * hd + d] * k[d];
                sc[s] = v * scale;
            }
            sum = softmax_d(sc, L);
            for (d = 0; d < hd; d++) {
                double o = 0;
                for (s = 0; s < L; s++)
                    o += sc[s] * hc->data[(size_t)s * hc->row + nkv * hd + kh * hd + d];
                out[(t * H + h) * hd + d] = o / sum;
            }
        }
}

static void mha_case(int H, int nkv, int hd, int kvdt, double tol)
{
    const int cap = 64, layer = 1;
    const float scale = 1.0f / sqrtf((float)hd);
    struct vl2_kv *kv[2];
    struct hcache hc[2];
    int past[2] = { 0, 0 };
    int step, s, i;
    char name[96];

    kv[0] = mk_kv(VL2_ATTN_MHA, 2, nkv, hd, 0, 0, kvdt, cap);
    kv[1] = mk_kv(VL2_ATTN_MHA, 2, nkv, hd, 0, 0, kvdt, cap);
    for (s = 0; s < 2; s++) {
        hc[s].row = 2 * nkv * hd;
        hc[s].data = calloc((size_t)cap * hc[s].row, sizeof(float));
    }
    /* step 0: prefill A (9 rows) and B (5 rows) in one batch; then 3 decode steps of both;
     * then one step with 2 rows for A and 1 for B */
    for (step = 0; step < 5; step++) {
        int rows[2];
        int n, r0, t;
        if (step == 0) {
            rows[0] = 9;
            rows[1] = 5;
        } else if (step < 4) {
            rows[0] = rows[1] = 1;
        } else {
            rows[0] = 2;
            rows[1] = 1;
        }
        n = rows[0] + rows[1];
        OK(set_batch(2, rows, past, kv));
        {
            float *q = malloc((size_t)n * H * hd * sizeof(float));
            float *k = malloc((size_t)n * nkv * hd * sizeof(float));
            float *v = malloc((size_t)n * nkv * hd * sizeof(float));
            double *ref = malloc((size_t)n * H * hd * sizeof(double));
            struct vl2_tensor *tq = mk_act(n, H * hd, H * hd, 1.0f, q);
            struct vl2_tensor *tk = mk_act(n, nkv * hd, nkv * hd, 1.0f, k);
            struct vl2_tensor *tv = mk_act(n, nkv * hd, nkv * hd, 1.0f, v);
            struct vl2_tensor *to = mk_out(n, H * hd);
            float *got;
            OK(O->attn_mha(C, layer, to, tq, tk, tv, H, nkv, hd, scale, &Er));
            r0 = 0;
            for (s = 0; s < 2; s++) {
                for (t = 0; t < rows[s]; t++) {
                    float *dst = hc[s].data + (size_t)(past[s] + t) * hc[s].row;
                    for (i = 0; i < nkv * hd; i++) {
                        dst[i] = round_to(k[(r0 + t) * nkv * hd + i], kvdt);
                        dst[nkv * hd + i] = round_to(v[(r0 + t) * nkv * hd + i], kvdt);
                    }
                }
                ref_attn_mha(ref + (size_t)r0 * H * hd, q + (size_t)r0 * H * hd, &hc[s],
                             rows[s], past[s], H, nkv, hd, scale);
                r0 += rows[s];
            }
            got = fetch(to);
            snprintf(name, sizeof(name), "attn_mha H%d kv%d d%d %s step %d", H, nkv, hd,
                     kvdt == VL2_DTYPE_BF16 ? "bf16" : "f32", step);
            compare(name, got, ref, (int64_t)n * H * hd, tol);
            free(got);
            free(q);
            free(k);
            free(v);
            free(ref);
        }
        past[0] += rows[0];
        past[1] += rows[1];
    }
    {
        struct vl2_tensor *tq = mk_act(1, H * hd, H * hd, 1.0f, NULL);
        struct vl2_tensor *to = mk_out(1, H * hd);
        int rows[1] = { 1 }, p1[1] = { 0 };
        struct vl2_tensor *tk = mk_act(1, nkv * hd, nkv * hd, 1.0f, NULL);
        OK(set_batch(1, rows, p1, kv));
        expect_err(O->attn_mha(C, 2, to, tq, tk, tk, H, nkv, hd, scale, &Er), VL2_EINVAL,
                   "attn_mha layer out of range");
    }
    for (s = 0; s < 2; s++) {
        O->kv_free(C, kv[s]);
        free(hc[s].data);
    }
}

/* MLA reference in the plain (non-absorbed) form of spec 7.6: the H heads of
 * one query row @q ([H, nope + rp]) over the first L rows of @hc ([R | rp]). */
static void ref_mla_row(double *out, const float *q, const struct hcache *hc, int L, int H,
                        int nope, int rp, int vd, int R, const float *kvb, float scale)
{
    const int qh = nope + rp;
    double *sc = malloc((size_t)L * sizeof(double));
    double *kn = malloc((size_t)nope * sizeof(double));
    int h, s, i, j;

    for (h = 0; h < H; h++) {
        const float *wuk = kvb + (size_t)h * (nope + vd) * R;
        const float *wuv = wuk + (size_t)nope * R;
        double sum;
        for (s = 0; s < L; s++) {
            const float *cs = hc->data + (size_t)s * hc->row;
            double v = 0;
            for (i = 0; i < nope; i++) {
                kn[i] = 0;
                for (j = 0; j < R; j++)
                    kn[i] += (double)wuk[i * R + j] * cs[j];
                v += (double)q[h * qh + i] * kn[i];
            }
            for (i = 0; i < rp; i++)
                v += (double)q[h * qh + nope + i] * cs[R + i];
            sc[s] = v * scale;
        }
        sum = softmax_d(sc, L);
        for (i = 0; i < vd; i++) {
            double o = 0;
            for (s = 0; s < L; s++) {
                const float *cs = hc->data + (size_t)s * hc->row;
                double vv = 0;
                for (j = 0; j < R; j++)
                    vv += (double)wuv[i * R + j] * cs[j];
                o += sc[s] * vv;
            }
            out[h * vd + i] = o / sum;
        }
    }
    free(sc);
    free(kn);
}

/* The same in the absorbed form (q_nope W_UK against the latent rows, the
 * latent mix times W_UV), equal in exact arithmetic and linear in L per head:
 * the long cases below would take minutes in the plain form. */
static void ref_mla_row_abs(double *out, const float *q, const struct hcache *hc, int L, int H,
                            int nope, int rp, int vd, int R, const float *kvb, float scale)
{
    const int qh = nope + rp;
    double *sc = malloc((size_t)L * sizeof(double));
    double *qa = malloc((size_t)R * sizeof(double));
    double *ol = malloc((size_t)R * sizeof(double));
    int h, s, i, j;

    for (h = 0; h < H; h++) {
        const float *wuk = kvb + (size_t)h * (nope + vd) * R;
        const float *wuv = wuk + (size_t)nope * R;
        double sum;
        for (j = 0; j < R; j++) {
            qa[j] = 0;
            for (i = 0; i < nope; i++)
                qa[j] += (double)q[h * qh + i] * wuk[i * R + j];
        }
        for (s = 0; s < L; s++) {
            const float *cs = hc->data + (size_t)s * hc->row;
            double v = 0;
            for (j = 0; j < R; j++)
                v += qa[j] * cs[j];
            for (i = 0; i < rp; i++)
                v += (double)q[h * qh + nope + i] * cs[R + i];
            sc[s] = v * scale;
        }
        sum = softmax_d(sc, L);
        for (j = 0; j < R; j++)
            ol[j] = 0;
        for (s = 0; s < L; s++) {
            const float *cs = hc->data + (size_t)s * hc->row;
            for (j = 0; j < R; j++)
                ol[j] += sc[s] * cs[j];
        }
        for (i = 0; i < vd; i++) {
            double o = 0;
            for (j = 0; j < R; j++)
                o += (double)wuv[i * R + j] * ol[j];
            out[h * vd + i] = o / sum;
        }
    }
    free(sc);
    free(qa);
    free(ol);
}

static void mla_case(int H, int nope, int rp, int vd, int R, int kvdt, int n_pre, double tol)
{
    const int cap = 128, layer = 0, qh = nope + rp;
    const float scale = 1.0f / sqrtf((float)qh);
    float *kvb = malloc((size_t)H * (nope + vd) * R * sizeof(float));
    struct vl2_tensor *tkvb = mk_weight(VL2_DTYPE_BF16, (int64_t)H * (nope + vd), R, 0.2f, kvb);
    struct vl2_kv *kv[1];
    struct hcache hc;
    int past[1] = { 0 };
    int step;
    char name[96];

    kv[0] = mk_kv(VL2_ATTN_MLA, 1, 0, 0, R, rp, kvdt, cap);
    hc.row = R + rp;
    hc.data = calloc((size_t)cap * hc.row, sizeof(float));
    for (step = 0; step < 3; step++) {
        const int n = step == 0 ? n_pre : 1;
        int rows[1];
        float *q = malloc((size_t)n * H * qh * sizeof(float));
        float *c = malloc((size_t)n * R * sizeof(float));
        float *kpe = malloc((size_t)n * rp * sizeof(float));
        double *ref = malloc((size_t)n * H * vd * sizeof(double));
        struct vl2_tensor *tq, *tc, *tk, *to;
        float *got;
        int t, i;

        rows[0] = n;
        OK(set_batch(1, rows, past, kv));
        tq = mk_act(n, H * qh, H * qh, 1.0f, q);
        tc = mk_act(n, R, R, 1.0f, c);
        tk = mk_act(n, rp, R + rp, 1.0f, kpe);   /* a column view, as the runtime passes */
        to = mk_out(n, H * vd);
        OK(O->attn_mla(C, layer, to, tq, tc, tk, tkvb, H, nope, rp, vd, scale, &Er));
        for (t = 0; t < n; t++) {
            float *dst = hc.data + (size_t)(past[0] + t) * hc.row;
            for (i = 0; i < R; i++)
                dst[i] = round_to(c[t * R + i], kvdt);
            for (i = 0; i < rp; i++)
                dst[R + i] = round_to(kpe[t * rp + i], kvdt);
        }
        for (t = 0; t < n; t++)
            ref_mla_row(ref + (size_t)t * H * vd, q + (size_t)t * H * qh, &hc, past[0] + t + 1,
                        H, nope, rp, vd, R, kvb, scale);
        got = fetch(to);
        snprintf(name, sizeof(name), "attn_mla H%d R%d rope%d %s step %d (n=%d)", H, R, rp,
                 kvdt == VL2_DTYPE_BF16 ? "bf16" : "f32", step, n);
        compare(name, got, ref, (int64_t)n * H * vd, n > 8 ? 2e-2 : tol);
        free(got);
        free(q);
        free(c);
        free(kpe);
        free(ref);
        past[0] += n;
    }
    O->kv_free(C, kv[0]);
    free(hc.data);
    free(kvb);
}

/* Two sequences through the steps @rows ([n_steps][2], 0: not in that step):
 * prefill next to decode (a step with one long and one short sequence takes
 * the cuBLAS path for the long one and the tile kernel for the other), decode
 * of both (the decode kernel, several runs of keys per sequence), and steps
 * of a few rows each. */
static void mla_multi(const char *label, int H, int nope, int rp, int vd, int R, int kvdt,
                      int cap, const int (*rows)[2], int n_steps, double tol)
{
    const int layer = 1, qh = nope + rp;
    const float scale = 0.7f / sqrtf((float)qh);
    float *kvb = malloc((size_t)H * (nope + vd) * R * sizeof(float));
    struct vl2_tensor *tkvb = mk_weight(VL2_DTYPE_BF16, (int64_t)H * (nope + vd), R, 0.2f, kvb);
    struct vl2_kv *kv[2], *bkv[2];
    struct hcache hc[2];
    int past[2] = { 0, 0 };
    int step, s;
    char name[128];

    for (s = 0; s < 2; s++) {
        kv[s] = mk_kv(VL2_ATTN_MLA, 2, 0, 0, R, rp, kvdt, cap);
        hc[s].row = R + rp;
        hc[s].data = calloc((size_t)cap * hc[s].row, sizeof(float));
    }
    for (step = 0; step < n_steps; step++) {
        int brows[2], bpast[2], map[2], ns = 0, n = 0, t, i, b;
        for (s = 0; s < 2; s++)
            if (rows[step][s] > 0) {
                map[ns] = s;
                brows[ns] = rows[step][s];
                bpast[ns] = past[s];
                bkv[ns] = kv[s];
                n += brows[ns];
                ns++;
            }
        OK(set_batch(ns, brows, bpast, bkv));
        {
            float *q = malloc((size_t)n * H * qh * sizeof(float));
            float *c = malloc((size_t)n * R * sizeof(float));
            float *kpe = malloc((size_t)n * rp * sizeof(float));
            double *ref = malloc((size_t)n * H * vd * sizeof(double));
            struct vl2_tensor *tq = mk_act(n, H * qh, H * qh, 1.0f, q);
            struct vl2_tensor *tc = mk_act(n, R, R, 1.0f, c);
            struct vl2_tensor *tk = mk_act(n, rp, R + rp, 1.0f, kpe);
            struct vl2_tensor *to = mk_out(n, H * vd);
            int r0 = 0;
            float *got;
            OK(O->attn_mla(C, layer, to, tq, tc, tk, tkvb, H, nope, rp, vd, scale, &Er));
            for (b = 0; b < ns; b++) {
                struct hcache *h = &hc[map[b]];
                for (t = 0; t < brows[b]; t++) {
                    float *dst = h->data + (size_t)(bpast[b] + t) * h->row;
                    for (i = 0; i < R; i++)
                        dst[i] = round_to(c[(r0 + t) * R + i], kvdt);
                    for (i = 0; i < rp; i++)
                        dst[R + i] = round_to(kpe[(r0 + t) * rp + i], kvdt);
                }
                for (t = 0; t < brows[b]; t++)
                    ref_mla_row_abs(ref + (size_t)(r0 + t) * H * vd,
                                    q + (size_t)(r0 + t) * H * qh, h, bpast[b] + t + 1, H, nope,
                                    rp, vd, R, kvb, scale);
                r0 += brows[b];
            }
            got = fetch(to);
            snprintf(name, sizeof(name), "attn_mla %s step %d (%d+%d rows, past %d+%d)", label,
                     step, rows[step][0], rows[step][1], past[0], past[1]);
            /* more than 8 rows: queries and latent mix pass through BF16 for the
             * absorbing products (as in mla_case), and long sequences through
             * TF32 scores and values: 1e-2; decode steps are F32 throughout */
            compare(name, got, ref, (int64_t)n * H * vd, n > 8 ? 1e-2 : tol);
            free(got);
            free(q);
            free(c);
            free(kpe);
            free(ref);
        }
        for (s = 0; s < 2; s++)
            past[s] += rows[step][s];
    }
    for (s = 0; s < 2; s++) {
        O->kv_free(C, kv[s]);
        free(hc[s].data);
    }
    free(kvb);
}

static void test_attention(int quick)
{
    printf("attention\n");
    mha_case(4, 2, 16, VL2_DTYPE_F32, 1e-5);
    mha_case(4, 4, 128, VL2_DTYPE_BF16, 1e-5);
    if (!quick)
        mha_case(10, 10, 128, VL2_DTYPE_F32, 1e-5);
    mla_case(4, 16, 8, 16, 32, VL2_DTYPE_F32, 11, 1e-5);
    mla_case(4, 16, 8, 16, 32, VL2_DTYPE_BF16, 5, 1e-5);
    if (!quick)
        mla_case(16, 128, 64, 128, 512, VL2_DTYPE_F32, 12, 1e-4);
    {
        /* prefill beside decode, decode of both (several runs of keys each),
         * a few rows per sequence, prefill after cached rows */
        static const int steps[][2] = { { 45, 0 }, { 1, 37 }, { 1, 1 }, { 1, 1 }, { 1, 1 },
                                        { 2, 1 }, { 1, 3 }, { 0, 1 }, { 40, 1 }, { 1, 1 } };
        const int ns = (int)(sizeof(steps) / sizeof(steps[0]));
        mla_multi("H4 R32 f32", 4, 16, 8, 16, 32, VL2_DTYPE_F32, 160, steps, ns, 1e-5);
        mla_multi("H3 R20 rope6 bf16", 3, 10, 6, 12, 20, VL2_DTYPE_BF16, 160, steps, ns, 1e-5);
        if (!quick) {
            /* the real shapes (small/base): 16 heads, rank 512, rope 64 */
            mla_multi("H16 R512 f32", 16, 128, 64, 128, 512, VL2_DTYPE_F32, 160, steps, 5,
                      1e-5);
            /* long decode: more than one tile of keys per run */
            static const int longs[][2] = { { 300, 0 }, { 300, 1 }, { 300, 1 }, { 250, 1 },
                                            { 1, 1 }, { 1, 1 } };
            mla_multi("H2 R32 long", 2, 16, 8, 16, 32, VL2_DTYPE_F32, 1200, longs, 6, 1e-5);
        }
    }
}

/* ---- MoE ----------------------------------------------------------------------------- */

struct moe_host {
    int    E, k, d, I, ns, scoring, method, n_group, topk_group, norm;
    float  scale;
    float *router, *bias, **g, **u, **dn, *sg, *su, *sd;
    struct vl2_moe_layer L;
    const struct vl2_tensor **tg, **tu, **td;
};

static void moe_build(struct moe_host *m, int dtype)
{
    int e;
    m->L.struct_size = sizeof(m->L);
    m->router = malloc((size_t)m->E * m->d * sizeof(float));
    m->L.router = mk_weight(VL2_DTYPE_BF16, m->E, m->d, 0.5f, m->router);
    m->bias = NULL;
    m->L.bias = NULL;
    if (m->method == VL2_MOE_NOAUX_TC) {
        m->bias = malloc((size_t)m->E * sizeof(float));
        m->L.bias = mk_weight(VL2_DTYPE_F32, 1, m->E, 0.3f, m->bias);
    }
    m->g = malloc((size_t)m->E * sizeof(float *));
    m->u = malloc((size_t)m->E * sizeof(float *));
    m->dn = malloc((size_t)m->E * sizeof(float *));
    m->tg = malloc((size_t)m->E * sizeof(*m->tg));
    m->tu = malloc((size_t)m->E * sizeof(*m->tu));
    m->td = malloc((size_t)m->E * sizeof(*m->td));
    for (e = 0; e < m->E; e++) {
        m->g[e] = malloc((size_t)m->I * m->d * sizeof(float));
        m->u[e] = malloc((size_t)m->I * m->d * sizeof(float));
        m->dn[e] = malloc((size_t)m->I * m->d * sizeof(float));
        m->tg[e] = mk_weight(dtype, m->I, m->d, 0.3f, m->g[e]);
        m->tu[e] = mk_weight(dtype, m->I, m->d, 0.3f, m->u[e]);
        m->td[e] = mk_weight(dtype, m->d, m->I, 0.3f, m->dn[e]);
    }
    m->L.gate = m->tg;
    m->L.up = m->tu;
    m->L.down = m->td;
    if (m->ns) {
        m->sg = malloc((size_t)m->ns * m->I * m->d * sizeof(float));
        m->su = malloc((size_t)m->ns * m->I * m->d * sizeof(float));
        m->sd = malloc((size_t)m->ns * m->I * m->d * sizeof(float));
        m->L.sh_gate = mk_weight(dtype, (int64_t)m->ns * m->I, m->d, 0.3f, m->sg);
        m->L.sh_up = mk_weight(dtype, (int64_t)m->ns * m->I, m->d, 0.3f, m->su);
        m->L.sh_down = mk_weight(dtype, m->d, (int64_t)m->ns * m->I, 0.3f, m->sd);
    } else {
        m->L.sh_gate = m->L.sh_up = m->L.sh_down = NULL;
    }
    m->L.n_expert = m->E;
    m->L.top_k = m->k;
    m->L.scoring = m->scoring;
    m->L.method = m->method;
    m->L.n_group = m->n_group;
    m->L.topk_group = m->topk_group;
    m->L.norm_topk_prob = m->norm;
    m->L.routed_scale = m->scale;
}

static void moe_free(struct moe_host *m)
{
    int e;
    for (e = 0; e < m->E; e++) {
        free(m->g[e]);
        free(m->u[e]);
        free(m->dn[e]);
    }
    free(m->g);
    free(m->u);
    free(m->dn);
    free(m->tg);
    free(m->tu);
    free(m->td);
    free(m->router);
    free(m->bias);
    if (m->ns) {
        free(m->sg);
        free(m->su);
        free(m->sd);
    }
}

/* Spec 7.4 for one token, in double.  Returns the smallest gap between a
 * chosen and an unchosen expert's selection score (to skip near ties). */
static double ref_moe_token(const struct moe_host *m, const float *x, double *y)
{
    double lg[1024], sc[1024], ch[1024], gs[1024], w[32], gap = 1e300;
    int sel[1024], gsel[1024], idx[32];
    const int E = m->E, gsz = E / (m->n_group > 0 ? m->n_group : 1);
    int e, j, c, i, it;

    for (e = 0; e < E; e++) {
        double s = 0;
        for (c = 0; c < m->d; c++)
            s += (double)x[c] * m->router[e * m->d + c];
        lg[e] = s;
    }
    if (m->scoring == VL2_MOE_SOFTMAX) {
        double mx = -1e300, sum = 0;
        for (e = 0; e < E; e++)
            if (lg[e] > mx)
                mx = lg[e];
        for (e = 0; e < E; e++)
            sum += sc[e] = exp(lg[e] - mx);
        for (e = 0; e < E; e++)
            sc[e] /= sum;
    } else {
        for (e = 0; e < E; e++)
            sc[e] = 1.0 / (1.0 + exp(-lg[e]));
    }
    for (e = 0; e < E; e++)
        ch[e] = sc[e] + (m->method == VL2_MOE_NOAUX_TC && m->bias ? m->bias[e] : 0.0);
    if (m->method != VL2_MOE_GREEDY && m->n_group > 1) {
        int G = m->n_group;
        for (i = 0; i < G; i++) {
            double b1 = -1e300, b2 = -1e300;
            for (e = i * gsz; e < (i + 1) * gsz; e++) {
                if (ch[e] > b1) {
                    b2 = b1;
                    b1 = ch[e];
                } else if (ch[e] > b2) {
                    b2 = ch[e];
                }
            }
            gs[i] = m->method == VL2_MOE_GROUP_LIMITED ? b1 : b1 + b2;
            gsel[i] = 0;
        }
        for (it = 0; it < m->topk_group; it++) {
            int b = -1;
            for (i = 0; i < G; i++)
                if (!gsel[i] && (b < 0 || gs[i] > gs[b]))
                    b = i;
            gsel[b] = 1;
        }
        for (e = 0; e < E; e++)
            if (!gsel[e / gsz])
                ch[e] = 0.0;
    }
    for (e = 0; e < E; e++)
        sel[e] = 0;
    for (j = 0; j < m->k; j++) {
        int b = -1;
        for (e = 0; e < E; e++)
            if (!sel[e] && (b < 0 || ch[e] > ch[b]))
                b = e;
        sel[b] = 1;
        idx[j] = b;
        w[j] = m->method == VL2_MOE_GROUP_LIMITED ? ch[b] : sc[b];
    }
    for (e = 0; e < E; e++)
        if (!sel[e])
            for (j = 0; j < m->k; j++)
                if (fabs(ch[idx[j]] - ch[e]) < gap)
                    gap = fabs(ch[idx[j]] - ch[e]);
    {
        double sum = 0;
        for (j = 0; j < m->k; j++)
            sum += w[j];
        for (j = 0; j < m->k; j++)
            w[j] = (m->k > 1 && m->norm) ? w[j] / (sum + 1e-20) * m->scale : w[j] * m->scale;
    }
    for (c = 0; c < m->d; c++)
        y[c] = 0;
    {
        double *h = malloc((size_t)(m->ns > 1 ? m->ns : 1) * m->I * sizeof(double));
        for (j = 0; j < m->k; j++) {
            const int ex = idx[j];
            for (i = 0; i < m->I; i++) {
                double gg = 0, uu = 0;
                for (c = 0; c < m->d; c++) {
                    gg += (double)x[c] * m->g[ex][i * m->d + c];
                    uu += (double)x[c] * m->u[ex][i * m->d + c];
                }
                h[i] = silu(gg) * uu;
            }
            for (c = 0; c < m->d; c++) {
                double o = 0;
                for (i = 0; i < m->I; i++)
                    o += h[i] * m->dn[ex][c * m->I + i];
                y[c] += w[j] * o;
            }
        }
        if (m->ns) {
            const int SI = m->ns * m->I;
            for (i = 0; i < SI; i++) {
                double gg = 0, uu = 0;
                for (c = 0; c < m->d; c++) {
                    gg += (double)x[c] * m->sg[i * m->d + c];
                    uu += (double)x[c] * m->su[i * m->d + c];
                }
                h[i] = silu(gg) * uu;
            }
            for (c = 0; c < m->d; c++) {
                double o = 0;
                for (i = 0; i < SI; i++)
                    o += h[i] * m->sd[c * SI + i];
                y[c] += o;
            }
        }
        free(h);
    }
    return gap;
}

static void moe_run(struct moe_host *m, int n, double tol, const char *label)
{
    float *x = malloc((size_t)n * m->d * sizeof(float));
    double *ref = malloc((size_t)n * m->d * sizeof(double));
    struct vl2_tensor *tx = mk_act(n, m->d, m->d, 1.0f, x);
    struct vl2_tensor *to = mk_out(n, m->d);
    float *got;
    int t, c, n_tie = 0;
    char name[96];

    OK(O->moe(C, to, tx, &m->L, &Er));
    got = fetch(to);
    for (t = 0; t < n; t++) {
        double gap = ref_moe_token(m, x + (size_t)t * m->d, ref + (size_t)t * m->d);
        if (gap < 1e-5) {
            /* a near tie may legitimately pick another expert: compare the rest only */
            for (c = 0; c < m->d; c++)
                ref[(size_t)t * m->d + c] = got[(size_t)t * m->d + c];
            n_tie++;
        }
    }
    snprintf(name, sizeof(name), "moe %s n=%d%s", label, n, n_tie ? " (ties skipped)" : "");
    compare(name, got, ref, (int64_t)n * m->d, tol);
    free(got);
    free(x);
    free(ref);
}

static void test_moe(int quick)
{
    struct moe_host m;

    printf("moe\n");
    memset(&m, 0, sizeof(m));
    m.E = 8; m.k = 2; m.d = 64; m.I = 32; m.ns = 2;
    m.scoring = VL2_MOE_SOFTMAX; m.method = VL2_MOE_GREEDY; m.n_group = 1; m.topk_group = 1;
    m.norm = 0; m.scale = 1.0f;
    moe_build(&m, VL2_DTYPE_BF16);
    moe_run(&m, 1, 1e-5, "softmax greedy");
    moe_run(&m, 5, 1e-5, "softmax greedy");
    moe_run(&m, 40, 3e-2, "softmax greedy (mma)");
    moe_free(&m);

    memset(&m, 0, sizeof(m));
    m.E = 8; m.k = 2; m.d = 64; m.I = 32; m.ns = 2;
    m.scoring = VL2_MOE_SIGMOID; m.method = VL2_MOE_NOAUX_TC; m.n_group = 4; m.topk_group = 2;
    m.norm = 1; m.scale = 2.0f;
    moe_build(&m, VL2_DTYPE_BF16);
    moe_run(&m, 3, 1e-5, "sigmoid noaux_tc");
    moe_run(&m, 40, 3e-2, "sigmoid noaux_tc (mma)");
    moe_free(&m);

    memset(&m, 0, sizeof(m));
    m.E = 16; m.k = 3; m.d = 48; m.I = 24; m.ns = 1;
    m.scoring = VL2_MOE_SOFTMAX; m.method = VL2_MOE_GROUP_LIMITED; m.n_group = 4;
    m.topk_group = 2; m.norm = 0; m.scale = 1.5f;
    moe_build(&m, VL2_DTYPE_F32);
    moe_run(&m, 6, 1e-5, "softmax group-limited f32");
    moe_run(&m, 33, 1e-5, "softmax group-limited f32 (simt)");
    moe_free(&m);

    memset(&m, 0, sizeof(m));
    m.E = 8; m.k = 2; m.d = 40; m.I = 20; m.ns = 0;
    m.scoring = VL2_MOE_SOFTMAX; m.method = VL2_MOE_GREEDY; m.n_group = 1; m.topk_group = 1;
    m.norm = 0; m.scale = 1.0f;
    moe_build(&m, VL2_DTYPE_BF16);
    moe_run(&m, 2, 1e-5, "no shared, d 40");
    moe_run(&m, 12, 3e-2, "no shared, d 40, n 12");
    moe_free(&m);

    /* 10 experts: the fused router kernel's last block has idle warps */
    memset(&m, 0, sizeof(m));
    m.E = 10; m.k = 3; m.d = 64; m.I = 32; m.ns = 1;
    m.scoring = VL2_MOE_SOFTMAX; m.method = VL2_MOE_GREEDY; m.n_group = 1; m.topk_group = 1;
    m.norm = 1; m.scale = 1.0f;
    moe_build(&m, VL2_DTYPE_BF16);
    moe_run(&m, 1, 1e-5, "10 experts");
    moe_run(&m, 8, 1e-5, "10 experts, n 8");
    moe_free(&m);

    if (!quick) {
        memset(&m, 0, sizeof(m));
        m.E = 64; m.k = 6; m.d = 256; m.I = 64; m.ns = 2;
        m.scoring = VL2_MOE_SOFTMAX; m.method = VL2_MOE_GREEDY; m.n_group = 1;
        m.topk_group = 1; m.norm = 0; m.scale = 1.0f;
        moe_build(&m, VL2_DTYPE_BF16);
        moe_run(&m, 1, 1e-5, "E64 k6");
        moe_run(&m, 16, 3e-2, "E64 k6");
        moe_run(&m, 100, 3e-2, "E64 k6");
        moe_free(&m);
    }

    memset(&m, 0, sizeof(m));
    m.E = 4; m.k = 5; m.d = 16; m.I = 8; m.ns = 0;
    m.scoring = VL2_MOE_SOFTMAX; m.method = VL2_MOE_GREEDY; m.n_group = 1; m.topk_group = 1;
    moe_build(&m, VL2_DTYPE_BF16);
    {
        struct vl2_tensor *tx = mk_act(1, 16, 16, 1.0f, NULL), *to = mk_out(1, 16);
        expect_err(O->moe(C, to, tx, &m.L, &Er), VL2_EINVAL, "moe top_k > n_expert");
        m.L.top_k = 2;
        expect_err(O->moe(C, tx, tx, &m.L, &Er), VL2_EINVAL, "moe out aliases x");
        if (!any_backend) {
            m.L.struct_size = sizeof(m.L) - 4;   /* a layer of another ABI revision */
            expect_err(O->moe(C, to, tx, &m.L, &Er), VL2_EABI, "moe struct_size");
            m.L.struct_size = sizeof(m.L);
        }
    }
    moe_free(&m);
}

/* ---- a decode loop through graphs ---------------------------------------------------- */

/* One small MHA + MoE layer and a head, run step by step with 1..3 sequences;
 * every step compared with the host reference of that step. */
static void test_graph_steps(void)
{
    const int D = 64, H = 4, hd = 16, V = 97, cap = 48;
    const float scale = 0.25f;
    float wq[64 * 64], wk[64 * 64], wv[64 * 64], wo[64 * 64], nw[64], head[97 * 64], emb[97 * 64];
    struct vl2_tensor *tq = mk_weight(VL2_DTYPE_BF16, D, D, 0.3f, wq);
    struct vl2_tensor *tk = mk_weight(VL2_DTYPE_BF16, D, D, 0.3f, wk);
    struct vl2_tensor *tv = mk_weight(VL2_DTYPE_BF16, D, D, 0.3f, wv);
    struct vl2_tensor *to = mk_weight(VL2_DTYPE_BF16, D, D, 0.3f, wo);
    struct vl2_tensor *tn = mk_weight(VL2_DTYPE_BF16, 1, D, 1.0f, nw);
    struct vl2_tensor *th = mk_weight(VL2_DTYPE_BF16, V, D, 0.5f, head);
    struct vl2_tensor *te = mk_weight(VL2_DTYPE_BF16, V, D, 1.0f, emb);
    struct vl2_tensor *ax = mk_out(8, D), *ah = mk_out(8, D), *aq = mk_out(8, D);
    struct vl2_tensor *ak = mk_out(8, D), *av = mk_out(8, D), *ao = mk_out(8, D);
    struct vl2_tensor *aa = mk_out(8, D), *al = mk_out(8, D), *lg = mk_out(8, V);
    struct vl2_tensor ids;
    int64_t ne_ids[2] = { 8, 1 };
    struct moe_host m;
    struct vl2_kv *kv[3];
    struct hcache hc[3];
    int past[3] = { 0, 0, 0 };
    int32_t tok[3] = { 5, 17, 60 };
    int step, s, i, c;
    unsigned long long rep0 = 0, rep1 = 0, cap0 = 0, cap1 = 0, fb0 = 0, fb1 = 0;

    printf("decode steps through graphs\n");
    die_if(O->alloc(C, &ids, VL2_DTYPE_I32, 2, ne_ids, &Er), "alloc");
    memset(&m, 0, sizeof(m));
    m.E = 8; m.k = 2; m.d = D; m.I = 32; m.ns = 2;
    m.scoring = VL2_MOE_SOFTMAX; m.method = VL2_MOE_GREEDY; m.n_group = 1; m.topk_group = 1;
    m.scale = 1.0f;
    moe_build(&m, VL2_DTYPE_BF16);
    for (s = 0; s < 3; s++) {
        kv[s] = mk_kv(VL2_ATTN_MHA, 1, H, hd, 0, 0, VL2_DTYPE_F32, cap);
        hc[s].row = 2 * D;
        hc[s].data = calloc((size_t)cap * hc[s].row, sizeof(float));
    }
    if (!any_backend)
        sscanf(strstr(O->describe(C), "captured"),
               "captured %llu, replayed %llu, fallbacks %llu", &cap0, &rep0, &fb0);
    for (step = 0; step < 14; step++) {
        /* steps 0-5: seqs 0,1; 6-11: seqs 0,1,2; step 9 leaves out the moe (fallback) */
        const int ns = step < 6 ? 2 : 3;
        const int skip_moe = step == 9;
        int rows[3] = { 1, 1, 1 };
        int32_t dst[3] = { 0, 1, 2 }, src[3] = { 0, 1, 2 };
        struct vl2_tensor x = vl2_tensor_rows(ax, 0, ns), h = vl2_tensor_rows(ah, 0, ns);
        struct vl2_tensor q = vl2_tensor_rows(aq, 0, ns), k = vl2_tensor_rows(ak, 0, ns);
        struct vl2_tensor v = vl2_tensor_rows(av, 0, ns), o = vl2_tensor_rows(ao, 0, ns);
        struct vl2_tensor a = vl2_tensor_rows(aa, 0, ns), l = vl2_tensor_rows(al, 0, ns);
        struct vl2_tensor lgv = vl2_tensor_rows(lg, 0, ns);
        double rx[3 * 64], rh[3 * 64], rq[3 * 64], rk[3 * 64], rv[3 * 64], ro[3 * 64];
        double ra[3 * 64], rl[3 * 97];
        float fx[64], *got;

        OK(O->embed(C, &x, te, tok, &Er));
        OK(set_batch(ns, rows, past, kv));
        OK(O->rmsnorm(C, &h, &x, tn, 1e-6f, &Er));
        OK(O->linear(C, &q, &h, tq, NULL, &Er));
        OK(O->linear(C, &k, &h, tk, NULL, &Er));
        OK(O->linear(C, &v, &h, tv, NULL, &Er));
        OK(O->rope(C, &q, H, hd, 0, hd, 10000.0f, VL2_ROPE_NEOX, &Er));
        OK(O->rope(C, &k, H, hd, 0, hd, 10000.0f, VL2_ROPE_NEOX, &Er));
        OK(O->attn_mha(C, 0, &o, &q, &k, &v, H, H, hd, scale, &Er));
        OK(O->linear(C, &a, &o, to, NULL, &Er));
        OK(O->add(C, &x, &x, &a, &Er));
        if (!skip_moe) {
            OK(O->moe(C, &a, &x, &m.L, &Er));
            OK(O->add(C, &x, &x, &a, &Er));
        }
        OK(O->copy_rows(C, &l, dst, &x, src, ns, &Er));
        OK(O->rmsnorm(C, &l, &l, tn, 1e-6f, &Er));
        OK(O->linear(C, &lgv, &l, th, NULL, &Er));
        {
            /* the greedy ids in the same step: those of the logits read back */
            struct vl2_tensor idv = vl2_tensor_rows(&ids, 0, ns);
            int32_t gi[3];
            OK(O->argmax(C, &idv, &lgv, &Er));
            die_if(O->read(C, &idv, 0, gi, (size_t)ns * sizeof(int32_t), &Er), "read");
            got = fetch(&lgv);
            for (s = 0; s < ns; s++)
                CHECK_MSG(gi[s] == ref_argmax(got + (size_t)s * V, V),
                      "step %d seq %d: argmax %d, logits say %d", step, s, (int)gi[s],
                      ref_argmax(got + (size_t)s * V, V));
        }

        /* reference */
        for (s = 0; s < ns; s++) {
            float fh[64], fq[64], fo[64];
            for (c = 0; c < D; c++)
                rx[s * D + c] = emb[tok[s] * D + c];
            {
                double ss = 0;
                for (c = 0; c < D; c++)
                    ss += rx[s * D + c] * rx[s * D + c];
                ss = 1.0 / sqrt(ss / D + 1e-6);
                for (c = 0; c < D; c++)
                    rh[s * D + c] = nw[c] * rx[s * D + c] * ss;
            }
            for (c = 0; c < D; c++)
                fh[c] = (float)rh[s * D + c];
            ref_linear(rq + s * D, fh, wq, NULL, 1, D, D);
            ref_linear(rk + s * D, fh, wk, NULL, 1, D, D);
            ref_linear(rv + s * D, fh, wv, NULL, 1, D, D);
            ref_rope(rq + s * D, H, hd, 0, hd, 10000.0f, VL2_ROPE_NEOX, past[s]);
            ref_rope(rk + s * D, H, hd, 0, hd, 10000.0f, VL2_ROPE_NEOX, past[s]);
            for (c = 0; c < D; c++) {
                hc[s].data[(size_t)past[s] * hc[s].row + c] = (float)rk[s * D + c];
                hc[s].data[(size_t)past[s] * hc[s].row + D + c] = (float)rv[s * D + c];
                fq[c] = (float)rq[s * D + c];
            }
            ref_attn_mha(ro + s * D, fq, &hc[s], 1, past[s], H, H, hd, scale);
            for (c = 0; c < D; c++)
                fo[c] = (float)ro[s * D + c];
            ref_linear(ra + s * D, fo, wo, NULL, 1, D, D);
            for (c = 0; c < D; c++)
                rx[s * D + c] += ra[s * D + c];
            if (!skip_moe) {
                double y[64];
                for (c = 0; c < D; c++)
                    fx[c] = (float)rx[s * D + c];
                ref_moe_token(&m, fx, y);
                for (c = 0; c < D; c++)
                    rx[s * D + c] += y[c];
            }
            {
                double ss = 0;
                for (c = 0; c < D; c++)
                    ss += rx[s * D + c] * rx[s * D + c];
                ss = 1.0 / sqrt(ss / D + 1e-6);
                for (c = 0; c < D; c++)
                    fx[c] = (float)(nw[c] * rx[s * D + c] * ss);
            }
            ref_linear(rl + s * V, fx, head, NULL, 1, D, V);
        }
        {
            char name[64];
            snprintf(name, sizeof(name), "step %d (%d seqs%s)", step, ns,
                     skip_moe ? ", no moe" : "");
            compare(name, got, rl, (int64_t)ns * V, 1e-4);
        }
        /* next tokens: argmax of the reference */
        for (s = 0; s < ns; s++) {
            int best = 0;
            for (i = 1; i < V; i++)
                if (rl[s * V + i] > rl[s * V + best])
                    best = i;
            tok[s] = best;
            past[s]++;
        }
        free(got);
    }
    if (!any_backend) {
        sscanf(strstr(O->describe(C), "captured"),
               "captured %llu, replayed %llu, fallbacks %llu", &cap1, &rep1, &fb1);
        printf("  graphs: captured %llu, replayed %llu, fallbacks %llu\n", cap1 - cap0,
               rep1 - rep0, fb1 - fb0);
        CHECK_MSG(cap1 - cap0 >= 2, "expected at least 2 captured graphs, got %llu", cap1 - cap0);
        CHECK_MSG(rep1 - rep0 >= 6, "expected at least 6 replayed steps, got %llu", rep1 - rep0);
        CHECK_MSG(fb1 - fb0 >= 1, "expected the step without moe to fall back");
    }
    for (s = 0; s < 3; s++) {
        O->kv_free(C, kv[s]);
        free(hc[s].data);
    }
    O->free_tensor(C, &ids);
    moe_free(&m);
}

/* ---- ABI 2: struct sizes, options, supports_op --------------------------------------- */

/* open() refusals that come before the device is probed, so they hold with
 * or without a GPU: a parameter struct of another size, an unknown option,
 * values that are not numbers or out of range, items outside the grammar. */
static void test_open_refusals(void)
{
    static const struct { const char *opt, *names; } bad[] = {
        { "frobnicate=1", "frobnicate" },      /* unknown key */
        { "mla_split=abc", "abc" },            /* not a number */
        { "mla_split=16x", "16x" },            /* trailing bytes */
        { "mla_split=999", "999" },            /* out of 1..64 */
        { "mla_split=0", "mla_split" },
        { "graphs=2", "graphs" },              /* a boolean */
        { "gemv_r1=3", "gemv_r1" },            /* 1, 2 or 4 */
        { "graphs", "graphs" },                /* no value */
        { "graphs=0,,pdl=0", "empty" },        /* empty item */
        { "graphs=0,", "empty" },
        { "Graphs=0", "Graphs" },              /* keys are lower case */
    };
    struct vl2_backend_params p;
    struct vl2_backend_ctx *c = NULL;
    size_t i;
    int r;

    printf("open refusals\n");
    memset(&p, 0, sizeof(p));
    p.struct_size = sizeof(p) - 8;   /* a caller of another ABI revision */
    r = O->open(&p, &c, &Er);
    CHECK_MSG(r == VL2_EABI && strstr(Er.msg, "vl2_backend_params"), "params struct_size: %d '%s'",
          r, Er.msg);
    vl2_err_clear(&Er);
    p.struct_size = sizeof(p);
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        p.options = bad[i].opt;
        r = O->open(&p, &c, &Er);
        CHECK_MSG(r == VL2_EINVAL && !strncmp(Er.msg, "cuda: ", 6) && strstr(Er.msg, bad[i].names) &&
                  !strchr(Er.msg, '\n'),
              "options '%s': %d '%s'", bad[i].opt, r, Er.msg);
        if (r == 0)
            O->close(c);
        vl2_err_clear(&Er);
    }
    /* every production option with a valid value passes the parser */
    p.options = "graphs=0,pdl=1,profile=0,gemv_r1=2,mla_split=16,graphs=1";
    r = O->open(&p, &c, &Er);
    CHECK_MSG(r == 0 || r == VL2_EBACKEND, "valid options: %d '%s'", r, Er.msg);
    if (r == 0)
        O->close(c);
    vl2_err_clear(&Er);
}

/* supports_op answers from the table (the context is not needed). */
static void test_supports_op(void)
{
    printf("supports_op\n");
    if (!O->supports_op) {
        CHECK_MSG(0, "no supports_op");
        return;
    }
    CHECK_MSG(O->supports_op(C, VL2_OP_LINEAR, VL2_DTYPE_BF16) == 1, "linear BF16");
    CHECK_MSG(O->supports_op(C, VL2_OP_LINEAR, VL2_DTYPE_F16) == 1, "linear F16");
    CHECK_MSG(O->supports_op(C, VL2_OP_LINEAR, VL2_DTYPE_F32) == 1, "linear F32");
    CHECK_MSG(O->supports_op(C, VL2_OP_LINEAR, VL2_DTYPE_Q8) == 0, "linear Q8");
    CHECK_MSG(O->supports_op(C, VL2_OP_MOE, VL2_DTYPE_Q4) == 0, "moe Q4");
    CHECK_MSG(O->supports_op(C, VL2_OP_WEIGHT, VL2_DTYPE_Q4) == 0, "weight Q4");
    CHECK_MSG(O->supports_op(C, VL2_OP_KV, VL2_DTYPE_BF16) == 1, "kv BF16");
    CHECK_MSG(O->supports_op(C, VL2_OP_KV, VL2_DTYPE_I32) == 0, "kv I32");
    CHECK_MSG(O->supports_op(C, VL2_OP_ATTN_MLA, VL2_DTYPE_F16) == 1, "attn_mla F16 cache");
    CHECK_MSG(O->supports_op(C, VL2_OP_RMSNORM, -1) == 1, "rmsnorm");
    CHECK_MSG(O->supports_op(C, VL2_OP_ARGMAX, -1) == 1, "argmax");
    CHECK_MSG(O->supports_op(C, 0, -1) == 0 && O->supports_op(C, VL2_OP_COUNT, -1) == 0,
          "ops outside the enum");
}

/* Structs of another size are refused where they come in (VL2_EABI). */
static void test_struct_sizes(void)
{
    struct vl2_kv_shape s;
    struct vl2_kv *kv = NULL;
    struct vl2_batch_seq bs;
    struct vl2_batch b;

    printf("struct sizes\n");
    memset(&s, 0, sizeof(s));
    s.struct_size = sizeof(s) + 4;
    s.kind = VL2_ATTN_MHA;
    s.n_layer = 1;
    s.n_kv_head = 1;
    s.head_dim = 16;
    s.dtype = VL2_DTYPE_F32;
    s.capacity = 8;
    expect_err(O->kv_new(C, &s, &kv, &Er), VL2_EABI, "kv_new struct_size");
    CHECK_MSG(O->kv_token_bytes(&s) == 0, "kv_token_bytes of a foreign shape: %zu",
          O->kv_token_bytes(&s));
    s.struct_size = sizeof(s);
    CHECK_MSG(O->kv_token_bytes(&s) == 2u * 16u * 4u, "kv_token_bytes %zu", O->kv_token_bytes(&s));
    OK(O->kv_new(C, &s, &kv, &Er));
    if (!kv)
        return;
    bs.row0 = 0;
    bs.n_rows = 1;
    bs.n_past = 0;
    bs.kv = kv;
    b.struct_size = sizeof(b) - 4;
    b.n_rows = 1;
    b.n_seqs = 1;
    b.seqs = &bs;
    expect_err(O->begin_batch(C, &b, &Er), VL2_EABI, "begin_batch struct_size");
    b.struct_size = sizeof(b);
    OK(O->begin_batch(C, &b, &Er));
    O->kv_free(C, kv);
}

/* ---- memory accounting ---------------------------------------------------------------- */

static void test_memory(void)
{
    struct vl2_kv_shape s;
    struct vl2_tensor t;
    int64_t ne[2] = { 1024, 1024 };
    size_t m0, m1, m2;

    printf("memory\n");
    memset(&s, 0, sizeof(s));
    s.struct_size = sizeof(s);
    s.kind = VL2_ATTN_MLA;
    s.n_layer = 27;
    s.kv_lora_rank = 512;
    s.rope_dim = 64;
    s.dtype = VL2_DTYPE_BF16;
    s.capacity = 16;
    CHECK_MSG(O->kv_token_bytes(&s) == 27u * 576u * 2u, "kv_token_bytes MLA %zu",
          O->kv_token_bytes(&s));
    s.kind = VL2_ATTN_MHA;
    s.n_layer = 12;
    s.n_kv_head = 10;
    s.head_dim = 128;
    s.dtype = VL2_DTYPE_F32;
    CHECK_MSG(O->kv_token_bytes(&s) == 12u * 2u * 1280u * 4u, "kv_token_bytes MHA %zu",
          O->kv_token_bytes(&s));
    m0 = O->mem_used(C);
    OK(O->alloc(C, &t, VL2_DTYPE_F32, 2, ne, &Er));
    m1 = O->mem_used(C);
    O->free_tensor(C, &t);
    m2 = O->mem_used(C);
    CHECK_MSG(m1 - m0 == 4u << 20 && m2 == m0, "mem_used %zu -> %zu -> %zu", m0, m1, m2);
    ne[0] = (int64_t)1 << 40;
    expect_err(O->alloc(C, &t, VL2_DTYPE_F32, 2, ne, &Er), VL2_EINVAL, "alloc absurd size");
    ne[0] = (int64_t)1 << 28;
    ne[1] = 4096;          /* 4 TiB */
    {
        int r = O->alloc(C, &t, VL2_DTYPE_F32, 2, ne, &Er);
        CHECK_MSG(r == VL2_ENOMEM || r == VL2_EINVAL, "alloc 4 TiB: %d", r);
        CHECK_MSG(r >= 0 || strstr(Er.msg, "MiB") || strstr(Er.msg, "large"), "message '%s'", Er.msg);
        if (r >= 0)
            O->free_tensor(C, &t);
        vl2_err_clear(&Er);
    }
}

int main(int argc, char **argv)
{
    struct vl2_backend_params p;
    vl2_backend_entry_fn entry;
    const char *options = NULL;
    void *dl;
    int quick = 0;
    int i, r;

    if (argc < 2) {
        fprintf(stderr, "usage: %s vl2-backend-cuda.so [--quick]\n", argv[0]);
        return 2;
    }
    for (i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--quick"))
            quick = 1;
        else if (!strcmp(argv[i], "--any-backend"))
            any_backend = 1;
        else if (!strcmp(argv[i], "--options") && i + 1 < argc)
            options = argv[++i];
    }
    dl = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!dl) {
        printf("FAIL dlopen: %s\n", dlerror());
        return 1;
    }
    entry = (vl2_backend_entry_fn)dlsym(dl, VL2_BACKEND_ENTRY);
    if (!entry) {
        printf("FAIL no entry symbol\n");
        return 1;
    }
    CHECK_MSG(entry(VL2_BACKEND_ABI_VERSION + 1, &Er) == NULL && Er.code == VL2_EABI,
          "entry accepts a wrong ABI version");
    vl2_err_clear(&Er);
    O = entry(VL2_BACKEND_ABI_VERSION, &Er);
    if (!O || O->abi_version != VL2_BACKEND_ABI_VERSION ||
        O->struct_size != sizeof(struct vl2_backend_ops) ||
        (!any_backend && strcmp(O->name, "cuda"))) {
        printf("FAIL entry table\n");
        return 1;
    }
    if (!any_backend) {
        test_open_refusals();
        test_supports_op();
    }
    memset(&p, 0, sizeof(p));
    p.struct_size = sizeof(p);
    p.options = options;
    p.device = any_backend ? 0 : 999;
    r = O->open(&p, &C, &Er);
    if (!any_backend) {
        CHECK_MSG(r == VL2_EBACKEND && !strncmp(Er.msg, "cuda: no CUDA device", 20),
              "open device 999: %d '%s'", r, Er.msg);
        printf("open(device 999): %s\n", Er.msg);
    } else if (r == 0) {
        O->close(C);
    }
    vl2_err_clear(&Er);
    p.device = 0;
    r = O->open(&p, &C, &Er);
    if (r < 0) {
        CHECK_MSG(r == VL2_EBACKEND && !strncmp(Er.msg, "cuda: no CUDA device", 20) &&
                  !strchr(Er.msg, '\n'),
              "open without a GPU: %d '%s'", r, Er.msg);
        printf("open: %s\n%s\n", Er.msg, check_failures ? "FAILED" : "no GPU: skipped");
        return check_failures ? 1 : 77;
    }
    printf("%s\n", O->describe(C));

    test_embed();
    test_linear(quick);
    test_norms();
    test_elementwise();
    test_copy_rows();
    test_argmax();
    test_vision_ops(quick);
    test_rope();
    test_attention(quick);
    test_moe(quick);
    test_graph_steps();
    if (!any_backend) {
        test_memory();
        test_struct_sizes();
    }

    r = O->sync(C, &Er);
    CHECK_MSG(r == 0, "final sync: %s", Er.msg);
    printf("%s\n", O->describe(C));
    for (i = 0; i < n_owned; i++) {
        O->free_tensor(C, owned[i]);
        free(owned[i]);
    }
    O->close(C);
    for (i = 0; i < n_keep; i++)
        free(keep[i]);
    printf("%d checks passed, %d failed\n", check_total - check_failures, check_failures);
    return check_failures ? 1 : 0;
}

/* ops.c - matrix products, norms, element-wise ops and data movement of the
 * CPU backend.
 */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu-impl.h"
#include "kern.h"

/* out may alias in only as the very same view (element-wise ops). */
static int check_alias_same(const struct vl2_tensor *out, const struct vl2_tensor *in,
                            const char *op, const char *what, struct vl2_err *err)
{
    if (cpu_overlaps(out, in) && !(out->data == in->data && out->ld == in->ld))
        return vl2_err_set(err, VL2_EINVAL, "cpu: %s: out partially overlaps '%s'", op, what);
    return 0;
}

static int check_dims(const struct vl2_tensor *t, int64_t rows, int64_t cols, const char *op,
                      const char *what, struct vl2_err *err)
{
    if (t->rows != rows || t->cols != cols)
        return vl2_err_set(err, VL2_EINVAL, "cpu: %s: '%s' is %lld x %lld, expected %lld x %lld",
                           op, what, (long long)t->rows, (long long)t->cols, (long long)rows,
                           (long long)cols);
    return 0;
}

/* Tasks of about @grain items over @n items (at least one per thread when n allows). */
static int64_t n_blocks(int64_t n, int64_t grain)
{
    if (n <= 0)
        return 0;
    return (n + grain - 1) / grain;
}

/* ---- matrix product ---------------------------------------------------------- */

#define MM_NB 64    /* weight rows per sgemm block */
#define MM_MB 256   /* activation rows per sgemm block */
#define GEMV_NB 32  /* weight rows per task on the small-m path */

#define OWN_NB 128  /* weight rows per cpu_gemm512 call */

size_t cpu_mm_scratch(int64_t k)
{
    size_t a = (size_t)MM_NB * (size_t)k * sizeof(float), b = cpu_gemm512_scratch(OWN_NB);
    size_t c = cpu_gemmbf_scratch();
    a = a > b ? a : b;
    return a > c ? a : c;
}

#define BFE_B 32    /* rows of W and of x per block of the bf16 emulation */

/* bf16 precision without vdpbf16ps: blocks of BFE_B weight rows and BFE_B
 * activation rows rounded to bf16 (as F32 values) into @tmp (2 * BFE_B * k
 * floats <= cpu_mm_scratch(k)), multiplied by the F32 gemm_small kernel
 * (fixed order per element: the result does not depend on the blocking). */
static void mm_bf16_emul(struct vl2_backend_ctx *ctx, const float *x, int64_t ldx, int64_t m,
                         const struct vl2_tensor *w, int64_t j0, int64_t j1, float *y,
                         int64_t ldy, float *tmp)
{
    int64_t k = w->cols;
    size_t es = vl2_dtype_size(w->dtype);
    float *wt = tmp, *at = tmp + BFE_B * k;

    for (int64_t jb = j0; jb < j1; jb += BFE_B) {
        int64_t nb = j1 - jb < BFE_B ? j1 - jb : BFE_B;
        for (int64_t j = 0; j < nb; j++) {
            float *row = wt + j * k;
            ctx->k->to_f32(row, (const char *)w->data + (size_t)((jb + j) * w->ld) * es, w->dtype, k);
            for (int64_t c = 0; c < k; c++)
                row[c] = cpu_round_bf16(row[c]);
        }
        for (int64_t ib = 0; ib < m; ib += BFE_B) {
            int64_t mb = m - ib < BFE_B ? m - ib : BFE_B;
            for (int64_t i = 0; i < mb; i++)
                for (int64_t c = 0; c < k; c++)
                    at[i * k + c] = cpu_round_bf16(x[(ib + i) * ldx + c]);
            ctx->k->gemm_small(at, k, mb, wt, k, VL2_DTYPE_F32, nb, k, y + ib * ldy + jb, ldy);
        }
    }
}

void cpu_mm(struct vl2_backend_ctx *ctx, const float *x, int64_t ldx, int64_t m,
            const struct vl2_tensor *w, int64_t j0, int64_t j1, float *y, int64_t ldy, void *tmp)
{
    int64_t k = w->cols;
    size_t es = vl2_dtype_size(w->dtype);

    if (m <= 0 || j1 <= j0)
        return;
    if (m < ctx->blas_min_rows) {
        ctx->k->gemm_small(x, ldx, m, (const char *)w->data + (size_t)(j0 * w->ld) * es, w->ld,
                           w->dtype, j1 - j0, k, y + j0, ldy);
        return;
    }
    if (ctx->precision == CPU_PREC_BF16) {
        if (!ctx->bf16_dp) {
            mm_bf16_emul(ctx, x, ldx, m, w, j0, j1, y, ldy, tmp);
            return;
        }
        for (int64_t jb = j0; jb < j1; jb += CPU_GEMMBF_NB) {
            int64_t nb = j1 - jb < CPU_GEMMBF_NB ? j1 - jb : CPU_GEMMBF_NB;
            cpu_gemmbf(x, ldx, m, (const char *)w->data + (size_t)(jb * w->ld) * es, w->ld,
                       w->dtype, nb, k, NULL, y + jb, ldy, tmp);
        }
        return;
    }
    if (ctx->own_gemm) {
        for (int64_t jb = j0; jb < j1; jb += OWN_NB) {
            int64_t nb = j1 - jb < OWN_NB ? j1 - jb : OWN_NB;
            cpu_gemm512(x, ldx, m, (const char *)w->data + (size_t)(jb * w->ld) * es, w->ld,
                        w->dtype, nb, k, y + jb, ldy, tmp);
        }
        return;
    }
    for (int64_t jb = j0; jb < j1; jb += MM_NB) {
        int64_t nb = j1 - jb < MM_NB ? j1 - jb : MM_NB;
        const float *wf;
        int64_t ldw;

        if (f32_direct(w)) {
            wf = (const float *)w->data + jb * w->ld;
            ldw = w->ld;
        } else {
            float *t = tmp;
            for (int64_t j = 0; j < nb; j++)
                ctx->k->to_f32(t + j * k, (const char *)w->data + (size_t)((jb + j) * w->ld) * es,
                               w->dtype, k);
            wf = t;
            ldw = k;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)nb, (int)k, 1.0f, x,
                    (int)ldx, wf, (int)ldw, 0.0f, y + jb, (int)ldy);
    }
}

struct linear_job {
    struct vl2_backend_ctx *ctx;
    float *out;
    int64_t ldo;
    const float *x;
    int64_t ldx;
    int64_t m;
    const struct vl2_tensor *w;
    const float *bias;
    int64_t n_out;
    int64_t nb;      /* weight rows per task */
    int64_t mb;      /* activation rows per task */
    int64_t n_jb;    /* column blocks */
    int64_t panels;  /* > 0: column block jb is panels [jb*panels/n_jb, (jb+1)*panels/n_jb)
                      * of 32 columns (bf16 precision: balanced over the threads) */
    uint32_t *apk;   /* bf16 kernel: x packed once (cpu_gemmbf_pack_a), or NULL */
};

#define PACK_GROUPS 8   /* groups of 12 rows per packing task */

static void pack_task(void *arg, int64_t task, int tid)
{
    struct linear_job *j = arg;
    int64_t ng = (j->m + CPU_GEMMBF_GROUP - 1) / CPU_GEMMBF_GROUP;
    int64_t g0 = task * PACK_GROUPS, g1 = g0 + PACK_GROUPS < ng ? g0 + PACK_GROUPS : ng;

    (void)tid;
    cpu_gemmbf_pack_a(j->apk, j->x, j->ldx, j->m, j->w->cols, g0, g1);
}

static void linear_task(void *arg, int64_t task, int tid)
{
    struct linear_job *j = arg;
    int64_t ib = task / j->n_jb, jb = task % j->n_jb;
    int64_t i0 = ib * j->mb, i1 = i0 + j->mb < j->m ? i0 + j->mb : j->m;
    int64_t c0 = jb * j->nb, c1 = c0 + j->nb < j->n_out ? c0 + j->nb : j->n_out;
    float *y = j->out + i0 * j->ldo;

    if (j->panels) {
        c0 = jb * j->panels / j->n_jb * 32;
        c1 = (jb + 1) * j->panels / j->n_jb * 32;
        c1 = c1 < j->n_out ? c1 : j->n_out;
    }
    if (j->apk) {
        /* bf16 kernel on the packed x, the bias in its epilogue */
        const struct vl2_tensor *w = j->w;
        cpu_gemmbf_pa(j->apk, j->m,
                      (const char *)w->data + (size_t)(c0 * w->ld) * vl2_dtype_size(w->dtype),
                      w->ld, w->dtype, c1 - c0, w->cols, j->bias ? j->bias + c0 : NULL, y + c0,
                      j->ldo, cpu_scratch(j->ctx, tid));
        return;
    }
    if (j->panels && j->ctx->bf16_dp) {
        /* bf16 kernel with the bias in its epilogue */
        const struct vl2_tensor *w = j->w;
        size_t es = vl2_dtype_size(w->dtype);
        for (int64_t cb = c0; cb < c1; cb += CPU_GEMMBF_NB) {
            int64_t nb = c1 - cb < CPU_GEMMBF_NB ? c1 - cb : CPU_GEMMBF_NB;
            cpu_gemmbf(j->x + i0 * j->ldx, j->ldx, i1 - i0,
                       (const char *)w->data + (size_t)(cb * w->ld) * es, w->ld, w->dtype, nb,
                       w->cols, j->bias ? j->bias + cb : NULL, y + cb, j->ldo,
                       cpu_scratch(j->ctx, tid));
        }
        return;
    }
    cpu_mm(j->ctx, j->x + i0 * j->ldx, j->ldx, i1 - i0, j->w, c0, c1, y, j->ldo,
           cpu_scratch(j->ctx, tid));
    if (j->bias)
        for (int64_t i = i0; i < i1; i++)   /* y + 1 * b: the same rounding as y + b */
            j->ctx->k->axpy(j->out + i * j->ldo + c0, 1.0f, j->bias + c0, c1 - c0);
}

int cpu_linear(struct vl2_backend_ctx *ctx, struct vl2_tensor *out, const struct vl2_tensor *x,
               const struct vl2_tensor *w, const struct vl2_tensor *bias, struct vl2_err *err)
{
    struct linear_job j;
    const char *op = "linear";
    int r;

    if ((r = cpu_check_f32(out, op, "out", err)) < 0 || (r = cpu_check_f32(x, op, "x", err)) < 0 ||
        (r = cpu_check_float(w, op, "w", err)) < 0)
        return r;
    if ((r = check_dims(out, x->rows, w->rows, op, "out", err)) < 0)
        return r;
    if (x->cols != w->cols)
        return vl2_err_set(err, VL2_EINVAL, "cpu: linear: x has %lld columns, w has %lld",
                           (long long)x->cols, (long long)w->cols);
    if (x->cols > INT32_MAX || w->rows > INT32_MAX || x->ld > INT32_MAX || out->ld > INT32_MAX)
        return vl2_err_set(err, VL2_EINVAL, "cpu: linear: dimensions too large");
    if ((r = cpu_check_no_alias(out, x, op, "x", err)) < 0 ||
        (r = cpu_check_no_alias(out, w, op, "w", err)) < 0)
        return r;
    memset(&j, 0, sizeof(j));
    if (bias) {
        if ((r = cpu_check_vec(bias, w->rows, op, "bias", err)) < 0)
            return r;
        if ((r = cpu_check_no_alias(out, bias, op, "bias", err)) < 0)
            return r;
        j.bias = cpu_vec_f32(ctx, bias, w->rows, 0, err);
        if (!j.bias)
            return VL2_ENOMEM;
    }
    if (x->rows == 0 || w->rows == 0)
        return 0;
    if ((r = cpu_scratch_reserve(ctx, cpu_mm_scratch(x->cols), err)) < 0)
        return r;
    j.ctx = ctx;
    j.out = out->data;
    j.ldo = out->ld;
    j.x = x->data;
    j.ldx = x->ld;
    j.m = x->rows;
    j.w = w;
    j.n_out = w->rows;
    if (x->rows < ctx->blas_min_rows) {
        j.mb = x->rows;
        j.nb = GEMV_NB;
    } else if (ctx->precision == CPU_PREC_BF16) {
        /* all rows per task (cpu_gemmbf blocks them), column tasks of at most
         * 8 panels, a multiple of the thread count */
        int64_t per = (int64_t)ctx->n_threads * 8;
        j.mb = x->rows;
        j.panels = (j.n_out + 31) / 32;
        j.n_jb = (j.panels + per - 1) / per * ctx->n_threads;
        if (j.n_jb > j.panels)
            j.n_jb = j.panels;
        if (ctx->bf16_dp) {
            /* x packed once for all the column tasks (ctx->big: whole-op scratch,
             * also moe's; ops do not overlap) */
            int64_t ng = (j.m + CPU_GEMMBF_GROUP - 1) / CPU_GEMMBF_GROUP;
            if ((r = cpu_buf_reserve(ctx, &ctx->big, cpu_gemmbf_pa_size(j.m, x->cols), err)) < 0)
                return r;
            j.apk = ctx->big.p;
            cpu_pool_run(ctx->pool, (ng + PACK_GROUPS - 1) / PACK_GROUPS, pack_task, &j);
        }
        cpu_pool_run(ctx->pool, j.n_jb, linear_task, &j);
        return 0;
    } else {
        j.mb = ctx->own_gemm ? 4 * MM_MB : MM_MB;
        j.nb = MM_NB * 2;
    }
    j.n_jb = n_blocks(j.n_out, j.nb);
    cpu_pool_run(ctx->pool, n_blocks(j.m, j.mb) * j.n_jb, linear_task, &j);
    return 0;
}

/* ---- embedding ------------------------------------------------------------------- */

struct embed_job {
    struct vl2_backend_ctx *ctx;
    struct vl2_tensor *out;
    const struct vl2_tensor *table;
    const int32_t *ids;
};

static void embed_task(void *arg, int64_t i, int tid)
{
    struct embed_job *j = arg;
    const struct vl2_tensor *t = j->table;
    size_t es = vl2_dtype_size(t->dtype);

    j->ctx->k->to_f32((float *)j->out->data + i * j->out->ld,
                      (const char *)t->data + (size_t)((int64_t)j->ids[i] * t->ld) * es, t->dtype,
                      t->cols);
}

int cpu_embed(struct vl2_backend_ctx *ctx, struct vl2_tensor *out, const struct vl2_tensor *table,
              const int32_t *ids, struct vl2_err *err)
{
    struct embed_job j = { ctx, out, table, ids };
    int r;

    if ((r = cpu_check_f32(out, "embed", "out", err)) < 0 ||
        (r = cpu_check_float(table, "embed", "table", err)) < 0)
        return r;
    if (out->cols != table->cols)
        return vl2_err_set(err, VL2_EINVAL, "cpu: embed: out has %lld columns, table has %lld",
                           (long long)out->cols, (long long)table->cols);
    if (out->rows && !ids)
        return vl2_err_set(err, VL2_EINVAL, "cpu: embed: ids is NULL");
    if ((r = cpu_check_no_alias(out, table, "embed", "table", err)) < 0)
        return r;
    for (int64_t i = 0; i < out->rows; i++)
        if (ids[i] < 0 || ids[i] >= table->rows)
            return vl2_err_set(err, VL2_EINVAL, "cpu: embed: id %d at %lld out of range (0..%lld)",
                               (int)ids[i], (long long)i, (long long)table->rows - 1);
    cpu_pool_run(ctx->pool, out->rows, embed_task, &j);
    return 0;
}

/* ---- row-wise ops ------------------------------------------------------------------ */

enum rowop { ROW_RMS, ROW_LN, ROW_ADD, ROW_GELU_TANH, ROW_GELU_ERF, ROW_SWIGLU };

struct row_job {
    struct vl2_backend_ctx *ctx;
    int op;
    float *out;
    int64_t ldo;
    const float *a;
    int64_t lda;
    const struct vl2_tensor *b;   /* add: any float dtype; swiglu: up (F32) */
    const float *w;
    const float *bias;
    float eps;
    int64_t rows;
    int64_t cols;
    int64_t rb;
};

static inline float gelu_erf1(float x)
{
    return 0.5f * x * (1.0f + erff(x * 0.7071067811865476f));
}

static void row_task(void *arg, int64_t task, int tid)
{
    struct row_job *j = arg;
    int64_t r0 = task * j->rb, r1 = r0 + j->rb < j->rows ? r0 + j->rb : j->rows;
    int64_t n = j->cols, c;

    for (int64_t r = r0; r < r1; r++) {
        const float *a = j->a + r * j->lda;
        float *o = j->out + r * j->ldo;

        switch (j->op) {
        case ROW_RMS: {
            float ss = j->ctx->k->dot(a, a, n);
            float s = 1.0f / sqrtf(ss / (float)n + j->eps);
            for (c = 0; c < n; c++)
                o[c] = j->w[c] * (a[c] * s);
            break;
        }
        case ROW_LN: {
            double mean = 0.0, var = 0.0;
            float fm, s;
            for (c = 0; c < n; c++)
                mean += a[c];
            mean /= (double)n;
            for (c = 0; c < n; c++) {
                double d = a[c] - mean;
                var += d * d;
            }
            var /= (double)n;
            fm = (float)mean;
            s = (float)(1.0 / sqrt(var + j->eps));
            for (c = 0; c < n; c++)
                o[c] = (a[c] - fm) * s * j->w[c] + j->bias[c];
            break;
        }
        case ROW_ADD: {
            const struct vl2_tensor *b = j->b;
            int64_t br = r % b->rows;
            if (f32_direct(b)) {
                const float *bv = (const float *)b->data + br * b->ld;
                for (c = 0; c < n; c++)
                    o[c] = a[c] + bv[c];
            } else {
                float *tmp = cpu_scratch(j->ctx, tid);
                j->ctx->k->to_f32(tmp, (const char *)b->data +
                                           (size_t)(br * b->ld) * vl2_dtype_size(b->dtype),
                                  b->dtype, n);
                for (c = 0; c < n; c++)
                    o[c] = a[c] + tmp[c];
            }
            break;
        }
        case ROW_GELU_TANH:
            j->ctx->k->gelu_tanh(o, a, n);
            break;
        case ROW_GELU_ERF:
            for (c = 0; c < n; c++)
                o[c] = gelu_erf1(a[c]);
            break;
        case ROW_SWIGLU: {
            j->ctx->k->swiglu(o, a, (const float *)j->b->data + r * j->b->ld, n);
            break;
        }
        }
    }
}

static void run_rows(struct vl2_backend_ctx *ctx, struct row_job *j)
{
    /* about 16k elements per task */
    int64_t rb = 16384 / (j->cols > 0 ? j->cols : 1);
    j->ctx = ctx;
    j->rb = rb < 1 ? 1 : rb;
    cpu_pool_run(ctx->pool, n_blocks(j->rows, j->rb), row_task, j);
}

int cpu_rmsnorm(struct vl2_backend_ctx *ctx, struct vl2_tensor *out, const struct vl2_tensor *x,
                const struct vl2_tensor *w, float eps, struct vl2_err *err)
{
    struct row_job j = { 0 };
    int r;

    if ((r = cpu_check_f32(out, "rmsnorm", "out", err)) < 0 ||
        (r = cpu_check_f32(x, "rmsnorm", "x", err)) < 0)
        return r;
    if ((r = check_dims(out, x->rows, x->cols, "rmsnorm", "out", err)) < 0 ||
        (r = cpu_check_vec(w, x->cols, "rmsnorm", "w", err)) < 0 ||
        (r = check_alias_same(out, x, "rmsnorm", "x", err)) < 0)
        return r;
    if (!(eps >= 0.0f))
        return vl2_err_set(err, VL2_EINVAL, "cpu: rmsnorm: eps %g must be >= 0", (double)eps);
    j.w = cpu_vec_f32(ctx, w, x->cols, 0, err);
    if (!j.w)
        return VL2_ENOMEM;
    j.op = ROW_RMS;
    j.out = out->data;
    j.ldo = out->ld;
    j.a = x->data;
    j.lda = x->ld;
    j.eps = eps;
    j.rows = x->rows;
    j.cols = x->cols;
    run_rows(ctx, &j);
    return 0;
}

int cpu_layernorm(struct vl2_backend_ctx *ctx, struct vl2_tensor *out, const struct vl2_tensor *x,
                  const struct vl2_tensor *w, const struct vl2_tensor *b, float eps,
                  struct vl2_err *err)
{
    struct row_job j = { 0 };
    int r;

    if ((r = cpu_check_f32(out, "layernorm", "out", err)) < 0 ||
        (r = cpu_check_f32(x, "layernorm", "x", err)) < 0)
        return r;
    if ((r = check_dims(out, x->rows, x->cols, "layernorm", "out", err)) < 0 ||
        (r = cpu_check_vec(w, x->cols, "layernorm", "w", err)) < 0 ||
        (r = cpu_check_vec(b, x->cols, "layernorm", "b", err)) < 0 ||
        (r = check_alias_same(out, x, "layernorm", "x", err)) < 0)
        return r;
    if (!(eps >= 0.0f))
        return vl2_err_set(err, VL2_EINVAL, "cpu: layernorm: eps %g must be >= 0", (double)eps);
    j.w = cpu_vec_f32(ctx, w, x->cols, 0, err);
    j.bias = j.w ? cpu_vec_f32(ctx, b, x->cols, 1, err) : NULL;
    if (!j.bias)
        return VL2_ENOMEM;
    j.op = ROW_LN;
    j.out = out->data;
    j.ldo = out->ld;
    j.a = x->data;
    j.lda = x->ld;
    j.eps = eps;
    j.rows = x->rows;
    j.cols = x->cols;
    run_rows(ctx, &j);
    return 0;
}

/* Greedy choice per row (ABI argmax): the first largest value, NaN never
 * winning, 0 when the row starts with NaN.  One pass per row: the rows are
 * few (one per decoding sequence) and the pass is short next to the step. */
int cpu_argmax(struct vl2_backend_ctx *ctx, struct vl2_tensor *out, const struct vl2_tensor *x,
               struct vl2_err *err)
{
    int64_t i, c;
    int r;

    (void)ctx;
    if ((r = cpu_check_f32(x, "argmax", "x", err)) < 0 ||
        (r = cpu_check_tensor(out, "argmax", "out", err)) < 0)
        return r;
    if (out->dtype != VL2_DTYPE_I32 || out->rows * out->cols != x->rows ||
        (out->cols != 1 && out->rows != 1))
        return vl2_err_set(err, VL2_EINVAL, "cpu: argmax: 'out' must be an I32 vector of %lld "
                           "entries", (long long)x->rows);
    if (x->cols < 1)
        return vl2_err_set(err, VL2_EINVAL, "cpu: argmax: 'x' has no columns");
    for (i = 0; i < x->rows; i++) {
        const float *z = (const float *)x->data + i * x->ld;
        int32_t *o = out->cols == 1 ? (int32_t *)out->data + i * out->ld
                                    : (int32_t *)out->data + i;
        float best = z[0];
        int32_t bi = 0;
        if (best == best)
            for (c = 1; c < x->cols; c++)
                if (z[c] > best) {
                    best = z[c];
                    bi = (int32_t)c;
                }
        *o = bi;
    }
    return 0;
}

int cpu_add(struct vl2_backend_ctx *ctx, struct vl2_tensor *out, const struct vl2_tensor *a,
            const struct vl2_tensor *b, struct vl2_err *err)
{
    struct row_job j = { 0 };
    int r;

    if ((r = cpu_check_f32(out, "add", "out", err)) < 0 ||
        (r = cpu_check_f32(a, "add", "a", err)) < 0 ||
        (r = cpu_check_float(b, "add", "b", err)) < 0)
        return r;
    if ((r = check_dims(out, a->rows, a->cols, "add", "out", err)) < 0)
        return r;
    if (b->cols != a->cols || b->rows < 1 || b->rows > a->rows)
        return vl2_err_set(err, VL2_EINVAL,
                           "cpu: add: b is %lld x %lld, expected %lld columns and 1..%lld rows",
                           (long long)b->rows, (long long)b->cols, (long long)a->cols,
                           (long long)a->rows);
    if ((r = check_alias_same(out, a, "add", "a", err)) < 0 ||
        (r = check_alias_same(out, b, "add", "b", err)) < 0)
        return r;
    if ((r = cpu_scratch_reserve(ctx, (size_t)a->cols * sizeof(float), err)) < 0)
        return r;
    j.op = ROW_ADD;
    j.out = out->data;
    j.ldo = out->ld;
    j.a = a->data;
    j.lda = a->ld;
    j.b = b;
    j.rows = a->rows;
    j.cols = a->cols;
    run_rows(ctx, &j);
    return 0;
}

static int gelu(struct vl2_backend_ctx *ctx, struct vl2_tensor *x, int op, const char *name,
                struct vl2_err *err)
{
    struct row_job j = { 0 };
    int r;

    if ((r = cpu_check_f32(x, name, "x", err)) < 0)
        return r;
    j.op = op;
    j.out = x->data;
    j.ldo = x->ld;
    j.a = x->data;
    j.lda = x->ld;
    j.rows = x->rows;
    j.cols = x->cols;
    run_rows(ctx, &j);
    return 0;
}

int cpu_gelu_tanh(struct vl2_backend_ctx *ctx, struct vl2_tensor *x, struct vl2_err *err)
{
    return gelu(ctx, x, ROW_GELU_TANH, "gelu_tanh", err);
}

int cpu_gelu_erf(struct vl2_backend_ctx *ctx, struct vl2_tensor *x, struct vl2_err *err)
{
    return gelu(ctx, x, ROW_GELU_ERF, "gelu_erf", err);
}

int cpu_swiglu(struct vl2_backend_ctx *ctx, struct vl2_tensor *out, const struct vl2_tensor *gate,
               const struct vl2_tensor *up, struct vl2_err *err)
{
    struct row_job j = { 0 };
    int r;

    if ((r = cpu_check_f32(out, "swiglu", "out", err)) < 0 ||
        (r = cpu_check_f32(gate, "swiglu", "gate", err)) < 0 ||
        (r = cpu_check_f32(up, "swiglu", "up", err)) < 0)
        return r;
    if ((r = check_dims(out, gate->rows, gate->cols, "swiglu", "out", err)) < 0 ||
        (r = check_dims(up, gate->rows, gate->cols, "swiglu", "up", err)) < 0 ||
        (r = check_alias_same(out, gate, "swiglu", "gate", err)) < 0 ||
        (r = check_alias_same(out, up, "swiglu", "up", err)) < 0)
        return r;
    j.op = ROW_SWIGLU;
    j.out = out->data;
    j.ldo = out->ld;
    j.a = gate->data;
    j.lda = gate->ld;
    j.b = up;
    j.rows = gate->rows;
    j.cols = gate->cols;
    run_rows(ctx, &j);
    return 0;
}

/* ---- data movement ------------------------------------------------------------------ */

int cpu_copy_rows(struct vl2_backend_ctx *ctx, struct vl2_tensor *dst, const int32_t *dst_rows,
                  const struct vl2_tensor *src, const int32_t *src_rows, int32_t n,
                  struct vl2_err *err)
{
    int r;

    if ((r = cpu_check_f32(dst, "copy_rows", "dst", err)) < 0 ||
        (r = cpu_check_f32(src, "copy_rows", "src", err)) < 0)
        return r;
    if (dst->cols != src->cols)
        return vl2_err_set(err, VL2_EINVAL, "cpu: copy_rows: dst has %lld columns, src %lld",
                           (long long)dst->cols, (long long)src->cols);
    if (n < 0 || (n > 0 && (!dst_rows || !src_rows)))
        return vl2_err_set(err, VL2_EINVAL, "cpu: copy_rows: bad index arrays (n %d)", (int)n);
    for (int32_t i = 0; i < n; i++) {
        if (dst_rows[i] < 0 || dst_rows[i] >= dst->rows)
            return vl2_err_set(err, VL2_EINVAL, "cpu: copy_rows: dst row %d at %d out of range (0..%lld)",
                               (int)dst_rows[i], (int)i, (long long)dst->rows - 1);
        if (src_rows[i] < 0 || src_rows[i] >= src->rows)
            return vl2_err_set(err, VL2_EINVAL, "cpu: copy_rows: src row %d at %d out of range (0..%lld)",
                               (int)src_rows[i], (int)i, (long long)src->rows - 1);
    }
    for (int32_t i = 0; i < n; i++)
        memmove((float *)dst->data + (int64_t)dst_rows[i] * dst->ld,
                (const float *)src->data + (int64_t)src_rows[i] * src->ld,
                (size_t)src->cols * sizeof(float));
    return 0;
}

struct patch_job {
    const float *img;
    int64_t ldi;
    float *out;
    int64_t ldo;
    int64_t S, p, g;
};

static void patch_task(void *arg, int64_t row, int tid)
{
    struct patch_job *j = arg;
    int64_t gg = j->g * j->g;
    int64_t i = row / gg, gy = (row % gg) / j->g, gx = row % j->g;
    const float *im = j->img + i * j->ldi;
    float *o = j->out + row * j->ldo;

    for (int64_t c = 0; c < 3; c++)
        for (int64_t ky = 0; ky < j->p; ky++) {
            const float *src = im + c * j->S * j->S + (gy * j->p + ky) * j->S + gx * j->p;
            memcpy(o + (c * j->p + ky) * j->p, src, (size_t)j->p * sizeof(float));
        }
}

int cpu_patchify(struct vl2_backend_ctx *ctx, struct vl2_tensor *out, const struct vl2_tensor *img,
                 int32_t image_size, int32_t patch, struct vl2_err *err)
{
    struct patch_job j;
    int64_t g;
    int r;

    if ((r = cpu_check_f32(out, "patchify", "out", err)) < 0 ||
        (r = cpu_check_f32(img, "patchify", "img", err)) < 0)
        return r;
    if (patch <= 0 || image_size < patch || image_size > 65536)
        return vl2_err_set(err, VL2_EINVAL, "cpu: patchify: bad image size %d / patch %d",
                           (int)image_size, (int)patch);
    g = image_size / patch;
    if (img->cols != 3LL * image_size * image_size)
        return vl2_err_set(err, VL2_EINVAL, "cpu: patchify: img has %lld columns, expected 3*%d*%d",
                           (long long)img->cols, (int)image_size, (int)image_size);
    if ((r = check_dims(out, img->rows * g * g, 3LL * patch * patch, "patchify", "out", err)) < 0 ||
        (r = cpu_check_no_alias(out, img, "patchify", "img", err)) < 0)
        return r;
    j.img = img->data;
    j.ldi = img->ld;
    j.out = out->data;
    j.ldo = out->ld;
    j.S = image_size;
    j.p = patch;
    j.g = g;
    cpu_pool_run(ctx->pool, out->rows, patch_task, &j);
    return 0;
}

struct unfold_job {
    const float *feat;
    int64_t ldf;
    float *out;
    int64_t ldo;
    int64_t g, h2, c;  /* grid, blocks per side, channels */
};

static void unfold_task(void *arg, int64_t q, int tid)
{
    struct unfold_job *j = arg;
    int64_t per = j->h2 * j->h2;
    int64_t i = q / per, by = (q % per) / j->h2, bx = q % j->h2;
    float *o = j->out + q * j->ldo;

    for (int ky = 0; ky < 2; ky++)
        for (int kx = 0; kx < 2; kx++) {
            int64_t y = 2 * by + ky, x = 2 * bx + kx;
            int off = ky * 2 + kx;
            if (y >= j->g || x >= j->g) {
                for (int64_t c = 0; c < j->c; c++)
                    o[c * 4 + off] = 0.0f;
            } else {
                const float *f = j->feat + (i * j->g * j->g + y * j->g + x) * j->ldf;
                for (int64_t c = 0; c < j->c; c++)
                    o[c * 4 + off] = f[c];
            }
        }
}

int cpu_unfold2x2(struct vl2_backend_ctx *ctx, struct vl2_tensor *out, const struct vl2_tensor *feat,
                  int32_t grid, struct vl2_err *err)
{
    struct unfold_job j;
    int64_t n_img, h2;
    int r;

    if ((r = cpu_check_f32(out, "unfold2x2", "out", err)) < 0 ||
        (r = cpu_check_f32(feat, "unfold2x2", "feat", err)) < 0)
        return r;
    if (grid <= 0 || grid > 65536 || feat->rows % ((int64_t)grid * grid) != 0)
        return vl2_err_set(err, VL2_EINVAL,
                           "cpu: unfold2x2: feat has %lld rows, not a multiple of grid %d squared",
                           (long long)feat->rows, (int)grid);
    n_img = feat->rows / ((int64_t)grid * grid);
    h2 = (grid + (grid & 1)) / 2;
    if ((r = check_dims(out, n_img * h2 * h2, 4 * feat->cols, "unfold2x2", "out", err)) < 0 ||
        (r = cpu_check_no_alias(out, feat, "unfold2x2", "feat", err)) < 0)
        return r;
    j.feat = feat->data;
    j.ldf = feat->ld;
    j.out = out->data;
    j.ldo = out->ld;
    j.g = grid;
    j.h2 = h2;
    j.c = feat->cols;
    cpu_pool_run(ctx->pool, out->rows, unfold_task, &j);
    return 0;
}

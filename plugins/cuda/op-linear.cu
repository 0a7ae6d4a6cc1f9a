/* op-linear.cu - linear(): out = x W^T (+ bias).  Products of at most
 * GEMV_MAX_ROWS rows go through the bandwidth-bound kernels of k-gemv.cu with
 * F32 activations (LIN_GEMV); mid-size products with BF16 weights through
 * the tensor-core kernel of k-moe.cu (LIN_MMA, x converted to BF16 in the
 * scratch); the rest through cuBLAS (LIN_BLAS: BF16 or F16 inputs, F32
 * accumulation; F32 weights in plain F32). */
#include <string.h>

#include "cuda-ctx.h"

int vl2__cu_op_linear(struct vl2_backend_ctx *ctx, struct vl2_tensor *out,
                   const struct vl2_tensor *x, const struct vl2_tensor *w,
                   const struct vl2_tensor *bias, struct vl2_err *err)
{
    struct op_rec r;
    struct rec_linear *l = &r.u.linear;
    int rc;

    if ((rc = vl2__cu_check_t(out, "linear", "out", 1, err)) < 0 ||
        (rc = vl2__cu_check_t(x, "linear", "x", 1, err)) < 0 ||
        (rc = vl2__cu_check_t(w, "linear", "w", 0, err)) < 0 ||
        (bias && (rc = vl2__cu_check_t(bias, "linear", "bias", 0, err)) < 0))
        return rc;
    if (w->cols != x->cols || out->rows != x->rows || out->cols != w->rows ||
        (bias && bias->rows * bias->cols != w->rows))
        return vl2_err_set(err, VL2_EINVAL,
                           "cuda: linear: shapes x %lld x %lld, w %lld x %lld, out %lld x %lld%s",
                           (long long)x->rows, (long long)x->cols, (long long)w->rows,
                           (long long)w->cols, (long long)out->rows, (long long)out->cols,
                           bias && bias->rows * bias->cols != w->rows ? ", bias length differs"
                                                                      : "");
    if (out->data == x->data)
        return vl2_err_set(err, VL2_EINVAL, "cuda: linear: out must not alias x");
    if (bias && bias->rows != 1 && bias->ld != bias->cols)
        return vl2_err_set(err, VL2_EINVAL, "cuda: linear: bias must be contiguous");
    if (x->rows == 0)
        return 0;
    rec_init(&r, OPK_LINEAR);
    l->out = td(out);
    l->x = td(x);
    l->w = td(w);
    l->bias = td(bias);
    if (x->rows <= GEMV_MAX_ROWS) {
        const size_t es = vl2_dtype_size(w->dtype);
        l->path = LIN_GEMV;
        l->nt = gemv_nt(x->rows);
        l->vec = aligned16(w->data) && (w->ld * es) % 16 == 0 && aligned16(x->data) &&
                 x->ld % 4 == 0;
    } else if (ctx->opt.mma_linear && x->rows <= MMA_MAX_ROWS && w->dtype == VL2_DTYPE_BF16 &&
               aligned16(w->data) && w->ld % 8 == 0 && x->cols % 8 == 0) {
        l->path = LIN_MMA;
    } else {
        l->path = LIN_BLAS;
    }
    return vl2__cu_submit(ctx, &r, NULL, 0, err);
}

size_t vl2__cu_plan_linear(const struct op_rec *r)
{
    const struct rec_linear *l = &r->u.linear;
    if (l->path == LIN_GEMV || l->w.dtype == VL2_DTYPE_F32)
        return 0;
    return align_up((size_t)(l->x.rows * l->x.cols) * 2, SCRATCH_ALIGN);
}

/* out[n, O] = x[n, I] W^T through cuBLAS; x converted to W's dtype in @xb. */
static int gemm_xwt(struct vl2_backend_ctx *ctx, float *out, int64_t ldo, const float *x,
                    int64_t ldx, int n, int I, const struct tdesc *w, void *xb,
                    struct vl2_err *err)
{
    const float one = 1.0f, zero = 0.0f;
    const void *B = x;
    int64_t ldb = ldx;
    cublasStatus_t s;

    if (w->dtype != VL2_DTYPE_F32) {
        cudaError_t e = vl2__cu_convert(xb, I, w->dtype, x, ldx, n, I, ctx->ks);
        if (e != cudaSuccess)
            return cu_fail(err, e, "linear: convert");
        B = xb;
        ldb = I;
    }
    s = cublasGemmEx(ctx->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)w->rows, n, I, &one, w->data,
                     cuda_type(w->dtype), (int)w->ld, B, cuda_type(w->dtype), (int)ldb, &zero,
                     out, CUDA_R_32F, (int)ldo, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    return s == CUBLAS_STATUS_SUCCESS ? 0 : blas_fail(err, s, "linear");
}

int vl2__cu_exec_linear(struct vl2_backend_ctx *ctx, const struct op_rec *r,
                        struct vl2_err *err)
{
    const struct rec_linear *l = &r->u.linear;
    const struct tdesc *out = &l->out, *x = &l->x, *w = &l->w, *b = &l->bias;
    const int n = (int)x->rows, I = (int)x->cols, O = (int)w->rows;
    int rc;

    if (l->path == LIN_GEMV) {
        struct vl2__cu_gemv_args a;
        memset(&a, 0, sizeof(a));
        a.x = (const float *)x->data;
        a.ldx = x->ld;
        a.y = (float *)out->data;
        a.ldy = out->ld;
        a.bias = b->data;
        a.bias_dtype = b->dtype;
        a.g0.wa = w->data;
        a.g0.ldw = w->ld;
        a.g0.n_out = O;
        a.g0.count = n;
        a.g0.K = I;
        return launched(vl2__cu_gemv(&a, w->dtype, (int)l->nt, 0, (int)l->vec, O, 1, ctx->ks),
                        "linear", err);
    }
    if (l->path == LIN_MMA) {
        struct vl2__cu_mma_args m;
        cudaError_t e = vl2__cu_convert(ctx->scratch, I, VL2_DTYPE_BF16, (const float *)x->data,
                                        x->ld, n, I, ctx->ks);
        if (e != cudaSuccess)
            return cu_fail(err, e, "linear: convert");
        memset(&m, 0, sizeof(m));
        m.a = (const uint16_t *)ctx->scratch;
        m.lda = I;
        m.out = out->data;
        m.ldo = out->ld;
        m.g0.wa = w->data;
        m.g0.ldw = w->ld;
        m.g0.n_out = O;
        m.g0.count = n;
        m.g0.K = I;
        m.bias = b->data;
        m.bias_dtype = b->dtype;
        return launched(vl2__cu_mma_grouped(&m, 0, O, 1, n, ctx->ks), "linear", err);
    }
    rc = gemm_xwt(ctx, (float *)out->data, out->ld, (const float *)x->data, x->ld, n, I, w,
                  ctx->scratch, err);
    if (rc < 0 || !b->data)
        return rc;
    return launched(vl2__cu_add_bias((float *)out->data, out->ld, b->data, b->dtype, n, O,
                                     ctx->ks),
                    "linear: bias", err);
}

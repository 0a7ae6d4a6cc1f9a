/* backend.cu - vl2-backend-cuda.so: the backend ABI (plugins/vl2-backend.h)
 * on NVIDIA GPUs.  This file holds the entry point, the function table,
 * supports_op, the argument checks every op family shares, and exec_op,
 * which hands a record to its family.  The layout of the other files is in
 * cuda-ctx.h; the options are listed in cuda-options.h.
 *
 * Large products go through cuBLAS (BF16 or F16 inputs, F32 accumulation;
 * F32 weights in plain F32), decode-sized ones through the bandwidth-bound
 * kernels of k-gemv.cu with F32 activations.  Each op is validated on the
 * host (bad input gets an error, never a launch), recorded (cuda-ctx.h) and
 * queued through the tape of graph.cu, which may capture decode steps into
 * CUDA graphs. */
#include <stddef.h>
#include <stdint.h>

#include "cuda-ctx.h"

const char *const vl2__cu_op_names[OPK_COUNT] = {
    "?", "embed", "linear", "rmsnorm", "layernorm", "add", "gelu", "swiglu", "copy_rows",
    "patchify", "unfold2x2", "attn_full", "rope", "attn_mha", "attn_mla", "moe", "argmax",
};

const char *vl2__cu_dtype_name(int dt)
{
    switch (dt) {
    case VL2_DTYPE_F32: return "F32";
    case VL2_DTYPE_F16: return "F16";
    case VL2_DTYPE_BF16: return "BF16";
    case VL2_DTYPE_I32: return "I32";
    case VL2_DTYPE_Q8: return "Q8";
    case VL2_DTYPE_Q4: return "Q4";
    }
    return "unknown";
}

int vl2__cu_check_t(const struct vl2_tensor *t, const char *op, const char *name, int f32_only,
                    struct vl2_err *err)
{
    if (!t || !t->data)
        return vl2_err_set(err, VL2_EINVAL, "cuda: %s: tensor '%s' is missing", op, name);
    if (f32_only ? t->dtype != VL2_DTYPE_F32 : !is_float_dtype(t->dtype))
        return vl2_err_set(err, f32_only ? VL2_EINVAL : VL2_EUNSUPPORTED,
                           "cuda: %s: tensor '%s' has dtype %s, expected %s", op, name,
                           vl2__cu_dtype_name(t->dtype), f32_only ? "F32" : "F32, F16 or BF16");
    if (t->rows < 0 || t->cols <= 0 || t->ld < t->cols || t->rows > INT32_MAX ||
        t->cols > INT32_MAX)
        return vl2_err_set(err, VL2_EINVAL,
                           "cuda: %s: tensor '%s' has a bad shape (%lld x %lld, ld %lld)", op,
                           name, (long long)t->rows, (long long)t->cols, (long long)t->ld);
    return 0;
}

int vl2__cu_need_batch(struct vl2_backend_ctx *ctx, const char *op, const struct vl2_tensor *x,
                       struct vl2_err *err)
{
    if (!ctx->have_batch)
        return vl2_err_set(err, VL2_EINVAL, "cuda: %s: no current batch (call begin_batch)", op);
    if (x->rows != ctx->b_rows)
        return vl2_err_set(err, VL2_EINVAL, "cuda: %s: %lld rows, the batch has %d", op,
                           (long long)x->rows, ctx->b_rows);
    return 0;
}

size_t vl2__cu_scratch_need(const struct op_rec *r)
{
    switch (r->kind) {
    case OPK_LINEAR: return vl2__cu_plan_linear(r);
    case OPK_ATTN_FULL:
    case OPK_ATTN_MHA:
    case OPK_ATTN_MLA: return vl2__cu_plan_attn(r);
    case OPK_MOE: return vl2__cu_plan_moe(r);
    }
    return 0;
}

int vl2__cu_exec_op(struct vl2_backend_ctx *ctx, const struct op_rec *r, struct vl2_err *err)
{
#ifdef VL2_TEST_KNOBS
    if (ctx->opt.skip_ops >> r->kind & 1u)
        return 0;
#endif
    switch (r->kind) {
    case OPK_LINEAR:
        return vl2__cu_exec_linear(ctx, r, err);
    case OPK_ATTN_FULL:
    case OPK_ATTN_MHA:
    case OPK_ATTN_MLA:
        return vl2__cu_exec_attn(ctx, r, err);
    case OPK_MOE:
        return vl2__cu_exec_moe(ctx, r, err);
    case OPK_EMBED:
    case OPK_RMSNORM:
    case OPK_LAYERNORM:
    case OPK_ADD:
    case OPK_ARGMAX:
    case OPK_GELU:
    case OPK_SWIGLU:
    case OPK_COPY_ROWS:
    case OPK_PATCHIFY:
    case OPK_UNFOLD:
    case OPK_ROPE:
        return vl2__cu_exec_basic(ctx, r, err);
    }
    return vl2_err_set(err, VL2_EINTERNAL, "cuda: unknown op record %d", r->kind);
}

/* What this backend takes (see the checks of each op): weights and tables
 * of F32, F16 or BF16 (weight() also stores I32), caches of F32, F16 or
 * BF16; no Q8/Q4.  dtype -1 asks about the op alone. */
static int cu_supports_op(struct vl2_backend_ctx *ctx, int op, int dtype)
{
    const int fl = is_float_dtype(dtype);

    (void)ctx;
    if (op < VL2_OP_WEIGHT || op >= VL2_OP_COUNT)
        return 0;
    if (dtype == -1)
        return 1;
    switch (op) {
    case VL2_OP_WEIGHT:
        return fl || dtype == VL2_DTYPE_I32;
    case VL2_OP_ARGMAX:      /* F32 logits in, I32 ids out */
        return dtype == VL2_DTYPE_F32;
    default:                 /* weights, tables, caches, norm weights, inputs */
        return fl;
    }
}

extern "C" {

/* C++20 designated initialisers: in the order of the header, which the
 * compiler checks (a reordered header is a compile error here). */
static const struct vl2_backend_ops cuda_ops = {
    .abi_version = VL2_BACKEND_ABI_VERSION,
    .struct_size = sizeof(struct vl2_backend_ops),
    .name = "cuda",
    .open = vl2__cu_open,
    .close = vl2__cu_close,
    .describe = vl2__cu_describe,
    .mem_used = vl2__cu_mem_used,
    .alloc = vl2__cu_alloc,
    .weight = vl2__cu_weight,
    .free_tensor = vl2__cu_free_tensor,
    .write = vl2__cu_write,
    .read = vl2__cu_read,
    .sync = vl2__cu_sync,
    .kv_new = vl2__cu_kv_new,
    .kv_free = vl2__cu_kv_free,
    .kv_token_bytes = vl2__cu_kv_token_bytes,
    .begin_batch = vl2__cu_begin_batch,
    .embed = vl2__cu_op_embed,
    .linear = vl2__cu_op_linear,
    .rmsnorm = vl2__cu_op_rmsnorm,
    .layernorm = vl2__cu_op_layernorm,
    .add = vl2__cu_op_add,
    .gelu_tanh = vl2__cu_op_gelu_tanh,
    .gelu_erf = vl2__cu_op_gelu_erf,
    .swiglu = vl2__cu_op_swiglu,
    .copy_rows = vl2__cu_op_copy_rows,
    .patchify = vl2__cu_op_patchify,
    .unfold2x2 = vl2__cu_op_unfold2x2,
    .attn_full = vl2__cu_op_attn_full,
    .rope = vl2__cu_op_rope,
    .attn_mha = vl2__cu_op_attn_mha,
    .attn_mla = vl2__cu_op_attn_mla,
    .moe = vl2__cu_op_moe,
    .argmax = vl2__cu_op_argmax,
    .supports_op = cu_supports_op,
};

__attribute__((visibility("default"))) const struct vl2_backend_ops *
vl2_backend_entry(uint32_t abi_version, struct vl2_err *err)
{
    if (abi_version != VL2_BACKEND_ABI_VERSION) {
        vl2_err_set(err, VL2_EABI, "cuda: backend built for ABI version %u, asked for %u",
                    VL2_BACKEND_ABI_VERSION, abi_version);
        return NULL;
    }
    return &cuda_ops;
}

} /* extern "C" */

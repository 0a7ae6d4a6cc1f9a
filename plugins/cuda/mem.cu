/* mem.cu - device memory of a context: allocation against the memory
 * budget, and the two buffers ops share (the scratch, carved per op by the
 * plans of op-*.cu, and the staging buffer of host arrays).  Growing either
 * ends the current step and drops the captured graphs (their addresses
 * move). */
#include <stdlib.h>
#include <string.h>

#include "cuda-ctx.h"

int vl2__cu_dev_alloc(struct vl2_backend_ctx *ctx, void **ret, size_t size, const char *what,
                      struct vl2_err *err)
{
    void *p = NULL;
    cudaError_t e;

    if (size == 0)
        size = 1;
    if (ctx->mem_budget && ctx->mem_used + size > ctx->mem_budget)
        return vl2_err_set(err, VL2_ENOMEM,
                           "cuda: %s of %.1f MiB does not fit the memory budget of %.1f MiB "
                           "(%.1f MiB in use)",
                           what, MIB(size), MIB(ctx->mem_budget), MIB(ctx->mem_used));
    e = cudaMalloc(&p, size);
    if (e != cudaSuccess) {
        size_t fr = 0, tot = 0;
        (void)cudaGetLastError();
        (void)cudaMemGetInfo(&fr, &tot);
        return vl2_err_set(err, VL2_ENOMEM,
                           "cuda: %s of %.1f MiB does not fit on device %d '%s': %.1f MiB "
                           "free of %.1f MiB (%.1f MiB held by this backend)",
                           what, MIB(size), ctx->device, ctx->prop.name, MIB(fr), MIB(tot),
                           MIB(ctx->mem_used));
    }
    ctx->mem_used += size;
    *ret = p;
    return 0;
}

void vl2__cu_dev_free(struct vl2_backend_ctx *ctx, void *p, size_t size)
{
    if (!p)
        return;
    (void)cudaFree(p);
    ctx->mem_used -= size ? size : 1;
}

/* Make the scratch buffer at least @need bytes (only in eager mode). */
int vl2__cu_ensure_scratch(struct vl2_backend_ctx *ctx, size_t need, struct vl2_err *err)
{
    void *p;
    size_t sz;
    int r;

    if (need <= ctx->scratch_size)
        return 0;
    if ((r = vl2__cu_graph_fallback(ctx, err)) < 0)
        return r;
    sz = align_up(need + need / 4, 1u << 20);
    (void)cudaStreamSynchronize(ctx->st);
    vl2__cu_dev_free(ctx, ctx->scratch, ctx->scratch_size);
    ctx->scratch = NULL;
    ctx->scratch_size = 0;
    vl2__cu_graphs_drop_all(ctx);
    r = vl2__cu_dev_alloc(ctx, &p, sz, "scratch buffer", err);
    if (r < 0)
        return r;
    if (CU_SKIPPING(ctx))
        (void)cudaMemsetAsync(p, 0, sz, ctx->st);
    ctx->scratch = (char *)p;
    ctx->scratch_size = sz;
    return 0;
}

int vl2__cu_ensure_stage(struct vl2_backend_ctx *ctx, size_t need, struct vl2_err *err)
{
    void *p;
    char *h;
    size_t sz;
    int r;

    if (need <= ctx->stage_cap)
        return 0;
    if ((r = vl2__cu_graph_fallback(ctx, err)) < 0)
        return r;
    sz = align_up(need * 2, 1u << 16);
    h = (char *)realloc(ctx->stage_h, sz);
    if (!h)
        return vl2_err_set(err, VL2_ENOMEM, "cuda: out of host memory");
    ctx->stage_h = h;
    (void)cudaStreamSynchronize(ctx->st);
    vl2__cu_dev_free(ctx, ctx->stage_d, ctx->stage_cap);
    ctx->stage_d = NULL;
    ctx->stage_cap = 0;
    vl2__cu_graphs_drop_all(ctx);
    r = vl2__cu_dev_alloc(ctx, &p, sz, "staging buffer", err);
    if (r < 0)
        return r;
    ctx->stage_d = (char *)p;
    ctx->stage_cap = sz;
    return 0;
}

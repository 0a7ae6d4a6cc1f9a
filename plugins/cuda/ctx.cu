/* ctx.cu - the life of a context (open, close, describe) and the ABI calls
 * that are not ops: device memory of tensors (alloc, weight, free_tensor,
 * write, read, sync), KV caches, and begin_batch (the batch metadata; the
 * graph tape decides in graph.cu whether the step is recorded or replayed).
 *
 * Tensors live in device memory: weights are copied once at weight() in
 * their checkpoint dtype (BF16 stays BF16), activations are F32.  Every op
 * is queued on the context's one stream. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda-ctx.h"

int vl2__cu_open(const struct vl2_backend_params *p, struct vl2_backend_ctx **ret_ctx,
                   struct vl2_err *err)
{
    struct vl2_backend_ctx *ctx;
    struct vl2__cu_opts opt;
    int n_dev = 0, dev = p ? p->device : 0, rv, drv = 0, rt = 0;
    cudaError_t e;
    cublasStatus_t s;
    void *ptr;

    /* the caller's parameters first: refused the same with or without a GPU */
    if (p && p->struct_size != sizeof(struct vl2_backend_params))
        return vl2_err_set(err, VL2_EABI,
                           "cuda: open: vl2_backend_params of %u bytes, this backend knows %zu "
                           "(built for ABI %u)",
                           p->struct_size, sizeof(struct vl2_backend_params),
                           VL2_BACKEND_ABI_VERSION);
    if ((rv = vl2__cu_opts_parse(&opt, p ? p->options : NULL, err)) < 0)
        return rv;
    e = cudaGetDeviceCount(&n_dev);
    if (e != cudaSuccess || n_dev <= 0) {
        (void)cudaGetLastError();
        (void)cudaRuntimeGetVersion(&rt);
        if (e == cudaErrorInsufficientDriver)
            return vl2_err_set(err, VL2_EBACKEND,
                               "cuda: no CUDA device: no NVIDIA driver, or one older than "
                               "CUDA %d.%d needs", rt / 1000, (rt % 1000) / 10);
        return vl2_err_set(err, VL2_EBACKEND, "cuda: no CUDA device: %s",
                           e != cudaSuccess ? cudaGetErrorString(e) : "none found");
    }
    if (dev < 0 || dev >= n_dev)
        return vl2_err_set(err, VL2_EBACKEND, "cuda: no CUDA device %d: %d device%s found", dev,
                           n_dev, n_dev == 1 ? "" : "s");
    ctx = (struct vl2_backend_ctx *)calloc(1, sizeof(*ctx));
    if (!ctx)
        return vl2_err_set(err, VL2_ENOMEM, "cuda: out of host memory");
    ctx->device = dev;
    ctx->mem_budget = p ? p->mem_budget : 0;
    ctx->opt = opt;
    if (ctx->opt.profile)
        ctx->opt.graphs = 0;
    if ((e = cudaSetDevice(dev)) != cudaSuccess ||
        (e = cudaGetDeviceProperties(&ctx->prop, dev)) != cudaSuccess) {
        rv = vl2_err_set(err, VL2_EBACKEND, "cuda: no CUDA device: device %d: %s", dev,
                         cudaGetErrorString(e));
        goto out_free;
    }
    if (ctx->prop.major < 9) {
        rv = vl2_err_set(err, VL2_EBACKEND,
                         "cuda: device %d '%s' has compute capability %d.%d; this build "
                         "needs 9.0 or newer",
                         dev, ctx->prop.name, ctx->prop.major, ctx->prop.minor);
        goto out_free;
    }
    if (ctx->opt.prefer_shared)   /* test knob: the device's setting, process-wide */
        (void)cudaDeviceSetCacheConfig(cudaFuncCachePreferShared);
    (void)cudaGetLastError();
    if ((e = cudaStreamCreateWithFlags(&ctx->st, cudaStreamNonBlocking)) != cudaSuccess) {
        rv = cu_fail(err, e, "stream");
        goto out_free;
    }
    ctx->ks.s = ctx->st;
    ctx->ks.pdl = ctx->opt.pdl;
    ctx->ks.gemv_r1 = ctx->opt.gemv_r1;
    if ((s = cublasCreate(&ctx->blas)) != CUBLAS_STATUS_SUCCESS) {
        rv = blas_fail(err, s, "cublasCreate");
        goto out_close;
    }
    if ((rv = vl2__cu_dev_alloc(ctx, &ctx->blas_ws, BLAS_WS_SIZE, "cuBLAS workspace", err)) < 0)
        goto out_close;
    if ((s = cublasSetStream(ctx->blas, ctx->st)) != CUBLAS_STATUS_SUCCESS ||
        (s = cublasSetWorkspace(ctx->blas, ctx->blas_ws, BLAS_WS_SIZE)) !=
            CUBLAS_STATUS_SUCCESS ||
        (s = cublasSetMathMode(ctx->blas, CUBLAS_DEFAULT_MATH)) != CUBLAS_STATUS_SUCCESS) {
        rv = blas_fail(err, s, "cuBLAS setup");
        goto out_close;
    }
    if (ctx->opt.profile && vl2__cu_prof_init(ctx) < 0) {
        rv = vl2_err_set(err, VL2_EBACKEND, "cuda: profile: cannot create events");
        goto out_close;
    }
    ctx->max_smem = vl2__cu_attn_init();
    if (ctx->max_smem <= 0) {
        rv = vl2_err_set(err, VL2_EBACKEND, "cuda: device %d: cannot configure the attention "
                         "kernels: %s", dev, cudaGetErrorString(cudaGetLastError()));
        goto out_close;
    }
    if (vl2__cu_mla_init(ctx->max_smem) < 0) {
        rv = vl2_err_set(err, VL2_EBACKEND, "cuda: device %d: cannot configure the MLA "
                         "kernels: %s", dev, cudaGetErrorString(cudaGetLastError()));
        goto out_close;
    }
    ctx->meta_max_seqs = 256;
    ctx->meta_max_rows = 4096;
    ctx->meta_rows_off = align_up((size_t)ctx->meta_max_seqs * sizeof(struct vl2__cu_seq), 256);
    {
        size_t mb = ctx->meta_rows_off + (size_t)ctx->meta_max_rows * sizeof(struct vl2__cu_row);
        ctx->meta_h = (char *)calloc(1, mb);
        if (!ctx->meta_h) {
            rv = vl2_err_set(err, VL2_ENOMEM, "cuda: out of host memory");
            goto out_close;
        }
        if ((rv = vl2__cu_dev_alloc(ctx, &ptr, mb, "batch metadata", err)) < 0)
            goto out_close;
        ctx->meta_d = (char *)ptr;
        ctx->meta_alloc = mb;
    }
    if ((rv = vl2__cu_dev_alloc(ctx, &ptr, sizeof(unsigned int), "routing counter", err)) < 0)
        goto out_close;
    ctx->ticket_d = (unsigned int *)ptr;
    if (cudaMemset(ctx->ticket_d, 0, sizeof(unsigned int)) != cudaSuccess) {
        rv = vl2_err_set(err, VL2_EBACKEND, "cuda: device %d: cudaMemset failed", dev);
        goto out_close;
    }
    if ((rv = vl2__cu_ensure_stage(ctx, 1u << 16, err)) < 0 ||
        (rv = vl2__cu_ensure_scratch(ctx, 16u << 20, err)) < 0)
        goto out_close;
    (void)cudaDriverGetVersion(&drv);
    (void)cudaRuntimeGetVersion(&rt);
    snprintf(ctx->desc, sizeof(ctx->desc),
             "cuda: device %d %s (sm_%d%d, %d SMs, %.1f GiB), driver %d.%d, runtime %d.%d, "
             "cuBLAS, graphs %s%s%s",
             dev, ctx->prop.name, ctx->prop.major, ctx->prop.minor,
             ctx->prop.multiProcessorCount, (double)ctx->prop.totalGlobalMem / 1073741824.0,
             drv / 1000, (drv % 1000) / 10, rt / 1000, (rt % 1000) / 10,
             ctx->opt.graphs ? "on" : "off", ctx->opt.pdl ? ", dependent launches" : "",
             ctx->opt.profile ? ", profiling" : "");
    *ret_ctx = ctx;
    return 0;

out_close:
    vl2__cu_close(ctx);
    return rv;
out_free:
    (void)cudaGetLastError();
    free(ctx);
    return rv;
}

void vl2__cu_close(struct vl2_backend_ctx *ctx)
{
    int i;

    if (!ctx)
        return;
    (void)cudaSetDevice(ctx->device);
    if (ctx->capturing) {
        cudaGraph_t gr = NULL;
        (void)cudaStreamEndCapture(ctx->st, &gr);
        if (gr)
            (void)cudaGraphDestroy(gr);
    }
    if (ctx->st)
        (void)cudaStreamSynchronize(ctx->st);
    for (i = 0; i < MAX_GRAPHS; i++)
        vl2__cu_graph_free(&ctx->graphs[i]);
    vl2__cu_prof_free(ctx);
    vl2__cu_moe_tabs_free(ctx);
    vl2__cu_dev_free(ctx, ctx->scratch, ctx->scratch_size);
    vl2__cu_dev_free(ctx, ctx->stage_d, ctx->stage_cap);
    vl2__cu_dev_free(ctx, ctx->meta_d, ctx->meta_alloc);
    vl2__cu_dev_free(ctx, ctx->ticket_d, sizeof(unsigned int));
    vl2__cu_dev_free(ctx, ctx->blas_ws, BLAS_WS_SIZE);
    free(ctx->stage_h);
    free(ctx->meta_h);
    if (ctx->rd_pin)
        (void)cudaFreeHost(ctx->rd_pin);
    if (ctx->blas)
        (void)cublasDestroy(ctx->blas);
    if (ctx->st)
        (void)cudaStreamDestroy(ctx->st);
    (void)cudaGetLastError();
    free(ctx);
}

/* The device line plus the graph counters (captured, replayed, fallbacks). */
const char *vl2__cu_describe(struct vl2_backend_ctx *ctx)
{
    if (!ctx)
        return "cuda";
    {
        int n = snprintf(ctx->desc_full, sizeof(ctx->desc_full),
                         "%s (captured %llu, replayed %llu, fallbacks %llu)", ctx->desc,
                         (unsigned long long)ctx->n_captured,
                         (unsigned long long)ctx->n_replayed,
                         (unsigned long long)ctx->n_fallback);
        if (ctx->opt.profile)
            (void)vl2__cu_prof_describe(ctx, ctx->desc_full, n, sizeof(ctx->desc_full));
    }
    return ctx->desc_full;
}

size_t vl2__cu_mem_used(struct vl2_backend_ctx *ctx)
{
    return ctx ? ctx->mem_used : 0;
}

/* ---- memory -------------------------------------------------------------------- */

static int check_shape(int dtype, int ndim, const int64_t *ne, size_t *ret_bytes,
                       struct vl2_err *err)
{
    size_t n = 1;
    int i;

    if (!vl2_dtype_size(dtype))
        return vl2_err_set(err, VL2_EUNSUPPORTED, "cuda: dtype %s (%d) is not supported",
                           vl2__cu_dtype_name(dtype), dtype);
    if (ndim < 1 || ndim > 4 || !ne)
        return vl2_err_set(err, VL2_EINVAL, "cuda: tensor with %d dimensions (1 to 4 allowed)",
                           ndim);
    for (i = 0; i < ndim; i++) {
        if (ne[i] <= 0 || ne[i] > INT32_MAX)
            return vl2_err_set(err, VL2_EINVAL, "cuda: tensor dimension %d is %lld", i,
                               (long long)ne[i]);
        if (n > ((size_t)1 << 46) / (size_t)ne[i])
            return vl2_err_set(err, VL2_EINVAL, "cuda: tensor too large");
        n *= (size_t)ne[i];
    }
    *ret_bytes = n * vl2_dtype_size(dtype);
    return 0;
}

static int new_tensor(struct vl2_backend_ctx *ctx, struct vl2_tensor *t, int dtype, int ndim,
                      const int64_t *ne, const void *host, struct vl2_err *err)
{
    struct alloc_rec *ar;
    size_t bytes = 0;
    void *p;
    int r;

    if (!t)
        return vl2_err_set(err, VL2_EINVAL, "cuda: tensor descriptor is NULL");
    if ((r = check_shape(dtype, ndim, ne, &bytes, err)) < 0)
        return r;
    (void)cudaSetDevice(ctx->device);
    if ((r = vl2__cu_end_step(ctx, err)) < 0)
        return r;
    ar = (struct alloc_rec *)malloc(sizeof(*ar));
    if (!ar)
        return vl2_err_set(err, VL2_ENOMEM, "cuda: out of host memory");
    r = vl2__cu_dev_alloc(ctx, &p, bytes, host ? "weight" : "tensor", err);
    if (r < 0) {
        free(ar);
        return r;
    }
    ar->size = bytes;
    if (host) {
        cudaError_t e = cudaMemcpyAsync(p, host, bytes, cudaMemcpyHostToDevice, ctx->st);
        if (e != cudaSuccess) {
            vl2__cu_dev_free(ctx, p, bytes);
            free(ar);
            return cu_fail(err, e, "weight upload");
        }
    } else if (CU_SKIPPING(ctx)) {
        (void)cudaMemsetAsync(p, 0, bytes, ctx->st);   /* skipped ops leave zeros */
    }
    memset(t, 0, sizeof(*t));
    vl2_tensor_set_shape(t, dtype, ndim, ne);
    t->data = p;
    t->priv = ar;
    return 0;
}

int vl2__cu_alloc(struct vl2_backend_ctx *ctx, struct vl2_tensor *t, int dtype, int ndim,
                    const int64_t *ne, struct vl2_err *err)
{
    return new_tensor(ctx, t, dtype, ndim, ne, NULL, err);
}

int vl2__cu_weight(struct vl2_backend_ctx *ctx, struct vl2_tensor *t, int dtype, int ndim,
                     const int64_t *ne, const void *host, struct vl2_err *err)
{
    if (!host)
        return vl2_err_set(err, VL2_EINVAL, "cuda: weight: host data is NULL");
    return new_tensor(ctx, t, dtype, ndim, ne, host, err);
}

void vl2__cu_free_tensor(struct vl2_backend_ctx *ctx, struct vl2_tensor *t)
{
    struct alloc_rec *ar;

    if (!ctx || !t || !t->priv)
        return;
    (void)cudaSetDevice(ctx->device);
    (void)vl2__cu_end_step(ctx, NULL);
    ar = (struct alloc_rec *)t->priv;
    (void)cudaStreamSynchronize(ctx->st);
    vl2__cu_dev_free(ctx, t->data, ar->size);
    free(ar);
    t->priv = NULL;
    t->data = NULL;
}

/* Bytes of the storage of @t reachable from its data pointer. */
static int span_ok(const struct vl2_tensor *t, size_t offset, size_t size)
{
    const size_t es = vl2_dtype_size(t->dtype);
    size_t span;

    if (!es || t->rows < 0 || t->cols < 0 || t->ld < t->cols)
        return 0;
    span = t->rows > 0 ? ((size_t)(t->rows - 1) * (size_t)t->ld + (size_t)t->cols) * es : 0;
    return offset <= span && size <= span - offset;
}

int vl2__cu_write(struct vl2_backend_ctx *ctx, struct vl2_tensor *t, size_t offset,
                    const void *src, size_t size, struct vl2_err *err)
{
    cudaError_t e;
    int r;

    if (!t || !t->data || (!src && size))
        return vl2_err_set(err, VL2_EINVAL, "cuda: write: NULL tensor or source");
    if (!span_ok(t, offset, size))
        return vl2_err_set(err, VL2_EINVAL,
                           "cuda: write: %zu bytes at offset %zu are outside the tensor", size,
                           offset);
    (void)cudaSetDevice(ctx->device);
    if ((r = vl2__cu_end_step(ctx, err)) < 0)
        return r;
    if (!size)
        return 0;
    e = cudaMemcpyAsync((char *)t->data + offset, src, size, cudaMemcpyHostToDevice, ctx->st);
    return e == cudaSuccess ? 0 : cu_fail(err, e, "write");
}

int vl2__cu_sync(struct vl2_backend_ctx *ctx, struct vl2_err *err)
{
    cudaError_t e;
    int r;

    if (!ctx)
        return vl2_err_set(err, VL2_EINVAL, "cuda: sync: no context");
    (void)cudaSetDevice(ctx->device);
    if ((r = vl2__cu_end_step(ctx, err)) < 0)
        return r;
    e = cudaStreamSynchronize(ctx->st);
    return e == cudaSuccess ? 0 : cu_fail(err, e, "queued work failed");
}

int vl2__cu_read(struct vl2_backend_ctx *ctx, const struct vl2_tensor *t, size_t offset,
                   void *dst, size_t size, struct vl2_err *err)
{
    cudaError_t e;
    int r;

    if (!t || !t->data || (!dst && size))
        return vl2_err_set(err, VL2_EINVAL, "cuda: read: NULL tensor or destination");
    if (!span_ok(t, offset, size))
        return vl2_err_set(err, VL2_EINVAL,
                           "cuda: read: %zu bytes at offset %zu are outside the tensor", size,
                           offset);
    (void)cudaSetDevice(ctx->device);
    if ((r = vl2__cu_end_step(ctx, err)) < 0)
        return r;
    if (size >= READ_PIN_MIN && size > ctx->rd_pin_size) {
        /* large reads (logits) go through a pinned buffer: one fast DMA, one memcpy */
        void *p = NULL;
        size_t sz = align_up(size, 1u << 20);
        if (ctx->rd_pin)
            (void)cudaFreeHost(ctx->rd_pin);
        ctx->rd_pin = NULL;
        ctx->rd_pin_size = 0;
        if (cudaHostAlloc(&p, sz, cudaHostAllocDefault) == cudaSuccess) {
            ctx->rd_pin = p;
            ctx->rd_pin_size = sz;
        }
        (void)cudaGetLastError();
    }
    if (size >= READ_PIN_MIN && size <= ctx->rd_pin_size) {
        e = cudaMemcpyAsync(ctx->rd_pin, (const char *)t->data + offset, size,
                            cudaMemcpyDeviceToHost, ctx->st);
        if (e == cudaSuccess)
            e = cudaStreamSynchronize(ctx->st);
        if (e != cudaSuccess)
            return cu_fail(err, e, "read");
        memcpy(dst, ctx->rd_pin, size);
        return 0;
    }
    if (size) {
        e = cudaMemcpyAsync(dst, (const char *)t->data + offset, size, cudaMemcpyDeviceToHost,
                            ctx->st);
        if (e != cudaSuccess)
            return cu_fail(err, e, "read");
    }
    e = cudaStreamSynchronize(ctx->st);
    return e == cudaSuccess ? 0 : cu_fail(err, e, "queued work failed");
}

/* ---- KV cache ------------------------------------------------------------------ */

static size_t kv_row_elems(const struct vl2_kv_shape *s)
{
    if (s->kind == VL2_ATTN_MHA)
        return 2 * (size_t)s->n_kv_head * (size_t)s->head_dim;
    return (size_t)s->kv_lora_rank + (size_t)s->rope_dim;
}

size_t vl2__cu_kv_token_bytes(const struct vl2_kv_shape *s)
{
    if (!s || s->struct_size != sizeof(struct vl2_kv_shape) || s->n_layer <= 0 ||
        !vl2_dtype_size(s->dtype))
        return 0;   /* also for a shape of another ABI revision */
    return (size_t)s->n_layer * kv_row_elems(s) * vl2_dtype_size(s->dtype);
}

static int check_kv_shape(const struct vl2_kv_shape *s, struct vl2_err *err)
{
    if (!s)
        return vl2_err_set(err, VL2_EINVAL, "cuda: kv_new: shape is NULL");
    if (s->struct_size != sizeof(struct vl2_kv_shape))
        return vl2_err_set(err, VL2_EABI,
                           "cuda: kv_new: vl2_kv_shape of %u bytes, this backend knows %zu",
                           s->struct_size, sizeof(struct vl2_kv_shape));
    if (s->dtype != VL2_DTYPE_F32 && s->dtype != VL2_DTYPE_BF16 && s->dtype != VL2_DTYPE_F16)
        return vl2_err_set(err, VL2_EUNSUPPORTED, "cuda: kv cache dtype %s not supported",
                           vl2__cu_dtype_name(s->dtype));
    if (s->n_layer <= 0 || s->capacity <= 0)
        return vl2_err_set(err, VL2_EINVAL, "cuda: kv cache with %d layers, capacity %d",
                           s->n_layer, s->capacity);
    if (s->kind == VL2_ATTN_MHA) {
        if (s->n_kv_head <= 0 || s->head_dim <= 0 || s->head_dim > 512)
            return vl2_err_set(err, VL2_EINVAL, "cuda: MHA kv cache with %d heads of %d",
                               s->n_kv_head, s->head_dim);
    } else if (s->kind == VL2_ATTN_MLA) {
        if (s->kv_lora_rank <= 0 || s->kv_lora_rank > 512 || s->rope_dim <= 0 ||
            (s->rope_dim & 1))
            return vl2_err_set(err, VL2_EINVAL, "cuda: MLA kv cache with rank %d, rope %d",
                               s->kv_lora_rank, s->rope_dim);
    } else {
        return vl2_err_set(err, VL2_EINVAL, "cuda: kv cache kind %d", s->kind);
    }
    return 0;
}

int vl2__cu_kv_new(struct vl2_backend_ctx *ctx, const struct vl2_kv_shape *shape,
                     struct vl2_kv **ret_kv, struct vl2_err *err)
{
    struct vl2_kv *kv;
    size_t bytes;
    void *p;
    int r;

    if ((r = check_kv_shape(shape, err)) < 0)
        return r;
    (void)cudaSetDevice(ctx->device);
    if ((r = vl2__cu_end_step(ctx, err)) < 0)
        return r;
    bytes = vl2__cu_kv_token_bytes(shape) * (size_t)shape->capacity;
    kv = (struct vl2_kv *)calloc(1, sizeof(*kv));
    if (!kv)
        return vl2_err_set(err, VL2_ENOMEM, "cuda: out of host memory");
    r = vl2__cu_dev_alloc(ctx, &p, bytes, "kv cache", err);
    if (r < 0) {
        free(kv);
        return r;
    }
    kv->shape = *shape;
    kv->dev = (char *)p;
    kv->bytes = bytes;
    *ret_kv = kv;
    return 0;
}

void vl2__cu_kv_free(struct vl2_backend_ctx *ctx, struct vl2_kv *kv)
{
    if (!ctx || !kv)
        return;
    (void)cudaSetDevice(ctx->device);
    (void)vl2__cu_end_step(ctx, NULL);
    (void)cudaStreamSynchronize(ctx->st);
    vl2__cu_dev_free(ctx, kv->dev, kv->bytes);
    free(kv);
}

/* ---- batch --------------------------------------------------------------------- */

int vl2__cu_begin_batch(struct vl2_backend_ctx *ctx, const struct vl2_batch *b,
                          struct vl2_err *err)
{
    struct vl2__cu_seq *ds;
    struct vl2__cu_row *dr;
    struct vl2_kv_shape kvs;
    int32_t i, j, row = 0, max_rows = 0;
    int r;

    if (!ctx || !b || (b->n_seqs > 0 && !b->seqs))
        return vl2_err_set(err, VL2_EINVAL, "cuda: begin_batch: NULL batch");
    if (b->struct_size != sizeof(struct vl2_batch))
        return vl2_err_set(err, VL2_EABI,
                           "cuda: begin_batch: vl2_batch of %u bytes, this backend knows %zu",
                           b->struct_size, sizeof(struct vl2_batch));
    (void)cudaSetDevice(ctx->device);
    if ((r = vl2__cu_end_step(ctx, err)) < 0)
        return r;
    ctx->have_batch = 0;
    if (b->n_seqs <= 0 || b->n_rows <= 0)
        return vl2_err_set(err, VL2_EINVAL, "cuda: begin_batch: %d rows in %d sequences",
                           b->n_rows, b->n_seqs);
    memset(&kvs, 0, sizeof(kvs));
    for (i = 0; i < b->n_seqs; i++) {
        const struct vl2_batch_seq *s = &b->seqs[i];
        if (!s->kv)
            return vl2_err_set(err, VL2_EINVAL, "cuda: begin_batch: sequence %d has no cache",
                               i);
        if (s->row0 != row || s->n_rows <= 0 || s->n_past < 0)
            return vl2_err_set(err, VL2_EINVAL,
                               "cuda: begin_batch: sequence %d: row0 %d, %d rows, n_past %d "
                               "(rows must follow each other from 0)",
                               i, s->row0, s->n_rows, s->n_past);
        if ((int64_t)s->n_past + s->n_rows > s->kv->shape.capacity)
            return vl2_err_set(err, VL2_ELIMIT,
                               "cuda: begin_batch: sequence %d: %d + %d tokens exceed the "
                               "cache capacity %d",
                               i, s->n_past, s->n_rows, s->kv->shape.capacity);
        if (i == 0)
            kvs = s->kv->shape;
        else if (!same_kv_layout(&kvs, &s->kv->shape))
            return vl2_err_set(err, VL2_EINVAL,
                               "cuda: begin_batch: sequence %d has a cache of another shape", i);
        row += s->n_rows;
        if (s->n_rows > max_rows)
            max_rows = s->n_rows;
    }
    if (row != b->n_rows)
        return vl2_err_set(err, VL2_EINVAL, "cuda: begin_batch: n_rows %d, sequences hold %d",
                           b->n_rows, row);
    if (b->n_seqs > ctx->meta_max_seqs || b->n_rows > ctx->meta_max_rows) {
        int32_t ms = b->n_seqs > ctx->meta_max_seqs ? b->n_seqs : ctx->meta_max_seqs;
        int32_t mr = b->n_rows > ctx->meta_max_rows ? b->n_rows : ctx->meta_max_rows;
        size_t off = align_up((size_t)ms * sizeof(struct vl2__cu_seq), 256);
        size_t mb = off + (size_t)mr * sizeof(struct vl2__cu_row);
        char *h = (char *)realloc(ctx->meta_h, mb);
        void *p;
        if (!h)
            return vl2_err_set(err, VL2_ENOMEM, "cuda: out of host memory");
        ctx->meta_h = h;
        (void)cudaStreamSynchronize(ctx->st);
        vl2__cu_dev_free(ctx, ctx->meta_d, ctx->meta_alloc);
        ctx->meta_d = NULL;
        ctx->meta_alloc = 0;
        vl2__cu_graphs_drop_all(ctx);
        if ((r = vl2__cu_dev_alloc(ctx, &p, mb, "batch metadata", err)) < 0)
            return r;
        ctx->meta_d = (char *)p;
        ctx->meta_alloc = mb;
        ctx->meta_max_seqs = ms;
        ctx->meta_max_rows = mr;
        ctx->meta_rows_off = off;
    }
    ds = (struct vl2__cu_seq *)ctx->meta_h;
    dr = (struct vl2__cu_row *)(ctx->meta_h + ctx->meta_rows_off);
    for (i = 0; i < b->n_seqs; i++) {
        const struct vl2_batch_seq *s = &b->seqs[i];
        ds[i].kv = s->kv->dev;
        ds[i].n_past = s->n_past;
        ds[i].n_rows = s->n_rows;
        ds[i].row0 = s->row0;
        ds[i].cap = s->kv->shape.capacity;
        for (j = 0; j < s->n_rows; j++) {
            dr[s->row0 + j].seq = i;
            dr[s->row0 + j].pos = s->n_past + j;
        }
    }
    ctx->meta_bytes = ctx->meta_rows_off + (size_t)b->n_rows * sizeof(struct vl2__cu_row);
    ctx->have_batch = 1;
    ctx->b_rows = b->n_rows;
    ctx->b_seqs = b->n_seqs;
    ctx->b_max_seq_rows = max_rows;
    ctx->b_kv = kvs;
    ctx->b_kv.capacity = 0;
    ctx->stage_used = 0;
    ctx->tick++;

    if (vl2__cu_graph_begin(ctx, b, &kvs))
        return 0;
    /* eager: the metadata goes up now */
    if (ctx->opt.profile)
        (void)vl2__cu_spin(4000, ctx->ks);
    {
        cudaError_t e = cudaMemcpyAsync(ctx->meta_d, ctx->meta_h, ctx->meta_bytes,
                                        cudaMemcpyHostToDevice, ctx->st);
        if (e != cudaSuccess)
            return cu_fail(err, e, "begin_batch: upload");
    }
    return 0;
}

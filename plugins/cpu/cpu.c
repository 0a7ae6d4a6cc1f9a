/* cpu.c - vl2-backend-cpu.so: entry point, context, options, memory, KV
 * caches, batch, supports_op.
 *
 * Options (params->options, the grammar of vl2-options.h; unknown keys and
 * bad values are refused with VL2_EINVAL):
 *   isa=scalar|avx2|avx512   force an instruction set (default: the best this
 *                            CPU has; a set it lacks is refused, VL2_EUNSUPPORTED)
 *   precision=f32|bf16       blocked products (and the vision attention) in F32, the
 *                            default, or with operands rounded to bf16 (kern.h)
 * Test builds only (meson -Dtest_knobs=true, which defines VL2_TEST_KNOBS;
 * the test suite builds its own copy with them): knobs that exist to measure
 * and to test one code path, refused by a production plugin:
 *   blas_min_rows=N          linear(), moe: rows from which the blocked product is used
 *                            instead of the GEMV kernels (1..1048576, default 16)
 *   gemm=own|blas            many rows: own AVX-512 kernel (default where AVX-512 is used)
 *                            or OpenBLAS sgemm
 *   mla=auto|absorbed|expanded  attn_mla form per sequence (auto, the default: fewer
 *                            operations; absorbed wins for decode, expanded for long prefill)
 *   attn_full=auto|fused|matrix  vision attention: fused online-softmax kernel (AVX-512)
 *                            or score matrices (auto, the default: fused for precision=bf16)
 * Every option lives in the context: two contexts with different options do
 * not interfere.  No environment variable is read.
 */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cpu-impl.h"
#include "kern.h"
#include "vl2-options.h"

/* Provided by OpenBLAS (cblas.h declares it in most versions; keep our own
 * declaration so the build does not depend on which cblas.h is found). */
void openblas_set_num_threads(int num_threads);

static const char *isa_name(int isa)
{
    switch (isa) {
    case CPU_ISA_AVX512: return "avx512";
    case CPU_ISA_AVX2: return "avx2";
    }
    return "scalar";
}

/* ---- helpers shared by the op files ---------------------------------------- */

void *cpu_aligned_alloc(size_t size)
{
    void *p = NULL;
    if (size == 0)
        size = CPU_ALIGN;
    if (posix_memalign(&p, CPU_ALIGN, (size + CPU_ALIGN - 1) / CPU_ALIGN * CPU_ALIGN) != 0)
        return NULL;
    return p;
}

int cpu_scratch_reserve(struct vl2_backend_ctx *ctx, size_t size, struct vl2_err *err)
{
    int i;

    for (i = 0; i < ctx->n_threads; i++) {
        struct cpu_scratch *s = &ctx->scratch[i];
        void *p;
        if (s->size >= size)
            continue;
        p = cpu_aligned_alloc(size);
        if (!p)
            return vl2_err_set(err, VL2_ENOMEM, "cpu: cannot allocate %zu bytes of scratch", size);
        free(s->p);
        atomic_fetch_sub(&ctx->mem_used, s->size);
        atomic_fetch_add(&ctx->mem_used, size);
        s->p = p;
        s->size = size;
    }
    return 0;
}

int cpu_check_tensor(const struct vl2_tensor *t, const char *op, const char *what,
                     struct vl2_err *err)
{
    if (!t)
        return vl2_err_set(err, VL2_EINVAL, "cpu: %s: tensor '%s' is NULL", op, what);
    if (!t->data)
        return vl2_err_set(err, VL2_EINVAL, "cpu: %s: tensor '%s' has no data", op, what);
    if (t->rows < 0 || t->cols < 0 || t->ld < t->cols)
        return vl2_err_set(err, VL2_EINVAL,
                           "cpu: %s: tensor '%s' has a bad shape (%lld x %lld, ld %lld)", op,
                           what, (long long)t->rows, (long long)t->cols, (long long)t->ld);
    return 0;
}

int cpu_check_f32(const struct vl2_tensor *t, const char *op, const char *what,
                  struct vl2_err *err)
{
    int r = cpu_check_tensor(t, op, what, err);
    if (r < 0)
        return r;
    if (t->dtype != VL2_DTYPE_F32)
        return vl2_err_set(err, VL2_EUNSUPPORTED, "cpu: %s: tensor '%s' must be F32 (dtype %d)",
                           op, what, (int)t->dtype);
    return 0;
}

int cpu_check_float(const struct vl2_tensor *t, const char *op, const char *what,
                    struct vl2_err *err)
{
    int r = cpu_check_tensor(t, op, what, err);
    if (r < 0)
        return r;
    if (t->dtype != VL2_DTYPE_F32 && t->dtype != VL2_DTYPE_BF16 && t->dtype != VL2_DTYPE_F16)
        return vl2_err_set(err, VL2_EUNSUPPORTED,
                           "cpu: %s: tensor '%s' has dtype %d, expected F32, BF16 or F16", op,
                           what, (int)t->dtype);
    return 0;
}

int cpu_buf_reserve(struct vl2_backend_ctx *ctx, struct cpu_scratch *s, size_t size,
                    struct vl2_err *err)
{
    void *p;

    if (s->size >= size)
        return 0;
    p = cpu_aligned_alloc(size);
    if (!p)
        return vl2_err_set(err, VL2_ENOMEM, "cpu: cannot allocate %zu bytes", size);
    free(s->p);
    atomic_fetch_sub(&ctx->mem_used, s->size);
    atomic_fetch_add(&ctx->mem_used, size);
    s->p = p;
    s->size = size;
    return 0;
}

const float *cpu_vec_f32(struct vl2_backend_ctx *ctx, const struct vl2_tensor *t, int64_t n,
                         int slot, struct vl2_err *err)
{
    struct cpu_scratch *s = &ctx->vec[slot];
    size_t need = (size_t)n * sizeof(float);

    if (f32_direct(t))
        return t->data;
    if (s->size < need) {
        void *p = cpu_aligned_alloc(need);
        if (!p) {
            vl2_err_set(err, VL2_ENOMEM, "cpu: cannot allocate %zu bytes", need);
            return NULL;
        }
        free(s->p);
        atomic_fetch_sub(&ctx->mem_used, s->size);
        atomic_fetch_add(&ctx->mem_used, need);
        s->p = p;
        s->size = need;
    }
    ctx->k->to_f32(s->p, t->data, t->dtype, n);
    return s->p;
}

static size_t span_bytes(const struct vl2_tensor *t)
{
    if (t->rows <= 0 || t->cols <= 0)
        return 0;
    return (size_t)((t->rows - 1) * t->ld + t->cols) * vl2_dtype_size(t->dtype);
}

bool cpu_overlaps(const struct vl2_tensor *a, const struct vl2_tensor *b)
{
    const char *a0 = a->data, *b0 = b->data;
    size_t na = span_bytes(a), nb = span_bytes(b);
    return na && nb && a0 < b0 + nb && b0 < a0 + na;
}

int cpu_check_no_alias(const struct vl2_tensor *out, const struct vl2_tensor *in, const char *op,
                       const char *what, struct vl2_err *err)
{
    if (cpu_overlaps(out, in))
        return vl2_err_set(err, VL2_EINVAL, "cpu: %s: out must not overlap '%s'", op, what);
    return 0;
}

/* A vector of @n floats: one row of n columns, or n rows of one column
 * stored contiguously (ld 1). */
int cpu_check_vec(const struct vl2_tensor *t, int64_t n, const char *op, const char *what,
                  struct vl2_err *err)
{
    int r = cpu_check_float(t, op, what, err);
    if (r < 0)
        return r;
    if (!(t->rows == 1 && t->cols == n) && !(t->cols == 1 && t->ld == 1 && t->rows == n))
        return vl2_err_set(err, VL2_EINVAL,
                           "cpu: %s: tensor '%s' is %lld x %lld, expected a vector of %lld", op,
                           what, (long long)t->rows, (long long)t->cols, (long long)n);
    return 0;
}

/* A struct of the ABI whose struct_size is not the one this plugin was
 * built with: its caller was compiled against another vl2-backend.h. */
int cpu_check_size(uint32_t got, size_t want, const char *op, const char *what,
                   struct vl2_err *err)
{
    if (got != want)
        return vl2_err_set(err, VL2_EABI,
                           "cpu: %s: struct %s of %u bytes (struct_size), this backend has "
                           "%zu (ABI version %u): the caller was built from another "
                           "vl2-backend.h", op, what, (unsigned)got, want,
                           VL2_BACKEND_ABI_VERSION);
    return 0;
}

/* ---- lifetime --------------------------------------------------------------- */

/* The options of the context (see the top of this file). */
static int parse_options(struct vl2_backend_ctx *ctx, const char *opts, int *isa,
                         struct vl2_err *err)
{
    static const char *const isas[] = { "scalar", "avx2", "avx512" }; /* enum cpu_isa */
    static const char *const precs[] = { "f32", "bf16" };            /* enum cpu_precision */
#ifdef VL2_TEST_KNOBS
    static const char *const attns[] = { "auto", "fused", "matrix" }; /* enum cpu_attn_mode */
    static const char *const gemms[] = { "blas", "own" };            /* own_gemm 0, 1 */
    static const char *const mlas[] = { "auto", "absorbed", "expanded" }; /* mla_mode */
#else
    static const char *const knobs[] = { "blas_min_rows", "gemm", "mla", "attn_full" };
#endif
    const char *pos = opts;
    struct vl2_opt o;
    int want = -1, r;

    while ((r = vl2_opt_next(&pos, &o, "cpu", err)) > 0) {
        if (!strcmp(o.key, "isa")) {
            r = vl2_opt_choice(&o, isas, 3, &want, "cpu", err);
        } else if (!strcmp(o.key, "precision")) {
            int v = 0;
            r = vl2_opt_choice(&o, precs, 2, &v, "cpu", err);
            if (r == 0)
                ctx->precision = v;
#ifdef VL2_TEST_KNOBS
        } else if (!strcmp(o.key, "attn_full")) {
            int v = 0;
            r = vl2_opt_choice(&o, attns, 3, &v, "cpu", err);
            if (r == 0)
                ctx->attn_mode = v;
        } else if (!strcmp(o.key, "blas_min_rows")) {
            long v = 0;
            r = vl2_opt_long(&o, 1, 1 << 20, &v, "cpu", err);
            if (r == 0)
                ctx->blas_min_rows = (int32_t)v;
        } else if (!strcmp(o.key, "gemm")) {
            int v = 0;
            r = vl2_opt_choice(&o, gemms, 2, &v, "cpu", err);
            if (r == 0)
                ctx->own_gemm = v;
        } else if (!strcmp(o.key, "mla")) {
            int v = 0;
            r = vl2_opt_choice(&o, mlas, 3, &v, "cpu", err);
            if (r == 0)
                ctx->mla_mode = v;
#endif
        } else {
#ifndef VL2_TEST_KNOBS
            for (size_t i = 0; i < sizeof(knobs) / sizeof(knobs[0]); i++)
                if (!strcmp(o.key, knobs[i]))
                    return vl2_err_set(err, VL2_EINVAL,
                                       "cpu: option '%s': a measurement knob, only in test "
                                       "builds (meson -Dtest_knobs=true)", o.key);
#endif
            r = vl2_opt_unknown(&o, "cpu", err);
        }
        if (r < 0)
            return r;
    }
    if (r < 0)
        return r;
    *isa = cpu_isa_detect();
    if (want >= 0) {
        if (!(cpu_isa_supported() & (1u << want)))
            return vl2_err_set(err, VL2_EUNSUPPORTED,
                               "cpu: option isa '%s': not supported by this CPU", isas[want]);
        *isa = want;
    }
    return 0;
}

static void cpu_close(struct vl2_backend_ctx *ctx)
{
    int i;

    if (!ctx)
        return;
    cpu_pool_free(ctx->pool);
    if (ctx->scratch)
        for (i = 0; i < ctx->n_threads; i++)
            free(ctx->scratch[i].p);
    free(ctx->scratch);
    for (i = 0; i < 4; i++)
        free(ctx->vec[i].p);
    free(ctx->big.p);
    free(ctx->tasks.p);
    free(ctx->seqs);
    free(ctx->row_pos);
    free(ctx->mla_exp);
    free(ctx);
}

static int cpu_open(const struct vl2_backend_params *p, struct vl2_backend_ctx **ret_ctx,
                    struct vl2_err *err)
{
    struct vl2_backend_ctx *ctx;
    int isa, r, n;

    if (p && (r = cpu_check_size(p->struct_size, sizeof(*p), "open", "vl2_backend_params",
                                 err)) < 0)
        return r;
    ctx = calloc(1, sizeof(*ctx));
    if (!ctx)
        return vl2_err_set(err, VL2_ENOMEM, "cpu: out of memory");
    ctx->blas_min_rows = 16;
    ctx->own_gemm = -1;
    r = parse_options(ctx, p ? p->options : NULL, &isa, err);
    if (r < 0)
        goto out_free;
    if (ctx->own_gemm < 0 || isa != CPU_ISA_AVX512)
        ctx->own_gemm = isa == CPU_ISA_AVX512;
    ctx->k = cpu_kernels_get(isa);
    ctx->bf16_dp = ctx->precision == CPU_PREC_BF16 && isa == CPU_ISA_AVX512 && cpu_has_avx512bf16();
    n = p ? p->n_threads : 0;
    if (n < 0 || n > 1024) {
        r = vl2_err_set(err, VL2_EINVAL, "cpu: n_threads %d out of range (0..1024)", n);
        goto out_free;
    }
    if (n == 0) {
        long c = sysconf(_SC_NPROCESSORS_ONLN);
        n = c > 0 ? (int)(c > 1024 ? 1024 : c) : 1;
    }
    ctx->n_threads = n;
    ctx->mem_budget = p ? p->mem_budget : 0;
    ctx->scratch = calloc((size_t)n, sizeof(*ctx->scratch));
    if (!ctx->scratch) {
        r = vl2_err_set(err, VL2_ENOMEM, "cpu: out of memory");
        goto out_free;
    }
    r = cpu_pool_new(&ctx->pool, n);
    if (r < 0) {
        vl2_err_set(err, r, "cpu: cannot start %d worker threads", n);
        goto out_free;
    }
    /* Our workers call sgemm on their own blocks: OpenBLAS must not start threads. */
    openblas_set_num_threads(1);
    snprintf(ctx->desc, sizeof(ctx->desc), "cpu: %d thread%s, %s%s%s, gemm %s, precision %s", n,
             n == 1 ? "" : "s", isa_name(isa), isa == CPU_ISA_AVX512 ? "f" : "",
             cpu_has_avx512bf16() ? " (avx512bf16 present)" : "",
             ctx->own_gemm ? "own avx512" : "openblas",
             ctx->precision == CPU_PREC_F32 ? "f32"
             : ctx->bf16_dp ? "bf16 (vdpbf16ps)" : "bf16 (rounded operands, f32 fma)");
    *ret_ctx = ctx;
    return 0;

out_free:
    cpu_close(ctx);
    return r;
}

static const char *cpu_describe(struct vl2_backend_ctx *ctx)
{
    return ctx ? ctx->desc : "cpu";
}

static size_t cpu_mem_used(struct vl2_backend_ctx *ctx)
{
    return ctx ? atomic_load(&ctx->mem_used) : 0;
}

/* ---- memory ------------------------------------------------------------------ */

static int check_shape(int dtype, int ndim, const int64_t *ne, size_t *ret_bytes, const char *op,
                       struct vl2_err *err)
{
    size_t es = vl2_dtype_size(dtype);
    size_t n = 1;
    int i;

    if (es == 0 || dtype == VL2_DTYPE_Q8 || dtype == VL2_DTYPE_Q4)
        return vl2_err_set(err, VL2_EUNSUPPORTED, "cpu: %s: dtype %d not supported", op, dtype);
    if (ndim < 1 || ndim > 4 || !ne)
        return vl2_err_set(err, VL2_EINVAL, "cpu: %s: ndim %d out of range (1..4)", op, ndim);
    for (i = 0; i < ndim; i++) {
        if (ne[i] < 0 || (ne[i] > 0 && n > SIZE_MAX / 8 / (size_t)ne[i]))
            return vl2_err_set(err, VL2_EINVAL, "cpu: %s: dimension %d (%lld) out of range", op, i,
                               (long long)ne[i]);
        n *= (size_t)ne[i];
    }
    *ret_bytes = n * es;
    return 0;
}

static int cpu_alloc(struct vl2_backend_ctx *ctx, struct vl2_tensor *t, int dtype, int ndim,
                     const int64_t *ne, struct vl2_err *err)
{
    struct cpu_buf *b;
    size_t bytes;
    int r;

    if (!t)
        return vl2_err_set(err, VL2_EINVAL, "cpu: alloc: tensor is NULL");
    r = check_shape(dtype, ndim, ne, &bytes, "alloc", err);
    if (r < 0)
        return r;
    if (ctx->mem_budget && atomic_load(&ctx->mem_used) + bytes > ctx->mem_budget)
        return vl2_err_set(err, VL2_ELIMIT,
                           "cpu: alloc: %zu bytes would exceed the memory budget (%zu of %zu used)",
                           bytes, atomic_load(&ctx->mem_used), ctx->mem_budget);
    b = calloc(1, sizeof(*b));
    if (!b)
        return vl2_err_set(err, VL2_ENOMEM, "cpu: alloc: out of memory");
    b->base = cpu_aligned_alloc(bytes);
    if (!b->base) {
        free(b);
        return vl2_err_set(err, VL2_ENOMEM, "cpu: alloc: cannot allocate %zu bytes", bytes);
    }
    b->magic = CPU_BUF_MAGIC;
    b->owned = 1;
    b->size = bytes;
    atomic_fetch_add(&ctx->mem_used, bytes);
    memset(t, 0, sizeof(*t));
    vl2_tensor_set_shape(t, dtype, ndim, ne);
    t->data = b->base;
    t->priv = b;
    return 0;
}

static int cpu_weight(struct vl2_backend_ctx *ctx, struct vl2_tensor *t, int dtype, int ndim,
                      const int64_t *ne, const void *host, struct vl2_err *err)
{
    struct cpu_buf *b;
    size_t bytes;
    int r;

    if (!t)
        return vl2_err_set(err, VL2_EINVAL, "cpu: weight: tensor is NULL");
    r = check_shape(dtype, ndim, ne, &bytes, "weight", err);
    if (r < 0)
        return r;
    if (!host)
        return vl2_err_set(err, VL2_EINVAL, "cpu: weight: host data is NULL");
    b = calloc(1, sizeof(*b));
    if (!b)
        return vl2_err_set(err, VL2_ENOMEM, "cpu: weight: out of memory");
    b->magic = CPU_BUF_MAGIC;
    b->owned = 0;
    b->size = bytes;
    b->base = (void *)host;
    memset(t, 0, sizeof(*t));
    vl2_tensor_set_shape(t, dtype, ndim, ne);
    t->data = (void *)host;
    t->priv = b;
    return 0;
}

static void cpu_free_tensor(struct vl2_backend_ctx *ctx, struct vl2_tensor *t)
{
    struct cpu_buf *b;

    if (!t || !t->priv)
        return;
    b = t->priv;
    if (b->magic != CPU_BUF_MAGIC)
        return;
    if (b->owned) {
        atomic_fetch_sub(&ctx->mem_used, b->size);
        free(b->base);
    }
    b->magic = 0;
    free(b);
    t->priv = NULL;
    t->data = NULL;
}

static int storage_range(const struct vl2_tensor *t, size_t offset, size_t size, const char *op,
                         struct vl2_err *err)
{
    const struct cpu_buf *b;

    if (!t || !t->data)
        return vl2_err_set(err, VL2_EINVAL, "cpu: %s: tensor is NULL", op);
    b = t->priv;
    if (b) {
        size_t start = (size_t)((const char *)t->data - (const char *)b->base);
        if (b->magic != CPU_BUF_MAGIC)
            return vl2_err_set(err, VL2_EINVAL, "cpu: %s: not a tensor of this backend", op);
        if (offset > b->size - start || size > b->size - start - offset)
            return vl2_err_set(err, VL2_EINVAL,
                               "cpu: %s: %zu bytes at offset %zu past the end of the tensor (%zu bytes)",
                               op, size, offset, b->size - start);
    } else {
        /* a view: bounded by its own rows */
        size_t es = vl2_dtype_size(t->dtype);
        size_t span = t->rows > 0 ? ((size_t)((t->rows - 1) * t->ld + t->cols)) * es : 0;
        if (offset > span || size > span - offset)
            return vl2_err_set(err, VL2_EINVAL,
                               "cpu: %s: %zu bytes at offset %zu past the end of the view (%zu bytes)",
                               op, size, offset, span);
    }
    return 0;
}

static int cpu_write(struct vl2_backend_ctx *ctx, struct vl2_tensor *t, size_t offset,
                     const void *src, size_t size, struct vl2_err *err)
{
    int r = storage_range(t, offset, size, "write", err);
    if (r < 0)
        return r;
    if (size && !src)
        return vl2_err_set(err, VL2_EINVAL, "cpu: write: source is NULL");
    if (t->priv && !((struct cpu_buf *)t->priv)->owned)
        return vl2_err_set(err, VL2_EINVAL, "cpu: write: tensor is a read-only weight");
    if (size)
        memcpy((char *)t->data + offset, src, size);
    return 0;
}

static int cpu_read(struct vl2_backend_ctx *ctx, const struct vl2_tensor *t, size_t offset,
                    void *dst, size_t size, struct vl2_err *err)
{
    int r = storage_range(t, offset, size, "read", err);
    if (r < 0)
        return r;
    if (size && !dst)
        return vl2_err_set(err, VL2_EINVAL, "cpu: read: destination is NULL");
    if (size)
        memcpy(dst, (const char *)t->data + offset, size);
    return 0;
}

static int cpu_sync(struct vl2_backend_ctx *ctx, struct vl2_err *err)
{
    return 0;
}

/* ---- KV cache ----------------------------------------------------------------- */

static int kv_widths(const struct vl2_kv_shape *s, int64_t *wa, int64_t *wb, struct vl2_err *err)
{
    int r;

    if (!s)
        return vl2_err_set(err, VL2_EINVAL, "cpu: kv: shape is NULL");
    if ((r = cpu_check_size(s->struct_size, sizeof(*s), "kv", "vl2_kv_shape", err)) < 0)
        return r;
    if (s->n_layer <= 0 || s->n_layer > 4096 || s->capacity <= 0)
        return vl2_err_set(err, VL2_EINVAL, "cpu: kv: bad shape (n_layer %d, capacity %d)",
                           (int)s->n_layer, (int)s->capacity);
    if (s->dtype != VL2_DTYPE_F32)
        return vl2_err_set(err, VL2_EUNSUPPORTED, "cpu: kv: storage dtype %d not supported (F32 only)",
                           (int)s->dtype);
    if (s->kind == VL2_ATTN_MHA) {
        if (s->n_kv_head <= 0 || s->head_dim <= 0 || s->n_kv_head > 4096 || s->head_dim > 4096)
            return vl2_err_set(err, VL2_EINVAL, "cpu: kv: bad MHA shape (n_kv_head %d, head_dim %d)",
                               (int)s->n_kv_head, (int)s->head_dim);
        *wa = *wb = (int64_t)s->n_kv_head * s->head_dim;
    } else if (s->kind == VL2_ATTN_MLA) {
        if (s->kv_lora_rank <= 0 || s->rope_dim < 0 || s->kv_lora_rank > 65536 ||
            s->rope_dim > 4096)
            return vl2_err_set(err, VL2_EINVAL,
                               "cpu: kv: bad MLA shape (kv_lora_rank %d, rope_dim %d)",
                               (int)s->kv_lora_rank, (int)s->rope_dim);
        *wa = (int64_t)s->kv_lora_rank + s->rope_dim;
        *wb = 0;
    } else {
        return vl2_err_set(err, VL2_EINVAL, "cpu: kv: unknown attention kind %d", (int)s->kind);
    }
    return 0;
}

static size_t cpu_kv_token_bytes(const struct vl2_kv_shape *shape)
{
    int64_t wa = 0, wb = 0;
    if (kv_widths(shape, &wa, &wb, NULL) < 0)
        return 0;
    return (size_t)shape->n_layer * (size_t)(wa + wb) * sizeof(float);
}

static int cpu_kv_new(struct vl2_backend_ctx *ctx, const struct vl2_kv_shape *shape,
                      struct vl2_kv **ret_kv, struct vl2_err *err)
{
    struct vl2_kv *kv;
    int64_t wa = 0, wb = 0;
    size_t per_layer, total;
    int r, l;

    r = kv_widths(shape, &wa, &wb, err);
    if (r < 0)
        return r;
    per_layer = (size_t)(wa + wb) * (size_t)shape->capacity;
    if (per_layer > SIZE_MAX / 8 / (size_t)shape->n_layer)
        return vl2_err_set(err, VL2_EINVAL, "cpu: kv: cache too large");
    total = per_layer * (size_t)shape->n_layer * sizeof(float);
    if (ctx->mem_budget && atomic_load(&ctx->mem_used) + total > ctx->mem_budget)
        return vl2_err_set(err, VL2_ELIMIT,
                           "cpu: kv: %zu bytes would exceed the memory budget (%zu of %zu used)",
                           total, atomic_load(&ctx->mem_used), ctx->mem_budget);
    kv = calloc(1, sizeof(*kv));
    if (!kv)
        return vl2_err_set(err, VL2_ENOMEM, "cpu: kv: out of memory");
    kv->shape = *shape;
    kv->width_a = wa;
    kv->width_b = wb;
    kv->size = total;
    /* calloc: pages are touched only as tokens are written */
    kv->mem = calloc(1, total);
    kv->layers = calloc((size_t)shape->n_layer, sizeof(*kv->layers));
    if (!kv->mem || !kv->layers) {
        free(kv->mem);
        free(kv->layers);
        free(kv);
        return vl2_err_set(err, VL2_ENOMEM, "cpu: kv: cannot allocate %zu bytes", total);
    }
    for (l = 0; l < shape->n_layer; l++) {
        float *base = kv->mem + (size_t)l * per_layer;
        kv->layers[l].a = base;
        kv->layers[l].b = wb ? base + (size_t)wa * (size_t)shape->capacity : NULL;
    }
    atomic_fetch_add(&ctx->mem_used, total);
    *ret_kv = kv;
    return 0;
}

static void cpu_kv_free(struct vl2_backend_ctx *ctx, struct vl2_kv *kv)
{
    if (!kv)
        return;
    if (ctx)
        atomic_fetch_sub(&ctx->mem_used, kv->size);
    free(kv->mem);
    free(kv->layers);
    free(kv);
}

/* ---- batch --------------------------------------------------------------------- */

static int cpu_begin_batch(struct vl2_backend_ctx *ctx, const struct vl2_batch *b,
                           struct vl2_err *err)
{
    int32_t i, j, row = 0;
    int r;

    if (b && (r = cpu_check_size(b->struct_size, sizeof(*b), "begin_batch", "vl2_batch",
                                 err)) < 0)
        return r;
    if (!b || b->n_seqs <= 0 || !b->seqs || b->n_rows <= 0)
        return vl2_err_set(err, VL2_EINVAL, "cpu: begin_batch: empty batch");
    for (i = 0; i < b->n_seqs; i++) {
        const struct vl2_batch_seq *s = &b->seqs[i];
        if (s->row0 != row || s->n_rows <= 0 || s->n_past < 0 || !s->kv)
            return vl2_err_set(err, VL2_EINVAL,
                               "cpu: begin_batch: sequence %d: bad rows (row0 %d, n_rows %d, n_past %d, expected row0 %d)",
                               (int)i, (int)s->row0, (int)s->n_rows, (int)s->n_past, (int)row);
        if ((int64_t)s->n_past + s->n_rows > s->kv->shape.capacity)
            return vl2_err_set(err, VL2_ELIMIT,
                               "cpu: begin_batch: sequence %d: %d + %d tokens exceed the cache capacity %d",
                               (int)i, (int)s->n_past, (int)s->n_rows, (int)s->kv->shape.capacity);
        for (j = 0; j < i; j++)
            if (b->seqs[j].kv == s->kv)
                return vl2_err_set(err, VL2_EINVAL,
                                   "cpu: begin_batch: sequences %d and %d share a cache", (int)j,
                                   (int)i);
        if ((int64_t)row + s->n_rows > INT32_MAX)
            return vl2_err_set(err, VL2_EINVAL, "cpu: begin_batch: too many rows");
        row += s->n_rows;
    }
    if (row != b->n_rows)
        return vl2_err_set(err, VL2_EINVAL, "cpu: begin_batch: n_rows %d, sequences have %d",
                           (int)b->n_rows, (int)row);
    if (b->n_seqs > ctx->seqs_cap) {
        struct vl2_batch_seq *ns = realloc(ctx->seqs, (size_t)b->n_seqs * sizeof(*ns));
        if (!ns)
            return vl2_err_set(err, VL2_ENOMEM, "cpu: begin_batch: out of memory");
        ctx->seqs = ns;
        ctx->seqs_cap = b->n_seqs;
    }
    if (b->n_rows > ctx->row_pos_cap) {
        int32_t *np = realloc(ctx->row_pos, (size_t)b->n_rows * sizeof(*np));
        if (!np)
            return vl2_err_set(err, VL2_ENOMEM, "cpu: begin_batch: out of memory");
        ctx->row_pos = np;
        ctx->row_pos_cap = b->n_rows;
    }
    memcpy(ctx->seqs, b->seqs, (size_t)b->n_seqs * sizeof(*ctx->seqs));
    ctx->n_seqs = b->n_seqs;
    ctx->n_rows = b->n_rows;
    for (i = 0; i < b->n_seqs; i++)
        for (j = 0; j < b->seqs[i].n_rows; j++)
            ctx->row_pos[b->seqs[i].row0 + j] = b->seqs[i].n_past + j;
    return 0;
}

/* ---- supports_op ------------------------------------------------------------- */

/* What the ops above accept: weights (and embedding tables, expert weights)
 * in F32, F16 or BF16, read and converted in the kernels; caches in F32
 * only (kv_widths); F32 activations for everything else.  Q8 and Q4 are not
 * implemented. */
static int cpu_supports_op(struct vl2_backend_ctx *ctx, int op, int dtype)
{
    (void)ctx;
    switch (op) {
    case VL2_OP_WEIGHT:
    case VL2_OP_EMBED:
    case VL2_OP_LINEAR:
    case VL2_OP_MOE:
        return dtype == VL2_DTYPE_F32 || dtype == VL2_DTYPE_F16 || dtype == VL2_DTYPE_BF16;
    case VL2_OP_KV:
    case VL2_OP_ATTN_MHA:
    case VL2_OP_ATTN_MLA:
        return dtype == VL2_DTYPE_F32;
    case VL2_OP_RMSNORM:
    case VL2_OP_LAYERNORM:
    case VL2_OP_ADD:
    case VL2_OP_GELU_TANH:
    case VL2_OP_GELU_ERF:
    case VL2_OP_SWIGLU:
    case VL2_OP_COPY_ROWS:
    case VL2_OP_PATCHIFY:
    case VL2_OP_UNFOLD2X2:
    case VL2_OP_ATTN_FULL:
    case VL2_OP_ROPE:
    case VL2_OP_ARGMAX:
        return dtype == -1 || dtype == VL2_DTYPE_F32;
    }
    return 0;
}

/* ---- entry ----------------------------------------------------------------------- */

static const struct vl2_backend_ops cpu_ops = {
    .abi_version = VL2_BACKEND_ABI_VERSION,
    .struct_size = sizeof(struct vl2_backend_ops),
    .name = "cpu",
    .open = cpu_open,
    .close = cpu_close,
    .describe = cpu_describe,
    .mem_used = cpu_mem_used,
    .alloc = cpu_alloc,
    .weight = cpu_weight,
    .free_tensor = cpu_free_tensor,
    .write = cpu_write,
    .read = cpu_read,
    .sync = cpu_sync,
    .kv_new = cpu_kv_new,
    .kv_free = cpu_kv_free,
    .kv_token_bytes = cpu_kv_token_bytes,
    .begin_batch = cpu_begin_batch,
    .embed = cpu_embed,
    .linear = cpu_linear,
    .rmsnorm = cpu_rmsnorm,
    .layernorm = cpu_layernorm,
    .add = cpu_add,
    .gelu_tanh = cpu_gelu_tanh,
    .gelu_erf = cpu_gelu_erf,
    .swiglu = cpu_swiglu,
    .copy_rows = cpu_copy_rows,
    .patchify = cpu_patchify,
    .unfold2x2 = cpu_unfold2x2,
    .attn_full = cpu_attn_full,
    .rope = cpu_rope,
    .attn_mha = cpu_attn_mha,
    .attn_mla = cpu_attn_mla,
    .moe = cpu_moe,
    .argmax = cpu_argmax,
    .supports_op = cpu_supports_op,
};

__attribute__((visibility("default"))) const struct vl2_backend_ops *
vl2_backend_entry(uint32_t abi_version, struct vl2_err *err)
{
    if (abi_version != VL2_BACKEND_ABI_VERSION) {
        vl2_err_set(err, VL2_EABI, "cpu: backend implements ABI version %u, caller wants %u",
                    VL2_BACKEND_ABI_VERSION, abi_version);
        return NULL;
    }
    return &cpu_ops;
}

/* fake-plugin.c - broken backends for the loader tests, one per FAKE_KIND:
 *   1 badabi   entry returns a table that says the next ABI version
 *   2 refuse   entry returns NULL with a reason
 *   3 small    table smaller than struct vl2_backend_ops
 *   4 noentry  no vl2_backend_entry symbol at all
 *   5 failopen every op present, open() fails with VL2_EBACKEND
 *   6 oldtable a table that ends before the optional operations (an older
 *              backend of the same ABI version): open() succeeds, and the
 *              slot past struct_size holds garbage the loader must ignore
 *   7 nobf16   open() succeeds; supports_op() refuses BF16 weights (and any
 *              cache but F32); every other operation fails with "fake: <op>
 *              called", so a runtime that builds a model on it without
 *              asking first is caught */
#include "vl2-backend.h"

#if FAKE_KIND != 4

static int fake_open(const struct vl2_backend_params *p, struct vl2_backend_ctx **ret_ctx,
                     struct vl2_err *err)
{
    (void)p;
    if (FAKE_KIND == 6 || FAKE_KIND == 7) {
        *ret_ctx = (struct vl2_backend_ctx *)&fake_open;   /* any non-NULL pointer */
        return 0;
    }
    (void)ret_ctx;
    return vl2_err_set(err, VL2_EBACKEND, "fake: no device here");
}

static void fake_close(struct vl2_backend_ctx *ctx)
{
    (void)ctx;
}

static const char *fake_describe(struct vl2_backend_ctx *ctx)
{
    (void)ctx;
    return FAKE_KIND == 7 ? "fake: no BF16" : "fake: an older table";
}

#if FAKE_KIND == 7
static size_t fake_mem_used(struct vl2_backend_ctx *ctx)
{
    (void)ctx;
    return 0;
}

static size_t fake_kv_token_bytes(const struct vl2_kv_shape *shape)
{
    (void)shape;
    return 4;
}

static int fake_weight(struct vl2_backend_ctx *ctx, struct vl2_tensor *t, int dtype, int ndim,
                       const int64_t *ne, const void *host, struct vl2_err *err)
{
    (void)ctx, (void)t, (void)dtype, (void)ndim, (void)ne, (void)host;
    return vl2_err_set(err, VL2_EBACKEND, "fake: weight called");
}

static int fake_alloc(struct vl2_backend_ctx *ctx, struct vl2_tensor *t, int dtype, int ndim,
                      const int64_t *ne, struct vl2_err *err)
{
    (void)ctx, (void)t, (void)dtype, (void)ndim, (void)ne;
    return vl2_err_set(err, VL2_EBACKEND, "fake: alloc called");
}

static void fake_free_tensor(struct vl2_backend_ctx *ctx, struct vl2_tensor *t)
{
    (void)ctx, (void)t;
}

static int fake_supports_op(struct vl2_backend_ctx *ctx, int op, int dtype)
{
    (void)ctx;
    switch (op) {
    case VL2_OP_KV: case VL2_OP_ATTN_MHA: case VL2_OP_ATTN_MLA:
        return dtype == VL2_DTYPE_F32;
    }
    return dtype != VL2_DTYPE_BF16;
}
#endif

/* A table with every slot pointing somewhere non-NULL (never called but open). */
static struct vl2_backend_ops fake_ops;

__attribute__((visibility("default"))) const struct vl2_backend_ops *
vl2_backend_entry(uint32_t abi_version, struct vl2_err *err)
{
    void (**slot)(void);
    size_t i, n;

    if (FAKE_KIND == 2) {
        vl2_err_set(err, VL2_EABI, "fake: built for ABI version 7, caller has %u", abi_version);
        return NULL;
    }
    /* fill every function slot with open (only open is ever called) */
    n = (sizeof(fake_ops) - offsetof(struct vl2_backend_ops, open)) / sizeof(void (*)(void));
    slot = (void (**)(void))(void *)&fake_ops.open;
    for (i = 0; i < n; i++)
        slot[i] = (void (*)(void))fake_open;
    fake_ops.name = "fake";
    fake_ops.abi_version = FAKE_KIND == 1 ? VL2_BACKEND_ABI_VERSION + 1 : VL2_BACKEND_ABI_VERSION;
    fake_ops.struct_size = FAKE_KIND == 3 ? 64u : (uint32_t)sizeof(fake_ops);
    if (FAKE_KIND == 6) {
        fake_ops.close = fake_close;
        fake_ops.describe = fake_describe;
        fake_ops.struct_size = (uint32_t)VL2_BACKEND_OPS_BASE_SIZE;
        fake_ops.argmax = (int (*)(struct vl2_backend_ctx *, struct vl2_tensor *,
                                   const struct vl2_tensor *, struct vl2_err *))(void *)0x10;
    }
#if FAKE_KIND == 7
    fake_ops.close = fake_close;
    fake_ops.describe = fake_describe;
    fake_ops.mem_used = fake_mem_used;
    fake_ops.kv_token_bytes = fake_kv_token_bytes;
    fake_ops.weight = fake_weight;
    fake_ops.alloc = fake_alloc;
    fake_ops.free_tensor = fake_free_tensor;
    fake_ops.supports_op = fake_supports_op;
#endif
    return &fake_ops;
}

#else

__attribute__((visibility("default"))) int vl2_backend_something_else(void)
{
    return 42;
}

#endif

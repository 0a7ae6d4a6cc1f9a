/* fake-plugin.c - broken backends for the loader tests, one per FAKE_KIND:
 *   1 badabi   entry returns a table that says the next ABI version
 *   2 refuse   entry returns NULL with a reason
 *   3 small    table smaller than struct vl2_backend_ops
 *   4 noentry  no vl2_backend_entry symbol at all
 *   5 failopen every op present, open() fails with VL2_EBACKEND
 *   6 oldtable a table that ends before the optional operations (an older
 *              backend of the same ABI version): open() succeeds, and the
 *              slot past struct_size holds garbage the loader must ignore */
#include "vl2-backend.h"

#if FAKE_KIND != 4

static int fake_open(const struct vl2_backend_params *p, struct vl2_backend_ctx **ret_ctx,
                     struct vl2_err *err)
{
    (void)p;
    if (FAKE_KIND == 6) {
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
    return "fake: an older table";
}

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
    return &fake_ops;
}

#else

__attribute__((visibility("default"))) int vl2_backend_something_else(void)
{
    return 42;
}

#endif

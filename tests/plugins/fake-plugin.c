/* fake-plugin.c - broken backends for the loader tests, one per FAKE_KIND:
 *   1 badabi   entry returns a table that says ABI version 2
 *   2 refuse   entry returns NULL with a reason
 *   3 small    table smaller than struct vl2_backend_ops
 *   4 noentry  no vl2_backend_entry symbol at all
 *   5 failopen every op present, open() fails with VL2_EBACKEND */
#include "vl2-backend.h"

#if FAKE_KIND != 4

static int fake_open(const struct vl2_backend_params *p, struct vl2_backend_ctx **ret_ctx,
                     struct vl2_err *err)
{
    (void)p;
    (void)ret_ctx;
    return vl2_err_set(err, VL2_EBACKEND, "fake: no device here");
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
    fake_ops.abi_version = FAKE_KIND == 1 ? 2u : VL2_BACKEND_ABI_VERSION;
    fake_ops.struct_size = FAKE_KIND == 3 ? 64u : (uint32_t)sizeof(fake_ops);
    return &fake_ops;
}

#else

__attribute__((visibility("default"))) int vl2_backend_something_else(void)
{
    return 42;
}

#endif

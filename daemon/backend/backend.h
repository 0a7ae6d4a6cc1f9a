/* backend.h - loading a backend plugin (vl2-backend-<name>.so).
 *
 *     struct vl2_backend *b;
 *     struct vl2_backend_params p = { .struct_size = sizeof(p), .n_threads = 0 };
 *     if (vl2_backend_load(&b, "cpu", NULL, &p, &err) < 0) ... err.msg says why
 *     b->ops->alloc(b->ctx, &t, ...);
 *     vl2_backend_unload(b);
 *
 * Search order for the file vl2-backend-<name>.so:
 *   1. @plugin_dir when it is not NULL (only there: vl2d.conf plugin_dir,
 *      --plugin-dir);
 *   otherwise
 *   2. $VL2_PLUGIN_DIR when set and not empty (for tests and development);
 *   3. only for a program running from its build tree (an uninstalled build:
 *      /proc/self/exe lies under VL2_BUILD_ROOT, which meson passes in):
 *      VL2_BUILD_ROOT/plugins/<name>/, where meson builds the plugins;
 *   4. the installed VL2_PLUGIN_DIR (vl2-config.h): $libdir/vl2d/backends-<N>
 *      with N = VL2_BACKEND_ABI_VERSION, so a plugin of another ABI is never
 *      found there.
 * An installed program never looks at paths relative to its own location.
 * The first file that exists is used; if it cannot be loaded (dlopen error,
 * no entry symbol, ABI mismatch, open() failure) that is the error - no
 * later candidate is tried.
 *
 * Before building anything on a backend, ask it what it supports:
 *
 *     if (vl2_backend_require(b->ops, b->ctx, VL2_OP_LINEAR, VL2_DTYPE_BF16, &err) < 0)
 *         ... err.msg: "backend 'cpu': linear with BF16 weights: not supported"
 */
#ifndef VL2_BACKEND_LOADER_H
#define VL2_BACKEND_LOADER_H

#include <stdbool.h>

#include "vl2-backend.h"
#include "vl2-status.h"

struct vl2_backend {
    const struct vl2_backend_ops *ops;   /* &table once loaded */
    struct vl2_backend_ops        table; /* the plugin's table (checked), optional
                                            operations it lacks NULL */
    struct vl2_backend_ctx       *ctx;   /* from ops->open() */
    void                         *dl;    /* dlopen handle */
    char                          path[4096]; /* file loaded */
};

/* Load backend @name ("cpu", "cuda": letters, digits, '_' and '-' only),
 * check its entry symbol, ABI version and table size, and open it with @p
 * (NULL: defaults).  On success *ret is a new backend for
 * vl2_backend_unload().  Errors: VL2_ENOTFOUND (no file; the message lists
 * the places tried), VL2_EBACKEND (dlopen failed, or open() failed: the
 * plugin's code is kept when it gives one), VL2_EABI (no entry symbol,
 * version or size mismatch: the message names the file and both versions),
 * VL2_EINVAL (bad name). */
int vl2_backend_load(struct vl2_backend **ret, const char *name, const char *plugin_dir,
                     const struct vl2_backend_params *p, struct vl2_err *err);

/* Close the backend context and unload the plugin.  Accepts NULL. */
void vl2_backend_unload(struct vl2_backend *b);

/* Whether the backend of table @ops (a loaded one: b->ops, b->ctx) runs @op
 * (enum vl2_op) with @dtype (enum vl2_dtype: the weight dtype for WEIGHT,
 * EMBED, LINEAR and MOE, the cache dtype for KV and the attention ops, -1
 * for ops without weights): its supports_op(), or for a backend without the
 * slot the ABI 1 behaviour (F32, F16, BF16 weights, F32 caches). */
bool vl2_backend_supports(const struct vl2_backend_ops *ops, struct vl2_backend_ctx *ctx,
                          int op, int dtype);

/* 0 when vl2_backend_supports(), else VL2_EUNSUPPORTED with a message naming
 * the backend, the operation and the dtype. */
int vl2_backend_require(const struct vl2_backend_ops *ops, struct vl2_backend_ctx *ctx, int op,
                        int dtype, struct vl2_err *err);

/* "linear", "kv_new", ... for an enum vl2_op; "unknown op" otherwise. */
const char *vl2_backend_op_name(int op);

#endif /* VL2_BACKEND_LOADER_H */

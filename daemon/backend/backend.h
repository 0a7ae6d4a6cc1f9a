/* backend.h - loading a backend plugin (vl2-backend-<name>.so).
 *
 *     struct vl2_backend *b;
 *     struct vl2_backend_params p = { .struct_size = sizeof(p), .n_threads = 0 };
 *     if (vl2_backend_load(&b, "cpu", NULL, &p, &err) < 0) ... err.msg says why
 *     b->ops->alloc(b->ctx, &t, ...);
 *     vl2_backend_unload(b);
 *
 * Search order for the file vl2-backend-<name>.so:
 *   1. @plugin_dir when it is not NULL (only there);
 *   otherwise
 *   2. $VL2_PLUGIN_DIR when set and not empty;
 *   3. the build tree: <dir of /proc/self/exe>/../plugins/<name>,
 *      ../../plugins/<name>, ../../../plugins/<name>;
 *   4. the installed VL2_PLUGIN_DIR (vl2-config.h).
 * The first file that exists is used; if it cannot be loaded (dlopen error,
 * no entry symbol, ABI mismatch, open() failure) that is the error - no
 * later candidate is tried.
 */
#ifndef VL2_BACKEND_LOADER_H
#define VL2_BACKEND_LOADER_H

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

#endif /* VL2_BACKEND_LOADER_H */

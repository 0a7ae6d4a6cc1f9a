/* backend.c - the plugin loader (see backend.h). */
#include <dlfcn.h>
#include <limits.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend.h"
#include "vl2-config.h"

/* meson reads the version from vl2-backend.h to name the install folder */
_Static_assert(VL2_PLUGIN_ABI == VL2_BACKEND_ABI_VERSION,
               "VL2_PLUGIN_DIR (backends-<N>) is not named for this ABI version");

static bool name_ok(const char *name)
{
    size_t n = 0;

    if (!name || !*name)
        return false;
    for (; name[n]; n++) {
        char c = name[n];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-'))
            return false;
    }
    return n <= 64;
}

/* Whether the running program is a file of this build tree (an uninstalled
 * build: tests, ./build/daemon/cli/vl2d), the only case in which the build
 * tree's plugins are searched.  An installed program never is. */
static bool running_uninstalled(void)
{
    char exe[PATH_MAX], root[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    size_t len;

    if (n <= 0 || !realpath(VL2_BUILD_ROOT, root))
        return false;
    exe[n] = '\0';
    len = strlen(root);
    return strncmp(exe, root, len) == 0 && exe[len] == '/';
}

/* Append "what" to the list of places tried (for the not-found message). */
static void tried_add(char *tried, size_t size, const char *what)
{
    size_t len = strlen(tried), n = strlen(what);

    if (len + 4 >= size)
        return;
    if (len) {
        memcpy(tried + len, ", ", 2);
        len += 2;
    }
    tried[len++] = '\'';
    if (n > size - len - 2)
        n = size - len - 2;
    memcpy(tried + len, what, n);
    len += n;
    tried[len++] = '\'';
    tried[len] = '\0';
}

/* Check that every required function slot is filled. */
static const char *missing_op(const struct vl2_backend_ops *o)
{
#define REQ(f) if (!o->f) return #f
    REQ(open); REQ(close); REQ(describe); REQ(mem_used); REQ(alloc); REQ(weight);
    REQ(free_tensor); REQ(write); REQ(read); REQ(sync); REQ(kv_new); REQ(kv_free);
    REQ(kv_token_bytes); REQ(begin_batch); REQ(embed); REQ(linear); REQ(rmsnorm);
    REQ(layernorm); REQ(add); REQ(gelu_tanh); REQ(gelu_erf); REQ(swiglu); REQ(copy_rows);
    REQ(patchify); REQ(unfold2x2); REQ(attn_full); REQ(rope); REQ(attn_mha); REQ(attn_mla);
    REQ(moe);
#undef REQ
    return NULL;
}

static int load_file(struct vl2_backend *b, const char *path, const struct vl2_backend_params *p,
                     struct vl2_err *err)
{
    struct vl2_backend_params defaults = { .struct_size = sizeof(defaults) };
    struct vl2_err perr = { 0 };
    vl2_backend_entry_fn entry;
    const struct vl2_backend_ops *ops;
    const char *miss;
    void *sym;
    int r;

    snprintf(b->path, sizeof(b->path), "%s", path);
    dlerror();
    b->dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!b->dl) {
        const char *e = dlerror();
        return vl2_err_set(err, VL2_EBACKEND, "backend: cannot load '%s': %s", path,
                           e ? e : "unknown error");
    }
    dlerror();
    sym = dlsym(b->dl, VL2_BACKEND_ENTRY);
    if (!sym) {
        const char *e = dlerror();
        r = vl2_err_set(err, VL2_EABI, "backend: refusing '%s': no entry symbol '%s' (%s)", path,
                        VL2_BACKEND_ENTRY, e ? e : "symbol is NULL");
        goto out_close;
    }
    /* dlsym returns an object pointer; converting it to a function pointer
     * is what POSIX requires to work. */
    memcpy(&entry, &sym, sizeof(entry));
    ops = entry(VL2_BACKEND_ABI_VERSION, &perr);
    if (!ops) {
        r = vl2_err_set(err, VL2_EABI, "backend: refusing '%s': it does not implement ABI version %u: %s",
                        path, VL2_BACKEND_ABI_VERSION,
                        perr.code ? perr.msg : "no reason given");
        goto out_close;
    }
    if (ops->abi_version != VL2_BACKEND_ABI_VERSION) {
        r = vl2_err_set(err, VL2_EABI, "backend: refusing '%s': ABI version %u, expected %u", path,
                        ops->abi_version, VL2_BACKEND_ABI_VERSION);
        goto out_close;
    }
    if (ops->struct_size < VL2_BACKEND_OPS_BASE_SIZE) {
        r = vl2_err_set(err, VL2_EABI,
                        "backend: refusing '%s': function table of %u bytes, expected at least %zu (ABI version %u)",
                        path, ops->struct_size, (size_t)VL2_BACKEND_OPS_BASE_SIZE,
                        VL2_BACKEND_ABI_VERSION);
        goto out_close;
    }
    /* our copy: the optional operations past a shorter table are NULL */
    memset(&b->table, 0, sizeof(b->table));
    memcpy(&b->table, ops,
           ops->struct_size < sizeof(b->table) ? ops->struct_size : sizeof(b->table));
    ops = &b->table;
    miss = missing_op(ops);
    if (miss) {
        r = vl2_err_set(err, VL2_EABI, "backend: refusing '%s': operation '%s' is missing", path,
                        miss);
        goto out_close;
    }
    vl2_err_clear(&perr);
    r = ops->open(p ? p : &defaults, &b->ctx, &perr);
    if (r < 0) {
        vl2_err_set(err, r, "backend: '%s': %s", path, perr.code ? perr.msg : "open failed");
        goto out_close;
    }
    b->ops = ops;
    return 0;

out_close:
    dlclose(b->dl);
    b->dl = NULL;
    return r;
}

int vl2_backend_load(struct vl2_backend **ret, const char *name, const char *plugin_dir,
                     const struct vl2_backend_params *p, struct vl2_err *err)
{
    char file[128], path[4096 + 256], tried[VL2_ERR_MSG_SIZE];
    const char *env = getenv("VL2_PLUGIN_DIR");
    struct vl2_backend *b;
    int r;

    if (!ret)
        return vl2_err_set(err, VL2_EINVAL, "backend: no result pointer");
    if (!name_ok(name))
        return vl2_err_set(err, VL2_EINVAL, "backend: bad backend name '%s'", name ? name : "(null)");
    snprintf(file, sizeof(file), "vl2-backend-%s.so", name);
    tried[0] = '\0';
    b = calloc(1, sizeof(*b));
    if (!b)
        return vl2_err_set(err, VL2_ENOMEM, "backend: out of memory");

#define TRY(...)                                                                  \
    do {                                                                          \
        snprintf(path, sizeof(path), __VA_ARGS__);                                \
        if (access(path, F_OK) == 0) {                                            \
            r = load_file(b, path, p, err);                                       \
            goto out_done;                                                        \
        }                                                                         \
        tried_add(tried, sizeof(tried), path);                                    \
    } while (0)

    if (plugin_dir) {
        TRY("%s/%s", plugin_dir, file);
    } else {
        if (env && *env)
            TRY("%s/%s", env, file);
        if (running_uninstalled())
            TRY("%s/plugins/%s/%s", VL2_BUILD_ROOT, name, file);
        TRY("%s/%s", VL2_PLUGIN_DIR, file);
    }
#undef TRY
    r = vl2_err_set(err, VL2_ENOTFOUND, "backend: '%s' not found (tried %s)", file, tried);

out_done:
    if (r < 0) {
        free(b);
        return r;
    }
    *ret = b;
    return 0;
}

void vl2_backend_unload(struct vl2_backend *b)
{
    if (!b)
        return;
    if (b->ops && b->ctx)
        b->ops->close(b->ctx);
    if (b->dl)
        dlclose(b->dl);
    free(b);
}

/* ---- what a backend supports ---------------------------------------------- */

/* The answer of a backend without supports_op (ABI 1): every op with F32,
 * F16 and BF16 weights, F32 caches, F32 activations. */
static bool abi1_supports(int op, int dtype)
{
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
    }
    return op > 0 && op < VL2_OP_COUNT && (dtype == -1 || dtype == VL2_DTYPE_F32);
}

bool vl2_backend_supports(const struct vl2_backend_ops *ops, struct vl2_backend_ctx *ctx,
                          int op, int dtype)
{
    if (!ops->supports_op)
        return abi1_supports(op, dtype);
    return ops->supports_op(ctx, op, dtype) > 0;
}

const char *vl2_backend_op_name(int op)
{
    static const char *const names[VL2_OP_COUNT] = {
        [VL2_OP_WEIGHT] = "weight",       [VL2_OP_KV] = "kv_new",
        [VL2_OP_EMBED] = "embed",         [VL2_OP_LINEAR] = "linear",
        [VL2_OP_RMSNORM] = "rmsnorm",     [VL2_OP_LAYERNORM] = "layernorm",
        [VL2_OP_ADD] = "add",             [VL2_OP_GELU_TANH] = "gelu_tanh",
        [VL2_OP_GELU_ERF] = "gelu_erf",   [VL2_OP_SWIGLU] = "swiglu",
        [VL2_OP_COPY_ROWS] = "copy_rows", [VL2_OP_PATCHIFY] = "patchify",
        [VL2_OP_UNFOLD2X2] = "unfold2x2", [VL2_OP_ATTN_FULL] = "attn_full",
        [VL2_OP_ROPE] = "rope",           [VL2_OP_ATTN_MHA] = "attn_mha",
        [VL2_OP_ATTN_MLA] = "attn_mla",   [VL2_OP_MOE] = "moe",
        [VL2_OP_ARGMAX] = "argmax",
    };

    return op > 0 && op < VL2_OP_COUNT && names[op] ? names[op] : "unknown op";
}

static const char *dtype_name(int dtype)
{
    switch (dtype) {
    case VL2_DTYPE_F32: return "F32";
    case VL2_DTYPE_F16: return "F16";
    case VL2_DTYPE_BF16: return "BF16";
    case VL2_DTYPE_I32: return "I32";
    case VL2_DTYPE_Q8: return "Q8";
    case VL2_DTYPE_Q4: return "Q4";
    }
    return "an unknown dtype";
}

int vl2_backend_require(const struct vl2_backend_ops *ops, struct vl2_backend_ctx *ctx, int op,
                        int dtype, struct vl2_err *err)
{
    const char *fmt;

    if (vl2_backend_supports(ops, ctx, op, dtype))
        return 0;
    switch (op) {
    case VL2_OP_KV: case VL2_OP_ATTN_MHA: case VL2_OP_ATTN_MLA:
        fmt = "backend '%s': %s with a %s cache: not supported";
        break;
    case VL2_OP_WEIGHT: case VL2_OP_EMBED: case VL2_OP_LINEAR: case VL2_OP_MOE:
        fmt = "backend '%s': %s with %s weights: not supported";
        break;
    default:
        fmt = dtype == -1 ? "backend '%s': %s: not supported%s" :
                            "backend '%s': %s on %s: not supported";
    }
    return vl2_err_set(err, VL2_EUNSUPPORTED, fmt, ops->name, vl2_backend_op_name(op),
                       dtype == -1 ? "" : dtype_name(dtype));
}

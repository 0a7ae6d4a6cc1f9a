/* backend.c - the plugin loader (see backend.h). */
#include <dlfcn.h>
#include <limits.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend.h"
#include "vl2-config.h"

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

/* Directory of the running executable, or "" when unknown. */
static void exe_dir(char *buf, size_t size)
{
    ssize_t n = readlink("/proc/self/exe", buf, size - 1);
    char *slash;

    if (n <= 0) {
        buf[0] = '\0';
        return;
    }
    buf[n] = '\0';
    slash = strrchr(buf, '/');
    if (slash)
        *slash = '\0';
    else
        buf[0] = '\0';
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

/* Check that every function slot of ABI v1 is filled. */
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
    static const char *const rel[] = { "..", "../..", "../../.." };
    char file[128], path[4096 + 256], dir[PATH_MAX], tried[VL2_ERR_MSG_SIZE];
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
        exe_dir(dir, sizeof(dir));
        if (dir[0])
            for (size_t i = 0; i < sizeof(rel) / sizeof(rel[0]); i++)
                TRY("%s/%s/plugins/%s/%s", dir, rel[i], name, file);
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

/* conf.c - vl2d.conf: an INI-like file of [daemon] settings and [model NAME]
 * sections (conf.h describes the format).  It lives with the vl2d command
 * (daemon/cli), which joins the server and the runtime: the file sets the
 * server's options and the engines' parameters. */
#include <ctype.h>
#include <errno.h>
#include <grp.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conf.h"
#include "ipc.h"
#include "vl2-config.h"
#include "vl2-options.h"

/* Largest configuration file read. */
#define CONF_MAX_SIZE (1u << 20)

void vl2_conf_init(struct vl2_conf *c)
{
    memset(c, 0, sizeof(*c));
    c->server = vl2_server_default_opts();
    c->engine = vl2_engine_default_params();
}

static void free_model(struct vl2_conf_model *m)
{
    free(m->name);
    free(m->dir);
    free(m->backend);
    free(m->backend_options);
    memset(m, 0, sizeof(*m));
}

void vl2_conf_done(struct vl2_conf *c)
{
    size_t i;

    for (i = 0; i < c->n_models; i++)
        free_model(&c->models[i]);
    free(c->socket_path);
    free(c->model_roots);
    free(c->backend);
    free(c->plugin_dir);
    memset(c, 0, sizeof(*c));
}

int vl2_conf_default_path(bool system, char *buf, size_t size, struct vl2_err *err)
{
    const char *xdg = getenv("XDG_CONFIG_HOME"), *home = getenv("HOME");
    int n;

    if (system)
        n = snprintf(buf, size, "%s/vl2d.conf", VL2_SYSCONF_DIR);
    else if (xdg && xdg[0] == '/')
        n = snprintf(buf, size, "%s/vl2d/vl2d.conf", xdg);
    else if (home && home[0] == '/')
        n = snprintf(buf, size, "%s/.config/vl2d/vl2d.conf", home);
    else
        return vl2_err_set(err, VL2_ENOTFOUND, "conf: neither XDG_CONFIG_HOME nor HOME is "
                           "set to an absolute path");
    if (n < 0 || (size_t) n >= size)
        return vl2_err_set(err, VL2_ELIMIT, "conf: the configuration path is too long");
    return 0;
}

/* ---- values ------------------------------------------------------------ */

static int parse_u64(const char *s, unsigned long long *ret)
{
    char *end;

    errno = 0;
    if (!isdigit((unsigned char) s[0]))
        return -1;
    *ret = strtoull(s, &end, 10);
    return errno || *end ? -1 : 0;
}

/* "64M" -> 67108864 */
static int parse_size(const char *s, unsigned long long *ret)
{
    unsigned long long v, mul = 1;
    char *end;

    errno = 0;
    if (!isdigit((unsigned char) s[0]))
        return -1;
    v = strtoull(s, &end, 10);
    if (errno)
        return -1;
    if (*end == 'K' || *end == 'k')
        mul = 1ull << 10, end++;
    else if (*end == 'M' || *end == 'm')
        mul = 1ull << 20, end++;
    else if (*end == 'G' || *end == 'g')
        mul = 1ull << 30, end++;
    else if (*end == 'T' || *end == 't')
        mul = 1ull << 40, end++;
    if (mul > 1 && end[0] == 'i' && end[1] == 'B')
        end += 2;
    else if (end[0] == 'B')
        end++;
    if (*end || v > ULLONG_MAX / mul)
        return -1;
    *ret = v * mul;
    return 0;
}

/* "90", "90s", "2m", "1.5h" -> seconds */
static int parse_duration(const char *s, double *ret)
{
    char *end;
    double v, mul = 1;

    errno = 0;
    if (!isdigit((unsigned char) s[0]) && s[0] != '.')
        return -1;
    v = strtod(s, &end);
    if (errno || end == s)
        return -1;
    if (*end == 's')
        end++;
    else if (*end == 'm')
        mul = 60, end++;
    else if (*end == 'h')
        mul = 3600, end++;
    if (*end || !isfinite(v) || v < 0)
        return -1;
    *ret = v * mul;
    return 0;
}

static int parse_bool(const char *s, bool *ret)
{
    static const char *const yes[] = { "true", "yes", "on", "1" };
    static const char *const no[] = { "false", "no", "off", "0" };
    size_t i;

    for (i = 0; i < 4; i++) {
        if (!strcasecmp(s, yes[i])) {
            *ret = true;
            return 0;
        }
        if (!strcasecmp(s, no[i])) {
            *ret = false;
            return 0;
        }
    }
    return -1;
}

static int set_str(char **field, const char *value, struct vl2_err *err)
{
    char *p = strdup(value);

    if (!p)
        return vl2_err_set(err, VL2_ENOMEM, "out of memory");
    free(*field);
    *field = p;
    return 0;
}

/* An unsigned value in [lo, hi] (a size with a suffix when @size). */
static int set_uint(const char *key, const char *value, bool size, unsigned long long lo,
                    unsigned long long hi, unsigned long long *ret, struct vl2_err *err)
{
    unsigned long long v;

    if ((size ? parse_size(value, &v) : parse_u64(value, &v)) < 0 || v < lo || v > hi)
        return vl2_err_set(err, VL2_EINVAL, "%s '%s': expected %s from %llu to %llu", key,
                           value, size ? "a size (K, M, G suffixes)" : "an integer", lo, hi);
    *ret = v;
    return 0;
}

/* ---- backend options ----------------------------------------------------- */

int vl2_conf_options_append(char *buf, size_t size, const char *items, const char *who,
                            struct vl2_err *err)
{
    const char *pos = items;
    struct vl2_opt o;
    size_t len = strlen(buf), n = strlen(items);
    int r;

    /* the syntax only: what the keys mean is the backend's to say */
    while ((r = vl2_opt_next(&pos, &o, who, err)) > 0)
        ;
    if (r < 0)
        return r;
    if (n == 0)
        return 0;
    if (len + (len > 0) + n >= size)
        return vl2_err_set(err, VL2_ELIMIT, "%s: the backend options are longer than %zu "
                           "bytes", who, size - 1);
    if (len)
        buf[len++] = ',';
    memcpy(buf + len, items, n + 1);
    return 0;
}

int vl2_conf_add_backend_option(struct vl2_conf *c, const char *items, struct vl2_err *err)
{
    int r = vl2_conf_options_append(c->backend_options, sizeof(c->backend_options), items,
                                    "--backend-option", err);

    c->engine.backend_options = c->backend_options[0] ? c->backend_options : NULL;
    return r;
}

int vl2_conf_set(struct vl2_conf *c, const char *key, const char *value, struct vl2_err *err)
{
    struct vl2_engine_params *ep = &c->engine;
    struct vl2_server_opts *so = &c->server;
    unsigned long long v;
    double d;
    bool b;
    int r;

    if (!strcmp(key, "backend")) {
        if (!value[0] || strspn(value, "abcdefghijklmnopqrstuvwxyz0123456789_-") !=
                             strlen(value))
            return vl2_err_set(err, VL2_EINVAL, "backend '%s': expected a name such as cpu "
                               "or cuda", value);
        r = set_str(&c->backend, value, err);
        ep->backend = c->backend;
        return r;
    }
    if (!strcmp(key, "backend_options")) {
        char opts[VL2_CONF_OPTIONS_MAX] = "";

        /* the file's value replaces an earlier one; flags append to it */
        r = vl2_conf_options_append(opts, sizeof(opts), value, "backend_options", err);
        if (r < 0)
            return r;
        memcpy(c->backend_options, opts, sizeof(opts));
        ep->backend_options = c->backend_options[0] ? c->backend_options : NULL;
        return 0;
    }
    if (!strcmp(key, "plugin_dir")) {
        r = set_str(&c->plugin_dir, value, err);
        ep->plugin_dir = c->plugin_dir;
        return r;
    }
    if (!strcmp(key, "socket")) {
        if (!value[0])
            return vl2_err_set(err, VL2_EINVAL, "socket: empty path");
        r = set_str(&c->socket_path, value, err);
        so->socket_path = c->socket_path;
        return r;
    }
    if (!strcmp(key, "admin_groups")) {
        char buf[1024], *tok, *save = NULL;
        size_t n = 0;

        if (snprintf(buf, sizeof(buf), "%s", value) >= (int) sizeof(buf))
            return vl2_err_set(err, VL2_ELIMIT, "admin_groups: too long");
        for (tok = strtok_r(buf, " \t", &save); tok; tok = strtok_r(NULL, " \t", &save)) {
            struct group gr, *res = NULL;
            char gbuf[8192], *end;
            unsigned long g;

            if (n >= VL2_SERVER_MAX_ALLOW)
                return vl2_err_set(err, VL2_ELIMIT, "admin_groups: more than %d groups",
                                   VL2_SERVER_MAX_ALLOW);
            errno = 0;
            g = strtoul(tok, &end, 10);
            if (tok[0] >= '0' && tok[0] <= '9' && !*end && !errno) {
                so->admin_gids[n++] = (gid_t) g;
            } else if (getgrnam_r(tok, &gr, gbuf, sizeof(gbuf), &res) == 0 && res) {
                so->admin_gids[n++] = res->gr_gid;
            } else {
                return vl2_err_set(err, VL2_EINVAL, "admin_groups: no such group '%s'", tok);
            }
        }
        so->n_admin_gids = n;
        return 0;
    }
    if (!strcmp(key, "model_roots")) {
        char *copy = strdup(value), *tok, *save = NULL;
        size_t n = 0;

        if (!copy)
            return vl2_err_set(err, VL2_ENOMEM, "out of memory");
        for (tok = strtok_r(copy, " \t", &save); tok; tok = strtok_r(NULL, " \t", &save)) {
            if (tok[0] != '/' || n >= VL2_SERVER_MAX_ROOTS) {
                r = vl2_err_set(err, tok[0] != '/' ? VL2_EINVAL : VL2_ELIMIT,
                                tok[0] != '/' ? "model_roots: '%s' is not an absolute path"
                                              : "model_roots: more than 16 at '%s'", tok);
                free(copy);
                return r;
            }
            so->model_roots[n++] = tok;
        }
        free(c->model_roots);
        c->model_roots = copy;
        so->n_model_roots = n;
        return 0;
    }
    if (!strcmp(key, "log_level")) {
        if (vl2_log_parse_level(value, &c->log_level) < 0)
            return vl2_err_set(err, VL2_EINVAL, "log_level '%s': expected error, warning, "
                               "info or debug", value);
        c->has_log_level = true;
        return 0;
    }
    if (!strcmp(key, "socket_mode")) {
        char *end;
        unsigned long m;

        errno = 0;
        m = strtoul(value, &end, 8);
        if (errno || *end || !value[0] || m > 0777)
            return vl2_err_set(err, VL2_EINVAL, "socket_mode '%s': expected an octal mode "
                               "such as 0660", value);
        so->socket_mode = (unsigned) m;
        return 0;
    }
    if (!strcmp(key, "special_tokens_in_text")) {
        if (parse_bool(value, &b) < 0)
            return vl2_err_set(err, VL2_EINVAL, "special_tokens_in_text '%s': expected true or "
                               "false", value);
        ep->special_tokens_in_text = b;
        return 0;
    }
    if (!strcmp(key, "apply_exif")) {
        if (parse_bool(value, &b) < 0)
            return vl2_err_set(err, VL2_EINVAL, "apply_exif '%s': expected true or false",
                               value);
        ep->apply_exif = b;
        return 0;
    }
    if (!strcmp(key, "idle_unload") || !strcmp(key, "image_timeout")) {
        bool idle = key[0] == 'i' && key[1] == 'd';

        if (parse_duration(value, &d) < 0 || (!idle && d <= 0) || d > 1e9)
            return vl2_err_set(err, VL2_EINVAL, "%s '%s': expected a duration such as 30s, "
                               "10m or 1h%s", key, value, idle ? " (0: never)" : "");
        if (idle)
            ep->idle_unload_s = d;
        else
            ep->fd_timeout_s = d;
        return 0;
    }
#define UINT_KEY(name, is_size, lo, hi, field, type)                                       \
    if (!strcmp(key, name)) {                                                              \
        r = set_uint(key, value, is_size, lo, hi, &v, err);                                \
        if (r == 0)                                                                        \
            field = (type) v;                                                              \
        return r;                                                                          \
    }
    UINT_KEY("device", false, 0, 1024, ep->device, int)
    UINT_KEY("threads", false, 0, 4096, ep->n_threads, int)
    UINT_KEY("max_sequences", false, 1, 4096, ep->max_sequences, uint32_t)
    UINT_KEY("max_queue", false, 1, 1000000, ep->max_queue, uint32_t)
    UINT_KEY("kv_budget", true, 0, SIZE_MAX / 4, ep->kv_budget, size_t)
    UINT_KEY("context", false, 0, INT32_MAX, ep->n_ctx, int32_t)
    UINT_KEY("max_new_tokens", false, 0, 1u << 24, ep->max_new_tokens, uint32_t)
    UINT_KEY("max_images", false, 1, VL2_ENGINE_MAX_IMAGES, ep->max_images, uint32_t)
    UINT_KEY("max_image_pixels", false, 1, 1ull << 40, ep->max_image_pixels, uint64_t)
    UINT_KEY("max_image_bytes", true, 1, VL2_IPC_MAX_FRAME_LIMIT, ep->max_image_bytes,
             size_t)
    UINT_KEY("prep_threads", false, 1, 64, ep->prep_threads, uint32_t)
    UINT_KEY("vision_tiles_per_step", false, 0, 1024, ep->vision_tiles_per_step, uint32_t)
    UINT_KEY("max_frame", true, 1, VL2_IPC_MAX_FRAME_LIMIT, so->max_frame, uint32_t)
    UINT_KEY("max_connections", false, 1, 65536, so->max_connections, unsigned)
#undef UINT_KEY
    return vl2_err_set(err, VL2_EINVAL, "unknown key '%s'", key);
}

/* ---- models ------------------------------------------------------------ */

struct vl2_engine_params vl2_conf_engine_params(const struct vl2_conf *c, const char *name,
                                                const char *dir, const char *backend)
{
    struct vl2_engine_params p = c->engine;
    size_t i;

    for (i = 0; i < c->n_models; i++) {
        const struct vl2_conf_model *m = &c->models[i];

        if (m->backend_options && name && dir && !strcmp(m->name, name) &&
            !strcmp(m->dir, dir)) {
            p.backend_options = m->backend_options[0] ? m->backend_options : NULL;
            return p;
        }
    }
    /* the daemon's options are for the daemon's backend */
    if (backend && backend[0] && strcmp(backend, p.backend ? p.backend : "cpu"))
        p.backend_options = NULL;
    return p;
}

/* The last component of @dir, trailing slashes ignored: the name of a model
 * given without one (the rule the server applies to LoadModel). */
static void base_name(const char *dir, char *buf, size_t size)
{
    size_t n = strlen(dir);
    const char *p;

    while (n > 1 && dir[n - 1] == '/')
        n--;
    for (p = dir + n; p > dir && p[-1] != '/'; p--)
        ;
    snprintf(buf, size, "%.*s", (int) (dir + n - p), p);
}

static bool valid_name(const char *s)
{
    size_t n = strlen(s);

    if (n == 0 || n > VL2_CONF_MAX_NAME)
        return false;
    return strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-+:@") ==
           n && strcmp(s, ".") && strcmp(s, "..");
}

/* @dir made absolute against @base (NULL: the working directory). */
static char *absolute(const char *dir, const char *base)
{
    char cwd[4096], *p;
    size_t nb, nd;

    if (dir[0] == '/')
        return strdup(dir);
    if (!base) {
        if (!getcwd(cwd, sizeof(cwd)))
            return strdup(dir);
        base = cwd;
    }
    nb = strlen(base);
    nd = strlen(dir);
    p = malloc(nb + 1 + nd + 1);
    if (!p)
        return NULL;
    memcpy(p, base, nb);
    p[nb] = '/';
    memcpy(p + nb + 1, dir, nd + 1);
    return p;
}

int vl2_conf_add_model(struct vl2_conf *c, const char *name, const char *dir,
                       const char *base_dir, struct vl2_err *err)
{
    struct vl2_conf_model *m;
    char base[VL2_CONF_MAX_NAME * 4];
    size_t i;

    if (!dir || !dir[0])
        return vl2_err_set(err, VL2_EINVAL, "model '%s': no directory", name ? name : "");
    if (!name || !name[0]) {
        base_name(dir, base, sizeof(base));
        name = base;
    }
    if (!valid_name(name))
        return vl2_err_set(err, VL2_EINVAL, "model name '%s': use at most %d letters, digits "
                           "and . _ - + : @", name, VL2_CONF_MAX_NAME);
    for (i = 0; i < c->n_models; i++)
        if (!strcmp(c->models[i].name, name))
            return vl2_err_set(err, VL2_EINVAL, "model '%s' is named twice", name);
    if (c->n_models >= VL2_CONF_MAX_MODELS)
        return vl2_err_set(err, VL2_ELIMIT, "more than %d models", VL2_CONF_MAX_MODELS);
    m = &c->models[c->n_models];
    m->name = strdup(name);
    m->dir = absolute(dir, base_dir);
    if (!m->name || !m->dir) {
        free_model(m);
        return vl2_err_set(err, VL2_ENOMEM, "out of memory");
    }
    c->n_models++;
    return 0;
}

int vl2_conf_add_model_arg(struct vl2_conf *c, const char *arg, struct vl2_err *err)
{
    const char *eq = strchr(arg, '='), *slash = strchr(arg, '/');
    char name[VL2_CONF_MAX_NAME * 4];

    if (!eq || (slash && slash < eq))
        return vl2_conf_add_model(c, NULL, arg, NULL, err);
    if ((size_t) (eq - arg) >= sizeof(name))
        return vl2_err_set(err, VL2_EINVAL, "model name '%.*s...' is too long", 16, arg);
    memcpy(name, arg, (size_t) (eq - arg));
    name[eq - arg] = '\0';
    if (!name[0])
        return vl2_err_set(err, VL2_EINVAL, "'%s': empty model name before '='", arg);
    return vl2_conf_add_model(c, name, eq + 1, NULL, err);
}

/* ---- the file ---------------------------------------------------------- */

static char *trim(char *s)
{
    char *e;

    while (*s == ' ' || *s == '\t')
        s++;
    e = s + strlen(s);
    while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r'))
        *--e = '\0';
    return s;
}

/* A value in double quotes loses them (\" and \\ unescaped).  Returns 0 or -1. */
static int unquote(char *v)
{
    char *r, *w;

    if (v[0] != '"')
        return 0;
    for (r = v + 1, w = v; *r && *r != '"'; r++) {
        if (*r == '\\' && (r[1] == '"' || r[1] == '\\'))
            r++;
        *w++ = *r;
    }
    if (*r != '"' || r[1] != '\0')
        return -1;
    *w = '\0';
    return 0;
}

enum section { SEC_NONE, SEC_DAEMON, SEC_MODEL };

/* A [model NAME] section being read (owned strings, NULL when unset). */
struct pending_model {
    char *name, *dir, *backend, *backend_options;
    long line;
};

static void pending_done(struct pending_model *pm)
{
    free(pm->name);
    free(pm->dir);
    free(pm->backend);
    free(pm->backend_options);
    memset(pm, 0, sizeof(*pm));
}

/* Called at the end of a [model] section and of the file. */
static int end_model(struct vl2_conf *c, const char *file, struct pending_model *pm,
                     const char *base_dir, struct vl2_err *err)
{
    int r = 0;

    if (!pm->name)
        return 0;
    if (!pm->dir) {
        r = vl2_err_set(err, VL2_EINVAL, "%s:%ld: model '%s' has no 'dir'", file, pm->line,
                        pm->name);
    } else {
        r = vl2_conf_add_model(c, pm->name, pm->dir, base_dir, err);
        if (r < 0) {
            char where[4200];

            snprintf(where, sizeof(where), "%s:%ld", file, pm->line);
            vl2_err_prefix(err, r, where);
        } else {
            struct vl2_conf_model *m = &c->models[c->n_models - 1];

            m->backend = pm->backend;
            m->backend_options = pm->backend_options;
            pm->backend = pm->backend_options = NULL;
        }
    }
    pending_done(pm);
    return r;
}

int vl2_conf_parse(struct vl2_conf *c, const char *text, size_t len, const char *name,
                   struct vl2_err *err)
{
    char *copy, *p, *nl, *base_dir = NULL, *slash;
    struct pending_model pm = { 0 };
    enum section sec = SEC_NONE;
    long line = 0;
    int r = 0;

    if (memchr(text, '\0', len))
        return vl2_err_set(err, VL2_EFORMAT, "%s: the file holds a NUL byte", name);
    copy = malloc(len + 1);
    base_dir = strdup(name);
    if (!copy || !base_dir) {
        free(copy);
        free(base_dir);
        return vl2_err_set(err, VL2_ENOMEM, "out of memory");
    }
    memcpy(copy, text, len);
    copy[len] = '\0';
    slash = strrchr(base_dir, '/');
    if (!slash)
        base_dir[0] = '\0';
    else if (slash == base_dir)
        slash[1] = '\0';
    else
        *slash = '\0';
    for (p = copy; p && *p; p = nl) {
        char *s, *eq, *key, *value;
        struct vl2_err e2 = { 0 };

        line++;
        nl = strchr(p, '\n');
        if (nl)
            *nl++ = '\0';
        s = trim(p);
        if (!*s || *s == '#' || *s == ';')
            continue;
        if (*s == '[') {
            char *close = strchr(s, ']'), *inner;

            if (!close || trim(close + 1)[0]) {
                r = vl2_err_set(err, VL2_EFORMAT, "%s:%ld: expected '[daemon]' or '[model "
                                "NAME]'", name, line);
                break;
            }
            *close = '\0';
            inner = trim(s + 1);
            r = end_model(c, name, &pm, base_dir[0] ? base_dir : NULL, err);
            if (r < 0)
                break;
            if (!strcmp(inner, "daemon")) {
                sec = SEC_DAEMON;
            } else if (!strncmp(inner, "model", 5) && (inner[5] == ' ' || inner[5] == '\t')) {
                char *mn = trim(inner + 5);

                if (unquote(mn) < 0 || !valid_name(mn)) {
                    r = vl2_err_set(err, VL2_EINVAL, "%s:%ld: model name '%s': use at most %d "
                                    "letters, digits and . _ - + : @", name, line, mn,
                                    VL2_CONF_MAX_NAME);
                    break;
                }
                pm.name = strdup(mn);
                if (!pm.name) {
                    r = vl2_err_set(err, VL2_ENOMEM, "out of memory");
                    break;
                }
                pm.line = line;
                sec = SEC_MODEL;
            } else {
                r = vl2_err_set(err, VL2_EFORMAT, "%s:%ld: unknown section '[%s]' (expected "
                                "[daemon] or [model NAME])", name, line, inner);
                break;
            }
            continue;
        }
        eq = strchr(s, '=');
        if (!eq) {
            r = vl2_err_set(err, VL2_EFORMAT, "%s:%ld: expected 'key = value'", name, line);
            break;
        }
        *eq = '\0';
        key = trim(s);
        value = trim(eq + 1);
        if (unquote(value) < 0) {
            r = vl2_err_set(err, VL2_EFORMAT, "%s:%ld: unbalanced quotes in the value of '%s'",
                            name, line, key);
            break;
        }
        if (sec == SEC_NONE) {
            r = vl2_err_set(err, VL2_EFORMAT, "%s:%ld: '%s' outside a section (start with "
                            "[daemon] or [model NAME])", name, line, key);
            break;
        }
        if (sec == SEC_DAEMON) {
            r = vl2_conf_set(c, key, value, &e2);
            if (r < 0) {
                r = vl2_err_set(err, r, "%s:%ld: %s", name, line, e2.msg);
                break;
            }
            continue;
        }
        if (!strcmp(key, "backend_options")) {
            char opts[VL2_CONF_OPTIONS_MAX] = "";

            r = vl2_conf_options_append(opts, sizeof(opts), value, "backend_options", &e2);
            if (r < 0) {
                r = vl2_err_set(err, r, "%s:%ld: %s", name, line, e2.msg);
                break;
            }
            free(pm.backend_options);
            pm.backend_options = strdup(opts);
            if (!pm.backend_options) {
                r = vl2_err_set(err, VL2_ENOMEM, "out of memory");
                break;
            }
            continue;
        }
        if (!strcmp(key, "dir") || !strcmp(key, "backend")) {
            char **f = key[0] == 'd' ? &pm.dir : &pm.backend;

            if (!value[0]) {
                r = vl2_err_set(err, VL2_EINVAL, "%s:%ld: empty '%s'", name, line, key);
                break;
            }
            free(*f);
            *f = strdup(value);
            if (!*f) {
                r = vl2_err_set(err, VL2_ENOMEM, "out of memory");
                break;
            }
            continue;
        }
        r = vl2_err_set(err, VL2_EINVAL, "%s:%ld: unknown key '%s' in [model %s] (expected "
                        "dir, backend or backend_options)", name, line, key, pm.name);
        break;
    }
    if (r == 0)
        r = end_model(c, name, &pm, base_dir[0] ? base_dir : NULL, err);
    pending_done(&pm);
    free(base_dir);
    free(copy);
    return r;
}

int vl2_conf_load(struct vl2_conf *c, const char *path, bool must_exist, struct vl2_err *err)
{
    FILE *f = fopen(path, "re");
    char *buf;
    size_t n;
    int r;

    if (!f) {
        if (errno == ENOENT && !must_exist)
            return 0;
        return vl2_err_set(err, errno == ENOENT ? VL2_ENOTFOUND : VL2_EIO, "%s: %s", path,
                           strerror(errno));
    }
    buf = malloc(CONF_MAX_SIZE + 1);
    if (!buf) {
        fclose(f);
        return vl2_err_set(err, VL2_ENOMEM, "out of memory");
    }
    n = fread(buf, 1, CONF_MAX_SIZE + 1, f);
    if (ferror(f)) {
        r = vl2_err_set(err, VL2_EIO, "%s: read error", path);
    } else if (n > CONF_MAX_SIZE) {
        r = vl2_err_set(err, VL2_ELIMIT, "%s: larger than %u bytes", path, CONF_MAX_SIZE);
    } else {
        r = vl2_conf_parse(c, buf, n, path, err);
    }
    free(buf);
    fclose(f);
    return r;
}

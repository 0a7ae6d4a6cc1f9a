/* cmd_serve.c - `vl2d serve` (also plain `vl2d`): read the configuration
 * file, apply the options, start loading the models, run the server until
 * SIGTERM/SIGINT.
 *
 * Options live in one table (name, argument, help); add a row and a case in
 * apply_option() to add one.  The file comes first (conf.h), then the
 * options in their order. */
#include <errno.h>
#include <getopt.h>
#include <grp.h>
#include <limits.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cmd.h"
#include "conf.h"
#include "engine.h"
#include "ipc.h"
#include "log.h"
#include "server.h"
#include "vl2-config.h"
#include "weights.h"

enum {
    OPT_SOCKET = 1000,
    OPT_SYSTEM,
    OPT_SOCKET_MODE,
    OPT_ALLOW_UID,
    OPT_ALLOW_GROUP,
    OPT_MAX_FRAME,
    OPT_MAX_CONNECTIONS,
    OPT_NO_ACTIVATION,
    OPT_NO_NOTIFY,
    OPT_LOG_LEVEL,
    OPT_CONFIG,
    OPT_NO_CONFIG,
    OPT_MODEL,
    OPT_BACKEND,
    OPT_BACKEND_OPTION,
    OPT_PLUGIN_DIR,
    OPT_DEVICE,
    OPT_THREADS,
    OPT_MAX_SEQUENCES,
    OPT_KV_BUDGET,
    OPT_CONTEXT,
    OPT_IDLE_UNLOAD,
    OPT_ADMIN_GROUP,
    OPT_MODEL_ROOT,
    OPT_STOP_TIMEOUT,
    OPT_HANDSHAKE_TIMEOUT,
    OPT_FRAME_TIMEOUT,
    OPT_MAX_CONN_PER_UID,
    OPT_MAX_PARTIAL,
    OPT_VERBOSE = 'v',
    OPT_HELP = 'h',
};

struct serve_option {
    const char *name;
    const char *arg;      /* NULL: takes no argument */
    int id;
    const char *help;
};

static const struct serve_option serve_options[] = {
    { "config", "FILE", OPT_CONFIG, "read FILE instead of the default configuration ("
      VL2_SYSCONF_DIR "/vl2d.conf with --system, else $XDG_CONFIG_HOME/vl2d/vl2d.conf)" },
    { "no-config", NULL, OPT_NO_CONFIG, "read no configuration file" },
    { "model", "[NAME=]DIR", OPT_MODEL, "serve the model in DIR, named NAME (default: "
      "the base name of DIR); repeatable, added to the file's models" },
    { "backend", "NAME", OPT_BACKEND, "cpu (default) or cuda" },
    { "backend-option", "K=V", OPT_BACKEND_OPTION, "an option of the backend plugin "
      "(cpu: isa=scalar|avx2|avx512, precision=f32|bf16); repeatable, appended to the "
      "file's backend_options (a key given twice: the last value)" },
    { "plugin-dir", "DIR", OPT_PLUGIN_DIR, "where the backend plugins are" },
    { "device", "N", OPT_DEVICE, "backend device index (default 0)" },
    { "threads", "N", OPT_THREADS, "backend threads (default 0: all cores)" },
    { "max-sequences", "N", OPT_MAX_SEQUENCES, "requests generating at once per model "
      "(default 8); the others wait in a fair queue" },
    { "kv-budget", "SIZE", OPT_KV_BUDGET, "memory for the KV caches of a model (K/M/G; "
      "default: max-sequences full contexts, at most a quarter of the RAM)" },
    { "context", "N", OPT_CONTEXT, "context length in tokens (default: the model's)" },
    { "idle-unload", "TIME", OPT_IDLE_UNLOAD, "release a model's memory after TIME unused "
      "(30s, 10m, 1h; default 0: never); the next request loads it again" },
    { "socket", "PATH", OPT_SOCKET,
      "listen on PATH (default: $XDG_RUNTIME_DIR/vl2d.sock; /run/vl2d/vl2d.sock with "
      "--system, or as root without XDG_RUNTIME_DIR)" },
    { "system", NULL, OPT_SYSTEM, "run as the system service" },
    { "socket-mode", "MODE", OPT_SOCKET_MODE, "permissions of the socket file (octal, "
      "default 0660)" },
    { "allow-uid", "USER", OPT_ALLOW_UID, "let USER (name or uid) connect; repeatable; "
      "default: the daemon's own user and root" },
    { "allow-group", "GROUP", OPT_ALLOW_GROUP, "let members of GROUP (name or gid) "
      "connect; repeatable" },
    { "admin-group", "GROUP", OPT_ADMIN_GROUP, "let members of GROUP (name or gid) load "
      "and unload models (LoadModel, UnloadModel; 'vl2 load'/'vl2 unload'); repeatable; "
      "the daemon's own user and root always may, other clients only use the models "
      "served" },
    { "model-root", "DIR", OPT_MODEL_ROOT, "a LoadModel may only name a directory beneath "
      "DIR (links resolved); repeatable; without any, an admin may name any directory" },
    { "stop-timeout", "SECONDS", OPT_STOP_TIMEOUT, "after SIGTERM, exit within SECONDS "
      "whatever still runs (default 10; 0: wait for everything)" },
    { "handshake-timeout", "SECONDS", OPT_HANDSHAKE_TIMEOUT, "close a connection that "
      "has not sent Hello after SECONDS (default 10)" },
    { "frame-timeout", "SECONDS", OPT_FRAME_TIMEOUT, "close a connection whose frame is "
      "not complete SECONDS after its first byte (default 30)" },
    { "max-connections-per-uid", "N", OPT_MAX_CONN_PER_UID, "connections one user may "
      "hold (default 64)" },
    { "max-partial-bytes", "SIZE", OPT_MAX_PARTIAL, "bytes that frames still being "
      "received may hold, all clients together (K/M/G; default 4 x max-frame, at least "
      "256M); a client whose frame passes it is refused" },
    { "max-frame", "SIZE", OPT_MAX_FRAME, "largest request accepted, bytes with optional "
      "K/M/G suffix (default 64M, at most 1G)" },
    { "max-connections", "N", OPT_MAX_CONNECTIONS, "clients at once (default 256)" },
    { "no-socket-activation", NULL, OPT_NO_ACTIVATION, "ignore a socket passed by "
      "systemd" },
    { "no-notify", NULL, OPT_NO_NOTIFY, "do not send sd_notify messages" },
    { "log-level", "LEVEL", OPT_LOG_LEVEL, "error, warning, info (default) or debug" },
    { "verbose", NULL, OPT_VERBOSE, "same as --log-level debug" },
    { "help", NULL, OPT_HELP, "show this help" },
};

#define N_OPTIONS (sizeof(serve_options) / sizeof(serve_options[0]))

/* "  LEFT  help text" with the help wrapped at 80 columns. */
static void print_wrapped(FILE *f, const char *left, const char *help)
{
    const int indent = 33, width = 80;
    const char *p = help;
    int col;

    col = fprintf(f, "  %-30s", left);
    while (*p) {
        const char *sp = strchr(p, ' ');
        int len = sp ? (int) (sp - p) : (int) strlen(p);

        if (col + 1 + len > width && col > indent) {
            fprintf(f, "\n%*s", indent - 1, "");
            col = indent - 1;
        }
        col += fprintf(f, " %.*s", len, p);
        p += len;
        while (*p == ' ')
            p++;
    }
    fputc('\n', f);
}

static void usage(FILE *f)
{
    size_t i;

    fprintf(f, "usage: vl2d [serve] [options]\n\n"
               "Serve DeepSeek-VL2 on a Unix socket until SIGTERM or SIGINT.\n\noptions:\n");
    for (i = 0; i < N_OPTIONS; i++) {
        char left[48];
        const struct serve_option *o = &serve_options[i];

        if (o->id < 256)
            snprintf(left, sizeof(left), "-%c, --%s%s%s", o->id, o->name, o->arg ? " " : "",
                     o->arg ? o->arg : "");
        else
            snprintf(left, sizeof(left), "    --%s%s%s", o->name, o->arg ? " " : "",
                     o->arg ? o->arg : "");
        print_wrapped(f, left, o->help);
    }
}

/* "64M" -> 67108864.  Returns 0 or -1. */
static int parse_size(const char *s, unsigned long long *ret)
{
    unsigned long long v, mul = 1;
    char *end;

    errno = 0;
    if (s[0] < '0' || s[0] > '9')
        return -1;
    v = strtoull(s, &end, 10);
    if (errno)
        return -1;
    if (*end == 'K' || *end == 'k')
        mul = 1024ull, end++;
    else if (*end == 'M' || *end == 'm')
        mul = 1024ull * 1024, end++;
    else if (*end == 'G' || *end == 'g')
        mul = 1024ull * 1024 * 1024, end++;
    if (*end == 'i' || *end == 'B')
        end += (*end == 'i' && end[1] == 'B') ? 2 : 1;
    if (*end != '\0' || v > ULLONG_MAX / mul)
        return -1;
    *ret = v * mul;
    return 0;
}

static int parse_id(const char *s, unsigned long *ret)
{
    char *end;

    errno = 0;
    if (s[0] < '0' || s[0] > '9')
        return -1;
    *ret = strtoul(s, &end, 10);
    return (errno || *end) ? -1 : 0;
}

static int resolve_user(const char *s, uid_t *ret)
{
    struct passwd pw, *res = NULL;
    char buf[4096];
    unsigned long v;

    if (parse_id(s, &v) == 0) {
        *ret = (uid_t) v;
        return 0;
    }
    if (getpwnam_r(s, &pw, buf, sizeof(buf), &res) != 0 || !res)
        return -1;
    *ret = res->pw_uid;
    return 0;
}

static int resolve_group(const char *s, gid_t *ret)
{
    struct group gr, *res = NULL;
    char buf[8192];
    unsigned long v;

    if (parse_id(s, &v) == 0) {
        *ret = (gid_t) v;
        return 0;
    }
    if (getgrnam_r(s, &gr, buf, sizeof(buf), &res) != 0 || !res)
        return -1;
    *ret = res->gr_gid;
    return 0;
}

/* Set [daemon] key @key from option @opt.  Returns 0 or -1 (printed). */
static int conf_option(struct vl2_conf *c, const char *opt, const char *key, const char *arg)
{
    struct vl2_err err = { 0 };

    if (vl2_conf_set(c, key, arg, &err) < 0) {
        fprintf(stderr, "vl2d: --%s: %s\n", opt, err.msg);
        return -1;
    }
    return 0;
}

/* Returns 0, 1 for --help, or -1 after printing a usage error. */
static int apply_option(struct vl2_conf *c, int id, const char *arg)
{
    struct vl2_server_opts *o = &c->server;
    struct vl2_err err = { 0 };
    unsigned long v;
    enum vl2_log_level level;
    char *end;

    switch (id) {
    case OPT_CONFIG:
    case OPT_NO_CONFIG:
        return 0;  /* read before the others */
    case OPT_MODEL:
        if (vl2_conf_add_model_arg(c, arg, &err) < 0) {
            fprintf(stderr, "vl2d: --model '%s': %s\n", arg, err.msg);
            return -1;
        }
        return 0;
    case OPT_BACKEND:
        return conf_option(c, "backend", "backend", arg);
    case OPT_BACKEND_OPTION:
        if (vl2_conf_add_backend_option(c, arg, &err) < 0) {
            fprintf(stderr, "vl2d: %s\n", err.msg);
            return -1;
        }
        return 0;
    case OPT_PLUGIN_DIR:
        return conf_option(c, "plugin-dir", "plugin_dir", arg);
    case OPT_DEVICE:
        return conf_option(c, "device", "device", arg);
    case OPT_THREADS:
        return conf_option(c, "threads", "threads", arg);
    case OPT_MAX_SEQUENCES:
        return conf_option(c, "max-sequences", "max_sequences", arg);
    case OPT_KV_BUDGET:
        return conf_option(c, "kv-budget", "kv_budget", arg);
    case OPT_CONTEXT:
        return conf_option(c, "context", "context", arg);
    case OPT_IDLE_UNLOAD:
        return conf_option(c, "idle-unload", "idle_unload", arg);
    case OPT_SOCKET:
        if (!arg[0]) {
            fprintf(stderr, "vl2d: --socket needs a path\n");
            return -1;
        }
        return conf_option(c, "socket", "socket", arg);
    case OPT_SYSTEM:
        o->system = true;
        return 0;
    case OPT_SOCKET_MODE:
        errno = 0;
        v = strtoul(arg, &end, 8);
        if (errno || *end || !arg[0] || v > 0777) {
            fprintf(stderr, "vl2d: --socket-mode '%s': expected an octal mode such as 0660\n",
                    arg);
            return -1;
        }
        o->socket_mode = (unsigned) v;
        return 0;
    case OPT_ALLOW_UID:
        if (o->n_allow_uids >= VL2_SERVER_MAX_ALLOW) {
            fprintf(stderr, "vl2d: --allow-uid given more than %d times\n",
                    VL2_SERVER_MAX_ALLOW);
            return -1;
        }
        if (resolve_user(arg, &o->allow_uids[o->n_allow_uids]) < 0) {
            fprintf(stderr, "vl2d: --allow-uid '%s': no such user\n", arg);
            return -1;
        }
        o->n_allow_uids++;
        return 0;
    case OPT_ALLOW_GROUP:
        if (o->n_allow_gids >= VL2_SERVER_MAX_ALLOW) {
            fprintf(stderr, "vl2d: --allow-group given more than %d times\n",
                    VL2_SERVER_MAX_ALLOW);
            return -1;
        }
        if (resolve_group(arg, &o->allow_gids[o->n_allow_gids]) < 0) {
            fprintf(stderr, "vl2d: --allow-group '%s': no such group\n", arg);
            return -1;
        }
        o->n_allow_gids++;
        return 0;
    case OPT_ADMIN_GROUP:
        if (o->n_admin_gids >= VL2_SERVER_MAX_ALLOW) {
            fprintf(stderr, "vl2d: --admin-group given more than %d times\n",
                    VL2_SERVER_MAX_ALLOW);
            return -1;
        }
        if (resolve_group(arg, &o->admin_gids[o->n_admin_gids]) < 0) {
            fprintf(stderr, "vl2d: --admin-group '%s': no such group\n", arg);
            return -1;
        }
        o->n_admin_gids++;
        return 0;
    case OPT_MODEL_ROOT:
        if (o->n_model_roots >= VL2_SERVER_MAX_ROOTS) {
            fprintf(stderr, "vl2d: --model-root given more than %d times\n",
                    VL2_SERVER_MAX_ROOTS);
            return -1;
        }
        if (arg[0] != '/') {
            fprintf(stderr, "vl2d: --model-root '%s': expected an absolute path\n", arg);
            return -1;
        }
        o->model_roots[o->n_model_roots++] = arg;
        return 0;
    case OPT_STOP_TIMEOUT:
    case OPT_HANDSHAKE_TIMEOUT:
    case OPT_FRAME_TIMEOUT: {
        const char *name = id == OPT_STOP_TIMEOUT ? "stop-timeout"
                           : id == OPT_FRAME_TIMEOUT ? "frame-timeout" : "handshake-timeout";
        double t;

        errno = 0;
        t = strtod(arg, &end);
        if (errno || end == arg || *end || !(t >= 0 && t <= 3600) ||
            (t == 0 && id != OPT_STOP_TIMEOUT)) {
            fprintf(stderr, "vl2d: --%s '%s': expected seconds from %s to 3600\n", name, arg,
                    id == OPT_STOP_TIMEOUT ? "0" : "more than 0");
            return -1;
        }
        if (id == OPT_STOP_TIMEOUT)
            o->stop_timeout_s = t;
        else if (id == OPT_FRAME_TIMEOUT)
            o->frame_timeout_s = t;
        else
            o->handshake_timeout_s = t;
        return 0;
    }
    case OPT_MAX_CONN_PER_UID:
        if (parse_id(arg, &v) < 0 || v == 0 || v > 65536) {
            fprintf(stderr, "vl2d: --max-connections-per-uid '%s': expected 1 to 65536\n",
                    arg);
            return -1;
        }
        o->max_connections_per_uid = (unsigned) v;
        return 0;
    case OPT_MAX_PARTIAL: {
        unsigned long long size;

        if (parse_size(arg, &size) < 0 || size == 0 || size > (1ull << 40)) {
            fprintf(stderr, "vl2d: --max-partial-bytes '%s': expected a size such as 256M\n",
                    arg);
            return -1;
        }
        o->max_partial_bytes = (size_t) size;
        return 0;
    }
    case OPT_MAX_FRAME: {
        unsigned long long size;

        if (parse_size(arg, &size) < 0 || size == 0 || size > VL2_IPC_MAX_FRAME_LIMIT) {
            fprintf(stderr, "vl2d: --max-frame '%s': expected a size from 1 to 1G\n", arg);
            return -1;
        }
        o->max_frame = (uint32_t) size;
        return 0;
    }
    case OPT_MAX_CONNECTIONS:
        if (parse_id(arg, &v) < 0 || v == 0 || v > 65536) {
            fprintf(stderr, "vl2d: --max-connections '%s': expected 1 to 65536\n", arg);
            return -1;
        }
        o->max_connections = (unsigned) v;
        return 0;
    case OPT_NO_ACTIVATION:
        o->socket_activation = false;
        return 0;
    case OPT_NO_NOTIFY:
        o->notify = false;
        return 0;
    case OPT_LOG_LEVEL:
        if (vl2_log_parse_level(arg, &level) < 0) {
            fprintf(stderr, "vl2d: --log-level '%s': expected error, warning, info or "
                    "debug\n", arg);
            return -1;
        }
        vl2_log_set_level(level);
        return 0;
    case OPT_VERBOSE:
        vl2_log_set_level(VL2_LOG_DEBUG);
        return 0;
    case OPT_HELP:
        usage(stdout);
        return 1;
    }
    return -1;
}

/* ---- engines --------------------------------------------------------- */

/* The factory the server makes engines with: the daemon's engine
 * parameters, the backend of the model or of the request, and the backend
 * options for that model and backend (conf.h). */
static int create_engine(void *ud, const struct vl2_engine_spec *spec,
                         const struct vl2_engine_ops **ret_ops, void **ret_engine,
                         struct vl2_err *err)
{
    const struct vl2_conf *c = ud;
    struct vl2_engine_params p = vl2_conf_engine_params(c, spec->name, spec->dir,
                                                        spec->backend);
    struct vl2_engine *e;
    int r;

    r = vl2_engine_new(&p, spec, &e, err);
    if (r < 0)
        return r;
    *ret_ops = vl2_engine_ops();
    *ret_engine = e;
    return 0;
}

/* ---- the command ----------------------------------------------------- */

struct parsed_opt {
    int id;
    const char *arg;
};

/* Read the configuration file: --config FILE, or the mode's default when it
 * exists.  Returns 0 or -1 (printed). */
static int read_config(struct vl2_conf *c, const struct parsed_opt *opts, size_t n)
{
    struct vl2_err err = { 0 };
    const char *path = NULL, *xdg = getenv("XDG_RUNTIME_DIR");
    char def[4096];
    bool system = false, none = false;
    size_t i;

    for (i = 0; i < n; i++) {
        if (opts[i].id == OPT_CONFIG)
            path = opts[i].arg;
        else if (opts[i].id == OPT_NO_CONFIG)
            none = true;
        else if (opts[i].id == OPT_SYSTEM)
            system = true;
    }
    if (none)
        return 0;
    if (path) {
        if (vl2_conf_load(c, path, true, &err) < 0) {
            fprintf(stderr, "vl2d: %s\n", err.msg);
            return -1;
        }
        return 0;
    }
    /* the same rule as the socket's: system mode for root without a session */
    if (!system && geteuid() == 0 && (!xdg || !xdg[0]))
        system = true;
    if (vl2_conf_default_path(system, def, sizeof(def), &err) < 0)
        return 0;  /* no home: no user file */
    if (vl2_conf_load(c, def, false, &err) < 0) {
        fprintf(stderr, "vl2d: %s\n", err.msg);
        return -1;
    }
    return 0;
}

/* ---- SIGHUP ----------------------------------------------------------- */

/* What a reload needs: the options as given, and the configuration in use
 * (its engine parameters make the engines of models added later). */
struct reload_ctx {
    const struct parsed_opt *opts;
    size_t n_opts;
    struct vl2_conf *conf;
};

static bool conf_has_model(const struct vl2_conf *c, const char *name)
{
    size_t i;

    for (i = 0; i < c->n_models; i++)
        if (!strcmp(c->models[i].name, name))
            return true;
    return false;
}

/* Reread the file and the --model options; load the models that are new,
 * unload those that are gone, take the log level.  Everything else needs a
 * restart (README "Signals"). */
static void on_reload(void *ud, struct vl2_server *srv)
{
    struct reload_ctx *rc = ud;
    struct vl2_err err = { 0 };
    struct vl2_conf next;
    size_t i;

    vl2_conf_init(&next);
    if (read_config(&next, rc->opts, rc->n_opts) < 0) {
        vl2_log(VL2_LOG_ERR, "reload: the configuration has errors (above); keeping the "
                "current one");
        goto out_done;
    }
    for (i = 0; i < rc->n_opts; i++)
        if (rc->opts[i].id == OPT_MODEL &&
            vl2_conf_add_model_arg(&next, rc->opts[i].arg, &err) < 0) {
            vl2_log(VL2_LOG_ERR, "reload: --model '%s': %s", rc->opts[i].arg, err.msg);
            goto out_done;
        }
    for (i = 0; i < rc->n_opts; i++)   /* the flags add to the file's */
        if ((rc->opts[i].id == OPT_ADMIN_GROUP || rc->opts[i].id == OPT_MODEL_ROOT) &&
            apply_option(&next, rc->opts[i].id, rc->opts[i].arg) < 0)
            goto out_done;
    if (vl2_server_set_policy(srv, next.server.admin_gids, next.server.n_admin_gids,
                              next.server.model_roots, next.server.n_model_roots, &err) < 0) {
        vl2_log(VL2_LOG_ERR, "reload: %s; keeping the admin groups and model roots", err.msg);
    }
    if (next.has_log_level)
        vl2_log_set_level(next.log_level);
    for (i = 0; i < rc->conf->n_models; i++) {
        const char *name = rc->conf->models[i].name;

        if (!conf_has_model(&next, name) && vl2_server_has_model(srv, name)) {
            vl2_log(VL2_LOG_INFO, "reload: model '%s' is no longer configured", name);
            (void) vl2_server_unload_model(srv, name, &err);
        }
    }
    for (i = 0; i < next.n_models; i++) {
        const struct vl2_conf_model *m = &next.models[i];

        if (conf_has_model(rc->conf, m->name) && vl2_server_has_model(srv, m->name))
            continue;
        if (vl2_server_has_model(srv, m->name)) {
            vl2_log(VL2_LOG_WARN, "reload: model '%s' is served already (loaded by a "
                    "client); not replaced", m->name);
            continue;
        }
        vl2_log(VL2_LOG_INFO, "reload: model '%s' is new", m->name);
        if (vl2_server_load_model(srv, m->name, m->dir, m->backend, &err) < 0)
            vl2_log(VL2_LOG_ERR, "model '%s': %s", m->name, err.msg);
    }
    /* the model list in use is the new one; the engine parameters stay */
    for (i = 0; i < rc->conf->n_models; i++) {
        free(rc->conf->models[i].name);
        free(rc->conf->models[i].dir);
        free(rc->conf->models[i].backend);
    }
    memcpy(rc->conf->models, next.models, sizeof(next.models));
    rc->conf->n_models = next.n_models;
    next.n_models = 0;
out_done:
    vl2_conf_done(&next);
}

int vl2d_cmd_serve(int argc, char **argv)
{
    struct option longopts[N_OPTIONS + 1];
    struct vl2_engine_factory factory = { .create = create_engine };
    struct reload_ctx reload = { 0 };
    struct vl2_server *srv = NULL;
    struct vl2_err err = { 0 };
    struct parsed_opt *opts;
    struct vl2_conf conf;
    char shortopts[2 * N_OPTIONS + 2];
    size_t i, ns = 0, n_opts = 0;
    int c, r, rc = 2;

    shortopts[ns++] = ':';
    for (i = 0; i < N_OPTIONS; i++) {
        longopts[i].name = serve_options[i].name;
        longopts[i].has_arg = serve_options[i].arg ? required_argument : no_argument;
        longopts[i].flag = NULL;
        longopts[i].val = serve_options[i].id;
        if (serve_options[i].id < 256) {
            shortopts[ns++] = (char) serve_options[i].id;
            if (serve_options[i].arg)
                shortopts[ns++] = ':';
        }
    }
    shortopts[ns] = '\0';
    memset(&longopts[N_OPTIONS], 0, sizeof(longopts[N_OPTIONS]));

    opts = calloc((size_t) argc + 1, sizeof(*opts));
    if (!opts) {
        fprintf(stderr, "vl2d: out of memory\n");
        return 1;
    }
    vl2_conf_init(&conf);
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, shortopts, longopts, NULL)) != -1) {
        if (c == '?' || c == ':') {
            const char *bad = argv[optind - 1];

            if (c == ':')
                fprintf(stderr, "vl2d: option '%s' needs an argument\n", bad);
            else
                fprintf(stderr, "vl2d: unknown option '%s'\n", bad);
            fprintf(stderr, "try 'vl2d serve --help'\n");
            goto out_free;
        }
        if (c == OPT_HELP) {
            usage(stdout);
            rc = 0;
            goto out_free;
        }
        opts[n_opts].id = c;
        opts[n_opts].arg = optarg;
        n_opts++;
    }
    if (optind < argc) {
        fprintf(stderr, "vl2d: unexpected argument '%s'\ntry 'vl2d serve --help'\n",
                argv[optind]);
        goto out_free;
    }
    if (read_config(&conf, opts, n_opts) < 0)
        goto out_free;
    if (conf.has_log_level)
        vl2_log_set_level(conf.log_level);
    for (i = 0; i < n_opts; i++) {
        r = apply_option(&conf, opts[i].id, opts[i].arg);
        if (r < 0)
            goto out_free;
    }
    if (vl2_engine_check_params(&conf.engine, &err) < 0) {
        fprintf(stderr, "vl2d: %s\n", err.msg);
        goto out_free;
    }

    rc = 1;
    factory.ud = &conf;
    conf.server.factory = &factory;
    reload.opts = opts;
    reload.n_opts = n_opts;
    reload.conf = &conf;
    conf.server.reload = on_reload;
    conf.server.reload_ud = &reload;
    /* model files are opened beneath their directory (weights.h) */
    vl2_file_set_beneath(true);
    r = vl2_server_new(&conf.server, &srv, &err);
    if (r < 0) {
        vl2_log(VL2_LOG_ERR, "%s", err.msg);
        goto out_free;
    }
    for (i = 0; i < conf.n_models; i++) {
        const struct vl2_conf_model *m = &conf.models[i];

        r = vl2_server_load_model(srv, m->name, m->dir, m->backend, &err);
        if (r < 0)
            vl2_log(VL2_LOG_ERR, "model '%s': %s", m->name, err.msg);
    }
    if (conf.n_models == 0)
        vl2_log(VL2_LOG_INFO, "no model configured: load one with 'vl2 load DIR' or start "
                "vl2d with --model DIR");
    r = vl2_server_run(srv, &err);
    if (r < 0)
        vl2_log(VL2_LOG_ERR, "%s", err.msg);
    vl2_server_free(srv);
    rc = r < 0 ? 1 : 0;
out_free:
    vl2_conf_done(&conf);
    free(opts);
    return rc;
}

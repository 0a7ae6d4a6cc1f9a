/* server.c - the loop: listening socket, signals, events from engines,
 * shutdown, systemd notifications. */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "server-impl.h"
#include "vl2-config.h"

#if VL2_HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

struct vl2_server_opts vl2_server_default_opts(void)
{
    struct vl2_server_opts o = {
        .socket_path = NULL,
        .system = false,
        .socket_mode = 0660,
        .socket_activation = true,
        .notify = true,
        .max_frame = VL2_IPC_MAX_FRAME_DEFAULT,
        .max_queued_bytes = 0,
        .max_connections = 256,
        .max_inflight_per_conn = 64,
        .n_allow_uids = 0,
        .n_allow_gids = 0,
        .shutdown_grace_s = 2.0,
        .factory = NULL,
        .max_models = 16,
        .handshake_timeout_s = 10.0,
        .frame_timeout_s = 30.0,
        .max_connections_per_uid = 64,
        .stop_timeout_s = 10.0,
    };
    return o;
}

static void notify(struct vl2_server *srv, const char *state)
{
#if VL2_HAVE_SYSTEMD
    if (srv->opts.notify) {
        int r = sd_notify(0, state);

        if (r < 0)
            vl2_log(VL2_LOG_WARN, "sd_notify: %s, ignoring", strerror(-r));
    }
#else
    (void) srv;
    (void) state;
#endif
}

void vl2__server_resident_memory(uint64_t *ret_bytes)
{
    unsigned long size = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "re");

    *ret_bytes = 0;
    if (!f)
        return;
    if (fscanf(f, "%lu %lu", &size, &resident) == 2)
        *ret_bytes = (uint64_t) resident * (uint64_t) sysconf(_SC_PAGESIZE);
    fclose(f);
}

/* ---- models ---------------------------------------------------------- */

size_t vl2__server_n_models(const struct vl2_server *srv)
{
    const struct vl2_srv_model *m;
    size_t n = 0;

    for (m = srv->models; m; m = m->next)
        n++;
    return n;
}

static struct vl2_srv_model *new_model(struct vl2_server *srv, const char *name,
                                       const char *dir, struct vl2_err *err)
{
    struct vl2_srv_model *m, *it;

    if (!name || !name[0]) {
        vl2_err_set(err, VL2_EINVAL, "server: a model needs a name");
        return NULL;
    }
    {
        const unsigned char *p;

        for (p = (const unsigned char *) name; *p; p++)
            if (*p < 0x20 || *p == 0x7f || *p == '/')
                break;
        if (*p || strlen(name) > 128) {
            vl2_err_set(err, VL2_EINVAL, "server: model name '%s': at most 128 bytes, no "
                        "control characters or '/'", name);
            return NULL;
        }
    }
    for (it = srv->models; it; it = it->next)
        if (!strcmp(it->name, name)) {
            vl2_err_set(err, VL2_EINVAL, "server: model '%s' is already served", name);
            return NULL;
        }
    if (srv->opts.max_models && vl2__server_n_models(srv) >= srv->opts.max_models) {
        vl2_err_set(err, VL2_ELIMIT, "server: %zu models are served, the limit",
                    vl2__server_n_models(srv));
        return NULL;
    }
    m = calloc(1, sizeof(*m));
    if (!m) {
        vl2_err_set(err, VL2_ENOMEM, "server: out of memory");
        return NULL;
    }
    m->name = strdup(name);
    m->dir = strdup(dir ? dir : "");
    if (!m->name || !m->dir) {
        free(m->name);
        free(m->dir);
        free(m);
        vl2_err_set(err, VL2_ENOMEM, "server: out of memory");
        return NULL;
    }
    return m;
}

/* ---- who may load what ------------------------------------------------ */

static void free_roots(struct vl2_server *srv)
{
    size_t i;

    for (i = 0; i < srv->n_roots; i++)
        free(srv->roots[i]);
    srv->n_roots = 0;
}

static int set_roots(struct vl2_server *srv, const char *const *roots, size_t n,
                     struct vl2_err *err)
{
    char *res[VL2_SERVER_MAX_ROOTS];
    size_t i, k;

    if (n > VL2_SERVER_MAX_ROOTS)
        return vl2_err_set(err, VL2_ELIMIT, "server: %zu model roots, at most %d", n,
                           VL2_SERVER_MAX_ROOTS);
    for (i = 0; i < n; i++) {
        res[i] = realpath(roots[i], NULL);
        if (!res[i]) {
            int e = errno;

            for (k = 0; k < i; k++)
                free(res[k]);
            return vl2_err_set(err, e == ENOENT ? VL2_ENOTFOUND : VL2_EIO,
                               "server: model root '%s': %s", roots[i], strerror(e));
        }
    }
    free_roots(srv);
    for (i = 0; i < n; i++)
        srv->roots[i] = res[i];
    srv->n_roots = n;
    return 0;
}

int vl2_server_set_policy(struct vl2_server *srv, const gid_t *admin_gids, size_t n_admin,
                          const char *const *roots, size_t n_roots, struct vl2_err *err)
{
    int r;

    if (n_admin > VL2_SERVER_MAX_ALLOW)
        return vl2_err_set(err, VL2_ELIMIT, "server: %zu admin groups, at most %d", n_admin,
                           VL2_SERVER_MAX_ALLOW);
    r = set_roots(srv, roots, n_roots, err);
    if (r < 0)
        return r;
    memcpy(srv->opts.admin_gids, admin_gids, n_admin * sizeof(*admin_gids));
    srv->opts.n_admin_gids = n_admin;
    return 0;
}

char *vl2__server_check_dir(struct vl2_server *srv, const char *dir, struct vl2_err *err)
{
    char *res;
    size_t i;

    res = realpath(dir, NULL);
    if (srv->n_roots == 0) {
        if (!res)
            vl2_err_set(err, errno == ENOENT ? VL2_ENOTFOUND : VL2_EIO,
                        "server: load: '%s': %s", dir, strerror(errno));
        return res;
    }
    for (i = 0; res && i < srv->n_roots; i++) {
        size_t n = strlen(srv->roots[i]);

        if (!strncmp(res, srv->roots[i], n) && (res[n] == '/' || (n == 1 && res[1])))
            return res;
    }
    free(res);
    /* one answer whether the directory exists or not */
    vl2_err_set(err, VL2_EPERM, "server: load: '%s' is not beneath a model root of this "
                "daemon (--model-root)", dir);
    return NULL;
}

bool vl2_server_has_model(const struct vl2_server *srv, const char *name)
{
    const struct vl2_srv_model *m;

    for (m = srv->models; m; m = m->next)
        if (!strcmp(m->name, name))
            return true;
    return false;
}

int vl2_server_unload_model(struct vl2_server *srv, const char *name, struct vl2_err *err)
{
    struct vl2_srv_model *m;
    char msg[200];

    for (m = srv->models; m; m = m->next)
        if (!strcmp(m->name, name) && !m->unloading)
            break;
    if (!m)
        return vl2_err_set(err, VL2_ENOTFOUND, "server: unload: model '%s' is not loaded",
                           name);
    snprintf(msg, sizeof(msg), "server: model '%s' was unloaded", m->name);
    vl2__server_unload(srv, m, msg, false);
    return 0;
}

static void append_model(struct vl2_server *srv, struct vl2_srv_model *m)
{
    struct vl2_srv_model **tail;

    for (tail = &srv->models; *tail; tail = &(*tail)->next)
        ;
    *tail = m;
}

int vl2_server_attach_model(struct vl2_server *srv, const char *name, const char *dir,
                            const struct vl2_engine_ops *ops, void *engine,
                            struct vl2_err *err)
{
    struct vl2_srv_model *m;

    if (!name || !name[0])
        return vl2_err_set(err, VL2_EINVAL, "server: a model needs a name");
    if (!ops || !ops->submit || !ops->cancel || !ops->free)
        return vl2_err_set(err, VL2_EINVAL, "server: model '%s': incomplete engine", name);
    m = new_model(srv, name, dir, err);
    if (!m)
        return err ? err->code : VL2_EINVAL;
    m->ops = ops;
    m->engine = engine;
    append_model(srv, m);
    return 0;
}

static void post_event(void *ud, struct vl2_event *ev)
{
    vl2_server_post(ud, ev);
}

void vl2__base_name(const char *dir, char *buf, size_t size)
{
    size_t n = strlen(dir);
    const char *p;

    while (n > 1 && dir[n - 1] == '/')
        n--;
    for (p = dir + n; p > dir && p[-1] != '/'; p--)
        ;
    snprintf(buf, size, "%.*s", (int) (dir + n - p), p);
}

int vl2__server_load(struct vl2_server *srv, const char *name, const char *dir,
                     const char *backend, bool progress, struct vl2_srv_model **ret_model,
                     struct vl2_err *err)
{
    struct vl2_engine_spec spec = { 0 };
    struct vl2_srv_model *m;
    char base[256];
    int r;

    if (!srv->opts.factory || !srv->opts.factory->create)
        return vl2_err_set(err, VL2_EUNIMPLEMENTED, "server: this daemon cannot load models");
    if (!dir || !dir[0])
        return vl2_err_set(err, VL2_EINVAL, "server: load: no model directory given");
    if (!name || !name[0]) {
        vl2__base_name(dir, base, sizeof(base));
        name = base;
    }
    if (!name[0] || !strcmp(name, "/") || !strcmp(name, ".") || !strcmp(name, ".."))
        return vl2_err_set(err, VL2_EINVAL, "server: load: cannot name a model after '%s'; "
                           "give a name", dir);
    m = new_model(srv, name, dir, err);
    if (!m)
        return err ? err->code : VL2_EINVAL;
    m->load_key = srv->next_key++;
    m->loading = true;
    spec.name = m->name;
    spec.dir = m->dir;
    spec.backend = backend;
    spec.load_key = m->load_key;
    spec.progress = progress;
    spec.post = post_event;
    spec.post_ud = srv;
    r = srv->opts.factory->create(srv->opts.factory->ud, &spec, &m->ops, &m->engine, err);
    if (r < 0) {
        free(m->name);
        free(m->dir);
        free(m);
        return r;
    }
    append_model(srv, m);
    vl2_log(VL2_LOG_INFO, "model '%s': loading '%s'", m->name, m->dir);
    if (ret_model)
        *ret_model = m;
    return 0;
}

int vl2_server_load_model(struct vl2_server *srv, const char *name, const char *dir,
                          const char *backend, struct vl2_err *err)
{
    struct vl2_srv_model *m = NULL;
    int r;

    r = vl2__server_load(srv, name, dir, backend, false, &m, err);
    if (r < 0)
        return r;
    m->initial = !srv->running;
    return 0;
}

struct vl2_srv_model *vl2__server_model_by_load_key(struct vl2_server *srv, uint64_t key)
{
    struct vl2_srv_model *m;

    if (key == 0)
        return NULL;
    for (m = srv->models; m; m = m->next)
        if (m->load_key == key)
            return m;
    return NULL;
}

static void free_model(struct vl2_srv_model *m)
{
    m->ops->free(m->engine);
    free(m->name);
    free(m->dir);
    free(m);
}

void vl2__server_drop_model(struct vl2_server *srv, struct vl2_srv_model *m)
{
    struct vl2_srv_model **pp;

    for (pp = &srv->models; *pp; pp = &(*pp)->next)
        if (*pp == m) {
            *pp = m->next;
            break;
        }
    m->next = NULL;
    free_model(m);
}

void vl2__server_unload(struct vl2_server *srv, struct vl2_srv_model *m, const char *why,
                        bool now)
{
    struct vl2_conn *c;
    bool was_initial = m->initial && m->loading;
    bool stops = m->ops->stop && !now;

    /* every request on this model ends now, for its client; Tokenize
     * requests get their answer when the engine stops (before UNLOADED) */
    for (c = srv->conns; c; c = c->next) {
        struct vl2_inflight *inf, *next;

        for (inf = c->inflight; inf; inf = next) {
            next = inf->next;
            if (inf->model != m || (inf->tokenize && stops))
                continue;
            vl2__inflight_unlink(c, inf);
            if (!inf->load)
                m->ops->cancel(m->engine, inf->key);
            vl2__conn_send_error(c, inf->request_id, VL2_ECANCELED, why, false);
            vl2__inflight_free(inf);
            if (c->closing)
                break;  /* its other requests were aborted with it */
        }
    }
    m->unloading = true;
    m->initial = false;
    vl2_log(VL2_LOG_INFO, "model '%s': unloading", m->name);
    if (stops)
        m->ops->stop(m->engine);
    else
        vl2__server_drop_model(srv, m);
    if (was_initial)
        vl2__server_model_settled(srv);
}

static void free_models(struct vl2_server *srv)
{
    struct vl2_srv_model *m, *next;

    for (m = srv->models; m; m = next) {
        next = m->next;
        free_model(m);
    }
    srv->models = NULL;
}

/* ---- events from other threads --------------------------------------- */

void vl2_server_post(struct vl2_server *srv, struct vl2_event *ev)
{
    if (!ev)
        return;
    pthread_mutex_lock(&srv->lock);
    ev->next = srv->events;
    srv->events = ev;
    pthread_mutex_unlock(&srv->lock);
    uv_async_send(&srv->wake);
}

void vl2_server_stop(struct vl2_server *srv)
{
    pthread_mutex_lock(&srv->lock);
    srv->stop_requested = true;
    pthread_mutex_unlock(&srv->lock);
    uv_async_send(&srv->wake);
}

/* Take the queued events, oldest first. */
static struct vl2_event *take_events(struct vl2_server *srv, bool *ret_stop)
{
    struct vl2_event *list, *rev = NULL;

    pthread_mutex_lock(&srv->lock);
    list = srv->events;
    srv->events = NULL;
    *ret_stop = srv->stop_requested;
    pthread_mutex_unlock(&srv->lock);
    while (list) {
        struct vl2_event *next = list->next;

        list->next = rev;
        rev = list;
        list = next;
    }
    return rev;
}

static void begin_shutdown(struct vl2_server *srv, const char *why);

static void on_wake(uv_async_t *h)
{
    struct vl2_server *srv = h->data;
    struct vl2_event *ev, *next;
    bool stop;

    ev = take_events(srv, &stop);
    for (; ev; ev = next) {
        next = ev->next;
        if (!srv->stopping)
            vl2__dispatch_event(srv, ev);
        vl2_event_free(ev);
    }
    if (stop)
        begin_shutdown(srv, "stop requested");
}

/* ---- listening ------------------------------------------------------- */

static void on_listen(uv_poll_t *h, int status, int events)
{
    struct vl2_server *srv = h->data;

    if (status < 0) {
        vl2_log(VL2_LOG_ERR, "listening socket: %s", uv_strerror(status));
        return;
    }
    if (events & UV_READABLE)
        vl2__conn_accept(srv);
}

/* ---- shutdown -------------------------------------------------------- */

static void on_closed_quietly(uv_handle_t *h)
{
    (void) h;
}

static void maybe_finish(struct vl2_server *srv)
{
    if (!srv->stopping || srv->conns)
        return;
    if (!uv_is_closing((uv_handle_t *) &srv->grace))
        uv_close((uv_handle_t *) &srv->grace, on_closed_quietly);
    if (!uv_is_closing((uv_handle_t *) &srv->wake))
        uv_close((uv_handle_t *) &srv->wake, on_closed_quietly);
    if (!uv_is_closing((uv_handle_t *) &srv->accept_retry))
        uv_close((uv_handle_t *) &srv->accept_retry, on_closed_quietly);
}

static void on_grace_expired(uv_timer_t *t)
{
    struct vl2_server *srv = t->data;
    struct vl2_conn *c, *next;

    vl2_log(VL2_LOG_WARN, "%u client(s) did not read their last responses in time; "
            "closing", srv->n_conns);
    for (c = srv->conns; c; c = next) {
        next = c->next;
        vl2__conn_close(c);
    }
}

/* Called from conn.c when a connection is gone, so that shutdown can end. */
void vl2__server_conn_gone(struct vl2_server *srv);
void vl2__server_conn_gone(struct vl2_server *srv)
{
    maybe_finish(srv);
}

/* The hard deadline of a shutdown: whatever still runs (an engine thread
 * in a long step, a descriptor that never ends) cannot keep the daemon past
 * it.  The kernel releases the lock file's flock with the process. */
static void *watchdog_main(void *arg)
{
    double s = *(const double *) arg;
    struct timespec ts;

    free(arg);   /* our copy: the server may be gone before we wake */
    ts.tv_sec = (time_t) s;
    ts.tv_nsec = (long) ((s - (double) ts.tv_sec) * 1e9);
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
    vl2_log(VL2_LOG_ERR, "did not stop within %g s; exiting now", s);
    _exit(1);
    return NULL;
}

static void start_watchdog(struct vl2_server *srv)
{
    pthread_attr_t a;
    pthread_t t;
    double *s;

    if (srv->opts.stop_timeout_s <= 0)
        return;
    s = malloc(sizeof(*s));
    if (!s) {
        vl2_log(VL2_LOG_WARN, "cannot start the shutdown watchdog: out of memory");
        return;
    }
    *s = srv->opts.stop_timeout_s;
    pthread_attr_init(&a);
    pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
    if (pthread_create(&t, &a, watchdog_main, s) != 0) {
        free(s);
        vl2_log(VL2_LOG_WARN, "cannot start the shutdown watchdog");
    }
    pthread_attr_destroy(&a);
}

static void close_signal(uv_signal_t *h)
{
    if (!uv_is_closing((uv_handle_t *) h))
        uv_close((uv_handle_t *) h, on_closed_quietly);
}

static void begin_shutdown(struct vl2_server *srv, const char *why)
{
    struct vl2_conn *c, *next;

    if (srv->stopping)
        return;
    srv->stopping = true;
    vl2_log(VL2_LOG_INFO, "stopping (%s)", why);
    start_watchdog(srv);
    notify(srv, "STOPPING=1");
    if (srv->listen_poll_init && !uv_is_closing((uv_handle_t *) &srv->listen_poll))
        uv_close((uv_handle_t *) &srv->listen_poll, on_closed_quietly);
    close_signal(&srv->sigterm);
    close_signal(&srv->sigint);
    /* SIGHUP and SIGUSR1/2 keep their handlers (closing the last one would
     * give the signal its default action again: death) but no longer keep
     * the loop alive */
    uv_unref((uv_handle_t *) &srv->sighup);
    uv_unref((uv_handle_t *) &srv->sigusr1);
    uv_unref((uv_handle_t *) &srv->sigusr2);
    /* The socket file goes first, so that no new client finds it; the lock
     * beside it stays taken until the process ends, so that no second
     * daemon starts while this one still winds down. */
    vl2__server_unlisten_socket(srv);
    for (c = srv->conns; c; c = next) {
        next = c->next;
        vl2__dispatch_abort_inflight(c, VL2_ECANCELED, "server: vl2d is shutting down", true);
        vl2__conn_finish(c);
    }
    uv_timer_start(&srv->grace, on_grace_expired,
                   (uint64_t) (srv->opts.shutdown_grace_s * 1000.0), 0);
    uv_unref((uv_handle_t *) &srv->grace);
    maybe_finish(srv);
}

/* SIGUSR1: one line per model and the budgets, to the log. */
static void dump_status(struct vl2_server *srv)
{
    struct vl2_srv_model *m;
    uint64_t rss;

    vl2__server_resident_memory(&rss);
    vl2_log(VL2_LOG_INFO, "status: %u connections, %zu request bytes in flight, %zu bytes "
            "and %zu descriptors in unfinished frames, %zu response bytes queued, RSS %llu",
            srv->n_conns, srv->request_bytes, srv->partial_bytes, srv->partial_fds,
            srv->queued_bytes, (unsigned long long) rss);
    for (m = srv->models; m; m = m->next) {
        struct vl2_engine_stats st = { 0 };

        if (m->ops->stats)
            m->ops->stats(m->engine, &st);
        vl2_log(VL2_LOG_INFO, "status: model '%s' (%s): %s, %u active, %u queued", m->name,
                m->dir, m->unloading ? "unloading" : m->loading ? "loading"
                : m->failed ? "failed" : "ready", st.active_sequences, st.queue_length);
    }
}

static void on_signal(uv_signal_t *h, int signum)
{
    struct vl2_server *srv = h->data;

    switch (signum) {
    case SIGHUP:
        if (srv->stopping)
            return;
        if (!srv->opts.reload) {
            vl2_log(VL2_LOG_INFO, "SIGHUP: nothing to reload");
            return;
        }
        vl2_log(VL2_LOG_INFO, "SIGHUP: reloading the configuration");
        srv->opts.reload(srv->opts.reload_ud, srv);
        return;
    case SIGUSR1:
        dump_status(srv);
        return;
    case SIGUSR2:
        vl2_log(VL2_LOG_DEBUG, "SIGUSR2 ignored");
        return;
    default:
        begin_shutdown(srv, signum == SIGTERM ? "SIGTERM" : "SIGINT");
    }
}

/* Raise the soft limit on open files to the hard one (each connection and
 * each image descriptor in flight is one).  Returns the soft limit. */
static rlim_t raise_nofile(void)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return 1024;
    if (rl.rlim_cur < rl.rlim_max) {
        rlim_t old = rl.rlim_cur;

        rl.rlim_cur = rl.rlim_max;
        if (rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur > (1u << 20))
            rl.rlim_cur = 1u << 20;
        if (rl.rlim_cur > old && setrlimit(RLIMIT_NOFILE, &rl) == 0)
            vl2_log(VL2_LOG_DEBUG, "open files: soft limit raised from %llu to %llu",
                    (unsigned long long) old, (unsigned long long) rl.rlim_cur);
        else
            rl.rlim_cur = old;
    }
    return rl.rlim_cur;
}

/* ---- life cycle ------------------------------------------------------ */

int vl2_server_new(const struct vl2_server_opts *o, struct vl2_server **ret_srv,
                   struct vl2_err *err)
{
    struct vl2_server *srv;
    int r;

    srv = calloc(1, sizeof(*srv));
    if (!srv)
        return vl2_err_set(err, VL2_ENOMEM, "server: out of memory");
    srv->opts = *o;
    srv->listen_fd = -1;
    srv->lock_fd = -1;
    if (srv->opts.max_frame == 0 || srv->opts.max_frame > VL2_IPC_MAX_FRAME_LIMIT)
        srv->opts.max_frame = srv->opts.max_frame ? VL2_IPC_MAX_FRAME_LIMIT
                                                  : VL2_IPC_MAX_FRAME_DEFAULT;
    if (srv->opts.max_queued_bytes == 0)
        srv->opts.max_queued_bytes = 2 * (size_t) srv->opts.max_frame + (1u << 20);
    {
        size_t four = 4 * (size_t) srv->opts.max_frame;
        rlim_t nofile = raise_nofile();

        if (four < (256u << 20))
            four = 256u << 20;
        if (srv->opts.max_partial_bytes == 0)
            srv->opts.max_partial_bytes = four;
        if (srv->opts.max_request_bytes_total == 0)
            srv->opts.max_request_bytes_total = four;
        if (srv->opts.max_request_bytes_per_conn == 0)
            srv->opts.max_request_bytes_per_conn = (size_t) srv->opts.max_frame + (16u << 20);
        if (srv->opts.max_partial_fds == 0)
            srv->opts.max_partial_fds = nofile / 4 > 64 ? (unsigned) (nofile / 4) : 64;
        if (srv->opts.max_prompt_bytes == 0)
            srv->opts.max_prompt_bytes = 1u << 20;
    }
    r = set_roots(srv, o->model_roots, o->n_model_roots, err);
    if (r < 0) {
        free(srv);
        return r;
    }
    memset(srv->opts.model_roots, 0, sizeof(srv->opts.model_roots));
    srv->opts.n_model_roots = 0;
    if (srv->opts.n_allow_uids == 0) {
        srv->opts.allow_uids[srv->opts.n_allow_uids++] = geteuid();
        if (geteuid() != 0)
            srv->opts.allow_uids[srv->opts.n_allow_uids++] = 0;
    }
    srv->opts.socket_path = NULL;  /* the caller's string; ours is srv->socket_path */
    srv->next_conn_id = 1;
    srv->next_key = 1;
    pthread_mutex_init(&srv->lock, NULL);
    signal(SIGPIPE, SIG_IGN);

    r = uv_loop_init(&srv->loop);
    if (r < 0) {
        vl2_err_set(err, VL2_EIO, "server: cannot start the event loop: %s", uv_strerror(r));
        goto out_free;
    }
    srv->loop_init = true;
    srv->opts.socket_path = o->socket_path;
    r = vl2__server_listen(srv, err);
    srv->opts.socket_path = NULL;
    if (r < 0)
        goto out_free;
    uv_async_init(&srv->loop, &srv->wake, on_wake);
    srv->wake.data = srv;
    uv_signal_init(&srv->loop, &srv->sigterm);
    srv->sigterm.data = srv;
    uv_signal_init(&srv->loop, &srv->sigint);
    srv->sigint.data = srv;
    uv_signal_init(&srv->loop, &srv->sighup);
    srv->sighup.data = srv;
    uv_signal_init(&srv->loop, &srv->sigusr1);
    srv->sigusr1.data = srv;
    uv_signal_init(&srv->loop, &srv->sigusr2);
    srv->sigusr2.data = srv;
    uv_timer_init(&srv->loop, &srv->grace);
    srv->grace.data = srv;
    uv_timer_init(&srv->loop, &srv->accept_retry);
    srv->accept_retry.data = srv;
    srv->handles_init = true;
    r = uv_poll_init(&srv->loop, &srv->listen_poll, srv->listen_fd);
    if (r < 0) {
        vl2_err_set(err, VL2_EIO, "server: cannot watch the socket: %s", uv_strerror(r));
        goto out_free;
    }
    srv->listen_poll.data = srv;
    srv->listen_poll_init = true;
    *ret_srv = srv;
    return 0;

out_free:
    vl2_server_free(srv);
    return err ? err->code : VL2_EIO;
}

void vl2__server_model_settled(struct vl2_server *srv)
{
    const struct vl2_srv_model *m;
    char ready[160];

    if (!srv->running || srv->ready_sent || srv->stopping)
        return;
    for (m = srv->models; m; m = m->next)
        if (m->initial && m->loading)
            return;
    srv->ready_sent = true;
    snprintf(ready, sizeof(ready), "READY=1\nSTATUS=serving %s", srv->socket_path);
    notify(srv, ready);
}

int vl2_server_run(struct vl2_server *srv, struct vl2_err *err)
{
    int r;

    r = uv_signal_start(&srv->sigterm, on_signal, SIGTERM);
    if (r == 0)
        r = uv_signal_start(&srv->sigint, on_signal, SIGINT);
    if (r == 0)
        r = uv_signal_start(&srv->sighup, on_signal, SIGHUP);
    if (r == 0)
        r = uv_signal_start(&srv->sigusr1, on_signal, SIGUSR1);
    if (r == 0)
        r = uv_signal_start(&srv->sigusr2, on_signal, SIGUSR2);
    if (r == 0)
        r = uv_poll_start(&srv->listen_poll, UV_READABLE, on_listen);
    if (r < 0)
        return vl2_err_set(err, VL2_EIO, "server: cannot start serving: %s", uv_strerror(r));
    srv->started_ns = uv_hrtime();
    srv->running = true;
    vl2_log(VL2_LOG_INFO, "listening on '%s'%s (protocol %u, pid %ld)",
            srv->socket_path, srv->activated ? " (from systemd)" : "",
            VL2_IPC_PROTOCOL_VERSION, (long) getpid());
    /* READY=1 once the models of the configuration are loaded (or failed) */
    vl2__server_model_settled(srv);
    uv_run(&srv->loop, UV_RUN_DEFAULT);
    /* close what is left (handles closed during shutdown need one more turn) */
    uv_run(&srv->loop, UV_RUN_NOWAIT);
    vl2_log(VL2_LOG_INFO, "stopped");
    return 0;
}

static void close_any(uv_handle_t *h, void *arg)
{
    (void) arg;
    if (!uv_is_closing(h))
        uv_close(h, on_closed_quietly);
}

void vl2_server_free(struct vl2_server *srv)
{
    struct vl2_event *ev, *next;
    bool stop;

    if (!srv)
        return;
    /* from here on no handler is left for them: never die of them */
    signal(SIGHUP, SIG_IGN);
    signal(SIGUSR1, SIG_IGN);
    signal(SIGUSR2, SIG_IGN);
    /* Connections first (their jobs are cancelled), then the engines: after
     * free() they post nothing more. */
    if (srv->loop_init) {
        struct vl2_conn *c, *cn;

        for (c = srv->conns; c; c = cn) {
            cn = c->next;
            vl2__conn_close(c);
        }
    }
    free_models(srv);
    if (srv->loop_init) {
        uv_walk(&srv->loop, close_any, NULL);
        uv_run(&srv->loop, UV_RUN_DEFAULT);
        if (uv_loop_close(&srv->loop) != 0)
            vl2_log(VL2_LOG_WARN, "event loop still busy at exit");
    }
    vl2__server_unlisten(srv);
    ev = take_events(srv, &stop);
    for (; ev; ev = next) {
        next = ev->next;
        vl2_event_free(ev);
    }
    pthread_mutex_destroy(&srv->lock);
    free_roots(srv);
    free(srv);
}

const char *vl2_server_socket_path(const struct vl2_server *srv)
{
    return srv->socket_path;
}

bool vl2_server_socket_activated(const struct vl2_server *srv)
{
    return srv->activated;
}

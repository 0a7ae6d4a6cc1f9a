/* client.c - libvl2: connect to vl2d, send requests, receive responses. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "ipc.h"
#include "vl2.h"

struct vl2_client {
    int fd;
    char path[sizeof(((struct sockaddr_un *) 0)->sun_path)];
    int timeout_ms;
    uint64_t next_id;
    struct vl2_ipc_reader reader;
    struct vl2_ipc_writer writer;
    Vl2__Response *hello;          /* the HelloReply, kept whole */
    bool broken;                   /* the daemon closed or the stream is bad */
};

struct vl2_client_opts vl2_client_default_opts(void)
{
    struct vl2_client_opts o = {
        .socket_path = NULL,
        .timeout_ms = 30000,
        .connect_timeout_ms = 10000,
        .client_name = "libvl2 " VL2_VERSION,
    };
    return o;
}

static bool is_socket(const char *path)
{
    struct stat st;

    return stat(path, &st) == 0 && S_ISSOCK(st.st_mode);
}

int vl2_client_socket_path(const char *explicit_path, char *buf, size_t size,
                           struct vl2_err *err)
{
    const char *env = getenv("VL2_SOCKET");
    char user[256];
    bool have_user;
    int n;

    if (explicit_path && explicit_path[0])
        n = snprintf(buf, size, "%s", explicit_path);
    else if (env && env[0])
        n = snprintf(buf, size, "%s", env);
    else {
        have_user = vl2_ipc_default_socket(false, user, sizeof(user), NULL) == 0;
        if (have_user && is_socket(user))
            n = snprintf(buf, size, "%s", user);
        else if (is_socket(VL2_IPC_SYSTEM_SOCKET) || !have_user)
            n = snprintf(buf, size, "%s", VL2_IPC_SYSTEM_SOCKET);
        else
            n = snprintf(buf, size, "%s", user);
    }
    if (n < 0 || (size_t) n >= size)
        return vl2_err_set(err, VL2_ELIMIT, "vl2: socket path is too long");
    return 0;
}

/* ---- time ------------------------------------------------------------ */

static int64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Milliseconds left until @deadline (-1: none) for poll(). */
static int left_ms(int64_t deadline)
{
    int64_t left;

    if (deadline < 0)
        return -1;
    left = deadline - now_ms();
    if (left < 0)
        return 0;
    return left > 0x7fffffff ? 0x7fffffff : (int) left;
}

static int64_t deadline_in(int timeout_ms)
{
    return timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
}

/* Wait for @events on @fd.  Returns 1 ready, 0 timed out, VL2_EIO. */
static int wait_fd(int fd, short events, int64_t deadline, struct vl2_err *err)
{
    for (;;) {
        struct pollfd p = { .fd = fd, .events = events };
        int r = poll(&p, 1, left_ms(deadline));

        if (r > 0)
            return 1;
        if (r == 0)
            return 0;
        if (errno != EINTR)
            return vl2_err_set(err, VL2_EIO, "vl2: poll: %s", strerror(errno));
    }
}

/* ---- frames ---------------------------------------------------------- */

static int flush_all(struct vl2_client *c, int64_t deadline, struct vl2_err *err)
{
    for (;;) {
        int r = vl2_ipc_writer_flush(&c->writer, c->fd, err);

        if (r != 0)
            return r < 0 ? r : 0;
        r = wait_fd(c->fd, POLLOUT, deadline, err);
        if (r < 0)
            return r;
        if (r == 0)
            return vl2_err_set(err, VL2_ETIMEDOUT,
                               "vl2: timed out sending a request to vl2d at '%s'", c->path);
    }
}

/* Receive one response.  *@ret_resp: free with vl2__response__free_unpacked. */
static int recv_response(struct vl2_client *c, int64_t deadline, Vl2__Response **ret_resp,
                         struct vl2_err *err)
{
    for (;;) {
        struct vl2_ipc_frame f = { 0 };
        Vl2__Response *resp;
        int r = vl2_ipc_reader_read(&c->reader, c->fd, err);

        if (r == VL2_IPC_FRAME) {
            vl2_ipc_reader_take(&c->reader, &f);
            resp = vl2_ipc_response_decode(f.payload, f.size, err);
            vl2_ipc_frame_done(&f);   /* responses carry no descriptors we use */
            if (!resp) {
                c->broken = true;
                return err ? err->code : VL2_EFORMAT;
            }
            *ret_resp = resp;
            return 0;
        }
        if (r == VL2_IPC_EOF) {
            c->broken = true;
            return vl2_err_set(err, VL2_EIO, "vl2: vl2d at '%s' closed the connection",
                               c->path);
        }
        if (r < 0) {
            c->broken = true;
            return r;
        }
        r = wait_fd(c->fd, POLLIN, deadline, err);
        if (r < 0)
            return r;
        if (r == 0)
            return vl2_err_set(err, VL2_ETIMEDOUT, "vl2: no response from vl2d at '%s' "
                               "within %d ms", c->path, c->timeout_ms);
    }
}

/* An Error response as a return code and message. */
static int error_reply(const Vl2__Response *resp, struct vl2_err *err)
{
    const Vl2__Error *e = resp->error;
    int code = (e && e->has_code && e->code < 0) ? e->code : VL2_EINTERNAL;

    return vl2_err_set(err, code, "vl2d: %s", e && e->message && e->message[0]
                       ? e->message : vl2_status_name(code));
}

bool vl2_response_is_final(const Vl2__Response *resp)
{
    return resp->body_case != VL2__RESPONSE__BODY_ACCEPTED &&
           resp->body_case != VL2__RESPONSE__BODY_PROGRESS &&
           resp->body_case != VL2__RESPONSE__BODY_TOKEN;
}

/* After a failed send: the daemon may have closed with an explanation (a
 * refused peer).  Returns its code, or 0 when there is none. */
static int read_parting_error(struct vl2_client *c, struct vl2_err *err)
{
    int i;

    for (i = 0; i < 4; i++) {
        Vl2__Response *resp = NULL;
        int r;

        if (recv_response(c, deadline_in(1000), &resp, NULL) < 0)
            return 0;
        if (resp->body_case == VL2__RESPONSE__BODY_ERROR && resp->id == 0) {
            r = error_reply(resp, err);
            vl2__response__free_unpacked(resp, NULL);
            return r;
        }
        vl2__response__free_unpacked(resp, NULL);
    }
    return 0;
}

/* ---- requests -------------------------------------------------------- */

int vl2_client_send(struct vl2_client *c, Vl2__Request *req, const int *fds, size_t n_fds,
                    uint64_t *ret_id, struct vl2_err *err)
{
    uint64_t id;
    int r;

    if (c->broken)
        return vl2_err_set(err, VL2_EIO, "vl2: the connection to vl2d at '%s' is closed",
                           c->path);
    id = c->next_id++;
    req->has_id = 1;
    req->id = id;
    r = vl2_ipc_writer_queue_msg(&c->writer, &req->base, fds, n_fds, err);
    if (r < 0)
        return r;
    r = flush_all(c, deadline_in(c->timeout_ms), err);
    if (r < 0) {
        int why;

        c->broken = true;
        why = read_parting_error(c, err);
        return why < 0 ? why : r;
    }
    *ret_id = id;
    return 0;
}

int vl2_client_wait(struct vl2_client *c, uint64_t id, vl2_response_fn fn, void *userdata,
                    struct vl2_err *err)
{
    for (;;) {
        Vl2__Response *resp = NULL;
        int r, stop = 0;
        bool mine, final, parting;

        r = recv_response(c, deadline_in(c->timeout_ms), &resp, err);
        if (r < 0)
            return r;
        mine = resp->has_id && resp->id == id;
        final = vl2_response_is_final(resp);
        parting = resp->id == 0 && resp->body_case == VL2__RESPONSE__BODY_ERROR;
        if (fn)
            stop = fn(resp, userdata);
        if (parting || (mine && final)) {
            r = resp->body_case == VL2__RESPONSE__BODY_ERROR ? error_reply(resp, err) : 0;
            if (parting)
                c->broken = true;
            vl2__response__free_unpacked(resp, NULL);
            return stop ? stop : r;
        }
        vl2__response__free_unpacked(resp, NULL);
        if (stop)
            return stop;
    }
}

int vl2_client_recv(struct vl2_client *c, vl2_response_fn fn, void *userdata,
                    struct vl2_err *err)
{
    Vl2__Response *resp = NULL;
    int r;

    r = recv_response(c, deadline_in(c->timeout_ms), &resp, err);
    if (r < 0)
        return r;
    if (fn)
        (void) fn(resp, userdata);
    if (resp->id == 0 && resp->body_case == VL2__RESPONSE__BODY_ERROR) {
        c->broken = true;
        r = error_reply(resp, err);
    } else {
        r = vl2_response_is_final(resp) ? 1 : 0;
    }
    vl2__response__free_unpacked(resp, NULL);
    return r;
}

int vl2_client_fd(const struct vl2_client *c)
{
    return c->fd;
}

int vl2_client_call(struct vl2_client *c, Vl2__Request *req, const int *fds, size_t n_fds,
                    vl2_response_fn fn, void *userdata, struct vl2_err *err)
{
    uint64_t id = 0;
    int r;

    r = vl2_client_send(c, req, fds, n_fds, &id, err);
    if (r < 0)
        return r;
    return vl2_client_wait(c, id, fn, userdata, err);
}

/* ---- connection ------------------------------------------------------ */

static const char *start_hint(const char *path)
{
    if (!strcmp(path, VL2_IPC_SYSTEM_SOCKET))
        return "is the service running? start it with 'systemctl start vl2d.socket' "
               "(or run 'vl2d --system' as root)";
    {
        char user[256];

        if (vl2_ipc_default_socket(false, user, sizeof(user), NULL) == 0 &&
            !strcmp(path, user))
            return "is the daemon running? start it with 'vl2d &' or "
                   "'systemctl --user start vl2d.socket'";
    }
    return NULL;
}

static int connect_socket(struct vl2_client *c, int timeout_ms, struct vl2_err *err)
{
    struct sockaddr_un sa;
    int len, r, e;
    socklen_t elen = sizeof(e);

    len = vl2_ipc_sockaddr(c->path, &sa, err);
    if (len < 0)
        return len;
    c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (c->fd < 0)
        return vl2_err_set(err, VL2_EIO, "vl2: socket: %s", strerror(errno));
    r = connect(c->fd, (const struct sockaddr *) &sa, (socklen_t) len);
    if (r < 0 && (errno == EAGAIN || errno == EINPROGRESS)) {
        r = wait_fd(c->fd, POLLOUT, deadline_in(timeout_ms), err);
        if (r < 0)
            return r;
        if (r == 0)
            return vl2_err_set(err, VL2_ETIMEDOUT, "vl2: timed out connecting to vl2d at "
                               "'%s' (the daemon is overloaded or stuck)", c->path);
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &e, &elen) < 0)
            e = errno;
        errno = e;
        r = e ? -1 : 0;
    }
    if (r < 0) {
        e = errno;
        if ((e == ENOENT || e == ECONNREFUSED || e == ENOTDIR) && start_hint(c->path))
            return vl2_err_set(err, VL2_ENOTFOUND, "vl2: cannot connect to vl2d at '%s': "
                               "%s; %s", c->path, strerror(e), start_hint(c->path));
        if (e == ENOENT || e == ECONNREFUSED || e == ENOTDIR)
            return vl2_err_set(err, VL2_ENOTFOUND, "vl2: cannot connect to vl2d at '%s': "
                               "%s; is the daemon running? start it with "
                               "'vl2d --socket %s &'", c->path, strerror(e), c->path);
        if (e == EACCES || e == EPERM)
            return vl2_err_set(err, VL2_EPERM, "vl2: cannot connect to vl2d at '%s': %s; "
                               "ask an administrator to add you to the 'vl2' group",
                               c->path, strerror(e));
        return vl2_err_set(err, VL2_EIO, "vl2: cannot connect to vl2d at '%s': %s",
                           c->path, strerror(e));
    }
    return 0;
}

static int say_hello(struct vl2_client *c, const char *name, int timeout_ms,
                     struct vl2_err *err)
{
    Vl2__Request req = VL2__REQUEST__INIT;
    Vl2__Hello h = VL2__HELLO__INIT;
    Vl2__Response *resp = NULL;
    int r, saved = c->timeout_ms;
    uint64_t id = 0;

    h.has_protocol_version = 1;
    h.protocol_version = VL2_IPC_PROTOCOL_VERSION;
    h.client_name = (char *) (name ? name : "");
    req.body_case = VL2__REQUEST__BODY_HELLO;
    req.hello = &h;
    c->timeout_ms = timeout_ms;
    r = vl2_client_send(c, &req, NULL, 0, &id, err);
    if (r < 0)
        goto out;
    for (;;) {
        r = recv_response(c, deadline_in(timeout_ms), &resp, err);
        if (r < 0)
            goto out;
        if (resp->body_case == VL2__RESPONSE__BODY_ERROR && (resp->id == id || resp->id == 0)) {
            r = error_reply(resp, err);
            c->broken = true;
            vl2__response__free_unpacked(resp, NULL);
            goto out;
        }
        if (resp->body_case == VL2__RESPONSE__BODY_HELLO && resp->id == id)
            break;
        vl2__response__free_unpacked(resp, NULL);
    }
    if (!resp->hello->has_protocol_version ||
        resp->hello->protocol_version != VL2_IPC_PROTOCOL_VERSION) {
        r = vl2_err_set(err, VL2_EPROTO, "vl2: vl2d at '%s' speaks protocol %u, this client "
                        "speaks %u", c->path, resp->hello->protocol_version,
                        VL2_IPC_PROTOCOL_VERSION);
        vl2__response__free_unpacked(resp, NULL);
        goto out;
    }
    c->hello = resp;
    /* requests may be as large as the daemon accepts */
    if (resp->hello->has_max_frame_size && resp->hello->max_frame_size > 0)
        c->writer.max_frame = resp->hello->max_frame_size;
    r = 0;
out:
    c->timeout_ms = saved;
    return r;
}

int vl2_client_open(const struct vl2_client_opts *opts, struct vl2_client **ret_client,
                    struct vl2_err *err)
{
    struct vl2_client_opts o = opts ? *opts : vl2_client_default_opts();
    struct vl2_client *c;
    int r;

    c = calloc(1, sizeof(*c));
    if (!c)
        return vl2_err_set(err, VL2_ENOMEM, "vl2: out of memory");
    c->fd = -1;
    c->timeout_ms = o.timeout_ms;
    c->next_id = 1;
    /* responses: the protocol's largest frame */
    vl2_ipc_reader_init(&c->reader, VL2_IPC_MAX_FRAME_LIMIT);
    vl2_ipc_writer_init(&c->writer, 0, VL2_IPC_MAX_FRAME_DEFAULT);
    r = vl2_client_socket_path(o.socket_path, c->path, sizeof(c->path), err);
    if (r < 0)
        goto out_free;
    r = connect_socket(c, o.connect_timeout_ms, err);
    if (r < 0)
        goto out_free;
    r = say_hello(c, o.client_name, o.connect_timeout_ms, err);
    if (r < 0)
        goto out_free;
    *ret_client = c;
    return 0;

out_free:
    vl2_client_close(c);
    return r;
}

void vl2_client_close(struct vl2_client *c)
{
    if (!c)
        return;
    if (c->fd >= 0)
        (void) close(c->fd);
    vl2_ipc_reader_done(&c->reader);
    vl2_ipc_writer_done(&c->writer);
    if (c->hello)
        vl2__response__free_unpacked(c->hello, NULL);
    free(c);
}

const Vl2__HelloReply *vl2_client_hello(const struct vl2_client *c)
{
    return c->hello ? c->hello->hello : NULL;
}

const char *vl2_client_socket(const struct vl2_client *c)
{
    return c->path;
}

void vl2_client_set_timeout(struct vl2_client *c, int timeout_ms)
{
    c->timeout_ms = timeout_ms;
}

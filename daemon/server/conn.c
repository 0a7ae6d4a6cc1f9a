/* conn.c - client connections: accept, peer check, reading frames, writing
 * responses, closing.  Each connection is a non-blocking socket watched by a
 * uv_poll_t; the framing of ipc/ does the partial reads and writes (and the
 * descriptor passing that uv_pipe_t does not offer for plain files). */
#include <errno.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "server-impl.h"

/* Frames handled per readable event, for fairness between clients. */
#define FRAMES_PER_WAKEUP 32
/* Stop reading requests while this many response bytes wait to be sent. */
#define READ_PAUSE_QUEUED (4u << 20)
/* A frame this large is followed by malloc_trim(): glibc would keep the
 * peak of a big request otherwise. */
#define TRIM_AFTER_BYTES (8u << 20)

void vl2__server_conn_gone(struct vl2_server *srv);

static void on_poll(uv_poll_t *h, int status, int events);

static void on_conn_closed(uv_handle_t *h)
{
    struct vl2_conn *c = h->data;
    struct vl2_server *srv = c->srv;

    if (--c->open_handles > 0)
        return;
    if (c->fd >= 0)
        (void) close(c->fd);
    if (c->prev)
        c->prev->next = c->next;
    else
        srv->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    srv->n_conns--;
    free(c);
    vl2__server_conn_gone(srv);
}

void vl2__conn_close(struct vl2_conn *c)
{
    if (c->closing)
        return;
    c->closing = true;
    /* the client is gone or misbehaved: its jobs stop at the next step */
    vl2__dispatch_abort_inflight(c, VL2_ECANCELED, NULL, false);
    vl2_ipc_reader_done(&c->reader);
    vl2_ipc_writer_done(&c->writer);
    vl2__conn_account(c);
    uv_close((uv_handle_t *) &c->poll, on_conn_closed);
    if (c->open_handles > 1)
        uv_close((uv_handle_t *) &c->deadline, on_conn_closed);
}

/* Bring the server's totals up to date with what @c holds now. */
void vl2__conn_account(struct vl2_conn *c)
{
    struct vl2_server *srv = c->srv;
    size_t bytes = 0, fds = 0, queued = 0;

    if (!c->closing) {
        bytes = vl2_ipc_reader_busy(&c->reader) ? c->reader.cap + VL2_IPC_HEADER_SIZE : 0;
        fds = c->reader.n_fds;
        queued = c->writer.queued_size;
    }
    srv->partial_bytes = srv->partial_bytes - c->acct_partial_bytes + bytes;
    srv->partial_fds = srv->partial_fds - c->acct_partial_fds + fds;
    srv->queued_bytes = srv->queued_bytes - c->acct_queued + queued;
    c->acct_partial_bytes = bytes;
    c->acct_partial_fds = fds;
    c->acct_queued = queued;
}

/* ---- deadlines ------------------------------------------------------- */

static void on_deadline(uv_timer_t *t)
{
    struct vl2_conn *c = t->data;
    const struct vl2_server_opts *o = &c->srv->opts;
    char msg[160];

    c->deadline_kind = 0;
    if (c->closing || c->close_after_flush)
        return;
    if (!c->hello_done)
        snprintf(msg, sizeof(msg), "server: no Hello within %g s; closing",
                 o->handshake_timeout_s);
    else
        snprintf(msg, sizeof(msg), "server: a frame was not completed within %g s "
                 "(%zu of %u bytes); closing", o->frame_timeout_s, c->reader.got,
                 c->reader.size);
    vl2_log(VL2_LOG_WARN, "connection %llu (pid %ld, uid %u): %s", (unsigned long long) c->id,
            (long) c->peer.pid, (unsigned) c->peer.uid, msg);
    vl2__conn_send_error(c, 0, VL2_ETIMEDOUT, msg, true);
}

/* The handshake deadline runs from accept to Hello; after it, a frame's
 * deadline runs from its first byte to its last. */
static void update_deadline(struct vl2_conn *c)
{
    double s;

    if (c->closing || c->open_handles < 2 || !c->hello_done)
        return;
    if (c->deadline_kind == 1) {
        uv_timer_stop(&c->deadline);
        c->deadline_kind = 0;
    }
    if (!vl2_ipc_reader_busy(&c->reader)) {
        if (c->deadline_kind == 2)
            uv_timer_stop(&c->deadline);
        c->deadline_kind = 0;
        return;
    }
    if (c->deadline_kind == 2)
        return;
    s = c->srv->opts.frame_timeout_s;
    uv_timer_start(&c->deadline, on_deadline, (uint64_t) (s * 1000.0) + 1, 0);
    c->deadline_kind = 2;
}

/* Watch for what the connection needs now; close it when it is finished. */
static void update_poll(struct vl2_conn *c)
{
    int want = 0, r;
    bool pending = vl2_ipc_writer_pending(&c->writer);

    if (c->closing)
        return;
    if (c->close_after_flush && !pending) {
        vl2__conn_close(c);
        return;
    }
    if (!c->close_after_flush && c->writer.queued_size < READ_PAUSE_QUEUED)
        want |= UV_READABLE;
    if (pending)
        want |= UV_WRITABLE;
    if (c->poll_started && want == c->poll_events)
        return;
    r = uv_poll_start(&c->poll, want, on_poll);
    if (r < 0) {
        vl2_log(VL2_LOG_WARN, "connection %llu: cannot watch the socket: %s; closing",
                (unsigned long long) c->id, uv_strerror(r));
        vl2__conn_close(c);
        return;
    }
    c->poll_started = true;
    c->poll_events = want;
}

static void flush(struct vl2_conn *c)
{
    struct vl2_err err = { 0 };
    int r;

    if (c->closing)
        return;
    r = vl2_ipc_writer_flush(&c->writer, c->fd, &err);
    vl2__conn_account(c);
    if (r < 0) {
        vl2_log(VL2_LOG_DEBUG, "connection %llu: %s; closing", (unsigned long long) c->id,
                err.msg);
        vl2__conn_close(c);
        return;
    }
    update_poll(c);
}

void vl2__conn_send(struct vl2_conn *c, const Vl2__Response *resp)
{
    struct vl2_err err = { 0 };
    int r;

    if (c->closing)
        return;
    r = vl2_ipc_writer_queue_msg(&c->writer, &resp->base, NULL, 0, &err);
    if (r == 0 && c->srv->queued_bytes + c->writer.queued_size - c->acct_queued >
                      c->srv->opts.max_queued_bytes * 4 &&
        c->writer.queued_size > READ_PAUSE_QUEUED)
        r = vl2_err_set(&err, VL2_ELIMIT, "server: responses of all clients fill the "
                        "daemon's budget and this one reads too slowly");
    if (r < 0) {
        vl2_log(VL2_LOG_WARN, "connection %llu (pid %ld): cannot queue a response: %s; "
                "closing", (unsigned long long) c->id, (long) c->peer.pid, err.msg);
        vl2__conn_close(c);
        return;
    }
    flush(c);
}

void vl2__conn_send_error(struct vl2_conn *c, uint64_t id, int code, const char *msg,
                          bool close_after)
{
    Vl2__Response resp = VL2__RESPONSE__INIT;
    Vl2__Error e = VL2__ERROR__INIT;
    char line[VL2_ERR_MSG_SIZE];
    char *p;

    snprintf(line, sizeof(line), "%s", msg ? msg : vl2_status_name(code));
    for (p = line; *p; p++)
        if (*p == '\r' || *p == '\n')
            *p = ' ';
    resp.has_id = 1;
    resp.id = id;
    resp.body_case = VL2__RESPONSE__BODY_ERROR;
    resp.error = &e;
    e.has_code = 1;
    e.code = code;
    e.message = line;
    if (c->closing)
        return;
    if (close_after)
        c->close_after_flush = true;
    vl2__conn_send(c, &resp);
}

void vl2__conn_finish(struct vl2_conn *c)
{
    if (c->closing)
        return;
    c->close_after_flush = true;
    update_poll(c);
}

static void on_readable(struct vl2_conn *c)
{
    int n;

    for (n = 0; n < FRAMES_PER_WAKEUP; n++) {
        struct vl2_err err = { 0 };
        struct vl2_ipc_frame frame = { 0 };
        int r;

        if (c->closing || c->close_after_flush || c->writer.queued_size >= READ_PAUSE_QUEUED)
            break;
        r = vl2_ipc_reader_read(&c->reader, c->fd, &err);
        vl2__conn_account(c);
        /* a frame still coming in, while all of them hold too much */
        if (r == VL2_IPC_AGAIN && c->acct_partial_bytes > 0 &&
            c->srv->partial_bytes > c->srv->opts.max_partial_bytes)
            r = vl2_err_set(&err, VL2_EBUSY, "server: unfinished frames of all clients "
                            "hold more than %zu bytes; try again later",
                            c->srv->opts.max_partial_bytes);
        else if (r == VL2_IPC_AGAIN && c->acct_partial_fds > 0 &&
                 c->srv->partial_fds > c->srv->opts.max_partial_fds)
            r = vl2_err_set(&err, VL2_EBUSY, "server: unfinished frames of all clients "
                            "hold more than %u descriptors; try again later",
                            c->srv->opts.max_partial_fds);
        if (r == VL2_IPC_AGAIN)
            break;
        if (r == VL2_IPC_EOF) {
            vl2_log(VL2_LOG_DEBUG, "connection %llu: closed by the client",
                    (unsigned long long) c->id);
            vl2__conn_close(c);
            return;
        }
        if (r == VL2_EIO) {
            vl2_log(VL2_LOG_DEBUG, "connection %llu: %s; closing", (unsigned long long) c->id,
                    err.msg);
            vl2__conn_close(c);
            return;
        }
        if (r < 0) {
            /* a bad frame: say why, then close */
            vl2_log(VL2_LOG_WARN, "connection %llu (pid %ld, uid %u): %s; closing",
                    (unsigned long long) c->id, (long) c->peer.pid, (unsigned) c->peer.uid,
                    err.msg);
            vl2__conn_send_error(c, 0, r, err.msg, true);
            break;
        }
        vl2_ipc_reader_take(&c->reader, &frame);
        vl2__conn_account(c);
        if (c->deadline_kind == 2) {
            uv_timer_stop(&c->deadline);
            c->deadline_kind = 0;
        }
        vl2__dispatch_frame(c, &frame);
        if (frame.size >= TRIM_AFTER_BYTES) {
            vl2_ipc_frame_done(&frame);
            (void) malloc_trim(0);
        }
        vl2_ipc_frame_done(&frame);
    }
    update_deadline(c);
    update_poll(c);
}

static void on_poll(uv_poll_t *h, int status, int events)
{
    struct vl2_conn *c = h->data;

    if (c->closing)
        return;
    if (status < 0) {
        vl2_log(VL2_LOG_DEBUG, "connection %llu: %s; closing", (unsigned long long) c->id,
                uv_strerror(status));
        vl2__conn_close(c);
        return;
    }
    if (events & UV_WRITABLE)
        flush(c);
    if (!c->closing && (events & UV_READABLE))
        on_readable(c);
}

static void accept_one(struct vl2_server *srv, int fd)
{
    struct vl2_err err = { 0 };
    struct vl2_conn *c;
    int r;

    c = calloc(1, sizeof(*c));
    if (!c) {
        vl2_log(VL2_LOG_ERR, "out of memory accepting a connection");
        (void) close(fd);
        return;
    }
    c->srv = srv;
    c->fd = fd;
    c->id = srv->next_conn_id++;
    vl2_ipc_reader_init(&c->reader, srv->opts.max_frame);
    /* responses are bounded by what a client accepts: protocol maximum */
    vl2_ipc_writer_init(&c->writer, srv->opts.max_queued_bytes, VL2_IPC_MAX_FRAME_LIMIT);
    r = uv_poll_init(&srv->loop, &c->poll, fd);
    if (r < 0) {
        vl2_log(VL2_LOG_ERR, "cannot watch a new connection: %s", uv_strerror(r));
        (void) close(fd);
        free(c);
        return;
    }
    c->poll.data = c;
    c->open_handles = 1;
    if (uv_timer_init(&srv->loop, &c->deadline) == 0) {
        c->deadline.data = c;
        c->open_handles = 2;
    }
    c->next = srv->conns;
    if (srv->conns)
        srv->conns->prev = c;
    srv->conns = c;
    srv->n_conns++;

    r = vl2__auth_peer(fd, &c->peer, &err);
    if (r == 0)
        r = vl2__auth_check(&srv->opts, &c->peer, &err);
    if (r < 0) {
        vl2_log(VL2_LOG_WARN, "connection %llu (pid %ld): %s", (unsigned long long) c->id,
                (long) c->peer.pid, err.msg);
        vl2__conn_send_error(c, 0, r, err.msg, true);
        return;
    }
    if (srv->opts.max_connections_per_uid) {
        struct vl2_conn *o;
        unsigned same = 0;

        for (o = srv->conns; o; o = o->next)
            if (o != c && !o->closing && !o->close_after_flush && o->peer.uid == c->peer.uid)
                same++;
        if (same >= srv->opts.max_connections_per_uid) {
            char msg[160];

            snprintf(msg, sizeof(msg), "server: uid %u has %u connections, the limit; try "
                     "again later", (unsigned) c->peer.uid, same);
            vl2_log(VL2_LOG_WARN, "connection %llu (pid %ld): refused: %s",
                    (unsigned long long) c->id, (long) c->peer.pid, msg);
            vl2__conn_send_error(c, 0, VL2_EBUSY, msg, true);
            return;
        }
    }
    if (srv->n_conns > srv->opts.max_connections) {
        vl2_log(VL2_LOG_WARN, "connection %llu (pid %ld): refused, %u connections already",
                (unsigned long long) c->id, (long) c->peer.pid, srv->n_conns - 1);
        vl2__conn_send_error(c, 0, VL2_EBUSY, "server: too many connections, try again later",
                             true);
        return;
    }
    vl2_log(VL2_LOG_DEBUG, "connection %llu: pid %ld uid %u gid %u",
            (unsigned long long) c->id, (long) c->peer.pid, (unsigned) c->peer.uid,
            (unsigned) c->peer.gid);
    if (c->open_handles > 1 && srv->opts.handshake_timeout_s > 0) {
        uv_timer_start(&c->deadline, on_deadline,
                       (uint64_t) (srv->opts.handshake_timeout_s * 1000.0) + 1, 0);
        c->deadline_kind = 1;
    }
    update_poll(c);
}

static void on_listen_again(uv_poll_t *h, int status, int events)
{
    struct vl2_server *srv = h->data;

    if (status == 0 && (events & UV_READABLE))
        vl2__conn_accept(srv);
}

static void on_accept_retry(uv_timer_t *t)
{
    struct vl2_server *srv = t->data;

    if (!srv->stopping)
        (void) uv_poll_start(&srv->listen_poll, UV_READABLE, on_listen_again);
}

void vl2__conn_accept(struct vl2_server *srv)
{
    int i;

    for (i = 0; i < 64 && !srv->stopping; i++) {
        int fd = accept4(srv->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                /* pause, or the level-triggered poll would spin */
                vl2_log(VL2_LOG_WARN, "accept: %s (%u connections, %zu descriptors in "
                        "unfinished frames); pausing for a second", strerror(errno),
                        srv->n_conns, srv->partial_fds);
                uv_poll_stop(&srv->listen_poll);
                uv_timer_start(&srv->accept_retry, on_accept_retry, 1000, 0);
            } else if (errno != EAGAIN && errno != EWOULDBLOCK) {
                vl2_log(VL2_LOG_WARN, "accept: %s", strerror(errno));
            }
            return;
        }
        accept_one(srv, fd);
    }
}

struct vl2_inflight *vl2__conn_find_key(struct vl2_server *srv, uint64_t key,
                                        struct vl2_conn **ret_conn)
{
    struct vl2_conn *c;
    struct vl2_inflight *inf;

    for (c = srv->conns; c; c = c->next) {
        if (c->closing)
            continue;
        for (inf = c->inflight; inf; inf = inf->next)
            if (inf->key == key) {
                *ret_conn = c;
                return inf;
            }
    }
    return NULL;
}

void vl2__inflight_unlink(struct vl2_conn *c, struct vl2_inflight *inf)
{
    struct vl2_inflight **pp;

    for (pp = &c->inflight; *pp; pp = &(*pp)->next)
        if (*pp == inf) {
            *pp = inf->next;
            inf->next = NULL;
            c->n_inflight--;
            c->request_bytes -= inf->bytes;
            c->srv->request_bytes -= inf->bytes;
            break;
        }
}

void vl2__inflight_free(struct vl2_inflight *inf)
{
    bool big;

    if (!inf)
        return;
    big = inf->bytes >= TRIM_AFTER_BYTES || inf->text_cap >= TRIM_AFTER_BYTES;
    free(inf->text);
    free(inf);
    if (big)
        (void) malloc_trim(0);  /* the engine freed the job; give the peak back */
}

/* frame.c - length-prefixed frames with descriptors, over a Unix stream
 * socket.  The format is described in ipc.h. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "ipc.h"

/* First allocation for a payload; it doubles as bytes arrive, so a peer that
 * announces a large frame and sends nothing costs little. */
#define PAYLOAD_FIRST_CAP (64u * 1024u)

static void close_fds(int *fds, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++)
        if (fds[i] >= 0) {
            (void) close(fds[i]);
            fds[i] = -1;
        }
}

static uint32_t clamp_max_frame(uint32_t max_frame)
{
    if (max_frame == 0)
        return VL2_IPC_MAX_FRAME_DEFAULT;
    if (max_frame > VL2_IPC_MAX_FRAME_LIMIT)
        return VL2_IPC_MAX_FRAME_LIMIT;
    return max_frame;
}

void vl2_ipc_frame_done(struct vl2_ipc_frame *f)
{
    if (!f)
        return;
    free(f->payload);
    f->payload = NULL;
    f->size = 0;
    close_fds(f->fds, f->n_fds);
    f->n_fds = 0;
}

/* ---- reader ---------------------------------------------------------- */

void vl2_ipc_reader_init(struct vl2_ipc_reader *r, uint32_t max_frame)
{
    memset(r, 0, sizeof(*r));
    r->max_frame = clamp_max_frame(max_frame);
}

void vl2_ipc_reader_done(struct vl2_ipc_reader *r)
{
    if (!r)
        return;
    free(r->payload);
    r->payload = NULL;
    r->cap = r->got = 0;
    r->hdr_got = 0;
    close_fds(r->fds, r->n_fds);
    r->n_fds = 0;
    r->ready = false;
}

bool vl2_ipc_reader_busy(const struct vl2_ipc_reader *r)
{
    return r->hdr_got > 0 || r->n_fds > 0 || r->ready;
}

size_t vl2_ipc_reader_want(struct vl2_ipc_reader *r, uint8_t **ret_ptr)
{
    if (r->ready)
        return 0;
    if (r->hdr_got == VL2_IPC_HEADER_SIZE && (r->size == 0 || r->size > r->max_frame))
        return 0;  /* a bad length was reported; the reader is spent */
    if (r->hdr_got < VL2_IPC_HEADER_SIZE) {
        *ret_ptr = r->hdr + r->hdr_got;
        return VL2_IPC_HEADER_SIZE - r->hdr_got;
    }
    if (r->got == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : PAYLOAD_FIRST_CAP;
        uint8_t *p;

        if (cap > r->size)
            cap = r->size;
        p = realloc(r->payload, cap);
        if (!p)
            return 0;
        r->payload = p;
        r->cap = cap;
    }
    *ret_ptr = r->payload + r->got;
    return r->cap - r->got;
}

int vl2_ipc_reader_advance(struct vl2_ipc_reader *r, size_t n, struct vl2_err *err)
{
    if (r->hdr_got < VL2_IPC_HEADER_SIZE) {
        if (n > VL2_IPC_HEADER_SIZE - r->hdr_got)
            return vl2_err_set(err, VL2_EINTERNAL, "ipc: advance past the header");
        r->hdr_got += n;
        if (r->hdr_got < VL2_IPC_HEADER_SIZE)
            return VL2_IPC_AGAIN;
        r->size = (uint32_t) r->hdr[0] | (uint32_t) r->hdr[1] << 8 |
                  (uint32_t) r->hdr[2] << 16 | (uint32_t) r->hdr[3] << 24;
        if (r->size == 0)
            return vl2_err_set(err, VL2_EFORMAT, "ipc: zero-length frame");
        if (r->size > r->max_frame)
            return vl2_err_set(err, VL2_ELIMIT,
                               "ipc: frame of %u bytes is over the limit of %u bytes",
                               r->size, r->max_frame);
        r->got = 0;
        return VL2_IPC_AGAIN;
    }
    if (r->size == 0 || r->size > r->max_frame)
        return vl2_err_set(err, VL2_EINTERNAL, "ipc: reader used after a bad frame");
    if (n == 0 && r->got == r->cap)
        return vl2_err_set(err, VL2_ENOMEM, "ipc: cannot allocate a frame of %u bytes", r->size);
    if (n > r->cap - r->got)
        return vl2_err_set(err, VL2_EINTERNAL, "ipc: advance past the buffer");
    r->got += n;
    if (r->got < r->size)
        return VL2_IPC_AGAIN;
    r->ready = true;
    return VL2_IPC_FRAME;
}

int vl2_ipc_reader_add_fds(struct vl2_ipc_reader *r, const int *fds, size_t n_fds,
                           struct vl2_err *err)
{
    size_t i;
    int rc = 0;

    for (i = 0; i < n_fds; i++) {
        if (r->n_fds < VL2_IPC_MAX_FDS) {
            r->fds[r->n_fds++] = fds[i];
        } else {
            (void) close(fds[i]);
            rc = VL2_ELIMIT;
        }
    }
    if (rc < 0)
        vl2_err_set(err, rc, "ipc: more than %u descriptors with one frame", VL2_IPC_MAX_FDS);
    return rc;
}

/* Collect SCM_RIGHTS descriptors from a received message. */
static int take_cmsg_fds(struct vl2_ipc_reader *r, struct msghdr *mh, struct vl2_err *err)
{
    struct cmsghdr *c;
    int rc = 0;

    for (c = CMSG_FIRSTHDR(mh); c; c = CMSG_NXTHDR(mh, c)) {
        size_t n, i;

        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (i = 0; i < n; i++) {
            int fd, r2;

            memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
            r2 = vl2_ipc_reader_add_fds(r, &fd, 1, rc < 0 ? NULL : err);
            if (r2 < 0 && rc == 0)
                rc = r2;
        }
    }
    if (rc == 0 && (mh->msg_flags & MSG_CTRUNC)) {
        /* The kernel also truncates when it cannot install a descriptor in
         * our table (EMFILE/ENFILE): tell that apart from a peer sending
         * too many, by trying to take one more descriptor now. */
        int probe = r->n_fds <= VL2_IPC_MAX_FDS ? open("/dev/null", O_RDONLY | O_CLOEXEC)
                                                : -2;

        if (probe == -1 && (errno == EMFILE || errno == ENFILE))
            rc = vl2_err_set(err, VL2_EBUSY,
                             "ipc: descriptors lost: the receiver is out of file descriptors "
                             "(%s); try again later", strerror(errno));
        else
            rc = vl2_err_set(err, VL2_ELIMIT,
                             "ipc: descriptors lost: more than %u with one frame",
                             VL2_IPC_MAX_FDS);
        if (probe >= 0)
            (void) close(probe);
    }
    return rc;
}

int vl2_ipc_reader_read(struct vl2_ipc_reader *r, int fd, struct vl2_err *err)
{
    for (;;) {
        union {
            struct cmsghdr align;
            char buf[CMSG_SPACE(sizeof(int) * (VL2_IPC_MAX_FDS + 1))];
        } ctl;
        struct iovec iov;
        struct msghdr mh;
        uint8_t *p = NULL;
        size_t want;
        ssize_t n;
        int rc;

        if (r->ready)
            return VL2_IPC_FRAME;
        want = vl2_ipc_reader_want(r, &p);
        if (want == 0)
            return vl2_ipc_reader_advance(r, 0, err);
        iov.iov_base = p;
        iov.iov_len = want;
        memset(&mh, 0, sizeof(mh));
        mh.msg_iov = &iov;
        mh.msg_iovlen = 1;
        mh.msg_control = ctl.buf;
        mh.msg_controllen = sizeof(ctl.buf);
        n = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return VL2_IPC_AGAIN;
            /* a peer that closed with our data unread: gone, like an EOF */
            if (errno == ECONNRESET && !vl2_ipc_reader_busy(r))
                return VL2_IPC_EOF;
            return vl2_err_set(err, VL2_EIO, "ipc: receive failed: %s", strerror(errno));
        }
        if (mh.msg_controllen > 0) {
            rc = take_cmsg_fds(r, &mh, err);
            if (rc < 0)
                return rc;
        }
        if (n == 0) {
            if (!vl2_ipc_reader_busy(r))
                return VL2_IPC_EOF;
            if (r->hdr_got < VL2_IPC_HEADER_SIZE)
                return vl2_err_set(err, VL2_EFORMAT,
                                   "ipc: truncated frame: stream ended after %zu of 4 "
                                   "length bytes", r->hdr_got);
            return vl2_err_set(err, VL2_EFORMAT,
                               "ipc: truncated frame: stream ended after %zu of %u bytes",
                               r->got, r->size);
        }
        rc = vl2_ipc_reader_advance(r, (size_t) n, err);
        if (rc != VL2_IPC_AGAIN)
            return rc;
    }
}

void vl2_ipc_reader_take(struct vl2_ipc_reader *r, struct vl2_ipc_frame *ret)
{
    uint8_t *p = r->payload;

    /* Hand over exactly @size bytes; shrink only when it saves much. */
    if (r->cap > r->size + 4096) {
        uint8_t *q = realloc(p, r->size);
        if (q)
            p = q;
    }
    ret->payload = p;
    ret->size = r->size;
    memcpy(ret->fds, r->fds, sizeof(ret->fds));
    ret->n_fds = r->n_fds;
    r->payload = NULL;
    r->cap = r->got = 0;
    r->hdr_got = 0;
    r->size = 0;
    r->n_fds = 0;
    r->ready = false;
}

/* ---- writer ---------------------------------------------------------- */

struct vl2_ipc_out {
    struct vl2_ipc_out *next;
    uint8_t *buf;                 /* header + payload */
    size_t size;
    size_t off;                   /* bytes already sent */
    int fds[VL2_IPC_MAX_FDS];     /* our duplicates, sent with byte 0 */
    size_t n_fds;
};

static void out_free(struct vl2_ipc_out *o)
{
    if (!o)
        return;
    free(o->buf);
    close_fds(o->fds, o->n_fds);
    free(o);
}

void vl2_ipc_writer_init(struct vl2_ipc_writer *w, size_t max_queued, uint32_t max_frame)
{
    memset(w, 0, sizeof(*w));
    w->max_queued = max_queued;
    w->max_frame = clamp_max_frame(max_frame);
}

void vl2_ipc_writer_done(struct vl2_ipc_writer *w)
{
    struct vl2_ipc_out *o, *next;

    if (!w)
        return;
    for (o = w->head; o; o = next) {
        next = o->next;
        out_free(o);
    }
    w->head = w->tail = NULL;
    w->queued_size = 0;
}

bool vl2_ipc_writer_pending(const struct vl2_ipc_writer *w)
{
    return w->head != NULL;
}

/* Allocate a queue entry with room for a payload of @size bytes and the
 * header already written; duplicates @fds. */
static int out_new(struct vl2_ipc_writer *w, size_t size, const int *fds, size_t n_fds,
                   struct vl2_ipc_out **ret, struct vl2_err *err)
{
    struct vl2_ipc_out *o;
    size_t i;

    if (size == 0)
        return vl2_err_set(err, VL2_EINVAL, "ipc: refusing to send an empty frame");
    if (size > w->max_frame)
        return vl2_err_set(err, VL2_ELIMIT,
                           "ipc: message of %zu bytes is over the frame limit of %u bytes",
                           size, w->max_frame);
    if (n_fds > VL2_IPC_MAX_FDS)
        return vl2_err_set(err, VL2_EINVAL, "ipc: %zu descriptors with one frame, at most %u",
                           n_fds, VL2_IPC_MAX_FDS);
    if (w->max_queued && w->queued_size + size + VL2_IPC_HEADER_SIZE > w->max_queued)
        return vl2_err_set(err, VL2_ELIMIT,
                           "ipc: %zu bytes already wait to be sent, limit %zu",
                           w->queued_size, w->max_queued);
    o = calloc(1, sizeof(*o));
    if (!o)
        return vl2_err_set(err, VL2_ENOMEM, "ipc: out of memory");
    o->buf = malloc(size + VL2_IPC_HEADER_SIZE);
    if (!o->buf) {
        free(o);
        return vl2_err_set(err, VL2_ENOMEM, "ipc: cannot allocate a frame of %zu bytes", size);
    }
    o->size = size + VL2_IPC_HEADER_SIZE;
    o->buf[0] = (uint8_t) (size & 0xff);
    o->buf[1] = (uint8_t) ((size >> 8) & 0xff);
    o->buf[2] = (uint8_t) ((size >> 16) & 0xff);
    o->buf[3] = (uint8_t) ((size >> 24) & 0xff);
    for (i = 0; i < n_fds; i++) {
        int d = fcntl(fds[i], F_DUPFD_CLOEXEC, 3);

        if (d < 0) {
            int e = errno;

            out_free(o);
            return vl2_err_set(err, VL2_EINVAL, "ipc: cannot pass descriptor %d: %s",
                               fds[i], strerror(e));
        }
        o->fds[o->n_fds++] = d;
    }
    *ret = o;
    return 0;
}

static void out_append(struct vl2_ipc_writer *w, struct vl2_ipc_out *o)
{
    if (w->tail)
        w->tail->next = o;
    else
        w->head = o;
    w->tail = o;
    w->queued_size += o->size;
}

int vl2_ipc_writer_queue(struct vl2_ipc_writer *w, const void *payload, size_t size,
                         const int *fds, size_t n_fds, struct vl2_err *err)
{
    struct vl2_ipc_out *o = NULL;
    int rc;

    rc = out_new(w, size, fds, n_fds, &o, err);
    if (rc < 0)
        return rc;
    memcpy(o->buf + VL2_IPC_HEADER_SIZE, payload, size);
    out_append(w, o);
    return 0;
}

int vl2_ipc_writer_queue_msg(struct vl2_ipc_writer *w, const ProtobufCMessage *msg,
                             const int *fds, size_t n_fds, struct vl2_err *err)
{
    struct vl2_ipc_out *o = NULL;
    size_t size;
    int rc;

    size = protobuf_c_message_get_packed_size(msg);
    rc = out_new(w, size, fds, n_fds, &o, err);
    if (rc < 0)
        return rc;
    if (protobuf_c_message_pack(msg, o->buf + VL2_IPC_HEADER_SIZE) != size) {
        out_free(o);
        return vl2_err_set(err, VL2_EINTERNAL, "ipc: packed size changed while packing");
    }
    out_append(w, o);
    return 0;
}

int vl2_ipc_writer_flush(struct vl2_ipc_writer *w, int fd, struct vl2_err *err)
{
    while (w->head) {
        struct vl2_ipc_out *o = w->head;
        union {
            struct cmsghdr align;
            char buf[CMSG_SPACE(sizeof(int) * VL2_IPC_MAX_FDS)];
        } ctl;
        struct iovec iov;
        struct msghdr mh;
        ssize_t n;

        iov.iov_base = o->buf + o->off;
        iov.iov_len = o->size - o->off;
        memset(&mh, 0, sizeof(mh));
        mh.msg_iov = &iov;
        mh.msg_iovlen = 1;
        if (o->off == 0 && o->n_fds > 0) {
            struct cmsghdr *c;

            memset(&ctl, 0, sizeof(ctl));
            mh.msg_control = ctl.buf;
            mh.msg_controllen = CMSG_SPACE(sizeof(int) * o->n_fds);
            c = CMSG_FIRSTHDR(&mh);
            c->cmsg_level = SOL_SOCKET;
            c->cmsg_type = SCM_RIGHTS;
            c->cmsg_len = CMSG_LEN(sizeof(int) * o->n_fds);
            memcpy(CMSG_DATA(c), o->fds, sizeof(int) * o->n_fds);
        }
        n = sendmsg(fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 0;
            return vl2_err_set(err, VL2_EIO, "ipc: send failed: %s", strerror(errno));
        }
        if (o->off == 0 && o->n_fds > 0 && n > 0)
            close_fds(o->fds, o->n_fds);  /* the peer has its own copies now */
        o->off += (size_t) n;
        w->queued_size -= (size_t) n;
        if (o->off == o->size) {
            w->head = o->next;
            if (!w->head)
                w->tail = NULL;
            o->n_fds = 0;
            out_free(o);
        }
    }
    return 1;
}

/* ---- messages -------------------------------------------------------- */

Vl2__Request *vl2_ipc_request_decode(const uint8_t *payload, size_t size, struct vl2_err *err)
{
    Vl2__Request *m = vl2__request__unpack(NULL, size, payload);

    if (!m)
        vl2_err_set(err, VL2_EFORMAT, "ipc: frame of %zu bytes is not a valid request", size);
    return m;
}

Vl2__Response *vl2_ipc_response_decode(const uint8_t *payload, size_t size, struct vl2_err *err)
{
    Vl2__Response *m = vl2__response__unpack(NULL, size, payload);

    if (!m)
        vl2_err_set(err, VL2_EFORMAT, "ipc: frame of %zu bytes is not a valid response", size);
    return m;
}

const char *vl2_ipc_request_name(int body_case)
{
    switch (body_case) {
    case VL2__REQUEST__BODY_HELLO:        return "hello";
    case VL2__REQUEST__BODY_GENERATE:     return "generate";
    case VL2__REQUEST__BODY_CANCEL:       return "cancel";
    case VL2__REQUEST__BODY_STATUS:       return "status";
    case VL2__REQUEST__BODY_LIST_MODELS:  return "list-models";
    case VL2__REQUEST__BODY_LOAD_MODEL:   return "load-model";
    case VL2__REQUEST__BODY_UNLOAD_MODEL: return "unload-model";
    case VL2__REQUEST__BODY_TOKENIZE:     return "tokenize";
    case VL2__REQUEST__BODY__NOT_SET:     return "empty";
    }
    return "unknown";
}

const char *vl2_ipc_response_name(int body_case)
{
    switch (body_case) {
    case VL2__RESPONSE__BODY_HELLO:    return "hello";
    case VL2__RESPONSE__BODY_ACCEPTED: return "accepted";
    case VL2__RESPONSE__BODY_PROGRESS: return "progress";
    case VL2__RESPONSE__BODY_TOKEN:    return "token";
    case VL2__RESPONSE__BODY_DONE:     return "done";
    case VL2__RESPONSE__BODY_ERROR:    return "error";
    case VL2__RESPONSE__BODY_STATUS:   return "status";
    case VL2__RESPONSE__BODY_MODELS:   return "models";
    case VL2__RESPONSE__BODY_TOKENIZE: return "tokenize";
    case VL2__RESPONSE__BODY_ACK:      return "ack";
    case VL2__RESPONSE__BODY_LOADED:   return "loaded";
    case VL2__RESPONSE__BODY__NOT_SET: return "empty";
    }
    return "unknown";
}

/* ---- socket paths ---------------------------------------------------- */

int vl2_ipc_sockaddr(const char *path, struct sockaddr_un *addr, struct vl2_err *err)
{
    size_t len = path ? strlen(path) : 0;

    if (len == 0)
        return vl2_err_set(err, VL2_EINVAL, "ipc: empty socket path");
    if (len >= sizeof(addr->sun_path))
        return vl2_err_set(err, VL2_ELIMIT,
                           "ipc: socket path '%s' is %zu bytes long, the limit is %zu",
                           path, len, sizeof(addr->sun_path) - 1);
    memset(addr, 0, sizeof(*addr));
    addr->sun_family = AF_UNIX;
    memcpy(addr->sun_path, path, len + 1);
    return (int) (offsetof(struct sockaddr_un, sun_path) + len + 1);
}

int vl2_ipc_default_socket(bool system, char *buf, size_t size, struct vl2_err *err)
{
    const char *dir;
    int n;

    if (system) {
        n = snprintf(buf, size, "%s", VL2_IPC_SYSTEM_SOCKET);
    } else {
        dir = getenv("XDG_RUNTIME_DIR");
        if (!dir || dir[0] != '/')
            return vl2_err_set(err, VL2_ENOTFOUND,
                               "ipc: XDG_RUNTIME_DIR is %s, no default user socket",
                               dir ? "not an absolute path" : "not set");
        n = snprintf(buf, size, "%s/%s", dir, VL2_IPC_USER_SOCKET_NAME);
    }
    if (n < 0 || (size_t) n >= size || (size_t) n >= sizeof(((struct sockaddr_un *) 0)->sun_path))
        return vl2_err_set(err, VL2_ELIMIT, "ipc: default socket path is too long");
    return 0;
}

/* ---- request precheck ------------------------------------------------ */

/* What the precheck knows of vl2.proto's requests: for each message, its
 * string fields (a NUL inside is refused), its sub-messages, and which
 * repeated field is counted against which limit. */
enum pc_type {
    PC_REQUEST, PC_HELLO, PC_GENERATE, PC_MESSAGE, PC_IMAGE, PC_SAMPLING, PC_CANCEL, PC_LOAD,
    PC_UNLOAD, PC_TOKENIZE, PC_OTHER, PC_N_TYPES
};

enum pc_kind { PC_SCALAR = 0, PC_STRING, PC_BYTES, PC_SUB };

struct pc_field {
    uint32_t number;
    enum pc_kind kind;
    enum pc_type sub;           /* PC_SUB */
    const char *name;           /* for messages */
};

struct pc_schema {
    const char *name;
    const struct pc_field *fields;
    size_t n_fields;
};

#define PCF(n, k, s, name) { n, k, s, name }
static const struct pc_field pc_request[] = {
    PCF(1, PC_SCALAR, 0, "id"), PCF(2, PC_SUB, PC_HELLO, "hello"),
    PCF(3, PC_SUB, PC_GENERATE, "generate"), PCF(4, PC_SUB, PC_CANCEL, "cancel"),
    PCF(5, PC_SUB, PC_OTHER, "status"), PCF(6, PC_SUB, PC_OTHER, "list_models"),
    PCF(7, PC_SUB, PC_LOAD, "load_model"), PCF(8, PC_SUB, PC_UNLOAD, "unload_model"),
    PCF(9, PC_SUB, PC_TOKENIZE, "tokenize"),
};
static const struct pc_field pc_hello[] = {
    PCF(1, PC_SCALAR, 0, "protocol_version"), PCF(2, PC_STRING, 0, "client_name"),
};
static const struct pc_field pc_generate[] = {
    PCF(1, PC_STRING, 0, "model"), PCF(2, PC_SUB, PC_MESSAGE, "messages"),
    PCF(3, PC_SUB, PC_SAMPLING, "sampling"), PCF(4, PC_SCALAR, 0, "grounding"),
    PCF(5, PC_SCALAR, 0, "stream"), PCF(6, PC_SCALAR, 0, "logprobs"),
    PCF(7, PC_SCALAR, 0, "top_logprobs"),
};
static const struct pc_field pc_message[] = {
    PCF(1, PC_SCALAR, 0, "role"), PCF(2, PC_STRING, 0, "text"),
    PCF(3, PC_SUB, PC_IMAGE, "images"),
};
static const struct pc_field pc_image[] = {
    PCF(1, PC_BYTES, 0, "data"), PCF(2, PC_SCALAR, 0, "fd_index"),
    PCF(3, PC_SCALAR, 0, "apply_exif"),
};
static const struct pc_field pc_sampling[] = {
    PCF(1, PC_SCALAR, 0, "temperature"), PCF(2, PC_SCALAR, 0, "top_p"),
    PCF(3, PC_SCALAR, 0, "top_k"), PCF(4, PC_SCALAR, 0, "repetition_penalty"),
    PCF(5, PC_SCALAR, 0, "seed"), PCF(6, PC_SCALAR, 0, "max_new_tokens"),
    PCF(7, PC_STRING, 0, "stop"), PCF(8, PC_SCALAR, 0, "ignore_eos"),
};
static const struct pc_field pc_cancel[] = { PCF(1, PC_SCALAR, 0, "target_id") };
static const struct pc_field pc_load[] = {
    PCF(1, PC_STRING, 0, "name"), PCF(2, PC_STRING, 0, "dir"),
    PCF(3, PC_SCALAR, 0, "progress"), PCF(4, PC_STRING, 0, "backend"),
};
static const struct pc_field pc_unload[] = { PCF(1, PC_STRING, 0, "name") };
static const struct pc_field pc_tokenize[] = {
    PCF(1, PC_STRING, 0, "model"), PCF(2, PC_STRING, 0, "text"),
    PCF(3, PC_SCALAR, 0, "pieces"), PCF(4, PC_SCALAR, 0, "add_bos"),
};
#define PCS(name, a) { name, a, sizeof(a) / sizeof(a[0]) }
static const struct pc_schema pc_schemas[PC_N_TYPES] = {
    [PC_REQUEST] = PCS("Request", pc_request), [PC_HELLO] = PCS("Hello", pc_hello),
    [PC_GENERATE] = PCS("Generate", pc_generate), [PC_MESSAGE] = PCS("Message", pc_message),
    [PC_IMAGE] = PCS("Image", pc_image), [PC_SAMPLING] = PCS("Sampling", pc_sampling),
    [PC_CANCEL] = PCS("Cancel", pc_cancel),
    [PC_LOAD] = PCS("LoadModel", pc_load), [PC_UNLOAD] = PCS("UnloadModel", pc_unload),
    [PC_TOKENIZE] = PCS("Tokenize", pc_tokenize), [PC_OTHER] = { "message", NULL, 0 },
};

struct pc_state {
    size_t n_messages, n_images, n_stops, n_unknown;
    uint64_t id;                  /* Request.id, as seen so far */
};

/* A varint at *@p (< @end); returns false when malformed. */
static bool pc_varint(const uint8_t **p, const uint8_t *end, uint64_t *ret)
{
    uint64_t v = 0;
    int shift;

    for (shift = 0; shift < 64 && *p < end; shift += 7) {
        uint8_t b = *(*p)++;

        v |= (uint64_t) (b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *ret = v;
            return true;
        }
    }
    return false;
}

/* Fields one message may carry besides its counted repeated ones: the
 * decoder keeps a record of every field it scans, so a frame of millions of
 * tiny fields would cost gigabytes before any check could run. */
#define PC_MAX_PLAIN_FIELDS 64u

static int pc_scan(const uint8_t *p, size_t n, enum pc_type type, int depth,
                   struct pc_state *st, struct vl2_err *err)
{
    const struct pc_schema *sc = &pc_schemas[type];
    const uint8_t *end = p + n;
    size_t n_plain = 0;

    if (depth > 8)
        return vl2_err_set(err, VL2_EFORMAT, "ipc: request nested too deeply");
    while (p < end) {
        const struct pc_field *f = NULL;
        uint64_t key, len = 0;
        uint32_t number, wire;
        size_t i;
        bool counted = false;

        if (!pc_varint(&p, end, &key))
            return vl2_err_set(err, VL2_EFORMAT, "ipc: not a valid request: bad field key");
        number = (uint32_t) (key >> 3);
        wire = (uint32_t) (key & 7);
        switch (wire) {
        case 0:
            if (!pc_varint(&p, end, &len))
                return vl2_err_set(err, VL2_EFORMAT, "ipc: not a valid request: bad varint");
            break;
        case 1:
            if ((size_t) (end - p) < 8)
                return vl2_err_set(err, VL2_EFORMAT, "ipc: not a valid request: truncated");
            p += 8;
            break;
        case 5:
            if ((size_t) (end - p) < 4)
                return vl2_err_set(err, VL2_EFORMAT, "ipc: not a valid request: truncated");
            p += 4;
            break;
        case 2:
            if (!pc_varint(&p, end, &len) || len > (uint64_t) (end - p))
                return vl2_err_set(err, VL2_EFORMAT, "ipc: not a valid request: bad "
                                   "length");
            break;
        default:
            return vl2_err_set(err, VL2_EFORMAT, "ipc: not a valid request: wire type %u",
                               wire);
        }
        if (type == PC_REQUEST && number == 1 && wire == 0)
            st->id = len;
        for (i = 0; i < sc->n_fields; i++)
            if (sc->fields[i].number == number)
                f = &sc->fields[i];
        if (f && (f->kind == PC_SCALAR) != (wire != 2))
            f = NULL;   /* a known number with another wire type: unknown to us */
        if (!f) {
            counted = true;   /* against their own limit */
            if (++st->n_unknown > VL2_IPC_MAX_UNKNOWN_FIELDS)
                return vl2_err_set(err, VL2_ELIMIT, "ipc: request carries more than %u unknown "
                                   "fields", VL2_IPC_MAX_UNKNOWN_FIELDS);
        } else if (f->kind == PC_STRING) {
            if (memchr(p, 0, (size_t) len))
                return vl2_err_set(err, VL2_EINVAL, "ipc: %s.%s holds a NUL byte; strings "
                                   "may not", sc->name, f->name);
            if (type == PC_SAMPLING && number == 7) {
                counted = true;
                if (++st->n_stops > VL2_IPC_MAX_STOPS)
                    return vl2_err_set(err, VL2_ELIMIT, "ipc: more than %u stop strings",
                                       VL2_IPC_MAX_STOPS);
            }
        } else if (f->kind == PC_SUB) {
            int r;

            if (type == PC_GENERATE && number == 2) {
                counted = true;
                if (++st->n_messages > VL2_IPC_MAX_MESSAGES)
                    return vl2_err_set(err, VL2_ELIMIT, "ipc: a request of more than %u "
                                       "messages", VL2_IPC_MAX_MESSAGES);
            } else if (type == PC_MESSAGE && number == 3) {
                counted = true;
                if (++st->n_images > VL2_IPC_MAX_IMAGES)
                    return vl2_err_set(err, VL2_ELIMIT, "ipc: a request of more than %u "
                                       "images", VL2_IPC_MAX_IMAGES);
            }
            r = pc_scan(p, (size_t) len, f->sub, depth + 1, st, err);
            if (r < 0)
                return r;
        }
        if (!counted && ++n_plain > PC_MAX_PLAIN_FIELDS)
            return vl2_err_set(err, VL2_ELIMIT, "ipc: %s carries more than %u fields",
                               sc->name, PC_MAX_PLAIN_FIELDS);
        if (wire == 2)
            p += len;
    }
    return 0;
}

int vl2_ipc_request_precheck(const uint8_t *payload, size_t size, uint64_t *ret_id,
                             struct vl2_err *err)
{
    struct pc_state st = { 0 };
    int r = pc_scan(payload, size, PC_REQUEST, 0, &st, err);

    if (ret_id)
        *ret_id = st.id;
    return r;
}

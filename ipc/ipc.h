/* ipc.h - the framing shared by vl2d and libvl2.
 *
 * Wire format of one frame on the Unix stream socket, byte by byte:
 *
 *     offset 0   uint32, little-endian: N, the payload length
 *     offset 4   N bytes: one protobuf message (ipc/vl2.proto): a vl2.Request
 *                from client to daemon, a vl2.Response from daemon to client
 *
 * Rules:
 *   - 1 <= N <= the receiver's maximum (VL2_IPC_MAX_FRAME_DEFAULT = 64 MiB
 *     unless configured).  A zero length is a bad frame (every message of
 *     vl2.proto sets its oneof, so it is never empty); a larger N is refused
 *     before any memory is allocated for it.
 *   - File descriptors travel beside a frame as one SCM_RIGHTS control
 *     message attached to the frame's first byte (the sender passes them with
 *     the sendmsg() that writes the length).  The receiver reads exactly one
 *     frame at a time, never past its end, so every descriptor received while
 *     a frame is being read belongs to that frame.  At most VL2_IPC_MAX_FDS
 *     per frame; more is a bad frame.
 *   - A bad frame (zero length, oversize, truncated by the end of the stream,
 *     undecodable payload) ends the connection: the daemon answers with one
 *     Error response and closes.
 *
 * The reader and writer below do partial reads and writes on non-blocking
 * sockets, so the daemon's event loop and the client's poll() loop share them.
 * Neither does any I/O other than recvmsg()/sendmsg() on the given fd.
 */
#ifndef VL2_IPC_H
#define VL2_IPC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include "vl2-status.h"
#include "vl2.pb-c.h"

#define VL2_IPC_PROTOCOL_VERSION  1u
#define VL2_IPC_HEADER_SIZE       4u
#define VL2_IPC_MAX_FRAME_DEFAULT (64u * 1024u * 1024u)
/* The largest maximum one may configure. */
#define VL2_IPC_MAX_FRAME_LIMIT   (1024u * 1024u * 1024u)
/* Descriptors per frame. */
#define VL2_IPC_MAX_FDS           16u
/* The system service's socket. */
#define VL2_IPC_SYSTEM_SOCKET     "/run/vl2d/vl2d.sock"
/* The socket's file name inside $XDG_RUNTIME_DIR for a user's daemon. */
#define VL2_IPC_USER_SOCKET_NAME  "vl2d.sock"

/* Positive results of vl2_ipc_reader_read() / vl2_ipc_reader_advance(). */
enum vl2_ipc_result {
    VL2_IPC_AGAIN = 0,  /* more bytes are needed */
    VL2_IPC_FRAME = 1,  /* a complete frame is ready: vl2_ipc_reader_take() */
    VL2_IPC_EOF   = 2,  /* the peer closed the stream between two frames */
};

/* ---- one received frame ---------------------------------------------- */

struct vl2_ipc_frame {
    uint8_t *payload;               /* malloc'd, @size bytes; owned */
    uint32_t size;
    int      fds[VL2_IPC_MAX_FDS];  /* received descriptors, owned (O_CLOEXEC) */
    size_t   n_fds;
};

/* Free the payload and close the descriptors still owned by @f (a caller that
 * keeps a descriptor sets its slot to -1).  Accepts a zeroed frame. */
void vl2_ipc_frame_done(struct vl2_ipc_frame *f);

/* ---- incremental reader ---------------------------------------------- */

/* Caller-owned state of the frame being received on one connection. */
struct vl2_ipc_reader {
    uint32_t max_frame;           /* largest payload accepted */
    uint8_t  hdr[VL2_IPC_HEADER_SIZE];
    size_t   hdr_got;             /* bytes of hdr received */
    uint32_t size;                /* payload length, valid once hdr_got == 4 */
    uint8_t *payload;             /* grows with the bytes received */
    size_t   cap;                 /* allocated bytes of payload */
    size_t   got;                 /* payload bytes received */
    int      fds[VL2_IPC_MAX_FDS];
    size_t   n_fds;
    bool     ready;               /* a complete frame waits for take() */
};

/* @max_frame: 0 means VL2_IPC_MAX_FRAME_DEFAULT; values above
 * VL2_IPC_MAX_FRAME_LIMIT are clamped to it. */
void vl2_ipc_reader_init(struct vl2_ipc_reader *r, uint32_t max_frame);

/* Free what a partial frame holds and close its descriptors. */
void vl2_ipc_reader_done(struct vl2_ipc_reader *r);

/* True between the first byte (or descriptor) of a frame and its take(). */
bool vl2_ipc_reader_busy(const struct vl2_ipc_reader *r);

/* Where the next bytes of the stream go.  Sets *@ret_ptr and returns how many
 * bytes may be written there: never past the end of the current header or
 * frame.  Returns 0 when a frame is ready (take it first) or memory for the
 * payload could not be allocated (VL2_ENOMEM is then reported by advance()
 * with n = 0). */
size_t vl2_ipc_reader_want(struct vl2_ipc_reader *r, uint8_t **ret_ptr);

/* Account for @n bytes written at the pointer given by want().
 * Returns VL2_IPC_FRAME when a frame is complete, VL2_IPC_AGAIN when more is
 * needed, VL2_EFORMAT for a zero length, VL2_ELIMIT for a length above
 * max_frame, VL2_ENOMEM when the payload cannot be allocated.  After an
 * error the reader is unusable except for done(). */
int vl2_ipc_reader_advance(struct vl2_ipc_reader *r, size_t n, struct vl2_err *err);

/* Attach received descriptors to the current frame.  Takes ownership of
 * every fd in @fds.  Returns 0, or VL2_ELIMIT (and closes the excess) when
 * the frame would carry more than VL2_IPC_MAX_FDS. */
int vl2_ipc_reader_add_fds(struct vl2_ipc_reader *r, const int *fds, size_t n_fds,
                           struct vl2_err *err);

/* Receive from the non-blocking stream socket @fd until one frame is complete
 * or the socket would block.  Returns VL2_IPC_FRAME, VL2_IPC_AGAIN, VL2_IPC_EOF
 * (the peer closed or reset the connection between frames), or: VL2_EFORMAT
 * (stream ended inside a frame, zero length), VL2_ELIMIT (oversize length,
 * too many descriptors), VL2_EIO (recvmsg failed), VL2_ENOMEM. */
int vl2_ipc_reader_read(struct vl2_ipc_reader *r, int fd, struct vl2_err *err);

/* Move the ready frame into @ret (its payload and descriptors now belong to
 * the caller) and reset the reader for the next frame.  Only valid after a
 * VL2_IPC_FRAME result. */
void vl2_ipc_reader_take(struct vl2_ipc_reader *r, struct vl2_ipc_frame *ret);

/* ---- queued writer --------------------------------------------------- */

struct vl2_ipc_out;

/* Caller-owned queue of frames to send on one connection. */
struct vl2_ipc_writer {
    struct vl2_ipc_out *head;     /* oldest frame, partly sent */
    struct vl2_ipc_out *tail;
    size_t queued_size;           /* bytes not yet sent */
    size_t max_queued;            /* limit on queued_size (0: none) */
    uint32_t max_frame;           /* largest payload the peer accepts */
};

/* @max_queued: bytes that may wait (0: no limit); @max_frame: as for the
 * reader (the peer's limit). */
void vl2_ipc_writer_init(struct vl2_ipc_writer *w, size_t max_queued, uint32_t max_frame);

/* Drop every queued frame and close the descriptors they hold. */
void vl2_ipc_writer_done(struct vl2_ipc_writer *w);

/* True while bytes wait to be sent. */
bool vl2_ipc_writer_pending(const struct vl2_ipc_writer *w);

/* Queue one frame holding @size bytes of @payload.  The descriptors in @fds
 * are duplicated (the caller keeps its own) and sent with the frame's first
 * byte.  Returns 0, VL2_EINVAL (empty payload, too many fds, bad fd),
 * VL2_ELIMIT (payload above max_frame, or the queue would exceed max_queued),
 * VL2_ENOMEM. */
int vl2_ipc_writer_queue(struct vl2_ipc_writer *w, const void *payload, size_t size,
                         const int *fds, size_t n_fds, struct vl2_err *err);

/* Pack @msg and queue it as one frame, as vl2_ipc_writer_queue(). */
int vl2_ipc_writer_queue_msg(struct vl2_ipc_writer *w, const ProtobufCMessage *msg,
                             const int *fds, size_t n_fds, struct vl2_err *err);

/* Send as much as the non-blocking socket @fd takes.  Returns 1 when the
 * queue is empty, 0 when bytes remain (wait for POLLOUT), VL2_EIO when the
 * peer is gone or sendmsg failed.  Never raises SIGPIPE. */
int vl2_ipc_writer_flush(struct vl2_ipc_writer *w, int fd, struct vl2_err *err);

/* ---- messages -------------------------------------------------------- */

/* Decode a frame's payload.  Returns the message (free it with
 * vl2__request__free_unpacked(msg, NULL)) or NULL with VL2_EFORMAT in @err
 * (VL2_ENOMEM when allocation failed). */
Vl2__Request *vl2_ipc_request_decode(const uint8_t *payload, size_t size, struct vl2_err *err);
Vl2__Response *vl2_ipc_response_decode(const uint8_t *payload, size_t size, struct vl2_err *err);

/* Limits a Request's encoding must respect before it is decoded at all
 * (vl2_ipc_request_precheck): messages of one Generate, images in all its
 * messages, stop strings, unknown fields (anywhere), and plain fields per
 * message (64). */
#define VL2_IPC_MAX_MESSAGES        4096u
#define VL2_IPC_MAX_IMAGES          64u
#define VL2_IPC_MAX_STOPS           16u
#define VL2_IPC_MAX_UNKNOWN_FIELDS  64u

/* Walk the wire bytes of a Request without allocating: refuses (VL2_ELIMIT)
 * more entries than the limits above, or than 64 other fields in one
 * message (the decoder records each field it scans: millions of tiny fields
 * would cost gigabytes), (VL2_EINVAL) a NUL byte inside a string field
 * (the decoder would silently cut the string there), and (VL2_EFORMAT)
 * bytes that do not parse.  *@ret_id (may be NULL) gets the request's id as
 * far as the walk saw it (0 if none), to answer an ELIMIT or EINVAL with it.
 * Returns 0 when vl2_ipc_request_decode() may run. */
int vl2_ipc_request_precheck(const uint8_t *payload, size_t size, uint64_t *ret_id,
                             struct vl2_err *err);

/* Name of a request's or response's body ("generate", "status", ...). */
const char *vl2_ipc_request_name(int body_case);
const char *vl2_ipc_response_name(int body_case);

/* ---- socket paths ---------------------------------------------------- */

/* Write the default socket path into @buf: VL2_IPC_SYSTEM_SOCKET when
 * @system, otherwise $XDG_RUNTIME_DIR/vl2d.sock.  Returns 0, VL2_ENOTFOUND
 * when XDG_RUNTIME_DIR is unset, empty or not absolute, VL2_ELIMIT when the
 * result does not fit @size or a socket address. */
int vl2_ipc_default_socket(bool system, char *buf, size_t size, struct vl2_err *err);

struct sockaddr_un;
/* Fill @addr for @path.  Returns the address length to pass to bind() or
 * connect(), VL2_EINVAL for an empty path or VL2_ELIMIT for one too long. */
int vl2_ipc_sockaddr(const char *path, struct sockaddr_un *addr, struct vl2_err *err);

#endif /* VL2_IPC_H */

/* vl2.h - libvl2, the C client library of vl2d.
 *
 * Messages are the protobuf-c types generated from vl2.proto (vl2.pb-c.h);
 * the library frames them, passes descriptors, matches responses to requests
 * and applies timeouts.  Example:
 *
 *     struct vl2_client_opts o = vl2_client_default_opts();
 *     struct vl2_client *c;
 *     struct vl2_err err;
 *     if (vl2_client_open(&o, &c, &err) < 0) {
 *         fprintf(stderr, "%s\n", err.msg);     // says which socket was tried
 *         return 1;
 *     }
 *     Vl2__Request req = VL2__REQUEST__INIT;
 *     Vl2__Status st = VL2__STATUS__INIT;
 *     req.body_case = VL2__REQUEST__BODY_STATUS;
 *     req.status = &st;
 *     r = vl2_client_call(c, &req, NULL, 0, on_response, userdata, &err);
 *     vl2_client_close(c);
 *
 * A client is used from one thread at a time.  Errors: int < 0 is an
 * enum vl2_status code (vl2-status.h), detail in struct vl2_err.
 */
#ifndef VL2_CLIENT_H
#define VL2_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vl2-status.h"
#include "vl2.pb-c.h"

#ifdef __cplusplus
extern "C" {
#endif

struct vl2_client;

struct vl2_client_opts {
    /* Socket to connect to; NULL: $VL2_SOCKET, then the daemon's default
     * (see vl2_client_socket_path()). */
    const char *socket_path;
    /* Longest wait for each response frame, ms; < 0: no limit. */
    int timeout_ms;
    /* Longest wait for the connection and the Hello exchange, ms. */
    int connect_timeout_ms;
    /* Sent in Hello, for the daemon's logs. */
    const char *client_name;
};

struct vl2_client_opts vl2_client_default_opts(void);

/* The socket a client uses: @explicit_path when not NULL, else $VL2_SOCKET,
 * else $XDG_RUNTIME_DIR/vl2d.sock when that file exists, else
 * /run/vl2d/vl2d.sock when that exists, else the user's path when
 * XDG_RUNTIME_DIR is set, else the system path.  Writes it into @buf.
 * Returns 0 or VL2_ELIMIT when it does not fit. */
int vl2_client_socket_path(const char *explicit_path, char *buf, size_t size,
                           struct vl2_err *err);

/* Connect and exchange Hello.  Returns 0 and *@ret_client, or < 0:
 * VL2_ENOTFOUND when no daemon listens there (the message names the socket
 * and how to start the service), VL2_EPERM when the daemon refuses this
 * user, VL2_EPROTO for a protocol mismatch, VL2_ETIMEDOUT, VL2_EIO. */
int vl2_client_open(const struct vl2_client_opts *opts, struct vl2_client **ret_client,
                    struct vl2_err *err);

/* Close the connection and free the client.  Accepts NULL. */
void vl2_client_close(struct vl2_client *c);

/* The daemon's Hello reply (version, limits); owned by the client. */
const Vl2__HelloReply *vl2_client_hello(const struct vl2_client *c);

/* The socket path this client connected to. */
const char *vl2_client_socket(const struct vl2_client *c);

/* Change the per-response timeout (ms, < 0: none). */
void vl2_client_set_timeout(struct vl2_client *c, int timeout_ms);

/* Called for each response.  @resp is valid during the call only.  Return 0
 * to go on, anything else to stop waiting (vl2_client_wait() then returns
 * that value). */
typedef int (*vl2_response_fn)(const Vl2__Response *resp, void *userdata);

/* Send @req with @n_fds descriptors (dup'ed; the caller keeps its own).
 * The library sets req->id to a fresh id and returns it in *@ret_id.
 * Returns 0 or < 0 (VL2_ELIMIT: the message is over the daemon's frame
 * limit, VL2_EIO: the connection is gone). */
int vl2_client_send(struct vl2_client *c, Vl2__Request *req, const int *fds, size_t n_fds,
                    uint64_t *ret_id, struct vl2_err *err);

/* Receive responses, passing each to @fn (responses of other requests too),
 * until request @id has its final one: anything but Accepted, Progress and
 * Token.  Returns 0 when it ended with a reply, the (negative) code of an
 * Error reply with its message in @err, a non-zero value @fn returned, or
 * VL2_ETIMEDOUT / VL2_EIO / VL2_EFORMAT for transport failures.  An Error
 * with id 0 (the daemon closing this connection) also ends the wait. */
int vl2_client_wait(struct vl2_client *c, uint64_t id, vl2_response_fn fn, void *userdata,
                    struct vl2_err *err);

/* Receive one response (of any request) within the timeout and pass it to
 * @fn.  Returns 1 when it was the final response of its request, 0 when more
 * follow, or < 0 as vl2_client_wait() for transport failures; an Error with
 * id 0 returns its code (the daemon is closing the connection). */
int vl2_client_recv(struct vl2_client *c, vl2_response_fn fn, void *userdata,
                    struct vl2_err *err);

/* The connected socket, to wait for readability in an event loop before
 * vl2_client_recv(). */
int vl2_client_fd(const struct vl2_client *c);

/* vl2_client_send() then vl2_client_wait() for that request. */
int vl2_client_call(struct vl2_client *c, Vl2__Request *req, const int *fds, size_t n_fds,
                    vl2_response_fn fn, void *userdata, struct vl2_err *err);

/* True for the responses after which no more come for the same request. */
bool vl2_response_is_final(const Vl2__Response *resp);

#ifdef __cplusplus
}
#endif

#endif /* VL2_CLIENT_H */

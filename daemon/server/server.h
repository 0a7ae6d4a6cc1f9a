/* server.h - vl2d's server: the Unix socket, connections, peer checks and
 * request dispatch on one libuv loop thread.
 *
 * Usage (what `vl2d serve` does):
 *
 *     struct vl2_server_opts o = vl2_server_default_opts();
 *     o.socket_path = "/tmp/vl2d.sock";
 *     struct vl2_server *srv;
 *     if (vl2_server_new(&o, &srv, &err) < 0) ...   // binds, or takes the
 *                                                   // systemd socket
 *     vl2_server_run(srv, &err);                    // until SIGTERM/SIGINT
 *     vl2_server_free(srv);                         // removes the socket file
 */
#ifndef VL2_SERVER_H
#define VL2_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "job.h"
#include "vl2-status.h"

#define VL2_SERVER_MAX_ALLOW 32
#define VL2_SERVER_MAX_ROOTS 16

struct vl2_server;

struct vl2_server_opts {
    /* Socket file to bind; NULL: the default of the mode (system:
     * /run/vl2d/vl2d.sock, user: $XDG_RUNTIME_DIR/vl2d.sock). */
    const char *socket_path;
    /* System mode: the system socket by default.  Also chosen when running
     * as root without XDG_RUNTIME_DIR. */
    bool system;
    /* Mode of a socket file we create (systemd's SocketMode= otherwise). */
    unsigned socket_mode;
    /* Take a socket passed by systemd (LISTEN_FDS) when there is one. */
    bool socket_activation;
    /* Send READY=1 / STOPPING=1 to $NOTIFY_SOCKET (with libsystemd). */
    bool notify;
    /* Largest frame accepted from a client, bytes (0: 64 MiB). */
    uint32_t max_frame;
    /* Bytes of responses that may wait for a slow client before it is
     * disconnected (0: 2 * max_frame + 1 MiB). */
    size_t max_queued_bytes;
    unsigned max_connections;
    /* Requests an engine serves at once for one connection. */
    unsigned max_inflight_per_conn;
    /* Who may connect: a peer whose uid is in allow_uids, or whose primary
     * or supplementary group is in allow_gids.  With no uid given, the
     * daemon's own uid and root are allowed. */
    uid_t allow_uids[VL2_SERVER_MAX_ALLOW];
    size_t n_allow_uids;
    gid_t allow_gids[VL2_SERVER_MAX_ALLOW];
    size_t n_allow_gids;
    /* Seconds to wait, when stopping, for clients to read their last
     * responses. */
    double shutdown_grace_s;
    /* Makes the engines of LoadModel requests and vl2_server_load_model()
     * (NULL: this server cannot load models; LoadModel is refused). */
    const struct vl2_engine_factory *factory;
    /* Models served at once. */
    unsigned max_models;

    /* ---- who may do what (README "Security") ---- */
    /* LoadModel and UnloadModel are for admins only: the daemon's own uid,
     * root, and members (primary or supplementary) of these groups.  Every
     * permitted client may use the models that are served. */
    gid_t admin_gids[VL2_SERVER_MAX_ALLOW];
    size_t n_admin_gids;
    /* Directories a LoadModel may name: beneath one of these (compared after
     * resolving links).  None: an admin may name any directory. */
    const char *model_roots[VL2_SERVER_MAX_ROOTS];
    size_t n_model_roots;

    /* ---- limits and timeouts (0: the default) ---- */
    /* Seconds a new connection has to complete Hello (default 10). */
    double handshake_timeout_s;
    /* Seconds a frame may take from its first byte to its last (default 30). */
    double frame_timeout_s;
    /* Connections one uid may hold (default 64). */
    unsigned max_connections_per_uid;
    /* Bytes of frames being received, all connections together (default
     * 4 * max_frame, at least 256 MiB), and descriptors they carry (default
     * a quarter of the file limit). */
    size_t max_partial_bytes;
    unsigned max_partial_fds;
    /* Bytes of requests (frames) being served for one connection (default
     * max_frame + 16 MiB) and for all (default 4 * max_frame, at least
     * 256 MiB); more is refused with BUSY until some end. */
    size_t max_request_bytes_per_conn;
    size_t max_request_bytes_total;
    /* Bytes of text in one Generate, all messages (default 1 MiB: more than
     * 256 bytes per token of any context the models have). */
    size_t max_prompt_bytes;
    /* Seconds from SIGTERM to exit, whatever is still running (default 10;
     * below systemd's TimeoutStopSec=15). */
    double stop_timeout_s;

    /* SIGHUP: called on the loop thread to reread the configuration (NULL:
     * SIGHUP is logged and ignored). */
    void (*reload)(void *ud, struct vl2_server *srv);
    void *reload_ud;
};

struct vl2_server_opts vl2_server_default_opts(void);

struct vl2_server;

/* Create the server and its listening socket: the one systemd passed, or
 * @o->socket_path (a stale socket file is replaced; a live daemon on it is a
 * VL2_EBUSY error naming it).  Returns 0 and *@ret_srv, or < 0 with @err. */
int vl2_server_new(const struct vl2_server_opts *o, struct vl2_server **ret_srv,
                   struct vl2_err *err);

/* Serve until SIGTERM, SIGINT or vl2_server_stop().  Requests in flight then
 * get an Error CANCELED, the socket file is removed, the loop ends.  Returns
 * 0, or < 0 when the loop could not run. */
int vl2_server_run(struct vl2_server *srv, struct vl2_err *err);

/* Ask a running server to stop, as SIGTERM does.  Safe from any thread. */
void vl2_server_stop(struct vl2_server *srv);

/* Start loading model @name (NULL or "": the base name of @dir) from @dir
 * with @backend (NULL: the factory's default) through o->factory, on the
 * engine's thread.  The model is listed at once as LOADING; a directory that
 * fails validation leaves it FAILED with the reason (ListModels, Status) and
 * the daemon serves the other models.  Call before vl2_server_run(): the
 * READY=1 notification then waits until these models are loaded or failed.
 * Returns 0, or < 0 (no factory, bad or duplicate name, engine creation)
 * with @err. */
int vl2_server_load_model(struct vl2_server *srv, const char *name, const char *dir,
                          const char *backend, struct vl2_err *err);

/* Replace the admin groups and model roots (SIGHUP reload; loop thread).
 * The strings of @roots are copied. */
int vl2_server_set_policy(struct vl2_server *srv, const gid_t *admin_gids, size_t n_admin,
                          const char *const *roots, size_t n_roots, struct vl2_err *err);

/* Unload model @name, as an UnloadModel would (SIGHUP reload: a model gone
 * from the configuration).  Returns 0 or VL2_ENOTFOUND. */
int vl2_server_unload_model(struct vl2_server *srv, const char *name, struct vl2_err *err);

/* True when model @name is listed (loading, ready, failed or unloading). */
bool vl2_server_has_model(const struct vl2_server *srv, const char *name);

/* Free the server; removes a socket file it created.  Accepts NULL. */
void vl2_server_free(struct vl2_server *srv);

/* Serve model @name (from @dir, for display) with @engine, made without the
 * factory (tests).  The server calls ops->free(engine) when it is freed.
 * Returns 0, VL2_EINVAL for an empty or duplicate name, VL2_ENOMEM; on
 * failure the caller keeps @engine. */
int vl2_server_attach_model(struct vl2_server *srv, const char *name, const char *dir,
                            const struct vl2_engine_ops *ops, void *engine,
                            struct vl2_err *err);

/* Queue @ev (job.h) for the loop thread and wake it: the post function the
 * server gives its engines (struct vl2_engine_spec).  Takes ownership of
 * @ev.  Safe from any thread while the server exists.  Events for a job that
 * has already ended (cancelled, client gone, server stopping) are dropped. */
void vl2_server_post(struct vl2_server *srv, struct vl2_event *ev);

/* The path clients connect to (for a systemd socket: as the kernel reports
 * it, "" when unnamed). */
const char *vl2_server_socket_path(const struct vl2_server *srv);

/* True when the listening socket came from systemd. */
bool vl2_server_socket_activated(const struct vl2_server *srv);

#endif /* VL2_SERVER_H */

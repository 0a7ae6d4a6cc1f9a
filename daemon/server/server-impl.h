/* server-impl.h - the server's internal state, shared by its .c files only. */
#ifndef VL2_SERVER_IMPL_H
#define VL2_SERVER_IMPL_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

#include "ipc.h"
#include "job.h"
#include "log.h"
#include "server.h"


/* A model the server serves, with the engine attached to it. */
struct vl2_srv_model {
    struct vl2_srv_model *next;
    char *name;
    char *dir;
    const struct vl2_engine_ops *ops;
    void *engine;
    uint64_t load_key;            /* events about the model itself (0: attached) */
    bool loading;                 /* neither LOADED nor a load ERROR yet */
    bool failed;                  /* loading failed (the engine refuses jobs) */
    bool unloading;               /* stop() called; freed on UNLOADED */
    bool initial;                 /* loaded at start: READY=1 waits for it */
    double load_s;
};

/* A request of a connection that an engine is serving. */
struct vl2_inflight {
    struct vl2_inflight *next;
    uint64_t request_id;
    uint64_t key;                 /* vl2_job.key, or the model's load_key */
    struct vl2_srv_model *model;
    bool load;                    /* a LoadModel: answered by ModelLoaded */
    size_t bytes;                 /* size of the request's frame (budgets) */
    bool tokenize;                /* a Tokenize: answered by TOKENIZED or ERROR, also
                                     while its model unloads */
    bool stream;
    uint8_t *text;                /* answer gathered from TOKEN events when !stream */
    size_t text_size;
    size_t text_cap;
};

/* Peer credentials of a connection. */
struct vl2_peer {
    pid_t pid;
    uid_t uid;
    gid_t gid;
    gid_t groups[64];             /* supplementary groups, when known */
    size_t n_groups;
};

struct vl2_conn {
    struct vl2_conn *next;
    struct vl2_conn *prev;
    struct vl2_server *srv;
    uint64_t id;                  /* for logs */
    int fd;
    uv_poll_t poll;               /* poll.data = this connection */
    int poll_events;              /* what poll watches now */
    bool poll_started;
    uv_timer_t deadline;          /* handshake, then frame-completion timeout */
    int deadline_kind;            /* 0: none, 1: handshake, 2: frame */
    int open_handles;             /* poll and deadline; freed when both are closed */
    size_t acct_partial_bytes;    /* this connection's share of srv->partial_bytes */
    size_t acct_partial_fds;
    size_t acct_queued;           /* ... of srv->queued_bytes */
    size_t request_bytes;         /* frames of its requests in flight */
    struct vl2_peer peer;
    struct vl2_ipc_reader reader;
    struct vl2_ipc_writer writer;
    bool hello_done;
    bool close_after_flush;       /* a final error is queued; read nothing more */
    bool closing;                 /* uv_close() called; freed in its callback */
    struct vl2_inflight *inflight;
    unsigned n_inflight;
};

struct vl2_server {
    struct vl2_server_opts opts;
    uv_loop_t loop;
    bool loop_init;
    uv_poll_t listen_poll;
    bool listen_poll_init;
    uv_signal_t sigterm;
    uv_signal_t sigint;
    uv_async_t wake;              /* events posted by engines, stop requests */
    uv_timer_t grace;             /* shutdown deadline */
    uv_timer_t accept_retry;      /* resumes accepting after EMFILE */
    bool handles_init;
    int listen_fd;
    bool activated;               /* listen_fd came from systemd */
    char socket_path[108];
    dev_t socket_dev;             /* the socket file we created, to unlink it */
    ino_t socket_ino;
    bool socket_created;
    char lock_path[116];
    int lock_fd;
    uint64_t started_ns;          /* uv_hrtime() at start */
    uint64_t next_conn_id;
    uint64_t next_key;
    struct vl2_conn *conns;
    unsigned n_conns;
    struct vl2_srv_model *models;
    size_t partial_bytes;         /* frames being received, all connections */
    size_t partial_fds;
    size_t queued_bytes;          /* responses waiting, all connections */
    size_t request_bytes;         /* requests in flight, all connections */
    char *roots[VL2_SERVER_MAX_ROOTS];  /* resolved opts.model_roots, owned */
    size_t n_roots;
    uv_signal_t sighup;
    uv_signal_t sigusr1;
    uv_signal_t sigusr2;
    bool stopping;
    bool running;                 /* vl2_server_run() started serving */
    bool ready_sent;              /* READY=1 went to systemd */
    /* posted from other threads */
    pthread_mutex_t lock;
    struct vl2_event *events;     /* LIFO; drained in order by the loop */
    bool stop_requested;
};

/* listen.c */
int vl2__server_listen(struct vl2_server *srv, struct vl2_err *err);
/* Close the socket and remove its file, then release the lock beside it. */
void vl2__server_unlisten(struct vl2_server *srv);
/* Only the socket and its file (shutdown: the lock stays until exit). */
void vl2__server_unlisten_socket(struct vl2_server *srv);

/* auth.c */
int vl2__auth_peer(int fd, struct vl2_peer *ret, struct vl2_err *err);
/* True when @peer may load and unload models (server.h: admin_gids). */
bool vl2__auth_admin(const struct vl2_server_opts *o, const struct vl2_peer *peer);
/* True when @peer is the daemon's own uid or root: it may read whatever the
 * daemon reads, so it sees load errors in full. */
bool vl2__auth_privileged(const struct vl2_peer *peer);
/* 0 when @peer may connect, VL2_EPERM with the reason in @err otherwise. */
int vl2__auth_check(const struct vl2_server_opts *o, const struct vl2_peer *peer,
                    struct vl2_err *err);

/* conn.c */
void vl2__conn_accept(struct vl2_server *srv);
/* Queue @resp for @c; on a full queue the connection is dropped. */
void vl2__conn_send(struct vl2_conn *c, const Vl2__Response *resp);
/* Queue an Error response for request @id; @close: close after sending. */
void vl2__conn_send_error(struct vl2_conn *c, uint64_t id, int code, const char *msg, bool close);
void vl2__conn_close(struct vl2_conn *c);
/* Stop reading; close once the queued responses are sent. */
void vl2__conn_finish(struct vl2_conn *c);
struct vl2_inflight *vl2__conn_find_key(struct vl2_server *srv, uint64_t key,
                                        struct vl2_conn **ret_conn);
/* Take @inf out of @c's list (before anything that may close @c). */
void vl2__inflight_unlink(struct vl2_conn *c, struct vl2_inflight *inf);
void vl2__inflight_free(struct vl2_inflight *inf);

/* dispatch.c: the one place that reads requests and builds responses */
void vl2__dispatch_frame(struct vl2_conn *c, struct vl2_ipc_frame *frame);
void vl2__dispatch_event(struct vl2_server *srv, struct vl2_event *ev);
/* Error every request in flight on @c with @code and cancel its job. */
void vl2__dispatch_abort_inflight(struct vl2_conn *c, int code, const char *msg, bool notify);

/* conn.c: budgets */
void vl2__conn_account(struct vl2_conn *c);

/* server.c */
/* The directory @dir resolved, when LoadModel may name it (beneath a model
 * root, or any when none is configured); NULL otherwise (the reason in
 * @err, the same whether or not @dir exists).  Caller frees. */
char *vl2__server_check_dir(struct vl2_server *srv, const char *dir, struct vl2_err *err);
void vl2__server_resident_memory(uint64_t *ret_bytes);
/* How many models are listed (loading, ready, failed or unloading). */
size_t vl2__server_n_models(const struct vl2_server *srv);
/* The last path component of @dir, without trailing slashes, into @buf (the
 * name a model gets when none is given; also conf.c's). */
void vl2__base_name(const char *dir, char *buf, size_t size);
/* Start loading model @name from @dir through the engine factory; the
 * model is listed at once (LOADING).  Returns 0 and *@ret_model, or < 0. */
int vl2__server_load(struct vl2_server *srv, const char *name, const char *dir,
                     const char *backend, bool progress, struct vl2_srv_model **ret_model,
                     struct vl2_err *err);
/* Unload @m: its requests in flight get an Error CANCELED @why (its Tokenize
 * requests are answered first, unless @now or the engine has no stop()); the
 * model goes once its engine has stopped, or at once (blocking) with @now. */
void vl2__server_unload(struct vl2_server *srv, struct vl2_srv_model *m, const char *why,
                        bool now);
/* The model whose load_key is @key, or NULL. */
struct vl2_srv_model *vl2__server_model_by_load_key(struct vl2_server *srv, uint64_t key);
/* Take @m out of the list and free it with its engine. */
void vl2__server_drop_model(struct vl2_server *srv, struct vl2_srv_model *m);
/* A model settled (loaded or failed): READY=1 when nothing else loads. */
void vl2__server_model_settled(struct vl2_server *srv);

#endif /* VL2_SERVER_IMPL_H */

/* http.h - vl2-http, the HTTP gateway of vl2d: OpenAI- and Ollama-compatible
 * endpoints on loopback, served as a client of the daemon through libvl2.
 *
 * Threads: libmicrohttpd runs one thread per HTTP connection
 * (MHD_USE_THREAD_PER_CONNECTION).  A request's handler, its streaming
 * callback and its completion callback all run on that connection's thread,
 * so a request's state (struct vl2h_req) is touched by one thread only.
 * Shared state is the configuration (read-only after start), the metrics
 * (under their own mutex) and the table of known model directories (under
 * srv->mu).
 *
 * Daemon connections: every HTTP request that needs the daemon opens its own
 * libvl2 connection and closes it at the end.  A libvl2 client is used from
 * one thread at a time, so a shared one would need a demultiplexing thread;
 * one connection per request needs none, costs one local connect and Hello
 * (well under a millisecond), makes the daemon's round robin between
 * connections fair between HTTP clients, and makes a vanished HTTP client
 * cancel its generation twice over: we send Cancel, and closing the
 * connection cancels whatever is left at the daemon's next step.
 */
#ifndef VL2_HTTP_H
#define VL2_HTTP_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vl2.h"

struct cJSON;
struct MHD_Connection;

#define VL2H_DEFAULT_LISTEN   "127.0.0.1:11535"
#define VL2H_DEFAULT_MAX_BODY (64u * 1024u * 1024u)
#define VL2H_MAX_IMAGES       64
#define VL2H_MAX_STOPS        16
#define VL2H_MAX_MODELS       64

/* ---- configuration (conf.c) ------------------------------------------- */

/* Settings from the flags and the configuration file; strings malloc'd. */
struct vl2h_conf {
    char *daemon_socket;      /* NULL: libvl2's default ($VL2_SOCKET, then the usual paths) */
    char *listen;             /* "HOST:PORT" ("[::1]:PORT" for IPv6) */
    char *api_key;            /* NULL: no authentication */
    size_t max_body;          /* bytes of a request body; more: 413 */
    unsigned max_connections; /* HTTP connections at once; more are refused */
    int daemon_timeout_ms;    /* longest silence of the daemon during a request */
    bool allow_remote;        /* listen on a non-loopback address */
};

void vl2h_conf_init(struct vl2h_conf *c);
void vl2h_conf_done(struct vl2h_conf *c);

/* Read @path (the format in vl2-http.conf.example: an [http] section of
 * key = value lines).  @must_exist false: a missing file is no error.
 * Returns 0 or < 0 with "vl2-http: PATH:LINE: why" in @err. */
int vl2h_conf_load(struct vl2h_conf *c, const char *path, bool must_exist,
                   struct vl2_err *err);

/* Parse a size "64M", "512k", "1G" or bytes.  Returns 0 or VL2_EINVAL. */
int vl2h_parse_size(const char *s, size_t *ret);

/* Split "HOST:PORT" / "[V6]:PORT".  @host gets the host without brackets.
 * Returns 0 or VL2_EINVAL. */
int vl2h_parse_listen(const char *s, char *host, size_t host_size, unsigned *ret_port,
                      struct vl2_err *err);

/* ---- metrics (metrics.c) ---------------------------------------------- */

#define VL2H_N_ROUTES 13
#define VL2H_HIST_BUCKETS 12

enum vl2h_route {
    VL2H_ROUTE_OTHER,
    VL2H_ROUTE_CHAT_COMPLETIONS,
    VL2H_ROUTE_MODELS,
    VL2H_ROUTE_HEALTH,
    VL2H_ROUTE_METRICS,
    VL2H_ROUTE_OLLAMA_CHAT,
    VL2H_ROUTE_OLLAMA_GENERATE,
    VL2H_ROUTE_OLLAMA_TAGS,
    VL2H_ROUTE_OLLAMA_VERSION,
    VL2H_ROUTE_OLLAMA_SHOW,
    VL2H_ROUTE_OLLAMA_PS,
    VL2H_ROUTE_ROOT,
    VL2H_ROUTE_MODEL_ONE,
};

struct vl2h_hist {
    const double *bounds;               /* VL2H_HIST_BUCKETS upper bounds */
    uint64_t counts[VL2H_HIST_BUCKETS]; /* not cumulative; +Inf is n - sum */
    uint64_t n;
    double sum;
};

/* Counters of this process; every field under mu. */
struct vl2h_metrics {
    pthread_mutex_t mu;
    uint64_t requests[VL2H_N_ROUTES][6];   /* by route and status class 1xx..5xx, [0] other */
    uint64_t by_status[600];               /* responses by exact status code */
    uint64_t errors_by_daemon_code[17];    /* daemon Error codes -1..-16 at [-code] */
    uint64_t prompt_tokens;
    uint64_t generated_tokens;
    uint64_t cached_tokens;                /* prompt tokens the daemon served from a cache */
    bool cached_known;                     /* the daemon reported a cached count at least once */
    uint64_t disconnects;                  /* generations cancelled by a client gone */
    uint64_t generations;                  /* Done received */
    unsigned in_flight;                    /* HTTP requests being answered */
    struct vl2h_hist ttft;                 /* seconds */
    struct vl2h_hist decode;               /* tokens per second */
};

void vl2h_metrics_init(struct vl2h_metrics *m);
void vl2h_metrics_done(struct vl2h_metrics *m);
void vl2h_metrics_response(struct vl2h_metrics *m, enum vl2h_route route, unsigned status);
void vl2h_metrics_daemon_error(struct vl2h_metrics *m, int code);
/* One finished generation.  @cached < 0: the daemon did not say. */
void vl2h_metrics_done_gen(struct vl2h_metrics *m, uint32_t prompt, uint32_t generated,
                           long cached, double ttft_s, double tps);
void vl2h_metrics_disconnect(struct vl2h_metrics *m);
void vl2h_metrics_in_flight(struct vl2h_metrics *m, int delta);
/* The Prometheus text exposition (format 0.0.4); @status: the daemon's
 * Status reply or NULL when it could not be had.  malloc'd. */
char *vl2h_metrics_render(struct vl2h_metrics *m, const Vl2__StatusReply *status);

/* ---- the server (server.c) -------------------------------------------- */

struct vl2h_known_model {
    char name[128];
    char dir[1024];      /* daemon side, as ListModels reported it */
};

struct vl2h_server {
    const struct vl2h_conf *conf;   /* borrowed, read-only */
    struct vl2h_metrics metrics;
    double start_time;              /* UNIX seconds, for "created" fields */
    pthread_mutex_t mu;             /* guards known[] */
    struct vl2h_known_model known[VL2H_MAX_MODELS];
    size_t n_known;
    struct MHD_Daemon *mhd;
};

/* Start serving on @listen_fd (bound and listening; owned from now on).
 * Returns 0 or < 0 with the reason in @err. */
int vl2h_server_start(struct vl2h_server *srv, const struct vl2h_conf *conf, int listen_fd,
                      struct vl2_err *err);
void vl2h_server_stop(struct vl2h_server *srv);

/* Remember @name's daemon-side directory so that it can be loaded again
 * after an unload (Ollama's keep_alive). */
void vl2h_server_remember(struct vl2h_server *srv, const char *name, const char *dir);
/* Its directory into @buf; false when unknown. */
bool vl2h_server_known_dir(struct vl2h_server *srv, const char *name, char *buf, size_t size);

/* ---- one HTTP request ---------------------------------------------------- */

enum vl2h_dialect { VL2H_OPENAI, VL2H_OLLAMA };

struct vl2h_gen;

/* A streamed response in progress (server.c); its producer runs on the
 * connection's thread through MHD's content reader. */
struct vl2h_stream;

/* Per-request state; created at the first call of the access handler,
 * freed by the completion callback.  One thread (the connection's). */
struct vl2h_req {
    struct vl2h_server *srv;
    struct MHD_Connection *conn;
    enum vl2h_route route;
    enum vl2h_dialect dialect;
    char *body;                 /* the request body, NUL-terminated */
    size_t body_len;
    bool too_large;             /* the body passed conf->max_body */
    uint64_t dropped;           /* body bytes dropped after that */
    bool counted;               /* metrics in_flight taken */
    bool answered;              /* a response was queued */
    unsigned status;            /* its status, for the metrics */
    struct vl2h_stream *stream; /* a streamed response in progress, owned by its MHD response */
};

/* An HTTP response body to queue: status, content type, malloc'd body. */
int vl2h_reply(struct vl2h_req *rq, unsigned status, const char *type, char *body);
/* The dialect's error object with @status (message one line). */
int vl2h_reply_error(struct vl2h_req *rq, unsigned status, const char *code,
                     const char *fmt, ...) __attribute__((format(printf, 4, 5)));
/* @json printed and freed; status 200 unless said. */
int vl2h_reply_json(struct vl2h_req *rq, unsigned status, struct cJSON *json);
/* A daemon or gateway error (enum vl2_status in @err->code) as the status
 * code it deserves (vl2h_status_for) and the dialect's error object. */
int vl2h_reply_vl2_error(struct vl2h_req *rq, const struct vl2_err *err);

/* The HTTP status for a vl2_status code: 400 bad input, 404 not found,
 * 429 busy, 503 daemon gone or loading, 504 timed out, 500 our bug. */
unsigned vl2h_status_for(int code);

/* The socket of the HTTP client, for hang-up detection; -1 when unknown. */
int vl2h_req_client_fd(const struct vl2h_req *rq);

/* ---- streamed responses (server.c) ------------------------------------- */

/* A growing byte buffer, NUL-terminated; @p malloc'd. */
struct vl2h_buf {
    char *p;
    size_t len;
    size_t cap;
};
int vl2h_buf_add(struct vl2h_buf *b, const char *s, size_t n);
int vl2h_buf_str(struct vl2h_buf *b, const char *s);
/* Append @json printed unformatted, then @suffix.  Frees @json. */
int vl2h_buf_json(struct vl2h_buf *b, const char *prefix, struct cJSON *json,
                  const char *suffix);
void vl2h_buf_done(struct vl2h_buf *b);

/* Produce the next bytes of a streamed body into @out (the callback
 * appends).  Returns 1 when more will follow, 0 at the end, < 0 to abort the
 * connection (the client is gone). */
typedef int (*vl2h_stream_fn)(void *ud, struct vl2h_buf *out);
typedef void (*vl2h_stream_free_fn)(void *ud);

/* Answer 200 with a body produced by @fn on demand (chunked), @type its
 * content type.  @ud is freed with @free_fn when the response ends, also
 * when the client went away.  Returns 0 or < 0 (then @free_fn was called). */
int vl2h_reply_stream(struct vl2h_req *rq, const char *type, vl2h_stream_fn fn,
                      vl2h_stream_free_fn free_fn, void *ud);

/* ---- generation through the daemon (gen.c) ----------------------------- */

struct vl2h_image {
    uint8_t *data;     /* the encoded file, malloc'd */
    size_t size;
};

struct vl2h_msg {
    Vl2__Role role;
    char *text;                 /* malloc'd, with "<image>\n" where images stood */
    struct vl2h_image *images;  /* malloc'd array */
    size_t n_images;
};

/* A Generate in the daemon's terms, built by a dialect.  Owns every
 * pointer; vl2h_params_done() frees them. */
struct vl2h_params {
    char *model;                /* the daemon's name; "" is its default model */
    struct vl2h_msg *msgs;
    size_t n_msgs;
    size_t n_images;            /* over all messages */
    Vl2__Sampling sampling;     /* has_ flags say what was given; stop unused */
    char *stops[VL2H_MAX_STOPS];
    size_t n_stops;
    bool grounding;
    bool logprobs;
    uint32_t top_logprobs;      /* 0..20 alternatives per token (with logprobs) */
};

void vl2h_params_init(struct vl2h_params *p);
void vl2h_params_done(struct vl2h_params *p);
/* Append a message; takes @text (malloc'd) and the images (moved out of
 * @imgs, which the caller then frees without its elements' data).
 * Returns 0 or VL2_ENOMEM / VL2_ELIMIT. */
int vl2h_params_add_msg(struct vl2h_params *p, Vl2__Role role, char *text,
                        struct vl2h_image *imgs, size_t n_imgs, struct vl2_err *err);
/* Add a stop string (copied).  Returns 0, VL2_ELIMIT. */
int vl2h_params_add_stop(struct vl2h_params *p, const char *s, struct vl2_err *err);

/* Decode base64 (standard alphabet, padding optional, whitespace skipped)
 * into a malloc'd buffer.  Returns 0 or VL2_EINVAL (not base64) /
 * VL2_ENOMEM. */
int vl2h_base64_decode(const char *s, size_t len, uint8_t **ret, size_t *ret_size);

/* What one Done said. */
struct vl2h_done {
    Vl2__FinishReason finish;
    uint32_t prompt_tokens;
    uint32_t image_tokens;
    uint32_t generated_tokens;
    long cached_tokens;          /* < 0: the daemon does not report it (see gen.c) */
    double ttft_s;
    double tps;
    Vl2__Box **boxes;            /* copies, owned by the event */
    size_t n_boxes;
};

enum vl2h_event_kind {
    VL2H_EV_TOKEN,     /* text, id, logprob */
    VL2H_EV_DONE,      /* done */
    VL2H_EV_ERROR,     /* err */
    VL2H_EV_GONE,      /* the HTTP client hung up (the generation is cancelled) */
};

/* One alternative of a token (Token.top_logprobs). */
struct vl2h_alt {
    uint32_t id;
    float logprob;
    uint8_t *bytes;              /* the id's bytes alone (maybe part of a character) */
    size_t len;
};

struct vl2h_event {
    enum vl2h_event_kind kind;
    char *text;                  /* TOKEN: the piece, NUL-terminated, malloc'd */
    size_t len;
    uint32_t id;
    bool has_logprob;
    float logprob;
    struct vl2h_alt *top;        /* TOKEN: [n_top], malloc'd, most likely first */
    size_t n_top;
    struct vl2h_done done;
    struct vl2_err err;
};

void vl2h_event_done(struct vl2h_event *ev);

/* A token's bytes @p [n] as a malloc'd NUL-terminated string for JSON, as
 * OpenAI writes a token: valid UTF-8 copied, any other byte (and NUL) as
 * the four characters \xNN.  NULL when out of memory. */
char *vl2h_token_text(const uint8_t *p, size_t n);

/* The "logprob" value of @lp in JSON: -9999 for -inf (OpenAI's value for
 * "too unlikely to say"), as JSON has no infinity. */
double vl2h_json_logprob(float lp);

/* TOKEN @ev as one entry of OpenAI's choices[].logprobs.content (and
 * Ollama's logprobs): {token, logprob, bytes, top_logprobs: [{token,
 * logprob, bytes}...]}, top_logprobs left out when empty unless
 * @empty_top (openai.c).  NULL when out of memory. */
struct cJSON *vl2h_logprob_json(const struct vl2h_event *ev, bool empty_top);

/* Open a libvl2 connection for one request.  Errors: as vl2_client_open. */
int vl2h_connect(struct vl2h_server *srv, struct vl2_client **ret, struct vl2_err *err);

/* ListModels; *@ret_resp (free with vl2__response__free_unpacked) and every
 * directory remembered.  Returns 0 or < 0. */
int vl2h_list_models(struct vl2h_server *srv, struct vl2_client *c, Vl2__Response **ret_resp,
                     struct vl2_err *err);
/* Status; *@ret_resp as above. */
int vl2h_status(struct vl2_client *c, Vl2__Response **ret_resp, struct vl2_err *err);

/* Find @name in a ModelList ("" or NULL: the first ready one, as the daemon
 * picks its default).  A trailing ":latest" is ignored (Ollama clients add
 * it).  Returns the entry or NULL. */
const Vl2__ModelInfo *vl2h_find_model(const Vl2__ModelList *ml, const char *name);

/* Check that the model of @p can serve now: VL2_ENOTFOUND (404) when the
 * daemon does not know it, VL2_EBUSY with "loading" (503) while it loads.
 * Replaces p->model by the daemon's exact name.  @c connected. */
int vl2h_check_model(struct vl2h_server *srv, struct vl2_client *c, struct vl2h_params *p,
                     struct vl2_err *err);

/* Load @name from its remembered directory and wait for ModelLoaded.
 * *@ret_load_s: seconds it took.  Returns 0 or < 0. */
int vl2h_load_model(struct vl2h_server *srv, struct vl2_client *c, const char *name,
                    double *ret_load_s, struct vl2_err *err);
/* UnloadModel.  Returns 0 or < 0. */
int vl2h_unload_model(struct vl2_client *c, const char *name, struct vl2_err *err);

/* Send the Generate of @p on @c and wait for Accepted.  Returns the
 * generation (it owns @c from now on, also on failure) or NULL with @err
 * (the daemon's Error, or a transport failure).  @client_fd: the HTTP
 * client's socket, watched for hang-up (-1: none). */
struct vl2h_gen *vl2h_gen_start(struct vl2h_server *srv, struct vl2_client *c,
                                const struct vl2h_params *p, int client_fd,
                                struct vl2_err *err);

/* Wait for the next event of @g into @ev (vl2h_event_done() it).  After
 * DONE, ERROR or GONE there are no more.  Returns 0, or < 0 when called
 * after the end. */
int vl2h_gen_next(struct vl2h_gen *g, struct vl2h_event *ev);

/* The first event of a streamed answer decides between a stream and an
 * error status: wait for it into @first.  Returns 1 when the stream may
 * start (the caller keeps @first and sends it first); otherwise @first is
 * released and the result of the reply made for it (the daemon's error as
 * a status, or VL2_ECANCELED when the HTTP client has gone) comes back. */
int vl2h_gen_first(struct vl2h_req *rq, struct vl2h_gen *g, struct vl2h_event *first);

/* The daemon's Accepted.queue_position. */
uint32_t vl2h_gen_queue_position(const struct vl2h_gen *g);

/* Cancel what still runs (Cancel, then close the connection) and free.
 * Accepts NULL. */
void vl2h_gen_free(struct vl2h_gen *g);

/* Seconds since the epoch, with fractions. */
double vl2h_now(void);
/* Monotonic seconds. */
double vl2h_mono(void);
/* @prefix and 24 random hex digits into @buf (>= 40 bytes). */
void vl2h_random_id(const char *prefix, char *buf, size_t size);

/* ---- the dialects (openai.c, ollama.c) ----------------------------------- */

int vl2h_openai_chat(struct vl2h_req *rq);
int vl2h_openai_models(struct vl2h_req *rq, const char *one);
int vl2h_health(struct vl2h_req *rq);
int vl2h_metrics_page(struct vl2h_req *rq);

int vl2h_ollama_chat(struct vl2h_req *rq, bool generate);
int vl2h_ollama_tags(struct vl2h_req *rq, bool running);
int vl2h_ollama_version(struct vl2h_req *rq);
int vl2h_ollama_show(struct vl2h_req *rq);

/* ---- JSON request fields (json.c) ------------------------------------------ */

/* The request body as a JSON object, or NULL after replying 400 (or 500 on
 * out-of-memory). */
struct cJSON *vl2h_body_object(struct vl2h_req *rq);

/* Typed optional fields of @o.  Each returns 1 when present (value in
 * *@ret), 0 when absent or null, or VL2_EINVAL with "vl2-http: 'NAME': why"
 * in @err when present with the wrong type or out of [@min, @max]. */
int vl2h_get_number(const struct cJSON *o, const char *name, double min, double max,
                    double *ret, struct vl2_err *err);
int vl2h_get_int(const struct cJSON *o, const char *name, double min, double max,
                 int64_t *ret, struct vl2_err *err);
int vl2h_get_bool(const struct cJSON *o, const char *name, bool *ret, struct vl2_err *err);
int vl2h_get_string(const struct cJSON *o, const char *name, const char **ret,
                    struct vl2_err *err);
/* "stop": a string or an array of strings, added to @p. */
int vl2h_get_stops(const struct cJSON *o, const char *name, struct vl2h_params *p,
                   struct vl2_err *err);

/* The error object of a dialect (see vl2h_reply_error). */
struct cJSON *vl2h_error_json(enum vl2h_dialect d, unsigned status, const char *code,
                              const char *msg);

/* RFC 3339 UTC time with nanoseconds, as Ollama writes created_at. */
void vl2h_rfc3339(double t, char *buf, size_t size);

/* The OpenAI penalties mapped to the daemon's repetition penalty:
 * 2^((frequency_penalty + presence_penalty) / 4), so 0 and 0 leave it off
 * (1), the most either can ask (2 + 2) doubles it, the least (-2 - 2)
 * halves it. */
float vl2h_penalty_map(double frequency_penalty, double presence_penalty);

#endif /* VL2_HTTP_H */

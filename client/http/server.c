/* server.c - vl2-http's HTTP side: libmicrohttpd, one thread per
 * connection; request bodies (bounded), API key, routing, replies in each
 * dialect's error format, streamed bodies. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <microhttpd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"

/* ---- buffers ---------------------------------------------------------- */

int vl2h_buf_add(struct vl2h_buf *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 1024;
        char *p;

        while (cap < b->len + n + 1)
            cap *= 2;
        p = realloc(b->p, cap);
        if (!p)
            return VL2_ENOMEM;
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

int vl2h_buf_str(struct vl2h_buf *b, const char *s)
{
    return vl2h_buf_add(b, s, strlen(s));
}

int vl2h_buf_json(struct vl2h_buf *b, const char *prefix, cJSON *json, const char *suffix)
{
    char *s = json ? cJSON_PrintUnformatted(json) : NULL;
    int r = VL2_ENOMEM;

    cJSON_Delete(json);
    if (s) {
        r = vl2h_buf_str(b, prefix);
        if (r == 0)
            r = vl2h_buf_str(b, s);
        if (r == 0)
            r = vl2h_buf_str(b, suffix);
        cJSON_free(s);
    }
    return r;
}

void vl2h_buf_done(struct vl2h_buf *b)
{
    free(b->p);
    memset(b, 0, sizeof(*b));
}

/* ---- known model directories ------------------------------------------ */

void vl2h_server_remember(struct vl2h_server *srv, const char *name, const char *dir)
{
    size_t i;

    if (strlen(name) >= sizeof(srv->known[0].name) || strlen(dir) >= sizeof(srv->known[0].dir))
        return;
    pthread_mutex_lock(&srv->mu);
    for (i = 0; i < srv->n_known; i++)
        if (!strcmp(srv->known[i].name, name))
            break;
    if (i == srv->n_known && srv->n_known < VL2H_MAX_MODELS)
        srv->n_known++;
    if (i < srv->n_known) {
        snprintf(srv->known[i].name, sizeof(srv->known[i].name), "%s", name);
        snprintf(srv->known[i].dir, sizeof(srv->known[i].dir), "%s", dir);
    }
    pthread_mutex_unlock(&srv->mu);
}

bool vl2h_server_known_dir(struct vl2h_server *srv, const char *name, char *buf, size_t size)
{
    bool found = false;
    size_t i;

    pthread_mutex_lock(&srv->mu);
    for (i = 0; i < srv->n_known && !found; i++) {
        if (!strcmp(srv->known[i].name, name)) {
            snprintf(buf, size, "%s", srv->known[i].dir);
            found = true;
        }
    }
    pthread_mutex_unlock(&srv->mu);
    return found;
}

/* ---- replies ----------------------------------------------------------- */

unsigned vl2h_status_for(int code)
{
    switch (code) {
    case VL2_EINVAL:
    case VL2_EFORMAT:
    case VL2_EUNSUPPORTED:
    case VL2_ELIMIT:
        return 400;
    case VL2_ENOTFOUND:
        return 404;
    case VL2_EPERM:
        return 403;
    case VL2_EBUSY:
        return 429;
    case VL2_ETIMEDOUT:
        return 504;
    case VL2_EIO:
    case VL2_ECANCELED:
    case VL2_EPROTO:
        return 503;   /* the daemon is gone, stopping, or speaks another protocol */
    case VL2_EUNIMPLEMENTED:
        return 501;
    default:
        return 500;   /* ENOMEM, EBACKEND, EABI, EINTERNAL: not the client's fault */
    }
}

static void add_common_headers(struct MHD_Response *resp, const char *type)
{
    (void) MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    (void) MHD_add_response_header(resp, MHD_HTTP_HEADER_SERVER, "vl2-http/" VL2_VERSION);
}

int vl2h_reply(struct vl2h_req *rq, unsigned status, const char *type, char *body)
{
    struct MHD_Response *resp;
    enum MHD_Result ok;

    if (!body)
        return VL2_ENOMEM;
    resp = MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(body);
        return VL2_ENOMEM;
    }
    add_common_headers(resp, type);
    if (status == 401)
        (void) MHD_add_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
    if (status == 429 || status == 503)
        (void) MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, "1");
    ok = MHD_queue_response(rq->conn, status, resp);
    MHD_destroy_response(resp);
    if (ok != MHD_YES)
        return VL2_EIO;
    rq->answered = true;
    rq->status = status;
    return 0;
}

int vl2h_reply_json(struct vl2h_req *rq, unsigned status, cJSON *json)
{
    char *s = json ? cJSON_PrintUnformatted(json) : NULL;
    char *body = NULL;
    int r;

    cJSON_Delete(json);
    if (!s)
        return VL2_ENOMEM;
    body = strdup(s);   /* MHD frees with free(), cJSON may use another allocator */
    cJSON_free(s);
    r = vl2h_reply(rq, status ? status : 200, "application/json", body);
    return r;
}

/* The OpenAI error type for a status. */
static const char *openai_type(unsigned status)
{
    switch (status) {
    case 401: return "authentication_error";
    case 403: return "permission_error";
    case 404: return "not_found_error";
    case 429: return "rate_limit_error";
    case 500: return "server_error";
    case 503: return "service_unavailable";
    case 504: return "timeout";
    default:  return status < 500 ? "invalid_request_error" : "server_error";
    }
}

/* One line: \r and \n become spaces. */
static void one_line(char *s)
{
    for (; *s; s++)
        if (*s == '\r' || *s == '\n')
            *s = ' ';
}

cJSON *vl2h_error_json(enum vl2h_dialect d, unsigned status, const char *code, const char *msg)
{
    cJSON *o = cJSON_CreateObject(), *e;

    if (d == VL2H_OLLAMA) {
        cJSON_AddStringToObject(o, "error", msg);
        return o;
    }
    e = cJSON_AddObjectToObject(o, "error");
    cJSON_AddStringToObject(e, "message", msg);
    cJSON_AddStringToObject(e, "type", openai_type(status));
    cJSON_AddNullToObject(e, "param");
    if (code)
        cJSON_AddStringToObject(e, "code", code);
    else
        cJSON_AddNullToObject(e, "code");
    return o;
}

int vl2h_reply_error(struct vl2h_req *rq, unsigned status, const char *code, const char *fmt,
                     ...)
{
    char msg[VL2_ERR_MSG_SIZE];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    one_line(msg);
    return vl2h_reply_json(rq, status, vl2h_error_json(rq->dialect, status, code, msg));
}

int vl2h_reply_vl2_error(struct vl2h_req *rq, const struct vl2_err *err)
{
    unsigned status = vl2h_status_for(err->code);
    const char *code = NULL;

    vl2h_metrics_daemon_error(&rq->srv->metrics, err->code);
    if (err->code == VL2_EBUSY && strstr(err->msg, "loading"))
        status = 503;     /* a model loading is no rate limit */
    if (status == 404 && strstr(err->msg, "model"))
        code = "model_not_found";
    else if (err->code == VL2_ELIMIT)
        code = "limit_exceeded";
    return vl2h_reply_error(rq, status, code, "%s", err->msg[0] ? err->msg
                                                              : vl2_status_name(err->code));
}

int vl2h_req_client_fd(const struct vl2h_req *rq)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(rq->conn, MHD_CONNECTION_INFO_CONNECTION_FD);

    return ci ? ci->connect_fd : -1;
}

/* ---- streamed bodies ----------------------------------------------------- */

struct vl2h_stream {
    vl2h_stream_fn fn;
    vl2h_stream_free_fn free_fn;
    void *ud;
    struct vl2h_buf out;     /* produced, not yet handed to MHD */
    size_t off;              /* bytes of out handed already */
    bool end;                /* fn said there is no more */
};

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    struct vl2h_stream *st = cls;
    size_t n;

    (void) pos;
    while (st->off == st->out.len) {
        int r;

        st->off = 0;
        st->out.len = 0;
        if (st->end)
            return MHD_CONTENT_READER_END_OF_STREAM;
        r = st->fn(st->ud, &st->out);
        if (r < 0)
            return MHD_CONTENT_READER_END_WITH_ERROR;
        if (r == 0)
            st->end = true;
    }
    n = st->out.len - st->off;
    if (n > max)
        n = max;
    memcpy(buf, st->out.p + st->off, n);
    st->off += n;
    return (ssize_t) n;
}

static void stream_free(void *cls)
{
    struct vl2h_stream *st = cls;

    st->free_fn(st->ud);
    vl2h_buf_done(&st->out);
    free(st);
}

int vl2h_reply_stream(struct vl2h_req *rq, const char *type, vl2h_stream_fn fn,
                      vl2h_stream_free_fn free_fn, void *ud)
{
    struct vl2h_stream *st = calloc(1, sizeof(*st));
    struct MHD_Response *resp;
    enum MHD_Result ok;

    if (!st) {
        free_fn(ud);
        return VL2_ENOMEM;
    }
    st->fn = fn;
    st->free_fn = free_fn;
    st->ud = ud;
    resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 * 1024, stream_read, st,
                                             stream_free);
    if (!resp) {
        stream_free(st);
        return VL2_ENOMEM;
    }
    add_common_headers(resp, type);
    (void) MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    ok = MHD_queue_response(rq->conn, 200, resp);
    MHD_destroy_response(resp);   /* frees st through stream_free when MHD is done */
    if (ok != MHD_YES)
        return VL2_EIO;
    rq->answered = true;
    rq->status = 200;
    return 0;
}

/* ---- routing ------------------------------------------------------------- */

static enum vl2h_route route_of(const char *url, const char **ret_rest)
{
    static const struct { const char *path; enum vl2h_route route; } table[] = {
        { "/v1/chat/completions", VL2H_ROUTE_CHAT_COMPLETIONS },
        { "/chat/completions", VL2H_ROUTE_CHAT_COMPLETIONS },
        { "/v1/models", VL2H_ROUTE_MODELS },
        { "/health", VL2H_ROUTE_HEALTH },
        { "/metrics", VL2H_ROUTE_METRICS },
        { "/api/chat", VL2H_ROUTE_OLLAMA_CHAT },
        { "/api/generate", VL2H_ROUTE_OLLAMA_GENERATE },
        { "/api/tags", VL2H_ROUTE_OLLAMA_TAGS },
        { "/api/version", VL2H_ROUTE_OLLAMA_VERSION },
        { "/api/show", VL2H_ROUTE_OLLAMA_SHOW },
        { "/api/ps", VL2H_ROUTE_OLLAMA_PS },
        { "/", VL2H_ROUTE_ROOT },
    };
    size_t i, n = strlen(url);

    *ret_rest = NULL;
    /* a trailing slash is the same route */
    while (n > 1 && url[n - 1] == '/')
        n--;
    for (i = 0; i < sizeof(table) / sizeof(table[0]); i++)
        if (strlen(table[i].path) == n && !strncmp(url, table[i].path, n))
            return table[i].route;
    if (!strncmp(url, "/v1/models/", 11) && url[11]) {
        *ret_rest = url + 11;
        return VL2H_ROUTE_MODEL_ONE;
    }
    return VL2H_ROUTE_OTHER;
}

static bool route_is_post(enum vl2h_route r)
{
    return r == VL2H_ROUTE_CHAT_COMPLETIONS || r == VL2H_ROUTE_OLLAMA_CHAT ||
           r == VL2H_ROUTE_OLLAMA_GENERATE || r == VL2H_ROUTE_OLLAMA_SHOW;
}

/* Constant-time comparison of the presented key with ours. */
static bool key_matches(const char *given, const char *want)
{
    size_t gl = strlen(given), wl = strlen(want), i;
    unsigned char d = gl != wl;

    for (i = 0; i < wl; i++)
        d |= (unsigned char) (want[i] ^ (i < gl ? given[i] : 0));
    return d == 0;
}

static bool authorized(struct vl2h_req *rq)
{
    const char *key = rq->srv->conf->api_key, *h;

    if (!key || !key[0])
        return true;
    h = MHD_lookup_connection_value(rq->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!h || strncasecmp(h, "Bearer ", 7))
        return false;
    h += 7;
    while (*h == ' ')
        h++;
    return key_matches(h, key);
}

static int dispatch(struct vl2h_req *rq, const char *method, const char *url,
                    const char *rest)
{
    bool is_get = !strcmp(method, "GET") || !strcmp(method, "HEAD");
    bool is_post = !strcmp(method, "POST");

    if (rq->route == VL2H_ROUTE_OTHER)
        return vl2h_reply_error(rq, 404, "not_found", "vl2-http: no route '%s %s'", method,
                                url);
    if (route_is_post(rq->route) ? !is_post : !is_get)
        return vl2h_reply_error(rq, 405, "method_not_allowed",
                                "vl2-http: method '%s' is not allowed here (use %s)", method,
                                route_is_post(rq->route) ? "POST" : "GET");
    if (rq->route != VL2H_ROUTE_HEALTH && rq->route != VL2H_ROUTE_ROOT && !authorized(rq))
        return vl2h_reply_error(rq, 401, "invalid_api_key",
                                "vl2-http: missing or wrong API key (send 'Authorization: "
                                "Bearer KEY')");
    switch (rq->route) {
    case VL2H_ROUTE_ROOT:
        return vl2h_reply(rq, 200, "text/plain; charset=utf-8", strdup("vl2-http is running"));
    case VL2H_ROUTE_CHAT_COMPLETIONS:
        return vl2h_openai_chat(rq);
    case VL2H_ROUTE_MODELS:
        return vl2h_openai_models(rq, NULL);
    case VL2H_ROUTE_MODEL_ONE:
        return vl2h_openai_models(rq, rest);
    case VL2H_ROUTE_HEALTH:
        return vl2h_health(rq);
    case VL2H_ROUTE_METRICS:
        return vl2h_metrics_page(rq);
    case VL2H_ROUTE_OLLAMA_CHAT:
        return vl2h_ollama_chat(rq, false);
    case VL2H_ROUTE_OLLAMA_GENERATE:
        return vl2h_ollama_chat(rq, true);
    case VL2H_ROUTE_OLLAMA_TAGS:
        return vl2h_ollama_tags(rq, false);
    case VL2H_ROUTE_OLLAMA_PS:
        return vl2h_ollama_tags(rq, true);
    case VL2H_ROUTE_OLLAMA_VERSION:
        return vl2h_ollama_version(rq);
    case VL2H_ROUTE_OLLAMA_SHOW:
        return vl2h_ollama_show(rq);
    default:
        return vl2h_reply_error(rq, 404, "not_found", "vl2-http: no such route");
    }
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **con_cls)
{
    struct vl2h_server *srv = cls;
    struct vl2h_req *rq = *con_cls;
    const char *rest = NULL;
    int r;

    (void) version;
    if (!rq) {
        const char *cl;

        rq = calloc(1, sizeof(*rq));
        if (!rq)
            return MHD_NO;
        rq->srv = srv;
        rq->conn = conn;
        rq->route = route_of(url, &rest);
        rq->dialect = !strncmp(url, "/api/", 5) ? VL2H_OLLAMA : VL2H_OPENAI;
        *con_cls = rq;
        vl2h_metrics_in_flight(&srv->metrics, 1);
        rq->counted = true;
        cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl && strtoull(cl, NULL, 10) > srv->conf->max_body) {
            /* answered before the body is read; MHD closes the connection after */
            rq->too_large = true;
            r = vl2h_reply_error(rq, 413, "request_too_large",
                                 "vl2-http: the request body has %s bytes, at most %zu "
                                 "(max_body)", cl, srv->conf->max_body);
            return r < 0 ? MHD_NO : MHD_YES;
        }
        return MHD_YES;
    }
    if (*upload_data_size) {
        size_t n = *upload_data_size;

        *upload_data_size = 0;
        if (rq->answered)
            return MHD_YES;   /* the 413 is queued: the rest is dropped */
        if (rq->too_large || rq->body_len + n > srv->conf->max_body) {
            /* MHD cannot answer in the middle of an upload: drop the rest
             * and answer 413 at its end, or close when it goes on and on */
            if (!rq->too_large) {
                rq->too_large = true;
                free(rq->body);
                rq->body = NULL;
                rq->body_len = 0;
            }
            rq->dropped += n;
            return rq->dropped > 4 * (uint64_t) srv->conf->max_body + (1u << 20) ? MHD_NO
                                                                                 : MHD_YES;
        }
        {
            char *b = realloc(rq->body, rq->body_len + n + 1);

            if (!b)
                return MHD_NO;
            rq->body = b;
            memcpy(rq->body + rq->body_len, upload_data, n);
            rq->body_len += n;
            rq->body[rq->body_len] = '\0';
        }
        return MHD_YES;
    }
    if (rq->answered)
        return MHD_YES;
    if (rq->too_large) {
        r = vl2h_reply_error(rq, 413, "request_too_large",
                             "vl2-http: the request body is over %zu bytes (max_body)",
                             srv->conf->max_body);
        return r < 0 ? MHD_NO : MHD_YES;
    }
    (void) route_of(url, &rest);
    r = dispatch(rq, method, url, rest);
    /* a handler that could not queue anything: MHD answers 500 by closing */
    return r < 0 && !rq->answered ? MHD_NO : MHD_YES;
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    struct vl2h_server *srv = cls;
    struct vl2h_req *rq = *con_cls;

    (void) conn;
    (void) toe;
    if (!rq)
        return;
    if (rq->answered)
        vl2h_metrics_response(&srv->metrics, rq->route, rq->status);
    if (rq->counted)
        vl2h_metrics_in_flight(&srv->metrics, -1);
    free(rq->body);
    free(rq);
    *con_cls = NULL;
}

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void) cls;
    fputs("vl2-http: libmicrohttpd: ", stderr);
    vfprintf(stderr, fmt, ap);
}

int vl2h_server_start(struct vl2h_server *srv, const struct vl2h_conf *conf, int listen_fd,
                      struct vl2_err *err)
{
    srv->conf = conf;
    srv->start_time = vl2h_now();
    vl2h_metrics_init(&srv->metrics);
    pthread_mutex_init(&srv->mu, NULL);
    srv->mhd = MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION | MHD_USE_POLL_INTERNAL_THREAD |
                                    MHD_USE_ERROR_LOG,
                                0, NULL, NULL, on_request, srv,
                                MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL,
                                MHD_OPTION_LISTEN_SOCKET, listen_fd,
                                MHD_OPTION_CONNECTION_LIMIT, conf->max_connections,
                                MHD_OPTION_CONNECTION_TIMEOUT, 120u,
                                MHD_OPTION_NOTIFY_COMPLETED, on_completed, srv,
                                MHD_OPTION_END);
    if (!srv->mhd) {
        vl2h_metrics_done(&srv->metrics);
        pthread_mutex_destroy(&srv->mu);
        return vl2_err_set(err, VL2_EIO, "vl2-http: cannot start the HTTP server");
    }
    return 0;
}

void vl2h_server_stop(struct vl2h_server *srv)
{
    if (!srv->mhd)
        return;
    MHD_stop_daemon(srv->mhd);
    srv->mhd = NULL;
    vl2h_metrics_done(&srv->metrics);
    pthread_mutex_destroy(&srv->mu);
}

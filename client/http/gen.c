/* gen.c - vl2-http's side of the native protocol: a libvl2 connection per
 * HTTP request, model lookup, load/unload, one Generate and its events. */
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "http.h"
#include "ipc.h"

/* ---- parameters ------------------------------------------------------- */

void vl2h_params_init(struct vl2h_params *p)
{
    memset(p, 0, sizeof(*p));
    vl2__sampling__init(&p->sampling);
}

void vl2h_params_done(struct vl2h_params *p)
{
    size_t i, j;

    if (!p)
        return;
    for (i = 0; i < p->n_msgs; i++) {
        for (j = 0; j < p->msgs[i].n_images; j++)
            free(p->msgs[i].images[j].data);
        free(p->msgs[i].images);
        free(p->msgs[i].text);
    }
    free(p->msgs);
    for (i = 0; i < p->n_stops; i++)
        free(p->stops[i]);
    free(p->model);
    vl2h_params_init(p);
}

int vl2h_params_add_msg(struct vl2h_params *p, Vl2__Role role, char *text,
                        struct vl2h_image *imgs, size_t n_imgs, struct vl2_err *err)
{
    struct vl2h_msg *m;

    if (p->n_images + n_imgs > VL2H_MAX_IMAGES) {
        free(text);
        return vl2_err_set(err, VL2_ELIMIT, "vl2-http: %zu images, at most %d",
                           p->n_images + n_imgs, VL2H_MAX_IMAGES);
    }
    m = realloc(p->msgs, (p->n_msgs + 1) * sizeof(*m));
    if (!m) {
        free(text);
        return vl2_err_set(err, VL2_ENOMEM, "vl2-http: out of memory");
    }
    p->msgs = m;
    m = &p->msgs[p->n_msgs];
    memset(m, 0, sizeof(*m));
    m->role = role;
    m->text = text;
    if (n_imgs) {
        m->images = calloc(n_imgs, sizeof(*m->images));
        if (!m->images) {
            free(text);
            return vl2_err_set(err, VL2_ENOMEM, "vl2-http: out of memory");
        }
        memcpy(m->images, imgs, n_imgs * sizeof(*imgs));
        memset(imgs, 0, n_imgs * sizeof(*imgs));
        m->n_images = n_imgs;
    }
    p->n_msgs++;
    p->n_images += n_imgs;
    return 0;
}

int vl2h_params_add_stop(struct vl2h_params *p, const char *s, struct vl2_err *err)
{
    if (p->n_stops == VL2H_MAX_STOPS)
        return vl2_err_set(err, VL2_ELIMIT, "vl2-http: 'stop': at most %d strings",
                           VL2H_MAX_STOPS);
    p->stops[p->n_stops] = strdup(s);
    if (!p->stops[p->n_stops])
        return vl2_err_set(err, VL2_ENOMEM, "vl2-http: out of memory");
    p->n_stops++;
    return 0;
}

/* ---- base64 ------------------------------------------------------------ */

static int b64_value(unsigned char ch)
{
    if (ch >= 'A' && ch <= 'Z')
        return ch - 'A';
    if (ch >= 'a' && ch <= 'z')
        return ch - 'a' + 26;
    if (ch >= '0' && ch <= '9')
        return ch - '0' + 52;
    if (ch == '+' || ch == '-')
        return 62;
    if (ch == '/' || ch == '_')
        return 63;
    return -1;
}

int vl2h_base64_decode(const char *s, size_t len, uint8_t **ret, size_t *ret_size)
{
    uint8_t *out = malloc(len / 4 * 3 + 3);
    uint32_t acc = 0;
    size_t n = 0, i, pad = 0;
    int bits = 0;

    if (!out)
        return VL2_ENOMEM;
    for (i = 0; i < len; i++) {
        unsigned char ch = (unsigned char) s[i];
        int v;

        if (ch == ' ' || ch == '\n' || ch == '\r' || ch == '\t')
            continue;
        if (ch == '=') {
            pad++;
            continue;
        }
        v = b64_value(ch);
        if (v < 0 || pad) {   /* a bad character, or data after padding */
            free(out);
            return VL2_EINVAL;
        }
        acc = (acc << 6) | (uint32_t) v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[n++] = (uint8_t) (acc >> bits);
        }
    }
    /* 6 leftover bits cannot come from whole bytes; nor can 3 pads */
    if (bits >= 6 || pad > 2 || n == 0) {
        free(out);
        return VL2_EINVAL;
    }
    *ret = out;
    *ret_size = n;
    return 0;
}

/* ---- time and ids ------------------------------------------------------ */

double vl2h_now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (double) ts.tv_sec + (double) ts.tv_nsec * 1e-9;
}

double vl2h_mono(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double) ts.tv_sec + (double) ts.tv_nsec * 1e-9;
}

void vl2h_random_id(const char *prefix, char *buf, size_t size)
{
    uint8_t r[12];
    size_t off, i;

    if (getrandom(r, sizeof(r), 0) != (ssize_t) sizeof(r)) {
        uint64_t t = (uint64_t) (vl2h_mono() * 1e9);

        for (i = 0; i < sizeof(r); i++)
            r[i] = (uint8_t) (t >> (i % 8 * 8)) ^ (uint8_t) (i * 37);
    }
    off = (size_t) snprintf(buf, size, "%s", prefix);
    for (i = 0; i < sizeof(r) && off + 2 < size; i++)
        off += (size_t) snprintf(buf + off, size - off, "%02x", r[i]);
}

/* ---- connections and simple requests ------------------------------------ */

int vl2h_connect(struct vl2h_server *srv, struct vl2_client **ret, struct vl2_err *err)
{
    struct vl2_client_opts o = vl2_client_default_opts();
    int r;

    o.socket_path = srv->conf->daemon_socket;
    o.timeout_ms = srv->conf->daemon_timeout_ms;
    o.client_name = "vl2-http " VL2_VERSION;
    r = vl2_client_open(&o, ret, err);
    /* no daemon, or one that refuses us: the service is unavailable (503),
     * which is no "not found" of the client's asking */
    if ((r == VL2_ENOTFOUND || r == VL2_EPERM) && err)
        err->code = VL2_EIO;
    return r == VL2_ENOTFOUND || r == VL2_EPERM ? VL2_EIO : r;
}

/* A deep copy of @resp (protobuf-c has no copy: pack and unpack). */
static Vl2__Response *dup_response(const Vl2__Response *resp)
{
    size_t n = vl2__response__get_packed_size(resp);
    uint8_t *buf = malloc(n ? n : 1);
    Vl2__Response *copy;

    if (!buf)
        return NULL;
    vl2__response__pack(resp, buf);
    copy = vl2__response__unpack(NULL, n, buf);
    free(buf);
    return copy;
}

struct keep {
    uint64_t id;
    Vl2__Response *final;    /* a copy of the final response of request id */
    bool nomem;
};

static int keep_final(const Vl2__Response *resp, void *ud)
{
    struct keep *k = ud;

    if (resp->id == k->id && vl2_response_is_final(resp) && !k->final) {
        k->final = dup_response(resp);
        if (!k->final)
            k->nomem = true;
    }
    return 0;
}

/* Send @req and return its final response in *@ret; an Error reply comes
 * back as its code and message instead. */
static int call(struct vl2_client *c, Vl2__Request *req, Vl2__Response **ret,
                struct vl2_err *err)
{
    struct keep k = { 0 };
    int r;

    r = vl2_client_send(c, req, NULL, 0, &k.id, err);
    if (r < 0)
        return r;
    r = vl2_client_wait(c, k.id, keep_final, &k, err);
    if (r == 0 && k.nomem)
        r = vl2_err_set(err, VL2_ENOMEM, "vl2-http: out of memory");
    if (r < 0) {
        if (k.final)
            vl2__response__free_unpacked(k.final, NULL);
        return r;
    }
    *ret = k.final;
    return 0;
}

int vl2h_list_models(struct vl2h_server *srv, struct vl2_client *c, Vl2__Response **ret_resp,
                     struct vl2_err *err)
{
    Vl2__Request req = VL2__REQUEST__INIT;
    Vl2__ListModels lm = VL2__LIST_MODELS__INIT;
    Vl2__Response *resp = NULL;
    size_t i;
    int r;

    req.body_case = VL2__REQUEST__BODY_LIST_MODELS;
    req.list_models = &lm;
    r = call(c, &req, &resp, err);
    if (r < 0)
        return r;
    if (resp->body_case != VL2__RESPONSE__BODY_MODELS || !resp->models) {
        vl2__response__free_unpacked(resp, NULL);
        return vl2_err_set(err, VL2_EPROTO, "vl2-http: vl2d answered ListModels with '%s'",
                           vl2_ipc_response_name(resp->body_case));
    }
    for (i = 0; i < resp->models->n_models; i++) {
        const Vl2__ModelInfo *mi = resp->models->models[i];

        if (mi->name && mi->dir && mi->dir[0])
            vl2h_server_remember(srv, mi->name, mi->dir);
    }
    *ret_resp = resp;
    return 0;
}

int vl2h_status(struct vl2_client *c, Vl2__Response **ret_resp, struct vl2_err *err)
{
    Vl2__Request req = VL2__REQUEST__INIT;
    Vl2__Status st = VL2__STATUS__INIT;
    Vl2__Response *resp = NULL;
    int r;

    req.body_case = VL2__REQUEST__BODY_STATUS;
    req.status = &st;
    r = call(c, &req, &resp, err);
    if (r < 0)
        return r;
    if (resp->body_case != VL2__RESPONSE__BODY_STATUS || !resp->status) {
        vl2__response__free_unpacked(resp, NULL);
        return vl2_err_set(err, VL2_EPROTO, "vl2-http: vl2d answered Status with '%s'",
                           vl2_ipc_response_name(resp->body_case));
    }
    *ret_resp = resp;
    return 0;
}

/* @name without a trailing ":latest". */
static bool same_model(const char *daemon_name, const char *name)
{
    size_t n = strlen(name), k = strlen(":latest");

    if (!strcmp(daemon_name, name))
        return true;
    return n > k && !strcmp(name + n - k, ":latest") && strlen(daemon_name) == n - k &&
           !strncmp(daemon_name, name, n - k);
}

const Vl2__ModelInfo *vl2h_find_model(const Vl2__ModelList *ml, const char *name)
{
    size_t i;

    for (i = 0; ml && i < ml->n_models; i++) {
        const Vl2__ModelInfo *mi = ml->models[i];

        if (!mi->name)
            continue;
        if (name && name[0] ? same_model(mi->name, name)
                            : mi->state != VL2__MODEL_STATE__MODEL_STATE_FAILED)
            return mi;
    }
    return NULL;
}

int vl2h_check_model(struct vl2h_server *srv, struct vl2_client *c, struct vl2h_params *p,
                     struct vl2_err *err)
{
    Vl2__Response *resp = NULL;
    const Vl2__ModelInfo *mi;
    char *name;
    int r;

    r = vl2h_list_models(srv, c, &resp, err);
    if (r == VL2_EUNIMPLEMENTED)
        return 0;   /* a daemon without ListModels: it checks the name itself */
    if (r < 0)
        return r;
    mi = vl2h_find_model(resp->models, p->model);
    if (!mi) {
        if (p->model && p->model[0])
            r = vl2_err_set(err, VL2_ENOTFOUND, "vl2-http: model '%s' is not loaded in vl2d",
                            p->model);
        else
            r = vl2_err_set(err, VL2_ENOTFOUND, "vl2-http: vl2d has no model loaded");
    } else if (mi->state == VL2__MODEL_STATE__MODEL_STATE_LOADING) {
        r = vl2_err_set(err, VL2_EBUSY, "vl2-http: model '%s' is loading, try again shortly",
                        mi->name);
    } else if (mi->state == VL2__MODEL_STATE__MODEL_STATE_UNLOADING) {
        r = vl2_err_set(err, VL2_EBUSY, "vl2-http: model '%s' is being unloaded", mi->name);
    } else if (mi->state == VL2__MODEL_STATE__MODEL_STATE_FAILED) {
        r = vl2_err_set(err, VL2_EBACKEND, "vl2-http: model '%s' failed to load: %s", mi->name,
                        mi->error ? mi->error : "no reason given");
    } else {
        name = strdup(mi->name);
        if (!name) {
            r = vl2_err_set(err, VL2_ENOMEM, "vl2-http: out of memory");
        } else {
            free(p->model);
            p->model = name;
        }
    }
    vl2__response__free_unpacked(resp, NULL);
    return r;
}

int vl2h_load_model(struct vl2h_server *srv, struct vl2_client *c, const char *name,
                    double *ret_load_s, struct vl2_err *err)
{
    Vl2__Request req = VL2__REQUEST__INIT;
    Vl2__LoadModel lm = VL2__LOAD_MODEL__INIT;
    Vl2__Response *resp = NULL;
    char dir[1024];
    double t0 = vl2h_mono();
    int r;

    if (!vl2h_server_known_dir(srv, name, dir, sizeof(dir)))
        return vl2_err_set(err, VL2_ENOTFOUND, "vl2-http: model '%s' is not loaded and its "
                           "directory is unknown (load it with 'vl2 load')", name);
    lm.name = (char *) name;
    lm.dir = dir;
    req.body_case = VL2__REQUEST__BODY_LOAD_MODEL;
    req.load_model = &lm;
    r = call(c, &req, &resp, err);
    if (r < 0)
        return r;
    vl2__response__free_unpacked(resp, NULL);
    *ret_load_s = vl2h_mono() - t0;
    return 0;
}

int vl2h_unload_model(struct vl2_client *c, const char *name, struct vl2_err *err)
{
    Vl2__Request req = VL2__REQUEST__INIT;
    Vl2__UnloadModel um = VL2__UNLOAD_MODEL__INIT;
    Vl2__Response *resp = NULL;
    int r;

    um.name = (char *) name;
    req.body_case = VL2__REQUEST__BODY_UNLOAD_MODEL;
    req.unload_model = &um;
    r = call(c, &req, &resp, err);
    if (r < 0)
        return r;
    vl2__response__free_unpacked(resp, NULL);
    return 0;
}

/* ---- one generation ----------------------------------------------------- */

struct vl2h_gen {
    struct vl2_client *c;      /* owned */
    uint64_t id;               /* of the Generate */
    int client_fd;             /* the HTTP client's socket, watched for hang-up; -1 none */
    int timeout_ms;            /* longest silence of the daemon */
    uint32_t queue_position;
    bool accepted;             /* Accepted came */
    bool ended;                /* the final event was returned */
    struct vl2h_event *ev;     /* where the response callback writes */
    bool got;                  /* the callback produced an event */
};

/* Token.top_logprobs of @t into @ev (copied).  Returns 0 or VL2_ENOMEM. */
static int take_top(struct vl2h_event *ev, const Vl2__Token *t)
{
    size_t i;

    if (!t->n_top_logprobs)
        return 0;
    ev->top = calloc(t->n_top_logprobs, sizeof(*ev->top));
    if (!ev->top)
        return VL2_ENOMEM;
    ev->n_top = t->n_top_logprobs;
    for (i = 0; i < t->n_top_logprobs; i++) {
        const Vl2__TokenAlternative *a = t->top_logprobs[i];
        struct vl2h_alt *o = &ev->top[i];

        o->id = a->id;
        o->logprob = a->has_logprob ? a->logprob : -INFINITY;
        o->bytes = malloc(a->text.len ? a->text.len : 1);
        if (!o->bytes)
            return VL2_ENOMEM;
        if (a->text.len)
            memcpy(o->bytes, a->text.data, a->text.len);
        o->len = a->text.len;
    }
    return 0;
}

/* Length of the well-formed UTF-8 character at @p [n] (Unicode table 3-7),
 * 0 when the bytes there are not one. */
static size_t utf8_len(const uint8_t *p, size_t n)
{
    uint8_t b = p[0], lo = 0x80, hi = 0xbf;
    size_t len, i;

    if (b < 0x80)
        return 1;
    len = b >= 0xc2 && b <= 0xdf ? 2 : b >= 0xe0 && b <= 0xef ? 3 : b >= 0xf0 && b <= 0xf4 ? 4 : 0;
    if (!len || n < len)
        return 0;
    if (b == 0xe0)
        lo = 0xa0;
    else if (b == 0xed)
        hi = 0x9f;
    else if (b == 0xf0)
        lo = 0x90;
    else if (b == 0xf4)
        hi = 0x8f;
    if (p[1] < lo || p[1] > hi)
        return 0;
    for (i = 2; i < len; i++)
        if (p[i] < 0x80 || p[i] > 0xbf)
            return 0;
    return len;
}

char *vl2h_token_text(const uint8_t *p, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    char *s = malloc(4 * n + 1), *q = s;
    size_t i = 0, l;

    if (!s)
        return NULL;
    while (i < n) {
        l = p[i] ? utf8_len(p + i, n - i) : 0;
        if (l) {
            memcpy(q, p + i, l);
            q += l;
            i += l;
            continue;
        }
        *q++ = '\\';
        *q++ = 'x';
        *q++ = hex[p[i] >> 4];
        *q++ = hex[p[i] & 15];
        i++;
    }
    *q = '\0';
    return s;
}

double vl2h_json_logprob(float lp)
{
    return isfinite(lp) ? lp : -9999.0;
}

void vl2h_event_done(struct vl2h_event *ev)
{
    size_t i;

    if (!ev)
        return;
    free(ev->text);
    for (i = 0; i < ev->n_top; i++)
        free(ev->top[i].bytes);
    free(ev->top);
    for (i = 0; i < ev->done.n_boxes; i++) {
        free(ev->done.boxes[i]->label);
        free(ev->done.boxes[i]);
    }
    free(ev->done.boxes);
    memset(ev, 0, sizeof(*ev));
}

static int take_done(struct vl2h_event *ev, const Vl2__Done *d)
{
    size_t i;

    ev->kind = VL2H_EV_DONE;
    ev->done.finish = d->finish_reason;
    ev->done.prompt_tokens = d->prompt_tokens;
    ev->done.image_tokens = d->image_tokens;
    ev->done.generated_tokens = d->generated_tokens;
    /* Prompt tokens whose KV came from vl2d's prefix cache (issue 16); a
     * daemon that does not report them leaves the field unset: -1, and the
     * OpenAI usage then has no prompt_tokens_details. */
    ev->done.cached_tokens = d->has_cached_tokens ? (long) d->cached_tokens : -1;
    ev->done.ttft_s = d->time_to_first_token_s;
    ev->done.tps = d->decode_tokens_per_s;
    if (d->has_text && d->text.len) {
        ev->text = malloc(d->text.len + 1);
        if (!ev->text)
            return VL2_ENOMEM;
        memcpy(ev->text, d->text.data, d->text.len);
        ev->text[d->text.len] = '\0';
        ev->len = d->text.len;
    }
    if (d->n_boxes) {
        ev->done.boxes = calloc(d->n_boxes, sizeof(*ev->done.boxes));
        if (!ev->done.boxes)
            return VL2_ENOMEM;
        for (i = 0; i < d->n_boxes; i++) {
            Vl2__Box *b = malloc(sizeof(*b));

            if (!b)
                return VL2_ENOMEM;
            *b = *d->boxes[i];
            b->label = strdup(d->boxes[i]->label ? d->boxes[i]->label : "");
            ev->done.boxes[i] = b;
            ev->done.n_boxes = i + 1;
            if (!b->label)
                return VL2_ENOMEM;
        }
    }
    return 0;
}

static int on_gen_response(const Vl2__Response *resp, void *ud)
{
    struct vl2h_gen *g = ud;
    struct vl2h_event *ev = g->ev;

    if (!ev || g->got)
        return 0;   /* one event per call: libvl2 hands one response per recv */
    if (resp->id == 0 && resp->body_case == VL2__RESPONSE__BODY_ERROR) {
        /* about the connection: it is closing */
    } else if (!resp->has_id || resp->id != g->id) {
        return 0;   /* the Ack of our Cancel, or something else */
    }
    switch (resp->body_case) {
    case VL2__RESPONSE__BODY_ACCEPTED:
        g->queue_position = resp->accepted->queue_position;
        g->accepted = true;
        break;
    case VL2__RESPONSE__BODY_PROGRESS:
        break;
    case VL2__RESPONSE__BODY_TOKEN: {
        const Vl2__Token *t = resp->token;

        ev->kind = VL2H_EV_TOKEN;
        ev->text = malloc(t->text.len + 1);
        if (!ev->text) {
            ev->kind = VL2H_EV_ERROR;
            (void) vl2_err_set(&ev->err, VL2_ENOMEM, "vl2-http: out of memory");
        } else {
            if (t->text.len)
                memcpy(ev->text, t->text.data, t->text.len);
            ev->text[t->text.len] = '\0';
            ev->len = t->text.len;
        }
        ev->id = t->id;
        ev->has_logprob = t->has_logprob;
        ev->logprob = t->logprob;
        if (ev->kind == VL2H_EV_TOKEN && take_top(ev, t) < 0) {
            vl2h_event_done(ev);
            ev->kind = VL2H_EV_ERROR;
            (void) vl2_err_set(&ev->err, VL2_ENOMEM, "vl2-http: out of memory");
        }
        g->got = true;
        break;
    }
    case VL2__RESPONSE__BODY_DONE:
        if (take_done(ev, resp->done) < 0) {
            vl2h_event_done(ev);
            ev->kind = VL2H_EV_ERROR;
            (void) vl2_err_set(&ev->err, VL2_ENOMEM, "vl2-http: out of memory");
        }
        g->got = true;
        break;
    case VL2__RESPONSE__BODY_ERROR: {
        const Vl2__Error *e = resp->error;
        int code = e && e->has_code && e->code < 0 ? e->code : VL2_EINTERNAL;

        ev->kind = VL2H_EV_ERROR;
        (void) vl2_err_set(&ev->err, code, "vl2d: %s",
                           e && e->message && e->message[0] ? e->message
                                                            : vl2_status_name(code));
        g->got = true;
        break;
    }
    default:
        ev->kind = VL2H_EV_ERROR;
        (void) vl2_err_set(&ev->err, VL2_EPROTO, "vl2-http: vl2d answered a Generate with '%s'",
                           vl2_ipc_response_name(resp->body_case));
        g->got = true;
        break;
    }
    return 0;
}

/* True when the HTTP peer has closed or reset its end. */
static bool client_gone(int fd, short revents)
{
    char b;
    ssize_t n;

    if (revents & (POLLHUP | POLLERR))
        return true;
    if (!(revents & (POLLRDHUP | POLLIN)))
        return false;
    /* readable: a pipelined request is no hang-up, an EOF is */
    n = recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

/* Receive until the callback produced an event, the client hung up, or
 * the daemon stayed silent too long. */
static void receive(struct vl2h_gen *g, struct vl2h_event *ev)
{
    bool watch = g->client_fd >= 0;

    g->ev = ev;
    g->got = false;
    while (!g->got) {
        struct pollfd p[2] = {
            { .fd = vl2_client_fd(g->c), .events = POLLIN },
            { .fd = g->client_fd, .events = POLLRDHUP },
        };
        int r = poll(p, watch ? 2 : 1, g->timeout_ms);

        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            ev->kind = VL2H_EV_ERROR;
            (void) vl2_err_set(&ev->err, VL2_EIO, "vl2-http: poll: %s", strerror(errno));
            break;
        }
        if (r == 0) {
            ev->kind = VL2H_EV_ERROR;
            (void) vl2_err_set(&ev->err, VL2_ETIMEDOUT, "vl2-http: vl2d sent nothing for %d ms",
                               g->timeout_ms);
            break;
        }
        if (watch && p[1].revents) {
            if (client_gone(g->client_fd, p[1].revents)) {
                ev->kind = VL2H_EV_GONE;
                break;
            }
            /* data from a client that pipelines: stop watching (MHD reads it later) */
            if (p[1].revents & POLLIN)
                watch = false;
        }
        if (p[0].revents) {
            r = vl2_client_recv(g->c, on_gen_response, g, &ev->err);
            if (r < 0 && !g->got) {
                ev->kind = VL2H_EV_ERROR;
                break;
            }
        }
    }
    g->ev = NULL;
}

static Vl2__Message *build_messages(const struct vl2h_params *p, Vl2__Message ***ret_ptrs,
                                    Vl2__Image **ret_imgs, Vl2__Image ***ret_img_ptrs)
{
    Vl2__Message *msgs = calloc(p->n_msgs ? p->n_msgs : 1, sizeof(*msgs));
    Vl2__Message **mp = calloc(p->n_msgs ? p->n_msgs : 1, sizeof(*mp));
    Vl2__Image *imgs = calloc(p->n_images ? p->n_images : 1, sizeof(*imgs));
    Vl2__Image **ip = calloc(p->n_images ? p->n_images : 1, sizeof(*ip));
    size_t i, j, k = 0;

    if (!msgs || !mp || !imgs || !ip) {
        free(msgs);
        free(mp);
        free(imgs);
        free(ip);
        return NULL;
    }
    for (i = 0; i < p->n_msgs; i++) {
        vl2__message__init(&msgs[i]);
        msgs[i].has_role = 1;
        msgs[i].role = p->msgs[i].role;
        msgs[i].text = p->msgs[i].text ? p->msgs[i].text : (char *) "";
        msgs[i].n_images = p->msgs[i].n_images;
        msgs[i].images = &ip[k];
        for (j = 0; j < p->msgs[i].n_images; j++, k++) {
            vl2__image__init(&imgs[k]);
            imgs[k].source_case = VL2__IMAGE__SOURCE_DATA;
            imgs[k].data.data = p->msgs[i].images[j].data;
            imgs[k].data.len = p->msgs[i].images[j].size;
            ip[k] = &imgs[k];
        }
        mp[i] = &msgs[i];
    }
    *ret_ptrs = mp;
    *ret_imgs = imgs;
    *ret_img_ptrs = ip;
    return msgs;
}

struct vl2h_gen *vl2h_gen_start(struct vl2h_server *srv, struct vl2_client *c,
                                const struct vl2h_params *p, int client_fd,
                                struct vl2_err *err)
{
    Vl2__Request req = VL2__REQUEST__INIT;
    Vl2__Generate gen = VL2__GENERATE__INIT;
    Vl2__Sampling sp = p->sampling;
    Vl2__Message *msgs, **mp = NULL;
    Vl2__Image *imgs = NULL, **ip = NULL;
    struct vl2h_event ev;
    struct vl2h_gen *g;
    int r;

    g = calloc(1, sizeof(*g));
    if (!g) {
        vl2_client_close(c);
        (void) vl2_err_set(err, VL2_ENOMEM, "vl2-http: out of memory");
        return NULL;
    }
    g->c = c;
    g->client_fd = client_fd;
    g->timeout_ms = srv->conf->daemon_timeout_ms;
    msgs = build_messages(p, &mp, &imgs, &ip);
    if (!msgs) {
        (void) vl2_err_set(err, VL2_ENOMEM, "vl2-http: out of memory");
        goto out_free;
    }
    sp.n_stop = p->n_stops;
    sp.stop = (char **) p->stops;
    gen.model = p->model ? p->model : (char *) "";
    gen.n_messages = p->n_msgs;
    gen.messages = mp;
    gen.sampling = &sp;
    gen.has_grounding = 1;
    gen.grounding = p->grounding;
    gen.has_stream = 1;
    gen.stream = 1;          /* tokens as they come, also for a non-streamed reply */
    gen.has_logprobs = 1;
    gen.logprobs = p->logprobs;
    if (p->logprobs && p->top_logprobs) {
        gen.has_top_logprobs = 1;
        gen.top_logprobs = p->top_logprobs;
    }
    req.body_case = VL2__REQUEST__BODY_GENERATE;
    req.generate = &gen;
    r = vl2_client_send(c, &req, NULL, 0, &g->id, err);
    free(msgs);
    free(mp);
    free(imgs);
    free(ip);
    if (r < 0)
        goto out_free;
    /* Accepted, or the Error that refuses the request */
    while (!g->accepted) {
        struct pollfd pf = { .fd = vl2_client_fd(c), .events = POLLIN };

        r = poll(&pf, 1, g->timeout_ms);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            (void) vl2_err_set(err, VL2_ETIMEDOUT, "vl2-http: vl2d did not accept the request "
                               "within %d ms", g->timeout_ms);
            goto out_free;
        }
        memset(&ev, 0, sizeof(ev));
        g->ev = &ev;
        g->got = false;
        r = vl2_client_recv(c, on_gen_response, g, err);
        g->ev = NULL;
        if (g->got) {
            if (ev.kind == VL2H_EV_ERROR)
                *err = ev.err;
            else
                (void) vl2_err_set(err, VL2_EPROTO, "vl2-http: vl2d answered before Accepted");
            vl2h_event_done(&ev);
            g->ended = true;
            goto out_free;
        }
        if (r < 0)
            goto out_free;
    }
    return g;

out_free:
    vl2h_gen_free(g);
    return NULL;
}

uint32_t vl2h_gen_queue_position(const struct vl2h_gen *g)
{
    return g->queue_position;
}

int vl2h_gen_next(struct vl2h_gen *g, struct vl2h_event *ev)
{
    memset(ev, 0, sizeof(ev[0]));
    if (g->ended)
        return VL2_EINVAL;
    receive(g, ev);
    if (ev->kind != VL2H_EV_TOKEN)
        g->ended = true;
    return 0;
}

void vl2h_gen_free(struct vl2h_gen *g)
{
    if (!g)
        return;
    if (!g->ended && g->id) {
        Vl2__Request req = VL2__REQUEST__INIT;
        Vl2__Cancel cancel = VL2__CANCEL__INIT;
        uint64_t id;

        cancel.has_target_id = 1;
        cancel.target_id = g->id;
        req.body_case = VL2__REQUEST__BODY_CANCEL;
        req.cancel = &cancel;
        vl2_client_set_timeout(g->c, 1000);
        (void) vl2_client_send(g->c, &req, NULL, 0, &id, NULL);
    }
    vl2_client_close(g->c);
    free(g);
}

int vl2h_gen_first(struct vl2h_req *rq, struct vl2h_gen *g, struct vl2h_event *first)
{
    int r;

    vl2h_gen_next(g, first);
    if (first->kind == VL2H_EV_ERROR) {
        r = vl2h_reply_vl2_error(rq, &first->err);
        vl2h_event_done(first);
        return r;
    }
    if (first->kind == VL2H_EV_GONE) {
        vl2h_metrics_disconnect(&rq->srv->metrics);
        vl2h_event_done(first);
        return VL2_ECANCELED;
    }
    return 1;
}

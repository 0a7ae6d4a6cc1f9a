/* dispatch.c - the one place that reads protobuf requests and writes
 * protobuf responses: requests become replies or engine jobs, engine events
 * become responses.
 *
 * Every request gets an answer: a reply, an engine's stream of events, or an
 * Error (UNIMPLEMENTED for a kind of request from a newer protocol).  A request that
 * is wrong gets an Error and the connection stays; a frame that does not
 * decode gets an Error with id 0 and the connection closes. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine.h"
#include "server-impl.h"

/* Bytes of text one Tokenize may carry. */
#define MAX_TOKENIZE_TEXT ((size_t) 1 << 20)
/* server.c's default max_prompt_bytes; a smaller cap came from the model */
#define MAX_PROMPT_CEILING ((size_t) 1 << 20)
/* Tokenize requests one connection may have in flight (fairness, issue 18:
 * the engine encodes at most VL2_ENGINE_MAX_TOKENIZE of all at once). */
#define MAX_TOKENIZE_PER_CONN 4

static void reply(struct vl2_conn *c, Vl2__Response *resp, uint64_t id)
{
    resp->has_id = 1;
    resp->id = id;
    vl2__conn_send(c, resp);
}

static void unimplemented(struct vl2_conn *c, uint64_t id, const char *what)
{
    char msg[160];

    snprintf(msg, sizeof(msg), "server: %s is not implemented yet in vl2d %s", what,
             VL2_VERSION);
    vl2__conn_send_error(c, id, VL2_EUNIMPLEMENTED, msg, false);
}

/* ---- Hello ----------------------------------------------------------- */

static void on_hello(struct vl2_conn *c, uint64_t id, const Vl2__Hello *h)
{
    Vl2__Response resp = VL2__RESPONSE__INIT;
    Vl2__HelloReply hr = VL2__HELLO_REPLY__INIT;
    char msg[200];

    if (!h->has_protocol_version || h->protocol_version != VL2_IPC_PROTOCOL_VERSION) {
        snprintf(msg, sizeof(msg),
                 "server: protocol version %u is not supported; this vl2d speaks version %u",
                 h->has_protocol_version ? h->protocol_version : 0, VL2_IPC_PROTOCOL_VERSION);
        vl2_log(VL2_LOG_WARN, "connection %llu: %s", (unsigned long long) c->id, msg);
        vl2__conn_send_error(c, id, VL2_EPROTO, msg, true);
        return;
    }
    if (!c->hello_done)
        vl2_log(VL2_LOG_DEBUG, "connection %llu: hello from '%s'", (unsigned long long) c->id,
                h->client_name ? h->client_name : "");
    c->hello_done = true;
    hr.has_protocol_version = 1;
    hr.protocol_version = VL2_IPC_PROTOCOL_VERSION;
    hr.server_version = (char *) VL2_VERSION;
    hr.has_max_frame_size = 1;
    hr.max_frame_size = c->srv->opts.max_frame;
    hr.has_max_fds = 1;
    hr.max_fds = VL2_IPC_MAX_FDS;
    resp.body_case = VL2__RESPONSE__BODY_HELLO;
    resp.hello = &hr;
    reply(c, &resp, id);
}

/* ---- Status, ListModels ---------------------------------------------- */

static Vl2__ModelState model_state(const struct vl2_srv_model *m,
                                   const struct vl2_engine_stats *st)
{
    if (m->unloading)
        return VL2__MODEL_STATE__MODEL_STATE_UNLOADING;
    switch (st->state) {
    case VL2_MODEL_STATE_LOADING:   return VL2__MODEL_STATE__MODEL_STATE_LOADING;
    case VL2_MODEL_STATE_FAILED:    return VL2__MODEL_STATE__MODEL_STATE_FAILED;
    case VL2_MODEL_STATE_UNLOADING: return VL2__MODEL_STATE__MODEL_STATE_UNLOADING;
    default:                        return VL2__MODEL_STATE__MODEL_STATE_READY;
    }
}

/* What a client that is not the daemon's uid or root reads instead of a
 * load error: the error may quote the files the daemon read, and tells
 * whether paths exist that the client may not see. */
static const char *const load_error_hidden =
    "the model could not be loaded; the daemon's log has the details";

/* Fill @mi for @m as @c may see it; @stats receives the engine's figures
 * (strings in @mi point into @m and @stats). */
static void model_info(struct vl2_conn *c, struct vl2_srv_model *m, Vl2__ModelInfo *mi,
                       struct vl2_engine_stats *stats)
{
    vl2__model_info__init(mi);
    memset(stats, 0, sizeof(*stats));
    if (m->ops->stats)
        m->ops->stats(m->engine, stats);
    mi->name = m->name;
    mi->dir = m->dir;
    mi->has_state = 1;
    mi->state = model_state(m, stats);
    if (stats->error)
        mi->error = (char *) (vl2__auth_privileged(&c->peer) ? stats->error
                                                            : load_error_hidden);
    mi->has_memory_bytes = 1;
    mi->memory_bytes = stats->memory_bytes;
    mi->backend = (char *) (stats->backend ? stats->backend : "");
    mi->has_active_sequences = 1;
    mi->active_sequences = stats->active_sequences;
    mi->has_queue_length = 1;
    mi->queue_length = stats->queue_length;
}

/* Fill @infos (and @ptrs pointing at them) for every model. */
static void model_infos(struct vl2_conn *c, Vl2__ModelInfo *infos, Vl2__ModelInfo **ptrs,
                        struct vl2_engine_stats *stats)
{
    struct vl2_srv_model *m;
    size_t i = 0;

    for (m = c->srv->models; m; m = m->next, i++) {
        model_info(c, m, &infos[i], &stats[i]);
        ptrs[i] = &infos[i];
    }
}

static void on_status(struct vl2_conn *c, uint64_t id)
{
    struct vl2_server *srv = c->srv;
    Vl2__Response resp = VL2__RESPONSE__INIT;
    Vl2__StatusReply st = VL2__STATUS_REPLY__INIT;
    size_t n = vl2__server_n_models(srv), i;
    Vl2__ModelInfo *infos = calloc(n ? n : 1, sizeof(*infos));
    Vl2__ModelInfo **ptrs = calloc(n ? n : 1, sizeof(*ptrs));
    struct vl2_engine_stats *stats = calloc(n ? n : 1, sizeof(*stats));

    if (!infos || !ptrs || !stats) {
        vl2__conn_send_error(c, id, VL2_ENOMEM, "server: out of memory", false);
        goto out_free;
    }
    model_infos(c, infos, ptrs, stats);
    st.server_version = (char *) VL2_VERSION;
    st.has_protocol_version = 1;
    st.protocol_version = VL2_IPC_PROTOCOL_VERSION;
    st.n_models = n;
    st.models = ptrs;
    st.has_queue_length = st.has_active_sequences = st.has_tokens_per_s = 1;
    for (i = 0; i < n; i++) {
        st.queue_length += stats[i].queue_length;
        st.active_sequences += stats[i].active_sequences;
        st.tokens_per_s += stats[i].tokens_per_s;
    }
    st.has_resident_memory_bytes = 1;
    vl2__server_resident_memory(&st.resident_memory_bytes);
    st.has_uptime_s = 1;
    st.uptime_s = (double) (uv_hrtime() - srv->started_ns) / 1e9;
    st.has_connections = 1;
    st.connections = srv->n_conns;
    st.socket_path = srv->socket_path;
    st.has_pid = 1;
    st.pid = (uint32_t) getpid();
    resp.body_case = VL2__RESPONSE__BODY_STATUS;
    resp.status = &st;
    reply(c, &resp, id);
out_free:
    free(infos);
    free(ptrs);
    free(stats);
}

static void on_list_models(struct vl2_conn *c, uint64_t id)
{
    struct vl2_server *srv = c->srv;
    Vl2__Response resp = VL2__RESPONSE__INIT;
    Vl2__ModelList ml = VL2__MODEL_LIST__INIT;
    size_t n = vl2__server_n_models(srv);
    Vl2__ModelInfo *infos = calloc(n ? n : 1, sizeof(*infos));
    Vl2__ModelInfo **ptrs = calloc(n ? n : 1, sizeof(*ptrs));
    struct vl2_engine_stats *stats = calloc(n ? n : 1, sizeof(*stats));

    if (!infos || !ptrs || !stats) {
        vl2__conn_send_error(c, id, VL2_ENOMEM, "server: out of memory", false);
        goto out_free;
    }
    model_infos(c, infos, ptrs, stats);
    ml.n_models = n;
    ml.models = ptrs;
    resp.body_case = VL2__RESPONSE__BODY_MODELS;
    resp.models = &ml;
    reply(c, &resp, id);
out_free:
    free(infos);
    free(ptrs);
    free(stats);
}

/* ---- Generate -------------------------------------------------------- */

static char *dup_str(const char *s)
{
    return strdup(s ? s : "");
}

/* Translate @g into a job; images passed as descriptors get duplicates of
 * @frame's.  Returns 0 or < 0 with @err. */
static int make_job(const Vl2__Generate *g, struct vl2_ipc_frame *frame, size_t max_prompt,
                    struct vl2_job **ret_job, struct vl2_err *err)
{
    struct vl2_job *job;
    size_t i, j, n_images = 0;
    int r;

    if (g->n_messages == 0)
        return vl2_err_set(err, VL2_EINVAL, "server: generate: no messages");
    for (i = 0; i < g->n_messages; i++)
        n_images += g->messages[i]->n_images;
    if (n_images > VL2_ENGINE_MAX_IMAGES)
        return vl2_err_set(err, VL2_ELIMIT, "server: generate: %zu images, at most %d",
                           n_images, VL2_ENGINE_MAX_IMAGES);
    for (i = 0, j = 0; i < g->n_messages; i++)
        j += g->messages[i]->text ? strlen(g->messages[i]->text) : 0;
    if (j > max_prompt)
        return vl2_err_set(err, VL2_ELIMIT, "server: generate: the messages hold %zu bytes of "
                           "text, at most %zu (%s)", j, max_prompt,
                           max_prompt < MAX_PROMPT_CEILING ? "what the model's context can hold"
                                                           : "the daemon's ceiling");
    job = calloc(1, sizeof(*job));
    if (!job)
        return vl2_err_set(err, VL2_ENOMEM, "server: out of memory");
    job->model = dup_str(g->model);
    job->messages = calloc(g->n_messages, sizeof(*job->messages));
    if (!job->model || !job->messages)
        goto out_nomem;
    job->n_messages = g->n_messages;
    for (i = 0; i < g->n_messages; i++) {
        const Vl2__Message *pm = g->messages[i];
        struct vl2_job_message *m = &job->messages[i];

        switch (pm->has_role ? pm->role : VL2__ROLE__ROLE_UNSPECIFIED) {
        case VL2__ROLE__ROLE_SYSTEM:    m->role = VL2_JOB_ROLE_SYSTEM; break;
        case VL2__ROLE__ROLE_USER:      m->role = VL2_JOB_ROLE_USER; break;
        case VL2__ROLE__ROLE_ASSISTANT: m->role = VL2_JOB_ROLE_ASSISTANT; break;
        default:
            r = vl2_err_set(err, VL2_EINVAL, "server: generate: message %zu has no valid role",
                            i);
            goto out_free;
        }
        m->text = dup_str(pm->text);
        if (!m->text)
            goto out_nomem;
        if (pm->n_images == 0)
            continue;
        m->images = calloc(pm->n_images, sizeof(*m->images));
        if (!m->images)
            goto out_nomem;
        m->n_images = pm->n_images;
        for (j = 0; j < pm->n_images; j++)
            m->images[j].fd = -1;
        for (j = 0; j < pm->n_images; j++) {
            const Vl2__Image *pi = pm->images[j];
            struct vl2_job_image *im = &m->images[j];

            im->apply_exif = pi->apply_exif;
            im->has_apply_exif = pi->has_apply_exif;
            if (pi->source_case == VL2__IMAGE__SOURCE_DATA) {
                if (pi->data.len == 0) {
                    r = vl2_err_set(err, VL2_EINVAL,
                                    "server: generate: message %zu, image %zu is empty", i, j);
                    goto out_free;
                }
                im->data = malloc(pi->data.len);
                if (!im->data)
                    goto out_nomem;
                memcpy(im->data, pi->data.data, pi->data.len);
                im->data_size = pi->data.len;
            } else if (pi->source_case == VL2__IMAGE__SOURCE_FD_INDEX) {
                uint32_t k = pi->fd_index;

                if (k >= frame->n_fds) {
                    r = vl2_err_set(err, VL2_EINVAL,
                                    "server: generate: message %zu, image %zu refers to "
                                    "descriptor %u, but %zu came with the request",
                                    i, j, k, frame->n_fds);
                    goto out_free;
                }
                /* our own copy: the frame closes its descriptors */
                im->fd = fcntl(frame->fds[k], F_DUPFD_CLOEXEC, 3);
                if (im->fd < 0) {
                    r = vl2_err_set(err, VL2_EIO, "server: generate: cannot keep "
                                    "descriptor %u: %s", k, strerror(errno));
                    goto out_free;
                }
            } else {
                r = vl2_err_set(err, VL2_EINVAL,
                                "server: generate: message %zu, image %zu has neither data "
                                "nor a descriptor", i, j);
                goto out_free;
            }
        }
    }
    if (g->sampling) {
        const Vl2__Sampling *s = g->sampling;
        struct vl2_job_sampling *js = &job->sampling;

        js->has_temperature = s->has_temperature;
        js->temperature = s->temperature;
        js->has_top_p = s->has_top_p;
        js->top_p = s->top_p;
        js->has_top_k = s->has_top_k;
        js->top_k = s->top_k;
        js->has_repetition_penalty = s->has_repetition_penalty;
        js->repetition_penalty = s->repetition_penalty;
        js->has_seed = s->has_seed;
        js->seed = s->seed;
        js->has_max_new_tokens = s->has_max_new_tokens;
        js->max_new_tokens = s->max_new_tokens;
        js->ignore_eos = s->ignore_eos;
        if (s->n_stop > 0) {
            js->stop = calloc(s->n_stop, sizeof(*js->stop));
            if (!js->stop)
                goto out_nomem;
            js->n_stop = s->n_stop;
            for (i = 0; i < s->n_stop; i++) {
                js->stop[i] = dup_str(s->stop[i]);
                if (!js->stop[i])
                    goto out_nomem;
            }
        }
    }
    job->grounding = g->grounding;
    job->stream = g->stream;
    if (g->top_logprobs > VL2_JOB_MAX_TOP_LOGPROBS) {
        r = vl2_err_set(err, VL2_EINVAL, "server: generate: 'top_logprobs' %u: at most %d",
                        g->top_logprobs, VL2_JOB_MAX_TOP_LOGPROBS);
        goto out_free;
    }
    job->top_logprobs = g->top_logprobs;
    job->logprobs = g->logprobs || g->top_logprobs > 0;
    *ret_job = job;
    return 0;

out_nomem:
    r = vl2_err_set(err, VL2_ENOMEM, "server: out of memory");
out_free:
    vl2_job_free(job);
    return r;
}

/* The model a request names; "" or NULL: the first that is neither failed
 * nor being unloaded.  NULL, with VL2_ENOTFOUND in @err for request @what
 * ("generate"), when there is none. */
static struct vl2_srv_model *find_model(struct vl2_server *srv, const char *name,
                                        const char *what, struct vl2_err *err)
{
    struct vl2_srv_model *m;

    for (m = srv->models; m; m = m->next) {
        if (m->unloading)
            continue;
        if (name && name[0] ? !strcmp(m->name, name) : !m->failed)
            return m;
    }
    if (name && name[0])
        vl2_err_set(err, VL2_ENOTFOUND, "server: %s: model '%s' is not loaded", what, name);
    else
        vl2_err_set(err, VL2_ENOTFOUND, "server: %s: no model is loaded (start vl2d with "
                    "--model DIR, or load one with 'vl2 load')", what);
    return NULL;
}

static bool id_in_use(struct vl2_conn *c, uint64_t id)
{
    struct vl2_inflight *inf;

    for (inf = c->inflight; inf; inf = inf->next)
        if (inf->request_id == id)
            return true;
    return false;
}

/* Refuse a request whose id is taken or that would pass the per-connection
 * limit.  Returns true when refused (the Error is sent). */
static bool refuse_inflight(struct vl2_conn *c, uint64_t id)
{
    struct vl2_err err = { 0 };

    if (id_in_use(c, id)) {
        /* Any answer carrying this id would read as the live request's: a
         * protocol violation, answered about the connection (id 0), which
         * then closes. */
        vl2_err_set(&err, VL2_EPROTO, "server: protocol error: a new request reuses id %llu "
                    "of a request still in flight on this connection; closing",
                    (unsigned long long) id);
        vl2_log(VL2_LOG_WARN, "connection %llu (pid %ld, uid %u): %s",
                (unsigned long long) c->id, (long) c->peer.pid, (unsigned) c->peer.uid,
                err.msg);
        vl2__conn_send_error(c, 0, err.code, err.msg, true);
        return true;
    } else if (c->n_inflight >= c->srv->opts.max_inflight_per_conn) {
        vl2_err_set(&err, VL2_ELIMIT, "server: %u requests in flight on this connection, "
                    "the limit", c->n_inflight);
    } else {
        return false;
    }
    vl2__conn_send_error(c, id, err.code, err.msg, false);
    return true;
}

/* Text bytes a Generate for @m may hold (issue 18): what can fit the
 * model's context (n_ctx x its longest token's bytes, once loaded), and at
 * most the server's max_prompt_bytes. */
static size_t prompt_cap(const struct vl2_server *srv, const struct vl2_srv_model *m)
{
    struct vl2_engine_stats st = { 0 };

    if (m->ops->stats)
        m->ops->stats(m->engine, &st);
    if (st.max_prompt_bytes > 0 && st.max_prompt_bytes < srv->opts.max_prompt_bytes)
        return (size_t) st.max_prompt_bytes;
    return srv->opts.max_prompt_bytes;
}

static void on_generate(struct vl2_conn *c, uint64_t id, const Vl2__Generate *g,
                        struct vl2_ipc_frame *frame)
{
    struct vl2_server *srv = c->srv;
    struct vl2_err err = { 0 };
    struct vl2_srv_model *model;
    struct vl2_inflight *inf;
    struct vl2_job *job = NULL;
    int r;

    model = find_model(srv, g->model, "generate", &err);
    if (!model) {
        vl2__conn_send_error(c, id, err.code, err.msg, false);
        return;
    }
    if (refuse_inflight(c, id))
        return;
    if (c->request_bytes + frame->size > srv->opts.max_request_bytes_per_conn ||
        srv->request_bytes + frame->size > srv->opts.max_request_bytes_total) {
        bool mine = c->request_bytes + frame->size > srv->opts.max_request_bytes_per_conn;

        vl2_err_set(&err, VL2_EBUSY, "server: generate: %s requests in flight hold %zu bytes; "
                    "this one (%u bytes) waits for some to end: try again",
                    mine ? "this connection's" : "all clients'",
                    mine ? c->request_bytes : srv->request_bytes, frame->size);
        vl2__conn_send_error(c, id, err.code, err.msg, false);
        return;
    }
    r = make_job(g, frame, prompt_cap(srv, model), &job, &err);
    if (r < 0) {
        vl2__conn_send_error(c, id, r, err.msg, false);
        return;
    }
    inf = calloc(1, sizeof(*inf));
    if (!inf) {
        vl2_job_free(job);
        vl2__conn_send_error(c, id, VL2_ENOMEM, "server: out of memory", false);
        return;
    }
    inf->request_id = id;
    inf->bytes = frame->size;
    inf->key = job->key = srv->next_key++;
    job->owner = c->id;
    job->owner_uid = c->peer.uid;
    inf->model = model;
    inf->stream = job->stream;
    r = model->ops->submit(model->engine, job, &err);
    if (r < 0) {
        free(inf);
        vl2_job_free(job);
        vl2__conn_send_error(c, id, r, err.msg, false);
        return;
    }
    inf->next = c->inflight;
    c->inflight = inf;
    c->n_inflight++;
    c->request_bytes += inf->bytes;
    srv->request_bytes += inf->bytes;
}

/* ---- LoadModel, UnloadModel ------------------------------------------- */

static void send_model_loaded(struct vl2_conn *c, uint64_t id, struct vl2_srv_model *m)
{
    Vl2__Response resp = VL2__RESPONSE__INIT;
    Vl2__ModelLoaded ml = VL2__MODEL_LOADED__INIT;
    Vl2__ModelInfo mi;
    struct vl2_engine_stats st;

    model_info(c, m, &mi, &st);
    ml.model = &mi;
    ml.has_load_s = 1;
    ml.load_s = m->load_s;
    resp.body_case = VL2__RESPONSE__BODY_LOADED;
    resp.loaded = &ml;
    reply(c, &resp, id);
}

static void on_load_model(struct vl2_conn *c, uint64_t id, const Vl2__LoadModel *lm)
{
    struct vl2_server *srv = c->srv;
    struct vl2_err err = { 0 };
    struct vl2_srv_model *m = NULL, *old;
    struct vl2_inflight *inf;
    Vl2__Response resp = VL2__RESPONSE__INIT;
    Vl2__Accepted a = VL2__ACCEPTED__INIT;
    int r;

    char *dir = NULL;

    if (!vl2__auth_admin(&srv->opts, &c->peer)) {
        vl2_log(VL2_LOG_WARN, "connection %llu (pid %ld, uid %u): load of '%s' refused: not "
                "an admin", (unsigned long long) c->id, (long) c->peer.pid,
                (unsigned) c->peer.uid, lm->dir ? lm->dir : "");
        vl2__conn_send_error(c, id, VL2_EPERM, "server: load: permission denied: only the "
                             "daemon's user, root and its admin groups may load models", false);
        return;
    }
    if (!lm->dir || lm->dir[0] != '/') {
        vl2_err_set(&err, VL2_EINVAL, "server: load: the model directory '%s' is not an "
                    "absolute path", lm->dir ? lm->dir : "");
        vl2__conn_send_error(c, id, err.code, err.msg, false);
        return;
    }
    if (refuse_inflight(c, id))
        return;
    dir = vl2__server_check_dir(srv, lm->dir, &err);
    if (!dir) {
        vl2_log(VL2_LOG_WARN, "connection %llu (pid %ld, uid %u): load of '%s' refused: %s",
                (unsigned long long) c->id, (long) c->peer.pid, (unsigned) c->peer.uid,
                lm->dir, err.msg);
        vl2__conn_send_error(c, id, err.code, err.msg, false);
        return;
    }
    /* a model that failed to load may be loaded again under its name */
    for (old = srv->models; old; old = old->next)
        if (lm->name && !strcmp(old->name, lm->name))
            break;
    if (old && old->failed && !old->unloading) {
        /* its engine only waits: free it now so that the name is free */
        vl2__server_unload(srv, old, "server: model replaced", true);
    } else if (old) {
        vl2_err_set(&err, old->unloading ? VL2_EBUSY : VL2_EINVAL,
                    old->unloading ? "server: load: model '%s' is being unloaded, try again"
                                   : "server: load: model '%s' is already loaded; unload it "
                                     "first", old->name);
        vl2__conn_send_error(c, id, err.code, err.msg, false);
        free(dir);
        return;
    }
    inf = calloc(1, sizeof(*inf));
    if (!inf) {
        vl2__conn_send_error(c, id, VL2_ENOMEM, "server: out of memory", false);
        free(dir);
        return;
    }
    /* a name from the directory the client gave, the files from the
     * resolved one (what was checked against the roots) */
    {
        char base[256];
        const char *name = lm->name;

        if (!name || !name[0]) {
            vl2__base_name(lm->dir, base, sizeof(base));
            name = base;
        }
        r = vl2__server_load(srv, name, dir, lm->backend, lm->progress, &m, &err);
    }
    free(dir);
    if (r < 0) {
        free(inf);
        vl2__conn_send_error(c, id, r, err.msg, false);
        return;
    }
    inf->request_id = id;
    inf->key = m->load_key;
    inf->model = m;
    inf->load = true;
    inf->next = c->inflight;
    c->inflight = inf;
    c->n_inflight++;
    a.has_queue_position = 1;
    a.queue_position = 0;
    resp.body_case = VL2__RESPONSE__BODY_ACCEPTED;
    resp.accepted = &a;
    reply(c, &resp, id);
}

static void on_unload_model(struct vl2_conn *c, uint64_t id, const Vl2__UnloadModel *um)
{
    struct vl2_server *srv = c->srv;
    Vl2__Response resp = VL2__RESPONSE__INIT;
    Vl2__Ack ack = VL2__ACK__INIT;
    struct vl2_srv_model *m;
    char msg[200];

    if (!vl2__auth_admin(&srv->opts, &c->peer)) {
        vl2_log(VL2_LOG_WARN, "connection %llu (pid %ld, uid %u): unload of '%s' refused: not "
                "an admin", (unsigned long long) c->id, (long) c->peer.pid,
                (unsigned) c->peer.uid, um->name ? um->name : "");
        vl2__conn_send_error(c, id, VL2_EPERM, "server: unload: permission denied: only the "
                             "daemon's user, root and its admin groups may unload models",
                             false);
        return;
    }
    for (m = srv->models; m; m = m->next)
        if (um->name && !strcmp(m->name, um->name) && !m->unloading)
            break;
    if (!m) {
        snprintf(msg, sizeof(msg), "server: unload: model '%s' is not loaded",
                 um->name ? um->name : "");
        vl2__conn_send_error(c, id, VL2_ENOTFOUND, msg, false);
        return;
    }
    snprintf(msg, sizeof(msg), "server: model '%s' was unloaded", m->name);
    vl2__server_unload(srv, m, msg, false);
    resp.body_case = VL2__RESPONSE__BODY_ACK;
    resp.ack = &ack;
    reply(c, &resp, id);
}

static void on_cancel(struct vl2_conn *c, uint64_t id, const Vl2__Cancel *cn)
{
    Vl2__Response resp = VL2__RESPONSE__INIT;
    Vl2__Ack ack = VL2__ACK__INIT;
    struct vl2_inflight *inf;
    char msg[120];

    for (inf = c->inflight; inf; inf = inf->next)
        if (cn->has_target_id && inf->request_id == cn->target_id)
            break;
    if (!inf) {
        snprintf(msg, sizeof(msg), "server: cancel: no request %llu in flight on this "
                 "connection", (unsigned long long) cn->target_id);
        vl2__conn_send_error(c, id, VL2_ENOTFOUND, msg, false);
        return;
    }
    if (inf->load) {
        /* a load has no job to cancel: the model goes, and the load request
         * ends with Error CANCELED (sent by the unload) */
        struct vl2_srv_model *m = inf->model;

        vl2_log(VL2_LOG_INFO, "model '%s': load cancelled by its client", m->name);
        vl2__server_unload(c->srv, m, "server: load: cancelled", false);
    } else {
        /* the engine ends the job with a terminal event, which answers it */
        inf->model->ops->cancel(inf->model->engine, inf->key);
    }
    resp.body_case = VL2__RESPONSE__BODY_ACK;
    resp.ack = &ack;
    reply(c, &resp, id);
}

/* ---- Tokenize --------------------------------------------------------- */

/* A Tokenize request is an engine job (vl2_tokenize_job): the model's
 * engine encodes it on a prep thread and posts TOKENIZED or ERROR, routed
 * back by key as a Generate's events are; a client gone by then gets
 * nothing.  How many encode at once is the engine's (BUSY beyond). */

/* The reply to a TOKENIZED event. */
static void tokenize_reply(struct vl2_conn *c, const struct vl2_inflight *inf,
                           const struct vl2_event *ev)
{
    Vl2__Response resp = VL2__RESPONSE__INIT;
    Vl2__TokenizeReply tr = VL2__TOKENIZE_REPLY__INIT;
    struct vl2_err err = { 0 };
    uint32_t *out_ids = NULL;
    ProtobufCBinaryData *pieces = NULL;
    size_t i, size, off = 0;

    out_ids = malloc((ev->n_ids + 1) * sizeof(*out_ids));
    if (ev->piece_len)
        pieces = calloc(ev->n_ids + 1, sizeof(*pieces));
    if (!out_ids || (ev->piece_len && !pieces)) {
        vl2_err_set(&err, VL2_ENOMEM, "server: out of memory");
        goto out_error;
    }
    for (i = 0; i < ev->n_ids; i++)
        out_ids[i] = (uint32_t) ev->ids[i];
    tr.n_ids = ev->n_ids;
    tr.ids = out_ids;
    if (pieces) {
        for (i = 0; i < ev->n_ids; i++) {
            pieces[i].data = ev->text ? ev->text + off : (uint8_t *) "";
            pieces[i].len = ev->piece_len[i];
            off += ev->piece_len[i];
        }
        tr.n_pieces = ev->n_ids;
        tr.pieces = pieces;
    }
    resp.has_id = 1;
    resp.id = inf->request_id;
    resp.body_case = VL2__RESPONSE__BODY_TOKENIZE;
    resp.tokenize = &tr;
    /* the reply must fit the client's frame limit too */
    size = vl2__response__get_packed_size(&resp);
    if (size > c->srv->opts.max_frame) {
        vl2_err_set(&err, VL2_ELIMIT, "server: tokenize: the reply would take %zu bytes, over "
                    "the frame limit of %u", size, c->srv->opts.max_frame);
        goto out_error;
    }
    vl2__conn_send(c, &resp);
    goto out_free;

out_error:
    vl2__conn_send_error(c, inf->request_id, err.code, err.msg, false);
out_free:
    free(out_ids);
    free(pieces);
}

static void on_tokenize(struct vl2_conn *c, uint64_t id, const Vl2__Tokenize *t)
{
    struct vl2_server *srv = c->srv;
    struct vl2_err err = { 0 };
    struct vl2_srv_model *model;
    const char *text = t->text ? t->text : "";
    size_t len = strlen(text);
    struct vl2_tokenize_job *job = NULL;
    struct vl2_inflight *inf = NULL;
    const struct vl2_inflight *it;
    unsigned n_mine = 0;
    int r;

    model = find_model(srv, t->model, "tokenize", &err);
    if (!model)
        goto out_error;
    if (!model->ops->tokenize) {
        unimplemented(c, id, "tokenize for this model");
        return;
    }
    if (len > MAX_TOKENIZE_TEXT) {
        vl2_err_set(&err, VL2_ELIMIT, "server: tokenize: the text has %zu bytes, at most %zu",
                    len, MAX_TOKENIZE_TEXT);
        goto out_error;
    }
    for (it = c->inflight; it; it = it->next)
        n_mine += it->tokenize;
    if (n_mine >= MAX_TOKENIZE_PER_CONN) {
        vl2_err_set(&err, VL2_EBUSY, "server: tokenize: %u texts of this connection are being "
                    "encoded, at most %d at once; try again", n_mine, MAX_TOKENIZE_PER_CONN);
        goto out_error;
    }
    if (refuse_inflight(c, id))
        return;
    inf = calloc(1, sizeof(*inf));
    job = calloc(1, sizeof(*job));
    if (job)
        job->text = malloc(len + 1);
    if (!inf || !job || !job->text) {
        vl2_err_set(&err, VL2_ENOMEM, "server: out of memory");
        goto out_error;
    }
    memcpy(job->text, text, len + 1);
    job->len = len;
    job->add_bos = t->add_bos;
    job->pieces = t->pieces;
    job->owner = c->id;
    inf->request_id = id;
    inf->key = job->key = srv->next_key++;
    inf->model = model;
    inf->tokenize = true;
    r = model->ops->tokenize(model->engine, job, &err);
    if (r < 0)
        goto out_error;
    inf->next = c->inflight;
    c->inflight = inf;
    c->n_inflight++;
    return;

out_error:
    vl2_tokenize_job_free(job);
    free(inf);
    vl2__conn_send_error(c, id, err.code, err.msg, false);
}

/* ---- requests -------------------------------------------------------- */

void vl2__dispatch_frame(struct vl2_conn *c, struct vl2_ipc_frame *frame)
{
    struct vl2_err err = { 0 };
    Vl2__Request *req;
    uint64_t id = 0;
    int r;

    r = vl2_ipc_request_precheck(frame->payload, frame->size, &id, &err);
    if (r == VL2_ELIMIT || r == VL2_EINVAL) {
        /* a well-formed request over a limit: refused before decoding */
        vl2_log(VL2_LOG_WARN, "connection %llu (pid %ld, uid %u): request %llu: %s",
                (unsigned long long) c->id, (long) c->peer.pid, (unsigned) c->peer.uid,
                (unsigned long long) id, err.msg);
        vl2__conn_send_error(c, id, r, err.msg, false);
        return;
    }
    req = r < 0 ? NULL : vl2_ipc_request_decode(frame->payload, frame->size, &err);
    if (!req) {
        vl2_log(VL2_LOG_WARN, "connection %llu (pid %ld, uid %u): %s; closing",
                (unsigned long long) c->id, (long) c->peer.pid, (unsigned) c->peer.uid,
                err.msg);
        vl2__conn_send_error(c, 0, err.code, err.msg, true);
        return;
    }
    id = req->has_id ? req->id : 0;
    vl2_log(VL2_LOG_DEBUG, "connection %llu: request %llu: %s", (unsigned long long) c->id,
            (unsigned long long) id, vl2_ipc_request_name(req->body_case));
    if (!c->hello_done && req->body_case != VL2__REQUEST__BODY_HELLO) {
        vl2__conn_send_error(c, id, VL2_EPROTO,
                             "server: the first request must be Hello", false);
        goto out_free;
    }
    switch (req->body_case) {
    case VL2__REQUEST__BODY_HELLO:
        on_hello(c, id, req->hello);
        break;
    case VL2__REQUEST__BODY_STATUS:
        on_status(c, id);
        break;
    case VL2__REQUEST__BODY_LIST_MODELS:
        on_list_models(c, id);
        break;
    case VL2__REQUEST__BODY_GENERATE:
        on_generate(c, id, req->generate, frame);
        break;
    case VL2__REQUEST__BODY_CANCEL:
        on_cancel(c, id, req->cancel);
        break;
    case VL2__REQUEST__BODY_LOAD_MODEL:
        on_load_model(c, id, req->load_model);
        break;
    case VL2__REQUEST__BODY_UNLOAD_MODEL:
        on_unload_model(c, id, req->unload_model);
        break;
    case VL2__REQUEST__BODY_TOKENIZE:
        on_tokenize(c, id, req->tokenize);
        break;
    default:
        /* a kind from a newer protocol lands in the unknown fields */
        if (req->base.n_unknown_fields > 0)
            unimplemented(c, id, "this kind of request");
        else
            vl2__conn_send_error(c, id, VL2_EINVAL, "server: request has no body", false);
        break;
    }
out_free:
    vl2__request__free_unpacked(req, NULL);
}

/* ---- events ---------------------------------------------------------- */

static int gather_text(struct vl2_inflight *inf, const uint8_t *p, size_t n)
{
    if (inf->text_size + n > inf->text_cap) {
        size_t cap = inf->text_cap ? inf->text_cap : 256;
        uint8_t *q;

        while (cap < inf->text_size + n)
            cap *= 2;
        q = realloc(inf->text, cap);
        if (!q)
            return VL2_ENOMEM;
        inf->text = q;
        inf->text_cap = cap;
    }
    memcpy(inf->text + inf->text_size, p, n);
    inf->text_size += n;
    return 0;
}

static void send_done(struct vl2_conn *c, struct vl2_inflight *inf, const struct vl2_event *ev)
{
    Vl2__Response resp = VL2__RESPONSE__INIT;
    Vl2__Done d = VL2__DONE__INIT;
    Vl2__Box *boxes = NULL, **ptrs = NULL;
    size_t i;

    if (ev->n_boxes > 0) {
        boxes = calloc(ev->n_boxes, sizeof(*boxes));
        ptrs = calloc(ev->n_boxes, sizeof(*ptrs));
        if (!boxes || !ptrs) {
            vl2__conn_send_error(c, inf->request_id, VL2_ENOMEM, "server: out of memory",
                                 false);
            goto out_free;
        }
        for (i = 0; i < ev->n_boxes; i++) {
            vl2__box__init(&boxes[i]);
            boxes[i].label = ev->boxes[i].label ? ev->boxes[i].label : (char *) "";
            boxes[i].has_x1 = boxes[i].has_y1 = boxes[i].has_x2 = boxes[i].has_y2 = 1;
            boxes[i].x1 = ev->boxes[i].x1;
            boxes[i].y1 = ev->boxes[i].y1;
            boxes[i].x2 = ev->boxes[i].x2;
            boxes[i].y2 = ev->boxes[i].y2;
            boxes[i].has_image_index = 1;
            boxes[i].image_index = ev->boxes[i].image_index;
            ptrs[i] = &boxes[i];
        }
    }
    d.has_finish_reason = 1;
    d.finish_reason = (Vl2__FinishReason) ev->finish_reason;
    d.has_prompt_tokens = d.has_image_tokens = d.has_generated_tokens = 1;
    d.prompt_tokens = ev->prompt_tokens;
    d.image_tokens = ev->image_tokens;
    d.generated_tokens = ev->generated_tokens;
    d.has_time_to_first_token_s = d.has_decode_tokens_per_s = 1;
    d.time_to_first_token_s = ev->time_to_first_token_s;
    d.decode_tokens_per_s = ev->decode_tokens_per_s;
    d.n_boxes = ev->n_boxes;
    d.boxes = ptrs;
    if (ev->text) {
        d.has_text = 1;
        d.text.data = ev->text;
        d.text.len = ev->text_size;
    } else if (!inf->stream) {
        d.has_text = 1;
        d.text.data = inf->text;
        d.text.len = inf->text_size;
    }
    resp.body_case = VL2__RESPONSE__BODY_DONE;
    resp.done = &d;
    reply(c, &resp, inf->request_id);
out_free:
    free(boxes);
    free(ptrs);
}

/* An event about a model itself: its state changes, whoever asked. */
static void model_event(struct vl2_server *srv, struct vl2_srv_model *m,
                        const struct vl2_event *ev)
{
    switch (ev->kind) {
    case VL2_EVENT_LOADED:
        if (!m->loading)
            return;
        m->loading = false;
        m->load_s = ev->load_s;
        vl2_log(VL2_LOG_INFO, "model '%s': loaded in %.2f s", m->name, ev->load_s);
        vl2__server_model_settled(srv);
        break;
    case VL2_EVENT_ERROR:
        if (!m->loading)
            return;
        m->loading = false;
        m->failed = true;
        vl2_log(VL2_LOG_ERR, "%s", ev->message);
        vl2__server_model_settled(srv);
        break;
    case VL2_EVENT_UNLOADED:
        if (m->unloading) {
            vl2_log(VL2_LOG_INFO, "model '%s': unloaded", m->name);
            vl2__server_drop_model(srv, m);
        }
        break;
    default:
        break;
    }
}

/* Token.top_logprobs of @ev into @t, in @alts and @ptrs
 * [VL2_JOB_MAX_TOP_LOGPROBS] (borrowing @ev's bytes). */
static void token_alts(Vl2__Token *t, const struct vl2_event *ev, Vl2__TokenAlternative *alts,
                       Vl2__TokenAlternative **ptrs)
{
    size_t i, at = 0;

    for (i = 0; i < ev->n_top && i < VL2_JOB_MAX_TOP_LOGPROBS; i++) {
        vl2__token_alternative__init(&alts[i]);
        alts[i].has_id = 1;
        alts[i].id = ev->top[i].id;
        alts[i].has_text = 1;
        alts[i].text.data = ev->top_text + at;
        alts[i].text.len = ev->top[i].text_size;
        alts[i].has_logprob = 1;
        alts[i].logprob = ev->top[i].logprob;
        at += ev->top[i].text_size;
        ptrs[i] = &alts[i];
    }
    t->n_top_logprobs = i;
    t->top_logprobs = i ? ptrs : NULL;
}

void vl2__dispatch_event(struct vl2_server *srv, struct vl2_event *ev)
{
    Vl2__Response resp = VL2__RESPONSE__INIT;
    struct vl2_inflight *inf;
    struct vl2_conn *c = NULL;
    struct vl2_srv_model *m;

    inf = vl2__conn_find_key(srv, ev->key, &c);
    m = vl2__server_model_by_load_key(srv, ev->key);
    if (m && ev->kind == VL2_EVENT_UNLOADED) {
        model_event(srv, m, ev);
        return;
    }
    if (m && (ev->kind == VL2_EVENT_LOADED || ev->kind == VL2_EVENT_ERROR))
        model_event(srv, m, ev);
    if (!inf)
        return;  /* cancelled, or its client is gone */
    if (inf->load && ev->kind == VL2_EVENT_LOADED) {
        vl2__inflight_unlink(c, inf);
        send_model_loaded(c, inf->request_id, inf->model);
        vl2__inflight_free(inf);
        return;
    }
    switch (ev->kind) {
    case VL2_EVENT_ACCEPTED: {
        Vl2__Accepted a = VL2__ACCEPTED__INIT;

        a.has_queue_position = 1;
        a.queue_position = ev->queue_position;
        resp.body_case = VL2__RESPONSE__BODY_ACCEPTED;
        resp.accepted = &a;
        reply(c, &resp, inf->request_id);
        break;
    }
    case VL2_EVENT_PROGRESS: {
        Vl2__Progress p = VL2__PROGRESS__INIT;

        p.has_stage = p.has_fraction = 1;
        p.stage = (Vl2__Stage) ev->stage;
        p.fraction = ev->fraction;
        resp.body_case = VL2__RESPONSE__BODY_PROGRESS;
        resp.progress = &p;
        reply(c, &resp, inf->request_id);
        break;
    }
    case VL2_EVENT_TOKEN: {
        Vl2__Token t = VL2__TOKEN__INIT;
        Vl2__TokenAlternative alts[VL2_JOB_MAX_TOP_LOGPROBS];
        Vl2__TokenAlternative *alt_ptrs[VL2_JOB_MAX_TOP_LOGPROBS];

        if (!inf->stream) {
            if (gather_text(inf, ev->text, ev->text_size) < 0) {
                vl2__inflight_unlink(c, inf);
                inf->model->ops->cancel(inf->model->engine, inf->key);
                vl2__conn_send_error(c, inf->request_id, VL2_ENOMEM, "server: out of memory",
                                     false);
                vl2__inflight_free(inf);
            }
            break;
        }
        t.has_text = 1;
        t.text.data = ev->text;
        t.text.len = ev->text_size;
        t.has_id = 1;
        t.id = ev->token_id;
        t.has_logprob = ev->has_logprob;
        t.logprob = ev->logprob;
        token_alts(&t, ev, alts, alt_ptrs);
        resp.body_case = VL2__RESPONSE__BODY_TOKEN;
        resp.token = &t;
        reply(c, &resp, inf->request_id);
        break;
    }
    case VL2_EVENT_DONE:
        vl2__inflight_unlink(c, inf);
        send_done(c, inf, ev);
        vl2__inflight_free(inf);
        break;
    case VL2_EVENT_TOKENIZED:
        vl2__inflight_unlink(c, inf);
        tokenize_reply(c, inf, ev);
        vl2__inflight_free(inf);
        break;
    case VL2_EVENT_ERROR:
        vl2__inflight_unlink(c, inf);
        vl2__conn_send_error(c, inf->request_id, ev->code < 0 ? ev->code : VL2_EINTERNAL,
                             inf->load && !vl2__auth_privileged(&c->peer) ? load_error_hidden
                             : ev->message[0] ? ev->message : vl2_status_name(ev->code), false);
        vl2__inflight_free(inf);
        break;
    default:
        break;
    }
}

void vl2__dispatch_abort_inflight(struct vl2_conn *c, int code, const char *msg, bool notify)
{
    while (c->inflight) {
        struct vl2_inflight *inf = c->inflight;

        vl2__inflight_unlink(c, inf);
        inf->model->ops->cancel(inf->model->engine, inf->key);
        if (notify)
            vl2__conn_send_error(c, inf->request_id, code, msg, false);
        vl2__inflight_free(inf);
    }
}

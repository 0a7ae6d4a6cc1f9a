/* engine.c - one model's scheduler: loading, the fair queue, the prep
 * threads, and the engine thread's loop of prefill work and batched decode
 * steps (engine.h describes the whole). */
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "engine-impl.h"
#include "grounding.h"
#include "prompt.h"

/* the text stream's finish reasons are the events' (vl2.proto's numbers) */
_Static_assert((int) VL2_TS_EOS == (int) VL2_FINISH_EOS &&
               (int) VL2_TS_LENGTH == (int) VL2_FINISH_LENGTH &&
               (int) VL2_TS_STOP == (int) VL2_FINISH_STOP, "finish reasons");

struct vl2_engine_params vl2_engine_default_params(void)
{
    struct vl2_engine_params p = {
        .backend = "cpu",
        .plugin_dir = NULL,
        .device = 0,
        .n_threads = 0,
        .max_sequences = 8,
        .max_queue = 1024,
        .kv_budget = 0,
        .n_ctx = 0,
        .max_images = VL2_PREP_DEFAULT_IMAGES,
        .max_image_pixels = 50000000,
        .max_image_bytes = (size_t) 64 << 20,
        .apply_exif = true,
        .max_new_tokens = 512,
        .prep_threads = 2,
        .fd_timeout_s = 10.0,
        .idle_unload_s = 0.0,
        .vision_tiles_per_step = 1,
    };
    return p;
}

int vl2_engine_check_params(const struct vl2_engine_params *p, struct vl2_err *err)
{
    if (!p->backend || !p->backend[0])
        return vl2_err_set(err, VL2_EINVAL, "engine: no backend named");
    if (p->max_sequences == 0 || p->max_sequences > 4096)
        return vl2_err_set(err, VL2_EINVAL, "engine: max_sequences %u: expected 1 to 4096",
                           p->max_sequences);
    if (p->max_queue == 0)
        return vl2_err_set(err, VL2_EINVAL, "engine: max_queue must be at least 1");
    if (p->n_ctx < 0 || p->n_threads < 0 || p->device < 0)
        return vl2_err_set(err, VL2_EINVAL, "engine: negative n_ctx, threads or device");
    if (p->max_images == 0 || p->max_images > VL2_ENGINE_MAX_IMAGES)
        return vl2_err_set(err, VL2_EINVAL, "engine: max_images %u: expected 1 to %d",
                           p->max_images, VL2_ENGINE_MAX_IMAGES);
    if (p->max_image_pixels == 0 || p->max_image_bytes == 0)
        return vl2_err_set(err, VL2_EINVAL, "engine: image limits must be positive");
    if (p->prep_threads == 0 || p->prep_threads > 64)
        return vl2_err_set(err, VL2_EINVAL, "engine: prep_threads %u: expected 1 to 64",
                           p->prep_threads);
    if (!(p->fd_timeout_s > 0) || !(p->idle_unload_s >= 0))
        return vl2_err_set(err, VL2_EINVAL, "engine: timeouts must be positive");
    return 0;
}

/* ---- lists ------------------------------------------------------------ */

void vl2__req_list_push(struct vl2_req_list *l, struct vl2_req *r, enum vl2_req_place place)
{
    r->prev = l->tail;
    r->next = NULL;
    if (l->tail)
        l->tail->next = r;
    else
        l->head = r;
    l->tail = r;
    l->n++;
    r->place = place;
}

void vl2__req_list_remove(struct vl2_req_list *l, struct vl2_req *r)
{
    if (r->prev)
        r->prev->next = r->next;
    else
        l->head = r->next;
    if (r->next)
        r->next->prev = r->prev;
    else
        l->tail = r->prev;
    r->prev = r->next = NULL;
    l->n--;
}

struct vl2_req *vl2__req_list_pop(struct vl2_req_list *l)
{
    struct vl2_req *r = l->head;

    if (r)
        vl2__req_list_remove(l, r);
    return r;
}

static struct vl2_req_list *list_of(struct vl2_engine *e, enum vl2_req_place place)
{
    switch (place) {
    case VL2_REQ_QUEUED: return &e->queue;
    case VL2_REQ_PREP_TODO: return &e->prep_todo;
    case VL2_REQ_PREPPING: return &e->prepping;
    case VL2_REQ_READY: return &e->ready;
    case VL2_REQ_RUNNING: return &e->running;
    }
    return NULL;
}

/* ---- requests and events ---------------------------------------------- */

/* snprintf for messages that may be cut at the buffer's end. */
#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static void msgf(char *buf, size_t size, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(buf, size, fmt, ap);
    va_end(ap);
}

void vl2__req_free(struct vl2_engine *e, struct vl2_req *r)
{
    (void) e;
    if (!r)
        return;
    /* the engine thread released its sequence and embeddings before */
    vl2_prepared_done(&r->pr);
    free(r->vis);
    free(r->embeds);
    if (r->ts_live)
        vl2_textstream_done(&r->ts);
    vl2_job_free(r->job);
    free(r);
}

static void post(struct vl2_engine *e, struct vl2_event *ev)
{
    if (ev)
        e->post(e->post_ud, ev);
}

void vl2__req_post_error(struct vl2_engine *e, struct vl2_req *r, int code, const char *msg)
{
    struct vl2_event *ev = vl2_event_new(VL2_EVENT_ERROR, r->key);

    if (!ev)
        return;
    ev->code = code < 0 ? code : VL2_EINTERNAL;
    snprintf(ev->message, sizeof(ev->message), "%s", msg && msg[0] ? msg : vl2_status_name(code));
    post(e, ev);
}

void vl2__req_post_progress(struct vl2_engine *e, struct vl2_req *r, enum vl2_event_stage stage,
                            float fraction)
{
    struct vl2_event *ev = vl2_event_new(VL2_EVENT_PROGRESS, r->key);

    if (!ev)
        return;
    ev->stage = stage;
    ev->fraction = fraction;
    post(e, ev);
}

/* An ERROR event for Tokenize job @key. */
static void tok_fail(struct vl2_engine *e, uint64_t key, int code, const char *why)
{
    struct vl2_event *ev = vl2_event_new(VL2_EVENT_ERROR, key);

    if (!ev)
        return;
    ev->code = code;
    msgf(ev->message, sizeof(ev->message), "engine: model '%s': %s", e->name, why);
    post(e, ev);
}

/* An error for request @r: "engine: model 'x': <why>". */
static void req_fail(struct vl2_engine *e, struct vl2_req *r, int code, const char *why)
{
    char msg[VL2_ERR_MSG_SIZE];

    msgf(msg, sizeof(msg), "engine: model '%s': %s", e->name, why);
    vl2__req_post_error(e, r, code, msg);
}

/* ---- the fair queue (caller holds mu) --------------------------------- */

/* Queue @r; its rank is the number of requests of its owner already
 * waiting (the round it belongs to). */
static void queue_push(struct vl2_engine *e, struct vl2_req *r)
{
    const struct vl2_req *q;

    r->rank = 0;
    for (q = e->queue.head; q; q = q->next)
        r->rank += q->owner == r->owner;
    vl2__req_list_push(&e->queue, r, VL2_REQ_QUEUED);
}

static void queue_remove(struct vl2_engine *e, struct vl2_req *r)
{
    struct vl2_req *q;

    for (q = r->next; q; q = q->next)
        if (q->owner == r->owner)
            q->rank--;
    vl2__req_list_remove(&e->queue, r);
}

/* Requests of @uid's connections holding a slot (prep or decode), and in
 * @ret_conns how many of its connections hold them, counted up to 2. */
static size_t uid_slots(const struct vl2_engine *e, uint64_t uid, size_t *ret_conns)
{
    const struct vl2_req_list *lists[] = { &e->prep_todo, &e->prepping, &e->ready,
                                           &e->running };
    const struct vl2_req *q, *first = NULL;
    size_t i, n = 0, conns = 0;

    for (i = 0; i < sizeof(lists) / sizeof(lists[0]); i++)
        for (q = lists[i]->head; q; q = q->next) {
            if (q->job->owner_uid != uid)
                continue;
            n++;
            if (!first) {
                first = q;
                conns = 1;
            } else if (q->owner != first->owner) {
                conns = 2;
            }
        }
    if (ret_conns)
        *ret_conns = conns;
    return n;
}

static size_t owner_slots(const struct vl2_engine *e, uint64_t owner);

/* The next request to admit: round robin between uids, then between the
 * connections of a uid (issue 18): the one whose uid holds the fewest
 * slots; among those, whose connection holds the fewest counting its
 * requests queued before it; then the oldest. */
static struct vl2_req *queue_next(const struct vl2_engine *e)
{
    struct vl2_req *q, *best = NULL;
    size_t best_u = 0, best_c = 0;

    for (q = e->queue.head; q; q = q->next) {
        size_t u = uid_slots(e, q->job->owner_uid, NULL), c = q->rank + owner_slots(e, q->owner);

        if (!best || u < best_u || (u == best_u && c < best_c)) {
            best = q;
            best_u = u;
            best_c = c;
        }
    }
    return best;
}

/* Position @r has in the queue: 1 + the requests admitted before it. */
static uint32_t queue_position(const struct vl2_engine *e, const struct vl2_req *r)
{
    const struct vl2_req *q;
    size_t n = 0;

    for (q = e->queue.head; q && q != r; q = q->next)
        n += q->rank <= r->rank;
    return (uint32_t) (n + 1);
}

static size_t slots_held(const struct vl2_engine *e)
{
    return e->prep_todo.n + e->prepping.n + e->ready.n + e->running.n;
}

/* Requests of @owner holding a slot (prep or decode). */
static size_t owner_slots(const struct vl2_engine *e, uint64_t owner)
{
    const struct vl2_req_list *lists[] = { &e->prep_todo, &e->prepping, &e->ready,
                                           &e->running };
    const struct vl2_req *q;
    size_t i, n = 0;

    for (i = 0; i < sizeof(lists) / sizeof(lists[0]); i++)
        for (q = lists[i]->head; q; q = q->next)
            n += q->owner == owner;
    return n;
}

/* Fairness of the slots (issue 18): the last free slot is kept for a uid
 * that holds none, or else for a connection that holds none whose uid holds
 * its slots through one connection at most: a newcomer starts at once
 * however long the generations of another client are, and many connections
 * of one uid do not take every slot.  The queued request to admit, or NULL
 * when only others wait for the last one. */
static bool may_take_last(const struct vl2_engine *e, const struct vl2_req *r)
{
    size_t conns, u = uid_slots(e, r->job->owner_uid, &conns);

    return u == 0 || (owner_slots(e, r->owner) == 0 && conns < 2);
}

static struct vl2_req *admit_next(struct vl2_engine *e)
{
    struct vl2_req *r = queue_next(e), *q;

    if (e->p.max_sequences < 2 || slots_held(e) + 1 < e->p.max_sequences ||
        may_take_last(e, r))
        return r;
    for (q = e->queue.head; q; q = q->next)
        if (uid_slots(e, q->job->owner_uid, NULL) == 0)
            return q;
    for (q = e->queue.head; q; q = q->next)
        if (may_take_last(e, q))
            return q;
    return NULL;
}

/* Tokenize jobs the engine holds: waiting and encoding.  Their one limit
 * (VL2_ENGINE_MAX_TOKENIZE) is checked in engine_tokenize. */
static size_t tokenize_held(const struct vl2_engine *e)
{
    return e->n_tok_waiting + e->n_tok_encoding;
}

/* Give free slots to queued requests. */
static void admit(struct vl2_engine *e)
{
    if (e->state != VL2_MODEL_STATE_READY || e->stopping || e->quit)
        return;
    while (e->queue.n > 0 && slots_held(e) < e->p.max_sequences) {
        struct vl2_req *r = admit_next(e);

        if (!r)
            break;

        queue_remove(e, r);
        vl2__req_list_push(&e->prep_todo, r, VL2_REQ_PREP_TODO);
        pthread_cond_signal(&e->prep_cv);
    }
}

/* ---- tokens/s over the last minute (caller holds mu) ------------------- */

static void rate_add(struct vl2_engine *e, double now, uint32_t n)
{
    int64_t sec = (int64_t) now;
    size_t slot = (size_t) (sec % VL2_ENGINE_RATE_WINDOW);

    if (n == 0)
        return;
    if (e->t_rate0 == 0)
        e->t_rate0 = now;
    if (e->rate_sec[slot] != sec) {
        e->rate_sec[slot] = sec;
        e->rate_tokens[slot] = 0;
    }
    e->rate_tokens[slot] += n;
}

static double rate_get(const struct vl2_engine *e, double now)
{
    int64_t sec = (int64_t) now;
    double span, sum = 0;
    size_t i;

    for (i = 0; i < VL2_ENGINE_RATE_WINDOW; i++)
        if (e->rate_sec[i] > sec - VL2_ENGINE_RATE_WINDOW && e->rate_sec[i] <= sec)
            sum += e->rate_tokens[i];
    if (sum == 0)
        return 0.0;
    span = now - e->t_rate0;
    if (span > VL2_ENGINE_RATE_WINDOW)
        span = VL2_ENGINE_RATE_WINDOW;
    if (span < 1.0)
        span = 1.0;
    return sum / span;
}

/* Text bytes past which a prompt cannot fit @n_ctx tokens: no token covers
 * more bytes than the longest one (issue 18; replaced invalid UTF-8 only
 * grows the text), so the server refuses longer texts before copying or
 * tokenizing them. */
static size_t prompt_bytes_bound(const struct vl2_tokenizer *tok, int32_t n_ctx)
{
    size_t i, n = vl2_tokenizer_vocab_size(tok), longest = 1;

    for (i = 0; i < n; i++) {
        size_t len = 0;

        if (vl2_tokenizer_token_bytes(tok, (int32_t) i, &len) && len > longest)
            longest = len;
    }
    return (size_t) (n_ctx > 0 ? n_ctx : 1) * longest;
}

/* ---- loading ---------------------------------------------------------- */

static size_t dir_mapped_bytes(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    size_t total = 0;

    if (!d)
        return 0;
    while ((de = readdir(d))) {
        size_t n = strlen(de->d_name);
        struct stat st;

        if (n < 12 || strcmp(de->d_name + n - 12, ".safetensors"))
            continue;
        if (fstatat(dirfd(d), de->d_name, &st, 0) == 0 && S_ISREG(st.st_mode))
            total += (size_t) st.st_size;
    }
    closedir(d);
    return total;
}

static void post_load_progress(struct vl2_engine *e, float fraction)
{
    struct vl2_event *ev;

    if (!e->load_progress)
        return;
    ev = vl2_event_new(VL2_EVENT_PROGRESS, e->load_key);
    if (!ev)
        return;
    ev->stage = VL2_STAGE_LOADING;
    ev->fraction = fraction;
    post(e, ev);
}

static int open_model(struct vl2_engine *e, struct vl2_err *err)
{
    struct vl2_model_params mp = vl2_model_default_params();
    int r;

    mp.backend = e->backend;
    mp.plugin_dir = e->plugin_dir;
    mp.backend_options = e->backend_options;
    mp.n_threads = e->p.n_threads;
    mp.device = e->p.device;
    mp.image_token_id = e->image_token_id;
    mp.n_ctx = e->p.n_ctx;
    if ((int32_t) e->p.max_sequences > mp.max_logit_rows)
        mp.max_logit_rows = (int32_t) e->p.max_sequences;
    /* the KV budget is the engine's (start_seq): it waits for room instead of
     * failing */
    r = vl2_model_load(&e->m, e->dir, &mp, err);
    if (r < 0)
        return r;
    e->kv_token_bytes = vl2_model_kv_token_bytes(e->m);
    return 0;
}

static size_t physical_memory(void)
{
    long pages = sysconf(_SC_PHYS_PAGES), size = sysconf(_SC_PAGESIZE);

    if (pages <= 0 || size <= 0)
        return 0;
    return (size_t) pages * (size_t) size;
}

static int load(struct vl2_engine *e, struct vl2_err *err)
{
    const struct vl2_model_config *cfg;
    struct stat st;
    int r;

    post_load_progress(e, 0.0f);
    if (stat(e->dir, &st) < 0)
        return vl2_err_set(err, errno == ENOENT ? VL2_ENOTFOUND : VL2_EIO, "%s",
                           strerror(errno));
    if (!S_ISDIR(st.st_mode))
        return vl2_err_set(err, VL2_EINVAL, "not a directory");
    r = vl2_tokenizer_load(&e->tok, e->dir, err);
    if (r < 0)
        return r;
    /* Tokenize requests may use it from now on, while the model loads */
    pthread_mutex_lock(&e->mu);
    e->tok_ready = true;
    pthread_mutex_unlock(&e->mu);
    e->image_token_id = vl2_tokenizer_id(e->tok, VL2_PROMPT_IMAGE_TAG);
    if (e->image_token_id < 0)
        return vl2_err_set(err, VL2_EFORMAT, "the tokenizer has no '%s' token",
                           VL2_PROMPT_IMAGE_TAG);
    post_load_progress(e, 0.1f);
    r = open_model(e, err);
    if (r < 0)
        return r;
    post_load_progress(e, 0.9f);
    cfg = vl2_model_config(e->m);
    e->eos_id = vl2_tokenizer_eos(e->tok);
    if (e->eos_id < 0)
        e->eos_id = cfg->lm.eos_id;
    e->n_ctx = vl2_model_n_ctx(e->m);
    e->max_prompt_bytes = prompt_bytes_bound(e->tok, e->n_ctx);
    r = vl2_prep_model_init(&e->pm, e->m, e->tok, err);
    if (r < 0)
        return r;
    e->mapped_bytes = dir_mapped_bytes(e->dir);
    if (e->p.kv_budget) {
        e->kv_budget = e->p.kv_budget;
    } else {
        size_t full = e->kv_token_bytes * (size_t) e->n_ctx;
        size_t quarter = physical_memory() / 4;

        e->kv_budget = full * e->p.max_sequences;
        if (quarter && e->kv_budget > quarter)
            e->kv_budget = quarter;
        if (e->kv_budget < full)
            e->kv_budget = full;
    }
    e->batch_seqs = calloc(e->p.max_sequences, sizeof(*e->batch_seqs));
    e->batch_ids = calloc(e->p.max_sequences, sizeof(*e->batch_ids));
    e->batch_reqs = calloc(e->p.max_sequences, sizeof(*e->batch_reqs));
    if (!e->batch_seqs || !e->batch_ids || !e->batch_reqs)
        return vl2_err_set(err, VL2_ENOMEM, "out of memory");
    post_load_progress(e, 1.0f);
    return 0;
}

static void refresh_memory(struct vl2_engine *e)
{
    uint64_t bytes = 0;

    if (e->m) {
        struct vl2_backend_ctx *ctx;
        const struct vl2_backend_ops *ops = vl2_model_backend(e->m, &ctx);

        bytes = e->mapped_bytes + (ops->mem_used ? ops->mem_used(ctx) : 0);
    }
    pthread_mutex_lock(&e->mu);
    e->memory_bytes = bytes;
    pthread_mutex_unlock(&e->mu);
}

/* ---- generation (engine thread) --------------------------------------- */

/* The alternatives of @t into @ev (copied: the event outlives the model). */
static int set_top(struct vl2_event *ev, const struct vl2_ts_token *t)
{
    size_t i, size = 0, at = 0;

    for (i = 0; i < t->n_top; i++)
        size += t->top[i].len;
    ev->top = calloc(t->n_top, sizeof(*ev->top));
    ev->top_text = malloc(size ? size : 1);
    if (!ev->top || !ev->top_text)
        return VL2_ENOMEM;
    for (i = 0; i < t->n_top; i++) {
        ev->top[i].id = (uint32_t) t->top[i].id;
        ev->top[i].logprob = t->top[i].logprob;
        ev->top[i].text_size = t->top[i].len;
        if (t->top[i].len)
            memcpy(ev->top_text + at, t->top[i].text, t->top[i].len);
        at += t->top[i].len;
    }
    ev->n_top = t->n_top;
    return 0;
}

/* A TOKEN event for @t (its new text, its id, its log-probability, its
 * alternatives). */
static void send_token(struct vl2_engine *e, struct vl2_req *r, const struct vl2_ts_token *t)
{
    struct vl2_event *ev = vl2_event_new(VL2_EVENT_TOKEN, r->key);

    if (!ev)
        return;
    if (vl2_event_set_text(ev, t->text, t->len) < 0) {
        vl2_event_free(ev);
        return;
    }
    ev->token_id = t->id < 0 ? 0 : (uint32_t) t->id;
    ev->has_logprob = t->has_logprob;
    ev->logprob = t->logprob;
    if (t->n_top && set_top(ev, t) < 0) {
        vl2_event_free(ev);
        return;
    }
    post(e, ev);
}

/* Release what the request holds on the model (engine thread). */
static void release_seq(struct vl2_engine *e, struct vl2_req *r)
{
    size_t i;

    for (i = 0; r->vis && i < r->pr.n_images; i++) {
        if (r->vis[i].job && e->m)
            vl2_model_image_abort(e->m, r->vis[i].job);
        r->vis[i].job = NULL;
        if (r->vis[i].embed && e->m)
            vl2_image_embed_free(e->m, r->vis[i].embed);
        r->vis[i].embed = NULL;
        r->embeds[i] = NULL;
    }
    if (r->seq) {
        vl2_seq_free(r->seq);
        e->kv_used -= r->kv_bytes;
    }
    r->seq = NULL;
    r->kv_bytes = 0;
}

/* Take @r off the running list and free it (its terminal event is sent). */
static void retire(struct vl2_engine *e, struct vl2_req *r)
{
    release_seq(e, r);
    pthread_mutex_lock(&e->mu);
    vl2__req_list_remove(&e->running, r);
    admit(e);
    pthread_mutex_unlock(&e->mu);
    vl2__req_free(e, r);
}

static void finish_error(struct vl2_engine *e, struct vl2_req *r, int code, const char *why)
{
    req_fail(e, r, code, why);
    retire(e, r);
}

/* Boxes of the answer, on the grid of the conversation's last image (spec
 * 9), into @ev. */
static void add_boxes(struct vl2_req *r, struct vl2_event *ev)
{
    const struct vl2_prepared_image *last = &r->pr.images[r->pr.n_images - 1];
    struct vl2_box *boxes = NULL;
    size_t n = 0, i;

    if (vl2_grounding_parse(r->ts.text ? r->ts.text : "", r->ts.len, last->width,
                            last->height, &boxes, &n, NULL) < 0 || n == 0)
        return;
    ev->boxes = calloc(n, sizeof(*ev->boxes));
    if (ev->boxes) {
        for (i = 0; i < n; i++) {
            ev->boxes[i].label = boxes[i].label;   /* moved */
            boxes[i].label = NULL;
            ev->boxes[i].x1 = boxes[i].x1;
            ev->boxes[i].y1 = boxes[i].y1;
            ev->boxes[i].x2 = boxes[i].x2;
            ev->boxes[i].y2 = boxes[i].y2;
            ev->boxes[i].image_index = (uint32_t) (r->pr.n_images - 1);
        }
        ev->n_boxes = n;
    }
    vl2_boxes_free(boxes, n);
}

/* DONE for @r (every piece of text already sent), then free it. */
static void finish_done(struct vl2_engine *e, struct vl2_req *r, enum vl2_finish_reason why)
{
    struct vl2_event *ev = vl2_event_new(VL2_EVENT_DONE, r->key);

    if (ev) {
        size_t n_gen = r->ts.n_gen;

        ev->finish_reason = why;
        ev->prompt_tokens = (uint32_t) r->pr.n_ids;
        ev->image_tokens = (uint32_t) r->pr.n_image_tokens;
        ev->generated_tokens = (uint32_t) n_gen;
        ev->time_to_first_token_s = n_gen ? r->t_first - r->t_submit : 0.0;
        ev->decode_tokens_per_s = n_gen > 1 && r->t_last > r->t_first
                                      ? (double) (n_gen - 1) / (r->t_last - r->t_first)
                                      : 0.0;
        if (r->job->grounding && r->pr.n_images > 0)
            add_boxes(r, ev);
        post(e, ev);
    }
    retire(e, r);
}

/* The next id of @r from its logits (text, stop strings, one TOKEN event);
 * then set up the next decode step or finish the request (freeing it). */
static void sample(struct vl2_engine *e, struct vl2_req *r)
{
    struct vl2_err err = { 0 };
    struct vl2_ts_token t;

    r->t_last = vl2_now();
    if (r->ts.n_gen == 0)
        r->t_first = r->t_last;
    r->has_next = false;
    if (vl2_textstream_next(&r->ts, r->seq, r->job->logprobs || r->job->top_logprobs,
                            &t, &err) < 0) {
        finish_error(e, r, err.code, err.msg);
        return;
    }
    if (t.send)
        send_token(e, r, &t);
    if (r->ts.finish) {
        finish_done(e, r, (enum vl2_finish_reason) r->ts.finish);
        return;
    }
    r->next_id = t.id;
    r->has_next = true;
}

/* Reserve the KV cache of @r.  Returns 1 when done, 0 when it must wait for
 * room, < 0 with @err when it can never fit. */
static int start_seq(struct vl2_engine *e, struct vl2_req *r, struct vl2_err *err)
{
    struct vl2_seq_params sp = vl2_seq_default_params();
    struct vl2_textstream_params tp = {
        .tok = e->tok, .eos_id = e->eos_id, .ignore_eos = r->job->sampling.ignore_eos,
        .max_new = r->pr.max_new, .stops = r->pr.stops, .n_stops = r->pr.n_stops,
        .top_logprobs = r->job->top_logprobs,
    };
    size_t cap = r->pr.n_ids + r->pr.max_new, need;
    int rc;

    if (cap > (size_t) e->n_ctx)
        cap = (size_t) e->n_ctx;
    need = cap * e->kv_token_bytes;
    if (need > e->kv_budget)
        return vl2_err_set(err, VL2_ELIMIT, "%zu tokens of KV cache need %zu bytes, the "
                           "budget is %zu", cap, need, e->kv_budget);
    if (need > e->kv_budget - e->kv_used)
        return 0;
    sp.capacity = (int32_t) cap;
    sp.sampler = r->pr.sp;
    /* greedy requests without log-probabilities need only the ids: the
     * backend picks them and the logits stay on the device (top_logprobs
     * comes with logprobs) */
    sp.device_greedy = !r->job->logprobs && !r->job->top_logprobs;
    rc = vl2_textstream_init(&r->ts, &tp, err);
    if (rc < 0)
        return rc;
    r->ts_live = true;
    rc = vl2_seq_new(e->m, &sp, &r->seq, err);
    if (rc < 0)
        return rc;
    r->kv_bytes = need;
    e->kv_used += need;
    return 1;
}

/* The prompt of @r is in: drop its image embeddings, take its first token. */
static void prefill_done(struct vl2_engine *e, struct vl2_req *r)
{
    size_t i;

    for (i = 0; i < r->pr.n_images; i++) {
        vl2_image_embed_free(e->m, r->vis[i].embed);
        r->vis[i].embed = NULL;
        r->embeds[i] = NULL;
    }
    r->decoding = true;
    sample(e, r);
}

/* Up to @max_tiles distinct tiles (0: all) of @r's next image through the
 * vision tower; the image's embedding once they all went through. */
static void encode_some(struct vl2_engine *e, struct vl2_req *r, int32_t max_tiles)
{
    struct vl2_prepared_image *im = &r->pr.images[r->n_encoded];
    struct vl2_req_vision *vis = &r->vis[r->n_encoded];
    struct vl2_err err = { 0 };
    int32_t done_tiles, total;
    int rc = 0, done = 0;

    if (!vis->job)
        rc = vl2_model_image_begin(e->m, im->tiles, im->tiling.n_tiles, im->tiling.tiles_w,
                                   im->tiling.tiles_h, &vis->job, &err);
    if (rc == 0)
        rc = vl2_model_image_step(e->m, vis->job, max_tiles, &done, &err);
    if (rc == 0 && !done) {
        vl2_model_image_progress(vis->job, &done_tiles, &total);
        vl2__req_post_progress(e, r, VL2_STAGE_VISION,
                               ((float) r->n_encoded + (float) done_tiles / (float) total) /
                               (float) r->pr.n_images);
        return;
    }
    if (rc == 0) {
        rc = vl2_model_image_finish(e->m, vis->job, &vis->embed, &err);
        vis->job = NULL;  /* freed by finish, also on error */
    }
    if (rc == 0 && vis->embed->n_tokens != im->tiling.n_tokens)
        rc = vl2_err_set(&err, VL2_EINTERNAL, "%d image tokens from the model, %d planned",
                         vis->embed->n_tokens, im->tiling.n_tokens);
    if (rc < 0) {
        char why[VL2_ERR_MSG_SIZE + 32];

        msgf(why, sizeof(why), "image %zu: %s", r->n_encoded, err.msg);
        finish_error(e, r, rc, why);
        return;
    }
    free(im->tiles);
    im->tiles = NULL;
    r->embeds[r->n_encoded] = vis->embed;
    r->n_encoded++;
    vl2__req_post_progress(e, r, VL2_STAGE_VISION,
                           (float) r->n_encoded / (float) r->pr.n_images);
}

/* One prefill pass over chunks of several starting requests' prompts, at
 * most VL2_ENGINE_PREFILL_CHUNK rows in all; a request whose prompt is then
 * complete takes its first token. */
static void prefill_some(struct vl2_engine *e, struct vl2_req **reqs, size_t n)
{
    struct vl2_step_item *items = calloc(n, sizeof(*items));
    struct vl2_err err = { 0 };
    size_t rows = 0, k = 0, i, j;
    int rc;

    if (!items) {
        for (i = 0; i < n; i++)
            finish_error(e, reqs[i], VL2_ENOMEM, "out of memory");
        return;
    }
    for (i = 0; i < n && rows < VL2_ENGINE_PREFILL_CHUNK; i++) {
        struct vl2_req *r = reqs[i];
        size_t take = r->pr.n_ids - r->n_fed;

        if (take > VL2_ENGINE_PREFILL_CHUNK - rows)
            take = VL2_ENGINE_PREFILL_CHUNK - rows;
        items[k++] = (struct vl2_step_item){
            .seq = r->seq, .ids = r->pr.ids + r->n_fed, .n_ids = (int32_t) take,
            .images = r->embeds, .n_images = (int32_t) r->pr.n_images,
            .image_row0 = r->image_rows, .want_logits = r->n_fed + take == r->pr.n_ids,
        };
        rows += take;
    }
    rc = vl2_model_step(e->m, items, k, &err);
    for (i = 0; i < k; i++) {
        struct vl2_req *r = reqs[i];

        if (rc < 0) {
            finish_error(e, r, rc, err.msg);
            continue;
        }
        for (j = 0; j < (size_t) items[i].n_ids; j++)
            r->image_rows += items[i].ids[j] == e->image_token_id;
        r->n_fed += (size_t) items[i].n_ids;
        vl2__req_post_progress(e, r, VL2_STAGE_PREFILL,
                               (float) r->n_fed / (float) r->pr.n_ids);
        if (r->n_fed == r->pr.n_ids)
            prefill_done(e, r);
    }
    free(items);
}

/* Work for the requests that have not started decoding, oldest first:
 * reserve their KV caches (the oldest that finds no room waits, and those
 * after it), vision_tiles_per_step tiles of one image through the vision
 * tower (the whole image when no other request runs), one prefill pass. */
static void start_requests(struct vl2_engine *e)
{
    struct vl2_req *r, *next, *vision = NULL;
    struct vl2_req **pre = e->batch_reqs;
    struct vl2_err err = { 0 };
    size_t n_pre = 0;
    int rc;

    for (r = e->running.head; r; r = next) {
        next = r->next;
        if (r->decoding)
            continue;
        if (r->pr.max_new == 0) {
            finish_done(e, r, VL2_FINISH_LENGTH);
            continue;
        }
        if (!r->seq) {
            rc = start_seq(e, r, &err);
            if (rc == 0)
                break;  /* only while others hold KV: room comes back when they finish */
            if (rc < 0) {
                finish_error(e, r, rc, err.msg);
                continue;
            }
        }
        if (r->n_encoded < r->pr.n_images) {
            if (!vision)
                vision = r;
            continue;
        }
        pre[n_pre++] = r;
    }
    if (vision)
        encode_some(e, vision, e->running.n > 1 ? (int32_t) e->p.vision_tiles_per_step : 0);
    if (n_pre > 0)
        prefill_some(e, pre, n_pre);
}

/* One vl2_model_decode() step for every decoding request. */
static void decode_step(struct vl2_engine *e)
{
    struct vl2_err err = { 0 };
    struct vl2_req *r;
    size_t n = 0, i;
    int rc;

    for (r = e->running.head; r && n < e->p.max_sequences; r = r->next)
        if (r->decoding && r->has_next) {
            e->batch_reqs[n] = r;
            e->batch_seqs[n] = r->seq;
            e->batch_ids[n] = r->next_id;
            n++;
        }
    if (n == 0)
        return;
    rc = vl2_model_decode(e->m, e->batch_seqs, e->batch_ids, n, &err);
    if (rc < 0) {
        for (i = 0; i < n; i++)
            finish_error(e, e->batch_reqs[i], rc, err.msg);
        return;
    }
    pthread_mutex_lock(&e->mu);
    rate_add(e, vl2_now(), (uint32_t) n);
    pthread_mutex_unlock(&e->mu);
    for (i = 0; i < n; i++)
        sample(e, e->batch_reqs[i]);
}

/* ---- the engine thread ------------------------------------------------ */

/* End every request that waits or runs: with an ERROR @code "@why", or
 * silently when @why is NULL (the server is gone). */
static void fail_all(struct vl2_engine *e, int code, const char *why)
{
    struct vl2_req_list lists[4];
    struct vl2_req *r;
    size_t i;

    pthread_mutex_lock(&e->mu);
    lists[0] = e->queue;
    lists[1] = e->prep_todo;
    lists[2] = e->ready;
    lists[3] = e->running;
    memset(&e->queue, 0, sizeof(e->queue));
    memset(&e->prep_todo, 0, sizeof(e->prep_todo));
    memset(&e->ready, 0, sizeof(e->ready));
    memset(&e->running, 0, sizeof(e->running));
    pthread_mutex_unlock(&e->mu);
    for (i = 0; i < 4; i++)
        while ((r = vl2__req_list_pop(&lists[i]))) {
            if (why)
                req_fail(e, r, code, why);
            release_seq(e, r);
            vl2__req_free(e, r);
        }
}

static void set_failed(struct vl2_engine *e, const struct vl2_err *err)
{
    char why[VL2_ERR_MSG_SIZE + 64];
    struct vl2_event *ev;
    int code = err->code < 0 ? err->code : VL2_EINTERNAL;

    pthread_mutex_lock(&e->mu);
    e->state = VL2_MODEL_STATE_FAILED;
    e->error_code = code;
    msgf(e->error, sizeof(e->error), "engine: model '%s' failed to load from '%s': %s",
         e->name, e->dir, err->msg);
    pthread_cond_broadcast(&e->state_cv);
    pthread_mutex_unlock(&e->mu);
    ev = vl2_event_new(VL2_EVENT_ERROR, e->load_key);
    if (ev) {
        ev->code = code;
        msgf(ev->message, sizeof(ev->message), "%s", e->error);
        post(e, ev);
    }
    msgf(why, sizeof(why), "failed to load: %s", err->msg);
    fail_all(e, code, why);
}

/* Wait for work, move prepared requests to the running list.  Returns
 * false when the engine must stop. */
static bool gather(struct vl2_engine *e)
{
    struct vl2_req *r;
    bool go;

    pthread_mutex_lock(&e->mu);
    while (!e->quit && !e->stopping && e->ready.n == 0 && e->running.n == 0) {
        if (e->p.idle_unload_s > 0 && e->m) {
            double due = e->t_idle + e->p.idle_unload_s, now = vl2_now();
            struct timespec ts;

            if (now >= due)
                break;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_sec += (time_t) (due - now) + 1;
            pthread_cond_timedwait(&e->cv, &e->mu, &ts);
            continue;
        }
        pthread_cond_wait(&e->cv, &e->mu);
    }
    while ((r = vl2__req_list_pop(&e->ready)))
        vl2__req_list_push(&e->running, r, VL2_REQ_RUNNING);
    go = !e->quit && !e->stopping;
    pthread_mutex_unlock(&e->mu);
    return go;
}

/* End the running requests that were cancelled, before the next step. */
static void reap_cancelled(struct vl2_engine *e)
{
    struct vl2_req *r, *next;

    for (r = e->running.head; r; r = next) {
        const char *why;
        bool c;

        next = r->next;
        pthread_mutex_lock(&e->mu);
        c = r->cancelled;
        why = r->cancel_why;
        pthread_mutex_unlock(&e->mu);
        if (c)
            finish_error(e, r, VL2_ECANCELED, why ? why : "cancelled");
    }
}

/* Release the model after idle_unload_s without work. */
static void idle_unload(struct vl2_engine *e)
{
    if (!e->m || e->p.idle_unload_s <= 0 || e->running.head)
        return;
    if (vl2_now() < e->t_idle + e->p.idle_unload_s)
        return;
    vl2_model_free(e->m);
    e->m = NULL;
    refresh_memory(e);
}

/* After an idle unload: load the model again for the requests that came. */
static bool ensure_model(struct vl2_engine *e)
{
    struct vl2_err err = { 0 };
    char why[VL2_ERR_MSG_SIZE + 32];
    struct vl2_req *r, *next;

    if (e->m)
        return true;
    for (r = e->running.head; r; r = r->next)
        vl2__req_post_progress(e, r, VL2_STAGE_LOADING, 0.0f);
    if (open_model(e, &err) == 0) {
        refresh_memory(e);
        return true;
    }
    msgf(why, sizeof(why), "loading again: %s", err.msg);
    for (r = e->running.head; r; r = next) {
        next = r->next;
        finish_error(e, r, err.code, why);
    }
    return false;
}

static void serve(struct vl2_engine *e)
{
    for (;;) {
        if (!gather(e))
            return;
        idle_unload(e);
        reap_cancelled(e);
        if (!e->running.head || !ensure_model(e))
            continue;
        start_requests(e);
        decode_step(e);
        refresh_memory(e);
        if (!e->running.head)
            e->t_idle = vl2_now();
    }
}

static void *engine_main(void *arg)
{
    struct vl2_engine *e = arg;
    struct vl2_err err = { 0 };
    double t0 = vl2_now();
    struct vl2_event *ev;
    bool quit;

    if (load(e, &err) < 0) {
        vl2_model_free(e->m);
        e->m = NULL;
        set_failed(e, &err);
        goto out_wait;
    }
    pthread_mutex_lock(&e->mu);
    e->state = VL2_MODEL_STATE_READY;
    pthread_cond_broadcast(&e->state_cv);
    admit(e);
    pthread_mutex_unlock(&e->mu);
    refresh_memory(e);
    ev = vl2_event_new(VL2_EVENT_LOADED, e->load_key);
    if (ev) {
        ev->load_s = vl2_now() - t0;
        post(e, ev);
    }
    e->t_idle = vl2_now();
    serve(e);

    /* stop() or free(): end every request, give the model back */
    pthread_mutex_lock(&e->mu);
    quit = e->quit;
    pthread_mutex_unlock(&e->mu);
    fail_all(e, VL2_ECANCELED, quit ? NULL : "the model is being unloaded");
    vl2_model_free(e->m);
    e->m = NULL;
    refresh_memory(e);

out_wait:
    pthread_mutex_lock(&e->mu);
    while (!e->quit && !e->stopping)
        pthread_cond_wait(&e->cv, &e->mu);
    /* the Tokenize jobs taken are answered before UNLOADED */
    while (!e->quit && tokenize_held(e) > 0)
        pthread_cond_wait(&e->state_cv, &e->mu);
    quit = e->quit;
    pthread_mutex_unlock(&e->mu);
    if (!quit)
        post(e, vl2_event_new(VL2_EVENT_UNLOADED, e->load_key));
    return NULL;
}

/* ---- prep threads ----------------------------------------------------- */

/* The next request to prepare: one owner never takes every prep thread (a
 * descriptor that is slow to read would hold them all), so a request of an
 * owner already preparing n_prep - 1 waits while others go first.  NULL when
 * none may start now. */
static struct vl2_req *prep_pick(struct vl2_engine *e)
{
    struct vl2_req *q;

    for (q = e->prep_todo.head; q; q = q->next) {
        const struct vl2_req *p;
        size_t busy = 0;

        for (p = e->prepping.head; p; p = p->next)
            busy += p->owner == q->owner;
        if (e->n_prep < 2 || busy < e->n_prep - 1) {
            vl2__req_list_remove(&e->prep_todo, q);
            return q;
        }
    }
    return NULL;
}

/* Encode one Tokenize job and post its answer (a prep thread, without the
 * lock: the tokenizer is immutable once loaded). */
static void run_tokenize(struct vl2_engine *e, struct vl2_tokenize_job *job)
{
    struct vl2_event *ev = vl2_event_new(VL2_EVENT_TOKENIZED, job->key);
    struct vl2_err err = { 0 };
    int32_t *ids = NULL, bos = job->add_bos ? vl2_tokenizer_bos(e->tok) : -1;
    size_t n = 0, i, bytes = 0, off = 0;
    int rc;

    rc = vl2_tokenizer_encode(e->tok, job->text, job->len, &ids, &n, &err);
    if (rc == 0 && ev) {
        size_t k = bos >= 0;

        ev->ids = malloc((n + k + 1) * sizeof(*ev->ids));
        if (!ev->ids)
            rc = vl2_err_set(&err, VL2_ENOMEM, "out of memory for %zu ids", n);
        for (i = 0; rc == 0 && i < n + k; i++)
            ev->ids[i] = i < k ? bos : ids[i - k];
        ev->n_ids = rc == 0 ? n + k : 0;
    }
    if (rc == 0 && ev && job->pieces) {
        ev->piece_len = malloc((ev->n_ids + 1) * sizeof(*ev->piece_len));
        for (i = 0; ev->piece_len && i < ev->n_ids; i++) {
            size_t plen = 0;

            if (!vl2_tokenizer_token_bytes(e->tok, ev->ids[i], &plen))
                plen = 0;
            ev->piece_len[i] = (uint32_t) plen;
            bytes += plen;
        }
        ev->text = malloc(bytes + 1);
        ev->text_size = bytes;
        if (!ev->piece_len || !ev->text)
            rc = vl2_err_set(&err, VL2_ENOMEM, "out of memory for the pieces");
        for (i = 0; rc == 0 && i < ev->n_ids; i++) {
            size_t plen = 0;
            const char *p = vl2_tokenizer_token_bytes(e->tok, ev->ids[i], &plen);

            if (p && plen)
                memcpy(ev->text + off, p, plen);
            off += ev->piece_len[i];
        }
    }
    free(ids);
    if (!ev || rc < 0) {
        char msg[VL2_ERR_MSG_SIZE];

        vl2_event_free(ev);
        ev = vl2_event_new(VL2_EVENT_ERROR, job->key);
        if (ev) {
            ev->code = rc < 0 ? rc : VL2_ENOMEM;
            msgf(msg, sizeof(msg), "engine: model '%s': tokenize: %s", e->name,
                 rc < 0 ? err.msg : "out of memory");
            msgf(ev->message, sizeof(ev->message), "%s", msg);
        }
    }
    post(e, ev);
}

static struct vl2_tokenize_job *tok_pop(struct vl2_engine *e)
{
    struct vl2_tok_req *t = e->tok_head;
    struct vl2_tokenize_job *job;

    if (!t)
        return NULL;
    e->tok_head = t->next;
    if (!e->tok_head)
        e->tok_tail = NULL;
    e->n_tok_waiting--;
    job = t->job;
    free(t);
    return job;
}

static void *prep_main(void *arg)
{
    struct vl2_engine *e = arg;
    struct vl2_tokenize_job *tj;
    struct vl2_req *r;
    bool last_tok = false;

    pthread_mutex_lock(&e->mu);
    for (;;) {
        struct vl2_err err = { 0 };
        bool dead;
        int rc;

        if (e->quit)
            break;
        /* Tokenize jobs and requests take turns on each thread */
        tj = NULL;
        r = NULL;
        if (e->tok_head && (!last_tok || !e->prep_todo.head))
            tj = tok_pop(e);
        else
            r = prep_pick(e);
        if (tj) {
            last_tok = true;
            e->n_tok_encoding++;
            pthread_mutex_unlock(&e->mu);
            run_tokenize(e, tj);
            vl2_tokenize_job_free(tj);
            pthread_mutex_lock(&e->mu);
            e->n_tok_encoding--;
            pthread_cond_broadcast(&e->state_cv);
            continue;
        }
        if (!r) {
            pthread_cond_wait(&e->prep_cv, &e->mu);
            continue;
        }
        last_tok = false;
        vl2__req_list_push(&e->prepping, r, VL2_REQ_PREPPING);
        pthread_mutex_unlock(&e->mu);
        rc = vl2__prep_request(e, r, &err);
        pthread_mutex_lock(&e->mu);
        vl2__req_list_remove(&e->prepping, r);
        pthread_cond_broadcast(&e->prep_cv);   /* its owner's next may start (prep_pick) */
        dead = r->cancelled || e->stopping || e->quit;
        if (rc >= 0 && !dead) {
            vl2__req_list_push(&e->ready, r, VL2_REQ_READY);
            pthread_cond_signal(&e->cv);
            continue;
        }
        admit(e);
        if (!e->quit) {
            if (dead)
                req_fail(e, r, VL2_ECANCELED, r->cancel_why ? r->cancel_why : "cancelled");
            else
                req_fail(e, r, rc, err.msg);
        }
        pthread_mutex_unlock(&e->mu);
        vl2__req_free(e, r);
        pthread_mutex_lock(&e->mu);
    }
    pthread_mutex_unlock(&e->mu);
    return NULL;
}

/* ---- the server's side (loop thread) ---------------------------------- */

static int engine_submit(void *engine, struct vl2_job *job, struct vl2_err *err)
{
    struct vl2_engine *e = engine;
    struct vl2_event *ev;
    struct vl2_req *r;
    int rc = 0;

    r = calloc(1, sizeof(*r));
    ev = vl2_event_new(VL2_EVENT_ACCEPTED, job->key);
    if (!r || !ev) {
        free(r);
        vl2_event_free(ev);
        return vl2_err_set(err, VL2_ENOMEM, "engine: out of memory");
    }
    pthread_mutex_lock(&e->mu);
    if (e->state == VL2_MODEL_STATE_FAILED) {
        rc = vl2_err_set(err, e->error_code, "%s", e->error);
    } else if (e->stopping || e->quit) {
        rc = vl2_err_set(err, VL2_ENOTFOUND, "engine: model '%s' is being unloaded", e->name);
    } else if (e->queue.n >= e->p.max_queue) {
        rc = vl2_err_set(err, VL2_EBUSY, "engine: model '%s': %zu requests wait already, "
                         "try again later", e->name, e->queue.n);
    }
    if (rc < 0) {
        pthread_mutex_unlock(&e->mu);
        free(r);
        vl2_event_free(ev);
        return rc;
    }
    r->job = job;
    r->key = job->key;
    r->owner = job->owner;
    r->seq_no = e->next_seq_no++;
    r->t_submit = vl2_now();
    queue_push(e, r);
    admit(e);
    ev->queue_position = r->place == VL2_REQ_QUEUED ? queue_position(e, r) : 0;
    /* posted under the lock: ACCEPTED goes before anything the threads post */
    post(e, ev);
    pthread_mutex_unlock(&e->mu);
    return 0;
}

static struct vl2_req *find_key(struct vl2_engine *e, uint64_t key)
{
    static const enum vl2_req_place places[] = {
        VL2_REQ_QUEUED, VL2_REQ_PREP_TODO, VL2_REQ_PREPPING, VL2_REQ_READY, VL2_REQ_RUNNING,
    };
    size_t i;

    for (i = 0; i < sizeof(places) / sizeof(places[0]); i++) {
        struct vl2_req *r;

        for (r = list_of(e, places[i])->head; r; r = r->next)
            if (r->key == key)
                return r;
    }
    return NULL;
}

static void engine_cancel(void *engine, uint64_t key)
{
    struct vl2_engine *e = engine;
    struct vl2_req *r;

    pthread_mutex_lock(&e->mu);
    r = find_key(e, key);
    if (!r) {
        struct vl2_tok_req **pp, *t = NULL;

        /* a Tokenize job that waits ends here; one encoding ends by itself */
        for (pp = &e->tok_head; *pp; pp = &(*pp)->next)
            if ((*pp)->job->key == key) {
                t = *pp;
                *pp = t->next;
                break;
            }
        if (t) {
            struct vl2_tok_req *q;

            e->tok_tail = NULL;
            for (q = e->tok_head; q; q = q->next)
                e->tok_tail = q;
            e->n_tok_waiting--;
            pthread_cond_broadcast(&e->state_cv);
            tok_fail(e, t->job->key, VL2_ECANCELED, "cancelled");
            vl2_tokenize_job_free(t->job);
            free(t);
        }
        pthread_mutex_unlock(&e->mu);
        return;
    }
    if (r->place == VL2_REQ_QUEUED || r->place == VL2_REQ_PREP_TODO) {
        /* nothing started: end it here */
        if (r->place == VL2_REQ_QUEUED)
            queue_remove(e, r);
        else
            vl2__req_list_remove(&e->prep_todo, r);
        admit(e);
        req_fail(e, r, VL2_ECANCELED, "cancelled");
        pthread_mutex_unlock(&e->mu);
        vl2__req_free(e, r);
        return;
    }
    r->cancel_why = "cancelled";
    atomic_store(&r->cancelled, true);
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
}

static void engine_stats(void *engine, struct vl2_engine_stats *ret)
{
    struct vl2_engine *e = engine;

    pthread_mutex_lock(&e->mu);
    ret->memory_bytes = e->memory_bytes;
    ret->queue_length = (uint32_t) e->queue.n;
    ret->active_sequences = (uint32_t) slots_held(e);
    ret->tokens_per_s = rate_get(e, vl2_now());
    ret->backend = e->backend;
    ret->state = e->stopping ? VL2_MODEL_STATE_UNLOADING : e->state;
    ret->error = e->state == VL2_MODEL_STATE_FAILED ? e->error : NULL;
    ret->max_prompt_bytes = e->state == VL2_MODEL_STATE_READY ? e->max_prompt_bytes : 0;
    pthread_mutex_unlock(&e->mu);
}

static void engine_stop(void *engine)
{
    struct vl2_engine *e = engine;

    pthread_mutex_lock(&e->mu);
    e->stopping = true;
    atomic_store(&e->halting, true);
    pthread_cond_broadcast(&e->cv);
    pthread_cond_broadcast(&e->prep_cv);
    pthread_mutex_unlock(&e->mu);
}

static void engine_free(void *engine)
{
    struct vl2_engine *e = engine;
    struct vl2_req *r;
    size_t i;

    if (!e)
        return;
    pthread_mutex_lock(&e->mu);
    e->quit = true;
    atomic_store(&e->halting, true);
    pthread_cond_broadcast(&e->cv);
    pthread_cond_broadcast(&e->prep_cv);
    pthread_cond_broadcast(&e->state_cv);
    pthread_mutex_unlock(&e->mu);
    if (e->thread_started)
        pthread_join(e->thread, NULL);
    for (i = 0; i < e->n_prep; i++)
        pthread_join(e->prep[i], NULL);
    /* the engine thread released the model; what is left holds no model */
    while ((r = vl2__req_list_pop(&e->queue)))
        vl2__req_free(e, r);
    while ((r = vl2__req_list_pop(&e->prep_todo)))
        vl2__req_free(e, r);
    while ((r = vl2__req_list_pop(&e->ready)))
        vl2__req_free(e, r);
    {
        struct vl2_tokenize_job *tj;

        while ((tj = tok_pop(e)))
            vl2_tokenize_job_free(tj);
    }
    vl2_model_free(e->m);
    vl2_tokenizer_free(e->tok);
    free(e->batch_seqs);
    free(e->batch_ids);
    free(e->batch_reqs);
    free(e->prep);
    pthread_cond_destroy(&e->cv);
    pthread_cond_destroy(&e->prep_cv);
    pthread_cond_destroy(&e->state_cv);
    pthread_mutex_destroy(&e->mu);
    free(e->name);
    free(e->dir);
    free(e->backend);
    free(e->plugin_dir);
    free(e->backend_options);
    free(e);
}

static int engine_tokenize(void *engine, struct vl2_tokenize_job *job, struct vl2_err *err)
{
    struct vl2_engine *e = engine;
    struct vl2_tok_req *t = calloc(1, sizeof(*t));
    int rc = 0;

    if (!t)
        return vl2_err_set(err, VL2_ENOMEM, "engine: out of memory");
    pthread_mutex_lock(&e->mu);
    if (e->state == VL2_MODEL_STATE_FAILED)
        rc = vl2_err_set(err, e->error_code, "%s", e->error);
    else if (e->stopping || e->quit)
        rc = vl2_err_set(err, VL2_ENOTFOUND, "engine: model '%s' is being unloaded", e->name);
    else if (!e->tok_ready)
        rc = vl2_err_set(err, VL2_EBUSY, "engine: model '%s' is still loading its tokenizer, "
                         "try again", e->name);
    else if (tokenize_held(e) >= VL2_ENGINE_MAX_TOKENIZE)
        rc = vl2_err_set(err, VL2_EBUSY, "engine: model '%s': %zu texts are being encoded, "
                         "try again", e->name, tokenize_held(e));
    else if (job->add_bos && vl2_tokenizer_bos(e->tok) < 0)
        rc = vl2_err_set(err, VL2_EUNSUPPORTED, "engine: model '%s': tokenize: the tokenizer "
                         "has no bos_token", e->name);
    if (rc < 0) {
        pthread_mutex_unlock(&e->mu);
        free(t);
        return rc;
    }
    t->job = job;
    if (e->tok_tail)
        e->tok_tail->next = t;
    else
        e->tok_head = t;
    e->tok_tail = t;
    e->n_tok_waiting++;
    pthread_cond_signal(&e->prep_cv);
    pthread_mutex_unlock(&e->mu);
    return 0;
}

static const struct vl2_engine_ops engine_ops = {
    .submit = engine_submit,
    .cancel = engine_cancel,
    .stats = engine_stats,
    .free = engine_free,
    .stop = engine_stop,
    .tokenize = engine_tokenize,
};

const struct vl2_engine_ops *vl2_engine_ops(void)
{
    return &engine_ops;
}

/* ---- life cycle ------------------------------------------------------- */

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

int vl2_engine_new(const struct vl2_engine_params *p, const struct vl2_engine_spec *spec,
                   struct vl2_engine **ret, struct vl2_err *err)
{
    struct vl2_engine *e;
    size_t i;
    int rc;

    rc = vl2_engine_check_params(p, err);
    if (rc < 0)
        return rc;
    if (!spec->name || !spec->name[0] || !spec->dir || !spec->dir[0] || !spec->post)
        return vl2_err_set(err, VL2_EINVAL, "engine: a model needs a name, a directory and "
                           "an event sink");
    e = calloc(1, sizeof(*e));
    if (!e)
        return vl2_err_set(err, VL2_ENOMEM, "engine: out of memory");
    e->p = *p;
    e->name = strdup(spec->name);
    e->dir = strdup(spec->dir);
    e->backend = strdup(spec->backend && spec->backend[0] ? spec->backend : p->backend);
    e->plugin_dir = dup_or_null(p->plugin_dir);
    e->backend_options = dup_or_null(p->backend_options);
    e->prep = calloc(p->prep_threads, sizeof(*e->prep));
    e->p.backend = NULL;
    e->p.plugin_dir = NULL;
    e->p.backend_options = NULL;
    if (!e->name || !e->dir || !e->backend || (p->plugin_dir && !e->plugin_dir) ||
        (p->backend_options && !e->backend_options) || !e->prep) {
        free(e->name);
        free(e->dir);
        free(e->backend);
        free(e->plugin_dir);
        free(e->backend_options);
        free(e->prep);
        free(e);
        return vl2_err_set(err, VL2_ENOMEM, "engine: out of memory");
    }
    e->load_key = spec->load_key;
    e->load_progress = spec->progress;
    e->post = spec->post;
    e->post_ud = spec->post_ud;
    e->state = VL2_MODEL_STATE_LOADING;
    e->eos_id = -1;
    e->image_token_id = -1;
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->cv, NULL);
    pthread_cond_init(&e->prep_cv, NULL);
    pthread_cond_init(&e->state_cv, NULL);
    for (i = 0; i < p->prep_threads; i++) {
        if (pthread_create(&e->prep[i], NULL, prep_main, e) != 0)
            break;
        e->n_prep++;
    }
    if (e->n_prep == p->prep_threads && pthread_create(&e->thread, NULL, engine_main, e) == 0)
        e->thread_started = true;
    if (!e->thread_started) {
        engine_free(e);
        return vl2_err_set(err, VL2_EIO, "engine: cannot start threads");
    }
    *ret = e;
    return 0;
}

int vl2_engine_wait_loaded(struct vl2_engine *e, struct vl2_err *err)
{
    int rc = 0;

    pthread_mutex_lock(&e->mu);
    while (e->state == VL2_MODEL_STATE_LOADING)
        pthread_cond_wait(&e->state_cv, &e->mu);
    if (e->state == VL2_MODEL_STATE_FAILED)
        rc = vl2_err_set(err, e->error_code, "%s", e->error);
    pthread_mutex_unlock(&e->mu);
    return rc;
}

/* cache.c - the engine's two caches (issue 16), engine thread only:
 *
 *   image cache   projector outputs (struct vl2_image_embed) by the hash of
 *                 the decoded pixels and the tiling decision
 *                 (vl2_prepared_image.hash), at most image_cache bytes, least
 *                 recently used first out; an entry borrowed by a running
 *                 request stays until it is given back.
 *   prefix cache  finished requests' sequences, cut to their prompt (the
 *                 ids computed by prefill passes; the generated ids, fed by
 *                 decode steps, are left out), inside the KV budget: start_seq (engine.c) evicts the least
 *                 recently used when a request needs room.  A new request
 *                 copies the longest matching prefix (kv_copy) into its own
 *                 sequence, so entries are never shared and no request's
 *                 state reaches another's: the copy gets a new sampler (its
 *                 own seed, its own repetition set rebuilt from its own
 *                 prompt ids).
 *
 * One engine serves one model, so the model is part of every key by
 * construction; both caches are emptied before the model is freed (idle
 * unload, stop). */
#include <stdlib.h>
#include <string.h>

#include "engine-impl.h"

/* ---- LRU lists ---------------------------------------------------------- */

#define LRU_UNLINK(c, x) do {                                   \
        if ((x)->prev) (x)->prev->next = (x)->next;             \
        else (c)->head = (x)->next;                             \
        if ((x)->next) (x)->next->prev = (x)->prev;             \
        else (c)->tail = (x)->prev;                             \
        (x)->prev = (x)->next = NULL;                           \
    } while (0)

#define LRU_PUSH_HEAD(c, x) do {                                \
        (x)->prev = NULL;                                       \
        (x)->next = (c)->head;                                  \
        if ((c)->head) (c)->head->prev = (x);                   \
        else (c)->tail = (x);                                   \
        (c)->head = (x);                                        \
    } while (0)

/* ---- image cache -------------------------------------------------------- */

struct vl2_icache_entry *vl2__icache_get(struct vl2_engine *e, const uint8_t hash[32],
                                         bool count)
{
    struct vl2_icache *c = &e->icache;
    struct vl2_icache_entry *x;

    if (c->cap == 0)
        return NULL;
    c->lookups += count;
    for (x = c->head; x; x = x->next)
        if (!memcmp(x->hash, hash, 32))
            break;
    if (!x)
        return NULL;
    c->hits++;
    LRU_UNLINK(c, x);
    LRU_PUSH_HEAD(c, x);
    x->refs++;
    return x;
}

static void icache_drop(struct vl2_engine *e, struct vl2_icache_entry *x)
{
    struct vl2_icache *c = &e->icache;

    LRU_UNLINK(c, x);
    c->n--;
    c->bytes -= x->bytes;
    if (e->m)
        vl2_image_embed_free(e->m, x->embed);
    free(x);
}

struct vl2_icache_entry *vl2__icache_put(struct vl2_engine *e, const uint8_t hash[32],
                                         struct vl2_image_embed *embed)
{
    struct vl2_icache *c = &e->icache;
    size_t bytes = (size_t) embed->rows.rows * (size_t) embed->rows.cols *
                   vl2_dtype_size(embed->rows.dtype);
    struct vl2_icache_entry *x, *prev;

    if (bytes > c->cap)
        return NULL;
    /* another request encoded the same image meanwhile: keep the first */
    for (x = c->head; x; x = x->next)
        if (!memcmp(x->hash, hash, 32))
            return NULL;
    /* the least recently used unborrowed entries make room */
    for (x = c->tail; x && c->bytes + bytes > c->cap; x = prev) {
        prev = x->prev;
        if (x->refs == 0)
            icache_drop(e, x);
    }
    if (c->bytes + bytes > c->cap)
        return NULL;
    x = calloc(1, sizeof(*x));
    if (!x)
        return NULL;
    memcpy(x->hash, hash, 32);
    x->embed = embed;
    x->bytes = bytes;
    x->refs = 1;
    LRU_PUSH_HEAD(c, x);
    c->n++;
    c->bytes += bytes;
    return x;
}

void vl2__icache_unref(struct vl2_engine *e, struct vl2_icache_entry *x)
{
    (void) e;
    if (x && x->refs > 0)
        x->refs--;
}

void vl2__icache_clear(struct vl2_engine *e)
{
    while (e->icache.head)
        icache_drop(e, e->icache.head);
}

/* ---- prefix cache ------------------------------------------------------- */

/* A prompt as the prefix cache compares it: ids, and for the image rows
 * the image (its hash) and the row within it. */
struct pkey {
    const int32_t *ids;
    size_t n_ids;
    int32_t image_id;
    const uint8_t (*hashes)[32];
    const int32_t *image_tokens;
    size_t n_images;
};

/* Length of the common prefix of @a and @b, at most @max. */
static size_t pkey_common(const struct pkey *a, const struct pkey *b, size_t max)
{
    size_t i, ka = 0, kb = 0;
    int32_t ra = 0, rb = 0;     /* rows of the current image passed */

    if (max > a->n_ids)
        max = a->n_ids;
    if (max > b->n_ids)
        max = b->n_ids;
    for (i = 0; i < max; i++) {
        if (a->ids[i] != b->ids[i])
            return i;
        if (a->ids[i] != a->image_id)
            continue;
        /* the same row of the same image in both, or the prefix ends here */
        if (ka >= a->n_images || kb >= b->n_images || ra != rb ||
            a->image_tokens[ka] != b->image_tokens[kb] ||
            memcmp(a->hashes[ka], b->hashes[kb], 32))
            return i;
        if (++ra == a->image_tokens[ka]) {
            ka++;
            ra = 0;
        }
        if (++rb == b->image_tokens[kb]) {
            kb++;
            rb = 0;
        }
    }
    return max;
}

/* The comparison key of a request's prompt; its arrays are @r's (hashes
 * and image_tokens allocated into @hs / @nt by the caller's stack or heap). */
static bool req_key(const struct vl2_engine *e, const struct vl2_req *r, struct pkey *k,
                    uint8_t (**hs)[32], int32_t **nt)
{
    size_t i;

    *hs = NULL;
    *nt = NULL;
    if (r->pr.n_images) {
        *hs = malloc(r->pr.n_images * sizeof(**hs));
        *nt = malloc(r->pr.n_images * sizeof(**nt));
        if (!*hs || !*nt) {
            free(*hs);
            free(*nt);
            return false;
        }
    }
    for (i = 0; i < r->pr.n_images; i++) {
        memcpy((*hs)[i], r->pr.images[i].hash, 32);
        (*nt)[i] = r->pr.images[i].tiling.n_tokens;
    }
    *k = (struct pkey){
        .ids = r->pr.ids, .n_ids = r->pr.n_ids, .image_id = e->image_token_id,
        .hashes = (const uint8_t (*)[32]) *hs, .image_tokens = *nt,
        .n_images = r->pr.n_images,
    };
    return true;
}

static struct pkey ent_key(const struct vl2_engine *e, const struct vl2_pcache_entry *x)
{
    return (struct pkey){
        .ids = x->ids, .n_ids = x->n_ids, .image_id = e->image_token_id,
        .hashes = (const uint8_t (*)[32]) x->hashes, .image_tokens = x->image_tokens,
        .n_images = x->n_images,
    };
}

size_t vl2__pass_end(const struct vl2_engine *e, const int32_t *ids, size_t n, size_t start)
{
    size_t limit = start + VL2_ENGINE_PREFILL_CHUNK, p;

    if (limit > n)
        limit = n;
    for (p = start + VL2_ENGINE_PASS_MIN; p < limit; p++)
        if (ids[p] == e->marker_ids[0] || ids[p] == e->marker_ids[1])
            return p;
    return limit;
}

/* The longest prefix of @a (a new prompt of @na ids) that @b (a donor's
 * prompt of @nb ids whose passes ran up to @common, the length of their
 * common prefix) computed in the very passes @a's prefill would run: the
 * last pass end the two schedules share within @common. */
static size_t shared_passes(const struct vl2_engine *e, const int32_t *a, size_t na,
                            const int32_t *b, size_t nb, size_t common)
{
    size_t s = 0, ea, eb;

    for (;;) {
        ea = vl2__pass_end(e, a, na, s);
        eb = vl2__pass_end(e, b, nb, s);
        if (ea != eb || ea > common || ea == s)
            return s;
        s = ea;
    }
}

size_t vl2__pcache_find(struct vl2_engine *e, const struct vl2_req *r,
                        struct vl2_pcache_entry **ret_ent, struct vl2_req **ret_req)
{
    struct vl2_pcache_entry *x;
    struct vl2_req *q;
    struct pkey rk;
    uint8_t (*hs)[32];
    int32_t *nt;
    size_t best = 0, max;

    *ret_ent = NULL;
    *ret_req = NULL;
    if (!e->p.prefix_cache || r->pr.n_ids < 2)
        return 0;
    e->pcache.lookups += !r->pc_looked;
    if (!req_key(e, r, &rk, &hs, &nt))
        return 0;
    /* the last id is always fed, for the logits */
    max = r->pr.n_ids - 1;
    for (x = e->pcache.head; x && best < max; x = x->next) {
        struct pkey xk = ent_key(e, x);
        size_t n = shared_passes(e, r->pr.ids, r->pr.n_ids, x->ids, x->n_ids,
                                 pkey_common(&rk, &xk, max));

        if (n > best) {
            best = n;
            *ret_ent = x;
            *ret_req = NULL;
        }
    }
    /* a running request's canonical part (concurrent requests sharing a
     * prefix): copied, never taken */
    for (q = e->running.head; q && best < max; q = q->next) {
        struct pkey qk;
        uint8_t (*qh)[32];
        int32_t *qn;
        size_t n;

        if (q == r || !q->seq || q->n_fed == 0)
            continue;
        if (!req_key(e, q, &qk, &qh, &qn))
            continue;
        qk.n_ids = q->n_fed;    /* the ids its passes ran so far */
        n = shared_passes(e, r->pr.ids, r->pr.n_ids, q->pr.ids, q->pr.n_ids,
                          pkey_common(&rk, &qk, max));
        free(qh);
        free(qn);
        if (n > best) {
            best = n;
            *ret_ent = NULL;
            *ret_req = q;
        }
    }
    free(hs);
    free(nt);
    return best;
}

static void pcache_drop(struct vl2_engine *e, struct vl2_pcache_entry *x)
{
    struct vl2_pcache *c = &e->pcache;

    LRU_UNLINK(c, x);
    c->n--;
    c->bytes -= x->kv_bytes;
    if (x->seq) {
        vl2_seq_free(x->seq);
        e->kv_used -= x->kv_bytes;
    }
    free(x->ids);
    free(x->hashes);
    free(x->image_tokens);
    free(x);
}

struct vl2_seq *vl2__pcache_take(struct vl2_engine *e, struct vl2_pcache_entry *x)
{
    struct vl2_seq *s = x->seq;

    x->seq = NULL;          /* its kv_bytes stay counted: the caller's now */
    pcache_drop(e, x);
    return s;
}

bool vl2__pcache_evict(struct vl2_engine *e, const struct vl2_pcache_entry *keep)
{
    struct vl2_pcache_entry *x;

    for (x = e->pcache.tail; x; x = x->prev)
        if (x != keep) {
            pcache_drop(e, x);
            return true;
        }
    return false;
}

void vl2__pcache_touch(struct vl2_engine *e, struct vl2_pcache_entry *x)
{
    LRU_UNLINK(&e->pcache, x);
    LRU_PUSH_HEAD(&e->pcache, x);
}

void vl2__pcache_clear(struct vl2_engine *e)
{
    while (e->pcache.head)
        pcache_drop(e, e->pcache.head);
}

/* Release @r's sequence as release_seq would. */
static void drop_req_seq(struct vl2_engine *e, struct vl2_req *r)
{
    vl2_seq_free(r->seq);
    e->kv_used -= r->kv_bytes;
    r->seq = NULL;
    r->kv_bytes = 0;
}

void vl2__pcache_put(struct vl2_engine *e, struct vl2_req *r)
{
    struct vl2_pcache_entry *x, *next;
    struct pkey rk, xk;
    uint8_t (*hs)[32];
    int32_t *nt;
    size_t n = r->n_fed, i, rows = 0;

    if (!e->p.prefix_cache || !r->seq || n == 0)
        return;
    x = calloc(1, sizeof(*x));
    if (!x || !req_key(e, r, &rk, &hs, &nt)) {
        free(x);
        drop_req_seq(e, r);
        return;
    }
    x->ids = malloc(n * sizeof(*x->ids));
    if (!x->ids) {
        free(hs);
        free(nt);
        free(x);
        drop_req_seq(e, r);
        return;
    }
    memcpy(x->ids, r->pr.ids, n * sizeof(*x->ids));
    x->n_ids = n;
    /* the images whose rows begin inside the prefix */
    for (i = 0; i < n; i++)
        rows += r->pr.ids[i] == e->image_token_id;
    for (i = 0; i < r->pr.n_images && rows > 0; i++) {
        x->n_images++;
        rows = rows > (size_t) nt[i] ? rows - (size_t) nt[i] : 0;
    }
    x->hashes = hs;
    x->image_tokens = nt;
    /* a copy of just the prefix frees the rest of the reservation */
    if (vl2_model_can_copy_kv(e->m) && (size_t) vl2_seq_capacity(r->seq) > n) {
        struct vl2_seq_params sp = vl2_seq_default_params();
        struct vl2_seq *small = NULL;
        struct vl2_err err = { 0 };

        sp.capacity = (int32_t) n;
        if (vl2_seq_new(e->m, &sp, &small, &err) == 0 &&
            vl2_seq_copy_prefix(small, r->seq, r->pr.ids, (int32_t) n, &err) == 0) {
            drop_req_seq(e, r);
            x->seq = small;
            x->kv_bytes = n * e->kv_token_bytes;
            e->kv_used += x->kv_bytes;
        } else {
            vl2_seq_free(small);
        }
    }
    if (!x->seq) {
        struct vl2_seq_params sp = vl2_seq_default_params();
        struct vl2_err err = { 0 };

        /* keep the whole reservation, cut to the prefix */
        sp.capacity = 0;
        if (vl2_seq_reuse(r->seq, &sp, r->pr.ids, (int32_t) n, &err) < 0) {
            free(x->ids);
            free(x->hashes);
            free(x->image_tokens);
            free(x);
            drop_req_seq(e, r);
            return;
        }
        x->seq = r->seq;
        x->kv_bytes = r->kv_bytes;
        r->seq = NULL;
        r->kv_bytes = 0;
    }
    /* entries that are prefixes of this one serve no prompt it does not */
    xk = ent_key(e, x);
    for (struct vl2_pcache_entry *y = e->pcache.head; y; y = next) {
        struct pkey yk = ent_key(e, y);

        next = y->next;
        if (y->n_ids <= x->n_ids && pkey_common(&xk, &yk, y->n_ids) == y->n_ids)
            pcache_drop(e, y);
    }
    LRU_PUSH_HEAD(&e->pcache, x);
    e->pcache.n++;
    e->pcache.bytes += x->kv_bytes;
}

void vl2__cache_publish(struct vl2_engine *e)
{
    struct vl2_engine_cache_stats s = {
        .image_bytes = e->icache.bytes, .image_capacity = e->icache.cap,
        .image_entries = (uint32_t) e->icache.n,
        .image_lookups = e->icache.lookups, .image_hits = e->icache.hits,
        .prefix_bytes = e->pcache.bytes, .prefix_entries = (uint32_t) e->pcache.n,
        .prefix_lookups = e->pcache.lookups, .prefix_hits = e->pcache.hits,
        .prefix_tokens = e->pcache.tokens, .kv_budget = e->kv_budget,
    };

    pthread_mutex_lock(&e->mu);
    e->cstats = s;
    pthread_mutex_unlock(&e->mu);
}

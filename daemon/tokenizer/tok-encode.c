/* tok-encode.c - text -> ids: added tokens, pre-tokenizer steps, BPE.
 *
 * The pieces flow depth-first: each piece a step produces goes straight to
 * the next step and, after the last one, to BPE, so no list of pieces is
 * ever built.  A per-call cache remembers the BPE result of recent short
 * pieces (most words repeat). */
#include <stdlib.h>
#include <string.h>

#include "tokenizer-impl.h"

#define SMALL_WORD    64      /* pieces up to this many symbols merge in arrays */
#define CACHE_SLOTS   16384   /* power of two */
#define CACHE_ENTRIES 8192
#define CACHE_MAX_KEY 64      /* longest piece cached, bytes */
#define CACHE_MIN_TEXT 512    /* texts shorter than this run without a cache */

struct cache_entry {
    uint64_t hash;
    uint32_t key_off;
    uint32_t ids_off;
    uint16_t key_len;
    uint16_t n_ids;
};

struct bpe_cache {
    uint32_t *slots;              /* [CACHE_SLOTS] 0 empty, else entry + 1 */
    struct cache_entry *entries;  /* [CACHE_ENTRIES] */
    size_t n_entries;
    char *keys;                   /* [CACHE_ENTRIES * CACHE_MAX_KEY] */
    size_t keys_used;
    int32_t *ids;                 /* [CACHE_ENTRIES * CACHE_MAX_KEY] */
    size_t ids_used;
};

struct enc {
    const struct vl2_tokenizer *tok;
    struct vl2_err *err;
    const int32_t *allow;         /* with restrict_added: the added ids matched */
    size_t n_allow;
    bool restrict_added;
    int32_t *ids;                 /* output */
    size_t n_ids, cap_ids;
    pcre2_match_data *md;
    struct bpe_cache *cache;      /* NULL: no cache */
    /* scratch for long pieces */
    int32_t *sym;                 /* symbol ids */
    int32_t *prev, *next;         /* linked list over symbols */
    size_t sym_cap;
    uint64_t *heap;               /* rank << 32 | position */
    size_t heap_cap;
    char *map_buf;                /* byte-level mapped piece (ignore_merges) */
    size_t map_cap;
    size_t n_chunks;              /* pre-tokenizer matches, for cancel_fn */
};

/* vl2_tokenizer_set_cancel: asked every CANCEL_EVERY pre-tokenizer chunks */
#define CANCEL_EVERY 64
static _Thread_local bool (*cancel_fn)(void *ud);
static _Thread_local void *cancel_ud;

void vl2_tokenizer_set_cancel(bool (*fn)(void *ud), void *ud)
{
    cancel_fn = fn;
    cancel_ud = fn ? ud : NULL;
}

static int enc_oom(struct enc *e)
{
    return vl2_err_set(e->err, VL2_ENOMEM, "tokenizer: out of memory");
}

static int push_ids(struct enc *e, const int32_t *ids, size_t n)
{
    if (e->n_ids + n > e->cap_ids) {
        size_t cap = e->cap_ids * 2;
        int32_t *p;
        while (cap < e->n_ids + n)
            cap *= 2;
        p = realloc(e->ids, cap * sizeof(*p));
        if (!p)
            return enc_oom(e);
        e->ids = p;
        e->cap_ids = cap;
    }
    memcpy(e->ids + e->n_ids, ids, n * sizeof(*ids));
    e->n_ids += n;
    return 0;
}

/* ---- BPE cache --------------------------------------------------------- */

static struct bpe_cache *cache_new(void)
{
    struct bpe_cache *c = calloc(1, sizeof(*c));

    if (!c)
        return NULL;
    c->slots = calloc(CACHE_SLOTS, sizeof(*c->slots));
    c->entries = malloc(CACHE_ENTRIES * sizeof(*c->entries));
    c->keys = malloc((size_t) CACHE_ENTRIES * CACHE_MAX_KEY);
    c->ids = malloc((size_t) CACHE_ENTRIES * CACHE_MAX_KEY * sizeof(*c->ids));
    if (!c->slots || !c->entries || !c->keys || !c->ids) {
        free(c->slots);
        free(c->entries);
        free(c->keys);
        free(c->ids);
        free(c);
        return NULL;
    }
    return c;
}

static void cache_free(struct bpe_cache *c)
{
    if (!c)
        return;
    free(c->slots);
    free(c->entries);
    free(c->keys);
    free(c->ids);
    free(c);
}

static const struct cache_entry *cache_get(const struct bpe_cache *c, const char *s, size_t n,
                                           uint64_t h)
{
    size_t i;

    for (i = (size_t) h & (CACHE_SLOTS - 1);; i = (i + 1) & (CACHE_SLOTS - 1)) {
        uint32_t k = c->slots[i];
        const struct cache_entry *en;
        if (!k)
            return NULL;
        en = &c->entries[k - 1];
        if (en->hash == h && en->key_len == n && !memcmp(c->keys + en->key_off, s, n))
            return en;
    }
}

/* Remember @ids for piece @s; when full, start over (the text's vocabulary
 * has moved on anyway). */
static void cache_put(struct bpe_cache *c, const char *s, size_t n, uint64_t h,
                      const int32_t *ids, size_t n_ids)
{
    struct cache_entry *en;
    size_t i;

    if (c->n_entries == CACHE_ENTRIES) {
        memset(c->slots, 0, CACHE_SLOTS * sizeof(*c->slots));
        c->n_entries = 0;
        c->keys_used = 0;
        c->ids_used = 0;
    }
    for (i = (size_t) h & (CACHE_SLOTS - 1); c->slots[i]; i = (i + 1) & (CACHE_SLOTS - 1))
        ;
    en = &c->entries[c->n_entries];
    *en = (struct cache_entry) { .hash = h, .key_off = (uint32_t) c->keys_used,
                                 .ids_off = (uint32_t) c->ids_used, .key_len = (uint16_t) n,
                                 .n_ids = (uint16_t) n_ids };
    memcpy(c->keys + c->keys_used, s, n);
    memcpy(c->ids + c->ids_used, ids, n_ids * sizeof(*ids));
    c->keys_used += n;
    c->ids_used += n_ids;
    c->slots[i] = (uint32_t) ++c->n_entries;
}

/* ---- BPE --------------------------------------------------------------- */

/* Merge @m symbols in place, lowest rank first, leftmost among equal ranks
 * (the order of the reference's priority queue).  Returns the new count. */
static size_t merge_small(const struct vl2_tokenizer *tok, int32_t *sym, size_t m)
{
    uint32_t rank[SMALL_WORD];
    int32_t nw[SMALL_WORD];
    size_t i;

    for (i = 0; i + 1 < m; i++) {
        const struct tok_merge_slot *s = vl2__tok_merge_find(tok, sym[i], sym[i + 1]);
        rank[i] = s ? s->rank : TOK_NO_RANK;
        nw[i] = s ? s->new_id : -1;
    }
    while (m > 1) {
        uint32_t best = TOK_NO_RANK;
        size_t j = 0;
        for (i = 0; i + 1 < m; i++)
            if (rank[i] < best) {
                best = rank[i];
                j = i;
            }
        if (best == TOK_NO_RANK)
            break;
        sym[j] = nw[j];
        /* drop symbol j + 1 and pair j; pairs j - 1 and j are new */
        memmove(sym + j + 1, sym + j + 2, (m - j - 2) * sizeof(*sym));
        memmove(rank + j, rank + j + 1, (m - j - 2) * sizeof(*rank));
        memmove(nw + j, nw + j + 1, (m - j - 2) * sizeof(*nw));
        m--;
        if (j > 0) {
            const struct tok_merge_slot *s = vl2__tok_merge_find(tok, sym[j - 1], sym[j]);
            rank[j - 1] = s ? s->rank : TOK_NO_RANK;
            nw[j - 1] = s ? s->new_id : -1;
        }
        if (j + 1 < m) {
            const struct tok_merge_slot *s = vl2__tok_merge_find(tok, sym[j], sym[j + 1]);
            rank[j] = s ? s->rank : TOK_NO_RANK;
            nw[j] = s ? s->new_id : -1;
        }
    }
    return m;
}

static void heap_up(uint64_t *h, size_t i)
{
    uint64_t v = h[i];

    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (h[p] <= v)
            break;
        h[i] = h[p];
        i = p;
    }
    h[i] = v;
}

static void heap_down(uint64_t *h, size_t n, size_t i)
{
    uint64_t v = h[i];

    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && h[c + 1] < h[c])
            c++;
        if (v <= h[c])
            break;
        h[i] = h[c];
        i = c;
    }
    h[i] = v;
}

static int heap_push(struct enc *e, size_t *n, uint64_t v)
{
    if (*n == e->heap_cap) {
        size_t cap = e->heap_cap ? e->heap_cap * 2 : 1024;
        uint64_t *p = realloc(e->heap, cap * sizeof(*p));
        if (!p)
            return enc_oom(e);
        e->heap = p;
        e->heap_cap = cap;
    }
    e->heap[*n] = v;
    heap_up(e->heap, (*n)++);
    return 0;
}

/* The same merge order for long pieces, in O(m log m): a priority queue of
 * (rank, position) over a linked list of symbols; stale entries are skipped
 * when popped.  e->sym holds the @m symbols; the result is written back to
 * e->sym[0..ret). */
static int merge_large(struct enc *e, size_t m, size_t *ret_m)
{
    const struct vl2_tokenizer *tok = e->tok;
    int32_t *sym = e->sym, *prev = e->prev, *next = e->next;
    size_t n_heap = 0, i, o;
    int r;

    for (i = 0; i < m; i++) {
        prev[i] = (int32_t) i - 1;
        next[i] = i + 1 < m ? (int32_t) i + 1 : -1;
    }
    if (e->heap_cap < m) {
        uint64_t *p = realloc(e->heap, m * sizeof(*p));
        if (!p)
            return enc_oom(e);
        e->heap = p;
        e->heap_cap = m;
    }
    for (i = 0; i + 1 < m; i++) {
        const struct tok_merge_slot *s = vl2__tok_merge_find(tok, sym[i], sym[i + 1]);
        if (s)
            e->heap[n_heap++] = (uint64_t) s->rank << 32 | i;
    }
    for (i = n_heap / 2; i-- > 0;)
        heap_down(e->heap, n_heap, i);

    while (n_heap) {
        uint64_t top = e->heap[0];
        uint32_t rank = (uint32_t) (top >> 32);
        int32_t pos = (int32_t) (uint32_t) top, nx;
        const struct tok_merge_slot *s;

        e->heap[0] = e->heap[--n_heap];
        if (n_heap)
            heap_down(e->heap, n_heap, 0);
        if (sym[pos] < 0 || (nx = next[pos]) < 0)
            continue;
        s = vl2__tok_merge_find(tok, sym[pos], sym[nx]);
        if (!s || s->rank != rank)
            continue;   /* this pair changed since it was queued */
        sym[pos] = s->new_id;
        sym[nx] = -1;
        next[pos] = next[nx];
        if (next[nx] >= 0)
            prev[next[nx]] = pos;
        if (prev[pos] >= 0) {
            s = vl2__tok_merge_find(tok, sym[prev[pos]], sym[pos]);
            if (s && (r = heap_push(e, &n_heap, (uint64_t) s->rank << 32 | (uint32_t) prev[pos])) < 0)
                return r;
        }
        if (next[pos] >= 0) {
            s = vl2__tok_merge_find(tok, sym[pos], sym[next[pos]]);
            if (s && (r = heap_push(e, &n_heap, (uint64_t) s->rank << 32 | (uint32_t) pos)) < 0)
                return r;
        }
    }
    for (i = 0, o = 0; i < m; i++)
        if (sym[i] >= 0)
            sym[o++] = sym[i];
    *ret_m = o;
    return 0;
}

static int reserve_symbols(struct enc *e, size_t n)
{
    if (n > e->sym_cap) {
        int32_t *a = realloc(e->sym, n * sizeof(*a));
        if (!a)
            return enc_oom(e);
        e->sym = a;
        a = realloc(e->prev, n * sizeof(*a));
        if (!a)
            return enc_oom(e);
        e->prev = a;
        a = realloc(e->next, n * sizeof(*a));
        if (!a)
            return enc_oom(e);
        e->next = a;
        e->sym_cap = n;
    }
    return 0;
}

/* Append one initial symbol, with the reference's handling of characters
 * missing from the vocabulary: the unknown token (runs fused when fuse_unk)
 * or, without one, nothing. */
static inline void add_symbol(const struct vl2_tokenizer *tok, int32_t *sym, size_t *m,
                              int32_t id, bool *last_unk)
{
    if (id >= 0) {
        sym[(*m)++] = id;
        *last_unk = false;
    } else if (tok->unk_id >= 0) {
        if (!(tok->fuse_unk && *last_unk))
            sym[(*m)++] = tok->unk_id;
        *last_unk = true;
    }
}

/* Whole-piece lookup for ignore_merges: the piece as the vocabulary spells
 * it (byte-level mapped when a ByteLevel step ran). */
static int lookup_whole(struct enc *e, const char *s, size_t n, int32_t *ret_id)
{
    const struct vl2_tokenizer *tok = e->tok;
    size_t i, o = 0;

    if (!tok->byte_level) {
        *ret_id = vl2__tok_strmap_get(tok, &tok->vocab, s, n);
        return 0;
    }
    if (2 * n > e->map_cap) {
        char *p = realloc(e->map_buf, 2 * n);
        if (!p)
            return enc_oom(e);
        e->map_buf = p;
        e->map_cap = 2 * n;
    }
    for (i = 0; i < n; i++) {
        uint32_t c = tok->byte_cp[(unsigned char) s[i]];
        if (c < 0x80) {
            e->map_buf[o++] = (char) c;
        } else {
            e->map_buf[o++] = (char) (0xC0 | c >> 6);
            e->map_buf[o++] = (char) (0x80 | (c & 0x3F));
        }
    }
    *ret_id = vl2__tok_strmap_get(tok, &tok->vocab, e->map_buf, o);
    return 0;
}

static int bpe_piece(struct enc *e, const char *s, size_t n)
{
    const struct vl2_tokenizer *tok = e->tok;
    int32_t small[SMALL_WORD], *sym;
    size_t m = 0, i;
    bool last_unk = false;
    uint64_t h = 0;
    int r;

    if (tok->byte_level && n == 1 && tok->byte_id[(unsigned char) s[0]] >= 0)
        return push_ids(e, &tok->byte_id[(unsigned char) s[0]], 1);
    if (tok->ignore_merges) {
        int32_t id;
        r = lookup_whole(e, s, n, &id);
        if (r < 0)
            return r;
        if (id >= 0)
            return push_ids(e, &id, 1);
    }
    if (e->cache && n <= CACHE_MAX_KEY) {
        const struct cache_entry *en;
        h = vl2__tok_hash(s, n);
        en = cache_get(e->cache, s, n, h);
        if (en)
            return push_ids(e, e->cache->ids + en->ids_off, en->n_ids);
    }

    /* initial symbols: bytes (byte-level) or characters */
    if (n <= SMALL_WORD) {
        sym = small;
    } else {
        r = reserve_symbols(e, n);
        if (r < 0)
            return r;
        sym = e->sym;
    }
    if (tok->byte_level) {
        for (i = 0; i < n; i++)
            add_symbol(tok, sym, &m, tok->byte_id[(unsigned char) s[i]], &last_unk);
    } else {
        for (i = 0; i < n;) {
            size_t len;
            (void) vl2__utf8_get((const unsigned char *) s + i, n - i, &len);
            add_symbol(tok, sym, &m, vl2__tok_strmap_get(tok, &tok->vocab, s + i, len),
                       &last_unk);
            i += len;
        }
    }

    if (m <= SMALL_WORD) {
        if (sym != small)
            memcpy(small, sym, m * sizeof(*sym));
        m = merge_small(tok, small, m);
        sym = small;
    } else {
        r = merge_large(e, m, &m);
        if (r < 0)
            return r;
    }
    if (e->cache && n <= CACHE_MAX_KEY)
        cache_put(e->cache, s, n, h, sym, m);
    return push_ids(e, sym, m);
}

/* ---- pre-tokenizer ----------------------------------------------------- */

static int run_step(struct enc *e, size_t k, const char *s, size_t n);

/* Pending output of a split behavior that merges neighbours. */
struct split_state {
    size_t a, b;          /* pending piece */
    bool have;            /* a piece is pending */
    bool pending_match;   /* the pending piece is a match */
    bool prev_match;      /* the previous segment was a match */
};

static int split_segment(struct enc *e, size_t k, const struct tok_step *st,
                         struct split_state *ss, const char *s, size_t a, size_t b, bool match)
{
    int r = 0;

    if (st->invert)
        match = !match;
    switch (st->behavior) {
    case TOK_SPLIT_ISOLATED:
        return run_step(e, k + 1, s + a, b - a);
    case TOK_SPLIT_REMOVED:
        return match ? 0 : run_step(e, k + 1, s + a, b - a);
    case TOK_SPLIT_CONTIGUOUS:
        if (ss->have && ss->pending_match == match) {
            ss->b = b;
            return 0;
        }
        break;
    case TOK_SPLIT_MERGED_PREV:
        if (match && !ss->prev_match && ss->have) {
            ss->b = b;
            ss->prev_match = match;
            return 0;
        }
        ss->prev_match = match;
        break;
    case TOK_SPLIT_MERGED_NEXT:
        if (ss->have && !match) {
            /* the pending match joins this segment */
            ss->have = false;
            return run_step(e, k + 1, s + ss->a, b - ss->a);
        }
        if (ss->have)
            r = run_step(e, k + 1, s + ss->a, ss->b - ss->a);
        ss->have = false;
        if (r < 0)
            return r;
        if (!match)
            return run_step(e, k + 1, s + a, b - a);
        ss->a = a;
        ss->b = b;
        ss->have = true;
        ss->pending_match = true;
        return 0;
    }
    if (ss->have)
        r = run_step(e, k + 1, s + ss->a, ss->b - ss->a);
    ss->a = a;
    ss->b = b;
    ss->have = true;
    ss->pending_match = match;
    return r;
}

static int regex_failed(struct enc *e, int rc)
{
    PCRE2_UCHAR msg[160];

    pcre2_get_error_message(rc, msg, sizeof(msg));
    return vl2_err_set(e->err, VL2_ELIMIT, "tokenizer: pre-tokenizer regex failed: %s",
                       (const char *) msg);
}

static int split_piece(struct enc *e, size_t k, const struct tok_step *st, const char *s,
                       size_t n)
{
    struct split_state ss = { 0 };
    size_t pos = 0, prev = 0;
    int r;

    while (pos < n) {
        PCRE2_SIZE *ov, ms, me;
        int rc = pcre2_match(st->re, (PCRE2_SPTR) s, n, pos, PCRE2_NO_UTF_CHECK, e->md, NULL);
        if (rc == PCRE2_ERROR_JIT_STACKLIMIT)
            rc = pcre2_match(st->re, (PCRE2_SPTR) s, n, pos, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT,
                             e->md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH)
            break;
        if (rc < 0)
            return regex_failed(e, rc);
        if (cancel_fn && ++e->n_chunks % CANCEL_EVERY == 0 && cancel_fn(cancel_ud))
            return vl2_err_set(e->err, VL2_ECANCELED, "tokenizer: encode cancelled");
        ov = pcre2_get_ovector_pointer(e->md);
        ms = ov[0];
        me = ov[1];
        if (me <= ms || ms < prev || me > n) {
            /* an empty match splits nothing: go on one character later */
            size_t len;
            if (ms >= n)
                break;
            (void) vl2__utf8_get((const unsigned char *) s + ms, n - ms, &len);
            pos = (ms < pos ? pos : ms) + len;
            continue;
        }
        if (ms > prev) {
            r = split_segment(e, k, st, &ss, s, prev, ms, false);
            if (r < 0)
                return r;
        }
        r = split_segment(e, k, st, &ss, s, ms, me, true);
        if (r < 0)
            return r;
        prev = pos = me;
    }
    if (prev < n) {
        r = split_segment(e, k, st, &ss, s, prev, n, false);
        if (r < 0)
            return r;
    }
    if (ss.have)
        return run_step(e, k + 1, s + ss.a, ss.b - ss.a);
    return 0;
}

static int run_step(struct enc *e, size_t k, const char *s, size_t n)
{
    const struct tok_step *st;
    int r;

    if (n == 0)
        return 0;
    if (k == e->tok->n_steps)
        return bpe_piece(e, s, n);
    st = &e->tok->steps[k];
    if (st->kind == TOK_STEP_BYTELEVEL && st->add_prefix_space && s[0] != ' ') {
        char *buf = malloc(n + 1);
        if (!buf)
            return enc_oom(e);
        buf[0] = ' ';
        memcpy(buf + 1, s, n);
        r = st->re ? split_piece(e, k, st, buf, n + 1) : run_step(e, k + 1, buf, n + 1);
        free(buf);
        return r;
    }
    if (!st->re)
        return run_step(e, k + 1, s, n);
    return split_piece(e, k, st, s, n);
}

/* ---- added tokens ------------------------------------------------------ */

static int after_added(struct enc *e, int pass, const char *s, size_t n);

/* May added token number @k match here (vl2_tokenizer_encode_allow)? */
static bool added_allowed(const struct enc *e, int32_t k)
{
    size_t i;

    if (!e->restrict_added)
        return true;
    for (i = 0; i < e->n_allow; i++)
        if (e->allow[i] == e->tok->added[k].id)
            return true;
    return false;
}

/* Find added tokens of trie @pass in @s, leftmost-longest, non-overlapping;
 * the text between them goes on to after_added(). */
static int split_added(struct enc *e, int pass, const char *s, size_t n)
{
    const struct vl2_tokenizer *tok = e->tok;
    const struct tok_trie *t = &tok->trie[pass];
    const unsigned char *u = (const unsigned char *) s;
    size_t i = 0, done = 0;
    int r;

    if (t->n_nodes <= 1)
        return after_added(e, pass, s, n);
    while (i < n) {
        const struct tok_added *a;
        uint32_t node = 0;
        int32_t best = -1;
        size_t j, end = 0, start, stop;

        if (!t->first[u[i]]) {
            i++;
            continue;
        }
        for (j = i; j < n; j++) {
            uint32_t ch = t->nodes[node].child;
            while (ch && t->nodes[ch].byte != u[j])
                ch = t->nodes[ch].sibling;
            if (!ch)
                break;
            node = ch;
            if (t->nodes[node].added >= 0 && added_allowed(e, t->nodes[node].added)) {
                best = t->nodes[node].added;
                end = j + 1;
            }
        }
        if (best < 0) {
            i++;
            continue;
        }
        a = &tok->added[best];
        start = i;
        stop = end;
        i = end;
        if (start < done)
            continue;   /* inside the spaces an rstrip token took */
        if (a->lstrip) {
            while (start > done) {
                size_t p = start - 1, len;
                while (p > done && (u[p] & 0xC0) == 0x80)
                    p--;
                if (!vl2__unicode_is_white_space(vl2__utf8_get(u + p, start - p, &len)))
                    break;
                start = p;
            }
        }
        if (a->rstrip) {
            while (stop < n) {
                size_t len;
                if (!vl2__unicode_is_white_space(vl2__utf8_get(u + stop, n - stop, &len)))
                    break;
                stop += len;
            }
        }
        if (start > done) {
            r = after_added(e, pass, s + done, start - done);
            if (r < 0)
                return r;
        }
        r = push_ids(e, &a->id, 1);
        if (r < 0)
            return r;
        done = stop;
    }
    if (done < n)
        return after_added(e, pass, s + done, n - done);
    return 0;
}

static int after_added(struct enc *e, int pass, const char *s, size_t n)
{
    if (n == 0)
        return 0;
    if (pass == 0)
        return split_added(e, 1, s, n);
    return run_step(e, 0, s, n);
}

/* ---- entry point ------------------------------------------------------- */

static int encode(struct enc *eproto, const struct vl2_tokenizer *tok, const char *text,
                  size_t len, int32_t **ret_ids, size_t *ret_n, struct vl2_err *err);

int vl2_tokenizer_encode(const struct vl2_tokenizer *tok, const char *text, size_t len,
                         int32_t **ret_ids, size_t *ret_n, struct vl2_err *err)
{
    struct enc e = { .tok = tok, .err = err };

    return encode(&e, tok, text, len, ret_ids, ret_n, err);
}

int vl2_tokenizer_encode_allow(const struct vl2_tokenizer *tok, const char *text, size_t len,
                               const int32_t *allow, size_t n_allow, int32_t **ret_ids,
                               size_t *ret_n, struct vl2_err *err)
{
    struct enc e = { .tok = tok, .err = err, .allow = allow, .n_allow = n_allow,
                     .restrict_added = true };

    return encode(&e, tok, text, len, ret_ids, ret_n, err);
}

static int encode(struct enc *eproto, const struct vl2_tokenizer *tok, const char *text,
                  size_t len, int32_t **ret_ids, size_t *ret_n, struct vl2_err *err)
{
    struct enc e = *eproto;
    char *fixed = NULL;
    int r;

    if (!tok || !ret_ids || !ret_n || (!text && len))
        return vl2_err_set(err, VL2_EINVAL, "tokenizer: encode: invalid arguments");
    if (len > VL2_TOKENIZER_MAX_TEXT)
        return vl2_err_set(err, VL2_ELIMIT, "tokenizer: text of %zu bytes is over the limit (%zu)",
                           len, VL2_TOKENIZER_MAX_TEXT);
    if (vl2__utf8_valid_prefix((const unsigned char *) text, len) != len) {
        fixed = malloc(3 * len);
        if (!fixed)
            return vl2_err_set(err, VL2_ENOMEM, "tokenizer: out of memory");
        len = vl2__utf8_repair((const unsigned char *) text, len, fixed, false, NULL);
        text = fixed;
    }

    e.cap_ids = len / 3 + 16;
    e.ids = malloc(e.cap_ids * sizeof(*e.ids));
    e.md = pcre2_match_data_create(1, NULL);
    if (!e.ids || !e.md) {
        r = enc_oom(&e);
        goto out_free;
    }
    if (len >= CACHE_MIN_TEXT)
        e.cache = cache_new();   /* optional: without it, only slower */

    r = split_added(&e, 0, text, len);
    if (r < 0)
        goto out_free;

    *ret_ids = e.ids;
    *ret_n = e.n_ids;
    e.ids = NULL;
    r = 0;
out_free:
    free(e.ids);
    pcre2_match_data_free(e.md);
    cache_free(e.cache);
    free(e.sym);
    free(e.prev);
    free(e.next);
    free(e.heap);
    free(e.map_buf);
    free(fixed);
    return r;
}

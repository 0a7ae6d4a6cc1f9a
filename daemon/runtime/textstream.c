/* textstream.c - generated ids -> streamed text (textstream.h). */
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "sampler.h"
#include "textstream.h"

int vl2_textstream_init(struct vl2_textstream *ts, const struct vl2_textstream_params *p,
                        struct vl2_err *err)
{
    size_t i;

    memset(ts, 0, sizeof(*ts));
    if (p->n_stops > VL2_PREP_MAX_STOPS)
        return vl2_err_set(err, VL2_EINVAL, "textstream: %zu stop strings, at most %d",
                           p->n_stops, VL2_PREP_MAX_STOPS);
    ts->p = *p;
    for (i = 0; i < p->n_stops; i++) {
        size_t len = p->stops[i] ? strlen(p->stops[i]) : 0;

        if (len == 0)
            continue;
        ts->stops[ts->n_stops++] = p->stops[i];
        if (len > ts->max_stop_len)
            ts->max_stop_len = len;
    }
    vl2_detok_init(&ts->dt, p->tok);
    return 0;
}

void vl2_textstream_done(struct vl2_textstream *ts)
{
    vl2_detok_done(&ts->dt);
    free(ts->text);
    ts->text = NULL;
    ts->len = ts->cap = 0;
}

static int append(struct vl2_textstream *ts, const char *s, size_t n)
{
    if (ts->len + n + 1 > ts->cap) {
        size_t cap = ts->cap ? ts->cap : 256;
        char *p;

        while (cap < ts->len + n + 1)
            cap *= 2;
        p = realloc(ts->text, cap);
        if (!p)
            return VL2_ENOMEM;
        ts->text = p;
        ts->cap = cap;
    }
    memcpy(ts->text + ts->len, s, n);
    ts->len += n;
    ts->text[ts->len] = '\0';
    return 0;
}

/* Look for a stop string in the text added since @from; cut there. */
static bool cut_at_stop(struct vl2_textstream *ts, size_t from)
{
    size_t start = from > ts->max_stop_len ? from - ts->max_stop_len : 0;
    long at;

    if (ts->n_stops == 0)
        return false;
    at = vl2_stop_find(ts->text + start, ts->len - start, ts->stops, ts->n_stops);
    if (at < 0)
        return false;
    ts->len = start + (size_t) at;
    ts->text[ts->len] = '\0';
    return true;
}

/* End of the stream: the bytes of an unfinished character.  Returns 1 when
 * that completed a stop string (the text is then cut), < 0 when out of
 * memory. */
static int flush(struct vl2_textstream *ts)
{
    const char *piece = "";
    size_t plen = 0, from = ts->len;

    if (!ts->p.tok)
        return 0;
    if (vl2_detok_flush(&ts->dt, &piece, &plen) < 0)
        return VL2_ENOMEM;
    if (plen == 0)
        return 0;
    if (append(ts, piece, plen) < 0)
        return VL2_ENOMEM;
    return cut_at_stop(ts, from);
}

/* Hand out the text up to @upto. */
static void show(struct vl2_textstream *ts, size_t upto, struct vl2_ts_token *ret)
{
    if (upto < ts->shown)
        upto = ts->shown;
    ret->text = ts->text ? ts->text + ts->shown : "";
    ret->len = upto - ts->shown;
    ts->shown = upto;
}

/* The p.top_logprobs most likely ids of @logits into @ret. */
static void top_alts(const struct vl2_textstream *ts, const float *logits, int32_t n_vocab,
                     struct vl2_ts_token *ret)
{
    int32_t ids[VL2_TS_MAX_TOP];
    double lp[VL2_TS_MAX_TOP];
    size_t k = ts->p.top_logprobs < VL2_TS_MAX_TOP ? ts->p.top_logprobs : VL2_TS_MAX_TOP, i;

    ret->n_top = vl2_logits_top(logits, n_vocab, k, ids, lp);
    for (i = 0; i < ret->n_top; i++) {
        struct vl2_ts_alt *a = &ret->top[i];
        const char *b = ts->p.tok ? vl2_tokenizer_token_bytes(ts->p.tok, ids[i], &a->len) : NULL;

        a->id = ids[i];
        a->logprob = (float) lp[i];
        a->text = b ? b : "";
        if (!b)
            a->len = 0;
    }
}

int vl2_textstream_push(struct vl2_textstream *ts, int32_t id, const float *logits,
                        int32_t n_vocab, struct vl2_ts_token *ret, struct vl2_err *err)
{
    const char *piece = "";
    size_t plen = 0, from = ts->len, upto;
    int rc;

    memset(ret, 0, sizeof(*ret));
    ret->text = "";
    ret->id = id;
    if (ts->finish)
        return vl2_err_set(err, VL2_EINVAL, "textstream: the answer has ended");
    if (logits) {
        ret->has_logprob = true;
        ret->logprob = (float) vl2_logits_logprob(logits, n_vocab, id);
        top_alts(ts, logits, n_vocab, ret);
    }
    ts->n_gen++;
    if (id == ts->p.eos_id && ts->p.eos_id >= 0 && !ts->p.ignore_eos) {
        /* the end: what an unfinished character held (a stop string it
         * completes is cut), all of it shown */
        rc = flush(ts);
        if (rc < 0)
            return vl2_err_set(err, VL2_ENOMEM, "textstream: out of memory for the answer");
        ret->send = rc > 0 || ts->len > ts->shown;
        show(ts, ts->len, ret);
        ts->finish = VL2_TS_EOS;
        return 0;
    }
    ret->send = true;
    if (ts->p.tok && vl2_detok_push(&ts->dt, id, &piece, &plen) < 0)
        return vl2_err_set(err, VL2_ENOMEM, "textstream: out of memory for the answer");
    if (append(ts, piece, plen) < 0)
        return vl2_err_set(err, VL2_ENOMEM, "textstream: out of memory for the answer");
    if (cut_at_stop(ts, from)) {
        ts->finish = VL2_TS_STOP;
    } else if (ts->n_gen >= ts->p.max_new) {
        rc = flush(ts);
        if (rc < 0)
            return vl2_err_set(err, VL2_ENOMEM, "textstream: out of memory for the answer");
        ts->finish = rc > 0 ? VL2_TS_STOP : VL2_TS_LENGTH;
    }
    upto = ts->finish ? ts->len
                      : ts->len - vl2_stop_holdback(ts->text, ts->len, ts->stops, ts->n_stops);
    show(ts, upto, ret);
    return 0;
}

int vl2_textstream_next(struct vl2_textstream *ts, struct vl2_seq *seq, bool want_logprob,
                        struct vl2_ts_token *ret, struct vl2_err *err)
{
    const float *z = want_logprob ? vl2_seq_logits(seq) : NULL;
    int32_t n_vocab = vl2_model_config(vl2_seq_model(seq))->lm.n_vocab;

    if (want_logprob && !z)
        return vl2_err_set(err, VL2_EINVAL, "textstream: log-probabilities of a sequence "
                           "without logits");
    return vl2_textstream_push(ts, vl2_seq_sample(seq), z, n_vocab, ret, err);
}

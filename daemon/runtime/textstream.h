/* textstream.h - generated ids -> streamed text, written once for the
 * daemon's engine and for `vl2d run`: the detokenizer (whole UTF-8
 * characters only), stop strings (the answer ends before the first one, also
 * when it is completed by the final flush of an unfinished character),
 * holdback (text that may still become a stop string is not shown yet), the
 * finish reason, and the log-probability of each id (vl2_logits_logprob).
 *
 *     struct vl2_textstream ts;
 *     vl2_textstream_init(&ts, &params, &err);
 *     while (!ts.finish) {
 *         struct vl2_ts_token t;
 *         vl2_textstream_next(&ts, seq, want_logprob, &t, &err);  // sample + push
 *         show(t.text, t.len);                                    // new text, may be empty
 *         if (!ts.finish) vl2_model_decode(m, &seq, &t.id, 1, &err);
 *     }
 *     ts.text, ts.len: the whole answer;  vl2_textstream_done(&ts);
 *
 * Threads: one object per request, used by one thread at a time.
 */
#ifndef VL2_TEXTSTREAM_H
#define VL2_TEXTSTREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "prepare.h"
#include "tokenizer.h"
#include "vl2-status.h"

struct vl2_seq;

/* Why the answer ended; the numbers of vl2.proto's FinishReason. */
enum vl2_ts_finish {
    VL2_TS_RUNNING = 0,
    VL2_TS_EOS = 1,                 /* the end-of-sentence id (not ignored) */
    VL2_TS_LENGTH = 2,              /* max_new ids */
    VL2_TS_STOP = 3,                /* a stop string (cut off with what follows) */
};

struct vl2_textstream_params {
    const struct vl2_tokenizer *tok;    /* borrowed; NULL: ids only, no text */
    int32_t            eos_id;          /* -1: none */
    bool               ignore_eos;
    size_t             max_new;         /* ids to generate at most (EOS counted) */
    const char *const *stops;           /* [n_stops], borrowed, at most VL2_PREP_MAX_STOPS;
                                           empty strings ignored */
    size_t             n_stops;
    size_t             top_logprobs;    /* alternatives per id when logits are given,
                                           at most VL2_TS_MAX_TOP */
};

struct vl2_textstream {
    struct vl2_textstream_params p;
    const char        *stops[VL2_PREP_MAX_STOPS];  /* the non-empty ones */
    size_t             n_stops;
    size_t             max_stop_len;
    struct vl2_detok   dt;
    char              *text;            /* the answer so far, cut at a stop string; NUL-ended */
    size_t             len, cap;
    size_t             shown;           /* bytes of @text handed out */
    size_t             n_gen;           /* ids pushed (EOS included) */
    enum vl2_ts_finish finish;          /* 0 while the answer goes on */
};

#define VL2_TS_MAX_TOP 20

/* One of the most likely ids of a step (vl2_logits_top). */
struct vl2_ts_alt {
    int32_t     id;
    float       logprob;
    const char *text;                   /* the id's bytes alone, borrowed from the
                                           tokenizer ("" without one) */
    size_t      len;
};

/* What one id gave. */
struct vl2_ts_token {
    int32_t     id;
    bool        has_logprob;
    float       logprob;                /* log softmax of the raw logits at @id */
    struct vl2_ts_alt top[VL2_TS_MAX_TOP];  /* [n_top], most likely first */
    size_t      n_top;                  /* p.top_logprobs when logits were given */
    const char *text;                   /* new text to show (into the stream's text) */
    size_t      len;                    /* may be 0 */
    bool        send;                   /* false only for an EOS that brought no text:
                                           the engine sends no TOKEN event then */
};

/* Returns 0, or VL2_EINVAL (more than VL2_PREP_MAX_STOPS stop strings). */
int  vl2_textstream_init(struct vl2_textstream *ts, const struct vl2_textstream_params *p,
                         struct vl2_err *err);
void vl2_textstream_done(struct vl2_textstream *ts);

/* Take generated @id; @logits [n_vocab] (may be NULL) give its
 * log-probability and p.top_logprobs alternatives.  Fills @ret; ts->finish
 * says whether the answer ended.  Returns 0, VL2_EINVAL once finished,
 * VL2_ENOMEM. */
int  vl2_textstream_push(struct vl2_textstream *ts, int32_t id, const float *logits,
                         int32_t n_vocab, struct vl2_ts_token *ret, struct vl2_err *err);

/* The next id of @seq by its sampler (vl2_seq_sample), with its
 * log-probability when @want_logprob (the sequence must then have logits),
 * pushed. */
int  vl2_textstream_next(struct vl2_textstream *ts, struct vl2_seq *seq, bool want_logprob,
                         struct vl2_ts_token *ret, struct vl2_err *err);

#endif /* VL2_TEXTSTREAM_H */

/* sampler.h - next-token choice from float32 logits, with the semantics of
 * transformers 4.38 generate() (spec 10.2):
 *
 *   1. repetition penalty over every distinct id seen (z < 0 ? z * p : z / p)
 *   2. temperature (z / T); T == 0 means greedy: argmax after step 1 only
 *   3. top-k: keep logits >= the k-th largest (ties at the threshold kept)
 *   4. top-p: sort ascending, drop tokens whose cumulative softmax
 *      probability is <= 1 - top_p, always keeping the largest
 *   5. draw from softmax of what is left with the sampler's own seeded RNG
 *
 * Also: stop strings (textual stops on the decoded output).
 */
#ifndef VL2_SAMPLER_H
#define VL2_SAMPLER_H

#include <stddef.h>
#include <stdint.h>

#include "vl2-status.h"

struct vl2_sampler_params {
    float    temperature;         /* 0: greedy */
    int32_t  top_k;               /* 0: off */
    float    top_p;               /* 1.0: off */
    float    repetition_penalty;  /* 1.0: off */
    int      penalize_prompt;     /* 1: prompt ids count as seen (inference.py); 0: only
                                     generated ids (README greedy path) */
    uint64_t seed;
};

/* Greedy: temperature 0, top_k 0, top_p 1, penalty 1, penalize_prompt 1, seed 0. */
struct vl2_sampler_params vl2_sampler_default_params(void);

/* Caller-owned storage; vl2_sampler_init allocates its tables. */
struct vl2_sampler {
    struct vl2_sampler_params p;
    int32_t   n_vocab;
    uint64_t  rng[4];        /* xoshiro256** state */
    uint8_t  *seen;          /* [n_vocab] 1 if the id counts for the penalty */
    int32_t  *seen_list;     /* ids with seen = 1, in order of first sight */
    int32_t   n_seen;
    float    *z;             /* [n_vocab] scratch: processed logits */
    float    *tmp;           /* [n_vocab] scratch: top-k selection */
    int32_t  *idx;           /* [n_vocab] scratch: surviving ids */
    struct vl2_sampler_pair { float v; int32_t id; } *pairs;  /* [n_vocab] scratch: top-p sort */
};

/* Check @p (temperature >= 0, top_p in (0, 1], penalty > 0, top_k >= 0). */
int  vl2_sampler_check_params(const struct vl2_sampler_params *p, struct vl2_err *err);
int  vl2_sampler_init(struct vl2_sampler *s, const struct vl2_sampler_params *p,
                      int32_t n_vocab, struct vl2_err *err);
void vl2_sampler_done(struct vl2_sampler *s);
/* Forget the seen ids (the RNG continues). */
void vl2_sampler_reset(struct vl2_sampler *s);

/* Record @id as seen (prompt or generated id).  Ids outside the vocabulary
 * are ignored. */
void vl2_sampler_accept(struct vl2_sampler *s, int32_t id);

/* Choose the next id from @logits [n_vocab] (not modified). */
int32_t vl2_sampler_sample(struct vl2_sampler *s, const float *logits);

/* Apply steps 1-4 to @z in place (removed tokens become -INFINITY); for
 * tests and for callers that want the distribution.  With temperature 0
 * only step 1 is applied. */
void vl2_sampler_process(struct vl2_sampler *s, float *z);

/* log softmax(@z)[@id] over @n logits (the raw model distribution, before
 * any sampler step), for responses that report log-probabilities.  -INFINITY
 * for an id outside [0, n). */
double vl2_logits_logprob(const float *z, int32_t n, int32_t id);

/* The @k most likely ids of log softmax(@z) over @n logits (as
 * vl2_logits_logprob computes them, in double), most likely first, equal
 * logits by lower id, NaN logits never: ids into @ret_ids[k], their
 * log-probabilities into @ret_lp[k].  Returns how many were filled,
 * min(@k, @n) when no logit is NaN. */
size_t vl2_logits_top(const float *z, int32_t n, size_t k, int32_t *ret_ids, double *ret_lp);

/* Uniform double in [0, 1) from the sampler's RNG. */
double vl2_sampler_uniform(struct vl2_sampler *s);

/* Earliest occurrence in @text [len] of any of @stops[n_stops] (empty
 * strings ignored).  Returns the offset where it starts, or -1. */
long vl2_stop_find(const char *text, size_t len, const char *const *stops, size_t n_stops);

/* Length of the longest suffix of @text that is a proper prefix of one of
 * the stop strings: text that must be held back while streaming because a
 * stop string may be starting. */
size_t vl2_stop_holdback(const char *text, size_t len, const char *const *stops,
                         size_t n_stops);

#endif /* VL2_SAMPLER_H */

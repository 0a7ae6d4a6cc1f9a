/* model.h - the DeepSeek-VL2 forward pass: vision tower, projector, image
 * token layout, DeepseekV2 decoder, KV caches, and the per-request sequence.
 *
 * Written once against the backend ABI (plugins/vl2-backend.h); every tensor
 * lives on the backend, the runtime only moves ids, pixels and logits.
 *
 * Objects
 *   struct vl2_model        one loaded model: config, weights (mapped and
 *                           wrapped/uploaded once), backend, scratch
 *                           activations.  Shared by every request.
 *   struct vl2_seq          one request: its KV cache, its length (= the
 *                           position of its next token), its last logits and
 *                           its sampler state.
 *   struct vl2_image_embed  one image's token embeddings ([n_tokens, d_model]
 *                           on the backend), ready to be scattered into a
 *                           prompt.
 *
 * Threads.  A model is driven by ONE thread at a time (the daemon's engine
 * thread for that model): the backend context and the scratch activations
 * are shared by all sequences of the model.  Sequences and image embeddings
 * belong to their model and must be freed before it.
 *
 * Usage (one request, greedy):
 *
 *     struct vl2_model_params mp = vl2_model_default_params();
 *     mp.image_token_id = vl2_tokenizer_id(tok, "<image>");
 *     vl2_model_load(&m, dir, &mp, &err);
 *     vl2_model_encode_image(m, tiles_u8, n_tiles, tiles_w, tiles_h, &img, NULL, &err);
 *     struct vl2_seq_params sp = vl2_seq_default_params();
 *     vl2_seq_new(m, &sp, &seq, &err);
 *     vl2_model_prefill(m, seq, ids, n_ids, &img, 1, &err);     // logits of the last id
 *     for (;;) {
 *         int32_t id = vl2_seq_sample(seq);                      // counted as seen
 *         if (id == eos || ...) break;
 *         vl2_model_decode(m, &seq, &id, 1, &err);               // batch of 1
 *     }
 *
 * One forward entry point: vl2_model_step().  vl2_model_prefill and
 * vl2_model_decode are thin helpers that build its items; none of the three
 * does more than step does.  The repetition set of a sequence's sampler is
 * kept by the sequence alone: vl2_seq_sample() counts the id it chose, and
 * vl2_model_step() counts every id it feeds when the sampler's
 * penalize_prompt is set (so with it, prompt and generated ids; without it,
 * only the chosen ids).
 *
 * Continuous batching (the daemon's engine): one vl2_model_decode() call
 * advances any number of sequences by one token each, in one pass over the
 * weights (each MoE expert is read once per step for the whole batch); a
 * long prompt can be prefilled piecewise (vl2_model_step() with
 * image_row0) between decode steps of other sequences, or prefill rows and
 * decode rows can go in one vl2_model_step().  A sequence joins the next
 * step as soon as its prompt is in; a finished or cancelled one is freed at
 * once (vl2_seq_free releases its KV cache; the caller, e.g. the engine,
 * keeps the memory budget).  Image
 * embeddings are independent of sequences: one embedding may serve several
 * prompts (an image cache keyed by the decoded pixels).
 *
 * Errors.  Every input is checked before any work: a failing call leaves
 * every sequence as it was (VL2_EINVAL: bad ids, image/placeholder mismatch,
 * duplicate sequence; VL2_ELIMIT: context or capacity).  A backend failure in
 * the middle of a pass (VL2_EBACKEND, VL2_ENOMEM) leaves the sequences of
 * that call in an undefined state: free them.
 */
#ifndef VL2_MODEL_H
#define VL2_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "vl2-backend.h"
#include "vl2-status.h"
#include "weights.h"
#include "sampler.h"

struct vl2_model;
struct vl2_seq;

/* ---- model ------------------------------------------------------------ */

struct vl2_model_params {
    const char *backend;        /* backend name for vl2_model_load ("cpu", "cuda") */
    const char *plugin_dir;     /* where backend plugins are (NULL: built-in default) */
    const char *backend_options; /* vl2_backend_params.options ("key=value,...") or NULL */
    int         n_threads;      /* backend threads (0: all cores) */
    int         device;         /* backend device index */
    int32_t     image_token_id; /* placeholder id replaced by image rows (-1: text only) */
    int32_t     max_rows;       /* most token rows in one forward pass (prefill chunk) */
    int32_t     max_logit_rows; /* most sequences whose logits one pass computes */
    int32_t     vision_batch;   /* tiles per vision-tower pass */
    int32_t     n_ctx;          /* context length of a sequence (0: config n_ctx) */
    int32_t     kv_dtype;       /* enum vl2_dtype of the KV cache (F32, or BF16/F16) */
    int         skip_validate;  /* 1: do not run vl2_model_validate (tests of errors) */
};

/* Defaults: backend "cpu", all cores, image token -1, max_rows 512,
 * max_logit_rows 64, vision_batch 2, n_ctx from config, F32 cache. */
struct vl2_model_params vl2_model_default_params(void);

/* Load the model in directory @dir (config.json, processor_config.json,
 * safetensors) onto the backend named in @p, which the model loads and owns.
 * Validates every tensor against the config first: a missing tensor, a wrong
 * shape or an unsupported dtype is an error naming the tensor. */
int  vl2_model_load(struct vl2_model **ret, const char *dir, const struct vl2_model_params *p,
                    struct vl2_err *err);

/* Free the model, its scratch and its backend.  NULL ok. */
void vl2_model_free(struct vl2_model *m);

const struct vl2_model_config     *vl2_model_config(const struct vl2_model *m);
const struct vl2_processor_config *vl2_model_processor_config(const struct vl2_model *m);
const struct vl2_backend_ops      *vl2_model_backend(const struct vl2_model *m,
                                                     struct vl2_backend_ctx **ret_ctx);
/* Context length of a sequence (params n_ctx or config). */
int32_t vl2_model_n_ctx(const struct vl2_model *m);
/* Bytes one token takes in a KV cache of this model (all layers). */
size_t  vl2_model_kv_token_bytes(const struct vl2_model *m);
/* Bytes of weights read by one decode step of one token (active parameters:
 * attention, dense/shared MLPs, top_k experts per MoE layer, lm_head). */
size_t  vl2_model_decode_bytes(const struct vl2_model *m);

/* Image tokens for an image of tiles_w x tiles_h local tiles (spec 6.2):
 * 14*15 + 1 + (th*14)*(tw*14 + 1) for the real geometry. */
int32_t vl2_model_image_tokens(const struct vl2_model *m, int32_t tiles_w, int32_t tiles_h);

/* ---- images ----------------------------------------------------------- */

struct vl2_image_embed {
    struct vl2_tensor rows;      /* [n_tokens, d_model] F32 on the backend */
    int32_t           n_tokens;  /* = vl2_model_image_tokens(tiles_w, tiles_h) */
    int32_t           n_tiles;   /* 1 + tiles_w * tiles_h */
    int32_t           n_distinct; /* distinct tiles the vision tower ran on */
    int32_t           tiles_w, tiles_h;
};

/* Optional host copies of the intermediate stages (golden dumps).  Buffers
 * are allocated by vl2_model_encode_image and freed with
 * vl2_image_trace_done. */
struct vl2_image_trace {
    float  *vision_features;  /* [n_tiles, grid*grid, vision d_model] */
    float  *projector_out;    /* [n_tiles, (grid2/2)^2, d_model] */
    int64_t n_patches;        /* grid*grid (729) */
    int64_t n_proj;           /* tokens per tile after the projector (196) */
};
void vl2_image_trace_done(struct vl2_image_trace *t);

/* Run the vision tower and the projector on @n_tiles tiles of one image
 * (@tiles: n_tiles * 3 * S * S bytes, uint8 CHW RGB, global view first then
 * the local tiles row-major, as vl2_image_tile() writes them), normalise
 * with the processor's mean/std, and lay the result out as the image's token
 * sequence (spec 6.1).  n_tiles must be 1 + tiles_w * tiles_h.  Identical
 * tiles (a 1x1 tiling repeats the global view) run through the tower once.
 * On success *ret is a new embedding (free with vl2_image_embed_free).
 * @trace may be NULL. */
int  vl2_model_encode_image(struct vl2_model *m, const uint8_t *tiles, int32_t n_tiles,
                            int32_t tiles_w, int32_t tiles_h, struct vl2_image_embed **ret,
                            struct vl2_image_trace *trace, struct vl2_err *err);
void vl2_image_embed_free(struct vl2_model *m, struct vl2_image_embed *e);

/* The same work in pieces, so that a caller can interleave an image's tiles
 * with other passes (the engine runs one tile between two decode steps):
 *
 *     vl2_model_image_begin(m, tiles_u8, n_tiles, tw, th, &job, &err);
 *     do vl2_model_image_step(m, job, 1, &done, &err);    // + other passes
 *     while (!done);
 *     vl2_model_image_finish(m, job, &img, &err);          // frees job
 *
 * vl2_model_encode_image is begin + one step of every tile + finish, so the
 * embedding is the same whatever the steps (the tower is per tile).
 *
 * begin checks the tiling (as vl2_model_encode_image), finds the distinct
 * tiles and reserves their projector rows on the backend.  @tiles is the
 * caller's and must stay unchanged until finish or abort.
 * step runs up to @max_tiles more distinct tiles (<= 0: all the rest)
 * through the tower and the projector; *@ret_done (may be NULL) is 1 when
 * every distinct tile has run.  After a step error, abort the job.
 * progress gives the distinct tiles run and their number.
 * finish lays the rows out (every tile must have run) into a new embedding
 * and frees the job, also on error.  abort frees an unfinished job (NULL ok). */
struct vl2_image_job;
int  vl2_model_image_begin(struct vl2_model *m, const uint8_t *tiles, int32_t n_tiles,
                           int32_t tiles_w, int32_t tiles_h, struct vl2_image_job **ret,
                           struct vl2_err *err);
int  vl2_model_image_step(struct vl2_model *m, struct vl2_image_job *job, int32_t max_tiles,
                          int *ret_done, struct vl2_err *err);
void vl2_model_image_progress(const struct vl2_image_job *job, int32_t *ret_done,
                              int32_t *ret_total);
int  vl2_model_image_finish(struct vl2_model *m, struct vl2_image_job *job,
                            struct vl2_image_embed **ret, struct vl2_err *err);
void vl2_model_image_abort(struct vl2_model *m, struct vl2_image_job *job);

/* ---- sequences -------------------------------------------------------- */

struct vl2_seq_params {
    int32_t                   capacity;  /* tokens its KV cache holds (0: model n_ctx) */
    struct vl2_sampler_params sampler;
    /* 1: when the sampler is greedy without repetition penalty and the
     * backend has argmax, passes choose the next id on the device and read
     * back that id instead of the logits: vl2_seq_logits() is then NULL and
     * vl2_seq_sample() gives the device's choice.  For callers that need no
     * logits (no log-probabilities, no dumps). */
    int                       device_greedy;
};
struct vl2_seq_params vl2_seq_default_params(void);

/* New empty sequence with a KV cache of @p->capacity tokens (VL2_ELIMIT
 * above the context length; the backend's errors when it has no room). */
int  vl2_seq_new(struct vl2_model *m, const struct vl2_seq_params *p, struct vl2_seq **ret,
                 struct vl2_err *err);
/* Free a sequence and its cache.  NULL ok. */
void vl2_seq_free(struct vl2_seq *s);

int32_t vl2_seq_len(const struct vl2_seq *s);       /* tokens in its cache */
const struct vl2_model *vl2_seq_model(const struct vl2_seq *s);
/* Logits [n_vocab] at the last token of the last pass that asked for them;
 * owned by the sequence, valid until the next pass over it. */
const float *vl2_seq_logits(const struct vl2_seq *s);
/* 1 when the sequence's ids are chosen on the device (see device_greedy). */
int vl2_seq_device_greedy(const struct vl2_seq *s);
/* Next token from the current logits by the sequence's sampler (repetition
 * penalty over the ids it has seen); the id is counted as seen.  Does not
 * feed it back. */
int32_t vl2_seq_sample(struct vl2_seq *s);
struct vl2_sampler *vl2_seq_sampler(struct vl2_seq *s);

/* ---- forward passes --------------------------------------------------- */

/* One sequence's share of a pass: @n_ids new tokens appended at its current
 * length.  Ids equal to the model's image_token_id take, in order, the rows
 * of images[0..n_images) starting after @image_row0 rows (the image rows
 * consumed by earlier pieces of the same prompt); every such id must get a
 * row.  @ret_embeds, if not NULL, receives the input embeddings
 * [n_ids, d_model] (golden dumps). */
struct vl2_step_item {
    struct vl2_seq                      *seq;
    const int32_t                       *ids;
    int32_t                              n_ids;
    const struct vl2_image_embed *const *images;
    int32_t                              n_images;
    int64_t                              image_row0;
    int                                  want_logits;  /* logits of its last id */
    float                               *ret_embeds;
};

/* Run one forward pass (split into passes of at most max_rows rows and
 * max_logit_rows logits) for @n_items distinct sequences; each sequence's
 * length grows by its n_ids; those with want_logits get vl2_seq_logits() of
 * their last id; with penalize_prompt the fed ids count as seen by the
 * sequence's sampler.  All items are checked (ids in the vocabulary, room in
 * the cache, image rows) before any work: on error nothing changed. */
int  vl2_model_step(struct vl2_model *m, const struct vl2_step_item *items, size_t n_items,
                    struct vl2_err *err);

/* Prompt (or a further turn) of one sequence, with logits of its last id:
 * vl2_model_step of one item, after checking that the images give exactly
 * the rows the placeholders take. */
int  vl2_model_prefill(struct vl2_model *m, struct vl2_seq *s, const int32_t *ids,
                       size_t n_ids, const struct vl2_image_embed *const *images,
                       size_t n_images, struct vl2_err *err);

/* One decode step for @n_seqs distinct sequences: seqs[i] gets ids[i]
 * appended; every sequence gets its new logits.  vl2_model_step of one item
 * per sequence (one pass over the weights per max_rows sequences): checked
 * whole before any work, so on error nothing changed. */
int  vl2_model_decode(struct vl2_model *m, struct vl2_seq *const *seqs, const int32_t *ids,
                      size_t n_seqs, struct vl2_err *err);

#endif /* VL2_MODEL_H */

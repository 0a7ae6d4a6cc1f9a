/* engine.h - serving one model: the scheduler between requests (struct
 * vl2_job, job.h) and the model runtime (model.h).
 *
 * One engine per loaded model, with its own threads (DESIGN 3):
 *
 *     engine thread   loads the model, then loops: cancellations, admission
 *                     of prepared requests, one unit of vision work (a few
 *                     tiles of one image: vision_tiles_per_step) and one
 *                     prefill pass for the starting requests, then ONE batched
 *                     vl2_model_decode() step for every decoding sequence
 *                     (continuous batching: a request joins the step after
 *                     its prefill; MoE layers read each expert once per
 *                     step for the whole batch).
 *     prep threads    read the image descriptors (with limits and a
 *                     deadline), decode and tile the images, build the
 *                     prompt ids (vl2_prepare, daemon/runtime): everything
 *                     that does not touch the model; and encode the texts
 *                     of Tokenize jobs (at most VL2_ENGINE_MAX_TOKENIZE held,
 *                     answered also while the model unloads).
 *
 * Requests wait in a fair queue (round robin between owners, i.e.
 * connections) until one of max_sequences slots frees; a slot is held from
 * preparation to the end of generation.  Events go back through the post
 * function of the vl2_engine_spec: ACCEPTED (queue position), PROGRESS
 * (tiling, vision, prefill), TOKEN (text of whole characters, id, optional
 * logprob), then DONE or ERROR.  Cancelled requests (also those of a client
 * that left) stop before the next decode step; their KV cache is freed
 * then.
 *
 * Usage (vl2d serve goes through struct vl2_engine_factory):
 *
 *     struct vl2_engine_params p = vl2_engine_default_params();
 *     p.max_sequences = 16;
 *     struct vl2_engine_spec spec = { .name = "tiny", .dir = "/models/tiny",
 *                                     .load_key = 1, .post = my_post, .post_ud = me };
 *     struct vl2_engine *e;
 *     vl2_engine_new(&p, &spec, &e, &err);        // returns at once; loads
 *     const struct vl2_engine_ops *ops = vl2_engine_ops();
 *     ops->submit(e, job, &err);                  // events arrive via my_post
 *     ops->free(e);
 */
#ifndef VL2_ENGINE_H
#define VL2_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "job.h"
#include "vl2-status.h"

struct vl2_engine;

/* The most images one request may carry, stated once: the ceiling of
 * max_images (vl2d.conf accepts 1 to this, daemon/server/conf.c) and the
 * server's check of a Generate before any engine sees it
 * (daemon/server/dispatch.c).  Every image costs at least 421 prompt tokens
 * (spec 6.1), so 64 already far exceeds any context. */
#define VL2_ENGINE_MAX_IMAGES 64

struct vl2_engine_params {
    const char *backend;            /* "cpu" (default) or "cuda" */
    const char *plugin_dir;         /* NULL: the loader's search order */
    const char *backend_options;    /* backend options, "key=value,..." in the grammar of
                                       plugins/vl2-options.h (vl2d.conf backend_options,
                                       then --backend-option flags), or NULL */
    int         device;             /* backend device index */
    int         n_threads;          /* backend threads (0: all cores) */
    uint32_t    max_sequences;      /* requests holding a slot at once (default 8) */
    uint32_t    max_queue;          /* requests waiting for a slot (default 1024) */
    size_t      kv_budget;          /* bytes for all KV caches (0: max_sequences full
                                       contexts, at most a quarter of the RAM) */
    int32_t     n_ctx;              /* context length (0: the model's) */
    uint32_t    max_images;         /* images in one request (default
                                       VL2_PREP_DEFAULT_IMAGES, 16; at most
                                       VL2_ENGINE_MAX_IMAGES) */
    uint64_t    max_image_pixels;   /* per image (default 50 000 000) */
    size_t      max_image_bytes;    /* encoded size of one image (default 64 MiB) */
    bool        apply_exif;         /* for images whose request leaves it unset (true) */
    bool        special_tokens_in_text;  /* prompt.h: false (default), messages are plain text */
    uint32_t    max_new_tokens;     /* default when a request sets none (512) */
    uint32_t    prep_threads;       /* image/prompt workers (default 2) */
    double      fd_timeout_s;       /* longest wait reading an image descriptor (10) */
    double      idle_unload_s;      /* release the model after this long unused, 0: never;
                                       the next request loads it again */
    uint32_t    vision_tiles_per_step; /* image tiles through the vision tower between
                                       two decode steps while other requests run
                                       (default 1; 0: a whole image); alone, a
                                       request's image goes through at once */
};

struct vl2_engine_params vl2_engine_default_params(void);

/* Check @p (non-zero limits, a backend name).  Returns 0 or VL2_EINVAL with
 * the field named in @err. */
int vl2_engine_check_params(const struct vl2_engine_params *p, struct vl2_err *err);

/* Start an engine for the model in spec->dir: copies @p and @spec, starts
 * its threads and returns at once; the engine thread loads the tokenizer
 * and the model and posts, for spec->load_key, PROGRESS (LOADING) when
 * spec->progress, then VL2_EVENT_LOADED or VL2_EVENT_ERROR.  Jobs submitted
 * while it loads wait in the queue; if loading fails they end with that
 * error, and later submits are refused with it.  Returns 0 and *@ret, or
 * VL2_EINVAL / VL2_ENOMEM / VL2_EIO (thread creation). */
int vl2_engine_new(const struct vl2_engine_params *p, const struct vl2_engine_spec *spec,
                   struct vl2_engine **ret, struct vl2_err *err);

/* The table the server drives an engine with (submit, cancel, stats, free,
 * stop); the engine argument is a struct vl2_engine *. */
const struct vl2_engine_ops *vl2_engine_ops(void);

/* Block until the engine has finished loading (READY or FAILED), for
 * benchmarks and tests.  Returns 0 when READY, else the load error's code
 * with its message in @err. */
int vl2_engine_wait_loaded(struct vl2_engine *e, struct vl2_err *err);

#endif /* VL2_ENGINE_H */

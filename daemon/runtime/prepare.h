/* prepare.h - a request before the model: images + messages + settings ->
 * tiles, prompt ids, image placements, sampling settings.  Written once for
 * the daemon's engine (its prep threads) and for `vl2d run`.
 *
 *     struct vl2_prep_model pm;
 *     vl2_prep_model_init(&pm, model, tok, &err);   // once per loaded model
 *     struct vl2_prep_request rq = { .messages = msgs, .n_messages = n, ... };
 *     struct vl2_prepared out;
 *     vl2_prepare(&pm, &rq, &hooks, &out, &err);     // any thread
 *     ... out.images[i].tiles -> vision tower, out.ids -> prefill ...
 *     vl2_prepared_done(&out);
 *
 * The rules stated here once:
 *   - candidate resolutions: processor_config.json's, else config.json's;
 *     each positive, the first equal to the vision image size;
 *   - cropping (local tiles) only for conversations of at most two images
 *     (the official processor);
 *   - a message with images but no "<image>" tag gets one "<image>\n" per
 *     image in front of its text; otherwise tags and images must match;
 *   - at most VL2_PREP_MAX_STOPS stop strings of VL2_PREP_MAX_STOP_LEN bytes,
 *     at most rq->max_images images (the configured limit);
 *   - the prompt must leave room in the context; max_new is cut to that room.
 *
 * Threads: vl2_prepare reads @pm and @rq only (both immutable meanwhile), so
 * several threads may prepare at once with one vl2_prep_model.  It touches
 * no model state: the tokenizer and the geometry are all it uses.
 */
#ifndef VL2_PREPARE_H
#define VL2_PREPARE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "image.h"
#include "sampler.h"
#include "vl2-status.h"
#include "weights.h"

struct vl2_model;
struct vl2_tokenizer;

/* Stop strings of one request, and the bytes each may hold. */
#define VL2_PREP_MAX_STOPS      16
#define VL2_PREP_MAX_STOP_LEN   1024
/* Images in one request by default (the engine's max_images, vl2d run's
 * limit); the most a configuration may allow is the protocol's
 * (VL2_ENGINE_MAX_IMAGES, daemon/engine/engine.h). */
#define VL2_PREP_DEFAULT_IMAGES 16

/* What preparing needs of a loaded model; fixed once filled. */
struct vl2_prep_model {
    const struct vl2_tokenizer *tok;     /* borrowed; NULL only when every request gives ids */
    int32_t image_token_id;              /* -1: the tokenizer has none (text only) */
    int32_t n_ctx;
    int     image_size, patch_size, downsample;
    int     n_cands;
    int     cands[VL2_MAX_CANDIDATES][2];  /* (width, height), config order */
};

/* Fill @pm from @m (geometry, context length, candidates: processor's, else
 * the model config's) and @tok (may be NULL: image_token_id -1).  Returns 0,
 * VL2_EFORMAT (a candidate not positive), VL2_EUNSUPPORTED (first candidate
 * differs from the vision image size). */
int vl2_prep_model_init(struct vl2_prep_model *pm, const struct vl2_model *m,
                        const struct vl2_tokenizer *tok, struct vl2_err *err);

/* Check and set the candidate resolutions of @pm (its image_size set):
 * each positive, the first as wide as image_size.  The errors of
 * vl2_prep_model_init; @pm's candidates are unchanged on error. */
int vl2_prep_model_set_candidates(struct vl2_prep_model *pm, const int (*cands)[2], int n,
                                  struct vl2_err *err);

/* An image as given: encoded bytes, or a descriptor (read whole: a regular
 * file from offset 0, anything else until end of file within
 * rq->fd_timeout_s).  Exactly one of @data / @fd >= 0 is set. */
struct vl2_prep_image {
    const uint8_t *data;
    size_t         size;
    int            fd;          /* -1 when @data is set; not closed here */
    bool           apply_exif;
    const char    *name;        /* names it in errors (a path); NULL: "image K (message I)" */
};

struct vl2_prep_message {
    int                          role;      /* enum vl2_role (prompt.h); other values refused */
    const char                  *text;      /* UTF-8, NUL-terminated; NULL is "" */
    const struct vl2_prep_image *images;    /* [n_images] */
    size_t                       n_images;
};

/* Called by vl2_prepare; every member may be NULL. */
struct vl2_prep_hooks {
    /* Image @k of @n is tiled: its encoded bytes are no longer read. */
    void (*image_done)(void *ud, size_t k, size_t n);
    /* Polled after each image: true stops with VL2_ECANCELED. */
    bool (*cancelled)(void *ud);
    void *ud;
};

struct vl2_prep_request {
    const struct vl2_prep_message *messages;  /* [n_messages], at least one */
    size_t                         n_messages;
    /* Optional prompt ids given by the caller (vl2d run --input-ids-json):
     * used instead of the tokenizer; they must hold one image_token_id per
     * image token of the images. */
    const int32_t                 *ids;
    size_t                         n_ids;
    struct vl2_sampler_params      sp;        /* checked by vl2_prepare */
    const char *const             *stops;     /* [n_stops]; empty strings ignored */
    size_t                         n_stops;
    size_t                         max_new;   /* cut to the room the context leaves */
    uint32_t                       max_images;
    uint64_t                       max_image_pixels;
    size_t                         max_image_bytes;
    double                         fd_timeout_s;
    /* prompt.h: false, the messages' text is plain text (special-token
     * strings there are not ids); true: the official processor's way. */
    bool                           special_tokens_in_text;
};

struct vl2_prepared_image {
    int32_t           width, height;   /* decoded, after EXIF orientation */
    struct vl2_tiling tiling;
    uint8_t          *tiles;           /* [n_tiles, 3, S, S] uint8, owned (the caller may
                                          free it early and set it NULL) */
};

struct vl2_prepared {
    struct vl2_prepared_image *images;  /* [n_images] over the whole conversation, owned */
    size_t                     n_images;
    int32_t                   *ids;     /* [n_ids] prompt, owned; image tokens are
                                           image_token_id, in image order */
    size_t                     n_ids;
    int32_t                    n_image_tokens;
    int32_t                    n_tiles;
    size_t                     max_new;
    struct vl2_sampler_params  sp;
    const char                *stops[VL2_PREP_MAX_STOPS];  /* non-empty, point into @rq */
    size_t                     n_stops;
};

/* Prepare @rq into @out (zeroed first).  Returns 0, or < 0 with @err (the
 * request's error: VL2_EINVAL, VL2_ELIMIT, VL2_EFORMAT, the image decoder's
 * codes, VL2_ECANCELED); @out is then released. */
int  vl2_prepare(const struct vl2_prep_model *pm, const struct vl2_prep_request *rq,
                 const struct vl2_prep_hooks *hooks, struct vl2_prepared *out,
                 struct vl2_err *err);
void vl2_prepared_done(struct vl2_prepared *p);

/* Read an image passed as a descriptor: a regular file whole (from offset
 * 0), anything else until end of file, each within @max bytes and
 * @timeout_s seconds.  *@ret is malloc'd. */
int  vl2_read_image_fd(int fd, size_t max, double timeout_s, uint8_t **ret, size_t *ret_size,
                       struct vl2_err *err);

/* CLOCK_MONOTONIC in seconds. */
double vl2_now(void);

#endif /* VL2_PREPARE_H */

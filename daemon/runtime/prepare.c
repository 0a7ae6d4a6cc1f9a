/* prepare.c - a request before the model (prepare.h): image bytes (given or
 * read from a descriptor), decoding, tiling, the prompt's token ids, the
 * sampling settings and the limits. */
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "model.h"
#include "prepare.h"
#include "prompt.h"
#include "tokenizer.h"

double vl2_now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double) ts.tv_sec + 1e-9 * (double) ts.tv_nsec;
}

/* ---- image descriptors ------------------------------------------------ */

static int read_regular(int fd, size_t size, size_t max, uint8_t **ret, size_t *ret_size,
                        struct vl2_err *err)
{
    uint8_t *buf;
    size_t got = 0;

    if (size == 0)
        return vl2_err_set(err, VL2_EFORMAT, "the file is empty");
    if (size > max)
        return vl2_err_set(err, VL2_ELIMIT, "the file has %zu bytes, the limit is %zu", size,
                           max);
    buf = malloc(size);
    if (!buf)
        return vl2_err_set(err, VL2_ENOMEM, "out of memory for %zu bytes", size);
    while (got < size) {
        ssize_t n = pread(fd, buf + got, size - got, (off_t) got);

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int e = errno;

            free(buf);
            return vl2_err_set(err, VL2_EIO, "read failed: %s", strerror(e));
        }
        if (n == 0) {
            free(buf);
            return vl2_err_set(err, VL2_EIO, "the file shrank while being read (%zu of %zu "
                               "bytes)", got, size);
        }
        got += (size_t) n;
    }
    *ret = buf;
    *ret_size = size;
    return 0;
}

static int read_stream(int fd, size_t max, double timeout_s, uint8_t **ret, size_t *ret_size,
                       struct vl2_err *err)
{
    double deadline = vl2_now() + timeout_s;
    uint8_t *buf = NULL;
    size_t got = 0, cap = 0;
    int r;

    for (;;) {
        struct pollfd pfd = { .fd = fd, .events = POLLIN };
        double left = deadline - vl2_now();
        ssize_t n;

        if (left <= 0) {
            r = vl2_err_set(err, VL2_ETIMEDOUT, "no end of data within %.0f s (%zu bytes "
                            "read)", timeout_s, got);
            goto out_free;
        }
        n = poll(&pfd, 1, (int) (left * 1000.0) + 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            r = vl2_err_set(err, VL2_EIO, "poll failed: %s", strerror(errno));
            goto out_free;
        }
        if (n == 0)
            continue;
        if (got == cap) {
            size_t ncap = cap ? 2 * cap : 65536;
            uint8_t *p;

            if (ncap > max + 1)
                ncap = max + 1;
            if (ncap <= cap) {
                r = vl2_err_set(err, VL2_ELIMIT, "more than %zu bytes", max);
                goto out_free;
            }
            p = realloc(buf, ncap);
            if (!p) {
                r = vl2_err_set(err, VL2_ENOMEM, "out of memory");
                goto out_free;
            }
            buf = p;
            cap = ncap;
        }
        n = read(fd, buf + got, cap - got);
        if (n < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK))
            continue;
        if (n < 0) {
            r = vl2_err_set(err, VL2_EIO, "read failed: %s", strerror(errno));
            goto out_free;
        }
        if (n == 0)
            break;
        got += (size_t) n;
        if (got > max) {
            r = vl2_err_set(err, VL2_ELIMIT, "more than %zu bytes", max);
            goto out_free;
        }
    }
    if (got == 0) {
        r = vl2_err_set(err, VL2_EFORMAT, "no data");
        goto out_free;
    }
    *ret = buf;
    *ret_size = got;
    return 0;

out_free:
    free(buf);
    return r;
}

int vl2_read_image_fd(int fd, size_t max, double timeout_s, uint8_t **ret, size_t *ret_size,
                       struct vl2_err *err)
{
    struct stat st;

    if (fstat(fd, &st) < 0)
        return vl2_err_set(err, VL2_EIO, "cannot stat the descriptor: %s", strerror(errno));
    if (S_ISDIR(st.st_mode))
        return vl2_err_set(err, VL2_EINVAL, "the descriptor is a directory");
    if (S_ISREG(st.st_mode)) {
        if (st.st_size < 0)
            return vl2_err_set(err, VL2_EIO, "negative file size");
        if ((uint64_t) st.st_size > (uint64_t) SIZE_MAX)
            return vl2_err_set(err, VL2_ELIMIT, "the file is too large");
        return read_regular(fd, (size_t) st.st_size, max, ret, ret_size, err);
    }
    return read_stream(fd, max, timeout_s, ret, ret_size, err);
}

/* ---- the model's side --------------------------------------------------- */

int vl2_prep_model_set_candidates(struct vl2_prep_model *pm, const int (*cands)[2], int n,
                                  struct vl2_err *err)
{
    int i;

    if (n < 0 || n > VL2_MAX_CANDIDATES)
        return vl2_err_set(err, VL2_EFORMAT, "%d candidate resolutions, at most %d", n,
                           VL2_MAX_CANDIDATES);
    for (i = 0; i < n; i++)
        if (cands[i][0] <= 0 || cands[i][1] <= 0)
            return vl2_err_set(err, VL2_EFORMAT, "candidate resolution %d is not positive", i);
    if (n > 0 && cands[0][0] != pm->image_size)
        return vl2_err_set(err, VL2_EUNSUPPORTED, "first candidate resolution %d differs from "
                           "the vision image size %d", cands[0][0], pm->image_size);
    memcpy(pm->cands, cands, (size_t)n * sizeof(pm->cands[0]));
    pm->n_cands = n;
    return 0;
}

int vl2_prep_model_init(struct vl2_prep_model *pm, const struct vl2_model *m,
                        const struct vl2_tokenizer *tok, struct vl2_err *err)
{
    const struct vl2_model_config *cfg = vl2_model_config(m);
    const struct vl2_processor_config *pc = vl2_model_processor_config(m);

    memset(pm, 0, sizeof(*pm));
    pm->tok = tok;
    pm->image_token_id = tok ? vl2_tokenizer_id(tok, VL2_PROMPT_IMAGE_TAG) : -1;
    pm->n_ctx = vl2_model_n_ctx(m);
    pm->image_size = cfg->vision.image_size;
    pm->patch_size = cfg->vision.patch_size;
    pm->downsample = cfg->proj.downsample;
    if (pc->n_candidates > 0)
        return vl2_prep_model_set_candidates(pm, (const int (*)[2]) pc->candidates,
                                             pc->n_candidates, err);
    return vl2_prep_model_set_candidates(pm, (const int (*)[2]) cfg->candidates,
                                         cfg->n_candidates, err);
}

/* ---- images ----------------------------------------------------------- */

/* Decode and tile one image into @out. */
static int prep_image(const struct vl2_prep_model *pm, const struct vl2_prep_request *rq,
                      const struct vl2_prep_image *im, bool cropping,
                      struct vl2_prepared_image *out, struct vl2_err *err)
{
    struct vl2_image_limits lim = vl2_image_default_limits();
    struct vl2_image img = { 0 };
    uint8_t *owned = NULL;
    const uint8_t *data;
    size_t size, bytes;
    int r;

    lim.max_pixels = rq->max_image_pixels;
    lim.max_bytes = rq->max_image_bytes;
    lim.apply_exif = im->apply_exif;
    if (im->data && im->size > 0) {
        data = im->data;
        size = im->size;
    } else if (im->fd >= 0) {
        r = vl2_read_image_fd(im->fd, rq->max_image_bytes, rq->fd_timeout_s, &owned, &size,
                              err);
        if (r < 0)
            return vl2_err_prefix(err, r, "descriptor");
        data = owned;
    } else {
        return vl2_err_set(err, VL2_EINVAL, "neither bytes nor a descriptor");
    }
    r = vl2_image_decode(&img, data, size, &lim, err);
    free(owned);
    if (r < 0)
        return r;
    out->width = img.width;
    out->height = img.height;
    vl2_image_plan(&out->tiling, img.width, img.height, (const int (*)[2]) pm->cands,
                   pm->n_cands, cropping, pm->image_size, pm->patch_size, pm->downsample);
    bytes = (size_t) out->tiling.n_tiles * 3 * (size_t) pm->image_size *
            (size_t) pm->image_size;
    out->tiles = malloc(bytes);
    if (!out->tiles) {
        vl2_image_done(&img);
        return vl2_err_set(err, VL2_ENOMEM, "out of memory for %d tiles", out->tiling.n_tiles);
    }
    r = vl2_image_tile(&img, &out->tiling, pm->image_size, out->tiles, err);
    vl2_image_done(&img);
    if (r < 0) {
        free(out->tiles);
        out->tiles = NULL;
        return r;
    }
    return 0;
}

/* ---- prompt ----------------------------------------------------------- */

/* Message texts as the prompt builder wants them: images without a tag in
 * their message go in front of its text, one "<image>\n" each. */
static int message_texts(const struct vl2_prep_request *rq, struct vl2_message *msgs,
                         char **owned, struct vl2_err *err)
{
    size_t i, k;

    for (i = 0; i < rq->n_messages; i++) {
        const struct vl2_prep_message *pm = &rq->messages[i];
        struct vl2_message *m = &msgs[i];
        size_t tags;

        if (pm->role != VL2_ROLE_SYSTEM && pm->role != VL2_ROLE_USER &&
            pm->role != VL2_ROLE_ASSISTANT)
            return vl2_err_set(err, VL2_EINVAL, "message %zu has no valid role", i);
        m->role = pm->role;
        m->text = pm->text ? pm->text : "";
        m->len = strlen(m->text);
        tags = vl2_prompt_count_images(m, 1);
        if (tags == 0 && pm->n_images > 0) {
            const size_t tl = strlen(VL2_PROMPT_IMAGE_TAG) + 1;
            char *t = malloc(pm->n_images * tl + m->len + 1);

            if (!t)
                return vl2_err_set(err, VL2_ENOMEM, "out of memory");
            for (k = 0; k < pm->n_images; k++) {
                memcpy(t + k * tl, VL2_PROMPT_IMAGE_TAG, tl - 1);
                t[k * tl + tl - 1] = '\n';
            }
            memcpy(t + pm->n_images * tl, m->text, m->len);
            t[pm->n_images * tl + m->len] = '\0';
            owned[i] = t;
            m->text = t;
            m->len += pm->n_images * tl;
        } else if (tags != pm->n_images) {
            return vl2_err_set(err, VL2_EINVAL, "message %zu has %zu '%s' tags but %zu images",
                               i, tags, VL2_PROMPT_IMAGE_TAG, pm->n_images);
        }
    }
    return 0;
}

static int build_prompt(const struct vl2_prep_model *pm, const struct vl2_prep_request *rq,
                        struct vl2_prepared *out, struct vl2_err *err)
{
    struct vl2_message *msgs;
    int32_t *counts = NULL;
    char **owned;
    size_t i;
    int rc;

    msgs = calloc(rq->n_messages, sizeof(*msgs));
    owned = calloc(rq->n_messages, sizeof(*owned));
    if (out->n_images > 0)
        counts = malloc(out->n_images * sizeof(*counts));
    if (!msgs || !owned || (out->n_images > 0 && !counts)) {
        rc = vl2_err_set(err, VL2_ENOMEM, "out of memory");
        goto out_free;
    }
    rc = message_texts(rq, msgs, owned, err);
    if (rc < 0)
        goto out_free;
    for (i = 0; i < out->n_images; i++)
        counts[i] = out->images[i].tiling.n_tokens;
    rc = vl2_prompt_build_ex(pm->tok, msgs, rq->n_messages, counts, out->n_images,
                             rq->special_tokens_in_text ? VL2_PROMPT_SPECIAL_TOKENS_IN_TEXT : 0,
                             &out->ids, &out->n_ids, err);
out_free:
    for (i = 0; owned && i < rq->n_messages; i++)
        free(owned[i]);
    free(owned);
    free(msgs);
    free(counts);
    return rc;
}

/* The caller's ids: a copy, with one placeholder per image token. */
static int given_ids(const struct vl2_prep_model *pm, const struct vl2_prep_request *rq,
                     struct vl2_prepared *out, struct vl2_err *err)
{
    size_t i, n_ph = 0;

    for (i = 0; i < rq->n_ids; i++)
        n_ph += pm->image_token_id >= 0 && rq->ids[i] == pm->image_token_id;
    if (n_ph != (size_t) out->n_image_tokens)
        return vl2_err_set(err, VL2_EINVAL, "the ids have %zu image placeholder ids, the "
                           "images need %d", n_ph, (int) out->n_image_tokens);
    out->ids = malloc((rq->n_ids ? rq->n_ids : 1) * sizeof(*out->ids));
    if (!out->ids)
        return vl2_err_set(err, VL2_ENOMEM, "out of memory");
    if (rq->n_ids)
        memcpy(out->ids, rq->ids, rq->n_ids * sizeof(*out->ids));
    out->n_ids = rq->n_ids;
    return 0;
}

/* ---- settings --------------------------------------------------------- */

static int settings(const struct vl2_prep_model *pm, const struct vl2_prep_request *rq,
                    struct vl2_prepared *out, struct vl2_err *err)
{
    size_t i, room;
    int rc;

    out->sp = rq->sp;
    rc = vl2_sampler_check_params(&out->sp, err);
    if (rc < 0)
        return rc;
    if (rq->n_stops > VL2_PREP_MAX_STOPS)
        return vl2_err_set(err, VL2_ELIMIT, "%zu stop strings, at most %d", rq->n_stops,
                           VL2_PREP_MAX_STOPS);
    out->n_stops = 0;
    for (i = 0; i < rq->n_stops; i++) {
        size_t len = rq->stops[i] ? strlen(rq->stops[i]) : 0;

        if (len > VL2_PREP_MAX_STOP_LEN)
            return vl2_err_set(err, VL2_ELIMIT, "stop string %zu has %zu bytes, at most %d", i,
                               len, VL2_PREP_MAX_STOP_LEN);
        if (len > 0)
            out->stops[out->n_stops++] = rq->stops[i];
    }
    room = (size_t) pm->n_ctx - out->n_ids;
    out->max_new = rq->max_new < room ? rq->max_new : room;
    return 0;
}

/* ---- the whole preparation -------------------------------------------- */

void vl2_prepared_done(struct vl2_prepared *p)
{
    size_t i;

    if (!p)
        return;
    for (i = 0; i < p->n_images; i++)
        free(p->images[i].tiles);
    free(p->images);
    free(p->ids);
    memset(p, 0, sizeof(*p));
}

static int prepare(const struct vl2_prep_model *pm, const struct vl2_prep_request *rq,
                   const struct vl2_prep_hooks *hooks, struct vl2_prepared *out,
                   struct vl2_err *err)
{
    size_t i, j, k, n = 0;
    bool cropping;
    int rc;

    if (rq->n_messages == 0)
        return vl2_err_set(err, VL2_EINVAL, "no messages");
    for (i = 0; i < rq->n_messages; i++)
        n += rq->messages[i].n_images;
    if (n > rq->max_images)
        return vl2_err_set(err, VL2_ELIMIT, "%zu images, at most %u per request", n,
                           rq->max_images);
    if (n > 0 && pm->image_token_id < 0)
        return vl2_err_set(err, VL2_EFORMAT, "the tokenizer has no '%s' token",
                           VL2_PROMPT_IMAGE_TAG);
    if (n > 0) {
        out->images = calloc(n, sizeof(*out->images));
        if (!out->images)
            return vl2_err_set(err, VL2_ENOMEM, "out of memory");
    }
    out->n_images = n;
    /* the official processor crops (local tiles) only for conversations of
     * at most two images */
    cropping = n <= 2;
    for (i = 0, k = 0; i < rq->n_messages; i++) {
        const struct vl2_prep_message *m = &rq->messages[i];

        for (j = 0; j < m->n_images; j++, k++) {
            const struct vl2_prep_image *im = &m->images[j];
            char what[48];

            rc = prep_image(pm, rq, im, cropping, &out->images[k], err);
            if (rc < 0) {
                if (im->name)
                    return vl2_err_prefix(err, rc, im->name);
                snprintf(what, sizeof(what), "image %zu (message %zu)", k, i);
                return vl2_err_prefix(err, rc, what);
            }
            out->n_image_tokens += out->images[k].tiling.n_tokens;
            out->n_tiles += out->images[k].tiling.n_tiles;
            if (hooks && hooks->image_done)
                hooks->image_done(hooks->ud, k, n);
            if (hooks && hooks->cancelled && hooks->cancelled(hooks->ud))
                return vl2_err_set(err, VL2_ECANCELED, "cancelled");
        }
    }
    /* a long text notices Cancel and disconnects while it is tokenized */
    if (hooks && hooks->cancelled)
        vl2_tokenizer_set_cancel(hooks->cancelled, hooks->ud);
    rc = rq->ids ? given_ids(pm, rq, out, err) : build_prompt(pm, rq, out, err);
    vl2_tokenizer_set_cancel(NULL, NULL);
    if (rc < 0)
        return rc;
    if (out->n_ids == 0)
        return vl2_err_set(err, VL2_EINVAL, "empty prompt");
    if (out->n_ids >= (size_t) pm->n_ctx)
        return vl2_err_set(err, VL2_ELIMIT, "the prompt takes %zu tokens (%d of them for %zu "
                           "images), the context holds %d", out->n_ids,
                           (int) out->n_image_tokens, out->n_images, (int) pm->n_ctx);
    return settings(pm, rq, out, err);
}

int vl2_prepare(const struct vl2_prep_model *pm, const struct vl2_prep_request *rq,
                const struct vl2_prep_hooks *hooks, struct vl2_prepared *out,
                struct vl2_err *err)
{
    int rc;

    memset(out, 0, sizeof(*out));
    rc = prepare(pm, rq, hooks, out, err);
    if (rc < 0)
        vl2_prepared_done(out);
    return rc;
}

/* prep.c - what a request needs before the model: image bytes (from the
 * message or from a descriptor the client opened), decoding, tiling, the
 * prompt's token ids, the sampling settings.  Runs on the prep threads; reads
 * only what is fixed once the model is loaded (tokenizer, geometry). */
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "engine-impl.h"
#include "prompt.h"

double vl2__engine_now(void)
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
    double deadline = vl2__engine_now() + timeout_s;
    uint8_t *buf = NULL;
    size_t got = 0, cap = 0;
    int r;

    for (;;) {
        struct pollfd pfd = { .fd = fd, .events = POLLIN };
        double left = deadline - vl2__engine_now();
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

int vl2__read_image_fd(int fd, size_t max, double timeout_s, uint8_t **ret, size_t *ret_size,
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

/* ---- images ----------------------------------------------------------- */

/* Decode and tile image @i of the request (@im is the client's). */
static int prep_image(struct vl2_engine *e, const struct vl2_job_image *im, bool cropping,
                      struct vl2_req_image *out, struct vl2_err *err)
{
    struct vl2_image_limits lim = vl2_image_default_limits();
    struct vl2_image img = { 0 };
    uint8_t *owned = NULL;
    const uint8_t *data;
    size_t size, bytes;
    int r;

    lim.max_pixels = e->p.max_image_pixels;
    lim.max_bytes = e->p.max_image_bytes;
    lim.apply_exif = im->has_apply_exif ? im->apply_exif : e->p.apply_exif;
    if (im->data && im->data_size > 0) {
        data = im->data;
        size = im->data_size;
    } else if (im->fd >= 0) {
        r = vl2__read_image_fd(im->fd, e->p.max_image_bytes, e->p.fd_timeout_s, &owned, &size,
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
    vl2_image_plan(&out->tiling, img.width, img.height, (const int (*)[2]) e->cands, e->n_cands,
                   cropping, e->image_size, e->patch_size, e->downsample);
    bytes = (size_t) out->tiling.n_tiles * 3 * (size_t) e->image_size * (size_t) e->image_size;
    out->tiles = malloc(bytes);
    if (!out->tiles) {
        vl2_image_done(&img);
        return vl2_err_set(err, VL2_ENOMEM, "out of memory for %d tiles", out->tiling.n_tiles);
    }
    r = vl2_image_tile(&img, &out->tiling, e->image_size, out->tiles, err);
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
static int message_texts(const struct vl2_job *job, struct vl2_message *msgs, char **owned,
                         struct vl2_err *err)
{
    size_t i, k;

    for (i = 0; i < job->n_messages; i++) {
        const struct vl2_job_message *jm = &job->messages[i];
        struct vl2_message *m = &msgs[i];
        size_t tags;

        switch (jm->role) {
        case VL2_JOB_ROLE_SYSTEM: m->role = VL2_ROLE_SYSTEM; break;
        case VL2_JOB_ROLE_USER: m->role = VL2_ROLE_USER; break;
        case VL2_JOB_ROLE_ASSISTANT: m->role = VL2_ROLE_ASSISTANT; break;
        default:
            return vl2_err_set(err, VL2_EINVAL, "message %zu has no valid role", i);
        }
        m->text = jm->text ? jm->text : "";
        m->len = strlen(m->text);
        tags = vl2_prompt_count_images(m, 1);
        if (tags == 0 && jm->n_images > 0) {
            const size_t tl = strlen(VL2_PROMPT_IMAGE_TAG) + 1;
            char *t = malloc(jm->n_images * tl + m->len + 1);

            if (!t)
                return vl2_err_set(err, VL2_ENOMEM, "out of memory");
            for (k = 0; k < jm->n_images; k++) {
                memcpy(t + k * tl, VL2_PROMPT_IMAGE_TAG, tl - 1);
                t[k * tl + tl - 1] = '\n';
            }
            memcpy(t + jm->n_images * tl, m->text, m->len);
            t[jm->n_images * tl + m->len] = '\0';
            owned[i] = t;
            m->text = t;
            m->len += jm->n_images * tl;
        } else if (tags != jm->n_images) {
            return vl2_err_set(err, VL2_EINVAL, "message %zu has %zu '%s' tags but %zu images",
                               i, tags, VL2_PROMPT_IMAGE_TAG, jm->n_images);
        }
    }
    return 0;
}

static int build_prompt(struct vl2_engine *e, struct vl2_req *r, struct vl2_err *err)
{
    const struct vl2_job *job = r->job;
    struct vl2_message *msgs;
    int32_t *counts = NULL;
    char **owned;
    size_t i;
    int rc;

    msgs = calloc(job->n_messages, sizeof(*msgs));
    owned = calloc(job->n_messages, sizeof(*owned));
    if (r->n_images > 0)
        counts = malloc(r->n_images * sizeof(*counts));
    if (!msgs || !owned || (r->n_images > 0 && !counts)) {
        rc = vl2_err_set(err, VL2_ENOMEM, "out of memory");
        goto out_free;
    }
    rc = message_texts(job, msgs, owned, err);
    if (rc < 0)
        goto out_free;
    for (i = 0; i < r->n_images; i++)
        counts[i] = r->images[i].tiling.n_tokens;
    rc = vl2_prompt_build_ex(e->tok, msgs, job->n_messages, counts, r->n_images,
                             e->p.special_tokens_in_text ? VL2_PROMPT_SPECIAL_TOKENS_IN_TEXT : 0,
                             &r->ids, &r->n_ids, err);
out_free:
    for (i = 0; owned && i < job->n_messages; i++)
        free(owned[i]);
    free(owned);
    free(msgs);
    free(counts);
    return rc;
}

/* ---- sampling --------------------------------------------------------- */

static int sampling(struct vl2_engine *e, struct vl2_req *r, struct vl2_err *err)
{
    const struct vl2_job_sampling *js = &r->job->sampling;
    size_t i, room;
    int rc;

    r->sp = vl2_sampler_default_params();
    if (js->has_temperature)
        r->sp.temperature = js->temperature;
    if (js->has_top_p)
        r->sp.top_p = js->top_p;
    if (js->has_top_k)
        r->sp.top_k = js->top_k > INT32_MAX ? INT32_MAX : (int32_t) js->top_k;
    if (js->has_repetition_penalty)
        r->sp.repetition_penalty = js->repetition_penalty;
    if (js->has_seed)
        r->sp.seed = js->seed;
    rc = vl2_sampler_check_params(&r->sp, err);
    if (rc < 0)
        return rc;
    if (js->n_stop > VL2_ENGINE_MAX_STOPS)
        return vl2_err_set(err, VL2_ELIMIT, "%zu stop strings, at most %d", js->n_stop,
                           VL2_ENGINE_MAX_STOPS);
    r->n_stops = 0;
    r->max_stop_len = 0;
    for (i = 0; i < js->n_stop; i++) {
        size_t len = js->stop[i] ? strlen(js->stop[i]) : 0;

        if (len > VL2_ENGINE_MAX_STOP_LEN)
            return vl2_err_set(err, VL2_ELIMIT, "stop string %zu has %zu bytes, at most %d", i,
                               len, VL2_ENGINE_MAX_STOP_LEN);
        if (len == 0)
            continue;
        r->stops[r->n_stops++] = js->stop[i];
        if (len > r->max_stop_len)
            r->max_stop_len = len;
    }
    room = (size_t) e->n_ctx - r->n_ids;
    r->max_new = js->has_max_new_tokens ? js->max_new_tokens : e->p.max_new_tokens;
    if (r->max_new > room)
        r->max_new = room;
    return 0;
}

/* ---- the whole preparation -------------------------------------------- */

int vl2__prep_request(struct vl2_engine *e, struct vl2_req *r, struct vl2_err *err)
{
    struct vl2_job *job = r->job;
    size_t i, j, k, n = 0;
    bool cropping;
    int rc;

    if (job->n_messages == 0)
        return vl2_err_set(err, VL2_EINVAL, "no messages");
    for (i = 0; i < job->n_messages; i++)
        n += job->messages[i].n_images;
    if (n > e->p.max_images)
        return vl2_err_set(err, VL2_ELIMIT, "%zu images, at most %u per request", n,
                           e->p.max_images);
    if (n > 0) {
        r->images = calloc(n, sizeof(*r->images));
        r->embeds = calloc(n, sizeof(*r->embeds));
        if (!r->images || !r->embeds)
            return vl2_err_set(err, VL2_ENOMEM, "out of memory");
    }
    r->n_images = n;
    /* the official processor crops (local tiles) only for conversations of
     * at most two images */
    cropping = n <= 2;
    for (i = 0, k = 0; i < job->n_messages; i++) {
        struct vl2_job_message *jm = &job->messages[i];

        for (j = 0; j < jm->n_images; j++, k++) {
            struct vl2_job_image *im = &jm->images[j];
            char what[48];

            rc = prep_image(e, im, cropping, &r->images[k], err);
            if (rc < 0) {
                snprintf(what, sizeof(what), "image %zu (message %zu)", k, i);
                return vl2_err_prefix(err, rc, what);
            }
            /* the tiles are what counts now: give the encoded file back */
            free(im->data);
            im->data = NULL;
            im->data_size = 0;
            if (im->fd >= 0)
                (void) close(im->fd);
            im->fd = -1;
            r->n_image_tokens += r->images[k].tiling.n_tokens;
            vl2__req_post_progress(e, r, VL2_STAGE_TILING, (float) (k + 1) / (float) n);
            pthread_mutex_lock(&e->mu);
            rc = r->cancelled || e->quit || e->stopping;
            pthread_mutex_unlock(&e->mu);
            if (rc)
                return vl2_err_set(err, VL2_ECANCELED, "cancelled");
        }
    }
    rc = build_prompt(e, r, err);
    if (rc < 0)
        return rc;
    if (r->n_ids >= (size_t) e->n_ctx)
        return vl2_err_set(err, VL2_ELIMIT, "the prompt takes %zu tokens (%d of them for %zu "
                           "images), the context holds %d", r->n_ids, (int) r->n_image_tokens,
                           r->n_images, (int) e->n_ctx);
    return sampling(e, r, err);
}

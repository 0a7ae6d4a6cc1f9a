/* prep.c - a job before the model, on the prep threads: the job's messages,
 * images and sampling settings handed to vl2_prepare (daemon/runtime), with
 * the engine's limits, its progress events and its cancellation.  Reads only
 * what is fixed once the model is loaded (e->pm) and never takes the
 * engine's lock. */
#include <limits.h>
#include <stdlib.h>
#include <unistd.h>

#include "engine-impl.h"
#include "prompt.h"

struct prep_ctx {
    struct vl2_engine *e;
    struct vl2_req    *r;
    const struct vl2_prep_image **src;   /* [n] where each image of the job is */
};

/* Image @k is tiled: give its encoded file back (the tiles are what counts
 * now), then report TILING progress. */
static void image_done(void *ud, size_t k, size_t n)
{
    struct prep_ctx *c = ud;
    size_t i, j, at = 0;

    for (i = 0; i < c->r->job->n_messages; i++) {
        struct vl2_job_message *jm = &c->r->job->messages[i];

        if (k >= at + jm->n_images) {
            at += jm->n_images;
            continue;
        }
        j = k - at;
        free(jm->images[j].data);
        jm->images[j].data = NULL;
        jm->images[j].data_size = 0;
        if (jm->images[j].fd >= 0)
            (void) close(jm->images[j].fd);
        jm->images[j].fd = -1;
        break;
    }
    vl2__req_post_progress(c->e, c->r, VL2_STAGE_TILING, (float) (k + 1) / (float) n);
}

static bool cancelled(void *ud)
{
    const struct prep_ctx *c = ud;

    return atomic_load(&c->r->cancelled) || atomic_load(&c->e->halting);
}

static int job_role(enum vl2_job_role role)
{
    switch (role) {
    case VL2_JOB_ROLE_SYSTEM: return VL2_ROLE_SYSTEM;
    case VL2_JOB_ROLE_USER: return VL2_ROLE_USER;
    case VL2_JOB_ROLE_ASSISTANT: return VL2_ROLE_ASSISTANT;
    }
    return -1;
}

static struct vl2_sampler_params job_sampling(const struct vl2_job_sampling *js)
{
    struct vl2_sampler_params sp = vl2_sampler_default_params();

    if (js->has_temperature)
        sp.temperature = js->temperature;
    if (js->has_top_p)
        sp.top_p = js->top_p;
    if (js->has_top_k)
        sp.top_k = js->top_k > INT32_MAX ? INT32_MAX : (int32_t) js->top_k;
    if (js->has_repetition_penalty)
        sp.repetition_penalty = js->repetition_penalty;
    if (js->has_seed)
        sp.seed = js->seed;
    return sp;
}

int vl2__prep_request(struct vl2_engine *e, struct vl2_req *r, struct vl2_err *err)
{
    const struct vl2_job *job = r->job;
    struct vl2_prep_request rq = { 0 };
    struct vl2_prep_message *msgs = NULL;
    struct vl2_prep_image *imgs = NULL;
    struct prep_ctx c = { .e = e, .r = r };
    struct vl2_prep_hooks hooks = { .image_done = image_done, .cancelled = cancelled, .ud = &c };
    size_t i, j, k = 0, n = 0;
    int rc;

    for (i = 0; i < job->n_messages; i++)
        n += job->messages[i].n_images;
    if (job->n_messages > 0)
        msgs = calloc(job->n_messages, sizeof(*msgs));
    if (n > 0)
        imgs = calloc(n, sizeof(*imgs));
    if ((job->n_messages > 0 && !msgs) || (n > 0 && !imgs)) {
        rc = vl2_err_set(err, VL2_ENOMEM, "out of memory");
        goto out_free;
    }
    for (i = 0; i < job->n_messages; i++) {
        const struct vl2_job_message *jm = &job->messages[i];

        msgs[i].role = job_role(jm->role);
        msgs[i].text = jm->text;
        msgs[i].images = imgs + k;
        msgs[i].n_images = jm->n_images;
        for (j = 0; j < jm->n_images; j++, k++) {
            const struct vl2_job_image *im = &jm->images[j];

            imgs[k].data = im->data;
            imgs[k].size = im->data_size;
            imgs[k].fd = im->fd;
            imgs[k].apply_exif = im->has_apply_exif ? im->apply_exif : e->p.apply_exif;
        }
    }
    rq.messages = msgs;
    rq.n_messages = job->n_messages;
    rq.sp = job_sampling(&job->sampling);
    rq.stops = (const char *const *) job->sampling.stop;
    rq.n_stops = job->sampling.n_stop;
    rq.max_new = job->sampling.has_max_new_tokens ? job->sampling.max_new_tokens
                                                  : e->p.max_new_tokens;
    rq.max_images = e->p.max_images;
    rq.max_image_pixels = e->p.max_image_pixels;
    rq.max_image_bytes = e->p.max_image_bytes;
    rq.fd_timeout_s = e->p.fd_timeout_s;
    rq.special_tokens_in_text = e->p.special_tokens_in_text;
    rc = vl2_prepare(&e->pm, &rq, &hooks, &r->pr, err);
    if (rc < 0)
        goto out_free;
    if (r->pr.n_images > 0) {
        r->vis = calloc(r->pr.n_images, sizeof(*r->vis));
        r->embeds = calloc(r->pr.n_images, sizeof(*r->embeds));
        if (!r->vis || !r->embeds)
            rc = vl2_err_set(err, VL2_ENOMEM, "out of memory");
    }
out_free:
    free(imgs);
    free(msgs);
    return rc;
}

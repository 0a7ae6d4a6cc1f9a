/* job.c - jobs and events crossing between the server and engines. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "job.h"

void vl2_job_free(struct vl2_job *job)
{
    size_t i, j;

    if (!job)
        return;
    for (i = 0; job->messages && i < job->n_messages; i++) {
        struct vl2_job_message *m = &job->messages[i];

        for (j = 0; m->images && j < m->n_images; j++) {
            free(m->images[j].data);
            if (m->images[j].fd >= 0)
                (void) close(m->images[j].fd);
        }
        free(m->images);
        free(m->text);
    }
    free(job->messages);
    for (i = 0; job->sampling.stop && i < job->sampling.n_stop; i++)
        free(job->sampling.stop[i]);
    free(job->sampling.stop);
    free(job->model);
    free(job);
}

void vl2_tokenize_job_free(struct vl2_tokenize_job *job)
{
    if (!job)
        return;
    free(job->text);
    free(job);
}

struct vl2_event *vl2_event_new(enum vl2_event_kind kind, uint64_t key)
{
    struct vl2_event *ev = calloc(1, sizeof(*ev));

    if (ev) {
        ev->kind = kind;
        ev->key = key;
    }
    return ev;
}

int vl2_event_set_text(struct vl2_event *ev, const void *text, size_t size)
{
    uint8_t *p = malloc(size ? size : 1);

    if (!p)
        return VL2_ENOMEM;
    if (size)
        memcpy(p, text, size);
    free(ev->text);
    ev->text = p;
    ev->text_size = size;
    return 0;
}

void vl2_event_free(struct vl2_event *ev)
{
    size_t i;

    if (!ev)
        return;
    free(ev->text);
    free(ev->top);
    free(ev->top_text);
    for (i = 0; ev->boxes && i < ev->n_boxes; i++)
        free(ev->boxes[i].label);
    free(ev->boxes);
    free(ev->ids);
    free(ev->piece_len);
    free(ev);
}

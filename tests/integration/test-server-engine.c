/* test-server-engine.c - the server library with stand-in engines attached
 * through struct vl2_engine_ops, driven by libvl2: a Generate becomes a job
 * with every field intact (images by bytes and by descriptor), events posted
 * from the engine's thread come back as responses in order, Cancel, a client
 * that leaves, Status/ListModels with engine figures, and SIGTERM with a
 * request in flight (it gets an Error CANCELED; the socket file goes).
 *
 * The stand-in engines do no inference: "fake" answers every job with a
 * fixed script of events, "hang" keeps jobs until they are cancelled. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../common/check.h"
#include "../common/util.h"
#include "engine.h"
#include "harness.h"
#include "server.h"
#include "vl2.h"

/* ---- stand-in engine -------------------------------------------------- */

struct seen_job {
    uint64_t key;
    size_t n_messages;
    int roles[4];
    char texts[4][64];
    size_t n_images;
    uint8_t img0[16];
    size_t img0_size;
    bool img0_exif;
    char img1_content[32];
    bool img1_exif;
    struct vl2_job_sampling sampling;
    char stop0[8], stop1[8];
    bool grounding, stream, logprobs;
    char model[16];
};

struct fake_engine {
    struct vl2_server *srv;
    bool hang;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t thread;
    bool quit;
    struct vl2_job *todo[32];     /* submitted, not started */
    size_t n_todo;
    struct vl2_job *held[32];     /* hang: waiting for cancel */
    size_t n_held;
    uint64_t cancel_keys[32];
    size_t n_cancel;
    /* what the test checks */
    int n_submitted;
    int n_cancelled;
    int n_freed;
    struct seen_job last;
};

static void post(struct fake_engine *e, struct vl2_event *ev)
{
    CHECK(ev != NULL);
    if (ev)
        vl2_server_post(e->srv, ev);
}

static void record(struct fake_engine *e, const struct vl2_job *job)
{
    struct seen_job *s = &e->last;
    size_t i;

    memset(s, 0, sizeof(*s));
    s->key = job->key;
    snprintf(s->model, sizeof(s->model), "%s", job->model);
    s->n_messages = job->n_messages;
    for (i = 0; i < job->n_messages && i < 4; i++) {
        s->roles[i] = job->messages[i].role;
        snprintf(s->texts[i], sizeof(s->texts[i]), "%s", job->messages[i].text);
        s->n_images += job->messages[i].n_images;
    }
    for (i = 0; i < job->n_messages; i++) {
        const struct vl2_job_message *m = &job->messages[i];

        if (m->n_images >= 1 && m->images[0].data && m->images[0].data_size <= 16) {
            memcpy(s->img0, m->images[0].data, m->images[0].data_size);
            s->img0_size = m->images[0].data_size;
            s->img0_exif = m->images[0].apply_exif;
        }
        if (m->n_images >= 2 && m->images[1].fd >= 0) {
            ssize_t n = pread(m->images[1].fd, s->img1_content, sizeof(s->img1_content) - 1, 0);

            if (n > 0)
                s->img1_content[n] = '\0';
            s->img1_exif = m->images[1].apply_exif;
        }
    }
    s->sampling = job->sampling;
    s->sampling.stop = NULL;
    if (job->sampling.n_stop >= 2) {
        snprintf(s->stop0, sizeof(s->stop0), "%s", job->sampling.stop[0]);
        snprintf(s->stop1, sizeof(s->stop1), "%s", job->sampling.stop[1]);
    }
    s->grounding = job->grounding;
    s->stream = job->stream;
    s->logprobs = job->logprobs;
}

/* The scripted answer: Accepted, Progress, "Hel", "lo", Done. */
static void run_script(struct fake_engine *e, const struct vl2_job *job)
{
    struct vl2_event *ev;

    ev = vl2_event_new(VL2_EVENT_ACCEPTED, job->key);
    if (ev)
        ev->queue_position = 0;
    post(e, ev);
    ev = vl2_event_new(VL2_EVENT_PROGRESS, job->key);
    if (ev) {
        ev->stage = VL2_STAGE_PREFILL;
        ev->fraction = 0.5f;
    }
    post(e, ev);
    ev = vl2_event_new(VL2_EVENT_TOKEN, job->key);
    if (ev) {
        CHECK(vl2_event_set_text(ev, "Hel", 3) == 0);
        ev->token_id = 11;
        ev->has_logprob = job->logprobs;
        ev->logprob = -0.25f;
    }
    post(e, ev);
    ev = vl2_event_new(VL2_EVENT_TOKEN, job->key);
    if (ev) {
        CHECK(vl2_event_set_text(ev, "lo", 2) == 0);
        ev->token_id = 12;
    }
    post(e, ev);
    ev = vl2_event_new(VL2_EVENT_DONE, job->key);
    if (ev) {
        ev->finish_reason = VL2_FINISH_EOS;
        ev->prompt_tokens = 40;
        ev->image_tokens = 30;
        ev->generated_tokens = 2;
        ev->time_to_first_token_s = 0.125;
        ev->decode_tokens_per_s = 64.0;
        if (job->grounding) {
            ev->boxes = calloc(1, sizeof(*ev->boxes));
            if (ev->boxes) {
                ev->n_boxes = 1;
                ev->boxes[0].label = strdup("cat");
                ev->boxes[0].x1 = 1.5f;
                ev->boxes[0].y1 = 2.5f;
                ev->boxes[0].x2 = 300.0f;
                ev->boxes[0].y2 = 200.0f;
                ev->boxes[0].image_index = 1;
            }
        }
    }
    post(e, ev);
}

static void *engine_main(void *arg)
{
    struct fake_engine *e = arg;

    pthread_mutex_lock(&e->mu);
    while (!e->quit) {
        size_t i, j;

        if (e->n_todo == 0 && e->n_cancel == 0) {
            pthread_cond_wait(&e->cv, &e->mu);
            continue;
        }
        for (i = 0; i < e->n_todo; i++) {
            struct vl2_job *job = e->todo[i];
            struct vl2_event *ev;

            if (e->hang) {
                ev = vl2_event_new(VL2_EVENT_ACCEPTED, job->key);
                if (ev)
                    ev->queue_position = 3;
                post(e, ev);
                e->held[e->n_held++] = job;
            } else {
                run_script(e, job);
                vl2_job_free(job);
            }
        }
        e->n_todo = 0;
        for (i = 0; i < e->n_cancel; i++)
            for (j = 0; j < e->n_held; j++)
                if (e->held[j]->key == e->cancel_keys[i]) {
                    struct vl2_event *ev = vl2_event_new(VL2_EVENT_ERROR, e->held[j]->key);

                    if (ev) {
                        ev->code = VL2_ECANCELED;
                        snprintf(ev->message, sizeof(ev->message), "engine: cancelled");
                    }
                    post(e, ev);
                    vl2_job_free(e->held[j]);
                    e->held[j] = e->held[--e->n_held];
                    break;
                }
        e->n_cancel = 0;
    }
    pthread_mutex_unlock(&e->mu);
    return NULL;
}

static int fake_submit(void *engine, struct vl2_job *job, struct vl2_err *err)
{
    struct fake_engine *e = engine;

    pthread_mutex_lock(&e->mu);
    if (e->n_todo >= 32 || e->n_held >= 31) {
        pthread_mutex_unlock(&e->mu);
        return vl2_err_set(err, VL2_EBUSY, "fake: full");
    }
    record(e, job);
    e->n_submitted++;
    e->todo[e->n_todo++] = job;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
    return 0;
}

static void fake_cancel(void *engine, uint64_t key)
{
    struct fake_engine *e = engine;

    pthread_mutex_lock(&e->mu);
    e->n_cancelled++;
    if (e->n_cancel < 32)
        e->cancel_keys[e->n_cancel++] = key;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
}

static void fake_stats(void *engine, struct vl2_engine_stats *ret)
{
    struct fake_engine *e = engine;

    pthread_mutex_lock(&e->mu);
    ret->memory_bytes = e->hang ? 2000000 : 1000000;
    ret->queue_length = (uint32_t) e->n_held;
    ret->active_sequences = e->hang ? 0 : 1;
    ret->tokens_per_s = 10.0;
    ret->backend = "fake";
    pthread_mutex_unlock(&e->mu);
}

static void fake_free(void *engine)
{
    struct fake_engine *e = engine;
    size_t i;

    pthread_mutex_lock(&e->mu);
    e->quit = true;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
    pthread_join(e->thread, NULL);
    for (i = 0; i < e->n_todo; i++)
        vl2_job_free(e->todo[i]);
    for (i = 0; i < e->n_held; i++)
        vl2_job_free(e->held[i]);
    e->n_todo = e->n_held = 0;
    e->n_freed++;
}

static const struct vl2_engine_ops fake_ops = {
    .submit = fake_submit,
    .cancel = fake_cancel,
    .stats = fake_stats,
    .free = fake_free,
};

static void fake_init(struct fake_engine *e, struct vl2_server *srv, bool hang)
{
    memset(e, 0, sizeof(*e));
    e->srv = srv;
    e->hang = hang;
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->cv, NULL);
    pthread_create(&e->thread, NULL, engine_main, e);
}

static int engine_count(struct fake_engine *e, const int *counter)
{
    int v;

    pthread_mutex_lock(&e->mu);
    v = *counter;
    pthread_mutex_unlock(&e->mu);
    return v;
}

/* ---- the client side -------------------------------------------------- */

#define MAX_SEEN 16

struct seen {
    int kinds[MAX_SEEN];
    uint64_t ids[MAX_SEEN];
    size_t n;
    char text[64];
    size_t n_tokens;
    Vl2__Done done;        /* scalars of the last Done */
    char done_text[64];
    bool has_done_text;
    size_t n_boxes;
    char box_label[16];
    float box[4];
    uint32_t box_image;
    float progress;
    Vl2__Stage stage;
    uint32_t queue_position;
    int error_code;
    char error_msg[160];
    float logprob;
    bool has_logprob;
};

static int collect(const Vl2__Response *r, void *ud)
{
    struct seen *s = ud;

    if (s->n < MAX_SEEN) {
        s->kinds[s->n] = r->body_case;
        s->ids[s->n] = r->id;
        s->n++;
    }
    switch (r->body_case) {
    case VL2__RESPONSE__BODY_ACCEPTED:
        s->queue_position = r->accepted->queue_position;
        break;
    case VL2__RESPONSE__BODY_PROGRESS:
        s->stage = r->progress->stage;
        s->progress = r->progress->fraction;
        break;
    case VL2__RESPONSE__BODY_TOKEN:
        if (strlen(s->text) + r->token->text.len < sizeof(s->text))
            strncat(s->text, (const char *) r->token->text.data, r->token->text.len);
        s->n_tokens++;
        if (r->token->has_logprob) {
            s->has_logprob = true;
            s->logprob = r->token->logprob;
        }
        break;
    case VL2__RESPONSE__BODY_DONE:
        s->done = *r->done;
        s->has_done_text = r->done->has_text;
        if (r->done->has_text && r->done->text.len < sizeof(s->done_text)) {
            memcpy(s->done_text, r->done->text.data, r->done->text.len);
            s->done_text[r->done->text.len] = '\0';
        }
        s->n_boxes = r->done->n_boxes;
        if (r->done->n_boxes == 1) {
            snprintf(s->box_label, sizeof(s->box_label), "%s", r->done->boxes[0]->label);
            s->box[0] = r->done->boxes[0]->x1;
            s->box[1] = r->done->boxes[0]->y1;
            s->box[2] = r->done->boxes[0]->x2;
            s->box[3] = r->done->boxes[0]->y2;
            s->box_image = r->done->boxes[0]->image_index;
        }
        break;
    case VL2__RESPONSE__BODY_ERROR:
        s->error_code = r->error->code;
        snprintf(s->error_msg, sizeof(s->error_msg), "%s", r->error->message);
        break;
    default:
        break;
    }
    return 0;
}

static struct vl2_server *srv;
static struct fake_engine fake, hang;
static char sock_path[256];

static struct vl2_client *client(void)
{
    struct vl2_client_opts o = vl2_client_default_opts();
    struct vl2_client *c = NULL;
    struct vl2_err err = { 0 };

    o.socket_path = sock_path;
    o.timeout_ms = 5000;
    CHECK_MSG(vl2_client_open(&o, &c, &err) == 0, "%s", err.msg);
    return c;
}

/* A Generate with two messages, two images (bytes, descriptor) and every
 * sampling field; the caller owns nothing (static storage). */
struct gen_req {
    Vl2__Request req;
    Vl2__Generate gen;
    Vl2__Message msgs[2];
    Vl2__Message *msg_ptrs[2];
    Vl2__Image imgs[2];
    Vl2__Image *img_ptrs[2];
    Vl2__Sampling samp;
    char *stops[2];
};

static void make_generate(struct gen_req *g, const char *model, bool stream, uint32_t fd_index)
{
    static char s0[] = "\n\n", s1[] = "END";

    vl2__request__init(&g->req);
    vl2__generate__init(&g->gen);
    vl2__message__init(&g->msgs[0]);
    vl2__message__init(&g->msgs[1]);
    vl2__image__init(&g->imgs[0]);
    vl2__image__init(&g->imgs[1]);
    vl2__sampling__init(&g->samp);
    g->msgs[0].has_role = 1;
    g->msgs[0].role = VL2__ROLE__ROLE_SYSTEM;
    g->msgs[0].text = (char *) "be brief";
    g->msgs[1].has_role = 1;
    g->msgs[1].role = VL2__ROLE__ROLE_USER;
    g->msgs[1].text = (char *) "<image><image> what is this?";
    g->imgs[0].source_case = VL2__IMAGE__SOURCE_DATA;
    g->imgs[0].data.data = (uint8_t *) "\xff\xd8\xff\x01\x02";
    g->imgs[0].data.len = 5;
    g->imgs[1].source_case = VL2__IMAGE__SOURCE_FD_INDEX;
    g->imgs[1].fd_index = fd_index;
    g->imgs[1].has_apply_exif = 1;
    g->imgs[1].apply_exif = 0;
    g->img_ptrs[0] = &g->imgs[0];
    g->img_ptrs[1] = &g->imgs[1];
    g->msgs[1].n_images = 2;
    g->msgs[1].images = g->img_ptrs;
    g->msg_ptrs[0] = &g->msgs[0];
    g->msg_ptrs[1] = &g->msgs[1];
    g->gen.model = (char *) model;
    g->gen.n_messages = 2;
    g->gen.messages = g->msg_ptrs;
    g->samp.has_temperature = 1;
    g->samp.temperature = 0.5f;
    g->samp.has_top_k = 1;
    g->samp.top_k = 7;
    g->samp.has_seed = 1;
    g->samp.seed = 42;
    g->samp.has_max_new_tokens = 1;
    g->samp.max_new_tokens = 9;
    g->stops[0] = s0;
    g->stops[1] = s1;
    g->samp.n_stop = 2;
    g->samp.stop = g->stops;
    g->gen.sampling = &g->samp;
    g->gen.has_grounding = 1;
    g->gen.grounding = 1;
    g->gen.has_stream = 1;
    g->gen.stream = stream;
    g->gen.has_logprobs = 1;
    g->gen.logprobs = 1;
    g->req.body_case = VL2__REQUEST__BODY_GENERATE;
    g->req.generate = &g->gen;
}

static int image_fd(void)
{
    char path[] = "/tmp/vl2-it-img-XXXXXX";
    int fd = mkstemp(path);

    if (fd < 0)
        return -1;
    unlink(path);
    CHECK(write(fd, "pixels!", 7) == 7);
    return fd;
}

static void test_generate_stream(void)
{
    struct vl2_client *c = client();
    struct vl2_err err = { 0 };
    struct gen_req g;
    struct seen s = { 0 };
    int fd = image_fd(), r;
    static const int expect[] = {
        VL2__RESPONSE__BODY_ACCEPTED, VL2__RESPONSE__BODY_PROGRESS, VL2__RESPONSE__BODY_TOKEN,
        VL2__RESPONSE__BODY_TOKEN, VL2__RESPONSE__BODY_DONE,
    };
    size_t i;

    if (!c)
        return;
    make_generate(&g, "fake", true, 0);
    r = vl2_client_call(c, &g.req, &fd, 1, collect, &s, &err);
    CHECK_MSG(r == 0, "%s", err.msg);
    CHECK_EQ_INT(s.n, 5);
    for (i = 0; i < 5 && i < s.n; i++) {
        CHECK_EQ_INT(s.kinds[i], expect[i]);
        CHECK_EQ_INT(s.ids[i], g.req.id);
    }
    CHECK(!strcmp(s.text, "Hello"));
    CHECK_EQ_INT(s.stage, VL2__STAGE__STAGE_PREFILL);
    CHECK(s.progress == 0.5f);
    CHECK(s.has_logprob && s.logprob == -0.25f);
    CHECK_EQ_INT(s.done.finish_reason, VL2__FINISH_REASON__FINISH_EOS);
    CHECK_EQ_INT(s.done.prompt_tokens, 40);
    CHECK_EQ_INT(s.done.image_tokens, 30);
    CHECK_EQ_INT(s.done.generated_tokens, 2);
    CHECK(s.done.time_to_first_token_s == 0.125 && s.done.decode_tokens_per_s == 64.0);
    CHECK(!s.has_done_text);
    CHECK_EQ_INT(s.n_boxes, 1);
    CHECK(!strcmp(s.box_label, "cat"));
    CHECK(s.box[0] == 1.5f && s.box[1] == 2.5f && s.box[2] == 300.0f && s.box[3] == 200.0f);
    CHECK_EQ_INT(s.box_image, 1);

    /* what the engine received */
    pthread_mutex_lock(&fake.mu);
    CHECK(!strcmp(fake.last.model, "fake"));
    CHECK_EQ_INT(fake.last.n_messages, 2);
    CHECK_EQ_INT(fake.last.roles[0], VL2_JOB_ROLE_SYSTEM);
    CHECK_EQ_INT(fake.last.roles[1], VL2_JOB_ROLE_USER);
    CHECK(!strcmp(fake.last.texts[0], "be brief"));
    CHECK(!strcmp(fake.last.texts[1], "<image><image> what is this?"));
    CHECK_EQ_INT(fake.last.n_images, 2);
    CHECK(fake.last.img0_size == 5 && !memcmp(fake.last.img0, "\xff\xd8\xff\x01\x02", 5));
    CHECK(fake.last.img0_exif);         /* the default */
    CHECK(!strcmp(fake.last.img1_content, "pixels!"));
    CHECK(!fake.last.img1_exif);
    CHECK(fake.last.sampling.has_temperature && fake.last.sampling.temperature == 0.5f);
    CHECK(fake.last.sampling.has_top_k && fake.last.sampling.top_k == 7);
    CHECK(fake.last.sampling.has_seed && fake.last.sampling.seed == 42);
    CHECK(fake.last.sampling.has_max_new_tokens && fake.last.sampling.max_new_tokens == 9);
    CHECK(!fake.last.sampling.has_top_p && !fake.last.sampling.has_repetition_penalty);
    CHECK_EQ_INT(fake.last.sampling.n_stop, 2);
    CHECK(!strcmp(fake.last.stop0, "\n\n") && !strcmp(fake.last.stop1, "END"));
    CHECK(fake.last.grounding && fake.last.stream && fake.last.logprobs);
    pthread_mutex_unlock(&fake.mu);
    close(fd);
    vl2_client_close(c);
}

static void test_generate_no_stream(void)
{
    struct vl2_client *c = client();
    struct vl2_err err = { 0 };
    struct gen_req g;
    struct seen s = { 0 };
    int fd = image_fd(), r;

    if (!c)
        return;
    make_generate(&g, "", false, 0);     /* "": the first model */
    r = vl2_client_call(c, &g.req, &fd, 1, collect, &s, &err);
    CHECK_MSG(r == 0, "%s", err.msg);
    CHECK_EQ_INT(s.n, 3);                /* Accepted, Progress, Done: no Token */
    CHECK_EQ_INT(s.n_tokens, 0);
    CHECK(s.has_done_text && !strcmp(s.done_text, "Hello"));
    close(fd);
    vl2_client_close(c);
}

static void test_generate_refused(void)
{
    struct vl2_client *c = client();
    struct vl2_err err = { 0 };
    struct gen_req g;
    struct seen s = { 0 };
    int fd = image_fd(), r, before = engine_count(&fake, &fake.n_submitted);

    if (!c)
        return;
    /* descriptor 3 of 1 */
    make_generate(&g, "fake", true, 3);
    r = vl2_client_call(c, &g.req, &fd, 1, collect, &s, &err);
    CHECK_EQ_INT(r, VL2_EINVAL);
    CHECK_MSG(strstr(err.msg, "descriptor 3, but 1 came"), "%s", err.msg);
    /* no descriptor at all */
    make_generate(&g, "fake", true, 0);
    r = vl2_client_call(c, &g.req, NULL, 0, collect, &s, &err);
    CHECK_EQ_INT(r, VL2_EINVAL);
    /* no such model */
    make_generate(&g, "nope", true, 0);
    r = vl2_client_call(c, &g.req, &fd, 1, collect, &s, &err);
    CHECK_EQ_INT(r, VL2_ENOTFOUND);
    CHECK(strstr(err.msg, "'nope' is not loaded"));
    /* a message without a role */
    make_generate(&g, "fake", true, 0);
    g.msgs[0].has_role = 0;
    r = vl2_client_call(c, &g.req, &fd, 1, collect, &s, &err);
    CHECK_EQ_INT(r, VL2_EINVAL);
    CHECK(strstr(err.msg, "no valid role"));
    CHECK_EQ_INT(engine_count(&fake, &fake.n_submitted), before);
    close(fd);
    vl2_client_close(c);
}

/* VL2_ENGINE_MAX_IMAGES images reach the engine, one more is refused before
 * it: the same limit vl2d.conf's max_images may go up to (engine-conf). */
static void test_generate_max_images(void)
{
    static Vl2__Image imgs[VL2_ENGINE_MAX_IMAGES + 1];
    static Vl2__Image *ptrs[VL2_ENGINE_MAX_IMAGES + 1];
    struct vl2_client *c = client();
    struct vl2_err err = { 0 };
    struct gen_req g;
    struct seen s = { 0 };
    int r, i, before;

    if (!c)
        return;
    for (i = 0; i <= VL2_ENGINE_MAX_IMAGES; i++) {
        vl2__image__init(&imgs[i]);
        imgs[i].source_case = VL2__IMAGE__SOURCE_DATA;
        imgs[i].data.data = (uint8_t *) "\xff\xd8\xff\x01\x02";
        imgs[i].data.len = 5;
        ptrs[i] = &imgs[i];
    }
    make_generate(&g, "fake", false, 0);
    g.msgs[1].images = ptrs;
    g.msgs[1].n_images = VL2_ENGINE_MAX_IMAGES;
    before = engine_count(&fake, &fake.n_submitted);
    r = vl2_client_call(c, &g.req, NULL, 0, collect, &s, &err);
    CHECK_MSG(r == 0, "%d images: %s", VL2_ENGINE_MAX_IMAGES, err.msg);
    CHECK_EQ_INT(engine_count(&fake, &fake.n_submitted), before + 1);
    pthread_mutex_lock(&fake.mu);
    CHECK_EQ_INT(fake.last.n_images, VL2_ENGINE_MAX_IMAGES);
    pthread_mutex_unlock(&fake.mu);
    memset(&s, 0, sizeof(s));
    g.msgs[1].n_images = VL2_ENGINE_MAX_IMAGES + 1;
    r = vl2_client_call(c, &g.req, NULL, 0, collect, &s, &err);
    CHECK_EQ_INT(r, VL2_ELIMIT);
    CHECK_EQ_INT(engine_count(&fake, &fake.n_submitted), before + 1);
    vl2_client_close(c);
}

/* Tokenize with an engine that offers no tokenizer: an Error, never a
 * silent drop, and the connection goes on. */
static void test_tokenize_unimplemented(void)
{
    Vl2__Request req = VL2__REQUEST__INIT;
    Vl2__Tokenize tk = VL2__TOKENIZE__INIT;
    struct vl2_client *c = client();
    struct vl2_err err = { 0 };
    struct seen s = { 0 };
    int r;

    if (!c)
        return;
    tk.model = (char *) "fake";
    tk.text = (char *) "hello";
    req.body_case = VL2__REQUEST__BODY_TOKENIZE;
    req.tokenize = &tk;
    r = vl2_client_call(c, &req, NULL, 0, collect, &s, &err);
    CHECK_EQ_INT(r, VL2_EUNIMPLEMENTED);
    CHECK_MSG(strstr(err.msg, "tokenize"), "%s", err.msg);
    tk.model = (char *) "nope";
    r = vl2_client_call(c, &req, NULL, 0, collect, &s, &err);
    CHECK_EQ_INT(r, VL2_ENOTFOUND);
    CHECK_MSG(strstr(err.msg, "'nope' is not loaded"), "%s", err.msg);
    vl2_client_close(c);
}

/* Two requests in flight on one connection, answers matched by id. */
static void test_two_in_flight(void)
{
    struct vl2_client *c = client();
    struct vl2_err err = { 0 };
    struct gen_req g1, g2;
    struct seen s = { 0 };
    uint64_t id1 = 0, id2 = 0;
    int fd = image_fd(), finals = 0, r, guard = 0;
    size_t i, n1 = 0, n2 = 0;

    if (!c)
        return;
    make_generate(&g1, "fake", true, 0);
    make_generate(&g2, "fake", true, 0);
    CHECK(vl2_client_send(c, &g1.req, &fd, 1, &id1, &err) == 0);
    CHECK(vl2_client_send(c, &g2.req, &fd, 1, &id2, &err) == 0);
    CHECK(id1 != id2);
    while (finals < 2 && guard++ < 20) {
        r = vl2_client_recv(c, collect, &s, &err);
        CHECK_MSG(r >= 0, "%s", err.msg);
        if (r < 0)
            break;
        finals += r;
    }
    CHECK_EQ_INT(finals, 2);
    for (i = 0; i < s.n; i++) {
        n1 += s.ids[i] == id1;
        n2 += s.ids[i] == id2;
    }
    CHECK_EQ_INT(n1, 5);
    CHECK_EQ_INT(n2, 5);
    CHECK_EQ_INT(strlen(s.text), 10);   /* two "Hel" + "lo", interleaved in any order */
    close(fd);
    vl2_client_close(c);
}

static void test_cancel(void)
{
    struct vl2_client *c = client();
    struct vl2_err err = { 0 };
    struct gen_req g;
    struct seen s = { 0 }, s2 = { 0 };
    Vl2__Request req = VL2__REQUEST__INIT;
    Vl2__Cancel cn = VL2__CANCEL__INIT;
    uint64_t gid = 0, cid = 0;
    int fd = image_fd(), r;
    int before = engine_count(&hang, &hang.n_cancelled);

    if (!c)
        return;
    make_generate(&g, "hang", true, 0);
    CHECK(vl2_client_send(c, &g.req, &fd, 1, &gid, &err) == 0);
    CHECK_EQ_INT(vl2_client_recv(c, collect, &s, &err), 0);     /* Accepted */
    CHECK(s.n == 1 && s.kinds[0] == VL2__RESPONSE__BODY_ACCEPTED && s.queue_position == 3);
    cn.has_target_id = 1;
    cn.target_id = gid;
    req.body_case = VL2__REQUEST__BODY_CANCEL;
    req.cancel = &cn;
    CHECK(vl2_client_send(c, &req, NULL, 0, &cid, &err) == 0);
    r = vl2_client_wait(c, gid, collect, &s2, &err);
    CHECK_EQ_INT(r, VL2_ECANCELED);
    CHECK_MSG(strstr(err.msg, "cancelled"), "%s", err.msg);
    /* the Ack for the Cancel came first (the loop answers it at once) */
    CHECK(s2.n == 2 && s2.kinds[0] == VL2__RESPONSE__BODY_ACK && s2.ids[0] == cid &&
          s2.kinds[1] == VL2__RESPONSE__BODY_ERROR && s2.ids[1] == gid);
    CHECK_EQ_INT(engine_count(&hang, &hang.n_cancelled), before + 1);
    close(fd);
    vl2_client_close(c);
}

/* A client that leaves with a request in flight: the engine is told. */
static void test_client_leaves(void)
{
    struct vl2_client *c = client();
    struct vl2_err err = { 0 };
    struct gen_req g;
    struct seen s = { 0 };
    uint64_t gid = 0;
    int fd = image_fd(), i;
    int before = engine_count(&hang, &hang.n_cancelled);

    if (!c)
        return;
    make_generate(&g, "hang", true, 0);
    CHECK(vl2_client_send(c, &g.req, &fd, 1, &gid, &err) == 0);
    CHECK_EQ_INT(vl2_client_recv(c, collect, &s, &err), 0);
    vl2_client_close(c);
    for (i = 0; i < 200 && engine_count(&hang, &hang.n_cancelled) == before; i++)
        test_sleep_ms(10);
    CHECK_EQ_INT(engine_count(&hang, &hang.n_cancelled), before + 1);
    close(fd);
}

struct status_seen {
    size_t n_models;
    char names[2][16];
    char backends[2][16];
    uint64_t memory[2];
    uint32_t queue;
    uint32_t active;
    double tps;
};

static int on_status(const Vl2__Response *r, void *ud)
{
    struct status_seen *s = ud;
    Vl2__ModelInfo **models = NULL;
    size_t i, n = 0;

    if (r->body_case == VL2__RESPONSE__BODY_STATUS) {
        models = r->status->models;
        n = r->status->n_models;
        s->queue = r->status->queue_length;
        s->active = r->status->active_sequences;
        s->tps = r->status->tokens_per_s;
    } else if (r->body_case == VL2__RESPONSE__BODY_MODELS) {
        models = r->models->models;
        n = r->models->n_models;
    }
    s->n_models = n;
    for (i = 0; i < n && i < 2; i++) {
        snprintf(s->names[i], sizeof(s->names[i]), "%s", models[i]->name);
        snprintf(s->backends[i], sizeof(s->backends[i]), "%s", models[i]->backend);
        s->memory[i] = models[i]->memory_bytes;
    }
    return 0;
}

static void test_status_with_models(void)
{
    struct vl2_client *c = client();
    struct vl2_err err = { 0 };
    struct status_seen s = { 0 };
    Vl2__Request req = VL2__REQUEST__INIT;
    Vl2__Status st = VL2__STATUS__INIT;
    Vl2__ListModels lm = VL2__LIST_MODELS__INIT;

    if (!c)
        return;
    req.body_case = VL2__REQUEST__BODY_STATUS;
    req.status = &st;
    CHECK(vl2_client_call(c, &req, NULL, 0, on_status, &s, &err) == 0);
    CHECK_EQ_INT(s.n_models, 2);
    CHECK(!strcmp(s.names[0], "fake") && !strcmp(s.names[1], "hang"));
    CHECK(!strcmp(s.backends[0], "fake"));
    CHECK(s.memory[0] == 1000000 && s.memory[1] == 2000000);
    CHECK_EQ_INT(s.active, 1);
    CHECK(s.tps == 20.0);
    memset(&s, 0, sizeof(s));
    req.body_case = VL2__REQUEST__BODY_LIST_MODELS;
    req.list_models = &lm;
    CHECK(vl2_client_call(c, &req, NULL, 0, on_status, &s, &err) == 0);
    CHECK_EQ_INT(s.n_models, 2);
    vl2_client_close(c);
}

static void *serve(void *arg)
{
    struct vl2_err err = { 0 };
    int *ret = arg;

    *ret = vl2_server_run(srv, &err);
    return NULL;
}

int main(void)
{
    struct vl2_server_opts o = vl2_server_default_opts();
    struct vl2_err err = { 0 };
    pthread_t loop_thread;
    int run_ret = -1;
    char *dir = harness_tmpdir();
    struct stat st;

    signal(SIGPIPE, SIG_IGN);
    if (!dir)
        return 1;
    snprintf(sock_path, sizeof(sock_path), "%s/engine.sock", dir);
    o.socket_path = sock_path;
    o.socket_activation = false;
    o.notify = false;
    if (vl2_server_new(&o, &srv, &err) < 0) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    fake_init(&fake, srv, false);
    fake_init(&hang, srv, true);
    CHECK(vl2_server_attach_model(srv, "fake", "/models/fake", &fake_ops, &fake, &err) == 0);
    CHECK(vl2_server_attach_model(srv, "hang", "/models/hang", &fake_ops, &hang, &err) == 0);
    CHECK_EQ_INT(vl2_server_attach_model(srv, "fake", "", &fake_ops, &fake, &err), VL2_EINVAL);
    pthread_create(&loop_thread, NULL, serve, &run_ret);

    RUN(test_generate_stream);
    RUN(test_generate_no_stream);
    RUN(test_generate_refused);
    RUN(test_generate_max_images);
    RUN(test_tokenize_unimplemented);
    RUN(test_two_in_flight);
    RUN(test_cancel);
    RUN(test_client_leaves);
    RUN(test_status_with_models);

    /* SIGTERM with a request in flight: it gets an Error CANCELED */
    {
        struct vl2_client *c = client();
        struct gen_req g;
        struct seen s = { 0 };
        uint64_t gid = 0;
        int fd = image_fd(), r;

        if (c) {
            make_generate(&g, "hang", true, 0);
            CHECK(vl2_client_send(c, &g.req, &fd, 1, &gid, &err) == 0);
            CHECK_EQ_INT(vl2_client_recv(c, collect, &s, &err), 0);   /* Accepted */
            kill(getpid(), SIGTERM);
            r = vl2_client_wait(c, gid, collect, &s, &err);
            CHECK_EQ_INT(r, VL2_ECANCELED);
            CHECK_MSG(strstr(err.msg, "shutting down"), "%s", err.msg);
            /* and then the daemon closes the connection */
            CHECK(vl2_client_recv(c, NULL, NULL, &err) == VL2_EIO);
            vl2_client_close(c);
        }
        close(fd);
        fprintf(stderr, "%s shutdown with a request in flight\n", check_failures ? "FAIL" : "ok  ");
    }
    pthread_join(loop_thread, NULL);
    CHECK_EQ_INT(run_ret, 0);
    CHECK_MSG(stat(sock_path, &st) < 0 && errno == ENOENT, "socket file left behind");
    vl2_server_free(srv);
    CHECK_EQ_INT(fake.n_freed, 1);
    CHECK_EQ_INT(hang.n_freed, 1);
    pthread_mutex_destroy(&fake.mu);
    pthread_mutex_destroy(&hang.mu);
    pthread_cond_destroy(&fake.cv);
    pthread_cond_destroy(&hang.cv);
    harness_rmdir(dir);
    if (check_failures)
        fprintf(stderr, "%d check(s) failed\n", check_failures);
    return check_failures ? 1 : 0;
}

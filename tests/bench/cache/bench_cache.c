/* bench_cache.c - issue 16's figures: a 5-turn `vl2 chat`-style
 * conversation about one image (each turn resends the whole conversation
 * with the earlier answers), then the same image asked again with a new
 * question in a new conversation; then 4 requests that share a long system
 * prompt (about 800 tokens) with different questions; time to first token
 * of each request with
 * the caches on (image_cache 512M, prefix_cache) and off, on the engine
 * directly (no socket).  Prints figures; asserts nothing but that the
 * answers with and without the caches are the same.
 *
 * usage: bench_cache --model DIR --image FILE [--plugin-dir DIR] [--threads N]
 *                    [--max-new N] */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"

#define TURNS 5
#define SHARED 4

static const char *questions[TURNS] = {
    "Describe this image.",
    "What colours stand out?",
    "Is there any text in it?",
    "What would you call it?",
    "Summarise our talk in one line.",
};
static const char *again_question = "How many objects can you count in it?";

struct answer {
    uint64_t key;
    bool done, failed;
    char text[8192];
    size_t len;
    double ttft;
    uint32_t prompt_tokens, cached_tokens, images_from_cache;
    bool vision_ran;
};

struct sink {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct answer *a;
};

static void on_event(void *ud, struct vl2_event *ev)
{
    struct sink *s = ud;

    pthread_mutex_lock(&s->mu);
    if (s->a && ev->key == s->a->key) {
        struct answer *a = s->a;

        if (ev->kind == VL2_EVENT_TOKEN && a->len + ev->text_size < sizeof(a->text)) {
            memcpy(a->text + a->len, ev->text, ev->text_size);
            a->len += ev->text_size;
            a->text[a->len] = '\0';
        } else if (ev->kind == VL2_EVENT_DONE) {
            a->done = true;
            a->ttft = ev->time_to_first_token_s;
            a->prompt_tokens = ev->prompt_tokens;
            a->cached_tokens = ev->cached_tokens;
            a->images_from_cache = ev->images_from_cache;
            a->vision_ran = ev->vision_ran;
        } else if (ev->kind == VL2_EVENT_ERROR) {
            a->done = a->failed = true;
            fprintf(stderr, "bench_cache: %s\n", ev->message);
        }
        pthread_cond_broadcast(&s->cv);
    }
    pthread_mutex_unlock(&s->mu);
    vl2_event_free(ev);
}

static const uint8_t *image;
static size_t image_size;
static uint32_t max_new = 16;
static uint64_t next_key = 1;

/* The conversation of turn @turn (0-based) with the answers so far; @first
 * is the first question. */
static struct vl2_job *chat_job(int turn, const char *first, char answers[][8192])
{
    struct vl2_job *job = calloc(1, sizeof(*job));
    size_t n = (size_t) (2 * turn + 1), i;

    job->key = next_key++;
    job->owner = 1;
    job->model = strdup("tiny");
    job->messages = calloc(n, sizeof(*job->messages));
    job->n_messages = n;
    for (i = 0; i < n; i++) {
        struct vl2_job_message *m = &job->messages[i];

        if (i % 2) {
            m->role = VL2_JOB_ROLE_ASSISTANT;
            m->text = strdup(answers[i / 2]);
            continue;
        }
        m->role = VL2_JOB_ROLE_USER;
        if (i == 0) {
            char t[256];

            snprintf(t, sizeof(t), "<image>\n%s", first);
            m->text = strdup(t);
            m->images = calloc(1, sizeof(*m->images));
            m->n_images = 1;
            m->images[0].fd = -1;
            m->images[0].data = malloc(image_size);
            memcpy(m->images[0].data, image, image_size);
            m->images[0].data_size = image_size;
        } else {
            m->text = strdup(questions[i / 2]);
        }
    }
    job->sampling.has_max_new_tokens = true;
    job->sampling.max_new_tokens = max_new;
    job->sampling.has_temperature = true;
    job->sampling.temperature = 0;
    job->stream = true;
    return job;
}

static char *system_prompt;

/* A text-only request: the shared system prompt and question @k. */
static struct vl2_job *shared_job(int k)
{
    struct vl2_job *job = calloc(1, sizeof(*job));
    char q[128];

    snprintf(q, sizeof(q), "Question %d: which rule matters most for case %d?", k, 7 * k + 3);
    job->key = next_key++;
    job->owner = 2;
    job->model = strdup("tiny");
    job->messages = calloc(2, sizeof(*job->messages));
    job->n_messages = 2;
    job->messages[0].role = VL2_JOB_ROLE_SYSTEM;
    job->messages[0].text = strdup(system_prompt);
    job->messages[1].role = VL2_JOB_ROLE_USER;
    job->messages[1].text = strdup(q);
    job->sampling.has_max_new_tokens = true;
    job->sampling.max_new_tokens = max_new;
    job->sampling.has_temperature = true;
    job->sampling.temperature = 0;
    job->stream = true;
    return job;
}

static int ask(struct vl2_engine *e, struct sink *s, struct vl2_job *job, struct answer *a)
{
    struct vl2_err err = { 0 };

    memset(a, 0, sizeof(*a));
    a->key = job->key;
    pthread_mutex_lock(&s->mu);
    s->a = a;
    pthread_mutex_unlock(&s->mu);
    if (vl2_engine_ops()->submit(e, job, &err) < 0) {
        fprintf(stderr, "bench_cache: submit: %s\n", err.msg);
        vl2_job_free(job);
        return -1;
    }
    pthread_mutex_lock(&s->mu);
    while (!a->done)
        pthread_cond_wait(&s->cv, &s->mu);
    s->a = NULL;
    pthread_mutex_unlock(&s->mu);
    return a->failed ? -1 : 0;
}

/* One session: TURNS turns, the image again, SHARED requests with the shared
 * system prompt.  @res gets TURNS + 1 + SHARED answers. */
static int session(const struct vl2_engine_params *p, const char *dir, struct answer *res)
{
    static char answers[TURNS][8192];
    struct vl2_engine_spec spec = { .name = "tiny", .dir = dir, .load_key = 1u << 30 };
    struct vl2_err err = { 0 };
    struct vl2_engine *e;
    struct sink s;
    int t, rc = 0;

    pthread_mutex_init(&s.mu, NULL);
    pthread_cond_init(&s.cv, NULL);
    s.a = NULL;
    spec.post = on_event;
    spec.post_ud = &s;
    if (vl2_engine_new(p, &spec, &e, &err) < 0 || vl2_engine_wait_loaded(e, &err) < 0) {
        fprintf(stderr, "bench_cache: %s\n", err.msg);
        return -1;
    }
    for (t = 0; t < TURNS && rc == 0; t++) {
        rc = ask(e, &s, chat_job(t, questions[0], answers), &res[t]);
        snprintf(answers[t], sizeof(answers[t]), "%s", res[t].text);
    }
    if (rc == 0)
        rc = ask(e, &s, chat_job(0, again_question, answers), &res[TURNS]);
    for (t = 0; t < SHARED && rc == 0; t++)
        rc = ask(e, &s, shared_job(t), &res[TURNS + 1 + t]);
    vl2_engine_ops()->free(e);
    return rc;
}

static char *slurp(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    char *buf;
    long n;

    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fseek(f, 0, SEEK_SET);
    buf = malloc((size_t) n + 1);
    if (buf && fread(buf, 1, (size_t) n, f) != (size_t) n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    *size = (size_t) n;
    return buf;
}

int main(int argc, char **argv)
{
    struct vl2_engine_params p = vl2_engine_default_params();
    const char *model = NULL, *image_path = NULL;
    static struct answer on[TURNS + 1 + SHARED], off[TURNS + 1 + SHARED];
    size_t sp_len = 0;
    int i, threads = 2, same = 1;

    for (i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--model"))
            model = argv[i + 1];
        else if (!strcmp(argv[i], "--image"))
            image_path = argv[i + 1];
        else if (!strcmp(argv[i], "--plugin-dir"))
            p.plugin_dir = argv[i + 1];
        else if (!strcmp(argv[i], "--threads"))
            threads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--max-new"))
            max_new = (uint32_t) atoi(argv[i + 1]);
    }
    if (!model || !image_path || !(image = (uint8_t *) slurp(image_path, &image_size))) {
        fprintf(stderr, "usage: bench_cache --model DIR --image FILE [--plugin-dir DIR] "
                "[--threads N] [--max-new N]\n");
        return 2;
    }
    /* about 800 tokens of rules */
    system_prompt = malloc(64 * 1024);
    for (i = 0; i < 64; i++)
        sp_len += (size_t) snprintf(system_prompt + sp_len, 64 * 1024 - sp_len,
                                    "Rule %d: answer plainly and cite case %d. ", i, i * 3 + 1);
    p.n_threads = threads;
    p.max_sequences = 1;
    p.image_cache = 0;
    p.prefix_cache = false;
    if (session(&p, model, off) < 0)
        return 1;
    p.image_cache = (size_t) 512 << 20;
    p.prefix_cache = true;
    if (session(&p, model, on) < 0)
        return 1;
    printf("bench_cache: %s, %d threads, %u new tokens a turn\n", model, threads, max_new);
    printf("%-10s %8s %10s %10s %8s %7s %7s %8s\n", "request", "prompt", "ttft off", "ttft on",
           "on/first", "cached", "images", "vision");
    printf("(on/first: ttft on against the first request of its group without caches)\n");
    for (i = 0; i < TURNS + 1 + SHARED; i++) {
        char name[16];
        /* the shared-prompt requests against the first of them without caches */
        double base = i <= TURNS ? off[0].ttft : off[TURNS + 1].ttft;

        if (i < TURNS)
            snprintf(name, sizeof(name), "turn %d", i + 1);
        else if (i == TURNS)
            snprintf(name, sizeof(name), "again");
        else
            snprintf(name, sizeof(name), "system %d", i - TURNS);
        printf("%-10s %8u %9.3fs %9.3fs %7.1f%% %7u %7u %8s\n", name, on[i].prompt_tokens,
               off[i].ttft, on[i].ttft, 100.0 * on[i].ttft / base, on[i].cached_tokens,
               on[i].images_from_cache, on[i].vision_ran ? "ran" : "-");
        if (strcmp(on[i].text, off[i].text))
            same = 0;
    }
    printf("answers with and without the caches: %s\n", same ? "identical" : "DIFFERENT");
    return same ? 0 : 1;
}

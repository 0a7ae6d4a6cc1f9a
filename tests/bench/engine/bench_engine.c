/* bench_engine.c - aggregate generation speed of one model's engine with
 * 1, 4, 16... concurrent requests (continuous batching: every decoding
 * sequence advances in one batched step).  Links the engine directly, as
 * vl2d does, without the socket.  Prints one line per measurement; never
 * fails on speed.
 *
 * Each request is a text prompt (a different one per request) answered
 * greedily with exactly --max-new tokens (EOS ignored).  All requests of a
 * round are submitted at once; the engine has as many slots as requests.
 *
 * usage: bench_engine --model DIR [--plugin-dir DIR] [--backend NAME]
 *                     [--clients N[,N...]] [--max-new N] [--threads N]
 *                     [--image FILE]
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "engine.h"

#define MAX_CLIENTS 256

static double now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double) ts.tv_sec + 1e-9 * (double) ts.tv_nsec;
}

static double cpu_now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double) ts.tv_sec + 1e-9 * (double) ts.tv_nsec;
}

/* ---- what the engine posts ------------------------------------------- */

struct outcome {
    bool done;
    int error;
    char msg[VL2_ERR_MSG_SIZE];
    uint32_t generated;
    uint32_t prompt_tokens;
    double ttft;
    double decode_tps;
    double t_end;
    double t_first_token;
};

struct sink {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    uint64_t key0;               /* keys of this round: key0 .. key0 + n - 1 */
    size_t n;
    size_t n_finished;
    struct outcome out[MAX_CLIENTS];
};

static void on_event(void *ud, struct vl2_event *ev)
{
    struct sink *s = ud;

    pthread_mutex_lock(&s->mu);
    if (ev->key >= s->key0 && ev->key < s->key0 + s->n) {
        struct outcome *o = &s->out[ev->key - s->key0];

        if (ev->kind == VL2_EVENT_TOKEN && o->t_first_token == 0)
            o->t_first_token = now();
        if (ev->kind == VL2_EVENT_DONE) {
            o->done = true;
            o->generated = ev->generated_tokens;
            o->prompt_tokens = ev->prompt_tokens;
            o->ttft = ev->time_to_first_token_s;
            o->decode_tps = ev->decode_tokens_per_s;
        }
        if (ev->kind == VL2_EVENT_ERROR) {
            o->error = ev->code;
            snprintf(o->msg, sizeof(o->msg), "%s", ev->message);
        }
        if (ev->kind == VL2_EVENT_DONE || ev->kind == VL2_EVENT_ERROR) {
            o->t_end = now();
            s->n_finished++;
            pthread_cond_broadcast(&s->cv);
        }
    }
    pthread_mutex_unlock(&s->mu);
    vl2_event_free(ev);
}

/* ---- requests --------------------------------------------------------- */

static uint8_t *image_data;
static size_t image_size;

static struct vl2_job *make_job(uint64_t key, size_t i, uint32_t max_new)
{
    static const char *const topics[] = {
        "GPUs", "the sea", "autumn leaves", "a quiet library", "trains at night",
        "bread", "mountains", "a city in the rain",
    };
    struct vl2_job *job = calloc(1, sizeof(*job));
    char text[256];

    if (!job)
        return NULL;
    snprintf(text, sizeof(text), "%sWrite a haiku about %s, number %zu.",
             image_data ? "<image>\n" : "", topics[i % 8], i);
    job->key = key;
    job->owner = key;
    job->model = strdup("bench");
    job->messages = calloc(1, sizeof(*job->messages));
    if (!job->model || !job->messages) {
        vl2_job_free(job);
        return NULL;
    }
    job->n_messages = 1;
    job->messages[0].role = VL2_JOB_ROLE_USER;
    job->messages[0].text = strdup(text);
    if (image_data) {
        job->messages[0].images = calloc(1, sizeof(*job->messages[0].images));
        if (job->messages[0].images) {
            job->messages[0].n_images = 1;
            job->messages[0].images[0].fd = -1;
            job->messages[0].images[0].data = malloc(image_size);
            if (job->messages[0].images[0].data) {
                memcpy(job->messages[0].images[0].data, image_data, image_size);
                job->messages[0].images[0].data_size = image_size;
            }
        }
    }
    job->sampling.has_max_new_tokens = true;
    job->sampling.max_new_tokens = max_new;
    job->sampling.ignore_eos = true;
    job->stream = true;
    return job;
}

/* One round: @n requests at once.  Returns 0 or -1. */
static int round_of(struct vl2_engine *e, struct sink *s, uint64_t *next_key, size_t n,
                    uint32_t max_new, bool print)
{
    const struct vl2_engine_ops *ops = vl2_engine_ops();
    double t0, c0, wall, cpu, sum_ttft = 0, sum_dec = 0, t_all_first = 0, t_last_end = 0;
    uint64_t total = 0;
    size_t i;

    pthread_mutex_lock(&s->mu);
    memset(s->out, 0, sizeof(s->out));
    s->key0 = *next_key;
    s->n = n;
    s->n_finished = 0;
    pthread_mutex_unlock(&s->mu);
    *next_key += n;
    t0 = now();
    c0 = cpu_now();
    for (i = 0; i < n; i++) {
        struct vl2_err err = { 0 };
        struct vl2_job *job = make_job(s->key0 + i, i, max_new);

        if (!job || ops->submit(e, job, &err) < 0) {
            fprintf(stderr, "bench_engine: submit: %s\n", job ? err.msg : "out of memory");
            vl2_job_free(job);
            return -1;
        }
    }
    pthread_mutex_lock(&s->mu);
    while (s->n_finished < n)
        pthread_cond_wait(&s->cv, &s->mu);
    pthread_mutex_unlock(&s->mu);
    wall = now() - t0;
    cpu = cpu_now() - c0;
    for (i = 0; i < n; i++) {
        const struct outcome *o = &s->out[i];

        if (!o->done) {
            fprintf(stderr, "bench_engine: request %zu: %s\n", i, o->msg);
            return -1;
        }
        total += o->generated;
        sum_ttft += o->ttft;
        sum_dec += o->decode_tps;
        if (o->t_first_token > t_all_first)
            t_all_first = o->t_first_token;
        if (o->t_end > t_last_end)
            t_last_end = o->t_end;
    }
    if (print) {
        /* steady state: from the moment every request had its first token */
        double steady_s = t_last_end - t_all_first;
        uint64_t steady_tokens = total - n;

        printf("engine clients=%zu max_new=%u prompt_tokens=%u generated=%llu wall_s=%.2f "
               "aggregate_tokens_per_s=%.2f steady_tokens_per_s=%.2f mean_ttft_s=%.2f "
               "mean_decode_tokens_per_s_per_request=%.2f cpu_s=%.2f\n",
               n, max_new, s->out[0].prompt_tokens, (unsigned long long) total, wall,
               (double) total / wall, steady_s > 0 ? (double) steady_tokens / steady_s : 0.0,
               sum_ttft / (double) n, sum_dec / (double) n, cpu);
        fflush(stdout);
    }
    return 0;
}

static uint8_t *slurp(const char *path, size_t *ret)
{
    FILE *f = fopen(path, "rb");
    uint8_t *buf = NULL;
    long n;

    if (!f)
        return NULL;
    if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) > 0 && fseek(f, 0, SEEK_SET) == 0) {
        buf = malloc((size_t) n);
        if (buf && fread(buf, 1, (size_t) n, f) != (size_t) n) {
            free(buf);
            buf = NULL;
        }
        *ret = (size_t) n;
    }
    fclose(f);
    return buf;
}

int main(int argc, char **argv)
{
    struct vl2_engine_params p = vl2_engine_default_params();
    struct vl2_engine_spec spec = { .name = "bench", .load_key = 1 };
    struct sink s = { 0 };
    struct vl2_engine *e;
    struct vl2_err err = { 0 };
    const char *clients = "1,4,16";
    size_t counts[16], n_counts = 0, i, most = 1;
    uint32_t max_new = 32;
    uint64_t next_key = 100;
    double t0;
    char *dup, *tok, *save = NULL;
    struct rusage ru;

    for (i = 1; i + 1 < (size_t) argc; i += 2) {
        const char *a = argv[i], *v = argv[i + 1];

        if (!strcmp(a, "--model"))
            spec.dir = v;
        else if (!strcmp(a, "--plugin-dir"))
            p.plugin_dir = v;
        else if (!strcmp(a, "--backend"))
            p.backend = v;
        else if (!strcmp(a, "--clients"))
            clients = v;
        else if (!strcmp(a, "--max-new"))
            max_new = (uint32_t) atoi(v);
        else if (!strcmp(a, "--threads"))
            p.n_threads = atoi(v);
        else if (!strcmp(a, "--image")) {
            image_data = slurp(v, &image_size);
            if (!image_data) {
                fprintf(stderr, "bench_engine: cannot read '%s'\n", v);
                return 1;
            }
        } else
            break;
    }
    if (!spec.dir || i != (size_t) argc || max_new == 0) {
        fprintf(stderr, "usage: bench_engine --model DIR [--plugin-dir DIR] [--backend NAME] "
                "[--clients N[,N...]] [--max-new N] [--threads N] [--image FILE]\n");
        return 2;
    }
    dup = strdup(clients);
    for (tok = strtok_r(dup, ",", &save); tok && n_counts < 16; tok = strtok_r(NULL, ",", &save)) {
        size_t n = (size_t) atoi(tok);

        if (n == 0 || n > MAX_CLIENTS) {
            fprintf(stderr, "bench_engine: --clients: 1 to %d each\n", MAX_CLIENTS);
            return 2;
        }
        counts[n_counts++] = n;
        if (n > most)
            most = n;
    }
    free(dup);
    p.max_sequences = (uint32_t) most;
    p.max_queue = MAX_CLIENTS;
    pthread_mutex_init(&s.mu, NULL);
    pthread_cond_init(&s.cv, NULL);
    spec.post = on_event;
    spec.post_ud = &s;
    t0 = now();
    if (vl2_engine_new(&p, &spec, &e, &err) < 0 || vl2_engine_wait_loaded(e, &err) < 0) {
        fprintf(stderr, "bench_engine: %s\n", err.msg);
        return 1;
    }
    printf("engine model=%s backend=%s threads=%d load_s=%.2f%s\n", spec.dir, p.backend,
           p.n_threads, now() - t0, image_data ? " image=yes" : "");
    /* warm up: page the weights in */
    if (round_of(e, &s, &next_key, 1, 4, false) < 0)
        return 1;
    for (i = 0; i < n_counts; i++)
        if (round_of(e, &s, &next_key, counts[i], max_new, true) < 0)
            return 1;
    vl2_engine_ops()->free(e);
    getrusage(RUSAGE_SELF, &ru);
    printf("engine peak_rss_mib=%.0f\n", (double) ru.ru_maxrss / 1024.0);
    free(image_data);
    return 0;
}

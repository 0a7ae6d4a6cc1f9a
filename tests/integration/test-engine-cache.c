/* test-engine-cache.c - the engine's image cache and prefix KV cache
 * (issue 16) on the golden micro checkpoints (micro-mha: MHA caches,
 * micro-mla: latent caches), CPU f32: every answer with
 * the caches on is the answer of the same build with them off, bitwise (ids,
 * text and every token's log-probability, which is a function of the
 * logits), and the golden ids where a golden case applies:
 *   - a cached image (the same a384 request again: the image from the
 *     cache, no vision tower, the first prefill chunk from the prefix cache);
 *   - the same image with a new question;
 *   - a resent conversation (vl2 chat: user, assistant, user);
 *   - a shared system prompt, with another client sampling (temperature,
 *     seed, repetition penalty) on top of a greedy client's prefix;
 *   - evicted entries (a KV budget and an image cache too small to keep
 *     two): the answer, recomputed, is the same;
 *   - concurrent requests sharing a prefix (copied from a kept entry, and
 *     from a request still running);
 *   - Done's cached_tokens, images_from_cache and vision_ran, and the cache
 *     figures of the engine's stats.
 *
 * usage: test-engine-cache CKPT_DIR GOLDEN_DIR PRESET IMAGES_DIR PLUGIN_DIR */
#include <cjson/cJSON.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/check.h"
#include "../common/util.h"
#include "engine.h"
#include "model.h"

static const char *model_dir, *golden_dir, *preset, *images_dir, *plugin_dir;

#define MAX_TOK 64
#define MAX_REQ 4

/* ---- what one request got ----------------------------------------------- */

struct answer {
    uint64_t key;
    bool done, failed;
    char error[VL2_ERR_MSG_SIZE];
    int32_t ids[MAX_TOK];
    float logprob[MAX_TOK];
    size_t n;
    char text[4096];
    size_t text_len;
    uint32_t prompt_tokens, cached_tokens, images_from_cache;
    bool vision_ran;
    bool prefill_seen;
};

struct sink {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct answer *a[MAX_REQ];
    size_t n;
};

static void on_event(void *ud, struct vl2_event *ev)
{
    struct sink *s = ud;
    size_t i;

    pthread_mutex_lock(&s->mu);
    for (i = 0; i < s->n; i++) {
        struct answer *a = s->a[i];

        if (!a || a->key != ev->key)
            continue;
        if (ev->kind == VL2_EVENT_PROGRESS && ev->stage == VL2_STAGE_PREFILL)
            a->prefill_seen = true;
        if (ev->kind == VL2_EVENT_TOKEN && a->n < MAX_TOK) {
            a->ids[a->n] = (int32_t) ev->token_id;
            a->logprob[a->n] = ev->has_logprob ? ev->logprob : 0.0f;
            a->n++;
            if (a->text_len + ev->text_size < sizeof(a->text)) {
                memcpy(a->text + a->text_len, ev->text, ev->text_size);
                a->text_len += ev->text_size;
            }
        }
        if (ev->kind == VL2_EVENT_DONE) {
            a->done = true;
            a->prompt_tokens = ev->prompt_tokens;
            a->cached_tokens = ev->cached_tokens;
            a->images_from_cache = ev->images_from_cache;
            a->vision_ran = ev->vision_ran;
        }
        if (ev->kind == VL2_EVENT_ERROR) {
            a->done = a->failed = true;
            snprintf(a->error, sizeof(a->error), "%s", ev->message);
        }
        pthread_cond_broadcast(&s->cv);
    }
    pthread_mutex_unlock(&s->mu);
    vl2_event_free(ev);
}

/* ---- requests -------------------------------------------------------------- */

struct msg {
    int role;                    /* VL2_JOB_ROLE_* */
    const char *text;
    const uint8_t *image;        /* NULL: none */
    size_t image_size;
};

struct req {
    const struct msg *msgs;
    size_t n_msgs;
    uint32_t max_new;
    float temperature;           /* 0: greedy */
    uint64_t seed;
    float penalty;               /* 0: unset */
};

static uint64_t next_key = 1;

static struct vl2_job *make_job(const struct req *q)
{
    struct vl2_job *job = calloc(1, sizeof(*job));
    size_t i;

    job->key = next_key++;
    job->owner = job->key;
    job->model = strdup("micro");
    job->messages = calloc(q->n_msgs, sizeof(*job->messages));
    job->n_messages = q->n_msgs;
    for (i = 0; i < q->n_msgs; i++) {
        struct vl2_job_message *m = &job->messages[i];

        m->role = (enum vl2_job_role) q->msgs[i].role;
        m->text = strdup(q->msgs[i].text);
        if (q->msgs[i].image) {
            m->images = calloc(1, sizeof(*m->images));
            m->n_images = 1;
            m->images[0].fd = -1;
            m->images[0].data = malloc(q->msgs[i].image_size);
            memcpy(m->images[0].data, q->msgs[i].image, q->msgs[i].image_size);
            m->images[0].data_size = q->msgs[i].image_size;
        }
    }
    job->sampling.has_max_new_tokens = true;
    job->sampling.max_new_tokens = q->max_new;
    job->sampling.has_temperature = true;
    job->sampling.temperature = q->temperature;
    if (q->temperature > 0) {
        job->sampling.has_seed = true;
        job->sampling.seed = q->seed;
    }
    if (q->penalty > 0) {
        job->sampling.has_repetition_penalty = true;
        job->sampling.repetition_penalty = q->penalty;
    }
    job->sampling.ignore_eos = true;
    job->stream = true;
    job->logprobs = true;
    return job;
}

struct eng {
    struct vl2_engine *e;
    struct sink s;
};

static void eng_open(struct eng *g, size_t image_cache, bool prefix, size_t kv_budget)
{
    struct vl2_engine_params p = vl2_engine_default_params();
    struct vl2_engine_spec spec = { .name = "micro", .dir = model_dir, .load_key = 1000000 };
    struct vl2_err err = { 0 };

    memset(g, 0, sizeof(*g));
    pthread_mutex_init(&g->s.mu, NULL);
    pthread_cond_init(&g->s.cv, NULL);
    p.plugin_dir = plugin_dir;
    p.n_threads = 2;
    p.max_sequences = 4;
    p.image_cache = image_cache;
    p.prefix_cache = prefix;
    p.kv_budget = kv_budget;
    spec.post = on_event;
    spec.post_ud = &g->s;
    if (vl2_engine_new(&p, &spec, &g->e, &err) < 0 || vl2_engine_wait_loaded(g->e, &err) < 0) {
        fprintf(stderr, "FAIL engine: %s\n", err.msg);
        exit(1);
    }
}

static void eng_close(struct eng *g)
{
    vl2_engine_ops()->free(g->e);
    pthread_mutex_destroy(&g->s.mu);
    pthread_cond_destroy(&g->s.cv);
}

/* Submit @n requests at once; wait for all. */
static void ask_many(struct eng *g, const struct req *const *q, struct answer *const *a, size_t n)
{
    struct vl2_err err = { 0 };
    size_t i;

    pthread_mutex_lock(&g->s.mu);
    g->s.n = n;
    for (i = 0; i < n; i++) {
        memset(a[i], 0, sizeof(*a[i]));
        g->s.a[i] = a[i];
    }
    pthread_mutex_unlock(&g->s.mu);
    for (i = 0; i < n; i++) {
        struct vl2_job *job = make_job(q[i]);

        pthread_mutex_lock(&g->s.mu);
        a[i]->key = job->key;
        pthread_mutex_unlock(&g->s.mu);
        if (vl2_engine_ops()->submit(g->e, job, &err) < 0) {
            fprintf(stderr, "FAIL submit: %s\n", err.msg);
            exit(1);
        }
    }
    pthread_mutex_lock(&g->s.mu);
    for (i = 0; i < n; i++)
        while (!a[i]->done)
            pthread_cond_wait(&g->s.cv, &g->s.mu);
    g->s.n = 0;
    pthread_mutex_unlock(&g->s.mu);
}

static void ask(struct eng *g, const struct req *q, struct answer *a)
{
    ask_many(g, &q, &a, 1);
}

/* Submit @q1, wait for its first prefill pass, submit @q2 (it can copy the
 * prefix from @q1 while that still runs); wait for both. */
static void ask_staggered(struct eng *g, const struct req *q1, const struct req *q2,
                          struct answer *a1, struct answer *a2)
{
    struct vl2_err err = { 0 };
    struct vl2_job *j1 = make_job(q1), *j2 = make_job(q2);

    memset(a1, 0, sizeof(*a1));
    memset(a2, 0, sizeof(*a2));
    a1->key = j1->key;
    a2->key = j2->key;
    pthread_mutex_lock(&g->s.mu);
    g->s.a[0] = a1;
    g->s.a[1] = a2;
    g->s.n = 2;
    pthread_mutex_unlock(&g->s.mu);
    if (vl2_engine_ops()->submit(g->e, j1, &err) < 0)
        exit(1);
    pthread_mutex_lock(&g->s.mu);
    while (!a1->prefill_seen && !a1->done)
        pthread_cond_wait(&g->s.cv, &g->s.mu);
    pthread_mutex_unlock(&g->s.mu);
    if (vl2_engine_ops()->submit(g->e, j2, &err) < 0)
        exit(1);
    pthread_mutex_lock(&g->s.mu);
    while (!a1->done || !a2->done)
        pthread_cond_wait(&g->s.cv, &g->s.mu);
    g->s.n = 0;
    pthread_mutex_unlock(&g->s.mu);
}

/* @a equals @b bitwise: ids, text, log-probabilities. */
static void check_same(const char *what, const struct answer *a, const struct answer *b)
{
    size_t i;
    bool ids = a->n == b->n, lp = a->n == b->n;

    CHECK_MSG(!a->failed && !b->failed, "%s: failed: '%s' '%s'", what, a->error, b->error);
    for (i = 0; ids && i < a->n; i++) {
        ids = a->ids[i] == b->ids[i];
        lp = lp && !memcmp(&a->logprob[i], &b->logprob[i], sizeof(float));
    }
    CHECK_MSG(ids, "%s: ids differ (%zu and %zu tokens)", what, a->n, b->n);
    CHECK_MSG(lp, "%s: log-probabilities differ bitwise", what);
    CHECK_MSG(a->text_len == b->text_len && !memcmp(a->text, b->text, a->text_len),
              "%s: texts differ", what);
    CHECK_MSG(a->prompt_tokens == b->prompt_tokens, "%s: prompt tokens %u and %u", what,
              a->prompt_tokens, b->prompt_tokens);
}

static void check_golden(const char *what, const struct answer *a, const int32_t *ids, size_t n)
{
    size_t i;
    bool ok = a->n == n;

    for (i = 0; ok && i < n; i++)
        ok = a->ids[i] == ids[i];
    CHECK_MSG(ok, "%s: not the golden ids", what);
}

/* ---- data --------------------------------------------------------------------- */

static int32_t golden_ids[MAX_TOK];
static size_t n_golden;
static char golden_prompt[512];
static uint8_t *img_a, *img_b;
static int32_t image_tokens_a, image_tokens_b;   /* the golden num_image_tokens */
static size_t img_a_size, img_b_size;

static void load_data(void)
{
    static const char head[] = "<|User|>: ", tail[] = "\n\n<|Assistant|>:";
    char path[1024], *t;
    cJSON *in, *out, *x;
    const char *pt;
    size_t len;

    snprintf(path, sizeof(path), "%s/%s/a384/input_ids.json", golden_dir, preset);
    t = test_slurp(path, NULL);
    in = t ? cJSON_Parse(t) : NULL;
    free(t);
    snprintf(path, sizeof(path), "%s/%s/a384/generated.json", golden_dir, preset);
    t = test_slurp(path, NULL);
    out = t ? cJSON_Parse(t) : NULL;
    free(t);
    if (!in || !out) {
        fprintf(stderr, "cannot read the golden a384 case\n");
        exit(2);
    }
    pt = cJSON_GetStringValue(cJSON_GetObjectItem(in, "prompt_text"));
    len = pt ? strlen(pt) : 0;
    if (len < sizeof(head) + sizeof(tail) || strncmp(pt, head, strlen(head))) {
        fprintf(stderr, "unexpected prompt_text\n");
        exit(2);
    }
    snprintf(golden_prompt, sizeof(golden_prompt), "%.*s",
             (int) (len - strlen(head) - strlen(tail)), pt + strlen(head));
    cJSON_ArrayForEach(x, cJSON_GetObjectItem(out, "generated_ids"))
        if (n_golden < MAX_TOK)
            golden_ids[n_golden++] = (int32_t) x->valuedouble;
    snprintf(path, sizeof(path), "%s/%s", images_dir,
             cJSON_GetStringValue(cJSON_GetArrayItem(cJSON_GetObjectItem(in, "images"), 0)));
    img_a = (uint8_t *) test_slurp(path, &img_a_size);
    image_tokens_a = (int32_t) cJSON_GetArrayItem(cJSON_GetObjectItem(in, "num_image_tokens"),
                                                  0)->valuedouble;
    cJSON_Delete(in);
    cJSON_Delete(out);
    snprintf(path, sizeof(path), "%s/%s/wide/input_ids.json", golden_dir, preset);
    t = test_slurp(path, NULL);
    in = t ? cJSON_Parse(t) : NULL;
    free(t);
    if (in) {
        snprintf(path, sizeof(path), "%s/%s", images_dir,
                 cJSON_GetStringValue(cJSON_GetArrayItem(cJSON_GetObjectItem(in, "images"), 0)));
        img_b = (uint8_t *) test_slurp(path, &img_b_size);
        image_tokens_b = (int32_t) cJSON_GetArrayItem(cJSON_GetObjectItem(in,
                                                      "num_image_tokens"), 0)->valuedouble;
        cJSON_Delete(in);
    }
    if (!img_a || !img_b) {
        fprintf(stderr, "cannot read the golden images\n");
        exit(2);
    }
}

/* A system prompt of about @words words (well over two prefill chunks). */
static char *long_text(const char *seed, int words)
{
    static const char *w[] = { "river", "stone", "lamp", "orbit", "cedar", "quartz", "meadow",
                               "signal", "harbor", "violet", "ember", "prism" };
    char *s = malloc((size_t) words * 16 + 64);
    size_t n = 0;
    int i;

    n += (size_t) sprintf(s, "%s:", seed);
    for (i = 0; i < words; i++)
        n += (size_t) sprintf(s + n, " %s%d", w[(i * 7 + (int) strlen(seed)) % 12], i % 13);
    return s;
}

/* ---- tests --------------------------------------------------------------------- */

static struct eng on, off;

static void test_image_and_chat(void)
{
    struct msg m1[] = { { VL2_JOB_ROLE_USER, golden_prompt, img_a, img_a_size } };
    struct msg m2[] = { { VL2_JOB_ROLE_USER, "<image>\nWhat colour is the sky in it?", img_a,
                          img_a_size } };
    struct req q1 = { m1, 1, (uint32_t) n_golden, 0, 0, 0 };
    struct req q2 = { m2, 1, 8, 0, 0, 0 };
    struct answer a_on, a_off, b_on, b_off, c_on, c_off;
    struct vl2_engine_stats st = { 0 };
    char answer1[4096];

    /* first ask: nothing cached */
    ask(&on, &q1, &a_on);
    ask(&off, &q1, &a_off);
    check_same("first ask", &a_on, &a_off);
    check_golden("first ask (caches on)", &a_on, golden_ids, n_golden);
    check_golden("first ask (caches off)", &a_off, golden_ids, n_golden);
    CHECK_EQ_INT(a_on.cached_tokens, 0);
    CHECK_EQ_INT(a_on.images_from_cache, 0);
    CHECK(a_on.vision_ran);
    CHECK(a_off.vision_ran);

    /* the same request again: all but its last turn marker ("<|Assistant|>"
     * ":") from the prefix cache, the image in it: no vision */
    ask(&on, &q1, &b_on);
    check_same("asked again", &b_on, &a_off);
    check_golden("asked again", &b_on, golden_ids, n_golden);
    CHECK_EQ_INT(b_on.cached_tokens, b_on.prompt_tokens - 2);
    CHECK_EQ_INT(b_on.images_from_cache, 1);
    CHECK(!b_on.vision_ran);
    ask(&off, &q1, &b_off);
    CHECK_EQ_INT(b_off.cached_tokens, 0);
    CHECK(b_off.vision_ran);

    /* the same image, a new question: the first pass (256 ids, through the
     * image) from the prefix cache, the image from the image cache */
    ask(&on, &q2, &c_on);
    ask(&off, &q2, &c_off);
    check_same("new question", &c_on, &c_off);
    CHECK_EQ_INT(c_on.cached_tokens, 256);
    CHECK_EQ_INT(c_on.images_from_cache, 1);
    CHECK(!c_on.vision_ran);

    /* vl2 chat: the conversation resent with the answer and a new turn */
    snprintf(answer1, sizeof(answer1), "%.*s", (int) a_off.text_len, a_off.text);
    {
        struct msg m3[] = {
            { VL2_JOB_ROLE_USER, golden_prompt, img_a, img_a_size },
            { VL2_JOB_ROLE_ASSISTANT, answer1, NULL, 0 },
            { VL2_JOB_ROLE_USER, "And what is in the corner?", NULL, 0 },
        };
        struct req q3 = { m3, 3, 8, 0, 0, 0 };
        struct answer d_on, d_off;

        ask(&on, &q3, &d_on);
        ask(&off, &q3, &d_off);
        check_same("resent conversation", &d_on, &d_off);
        /* all of the first turn up to its "<|Assistant|>" */
        CHECK_EQ_INT(d_on.cached_tokens, a_on.prompt_tokens - 2);
        CHECK(!d_on.vision_ran);
    }
    vl2_engine_ops()->stats(on.e, &st);
    CHECK(st.cache.image_entries == 1);
    CHECK(st.cache.image_hits == 1);
    CHECK(st.cache.prefix_entries >= 1);
    CHECK(st.cache.prefix_hits >= 3);
    CHECK(st.cache.prefix_bytes > 0 && st.cache.prefix_bytes <= st.cache.kv_budget);
    memset(&st, 0, sizeof(st));
    vl2_engine_ops()->stats(off.e, &st);
    CHECK(st.cache.image_entries == 0 && st.cache.prefix_entries == 0 &&
          st.cache.prefix_hits == 0);
}

static void test_system_prompt(void)
{
    char *sys = long_text("You are a careful assistant", 300);
    struct msg m1[] = { { VL2_JOB_ROLE_SYSTEM, sys, NULL, 0 },
                        { VL2_JOB_ROLE_USER, "Name a river.", NULL, 0 } };
    struct msg m2[] = { { VL2_JOB_ROLE_SYSTEM, sys, NULL, 0 },
                        { VL2_JOB_ROLE_USER, "Count to three.", NULL, 0 } };
    struct req greedy = { m1, 2, 10, 0, 0, 0 };
    struct req sampled = { m2, 2, 16, 5.0f, 7, 2.0f };
    struct answer a_on, a_off, b_on, b_off;

    ask(&on, &greedy, &a_on);
    ask(&off, &greedy, &a_off);
    check_same("system prompt, first client", &a_on, &a_off);
    /* another client, another question, sampling with a seed and a
     * repetition penalty over its own prompt */
    ask(&on, &sampled, &b_on);
    ask(&off, &sampled, &b_off);
    check_same("system prompt, second client sampling", &b_on, &b_off);
    CHECK_MSG(b_on.cached_tokens >= 256, "shared system prompt: %u cached tokens",
              b_on.cached_tokens);
    /* and the first again: the second's entry did not change its answer */
    ask(&on, &greedy, &b_on);
    check_same("system prompt, first client again", &b_on, &a_off);
    CHECK(b_on.cached_tokens >= 256);
    free(sys);
}

static void test_concurrent(void)
{
    char *sys = long_text("Shared instructions for everyone", 400);
    struct msg m1[] = { { VL2_JOB_ROLE_SYSTEM, sys, NULL, 0 },
                        { VL2_JOB_ROLE_USER, "First question?", NULL, 0 } };
    struct msg m2[] = { { VL2_JOB_ROLE_SYSTEM, sys, NULL, 0 },
                        { VL2_JOB_ROLE_USER, "Second question!", NULL, 0 } };
    struct msg m3[] = { { VL2_JOB_ROLE_SYSTEM, sys, NULL, 0 },
                        { VL2_JOB_ROLE_USER, "Third one.", NULL, 0 } };
    struct req q1 = { m1, 2, 10, 0, 0, 0 }, q2 = { m2, 2, 10, 0, 0, 0 };
    struct req q3 = { m3, 2, 10, 0.7f, 3, 0 };
    struct answer r1, r2, r3, o1, o2, o3;
    const struct req *qs[] = { &q2, &q3 };
    struct answer *as[] = { &r2, &r3 };

    ask(&off, &q1, &o1);
    ask(&off, &q2, &o2);
    ask(&off, &q3, &o3);
    /* the second copies from the first while the first still runs */
    ask_staggered(&on, &q1, &q2, &r1, &r2);
    check_same("concurrent, first", &r1, &o1);
    check_same("concurrent, second (copied from a running request)", &r2, &o2);
    CHECK_MSG(r2.cached_tokens >= 256, "concurrent: %u cached tokens", r2.cached_tokens);
    /* two at once, both from the kept entry */
    ask_many(&on, qs, as, 2);
    check_same("concurrent pair, greedy", &r2, &o2);
    check_same("concurrent pair, sampled", &r3, &o3);
    CHECK(r2.cached_tokens >= 256 && r3.cached_tokens >= 256);
    free(sys);
}

static size_t kv_token_bytes, embed_bytes;

static void test_eviction(void)
{
    char *s1 = long_text("Alpha rules", 300), *s2 = long_text("Beta rules", 300);
    struct msg m1[] = { { VL2_JOB_ROLE_SYSTEM, s1, NULL, 0 },
                        { VL2_JOB_ROLE_USER, "Go.", NULL, 0 } };
    struct msg m2[] = { { VL2_JOB_ROLE_SYSTEM, s2, NULL, 0 },
                        { VL2_JOB_ROLE_USER, "Go.", NULL, 0 } };
    struct msg ia[] = { { VL2_JOB_ROLE_USER, "<image>\nDescribe.", img_a, img_a_size } };
    struct msg ib[] = { { VL2_JOB_ROLE_USER, "<image>\nDescribe.", img_b, img_b_size } };
    struct req q1 = { m1, 2, 6, 0, 0, 0 }, q2 = { m2, 2, 6, 0, 0, 0 };
    struct req qa = { ia, 1, 6, 0, 0, 0 }, qb = { ib, 1, 6, 0, 0, 0 };
    struct answer x1, x2, y1, ya, yb, za, o1, oa;
    struct eng small;

    /* room for one request's cache (about 600 tokens) and little else: the
     * second request evicts the first's entry; one image embedding */
    eng_open(&small, 0, true, 700 * kv_token_bytes);
    ask(&small, &q1, &x1);
    ask(&small, &q2, &x2);
    ask(&small, &q1, &y1);
    ask(&off, &q1, &o1);
    check_same("evicted prefix", &y1, &o1);
    check_same("evicting request", &x1, &o1);
    CHECK_MSG(y1.cached_tokens == 0, "evicted prefix: %u cached tokens", y1.cached_tokens);
    eng_close(&small);
    /* room for the larger of two image embeddings, not for both (and no
     * prefix cache, which would hold the image's rows) */
    eng_open(&small, embed_bytes, false, 0);
    ask(&small, &qa, &ya);
    ask(&small, &qb, &yb);
    ask(&small, &qa, &za);
    ask(&off, &qa, &oa);
    check_same("evicted image", &za, &oa);
    check_same("first image", &ya, &oa);
    CHECK(za.vision_ran);
    CHECK_EQ_INT(za.images_from_cache, 0);
    CHECK_MSG(!yb.failed, "second image: %s", yb.error);
    CHECK(yb.vision_ran);
    eng_close(&small);
    free(s1);
    free(s2);
}

int main(int argc, char **argv)
{
    struct vl2_model_params mp = vl2_model_default_params();
    struct vl2_model *m;
    struct vl2_err err = { 0 };
    if (argc != 6) {
        fprintf(stderr, "usage: %s CKPT_DIR GOLDEN_DIR PRESET IMAGES_DIR PLUGIN_DIR\n", argv[0]);
        return 2;
    }
    model_dir = argv[1];
    golden_dir = argv[2];
    preset = argv[3];
    images_dir = argv[4];
    plugin_dir = argv[5];
    load_data();
    /* the sizes the eviction test needs, from the model itself */
    mp.plugin_dir = plugin_dir;
    mp.n_threads = 1;
    if (vl2_model_load(&m, model_dir, &mp, &err) < 0) {
        fprintf(stderr, "FAIL load: %s\n", err.msg);
        return 1;
    }
    kv_token_bytes = vl2_model_kv_token_bytes(m);
    embed_bytes = (size_t) (image_tokens_a > image_tokens_b ? image_tokens_a : image_tokens_b) *
                  (size_t) vl2_model_config(m)->lm.d_model * sizeof(float);
    vl2_model_free(m);

    eng_open(&on, (size_t) 512 << 20, true, 0);
    eng_open(&off, 0, false, 0);
    RUN(test_image_and_chat);
    RUN(test_system_prompt);
    RUN(test_concurrent);
    RUN(test_eviction);
    eng_close(&on);
    eng_close(&off);
    return check_report("test-engine-cache");
}

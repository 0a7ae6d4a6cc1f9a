/* test-engine.c - the real vl2d serving golden micro checkpoints, driven
 * through libvl2: greedy answers equal the golden generated text with the
 * image sent as bytes and as a descriptor; 50 concurrent clients each get
 * their own golden answer; several requests on one connection; a client
 * killed mid-stream frees its slot; Cancel; an image encoded a tile per
 * step lets a text request start before it is done; bad requests fail alone;
 * LoadModel (a bad directory fails, another model keeps serving) and
 * UnloadModel; the configuration file; `vl2d run` gives what the daemon
 * gives for the same request (text, ids, finish reason), stop strings
 * included.
 *
 * Expected texts and ids come from tests/data/golden (an independent
 * reference implementation), never from vl2d itself.
 *
 * usage: test-engine VL2D MICRO_MHA_DIR MICRO_MLA_DIR GOLDEN_DIR IMAGES_DIR */
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../common/check.h"
#include "../common/util.h"
#include "harness.h"
#include "vl2-status.h"
#include "vl2.h"

static const char *vl2d_path, *mha_dir, *mla_dir, *golden_dir, *images_dir;
static char *tmp;
static char sock[256], log_path[256];
static pid_t daemon_pid = -1;

/* ---- golden cases ----------------------------------------------------- */

#define MAX_IDS 64

struct golden {
    char name[16];
    char prompt[256];            /* the user's text, with its <image> tag */
    char image[256];             /* path, "" for text only */
    char *text;                  /* generated text */
    int32_t ids[MAX_IDS];
    size_t n_ids;
    uint32_t prompt_len;
    uint32_t image_tokens;
    uint8_t *image_data;
    size_t image_size;
};

static struct golden mha[4], mla_a384;

static cJSON *read_json(const char *preset, const char *cas, const char *file)
{
    char path[512], *text;
    cJSON *j;

    snprintf(path, sizeof(path), "%s/%s/%s/%s", golden_dir, preset, cas, file);
    text = test_slurp(path, NULL);
    if (!text) {
        fprintf(stderr, "cannot read '%s'\n", path);
        exit(2);
    }
    j = cJSON_Parse(text);
    free(text);
    if (!j) {
        fprintf(stderr, "'%s': bad JSON\n", path);
        exit(2);
    }
    return j;
}

/* The case's user message: prompt_text without "<|User|>: " and
 * "\n\n<|Assistant|>:" (the golden README's layout). */
static void load_golden(struct golden *g, const char *preset, const char *cas)
{
    static const char head[] = "<|User|>: ", tail[] = "\n\n<|Assistant|>:";
    cJSON *in = read_json(preset, cas, "input_ids.json");
    cJSON *out = read_json(preset, cas, "generated.json");
    const char *pt = cJSON_GetStringValue(cJSON_GetObjectItem(in, "prompt_text"));
    cJSON *ids = cJSON_GetObjectItem(out, "generated_ids"), *e, *imgs, *nt;
    size_t len;

    memset(g, 0, sizeof(*g));
    snprintf(g->name, sizeof(g->name), "%s", cas);
    if (!pt || strncmp(pt, head, strlen(head)) || (len = strlen(pt)) < strlen(head) +
        strlen(tail) || strcmp(pt + len - strlen(tail), tail)) {
        fprintf(stderr, "%s/%s: unexpected prompt_text\n", preset, cas);
        exit(2);
    }
    snprintf(g->prompt, sizeof(g->prompt), "%.*s", (int) (len - strlen(head) - strlen(tail)),
             pt + strlen(head));
    g->text = strdup(cJSON_GetStringValue(cJSON_GetObjectItem(out, "text")));
    cJSON_ArrayForEach(e, ids)
        if (g->n_ids < MAX_IDS)
            g->ids[g->n_ids++] = (int32_t) e->valuedouble;
    g->prompt_len = (uint32_t) cJSON_GetArraySize(cJSON_GetObjectItem(in, "input_ids"));
    nt = cJSON_GetObjectItem(in, "num_image_tokens");
    cJSON_ArrayForEach(e, nt)
        g->image_tokens += (uint32_t) e->valuedouble;
    imgs = cJSON_GetObjectItem(in, "images");
    if (cJSON_GetArraySize(imgs) == 1) {
        snprintf(g->image, sizeof(g->image), "%s/%s", images_dir,
                 cJSON_GetStringValue(cJSON_GetArrayItem(imgs, 0)));
        g->image_data = (uint8_t *) test_slurp(g->image, &g->image_size);
        if (!g->image_data) {
            fprintf(stderr, "cannot read '%s'\n", g->image);
            exit(2);
        }
    }
    cJSON_Delete(in);
    cJSON_Delete(out);
}

/* ---- one Generate ----------------------------------------------------- */

enum img_mode { IMG_BYTES, IMG_FD };

struct gen_opts {
    const char *model;
    enum img_mode mode;
    uint32_t max_new;            /* 0: not set */
    bool stream;
    bool logprobs;
    uint32_t top_logprobs;
    bool ignore_eos;
    const char *stop;
    bool has_temperature;
    float temperature;
};

static struct gen_opts gen_defaults(void)
{
    struct gen_opts o = { .model = "", .mode = IMG_BYTES, .max_new = 12, .stream = true };
    return o;
}

struct result {
    uint64_t id;
    int n_responses;
    int first_kind;
    int last_kind;
    uint32_t queue_position;
    unsigned stages;             /* bit per Stage seen */
    bool progress_after_token;
    char text[4096];
    size_t text_len;
    int32_t ids[8192];
    size_t n_ids;
    size_t n_tokens;
    bool bad_logprob;
    /* Token.top_logprobs: each Token's count, first id, and what is wrong */
    size_t n_top[64];
    int32_t top1[64];
    char bad_top[256];
    bool has_done;
    Vl2__Done done;
    char done_text[4096];
    int error_code;
    char error_msg[600];
    int ack;
    /* for tests that act after the first token */
    int (*on_token)(struct result *r);
    void *ud;
};

/* The alternatives of Token @t (the last one counted in @r): counted, the first
 * kept; sorted, each <= 0, their probabilities summing to at most 1, the
 * first one's logprob the token's own when it is the chosen id. */
static void check_top(struct result *r, const Vl2__Token *t)
{
    double sum = 0.0;
    size_t i, k = r->n_tokens - 1;

    if (k >= sizeof(r->n_top) / sizeof(r->n_top[0]))
        return;
    r->n_top[k] = t->n_top_logprobs;
    r->top1[k] = t->n_top_logprobs ? (int32_t) t->top_logprobs[0]->id : -1;
    for (i = 0; i < t->n_top_logprobs; i++) {
        const Vl2__TokenAlternative *a = t->top_logprobs[i];

        sum += exp((double) a->logprob);
        if (!a->has_id || !a->has_logprob || !(a->logprob <= 0.0f))
            snprintf(r->bad_top, sizeof(r->bad_top), "token %zu, alternative %zu: "
                     "logprob %g", k, i, a->logprob);
        if (i > 0 && a->logprob > t->top_logprobs[i - 1]->logprob)
            snprintf(r->bad_top, sizeof(r->bad_top), "token %zu: alternative %zu above "
                     "the one before", k, i);
        if (i > 0 && a->id == t->top_logprobs[i - 1]->id)
            snprintf(r->bad_top, sizeof(r->bad_top), "token %zu: an id twice", k);
    }
    if (sum > 1.0 + 1e-5)
        snprintf(r->bad_top, sizeof(r->bad_top), "token %zu: probabilities sum to %.7f", k,
                 sum);
    if (t->n_top_logprobs && t->top_logprobs[0]->id == t->id &&
        t->top_logprobs[0]->logprob != t->logprob)
        snprintf(r->bad_top, sizeof(r->bad_top), "token %zu: the first alternative's "
                 "logprob %.9g is not the token's %.9g", k, t->top_logprobs[0]->logprob,
                 t->logprob);
}

static int on_response(const Vl2__Response *resp, void *ud)
{
    struct result *r = ud;

    if (resp->id != r->id) {
        if (resp->body_case == VL2__RESPONSE__BODY_ACK)
            r->ack++;
        return 0;
    }
    if (r->n_responses++ == 0)
        r->first_kind = resp->body_case;
    r->last_kind = resp->body_case;
    switch (resp->body_case) {
    case VL2__RESPONSE__BODY_ACCEPTED:
        r->queue_position = resp->accepted->queue_position;
        break;
    case VL2__RESPONSE__BODY_PROGRESS:
        r->stages |= 1u << resp->progress->stage;
        if (r->n_tokens > 0)
            r->progress_after_token = true;
        break;
    case VL2__RESPONSE__BODY_TOKEN:
        if (resp->token->text.len && r->text_len + resp->token->text.len < sizeof(r->text)) {
            memcpy(r->text + r->text_len, resp->token->text.data, resp->token->text.len);
            r->text_len += resp->token->text.len;
            r->text[r->text_len] = '\0';
        }
        if (r->n_ids < sizeof(r->ids) / sizeof(r->ids[0]))
            r->ids[r->n_ids++] = (int32_t) resp->token->id;
        r->n_tokens++;
        if (resp->token->has_logprob && !(resp->token->logprob <= 0.0f))
            r->bad_logprob = true;
        check_top(r, resp->token);
        if (r->on_token)
            return r->on_token(r);
        break;
    case VL2__RESPONSE__BODY_DONE:
        r->has_done = true;
        r->done = *resp->done;
        r->done.boxes = NULL;
        r->done.n_boxes = 0;
        if (resp->done->has_text && resp->done->text.len &&
            resp->done->text.len < sizeof(r->done_text)) {
            memcpy(r->done_text, resp->done->text.data, resp->done->text.len);
            r->done_text[resp->done->text.len] = '\0';
        }
        break;
    case VL2__RESPONSE__BODY_ERROR:
        r->error_code = resp->error->code;
        snprintf(r->error_msg, sizeof(r->error_msg), "%s", resp->error->message);
        break;
    default:
        break;
    }
    return 0;
}

static struct vl2_client *open_client(const char *path)
{
    struct vl2_client_opts o = vl2_client_default_opts();
    struct vl2_client *c = NULL;
    struct vl2_err err = { 0 };

    o.socket_path = path;
    o.timeout_ms = 60000;
    o.client_name = "test-engine";
    if (vl2_client_open(&o, &c, &err) < 0) {
        fprintf(stderr, "cannot connect to '%s': %s\n", path, err.msg);
        return NULL;
    }
    return c;
}

/* Everything a Generate request points at. */
struct gen_req {
    Vl2__Request req;
    Vl2__Generate gen;
    Vl2__Message msg;
    Vl2__Message *msgs[1];
    Vl2__Image img;
    Vl2__Image *imgs[1];
    Vl2__Sampling smp;
    char *stops[1];
    int fd;
};

static void make_req(struct gen_req *q, const char *prompt, const uint8_t *image,
                     size_t image_size, const char *image_path, const struct gen_opts *o)
{
    memset(q, 0, sizeof(*q));
    vl2__request__init(&q->req);
    vl2__generate__init(&q->gen);
    vl2__message__init(&q->msg);
    vl2__image__init(&q->img);
    vl2__sampling__init(&q->smp);
    q->fd = -1;
    q->msg.has_role = 1;
    q->msg.role = VL2__ROLE__ROLE_USER;
    q->msg.text = (char *) prompt;
    if (image || image_path) {
        if (o->mode == IMG_FD && image_path) {
            q->fd = open(image_path, O_RDONLY | O_CLOEXEC);
            q->img.source_case = VL2__IMAGE__SOURCE_FD_INDEX;
            q->img.fd_index = 0;
        } else {
            q->img.source_case = VL2__IMAGE__SOURCE_DATA;
            q->img.data.data = (uint8_t *) image;
            q->img.data.len = image_size;
        }
        q->imgs[0] = &q->img;
        q->msg.n_images = 1;
        q->msg.images = q->imgs;
    }
    q->msgs[0] = &q->msg;
    q->gen.n_messages = 1;
    q->gen.messages = q->msgs;
    q->gen.model = (char *) o->model;
    q->gen.has_stream = 1;
    q->gen.stream = o->stream;
    q->gen.has_logprobs = 1;
    q->gen.logprobs = o->logprobs;
    if (o->top_logprobs) {
        q->gen.has_top_logprobs = 1;
        q->gen.top_logprobs = o->top_logprobs;
    }
    if (o->max_new) {
        q->smp.has_max_new_tokens = 1;
        q->smp.max_new_tokens = o->max_new;
    }
    if (o->ignore_eos) {
        q->smp.has_ignore_eos = 1;
        q->smp.ignore_eos = 1;
    }
    if (o->has_temperature) {
        q->smp.has_temperature = 1;
        q->smp.temperature = o->temperature;
    }
    if (o->stop) {
        q->stops[0] = (char *) o->stop;
        q->smp.n_stop = 1;
        q->smp.stop = q->stops;
    }
    q->gen.sampling = &q->smp;
    q->req.body_case = VL2__REQUEST__BODY_GENERATE;
    q->req.generate = &q->gen;
}

static int send_req(struct vl2_client *c, struct gen_req *q, uint64_t *ret_id)
{
    struct vl2_err err = { 0 };
    int r;

    r = vl2_client_send(c, &q->req, q->fd >= 0 ? &q->fd : NULL, q->fd >= 0 ? 1 : 0, ret_id,
                        &err);
    if (q->fd >= 0)
        close(q->fd);
    q->fd = -1;
    if (r < 0)
        fprintf(stderr, "send: %s\n", err.msg);
    return r;
}

/* Run one Generate on a new connection (or @c) and gather its responses. */
static int generate(struct vl2_client *c, const char *prompt, const struct golden *g,
                    const struct gen_opts *o, struct result *r)
{
    struct vl2_client *own = NULL;
    struct vl2_err err = { 0 };
    struct gen_req q;
    int rc;

    if (!c) {
        c = own = open_client(sock);
        if (!c)
            return -1;
    }
    make_req(&q, prompt, g ? g->image_data : NULL, g ? g->image_size : 0,
             g && g->image[0] ? g->image : NULL, o);
    rc = send_req(c, &q, &r->id);
    if (rc == 0)
        rc = vl2_client_wait(c, r->id, on_response, r, &err);
    vl2_client_close(own);
    return rc;
}

static int generate_on(const char *path, const char *prompt, const struct golden *g,
                       const struct gen_opts *o, struct result *r)
{
    struct vl2_client *c = open_client(path);
    int rc;

    if (!c)
        return -1;
    rc = generate(c, prompt, g, o, r);
    vl2_client_close(c);
    return rc;
}

static bool ids_equal(const struct result *r, const struct golden *g, size_t n)
{
    size_t i;

    if (r->n_ids != n || n > g->n_ids)
        return false;
    for (i = 0; i < n; i++)
        if (r->ids[i] != g->ids[i])
            return false;
    return true;
}

/* A full golden answer (12 tokens, greedy) and its Done. */
static void check_golden(const struct result *r, const struct golden *g, const char *what)
{
    CHECK_MSG(r->has_done, "%s: no Done (error %d '%s')", what, r->error_code, r->error_msg);
    if (!r->has_done)
        return;
    CHECK_MSG(r->first_kind == VL2__RESPONSE__BODY_ACCEPTED, "%s: first response %d", what,
              r->first_kind);
    CHECK_MSG(r->last_kind == VL2__RESPONSE__BODY_DONE, "%s", what);
    CHECK_MSG(!strcmp(r->text, g->text), "%s: text '%s', golden '%s'", what, r->text, g->text);
    CHECK_MSG(ids_equal(r, g, g->n_ids), "%s: ids differ from the golden ids", what);
    CHECK_EQ_INT(r->done.finish_reason, VL2__FINISH_REASON__FINISH_LENGTH);
    CHECK_EQ_INT(r->done.generated_tokens, g->n_ids);
    CHECK_EQ_INT(r->done.prompt_tokens, g->prompt_len);
    CHECK_EQ_INT(r->done.image_tokens, g->image_tokens);
    CHECK_MSG(r->done.time_to_first_token_s > 0, "%s: ttft %g", what,
              r->done.time_to_first_token_s);
    CHECK_MSG(r->done.decode_tokens_per_s > 0, "%s", what);
    CHECK_MSG(!r->progress_after_token, "%s: progress after a token", what);
    CHECK_MSG((r->stages & (1u << VL2__STAGE__STAGE_PREFILL)) != 0, "%s: no prefill progress",
              what);
    if (g->image[0])
        CHECK_MSG((r->stages & (1u << VL2__STAGE__STAGE_TILING)) &&
                  (r->stages & (1u << VL2__STAGE__STAGE_VISION)), "%s: stages %#x", what,
                  r->stages);
}

/* ---- Status / ListModels ---------------------------------------------- */

struct status {
    uint32_t queue_length, active, connections;
    double tokens_per_s;
    uint64_t rss;
    size_t n_models;
    char names[8][32];
    int states[8];
    uint64_t memory[8];
    char backend[8][16];
    char error[8][600];
};

static int on_status(const Vl2__Response *resp, void *ud)
{
    struct status *s = ud;
    Vl2__ModelInfo **models = NULL;
    size_t i, n = 0;

    if (resp->body_case == VL2__RESPONSE__BODY_STATUS) {
        s->queue_length = resp->status->queue_length;
        s->active = resp->status->active_sequences;
        s->connections = resp->status->connections;
        s->tokens_per_s = resp->status->tokens_per_s;
        s->rss = resp->status->resident_memory_bytes;
        models = resp->status->models;
        n = resp->status->n_models;
    } else if (resp->body_case == VL2__RESPONSE__BODY_MODELS) {
        models = resp->models->models;
        n = resp->models->n_models;
    }
    s->n_models = n;
    for (i = 0; i < n && i < 8; i++) {
        snprintf(s->names[i], sizeof(s->names[i]), "%s", models[i]->name);
        s->states[i] = models[i]->state;
        s->memory[i] = models[i]->memory_bytes;
        snprintf(s->backend[i], sizeof(s->backend[i]), "%s",
                 models[i]->backend ? models[i]->backend : "");
        snprintf(s->error[i], sizeof(s->error[i]), "%s",
                 models[i]->error ? models[i]->error : "");
    }
    return 0;
}

static int get_status(const char *path, struct status *s)
{
    struct vl2_client *c = open_client(path);
    Vl2__Request req = VL2__REQUEST__INIT;
    Vl2__Status st = VL2__STATUS__INIT;
    struct vl2_err err = { 0 };
    int r;

    memset(s, 0, sizeof(*s));
    if (!c)
        return -1;
    req.body_case = VL2__REQUEST__BODY_STATUS;
    req.status = &st;
    r = vl2_client_call(c, &req, NULL, 0, on_status, s, &err);
    vl2_client_close(c);
    return r;
}

static int model_state(const struct status *s, const char *name)
{
    size_t i;

    for (i = 0; i < s->n_models && i < 8; i++)
        if (!strcmp(s->names[i], name))
            return s->states[i];
    return -1;
}

/* Wait until the daemon reports no active sequence (true) or give up. */
static bool wait_idle(int timeout_ms)
{
    struct status s;
    int t;

    for (t = 0; t < timeout_ms; t += 20) {
        if (get_status(sock, &s) == 0 && s.active == 0 && s.queue_length == 0)
            return true;
        test_sleep_ms(20);
    }
    return false;
}

/* ---- tests ------------------------------------------------------------ */

static void test_golden_bytes(void)
{
    struct gen_opts o = gen_defaults();
    struct result *r = calloc(1, sizeof(*r));

    CHECK(generate(NULL, mha[0].prompt, &mha[0], &o, r) == 0);
    check_golden(r, &mha[0], "a384 as bytes");
    CHECK_EQ_INT(r->queue_position, 0);
    free(r);
}

static void test_golden_fd(void)
{
    struct gen_opts o = gen_defaults();
    struct result *r = calloc(1, sizeof(*r));

    o.mode = IMG_FD;
    CHECK(generate(NULL, mha[0].prompt, &mha[0], &o, r) == 0);
    check_golden(r, &mha[0], "a384 as a descriptor");
    free(r);
}

/* The other golden cases; without streaming the answer comes in Done. */
static void test_golden_cases(void)
{
    size_t i;

    for (i = 1; i < 4; i++) {
        struct gen_opts o = gen_defaults();
        struct result *r = calloc(1, sizeof(*r));

        o.stream = i != 2;
        o.mode = i == 1 ? IMG_FD : IMG_BYTES;
        CHECK(generate(NULL, mha[i].prompt, &mha[i], &o, r) == 0);
        if (o.stream) {
            check_golden(r, &mha[i], mha[i].name);
        } else {
            CHECK_MSG(r->n_tokens == 0, "%s: tokens without streaming", mha[i].name);
            CHECK_MSG(r->has_done && !strcmp(r->done_text, mha[i].text), "%s: '%s'",
                      mha[i].name, r->done_text);
            CHECK_EQ_INT(r->done.generated_tokens, 12);
        }
        free(r);
    }
}

/* A stop string: the answer ends before it (cut from the golden text). */
static void test_stop_and_logprobs(void)
{
    struct gen_opts o = gen_defaults();
    struct result *r = calloc(1, sizeof(*r));
    const char *at = strstr(mha[0].text, "miles");

    CHECK(at != NULL);
    o.stop = "miles";
    o.logprobs = true;
    CHECK(generate(NULL, mha[0].prompt, &mha[0], &o, r) == 0);
    CHECK(r->has_done);
    CHECK_EQ_INT(r->done.finish_reason, VL2__FINISH_REASON__FINISH_STOP);
    CHECK_MSG(at && r->text_len == (size_t) (at - mha[0].text) &&
              !memcmp(r->text, mha[0].text, r->text_len), "text '%s'", r->text);
    CHECK(r->n_tokens > 0 && r->n_tokens < 12);
    CHECK(!r->bad_logprob);
    free(r);
}

/* top_logprobs 5 under greedy: at each step 5 alternatives, the first the
 * golden id; top_logprobs alone brings logprob; 21 is refused. */
static void test_top_logprobs(void)
{
    struct gen_opts o = gen_defaults();
    struct result *r = calloc(1, sizeof(*r));
    size_t i;

    o.top_logprobs = 5;
    CHECK(generate(NULL, mha[0].prompt, &mha[0], &o, r) == 0);
    check_golden(r, &mha[0], "a384 with top_logprobs 5");
    CHECK_MSG(!r->bad_top[0], "%s", r->bad_top);
    CHECK(!r->bad_logprob);
    for (i = 0; i < r->n_tokens && i < mha[0].n_ids; i++) {
        CHECK_MSG(r->n_top[i] == 5, "token %zu: %zu alternatives", i, r->n_top[i]);
        CHECK_MSG(r->top1[i] == mha[0].ids[i], "token %zu: first alternative %d, golden %d",
                  i, r->top1[i], mha[0].ids[i]);
    }
    memset(r, 0, sizeof(*r));
    o.top_logprobs = 21;
    CHECK(generate(NULL, mha[0].prompt, &mha[0], &o, r) != 0 || r->error_code != 0);
    CHECK_MSG(r->error_code == VL2_EINVAL && strstr(r->error_msg, "top_logprobs"),
              "top_logprobs 21: error %d '%s'", r->error_code, r->error_msg);
    CHECK_EQ_INT(r->n_tokens, 0);
    free(r);
}

/* ---- vl2d run and the daemon: one pipeline ------------------------------ */

/* Three characters of @text from about its middle: a stop string that
 * spans token boundaries (the golden answers have one to three bytes per
 * character and several characters per id). */
static void middle_stop(const char *text, char *out, size_t size)
{
    size_t len = strlen(text), at = len / 2, end, k;

    while (at > 0 && ((unsigned char) text[at] & 0xC0) == 0x80)
        at--;
    for (end = at, k = 0; k < 3 && end < len; k++)
        do
            end++;
        while (end < len && ((unsigned char) text[end] & 0xC0) == 0x80);
    snprintf(out, size, "%.*s", (int) (end - at), text + at);
}

/* `vl2d run --json` of @g with stop string @stop (NULL: none).  Returns the
 * parsed object, NULL on failure. */
static cJSON *run_once(const struct golden *g, const char *stop)
{
    const char *argv[20];
    char *out = NULL, *err = NULL;
    int n = 0, rc;
    cJSON *j;

    argv[n++] = vl2d_path;
    argv[n++] = "run";
    argv[n++] = "--model";
    argv[n++] = mha_dir;
    argv[n++] = "--prompt";
    argv[n++] = g->prompt;
    if (g->image[0]) {
        argv[n++] = "--image";
        argv[n++] = g->image;
    }
    argv[n++] = "--max-new-tokens";
    argv[n++] = "12";
    argv[n++] = "--threads";
    argv[n++] = "1";
    argv[n++] = "--json";
    if (stop) {
        argv[n++] = "--stop";
        argv[n++] = stop;
    }
    argv[n] = NULL;
    rc = harness_run(argv, NULL, &out, &err);
    CHECK_MSG(rc == 0, "vl2d run %s: exit %d: %s", g->name, rc, err ? err : "");
    j = rc == 0 && out ? cJSON_Parse(out) : NULL;
    CHECK_MSG(rc != 0 || j, "vl2d run %s: not JSON: %s", g->name, out ? out : "");
    free(out);
    free(err);
    return j;
}

static const char *finish_name(int reason)
{
    switch (reason) {
    case VL2__FINISH_REASON__FINISH_EOS: return "eos";
    case VL2__FINISH_REASON__FINISH_LENGTH: return "length";
    case VL2__FINISH_REASON__FINISH_STOP: return "stop";
    }
    return "?";
}

/* The same request through `vl2d run` and through the daemon, for every
 * golden case, without a stop string, with one from the middle of the
 * golden answer, and with one that never comes: the same text, ids and
 * finish reason on both sides, and the golden text (cut at the stop). */
static void test_run_matches_daemon(void)
{
    size_t i, k;

    for (i = 0; i < 4; i++) {
        const struct golden *g = &mha[i];
        char stop[64];

        middle_stop(g->text, stop, sizeof(stop));
        for (k = 0; k < 3; k++) {
            const char *st = k == 0 ? NULL : k == 1 ? stop : "\x01never";
            struct gen_opts o = gen_defaults();
            struct result *r = calloc(1, sizeof(*r));
            const char *at = st ? strstr(g->text, st) : NULL;
            size_t want_len = at ? (size_t) (at - g->text) : strlen(g->text);
            cJSON *j, *e, *ids;
            const char *text, *fin;
            size_t n = 0;
            bool same_ids = true;

            o.stop = st;
            CHECK(generate(NULL, g->prompt, g, &o, r) == 0);
            CHECK_MSG(r->has_done, "%s stop '%s': daemon error %d '%s'", g->name,
                      st ? st : "", r->error_code, r->error_msg);
            CHECK_MSG(r->text_len == want_len && !memcmp(r->text, g->text, want_len),
                      "%s stop '%s': daemon text '%s', golden cut '%.*s'", g->name,
                      st ? st : "", r->text, (int) want_len, g->text);
            j = run_once(g, st);
            if (!j) {
                free(r);
                continue;
            }
            text = cJSON_GetStringValue(cJSON_GetObjectItem(j, "text"));
            fin = cJSON_GetStringValue(cJSON_GetObjectItem(j, "finish_reason"));
            ids = cJSON_GetObjectItem(j, "generated_ids");
            cJSON_ArrayForEach(e, ids) {
                if (n >= r->n_ids || (int32_t) e->valuedouble != r->ids[n])
                    same_ids = false;
                n++;
            }
            CHECK_MSG(text && strlen(text) == r->text_len && !memcmp(text, r->text, r->text_len),
                      "%s stop '%s': run '%s', daemon '%s'", g->name, st ? st : "",
                      text ? text : "(none)", r->text);
            CHECK_MSG(fin && !strcmp(fin, finish_name(r->done.finish_reason)),
                      "%s stop '%s': run finished '%s', daemon '%s'", g->name, st ? st : "",
                      fin ? fin : "(none)", finish_name(r->done.finish_reason));
            CHECK_MSG(!strcmp(finish_name(r->done.finish_reason), at ? "stop" : "length"),
                      "%s stop '%s': finish %s", g->name, st ? st : "",
                      finish_name(r->done.finish_reason));
            CHECK_MSG(same_ids && n == r->n_ids && n == r->done.generated_tokens,
                      "%s stop '%s': run %zu ids, daemon %zu (Done %u)", g->name, st ? st : "",
                      n, r->n_ids, r->done.generated_tokens);
            cJSON_Delete(j);
            free(r);
        }
    }
}

static const char long_prompt[] = "Write a haiku about GPUs.";

/* ---- 50 clients ---- */

#define N_CLIENTS 50

struct client_run {
    pthread_t thread;
    int index;
    const struct golden *g;
    uint32_t max_new;
    struct result r;
    int rc;
};

static void *client_main(void *arg)
{
    struct client_run *cr = arg;
    struct gen_opts o = gen_defaults();

    o.max_new = cr->max_new;
    o.mode = cr->index % 2 ? IMG_FD : IMG_BYTES;
    cr->rc = generate(NULL, cr->g->prompt, cr->g, &o, &cr->r);
    return NULL;
}

static void test_concurrent_clients(void)
{
    struct client_run *runs = calloc(N_CLIENTS, sizeof(*runs));
    size_t i, n_ok = 0, n_queued = 0;

    for (i = 0; i < N_CLIENTS; i++) {
        runs[i].index = (int) i;
        runs[i].g = &mha[i % 4];
        runs[i].max_new = i % 3 == 0 ? 12 : 3 + (uint32_t) (i % 9);
        CHECK(pthread_create(&runs[i].thread, NULL, client_main, &runs[i]) == 0);
    }
    for (i = 0; i < N_CLIENTS; i++) {
        struct client_run *cr = &runs[i];

        pthread_join(cr->thread, NULL);
        CHECK_MSG(cr->rc == 0 && cr->r.has_done, "client %zu: rc %d, error '%s'", i, cr->rc,
                  cr->r.error_msg);
        CHECK_MSG(ids_equal(&cr->r, cr->g, cr->max_new), "client %zu (%s, %u tokens): "
                  "%zu ids, not its golden ones", i, cr->g->name, cr->max_new, cr->r.n_ids);
        if (cr->max_new == 12)
            CHECK_MSG(!strcmp(cr->r.text, cr->g->text), "client %zu (%s): '%s'", i,
                      cr->g->name, cr->r.text);
        CHECK_EQ_INT(cr->r.done.generated_tokens, cr->max_new);
        n_ok += cr->rc == 0 && ids_equal(&cr->r, cr->g, cr->max_new);
        n_queued += cr->r.queue_position > 0;
    }
    fprintf(stderr, "     %zu of %d clients got their golden answer, %zu waited in the queue\n",
            n_ok, N_CLIENTS, n_queued);
    CHECK_MSG(n_queued > 0, "50 requests for 8 slots: some should have waited");
    CHECK(wait_idle(10000));
    free(runs);
}

/* Several requests on one connection at once, answers told apart by id. */
struct multi {
    struct result *rs;
    size_t n;
};

static int on_multi(const Vl2__Response *resp, void *ud)
{
    struct multi *m = ud;
    size_t i;

    for (i = 0; i < m->n; i++)
        if (resp->id == m->rs[i].id)
            return on_response(resp, &m->rs[i]);
    return 0;
}

static void test_one_connection(void)
{
    static const int k[3] = { 0, 3, 1 };
    struct vl2_client *c = open_client(sock);
    struct result *r = calloc(3, sizeof(*r));
    struct multi m = { r, 3 };
    struct vl2_err err = { 0 };
    struct gen_opts o = gen_defaults();
    struct gen_req q;
    size_t i, n_final = 0;

    CHECK(c != NULL);
    if (!c) {
        free(r);
        return;
    }
    for (i = 0; i < 3; i++) {
        const struct golden *g = &mha[k[i]];

        make_req(&q, g->prompt, g->image_data, g->image_size, NULL, &o);
        CHECK(send_req(c, &q, &r[i].id) == 0);
    }
    while (n_final < 3) {
        int rc = vl2_client_recv(c, on_multi, &m, &err);

        if (rc < 0) {
            CHECK_MSG(0, "recv: %s", err.msg);
            break;
        }
        n_final += rc == 1;
    }
    for (i = 0; i < 3; i++)
        check_golden(&r[i], &mha[k[i]], mha[k[i]].name);
    vl2_client_close(c);
    free(r);
}

/* Fair slots between connections: A takes 7 of the 8 slots and queues 5
 * more (the last slot is kept for a connection that holds none, issue 18);
 * B's one request starts at once, not after A's.  Then A leaves: its 12
 * requests end, B gets its answer. */
static void test_fair_queue(void)
{
    struct vl2_client *a = open_client(sock), *b = open_client(sock);
    struct result *ra = calloc(12, sizeof(*ra)), *rb = calloc(1, sizeof(*rb));
    struct multi ma = { ra, 12 };
    struct vl2_err err = { 0 };
    struct gen_opts o = gen_defaults();
    struct gen_req q;
    size_t i, n_acc = 0, n_queued = 0;

    CHECK(a && b);
    if (!a || !b)
        goto out;
    o.max_new = 4000;
    o.ignore_eos = true;
    for (i = 0; i < 12; i++) {
        make_req(&q, long_prompt, NULL, 0, NULL, &o);
        CHECK(send_req(a, &q, &ra[i].id) == 0);
    }
    while (n_acc < 12) {
        if (vl2_client_recv(a, on_multi, &ma, &err) < 0)
            break;
        for (n_acc = 0, i = 0; i < 12; i++)
            n_acc += ra[i].n_responses > 0;
    }
    for (i = 0; i < 12; i++)
        n_queued += ra[i].queue_position > 0;
    CHECK_EQ_INT(n_queued, 5);
    o = gen_defaults();
    make_req(&q, mha[0].prompt, mha[0].image_data, mha[0].image_size, NULL, &o);
    CHECK(send_req(b, &q, &rb->id) == 0);
    CHECK(vl2_client_recv(b, on_response, rb, &err) == 0);
    CHECK_EQ_INT(rb->first_kind, VL2__RESPONSE__BODY_ACCEPTED);
    CHECK_EQ_INT(rb->queue_position, 0);
    /* A leaves with 12 requests: they are cancelled, B goes on */
    vl2_client_close(a);
    a = NULL;
    CHECK(vl2_client_wait(b, rb->id, on_response, rb, &err) == 0);
    check_golden(rb, &mha[0], "after the other client left");
    CHECK_MSG(wait_idle(10000), "the left client's sequences are still active");
out:
    vl2_client_close(a);
    vl2_client_close(b);
    free(ra);
    free(rb);
}

/* ---- a client killed mid-stream, Cancel ---- */

/* Child: ask for a long answer, tell the parent at the first token, wait
 * to be killed. */
static int child_first_token(struct result *r)
{
    int fd = *(int *) r->ud;

    if (write(fd, "t", 1) != 1)
        _exit(3);
    for (;;)
        pause();
    return 0;
}

static void test_killed_client(void)
{
    struct gen_opts o = gen_defaults();
    struct status s;
    struct result *r;
    int p[2], status;
    char b;
    pid_t pid;

    CHECK(pipe(p) == 0);
    pid = fork();
    if (pid == 0) {
        r = calloc(1, sizeof(*r));
        close(p[0]);
        o.max_new = 4000;
        o.ignore_eos = true;
        r->on_token = child_first_token;
        r->ud = &p[1];
        generate(NULL, long_prompt, NULL, &o, r);
        _exit(4);  /* it ended before being killed */
    }
    close(p[1]);
    CHECK_MSG(read(p[0], &b, 1) == 1, "the child got no token");
    close(p[0]);
    CHECK(get_status(sock, &s) == 0);
    CHECK_MSG(s.active >= 1, "active %u while the child streams", s.active);
    kill(pid, SIGKILL);
    CHECK(waitpid(pid, &status, 0) == pid);
    CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    /* its slot and cache are freed, visible in Status */
    CHECK_MSG(wait_idle(10000), "the killed client's sequence is still active");
    /* and the daemon serves others */
    r = calloc(1, sizeof(*r));
    o = gen_defaults();
    CHECK(generate(NULL, mha[3].prompt, &mha[3], &o, r) == 0);
    check_golden(r, &mha[3], "after a killed client");
    free(r);
}

struct cancel_ctx {
    struct vl2_client *c;
    bool sent;
    uint64_t cancel_id;
};

static int cancel_at_first_token(struct result *r)
{
    struct cancel_ctx *cc = r->ud;
    Vl2__Request req = VL2__REQUEST__INIT;
    Vl2__Cancel cn = VL2__CANCEL__INIT;
    struct vl2_err err = { 0 };

    if (cc->sent)
        return 0;
    cn.has_target_id = 1;
    cn.target_id = r->id;
    req.body_case = VL2__REQUEST__BODY_CANCEL;
    req.cancel = &cn;
    CHECK(vl2_client_send(cc->c, &req, NULL, 0, &cc->cancel_id, &err) == 0);
    cc->sent = true;
    return 0;
}

static void test_cancel(void)
{
    struct cancel_ctx cc = { 0 };
    struct gen_opts o = gen_defaults();
    struct result *r = calloc(1, sizeof(*r));

    cc.c = open_client(sock);
    CHECK(cc.c != NULL);
    if (!cc.c) {
        free(r);
        return;
    }
    o.max_new = 4000;
    o.ignore_eos = true;
    r->on_token = cancel_at_first_token;
    r->ud = &cc;
    CHECK(generate(cc.c, long_prompt, NULL, &o, r) == VL2_ECANCELED);
    CHECK(cc.sent);
    CHECK_EQ_INT(r->error_code, VL2_ECANCELED);
    CHECK_EQ_INT(r->ack, 1);
    CHECK_MSG(r->n_tokens < 4000, "%zu tokens", r->n_tokens);
    CHECK(!r->has_done);
    CHECK_MSG(wait_idle(10000), "the cancelled sequence is still active");
    vl2_client_close(cc.c);
    free(r);
}

/* Vision interleaved with decoding: while A decodes, B's tall image (7
 * distinct tiles) goes through the vision tower a tile per engine step, so
 * A's tokens keep coming between B's first partial vision progress and its
 * end (with a whole image per step there are none: the image is encoded
 * inside one iteration).  A is decoding before B is sent, so this does not
 * depend on timing.  C, a text-only request sent once B's vision has begun,
 * is answered too.  All on one connection: one order of events.  B and C
 * get their golden answers.  Then D, cancelled in the middle of its vision. */
struct interleave {
    struct result *rs;              /* A, B, C */
    size_t n_events;
    size_t b_vision_partial;        /* event number of B's first VISION < 1 */
    size_t b_vision_done;           /* ... of B's VISION 1 */
    size_t c_first_token;
    size_t a_tokens_during_b_vision; /* A's tokens between those two events */
};

static int on_interleave(const Vl2__Response *resp, void *ud)
{
    struct interleave *x = ud;
    size_t i;

    x->n_events++;
    for (i = 0; i < 3; i++)
        if (resp->id == x->rs[i].id && x->rs[i].id != 0)
            break;
    if (i == 3)
        return 0;
    if (i == 1 && resp->body_case == VL2__RESPONSE__BODY_PROGRESS &&
        resp->progress->stage == VL2__STAGE__STAGE_VISION && resp->progress->has_fraction) {
        if (resp->progress->fraction < 1.0f && !x->b_vision_partial)
            x->b_vision_partial = x->n_events;
        if (resp->progress->fraction >= 1.0f && !x->b_vision_done)
            x->b_vision_done = x->n_events;
    }
    if (i == 2 && resp->body_case == VL2__RESPONSE__BODY_TOKEN && !x->c_first_token)
        x->c_first_token = x->n_events;
    if (i == 0 && resp->body_case == VL2__RESPONSE__BODY_TOKEN && x->b_vision_partial &&
        !x->b_vision_done)
        x->a_tokens_during_b_vision++;
    return on_response(resp, &x->rs[i]);
}

static void test_vision_interleaved(void)
{
    struct vl2_client *c = open_client(sock);
    struct result *rs = calloc(3, sizeof(*rs));
    struct interleave x = { .rs = rs };
    struct gen_opts o = gen_defaults(), ol = gen_defaults();
    struct vl2_err err = { 0 };
    struct cancel_ctx cc = { 0 };
    struct gen_req q;

    CHECK(c != NULL && rs != NULL);
    if (!c || !rs)
        goto out;
    ol.max_new = 4000;
    ol.ignore_eos = true;
    make_req(&q, long_prompt, NULL, 0, NULL, &ol);
    CHECK(send_req(c, &q, &rs[0].id) == 0);
    while (rs[0].n_tokens == 0 && !rs[0].has_done && !rs[0].error_code)
        if (vl2_client_recv(c, on_interleave, &x, &err) < 0)
            goto out;
    CHECK_MSG(rs[0].n_tokens > 0, "A: no token (error %d '%s')", rs[0].error_code,
              rs[0].error_msg);
    make_req(&q, mha[2].prompt, mha[2].image_data, mha[2].image_size, NULL, &o);
    CHECK(send_req(c, &q, &rs[1].id) == 0);
    while (!x.b_vision_partial && !x.b_vision_done && !rs[1].has_done && !rs[1].error_code)
        if (vl2_client_recv(c, on_interleave, &x, &err) < 0)
            goto out;
    CHECK_MSG(x.b_vision_partial > 0, "B: no partial vision progress before its end");
    make_req(&q, mha[3].prompt, NULL, 0, NULL, &o);
    CHECK(send_req(c, &q, &rs[2].id) == 0);
    while ((!rs[1].has_done && !rs[1].error_code) || (!rs[2].has_done && !rs[2].error_code))
        if (vl2_client_recv(c, on_interleave, &x, &err) < 0)
            goto out;
    CHECK_MSG(x.b_vision_done > 0 && x.a_tokens_during_b_vision > 0,
              "A got %zu tokens while B's image was encoded (events %zu..%zu)",
              x.a_tokens_during_b_vision, x.b_vision_partial, x.b_vision_done);
    CHECK_MSG(x.c_first_token > 0, "C got no token");
    CHECK_MSG(rs[0].has_done == false && rs[0].error_code == 0, "A ended early");
    check_golden(&rs[1], &mha[2], "image encoded between decode steps");
    check_golden(&rs[2], &mha[3], "text while an image is encoded");
    /* D: the tall image again, cancelled once its vision has begun (its
     * job is freed: ASan's leak check at the daemon's exit) */
    memset(&rs[1], 0, sizeof(rs[1]));
    x.b_vision_partial = x.b_vision_done = 0;
    make_req(&q, mha[2].prompt, mha[2].image_data, mha[2].image_size, NULL, &ol);
    CHECK(send_req(c, &q, &rs[1].id) == 0);
    while (!x.b_vision_partial && !x.b_vision_done && !rs[1].error_code)
        if (vl2_client_recv(c, on_interleave, &x, &err) < 0)
            goto out;
    cc.c = c;
    rs[1].ud = &cc;
    cancel_at_first_token(&rs[1]);
    while (!rs[1].has_done && !rs[1].error_code)
        if (vl2_client_recv(c, on_interleave, &x, &err) < 0)
            goto out;
    CHECK_EQ_INT(rs[1].error_code, VL2_ECANCELED);
    /* A is still decoding: cancel it */
    cc.sent = false;
    rs[0].ud = &cc;
    cancel_at_first_token(&rs[0]);
out:
    if (c && rs && rs[0].id && !rs[0].has_done && !rs[0].error_code)
        CHECK(vl2_client_wait(c, rs[0].id, on_response, &rs[0], &err) == VL2_ECANCELED);
    CHECK(wait_idle(10000));
    vl2_client_close(c);
    free(rs);
}

/* A conversation: system, user with an image, assistant, user with two
 * more.  Three images: no local tiles (spec 3.2), so 3 x 421 image tokens
 * (spec 6.2: 14 * 15 + 1 + 14 * (14 + 1)). */
static void test_conversation(void)
{
    struct vl2_client *c = open_client(sock);
    Vl2__Request req = VL2__REQUEST__INIT;
    Vl2__Generate gen = VL2__GENERATE__INIT;
    Vl2__Message m[4], *mp[4];
    Vl2__Image im[3], *ip[3];
    Vl2__Sampling smp = VL2__SAMPLING__INIT;
    struct result *r = calloc(1, sizeof(*r));
    struct vl2_err err = { 0 };
    static const char *const texts[4] = { "You are terse.", "<image>\nWhat is it?",
                                          "A picture.", "And these two?" };
    static const Vl2__Role roles[4] = { VL2__ROLE__ROLE_SYSTEM, VL2__ROLE__ROLE_USER,
                                        VL2__ROLE__ROLE_ASSISTANT, VL2__ROLE__ROLE_USER };
    size_t i;

    CHECK(c != NULL);
    if (!c) {
        free(r);
        return;
    }
    for (i = 0; i < 3; i++) {
        vl2__image__init(&im[i]);
        im[i].source_case = VL2__IMAGE__SOURCE_DATA;
        im[i].data.data = mha[i].image_data;
        im[i].data.len = mha[i].image_size;
        ip[i] = &im[i];
    }
    for (i = 0; i < 4; i++) {
        vl2__message__init(&m[i]);
        m[i].has_role = 1;
        m[i].role = roles[i];
        m[i].text = (char *) texts[i];
        mp[i] = &m[i];
    }
    m[1].n_images = 1;
    m[1].images = &ip[0];
    m[3].n_images = 2;               /* no tags: the images go before the text */
    m[3].images = &ip[1];
    smp.has_max_new_tokens = 1;
    smp.max_new_tokens = 4;
    gen.n_messages = 4;
    gen.messages = mp;
    gen.sampling = &smp;
    gen.has_grounding = 1;
    gen.grounding = 1;
    req.body_case = VL2__REQUEST__BODY_GENERATE;
    req.generate = &gen;
    CHECK(vl2_client_send(c, &req, NULL, 0, &r->id, &err) == 0);
    CHECK(vl2_client_wait(c, r->id, on_response, r, &err) == 0);
    CHECK_MSG(r->has_done, "error %d '%s'", r->error_code, r->error_msg);
    CHECK_EQ_INT(r->done.image_tokens, 3 * 421);
    CHECK(r->done.prompt_tokens > 3 * 421);
    CHECK_EQ_INT(r->done.generated_tokens, 4);
    vl2_client_close(c);
    free(r);
}

/* ---- bad requests fail alone ---- */

static void expect_refusal(const char *prompt, const uint8_t *img, size_t img_size,
                           const struct gen_opts *o, int code, const char *needle)
{
    struct golden g = { 0 };
    struct result *r = calloc(1, sizeof(*r));

    g.image_data = (uint8_t *) img;
    g.image_size = img_size;
    generate(NULL, prompt, img ? &g : NULL, o, r);
    CHECK_MSG(r->error_code == code && strstr(r->error_msg, needle),
              "'%s': error %d '%s', expected %d with '%s'", needle, r->error_code,
              r->error_msg, code, needle);
    CHECK(!r->has_done);
    free(r);
}

static void test_bad_requests(void)
{
    static const uint8_t junk[] = "this is not an image at all, just text";
    struct gen_opts o = gen_defaults();
    size_t n = 6000, i;
    char *longp = malloc(n * 5 + 1);

    expect_refusal("<image>\nWhat is it?", junk, sizeof(junk), &o, VL2_EUNSUPPORTED,
                   "image 0");
    /* a truncated JPEG */
    expect_refusal("<image>\nWhat is it?", mha[0].image_data, 200, &o, VL2_EFORMAT,
                   "image 0");
    expect_refusal("<image><image>\nTwo?", mha[0].image_data, mha[0].image_size, &o,
                   VL2_EINVAL, "2 '<image>' tags but 1 images");
    for (i = 0; i < n; i++)
        memcpy(longp + 5 * i, "word ", 5);
    longp[5 * n] = '\0';
    expect_refusal(longp, NULL, 0, &o, VL2_ELIMIT, "the context holds 4096");
    free(longp);
    o.has_temperature = true;
    o.temperature = -0.5f;
    expect_refusal("Hi", NULL, 0, &o, VL2_EINVAL, "temperature");
    o = gen_defaults();
    o.model = "no-such-model";
    expect_refusal("Hi", NULL, 0, &o, VL2_ENOTFOUND, "'no-such-model' is not loaded");
    /* a descriptor that is a directory */
    {
        struct result *r = calloc(1, sizeof(*r));
        struct golden g = { 0 };

        o = gen_defaults();
        o.mode = IMG_FD;
        snprintf(g.image, sizeof(g.image), "%s", tmp);
        generate(NULL, "<image>\nWhat?", &g, &o, r);
        CHECK_MSG(r->error_code == VL2_EINVAL && strstr(r->error_msg, "directory"),
                  "directory descriptor: %d '%s'", r->error_code, r->error_msg);
        free(r);
    }
    /* the daemon still answers correctly */
    {
        struct result *r = calloc(1, sizeof(*r));

        o = gen_defaults();
        CHECK(generate(NULL, mha[0].prompt, &mha[0], &o, r) == 0);
        check_golden(r, &mha[0], "after bad requests");
        free(r);
    }
}

/* ---- LoadModel / UnloadModel ---- */

struct load_seen {
    uint64_t id;
    int n_accepted, n_progress;
    bool loaded;
    int state;
    int error_code;
    char error_msg[600];
    float last_fraction;
};

static int on_load(const Vl2__Response *resp, void *ud)
{
    struct load_seen *l = ud;

    switch (resp->body_case) {
    case VL2__RESPONSE__BODY_ACCEPTED:
        l->n_accepted++;
        break;
    case VL2__RESPONSE__BODY_PROGRESS:
        if (resp->progress->stage == VL2__STAGE__STAGE_LOADING) {
            l->n_progress++;
            l->last_fraction = resp->progress->fraction;
        }
        break;
    case VL2__RESPONSE__BODY_LOADED:
        l->loaded = true;
        l->state = resp->loaded->model ? (int) resp->loaded->model->state : -1;
        break;
    case VL2__RESPONSE__BODY_ERROR:
        l->error_code = resp->error->code;
        snprintf(l->error_msg, sizeof(l->error_msg), "%s", resp->error->message);
        break;
    default:
        break;
    }
    return 0;
}

static int load_model(const char *name, const char *dir, bool progress, struct load_seen *l)
{
    struct vl2_client *c = open_client(sock);
    Vl2__Request req = VL2__REQUEST__INIT;
    Vl2__LoadModel lm = VL2__LOAD_MODEL__INIT;
    struct vl2_err err = { 0 };
    int r;

    memset(l, 0, sizeof(*l));
    if (!c)
        return -1;
    lm.name = (char *) name;
    lm.dir = (char *) dir;
    lm.has_progress = 1;
    lm.progress = progress;
    req.body_case = VL2__REQUEST__BODY_LOAD_MODEL;
    req.load_model = &lm;
    r = vl2_client_call(c, &req, NULL, 0, on_load, l, &err);
    vl2_client_close(c);
    return r;
}

static int unload_model(const char *name)
{
    struct vl2_client *c = open_client(sock);
    Vl2__Request req = VL2__REQUEST__INIT;
    Vl2__UnloadModel um = VL2__UNLOAD_MODEL__INIT;
    struct vl2_err err = { 0 };
    int r;

    if (!c)
        return -1;
    um.name = (char *) name;
    req.body_case = VL2__REQUEST__BODY_UNLOAD_MODEL;
    req.unload_model = &um;
    r = vl2_client_call(c, &req, NULL, 0, NULL, NULL, &err);
    vl2_client_close(c);
    return r;
}

static void test_models(void)
{
    char bad[512];
    struct load_seen l;
    struct status s;
    struct result *r;
    struct gen_opts o = gen_defaults();
    int t;
    FILE *f;

    /* a directory that fails validation: an error naming why; the other
     * model keeps serving */
    snprintf(bad, sizeof(bad), "%s/badmodel", tmp);
    CHECK(mkdir(bad, 0755) == 0);
    {
        char p[600], cmd[1400];

        snprintf(cmd, sizeof(cmd), "cp '%s/tokenizer.json' '%s/tokenizer_config.json' '%s/' "
                 "&& cp '%s/processor_config.json' '%s/'", mha_dir, mha_dir, bad, mha_dir, bad);
        CHECK(system(cmd) == 0);
        snprintf(p, sizeof(p), "%s/config.json", bad);
        f = fopen(p, "w");
        CHECK(f != NULL);
        if (f) {
            fputs("{\"model_type\": \"deepseek_vl_v2\", \"language_config\": {\"hidden_size\": "
                  "\"big\"}}", f);
            fclose(f);
        }
    }
    CHECK(load_model("broken", bad, true, &l) < 0);
    CHECK_MSG(l.error_code < 0 && strstr(l.error_msg, "broken") && strstr(l.error_msg, bad),
              "load error %d '%s'", l.error_code, l.error_msg);
    CHECK(!l.loaded);
    CHECK(get_status(sock, &s) == 0);
    CHECK_EQ_INT(model_state(&s, "broken"), VL2__MODEL_STATE__MODEL_STATE_FAILED);
    CHECK_EQ_INT(model_state(&s, "micro-mha"), VL2__MODEL_STATE__MODEL_STATE_READY);
    r = calloc(1, sizeof(*r));
    CHECK(generate(NULL, mha[0].prompt, &mha[0], &o, r) == 0);
    check_golden(r, &mha[0], "beside a failed model");
    free(r);
    /* the failed model refuses work with its reason */
    o.model = "broken";
    expect_refusal("Hi", NULL, 0, &o, l.error_code, "failed");
    CHECK(unload_model("broken") == 0);
    /* a relative directory is refused */
    CHECK(load_model("rel", "relative/dir", false, &l) == VL2_EINVAL);
    /* a second model: progress, ModelLoaded, its own golden answer */
    CHECK(load_model("mla", mla_dir, true, &l) == 0);
    CHECK(l.loaded && l.n_accepted == 1 && l.n_progress >= 1 && l.last_fraction == 1.0f);
    CHECK_EQ_INT(l.state, VL2__MODEL_STATE__MODEL_STATE_READY);
    CHECK(load_model("mla", mla_dir, false, &l) == VL2_EINVAL);
    r = calloc(1, sizeof(*r));
    o = gen_defaults();
    o.model = "mla";
    CHECK(generate(NULL, mla_a384.prompt, &mla_a384, &o, r) == 0);
    check_golden(r, &mla_a384, "micro-mla a384");
    free(r);
    CHECK(unload_model("mla") == 0);
    CHECK(unload_model("mla") == VL2_ENOTFOUND);
    for (t = 0; t < 5000; t += 20) {
        CHECK(get_status(sock, &s) == 0);
        if (model_state(&s, "mla") < 0 && model_state(&s, "broken") < 0)
            break;
        test_sleep_ms(20);
    }
    CHECK_MSG(model_state(&s, "mla") < 0, "mla still listed");
    expect_refusal(mla_a384.prompt, mla_a384.image_data, mla_a384.image_size, &o,
                   VL2_ENOTFOUND, "'mla' is not loaded");
}

static void test_status_figures(void)
{
    struct status s;

    CHECK(get_status(sock, &s) == 0);
    CHECK_MSG(s.tokens_per_s > 0, "tokens/s %g", s.tokens_per_s);
    CHECK(s.rss > 0);
    CHECK_EQ_INT(model_state(&s, "micro-mha"), VL2__MODEL_STATE__MODEL_STATE_READY);
    CHECK_MSG(s.n_models >= 1 && s.memory[0] > 30u * 1000 * 1000, "memory %llu",
              (unsigned long long) s.memory[0]);
    CHECK(s.n_models >= 1 && !strcmp(s.backend[0], "cpu"));
}

/* ---- the configuration file ---- */

static void test_config(void)
{
    char conf[512], s2[512], log2[512];
    const char *args[] = { "--config", conf, "--socket", s2, NULL };
    struct status s;
    struct result *r;
    struct gen_opts o = gen_defaults();
    pid_t pid;
    char *text;
    int status, t;
    FILE *f;

    snprintf(conf, sizeof(conf), "%s/vl2d.conf", tmp);
    snprintf(s2, sizeof(s2), "%s/conf.sock", tmp);
    snprintf(log2, sizeof(log2), "%s/conf.log", tmp);
    f = fopen(conf, "w");
    CHECK(f != NULL);
    if (!f)
        return;
    fprintf(f, "# test\n[daemon]\nmax_sequences = 2\nkv_budget = 64M\nidle_unload = 1s\n\n"
               "[model cfg]\ndir = \"%s\"\n", mha_dir);
    fclose(f);
    pid = harness_start(vl2d_path, s2, args, log2, NULL);
    CHECK(pid > 0);
    if (pid <= 0)
        return;
    for (t = 0; t < 10000; t += 20) {
        if (get_status(s2, &s) == 0 && model_state(&s, "cfg") ==
            VL2__MODEL_STATE__MODEL_STATE_READY)
            break;
        test_sleep_ms(20);
    }
    CHECK_EQ_INT(model_state(&s, "cfg"), VL2__MODEL_STATE__MODEL_STATE_READY);
    {
        struct vl2_client *c = open_client(s2);

        r = calloc(1, sizeof(*r));
        CHECK(c && generate(c, mha[3].prompt, &mha[3], &o, r) == 0);
        check_golden(r, &mha[3], "model of the configuration file");
        vl2_client_close(c);
        free(r);
    }
    /* idle_unload = 1s: the model's memory goes, the next request loads it
     * again */
    for (t = 0; t < 8000; t += 50) {
        if (get_status(s2, &s) == 0 && s.n_models == 1 && s.memory[0] == 0)
            break;
        test_sleep_ms(50);
    }
    CHECK_MSG(s.n_models == 1 && s.memory[0] == 0, "memory %llu after idle_unload",
              (unsigned long long) s.memory[0]);
    CHECK_EQ_INT(model_state(&s, "cfg"), VL2__MODEL_STATE__MODEL_STATE_READY);
    r = calloc(1, sizeof(*r));
    CHECK(generate_on(s2, mha[0].prompt, &mha[0], &o, r) == 0);
    check_golden(r, &mha[0], "after an idle unload");
    CHECK(r->stages & (1u << VL2__STAGE__STAGE_LOADING));
    free(r);
    CHECK(harness_stop(pid, SIGTERM, 10000) == 0);

    /* bad lines: an error naming FILE:LINE, exit status 2 */
    f = fopen(conf, "w");
    if (f) {
        fprintf(f, "[daemon]\nthreads = 2\nmax_sequences = many\n");
        fclose(f);
    }
    (void) unlink(log2);
    pid = harness_start(vl2d_path, NULL, args, log2, NULL);
    status = harness_wait(pid, 10000);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 2);
    text = harness_slurp(log2);
    {
        char want[600];

        snprintf(want, sizeof(want), "%s:3: max_sequences 'many'", conf);
        CHECK_MSG(text && strstr(text, want), "log: %s", text ? text : "(none)");
    }
    free(text);
    f = fopen(conf, "w");
    if (f) {
        fprintf(f, "[daemon]\n[model x]\nbackend = cpu\n[oops]\n");
        fclose(f);
    }
    (void) unlink(log2);
    pid = harness_start(vl2d_path, NULL, args, log2, NULL);
    status = harness_wait(pid, 10000);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 2);
    text = harness_slurp(log2);
    CHECK_MSG(text && strstr(text, ":2: model 'x' has no 'dir'"), "log: %s",
              text ? text : "(none)");
    free(text);
    (void) unlink(conf);
    (void) unlink(log2);
}

/* ---- main ------------------------------------------------------------- */

int main(int argc, char **argv)
{
    const char *args[] = { "--no-config", "--socket", sock, "--model", NULL,
                           "--max-sequences", "8", "--threads", "1", NULL };
    char model_arg[600];
    char *text;

    if (argc != 6) {
        fprintf(stderr, "usage: test-engine VL2D MICRO_MHA_DIR MICRO_MLA_DIR GOLDEN_DIR "
                "IMAGES_DIR\n");
        return 2;
    }
    vl2d_path = argv[1];
    mha_dir = argv[2];
    mla_dir = argv[3];
    golden_dir = argv[4];
    images_dir = argv[5];
    signal(SIGPIPE, SIG_IGN);
    load_golden(&mha[0], "micro-mha", "a384");
    load_golden(&mha[1], "micro-mha", "wide");
    load_golden(&mha[2], "micro-mha", "tall");
    load_golden(&mha[3], "micro-mha", "textonly");
    load_golden(&mla_a384, "micro-mla", "a384");

    tmp = harness_tmpdir();
    if (!tmp)
        return 2;
    snprintf(sock, sizeof(sock), "%s/vl2d.sock", tmp);
    snprintf(log_path, sizeof(log_path), "%s/vl2d.log", tmp);
    snprintf(model_arg, sizeof(model_arg), "micro-mha=%s", mha_dir);
    args[4] = model_arg;
    daemon_pid = harness_start(vl2d_path, sock, args, log_path, NULL);
    if (daemon_pid < 0) {
        text = harness_slurp(log_path);
        fprintf(stderr, "vl2d did not start:\n%s\n", text ? text : "");
        free(text);
        return 1;
    }
    {
        struct status s;
        int t;

        for (t = 0; t < 20000; t += 20) {
            if (get_status(sock, &s) == 0 && model_state(&s, "micro-mha") ==
                VL2__MODEL_STATE__MODEL_STATE_READY)
                break;
            test_sleep_ms(20);
        }
        CHECK_EQ_INT(model_state(&s, "micro-mha"), VL2__MODEL_STATE__MODEL_STATE_READY);
    }
    RUN(test_golden_bytes);
    RUN(test_golden_fd);
    RUN(test_golden_cases);
    RUN(test_stop_and_logprobs);
    RUN(test_top_logprobs);
    RUN(test_run_matches_daemon);
    RUN(test_concurrent_clients);
    RUN(test_one_connection);
    RUN(test_fair_queue);
    RUN(test_killed_client);
    RUN(test_cancel);
    RUN(test_vision_interleaved);
    RUN(test_conversation);
    RUN(test_bad_requests);
    RUN(test_models);
    RUN(test_status_figures);
    RUN(test_config);
    CHECK_EQ_INT(harness_stop(daemon_pid, SIGTERM, 10000), 0);
    if (check_failures) {
        text = harness_slurp(log_path);
        fprintf(stderr, "---- vl2d log ----\n%s\n", text ? text : "");
        free(text);
    }
    {
        char p[600];
        static const char *const files[] = { "config.json", "processor_config.json",
                                             "tokenizer.json", "tokenizer_config.json" };
        size_t i;

        for (i = 0; i < 4; i++) {
            snprintf(p, sizeof(p), "%s/badmodel/%s", tmp, files[i]);
            (void) unlink(p);
        }
        snprintf(p, sizeof(p), "%s/badmodel", tmp);
        (void) rmdir(p);
    }
    harness_rmdir(tmp);
    return check_failures ? 1 : 0;
}

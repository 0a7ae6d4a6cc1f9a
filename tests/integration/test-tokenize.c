/* test-tokenize.c - Tokenize end to end: the real vl2d serving the golden
 * micro-mha checkpoint, asked through libvl2 and through `vl2 tokenize`.
 *
 * Expected ids come from data/tokenizer/README.md (the VL2 prompt) and
 * tests/data/tokenizer/golden.jsonl (the reference tokenizer), never from
 * vl2d; pieces are checked by their concatenation, which must give back the
 * text.  Errors (unknown model, text over the limit, a model that failed to
 * load, bad usage) each get an answer, and the daemon keeps serving.  Texts
 * encode off the event loop: a Status after a 1 MiB text is answered first,
 * and a client gone, a model unloaded, too many texts at once or SIGTERM
 * while one encodes all end cleanly.
 *
 * usage: test-tokenize VL2D VL2 MICRO_MHA_DIR GOLDEN_JSONL */
#include <cjson/cJSON.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../common/check.h"
#include "../common/util.h"
#include "harness.h"
#include "vl2-status.h"
#include "vl2.h"

/* The VL2 prompt of one image and its ids with BOS (data/tokenizer/README.md). */
static const char prompt[] = "<|User|>: <image>\nDescribe this image.\n\n<|Assistant|>:";
static const uint32_t prompt_ids[] = { 0, 128821, 28, 223, 128815, 201, 72188, 566, 4609,
                                       339, 128822, 28 };
#define N_PROMPT_IDS (sizeof(prompt_ids) / sizeof(prompt_ids[0]))
/* tokenizer_config.json's bos_token (README: bos id 0) */
static const char bos_text[] = "<\xef\xbd\x9c" "begin\xe2\x96\x81of\xe2\x96\x81sentence"
                               "\xef\xbd\x9c>";
/* Daemon's limit on a Tokenize text (dispatch.c) */
#define MAX_TEXT ((size_t) 1 << 20)

static const char *vl2d_path, *vl2_path, *mha_dir, *golden_path;
static char *tmp;
static char sock[256], log_path[256];
static pid_t daemon_pid = -1;

static struct vl2_client *open_client(void)
{
    struct vl2_client_opts o = vl2_client_default_opts();
    struct vl2_client *c = NULL;
    struct vl2_err err = { 0 };

    o.socket_path = sock;
    o.timeout_ms = 30000;
    CHECK_MSG(vl2_client_open(&o, &c, &err) == 0, "%s", err.msg);
    return c;
}

/* ---- Tokenize through libvl2 ------------------------------------------ */

struct tk {
    int code;                   /* 0 or the Error's code */
    char msg[VL2_ERR_MSG_SIZE];
    uint32_t *ids;
    size_t n_ids;
    uint8_t *joined;            /* pieces concatenated */
    size_t joined_len;
    size_t n_pieces;
    char first_piece[64];
    int n_replies;
};

static void tk_free(struct tk *t)
{
    free(t->ids);
    free(t->joined);
    memset(t, 0, sizeof(*t));
}

static int on_reply(const Vl2__Response *resp, void *ud)
{
    struct tk *t = ud;
    const Vl2__TokenizeReply *tr = resp->tokenize;
    size_t i, len = 0;

    if (resp->body_case != VL2__RESPONSE__BODY_TOKENIZE)
        return 0;
    t->n_replies++;
    t->ids = malloc((tr->n_ids + 1) * sizeof(*t->ids));
    for (i = 0; i < tr->n_pieces; i++)
        len += tr->pieces[i].len;
    t->joined = malloc(len + 1);
    if (!t->ids || !t->joined)
        return 1;
    if (tr->n_ids)
        memcpy(t->ids, tr->ids, tr->n_ids * sizeof(*t->ids));
    t->n_ids = tr->n_ids;
    for (i = 0; i < tr->n_pieces; i++) {
        const ProtobufCBinaryData *p = &tr->pieces[i];

        if (i == 0) {
            snprintf(t->first_piece, sizeof(t->first_piece), "%.*s", (int) p->len,
                     (const char *) p->data);
            continue;  /* joined holds the pieces after the first */
        }
        memcpy(t->joined + t->joined_len, p->data, p->len);
        t->joined_len += p->len;
    }
    t->n_pieces = tr->n_pieces;
    return 0;
}

/* Tokenize on connection @c (a fresh one when NULL). */
static void tokenize(struct vl2_client *c, const char *model, const char *text, bool bos,
                     bool pieces, struct tk *t)
{
    Vl2__Request req = VL2__REQUEST__INIT;
    Vl2__Tokenize tk = VL2__TOKENIZE__INIT;
    struct vl2_err err = { 0 };
    struct vl2_client *own = NULL;

    memset(t, 0, sizeof(*t));
    if (!c)
        c = own = open_client();
    if (!c) {
        t->code = VL2_EIO;
        return;
    }
    tk.model = (char *) (model ? model : "");
    tk.text = (char *) text;
    tk.has_add_bos = tk.add_bos = bos;
    tk.has_pieces = tk.pieces = pieces;
    req.body_case = VL2__REQUEST__BODY_TOKENIZE;
    req.tokenize = &tk;
    t->code = vl2_client_call(c, &req, NULL, 0, on_reply, t, &err);
    if (t->code < 0)
        snprintf(t->msg, sizeof(t->msg), "%s", err.msg);
    CHECK_MSG(t->code < 0 || t->n_replies == 1, "%d replies", t->n_replies);
    vl2_client_close(own);
}

static bool ids_equal(const uint32_t *a, size_t na, const uint32_t *b, size_t nb)
{
    return na == nb && (na == 0 || !memcmp(a, b, na * sizeof(*a)));
}

/* The daemon still answers Status. */
static void check_serving(const char *after)
{
    Vl2__Request req = VL2__REQUEST__INIT;
    Vl2__Status st = VL2__STATUS__INIT;
    struct vl2_client *c = open_client();
    struct vl2_err err = { 0 };

    CHECK_MSG(c != NULL, "no connection after %s", after);
    if (!c)
        return;
    req.body_case = VL2__REQUEST__BODY_STATUS;
    req.status = &st;
    CHECK_MSG(vl2_client_call(c, &req, NULL, 0, NULL, NULL, &err) == 0,
              "Status after %s: %s", after, err.msg);
    vl2_client_close(c);
    CHECK_MSG(kill(daemon_pid, 0) == 0, "vl2d is gone after %s", after);
}

static void test_prompt(void)
{
    struct tk t;

    tokenize(NULL, "micro-mha", prompt, true, true, &t);
    CHECK_MSG(t.code == 0, "%d %s", t.code, t.msg);
    CHECK(ids_equal(t.ids, t.n_ids, prompt_ids, N_PROMPT_IDS));
    CHECK_EQ_INT(t.n_pieces, N_PROMPT_IDS);
    CHECK_MSG(!strcmp(t.first_piece, bos_text), "BOS piece '%s'", t.first_piece);
    CHECK(t.joined_len == strlen(prompt) && !memcmp(t.joined, prompt, t.joined_len));
    tk_free(&t);
    /* the default model, no BOS, no pieces */
    tokenize(NULL, NULL, prompt, false, false, &t);
    CHECK_MSG(t.code == 0, "%d %s", t.code, t.msg);
    CHECK(ids_equal(t.ids, t.n_ids, prompt_ids + 1, N_PROMPT_IDS - 1));
    CHECK_EQ_INT(t.n_pieces, 0);
    tk_free(&t);
    /* empty text: no ids, or BOS alone */
    tokenize(NULL, NULL, "", false, true, &t);
    CHECK(t.code == 0 && t.n_ids == 0 && t.n_pieces == 0);
    tk_free(&t);
    tokenize(NULL, NULL, "", true, true, &t);
    CHECK(t.code == 0 && t.n_ids == 1 && t.ids[0] == prompt_ids[0] && t.n_pieces == 1);
    tk_free(&t);
}

/* Every line of golden.jsonl on one connection (but the one whose text
 * holds a NUL): ids, and pieces that join into the text. */
static void test_golden_lines(void)
{
    FILE *f = fopen(golden_path, "r");
    struct vl2_client *c = open_client();
    char *line = NULL;
    size_t cap = 0, n_lines = 0;

    CHECK_MSG(f != NULL, "cannot open %s", golden_path);
    if (!f || !c)
        goto out;
    while (getline(&line, &cap, f) > 0) {
        cJSON *o = cJSON_Parse(line), *ids = cJSON_GetObjectItem(o, "ids"), *it;
        const char *text = cJSON_GetStringValue(cJSON_GetObjectItem(o, "text"));
        uint32_t *want = NULL;
        size_t n = 0;
        struct tk t;

        CHECK_MSG(text && cJSON_IsArray(ids), "golden line %zu", n_lines + 1);
        /* a NUL cannot travel in a protobuf-c string (nor in a cJSON one) */
        if (!text || !cJSON_IsArray(ids) || strstr(line, "\\u0000")) {
            cJSON_Delete(o);
            continue;
        }
        want = malloc(((size_t) cJSON_GetArraySize(ids) + 1) * sizeof(*want));
        CHECK(want != NULL);
        if (!want) {
            cJSON_Delete(o);
            break;
        }
        want[n++] = prompt_ids[0];          /* with BOS: the first piece is BOS */
        cJSON_ArrayForEach(it, ids)
            want[n++] = (uint32_t) it->valuedouble;
        tokenize(c, "micro-mha", text, true, true, &t);
        CHECK_MSG(t.code == 0, "golden line %zu: %s", n_lines + 1, t.msg);
        CHECK_MSG(ids_equal(t.ids, t.n_ids, want, n), "golden line %zu: ids differ (%zu, "
                  "want %zu)", n_lines + 1, t.n_ids, n);
        CHECK_MSG(t.joined_len == strlen(text) && !memcmp(t.joined, text, t.joined_len),
                  "golden line %zu: pieces do not join into the text", n_lines + 1);
        tk_free(&t);
        free(want);
        cJSON_Delete(o);
        n_lines++;
    }
    CHECK_MSG(n_lines >= 50, "%zu golden lines", n_lines);
out:
    free(line);
    if (f)
        fclose(f);
    vl2_client_close(c);
}

static void test_errors(void)
{
    struct vl2_client *c = open_client();
    char *big = malloc(MAX_TEXT + 2);
    char bad[300];
    struct tk t;
    FILE *f;

    if (!c || !big)
        goto out;
    /* unknown model, then the same connection still answers */
    tokenize(c, "nope", "hello", false, false, &t);
    CHECK_EQ_INT(t.code, VL2_ENOTFOUND);
    CHECK_MSG(strstr(t.msg, "'nope' is not loaded"), "%s", t.msg);
    tk_free(&t);
    tokenize(c, NULL, prompt, true, false, &t);
    CHECK(t.code == 0 && ids_equal(t.ids, t.n_ids, prompt_ids, N_PROMPT_IDS));
    tk_free(&t);
    check_serving("an unknown model");

    /* one byte over the limit: LIMIT_EXCEEDED; exactly the limit: ids */
    memset(big, 'a', MAX_TEXT + 1);
    big[MAX_TEXT + 1] = '\0';
    tokenize(c, NULL, big, false, false, &t);
    CHECK_EQ_INT(t.code, VL2_ELIMIT);
    CHECK_MSG(strstr(t.msg, "at most 1048576"), "%s", t.msg);
    tk_free(&t);
    big[MAX_TEXT] = '\0';
    tokenize(c, NULL, big, false, false, &t);
    CHECK_MSG(t.code == 0 && t.n_ids > 0, "%d %s", t.code, t.msg);
    tk_free(&t);
    tokenize(c, NULL, prompt, true, false, &t);
    CHECK(t.code == 0 && ids_equal(t.ids, t.n_ids, prompt_ids, N_PROMPT_IDS));
    tk_free(&t);
    check_serving("an oversized text");

    /* a model whose tokenizer loads but whose config does not: its load
     * error, as Generate gets it */
    snprintf(bad, sizeof(bad), "%s/broken", tmp);
    CHECK(mkdir(bad, 0755) == 0);
    {
        char cmd[1400];

        snprintf(cmd, sizeof(cmd), "cp '%s/tokenizer.json' '%s/tokenizer_config.json' '%s/' "
                 "&& cp '%s/processor_config.json' '%s/'", mha_dir, mha_dir, bad, mha_dir, bad);
        CHECK(system(cmd) == 0);
        snprintf(cmd, sizeof(cmd), "%s/config.json", bad);
        f = fopen(cmd, "w");
        CHECK(f != NULL);
        if (f) {
            fputs("{\"model_type\": \"deepseek_vl_v2\"}", f);
            fclose(f);
        }
    }
    {
        Vl2__Request req = VL2__REQUEST__INIT;
        Vl2__LoadModel lm = VL2__LOAD_MODEL__INIT;
        Vl2__UnloadModel um = VL2__UNLOAD_MODEL__INIT;
        struct vl2_err err = { 0 };

        lm.name = (char *) "broken";
        lm.dir = bad;
        req.body_case = VL2__REQUEST__BODY_LOAD_MODEL;
        req.load_model = &lm;
        CHECK(vl2_client_call(c, &req, NULL, 0, NULL, NULL, &err) < 0);
        tokenize(c, "broken", "hello", false, false, &t);
        CHECK_MSG(t.code < 0 && strstr(t.msg, "'broken' failed to load"), "%d %s", t.code,
                  t.msg);
        tk_free(&t);
        um.name = (char *) "broken";
        req = (Vl2__Request) VL2__REQUEST__INIT;
        req.body_case = VL2__REQUEST__BODY_UNLOAD_MODEL;
        req.unload_model = &um;
        CHECK(vl2_client_call(c, &req, NULL, 0, NULL, NULL, &err) == 0);
    }
    check_serving("a failed model");

    /* a model just asked to load: BUSY while its tokenizer loads, then its
     * ids; never a wait on the model */
    {
        Vl2__Request req = VL2__REQUEST__INIT;
        Vl2__LoadModel lm = VL2__LOAD_MODEL__INIT;
        struct vl2_err err = { 0 };
        uint64_t id;
        int tries;

        lm.name = (char *) "second";
        lm.dir = (char *) mha_dir;
        req.body_case = VL2__REQUEST__BODY_LOAD_MODEL;
        req.load_model = &lm;
        CHECK(vl2_client_send(c, &req, NULL, 0, &id, &err) == 0);
        for (tries = 0; tries < 1000; tries++) {
            tokenize(NULL, "second", prompt, true, false, &t);
            if (t.code != VL2_EBUSY)
                break;
            CHECK_MSG(strstr(t.msg, "still loading"), "%s", t.msg);
            tk_free(&t);
            test_sleep_ms(10);
        }
        CHECK_MSG(t.code == 0 && ids_equal(t.ids, t.n_ids, prompt_ids, N_PROMPT_IDS),
                  "%d %s", t.code, t.msg);
        tk_free(&t);
        CHECK_EQ_INT(vl2_client_wait(c, id, NULL, NULL, &err), 0);
    }
    check_serving("a model loading");
out:
    free(big);
    vl2_client_close(c);
}

/* ---- encoding off the loop -------------------------------------------- */

struct order {
    uint64_t ids[64];
    int codes[64];              /* 0, or the Error's code */
    size_t n_ids_of[64];        /* ids in a TokenizeReply */
    int n;
};

static int note_order(const Vl2__Response *resp, void *ud)
{
    struct order *o = ud;

    if (o->n < 64) {
        o->ids[o->n] = resp->id;
        o->codes[o->n] = resp->body_case == VL2__RESPONSE__BODY_ERROR && resp->error
                             ? (int) resp->error->code : 0;
        o->n_ids_of[o->n] = resp->body_case == VL2__RESPONSE__BODY_TOKENIZE && resp->tokenize
                                ? resp->tokenize->n_ids : 0;
        o->n++;
    }
    return 0;
}

static uint64_t send_tokenize(struct vl2_client *c, const char *model, const char *text)
{
    Vl2__Request req = VL2__REQUEST__INIT;
    Vl2__Tokenize tk = VL2__TOKENIZE__INIT;
    struct vl2_err err = { 0 };
    uint64_t id = 0;

    tk.model = (char *) (model ? model : "");
    tk.text = (char *) text;
    req.body_case = VL2__REQUEST__BODY_TOKENIZE;
    req.tokenize = &tk;
    CHECK_MSG(vl2_client_send(c, &req, NULL, 0, &id, &err) == 0, "%s", err.msg);
    return id;
}

static uint64_t send_status(struct vl2_client *c)
{
    Vl2__Request req = VL2__REQUEST__INIT;
    Vl2__Status st = VL2__STATUS__INIT;
    struct vl2_err err = { 0 };
    uint64_t id = 0;

    req.body_case = VL2__REQUEST__BODY_STATUS;
    req.status = &st;
    CHECK_MSG(vl2_client_send(c, &req, NULL, 0, &id, &err) == 0, "%s", err.msg);
    return id;
}

/* A text of MAX_TEXT bytes of made-up words (a fixed pseudo-random
 * sequence), which takes the tokenizer a while: few repeated pieces. */
static char *long_text(void)
{
    char *t = malloc(MAX_TEXT + 1);
    uint32_t x = 12345;
    size_t i;

    if (!t)
        return NULL;
    for (i = 0; i < MAX_TEXT; i++) {
        x = x * 1664525u + 1013904223u;
        t[i] = (x >> 24) % 7 == 0 ? ' ' : (char) ('a' + (x >> 16) % 26);
    }
    t[MAX_TEXT] = '\0';
    return t;
}

/* Tokenize encodes on a thread pool: a Status sent after a long text on the
 * same connection is answered first; a client gone before its answer, a model
 * unloaded while its tokenizer encodes, and more long texts than the daemon
 * encodes at once (BUSY) all leave it serving. */
static void test_off_loop(void)
{
    Vl2__Request req = VL2__REQUEST__INIT;
    struct vl2_client *c = open_client();
    char *text = long_text();
    struct vl2_err err = { 0 };
    struct order o;
    uint64_t tid, sid;
    int i, busy = 0, ok = 0;

    if (!c || !text)
        goto out;
    memset(&o, 0, sizeof(o));
    tid = send_tokenize(c, NULL, text);
    sid = send_status(c);
    for (i = 0; i < 2; i++)
        CHECK_EQ_INT(vl2_client_recv(c, note_order, &o, &err), 1);
    CHECK_EQ_INT(o.n, 2);
    CHECK_MSG(o.ids[0] == sid && o.ids[1] == tid,
              "replies in the order %llu, %llu (status %llu, tokenize %llu)",
              (unsigned long long) o.ids[0], (unsigned long long) o.ids[1],
              (unsigned long long) sid, (unsigned long long) tid);
    CHECK_MSG(o.codes[1] == 0 && o.n_ids_of[1] > MAX_TEXT / 8, "tokenize: %d, %zu ids",
              o.codes[1], o.n_ids_of[1]);

    /* a client that leaves before its answer */
    {
        struct vl2_client *gone = open_client();
        if (gone) {
            send_tokenize(gone, NULL, text);
            vl2_client_close(gone);
        }
        check_serving("a client gone while its text encodes");
    }

    /* a model unloaded while its tokenizer encodes: the answer still comes */
    {
        Vl2__LoadModel lm = VL2__LOAD_MODEL__INIT;
        Vl2__UnloadModel um = VL2__UNLOAD_MODEL__INIT;
        struct vl2_client *other = open_client();
        uint64_t id;

        lm.name = (char *) "third";
        lm.dir = (char *) mha_dir;
        req = (Vl2__Request) VL2__REQUEST__INIT;
        req.body_case = VL2__REQUEST__BODY_LOAD_MODEL;
        req.load_model = &lm;
        CHECK(vl2_client_call(c, &req, NULL, 0, NULL, NULL, &err) == 0);
        id = send_tokenize(c, "third", text);
        um.name = (char *) "third";
        req = (Vl2__Request) VL2__REQUEST__INIT;
        req.body_case = VL2__REQUEST__BODY_UNLOAD_MODEL;
        req.unload_model = &um;
        CHECK(other && vl2_client_call(other, &req, NULL, 0, NULL, NULL, &err) == 0);
        vl2_client_close(other);
        memset(&o, 0, sizeof(o));
        CHECK_EQ_INT(vl2_client_wait(c, id, note_order, &o, &err), 0);
        CHECK_MSG(o.n == 1 && o.n_ids_of[0] > MAX_TEXT / 8, "%d replies, %zu ids", o.n,
                  o.n_ids_of[0]);
        check_serving("a model unloaded while its tokenizer encodes");
    }

    /* more long texts at once than the daemon encodes: BUSY for the rest.
     * Two per connection: a client that sends on without reading its answers
     * gets no more reading from vl2d once 4 MiB of them wait (conn.c), and
     * these answers take 0.7 MB each. */
    {
        enum { N_CONN = 12, PER = 2 };
        struct vl2_client *cs[N_CONN];
        int j, n = 0;

        memset(&o, 0, sizeof(o));
        for (j = 0; j < N_CONN; j++) {
            cs[j] = open_client();
            for (i = 0; cs[j] && i < PER; i++, n++)
                send_tokenize(cs[j], NULL, text);
        }
        for (j = 0; j < N_CONN; j++) {
            for (i = 0; cs[j] && i < PER; i++)
                CHECK_EQ_INT(vl2_client_recv(cs[j], note_order, &o, &err), 1);
            vl2_client_close(cs[j]);
        }
        for (i = 0; i < o.n; i++) {
            if (o.codes[i] == VL2_EBUSY)
                busy++;
            else if (o.codes[i] == 0 && o.n_ids_of[i] > MAX_TEXT / 8)
                ok++;
        }
        fprintf(stderr, "  %d long texts at once: %d answered, %d BUSY\n", n, ok, busy);
        CHECK_MSG(n == N_CONN * PER && busy + ok == n && busy > 0 && ok >= 16,
                  "%d answered, %d BUSY of %d", ok, busy, n);
    }
    check_serving("24 long texts at once");
out:
    free(text);
    vl2_client_close(c);
}

/* SIGTERM while a long text encodes: vl2d answers it (an Error saying it is
 * shutting down, or the ids when the encoding won the race) and exits 0. */
static void stop_while_encoding(void)
{
    struct vl2_client *c = open_client();
    char *text = long_text();
    struct vl2_err err = { 0 };
    struct order o;
    uint64_t tid;
    int r;

    if (!c || !text) {
        CHECK_EQ_INT(harness_stop(daemon_pid, SIGTERM, 10000), 0);
        goto out;
    }
    tid = send_tokenize(c, NULL, text);
    /* the Status answer shows that vl2d has read the Tokenize before it */
    CHECK(vl2_client_wait(c, send_status(c), NULL, NULL, &err) == 0);
    CHECK_EQ_INT(harness_stop(daemon_pid, SIGTERM, 10000), 0);
    memset(&o, 0, sizeof(o));
    r = vl2_client_wait(c, tid, note_order, &o, &err);
    CHECK_MSG((r == VL2_ECANCELED && strstr(err.msg, "shutting down")) ||
                  (r == 0 && o.n_ids_of[0] > MAX_TEXT / 8),
              "%d %s", r, err.msg);
    fprintf(stderr, "  SIGTERM while encoding: %s\n", r == 0 ? "ids" : err.msg);
out:
    free(text);
    vl2_client_close(c);
}

/* ---- vl2 tokenize ----------------------------------------------------- */

/* Run vl2 with @args (after "--socket SOCK"); with @input, standard input
 * reads that file. */
static int run_vl2(const char *input, const char *const *args, char **out, char **err)
{
    const char *argv[24];
    size_t n = 0;

    if (input) {
        argv[n++] = "/bin/sh";
        argv[n++] = "-c";
        argv[n++] = "f=$1; shift; exec \"$@\" < \"$f\"";
        argv[n++] = "sh";
        argv[n++] = input;
    }
    argv[n++] = vl2_path;
    argv[n++] = "--socket";
    argv[n++] = sock;
    while (*args && n < 23)
        argv[n++] = *args++;
    argv[n] = NULL;
    return harness_run(argv, NULL, out, err);
}

static char *expected_line(const uint32_t *ids, size_t n)
{
    char *s = malloc(16 * n + 4), *p = s;
    size_t i;

    if (!s)
        return strdup("(out of memory)");
    p += sprintf(p, "[");
    for (i = 0; i < n; i++)
        p += sprintf(p, i ? ", %u" : "%u", ids[i]);
    sprintf(p, "]\n");
    return s;
}

static bool write_file(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    bool ok = f && fwrite(p, 1, n, f) == n;

    if (f && fclose(f) != 0)
        ok = false;
    return ok;
}

/* The text a --json piece stands for: \xNN back to its byte. */
static size_t unescape_piece(const char *s, uint8_t *out)
{
    size_t n = 0;

    while (*s) {
        unsigned v;

        if (s[0] == '\\' && s[1] == 'x' && sscanf(s + 2, "%2x", &v) == 1) {
            out[n++] = (uint8_t) v;
            s += 4;
        } else {
            out[n++] = (uint8_t) *s++;
        }
    }
    return n;
}

static void test_cli(void)
{
    char *out = NULL, *err = NULL, *want;
    char in_path[300], big_path[300];
    int rc;

    /* TEXT on the command line, with BOS: the README's list */
    rc = run_vl2(NULL, (const char *[]) { "tokenize", "--bos", prompt, NULL }, &out, &err);
    want = expected_line(prompt_ids, N_PROMPT_IDS);
    CHECK_MSG(rc == 0 && out && !strcmp(out, want), "rc %d out '%s' err '%s'", rc,
              out ? out : "", err ? err : "");
    free(out);
    free(err);
    free(want);

    /* '-': standard input, a named model, no BOS; the same line as vl2d tokenize */
    snprintf(in_path, sizeof(in_path), "%s/prompt.txt", tmp);
    CHECK(write_file(in_path, prompt, strlen(prompt)));
    rc = run_vl2(in_path, (const char *[]) { "tokenize", "-m", "micro-mha", "-", NULL }, &out,
                 &err);
    want = expected_line(prompt_ids + 1, N_PROMPT_IDS - 1);
    CHECK_MSG(rc == 0 && out && !strcmp(out, want), "rc %d out '%s' err '%s'", rc,
              out ? out : "", err ? err : "");
    free(out);
    free(err);
    free(want);
    {
        const char *argv[] = { "/bin/sh", "-c", "exec \"$0\" tokenize --model \"$1\" --bos "
                               "< \"$2\"", vl2d_path, mha_dir, in_path, NULL };
        char *d_out = NULL, *v_out = NULL;

        rc = harness_run(argv, NULL, &d_out, &err);
        CHECK_MSG(rc == 0, "vl2d tokenize: %s", err ? err : "");
        free(err);
        rc = run_vl2(in_path, (const char *[]) { "tokenize", "--bos", NULL }, &v_out, &err);
        CHECK_MSG(rc == 0 && d_out && v_out && !strcmp(d_out, v_out),
                  "vl2d tokenize '%s', vl2 tokenize '%s'", d_out ? d_out : "",
                  v_out ? v_out : "");
        free(err);
        free(d_out);
        free(v_out);
    }

    /* --json: ids and pieces; the pieces after BOS join into the text */
    rc = run_vl2(NULL, (const char *[]) { "--json", "tokenize", "--bos", prompt, NULL }, &out,
                 &err);
    CHECK_MSG(rc == 0, "rc %d err '%s'", rc, err ? err : "");
    {
        cJSON *o = cJSON_Parse(out ? out : ""), *ids = cJSON_GetObjectItem(o, "ids");
        cJSON *pieces = cJSON_GetObjectItem(o, "pieces"), *it;
        char joined[256] = "";
        size_t i = 0;

        CHECK(cJSON_IsArray(ids) && cJSON_GetArraySize(ids) == (int) N_PROMPT_IDS);
        cJSON_ArrayForEach(it, ids) {
            CHECK(i < N_PROMPT_IDS && it->valuedouble == prompt_ids[i]);
            i++;
        }
        CHECK(cJSON_IsArray(pieces) && cJSON_GetArraySize(pieces) == (int) N_PROMPT_IDS);
        i = 0;
        cJSON_ArrayForEach(it, pieces) {
            const char *s = cJSON_GetStringValue(it);

            CHECK(s != NULL);
            if (s && i == 0)
                CHECK_MSG(!strcmp(s, bos_text), "BOS piece '%s'", s);
            else if (s && strlen(joined) + strlen(s) < sizeof(joined))
                strcat(joined, s);
            i++;
        }
        CHECK_MSG(!strcmp(joined, prompt), "joined '%s'", joined);
        cJSON_Delete(o);
    }
    free(out);
    free(err);

    /* --json with a character split over byte-level tokens: \xNN escapes
     * that give back the bytes */
    {
        static const char text[] = "llama \xf0\x9f\xa6\x99 caf\xc3\xa9";
        uint8_t joined[256], *p = joined;
        bool escaped = false;

        rc = run_vl2(NULL, (const char *[]) { "tokenize", "--json", text, NULL }, &out, &err);
        CHECK_MSG(rc == 0, "rc %d err '%s'", rc, err ? err : "");
        cJSON *o = cJSON_Parse(out ? out : ""), *it;

        cJSON_ArrayForEach(it, cJSON_GetObjectItem(o, "pieces")) {
            const char *s = cJSON_GetStringValue(it);

            if (s && strlen(s) < 64) {
                escaped |= strstr(s, "\\x") != NULL;
                p += unescape_piece(s, p);
            }
        }
        CHECK_MSG((size_t) (p - joined) == strlen(text) && !memcmp(joined, text, strlen(text)),
                  "pieces '%s'", out ? out : "");
        CHECK_MSG(escaped, "no piece escaped: '%s'", out ? out : "");
        cJSON_Delete(o);
        free(out);
        free(err);
    }

    /* errors: one line on stderr, exit 1; --json adds an error event */
    rc = run_vl2(NULL, (const char *[]) { "tokenize", "-m", "nope", "hi", NULL }, &out, &err);
    CHECK_MSG(rc == 1 && err && strstr(err, "'nope' is not loaded") && out && !out[0],
              "rc %d out '%s' err '%s'", rc, out ? out : "", err ? err : "");
    free(out);
    free(err);
    rc = run_vl2(NULL, (const char *[]) { "--json", "tokenize", "-m", "nope", "hi", NULL },
                 &out, &err);
    CHECK_MSG(rc == 1 && out && strstr(out, "\"event\":\"error\"") &&
              strstr(out, "\"status\":\"NOT_FOUND\""), "rc %d out '%s'", rc, out ? out : "");
    free(out);
    free(err);
    snprintf(big_path, sizeof(big_path), "%s/big.txt", tmp);
    {
        char *big = malloc(MAX_TEXT + 1);

        CHECK(big != NULL);
        if (big) {
            memset(big, 'x', MAX_TEXT + 1);
            CHECK(write_file(big_path, big, MAX_TEXT + 1));
            free(big);
        }
    }
    rc = run_vl2(big_path, (const char *[]) { "tokenize", NULL }, &out, &err);
    CHECK_MSG(rc == 1 && err && strstr(err, "at most 1048576"), "rc %d err '%s'", rc,
              err ? err : "");
    free(out);
    free(err);
    check_serving("vl2 tokenize errors");

    /* usage errors: exit 2, nothing sent */
    rc = run_vl2(NULL, (const char *[]) { "tokenize", "--frob", NULL }, &out, &err);
    CHECK_MSG(rc == 2 && err && strstr(err, "--frob"), "rc %d", rc);
    free(out);
    free(err);
    rc = run_vl2(NULL, (const char *[]) { "tokenize", "-", "words", NULL }, &out, &err);
    CHECK_MSG(rc == 2 && err && strstr(err, "not both"), "rc %d", rc);
    free(out);
    free(err);
    rc = run_vl2(NULL, (const char *[]) { "tokenize", "--help", NULL }, &out, &err);
    CHECK_MSG(rc == 0 && out && strstr(out, "usage: vl2 tokenize"), "rc %d", rc);
    free(out);
    free(err);
}

/* ---- main ------------------------------------------------------------- */

int main(int argc, char **argv)
{
    const char *args[] = { "--no-config", "--socket", sock, "--model", NULL,
                           "--threads", "1", NULL };
    char model_arg[600], *text;
    int tries;
    struct tk t;

    if (argc != 5) {
        fprintf(stderr, "usage: test-tokenize VL2D VL2 MICRO_MHA_DIR GOLDEN_JSONL\n");
        return 2;
    }
    vl2d_path = argv[1];
    vl2_path = argv[2];
    mha_dir = argv[3];
    golden_path = argv[4];
    signal(SIGPIPE, SIG_IGN);
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
    /* until the tokenizer is in: BUSY, then answers */
    for (tries = 0; tries < 2000; tries++) {
        int code;

        tokenize(NULL, NULL, "hi", false, false, &t);
        code = t.code;
        tk_free(&t);
        if (code != VL2_EBUSY)
            break;
        test_sleep_ms(10);
    }
    RUN(test_prompt);
    RUN(test_golden_lines);
    RUN(test_errors);
    RUN(test_off_loop);
    RUN(test_cli);
    stop_while_encoding();
    if (check_failures) {
        text = harness_slurp(log_path);
        fprintf(stderr, "---- vl2d log ----\n%s\n", text ? text : "");
        free(text);
    }
    {
        static const char *const files[] = { "config.json", "processor_config.json",
                                             "tokenizer.json", "tokenizer_config.json" };
        char p[600];
        size_t i;

        for (i = 0; i < 4; i++) {
            snprintf(p, sizeof(p), "%s/broken/%s", tmp, files[i]);
            (void) unlink(p);
        }
        snprintf(p, sizeof(p), "%s/broken", tmp);
        (void) rmdir(p);
    }
    harness_rmdir(tmp);
    return check_failures ? 1 : 0;
}

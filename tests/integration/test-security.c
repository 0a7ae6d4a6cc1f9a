/* test-security.c - issue 18: what a client the daemon lets in may not do.
 * The real vl2d serving the micro-mha checkpoint, driven by raw clients; as
 * root, some clients drop to uid 65534 to be "another user".
 *
 *   - LoadModel/UnloadModel for admins only; load directories beneath the
 *     model roots, one answer whether or not the directory exists;
 *   - a symbolic link out of the model directory, a FIFO named config.json:
 *     refused, the load ends; file content never reaches another user;
 *   - Cancel of a load; requests over the limits refused before decoding
 *     (messages, unknown fields, NUL in strings, prompt bytes); a reused
 *     request id is a protocol error about the connection;
 *   - handshake and frame timeouts, per-uid connection cap, the file limit;
 *   - SIGHUP reloads the models of the file, SIGUSR1/2 kill nobody; SIGTERM
 *     ends within --stop-timeout and keeps a second daemon out meanwhile;
 *   - client-supplied names reach the log escaped;
 *   - memory goes back after big requests (VmRSS);
 *   - descriptors: the partial-frame budget, EMFILE reported as such (daemon
 *     C, file limit 128);
 *   - fairness: a connection's long generations, or those of many
 *     connections of one uid, leave a sequence slot for others.
 *
 * usage: test-security VL2D MICRO_MHA_DIR */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <grp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "../common/check.h"
#include "harness.h"

#define OTHER_UID 65534

static const char *vl2d_path;
static const char *mha_dir;
static char *dir;                 /* our temporary directory */
static char sock_a[300], log_a[300], conf_a[300];
static char sock_b[300], log_b[300];
static char roots[300];           /* daemon B's model root */
static char sock_c[300], log_c[300];
static pid_t pid_a = -1, pid_b = -1, pid_c = -1;
#define C_NOFILE 128              /* daemon C's file limit, soft and hard */

static long long now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
    struct timespec ts = { ms / 1000, (long) (ms % 1000) * 1000000L };

    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/* ---- files ------------------------------------------------------------- */

static void write_all(int fd, const void *p, size_t n)
{
    const char *b = p;

    while (n > 0) {
        ssize_t k = write(fd, b, n);

        if (k < 0 && errno == EINTR)
            continue;
        CHECK_MSG(k > 0, "write: %s", strerror(errno));
        if (k <= 0)
            return;
        b += k;
        n -= (size_t) k;
    }
}

static int rm_one(const char *p, const struct stat *st, int flag, struct FTW *f)
{
    (void) st;
    (void) flag;
    (void) f;
    return remove(p);
}

static void write_file(const char *path, const char *text, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);

    CHECK_MSG(fd >= 0, "%s: %s", path, strerror(errno));
    if (fd < 0)
        return;
    write_all(fd, text, strlen(text));
    close(fd);
}

static void copy_file(const char *from, const char *to)
{
    char buf[1 << 16];
    int in = open(from, O_RDONLY | O_CLOEXEC), out;
    ssize_t n;

    out = open(to, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    CHECK_MSG(in >= 0 && out >= 0, "copy %s -> %s", from, to);
    while (in >= 0 && out >= 0 && (n = read(in, buf, sizeof(buf))) > 0)
        write_all(out, buf, (size_t) n);
    if (in >= 0)
        close(in);
    if (out >= 0)
        close(out);
}

/* A model directory @d holding copies of micro-mha's files except
 * config.json (the caller puts what it wants there). */
static void model_dir_but_config(const char *d)
{
    static const char *const names[] = { "tokenizer.json", "tokenizer_config.json",
                                         "processor_config.json" };
    char from[600], to[600];
    size_t i;

    CHECK(mkdir(d, 0755) == 0);
    for (i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        snprintf(from, sizeof(from), "%s/%s", mha_dir, names[i]);
        snprintf(to, sizeof(to), "%s/%s", d, names[i]);
        copy_file(from, to);
    }
}

/* ---- protocol helpers -------------------------------------------------- */

static int client(const char *sock)
{
    int fd = harness_connect(sock);
    Vl2__Response *h;

    CHECK_MSG(fd >= 0, "connect %s", sock);
    if (fd < 0)
        return -1;
    h = harness_hello(fd, 1, 1);
    CHECK(h && h->body_case == VL2__RESPONSE__BODY_HELLO);
    if (h)
        vl2__response__free_unpacked(h, NULL);
    return fd;
}

/* Read responses until one for @id is terminal (Error, ModelLoaded, Done, a
 * reply) or @ms pass; returns it (caller frees) or NULL. */
static Vl2__Response *recv_final(int fd, uint64_t id, int ms)
{
    long long end = now_ms() + ms;

    while (now_ms() < end) {
        Vl2__Response *r = NULL;
        int left = (int) (end - now_ms());

        if (harness_recv(fd, left > 0 ? left : 1, &r) != 1)
            return NULL;
        if (r->id == id && r->body_case != VL2__RESPONSE__BODY_ACCEPTED &&
            r->body_case != VL2__RESPONSE__BODY_PROGRESS &&
            r->body_case != VL2__RESPONSE__BODY_TOKEN)
            return r;
        if (r->id == 0 && r->body_case == VL2__RESPONSE__BODY_ERROR)
            return r;   /* about the connection */
        vl2__response__free_unpacked(r, NULL);
    }
    return NULL;
}

/* Expect an Error for @id with @code whose message holds @needle (NULL: any)
 * and not @never (NULL: no such check). */
static void expect_error(Vl2__Response *r, uint64_t id, int code, const char *needle,
                         const char *never, const char *what)
{
    CHECK_MSG(r != NULL, "%s: no answer", what);
    if (!r)
        return;
    CHECK_MSG(r->body_case == VL2__RESPONSE__BODY_ERROR, "%s: got '%s'", what,
              vl2_ipc_response_name(r->body_case));
    if (r->body_case == VL2__RESPONSE__BODY_ERROR) {
        CHECK_MSG(r->id == id, "%s: id %llu, expected %llu", what,
                  (unsigned long long) r->id, (unsigned long long) id);
        CHECK_MSG(r->error->code == code, "%s: %s, expected %s: %s", what,
                  vl2_status_name(r->error->code), vl2_status_name(code), r->error->message);
        if (needle)
            CHECK_MSG(strstr(r->error->message, needle), "%s: '%s' not in '%s'", what, needle,
                      r->error->message);
        if (never)
            CHECK_MSG(!strstr(r->error->message, never), "%s: '%s' leaked: '%s'", what, never,
                      r->error->message);
    }
    vl2__response__free_unpacked(r, NULL);
}

static void send_load(int fd, uint64_t id, const char *name, const char *d)
{
    Vl2__Request req = VL2__REQUEST__INIT;
    Vl2__LoadModel lm = VL2__LOAD_MODEL__INIT;

    lm.name = (char *) name;
    lm.dir = (char *) d;
    req.has_id = 1;
    req.id = id;
    req.body_case = VL2__REQUEST__BODY_LOAD_MODEL;
    req.load_model = &lm;
    harness_send(fd, &req);
}

static void send_unload(int fd, uint64_t id, const char *name)
{
    Vl2__Request req = VL2__REQUEST__INIT;
    Vl2__UnloadModel um = VL2__UNLOAD_MODEL__INIT;

    um.name = (char *) name;
    req.has_id = 1;
    req.id = id;
    req.body_case = VL2__REQUEST__BODY_UNLOAD_MODEL;
    req.unload_model = &um;
    harness_send(fd, &req);
}

static void send_simple(int fd, uint64_t id, int body_case)
{
    Vl2__Request req = VL2__REQUEST__INIT;
    Vl2__Status st = VL2__STATUS__INIT;
    Vl2__ListModels lm = VL2__LIST_MODELS__INIT;

    req.has_id = 1;
    req.id = id;
    req.body_case = body_case;
    if (body_case == VL2__REQUEST__BODY_STATUS)
        req.status = &st;
    else
        req.list_models = &lm;
    harness_send(fd, &req);
}

/* A Generate of @n user messages of @text; @max_new tokens. */
static void send_generate(int fd, uint64_t id, size_t n, const char *text, uint32_t max_new)
{
    Vl2__Request req = VL2__REQUEST__INIT;
    Vl2__Generate g = VL2__GENERATE__INIT;
    Vl2__Sampling s = VL2__SAMPLING__INIT;
    Vl2__Message *msgs = calloc(n, sizeof(*msgs)), **ptrs = calloc(n, sizeof(*ptrs));
    size_t i;

    for (i = 0; i < n; i++) {
        vl2__message__init(&msgs[i]);
        msgs[i].has_role = 1;
        msgs[i].role = VL2__ROLE__ROLE_USER;
        msgs[i].text = (char *) text;
        ptrs[i] = &msgs[i];
    }
    s.has_max_new_tokens = 1;
    s.max_new_tokens = max_new;
    g.n_messages = n;
    g.messages = ptrs;
    g.sampling = &s;
    req.has_id = 1;
    req.id = id;
    req.body_case = VL2__REQUEST__BODY_GENERATE;
    req.generate = &g;
    harness_send(fd, &req);
    free(msgs);
    free(ptrs);
}

/* The error text ListModels shows @fd for model @name ("" when none, NULL
 * when the model is not listed); caller frees. */
static char *model_error(int fd, const char *name, int *ret_state)
{
    Vl2__Response *r;
    char *e = NULL;
    size_t i;

    send_simple(fd, 77, VL2__REQUEST__BODY_LIST_MODELS);
    r = recv_final(fd, 77, 5000);
    if (!r || r->body_case != VL2__RESPONSE__BODY_MODELS) {
        if (r)
            vl2__response__free_unpacked(r, NULL);
        return NULL;
    }
    for (i = 0; i < r->models->n_models; i++)
        if (!strcmp(r->models->models[i]->name, name)) {
            e = strdup(r->models->models[i]->error ? r->models->models[i]->error : "");
            if (ret_state)
                *ret_state = r->models->models[i]->state;
        }
    vl2__response__free_unpacked(r, NULL);
    return e;
}

/* Wait until model @name is READY/FAILED (1/0), or gone (-1), within @ms. */
static int wait_model(int fd, const char *name, bool want_gone, int ms)
{
    long long end = now_ms() + ms;

    while (now_ms() < end) {
        int st = 0;
        char *e = model_error(fd, name, &st);

        if (!e && want_gone)
            return -1;
        free(e);
        if (e && !want_gone && st == VL2__MODEL_STATE__MODEL_STATE_READY)
            return 1;
        if (e && !want_gone && st == VL2__MODEL_STATE__MODEL_STATE_FAILED)
            return 0;
        sleep_ms(50);
    }
    return -2;
}

/* ---- another user ------------------------------------------------------ */

/* Run @fn as uid/gid OTHER_UID in a child; true when it reported no failed
 * check.  Without root, prints a skip and returns true. */
static bool as_other_user(void (*fn)(void *), void *arg, const char *what)
{
    pid_t pid;
    int status;

    if (geteuid() != 0) {
        printf("skip %s: not root, no second user\n", what);
        return true;
    }
    fflush(NULL);
    pid = fork();
    if (pid == 0) {
        if (setgroups(0, NULL) < 0 || setresgid(OTHER_UID, OTHER_UID, OTHER_UID) < 0 ||
            setresuid(OTHER_UID, OTHER_UID, OTHER_UID) < 0)
            _exit(99);
        fn(arg);
        _exit(check_failures ? 1 : 0);
    }
    status = harness_wait(pid, 30000);
    if (status >= 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0)
        return true;
    fprintf(stderr, "%s: the other user's process ended with status %d (%s %d)\n", what,
            status, status >= 0 && WIFSIGNALED(status) ? "signal" : "exit",
            status >= 0 && WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
    return false;
}

static void other_may_not_load(void *arg)
{
    int fd = client(arg);

    if (fd < 0)
        return;
    send_load(fd, 2, "mine", mha_dir);
    expect_error(recv_final(fd, 2, 5000), 2, VL2_EPERM, "permission denied", NULL,
                 "LoadModel from another user");
    send_unload(fd, 3, "mha");
    expect_error(recv_final(fd, 3, 5000), 3, VL2_EPERM, "permission denied", NULL,
                 "UnloadModel from another user");
    /* the models served are for everyone */
    send_simple(fd, 4, VL2__REQUEST__BODY_STATUS);
    {
        Vl2__Response *r = recv_final(fd, 4, 5000);

        CHECK(r && r->body_case == VL2__RESPONSE__BODY_STATUS);
        if (r)
            vl2__response__free_unpacked(r, NULL);
    }
    close(fd);
}

/* What another user reads of the failed models: never the files' text. */
static void other_sees_no_content(void *arg)
{
    int fd = client(sock_a);
    const char *const *names = arg;

    if (fd < 0)
        return;
    for (; *names; names++) {
        char *e = model_error(fd, *names, NULL);

        CHECK_MSG(e != NULL, "model '%s' not listed", *names);
        if (e) {
            CHECK_MSG(!strstr(e, "TOPSECRET"), "'%s': file content leaked: '%s'", *names, e);
            CHECK_MSG(!strstr(e, "/etc/") && !strstr(e, "secret"), "'%s': '%s'", *names, e);
            CHECK_MSG(strstr(e, "the daemon's log has the details"), "'%s': '%s'", *names, e);
        }
        free(e);
    }
    close(fd);
}

/* ---- tests on daemon A (options of the old daemon only) ---------------- */

static void test_admin_only(void)
{
    CHECK(as_other_user(other_may_not_load, sock_a, "admin only"));
}

/* A symbolic link out of the directory, a FIFO, a file whose content would
 * be quoted: every load ends, and only the daemon's user sees details. */
static void test_hostile_model_dirs(void)
{
    static const char *const failed[] = { "lnk", "quoted", "fifo", NULL };
    char lnk[400], quoted[400], fifo[400], secret[400], p[500];
    long long t0;
    int fd = client(sock_a);

    if (fd < 0)
        return;
    snprintf(secret, sizeof(secret), "%s/secret.json", dir);
    write_file(secret, "{\"model_type\": \"TOPSECRET-1234\"}", 0600);

    snprintf(lnk, sizeof(lnk), "%s/lnk", dir);
    model_dir_but_config(lnk);
    snprintf(p, sizeof(p), "%s/config.json", lnk);
    CHECK(symlink(secret, p) == 0);
    send_load(fd, 10, "lnk", lnk);
    expect_error(recv_final(fd, 10, 10000), 10, VL2_EPERM, "symbolic link", "TOPSECRET",
                 "config.json linking out");

    snprintf(quoted, sizeof(quoted), "%s/quoted", dir);
    model_dir_but_config(quoted);
    snprintf(p, sizeof(p), "%s/config.json", quoted);
    write_file(p, "{\"model_type\": \"TOPSECRET-5678\"}", 0644);
    send_load(fd, 11, "quoted", quoted);
    /* the daemon's own user may read the file anyway: it sees the reason */
    expect_error(recv_final(fd, 11, 10000), 11, VL2_EFORMAT, "model_type", NULL,
                 "bad config.json, own user");

    snprintf(fifo, sizeof(fifo), "%s/fifo", dir);
    model_dir_but_config(fifo);
    snprintf(p, sizeof(p), "%s/config.json", fifo);
    CHECK(mkfifo(p, 0644) == 0);
    t0 = now_ms();
    send_load(fd, 12, "fifo", fifo);
    expect_error(recv_final(fd, 12, 10000), 12, VL2_EIO, "not a regular file", NULL,
                 "config.json a FIFO");
    CHECK_MSG(now_ms() - t0 < 8000, "the FIFO load took %lld ms", now_ms() - t0);
    close(fd);
    CHECK(as_other_user(other_sees_no_content, (void *) failed, "content hidden"));
}

static void test_cancel_load(void)
{
    int fd = client(sock_a);
    Vl2__Request req = VL2__REQUEST__INIT;
    Vl2__Cancel cn = VL2__CANCEL__INIT;
    bool acked = false, canceled = false, loaded = false;
    long long end = now_ms() + 10000;

    if (fd < 0)
        return;
    send_load(fd, 20, "cl", mha_dir);
    cn.has_target_id = 1;
    cn.target_id = 20;
    req.has_id = 1;
    req.id = 21;
    req.body_case = VL2__REQUEST__BODY_CANCEL;
    req.cancel = &cn;
    harness_send(fd, &req);
    while (now_ms() < end && !(acked && (canceled || loaded))) {
        Vl2__Response *r = NULL;

        if (harness_recv(fd, 5000, &r) != 1)
            break;
        if (r->id == 21 && r->body_case == VL2__RESPONSE__BODY_ACK)
            acked = true;
        if (r->id == 20 && r->body_case == VL2__RESPONSE__BODY_ERROR &&
            r->error->code == VL2_ECANCELED)
            canceled = true;
        if (r->id == 20 && r->body_case == VL2__RESPONSE__BODY_LOADED)
            loaded = true;
        vl2__response__free_unpacked(r, NULL);
    }
    CHECK(acked);
    CHECK_MSG(canceled && !loaded, "cancelled %d, loaded %d", canceled, loaded);
    CHECK_EQ_INT(wait_model(fd, "cl", true, 10000), -1);
    close(fd);
}

/* The prompt bytes the model's context can hold, computed from the
 * checkpoint's files on their own: max_position_embeddings of config.json
 * times the longest vocabulary entry of tokenizer.json in bytes (a
 * byte-level vocabulary spells each byte with one character), or that of
 * an added token's content if longer.  0 when the files do not say. */
static size_t context_prompt_bytes(void)
{
    char path[600], *t;
    cJSON *j, *o, *v;
    size_t longest = 0, n_ctx = 0;

    snprintf(path, sizeof(path), "%s/config.json", mha_dir);
    t = harness_slurp(path);
    j = t ? cJSON_Parse(t) : NULL;
    free(t);
    o = cJSON_GetObjectItem(j, "language_config");
    v = cJSON_GetObjectItem(o ? o : j, "max_position_embeddings");
    if (cJSON_IsNumber(v))
        n_ctx = (size_t) v->valuedouble;
    cJSON_Delete(j);
    snprintf(path, sizeof(path), "%s/tokenizer.json", mha_dir);
    t = harness_slurp(path);
    j = t ? cJSON_Parse(t) : NULL;
    free(t);
    o = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "model"), "vocab");
    cJSON_ArrayForEach(v, o) {
        size_t chars = 0;
        const unsigned char *p;

        for (p = (const unsigned char *) v->string; *p; p++)
            chars += (*p & 0xc0) != 0x80;
        if (chars > longest)
            longest = chars;
    }
    cJSON_ArrayForEach(v, cJSON_GetObjectItem(j, "added_tokens")) {
        cJSON *c = cJSON_GetObjectItem(v, "content");

        if (cJSON_IsString(c) && strlen(c->valuestring) > longest)
            longest = strlen(c->valuestring);
    }
    cJSON_Delete(j);
    return n_ctx * longest;
}

/* Requests over the limits, refused before decoding; the connection stays. */
static void test_limits(void)
{
    int fd = client(sock_a);
    uint8_t raw[1024];
    size_t n, i;
    char *big;

    if (fd < 0)
        return;
    /* 5000 messages */
    send_generate(fd, 30, 5000, "", 1);
    expect_error(recv_final(fd, 30, 10000), 30, VL2_ELIMIT, "4096 messages", NULL,
                 "5000 messages");
    /* 100 unknown fields */
    n = 0;
    raw[n++] = 0x08;                  /* id = 31 */
    raw[n++] = 31;
    for (i = 0; i < 100; i++) {
        raw[n++] = 0x78;              /* field 15, varint */
        raw[n++] = 0x01;
    }
    {
        uint8_t hdr[4] = { (uint8_t) n, 0, 0, 0 };

        harness_write(fd, hdr, 4);
        harness_write(fd, raw, n);
    }
    expect_error(recv_final(fd, 31, 5000), 31, VL2_ELIMIT, "unknown fields", NULL,
                 "100 unknown fields");
    /* a NUL inside Tokenize.text */
    {
        static const uint8_t tok[] = {
            0x08, 32,                         /* id = 32 */
            0x4a, 12,                         /* tokenize, 12 bytes */
            0x0a, 3, 'm', 'h', 'a',           /*   model "mha" */
            0x12, 5, 'a', 'b', 0, 'c', 'd',   /*   text "ab\0cd" */
        };
        uint8_t hdr[4] = { sizeof(tok), 0, 0, 0 };

        harness_write(fd, hdr, 4);
        harness_write(fd, tok, sizeof(tok));
    }
    expect_error(recv_final(fd, 32, 5000), 32, VL2_EINVAL, "NUL", NULL, "NUL in a string");
    /* 1.5 MiB of prompt text: over the server's ceiling */
    big = malloc((3u << 19) + 1);
    memset(big, 'a', 3u << 19);
    big[3u << 19] = '\0';
    send_generate(fd, 33, 1, big, 1);
    expect_error(recv_final(fd, 33, 10000), 33, VL2_ELIMIT, "bytes of text, at most", NULL,
                 "1.5 MiB prompt");
    /* one byte more than the model's context can hold (micro-mha: 4096 x
     * 128 bytes = 512 KiB, under the 1 MiB ceiling): refused before it is
     * tokenized, the bound named */
    {
        size_t cap = context_prompt_bytes();
        char want[64];

        CHECK_MSG(cap > 0 && cap < (3u << 19), "context bound %zu", cap);
        if (cap > 0 && cap < (3u << 19)) {
            big[cap + 1] = '\0';
            snprintf(want, sizeof(want), "at most %zu (what the model's context", cap);
            send_generate(fd, 35, 1, big, 1);
            expect_error(recv_final(fd, 35, 10000), 35, VL2_ELIMIT, want, NULL,
                         "a prompt over the context's bytes");
        }
    }
    free(big);
    /* the connection still serves */
    send_simple(fd, 34, VL2__REQUEST__BODY_STATUS);
    {
        Vl2__Response *r = recv_final(fd, 34, 5000);

        CHECK(r && r->body_case == VL2__RESPONSE__BODY_STATUS);
        if (r)
            vl2__response__free_unpacked(r, NULL);
    }
    close(fd);
}

/* A request id reused while the first is live: Error about the connection
 * (id 0, PROTO), then the end; never an Error in the live request's name. */
static void test_duplicate_id(void)
{
    int fd = client(sock_a);
    bool proto = false, wrong = false;

    if (fd < 0)
        return;
    send_generate(fd, 40, 1, "Count to one hundred.", 64);
    send_generate(fd, 40, 1, "Again.", 4);
    for (;;) {
        Vl2__Response *r = NULL;

        if (harness_recv(fd, 10000, &r) != 1)
            break;
        if (r->body_case == VL2__RESPONSE__BODY_ERROR && r->id == 0 &&
            r->error->code == VL2_EPROTO && strstr(r->error->message, "40"))
            proto = true;
        if (r->body_case == VL2__RESPONSE__BODY_ERROR && r->id == 40 &&
            r->error->code != VL2_ECANCELED)
            wrong = true;
        vl2__response__free_unpacked(r, NULL);
        if (proto)
            break;
    }
    CHECK(proto);
    CHECK(!wrong);
    CHECK(proto && harness_expect_eof(fd, 5000));
    close(fd);
}

/* Names and paths from clients reach the log escaped. */
static void test_log_escape(void)
{
    int fd = client(sock_a);
    char *text, *line;

    if (fd < 0)
        return;
    send_load(fd, 50, NULL, "/nonexistent-vl2\nFORGED-LINE \x1b[31m");
    {
        Vl2__Response *r = recv_final(fd, 50, 5000);

        CHECK(r && r->body_case == VL2__RESPONSE__BODY_ERROR);
        if (r)
            vl2__response__free_unpacked(r, NULL);
    }
    close(fd);
    sleep_ms(200);
    text = harness_slurp(log_a);
    CHECK(text != NULL);
    if (!text)
        return;
    CHECK_MSG(strstr(text, "\\x0aFORGED-LINE \\x1b[31m"), "no escaped path in the log");
    for (line = text; line; line = strchr(line, '\n')) {
        if (*line == '\n')
            line++;
        CHECK_MSG(strncmp(line, "FORGED-LINE", 11) != 0, "a forged log line");
    }
    CHECK(!strchr(text, '\x1b'));
    free(text);
}

/* SIGUSR1, SIGUSR2 and SIGHUP leave the daemon serving; SIGHUP reloads the
 * models of the file. */
static void test_signals_reload(void)
{
    char conf[1200];
    int fd;

    kill(pid_a, SIGUSR1);
    kill(pid_a, SIGUSR2);
    sleep_ms(200);
    fd = client(sock_a);
    if (fd < 0)
        return;
    CHECK_EQ_INT(waitpid(pid_a, NULL, WNOHANG), 0);
    snprintf(conf, sizeof(conf), "[model mha]\ndir = %s\n\n[model two]\ndir = %s\n", mha_dir,
             mha_dir);
    write_file(conf_a, conf, 0644);
    kill(pid_a, SIGHUP);
    CHECK_EQ_INT(wait_model(fd, "two", false, 15000), 1);
    snprintf(conf, sizeof(conf), "[model mha]\ndir = %s\n", mha_dir);
    write_file(conf_a, conf, 0644);
    kill(pid_a, SIGHUP);
    CHECK_EQ_INT(wait_model(fd, "two", true, 15000), -1);
    CHECK_EQ_INT(wait_model(fd, "mha", false, 5000), 1);
    /* model roots from the file, at run time */
    snprintf(conf, sizeof(conf), "[daemon]\nmodel_roots = %s\n\n[model mha]\ndir = %s\n",
             roots, mha_dir);
    write_file(conf_a, conf, 0644);
    kill(pid_a, SIGHUP);
    {
        long long end = now_ms() + 10000;
        bool refused = false;

        while (!refused && now_ms() < end) {
            Vl2__Response *r;

            send_load(fd, 99, "three", mha_dir);
            r = recv_final(fd, 99, 5000);
            refused = r && r->body_case == VL2__RESPONSE__BODY_ERROR &&
                      r->error->code == VL2_EPERM &&
                      strstr(r->error->message, "not beneath a model root");
            if (r)
                vl2__response__free_unpacked(r, NULL);
            if (!refused) {
                (void) wait_model(fd, "three", false, 5000);
                send_unload(fd, 98, "three");
                r = recv_final(fd, 98, 5000);
                if (r)
                    vl2__response__free_unpacked(r, NULL);
                (void) wait_model(fd, "three", true, 5000);
                sleep_ms(100);
            }
        }
        CHECK_MSG(refused, "model_roots of the reloaded file not applied");
    }
    snprintf(conf, sizeof(conf), "[model mha]\ndir = %s\n", mha_dir);
    write_file(conf_a, conf, 0644);
    kill(pid_a, SIGHUP);
    close(fd);
    CHECK_EQ_INT(waitpid(pid_a, NULL, WNOHANG), 0);
    {
        char *text = harness_slurp(log_a);

        CHECK(text && strstr(text, "status: model 'mha'"));
        free(text);
    }
}

/* A Generate whose image is a pipe that never ends: a prep thread waits on
 * it.  Returns the write end (keep it open), or -1. */
static int generate_with_stuck_image(int fd, uint64_t id)
{
    Vl2__Request req = VL2__REQUEST__INIT;
    Vl2__Generate g = VL2__GENERATE__INIT;
    Vl2__Message m = VL2__MESSAGE__INIT, *mp = &m;
    Vl2__Image im = VL2__IMAGE__INIT, *ip = &im;
    struct msghdr mh;
    struct iovec iov;
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int))];
    } ctl;
    struct cmsghdr *cm;
    uint8_t *frame;
    size_t len;
    int p[2];

    if (pipe2(p, O_CLOEXEC) < 0)
        return -1;
    im.source_case = VL2__IMAGE__SOURCE_FD_INDEX;
    im.fd_index = 0;
    m.has_role = 1;
    m.role = VL2__ROLE__ROLE_USER;
    m.text = (char *) "<image>\nWhat is this?";
    m.n_images = 1;
    m.images = &ip;
    g.n_messages = 1;
    g.messages = &mp;
    req.has_id = 1;
    req.id = id;
    req.body_case = VL2__REQUEST__BODY_GENERATE;
    req.generate = &g;
    len = vl2__request__get_packed_size(&req);
    frame = malloc(len + 4);
    frame[0] = (uint8_t) len;
    frame[1] = (uint8_t) (len >> 8);
    frame[2] = (uint8_t) (len >> 16);
    frame[3] = (uint8_t) (len >> 24);
    vl2__request__pack(&req, frame + 4);
    memset(&mh, 0, sizeof(mh));
    iov.iov_base = frame;
    iov.iov_len = len + 4;
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = ctl.buf;
    mh.msg_controllen = sizeof(ctl.buf);
    cm = CMSG_FIRSTHDR(&mh);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cm), &p[0], sizeof(int));
    CHECK(sendmsg(fd, &mh, 0) == (ssize_t) (len + 4));
    free(frame);
    close(p[0]);
    return p[1];
}

/* The Accepted of request @id: its queue position, or -1. */
static int accepted_position(int fd, uint64_t id)
{
    long long end = now_ms() + 5000;

    while (now_ms() < end) {
        Vl2__Response *r = NULL;
        int pos = -2;

        if (harness_recv(fd, 5000, &r) != 1)
            return -1;
        if (r->id == id && r->body_case == VL2__RESPONSE__BODY_ACCEPTED)
            pos = (int) r->accepted->queue_position;
        else if (r->id == id && r->body_case == VL2__RESPONSE__BODY_ERROR)
            pos = -1;
        vl2__response__free_unpacked(r, NULL);
        if (pos != -2)
            return pos;
    }
    return -1;
}

/* A Generate that runs long: @max_new tokens, EOS ignored. */
static void send_long(int fd, uint64_t id, uint32_t max_new)
{
    Vl2__Request req = VL2__REQUEST__INIT;
    Vl2__Generate g = VL2__GENERATE__INIT;
    Vl2__Sampling s = VL2__SAMPLING__INIT;
    Vl2__Message m = VL2__MESSAGE__INIT, *mp = &m;

    m.has_role = 1;
    m.role = VL2__ROLE__ROLE_USER;
    m.text = (char *) "Tell a long story.";
    s.has_max_new_tokens = 1;
    s.max_new_tokens = max_new;
    s.ignore_eos = 1;
    g.n_messages = 1;
    g.messages = &mp;
    g.sampling = &s;
    req.has_id = 1;
    req.id = id;
    req.body_case = VL2__REQUEST__BODY_GENERATE;
    req.generate = &g;
    harness_send(fd, &req);
}

/* One connection's long generations (the daemon has 3 sequence slots)
 * leave a slot for another client: it starts at once (position 0). */
static void test_fair_slots(void)
{
    int hog = client(sock_a), other = client(sock_a);
    Vl2__Response *r;
    long long t0;

    if (hog < 0 || other < 0)
        return;
    send_long(hog, 90, 100000);
    CHECK_EQ_INT(accepted_position(hog, 90), 0);
    send_long(hog, 91, 100000);
    (void) accepted_position(hog, 91);
    t0 = now_ms();
    send_generate(other, 92, 1, "Hi.", 2);
    CHECK_EQ_INT(accepted_position(other, 92), 0);
    r = recv_final(other, 92, 10000);
    CHECK_MSG(r && r->body_case == VL2__RESPONSE__BODY_DONE, "the other client's answer");
    if (r)
        vl2__response__free_unpacked(r, NULL);
    printf("fair slots: the other client answered in %lld ms\n", now_ms() - t0);
    close(hog);   /* its generations end with the connection */
    close(other);
}

/* The other user's short request: answered within a few seconds. */
static void other_gets_a_slot(void *arg)
{
    int fd = client(arg);
    Vl2__Response *r;
    long long t0 = now_ms();

    if (fd < 0)
        return;
    send_generate(fd, 99, 1, "Hi.", 2);
    CHECK_EQ_INT(accepted_position(fd, 99), 0);
    r = recv_final(fd, 99, 10000);
    CHECK_MSG(r && r->body_case == VL2__RESPONSE__BODY_DONE, "the other user's answer");
    if (r)
        vl2__response__free_unpacked(r, NULL);
    CHECK_MSG(now_ms() - t0 < 5000, "the other user waited %lld ms", now_ms() - t0);
    close(fd);
}

/* Fairness between uids (3 sequence slots): three connections of one uid
 * with long generations take two slots, the third waits; the last slot
 * stays for another user, whose request starts at once. */
static void test_fair_uids(void)
{
    int hog[3], i;

    sleep_ms(500);   /* the slots of test_fair_slots's closed connections free */
    for (i = 0; i < 3; i++)
        hog[i] = client(sock_a);
    if (hog[0] < 0 || hog[1] < 0 || hog[2] < 0)
        goto out_close;
    send_long(hog[0], 120, 100000);
    CHECK_EQ_INT(accepted_position(hog[0], 120), 0);
    send_long(hog[1], 121, 100000);
    CHECK_EQ_INT(accepted_position(hog[1], 121), 0);
    send_long(hog[2], 122, 100000);
    CHECK_MSG(accepted_position(hog[2], 122) > 0,
              "a third connection of one uid took the last slot");
    CHECK(as_other_user(other_gets_a_slot, sock_a, "fair uids"));
out_close:
    for (i = 0; i < 3; i++)
        if (hog[i] >= 0)
            close(hog[i]);   /* their generations end with the connections */
    sleep_ms(300);
}

/* Two Generates of one connection whose image descriptors never end do not
 * hold both prep threads: another client's text request is answered. */
static void test_fair_prep(void)
{
    int hog = client(sock_b), other = client(sock_b), w1, w2;
    Vl2__Response *r;
    long long t0;

    if (hog < 0 || other < 0)
        return;
    w1 = generate_with_stuck_image(hog, 95);
    w2 = generate_with_stuck_image(hog, 96);
    sleep_ms(300);
    t0 = now_ms();
    send_generate(other, 97, 1, "Hi.", 2);
    r = recv_final(other, 97, 15000);
    CHECK_MSG(r && r->body_case == VL2__RESPONSE__BODY_DONE, "the other client's answer");
    if (r)
        vl2__response__free_unpacked(r, NULL);
    CHECK_MSG(now_ms() - t0 < 3000, "the other client waited %lld ms for a prep thread",
              now_ms() - t0);
    if (w1 >= 0)
        close(w1);
    if (w2 >= 0)
        close(w2);
    close(hog);
    close(other);
}

/* SIGTERM while a prep thread waits on a descriptor: no second daemon may
 * start on the socket meanwhile; the daemon ends. */
static void test_shutdown_keeps_lock(void)
{
    const char *args[] = { "--no-config", "--socket", sock_a, "--model", mha_dir, NULL };
    int fd = client(sock_a), wfd, st;
    pid_t second;

    if (fd < 0)
        return;
    wfd = generate_with_stuck_image(fd, 60);
    sleep_ms(300);
    kill(pid_a, SIGTERM);
    sleep_ms(300);
    second = harness_start(vl2d_path, NULL, args, log_a, NULL);
    st = harness_wait(second, 5000);
    CHECK_MSG(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) != 0,
              "a second daemon started beside the stopping one");
    if (wfd >= 0)
        close(wfd);   /* the descriptor ends: the prep thread lets go */
    st = harness_wait(pid_a, 15000);
    CHECK(st >= 0);
    pid_a = -1;
    close(fd);
}

/* ---- tests on daemon B (the new options) ------------------------------- */

static void test_model_roots(void)
{
    char inside[400], p[500], from[500];
    int fd = client(sock_b);
    Vl2__Response *r;

    if (fd < 0)
        return;
    send_load(fd, 70, "x1", "/nonexistent-vl2-dir");
    r = recv_final(fd, 70, 5000);
    expect_error(r, 70, VL2_EPERM, "not beneath a model root", NULL, "missing dir");
    send_load(fd, 71, "x2", mha_dir);
    expect_error(recv_final(fd, 71, 5000), 71, VL2_EPERM, "not beneath a model root", NULL,
                 "dir outside the roots");
    /* beneath the root: loads */
    snprintf(inside, sizeof(inside), "%s/good", roots);
    model_dir_but_config(inside);
    snprintf(from, sizeof(from), "%s/config.json", mha_dir);
    snprintf(p, sizeof(p), "%s/config.json", inside);
    copy_file(from, p);
    snprintf(from, sizeof(from), "%s/model.safetensors", mha_dir);
    snprintf(p, sizeof(p), "%s/model.safetensors", inside);
    copy_file(from, p);
    send_load(fd, 72, "good", inside);
    r = recv_final(fd, 72, 20000);
    CHECK_MSG(r && r->body_case == VL2__RESPONSE__BODY_LOADED, "load beneath the root: %s",
              r && r->body_case == VL2__RESPONSE__BODY_ERROR ? r->error->message : "?");
    if (r)
        vl2__response__free_unpacked(r, NULL);
    close(fd);
}

static void test_timeouts(void)
{
    int fd = harness_connect(sock_b);
    long long t0 = now_ms();
    Vl2__Response *r = NULL;

    /* no Hello */
    CHECK(fd >= 0);
    if (fd >= 0) {
        CHECK(harness_recv(fd, 5000, &r) == 1);
        CHECK(r && r->body_case == VL2__RESPONSE__BODY_ERROR &&
              r->error->code == VL2_ETIMEDOUT);
        if (r)
            vl2__response__free_unpacked(r, NULL);
        CHECK(harness_expect_eof(fd, 3000));
        CHECK_MSG(now_ms() - t0 < 4000, "%lld ms", now_ms() - t0);
        close(fd);
    }
    /* half a frame */
    fd = client(sock_b);
    if (fd >= 0) {
        static const uint8_t half[] = { 100, 0, 0, 0, 0x08, 1 };

        t0 = now_ms();
        harness_write(fd, half, sizeof(half));
        r = NULL;
        CHECK(harness_recv(fd, 5000, &r) == 1);
        CHECK(r && r->body_case == VL2__RESPONSE__BODY_ERROR &&
              r->error->code == VL2_ETIMEDOUT && strstr(r->error->message, "frame"));
        if (r)
            vl2__response__free_unpacked(r, NULL);
        CHECK(harness_expect_eof(fd, 3000));
        CHECK_MSG(now_ms() - t0 < 4000, "%lld ms", now_ms() - t0);
        close(fd);
    }
}

static void test_per_uid_cap(void)
{
    int fds[6], i, extra;
    Vl2__Response *r = NULL;

    for (i = 0; i < 6; i++)
        fds[i] = client(sock_b);
    extra = harness_connect(sock_b);
    CHECK(extra >= 0);
    if (extra >= 0) {
        CHECK(harness_recv(extra, 5000, &r) == 1);
        CHECK_MSG(r && r->body_case == VL2__RESPONSE__BODY_ERROR && r->id == 0 &&
                  r->error->code == VL2_EBUSY && strstr(r->error->message, "connections"),
                  "%s", r && r->error ? r->error->message : "?");
        if (r)
            vl2__response__free_unpacked(r, NULL);
        close(extra);
    }
    for (i = 0; i < 6; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    sleep_ms(200);
    i = client(sock_b);   /* room again */
    if (i >= 0)
        close(i);
}

/* Unfinished frames of all clients hold at most --max-partial-bytes (4M
 * here): the client whose frame passes it is refused, the first is not. */
static void test_partial_budget(void)
{
    static uint8_t chunk[2u << 20];
    uint8_t hdr[4] = { 0, 0, 0x30, 0 };   /* 3 MiB announced */
    int a = client(sock_b), b = client(sock_b);
    Vl2__Response *r = NULL;

    if (a < 0 || b < 0)
        return;
    harness_write(a, hdr, 4);
    harness_write(a, chunk, sizeof(chunk));
    sleep_ms(200);
    harness_write(b, hdr, 4);
    harness_write(b, chunk, sizeof(chunk));
    CHECK(harness_recv(b, 3000, &r) == 1);
    CHECK_MSG(r && r->body_case == VL2__RESPONSE__BODY_ERROR && r->id == 0 &&
              r->error->code == VL2_EBUSY && strstr(r->error->message, "unfinished frames"),
              "%s", r && r->error ? r->error->message : "?");
    if (r)
        vl2__response__free_unpacked(r, NULL);
    CHECK(harness_expect_eof(b, 3000));
    /* the first was not refused for it (only its frame timeout may end it) */
    r = NULL;
    if (harness_recv(a, 200, &r) == 1)
        CHECK_MSG(r->body_case == VL2__RESPONSE__BODY_ERROR && r->error->code == VL2_ETIMEDOUT,
                  "the first client got '%s'", r->body_case == VL2__RESPONSE__BODY_ERROR
                                              ? r->error->message : "a response");
    if (r)
        vl2__response__free_unpacked(r, NULL);
    close(a);
    close(b);
}

static void test_nofile_raised(void)
{
    char path[64], *text, *p;
    unsigned long long soft = 0, hard = 0;
    struct rlimit rl;

    snprintf(path, sizeof(path), "/proc/%ld/limits", (long) pid_b);
    text = harness_slurp(path);
    CHECK(text != NULL);
    p = text ? strstr(text, "Max open files") : NULL;
    CHECK(p && sscanf(p + strlen("Max open files"), "%llu %llu", &soft, &hard) == 2);
    getrlimit(RLIMIT_NOFILE, &rl);
    CHECK_MSG(soft == hard || soft >= (1u << 20), "soft %llu, hard %llu", soft, hard);
    free(text);
}

static void test_stop_timeout(void)
{
    int fd = client(sock_b), wfd;
    long long t0;

    if (fd < 0)
        return;
    wfd = generate_with_stuck_image(fd, 80);
    sleep_ms(300);
    t0 = now_ms();
    kill(pid_b, SIGTERM);
    CHECK(harness_wait(pid_b, 6000) >= 0);
    CHECK_MSG(now_ms() - t0 < 4000, "SIGTERM took %lld ms with --stop-timeout 1",
              now_ms() - t0);
    pid_b = -1;
    if (wfd >= 0)
        close(wfd);
    close(fd);
}

/* Resident memory of @pid in KiB (VmRSS of /proc/PID/status), or -1. */
static long rss_kib(pid_t pid)
{
    char path[64], *t, *p;
    long kib = -1;

    snprintf(path, sizeof(path), "/proc/%ld/status", (long) pid);
    t = harness_slurp(path);
    p = t ? strstr(t, "VmRSS:") : NULL;
    if (p)
        kib = strtol(p + 6, NULL, 10);
    free(t);
    return kib;
}

/* Memory goes back after a big request (issue 18: glibc kept the peak
 * until malloc_trim): three 48 MiB Generates of 4096 messages of 12 KiB
 * (refused for their text after decoding, which holds them in small
 * blocks) leave the daemon's resident memory within 16 MiB of before. */
static void test_memory_back(void)
{
    int fd = client(sock_a), i;
    char *text = malloc(12 * 1024 + 1);
    long before, after;

#if defined(__SANITIZE_ADDRESS__)
    printf("skip test_memory_back: ASan's allocator keeps freed blocks in quarantine\n");
    goto out_free;
#endif
    if (fd < 0 || !text)
        goto out_free;
    memset(text, 'm', 12 * 1024);
    text[12 * 1024] = '\0';
    before = rss_kib(pid_a);
    for (i = 0; i < 3; i++) {
        send_generate(fd, 130 + (uint64_t) i, 4096, text, 1);
        expect_error(recv_final(fd, 130 + (uint64_t) i, 20000), 130 + (uint64_t) i,
                     VL2_ELIMIT, "bytes of text", NULL, "48 MiB of messages");
    }
    sleep_ms(200);
    after = rss_kib(pid_a);
    printf("memory back: VmRSS %ld KiB before, %ld KiB after\n", before, after);
    CHECK_MSG(before > 0 && after > 0 && after < before + 16 * 1024,
              "VmRSS %ld KiB before three 48 MiB requests, %ld KiB after", before, after);
out_free:
    free(text);
    if (fd >= 0)
        close(fd);
}

/* Half a frame (100 bytes announced, 2 sent) carrying @n descriptors (the
 * read ends of pipes, closed here once sent). */
static void send_half_with_fds(int fd, unsigned n)
{
    static const uint8_t half[] = { 100, 0, 0, 0, 0x08, 1 };
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int) * 16)];
    } ctl;
    int fds[16], w[16];
    struct msghdr mh;
    struct iovec iov;
    struct cmsghdr *cm;
    unsigned i;

    for (i = 0; i < n && i < 16; i++) {
        int p[2];

        if (pipe2(p, O_CLOEXEC) < 0) {
            p[0] = open("/dev/null", O_RDONLY | O_CLOEXEC);
            p[1] = -1;
        }
        fds[i] = p[0];
        w[i] = p[1];
    }
    memset(&mh, 0, sizeof(mh));
    iov.iov_base = (void *) half;
    iov.iov_len = sizeof(half);
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = ctl.buf;
    mh.msg_controllen = CMSG_SPACE(sizeof(int) * i);
    cm = CMSG_FIRSTHDR(&mh);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int) * i);
    memcpy(CMSG_DATA(cm), fds, sizeof(int) * i);
    CHECK_MSG(sendmsg(fd, &mh, 0) == (ssize_t) sizeof(half), "sendmsg: %s", strerror(errno));
    while (i-- > 0) {
        close(fds[i]);
        if (w[i] >= 0)
            close(w[i]);
    }
}

/* Descriptors daemon C holds now. */
static int fds_of_c(void)
{
    char path[64];
    DIR *d;
    struct dirent *de;
    int n = 0;

    snprintf(path, sizeof(path), "/proc/%ld/fd", (long) pid_c);
    d = opendir(path);
    if (!d)
        return -1;
    while ((de = readdir(d)))
        n += de->d_name[0] != '.';
    closedir(d);
    return n;
}

/* An Error about the connection (id 0) with @code and @needle, or the
 * reason why not printed. */
static void expect_conn_error(int fd, int code, const char *needle, const char *what)
{
    Vl2__Response *r = NULL;

    CHECK_MSG(harness_recv(fd, 5000, &r) == 1, "%s: no answer", what);
    CHECK_MSG(r && r->body_case == VL2__RESPONSE__BODY_ERROR && r->id == 0 &&
              r->error->code == code && strstr(r->error->message, needle),
              "%s: %s", what, r && r->error ? r->error->message : "not an Error");
    if (r)
        vl2__response__free_unpacked(r, NULL);
}

/* Unfinished frames of all clients hold at most a quarter of the file
 * limit in descriptors (at least 64; daemon C: 128 / 4 -> 64): four
 * connections parking 16 each are kept, the fifth is refused with BUSY. */
static void test_partial_fds_budget(void)
{
    int fds[5], i;
    Vl2__Response *r = NULL;

    for (i = 0; i < 5; i++)
        fds[i] = client(sock_c);
    for (i = 0; i < 4; i++)
        if (fds[i] >= 0)
            send_half_with_fds(fds[i], 16);
    sleep_ms(300);
    if (fds[4] >= 0) {
        send_half_with_fds(fds[4], 16);
        expect_conn_error(fds[4], VL2_EBUSY, "hold more than 64 descriptors",
                          "the fifth half frame of 16 descriptors");
    }
    for (i = 0; i < 4; i++)
        if (fds[i] >= 0)
            CHECK_MSG(harness_recv(fds[i], 100, &r) == -1, "a frame within the budget was "
                      "refused: %s", r && r->error ? r->error->message : "closed");
    for (i = 0; i < 5; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    sleep_ms(300);
}

/* Descriptors the kernel could not give the daemon because its table is
 * full are reported as that (BUSY, "out of file descriptors"), not as a
 * client sending too many. */
static void test_emfile_reported(void)
{
    int conns[C_NOFILE], n = 0, last, have;

    while (n < C_NOFILE - 8) {
        have = fds_of_c();
        if (have < 0 || have >= C_NOFILE - 6)
            break;
        conns[n] = client(sock_c);
        if (conns[n] < 0)
            break;
        n++;
    }
    have = fds_of_c();
    printf("emfile: %d connections, daemon C holds %d descriptors\n", n, have);
    CHECK_MSG(have >= C_NOFILE - 6 && have < C_NOFILE, "daemon C holds %d descriptors of %d",
              have, C_NOFILE);
    if (n > 0) {
        last = conns[n - 1];
        send_half_with_fds(last, 16);
        expect_conn_error(last, VL2_EBUSY, "out of file descriptors",
                          "16 descriptors into a nearly full table");
    }
    while (n-- > 0)
        close(conns[n]);
    sleep_ms(300);
}

int main(int argc, char **argv)
{
    char conf[1000], uid_arg[32], self[4096] = "";
    struct rlimit rl, low;

    if (argc > 2 && !strcmp(argv[1], "--nofile-exec")) {   /* the wrapper of daemon C */
        rl.rlim_cur = rl.rlim_max = C_NOFILE;
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
            return 126;
        execv(argv[2], argv + 2);
        return 127;
    }

    if (argc != 3) {
        fprintf(stderr, "usage: test-security VL2D MICRO_MHA_DIR\n");
        return 2;
    }
    vl2d_path = argv[1];
    mha_dir = argv[2];
    signal(SIGPIPE, SIG_IGN);
    dir = harness_tmpdir();
    if (!dir)
        return 1;
    chmod(dir, 0755);   /* the other user reaches the sockets */
    snprintf(uid_arg, sizeof(uid_arg), "%u", (unsigned) OTHER_UID);
    snprintf(sock_a, sizeof(sock_a), "%s/a.sock", dir);
    snprintf(log_a, sizeof(log_a), "%s/a.log", dir);
    snprintf(conf_a, sizeof(conf_a), "%s/a.conf", dir);
    snprintf(sock_b, sizeof(sock_b), "%s/b.sock", dir);
    snprintf(log_b, sizeof(log_b), "%s/b.log", dir);
    snprintf(roots, sizeof(roots), "%s/roots", dir);
    snprintf(sock_c, sizeof(sock_c), "%s/c.sock", dir);
    snprintf(log_c, sizeof(log_c), "%s/c.log", dir);
    mkdir(roots, 0755);
    snprintf(conf, sizeof(conf), "[model mha]\ndir = %s\n", mha_dir);
    write_file(conf_a, conf, 0644);
    {
        const char *args[] = { "--config", conf_a, "--socket", sock_a, "--socket-mode", "0666",
                               "--allow-uid", "0", "--allow-uid", uid_arg, "--no-notify",
                               "--no-socket-activation", "--max-sequences", "3", NULL };
        char me[32];

        if (geteuid() != 0) {   /* the daemon's own uid must stay allowed */
            snprintf(me, sizeof(me), "%u", (unsigned) geteuid());
            args[7] = me;
        }
        pid_a = harness_start(vl2d_path, sock_a, args, log_a, NULL);
    }
    CHECK(pid_a > 0);
    if (pid_a > 0) {
        int fd = client(sock_a);

        CHECK_EQ_INT(wait_model(fd, "mha", false, 30000), 1);
        close(fd);
        RUN(test_admin_only);
        RUN(test_hostile_model_dirs);
        RUN(test_cancel_load);
        RUN(test_limits);
        RUN(test_duplicate_id);
        RUN(test_log_escape);
        RUN(test_signals_reload);
        RUN(test_fair_slots);
        RUN(test_fair_uids);
        RUN(test_memory_back);
        RUN(test_shutdown_keeps_lock);
    }
    if (pid_a > 0)
        harness_stop(pid_a, SIGKILL, 5000);

    /* daemon B starts with a low soft file limit: it raises it */
    getrlimit(RLIMIT_NOFILE, &rl);
    low = rl;
    if (low.rlim_max > 512)
        low.rlim_cur = 512;
    setrlimit(RLIMIT_NOFILE, &low);
    {
        char model_arg[600];
        const char *args[] = { "--no-config", "--socket", sock_b, "--model", model_arg,
                               "--model-root", roots, "--handshake-timeout", "1",
                               "--frame-timeout", "1", "--max-connections-per-uid", "6",
                               "--stop-timeout", "1", "--max-partial-bytes", "4M",
                               "--no-notify",
                               "--no-socket-activation", NULL };

        snprintf(model_arg, sizeof(model_arg), "mha=%s", mha_dir);
        pid_b = harness_start(vl2d_path, sock_b, args, log_b, NULL);
    }
    setrlimit(RLIMIT_NOFILE, &rl);
    CHECK_MSG(pid_b > 0, "daemon B did not start (log %s)", log_b);
    if (pid_b > 0) {
        int fd = client(sock_b);

        CHECK_EQ_INT(wait_model(fd, "mha", false, 30000), 1);
        close(fd);
        RUN(test_nofile_raised);
        RUN(test_model_roots);
        RUN(test_timeouts);
        RUN(test_partial_budget);
        RUN(test_per_uid_cap);
        RUN(test_fair_prep);
        RUN(test_stop_timeout);
    }
    if (pid_b > 0)
        harness_stop(pid_b, SIGKILL, 5000);

    /* daemon C, no model, with a file limit it cannot raise (set by this
     * program run as its wrapper: a hard limit lowered here would stay) */
    if (geteuid() == 0 && readlink("/proc/self/exe", self, sizeof(self) - 1) > 0) {
        const char *args[] = { "--nofile-exec", vl2d_path, "--no-config", "--socket", sock_c,
                               "--max-connections-per-uid", "256", "--no-notify",
                               "--no-socket-activation", NULL };

        pid_c = harness_start(self, sock_c, args, log_c, NULL);
        CHECK_MSG(pid_c > 0, "daemon C did not start (log %s)", log_c);
        if (pid_c > 0) {
            RUN(test_partial_fds_budget);
            RUN(test_emfile_reported);
            harness_stop(pid_c, SIGKILL, 5000);
        }
    } else {
        printf("skip daemon C: not root, no lower hard file limit\n");
    }
    if (check_failures) {
        char *t = harness_slurp(log_a);

        fprintf(stderr, "---- daemon A log ----\n%s", t ? t : "");
        free(t);
        t = harness_slurp(log_b);
        fprintf(stderr, "---- daemon B log ----\n%s", t ? t : "");
        free(t);
        t = harness_slurp(log_c);
        fprintf(stderr, "---- daemon C log ----\n%s", t ? t : "");
        free(t);
    }
    nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    free(dir);
    fprintf(stderr, "test-security: %d check(s) failed\n", check_failures);
    return check_failures ? 1 : 0;
}

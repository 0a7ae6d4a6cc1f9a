/* test-client.c - the vl2 command against a fake daemon: ask, chat, ground,
 * load, unload; their argument handling, text output, --json event lines,
 * exit codes; images as descriptors and as bytes; boxes from Done and from
 * the answer text, checked against pixels computed by hand; the PNG that
 * `vl2 ground -o` draws; Ctrl-C cancelling a request.
 *
 * usage: test-client VL2 IMAGE_JPG */
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <pty.h>
#include <signal.h>
#include <spng.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../common/check.h"
#include "../common/util.h"
#include "fake-daemon.h"
#include "image.h"

static const char *vl2;          /* the command under test */
static const char *jpg;          /* an image file from data/images */
static char dir[64];             /* temporary directory */
static char sock[128], logp[128], png[128], out_png[128];

/* ---- helpers ---------------------------------------------------------- */

/* Start vl2 with @args (NULL-terminated) and @input on its stdin; output
 * goes to files read by finish(). */
struct run {
    pid_t pid;
    char out_path[160], err_path[160];
    char *out, *err;
    int status;   /* exit code, or -1 */
};

static void start(struct run *r, const char *const *args, const char *input)
{
    char in_path[160];
    const char *argv[64];
    size_t n = 0;

    snprintf(r->out_path, sizeof(r->out_path), "%s/stdout", dir);
    snprintf(r->err_path, sizeof(r->err_path), "%s/stderr", dir);
    snprintf(in_path, sizeof(in_path), "%s/stdin", dir);
    {
        FILE *f = fopen(in_path, "w");
        if (f) {
            fputs(input ? input : "", f);
            fclose(f);
        }
    }
    argv[n++] = vl2;
    while (*args && n < 63)
        argv[n++] = *args++;
    argv[n] = NULL;
    r->pid = fork();
    if (r->pid == 0) {
        int in = open(in_path, O_RDONLY), out = open(r->out_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int err = open(r->err_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);

        dup2(in, 0);
        dup2(out, 1);
        dup2(err, 2);
        unsetenv("VL2_SOCKET");
        execv(vl2, (char *const *) argv);
        _exit(127);
    }
}

static int finish(struct run *r)
{
    int st;

    for (int i = 0; i < 3000; i++) {
        if (waitpid(r->pid, &st, WNOHANG) == r->pid)
            goto done;
        test_sleep_ms(10);
    }
    fprintf(stderr, "vl2 did not finish within 30 s\n");
    kill(r->pid, SIGKILL);
    waitpid(r->pid, &st, 0);
done:
    r->status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    r->out = test_slurp(r->out_path, NULL);
    r->err = test_slurp(r->err_path, NULL);
    if (!r->out)
        r->out = strdup("");
    if (!r->err)
        r->err = strdup("");
    return r->status;
}

static int run(struct run *r, const char *const *args, const char *input)
{
    start(r, args, input);
    return finish(r);
}

static void run_done(struct run *r)
{
    free(r->out);
    free(r->err);
    memset(r, 0, sizeof(*r));
}

static pid_t daemon_pid;

/* Empty the fake's log (it keeps the file open for appending). */
static void log_clear(void)
{
    if (truncate(logp, 0) < 0 && errno != ENOENT)
        fprintf(stderr, "truncate '%s': %s\n", logp, strerror(errno));
}

static void fake_start(const struct fake_script *s)
{
    (void) truncate(logp, 0);
    daemon_pid = fake_daemon_start(sock, logp, s);
    if (daemon_pid < 0) {
        fprintf(stderr, "cannot start the fake daemon\n");
        exit(1);
    }
}

static void fake_stop(void)
{
    if (daemon_pid > 0) {
        kill(daemon_pid, SIGTERM);
        waitpid(daemon_pid, NULL, 0);
        daemon_pid = 0;
    }
}

/* The fake's log: an array of the requests it saw (of @type, or all). */
static cJSON *log_entries(const char *type)
{
    char *text = test_slurp(logp, NULL), *line, *save = NULL;
    cJSON *arr = cJSON_CreateArray();

    if (!text)
        return arr;
    for (line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        cJSON *o = cJSON_Parse(line);
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(o, "type");

        if (o && (!type || (cJSON_IsString(t) && !strcmp(t->valuestring, type))))
            cJSON_AddItemToArray(arr, o);
        else
            cJSON_Delete(o);
    }
    free(text);
    return arr;
}

/* Parse each line of @out as JSON; returns an array (NULL when a line is
 * not JSON). */
static cJSON *json_lines(const char *out)
{
    char *text = strdup(out), *line, *save = NULL;
    cJSON *arr = cJSON_CreateArray();

    for (line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        cJSON *o = cJSON_Parse(line);

        if (!o || !cJSON_IsObject(o)) {
            fprintf(stderr, "not a JSON object line: '%s'\n", line);
            cJSON_Delete(o);
            cJSON_Delete(arr);
            free(text);
            return NULL;
        }
        cJSON_AddItemToArray(arr, o);
    }
    free(text);
    return arr;
}

static const char *jstr(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static double jnum(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(v) ? v->valuedouble : -12345.0;
}

static const cJSON *jget(const cJSON *o, const char *key)
{
    return cJSON_GetObjectItemCaseSensitive(o, key);
}

static uint64_t file_fnv(const char *path, size_t *ret_size)
{
    size_t n = 0;
    char *b = test_slurp(path, &n);
    uint64_t h = fake_fnv(b, n);

    free(b);
    *ret_size = n;
    return h;
}

static bool image_matches(const cJSON *img, const char *kind, const char *path)
{
    size_t size;
    uint64_t h = file_fnv(path, &size);
    char hex[17];

    snprintf(hex, sizeof(hex), "%016llx", (unsigned long long) h);
    return img && jstr(img, "kind") && !strcmp(jstr(img, "kind"), kind) &&
           jnum(img, "size") == (double) size && jstr(img, "fnv") && !strcmp(jstr(img, "fnv"), hex);
}

/* A w x h PNG of one colour. */
static void write_png(const char *path, int w, int h, const uint8_t c[3])
{
    uint8_t *rgb = malloc((size_t) w * h * 3);
    spng_ctx *ctx = spng_ctx_new(SPNG_CTX_ENCODER);
    struct spng_ihdr ihdr = { .width = (uint32_t) w, .height = (uint32_t) h, .bit_depth = 8,
                              .color_type = SPNG_COLOR_TYPE_TRUECOLOR };
    FILE *f = fopen(path, "wb");

    for (size_t i = 0; i < (size_t) w * h; i++)
        memcpy(rgb + 3 * i, c, 3);
    spng_set_png_file(ctx, f);
    spng_set_ihdr(ctx, &ihdr);
    if (spng_encode_image(ctx, rgb, (size_t) w * h * 3, SPNG_FMT_PNG, SPNG_ENCODE_FINALIZE))
        abort();
    spng_ctx_free(ctx);
    fclose(f);
    free(rgb);
}

/* ---- ask ---------------------------------------------------------------- */

static const struct fake_script hello_script = {
    .pieces = { "Hello", " world", "!" }, .ids = { 100, 200, 300 }, .n_pieces = 3,
};

static void test_ask(void)
{
    struct run r;
    cJSON *log, *g, *msgs, *m, *imgs, *sp, *lines;

    fake_start(&hello_script);

    /* text mode, image as a descriptor, every sampling option */
    run(&r, (const char *[]) { "--socket", sock, "ask", "-m", "micro", "-i", jpg,
        "--max-new-tokens", "12", "--temperature", "0.5", "--top-p", "0.9", "--top-k", "5",
        "--repetition-penalty=1.25", "--seed", "42", "--ignore-eos", "--stop", "###",
        "--stop", "END", "What", "is", "this?", NULL }, NULL);
    CHECK_MSG(r.status == 0, "exit %d, stderr '%s'", r.status, r.err);
    CHECK_STR(r.out, "Hello world!\n");
    CHECK_STR(r.err, "");   /* not a terminal: nothing extra */
    run_done(&r);
    log = log_entries("generate");
    CHECK_MSG(cJSON_GetArraySize(log) == 1, "%d generate requests", cJSON_GetArraySize(log));
    g = cJSON_GetArrayItem(log, 0);
    CHECK_STR(jstr(g, "model"), "micro");
    CHECK_MSG(cJSON_IsFalse(jget(g, "grounding")), "grounding on for ask");
    msgs = (cJSON *) jget(g, "messages");
    CHECK_MSG(cJSON_GetArraySize(msgs) == 1, "%d messages", cJSON_GetArraySize(msgs));
    m = cJSON_GetArrayItem(msgs, 0);
    CHECK_MSG(jnum(m, "role") == 2, "role %g", jnum(m, "role"));
    CHECK_STR(jstr(m, "text"), "<image>\nWhat is this?");
    imgs = (cJSON *) jget(m, "images");
    CHECK_MSG(cJSON_GetArraySize(imgs) == 1, "%d images", cJSON_GetArraySize(imgs));
    CHECK_MSG(image_matches(cJSON_GetArrayItem(imgs, 0), "fd", jpg), "image by fd");
    CHECK_MSG(jnum(cJSON_GetArrayItem(imgs, 0), "offset") == 0, "fd offset");
    CHECK_MSG(cJSON_IsTrue(jget(cJSON_GetArrayItem(imgs, 0), "regular")), "regular file");
    CHECK_MSG(cJSON_IsFalse(jget(cJSON_GetArrayItem(imgs, 0), "writable")), "read-only fd");
    sp = (cJSON *) jget(g, "sampling");
    CHECK_MSG(jnum(sp, "max_new_tokens") == 12, "max_new_tokens");
    CHECK_MSG(jnum(sp, "temperature") == 0.5, "temperature %g", jnum(sp, "temperature"));
    /* cJSON prints floats with 15 digits: compare as floats */
    CHECK_MSG((float) jnum(sp, "top_p") == 0.9f, "top_p %g", jnum(sp, "top_p"));
    CHECK_MSG(jnum(sp, "top_k") == 5, "top_k");
    CHECK_MSG(jnum(sp, "repetition_penalty") == 1.25, "repetition_penalty");
    CHECK_MSG(jnum(sp, "seed") == 42, "seed");
    CHECK_MSG(cJSON_IsTrue(jget(sp, "ignore_eos")), "ignore_eos");
    CHECK_MSG(cJSON_GetArraySize(jget(sp, "stop")) == 2 &&
          !strcmp(cJSON_GetArrayItem(jget(sp, "stop"), 1)->valuestring, "END"), "stop");
    cJSON_Delete(log);

    /* --send-bytes, two images with explicit tags, defaults left unset */
    log_clear();
    run(&r, (const char *[]) { "ask", "--socket", sock, "--send-bytes", "-i", jpg, "-i", png,
        "Compare <image> with <image>.", NULL }, NULL);
    CHECK_MSG(r.status == 0, "exit %d, stderr '%s'", r.status, r.err);
    CHECK_STR(r.out, "Hello world!\n");
    run_done(&r);
    log = log_entries("generate");
    g = cJSON_GetArrayItem(log, 0);
    m = cJSON_GetArrayItem(jget(g, "messages"), 0);
    CHECK_STR(jstr(m, "text"), "Compare <image> with <image>.");
    imgs = (cJSON *) jget(m, "images");
    CHECK_MSG(cJSON_GetArraySize(imgs) == 2, "%d images", cJSON_GetArraySize(imgs));
    CHECK_MSG(image_matches(cJSON_GetArrayItem(imgs, 0), "data", jpg), "jpg as bytes");
    CHECK_MSG(image_matches(cJSON_GetArrayItem(imgs, 1), "data", png), "png as bytes");
    CHECK_MSG(jnum(g, "n_fds") == 0, "fds passed with --send-bytes");
    sp = (cJSON *) jget(g, "sampling");
    CHECK_MSG(!jget(sp, "temperature") && !jget(sp, "max_new_tokens") && !jget(sp, "seed"),
          "unset sampling fields sent");
    CHECK_STR(jstr(g, "model"), "");
    cJSON_Delete(log);

    /* two images as descriptors: fd_index in order */
    log_clear();
    run(&r, (const char *[]) { "ask", "--socket", sock, "-i", png, "-i", jpg, "two", NULL },
        NULL);
    CHECK_MSG(r.status == 0, "exit %d, stderr '%s'", r.status, r.err);
    run_done(&r);
    log = log_entries("generate");
    g = cJSON_GetArrayItem(log, 0);
    m = cJSON_GetArrayItem(jget(g, "messages"), 0);
    CHECK_STR(jstr(m, "text"), "<image>\n<image>\ntwo");
    imgs = (cJSON *) jget(m, "images");
    CHECK_MSG(jnum(cJSON_GetArrayItem(imgs, 0), "fd_index") == 0 &&
          jnum(cJSON_GetArrayItem(imgs, 1), "fd_index") == 1, "fd indices");
    CHECK_MSG(image_matches(cJSON_GetArrayItem(imgs, 0), "fd", png), "png by fd");
    CHECK_MSG(image_matches(cJSON_GetArrayItem(imgs, 1), "fd", jpg), "jpg by fd");
    CHECK_MSG(jnum(g, "n_fds") == 2, "n_fds %g", jnum(g, "n_fds"));
    CHECK_MSG(!jget(cJSON_GetArrayItem(imgs, 0), "apply_exif"),
          "ask sent apply_exif without --exif/--no-exif");
    cJSON_Delete(log);

    /* --no-exif / --exif: the request says so for every image */
    log_clear();
    run(&r, (const char *[]) { "ask", "--socket", sock, "--no-exif", "-i", png, "-i", jpg,
        "two", NULL }, NULL);
    CHECK_MSG(r.status == 0, "exit %d, stderr '%s'", r.status, r.err);
    run_done(&r);
    log = log_entries("generate");
    imgs = (cJSON *) jget(cJSON_GetArrayItem(jget(cJSON_GetArrayItem(log, 0), "messages"), 0),
                          "images");
    CHECK_MSG(cJSON_IsFalse(jget(cJSON_GetArrayItem(imgs, 0), "apply_exif")) &&
          cJSON_IsFalse(jget(cJSON_GetArrayItem(imgs, 1), "apply_exif")), "--no-exif");
    cJSON_Delete(log);
    log_clear();
    run(&r, (const char *[]) { "ask", "--socket", sock, "--exif", "-i", png, "one", NULL },
        NULL);
    CHECK_MSG(r.status == 0, "exit %d, stderr '%s'", r.status, r.err);
    run_done(&r);
    log = log_entries("generate");
    imgs = (cJSON *) jget(cJSON_GetArrayItem(jget(cJSON_GetArrayItem(log, 0), "messages"), 0),
                          "images");
    CHECK_MSG(cJSON_IsTrue(jget(cJSON_GetArrayItem(imgs, 0), "apply_exif")), "--exif");
    cJSON_Delete(log);

    /* prompt from stdin, a pipe as the image (sent as bytes) */
    log_clear();
    run(&r, (const char *[]) { "ask", "--socket", sock, "-", NULL }, "from stdin\n");
    CHECK_MSG(r.status == 0, "exit %d, stderr '%s'", r.status, r.err);
    run_done(&r);
    log = log_entries("generate");
    m = cJSON_GetArrayItem(jget(cJSON_GetArrayItem(log, 0), "messages"), 0);
    CHECK_STR(jstr(m, "text"), "from stdin\n");
    cJSON_Delete(log);

    /* --json: one object per line and per event */
    run(&r, (const char *[]) { "--json", "ask", "--socket", sock, "hi", NULL }, NULL);
    CHECK_MSG(r.status == 0, "exit %d, stderr '%s'", r.status, r.err);
    CHECK_STR(r.err, "");
    lines = json_lines(r.out);
    CHECK_MSG(lines && cJSON_GetArraySize(lines) == 8, "%d lines: %s",
          lines ? cJSON_GetArraySize(lines) : -1, r.out);
    if (lines && cJSON_GetArraySize(lines) == 8) {
        static const char *const ev[] = { "accepted", "progress", "progress", "progress",
                                          "token", "token", "token", "done" };
        static const char *const stages[] = { "tiling", "vision", "prefill" };
        for (int i = 0; i < 8; i++)
            CHECK_STR(jstr(cJSON_GetArrayItem(lines, i), "event"), ev[i]);
        CHECK_MSG(jnum(cJSON_GetArrayItem(lines, 0), "queue_position") == 0, "queue_position");
        for (int i = 0; i < 3; i++) {
            CHECK_STR(jstr(cJSON_GetArrayItem(lines, 1 + i), "stage"), stages[i]);
            CHECK_MSG(jnum(cJSON_GetArrayItem(lines, 1 + i), "fraction") == 1.0, "fraction");
        }
        CHECK_MSG(jnum(cJSON_GetArrayItem(lines, 4), "id") == 100, "token id");
        CHECK_STR(jstr(cJSON_GetArrayItem(lines, 5), "text"), " world");
        CHECK_MSG(jnum(cJSON_GetArrayItem(lines, 6), "id") == 300, "token id");
        cJSON *d = cJSON_GetArrayItem(lines, 7);
        CHECK_STR(jstr(d, "finish_reason"), "eos");
        CHECK_STR(jstr(d, "text"), "Hello world!");
        CHECK_MSG(jnum(d, "prompt_tokens") == 432 && jnum(d, "image_tokens") == 421 &&
              jnum(d, "generated_tokens") == 3, "token counts");
        CHECK_MSG(jnum(d, "time_to_first_token_s") == 0.25 && jnum(d, "decode_tokens_per_s") == 40,
              "speeds");
        CHECK_MSG(cJSON_IsArray(jget(d, "boxes")) && cJSON_GetArraySize(jget(d, "boxes")) == 0,
              "boxes");
    }
    cJSON_Delete(lines);
    run_done(&r);

    /* usage errors: exit 2, one line, no request */
    log_clear();
    {
        const char *const *bad[] = {
            (const char *[]) { "ask", NULL },
            (const char *[]) { "ask", "--top-p", "2", "x", NULL },
            (const char *[]) { "ask", "--temperature", "-1", "x", NULL },
            (const char *[]) { "ask", "--top-k", "many", "x", NULL },
            (const char *[]) { "ask", "--seed", "-3", "x", NULL },
            (const char *[]) { "ask", "--max-new-tokens", NULL },
            (const char *[]) { "ask", "--bogus", "x", NULL },
            (const char *[]) { "ask", "-o", "x.png", "x", NULL },
            (const char *[]) { "ask", "-i", "a.jpg", "<image> <image>", NULL },
            (const char *[]) { "ask", "", NULL },
            (const char *[]) { "chat", "extra", NULL },
            (const char *[]) { "chat", "-i", "a.jpg", NULL },
            (const char *[]) { "ground", "the cat", NULL },
            (const char *[]) { "ground", "-i", "a.jpg", "-i", "b.jpg", "cat", NULL },
            (const char *[]) { "ground", "-i", "a.jpg", NULL },
            (const char *[]) { "load", "onlyname", NULL },
            (const char *[]) { "load", "a", "b", "c", NULL },
            (const char *[]) { "load", "--weird", "a", "b", NULL },
            (const char *[]) { "unload", NULL },
            (const char *[]) { "unload", "a", "b", NULL },
            (const char *[]) { "nosuchcommand", NULL },
        };
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
            const char *args[16];
            size_t n = 0;

            args[n++] = "--socket";
            args[n++] = sock;
            for (const char *const *p = bad[i]; *p; p++)
                args[n++] = *p;
            args[n] = NULL;
            run(&r, args, NULL);
            CHECK_MSG(r.status == 2, "'%s %s': exit %d", bad[i][0], bad[i][1] ? bad[i][1] : "",
                  r.status);
            CHECK_MSG(r.err[0] && strchr(r.err, '\n') == r.err + strlen(r.err) - 1,
                  "'%s': not one line: '%s'", bad[i][0], r.err);
            CHECK_STR(r.out, "");
            run_done(&r);
        }
        log = log_entries(NULL);
        CHECK_MSG(cJSON_GetArraySize(log) == 0, "usage errors sent %d requests",
              cJSON_GetArraySize(log));
        cJSON_Delete(log);
    }

    /* --help exits 0 with the usage on stdout */
    run(&r, (const char *[]) { "ask", "--help", NULL }, NULL);
    CHECK_MSG(r.status == 0 && strstr(r.out, "usage: vl2 ask"), "ask --help: %d", r.status);
    run_done(&r);

    /* a missing image: exit 1, one line naming it; --json adds an error event */
    run(&r, (const char *[]) { "--socket", sock, "--json", "ask", "-i", "/nonexistent.jpg",
        "x", NULL }, NULL);
    CHECK_MSG(r.status == 1, "exit %d", r.status);
    CHECK_MSG(strstr(r.err, "'/nonexistent.jpg'") != NULL, "stderr '%s'", r.err);
    lines = json_lines(r.out);
    CHECK_MSG(lines && cJSON_GetArraySize(lines) == 1 &&
          !strcmp(jstr(cJSON_GetArrayItem(lines, 0), "event"), "error") &&
          jnum(cJSON_GetArrayItem(lines, 0), "code") == VL2_ENOTFOUND, "error event: %s", r.out);
    cJSON_Delete(lines);
    run_done(&r);
    fake_stop();

    /* no daemon there */
    run(&r, (const char *[]) { "--socket", sock, "ask", "hi", NULL }, NULL);
    CHECK_MSG(r.status == 1, "exit %d", r.status);
    CHECK_MSG(strstr(r.err, sock) != NULL, "stderr '%s'", r.err);
    run_done(&r);
}

static void test_ask_error(void)
{
    static const struct fake_script s = {
        .error_code = VL2_ENOTFOUND, .error_msg = "no model 'nope' (loaded: micro)",
    };
    struct run r;
    cJSON *lines;

    fake_start(&s);
    run(&r, (const char *[]) { "--socket", sock, "ask", "-m", "nope", "hi", NULL }, NULL);
    CHECK_MSG(r.status == 1, "exit %d", r.status);
    CHECK_STR(r.err, "vl2d: no model 'nope' (loaded: micro)\n");
    CHECK_STR(r.out, "");
    run_done(&r);
    run(&r, (const char *[]) { "--socket", sock, "--json", "ask", "-m", "nope", "hi", NULL },
        NULL);
    CHECK_MSG(r.status == 1, "exit %d", r.status);
    lines = json_lines(r.out);
    CHECK_MSG(lines && cJSON_GetArraySize(lines) == 5, "lines: %s", r.out);
    if (lines && cJSON_GetArraySize(lines) == 5) {
        cJSON *e = cJSON_GetArrayItem(lines, 4);
        CHECK_STR(jstr(e, "event"), "error");
        CHECK_MSG(jnum(e, "code") == VL2_ENOTFOUND, "code %g", jnum(e, "code"));
        CHECK_STR(jstr(e, "status"), "NOT_FOUND");
        CHECK_STR(jstr(e, "message"), "vl2d: no model 'nope' (loaded: micro)");
    }
    cJSON_Delete(lines);
    run_done(&r);
    fake_stop();
}

/* Ctrl-C while waiting: the client sends Cancel for its request and exits 1
 * when the daemon confirms. */
static void test_cancel(void)
{
    static const struct fake_script s = { .wait_cancel = true };
    struct run r;
    cJSON *gen, *cancel;
    int i;

    fake_start(&s);
    start(&r, (const char *[]) { "--socket", sock, "ask", "wait", NULL }, NULL);
    for (i = 0; i < 1000; i++) {
        cJSON *w = log_entries("waiting");
        int n = cJSON_GetArraySize(w);
        cJSON_Delete(w);
        if (n > 0)
            break;
        test_sleep_ms(10);
    }
    CHECK_MSG(i < 1000, "the request never arrived");
    test_sleep_ms(50);   /* the client is in its receive loop */
    kill(r.pid, SIGINT);
    finish(&r);
    CHECK_MSG(r.status == 1, "exit %d, stderr '%s'", r.status, r.err);
    CHECK_MSG(strstr(r.err, "canceled by the client") != NULL, "stderr '%s'", r.err);
    gen = log_entries("generate");
    cancel = log_entries("cancel");
    CHECK_MSG(cJSON_GetArraySize(cancel) == 1 &&
          jnum(cJSON_GetArrayItem(cancel, 0), "target_id") ==
          jnum(cJSON_GetArrayItem(gen, 0), "id"), "cancel of the request");
    cJSON_Delete(gen);
    cJSON_Delete(cancel);
    run_done(&r);
    fake_stop();
}

/* ---- chat --------------------------------------------------------------- */

static void test_chat(void)
{
    static const struct fake_script s = { .echo = true };
    struct run r;
    char input[512];
    cJSON *log, *g, *msgs, *lines;

    fake_start(&s);
    snprintf(input, sizeof(input),
             "/image %s\n"
             "first question\n"
             "\n"
             "second question\n"
             "/reset\n"
             "/image %s\n"
             "/image %s\n"
             "third <image> and <image>\n"
             "//slash\n"
             "/quit\n"
             "never sent\n", jpg, png, jpg);
    run(&r, (const char *[]) { "--socket", sock, "chat", "--temperature", "0", NULL }, input);
    CHECK_MSG(r.status == 0, "exit %d, stderr '%s'", r.status, r.err);
    CHECK_STR(r.out, "answer1\nanswer3\nanswer1\nanswer3\n");
    CHECK_STR(r.err, "");
    run_done(&r);
    log = log_entries("generate");
    CHECK_MSG(cJSON_GetArraySize(log) == 4, "%d requests", cJSON_GetArraySize(log));
    /* turn 1: the user's message with the attached image */
    g = cJSON_GetArrayItem(log, 0);
    msgs = (cJSON *) jget(g, "messages");
    CHECK_MSG(cJSON_GetArraySize(msgs) == 1, "turn 1: %d messages", cJSON_GetArraySize(msgs));
    CHECK_STR(jstr(cJSON_GetArrayItem(msgs, 0), "text"), "<image>\nfirst question");
    CHECK_MSG(image_matches(cJSON_GetArrayItem(jget(cJSON_GetArrayItem(msgs, 0), "images"), 0),
                        "fd", jpg), "turn 1 image");
    /* turn 2: the history, the image sent again whole (rewound descriptor) */
    g = cJSON_GetArrayItem(log, 1);
    msgs = (cJSON *) jget(g, "messages");
    CHECK_MSG(cJSON_GetArraySize(msgs) == 3, "turn 2: %d messages", cJSON_GetArraySize(msgs));
    if (cJSON_GetArraySize(msgs) == 3) {
        CHECK_MSG(jnum(cJSON_GetArrayItem(msgs, 0), "role") == 2 &&
              jnum(cJSON_GetArrayItem(msgs, 1), "role") == 3 &&
              jnum(cJSON_GetArrayItem(msgs, 2), "role") == 2, "roles");
        CHECK_STR(jstr(cJSON_GetArrayItem(msgs, 0), "text"), "<image>\nfirst question");
        CHECK_STR(jstr(cJSON_GetArrayItem(msgs, 1), "text"), "answer1");
        CHECK_STR(jstr(cJSON_GetArrayItem(msgs, 2), "text"), "second question");
        CHECK_MSG(image_matches(cJSON_GetArrayItem(jget(cJSON_GetArrayItem(msgs, 0), "images"), 0),
                            "fd", jpg), "turn 2 image (offset %g)",
              jnum(cJSON_GetArrayItem(jget(cJSON_GetArrayItem(msgs, 0), "images"), 0), "offset"));
        CHECK_MSG(cJSON_GetArraySize(jget(cJSON_GetArrayItem(msgs, 2), "images")) == 0,
              "image repeated");
    }
    /* turn 3 after /reset: two images in order, explicit tags kept */
    g = cJSON_GetArrayItem(log, 2);
    msgs = (cJSON *) jget(g, "messages");
    CHECK_MSG(cJSON_GetArraySize(msgs) == 1, "turn 3: %d messages", cJSON_GetArraySize(msgs));
    CHECK_STR(jstr(cJSON_GetArrayItem(msgs, 0), "text"), "third <image> and <image>");
    {
        cJSON *imgs = (cJSON *) jget(cJSON_GetArrayItem(msgs, 0), "images");
        CHECK_MSG(cJSON_GetArraySize(imgs) == 2 &&
              image_matches(cJSON_GetArrayItem(imgs, 0), "fd", png) &&
              image_matches(cJSON_GetArrayItem(imgs, 1), "fd", jpg), "turn 3 images");
    }
    CHECK_MSG(jnum(cJSON_GetArrayItem(log, 2), "n_fds") == 2, "turn 3 fds");
    /* turn 4: '//slash' sends '/slash' */
    msgs = (cJSON *) jget(cJSON_GetArrayItem(log, 3), "messages");
    CHECK_MSG(cJSON_GetArraySize(msgs) == 3 &&
          !strcmp(jstr(cJSON_GetArrayItem(msgs, 2), "text"), "/slash"), "turn 4");
    CHECK_MSG(jnum(jget(cJSON_GetArrayItem(log, 3), "sampling"), "temperature") == 0, "sampling");
    cJSON_Delete(log);

    /* --json: event lines per turn; an unknown command is an error (exit 1)
     * but the conversation goes on; the end of input ends it */
    log_clear();
    run(&r, (const char *[]) { "chat", "--socket", sock, "--json", "--send-bytes", NULL },
        "/image-not-a-command\none\ntwo\n");
    CHECK_MSG(r.status == 1, "exit %d", r.status);
    CHECK_MSG(strstr(r.err, "unknown command '/image-not-a-command'") != NULL, "stderr '%s'",
          r.err);
    lines = json_lines(r.out);
    CHECK_MSG(lines && cJSON_GetArraySize(lines) == 2 * 6, "lines: %s", r.out);
    if (lines && cJSON_GetArraySize(lines) == 12) {
        CHECK_STR(jstr(cJSON_GetArrayItem(lines, 4), "text"), "answer1");
        CHECK_STR(jstr(cJSON_GetArrayItem(lines, 5), "event"), "done");
        CHECK_STR(jstr(cJSON_GetArrayItem(lines, 5), "text"), "answer1");
        CHECK_STR(jstr(cJSON_GetArrayItem(lines, 11), "text"), "answer3");
    }
    cJSON_Delete(lines);
    run_done(&r);

    /* /image of a missing file: reported, nothing attached */
    log_clear();
    run(&r, (const char *[]) { "chat", "--socket", sock, NULL }, "/image /nonexistent.png\nq\n");
    CHECK_MSG(r.status == 1, "exit %d", r.status);
    CHECK_MSG(strstr(r.err, "'/nonexistent.png'") != NULL, "stderr '%s'", r.err);
    CHECK_STR(r.out, "answer1\n");
    log = log_entries("generate");
    msgs = (cJSON *) jget(cJSON_GetArrayItem(log, 0), "messages");
    CHECK_STR(jstr(cJSON_GetArrayItem(msgs, 0), "text"), "q");
    cJSON_Delete(log);
    run_done(&r);
    fake_stop();
}

/* ---- ground ------------------------------------------------------------- */

static const uint8_t grey[3] = { 40, 40, 40 };

static void pixel(const struct vl2_image *im, int x, int y, uint8_t out[3])
{
    memcpy(out, im->rgb + ((size_t) y * im->width + x) * 3, 3);
}

static bool is(const struct vl2_image *im, int x, int y, const uint8_t c[3])
{
    uint8_t p[3];

    pixel(im, x, y, p);
    return !memcmp(p, c, 3);
}

/* The palette as vl2 documents it (client/cli/draw.c): the first two. */
static const uint8_t red[3] = { 230, 25, 75 }, green[3] = { 60, 180, 75 };

static void check_drawing(const char *path)
{
    struct vl2_image im = { 0 };
    struct vl2_err err = { 0 };
    size_t n = 0;
    char *data = test_slurp(path, &n);
    static const uint8_t white[3] = { 255, 255, 255 }, black[3] = { 0, 0, 0 };
    int ink = 0, band = 0;

    CHECK_MSG(data != NULL, "no '%s'", path);
    if (!data)
        return;
    CHECK_MSG(vl2_image_decode(&im, data, n, NULL, &err) == 0, "decode: %s", err.msg);
    free(data);
    if (!im.rgb)
        return;
    CHECK_MSG(im.width == 1000 && im.height == 600, "%dx%d", im.width, im.height);
    /* box 0: (580, 162) - (1000, 540), red, 3 px inward from each edge */
    CHECK_MSG(is(&im, 580, 300, red) && is(&im, 582, 300, red) && is(&im, 583, 300, grey) &&
          is(&im, 579, 300, grey), "left edge");
    CHECK_MSG(is(&im, 700, 162, red) && is(&im, 700, 164, red) && is(&im, 700, 165, grey) &&
          is(&im, 700, 161, grey) == false, "top edge");   /* the label band sits above */
    CHECK_MSG(is(&im, 700, 540, red) && is(&im, 700, 538, red) && is(&im, 700, 537, grey) &&
          is(&im, 700, 541, grey), "bottom edge");
    /* x2 = 1000 is one past the last column: columns 998, 999 are drawn */
    CHECK_MSG(is(&im, 999, 300, red) && is(&im, 998, 300, red) && is(&im, 997, 300, grey),
          "right edge");
    CHECK_MSG(is(&im, 800, 400, grey) && is(&im, 300, 400, grey), "inside / outside untouched");
    /* the label band: 18 px above the box top, red, with white text (red is dark) */
    for (int y = 144; y < 162; y++)
        for (int x = 580; x < 1000; x++) {
            ink += is(&im, x, y, white);
            band += is(&im, x, y, red);
            CHECK_MSG(!is(&im, x, y, black), "black ink on a dark colour at %d,%d", x, y);
        }
    CHECK_MSG(ink > 100, "label ink pixels: %d", ink);
    CHECK_MSG(band > 500, "label band pixels: %d", band);
    CHECK_MSG(is(&im, 700, 143, grey), "above the band");
    /* box 1: (10, 6) - (100, 120), green: no room above (6 < 18), so the label
     * band is inside, from y1 + 3 = 9 to 26 */
    CHECK_MSG(is(&im, 10, 60, green) && is(&im, 12, 60, green) && is(&im, 13, 110, grey) &&
          is(&im, 50, 120, green) && is(&im, 100, 60, green) && is(&im, 101, 60, grey),
          "second box");
    ink = 0;
    for (int y = 9; y < 27; y++)
        for (int x = 10; x < 100; x++)
            ink += is(&im, x, y, white);   /* luma of (60, 180, 75) = 132 <= 140: white */
    CHECK_MSG(is(&im, 50, 6, green) && is(&im, 50, 8, green), "second box top edge");
    CHECK_MSG(ink > 20, "second label ink: %d", ink);
    vl2_image_done(&im);
}

static void check_boxes_json(const char *out, const char *want_label0)
{
    cJSON *lines = json_lines(out), *d, *boxes, *b;

    CHECK_MSG(lines && cJSON_GetArraySize(lines) >= 2, "lines: %s", out);
    if (!lines)
        return;
    d = cJSON_GetArrayItem(lines, cJSON_GetArraySize(lines) - 1);
    CHECK_STR(jstr(d, "event"), "done");
    boxes = (cJSON *) jget(d, "boxes");
    CHECK_MSG(cJSON_GetArraySize(boxes) == 2, "%d boxes", cJSON_GetArraySize(boxes));
    b = cJSON_GetArrayItem(boxes, 0);
    CHECK_STR(jstr(b, "label"), want_label0);
    CHECK_MSG(jnum(b, "x1") == 580 && jnum(b, "y1") == 162 && jnum(b, "x2") == 1000 &&
          jnum(b, "y2") == 540, "box 0: %g %g %g %g", jnum(b, "x1"), jnum(b, "y1"),
          jnum(b, "x2"), jnum(b, "y2"));
    b = cJSON_GetArrayItem(boxes, 1);
    CHECK_MSG(jnum(b, "x1") == 10 && jnum(b, "y1") == 6 && jnum(b, "x2") == 100 &&
          jnum(b, "y2") == 120, "box 1");
    cJSON_Delete(lines);
}

static void test_ground(void)
{
    /* The model's answer as text only: the client parses it.  On 1000 x 600:
     *   x1 = int(580/999*1000) = int(580.58) = 580,  y1 = int(270/999*600) = int(162.16) = 162
     *   x2 = int(999/999*1000) = 1000,               y2 = int(900/999*600) = int(540.54) = 540
     *   second box [[10, 10, 100, 200]]:
     *   int(10/999*1000) = int(10.01) = 10,  int(10/999*600) = int(6.006) = 6
     *   int(100/999*1000) = int(100.10) = 100, int(200/999*600) = int(120.12) = 120 */
    static const struct fake_script text_only = {
        .pieces = { "<|ref|>", "The giraffe at the back.", "<|/ref|>", "<|det|>",
                    "[[580, 270, 999, 900], [10, 10, 100, 200]]", "<|/det|>" },
        .ids = { 1, 2, 3, 4, 5, 6 }, .n_pieces = 6,
    };
    /* The same boxes sent by the daemon in Done (pixels already). */
    static const struct fake_script with_boxes = {
        .pieces = { "whatever the text says" }, .ids = { 9 }, .n_pieces = 1,
        .boxes = { { "giraffe (daemon)", 580, 162, 1000, 540 }, { "second", 10, 6, 100, 120 } },
        .n_boxes = 2,
    };
    /* A label with a line break still prints on one line. */
    static const struct fake_script odd_label = {
        .pieces = { "x" }, .ids = { 9 }, .n_pieces = 1,
        .boxes = { { "two\nlines\tand tab", 1, 2, 3, 4 } }, .n_boxes = 1,
    };
    static const struct fake_script none = {
        .pieces = { "I see no giraffe." }, .ids = { 9 }, .n_pieces = 1,
    };
    struct run r;
    cJSON *log, *g, *m;

    fake_start(&text_only);
    run(&r, (const char *[]) { "--socket", sock, "ground", "-i", png, "-o", out_png,
        "The", "giraffe", "at", "the", "back.", NULL }, NULL);
    CHECK_MSG(r.status == 0, "exit %d, stderr '%s'", r.status, r.err);
    CHECK_STR(r.out, "580 162 1000 540 The giraffe at the back.\n10 6 100 120 The giraffe at the back.\n");
    CHECK_STR(r.err, "");
    run_done(&r);
    log = log_entries("generate");
    g = cJSON_GetArrayItem(log, 0);
    CHECK_MSG(cJSON_IsTrue(jget(g, "grounding")), "grounding off");
    m = cJSON_GetArrayItem(jget(g, "messages"), 0);
    CHECK_STR(jstr(m, "text"), "<image>\n<|ref|>The giraffe at the back.<|/ref|>.");
    CHECK_MSG(image_matches(cJSON_GetArrayItem(jget(m, "images"), 0), "fd", png), "image");
    /* ground pins the EXIF choice it draws with: applied unless --no-exif */
    CHECK_MSG(cJSON_IsTrue(jget(cJSON_GetArrayItem(jget(m, "images"), 0), "apply_exif")),
          "ground did not ask for the EXIF orientation explicitly");
    cJSON_Delete(log);
    check_drawing(out_png);
    (void) unlink(out_png);

    run(&r, (const char *[]) { "--json", "--socket", sock, "ground", "--send-bytes", "-i", png,
        "giraffe", NULL }, NULL);
    CHECK_MSG(r.status == 0, "exit %d, stderr '%s'", r.status, r.err);
    check_boxes_json(r.out, "The giraffe at the back.");
    run_done(&r);
    fake_stop();

    fake_start(&with_boxes);
    run(&r, (const char *[]) { "--socket", sock, "ground", "-i", png, "-o", out_png,
        "giraffe", NULL }, NULL);
    CHECK_MSG(r.status == 0, "exit %d, stderr '%s'", r.status, r.err);
    CHECK_STR(r.out, "580 162 1000 540 giraffe (daemon)\n10 6 100 120 second\n");
    run_done(&r);
    check_drawing(out_png);
    (void) unlink(out_png);
    run(&r, (const char *[]) { "--socket", sock, "--json", "ground", "-i", png, "-o", out_png,
        "giraffe", NULL }, NULL);
    CHECK_MSG(r.status == 0, "exit %d, stderr '%s'", r.status, r.err);
    check_boxes_json(r.out, "giraffe (daemon)");
    {
        cJSON *lines = json_lines(r.out);
        cJSON *d = cJSON_GetArrayItem(lines, cJSON_GetArraySize(lines) - 1);
        CHECK_STR(jstr(d, "output"), out_png);
        CHECK_STR(jstr(d, "text"), "whatever the text says");
        cJSON_Delete(lines);
    }
    run_done(&r);
    (void) unlink(out_png);
    /* ask --grounding: grounding asked for, boxes printed after the answer */
    log_clear();
    run(&r, (const char *[]) { "--socket", sock, "ask", "--grounding", "-i", png,
        "<|grounding|>Where is the giraffe?", NULL }, NULL);
    CHECK_MSG(r.status == 0, "exit %d, stderr '%s'", r.status, r.err);
    CHECK_STR(r.out, "whatever the text says\n580 162 1000 540 giraffe (daemon)\n"
              "10 6 100 120 second\n");
    run_done(&r);
    log = log_entries("generate");
    CHECK_MSG(cJSON_IsTrue(jget(cJSON_GetArrayItem(log, 0), "grounding")), "ask --grounding");
    cJSON_Delete(log);
    /* an output path that cannot be written: exit 1 naming it */
    run(&r, (const char *[]) { "--socket", sock, "ground", "-i", png, "-o",
        "/nonexistent-dir/x.png", "giraffe", NULL }, NULL);
    CHECK_MSG(r.status == 1 && strstr(r.err, "/nonexistent-dir/x.png"), "exit %d, '%s'", r.status,
          r.err);
    run_done(&r);
    fake_stop();

    fake_start(&odd_label);
    run(&r, (const char *[]) { "--socket", sock, "ground", "-i", png, "x", NULL }, NULL);
    CHECK_MSG(r.status == 0, "exit %d", r.status);
    CHECK_STR(r.out, "1 2 3 4 two lines and tab\n");
    run_done(&r);
    run(&r, (const char *[]) { "--socket", sock, "--json", "ground", "-i", png, "x", NULL },
        NULL);
    {
        cJSON *lines = json_lines(r.out);
        cJSON *d = cJSON_GetArrayItem(lines, cJSON_GetArraySize(lines) - 1);
        CHECK_STR(jstr(cJSON_GetArrayItem(jget(d, "boxes"), 0), "label"), "two\nlines\tand tab");
        cJSON_Delete(lines);
    }
    run_done(&r);
    fake_stop();

    /* no boxes: nothing on stdout, a note on stderr, still success; the copy
     * is written unchanged */
    fake_start(&none);
    run(&r, (const char *[]) { "--socket", sock, "ground", "-i", png, "-o", out_png,
        "giraffe", NULL }, NULL);
    CHECK_MSG(r.status == 0, "exit %d, stderr '%s'", r.status, r.err);
    CHECK_STR(r.out, "");
    CHECK_MSG(strstr(r.err, "no boxes") != NULL, "stderr '%s'", r.err);
    run_done(&r);
    {
        struct vl2_image im = { 0 };
        size_t n = 0;
        char *data = test_slurp(out_png, &n);
        CHECK_MSG(data && vl2_image_decode(&im, data, n, NULL, NULL) == 0 &&
              is(&im, 580, 300, grey) && is(&im, 999, 599, grey), "unchanged copy");
        vl2_image_done(&im);
        free(data);
    }
    (void) unlink(out_png);
    fake_stop();
}

/* ---- load / unload ------------------------------------------------------ */

static void test_load(void)
{
    static const struct fake_script s = { .n_pieces = 0 };
    struct run r;
    cJSON *log, *lines;
    char cwd[512], want_dir[600];

    fake_start(&s);
    /* a relative directory is made absolute on the client's side */
    if (!getcwd(cwd, sizeof(cwd)))
        abort();
    if (chdir(dir) < 0)
        abort();
    (void) mkdir("model-dir", 0755);
    run(&r, (const char *[]) { "--socket", sock, "load", "demo", "model-dir", "--backend", "cpu",
        NULL }, NULL);
    if (chdir(cwd) < 0)
        abort();
    CHECK_MSG(r.status == 0, "exit %d, stderr '%s'", r.status, r.err);
    CHECK_STR(r.out, "loaded 'demo' (cpu, 3.0 MiB) in 0.25 s\n");
    CHECK_STR(r.err, "");
    run_done(&r);
    log = log_entries("load");
    snprintf(want_dir, sizeof(want_dir), "%s/model-dir", dir);
    {
        char *real = realpath(want_dir, NULL);
        CHECK_STR(jstr(cJSON_GetArrayItem(log, 0), "dir"), real);
        free(real);
    }
    CHECK_STR(jstr(cJSON_GetArrayItem(log, 0), "name"), "demo");
    CHECK_STR(jstr(cJSON_GetArrayItem(log, 0), "backend"), "cpu");
    CHECK_MSG(cJSON_IsFalse(jget(cJSON_GetArrayItem(log, 0), "progress")), "progress to a pipe");
    cJSON_Delete(log);

    /* --json: progress asked for, one line per event */
    run(&r, (const char *[]) { "--socket", sock, "--json", "load", "demo", dir, NULL }, NULL);
    CHECK_MSG(r.status == 0, "exit %d, stderr '%s'", r.status, r.err);
    lines = json_lines(r.out);
    CHECK_MSG(lines && cJSON_GetArraySize(lines) == 4, "lines: %s", r.out);
    if (lines && cJSON_GetArraySize(lines) == 4) {
        cJSON *l = cJSON_GetArrayItem(lines, 3);
        CHECK_STR(jstr(cJSON_GetArrayItem(lines, 0), "event"), "accepted");
        CHECK_STR(jstr(cJSON_GetArrayItem(lines, 1), "event"), "progress");
        CHECK_STR(jstr(cJSON_GetArrayItem(lines, 1), "stage"), "loading");
        CHECK_MSG(jnum(cJSON_GetArrayItem(lines, 2), "fraction") == 1.0, "fraction");
        CHECK_STR(jstr(l, "event"), "loaded");
        CHECK_STR(jstr(jget(l, "model"), "name"), "demo");
        CHECK_STR(jstr(jget(l, "model"), "state"), "ready");
        CHECK_MSG(jnum(jget(l, "model"), "memory_bytes") == 3 << 20, "memory");
        CHECK_MSG(jnum(l, "load_s") == 0.25, "load_s");
    }
    cJSON_Delete(lines);
    run_done(&r);

    /* a refused load, a missing directory */
    run(&r, (const char *[]) { "--socket", sock, "load", "bad", dir, NULL }, NULL);
    CHECK_MSG(r.status == 1, "exit %d", r.status);
    CHECK_STR(r.err, "vl2d: weights: 'config.json': missing\n");
    run_done(&r);
    run(&r, (const char *[]) { "--socket", sock, "load", "x", "no/such/dir", NULL }, NULL);
    CHECK_MSG(r.status == 1 && strstr(r.err, "'no/such/dir'"), "exit %d '%s'", r.status, r.err);
    run_done(&r);

    /* unload */
    run(&r, (const char *[]) { "--socket", sock, "unload", "demo", NULL }, NULL);
    CHECK_MSG(r.status == 0, "exit %d, stderr '%s'", r.status, r.err);
    CHECK_STR(r.out, "unloaded 'demo'\n");
    run_done(&r);
    run(&r, (const char *[]) { "--socket", sock, "--json", "unload", "demo", NULL }, NULL);
    CHECK_MSG(r.status == 0, "exit %d", r.status);
    CHECK_STR(r.out, "{\"event\":\"unloaded\",\"name\":\"demo\"}\n");
    run_done(&r);
    run(&r, (const char *[]) { "--socket", sock, "unload", "missing", NULL }, NULL);
    CHECK_MSG(r.status == 1, "exit %d", r.status);
    CHECK_STR(r.err, "vl2d: no model 'missing'\n");
    run_done(&r);
    log = log_entries("unload");
    CHECK_MSG(cJSON_GetArraySize(log) == 3, "%d unloads", cJSON_GetArraySize(log));
    cJSON_Delete(log);
    fake_stop();
}

/* ---- progress on a terminal -------------------------------------------- */

/* With standard error on a terminal, progress shows there (and is cleared
 * before the answer); standard output still gets only the answer. */
static void test_terminal(void)
{
    struct run r = { 0 };
    int master, slave, st;
    char buf[8192];
    size_t n = 0;

    fake_start(&hello_script);   /* first: the fake must not hold the terminal open */
    if (openpty(&master, &slave, NULL, NULL, NULL) < 0) {
        printf("skipping the terminal test: openpty: %s\n", strerror(errno));
        fake_stop();
        return;
    }
    (void) fcntl(master, F_SETFD, FD_CLOEXEC);
    (void) fcntl(slave, F_SETFD, FD_CLOEXEC);
    snprintf(r.out_path, sizeof(r.out_path), "%s/stdout", dir);
    r.pid = fork();
    if (r.pid == 0) {
        int out = open(r.out_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);

        dup2(out, 1);
        dup2(slave, 2);
        close(master);
        execl(vl2, vl2, "--socket", sock, "ask", "hi", (char *) NULL);
        _exit(127);
    }
    close(slave);
    for (;;) {
        ssize_t got = read(master, buf + n, sizeof(buf) - 1 - n);
        if (got > 0 && n + (size_t) got < sizeof(buf) - 1) {
            n += (size_t) got;
            continue;
        }
        if (got < 0 && errno == EINTR)
            continue;
        break;   /* EIO once the child has closed the terminal */
    }
    buf[n] = '\0';
    close(master);
    waitpid(r.pid, &st, 0);
    CHECK_MSG(WIFEXITED(st) && WEXITSTATUS(st) == 0, "exit status %d", st);
    r.out = test_slurp(r.out_path, NULL);
    CHECK_STR(r.out, "Hello world!\n");
    CHECK_MSG(strstr(buf, "tiling 100%") && strstr(buf, "vision 100%") &&
          strstr(buf, "prefill 100%"), "progress on the terminal: '%s'", buf);
    CHECK_MSG(strstr(buf, "\r\033[K") != NULL, "progress line not cleared: '%s'", buf);
    free(r.out);
    fake_stop();
}

int main(int argc, char **argv)
{
    char tmpl[] = "/tmp/vl2-client-XXXXXX";

    if (argc != 3) {
        fprintf(stderr, "usage: test-client VL2 IMAGE_JPG\n");
        return 2;
    }
    vl2 = realpath(argv[1], NULL);   /* test_load runs it from another directory */
    if (!vl2) {
        fprintf(stderr, "'%s': %s\n", argv[1], strerror(errno));
        return 2;
    }
    jpg = argv[2];
    signal(SIGPIPE, SIG_IGN);
    alarm(110);   /* a hang fails the test instead of blocking the suite */
    if (!mkdtemp(tmpl))
        return 1;
    snprintf(dir, sizeof(dir), "%s", tmpl);
    snprintf(sock, sizeof(sock), "%s/sock", dir);
    snprintf(logp, sizeof(logp), "%s/log", dir);
    snprintf(png, sizeof(png), "%s/grey.png", dir);
    snprintf(out_png, sizeof(out_png), "%s/out.png", dir);
    write_png(png, 1000, 600, grey);

    test_ask();
    test_ask_error();
    test_cancel();
    test_chat();
    test_ground();
    test_load();
    test_terminal();

    fake_stop();
    {
        char cmd[160];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
        if (system(cmd) != 0)
            fprintf(stderr, "could not remove '%s'\n", dir);
    }
    if (check_failures) {
        fprintf(stderr, "%d check(s) failed\n", check_failures);
        return 1;
    }
    printf("client: all checks passed\n");
    return 0;
}

/* test-client-e2e.c - `vl2 ask` against the real vl2d serving the golden
 * micro-mha checkpoint: greedy, 12 new tokens, image g_a_384.jpg, prompt
 * "Describe this image.", the image sent as a descriptor and as bytes; the
 * answer must be exactly the golden text (tests/data/golden/micro-mha/a384/
 * generated.json 'text') and, with --json, the golden token ids.
 *
 * usage: test-client-e2e VL2D VL2 CKPT_DIR PLUGIN_DIR IMAGE GENERATED_JSON */
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../common/check.h"
#include "../common/util.h"

static char dir[64];

/* Run argv with stdout and stderr captured; returns the exit code or -1. */
static int run(const char *const *argv, char **ret_out, char **ret_err)
{
    char out_path[128], err_path[128];
    int st;
    pid_t pid;

    snprintf(out_path, sizeof(out_path), "%s/out", dir);
    snprintf(err_path, sizeof(err_path), "%s/err", dir);
    pid = fork();
    if (pid == 0) {
        int o = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int e = open(err_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);

        dup2(o, 1);
        dup2(e, 2);
        execv(argv[0], (char *const *) argv);
        _exit(127);
    }
    for (int i = 0; i < 6000; i++) {
        if (waitpid(pid, &st, WNOHANG) == pid) {
            *ret_out = test_slurp(out_path, NULL);
            *ret_err = test_slurp(err_path, NULL);
            return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
        }
        test_sleep_ms(10);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
    *ret_out = test_slurp(out_path, NULL);
    *ret_err = test_slurp(err_path, NULL);
    return -1;
}

static bool can_connect(const char *path)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    bool ok;

    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    ok = fd >= 0 && connect(fd, (struct sockaddr *) &sa, sizeof(sa)) == 0;
    if (fd >= 0)
        close(fd);
    return ok;
}

/* A token event's "top_logprobs" (greedy): @k entries (none and no key when
 * 0), the first the golden id @gid with the event's own logprob, sorted,
 * each with as many bytes as its text has (valid UTF-8 pieces). */
static void check_top(const cJSON *o, const cJSON *gid, int k, const char *how, int n_tok)
{
    const cJSON *top = cJSON_GetObjectItemCaseSensitive(o, "top_logprobs"), *e;
    const cJSON *lp = cJSON_GetObjectItemCaseSensitive(o, "logprob");
    double prev = 0.0;
    int i = 0;

    if (k == 0) {
        CHECK_MSG(top == NULL, "%s: token %d: top_logprobs not asked for", how, n_tok);
        return;
    }
    CHECK_MSG(cJSON_GetArraySize(top) == k, "%s: token %d: %d alternatives", how, n_tok,
              cJSON_GetArraySize(top));
    cJSON_ArrayForEach(e, top) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(e, "id");
        const cJSON *l = cJSON_GetObjectItemCaseSensitive(e, "logprob");
        const cJSON *b = cJSON_GetObjectItemCaseSensitive(e, "bytes");
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(e, "text");

        CHECK_MSG(cJSON_IsNumber(id) && cJSON_IsNumber(l) && cJSON_IsArray(b) &&
                  cJSON_IsString(t), "%s: token %d: alternative %d", how, n_tok, i);
        if (!cJSON_IsNumber(id) || !cJSON_IsNumber(l) || !cJSON_IsString(t))
            return;
        CHECK_MSG(l->valuedouble <= 0.0 && (i == 0 || l->valuedouble <= prev),
                  "%s: token %d: alternative %d logprob %g after %g", how, n_tok, i,
                  l->valuedouble, prev);
        if (!strstr(t->valuestring, "\\x"))
            CHECK_MSG(cJSON_GetArraySize(b) == (int) strlen(t->valuestring),
                      "%s: token %d: alternative %d bytes", how, n_tok, i);
        if (i == 0) {
            CHECK_MSG(gid && id->valuedouble == gid->valuedouble,
                      "%s: token %d: first alternative %g, golden %g", how, n_tok,
                      id->valuedouble, gid ? gid->valuedouble : -1.0);
            CHECK_MSG(cJSON_IsNumber(lp) && lp->valuedouble == l->valuedouble,
                      "%s: token %d: first alternative's logprob is not the token's", how,
                      n_tok);
        }
        prev = l->valuedouble;
        i++;
    }
}

int main(int argc, char **argv)
{
    char tmpl[] = "/tmp/vl2-e2e-XXXXXX", sock[96], log[96], model_arg[4096];
    const char *vl2d, *vl2, *ckpt, *plugins, *image;
    cJSON *golden, *gtext, *gids;
    char *gjson, *out = NULL, *err = NULL, *want;
    pid_t daemon;
    int st, i;

    if (argc != 7) {
        fprintf(stderr, "usage: test-client-e2e VL2D VL2 CKPT_DIR PLUGIN_DIR IMAGE "
                "GENERATED_JSON\n");
        return 2;
    }
    vl2d = argv[1];
    vl2 = argv[2];
    ckpt = argv[3];
    plugins = argv[4];
    image = argv[5];
    gjson = test_slurp(argv[6], NULL);
    golden = gjson ? cJSON_Parse(gjson) : NULL;
    free(gjson);
    gtext = cJSON_GetObjectItemCaseSensitive(golden, "text");
    gids = cJSON_GetObjectItemCaseSensitive(golden, "generated_ids");
    if (!cJSON_IsString(gtext) || !cJSON_IsArray(gids) || cJSON_GetArraySize(gids) != 12) {
        fprintf(stderr, "'%s': no golden text / 12 generated_ids\n", argv[6]);
        return 1;
    }
    if (!mkdtemp(tmpl))
        return 1;
    snprintf(dir, sizeof(dir), "%s", tmpl);
    snprintf(sock, sizeof(sock), "%s/sock", dir);
    snprintf(log, sizeof(log), "%s/vl2d.log", dir);
    snprintf(model_arg, sizeof(model_arg), "micro=%s", ckpt);

    daemon = fork();
    if (daemon == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);

        dup2(fd, 1);
        dup2(fd, 2);
        unsetenv("LISTEN_FDS");
        unsetenv("LISTEN_PID");
        unsetenv("NOTIFY_SOCKET");
        execl(vl2d, vl2d, "serve", "--no-config", "--model", model_arg, "--plugin-dir",
              plugins, "--socket", sock, "--threads", "2", "--no-notify",
              "--no-socket-activation", (char *) NULL);
        _exit(127);
    }
    for (i = 0; i < 3000 && !can_connect(sock); i++) {
        if (waitpid(daemon, &st, WNOHANG) == daemon) {
            char *l = test_slurp(log, NULL);
            fprintf(stderr, "vl2d exited early:\n%s\n", l ? l : "");
            free(l);
            return 1;
        }
        test_sleep_ms(10);
    }
    CHECK_MSG(i < 3000, "vl2d did not listen on '%s' within 30 s", sock);

    want = malloc(strlen(gtext->valuestring) + 2);
    sprintf(want, "%s\n", gtext->valuestring);
    for (int bytes = 0; bytes < 2; bytes++) {
        const char *args[20], *jargs[20];
        const char *how = bytes ? "bytes" : "descriptor";
        size_t n = 0, k;
        int rc;

        args[n++] = vl2;
        args[n++] = "--socket";
        args[n++] = sock;
        args[n++] = "ask";
        args[n++] = "-m";
        args[n++] = "micro";
        args[n++] = "-i";
        args[n++] = image;
        args[n++] = "--max-new-tokens";
        args[n++] = "12";
        args[n++] = "--temperature";
        args[n++] = "0";
        if (bytes)
            args[n++] = "--send-bytes";
        args[n++] = "Describe this image.";
        args[n] = NULL;
        /* the same with --json after the socket (with bytes also
         * --top-logprobs 3) */
        jargs[0] = vl2;
        jargs[1] = "--json";
        for (k = 1; k + 1 < n; k++)
            jargs[k + 1] = args[k];
        k = n;
        if (bytes) {
            jargs[k++] = "--top-logprobs";
            jargs[k++] = "3";
        }
        jargs[k++] = args[n - 1];
        jargs[k] = NULL;
        rc = run(args, &out, &err);
        CHECK_MSG(rc == 0, "%s: exit %d: %s", how, rc, err ? err : "");
        CHECK_MSG(out && !strcmp(out, want), "%s: answer '%s', golden '%s'", how, out ? out : "",
              gtext->valuestring);
        CHECK_MSG(err && !err[0], "%s: stderr '%s'", how, err ? err : "");
        free(out);
        free(err);

        rc = run(jargs, &out, &err);
        CHECK_MSG(rc == 0, "%s --json: exit %d: %s", how, rc, err ? err : "");
        {
            char *save = NULL, *line;
            int n_tok = 0;
            bool done = false;

            for (line = strtok_r(out, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
                cJSON *o = cJSON_Parse(line);
                const cJSON *ev = cJSON_GetObjectItemCaseSensitive(o, "event");

                CHECK_MSG(cJSON_IsString(ev), "%s: line '%s'", how, line);
                if (cJSON_IsString(ev) && !strcmp(ev->valuestring, "token")) {
                    const cJSON *id = cJSON_GetObjectItemCaseSensitive(o, "id");
                    const cJSON *gid = cJSON_GetArrayItem(gids, n_tok);

                    CHECK_MSG(gid && cJSON_IsNumber(id) && id->valuedouble == gid->valuedouble,
                          "%s: token %d: id %g, golden %g", how, n_tok,
                          cJSON_IsNumber(id) ? id->valuedouble : -1.0,
                          gid ? gid->valuedouble : -1.0);
                    check_top(o, gid, bytes ? 3 : 0, how, n_tok);
                    n_tok++;
                } else if (cJSON_IsString(ev) && !strcmp(ev->valuestring, "done")) {
                    const cJSON *t = cJSON_GetObjectItemCaseSensitive(o, "text");
                    const cJSON *g = cJSON_GetObjectItemCaseSensitive(o, "generated_tokens");
                    const cJSON *f = cJSON_GetObjectItemCaseSensitive(o, "finish_reason");

                    done = true;
                    CHECK_MSG(cJSON_IsString(t) && !strcmp(t->valuestring, gtext->valuestring),
                          "%s: done text", how);
                    CHECK_MSG(cJSON_IsNumber(g) && g->valuedouble == 12, "%s: generated_tokens",
                          how);
                    CHECK_MSG(cJSON_IsString(f) && !strcmp(f->valuestring, "length"),
                          "%s: finish_reason", how);
                }
                cJSON_Delete(o);
            }
            CHECK_MSG(n_tok == 12 && done, "%s --json: %d tokens, done %d", how, n_tok, done);
        }
        free(out);
        free(err);
    }
    free(want);

    kill(daemon, SIGTERM);
    for (i = 0; i < 1000 && waitpid(daemon, &st, WNOHANG) != daemon; i++)
        test_sleep_ms(10);
    if (i == 1000) {
        kill(daemon, SIGKILL);
        waitpid(daemon, &st, 0);
    }
    if (check_failures) {
        char *l = test_slurp(log, NULL);
        fprintf(stderr, "vl2d log:\n%s\n%d check(s) failed\n", l ? l : "", check_failures);
        free(l);
    } else {
        printf("client-e2e: vl2 ask gives the golden text (descriptor and bytes)\n");
    }
    {
        char path[128];
        snprintf(path, sizeof(path), "%s/out", dir);
        unlink(path);
        snprintf(path, sizeof(path), "%s/err", dir);
        unlink(path);
        unlink(log);
        unlink(sock);
        snprintf(path, sizeof(path), "%s/sock.lock", dir);
        unlink(path);
        rmdir(dir);
    }
    cJSON_Delete(golden);
    return check_failures ? 1 : 0;
}

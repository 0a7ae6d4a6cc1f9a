/* test-backend-options.c - backend options reach the plugin: `backend_options`
 * of vl2d.conf ([daemon] and [model NAME]) and `--backend-option K=V` of
 * `vl2d` and `vl2d run`, joined file first, then flags, into
 * vl2_backend_params.options.  The CPU plugin refuses an unknown key with
 * its own message, which must come back (a log line of the daemon, the
 * error of vl2d run); keys it knows let the model load.
 *
 * argv[1]: vl2d; argv[2]: a micro checkpoint. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../common/check.h"
#include "conf.h"
#include "harness.h"

static const char *vl2d, *ckpt;
static char *tmp;

/* `vl2d run` on the checkpoint with @extra (NULL-terminated) arguments;
 * its exit status, stderr in *@ret_err. */
static int run(const char *const *extra, char **ret_err)
{
    const char *argv[24] = { vl2d, "run", "--model", ckpt, "--prompt", "hi",
                             "--max-new-tokens", "1", "--threads", "1" };
    size_t n = 10;
    char *out = NULL;
    int status;

    while (*extra && n < 23)
        argv[n++] = *extra++;
    argv[n] = NULL;
    status = harness_run(argv, NULL, &out, ret_err);
    free(out);
    return status;
}

static void test_run_flags(void)
{
    char *err = NULL;

    /* a key the plugin does not know: its message */
    {
        const char *a[] = { "--backend-option", "isa=scalar", "--backend-option", "nosuch=1",
                            NULL };
        CHECK_EQ_INT(run(a, &err), 1);
        CHECK_MSG(err && strstr(err, "cpu: unknown option 'nosuch'"), "%s", err ? err : "");
        free(err);
    }
    /* the flags are joined in order: the first bad item is the one named */
    {
        const char *a[] = { "--backend-option", "isa=sparc", "--backend-option", "nosuch=1",
                            NULL };
        CHECK_EQ_INT(run(a, &err), 1);
        CHECK_MSG(err && strstr(err, "cpu: option isa 'sparc'"), "%s", err ? err : "");
        free(err);
    }
    /* known keys: the model loads and answers; a later value replaces an
     * earlier one (isa=sparc would fail, but every item is read first, so
     * a valid one is needed in both places) */
    {
        const char *a[] = { "--backend-option", "isa=avx2", "--backend-option", "isa=scalar",
                            NULL };
        CHECK_EQ_INT(run(a, &err), 0);
        free(err);
    }
    /* the syntax is checked before anything loads: usage error */
    {
        const char *a[] = { "--backend-option", "isa", NULL };
        CHECK_EQ_INT(run(a, &err), 2);
        CHECK_MSG(err && strstr(err, "--backend-option: option 'isa': expected key=value"), "%s",
                  err ? err : "");
        free(err);
    }
    {
        const char *a[] = { "--backend-option", "isa=scalar,", NULL };
        CHECK_EQ_INT(run(a, &err), 2);
        CHECK_MSG(err && strstr(err, "empty item"), "%s", err ? err : "");
        free(err);
    }
}

/* Start vl2d with @conf_text as its configuration file (NULL: --no-config,
 * the model from --model) and @flag (NULL or a --backend-option value);
 * wait until its log holds @want, or the model loads ("loaded in").  Returns
 * the log (caller frees). */
static char *daemon_log(const char *conf_text, const char *flag, const char *want)
{
    char conf[512], sock[512], log[512], model[600];
    const char *args[16];
    size_t n = 0;
    char *text = NULL;
    pid_t pid;
    int t;
    FILE *f;

    snprintf(conf, sizeof(conf), "%s/vl2d.conf", tmp);
    snprintf(sock, sizeof(sock), "%s/vl2d.sock", tmp);
    snprintf(log, sizeof(log), "%s/vl2d.log", tmp);
    snprintf(model, sizeof(model), "m=%s", ckpt);
    unlink(log);
    if (conf_text) {
        f = fopen(conf, "w");
        CHECK(f != NULL);
        if (!f)
            return NULL;
        fputs(conf_text, f);
        fclose(f);
        args[n++] = "--config";
        args[n++] = conf;
    } else {
        args[n++] = "--no-config";
        args[n++] = "--model";
        args[n++] = model;
    }
    args[n++] = "--socket";
    args[n++] = sock;
    args[n++] = "--threads";
    args[n++] = "1";
    if (flag) {
        args[n++] = "--backend-option";
        args[n++] = flag;
    }
    args[n] = NULL;
    pid = harness_start(vl2d, sock, args, log, NULL);
    CHECK(pid > 0);
    for (t = 0; pid > 0 && t < 20000; t += 50) {
        free(text);
        text = harness_slurp(log);
        if (text && (strstr(text, want) || strstr(text, "loaded in")))
            break;
        usleep(50 * 1000);
    }
    if (pid > 0)
        CHECK(harness_stop(pid, SIGTERM, 10000) == 0);
    free(text);
    text = harness_slurp(log);
    unlink(conf);
    return text;
}

static void test_daemon(void)
{
    char conf[2048];
    char *log;

    /* the file's value reaches the plugin */
    snprintf(conf, sizeof(conf), "[daemon]\nbackend_options = alpha=1\n[model m]\ndir = %s\n",
             ckpt);
    log = daemon_log(conf, NULL, "unknown option");
    CHECK_MSG(log && strstr(log, "cpu: unknown option 'alpha'"), "log: %s", log ? log : "");
    free(log);
    /* a flag alone */
    log = daemon_log(NULL, "beta=2", "unknown option");
    CHECK_MSG(log && strstr(log, "cpu: unknown option 'beta'"), "log: %s", log ? log : "");
    free(log);
    /* both: joined, the file's first (a flag replacing the file's value
     * would have named 'beta') */
    log = daemon_log(conf, "beta=2", "unknown option");
    CHECK_MSG(log && strstr(log, "cpu: unknown option 'alpha'"), "log: %s", log ? log : "");
    free(log);
    /* a model's own backend_options replace the daemon's: it loads */
    snprintf(conf, sizeof(conf), "[daemon]\nbackend_options = alpha=1\n[model m]\ndir = %s\n"
             "backend_options = isa=scalar\n", ckpt);
    log = daemon_log(conf, NULL, "unknown option");
    CHECK_MSG(log && strstr(log, "model 'm': loaded in") && !strstr(log, "unknown option"),
              "log: %s", log ? log : "");
    free(log);
    /* ... and they reach its plugin too */
    snprintf(conf, sizeof(conf), "[daemon]\nbackend_options = isa=scalar\n[model m]\n"
             "dir = %s\nbackend_options = gamma=3\n", ckpt);
    log = daemon_log(conf, NULL, "unknown option");
    CHECK_MSG(log && strstr(log, "cpu: unknown option 'gamma'"), "log: %s", log ? log : "");
    free(log);
}

/* Which options each model's engine gets (conf.h: vl2_conf_engine_params):
 * the daemon's for its backend, a model's own instead, none for a model on
 * another backend; flags appended to the daemon's. */
static void test_conf_rule(void)
{
    static const char text[] =
        "[daemon]\nbackend = cpu\nbackend_options = isa=avx2\n"
        "backend_options = isa=scalar,blas_min_rows=4\n"      /* the last line wins */
        "[model a]\ndir = /m/a\n"
        "[model b]\ndir = /m/b\nbackend = cuda\n"
        "[model c]\ndir = /m/c\nbackend = cuda\nbackend_options = graphs=0\n"
        "[model d]\ndir = /m/d\nbackend_options = \n";
    struct vl2_conf c;
    struct vl2_err err = { 0 };
    struct vl2_engine_params p;

    vl2_conf_init(&c);
    CHECK_MSG(vl2_conf_parse(&c, text, strlen(text), "/etc/vl2d/t.conf", &err) == 0, "%s",
              err.msg);
    CHECK_MSG(vl2_conf_add_backend_option(&c, "mla=auto", &err) == 0, "%s", err.msg);
    CHECK(vl2_conf_add_backend_option(&c, "x", &err) == VL2_EINVAL);  /* unchanged */
    CHECK(c.engine.backend_options &&
          !strcmp(c.engine.backend_options, "isa=scalar,blas_min_rows=4,mla=auto"));
    p = vl2_conf_engine_params(&c, "a", "/m/a", c.models[0].backend);
    CHECK(p.backend_options &&
          !strcmp(p.backend_options, "isa=scalar,blas_min_rows=4,mla=auto"));
    p = vl2_conf_engine_params(&c, "b", "/m/b", c.models[1].backend);
    CHECK(p.backend_options == NULL);
    p = vl2_conf_engine_params(&c, "c", "/m/c", c.models[2].backend);
    CHECK(p.backend_options && !strcmp(p.backend_options, "graphs=0"));
    p = vl2_conf_engine_params(&c, "d", "/m/d", c.models[3].backend);
    CHECK(p.backend_options == NULL);            /* its own: none */
    /* a model loaded later (vl2 load): the daemon's for the daemon's backend */
    p = vl2_conf_engine_params(&c, "e", "/m/e", NULL);
    CHECK(p.backend_options && !strncmp(p.backend_options, "isa=scalar", 10));
    p = vl2_conf_engine_params(&c, "e", "/m/e", "cuda");
    CHECK(p.backend_options == NULL);
    /* the same name in another directory is another model */
    p = vl2_conf_engine_params(&c, "c", "/elsewhere", "cuda");
    CHECK(p.backend_options == NULL);
    vl2_conf_done(&c);

    /* too long: refused, the string unchanged */
    {
        char buf[16] = "a=1";
        CHECK(vl2_conf_options_append(buf, sizeof(buf), "bb=2", "t", &err) == 0);
        CHECK(!strcmp(buf, "a=1,bb=2"));
        CHECK(vl2_conf_options_append(buf, sizeof(buf), "ccc=345", "t", &err) == VL2_ELIMIT);
        CHECK(!strcmp(buf, "a=1,bb=2"));
        CHECK(vl2_conf_options_append(buf, sizeof(buf), "", "t", &err) == 0);
        CHECK(!strcmp(buf, "a=1,bb=2"));
    }
}

/* A value that breaks the grammar is an error of the file, FILE:LINE. */
static void test_conf_syntax(void)
{
    char conf[512], log[512], *text;
    const char *args[] = { "--config", conf, "--socket", "/nonexistent/x.sock", NULL };
    pid_t pid;
    int status;
    FILE *f;

    snprintf(conf, sizeof(conf), "%s/bad.conf", tmp);
    snprintf(log, sizeof(log), "%s/bad.log", tmp);
    f = fopen(conf, "w");
    CHECK(f != NULL);
    if (!f)
        return;
    fputs("[daemon]\nthreads = 1\nbackend_options = isa=scalar,,gemm=own\n", f);
    fclose(f);
    pid = harness_start(vl2d, NULL, args, log, NULL);
    status = harness_wait(pid, 10000);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 2);
    text = harness_slurp(log);
    {
        char want[700];
        snprintf(want, sizeof(want), "%s:3: backend_options: options: empty item", conf);
        CHECK_MSG(text && strstr(text, want), "log: %s", text ? text : "");
    }
    free(text);
    unlink(conf);
    unlink(log);
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s VL2D CHECKPOINT\n", argv[0]);
        return 2;
    }
    vl2d = argv[1];
    ckpt = argv[2];
    signal(SIGPIPE, SIG_IGN);
    tmp = harness_tmpdir();
    if (!tmp)
        return 2;
    RUN(test_conf_rule);
    RUN(test_run_flags);
    RUN(test_daemon);
    RUN(test_conf_syntax);
    harness_rmdir(tmp);
    return check_report("backend options");
}

/* cmd_load.c - `vl2 load NAME DIR` and `vl2 unload NAME`. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

struct load_ctx {
    const struct vl2_cli *cli;
    uint64_t id;
    bool progress;           /* show progress on stderr */
    bool progress_shown;
    bool loaded;
};

static const char *state_name(Vl2__ModelState s)
{
    switch (s) {
    case VL2__MODEL_STATE__MODEL_STATE_LOADING:   return "loading";
    case VL2__MODEL_STATE__MODEL_STATE_READY:     return "ready";
    case VL2__MODEL_STATE__MODEL_STATE_FAILED:    return "failed";
    case VL2__MODEL_STATE__MODEL_STATE_UNLOADING: return "unloading";
    default:                                      return "unknown";
    }
}

static void clear_progress(struct load_ctx *l)
{
    if (l->progress_shown) {
        fputs("\r\033[K", stderr);
        fflush(stderr);
        l->progress_shown = false;
    }
}

static int on_load(const Vl2__Response *resp, void *ud)
{
    struct load_ctx *l = ud;
    cJSON *o;

    if (!resp->has_id || resp->id != l->id)
        return 0;
    switch (resp->body_case) {
    case VL2__RESPONSE__BODY_ACCEPTED:
        if (l->cli->json) {
            o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "event", "accepted");
            cJSON_AddNumberToObject(o, "queue_position", resp->accepted->queue_position);
            vl2_cli_print_json_line(o);
        }
        break;
    case VL2__RESPONSE__BODY_PROGRESS:
        if (l->cli->json) {
            o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "event", "progress");
            cJSON_AddStringToObject(o, "stage", resp->progress->stage ==
                                    VL2__STAGE__STAGE_LOADING ? "loading" : "working");
            cJSON_AddNumberToObject(o, "fraction", resp->progress->fraction);
            vl2_cli_print_json_line(o);
        } else if (l->progress) {
            fprintf(stderr, "\r\033[Kloading %3.0f%%", 100.0 * resp->progress->fraction);
            fflush(stderr);
            l->progress_shown = true;
        }
        break;
    case VL2__RESPONSE__BODY_LOADED: {
        const Vl2__ModelInfo *m = resp->loaded->model;
        char mem[32];

        clear_progress(l);
        l->loaded = true;
        if (l->cli->json) {
            cJSON *mo;

            o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "event", "loaded");
            mo = cJSON_AddObjectToObject(o, "model");
            if (m && mo) {
                cJSON_AddStringToObject(mo, "name", m->name ? m->name : "");
                cJSON_AddStringToObject(mo, "dir", m->dir ? m->dir : "");
                cJSON_AddStringToObject(mo, "state", state_name(m->state));
                cJSON_AddStringToObject(mo, "backend", m->backend ? m->backend : "");
                cJSON_AddNumberToObject(mo, "memory_bytes", (double) m->memory_bytes);
            }
            cJSON_AddNumberToObject(o, "load_s", resp->loaded->load_s);
            vl2_cli_print_json_line(o);
        } else {
            printf("loaded '%s' (%s, %s) in %.2f s\n", m && m->name ? m->name : "?",
                   m && m->backend && m->backend[0] ? m->backend : "-",
                   vl2_cli_bytes(m ? m->memory_bytes : 0, mem, sizeof(mem)),
                   resp->loaded->load_s);
            fflush(stdout);
        }
        break;
    }
    default:
        clear_progress(l);
        break;
    }
    return 0;
}

static void load_usage(FILE *f)
{
    fprintf(f, "usage: vl2 load [--backend NAME] NAME DIR\n"
               "\n"
               "Ask the daemon to load the model directory DIR under the name NAME\n"
               "(a relative DIR is made absolute here).  Progress shows on standard\n"
               "error on a terminal.\n"
               "\n"
               "  --backend NAME    cpu or cuda (default: the daemon's)\n"
               "  --json            one JSON object per line and per event\n"
               "                    (accepted, progress, loaded, error)\n");
}

int vl2_cmd_load(const struct vl2_cli *cli, int argc, char **argv)
{
    Vl2__Request req = VL2__REQUEST__INIT;
    Vl2__LoadModel lm = VL2__LOAD_MODEL__INIT;
    struct load_ctx l = { .cli = cli };
    struct vl2_err err = { 0 };
    const char *words[2], *backend = NULL;
    size_t n_words = 0;
    bool dashdash = false;
    char *dir = NULL;
    struct vl2_client *c;
    int r;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];

        if (!dashdash && !strcmp(a, "--")) {
            dashdash = true;
        } else if (!dashdash && (!strcmp(a, "--help") || !strcmp(a, "-h"))) {
            load_usage(stdout);
            return 0;
        } else if (!dashdash && !strcmp(a, "--backend")) {
            if (i + 1 >= argc || !argv[i + 1][0]) {
                fprintf(stderr, "vl2 load: --backend needs a name\n");
                return 2;
            }
            backend = argv[++i];
        } else if (!dashdash && !strncmp(a, "--backend=", 10) && a[10]) {
            backend = a + 10;
        } else if (!dashdash && a[0] == '-' && a[1]) {
            fprintf(stderr, "vl2 load: unknown option '%s'; try 'vl2 load --help'\n", a);
            return 2;
        } else if (n_words == 2) {
            fprintf(stderr, "vl2 load: unexpected argument '%s'\n", a);
            return 2;
        } else {
            words[n_words++] = a;
        }
    }
    if (n_words != 2 || !words[0][0] || !words[1][0]) {
        fprintf(stderr, "vl2 load: NAME and DIR are required; try 'vl2 load --help'\n");
        return 2;
    }
    /* the daemon's working directory is not ours */
    dir = words[1][0] == '/' ? strdup(words[1]) : realpath(words[1], NULL);
    if (!dir) {
        vl2_err_set(&err, errno == ENOENT ? VL2_ENOTFOUND : VL2_EIO, "vl2 load: '%s': %s",
                    words[1], strerror(errno));
        return vl2_cli_fail(cli, &err);
    }
    c = vl2_cli_connect(cli);
    if (!c) {
        free(dir);
        return 1;
    }
    lm.name = (char *) words[0];
    lm.dir = dir;
    l.progress = vl2_cli_show_progress(cli);
    lm.has_progress = 1;
    lm.progress = l.progress || cli->json;
    lm.backend = (char *) (backend ? backend : "");
    req.body_case = VL2__REQUEST__BODY_LOAD_MODEL;
    req.load_model = &lm;
    vl2_client_set_timeout(c, cli->timeout_set ? cli->timeout_ms : -1);
    r = vl2_client_send(c, &req, NULL, 0, &l.id, &err);
    if (r == 0)
        r = vl2_client_wait(c, l.id, on_load, &l, &err);
    clear_progress(&l);
    vl2_client_close(c);
    free(dir);
    if (r == 0 && !l.loaded)
        r = vl2_err_set(&err, VL2_EPROTO, "vl2 load: vl2d answered with something else");
    if (r < 0)
        return vl2_cli_fail(cli, &err);
    return 0;
}

/* ---- unload ----------------------------------------------------------- */

struct unload_ctx {
    uint64_t id;
    bool acked;
};

static int on_unload(const Vl2__Response *resp, void *ud)
{
    struct unload_ctx *u = ud;

    if (resp->has_id && resp->id == u->id && resp->body_case == VL2__RESPONSE__BODY_ACK)
        u->acked = true;
    return 0;
}

int vl2_cmd_unload(const struct vl2_cli *cli, int argc, char **argv)
{
    Vl2__Request req = VL2__REQUEST__INIT;
    Vl2__UnloadModel um = VL2__UNLOAD_MODEL__INIT;
    struct unload_ctx u = { 0 };
    struct vl2_err err = { 0 };
    const char *name = NULL;
    struct vl2_client *c;
    int r;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];

        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            printf("usage: vl2 unload NAME\n\nAsk the daemon to unload the model NAME.\n");
            return 0;
        }
        if (!strcmp(a, "--"))
            continue;
        if (a[0] == '-' && a[1] && !name) {
            fprintf(stderr, "vl2 unload: unknown option '%s'\n", a);
            return 2;
        }
        if (name) {
            fprintf(stderr, "vl2 unload: unexpected argument '%s'\n", a);
            return 2;
        }
        name = a;
    }
    if (!name || !name[0]) {
        fprintf(stderr, "vl2 unload: NAME is required\n");
        return 2;
    }
    c = vl2_cli_connect(cli);
    if (!c)
        return 1;
    um.name = (char *) name;
    req.body_case = VL2__REQUEST__BODY_UNLOAD_MODEL;
    req.unload_model = &um;
    vl2_client_set_timeout(c, cli->timeout_set ? cli->timeout_ms : -1);
    r = vl2_client_send(c, &req, NULL, 0, &u.id, &err);
    if (r == 0)
        r = vl2_client_wait(c, u.id, on_unload, &u, &err);
    vl2_client_close(c);
    if (r == 0 && !u.acked)
        r = vl2_err_set(&err, VL2_EPROTO, "vl2 unload: vl2d answered with something else");
    if (r < 0)
        return vl2_cli_fail(cli, &err);
    if (cli->json) {
        cJSON *o = cJSON_CreateObject();

        cJSON_AddStringToObject(o, "event", "unloaded");
        cJSON_AddStringToObject(o, "name", name);
        vl2_cli_print_json_line(o);
    } else {
        printf("unloaded '%s'\n", name);
    }
    return 0;
}

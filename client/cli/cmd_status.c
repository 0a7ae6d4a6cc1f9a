/* cmd_status.c - `vl2 status` and `vl2 models`: what the daemon serves. */
#include <cjson/cJSON.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"

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

/* Hits per lookup, 0 without lookups. */
static double hit_rate(uint64_t hits, uint64_t lookups)
{
    return lookups ? (double) hits / (double) lookups : 0.0;
}

/* The model's caches: "image_cache" and "prefix_cache" objects of @o. */
static void cache_json(cJSON *o, const Vl2__ModelInfo *m)
{
    cJSON *ic = cJSON_AddObjectToObject(o, "image_cache");
    cJSON *pc = cJSON_AddObjectToObject(o, "prefix_cache");

    if (ic) {
        cJSON_AddNumberToObject(ic, "bytes", (double) m->image_cache_bytes);
        cJSON_AddNumberToObject(ic, "capacity_bytes", (double) m->image_cache_capacity);
        cJSON_AddNumberToObject(ic, "entries", m->image_cache_entries);
        cJSON_AddNumberToObject(ic, "lookups", (double) m->image_cache_lookups);
        cJSON_AddNumberToObject(ic, "hits", (double) m->image_cache_hits);
        cJSON_AddNumberToObject(ic, "hit_rate", hit_rate(m->image_cache_hits,
                                                         m->image_cache_lookups));
    }
    if (pc) {
        cJSON_AddNumberToObject(pc, "bytes", (double) m->prefix_cache_bytes);
        cJSON_AddNumberToObject(pc, "kv_budget_bytes", (double) m->kv_budget_bytes);
        cJSON_AddNumberToObject(pc, "entries", m->prefix_cache_entries);
        cJSON_AddNumberToObject(pc, "lookups", (double) m->prefix_cache_lookups);
        cJSON_AddNumberToObject(pc, "hits", (double) m->prefix_cache_hits);
        cJSON_AddNumberToObject(pc, "hit_rate", hit_rate(m->prefix_cache_hits,
                                                         m->prefix_cache_lookups));
        cJSON_AddNumberToObject(pc, "cached_tokens", (double) m->prefix_cache_tokens);
    }
}

static cJSON *models_json(Vl2__ModelInfo **models, size_t n)
{
    cJSON *arr = cJSON_CreateArray();
    size_t i;

    for (i = 0; arr && i < n; i++) {
        const Vl2__ModelInfo *m = models[i];
        cJSON *o = cJSON_CreateObject();

        if (!o)
            break;
        cJSON_AddStringToObject(o, "name", m->name ? m->name : "");
        cJSON_AddStringToObject(o, "dir", m->dir ? m->dir : "");
        cJSON_AddStringToObject(o, "state", state_name(m->state));
        cJSON_AddStringToObject(o, "backend", m->backend ? m->backend : "");
        cJSON_AddNumberToObject(o, "memory_bytes", (double) m->memory_bytes);
        cJSON_AddNumberToObject(o, "active_sequences", m->active_sequences);
        cJSON_AddNumberToObject(o, "queue_length", m->queue_length);
        if (m->error && m->error[0])
            cJSON_AddStringToObject(o, "error", m->error);
        cache_json(o, m);
        cJSON_AddItemToArray(arr, o);
    }
    return arr;
}

static void print_json(cJSON *root)
{
    char *s = root ? cJSON_Print(root) : NULL;

    if (s) {
        printf("%s\n", s);
        cJSON_free(s);
    } else {
        printf("null\n");
    }
    cJSON_Delete(root);
}

static void print_models(Vl2__ModelInfo **models, size_t n, const char *indent)
{
    size_t i;
    char mem[32];

    if (n == 0) {
        printf("%sno model loaded\n", indent);
        return;
    }
    printf("%s%-24s %-9s %-8s %11s  %s\n", indent, "NAME", "STATE", "BACKEND", "MEMORY", "DIR");
    for (i = 0; i < n; i++) {
        const Vl2__ModelInfo *m = models[i];

        printf("%s%-24s %-9s %-8s %11s  %s\n", indent, m->name ? m->name : "",
               state_name(m->state), m->backend && m->backend[0] ? m->backend : "-",
               vl2_cli_bytes(m->memory_bytes, mem, sizeof(mem)), m->dir ? m->dir : "");
    }
}

/* ---- status ---------------------------------------------------------- */

struct status_out {
    const struct vl2_cli *cli;
    bool printed;
};

static int on_status(const Vl2__Response *resp, void *ud)
{
    struct status_out *out = ud;
    const Vl2__StatusReply *s = resp->status;
    char mem[32];

    if (resp->body_case != VL2__RESPONSE__BODY_STATUS)
        return 0;
    out->printed = true;
    if (out->cli->json) {
        cJSON *root = cJSON_CreateObject();

        cJSON_AddStringToObject(root, "server_version", s->server_version ? s->server_version : "");
        cJSON_AddNumberToObject(root, "protocol_version", s->protocol_version);
        cJSON_AddNumberToObject(root, "pid", s->pid);
        cJSON_AddStringToObject(root, "socket_path", s->socket_path ? s->socket_path : "");
        cJSON_AddNumberToObject(root, "uptime_s", s->uptime_s);
        cJSON_AddNumberToObject(root, "resident_memory_bytes", (double) s->resident_memory_bytes);
        cJSON_AddNumberToObject(root, "connections", s->connections);
        cJSON_AddNumberToObject(root, "queue_length", s->queue_length);
        cJSON_AddNumberToObject(root, "active_sequences", s->active_sequences);
        cJSON_AddNumberToObject(root, "tokens_per_s", s->tokens_per_s);
        cJSON_AddItemToObject(root, "models", models_json(s->models, s->n_models));
        print_json(root);
        return 0;
    }
    printf("vl2d %s (protocol %u), pid %u, up %.1f s\n",
           s->server_version ? s->server_version : "?", s->protocol_version, s->pid,
           s->uptime_s);
    printf("socket:      %s\n", s->socket_path ? s->socket_path : "");
    printf("memory:      %s resident\n",
           vl2_cli_bytes(s->resident_memory_bytes, mem, sizeof(mem)));
    printf("clients:     %u connected\n", s->connections);
    printf("queue:       %u waiting, %u generating, %.1f tokens/s\n", s->queue_length,
           s->active_sequences, s->tokens_per_s);
    printf("models:%s", s->n_models ? "\n" : "      ");
    print_models(s->models, s->n_models, s->n_models ? "  " : "");
    for (size_t i = 0; i < s->n_models; i++) {
        const Vl2__ModelInfo *m = s->models[i];
        char b1[32], b2[32];

        printf("caches of %s:\n", m->name ? m->name : "");
        printf("  image:     %s of %s, %u entries, %" PRIu64 " of %" PRIu64 " hits (%.0f%%)\n",
               vl2_cli_bytes(m->image_cache_bytes, b1, sizeof(b1)),
               vl2_cli_bytes(m->image_cache_capacity, b2, sizeof(b2)), m->image_cache_entries,
               m->image_cache_hits, m->image_cache_lookups,
               100.0 * hit_rate(m->image_cache_hits, m->image_cache_lookups));
        printf("  prefix:    %s of the %s KV budget, %u entries, %" PRIu64 " of %" PRIu64
               " hits (%.0f%%), %" PRIu64 " tokens reused\n",
               vl2_cli_bytes(m->prefix_cache_bytes, b1, sizeof(b1)),
               vl2_cli_bytes(m->kv_budget_bytes, b2, sizeof(b2)), m->prefix_cache_entries,
               m->prefix_cache_hits, m->prefix_cache_lookups,
               100.0 * hit_rate(m->prefix_cache_hits, m->prefix_cache_lookups),
               m->prefix_cache_tokens);
    }
    return 0;
}

int vl2_cmd_status(const struct vl2_cli *cli, int argc, char **argv)
{
    Vl2__Request req = VL2__REQUEST__INIT;
    Vl2__Status st = VL2__STATUS__INIT;
    struct status_out out = { .cli = cli };
    struct vl2_err err = { 0 };
    struct vl2_client *c;
    int r;

    if (argc > 1) {
        fprintf(stderr, "vl2 status: unexpected argument '%s'\n", argv[1]);
        return 2;
    }
    c = vl2_cli_connect(cli);
    if (!c)
        return 1;
    req.body_case = VL2__REQUEST__BODY_STATUS;
    req.status = &st;
    r = vl2_client_call(c, &req, NULL, 0, on_status, &out, &err);
    vl2_client_close(c);
    if (r < 0) {
        vl2_cli_error(&err);
        return 1;
    }
    if (!out.printed) {
        fprintf(stderr, "vl2: vl2d answered status with something else\n");
        return 1;
    }
    return 0;
}

/* ---- models ---------------------------------------------------------- */

static int on_models(const Vl2__Response *resp, void *ud)
{
    struct status_out *out = ud;
    const Vl2__ModelList *ml = resp->models;

    if (resp->body_case != VL2__RESPONSE__BODY_MODELS)
        return 0;
    out->printed = true;
    if (out->cli->json) {
        cJSON *root = cJSON_CreateObject();

        cJSON_AddItemToObject(root, "models", models_json(ml->models, ml->n_models));
        print_json(root);
        return 0;
    }
    print_models(ml->models, ml->n_models, "");
    return 0;
}

int vl2_cmd_models(const struct vl2_cli *cli, int argc, char **argv)
{
    Vl2__Request req = VL2__REQUEST__INIT;
    Vl2__ListModels lm = VL2__LIST_MODELS__INIT;
    struct status_out out = { .cli = cli };
    struct vl2_err err = { 0 };
    struct vl2_client *c;
    int r;

    if (argc > 1) {
        fprintf(stderr, "vl2 models: unexpected argument '%s'\n", argv[1]);
        return 2;
    }
    c = vl2_cli_connect(cli);
    if (!c)
        return 1;
    req.body_case = VL2__REQUEST__BODY_LIST_MODELS;
    req.list_models = &lm;
    r = vl2_client_call(c, &req, NULL, 0, on_models, &out, &err);
    vl2_client_close(c);
    if (r < 0) {
        vl2_cli_error(&err);
        return 1;
    }
    if (!out.printed) {
        fprintf(stderr, "vl2: vl2d answered models with something else\n");
        return 1;
    }
    return 0;
}

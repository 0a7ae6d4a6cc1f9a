/* metrics.c - vl2-http's counters and their Prometheus text exposition
 * (format 0.0.4). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"

static const double ttft_bounds[VL2H_HIST_BUCKETS] = {
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
};
static const double decode_bounds[VL2H_HIST_BUCKETS] = {
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000,
};

static const char *const route_names[VL2H_N_ROUTES] = {
    [VL2H_ROUTE_OTHER] = "other",
    [VL2H_ROUTE_CHAT_COMPLETIONS] = "/v1/chat/completions",
    [VL2H_ROUTE_MODELS] = "/v1/models",
    [VL2H_ROUTE_HEALTH] = "/health",
    [VL2H_ROUTE_METRICS] = "/metrics",
    [VL2H_ROUTE_OLLAMA_CHAT] = "/api/chat",
    [VL2H_ROUTE_OLLAMA_GENERATE] = "/api/generate",
    [VL2H_ROUTE_OLLAMA_TAGS] = "/api/tags",
    [VL2H_ROUTE_OLLAMA_VERSION] = "/api/version",
    [VL2H_ROUTE_OLLAMA_SHOW] = "/api/show",
    [VL2H_ROUTE_OLLAMA_PS] = "/api/ps",
    [VL2H_ROUTE_ROOT] = "/",
    [VL2H_ROUTE_MODEL_ONE] = "/v1/models/:id",
};

void vl2h_metrics_init(struct vl2h_metrics *m)
{
    memset(m, 0, sizeof(*m));
    pthread_mutex_init(&m->mu, NULL);
    m->ttft.bounds = ttft_bounds;
    m->decode.bounds = decode_bounds;
}

void vl2h_metrics_done(struct vl2h_metrics *m)
{
    pthread_mutex_destroy(&m->mu);
}

static void hist_add(struct vl2h_hist *h, double v)
{
    int i;

    for (i = 0; i < VL2H_HIST_BUCKETS; i++) {
        if (v <= h->bounds[i]) {
            h->counts[i]++;
            break;
        }
    }
    h->n++;
    h->sum += v;
}

void vl2h_metrics_response(struct vl2h_metrics *m, enum vl2h_route route, unsigned status)
{
    unsigned cls = status / 100;

    pthread_mutex_lock(&m->mu);
    m->requests[route < VL2H_N_ROUTES ? route : 0][cls >= 1 && cls <= 5 ? cls : 0]++;
    if (status < 600)
        m->by_status[status]++;
    pthread_mutex_unlock(&m->mu);
}

void vl2h_metrics_daemon_error(struct vl2h_metrics *m, int code)
{
    pthread_mutex_lock(&m->mu);
    m->errors_by_daemon_code[code < 0 && code >= -16 ? -code : 0]++;
    pthread_mutex_unlock(&m->mu);
}

void vl2h_metrics_done_gen(struct vl2h_metrics *m, uint32_t prompt, uint32_t generated,
                           long cached, double ttft_s, double tps)
{
    pthread_mutex_lock(&m->mu);
    m->generations++;
    m->prompt_tokens += prompt;
    m->generated_tokens += generated;
    if (cached >= 0) {
        m->cached_known = true;
        m->cached_tokens += (uint64_t) cached;
    }
    if (generated > 0)
        hist_add(&m->ttft, ttft_s);
    if (generated > 1 && tps > 0)
        hist_add(&m->decode, tps);
    pthread_mutex_unlock(&m->mu);
}

void vl2h_metrics_disconnect(struct vl2h_metrics *m)
{
    pthread_mutex_lock(&m->mu);
    m->disconnects++;
    pthread_mutex_unlock(&m->mu);
}

void vl2h_metrics_in_flight(struct vl2h_metrics *m, int delta)
{
    pthread_mutex_lock(&m->mu);
    m->in_flight = (unsigned) ((int) m->in_flight + delta);
    pthread_mutex_unlock(&m->mu);
}

static void head(struct vl2h_buf *b, const char *name, const char *type, const char *help)
{
    char line[512];

    snprintf(line, sizeof(line), "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
    (void) vl2h_buf_str(b, line);
}

static void line_u(struct vl2h_buf *b, const char *name, const char *labels,
                   unsigned long long v)
{
    char line[512];

    snprintf(line, sizeof(line), "%s%s%s%s %llu\n", name, labels ? "{" : "",
             labels ? labels : "", labels ? "}" : "", v);
    (void) vl2h_buf_str(b, line);
}

static void line_d(struct vl2h_buf *b, const char *name, const char *labels, double v)
{
    char line[512];

    snprintf(line, sizeof(line), "%s%s%s%s %.17g\n", name, labels ? "{" : "",
             labels ? labels : "", labels ? "}" : "", v);
    (void) vl2h_buf_str(b, line);
}

static void hist(struct vl2h_buf *b, const char *name, const char *help,
                 const struct vl2h_hist *h)
{
    char n[128], le[64];
    uint64_t cum = 0;
    int i;

    head(b, name, "histogram", help);
    snprintf(n, sizeof(n), "%s_bucket", name);
    for (i = 0; i < VL2H_HIST_BUCKETS; i++) {
        cum += h->counts[i];
        snprintf(le, sizeof(le), "le=\"%g\"", h->bounds[i]);
        line_u(b, n, le, cum);
    }
    line_u(b, n, "le=\"+Inf\"", h->n);
    snprintf(n, sizeof(n), "%s_sum", name);
    line_d(b, n, NULL, h->sum);
    snprintf(n, sizeof(n), "%s_count", name);
    line_u(b, n, NULL, h->n);
}

char *vl2h_metrics_render(struct vl2h_metrics *m, const Vl2__StatusReply *st)
{
    static const char *const classes[6] = { "other", "1xx", "2xx", "3xx", "4xx", "5xx" };
    struct vl2h_buf b = { 0 };
    char labels[256];
    int r, c;
    unsigned s;

    pthread_mutex_lock(&m->mu);
    head(&b, "vl2_http_requests_total", "counter", "HTTP requests answered, by route and "
         "status class.");
    for (r = 0; r < VL2H_N_ROUTES; r++)
        for (c = 0; c < 6; c++)
            if (m->requests[r][c]) {
                snprintf(labels, sizeof(labels), "route=\"%s\",code=\"%s\"", route_names[r],
                         classes[c]);
                line_u(&b, "vl2_http_requests_total", labels, m->requests[r][c]);
            }
    head(&b, "vl2_http_responses_total", "counter", "HTTP responses by status code.");
    for (s = 0; s < 600; s++)
        if (m->by_status[s]) {
            snprintf(labels, sizeof(labels), "code=\"%u\"", s);
            line_u(&b, "vl2_http_responses_total", labels, m->by_status[s]);
        }
    head(&b, "vl2_http_errors_total", "counter", "Error responses by HTTP status code "
         "(400 and above).");
    for (s = 400; s < 600; s++)
        if (m->by_status[s]) {
            snprintf(labels, sizeof(labels), "code=\"%u\"", s);
            line_u(&b, "vl2_http_errors_total", labels, m->by_status[s]);
        }
    head(&b, "vl2_http_daemon_errors_total", "counter", "Errors vl2d or the gateway reported, "
         "by vl2 status code.");
    for (s = 1; s <= 16; s++)
        if (m->errors_by_daemon_code[s]) {
            snprintf(labels, sizeof(labels), "status=\"%s\"", vl2_status_name(-(int) s));
            line_u(&b, "vl2_http_daemon_errors_total", labels, m->errors_by_daemon_code[s]);
        }
    head(&b, "vl2_http_generations_total", "counter", "Generations that ended with Done.");
    line_u(&b, "vl2_http_generations_total", NULL, m->generations);
    head(&b, "vl2_http_prompt_tokens_total", "counter", "Prompt tokens of finished generations.");
    line_u(&b, "vl2_http_prompt_tokens_total", NULL, m->prompt_tokens);
    head(&b, "vl2_http_generated_tokens_total", "counter", "Generated tokens.");
    line_u(&b, "vl2_http_generated_tokens_total", NULL, m->generated_tokens);
    if (m->cached_known) {
        head(&b, "vl2_http_cached_prompt_tokens_total", "counter", "Prompt tokens vl2d served "
             "from its prompt cache.");
        line_u(&b, "vl2_http_cached_prompt_tokens_total", NULL, m->cached_tokens);
    }
    head(&b, "vl2_http_client_disconnects_total", "counter", "Generations cancelled because "
         "the HTTP client went away.");
    line_u(&b, "vl2_http_client_disconnects_total", NULL, m->disconnects);
    head(&b, "vl2_http_in_flight_requests", "gauge", "HTTP requests being answered.");
    line_u(&b, "vl2_http_in_flight_requests", NULL, m->in_flight);
    hist(&b, "vl2_http_time_to_first_token_seconds", "Time to first token as vl2d measured it.",
         &m->ttft);
    hist(&b, "vl2_http_decode_tokens_per_second", "Decode speed of each generation.",
         &m->decode);
    pthread_mutex_unlock(&m->mu);

    head(&b, "vl2_daemon_up", "gauge", "1 when vl2d answered Status for this scrape.");
    line_u(&b, "vl2_daemon_up", NULL, st ? 1 : 0);
    if (st) {
        size_t i;

        head(&b, "vl2_daemon_queue_depth", "gauge", "Requests waiting in vl2d, all models.");
        line_u(&b, "vl2_daemon_queue_depth", NULL, st->queue_length);
        head(&b, "vl2_daemon_active_sequences", "gauge", "Sequences decoding in vl2d.");
        line_u(&b, "vl2_daemon_active_sequences", NULL, st->active_sequences);
        head(&b, "vl2_daemon_tokens_per_second", "gauge", "vl2d's decode rate over the last "
             "minute.");
        line_d(&b, "vl2_daemon_tokens_per_second", NULL, st->tokens_per_s);
        head(&b, "vl2_daemon_model_queue_depth", "gauge", "Requests waiting, by model.");
        for (i = 0; i < st->n_models; i++) {
            const char *n = st->models[i]->name ? st->models[i]->name : "";
            size_t k, o = 0;

            /* label values: escape backslash, quote and newline */
            o = (size_t) snprintf(labels, sizeof(labels), "model=\"");
            for (k = 0; n[k] && o + 4 < sizeof(labels); k++) {
                if (n[k] == '\\' || n[k] == '"')
                    labels[o++] = '\\';
                labels[o++] = n[k] == '\n' ? ' ' : n[k];
            }
            labels[o++] = '"';
            labels[o] = '\0';
            line_u(&b, "vl2_daemon_model_queue_depth", labels, st->models[i]->queue_length);
        }
    }
    if (!b.p)
        return strdup("");
    return b.p;   /* malloc'd by vl2h_buf_add */
}

/* gen.c - one Generate request: build it from conversation turns, send the
 * images as descriptors or bytes, stream the responses (text, progress,
 * JSON events), cancel on Ctrl-C. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "grounding.h"
#include "ipc.h"

/* Ctrl-C count while a request runs: 1 cancels it, 2 gives up waiting. */
static volatile sig_atomic_t interrupts;

static void on_sigint(int sig)
{
    (void) sig;
    if (interrupts < 2)
        interrupts++;
}

bool vl2_cli_interrupted(void)
{
    return interrupts >= 2;
}

static const char *stage_name(Vl2__Stage s)
{
    switch (s) {
    case VL2__STAGE__STAGE_TILING:  return "tiling";
    case VL2__STAGE__STAGE_VISION:  return "vision";
    case VL2__STAGE__STAGE_PREFILL: return "prefill";
    case VL2__STAGE__STAGE_LOADING: return "loading";
    default:                        return "working";
    }
}

static const char *finish_name(Vl2__FinishReason f)
{
    switch (f) {
    case VL2__FINISH_REASON__FINISH_EOS:    return "eos";
    case VL2__FINISH_REASON__FINISH_LENGTH: return "length";
    case VL2__FINISH_REASON__FINISH_STOP:   return "stop";
    default:                                return "unspecified";
    }
}

void vl2_cli_result_done(struct vl2_cli_result *res)
{
    if (!res)
        return;
    free(res->text);
    vl2_boxes_free(res->boxes, res->n_boxes);
    free(res->box_image);
    memset(res, 0, sizeof(*res));
}

static int append_text(struct vl2_cli_result *res, const uint8_t *p, size_t n)
{
    if (res->len + n + 1 > res->cap) {
        size_t cap = res->cap ? res->cap : 256;
        char *t;

        while (cap < res->len + n + 1)
            cap *= 2;
        t = realloc(res->text, cap);
        if (!t)
            return VL2_ENOMEM;
        res->text = t;
        res->cap = cap;
    }
    if (n)
        memcpy(res->text + res->len, p, n);
    res->len += n;
    res->text[res->len] = '\0';
    return 0;
}

/* A NUL-terminated copy of protobuf bytes (for cJSON). */
static char *bytes_str(const ProtobufCBinaryData *b)
{
    char *s = malloc(b->len + 1);

    if (!s)
        return NULL;
    if (b->len)
        memcpy(s, b->data, b->len);
    s[b->len] = '\0';
    return s;
}

/* "top_logprobs" of a token event: Token.top_logprobs in order. */
static int add_top(cJSON *o, const Vl2__Token *t)
{
    cJSON *arr = cJSON_AddArrayToObject(o, "top_logprobs");
    size_t i, j;

    if (!arr)
        return VL2_ENOMEM;
    for (i = 0; i < t->n_top_logprobs; i++) {
        const Vl2__TokenAlternative *a = t->top_logprobs[i];
        cJSON *e = cJSON_CreateObject(), *bytes;
        char *s = vl2_cli_piece_text(a->text.data, a->text.len);

        if (!e || !s || !cJSON_AddItemToArray(arr, e)) {
            cJSON_Delete(e);
            free(s);
            return VL2_ENOMEM;
        }
        cJSON_AddNumberToObject(e, "id", a->id);
        cJSON_AddStringToObject(e, "text", s);
        bytes = cJSON_AddArrayToObject(e, "bytes");
        for (j = 0; bytes && j < a->text.len; j++)
            cJSON_AddItemToArray(bytes, cJSON_CreateNumber(a->text.data[j]));
        cJSON_AddNumberToObject(e, "logprob", a->logprob);
        free(s);
    }
    return 0;
}

cJSON *vl2_cli_done_json(const struct vl2_cli_result *res, const struct vl2_box *boxes,
                         const uint32_t *box_image, size_t n_boxes)
{
    cJSON *o = cJSON_CreateObject(), *arr;

    cJSON_AddStringToObject(o, "event", "done");
    cJSON_AddStringToObject(o, "finish_reason", finish_name(res->finish_reason));
    cJSON_AddNumberToObject(o, "prompt_tokens", res->prompt_tokens);
    cJSON_AddNumberToObject(o, "image_tokens", res->image_tokens);
    cJSON_AddNumberToObject(o, "generated_tokens", res->generated_tokens);
    cJSON_AddNumberToObject(o, "time_to_first_token_s", res->ttft_s);
    cJSON_AddNumberToObject(o, "decode_tokens_per_s", res->decode_tps);
    cJSON_AddStringToObject(o, "text", res->text ? res->text : "");
    arr = cJSON_AddArrayToObject(o, "boxes");
    for (size_t i = 0; arr && i < n_boxes; i++) {
        cJSON *b = cJSON_CreateObject();

        cJSON_AddStringToObject(b, "label", boxes[i].label ? boxes[i].label : "");
        cJSON_AddNumberToObject(b, "x1", boxes[i].x1);
        cJSON_AddNumberToObject(b, "y1", boxes[i].y1);
        cJSON_AddNumberToObject(b, "x2", boxes[i].x2);
        cJSON_AddNumberToObject(b, "y2", boxes[i].y2);
        cJSON_AddNumberToObject(b, "image_index", box_image ? box_image[i] : 0);
        cJSON_AddItemToArray(arr, b);
    }
    return o;
}

void vl2_cli_print_boxes(FILE *f, const struct vl2_box *boxes, size_t n_boxes)
{
    for (size_t i = 0; i < n_boxes; i++) {
        fprintf(f, "%g %g %g %g ", (double) boxes[i].x1, (double) boxes[i].y1,
                (double) boxes[i].x2, (double) boxes[i].y2);
        /* one line per box, whatever the label holds */
        for (const char *p = boxes[i].label ? boxes[i].label : ""; *p; p++)
            fputc((unsigned char) *p < 0x20 || *p == 0x7f ? ' ' : *p, f);
        fputc('\n', f);
    }
    fflush(f);
}

/* ---- receiving -------------------------------------------------------- */

struct gen_ctx {
    const struct vl2_cli *cli;
    const struct vl2_cli_stream_opts *so;
    struct vl2_cli_result *res;
    uint64_t id;
    bool progress;          /* show progress on stderr */
    bool progress_shown;    /* a progress line is on the terminal */
    bool finished;          /* the request's final response came */
    bool top_logprobs;      /* token events list Token.top_logprobs */
    int failed;             /* < 0: out of memory while receiving */
    int error_code;         /* < 0: the request ended with this Error */
    struct vl2_err *err;    /* where its message goes */
};

static void clear_progress(struct gen_ctx *g)
{
    if (g->progress_shown) {
        fputs("\r\033[K", stderr);
        fflush(stderr);
        g->progress_shown = false;
    }
}

static int take_done(struct gen_ctx *g, const Vl2__Done *d)
{
    struct vl2_cli_result *res = g->res;

    res->done = true;
    res->finish_reason = d->finish_reason;
    res->prompt_tokens = d->prompt_tokens;
    res->image_tokens = d->image_tokens;
    res->generated_tokens = d->generated_tokens;
    res->ttft_s = d->time_to_first_token_s;
    res->decode_tps = d->decode_tokens_per_s;
    if (d->has_text && d->text.len && res->len == 0) {
        if (append_text(res, d->text.data, d->text.len) < 0)
            return VL2_ENOMEM;
        if (g->so->print_text && !g->cli->json) {
            fwrite(d->text.data, 1, d->text.len, stdout);
            fflush(stdout);
        }
    }
    if (d->n_boxes) {
        res->boxes = calloc(d->n_boxes, sizeof(*res->boxes));
        res->box_image = calloc(d->n_boxes, sizeof(*res->box_image));
        if (!res->boxes || !res->box_image)
            return VL2_ENOMEM;
        for (size_t i = 0; i < d->n_boxes; i++) {
            const Vl2__Box *b = d->boxes[i];

            res->boxes[i].label = strdup(b->label ? b->label : "");
            if (!res->boxes[i].label)
                return VL2_ENOMEM;
            res->n_boxes = i + 1;
            res->boxes[i].x1 = b->x1;
            res->boxes[i].y1 = b->y1;
            res->boxes[i].x2 = b->x2;
            res->boxes[i].y2 = b->y2;
            res->box_image[i] = b->image_index;
        }
    }
    if (!res->text && append_text(res, NULL, 0) < 0)
        return VL2_ENOMEM;
    return 0;
}

static int on_response(const Vl2__Response *resp, void *ud)
{
    struct gen_ctx *g = ud;
    const struct vl2_cli *cli = g->cli;
    cJSON *o;

    if (!resp->has_id || resp->id != g->id)
        return 0;   /* the Ack of our Cancel, or another request's */
    if (vl2_response_is_final(resp))
        g->finished = true;
    switch (resp->body_case) {
    case VL2__RESPONSE__BODY_ACCEPTED:
        if (cli->json) {
            o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "event", "accepted");
            cJSON_AddNumberToObject(o, "queue_position", resp->accepted->queue_position);
            vl2_cli_print_json_line(o);
        } else if (g->progress && resp->accepted->queue_position > 0) {
            fprintf(stderr, "\r\033[Kqueued, position %u", resp->accepted->queue_position);
            fflush(stderr);
            g->progress_shown = true;
        }
        break;
    case VL2__RESPONSE__BODY_PROGRESS:
        if (cli->json) {
            o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "event", "progress");
            cJSON_AddStringToObject(o, "stage", stage_name(resp->progress->stage));
            cJSON_AddNumberToObject(o, "fraction", resp->progress->fraction);
            vl2_cli_print_json_line(o);
        } else if (g->progress) {
            fprintf(stderr, "\r\033[K%s %3.0f%%", stage_name(resp->progress->stage),
                    100.0 * resp->progress->fraction);
            fflush(stderr);
            g->progress_shown = true;
        }
        break;
    case VL2__RESPONSE__BODY_TOKEN: {
        const Vl2__Token *t = resp->token;

        clear_progress(g);
        if (append_text(g->res, t->text.data, t->text.len) < 0) {
            g->failed = VL2_ENOMEM;
            break;
        }
        if (cli->json) {
            char *s = bytes_str(&t->text);

            o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "event", "token");
            cJSON_AddNumberToObject(o, "id", t->id);
            cJSON_AddStringToObject(o, "text", s ? s : "");
            if (t->has_logprob)
                cJSON_AddNumberToObject(o, "logprob", t->logprob);
            if (g->top_logprobs && add_top(o, t) < 0)
                g->failed = VL2_ENOMEM;
            free(s);
            vl2_cli_print_json_line(o);
        } else if (g->so->print_text) {
            fwrite(t->text.data, 1, t->text.len, stdout);
            fflush(stdout);
        }
        break;
    }
    case VL2__RESPONSE__BODY_DONE:
        clear_progress(g);
        if (take_done(g, resp->done) < 0) {
            g->failed = VL2_ENOMEM;
            break;
        }
        if (cli->json && g->so->json_done)
            vl2_cli_print_json_line(vl2_cli_done_json(g->res, g->res->boxes,
                                                      g->res->box_image, g->res->n_boxes));
        break;
    case VL2__RESPONSE__BODY_ERROR: {
        const Vl2__Error *e = resp->error;

        clear_progress(g);
        g->error_code = e->has_code && e->code < 0 ? e->code : VL2_EINTERNAL;
        (void) vl2_err_set(g->err, g->error_code, "vl2d: %s",
                           e->message && e->message[0] ? e->message
                                                       : vl2_status_name(g->error_code));
        break;
    }
    default:
        clear_progress(g);
        if (g->finished) {
            g->error_code = VL2_EPROTO;
            (void) vl2_err_set(g->err, VL2_EPROTO, "vl2: vl2d answered a generate request "
                               "with '%s'", vl2_ipc_response_name(resp->body_case));
        }
        break;
    }
    return 0;
}

/* ---- sending ---------------------------------------------------------- */

static int send_cancel(struct vl2_client *c, uint64_t target, struct vl2_err *err)
{
    Vl2__Request req = VL2__REQUEST__INIT;
    Vl2__Cancel cancel = VL2__CANCEL__INIT;
    uint64_t id;

    cancel.has_target_id = 1;
    cancel.target_id = target;
    req.body_case = VL2__REQUEST__BODY_CANCEL;
    req.cancel = &cancel;
    return vl2_client_send(c, &req, NULL, 0, &id, err);
}

static void fill_sampling(Vl2__Sampling *sp, const struct vl2_cli_sampling *s)
{
    sp->has_max_new_tokens = s->has_max_new;
    sp->max_new_tokens = s->max_new;
    sp->has_temperature = s->has_temperature;
    sp->temperature = s->temperature;
    sp->has_top_p = s->has_top_p;
    sp->top_p = s->top_p;
    sp->has_top_k = s->has_top_k;
    sp->top_k = s->top_k;
    sp->has_repetition_penalty = s->has_repetition_penalty;
    sp->repetition_penalty = s->repetition_penalty;
    sp->has_seed = s->has_seed;
    sp->seed = s->seed;
    sp->has_ignore_eos = s->ignore_eos;
    sp->ignore_eos = s->ignore_eos;
    sp->n_stop = s->n_stops;
    sp->stop = (char **) s->stops;
}

/* Wait for the responses of request @id, cancelling it on Ctrl-C. */
static int receive(struct vl2_client *c, struct gen_ctx *g, struct vl2_err *err)
{
    int timeout = g->cli->timeout_set ? g->cli->timeout_ms : -1;
    bool cancel_sent = false;

    while (!g->finished) {
        struct pollfd p = { .fd = vl2_client_fd(c), .events = POLLIN };
        int r;

        if (interrupts >= 2) {
            clear_progress(g);
            return vl2_err_set(err, VL2_ECANCELED, "vl2: interrupted");
        }
        if (interrupts == 1 && !cancel_sent) {
            cancel_sent = true;
            clear_progress(g);
            if (isatty(STDERR_FILENO))
                fputs("\n(cancelling; press Ctrl-C again to quit)\n", stderr);
            r = send_cancel(c, g->id, err);
            if (r < 0)
                return r;
        }
        r = poll(&p, 1, timeout);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return vl2_err_set(err, VL2_EIO, "vl2: poll: %s", strerror(errno));
        if (r == 0) {
            clear_progress(g);
            return vl2_err_set(err, VL2_ETIMEDOUT, "vl2: no response from vl2d at '%s' "
                               "within %d ms", vl2_client_socket(c), timeout);
        }
        r = vl2_client_recv(c, on_response, g, err);
        if (r < 0) {
            clear_progress(g);
            return r;
        }
        if (g->failed < 0)
            return vl2_err_set(err, g->failed, "vl2: out of memory");
    }
    return g->error_code;
}

int vl2_cli_generate(struct vl2_client *c, const struct vl2_cli *cli, const char *model,
                     const struct vl2_cli_sampling *s, const struct vl2_cli_turn *turns,
                     size_t n_turns, const struct vl2_cli_stream_opts *so,
                     struct vl2_cli_result *res, struct vl2_err *err)
{
    const Vl2__HelloReply *hello = vl2_client_hello(c);
    size_t max_fds = hello && hello->has_max_fds ? hello->max_fds : VL2_IPC_MAX_FDS;
    Vl2__Request req = VL2__REQUEST__INIT;
    Vl2__Generate gen = VL2__GENERATE__INIT;
    Vl2__Sampling sp = VL2__SAMPLING__INIT;
    Vl2__Message *msgs = NULL, **msg_ptrs = NULL;
    Vl2__Image *imgs = NULL, **img_ptrs = NULL;
    struct gen_ctx g = { .cli = cli, .so = so, .res = res, .err = err };
    struct sigaction sa = { .sa_handler = on_sigint }, old_sa;
    size_t n_images = 0, n_fds = 0, k = 0;
    int *fds = NULL, r;

    memset(res, 0, sizeof(*res));
    for (size_t t = 0; t < n_turns; t++)
        n_images += turns[t].n_images;
    msgs = calloc(n_turns ? n_turns : 1, sizeof(*msgs));
    msg_ptrs = calloc(n_turns ? n_turns : 1, sizeof(*msg_ptrs));
    imgs = calloc(n_images ? n_images : 1, sizeof(*imgs));
    img_ptrs = calloc(n_images ? n_images : 1, sizeof(*img_ptrs));
    fds = calloc(n_images ? n_images : 1, sizeof(*fds));
    if (!msgs || !msg_ptrs || !imgs || !img_ptrs || !fds) {
        r = vl2_err_set(err, VL2_ENOMEM, "vl2: out of memory");
        goto out_free;
    }
    for (size_t t = 0; t < n_turns; t++) {
        Vl2__Message *m = &msgs[t];

        vl2__message__init(m);
        m->has_role = 1;
        m->role = turns[t].role;
        m->text = turns[t].text;
        m->images = &img_ptrs[k];
        m->n_images = turns[t].n_images;
        for (size_t i = 0; i < turns[t].n_images; i++, k++) {
            const struct vl2_cli_image *im = turns[t].images[i];
            Vl2__Image *pi = &imgs[k];

            vl2__image__init(pi);
            if (im->exif >= 0) {
                pi->has_apply_exif = 1;
                pi->apply_exif = im->exif != 0;
            }
            if (im->fd >= 0) {
                if (n_fds == max_fds) {
                    r = vl2_err_set(err, VL2_ELIMIT, "vl2: vl2d takes at most %zu image "
                                    "descriptors per request; use --send-bytes", max_fds);
                    goto out_free;
                }
                /* the descriptor shares its offset with the daemon's copy:
                 * start every request at the beginning of the file */
                (void) lseek(im->fd, 0, SEEK_SET);
                pi->source_case = VL2__IMAGE__SOURCE_FD_INDEX;
                pi->fd_index = (uint32_t) n_fds;
                fds[n_fds++] = im->fd;
            } else {
                pi->source_case = VL2__IMAGE__SOURCE_DATA;
                pi->data.data = im->data;
                pi->data.len = im->size;
            }
            img_ptrs[k] = pi;
        }
        msg_ptrs[t] = m;
    }
    fill_sampling(&sp, s);
    gen.model = (char *) (model ? model : "");
    gen.n_messages = n_turns;
    gen.messages = msg_ptrs;
    gen.sampling = &sp;
    gen.has_grounding = so->grounding;
    gen.grounding = so->grounding;
    gen.has_stream = 1;
    gen.stream = 1;
    if (s->top_logprobs && cli->json) {
        gen.has_top_logprobs = 1;
        gen.top_logprobs = s->top_logprobs;
        g.top_logprobs = true;
    }
    req.body_case = VL2__REQUEST__BODY_GENERATE;
    req.generate = &gen;

    g.progress = vl2_cli_show_progress(cli);
    vl2_client_set_timeout(c, cli->timeout_set ? cli->timeout_ms : -1);
    interrupts = 0;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;   /* no SA_RESTART: poll() returns on Ctrl-C */
    (void) sigaction(SIGINT, &sa, &old_sa);
    r = vl2_client_send(c, &req, fds, n_fds, &g.id, err);
    if (r == 0)
        r = receive(c, &g, err);
    (void) sigaction(SIGINT, &old_sa, NULL);
    if (r == 0 && !res->done)
        r = vl2_err_set(err, VL2_EPROTO, "vl2: vl2d ended the request without an answer");
    if (r == 0 && !res->text)
        r = append_text(res, NULL, 0);

out_free:
    free(fds);
    free(img_ptrs);
    free(imgs);
    free(msg_ptrs);
    free(msgs);
    return r;
}

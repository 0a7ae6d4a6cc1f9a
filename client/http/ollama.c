/* ollama.c - the Ollama dialect: POST /api/chat and /api/generate
 * (NDJSON streaming unless "stream": false), GET /api/tags, GET /api/ps,
 * GET /api/version, POST /api/show.
 *
 * Requests: "images" are raw base64 (no data: prefix), per message for
 * /api/chat, beside "prompt" for /api/generate; a text without "<image>"
 * gets its images in front, as vl2d does.  "options" maps temperature,
 * top_p, top_k, seed, num_predict (< 0: the daemon's limit), stop,
 * repeat_penalty (frequency_penalty and presence_penalty as in the OpenAI
 * dialect); other options are ignored.  "keep_alive" 0 ("0", "0s", "0m")
 * unloads the model after the request; any other value leaves it to vl2d's
 * idle-unload.  A request without messages (or prompt) loads the model (a
 * model vl2-http has seen before, from its directory) or, with keep_alive
 * 0, unloads it, and answers done_reason "load" / "unload" as Ollama does.
 * "logprobs" true (with "top_logprobs" 0..20 alternatives) adds
 * "logprobs": [{token, logprob, bytes, top_logprobs}] to each streamed
 * object (its token) and to the final object of a non-streamed answer (all
 * of them).  The final object carries total_duration, load_duration,
 * prompt_eval_count, prompt_eval_duration, eval_count and eval_duration in
 * nanoseconds, and, when the request had images, "boxes" (pixels of the
 * original image) as the OpenAI dialect does.
 */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"

/* ---- the request ------------------------------------------------------- */

struct ochat {
    struct vl2h_server *srv;
    struct vl2h_gen *gen;
    bool generate;            /* /api/generate: "response" instead of "message" */
    bool stream;
    bool unload_after;        /* keep_alive 0 */
    bool grounding;
    bool logprobs;            /* "logprobs": true */
    char *model;
    double t0;                /* monotonic, at the request's start */
    double load_s;            /* seconds spent loading the model for it */
    struct vl2h_event first;
    bool have_first;
    bool ended;
};

/* keep_alive: 0 means unload after.  Returns 1 for zero, 0 otherwise, or
 * VL2_EINVAL. */
static int keep_alive_zero(const cJSON *o, struct vl2_err *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, "keep_alive");
    char *end = NULL;
    double d;

    if (!v || cJSON_IsNull(v))
        return 0;
    if (cJSON_IsNumber(v))
        return v->valuedouble == 0;
    if (!cJSON_IsString(v))
        return vl2_err_set(err, VL2_EINVAL, "vl2-http: 'keep_alive': expected a duration");
    d = strtod(v->valuestring, &end);
    if (end == v->valuestring || (*end && strcmp(end, "s") && strcmp(end, "m") &&
                                  strcmp(end, "h") && strcmp(end, "ms")))
        return vl2_err_set(err, VL2_EINVAL, "vl2-http: 'keep_alive': '%.40s' is not a "
                           "duration (\"5m\", \"0\", -1)", v->valuestring);
    return d == 0;
}

static int options(const cJSON *o, struct vl2h_params *p, struct vl2_err *err)
{
    const cJSON *opt = cJSON_GetObjectItemCaseSensitive(o, "options");
    double d, fp = 0, pp = 0;
    int64_t i64;
    int r;

    if (!opt || cJSON_IsNull(opt))
        return 0;
    if (!cJSON_IsObject(opt))
        return vl2_err_set(err, VL2_EINVAL, "vl2-http: 'options': expected an object");
    if ((r = vl2h_get_number(opt, "temperature", 0, 100, &d, err)) < 0)
        return r;
    if (r) {
        p->sampling.has_temperature = 1;
        p->sampling.temperature = (float) d;
    }
    if ((r = vl2h_get_number(opt, "top_p", 0, 1, &d, err)) < 0)
        return r;
    if (r && d > 0) {       /* Ollama treats 0 as off */
        p->sampling.has_top_p = 1;
        p->sampling.top_p = (float) d;
    }
    if ((r = vl2h_get_int(opt, "top_k", 0, INT32_MAX, &i64, err)) < 0)
        return r;
    if (r) {
        p->sampling.has_top_k = 1;
        p->sampling.top_k = (uint32_t) i64;
    }
    if ((r = vl2h_get_int(opt, "seed", -9.2e18, 1.8e19, &i64, err)) < 0)
        return r;
    if (r) {
        p->sampling.has_seed = 1;
        p->sampling.seed = (uint64_t) i64;
    }
    if ((r = vl2h_get_int(opt, "num_predict", -2, UINT32_MAX, &i64, err)) < 0)
        return r;
    if (r && i64 == 0)
        return vl2_err_set(err, VL2_EINVAL, "vl2-http: 'options.num_predict': must not be 0");
    if (r && i64 > 0) {
        p->sampling.has_max_new_tokens = 1;
        p->sampling.max_new_tokens = (uint32_t) i64;
    }
    if ((r = vl2h_get_stops(opt, "stop", p, err)) < 0)
        return r;
    if ((r = vl2h_get_number(opt, "frequency_penalty", -2, 2, &fp, err)) < 0)
        return r;
    if ((r = vl2h_get_number(opt, "presence_penalty", -2, 2, &pp, err)) < 0)
        return r;
    if (fp != 0 || pp != 0) {
        p->sampling.has_repetition_penalty = 1;
        p->sampling.repetition_penalty = vl2h_penalty_map(fp, pp);
    }
    if ((r = vl2h_get_number(opt, "repeat_penalty", 0.01, 100, &d, err)) < 0)
        return r;
    if (r) {
        p->sampling.has_repetition_penalty = 1;
        p->sampling.repetition_penalty = (float) d;
    }
    return 0;
}

/* "images": [base64...] of @o into @imgs. */
static int images(const cJSON *o, const char *where, struct vl2h_image *imgs, size_t *n_imgs,
                  size_t before, struct vl2_err *err)
{
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(o, "images"), *e;
    size_t k = 0;

    *n_imgs = 0;
    if (!arr || cJSON_IsNull(arr))
        return 0;
    if (!cJSON_IsArray(arr))
        return vl2_err_set(err, VL2_EINVAL, "vl2-http: '%simages': expected an array of "
                           "base64 strings", where);
    cJSON_ArrayForEach(e, arr) {
        const char *s;

        if (!cJSON_IsString(e))
            return vl2_err_set(err, VL2_EINVAL, "vl2-http: '%simages[%zu]': expected a base64 "
                               "string", where, k);
        if (before + k >= VL2H_MAX_IMAGES)
            return vl2_err_set(err, VL2_ELIMIT, "vl2-http: more than %d images",
                               VL2H_MAX_IMAGES);
        s = e->valuestring;
        if (!strncmp(s, "data:", 5) && strchr(s, ','))
            s = strchr(s, ',') + 1;   /* tolerated: some clients send data: URIs */
        else if (!strncasecmp(s, "http://", 7) || !strncasecmp(s, "https://", 8))
            return vl2_err_set(err, VL2_EUNSUPPORTED, "vl2-http: '%simages[%zu]': remote URLs "
                               "are refused (vl2d fetches nothing); send base64", where, k);
        if (vl2h_base64_decode(s, strlen(s), &imgs[k].data, &imgs[k].size) < 0)
            return vl2_err_set(err, VL2_EINVAL, "vl2-http: '%simages[%zu]': not valid base64",
                               where, k);
        k++;
        *n_imgs = k;
    }
    return 0;
}

static void free_images(struct vl2h_image *imgs, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(imgs[i].data);
}

static int add_text_msg(struct vl2h_params *p, Vl2__Role role, const char *text,
                        struct vl2h_image *imgs, size_t n_imgs, struct vl2_err *err)
{
    char *t = strdup(text ? text : "");

    if (!t) {
        free_images(imgs, n_imgs);
        return vl2_err_set(err, VL2_ENOMEM, "vl2-http: out of memory");
    }
    return vl2h_params_add_msg(p, role, t, imgs, n_imgs, err);
}

static int parse_chat(const cJSON *o, struct vl2h_params *p, struct vl2_err *err)
{
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(o, "messages"), *m;
    size_t idx = 0;
    int r;

    if (msgs && !cJSON_IsNull(msgs) && !cJSON_IsArray(msgs))
        return vl2_err_set(err, VL2_EINVAL, "vl2-http: 'messages': expected an array");
    cJSON_ArrayForEach(m, msgs) {
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
        struct vl2h_image imgs[VL2H_MAX_IMAGES];
        size_t n_imgs = 0;
        char where[48];
        Vl2__Role rl;

        snprintf(where, sizeof(where), "messages[%zu].", idx);
        if (!cJSON_IsObject(m) || !cJSON_IsString(role))
            return vl2_err_set(err, VL2_EINVAL, "vl2-http: 'messages[%zu]': expected an object "
                               "with a 'role'", idx);
        if (!strcmp(role->valuestring, "system"))
            rl = VL2__ROLE__ROLE_SYSTEM;
        else if (!strcmp(role->valuestring, "user"))
            rl = VL2__ROLE__ROLE_USER;
        else if (!strcmp(role->valuestring, "assistant"))
            rl = VL2__ROLE__ROLE_ASSISTANT;
        else
            return vl2_err_set(err, VL2_EINVAL, "vl2-http: 'messages[%zu].role': '%.40s' is "
                               "not supported (system, user, assistant)", idx,
                               role->valuestring);
        if (content && !cJSON_IsNull(content) && !cJSON_IsString(content))
            return vl2_err_set(err, VL2_EINVAL, "vl2-http: 'messages[%zu].content': expected a "
                               "string", idx);
        r = images(m, where, imgs, &n_imgs, p->n_images, err);
        if (r < 0) {
            free_images(imgs, n_imgs);
            return r;
        }
        r = add_text_msg(p, rl, cJSON_IsString(content) ? content->valuestring : "", imgs,
                         n_imgs, err);
        if (r < 0)
            return r;
        idx++;
    }
    return 0;
}

/* "logprobs" and "top_logprobs" (0..20, used with logprobs) into @p. */
static int logprob_options(const cJSON *o, struct vl2h_params *p, struct vl2_err *err)
{
    int64_t n = 0;
    int r;

    if ((r = vl2h_get_bool(o, "logprobs", &p->logprobs, err)) < 0)
        return r;
    if ((r = vl2h_get_int(o, "top_logprobs", 0, 20, &n, err)) < 0)
        return r;
    p->top_logprobs = p->logprobs ? (uint32_t) n : 0;
    return 0;
}

static int parse_generate(const cJSON *o, struct vl2h_params *p, struct vl2_err *err)
{
    struct vl2h_image imgs[VL2H_MAX_IMAGES];
    const char *prompt = NULL, *system = NULL;
    size_t n_imgs = 0;
    int r;

    if ((r = vl2h_get_string(o, "prompt", &prompt, err)) < 0)
        return r;
    if ((r = vl2h_get_string(o, "system", &system, err)) < 0)
        return r;
    r = images(o, "", imgs, &n_imgs, 0, err);
    if (r < 0) {
        free_images(imgs, n_imgs);
        return r;
    }
    if ((!prompt || !prompt[0]) && n_imgs == 0)
        return 0;   /* a load or unload request */
    if (system && system[0]) {
        r = add_text_msg(p, VL2__ROLE__ROLE_SYSTEM, system, NULL, 0, err);
        if (r < 0) {
            free_images(imgs, n_imgs);
            return r;
        }
    }
    return add_text_msg(p, VL2__ROLE__ROLE_USER, prompt, imgs, n_imgs, err);
}

/* ---- the answer -------------------------------------------------------- */

static cJSON *base_object(const struct ochat *oc)
{
    cJSON *o = cJSON_CreateObject();
    char ts[64];

    vl2h_rfc3339(vl2h_now(), ts, sizeof(ts));
    cJSON_AddStringToObject(o, "model", oc->model);
    cJSON_AddStringToObject(o, "created_at", ts);
    return o;
}

static void add_text(const struct ochat *oc, cJSON *o, const char *text)
{
    if (oc->generate) {
        cJSON_AddStringToObject(o, "response", text);
    } else {
        cJSON *m = cJSON_AddObjectToObject(o, "message");

        cJSON_AddStringToObject(m, "role", "assistant");
        cJSON_AddStringToObject(m, "content", text);
    }
}

static double ns(double s)
{
    return s > 0 ? (double) (long long) (s * 1e9) : 0.0;
}

static cJSON *final_object(struct ochat *oc, const char *text, const struct vl2h_done *d)
{
    cJSON *o = base_object(oc), *boxes;
    double total = vl2h_mono() - oc->t0;
    double eval = d->generated_tokens > 1 && d->tps > 0 ? (d->generated_tokens - 1) / d->tps
                                                        : 0.0;
    size_t i;

    add_text(oc, o, text);
    cJSON_AddBoolToObject(o, "done", 1);
    cJSON_AddStringToObject(o, "done_reason",
                            d->finish == VL2__FINISH_REASON__FINISH_LENGTH ? "length" : "stop");
    cJSON_AddNumberToObject(o, "total_duration", ns(total));
    cJSON_AddNumberToObject(o, "load_duration", ns(oc->load_s));
    cJSON_AddNumberToObject(o, "prompt_eval_count", d->prompt_tokens);
    cJSON_AddNumberToObject(o, "prompt_eval_duration", ns(d->ttft_s));
    cJSON_AddNumberToObject(o, "eval_count", d->generated_tokens);
    cJSON_AddNumberToObject(o, "eval_duration", ns(eval));
    if (oc->grounding) {
        boxes = cJSON_CreateArray();
        for (i = 0; i < d->n_boxes; i++) {
            const Vl2__Box *b = d->boxes[i];
            cJSON *bo = cJSON_CreateObject();

            cJSON_AddStringToObject(bo, "label", b->label ? b->label : "");
            cJSON_AddNumberToObject(bo, "x1", b->x1);
            cJSON_AddNumberToObject(bo, "y1", b->y1);
            cJSON_AddNumberToObject(bo, "x2", b->x2);
            cJSON_AddNumberToObject(bo, "y2", b->y2);
            cJSON_AddNumberToObject(bo, "image_index", b->image_index);
            cJSON_AddItemToArray(boxes, bo);
        }
        if (oc->generate)
            cJSON_AddItemToObject(o, "boxes", boxes);
        else
            cJSON_AddItemToObject(cJSON_GetObjectItemCaseSensitive(o, "message"), "boxes", boxes);
    }
    return o;
}

static void unload_after(struct ochat *oc)
{
    struct vl2_client *c = NULL;

    if (!oc->unload_after || !oc->model)
        return;
    oc->unload_after = false;
    if (vl2h_connect(oc->srv, &c, NULL) == 0)
        (void) vl2h_unload_model(c, oc->model, NULL);
    vl2_client_close(c);
}

static void ochat_free(void *ud)
{
    struct ochat *oc = ud;

    if (!oc)
        return;
    vl2h_gen_free(oc->gen);
    oc->gen = NULL;
    unload_after(oc);
    if (oc->have_first)
        vl2h_event_done(&oc->first);
    free(oc->model);
    free(oc);
}

static int ochat_stream(void *ud, struct vl2h_buf *out)
{
    struct ochat *oc = ud;
    struct vl2h_event ev;
    cJSON *o;
    int r = 0;

    if (oc->ended)
        return 0;
    if (oc->have_first) {
        ev = oc->first;
        oc->have_first = false;
    } else if (vl2h_gen_next(oc->gen, &ev) < 0) {
        return 0;
    }
    switch (ev.kind) {
    case VL2H_EV_TOKEN:
        o = base_object(oc);
        add_text(oc, o, ev.text);
        cJSON_AddBoolToObject(o, "done", 0);
        if (oc->logprobs && !cJSON_AddItemToArray(cJSON_AddArrayToObject(o, "logprobs"),
                                                  vl2h_logprob_json(&ev, false))) {
            cJSON_Delete(o);
            o = NULL;
        }
        r = vl2h_buf_json(out, "", o, "\n") < 0 ? -1 : 1;
        break;
    case VL2H_EV_DONE:
        vl2h_metrics_done_gen(&oc->srv->metrics, ev.done.prompt_tokens,
                              ev.done.generated_tokens, ev.done.cached_tokens, ev.done.ttft_s,
                              ev.done.tps);
        r = vl2h_buf_json(out, "", final_object(oc, ev.text ? ev.text : "", &ev.done), "\n") < 0
                ? -1 : 0;
        oc->ended = true;
        break;
    case VL2H_EV_ERROR:
        vl2h_metrics_daemon_error(&oc->srv->metrics, ev.err.code);
        r = vl2h_buf_json(out, "", vl2h_error_json(VL2H_OLLAMA, 500, NULL, ev.err.msg), "\n") < 0
                ? -1 : 0;
        oc->ended = true;
        break;
    case VL2H_EV_GONE:
        vl2h_metrics_disconnect(&oc->srv->metrics);
        oc->ended = true;
        r = -1;
        break;
    }
    vl2h_event_done(&ev);
    return r;
}

static int ochat_whole(struct vl2h_req *rq, struct ochat *oc)
{
    struct vl2h_buf text = { 0 };
    struct vl2h_event ev;
    cJSON *lps = oc->logprobs ? cJSON_CreateArray() : NULL, *o;
    int r;

    for (;;) {
        if (vl2h_gen_next(oc->gen, &ev) < 0) {
            cJSON_Delete(lps);
            vl2h_buf_done(&text);
            return vl2h_reply_error(rq, 500, NULL, "vl2-http: the generation ended early");
        }
        if (ev.kind == VL2H_EV_TOKEN) {
            r = vl2h_buf_add(&text, ev.text, ev.len);
            if (r == 0 && oc->logprobs &&
                (!lps || !cJSON_AddItemToArray(lps, vl2h_logprob_json(&ev, false))))
                r = VL2_ENOMEM;
            vl2h_event_done(&ev);
            if (r < 0) {
                cJSON_Delete(lps);
                vl2h_buf_done(&text);
                return vl2h_reply_error(rq, 500, NULL, "vl2-http: out of memory");
            }
            continue;
        }
        break;
    }
    if (ev.kind == VL2H_EV_GONE) {
        vl2h_metrics_disconnect(&oc->srv->metrics);
        r = VL2_ECANCELED;
    } else if (ev.kind == VL2H_EV_ERROR) {
        r = vl2h_reply_vl2_error(rq, &ev.err);
    } else {
        vl2h_metrics_done_gen(&oc->srv->metrics, ev.done.prompt_tokens,
                              ev.done.generated_tokens, ev.done.cached_tokens, ev.done.ttft_s,
                              ev.done.tps);
        if (!text.len && ev.text)
            (void) vl2h_buf_add(&text, ev.text, ev.len);
        o = final_object(oc, text.p ? text.p : "", &ev.done);
        if (o && lps) {
            cJSON_AddItemToObject(o, "logprobs", lps);
            lps = NULL;
        }
        r = vl2h_reply_json(rq, 200, o);
    }
    cJSON_Delete(lps);
    vl2h_event_done(&ev);
    vl2h_buf_done(&text);
    return r;
}

/* Make sure the model of @p is loaded: loads a remembered one that is not.
 * Fills oc->load_s. */
static int ensure_model(struct vl2h_server *srv, struct vl2_client *c, struct vl2h_params *p,
                        struct ochat *oc, struct vl2_err *err)
{
    int r = vl2h_check_model(srv, c, p, err);
    char dir[1024], *name;

    if (r != VL2_ENOTFOUND || !p->model[0])
        return r;
    name = strdup(p->model);
    if (!name)
        return vl2_err_set(err, VL2_ENOMEM, "vl2-http: out of memory");
    {
        size_t n = strlen(name);

        if (n > 7 && !strcmp(name + n - 7, ":latest"))
            name[n - 7] = '\0';
    }
    if (!vl2h_server_known_dir(srv, name, dir, sizeof(dir))) {
        free(name);
        return r;   /* never seen: 404 */
    }
    r = vl2h_load_model(srv, c, name, &oc->load_s, err);
    free(name);
    if (r < 0)
        return r;
    return vl2h_check_model(srv, c, p, err);
}

int vl2h_ollama_chat(struct vl2h_req *rq, bool generate)
{
    struct vl2h_params p;
    struct vl2_err err = { 0 };
    struct vl2_client *c = NULL;
    struct ochat *oc = NULL;
    const char *model = NULL;
    bool stream = true;
    cJSON *body, *o;
    int r, zero;

    body = vl2h_body_object(rq);
    if (!body)
        return 0;
    vl2h_params_init(&p);
    oc = calloc(1, sizeof(*oc));
    if (!oc) {
        r = vl2h_reply_error(rq, 500, NULL, "vl2-http: out of memory");
        goto out_free;
    }
    oc->srv = rq->srv;
    oc->generate = generate;
    oc->t0 = vl2h_mono();
    r = vl2h_get_string(body, "model", &model, &err);
    if (r == 0 && (!model || !model[0]))
        r = vl2_err_set(&err, VL2_EINVAL, "vl2-http: 'model': required");
    if (r >= 0)
        r = vl2h_get_bool(body, "stream", &stream, &err);
    if (r >= 0)
        r = zero = keep_alive_zero(body, &err);
    if (r >= 0)
        r = generate ? parse_generate(body, &p, &err) : parse_chat(body, &p, &err);
    if (r >= 0)
        r = options(body, &p, &err);
    if (r >= 0)
        r = logprob_options(body, &p, &err);
    if (r < 0) {
        r = vl2h_reply_vl2_error(rq, &err);
        goto out_free;
    }
    oc->stream = stream;
    oc->unload_after = zero;
    oc->logprobs = p.logprobs;
    p.model = strdup(model);
    oc->model = strdup(model);
    if (!p.model || !oc->model) {
        r = vl2h_reply_error(rq, 500, NULL, "vl2-http: out of memory");
        goto out_free;
    }
    r = vl2h_connect(rq->srv, &c, &err);
    if (r < 0) {
        r = vl2h_reply_vl2_error(rq, &err);
        goto out_free;
    }
    if (p.n_msgs == 0) {
        /* load, or unload with keep_alive 0 */
        if (zero) {
            Vl2__Response *resp = NULL;
            const Vl2__ModelInfo *mi;

            r = vl2h_list_models(rq->srv, c, &resp, &err);
            mi = r == 0 ? vl2h_find_model(resp->models, model) : NULL;
            if (r == 0 && !mi)
                r = vl2_err_set(&err, VL2_ENOTFOUND, "vl2-http: model '%s' not found", model);
            if (r == 0)
                r = vl2h_unload_model(c, mi->name, &err);
            if (resp)
                vl2__response__free_unpacked(resp, NULL);
            oc->unload_after = false;
        } else {
            r = ensure_model(rq->srv, c, &p, oc, &err);
        }
        vl2_client_close(c);
        if (r < 0) {
            r = vl2h_reply_vl2_error(rq, &err);
            goto out_free;
        }
        o = base_object(oc);
        add_text(oc, o, "");
        cJSON_AddStringToObject(o, "done_reason", zero ? "unload" : "load");
        cJSON_AddBoolToObject(o, "done", 1);
        r = vl2h_reply_json(rq, 200, o);
        goto out_free;
    }
    r = ensure_model(rq->srv, c, &p, oc, &err);
    if (r < 0) {
        vl2_client_close(c);
        if (r == VL2_ENOTFOUND)
            r = vl2h_reply_error(rq, 404, NULL, "model '%s' not found", model);
        else
            r = vl2h_reply_vl2_error(rq, &err);
        goto out_free;
    }
    free(oc->model);
    oc->model = strdup(p.model);
    oc->grounding = p.grounding = p.n_images > 0;
    oc->gen = vl2h_gen_start(rq->srv, c, &p, vl2h_req_client_fd(rq), &err);
    if (!oc->gen || !oc->model) {
        r = vl2h_reply_vl2_error(rq, &err);
        goto out_free;
    }
    if (!oc->stream) {
        r = ochat_whole(rq, oc);
        goto out_free;
    }
    r = vl2h_gen_first(rq, oc->gen, &oc->first);
    if (r != 1)
        goto out_free;
    oc->have_first = true;
    vl2h_params_done(&p);
    cJSON_Delete(body);
    return vl2h_reply_stream(rq, "application/x-ndjson", ochat_stream, ochat_free, oc);

out_free:
    ochat_free(oc);
    vl2h_params_done(&p);
    cJSON_Delete(body);
    return r;
}

/* ---- tags, ps, version, show --------------------------------------------- */

static uint64_t fnv(const char *s, uint64_t h)
{
    for (; *s; s++) {
        h ^= (unsigned char) *s;
        h *= 0x100000001b3ull;
    }
    return h;
}

static cJSON *details_json(void)
{
    cJSON *d = cJSON_CreateObject(), *fam;

    cJSON_AddStringToObject(d, "parent_model", "");
    cJSON_AddStringToObject(d, "format", "safetensors");
    cJSON_AddStringToObject(d, "family", "deepseek-vl2");
    fam = cJSON_AddArrayToObject(d, "families");
    cJSON_AddItemToArray(fam, cJSON_CreateString("deepseek-vl2"));
    cJSON_AddStringToObject(d, "parameter_size", "");
    cJSON_AddStringToObject(d, "quantization_level", "BF16");
    return d;
}

static cJSON *tag_json(const struct vl2h_server *srv, const Vl2__ModelInfo *mi, bool running)
{
    cJSON *o = cJSON_CreateObject();
    char digest[65], ts[64];
    uint64_t h = 0xcbf29ce484222325ull;
    int i;

    for (i = 0; i < 4; i++) {
        h = fnv(mi->name, fnv(mi->dir ? mi->dir : "", h + (uint64_t) i));
        snprintf(digest + i * 16, sizeof(digest) - (size_t) i * 16, "%016llx",
                 (unsigned long long) h);
    }
    vl2h_rfc3339(srv->start_time, ts, sizeof(ts));
    cJSON_AddStringToObject(o, "name", mi->name);
    cJSON_AddStringToObject(o, "model", mi->name);
    if (!running)
        cJSON_AddStringToObject(o, "modified_at", ts);
    cJSON_AddNumberToObject(o, "size", (double) mi->memory_bytes);
    cJSON_AddStringToObject(o, "digest", digest);
    cJSON_AddItemToObject(o, "details", details_json());
    if (running) {
        cJSON_AddStringToObject(o, "expires_at", "0001-01-01T00:00:00Z");
        cJSON_AddNumberToObject(o, "size_vram",
                                mi->backend && strcmp(mi->backend, "cpu")
                                    ? (double) mi->memory_bytes : 0.0);
    }
    return o;
}

int vl2h_ollama_tags(struct vl2h_req *rq, bool running)
{
    struct vl2_err err = { 0 };
    struct vl2_client *c = NULL;
    Vl2__Response *resp = NULL;
    cJSON *o, *arr;
    size_t i;
    int r;

    r = vl2h_connect(rq->srv, &c, &err);
    if (r == 0)
        r = vl2h_list_models(rq->srv, c, &resp, &err);
    vl2_client_close(c);
    if (r < 0)
        return vl2h_reply_vl2_error(rq, &err);
    o = cJSON_CreateObject();
    arr = cJSON_AddArrayToObject(o, "models");
    for (i = 0; i < resp->models->n_models; i++) {
        const Vl2__ModelInfo *mi = resp->models->models[i];

        if (!mi->name || mi->state == VL2__MODEL_STATE__MODEL_STATE_FAILED)
            continue;
        if (running && mi->state != VL2__MODEL_STATE__MODEL_STATE_READY)
            continue;
        cJSON_AddItemToArray(arr, tag_json(rq->srv, mi, running));
    }
    vl2__response__free_unpacked(resp, NULL);
    return vl2h_reply_json(rq, 200, o);
}

int vl2h_ollama_version(struct vl2h_req *rq)
{
    cJSON *o = cJSON_CreateObject();

    cJSON_AddStringToObject(o, "version", VL2_VERSION);
    return vl2h_reply_json(rq, 200, o);
}

int vl2h_ollama_show(struct vl2h_req *rq)
{
    struct vl2_err err = { 0 };
    struct vl2_client *c = NULL;
    Vl2__Response *resp = NULL;
    const Vl2__ModelInfo *mi;
    const char *model = NULL;
    cJSON *body, *o, *caps, *info;
    char ts[64];
    int r;

    body = vl2h_body_object(rq);
    if (!body)
        return 0;
    r = vl2h_get_string(body, "model", &model, &err);
    if (r == 0)
        r = vl2h_get_string(body, "name", &model, &err);   /* the older spelling */
    if (r >= 0 && (!model || !model[0]))
        r = vl2_err_set(&err, VL2_EINVAL, "vl2-http: 'model': required");
    if (r >= 0)
        r = vl2h_connect(rq->srv, &c, &err);
    if (r >= 0)
        r = vl2h_list_models(rq->srv, c, &resp, &err);
    vl2_client_close(c);
    if (r < 0) {
        cJSON_Delete(body);
        return vl2h_reply_vl2_error(rq, &err);
    }
    mi = vl2h_find_model(resp->models, model);
    if (!mi) {
        r = vl2h_reply_error(rq, 404, NULL, "model '%s' not found", model);
        goto out_free;
    }
    vl2h_rfc3339(rq->srv->start_time, ts, sizeof(ts));
    o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "modelfile", "");
    cJSON_AddStringToObject(o, "parameters", "");
    cJSON_AddStringToObject(o, "template", "");
    cJSON_AddItemToObject(o, "details", details_json());
    info = cJSON_AddObjectToObject(o, "model_info");
    cJSON_AddStringToObject(info, "general.architecture", "deepseek-vl2");
    cJSON_AddStringToObject(info, "vl2d.dir", mi->dir ? mi->dir : "");
    cJSON_AddStringToObject(info, "vl2d.backend", mi->backend ? mi->backend : "");
    caps = cJSON_AddArrayToObject(o, "capabilities");
    cJSON_AddItemToArray(caps, cJSON_CreateString("completion"));
    cJSON_AddItemToArray(caps, cJSON_CreateString("vision"));
    cJSON_AddStringToObject(o, "modified_at", ts);
    r = vl2h_reply_json(rq, 200, o);

out_free:
    vl2__response__free_unpacked(resp, NULL);
    cJSON_Delete(body);
    return r;
}

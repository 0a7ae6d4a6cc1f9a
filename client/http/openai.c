/* openai.c - the OpenAI dialect: POST /v1/chat/completions (JSON or
 * server-sent events), GET /v1/models, and the gateway's /health and
 * /metrics.
 *
 * Request fields (others are ignored, as OpenAI-compatible servers do):
 *   model                 the daemon's model name ("" or absent: its default)
 *   messages[]            role system | developer (as system) | user | assistant;
 *                         content a string or parts: {type:text,text},
 *                         {type:image_url,image_url:{url}} with url a data: URI
 *                         (image/jpeg, image/png, image/webp; base64).  Parts are
 *                         joined in order, an image becoming "<image>\n" where it
 *                         stands.  http(s) URLs: 400 (the daemon fetches nothing).
 *   max_completion_tokens, max_tokens (the former wins)
 *   temperature [0,2], top_p (0,1], seed, stop (string or list)
 *   frequency_penalty, presence_penalty [-2,2]: see vl2h_penalty_map()
 *   logprobs, top_logprobs [0,20]: each token's log-probability and its
 *                         top_logprobs most likely alternatives (token,
 *                         logprob, bytes), most likely first
 *   n                     1 only
 *   stream, stream_options.include_usage
 * Extensions: top_k, repetition_penalty (wins over the penalties), grounding
 * (default: on when the conversation has images; boxes come in
 * choices[].message.boxes, or the final chunk's delta.boxes, in pixels of
 * the original image).
 */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"

/* ---- the request ------------------------------------------------------- */

/* "data:image/png;base64,...." into @img. */
static int data_uri(const char *url, struct vl2h_image *img, size_t part, struct vl2_err *err)
{
    static const char *const types[] = { "image/jpeg", "image/jpg", "image/png", "image/webp" };
    const char *p, *comma;
    size_t i, tl = 0;

    if (!strncasecmp(url, "http://", 7) || !strncasecmp(url, "https://", 8))
        return vl2_err_set(err, VL2_EUNSUPPORTED, "vl2-http: image %zu: remote URL '%.80s' "
                           "refused: vl2d fetches nothing; send the image as a data: URI "
                           "(data:image/jpeg;base64,...)", part, url);
    if (strncmp(url, "data:", 5))
        return vl2_err_set(err, VL2_EINVAL, "vl2-http: image %zu: 'image_url.url' must be a "
                           "data: URI (data:image/jpeg;base64,...)", part);
    p = url + 5;
    comma = strchr(p, ',');
    if (!comma)
        return vl2_err_set(err, VL2_EINVAL, "vl2-http: image %zu: data: URI without ','", part);
    for (i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
        tl = strlen(types[i]);
        if (!strncasecmp(p, types[i], tl) && (p[tl] == ';' || p[tl] == ','))
            break;
    }
    if (i == sizeof(types) / sizeof(types[0]))
        return vl2_err_set(err, VL2_EUNSUPPORTED, "vl2-http: image %zu: media type '%.*s' is "
                           "not supported (image/jpeg, image/png or image/webp)", part,
                           (int) (strcspn(p, ";,") > 64 ? 64 : strcspn(p, ";,")), p);
    /* parameters up to the comma must end with ;base64 */
    if (comma - p < (ptrdiff_t) (tl + 7) || strncasecmp(comma - 7, ";base64", 7))
        return vl2_err_set(err, VL2_EINVAL, "vl2-http: image %zu: the data: URI must be "
                           "base64 (';base64,')", part);
    if (vl2h_base64_decode(comma + 1, strlen(comma + 1), &img->data, &img->size) < 0)
        return vl2_err_set(err, VL2_EINVAL, "vl2-http: image %zu: the data: URI is not valid "
                           "base64", part);
    return 0;
}

static int role_of(const char *s, Vl2__Role *ret)
{
    if (!strcmp(s, "system") || !strcmp(s, "developer"))
        *ret = VL2__ROLE__ROLE_SYSTEM;
    else if (!strcmp(s, "user"))
        *ret = VL2__ROLE__ROLE_USER;
    else if (!strcmp(s, "assistant"))
        *ret = VL2__ROLE__ROLE_ASSISTANT;
    else
        return VL2_EINVAL;
    return 0;
}

/* One message into @p; @index for messages. */
static int take_message(const cJSON *m, size_t index, size_t *n_images, struct vl2h_params *p,
                        struct vl2_err *err)
{
    const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
    const cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content"), *part;
    struct vl2h_image imgs[VL2H_MAX_IMAGES];
    struct vl2h_buf text = { 0 };
    size_t n_imgs = 0, i;
    Vl2__Role r;
    int rc = 0;

    memset(imgs, 0, sizeof(imgs));
    if (!cJSON_IsObject(m))
        return vl2_err_set(err, VL2_EINVAL, "vl2-http: 'messages[%zu]': expected an object",
                           index);
    if (!cJSON_IsString(role))
        return vl2_err_set(err, VL2_EINVAL, "vl2-http: 'messages[%zu].role': expected a "
                           "string", index);
    if (role_of(role->valuestring, &r) < 0)
        return vl2_err_set(err, VL2_EINVAL, "vl2-http: 'messages[%zu].role': '%.40s' is not "
                           "supported (system, developer, user, assistant)", index,
                           role->valuestring);
    if (cJSON_IsString(content)) {
        rc = vl2h_buf_str(&text, content->valuestring);
    } else if (cJSON_IsArray(content)) {
        size_t k = 0;

        cJSON_ArrayForEach(part, content) {
            const cJSON *type = cJSON_GetObjectItemCaseSensitive(part, "type");

            if (!cJSON_IsObject(part) || !cJSON_IsString(type)) {
                rc = vl2_err_set(err, VL2_EINVAL, "vl2-http: 'messages[%zu].content[%zu]': "
                                 "expected an object with a 'type'", index, k);
                break;
            }
            if (!strcmp(type->valuestring, "text")) {
                const cJSON *t = cJSON_GetObjectItemCaseSensitive(part, "text");

                if (!cJSON_IsString(t)) {
                    rc = vl2_err_set(err, VL2_EINVAL, "vl2-http: 'messages[%zu].content[%zu]"
                                     ".text': expected a string", index, k);
                    break;
                }
                rc = vl2h_buf_str(&text, t->valuestring);
            } else if (!strcmp(type->valuestring, "image_url")) {
                const cJSON *iu = cJSON_GetObjectItemCaseSensitive(part, "image_url");
                const cJSON *url = cJSON_IsObject(iu)
                                       ? cJSON_GetObjectItemCaseSensitive(iu, "url") : iu;

                if (!cJSON_IsString(url)) {
                    rc = vl2_err_set(err, VL2_EINVAL, "vl2-http: 'messages[%zu].content[%zu]"
                                     ".image_url.url': expected a string", index, k);
                    break;
                }
                if (*n_images + n_imgs >= VL2H_MAX_IMAGES) {
                    rc = vl2_err_set(err, VL2_ELIMIT, "vl2-http: more than %d images",
                                     VL2H_MAX_IMAGES);
                    break;
                }
                rc = data_uri(url->valuestring, &imgs[n_imgs], *n_images + n_imgs, err);
                if (rc < 0)
                    break;
                n_imgs++;
                rc = vl2h_buf_str(&text, "<image>\n");
            } else {
                rc = vl2_err_set(err, VL2_EUNSUPPORTED, "vl2-http: 'messages[%zu].content[%zu]"
                                 ".type': '%.40s' is not supported (text, image_url)", index, k,
                                 type->valuestring);
                break;
            }
            if (rc < 0)
                break;
            k++;
        }
    } else if (!(content == NULL || cJSON_IsNull(content)) || r != VL2__ROLE__ROLE_ASSISTANT) {
        rc = vl2_err_set(err, VL2_EINVAL, "vl2-http: 'messages[%zu].content': expected a "
                         "string or an array of parts", index);
    }
    if (rc == 0 && !text.p)
        rc = vl2h_buf_str(&text, "");
    if (rc == VL2_ENOMEM)
        rc = vl2_err_set(err, VL2_ENOMEM, "vl2-http: out of memory");
    if (rc == 0) {
        rc = vl2h_params_add_msg(p, r, text.p, imgs, n_imgs, err);
        text.p = NULL;
        *n_images += n_imgs;
        n_imgs = 0;
    }
    for (i = 0; i < n_imgs; i++)
        free(imgs[i].data);
    vl2h_buf_done(&text);
    return rc;
}

struct chat_opts {
    bool stream;
    bool include_usage;
    bool logprobs;
    int top_logprobs;
    bool grounding_given;
};

static int parse_chat(const cJSON *o, struct vl2h_params *p, struct chat_opts *co,
                      struct vl2_err *err)
{
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(o, "messages"), *m, *so;
    const char *model = NULL;
    double d, fp = 0, pp = 0;
    int64_t i64;
    size_t n_images = 0, idx = 0;
    bool b;
    int r;

    if ((r = vl2h_get_string(o, "model", &model, err)) < 0)
        return r;
    p->model = strdup(model ? model : "");
    if (!p->model)
        return vl2_err_set(err, VL2_ENOMEM, "vl2-http: out of memory");
    if (!cJSON_IsArray(msgs) || cJSON_GetArraySize(msgs) == 0)
        return vl2_err_set(err, VL2_EINVAL, "vl2-http: 'messages': expected a non-empty array");
    cJSON_ArrayForEach(m, msgs) {
        r = take_message(m, idx++, &n_images, p, err);
        if (r < 0)
            return r;
    }
    if ((r = vl2h_get_int(o, "n", 1, 1, &i64, err)) < 0)
        return vl2_err_set(err, VL2_EINVAL, "vl2-http: 'n': only 1 is supported");
    if ((r = vl2h_get_int(o, "max_tokens", 1, UINT32_MAX, &i64, err)) < 0)
        return r;
    if (r) {
        p->sampling.has_max_new_tokens = 1;
        p->sampling.max_new_tokens = (uint32_t) i64;
    }
    if ((r = vl2h_get_int(o, "max_completion_tokens", 1, UINT32_MAX, &i64, err)) < 0)
        return r;
    if (r) {
        p->sampling.has_max_new_tokens = 1;
        p->sampling.max_new_tokens = (uint32_t) i64;
    }
    if ((r = vl2h_get_number(o, "temperature", 0, 2, &d, err)) < 0)
        return r;
    if (r) {
        p->sampling.has_temperature = 1;
        p->sampling.temperature = (float) d;
    }
    if ((r = vl2h_get_number(o, "top_p", 0, 1, &d, err)) < 0)
        return r;
    if (r && d <= 0)
        return vl2_err_set(err, VL2_EINVAL, "vl2-http: 'top_p': must be above 0");
    if (r) {
        p->sampling.has_top_p = 1;
        p->sampling.top_p = (float) d;
    }
    if ((r = vl2h_get_int(o, "top_k", 0, INT32_MAX, &i64, err)) < 0)
        return r;
    if (r) {
        p->sampling.has_top_k = 1;
        p->sampling.top_k = (uint32_t) i64;
    }
    if ((r = vl2h_get_int(o, "seed", -9.2e18, 1.8e19, &i64, err)) < 0)
        return r;
    if (r) {
        p->sampling.has_seed = 1;
        p->sampling.seed = (uint64_t) i64;
    }
    if ((r = vl2h_get_stops(o, "stop", p, err)) < 0)
        return r;
    if ((r = vl2h_get_number(o, "frequency_penalty", -2, 2, &fp, err)) < 0)
        return r;
    if ((r = vl2h_get_number(o, "presence_penalty", -2, 2, &pp, err)) < 0)
        return r;
    if (fp != 0 || pp != 0) {
        p->sampling.has_repetition_penalty = 1;
        p->sampling.repetition_penalty = vl2h_penalty_map(fp, pp);
    }
    if ((r = vl2h_get_number(o, "repetition_penalty", 0.01, 100, &d, err)) < 0)
        return r;
    if (r) {
        p->sampling.has_repetition_penalty = 1;
        p->sampling.repetition_penalty = (float) d;
    }
    if ((r = vl2h_get_bool(o, "logprobs", &co->logprobs, err)) < 0)
        return r;
    if ((r = vl2h_get_int(o, "top_logprobs", 0, 20, &i64, err)) < 0)
        return r;
    if (r) {
        if (!co->logprobs)
            return vl2_err_set(err, VL2_EINVAL, "vl2-http: 'top_logprobs': needs 'logprobs' "
                               "true");
        co->top_logprobs = (int) i64;
    }
    p->logprobs = co->logprobs;
    p->top_logprobs = (uint32_t) co->top_logprobs;
    if ((r = vl2h_get_bool(o, "stream", &co->stream, err)) < 0)
        return r;
    so = cJSON_GetObjectItemCaseSensitive(o, "stream_options");
    if (so && !cJSON_IsNull(so)) {
        if (!cJSON_IsObject(so))
            return vl2_err_set(err, VL2_EINVAL, "vl2-http: 'stream_options': expected an "
                               "object");
        if ((r = vl2h_get_bool(so, "include_usage", &co->include_usage, err)) < 0)
            return vl2_err_set(err, VL2_EINVAL, "vl2-http: 'stream_options.include_usage': "
                               "expected true or false");
    }
    p->grounding = n_images > 0;
    if ((r = vl2h_get_bool(o, "grounding", &b, err)) < 0)
        return r;
    if (r) {
        co->grounding_given = true;
        p->grounding = b;
    }
    return 0;
}

/* ---- the answer -------------------------------------------------------- */

static const char *finish_name(Vl2__FinishReason f)
{
    return f == VL2__FINISH_REASON__FINISH_LENGTH ? "length" : "stop";
}

static cJSON *boxes_json(const struct vl2h_done *d)
{
    cJSON *arr = cJSON_CreateArray();
    size_t i;

    for (i = 0; arr && i < d->n_boxes; i++) {
        const Vl2__Box *b = d->boxes[i];
        cJSON *o = cJSON_CreateObject();

        cJSON_AddStringToObject(o, "label", b->label ? b->label : "");
        cJSON_AddNumberToObject(o, "x1", b->x1);
        cJSON_AddNumberToObject(o, "y1", b->y1);
        cJSON_AddNumberToObject(o, "x2", b->x2);
        cJSON_AddNumberToObject(o, "y2", b->y2);
        cJSON_AddNumberToObject(o, "image_index", b->image_index);
        cJSON_AddItemToArray(arr, o);
    }
    return arr;
}

static cJSON *usage_json(const struct vl2h_done *d)
{
    cJSON *u = cJSON_CreateObject();

    cJSON_AddNumberToObject(u, "prompt_tokens", d->prompt_tokens);
    cJSON_AddNumberToObject(u, "completion_tokens", d->generated_tokens);
    cJSON_AddNumberToObject(u, "total_tokens",
                            (double) d->prompt_tokens + (double) d->generated_tokens);
    if (d->cached_tokens >= 0) {
        cJSON *pd = cJSON_AddObjectToObject(u, "prompt_tokens_details");

        cJSON_AddNumberToObject(pd, "cached_tokens", (double) d->cached_tokens);
    }
    return u;
}

/* {token, logprob, bytes} of @b [n] into @o; false when out of memory. */
static bool token_fields(cJSON *o, const uint8_t *b, size_t n, float lp)
{
    char *s = vl2h_token_text(b, n);
    cJSON *bytes;
    size_t i;

    if (!s || !cJSON_AddStringToObject(o, "token", s)) {
        free(s);
        return false;
    }
    free(s);
    cJSON_AddNumberToObject(o, "logprob", vl2h_json_logprob(lp));
    bytes = cJSON_AddArrayToObject(o, "bytes");
    for (i = 0; bytes && i < n; i++)
        cJSON_AddItemToArray(bytes, cJSON_CreateNumber(b[i]));
    return bytes != NULL;
}

cJSON *vl2h_logprob_json(const struct vl2h_event *ev, bool empty_top)
{
    cJSON *o = cJSON_CreateObject(), *top;
    size_t i;

    if (!o || !token_fields(o, (const uint8_t *) (ev->text ? ev->text : ""), ev->len,
                            ev->has_logprob ? ev->logprob : 0.0f))
        goto out_free;
    if (!ev->n_top && !empty_top)
        return o;
    top = cJSON_AddArrayToObject(o, "top_logprobs");
    if (!top)
        goto out_free;
    for (i = 0; i < ev->n_top; i++) {
        cJSON *a = cJSON_CreateObject();

        if (!a || !cJSON_AddItemToArray(top, a)) {
            cJSON_Delete(a);
            goto out_free;
        }
        if (!token_fields(a, ev->top[i].bytes, ev->top[i].len, ev->top[i].logprob))
            goto out_free;
    }
    return o;

out_free:
    cJSON_Delete(o);
    return NULL;
}

struct chat {
    struct vl2h_server *srv;
    struct vl2h_gen *gen;
    struct chat_opts co;
    bool grounding;
    char id[48];
    double created;
    char *model;
    /* streaming */
    struct vl2h_event first;     /* the event received before the headers */
    bool have_first;
    bool role_sent;
    bool ended;
};

static void chat_free(void *ud)
{
    struct chat *ch = ud;

    if (!ch)
        return;
    vl2h_gen_free(ch->gen);
    if (ch->have_first)
        vl2h_event_done(&ch->first);
    free(ch->model);
    free(ch);
}

static cJSON *chunk(const struct chat *ch, cJSON *delta, const char *finish, cJSON *logprobs)
{
    cJSON *o = cJSON_CreateObject(), *choices, *c;

    cJSON_AddStringToObject(o, "id", ch->id);
    cJSON_AddStringToObject(o, "object", "chat.completion.chunk");
    cJSON_AddNumberToObject(o, "created", (double) (long long) ch->created);
    cJSON_AddStringToObject(o, "model", ch->model);
    cJSON_AddNullToObject(o, "system_fingerprint");
    choices = cJSON_AddArrayToObject(o, "choices");
    if (delta) {
        c = cJSON_CreateObject();
        cJSON_AddNumberToObject(c, "index", 0);
        cJSON_AddItemToObject(c, "delta", delta);
        if (logprobs)
            cJSON_AddItemToObject(c, "logprobs", logprobs);
        else
            cJSON_AddNullToObject(c, "logprobs");
        if (finish)
            cJSON_AddStringToObject(c, "finish_reason", finish);
        else
            cJSON_AddNullToObject(c, "finish_reason");
        cJSON_AddItemToArray(choices, c);
    }
    if (ch->co.include_usage)
        cJSON_AddNullToObject(o, "usage");
    return o;
}

static void record_done(struct vl2h_server *srv, const struct vl2h_done *d)
{
    vl2h_metrics_done_gen(&srv->metrics, d->prompt_tokens, d->generated_tokens,
                          d->cached_tokens, d->ttft_s, d->tps);
}

/* The SSE producer: one event per call. */
static int chat_stream(void *ud, struct vl2h_buf *out)
{
    struct chat *ch = ud;
    struct vl2h_event ev;
    cJSON *delta, *lp = NULL, *o;
    int r = 0;

    if (ch->ended)
        return 0;
    if (!ch->role_sent) {
        ch->role_sent = true;
        delta = cJSON_CreateObject();
        cJSON_AddStringToObject(delta, "role", "assistant");
        cJSON_AddStringToObject(delta, "content", "");
        return vl2h_buf_json(out, "data: ", chunk(ch, delta, NULL, NULL), "\n\n") < 0 ? -1 : 1;
    }
    if (ch->have_first) {
        ev = ch->first;
        ch->have_first = false;
    } else if (vl2h_gen_next(ch->gen, &ev) < 0) {
        return 0;
    }
    switch (ev.kind) {
    case VL2H_EV_TOKEN:
        delta = cJSON_CreateObject();
        cJSON_AddStringToObject(delta, "content", ev.text);
        if (ch->co.logprobs) {
            lp = cJSON_CreateObject();
            cJSON_AddItemToArray(cJSON_AddArrayToObject(lp, "content"),
                                 vl2h_logprob_json(&ev, true));
            cJSON_AddNullToObject(lp, "refusal");
        }
        r = vl2h_buf_json(out, "data: ", chunk(ch, delta, NULL, lp), "\n\n") < 0 ? -1 : 1;
        break;
    case VL2H_EV_DONE:
        record_done(ch->srv, &ev.done);
        delta = cJSON_CreateObject();
        if (ev.text && ev.len)   /* text the daemon kept for Done (not streamed) */
            cJSON_AddStringToObject(delta, "content", ev.text);
        if (ch->grounding)
            cJSON_AddItemToObject(delta, "boxes", boxes_json(&ev.done));
        r = vl2h_buf_json(out, "data: ", chunk(ch, delta, finish_name(ev.done.finish), NULL),
                          "\n\n");
        if (r == 0 && ch->co.include_usage) {
            o = chunk(ch, NULL, NULL, NULL);
            cJSON_ReplaceItemInObjectCaseSensitive(o, "usage", usage_json(&ev.done));
            r = vl2h_buf_json(out, "data: ", o, "\n\n");
        }
        if (r == 0)
            r = vl2h_buf_str(out, "data: [DONE]\n\n");
        ch->ended = true;
        r = r < 0 ? -1 : 0;
        break;
    case VL2H_EV_ERROR: {
        unsigned status = vl2h_status_for(ev.err.code);

        /* after the headers: the error as one more event, as OpenAI does */
        vl2h_metrics_daemon_error(&ch->srv->metrics, ev.err.code);
        r = vl2h_buf_json(out, "data: ", vl2h_error_json(VL2H_OPENAI, status, NULL, ev.err.msg),
                          "\n\n") < 0 ? -1 : 0;
        ch->ended = true;
        break;
    }
    case VL2H_EV_GONE:
        vl2h_metrics_disconnect(&ch->srv->metrics);
        ch->ended = true;
        r = -1;
        break;
    }
    vl2h_event_done(&ev);
    return r;
}

static int chat_whole(struct vl2h_req *rq, struct chat *ch)
{
    struct vl2h_buf text = { 0 };
    cJSON *lp_content = ch->co.logprobs ? cJSON_CreateArray() : NULL;
    struct vl2h_event ev;
    cJSON *o, *c, *msg, *lp;
    int r;

    for (;;) {
        if (vl2h_gen_next(ch->gen, &ev) < 0) {
            r = vl2h_reply_error(rq, 500, NULL, "vl2-http: the generation ended early");
            break;
        }
        if (ev.kind == VL2H_EV_TOKEN) {
            if (vl2h_buf_add(&text, ev.text, ev.len) < 0 ||
                (lp_content && !cJSON_AddItemToArray(lp_content, vl2h_logprob_json(&ev, true)))) {
                vl2h_event_done(&ev);
                r = vl2h_reply_error(rq, 500, NULL, "vl2-http: out of memory");
                break;
            }
            vl2h_event_done(&ev);
            continue;
        }
        if (ev.kind == VL2H_EV_GONE) {
            vl2h_metrics_disconnect(&ch->srv->metrics);
            vl2h_event_done(&ev);
            r = VL2_ECANCELED;   /* nobody to answer: MHD closes */
            break;
        }
        if (ev.kind == VL2H_EV_ERROR) {
            r = vl2h_reply_vl2_error(rq, &ev.err);
            vl2h_event_done(&ev);
            break;
        }
        /* DONE */
        record_done(ch->srv, &ev.done);
        if (!text.len && ev.text)
            (void) vl2h_buf_add(&text, ev.text, ev.len);
        o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "id", ch->id);
        cJSON_AddStringToObject(o, "object", "chat.completion");
        cJSON_AddNumberToObject(o, "created", (double) (long long) ch->created);
        cJSON_AddStringToObject(o, "model", ch->model);
        c = cJSON_CreateObject();
        cJSON_AddNumberToObject(c, "index", 0);
        msg = cJSON_AddObjectToObject(c, "message");
        cJSON_AddStringToObject(msg, "role", "assistant");
        cJSON_AddStringToObject(msg, "content", text.p ? text.p : "");
        cJSON_AddNullToObject(msg, "refusal");
        if (ch->grounding)
            cJSON_AddItemToObject(msg, "boxes", boxes_json(&ev.done));
        if (lp_content) {
            lp = cJSON_AddObjectToObject(c, "logprobs");
            cJSON_AddItemToObject(lp, "content", lp_content);
            cJSON_AddNullToObject(lp, "refusal");
            lp_content = NULL;
        } else {
            cJSON_AddNullToObject(c, "logprobs");
        }
        cJSON_AddStringToObject(c, "finish_reason", finish_name(ev.done.finish));
        cJSON_AddItemToArray(cJSON_AddArrayToObject(o, "choices"), c);
        cJSON_AddItemToObject(o, "usage", usage_json(&ev.done));
        cJSON_AddNullToObject(o, "system_fingerprint");
        vl2h_event_done(&ev);
        r = vl2h_reply_json(rq, 200, o);
        break;
    }
    cJSON_Delete(lp_content);
    vl2h_buf_done(&text);
    return r;
}

int vl2h_openai_chat(struct vl2h_req *rq)
{
    struct vl2h_params p;
    struct vl2_err err = { 0 };
    struct vl2_client *c = NULL;
    struct chat *ch = NULL;
    cJSON *body;
    int r;

    body = vl2h_body_object(rq);
    if (!body)
        return 0;
    vl2h_params_init(&p);
    ch = calloc(1, sizeof(*ch));
    if (!ch) {
        r = vl2h_reply_error(rq, 500, NULL, "vl2-http: out of memory");
        goto out_free;
    }
    ch->srv = rq->srv;
    r = parse_chat(body, &p, &ch->co, &err);
    if (r < 0) {
        r = vl2h_reply_vl2_error(rq, &err);
        goto out_free;
    }
    ch->grounding = p.grounding;
    r = vl2h_connect(rq->srv, &c, &err);
    if (r == 0)
        r = vl2h_check_model(rq->srv, c, &p, &err);
    if (r < 0) {
        vl2_client_close(c);
        r = vl2h_reply_vl2_error(rq, &err);
        goto out_free;
    }
    ch->model = strdup(p.model);
    vl2h_random_id("chatcmpl-", ch->id, sizeof(ch->id));
    ch->created = vl2h_now();
    ch->gen = vl2h_gen_start(rq->srv, c, &p, vl2h_req_client_fd(rq), &err);
    if (!ch->gen || !ch->model) {
        r = vl2h_reply_vl2_error(rq, &err);
        goto out_free;
    }
    if (!ch->co.stream) {
        r = chat_whole(rq, ch);
        goto out_free;
    }
    r = vl2h_gen_first(rq, ch->gen, &ch->first);
    if (r != 1)
        goto out_free;
    ch->have_first = true;
    vl2h_params_done(&p);
    cJSON_Delete(body);
    return vl2h_reply_stream(rq, "text/event-stream", chat_stream, chat_free, ch);

out_free:
    chat_free(ch);
    vl2h_params_done(&p);
    cJSON_Delete(body);
    return r;
}

/* ---- models, health, metrics ------------------------------------------------ */

static cJSON *model_json(const struct vl2h_server *srv, const Vl2__ModelInfo *mi)
{
    cJSON *o = cJSON_CreateObject(), *in, *out;

    cJSON_AddStringToObject(o, "id", mi->name);
    cJSON_AddStringToObject(o, "object", "model");
    cJSON_AddNumberToObject(o, "created", (double) (long long) srv->start_time);
    cJSON_AddStringToObject(o, "owned_by", "vl2d");
    in = cJSON_AddArrayToObject(o, "input_modalities");
    cJSON_AddItemToArray(in, cJSON_CreateString("text"));
    cJSON_AddItemToArray(in, cJSON_CreateString("image"));
    out = cJSON_AddArrayToObject(o, "output_modalities");
    cJSON_AddItemToArray(out, cJSON_CreateString("text"));
    return o;
}

int vl2h_openai_models(struct vl2h_req *rq, const char *one)
{
    struct vl2_err err = { 0 };
    struct vl2_client *c = NULL;
    Vl2__Response *resp = NULL;
    cJSON *o, *data;
    size_t i;
    int r;

    r = vl2h_connect(rq->srv, &c, &err);
    if (r == 0)
        r = vl2h_list_models(rq->srv, c, &resp, &err);
    vl2_client_close(c);
    if (r < 0)
        return vl2h_reply_vl2_error(rq, &err);
    if (one) {
        const Vl2__ModelInfo *mi = vl2h_find_model(resp->models, one);

        r = mi ? vl2h_reply_json(rq, 200, model_json(rq->srv, mi))
               : vl2h_reply_error(rq, 404, "model_not_found",
                                  "vl2-http: model '%s' is not loaded in vl2d", one);
        vl2__response__free_unpacked(resp, NULL);
        return r;
    }
    o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "object", "list");
    data = cJSON_AddArrayToObject(o, "data");
    for (i = 0; i < resp->models->n_models; i++) {
        const Vl2__ModelInfo *mi = resp->models->models[i];

        if (mi->name && mi->state != VL2__MODEL_STATE__MODEL_STATE_FAILED)
            cJSON_AddItemToArray(data, model_json(rq->srv, mi));
    }
    vl2__response__free_unpacked(resp, NULL);
    return vl2h_reply_json(rq, 200, o);
}

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

/* 200 when the daemon answers and no model is loading and at least one is
 * ready; 503 otherwise, with the states. */
int vl2h_health(struct vl2h_req *rq)
{
    struct vl2_err err = { 0 };
    struct vl2_client *c = NULL;
    Vl2__Response *resp = NULL;
    bool loading = false, ready = false;
    cJSON *o, *models;
    size_t i;
    int r;

    r = vl2h_connect(rq->srv, &c, &err);
    if (r == 0)
        r = vl2h_list_models(rq->srv, c, &resp, &err);
    vl2_client_close(c);
    o = cJSON_CreateObject();
    if (r < 0) {
        cJSON_AddStringToObject(o, "status", "unavailable");
        cJSON_AddStringToObject(o, "error", err.msg);
        return vl2h_reply_json(rq, 503, o);
    }
    models = cJSON_AddArrayToObject(o, "models");
    for (i = 0; i < resp->models->n_models; i++) {
        const Vl2__ModelInfo *mi = resp->models->models[i];
        cJSON *m = cJSON_CreateObject();

        cJSON_AddStringToObject(m, "name", mi->name ? mi->name : "");
        cJSON_AddStringToObject(m, "state", state_name(mi->state));
        cJSON_AddItemToArray(models, m);
        if (mi->state == VL2__MODEL_STATE__MODEL_STATE_LOADING)
            loading = true;
        if (mi->state == VL2__MODEL_STATE__MODEL_STATE_READY)
            ready = true;
    }
    vl2__response__free_unpacked(resp, NULL);
    cJSON_AddStringToObject(o, "status", loading ? "loading" : ready ? "ok" : "no model");
    return vl2h_reply_json(rq, loading || !ready ? 503 : 200, o);
}

int vl2h_metrics_page(struct vl2h_req *rq)
{
    struct vl2_client *c = NULL;
    Vl2__Response *resp = NULL;
    char *text;

    /* the daemon's queue as seen now; the page still renders without it */
    if (vl2h_connect(rq->srv, &c, NULL) == 0)
        (void) vl2h_status(c, &resp, NULL);
    vl2_client_close(c);
    text = vl2h_metrics_render(&rq->srv->metrics, resp ? resp->status : NULL);
    if (resp)
        vl2__response__free_unpacked(resp, NULL);
    return vl2h_reply(rq, 200, "text/plain; version=0.0.4; charset=utf-8", text);
}

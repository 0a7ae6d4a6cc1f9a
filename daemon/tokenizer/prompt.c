/* prompt.c - conversation -> token ids, as DeepseekVLV2Processor's
 * format_messages_v2 + tokenize_with_images in inference mode. */
#include <stdlib.h>
#include <string.h>

#include "prompt.h"
#include "tokenizer-impl.h"

/* The "deepseek" conversation template (conversation.py). */
#define ROLE_USER      "<|User|>"
#define ROLE_ASSISTANT "<|Assistant|>"
#define SEP_USER       "\n\n"

#define TAG     VL2_PROMPT_IMAGE_TAG
#define TAG_LEN (sizeof(TAG) - 1)

struct idbuf {
    int32_t *ids;
    size_t n, cap;
    bool plain;                   /* text: only the added tokens of @allow match */
    int32_t allow[8];
    size_t n_allow;
};

/* The added tokens a client's text may hold in plain mode: the image tag
 * and the grounding tags (the official prompts of grounding use them). */
static const char *const text_tokens[] = {
    TAG, "<|ref|>", "<|/ref|>", "<|det|>", "<|/det|>", "<|grounding|>",
};

static int idbuf_reserve(struct idbuf *b, size_t extra, struct vl2_err *err)
{
    if (extra > (size_t) INT32_MAX || b->n + extra > (size_t) INT32_MAX)
        return vl2_err_set(err, VL2_ELIMIT, "prompt: more than %d tokens", INT32_MAX);
    if (b->n + extra > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        int32_t *p;
        while (cap < b->n + extra)
            cap *= 2;
        p = realloc(b->ids, cap * sizeof(*p));
        if (!p)
            return vl2_err_set(err, VL2_ENOMEM, "prompt: out of memory");
        b->ids = p;
        b->cap = cap;
    }
    return 0;
}

static int idbuf_push(struct idbuf *b, int32_t id, size_t count, struct vl2_err *err)
{
    int r = idbuf_reserve(b, count, err);

    if (r < 0)
        return r;
    while (count--)
        b->ids[b->n++] = id;
    return 0;
}

static int idbuf_encode(struct idbuf *b, const struct vl2_tokenizer *tok, const char *s,
                        size_t n, struct vl2_err *err)
{
    int32_t *ids;
    size_t n_ids;
    int r;

    if (!n)
        return 0;
    if (b->plain)
        r = vl2_tokenizer_encode_allow(tok, s, n, b->allow, b->n_allow, &ids, &n_ids, err);
    else
        r = vl2_tokenizer_encode(tok, s, n, &ids, &n_ids, err);
    if (r < 0)
        return r;
    r = idbuf_reserve(b, n_ids, err);
    if (r >= 0) {
        memcpy(b->ids + b->n, ids, n_ids * sizeof(*ids));
        b->n += n_ids;
    }
    free(ids);
    return r;
}

static const char *find_tag(const char *s, size_t n)
{
    return n >= TAG_LEN ? memmem(s, n, TAG, TAG_LEN) : NULL;
}

static size_t count_tags(const char *s, size_t n)
{
    size_t count = 0;
    const char *p;

    while ((p = find_tag(s, n))) {
        count++;
        n -= (size_t) (p + TAG_LEN - s);
        s = p + TAG_LEN;
    }
    return count;
}

size_t vl2_prompt_count_images(const struct vl2_message *msgs, size_t n_msgs)
{
    size_t i, count = 0;

    for (i = 0; msgs && i < n_msgs; i++)
        if (msgs[i].text)
            count += count_tags(msgs[i].text, msgs[i].len);
    return count;
}

/* Python str.strip(): trim whitespace (str.isspace) at both ends of @s. */
static void strip(const char **s, size_t *n)
{
    const unsigned char *u = (const unsigned char *) *s;
    size_t a = 0, b = *n, len;

    while (a < b && vl2__unicode_is_space_py(vl2__utf8_get(u + a, b - a, &len)))
        a += len;
    while (b > a) {
        size_t p = b - 1;
        while (p > a && (u[p] & 0xC0) == 0x80)
            p--;
        if (!vl2__unicode_is_space_py(vl2__utf8_get(u + p, b - p, &len)) || p + len != b)
            break;
        b = p;
    }
    *s += a;
    *n = b - a;
}

/* tokenize_with_images: pieces between tags encoded one by one, tag i
 * replaced by image_tokens[*next_image] copies of the image id. */
static int encode_with_images(struct idbuf *b, const struct vl2_tokenizer *tok, const char *s,
                              size_t n, int32_t image_id, const int32_t *image_tokens,
                              size_t *next_image, struct vl2_err *err)
{
    const char *p;
    int r;

    while ((p = find_tag(s, n))) {
        r = idbuf_encode(b, tok, s, (size_t) (p - s), err);
        if (r < 0)
            return r;
        r = idbuf_push(b, image_id, (size_t) image_tokens[(*next_image)++], err);
        if (r < 0)
            return r;
        n -= (size_t) (p + TAG_LEN - s);
        s = p + TAG_LEN;
    }
    return idbuf_encode(b, tok, s, n, err);
}

static int check_messages(const struct vl2_tokenizer *tok, const struct vl2_message *msgs,
                          size_t n_msgs, const int32_t *image_tokens, size_t n_images,
                          struct vl2_err *err)
{
    size_t i, n_tags;

    if (!tok || (!msgs && n_msgs) || (!image_tokens && n_images))
        return vl2_err_set(err, VL2_EINVAL, "prompt: invalid arguments");
    if (!n_msgs)
        return vl2_err_set(err, VL2_EINVAL, "prompt: no message");
    for (i = 0; i < n_msgs; i++) {
        const struct vl2_message *m = &msgs[i];
        if (!m->text && m->len)
            return vl2_err_set(err, VL2_EINVAL, "prompt: message %zu has no text", i);
        if (m->role != VL2_ROLE_SYSTEM && m->role != VL2_ROLE_USER &&
            m->role != VL2_ROLE_ASSISTANT)
            return vl2_err_set(err, VL2_EINVAL, "prompt: message %zu has unknown role %d", i,
                               m->role);
        if (m->role == VL2_ROLE_SYSTEM && i)
            return vl2_err_set(err, VL2_EINVAL,
                               "prompt: message %zu: a system message must be the first", i);
        if (m->role != VL2_ROLE_USER && m->text && count_tags(m->text, m->len))
            return vl2_err_set(err, VL2_EINVAL, "prompt: message %zu: '%s' is only allowed in "
                               "user messages", i, TAG);
    }
    n_tags = vl2_prompt_count_images(msgs, n_msgs);
    if (n_tags != n_images)
        return vl2_err_set(err, VL2_EINVAL, "prompt: %zu '%s' tags for %zu images", n_tags, TAG,
                           n_images);
    for (i = 0; i < n_images; i++)
        if (image_tokens[i] <= 0)
            return vl2_err_set(err, VL2_EINVAL, "prompt: image %zu has %d tokens", i,
                               image_tokens[i]);
    if (vl2_tokenizer_bos(tok) < 0)
        return vl2_err_set(err, VL2_EINVAL, "prompt: the tokenizer has no bos_token");
    if (n_images && vl2_tokenizer_id(tok, TAG) < 0)
        return vl2_err_set(err, VL2_EINVAL, "prompt: the tokenizer has no '%s' token", TAG);
    for (i = 0; i + 1 < n_msgs; i++)
        if (msgs[i].role == VL2_ROLE_ASSISTANT && vl2_tokenizer_eos(tok) < 0)
            return vl2_err_set(err, VL2_EINVAL, "prompt: the tokenizer has no eos_token");
    return 0;
}

int vl2_prompt_build(const struct vl2_tokenizer *tok, const struct vl2_message *msgs,
                     size_t n_msgs, const int32_t *image_tokens, size_t n_images,
                     int32_t **ret_ids, size_t *ret_n, struct vl2_err *err)
{
    return vl2_prompt_build_ex(tok, msgs, n_msgs, image_tokens, n_images, 0, ret_ids, ret_n,
                               err);
}

int vl2_prompt_build_ex(const struct vl2_tokenizer *tok, const struct vl2_message *msgs,
                        size_t n_msgs, const int32_t *image_tokens, size_t n_images,
                        unsigned flags, int32_t **ret_ids, size_t *ret_n, struct vl2_err *err)
{
    struct idbuf b = { 0 };
    int32_t image_id, user_id = -1, asst_id = -1;
    size_t i, next_image = 0;
    char *turn = NULL;
    size_t turn_cap = 0;
    int r;

    if (!ret_ids || !ret_n)
        return vl2_err_set(err, VL2_EINVAL, "prompt: invalid arguments");
    r = check_messages(tok, msgs, n_msgs, image_tokens, n_images, err);
    if (r < 0)
        return r;
    image_id = vl2_tokenizer_id(tok, TAG);
    if (!(flags & VL2_PROMPT_SPECIAL_TOKENS_IN_TEXT)) {
        size_t k;

        b.plain = true;
        for (k = 0; k < sizeof(text_tokens) / sizeof(text_tokens[0]); k++) {
            int32_t id = vl2_tokenizer_id(tok, text_tokens[k]);

            if (id >= 0)
                b.allow[b.n_allow++] = id;
        }
        /* the template's own turn markers, pushed as ids around the text
         * (added tokens split the text there, so this is how the official
         * encoding of the whole turn comes out too) */
        user_id = vl2_tokenizer_id(tok, ROLE_USER);
        asst_id = vl2_tokenizer_id(tok, ROLE_ASSISTANT);
    }

    r = idbuf_push(&b, vl2_tokenizer_bos(tok), 1, err);
    for (i = 0; r >= 0 && i < n_msgs; i++) {
        const char *s = msgs[i].text ? msgs[i].text : "";
        size_t n = msgs[i].len, need, o = 0;

        strip(&s, &n);
        switch (msgs[i].role) {
        case VL2_ROLE_SYSTEM:
            r = idbuf_encode(&b, tok, s, n, err);
            break;
        case VL2_ROLE_ASSISTANT:
            r = idbuf_encode(&b, tok, s, n, err);
            /* the last turn is the one being generated: no EOS */
            if (r >= 0 && i + 1 < n_msgs)
                r = idbuf_push(&b, vl2_tokenizer_eos(tok), 1, err);
            break;
        default:
            /* get_prompt(): "role: text" + sep, or "role:" for an empty text */
            need = sizeof(ROLE_USER ": " SEP_USER ROLE_ASSISTANT ":") + n;
            if (need > turn_cap) {
                char *p = realloc(turn, need);
                if (!p) {
                    r = vl2_err_set(err, VL2_ENOMEM, "prompt: out of memory");
                    break;
                }
                turn = p;
                turn_cap = need;
            }
            if (n) {
                memcpy(turn, ROLE_USER ": ", sizeof(ROLE_USER ": ") - 1);
                o = sizeof(ROLE_USER ": ") - 1;
                memcpy(turn + o, s, n);
                o += n;
                memcpy(turn + o, SEP_USER, sizeof(SEP_USER) - 1);
                o += sizeof(SEP_USER) - 1;
            } else {
                memcpy(turn, ROLE_USER ":", sizeof(ROLE_USER ":") - 1);
                o = sizeof(ROLE_USER ":") - 1;
            }
            memcpy(turn + o, ROLE_ASSISTANT ":", sizeof(ROLE_ASSISTANT ":") - 1);
            o += sizeof(ROLE_ASSISTANT ":") - 1;
            if (b.plain && user_id >= 0 && asst_id >= 0) {
                /* [<|User|>] text-with-images [<|Assistant|>] ":" */
                const size_t head = sizeof(ROLE_USER) - 1, tail = sizeof(ROLE_ASSISTANT ":") - 1;

                r = idbuf_push(&b, user_id, 1, err);
                if (r >= 0)
                    r = encode_with_images(&b, tok, turn + head, o - head - tail, image_id,
                                           image_tokens, &next_image, err);
                if (r >= 0)
                    r = idbuf_push(&b, asst_id, 1, err);
                if (r >= 0)
                    r = idbuf_encode(&b, tok, ":", 1, err);
            } else {
                r = encode_with_images(&b, tok, turn, o, image_id, image_tokens, &next_image,
                                       err);
            }
            break;
        }
    }
    free(turn);
    if (r < 0) {
        free(b.ids);
        return r;
    }
    *ret_ids = b.ids;
    *ret_n = b.n;
    return 0;
}

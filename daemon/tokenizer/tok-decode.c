/* tok-decode.c - ids -> text, whole (vl2_tokenizer_decode) and streamed
 * (struct vl2_detok). */
#include <stdlib.h>
#include <string.h>

#include "tokenizer-impl.h"

static const char *id_bytes(const struct vl2_tokenizer *tok, int32_t id, size_t *ret_len)
{
    if (id < 0 || (size_t) id >= tok->n_ids || !tok->flags[id])
        return NULL;
    *ret_len = tok->dec_len[id];
    return tok->strings + tok->dec_off[id];
}

int vl2_tokenizer_decode(const struct vl2_tokenizer *tok, const int32_t *ids, size_t n,
                         char **ret_text, size_t *ret_len, struct vl2_err *err)
{
    size_t total = 0, i, o, len;
    char *raw, *out;
    const char *b;

    if (!tok || !ret_text || (!ids && n))
        return vl2_err_set(err, VL2_EINVAL, "tokenizer: decode: invalid arguments");
    for (i = 0; i < n; i++)
        if ((b = id_bytes(tok, ids[i], &len)))
            total += len;
    if (total > (SIZE_MAX - 1) / 3)
        return vl2_err_set(err, VL2_ELIMIT, "tokenizer: decode: text too long");
    raw = malloc(total ? total : 1);
    out = malloc(3 * total + 1);
    if (!raw || !out) {
        free(raw);
        free(out);
        return vl2_err_set(err, VL2_ENOMEM, "tokenizer: out of memory");
    }
    for (i = 0, o = 0; i < n; i++)
        if ((b = id_bytes(tok, ids[i], &len))) {
            memcpy(raw + o, b, len);
            o += len;
        }
    o = vl2__utf8_repair((const unsigned char *) raw, total, out, false, NULL);
    out[o] = '\0';
    free(raw);
    *ret_text = out;
    if (ret_len)
        *ret_len = o;
    return 0;
}

/* ---- streaming --------------------------------------------------------- */

void vl2_detok_init(struct vl2_detok *d, const struct vl2_tokenizer *tok)
{
    memset(d, 0, sizeof(*d));
    d->tok = tok;
}

void vl2_detok_done(struct vl2_detok *d)
{
    if (!d)
        return;
    free(d->buf);
    memset(d, 0, sizeof(*d));
}

static int reserve(struct vl2_detok *d, size_t n)
{
    if (n > d->buf_size) {
        size_t cap = d->buf_size ? d->buf_size : 256;
        char *p;
        while (cap < n)
            cap *= 2;
        p = realloc(d->buf, cap);
        if (!p)
            return VL2_ENOMEM;
        d->buf = p;
        d->buf_size = cap;
    }
    return 0;
}

int vl2_detok_push(struct vl2_detok *d, int32_t id, const char **ret_text, size_t *ret_len)
{
    const char *b = NULL;
    const unsigned char *in;
    size_t len = 0, n, o, held;

    if (d->tok)
        b = id_bytes(d->tok, id, &len);
    if (!b || !len) {
        *ret_text = "";
        *ret_len = 0;
        return 0;
    }
    n = d->n_pending + len;
    /* [output: 3n + 1][input: n] */
    if (reserve(d, 4 * n + 1) < 0)
        return VL2_ENOMEM;
    if (d->n_pending) {
        char *copy = d->buf + 3 * n + 1;
        memcpy(copy, d->pending, d->n_pending);
        memcpy(copy + d->n_pending, b, len);
        in = (const unsigned char *) copy;
    } else {
        in = (const unsigned char *) b;
    }
    o = vl2__utf8_repair(in, n, d->buf, true, &held);
    memcpy(d->pending, in + n - held, held);
    d->n_pending = held;
    d->buf[o] = '\0';
    *ret_text = d->buf;
    *ret_len = o;
    return 0;
}

int vl2_detok_flush(struct vl2_detok *d, const char **ret_text, size_t *ret_len)
{
    if (!d->n_pending) {
        *ret_text = "";
        *ret_len = 0;
        return 0;
    }
    if (reserve(d, 4) < 0)
        return VL2_ENOMEM;
    /* what is held is a valid but unfinished sequence: one replacement */
    memcpy(d->buf, "\xEF\xBF\xBD", 4);
    d->n_pending = 0;
    *ret_text = d->buf;
    *ret_len = 3;
    return 0;
}

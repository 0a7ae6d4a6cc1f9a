/* fuzz_tokenizer.c - libFuzzer target for the tokenizer: encode, decode, the
 * streaming decoder and the prompt builder on arbitrary bytes.
 *
 * The first byte picks the mode; properties checked (abort on violation):
 *   text:   encode succeeds; decode(encode(x)) == x for valid UTF-8 x, and is
 *           valid UTF-8 otherwise; the stream equals decode.
 *   ids:    the rest read as int32 ids: decode and the stream agree and are
 *           valid UTF-8.
 *   prompt: the rest as a user message (split at the first NUL into a
 *           system message): vl2_prompt_build succeeds with one token per tag.
 *
 * The tokenizer directory is $VL2_TOKENIZER_DIR, or the build's data dir.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "prompt.h"
#include "tokenizer.h"

#ifndef VL2_FUZZ_TOKENIZER_DIR
#define VL2_FUZZ_TOKENIZER_DIR "data"
#endif

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct vl2_tokenizer *tok;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *dir = getenv("VL2_TOKENIZER_DIR");
    struct vl2_err err = { 0 };

    (void) argc;
    (void) argv;
    if (vl2_tokenizer_load(&tok, dir ? dir : VL2_FUZZ_TOKENIZER_DIR, &err) < 0) {
        fprintf(stderr, "fuzz_tokenizer: %s\n", err.msg);
        abort();
    }
    return 0;
}

/* Strict UTF-8 (Unicode table 3-7), independent of the tokenizer's own. */
static int valid_utf8(const unsigned char *s, size_t n)
{
    size_t i = 0;

    while (i < n) {
        unsigned c = s[i], need, lo = 0x80, hi = 0xBF, k;
        if (c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0xC2 && c <= 0xDF) need = 1;
        else if (c >= 0xE0 && c <= 0xEF) need = 2;
        else if (c >= 0xF0 && c <= 0xF4) need = 3;
        else return 0;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
        if (i + need >= n)
            return 0;
        for (k = 1; k <= need; k++) {
            unsigned b = s[i + k];
            if (k == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xBF))
                return 0;
        }
        i += need + 1;
    }
    return 1;
}

static void check_ids(const int32_t *ids, size_t n, const uint8_t *orig, size_t orig_len)
{
    struct vl2_detok d;
    char *text, *stream;
    size_t len, o = 0, k, i;
    const char *piece;

    if (vl2_tokenizer_decode(tok, ids, n, &text, &len, NULL) < 0)
        abort();
    if (!valid_utf8((const unsigned char *) text, len) || text[len] != '\0')
        abort();
    if (orig && valid_utf8(orig, orig_len) && (len != orig_len || memcmp(text, orig, len)))
        abort();
    stream = malloc(len + 1);
    vl2_detok_init(&d, tok);
    for (i = 0; i <= n; i++) {
        if ((i < n ? vl2_detok_push(&d, ids[i], &piece, &k) : vl2_detok_flush(&d, &piece, &k)) < 0)
            abort();
        if (!valid_utf8((const unsigned char *) piece, k) || o + k > len)
            abort();
        memcpy(stream + o, piece, k);
        o += k;
    }
    vl2_detok_done(&d);
    if (o != len || memcmp(stream, text, len))
        abort();
    free(stream);
    free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct vl2_err err = { 0 };
    int32_t *ids = NULL;
    size_t n = 0;

    if (size < 1)
        return 0;
    switch (data[0] % 3) {
    case 0:
        if (vl2_tokenizer_encode(tok, (const char *) data + 1, size - 1, &ids, &n, &err) < 0)
            abort();
        check_ids(ids, n, data + 1, size - 1);
        free(ids);
        break;
    case 1: {
        size_t count = (size - 1) / 4;
        int32_t *v = malloc((count + 1) * sizeof(*v));
        memcpy(v, data + 1, count * 4);
        check_ids(v, count, NULL, 0);
        free(v);
        break;
    }
    default: {
        const char *s = (const char *) data + 1;
        const char *nul = memchr(s, '\0', size - 1);
        struct vl2_message m[2];
        size_t n_m = 0, n_img, i;
        int32_t *img;
        if (nul) {
            m[n_m++] = (struct vl2_message) { .role = VL2_ROLE_SYSTEM, .text = s,
                                              .len = (size_t) (nul - s) };
            m[n_m++] = (struct vl2_message) { .role = VL2_ROLE_USER, .text = nul + 1,
                                              .len = size - 1 - (size_t) (nul + 1 - s) };
            /* no tags allowed in a system message */
            if (vl2_prompt_count_images(m, 1))
                break;
        } else {
            m[n_m++] = (struct vl2_message) { .role = VL2_ROLE_USER, .text = s, .len = size - 1 };
        }
        n_img = vl2_prompt_count_images(m, n_m);
        img = malloc((n_img + 1) * sizeof(*img));
        for (i = 0; i < n_img; i++)
            img[i] = 1 + (int32_t) (i % 3);
        if (vl2_prompt_build(tok, m, n_m, img, n_img, &ids, &n, &err) < 0 || n < 5 || ids[0] != 0)
            abort();
        free(ids);
        free(img);
        break;
    }
    }
    return 0;
}

/* cmd_tokenize.c - `vl2 tokenize [-m MODEL] [--bos] [TEXT... | -]`: the ids
 * of a text with a served model's tokenizer, printed as `vl2d tokenize`
 * prints them; --json adds each token's bytes. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

/* Longest text read from standard input (the daemon has its own limit). */
#define TOKENIZE_MAX_INPUT ((size_t) 64 << 20)

static void tokenize_usage(FILE *f)
{
    fprintf(f, "usage: vl2 tokenize [-m MODEL] [--bos] [TEXT... | -]\n"
               "\n"
               "Print the token ids of TEXT as a JSON array, as 'vl2d tokenize' does, with\n"
               "the tokenizer of a model the daemon serves.  The words of TEXT are joined\n"
               "with spaces; '-' or no TEXT reads standard input.  Special-token strings\n"
               "in the text (<image>, <|User|>...) become their ids.\n"
               "\n"
               "  -m, --model MODEL   a model the daemon serves (default: its default)\n"
               "  -b, --bos           put the model's BOS id first\n"
               "  --json              print {\"ids\":[...],\"pieces\":[...]}: each token's\n"
               "                      bytes as a string, bytes that are not valid UTF-8\n"
               "                      written as \\xNN (as Python's backslashreplace)\n"
               "  --socket PATH, --timeout SECONDS   as for every command\n");
}

/* All of standard input, at most TOKENIZE_MAX_INPUT bytes, NUL-terminated. */
static int read_input(char **ret, size_t *ret_len, struct vl2_err *err)
{
    size_t n = 0, cap = 4096;
    char *s = malloc(cap), *t;

    while (s) {
        size_t got;

        if (n + 1 >= cap) {
            if (cap > TOKENIZE_MAX_INPUT) {
                free(s);
                return vl2_err_set(err, VL2_ELIMIT, "vl2 tokenize: standard input holds "
                                   "more than %zu bytes", TOKENIZE_MAX_INPUT);
            }
            t = realloc(s, cap * 2);
            if (!t)
                break;
            s = t;
            cap *= 2;
        }
        got = fread(s + n, 1, cap - n - 1, stdin);
        n += got;
        if (got == 0) {
            if (ferror(stdin)) {
                free(s);
                return vl2_err_set(err, VL2_EIO, "vl2 tokenize: cannot read standard input");
            }
            s[n] = '\0';
            *ret = s;
            *ret_len = n;
            return 0;
        }
    }
    free(s);
    return vl2_err_set(err, VL2_ENOMEM, "vl2 tokenize: out of memory");
}

/* The words of argv joined with spaces. */
static char *join_words(char **words, size_t n)
{
    size_t len = 0, i;
    char *s, *p;

    for (i = 0; i < n; i++)
        len += strlen(words[i]) + 1;
    s = malloc(len + 1);
    if (!s)
        return NULL;
    p = s;
    for (i = 0; i < n; i++) {
        size_t l = strlen(words[i]);

        if (i)
            *p++ = ' ';
        memcpy(p, words[i], l);
        p += l;
    }
    *p = '\0';
    return s;
}

/* Length of the well-formed UTF-8 character at @p (Unicode table 3-7), or 0
 * when the bytes there are not one. */
static size_t utf8_char_len(const uint8_t *p, size_t n)
{
    uint8_t b = p[0];
    size_t len, i;
    uint8_t lo = 0x80, hi = 0xbf;

    if (b < 0x80)
        return 1;
    if (b >= 0xc2 && b <= 0xdf)
        len = 2;
    else if (b >= 0xe0 && b <= 0xef)
        len = 3;
    else if (b >= 0xf0 && b <= 0xf4)
        len = 4;
    else
        return 0;
    if (n < len)
        return 0;
    /* the second byte's range excludes overlongs, surrogates, > U+10FFFF */
    if (b == 0xe0)
        lo = 0xa0;
    else if (b == 0xed)
        hi = 0x9f;
    else if (b == 0xf0)
        lo = 0x90;
    else if (b == 0xf4)
        hi = 0x8f;
    if (p[1] < lo || p[1] > hi)
        return 0;
    for (i = 2; i < len; i++)
        if (p[i] < 0x80 || p[i] > 0xbf)
            return 0;
    return len;
}

char *vl2_cli_piece_text(const uint8_t *p, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    char *s = malloc(4 * n + 1), *q = s;
    size_t i = 0;

    if (!s)
        return NULL;
    while (i < n) {
        size_t l = p[i] ? utf8_char_len(p + i, n - i) : 0;

        if (l) {
            memcpy(q, p + i, l);
            q += l;
            i += l;
        } else {
            *q++ = '\\';
            *q++ = 'x';
            *q++ = hex[p[i] >> 4];
            *q++ = hex[p[i] & 15];
            i++;
        }
    }
    *q = '\0';
    return s;
}

static int print_json(const Vl2__TokenizeReply *tr, struct vl2_err *err)
{
    cJSON *o = cJSON_CreateObject(), *ids, *pieces;
    size_t i;

    ids = o ? cJSON_AddArrayToObject(o, "ids") : NULL;
    pieces = o ? cJSON_AddArrayToObject(o, "pieces") : NULL;
    if (!ids || !pieces)
        goto out_nomem;
    for (i = 0; i < tr->n_ids; i++) {
        cJSON *v = cJSON_CreateNumber(tr->ids[i]);

        if (!v)
            goto out_nomem;
        cJSON_AddItemToArray(ids, v);
    }
    for (i = 0; i < tr->n_pieces; i++) {
        char *s = vl2_cli_piece_text(tr->pieces[i].data, tr->pieces[i].len);
        cJSON *v = s ? cJSON_CreateString(s) : NULL;

        free(s);
        if (!v)
            goto out_nomem;
        cJSON_AddItemToArray(pieces, v);
    }
    vl2_cli_print_json_line(o);
    return 0;

out_nomem:
    cJSON_Delete(o);
    return vl2_err_set(err, VL2_ENOMEM, "vl2 tokenize: out of memory");
}

struct tokenize_ctx {
    uint64_t id;
    Vl2__TokenizeReply *reply;    /* copy of the answer */
};

static int on_tokenize(const Vl2__Response *resp, void *ud)
{
    struct tokenize_ctx *t = ud;
    uint8_t *buf;
    size_t size;

    if (!resp->has_id || resp->id != t->id || resp->body_case != VL2__RESPONSE__BODY_TOKENIZE)
        return 0;
    /* the response lives during this call only: keep a copy */
    size = vl2__tokenize_reply__get_packed_size(resp->tokenize);
    buf = malloc(size ? size : 1);
    if (!buf)
        return 1;
    vl2__tokenize_reply__pack(resp->tokenize, buf);
    t->reply = vl2__tokenize_reply__unpack(NULL, size, buf);
    free(buf);
    return t->reply ? 0 : 1;    /* 1: out of memory, ends the wait */
}

int vl2_cmd_tokenize(const struct vl2_cli *cli, int argc, char **argv)
{
    Vl2__Request req = VL2__REQUEST__INIT;
    Vl2__Tokenize tk = VL2__TOKENIZE__INIT;
    struct tokenize_ctx t = { 0 };
    struct vl2_err err = { 0 };
    const char *model = NULL;
    char **words, *text = NULL;
    size_t n_words = 0, len = 0, i;
    bool bos = false, dashdash = false, from_stdin = false;
    struct vl2_client *c;
    int r, rc = 1;

    words = calloc((size_t) argc + 1, sizeof(*words));
    if (!words) {
        fprintf(stderr, "vl2 tokenize: out of memory\n");
        return 1;
    }
    for (int k = 1; k < argc; k++) {
        const char *a = argv[k];

        if (!dashdash && !strcmp(a, "--")) {
            dashdash = true;
        } else if (!dashdash && (!strcmp(a, "--help") || !strcmp(a, "-h"))) {
            tokenize_usage(stdout);
            free(words);
            return 0;
        } else if (!dashdash && (!strcmp(a, "--bos") || !strcmp(a, "-b"))) {
            bos = true;
        } else if (!dashdash && (!strcmp(a, "--model") || !strcmp(a, "-m"))) {
            if (k + 1 >= argc || !argv[k + 1][0]) {
                fprintf(stderr, "vl2 tokenize: %s needs a model name\n", a);
                free(words);
                return 2;
            }
            model = argv[++k];
        } else if (!dashdash && !strncmp(a, "--model=", 8) && a[8]) {
            model = a + 8;
        } else if (!dashdash && a[0] == '-' && a[1]) {
            fprintf(stderr, "vl2 tokenize: unknown option '%s'; try 'vl2 tokenize --help'\n",
                    a);
            free(words);
            return 2;
        } else if (!dashdash && !strcmp(a, "-")) {
            from_stdin = true;
        } else {
            words[n_words++] = argv[k];
        }
    }
    if (from_stdin && n_words > 0) {
        fprintf(stderr, "vl2 tokenize: give TEXT or '-' (standard input), not both\n");
        free(words);
        return 2;
    }
    if (n_words > 0) {
        text = join_words(words, n_words);
        r = text ? 0 : vl2_err_set(&err, VL2_ENOMEM, "vl2 tokenize: out of memory");
        len = text ? strlen(text) : 0;
    } else {
        r = read_input(&text, &len, &err);
    }
    free(words);
    if (r < 0)
        return vl2_cli_fail(cli, &err);
    if (strlen(text) != len) {
        vl2_err_set(&err, VL2_EINVAL, "vl2 tokenize: the text holds a NUL byte");
        goto out_fail;
    }
    c = vl2_cli_connect(cli);
    if (!c)
        goto out_free;
    tk.model = (char *) (model ? model : "");
    tk.text = text;
    tk.has_pieces = tk.pieces = cli->json;
    tk.has_add_bos = tk.add_bos = bos;
    req.body_case = VL2__REQUEST__BODY_TOKENIZE;
    req.tokenize = &tk;
    r = vl2_client_send(c, &req, NULL, 0, &t.id, &err);
    if (r == 0)
        r = vl2_client_wait(c, t.id, on_tokenize, &t, &err);
    vl2_client_close(c);
    if (r > 0)
        r = vl2_err_set(&err, VL2_ENOMEM, "vl2 tokenize: out of memory");
    else if (r == 0 && !t.reply)
        r = vl2_err_set(&err, VL2_EPROTO, "vl2 tokenize: vl2d answered with something else");
    else if (r == 0 && cli->json && t.reply->n_pieces != t.reply->n_ids)
        r = vl2_err_set(&err, VL2_EPROTO, "vl2 tokenize: vl2d sent %zu pieces for %zu ids",
                        t.reply->n_pieces, t.reply->n_ids);
    if (r < 0)
        goto out_fail;
    if (cli->json) {
        if (print_json(t.reply, &err) < 0)
            goto out_fail;
    } else {
        putchar('[');
        for (i = 0; i < t.reply->n_ids; i++)
            printf(i ? ", %u" : "%u", t.reply->ids[i]);
        printf("]\n");
        fflush(stdout);
    }
    rc = 0;
    goto out_free;

out_fail:
    rc = vl2_cli_fail(cli, &err);
out_free:
    if (t.reply)
        vl2__tokenize_reply__free_unpacked(t.reply, NULL);
    free(text);
    return rc;
}

/* cmd_tokenize.c - vl2d tokenize --model DIR [--bos] [--decode]
 *
 * Encode: standard input is read as raw bytes (NUL bytes and trailing
 * newlines kept) and its ids are printed as a JSON array.  Decode: standard
 * input is a JSON array of ids; the text is written as is. */
#include <cjson/cJSON.h>
#include <getopt.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd.h"
#include "tokenizer.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: vl2d tokenize --model DIR [--bos]   < text   (prints a JSON array of ids)\n"
               "       vl2d tokenize --model DIR --decode < ids    (prints the text)\n"
               "\n"
               "  -m, --model DIR  directory with tokenizer.json (and tokenizer_config.json)\n"
               "                   or a model directory holding them\n"
               "  -b, --bos        put the BOS id first\n"
               "  -d, --decode     read a JSON array of ids, write their text\n"
               "  -h, --help       this text\n");
}

static char *read_stdin(size_t *ret_len)
{
    size_t cap = 1 << 16, n = 0, k;
    char *buf = malloc(cap + 1), *p;

    if (!buf)
        return NULL;
    while ((k = fread(buf + n, 1, cap - n, stdin)) > 0) {
        n += k;
        if (n == cap) {
            if (cap > VL2_TOKENIZER_MAX_TEXT) {
                free(buf);
                return NULL;
            }
            cap *= 2;
            p = realloc(buf, cap + 1);
            if (!p) {
                free(buf);
                return NULL;
            }
            buf = p;
        }
    }
    if (ferror(stdin)) {
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    *ret_len = n;
    return buf;
}

static int do_encode(const struct vl2_tokenizer *tok, const char *text, size_t len, bool bos)
{
    struct vl2_err err = { 0 };
    int32_t *ids;
    size_t n, i;

    if (bos && vl2_tokenizer_bos(tok) < 0) {
        fprintf(stderr, "vl2d tokenize: the tokenizer has no bos_token\n");
        return 1;
    }
    if (vl2_tokenizer_encode(tok, text, len, &ids, &n, &err) < 0) {
        fprintf(stderr, "vl2d tokenize: %s\n", err.msg);
        return 1;
    }
    putchar('[');
    if (bos)
        printf("%d%s", vl2_tokenizer_bos(tok), n ? ", " : "");
    for (i = 0; i < n; i++)
        printf(i ? ", %d" : "%d", ids[i]);
    printf("]\n");
    free(ids);
    return 0;
}

static int do_decode(const struct vl2_tokenizer *tok, const char *json, size_t len)
{
    struct vl2_err err = { 0 };
    cJSON *arr = cJSON_ParseWithLength(json, len), *it;
    int32_t *ids = NULL;
    size_t n = 0, text_len;
    char *text;
    int rc = 1;

    if (!cJSON_IsArray(arr)) {
        fprintf(stderr, "vl2d tokenize: --decode: standard input is not a JSON array\n");
        goto out;
    }
    ids = malloc(((size_t) cJSON_GetArraySize(arr) + 1) * sizeof(*ids));
    if (!ids) {
        fprintf(stderr, "vl2d tokenize: out of memory\n");
        goto out;
    }
    cJSON_ArrayForEach(it, arr) {
        double d = it->valuedouble;
        if (!cJSON_IsNumber(it) || d != floor(d) || d < INT32_MIN || d > INT32_MAX) {
            fprintf(stderr, "vl2d tokenize: --decode: element %zu is not an integer id\n", n);
            goto out;
        }
        ids[n++] = (int32_t) d;
    }
    if (vl2_tokenizer_decode(tok, ids, n, &text, &text_len, &err) < 0) {
        fprintf(stderr, "vl2d tokenize: %s\n", err.msg);
        goto out;
    }
    fwrite(text, 1, text_len, stdout);
    free(text);
    rc = 0;
out:
    free(ids);
    cJSON_Delete(arr);
    return rc;
}

int vl2d_cmd_tokenize(int argc, char **argv)
{
    static const struct option opts[] = {
        { "model", required_argument, NULL, 'm' },
        { "bos", no_argument, NULL, 'b' },
        { "decode", no_argument, NULL, 'd' },
        { "help", no_argument, NULL, 'h' },
        { 0 },
    };
    struct vl2_tokenizer *tok = NULL;
    struct vl2_err err = { 0 };
    const char *model = NULL;
    bool bos = false, decode = false;
    char *input;
    size_t len;
    int c, rc;

    optind = 1;
    while ((c = getopt_long(argc, argv, "m:bdh", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model = optarg; break;
        case 'b': bos = true; break;
        case 'd': decode = true; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (!model || optind != argc) {
        fprintf(stderr, "vl2d tokenize: %s\n", model ? "unexpected argument" : "--model DIR is required");
        usage(stderr);
        return 2;
    }
    if (bos && decode) {
        fprintf(stderr, "vl2d tokenize: --bos only applies when encoding\n");
        return 2;
    }
    if (vl2_tokenizer_load(&tok, model, &err) < 0) {
        fprintf(stderr, "vl2d tokenize: %s\n", err.msg);
        return 1;
    }
    input = read_stdin(&len);
    if (!input) {
        fprintf(stderr, "vl2d tokenize: cannot read standard input\n");
        vl2_tokenizer_free(tok);
        return 1;
    }
    rc = decode ? do_decode(tok, input, len) : do_encode(tok, input, len, bos);
    if (fflush(stdout) != 0 && !rc) {
        fprintf(stderr, "vl2d tokenize: write failed\n");
        rc = 1;
    }
    free(input);
    vl2_tokenizer_free(tok);
    return rc;
}

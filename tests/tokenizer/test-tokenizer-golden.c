/* test-tokenizer-golden.c - every case of tests/data/tokenizer/golden.jsonl
 * (ids from the Hugging Face `tokenizers` library): encode gives exactly the
 * ids, decode and the streaming decoder give exactly the decoded text.
 * Also the generated ids of the golden model cases decode to their text.
 *
 * usage: test-tokenizer-golden TOKENIZER_DIR golden.jsonl [GOLDEN_DIR]
 */
#include <cjson/cJSON.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer.h"

#include "../common/check.h"
#include "../common/util.h"

/* JSON strings hold no NUL here except through \u0000, which cJSON cuts;
 * the golden corpus has "\u0000" in one case, so rebuild such strings from
 * the raw line with an unescaper of our own for that one escape. */
static char *json_string_raw(const char *line, const char *key, size_t *ret_len)
{
    char pat[64];
    const char *p;
    char *out;
    size_t o = 0;

    /* the first occurrence for "text" (the first key), the last for
     * "decoded" (the last key), so that a value never fools the search */
    snprintf(pat, sizeof(pat), "\"%s\": \"", key);
    p = strstr(line, pat);
    if (!p)
        return NULL;
    if (!strcmp(key, "decoded"))
        for (const char *q = p; (q = strstr(q + 1, pat));)
            p = q;
    p += strlen(pat);
    out = malloc(strlen(p) * 4 + 1);
    while (*p && *p != '"') {
        if (*p != '\\') {
            out[o++] = *p++;
            continue;
        }
        p++;
        switch (*p) {
        case 'n': out[o++] = '\n'; p++; break;
        case 't': out[o++] = '\t'; p++; break;
        case 'r': out[o++] = '\r'; p++; break;
        case 'b': out[o++] = '\b'; p++; break;
        case 'f': out[o++] = '\f'; p++; break;
        case '/': out[o++] = '/'; p++; break;
        case '\\': out[o++] = '\\'; p++; break;
        case '"': out[o++] = '"'; p++; break;
        case 'u': {
            unsigned c = (unsigned) strtoul((char[]) { p[1], p[2], p[3], p[4], 0 }, NULL, 16);
            p += 5;
            if (c >= 0xD800 && c < 0xDC00 && p[0] == '\\' && p[1] == 'u') {
                unsigned lo = (unsigned) strtoul((char[]) { p[2], p[3], p[4], p[5], 0 }, NULL, 16);
                c = 0x10000 + ((c - 0xD800) << 10) + (lo - 0xDC00);
                p += 6;
            }
            if (c < 0x80) {
                out[o++] = (char) c;
            } else if (c < 0x800) {
                out[o++] = (char) (0xC0 | c >> 6);
                out[o++] = (char) (0x80 | (c & 0x3F));
            } else if (c < 0x10000) {
                out[o++] = (char) (0xE0 | c >> 12);
                out[o++] = (char) (0x80 | ((c >> 6) & 0x3F));
                out[o++] = (char) (0x80 | (c & 0x3F));
            } else {
                out[o++] = (char) (0xF0 | c >> 18);
                out[o++] = (char) (0x80 | ((c >> 12) & 0x3F));
                out[o++] = (char) (0x80 | ((c >> 6) & 0x3F));
                out[o++] = (char) (0x80 | (c & 0x3F));
            }
            break;
        }
        default:
            out[o++] = *p++;
        }
    }
    out[o] = '\0';
    *ret_len = o;
    return out;
}

static void check_decode(const struct vl2_tokenizer *tok, const int32_t *ids, size_t n,
                         const char *want, size_t want_len, const char *what)
{
    struct vl2_err err = { 0 };
    struct vl2_detok d;
    char *text = NULL, *streamed = malloc(4 * want_len + 16);
    size_t len = 0, o = 0, i, k;
    const char *piece;

    CHECK_MSG(vl2_tokenizer_decode(tok, ids, n, &text, &len, &err) == 0, "%s: decode: %s", what,
          err.msg);
    CHECK_MSG(text && len == want_len && !memcmp(text, want, len),
          "%s: decoded text differs (%zu bytes, want %zu)", what, len, want_len);
    free(text);

    vl2_detok_init(&d, tok);
    for (i = 0; i < n; i++) {
        CHECK_MSG(vl2_detok_push(&d, ids[i], &piece, &k) == 0, "%s: detok push", what);
        if (o + k <= 4 * want_len + 16)
            memcpy(streamed + o, piece, k);
        o += k;
    }
    CHECK_MSG(vl2_detok_flush(&d, &piece, &k) == 0, "%s: detok flush", what);
    if (o + k <= 4 * want_len + 16)
        memcpy(streamed + o, piece, k);
    o += k;
    vl2_detok_done(&d);
    CHECK_MSG(o == want_len && !memcmp(streamed, want, o), "%s: streamed text differs", what);
    free(streamed);
}

static void golden_corpus(const struct vl2_tokenizer *tok, const char *path)
{
    size_t len, n_cases = 0;
    char *all = test_slurp(path, &len), *line, *save = NULL;

    CHECK_MSG(all != NULL, "cannot read '%s'", path);
    if (!all)
        return;
    for (line = strtok_r(all, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        cJSON *j = cJSON_Parse(line), *jids, *it;
        size_t text_len, dec_len, n_want = 0, n_got = 0, i;
        char *text = json_string_raw(line, "text", &text_len);
        char *decoded = json_string_raw(line, "decoded", &dec_len);
        int32_t *want, *got = NULL;
        struct vl2_err err = { 0 };
        char what[64];

        CHECK_MSG(j && text && decoded, "case %zu: bad line", n_cases);
        if (!j || !text || !decoded)
            goto next;
        snprintf(what, sizeof(what), "case %zu", n_cases);
        jids = cJSON_GetObjectItem(j, "ids");
        want = malloc(((size_t) cJSON_GetArraySize(jids) + 1) * sizeof(*want));
        cJSON_ArrayForEach(it, jids) want[n_want++] = (int32_t) it->valuedouble;

        CHECK_MSG(vl2_tokenizer_encode(tok, text, text_len, &got, &n_got, &err) == 0,
              "%s: encode: %s", what, err.msg);
        if (got) {
            size_t first = 0;
            while (first < n_got && first < n_want && got[first] == want[first])
                first++;
            CHECK_MSG(n_got == n_want && first == n_want,
                  "%s '%.40s': %zu ids, want %zu; first difference at %zu (%d, want %d)", what,
                  text, n_got, n_want, first, first < n_got ? got[first] : -1,
                  first < n_want ? want[first] : -1);
        }
        free(got);
        for (i = 0; i < n_want; i++)
            CHECK_MSG((size_t) want[i] < vl2_tokenizer_vocab_size(tok), "%s: id out of range", what);
        check_decode(tok, want, n_want, decoded, dec_len, what);
        free(want);
        n_cases++;
    next:
        cJSON_Delete(j);
        free(text);
        free(decoded);
    }
    free(all);
    CHECK_MSG(n_cases >= 60, "only %zu golden cases", n_cases);
    printf("golden.jsonl: %zu cases\n", n_cases);
}

/* generated.json of the model golden cases: ids -> text. */
static void golden_generated(const struct vl2_tokenizer *tok, const char *dir)
{
    static const char *const presets[] = { "micro-mha", "micro-mla", "micro-base" };
    static const char *const cases[] = { "a384", "wide", "tall", "textonly" };
    size_t p, c, n_done = 0;

    for (p = 0; p < 3; p++)
        for (c = 0; c < 4; c++) {
            char path[4096], what[128];
            size_t len, n = 0;
            char *buf;
            cJSON *j, *it;
            int32_t ids[64];

            snprintf(path, sizeof(path), "%s/%s/%s/generated.json", dir, presets[p], cases[c]);
            snprintf(what, sizeof(what), "%s/%s generated", presets[p], cases[c]);
            buf = test_slurp(path, &len);
            CHECK_MSG(buf != NULL, "cannot read '%s'", path);
            if (!buf)
                continue;
            j = cJSON_Parse(buf);
            cJSON_ArrayForEach(it, cJSON_GetObjectItem(j, "generated_ids"))
                if (n < 64)
                    ids[n++] = (int32_t) it->valuedouble;
            it = cJSON_GetObjectItem(j, "text");
            CHECK_MSG(cJSON_IsString(it) && n > 0, "%s: bad file", what);
            if (cJSON_IsString(it))
                check_decode(tok, ids, n, it->valuestring, strlen(it->valuestring), what);
            cJSON_Delete(j);
            free(buf);
            n_done++;
        }
    printf("generated.json: %zu cases\n", n_done);
}

/* ---- one tokenizer shared by threads ---------------------------------- */

#define N_THREADS 4

struct thread_job {
    const struct vl2_tokenizer *tok;
    char *text;
    size_t len;
    const int32_t *want;
    size_t n_want;
    int bad;
};

static void *thread_main(void *arg)
{
    struct thread_job *job = arg;
    int round;

    for (round = 0; round < 20; round++) {
        int32_t *got = NULL;
        size_t n = 0;
        char *text = NULL;
        size_t len = 0;
        if (vl2_tokenizer_encode(job->tok, job->text, job->len, &got, &n, NULL) < 0 ||
            n != job->n_want || memcmp(got, job->want, n * sizeof(*got)))
            job->bad++;
        if (vl2_tokenizer_decode(job->tok, job->want, job->n_want, &text, &len, NULL) < 0 ||
            len != job->len || memcmp(text, job->text, len))
            job->bad++;
        free(got);
        free(text);
    }
    return NULL;
}

/* The longest golden texts, encoded by several threads at once on the same
 * tokenizer: every thread gets the golden ids every time. */
static void golden_threads(const struct vl2_tokenizer *tok, const char *path)
{
    struct thread_job jobs[N_THREADS];
    pthread_t th[N_THREADS];
    size_t len, i, k = 0;
    char *all = test_slurp(path, &len), *line, *save = NULL;
    int32_t *want[N_THREADS] = { 0 };

    if (!all)
        return;
    memset(jobs, 0, sizeof(jobs));
    /* the first four cases over 60 bytes */
    for (line = strtok_r(all, "\n", &save); line && k < N_THREADS;
         line = strtok_r(NULL, "\n", &save)) {
        cJSON *j = cJSON_Parse(line), *it;
        size_t tl;
        char *text = json_string_raw(line, "text", &tl);
        if (j && text && tl > 60) {
            size_t n = 0;
            want[k] = malloc(((size_t) cJSON_GetArraySize(cJSON_GetObjectItem(j, "ids")) + 1) *
                             sizeof(int32_t));
            cJSON_ArrayForEach(it, cJSON_GetObjectItem(j, "ids")) want[k][n++] = (int32_t) it->valuedouble;
            jobs[k] = (struct thread_job) { .tok = tok, .text = text, .len = tl, .want = want[k],
                                            .n_want = n };
            text = NULL;
            k++;
        }
        free(text);
        cJSON_Delete(j);
    }
    CHECK_MSG(k == N_THREADS, "only %zu long golden cases", k);
    for (i = 0; i < k; i++)
        CHECK_MSG(pthread_create(&th[i], NULL, thread_main, &jobs[i]) == 0, "pthread_create");
    for (i = 0; i < k; i++) {
        pthread_join(th[i], NULL);
        CHECK_MSG(jobs[i].bad == 0, "thread %zu: %d wrong results", i, jobs[i].bad);
        free(jobs[i].text);
        free(want[i]);
    }
    free(all);
    printf("threads: %zu x 20 rounds\n", k);
}

int main(int argc, char **argv)
{
    struct vl2_tokenizer *tok = NULL;
    struct vl2_err err = { 0 };

    if (argc < 3) {
        fprintf(stderr, "usage: %s TOKENIZER_DIR golden.jsonl [GOLDEN_DIR]\n", argv[0]);
        return 2;
    }
    if (vl2_tokenizer_load(&tok, argv[1], &err) < 0) {
        fprintf(stderr, "FAIL load: %s\n", err.msg);
        return 1;
    }
    golden_corpus(tok, argv[2]);
    golden_threads(tok, argv[2]);
    if (argc > 3)
        golden_generated(tok, argv[3]);
    vl2_tokenizer_free(tok);
    if (check_failures)
        fprintf(stderr, "%d check_failures\n", check_failures);
    return check_failures ? 1 : 0;
}

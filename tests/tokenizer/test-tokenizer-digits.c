/* test-tokenizer-digits.c - the Digits pre-tokenizer splits on every Unicode
 * number (Nd, Nl, No: Arabic-Indic, fullwidth, Devanagari digits, circled
 * numbers, fractions, superscripts, Roman numerals), as Hugging Face does,
 * with individual_digits true and false.  Expected ids: Hugging Face
 * tokenizers on the same tokenizer.json files (how they were made:
 * tests/data/tokenizer/digits/README.md).
 *
 * usage: test-tokenizer-digits DIGITS_DATA_DIR
 */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/check.h"
#include "../common/util.h"
#include "tokenizer.h"

static void check_mode(const char *data_dir, const char *mode, const cJSON *texts,
                       const cJSON *want_all)
{
    char dir[4096];
    struct vl2_tokenizer *tok = NULL;
    struct vl2_err err = { 0 };
    const cJSON *t, *w;
    int bad = 0, n = 0;

    snprintf(dir, sizeof(dir), "%s/%s", data_dir, mode);
    if (vl2_tokenizer_load(&tok, dir, &err) < 0) {
        CHECK_MSG(0, "load %s: %s", dir, err.msg);
        return;
    }
    for (t = texts->child, w = want_all->child; t && w; t = t->next, w = w->next, n++) {
        int32_t *ids = NULL;
        size_t n_ids = 0, i;
        int r = vl2_tokenizer_encode(tok, t->valuestring, strlen(t->valuestring), &ids, &n_ids,
                                     &err);
        int same = r == 0 && n_ids == (size_t)cJSON_GetArraySize(w);
        const cJSON *id;

        for (i = 0, id = w->child; same && id; i++, id = id->next)
            same = ids[i] == (int32_t)id->valuedouble;
        if (!same) {
            fprintf(stderr, "%s: '%s': got", mode, t->valuestring);
            for (i = 0; i < n_ids; i++)
                fprintf(stderr, " %d", ids[i]);
            fprintf(stderr, ", Hugging Face:");
            for (id = w->child; id; id = id->next)
                fprintf(stderr, " %d", (int)id->valuedouble);
            fprintf(stderr, "\n");
            bad++;
        }
        free(ids);
    }
    CHECK_MSG(!t && !w && n > 0, "%s: %d texts, the lists differ in length", mode, n);
    CHECK_MSG(bad == 0, "%s: %d of %d texts differ from Hugging Face", mode, bad, n);
    vl2_tokenizer_free(tok);
}

int main(int argc, char **argv)
{
    char path[4096], *text;
    cJSON *root;

    if (argc != 2) {
        fprintf(stderr, "usage: test-tokenizer-digits DIGITS_DATA_DIR\n");
        return 2;
    }
    snprintf(path, sizeof(path), "%s/expected.json", argv[1]);
    text = test_slurp(path, NULL);
    root = text ? cJSON_Parse(text) : NULL;
    if (!root) {
        fprintf(stderr, "cannot read %s\n", path);
        return 1;
    }
    check_mode(argv[1], "individual", cJSON_GetObjectItemCaseSensitive(root, "texts"),
               cJSON_GetObjectItemCaseSensitive(root, "individual"));
    check_mode(argv[1], "contiguous", cJSON_GetObjectItemCaseSensitive(root, "texts"),
               cJSON_GetObjectItemCaseSensitive(root, "contiguous"));
    cJSON_Delete(root);
    free(text);
    if (check_failures)
        return 1;
    printf("Digits: every text as Hugging Face, individual_digits true and false\n");
    return 0;
}

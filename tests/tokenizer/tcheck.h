/* tcheck.h - what the tokenizer tests share: CHECK (a failed check prints
 * where and what, counts in `failures`, and the test goes on) and slurp. */
#ifndef VL2_TEST_TOKENIZER_CHECK_H
#define VL2_TEST_TOKENIZER_CHECK_H

#include <stdio.h>
#include <stdlib.h>

static int failures;

#define CHECK(cond, ...)                                            \
    do {                                                            \
        if (!(cond)) {                                              \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);    \
            fprintf(stderr, __VA_ARGS__);                           \
            fprintf(stderr, "\n");                                  \
            failures++;                                             \
        }                                                           \
    } while (0)

/* The whole file @path, NUL-terminated (malloc'd), its length in *ret_len
 * when @ret_len is not NULL; NULL when it cannot be opened. */
static inline char *slurp(const char *path, size_t *ret_len)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t cap = 0, n = 0, k;

    if (!f)
        return NULL;
    do {
        if (n + 65536 > cap) {
            cap = cap ? cap * 2 : 1 << 20;
            buf = realloc(buf, cap + 1);
            if (!buf)
                abort();
        }
        k = fread(buf + n, 1, 65536, f);
        n += k;
    } while (k > 0);
    fclose(f);
    buf[n] = '\0';
    if (ret_len)
        *ret_len = n;
    return buf;
}

#endif

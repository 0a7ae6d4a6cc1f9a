/* check.h - minimal assertions for the image tests: a failed CHECK prints
 * where and why, counts, and the test goes on; main returns the verdict. */
#ifndef VL2_TEST_IMAGE_CHECK_H
#define VL2_TEST_IMAGE_CHECK_H

#include <stdio.h>
#include <stdlib.h>

static int n_checks, n_failed;

#define CHECK(cond, ...)                                                        \
    do {                                                                        \
        n_checks++;                                                             \
        if (!(cond)) {                                                          \
            n_failed++;                                                         \
            fprintf(stderr, "%s:%d: CHECK(%s) failed: ", __FILE__, __LINE__,  \
                    #cond);                                                     \
            fprintf(stderr, __VA_ARGS__);                                       \
            fputc('\n', stderr);                                                \
        }                                                                       \
    } while (0)

static inline int check_report(const char *name)
{
    printf("%s: %d checks, %d failed\n", name, n_checks, n_failed);
    return n_failed ? 1 : (n_checks ? 0 : 1);
}

/* Read a whole file; NULL on failure (with a message). */
static inline unsigned char *read_all(const char *path, size_t *ret_size)
{
    FILE *f = fopen(path, "rb");
    unsigned char *buf = NULL;
    long n;

    if (!f) {
        fprintf(stderr, "cannot open '%s'\n", path);
        return NULL;
    }
    if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0) {
        buf = malloc((size_t)n + 1);
        if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
            free(buf);
            buf = NULL;
        }
        if (buf) {
            buf[n] = 0;
            *ret_size = (size_t)n;
        }
    }
    fclose(f);
    return buf;
}

#endif

/* pcheck.h - assertions for the plugin tests: a failed CHECK prints where and
 * what, counts, and the test goes on; main() returns non-zero if any failed. */
#ifndef VL2_PCHECK_H
#define VL2_PCHECK_H

#include <stdio.h>

static int check_failures;

#define CHECK(cond) do {                                                        \
        if (!(cond)) {                                                          \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__,   \
                    #cond);                                                     \
            check_failures++;                                                   \
        }                                                                       \
    } while (0)

#define CHECK_MSG(cond, ...) do {                                               \
        if (!(cond)) {                                                          \
            fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__,   \
                    #cond);                                                     \
            fprintf(stderr, __VA_ARGS__);                                       \
            fputc('\n', stderr);                                                \
            check_failures++;                                                   \
        }                                                                       \
    } while (0)

#endif

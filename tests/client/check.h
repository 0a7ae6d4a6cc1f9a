/* check.h - tiny assertion helpers for the client tests: a failed check
 * prints where and what, and counts; main() returns failures != 0. */
#ifndef VL2_TEST_CLIENT_CHECK_H
#define VL2_TEST_CLIENT_CHECK_H

#include <stdio.h>
#include <string.h>

static int check_failures;

#define CHECK(cond, ...)                                                      \
    do {                                                                      \
        if (!(cond)) {                                                        \
            fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                     \
            fprintf(stderr, "\n");                                            \
            check_failures++;                                                 \
        }                                                                     \
    } while (0)

#define CHECK_STR(a, b)                                                       \
    do {                                                                      \
        const char *a_ = (a), *b_ = (b);                                      \
        CHECK(a_ && b_ && !strcmp(a_, b_), "'%s' != '%s'", a_ ? a_ : "(null)", \
              b_ ? b_ : "(null)");                                            \
    } while (0)

#endif

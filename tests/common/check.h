/* check.h - minimal assertions for the ipc, plugins and integration tests: a
 * failed CHECK prints where and what, counts, and the test continues; main()
 * returns non-zero if any failed. */
#ifndef VL2_TEST_CHECK_H
#define VL2_TEST_CHECK_H

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

#define CHECK_EQ_INT(a, b) do {                                                 \
        long long va_ = (long long) (a), vb_ = (long long) (b);                 \
        if (va_ != vb_) {                                                       \
            fprintf(stderr, "%s:%d: check failed: %s == %s (%lld != %lld)\n",   \
                    __FILE__, __LINE__, #a, #b, va_, vb_);                      \
            check_failures++;                                                   \
        }                                                                       \
    } while (0)

#define RUN(test) do {                                                          \
        int before_ = check_failures;                                           \
        test();                                                                 \
        fprintf(stderr, "%s %s\n", check_failures == before_ ? "ok  " : "FAIL", \
                #test);                                                         \
    } while (0)

#endif

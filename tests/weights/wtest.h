/* wtest.h - tiny assertion helpers for the weights tests. */
#ifndef VL2_WTEST_H
#define VL2_WTEST_H

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int wt_failures;

#define CHECK(cond)                                                                          \
    do {                                                                                     \
        if (!(cond)) {                                                                       \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);         \
            wt_failures++;                                                                   \
        }                                                                                    \
    } while (0)

#define CHECK_EQ_I(a, b)                                                                     \
    do {                                                                                     \
        long long a_ = (long long) (a), b_ = (long long) (b);                                \
        if (a_ != b_) {                                                                      \
            fprintf(stderr, "%s:%d: %s = %lld, expected %lld\n", __FILE__, __LINE__, #a, a_, \
                    b_);                                                                     \
            wt_failures++;                                                                   \
        }                                                                                    \
    } while (0)

/* The call failed with @code and its message contains every one of the
 * NULL-terminated substrings. */
#define CHECK_ERR(r, err, code, ...)                                                         \
    wt_check_err(__FILE__, __LINE__, (r), (err), (code), __VA_ARGS__, (const char *) NULL)

static inline void wt_check_err(const char *file, int line, int r, const struct vl2_err *err,
                                int code, ...)
{
    const char *s;
    va_list ap;

    if (r != code || err->code != code) {
        fprintf(stderr, "%s:%d: expected error %d, got %d (msg: %s)\n", file, line, code, r,
                err->msg);
        wt_failures++;
        return;
    }
    va_start(ap, code);
    while ((s = va_arg(ap, const char *)))
        if (!strstr(err->msg, s)) {
            fprintf(stderr, "%s:%d: message lacks \"%s\": %s\n", file, line, s, err->msg);
            wt_failures++;
        }
    va_end(ap);
    if (strchr(err->msg, '\n')) {
        fprintf(stderr, "%s:%d: message has a newline: %s\n", file, line, err->msg);
        wt_failures++;
    }
}

static inline int wt_done(const char *name)
{
    if (wt_failures) {
        fprintf(stderr, "%s: %d failure(s)\n", name, wt_failures);
        return 1;
    }
    printf("%s: ok\n", name);
    return 0;
}

#endif

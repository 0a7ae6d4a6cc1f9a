/* check.h - the one set of assertions of the C tests (header-only: a test
 * includes it as "../common/check.h" and needs nothing in its meson.build).
 *
 * A failed check prints where and what ("FILE:LINE: check failed: COND"),
 * counts in check_failures, and the test goes on; a test's main() ends with
 *     return check_failures ? 1 : 0;
 * or with check_report(name), which also fails a test that checked nothing.
 *
 *     CHECK(cond)                     the condition alone
 *     CHECK_MSG(cond, fmt, ...)       and a printf-style explanation
 *     CHECK_EQ_INT(a, b)              integers, both values printed
 *     CHECK_STR(a, b)                 strings (NULL never equals anything)
 *     CHECK_ERR(r, err, code, "substring", ...)
 *                                     a call failed with @code (return value
 *                                     and err->code), its one-line message
 *                                     holding every substring given
 *     RUN(test)                       run void test(void), print ok/FAIL
 */
#ifndef VL2_TEST_CHECK_H
#define VL2_TEST_CHECK_H

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "vl2-status.h"

static int check_failures;   /* failed checks so far */
static int check_total;      /* checks made so far */

#define CHECK(cond) do {                                                        \
        check_total++;                                                          \
        if (!(cond)) {                                                          \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__,   \
                    #cond);                                                     \
            check_failures++;                                                   \
        }                                                                       \
    } while (0)

#define CHECK_MSG(cond, ...) do {                                               \
        check_total++;                                                          \
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
        check_total++;                                                          \
        if (va_ != vb_) {                                                       \
            fprintf(stderr, "%s:%d: check failed: %s == %s (%lld != %lld)\n",   \
                    __FILE__, __LINE__, #a, #b, va_, vb_);                      \
            check_failures++;                                                   \
        }                                                                       \
    } while (0)

#define CHECK_STR(a, b) do {                                                    \
        const char *sa_ = (a), *sb_ = (b);                                      \
        CHECK_MSG(sa_ && sb_ && !strcmp(sa_, sb_), "'%s' != '%s'",              \
                  sa_ ? sa_ : "(null)", sb_ ? sb_ : "(null)");                  \
    } while (0)

#define CHECK_ERR(r, err, code, ...)                                            \
    check_err_(__FILE__, __LINE__, (r), (err), (code), __VA_ARGS__,           \
               (const char *) NULL)

static inline void check_err_(const char *file, int line, int r, const struct vl2_err *err,
                              int code, ...)
{
    const char *s;
    va_list ap;

    check_total++;
    if (r != code || err->code != code) {
        fprintf(stderr, "%s:%d: check failed: expected error %d, got %d (msg: %s)\n", file,
                line, code, r, err->msg);
        check_failures++;
        return;
    }
    va_start(ap, code);
    while ((s = va_arg(ap, const char *)))
        if (!strstr(err->msg, s)) {
            fprintf(stderr, "%s:%d: check failed: message lacks \"%s\": %s\n", file, line, s,
                    err->msg);
            check_failures++;
        }
    va_end(ap);
    if (strchr(err->msg, '\n')) {
        fprintf(stderr, "%s:%d: check failed: message has a newline: %s\n", file, line,
                err->msg);
        check_failures++;
    }
}

#define RUN(test) do {                                                          \
        int before_ = check_failures;                                           \
        test();                                                                 \
        fprintf(stderr, "%s %s\n", check_failures == before_ ? "ok  " : "FAIL", \
                #test);                                                         \
    } while (0)

/* The verdict for main(): prints "@name: N checks, M failed" and returns 1
 * when a check failed or none was made. */
static inline int check_report(const char *name)
{
    printf("%s: %d checks, %d failed\n", name, check_total, check_failures);
    return check_failures || !check_total ? 1 : 0;
}

#endif

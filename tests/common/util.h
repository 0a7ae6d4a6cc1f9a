/* util.h - small helpers the test programs share: reading a whole file,
 * sleeping.  Header-only (static inline): a test includes it as
 * "../common/util.h" and needs nothing in its meson.build. */
#ifndef VL2_TEST_COMMON_UTIL_H
#define VL2_TEST_COMMON_UTIL_H

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

/* The whole file @path, NUL-terminated (malloc'd; aborts when out of
 * memory), its length in *ret_len when @ret_len is not NULL; NULL when it
 * cannot be opened. */
static inline char *test_slurp(const char *path, size_t *ret_len)
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

/* Sleep @ms milliseconds (the whole time, through signals). */
static inline void test_sleep_ms(int ms)
{
    struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long) (ms % 1000) * 1000000L };

    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

#endif

/* log.c - see log.h.  The level and the journal detection are the only
 * mutable file-scope state, as STYLE allows for the log sink. */
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "log.h"

static enum vl2_log_level log_level = VL2_LOG_INFO;
static int log_to_journal = -1;   /* -1: not checked yet */

void vl2_log_set_level(enum vl2_log_level level)
{
    log_level = level;
}

enum vl2_log_level vl2_log_get_level(void)
{
    return log_level;
}

int vl2_log_parse_level(const char *s, enum vl2_log_level *ret_level)
{
    static const struct { const char *name; enum vl2_log_level level; } names[] = {
        { "error", VL2_LOG_ERR }, { "warning", VL2_LOG_WARN }, { "warn", VL2_LOG_WARN },
        { "info", VL2_LOG_INFO }, { "debug", VL2_LOG_DEBUG },
    };
    size_t i;

    for (i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (!strcmp(s, names[i].name)) {
            *ret_level = names[i].level;
            return 0;
        }
    return -1;
}

/* stderr is the journal when $JOURNAL_STREAM names its device and inode. */
static int stderr_is_journal(void)
{
    const char *js = getenv("JOURNAL_STREAM");
    unsigned long long dev, ino;
    struct stat st;

    if (!js || sscanf(js, "%llu:%llu", &dev, &ino) != 2)
        return 0;
    if (fstat(2, &st) < 0)
        return 0;
    return (unsigned long long) st.st_dev == dev && (unsigned long long) st.st_ino == ino;
}

void vl2_log_escape(const char *in, char *out, size_t size)
{
    const unsigned char *p = (const unsigned char *) in;
    size_t o = 0;

    if (size == 0)
        return;
    for (; *p && o + 1 < size; p++) {
        bool c1 = p[0] == 0xc2 && p[1] >= 0x80 && p[1] <= 0x9f;  /* U+0080..U+009F */

        if (*p < 0x20 || *p == 0x7f || *p == '\\' || c1) {
            if (o + 5 >= size)
                break;
            if (*p == '\\') {
                out[o++] = '\\';
                out[o++] = '\\';
            } else {
                o += (size_t) snprintf(out + o, size - o, "\\x%02x", c1 ? p[1] : *p);
                if (c1)
                    p++;
            }
        } else {
            out[o++] = (char) *p;
        }
    }
    out[o] = '\0';
}

void vl2_log(enum vl2_log_level level, const char *fmt, ...)
{
    char line[1024], esc[4096];
    va_list ap;

    if (level > log_level)
        return;
    if (log_to_journal < 0)
        log_to_journal = stderr_is_journal();
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    vl2_log_escape(line, esc, sizeof(esc));
    if (log_to_journal)
        fprintf(stderr, "<%d>%s\n", (int) level, esc);
    else
        fprintf(stderr, "vl2d: %s%s\n",
                level <= VL2_LOG_ERR ? "error: " : level == VL2_LOG_WARN ? "warning: " : "",
                esc);
}

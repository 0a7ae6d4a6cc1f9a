/* log.h - the server's log: one line per event on stderr (the journal under
 * systemd).  Only daemon/server logs; the libraries below it return errors. */
#ifndef VL2_SERVER_LOG_H
#define VL2_SERVER_LOG_H

#include <stddef.h>

/* syslog priorities, so that "<N>" prefixes mean the same to journald */
enum vl2_log_level {
    VL2_LOG_ERR = 3,
    VL2_LOG_WARN = 4,
    VL2_LOG_INFO = 6,
    VL2_LOG_DEBUG = 7,
};

/* Messages above @level are dropped (default VL2_LOG_INFO). */
void vl2_log_set_level(enum vl2_log_level level);
enum vl2_log_level vl2_log_get_level(void);

/* Parse "error", "warning", "info", "debug".  Returns 0 or VL2_EINVAL (-1). */
int vl2_log_parse_level(const char *s, enum vl2_log_level *ret_level);

/* Copy @in to @out (@size bytes, NUL-terminated, cut when full) with every
 * control character (C0, DEL, C1 in UTF-8) written as \xNN and '\' as
 * '\\': a name or path from a client can neither forge log lines nor send
 * escapes to a terminal.  vl2_log() applies it to every line. */
void vl2_log_escape(const char *in, char *out, size_t size);

#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
void vl2_log(enum vl2_log_level level, const char *fmt, ...);

#endif

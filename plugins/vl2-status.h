/* vl2-status.h - status codes and the error record shared by every layer.
 *
 * Header-only, no code to link: the one file every module of vl2d may
 * include.  A status means the same thing in a backend, in the runtime and on
 * the wire (ipc/vl2.proto carries the same numbers in Error.code).
 *
 * Functions that can fail return int: >= 0 is success (it may carry a count),
 * < 0 is one of the codes below.  Detail goes into an optional
 * struct vl2_err *err, always the last parameter, which may be NULL.
 */
#ifndef VL2_STATUS_H
#define VL2_STATUS_H

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

enum vl2_status {
    VL2_OK             =   0,
    VL2_EINVAL         =  -1,  /* invalid argument or request */
    VL2_ENOMEM         =  -2,  /* out of memory (host or device) */
    VL2_EIO            =  -3,  /* read/write/map failed */
    VL2_EFORMAT        =  -4,  /* malformed input: file, frame, image, JSON */
    VL2_ENOTFOUND      =  -5,  /* no such model, tensor, file, key */
    VL2_EUNSUPPORTED   =  -6,  /* valid but not supported (format, feature, dtype) */
    VL2_ELIMIT         =  -7,  /* over a configured limit (pixels, frame size, context) */
    VL2_ECANCELED      =  -8,  /* cancelled by the client or by shutdown */
    VL2_EUNIMPLEMENTED =  -9,  /* request understood, not implemented yet */
    VL2_EBUSY          = -10,  /* resource in use (socket, model loading) */
    VL2_EPERM          = -11,  /* permission denied (peer credentials) */
    VL2_EBACKEND       = -12,  /* backend failure (plugin, device) */
    VL2_ETIMEDOUT      = -13,
    VL2_EPROTO         = -14,  /* protocol violation (version, sequence) */
    VL2_EABI           = -15,  /* plugin ABI mismatch */
    VL2_EINTERNAL      = -16,  /* a bug: invariant broken */
};

#define VL2_ERR_MSG_SIZE 512

struct vl2_err {
    int  code;                   /* enum vl2_status, 0 when no error */
    char msg[VL2_ERR_MSG_SIZE];  /* one line, no trailing newline */
};

static inline const char *vl2_status_name(int code)
{
    switch (code) {
    case VL2_OK:             return "OK";
    case VL2_EINVAL:         return "INVALID_ARGUMENT";
    case VL2_ENOMEM:         return "OUT_OF_MEMORY";
    case VL2_EIO:            return "IO_ERROR";
    case VL2_EFORMAT:        return "BAD_FORMAT";
    case VL2_ENOTFOUND:      return "NOT_FOUND";
    case VL2_EUNSUPPORTED:   return "UNSUPPORTED";
    case VL2_ELIMIT:         return "LIMIT_EXCEEDED";
    case VL2_ECANCELED:      return "CANCELED";
    case VL2_EUNIMPLEMENTED: return "UNIMPLEMENTED";
    case VL2_EBUSY:          return "BUSY";
    case VL2_EPERM:          return "PERMISSION_DENIED";
    case VL2_EBACKEND:       return "BACKEND_ERROR";
    case VL2_ETIMEDOUT:      return "TIMED_OUT";
    case VL2_EPROTO:         return "PROTOCOL_ERROR";
    case VL2_EABI:           return "ABI_MISMATCH";
    case VL2_EINTERNAL:      return "INTERNAL";
    }
    return "UNKNOWN";
}

#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
/* Record an error and return its code, so callers can write
 *     return vl2_err_set(err, VL2_EFORMAT, "%s: bad header", path);
 * A NULL err is allowed: only the code is returned. */
static inline int vl2_err_set(struct vl2_err *err, int code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        err->code = code;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
        va_end(ap);
    }
    return code;
}

/* Prepend "@ctx: " to the message of the error @code a callee recorded in
 * @err, and return @code, so callers can write
 *     if ((r = callee(..., err)) < 0)
 *         return vl2_err_prefix(err, r, "image 2");
 * A NULL err is allowed: @code comes back unchanged (the code is the
 * caller's, never rebuilt from @err).  @err ends up holding @code; one the
 * callee left empty gets @ctx alone.  The context takes at most half the
 * message, the old message is cut to fit.  @code >= 0 changes nothing. */
static inline int vl2_err_prefix(struct vl2_err *err, int code, const char *ctx)
{
    char tmp[VL2_ERR_MSG_SIZE];
    size_t n, m;

    if (!err || code >= 0)
        return code;
    if (!err->code || !err->msg[0]) {
        err->code = code;
        snprintf(err->msg, sizeof(err->msg), "%s", ctx);
        return code;
    }
    n = strlen(ctx);
    if (n > VL2_ERR_MSG_SIZE / 2)
        n = VL2_ERR_MSG_SIZE / 2;
    memcpy(tmp, ctx, n);
    tmp[n++] = ':';
    tmp[n++] = ' ';
    m = strnlen(err->msg, sizeof(err->msg) - 1);
    if (m > sizeof(tmp) - 1 - n)
        m = sizeof(tmp) - 1 - n;
    memcpy(tmp + n, err->msg, m);
    tmp[n + m] = '\0';
    memcpy(err->msg, tmp, n + m + 1);
    err->code = code;
    return code;
}

static inline void vl2_err_clear(struct vl2_err *err)
{
    if (err) {
        err->code = 0;
        err->msg[0] = '\0';
    }
}

#endif /* VL2_STATUS_H */

/* vl2-options.h - the one grammar of backend options (header-only, C and C++).
 *
 * A backend receives its options as one string in
 * vl2_backend_params.options, made by the runtime from `backend_options` in
 * vl2d.conf and the `--backend-option K=V` flags (in that order):
 *
 *     options = item *( "," item )     ; the empty string: no options
 *     item    = key "=" value
 *     key     = 1*( "a"-"z" / "0"-"9" / "_" )          ; at most 31 bytes
 *     value   = 1*( any byte but "," and control bytes ) ; at most 255 bytes
 *
 * No spaces, no empty items, no quoting.  A key given twice takes its last
 * value (a flag overrides the configuration file).  A backend rejects an
 * unknown key and a value it cannot read with VL2_EINVAL and a message that
 * names both; it never ignores an option.  Numbers are decimal integers
 * (optionally signed) that must fit the range the backend states.
 *
 * Use:
 *     const char *pos = params->options;
 *     struct vl2_opt o;
 *     int r;
 *     while ((r = vl2_opt_next(&pos, &o, "cpu", err)) > 0) {
 *         if (!strcmp(o.key, "threads"))
 *             r = vl2_opt_long(&o, 1, 256, &threads, "cpu", err);
 *         else
 *             r = vl2_opt_unknown(&o, "cpu", err);
 *         if (r < 0)
 *             return r;
 *     }
 *     if (r < 0)
 *         return r;
 */
#ifndef VL2_OPTIONS_H
#define VL2_OPTIONS_H

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "vl2-status.h"

#define VL2_OPT_KEY_MAX 32
#define VL2_OPT_VAL_MAX 256

struct vl2_opt {
    char key[VL2_OPT_KEY_MAX];
    char val[VL2_OPT_VAL_MAX];
};

/* Read the next item at *pos into *o and advance *pos.  Returns 1 with an
 * item, 0 at the end (also for a NULL or empty string), < 0 on a syntax
 * error (VL2_EINVAL, message prefixed with @who). */
static inline int vl2_opt_next(const char **pos, struct vl2_opt *o, const char *who,
                               struct vl2_err *err)
{
    const char *p = *pos, *eq, *end;
    size_t kl, vl, i;

    if (!p || !*p)
        return 0;
    end = strchr(p, ',');
    if (!end)
        end = p + strlen(p);
    eq = (const char *)memchr(p, '=', (size_t)(end - p));
    if (end == p)
        return vl2_err_set(err, VL2_EINVAL, "%s: options: empty item", who);
    if (!eq)
        return vl2_err_set(err, VL2_EINVAL, "%s: option '%.*s': expected key=value", who,
                           (int)(end - p), p);
    kl = (size_t)(eq - p);
    vl = (size_t)(end - eq - 1);
    if (kl == 0)
        return vl2_err_set(err, VL2_EINVAL, "%s: option '%.*s': empty key", who,
                           (int)(end - p), p);
    if (kl >= VL2_OPT_KEY_MAX)
        return vl2_err_set(err, VL2_EINVAL, "%s: option key '%.*s...': longer than %d bytes",
                           who, 16, p, VL2_OPT_KEY_MAX - 1);
    for (i = 0; i < kl; i++) {
        char c = p[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_'))
            return vl2_err_set(err, VL2_EINVAL,
                               "%s: option key '%.*s': only a-z, 0-9 and _ are allowed", who,
                               (int)kl, p);
    }
    if (vl == 0)
        return vl2_err_set(err, VL2_EINVAL, "%s: option '%.*s': empty value", who, (int)kl, p);
    if (vl >= VL2_OPT_VAL_MAX)
        return vl2_err_set(err, VL2_EINVAL, "%s: option '%.*s': value longer than %d bytes",
                           who, (int)kl, p, VL2_OPT_VAL_MAX - 1);
    for (i = 0; i < vl; i++)
        if ((unsigned char)eq[1 + i] < 0x20 || eq[1 + i] == 0x7f)
            return vl2_err_set(err, VL2_EINVAL, "%s: option '%.*s': control byte in value",
                               who, (int)kl, p);
    memcpy(o->key, p, kl);
    o->key[kl] = '\0';
    memcpy(o->val, eq + 1, vl);
    o->val[vl] = '\0';
    *pos = *end ? end + 1 : end;
    if (*end && !end[1])
        return vl2_err_set(err, VL2_EINVAL, "%s: options: empty item after '%s'", who, o->key);
    return 1;
}

/* The value of @o as a decimal integer in [min, max] (an optional sign, then
 * digits only: no blanks, no hex). */
static inline int vl2_opt_long(const struct vl2_opt *o, long min, long max, long *out,
                               const char *who, struct vl2_err *err)
{
    const char *d = o->val + (o->val[0] == '-' || o->val[0] == '+');
    char *end;
    long v;

    errno = 0;
    v = strtol(o->val, &end, 10);
    if (*d < '0' || *d > '9' || errno || *end || v < min || v > max)
        return vl2_err_set(err, VL2_EINVAL, "%s: option %s '%s': expected an integer %ld..%ld",
                           who, o->key, o->val, min, max);
    *out = v;
    return 0;
}

/* The value of @o as 0 or 1 ("0", "1", "false", "true", "off", "on"). */
static inline int vl2_opt_bool(const struct vl2_opt *o, int *out, const char *who,
                               struct vl2_err *err)
{
    if (!strcmp(o->val, "1") || !strcmp(o->val, "true") || !strcmp(o->val, "on"))
        *out = 1;
    else if (!strcmp(o->val, "0") || !strcmp(o->val, "false") || !strcmp(o->val, "off"))
        *out = 0;
    else
        return vl2_err_set(err, VL2_EINVAL, "%s: option %s '%s': expected 0 or 1", who,
                           o->key, o->val);
    return 0;
}

/* The index of the value of @o in @names (@n names), for options with a
 * fixed set of words. */
static inline int vl2_opt_choice(const struct vl2_opt *o, const char *const *names, int n,
                                 int *out, const char *who, struct vl2_err *err)
{
    char list[160];
    size_t len = 0;
    int i;

    for (i = 0; i < n; i++)
        if (!strcmp(o->val, names[i])) {
            *out = i;
            return 0;
        }
    list[0] = '\0';
    for (i = 0; i < n && len + 1 < sizeof(list); i++) {
        int w = snprintf(list + len, sizeof(list) - len, "%s%s", i ? ", " : "", names[i]);
        if (w < 0)
            break;
        len += (size_t)w;
    }
    return vl2_err_set(err, VL2_EINVAL, "%s: option %s '%s': expected one of %s", who, o->key,
                       o->val, list);
}

/* The error for a key the backend does not know. */
static inline int vl2_opt_unknown(const struct vl2_opt *o, const char *who, struct vl2_err *err)
{
    return vl2_err_set(err, VL2_EINVAL, "%s: unknown option '%s'", who, o->key);
}

#endif /* VL2_OPTIONS_H */

/* pyjson.c - Python-compatible JSON output (see pyjson.h). */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pyjson.h"

void vl2__sb_add(struct vl2_strbuf *b, const char *p, size_t n)
{
    if (b->oom)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        char *s;
        while (cap < b->len + n + 1)
            cap *= 2;
        s = realloc(b->s, cap);
        if (!s) {
            b->oom = 1;
            return;
        }
        b->s = s;
        b->cap = cap;
    }
    memcpy(b->s + b->len, p, n);
    b->len += n;
    b->s[b->len] = '\0';
}

void vl2__sb_printf(struct vl2_strbuf *b, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t) n >= sizeof(tmp)) {
        b->oom = 1;
        return;
    }
    vl2__sb_add(b, tmp, (size_t) n);
}

void vl2__sb_free(struct vl2_strbuf *b)
{
    free(b->s);
    b->s = NULL;
    b->len = b->cap = 0;
}

/* Decode one UTF-8 sequence at @p; returns its length, 0 if invalid. */
static size_t utf8_next(const unsigned char *p, unsigned *cp)
{
    if (p[0] < 0x80) {
        *cp = p[0];
        return 1;
    }
    if ((p[0] & 0xe0) == 0xc0 && (p[1] & 0xc0) == 0x80) {
        *cp = (p[0] & 0x1fu) << 6 | (p[1] & 0x3fu);
        return 2;
    }
    if ((p[0] & 0xf0) == 0xe0 && (p[1] & 0xc0) == 0x80 && (p[2] & 0xc0) == 0x80) {
        *cp = (p[0] & 0x0fu) << 12 | (p[1] & 0x3fu) << 6 | (p[2] & 0x3fu);
        return 3;
    }
    if ((p[0] & 0xf8) == 0xf0 && (p[1] & 0xc0) == 0x80 && (p[2] & 0xc0) == 0x80 &&
        (p[3] & 0xc0) == 0x80) {
        *cp = (p[0] & 0x07u) << 18 | (p[1] & 0x3fu) << 12 | (p[2] & 0x3fu) << 6 | (p[3] & 0x3fu);
        return 4;
    }
    return 0;
}

void vl2__sb_json_string(struct vl2_strbuf *b, const char *s, int ensure_ascii)
{
    const unsigned char *p = (const unsigned char *) s;

    vl2__sb_add(b, "\"", 1);
    while (*p) {
        unsigned cp;
        size_t n;

        switch (*p) {
        case '"':  vl2__sb_add(b, "\\\"", 2); p++; continue;
        case '\\': vl2__sb_add(b, "\\\\", 2); p++; continue;
        case '\n': vl2__sb_add(b, "\\n", 2); p++; continue;
        case '\r': vl2__sb_add(b, "\\r", 2); p++; continue;
        case '\t': vl2__sb_add(b, "\\t", 2); p++; continue;
        case '\b': vl2__sb_add(b, "\\b", 2); p++; continue;
        case '\f': vl2__sb_add(b, "\\f", 2); p++; continue;
        }
        if (*p < 0x20) {
            vl2__sb_printf(b, "\\u%04x", *p);
            p++;
            continue;
        }
        if (*p < 0x80 || !ensure_ascii) {
            vl2__sb_add(b, (const char *) p, 1);
            p++;
            continue;
        }
        n = utf8_next(p, &cp);
        if (!n) {   /* not UTF-8: escape the byte as a code point */
            cp = *p;
            n = 1;
        }
        if (cp >= 0x10000) {
            cp -= 0x10000;
            vl2__sb_printf(b, "\\u%04x\\u%04x", 0xd800 + (cp >> 10), 0xdc00 + (cp & 0x3ff));
        } else {
            vl2__sb_printf(b, "\\u%04x", cp);
        }
        p += n;
    }
    vl2__sb_add(b, "\"", 1);
}

static int cmp_key(const void *a, const void *b)
{
    const cJSON *x = *(const cJSON *const *) a, *y = *(const cJSON *const *) b;

    return strcmp(x->string ? x->string : "", y->string ? y->string : "");
}

static void indent(struct vl2_strbuf *b, int level)
{
    int i;

    vl2__sb_add(b, "\n", 1);
    for (i = 0; i < level; i++)
        vl2__sb_add(b, "  ", 2);
}

static void dump(struct vl2_strbuf *b, const cJSON *it, int level, int ensure_ascii)
{
    const cJSON *c;
    size_t n = 0, i;

    if (cJSON_IsRaw(it)) {
        vl2__sb_add(b, it->valuestring, strlen(it->valuestring));
    } else if (cJSON_IsNull(it)) {
        vl2__sb_add(b, "null", 4);
    } else if (cJSON_IsTrue(it)) {
        vl2__sb_add(b, "true", 4);
    } else if (cJSON_IsFalse(it)) {
        vl2__sb_add(b, "false", 5);
    } else if (cJSON_IsNumber(it)) {
        /* integral values print as integers (floats that must keep a ".0"
         * are Raw items); others as Python's repr: the shortest round trip */
        double d = it->valuedouble;
        if (d == floor(d) && fabs(d) < 1e16) {
            vl2__sb_printf(b, "%.0f", d);
        } else {
            char tmp[40];
            int prec;
            for (prec = 1; prec <= 17; prec++) {
                snprintf(tmp, sizeof(tmp), "%.*g", prec, d);
                if (strtod(tmp, NULL) == d)
                    break;
            }
            vl2__sb_add(b, tmp, strlen(tmp));
        }
    } else if (cJSON_IsString(it)) {
        vl2__sb_json_string(b, it->valuestring, ensure_ascii);
    } else if (cJSON_IsArray(it)) {
        if (!it->child) {
            vl2__sb_add(b, "[]", 2);
            return;
        }
        vl2__sb_add(b, "[", 1);
        for (c = it->child; c; c = c->next) {
            indent(b, level + 1);
            dump(b, c, level + 1, ensure_ascii);
            if (c->next)
                vl2__sb_add(b, ",", 1);
        }
        indent(b, level);
        vl2__sb_add(b, "]", 1);
    } else if (cJSON_IsObject(it)) {
        const cJSON **v;
        if (!it->child) {
            vl2__sb_add(b, "{}", 2);
            return;
        }
        for (c = it->child; c; c = c->next)
            n++;
        v = malloc(n * sizeof(*v));
        if (!v) {
            b->oom = 1;
            return;
        }
        for (c = it->child, i = 0; c; c = c->next)
            v[i++] = c;
        qsort(v, n, sizeof(*v), cmp_key);
        vl2__sb_add(b, "{", 1);
        for (i = 0; i < n; i++) {
            indent(b, level + 1);
            vl2__sb_json_string(b, v[i]->string ? v[i]->string : "", ensure_ascii);
            vl2__sb_add(b, ": ", 2);
            dump(b, v[i], level + 1, ensure_ascii);
            if (i + 1 < n)
                vl2__sb_add(b, ",", 1);
        }
        free(v);
        indent(b, level);
        vl2__sb_add(b, "}", 1);
    }
}

void vl2__pyjson_dump(struct vl2_strbuf *b, const cJSON *item, int ensure_ascii)
{
    dump(b, item, 0, ensure_ascii);
}

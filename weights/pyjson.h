/* pyjson.h - write a cJSON tree the way Python's json.dumps(obj, indent=2,
 * sort_keys=True) does, so that generated config files match the published
 * (and golden) ones byte for byte.  Raw items (cJSON_CreateRaw) are copied
 * verbatim: floats are stored that way ("2.0", "3.7362") because cJSON keeps
 * no int/float distinction.  Used by vl2-mkweights. */
#ifndef VL2_WEIGHTS_PYJSON_H
#define VL2_WEIGHTS_PYJSON_H

#include <stddef.h>

#include <cjson/cJSON.h>

struct vl2_strbuf {
    char  *s;      /* NUL-terminated, malloc'd */
    size_t len;
    size_t cap;
    int    oom;    /* set when an append failed; the text is then incomplete */
};

void vl2__sb_add(struct vl2_strbuf *b, const char *p, size_t n);
void vl2__sb_printf(struct vl2_strbuf *b, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
void vl2__sb_free(struct vl2_strbuf *b);

/* JSON string literal of @s (UTF-8); with @ensure_ascii every non-ASCII
 * character becomes \uXXXX (surrogate pairs above U+FFFF), as Python does. */
void vl2__sb_json_string(struct vl2_strbuf *b, const char *s, int ensure_ascii);

/* Append @item as Python's json.dumps(indent=2, sort_keys=True). */
void vl2__pyjson_dump(struct vl2_strbuf *b, const cJSON *item, int ensure_ascii);

#endif

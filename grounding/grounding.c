/* grounding.c - <|ref|>..<|/ref|><|det|>[[..]]<|/det|> pairs -> boxes in pixels.
 * The rules (and how they differ from the official parse_ref_bbox) are in
 * grounding.h. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "grounding.h"

#define TAG_REF      "<|ref|>"
#define TAG_REF_END  "<|/ref|>"
#define TAG_DET      "<|det|>"
#define TAG_DET_END  "<|/det|>"

#define MAX_DIGITS 9   /* a longer number is runaway output: its group is dropped */

struct box_list {
    struct vl2_box *v;
    size_t n, cap;
};

int32_t vl2_grounding_to_pixels(int32_t v, int32_t side)
{
    if (v < 0 || side < 0)
        return 0;
    if (v > 999)
        v = 999;
    return (int32_t) ((double) v / 999.0 * (double) side);
}

void vl2_boxes_free(struct vl2_box *boxes, size_t n)
{
    if (!boxes)
        return;
    for (size_t i = 0; i < n; i++)
        free(boxes[i].label);
    free(boxes);
}

static bool starts_with(const char *p, const char *end, const char *tag, size_t tag_len)
{
    return (size_t) (end - p) >= tag_len && memcmp(p, tag, tag_len) == 0;
}

/* Length of the valid UTF-8 sequence at @p (at most @n bytes), 0 if invalid. */
static size_t utf8_len(const unsigned char *p, size_t n)
{
    unsigned c = p[0];
    size_t len;
    uint32_t cp;

    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf) {
        len = 2;
        cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (p[i] & 0x3f);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
        (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

/* A clean copy of a label: NULs dropped, invalid UTF-8 bytes -> '?', cut at
 * VL2_GROUNDING_MAX_LABEL bytes on a character boundary. */
static char *copy_label(const char *s, size_t n)
{
    size_t cap = n < VL2_GROUNDING_MAX_LABEL ? n : VL2_GROUNDING_MAX_LABEL;
    char *out = malloc(cap + 1);
    size_t o = 0;

    if (!out)
        return NULL;
    for (size_t i = 0; i < n;) {
        const unsigned char *p = (const unsigned char *) s + i;
        size_t l = utf8_len(p, n - i);

        if (p[0] == 0) {
            i++;
            continue;
        }
        if (l == 0) {
            if (o + 1 > cap)
                break;
            out[o++] = '?';
            i++;
            continue;
        }
        if (o + l > cap)
            break;
        memcpy(out + o, p, l);
        o += l;
        i += l;
    }
    out[o] = '\0';
    return out;
}

/* Parse "a, b, c, d" (the inside of one group, without brackets) into four
 * grid values.  False if it is not exactly four integers in 0..999. */
static bool parse_group(const char *p, const char *end, int32_t v[4])
{
    size_t n = 0;

    for (;;) {
        while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
            p++;
        if (p == end || *p < '0' || *p > '9')
            return false;
        int64_t x = 0;
        size_t digits = 0;
        while (p < end && *p >= '0' && *p <= '9') {
            if (++digits > MAX_DIGITS)
                return false;
            x = x * 10 + (*p - '0');
            p++;
        }
        if (n == 4 || x > 999)
            return false;
        v[n++] = (int32_t) x;
        while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
            p++;
        if (p == end)
            break;
        if (*p != ',')
            return false;
        p++;
    }
    return n == 4 && v[0] <= v[2] && v[1] <= v[3];
}

static int push_box(struct box_list *bl, const char *label, size_t label_len,
                    const int32_t v[4], int32_t w, int32_t h)
{
    if (bl->n == VL2_GROUNDING_MAX_BOXES)
        return 0;
    if (bl->n == bl->cap) {
        size_t cap = bl->cap ? bl->cap * 2 : 8;
        struct vl2_box *nv = realloc(bl->v, cap * sizeof(*nv));
        if (!nv)
            return VL2_ENOMEM;
        bl->v = nv;
        bl->cap = cap;
    }
    struct vl2_box *b = &bl->v[bl->n];
    b->label = copy_label(label ? label : "", label ? label_len : 0);
    if (!b->label)
        return VL2_ENOMEM;
    b->x1 = (float) vl2_grounding_to_pixels(v[0], w);
    b->y1 = (float) vl2_grounding_to_pixels(v[1], h);
    b->x2 = (float) vl2_grounding_to_pixels(v[2], w);
    b->y2 = (float) vl2_grounding_to_pixels(v[3], h);
    bl->n++;
    return 0;
}

/* Every innermost [...] group of a det body becomes a box if well formed. */
static int parse_det(struct box_list *bl, const char *p, const char *end,
                     const char *label, size_t label_len, int32_t w, int32_t h)
{
    const char *open = NULL;

    for (; p < end; p++) {
        if (*p == '[') {
            open = p + 1;
        } else if (*p == ']' && open) {
            int32_t v[4];
            if (parse_group(open, p, v)) {
                int r = push_box(bl, label, label_len, v, w, h);
                if (r < 0)
                    return r;
            }
            open = NULL;
        }
    }
    return 0;
}

int vl2_grounding_parse(const char *text, size_t len, int32_t img_w, int32_t img_h,
                        struct vl2_box **ret_boxes, size_t *ret_n, struct vl2_err *err)
{
    static const size_t l_ref = sizeof(TAG_REF) - 1, l_ref_end = sizeof(TAG_REF_END) - 1;
    static const size_t l_det = sizeof(TAG_DET) - 1, l_det_end = sizeof(TAG_DET_END) - 1;
    struct box_list bl = { 0 };
    const char *p, *end;
    const char *ref_open = NULL;    /* start of the body of an unclosed ref */
    const char *det_open = NULL;    /* start of the body of an unclosed det */
    const char *label = NULL;       /* the last complete ref not yet taken */
    size_t label_len = 0;
    int r;

    if (!ret_boxes || !ret_n || (!text && len > 0))
        return vl2_err_set(err, VL2_EINVAL, "grounding: missing text or output argument");
    if (img_w <= 0 || img_h <= 0)
        return vl2_err_set(err, VL2_EINVAL, "grounding: image size %dx%d: must be positive",
                           (int) img_w, (int) img_h);

    p = text;
    end = text ? text + len : text;
    while (p < end) {
        if (*p != '<') {
            const char *q = memchr(p, '<', (size_t) (end - p));
            if (!q)
                break;
            p = q;
        }
        if (starts_with(p, end, TAG_REF, l_ref)) {
            p += l_ref;
            ref_open = p;
            det_open = NULL;
        } else if (starts_with(p, end, TAG_REF_END, l_ref_end)) {
            if (ref_open) {
                label = ref_open;
                label_len = (size_t) (p - ref_open);
                ref_open = NULL;
            }
            p += l_ref_end;
        } else if (starts_with(p, end, TAG_DET, l_det)) {
            p += l_det;
            det_open = p;
            ref_open = NULL;
        } else if (starts_with(p, end, TAG_DET_END, l_det_end)) {
            if (det_open) {
                r = parse_det(&bl, det_open, p, label, label_len, img_w, img_h);
                if (r < 0)
                    goto out_free;
                label = NULL;
                label_len = 0;
                det_open = NULL;
            }
            p += l_det_end;
        } else {
            p++;
        }
    }

    *ret_boxes = bl.n ? bl.v : NULL;
    *ret_n = bl.n;
    if (!bl.n)
        free(bl.v);
    return (int) bl.n;

out_free:
    vl2_boxes_free(bl.v, bl.n);
    return vl2_err_set(err, r, "grounding: out of memory");
}

/* tok-utf8.c - UTF-8 validation and lossy repair, whitespace classes and
 * hashing for the tokenizer module. */
#include <string.h>

#include "tokenizer-impl.h"

uint64_t vl2__tok_hash(const void *p, size_t n)
{
    const unsigned char *s = p;
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (uint64_t) n;
    uint64_t v;

    while (n >= 8) {
        memcpy(&v, s, 8);
        h = (h ^ v) * 0xff51afd7ed558ccdull;
        h ^= h >> 32;
        s += 8;
        n -= 8;
    }
    v = 0;
    if (n)
        memcpy(&v, s, n);
    h = (h ^ v) * 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 29;
    return h;
}

/* ---- UTF-8 ------------------------------------------------------------- */

/* Length of the sequence led by @c (0: not a lead byte), and the range its
 * second byte must be in (Unicode table 3-7). */
static int lead_info(unsigned char c, unsigned char *lo, unsigned char *hi)
{
    *lo = 0x80;
    *hi = 0xBF;
    if (c < 0x80)
        return 1;
    if (c < 0xC2)
        return 0;
    if (c < 0xE0)
        return 2;
    if (c < 0xF0) {
        if (c == 0xE0)
            *lo = 0xA0;
        else if (c == 0xED)
            *hi = 0x9F;
        return 3;
    }
    if (c < 0xF5) {
        if (c == 0xF0)
            *lo = 0x90;
        else if (c == 0xF4)
            *hi = 0x8F;
        return 4;
    }
    return 0;
}

/* At @s[0] (n >= 1 bytes): > 0 length of a valid char; < 0 minus the length
 * of a maximal invalid subpart; 0 when the input ends inside a sequence that
 * is valid so far. */
static long scan_char(const unsigned char *s, size_t n)
{
    unsigned char lo, hi;
    int len = lead_info(s[0], &lo, &hi);
    int k;

    if (len == 1)
        return 1;
    if (len == 0)
        return -1;
    for (k = 1; k < len; k++) {
        if ((size_t) k >= n)
            return 0;
        if (k == 1 ? (s[1] < lo || s[1] > hi) : (s[k] < 0x80 || s[k] > 0xBF))
            return -k;
    }
    return len;
}

size_t vl2__utf8_valid_prefix(const unsigned char *s, size_t n)
{
    size_t i = 0;

    while (i < n) {
        if (s[i] < 0x80) {
            uint64_t v;
            if (i + 8 <= n) {
                memcpy(&v, s + i, 8);
                if (!(v & 0x8080808080808080ull)) {
                    i += 8;
                    continue;
                }
            }
            i++;
            continue;
        }
        long r = scan_char(s + i, n - i);
        if (r <= 0)
            return i;
        i += (size_t) r;
    }
    return i;
}

size_t vl2__utf8_repair(const unsigned char *s, size_t n, char *out, bool hold,
                        size_t *ret_held)
{
    size_t i = 0, o = 0;

    if (ret_held)
        *ret_held = 0;
    while (i < n) {
        if (s[i] < 0x80) {
            out[o++] = (char) s[i++];
            continue;
        }
        long r = scan_char(s + i, n - i);
        if (r > 0) {
            memcpy(out + o, s + i, (size_t) r);
            o += (size_t) r;
            i += (size_t) r;
            continue;
        }
        if (r == 0 && hold) {
            if (ret_held)
                *ret_held = n - i;
            break;
        }
        memcpy(out + o, "\xEF\xBF\xBD", 3);
        o += 3;
        i += r == 0 ? n - i : (size_t) -r;
    }
    return o;
}

uint32_t vl2__utf8_get(const unsigned char *s, size_t n, size_t *ret_len)
{
    uint32_t c = s[0];
    size_t len = c < 0xC0 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
    size_t k;

    if (len > n) {
        *ret_len = n;
        return 0xFFFD;
    }
    *ret_len = len;
    if (len == 1)
        return c;
    c &= 0x7F >> len;
    for (k = 1; k < len; k++)
        c = c << 6 | (s[k] & 0x3F);
    return c;
}

size_t vl2__utf8_put(char out[4], uint32_t c)
{
    if (c < 0x80) {
        out[0] = (char) c;
        return 1;
    }
    if (c < 0x800) {
        out[0] = (char) (0xC0 | c >> 6);
        out[1] = (char) (0x80 | (c & 0x3F));
        return 2;
    }
    if (c < 0x10000) {
        out[0] = (char) (0xE0 | c >> 12);
        out[1] = (char) (0x80 | ((c >> 6) & 0x3F));
        out[2] = (char) (0x80 | (c & 0x3F));
        return 3;
    }
    out[0] = (char) (0xF0 | c >> 18);
    out[1] = (char) (0x80 | ((c >> 12) & 0x3F));
    out[2] = (char) (0x80 | ((c >> 6) & 0x3F));
    out[3] = (char) (0x80 | (c & 0x3F));
    return 4;
}

/* ---- whitespace classes ------------------------------------------------ */

/* Unicode White_Space (Rust char::is_whitespace, Oniguruma \s). */
bool vl2__unicode_is_white_space(uint32_t c)
{
    if (c <= 0x20)
        return c == 0x20 || (c >= 0x09 && c <= 0x0D);
    if (c < 0x85)
        return false;
    return c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) ||
           c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

/* Python str.isspace(): White_Space plus the information separators
 * U+001C..U+001F (bidirectional class B/S). */
bool vl2__unicode_is_space_py(uint32_t c)
{
    return vl2__unicode_is_white_space(c) || (c >= 0x1C && c <= 0x1F);
}

/* test-tokenizer-utf8.c - the tokenizer's UTF-8 encoder (vl2__utf8_put,
 * tok-utf8.c), the one tok-load.c builds the byte alphabet with: every
 * scalar value U+0000..U+10FFFF, surrogates excepted, has the length RFC 3629
 * gives it, decodes back to itself (vl2__utf8_get) and is valid UTF-8
 * (vl2__utf8_valid_prefix); a few encodings pinned from the RFC's table. */
#include <stdint.h>
#include <string.h>

#include "../common/check.h"
#include "tokenizer-impl.h"

static size_t rfc3629_length(uint32_t c)
{
    return c < 0x80 ? 1 : c < 0x800 ? 2 : c < 0x10000 ? 3 : 4;
}

static void test_every_code_point(void)
{
    long bad_len = 0, bad_back = 0, bad_valid = 0;
    char out[4];

    for (uint32_t c = 0; c <= 0x10FFFF; c++) {
        size_t n, m;
        if (c >= 0xD800 && c <= 0xDFFF)
            continue;
        n = vl2__utf8_put(out, c);
        bad_len += n != rfc3629_length(c);
        bad_back += vl2__utf8_get((const unsigned char *) out, n, &m) != c || m != n;
        bad_valid += vl2__utf8_valid_prefix((const unsigned char *) out, n) != n;
    }
    CHECK_MSG(bad_len == 0, "%ld code points with a wrong length", bad_len);
    CHECK_MSG(bad_back == 0, "%ld code points that do not decode back", bad_back);
    CHECK_MSG(bad_valid == 0, "%ld encodings that are not valid UTF-8", bad_valid);
}

static void test_known(void)
{
    char out[4];

    CHECK(vl2__utf8_put(out, 0x41) == 1 && !memcmp(out, "A", 1));
    CHECK(vl2__utf8_put(out, 0x120) == 2 && !memcmp(out, "\xC4\xA0", 2));      /* byte-level space */
    CHECK(vl2__utf8_put(out, 0xD55C) == 3 && !memcmp(out, "\xED\x95\x9C", 3)); /* RFC 3629 */
    CHECK(vl2__utf8_put(out, 0x233B4) == 4 && !memcmp(out, "\xF0\xA3\x8E\xB4", 4)); /* RFC 3629 */
    CHECK(vl2__utf8_put(out, 0x10FFFF) == 4 && !memcmp(out, "\xF4\x8F\xBF\xBF", 4));
}

int main(void)
{
    RUN(test_every_code_point);
    RUN(test_known);
    return check_failures ? 1 : 0;
}

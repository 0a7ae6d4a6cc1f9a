/* test-http-unit.c - vl2-http's small pure functions: base64 (the RFC 4648
 * section 10 test vectors), the penalty mapping (its documented formula),
 * listen addresses, sizes, RFC 3339 times, token texts as OpenAI writes
 * them (whole UTF-8 characters kept, other bytes as \xNN). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"

static int failures;

#define CHECK(cond, ...)                                          \
    do {                                                          \
        if (!(cond)) {                                            \
            failures++;                                           \
            fprintf(stderr, "%s:%d: ", __FILE__, __LINE__);       \
            fprintf(stderr, __VA_ARGS__);                         \
            fputc('\n', stderr);                                  \
        }                                                         \
    } while (0)

static void b64_ok(const char *in, const char *want)
{
    uint8_t *out = NULL;
    size_t n = 0;
    int r = vl2h_base64_decode(in, strlen(in), &out, &n);

    CHECK(r == 0 && n == strlen(want) && !memcmp(out, want, n), "base64 '%s': r %d n %zu", in,
          r, n);
    free(out);
}

static void b64_bad(const char *in)
{
    uint8_t *out = NULL;
    size_t n = 0;

    CHECK(vl2h_base64_decode(in, strlen(in), &out, &n) == VL2_EINVAL, "base64 '%s' accepted",
          in);
}

static void token_text(const char *in, size_t n, const char *want)
{
    char *s = vl2h_token_text((const uint8_t *) in, n);

    CHECK(s && !strcmp(s, want), "token text: '%s', want '%s'", s ? s : "(null)", want);
    free(s);
}

int main(void)
{
    char host[64], ts[64];
    unsigned port = 0;
    size_t sz = 0;

    /* UTF-8 (Unicode table 3-7): 'é' = c3 a9, '€' = e2 82 ac, U+1F600 = f0 9f 98 80 */
    token_text("", 0, "");
    token_text(" cat", 4, " cat");
    token_text("\xc3\xa9t\xc3\xa9", 5, "\xc3\xa9t\xc3\xa9");
    token_text("\xe2\x82\xac\xf0\x9f\x98\x80", 7, "\xe2\x82\xac\xf0\x9f\x98\x80");
    token_text("\xe2\x82", 2, "\\xe2\\x82");              /* a character's first bytes */
    token_text("\xac!", 2, "\\xac!");                      /* its last byte */
    token_text("a\0b", 3, "a\\x00b");
    token_text("\xc0\xaf", 2, "\\xc0\\xaf");              /* overlong '/' */
    token_text("\xed\xa0\x80", 3, "\\xed\\xa0\\x80");      /* a surrogate */
    token_text("\xf4\x90\x80\x80", 4, "\\xf4\\x90\\x80\\x80");  /* above U+10FFFF */
    CHECK(vl2h_json_logprob(-INFINITY) == -9999.0 && vl2h_json_logprob(-0.5f) == -0.5,
          "logprob of -inf");

    /* RFC 4648, section 10 */
    b64_ok("Zg==", "f");
    b64_ok("Zm8=", "fo");
    b64_ok("Zm9v", "foo");
    b64_ok("Zm9vYg==", "foob");
    b64_ok("Zm9vYmE=", "fooba");
    b64_ok("Zm9vYmFy", "foobar");
    b64_ok("Zm9vYmFy\n", "foobar");     /* line breaks as MIME writes them */
    b64_ok("Zm9vYg", "foob");           /* padding left out */
    b64_bad("");
    b64_bad("Zm9v!");
    b64_bad("Z");
    b64_bad("Zm9vY");
    b64_bad("Zg===");
    b64_bad("Zg==Zg==");

    CHECK(vl2h_penalty_map(0, 0) == 1.0f, "penalty 0 0");
    CHECK(vl2h_penalty_map(2, 2) == 2.0f, "penalty 2 2");
    CHECK(vl2h_penalty_map(-2, -2) == 0.5f, "penalty -2 -2");
    CHECK(fabsf(vl2h_penalty_map(1, 1) - sqrtf(2.0f)) < 1e-6f, "penalty 1 1");

    CHECK(vl2h_parse_listen("127.0.0.1:11535", host, sizeof(host), &port, NULL) == 0 &&
          !strcmp(host, "127.0.0.1") && port == 11535, "listen v4");
    CHECK(vl2h_parse_listen("[::1]:8", host, sizeof(host), &port, NULL) == 0 &&
          !strcmp(host, "::1") && port == 8, "listen v6");
    CHECK(vl2h_parse_listen("localhost:0", host, sizeof(host), &port, NULL) == 0 && port == 0,
          "listen name");
    CHECK(vl2h_parse_listen("127.0.0.1", host, sizeof(host), &port, NULL) < 0, "no port");
    CHECK(vl2h_parse_listen(":80", host, sizeof(host), &port, NULL) < 0, "no host");
    CHECK(vl2h_parse_listen("h:65536", host, sizeof(host), &port, NULL) < 0, "port range");
    CHECK(vl2h_parse_listen("h:8x", host, sizeof(host), &port, NULL) < 0, "port junk");
    CHECK(vl2h_parse_listen("[::1:8", host, sizeof(host), &port, NULL) < 0, "v6 bracket");

    CHECK(vl2h_parse_size("64M", &sz) == 0 && sz == 64u << 20, "64M");
    CHECK(vl2h_parse_size("1k", &sz) == 0 && sz == 1024, "1k");
    CHECK(vl2h_parse_size("2GiB", &sz) == 0 && sz == 2ull << 30, "2GiB");
    CHECK(vl2h_parse_size("4096", &sz) == 0 && sz == 4096, "4096");
    CHECK(vl2h_parse_size("0", &sz) < 0, "0");
    CHECK(vl2h_parse_size("-1", &sz) < 0, "-1");
    CHECK(vl2h_parse_size("12Q", &sz) < 0, "12Q");

    vl2h_rfc3339(0.5, ts, sizeof(ts));
    CHECK(!strcmp(ts, "1970-01-01T00:00:00.500000000Z"), "rfc3339 '%s'", ts);
    vl2h_rfc3339(1700000000.0, ts, sizeof(ts));
    CHECK(!strcmp(ts, "2023-11-14T22:13:20.000000000Z"), "rfc3339 '%s'", ts);

    if (failures)
        fprintf(stderr, "%d check(s) failed\n", failures);
    else
        printf("http-unit: all checks passed\n");
    return failures ? 1 : 0;
}

/* test-float.c - plugins/vl2-float.h against the definitions of the formats:
 * every one of the 65536 f16 and bf16 bit patterns is decoded independently
 * with ldexp from sign, exponent and mantissa (IEEE 754 binary16; bfloat16 =
 * the high half of binary32), and a few values are pinned by their known
 * encodings. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "../common/check.h"
#include "vl2-float.h"

/* value of a float format with @eb exponent bits (bias 2^(eb-1) - 1) and
 * @mb mantissa bits, from its fields; NaN for any NaN */
static double decode(uint32_t bits, int eb, int mb)
{
    const uint32_t man = bits & ((1u << mb) - 1), e = (bits >> mb) & ((1u << eb) - 1);
    const int bias = (1 << (eb - 1)) - 1, sign = (bits >> (eb + mb)) & 1;
    double v;

    if (e == (1u << eb) - 1)
        v = man ? NAN : INFINITY;
    else if (e == 0)
        v = ldexp((double)man, 1 - bias - mb);
    else
        v = ldexp(1.0 + ldexp((double)man, -mb), (int)e - bias);
    return sign ? -v : v;
}

static int same(float got, double want)
{
    if (isnan(want))
        return isnan(got);
    /* -0 and +0 apart */
    return (double)got == want && !signbit(got) == !signbit(want);
}

static void test_all_patterns(void)
{
    int bad_f16 = 0, bad_bf16 = 0;

    for (uint32_t h = 0; h < 65536; h++) {
        bad_f16 += !same(vl2_f16_to_f32((uint16_t)h), decode(h, 5, 10));
        bad_bf16 += !same(vl2_bf16_to_f32((uint16_t)h), decode(h, 8, 7));
    }
    CHECK_MSG(bad_f16 == 0, "%d f16 patterns decoded wrong", bad_f16);
    CHECK_MSG(bad_bf16 == 0, "%d bf16 patterns decoded wrong", bad_bf16);
}

static void test_known(void)
{
    float nan_payload;
    uint32_t u;

    CHECK(vl2_f16_to_f32(0x3c00) == 1.0f);
    CHECK(vl2_f16_to_f32(0xc000) == -2.0f);
    CHECK(vl2_f16_to_f32(0x7bff) == 65504.0f);             /* largest finite */
    CHECK(vl2_f16_to_f32(0x0001) == 5.9604644775390625e-8f); /* smallest subnormal, 2^-24 */
    CHECK(vl2_f16_to_f32(0x03ff) == 6.0975551605224609375e-5f); /* largest subnormal */
    CHECK(vl2_f16_to_f32(0x0400) == 6.103515625e-5f);       /* smallest normal, 2^-14 */
    CHECK(vl2_f16_to_f32(0xfc00) == -INFINITY);
    CHECK(signbit(vl2_f16_to_f32(0x8000)) && vl2_f16_to_f32(0x8000) == 0.0f);
    CHECK(signbit(vl2_f16_to_f32(0x8001)) && vl2_f16_to_f32(0x8001) == -5.9604644775390625e-8f);
    CHECK(vl2_bf16_to_f32(0x3f80) == 1.0f);
    CHECK(vl2_bf16_to_f32(0x4049) == 3.140625f);
    CHECK(vl2_bf16_to_f32(0xff80) == -INFINITY);
    CHECK(vl2_bf16_to_f32(0x0001) == 9.18354961579912115600575419705e-41f); /* 2^-133 */
    /* a NaN keeps its payload: 0x7e01 -> 0x7fc02000 */
    nan_payload = vl2_f16_to_f32(0x7e01);
    memcpy(&u, &nan_payload, sizeof(u));
    CHECK_MSG(u == 0x7fc02000u, "f16 NaN 0x7e01 -> 0x%08x", u);
}

int main(void)
{
    RUN(test_all_patterns);
    RUN(test_known);
    return check_failures ? 1 : 0;
}

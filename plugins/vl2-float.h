/* vl2-float.h - the 16-bit float formats of checkpoints, bfloat16 and IEEE
 * binary16 ("f16"), to float32.
 *
 * Header-only (static inline), like vl2-status.h: the runtime
 * (daemon/model/model.c) and the plugins (plugins/cpu/cpu-impl.h) include the
 * same code, and a plugin links nothing of the daemon.  Exact: every bf16 and
 * f16 value, subnormals, infinities and NaNs included, is representable in
 * float32. */
#ifndef VL2_FLOAT_H
#define VL2_FLOAT_H

#include <stdint.h>
#include <string.h>

/* bfloat16 is the high half of a float32. */
static inline float vl2_bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;

    memcpy(&f, &u, sizeof(f));
    return f;
}

/* binary16: 1 sign bit, 5 exponent bits (bias 15), 10 mantissa bits. */
static inline float vl2_f16_to_f32(uint16_t h)
{
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu,
                   man = h & 0x3ffu;
    uint32_t u;
    float f;

    if (e == 0) {
        /* zero or subnormal: man * 2^-24, exact in float32 */
        f = (float)man * 5.9604644775390625e-8f;
        memcpy(&u, &f, sizeof(u));
        u |= sign;
    } else if (e == 31) {
        u = sign | 0x7f800000u | (man << 13);          /* infinity, NaN (payload kept) */
    } else {
        u = sign | ((e + 112) << 23) | (man << 13);    /* rebias 15 -> 127 */
    }
    memcpy(&f, &u, sizeof(f));
    return f;
}

#endif /* VL2_FLOAT_H */

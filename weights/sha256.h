/* sha256.h - SHA-256 (FIPS 180-4), internal to weights/: per-tensor seeds of
 * vl2-mkweights and checkpoint hashes in tests. */
#ifndef VL2_WEIGHTS_SHA256_H
#define VL2_WEIGHTS_SHA256_H

#include <stddef.h>
#include <stdint.h>

struct vl2_sha256 {
    uint32_t h[8];
    uint64_t n_bytes;      /* total fed so far */
    uint8_t  buf[64];
    size_t   n_buf;        /* bytes pending in buf */
};

void vl2__sha256_init(struct vl2_sha256 *s);
void vl2__sha256_update(struct vl2_sha256 *s, const void *p, size_t n);
void vl2__sha256_final(struct vl2_sha256 *s, uint8_t out[32]);
/* One-shot digest of @n bytes at @p. */
void vl2__sha256(const void *p, size_t n, uint8_t out[32]);
/* Lower-case hex of a digest into @hex (65 bytes, NUL-terminated). */
void vl2__sha256_hex(const uint8_t digest[32], char hex[65]);

#endif

/* gen.h - random checkpoints in the official layout (vl2-mkweights).
 *
 * Weights follow the golden generator (golden/tools/make_ckpt.py): element k
 * of tensor NAME with preset seed S is
 *     seed64 = first 8 bytes (little endian) of sha256("S:NAME")
 *     r      = splitmix64(k + seed64)
 *     u      = ((r >> 40) - 2^23) / 2^23                    (exact float32)
 *     x      = float32(u * scale) + offset                  (two float32 roundings)
 *     lm_head rows with row % 50 == 7: x *= 4
 *     stored as bf16, rounded to nearest even
 * with (std, offset) per tensor kind and scale = float32(std * sqrt(3)).
 * The micro-* presets reproduce the golden checkpoints byte for byte. */
#ifndef VL2_WEIGHTS_GEN_H
#define VL2_WEIGHTS_GEN_H

#include <stddef.h>
#include <stdint.h>

#include "weights.h"

struct vl2_gen_opts {
    const char *preset;          /* preset name */
    const char *out_dir;         /* created if absent */
    int         has_seed;        /* 0: the preset's seed */
    long long   seed;
    const char *tokenizer_dir;   /* NULL: no tokenizer files copied */
    uint64_t    shard_size;      /* 0: the preset's default (single file or 5 GB shards) */
    int         config_only;     /* write config.json + processor_config.json only */
    int         quiet;
};

/* Presets: names in order, NULL-terminated, and a one-line description. */
const char *const *vl2_gen_preset_names(void);
const char *vl2_gen_preset_about(const char *name);

/* config.json text of a preset (malloc'd, Python json.dump(indent=2) format
 * plus a final newline), NULL if the preset is unknown or out of memory. */
char *vl2_gen_config_text(const char *preset);

/* Write the checkpoint.  Returns 0 or a negative status with err set.
 * *ret_sha256 (65 bytes) receives the hex digest of model.safetensors when
 * the output is a single file, "" otherwise; it may be NULL. */
int vl2_gen_write(const struct vl2_gen_opts *o, char *ret_sha256, struct vl2_err *err);

/* bf16 bits of elements [k0, k0 + n) of a tensor (exposed for tests). */
void vl2_gen_fill(uint16_t *out, const struct vl2_tensor_spec *t, long long seed, uint64_t k0,
                  size_t n);

#endif

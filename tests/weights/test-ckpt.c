/* test-ckpt.c - a micro checkpoint written by vl2-mkweights is the golden
 * one: the same sha256 as golden/<preset>/model.safetensors.sha256 (so the
 * same header and bit-identical tensor data), the same config.json and
 * processor_config.json bytes; it opens and validates; value ranges follow
 * the generator's documented init.  With a second directory holding the
 * same preset written as shards, every tensor must be byte-identical.
 *
 * usage: test-ckpt CKPT_DIR GOLDEN_PRESET_DIR [SHARDED_DIR] */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sha256.h"
#include "vl2-backend.h"
#include "weights.h"
#include "weights-impl.h"
#include "../common/check.h"

static int read_file(const char *dir, const char *name, char **buf, size_t *len)
{
    char path[4096];

    snprintf(path, sizeof(path), "%s/%s", dir, name);
    return vl2_file_read(path, 1u << 30, "weights", buf, len, NULL);
}

static void same_file(const char *a, const char *b, const char *name)
{
    char *x = NULL, *y = NULL;
    size_t nx = 0, ny = 0;

    CHECK_EQ_INT(read_file(a, name, &x, &nx), 0);
    CHECK_EQ_INT(read_file(b, name, &y, &ny), 0);
    if (x && y && (nx != ny || memcmp(x, y, nx))) {
        fprintf(stderr, "%s differs from the golden one\n", name);
        check_failures++;
    }
    free(x);
    free(y);
}

static float bf16(const void *p, size_t i)
{
    uint16_t h;
    uint32_t u;
    float f;

    memcpy(&h, (const char *) p + 2 * i, 2);
    u = (uint32_t) h << 16;
    memcpy(&f, &u, 4);
    return f;
}

static float row_max(const struct vl2_st_tensor *t, int64_t row)
{
    float m = 0;
    int64_t i;

    for (i = 0; i < t->shape[1]; i++)
        m = fmaxf(m, fabsf(bf16(t->data, (size_t) (row * t->shape[1] + i))));
    return m;
}

int main(int argc, char **argv)
{
    struct vl2_model_config cfg;
    struct vl2_weights *w = NULL, *ws = NULL;
    struct vl2_tensor_spec *v = NULL;
    struct vl2_err err = { 0 };
    const struct vl2_st_tensor *t;
    char *text = NULL, hex[65];
    uint8_t dig[32];
    size_t len, n = 0, i;

    if (argc < 3 || argc > 4) {
        fprintf(stderr, "usage: test-ckpt CKPT_DIR GOLDEN_PRESET_DIR [SHARDED_DIR]\n");
        return 2;
    }

    /* the file hash, computed over the mapping */
    CHECK_EQ_INT(vl2_weights_open(&w, argv[1], &err), 0);
    if (!w) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    CHECK_EQ_INT(vl2_weights_file_count(w), 1);
    {
        /* the whole file, read (not mapped), hashed; the mapping must show
         * the same bytes where tensor 0 lives (offset 0 of the data area) */
        const struct vl2_st_tensor *first = vl2_weights_at(w, 0);
        uint64_t hl = 0;
        char *f = NULL;
        size_t flen = 0;
        int k;

        hex[0] = '\0';
        CHECK_EQ_INT(read_file(argv[1], "model.safetensors", &f, &flen), 0);
        CHECK_EQ_INT(flen, vl2_weights_mapped_size(w));
        if (f && flen > 8) {
            for (k = 0; k < 8; k++)
                hl |= (uint64_t) (uint8_t) f[k] << (8 * k);
            CHECK(hl + 8 + first->size <= flen &&
                  memcmp(first->data, f + 8 + hl, first->size) == 0);
            vl2__sha256(f, flen, dig);
            vl2__sha256_hex(dig, hex);
        }
        free(f);
    }
    CHECK_EQ_INT(read_file(argv[2], "model.safetensors.sha256", &text, &len), 0);
    if (text) {
        if (len < 64 || memcmp(text, hex, 64) != 0) {
            fprintf(stderr, "sha256 %s, golden %.64s\n", hex, text);
            check_failures++;
        }
        free(text);
    }
    same_file(argv[1], argv[2], "config.json");
    same_file(argv[1], argv[2], "processor_config.json");
    {
        char p[4096];
        snprintf(p, sizeof(p), "%s/tokenizer.json", argv[1]);
        CHECK(access(p, R_OK) == 0);
        snprintf(p, sizeof(p), "%s/tokenizer_config.json", argv[1]);
        CHECK(access(p, R_OK) == 0);
    }

    CHECK_EQ_INT(vl2_config_load(&cfg, argv[1], &err), 0);
    CHECK_EQ_INT(vl2_model_validate(&cfg, w, &err), 0);
    CHECK(vl2_model_tensor_specs(&cfg, &v, &n, &err) > 0);
    CHECK_EQ_INT(vl2_weights_count(w), n);

    /* value ranges of the documented init (golden README / make_ckpt.py) */
    t = vl2_weights_find(w, "vision.norm.weight");       /* 1 + 0.1*sqrt(3)*u */
    CHECK(t != NULL);
    for (i = 0; t && i < (size_t) t->shape[0]; i++) {
        float x = bf16(t->data, i);
        CHECK(x >= 1.0f - 0.1733f && x <= 1.0f + 0.1733f);
    }
    t = vl2_weights_find(w, "language.lm_head.weight");  /* rows % 50 == 7 are x4 */
    CHECK(t != NULL);
    if (t) {
        float m6 = row_max(t, 6), m7 = row_max(t, 7), m57 = row_max(t, 57);
        float lim = 4.0f * sqrtf(3.0f) / sqrtf((float) t->shape[1]);
        CHECK(m6 > 0.5f * lim && m6 <= lim * 1.01f);
        CHECK(m7 > 3.0f * m6 && m7 <= 4.0f * lim * 1.01f);
        CHECK(m57 > 3.0f * m6);
    }

    if (argc == 4) {
        CHECK_EQ_INT(vl2_weights_open(&ws, argv[3], &err), 0);
        if (ws) {
            CHECK(vl2_weights_file_count(ws) > 1);
            CHECK_EQ_INT(vl2_weights_count(ws), vl2_weights_count(w));
            CHECK_EQ_INT(vl2_model_validate(&cfg, ws, &err), 0);
            for (i = 0; i < vl2_weights_count(w); i++) {
                const struct vl2_st_tensor *a = vl2_weights_at(w, i);
                const struct vl2_st_tensor *b = vl2_weights_find(ws, a->name);
                CHECK(b && b->size == a->size && b->dtype == a->dtype && b->ndim == a->ndim);
                if (b && b->size == a->size && memcmp(a->data, b->data, a->size)) {
                    fprintf(stderr, "tensor '%s' differs in the sharded copy\n", a->name);
                    check_failures++;
                }
            }
            vl2_weights_close(ws);
        }
    }
    free(v);
    vl2_weights_close(w);
    return check_report("test-ckpt");
}

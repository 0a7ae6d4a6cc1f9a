/* test-safetensors.c - safetensors files and shard indexes, valid and
 * malformed; model validation against a config (wrong shape, missing and
 * unexpected tensors).  Every malformed case must give its own clear error
 * (the sanitizer build checks that nothing reads out of bounds).
 *
 * usage: test-safetensors GOLDEN_DIR   (config.json of micro-mha is used) */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "vl2-backend.h"
#include "weights.h"
#include "../common/check.h"

static char tmpdir[] = "/tmp/vl2-test-st-XXXXXX";

/* A file image: u64 length, the header text as given, then @data_size
 * bytes of data (byte i = i & 0xff). */
static uint8_t *image(const char *header, size_t data_size, size_t *ret_size)
{
    size_t hl = strlen(header), n = 8 + hl + data_size, i;
    uint8_t *b = malloc(n ? n : 1);

    for (i = 0; i < 8; i++)
        b[i] = (uint8_t) ((uint64_t) hl >> (8 * i));
    memcpy(b + 8, header, hl);
    for (i = 0; i < data_size; i++)
        b[8 + hl + i] = (uint8_t) i;
    *ret_size = n;
    return b;
}

static void write_file(const char *name, const void *p, size_t n)
{
    char path[512];
    FILE *f;

    snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
    f = fopen(path, "wb");
    CHECK(f != NULL);
    if (!f)
        return;
    CHECK(fwrite(p, 1, n, f) == n);
    fclose(f);
}

static void write_st(const char *name, const char *header, size_t data_size)
{
    size_t n;
    uint8_t *b = image(header, data_size, &n);

    write_file(name, b, n);
    free(b);
}

static void remove_file(const char *name)
{
    char path[512];

    snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
    (void) unlink(path);
}

/* Check both the in-memory validator and vl2_weights_open_file on the same
 * image: the same error code and message parts. */
#define BAD(header, data_size, code, ...)                                                    \
    do {                                                                                     \
        size_t n_;                                                                           \
        uint8_t *b_ = image(header, data_size, &n_);                                         \
        struct vl2_err e_ = { 0 };                                                           \
        struct vl2_weights *w_ = NULL;                                                       \
        char p_[512];                                                                        \
        CHECK_ERR(vl2_safetensors_check(b_, n_, &e_), &e_, code, __VA_ARGS__);               \
        write_file("bad.safetensors", b_, n_);                                               \
        snprintf(p_, sizeof(p_), "%s/bad.safetensors", tmpdir);                              \
        vl2_err_clear(&e_);                                                                  \
        CHECK_ERR(vl2_weights_open_file(&w_, p_, &e_), &e_, code, __VA_ARGS__);              \
        CHECK(w_ == NULL);                                                                   \
        free(b_);                                                                            \
    } while (0)

static void test_valid(void)
{
    const char *h = "{\"__metadata__\":{\"format\":\"pt\"},"
                    "\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
                    "\"b.weight\":{\"dtype\":\"BF16\",\"shape\":[4],\"data_offsets\":[24,32]},"
                    "\"c\":{\"dtype\":\"F16\",\"shape\":[],\"data_offsets\":[32,34]},"
                    "\"empty\":{\"dtype\":\"I32\",\"shape\":[0,5],\"data_offsets\":[34,34]}}  ";
    const struct vl2_st_tensor *t;
    struct vl2_weights *w = NULL;
    struct vl2_err err = { 0 };
    size_t n;
    uint8_t *b = image(h, 34, &n);
    char path[512];

    CHECK_EQ_INT(vl2_safetensors_check(b, n, &err), 0);
    write_file("ok.safetensors", b, n);
    snprintf(path, sizeof(path), "%s/ok.safetensors", tmpdir);
    CHECK_EQ_INT(vl2_weights_open_file(&w, path, &err), 0);
    if (!w) {
        free(b);
        return;
    }
    CHECK_EQ_INT(vl2_weights_count(w), 4);
    CHECK_EQ_INT(vl2_weights_mapped_size(w), n);
    CHECK_EQ_INT(vl2_weights_file_count(w), 1);
    t = vl2_weights_find(w, "a");
    CHECK(t && t->dtype == VL2_DTYPE_F32 && t->ndim == 2 && t->shape[0] == 2 && t->shape[1] == 3);
    CHECK(t && t->size == 24 && t->file == 0);
    CHECK(t && ((const uint8_t *) t->data)[0] == 0 && ((const uint8_t *) t->data)[23] == 23);
    t = vl2_weights_find(w, "b.weight");
    CHECK(t && t->dtype == VL2_DTYPE_BF16 && t->size == 8);
    CHECK(t && ((const uint8_t *) t->data)[0] == 24);
    CHECK(t && (const uint8_t *) t->data - (const uint8_t *) vl2_weights_find(w, "a")->data == 24);
    t = vl2_weights_find(w, "c");
    CHECK(t && t->ndim == 0 && t->size == 2 && t->dtype == VL2_DTYPE_F16);
    t = vl2_weights_find(w, "empty");
    CHECK(t && t->size == 0 && t->dtype == VL2_DTYPE_I32);
    CHECK(vl2_weights_find(w, "nope") == NULL);
    CHECK(vl2_weights_find(w, "") == NULL);
    CHECK(vl2_weights_at(w, 4) == NULL);
    CHECK(vl2_weights_at(w, 0) != NULL);
    vl2_weights_close(w);
    free(b);

    /* a directory with model.safetensors */
    write_file("model.safetensors", b = image(h, 34, &n), n);
    free(b);
    w = NULL;
    CHECK_EQ_INT(vl2_weights_open(&w, tmpdir, &err), 0);
    CHECK(w && vl2_weights_count(w) == 4);
    vl2_weights_close(w);
    remove_file("model.safetensors");
    vl2_weights_close(NULL);
}

static void test_malformed(void)
{
    struct vl2_err err = { 0 };
    struct vl2_weights *w = NULL;
    char path[512];
    uint8_t b[16] = { 0 };

    /* truncated: shorter than the length field; empty */
    CHECK_ERR(vl2_safetensors_check(b, 5, &err), &err, VL2_EFORMAT, "5 bytes", "too short");
    write_file("short.safetensors", b, 5);
    snprintf(path, sizeof(path), "%s/short.safetensors", tmpdir);
    vl2_err_clear(&err);
    CHECK_ERR(vl2_weights_open_file(&w, path, &err), &err, VL2_EFORMAT, "short.safetensors",
              "too short");
    write_file("empty.safetensors", b, 0);
    snprintf(path, sizeof(path), "%s/empty.safetensors", tmpdir);
    vl2_err_clear(&err);
    CHECK_ERR(vl2_weights_open_file(&w, path, &err), &err, VL2_EFORMAT, "0 bytes");
    snprintf(path, sizeof(path), "%s/absent.safetensors", tmpdir);
    vl2_err_clear(&err);
    CHECK_ERR(vl2_weights_open_file(&w, path, &err), &err, VL2_ENOTFOUND, "absent.safetensors");

    /* header length beyond the file: huge, and by one byte */
    b[0] = 0xff; b[1] = 0xff; b[2] = 0xff; b[7] = 0x7f;
    CHECK_ERR(vl2_safetensors_check(b, 16, &err), &err, VL2_EFORMAT, "goes past the end");
    b[0] = 9; b[1] = b[2] = b[7] = 0;
    memcpy(b + 8, "{}      ", 8);
    CHECK_ERR(vl2_safetensors_check(b, 16, &err), &err, VL2_EFORMAT, "header length 9",
              "16 bytes");
    b[0] = 8;
    CHECK_EQ_INT(vl2_safetensors_check(b, 16, &err), 0);   /* "{}" + padding: no tensors */

    /* a file truncated inside its data: the last tensor ends past the end */
    BAD("{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 10, VL2_EFORMAT,
        "tensor 'a'", "data ends at 16", "(10 bytes)");
    /* header that is not JSON */
    BAD("{\"a\": {\"dtype\": ", 0, VL2_EFORMAT, "not valid JSON");
    BAD("hello world", 0, VL2_EFORMAT, "not valid JSON");
    BAD("[1,2,3]", 0, VL2_EFORMAT, "not a JSON object");
    BAD("{} trailing", 0, VL2_EFORMAT, "after its JSON");
    BAD("{\"a\":1}", 0, VL2_EFORMAT, "tensor 'a'", "not an object");
    {   /* a NUL byte inside the header */
        uint8_t z[24] = { 8, 0, 0, 0, 0, 0, 0, 0, '{', '}', 0, ' ', ' ', ' ', ' ', ' ' };
        CHECK_ERR(vl2_safetensors_check(z, 16, &err), &err, VL2_EFORMAT, "NUL");
    }
    /* dtypes */
    BAD("{\"w\":{\"dtype\":\"Q7\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1, VL2_EFORMAT,
        "tensor 'w'", "unknown dtype 'Q7'");
    BAD("{\"w\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,8]}}", 8, VL2_EUNSUPPORTED,
        "tensor 'w'", "'F64'", "not supported");
    BAD("{\"w\":{\"dtype\":5,\"shape\":[1],\"data_offsets\":[0,8]}}", 8, VL2_EFORMAT,
        "tensor 'w'", "dtype");
    BAD("{\"w\":{\"shape\":[1],\"data_offsets\":[0,8]}}", 8, VL2_EFORMAT, "tensor 'w'", "dtype");
    /* overlapping and out-of-range offsets */
    BAD("{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
        "\"y\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12, VL2_EFORMAT,
        "'x' [0, 8)", "'y' [4, 12)", "overlap");
    BAD("{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]},"
        "\"y\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 16, VL2_EFORMAT,
        "overlap");
    BAD("{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[100,108]}}", 16, VL2_EFORMAT,
        "tensor 'x'", "data ends at 108", "(16 bytes)");
    BAD("{\"x\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,4]}}", 16, VL2_EFORMAT,
        "tensor 'x'", "end before they begin");
    BAD("{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[-8,0]}}", 16, VL2_EFORMAT,
        "tensor 'x'", "data_offsets");
    BAD("{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]}}", 16, VL2_EFORMAT,
        "tensor 'x'", "data_offsets");
    BAD("{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0, 18446744073709551615]}}",
        16, VL2_EFORMAT, "tensor 'x'", "data_offsets");
    /* shape / length mismatch */
    BAD("{\"x\":{\"dtype\":\"BF16\",\"shape\":[2,2],\"data_offsets\":[0,6]}}", 16, VL2_EFORMAT,
        "tensor 'x'", "shape [2, 2] of BF16 needs 8 bytes", "give 6");
    BAD("{\"x\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4294967296],"
        "\"data_offsets\":[0,16]}}", 16, VL2_EFORMAT, "tensor 'x'", "needs");
    BAD("{\"x\":{\"dtype\":\"F32\",\"shape\":[2.5],\"data_offsets\":[0,8]}}", 16, VL2_EFORMAT,
        "tensor 'x'", "shape entry 0");
    BAD("{\"x\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,8]}}", 16, VL2_EFORMAT,
        "tensor 'x'", "shape entry 0");
    BAD("{\"x\":{\"dtype\":\"F32\",\"shape\":2,\"data_offsets\":[0,8]}}", 16, VL2_EFORMAT,
        "tensor 'x'", "shape");
    BAD("{\"x\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 16,
        VL2_EFORMAT, "tensor 'x'", "8 dimensions");
    /* names and metadata */
    BAD("{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
        "\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 16, VL2_EFORMAT,
        "tensor 'x' appears twice");
    BAD("{\"\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 16, VL2_EFORMAT,
        "empty");
    BAD("{\"__metadata__\":[1]}", 0, VL2_EFORMAT, "__metadata__");
    BAD("{\"__metadata__\":{\"k\":1}}", 0, VL2_EFORMAT, "__metadata__", "'k'");
}

/* Shards listed in model.safetensors.index.json. */
static void test_index(void)
{
    const char *h1 = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                     "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}";
    const char *h2 = "{\"c\":{\"dtype\":\"BF16\",\"shape\":[3],\"data_offsets\":[0,6]}}";
    const char *idx = "{\"metadata\": {\"total_size\": 18}, \"weight_map\": {"
                      "\"a\": \"m-1.safetensors\", \"b\": \"m-1.safetensors\","
                      " \"c\": \"m-2.safetensors\"}}";
    const struct vl2_st_tensor *t;
    struct vl2_weights *w = NULL;
    struct vl2_err err = { 0 };
    char s[512];

    write_st("m-1.safetensors", h1, 12);
    write_st("m-2.safetensors", h2, 6);
    write_file("model.safetensors.index.json", idx, strlen(idx));
    CHECK_EQ_INT(vl2_weights_open(&w, tmpdir, &err), 0);
    if (w) {
        CHECK_EQ_INT(vl2_weights_count(w), 3);
        CHECK_EQ_INT(vl2_weights_file_count(w), 2);
        t = vl2_weights_find(w, "c");
        CHECK(t && t->file == 1 && t->size == 6 && ((const uint8_t *) t->data)[5] == 5);
        CHECK(t && strstr(vl2_weights_file_path(w, (size_t) t->file), "m-2.safetensors"));
        t = vl2_weights_find(w, "b");
        CHECK(t && t->file == 0 && ((const uint8_t *) t->data)[0] == 8);
        vl2_weights_close(w);
        w = NULL;
    }

    /* a shard listed in the index but missing */
    remove_file("m-2.safetensors");
    vl2_err_clear(&err);
    CHECK_ERR(vl2_weights_open(&w, tmpdir, &err), &err, VL2_ENOTFOUND, "shard 'm-2.safetensors'",
              "missing", "model.safetensors.index.json");
    CHECK(w == NULL);
    write_st("m-2.safetensors", h2, 6);

    /* the index names a tensor the shard lacks */
    snprintf(s, sizeof(s), "{\"weight_map\": {\"a\": \"m-1.safetensors\", \"b\": "
             "\"m-1.safetensors\", \"c\": \"m-2.safetensors\", \"d\": \"m-2.safetensors\"}}");
    write_file("model.safetensors.index.json", s, strlen(s));
    vl2_err_clear(&err);
    CHECK_ERR(vl2_weights_open(&w, tmpdir, &err), &err, VL2_EFORMAT, "tensor 'd'",
              "not in shard 'm-2.safetensors'");
    /* a tensor of a shard that the index does not list */
    snprintf(s, sizeof(s), "{\"weight_map\": {\"a\": \"m-1.safetensors\", \"c\": "
             "\"m-2.safetensors\"}}");
    write_file("model.safetensors.index.json", s, strlen(s));
    vl2_err_clear(&err);
    CHECK_ERR(vl2_weights_open(&w, tmpdir, &err), &err, VL2_EFORMAT, "tensor 'b'",
              "not listed");
    /* listed under the wrong shard */
    snprintf(s, sizeof(s), "{\"weight_map\": {\"a\": \"m-1.safetensors\", \"b\": "
             "\"m-1.safetensors\", \"c\": \"m-1.safetensors\", \"x\": \"m-2.safetensors\"}}");
    write_file("model.safetensors.index.json", s, strlen(s));
    vl2_err_clear(&err);
    CHECK_ERR(vl2_weights_open(&w, tmpdir, &err), &err, VL2_EFORMAT, "tensor 'c'");
    /* the same tensor in two shards */
    write_st("m-3.safetensors", h2, 6);
    snprintf(s, sizeof(s), "{\"weight_map\": {\"a\": \"m-1.safetensors\", \"b\": "
             "\"m-1.safetensors\", \"c\": \"m-2.safetensors\", \"c2\": \"m-3.safetensors\"}}");
    write_file("model.safetensors.index.json", s, strlen(s));
    vl2_err_clear(&err);
    CHECK_ERR(vl2_weights_open(&w, tmpdir, &err), &err, VL2_EFORMAT, "tensor 'c' is in both");
    remove_file("m-3.safetensors");
    /* path components in shard names; malformed index */
    snprintf(s, sizeof(s), "{\"weight_map\": {\"a\": \"../m-1.safetensors\"}}");
    write_file("model.safetensors.index.json", s, strlen(s));
    vl2_err_clear(&err);
    CHECK_ERR(vl2_weights_open(&w, tmpdir, &err), &err, VL2_EFORMAT, "'a'",
              "not a plain file name");
    snprintf(s, sizeof(s), "{\"weight_map\": {\"a\": 3}}");
    write_file("model.safetensors.index.json", s, strlen(s));
    vl2_err_clear(&err);
    CHECK_ERR(vl2_weights_open(&w, tmpdir, &err), &err, VL2_EFORMAT, "not a plain file name");
    snprintf(s, sizeof(s), "{\"metadata\": {}}");
    write_file("model.safetensors.index.json", s, strlen(s));
    vl2_err_clear(&err);
    CHECK_ERR(vl2_weights_open(&w, tmpdir, &err), &err, VL2_EFORMAT, "weight_map");
    snprintf(s, sizeof(s), "{\"weight_map\": ");
    write_file("model.safetensors.index.json", s, strlen(s));
    vl2_err_clear(&err);
    CHECK_ERR(vl2_weights_open(&w, tmpdir, &err), &err, VL2_EFORMAT, "not a JSON object");
    /* a malformed shard: its own error, naming the shard */
    write_st("m-2.safetensors", "{\"c\":{\"dtype\":\"BF16\",\"shape\":[3],\"data_offsets\":[0,8]}}",
             8);
    write_file("model.safetensors.index.json", idx, strlen(idx));
    vl2_err_clear(&err);
    CHECK_ERR(vl2_weights_open(&w, tmpdir, &err), &err, VL2_EFORMAT, "m-2.safetensors",
              "tensor 'c'", "needs 6 bytes");
    remove_file("model.safetensors.index.json");
    remove_file("m-1.safetensors");
    remove_file("m-2.safetensors");

    /* neither an index nor model.safetensors */
    vl2_err_clear(&err);
    CHECK_ERR(vl2_weights_open(&w, tmpdir, &err), &err, VL2_ENOTFOUND, "neither");
}

/* A header for every tensor the config implies (zero data, sparse file),
 * with one tensor changed by @mode: 0 none, 1 wrong shape, 2 missing,
 * 3 extra, 4 I32 dtype. */
static void write_model(const struct vl2_model_config *c, int mode, char *ret_name)
{
    struct vl2_tensor_spec *v;
    size_t n, i, len = 0, cap = 1 << 20;
    char *h = malloc(cap);
    uint64_t off = 0;
    char path[512];
    int fd, j;

    CHECK(vl2_model_tensor_specs(c, &v, &n, NULL) > 0);
    len += (size_t) snprintf(h + len, cap - len, "{");
    for (i = 0; i < n; i++) {
        int64_t ne = 1;
        const char *dt = "BF16";
        int64_t shape0 = v[i].shape[0];
        if (mode == 2 && i == n / 2) {
            snprintf(ret_name, VL2_TENSOR_NAME_MAX, "%s", v[i].name);
            continue;
        }
        if (mode == 1 && i == n / 3) {
            shape0 += 1;
            snprintf(ret_name, VL2_TENSOR_NAME_MAX, "%s", v[i].name);
        }
        if (mode == 4 && i == n / 4) {
            dt = "I32";
            snprintf(ret_name, VL2_TENSOR_NAME_MAX, "%s", v[i].name);
        }
        len += (size_t) snprintf(h + len, cap - len, "%s\"%s\":{\"dtype\":\"%s\",\"shape\":[",
                                 len > 1 ? "," : "", v[i].name, dt);
        for (j = 0; j < v[i].ndim; j++) {
            int64_t d = j == 0 ? shape0 : v[i].shape[j];
            ne *= d;
            len += (size_t) snprintf(h + len, cap - len, "%s%lld", j ? "," : "", (long long) d);
        }
        ne *= !strcmp(dt, "I32") ? 4 : 2;
        len += (size_t) snprintf(h + len, cap - len, "],\"data_offsets\":[%llu,%llu]}",
                                 (unsigned long long) off, (unsigned long long) (off + ne));
        off += (uint64_t) ne;
    }
    if (mode == 3) {
        len += (size_t) snprintf(h + len, cap - len, ",\"vision.extra.weight\":{\"dtype\":\"BF16\","
                                 "\"shape\":[2],\"data_offsets\":[%llu,%llu]}",
                                 (unsigned long long) off, (unsigned long long) (off + 4));
        off += 4;
        snprintf(ret_name, VL2_TENSOR_NAME_MAX, "vision.extra.weight");
    }
    len += (size_t) snprintf(h + len, cap - len, "}");
    snprintf(path, sizeof(path), "%s/model.safetensors", tmpdir);
    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    CHECK(fd >= 0);
    {
        uint8_t l8[8];
        for (j = 0; j < 8; j++)
            l8[j] = (uint8_t) ((uint64_t) len >> (8 * j));
        CHECK(write(fd, l8, 8) == 8);
        CHECK(write(fd, h, len) == (ssize_t) len);
        CHECK(ftruncate(fd, (off_t) (8 + len + off)) == 0);
    }
    close(fd);
    free(h);
    free(v);
}

static void test_validate(const char *golden)
{
    struct vl2_model_config c, mla;
    struct vl2_weights *w = NULL;
    struct vl2_err err = { 0 };
    char name[VL2_TENSOR_NAME_MAX] = "";
    char dir[4096];
    int mode;

    snprintf(dir, sizeof(dir), "%s/micro-mha", golden);
    CHECK_EQ_INT(vl2_config_load(&c, dir, &err), 0);
    snprintf(dir, sizeof(dir), "%s/micro-mla", golden);
    CHECK_EQ_INT(vl2_config_load(&mla, dir, &err), 0);

    for (mode = 0; mode <= 4; mode++) {
        write_model(&c, mode, name);
        CHECK_EQ_INT(vl2_weights_open(&w, tmpdir, &err), 0);
        if (!w)
            continue;
        vl2_err_clear(&err);
        if (mode == 0) {
            CHECK_EQ_INT(vl2_model_validate(&c, w, &err), 0);
            /* the MHA checkpoint against the MLA config: missing and unexpected listed */
            CHECK_ERR(vl2_model_validate(&mla, w, &err), &err, VL2_EFORMAT, "9 missing",
                      "6 unexpected", "3 wrong", "missing 'language.model.layers.0.self_attn."
                      "kv_a_proj_with_mqa.weight'", "unexpected 'language.model.layers.0."
                      "self_attn.k_proj.weight'", "q_proj.weight' is BF16 [64, 64], expected "
                      "[96, 64]");
        } else if (mode == 1) {
            CHECK_ERR(vl2_model_validate(&c, w, &err), &err, VL2_EFORMAT, name, "expected [");
        } else if (mode == 2) {
            CHECK_ERR(vl2_model_validate(&c, w, &err), &err, VL2_EFORMAT, "1 missing, 0 unexpected, 0 wrong",
                      "missing '", name);
        } else if (mode == 3) {
            CHECK_ERR(vl2_model_validate(&c, w, &err), &err, VL2_EFORMAT, "0 missing, 1 unexpected",
                      "unexpected 'vision.extra.weight'");
        } else {
            CHECK_ERR(vl2_model_validate(&c, w, &err), &err, VL2_EFORMAT, name, "I32");
        }
        vl2_weights_close(w);
        w = NULL;
    }
    remove_file("model.safetensors");
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: test-safetensors GOLDEN_DIR\n");
        return 2;
    }
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    test_valid();
    test_malformed();
    test_index();
    test_validate(argv[1]);
    remove_file("ok.safetensors");
    remove_file("bad.safetensors");
    remove_file("short.safetensors");
    remove_file("empty.safetensors");
    (void) rmdir(tmpdir);
    return check_report("test-safetensors");
}

/* test-supports.c - asking a backend what it supports before building a
 * model on it (daemon/backend vl2_backend_supports/require, the check in
 * vl2_model_load):
 *   - a backend without supports_op answers as ABI 1 did (fake 'oldtable');
 *   - the CPU backend's answers and messages;
 *   - a backend that refuses BF16 (fake 'nobf16', whose weight() fails with
 *     "fake: weight called") makes loading a BF16 checkpoint fail cleanly,
 *     naming the backend, the operation and the dtype, before any weight is
 *     made; a BF16 cache on the CPU backend likewise.
 * argv[1]: folder with the fake plugins; argv[2]: folder with
 * vl2-backend-cpu.so; argv[3]: a micro checkpoint (BF16 weights). */
#include <stdio.h>
#include <string.h>

#include "../common/check.h"
#include "backend.h"
#include "model.h"

static void test_abi1_default(const char *fake_dir)
{
    struct vl2_backend *b = NULL;
    struct vl2_err err = { 0 };

    CHECK_MSG(vl2_backend_load(&b, "oldtable", fake_dir, NULL, &err) == 0, "%s", err.msg);
    if (!b)
        return;
    CHECK(b->ops->supports_op == NULL);
    CHECK(vl2_backend_supports(b->ops, b->ctx, VL2_OP_LINEAR, VL2_DTYPE_BF16));
    CHECK(vl2_backend_supports(b->ops, b->ctx, VL2_OP_EMBED, VL2_DTYPE_F16));
    CHECK(vl2_backend_supports(b->ops, b->ctx, VL2_OP_MOE, VL2_DTYPE_F32));
    CHECK(!vl2_backend_supports(b->ops, b->ctx, VL2_OP_LINEAR, VL2_DTYPE_Q8));
    CHECK(!vl2_backend_supports(b->ops, b->ctx, VL2_OP_WEIGHT, VL2_DTYPE_Q4));
    CHECK(vl2_backend_supports(b->ops, b->ctx, VL2_OP_KV, VL2_DTYPE_F32));
    CHECK(!vl2_backend_supports(b->ops, b->ctx, VL2_OP_KV, VL2_DTYPE_BF16));
    CHECK(!vl2_backend_supports(b->ops, b->ctx, VL2_OP_ATTN_MLA, VL2_DTYPE_F16));
    CHECK(vl2_backend_supports(b->ops, b->ctx, VL2_OP_ROPE, -1));
    CHECK(vl2_backend_supports(b->ops, b->ctx, VL2_OP_ARGMAX, -1));
    CHECK(!vl2_backend_supports(b->ops, b->ctx, 0, -1));
    CHECK(!vl2_backend_supports(b->ops, b->ctx, VL2_OP_COUNT, VL2_DTYPE_F32));
    vl2_backend_unload(b);
}

static void test_cpu(const char *cpu_dir)
{
    struct vl2_backend_params p = { .struct_size = sizeof(p), .n_threads = 1 };
    struct vl2_backend *b = NULL;
    struct vl2_err err = { 0 };

    CHECK_MSG(vl2_backend_load(&b, "cpu", cpu_dir, &p, &err) == 0, "%s", err.msg);
    if (!b)
        return;
    CHECK(b->ops->supports_op != NULL);
    CHECK(vl2_backend_require(b->ops, b->ctx, VL2_OP_LINEAR, VL2_DTYPE_BF16, &err) == 0);
    CHECK(vl2_backend_require(b->ops, b->ctx, VL2_OP_KV, VL2_DTYPE_F32, &err) == 0);
    CHECK(vl2_backend_require(b->ops, b->ctx, VL2_OP_SWIGLU, -1, &err) == 0);
    CHECK(vl2_backend_require(b->ops, b->ctx, VL2_OP_LINEAR, VL2_DTYPE_Q4, &err) ==
          VL2_EUNSUPPORTED);
    CHECK_MSG(!strcmp(err.msg, "backend 'cpu': linear with Q4 weights: not supported"), "%s",
              err.msg);
    CHECK(vl2_backend_require(b->ops, b->ctx, VL2_OP_ATTN_MHA, VL2_DTYPE_F16, &err) ==
          VL2_EUNSUPPORTED);
    CHECK_MSG(!strcmp(err.msg, "backend 'cpu': attn_mha with a F16 cache: not supported"), "%s",
              err.msg);
    CHECK(vl2_backend_require(b->ops, b->ctx, VL2_OP_COUNT + 3, -1, &err) == VL2_EUNSUPPORTED);
    CHECK_MSG(!strcmp(err.msg, "backend 'cpu': unknown op: not supported"), "%s", err.msg);
    vl2_backend_unload(b);
}

/* A model on a backend that lacks the checkpoint's dtype: refused by the
 * question, before any weight is made. */
static void test_model_refused(const char *fake_dir, const char *cpu_dir, const char *ckpt)
{
    struct vl2_model_params mp = vl2_model_default_params();
    struct vl2_model *m = NULL;
    struct vl2_err err = { 0 };
    int r;

    mp.backend = "nobf16";
    mp.plugin_dir = fake_dir;
    r = vl2_model_load(&m, ckpt, &mp, &err);
    printf("  model on nobf16 -> %d %s\n", r, err.msg);
    CHECK_EQ_INT(r, VL2_EUNSUPPORTED);
    CHECK(m == NULL);
    CHECK_MSG(strstr(err.msg, "backend 'fake': weight with BF16 weights: not supported"), "%s",
              err.msg);
    CHECK(strstr(err.msg, "called") == NULL);

    /* the CPU backend keeps caches in F32 only */
    mp = vl2_model_default_params();
    mp.plugin_dir = cpu_dir;
    mp.n_threads = 1;
    mp.kv_dtype = VL2_DTYPE_BF16;
    memset(&err, 0, sizeof(err));
    r = vl2_model_load(&m, ckpt, &mp, &err);
    printf("  model with a BF16 cache on cpu -> %d %s\n", r, err.msg);
    CHECK_EQ_INT(r, VL2_EUNSUPPORTED);
    CHECK_MSG(strstr(err.msg, "backend 'cpu': kv_new with a BF16 cache: not supported"), "%s",
              err.msg);

    /* and the same checkpoint loads where it is supported */
    mp.kv_dtype = VL2_DTYPE_F32;
    r = vl2_model_load(&m, ckpt, &mp, &err);
    CHECK_MSG(r == 0, "%s", err.msg);
    vl2_model_free(m);
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: %s FAKE_DIR CPU_DIR CHECKPOINT\n", argv[0]);
        return 2;
    }
    test_abi1_default(argv[1]);
    test_cpu(argv[2]);
    test_model_refused(argv[1], argv[2], argv[3]);
    return check_report("supports");
}

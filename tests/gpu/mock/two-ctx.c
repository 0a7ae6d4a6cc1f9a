/* tests/gpu/mock/two-ctx.c - two contexts with different launch options
 * (pdl, gemv_r1) each launch with their own: run on the mock plugin of
 * compare.sh, which logs the launch settings of every kernel.  Fails on a
 * plugin that keeps them in process globals (the second open overwrote the
 * first context's).
 *
 *     MOCK_LOG=FILE two-ctx PLUGIN.so    then compare.sh reads FILE */
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

#include "vl2-backend.h"

static int one_linear(const struct vl2_backend_ops *o, struct vl2_backend_ctx *c)
{
    struct vl2_err err = { 0, "" };
    struct vl2_tensor w, x, y;
    int64_t nw[2] = { 64, 64 }, nx[2] = { 1, 64 }, ny[2] = { 1, 64 };
    static float host[64 * 64];

    if (o->weight(c, &w, VL2_DTYPE_F32, 2, nw, host, &err) < 0 ||
        o->alloc(c, &x, VL2_DTYPE_F32, 2, nx, &err) < 0 ||
        o->alloc(c, &y, VL2_DTYPE_F32, 2, ny, &err) < 0 ||
        o->linear(c, &y, &x, &w, NULL, &err) < 0 || o->sync(c, &err) < 0) {
        fprintf(stderr, "two-ctx: %s\n", err.msg);
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    struct vl2_err err = { 0, "" };
    struct vl2_backend_params pa, pb;
    struct vl2_backend_ctx *a = NULL, *b = NULL;
    const struct vl2_backend_ops *o;
    vl2_backend_entry_fn entry;
    void *dl = argc > 1 ? dlopen(argv[1], RTLD_NOW) : NULL;

    if (!dl || !(entry = (vl2_backend_entry_fn)dlsym(dl, VL2_BACKEND_ENTRY)) ||
        !(o = entry(VL2_BACKEND_ABI_VERSION, &err)))
        return 2;
    memset(&pa, 0, sizeof(pa));
    pa.struct_size = sizeof(pa);
    pb = pa;
    pa.options = "pdl=1,gemv_r1=1";
    pb.options = "pdl=0,gemv_r1=4";
    if (o->open(&pa, &a, &err) < 0 || o->open(&pb, &b, &err) < 0) {
        fprintf(stderr, "two-ctx: %s\n", err.msg);
        return 2;
    }
    printf("context a\n");
    fflush(stdout);
    if (one_linear(o, a) < 0 || one_linear(o, b) < 0)
        return 2;
    o->close(a);
    o->close(b);
    return 0;
}

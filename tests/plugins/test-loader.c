/* test-loader.c - daemon/backend: finding and checking plugins.
 * argv[1]: folder with the fake plugins (vl2-backend-{badabi,refuse,small,
 * noentry,failopen,oldtable}.so); argv[2]: folder with vl2-backend-cpu.so. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "../common/check.h"
#include "vl2-config.h"

static void expect_fail(const char *name, const char *dir, int code, const char *const *needles)
{
    struct vl2_backend *b = (struct vl2_backend *)0x1;
    struct vl2_err err = { 0 };
    int r = vl2_backend_load(&b, name, dir, NULL, &err);

    printf("  %-10s -> %d %s: %s\n", name, r, vl2_status_name(r), err.msg);
    CHECK(r == code);
    CHECK(err.code == code);
    CHECK(b == (struct vl2_backend *)0x1); /* untouched on failure */
    for (; needles && *needles; needles++) {
        if (!strstr(err.msg, *needles))
            fprintf(stderr, "message lacks '%s'\n", *needles);
        CHECK(strstr(err.msg, *needles) != NULL);
    }
}

int main(int argc, char **argv)
{
    const char *fake_dir, *cpu_dir;
    struct vl2_backend *b = NULL;
    struct vl2_err err = { 0 };
    struct vl2_backend_params p = { .n_threads = 1 };
    char path[4200];

    if (argc < 3) {
        fprintf(stderr, "usage: %s FAKE_DIR CPU_DIR\n", argv[0]);
        return 2;
    }
    fake_dir = argv[1];
    cpu_dir = argv[2];
    unsetenv("VL2_PLUGIN_DIR");

    /* missing plugin: the message names the file and where it looked */
    {
        const char *n[] = { "vl2-backend-nosuch.so", "not found", fake_dir, NULL };
        expect_fail("nosuch", fake_dir, VL2_ENOTFOUND, n);
    }
    {
        const char *n[] = { "vl2-backend-nosuch.so", "not found", VL2_PLUGIN_DIR, NULL };
        expect_fail("nosuch", NULL, VL2_ENOTFOUND, n);
    }
    /* wrong ABI version in the table */
    snprintf(path, sizeof(path), "%s/vl2-backend-badabi.so", fake_dir);
    {
        char want[64];
        snprintf(want, sizeof(want), "ABI version %u, expected %u", VL2_BACKEND_ABI_VERSION + 1,
                 VL2_BACKEND_ABI_VERSION);
        const char *n[] = { path, want, NULL };
        expect_fail("badabi", fake_dir, VL2_EABI, n);
    }
    /* the entry refuses our version: its reason is passed on */
    snprintf(path, sizeof(path), "%s/vl2-backend-refuse.so", fake_dir);
    {
        char want[64];
        snprintf(want, sizeof(want), "ABI version %u", VL2_BACKEND_ABI_VERSION);
        const char *n[] = { path, want, "fake: built for ABI version 7", NULL };
        expect_fail("refuse", fake_dir, VL2_EABI, n);
    }
    /* table too small */
    snprintf(path, sizeof(path), "%s/vl2-backend-small.so", fake_dir);
    {
        const char *n[] = { path, "64 bytes", NULL };
        expect_fail("small", fake_dir, VL2_EABI, n);
    }
    /* no entry symbol */
    snprintf(path, sizeof(path), "%s/vl2-backend-noentry.so", fake_dir);
    {
        const char *n[] = { path, "no entry symbol", VL2_BACKEND_ENTRY, NULL };
        expect_fail("noentry", fake_dir, VL2_EABI, n);
    }
    /* open() fails: its code and message come back */
    {
        const char *n[] = { "fake: no device here", NULL };
        expect_fail("failopen", fake_dir, VL2_EBACKEND, n);
    }
    /* a table that ends before the optional operations loads; they are NULL
     * whatever lies past its end */
    CHECK(vl2_backend_load(&b, "oldtable", fake_dir, NULL, &err) == 0);
    if (b) {
        CHECK(b->ops->argmax == NULL);
        CHECK(b->ops->moe != NULL && strcmp(b->ops->describe(b->ctx), "fake: an older table") == 0);
        printf("  oldtable   -> loaded, %s, argmax %s\n", b->ops->describe(b->ctx),
               b->ops->argmax ? "present" : "absent");
        vl2_backend_unload(b);
        b = NULL;
    }
    /* the CPU plugin has it */
    CHECK(vl2_backend_load(&b, "cpu", cpu_dir, &p, &err) == 0);
    CHECK(b && b->ops->argmax != NULL);
    vl2_backend_unload(b);
    b = NULL;
    /* a file that is not a shared object: dlerror text */
    {
        const char *n[] = { "cannot load", "vl2-backend-garbage.so", NULL };
        expect_fail("garbage", fake_dir, VL2_EBACKEND, n);
    }
    /* bad names never reach the file system */
    {
        const char *n[] = { "bad backend name", NULL };
        expect_fail("../cpu", fake_dir, VL2_EINVAL, n);
        expect_fail("", fake_dir, VL2_EINVAL, n);
    }
    /* the real CPU plugin: explicit folder, $VL2_PLUGIN_DIR, build tree */
    CHECK(vl2_backend_load(&b, "cpu", cpu_dir, &p, &err) == 0);
    CHECK(b && b->ops && b->ctx && strcmp(b->ops->name, "cpu") == 0);
    printf("  cpu (dir)  -> %s: %s\n", b->path, b->ops->describe(b->ctx));
    vl2_backend_unload(b);
    b = NULL;
    setenv("VL2_PLUGIN_DIR", cpu_dir, 1);
    CHECK(vl2_backend_load(&b, "cpu", NULL, &p, &err) == 0);
    CHECK(strncmp(b->path, cpu_dir, strlen(cpu_dir)) == 0);
    vl2_backend_unload(b);
    b = NULL;
    unsetenv("VL2_PLUGIN_DIR");
    CHECK(vl2_backend_load(&b, "cpu", NULL, &p, &err) == 0);
    printf("  cpu (exe)  -> %s\n", b->path);
    CHECK(strstr(b->path, "/plugins/cpu/vl2-backend-cpu.so") != NULL);
    vl2_backend_unload(b);
    b = NULL;
    /* the plugin's own open() errors (bad option) */
    p.options = "isa=sparc";
    {
        struct vl2_err e2 = { 0 };
        CHECK(vl2_backend_load(&b, "cpu", cpu_dir, &p, &e2) == VL2_EINVAL);
        printf("  cpu isa=sparc -> %s\n", e2.msg);
        CHECK(strstr(e2.msg, "sparc") != NULL);
    }
    vl2_backend_unload(NULL);
    printf("loader: %d failures\n", check_failures);
    return check_failures ? 1 : 0;
}

/* test-loader.c - daemon/backend: finding and checking plugins; what the
 * CPU plugin does with the parameters it is opened with (struct_size, its
 * options in the grammar of vl2-options.h).
 * argv[1]: folder with the fake plugins (vl2-backend-{badabi,refuse,small,
 * noentry,failopen,oldtable}.so); argv[2]: folder with vl2-backend-cpu.so;
 * argv[3]: folder with its copy built with the measurement knobs. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

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

/* Open the CPU plugin of @dir with @options: 0 and its describe() line in
 * @desc, or the error code with the message in @err. */
static int cpu_open_with(const char *dir, const char *options, char *desc, size_t size,
                         struct vl2_err *err)
{
    struct vl2_backend_params p = { .struct_size = sizeof(p), .n_threads = 1,
                                    .options = options };
    struct vl2_backend *b = NULL;
    int r;

    memset(err, 0, sizeof(*err));
    desc[0] = '\0';
    r = vl2_backend_load(&b, "cpu", dir, &p, err);
    if (r == 0) {
        snprintf(desc, size, "%s", b->ops->describe(b->ctx));
        vl2_backend_unload(b);
    }
    printf("  cpu '%s' -> %s\n", options ? options : "(null)", r == 0 ? desc : err->msg);
    return r;
}

/* The CPU plugin's options: every item read, unknown keys and bad values
 * refused with both named, the last value of a key wins, the measurement
 * knobs only in the test build. */
static void test_cpu_options(const char *cpu_dir, const char *knobs_dir)
{
    struct vl2_err err;
    char desc[256];

    CHECK(cpu_open_with(cpu_dir, NULL, desc, sizeof(desc), &err) == 0);
    CHECK(cpu_open_with(cpu_dir, "", desc, sizeof(desc), &err) == 0);
    CHECK(cpu_open_with(cpu_dir, "isa=scalar", desc, sizeof(desc), &err) == 0);
    CHECK(strstr(desc, "scalar") != NULL);
    /* the last value wins: the flag given after the configuration file */
    CHECK(cpu_open_with(cpu_dir, "isa=avx2,isa=scalar", desc, sizeof(desc), &err) == 0);
    CHECK(strstr(desc, "scalar") != NULL);
    if (cpu_open_with(cpu_dir, "isa=scalar,isa=avx2", desc, sizeof(desc), &err) == 0)
        CHECK(strstr(desc, "avx2") != NULL && strstr(desc, "scalar") == NULL);
    else
        CHECK(err.code == VL2_EUNSUPPORTED && strstr(err.msg, "not supported by this CPU"));
    /* unknown key: named */
    CHECK(cpu_open_with(cpu_dir, "isa=scalar,nosuch=1", desc, sizeof(desc), &err) ==
          VL2_EINVAL);
    CHECK_MSG(strstr(err.msg, "cpu: unknown option 'nosuch'") != NULL, "%s", err.msg);
    /* bad value: key and value named, with what is expected */
    CHECK(cpu_open_with(cpu_dir, "isa=sparc", desc, sizeof(desc), &err) == VL2_EINVAL);
    CHECK_MSG(strstr(err.msg, "cpu: option isa 'sparc': expected one of scalar, avx2, avx512"),
              "%s", err.msg);
    /* the grammar: empty items, no '=', blanks */
    CHECK(cpu_open_with(cpu_dir, "isa=scalar,", desc, sizeof(desc), &err) == VL2_EINVAL);
    CHECK(strstr(err.msg, "empty item") != NULL);
    CHECK(cpu_open_with(cpu_dir, ",isa=scalar", desc, sizeof(desc), &err) == VL2_EINVAL);
    CHECK(strstr(err.msg, "empty item") != NULL);
    CHECK(cpu_open_with(cpu_dir, "isa", desc, sizeof(desc), &err) == VL2_EINVAL);
    CHECK(strstr(err.msg, "expected key=value") != NULL);
    CHECK(cpu_open_with(cpu_dir, "isa = scalar", desc, sizeof(desc), &err) == VL2_EINVAL);
    /* measurement knobs: refused by the production plugin, with the reason
     * (a -Dtest_knobs=true build's plugin takes them) */
#ifndef VL2_TEST_KNOBS
    CHECK(cpu_open_with(cpu_dir, "mla=expanded", desc, sizeof(desc), &err) == VL2_EINVAL);
    CHECK_MSG(strstr(err.msg, "'mla'") && strstr(err.msg, "test builds"), "%s", err.msg);
    CHECK(cpu_open_with(cpu_dir, "blas_min_rows=4", desc, sizeof(desc), &err) == VL2_EINVAL);
#endif
    /* ... taken by the test build, with their values checked */
    CHECK(cpu_open_with(knobs_dir, "mla=expanded,blas_min_rows=4,gemm=blas", desc,
                        sizeof(desc), &err) == 0);
    CHECK(strstr(desc, "gemm openblas") != NULL);
    CHECK(cpu_open_with(knobs_dir, "blas_min_rows=4x", desc, sizeof(desc), &err) ==
          VL2_EINVAL);
    CHECK_MSG(strstr(err.msg, "cpu: option blas_min_rows '4x': expected an integer 1..1048576"),
              "%s", err.msg);
    CHECK(cpu_open_with(knobs_dir, "blas_min_rows=0", desc, sizeof(desc), &err) == VL2_EINVAL);
    CHECK(cpu_open_with(knobs_dir, "mla=fast", desc, sizeof(desc), &err) == VL2_EINVAL);
    CHECK(strstr(err.msg, "cpu: option mla 'fast'") != NULL);
    CHECK(cpu_open_with(knobs_dir, "nosuch=1", desc, sizeof(desc), &err) == VL2_EINVAL);
    CHECK(strstr(err.msg, "cpu: unknown option 'nosuch'") != NULL);
}

/* Parameters from a caller built with another vl2-backend.h: refused by
 * open() before any field is read. */
static void test_cpu_params_size(const char *cpu_dir)
{
    static const uint32_t sizes[] = { 0, sizeof(struct vl2_backend_params) - 8,
                                      sizeof(struct vl2_backend_params) + 8 };
    struct vl2_backend *b = NULL;

    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        struct vl2_backend_params p = { .struct_size = sizes[i], .n_threads = 1 };
        struct vl2_err err = { 0 };
        CHECK(vl2_backend_load(&b, "cpu", cpu_dir, &p, &err) == VL2_EABI);
        CHECK_MSG(strstr(err.msg, "vl2_backend_params") && strstr(err.msg, "struct_size"),
                  "%s", err.msg);
        if (i == 1)
            printf("  cpu params of %u bytes -> %s\n", (unsigned)sizes[i], err.msg);
    }
    CHECK(b == NULL);
}

/* As an installed program (this test copied out of the build tree): the
 * build tree is never searched, only $VL2_PLUGIN_DIR and VL2_PLUGIN_DIR.
 * Returns the exit status of the copy's checks. */
static int installed_checks(void)
{
    struct vl2_backend *b = NULL;
    struct vl2_err err = { 0 };
    int r;

    unsetenv("VL2_PLUGIN_DIR");
    r = vl2_backend_load(&b, "cpu", NULL, NULL, &err);
    printf("  installed copy: cpu -> %d %s\n", r, r == 0 ? b->path : err.msg);
    if (r == 0) {
        /* a vl2d installed on this machine: found there, not in the build */
        CHECK(strncmp(b->path, VL2_PLUGIN_DIR "/", strlen(VL2_PLUGIN_DIR) + 1) == 0);
        vl2_backend_unload(b);
    } else {
        CHECK(r == VL2_ENOTFOUND);
        CHECK(strstr(err.msg, VL2_PLUGIN_DIR) != NULL);
        CHECK_MSG(strstr(err.msg, VL2_BUILD_ROOT) == NULL, "%s", err.msg);
        CHECK_MSG(strstr(err.msg, "/..") == NULL, "%s", err.msg);
    }
    return check_failures ? 1 : 0;
}

/* Copy this program to a folder outside the build tree and run its
 * installed_checks() there. */
static void test_installed_copy(void)
{
    char dir[] = "/tmp/vl2-loader-XXXXXX", path[64], buf[65536];
    int in, out, status = -1;
    ssize_t n;
    pid_t pid;

    if (!mkdtemp(dir)) {
        CHECK_MSG(0, "mkdtemp: %s", strerror(errno));
        return;
    }
    snprintf(path, sizeof(path), "%s/test-loader", dir);
    in = open("/proc/self/exe", O_RDONLY);
    out = open(path, O_WRONLY | O_CREAT | O_EXCL, 0755);
    CHECK(in >= 0 && out >= 0);
    while (in >= 0 && out >= 0 && (n = read(in, buf, sizeof(buf))) > 0)
        CHECK(write(out, buf, (size_t)n) == n);
    if (in >= 0)
        close(in);
    if (out >= 0)
        close(out);
    fflush(stdout);
    pid = fork();
    if (pid == 0) {
        execl(path, path, "--installed", (char *)NULL);
        _exit(77);
    }
    CHECK(pid > 0 && waitpid(pid, &status, 0) == pid);
    if (WIFEXITED(status) && WEXITSTATUS(status) == 77)
        printf("  installed copy: cannot run programs from /tmp here, not checked\n");
    else
        CHECK_MSG(WIFEXITED(status) && WEXITSTATUS(status) == 0, "status %d", status);
    unlink(path);
    rmdir(dir);
}

int main(int argc, char **argv)
{
    const char *fake_dir, *cpu_dir, *knobs_dir;
    struct vl2_backend *b = NULL;
    struct vl2_err err = { 0 };
    struct vl2_backend_params p = { .struct_size = sizeof(p), .n_threads = 1 };
    char path[4200];

    if (argc == 2 && !strcmp(argv[1], "--installed"))
        return installed_checks();
    if (argc < 4) {
        fprintf(stderr, "usage: %s FAKE_DIR CPU_DIR CPU_KNOBS_DIR\n", argv[0]);
        return 2;
    }
    fake_dir = argv[1];
    cpu_dir = argv[2];
    knobs_dir = argv[3];
    unsetenv("VL2_PLUGIN_DIR");

    /* missing plugin: the message names the file and where it looked */
    {
        const char *n[] = { "vl2-backend-nosuch.so", "not found", fake_dir, NULL };
        expect_fail("nosuch", fake_dir, VL2_ENOTFOUND, n);
    }
    {
        const char *n[] = { "vl2-backend-nosuch.so", "not found", VL2_PLUGIN_DIR,
                            VL2_BUILD_ROOT "/plugins/nosuch/vl2-backend-nosuch.so", NULL };
        expect_fail("nosuch", NULL, VL2_ENOTFOUND, n);
    }
    /* the installed folder is named for the ABI version */
    {
        char want[32];
        size_t lw, ld = strlen(VL2_PLUGIN_DIR);
        snprintf(want, sizeof(want), "/vl2d/backends-%u", VL2_BACKEND_ABI_VERSION);
        lw = strlen(want);
        CHECK_MSG(ld > lw && !strcmp(VL2_PLUGIN_DIR + ld - lw, want), "%s", VL2_PLUGIN_DIR);
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
    printf("  cpu (build tree) -> %s\n", b->path);
    CHECK(!strcmp(b->path, VL2_BUILD_ROOT "/plugins/cpu/vl2-backend-cpu.so"));
    vl2_backend_unload(b);
    b = NULL;
    test_installed_copy();
    /* the loader's default parameters (NULL) are the ABI's */
    CHECK_MSG(vl2_backend_load(&b, "cpu", cpu_dir, NULL, &err) == 0, "%s", err.msg);
    vl2_backend_unload(b);
    b = NULL;
    test_cpu_params_size(cpu_dir);
    test_cpu_options(cpu_dir, knobs_dir);
    vl2_backend_unload(NULL);
    return check_report("loader");
}

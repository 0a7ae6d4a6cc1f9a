/* test-engine-conf.c - vl2d.conf (daemon/cli/conf.h): every [daemon] key
 * and its value forms, [model NAME] sections, relative dirs, quotes,
 * comments, CRLF, and every kind of bad line with its FILE:LINE message;
 * --model [NAME=]DIR; the default paths. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/check.h"
#include "conf.h"
#include "engine.h"
#include "vl2-config.h"

static int parse(struct vl2_conf *c, const char *text, struct vl2_err *err)
{
    vl2_conf_init(c);
    memset(err, 0, sizeof(*err));
    return vl2_conf_parse(c, text, strlen(text), "/etc/vl2d/test.conf", err);
}

static void test_good(void)
{
    static const char text[] =
        "# vl2d.conf\r\n"
        "; another comment\n"
        "\n"
        "[daemon]\n"
        "  backend = cuda  \n"
        "plugin_dir = \"/opt/vl2 plugins\"\n"
        "device = 1\n"
        "threads=3\n"
        "socket = /tmp/x.sock\n"
        "socket_mode = 0600\n"
        "max_frame = 16M\n"
        "max_connections = 12\n"
        "log_level = debug\n"
        "max_sequences = 16\n"
        "max_queue = 99\n"
        "kv_budget = 2GiB\n"
        "context = 2048\n"
        "max_new_tokens = 64\n"
        "max_images = 4\n"
        "max_image_pixels = 1000000\n"
        "max_image_bytes = 8M\n"
        "apply_exif = no\n"
        "image_timeout = 2m\n"
        "prep_threads = 3\n"
        "vision_tiles_per_step = 2\n"
        "idle_unload = 1.5h\n"
        "\n"
        "[model tiny]\n"
        "dir = /models/deepseek-vl2-tiny\n"
        "[ model small-2 ]\n"
        "dir = small\n"
        "backend = cpu\n";
    struct vl2_conf c;
    struct vl2_err err;

    CHECK_MSG(parse(&c, text, &err) == 0, "%s", err.msg);
    CHECK(!strcmp(c.engine.backend, "cuda"));
    CHECK(!strcmp(c.engine.plugin_dir, "/opt/vl2 plugins"));
    CHECK_EQ_INT(c.engine.device, 1);
    CHECK_EQ_INT(c.engine.n_threads, 3);
    CHECK(!strcmp(c.server.socket_path, "/tmp/x.sock"));
    CHECK_EQ_INT(c.server.socket_mode, 0600);
    CHECK_EQ_INT(c.server.max_frame, 16u << 20);
    CHECK_EQ_INT(c.server.max_connections, 12);
    CHECK(c.has_log_level && c.log_level == VL2_LOG_DEBUG);
    CHECK_EQ_INT(c.engine.max_sequences, 16);
    CHECK_EQ_INT(c.engine.max_queue, 99);
    CHECK(c.engine.kv_budget == (size_t) 2 << 30);
    CHECK_EQ_INT(c.engine.n_ctx, 2048);
    CHECK_EQ_INT(c.engine.max_new_tokens, 64);
    CHECK_EQ_INT(c.engine.max_images, 4);
    CHECK_EQ_INT(c.engine.max_image_pixels, 1000000);
    CHECK_EQ_INT(c.engine.max_image_bytes, 8u << 20);
    CHECK(!c.engine.apply_exif);
    CHECK(c.engine.fd_timeout_s == 120.0);
    CHECK_EQ_INT(c.engine.prep_threads, 3);
    CHECK_EQ_INT(c.engine.vision_tiles_per_step, 2);
    CHECK(c.engine.idle_unload_s == 5400.0);
    CHECK_EQ_INT(c.n_models, 2);
    CHECK(!strcmp(c.models[0].name, "tiny") &&
          !strcmp(c.models[0].dir, "/models/deepseek-vl2-tiny") && !c.models[0].backend);
    /* a relative dir is relative to the file's directory */
    CHECK(!strcmp(c.models[1].name, "small-2") && !strcmp(c.models[1].dir, "/etc/vl2d/small") &&
          c.models[1].backend && !strcmp(c.models[1].backend, "cpu"));
    CHECK_MSG(vl2_engine_check_params(&c.engine, &err) == 0, "%s", err.msg);
    vl2_conf_done(&c);

    /* an empty file: the defaults */
    CHECK(parse(&c, "", &err) == 0);
    CHECK(!strcmp(c.engine.backend, "cpu") && c.engine.max_sequences == 8 &&
          c.n_models == 0 && !c.has_log_level);
    vl2_conf_done(&c);
}

static void expect_bad(const char *text, int code, const char *msg)
{
    struct vl2_conf c;
    struct vl2_err err;
    int r = parse(&c, text, &err);

    CHECK_MSG(r == code && strstr(err.msg, msg), "'%s': %d '%s', expected %d '%s'", text, r,
              err.msg, code, msg);
    vl2_conf_done(&c);
}

/* The engine's own check agrees with the file's limit. */
static void test_engine_limits(void)
{
    struct vl2_engine_params p = vl2_engine_default_params();
    struct vl2_err err = { 0 };

    CHECK_EQ_INT(p.max_images, 16);
    p.max_images = VL2_ENGINE_MAX_IMAGES;
    CHECK_EQ_INT(vl2_engine_check_params(&p, &err), 0);
    p.max_images = VL2_ENGINE_MAX_IMAGES + 1;
    CHECK_EQ_INT(vl2_engine_check_params(&p, &err), VL2_EINVAL);
    CHECK_MSG(strstr(err.msg, "max_images 65: expected 1 to 64"), "%s", err.msg);
}

static void test_bad(void)
{
    expect_bad("backend = cpu\n", VL2_EFORMAT, "test.conf:1: 'backend' outside a section");
    expect_bad("[daemon]\n\nbogus = 1\n", VL2_EINVAL, "test.conf:3: unknown key 'bogus'");
    expect_bad("[daemon]\nmax_sequences = 0\n", VL2_EINVAL,
               "test.conf:2: max_sequences '0': expected an integer from 1 to 4096");
    expect_bad("[daemon]\nkv_budget = 4X\n", VL2_EINVAL, "test.conf:2: kv_budget '4X'");
    {
        /* max_images goes up to what the server accepts in one request
         * (test-server-engine: VL2_ENGINE_MAX_IMAGES pass, one more not) */
        char text[64], msg[96];
        struct vl2_conf c;
        struct vl2_err err;

        snprintf(text, sizeof(text), "[daemon]\nmax_images = %d\n", VL2_ENGINE_MAX_IMAGES);
        CHECK_MSG(parse(&c, text, &err) == 0 && c.engine.max_images == VL2_ENGINE_MAX_IMAGES,
                  "%s", err.msg);
        vl2_conf_done(&c);
        snprintf(text, sizeof(text), "[daemon]\nmax_images = %d\n", VL2_ENGINE_MAX_IMAGES + 1);
        snprintf(msg, sizeof(msg), "max_images '%d': expected an integer from 1 to %d",
                 VL2_ENGINE_MAX_IMAGES + 1, VL2_ENGINE_MAX_IMAGES);
        expect_bad(text, VL2_EINVAL, msg);
    }
    expect_bad("[daemon]\nthreads = -1\n", VL2_EINVAL, "test.conf:2: threads '-1'");
    expect_bad("[daemon]\napply_exif = maybe\n", VL2_EINVAL, "apply_exif 'maybe'");
    expect_bad("[daemon]\nidle_unload = soon\n", VL2_EINVAL, "idle_unload 'soon'");
    expect_bad("[daemon]\nimage_timeout = 0\n", VL2_EINVAL, "image_timeout '0'");
    expect_bad("[daemon]\nsocket_mode = 999\n", VL2_EINVAL, "socket_mode '999'");
    expect_bad("[daemon]\nlog_level = loud\n", VL2_EINVAL, "log_level 'loud'");
    expect_bad("[daemon]\nbackend = ../evil\n", VL2_EINVAL, "backend '../evil'");
    expect_bad("[daemon]\nsocket = \"/tmp/a\n", VL2_EFORMAT, "test.conf:2: unbalanced quotes");
    expect_bad("[daemon]\njust words\n", VL2_EFORMAT, "test.conf:2: expected 'key = value'");
    expect_bad("[deamon]\n", VL2_EFORMAT, "test.conf:1: unknown section '[deamon]'");
    expect_bad("[daemon\n", VL2_EFORMAT, "test.conf:1: expected '[daemon]'");
    expect_bad("[model a/b]\ndir = /x\n", VL2_EINVAL, "test.conf:1: model name 'a/b'");
    expect_bad("[model]\n", VL2_EFORMAT, "unknown section '[model]'");
    expect_bad("[model a]\nbackend = cpu\n[daemon]\n", VL2_EINVAL,
               "test.conf:1: model 'a' has no 'dir'");
    expect_bad("[model a]\ndir = /x\ncolor = red\n", VL2_EINVAL,
               "test.conf:3: unknown key 'color' in [model a]");
    expect_bad("[model a]\ndir = /x\n[model a]\ndir = /y\n", VL2_EINVAL,
               "test.conf:3: model 'a' is named twice");
    expect_bad("[model a]\ndir =\n", VL2_EINVAL, "test.conf:2: empty 'dir'");
    {
        static const char nul[] = "[daemon]\0x = 1\n";
        struct vl2_conf c;
        struct vl2_err err = { 0 };

        vl2_conf_init(&c);
        CHECK(vl2_conf_parse(&c, nul, sizeof(nul) - 1, "n.conf", &err) == VL2_EFORMAT &&
              strstr(err.msg, "NUL"));
        vl2_conf_done(&c);
    }
    {
        struct vl2_conf c;
        struct vl2_err err = { 0 };

        vl2_conf_init(&c);
        CHECK(vl2_conf_load(&c, "/nonexistent/vl2d.conf", false, &err) == 0);
        CHECK(vl2_conf_load(&c, "/nonexistent/vl2d.conf", true, &err) == VL2_ENOTFOUND &&
              strstr(err.msg, "/nonexistent/vl2d.conf"));
        vl2_conf_done(&c);
    }
}

static void test_model_args(void)
{
    struct vl2_conf c;
    struct vl2_err err = { 0 };
    char cwd[4096], want[4200];

    vl2_conf_init(&c);
    CHECK(vl2_conf_add_model_arg(&c, "tiny=/models/t", &err) == 0);
    CHECK(vl2_conf_add_model_arg(&c, "/models/deepseek-vl2-small/", &err) == 0);
    CHECK(vl2_conf_add_model_arg(&c, "rel/base", &err) == 0);
    CHECK_EQ_INT(c.n_models, 3);
    CHECK(!strcmp(c.models[0].name, "tiny") && !strcmp(c.models[0].dir, "/models/t"));
    CHECK(!strcmp(c.models[1].name, "deepseek-vl2-small"));
    CHECK(getcwd(cwd, sizeof(cwd)) != NULL);
    snprintf(want, sizeof(want), "%s/rel/base", cwd);
    CHECK(!strcmp(c.models[2].name, "base") && !strcmp(c.models[2].dir, want));
    CHECK(vl2_conf_add_model_arg(&c, "tiny=/other", &err) == VL2_EINVAL &&
          strstr(err.msg, "named twice"));
    CHECK(vl2_conf_add_model_arg(&c, "=/x", &err) == VL2_EINVAL);
    CHECK(vl2_conf_add_model_arg(&c, "x=", &err) == VL2_EINVAL);
    CHECK(vl2_conf_add_model_arg(&c, "a b=/x", &err) == VL2_EINVAL);
    CHECK(vl2_conf_add_model_arg(&c, "/", &err) == VL2_EINVAL);
    vl2_conf_done(&c);
}

static void test_paths(void)
{
    char buf[4096], want[4200];
    struct vl2_err err = { 0 };

    CHECK(vl2_conf_default_path(true, buf, sizeof(buf), &err) == 0);
    snprintf(want, sizeof(want), "%s/vl2d.conf", VL2_SYSCONF_DIR);
    CHECK(!strcmp(buf, want));
    setenv("XDG_CONFIG_HOME", "/home/u/.cfg", 1);
    CHECK(vl2_conf_default_path(false, buf, sizeof(buf), &err) == 0);
    CHECK(!strcmp(buf, "/home/u/.cfg/vl2d/vl2d.conf"));
    unsetenv("XDG_CONFIG_HOME");
    setenv("HOME", "/home/u", 1);
    CHECK(vl2_conf_default_path(false, buf, sizeof(buf), &err) == 0);
    CHECK(!strcmp(buf, "/home/u/.config/vl2d/vl2d.conf"));
    unsetenv("HOME");
    CHECK(vl2_conf_default_path(false, buf, sizeof(buf), &err) == VL2_ENOTFOUND);
}

int main(void)
{
    RUN(test_good);
    RUN(test_bad);
    RUN(test_engine_limits);
    RUN(test_model_args);
    RUN(test_paths);
    return check_failures ? 1 : 0;
}

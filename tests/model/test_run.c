/* test_run.c - `vl2d run` end to end on a micro checkpoint: for every golden
 * case, run the command on the original image files and prompt with --dump,
 * and compare every dumped stage with the golden one (pixels exact, floats
 * within 1e-3, ids identical); check the --json object; check that bad
 * requests fail with a message and exit status 1.
 *
 * usage: test_run --vl2d PATH --model CKPT_DIR --golden GOLDEN_PRESET_DIR
 *                 --images DIR --pixels DIR [--plugin-dir DIR]
 */
#include <cjson/cJSON.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"
#include "../common/util.h"

#define TOL 1e-3

extern char **environ;

static const char *o_vl2d, *o_model, *o_golden, *o_images, *o_pixels, *o_plugin_dir;
static const char *o_exif_image;   /* stored 7x4 with EXIF orientation 6 (90 degrees) */

/* Run argv with stdout and stderr to files; returns the exit status. */
static int run(char *const *argv, const char *out, const char *errf)
{
    posix_spawn_file_actions_t fa;
    pid_t pid;
    int st = -1;

    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_addopen(&fa, 2, errf, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (posix_spawn(&pid, argv[0], &fa, NULL, argv, environ) != 0) {
        perror("posix_spawn");
        exit(1);
    }
    posix_spawn_file_actions_destroy(&fa);
    if (waitpid(pid, &st, 0) < 0 || !WIFEXITED(st))
        return -1;
    return WEXITSTATUS(st);
}

static cJSON *json_file(const char *dir, const char *name)
{
    char *p = tu_path(dir, name), *t = test_slurp(p, NULL);
    cJSON *j = t ? cJSON_Parse(t) : NULL;

    CHECK_MSG(j != NULL, "%s: missing or not JSON", p);
    free(p);
    free(t);
    return j;
}

static int same_ints(cJSON *a, cJSON *b)
{
    int n = cJSON_GetArraySize(a), i;

    if (!cJSON_IsArray(a) || !cJSON_IsArray(b) || n != cJSON_GetArraySize(b))
        return 0;
    for (i = 0; i < n; i++)
        if (cJSON_GetArrayItem(a, i)->valuedouble != cJSON_GetArrayItem(b, i)->valuedouble)
            return 0;
    return 1;
}

static void compare_npy(const char *name, const char *mine_dir, const char *gold_dir, int exact)
{
    struct vl2_npy a = { 0 }, b = { 0 };
    struct vl2_err err = { 0 };
    char *pa = tu_path(mine_dir, name), *pb = tu_path(gold_dir, name);

    if (vl2_npy_read(&a, pa, &err) < 0) {
        CHECK_MSG(0, "%s", err.msg);
        goto out;
    }
    if (vl2_npy_read(&b, pb, &err) < 0) {
        CHECK_MSG(0, "%s", err.msg);
        goto out;
    }
    CHECK_MSG(a.dtype == b.dtype && a.ndim == b.ndim && a.count == b.count &&
             !memcmp(a.shape, b.shape, (size_t)a.ndim * sizeof(a.shape[0])),
             "%s: dtype or shape differs from the golden one", name);
    if (a.count != b.count || a.dtype != b.dtype)
        goto out;
    if (exact) {
        CHECK_MSG(!memcmp(a.data, b.data, a.count * vl2_npy_elem_size(a.dtype)),
                 "%s: differs from the golden one", name);
        printf("  %-28s %s\n", name, "exact");
    } else {
        tu_compare(name, a.data, &b, b.count, TOL);
    }
out:
    vl2_npy_done(&a);
    vl2_npy_done(&b);
    free(pa);
    free(pb);
}

static void run_case(const char *cs, const char *tmp)
{
    char *gdir = tu_path(o_golden, cs), *dump = tu_path(tmp, cs);
    char *out = tu_path(tmp, "stdout"), *errf = tu_path(tmp, "stderr");
    cJSON *ij = json_file(gdir, "input_ids.json"), *gj = json_file(gdir, "generated.json");
    char *argv[32], *prompt = NULL, *img = NULL;
    const char *pt, *b, *e;
    int argc = 0, r;

    printf("case %s\n", cs);
    if (!ij || !gj)
        goto out;
    /* the user's message: prompt_text between "<|User|>: " and "\n\n<|Assistant|>:" */
    pt = cJSON_GetObjectItem(ij, "prompt_text")->valuestring;
    b = strstr(pt, "<|User|>: ");
    e = strstr(pt, "\n\n<|Assistant|>:");
    CHECK_MSG(b && e && e > b, "prompt_text has an unexpected form");
    if (!b || !e || e <= b)
        goto out;
    b += strlen("<|User|>: ");
    prompt = strndup(b, (size_t)(e - b));
    argv[argc++] = (char *)o_vl2d;
    argv[argc++] = "run";
    argv[argc++] = "--model";
    argv[argc++] = (char *)o_model;
    if (cJSON_GetArraySize(cJSON_GetObjectItem(ij, "images")) > 0) {
        img = tu_path(o_images, cJSON_GetArrayItem(cJSON_GetObjectItem(ij, "images"), 0)
                                    ->valuestring);
        argv[argc++] = "--image";
        argv[argc++] = img;
    }
    argv[argc++] = "--prompt";
    argv[argc++] = prompt;
    argv[argc++] = "--max-new-tokens";
    argv[argc++] = "12";
    argv[argc++] = "--threads";
    argv[argc++] = "2";
    argv[argc++] = "--dump";
    argv[argc++] = dump;
    if (o_plugin_dir) {
        argv[argc++] = "--plugin-dir";
        argv[argc++] = (char *)o_plugin_dir;
    }
    argv[argc] = NULL;
    r = run(argv, out, errf);
    CHECK_MSG(r == 0, "vl2d run exited with %d", r);
    if (r != 0) {
        char *t = test_slurp(errf, NULL);
        fprintf(stderr, "%s\n", t ? t : "");
        free(t);
        goto out;
    }
    {
        cJSON *mi = json_file(dump, "input_ids.json"), *mg = json_file(dump, "generated.json");
        char *streamed = test_slurp(out, NULL);
        const char *gtext = cJSON_GetObjectItem(gj, "text")->valuestring;
        CHECK_MSG(mi && same_ints(cJSON_GetObjectItem(mi, "input_ids"),
                                 cJSON_GetObjectItem(ij, "input_ids")), "input_ids differ");
        CHECK_MSG(mi && same_ints(cJSON_GetObjectItem(mi, "images_spatial_crop"),
                                 cJSON_GetObjectItem(ij, "images_spatial_crop")),
                 "images_spatial_crop differ");
        CHECK_MSG(mg && same_ints(cJSON_GetObjectItem(mg, "generated_ids"),
                                 cJSON_GetObjectItem(gj, "generated_ids")),
                 "generated_ids differ");
        CHECK_MSG(mg && cJSON_GetObjectItem(mg, "text") &&
                 !strcmp(cJSON_GetObjectItem(mg, "text")->valuestring, gtext),
                 "generated text differs");
        /* the stream is the text plus a final newline */
        CHECK_MSG(streamed && !strncmp(streamed, gtext, strlen(gtext)),
                 "streamed text '%s' differs from '%s'", streamed ? streamed : "", gtext);
        printf("  input ids, generated ids and text identical\n");
        cJSON_Delete(mi);
        cJSON_Delete(mg);
        free(streamed);
    }
    if (img) {
        char *pdir = tu_path(o_pixels, cs);
        compare_npy("pixel_values_u8.npy", dump, pdir, 1);
        free(pdir);
        compare_npy("vision_features.npy", dump, gdir, 0);
        compare_npy("projector_out.npy", dump, gdir, 0);
    }
    compare_npy("inputs_embeds.npy", dump, gdir, 0);
    compare_npy("logits.npy", dump, gdir, 0);
    compare_npy("logits_topk_values.npy", dump, gdir, 0);
out:
    cJSON_Delete(ij);
    cJSON_Delete(gj);
    free(prompt);
    free(img);
    free(gdir);
    free(dump);
    free(out);
    free(errf);
}

/* --json: one object with the fields the issue names. */
static void check_json(const char *tmp)
{
    char *out = tu_path(tmp, "stdout"), *errf = tu_path(tmp, "stderr"), *t;
    char *argv[] = { (char *)o_vl2d, "run", "--model", (char *)o_model, "--prompt",
                     "Write a haiku about GPUs.", "--max-new-tokens", "5", "--json",
                     "--temperature", "0.8", "--top-k", "40", "--top-p", "0.95", "--seed", "9",
                     "--repetition-penalty", "1.1", o_plugin_dir ? "--plugin-dir" : NULL,
                     (char *)o_plugin_dir, NULL };
    cJSON *j, *s;
    int r;

    printf("--json\n");
    r = run(argv, out, errf);
    CHECK_MSG(r == 0, "vl2d run --json exited with %d", r);
    t = test_slurp(out, NULL);
    j = t ? cJSON_Parse(t) : NULL;
    CHECK_MSG(j != NULL, "--json output is not one JSON object");
    if (j) {
        s = cJSON_GetObjectItem(j, "stats");
        CHECK_MSG(cJSON_GetArraySize(cJSON_GetObjectItem(j, "prompt_ids")) == 13,
                 "prompt_ids of the textonly prompt");
        CHECK_MSG(cJSON_GetArraySize(cJSON_GetObjectItem(j, "generated_ids")) == 5,
                 "5 generated ids");
        CHECK_MSG(cJSON_IsString(cJSON_GetObjectItem(j, "text")), "text");
        CHECK_MSG(s && cJSON_GetObjectItem(s, "tiles") && cJSON_GetObjectItem(s, "image_tokens")
                 && cJSON_GetObjectItem(s, "prompt_tokens") && cJSON_GetObjectItem(s, "ttft_s")
                 && cJSON_GetObjectItem(s, "decode_tokens_per_s"), "stats fields");
        CHECK_MSG(s && cJSON_IsString(cJSON_GetObjectItem(s, "precision")) &&
                  !strcmp(cJSON_GetObjectItem(s, "precision")->valuestring, "f32"),
                  "stats precision: f32 by default");
        printf("  fields present\n");
    }
    cJSON_Delete(j);
    free(t);
    free(out);
    free(errf);
}

static void expect_failure(const char *tmp, const char *what, char **argv, const char *want)
{
    char *out = tu_path(tmp, "stdout"), *errf = tu_path(tmp, "stderr"), *t;
    int r = run(argv, out, errf);

    t = test_slurp(errf, NULL);
    printf("  %s: exit %d: %s", what, r, t ? t : "\n");
    CHECK_MSG(r == 1 || r == 2, "%s: exit status %d", what, r);
    CHECK_MSG(t && strstr(t, want), "%s: message does not mention '%s'", what, want);
    free(t);
    free(out);
    free(errf);
}

static void check_errors(const char *tmp)
{
    char *img = tu_path(o_images, "g_a_384.jpg");
    char *pd = (char *)o_plugin_dir;
    char *a1[] = { (char *)o_vl2d, "run", "--model", (char *)o_model, "--image", img,
                   "--prompt", "<image> and <image>", pd ? "--plugin-dir" : NULL, pd, NULL };
    char *a2[] = { (char *)o_vl2d, "run", "--model", (char *)o_model, "--prompt", "",
                   pd ? "--plugin-dir" : NULL, pd, NULL };
    char *a3[] = { (char *)o_vl2d, "run", "--model", (char *)o_model, "--image",
                   "/nonexistent.png", "--prompt", "x", pd ? "--plugin-dir" : NULL, pd, NULL };
    char *a4[] = { (char *)o_vl2d, "run", "--model", (char *)o_model, "--prompt", "x",
                   "--top-p", "2", NULL };
    char *a5[] = { (char *)o_vl2d, "run", "--model", (char *)o_model, "--prompt", "x",
                   "--max-new-tokens", "many", NULL };

    printf("bad requests\n");
    expect_failure(tmp, "2 tags, 1 image", a1, "image");
    expect_failure(tmp, "empty prompt", a2, "empty prompt");
    expect_failure(tmp, "missing image file", a3, "nonexistent.png");
    expect_failure(tmp, "top-p 2", a4, "top_p");
    expect_failure(tmp, "max-new-tokens many", a5, "many");
    {
        char *a6[] = { (char *)o_vl2d, "run", "--model", (char *)o_model, "--prompt", "x",
                       "--precision", "f16", pd ? "--plugin-dir" : NULL, pd, NULL };
        expect_failure(tmp, "precision f16", a6, "--precision 'f16'");
    }
    free(img);
}

/* --apply-exif: the image is stored 7x4 with EXIF orientation 6 (rotate 90
 * degrees clockwise to view), so the official path sees 7x4 and the upright
 * image is 4x7 (EXIF 2.3, Table "Orientation"). */
static void check_exif(const char *tmp)
{
    static const int want[2][2] = { { 7, 4 }, { 4, 7 } };
    int k;

    if (!o_exif_image)
        return;
    printf("--apply-exif\n");
    for (k = 0; k < 2; k++) {
        char *dir = tu_path(tmp, k ? "exif-on" : "exif-off");
        char *out = tu_path(tmp, "exif.out"), *errf = tu_path(tmp, "exif.err");
        char *pd = (char *)o_plugin_dir;
        char *argv[] = { (char *)o_vl2d, "run", "--model", (char *)o_model, "--image",
                         (char *)o_exif_image, "--prompt", "x", "--max-new-tokens", "1",
                         "--dump", dir, k ? "--apply-exif" : "--json",
                         pd ? "--plugin-dir" : NULL, pd, NULL };
        cJSON *j, *sz;
        int st = run(argv, out, errf);

        CHECK_MSG(st == 0, "vl2d run %s exited %d", k ? "--apply-exif" : "", st);
        if (st == 0) {
            j = json_file(dir, "input_ids.json");
            sz = j ? cJSON_GetObjectItem(j, "image_sizes") : NULL;
            sz = sz ? cJSON_GetArrayItem(sz, 0) : NULL;
            CHECK_MSG(sz && cJSON_GetArraySize(sz) == 2 &&
                     cJSON_GetArrayItem(sz, 0)->valueint == want[k][0] &&
                     cJSON_GetArrayItem(sz, 1)->valueint == want[k][1],
                     "exif %s: image size is not %dx%d", k ? "on" : "off",
                     want[k][0], want[k][1]);
            cJSON_Delete(j);
        }
        free(dir);
        free(out);
        free(errf);
    }
}

int main(int argc, char **argv)
{
    static const char *cases[] = { "a384", "wide", "tall", "textonly" };
    char tmp[] = "/tmp/vl2-run-test-XXXXXX";
    char cmd[256];
    int i;

    for (i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--vl2d"))
            o_vl2d = argv[i + 1];
        else if (!strcmp(argv[i], "--model"))
            o_model = argv[i + 1];
        else if (!strcmp(argv[i], "--golden"))
            o_golden = argv[i + 1];
        else if (!strcmp(argv[i], "--images"))
            o_images = argv[i + 1];
        else if (!strcmp(argv[i], "--pixels"))
            o_pixels = argv[i + 1];
        else if (!strcmp(argv[i], "--plugin-dir"))
            o_plugin_dir = argv[i + 1];
        else if (!strcmp(argv[i], "--exif-image"))
            o_exif_image = argv[i + 1];
    }
    if (!o_vl2d || !o_model || !o_golden || !o_images || !o_pixels) {
        fprintf(stderr, "usage: test_run --vl2d PATH --model DIR --golden DIR --images DIR\n");
        return 2;
    }
    if (!mkdtemp(tmp)) {
        perror("mkdtemp");
        return 1;
    }
    for (i = 0; i < 4; i++)
        run_case(cases[i], tmp);
    check_json(tmp);
    check_errors(tmp);
    check_exif(tmp);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmp);
    if (!check_failures && system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", tmp);
    if (check_failures) {
        printf("%d failures (outputs kept in %s)\n", check_failures, tmp);
        return 1;
    }
    printf("vl2d run matches the golden data\n");
    return 0;
}

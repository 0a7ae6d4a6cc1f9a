/* test_errors.c - bad input gets a clear error and changes nothing:
 * prompts longer than the context, images that do not fit, empty prompts,
 * ids outside the vocabulary, placeholder/image mismatches, KV budget,
 * and model directories whose tensors disagree with their config.
 *
 * usage: test_errors --model CKPT_DIR (a micro checkpoint) [--plugin-dir DIR]
 */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model.h"
#include "testutil.h"
#include "../common/util.h"

static const char *o_model, *o_plugin_dir;

static struct vl2_model_params params(void)
{
    struct vl2_model_params mp = vl2_model_default_params();

    mp.plugin_dir = o_plugin_dir;
    mp.n_threads = 1;
    mp.image_token_id = 128815;
    return mp;
}

/* A copy of the model directory in @tmp whose config.json has
 * language_config[@key] = @value (a JSON text). */
static void edited_dir(const char *tmp, const char *key, const char *value)
{
    char *src = tu_path(o_model, "config.json"), *text = test_slurp(src, NULL), *out, *p;
    cJSON *j = cJSON_Parse(text), *lc = cJSON_GetObjectItem(j, "language_config");
    FILE *f;

    cJSON_DeleteItemFromObject(lc, key);
    cJSON_AddItemToObject(lc, key, cJSON_Parse(value));
    out = cJSON_Print(j);
    p = tu_path(tmp, "config.json");
    f = fopen(p, "wb");
    fputs(out, f);
    fclose(f);
    free(p);
    free(src);
    free(text);
    free(out);
    cJSON_Delete(j);
}

static void link_file(const char *tmp, const char *name)
{
    char *from = tu_path(o_model, name), *to = tu_path(tmp, name), abs[4096];

    if (!realpath(from, abs) || symlink(abs, to) < 0) {
        fprintf(stderr, "cannot link %s\n", from);
        exit(1);
    }
    free(from);
    free(to);
}

static void expect_load_error(const char *key, const char *value, int skip_validate,
                              const char *want)
{
    char tmp[] = "/tmp/vl2-model-test-XXXXXX";
    struct vl2_model_params mp = params();
    struct vl2_model *m = NULL;
    struct vl2_err err = { 0 };
    char *p;
    int r;

    if (!mkdtemp(tmp)) {
        perror("mkdtemp");
        exit(1);
    }
    link_file(tmp, "model.safetensors");
    link_file(tmp, "processor_config.json");
    edited_dir(tmp, key, value);
    mp.skip_validate = skip_validate;
    r = vl2_model_load(&m, tmp, &mp, &err);
    printf("  %s = %s%s: %s\n", key, value, skip_validate ? " (no validation)" : "",
           r < 0 ? err.msg : "loaded");
    CHECK_MSG(r < 0 && strstr(err.msg, want), "%s = %s: expected an error naming '%s', got "
             "'%s'", key, value, want, r < 0 ? err.msg : "success");
    vl2_model_free(r < 0 ? NULL : m);
    p = tu_path(tmp, "config.json");
    unlink(p);
    free(p);
    p = tu_path(tmp, "model.safetensors");
    unlink(p);
    free(p);
    p = tu_path(tmp, "processor_config.json");
    unlink(p);
    free(p);
    rmdir(tmp);
}

static void test_model_dirs(void)
{
    struct vl2_model_params mp = params();
    struct vl2_model *m = NULL;
    struct vl2_err err = { 0 };

    printf("model directories\n");
    CHECK_MSG(vl2_model_load(&m, "/nonexistent/model", &mp, &err) < 0 && err.msg[0],
             "a missing directory is an error");
    printf("  missing directory: %s\n", err.msg);
    /* the dense layer is wider than its tensors */
    expect_load_error("intermediate_size", "256", 0, "gate_proj");
    expect_load_error("intermediate_size", "256", 1, "language.model.layers.0.mlp.gate_proj");
    /* experts the checkpoint does not have */
    expect_load_error("n_routed_experts", "10", 0, "experts.8");
    expect_load_error("n_routed_experts", "10", 1, "mlp.gate.weight");
    /* wider expert MLPs */
    expect_load_error("moe_intermediate_size", "48", 1, "shape");
    /* rotary scaling is refused, not ignored */
    expect_load_error("rope_scaling", "{\"type\": \"yarn\", \"factor\": 4.0}", 0, "rope_scaling");
}

static void test_requests(void)
{
    struct vl2_model_params mp = params();
    struct vl2_seq_params sp = vl2_seq_default_params();
    struct vl2_model *m = NULL;
    struct vl2_seq *s = NULL, *s2 = NULL;
    struct vl2_image_embed *img = NULL;
    struct vl2_err err = { 0 };
    uint8_t *tiles;
    int32_t ids[700], one = 5;
    size_t i, tile = 3 * 384 * 384;
    int r;

    printf("requests\n");
    mp.n_ctx = 600;
    r = vl2_model_load(&m, o_model, &mp, &err);
    CHECK_MSG(r == 0, "load: %s", err.msg);
    if (r < 0)
        return;

    /* sequences larger than the context (the KV budget is the engine's) */
    sp.capacity = 601;
    CHECK_MSG(vl2_seq_new(m, &sp, &s, &err) == VL2_ELIMIT, "capacity over n_ctx refused");
    printf("  capacity 601: %s\n", err.msg);
    sp.capacity = 0;
    r = vl2_seq_new(m, &sp, &s, &err);
    CHECK_MSG(r == 0, "seq: %s", err.msg);
    sp.capacity = 300;
    r = vl2_seq_new(m, &sp, &s2, &err);
    CHECK_MSG(r == 0, "a smaller sequence fits: %s", err.msg);
    vl2_seq_free(s2);
    s2 = NULL;

    /* empty prompt, prompt longer than the context */
    for (i = 0; i < 700; i++)
        ids[i] = (int32_t)(100 + i);
    CHECK_MSG(vl2_model_prefill(m, s, ids, 0, NULL, 0, &err) == VL2_EINVAL &&
             strstr(err.msg, "empty"), "empty prompt refused: %s", err.msg);
    printf("  empty prompt: %s\n", err.msg);
    CHECK_MSG(vl2_model_prefill(m, s, ids, 601, NULL, 0, &err) == VL2_ELIMIT &&
             strstr(err.msg, "601"), "prompt longer than the context refused: %s", err.msg);
    printf("  prompt of 601 tokens: %s\n", err.msg);
    CHECK_MSG(vl2_seq_len(s) == 0, "nothing changed after an error");

    /* ids outside the vocabulary */
    ids[3] = 129280;
    CHECK_MSG(vl2_model_prefill(m, s, ids, 10, NULL, 0, &err) == VL2_EINVAL &&
             strstr(err.msg, "129280"), "id past the vocabulary refused: %s", err.msg);
    printf("  id 129280: %s\n", err.msg);
    ids[3] = -4;
    CHECK_MSG(vl2_model_prefill(m, s, ids, 10, NULL, 0, &err) == VL2_EINVAL,
             "negative id refused");
    ids[3] = 103;
    CHECK_MSG(vl2_seq_len(s) == 0, "nothing changed after an error");

    /* images: wrong tile counts, images that do not fit, tag mismatches */
    tiles = calloc(3 * tile, 1);
    CHECK_MSG(vl2_model_encode_image(m, tiles, 3, 1, 1, &img, NULL, &err) == VL2_EINVAL,
             "3 tiles for a 1x1 tiling refused");
    printf("  3 tiles for 1x1: %s\n", err.msg);
    CHECK_MSG(vl2_model_encode_image(m, tiles, 0, 0, 1, &img, NULL, &err) == VL2_EINVAL,
             "0x1 tiling refused");
    r = vl2_model_encode_image(m, tiles, 2, 1, 1, &img, NULL, &err);
    CHECK_MSG(r == 0 && img->n_tokens == 421, "1x1 image: %s", err.msg);
    free(tiles);
    if (r == 0) {
        const struct vl2_image_embed *two[2] = { img, img };
        for (i = 0; i < 421; i++)
            ids[1 + i] = 128815;
        ids[0] = 0;
        for (i = 422; i < 430; i++)
            ids[i] = 100;
        CHECK_MSG(vl2_model_prefill(m, s, ids, 430, two, 2, &err) == VL2_EINVAL &&
                 strstr(err.msg, "image"), "421 placeholders for 2 images refused: %s",
                 err.msg);
        printf("  2 images for one tag: %s\n", err.msg);
        CHECK_MSG(vl2_model_prefill(m, s, ids, 430, NULL, 0, &err) == VL2_EINVAL,
                 "placeholders without images refused: %s", err.msg);
        /* two images of 421 tokens do not fit 600 */
        for (i = 422; i < 843 && i < 700; i++)
            ids[i] = 128815;
        CHECK_MSG(vl2_model_prefill(m, s, ids, 700, two, 2, &err) < 0,
                 "more image tokens than the context refused");
        printf("  two images in a context of 600: %s\n", err.msg);
        CHECK_MSG(vl2_seq_len(s) == 0, "nothing changed after an error");
        vl2_image_embed_free(m, img);
    }
    {
        /* an image larger than the whole context */
        struct vl2_model_params small = params();
        struct vl2_model *ms = NULL;
        small.n_ctx = 400;
        r = vl2_model_load(&ms, o_model, &small, &err);
        CHECK_MSG(r == 0, "load: %s", err.msg);
        if (r == 0) {
            tiles = calloc(2 * tile, 1);
            CHECK_MSG(vl2_model_encode_image(ms, tiles, 2, 1, 1, &img, NULL, &err) ==
                     VL2_ELIMIT && strstr(err.msg, "421"), "421-token image in 400 refused");
            printf("  image of 421 tokens, context 400: %s\n", err.msg);
            free(tiles);
            vl2_model_free(ms);
        }
    }

    /* decode: duplicate sequences, full caches */
    {
        struct vl2_seq *dup[2] = { s, s };
        int32_t two[2] = { 5, 6 };
        CHECK_MSG(vl2_model_decode(m, dup, two, 2, &err) == VL2_EINVAL, "duplicate refused");
        printf("  same sequence twice in a step: %s\n", err.msg);
    }
    sp.capacity = 4;
    r = vl2_seq_new(m, &sp, &s2, &err);
    CHECK_MSG(r == 0, "seq: %s", err.msg);
    if (r == 0) {
        const int32_t four[4] = { 0, 100, 101, 102 };
        r = vl2_model_prefill(m, s2, four, 4, NULL, 0, &err);
        CHECK_MSG(r == 0, "prefill 4: %s", err.msg);
        CHECK_MSG(vl2_model_decode(m, &s2, &one, 1, &err) == VL2_ELIMIT,
                 "decode into a full cache refused");
        printf("  decode past capacity: %s\n", err.msg);
        CHECK_MSG(vl2_seq_len(s2) == 4, "length unchanged");
    }
    vl2_seq_free(s2);
    vl2_seq_free(s);
    vl2_model_free(m);
}

/* A decode step of more sequences than one pass takes (max_rows) whose
 * last sequence is full: refused before any work, so no sequence moved and
 * none counted an id as seen (model.h: "on error nothing changed"). */
static void test_decode_all_or_nothing(void)
{
    enum { N = 6 };
    struct vl2_model_params mp = vl2_model_default_params();
    struct vl2_seq_params sp = vl2_seq_default_params();
    struct vl2_seq *seqs[N] = { 0 };
    struct vl2_model *m;
    struct vl2_err err = { 0 };
    const int32_t prompt[2] = { 0, 100 };
    int32_t ids[N];
    int i, r, ok = 1;

    printf("decode of %d sequences in passes of 4\n", N);
    mp.plugin_dir = o_plugin_dir;
    mp.n_threads = 1;
    mp.max_rows = 4;
    mp.n_ctx = 64;
    r = vl2_model_load(&m, o_model, &mp, &err);
    CHECK_MSG(r == 0, "load: %s", err.msg);
    if (r < 0)
        return;
    sp.sampler.penalize_prompt = 0;
    for (i = 0; i < N && ok; i++) {
        sp.capacity = i == N - 1 ? 2 : 8;
        ok = vl2_seq_new(m, &sp, &seqs[i], &err) == 0 &&
             vl2_model_prefill(m, seqs[i], prompt, 2, NULL, 0, &err) == 0;
        ids[i] = 200 + i;
    }
    CHECK_MSG(ok, "sequences: %s", err.msg);
    if (ok) {
        CHECK_MSG(vl2_model_decode(m, seqs, ids, N, &err) == VL2_ELIMIT,
                 "a full last sequence refused");
        printf("  the sixth is full: %s\n", err.msg);
        for (i = 0; i < N; i++) {
            CHECK_MSG(vl2_seq_len(seqs[i]) == 2, "sequence %d moved to %d tokens", i,
                     (int)vl2_seq_len(seqs[i]));
            CHECK_MSG(vl2_seq_sampler(seqs[i])->n_seen == 0, "sequence %d counted %d ids", i,
                     (int)vl2_seq_sampler(seqs[i])->n_seen);
        }
        /* without the full one the same step goes through, in two passes */
        r = vl2_model_decode(m, seqs, ids, N - 1, &err);
        CHECK_MSG(r == 0, "decode of %d: %s", N - 1, err.msg);
        for (i = 0; i < N - 1 && r == 0; i++)
            CHECK_MSG(vl2_seq_len(seqs[i]) == 3, "sequence %d at %d tokens", i,
                     (int)vl2_seq_len(seqs[i]));
    }
    for (i = 0; i < N; i++)
        vl2_seq_free(seqs[i]);
    vl2_model_free(m);
}

int main(int argc, char **argv)
{
    int i;

    for (i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--model"))
            o_model = argv[i + 1];
        else if (!strcmp(argv[i], "--plugin-dir"))
            o_plugin_dir = argv[i + 1];
    }
    if (!o_model) {
        fprintf(stderr, "usage: test_errors --model DIR\n");
        return 2;
    }
    test_model_dirs();
    test_requests();
    test_decode_all_or_nothing();
    if (check_failures) {
        printf("%d failures\n", check_failures);
        return 1;
    }
    printf("bad input: all checks passed\n");
    return 0;
}

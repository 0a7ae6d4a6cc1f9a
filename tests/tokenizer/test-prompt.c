/* test-prompt.c - conversation -> ids against the official processor:
 * input_ids of every golden case (tests/data/golden/<preset>/<case>), and a
 * system + 3-image + multi-turn + grounding conversation whose ids are put
 * together by hand from the rules of spec 8.4 and ids taken from the golden
 * data (tests/data/tokenizer/golden.jsonl and the golden prompts).
 *
 * usage: test-prompt TOKENIZER_DIR GOLDEN_DIR
 */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "prompt.h"
#include "tokenizer.h"

#include "../common/check.h"
#include "../common/util.h"

/* Spec 6.2: 14 x (14 + 1) + 1 + (th * 14) x (tw * 14 + 1). */
static int32_t image_tokens(int tw, int th)
{
    return 14 * 15 + 1 + (th * 14) * (tw * 14 + 1);
}

static void compare(const int32_t *got, size_t n_got, const int32_t *want, size_t n_want,
                    const char *what)
{
    size_t i = 0;

    while (i < n_got && i < n_want && got[i] == want[i])
        i++;
    CHECK_MSG(n_got == n_want && i == n_want, "%s: %zu ids, want %zu; first difference at %zu (%d, want %d)",
          what, n_got, n_want, i, i < n_got ? got[i] : -1, i < n_want ? want[i] : -1);
}

/* ---- golden cases ------------------------------------------------------ */

static void golden_case(const struct vl2_tokenizer *tok, const char *dir, const char *preset,
                        const char *name)
{
    static const char head[] = "<|User|>: ", tail[] = "\n\n<|Assistant|>:";
    char path[4096], what[128], *buf;
    cJSON *j, *it, *crop, *num;
    int32_t *want = NULL, *got = NULL, img[16];
    size_t n_want = 0, n_got = 0, n_img = 0, len;
    struct vl2_message msg;
    struct vl2_err err = { 0 };
    const char *prompt;

    snprintf(path, sizeof(path), "%s/%s/%s/input_ids.json", dir, preset, name);
    snprintf(what, sizeof(what), "%s/%s", preset, name);
    buf = test_slurp(path, NULL);
    CHECK_MSG(buf != NULL, "cannot read '%s'", path);
    if (!buf)
        return;
    j = cJSON_Parse(buf);
    free(buf);
    it = cJSON_GetObjectItem(j, "input_ids");
    want = malloc(((size_t) cJSON_GetArraySize(it) + 1) * sizeof(*want));
    cJSON_ArrayForEach(it, cJSON_GetObjectItem(j, "input_ids")) want[n_want++] = (int32_t) it->valuedouble;

    /* per-image token counts from the tiling, checked against the file */
    crop = cJSON_GetObjectItem(j, "images_spatial_crop");
    num = cJSON_GetObjectItem(j, "num_image_tokens");
    CHECK_MSG(cJSON_GetArraySize(crop) == cJSON_GetArraySize(num), "%s: crop/num", what);
    cJSON_ArrayForEach(it, crop) {
        int tw = (int) cJSON_GetArrayItem(it, 0)->valuedouble;
        int th = (int) cJSON_GetArrayItem(it, 1)->valuedouble;
        img[n_img] = image_tokens(tw, th);
        CHECK_MSG(img[n_img] == (int32_t) cJSON_GetArrayItem(num, (int) n_img)->valuedouble,
              "%s: image %zu: %d tokens for %dx%d, the file says otherwise", what, n_img,
              img[n_img], tw, th);
        n_img++;
    }

    /* the user message is what the template wraps */
    prompt = cJSON_GetStringValue(cJSON_GetObjectItem(j, "prompt_text"));
    len = prompt ? strlen(prompt) : 0;
    CHECK_MSG(prompt && len > sizeof(head) + sizeof(tail) && !strncmp(prompt, head, sizeof(head) - 1) &&
              !strcmp(prompt + len - (sizeof(tail) - 1), tail),
          "%s: unexpected prompt_text", what);
    if (prompt && len > sizeof(head) + sizeof(tail)) {
        msg = (struct vl2_message) { .role = VL2_ROLE_USER, .text = prompt + sizeof(head) - 1,
                                     .len = len - (sizeof(head) - 1) - (sizeof(tail) - 1) };
        CHECK_MSG(vl2_prompt_count_images(&msg, 1) == n_img, "%s: count_images", what);
        CHECK_MSG(vl2_prompt_build(tok, &msg, 1, img, n_img, &got, &n_got, &err) == 0, "%s: %s",
              what, err.msg);
        compare(got, n_got, want, n_want, what);
        free(got);
    }
    free(want);
    cJSON_Delete(j);
}

/* ---- hand-built conversations ------------------------------------------ */

struct ids {
    int32_t v[4096];
    size_t n;
};

static void add(struct ids *s, const int32_t *v, size_t n)
{
    memcpy(s->v + s->n, v, n * sizeof(*v));
    s->n += n;
}

#define ADD(s, ...)                                                     \
    do {                                                                \
        const int32_t v_[] = { __VA_ARGS__ };                          \
        add(s, v_, sizeof(v_) / sizeof(v_[0]));                        \
    } while (0)

static void add_image(struct ids *s, int32_t n)
{
    while (n--)
        s->v[s->n++] = 128815;
}

static void build_and_compare(const struct vl2_tokenizer *tok, const struct vl2_message *m,
                              size_t n_m, const int32_t *img, size_t n_img,
                              const struct ids *want, const char *what)
{
    struct vl2_err err = { 0 };
    int32_t *got = NULL;
    size_t n = 0;

    CHECK_MSG(vl2_prompt_build(tok, m, n_m, img, n_img, &got, &n, &err) == 0, "%s: %s", what,
          err.msg);
    compare(got, n, want->v, want->n, what);
    free(got);
}

#define MSG(r, s) { .role = (r), .text = (s), .len = sizeof(s) - 1 }

/* Ids used below, all from the golden data:
 *   BOS 0, EOS 1, <image> 128815, <|User|> 128821, <|Assistant|> 128822,
 *   <|grounding|> 128820, <|ref|> 128816, <|/ref|> 128817
 *   "<|User|>: " before an image = 128821 28 223 (":" 28, " " 223)
 *   "\nDescribe this image.\n\n<|Assistant|>:" = 201 72188 566 4609 339 128822 28
 *   "The quick brown fox jumps over the lazy dog." (golden.jsonl)
 *   "Hello, world!" = 19923 14 2058 3 (golden.jsonl)
 *   "Locate <|ref|>the cat<|/ref|> in the image" = 26751 434 223 128816 1805 7539
 *      128817 295 270 4609 (golden.jsonl, before its final ".")
 */
static void test_conversation(const struct vl2_tokenizer *tok)
{
    static const int32_t fox[] = { 671, 4787, 13769, 46012, 54994, 1060, 270, 41638, 6397, 16 };
    static const int32_t hello[] = { 19923, 14, 2058, 3 };
    static const int32_t user_colon[] = { 128821, 28, 223 };
    static const int32_t describe[] = { 201, 72188, 566, 4609, 339, 128822, 28 };
    static struct ids want;
    /* three images: no tiling, a global view + one tile each (421) */
    const int32_t img3[] = { 421, 421, 421 };

    {
        const struct vl2_message m[] = {
            MSG(VL2_ROLE_SYSTEM, " \tThe quick brown fox jumps over the lazy dog.\n"),
            MSG(VL2_ROLE_USER, "<image>\n<|grounding|>Locate <|ref|>the cat<|/ref|> in the image."),
            MSG(VL2_ROLE_ASSISTANT, "Hello, world!\n"),
            MSG(VL2_ROLE_USER, "\n<image><image>\nDescribe this image.  "),
        };
        want.n = 0;
        ADD(&want, 0);
        add(&want, fox, 10);
        add(&want, user_colon, 3);
        add_image(&want, 421);
        ADD(&want, 201, 128820, 26751, 434, 223, 128816, 1805, 7539, 128817, 295, 270, 4609,
            339, 128822, 28);
        add(&want, hello, 4);
        ADD(&want, 1);
        add(&want, user_colon, 3);
        add_image(&want, 421);
        add_image(&want, 421);
        add(&want, describe, 7);
        CHECK_MSG(vl2_prompt_count_images(m, 4) == 3, "count_images");
        build_and_compare(tok, m, 4, img3, 3, &want, "system + 3 images + 2 turns + grounding");
    }
    {   /* an empty user turn: "<|User|>:<|Assistant|>:" */
        const struct vl2_message m[] = { MSG(VL2_ROLE_USER, " \n\xE3\x80\x80") };
        want.n = 0;
        ADD(&want, 0, 128821, 28, 128822, 28);
        build_and_compare(tok, m, 1, NULL, 0, &want, "empty user message");
    }
    {   /* ending with an assistant message continues it: no EOS */
        const struct vl2_message m[] = {
            MSG(VL2_ROLE_USER, "<image>\nDescribe this image."),
            MSG(VL2_ROLE_ASSISTANT, "Hello, world!"),
        };
        const int32_t img[] = { 617 };
        want.n = 0;
        ADD(&want, 0);
        add(&want, user_colon, 3);
        add_image(&want, 617);
        add(&want, describe, 7);
        add(&want, hello, 4);
        build_and_compare(tok, m, 2, img, 1, &want, "assistant prefill");
    }
    {   /* Python's strip() takes U+3000 and U+00A0 */
        const struct vl2_message m[] = {
            MSG(VL2_ROLE_USER, "\xE3\x80\x80<image>\nDescribe this image.\xC2\xA0\n"),
        };
        const int32_t img[] = { 421 };
        want.n = 0;
        ADD(&want, 0);
        add(&want, user_colon, 3);
        add_image(&want, 421);
        add(&want, describe, 7);
        build_and_compare(tok, m, 1, img, 1, &want, "unicode whitespace stripped");
    }
}

static void expect_einval(const struct vl2_tokenizer *tok, const struct vl2_message *m,
                          size_t n_m, const int32_t *img, size_t n_img, const char *needle,
                          int line)
{
    struct vl2_err err = { 0 };
    int32_t *got = NULL;
    size_t n = 0;
    int r = vl2_prompt_build(tok, m, n_m, img, n_img, &got, &n, &err);

    if (r != VL2_EINVAL || !strstr(err.msg, needle)) {
        fprintf(stderr, "FAIL line %d: got %d '%s', want EINVAL naming '%s'\n", line, r, err.msg,
                needle);
        check_failures++;
    }
    if (r == 0)
        free(got);
}

static void test_errors(const struct vl2_tokenizer *tok)
{
    const struct vl2_message two_tags[] = { MSG(VL2_ROLE_USER, "<image> and <image>") };
    const struct vl2_message late_system[] = { MSG(VL2_ROLE_USER, "hi"),
                                               MSG(VL2_ROLE_SYSTEM, "be brief") };
    const struct vl2_message tag_in_answer[] = { MSG(VL2_ROLE_USER, "hi"),
                                                 MSG(VL2_ROLE_ASSISTANT, "<image>") };
    const struct vl2_message bad_role[] = { { .role = 7, .text = "x", .len = 1 } };
    const struct vl2_message null_text[] = { { .role = VL2_ROLE_USER, .text = NULL, .len = 3 } };
    const int32_t one[] = { 421 }, zero[] = { 0, 421 };

    expect_einval(tok, two_tags, 1, one, 1, "2 '<image>' tags for 1 images", __LINE__);
    expect_einval(tok, two_tags, 1, NULL, 0, "2 '<image>' tags for 0 images", __LINE__);
    expect_einval(tok, two_tags, 1, zero, 2, "image 0 has 0 tokens", __LINE__);
    expect_einval(tok, late_system, 2, NULL, 0, "system message must be the first", __LINE__);
    expect_einval(tok, tag_in_answer, 2, NULL, 0, "only allowed in user messages", __LINE__);
    expect_einval(tok, bad_role, 1, NULL, 0, "unknown role 7", __LINE__);
    expect_einval(tok, null_text, 1, NULL, 0, "has no text", __LINE__);
    expect_einval(tok, two_tags, 0, NULL, 0, "no message", __LINE__);
    {
        const struct vl2_message m[] = { MSG(VL2_ROLE_USER, "<image><imag<image>>"),
                                         MSG(VL2_ROLE_USER, "<<image>") };
        CHECK_MSG(vl2_prompt_count_images(m, 2) == 3, "count_images with near misses");
    }
}

int main(int argc, char **argv)
{
    static const char *const presets[] = { "micro-mha", "micro-mla", "micro-base" };
    static const char *const cases[] = { "a384", "wide", "tall", "textonly" };
    struct vl2_tokenizer *tok = NULL;
    struct vl2_err err = { 0 };
    size_t p, c;

    if (argc < 3) {
        fprintf(stderr, "usage: %s TOKENIZER_DIR GOLDEN_DIR\n", argv[0]);
        return 2;
    }
    if (vl2_tokenizer_load(&tok, argv[1], &err) < 0) {
        fprintf(stderr, "FAIL load: %s\n", err.msg);
        return 1;
    }
    for (p = 0; p < 3; p++)
        for (c = 0; c < 4; c++)
            golden_case(tok, argv[2], presets[p], cases[c]);
    test_conversation(tok);
    test_errors(tok);
    vl2_tokenizer_free(tok);
    if (check_failures)
        fprintf(stderr, "%d check_failures\n", check_failures);
    else
        printf("12 golden prompts and the hand-built conversations match\n");
    return check_failures ? 1 : 0;
}

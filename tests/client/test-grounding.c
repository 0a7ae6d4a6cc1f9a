/* test-grounding.c - vl2_grounding_parse: the README example and other known
 * outputs against pixel coordinates computed by hand with the official
 * formula int(v / 999 * W), plus every kind of malformed output. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../common/check.h"
#include "grounding.h"

struct want {
    const char *label;
    float x1, y1, x2, y2;
};

/* Parse @text on a w x h image and compare with @want (@n_want boxes). */
static void expect(int line, const char *text, int32_t w, int32_t h,
                   const struct want *want, size_t n_want)
{
    struct vl2_box *boxes = (struct vl2_box *) 0x1;
    size_t n = 12345;
    struct vl2_err err = { 0 };
    int r = vl2_grounding_parse(text, strlen(text), w, h, &boxes, &n, &err);

    CHECK_MSG(r >= 0, "line %d: parse failed: %s", line, err.msg);
    if (r < 0)
        return;
    CHECK_MSG((size_t) r == n, "line %d: returned %d, n %zu", line, r, n);
    CHECK_MSG(n == n_want, "line %d: %zu boxes, want %zu", line, n, n_want);
    CHECK_MSG((n == 0) == (boxes == NULL), "line %d: boxes %p for n %zu", line, (void *) boxes, n);
    for (size_t i = 0; i < n && i < n_want; i++) {
        CHECK_MSG(boxes[i].label && !strcmp(boxes[i].label, want[i].label),
              "line %d box %zu: label '%s', want '%s'", line, i,
              boxes[i].label ? boxes[i].label : "(null)", want[i].label);
        CHECK_MSG(boxes[i].x1 == want[i].x1 && boxes[i].y1 == want[i].y1 &&
              boxes[i].x2 == want[i].x2 && boxes[i].y2 == want[i].y2,
              "line %d box %zu: (%g,%g,%g,%g), want (%g,%g,%g,%g)", line, i,
              (double) boxes[i].x1, (double) boxes[i].y1, (double) boxes[i].x2,
              (double) boxes[i].y2, (double) want[i].x1, (double) want[i].y1,
              (double) want[i].x2, (double) want[i].y2);
    }
    vl2_boxes_free(boxes, n);
}

#define EXPECT(text, w, h, ...)                                               \
    do {                                                                      \
        static const struct want want_[] = { __VA_ARGS__ };                   \
        expect(__LINE__, text, w, h, want_, sizeof(want_) / sizeof(want_[0])); \
    } while (0)
#define EXPECT_NONE(text, w, h) expect(__LINE__, text, w, h, NULL, 0)

static void test_known_outputs(void)
{
    /* README: 1000 x 600.  x1 = int(580/999*1000) = int(580.58) = 580;
     * y1 = int(270/999*600) = int(162.16) = 162; x2 = int(999/999*1000) =
     * 1000; y2 = int(900/999*600) = int(540.54) = 540. */
    EXPECT("<|ref|>The giraffe at the back.<|/ref|><|det|>[[580, 270, 999, 900]]<|/det|>"
           "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>",
           1000, 600, { "The giraffe at the back.", 580, 162, 1000, 540 });

    /* Two boxes for one phrase on 640 x 480:
     *   int(100/999*640) = int(64.06) = 64     int(200/999*480) = int(96.10) = 96
     *   int(300/999*640) = int(192.19) = 192   int(400/999*480) = int(192.19) = 192
     *   int(0/999*640) = 0                     int(0/999*480) = 0
     *   int(500/999*640) = int(320.32) = 320   int(998/999*480) = int(479.52) = 479 */
    EXPECT("<|ref|>cat<|/ref|><|det|>[[100, 200, 300, 400], [0, 0, 500, 998]]<|/det|>",
           640, 480, { "cat", 64, 96, 192, 192 }, { "cat", 0, 0, 320, 479 });

    /* Grounded conversation: pairs inline in running text, 384 x 384:
     *   int(10/999*384) = int(3.84) = 3        int(20/999*384) = int(7.69) = 7
     *   int(30/999*384) = int(11.53) = 11      int(40/999*384) = int(15.38) = 15
     *   int(500/999*384) = int(192.19) = 192   int(999/999*384) = 384 */
    EXPECT("<|grounding|>In the picture, <|ref|>a dog<|/ref|><|det|>[[10, 20, 30, 40]]<|/det|> "
           "chases <|ref|>a ball<|/ref|><|det|>[[500,500,999,999]]<|/det|>.\nThe end.",
           384, 384, { "a dog", 3, 7, 11, 15 }, { "a ball", 192, 192, 384, 384 });

    /* Where double arithmetic differs from exact division, the official
     * formula wins: 63/999*111 = 6.999999999999999 in doubles (exactly 7 in
     * rationals), so int() gives 6.  Checked with Python's int(63/999*111). */
    EXPECT("<|ref|>x<|/ref|><|det|>[[63, 126, 252, 279]]<|/det|>", 111, 111,
           { "x", 6, 13, 27, 30 });

    /* Spaces, newlines and tabs inside the list. */
    EXPECT("<|ref|>a<|/ref|><|det|>[ [ 1 ,2,\n3 ,\t4 ] ]<|/det|>", 999, 999,
           { "a", 1, 2, 3, 4 });

    /* A single-level list is accepted too (the official code would drop it). */
    EXPECT("<|ref|>a<|/ref|><|det|>[1, 2, 3, 4]<|/det|>", 999, 999, { "a", 1, 2, 3, 4 });

    /* Degenerate but ordered boxes (x1 == x2) are kept. */
    EXPECT("<|ref|>line<|/ref|><|det|>[[5,5,5,900]]<|/det|>", 999, 999,
           { "line", 5, 5, 5, 900 });

    /* Labels kept verbatim, UTF-8 included. */
    EXPECT("<|ref|> \xe7\x8c\xab (cat) <|/ref|><|det|>[[0,0,999,999]]<|/det|>", 2, 3,
           { " \xe7\x8c\xab (cat) ", 0, 0, 2, 3 });

    /* No grounding at all. */
    EXPECT_NONE("A giraffe standing next to a tree.", 100, 100);
    EXPECT_NONE("", 100, 100);
}

static void test_many_pairs(void)
{
    /* 200 pairs "<|ref|>obj<i><|/ref|><|det|>[[i, i, i+1, i+2]]<|/det|>" on
     * 1280 x 720.  Expected pixels are the exact integer floor(v * W / 999):
     * for image sides that are not multiples of 111 this equals the official
     * double formula int(v / 999 * W) for every v in 0..999 (checked in
     * Python over all v); on multiples of 111 they can differ by one (see
     * the 111 x 111 case above and the 999 x 999 case below). */
    char *text = malloc(200 * 64);
    size_t len = 0;
    struct vl2_box *boxes = NULL;
    size_t n = 0;
    int r;

    for (int i = 0; i < 200; i++)
        len += (size_t) sprintf(text + len, "<|ref|>obj%d<|/ref|><|det|>[[%d, %d, %d, %d]]<|/det|>",
                                i, i, i, i + 1, i + 2);
    r = vl2_grounding_parse(text, len, 1280, 720, &boxes, &n, NULL);
    CHECK_MSG(r == 200 && n == 200, "r %d n %zu", r, n);
    for (size_t i = 0; i < n; i++) {
        char want[32];
        snprintf(want, sizeof(want), "obj%u", (unsigned) i);
        CHECK_STR(boxes[i].label, want);
        CHECK_MSG(boxes[i].x1 == (float) (i * 1280 / 999) && boxes[i].y1 == (float) (i * 720 / 999) &&
              boxes[i].x2 == (float) ((i + 1) * 1280 / 999) &&
              boxes[i].y2 == (float) ((i + 2) * 720 / 999),
              "box %zu: %g %g %g %g", i, (double) boxes[i].x1, (double) boxes[i].y1,
              (double) boxes[i].x2, (double) boxes[i].y2);
    }
    vl2_boxes_free(boxes, n);
    /* 999 x 999: not the identity.  Python: int(63/999*999) = 62,
     * int(126/999*999) = 125, int(504/999*999) = 503, int(509/999*999) = 508,
     * int(64/999*999) = 64. */
    CHECK_MSG(vl2_grounding_to_pixels(63, 999) == 62, "63");
    CHECK_MSG(vl2_grounding_to_pixels(126, 999) == 125, "126");
    CHECK_MSG(vl2_grounding_to_pixels(504, 999) == 503, "504");
    CHECK_MSG(vl2_grounding_to_pixels(509, 999) == 508, "509");
    CHECK_MSG(vl2_grounding_to_pixels(64, 999) == 64, "64");
    CHECK_MSG(vl2_grounding_to_pixels(1500, 10) == 10 && vl2_grounding_to_pixels(-3, 10) == 0,
          "clamped");

    /* More boxes than the limit: the first VL2_GROUNDING_MAX_BOXES come back. */
    {
        size_t cap = (VL2_GROUNDING_MAX_BOXES + 10) * 12 + 64;
        char *big = malloc(cap);
        size_t l = (size_t) sprintf(big, "<|ref|>many<|/ref|><|det|>[");
        for (int i = 0; i < VL2_GROUNDING_MAX_BOXES + 10; i++)
            l += (size_t) sprintf(big + l, "[1,2,3,4],");
        l += (size_t) sprintf(big + l, "]<|/det|>");
        r = vl2_grounding_parse(big, l, 999, 999, &boxes, &n, NULL);
        CHECK_MSG(r == VL2_GROUNDING_MAX_BOXES && n == VL2_GROUNDING_MAX_BOXES, "r %d", r);
        vl2_boxes_free(boxes, n);
        free(big);
    }
    free(text);
}

static void test_pairing(void)
{
    /* Unequal counts: the official code returns nothing; we keep the pairs
     * that are there.  A second det after one ref gets an empty label. */
    EXPECT("<|ref|>a<|/ref|><|det|>[[0,0,999,999]]<|/det|><|det|>[[0,0,999,999]]<|/det|>",
           10, 10, { "a", 0, 0, 10, 10 }, { "", 0, 0, 10, 10 });
    /* A det alone (grounded conversation without a ref). */
    EXPECT("see <|det|>[[999,0,999,0]]<|/det|>", 10, 20, { "", 10, 0, 10, 0 });
    /* A ref without a det gives nothing; the next ref replaces it. */
    EXPECT("<|ref|>lost<|/ref|> and <|ref|>kept<|/ref|><|det|>[[0,0,1,1]]<|/det|>", 999, 999,
           { "kept", 0, 0, 1, 1 });
    EXPECT_NONE("<|ref|>only a ref<|/ref|>.", 10, 10);
    /* A nested open restarts the element. */
    EXPECT("<|ref|>a<|ref|>b<|/ref|><|det|>[[0,0,1,1]]<|/det|>", 999, 999, { "b", 0, 0, 1, 1 });
    EXPECT("<|ref|>a<|/ref|><|det|>[[9,9,9,9]]<|det|>[[1,1,2,2]]<|/det|>", 999, 999,
           { "a", 1, 1, 2, 2 });
    /* Unclosed ref, unclosed det, closes without opens. */
    EXPECT_NONE("<|ref|>a<|det|>[[0,0,1,1]]", 10, 10);
    EXPECT_NONE("<|/ref|><|/det|><|/det|>", 10, 10);
    EXPECT("<|/det|><|ref|>a<|/ref|><|/ref|><|det|>[[0,0,1,1]]<|/det|><|/det|>", 999, 999,
           { "a", 0, 0, 1, 1 });
    /* A ref left open when a det starts does not label it. */
    EXPECT("<|ref|>open<|det|>[[0,0,1,1]]<|/det|>", 999, 999, { "", 0, 0, 1, 1 });
    /* Truncated tags. */
    EXPECT_NONE("<|ref|>a<|/ref|><|det|>[[0,0,1,1]]<|/de", 10, 10);
    EXPECT_NONE("<|ref|>a<|/ref|><|de", 10, 10);
    EXPECT_NONE("<", 10, 10);
}

static void test_bad_coordinates(void)
{
    /* Odd and wrong counts: that group only is dropped. */
    EXPECT("<|ref|>a<|/ref|><|det|>[[1,2,3],[1,2,3,4],[1,2,3,4,5],[]]<|/det|>", 999, 999,
           { "a", 1, 2, 3, 4 });
    /* Over 999: rejected, not clamped. */
    EXPECT_NONE("<|ref|>a<|/ref|><|det|>[[0,0,1000,5]]<|/det|>", 999, 999);
    /* Reversed corners: rejected. */
    EXPECT_NONE("<|ref|>a<|/ref|><|det|>[[5,0,4,5]]<|/det|>", 999, 999);
    EXPECT_NONE("<|ref|>a<|/ref|><|det|>[[0,5,4,4]]<|/det|>", 999, 999);
    /* Signs, fractions, exponents, hex, empty values, trailing commas. */
    EXPECT_NONE("<|ref|>a<|/ref|><|det|>[[-1,0,4,5]]<|/det|>", 999, 999);
    EXPECT_NONE("<|ref|>a<|/ref|><|det|>[[+1,0,4,5]]<|/det|>", 999, 999);
    EXPECT_NONE("<|ref|>a<|/ref|><|det|>[[1.5,0,4,5]]<|/det|>", 999, 999);
    EXPECT_NONE("<|ref|>a<|/ref|><|det|>[[1e2,0,4,5]]<|/det|>", 999, 999);
    EXPECT_NONE("<|ref|>a<|/ref|><|det|>[[0x1,0,4,5]]<|/det|>", 999, 999);
    EXPECT_NONE("<|ref|>a<|/ref|><|det|>[[1,,4,5]]<|/det|>", 999, 999);
    EXPECT_NONE("<|ref|>a<|/ref|><|det|>[[1,2,4,5,]]<|/det|>", 999, 999);
    EXPECT_NONE("<|ref|>a<|/ref|><|det|>[[1 2,3,4,5]]<|/det|>", 999, 999);
    /* Runaway digits (would overflow any integer type). */
    EXPECT_NONE("<|ref|>a<|/ref|><|det|>[[1,2,3,"
                "99999999999999999999999999999999999999999999999999999999999999]]<|/det|>",
                999, 999);
    EXPECT_NONE("<|ref|>a<|/ref|><|det|>[[1,2,3,0000000000004]]<|/det|>", 999, 999);
    /* Leading zeros within the digit limit are still numbers. */
    EXPECT("<|ref|>a<|/ref|><|det|>[[001,2,3,4]]<|/det|>", 999, 999, { "a", 1, 2, 3, 4 });
    /* Junk around and between groups is ignored; unclosed groups dropped. */
    EXPECT("<|ref|>a<|/ref|><|det|>junk [[1,2,3,4]] more [[5,6 <|/det|>", 999, 999,
           { "a", 1, 2, 3, 4 });
    EXPECT_NONE("<|ref|>a<|/ref|><|det|>]]]][[[[<|/det|>", 999, 999);
    EXPECT_NONE("<|ref|>a<|/ref|><|det|>[[a,b,c,d]]<|/det|>", 999, 999);
}

static void test_labels_and_args(void)
{
    struct vl2_box *boxes = NULL;
    size_t n = 0;
    struct vl2_err err = { 0 };
    int r;

    /* NUL bytes dropped, invalid UTF-8 replaced, long labels cut. */
    {
        static const char t[] = "<|ref|>a\0b\xff\xc3(<|/ref|><|det|>[[0,0,1,1]]<|/det|>";
        r = vl2_grounding_parse(t, sizeof(t) - 1, 999, 999, &boxes, &n, &err);
        CHECK_MSG(r == 1, "r %d", r);
        if (r == 1)
            CHECK_STR(boxes[0].label, "ab?\?(");
        vl2_boxes_free(boxes, n);
    }
    {
        size_t big = VL2_GROUNDING_MAX_LABEL * 3;
        char *t = malloc(big + 64);
        size_t l = (size_t) sprintf(t, "<|ref|>");
        for (size_t i = 0; i < big / 3; i++) {  /* U+732B, 3 bytes each */
            memcpy(t + l, "\xe7\x8c\xab", 3);
            l += 3;
        }
        l += (size_t) sprintf(t + l, "<|/ref|><|det|>[[0,0,1,1]]<|/det|>");
        r = vl2_grounding_parse(t, l, 999, 999, &boxes, &n, &err);
        CHECK_MSG(r == 1, "r %d", r);
        if (r == 1) {
            size_t ll = strlen(boxes[0].label);
            CHECK_MSG(ll <= VL2_GROUNDING_MAX_LABEL && ll % 3 == 0 && ll > VL2_GROUNDING_MAX_LABEL - 3,
                  "label length %zu", ll);
        }
        vl2_boxes_free(boxes, n);
        free(t);
    }
    /* The text need not be NUL-terminated: len is respected. */
    {
        const char *t = "<|ref|>a<|/ref|><|det|>[[0,0,1,1]]<|/det|>GARBAGE";
        r = vl2_grounding_parse(t, strlen(t) - 7 - 1, 999, 999, &boxes, &n, &err);
        CHECK_MSG(r == 0 && n == 0 && boxes == NULL, "r %d n %zu", r, n);
    }
    /* Bad arguments: an error, outputs untouched. */
    boxes = (struct vl2_box *) 0x1;
    n = 7;
    r = vl2_grounding_parse("x", 1, 0, 10, &boxes, &n, &err);
    CHECK_MSG(r == VL2_EINVAL && boxes == (struct vl2_box *) 0x1 && n == 7, "r %d", r);
    CHECK_MSG(strstr(err.msg, "image size") != NULL, "msg '%s'", err.msg);
    r = vl2_grounding_parse("x", 1, 10, -1, &boxes, &n, NULL);
    CHECK_MSG(r == VL2_EINVAL, "r %d", r);
    r = vl2_grounding_parse(NULL, 3, 10, 10, &boxes, &n, &err);
    CHECK_MSG(r == VL2_EINVAL, "r %d", r);
    r = vl2_grounding_parse("x", 1, 10, 10, NULL, &n, &err);
    CHECK_MSG(r == VL2_EINVAL, "r %d", r);
    r = vl2_grounding_parse(NULL, 0, 10, 10, &boxes, &n, &err);
    CHECK_MSG(r == 0 && n == 0 && boxes == NULL, "r %d", r);
    vl2_boxes_free(NULL, 0);

    /* Large images: no overflow (int(999/999*W) = W). */
    CHECK_MSG(vl2_grounding_to_pixels(999, INT32_MAX) == INT32_MAX, "max");
    CHECK_MSG(vl2_grounding_to_pixels(500, 100000) == 50050, "%d",
          (int) vl2_grounding_to_pixels(500, 100000));  /* 500/999*1e5 = 50050.05 */
}

int main(void)
{
    test_known_outputs();
    test_many_pairs();
    test_pairing();
    test_bad_coordinates();
    test_labels_and_args();
    if (check_failures) {
        fprintf(stderr, "%d check(s) failed\n", check_failures);
        return 1;
    }
    printf("grounding: all checks passed\n");
    return 0;
}

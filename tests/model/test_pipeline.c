/* test_pipeline.c - the request pipeline's two objects (daemon/runtime):
 * vl2_textstream (ids -> text: stop strings across ids, holdback, UTF-8
 * split across ids, the final flush, finish reasons, log-probabilities) and
 * vl2_prepare (the implicit "<image>\n", cropping only for at most two
 * images, candidate checks, limits, cancellation).
 *
 * Expected texts, ids and token counts come from tests/data/golden (the
 * micro-mha cases: an independent reference implementation); the
 * log-probability is checked against a log-softmax computed here.
 *
 * usage: test_pipeline --model CKPT_DIR (its tokenizer) --golden GOLDEN_PRESET_DIR
 *                      --images DIR
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "prepare.h"
#include "prompt.h"
#include "textstream.h"
#include "tokenizer.h"
#include "testutil.h"
#include "../common/util.h"

static const char *o_model, *o_golden, *o_images;
static struct vl2_tokenizer *tok;

/* ---- text stream -------------------------------------------------------- */

struct fed {
    char   text[1024];     /* everything shown, in order */
    size_t len;
    int    n_pushed;
};

static void show(struct fed *f, const struct vl2_ts_token *t)
{
    CHECK_MSG(f->len + t->len < sizeof(f->text), "text too long");
    if (f->len + t->len >= sizeof(f->text))
        return;
    memcpy(f->text + f->len, t->text, t->len);
    f->len += t->len;
    f->text[f->len] = '\0';
}

/* Push @ids until the stream ends; every shown text must be a prefix of
 * @want (what may still become a stop string is held back), the end equal
 * to it with finish reason @why. */
static void feed_expect(const struct vl2_textstream_params *p, const int32_t *ids, size_t n,
                        const char *want, enum vl2_ts_finish why, const char *what)
{
    struct vl2_textstream ts;
    struct vl2_err err = { 0 };
    struct fed f = { .len = 0 };
    size_t i;

    CHECK_MSG(vl2_textstream_init(&ts, p, &err) == 0, "%s: init: %s", what, err.msg);
    for (i = 0; i < n && !ts.finish; i++) {
        struct vl2_ts_token t;

        CHECK_MSG(vl2_textstream_push(&ts, ids[i], NULL, 0, &t, &err) == 0, "%s: push: %s",
                 what, err.msg);
        CHECK_MSG(t.id == ids[i] && !t.has_logprob, "%s: token %zu", what, i);
        show(&f, &t);
        CHECK_MSG(f.len <= strlen(want) && !memcmp(f.text, want, f.len),
                 "%s: after id %zu the shown text '%s' is not a prefix of '%s'", what, i,
                 f.text, want);
    }
    CHECK_MSG(ts.finish == why, "%s: finish %d, want %d", what, (int)ts.finish, (int)why);
    CHECK_MSG(!strcmp(f.text, want), "%s: text '%s', want '%s'", what, f.text, want);
    CHECK_MSG(ts.len == strlen(want) && !strcmp(ts.text ? ts.text : "", want),
             "%s: the stream's text '%s'", what, ts.text ? ts.text : "");
    CHECK_MSG(ts.n_gen == i, "%s: %zu ids counted, %zu pushed", what, ts.n_gen, i);
    vl2_textstream_done(&ts);
}

static void load_gen(const char *cas, struct tu_case *c, char **text)
{
    char dir[1024], *p, *t;
    const char *at, *end;

    snprintf(dir, sizeof(dir), "%s/%s", o_golden, cas);
    tu_case_load(c, dir);
    p = tu_path(dir, "generated.json");
    t = test_slurp(p, NULL);
    CHECK_MSG(t != NULL, "%s", p);
    /* the "text" string of generated.json: the golden files hold it without
     * escapes other than plain UTF-8 */
    at = t ? strstr(t, "\"text\": \"") : NULL;
    end = at ? strchr(at + 9, '"') : NULL;
    CHECK_MSG(at && end, "%s: no text", p);
    *text = at && end ? strndup(at + 9, (size_t)(end - at - 9)) : strdup("");
    free(p);
    free(t);
}

static void test_stream_golden(void)
{
    struct vl2_textstream_params p = { .tok = tok, .eos_id = vl2_tokenizer_eos(tok) };
    struct tu_case c;
    char *text, want[1024];
    const char *stops[3];
    const char *at;

    printf("text stream: the golden a384 answer\n");
    load_gen("a384", &c, &text);
    p.max_new = c.n_gen;
    feed_expect(&p, c.gen, c.n_gen, text, VL2_TS_LENGTH, "whole answer");
    p.max_new = 5;
    /* max_new cuts the answer: the golden text of the first 5 ids */
    {
        char *five = NULL;
        struct vl2_err err = { 0 };

        CHECK_MSG(vl2_tokenizer_decode(tok, c.gen, 5, &five, NULL, &err) == 0, "decode");
        feed_expect(&p, c.gen, c.n_gen, five ? five : "", VL2_TS_LENGTH, "five ids");
        free(five);
    }

    /* a stop string across ids ("-tax" then "мет"): cut there, nothing of it
     * shown before */
    p.max_new = c.n_gen;
    at = strstr(text, "-taxмет");
    CHECK_MSG(at != NULL, "golden text without '-taxмет'");
    if (at) {
        snprintf(want, sizeof(want), "%.*s", (int)(at - text), text);
        stops[0] = "-taxмет";
        p.stops = stops;
        p.n_stops = 1;
        feed_expect(&p, c.gen, c.n_gen, want, VL2_TS_STOP, "stop across ids");
        /* the earliest of several stop strings wins; empty ones are ignored */
        stops[1] = "";
        stops[2] = " miles";
        p.n_stops = 3;
        feed_expect(&p, c.gen, c.n_gen, want, VL2_TS_STOP, "earliest of three stops");
        /* a prefix that does not become a stop: held back, then shown */
        stops[0] = "-taxi";
        p.n_stops = 1;
        feed_expect(&p, c.gen, c.n_gen, text, VL2_TS_LENGTH, "held back, then shown");
        {
            struct vl2_textstream ts;
            struct vl2_err err = { 0 };
            struct vl2_ts_token t;
            size_t i, shown = 0, tax = (size_t)(at - text);

            vl2_textstream_init(&ts, &p, &err);
            for (i = 0; i < c.n_gen && shown <= tax; i++) {
                vl2_textstream_push(&ts, c.gen[i], NULL, 0, &t, &err);
                shown += t.len;
                if (ts.len >= tax + 4 && ts.len < tax + 5 && shown > tax)
                    CHECK_MSG(0, "'-tax' shown while it may start '-taxi'");
            }
            CHECK_MSG(shown > tax + 4, "'-tax' shown once 'мет' followed (%zu bytes)", shown);
            vl2_textstream_done(&ts);
        }
        p.n_stops = 0;
    }
    /* a stop at the very start: nothing at all */
    stops[0] = " ה";
    p.stops = stops;
    p.n_stops = 1;
    feed_expect(&p, c.gen, c.n_gen, "", VL2_TS_STOP, "stop at the start");
    free(text);
    tu_case_done(&c);
}

/* ids of @s by the tokenizer; exits when it fails */
static size_t encode(const char *s, int32_t **ret)
{
    struct vl2_err err = { 0 };
    size_t n = 0;

    if (vl2_tokenizer_encode(tok, s, strlen(s), ret, &n, &err) < 0) {
        fprintf(stderr, "encode '%s': %s\n", s, err.msg);
        exit(1);
    }
    return n;
}

static void test_stream_utf8(void)
{
    static const char *const chars[] = { "\xf0\x9f\xa6\x9c", "\xf0\x9d\x94\x98",
                                         "\xe2\xbf\xbb", "\xea\xaf\x8d" };
    struct vl2_textstream_params p = { .tok = tok, .eos_id = vl2_tokenizer_eos(tok),
                                       .max_new = 100 };
    const char *ch = NULL;
    int32_t *ids = NULL, eos = vl2_tokenizer_eos(tok);
    size_t n = 0, i;

    printf("text stream: a character split across ids\n");
    for (i = 0; i < sizeof(chars) / sizeof(chars[0]) && !ch; i++) {
        free(ids);
        n = encode(chars[i], &ids);
        if (n >= 2)
            ch = chars[i];
    }
    CHECK_MSG(ch != NULL, "no test character takes two ids");
    if (!ch) {
        free(ids);
        return;
    }
    /* whole: nothing shown until the character is complete */
    {
        struct vl2_textstream ts;
        struct vl2_err err = { 0 };
        struct vl2_ts_token t;

        vl2_textstream_init(&ts, &p, &err);
        for (i = 0; i < n; i++) {
            CHECK_MSG(vl2_textstream_push(&ts, ids[i], NULL, 0, &t, &err) == 0, "push");
            if (i + 1 < n)
                CHECK_MSG(t.len == 0 && t.send, "part %zu of the character shown (%zu bytes)",
                         i, t.len);
            else
                CHECK_MSG(t.len == strlen(ch) && !memcmp(t.text, ch, t.len),
                         "the whole character at its last id");
        }
        vl2_textstream_done(&ts);
    }
    /* cut by max_new: the held bytes become U+FFFD (the detokenizer's flush) */
    p.max_new = 1;
    feed_expect(&p, ids, n, "\xef\xbf\xbd", VL2_TS_LENGTH, "half a character, then length");
    /* ... and a stop string that this flush completes still stops the answer */
    {
        const char *stops[1] = { "\xef\xbf\xbd" };

        p.stops = stops;
        p.n_stops = 1;
        feed_expect(&p, ids, n, "", VL2_TS_STOP, "stop completed by the final flush");
        /* also at EOS, where the reason stays EOS */
        {
            int32_t two[2] = { ids[0], eos };

            p.max_new = 10;
            feed_expect(&p, two, 2, "", VL2_TS_EOS, "stop completed by the flush at EOS");
        }
        p.n_stops = 0;
    }
    /* EOS: the end (counted), nothing sent when it brings no text */
    {
        struct vl2_textstream ts;
        struct vl2_err err = { 0 };
        struct vl2_ts_token t;

        free(ids);
        n = encode("Hi", &ids);
        CHECK_MSG(n >= 1, "'Hi' has ids");
        p.max_new = 10;
        vl2_textstream_init(&ts, &p, &err);
        vl2_textstream_push(&ts, ids[0], NULL, 0, &t, &err);
        CHECK_MSG(vl2_textstream_push(&ts, eos, NULL, 0, &t, &err) == 0 && !t.send &&
                 t.len == 0 && ts.finish == VL2_TS_EOS && ts.n_gen == 2, "EOS ends it");
        CHECK_MSG(vl2_textstream_push(&ts, ids[0], NULL, 0, &t, &err) == VL2_EINVAL,
                 "a push after the end refused");
        vl2_textstream_done(&ts);
        /* ignore_eos: EOS is one more id */
        p.ignore_eos = true;
        p.max_new = 2;
        vl2_textstream_init(&ts, &p, &err);
        vl2_textstream_push(&ts, eos, NULL, 0, &t, &err);
        CHECK_MSG(ts.finish == VL2_TS_RUNNING, "EOS ignored");
        vl2_textstream_push(&ts, ids[0], NULL, 0, &t, &err);
        CHECK_MSG(ts.finish == VL2_TS_LENGTH, "then length");
        vl2_textstream_done(&ts);
    }
    free(ids);
}

static void test_stream_logprob(void)
{
    enum { V = 1000 };
    struct vl2_textstream_params p = { .tok = NULL, .eos_id = -1, .max_new = 10 };
    struct vl2_textstream ts;
    struct vl2_err err = { 0 };
    struct vl2_ts_token t;
    static float z[V];
    double mx = -INFINITY, sum = 0, want;
    int i;

    printf("text stream: log-probabilities\n");
    for (i = 0; i < V; i++) {
        z[i] = (float)(sin(i * 0.37) * 9.0 + (i == 123 ? 4.0 : 0.0));
        if (z[i] > mx)
            mx = z[i];
    }
    for (i = 0; i < V; i++)
        sum += exp((double)z[i] - mx);
    want = (double)z[123] - mx - log(sum);
    vl2_textstream_init(&ts, &p, &err);
    CHECK_MSG(vl2_textstream_push(&ts, 123, z, V, &t, &err) == 0 && t.has_logprob, "push");
    CHECK_MSG(fabs(t.logprob - want) < 1e-5, "logprob %.7f, want %.7f", t.logprob, want);
    CHECK_MSG(t.logprob == (float)vl2_logits_logprob(z, V, 123), "not vl2_logits_logprob");
    CHECK_MSG(t.len == 0 && ts.text && ts.len == 0, "no tokenizer: no text");
    /* an id outside the logits: -inf, not a read past them */
    CHECK_MSG(vl2_textstream_push(&ts, V + 5, z, V, &t, &err) == 0 && isinf(t.logprob) &&
             t.logprob < 0, "id outside the vocabulary");
    vl2_textstream_done(&ts);
    {
        const char *many[VL2_PREP_MAX_STOPS + 1];

        for (i = 0; i <= VL2_PREP_MAX_STOPS; i++)
            many[i] = "x";
        p.stops = many;
        p.n_stops = VL2_PREP_MAX_STOPS + 1;
        CHECK_MSG(vl2_textstream_init(&ts, &p, &err) == VL2_EINVAL, "17 stop strings refused");
    }
}

/* ---- prepare ---------------------------------------------------------- */

static struct vl2_prep_model pm;

struct file {
    uint8_t *data;
    size_t   size;
};

static struct file image_file(const char *name)
{
    struct file f;
    char *p = tu_path(o_images, name);

    f.data = (uint8_t *)test_slurp(p, &f.size);
    if (!f.data) {
        fprintf(stderr, "cannot read '%s'\n", p);
        exit(2);
    }
    free(p);
    return f;
}

static struct vl2_prep_request request(const struct vl2_prep_message *m, size_t n)
{
    struct vl2_prep_request rq = {
        .messages = m, .n_messages = n, .sp = vl2_sampler_default_params(), .max_new = 512,
        .max_images = VL2_PREP_DEFAULT_IMAGES, .max_image_pixels = 50000000,
        .max_image_bytes = (size_t)64 << 20, .fd_timeout_s = 10.0,
    };
    return rq;
}

struct hook_log {
    size_t done[8];
    size_t n_done;
    int    cancel_after;   /* cancelled() answers true from this call on (-1: never) */
    int    polls;
};

static void on_image_done(void *ud, size_t k, size_t n)
{
    struct hook_log *h = ud;

    (void)n;
    if (h->n_done < 8)
        h->done[h->n_done++] = k;
}

static bool on_cancelled(void *ud)
{
    struct hook_log *h = ud;

    h->polls++;
    return h->cancel_after >= 0 && h->polls > h->cancel_after;
}

static void test_prepare_golden(void)
{
    static const char *const cases[] = { "a384", "wide" };
    static const char *const files[] = { "g_a_384.jpg", "g_b_wide.png" };
    static const char *const questions[] = { "Describe this image.", "What is written here?" };
    size_t k, i;

    printf("prepare: golden prompts, the implicit <image>\\n\n");
    for (k = 0; k < 2; k++) {
        char dir[1024], tagged[256];
        struct tu_case c;
        struct file f = image_file(files[k]);
        struct vl2_prep_image im = { .data = f.data, .size = f.size, .fd = -1 };
        struct vl2_prep_message m = { .role = VL2_ROLE_USER, .images = &im, .n_images = 1 };
        struct vl2_prepared out;
        struct vl2_err err = { 0 };
        struct vl2_prep_request rq;
        int pass;

        snprintf(dir, sizeof(dir), "%s/%s", o_golden, cases[k]);
        tu_case_load(&c, dir);
        snprintf(tagged, sizeof(tagged), "<image>\n%s", questions[k]);
        /* the golden prompt has the tag; without it the same ids come */
        for (pass = 0; pass < 2; pass++) {
            m.text = pass ? questions[k] : tagged;
            rq = request(&m, 1);
            CHECK_MSG(vl2_prepare(&pm, &rq, NULL, &out, &err) == 0, "%s: %s", cases[k],
                     err.msg);
            CHECK_MSG(out.n_ids == c.n_ids, "%s pass %d: %zu ids, golden %zu", cases[k], pass,
                     out.n_ids, c.n_ids);
            for (i = 0; i < out.n_ids && i < c.n_ids; i++)
                if (out.ids[i] != c.ids[i]) {
                    CHECK_MSG(0, "%s pass %d: id %zu is %d, golden %d", cases[k], pass, i,
                             (int)out.ids[i], (int)c.ids[i]);
                    break;
                }
            CHECK_MSG(out.n_images == 1 && out.images[0].tiling.tiles_w == c.crop[0][0] &&
                     out.images[0].tiling.tiles_h == c.crop[0][1] && out.images[0].tiles,
                     "%s: tiling %dx%d, golden %dx%d", cases[k],
                     out.n_images ? out.images[0].tiling.tiles_w : 0,
                     out.n_images ? out.images[0].tiling.tiles_h : 0, c.crop[0][0],
                     c.crop[0][1]);
            CHECK_MSG(out.max_new == 512 && out.n_stops == 0, "settings");
            vl2_prepared_done(&out);
        }
        tu_case_done(&c);
        free(f.data);
    }
}

static void expect_error(const struct vl2_prep_request *rq, int code, const char *want,
                         const char *what)
{
    struct vl2_prepared out;
    struct vl2_err err = { 0 };
    int r = vl2_prepare(&pm, rq, NULL, &out, &err);

    CHECK_MSG(r == code && strstr(err.msg, want), "%s: %d '%s', want %d '%s'", what, r,
             err.msg, code, want);
    CHECK_MSG(out.ids == NULL && out.images == NULL, "%s: output left behind", what);
    printf("  %s: %s\n", what, err.msg);
}

static void test_prepare_rules(void)
{
    struct file a = image_file("g_a_384.jpg"), w = image_file("g_b_wide.png");
    struct vl2_prep_image ims[4] = {
        { .data = w.data, .size = w.size, .fd = -1 },
        { .data = a.data, .size = a.size, .fd = -1 },
        { .data = a.data, .size = a.size, .fd = -1 },
        { .data = (const uint8_t *)"not an image", .size = 12, .fd = -1, .name = "bad.png" },
    };
    struct vl2_prep_message m = { .role = VL2_ROLE_USER, .text = "Compare.", .images = ims };
    struct vl2_prep_request rq;
    struct vl2_prepared out;
    struct vl2_err err = { 0 };
    const char *stops[VL2_PREP_MAX_STOPS + 1];
    char *long_stop;
    size_t i;

    printf("prepare: cropping, limits, errors, cancellation\n");
    /* two images: cropped (wide is 3x1 = 813 tokens, golden); three: not */
    m.n_images = 2;
    rq = request(&m, 1);
    CHECK_MSG(vl2_prepare(&pm, &rq, NULL, &out, &err) == 0, "two images: %s", err.msg);
    CHECK_MSG(out.n_images == 2 && out.images[0].tiling.n_tokens == 813 &&
             out.images[1].tiling.n_tokens == 421 && out.n_image_tokens == 813 + 421,
             "two images: %d + %d tokens", out.images[0].tiling.n_tokens,
             out.images[1].tiling.n_tokens);
    vl2_prepared_done(&out);
    m.n_images = 3;
    rq = request(&m, 1);
    CHECK_MSG(vl2_prepare(&pm, &rq, NULL, &out, &err) == 0, "three images: %s", err.msg);
    CHECK_MSG(out.n_images == 3 && out.images[0].tiling.tiles_w == 1 &&
             out.images[0].tiling.n_tokens == 421, "three images: no local crop of the wide "
             "one (%d tokens)", out.n_images ? out.images[0].tiling.n_tokens : 0);
    vl2_prepared_done(&out);

    /* limits */
    rq.max_images = 2;
    expect_error(&rq, VL2_ELIMIT, "3 images, at most 2", "three images, limit 2");
    m.n_images = 1;
    rq = request(&m, 1);
    for (i = 0; i <= VL2_PREP_MAX_STOPS; i++)
        stops[i] = "x";
    rq.stops = stops;
    rq.n_stops = VL2_PREP_MAX_STOPS + 1;
    expect_error(&rq, VL2_ELIMIT, "at most 16", "17 stop strings");
    long_stop = malloc(VL2_PREP_MAX_STOP_LEN + 2);
    memset(long_stop, 'x', VL2_PREP_MAX_STOP_LEN + 1);
    long_stop[VL2_PREP_MAX_STOP_LEN + 1] = '\0';
    stops[0] = long_stop;
    rq.n_stops = 1;
    expect_error(&rq, VL2_ELIMIT, "1025 bytes", "a long stop string");
    stops[0] = "";
    stops[1] = "y";
    rq.n_stops = 2;
    CHECK_MSG(vl2_prepare(&pm, &rq, NULL, &out, &err) == 0 && out.n_stops == 1 &&
             !strcmp(out.stops[0], "y"), "empty stop strings dropped");
    vl2_prepared_done(&out);
    free(long_stop);
    rq = request(&m, 1);
    rq.sp.top_p = 2.0f;
    expect_error(&rq, VL2_EINVAL, "top_p", "top_p 2");
    {
        struct vl2_prep_model small = pm;

        size_t n_ids;

        rq = request(&m, 1);
        CHECK_MSG(vl2_prepare(&pm, &rq, NULL, &out, &err) == 0, "%s", err.msg);
        n_ids = out.n_ids;
        vl2_prepared_done(&out);
        small.n_ctx = 430;
        {
            struct vl2_prepared o2;
            int r = vl2_prepare(&small, &rq, NULL, &o2, &err);

            CHECK_MSG(r == VL2_ELIMIT && strstr(err.msg, "context holds 430"), "context: %s",
                     err.msg);
        }
        small.n_ctx = (int32_t)n_ids + 5;
        CHECK_MSG(vl2_prepare(&small, &rq, NULL, &out, &err) == 0 &&
                 out.max_new == (size_t)small.n_ctx - out.n_ids,
                 "max_new cut to the room: %zu", out.max_new);
        vl2_prepared_done(&out);
    }
    /* tags against images, roles, bad image named */
    m.text = "<image> and <image>";
    rq = request(&m, 1);
    expect_error(&rq, VL2_EINVAL, "2 '<image>' tags but 1 images", "two tags, one image");
    m.text = "x";
    m.role = 7;
    expect_error(&rq, VL2_EINVAL, "no valid role", "role 7");
    m.role = VL2_ROLE_USER;
    m.images = &ims[3];
    expect_error(&rq, VL2_EUNSUPPORTED, "bad.png: image:", "bytes that are no image");
    ims[3].name = NULL;
    expect_error(&rq, VL2_EUNSUPPORTED, "image 0 (message 0): image:",
                 "an unnamed bad image");
    m.images = ims;
    {
        int32_t ids[3] = { 0, 5, 6 };

        rq.ids = ids;
        rq.n_ids = 3;
        expect_error(&rq, VL2_EINVAL, "0 image placeholder ids, the images need 813",
                     "given ids without placeholders");
        rq.ids = NULL;
        rq.n_ids = 0;
    }
    rq.n_messages = 0;
    expect_error(&rq, VL2_EINVAL, "no messages", "no messages");

    /* hooks: each image reported once; cancellation after the first */
    {
        struct hook_log h = { .cancel_after = -1 };
        struct vl2_prep_hooks hooks = { .image_done = on_image_done,
                                        .cancelled = on_cancelled, .ud = &h };

        m.n_images = 3;
        rq = request(&m, 1);
        CHECK_MSG(vl2_prepare(&pm, &rq, &hooks, &out, &err) == 0, "hooks: %s", err.msg);
        CHECK_MSG(h.n_done == 3 && h.done[0] == 0 && h.done[2] == 2 && h.polls == 3,
                 "image_done %zu times, %d polls", h.n_done, h.polls);
        vl2_prepared_done(&out);
        memset(&h, 0, sizeof(h));
        h.cancel_after = 0;
        CHECK_MSG(vl2_prepare(&pm, &rq, &hooks, &out, &err) == VL2_ECANCELED &&
                 h.n_done == 1 && out.images == NULL, "cancelled after the first image: %d "
                 "images done", (int)h.n_done);
    }

    /* candidates */
    {
        struct vl2_prep_model c = pm;
        const int bad[2][2] = { { 384, 384 }, { 0, 768 } }, off[1][2] = { { 768, 384 } };

        CHECK_MSG(vl2_prep_model_set_candidates(&c, bad, 2, &err) == VL2_EFORMAT &&
                 strstr(err.msg, "candidate resolution 1 is not positive"), "%s", err.msg);
        printf("  a zero candidate: %s\n", err.msg);
        CHECK_MSG(vl2_prep_model_set_candidates(&c, off, 1, &err) == VL2_EUNSUPPORTED &&
                 strstr(err.msg, "differs from the vision image size 384"), "%s", err.msg);
        printf("  a first candidate of 768: %s\n", err.msg);
        CHECK_MSG(c.n_cands == pm.n_cands, "candidates kept on error");
    }
    free(a.data);
    free(w.data);
}

int main(int argc, char **argv)
{
    int cands[VL2_MAX_CANDIDATES][2];
    struct vl2_err err = { 0 };
    int i, n_cands = 0;

    for (i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--model"))
            o_model = argv[i + 1];
        else if (!strcmp(argv[i], "--golden"))
            o_golden = argv[i + 1];
        else if (!strcmp(argv[i], "--images"))
            o_images = argv[i + 1];
    }
    if (!o_model || !o_golden || !o_images) {
        fprintf(stderr, "usage: test_pipeline --model DIR --golden DIR --images DIR\n");
        return 2;
    }
    if (vl2_tokenizer_load(&tok, o_model, &err) < 0) {
        fprintf(stderr, "tokenizer: %s\n", err.msg);
        return 1;
    }
    pm.tok = tok;
    pm.image_token_id = vl2_tokenizer_id(tok, VL2_PROMPT_IMAGE_TAG);
    pm.n_ctx = 4096;
    pm.image_size = 384;
    pm.patch_size = 14;
    pm.downsample = 2;
    /* the real geometry, and the candidate resolutions of the golden
     * checkpoints' config.json */
    {
        char *p = tu_path(o_golden, "config.json"), *t = test_slurp(p, NULL);
        cJSON *j = t ? cJSON_Parse(t) : NULL, *e;

        cJSON_ArrayForEach(e, cJSON_GetObjectItem(j, "candidate_resolutions"))
            if (n_cands < VL2_MAX_CANDIDATES) {
                cands[n_cands][0] = (int)cJSON_GetArrayItem(e, 0)->valuedouble;
                cands[n_cands][1] = (int)cJSON_GetArrayItem(e, 1)->valuedouble;
                n_cands++;
            }
        cJSON_Delete(j);
        free(t);
        free(p);
    }
    CHECK_MSG(n_cands == 23, "%d candidate resolutions in the golden config", n_cands);
    if (vl2_prep_model_set_candidates(&pm, (const int (*)[2])cands, n_cands, &err) < 0) {
        fprintf(stderr, "candidates: %s\n", err.msg);
        return 1;
    }
    test_stream_golden();
    test_stream_utf8();
    test_stream_logprob();
    test_prepare_golden();
    test_prepare_rules();
    vl2_tokenizer_free(tok);
    if (check_failures) {
        printf("%d failures\n", check_failures);
        return 1;
    }
    printf("pipeline: all checks passed\n");
    return 0;
}

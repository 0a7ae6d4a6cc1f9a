/* test_seq_reuse.c - a sequence that starts from another's prompt
 * (vl2_seq_copy_prefix, vl2_seq_reuse: the engine's prefix cache) computes
 * what a fresh sequence fed the same passes computes, bitwise on the f32 CPU
 * path: the logits of the next pass, the sampler's repetition set (with
 * penalize_prompt) and its choice; bad calls are refused and change
 * nothing.  The fresh prefill is anchored to the golden textonly logits.
 *
 * usage: test_seq_reuse --model CKPT_DIR --golden GOLDEN_PRESET_DIR
 *                       [--plugin-dir DIR] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/check.h"
#include "model.h"
#include "testutil.h"

#define N_IDS 48
#define KEEP 16
#define TOL 1e-3

static struct vl2_model *m;
static int32_t p_ids[N_IDS], q_ids[N_IDS];
static size_t n_text;                   /* the golden textonly prompt */
static struct vl2_npy golden_logits;

static struct vl2_seq *new_seq(int32_t cap, float penalty)
{
    struct vl2_seq_params sp = vl2_seq_default_params();
    struct vl2_err err = { 0 };
    struct vl2_seq *s = NULL;

    sp.capacity = cap;
    sp.sampler.repetition_penalty = penalty;
    if (vl2_seq_new(m, &sp, &s, &err) < 0) {
        fprintf(stderr, "FAIL seq: %s\n", err.msg);
        exit(1);
    }
    return s;
}

/* Feed ids[a, b) to @s in one pass, with logits. */
static void feed(struct vl2_seq *s, const int32_t *ids, int32_t a, int32_t b)
{
    struct vl2_step_item it = { .seq = s, .ids = ids + a, .n_ids = b - a, .want_logits = 1 };
    struct vl2_err err = { 0 };

    if (vl2_model_step(m, &it, 1, &err) < 0) {
        fprintf(stderr, "FAIL step: %s\n", err.msg);
        exit(1);
    }
}

static bool same_logits(const struct vl2_seq *a, const struct vl2_seq *b)
{
    return !memcmp(vl2_seq_logits(a), vl2_seq_logits(b),
                   (size_t) vl2_model_config(m)->lm.n_vocab * sizeof(float));
}

static bool same_seen(struct vl2_seq *a, struct vl2_seq *b)
{
    const struct vl2_sampler *x = vl2_seq_sampler(a), *y = vl2_seq_sampler(b);

    return x->n_seen == y->n_seen &&
           !memcmp(x->seen_list, y->seen_list, (size_t) x->n_seen * sizeof(int32_t));
}

static void test_fresh_is_golden(void)
{
    struct vl2_seq *s = new_seq(N_IDS, 1.0f);
    size_t V = (size_t) vl2_model_config(m)->lm.n_vocab;
    struct vl2_npy row = golden_logits;     /* row 0: at the prompt's last id */

    feed(s, p_ids, 0, (int32_t) n_text);
    row.count = V;
    tu_compare("textonly logits", vl2_seq_logits(s), &row, V, TOL);
    vl2_seq_free(s);
}

static void test_copy_and_reuse(void)
{
    const float penalty = 1.5f;
    struct vl2_seq *fresh = new_seq(N_IDS, penalty), *donor = new_seq(N_IDS, penalty);
    struct vl2_seq *copy = new_seq(N_IDS - 8, penalty), *taken = new_seq(N_IDS, 1.0f);
    struct vl2_seq_params sp = vl2_seq_default_params();
    struct vl2_err err = { 0 };

    /* the fresh computation of Q: passes [0, KEEP), [KEEP, N_IDS - 8) */
    feed(fresh, q_ids, 0, KEEP);
    feed(fresh, q_ids, KEEP, N_IDS - 8);
    /* a donor that was fed P (same first KEEP ids, in the same first pass) */
    feed(donor, p_ids, 0, KEEP);
    feed(donor, p_ids, KEEP, N_IDS);
    CHECK(vl2_seq_copy_prefix(copy, donor, q_ids, KEEP, &err) == 0);
    CHECK_EQ_INT(vl2_seq_len(copy), KEEP);
    feed(copy, q_ids, KEEP, N_IDS - 8);
    CHECK_MSG(same_logits(copy, fresh), "copied prefix: logits differ");
    CHECK_MSG(same_seen(copy, fresh), "copied prefix: repetition sets differ");
    CHECK_EQ_INT(vl2_seq_sample(copy), vl2_seq_sample(fresh));

    /* take the donor over (another request's params: the penalty) */
    feed(taken, p_ids, 0, KEEP);
    feed(taken, p_ids, KEEP, N_IDS);
    sp.sampler.repetition_penalty = penalty;
    sp.capacity = N_IDS;
    CHECK(vl2_seq_reuse(taken, &sp, q_ids, KEEP, &err) == 0);
    CHECK_EQ_INT(vl2_seq_len(taken), KEEP);
    feed(taken, q_ids, KEEP, N_IDS - 8);
    CHECK_MSG(same_logits(taken, donor) == false, "the reused sequence is not the donor's");
    vl2_seq_free(fresh);
    fresh = new_seq(N_IDS, penalty);
    feed(fresh, q_ids, 0, KEEP);
    feed(fresh, q_ids, KEEP, N_IDS - 8);
    CHECK_MSG(same_logits(taken, fresh), "reused sequence: logits differ");
    CHECK_MSG(same_seen(taken, fresh), "reused sequence: repetition sets differ");
    CHECK_EQ_INT(vl2_seq_sample(taken), vl2_seq_sample(fresh));

    /* refusals change nothing */
    /* into a sequence that is not empty, onto itself, past the length, a
     * capacity larger than the sequence's */
    CHECK_ERR(vl2_seq_copy_prefix(copy, donor, q_ids, KEEP, &err), &err, VL2_EINVAL,
              "model:");
    CHECK_ERR(vl2_seq_copy_prefix(copy, copy, q_ids, KEEP, &err), &err, VL2_EINVAL, "model:");
    CHECK_ERR(vl2_seq_reuse(taken, &sp, q_ids, N_IDS, &err), &err, VL2_EINVAL, "model:");
    sp.capacity = N_IDS + 1;
    CHECK_ERR(vl2_seq_reuse(taken, &sp, q_ids, 4, &err), &err, VL2_EINVAL, "model:");
    CHECK_EQ_INT(vl2_seq_len(taken), N_IDS - 8);
    {
        struct vl2_seq *small = new_seq(8, 1.0f);

        CHECK_ERR(vl2_seq_copy_prefix(small, donor, q_ids, KEEP, &err), &err, VL2_EINVAL,
                  "model:");
        CHECK_EQ_INT(vl2_seq_len(small), 0);
        vl2_seq_free(small);
    }
    vl2_seq_free(fresh);
    vl2_seq_free(donor);
    vl2_seq_free(copy);
    vl2_seq_free(taken);
}

int main(int argc, char **argv)
{
    struct vl2_model_params mp = vl2_model_default_params();
    const char *model = NULL, *golden = NULL, *plugin_dir = NULL;
    struct vl2_err err = { 0 };
    struct tu_case c;
    int i;

    for (i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--model"))
            model = argv[i + 1];
        else if (!strcmp(argv[i], "--golden"))
            golden = argv[i + 1];
        else if (!strcmp(argv[i], "--plugin-dir"))
            plugin_dir = argv[i + 1];
    }
    if (!model || !golden) {
        fprintf(stderr, "usage: test_seq_reuse --model DIR --golden DIR [--plugin-dir DIR]\n");
        return 2;
    }
    mp.plugin_dir = plugin_dir;
    mp.n_threads = 2;
    if (vl2_model_load(&m, model, &mp, &err) < 0) {
        fprintf(stderr, "FAIL load: %s\n", err.msg);
        return 1;
    }
    {
        char *dir = tu_path(golden, "textonly");

        tu_case_load(&c, dir);
        tu_npy_load(&golden_logits, dir, "logits.npy");
        free(dir);
    }
    n_text = c.n_ids < N_IDS ? c.n_ids : N_IDS;
    /* P: the golden prompt, then ids of its own; Q: P's first KEEP ids, then
     * other ids (seen ones repeated, so that the penalty matters) */
    for (i = 0; i < N_IDS; i++) {
        p_ids[i] = (size_t) i < n_text ? c.ids[i] : (int32_t) (1000 + 37 * i);
        q_ids[i] = i < KEEP ? p_ids[i] : p_ids[(i * 5) % KEEP] + (i % 3 == 0 ? 0 : 2 * i);
    }
    RUN(test_fresh_is_golden);
    RUN(test_copy_and_reuse);
    tu_case_done(&c);
    vl2_model_free(m);
    return check_report("test_seq_reuse");
}

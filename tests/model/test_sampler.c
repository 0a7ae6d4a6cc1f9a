/* test_sampler.c - sampler semantics (spec 10.2) on small hand-computed
 * examples, seeded reproducibility, sampling frequencies, stop strings. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sampler.h"
#include "testutil.h"

static struct vl2_sampler mk(int32_t V, float temp, int32_t top_k, float top_p, float pen,
                             uint64_t seed)
{
    struct vl2_sampler_params p = vl2_sampler_default_params();
    struct vl2_sampler s;
    struct vl2_err err = { 0 };

    p.temperature = temp;
    p.top_k = top_k;
    p.top_p = top_p;
    p.repetition_penalty = pen;
    p.seed = seed;
    if (vl2_sampler_init(&s, &p, V, &err) < 0) {
        fprintf(stderr, "init: %s\n", err.msg);
        exit(1);
    }
    return s;
}

/* Which entries survive processing (finite) as a bit mask. */
static unsigned kept(struct vl2_sampler *s, const float *z0, int V)
{
    float z[16];
    unsigned mask = 0;
    int i;

    memcpy(z, z0, (size_t)V * sizeof(*z));
    vl2_sampler_process(s, z);
    for (i = 0; i < V; i++)
        if (z[i] > -INFINITY)
            mask |= 1u << i;
    return mask;
}

static void test_penalty(void)
{
    /* z < 0 is multiplied, z > 0 divided; only seen ids; each once */
    const float z0[4] = { 2.0f, 1.9f, -1.0f, 0.5f };
    struct vl2_sampler s = mk(4, 0.0f, 0, 1.0f, 1.25f, 0);
    float z[4];

    CHECK_MSG(vl2_sampler_sample(&s, z0) == 0, "greedy without seen ids picks 0");
    vl2_sampler_accept(&s, 0);
    vl2_sampler_accept(&s, 0);
    vl2_sampler_accept(&s, 2);
    vl2_sampler_accept(&s, 99);  /* outside the vocabulary: ignored */
    memcpy(z, z0, sizeof(z));
    vl2_sampler_process(&s, z);
    CHECK_MSG(fabsf(z[0] - 1.6f) < 1e-6f, "penalty divides a positive logit: %g", z[0]);
    CHECK_MSG(z[1] == 1.9f && z[3] == 0.5f, "unseen ids unchanged");
    CHECK_MSG(fabsf(z[2] + 1.25f) < 1e-6f, "penalty multiplies a negative logit: %g", z[2]);
    /* greedy is argmax after the penalty: 1.9 > 1.6 */
    CHECK_MSG(vl2_sampler_sample(&s, z0) == 1, "greedy after penalty picks 1");
    vl2_sampler_reset(&s);
    CHECK_MSG(vl2_sampler_sample(&s, z0) == 0, "reset forgets seen ids");
    vl2_sampler_done(&s);
}

static void test_temperature_topk(void)
{
    const float z0[5] = { 1.0f, 3.0f, 2.0f, 2.0f, -5.0f };
    struct vl2_sampler s;
    float z[5];

    s = mk(5, 2.0f, 0, 1.0f, 1.0f, 0);
    memcpy(z, z0, sizeof(z));
    vl2_sampler_process(&s, z);
    CHECK_MSG(z[0] == 0.5f && z[1] == 1.5f && z[4] == -2.5f, "temperature divides");
    vl2_sampler_done(&s);

    /* top-k keeps values >= the k-th largest: ties at the threshold kept */
    s = mk(5, 1.0f, 1, 1.0f, 1.0f, 0);
    CHECK_MSG(kept(&s, z0, 5) == 0x02, "top-1 keeps {1}: %#x", kept(&s, z0, 5));
    vl2_sampler_done(&s);
    s = mk(5, 1.0f, 2, 1.0f, 1.0f, 0);
    CHECK_MSG(kept(&s, z0, 5) == 0x0e, "top-2 keeps {1,2,3} (tie at 2.0): %#x",
             kept(&s, z0, 5));
    vl2_sampler_done(&s);
    s = mk(5, 1.0f, 4, 1.0f, 1.0f, 0);
    CHECK_MSG(kept(&s, z0, 5) == 0x0f, "top-4 keeps {0,1,2,3}: %#x", kept(&s, z0, 5));
    vl2_sampler_done(&s);
    s = mk(5, 1.0f, 50, 1.0f, 1.0f, 0);
    CHECK_MSG(kept(&s, z0, 5) == 0x1f, "top-50 of 5 keeps all");
    vl2_sampler_done(&s);
}

static void test_topp(void)
{
    /* probabilities 0.5 0.3 0.15 0.05: ascending cumulative 0.05 0.2 0.5 1 */
    float z0[4];
    struct vl2_sampler s;

    z0[0] = logf(0.5f);
    z0[1] = logf(0.3f);
    z0[2] = logf(0.15f);
    z0[3] = logf(0.05f);
    s = mk(4, 1.0f, 0, 0.9f, 1.0f, 0);      /* drop cum <= 0.1 */
    CHECK_MSG(kept(&s, z0, 4) == 0x7, "top-p 0.9 keeps {0,1,2}: %#x", kept(&s, z0, 4));
    vl2_sampler_done(&s);
    s = mk(4, 1.0f, 0, 0.75f, 1.0f, 0);     /* drop cum <= 0.25 */
    CHECK_MSG(kept(&s, z0, 4) == 0x3, "top-p 0.75 keeps {0,1}: %#x", kept(&s, z0, 4));
    vl2_sampler_done(&s);
    s = mk(4, 1.0f, 0, 0.01f, 1.0f, 0);     /* always keeps the largest */
    CHECK_MSG(kept(&s, z0, 4) == 0x1, "top-p 0.01 keeps {0}: %#x", kept(&s, z0, 4));
    vl2_sampler_done(&s);

    /* top-p acts on the distribution left by top-k (renormalised):
     * 0.4 0.3 0.2 0.1 with k = 3 -> 0.444 0.333 0.222; top_p 0.75 drops
     * cum <= 0.25, i.e. id 2 (0.222); over all four it would keep id 2. */
    z0[0] = logf(0.4f);
    z0[1] = logf(0.3f);
    z0[2] = logf(0.2f);
    z0[3] = logf(0.1f);
    s = mk(4, 1.0f, 3, 0.75f, 1.0f, 0);
    CHECK_MSG(kept(&s, z0, 4) == 0x3, "top-k 3 then top-p 0.75 keeps {0,1}: %#x",
             kept(&s, z0, 4));
    vl2_sampler_done(&s);
    s = mk(4, 1.0f, 0, 0.75f, 1.0f, 0);
    CHECK_MSG(kept(&s, z0, 4) == 0x7, "top-p 0.75 alone keeps {0,1,2}: %#x", kept(&s, z0, 4));
    vl2_sampler_done(&s);

    /* temperature applies before top-p: T = 0.5 squares the probabilities
     * (0.16 0.09 0.04 0.01)/0.3 = 0.533 0.3 0.133 0.033; top_p 0.8 drops
     * cum <= 0.2: ids 3 and 2 (0.033, 0.167). */
    s = mk(4, 0.5f, 0, 0.8f, 1.0f, 0);
    CHECK_MSG(kept(&s, z0, 4) == 0x3, "T 0.5 then top-p 0.8 keeps {0,1}: %#x", kept(&s, z0, 4));
    vl2_sampler_done(&s);
    /* the penalty applies before everything: id 0 penalised by 4 ->
     * logit log(0.4)*4 = -3.67 < log(0.1) -> greedy picks 1 */
    s = mk(4, 0.0f, 0, 1.0f, 4.0f, 0);
    vl2_sampler_accept(&s, 0);
    CHECK_MSG(vl2_sampler_sample(&s, z0) == 1, "penalised greedy picks 1");
    vl2_sampler_done(&s);
}

static void test_draws(void)
{
    const float z0[3] = { logf(0.5f), logf(0.3f), logf(0.2f) };
    struct vl2_sampler a = mk(3, 1.0f, 0, 1.0f, 1.0f, 42), b = mk(3, 1.0f, 0, 1.0f, 1.0f, 42);
    struct vl2_sampler c = mk(3, 1.0f, 0, 1.0f, 1.0f, 43);
    int count[3] = { 0 }, i, same_ab = 1, same_ac = 1;
    const int N = 20000;

    for (i = 0; i < N; i++) {
        int32_t x = vl2_sampler_sample(&a, z0), y = vl2_sampler_sample(&b, z0);
        int32_t z = vl2_sampler_sample(&c, z0);
        CHECK_MSG(x >= 0 && x < 3, "id in range");
        if (x < 0 || x > 2)
            break;
        count[x]++;
        same_ab &= x == y;
        same_ac &= x == z;
    }
    CHECK_MSG(same_ab, "the same seed gives the same draws");
    CHECK_MSG(!same_ac, "another seed gives other draws");
    for (i = 0; i < 3; i++) {
        double f = (double)count[i] / N, want = exp((double)z0[i]);
        CHECK_MSG(fabs(f - want) < 0.015, "id %d drawn with frequency %.3f, expected %.3f", i, f,
                 want);
    }
    vl2_sampler_done(&a);
    vl2_sampler_done(&b);
    vl2_sampler_done(&c);

    /* top-k 1 sampling is deterministic */
    a = mk(3, 0.7f, 1, 1.0f, 1.0f, 7);
    for (i = 0; i < 100; i++)
        CHECK_MSG(vl2_sampler_sample(&a, z0) == 0, "top-1 sampling picks the arg-max");
    vl2_sampler_done(&a);
}

static void test_logprob(void)
{
    const float z[3] = { logf(0.5f), logf(0.3f), logf(0.2f) };
    const float big[2] = { 1000.0f, 999.0f };

    CHECK_MSG(fabs(vl2_logits_logprob(z, 3, 1) - log(0.3)) < 1e-6, "log p(1) = log 0.3");
    CHECK_MSG(fabs(vl2_logits_logprob(big, 2, 1) - (-1.0 - log(1.0 + exp(-1.0)))) < 1e-9,
             "large logits do not overflow");
    CHECK_MSG(isinf(vl2_logits_logprob(z, 3, 3)), "id past the end");
}

/* The naive reference of vl2_logits_top: every id sorted by (logit
 * descending, id ascending), probabilities summed in long double. */
static const float *ref_z;

static int ref_cmp(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;

    if (ref_z[x] != ref_z[y])
        return ref_z[x] > ref_z[y] ? -1 : 1;
    return x < y ? -1 : x > y;
}

static void check_top(const float *z, int32_t n, size_t k, const char *what)
{
    int32_t *all = malloc((size_t)n * sizeof(*all)), ids[24];
    double lp[24];
    long double sum = 0.0L;
    size_t got, want = k < (size_t)n ? k : (size_t)n, i;
    int32_t j;

    for (j = 0; j < n; j++) {
        all[j] = j;
        sum += expl((long double)z[j]);
    }
    ref_z = z;
    qsort(all, (size_t)n, sizeof(*all), ref_cmp);
    got = vl2_logits_top(z, n, k, ids, lp);
    CHECK_MSG(got == want, "%s: %zu alternatives, want %zu", what, got, want);
    for (i = 0; i < got && i < want; i++) {
        double ref = (double)((long double)z[all[i]] - logl(sum));
        CHECK_MSG(ids[i] == all[i], "%s: rank %zu is id %d, want %d", what, i, ids[i], all[i]);
        CHECK_MSG(fabs(lp[i] - ref) < 1e-9, "%s: rank %zu logprob %.12f, want %.12f", what, i,
                  lp[i], ref);
        CHECK_MSG(lp[i] == vl2_logits_logprob(z, n, ids[i]), "%s: rank %zu differs from "
                  "vl2_logits_logprob", what, i);
    }
    free(all);
}

static void test_logits_top(void)
{
    const float z[6] = { 0.5f, 2.0f, -1.0f, 2.0f, 0.5f, 3.0f };
    float r[5000];
    int32_t ids[4];
    double lp[4];
    int32_t j;
    uint64_t x = 88172645463325252ULL;

    check_top(z, 6, 1, "small k=1");
    check_top(z, 6, 4, "small ties");       /* 5, 1, 3, 0: equal logits by lower id */
    check_top(z, 6, 6, "small all");
    check_top(z, 6, 20, "k over n");
    CHECK_MSG(vl2_logits_top(z, 6, 0, ids, lp) == 0, "k = 0 fills nothing");
    for (j = 0; j < 5000; j++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        /* few distinct values: many ties */
        r[j] = (float)(x % 97) * 0.25f - 12.0f;
    }
    check_top(r, 5000, 20, "random with ties");
    for (j = 0; j < 5000; j++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        r[j] = (float)((double)(x >> 11) / 9007199254740992.0 * 40.0 - 20.0);
    }
    check_top(r, 5000, 20, "random");
    check_top(r, 5000, 7, "random k=7");
}

static void test_params(void)
{
    struct vl2_sampler_params p = vl2_sampler_default_params();
    struct vl2_err err = { 0 };

    CHECK_MSG(vl2_sampler_check_params(&p, &err) == 0, "defaults are valid");
    p.temperature = -1.0f;
    CHECK_MSG(vl2_sampler_check_params(&p, &err) == VL2_EINVAL && strstr(err.msg, "temperature"),
             "negative temperature refused: %s", err.msg);
    p = vl2_sampler_default_params();
    p.top_p = 0.0f;
    CHECK_MSG(vl2_sampler_check_params(&p, &err) == VL2_EINVAL && strstr(err.msg, "top_p"),
             "top_p 0 refused");
    p.top_p = 1.5f;
    CHECK_MSG(vl2_sampler_check_params(&p, &err) == VL2_EINVAL, "top_p 1.5 refused");
    p = vl2_sampler_default_params();
    p.top_k = -3;
    CHECK_MSG(vl2_sampler_check_params(&p, &err) == VL2_EINVAL, "top_k -3 refused");
    p = vl2_sampler_default_params();
    p.repetition_penalty = 0.0f;
    CHECK_MSG(vl2_sampler_check_params(&p, &err) == VL2_EINVAL && strstr(err.msg, "penalty"),
             "penalty 0 refused");
    p.repetition_penalty = NAN;
    CHECK_MSG(vl2_sampler_check_params(&p, &err) == VL2_EINVAL, "penalty NaN refused");
}

static void test_stops(void)
{
    const char *stops[] = { "User:", "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>", "" };
    const char *t = "Hello there. User: more";

    CHECK_MSG(vl2_stop_find(t, strlen(t), stops, 3) == 13, "stop at 13: %ld",
             vl2_stop_find(t, strlen(t), stops, 3));
    CHECK_MSG(vl2_stop_find("no stop", 7, stops, 3) == -1, "no stop");
    CHECK_MSG(vl2_stop_find("Use", 3, stops, 3) == -1, "prefix is not a stop");
    CHECK_MSG(vl2_stop_holdback("abc Us", 6, stops, 3) == 2, "hold back 'Us'");
    CHECK_MSG(vl2_stop_holdback("abc User", 8, stops, 3) == 4, "hold back 'User'");
    CHECK_MSG(vl2_stop_holdback("abc", 3, stops, 3) == 0, "nothing to hold back");
    CHECK_MSG(vl2_stop_holdback("x<\xef\xbd", 4, stops, 3) == 3, "hold back a partial EOS");
}

/* Greedy picks the first largest logit, compared with a plain scan, on
 * vocabulary sizes around the vectorised block width, with ties placed
 * before, inside and after a block boundary and the maximum in the tail. */
static void test_greedy_argmax(void)
{
    static const int32_t sizes[] = { 1, 2, 15, 16, 17, 31, 32, 33, 100, 129280, 102401 };
    uint64_t x = 12345;
    size_t k;

    for (k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
        int32_t V = sizes[k], i, trial;
        float *z = malloc((size_t)V * sizeof(*z));
        struct vl2_sampler s = mk(V, 0.0f, 0, 1.0f, 1.0f, 1);

        for (trial = 0; trial < 6; trial++) {
            int32_t want = 0, pos;
            for (i = 0; i < V; i++) {
                x = x * 6364136223846793005ull + 1442695040888963407ull;
                z[i] = (float)((x >> 40) % 1000) / 10.0f - 50.0f;
            }
            pos = (int32_t)((x >> 20) % (uint64_t)V);
            if (trial == 1)
                z[V - 1] = 1000.0f;                 /* maximum in the tail */
            if (trial >= 2) {                        /* ties at the maximum */
                z[pos] = 500.0f;
                z[(pos + 16 * trial) % V] = 500.0f;
                z[V - 1 - pos] = 500.0f;
            }
            for (i = 1; i < V; i++)
                if (z[i] > z[want])
                    want = i;
            CHECK_MSG(vl2_sampler_sample(&s, z) == want, "greedy V=%d trial %d: want %d",
                     V, trial, want);
        }
        /* NaN never wins (one in column 1, where lane 1 starts, with the
         * maximum later in that lane; one in the middle); a row starting
         * with NaN gives 0 */
        if (V >= 3) {
            int32_t want = 0;
            for (i = 0; i < V; i++)
                z[i] = (float)(i % 7);
            z[V >= 48 ? 33 : V - 1] = 100.0f;
            z[1] = NAN;
            z[V / 2] = NAN;
            for (i = 1; i < V; i++)
                if (z[i] > z[want])
                    want = i;
            CHECK_MSG(want == (V >= 48 ? 33 : V - 1) && vl2_sampler_sample(&s, z) == want,
                     "greedy V=%d with NaN: want %d", V, want);
            z[0] = NAN;
            CHECK_MSG(vl2_sampler_sample(&s, z) == 0, "greedy V=%d starting with NaN", V);
        }
        vl2_sampler_done(&s);
        free(z);
    }
}

int main(void)
{
    test_penalty();
    test_greedy_argmax();
    test_temperature_topk();
    test_topp();
    test_draws();
    test_params();
    test_stops();
    test_logprob();
    test_logits_top();
    if (check_failures) {
        printf("%d failures\n", check_failures);
        return 1;
    }
    printf("sampler: all checks passed\n");
    return 0;
}

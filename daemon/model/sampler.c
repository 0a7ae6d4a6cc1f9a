/* sampler.c - repetition penalty, temperature, top-k, top-p, seeded draw
 * (see sampler.h for the exact semantics). */
#include "sampler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct vl2_sampler_params vl2_sampler_default_params(void)
{
    struct vl2_sampler_params p = {
        .temperature = 0.0f,
        .top_k = 0,
        .top_p = 1.0f,
        .repetition_penalty = 1.0f,
        .penalize_prompt = 1,
        .seed = 0,
    };
    return p;
}

int vl2_sampler_check_params(const struct vl2_sampler_params *p, struct vl2_err *err)
{
    if (!(p->temperature >= 0.0f) || isinf(p->temperature))
        return vl2_err_set(err, VL2_EINVAL, "sampler: temperature %g: must be a finite "
                           "number >= 0", (double)p->temperature);
    if (p->top_k < 0)
        return vl2_err_set(err, VL2_EINVAL, "sampler: top_k %d: must be >= 0", (int)p->top_k);
    if (!(p->top_p > 0.0f && p->top_p <= 1.0f))
        return vl2_err_set(err, VL2_EINVAL, "sampler: top_p %g: must be in (0, 1]",
                           (double)p->top_p);
    if (!(p->repetition_penalty > 0.0f) || isinf(p->repetition_penalty))
        return vl2_err_set(err, VL2_EINVAL, "sampler: repetition penalty %g: must be a "
                           "finite number > 0", (double)p->repetition_penalty);
    return 0;
}

/* ---- RNG: xoshiro256** seeded through splitmix64 ------------------------- */

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t next_u64(uint64_t *s)
{
    uint64_t r = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;

    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return r;
}

double vl2_sampler_uniform(struct vl2_sampler *s)
{
    return (double)(next_u64(s->rng) >> 11) * (1.0 / 9007199254740992.0);
}

/* ---- lifetime --------------------------------------------------------------- */

int vl2_sampler_init(struct vl2_sampler *s, const struct vl2_sampler_params *p,
                     int32_t n_vocab, struct vl2_err *err)
{
    uint64_t x;
    int r, i;

    memset(s, 0, sizeof(*s));
    r = vl2_sampler_check_params(p, err);
    if (r < 0)
        return r;
    if (n_vocab <= 0)
        return vl2_err_set(err, VL2_EINVAL, "sampler: vocabulary size %d", (int)n_vocab);
    s->p = *p;
    s->n_vocab = n_vocab;
    s->seen = calloc((size_t)n_vocab, 1);
    s->seen_list = malloc((size_t)n_vocab * sizeof(*s->seen_list));
    s->z = malloc((size_t)n_vocab * sizeof(*s->z));
    s->tmp = malloc((size_t)n_vocab * sizeof(*s->tmp));
    s->idx = malloc((size_t)n_vocab * sizeof(*s->idx));
    s->pairs = malloc((size_t)n_vocab * sizeof(*s->pairs));
    if (!s->seen || !s->seen_list || !s->z || !s->tmp || !s->idx || !s->pairs) {
        vl2_sampler_done(s);
        return vl2_err_set(err, VL2_ENOMEM, "sampler: out of memory for %d ids", (int)n_vocab);
    }
    x = p->seed;
    for (i = 0; i < 4; i++)
        s->rng[i] = splitmix64(&x);
    return 0;
}

void vl2_sampler_done(struct vl2_sampler *s)
{
    if (!s)
        return;
    free(s->seen);
    free(s->seen_list);
    free(s->z);
    free(s->tmp);
    free(s->idx);
    free(s->pairs);
    s->seen = NULL;
    s->seen_list = NULL;
    s->z = NULL;
    s->tmp = NULL;
    s->idx = NULL;
    s->pairs = NULL;
    s->n_seen = 0;
}

void vl2_sampler_reset(struct vl2_sampler *s)
{
    int32_t i;

    for (i = 0; i < s->n_seen; i++)
        s->seen[s->seen_list[i]] = 0;
    s->n_seen = 0;
}

void vl2_sampler_accept(struct vl2_sampler *s, int32_t id)
{
    if (id < 0 || id >= s->n_vocab || s->seen[id])
        return;
    s->seen[id] = 1;
    s->seen_list[s->n_seen++] = id;
}

/* ---- processing ------------------------------------------------------------- */

static void penalize(const struct vl2_sampler *s, float *z)
{
    float p = s->p.repetition_penalty;
    int32_t i;

    if (p == 1.0f)
        return;
    for (i = 0; i < s->n_seen; i++) {
        float *v = &z[s->seen_list[i]];
        *v = *v < 0.0f ? *v * p : *v / p;
    }
}

/* k-th largest (k >= 1) of a[0..n), reordering a (quickselect). */
static float kth_largest(float *a, int32_t n, int32_t k)
{
    int32_t lo = 0, hi = n - 1, want = k - 1;

    while (lo < hi) {
        float pivot = a[lo + (hi - lo) / 2];
        int32_t i = lo, j = hi;
        while (i <= j) {
            while (a[i] > pivot)
                i++;
            while (a[j] < pivot)
                j--;
            if (i <= j) {
                float t = a[i];
                a[i] = a[j];
                a[j] = t;
                i++;
                j--;
            }
        }
        if (want <= j)
            hi = j;
        else if (want >= i)
            lo = i;
        else
            break;
    }
    return a[want];
}

/* Ascending by value, ties by id (deterministic). */
static int cmp_pair(const void *a, const void *b)
{
    const struct vl2_sampler_pair *x = a, *y = b;

    if (x->v < y->v)
        return -1;
    if (x->v > y->v)
        return 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

/* Steps 1-4 on z; leaves the surviving ids in s->idx[0..*ret_n). */
static void process(struct vl2_sampler *s, float *z, int32_t *ret_n)
{
    int32_t V = s->n_vocab, n = 0, i;

    penalize(s, z);
    if (s->p.temperature == 0.0f) {
        for (i = 0; i < V; i++)
            s->idx[i] = i;
        *ret_n = V;
        return;
    }
    if (s->p.temperature != 1.0f)
        for (i = 0; i < V; i++)
            z[i] = z[i] / s->p.temperature;

    if (s->p.top_k > 0 && s->p.top_k < V) {
        float thr;
        for (i = 0; i < V; i++)
            s->tmp[i] = z[i];
        thr = kth_largest(s->tmp, V, s->p.top_k);
        for (i = 0; i < V; i++) {
            if (z[i] >= thr)
                s->idx[n++] = i;
            else
                z[i] = -INFINITY;
        }
    } else {
        for (i = 0; i < V; i++)
            if (z[i] > -INFINITY)
                s->idx[n++] = i;
    }

    if (s->p.top_p < 1.0f && n > 1) {
        float mx, sum = 0.0f, cum = 0.0f, lim = 1.0f - s->p.top_p;
        int32_t keep0 = 0;
        for (i = 0; i < n; i++) {
            s->pairs[i].v = z[s->idx[i]];
            s->pairs[i].id = s->idx[i];
        }
        qsort(s->pairs, (size_t)n, sizeof(*s->pairs), cmp_pair);
        for (i = 0; i < n; i++)
            s->idx[i] = s->pairs[i].id;
        mx = z[s->idx[n - 1]];
        for (i = 0; i < n; i++)
            sum += expf(z[s->idx[i]] - mx);
        for (i = 0; i < n - 1; i++) {
            cum += expf(z[s->idx[i]] - mx) / sum;
            if (cum <= lim) {
                z[s->idx[i]] = -INFINITY;
                keep0 = i + 1;
            } else {
                break;
            }
        }
        memmove(s->idx, s->idx + keep0, (size_t)(n - keep0) * sizeof(*s->idx));
        n -= keep0;
    }
    *ret_n = n;
}

void vl2_sampler_process(struct vl2_sampler *s, float *z)
{
    int32_t n;

    process(s, z, &n);
}

/* Index of the first largest of z[0..n) (ties: the lowest index, as a plain
 * scan with '>' gives), as the backends' argmax: NaN never wins, and a row
 * starting with NaN gives 0.  The maximum is found lane-wise over 16 columns,
 * a loop the compiler vectorises, then one scan finds its first position: on
 * a 129 280-entry vocabulary this is several times faster than a scan that
 * carries the index in its dependency chain.  Lanes start at -inf so that a
 * NaN among the first columns does not hide the lane's later values. */
static int32_t argmax_first(const float *z, int32_t n)
{
    enum { W = 16 };
    float m[W], mx;
    int32_t i, j;

    if (n <= 0 || z[0] != z[0])
        return 0;
    mx = z[0];
    i = 1;
    if (n >= 2 * W) {
        for (j = 0; j < W; j++)
            m[j] = -INFINITY;
        for (i = 0; i + W <= n; i += W)
            for (j = 0; j < W; j++)
                m[j] = z[i + j] > m[j] ? z[i + j] : m[j];
        for (j = 0; j < W; j++)
            mx = m[j] > mx ? m[j] : mx;
    }
    for (; i < n; i++)
        mx = z[i] > mx ? z[i] : mx;
    for (i = 0; i < n; i++)
        if (z[i] == mx)
            return i;
    return 0;
}

int32_t vl2_sampler_sample(struct vl2_sampler *s, const float *logits)
{
    float *z = s->z, mx;
    int32_t n, i, best;
    double sum = 0.0, u, acc = 0.0;

    if (s->p.temperature == 0.0f) {
        /* greedy: without a penalty the logits are read in place */
        if (s->p.repetition_penalty == 1.0f)
            return argmax_first(logits, s->n_vocab);
        memcpy(z, logits, (size_t)s->n_vocab * sizeof(*z));
        penalize(s, z);
        return argmax_first(z, s->n_vocab);
    }
    memcpy(z, logits, (size_t)s->n_vocab * sizeof(*z));
    process(s, z, &n);
    if (n <= 0)
        return 0;
    mx = z[s->idx[0]];
    for (i = 1; i < n; i++)
        if (z[s->idx[i]] > mx)
            mx = z[s->idx[i]];
    for (i = 0; i < n; i++)
        sum += exp((double)z[s->idx[i]] - mx);
    u = vl2_sampler_uniform(s) * sum;
    best = s->idx[n - 1];
    for (i = 0; i < n; i++) {
        acc += exp((double)z[s->idx[i]] - mx);
        if (u < acc) {
            best = s->idx[i];
            break;
        }
    }
    return best;
}

double vl2_logits_logprob(const float *z, int32_t n, int32_t id)
{
    double mx = -INFINITY, sum = 0.0;
    int32_t i;

    if (id < 0 || id >= n)
        return -INFINITY;
    for (i = 0; i < n; i++)
        if (z[i] > mx)
            mx = z[i];
    for (i = 0; i < n; i++)
        sum += exp((double)z[i] - mx);
    return (double)z[id] - mx - log(sum);
}

size_t vl2_logits_top(const float *z, int32_t n, size_t k, int32_t *ret_ids, double *ret_lp)
{
    double mx = -INFINITY, sum = 0.0, ls;
    size_t m = 0, j;
    int32_t i;

    if (n <= 0 || k == 0)
        return 0;
    for (i = 0; i < n; i++)
        if (z[i] > mx)
            mx = z[i];
    for (i = 0; i < n; i++)
        sum += exp((double)z[i] - mx);
    ls = log(sum);
    /* ret_ids[0..m) kept sorted by logit, descending; an id joins only when
     * strictly above the last kept one (ids come in ascending order, so an
     * equal logit stays behind the lower id); NaN never joins */
    for (i = 0; i < n; i++) {
        float v = z[i];

        if (m == k && !(v > z[ret_ids[m - 1]]))
            continue;
        if (m < k && m > 0 && !(v > z[ret_ids[m - 1]])) {
            if (v == v)
                ret_ids[m++] = i;
            continue;
        }
        if (v != v)
            continue;
        j = m < k ? m++ : m - 1;
        while (j > 0 && v > z[ret_ids[j - 1]]) {
            ret_ids[j] = ret_ids[j - 1];
            j--;
        }
        ret_ids[j] = i;
    }
    for (j = 0; j < m; j++)
        ret_lp[j] = (double)z[ret_ids[j]] - mx - ls;    /* as vl2_logits_logprob */
    return m;
}

/* ---- stop strings ----------------------------------------------------------- */

long vl2_stop_find(const char *text, size_t len, const char *const *stops, size_t n_stops)
{
    long best = -1;
    size_t i;

    for (i = 0; i < n_stops; i++) {
        size_t sl = stops[i] ? strlen(stops[i]) : 0;
        const char *p;
        if (!sl || sl > len)
            continue;
        p = memmem(text, len, stops[i], sl);
        if (p && (best < 0 || p - text < best))
            best = p - text;
    }
    return best;
}

size_t vl2_stop_holdback(const char *text, size_t len, const char *const *stops,
                         size_t n_stops)
{
    size_t best = 0, i, l;

    for (i = 0; i < n_stops; i++) {
        size_t sl = stops[i] ? strlen(stops[i]) : 0;
        for (l = sl > 0 ? sl - 1 : 0; l > best; l--) {
            if (l > len)
                continue;
            if (!memcmp(text + len - l, stops[i], l)) {
                best = l;
                break;
            }
        }
    }
    return best;
}

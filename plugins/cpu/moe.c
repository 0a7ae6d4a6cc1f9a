/* moe.c - one whole MoE layer (spec 7.4) in one call.
 *
 * Rows are processed in chunks of MOE_CHUNK.  For a chunk: router logits in
 * F32 (x * router^T), scores (softmax / sigmoid), selection (greedy,
 * group-limited, noaux_tc), weights; then the rows are grouped by expert and
 * every selected expert runs once on all of its rows (its weights are read
 * once per chunk), the shared experts run on all rows, and each output row is
 * sum_slot w * y_slot (in slot order) + shared.  No result depends on the
 * number of threads.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu-impl.h"

#define MOE_CHUNK 512
#define MOE_NB_SMALL 32   /* weight rows per task, few rows */
#define MOE_NB_LARGE 128  /* weight rows per task, many rows */
#define MOE_NB_BF16 256   /* many rows, bf16 kernel: the activations packed once per 256 */

struct moe_job {
    struct vl2_backend_ctx *ctx;
    const struct vl2_moe_layer *L;
    int64_t d, inter, sh_inter;
    int64_t n;              /* rows in this chunk */
    const float *x;         /* chunk rows of x */
    int64_t ldx;
    /* grouping */
    int32_t n_active;       /* experts with rows (+1 for the shared block) */
    int32_t *act_e;         /* [n_active] expert index, n_expert = shared */
    int64_t *act_off;       /* [n_active] first assignment of the expert */
    int64_t *act_cnt;       /* [n_active] */
    int64_t *act_nb;        /* [n_active] column blocks of this phase */
    int64_t *act_t0;        /* [n_active + 1] first task of the expert in this phase */
    int64_t nb_small_rows;
    float *xg;              /* [n*top_k, d] gathered inputs */
    float *g, *u;           /* [n*top_k, inter] gate / up, then h in g */
    float *y;               /* [n*top_k, d] */
    float *sg, *su, *sy;    /* shared: [n, sh_inter] x2, [n, d] */
    int phase;
};

static int64_t find_active(const struct moe_job *j, int64_t task)
{
    int32_t lo = 0, hi = j->n_active - 1;
    while (lo < hi) {
        int32_t mid = (lo + hi + 1) / 2;
        if (j->act_t0[mid] <= task)
            lo = mid;
        else
            hi = mid - 1;
    }
    return lo;
}

static void moe_task(void *arg, int64_t task, int tid)
{
    struct moe_job *j = arg;
    int64_t a = find_active(j, task);
    int64_t e = j->act_e[a], cnt = j->act_cnt[a], off = j->act_off[a];
    int64_t blk = task - j->act_t0[a];
    int64_t nb = cnt < j->nb_small_rows ? MOE_NB_SMALL
                 : j->ctx->bf16_dp ? MOE_NB_BF16 : MOE_NB_LARGE;
    bool shared = e == j->L->n_expert;
    void *tmp = cpu_scratch(j->ctx, tid);

    if (j->phase == 0) {
        const struct vl2_tensor *wg = shared ? j->L->sh_gate : j->L->gate[e];
        const struct vl2_tensor *wu = shared ? j->L->sh_up : j->L->up[e];
        int64_t I = shared ? j->sh_inter : j->inter;
        int64_t c0 = blk * nb, c1 = c0 + nb < I ? c0 + nb : I;
        const float *x = shared ? j->x : j->xg + off * j->d;
        int64_t ldx = shared ? j->ldx : j->d;
        float *g = shared ? j->sg : j->g + off * I;
        float *u = shared ? j->su : j->u + off * I;

        cpu_mm(j->ctx, x, ldx, cnt, wg, c0, c1, g, I, tmp);
        cpu_mm(j->ctx, x, ldx, cnt, wu, c0, c1, u, I, tmp);
        for (int64_t i = 0; i < cnt; i++)
            j->ctx->k->swiglu(g + i * I + c0, g + i * I + c0, u + i * I + c0, c1 - c0);
    } else {
        const struct vl2_tensor *wd = shared ? j->L->sh_down : j->L->down[e];
        int64_t I = shared ? j->sh_inter : j->inter;
        int64_t c0 = blk * nb, c1 = c0 + nb < j->d ? c0 + nb : j->d;
        const float *h = shared ? j->sg : j->g + off * I;
        float *y = shared ? j->sy : j->y + off * j->d;

        cpu_mm(j->ctx, h, I, cnt, wd, c0, c1, y, j->d, tmp);
    }
}

/* top-k of v[0..n) (largest first; ties: lower index first) into idx. */
static void topk(const float *v, int32_t n, int32_t k, int32_t *idx)
{
    for (int32_t s = 0; s < k; s++) {
        int32_t best = -1;
        for (int32_t i = 0; i < n; i++) {
            bool used = false;
            for (int32_t t = 0; t < s; t++)
                if (idx[t] == i) {
                    used = true;
                    break;
                }
            if (used)
                continue;
            if (best < 0 || v[i] > v[best])
                best = i;
        }
        idx[s] = best;
    }
}

/* Selection and weights for one row (spec 7.4).  @sc: scores [E] (input),
 * @tmp: [2E + n_group] work space. */
static void route_row(const struct vl2_moe_layer *L, const float *logits, const float *bias,
                      float *sc, float *tmp, int32_t *idx, float *w)
{
    int32_t E = L->n_expert, K = L->top_k;
    float *choice = tmp, *gs = tmp + E;
    int32_t gidx[256];

    if (L->scoring == VL2_MOE_SOFTMAX) {
        float mx = logits[0], sum = 0.0f;
        for (int32_t e = 1; e < E; e++)
            if (logits[e] > mx)
                mx = logits[e];
        for (int32_t e = 0; e < E; e++) {
            sc[e] = expf(logits[e] - mx);
            sum += sc[e];
        }
        for (int32_t e = 0; e < E; e++)
            sc[e] /= sum;
    } else {
        for (int32_t e = 0; e < E; e++)
            sc[e] = 1.0f / (1.0f + expf(-logits[e]));
    }

    if (L->method == VL2_MOE_GREEDY) {
        topk(sc, E, K, idx);
        for (int32_t s = 0; s < K; s++)
            w[s] = sc[idx[s]];
    } else {
        int32_t G = L->n_group, per = E / G;
        bool noaux = L->method == VL2_MOE_NOAUX_TC;
        for (int32_t e = 0; e < E; e++)
            choice[e] = noaux ? sc[e] + bias[e] : sc[e];
        for (int32_t g = 0; g < G; g++) {
            const float *c = choice + (int64_t)g * per;
            if (noaux) {
                /* sum of the two largest (one when a group has one expert) */
                int32_t top2[2] = { 0, 0 };
                int32_t n2 = per < 2 ? per : 2;
                topk(c, per, n2, top2);
                gs[g] = c[top2[0]] + (n2 > 1 ? c[top2[1]] : 0.0f);
            } else {
                float mx = c[0];
                for (int32_t i = 1; i < per; i++)
                    if (c[i] > mx)
                        mx = c[i];
                gs[g] = mx;
            }
        }
        topk(gs, G, L->topk_group, gidx);
        for (int32_t g = 0; g < G; g++) {
            bool keep = false;
            for (int32_t t = 0; t < L->topk_group; t++)
                if (gidx[t] == g)
                    keep = true;
            if (!keep)
                for (int32_t i = 0; i < per; i++)
                    choice[(int64_t)g * per + i] = 0.0f;
        }
        topk(choice, E, K, idx);
        for (int32_t s = 0; s < K; s++)
            w[s] = noaux ? sc[idx[s]] : choice[idx[s]];
    }

    if (K > 1 && L->norm_topk_prob) {
        float sum = 0.0f;
        for (int32_t s = 0; s < K; s++)
            sum += w[s];
        sum += 1e-20f;
        for (int32_t s = 0; s < K; s++)
            w[s] = w[s] / sum * L->routed_scale;
    } else {
        for (int32_t s = 0; s < K; s++)
            w[s] *= L->routed_scale;
    }
}

static int check_layer(const struct vl2_moe_layer *L, int64_t d, int64_t *ret_inter,
                       int64_t *ret_sh, struct vl2_err *err)
{
    const char *op = "moe";
    int64_t inter;
    int r;

    if (!L)
        return vl2_err_set(err, VL2_EINVAL, "cpu: moe: layer is NULL");
    if ((r = cpu_check_size(L->struct_size, sizeof(*L), op, "vl2_moe_layer", err)) < 0)
        return r;
    if (L->n_expert <= 0 || L->n_expert > 4096 || L->top_k <= 0 || L->top_k > L->n_expert ||
        L->top_k > 64)
        return vl2_err_set(err, VL2_EINVAL, "cpu: moe: bad n_expert %d / top_k %d",
                           (int)L->n_expert, (int)L->top_k);
    if (L->scoring != VL2_MOE_SOFTMAX && L->scoring != VL2_MOE_SIGMOID)
        return vl2_err_set(err, VL2_EINVAL, "cpu: moe: unknown scoring %d", (int)L->scoring);
    if (L->method != VL2_MOE_GREEDY && L->method != VL2_MOE_GROUP_LIMITED &&
        L->method != VL2_MOE_NOAUX_TC)
        return vl2_err_set(err, VL2_EINVAL, "cpu: moe: unknown method %d", (int)L->method);
    if (L->method != VL2_MOE_GREEDY) {
        if (L->n_group <= 0 || L->n_group > 256 || L->n_expert % L->n_group != 0 ||
            L->topk_group <= 0 || L->topk_group > L->n_group ||
            (int64_t)L->topk_group * (L->n_expert / L->n_group) < L->top_k)
            return vl2_err_set(err, VL2_EINVAL,
                               "cpu: moe: bad groups (n_group %d, topk_group %d) for %d experts, top_k %d",
                               (int)L->n_group, (int)L->topk_group, (int)L->n_expert,
                               (int)L->top_k);
    }
    if (L->method == VL2_MOE_NOAUX_TC && !L->bias)
        return vl2_err_set(err, VL2_EINVAL, "cpu: moe: noaux_tc needs the correction bias");
    if ((r = cpu_check_float(L->router, op, "router", err)) < 0)
        return r;
    if (L->router->rows != L->n_expert || L->router->cols != d)
        return vl2_err_set(err, VL2_EINVAL, "cpu: moe: router is %lld x %lld, expected %d x %lld",
                           (long long)L->router->rows, (long long)L->router->cols,
                           (int)L->n_expert, (long long)d);
    if (L->bias && (r = cpu_check_vec(L->bias, L->n_expert, op, "bias", err)) < 0)
        return r;
    if (!L->gate || !L->up || !L->down)
        return vl2_err_set(err, VL2_EINVAL, "cpu: moe: expert arrays are NULL");
    if ((r = cpu_check_float(L->gate[0], op, "gate[0]", err)) < 0)
        return r;
    inter = L->gate[0]->rows;
    for (int32_t e = 0; e < L->n_expert; e++) {
        char name[32];
        snprintf(name, sizeof(name), "gate[%d]", (int)e);
        if ((r = cpu_check_float(L->gate[e], op, name, err)) < 0)
            return r;
        snprintf(name, sizeof(name), "up[%d]", (int)e);
        if ((r = cpu_check_float(L->up[e], op, name, err)) < 0)
            return r;
        snprintf(name, sizeof(name), "down[%d]", (int)e);
        if ((r = cpu_check_float(L->down[e], op, name, err)) < 0)
            return r;
        if (L->gate[e]->rows != inter || L->gate[e]->cols != d || L->up[e]->rows != inter ||
            L->up[e]->cols != d || L->down[e]->rows != d || L->down[e]->cols != inter)
            return vl2_err_set(err, VL2_EINVAL,
                               "cpu: moe: expert %d: shapes gate %lldx%lld, up %lldx%lld, down %lldx%lld; expected %lldx%lld, %lldx%lld, %lldx%lld",
                               (int)e, (long long)L->gate[e]->rows, (long long)L->gate[e]->cols,
                               (long long)L->up[e]->rows, (long long)L->up[e]->cols,
                               (long long)L->down[e]->rows, (long long)L->down[e]->cols,
                               (long long)inter, (long long)d, (long long)inter, (long long)d,
                               (long long)d, (long long)inter);
    }
    *ret_sh = 0;
    if (L->sh_gate || L->sh_up || L->sh_down) {
        int64_t S;
        if ((r = cpu_check_float(L->sh_gate, op, "sh_gate", err)) < 0 ||
            (r = cpu_check_float(L->sh_up, op, "sh_up", err)) < 0 ||
            (r = cpu_check_float(L->sh_down, op, "sh_down", err)) < 0)
            return r;
        S = L->sh_gate->rows;
        if (S <= 0 || L->sh_gate->cols != d || L->sh_up->rows != S || L->sh_up->cols != d ||
            L->sh_down->rows != d || L->sh_down->cols != S)
            return vl2_err_set(err, VL2_EINVAL, "cpu: moe: shared expert shapes disagree with d_model %lld",
                               (long long)d);
        *ret_sh = S;
    }
    *ret_inter = inter;
    return 0;
}

int cpu_moe(struct vl2_backend_ctx *ctx, struct vl2_tensor *out, const struct vl2_tensor *x,
            const struct vl2_moe_layer *L, struct vl2_err *err)
{
    struct moe_job j;
    struct vl2_tensor lg;
    int64_t d, inter = 0, sh = 0, E, K, chunk, maxI;
    const float *bias = NULL;
    size_t off, need;
    char *base;
    float *logits, *scores, *rtmp, *wts;
    int32_t *idx, *cnt_e;
    int64_t *fill;
    int r;

    if ((r = cpu_check_f32(out, "moe", "out", err)) < 0 ||
        (r = cpu_check_f32(x, "moe", "x", err)) < 0)
        return r;
    d = x->cols;
    if (out->rows != x->rows || out->cols != d)
        return vl2_err_set(err, VL2_EINVAL, "cpu: moe: out is %lld x %lld, expected %lld x %lld",
                           (long long)out->rows, (long long)out->cols, (long long)x->rows,
                           (long long)d);
    if ((r = cpu_check_no_alias(out, x, "moe", "x", err)) < 0)
        return r;
    if ((r = check_layer(L, d, &inter, &sh, err)) < 0)
        return r;
    if (x->rows == 0)
        return 0;
    if (L->bias) {
        bias = cpu_vec_f32(ctx, L->bias, L->n_expert, 2, err);
        if (!bias)
            return VL2_ENOMEM;
    }
    E = L->n_expert;
    K = L->top_k;
    chunk = x->rows < MOE_CHUNK ? x->rows : MOE_CHUNK;
    maxI = inter > sh ? inter : sh;

    /* one buffer: logits, scores, route tmp, idx, weights, counts, fill,
     * grouping arrays, xg, g, u, y, sg, su, sy */
#define ALIGN64(v) (((v) + 63) & ~(size_t)63)
    need = 0;
    need += ALIGN64((size_t)chunk * E * 4);            /* logits */
    need += ALIGN64((size_t)E * 4);                    /* scores */
    need += ALIGN64((size_t)(2 * E + 256) * 4);        /* route tmp */
    need += ALIGN64((size_t)chunk * K * 4);            /* idx */
    need += ALIGN64((size_t)chunk * K * 4);            /* weights */
    need += ALIGN64((size_t)(E + 1) * 4);              /* counts */
    need += ALIGN64((size_t)(E + 1) * 8);              /* fill */
    need += 5 * ALIGN64((size_t)(E + 2) * 8);          /* act arrays */
    need += ALIGN64((size_t)chunk * K * 8);            /* assignment -> (row) order */
    need += ALIGN64((size_t)chunk * K * d * 4);        /* xg */
    need += 2 * ALIGN64((size_t)chunk * K * inter * 4);/* g, u */
    need += ALIGN64((size_t)chunk * K * d * 4);        /* y */
    need += 2 * ALIGN64((size_t)chunk * sh * 4);       /* sg, su */
    need += ALIGN64((size_t)chunk * d * 4);            /* sy */
    if ((r = cpu_buf_reserve(ctx, &ctx->big, need, err)) < 0)
        return r;
    if ((r = cpu_scratch_reserve(ctx, cpu_mm_scratch(d > maxI ? d : maxI), err)) < 0)
        return r;
    base = ctx->big.p;
    off = 0;
#define TAKE(ptr, type, bytes) do { ptr = (type)(base + off); off += ALIGN64(bytes); } while (0)
    TAKE(logits, float *, (size_t)chunk * E * 4);
    TAKE(scores, float *, (size_t)E * 4);
    TAKE(rtmp, float *, (size_t)(2 * E + 256) * 4);
    TAKE(idx, int32_t *, (size_t)chunk * K * 4);
    TAKE(wts, float *, (size_t)chunk * K * 4);
    TAKE(cnt_e, int32_t *, (size_t)(E + 1) * 4);
    TAKE(fill, int64_t *, (size_t)(E + 1) * 8);
    memset(&j, 0, sizeof(j));
    TAKE(j.act_e, int32_t *, (size_t)(E + 2) * 8);
    TAKE(j.act_off, int64_t *, (size_t)(E + 2) * 8);
    TAKE(j.act_cnt, int64_t *, (size_t)(E + 2) * 8);
    TAKE(j.act_nb, int64_t *, (size_t)(E + 2) * 8);
    TAKE(j.act_t0, int64_t *, (size_t)(E + 2) * 8);
    int64_t *slot_pos;  /* [row * K + slot] -> assignment index */
    TAKE(slot_pos, int64_t *, (size_t)chunk * K * 8);
    TAKE(j.xg, float *, (size_t)chunk * K * d * 4);
    TAKE(j.g, float *, (size_t)chunk * K * inter * 4);
    TAKE(j.u, float *, (size_t)chunk * K * inter * 4);
    TAKE(j.y, float *, (size_t)chunk * K * d * 4);
    TAKE(j.sg, float *, (size_t)chunk * sh * 4);
    TAKE(j.su, float *, (size_t)chunk * sh * 4);
    TAKE(j.sy, float *, (size_t)chunk * d * 4);
#undef TAKE
#undef ALIGN64

    j.ctx = ctx;
    j.L = L;
    j.d = d;
    j.inter = inter;
    j.sh_inter = sh;
    j.nb_small_rows = ctx->blas_min_rows;

    for (int64_t c0 = 0; c0 < x->rows; c0 += chunk) {
        int64_t n = x->rows - c0 < chunk ? x->rows - c0 : chunk;
        struct vl2_tensor xv = vl2_tensor_rows(x, c0, n);
        int32_t na = 0;

        /* router logits in F32 */
        memset(&lg, 0, sizeof(lg));
        lg.data = logits;
        lg.dtype = VL2_DTYPE_F32;
        lg.ndim = 2;
        lg.ne[0] = n;
        lg.ne[1] = E;
        lg.rows = n;
        lg.cols = E;
        lg.ld = E;
        if ((r = cpu_linear(ctx, &lg, &xv, L->router, NULL, err)) < 0)
            return r;
        for (int64_t i = 0; i < n; i++)
            route_row(L, logits + i * E, bias, scores, rtmp, idx + i * K, wts + i * K);

        /* group assignments by expert */
        memset(cnt_e, 0, (size_t)(E + 1) * 4);
        for (int64_t a = 0; a < n * K; a++)
            cnt_e[idx[a]]++;
        {
            int64_t o = 0;
            for (int64_t e = 0; e < E; e++) {
                fill[e] = o;
                if (cnt_e[e]) {
                    j.act_e[na] = (int32_t)e;
                    j.act_off[na] = o;
                    j.act_cnt[na] = cnt_e[e];
                    na++;
                }
                o += cnt_e[e];
            }
        }
        if (sh) {
            j.act_e[na] = (int32_t)E;
            j.act_off[na] = 0;
            j.act_cnt[na] = n;
            na++;
        }
        j.n_active = na;
        for (int64_t i = 0; i < n; i++)
            for (int64_t s = 0; s < K; s++) {
                int32_t e = idx[i * K + s];
                int64_t p = fill[e]++;
                slot_pos[i * K + s] = p;
                memcpy(j.xg + p * d, (const float *)xv.data + i * xv.ld, (size_t)d * 4);
            }
        j.x = xv.data;
        j.ldx = xv.ld;
        j.n = n;

        for (j.phase = 0; j.phase < 2; j.phase++) {
            int64_t t = 0;
            for (int32_t a = 0; a < na; a++) {
                bool shared = j.act_e[a] == E;
                int64_t cols = j.phase == 0 ? (shared ? sh : inter) : d;
                int64_t nb = j.act_cnt[a] < j.nb_small_rows ? MOE_NB_SMALL
                             : ctx->bf16_dp ? MOE_NB_BF16 : MOE_NB_LARGE;
                j.act_t0[a] = t;
                t += (cols + nb - 1) / nb;
            }
            j.act_t0[na] = t;
            cpu_pool_run(ctx->pool, t, moe_task, &j);
        }

        /* combine: sum over slots in order, then the shared experts */
        for (int64_t i = 0; i < n; i++) {
            float *o = (float *)out->data + (c0 + i) * out->ld;
            for (int64_t c = 0; c < d; c++) {
                float s = 0.0f;
                for (int64_t k = 0; k < K; k++)
                    s += wts[i * K + k] * j.y[slot_pos[i * K + k] * d + c];
                if (sh)
                    s += j.sy[i * d + c];
                o[c] = s;
            }
        }
    }
    return 0;
}

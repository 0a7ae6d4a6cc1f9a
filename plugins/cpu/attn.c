/* attn.c - rotary embedding and attention (vision, MHA, MLA) of the CPU backend.
 *
 * KV cache layout (struct vl2_kv, see cpu-impl.h): per layer
 *   MHA: K [n_kv_head, capacity, head_dim] and V the same, F32 (head-major:
 *        one head's keys are one contiguous stream);
 *   MLA: one matrix [capacity, kv_lora_rank + rope_dim], row t = c_t | k_pe_t, F32.
 * Token t of a sequence is row t.
 */
#include <cblas.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu-impl.h"
#include "kern.h"

#define ATT_RB 32       /* query rows per task (MHA, MLA expanded) */
#define FULL_RB 96      /* query rows per task (vision; a multiple of the GEMM tile) */
#define MLA_RB 8        /* query rows per task (MLA; times the heads of the task) */
#define SMALL_ROWS 4    /* fewer query rows: dot loops instead of sgemm */

static int64_t imin(int64_t a, int64_t b)
{
    return a < b ? a : b;
}

/* S[m, n] = A[m, d] * B[n, d]^T */
static void mm_nt(const struct cpu_kernels *k, const float *a, int64_t lda, int64_t m,
                  const float *b, int64_t ldb, int64_t n, int64_t d, float *s, int64_t lds)
{
    if (m < SMALL_ROWS) {
        for (int64_t i = 0; i < m; i++)
            for (int64_t j = 0; j < n; j++)
                s[i * lds + j] = k->dot(a + i * lda, b + j * ldb, d);
        return;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)n, (int)d, 1.0f, a,
                (int)lda, b, (int)ldb, 0.0f, s, (int)lds);
}

/* O[m, d] = P[m, n] * V[n, d] */
static void mm_nn(const struct cpu_kernels *k, const float *p, int64_t ldp, int64_t m,
                  const float *v, int64_t ldv, int64_t n, int64_t d, float *o, int64_t ldo)
{
    if (m < SMALL_ROWS) {
        for (int64_t i = 0; i < m; i++) {
            float *oi = o + i * ldo;
            memset(oi, 0, (size_t)d * sizeof(float));
            for (int64_t j = 0; j < n; j++)
                if (p[i * ldp + j] != 0.0f)
                    k->axpy(oi, p[i * ldp + j], v + j * ldv, d);
        }
        return;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)d, (int)n, 1.0f, p,
                (int)ldp, v, (int)ldv, 0.0f, o, (int)ldo);
}

static int check_batch(struct vl2_backend_ctx *ctx, const struct vl2_tensor *x, const char *op,
                       const char *what, struct vl2_err *err)
{
    if (ctx->n_seqs <= 0)
        return vl2_err_set(err, VL2_EINVAL, "cpu: %s: no batch (call begin_batch first)", op);
    if (x->rows != ctx->n_rows)
        return vl2_err_set(err, VL2_EINVAL, "cpu: %s: '%s' has %lld rows, the batch has %d", op,
                           what, (long long)x->rows, (int)ctx->n_rows);
    return 0;
}

/* ---- rope ---------------------------------------------------------------------- */

struct rope_job {
    struct vl2_backend_ctx *ctx;
    float *x;
    int64_t ldx;
    int32_t n_head, head_stride, rot_off, rot_dim, layout;
    const float *inv_freq;
};

static void rope_task(void *arg, int64_t r, int tid)
{
    struct rope_job *j = arg;
    int32_t half = j->rot_dim / 2;
    float *cs = cpu_scratch(j->ctx, tid);
    float *sn = cs + half;
    float *tmp = sn + half;
    float pos = (float)j->ctx->row_pos[r];

    for (int32_t i = 0; i < half; i++) {
        float ang = pos * j->inv_freq[i];
        cs[i] = cosf(ang);
        sn[i] = sinf(ang);
    }
    for (int32_t h = 0; h < j->n_head; h++) {
        float *v = j->x + r * j->ldx + (int64_t)h * j->head_stride + j->rot_off;
        if (j->layout == VL2_ROPE_NEOX) {
            for (int32_t i = 0; i < half; i++) {
                float a = v[i], b = v[i + half];
                v[i] = a * cs[i] - b * sn[i];
                v[i + half] = b * cs[i] + a * sn[i];
            }
        } else {
            for (int32_t i = 0; i < half; i++) {
                float a = v[2 * i], b = v[2 * i + 1];
                tmp[i] = a * cs[i] - b * sn[i];
                tmp[i + half] = b * cs[i] + a * sn[i];
            }
            memcpy(v, tmp, (size_t)j->rot_dim * sizeof(float));
        }
    }
}

int cpu_rope(struct vl2_backend_ctx *ctx, struct vl2_tensor *x, int32_t n_head,
             int32_t head_stride, int32_t rot_off, int32_t rot_dim, float theta, int32_t layout,
             struct vl2_err *err)
{
    struct rope_job j;
    float *inv;
    int r;

    if ((r = cpu_check_f32(x, "rope", "x", err)) < 0 || (r = check_batch(ctx, x, "rope", "x", err)) < 0)
        return r;
    if (n_head <= 0 || head_stride <= 0 || rot_off < 0 || rot_dim <= 0 || (rot_dim & 1) ||
        rot_dim > 65536 || (int64_t)rot_off + rot_dim > head_stride ||
        (int64_t)(n_head - 1) * head_stride + rot_off + rot_dim > x->cols)
        return vl2_err_set(err, VL2_EINVAL,
                           "cpu: rope: bad geometry (n_head %d, head_stride %d, rot_off %d, rot_dim %d) for %lld columns",
                           (int)n_head, (int)head_stride, (int)rot_off, (int)rot_dim,
                           (long long)x->cols);
    if (!(theta > 0.0f) || isinf(theta))
        return vl2_err_set(err, VL2_EINVAL, "cpu: rope: theta %g must be > 0", (double)theta);
    if (layout != VL2_ROPE_NEOX && layout != VL2_ROPE_INTERLEAVED)
        return vl2_err_set(err, VL2_EINVAL, "cpu: rope: unknown layout %d", (int)layout);
    if ((r = cpu_scratch_reserve(ctx, (size_t)rot_dim * 2 * sizeof(float), err)) < 0)
        return r;
    /* inv_freq as the reference computes it: float32 1 / theta^(2i / d) */
    inv = ctx->vec[0].p;
    if (ctx->vec[0].size < (size_t)rot_dim / 2 * sizeof(float)) {
        inv = cpu_aligned_alloc((size_t)rot_dim / 2 * sizeof(float));
        if (!inv)
            return vl2_err_set(err, VL2_ENOMEM, "cpu: rope: out of memory");
        free(ctx->vec[0].p);
        atomic_fetch_sub(&ctx->mem_used, ctx->vec[0].size);
        ctx->vec[0].p = inv;
        ctx->vec[0].size = (size_t)rot_dim / 2 * sizeof(float);
        atomic_fetch_add(&ctx->mem_used, ctx->vec[0].size);
    }
    for (int32_t i = 0; i < rot_dim / 2; i++)
        inv[i] = 1.0f / powf(theta, (float)(2 * i) / (float)rot_dim);
    j.ctx = ctx;
    j.x = x->data;
    j.ldx = x->ld;
    j.n_head = n_head;
    j.head_stride = head_stride;
    j.rot_off = rot_off;
    j.rot_dim = rot_dim;
    j.layout = layout;
    j.inv_freq = inv;
    cpu_pool_run(ctx->pool, x->rows, rope_task, &j);
    return 0;
}

/* ---- vision: full attention -------------------------------------------------------- */

struct full_job {
    struct vl2_backend_ctx *ctx;
    const float *qkv;
    int64_t ldq;
    float *out;
    int64_t ldo;
    int64_t seq_len, n_head, head_dim, n_rb;
    float scale;
};

static void full_task(void *arg, int64_t task, int tid)
{
    struct full_job *j = arg;
    int64_t rb = task % j->n_rb, h = (task / j->n_rb) % j->n_head, s = task / j->n_rb / j->n_head;
    int64_t L = j->seq_len, D = j->head_dim, HD = j->n_head * D;
    int64_t r0 = rb * FULL_RB, m = imin(FULL_RB, L - r0);
    const float *base = j->qkv + s * L * j->ldq;
    const float *q = base + r0 * j->ldq + h * D;
    const float *k = base + HD + h * D;
    const float *v = base + 2 * HD + h * D;
    float *sc = cpu_scratch(j->ctx, tid);

    if (j->ctx->own_gemm && m >= SMALL_ROWS)
        cpu_gemm512(q, j->ldq, m, k, j->ldq, VL2_DTYPE_F32, L, D, sc, L,
                    sc + (size_t)FULL_RB * (size_t)((L + 15) / 16 * 16));
    else
        mm_nt(j->ctx->k, q, j->ldq, m, k, j->ldq, L, D, sc, L);
    for (int64_t i = 0; i < m; i++)
        j->ctx->k->softmax(sc + i * L, L, L, j->scale);
    mm_nn(j->ctx->k, sc, L, m, v, j->ldq, L, D, j->out + (s * L + r0) * j->ldo + h * D, j->ldo);
}

/* Fused kernel (attn-fused.c): one task per (sequence, head). */
static void fused_task(void *arg, int64_t task, int tid)
{
    struct full_job *j = arg;
    int64_t h = task % j->n_head, s = task / j->n_head, L = j->seq_len;

    cpu_attn_fused(j->qkv + s * L * j->ldq, j->ldq, L, j->n_head, j->head_dim, h, j->scale,
                   j->out + s * L * j->ldo, j->ldo, cpu_scratch(j->ctx, tid), j->ctx->bf16_dp);
}

int cpu_attn_full(struct vl2_backend_ctx *ctx, struct vl2_tensor *out, const struct vl2_tensor *qkv,
                  int32_t seq_len, int32_t n_head, int32_t head_dim, float scale,
                  struct vl2_err *err)
{
    struct full_job j;
    int r, fused;

    if ((r = cpu_check_f32(out, "attn_full", "out", err)) < 0 ||
        (r = cpu_check_f32(qkv, "attn_full", "qkv", err)) < 0)
        return r;
    if (seq_len <= 0 || n_head <= 0 || head_dim <= 0 || qkv->rows % seq_len != 0 ||
        qkv->cols != 3LL * n_head * head_dim)
        return vl2_err_set(err, VL2_EINVAL,
                           "cpu: attn_full: qkv is %lld x %lld, expected n*%d rows and 3*%d*%d columns",
                           (long long)qkv->rows, (long long)qkv->cols, (int)seq_len, (int)n_head,
                           (int)head_dim);
    if (out->rows != qkv->rows || out->cols != (int64_t)n_head * head_dim)
        return vl2_err_set(err, VL2_EINVAL, "cpu: attn_full: out is %lld x %lld, expected %lld x %lld",
                           (long long)out->rows, (long long)out->cols, (long long)qkv->rows,
                           (long long)n_head * head_dim);
    if ((r = cpu_check_no_alias(out, qkv, "attn_full", "qkv", err)) < 0)
        return r;
    fused = ctx->k->isa == CPU_ISA_AVX512 &&
            (ctx->attn_mode == CPU_ATTN_FUSED ||
             (ctx->attn_mode == CPU_ATTN_AUTO && ctx->precision == CPU_PREC_BF16));
    if (fused) {
        if ((r = cpu_scratch_reserve(ctx, cpu_attn_fused_scratch(seq_len, head_dim, ctx->bf16_dp),
                                     err)) < 0)
            return r;
        j.ctx = ctx;
        j.qkv = qkv->data;
        j.ldq = qkv->ld;
        j.out = out->data;
        j.ldo = out->ld;
        j.seq_len = seq_len;
        j.n_head = n_head;
        j.head_dim = head_dim;
        j.scale = scale;
        j.n_rb = 0;
        cpu_pool_run(ctx->pool, qkv->rows / seq_len * n_head, fused_task, &j);
        return 0;
    }
    if ((r = cpu_scratch_reserve(ctx, (size_t)FULL_RB * (size_t)((seq_len + 15) / 16 * 16) *
                                             sizeof(float) + cpu_gemm512_scratch(seq_len),
                                 err)) < 0)
        return r;
    j.ctx = ctx;
    j.qkv = qkv->data;
    j.ldq = qkv->ld;
    j.out = out->data;
    j.ldo = out->ld;
    j.seq_len = seq_len;
    j.n_head = n_head;
    j.head_dim = head_dim;
    j.scale = scale;
    j.n_rb = (seq_len + FULL_RB - 1) / FULL_RB;
    cpu_pool_run(ctx->pool, qkv->rows / seq_len * n_head * j.n_rb, full_task, &j);
    return 0;
}

/* ---- causal attention over the caches ------------------------------------------------ */

/* Task list entry: rows [r0, r0 + m) of sequence s, heads [h0, h1). */
struct att_task {
    int32_t s, r0, m, h0, h1;
    int32_t expanded;   /* MLA: whole sequence, one head, non-absorbed form */
};

struct att_job {
    struct vl2_backend_ctx *ctx;
    int32_t layer;
    struct att_task *tasks;
    const float *q;
    int64_t ldq;
    float *out;
    int64_t ldo;
    float scale;
    /* MHA */
    int32_t n_head, n_kv_head, head_dim;
    /* MLA */
    int32_t nope, rope, vdim, lora;
    const struct vl2_tensor *kvb;   /* kv_b [n_head*(nope+vdim), lora], any float dtype */
};

/* Build the task list: rows of each sequence in blocks of @rb, heads split so
 * that there are at least 2 tasks per thread when possible. */
static int make_tasks(struct vl2_backend_ctx *ctx, int32_t rb, int32_t n_head,
                      const uint8_t *expanded, struct att_task **ret, int64_t *ret_n,
                      struct vl2_err *err)
{
    int64_t n_rb = 0, n_exp = 0, n = 0, hc;
    struct att_task *t;

    for (int32_t s = 0; s < ctx->n_seqs; s++) {
        if (expanded && expanded[s])
            n_exp += n_head;
        else
            n_rb += (ctx->seqs[s].n_rows + rb - 1) / rb;
    }
    hc = n_head;
    while (hc > 1 && n_exp + n_rb * ((n_head + hc - 1) / hc) < 2 * ctx->n_threads)
        hc = (hc + 1) / 2;
    {
        size_t need = (size_t)(n_exp + n_rb * ((n_head + hc - 1) / hc)) * sizeof(*t);
        int r = cpu_buf_reserve(ctx, &ctx->tasks, need, err);
        if (r < 0)
            return r;
        t = ctx->tasks.p;
        memset(t, 0, need);
    }
    for (int32_t s = 0; s < ctx->n_seqs; s++) {
        if (expanded && expanded[s]) {
            for (int32_t h = 0; h < n_head; h++) {
                t[n].s = s;
                t[n].m = ctx->seqs[s].n_rows;
                t[n].h0 = h;
                t[n].h1 = h + 1;
                t[n].expanded = 1;
                n++;
            }
            continue;
        }
        for (int32_t r0 = 0; r0 < ctx->seqs[s].n_rows; r0 += rb)
            for (int32_t h0 = 0; h0 < n_head; h0 += (int32_t)hc) {
                t[n].s = s;
                t[n].r0 = r0;
                t[n].m = (int32_t)imin(rb, ctx->seqs[s].n_rows - r0);
                t[n].h0 = h0;
                t[n].h1 = (int32_t)imin(h0 + hc, n_head);
                n++;
            }
    }
    *ret = t;
    *ret_n = n;
    return 0;
}

static int check_caches(struct vl2_backend_ctx *ctx, int32_t layer, int kind, int64_t wa,
                        const char *op, struct vl2_err *err)
{
    for (int32_t s = 0; s < ctx->n_seqs; s++) {
        const struct vl2_kv *kv = ctx->seqs[s].kv;
        if (kv->shape.kind != kind || kv->width_a != wa)
            return vl2_err_set(err, VL2_EINVAL,
                               "cpu: %s: sequence %d: its cache has another shape (kind %d, width %lld, expected %lld)",
                               op, (int)s, (int)kv->shape.kind, (long long)kv->width_a,
                               (long long)wa);
        if (layer < 0 || layer >= kv->shape.n_layer)
            return vl2_err_set(err, VL2_EINVAL, "cpu: %s: layer %d out of range (cache has %d)", op,
                               (int)layer, (int)kv->shape.n_layer);
    }
    return 0;
}

static void mha_task(void *arg, int64_t ti, int tid)
{
    struct att_job *j = arg;
    const struct att_task *t = &j->tasks[ti];
    const struct vl2_batch_seq *sq = &j->ctx->seqs[t->s];
    const struct cpu_kv_layer *L = &sq->kv->layers[j->layer];
    int64_t D = j->head_dim, cap = sq->kv->shape.capacity;
    int64_t nk = (int64_t)sq->n_past + t->r0 + t->m;   /* keys visible to the last row */
    int32_t group = j->n_head / j->n_kv_head;
    float *sc = cpu_scratch(j->ctx, tid);

    for (int32_t h = t->h0; h < t->h1; h++) {
        int64_t kvh = h / group;
        const float *q = j->q + (int64_t)(sq->row0 + t->r0) * j->ldq + h * D;
        float *o = j->out + (int64_t)(sq->row0 + t->r0) * j->ldo + h * D;

        mm_nt(j->ctx->k, q, j->ldq, t->m, L->a + kvh * cap * D, D, nk, D, sc, nk);
        for (int32_t i = 0; i < t->m; i++)
            j->ctx->k->softmax(sc + i * nk, (int64_t)sq->n_past + t->r0 + i + 1, nk, j->scale);
        mm_nn(j->ctx->k, sc, nk, t->m, L->b + kvh * cap * D, D, nk, D, o, j->ldo);
    }
}

int cpu_attn_mha(struct vl2_backend_ctx *ctx, int32_t layer, struct vl2_tensor *out,
                 const struct vl2_tensor *q, const struct vl2_tensor *k,
                 const struct vl2_tensor *v, int32_t n_head, int32_t n_kv_head, int32_t head_dim,
                 float scale, struct vl2_err *err)
{
    const char *op = "attn_mha";
    struct att_job j;
    int64_t n_tasks, W, max_nk = 0;
    int r;

    if ((r = cpu_check_f32(out, op, "out", err)) < 0 || (r = cpu_check_f32(q, op, "q", err)) < 0 ||
        (r = cpu_check_f32(k, op, "k", err)) < 0 || (r = cpu_check_f32(v, op, "v", err)) < 0)
        return r;
    if ((r = check_batch(ctx, q, op, "q", err)) < 0 || (r = check_batch(ctx, k, op, "k", err)) < 0 ||
        (r = check_batch(ctx, v, op, "v", err)) < 0 || (r = check_batch(ctx, out, op, "out", err)) < 0)
        return r;
    if (n_head <= 0 || n_kv_head <= 0 || head_dim <= 0 || n_head % n_kv_head != 0)
        return vl2_err_set(err, VL2_EINVAL, "cpu: attn_mha: bad heads (n_head %d, n_kv_head %d, head_dim %d)",
                           (int)n_head, (int)n_kv_head, (int)head_dim);
    W = (int64_t)n_kv_head * head_dim;
    if (q->cols != (int64_t)n_head * head_dim || out->cols != q->cols || k->cols != W ||
        v->cols != W)
        return vl2_err_set(err, VL2_EINVAL,
                           "cpu: attn_mha: columns q %lld, k %lld, v %lld, out %lld; expected %lld, %lld, %lld, %lld",
                           (long long)q->cols, (long long)k->cols, (long long)v->cols,
                           (long long)out->cols, (long long)n_head * head_dim, (long long)W,
                           (long long)W, (long long)n_head * head_dim);
    if ((r = cpu_check_no_alias(out, q, op, "q", err)) < 0 ||
        (r = cpu_check_no_alias(out, k, op, "k", err)) < 0 ||
        (r = cpu_check_no_alias(out, v, op, "v", err)) < 0)
        return r;
    if ((r = check_caches(ctx, layer, VL2_ATTN_MHA, W, op, err)) < 0)
        return r;
    for (int32_t s = 0; s < ctx->n_seqs; s++)
        if (ctx->seqs[s].kv->shape.head_dim != head_dim)
            return vl2_err_set(err, VL2_EINVAL, "cpu: attn_mha: head_dim %d, cache has %d",
                               (int)head_dim, (int)ctx->seqs[s].kv->shape.head_dim);
    /* store the new keys and values */
    for (int32_t s = 0; s < ctx->n_seqs; s++) {
        const struct vl2_batch_seq *sq = &ctx->seqs[s];
        struct cpu_kv_layer *L = &sq->kv->layers[layer];
        int64_t cap = sq->kv->shape.capacity;
        for (int32_t i = 0; i < sq->n_rows; i++)
            for (int32_t h = 0; h < n_kv_head; h++) {
                int64_t dst = ((int64_t)h * cap + sq->n_past + i) * head_dim;
                memcpy(L->a + dst,
                       (const float *)k->data + (int64_t)(sq->row0 + i) * k->ld + h * head_dim,
                       (size_t)head_dim * 4);
                memcpy(L->b + dst,
                       (const float *)v->data + (int64_t)(sq->row0 + i) * v->ld + h * head_dim,
                       (size_t)head_dim * 4);
            }
        if (sq->n_past + sq->n_rows > max_nk)
            max_nk = sq->n_past + sq->n_rows;
    }
    if ((r = cpu_scratch_reserve(ctx, (size_t)ATT_RB * (size_t)max_nk * sizeof(float), err)) < 0)
        return r;
    memset(&j, 0, sizeof(j));
    if ((r = make_tasks(ctx, ATT_RB, n_head, NULL, &j.tasks, &n_tasks, err)) < 0)
        return r;
    j.ctx = ctx;
    j.layer = layer;
    j.q = q->data;
    j.ldq = q->ld;
    j.out = out->data;
    j.ldo = out->ld;
    j.scale = scale;
    j.n_head = n_head;
    j.n_kv_head = n_kv_head;
    j.head_dim = head_dim;
    cpu_pool_run(ctx->pool, n_tasks, mha_task, &j);
    return 0;
}

/* MLA, expanded form, for one head h and all rows of a sequence (long
 * prefill, where it needs fewer operations than the absorbed form):
 *   KV[s]   = cache_c[s] W_h^T = [k_nope | v]     for every key s < nk
 *   S[i]    = q_nope[i] . k_nope[s] + q_pe[i] . k_pe[s], causal softmax
 *   out[i]  = sum_s S[i, s] v[s] */
static void mla_expanded(struct att_job *j, const struct att_task *t, int tid)
{
    const struct vl2_batch_seq *sq = &j->ctx->seqs[t->s];
    const float *cache = sq->kv->layers[j->layer].a;
    int64_t lora = j->lora, rope = j->rope, nope = j->nope, vd = j->vdim;
    int64_t W = lora + rope, qh = nope + rope, kvw = nope + vd, h = t->h0;
    int64_t nk_all = (int64_t)sq->n_past + sq->n_rows;
    const struct cpu_kernels *k = j->ctx->k;
    float *kv = cpu_scratch(j->ctx, tid);
    float *sc = kv + nk_all * kvw;
    void *mmtmp = sc + (int64_t)ATT_RB * nk_all;
    struct vl2_tensor wh = vl2_tensor_rows(j->kvb, h * kvw, kvw);

    /* k_nope and v of every key for this head */
    cpu_mm(j->ctx, cache, W, nk_all, &wh, 0, kvw, kv, kvw, mmtmp);
    for (int64_t r0 = 0; r0 < sq->n_rows; r0 += ATT_RB) {
        int64_t m = imin(ATT_RB, sq->n_rows - r0);
        int64_t nk = (int64_t)sq->n_past + r0 + m;
        const float *q = j->q + (int64_t)(sq->row0 + r0) * j->ldq + h * qh;
        float *o = j->out + (int64_t)(sq->row0 + r0) * j->ldo + h * vd;

        if (m < SMALL_ROWS) {
            for (int64_t i = 0; i < m; i++)
                for (int64_t u = 0; u < nk; u++)
                    sc[i * nk + u] = k->dot(q + i * j->ldq, kv + u * kvw, nope) +
                                     k->dot(q + i * j->ldq + nope, cache + u * W + lora, rope);
        } else {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)nk, (int)nope, 1.0f,
                        q, (int)j->ldq, kv, (int)kvw, 0.0f, sc, (int)nk);
            if (rope > 0)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)nk, (int)rope,
                            1.0f, q + nope, (int)j->ldq, cache + lora, (int)W, 1.0f, sc, (int)nk);
        }
        for (int64_t i = 0; i < m; i++)
            k->softmax(sc + i * nk, (int64_t)sq->n_past + r0 + i + 1, nk, j->scale);
        mm_nn(k, sc, nk, m, kv + nope, kvw, nk, vd, o, j->ldo);
    }
}

/* MLA, absorbed form.  For the task's rows i and heads h (row index i*nh + h
 * of the scratch matrices, nh = heads of the task):
 *   Qc[i,h]   = [ q_nope[i,h] W_UK[h] | q_pe[i,h] ]        (lora + rope)
 *   S[i,h]    = Qc[i,h] . cache[s] for s < nk, causal softmax
 *   Ol[i,h]   = sum_s S[i,h,s] c[s]                         (lora)
 *   out[i,h]  = Ol[i,h] W_UV[h]^T                           (vdim) */
static void mla_task(void *arg, int64_t ti, int tid)
{
    struct att_job *j = arg;
    const struct att_task *t = &j->tasks[ti];
    const struct vl2_batch_seq *sq = &j->ctx->seqs[t->s];
    const float *cache = sq->kv->layers[j->layer].a;
    int64_t lora = j->lora, rope = j->rope, nope = j->nope, vd = j->vdim;
    int64_t W = lora + rope, qh = nope + rope;
    int64_t nh = t->h1 - t->h0, M = (int64_t)t->m * nh;

    if (t->expanded) {
        mla_expanded(j, t, tid);
        return;
    }
    int64_t nk = (int64_t)sq->n_past + t->r0 + t->m;
    float *qc = cpu_scratch(j->ctx, tid);
    float *sc = qc + M * W;
    float *ol = sc + M * nk;
    const struct cpu_kernels *k = j->ctx->k;

    size_t es = vl2_dtype_size(j->kvb->dtype);
    int64_t ldw = j->kvb->ld;
    float *wf = ol + M * lora;   /* m >= SMALL_ROWS: one head's W_UK or W_UV as F32 */

    for (int64_t hh = 0; hh < nh; hh++) {
        int64_t h = t->h0 + hh;
        const float *qn = j->q + (int64_t)(sq->row0 + t->r0) * j->ldq + h * qh;
        const char *wuk = (const char *)j->kvb->data + (size_t)(h * (nope + vd) * ldw) * es;
        if (t->m < SMALL_ROWS) {
            /* q_abs = sum_c q_nope[c] W_UK[c, :], weights in their own dtype */
            for (int64_t i = 0; i < t->m; i++) {
                float *dst = qc + (i * nh + hh) * W;
                memset(dst, 0, (size_t)lora * sizeof(float));
                for (int64_t c = 0; c < nope; c++)
                    k->axpy_w(dst, qn[i * j->ldq + c], wuk + (size_t)(c * ldw) * es,
                              j->kvb->dtype, lora);
            }
        } else {
            for (int64_t c = 0; c < nope; c++)
                k->to_f32(wf + c * lora, wuk + (size_t)(c * ldw) * es, j->kvb->dtype, lora);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)t->m, (int)lora,
                        (int)nope, 1.0f, qn, (int)j->ldq, wf, (int)lora, 0.0f, qc + hh * W,
                        (int)(nh * W));
        }
        for (int64_t i = 0; i < t->m; i++)
            memcpy(qc + (i * nh + hh) * W + lora, qn + i * j->ldq + nope,
                   (size_t)rope * sizeof(float));
    }
    mm_nt(k, qc, W, M, cache, W, nk, W, sc, nk);
    for (int64_t i = 0; i < t->m; i++)
        for (int64_t hh = 0; hh < nh; hh++)
            k->softmax(sc + (i * nh + hh) * nk, (int64_t)sq->n_past + t->r0 + i + 1, nk,
                       j->scale);
    mm_nn(k, sc, nk, M, cache, W, nk, lora, ol, lora);
    for (int64_t hh = 0; hh < nh; hh++) {
        int64_t h = t->h0 + hh;
        const char *wuv = (const char *)j->kvb->data +
                          (size_t)((h * (nope + vd) + nope) * ldw) * es;  /* [vd, lora] */
        float *o = j->out + (int64_t)(sq->row0 + t->r0) * j->ldo + h * vd;
        if (t->m < SMALL_ROWS) {
            k->gemm_small(ol + hh * lora, nh * lora, t->m, wuv, ldw, j->kvb->dtype, vd, lora, o,
                          j->ldo);
        } else {
            for (int64_t c = 0; c < vd; c++)
                k->to_f32(wf + c * lora, wuv + (size_t)(c * ldw) * es, j->kvb->dtype, lora);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)t->m, (int)vd, (int)lora,
                        1.0f, ol + hh * lora, (int)(nh * lora), wf, (int)lora, 0.0f, o,
                        (int)j->ldo);
        }
    }
}

int cpu_attn_mla(struct vl2_backend_ctx *ctx, int32_t layer, struct vl2_tensor *out,
                 const struct vl2_tensor *q, const struct vl2_tensor *c,
                 const struct vl2_tensor *k_pe, const struct vl2_tensor *kv_b, int32_t n_head,
                 int32_t nope_dim, int32_t rope_dim, int32_t v_dim, float scale,
                 struct vl2_err *err)
{
    const char *op = "attn_mla";
    struct att_job j;
    int64_t n_tasks, lora, W, max_nk = 0, max_m;
    size_t need;
    int r;

    if ((r = cpu_check_f32(out, op, "out", err)) < 0 || (r = cpu_check_f32(q, op, "q", err)) < 0 ||
        (r = cpu_check_f32(c, op, "c", err)) < 0 || (r = cpu_check_f32(k_pe, op, "k_pe", err)) < 0 ||
        (r = cpu_check_float(kv_b, op, "kv_b", err)) < 0)
        return r;
    if ((r = check_batch(ctx, q, op, "q", err)) < 0 || (r = check_batch(ctx, c, op, "c", err)) < 0 ||
        (r = check_batch(ctx, k_pe, op, "k_pe", err)) < 0 ||
        (r = check_batch(ctx, out, op, "out", err)) < 0)
        return r;
    if (n_head <= 0 || nope_dim <= 0 || rope_dim < 0 || v_dim <= 0)
        return vl2_err_set(err, VL2_EINVAL, "cpu: attn_mla: bad dimensions (n_head %d, nope %d, rope %d, v %d)",
                           (int)n_head, (int)nope_dim, (int)rope_dim, (int)v_dim);
    lora = c->cols;
    W = lora + rope_dim;
    if (q->cols != (int64_t)n_head * (nope_dim + rope_dim) || k_pe->cols != rope_dim ||
        out->cols != (int64_t)n_head * v_dim)
        return vl2_err_set(err, VL2_EINVAL,
                           "cpu: attn_mla: columns q %lld, k_pe %lld, out %lld; expected %lld, %d, %lld",
                           (long long)q->cols, (long long)k_pe->cols, (long long)out->cols,
                           (long long)n_head * (nope_dim + rope_dim), (int)rope_dim,
                           (long long)n_head * v_dim);
    if (kv_b->rows != (int64_t)n_head * (nope_dim + v_dim) || kv_b->cols != lora)
        return vl2_err_set(err, VL2_EINVAL, "cpu: attn_mla: kv_b is %lld x %lld, expected %lld x %lld",
                           (long long)kv_b->rows, (long long)kv_b->cols,
                           (long long)n_head * (nope_dim + v_dim), (long long)lora);
    if ((r = cpu_check_no_alias(out, q, op, "q", err)) < 0 ||
        (r = cpu_check_no_alias(out, c, op, "c", err)) < 0 ||
        (r = cpu_check_no_alias(out, k_pe, op, "k_pe", err)) < 0)
        return r;
    if ((r = check_caches(ctx, layer, VL2_ATTN_MLA, W, op, err)) < 0)
        return r;
    for (int32_t s = 0; s < ctx->n_seqs; s++)
        if (ctx->seqs[s].kv->shape.rope_dim != rope_dim)
            return vl2_err_set(err, VL2_EINVAL, "cpu: attn_mla: rope_dim %d, cache has %d",
                               (int)rope_dim, (int)ctx->seqs[s].kv->shape.rope_dim);
    for (int32_t s = 0; s < ctx->n_seqs; s++) {
        const struct vl2_batch_seq *sq = &ctx->seqs[s];
        float *cache = sq->kv->layers[layer].a;
        for (int32_t i = 0; i < sq->n_rows; i++) {
            float *dst = cache + (int64_t)(sq->n_past + i) * W;
            memcpy(dst, (const float *)c->data + (int64_t)(sq->row0 + i) * c->ld, (size_t)lora * 4);
            memcpy(dst + lora, (const float *)k_pe->data + (int64_t)(sq->row0 + i) * k_pe->ld,
                   (size_t)rope_dim * 4);
        }
        if (sq->n_past + sq->n_rows > max_nk)
            max_nk = sq->n_past + sq->n_rows;
    }
    /* absorbed or expanded form per sequence, by operation count */
    if (ctx->n_seqs > ctx->mla_exp_cap) {
        uint8_t *e = realloc(ctx->mla_exp, (size_t)ctx->n_seqs);
        if (!e)
            return vl2_err_set(err, VL2_ENOMEM, "cpu: attn_mla: out of memory");
        ctx->mla_exp = e;
        ctx->mla_exp_cap = ctx->n_seqs;
    }
    need = 0;
    for (int32_t s = 0; s < ctx->n_seqs; s++) {
        double R = ctx->seqs[s].n_rows, P = ctx->seqs[s].n_past, keys = P + R / 2.0;
        double H = n_head, L = (double)lora;
        double absorbed = R * H * (nope_dim + v_dim) * L + R * H * keys * (2 * L + rope_dim);
        double expanded = H * (P + R) * (nope_dim + v_dim) * L +
                          R * H * keys * (nope_dim + rope_dim + v_dim);
        int e = ctx->mla_mode == 2 || (ctx->mla_mode == 0 && expanded < absorbed);
        ctx->mla_exp[s] = (uint8_t)e;
        if (e) {
            size_t ne = ((size_t)(ctx->seqs[s].n_past + ctx->seqs[s].n_rows) *
                         (size_t)(nope_dim + v_dim + ATT_RB)) * sizeof(float) +
                        cpu_mm_scratch(lora) + CPU_ALIGN;
            if (ne > need)
                need = ne;
        }
    }
    memset(&j, 0, sizeof(j));
    if ((r = make_tasks(ctx, MLA_RB, n_head, ctx->mla_exp, &j.tasks, &n_tasks, err)) < 0)
        return r;
    max_m = (int64_t)MLA_RB * n_head;
    {
        int64_t wmax = (nope_dim > v_dim ? nope_dim : v_dim) * lora;
        size_t na = ((size_t)max_m * (size_t)(W + max_nk + lora) + (size_t)wmax) * sizeof(float);
        if (na > need)
            need = na;
    }
    if ((r = cpu_scratch_reserve(ctx, need, err)) < 0)
        return r;
    j.ctx = ctx;
    j.layer = layer;
    j.q = q->data;
    j.ldq = q->ld;
    j.out = out->data;
    j.ldo = out->ld;
    j.scale = scale;
    j.n_head = n_head;
    j.nope = nope_dim;
    j.rope = rope_dim;
    j.vdim = v_dim;
    j.lora = (int32_t)lora;
    j.kvb = kv_b;
    cpu_pool_run(ctx->pool, n_tasks, mla_task, &j);
    return 0;
}

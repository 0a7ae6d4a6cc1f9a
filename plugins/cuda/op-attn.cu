/* op-attn.cu - attention: attn_full (vision tower, cuBLAS), attn_mha and
 * attn_mla (causal, over the KV caches of the current batch), with their
 * validation, records, scratch plans and execution.
 *
 * MHA, and MLA sequences of a few rows, go through the tile kernel of
 * k-attn.cu; MLA steps whose sequences all have few rows (decode) through
 * the latent-tile kernel of k-mla.cu; in eager steps with an F32 cache, MLA
 * sequences of mla_blas_rows rows or more (prefill) through two cuBLAS
 * products around a causal softmax (mla_blas_core).  The choice is made when
 * the op is recorded (mla_choose_path) and kept in the record. */
#include <string.h>

#include "cuda-ctx.h"

/* ---- scratch plans ------------------------------------------------------------- */

struct mla_plan {
    float *qcat, *olat, *part_o, *part_ml, *sc;
    void  *qb, *ob;
};

static size_t plan_mla(const struct rec_attn_mla *m, char *base, struct mla_plan *p)
{
    struct carver c = { base, 0 };
    const int64_t n = m->n_rows, H = m->n_head, nope = m->nope, rope = m->rope, R = m->R;
    const int64_t split = m->n_split, blas = m->blas;
    const size_t es = vl2_dtype_size((int)m->kv_b.dtype);

    p->qcat = (float *)take(&c, (size_t)(n * H * (R + rope)) * 4);
    p->olat = (float *)take(&c, (size_t)(n * H * R) * 4);
    p->part_o = split > 1 ? (float *)take(&c, (size_t)(n * H * split * R) * 4) : NULL;
    p->part_ml = split > 1 ? (float *)take(&c, (size_t)(n * H * split * 2) * 4) : NULL;
    p->qb = blas ? take(&c, (size_t)(n * H * (nope + rope)) * es) : NULL;
    p->ob = blas ? take(&c, (size_t)(n * H * R) * es) : NULL;
    p->sc = m->path == MLA_PATH_BLAS ? (float *)take(&c, (size_t)m->sc_floats * 4) : NULL;
    return c.off;
}

static size_t plan_mha(const struct rec_attn_mha *m, char *base, float **part_o,
                       float **part_ml)
{
    struct carver c = { base, 0 };
    const int64_t n = m->n_rows, H = m->n_head, hd = m->head_dim, split = m->n_split;

    *part_o = split > 1 ? (float *)take(&c, (size_t)(n * H * split * hd) * 4) : NULL;
    *part_ml = split > 1 ? (float *)take(&c, (size_t)(n * H * split * 2) * 4) : NULL;
    return c.off;
}

size_t vl2__cu_plan_attn(const struct op_rec *r)
{
    struct mla_plan lp;
    float *a, *b;

    switch (r->kind) {
    case OPK_ATTN_FULL:
        return (size_t)(r->u.attn_full.n_head * r->u.attn_full.seq_len *
                        r->u.attn_full.seq_len) * 4;
    case OPK_ATTN_MHA: return plan_mha(&r->u.mha, NULL, &a, &b);
    case OPK_ATTN_MLA: return plan_mla(&r->u.mla, NULL, &lp);
    }
    return 0;
}

/* ---- attn_full ----------------------------------------------------------------- */

int vl2__cu_op_attn_full(struct vl2_backend_ctx *ctx, struct vl2_tensor *out,
                         const struct vl2_tensor *qkv, int32_t seq_len, int32_t n_head,
                         int32_t head_dim, float scale, struct vl2_err *err)
{
    struct op_rec r;
    int rc;

    if ((rc = vl2__cu_check_t(out, "attn_full", "out", 1, err)) < 0 ||
        (rc = vl2__cu_check_t(qkv, "attn_full", "qkv", 1, err)) < 0)
        return rc;
    if (seq_len <= 0 || n_head <= 0 || head_dim <= 0 || qkv->rows % seq_len != 0 ||
        qkv->cols != 3 * (int64_t)n_head * head_dim || out->rows != qkv->rows ||
        out->cols != (int64_t)n_head * head_dim)
        return vl2_err_set(err, VL2_EINVAL,
                           "cuda: attn_full: qkv %lld x %lld, out %lld x %lld do not match "
                           "seq_len %d, %d heads of %d",
                           (long long)qkv->rows, (long long)qkv->cols, (long long)out->rows,
                           (long long)out->cols, seq_len, n_head, head_dim);
    if ((int64_t)n_head * seq_len * seq_len * 4 > (int64_t)ATTN_FULL_SCRATCH)
        return vl2_err_set(err, VL2_EUNSUPPORTED,
                           "cuda: attn_full: %d heads over %d rows need too much scratch", n_head,
                           seq_len);
    if (out->data == qkv->data)
        return vl2_err_set(err, VL2_EINVAL, "cuda: attn_full: out must not alias qkv");
    if (qkv->rows == 0)
        return 0;
    rec_init(&r, OPK_ATTN_FULL);
    r.u.attn_full.out = td(out);
    r.u.attn_full.qkv = td(qkv);
    r.u.attn_full.seq_len = seq_len;
    r.u.attn_full.n_head = n_head;
    r.u.attn_full.head_dim = head_dim;
    r.u.attn_full.n_seq = qkv->rows / seq_len;
    r.u.attn_full.scale = scale;
    return vl2__cu_submit(ctx, &r, NULL, 0, err);
}

static int exec_attn_full(struct vl2_backend_ctx *ctx, const struct rec_attn_full *f,
                          struct vl2_err *err)
{
    const struct tdesc *out = &f->out, *qkv = &f->qkv;
    const int S = (int)f->seq_len, H = (int)f->n_head, hd = (int)f->head_dim;
    const int n_seq = (int)f->n_seq;
    const float scale = f->scale, one = 1.0f, zero = 0.0f;
    float *sc = (float *)ctx->scratch;
    int i;

    for (i = 0; i < n_seq; i++) {
        const float *base = (const float *)qkv->data + (int64_t)i * S * qkv->ld;
        const float *Q = base, *K = base + (int64_t)H * hd, *V = base + 2 * (int64_t)H * hd;
        float *O = (float *)out->data + (int64_t)i * S * out->ld;
        cublasStatus_t s;
        cudaError_t e;

        s = cublasGemmStridedBatchedEx(ctx->blas, CUBLAS_OP_T, CUBLAS_OP_N, S, S, hd, &scale, K,
                                       CUDA_R_32F, (int)qkv->ld, hd, Q, CUDA_R_32F,
                                       (int)qkv->ld, hd, &zero, sc, CUDA_R_32F, S,
                                       (long long)S * S, H, CUBLAS_COMPUTE_32F_FAST_TF32,
                                       CUBLAS_GEMM_DEFAULT);
        if (s != CUBLAS_STATUS_SUCCESS)
            return blas_fail(err, s, "attn_full: scores");
        e = vl2__cu_softmax_rows(sc, (int64_t)H * S, S, ctx->ks);
        if (e != cudaSuccess)
            return cu_fail(err, e, "attn_full: softmax");
        s = cublasGemmStridedBatchedEx(ctx->blas, CUBLAS_OP_N, CUBLAS_OP_N, hd, S, S, &one, V,
                                       CUDA_R_32F, (int)qkv->ld, hd, sc, CUDA_R_32F, S,
                                       (long long)S * S, &zero, O, CUDA_R_32F, (int)out->ld, hd,
                                       H, CUBLAS_COMPUTE_32F_FAST_TF32, CUBLAS_GEMM_DEFAULT);
        if (s != CUBLAS_STATUS_SUCCESS)
            return blas_fail(err, s, "attn_full: values");
    }
    return 0;
}

/* ---- attn_mha ------------------------------------------------------------------ */

/* Attention launch geometry for the current batch: query tiles per kv head
 * and key splits (enough blocks to fill the device). */
static void attn_geometry(struct vl2_backend_ctx *ctx, int n_kv, int group, int64_t *ret_qt,
                          int64_t *ret_split)
{
    const int64_t qt = ((int64_t)ctx->b_max_seq_rows * group + VL2_CU_ATTN_QT - 1) /
                       VL2_CU_ATTN_QT;
    const int64_t blocks = (int64_t)ctx->b_seqs * n_kv * qt;
    int64_t split = (2 * (int64_t)ctx->prop.multiProcessorCount + blocks - 1) / blocks;

    if (split < 1)
        split = 1;
    if (split > 32)
        split = 32;
    *ret_qt = qt;
    *ret_split = split;
}

int vl2__cu_op_attn_mha(struct vl2_backend_ctx *ctx, int32_t layer, struct vl2_tensor *out,
                        const struct vl2_tensor *q, const struct vl2_tensor *k,
                        const struct vl2_tensor *v, int32_t n_head, int32_t n_kv_head,
                        int32_t head_dim, float scale, struct vl2_err *err)
{
    const struct vl2_kv_shape *s = &ctx->b_kv;
    struct op_rec r;
    struct rec_attn_mha *m = &r.u.mha;
    int rc;

    if ((rc = vl2__cu_check_t(out, "attn_mha", "out", 1, err)) < 0 ||
        (rc = vl2__cu_check_t(q, "attn_mha", "q", 1, err)) < 0 ||
        (rc = vl2__cu_check_t(k, "attn_mha", "k", 1, err)) < 0 ||
        (rc = vl2__cu_check_t(v, "attn_mha", "v", 1, err)) < 0 ||
        (rc = vl2__cu_need_batch(ctx, "attn_mha", q, err)) < 0)
        return rc;
    if (s->kind != VL2_ATTN_MHA || layer < 0 || layer >= s->n_layer ||
        n_kv_head != s->n_kv_head || head_dim != s->head_dim || n_head <= 0 ||
        n_head % n_kv_head != 0)
        return vl2_err_set(err, VL2_EINVAL,
                           "cuda: attn_mha: layer %d, %d heads, %d kv heads of %d do not match "
                           "the caches (%s, %d layers, %d kv heads of %d)",
                           layer, n_head, n_kv_head, head_dim,
                           s->kind == VL2_ATTN_MHA ? "MHA" : "MLA", s->n_layer, s->n_kv_head,
                           s->head_dim);
    if (q->cols != (int64_t)n_head * head_dim || out->cols != q->cols ||
        k->cols != (int64_t)n_kv_head * head_dim || v->cols != k->cols ||
        out->rows != q->rows || k->rows != q->rows || v->rows != q->rows)
        return vl2_err_set(err, VL2_EINVAL, "cuda: attn_mha: q/k/v/out shapes do not match "
                           "%d heads, %d kv heads of %d", n_head, n_kv_head, head_dim);
    if (!vl2__cu_attn_smem(head_dim, head_dim, 0) ||
        vl2__cu_attn_smem(head_dim, head_dim, 0) > (size_t)ctx->max_smem)
        return vl2_err_set(err, VL2_EUNSUPPORTED, "cuda: attn_mha: head_dim %d too large",
                           head_dim);
    rec_init(&r, OPK_ATTN_MHA);
    m->out = td(out);
    m->q = td(q);
    m->k = td(k);
    m->v = td(v);
    m->layer = layer;
    m->n_head = n_head;
    m->n_kv = n_kv_head;
    m->head_dim = head_dim;
    m->kv_dtype = s->dtype;
    m->n_seqs = ctx->b_seqs;
    m->n_rows = ctx->b_rows;
    attn_geometry(ctx, n_kv_head, n_head / n_kv_head, &m->qt_per_kvh, &m->n_split);
    m->scale = scale;
    return vl2__cu_submit(ctx, &r, NULL, 0, err);
}

static int exec_attn_mha(struct vl2_backend_ctx *ctx, const struct rec_attn_mha *m,
                         struct vl2_err *err)
{
    const struct tdesc *out = &m->out, *q = &m->q, *k = &m->k, *v = &m->v;
    const int H = (int)m->n_head, nkv = (int)m->n_kv, hd = (int)m->head_dim;
    const int dt = (int)m->kv_dtype, n_seqs = (int)m->n_seqs, n = (int)m->n_rows;
    struct vl2__cu_attn_args a;
    cudaError_t e;

    memset(&a, 0, sizeof(a));
    a.kn_a = (const float *)k->data;
    a.kn_a_ld = k->ld;
    a.kn_a_cols = hd;
    a.kn_b = NULL;
    a.vn = (const float *)v->data;
    a.vn_ld = v->ld;
    a.q = (const float *)q->data;
    a.q_ld = q->ld;
    a.q_hs = hd;
    a.out = (float *)out->data;
    a.out_ld = out->ld;
    a.out_hs = hd;
    a.seqs = meta_seqs(ctx);
    a.layer = (int)m->layer;
    a.kv_row = nkv * hd;
    a.kv_nblk = 2;
    a.v_blk = 1;
    a.k_hs = hd;
    a.v_hs = hd;
    a.dk = hd;
    a.dv = hd;
    a.n_head = H;
    a.n_kv = nkv;
    a.group = H / nkv;
    a.scale = m->scale;
    a.qt_per_kvh = (int)m->qt_per_kvh;
    a.n_split = (int)m->n_split;
    plan_mha(m, ctx->scratch, &a.part_o, &a.part_ml);
    e = vl2__cu_attn(&a, dt, n_seqs, ctx->ks);
    if (e != cudaSuccess)
        return cu_fail(err, e, "attn_mha");
    vl2__cu_prof_sub(ctx, SUB_ATTN_MAIN);
    if (a.n_split > 1 && (e = vl2__cu_attn_combine(&a, n, ctx->ks)) != cudaSuccess)
        return cu_fail(err, e, "attn_mha: combine");
    vl2__cu_prof_sub(ctx, SUB_ATTN_COMBINE);
    return 0;
}

/* ---- attn_mla ------------------------------------------------------------------ */

/* How the attention core of an attn_mla record runs (m->path), with what it
 * needs:
 *  - decode kernel (k-mla.cu) when every sequence has few rows: n_split runs
 *    of keys per sequence, nq_max queries per sequence at most, q_block of
 *    them per block (halved from all of them, down to 4, while the blocks
 *    still run at once, one per multiprocessor: a block's time is what a
 *    decode step waits for);
 *  - cuBLAS products for the sequences with at least mla_blas_rows rows in an
 *    eager step with an F32 cache (prefill; never inside a captured graph,
 *    whose replays change n_past): q_block query rows per pass, sc_floats
 *    score floats, n_small sequences left to the tile kernel, blas_rows the
 *    row threshold;
 *  - else the tile kernel of k-attn.cu for everything. */
static void mla_choose_path(struct vl2_backend_ctx *ctx, struct rec_attn_mla *m, int n_head,
                            int R, int rope)
{
    const int64_t nq = (int64_t)ctx->b_max_seq_rows * n_head;

    m->path = MLA_PATH_TILES;
    if (ctx->opt.mla_decode && nq <= 64 && vl2__cu_mla_decode_nqt((int)nq, R) &&
        vl2__cu_mla_decode_smem(R + rope, (int)nq) <= (size_t)ctx->max_smem) {
        const int64_t sms = ctx->prop.multiProcessorCount;
        int64_t split = sms / ctx->b_seqs, qg = nq;
        m->path = MLA_PATH_DECODE;
        if (split > ctx->opt.mla_split)
            split = ctx->opt.mla_split;
        split = split < 1 ? 1 : split > 64 ? 64 : split;
        if (ctx->opt.mla_qgroup > 0)
            qg = ctx->opt.mla_qgroup < nq ? ctx->opt.mla_qgroup : nq;
        else
            while (qg > 4 && ctx->b_seqs * split * ((nq + qg / 2 - 1) / (qg / 2)) <= sms)
                qg /= 2;
        m->n_split = split;
        m->q_block = qg;
        m->nq_max = nq;
        return;
    }
    if (ctx->mode == MODE_EAGER && ctx->opt.mla_blas_rows > 0 &&
        ctx->b_kv.dtype == VL2_DTYPE_F32 && ctx->b_max_seq_rows >= ctx->opt.mla_blas_rows) {
        const struct vl2__cu_seq *ds = (const struct vl2__cu_seq *)ctx->meta_h;
        int64_t lmax = 0, small = 0, chunk;
        int i;
        for (i = 0; i < ctx->b_seqs; i++) {
            if (ds[i].n_rows < ctx->opt.mla_blas_rows)
                small++;
            else if (ds[i].n_past + ds[i].n_rows > lmax)
                lmax = ds[i].n_past + ds[i].n_rows;
        }
        chunk = (int64_t)(MLA_SCORES_MAX / 4) / ((int64_t)n_head * lmax);
        if (chunk > ctx->b_max_seq_rows)
            chunk = ctx->b_max_seq_rows;
        if (ctx->opt.mla_chunk > 0 && chunk > ctx->opt.mla_chunk)
            chunk = ctx->opt.mla_chunk;
        if (chunk < 1)
            chunk = 1;
        m->path = MLA_PATH_BLAS;
        m->q_block = chunk;
        m->sc_floats = chunk * n_head * lmax;
        m->n_small = small;
        m->blas_rows = ctx->opt.mla_blas_rows;
    }
}

int vl2__cu_op_attn_mla(struct vl2_backend_ctx *ctx, int32_t layer, struct vl2_tensor *out,
                        const struct vl2_tensor *q, const struct vl2_tensor *c,
                        const struct vl2_tensor *k_pe, const struct vl2_tensor *kv_b,
                        int32_t n_head, int32_t nope_dim, int32_t rope_dim, int32_t v_dim,
                        float scale, struct vl2_err *err)
{
    const struct vl2_kv_shape *s = &ctx->b_kv;
    const int32_t R = s->kv_lora_rank;
    struct op_rec r;
    struct rec_attn_mla *m = &r.u.mla;
    size_t sm;
    int rc;

    if ((rc = vl2__cu_check_t(out, "attn_mla", "out", 1, err)) < 0 ||
        (rc = vl2__cu_check_t(q, "attn_mla", "q", 1, err)) < 0 ||
        (rc = vl2__cu_check_t(c, "attn_mla", "c", 1, err)) < 0 ||
        (rc = vl2__cu_check_t(k_pe, "attn_mla", "k_pe", 1, err)) < 0 ||
        (rc = vl2__cu_check_t(kv_b, "attn_mla", "kv_b", 0, err)) < 0 ||
        (rc = vl2__cu_need_batch(ctx, "attn_mla", q, err)) < 0)
        return rc;
    if (s->kind != VL2_ATTN_MLA || layer < 0 || layer >= s->n_layer || rope_dim != s->rope_dim ||
        n_head <= 0 || nope_dim <= 0 || v_dim <= 0)
        return vl2_err_set(err, VL2_EINVAL,
                           "cuda: attn_mla: layer %d, rope %d do not match the caches (%s, %d "
                           "layers, rank %d, rope %d)",
                           layer, rope_dim, s->kind == VL2_ATTN_MLA ? "MLA" : "MHA",
                           s->n_layer, s->kv_lora_rank, s->rope_dim);
    if (q->cols != (int64_t)n_head * (nope_dim + rope_dim) || c->cols != R ||
        k_pe->cols != rope_dim || kv_b->rows != (int64_t)n_head * (nope_dim + v_dim) ||
        kv_b->cols != R || out->cols != (int64_t)n_head * v_dim || out->rows != q->rows ||
        c->rows != q->rows || k_pe->rows != q->rows)
        return vl2_err_set(err, VL2_EINVAL,
                           "cuda: attn_mla: shapes q %lld x %lld, c %lld x %lld, k_pe %lld x "
                           "%lld, kv_b %lld x %lld, out %lld x %lld do not match %d heads "
                           "(nope %d, rope %d, v %d, rank %d)",
                           (long long)q->rows, (long long)q->cols, (long long)c->rows,
                           (long long)c->cols, (long long)k_pe->rows, (long long)k_pe->cols,
                           (long long)kv_b->rows, (long long)kv_b->cols, (long long)out->rows,
                           (long long)out->cols, n_head, nope_dim, rope_dim, v_dim, R);
    sm = vl2__cu_attn_smem(R + rope_dim, R, 1);
    if (!sm || sm > (size_t)ctx->max_smem)
        return vl2_err_set(err, VL2_EUNSUPPORTED, "cuda: attn_mla: rank %d + rope %d too large",
                           R, rope_dim);
    rec_init(&r, OPK_ATTN_MLA);
    m->out = td(out);
    m->q = td(q);
    m->c = td(c);
    m->k_pe = td(k_pe);
    m->kv_b = td(kv_b);
    m->layer = layer;
    m->n_head = n_head;
    m->nope = nope_dim;
    m->rope = rope_dim;
    m->kv_dtype = s->dtype;
    m->R = R;
    m->n_seqs = ctx->b_seqs;
    m->n_rows = ctx->b_rows;
    attn_geometry(ctx, 1, n_head, &m->qt_per_kvh, &m->n_split);
    m->v_dim = v_dim;
    m->blas = q->rows > GEMV_MAX_ROWS;
    m->out_nt = gemv_nt(q->rows);
    {
        const size_t es = vl2_dtype_size(kv_b->dtype);
        m->out_vec = aligned16(kv_b->data) && (kv_b->ld * es) % 16 == 0 && R % 4 == 0;
    }
    mla_choose_path(ctx, m, n_head, R, rope_dim);
    m->scale = scale;
    return vl2__cu_submit(ctx, &r, NULL, 0, err);
}

/* The attention of the sequences with at least blas_rows rows, one by one
 * (eager steps only: the host metadata is the batch's): their new rows into
 * the cache, then per pass of at most q_block query rows S = Q K^T over the
 * keys the pass can see, the causal softmax, and O = P V, V being the latent
 * part of the same cache rows.  TF32 tensor cores with F32 accumulation. */
static int mla_blas_core(struct vl2_backend_ctx *ctx, const struct rec_attn_mla *m,
                         const struct mla_plan *p, const struct tdesc *c,
                         const struct tdesc *kpe, struct vl2_err *err)
{
    const struct vl2__cu_seq *ds = (const struct vl2__cu_seq *)ctx->meta_h;
    const int H = (int)m->n_head, rope = (int)m->rope, R = (int)m->R;
    const int n_seqs = (int)m->n_seqs, layer = (int)m->layer, dk = R + rope;
    const int64_t chunk = m->q_block;
    const float one = 1.0f, zero = 0.0f;
    int i;

    for (i = 0; i < n_seqs; i++) {
        const struct vl2__cu_seq *q = &ds[i];
        const float *kv = (const float *)q->kv + (int64_t)layer * q->cap * dk;
        int64_t t0;
        cudaError_t e;

        if (q->n_rows < m->blas_rows)
            continue;
        e = vl2__cu_mla_store((float *)kv + (int64_t)q->n_past * dk, VL2_DTYPE_F32, dk,
                              (const float *)c->data + (int64_t)q->row0 * c->ld, c->ld, R,
                              (const float *)kpe->data + (int64_t)q->row0 * kpe->ld, kpe->ld,
                              rope, q->n_rows, ctx->ks);
        if (e != cudaSuccess)
            return cu_fail(err, e, "attn_mla: cache rows");
        for (t0 = 0; t0 < q->n_rows; t0 += chunk) {
            const int64_t t1 = t0 + chunk < q->n_rows ? t0 + chunk : q->n_rows;
            const int64_t rows = (t1 - t0) * H, Lc = q->n_past + t1;
            const float *qc = p->qcat + ((int64_t)q->row0 + t0) * H * dk;
            float *oc = p->olat + ((int64_t)q->row0 + t0) * H * R;
            cublasStatus_t s;

            s = cublasGemmEx(ctx->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)Lc, (int)rows, dk, &one,
                             kv, CUDA_R_32F, dk, qc, CUDA_R_32F, dk, &zero, p->sc, CUDA_R_32F,
                             (int)Lc, CUBLAS_COMPUTE_32F_FAST_TF32, CUBLAS_GEMM_DEFAULT);
            if (s != CUBLAS_STATUS_SUCCESS)
                return blas_fail(err, s, "attn_mla: scores");
            e = vl2__cu_softmax_causal(p->sc, rows, Lc, H, (int)t0, q->n_past, m->scale,
                                       ctx->ks);
            if (e != cudaSuccess)
                return cu_fail(err, e, "attn_mla: softmax");
            s = cublasGemmEx(ctx->blas, CUBLAS_OP_N, CUBLAS_OP_N, R, (int)rows, (int)Lc, &one,
                             kv, CUDA_R_32F, dk, p->sc, CUDA_R_32F, (int)Lc, &zero, oc,
                             CUDA_R_32F, R, CUBLAS_COMPUTE_32F_FAST_TF32, CUBLAS_GEMM_DEFAULT);
            if (s != CUBLAS_STATUS_SUCCESS)
                return blas_fail(err, s, "attn_mla: values");
        }
    }
    return 0;
}

/* skip= steps of attn_mla (test builds): 1 queries, 2 core, 4 output. */
#ifdef VL2_TEST_KNOBS
#define MLA_SKIP(ctx, bit) ((ctx)->opt.skip_sub & (bit))
#else
#define MLA_SKIP(ctx, bit) 0u
#endif

static int exec_attn_mla(struct vl2_backend_ctx *ctx, const struct rec_attn_mla *m,
                         struct vl2_err *err)
{
    const struct tdesc *out = &m->out, *q = &m->q, *c = &m->c, *kpe = &m->k_pe;
    const struct tdesc *kvb = &m->kv_b;
    const int H = (int)m->n_head, nope = (int)m->nope, rope = (int)m->rope;
    const int dt = (int)m->kv_dtype, R = (int)m->R, n_seqs = (int)m->n_seqs;
    const int n = (int)m->n_rows, vd = (int)m->v_dim;
    const int blas = (int)m->blas;
    const int64_t qh = nope + rope;
    const size_t es = vl2_dtype_size(kvb->dtype);
    const float one = 1.0f, zero = 0.0f;
    struct vl2__cu_attn_args a;
    struct mla_plan p;
    cublasStatus_t s;
    cudaError_t e;
    int rc;

    plan_mla(m, ctx->scratch, &p);
    if (!blas && MLA_SKIP(ctx, 1u)) {
        e = cudaSuccess;
    } else if (!blas) {
        e = vl2__cu_mla_qabs(p.qcat, (const float *)q->data, q->ld, kvb->data, kvb->ld,
                             kvb->dtype, n, H, nope, rope, vd, R, ctx->ks);
    } else {
        const void *B = q->data;
        int64_t ldb = q->ld;
        if (kvb->dtype != VL2_DTYPE_F32) {
            e = vl2__cu_convert(p.qb, H * qh, kvb->dtype, (const float *)q->data, q->ld, n,
                                (int)(H * qh), ctx->ks);
            if (e != cudaSuccess)
                return cu_fail(err, e, "attn_mla: convert");
            B = p.qb;
            ldb = H * qh;
        }
        s = cublasGemmStridedBatchedEx(ctx->blas, CUBLAS_OP_N, CUBLAS_OP_N, R, n, nope, &one,
                                       kvb->data, cuda_type(kvb->dtype), (int)kvb->ld,
                                       (long long)(nope + vd) * kvb->ld, B,
                                       cuda_type(kvb->dtype), (int)ldb, qh, &zero, p.qcat,
                                       CUDA_R_32F, H * (R + rope), R + rope, H,
                                       CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
        if (s != CUBLAS_STATUS_SUCCESS)
            return blas_fail(err, s, "attn_mla: absorb");
        e = cudaSuccess;
    }
    if (e == cudaSuccess && blas)   /* the absorbing kernel copies the rotated part itself */
        e = vl2__cu_mla_qpe(p.qcat, (const float *)q->data, q->ld, n, H, nope, rope, R, ctx->ks);
    if (e != cudaSuccess)
        return cu_fail(err, e, "attn_mla: queries");
    vl2__cu_prof_sub(ctx, SUB_ATTN_QUERIES);

    memset(&a, 0, sizeof(a));
    a.q = p.qcat;
    a.q_ld = (int64_t)H * (R + rope);
    a.q_hs = R + rope;
    a.out = p.olat;
    a.out_ld = (int64_t)H * R;
    a.out_hs = R;
    a.seqs = meta_seqs(ctx);
    a.rows = meta_rows(ctx);
    a.layer = (int)m->layer;
    a.kv_row = R + rope;
    a.kv_nblk = 1;
    a.v_blk = 0;
    a.k_hs = 0;
    a.v_hs = 0;
    a.dk = R + rope;
    a.dv = R;
    a.n_head = H;
    a.n_kv = 1;
    a.group = H;
    a.scale = m->scale;
    a.qt_per_kvh = (int)m->qt_per_kvh;
    a.n_split = (int)m->n_split;
    a.part_o = p.part_o;
    a.part_ml = p.part_ml;
    a.kn_a = (const float *)c->data;
    a.kn_a_ld = c->ld;
    a.kn_a_cols = R;
    a.kn_b = (const float *)kpe->data;
    a.kn_b_ld = kpe->ld;
    if (m->path == MLA_PATH_DECODE && MLA_SKIP(ctx, 2u)) {
        a.n_split = 1;
        e = cudaSuccess;
    } else if (m->path == MLA_PATH_DECODE) {
        e = vl2__cu_mla_decode(&a, dt, n_seqs, (int)m->nq_max, (int)m->q_block, ctx->ks);
    } else {
        a.skip_rows = m->path == MLA_PATH_BLAS ? (int)m->blas_rows : 0;
        e = a.skip_rows && !m->n_small ? cudaSuccess : vl2__cu_attn(&a, dt, n_seqs, ctx->ks);
    }
    if (e != cudaSuccess)
        return cu_fail(err, e, "attn_mla");
    if (m->path == MLA_PATH_BLAS && (rc = mla_blas_core(ctx, m, &p, c, kpe, err)) < 0)
        return rc;
    vl2__cu_prof_sub(ctx, SUB_ATTN_MAIN);
    if (a.n_split > 1 && (!a.skip_rows || m->n_small) &&
        (e = vl2__cu_attn_combine(&a, n, ctx->ks)) != cudaSuccess)
        return cu_fail(err, e, "attn_mla: combine");
    vl2__cu_prof_sub(ctx, SUB_ATTN_COMBINE);

    if (!blas && MLA_SKIP(ctx, 4u))
        return 0;
    if (!blas) {
        struct vl2__cu_gemv_args g;
        memset(&g, 0, sizeof(g));
        g.x = p.olat;
        g.ldx = (int64_t)H * R;
        g.y = (float *)out->data;
        g.ldy = out->ld;
        g.g0.wa = (const char *)kvb->data + (size_t)nope * kvb->ld * es;
        g.g0.ldw = kvb->ld;
        g.g0.n_out = vd;
        g.g0.count = n;
        g.g0.K = R;
        g.w_gs = (nope + vd) * kvb->ld;
        g.x_gs = R;
        g.y_gs = vd;
        e = vl2__cu_gemv(&g, kvb->dtype, (int)m->out_nt, 0, (int)m->out_vec, vd, H, ctx->ks);
        vl2__cu_prof_sub(ctx, SUB_ATTN_OUT);
        return launched(e, "attn_mla: output", err);
    }
    {
        const void *B = p.olat;
        int64_t ldb = (int64_t)H * R;
        if (kvb->dtype != VL2_DTYPE_F32) {
            e = vl2__cu_convert(p.ob, (int64_t)H * R, kvb->dtype, p.olat, (int64_t)H * R, n,
                                H * R, ctx->ks);
            if (e != cudaSuccess)
                return cu_fail(err, e, "attn_mla: convert");
            B = p.ob;
        }
        s = cublasGemmStridedBatchedEx(ctx->blas, CUBLAS_OP_T, CUBLAS_OP_N, vd, n, R, &one,
                                       (const char *)kvb->data + (size_t)nope * kvb->ld * es,
                                       cuda_type(kvb->dtype), (int)kvb->ld,
                                       (long long)(nope + vd) * kvb->ld, B,
                                       cuda_type(kvb->dtype), (int)ldb, R, &zero, out->data,
                                       CUDA_R_32F, (int)out->ld, vd, H, CUBLAS_COMPUTE_32F,
                                       CUBLAS_GEMM_DEFAULT);
        if (s != CUBLAS_STATUS_SUCCESS)
            return blas_fail(err, s, "attn_mla: output");
    }
    return 0;
}

int vl2__cu_exec_attn(struct vl2_backend_ctx *ctx, const struct op_rec *r, struct vl2_err *err)
{
    switch (r->kind) {
    case OPK_ATTN_FULL: return exec_attn_full(ctx, &r->u.attn_full, err);
    case OPK_ATTN_MHA: return exec_attn_mha(ctx, &r->u.mha, err);
    case OPK_ATTN_MLA: return exec_attn_mla(ctx, &r->u.mla, err);
    }
    return vl2_err_set(err, VL2_EINTERNAL, "cuda: op record %d is no attention", r->kind);
}

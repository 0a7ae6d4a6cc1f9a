/* llm.c - the DeepseekV2 decoder (spec 7) for a batch of rows from several
 * sequences.  forward() is the whole model: embed (token embeddings, image
 * rows scattered over the placeholders) -> layers (MHA or MLA attention over
 * each sequence's KV cache, dense MLP or MoE) -> head (final norm and
 * lm_head at the rows whose logits are wanted), then gather_logits() brings
 * them back.  vl2_model_step() cuts the items into such passes. */
#include "model-impl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int vl2__llm_scratch_init(struct vl2_model *m, struct vl2_err *err)
{
    const struct vl2_lm_config *c = &m->cfg.lm;
    struct vl2_llm_scratch *s = &m->ls;
    const int64_t R = m->params.max_rows, L = m->params.max_logit_rows, D = c->d_model;
    int has_dense = 0, i, r;

    for (i = 0; i < c->n_layer; i++)
        if (!m->layers[i].is_moe)
            has_dense = 1;
    if ((r = vl2__model_alloc(m, &s->x, R, D, err)) < 0 ||
        (r = vl2__model_alloc(m, &s->h, R, D, err)) < 0 ||
        (r = vl2__model_alloc(m, &s->a, R, D, err)) < 0)
        return r;
    if (!c->use_mla) {
        if ((r = vl2__model_alloc(m, &s->q, R, (int64_t)c->n_head * c->d_head, err)) < 0 ||
            (r = vl2__model_alloc(m, &s->k, R, (int64_t)c->n_kv_head * c->d_head, err)) < 0 ||
            (r = vl2__model_alloc(m, &s->v, R, (int64_t)c->n_kv_head * c->d_head, err)) < 0 ||
            (r = vl2__model_alloc(m, &s->o, R, (int64_t)c->n_head * c->d_head, err)) < 0)
            return r;
    } else {
        if ((r = vl2__model_alloc(m, &s->q, R, (int64_t)c->n_head * (c->d_nope + c->d_rope),
                                  err)) < 0 ||
            (r = vl2__model_alloc(m, &s->ckv, R, (int64_t)c->kv_lora_rank + c->d_rope,
                                  err)) < 0 ||
            (r = vl2__model_alloc(m, &s->c, R, c->kv_lora_rank, err)) < 0 ||
            (r = vl2__model_alloc(m, &s->o, R, (int64_t)c->n_head * c->d_v, err)) < 0)
            return r;
        if (c->q_lora_rank > 0 &&
            (r = vl2__model_alloc(m, &s->qa, R, c->q_lora_rank, err)) < 0)
            return r;
    }
    if (has_dense &&
        ((r = vl2__model_alloc(m, &s->g, R, c->d_ff, err)) < 0 ||
         (r = vl2__model_alloc(m, &s->u, R, c->d_ff, err)) < 0))
        return r;
    if ((r = vl2__model_alloc(m, &s->last, L, D, err)) < 0 ||
        (r = vl2__model_alloc(m, &s->logits, L, c->n_vocab, err)) < 0)
        return r;
    if (m->ops->argmax) {
        if ((r = vl2__model_alloc_dt(m, &s->best, VL2_DTYPE_I32, L, 1, err)) < 0)
            return r;
        if (!(s->best_h = malloc((size_t)L * sizeof(*s->best_h))))
            return vl2_err_set(err, VL2_ENOMEM, "model: out of memory");
    }
    s->ids = malloc((size_t)R * sizeof(*s->ids));
    s->dst = malloc((size_t)R * sizeof(*s->dst));
    s->src = malloc((size_t)R * sizeof(*s->src));
    s->bseq = malloc((size_t)R * sizeof(*s->bseq));
    s->items = malloc((size_t)R * sizeof(*s->items));
    s->cap_items = (size_t)R;
    s->pc = malloc((size_t)R * sizeof(*s->pc));
    if (!s->ids || !s->dst || !s->src || !s->bseq || !s->items || !s->pc)
        return vl2_err_set(err, VL2_ENOMEM, "model: out of memory");
    return 0;
}

/* ---- one pass ----------------------------------------------------------- */

#define VIEW(t, n) vl2_tensor_rows(&(t), 0, (n))

/* Epsilon of the MLA low-rank norms (q_a_layernorm, kv_a_layernorm): the
 * official DeepseekV2Attention builds them as DeepseekV2RMSNorm(rank), whose
 * default eps is 1e-6, not the config's rms_norm_eps. */
#define LORA_NORM_EPS 1e-6f

static int attention(struct vl2_model *m, int il, int32_t n, struct vl2_err *err)
{
    const struct vl2_backend_ops *ops = m->ops;
    struct vl2_backend_ctx *ctx = m->ctx;
    const struct vl2_lm_config *c = &m->cfg.lm;
    const struct vl2_llm_layer *l = &m->layers[il];
    struct vl2_llm_scratch *s = &m->ls;
    struct vl2_tensor h = VIEW(s->h, n), q = VIEW(s->q, n), o = VIEW(s->o, n);
    struct vl2_tensor a = VIEW(s->a, n);
    const float theta = (float)c->rope_theta;
    int r;

    if (!c->use_mla) {
        struct vl2_tensor k = VIEW(s->k, n), v = VIEW(s->v, n);
        const int32_t dh = c->d_head;
        if ((r = ops->linear(ctx, &q, &h, &l->wq, NULL, err)) < 0 ||
            (r = ops->linear(ctx, &k, &h, &l->wk, NULL, err)) < 0 ||
            (r = ops->linear(ctx, &v, &h, &l->wv, NULL, err)) < 0 ||
            (r = ops->rope(ctx, &q, c->n_head, dh, 0, dh, theta, VL2_ROPE_NEOX, err)) < 0 ||
            (r = ops->rope(ctx, &k, c->n_kv_head, dh, 0, dh, theta, VL2_ROPE_NEOX, err)) < 0 ||
            (r = ops->attn_mha(ctx, il, &o, &q, &k, &v, c->n_head, c->n_kv_head, dh,
                               1.0f / sqrtf((float)dh), err)) < 0)
            return r;
    } else {
        struct vl2_tensor ckv = VIEW(s->ckv, n), cn = VIEW(s->c, n);
        struct vl2_tensor clat = vl2_tensor_cols(&ckv, 0, c->kv_lora_rank);
        struct vl2_tensor kpe = vl2_tensor_cols(&ckv, c->kv_lora_rank, c->d_rope);
        const int32_t qh = c->d_nope + c->d_rope;
        if (c->q_lora_rank > 0) {
            struct vl2_tensor qa = VIEW(s->qa, n);
            if ((r = ops->linear(ctx, &qa, &h, &l->wq_a, NULL, err)) < 0 ||
                (r = ops->rmsnorm(ctx, &qa, &qa, &l->q_a_norm, LORA_NORM_EPS, err)) < 0 ||
                (r = ops->linear(ctx, &q, &qa, &l->wq_b, NULL, err)) < 0)
                return r;
        } else if ((r = ops->linear(ctx, &q, &h, &l->wq, NULL, err)) < 0) {
            return r;
        }
        if ((r = ops->rope(ctx, &q, c->n_head, qh, c->d_nope, c->d_rope, theta,
                           VL2_ROPE_INTERLEAVED, err)) < 0 ||
            (r = ops->linear(ctx, &ckv, &h, &l->wkv_a, NULL, err)) < 0 ||
            (r = ops->rmsnorm(ctx, &cn, &clat, &l->kv_a_norm, LORA_NORM_EPS, err)) < 0 ||
            (r = ops->rope(ctx, &ckv, 1, c->kv_lora_rank + c->d_rope, c->kv_lora_rank,
                           c->d_rope, theta, VL2_ROPE_INTERLEAVED, err)) < 0 ||
            (r = ops->attn_mla(ctx, il, &o, &q, &cn, &kpe, &l->wkv_b, c->n_head, c->d_nope,
                               c->d_rope, c->d_v, 1.0f / sqrtf((float)qh), err)) < 0)
            return r;
    }
    return ops->linear(ctx, &a, &o, &l->wo, NULL, err);
}

static int mlp(struct vl2_model *m, int il, int32_t n, struct vl2_err *err)
{
    const struct vl2_backend_ops *ops = m->ops;
    struct vl2_backend_ctx *ctx = m->ctx;
    const struct vl2_llm_layer *l = &m->layers[il];
    struct vl2_llm_scratch *s = &m->ls;
    struct vl2_tensor h = VIEW(s->h, n), a = VIEW(s->a, n);
    int r;

    if (l->is_moe)
        return ops->moe(ctx, &a, &h, &l->moe, err);
    {
        struct vl2_tensor g = VIEW(s->g, n), u = VIEW(s->u, n);
        if ((r = ops->linear(ctx, &g, &h, &l->w_gate, NULL, err)) < 0 ||
            (r = ops->linear(ctx, &u, &h, &l->w_up, NULL, err)) < 0 ||
            (r = ops->swiglu(ctx, &g, &g, &u, err)) < 0)
            return r;
        return ops->linear(ctx, &a, &g, &l->w_down, NULL, err);
    }
}

/* Image row @g (counted over the item's images) -> image index and row. */
static void image_row(const struct vl2_step_item *it, int64_t g, int32_t *ret_img,
                      int32_t *ret_row)
{
    int32_t j = 0;

    while (j < it->n_images - 1 && g >= it->images[j]->n_tokens) {
        g -= it->images[j]->n_tokens;
        j++;
    }
    *ret_img = j;
    *ret_row = (int32_t)g;
}

/* Overwrite the placeholder rows of @p (at batch rows row0..) with image rows. */
static int scatter_images(struct vl2_model *m, const struct vl2_llm_piece *p, int32_t row0,
                          struct vl2_err *err)
{
    const struct vl2_step_item *it = p->item;
    struct vl2_llm_scratch *s = &m->ls;
    int64_t g = p->img_row;
    int32_t i, k = 0, cur = -1, r;

    if (m->params.image_token_id < 0 || it->n_images <= 0)
        return 0;
    for (i = 0; i < p->n; i++) {
        int32_t img, row;
        if (it->ids[p->off + i] != m->params.image_token_id)
            continue;
        image_row(it, g++, &img, &row);
        if (img != cur && k > 0) {
            r = m->ops->copy_rows(m->ctx, &s->x, s->dst, &it->images[cur]->rows, s->src, k,
                                  err);
            if (r < 0)
                return r;
            k = 0;
        }
        cur = img;
        s->dst[k] = row0 + i;
        s->src[k] = row;
        k++;
    }
    if (k > 0)
        return m->ops->copy_rows(m->ctx, &s->x, s->dst, &it->images[cur]->rows, s->src, k, err);
    return 0;
}

/* The batch of the pieces: their ids one after another, and each
 * sequence's rows, past length and cache.  Returns the number of rows. */
static int32_t batch_rows(struct vl2_model *m, const struct vl2_llm_piece *pc, int32_t n_pc)
{
    struct vl2_llm_scratch *s = &m->ls;
    int32_t n = 0, i;

    for (i = 0; i < n_pc; i++) {
        memcpy(s->ids + n, pc[i].item->ids + pc[i].off, (size_t)pc[i].n * sizeof(*s->ids));
        s->bseq[i].row0 = n;
        s->bseq[i].n_rows = pc[i].n;
        s->bseq[i].n_past = pc[i].item->seq->n_past;
        s->bseq[i].kv = pc[i].item->seq->kv;
        n += pc[i].n;
    }
    return n;
}

/* x = the token embeddings of the @n rows, image rows scattered over the
 * placeholders; items with ret_embeds get a host copy. */
static int embed(struct vl2_model *m, const struct vl2_llm_piece *pc, int32_t n_pc, int32_t n,
                 struct vl2_err *err)
{
    const struct vl2_backend_ops *ops = m->ops;
    struct vl2_llm_scratch *s = &m->ls;
    const size_t d_model = (size_t)m->cfg.lm.d_model;
    struct vl2_tensor x = VIEW(s->x, n);
    int32_t i;
    int r;

    r = ops->embed(m->ctx, &x, &m->embed, s->ids, err);
    for (i = 0; r >= 0 && i < n_pc; i++)
        r = scatter_images(m, &pc[i], s->bseq[i].row0, err);
    for (i = 0; r >= 0 && i < n_pc; i++)
        if (pc[i].item->ret_embeds)
            r = ops->read(m->ctx, &s->x, (size_t)s->bseq[i].row0 * d_model * sizeof(float),
                          pc[i].item->ret_embeds + (size_t)pc[i].off * d_model,
                          (size_t)pc[i].n * d_model * sizeof(float), err);
    return r < 0 ? r : 0;
}

/* One decoder layer over the @n rows of x (pre-norm residual blocks). */
static int layer(struct vl2_model *m, int il, int32_t n, struct vl2_err *err)
{
    const struct vl2_backend_ops *ops = m->ops;
    struct vl2_backend_ctx *ctx = m->ctx;
    const struct vl2_llm_layer *l = &m->layers[il];
    struct vl2_llm_scratch *s = &m->ls;
    struct vl2_tensor x = VIEW(s->x, n), h = VIEW(s->h, n), a = VIEW(s->a, n);
    const float eps = (float)m->cfg.lm.rms_eps;
    int r;

    if ((r = ops->rmsnorm(ctx, &h, &x, &l->ln_attn, eps, err)) < 0 ||
        (r = attention(m, il, n, err)) < 0 ||
        (r = ops->add(ctx, &x, &x, &a, err)) < 0 ||
        (r = ops->rmsnorm(ctx, &h, &x, &l->ln_mlp, eps, err)) < 0 ||
        (r = mlp(m, il, n, err)) < 0 ||
        (r = ops->add(ctx, &x, &x, &a, err)) < 0)
        return r;
    return 0;
}

/* The final norm and lm_head at the last row of every piece that wants
 * logits (gathered into s->last); *@ret_n: how many. */
static int head(struct vl2_model *m, const struct vl2_llm_piece *pc, int32_t n_pc,
                int32_t *ret_n, struct vl2_err *err)
{
    const struct vl2_backend_ops *ops = m->ops;
    struct vl2_backend_ctx *ctx = m->ctx;
    struct vl2_llm_scratch *s = &m->ls;
    int32_t n_logits = 0, i;
    int r;

    for (i = 0; i < n_pc; i++) {
        if (!pc[i].logits)
            continue;
        s->dst[n_logits] = n_logits;
        s->src[n_logits] = s->bseq[i].row0 + pc[i].n - 1;
        n_logits++;
    }
    *ret_n = n_logits;
    if (n_logits == 0)
        return 0;
    {
        struct vl2_tensor last = VIEW(s->last, n_logits), lg = VIEW(s->logits, n_logits);

        if ((r = ops->copy_rows(ctx, &last, s->dst, &s->x, s->src, n_logits, err)) < 0 ||
            (r = ops->rmsnorm(ctx, &last, &last, &m->norm, (float)m->cfg.lm.rms_eps, err)) < 0 ||
            (r = ops->linear(ctx, &lg, &last, &m->lm_head, NULL, err)) < 0)
            return r;
    }
    return 0;
}

/* Bring the head's @n_logits rows back to their sequences: the logits, or
 * for device-greedy sequences the argmax id only. */
static int gather_logits(struct vl2_model *m, const struct vl2_llm_piece *pc, int32_t n_pc,
                         int32_t n_logits, struct vl2_err *err)
{
    const struct vl2_backend_ops *ops = m->ops;
    struct vl2_backend_ctx *ctx = m->ctx;
    struct vl2_llm_scratch *s = &m->ls;
    const size_t n_vocab = (size_t)m->cfg.lm.n_vocab;
    int32_t k = 0, n_dev = 0, i;
    int r;

    if (n_logits == 0)
        return ops->sync(ctx, err);
    for (i = 0; i < n_pc; i++)
        n_dev += pc[i].logits && pc[i].item->seq->dev_greedy;
    if (n_dev > 0) {
        /* greedy sequences: their ids, not their logits, come back */
        struct vl2_tensor lg = VIEW(s->logits, n_logits), best = VIEW(s->best, n_logits);

        if ((r = ops->argmax(ctx, &best, &lg, err)) < 0 ||
            (r = ops->read(ctx, &best, 0, s->best_h, (size_t)n_logits * sizeof(int32_t),
                           err)) < 0)
            return r;
    }
    for (i = 0; i < n_pc; i++) {
        struct vl2_seq *sq = pc[i].item->seq;

        if (!pc[i].logits)
            continue;
        if (sq->dev_greedy)
            sq->dev_id = s->best_h[k];
        else if ((r = ops->read(ctx, &s->logits, (size_t)k * n_vocab * sizeof(float),
                                sq->logits, n_vocab * sizeof(float), err)) < 0)
            return r;
        k++;
    }
    return 0;
}

/* One forward pass over the pieces: embed -> layers -> head, then the
 * logits back to their sequences. */
static int forward(struct vl2_model *m, const struct vl2_llm_piece *pc, int32_t n_pc,
                   struct vl2_err *err)
{
    struct vl2_llm_scratch *s = &m->ls;
    const int32_t n = batch_rows(m, pc, n_pc);
    struct vl2_batch batch = {
        .struct_size = sizeof(batch), .n_rows = n, .n_seqs = n_pc, .seqs = s->bseq,
    };
    int32_t il, i, n_logits;
    int r;

    if ((r = embed(m, pc, n_pc, n, err)) < 0 ||
        (r = m->ops->begin_batch(m->ctx, &batch, err)) < 0)
        return r;
    for (il = 0; il < m->cfg.lm.n_layer; il++)
        if ((r = layer(m, il, n, err)) < 0)
            return r;
    for (i = 0; i < n_pc; i++)
        pc[i].item->seq->n_past += pc[i].n;
    if ((r = head(m, pc, n_pc, &n_logits, err)) < 0)
        return r;
    return gather_logits(m, pc, n_pc, n_logits, err);
}

/* ---- public passes ---------------------------------------------------------- */

static int check_items(struct vl2_model *m, const struct vl2_step_item *items, size_t n_items,
                       struct vl2_err *err)
{
    const struct vl2_lm_config *c = &m->cfg.lm;
    size_t i, j;

    for (i = 0; i < n_items; i++) {
        const struct vl2_step_item *it = &items[i];
        struct vl2_seq *s = it->seq;
        int64_t n_ph = 0, avail = 0;
        int32_t k;

        if (!s || s->m != m)
            return vl2_err_set(err, VL2_EINVAL, "model: step item %zu: no sequence of this "
                               "model", i);
        for (j = 0; j < i; j++)
            if (items[j].seq == s)
                return vl2_err_set(err, VL2_EINVAL, "model: step items %zu and %zu are the "
                                   "same sequence", j, i);
        if (it->n_ids < 0 || (it->n_ids > 0 && !it->ids) || (it->want_logits && !it->n_ids))
            return vl2_err_set(err, VL2_EINVAL, "model: step item %zu: %d ids", i,
                               (int)it->n_ids);
        if ((int64_t)s->n_past + it->n_ids > s->capacity)
            return vl2_err_set(err, VL2_ELIMIT, "model: %d more tokens do not fit the "
                               "sequence: it holds %d of %d tokens", (int)it->n_ids,
                               (int)s->n_past, (int)s->capacity);
        for (k = 0; k < it->n_ids; k++) {
            if (it->ids[k] < 0 || it->ids[k] >= c->n_vocab)
                return vl2_err_set(err, VL2_EINVAL, "model: token id %d at position %d is "
                                   "outside the vocabulary (%d)", (int)it->ids[k], (int)k,
                                   c->n_vocab);
            if (it->ids[k] == m->params.image_token_id)
                n_ph++;
        }
        if (it->n_images < 0 || (it->n_images > 0 && !it->images))
            return vl2_err_set(err, VL2_EINVAL, "model: step item %zu: %d images", i,
                               (int)it->n_images);
        for (k = 0; k < it->n_images; k++) {
            if (!it->images[k] || it->images[k]->rows.cols != c->d_model)
                return vl2_err_set(err, VL2_EINVAL, "model: image %d is not an image "
                                   "embedding of this model", (int)k);
            avail += it->images[k]->n_tokens;
        }
        if (it->image_row0 < 0 || n_ph > avail - it->image_row0)
            return vl2_err_set(err, VL2_EINVAL, "model: the prompt has %lld image "
                               "placeholder tokens but the images give %lld rows",
                               (long long)n_ph, (long long)(avail - it->image_row0));
    }
    return 0;
}

int vl2_model_step(struct vl2_model *m, const struct vl2_step_item *items, size_t n_items,
                   struct vl2_err *err)
{
    const int32_t R = m->params.max_rows, L = m->params.max_logit_rows;
    struct vl2_llm_piece *pc = m->ls.pc;
    size_t i = 0;
    int32_t off = 0, rows = 0, n_pc = 0, n_logits = 0;
    int64_t img = 0;
    int r;

    r = check_items(m, items, n_items, err);
    if (r < 0)
        return r;
    img = n_items ? items[0].image_row0 : 0;
    while (i < n_items) {
        const struct vl2_step_item *it = &items[i];
        int32_t take = it->n_ids - off, k;
        int last;

        if (take > R - rows)
            take = R - rows;
        last = off + take == it->n_ids;
        if (take > 0 || it->n_ids == 0) {
            pc[n_pc].item = it;
            pc[n_pc].off = off;
            pc[n_pc].n = take;
            pc[n_pc].img_row = img;
            pc[n_pc].logits = last && it->want_logits;
            if (take > 0) {
                n_logits += pc[n_pc].logits;
                n_pc++;
            }
            rows += take;
            for (k = 0; k < take; k++)
                if (it->ids[off + k] == m->params.image_token_id)
                    img++;
        }
        if (last) {
            i++;
            off = 0;
            img = i < n_items ? items[i].image_row0 : 0;
        } else {
            off += take;
        }
        if (rows == R || n_logits == L || (i == n_items && n_pc > 0)) {
            r = forward(m, pc, n_pc, err);
            if (r < 0)
                return r;
            rows = 0;
            n_pc = 0;
            n_logits = 0;
        }
    }
    /* the sequences' repetition sets: with penalize_prompt every id fed */
    for (i = 0; i < n_items; i++) {
        struct vl2_sampler *sm = &items[i].seq->sampler;
        int32_t k;

        if (sm->p.penalize_prompt)
            for (k = 0; k < items[i].n_ids; k++)
                vl2_sampler_accept(sm, items[i].ids[k]);
    }
    return 0;
}

int vl2_model_prefill(struct vl2_model *m, struct vl2_seq *s, const int32_t *ids,
                      size_t n_ids, const struct vl2_image_embed *const *images,
                      size_t n_images, struct vl2_err *err)
{
    struct vl2_step_item it = {
        .seq = s, .ids = ids, .n_ids = (int32_t)n_ids, .images = images,
        .n_images = (int32_t)n_images, .image_row0 = 0, .want_logits = 1,
    };
    int64_t n_ph = 0, avail = 0;
    size_t i;

    if (n_ids == 0)
        return vl2_err_set(err, VL2_EINVAL, "model: empty prompt");
    if (n_ids > (size_t)INT32_MAX || n_images > (size_t)INT32_MAX)
        return vl2_err_set(err, VL2_ELIMIT, "model: prompt of %zu tokens is too long", n_ids);
    if ((int64_t)s->n_past + (int64_t)n_ids > s->capacity)
        return vl2_err_set(err, VL2_ELIMIT, "model: prompt of %zu tokens does not fit the "
                           "context: the sequence holds %d of %d tokens", n_ids,
                           (int)s->n_past, (int)s->capacity);
    for (i = 0; i < n_ids; i++)
        if (ids[i] == m->params.image_token_id && m->params.image_token_id >= 0)
            n_ph++;
    for (i = 0; i < n_images; i++)
        avail += images[i] ? images[i]->n_tokens : 0;
    if (n_ph != avail)
        return vl2_err_set(err, VL2_EINVAL, "model: the prompt has %lld image placeholder "
                           "tokens but %zu images give %lld rows", (long long)n_ph, n_images,
                           (long long)avail);
    return vl2_model_step(m, &it, 1, err);
}

int vl2_model_decode(struct vl2_model *m, struct vl2_seq *const *seqs, const int32_t *ids,
                     size_t n_seqs, struct vl2_err *err)
{
    struct vl2_llm_scratch *ls = &m->ls;
    size_t i;

    if (n_seqs > ls->cap_items) {
        struct vl2_step_item *p = realloc(ls->items, n_seqs * sizeof(*p));

        if (!p)
            return vl2_err_set(err, VL2_ENOMEM, "model: out of memory for %zu sequences",
                               n_seqs);
        ls->items = p;
        ls->cap_items = n_seqs;
    }
    for (i = 0; i < n_seqs; i++)
        ls->items[i] = (struct vl2_step_item){
            .seq = seqs[i], .ids = &ids[i], .n_ids = 1, .want_logits = 1,
        };
    /* one step checks every item (duplicates included) before any work */
    return vl2_model_step(m, ls->items, n_seqs, err);
}

/* model.c - loading a model onto a backend, sequences. */
#include "model-impl.h"

#include "backend.h"
#include "vl2-float.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct vl2_model_params vl2_model_default_params(void)
{
    struct vl2_model_params p = {
        .backend = "cpu",
        .plugin_dir = NULL,
        .n_threads = 0,
        .device = 0,
        .image_token_id = -1,
        .max_rows = 512,
        .max_logit_rows = 64,
        .vision_batch = 2,
        .n_ctx = 0,
        .kv_dtype = VL2_DTYPE_F32,
        .skip_validate = 0,
    };
    return p;
}

/* ---- host conversions ------------------------------------------------------- */

/* Convert @n elements of checkpoint bytes @src in @dtype to float. */
static void to_f32(float *dst, const void *src, size_t n, int dtype)
{
    const unsigned char *s = src;
    size_t i;

    for (i = 0; i < n; i++) {
        uint16_t h;
        switch (dtype) {
        case VL2_DTYPE_F32:
            memcpy(&dst[i], s + 4 * i, 4);
            break;
        case VL2_DTYPE_BF16:
            memcpy(&h, s + 2 * i, 2);
            dst[i] = vl2_bf16_to_f32(h);
            break;
        case VL2_DTYPE_F16:
            memcpy(&h, s + 2 * i, 2);
            dst[i] = vl2_f16_to_f32(h);
            break;
        default:
            dst[i] = 0.0f;
        }
    }
}

/* ---- tensors ------------------------------------------------------------------ */

static int own(struct vl2_model *m, struct vl2_tensor *t, struct vl2_err *err)
{
    if (m->n_owned == m->cap_owned) {
        size_t cap = m->cap_owned ? 2 * m->cap_owned : 256;
        struct vl2_tensor **p = realloc(m->owned, cap * sizeof(*p));
        if (!p)
            return vl2_err_set(err, VL2_ENOMEM, "model: out of memory");
        m->owned = p;
        m->cap_owned = cap;
    }
    m->owned[m->n_owned++] = t;
    return 0;
}

int vl2__model_alloc(struct vl2_model *m, struct vl2_tensor *t, int64_t rows, int64_t cols,
                     struct vl2_err *err)
{
    return vl2__model_alloc_dt(m, t, VL2_DTYPE_F32, rows, cols, err);
}

int vl2__model_alloc_dt(struct vl2_model *m, struct vl2_tensor *t, int dtype, int64_t rows,
                        int64_t cols, struct vl2_err *err)
{
    int64_t ne[2] = { rows, cols };
    int r;

    r = own(m, t, err);
    if (r < 0)
        return r;
    r = m->ops->alloc(m->ctx, t, dtype, 2, ne, err);
    if (r < 0) {
        m->n_owned--;
        memset(t, 0, sizeof(*t));
        return vl2_err_prefix(err, r, "model: allocating activations");
    }
    return 0;
}

static void fmt_shape(char *buf, size_t size, int ndim, const int64_t *shape)
{
    size_t o = 0;
    int i;

    o += (size_t)snprintf(buf + o, size - o, "[");
    for (i = 0; i < ndim && o < size; i++)
        o += (size_t)snprintf(buf + o, size - o, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (o < size)
        snprintf(buf + o, size - o, "]");
}

enum { AS_IS = 0, AS_F32 = 1, OPTIONAL = 2 };

/* Make backend tensor @t from checkpoint tensor @name, which must have the
 * @ndim-dimensional @shape the config implies.  The backend sees it as
 * [rows, cols] (rows 0: 1-D [cols]).  AS_F32 converts it to an F32 copy
 * (small vectors, position embeddings); OPTIONAL leaves t zeroed if absent. */
static int wget(struct vl2_model *m, struct vl2_tensor *t, const char *name, int ndim,
                const int64_t *shape, int64_t rows, int64_t cols, int flags,
                struct vl2_err *err)
{
    const struct vl2_st_tensor *st = vl2_weights_find(m->w, name);
    int64_t ne[2], count = 1;
    int i, r, tndim;
    size_t esize;

    memset(t, 0, sizeof(*t));
    if (!st) {
        if (flags & OPTIONAL)
            return 0;
        return vl2_err_set(err, VL2_ENOTFOUND, "model: tensor '%s' is missing", name);
    }
    for (i = 0; i < ndim; i++)
        count *= shape[i];
    if (st->ndim != ndim || memcmp(st->shape, shape, (size_t)ndim * sizeof(*shape))) {
        char got[128], want[128];
        fmt_shape(got, sizeof(got), st->ndim, st->shape);
        fmt_shape(want, sizeof(want), ndim, shape);
        return vl2_err_set(err, VL2_EFORMAT, "model: tensor '%s' has shape %s, the config "
                           "implies %s", name, got, want);
    }
    if (st->dtype != VL2_DTYPE_BF16 && st->dtype != VL2_DTYPE_F16 &&
        st->dtype != VL2_DTYPE_F32)
        return vl2_err_set(err, VL2_EUNSUPPORTED, "model: tensor '%s': dtype %d not "
                           "supported", name, st->dtype);
    esize = vl2_dtype_size(st->dtype);
    if (st->size != (size_t)count * esize)
        return vl2_err_set(err, VL2_EFORMAT, "model: tensor '%s': %zu bytes for %lld "
                           "elements", name, st->size, (long long)count);
    if ((rows ? rows * cols : cols) != count)
        return vl2_err_set(err, VL2_EINTERNAL, "model: tensor '%s': bad view", name);
    tndim = rows ? 2 : 1;
    ne[0] = rows ? rows : cols;
    ne[1] = cols;

    r = own(m, t, err);
    if (r < 0)
        return r;
    if (flags & AS_F32) {
        float *host = malloc((size_t)count * sizeof(*host));
        if (!host) {
            m->n_owned--;
            return vl2_err_set(err, VL2_ENOMEM, "model: out of memory for '%s'", name);
        }
        to_f32(host, st->data, (size_t)count, st->dtype);
        r = m->ops->alloc(m->ctx, t, VL2_DTYPE_F32, tndim, ne, err);
        if (r >= 0) {
            r = m->ops->write(m->ctx, t, 0, host, (size_t)count * sizeof(*host), err);
            if (r < 0) {
                m->ops->free_tensor(m->ctx, t);
                memset(t, 0, sizeof(*t));
            }
        }
        free(host);
    } else {
        r = m->ops->weight(m->ctx, t, st->dtype, tndim, ne, st->data, err);
    }
    if (r < 0) {
        m->n_owned--;
        memset(t, 0, sizeof(*t));
        return vl2_err_prefix(err, r, name);
    }
    return 0;
}

#define SHAPE(...) ((const int64_t[]){ __VA_ARGS__ })
#define NDIM(...) ((int)(sizeof((const int64_t[]){ __VA_ARGS__ }) / sizeof(int64_t)))
/* matrix [a, b] seen as [a, b] */
#define W2(t, name, a, b, fl) wget(m, (t), (name), 2, SHAPE(a, b), (a), (b), (fl), err)
/* vector [a] */
#define W1(t, name, a, fl) wget(m, (t), (name), 1, SHAPE(a), 0, (a), (fl), err)

/* ---- loading -------------------------------------------------------------- */

static int load_vision(struct vl2_model *m, struct vl2_err *err)
{
    const struct vl2_vision_config *v = &m->cfg.vision;
    const int64_t Dv = v->d_model, F = v->d_mlp, p = v->patch_size, P = (int64_t)v->grid * v->grid;
    const int64_t D = m->cfg.proj.d_model;
    char name[128];
    int r, b;

    r = wget(m, &m->patch_w, "vision.patch_embed.proj.weight", 4, SHAPE(Dv, 3, p, p),
             Dv, 3 * p * p, AS_IS, err);
    if (r < 0)
        return r;
    if ((r = W1(&m->patch_b, "vision.patch_embed.proj.bias", Dv, AS_F32)) < 0)
        return r;
    r = wget(m, &m->pos, "vision.pos_embed", 3, SHAPE(1, P, Dv), P, Dv, AS_F32, err);
    if (r < 0)
        return r;
    m->vit = calloc((size_t)v->n_layer, sizeof(*m->vit));
    if (!m->vit)
        return vl2_err_set(err, VL2_ENOMEM, "model: out of memory");
    for (b = 0; b < v->n_layer; b++) {
        struct vl2_vit_block *k = &m->vit[b];
#define N(s) (snprintf(name, sizeof(name), "vision.blocks.%d.%s", b, s), name)
        if ((r = W1(&k->ln1_w, N("norm1.weight"), Dv, AS_F32)) < 0 ||
            (r = W1(&k->ln1_b, N("norm1.bias"), Dv, AS_F32)) < 0 ||
            (r = W2(&k->qkv_w, N("attn.qkv.weight"), 3 * Dv, Dv, AS_IS)) < 0 ||
            (r = W1(&k->qkv_b, N("attn.qkv.bias"), 3 * Dv, AS_F32)) < 0 ||
            (r = W2(&k->proj_w, N("attn.proj.weight"), Dv, Dv, AS_IS)) < 0 ||
            (r = W1(&k->proj_b, N("attn.proj.bias"), Dv, AS_F32)) < 0 ||
            (r = W1(&k->ln2_w, N("norm2.weight"), Dv, AS_F32)) < 0 ||
            (r = W1(&k->ln2_b, N("norm2.bias"), Dv, AS_F32)) < 0 ||
            (r = W2(&k->fc1_w, N("mlp.fc1.weight"), F, Dv, AS_IS)) < 0 ||
            (r = W1(&k->fc1_b, N("mlp.fc1.bias"), F, AS_F32)) < 0 ||
            (r = W2(&k->fc2_w, N("mlp.fc2.weight"), Dv, F, AS_IS)) < 0 ||
            (r = W1(&k->fc2_b, N("mlp.fc2.bias"), Dv, AS_F32)) < 0)
            return r;
#undef N
    }
    if ((r = W1(&m->vit_norm_w, "vision.norm.weight", Dv, AS_F32)) < 0 ||
        (r = W1(&m->vit_norm_b, "vision.norm.bias", Dv, AS_F32)) < 0)
        return r;

    /* projector: Linear(4*Dv -> D), GELU, Linear(D -> D) */
    if ((r = W2(&m->proj0_w, "projector.layers.0.weight", D, 4 * Dv, AS_IS)) < 0 ||
        (r = W1(&m->proj0_b, "projector.layers.0.bias", D, AS_F32)) < 0 ||
        (r = W2(&m->proj2_w, "projector.layers.2.weight", D, D, AS_IS)) < 0 ||
        (r = W1(&m->proj2_b, "projector.layers.2.bias", D, AS_F32)) < 0)
        return r;

    /* image_newline and view_seperator as the two rows of one F32 tensor */
    {
        const struct vl2_st_tensor *nl = vl2_weights_find(m->w, "image_newline");
        const struct vl2_st_tensor *sep = vl2_weights_find(m->w, "view_seperator");
        float *host;
        if (!nl || !sep)
            return vl2_err_set(err, VL2_ENOTFOUND, "model: tensor '%s' is missing",
                               nl ? "view_seperator" : "image_newline");
        if (nl->ndim != 1 || nl->shape[0] != D || sep->ndim != 1 || sep->shape[0] != D ||
            nl->size != (size_t)D * vl2_dtype_size(nl->dtype) ||
            sep->size != (size_t)D * vl2_dtype_size(sep->dtype) ||
            !vl2_dtype_size(nl->dtype) || !vl2_dtype_size(sep->dtype) ||
            nl->dtype == VL2_DTYPE_I32 || sep->dtype == VL2_DTYPE_I32)
            return vl2_err_set(err, VL2_EFORMAT, "model: tensors 'image_newline' and "
                               "'view_seperator' must be float vectors of %lld elements",
                               (long long)D);
        host = malloc(2 * (size_t)D * sizeof(*host));
        if (!host)
            return vl2_err_set(err, VL2_ENOMEM, "model: out of memory");
        to_f32(host, nl->data, (size_t)D, nl->dtype);
        to_f32(host + D, sep->data, (size_t)D, sep->dtype);
        r = vl2__model_alloc(m, &m->special, 2, D, err);
        if (r >= 0)
            r = m->ops->write(m->ctx, &m->special, 0, host, 2 * (size_t)D * sizeof(*host), err);
        free(host);
        if (r < 0)
            return r;
    }
    return 0;
}

static int load_layer(struct vl2_model *m, int i, struct vl2_err *err)
{
    const struct vl2_lm_config *c = &m->cfg.lm;
    struct vl2_llm_layer *l = &m->layers[i];
    const int64_t D = c->d_model, nh = c->n_head;
    char name[160];
    int r, e;

#define N(s) (snprintf(name, sizeof(name), "language.model.layers.%d.%s", i, s), name)
    if ((r = W1(&l->ln_attn, N("input_layernorm.weight"), D, AS_F32)) < 0 ||
        (r = W1(&l->ln_mlp, N("post_attention_layernorm.weight"), D, AS_F32)) < 0)
        return r;
    if (!c->use_mla) {
        const int64_t dh = c->d_head, nkv = c->n_kv_head;
        if ((r = W2(&l->wq, N("self_attn.q_proj.weight"), nh * dh, D, AS_IS)) < 0 ||
            (r = W2(&l->wk, N("self_attn.k_proj.weight"), nkv * dh, D, AS_IS)) < 0 ||
            (r = W2(&l->wv, N("self_attn.v_proj.weight"), nkv * dh, D, AS_IS)) < 0 ||
            (r = W2(&l->wo, N("self_attn.o_proj.weight"), D, nh * dh, AS_IS)) < 0)
            return r;
    } else {
        const int64_t qh = c->d_nope + c->d_rope, kvl = c->kv_lora_rank;
        if (c->q_lora_rank > 0) {
            const int64_t ql = c->q_lora_rank;
            if ((r = W2(&l->wq_a, N("self_attn.q_a_proj.weight"), ql, D, AS_IS)) < 0 ||
                (r = W1(&l->q_a_norm, N("self_attn.q_a_layernorm.weight"), ql, AS_F32)) < 0 ||
                (r = W2(&l->wq_b, N("self_attn.q_b_proj.weight"), nh * qh, ql, AS_IS)) < 0)
                return r;
        } else {
            if ((r = W2(&l->wq, N("self_attn.q_proj.weight"), nh * qh, D, AS_IS)) < 0)
                return r;
        }
        if ((r = W2(&l->wkv_a, N("self_attn.kv_a_proj_with_mqa.weight"), kvl + c->d_rope, D,
                    AS_IS)) < 0 ||
            (r = W1(&l->kv_a_norm, N("self_attn.kv_a_layernorm.weight"), kvl, AS_F32)) < 0 ||
            (r = W2(&l->wkv_b, N("self_attn.kv_b_proj.weight"), nh * (c->d_nope + c->d_v), kvl,
                    AS_IS)) < 0 ||
            (r = W2(&l->wo, N("self_attn.o_proj.weight"), D, nh * c->d_v, AS_IS)) < 0)
            return r;
    }

    l->is_moe = vl2_lm_is_moe(c, i);
    if (!l->is_moe) {
        const int64_t I = c->d_ff;
        if ((r = W2(&l->w_gate, N("mlp.gate_proj.weight"), I, D, AS_IS)) < 0 ||
            (r = W2(&l->w_up, N("mlp.up_proj.weight"), I, D, AS_IS)) < 0 ||
            (r = W2(&l->w_down, N("mlp.down_proj.weight"), D, I, AS_IS)) < 0)
            return r;
    } else {
        const int64_t E = c->n_expert, Im = c->d_ff_expert;
        if ((r = W2(&l->router, N("mlp.gate.weight"), E, D, AS_IS)) < 0)
            return r;
        if (c->topk_method == VL2_TOPK_NOAUX_TC) {
            if ((r = W1(&l->router_bias, N("mlp.gate.e_score_correction_bias"), E,
                        AS_F32)) < 0)
                return r;
        }
        l->ex = calloc(3 * (size_t)E, sizeof(*l->ex));
        l->ex_ptr = calloc(3 * (size_t)E, sizeof(*l->ex_ptr));
        if (!l->ex || !l->ex_ptr)
            return vl2_err_set(err, VL2_ENOMEM, "model: out of memory");
        for (e = 0; e < E; e++) {
            char s[96];
            snprintf(s, sizeof(s), "mlp.experts.%d.gate_proj.weight", e);
            if ((r = W2(&l->ex[e], N(s), Im, D, AS_IS)) < 0)
                return r;
            snprintf(s, sizeof(s), "mlp.experts.%d.up_proj.weight", e);
            if ((r = W2(&l->ex[E + e], N(s), Im, D, AS_IS)) < 0)
                return r;
            snprintf(s, sizeof(s), "mlp.experts.%d.down_proj.weight", e);
            if ((r = W2(&l->ex[2 * E + e], N(s), D, Im, AS_IS)) < 0)
                return r;
        }
        for (e = 0; e < 3 * E; e++)
            l->ex_ptr[e] = &l->ex[e];
        if (c->n_shared > 0) {
            const int64_t Is = Im * c->n_shared;
            if ((r = W2(&l->sh_gate, N("mlp.shared_experts.gate_proj.weight"), Is, D,
                        AS_IS)) < 0 ||
                (r = W2(&l->sh_up, N("mlp.shared_experts.up_proj.weight"), Is, D,
                        AS_IS)) < 0 ||
                (r = W2(&l->sh_down, N("mlp.shared_experts.down_proj.weight"), D, Is,
                        AS_IS)) < 0)
                return r;
        }
        l->moe.struct_size = sizeof(l->moe);
        l->moe.router = &l->router;
        l->moe.bias = l->router_bias.data ? &l->router_bias : NULL;
        l->moe.gate = l->ex_ptr;
        l->moe.up = l->ex_ptr + E;
        l->moe.down = l->ex_ptr + 2 * E;
        l->moe.sh_gate = c->n_shared > 0 ? &l->sh_gate : NULL;
        l->moe.sh_up = c->n_shared > 0 ? &l->sh_up : NULL;
        l->moe.sh_down = c->n_shared > 0 ? &l->sh_down : NULL;
        l->moe.n_expert = (int32_t)E;
        l->moe.top_k = c->top_k;
        l->moe.scoring = c->scoring == VL2_SCORING_SIGMOID ? VL2_MOE_SIGMOID : VL2_MOE_SOFTMAX;
        l->moe.method = c->topk_method == VL2_TOPK_NOAUX_TC ? VL2_MOE_NOAUX_TC :
                        c->topk_method == VL2_TOPK_GROUP_LIMITED ? VL2_MOE_GROUP_LIMITED :
                        VL2_MOE_GREEDY;
        l->moe.n_group = c->n_group > 0 ? c->n_group : 1;
        l->moe.topk_group = c->topk_group > 0 ? c->topk_group : l->moe.n_group;
        l->moe.norm_topk_prob = c->norm_topk_prob;
        l->moe.routed_scale = (float)c->routed_scale;
    }
#undef N
    return 0;
}

static int load_llm(struct vl2_model *m, struct vl2_err *err)
{
    const struct vl2_lm_config *c = &m->cfg.lm;
    const int64_t D = c->d_model, V = c->n_vocab;
    int r, i;

    if ((r = W2(&m->embed, "language.model.embed_tokens.weight", V, D, AS_IS)) < 0)
        return r;
    m->layers = calloc((size_t)c->n_layer, sizeof(*m->layers));
    if (!m->layers)
        return vl2_err_set(err, VL2_ENOMEM, "model: out of memory");
    for (i = 0; i < c->n_layer; i++) {
        r = load_layer(m, i, err);
        if (r < 0)
            return r;
    }
    if ((r = W1(&m->norm, "language.model.norm.weight", D, AS_F32)) < 0)
        return r;
    if (c->tie_embeddings && !vl2_weights_find(m->w, "language.lm_head.weight"))
        m->lm_head = m->embed;
    else if ((r = W2(&m->lm_head, "language.lm_head.weight", V, D, AS_IS)) < 0)
        return r;
    return 0;
}

/* Refuse configurations the runtime does not implement, with the key named. */
static int check_config(const struct vl2_model *m, struct vl2_err *err)
{
    const struct vl2_model_config *c = &m->cfg;
    const struct vl2_lm_config *lm = &c->lm;

    /* rope_scaling (YaRN) is refused by vl2_config_load already */
    if (strcmp(c->proj.type, "downsample_mlp_gelu") || c->proj.downsample != 2 ||
        c->proj.depth != 2 || c->proj.mlp_ratio != 1)
        return vl2_err_set(err, VL2_EUNSUPPORTED, "model: projector '%s' depth %d ratio %d "
                           "downsample %d: only downsample_mlp_gelu, depth 2, ratio 1, "
                           "downsample 2 is implemented", c->proj.type, c->proj.depth,
                           c->proj.mlp_ratio, c->proj.downsample);
    if (c->proj.d_in != c->vision.d_model)
        return vl2_err_set(err, VL2_EFORMAT, "model: projector input_dim %d differs from "
                           "the vision width %d", c->proj.d_in, c->vision.d_model);
    if (c->proj.d_model != lm->d_model)
        return vl2_err_set(err, VL2_EFORMAT, "model: projector n_embed %d differs from the "
                           "language hidden_size %d", c->proj.d_model, lm->d_model);
    if (strcmp(c->tile_tag, "2D") || strcmp(c->global_view_pos, "head"))
        return vl2_err_set(err, VL2_EUNSUPPORTED, "model: tile_tag '%s' global_view_pos '%s': "
                           "only '2D' and 'head' are implemented", c->tile_tag,
                           c->global_view_pos);
    if (c->vision.patch_size <= 0 || c->vision.grid <= 0 || c->vision.n_head <= 0 ||
        c->vision.d_head * c->vision.n_head != c->vision.d_model)
        return vl2_err_set(err, VL2_EFORMAT, "model: vision width %d, %d heads, patch %d, "
                           "image %d are inconsistent", c->vision.d_model, c->vision.n_head,
                           c->vision.patch_size, c->vision.image_size);
    if (lm->d_model <= 0 || lm->n_layer <= 0 || lm->n_head <= 0 || lm->n_vocab <= 0)
        return vl2_err_set(err, VL2_EFORMAT, "model: language model sizes must be positive");
    if (lm->use_mla) {
        if (lm->kv_lora_rank <= 0 || lm->d_rope <= 0 || (lm->d_rope & 1) || lm->d_nope < 0 ||
            lm->d_v <= 0)
            return vl2_err_set(err, VL2_EFORMAT, "model: MLA dims kv_lora_rank %d, rope %d, "
                               "nope %d, v %d are invalid", lm->kv_lora_rank, lm->d_rope,
                               lm->d_nope, lm->d_v);
    } else {
        if (lm->n_kv_head <= 0 || lm->n_head % lm->n_kv_head || lm->d_head <= 0 ||
            (lm->d_head & 1))
            return vl2_err_set(err, VL2_EFORMAT, "model: attention heads %d / kv heads %d / "
                               "head dim %d are invalid", lm->n_head, lm->n_kv_head,
                               lm->d_head);
    }
    if (lm->n_expert > 0 && (lm->top_k <= 0 || lm->top_k > lm->n_expert))
        return vl2_err_set(err, VL2_EFORMAT, "model: num_experts_per_tok %d with %d experts",
                           lm->top_k, lm->n_expert);
    if (lm->n_expert > 0 && lm->moe_layer_freq <= 0)
        return vl2_err_set(err, VL2_EFORMAT, "model: moe_layer_freq %d", lm->moe_layer_freq);
    return 0;
}

/* Ask the backend before building anything on it: the dtype of every weight
 * matrix of the checkpoint (those go to the backend as stored; vectors are
 * converted to F32) for the ops that read weights, and the cache dtype for
 * the cache and the attention.  A dtype the backend lacks is refused here,
 * naming it, instead of failing inside the forward pass. */
static int check_backend(const struct vl2_model *m, int32_t kv_dtype, struct vl2_err *err)
{
    static const int weight_ops[] = { VL2_OP_WEIGHT, VL2_OP_EMBED, VL2_OP_LINEAR, VL2_OP_MOE };
    const int attn = m->cfg.lm.use_mla ? VL2_OP_ATTN_MLA : VL2_OP_ATTN_MHA;
    uint32_t seen = 0;
    size_t i, k;
    int r, dt;

    for (i = 0; i < vl2_weights_count(m->w); i++) {
        const struct vl2_st_tensor *t = vl2_weights_at(m->w, i);
        if (t->ndim >= 2 && t->dtype >= 0 && t->dtype < 32)
            seen |= 1u << t->dtype;
    }
    for (dt = 0; dt < 32; dt++)
        for (k = 0; (seen >> dt & 1u) && k < sizeof(weight_ops) / sizeof(weight_ops[0]); k++) {
            if (weight_ops[k] == VL2_OP_MOE && m->cfg.lm.n_expert <= 0)
                continue;
            if ((r = vl2_backend_require(m->ops, m->ctx, weight_ops[k], dt, err)) < 0)
                return r;
        }
    if ((r = vl2_backend_require(m->ops, m->ctx, VL2_OP_KV, kv_dtype, err)) < 0 ||
        (r = vl2_backend_require(m->ops, m->ctx, attn, kv_dtype, err)) < 0)
        return r;
    return 0;
}

/* The model in @dir on the loaded backend @b (owned by the model once this
 * returns 0). */
static int open_on(struct vl2_model **ret, const char *dir, struct vl2_backend *b,
                   const struct vl2_model_params *p, struct vl2_err *err)
{
    const struct vl2_backend_ops *ops = b->ops;
    struct vl2_model *m;
    int r;

    if (p->max_rows <= 0 || p->max_logit_rows <= 0 || p->vision_batch <= 0 || p->n_ctx < 0)
        return vl2_err_set(err, VL2_EINVAL, "model: max_rows %d, max_logit_rows %d, "
                           "vision_batch %d, n_ctx %d: must be positive", p->max_rows,
                           p->max_logit_rows, p->vision_batch, p->n_ctx);
    m = calloc(1, sizeof(*m));
    if (!m)
        return vl2_err_set(err, VL2_ENOMEM, "model: out of memory");
    m->params = *p;
    m->params.backend = NULL;
    m->params.plugin_dir = NULL;
    m->params.backend_options = NULL;
    m->ops = ops;
    m->ctx = b->ctx;

    r = vl2_config_load(&m->cfg, dir, err);
    if (r < 0)
        goto out_free;
    r = vl2_processor_config_load(&m->pcfg, dir, err);
    if (r < 0)
        goto out_free;
    r = check_config(m, err);
    if (r < 0)
        goto out_free;
    r = vl2_weights_open(&m->w, dir, err);
    if (r < 0)
        goto out_free;
    if (!p->skip_validate) {
        r = vl2_model_validate(&m->cfg, m->w, err);
        if (r < 0)
            goto out_free;
    }
    r = check_backend(m, p->kv_dtype, err);
    if (r < 0)
        goto out_free;
    r = load_vision(m, err);
    if (r < 0)
        goto out_free;
    r = load_llm(m, err);
    if (r < 0)
        goto out_free;

    m->n_ctx = p->n_ctx > 0 ? p->n_ctx : m->cfg.lm.n_ctx;
    if (m->n_ctx <= 0) {
        r = vl2_err_set(err, VL2_EFORMAT, "model: max_position_embeddings %d", m->n_ctx);
        goto out_free;
    }
    m->kv_shape.struct_size = sizeof(m->kv_shape);
    m->kv_shape.kind = m->cfg.lm.use_mla ? VL2_ATTN_MLA : VL2_ATTN_MHA;
    m->kv_shape.n_layer = m->cfg.lm.n_layer;
    m->kv_shape.n_kv_head = m->cfg.lm.use_mla ? 0 : m->cfg.lm.n_kv_head;
    m->kv_shape.head_dim = m->cfg.lm.use_mla ? 0 : m->cfg.lm.d_head;
    m->kv_shape.kv_lora_rank = m->cfg.lm.use_mla ? m->cfg.lm.kv_lora_rank : 0;
    m->kv_shape.rope_dim = m->cfg.lm.use_mla ? m->cfg.lm.d_rope : 0;
    m->kv_shape.dtype = p->kv_dtype;
    m->kv_shape.capacity = m->n_ctx;
    m->kv_token_bytes = ops->kv_token_bytes(&m->kv_shape);
    if (m->kv_token_bytes == 0) {
        r = vl2_err_set(err, VL2_EUNSUPPORTED, "model: backend '%s' has no KV cache of dtype "
                        "%d for this model", ops->name, p->kv_dtype);
        goto out_free;
    }

    r = vl2__llm_scratch_init(m, err);
    if (r < 0)
        goto out_free;
    m->backend = b;
    *ret = m;
    return 0;

out_free:
    vl2_model_free(m);   /* not the backend: the caller unloads it */
    return r;
}

int vl2_model_load(struct vl2_model **ret, const char *dir, const struct vl2_model_params *p,
                   struct vl2_err *err)
{
    struct vl2_model_params defaults = vl2_model_default_params();
    struct vl2_backend_params bp = { .struct_size = sizeof(bp) };
    struct vl2_backend *b;
    int r;

    if (!p)
        p = &defaults;
    bp.n_threads = p->n_threads;
    bp.device = p->device;
    bp.options = p->backend_options;
    /* bp.mem_budget stays 0: the engine's KV budget is the one accountant
     * (vl2-backend.h) */
    r = vl2_backend_load(&b, p->backend ? p->backend : "cpu", p->plugin_dir, &bp, err);
    if (r < 0)
        return r;
    r = open_on(ret, dir, b, p, err);
    if (r < 0)
        vl2_backend_unload(b);
    return r;
}

void vl2_model_free(struct vl2_model *m)
{
    size_t i;
    int l;

    if (!m)
        return;
    if (m->ops)
        for (i = m->n_owned; i-- > 0;)
            m->ops->free_tensor(m->ctx, m->owned[i]);
    free(m->owned);
    if (m->layers)
        for (l = 0; l < m->cfg.lm.n_layer; l++) {
            free(m->layers[l].ex);
            free(m->layers[l].ex_ptr);
        }
    free(m->layers);
    free(m->vit);
    free(m->ls.ids);
    free(m->ls.best_h);
    free(m->ls.dst);
    free(m->ls.src);
    free(m->ls.bseq);
    free(m->ls.items);
    free(m->ls.pc);
    free(m->vs.host);
    vl2_weights_close(m->w);
    if (m->backend)
        vl2_backend_unload(m->backend);
    free(m);
}

/* ---- accessors ------------------------------------------------------------ */

const struct vl2_model_config *vl2_model_config(const struct vl2_model *m)
{
    return &m->cfg;
}

const struct vl2_processor_config *vl2_model_processor_config(const struct vl2_model *m)
{
    return &m->pcfg;
}

const struct vl2_backend_ops *vl2_model_backend(const struct vl2_model *m,
                                                struct vl2_backend_ctx **ret_ctx)
{
    if (ret_ctx)
        *ret_ctx = m->ctx;
    return m->ops;
}

int32_t vl2_model_n_ctx(const struct vl2_model *m)
{
    return m->n_ctx;
}

size_t vl2_model_kv_token_bytes(const struct vl2_model *m)
{
    return m->kv_token_bytes;
}

static size_t tbytes(const struct vl2_tensor *t)
{
    return t->data ? (size_t)(t->rows * t->cols) * vl2_dtype_size(t->dtype) : 0;
}

size_t vl2_model_decode_bytes(const struct vl2_model *m)
{
    const struct vl2_lm_config *c = &m->cfg.lm;
    size_t n = 0;
    int i;

    for (i = 0; i < c->n_layer; i++) {
        const struct vl2_llm_layer *l = &m->layers[i];
        n += tbytes(&l->ln_attn) + tbytes(&l->ln_mlp) + tbytes(&l->wq) + tbytes(&l->wk) +
             tbytes(&l->wv) + tbytes(&l->wo) + tbytes(&l->wq_a) + tbytes(&l->q_a_norm) +
             tbytes(&l->wq_b) + tbytes(&l->wkv_a) + tbytes(&l->kv_a_norm) +
             tbytes(&l->wkv_b) + tbytes(&l->w_gate) + tbytes(&l->w_up) + tbytes(&l->w_down);
        if (l->is_moe) {
            int E = c->n_expert;
            n += tbytes(&l->router) + tbytes(&l->router_bias) + tbytes(&l->sh_gate) +
                 tbytes(&l->sh_up) + tbytes(&l->sh_down);
            n += (size_t)c->top_k * (tbytes(&l->ex[0]) + tbytes(&l->ex[E]) +
                                     tbytes(&l->ex[2 * E]));
        }
    }
    n += tbytes(&m->norm) + tbytes(&m->lm_head);
    n += (size_t)c->d_model * vl2_dtype_size(m->embed.dtype);
    return n;
}

int32_t vl2_model_image_tokens(const struct vl2_model *m, int32_t tiles_w, int32_t tiles_h)
{
    int32_t g = m->cfg.vision.grid, h = (g + 1) / 2;

    return h * (h + 1) + 1 + (tiles_h * h) * (tiles_w * h + 1);
}

/* ---- sequences ------------------------------------------------------------- */

struct vl2_seq_params vl2_seq_default_params(void)
{
    struct vl2_seq_params p = {
        .capacity = 0,
        .sampler = vl2_sampler_default_params(),
    };
    return p;
}

int vl2_seq_new(struct vl2_model *m, const struct vl2_seq_params *p, struct vl2_seq **ret,
                struct vl2_err *err)
{
    struct vl2_seq_params defaults = vl2_seq_default_params();
    struct vl2_kv_shape shape = m->kv_shape;
    struct vl2_seq *s;
    int r;

    if (!p)
        p = &defaults;
    if (p->capacity < 0 || p->capacity > m->n_ctx)
        return vl2_err_set(err, VL2_ELIMIT, "model: sequence capacity %d: the context "
                           "length is %d", p->capacity, m->n_ctx);
    shape.capacity = p->capacity ? p->capacity : m->n_ctx;
    s = calloc(1, sizeof(*s));
    if (!s)
        return vl2_err_set(err, VL2_ENOMEM, "model: out of memory");
    s->m = m;
    s->capacity = shape.capacity;
    s->logits = calloc((size_t)m->cfg.lm.n_vocab, sizeof(*s->logits));
    if (!s->logits) {
        r = vl2_err_set(err, VL2_ENOMEM, "model: out of memory for logits");
        goto out_free;
    }
    r = vl2_sampler_init(&s->sampler, &p->sampler, m->cfg.lm.n_vocab, err);
    if (r < 0)
        goto out_free;
    /* the device picks the id when that is all the sampler would do */
    s->dev_greedy = p->device_greedy && m->ops->argmax && p->sampler.temperature == 0.0f &&
                    p->sampler.repetition_penalty == 1.0f;
    r = m->ops->kv_new(m->ctx, &shape, &s->kv, err);
    if (r < 0) {
        vl2_err_prefix(err, r, "model: KV cache");
        goto out_free;
    }
    *ret = s;
    return 0;

out_free:
    vl2_seq_free(s);
    return r;
}

void vl2_seq_free(struct vl2_seq *s)
{
    if (!s)
        return;
    if (s->kv)
        s->m->ops->kv_free(s->m->ctx, s->kv);
    vl2_sampler_done(&s->sampler);
    free(s->logits);
    free(s);
}

int32_t vl2_seq_len(const struct vl2_seq *s)
{
    return s->n_past;
}

const struct vl2_model *vl2_seq_model(const struct vl2_seq *s)
{
    return s->m;
}

const float *vl2_seq_logits(const struct vl2_seq *s)
{
    return s->dev_greedy ? NULL : s->logits;
}

int vl2_seq_device_greedy(const struct vl2_seq *s)
{
    return s->dev_greedy;
}

int32_t vl2_seq_sample(struct vl2_seq *s)
{
    int32_t id = s->dev_greedy ? s->dev_id : vl2_sampler_sample(&s->sampler, s->logits);

    vl2_sampler_accept(&s->sampler, id);
    return id;
}

struct vl2_sampler *vl2_seq_sampler(struct vl2_seq *s)
{
    return &s->sampler;
}

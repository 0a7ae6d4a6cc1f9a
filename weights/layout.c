/* layout.c - the tensors a config implies (spec 2.2), parameter counts
 * (spec 1.3) and validation of a checkpoint against its config. */
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "vl2-backend.h"
#include "weights.h"
#include "weights-impl.h"

struct specs {
    struct vl2_tensor_spec *v;
    size_t n, cap;
    int oom;
};

#if defined(__GNUC__)
__attribute__((format(printf, 5, 6)))
#endif
static void add(struct specs *s, int kind, int part, const int64_t shape[4], const char *fmt, ...)
{
    struct vl2_tensor_spec *t;
    va_list ap;
    int i;

    if (s->oom)
        return;
    if (s->n == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 1024;
        struct vl2_tensor_spec *p = realloc(s->v, cap * sizeof(*p));
        if (!p) {
            s->oom = 1;
            return;
        }
        s->v = p;
        s->cap = cap;
    }
    t = &s->v[s->n++];
    memset(t, 0, sizeof(*t));
    va_start(ap, fmt);
    vsnprintf(t->name, sizeof(t->name), fmt, ap);
    va_end(ap);
    for (i = 0; i < 4 && shape[i] > 0; i++)
        t->shape[i] = shape[i];
    t->ndim = i;
    t->kind = kind;
    t->part = part;
}

#define SH(...) ((const int64_t[4]) { __VA_ARGS__ })

static void vision_specs(struct specs *s, const struct vl2_vision_config *v)
{
    const int64_t W = v->d_model, P = v->patch_size, Hm = v->d_mlp, g = v->grid;
    const int V = VL2_PART_VISION, VP = VL2_PART_VISION_POOL;
    int b;

    add(s, VL2_TK_POS, V, SH(1, g * g, W, 0), "vision.pos_embed");
    add(s, VL2_TK_LIN, V, SH(W, 3, P, P), "vision.patch_embed.proj.weight");
    add(s, VL2_TK_BIAS, V, SH(W, 0, 0, 0), "vision.patch_embed.proj.bias");
    for (b = 0; b < v->n_layer; b++) {
        add(s, VL2_TK_NORMW, V, SH(W, 0, 0, 0), "vision.blocks.%d.norm1.weight", b);
        add(s, VL2_TK_BIAS, V, SH(W, 0, 0, 0), "vision.blocks.%d.norm1.bias", b);
        add(s, VL2_TK_LIN, V, SH(3 * W, W, 0, 0), "vision.blocks.%d.attn.qkv.weight", b);
        add(s, VL2_TK_BIAS, V, SH(3 * W, 0, 0, 0), "vision.blocks.%d.attn.qkv.bias", b);
        add(s, VL2_TK_LIN, V, SH(W, W, 0, 0), "vision.blocks.%d.attn.proj.weight", b);
        add(s, VL2_TK_BIAS, V, SH(W, 0, 0, 0), "vision.blocks.%d.attn.proj.bias", b);
        add(s, VL2_TK_NORMW, V, SH(W, 0, 0, 0), "vision.blocks.%d.norm2.weight", b);
        add(s, VL2_TK_BIAS, V, SH(W, 0, 0, 0), "vision.blocks.%d.norm2.bias", b);
        add(s, VL2_TK_LIN, V, SH(Hm, W, 0, 0), "vision.blocks.%d.mlp.fc1.weight", b);
        add(s, VL2_TK_BIAS, V, SH(Hm, 0, 0, 0), "vision.blocks.%d.mlp.fc1.bias", b);
        add(s, VL2_TK_LIN, V, SH(W, Hm, 0, 0), "vision.blocks.%d.mlp.fc2.weight", b);
        add(s, VL2_TK_BIAS, V, SH(W, 0, 0, 0), "vision.blocks.%d.mlp.fc2.bias", b);
    }
    add(s, VL2_TK_NORMW, V, SH(W, 0, 0, 0), "vision.norm.weight");
    add(s, VL2_TK_BIAS, V, SH(W, 0, 0, 0), "vision.norm.bias");
    add(s, VL2_TK_POS, VP, SH(1, 1, W, 0), "vision.attn_pool.latent");
    add(s, VL2_TK_LIN, VP, SH(W, W, 0, 0), "vision.attn_pool.q.weight");
    add(s, VL2_TK_BIAS, VP, SH(W, 0, 0, 0), "vision.attn_pool.q.bias");
    add(s, VL2_TK_LIN, VP, SH(2 * W, W, 0, 0), "vision.attn_pool.kv.weight");
    add(s, VL2_TK_BIAS, VP, SH(2 * W, 0, 0, 0), "vision.attn_pool.kv.bias");
    add(s, VL2_TK_LIN, VP, SH(W, W, 0, 0), "vision.attn_pool.proj.weight");
    add(s, VL2_TK_BIAS, VP, SH(W, 0, 0, 0), "vision.attn_pool.proj.bias");
    add(s, VL2_TK_NORMW, VP, SH(W, 0, 0, 0), "vision.attn_pool.norm.weight");
    add(s, VL2_TK_BIAS, VP, SH(W, 0, 0, 0), "vision.attn_pool.norm.bias");
    add(s, VL2_TK_LIN, VP, SH(Hm, W, 0, 0), "vision.attn_pool.mlp.fc1.weight");
    add(s, VL2_TK_BIAS, VP, SH(Hm, 0, 0, 0), "vision.attn_pool.mlp.fc1.bias");
    add(s, VL2_TK_LIN, VP, SH(W, Hm, 0, 0), "vision.attn_pool.mlp.fc2.weight");
    add(s, VL2_TK_BIAS, VP, SH(W, 0, 0, 0), "vision.attn_pool.mlp.fc2.bias");
}

static void projector_specs(struct specs *s, const struct vl2_projector_config *p)
{
    const int64_t D = p->d_model, In = (int64_t) p->d_in * p->downsample * p->downsample;
    const int P = VL2_PART_PROJECTOR;

    add(s, VL2_TK_LIN, P, SH(D, In, 0, 0), "projector.layers.0.weight");
    add(s, VL2_TK_BIAS, P, SH(D, 0, 0, 0), "projector.layers.0.bias");
    add(s, VL2_TK_LIN, P, SH(D, D, 0, 0), "projector.layers.2.weight");
    add(s, VL2_TK_BIAS, P, SH(D, 0, 0, 0), "projector.layers.2.bias");
    add(s, VL2_TK_SPECIAL, P, SH(D, 0, 0, 0), "image_newline");
    add(s, VL2_TK_SPECIAL, P, SH(D, 0, 0, 0), "view_seperator");
}

static void lm_specs(struct specs *s, const struct vl2_lm_config *l)
{
    const int64_t H = l->d_model, V = l->n_vocab, nh = l->n_head;
    const int L = VL2_PART_LM;
    int i, e;

    add(s, VL2_TK_EMBED, VL2_PART_EMBED, SH(V, H, 0, 0), "language.model.embed_tokens.weight");
    for (i = 0; i < l->n_layer; i++) {
        char b[64];

        snprintf(b, sizeof(b), "language.model.layers.%d.", i);
        add(s, VL2_TK_NORMW, L, SH(H, 0, 0, 0), "%sinput_layernorm.weight", b);
        if (l->use_mla) {
            const int64_t qd = l->d_nope + l->d_rope, kr = l->kv_lora_rank;
            if (!l->q_lora_rank) {
                add(s, VL2_TK_LIN, L, SH(nh * qd, H, 0, 0), "%sself_attn.q_proj.weight", b);
            } else {
                const int64_t r = l->q_lora_rank;
                add(s, VL2_TK_LIN, L, SH(r, H, 0, 0), "%sself_attn.q_a_proj.weight", b);
                add(s, VL2_TK_NORMW, L, SH(r, 0, 0, 0), "%sself_attn.q_a_layernorm.weight", b);
                add(s, VL2_TK_LIN, L, SH(nh * qd, r, 0, 0), "%sself_attn.q_b_proj.weight", b);
            }
            add(s, VL2_TK_LIN, L, SH(kr + l->d_rope, H, 0, 0),
                "%sself_attn.kv_a_proj_with_mqa.weight", b);
            add(s, VL2_TK_NORMW, L, SH(kr, 0, 0, 0), "%sself_attn.kv_a_layernorm.weight", b);
            add(s, VL2_TK_LIN, L, SH(nh * (l->d_nope + l->d_v), kr, 0, 0),
                "%sself_attn.kv_b_proj.weight", b);
            add(s, VL2_TK_LIN, L, SH(H, nh * l->d_v, 0, 0), "%sself_attn.o_proj.weight", b);
        } else {
            const int64_t hd = l->d_head, nkv = l->n_kv_head;
            add(s, VL2_TK_LIN, L, SH(nh * hd, H, 0, 0), "%sself_attn.q_proj.weight", b);
            add(s, VL2_TK_LIN, L, SH(nkv * hd, H, 0, 0), "%sself_attn.k_proj.weight", b);
            add(s, VL2_TK_LIN, L, SH(nkv * hd, H, 0, 0), "%sself_attn.v_proj.weight", b);
            add(s, VL2_TK_LIN, L, SH(H, nh * hd, 0, 0), "%sself_attn.o_proj.weight", b);
        }
        if (vl2_lm_is_moe(l, i)) {
            const int64_t I = l->d_ff_expert, E = l->n_expert, Is = I * l->n_shared;
            for (e = 0; e < l->n_expert; e++) {
                add(s, VL2_TK_LIN, VL2_PART_EXPERT, SH(I, H, 0, 0),
                    "%smlp.experts.%d.gate_proj.weight", b, e);
                add(s, VL2_TK_LIN, VL2_PART_EXPERT, SH(I, H, 0, 0),
                    "%smlp.experts.%d.up_proj.weight", b, e);
                add(s, VL2_TK_LIN, VL2_PART_EXPERT, SH(H, I, 0, 0),
                    "%smlp.experts.%d.down_proj.weight", b, e);
            }
            add(s, VL2_TK_GATE, L, SH(E, H, 0, 0), "%smlp.gate.weight", b);
            if (l->topk_method == VL2_TOPK_NOAUX_TC)
                add(s, VL2_TK_EBIAS, L, SH(E, 0, 0, 0), "%smlp.gate.e_score_correction_bias", b);
            if (Is > 0) {
                add(s, VL2_TK_LIN, L, SH(Is, H, 0, 0), "%smlp.shared_experts.gate_proj.weight", b);
                add(s, VL2_TK_LIN, L, SH(Is, H, 0, 0), "%smlp.shared_experts.up_proj.weight", b);
                add(s, VL2_TK_LIN, L, SH(H, Is, 0, 0), "%smlp.shared_experts.down_proj.weight", b);
            }
        } else {
            const int64_t I = l->d_ff;
            add(s, VL2_TK_LIN, L, SH(I, H, 0, 0), "%smlp.gate_proj.weight", b);
            add(s, VL2_TK_LIN, L, SH(I, H, 0, 0), "%smlp.up_proj.weight", b);
            add(s, VL2_TK_LIN, L, SH(H, I, 0, 0), "%smlp.down_proj.weight", b);
        }
        add(s, VL2_TK_NORMW, L, SH(H, 0, 0, 0), "%spost_attention_layernorm.weight", b);
    }
    add(s, VL2_TK_NORMW, L, SH(H, 0, 0, 0), "language.model.norm.weight");
    add(s, VL2_TK_HEAD, L, SH(V, H, 0, 0), "language.lm_head.weight");
}

int vl2_model_tensor_specs(const struct vl2_model_config *c, struct vl2_tensor_spec **ret_specs,
                           size_t *ret_n, struct vl2_err *err)
{
    struct specs s = { 0 };

    vision_specs(&s, &c->vision);
    projector_specs(&s, &c->proj);
    lm_specs(&s, &c->lm);
    if (s.oom) {
        free(s.v);
        return vl2_err_set(err, VL2_ENOMEM, "weights: out of memory for the tensor list");
    }
    *ret_specs = s.v;
    *ret_n = s.n;
    return s.n > 0x7fffffff ? 0x7fffffff : (int) s.n;
}

static int64_t numel(const struct vl2_tensor_spec *t)
{
    int64_t n = 1;
    int i;

    for (i = 0; i < t->ndim; i++)
        n *= t->shape[i];
    return n;
}

int vl2_model_count_params(const struct vl2_model_config *c, struct vl2_param_counts *ret,
                           struct vl2_err *err)
{
    struct vl2_param_counts p;
    struct vl2_tensor_spec *v;
    int64_t expert = 0;
    size_t n, i;
    int r, n_moe = 0;

    r = vl2_model_tensor_specs(c, &v, &n, err);
    if (r < 0)
        return r;
    memset(&p, 0, sizeof(p));
    for (i = 0; i < n; i++) {
        int64_t k = numel(&v[i]);
        p.total += k;
        switch (v[i].part) {
        case VL2_PART_VISION:
            p.vision += k;
            break;
        case VL2_PART_VISION_POOL:
            p.vision += k;
            p.vision_pool += k;
            break;
        case VL2_PART_PROJECTOR:
            p.projector += k;
            break;
        case VL2_PART_EMBED:
            p.language += k;
            break;
        case VL2_PART_LM:
            p.language += k;
            p.active_lm += k;
            break;
        case VL2_PART_EXPERT:
            p.language += k;
            expert += k;
            break;
        }
    }
    for (i = 0; i < (size_t) c->lm.n_layer; i++)
        n_moe += vl2_lm_is_moe(&c->lm, (int) i);
    if (n_moe && c->lm.n_expert)
        p.active_lm += expert / c->lm.n_expert * c->lm.top_k;
    p.active = p.active_lm + (p.vision - p.vision_pool) + p.projector;
    free(v);
    *ret = p;
    return 0;
}

/* ---- validation ----------------------------------------------------------- */

struct msgbuf {
    char   s[VL2_ERR_MSG_SIZE];
    size_t len;
    int    full;
};

#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static void mb_add(struct msgbuf *m, const char *fmt, ...)
{
    va_list ap;
    int n;

    if (m->full)
        return;
    va_start(ap, fmt);
    n = vsnprintf(m->s + m->len, sizeof(m->s) - m->len, fmt, ap);
    va_end(ap);
    if (n < 0 || m->len + (size_t) n >= sizeof(m->s) - 8) {
        m->s[m->len] = '\0';
        m->full = 1;
        return;
    }
    m->len += (size_t) n;
}

static void shape_str(char *out, size_t cap, const int64_t *shape, int ndim)
{
    size_t o = 0;
    int i;

    o += (size_t) snprintf(out, cap, "[");
    for (i = 0; i < ndim && o < cap; i++)
        o += (size_t) snprintf(out + o, cap - o, "%s%lld", i ? ", " : "", (long long) shape[i]);
    if (o < cap)
        snprintf(out + o, cap - o, "]");
}

static int cmp_spec_name(const void *a, const void *b)
{
    return strcmp((*(const struct vl2_tensor_spec *const *) a)->name,
                  (*(const struct vl2_tensor_spec *const *) b)->name);
}

static int cmp_key_spec(const void *key, const void *b)
{
    return strcmp(key, (*(const struct vl2_tensor_spec *const *) b)->name);
}

int vl2_model_validate(const struct vl2_model_config *c, const struct vl2_weights *w,
                       struct vl2_err *err)
{
    enum { MAX_LIST = 4 };
    struct vl2_tensor_spec *v, **sorted;
    const struct vl2_tensor_spec *first_missing[MAX_LIST], *first_bad[MAX_LIST];
    const struct vl2_st_tensor *first_extra[MAX_LIST], *bad_t[MAX_LIST];
    size_t n, i, n_missing = 0, n_bad = 0, n_extra = 0, n_w = vl2_weights_count(w);
    struct msgbuf m = { .len = 0 };
    char a[96], b[96];
    int r;

    r = vl2_model_tensor_specs(c, &v, &n, err);
    if (r < 0)
        return r;
    sorted = malloc((n ? n : 1) * sizeof(*sorted));
    if (!sorted) {
        free(v);
        return vl2_err_set(err, VL2_ENOMEM, "weights: out of memory");
    }
    for (i = 0; i < n; i++) {
        const struct vl2_st_tensor *t = vl2_weights_find(w, v[i].name);
        sorted[i] = &v[i];
        if (!t) {
            if (n_missing < MAX_LIST)
                first_missing[n_missing] = &v[i];
            n_missing++;
            continue;
        }
        if (t->ndim != v[i].ndim || memcmp(t->shape, v[i].shape, v[i].ndim * sizeof(int64_t)) ||
            (t->dtype != VL2_DTYPE_BF16 && t->dtype != VL2_DTYPE_F16 &&
             t->dtype != VL2_DTYPE_F32)) {
            if (n_bad < MAX_LIST) {
                first_bad[n_bad] = &v[i];
                bad_t[n_bad] = t;
            }
            n_bad++;
        }
    }
    qsort(sorted, n, sizeof(*sorted), cmp_spec_name);
    for (i = 0; i < n_w; i++) {
        const struct vl2_st_tensor *t = vl2_weights_at(w, i);
        if (!bsearch(t->name, sorted, n, sizeof(*sorted), cmp_key_spec)) {
            if (n_extra < MAX_LIST)
                first_extra[n_extra] = t;
            n_extra++;
        }
    }
    free(sorted);

    if (!n_missing && !n_bad && !n_extra) {
        free(v);
        return 0;
    }
    mb_add(&m, "weights: checkpoint does not match config.json: %zu missing, %zu unexpected, "
           "%zu wrong", n_missing, n_extra, n_bad);
    if (n_missing) {
        mb_add(&m, "; missing");
        for (i = 0; i < n_missing && i < 2; i++)
            mb_add(&m, "%s '%s'", i ? "," : "", first_missing[i]->name);
        if (n_missing > 2)
            mb_add(&m, ", ...");
    }
    if (n_extra) {
        mb_add(&m, "; unexpected");
        for (i = 0; i < n_extra && i < 2; i++)
            mb_add(&m, "%s '%.80s'", i ? "," : "", first_extra[i]->name);
        if (n_extra > 2)
            mb_add(&m, ", ...");
    }
    for (i = 0; i < n_bad && i < 2; i++) {
        shape_str(a, sizeof(a), bad_t[i]->shape, bad_t[i]->ndim);
        shape_str(b, sizeof(b), first_bad[i]->shape, first_bad[i]->ndim);
        mb_add(&m, "; '%s' is %s %s, expected %s%s", first_bad[i]->name,
               vl2_dtype_st_name(bad_t[i]->dtype), a, b,
               bad_t[i]->dtype == VL2_DTYPE_BF16 || bad_t[i]->dtype == VL2_DTYPE_F16 ||
               bad_t[i]->dtype == VL2_DTYPE_F32 ? "" : " of a float dtype");
    }
    if (n_bad > 2)
        mb_add(&m, "; ...");
    if (m.full)
        snprintf(m.s + m.len, sizeof(m.s) - m.len, " ...");
    free(v);
    return vl2__err_oneline(err, vl2_err_set(err, VL2_EFORMAT, "%s", m.s));
}

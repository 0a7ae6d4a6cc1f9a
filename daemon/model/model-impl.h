/* model-impl.h - the fields of struct vl2_model and struct vl2_seq, shared
 * by the files of daemon/model (model.c: loading and sequences; vision.c:
 * vision tower, projector and token layout; llm.c: the decoder). */
#ifndef VL2_MODEL_IMPL_H
#define VL2_MODEL_IMPL_H

#include "model.h"

struct vl2_backend;

/* One SigLIP block; shapes with Dv = vision d_model, F = vision d_mlp. */
struct vl2_vit_block {
    struct vl2_tensor ln1_w, ln1_b;   /* [Dv] F32 */
    struct vl2_tensor qkv_w;          /* [3*Dv, Dv] */
    struct vl2_tensor qkv_b;          /* [3*Dv] F32 */
    struct vl2_tensor proj_w;         /* [Dv, Dv] */
    struct vl2_tensor proj_b;         /* [Dv] F32 */
    struct vl2_tensor ln2_w, ln2_b;   /* [Dv] F32 */
    struct vl2_tensor fc1_w;          /* [F, Dv] */
    struct vl2_tensor fc1_b;          /* [F] F32 */
    struct vl2_tensor fc2_w;          /* [Dv, F] */
    struct vl2_tensor fc2_b;          /* [Dv] F32 */
};

/* One decoder layer; D = d_model, nh = n_head. */
struct vl2_llm_layer {
    struct vl2_tensor ln_attn;        /* [D] input_layernorm, F32 */
    struct vl2_tensor ln_mlp;         /* [D] post_attention_layernorm, F32 */
    /* MHA */
    struct vl2_tensor wq;             /* MHA [nh*dh, D]; MLA without q_lora [nh*(nope+rope), D] */
    struct vl2_tensor wk, wv;         /* MHA [nkv*dh, D] */
    struct vl2_tensor wo;             /* [D, nh*dh] or [D, nh*d_v] */
    /* MLA */
    struct vl2_tensor wq_a;           /* [q_lora, D] (q_lora only) */
    struct vl2_tensor q_a_norm;       /* [q_lora] F32 */
    struct vl2_tensor wq_b;           /* [nh*(nope+rope), q_lora] */
    struct vl2_tensor wkv_a;          /* [kv_lora + rope, D] */
    struct vl2_tensor kv_a_norm;      /* [kv_lora] F32 */
    struct vl2_tensor wkv_b;          /* [nh*(nope+d_v), kv_lora] */
    /* dense MLP */
    struct vl2_tensor w_gate, w_up;   /* [d_ff, D] */
    struct vl2_tensor w_down;         /* [D, d_ff] */
    /* MoE */
    int                      is_moe;
    struct vl2_tensor        router;      /* [E, D] */
    struct vl2_tensor        router_bias; /* [E] F32, or data NULL */
    struct vl2_tensor       *ex;          /* 3*E: gate[E], up[E], down[E] */
    const struct vl2_tensor **ex_ptr;     /* 3*E pointers into ex */
    struct vl2_tensor        sh_gate, sh_up, sh_down;
    struct vl2_moe_layer     moe;
};

/* A piece of an item that goes into one pass. */
struct vl2_llm_piece {
    const struct vl2_step_item *item;
    int32_t  off;        /* first id of the item in this piece */
    int32_t  n;          /* ids in this piece */
    int64_t  img_row;    /* image rows consumed before this piece */
    int      logits;     /* logits of its last row */
};

/* Activations of one pass, allocated once for max_rows rows. */
struct vl2_llm_scratch {
    struct vl2_tensor x;      /* [R, D] residual stream */
    struct vl2_tensor h;      /* [R, D] normalised */
    struct vl2_tensor a;      /* [R, D] block output */
    struct vl2_tensor q;      /* [R, nh*q_head] */
    struct vl2_tensor k, v;   /* MHA [R, nkv*dh] */
    struct vl2_tensor qa;     /* MLA q_lora [R, q_lora] */
    struct vl2_tensor ckv;    /* MLA [R, kv_lora + rope] */
    struct vl2_tensor c;      /* MLA [R, kv_lora] normalised latent */
    struct vl2_tensor o;      /* [R, nh*d_v] attention output */
    struct vl2_tensor g, u;   /* [R, d_ff] dense MLP */
    struct vl2_tensor last;   /* [L, D] last rows of the sequences that want logits */
    struct vl2_tensor logits; /* [L, V] */
    struct vl2_tensor best;   /* I32 [L, 1] greedy ids (backends with argmax) */
    int32_t          *best_h; /* host [L] */
    int32_t          *ids;    /* host [R] */
    int32_t          *dst;    /* host [R] row indices */
    int32_t          *src;    /* host [R] */
    struct vl2_batch_seq *bseq; /* host [R] */
    struct vl2_step_item *items; /* host [cap_items] (decode) */
    size_t               cap_items;
    struct vl2_llm_piece *pc;   /* host [R] pieces of one pass */
};

struct vl2_vision_scratch {
    struct vl2_tensor img;     /* [B, 3*S*S] */
    struct vl2_tensor patches; /* [B*P, 3*p*p] */
    struct vl2_tensor x, h, o; /* [B*P, Dv] */
    struct vl2_tensor qkv;     /* [B*P, 3*Dv] */
    struct vl2_tensor mlp;     /* [B*P, F] */
    struct vl2_tensor unf;     /* [B*Q, 4*Dv] */
    struct vl2_tensor p1;      /* [B*Q, D] */
    float            *host;    /* [B * 3*S*S] normalised pixels */
};

struct vl2_model {
    struct vl2_model_config      cfg;
    struct vl2_processor_config  pcfg;
    struct vl2_model_params      params;
    struct vl2_weights          *w;
    const struct vl2_backend_ops *ops;
    struct vl2_backend_ctx      *ctx;
    struct vl2_backend          *backend;     /* owned */
    int32_t                      n_ctx;
    struct vl2_kv_shape          kv_shape;    /* capacity filled per sequence */
    size_t                       kv_token_bytes;

    /* vision */
    struct vl2_tensor     patch_w;      /* [Dv, 3*p*p] */
    struct vl2_tensor     patch_b;      /* [Dv] F32 */
    struct vl2_tensor     pos;          /* [P, Dv] F32 */
    struct vl2_vit_block *vit;          /* [vision n_layer] */
    struct vl2_tensor     vit_norm_w, vit_norm_b;  /* [Dv] F32 */
    /* projector and layout */
    struct vl2_tensor     proj0_w;      /* [D, 4*Dv] */
    struct vl2_tensor     proj0_b;      /* [D] F32 */
    struct vl2_tensor     proj2_w;      /* [D, D] */
    struct vl2_tensor     proj2_b;      /* [D] F32 */
    struct vl2_tensor     special;      /* [2, D] F32: row 0 image_newline, row 1 view_seperator */
    /* language model */
    struct vl2_tensor     embed;        /* [V, D] */
    struct vl2_llm_layer *layers;       /* [n_layer] */
    struct vl2_tensor     norm;         /* [D] F32 */
    struct vl2_tensor     lm_head;      /* [V, D] */

    struct vl2_llm_scratch    ls;
    struct vl2_vision_scratch vs;
    int32_t                   vs_rows;  /* tiles the vision scratch holds (0: not yet) */

    /* every tensor created on the backend, to free them in one place */
    struct vl2_tensor **owned;
    size_t              n_owned, cap_owned;
};

struct vl2_seq {
    struct vl2_model   *m;
    struct vl2_kv      *kv;
    int32_t             capacity;
    int32_t             n_past;
    float              *logits;     /* [V] host (not written when dev_greedy) */
    struct vl2_sampler  sampler;
    int                 dev_greedy; /* passes choose the id on the device (argmax) */
    int32_t             dev_id;     /* that id, from the last pass with logits */
};

/* llm.c */
int  vl2__llm_scratch_init(struct vl2_model *m, struct vl2_err *err);
/* vision.c */
int  vl2__vision_scratch_init(struct vl2_model *m, struct vl2_err *err);

/* model.c: allocate an F32 activation tensor [rows, cols], recorded for freeing. */
int  vl2__model_alloc(struct vl2_model *m, struct vl2_tensor *t, int64_t rows, int64_t cols,
                      struct vl2_err *err);
/* The same of element type @dtype. */
int  vl2__model_alloc_dt(struct vl2_model *m, struct vl2_tensor *t, int dtype, int64_t rows,
                         int64_t cols, struct vl2_err *err);

#endif /* VL2_MODEL_IMPL_H */

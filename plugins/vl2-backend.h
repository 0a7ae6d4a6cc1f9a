/* vl2-backend.h - the backend ABI, version 2.
 *
 * A backend is a shared object (vl2-backend-cpu.so, vl2-backend-cuda.so)
 * that exports one symbol:
 *
 *     const struct vl2_backend_ops *vl2_backend_entry(uint32_t abi_version,
 *                                                     struct vl2_err *err);
 *
 * It returns its table of functions when it implements @abi_version, or NULL
 * with a reason in @err.  The loader (daemon/backend) also checks
 * ops->abi_version and ops->struct_size before use.  This header,
 * vl2-status.h and vl2-options.h are all a backend includes from vl2d.
 *
 * Versioning rule.  Any change to a struct or enum of this file, or to the
 * meaning or order of a slot of struct vl2_backend_ops, is a change of the
 * ABI and bumps VL2_BACKEND_ABI_VERSION.  The one exception is a new
 * optional slot appended at the tail of the table (the loader treats slots
 * past a shorter table's struct_size as NULL).  Every struct that crosses
 * the ABI starts with @struct_size, set by the caller to sizeof(struct) as
 * it was compiled; a backend refuses a struct whose size is not the one it
 * knows (VL2_EABI), so a caller built from another revision of this header
 * is caught at the first call instead of reading fields at wrong offsets.
 * Plugins are installed in a directory named by the version
 * ($libdir/vl2d/backends-<N>), so two ABIs never share one.
 *
 * Model.  The runtime writes the forward pass once as calls on tensors that
 * the backend owns.  Calls are asynchronous: they are queued in order on the
 * backend's stream and may return before the work is done; read() and sync()
 * wait.  An error from a queued op may surface at the next read()/sync().
 *
 * Tensors.  struct vl2_tensor is a plain descriptor (no hidden state beyond
 * @priv), so the runtime can make views of rows and column ranges itself
 * with the helpers at the end of this file.  @data is a backend address (a
 * host pointer for the CPU backend, a device pointer for CUDA): the runtime
 * never dereferences it.  Every op sees a tensor as a 2-D matrix of @rows x
 * @cols elements with @ld elements between the starts of two rows (ld >=
 * cols; column views have ld > cols).  Activations are F32 unless a backend
 * documents otherwise; weights may be BF16, F16, F32 (Q8/Q4 are reserved).
 *
 * Ownership.  Tensors from alloc()/weight() are freed with free_tensor().
 * Views are never freed.  A weight tensor may point into the caller's mapped
 * checkpoint (zero-copy) and is valid while that mapping is; the runtime
 * keeps the mapping open for the life of the model.  KV caches from kv_new()
 * are freed with kv_free().
 *
 * Batches.  Every op takes rows from any number of sequences at once.  The
 * ops that depend on token positions (rope, attention) read them from the
 * current batch, set by begin_batch().  The calls of a decode step are the
 * same sequence every step, with the same tensors, so a backend may record
 * them once and replay them (CUDA graphs): begin_batch() marks the start of a
 * step.
 */
#ifndef VL2_BACKEND_H
#define VL2_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "vl2-status.h"

#define VL2_BACKEND_ABI_VERSION 2u
#define VL2_BACKEND_ENTRY "vl2_backend_entry"

enum vl2_dtype {
    VL2_DTYPE_F32  = 0,
    VL2_DTYPE_F16  = 1,
    VL2_DTYPE_BF16 = 2,
    VL2_DTYPE_I32  = 3,
    VL2_DTYPE_Q8   = 4,  /* reserved: 8-bit, per-block scales */
    VL2_DTYPE_Q4   = 5,  /* reserved: 4-bit, per-block scales */
};

static inline size_t vl2_dtype_size(int dtype)
{
    switch (dtype) {
    case VL2_DTYPE_F32: case VL2_DTYPE_I32: return 4;
    case VL2_DTYPE_F16: case VL2_DTYPE_BF16: return 2;
    }
    return 0;
}

struct vl2_tensor {
    void    *data;      /* backend address of element (0, 0) */
    void    *priv;      /* backend bookkeeping; NULL in views */
    int32_t  dtype;     /* enum vl2_dtype */
    int32_t  ndim;      /* 1..4 */
    int64_t  ne[4];     /* logical shape, PyTorch order: ne[ndim-1] is fastest */
    int64_t  rows;      /* product of ne[0..ndim-2] (1 for ndim 1) */
    int64_t  cols;      /* ne[ndim-1] */
    int64_t  ld;        /* elements between starts of consecutive rows */
};

/* Opaque per-backend objects. */
struct vl2_backend_ctx;
struct vl2_kv;

struct vl2_backend_params {
    uint32_t    struct_size;  /* sizeof(struct vl2_backend_params) */
    int         n_threads;    /* CPU: worker threads (0: all cores) */
    int         device;       /* CUDA: device index */
    size_t      mem_budget;   /* bytes the backend may allocate (0: no limit); vl2d
                                 passes 0: its one memory accountant is the engine's
                                 KV budget, which admits a request only when its cache
                                 fits (else the request waits), while the other memory
                                 (weights, activations) is fixed when the model loads.
                                 A limit inside the backend could only fail a forward
                                 pass half-way.  Other hosts and tests may set it. */
    const char *options;      /* backend options in the grammar of vl2-options.h, or NULL */
};

/* KV cache of one sequence, all layers.
 *   MHA: per layer K and V, each [capacity, n_kv_head * head_dim].
 *   MLA: per layer the normalised latent c [capacity, kv_lora_rank] and the
 *        rotated shared key k_pe [capacity, rope_dim] (spec 7.6). */
enum vl2_attn_kind { VL2_ATTN_MHA = 0, VL2_ATTN_MLA = 1 };

struct vl2_kv_shape {
    uint32_t struct_size; /* sizeof(struct vl2_kv_shape) */
    int32_t kind;         /* enum vl2_attn_kind */
    int32_t n_layer;
    int32_t n_kv_head;    /* MHA */
    int32_t head_dim;     /* MHA */
    int32_t kv_lora_rank; /* MLA */
    int32_t rope_dim;     /* MLA */
    int32_t dtype;        /* storage dtype: F32 (BF16/F16 if the backend supports it) */
    int32_t capacity;     /* tokens */
};

/* One sequence's part of a batch. */
struct vl2_batch_seq {
    int32_t        row0;    /* its first row in the batch activations */
    int32_t        n_rows;  /* its rows (new tokens) in this batch */
    int32_t        n_past;  /* tokens already in its cache: rows get positions n_past.. */
    struct vl2_kv *kv;      /* its cache; the new rows are stored at n_past.. */
};

struct vl2_batch {
    uint32_t                     struct_size;  /* sizeof(struct vl2_batch) */
    int32_t                      n_rows;  /* total rows = sum of seqs[i].n_rows */
    int32_t                      n_seqs;
    const struct vl2_batch_seq  *seqs;    /* rows of seqs[i] follow those of seqs[i-1] */
};

enum vl2_rope_layout {
    VL2_ROPE_NEOX        = 0,  /* pairs (i, i + d/2): Llama rotate-half (tiny MHA) */
    VL2_ROPE_INTERLEAVED = 1,  /* pairs (2i, 2i+1), output stored as (y_i, y_{i+d/2})
                                  i.e. de-interleaved, as DeepSeek MLA (spec 7.6) */
};

enum vl2_moe_scoring { VL2_MOE_SOFTMAX = 0, VL2_MOE_SIGMOID = 1 };
enum vl2_moe_method  { VL2_MOE_GREEDY = 0, VL2_MOE_GROUP_LIMITED = 1, VL2_MOE_NOAUX_TC = 2 };

/* One MoE layer (spec 7.4).  Expert weight arrays have n_expert entries,
 * each [inter, d_model] (gate, up) or [d_model, inter] (down).  Shared
 * expert tensors are NULL when there is none. */
struct vl2_moe_layer {
    uint32_t struct_size;                 /* sizeof(struct vl2_moe_layer) */
    const struct vl2_tensor *router;      /* [n_expert, d_model] */
    const struct vl2_tensor *bias;        /* [n_expert] e_score_correction_bias, or NULL */
    const struct vl2_tensor *const *gate; /* n_expert x [inter, d_model] */
    const struct vl2_tensor *const *up;
    const struct vl2_tensor *const *down; /* n_expert x [d_model, inter] */
    const struct vl2_tensor *sh_gate;     /* [inter * n_shared, d_model] or NULL */
    const struct vl2_tensor *sh_up;
    const struct vl2_tensor *sh_down;     /* [d_model, inter * n_shared] */
    int32_t n_expert;
    int32_t top_k;
    int32_t scoring;       /* enum vl2_moe_scoring */
    int32_t method;        /* enum vl2_moe_method */
    int32_t n_group;
    int32_t topk_group;
    int32_t norm_topk_prob;
    float   routed_scale;  /* routed_scaling_factor */
};

/* What supports_op() is asked about: one per operation of the table, plus
 * the storage kinds a model is built from. */
enum vl2_op {
    VL2_OP_WEIGHT = 1,   /* weight(): a weight tensor of @dtype */
    VL2_OP_KV,           /* kv_new(): a cache stored as @dtype */
    VL2_OP_EMBED,        /* embed() from a table of @dtype */
    VL2_OP_LINEAR,       /* linear() with weights of @dtype */
    VL2_OP_RMSNORM,
    VL2_OP_LAYERNORM,
    VL2_OP_ADD,
    VL2_OP_GELU_TANH,
    VL2_OP_GELU_ERF,
    VL2_OP_SWIGLU,
    VL2_OP_COPY_ROWS,
    VL2_OP_PATCHIFY,
    VL2_OP_UNFOLD2X2,
    VL2_OP_ATTN_FULL,
    VL2_OP_ROPE,
    VL2_OP_ATTN_MHA,     /* over a cache of @dtype */
    VL2_OP_ATTN_MLA,     /* over a cache of @dtype */
    VL2_OP_MOE,          /* with expert weights of @dtype */
    VL2_OP_ARGMAX,
    VL2_OP_COUNT
};

struct vl2_backend_ops {
    uint32_t    abi_version;   /* VL2_BACKEND_ABI_VERSION the backend was built with */
    uint32_t    struct_size;   /* sizeof(struct vl2_backend_ops) in the backend */
    const char *name;          /* "cpu", "cuda" */

    /* -- lifetime ------------------------------------------------------ */
    int  (*open)(const struct vl2_backend_params *p, struct vl2_backend_ctx **ret_ctx,
                 struct vl2_err *err);
    void (*close)(struct vl2_backend_ctx *ctx);
    /* One line describing the device and features ("cpu: 2 threads, avx512bf16"). */
    const char *(*describe)(struct vl2_backend_ctx *ctx);
    /* Bytes of memory the backend holds now (weights it copied, activations, caches). */
    size_t (*mem_used)(struct vl2_backend_ctx *ctx);

    /* -- memory -------------------------------------------------------- */
    /* Allocate an uninitialised tensor of the given shape (contiguous, ld = cols). */
    int  (*alloc)(struct vl2_backend_ctx *ctx, struct vl2_tensor *t, int dtype, int ndim,
                  const int64_t *ne, struct vl2_err *err);
    /* Make a weight tensor from @host (checkpoint bytes in @dtype, row-major,
     * any alignment).  The CPU backend may reference @host directly (zero-copy,
     * shared pages); a GPU backend copies it to the device.  @host must stay
     * valid while the tensor lives. */
    int  (*weight)(struct vl2_backend_ctx *ctx, struct vl2_tensor *t, int dtype, int ndim,
                   const int64_t *ne, const void *host, struct vl2_err *err);
    void (*free_tensor)(struct vl2_backend_ctx *ctx, struct vl2_tensor *t);
    /* Copy @size bytes between host memory and the tensor at byte offset
     * @offset of its storage.  write() may return before the copy is done but
     * has consumed @src when it returns; read() waits for all queued work. */
    int  (*write)(struct vl2_backend_ctx *ctx, struct vl2_tensor *t, size_t offset,
                  const void *src, size_t size, struct vl2_err *err);
    int  (*read)(struct vl2_backend_ctx *ctx, const struct vl2_tensor *t, size_t offset,
                 void *dst, size_t size, struct vl2_err *err);
    /* Wait for all queued work; report the first error of a queued op. */
    int  (*sync)(struct vl2_backend_ctx *ctx, struct vl2_err *err);

    /* -- KV cache ------------------------------------------------------ */
    int  (*kv_new)(struct vl2_backend_ctx *ctx, const struct vl2_kv_shape *shape,
                   struct vl2_kv **ret_kv, struct vl2_err *err);
    void (*kv_free)(struct vl2_backend_ctx *ctx, struct vl2_kv *kv);
    /* Bytes that one token takes in a cache of this shape (all layers); 0
     * for a shape kv_new() would refuse (struct_size, dtype, sizes). */
    size_t (*kv_token_bytes)(const struct vl2_kv_shape *shape);

    /* -- batch --------------------------------------------------------- */
    /* Set the current batch for the ops that follow (rope, attention).  The
     * backend copies what it needs; @b may be freed on return. */
    int  (*begin_batch)(struct vl2_backend_ctx *ctx, const struct vl2_batch *b,
                        struct vl2_err *err);

    /* -- ops (all asynchronous; out may alias x only where stated) ------ */
    /* out[i, :] = table[ids[i], :] (converted to F32); @ids is a host array of
     * out->rows ids, consumed before return. */
    int  (*embed)(struct vl2_backend_ctx *ctx, struct vl2_tensor *out,
                  const struct vl2_tensor *table, const int32_t *ids, struct vl2_err *err);
    /* out = x * W^T (+ bias).  x [n, in] F32, w [out, in] any weight dtype,
     * bias [out] or NULL, out [n, out] F32.  Accumulation in F32. */
    int  (*linear)(struct vl2_backend_ctx *ctx, struct vl2_tensor *out,
                   const struct vl2_tensor *x, const struct vl2_tensor *w,
                   const struct vl2_tensor *bias, struct vl2_err *err);
    /* RMSNorm over each row: out = w * x / sqrt(mean(x^2) + eps).  out may alias x. */
    int  (*rmsnorm)(struct vl2_backend_ctx *ctx, struct vl2_tensor *out,
                    const struct vl2_tensor *x, const struct vl2_tensor *w, float eps,
                    struct vl2_err *err);
    /* LayerNorm over each row (biased variance): out = (x - mean) / sqrt(var + eps) * w + b.
     * out may alias x. */
    int  (*layernorm)(struct vl2_backend_ctx *ctx, struct vl2_tensor *out,
                      const struct vl2_tensor *x, const struct vl2_tensor *w,
                      const struct vl2_tensor *b, float eps, struct vl2_err *err);
    /* out = a + b.  b has the same number of columns and either the same rows
     * or fewer: row r of a is added to row (r % b->rows) of b (broadcast, used
     * for position embeddings).  out may alias a. */
    int  (*add)(struct vl2_backend_ctx *ctx, struct vl2_tensor *out,
                const struct vl2_tensor *a, const struct vl2_tensor *b, struct vl2_err *err);
    /* In place activations on x. */
    int  (*gelu_tanh)(struct vl2_backend_ctx *ctx, struct vl2_tensor *x, struct vl2_err *err);
    int  (*gelu_erf)(struct vl2_backend_ctx *ctx, struct vl2_tensor *x, struct vl2_err *err);
    /* out = silu(gate) * up, all [n, inter].  out may alias gate. */
    int  (*swiglu)(struct vl2_backend_ctx *ctx, struct vl2_tensor *out,
                   const struct vl2_tensor *gate, const struct vl2_tensor *up,
                   struct vl2_err *err);
    /* dst[dst_rows[k], :] = src[src_rows[k], :] for k < n (host index arrays,
     * consumed before return; F32, same cols).  Used to lay out image tokens
     * and scatter them into the prompt embeddings. */
    int  (*copy_rows)(struct vl2_backend_ctx *ctx, struct vl2_tensor *dst,
                      const int32_t *dst_rows, const struct vl2_tensor *src,
                      const int32_t *src_rows, int32_t n, struct vl2_err *err);

    /* Vision: im2col for a stride-p conv.  img [n_img, 3*S*S] (CHW, F32),
     * out [n_img * g * g, 3*p*p] with g = S / p (integer division: trailing
     * pixels ignored); patch (gy, gx) of image i is row i*g*g + gy*g + gx,
     * features ordered (c, ky, kx). */
    int  (*patchify)(struct vl2_backend_ctx *ctx, struct vl2_tensor *out,
                     const struct vl2_tensor *img, int32_t image_size, int32_t patch,
                     struct vl2_err *err);
    /* Projector unfold (spec 5): feat [n_img * g * g, c] with g x g grid;
     * pad to even g2 = g + (g & 1) with zeros (bottom row, right column),
     * out [n_img * (g2/2)^2, 4*c], out[q][c*4 + ky*2 + kx] = feat[2by+ky][2bx+kx][c]. */
    int  (*unfold2x2)(struct vl2_backend_ctx *ctx, struct vl2_tensor *out,
                      const struct vl2_tensor *feat, int32_t grid, struct vl2_err *err);
    /* Bidirectional attention within groups of @seq_len rows (vision tower):
     * qkv [n_seq * seq_len, 3 * n_head * head_dim] (Q | K | V, heads
     * contiguous in each), out [n_seq * seq_len, n_head * head_dim]. */
    int  (*attn_full)(struct vl2_backend_ctx *ctx, struct vl2_tensor *out,
                      const struct vl2_tensor *qkv, int32_t seq_len, int32_t n_head,
                      int32_t head_dim, float scale, struct vl2_err *err);

    /* Rotary embedding in place on the rows of the current batch.  x [n, *]:
     * head h occupies columns h*head_stride .. ; the rotated dims are
     * [rot_off, rot_off + rot_dim) inside each head.  Position of a row comes
     * from the batch.  inv_freq[i] = theta^(-2i/rot_dim). */
    int  (*rope)(struct vl2_backend_ctx *ctx, struct vl2_tensor *x, int32_t n_head,
                 int32_t head_stride, int32_t rot_off, int32_t rot_dim, float theta,
                 int32_t layout, struct vl2_err *err);
    /* MHA causal attention of layer @layer for the current batch: stores k, v
     * rows [n, n_kv_head*head_dim] into each sequence's cache at its
     * positions, then out[n, n_head*head_dim] = softmax(q k^T * scale + causal) v
     * over the cache up to and including each row's position.
     * n_head % n_kv_head == 0 (grouped queries share a kv head). */
    int  (*attn_mha)(struct vl2_backend_ctx *ctx, int32_t layer, struct vl2_tensor *out,
                     const struct vl2_tensor *q, const struct vl2_tensor *k,
                     const struct vl2_tensor *v, int32_t n_head, int32_t n_kv_head,
                     int32_t head_dim, float scale, struct vl2_err *err);
    /* MLA causal attention of layer @layer (spec 7.6) for the current batch:
     * stores c [n, kv_lora_rank] (after kv_a_layernorm) and k_pe [n, rope_dim]
     * (after rope) into the cache, then for each head h:
     *   score = (q_nope W_UK[h]) . c  +  q_pe . k_pe, times scale, causal softmax,
     *   out[:, h*v_dim ..] = (P c) W_UV[h]^T
     * with q [n, n_head*(nope_dim+rope_dim)] (per head: nope then rope) and
     * kv_b [n_head*(nope_dim+v_dim), kv_lora_rank] (per head: W_UK rows then
     * W_UV rows), out [n, n_head*v_dim]. */
    int  (*attn_mla)(struct vl2_backend_ctx *ctx, int32_t layer, struct vl2_tensor *out,
                     const struct vl2_tensor *q, const struct vl2_tensor *c,
                     const struct vl2_tensor *k_pe, const struct vl2_tensor *kv_b,
                     int32_t n_head, int32_t nope_dim, int32_t rope_dim, int32_t v_dim,
                     float scale, struct vl2_err *err);
    /* One whole MoE layer (spec 7.4): router logits in F32, scoring, expert
     * selection, weights, the selected experts' SiLU-gated MLPs and the shared
     * experts, all on the device.  x, out [n, d_model]; out must not alias x. */
    int  (*moe)(struct vl2_backend_ctx *ctx, struct vl2_tensor *out,
                const struct vl2_tensor *x, const struct vl2_moe_layer *layer,
                struct vl2_err *err);

    /* -- optional (NULL, or past a shorter table's struct_size: absent) -- */
    /* Greedy choice per row: out (I32, [n] or [n, 1]) gets the index of the
     * first largest value of row i of x (F32 [n, cols]); NaN never wins, and
     * a row whose first value is NaN gives 0.  It
     * lets a greedy decode step read back one id per sequence instead of its
     * logits. */
    int  (*argmax)(struct vl2_backend_ctx *ctx, struct vl2_tensor *out,
                   const struct vl2_tensor *x, struct vl2_err *err);
    /* 1 when @op (enum vl2_op) works with @dtype (enum vl2_dtype: the weight
     * dtype for WEIGHT, EMBED, LINEAR and MOE, the cache dtype for KV and the
     * attention ops; -1 for the ops that take no weights), 0 when it does
     * not.  The runtime asks before it builds a model, so a dtype or op a
     * backend lacks is refused with a clear error instead of failing inside
     * the forward pass.  Absent: the backend supports every op with F32,
     * F16 and BF16 weights and F32 caches (ABI 1 behaviour). */
    int  (*supports_op)(struct vl2_backend_ctx *ctx, int op, int dtype);
};

/* Size of the function table without the optional operations: the least
 * struct_size a backend of this ABI version may give. */
#define VL2_BACKEND_OPS_BASE_SIZE offsetof(struct vl2_backend_ops, argmax)

typedef const struct vl2_backend_ops *(*vl2_backend_entry_fn)(uint32_t abi_version,
                                                              struct vl2_err *err);

/* -- descriptor helpers (no backend call) ------------------------------ */

/* Fill the 2-D view fields of a contiguous tensor from ndim/ne. */
static inline void vl2_tensor_set_shape(struct vl2_tensor *t, int dtype, int ndim,
                                        const int64_t *ne)
{
    int i;
    t->dtype = dtype;
    t->ndim = ndim;
    t->rows = 1;
    for (i = 0; i < 4; i++)
        t->ne[i] = i < ndim ? ne[i] : 1;
    for (i = 0; i < ndim - 1; i++)
        t->rows *= ne[i];
    t->cols = ne[ndim - 1];
    t->ld = t->cols;
}

/* View of rows [r0, r0 + n) of t. */
static inline struct vl2_tensor vl2_tensor_rows(const struct vl2_tensor *t, int64_t r0, int64_t n)
{
    struct vl2_tensor v = *t;
    v.priv = NULL;
    v.data = (char *)t->data + (size_t)(r0 * t->ld) * vl2_dtype_size(t->dtype);
    v.ndim = 2;
    v.ne[0] = n; v.ne[1] = t->cols; v.ne[2] = v.ne[3] = 1;
    v.rows = n;
    return v;
}

/* View of columns [c0, c0 + n) of every row of t. */
static inline struct vl2_tensor vl2_tensor_cols(const struct vl2_tensor *t, int64_t c0, int64_t n)
{
    struct vl2_tensor v = *t;
    v.priv = NULL;
    v.data = (char *)t->data + (size_t)c0 * vl2_dtype_size(t->dtype);
    v.ndim = 2;
    v.ne[0] = t->rows; v.ne[1] = n; v.ne[2] = v.ne[3] = 1;
    v.cols = n;
    return v;
}

#endif /* VL2_BACKEND_H */

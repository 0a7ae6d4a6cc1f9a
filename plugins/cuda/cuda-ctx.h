/* cuda-ctx.h - host side of vl2-backend-cuda.so shared by its .cu files: the
 * context, the op records that the graph tape holds, and the functions each
 * concern offers the others.  Nothing here is part of the ABI.
 *
 * Files (one concern each):
 *   backend.cu    the entry point, the function table, supports_op, and
 *                 exec_op (a record to its family's executor)
 *   ctx.cu        context lifetime (open, close, describe) and the ABI's
 *                 memory, KV cache and batch calls
 *   options.cu    the option parser (options listed in cuda-options.h)
 *   mem.cu        device memory, the scratch and staging buffers, carving
 *   graph.cu      the tape: submission, record, capture, replay, fallback
 *   prof.cu       the profiler (option profile=1)
 *   op-basic.cu   embed, norms, add, argmax, activations, copy_rows, vision
 *                 layout ops, rope: validation, record and execution
 *   op-linear.cu  linear (gemv / tensor-core kernel / cuBLAS)
 *   op-attn.cu    attn_full, attn_mha, attn_mla and their scratch plans
 *   op-moe.cu     moe: expert tables, routing, grouped products
 *   k-*.cu        the kernels (cuda-impl.h)
 *
 * Op records.  Each op is validated on the host (bad input gets an error,
 * never a launch), then described by a struct op_rec holding everything its
 * launches depend on: a typed struct per op family inside a union, the whole
 * record zero-filled first (rec_init) so that two records of the same call
 * compare equal with memcmp, which is how a replayed step is checked against
 * its tape.  Integer fields are int64_t as the launch arithmetic uses them;
 * explicit pad_ fields leave no compiler padding inside. */
#ifndef VL2_CUDA_CTX_H
#define VL2_CUDA_CTX_H

#include <stdint.h>
#include <string.h>

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "cuda-impl.h"
#include "cuda-options.h"
#include "vl2-backend.h"
#include "vl2-status.h"

#define GEMV_MAX_ROWS 8         /* products with at most this many rows use k-gemv */
#define MMA_MAX_ROWS 64         /* up to this many rows: own tensor-core kernel (BF16) */
#define READ_PIN_MIN (32u << 10) /* reads from this size go through pinned memory */
#define GRAPH_MAX_ROWS 64       /* steps with at most this many rows are captured */
#define MLA_BLAS_ROWS 32        /* eager MLA attention of sequences with this many rows:
                                   cuBLAS products around a causal softmax */
#define MLA_SCORES_MAX (128u << 20)   /* bytes of scores per cuBLAS pass */
#define MAX_GRAPHS 8
#define MAX_TOPK 16
#define MAX_EXPERTS 1024
#define SCRATCH_ALIGN 256
#define BLAS_WS_SIZE (32u << 20)
#define ATTN_FULL_SCRATCH (512u << 20)
#define PROF_MAX 8192

#define MIB(x) ((double)(x) / 1048576.0)

/* ---- records ------------------------------------------------------------------- */

enum op_kind {
    OPK_EMBED = 1,
    OPK_LINEAR,
    OPK_RMSNORM,
    OPK_LAYERNORM,
    OPK_ADD,
    OPK_GELU,
    OPK_SWIGLU,
    OPK_COPY_ROWS,
    OPK_PATCHIFY,
    OPK_UNFOLD,
    OPK_ATTN_FULL,
    OPK_ROPE,
    OPK_ATTN_MHA,
    OPK_ATTN_MLA,
    OPK_MOE,
    OPK_ARGMAX,
    OPK_COUNT
};

/* Names of the op kinds (profile lines, option skip=); [0] is "?". */
extern const char *const vl2__cu_op_names[OPK_COUNT];

/* Steps inside ops, timed separately in profile mode. */
enum sub_kind {
    SUB_MOE_ROUTE = 0,   /* logits + selection + bucketing */
    SUB_MOE_GATEUP,
    SUB_MOE_DOWN,
    SUB_MOE_COMBINE,
    SUB_ATTN_QUERIES,    /* MLA: absorbed queries */
    SUB_ATTN_MAIN,
    SUB_ATTN_COMBINE,
    SUB_ATTN_OUT,        /* MLA: value up-projection */
    SUB_COUNT
};

/* A tensor as an op sees it (no ownership). */
struct tdesc {
    void    *data;
    int32_t  dtype;
    int32_t  pad_;
    int64_t  rows;
    int64_t  cols;
    int64_t  ld;
};

/* How a linear record runs. */
enum lin_path {
    LIN_GEMV = 0,   /* at most GEMV_MAX_ROWS rows: k-gemv.cu */
    LIN_BLAS = 1,   /* cuBLAS (x converted to the weight dtype) */
    LIN_MMA = 2,    /* BF16 weights, at most MMA_MAX_ROWS rows: tensor-core kernel */
};

/* How the attention core of an attn_mla record runs (see mla_choose_path). */
enum mla_path {
    MLA_PATH_TILES = 0,   /* tile kernel of k-attn.cu */
    MLA_PATH_DECODE,      /* latent-tile decode kernel of k-mla.cu */
    MLA_PATH_BLAS,        /* cuBLAS around a causal softmax (eager prefill) */
};

/* How a moe record routes. */
enum moe_route {
    MOE_ROUTE_SORTED = 0, /* logits, route kernel, bucketing into expert groups */
    MOE_ROUTE_SLOTS,      /* logits, then one block per token writes slot groups */
    MOE_ROUTE_FUSED,      /* logits and slot groups in one launch */
};

/* How a moe record multiplies the experts. */
enum moe_experts {
    MOE_EXPERTS_GEMV = 0, /* k-gemv.cu grouped products, F32 activations */
    MOE_EXPERTS_MMA,      /* tensor-core grouped products, BF16 activations */
};

struct moe_tab;

struct rec_embed {
    struct tdesc out, table;
    int64_t      n;          /* ids staged */
};

struct rec_linear {
    struct tdesc out, x, w, bias;
    int64_t      path;       /* enum lin_path */
    int64_t      nt;         /* LIN_GEMV: rows per pass (1, 2, 4, 8) */
    int64_t      vec;        /* LIN_GEMV: 16-byte loads allowed */
};

struct rec_norm {            /* rmsnorm (no b), layernorm */
    struct tdesc out, x, w, b;
    float        eps;
    float        pad_;
};

struct rec_binary {          /* add (out, a, b), swiglu (out, gate, up), argmax (out, x) */
    struct tdesc out, a, b;
};

struct rec_gelu {
    struct tdesc x;
    int64_t      kind;       /* 0 tanh, 1 erf */
};

struct rec_copy_rows {
    struct tdesc dst, src;
    int64_t      n;          /* pairs staged: n dst rows then n src rows */
};

struct rec_patchify {
    struct tdesc out, img;
    int64_t      image_size, patch, n_img;
};

struct rec_unfold {
    struct tdesc out, feat;
    int64_t      grid, n_img;
};

struct rec_attn_full {
    struct tdesc out, qkv;
    int64_t      seq_len, n_head, head_dim, n_seq;
    float        scale;
    float        pad_;
};

struct rec_rope {
    struct tdesc x;
    int64_t      n_head, head_stride, rot_off, rot_dim, layout;
    float        theta;
    float        pad_;
};

struct rec_attn_mha {
    struct tdesc out, q, k, v;
    int64_t      layer, n_head, n_kv, head_dim, kv_dtype, n_seqs, n_rows;
    int64_t      qt_per_kvh, n_split;     /* attn_geometry */
    float        scale;
    float        pad_;
};

struct rec_attn_mla {
    struct tdesc out, q, c, k_pe, kv_b;
    int64_t      layer, n_head, nope, rope, kv_dtype, R, n_seqs, n_rows, v_dim;
    int64_t      qt_per_kvh, n_split;     /* attn_geometry, or the decode kernel's runs */
    int64_t      blas;       /* queries absorbed and values projected by cuBLAS */
    int64_t      out_nt;     /* !blas: rows per pass of the output product */
    int64_t      out_vec;    /* !blas: 16-byte loads in the output product */
    int64_t      path;       /* enum mla_path */
    int64_t      q_block;    /* DECODE: queries per block; BLAS: query rows per pass */
    int64_t      sc_floats;  /* BLAS: score floats of a pass */
    int64_t      nq_max;     /* DECODE: most queries of a sequence */
    int64_t      n_small;    /* BLAS: sequences left to the tile kernel */
    int64_t      blas_rows;  /* BLAS: rows from which a sequence goes through cuBLAS */
    float        scale;
    float        pad_;
};

struct rec_moe {
    struct tdesc          out, x, router, bias, sh_gate, sh_up, sh_down;
    const struct moe_tab *tab;
    int64_t               n, E, k, scoring, method, n_group, topk_group, norm, I, d;
    int64_t               n_parts, part;   /* shared experts: parts of `part` rows */
    int64_t               experts;  /* enum moe_experts */
    int64_t               nt;       /* rows per pass of the products (1, 2, 4, 8) */
    int64_t               vec;      /* 16-byte loads in the expert products */
    int64_t               rvec;     /* 16-byte loads of x and the router rows */
    int64_t               route;    /* enum moe_route */
    float                 scale;    /* routed_scale */
    float                 pad_;
};

/* Everything one op's launches depend on.  Zero-filled before use (rec_init),
 * so two records of the same call compare equal with memcmp. */
struct op_rec {
    int32_t kind;            /* enum op_kind: which member of u */
    int32_t pad_;
    int64_t stage_off;       /* staged host array: offset in the staging buffer */
    int64_t stage_size;
    union {
        struct rec_embed      embed;
        struct rec_linear     linear;
        struct rec_norm       norm;
        struct rec_binary     bin;
        struct rec_gelu       gelu;
        struct rec_copy_rows  copy_rows;
        struct rec_patchify   patchify;
        struct rec_unfold     unfold;
        struct rec_attn_full  attn_full;
        struct rec_rope       rope;
        struct rec_attn_mha   mha;
        struct rec_attn_mla   mla;
        struct rec_moe        moe;
    } u;
};

/* Device pointer tables of one MoE layer's experts (owned by the context). */
struct moe_tab {
    const void *const *key_gate;  /* the runtime's arrays (identity of the layer) */
    const void *const *key_up;
    const void *const *key_down;
    int32_t            E;
    int32_t            dtype;
    int32_t            I, d;
    int64_t            ld_gu, ld_dn;
    int32_t            vec_ok;    /* 16-byte loads allowed */
    int32_t            mma_ok;    /* tensor-core path allowed (BF16, aligned) */
    void             **host;      /* [3E] device addresses, for checking */
    void             **dev;       /* device [3E]: gate | up | down */
};

/* A KV cache (kv_new); the device memory is the context's. */
struct vl2_kv {
    struct vl2_kv_shape shape;
    char               *dev;
    size_t              bytes;
};

/* Host bookkeeping of an allocated tensor (vl2_tensor.priv). */
struct alloc_rec {
    size_t size;
};

enum { MODE_EAGER = 0, MODE_RECORD, MODE_REPLAY };

/* A captured step, keyed by the batch shape (owned by the context). */
struct graph_ent {
    int                 used;
    int32_t             n_rows;
    int32_t             n_seqs;
    int32_t            *seq_rows;   /* [n_seqs] */
    struct vl2_kv_shape kvs;        /* capacity zeroed */
    int                 seen;
    int                 fails;
    uint64_t            last_use;
    cudaGraphExec_t     exec;
    struct op_rec      *tape;
    int                 tape_len;
    int                 tape_cap;
};

/* One backend context: one device, one stream.  Used by one thread at a time
 * (the ABI's rule); everything below is owned by it. */
struct vl2_backend_ctx {
    int                   device;
    cudaDeviceProp        prop;
    cudaStream_t          st;       /* the stream (cuBLAS and copies use it too) */
    struct vl2__cu_stream ks;       /* st plus the launch settings, for the kernels */
    cublasHandle_t        blas;
    void                 *blas_ws;
    char                  desc[320];
    char                  desc_full[2048];
    uint64_t              n_captured;    /* graphs instantiated */
    uint64_t              n_replayed;    /* steps run by replaying a graph */
    uint64_t              n_fallback;    /* steps that left a graph and ran eagerly */
    struct vl2__cu_opts   opt;           /* options (cuda-options.h) */

    /* option profile=1: device time per op kind (graphs off) */
    cudaEvent_t     *prof_ev;       /* [2 * PROF_MAX] */
    int32_t         *prof_kind;     /* [PROF_MAX] kind of each pending pair */
    int              prof_n;        /* pending pairs */
    double           prof_ms[OPK_COUNT];
    uint64_t         prof_calls[OPK_COUNT];
    cudaEvent_t     *sub_ev;        /* [PROF_MAX] marks after steps inside ops */
    int32_t         *sub_kind;      /* [PROF_MAX] */
    int32_t         *sub_prev;      /* [PROF_MAX] mark before it (-1: the op's start event) */
    int32_t         *sub_op;        /* [PROF_MAX] pending op pair the mark belongs to */
    int              sub_n;
    int              sub_last;      /* last mark of the running op, -1 at its start */
    double           sub_ms[SUB_COUNT];
    uint64_t         sub_calls[SUB_COUNT];

    size_t           mem_used;
    size_t           mem_budget;
    unsigned int    *ticket_d;      /* device counter of router_route_kernel, at 0 */
    int              max_smem;
    void            *rd_pin;        /* pinned bounce buffer for large reads */
    size_t           rd_pin_size;

    char            *scratch;       /* device scratch shared by ops (stream-ordered) */
    size_t           scratch_size;

    char            *stage_h;       /* host copy of the step's staged host arrays */
    char            *stage_d;       /* device staging buffer */
    size_t           stage_cap;
    size_t           stage_used;

    char            *meta_h;        /* host copy of the batch metadata */
    char            *meta_d;
    int32_t          meta_max_seqs;
    int32_t          meta_max_rows;
    size_t           meta_rows_off; /* byte offset of the row array */
    size_t           meta_alloc;    /* bytes of meta_d */
    size_t           meta_bytes;    /* bytes of the current batch */

    int              have_batch;
    int32_t          b_rows;
    int32_t          b_seqs;
    int32_t          b_max_seq_rows;
    struct vl2_kv_shape b_kv;       /* shape of the batch's caches (capacity: smallest) */

    int              mode;
    struct graph_ent graphs[MAX_GRAPHS];
    struct graph_ent *cur;
    int              rec_i;
    int              capturing;
    uint64_t         tick;

    struct moe_tab **tabs;
    int              n_tabs;
    int              cap_tabs;
};

/* skip= (test builds): new tensors and scratch are zeroed. */
#ifdef VL2_TEST_KNOBS
#define CU_SKIPPING(ctx) ((ctx)->opt.skip_ops || (ctx)->opt.skip_sub)
#else
#define CU_SKIPPING(ctx) 0
#endif

/* ---- helpers (inline) ---------------------------------------------------------- */

static inline int cu_fail(struct vl2_err *err, cudaError_t e, const char *what)
{
    return vl2_err_set(err, e == cudaErrorMemoryAllocation ? VL2_ENOMEM : VL2_EBACKEND,
                       "cuda: %s: %s", what, cudaGetErrorString(e));
}

static inline int blas_fail(struct vl2_err *err, cublasStatus_t s, const char *what)
{
    return vl2_err_set(err, s == CUBLAS_STATUS_ALLOC_FAILED ? VL2_ENOMEM : VL2_EBACKEND,
                       "cuda: %s: cuBLAS status %d", what, (int)s);
}

static inline int launched(cudaError_t e, const char *what, struct vl2_err *err)
{
    return e == cudaSuccess ? 0 : cu_fail(err, e, what);
}

static inline size_t align_up(size_t v, size_t a)
{
    return (v + a - 1) / a * a;
}

static inline struct tdesc td(const struct vl2_tensor *t)
{
    struct tdesc d;
    memset(&d, 0, sizeof(d));
    if (t) {
        d.data = t->data;
        d.dtype = t->dtype;
        d.rows = t->rows;
        d.cols = t->cols;
        d.ld = t->ld;
    }
    return d;
}

static inline int is_float_dtype(int dt)
{
    return dt == VL2_DTYPE_F32 || dt == VL2_DTYPE_BF16 || dt == VL2_DTYPE_F16;
}

static inline int aligned16(const void *p)
{
    return ((uintptr_t)p & 15u) == 0;
}

static inline cudaDataType_t cuda_type(int dt)
{
    switch (dt) {
    case VL2_DTYPE_BF16: return CUDA_R_16BF;
    case VL2_DTYPE_F16: return CUDA_R_16F;
    default: return CUDA_R_32F;
    }
}

static inline void rec_init(struct op_rec *r, int kind)
{
    memset(r, 0, sizeof(*r));
    r->kind = kind;
}

/* Rows per pass of the single-row product kernels for @n rows. */
static inline int64_t gemv_nt(int64_t n)
{
    return n <= 1 ? 1 : n <= 2 ? 2 : n <= 4 ? 4 : 8;
}

static inline const struct vl2__cu_seq *meta_seqs(struct vl2_backend_ctx *ctx)
{
    return (const struct vl2__cu_seq *)ctx->meta_d;
}

static inline const struct vl2__cu_row *meta_rows(struct vl2_backend_ctx *ctx)
{
    return (const struct vl2__cu_row *)(ctx->meta_d + ctx->meta_rows_off);
}

static inline int same_kv_layout(const struct vl2_kv_shape *a, const struct vl2_kv_shape *b)
{
    return a->kind == b->kind && a->n_layer == b->n_layer && a->n_kv_head == b->n_kv_head &&
           a->head_dim == b->head_dim && a->kv_lora_rank == b->kv_lora_rank &&
           a->rope_dim == b->rope_dim && a->dtype == b->dtype;
}

/* Carves aligned pieces off the scratch buffer (base NULL: just measures). */
struct carver {
    char   *base;
    size_t  off;
};

static inline void *take(struct carver *c, size_t bytes)
{
    void *p = c->base ? c->base + c->off : NULL;
    c->off = align_up(c->off + bytes, SCRATCH_ALIGN);
    return p;
}

/* ---- across files -------------------------------------------------------------- */

/* backend.cu */
const char *vl2__cu_dtype_name(int dt);
/* A tensor argument: present, with data, a float dtype (F32 only when
 * @f32_only), a sane 2-D shape. */
int vl2__cu_check_t(const struct vl2_tensor *t, const char *op, const char *name, int f32_only,
                    struct vl2_err *err);
/* Launch the work of record @r. */
int vl2__cu_exec_op(struct vl2_backend_ctx *ctx, const struct op_rec *r, struct vl2_err *err);
/* Scratch bytes record @r needs. */
size_t vl2__cu_scratch_need(const struct op_rec *r);
/* The current batch must exist and have x->rows rows. */
int vl2__cu_need_batch(struct vl2_backend_ctx *ctx, const char *op, const struct vl2_tensor *x,
                       struct vl2_err *err);

/* mem.cu */
int vl2__cu_dev_alloc(struct vl2_backend_ctx *ctx, void **ret, size_t size, const char *what,
                      struct vl2_err *err);
void vl2__cu_dev_free(struct vl2_backend_ctx *ctx, void *p, size_t size);
int vl2__cu_ensure_scratch(struct vl2_backend_ctx *ctx, size_t need, struct vl2_err *err);
int vl2__cu_ensure_stage(struct vl2_backend_ctx *ctx, size_t need, struct vl2_err *err);

/* graph.cu */
void vl2__cu_graph_free(struct graph_ent *g);
void vl2__cu_graphs_drop_all(struct vl2_backend_ctx *ctx);
int vl2__cu_graph_fallback(struct vl2_backend_ctx *ctx, struct vl2_err *err);
int vl2__cu_end_step(struct vl2_backend_ctx *ctx, struct vl2_err *err);
/* Start replaying or recording the step of batch @b (caches of shape @kvs)
 * when graphs are on: returns 1 when the step is taken by the tape (the
 * metadata goes up with it), 0 when it runs eagerly. */
int vl2__cu_graph_begin(struct vl2_backend_ctx *ctx, const struct vl2_batch *b,
                        const struct vl2_kv_shape *kvs);
/* Queue record @r (host array @host of @hsize bytes staged for it). */
int vl2__cu_submit(struct vl2_backend_ctx *ctx, struct op_rec *r, const void *host,
                   size_t hsize, struct vl2_err *err);

/* prof.cu */
int vl2__cu_prof_init(struct vl2_backend_ctx *ctx);
void vl2__cu_prof_free(struct vl2_backend_ctx *ctx);
void vl2__cu_prof_drain(struct vl2_backend_ctx *ctx);
/* In profile mode: the step @kind of the running op ends here. */
void vl2__cu_prof_sub(struct vl2_backend_ctx *ctx, int kind);
int vl2__cu_exec_profiled(struct vl2_backend_ctx *ctx, const struct op_rec *r,
                          struct vl2_err *err);
/* Append the profile totals to @buf (at @n of @cap bytes); returns the new n. */
int vl2__cu_prof_describe(struct vl2_backend_ctx *ctx, char *buf, int n, size_t cap);

/* op-*.cu: executors and scratch plans of each family */
int vl2__cu_exec_basic(struct vl2_backend_ctx *ctx, const struct op_rec *r, struct vl2_err *err);
int vl2__cu_exec_linear(struct vl2_backend_ctx *ctx, const struct op_rec *r,
                        struct vl2_err *err);
size_t vl2__cu_plan_linear(const struct op_rec *r);
int vl2__cu_exec_attn(struct vl2_backend_ctx *ctx, const struct op_rec *r, struct vl2_err *err);
size_t vl2__cu_plan_attn(const struct op_rec *r);
int vl2__cu_exec_moe(struct vl2_backend_ctx *ctx, const struct op_rec *r, struct vl2_err *err);
size_t vl2__cu_plan_moe(const struct op_rec *r);

/* The ops of the table (validation and record), by file. */
int vl2__cu_op_embed(struct vl2_backend_ctx *ctx, struct vl2_tensor *out,
                  const struct vl2_tensor *table, const int32_t *ids, struct vl2_err *err);
int vl2__cu_op_rmsnorm(struct vl2_backend_ctx *ctx, struct vl2_tensor *out,
                    const struct vl2_tensor *x, const struct vl2_tensor *w, float eps,
                    struct vl2_err *err);
int vl2__cu_op_layernorm(struct vl2_backend_ctx *ctx, struct vl2_tensor *out,
                      const struct vl2_tensor *x, const struct vl2_tensor *w,
                      const struct vl2_tensor *b, float eps, struct vl2_err *err);
int vl2__cu_op_add(struct vl2_backend_ctx *ctx, struct vl2_tensor *out, const struct vl2_tensor *a,
                const struct vl2_tensor *b, struct vl2_err *err);
int vl2__cu_op_argmax(struct vl2_backend_ctx *ctx, struct vl2_tensor *out,
                   const struct vl2_tensor *x, struct vl2_err *err);
int vl2__cu_op_gelu_tanh(struct vl2_backend_ctx *ctx, struct vl2_tensor *x, struct vl2_err *err);
int vl2__cu_op_gelu_erf(struct vl2_backend_ctx *ctx, struct vl2_tensor *x, struct vl2_err *err);
int vl2__cu_op_swiglu(struct vl2_backend_ctx *ctx, struct vl2_tensor *out,
                   const struct vl2_tensor *gate, const struct vl2_tensor *up,
                   struct vl2_err *err);
int vl2__cu_op_copy_rows(struct vl2_backend_ctx *ctx, struct vl2_tensor *dst,
                      const int32_t *dst_rows, const struct vl2_tensor *src,
                      const int32_t *src_rows, int32_t n, struct vl2_err *err);
int vl2__cu_op_patchify(struct vl2_backend_ctx *ctx, struct vl2_tensor *out,
                     const struct vl2_tensor *img, int32_t image_size, int32_t patch,
                     struct vl2_err *err);
int vl2__cu_op_unfold2x2(struct vl2_backend_ctx *ctx, struct vl2_tensor *out,
                      const struct vl2_tensor *feat, int32_t grid, struct vl2_err *err);
int vl2__cu_op_rope(struct vl2_backend_ctx *ctx, struct vl2_tensor *x, int32_t n_head,
                 int32_t head_stride, int32_t rot_off, int32_t rot_dim, float theta,
                 int32_t layout, struct vl2_err *err);
int vl2__cu_op_linear(struct vl2_backend_ctx *ctx, struct vl2_tensor *out,
                   const struct vl2_tensor *x, const struct vl2_tensor *w,
                   const struct vl2_tensor *bias, struct vl2_err *err);
int vl2__cu_op_attn_full(struct vl2_backend_ctx *ctx, struct vl2_tensor *out,
                         const struct vl2_tensor *qkv, int32_t seq_len, int32_t n_head,
                         int32_t head_dim, float scale, struct vl2_err *err);
int vl2__cu_op_attn_mha(struct vl2_backend_ctx *ctx, int32_t layer, struct vl2_tensor *out,
                     const struct vl2_tensor *q, const struct vl2_tensor *k,
                     const struct vl2_tensor *v, int32_t n_head, int32_t n_kv_head,
                     int32_t head_dim, float scale, struct vl2_err *err);
int vl2__cu_op_attn_mla(struct vl2_backend_ctx *ctx, int32_t layer, struct vl2_tensor *out,
                     const struct vl2_tensor *q, const struct vl2_tensor *c,
                     const struct vl2_tensor *k_pe, const struct vl2_tensor *kv_b,
                     int32_t n_head, int32_t nope_dim, int32_t rope_dim, int32_t v_dim,
                     float scale, struct vl2_err *err);
int vl2__cu_op_moe(struct vl2_backend_ctx *ctx, struct vl2_tensor *out, const struct vl2_tensor *x,
                const struct vl2_moe_layer *l, struct vl2_err *err);
/* Free the expert tables of the context (close). */
void vl2__cu_moe_tabs_free(struct vl2_backend_ctx *ctx);

/* ctx.cu: the lifetime and the ABI's memory, KV and batch calls */
int vl2__cu_open(const struct vl2_backend_params *p, struct vl2_backend_ctx **ret_ctx,
                 struct vl2_err *err);
void vl2__cu_close(struct vl2_backend_ctx *ctx);
const char *vl2__cu_describe(struct vl2_backend_ctx *ctx);
size_t vl2__cu_mem_used(struct vl2_backend_ctx *ctx);
int vl2__cu_alloc(struct vl2_backend_ctx *ctx, struct vl2_tensor *t, int dtype, int ndim,
                  const int64_t *ne, struct vl2_err *err);
int vl2__cu_weight(struct vl2_backend_ctx *ctx, struct vl2_tensor *t, int dtype, int ndim,
                   const int64_t *ne, const void *host, struct vl2_err *err);
void vl2__cu_free_tensor(struct vl2_backend_ctx *ctx, struct vl2_tensor *t);
int vl2__cu_write(struct vl2_backend_ctx *ctx, struct vl2_tensor *t, size_t offset,
                  const void *src, size_t size, struct vl2_err *err);
int vl2__cu_read(struct vl2_backend_ctx *ctx, const struct vl2_tensor *t, size_t offset,
                 void *dst, size_t size, struct vl2_err *err);
int vl2__cu_sync(struct vl2_backend_ctx *ctx, struct vl2_err *err);
int vl2__cu_kv_new(struct vl2_backend_ctx *ctx, const struct vl2_kv_shape *shape,
                   struct vl2_kv **ret_kv, struct vl2_err *err);
void vl2__cu_kv_free(struct vl2_backend_ctx *ctx, struct vl2_kv *kv);
size_t vl2__cu_kv_token_bytes(const struct vl2_kv_shape *s);
int vl2__cu_begin_batch(struct vl2_backend_ctx *ctx, const struct vl2_batch *b,
                        struct vl2_err *err);

#endif /* VL2_CUDA_CTX_H */

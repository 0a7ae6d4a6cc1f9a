/* backend.cu - vl2-backend-cuda.so: the backend ABI (plugins/vl2-backend.h)
 * on NVIDIA GPUs.
 *
 * Tensors live in device memory: weights are copied once at weight() in
 * their checkpoint dtype (BF16 stays BF16), activations are F32.  Large
 * products go through cuBLAS (BF16 or F16 inputs, F32 accumulation; F32
 * weights in plain F32); decode-sized products (at most GEMV_MAX_ROWS rows)
 * through the bandwidth-bound kernels of k-gemv.cu with F32 activations.
 * Every op is queued on one stream.
 *
 * Op records and graphs.  Each op is validated on the host (bad input gets
 * an error, never a launch), then described by a struct op_rec holding
 * everything its launches depend on; exec_op() turns a record into launches.
 * Host arrays an op takes (token ids, row indices) are staged into a fixed
 * device buffer.  begin_batch() marks a decode step: for a batch shape seen
 * before, the step's records are captured into a CUDA graph (second time)
 * and replayed from then on (the records of a replayed step are only
 * compared with the recorded tape; its staged host arrays and the batch
 * metadata are uploaded before the launch).  Anything that departs from the
 * tape, and any other call (read, sync, write, alloc, ...), ends the step:
 * a complete step launches its graph, a partial one runs its records
 * eagerly.  So a graph never runs anything an eager step would not.
 *
 * Attention.  MHA, and MLA sequences of a few rows, go through the tile
 * kernel of k-attn.cu; MLA steps whose sequences all have few rows (decode)
 * through the latent-tile kernel of k-mla.cu; in eager steps with an F32
 * cache, MLA sequences of MLA_BLAS_ROWS rows or more (prefill) through two
 * cuBLAS products around a causal softmax (mla_blas_core).  The choice is made
 * when the op is recorded (mla_choose_path) and kept in the record. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "cuda-impl.h"
#include "cuda-launch.cuh"
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

#define MIB(x) ((double)(x) / 1048576.0)

/* Dependent launches (cuda-launch.cuh): a process-wide capability of the
 * device, like a CPU feature table; set by the first open. */
int vl2__cu_pdl;

/* ---- records -------------------------------------------------------------- */

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

static const char *const op_names[OPK_COUNT] = {
    "?", "embed", "linear", "rmsnorm", "layernorm", "add", "gelu", "swiglu", "copy_rows",
    "patchify", "unfold2x2", "attn_full", "rope", "attn_mha", "attn_mla", "moe", "argmax",
};

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

static const char *const sub_names[SUB_COUNT] = {
    "moe.route", "moe.gate_up", "moe.down", "moe.combine", "attn.queries", "attn.main",
    "attn.combine", "attn.out",
};

#define PROF_MAX 8192

/* A tensor as an op sees it (no ownership). */
struct tdesc {
    void    *data;
    int32_t  dtype;
    int32_t  pad_;
    int64_t  rows;
    int64_t  cols;
    int64_t  ld;
};

struct moe_tab;

/* Everything one op's launches depend on.  Zero-filled before use, so two
 * records of the same call compare equal with memcmp. */
struct op_rec {
    int32_t                kind;
    int32_t                pad_;
    struct tdesc           t[8];
    int64_t                i[20];
    float                  f[4];
    const struct moe_tab  *tab;
    int64_t                stage_off;
    int64_t                stage_size;
};

/* Device pointer tables of one MoE layer's experts. */
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

struct vl2_kv {
    struct vl2_kv_shape shape;
    char               *dev;
    size_t              bytes;
};

struct alloc_rec {
    size_t size;
};

enum { MODE_EAGER = 0, MODE_RECORD, MODE_REPLAY };

/* A captured step, keyed by the batch shape. */
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

struct vl2_backend_ctx {
    int              device;
    cudaDeviceProp   prop;
    cudaStream_t     st;
    cublasHandle_t   blas;
    void            *blas_ws;
    char             desc[320];
    char             desc_full[2048];
    uint64_t         n_captured;    /* graphs instantiated */
    uint64_t         n_replayed;    /* steps run by replaying a graph */
    uint64_t         n_fallback;    /* steps that left a graph and ran eagerly */

    /* option profile=1: device time per op kind (graphs off) */
    int              profile;
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
    int              graphs_on;
    int              mma_linear;    /* option mma_linear: own kernel for mid-size products */
    int              fuse_route;    /* option fuse_route: one block routes small batches */
    int              fuse_router;   /* option fuse_router: and computes their logits too */
    unsigned int    *ticket_d;      /* device counter of router_route_kernel, at 0 */
    int              pdl;           /* option pdl: programmatic dependent launches */
    int              mla_decode;    /* option mla_decode: k-mla.cu decode kernel */
    int              mla_blas_min;  /* option mla_blas_rows: rows of a sequence from which
                                       eager MLA attention runs through cuBLAS (0: never) */
    int              mla_chunk;     /* option mla_chunk: most query rows per cuBLAS pass */
    int              mla_split;     /* option mla_split: most runs of keys per sequence */
    int              mla_qgroup;    /* option mla_qgroup: queries per decode block (0: auto) */
    int              moe_prefetch;  /* option moe_prefetch: shared experts into L2 early */
    int              gemv_r1;       /* option gemv_r1: weight rows per warp, single rows */
    int              prefer_shared; /* option prefer_shared: the device's L1 / shared split
                                       set once for the largest shared memory */
    unsigned         skip_ops;      /* option skip=KIND+KIND: ops not run (measurements of
                                       what each kind costs; the results are wrong) */
    unsigned         skip_sub;      /* the same for steps of attn_mla: mla_queries (1),
                                       mla_core (2), mla_out (4) */
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

/* ---- helpers ----------------------------------------------------------------- */

static int cu_fail(struct vl2_err *err, cudaError_t e, const char *what)
{
    return vl2_err_set(err, e == cudaErrorMemoryAllocation ? VL2_ENOMEM : VL2_EBACKEND,
                       "cuda: %s: %s", what, cudaGetErrorString(e));
}

static int blas_fail(struct vl2_err *err, cublasStatus_t s, const char *what)
{
    return vl2_err_set(err, s == CUBLAS_STATUS_ALLOC_FAILED ? VL2_ENOMEM : VL2_EBACKEND,
                       "cuda: %s: cuBLAS status %d", what, (int)s);
}

static size_t align_up(size_t v, size_t a)
{
    return (v + a - 1) / a * a;
}

static struct tdesc td(const struct vl2_tensor *t)
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

static int is_float_dtype(int dt)
{
    return dt == VL2_DTYPE_F32 || dt == VL2_DTYPE_BF16 || dt == VL2_DTYPE_F16;
}

static const char *dtype_name(int dt)
{
    switch (dt) {
    case VL2_DTYPE_F32: return "F32";
    case VL2_DTYPE_F16: return "F16";
    case VL2_DTYPE_BF16: return "BF16";
    case VL2_DTYPE_I32: return "I32";
    case VL2_DTYPE_Q8: return "Q8";
    case VL2_DTYPE_Q4: return "Q4";
    }
    return "unknown";
}

/* A tensor argument: present, with data, a float dtype, sane 2-D shape. */
static int check_t(const struct vl2_tensor *t, const char *op, const char *name, int f32_only,
                   struct vl2_err *err)
{
    if (!t || !t->data)
        return vl2_err_set(err, VL2_EINVAL, "cuda: %s: tensor '%s' is missing", op, name);
    if (f32_only ? t->dtype != VL2_DTYPE_F32 : !is_float_dtype(t->dtype))
        return vl2_err_set(err, f32_only ? VL2_EINVAL : VL2_EUNSUPPORTED,
                           "cuda: %s: tensor '%s' has dtype %s, expected %s", op, name,
                           dtype_name(t->dtype), f32_only ? "F32" : "F32, F16 or BF16");
    if (t->rows < 0 || t->cols <= 0 || t->ld < t->cols || t->rows > INT32_MAX ||
        t->cols > INT32_MAX)
        return vl2_err_set(err, VL2_EINVAL,
                           "cuda: %s: tensor '%s' has a bad shape (%lld x %lld, ld %lld)", op,
                           name, (long long)t->rows, (long long)t->cols, (long long)t->ld);
    return 0;
}

static int aligned16(const void *p)
{
    return ((uintptr_t)p & 15u) == 0;
}

/* ---- device memory ----------------------------------------------------------- */

static int dev_alloc(struct vl2_backend_ctx *ctx, void **ret, size_t size, const char *what,
                     struct vl2_err *err)
{
    void *p = NULL;
    cudaError_t e;

    if (size == 0)
        size = 1;
    if (ctx->mem_budget && ctx->mem_used + size > ctx->mem_budget)
        return vl2_err_set(err, VL2_ENOMEM,
                           "cuda: %s of %.1f MiB does not fit the memory budget of %.1f MiB "
                           "(%.1f MiB in use)",
                           what, MIB(size), MIB(ctx->mem_budget), MIB(ctx->mem_used));
    e = cudaMalloc(&p, size);
    if (e != cudaSuccess) {
        size_t fr = 0, tot = 0;
        (void)cudaGetLastError();
        (void)cudaMemGetInfo(&fr, &tot);
        return vl2_err_set(err, VL2_ENOMEM,
                           "cuda: %s of %.1f MiB does not fit on device %d '%s': %.1f MiB "
                           "free of %.1f MiB (%.1f MiB held by this backend)",
                           what, MIB(size), ctx->device, ctx->prop.name, MIB(fr), MIB(tot),
                           MIB(ctx->mem_used));
    }
    ctx->mem_used += size;
    *ret = p;
    return 0;
}

static void dev_free(struct vl2_backend_ctx *ctx, void *p, size_t size)
{
    if (!p)
        return;
    (void)cudaFree(p);
    ctx->mem_used -= size ? size : 1;
}

/* ---- graphs -------------------------------------------------------------------- */

static int exec_op(struct vl2_backend_ctx *ctx, const struct op_rec *r, struct vl2_err *err);

static void graph_drop(struct graph_ent *g)
{
    if (g->exec)
        (void)cudaGraphExecDestroy(g->exec);
    g->exec = NULL;
    g->tape_len = 0;
}

static void graph_free(struct graph_ent *g)
{
    graph_drop(g);
    free(g->tape);
    free(g->seq_rows);
    memset(g, 0, sizeof(*g));
}

/* Forget every captured graph (their buffers moved). */
static void graphs_drop_all(struct vl2_backend_ctx *ctx)
{
    int i;
    for (i = 0; i < MAX_GRAPHS; i++)
        if (ctx->graphs[i].used)
            graph_drop(&ctx->graphs[i]);
}

/* Upload the metadata and the staged host arrays of the current step. */
static int upload_step(struct vl2_backend_ctx *ctx, struct vl2_err *err)
{
    cudaError_t e = cudaSuccess;

    if (ctx->have_batch && ctx->meta_bytes)
        e = cudaMemcpyAsync(ctx->meta_d, ctx->meta_h, ctx->meta_bytes, cudaMemcpyHostToDevice,
                            ctx->st);
    if (e == cudaSuccess && ctx->stage_used)
        e = cudaMemcpyAsync(ctx->stage_d, ctx->stage_h, ctx->stage_used,
                            cudaMemcpyHostToDevice, ctx->st);
    return e == cudaSuccess ? 0 : cu_fail(err, e, "upload of step inputs");
}

/* Leave record/replay mode by running the step's records so far eagerly. */
static int graph_fallback(struct vl2_backend_ctx *ctx, struct vl2_err *err)
{
    struct graph_ent *g = ctx->cur;
    int n, j, r;

    if (ctx->mode == MODE_EAGER)
        return 0;
    if (ctx->capturing) {
        cudaGraph_t gr = NULL;
        (void)cudaStreamEndCapture(ctx->st, &gr);
        if (gr)
            (void)cudaGraphDestroy(gr);
        (void)cudaGetLastError();
        ctx->capturing = 0;
    }
    n = ctx->mode == MODE_RECORD ? g->tape_len : ctx->rec_i;
    ctx->mode = MODE_EAGER;
    g->fails++;
    ctx->n_fallback++;
    r = upload_step(ctx, err);
    for (j = 0; r >= 0 && j < n; j++)
        r = exec_op(ctx, &g->tape[j], err);
    graph_drop(g);
    ctx->cur = NULL;
    return r;
}

/* End the current step: launch its graph when complete, else run it eagerly. */
static int end_step(struct vl2_backend_ctx *ctx, struct vl2_err *err)
{
    struct graph_ent *g = ctx->cur;
    cudaError_t e;
    int r;

    if (ctx->mode == MODE_EAGER)
        return 0;
    if (ctx->mode == MODE_RECORD) {
        cudaGraph_t gr = NULL;
        cudaGraphExec_t ex = NULL;
        e = cudaStreamEndCapture(ctx->st, &gr);
        ctx->capturing = 0;
        if (e != cudaSuccess || !gr) {
            (void)cudaGetLastError();
            return graph_fallback(ctx, err);
        }
        e = cudaGraphInstantiate(&ex, gr, 0);
        (void)cudaGraphDestroy(gr);
        if (e != cudaSuccess) {
            (void)cudaGetLastError();
            return graph_fallback(ctx, err);
        }
        g->exec = ex;
        ctx->n_captured++;
    } else if (ctx->rec_i != g->tape_len) {
        return graph_fallback(ctx, err);
    } else {
        ctx->n_replayed++;
    }
    ctx->mode = MODE_EAGER;
    ctx->cur = NULL;
    r = upload_step(ctx, err);
    if (r < 0)
        return r;
    e = cudaGraphLaunch(g->exec, ctx->st);
    if (e != cudaSuccess)
        return cu_fail(err, e, "graph launch");
    return 0;
}

/* ---- scratch and staging ------------------------------------------------------- */

/* Make the scratch buffer at least @need bytes (only in eager mode). */
static int ensure_scratch(struct vl2_backend_ctx *ctx, size_t need, struct vl2_err *err)
{
    void *p;
    size_t sz;
    int r;

    if (need <= ctx->scratch_size)
        return 0;
    if ((r = graph_fallback(ctx, err)) < 0)
        return r;
    sz = align_up(need + need / 4, 1u << 20);
    (void)cudaStreamSynchronize(ctx->st);
    dev_free(ctx, ctx->scratch, ctx->scratch_size);
    ctx->scratch = NULL;
    ctx->scratch_size = 0;
    graphs_drop_all(ctx);
    r = dev_alloc(ctx, &p, sz, "scratch buffer", err);
    if (r < 0)
        return r;
    if (ctx->skip_ops || ctx->skip_sub)
        (void)cudaMemsetAsync(p, 0, sz, ctx->st);
    ctx->scratch = (char *)p;
    ctx->scratch_size = sz;
    return 0;
}

static int ensure_stage(struct vl2_backend_ctx *ctx, size_t need, struct vl2_err *err)
{
    void *p;
    char *h;
    size_t sz;
    int r;

    if (need <= ctx->stage_cap)
        return 0;
    if ((r = graph_fallback(ctx, err)) < 0)
        return r;
    sz = align_up(need * 2, 1u << 16);
    h = (char *)realloc(ctx->stage_h, sz);
    if (!h)
        return vl2_err_set(err, VL2_ENOMEM, "cuda: out of host memory");
    ctx->stage_h = h;
    (void)cudaStreamSynchronize(ctx->st);
    dev_free(ctx, ctx->stage_d, ctx->stage_cap);
    ctx->stage_d = NULL;
    ctx->stage_cap = 0;
    graphs_drop_all(ctx);
    r = dev_alloc(ctx, &p, sz, "staging buffer", err);
    if (r < 0)
        return r;
    ctx->stage_d = (char *)p;
    ctx->stage_cap = sz;
    return 0;
}

/* Carves aligned pieces off the scratch buffer (base NULL: just measures). */
struct carver {
    char   *base;
    size_t  off;
};

static void *take(struct carver *c, size_t bytes)
{
    void *p = c->base ? c->base + c->off : NULL;
    c->off = align_up(c->off + bytes, SCRATCH_ALIGN);
    return p;
}

/* ---- op plans: scratch layouts ----------------------------------------------------- */

struct moe_plan {
    int32_t              *idx, *pos, *slot_tok, *n_groups;
    float                *w, *logits;
    struct vl2__cu_group *g_up, *g_dn;
    void                 *h;
    float                *y;
    void                 *xb;
    int64_t               rows_total, ldh;
};

static size_t plan_moe(const struct op_rec *r, char *base, struct moe_plan *p)
{
    struct carver c = { base, 0 };
    const int64_t n = r->i[0], E = r->i[1], k = r->i[2], I = r->i[8], d = r->i[9];
    const int64_t np = r->i[10], part = r->i[11], mma = r->i[12];
    const int64_t ngr = np + E > n * k + np * n ? np + E : n * k + np * n;

    p->rows_total = n * k + np * n;
    p->ldh = I > part ? I : part;
    p->logits = (float *)take(&c, (size_t)(n * E) * 4);
    p->idx = (int32_t *)take(&c, (size_t)(n * k) * 4);
    p->w = (float *)take(&c, (size_t)(n * k) * 4);
    p->pos = (int32_t *)take(&c, (size_t)(n * k) * 4);
    p->slot_tok = (int32_t *)take(&c, (size_t)(n * k) * 4);
    p->n_groups = (int32_t *)take(&c, 4);
    p->g_up = (struct vl2__cu_group *)take(&c, (size_t)ngr * sizeof(struct vl2__cu_group));
    p->g_dn = (struct vl2__cu_group *)take(&c, (size_t)ngr * sizeof(struct vl2__cu_group));
    p->h = take(&c, (size_t)(p->rows_total * p->ldh) * (mma ? 2 : 4));
    p->y = (float *)take(&c, (size_t)(p->rows_total * d) * 4);
    p->xb = mma ? take(&c, (size_t)(n * d) * 2) : NULL;
    return c.off;
}

struct mla_plan {
    float *qcat, *olat, *part_o, *part_ml, *sc;
    void  *qb, *ob;
};

/* i[14] of an attn_mla record: how its attention core runs */
enum { MLA_PATH_TILES, MLA_PATH_DECODE, MLA_PATH_BLAS };

static size_t plan_mla(const struct op_rec *r, char *base, struct mla_plan *p)
{
    struct carver c = { base, 0 };
    const int64_t n = r->i[7], H = r->i[1], nope = r->i[2], rope = r->i[3], R = r->i[5];
    const int64_t split = r->i[10], blas = r->i[11];
    const size_t es = vl2_dtype_size((int)r->t[4].dtype);

    p->qcat = (float *)take(&c, (size_t)(n * H * (R + rope)) * 4);
    p->olat = (float *)take(&c, (size_t)(n * H * R) * 4);
    p->part_o = split > 1 ? (float *)take(&c, (size_t)(n * H * split * R) * 4) : NULL;
    p->part_ml = split > 1 ? (float *)take(&c, (size_t)(n * H * split * 2) * 4) : NULL;
    p->qb = blas ? take(&c, (size_t)(n * H * (nope + rope)) * es) : NULL;
    p->ob = blas ? take(&c, (size_t)(n * H * R) * es) : NULL;
    p->sc = r->i[14] == MLA_PATH_BLAS ? (float *)take(&c, (size_t)r->i[16] * 4) : NULL;
    return c.off;
}

static size_t plan_mha(const struct op_rec *r, char *base, float **part_o, float **part_ml)
{
    struct carver c = { base, 0 };
    const int64_t n = r->i[7], H = r->i[1], hd = r->i[3], split = r->i[10];

    *part_o = split > 1 ? (float *)take(&c, (size_t)(n * H * split * hd) * 4) : NULL;
    *part_ml = split > 1 ? (float *)take(&c, (size_t)(n * H * split * 2) * 4) : NULL;
    return c.off;
}

static size_t plan_linear(const struct op_rec *r)
{
    if (r->i[0] == 0 || r->t[2].dtype == VL2_DTYPE_F32)
        return 0;
    return align_up((size_t)(r->t[1].rows * r->t[1].cols) * 2, SCRATCH_ALIGN);
}

static size_t plan_attn_full(const struct op_rec *r)
{
    const int64_t S = r->i[0], H = r->i[1];
    return (size_t)(H * S * S) * 4;
}

static size_t scratch_need(const struct op_rec *r)
{
    struct moe_plan mp;
    struct mla_plan lp;
    float *a, *b;

    switch (r->kind) {
    case OPK_LINEAR: return plan_linear(r);
    case OPK_ATTN_FULL: return plan_attn_full(r);
    case OPK_ATTN_MHA: return plan_mha(r, NULL, &a, &b);
    case OPK_ATTN_MLA: return plan_mla(r, NULL, &lp);
    case OPK_MOE: return plan_moe(r, NULL, &mp);
    }
    return 0;
}

/* ---- profile ----------------------------------------------------------------------------- */

/* Add the pending event pairs to the totals (the stream must be idle). */
static void prof_drain(struct vl2_backend_ctx *ctx)
{
    int i;
    for (i = 0; i < ctx->sub_n; i++) {
        float ms = 0.0f;
        cudaEvent_t from = ctx->sub_prev[i] < 0 ? ctx->prof_ev[2 * ctx->sub_op[i]]
                                                : ctx->sub_ev[ctx->sub_prev[i]];
        if (cudaEventElapsedTime(&ms, from, ctx->sub_ev[i]) == cudaSuccess) {
            ctx->sub_ms[ctx->sub_kind[i]] += ms;
            ctx->sub_calls[ctx->sub_kind[i]]++;
        }
    }
    ctx->sub_n = 0;
    for (i = 0; i < ctx->prof_n; i++) {
        float ms = 0.0f;
        if (cudaEventElapsedTime(&ms, ctx->prof_ev[2 * i], ctx->prof_ev[2 * i + 1]) ==
            cudaSuccess) {
            ctx->prof_ms[ctx->prof_kind[i]] += ms;
            ctx->prof_calls[ctx->prof_kind[i]]++;
        }
    }
    (void)cudaGetLastError();
    ctx->prof_n = 0;
}

static int prof_init(struct vl2_backend_ctx *ctx)
{
    int i;
    ctx->prof_ev = (cudaEvent_t *)calloc(2 * PROF_MAX, sizeof(cudaEvent_t));
    ctx->prof_kind = (int32_t *)calloc(PROF_MAX, sizeof(int32_t));
    ctx->sub_ev = (cudaEvent_t *)calloc(PROF_MAX, sizeof(cudaEvent_t));
    ctx->sub_kind = (int32_t *)calloc(PROF_MAX, sizeof(int32_t));
    ctx->sub_prev = (int32_t *)calloc(PROF_MAX, sizeof(int32_t));
    ctx->sub_op = (int32_t *)calloc(PROF_MAX, sizeof(int32_t));
    if (!ctx->prof_ev || !ctx->prof_kind || !ctx->sub_ev || !ctx->sub_kind || !ctx->sub_prev ||
        !ctx->sub_op)
        return -1;
    for (i = 0; i < 2 * PROF_MAX; i++)
        if (cudaEventCreate(&ctx->prof_ev[i]) != cudaSuccess)
            return -1;
    for (i = 0; i < PROF_MAX; i++)
        if (cudaEventCreate(&ctx->sub_ev[i]) != cudaSuccess)
            return -1;
    return 0;
}

/* In profile mode: the step @kind of the running op ends here. */
static void prof_sub(struct vl2_backend_ctx *ctx, int kind)
{
    int i;
    if (!ctx->profile || ctx->prof_n == 0 || ctx->sub_n == PROF_MAX)
        return;
    i = ctx->sub_n++;
    ctx->sub_kind[i] = kind;
    ctx->sub_prev[i] = ctx->sub_last;
    ctx->sub_op[i] = ctx->prof_n - 1;
    ctx->sub_last = i;
    (void)cudaEventRecord(ctx->sub_ev[i], ctx->st);
}

static int exec_profiled(struct vl2_backend_ctx *ctx, const struct op_rec *r,
                         struct vl2_err *err)
{
    int i, rc;
    if (ctx->prof_n == PROF_MAX || ctx->sub_n > PROF_MAX - 16) {
        (void)cudaStreamSynchronize(ctx->st);
        prof_drain(ctx);
    }
    i = ctx->prof_n++;
    ctx->sub_last = -1;
    ctx->prof_kind[i] = r->kind;
    (void)cudaEventRecord(ctx->prof_ev[2 * i], ctx->st);
    rc = exec_op(ctx, r, err);
    (void)cudaEventRecord(ctx->prof_ev[2 * i + 1], ctx->st);
    return rc;
}

/* ---- submission ------------------------------------------------------------------------ */

/* Queue op @r (host array @host of @hsize bytes staged for it). */
static int submit(struct vl2_backend_ctx *ctx, struct op_rec *r, const void *host, size_t hsize,
                  struct vl2_err *err)
{
    struct graph_ent *g = ctx->cur;
    size_t off;
    int rc;

    if (ctx->mode == MODE_REPLAY) {
        /* the hot path of a replayed step: compare with the tape, stage the inputs */
        off = align_up(ctx->stage_used, 16);
        r->stage_off = (int64_t)off;
        r->stage_size = (int64_t)hsize;
        if (off + hsize <= ctx->stage_cap && ctx->rec_i < g->tape_len &&
            !memcmp(r, &g->tape[ctx->rec_i], sizeof(*r))) {
            if (hsize)
                memcpy(ctx->stage_h + off, host, hsize);
            ctx->stage_used = off + hsize;
            ctx->rec_i++;
            return 0;
        }
        if ((rc = graph_fallback(ctx, err)) < 0)
            return rc;
    }
    (void)cudaSetDevice(ctx->device);
    rc = ensure_scratch(ctx, scratch_need(r), err);
    if (rc < 0)
        return rc;
    if (ctx->mode == MODE_EAGER) {
        if (hsize) {
            cudaError_t e;
            if ((rc = ensure_stage(ctx, hsize, err)) < 0)
                return rc;
            e = cudaMemcpyAsync(ctx->stage_d, host, hsize, cudaMemcpyHostToDevice, ctx->st);
            if (e != cudaSuccess)
                return cu_fail(err, e, "upload of op inputs");
        }
        r->stage_off = 0;
        r->stage_size = (int64_t)hsize;
        return ctx->profile ? exec_profiled(ctx, r, err) : exec_op(ctx, r, err);
    }
    /* record */
    g = ctx->cur;
    off = align_up(ctx->stage_used, 16);
    if (off + hsize > ctx->stage_cap || (g->tape_len == g->tape_cap && g->tape_cap >= 65536)) {
        if ((rc = graph_fallback(ctx, err)) < 0)
            return rc;
        return submit(ctx, r, host, hsize, err);
    }
    r->stage_off = (int64_t)off;
    r->stage_size = (int64_t)hsize;
    if (g->tape_len == g->tape_cap) {
        int nc = g->tape_cap ? 2 * g->tape_cap : 256;
        struct op_rec *nt = (struct op_rec *)realloc(g->tape, (size_t)nc * sizeof(*nt));
        if (!nt) {
            if ((rc = graph_fallback(ctx, err)) < 0)
                return rc;
            return submit(ctx, r, host, hsize, err);
        }
        g->tape = nt;
        g->tape_cap = nc;
    }
    if (hsize)
        memcpy(ctx->stage_h + off, host, hsize);
    ctx->stage_used = off + hsize;
    g->tape[g->tape_len++] = *r;
    rc = exec_op(ctx, r, err);
    if (rc < 0) {
        /* run what was recorded eagerly: the error, if real, comes back there */
        vl2_err_clear(err);
        return graph_fallback(ctx, err);
    }
    return 0;
}

/* ---- exec: records to launches ----------------------------------------------------------- */

static int launched(cudaError_t e, const char *what, struct vl2_err *err)
{
    return e == cudaSuccess ? 0 : cu_fail(err, e, what);
}

static cudaDataType_t cuda_type(int dt)
{
    switch (dt) {
    case VL2_DTYPE_BF16: return CUDA_R_16BF;
    case VL2_DTYPE_F16: return CUDA_R_16F;
    default: return CUDA_R_32F;
    }
}

/* out[n, O] = x[n, I] W^T through cuBLAS; x converted to W's dtype in @xb. */
static int gemm_xwt(struct vl2_backend_ctx *ctx, float *out, int64_t ldo, const float *x,
                    int64_t ldx, int n, int I, const struct tdesc *w, void *xb,
                    struct vl2_err *err)
{
    const float one = 1.0f, zero = 0.0f;
    const void *B = x;
    int64_t ldb = ldx;
    cublasStatus_t s;

    if (w->dtype != VL2_DTYPE_F32) {
        cudaError_t e = vl2__cu_convert(xb, I, w->dtype, x, ldx, n, I, ctx->st);
        if (e != cudaSuccess)
            return cu_fail(err, e, "linear: convert");
        B = xb;
        ldb = I;
    }
    s = cublasGemmEx(ctx->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)w->rows, n, I, &one, w->data,
                     cuda_type(w->dtype), (int)w->ld, B, cuda_type(w->dtype), (int)ldb, &zero,
                     out, CUDA_R_32F, (int)ldo, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    return s == CUBLAS_STATUS_SUCCESS ? 0 : blas_fail(err, s, "linear");
}

static int exec_linear(struct vl2_backend_ctx *ctx, const struct op_rec *r, struct vl2_err *err)
{
    const struct tdesc *out = &r->t[0], *x = &r->t[1], *w = &r->t[2], *b = &r->t[3];
    const int n = (int)x->rows, I = (int)x->cols, O = (int)w->rows;
    int rc;

    if (r->i[0] == 0) {
        struct vl2__cu_gemv_args a;
        memset(&a, 0, sizeof(a));
        a.x = (const float *)x->data;
        a.ldx = x->ld;
        a.y = (float *)out->data;
        a.ldy = out->ld;
        a.bias = b->data;
        a.bias_dtype = b->dtype;
        a.g0.wa = w->data;
        a.g0.ldw = w->ld;
        a.g0.n_out = O;
        a.g0.count = n;
        a.g0.K = I;
        return launched(vl2__cu_gemv(&a, w->dtype, (int)r->i[1], 0, (int)r->i[2], O, 1, ctx->st),
                        "linear", err);
    }
    if (r->i[0] == 2) {
        struct vl2__cu_mma_args m;
        cudaError_t e = vl2__cu_convert(ctx->scratch, I, VL2_DTYPE_BF16, (const float *)x->data,
                                        x->ld, n, I, ctx->st);
        if (e != cudaSuccess)
            return cu_fail(err, e, "linear: convert");
        memset(&m, 0, sizeof(m));
        m.a = (const uint16_t *)ctx->scratch;
        m.lda = I;
        m.out = out->data;
        m.ldo = out->ld;
        m.g0.wa = w->data;
        m.g0.ldw = w->ld;
        m.g0.n_out = O;
        m.g0.count = n;
        m.g0.K = I;
        m.bias = b->data;
        m.bias_dtype = b->dtype;
        return launched(vl2__cu_mma_grouped(&m, 0, O, 1, n, ctx->st), "linear", err);
    }
    rc = gemm_xwt(ctx, (float *)out->data, out->ld, (const float *)x->data, x->ld, n, I, w,
                  ctx->scratch, err);
    if (rc < 0 || !b->data)
        return rc;
    return launched(vl2__cu_add_bias((float *)out->data, out->ld, b->data, b->dtype, n, O,
                                     ctx->st),
                    "linear: bias", err);
}

static int exec_attn_full(struct vl2_backend_ctx *ctx, const struct op_rec *r,
                          struct vl2_err *err)
{
    const struct tdesc *out = &r->t[0], *qkv = &r->t[1];
    const int S = (int)r->i[0], H = (int)r->i[1], hd = (int)r->i[2], n_seq = (int)r->i[3];
    const float scale = r->f[0], one = 1.0f, zero = 0.0f;
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
        e = vl2__cu_softmax_rows(sc, (int64_t)H * S, S, ctx->st);
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

static const struct vl2__cu_seq *meta_seqs(struct vl2_backend_ctx *ctx)
{
    return (const struct vl2__cu_seq *)ctx->meta_d;
}

static const struct vl2__cu_row *meta_rows(struct vl2_backend_ctx *ctx)
{
    return (const struct vl2__cu_row *)(ctx->meta_d + ctx->meta_rows_off);
}

/* i[]: 0 layer, 1 n_head, 2 n_kv (MHA) / nope (MLA), 3 head_dim / rope, 4 kv dtype,
 * 5 - / R, 6 n_seqs, 7 n_rows, 8 qt_per_kvh, 9 v_dim (MLA), 10 n_split, 11 blas (MLA) */
static int exec_attn_mha(struct vl2_backend_ctx *ctx, const struct op_rec *r,
                         struct vl2_err *err)
{
    const struct tdesc *out = &r->t[0], *q = &r->t[1], *k = &r->t[2], *v = &r->t[3];
    const int H = (int)r->i[1], nkv = (int)r->i[2], hd = (int)r->i[3], dt = (int)r->i[4];
    const int n_seqs = (int)r->i[6], n = (int)r->i[7];
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
    a.layer = (int)r->i[0];
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
    a.scale = r->f[0];
    a.qt_per_kvh = (int)r->i[8];
    a.n_split = (int)r->i[10];
    plan_mha(r, ctx->scratch, &a.part_o, &a.part_ml);
    e = vl2__cu_attn(&a, dt, n_seqs, ctx->st);
    if (e != cudaSuccess)
        return cu_fail(err, e, "attn_mha");
    prof_sub(ctx, SUB_ATTN_MAIN);
    if (a.n_split > 1 && (e = vl2__cu_attn_combine(&a, n, ctx->st)) != cudaSuccess)
        return cu_fail(err, e, "attn_mha: combine");
    prof_sub(ctx, SUB_ATTN_COMBINE);
    return 0;
}

/* The attention of the sequences with at least i[19] rows, one by one (eager
 * steps only: the host metadata is the batch's): their new rows into the
 * cache, then per pass of at most i[15] query rows S = Q K^T over the keys the
 * pass can see, the causal softmax, and O = P V, V being the latent part of
 * the same cache rows.  TF32 tensor cores with F32 accumulation. */
static int mla_blas_core(struct vl2_backend_ctx *ctx, const struct op_rec *r,
                         const struct mla_plan *p, const struct tdesc *c,
                         const struct tdesc *kpe, struct vl2_err *err)
{
    const struct vl2__cu_seq *ds = (const struct vl2__cu_seq *)ctx->meta_h;
    const int H = (int)r->i[1], rope = (int)r->i[3], R = (int)r->i[5];
    const int n_seqs = (int)r->i[6], layer = (int)r->i[0], dk = R + rope;
    const int64_t chunk = r->i[15];
    const float one = 1.0f, zero = 0.0f;
    int i;

    for (i = 0; i < n_seqs; i++) {
        const struct vl2__cu_seq *q = &ds[i];
        const float *kv = (const float *)q->kv + (int64_t)layer * q->cap * dk;
        int64_t t0;
        cudaError_t e;

        if (q->n_rows < r->i[19])
            continue;
        e = vl2__cu_mla_store((float *)kv + (int64_t)q->n_past * dk, VL2_DTYPE_F32, dk,
                              (const float *)c->data + (int64_t)q->row0 * c->ld, c->ld, R,
                              (const float *)kpe->data + (int64_t)q->row0 * kpe->ld, kpe->ld,
                              rope, q->n_rows, ctx->st);
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
            e = vl2__cu_softmax_causal(p->sc, rows, Lc, H, (int)t0, q->n_past, r->f[0],
                                       ctx->st);
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

static int exec_attn_mla(struct vl2_backend_ctx *ctx, const struct op_rec *r,
                         struct vl2_err *err)
{
    const struct tdesc *out = &r->t[0], *q = &r->t[1], *c = &r->t[2], *kpe = &r->t[3];
    const struct tdesc *kvb = &r->t[4];
    const int H = (int)r->i[1], nope = (int)r->i[2], rope = (int)r->i[3], dt = (int)r->i[4];
    const int R = (int)r->i[5], n_seqs = (int)r->i[6], n = (int)r->i[7], vd = (int)r->i[9];
    const int blas = (int)r->i[11];
    const int64_t qh = nope + rope;
    const size_t es = vl2_dtype_size(kvb->dtype);
    const float one = 1.0f, zero = 0.0f;
    struct vl2__cu_attn_args a;
    struct mla_plan p;
    cublasStatus_t s;
    cudaError_t e;
    int rc;

    plan_mla(r, ctx->scratch, &p);
    if (!blas && (ctx->skip_sub & 1u)) {
        e = cudaSuccess;
    } else if (!blas) {
        e = vl2__cu_mla_qabs(p.qcat, (const float *)q->data, q->ld, kvb->data, kvb->ld,
                             kvb->dtype, n, H, nope, rope, vd, R, ctx->st);
    } else {
        const void *B = q->data;
        int64_t ldb = q->ld;
        if (kvb->dtype != VL2_DTYPE_F32) {
            e = vl2__cu_convert(p.qb, H * qh, kvb->dtype, (const float *)q->data, q->ld, n,
                                (int)(H * qh), ctx->st);
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
        e = vl2__cu_mla_qpe(p.qcat, (const float *)q->data, q->ld, n, H, nope, rope, R, ctx->st);
    if (e != cudaSuccess)
        return cu_fail(err, e, "attn_mla: queries");
    prof_sub(ctx, SUB_ATTN_QUERIES);

    memset(&a, 0, sizeof(a));
    a.q = p.qcat;
    a.q_ld = (int64_t)H * (R + rope);
    a.q_hs = R + rope;
    a.out = p.olat;
    a.out_ld = (int64_t)H * R;
    a.out_hs = R;
    a.seqs = meta_seqs(ctx);
    a.rows = meta_rows(ctx);
    a.layer = (int)r->i[0];
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
    a.scale = r->f[0];
    a.qt_per_kvh = (int)r->i[8];
    a.n_split = (int)r->i[10];
    a.part_o = p.part_o;
    a.part_ml = p.part_ml;
    a.kn_a = (const float *)c->data;
    a.kn_a_ld = c->ld;
    a.kn_a_cols = R;
    a.kn_b = (const float *)kpe->data;
    a.kn_b_ld = kpe->ld;
    if (r->i[14] == MLA_PATH_DECODE && (ctx->skip_sub & 2u)) {
        a.n_split = 1;
        e = cudaSuccess;
    } else if (r->i[14] == MLA_PATH_DECODE) {
        e = vl2__cu_mla_decode(&a, dt, n_seqs, (int)r->i[17], (int)r->i[15], ctx->st);
    } else {
        a.skip_rows = r->i[14] == MLA_PATH_BLAS ? (int)r->i[19] : 0;
        e = a.skip_rows && !r->i[18] ? cudaSuccess : vl2__cu_attn(&a, dt, n_seqs, ctx->st);
    }
    if (e != cudaSuccess)
        return cu_fail(err, e, "attn_mla");
    if (r->i[14] == MLA_PATH_BLAS && (rc = mla_blas_core(ctx, r, &p, c, kpe, err)) < 0)
        return rc;
    prof_sub(ctx, SUB_ATTN_MAIN);
    if (a.n_split > 1 && (!a.skip_rows || r->i[18]) &&
        (e = vl2__cu_attn_combine(&a, n, ctx->st)) != cudaSuccess)
        return cu_fail(err, e, "attn_mla: combine");
    prof_sub(ctx, SUB_ATTN_COMBINE);

    if (!blas && (ctx->skip_sub & 4u))
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
        e = vl2__cu_gemv(&g, kvb->dtype, (int)r->i[12], 0, (int)r->i[13], vd, H, ctx->st);
        prof_sub(ctx, SUB_ATTN_OUT);
        return launched(e, "attn_mla: output", err);
    }
    {
        const void *B = p.olat;
        int64_t ldb = (int64_t)H * R;
        if (kvb->dtype != VL2_DTYPE_F32) {
            e = vl2__cu_convert(p.ob, (int64_t)H * R, kvb->dtype, p.olat, (int64_t)H * R, n,
                                H * R, ctx->st);
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

/* i[]: 0 n, 1 E, 2 k, 3 scoring, 4 method, 5 n_group, 6 topk_group, 7 norm, 8 I, 9 d,
 * 10 n_parts, 11 part, 12 mma, 13 nt, 14 vec, 15 router vec, 16 fused routing;
 * f[0] routed scale */
static int exec_moe(struct vl2_backend_ctx *ctx, const struct op_rec *r, struct vl2_err *err)
{
    const struct tdesc *out = &r->t[0], *x = &r->t[1], *router = &r->t[2], *bias = &r->t[3];
    const struct tdesc *shg = &r->t[4], *shu = &r->t[5], *shd = &r->t[6];
    const struct moe_tab *tab = r->tab;
    const int n = (int)r->i[0], E = (int)r->i[1], k = (int)r->i[2];
    const int I = (int)r->i[8], d = (int)r->i[9], np = (int)r->i[10], part = (int)r->i[11];
    const int mma = (int)r->i[12];
    /* slot groups (decode): n*k + np*n groups of one row; else sorted groups */
    const int max_groups = r->i[16] ? n * k + np * n : np + (E < n * k ? E : n * k);
    struct vl2__cu_route_args ra;
    struct vl2__cu_bucket_args ba;
    struct moe_plan p;
    cudaError_t e;

    plan_moe(r, ctx->scratch, &p);
    if (r->i[17] != 1) {
        /* router logits in F32: the product kernel, one group of E rows */
        struct vl2__cu_gemv_args g;
        memset(&g, 0, sizeof(g));
        g.x = (const float *)x->data;
        g.ldx = x->ld;
        g.y = p.logits;
        g.ldy = E;
        g.g0.wa = router->data;
        g.g0.ldw = router->ld;
        g.g0.n_out = E;
        g.g0.count = n;
        g.g0.K = d;
        g.tok_split = 1;
        e = vl2__cu_gemv(&g, router->dtype, (int)r->i[13], 0, (int)r->i[15], E,
                         (n + (int)r->i[13] - 1) / (int)r->i[13], ctx->st);
        if (e != cudaSuccess)
            return cu_fail(err, e, "moe: router");
    }
    memset(&ra, 0, sizeof(ra));
    ra.logits = p.logits;
    ra.x = (const float *)x->data;
    ra.ldx = x->ld;
    ra.router = router->data;
    ra.ldr = router->ld;
    ra.rdtype = router->dtype;
    ra.rvec = (int)r->i[15];
    ra.d = d;
    ra.bias = bias->data;
    ra.bdtype = bias->dtype;
    ra.n = n;
    ra.E = E;
    ra.k = k;
    ra.scoring = (int)r->i[3];
    ra.method = (int)r->i[4];
    ra.n_group = (int)r->i[5];
    ra.topk_group = (int)r->i[6];
    ra.norm = (int)r->i[7];
    ra.scale = r->f[0];
    ra.idx = p.idx;
    ra.w = p.w;

    memset(&ba, 0, sizeof(ba));
    ba.idx = p.idx;
    ba.n = n;
    ba.k = k;
    ba.E = E;
    ba.I = I;
    ba.d = d;
    ba.tab_gate = (const void *const *)tab->dev;
    ba.tab_up = (const void *const *)tab->dev + E;
    ba.tab_down = (const void *const *)tab->dev + 2 * E;
    ba.ld_gu = tab->ld_gu;
    ba.ld_dn = tab->ld_dn;
    ba.sh_gate = shg->data;
    ba.sh_up = shu->data;
    ba.sh_down = shd->data;
    ba.sh_ld_gu = shg->ld;
    ba.sh_ld_dn = shd->ld;
    ba.n_parts = np;
    ba.part = part;
    ba.esize = (int)vl2_dtype_size(tab->dtype);
    ba.pos = p.pos;
    ba.slot_tok = p.slot_tok;
    ba.g_up = p.g_up;
    ba.g_dn = p.g_dn;
    ba.n_groups = p.n_groups;
    if (r->i[17] == 1)
        e = vl2__cu_moe_router_route(&ra, &ba, p.logits, ctx->ticket_d, ctx->st);
    else if (r->i[16])
        e = vl2__cu_moe_route_small(&ra, &ba, ctx->st);
    else if ((e = vl2__cu_moe_route(&ra, ctx->st)) == cudaSuccess)
        e = vl2__cu_moe_bucket(&ba, ctx->st);
    if (e != cudaSuccess)
        return cu_fail(err, e, "moe: routing");
    prof_sub(ctx, SUB_MOE_ROUTE);

    if (mma) {
        struct vl2__cu_mma_args m;
        e = vl2__cu_convert(p.xb, d, VL2_DTYPE_BF16, (const float *)x->data, x->ld, n, d,
                            ctx->st);
        if (e != cudaSuccess)
            return cu_fail(err, e, "moe: convert");
        memset(&m, 0, sizeof(m));
        m.a = (const uint16_t *)p.xb;
        m.lda = d;
        m.out = p.h;
        m.ldo = p.ldh;
        m.groups = p.g_up;
        m.n_groups = p.n_groups;
        e = vl2__cu_mma_grouped(&m, 1, (int)p.ldh, max_groups, n, ctx->st);
        if (e != cudaSuccess)
            return cu_fail(err, e, "moe: gate/up");
        prof_sub(ctx, SUB_MOE_GATEUP);
        m.a = (const uint16_t *)p.h;
        m.lda = p.ldh;
        m.out = p.y;
        m.ldo = d;
        m.groups = p.g_dn;
        e = vl2__cu_mma_grouped(&m, 0, d, max_groups, n, ctx->st);
        if (e != cudaSuccess)
            return cu_fail(err, e, "moe: down");
        prof_sub(ctx, SUB_MOE_DOWN);
    } else {
        struct vl2__cu_gemv_args g;
        const int nt = r->i[16] ? 1 : (int)r->i[13], vec = (int)r->i[14];
        memset(&g, 0, sizeof(g));
        g.x = (const float *)x->data;
        g.ldx = x->ld;
        g.y = (float *)p.h;
        g.ldy = p.ldh;
        g.groups = p.g_up;
        g.n_groups = p.n_groups;
        if (r->i[16] && np > 0 && ctx->moe_prefetch) {
            /* slot groups: the shared parts first, their weights known now */
            g.pre.wa = shg->data;
            g.pre.wb = shu->data;
            g.pre.ldw = shg->ld;
            g.pre.part_rows = part;
            g.pre.K = d;
            g.pre.n_out = part;
            g.pre.per_part = n;
            g.pre.n_groups = np * n;
        }
        e = vl2__cu_gemv(&g, tab->dtype, nt, 1, vec, (int)p.ldh, max_groups, ctx->st);
        if (e != cudaSuccess)
            return cu_fail(err, e, "moe: gate/up");
        prof_sub(ctx, SUB_MOE_GATEUP);
        g.x = (const float *)p.h;
        g.ldx = p.ldh;
        g.y = p.y;
        g.ldy = d;
        g.groups = p.g_dn;
        if (g.pre.n_groups) {
            g.pre.wa = shd->data;
            g.pre.wb = NULL;
            g.pre.ldw = shd->ld;
            g.pre.part_rows = 0;
            g.pre.part_cols = part;
            g.pre.K = part;
            g.pre.n_out = d;
        }
        e = vl2__cu_gemv(&g, tab->dtype, nt, 0, vec, d, max_groups, ctx->st);
        if (e != cudaSuccess)
            return cu_fail(err, e, "moe: down");
        prof_sub(ctx, SUB_MOE_DOWN);
    }
    e = vl2__cu_moe_combine((float *)out->data, out->ld, p.y, d, p.pos, p.w, n, k, d, np,
                            ctx->st);
    prof_sub(ctx, SUB_MOE_COMBINE);
    return launched(e, "moe: combine", err);
}

static int exec_op(struct vl2_backend_ctx *ctx, const struct op_rec *r, struct vl2_err *err)
{
    const struct tdesc *t0 = &r->t[0], *t1 = &r->t[1], *t2 = &r->t[2], *t3 = &r->t[3];
    const void *stage = ctx->stage_d + r->stage_off;
    cudaError_t e;

    if (ctx->skip_ops >> r->kind & 1u)
        return 0;

    switch (r->kind) {
    case OPK_EMBED:
        e = vl2__cu_embed((float *)t0->data, t0->ld, t1->data, t1->ld, t1->dtype,
                          (const int32_t *)stage, (int)r->i[0], (int)t0->cols, ctx->st);
        return launched(e, "embed", err);
    case OPK_LINEAR:
        return exec_linear(ctx, r, err);
    case OPK_RMSNORM:
        e = vl2__cu_rmsnorm((float *)t0->data, t0->ld, (const float *)t1->data, t1->ld,
                            t2->data, t2->dtype, (int)t1->rows, (int)t1->cols, r->f[0], ctx->st);
        return launched(e, "rmsnorm", err);
    case OPK_LAYERNORM:
        e = vl2__cu_layernorm((float *)t0->data, t0->ld, (const float *)t1->data, t1->ld,
                              t2->data, t2->dtype, t3->data, t3->dtype, (int)t1->rows,
                              (int)t1->cols, r->f[0], ctx->st);
        return launched(e, "layernorm", err);
    case OPK_ADD:
        e = vl2__cu_add((float *)t0->data, t0->ld, t1->data, t1->ld, t1->dtype, t2->data,
                        t2->ld, t2->dtype, t2->rows, (int)t1->rows, (int)t1->cols, ctx->st);
        return launched(e, "add", err);
    case OPK_ARGMAX:
        /* out: a column ([n, 1], rows ld apart) or a row ([1, n]) */
        e = vl2__cu_argmax((int32_t *)t0->data, t0->cols == 1 ? t0->ld : 1,
                           (const float *)t1->data, t1->ld, (int)t1->rows, (int)t1->cols, ctx->st);
        return launched(e, "argmax", err);
    case OPK_GELU:
        e = vl2__cu_gelu((float *)t0->data, t0->ld, (int)t0->rows, (int)t0->cols, (int)r->i[0],
                         ctx->st);
        return launched(e, "gelu", err);
    case OPK_SWIGLU:
        e = vl2__cu_swiglu((float *)t0->data, t0->ld, (const float *)t1->data, t1->ld,
                           (const float *)t2->data, t2->ld, (int)t1->rows, (int)t1->cols,
                           ctx->st);
        return launched(e, "swiglu", err);
    case OPK_COPY_ROWS:
        e = vl2__cu_copy_rows(t0->data, t0->ld, t0->dtype, (const int32_t *)stage, t1->data,
                              t1->ld, t1->dtype, (const int32_t *)stage + r->i[0],
                              (int)r->i[0], (int)t0->cols, ctx->st);
        return launched(e, "copy_rows", err);
    case OPK_PATCHIFY:
        e = vl2__cu_patchify((float *)t0->data, t0->ld, (const float *)t1->data, t1->ld,
                             (int)r->i[2], (int)r->i[0], (int)r->i[1], ctx->st);
        return launched(e, "patchify", err);
    case OPK_UNFOLD:
        e = vl2__cu_unfold2x2((float *)t0->data, t0->ld, (const float *)t1->data, t1->ld,
                              (int)r->i[1], (int)r->i[0], (int)t1->cols, ctx->st);
        return launched(e, "unfold2x2", err);
    case OPK_ATTN_FULL:
        return exec_attn_full(ctx, r, err);
    case OPK_ROPE:
        e = vl2__cu_rope((float *)t0->data, t0->ld, meta_rows(ctx), (int)t0->rows, (int)r->i[0],
                         (int)r->i[1], (int)r->i[2], (int)r->i[3], r->f[0], (int)r->i[4],
                         ctx->st);
        return launched(e, "rope", err);
    case OPK_ATTN_MHA:
        return exec_attn_mha(ctx, r, err);
    case OPK_ATTN_MLA:
        return exec_attn_mla(ctx, r, err);
    case OPK_MOE:
        return exec_moe(ctx, r, err);
    }
    return vl2_err_set(err, VL2_EINTERNAL, "cuda: unknown op record %d", r->kind);
}

/* ---- lifetime ------------------------------------------------------------------------------ */

static void parse_options(struct vl2_backend_ctx *ctx, const char *opt)
{
    const char *p = opt;
    while (p && *p) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len == 8 && !strncmp(p, "graphs=0", 8))
            ctx->graphs_on = 0;
        else if (len == 8 && !strncmp(p, "graphs=1", 8))
            ctx->graphs_on = 1;
        else if (len == 9 && !strncmp(p, "profile=1", 9))
            ctx->profile = 1;
        else if (len == 12 && !strncmp(p, "mma_linear=0", 12))
            ctx->mma_linear = 0;
        else if (len == 12 && !strncmp(p, "fuse_route=0", 12))
            ctx->fuse_route = 0;
        else if (len == 13 && !strncmp(p, "fuse_router=0", 13))
            ctx->fuse_router = 0;
        else if (len == 5 && !strncmp(p, "pdl=0", 5))
            ctx->pdl = 0;
        else if (len == 12 && !strncmp(p, "mla_decode=0", 12))
            ctx->mla_decode = 0;
        else if (len > 14 && !strncmp(p, "mla_blas_rows=", 14))
            ctx->mla_blas_min = atoi(p + 14);
        else if (len > 10 && !strncmp(p, "mla_chunk=", 10))
            ctx->mla_chunk = atoi(p + 10);
        else if (len > 10 && !strncmp(p, "mla_split=", 10))
            ctx->mla_split = atoi(p + 10);
        else if (len > 11 && !strncmp(p, "mla_qgroup=", 11))
            ctx->mla_qgroup = atoi(p + 11);
        else if (len == 14 && !strncmp(p, "moe_prefetch=0", 14))
            ctx->moe_prefetch = 0;
        else if (len > 8 && !strncmp(p, "gemv_r1=", 8))
            ctx->gemv_r1 = atoi(p + 8);
        else if (len > 14 && !strncmp(p, "prefer_shared=", 14))
            ctx->prefer_shared = atoi(p + 14);
        else if (len > 5 && !strncmp(p, "skip=", 5)) {
            const char *q = p + 5, *end = p + len;
            while (q < end) {
                const char *pl = (const char *)memchr(q, '+', (size_t)(end - q));
                size_t l = pl ? (size_t)(pl - q) : (size_t)(end - q);
                int k;
                static const char *const subs[3] = { "mla_queries", "mla_core", "mla_out" };
                for (k = 1; k < OPK_COUNT; k++)
                    if (strlen(op_names[k]) == l && !strncmp(q, op_names[k], l))
                        ctx->skip_ops |= 1u << k;
                for (k = 0; k < 3; k++)
                    if (strlen(subs[k]) == l && !strncmp(q, subs[k], l))
                        ctx->skip_sub |= 1u << k;
                q += l + 1;
            }
        }
        p = e ? e + 1 : NULL;
    }
}

static void cu_close(struct vl2_backend_ctx *ctx);

static int cu_open(const struct vl2_backend_params *p, struct vl2_backend_ctx **ret_ctx,
                   struct vl2_err *err)
{
    struct vl2_backend_ctx *ctx;
    int n_dev = 0, dev = p ? p->device : 0, rv, drv = 0, rt = 0;
    cudaError_t e;
    cublasStatus_t s;
    void *ptr;

    e = cudaGetDeviceCount(&n_dev);
    if (e != cudaSuccess || n_dev <= 0) {
        (void)cudaGetLastError();
        (void)cudaRuntimeGetVersion(&rt);
        if (e == cudaErrorInsufficientDriver)
            return vl2_err_set(err, VL2_EBACKEND,
                               "cuda: no CUDA device: no NVIDIA driver, or one older than "
                               "CUDA %d.%d needs", rt / 1000, (rt % 1000) / 10);
        return vl2_err_set(err, VL2_EBACKEND, "cuda: no CUDA device: %s",
                           e != cudaSuccess ? cudaGetErrorString(e) : "none found");
    }
    if (dev < 0 || dev >= n_dev)
        return vl2_err_set(err, VL2_EBACKEND, "cuda: no CUDA device %d: %d device%s found", dev,
                           n_dev, n_dev == 1 ? "" : "s");
    ctx = (struct vl2_backend_ctx *)calloc(1, sizeof(*ctx));
    if (!ctx)
        return vl2_err_set(err, VL2_ENOMEM, "cuda: out of host memory");
    ctx->device = dev;
    ctx->mem_budget = p ? p->mem_budget : 0;
    ctx->graphs_on = 1;
    ctx->mma_linear = 1;
    ctx->fuse_route = 1;
    ctx->fuse_router = 1;
    ctx->pdl = 1;
    ctx->mla_decode = 1;
    ctx->mla_blas_min = MLA_BLAS_ROWS;
    ctx->mla_split = 32;
    ctx->moe_prefetch = 1;
    ctx->gemv_r1 = 1;
    parse_options(ctx, p && p->options ? p->options : getenv("VL2_CUDA_OPTIONS"));
    if (ctx->profile)
        ctx->graphs_on = 0;
    if ((e = cudaSetDevice(dev)) != cudaSuccess ||
        (e = cudaGetDeviceProperties(&ctx->prop, dev)) != cudaSuccess) {
        rv = vl2_err_set(err, VL2_EBACKEND, "cuda: no CUDA device: device %d: %s", dev,
                         cudaGetErrorString(e));
        goto out_free;
    }
    if (ctx->prop.major < 9) {
        rv = vl2_err_set(err, VL2_EBACKEND,
                         "cuda: device %d '%s' has compute capability %d.%d; this build "
                         "needs 9.0 or newer",
                         dev, ctx->prop.name, ctx->prop.major, ctx->prop.minor);
        goto out_free;
    }
    vl2__cu_pdl = ctx->pdl;
    vl2__cu_gemv_r1 = ctx->gemv_r1;
    if (ctx->prefer_shared)
        (void)cudaDeviceSetCacheConfig(cudaFuncCachePreferShared);
    (void)cudaGetLastError();
    if ((e = cudaStreamCreateWithFlags(&ctx->st, cudaStreamNonBlocking)) != cudaSuccess) {
        rv = cu_fail(err, e, "stream");
        goto out_free;
    }
    if ((s = cublasCreate(&ctx->blas)) != CUBLAS_STATUS_SUCCESS) {
        rv = blas_fail(err, s, "cublasCreate");
        goto out_close;
    }
    if ((rv = dev_alloc(ctx, &ctx->blas_ws, BLAS_WS_SIZE, "cuBLAS workspace", err)) < 0)
        goto out_close;
    if ((s = cublasSetStream(ctx->blas, ctx->st)) != CUBLAS_STATUS_SUCCESS ||
        (s = cublasSetWorkspace(ctx->blas, ctx->blas_ws, BLAS_WS_SIZE)) !=
            CUBLAS_STATUS_SUCCESS ||
        (s = cublasSetMathMode(ctx->blas, CUBLAS_DEFAULT_MATH)) != CUBLAS_STATUS_SUCCESS) {
        rv = blas_fail(err, s, "cuBLAS setup");
        goto out_close;
    }
    if (ctx->profile && prof_init(ctx) < 0) {
        rv = vl2_err_set(err, VL2_EBACKEND, "cuda: profile: cannot create events");
        goto out_close;
    }
    ctx->max_smem = vl2__cu_attn_init();
    if (ctx->max_smem <= 0) {
        rv = vl2_err_set(err, VL2_EBACKEND, "cuda: device %d: cannot configure the attention "
                         "kernels: %s", dev, cudaGetErrorString(cudaGetLastError()));
        goto out_close;
    }
    if (vl2__cu_mla_init(ctx->max_smem) < 0) {
        rv = vl2_err_set(err, VL2_EBACKEND, "cuda: device %d: cannot configure the MLA "
                         "kernels: %s", dev, cudaGetErrorString(cudaGetLastError()));
        goto out_close;
    }
    ctx->meta_max_seqs = 256;
    ctx->meta_max_rows = 4096;
    ctx->meta_rows_off = align_up((size_t)ctx->meta_max_seqs * sizeof(struct vl2__cu_seq), 256);
    {
        size_t mb = ctx->meta_rows_off + (size_t)ctx->meta_max_rows * sizeof(struct vl2__cu_row);
        ctx->meta_h = (char *)calloc(1, mb);
        if (!ctx->meta_h) {
            rv = vl2_err_set(err, VL2_ENOMEM, "cuda: out of host memory");
            goto out_close;
        }
        if ((rv = dev_alloc(ctx, &ptr, mb, "batch metadata", err)) < 0)
            goto out_close;
        ctx->meta_d = (char *)ptr;
        ctx->meta_alloc = mb;
    }
    if ((rv = dev_alloc(ctx, &ptr, sizeof(unsigned int), "routing counter", err)) < 0)
        goto out_close;
    ctx->ticket_d = (unsigned int *)ptr;
    if (cudaMemset(ctx->ticket_d, 0, sizeof(unsigned int)) != cudaSuccess) {
        rv = vl2_err_set(err, VL2_EBACKEND, "cuda: device %d: cudaMemset failed", dev);
        goto out_close;
    }
    if ((rv = ensure_stage(ctx, 1u << 16, err)) < 0 ||
        (rv = ensure_scratch(ctx, 16u << 20, err)) < 0)
        goto out_close;
    (void)cudaDriverGetVersion(&drv);
    (void)cudaRuntimeGetVersion(&rt);
    snprintf(ctx->desc, sizeof(ctx->desc),
             "cuda: device %d %s (sm_%d%d, %d SMs, %.1f GiB), driver %d.%d, runtime %d.%d, "
             "cuBLAS, graphs %s%s%s",
             dev, ctx->prop.name, ctx->prop.major, ctx->prop.minor,
             ctx->prop.multiProcessorCount, (double)ctx->prop.totalGlobalMem / 1073741824.0,
             drv / 1000, (drv % 1000) / 10, rt / 1000, (rt % 1000) / 10,
             ctx->graphs_on ? "on" : "off", ctx->pdl ? ", dependent launches" : "",
             ctx->profile ? ", profiling" : "");
    *ret_ctx = ctx;
    return 0;

out_close:
    cu_close(ctx);
    return rv;
out_free:
    (void)cudaGetLastError();
    free(ctx);
    return rv;
}

static void cu_close(struct vl2_backend_ctx *ctx)
{
    int i;

    if (!ctx)
        return;
    (void)cudaSetDevice(ctx->device);
    if (ctx->capturing) {
        cudaGraph_t gr = NULL;
        (void)cudaStreamEndCapture(ctx->st, &gr);
        if (gr)
            (void)cudaGraphDestroy(gr);
    }
    if (ctx->st)
        (void)cudaStreamSynchronize(ctx->st);
    for (i = 0; i < MAX_GRAPHS; i++)
        graph_free(&ctx->graphs[i]);
    if (ctx->prof_ev) {
        for (i = 0; i < 2 * PROF_MAX; i++)
            if (ctx->prof_ev[i])
                (void)cudaEventDestroy(ctx->prof_ev[i]);
        free(ctx->prof_ev);
    }
    if (ctx->sub_ev) {
        for (i = 0; i < PROF_MAX; i++)
            if (ctx->sub_ev[i])
                (void)cudaEventDestroy(ctx->sub_ev[i]);
        free(ctx->sub_ev);
    }
    free(ctx->prof_kind);
    free(ctx->sub_kind);
    free(ctx->sub_prev);
    free(ctx->sub_op);
    for (i = 0; i < ctx->n_tabs; i++) {
        dev_free(ctx, ctx->tabs[i]->dev, 3 * (size_t)ctx->tabs[i]->E * sizeof(void *));
        free(ctx->tabs[i]->host);
        free(ctx->tabs[i]);
    }
    free(ctx->tabs);
    dev_free(ctx, ctx->scratch, ctx->scratch_size);
    dev_free(ctx, ctx->stage_d, ctx->stage_cap);
    dev_free(ctx, ctx->meta_d, ctx->meta_alloc);
    dev_free(ctx, ctx->ticket_d, sizeof(unsigned int));
    dev_free(ctx, ctx->blas_ws, BLAS_WS_SIZE);
    free(ctx->stage_h);
    free(ctx->meta_h);
    if (ctx->rd_pin)
        (void)cudaFreeHost(ctx->rd_pin);
    if (ctx->blas)
        (void)cublasDestroy(ctx->blas);
    if (ctx->st)
        (void)cudaStreamDestroy(ctx->st);
    (void)cudaGetLastError();
    free(ctx);
}

/* The device line plus the graph counters (captured, replayed, fallbacks). */
static const char *cu_describe(struct vl2_backend_ctx *ctx)
{
    if (!ctx)
        return "cuda";
    {
        int n = snprintf(ctx->desc_full, sizeof(ctx->desc_full),
                         "%s (captured %llu, replayed %llu, fallbacks %llu)", ctx->desc,
                         (unsigned long long)ctx->n_captured,
                         (unsigned long long)ctx->n_replayed,
                         (unsigned long long)ctx->n_fallback);
        int k, first = 1;
        if (ctx->profile) {
            (void)cudaStreamSynchronize(ctx->st);
            prof_drain(ctx);
            for (k = 1; k < OPK_COUNT && n > 0 && (size_t)n < sizeof(ctx->desc_full); k++) {
                if (!ctx->prof_calls[k])
                    continue;
                n += snprintf(ctx->desc_full + n, sizeof(ctx->desc_full) - (size_t)n,
                              "%s %s %.2f ms/%llu", first ? "; profile:" : ",", op_names[k],
                              ctx->prof_ms[k], (unsigned long long)ctx->prof_calls[k]);
                first = 0;
            }
            for (k = 0; k < SUB_COUNT && n > 0 && (size_t)n < sizeof(ctx->desc_full); k++)
                if (ctx->sub_calls[k])
                    n += snprintf(ctx->desc_full + n, sizeof(ctx->desc_full) - (size_t)n,
                                  ", %s %.2f ms/%llu", sub_names[k], ctx->sub_ms[k],
                                  (unsigned long long)ctx->sub_calls[k]);
        }
    }
    return ctx->desc_full;
}

static size_t cu_mem_used(struct vl2_backend_ctx *ctx)
{
    return ctx ? ctx->mem_used : 0;
}

/* ---- memory ---------------------------------------------------------------------------------- */

static int check_shape(int dtype, int ndim, const int64_t *ne, size_t *ret_bytes,
                       struct vl2_err *err)
{
    size_t n = 1;
    int i;

    if (!vl2_dtype_size(dtype))
        return vl2_err_set(err, VL2_EUNSUPPORTED, "cuda: dtype %s (%d) is not supported",
                           dtype_name(dtype), dtype);
    if (ndim < 1 || ndim > 4 || !ne)
        return vl2_err_set(err, VL2_EINVAL, "cuda: tensor with %d dimensions (1 to 4 allowed)",
                           ndim);
    for (i = 0; i < ndim; i++) {
        if (ne[i] <= 0 || ne[i] > INT32_MAX)
            return vl2_err_set(err, VL2_EINVAL, "cuda: tensor dimension %d is %lld", i,
                               (long long)ne[i]);
        if (n > ((size_t)1 << 46) / (size_t)ne[i])
            return vl2_err_set(err, VL2_EINVAL, "cuda: tensor too large");
        n *= (size_t)ne[i];
    }
    *ret_bytes = n * vl2_dtype_size(dtype);
    return 0;
}

static int new_tensor(struct vl2_backend_ctx *ctx, struct vl2_tensor *t, int dtype, int ndim,
                      const int64_t *ne, const void *host, struct vl2_err *err)
{
    struct alloc_rec *ar;
    size_t bytes = 0;
    void *p;
    int r;

    if (!t)
        return vl2_err_set(err, VL2_EINVAL, "cuda: tensor descriptor is NULL");
    if ((r = check_shape(dtype, ndim, ne, &bytes, err)) < 0)
        return r;
    (void)cudaSetDevice(ctx->device);
    if ((r = end_step(ctx, err)) < 0)
        return r;
    ar = (struct alloc_rec *)malloc(sizeof(*ar));
    if (!ar)
        return vl2_err_set(err, VL2_ENOMEM, "cuda: out of host memory");
    r = dev_alloc(ctx, &p, bytes, host ? "weight" : "tensor", err);
    if (r < 0) {
        free(ar);
        return r;
    }
    ar->size = bytes;
    if (host) {
        cudaError_t e = cudaMemcpyAsync(p, host, bytes, cudaMemcpyHostToDevice, ctx->st);
        if (e != cudaSuccess) {
            dev_free(ctx, p, bytes);
            free(ar);
            return cu_fail(err, e, "weight upload");
        }
    } else if (ctx->skip_ops || ctx->skip_sub) {
        (void)cudaMemsetAsync(p, 0, bytes, ctx->st);   /* skipped ops leave zeros */
    }
    memset(t, 0, sizeof(*t));
    vl2_tensor_set_shape(t, dtype, ndim, ne);
    t->data = p;
    t->priv = ar;
    return 0;
}

static int cu_alloc(struct vl2_backend_ctx *ctx, struct vl2_tensor *t, int dtype, int ndim,
                    const int64_t *ne, struct vl2_err *err)
{
    return new_tensor(ctx, t, dtype, ndim, ne, NULL, err);
}

static int cu_weight(struct vl2_backend_ctx *ctx, struct vl2_tensor *t, int dtype, int ndim,
                     const int64_t *ne, const void *host, struct vl2_err *err)
{
    if (!host)
        return vl2_err_set(err, VL2_EINVAL, "cuda: weight: host data is NULL");
    return new_tensor(ctx, t, dtype, ndim, ne, host, err);
}

static void cu_free_tensor(struct vl2_backend_ctx *ctx, struct vl2_tensor *t)
{
    struct alloc_rec *ar;

    if (!ctx || !t || !t->priv)
        return;
    (void)cudaSetDevice(ctx->device);
    (void)end_step(ctx, NULL);
    ar = (struct alloc_rec *)t->priv;
    (void)cudaStreamSynchronize(ctx->st);
    dev_free(ctx, t->data, ar->size);
    free(ar);
    t->priv = NULL;
    t->data = NULL;
}

/* Bytes of the storage of @t reachable from its data pointer. */
static int span_ok(const struct vl2_tensor *t, size_t offset, size_t size)
{
    const size_t es = vl2_dtype_size(t->dtype);
    size_t span;

    if (!es || t->rows < 0 || t->cols < 0 || t->ld < t->cols)
        return 0;
    span = t->rows > 0 ? ((size_t)(t->rows - 1) * (size_t)t->ld + (size_t)t->cols) * es : 0;
    return offset <= span && size <= span - offset;
}

static int cu_write(struct vl2_backend_ctx *ctx, struct vl2_tensor *t, size_t offset,
                    const void *src, size_t size, struct vl2_err *err)
{
    cudaError_t e;
    int r;

    if (!t || !t->data || (!src && size))
        return vl2_err_set(err, VL2_EINVAL, "cuda: write: NULL tensor or source");
    if (!span_ok(t, offset, size))
        return vl2_err_set(err, VL2_EINVAL,
                           "cuda: write: %zu bytes at offset %zu are outside the tensor", size,
                           offset);
    (void)cudaSetDevice(ctx->device);
    if ((r = end_step(ctx, err)) < 0)
        return r;
    if (!size)
        return 0;
    e = cudaMemcpyAsync((char *)t->data + offset, src, size, cudaMemcpyHostToDevice, ctx->st);
    return e == cudaSuccess ? 0 : cu_fail(err, e, "write");
}

static int cu_sync(struct vl2_backend_ctx *ctx, struct vl2_err *err)
{
    cudaError_t e;
    int r;

    if (!ctx)
        return vl2_err_set(err, VL2_EINVAL, "cuda: sync: no context");
    (void)cudaSetDevice(ctx->device);
    if ((r = end_step(ctx, err)) < 0)
        return r;
    e = cudaStreamSynchronize(ctx->st);
    return e == cudaSuccess ? 0 : cu_fail(err, e, "queued work failed");
}

static int cu_read(struct vl2_backend_ctx *ctx, const struct vl2_tensor *t, size_t offset,
                   void *dst, size_t size, struct vl2_err *err)
{
    cudaError_t e;
    int r;

    if (!t || !t->data || (!dst && size))
        return vl2_err_set(err, VL2_EINVAL, "cuda: read: NULL tensor or destination");
    if (!span_ok(t, offset, size))
        return vl2_err_set(err, VL2_EINVAL,
                           "cuda: read: %zu bytes at offset %zu are outside the tensor", size,
                           offset);
    (void)cudaSetDevice(ctx->device);
    if ((r = end_step(ctx, err)) < 0)
        return r;
    if (size >= READ_PIN_MIN && size > ctx->rd_pin_size) {
        /* large reads (logits) go through a pinned buffer: one fast DMA, one memcpy */
        void *p = NULL;
        size_t sz = align_up(size, 1u << 20);
        if (ctx->rd_pin)
            (void)cudaFreeHost(ctx->rd_pin);
        ctx->rd_pin = NULL;
        ctx->rd_pin_size = 0;
        if (cudaHostAlloc(&p, sz, cudaHostAllocDefault) == cudaSuccess) {
            ctx->rd_pin = p;
            ctx->rd_pin_size = sz;
        }
        (void)cudaGetLastError();
    }
    if (size >= READ_PIN_MIN && size <= ctx->rd_pin_size) {
        e = cudaMemcpyAsync(ctx->rd_pin, (const char *)t->data + offset, size,
                            cudaMemcpyDeviceToHost, ctx->st);
        if (e == cudaSuccess)
            e = cudaStreamSynchronize(ctx->st);
        if (e != cudaSuccess)
            return cu_fail(err, e, "read");
        memcpy(dst, ctx->rd_pin, size);
        return 0;
    }
    if (size) {
        e = cudaMemcpyAsync(dst, (const char *)t->data + offset, size, cudaMemcpyDeviceToHost,
                            ctx->st);
        if (e != cudaSuccess)
            return cu_fail(err, e, "read");
    }
    e = cudaStreamSynchronize(ctx->st);
    return e == cudaSuccess ? 0 : cu_fail(err, e, "queued work failed");
}

/* ---- KV cache ------------------------------------------------------------------------------------ */

static size_t kv_row_elems(const struct vl2_kv_shape *s)
{
    if (s->kind == VL2_ATTN_MHA)
        return 2 * (size_t)s->n_kv_head * (size_t)s->head_dim;
    return (size_t)s->kv_lora_rank + (size_t)s->rope_dim;
}

static size_t cu_kv_token_bytes(const struct vl2_kv_shape *s)
{
    if (!s || s->n_layer <= 0 || !vl2_dtype_size(s->dtype))
        return 0;
    return (size_t)s->n_layer * kv_row_elems(s) * vl2_dtype_size(s->dtype);
}

static int check_kv_shape(const struct vl2_kv_shape *s, struct vl2_err *err)
{
    if (!s)
        return vl2_err_set(err, VL2_EINVAL, "cuda: kv_new: shape is NULL");
    if (s->dtype != VL2_DTYPE_F32 && s->dtype != VL2_DTYPE_BF16 && s->dtype != VL2_DTYPE_F16)
        return vl2_err_set(err, VL2_EUNSUPPORTED, "cuda: kv cache dtype %s not supported",
                           dtype_name(s->dtype));
    if (s->n_layer <= 0 || s->capacity <= 0)
        return vl2_err_set(err, VL2_EINVAL, "cuda: kv cache with %d layers, capacity %d",
                           s->n_layer, s->capacity);
    if (s->kind == VL2_ATTN_MHA) {
        if (s->n_kv_head <= 0 || s->head_dim <= 0 || s->head_dim > 512)
            return vl2_err_set(err, VL2_EINVAL, "cuda: MHA kv cache with %d heads of %d",
                               s->n_kv_head, s->head_dim);
    } else if (s->kind == VL2_ATTN_MLA) {
        if (s->kv_lora_rank <= 0 || s->kv_lora_rank > 512 || s->rope_dim <= 0 ||
            (s->rope_dim & 1))
            return vl2_err_set(err, VL2_EINVAL, "cuda: MLA kv cache with rank %d, rope %d",
                               s->kv_lora_rank, s->rope_dim);
    } else {
        return vl2_err_set(err, VL2_EINVAL, "cuda: kv cache kind %d", s->kind);
    }
    return 0;
}

static int cu_kv_new(struct vl2_backend_ctx *ctx, const struct vl2_kv_shape *shape,
                     struct vl2_kv **ret_kv, struct vl2_err *err)
{
    struct vl2_kv *kv;
    size_t bytes;
    void *p;
    int r;

    if ((r = check_kv_shape(shape, err)) < 0)
        return r;
    (void)cudaSetDevice(ctx->device);
    if ((r = end_step(ctx, err)) < 0)
        return r;
    bytes = cu_kv_token_bytes(shape) * (size_t)shape->capacity;
    kv = (struct vl2_kv *)calloc(1, sizeof(*kv));
    if (!kv)
        return vl2_err_set(err, VL2_ENOMEM, "cuda: out of host memory");
    r = dev_alloc(ctx, &p, bytes, "kv cache", err);
    if (r < 0) {
        free(kv);
        return r;
    }
    kv->shape = *shape;
    kv->dev = (char *)p;
    kv->bytes = bytes;
    *ret_kv = kv;
    return 0;
}

static void cu_kv_free(struct vl2_backend_ctx *ctx, struct vl2_kv *kv)
{
    if (!ctx || !kv)
        return;
    (void)cudaSetDevice(ctx->device);
    (void)end_step(ctx, NULL);
    (void)cudaStreamSynchronize(ctx->st);
    dev_free(ctx, kv->dev, kv->bytes);
    free(kv);
}

/* ---- batch ------------------------------------------------------------------------------------- */

static int same_kv_layout(const struct vl2_kv_shape *a, const struct vl2_kv_shape *b)
{
    return a->kind == b->kind && a->n_layer == b->n_layer && a->n_kv_head == b->n_kv_head &&
           a->head_dim == b->head_dim && a->kv_lora_rank == b->kv_lora_rank &&
           a->rope_dim == b->rope_dim && a->dtype == b->dtype;
}

static struct graph_ent *graph_find(struct vl2_backend_ctx *ctx, const struct vl2_batch *b,
                                    const struct vl2_kv_shape *kvs)
{
    struct graph_ent *best = NULL;
    int i, j;

    for (i = 0; i < MAX_GRAPHS; i++) {
        struct graph_ent *g = &ctx->graphs[i];
        if (!g->used || g->n_rows != b->n_rows || g->n_seqs != b->n_seqs ||
            !same_kv_layout(&g->kvs, kvs))
            continue;
        for (j = 0; j < b->n_seqs; j++)
            if (g->seq_rows[j] != b->seqs[j].n_rows)
                break;
        if (j == b->n_seqs)
            return g;
    }
    /* a free slot, else the least recently used */
    for (i = 0; i < MAX_GRAPHS; i++) {
        struct graph_ent *g = &ctx->graphs[i];
        if (!g->used)
            return g;
        if (!best || g->last_use < best->last_use)
            best = g;
    }
    graph_free(best);
    return best;
}

static int cu_begin_batch(struct vl2_backend_ctx *ctx, const struct vl2_batch *b,
                          struct vl2_err *err)
{
    struct vl2__cu_seq *ds;
    struct vl2__cu_row *dr;
    struct vl2_kv_shape kvs;
    int32_t i, j, row = 0, max_rows = 0;
    int r;

    if (!ctx || !b || (b->n_seqs > 0 && !b->seqs))
        return vl2_err_set(err, VL2_EINVAL, "cuda: begin_batch: NULL batch");
    (void)cudaSetDevice(ctx->device);
    if ((r = end_step(ctx, err)) < 0)
        return r;
    ctx->have_batch = 0;
    if (b->n_seqs <= 0 || b->n_rows <= 0)
        return vl2_err_set(err, VL2_EINVAL, "cuda: begin_batch: %d rows in %d sequences",
                           b->n_rows, b->n_seqs);
    memset(&kvs, 0, sizeof(kvs));
    for (i = 0; i < b->n_seqs; i++) {
        const struct vl2_batch_seq *s = &b->seqs[i];
        if (!s->kv)
            return vl2_err_set(err, VL2_EINVAL, "cuda: begin_batch: sequence %d has no cache",
                               i);
        if (s->row0 != row || s->n_rows <= 0 || s->n_past < 0)
            return vl2_err_set(err, VL2_EINVAL,
                               "cuda: begin_batch: sequence %d: row0 %d, %d rows, n_past %d "
                               "(rows must follow each other from 0)",
                               i, s->row0, s->n_rows, s->n_past);
        if ((int64_t)s->n_past + s->n_rows > s->kv->shape.capacity)
            return vl2_err_set(err, VL2_ELIMIT,
                               "cuda: begin_batch: sequence %d: %d + %d tokens exceed the "
                               "cache capacity %d",
                               i, s->n_past, s->n_rows, s->kv->shape.capacity);
        if (i == 0)
            kvs = s->kv->shape;
        else if (!same_kv_layout(&kvs, &s->kv->shape))
            return vl2_err_set(err, VL2_EINVAL,
                               "cuda: begin_batch: sequence %d has a cache of another shape", i);
        row += s->n_rows;
        if (s->n_rows > max_rows)
            max_rows = s->n_rows;
    }
    if (row != b->n_rows)
        return vl2_err_set(err, VL2_EINVAL, "cuda: begin_batch: n_rows %d, sequences hold %d",
                           b->n_rows, row);
    if (b->n_seqs > ctx->meta_max_seqs || b->n_rows > ctx->meta_max_rows) {
        int32_t ms = b->n_seqs > ctx->meta_max_seqs ? b->n_seqs : ctx->meta_max_seqs;
        int32_t mr = b->n_rows > ctx->meta_max_rows ? b->n_rows : ctx->meta_max_rows;
        size_t off = align_up((size_t)ms * sizeof(struct vl2__cu_seq), 256);
        size_t mb = off + (size_t)mr * sizeof(struct vl2__cu_row);
        char *h = (char *)realloc(ctx->meta_h, mb);
        void *p;
        if (!h)
            return vl2_err_set(err, VL2_ENOMEM, "cuda: out of host memory");
        ctx->meta_h = h;
        (void)cudaStreamSynchronize(ctx->st);
        dev_free(ctx, ctx->meta_d, ctx->meta_alloc);
        ctx->meta_d = NULL;
        ctx->meta_alloc = 0;
        graphs_drop_all(ctx);
        if ((r = dev_alloc(ctx, &p, mb, "batch metadata", err)) < 0)
            return r;
        ctx->meta_d = (char *)p;
        ctx->meta_alloc = mb;
        ctx->meta_max_seqs = ms;
        ctx->meta_max_rows = mr;
        ctx->meta_rows_off = off;
    }
    ds = (struct vl2__cu_seq *)ctx->meta_h;
    dr = (struct vl2__cu_row *)(ctx->meta_h + ctx->meta_rows_off);
    for (i = 0; i < b->n_seqs; i++) {
        const struct vl2_batch_seq *s = &b->seqs[i];
        ds[i].kv = s->kv->dev;
        ds[i].n_past = s->n_past;
        ds[i].n_rows = s->n_rows;
        ds[i].row0 = s->row0;
        ds[i].cap = s->kv->shape.capacity;
        for (j = 0; j < s->n_rows; j++) {
            dr[s->row0 + j].seq = i;
            dr[s->row0 + j].pos = s->n_past + j;
        }
    }
    ctx->meta_bytes = ctx->meta_rows_off + (size_t)b->n_rows * sizeof(struct vl2__cu_row);
    ctx->have_batch = 1;
    ctx->b_rows = b->n_rows;
    ctx->b_seqs = b->n_seqs;
    ctx->b_max_seq_rows = max_rows;
    ctx->b_kv = kvs;
    ctx->b_kv.capacity = 0;
    ctx->stage_used = 0;
    ctx->tick++;

    if (ctx->graphs_on && b->n_rows <= GRAPH_MAX_ROWS) {
        struct graph_ent *g = graph_find(ctx, b, &kvs);
        if (!g->used) {
            g->seq_rows = (int32_t *)malloc((size_t)b->n_seqs * sizeof(int32_t));
            if (g->seq_rows) {
                g->used = 1;
                g->n_rows = b->n_rows;
                g->n_seqs = b->n_seqs;
                for (i = 0; i < b->n_seqs; i++)
                    g->seq_rows[i] = b->seqs[i].n_rows;
                g->kvs = kvs;
                g->kvs.capacity = 0;
            }
        } else {
            g->seen++;
        }
        g->last_use = ctx->tick;
        if (g->used && g->exec) {
            ctx->mode = MODE_REPLAY;
            ctx->cur = g;
            ctx->rec_i = 0;
            return 0;
        }
        if (g->used && g->seen >= 1 && g->fails < 3) {
            cudaError_t e = cudaStreamBeginCapture(ctx->st, cudaStreamCaptureModeThreadLocal);
            if (e == cudaSuccess) {
                ctx->mode = MODE_RECORD;
                ctx->capturing = 1;
                ctx->cur = g;
                g->tape_len = 0;
                return 0;
            }
            (void)cudaGetLastError();
        }
    }
    /* eager: the metadata goes up now */
    if (ctx->profile)
        (void)vl2__cu_spin(4000, ctx->st);
    {
        cudaError_t e = cudaMemcpyAsync(ctx->meta_d, ctx->meta_h, ctx->meta_bytes,
                                        cudaMemcpyHostToDevice, ctx->st);
        if (e != cudaSuccess)
            return cu_fail(err, e, "begin_batch: upload");
    }
    return 0;
}

/* ---- ops ------------------------------------------------------------------------------------------ */

static void rec_init(struct op_rec *r, int kind)
{
    memset(r, 0, sizeof(*r));
    r->kind = kind;
}

static int need_batch(struct vl2_backend_ctx *ctx, const char *op, const struct vl2_tensor *x,
                      struct vl2_err *err)
{
    if (!ctx->have_batch)
        return vl2_err_set(err, VL2_EINVAL, "cuda: %s: no current batch (call begin_batch)", op);
    if (x->rows != ctx->b_rows)
        return vl2_err_set(err, VL2_EINVAL, "cuda: %s: %lld rows, the batch has %d", op,
                           (long long)x->rows, ctx->b_rows);
    return 0;
}

static int cu_embed(struct vl2_backend_ctx *ctx, struct vl2_tensor *out,
                    const struct vl2_tensor *table, const int32_t *ids, struct vl2_err *err)
{
    struct op_rec r;
    int64_t i;
    int rc;

    if ((rc = check_t(out, "embed", "out", 1, err)) < 0 ||
        (rc = check_t(table, "embed", "table", 0, err)) < 0)
        return rc;
    if (out->cols != table->cols)
        return vl2_err_set(err, VL2_EINVAL, "cuda: embed: out has %lld columns, table %lld",
                           (long long)out->cols, (long long)table->cols);
    if (out->rows > 0 && !ids)
        return vl2_err_set(err, VL2_EINVAL, "cuda: embed: ids is NULL");
    for (i = 0; i < out->rows; i++)
        if (ids[i] < 0 || ids[i] >= table->rows)
            return vl2_err_set(err, VL2_EINVAL,
                               "cuda: embed: token id %d at %lld is outside the table "
                               "(%lld rows)",
                               ids[i], (long long)i, (long long)table->rows);
    if (out->rows == 0)
        return 0;
    rec_init(&r, OPK_EMBED);
    r.t[0] = td(out);
    r.t[1] = td(table);
    r.i[0] = out->rows;
    return submit(ctx, &r, ids, (size_t)out->rows * sizeof(int32_t), err);
}

static int cu_linear(struct vl2_backend_ctx *ctx, struct vl2_tensor *out,
                     const struct vl2_tensor *x, const struct vl2_tensor *w,
                     const struct vl2_tensor *bias, struct vl2_err *err)
{
    struct op_rec r;
    int rc;

    if ((rc = check_t(out, "linear", "out", 1, err)) < 0 ||
        (rc = check_t(x, "linear", "x", 1, err)) < 0 ||
        (rc = check_t(w, "linear", "w", 0, err)) < 0 ||
        (bias && (rc = check_t(bias, "linear", "bias", 0, err)) < 0))
        return rc;
    if (w->cols != x->cols || out->rows != x->rows || out->cols != w->rows ||
        (bias && bias->rows * bias->cols != w->rows))
        return vl2_err_set(err, VL2_EINVAL,
                           "cuda: linear: shapes x %lld x %lld, w %lld x %lld, out %lld x %lld%s",
                           (long long)x->rows, (long long)x->cols, (long long)w->rows,
                           (long long)w->cols, (long long)out->rows, (long long)out->cols,
                           bias && bias->rows * bias->cols != w->rows ? ", bias length differs"
                                                                      : "");
    if (out->data == x->data)
        return vl2_err_set(err, VL2_EINVAL, "cuda: linear: out must not alias x");
    if (bias && bias->rows != 1 && bias->ld != bias->cols)
        return vl2_err_set(err, VL2_EINVAL, "cuda: linear: bias must be contiguous");
    if (x->rows == 0)
        return 0;
    rec_init(&r, OPK_LINEAR);
    r.t[0] = td(out);
    r.t[1] = td(x);
    r.t[2] = td(w);
    r.t[3] = td(bias);
    if (x->rows <= GEMV_MAX_ROWS) {
        const size_t es = vl2_dtype_size(w->dtype);
        r.i[0] = 0;
        r.i[1] = x->rows <= 1 ? 1 : x->rows <= 2 ? 2 : x->rows <= 4 ? 4 : 8;
        r.i[2] = aligned16(w->data) && (w->ld * es) % 16 == 0 && aligned16(x->data) &&
                 x->ld % 4 == 0;
    } else if (ctx->mma_linear && x->rows <= MMA_MAX_ROWS && w->dtype == VL2_DTYPE_BF16 &&
               aligned16(w->data) && w->ld % 8 == 0 && x->cols % 8 == 0) {
        r.i[0] = 2;
    } else {
        r.i[0] = 1;
    }
    return submit(ctx, &r, NULL, 0, err);
}

static int cu_rmsnorm(struct vl2_backend_ctx *ctx, struct vl2_tensor *out,
                      const struct vl2_tensor *x, const struct vl2_tensor *w, float eps,
                      struct vl2_err *err)
{
    struct op_rec r;
    int rc;

    if ((rc = check_t(out, "rmsnorm", "out", 1, err)) < 0 ||
        (rc = check_t(x, "rmsnorm", "x", 1, err)) < 0 ||
        (rc = check_t(w, "rmsnorm", "w", 0, err)) < 0)
        return rc;
    if (out->rows != x->rows || out->cols != x->cols || w->rows * w->cols != x->cols ||
        (w->rows != 1 && w->ld != w->cols))
        return vl2_err_set(err, VL2_EINVAL, "cuda: rmsnorm: shapes differ (x %lld x %lld, "
                           "out %lld x %lld, w %lld)",
                           (long long)x->rows, (long long)x->cols, (long long)out->rows,
                           (long long)out->cols, (long long)(w->rows * w->cols));
    if (x->rows == 0)
        return 0;
    rec_init(&r, OPK_RMSNORM);
    r.t[0] = td(out);
    r.t[1] = td(x);
    r.t[2] = td(w);
    r.f[0] = eps;
    return submit(ctx, &r, NULL, 0, err);
}

static int cu_layernorm(struct vl2_backend_ctx *ctx, struct vl2_tensor *out,
                        const struct vl2_tensor *x, const struct vl2_tensor *w,
                        const struct vl2_tensor *b, float eps, struct vl2_err *err)
{
    struct op_rec r;
    int rc;

    if ((rc = check_t(out, "layernorm", "out", 1, err)) < 0 ||
        (rc = check_t(x, "layernorm", "x", 1, err)) < 0 ||
        (rc = check_t(w, "layernorm", "w", 0, err)) < 0 ||
        (b && (rc = check_t(b, "layernorm", "b", 0, err)) < 0))
        return rc;
    if (out->rows != x->rows || out->cols != x->cols || w->rows * w->cols != x->cols ||
        (b && b->rows * b->cols != x->cols) || (w->rows != 1 && w->ld != w->cols) ||
        (b && b->rows != 1 && b->ld != b->cols))
        return vl2_err_set(err, VL2_EINVAL, "cuda: layernorm: shapes differ");
    if (x->rows == 0)
        return 0;
    rec_init(&r, OPK_LAYERNORM);
    r.t[0] = td(out);
    r.t[1] = td(x);
    r.t[2] = td(w);
    r.t[3] = td(b);
    r.f[0] = eps;
    return submit(ctx, &r, NULL, 0, err);
}

static int cu_add(struct vl2_backend_ctx *ctx, struct vl2_tensor *out,
                  const struct vl2_tensor *a, const struct vl2_tensor *b, struct vl2_err *err)
{
    struct op_rec r;
    int rc;

    if ((rc = check_t(out, "add", "out", 1, err)) < 0 ||
        (rc = check_t(a, "add", "a", 0, err)) < 0 || (rc = check_t(b, "add", "b", 0, err)) < 0)
        return rc;
    if (out->rows != a->rows || out->cols != a->cols || b->cols != a->cols ||
        b->rows > a->rows || (b->rows == 0 && a->rows > 0))
        return vl2_err_set(err, VL2_EINVAL,
                           "cuda: add: shapes a %lld x %lld, b %lld x %lld, out %lld x %lld",
                           (long long)a->rows, (long long)a->cols, (long long)b->rows,
                           (long long)b->cols, (long long)out->rows, (long long)out->cols);
    if (a->rows == 0)
        return 0;
    rec_init(&r, OPK_ADD);
    r.t[0] = td(out);
    r.t[1] = td(a);
    r.t[2] = td(b);
    return submit(ctx, &r, NULL, 0, err);
}

static int cu_argmax(struct vl2_backend_ctx *ctx, struct vl2_tensor *out,
                     const struct vl2_tensor *x, struct vl2_err *err)
{
    struct op_rec r;
    int rc;

    if ((rc = check_t(x, "argmax", "x", 1, err)) < 0)
        return rc;
    if (!out || !out->data || out->dtype != VL2_DTYPE_I32 || out->rows * out->cols != x->rows ||
        (out->cols != 1 && out->rows != 1))
        return vl2_err_set(err, VL2_EINVAL, "cuda: argmax: 'out' must be an I32 vector of %lld "
                           "entries", (long long)x->rows);
    if (x->rows == 0)
        return 0;
    rec_init(&r, OPK_ARGMAX);
    r.t[0] = td(out);
    r.t[1] = td(x);
    return submit(ctx, &r, NULL, 0, err);
}

static int gelu_any(struct vl2_backend_ctx *ctx, struct vl2_tensor *x, int kind,
                    struct vl2_err *err)
{
    struct op_rec r;
    int rc;

    if ((rc = check_t(x, kind ? "gelu_erf" : "gelu_tanh", "x", 1, err)) < 0)
        return rc;
    if (x->rows == 0)
        return 0;
    rec_init(&r, OPK_GELU);
    r.t[0] = td(x);
    r.i[0] = kind;
    return submit(ctx, &r, NULL, 0, err);
}

static int cu_gelu_tanh(struct vl2_backend_ctx *ctx, struct vl2_tensor *x, struct vl2_err *err)
{
    return gelu_any(ctx, x, 0, err);
}

static int cu_gelu_erf(struct vl2_backend_ctx *ctx, struct vl2_tensor *x, struct vl2_err *err)
{
    return gelu_any(ctx, x, 1, err);
}

static int cu_swiglu(struct vl2_backend_ctx *ctx, struct vl2_tensor *out,
                     const struct vl2_tensor *gate, const struct vl2_tensor *up,
                     struct vl2_err *err)
{
    struct op_rec r;
    int rc;

    if ((rc = check_t(out, "swiglu", "out", 1, err)) < 0 ||
        (rc = check_t(gate, "swiglu", "gate", 1, err)) < 0 ||
        (rc = check_t(up, "swiglu", "up", 1, err)) < 0)
        return rc;
    if (out->rows != gate->rows || out->cols != gate->cols || up->rows != gate->rows ||
        up->cols != gate->cols)
        return vl2_err_set(err, VL2_EINVAL, "cuda: swiglu: shapes differ");
    if (gate->rows == 0)
        return 0;
    rec_init(&r, OPK_SWIGLU);
    r.t[0] = td(out);
    r.t[1] = td(gate);
    r.t[2] = td(up);
    return submit(ctx, &r, NULL, 0, err);
}

static int cu_copy_rows(struct vl2_backend_ctx *ctx, struct vl2_tensor *dst,
                        const int32_t *dst_rows, const struct vl2_tensor *src,
                        const int32_t *src_rows, int32_t n, struct vl2_err *err)
{
    struct op_rec r;
    int32_t *idx;
    int32_t k;
    int rc;

    if ((rc = check_t(dst, "copy_rows", "dst", 0, err)) < 0 ||
        (rc = check_t(src, "copy_rows", "src", 0, err)) < 0)
        return rc;
    if (n < 0 || (n > 0 && (!dst_rows || !src_rows)))
        return vl2_err_set(err, VL2_EINVAL, "cuda: copy_rows: %d rows, index arrays %s", n,
                           n > 0 ? "missing" : "");
    if (dst->cols != src->cols)
        return vl2_err_set(err, VL2_EINVAL, "cuda: copy_rows: dst has %lld columns, src %lld",
                           (long long)dst->cols, (long long)src->cols);
    for (k = 0; k < n; k++)
        if (dst_rows[k] < 0 || dst_rows[k] >= dst->rows || src_rows[k] < 0 ||
            src_rows[k] >= src->rows)
            return vl2_err_set(err, VL2_EINVAL,
                               "cuda: copy_rows: pair %d (dst row %d of %lld, src row %d of "
                               "%lld) out of range",
                               k, dst_rows[k], (long long)dst->rows, src_rows[k],
                               (long long)src->rows);
    if (n == 0)
        return 0;
    idx = (int32_t *)malloc(2 * (size_t)n * sizeof(int32_t));
    if (!idx)
        return vl2_err_set(err, VL2_ENOMEM, "cuda: out of host memory");
    memcpy(idx, dst_rows, (size_t)n * sizeof(int32_t));
    memcpy(idx + n, src_rows, (size_t)n * sizeof(int32_t));
    rec_init(&r, OPK_COPY_ROWS);
    r.t[0] = td(dst);
    r.t[1] = td(src);
    r.i[0] = n;
    rc = submit(ctx, &r, idx, 2 * (size_t)n * sizeof(int32_t), err);
    free(idx);
    return rc;
}

static int cu_patchify(struct vl2_backend_ctx *ctx, struct vl2_tensor *out,
                       const struct vl2_tensor *img, int32_t image_size, int32_t patch,
                       struct vl2_err *err)
{
    struct op_rec r;
    int64_t g;
    int rc;

    if ((rc = check_t(out, "patchify", "out", 1, err)) < 0 ||
        (rc = check_t(img, "patchify", "img", 1, err)) < 0)
        return rc;
    if (image_size <= 0 || patch <= 0 || patch > image_size || image_size > 16384)
        return vl2_err_set(err, VL2_EINVAL, "cuda: patchify: image size %d, patch %d",
                           image_size, patch);
    g = image_size / patch;
    if (img->cols != 3 * (int64_t)image_size * image_size || out->rows != img->rows * g * g ||
        out->cols != 3 * (int64_t)patch * patch)
        return vl2_err_set(err, VL2_EINVAL,
                           "cuda: patchify: img %lld x %lld, out %lld x %lld do not match "
                           "size %d, patch %d",
                           (long long)img->rows, (long long)img->cols, (long long)out->rows,
                           (long long)out->cols, image_size, patch);
    if (img->rows == 0)
        return 0;
    rec_init(&r, OPK_PATCHIFY);
    r.t[0] = td(out);
    r.t[1] = td(img);
    r.i[0] = image_size;
    r.i[1] = patch;
    r.i[2] = img->rows;
    return submit(ctx, &r, NULL, 0, err);
}

static int cu_unfold2x2(struct vl2_backend_ctx *ctx, struct vl2_tensor *out,
                        const struct vl2_tensor *feat, int32_t grid, struct vl2_err *err)
{
    struct op_rec r;
    int64_t g2, n_img;
    int rc;

    if ((rc = check_t(out, "unfold2x2", "out", 1, err)) < 0 ||
        (rc = check_t(feat, "unfold2x2", "feat", 1, err)) < 0)
        return rc;
    if (grid <= 0 || grid > 4096 || feat->rows % ((int64_t)grid * grid) != 0)
        return vl2_err_set(err, VL2_EINVAL, "cuda: unfold2x2: grid %d does not divide %lld rows",
                           grid, (long long)feat->rows);
    n_img = feat->rows / ((int64_t)grid * grid);
    g2 = (grid + 1) / 2;
    if (out->rows != n_img * g2 * g2 || out->cols != 4 * feat->cols)
        return vl2_err_set(err, VL2_EINVAL, "cuda: unfold2x2: out is %lld x %lld, expected "
                           "%lld x %lld",
                           (long long)out->rows, (long long)out->cols,
                           (long long)(n_img * g2 * g2), (long long)(4 * feat->cols));
    if (n_img == 0)
        return 0;
    rec_init(&r, OPK_UNFOLD);
    r.t[0] = td(out);
    r.t[1] = td(feat);
    r.i[0] = grid;
    r.i[1] = n_img;
    return submit(ctx, &r, NULL, 0, err);
}

static int cu_attn_full(struct vl2_backend_ctx *ctx, struct vl2_tensor *out,
                        const struct vl2_tensor *qkv, int32_t seq_len, int32_t n_head,
                        int32_t head_dim, float scale, struct vl2_err *err)
{
    struct op_rec r;
    int rc;

    if ((rc = check_t(out, "attn_full", "out", 1, err)) < 0 ||
        (rc = check_t(qkv, "attn_full", "qkv", 1, err)) < 0)
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
    r.t[0] = td(out);
    r.t[1] = td(qkv);
    r.i[0] = seq_len;
    r.i[1] = n_head;
    r.i[2] = head_dim;
    r.i[3] = qkv->rows / seq_len;
    r.f[0] = scale;
    return submit(ctx, &r, NULL, 0, err);
}

static int cu_rope(struct vl2_backend_ctx *ctx, struct vl2_tensor *x, int32_t n_head,
                   int32_t head_stride, int32_t rot_off, int32_t rot_dim, float theta,
                   int32_t layout, struct vl2_err *err)
{
    struct op_rec r;
    int rc;

    if ((rc = check_t(x, "rope", "x", 1, err)) < 0 || (rc = need_batch(ctx, "rope", x, err)) < 0)
        return rc;
    if (n_head <= 0 || head_stride <= 0 || rot_off < 0 || rot_dim <= 0 || (rot_dim & 1) ||
        rot_dim > 512 || rot_off + rot_dim > head_stride ||
        (int64_t)(n_head - 1) * head_stride + rot_off + rot_dim > x->cols)
        return vl2_err_set(err, VL2_EINVAL,
                           "cuda: rope: %d heads, stride %d, rotated [%d, %d) do not fit %lld "
                           "columns (rot_dim even, at most 512)",
                           n_head, head_stride, rot_off, rot_off + rot_dim, (long long)x->cols);
    if (layout != VL2_ROPE_NEOX && layout != VL2_ROPE_INTERLEAVED)
        return vl2_err_set(err, VL2_EINVAL, "cuda: rope: layout %d", layout);
    if (!(theta > 0.0f))
        return vl2_err_set(err, VL2_EINVAL, "cuda: rope: theta %g", (double)theta);
    rec_init(&r, OPK_ROPE);
    r.t[0] = td(x);
    r.i[0] = n_head;
    r.i[1] = head_stride;
    r.i[2] = rot_off;
    r.i[3] = rot_dim;
    r.i[4] = layout;
    r.f[0] = theta;
    return submit(ctx, &r, NULL, 0, err);
}

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

static int cu_attn_mha(struct vl2_backend_ctx *ctx, int32_t layer, struct vl2_tensor *out,
                       const struct vl2_tensor *q, const struct vl2_tensor *k,
                       const struct vl2_tensor *v, int32_t n_head, int32_t n_kv_head,
                       int32_t head_dim, float scale, struct vl2_err *err)
{
    const struct vl2_kv_shape *s = &ctx->b_kv;
    struct op_rec r;
    int rc;

    if ((rc = check_t(out, "attn_mha", "out", 1, err)) < 0 ||
        (rc = check_t(q, "attn_mha", "q", 1, err)) < 0 ||
        (rc = check_t(k, "attn_mha", "k", 1, err)) < 0 ||
        (rc = check_t(v, "attn_mha", "v", 1, err)) < 0 ||
        (rc = need_batch(ctx, "attn_mha", q, err)) < 0)
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
    r.t[0] = td(out);
    r.t[1] = td(q);
    r.t[2] = td(k);
    r.t[3] = td(v);
    r.i[0] = layer;
    r.i[1] = n_head;
    r.i[2] = n_kv_head;
    r.i[3] = head_dim;
    r.i[4] = s->dtype;
    r.i[6] = ctx->b_seqs;
    r.i[7] = ctx->b_rows;
    attn_geometry(ctx, n_kv_head, n_head / n_kv_head, &r.i[8], &r.i[10]);
    r.f[0] = scale;
    return submit(ctx, &r, NULL, 0, err);
}

/* How the attention core of an attn_mla record runs (i[14]), with what it needs:
 *  - decode kernel (k-mla.cu) when every sequence has few rows: i[10] runs of
 *    keys per sequence, i[17] queries per sequence at most, i[15] of them
 *    per block (halved from all of them, down to 4, while the blocks still
 *    run at once, one per multiprocessor: a block's time is what a decode
 *    step waits for);
 *  - cuBLAS products for the sequences with at least mla_blas_min rows in an
 *    eager step with an F32 cache (prefill; never inside a captured graph, whose
 *    replays change n_past): i[15] query rows per pass, i[16] score floats,
 *    i[18] sequences left to the tile kernel, i[19] the row threshold;
 *  - else the tile kernel of k-attn.cu for everything. */
static void mla_choose_path(struct vl2_backend_ctx *ctx, struct op_rec *r, int n_head, int R,
                            int rope)
{
    const int64_t nq = (int64_t)ctx->b_max_seq_rows * n_head;

    r->i[14] = MLA_PATH_TILES;
    if (ctx->mla_decode && nq <= 64 && vl2__cu_mla_decode_nqt((int)nq, R) &&
        vl2__cu_mla_decode_smem(R + rope, (int)nq) <= (size_t)ctx->max_smem) {
        const int64_t sms = ctx->prop.multiProcessorCount;
        int64_t split = sms / ctx->b_seqs, qg = nq;
        r->i[14] = MLA_PATH_DECODE;
        if (split > ctx->mla_split)
            split = ctx->mla_split;
        split = split < 1 ? 1 : split > 64 ? 64 : split;
        if (ctx->mla_qgroup > 0)
            qg = ctx->mla_qgroup < nq ? ctx->mla_qgroup : nq;
        else
            while (qg > 4 && ctx->b_seqs * split * ((nq + qg / 2 - 1) / (qg / 2)) <= sms)
                qg /= 2;
        r->i[10] = split;
        r->i[15] = qg;
        r->i[17] = nq;
        return;
    }
    if (ctx->mode == MODE_EAGER && ctx->mla_blas_min > 0 && ctx->b_kv.dtype == VL2_DTYPE_F32 &&
        ctx->b_max_seq_rows >= ctx->mla_blas_min) {
        const struct vl2__cu_seq *ds = (const struct vl2__cu_seq *)ctx->meta_h;
        int64_t lmax = 0, small = 0, chunk;
        int i;
        for (i = 0; i < ctx->b_seqs; i++) {
            if (ds[i].n_rows < ctx->mla_blas_min)
                small++;
            else if (ds[i].n_past + ds[i].n_rows > lmax)
                lmax = ds[i].n_past + ds[i].n_rows;
        }
        chunk = (int64_t)(MLA_SCORES_MAX / 4) / ((int64_t)n_head * lmax);
        if (chunk > ctx->b_max_seq_rows)
            chunk = ctx->b_max_seq_rows;
        if (ctx->mla_chunk > 0 && chunk > ctx->mla_chunk)
            chunk = ctx->mla_chunk;
        if (chunk < 1)
            chunk = 1;
        r->i[14] = MLA_PATH_BLAS;
        r->i[15] = chunk;
        r->i[16] = chunk * n_head * lmax;
        r->i[18] = small;
        r->i[19] = ctx->mla_blas_min;
    }
}

static int cu_attn_mla(struct vl2_backend_ctx *ctx, int32_t layer, struct vl2_tensor *out,
                       const struct vl2_tensor *q, const struct vl2_tensor *c,
                       const struct vl2_tensor *k_pe, const struct vl2_tensor *kv_b,
                       int32_t n_head, int32_t nope_dim, int32_t rope_dim, int32_t v_dim,
                       float scale, struct vl2_err *err)
{
    const struct vl2_kv_shape *s = &ctx->b_kv;
    const int32_t R = s->kv_lora_rank;
    struct op_rec r;
    size_t sm;
    int rc;

    if ((rc = check_t(out, "attn_mla", "out", 1, err)) < 0 ||
        (rc = check_t(q, "attn_mla", "q", 1, err)) < 0 ||
        (rc = check_t(c, "attn_mla", "c", 1, err)) < 0 ||
        (rc = check_t(k_pe, "attn_mla", "k_pe", 1, err)) < 0 ||
        (rc = check_t(kv_b, "attn_mla", "kv_b", 0, err)) < 0 ||
        (rc = need_batch(ctx, "attn_mla", q, err)) < 0)
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
    r.t[0] = td(out);
    r.t[1] = td(q);
    r.t[2] = td(c);
    r.t[3] = td(k_pe);
    r.t[4] = td(kv_b);
    r.i[0] = layer;
    r.i[1] = n_head;
    r.i[2] = nope_dim;
    r.i[3] = rope_dim;
    r.i[4] = s->dtype;
    r.i[5] = R;
    r.i[6] = ctx->b_seqs;
    r.i[7] = ctx->b_rows;
    attn_geometry(ctx, 1, n_head, &r.i[8], &r.i[10]);
    r.i[9] = v_dim;
    r.i[11] = q->rows > GEMV_MAX_ROWS;
    r.i[12] = q->rows <= 1 ? 1 : q->rows <= 2 ? 2 : q->rows <= 4 ? 4 : 8;
    {
        const size_t es = vl2_dtype_size(kv_b->dtype);
        r.i[13] = aligned16(kv_b->data) && (kv_b->ld * es) % 16 == 0 && R % 4 == 0;
    }
    mla_choose_path(ctx, &r, n_head, R, rope_dim);
    r.f[0] = scale;
    return submit(ctx, &r, NULL, 0, err);
}

/* The device pointer table of a MoE layer's experts (built once per layer). */
static int moe_table(struct vl2_backend_ctx *ctx, const struct vl2_moe_layer *l, int I, int d,
                     const struct moe_tab **ret, struct vl2_err *err)
{
    const int E = l->n_expert;
    struct moe_tab *t;
    void **host;
    int i, k, r;

    for (i = 0; i < ctx->n_tabs; i++) {
        t = ctx->tabs[i];
        if (t->key_gate != (const void *const *)l->gate || t->key_up != (const void *const *)l->up ||
            t->key_down != (const void *const *)l->down || t->E != E || t->I != I || t->d != d)
            continue;
        for (k = 0; k < E; k++)
            if (t->host[k] != l->gate[k]->data || t->host[E + k] != l->up[k]->data ||
                t->host[2 * E + k] != l->down[k]->data)
                break;
        if (k == E) {
            *ret = t;
            return 0;
        }
    }
    if ((r = graph_fallback(ctx, err)) < 0)
        return r;
    if (ctx->n_tabs == ctx->cap_tabs) {
        int nc = ctx->cap_tabs ? 2 * ctx->cap_tabs : 64;
        struct moe_tab **nt = (struct moe_tab **)realloc(ctx->tabs, (size_t)nc * sizeof(*nt));
        if (!nt)
            return vl2_err_set(err, VL2_ENOMEM, "cuda: out of host memory");
        ctx->tabs = nt;
        ctx->cap_tabs = nc;
    }
    t = (struct moe_tab *)calloc(1, sizeof(*t));
    host = (void **)malloc(3 * (size_t)E * sizeof(void *));
    if (!t || !host) {
        free(t);
        free(host);
        return vl2_err_set(err, VL2_ENOMEM, "cuda: out of host memory");
    }
    t->key_gate = (const void *const *)l->gate;
    t->key_up = (const void *const *)l->up;
    t->key_down = (const void *const *)l->down;
    t->E = E;
    t->I = I;
    t->d = d;
    t->dtype = l->gate[0]->dtype;
    t->ld_gu = l->gate[0]->ld;
    t->ld_dn = l->down[0]->ld;
    t->host = host;
    {
        const size_t es = vl2_dtype_size(t->dtype);
        int vec = (t->ld_gu * es) % 16 == 0 && (t->ld_dn * es) % 16 == 0;
        for (k = 0; k < E; k++) {
            host[k] = l->gate[k]->data;
            host[E + k] = l->up[k]->data;
            host[2 * E + k] = l->down[k]->data;
            vec = vec && aligned16(host[k]) && aligned16(host[E + k]) &&
                  aligned16(host[2 * E + k]);
        }
        t->vec_ok = vec;
        t->mma_ok = vec && t->dtype == VL2_DTYPE_BF16 && I % 8 == 0 && d % 8 == 0;
    }
    r = dev_alloc(ctx, (void **)&t->dev, 3 * (size_t)E * sizeof(void *), "expert table", err);
    if (r < 0) {
        free(host);
        free(t);
        return r;
    }
    {
        cudaError_t e = cudaMemcpy(t->dev, host, 3 * (size_t)E * sizeof(void *),
                                   cudaMemcpyHostToDevice);
        if (e != cudaSuccess) {
            dev_free(ctx, t->dev, 3 * (size_t)E * sizeof(void *));
            free(host);
            free(t);
            return cu_fail(err, e, "moe: expert table");
        }
    }
    ctx->tabs[ctx->n_tabs++] = t;
    *ret = t;
    return 0;
}

static int cu_moe(struct vl2_backend_ctx *ctx, struct vl2_tensor *out,
                  const struct vl2_tensor *x, const struct vl2_moe_layer *l,
                  struct vl2_err *err)
{
    const struct moe_tab *tab;
    struct op_rec r;
    int64_t d, I, n, np = 0, part = 0;
    int e, rc, dt;

    if ((rc = check_t(out, "moe", "out", 1, err)) < 0 ||
        (rc = check_t(x, "moe", "x", 1, err)) < 0)
        return rc;
    if (!l || !l->gate || !l->up || !l->down)
        return vl2_err_set(err, VL2_EINVAL, "cuda: moe: layer or expert arrays missing");
    if ((rc = check_t(l->router, "moe", "router", 0, err)) < 0 ||
        (l->bias && (rc = check_t(l->bias, "moe", "bias", 0, err)) < 0))
        return rc;
    n = x->rows;
    d = x->cols;
    if (out->rows != n || out->cols != d)
        return vl2_err_set(err, VL2_EINVAL, "cuda: moe: out is %lld x %lld, x %lld x %lld",
                           (long long)out->rows, (long long)out->cols, (long long)n,
                           (long long)d);
    if (out->data == x->data)
        return vl2_err_set(err, VL2_EINVAL, "cuda: moe: out must not alias x");
    if (l->n_expert <= 0 || l->n_expert > MAX_EXPERTS || l->top_k <= 0 ||
        l->top_k > MAX_TOPK || l->top_k > l->n_expert)
        return vl2_err_set(err, VL2_EINVAL, "cuda: moe: %d experts, top %d (at most %d experts, "
                           "top %d)", l->n_expert, l->top_k, MAX_EXPERTS, MAX_TOPK);
    if (l->scoring != VL2_MOE_SOFTMAX && l->scoring != VL2_MOE_SIGMOID)
        return vl2_err_set(err, VL2_EINVAL, "cuda: moe: scoring %d", l->scoring);
    if (l->method != VL2_MOE_GREEDY && l->method != VL2_MOE_GROUP_LIMITED &&
        l->method != VL2_MOE_NOAUX_TC)
        return vl2_err_set(err, VL2_EINVAL, "cuda: moe: method %d", l->method);
    if (l->method != VL2_MOE_GREEDY &&
        (l->n_group <= 0 || l->n_expert % l->n_group != 0 || l->topk_group <= 0 ||
         l->topk_group > l->n_group))
        return vl2_err_set(err, VL2_EINVAL,
                           "cuda: moe: %d experts in %d groups, top %d groups", l->n_expert,
                           l->n_group, l->topk_group);
    if (l->router->rows != l->n_expert || l->router->cols != d ||
        (l->bias && l->bias->rows * l->bias->cols != l->n_expert) ||
        (l->bias && l->bias->rows != 1 && l->bias->ld != l->bias->cols))
        return vl2_err_set(err, VL2_EINVAL, "cuda: moe: router is %lld x %lld for %d experts "
                           "of width %lld", (long long)l->router->rows,
                           (long long)l->router->cols, l->n_expert, (long long)d);
    if (!l->gate[0] || !l->gate[0]->data)
        return vl2_err_set(err, VL2_EINVAL, "cuda: moe: expert 0 gate missing");
    I = l->gate[0]->rows;
    dt = l->gate[0]->dtype;
    for (e = 0; e < l->n_expert; e++) {
        const struct vl2_tensor *g = l->gate[e], *u = l->up[e], *dn = l->down[e];
        if (!g || !u || !dn || !g->data || !u->data || !dn->data)
            return vl2_err_set(err, VL2_EINVAL, "cuda: moe: expert %d weights missing", e);
        if (g->dtype != dt || u->dtype != dt || dn->dtype != dt || !is_float_dtype(dt))
            return vl2_err_set(err, VL2_EUNSUPPORTED,
                               "cuda: moe: expert %d: weights must share one float dtype", e);
        if (g->rows != I || g->cols != d || u->rows != I || u->cols != d || dn->rows != d ||
            dn->cols != I || g->ld != l->gate[0]->ld || u->ld != l->gate[0]->ld ||
            dn->ld != l->down[0]->ld || g->ld < d || dn->ld < I)
            return vl2_err_set(err, VL2_EINVAL,
                               "cuda: moe: expert %d: gate %lld x %lld, up %lld x %lld, down "
                               "%lld x %lld, expected [%lld, %lld] and [%lld, %lld]",
                               e, (long long)g->rows, (long long)g->cols, (long long)u->rows,
                               (long long)u->cols, (long long)dn->rows, (long long)dn->cols,
                               (long long)I, (long long)d, (long long)d, (long long)I);
    }
    if (l->sh_gate || l->sh_up || l->sh_down) {
        const struct vl2_tensor *g = l->sh_gate, *u = l->sh_up, *dn = l->sh_down;
        if ((rc = check_t(g, "moe", "sh_gate", 0, err)) < 0 ||
            (rc = check_t(u, "moe", "sh_up", 0, err)) < 0 ||
            (rc = check_t(dn, "moe", "sh_down", 0, err)) < 0)
            return rc;
        if (g->dtype != dt || u->dtype != dt || dn->dtype != dt)
            return vl2_err_set(err, VL2_EUNSUPPORTED,
                               "cuda: moe: shared experts must have the experts' dtype");
        if (g->cols != d || u->cols != d || u->rows != g->rows || dn->rows != d ||
            dn->cols != g->rows || u->ld != g->ld)
            return vl2_err_set(err, VL2_EINVAL,
                               "cuda: moe: shared gate %lld x %lld, up %lld x %lld, down %lld x "
                               "%lld do not match width %lld",
                               (long long)g->rows, (long long)g->cols, (long long)u->rows,
                               (long long)u->cols, (long long)dn->rows, (long long)dn->cols,
                               (long long)d);
        if (g->rows % I == 0) {
            np = g->rows / I;
            part = I;
        } else {
            np = 1;
            part = g->rows;
        }
    }
    if (n == 0)
        return 0;
    if (n * l->top_k > INT32_MAX / 2)
        return vl2_err_set(err, VL2_EINVAL, "cuda: moe: too many rows");
    if ((rc = moe_table(ctx, l, (int)I, (int)d, &tab, err)) < 0)
        return rc;
    rec_init(&r, OPK_MOE);
    r.t[0] = td(out);
    r.t[1] = td(x);
    r.t[2] = td(l->router);
    r.t[3] = td(l->bias);
    r.t[4] = td(l->sh_gate);
    r.t[5] = td(l->sh_up);
    r.t[6] = td(l->sh_down);
    r.tab = tab;
    r.i[0] = n;
    r.i[1] = l->n_expert;
    r.i[2] = l->top_k;
    r.i[3] = l->scoring;
    r.i[4] = l->method;
    r.i[5] = l->method == VL2_MOE_GREEDY ? 1 : l->n_group;
    r.i[6] = l->topk_group;
    r.i[7] = l->norm_topk_prob != 0;
    r.i[8] = I;
    r.i[9] = d;
    r.i[10] = np;
    r.i[11] = part;
    {
        const size_t es = vl2_dtype_size(dt);
        int sh_ok = !np || (aligned16(l->sh_gate->data) && aligned16(l->sh_up->data) &&
                            aligned16(l->sh_down->data) && (l->sh_gate->ld * es) % 16 == 0 &&
                            (l->sh_down->ld * es) % 16 == 0 && (part * es) % 16 == 0);
        int x_ok = aligned16(x->data) && x->ld % 4 == 0 && d % 4 == 0;
        r.i[12] = n > GEMV_MAX_ROWS && tab->mma_ok && sh_ok && part % 8 == 0;
        r.i[13] = n <= 1 ? 1 : n <= 2 ? 2 : n <= 4 ? 4 : 8;
        r.i[14] = tab->vec_ok && sh_ok && x_ok && I % 4 == 0 && part % 4 == 0;
        r.i[15] = x_ok && aligned16(l->router->data) &&
                  (l->router->ld * vl2_dtype_size(l->router->dtype)) % 16 == 0;
        r.i[16] = ctx->fuse_route && n <= GEMV_MAX_ROWS && !r.i[12] &&
                  vl2__cu_moe_route_small_smem(l->n_expert, (int)r.i[5]) <= 48u << 10;
        /* i[17] = 1: logits and routing in one launch (router rows 16-byte
         * aligned, its shared memory within the default 48 KB) */
        r.i[17] = r.i[16] && ctx->fuse_router && r.i[15] &&
                  vl2__cu_moe_router_route_smem(l->n_expert, (int)r.i[5]) <= 48u << 10;
    }
    r.f[0] = l->routed_scale;
    return submit(ctx, &r, NULL, 0, err);
}

/* ---- entry ------------------------------------------------------------------------------------- */

static const struct vl2_backend_ops cuda_ops = {
    VL2_BACKEND_ABI_VERSION,
    sizeof(struct vl2_backend_ops),
    "cuda",
    cu_open,
    cu_close,
    cu_describe,
    cu_mem_used,
    cu_alloc,
    cu_weight,
    cu_free_tensor,
    cu_write,
    cu_read,
    cu_sync,
    cu_kv_new,
    cu_kv_free,
    cu_kv_token_bytes,
    cu_begin_batch,
    cu_embed,
    cu_linear,
    cu_rmsnorm,
    cu_layernorm,
    cu_add,
    cu_gelu_tanh,
    cu_gelu_erf,
    cu_swiglu,
    cu_copy_rows,
    cu_patchify,
    cu_unfold2x2,
    cu_attn_full,
    cu_rope,
    cu_attn_mha,
    cu_attn_mla,
    cu_moe,
    cu_argmax,
};

extern "C" __attribute__((visibility("default"))) const struct vl2_backend_ops *
vl2_backend_entry(uint32_t abi_version, struct vl2_err *err)
{
    if (abi_version != VL2_BACKEND_ABI_VERSION) {
        vl2_err_set(err, VL2_EABI, "cuda: backend built for ABI version %u, asked for %u",
                    VL2_BACKEND_ABI_VERSION, abi_version);
        return NULL;
    }
    return &cuda_ops;
}

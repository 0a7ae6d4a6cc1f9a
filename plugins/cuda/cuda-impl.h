/* cuda-impl.h - internals of vl2-backend-cuda.so shared by its .cu files:
 * the device-side descriptors that kernels read (batch metadata, grouped
 * product descriptors, MoE routing arguments, attention arguments) and the
 * host functions that launch the kernels.  Nothing here is part of the ABI.
 *
 * Conventions.  Activations are F32 row-major with a leading dimension (ld,
 * in elements).  Weights are BF16, F16 or F32 (enum vl2_dtype).  Every launch
 * function queues work on @st (the stream and the launch settings of one
 * context, struct vl2__cu_stream) and returns the cudaError_t of the launch
 * (cudaSuccess or the launch error); errors of the running kernel surface at
 * the next synchronisation. */
#ifndef VL2_CUDA_IMPL_H
#define VL2_CUDA_IMPL_H

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime.h>

#include "vl2-backend.h"

/* Where and how a context's kernels are launched: passed by value to every
 * launch function, so two contexts with different options never share a
 * setting (no process globals).  Owned by the context (cuda-ctx.h). */
struct vl2__cu_stream {
    cudaStream_t s;        /* the context's stream */
    int          pdl;      /* 1: programmatic dependent launches (option pdl) */
    int          gemv_r1;  /* weight rows per warp of single-row products: 1, 2, 4
                              (option gemv_r1) */
};

/* ---- batch metadata (device copy written by begin_batch) ------------- */

/* One sequence of the current batch. */
struct vl2__cu_seq {
    char    *kv;        /* device base of its KV cache (all layers) */
    int32_t  n_past;    /* tokens already cached */
    int32_t  n_rows;    /* rows in this batch */
    int32_t  row0;      /* first batch row */
    int32_t  cap;       /* cache capacity in tokens */
};

/* One row of the current batch. */
struct vl2__cu_row {
    int32_t seq;        /* index into the seq array */
    int32_t pos;        /* absolute position = n_past + row - row0 */
};

/* ---- grouped matrix-vector / matrix products ------------------------- */

/* One group of rows multiplied by one weight matrix: for i < count,
 *   y[out_row(i)][y_off + j] = x[in_row(i)][x_off + :] . wa[j][:]   (j < n_out)
 * with in_row(i) = in_map ? in_map[start + i] : in_base + i and
 * out_row(i) = out_base + i.  Dual groups also read wb (same layout) and
 * store silu(x . wa[j]) * (x . wb[j]). */
struct vl2__cu_group {
    const void    *wa;        /* [n_out, K] rows ldw apart, weight dtype */
    const void    *wb;        /* dual only: same shape as wa */
    int64_t        ldw;       /* elements between weight rows */
    const int32_t *in_map;    /* or NULL */
    int64_t        x_off;     /* column offset into x rows */
    int64_t        y_off;     /* column offset into y rows */
    int32_t        n_out;
    int32_t        count;
    int32_t        start;
    int32_t        in_base;
    int32_t        out_base;
    int32_t        K;         /* reduction length */
};

struct vl2__cu_gemv_args {
    const float                *x;        /* F32 input rows */
    int64_t                     ldx;
    float                      *y;        /* F32 output rows */
    int64_t                     ldy;
    const void                 *bias;     /* [n_out] or NULL (single group only) */
    int32_t                     bias_dtype;
    const struct vl2__cu_group *groups;   /* device array, or NULL: use g0 */
    const int32_t              *n_groups; /* device count when groups != NULL */
    struct vl2__cu_group        g0;       /* groups == NULL: group b is g0 shifted by b * *_gs */
    int64_t                     w_gs;     /* weight element offset per group */
    int64_t                     x_gs;     /* x column offset per group */
    int64_t                     y_gs;     /* y column offset per group */
    int32_t                     tok_split; /* groups == NULL: block b along the group axis
                                              takes rows [b*nt, b*nt + nt) of g0 instead */
    /* With groups: groups [0, pre.n_groups) are known before the kernels
     * before this one finish (the shared experts of decode MoE), and their
     * weight rows are pulled into L2 while those kernels run.  Group b uses
     * part q = b / pre.per_part: row j of it at element
     * (q * part_rows + j) * ldw + q * part_cols of wa (and of wb). */
    struct {
        const void *wa, *wb;
        int64_t     ldw, part_rows, part_cols;
        int32_t     K, n_out, per_part, n_groups;
    } pre;
};

/* y = x W^T over groups with F32 x (any weight dtype).  @nt: rows handled
 * per pass (1, 2, 4 or 8), @dual: silu-gated pair, @max_out: largest n_out,
 * @grid_groups: blocks along the group axis. */
cudaError_t vl2__cu_gemv(const struct vl2__cu_gemv_args *a, int wdtype, int nt, int dual,
                         int vec, int max_out, int grid_groups, struct vl2__cu_stream st);

/* Tensor-core grouped product: bf16 A rows (gathered through the group) times
 * bf16 weights.  dual: out is bf16 h = silu(A Wa^T) * (A Wb^T) with leading
 * dimension ldo; else out is F32.  @max_rows bounds count over groups. */
struct vl2__cu_mma_args {
    const uint16_t             *a;        /* bf16 rows */
    int64_t                     lda;
    void                       *out;
    int64_t                     ldo;
    const struct vl2__cu_group *groups;   /* device array, or NULL: one group g0 */
    const int32_t              *n_groups;
    struct vl2__cu_group        g0;
    const void                 *bias;     /* [n_out] added to F32 outputs, or NULL */
    int32_t                     bias_dtype;
};
cudaError_t vl2__cu_mma_grouped(const struct vl2__cu_mma_args *a, int dual, int max_out,
                                int grid_groups, int max_rows, struct vl2__cu_stream st);

/* ---- MoE routing ---------------------------------------------------- */

struct vl2__cu_route_args {
    const float   *logits;      /* [n, E] router logits (F32; separate kernels) */
    const float   *x;           /* fused kernel: [n, d] rows ldx apart */
    int64_t        ldx;
    const void    *router;      /* fused kernel: [E, d] rows ldr apart */
    int64_t        ldr;
    int32_t        rdtype;
    int32_t        rvec;        /* 16-byte loads allowed for x and router */
    int32_t        d;
    const void    *bias;        /* [E] or NULL */
    int32_t        bdtype;
    int32_t        n, E, k;
    int32_t        scoring, method, n_group, topk_group, norm;
    float          scale;
    int32_t       *idx;         /* out [n * k] */
    float         *w;           /* out [n * k] */
};
cudaError_t vl2__cu_moe_route(const struct vl2__cu_route_args *a, struct vl2__cu_stream st);

/* Sort the n*k selections by expert and write the group descriptors of the
 * expert products: first n_parts shared-expert parts, then one group per
 * expert that has rows. */
struct vl2__cu_bucket_args {
    const int32_t        *idx;       /* [n * k] */
    int32_t               n, k, E, I, d;
    const void *const    *tab_gate;  /* device [E] */
    const void *const    *tab_up;
    const void *const    *tab_down;
    int64_t               ld_gu;     /* row stride of expert gate/up (d) */
    int64_t               ld_dn;     /* row stride of expert down (I) */
    const void           *sh_gate;   /* NULL when no shared experts */
    const void           *sh_up;
    const void           *sh_down;
    int64_t               sh_ld_gu;
    int64_t               sh_ld_dn;
    int32_t               n_parts;   /* shared parts */
    int32_t               part;      /* rows per part */
    int32_t               esize;     /* weight element size */
    int32_t              *pos;       /* out [n * k]: sorted slot of (t, j) */
    int32_t              *slot_tok;  /* out [n * k]: token of sorted slot */
    struct vl2__cu_group *g_up;      /* out [n_parts + E] */
    struct vl2__cu_group *g_dn;      /* out [n_parts + E] */
    int32_t              *n_groups;  /* out */
};
cudaError_t vl2__cu_moe_bucket(const struct vl2__cu_bucket_args *a, struct vl2__cu_stream st);

/* Decode routing: one block per token, group descriptors per slot (no
 * sorting): n_parts*n shared groups then n*k routed groups, each one row. */
size_t vl2__cu_moe_route_small_smem(int E, int G);
cudaError_t vl2__cu_moe_route_small(const struct vl2__cu_route_args *a,
                                    const struct vl2__cu_bucket_args *b, struct vl2__cu_stream st);
/* The same with the router logits (written to @logits, [n, E]) in the same
 * launch; @ticket: a device counter at 0, left at 0. */
size_t vl2__cu_moe_router_route_smem(int E, int G);
cudaError_t vl2__cu_moe_router_route(const struct vl2__cu_route_args *a,
                                     const struct vl2__cu_bucket_args *b, float *logits,
                                     unsigned int *ticket, struct vl2__cu_stream st);

/* out[t] = sum_j w[t,j] y[pos[t,j]] + sum_q y[n*k + q*n + t]. */
cudaError_t vl2__cu_moe_combine(float *out, int64_t ldo, const float *y, int64_t ldy,
                                const int32_t *pos, const float *w, int n, int k, int d,
                                int n_parts, struct vl2__cu_stream st);

/* ---- attention ------------------------------------------------------ */

struct vl2__cu_attn_args {
    const float              *q;        /* query rows of the batch */
    int64_t                   q_ld;
    int32_t                   q_hs;     /* elements between heads */
    float                    *out;
    int64_t                   out_ld;
    int32_t                   out_hs;
    const struct vl2__cu_seq *seqs;
    int32_t                   layer;
    int32_t                   kv_row;   /* elements per cached row */
    int32_t                   kv_nblk;  /* row blocks per layer (MHA 2: K, V; MLA 1) */
    int32_t                   v_blk;    /* block holding V */
    int32_t                   k_hs;     /* elements between kv heads in a row */
    int32_t                   v_hs;
    int32_t                   dk, dv;
    int32_t                   n_head, n_kv, group;
    float                     scale;
    int32_t                   qt_per_kvh; /* query tiles per kv head per sequence */
    int32_t                   n_split;
    float                    *part_o;   /* n_split > 1: [rows, n_head, n_split, dv] */
    float                    *part_ml;  /* [rows, n_head, n_split, 2] */
    /* the batch's own keys and values (stored into the caches by the kernel):
     * key element d of kv head h of batch row r is
     *   d < kn_a_cols ? kn_a[r * kn_a_ld + h * k_hs + d] : kn_b[r * kn_b_ld + d - kn_a_cols]
     * and value element d is vn[r * vn_ld + h * v_hs + d] (MHA; MLA values are keys). */
    const float              *kn_a;
    int64_t                   kn_a_ld;
    int32_t                   kn_a_cols;
    const float              *kn_b;
    int64_t                   kn_b_ld;
    const float              *vn;
    int64_t                   vn_ld;
    /* sequences with at least skip_rows rows (when > 0) are left alone: their
     * attention runs elsewhere (MLA prefill through cuBLAS) */
    int32_t                   skip_rows;
    const struct vl2__cu_row *rows;     /* batch rows (combine, with skip_rows) */
};
#define VL2_CU_ATTN_QT 16
#define VL2_CU_ATTN_KT 32
cudaError_t vl2__cu_attn(const struct vl2__cu_attn_args *a, int kv_dtype, int n_seqs,
                         struct vl2__cu_stream st);
/* Shared-memory bytes vl2__cu_attn needs; 0 when the shape is unsupported. */
size_t vl2__cu_attn_smem(int dk, int dv, int v_in_k);
int vl2__cu_attn_init(void);
cudaError_t vl2__cu_attn_combine(const struct vl2__cu_attn_args *a, int n_rows,
                                 struct vl2__cu_stream st);


/* MLA decode (k-mla.cu): every sequence of the batch with its n_rows * n_head
 * <= nq_max queries, the latent cache as keys (dk = R + rope) and values
 * (dv = R); n_split runs of keys per sequence, merged by vl2__cu_attn_combine
 * when n_split > 1; the queries of a sequence in blocks of q_group (0: all in
 * one).  vl2__cu_mla_decode_nqt / _smem (of nq queries per block): 0 when the
 * kernel does not take the shape. */
int vl2__cu_mla_init(int max_smem);
int vl2__cu_mla_decode_nqt(int nq, int dv);
size_t vl2__cu_mla_decode_smem(int dk, int nq);
cudaError_t vl2__cu_mla_decode(const struct vl2__cu_attn_args *a, int kv_dtype, int n_seqs,
                               int nq_max, int q_group, struct vl2__cu_stream st);
/* Cache rows of one layer: dst[(t) * kv_row + d] = d < acols ? a[t][d] : b[t][d - acols]. */
cudaError_t vl2__cu_mla_store(void *dst, int kv_dtype, int64_t kv_row, const float *a,
                              int64_t lda, int acols, const float *b, int64_t ldb, int bcols,
                              int n, struct vl2__cu_stream st);
/* Causal softmax in place: row r of @s (ld floats) is query t0 + r / H of a
 * sequence with n_past cached tokens; it keeps n_past + t0 + r / H + 1 columns
 * of softmax(scale * s) and zeros the rest of its ld. */
cudaError_t vl2__cu_softmax_causal(float *s, int64_t rows, int64_t ld, int H, int t0,
                                   int n_past, float scale, struct vl2__cu_stream st);

/* MLA: qcat[t, h, 0:R] = q_nope[t,h] . W_UK[h];  qcat[t, h, R:R+rp] = q_pe[t,h]
 * (both: vl2__cu_mla_qabs; the second alone: vl2__cu_mla_qpe). */
cudaError_t vl2__cu_mla_qabs(float *qcat, const float *q, int64_t ldq, const void *kvb,
                             int64_t ldb, int wdtype, int n, int H, int nope, int rope,
                             int vdim, int R, struct vl2__cu_stream st);
/* qcat[t, h, R + j] = q[t, h*(nope+rope) + nope + j]. */
cudaError_t vl2__cu_mla_qpe(float *qcat, const float *q, int64_t ldq, int n, int H, int nope,
                            int rope, int R, struct vl2__cu_stream st);

/* ---- element-wise and small ops -------------------------------------- */

cudaError_t vl2__cu_embed(float *out, int64_t ldo, const void *table, int64_t ldt, int tdtype,
                          const int32_t *ids, int n, int cols, struct vl2__cu_stream st);
cudaError_t vl2__cu_rmsnorm(float *out, int64_t ldo, const float *x, int64_t ldx,
                            const void *w, int wdtype, int n, int cols, float eps,
                            struct vl2__cu_stream st);
cudaError_t vl2__cu_layernorm(float *out, int64_t ldo, const float *x, int64_t ldx,
                              const void *w, int wdtype, const void *b, int bdtype, int n,
                              int cols, float eps, struct vl2__cu_stream st);
/* out[i * ldo] = index of the first largest of row i of x (NaN never wins;
 * 0 for a row starting with NaN). */
cudaError_t vl2__cu_argmax(int32_t *out, int64_t ldo, const float *x, int64_t ldx, int n,
                           int cols, struct vl2__cu_stream st);
cudaError_t vl2__cu_add(float *out, int64_t ldo, const void *a, int64_t lda, int adtype,
                        const void *b, int64_t ldb, int bdtype, int64_t brows, int n,
                        int cols, struct vl2__cu_stream st);
/* kind 0: gelu tanh, 1: gelu erf. */
cudaError_t vl2__cu_gelu(float *x, int64_t ldx, int n, int cols, int kind,
                         struct vl2__cu_stream st);
cudaError_t vl2__cu_swiglu(float *out, int64_t ldo, const float *g, int64_t ldg,
                           const float *u, int64_t ldu, int n, int cols, struct vl2__cu_stream st);
cudaError_t vl2__cu_copy_rows(void *dst, int64_t ldd, int ddtype, const int32_t *drows,
                              const void *src, int64_t lds, int sdtype,
                              const int32_t *srows, int n, int cols, struct vl2__cu_stream st);
cudaError_t vl2__cu_patchify(float *out, int64_t ldo, const float *img, int64_t ldi,
                             int n_img, int S, int p, struct vl2__cu_stream st);
cudaError_t vl2__cu_unfold2x2(float *out, int64_t ldo, const float *feat, int64_t ldf,
                              int n_img, int g, int c, struct vl2__cu_stream st);
cudaError_t vl2__cu_rope(float *x, int64_t ldx, const struct vl2__cu_row *rows, int n,
                         int n_head, int head_stride, int rot_off, int rot_dim, float theta,
                         int layout, struct vl2__cu_stream st);
/* dst (dtype BF16/F16/F32) = src (F32), n rows x cols. */
cudaError_t vl2__cu_convert(void *dst, int64_t ldd, int ddtype, const float *src, int64_t lds,
                            int n, int cols, struct vl2__cu_stream st);
/* out[r][j] += bias[j] */
cudaError_t vl2__cu_add_bias(float *out, int64_t ldo, const void *bias, int bdtype, int n,
                             int cols, struct vl2__cu_stream st);
/* Keep the device busy for @us microseconds (profiling). */
cudaError_t vl2__cu_spin(int us, struct vl2__cu_stream st);

/* Row softmax in place over @cols of each of @n rows (ld = cols). */
cudaError_t vl2__cu_softmax_rows(float *s, int64_t n, int cols, struct vl2__cu_stream st);

#endif /* VL2_CUDA_IMPL_H */

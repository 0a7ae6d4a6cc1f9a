/* k-moe.cu - MoE on the device (spec 7.4): router logits in F32, scoring
 * and expert selection (greedy, group-limited, noaux_tc), bucketing of the
 * selections by expert into group descriptors, a tensor-core grouped product
 * for prefill-sized batches, and the weighted combination with the shared
 * experts.  No host round trip: the group counts stay on the device. */
#include <limits.h>
#include <math.h>
#include <mma.h>

#include "cuda-dev.cuh"
#include "cuda-impl.h"
#include "cuda-launch.cuh"

using namespace nvcuda;

/* One product group (struct vl2__cu_group; column offsets 0): rows
 * in_map ? in_map[start + i] : in_base + i of x times the n_out rows of wa
 * (and wb, dual) over K columns, into rows out_base + i, for i < count. */
static __device__ __forceinline__ struct vl2__cu_group
make_group(const void *wa, const void *wb, int64_t ldw, const int32_t *in_map, int n_out,
           int count, int start, int in_base, int out_base, int K)
{
    struct vl2__cu_group g;
    g.wa = wa;
    g.wb = wb;
    g.ldw = ldw;
    g.in_map = in_map;
    g.x_off = 0;
    g.y_off = 0;
    g.n_out = n_out;
    g.count = count;
    g.start = start;
    g.in_base = in_base;
    g.out_base = out_base;
    g.K = K;
    return g;
}

/* ---- routing ------------------------------------------------------------ */

#define ROUTE_MAX_K 16

/* Selection of token @t by one warp (spec 7.4): scores from the logits
 * (@lg, global or shared), expert choice, weights; writes a.idx and a.w.
 * @sc: 2E + G floats and G ints of this warp's shared memory. */
static __device__ void select_token(const struct vl2__cu_route_args &a, const float *lg,
                                    float *sc, int t)
{
    const int E = a.E, G = a.n_group;
    const int lane = threadIdx.x & 31;
    float *s_score = sc;
    float *s_choice = sc + E;
    float *s_gs = sc + 2 * E;
    int *s_gsel = (int *)(s_gs + G);

    for (int e = lane; e < E; e += 32)
        s_score[e] = lg[e];
    __syncwarp();
    if (a.scoring == VL2_MOE_SOFTMAX) {
        float m = -INFINITY;
        for (int e = lane; e < E; e += 32)
            m = fmaxf(m, s_score[e]);
        m = warp_max(m);
        float sum = 0.0f;
        for (int e = lane; e < E; e += 32) {
            const float v = expf(s_score[e] - m);
            s_score[e] = v;
            sum += v;
        }
        sum = warp_sum(sum);
        for (int e = lane; e < E; e += 32)
            s_score[e] = s_score[e] / sum;
    } else {
        for (int e = lane; e < E; e += 32)
            s_score[e] = 1.0f / (1.0f + expf(-s_score[e]));
    }
    __syncwarp();
    for (int e = lane; e < E; e += 32) {
        float v = s_score[e];
        if (a.method == VL2_MOE_NOAUX_TC && a.bias)
            v += ld_any(a.bias, a.bdtype, e);
        s_choice[e] = v;
    }
    __syncwarp();

    if (a.method != VL2_MOE_GREEDY && G > 1) {
        const int gsz = E / G;
        for (int gi = lane; gi < G; gi += 32) {
            float b1 = -INFINITY, b2 = -INFINITY;
            for (int e = gi * gsz; e < (gi + 1) * gsz; e++) {
                const float v = s_choice[e];
                if (v > b1) {
                    b2 = b1;
                    b1 = v;
                } else if (v > b2) {
                    b2 = v;
                }
            }
            if (a.method == VL2_MOE_GROUP_LIMITED)
                s_gs[gi] = b1;
            else
                s_gs[gi] = gsz >= 2 ? b1 + b2 : b1;
            s_gsel[gi] = 0;
        }
        __syncwarp();
        for (int it = 0; it < a.topk_group; it++) {
            float bv = -INFINITY;
            int bi = INT_MAX;
            for (int gi = lane; gi < G; gi += 32) {
                const float v = s_gs[gi];
                if (!s_gsel[gi] && (v > bv || (v == bv && gi < bi) || bi == INT_MAX)) {
                    bv = v;
                    bi = gi;
                }
            }
            warp_argmax(bv, bi);
            if (lane == 0 && bi >= 0 && bi < G)
                s_gsel[bi] = 1;
            __syncwarp();
        }
        for (int e = lane; e < E; e += 32)
            if (!s_gsel[e / gsz])
                s_choice[e] = 0.0f;
        __syncwarp();
    }

    float wv[ROUTE_MAX_K];
    int iv[ROUTE_MAX_K];
    float wsum = 0.0f;
#pragma unroll
    for (int j = 0; j < ROUTE_MAX_K; j++) {
        if (j >= a.k)
            break;
        float bv = -INFINITY;
        int bi = INT_MAX;
        for (int e = lane; e < E; e += 32) {
            const float v = s_choice[e];
            if (v == -INFINITY)
                continue;               /* taken */
            if (bi == INT_MAX || v > bv) {
                bv = v;
                bi = e;
            }
        }
        warp_argmax(bv, bi);
        if (bi < 0 || bi >= E)
            bi = 0;                     /* only with NaN scores: keep indices valid */
        const float w = a.method == VL2_MOE_GROUP_LIMITED ? bv : s_score[bi];
        __syncwarp();
        if (lane == 0)
            s_choice[bi] = -INFINITY;
        __syncwarp();
        wv[j] = w;
        iv[j] = bi;
        wsum += w;
    }
    const bool renorm = a.k > 1 && a.norm;
#pragma unroll
    for (int j = 0; j < ROUTE_MAX_K; j++) {
        if (j >= a.k)
            break;
        if (lane == j) {
            const float w = renorm ? wv[j] / (wsum + 1e-20f) * a.scale : wv[j] * a.scale;
            a.idx[(int64_t)t * a.k + j] = iv[j];
            a.w[(int64_t)t * a.k + j] = w;
        }
    }
    __syncwarp();
}

static __host__ __device__ size_t select_floats(int E, int G)
{
    return (size_t)(2 * E + 2 * G);
}

/* One warp per token, from logits computed before. */
static __global__ void __launch_bounds__(32) route_kernel(const struct vl2__cu_route_args a)
{
    PDL_ENTRY();
    extern __shared__ float sm[];
    select_token(a, a.logits + (int64_t)blockIdx.x * a.E, sm, blockIdx.x);
}

cudaError_t vl2__cu_moe_route(const struct vl2__cu_route_args *a, struct vl2__cu_stream st)
{
    if (a->n <= 0)
        return cudaSuccess;
    launch_k(route_kernel, a->n, 32, select_floats(a->E, a->n_group) * sizeof(float), st, *a);
    return cudaGetLastError();
}

/* ---- bucketing ------------------------------------------------------------ */

/* Counting sort of the n*k selections by expert and the group descriptors.
 * The order of the slots within an expert is that of the atomics: every slot
 * row is computed on its own (no product mixes rows) and the combination
 * sums each token's slots in selection order, so results do not depend on it.
 * Run by a whole block; @s_cnt, @s_off, @s_act, @s_fill: E ints of shared
 * memory each, @s_na one. */
static __device__ void bucket_body(const struct vl2__cu_bucket_args &a, int *s_cnt, int *s_off,
                                   int *s_act, int *s_fill, int *s_na)
{
    const int nk = a.n * a.k, E = a.E;
    const int tid = threadIdx.x, bs = blockDim.x;

    for (int e = tid; e < E; e += bs) {
        s_cnt[e] = 0;
        s_fill[e] = 0;
    }
    __syncthreads();
    for (int s = tid; s < nk; s += bs)
        atomicAdd(&s_cnt[a.idx[s]], 1);
    __syncthreads();
    if (tid == 0) {
        int o = 0, na = 0;
        for (int e = 0; e < E; e++) {
            s_off[e] = o;
            o += s_cnt[e];
            s_act[e] = s_cnt[e] > 0 ? na++ : -1;
        }
        *s_na = na;
    }
    __syncthreads();
    for (int s = tid; s < nk; s += bs) {
        const int e = a.idx[s];
        const int p = s_off[e] + atomicAdd(&s_fill[e], 1);
        a.pos[s] = p;
        a.slot_tok[p] = s / a.k;
    }
    for (int e = tid; e < E; e += bs) {
        if (s_cnt[e] == 0)
            continue;
        const int off = s_off[e];
        struct vl2__cu_group gu, gd;
        gu = make_group(a.tab_gate[e], a.tab_up[e], a.ld_gu, a.slot_tok,
                        a.I, s_cnt[e], off, 0, off, a.d);
        gd = make_group(a.tab_down[e], NULL, a.ld_dn, NULL,
                        a.d, s_cnt[e], 0, off, off, a.I);
        a.g_up[a.n_parts + s_act[e]] = gu;
        a.g_dn[a.n_parts + s_act[e]] = gd;
    }
    for (int q = tid; q < a.n_parts; q += bs) {
        struct vl2__cu_group gu, gd;
        const int rows = nk + q * a.n;
        gu = make_group((const char *)a.sh_gate + (size_t)q * a.part * a.sh_ld_gu * a.esize,
                        (const char *)a.sh_up + (size_t)q * a.part * a.sh_ld_gu * a.esize,
                        a.sh_ld_gu, NULL,
                        a.part, a.n, 0, 0, rows, a.d);
        gd = make_group((const char *)a.sh_down + (size_t)q * a.part * a.esize, NULL,
                        a.sh_ld_dn, NULL,
                        a.d, a.n, 0, rows, rows, a.part);
        a.g_up[q] = gu;
        a.g_dn[q] = gd;
    }
    if (tid == 0)
        *a.n_groups = a.n_parts + *s_na;
}

#define BUCKET_MAX_E 1024

static __global__ void __launch_bounds__(1024) bucket_kernel(const struct vl2__cu_bucket_args a)
{
    PDL_ENTRY();
    __shared__ int s_cnt[BUCKET_MAX_E];
    __shared__ int s_off[BUCKET_MAX_E];
    __shared__ int s_act[BUCKET_MAX_E];
    __shared__ int s_fill[BUCKET_MAX_E];
    __shared__ int s_na;
    bucket_body(a, s_cnt, s_off, s_act, s_fill, &s_na);
}

cudaError_t vl2__cu_moe_bucket(const struct vl2__cu_bucket_args *a, struct vl2__cu_stream st)
{
    launch_k(bucket_kernel, 1, 1024, 0, st, *a);
    return cudaGetLastError();
}

/* ---- router dot products ------------------------------------------------- */

/* x . w for one router row, lanes striding over d (8-wide loads when @vec). */
template <typename WT>
static __device__ __forceinline__ float row_dot(const float *x, const WT *w, int d, bool vec)
{
    const int lane = threadIdx.x & 31;
    float v = 0.0f;
    int k0 = 0;
    if (vec) {
#pragma unroll 8
        for (int c = lane; c < d / 8; c += 32) {
            float wv[8];
            elem<WT>::get8(w + c * 8, wv);
            const float4 x0 = *(const float4 *)(x + c * 8);
            const float4 x1 = *(const float4 *)(x + c * 8 + 4);
            v = fmaf(x0.x, wv[0], v);
            v = fmaf(x0.y, wv[1], v);
            v = fmaf(x0.z, wv[2], v);
            v = fmaf(x0.w, wv[3], v);
            v = fmaf(x1.x, wv[4], v);
            v = fmaf(x1.y, wv[5], v);
            v = fmaf(x1.z, wv[6], v);
            v = fmaf(x1.w, wv[7], v);
        }
        k0 = d / 8 * 8;
    }
#pragma unroll 4
    for (int k = k0 + lane; k < d; k += 32)
        v = fmaf(x[k], elem<WT>::get(w, k), v);
    return warp_sum(v);
}

/* ---- decode routing: slot groups --------------------------------------------- */

/* The group descriptors of token @t's slots (by one warp, after
 * select_token wrote its choice): see route_small_kernel. */
static __device__ void slot_groups(const struct vl2__cu_route_args &a,
                                   const struct vl2__cu_bucket_args &b, int t)
{
    const int k = a.k, n = a.n, lane = threadIdx.x & 31;
    for (int j = lane; j < k; j += 32) {
        const int s = t * k + j, e = a.idx[s];
        struct vl2__cu_group gu, gd;
        b.pos[s] = s;
        gu = make_group(b.tab_gate[e], b.tab_up[e], b.ld_gu, NULL,
                        b.I, 1, 0, t, s, b.d);
        gd = make_group(b.tab_down[e], NULL, b.ld_dn, NULL,
                        b.d, 1, 0, s, s, b.I);
        b.g_up[b.n_parts * n + s] = gu;
        b.g_dn[b.n_parts * n + s] = gd;
    }
    for (int q = lane; q < b.n_parts; q += 32) {
        const int g = n * k + q * n + t;   /* its h and y row; group q * n + t */
        struct vl2__cu_group gu, gd;
        gu = make_group((const char *)b.sh_gate + (size_t)q * b.part * b.sh_ld_gu * b.esize,
                        (const char *)b.sh_up + (size_t)q * b.part * b.sh_ld_gu * b.esize,
                        b.sh_ld_gu, NULL,
                        b.part, 1, 0, t, g, b.d);
        gd = make_group((const char *)b.sh_down + (size_t)q * b.part * b.esize, NULL,
                        b.sh_ld_dn, NULL,
                        b.d, 1, 0, g, g, b.part);
        b.g_up[q * n + t] = gu;
        b.g_dn[q * n + t] = gd;
    }
    if (t == 0 && lane == 0)
        *b.n_groups = n * k + b.n_parts * n;
}


/* One block per token: router logits (8 warps), selection (warp 0), then the
 * group descriptors of this token's slots without any sorting: slot
 * s = t*k + j multiplies row t by its expert (group n_parts*n + s, h row s,
 * y row s) and shared part q of token t is group q*n + t (h and y row
 * n*k + q*n + t).  The shared parts come first so that the products' first
 * blocks, resident soonest, are those whose weights are known before the
 * routing ends.  A token never picks an expert twice, so no weight is read
 * twice for one token. */
static __global__ void __launch_bounds__(256)
route_small_kernel(const struct vl2__cu_route_args a, const struct vl2__cu_bucket_args b)
{
    PDL_ENTRY();
    extern __shared__ float sm[];
    const int E = a.E, t = blockIdx.x;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const float *x = a.x + (int64_t)t * a.ldx;
    const int nw = blockDim.x >> 5;

    /* logits computed before (a.logits), or here by the block's warps */
    for (int e = warp; !a.logits && e < E; e += nw) {
        float v;
        switch (a.rdtype) {
        case VL2_DTYPE_BF16:
            v = row_dot(x, (const __nv_bfloat16 *)a.router + (int64_t)e * a.ldr, a.d, a.rvec);
            break;
        case VL2_DTYPE_F16:
            v = row_dot(x, (const __half *)a.router + (int64_t)e * a.ldr, a.d, a.rvec);
            break;
        default:
            v = row_dot(x, (const float *)a.router + (int64_t)e * a.ldr, a.d, a.rvec);
            break;
        }
        if (lane == 0)
            sm[e] = v;
    }
    __syncthreads();
    if (warp != 0)
        return;
    select_token(a, a.logits ? a.logits + (int64_t)t * E : sm, sm + E, t);
    slot_groups(a, b, t);
}

size_t vl2__cu_moe_route_small_smem(int E, int G)
{
    return sizeof(float) * ((size_t)E + select_floats(E, G));
}

cudaError_t vl2__cu_moe_route_small(const struct vl2__cu_route_args *a,
                                    const struct vl2__cu_bucket_args *b, struct vl2__cu_stream st)
{
    launch_k(route_small_kernel, a->n, a->logits ? 32 : 256,
             vl2__cu_moe_route_small_smem(a->E, a->n_group), st, *a, *b);
    return cudaGetLastError();
}

/* Router logits and slot routing in one launch (decode): warp w of block b
 * computes the logits of expert b * RR_WARPS + w for every token (its router
 * row pulled into L2 before the kernels before finish), then the last block
 * to finish, known by a ticket, routes the tokens (a warp per token).  One
 * kernel boundary less per MoE layer than logits then route_small. */
#define RR_WARPS 4

template <typename WT>
static __global__ void __launch_bounds__(RR_WARPS * 32)
router_route_kernel(const struct vl2__cu_route_args a, const struct vl2__cu_bucket_args b,
                    float *logits, unsigned int *ticket)
{
    extern __shared__ float sm[];
    __shared__ int s_last;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int e = blockIdx.x * RR_WARPS + warp;
    const WT *wr = (const WT *)a.router + (int64_t)e * a.ldr;

    if (e < a.E)
        for (int64_t off = (int64_t)lane * 128; off < (int64_t)a.d * (int64_t)sizeof(WT);
             off += 32 * 128)
            asm volatile("prefetch.global.L2 [%0];" ::"l"((const char *)wr + off));
    PDL_ENTRY();
    if (e < a.E)
        for (int t = 0; t < a.n; t++) {
            const float v = row_dot(a.x + (int64_t)t * a.ldx, wr, a.d, a.rvec);
            if (lane == 0)
                logits[(int64_t)t * a.E + e] = v;
        }
    __threadfence();   /* the logits visible to the block that routes */
    __syncthreads();
    if (threadIdx.x == 0)
        s_last = atomicAdd(ticket, 1u) == gridDim.x - 1;
    __syncthreads();
    if (!s_last)
        return;
    __threadfence();
    if (threadIdx.x == 0)
        *ticket = 0;   /* for the next layer (kernels in a stream do not overlap here) */
    float *lg = sm + (size_t)warp * (a.E + select_floats(a.E, a.n_group));
    for (int t = warp; t < a.n; t += RR_WARPS) {
        /* other blocks' logits, past this SM's L1 */
        for (int i = lane; i < a.E; i += 32)
            lg[i] = __ldcg(logits + (int64_t)t * a.E + i);
        __syncwarp();
        select_token(a, lg, lg + a.E, t);
        slot_groups(a, b, t);
        __syncwarp();
    }
}

size_t vl2__cu_moe_router_route_smem(int E, int G)
{
    return sizeof(float) * RR_WARPS * ((size_t)E + select_floats(E, G));
}

cudaError_t vl2__cu_moe_router_route(const struct vl2__cu_route_args *a,
                                     const struct vl2__cu_bucket_args *b, float *logits,
                                     unsigned int *ticket, struct vl2__cu_stream st)
{
    const unsigned int blocks = (unsigned int)((a->E + RR_WARPS - 1) / RR_WARPS);
    const size_t smem = vl2__cu_moe_router_route_smem(a->E, a->n_group);
    if (a->n <= 0)
        return cudaSuccess;
    switch (a->rdtype) {
    case VL2_DTYPE_BF16:
        launch_k(router_route_kernel<__nv_bfloat16>, blocks, RR_WARPS * 32, smem, st, *a, *b,
                 logits, ticket);
        break;
    case VL2_DTYPE_F16:
        launch_k(router_route_kernel<__half>, blocks, RR_WARPS * 32, smem, st, *a, *b, logits,
                 ticket);
        break;
    default:
        launch_k(router_route_kernel<float>, blocks, RR_WARPS * 32, smem, st, *a, *b, logits,
                 ticket);
        break;
    }
    return cudaGetLastError();
}

/* ---- combination ---------------------------------------------------------- */

/* out[t] = sum_j w[t,j] y[pos[t,j]] + shared parts; the k weights and rows
 * are staged in shared memory first (no chain of dependent loads). */
static __global__ void combine_kernel(float *out, int64_t ldo, const float *y, int64_t ldy,
                                      const int32_t *pos, const float *w, int n, int k, int d,
                                      int n_parts)
{
    PDL_ENTRY();
    __shared__ float s_w[ROUTE_MAX_K];
    __shared__ int64_t s_row[ROUTE_MAX_K];
    const int t = blockIdx.x;
    if (threadIdx.x < k) {
        s_w[threadIdx.x] = w[t * k + threadIdx.x];
        s_row[threadIdx.x] = (int64_t)pos[t * k + threadIdx.x] * ldy;
    }
    __syncthreads();
    const int c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= d)
        return;
    float v = 0.0f;
#pragma unroll 8
    for (int j = 0; j < k; j++)
        v = fmaf(s_w[j], y[s_row[j] + c], v);
#pragma unroll 4
    for (int q = 0; q < n_parts; q++)
        v += y[((int64_t)n * k + (int64_t)q * n + t) * ldy + c];
    out[(int64_t)t * ldo + c] = v;
}

cudaError_t vl2__cu_moe_combine(float *out, int64_t ldo, const float *y, int64_t ldy,
                                const int32_t *pos, const float *w, int n, int k, int d,
                                int n_parts, struct vl2__cu_stream st)
{
    if (n <= 0)
        return cudaSuccess;
    launch_k(combine_kernel, dim3(n, (d + 127) / 128), 128, 0, st, out, ldo, y, ldy, pos, w, n,
             k, d, n_parts);
    return cudaGetLastError();
}

/* ---- tensor-core grouped product ---------------------------------------------- */

#define MM_BM 64
#define MM_BN 64
#define MM_BK 32
#define MM_BKP (MM_BK + 8)
#define MM_CP (MM_BN + 4)

template <bool DUAL>
static __global__ void __launch_bounds__(128) mma_kernel(const struct vl2__cu_mma_args a)
{
    PDL_ENTRY();
    constexpr int NB = DUAL ? 2 : 1;
    constexpr int AB_BYTES = (2 * MM_BM * MM_BKP + 2 * NB * MM_BN * MM_BKP) * 2;
    constexpr int C_BYTES = MM_BM * MM_CP * 4;
    constexpr int SM_BYTES = AB_BYTES > C_BYTES ? AB_BYTES : C_BYTES;
    __shared__ __align__(128) unsigned char smem[SM_BYTES];
    __nv_bfloat16 *As = (__nv_bfloat16 *)smem;                  /* [2][BM][BKP] */
    __nv_bfloat16 *Bs = As + 2 * MM_BM * MM_BKP;                 /* [2][NB][BN][BKP] */
    float *Cs = (float *)smem;                                   /* [BM][CP] */

    if (a.groups && (int)blockIdx.y >= *a.n_groups)
        return;
    const struct vl2__cu_group g = a.groups ? a.groups[blockIdx.y] : a.g0;
    const int m0 = blockIdx.z * MM_BM, n0 = blockIdx.x * MM_BN;
    if (m0 >= g.count || n0 >= g.n_out)
        return;
    const int tid = threadIdx.x, warp = tid >> 5;
    const int wm = warp >> 1, wn = warp & 1;
    const int K = g.K;
    const __nv_bfloat16 *A = (const __nv_bfloat16 *)a.a;
    const __nv_bfloat16 *W[2] = { (const __nv_bfloat16 *)g.wa, (const __nv_bfloat16 *)g.wb };

    /* each thread copies chunks tid and tid + 128 of each 64 x 32 tile */
    const __nv_bfloat16 *arow[2];
    const __nv_bfloat16 *brow[2][2];
    bool aval[2], bval[2];
    int crow[2], ckc[2];
#pragma unroll
    for (int i = 0; i < 2; i++) {
        const int ch = tid + i * 128;
        crow[i] = ch >> 2;
        ckc[i] = (ch & 3) * 8;
        const int m = m0 + crow[i];
        aval[i] = m < g.count;
        const int ir = aval[i] ? (g.in_map ? g.in_map[g.start + m] : g.in_base + m) : 0;
        arow[i] = A + (int64_t)ir * a.lda + g.x_off;
        const int nn = n0 + crow[i];
        bval[i] = nn < g.n_out;
#pragma unroll
        for (int b = 0; b < NB; b++)
            brow[b][i] = W[b] + (int64_t)(bval[i] ? nn : 0) * g.ldw;
    }
    auto load_stage = [&](int stage, int kt) {
        const int k0 = kt * MM_BK;
#pragma unroll
        for (int i = 0; i < 2; i++) {
            const int k = k0 + ckc[i];
            const bool kin = k < K;
            __nv_bfloat16 *da = As + (stage * MM_BM + crow[i]) * MM_BKP + ckc[i];
            cp_async16(da, kin && aval[i] ? arow[i] + k : A, kin && aval[i] ? 16 : 0);
#pragma unroll
            for (int b = 0; b < NB; b++) {
                __nv_bfloat16 *db = Bs + ((stage * NB + b) * MM_BN + crow[i]) * MM_BKP + ckc[i];
                cp_async16(db, kin && bval[i] ? brow[b][i] + k : W[b],
                           kin && bval[i] ? 16 : 0);
            }
        }
        cp_async_commit();
    };

    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2], acc2[2][2];
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 2; j++) {
            wmma::fill_fragment(acc[i][j], 0.0f);
            wmma::fill_fragment(acc2[i][j], 0.0f);
        }

    const int nk = (K + MM_BK - 1) / MM_BK;
    load_stage(0, 0);
    for (int kt = 0; kt < nk; kt++) {
        const int stage = kt & 1;
        if (kt + 1 < nk) {
            load_stage(stage ^ 1, kt + 1);
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < MM_BK; kk += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa[2];
            wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> fb[2];
#pragma unroll
            for (int i = 0; i < 2; i++)
                wmma::load_matrix_sync(fa[i],
                                       As + (stage * MM_BM + wm * 32 + i * 16) * MM_BKP + kk,
                                       MM_BKP);
#pragma unroll
            for (int j = 0; j < 2; j++)
                wmma::load_matrix_sync(
                    fb[j], Bs + ((stage * NB + 0) * MM_BN + wn * 32 + j * 16) * MM_BKP + kk,
                    MM_BKP);
#pragma unroll
            for (int i = 0; i < 2; i++)
#pragma unroll
                for (int j = 0; j < 2; j++)
                    wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
            if (DUAL) {
#pragma unroll
                for (int j = 0; j < 2; j++)
                    wmma::load_matrix_sync(
                        fb[j],
                        Bs + ((stage * NB + 1) * MM_BN + wn * 32 + j * 16) * MM_BKP + kk,
                        MM_BKP);
#pragma unroll
                for (int i = 0; i < 2; i++)
#pragma unroll
                    for (int j = 0; j < 2; j++)
                        wmma::mma_sync(acc2[i][j], fa[i], fb[j], acc2[i][j]);
            }
        }
        __syncthreads();
    }

#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 2; j++) {
            if (DUAL) {
#pragma unroll
                for (int e = 0; e < acc[i][j].num_elements; e++)
                    acc[i][j].x[e] = silu_f(acc[i][j].x[e]) * acc2[i][j].x[e];
            }
            wmma::store_matrix_sync(Cs + (wm * 32 + i * 16) * MM_CP + wn * 32 + j * 16,
                                    acc[i][j], MM_CP, wmma::mem_row_major);
        }
    __syncthreads();
    for (int idx = tid; idx < MM_BM * MM_BN; idx += 128) {
        const int r = idx / MM_BN, c = idx % MM_BN;
        if (m0 + r >= g.count || n0 + c >= g.n_out)
            continue;
        const int64_t o = (int64_t)(g.out_base + m0 + r) * a.ldo + g.y_off + n0 + c;
        float v = Cs[r * MM_CP + c];
        if (!DUAL && a.bias)
            v += ld_any(a.bias, a.bias_dtype, n0 + c);
        if (DUAL)
            ((__nv_bfloat16 *)a.out)[o] = __float2bfloat16(v);
        else
            ((float *)a.out)[o] = v;
    }
}

cudaError_t vl2__cu_mma_grouped(const struct vl2__cu_mma_args *a, int dual, int max_out,
                                int grid_groups, int max_rows, struct vl2__cu_stream st)
{
    if (max_out <= 0 || grid_groups <= 0 || max_rows <= 0)
        return cudaSuccess;
    dim3 grid((max_out + MM_BN - 1) / MM_BN, grid_groups, (max_rows + MM_BM - 1) / MM_BM);
    if (grid.z > 65535)
        return cudaErrorInvalidConfiguration;
    if (dual)
        launch_k(mma_kernel<true>, grid, 128, 0, st, *a);
    else
        launch_k(mma_kernel<false>, grid, 128, 0, st, *a);
    return cudaGetLastError();
}

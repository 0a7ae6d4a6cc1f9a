/* k-mla.cu - MLA attention for the two shapes that matter:
 *
 *  - decode (a few rows per sequence): every head of a row reads the same
 *    latent rows, so one block takes a run of keys of one sequence for all
 *    of its queries at once (heads x rows), from a tile in shared memory:
 *    scores with the warps splitting the key width and the lanes the keys,
 *    then the values with the threads splitting the latent width.  Partial
 *    results per key run go through the split combination of k-attn.cu.
 *
 *  - prefill (many rows of one sequence, eager steps): the latent cache is a
 *    plain matrix, so scores and values are two cuBLAS products (backend.cu)
 *    around the causal row softmax here; the new rows are stored into the
 *    cache first by mla_store_kernel.
 *
 * Everything in F32; the cache may be F32, BF16 or F16. */
#include <math.h>

#include "cuda-dev.cuh"
#include "cuda-impl.h"
#include "cuda-launch.cuh"

#define MD_THREADS 256
#define MD_WARPS (MD_THREADS / 32)
#define MD_KC 32              /* keys per tile: one per lane */

/* Floats between rows of the shared tiles: a whole number of float4, odd so
 * that 16-byte loads of 8 consecutive lanes from 8 rows hit distinct banks. */
static __host__ __device__ inline int md_stride4(int dk)
{
    const int n4 = (dk + 3) / 4;
    return (n4 & 1) ? n4 : n4 + 1;
}

/* Largest number of queries (rows x heads) the decode kernel takes. */
#define MD_MAX_Q 32

/* Queries per scoring pass (template QB of the kernel) for @nq queries in a
 * block: 4, 8 or 16. */
static __host__ __device__ inline int md_qb(int nq)
{
    return nq <= 4 ? 4 : nq <= 8 ? 8 : 16;
}

/* Query rows in shared memory: a whole number of scoring passes (the rows
 * past the queries are zeros, so that the passes need no per-query test). */
static __host__ __device__ inline int md_qrows(int nq)
{
    const int qb = md_qb(nq);
    return (nq + qb - 1) / qb * qb;
}

/* Shared memory of a block taking @nq queries. */
size_t vl2__cu_mla_decode_smem(int dk, int nq)
{
    const size_t st = 4 * (size_t)md_stride4(dk);
    if (dk <= 0 || nq <= 0 || nq > MD_MAX_Q)
        return 0;
    /* Q, K tile, score partials per warp, P, running max / sum / correction */
    return sizeof(float) * ((size_t)md_qrows(nq) * st + MD_KC * st +
                            (size_t)MD_WARPS * nq * MD_KC + (size_t)nq * MD_KC + 3 * (size_t)nq);
}

/* One new row of the batch (element d: d < acols ? ka[d] : kb[d - acols])
 * into the key tile row @dst, rounded as the cache keeps it, or into the cache
 * row @cdst.  Eight loads per lane before any store: a plain loop would wait
 * for each load in turn. */
template <typename CT>
static __device__ __forceinline__ void md_in_row(float *dst, CT *cdst, const float *ka,
                                                 const float *kb, int acols, int dk, int lane)
{
    for (int d0 = lane; d0 < dk; d0 += 32 * 8) {
        float v[8];
#pragma unroll
        for (int u = 0; u < 8; u++) {
            const int d = d0 + 32 * u;
            v[u] = d < dk ? (d < acols ? ka[d] : kb[d - acols]) : 0.0f;
        }
#pragma unroll
        for (int u = 0; u < 8; u++) {
            const int d = d0 + 32 * u;
            if (d < dk) {
                if (dst)
                    dst[d] = round_as<CT>(v[u]);
                else
                    elem<CT>::put(cdst, d, v[u]);
            }
        }
    }
}

/* grid (n_seqs * n_qg, n_split), MD_THREADS threads: block (x, z) takes the
 * queries [g * nq_max, (g + 1) * nq_max) of sequence x / n_qg (g = x % n_qg)
 * against the z-th run of its keys.  Splitting the queries of a sequence over
 * blocks shortens each block's work, which is what a decode step waits for
 * (at batch 1 the whole step is a few microseconds of arithmetic spread over
 * too few blocks).  NQT: queries per thread in the value pass (>= ceil(nq_max
 * / (MD_THREADS / dv4))); QB: queries per scoring pass (md_qb(nq_max)). */
template <typename CT, int NQT, int QB>
static __global__ void __launch_bounds__(MD_THREADS, 1) mla_decode_kernel(const struct vl2__cu_attn_args a,
                                                                       int nq_max, int n_qg)
{
    extern __shared__ float4 md_sm4[];
    const int dk = a.dk, dv = a.dv, H = a.n_head;
    const int n4 = (dk + 3) / 4, st4 = md_stride4(dk), st = 4 * st4;
    const int dv4 = (dv + 3) / 4;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;

    /* Before waiting for the kernels before: the batch metadata (uploaded
     * before the step's first kernel) and the cached rows of this block's keys
     * (written by earlier steps) can be read now; pull the rows into L2. */
    const int g = blockIdx.x % n_qg;
    const struct vl2__cu_seq s = a.seqs[blockIdx.x / n_qg];
    const int qbeg = g * nq_max;
    const int nq = min(nq_max, s.n_rows * H - qbeg);
    if (nq <= 0)
        return;   /* a sequence with fewer queries than the batch's most */
    const int z = blockIdx.y, S = a.n_split;
    const int L = s.n_past + s.n_rows;
    const int per = (L + S - 1) / S;
    const int ks = z * per, ke = min(L, ks + per);
    const CT *kb0 = (const CT *)s.kv + (int64_t)a.layer * s.cap * a.kv_row;
    {
        const int kc = min(ke, s.n_past) - ks;
        const int64_t bytes = (int64_t)kc * a.kv_row * (int64_t)sizeof(CT);
        const char *base = (const char *)(kb0 + (int64_t)ks * a.kv_row);
        for (int64_t off = (int64_t)tid * 128; off < bytes; off += (int64_t)MD_THREADS * 128)
            asm volatile("prefetch.global.L2 [%0];" ::"l"(base + off));
    }
    PDL_ENTRY();
    const int nqp = md_qrows(nq_max);
    float *Qs = (float *)md_sm4;
    float *Ks = Qs + (size_t)nqp * st;
    float *Red = Ks + (size_t)MD_KC * st;
    float *Ps = Red + (size_t)MD_WARPS * nq_max * MD_KC;
    float *Ms = Ps + (size_t)nq_max * MD_KC;
    float *Ls = Ms + nq_max;
    float *Cs = Ls + nq_max;

    /* the first block of a sequence stores its new rows; the others read them
     * from the inputs */
    if (z == 0 && g == 0) {
        CT *kd0 = (CT *)s.kv + (int64_t)a.layer * s.cap * a.kv_row;
        for (int t = warp; t < s.n_rows; t += MD_WARPS) {
            const int64_t in = s.row0 + t;
            md_in_row<CT>(NULL, kd0 + (int64_t)(s.n_past + t) * a.kv_row,
                          a.kn_a + in * a.kn_a_ld, a.kn_b + in * a.kn_b_ld, a.kn_a_cols, dk,
                          lane);
        }
    }
    /* queries: q index qbeg + i = t * H + h, rows q_hs apart when the heads
     * of a row follow each other (the absorbed queries always do) */
    if (a.q_ld == (int64_t)H * a.q_hs) {
        const float *q0 = a.q + (int64_t)s.row0 * a.q_ld + (int64_t)qbeg * a.q_hs;
        if (!tile_load_async<MD_THREADS>(Qs, st, q0, a.q_hs, nq, dk, tid))
            tile_load_nt<float, MD_THREADS>(Qs, st, q0, a.q_hs, nq, dk, tid);
    } else {
        for (int idx = tid; idx < nq * dk; idx += MD_THREADS) {
            const int i = idx / dk, d = idx - i * dk;
            const int t = (qbeg + i) / H, h = qbeg + i - t * H;
            Qs[i * st + d] = a.q[(int64_t)(s.row0 + t) * a.q_ld + (int64_t)h * a.q_hs + d];
        }
    }
    for (int idx = tid; idx < ((nq + QB - 1) / QB * QB - nq) * st; idx += MD_THREADS)
        Qs[nq * st + idx] = 0.0f;   /* query rows past nq: zeros */
    if (4 * n4 > dk) {   /* the columns past dk stay zero */
        const int pad = 4 * n4 - dk;
        for (int idx = tid; idx < (MD_KC + nq) * pad; idx += MD_THREADS) {
            const int j = idx / pad;
            float *row = j < MD_KC ? Ks + j * st : Qs + (j - MD_KC) * st;
            row[dk + idx - j * pad] = 0.0f;
        }
    }
    for (int i = tid; i < nq; i += MD_THREADS) {
        Ms[i] = -INFINITY;
        Ls[i] = 0.0f;
    }

    /* value pass layout: column group c (4 floats) of queries qv0 + m * qlanes */
    const int qlanes = MD_THREADS / dv4;
    const int c = tid % dv4, qv0 = tid / dv4;
    const bool vact = qv0 < qlanes;
    float4 acc[NQT];
#pragma unroll
    for (int m = 0; m < NQT; m++)
        acc[m] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);

    for (int kb = ks; kb < ke; kb += MD_KC) {
        const int nk = min(MD_KC, ke - kb);
        __syncthreads();   /* the previous tile is consumed (and Q, Ms are written) */
        {
            /* cached keys in one batched load, the batch's own rows from the inputs
             * (rounded as the cache keeps them).  Rows past the run keep whatever
             * they held: their scores are never used (the softmax selects -inf
             * for lanes >= nk, whatever the sum) and the value pass stops at nk. */
            const int n_cache = max(0, min(nk, s.n_past - kb));
            const CT *k0 = kb0 + (int64_t)kb * a.kv_row;
            if (!tile_load_async<MD_THREADS>(Ks, st, k0, a.kv_row, n_cache, dk, tid))
                tile_load_nt<CT, MD_THREADS>(Ks, st, k0, a.kv_row, n_cache, dk, tid);
            for (int j = n_cache + warp; j < nk; j += MD_WARPS) {
                const int64_t in = s.row0 + kb + j - s.n_past;
                md_in_row<CT>(Ks + j * st, NULL, a.kn_a + in * a.kn_a_ld,
                              a.kn_b + in * a.kn_b_ld, a.kn_a_cols, dk, lane);
            }
        }
        cp_async_commit();   /* the copies into Ks (and, the first time, Qs) */
        cp_async_wait<0>();
        __syncthreads();

        /* scores: lane = key, warp = every MD_WARPS-th float4 of the width */
        for (int q0 = 0; q0 < nq; q0 += QB) {
            float sc[QB];
#pragma unroll
            for (int m = 0; m < QB; m++)
                sc[m] = 0.0f;
            const float4 *kr = (const float4 *)(Ks + lane * st);
            const float4 *qb = (const float4 *)(Qs + q0 * st);
            for (int i4 = warp; i4 < n4; i4 += MD_WARPS) {
                /* all loads of the pass first: no branch, no wait between them
                 * (rows past nq are zeros and their sums are not stored) */
                const float4 kv = kr[i4];
                float4 qq[QB];
#pragma unroll
                for (int m = 0; m < QB; m++)
                    qq[m] = qb[m * st4 + i4];
#pragma unroll
                for (int m = 0; m < QB; m++) {
                    sc[m] = fmaf(qq[m].x, kv.x, sc[m]);
                    sc[m] = fmaf(qq[m].y, kv.y, sc[m]);
                    sc[m] = fmaf(qq[m].z, kv.z, sc[m]);
                    sc[m] = fmaf(qq[m].w, kv.w, sc[m]);
                }
            }
#pragma unroll
            for (int m = 0; m < QB; m++)
                if (q0 + m < nq)
                    Red[(warp * nq_max + q0 + m) * MD_KC + lane] = sc[m];
        }
        __syncthreads();

        /* online softmax: a warp per query, a lane per key */
        for (int i = warp; i < nq; i += MD_WARPS) {
            float v = 0.0f;
#pragma unroll
            for (int w = 0; w < MD_WARPS; w++)
                v += Red[(w * nq_max + i) * MD_KC + lane];
            const int qpos = s.n_past + (qbeg + i) / H, key = kb + lane;
            const bool ok = lane < nk && key <= qpos;
            const float sv = ok ? v * a.scale : -INFINITY;
            const float mold = Ms[i];
            const float mnew = fmaxf(mold, warp_max(sv));
            const float p = ok ? expf(sv - mnew) : 0.0f;
            const float corr = mold == -INFINITY ? 0.0f : expf(mold - mnew);
            const float sum = warp_sum(p);
            Ps[i * MD_KC + lane] = p;
            __syncwarp();
            if (lane == 0) {
                Ls[i] = Ls[i] * corr + sum;
                Ms[i] = mnew;
                Cs[i] = corr;
            }
        }
        __syncthreads();

        /* values: the latent rows again (the first dv columns of the tile) */
        if (vact) {
#pragma unroll
            for (int m = 0; m < NQT; m++) {
                const int i = qv0 + m * qlanes;
                if (i < nq) {
                    const float cr = Cs[i];
                    acc[m].x *= cr;
                    acc[m].y *= cr;
                    acc[m].z *= cr;
                    acc[m].w *= cr;
                }
            }
            for (int j = 0; j < nk; j++) {
                const float4 vv = ((const float4 *)(Ks + j * st))[c];
#pragma unroll
                for (int m = 0; m < NQT; m++) {
                    const int i = qv0 + m * qlanes;
                    if (i < nq) {
                        const float p = Ps[i * MD_KC + j];
                        acc[m].x = fmaf(p, vv.x, acc[m].x);
                        acc[m].y = fmaf(p, vv.y, acc[m].y);
                        acc[m].z = fmaf(p, vv.z, acc[m].z);
                        acc[m].w = fmaf(p, vv.w, acc[m].w);
                    }
                }
            }
        }
    }
    cp_async_commit();   /* none left in flight when the loop did not run */
    cp_async_wait<0>();
    __syncthreads();

    if (vact) {
#pragma unroll
        for (int m = 0; m < NQT; m++) {
            const int i = qv0 + m * qlanes;
            if (i >= nq)
                continue;
            const int t = (qbeg + i) / H, h = qbeg + i - t * H;
            const int64_t row = s.row0 + t;
            float *dst;
            float f = 1.0f;
            if (S == 1) {
                dst = a.out + row * a.out_ld + (int64_t)h * a.out_hs;
                f = Ls[i] > 0.0f ? 1.0f / Ls[i] : 0.0f;
            } else {
                dst = a.part_o + ((row * H + h) * S + z) * dv;
            }
            const float4 o = make_float4(acc[m].x * f, acc[m].y * f, acc[m].z * f,
                                         acc[m].w * f);
            if (4 * c + 3 < dv && ((uintptr_t)(dst + 4 * c) & 15) == 0) {
                *(float4 *)(dst + 4 * c) = o;
            } else {
                const float ov[4] = { o.x, o.y, o.z, o.w };
#pragma unroll
                for (int e = 0; e < 4; e++)
                    if (4 * c + e < dv)
                        dst[4 * c + e] = ov[e];
            }
        }
    }
    if (S > 1) {
        for (int i = tid; i < nq; i += MD_THREADS) {
            const int t = (qbeg + i) / H, h = qbeg + i - t * H;
            const int64_t pb = ((int64_t)(s.row0 + t) * H + h) * S + z;
            a.part_ml[pb * 2] = Ms[i];
            a.part_ml[pb * 2 + 1] = Ls[i];
        }
    }
}

/* The instances for each cache type: NQT never exceeds the queries of a
 * block, nor so QB. */
#define MD_FOR_EACH(X, CT)                                                                        \
    X(CT, 1, 4) X(CT, 2, 4) X(CT, 4, 4)                                                           \
    X(CT, 1, 8) X(CT, 2, 8) X(CT, 4, 8) X(CT, 8, 8)                                               \
    X(CT, 1, 16) X(CT, 2, 16) X(CT, 4, 16) X(CT, 8, 16) X(CT, 16, 16)

#define MD_ATTR(CT, NQT, QB)                                                                      \
    if (cudaFuncSetAttribute(mla_decode_kernel<CT, NQT, QB>,                                      \
                             cudaFuncAttributeMaxDynamicSharedMemorySize,                         \
                             max_smem) != cudaSuccess)                                            \
        return -1;

int vl2__cu_mla_init(int max_smem)
{
    MD_FOR_EACH(MD_ATTR, float)
    MD_FOR_EACH(MD_ATTR, __nv_bfloat16)
    MD_FOR_EACH(MD_ATTR, __half)
    return 0;
}

/* Queries per thread in the value pass for @nq queries of width @dv; 0 when
 * the kernel does not take the shape. */
int vl2__cu_mla_decode_nqt(int nq, int dv)
{
    const int dv4 = (dv + 3) / 4;
    int need, nqt;
    if (nq <= 0 || nq > MD_MAX_Q || dv4 <= 0 || dv4 > MD_THREADS)
        return 0;
    need = (nq + MD_THREADS / dv4 - 1) / (MD_THREADS / dv4);
    for (nqt = 1; nqt < need; nqt *= 2)
        ;
    return nqt <= 16 ? nqt : 0;
}

#define MD_CASE(CT, NQT, QB)                                                                      \
    if (nqt == NQT && qb == QB) {                                                                 \
        launch_k(mla_decode_kernel<CT, NQT, QB>, grid, MD_THREADS, smem, st, *a, nq_max, n_qg);   \
        return cudaGetLastError();                                                                \
    }

template <typename CT>
static cudaError_t md_launch(const struct vl2__cu_attn_args *a, int nqt, int qb, int nq_max,
                             int n_qg, dim3 grid, size_t smem, struct vl2__cu_stream st)
{
    MD_FOR_EACH(MD_CASE, CT)
    return cudaErrorInvalidValue;
}

cudaError_t vl2__cu_mla_decode(const struct vl2__cu_attn_args *a, int kv_dtype, int n_seqs,
                               int nq_max, int q_group, struct vl2__cu_stream st)
{
    const int qg = q_group > 0 && q_group < nq_max ? q_group : nq_max;
    const int n_qg = (nq_max + qg - 1) / qg;
    const int nqt = vl2__cu_mla_decode_nqt(qg, a->dv);
    const size_t smem = vl2__cu_mla_decode_smem(a->dk, qg);
    if (n_seqs <= 0)
        return cudaSuccess;
    if (!nqt || !smem)
        return cudaErrorInvalidValue;
    dim3 grid(n_seqs * n_qg, a->n_split);
    switch (kv_dtype) {
    case VL2_DTYPE_BF16:
        return md_launch<__nv_bfloat16>(a, nqt, md_qb(qg), qg, n_qg, grid, smem, st);
    case VL2_DTYPE_F16: return md_launch<__half>(a, nqt, md_qb(qg), qg, n_qg, grid, smem, st);
    default: return md_launch<float>(a, nqt, md_qb(qg), qg, n_qg, grid, smem, st);
    }
}

/* ---- prefill: cache store and causal softmax -------------------------------------- */

/* Rows [0, n) of the inputs into the cache rows [n_past, n_past + n) of one
 * layer (@dst: that layer's first row). */
template <typename CT>
static __global__ void mla_store_kernel(CT *dst, int64_t kv_row, const float *a, int64_t lda,
                                        int acols, const float *b, int64_t ldb, int bcols, int n)
{
    PDL_ENTRY();
    const int cols = acols + bcols;
    const int64_t total = (int64_t)n * cols;
    for (int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += (int64_t)gridDim.x * blockDim.x) {
        const int64_t t = idx / cols;
        const int d = (int)(idx - t * cols);
        const float v = d < acols ? a[t * lda + d] : b[t * ldb + d - acols];
        elem<CT>::put(dst, t * kv_row + d, v);
    }
}

cudaError_t vl2__cu_mla_store(void *dst, int kv_dtype, int64_t kv_row, const float *a,
                              int64_t lda, int acols, const float *b, int64_t ldb, int bcols,
                              int n, struct vl2__cu_stream st)
{
    const int64_t total = (int64_t)n * (acols + bcols);
    unsigned int blocks;
    if (total <= 0)
        return cudaSuccess;
    blocks = (unsigned int)((total + 255) / 256 < 1024 ? (total + 255) / 256 : 1024);
    switch (kv_dtype) {
    case VL2_DTYPE_BF16:
        launch_k(mla_store_kernel<__nv_bfloat16>, blocks, 256, 0, st, (__nv_bfloat16 *)dst,
                 kv_row, a, lda, acols, b, ldb, bcols, n);
        break;
    case VL2_DTYPE_F16:
        launch_k(mla_store_kernel<__half>, blocks, 256, 0, st, (__half *)dst, kv_row, a, lda,
                 acols, b, ldb, bcols, n);
        break;
    default:
        launch_k(mla_store_kernel<float>, blocks, 256, 0, st, (float *)dst, kv_row, a, lda,
                 acols, b, ldb, bcols, n);
        break;
    }
    return cudaGetLastError();
}

/* Row r of @s (ld @ld) is query row t0 + r / H of a sequence with n_past cached
 * tokens: it sees keys [0, n_past + t0 + r / H]; softmax of scale * scores
 * over those, zero past them. */
static __global__ void softmax_causal_kernel(float *s, int64_t ld, int H, int t0, int n_past,
                                             float scale)
{
    PDL_ENTRY();
    __shared__ float sh[32];
    float *r = s + (int64_t)blockIdx.x * ld;
    const int lim = n_past + t0 + (int)(blockIdx.x / H) + 1;
    float m = -INFINITY;

    for (int c = threadIdx.x; c < lim; c += blockDim.x)
        m = fmaxf(m, r[c] * scale);
    m = block_max(m, sh);
    float sum = 0.0f;
    for (int c = threadIdx.x; c < lim; c += blockDim.x) {
        const float e = expf(r[c] * scale - m);
        r[c] = e;
        sum += e;
    }
    sum = block_sum(sum, sh);
    const float inv = 1.0f / sum;
    for (int c = threadIdx.x; c < (int)ld; c += blockDim.x)
        r[c] = c < lim ? r[c] * inv : 0.0f;
}

cudaError_t vl2__cu_softmax_causal(float *s, int64_t rows, int64_t ld, int H, int t0,
                                   int n_past, float scale, struct vl2__cu_stream st)
{
    if (rows <= 0)
        return cudaSuccess;
    launch_k(softmax_causal_kernel, (unsigned int)rows, 256, 0, st, s, ld, H, t0, n_past, scale);
    return cudaGetLastError();
}

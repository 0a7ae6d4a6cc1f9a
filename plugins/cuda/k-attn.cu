/* k-attn.cu - causal attention over the KV caches of the current batch,
 * for MHA (grouped queries) and MLA (absorbed: the latent cache is both the
 * keys, with the rotated k_pe appended, and the values), split over the key
 * axis for decode (flash-decoding) and combined by a second kernel.
 * Everything in F32; the cache may be F32, BF16 or F16. */
#include <math.h>

#include "cuda-dev.cuh"
#include "cuda-impl.h"
#include "cuda-launch.cuh"

#define QT VL2_CU_ATTN_QT
#define KT VL2_CU_ATTN_KT
#define ATT_THREADS 128
#define ATT_QPW (QT / (ATT_THREADS / 32))   /* queries per warp: 4 */

static __host__ __device__ inline int k_stride(int dk)
{
    return (dk & 1) ? dk : dk + 1;
}

template <typename CT>
static __device__ __forceinline__ void tile_load(float *dst, int dst_ld, const CT *src,
                                                 int64_t src_ld, int rows, int cols, int tid)
{
    tile_load_nt<CT, ATT_THREADS>(dst, dst_ld, src, src_ld, rows, cols, tid);
}

template <typename CT, int DVL, bool VINK>
static __global__ void __launch_bounds__(ATT_THREADS) attn_kernel(const struct vl2__cu_attn_args a)
{
    PDL_ENTRY();
    extern __shared__ float sm[];
    const int dk = a.dk, dv = a.dv, kst = k_stride(dk);
    const int vst = VINK ? kst : dv;
    float *Qs = sm;
    float *Ks = Qs + QT * dk;
    float *Vs = VINK ? Ks : Ks + KT * kst;
    const struct vl2__cu_seq s = a.seqs[blockIdx.x];
    const int kvh = blockIdx.y / a.qt_per_kvh, qt = blockIdx.y % a.qt_per_kvh;
    const int z = blockIdx.z;
    const int nq = s.n_rows * a.group;
    const int q0 = qt * QT;
    if (q0 >= nq || (a.skip_rows > 0 && s.n_rows >= a.skip_rows))
        return;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;

    {
        /* the tile's queries: rows of q (one per head and batch row); slots past nq
         * are left as they are (their scores are masked) */
        const int nvalid = min(QT, nq - q0), total = nvalid * dk;
        for (int base = tid; base < total; base += TL_BATCH * ATT_THREADS) {
            float v[TL_BATCH];
#pragma unroll
            for (int u = 0; u < TL_BATCH; u++) {
                const int idx = base + u * ATT_THREADS;
                if (idx < total) {
                    const int i = idx / dk, qi = q0 + i;
                    const int t = qi / a.group, h = kvh * a.group + qi % a.group;
                    v[u] = a.q[(int64_t)(s.row0 + t) * a.q_ld + (int64_t)h * a.q_hs + idx -
                               i * dk];
                }
            }
#pragma unroll
            for (int u = 0; u < TL_BATCH; u++) {
                const int idx = base + u * ATT_THREADS;
                if (idx < total)
                    Qs[idx] = v[u];
            }
        }
    }
    const int qlast = min(q0 + QT, nq) - 1;
    const int L = s.n_past + qlast / a.group + 1;
    int per = (L + a.n_split - 1) / a.n_split;
    per = ((per + KT - 1) / KT) * KT;
    const int ks = z * per, ke = min(L, ks + per);

    bool qv[ATT_QPW], wact = false;
    int qpos[ATT_QPW];
    float mrun[ATT_QPW], lrun[ATT_QPW], acc[ATT_QPW][DVL];
#pragma unroll
    for (int m = 0; m < ATT_QPW; m++) {
        const int qi = q0 + warp + 4 * m;
        qv[m] = qi < nq;
        wact = wact || qv[m];
        qpos[m] = s.n_past + qi / a.group;
        mrun[m] = -INFINITY;
        lrun[m] = 0.0f;
#pragma unroll
        for (int e = 0; e < DVL; e++)
            acc[m][e] = 0.0f;
    }
    CT *kb0 = (CT *)s.kv + (int64_t)a.layer * a.kv_nblk * s.cap * a.kv_row +
              (int64_t)kvh * a.k_hs;
    CT *vb0 = (CT *)s.kv + ((int64_t)a.layer * a.kv_nblk + a.v_blk) * s.cap * a.kv_row +
              (int64_t)kvh * a.v_hs;

    /* the new rows go into the cache (one block per sequence and kv head);
     * every block reads them from the inputs, so no block waits for it */
    if (qt == 0 && z == 0) {
        for (int t = warp; t < s.n_rows; t += ATT_THREADS / 32) {
            const int64_t in = (int64_t)(s.row0 + t);
            CT *kd = kb0 + (int64_t)(s.n_past + t) * a.kv_row;
            const float *ka = a.kn_a + in * a.kn_a_ld + (int64_t)kvh * a.k_hs;
#pragma unroll 8
            for (int d = lane; d < dk; d += 32)
                elem<CT>::put(kd, d, d < a.kn_a_cols ? ka[d]
                                                     : a.kn_b[in * a.kn_b_ld + d - a.kn_a_cols]);
            if (!VINK) {
                CT *vd = vb0 + (int64_t)(s.n_past + t) * a.kv_row;
                const float *va = a.vn + in * a.vn_ld + (int64_t)kvh * a.v_hs;
#pragma unroll 8
                for (int d = lane; d < dv; d += 32)
                    elem<CT>::put(vd, d, va[d]);
            }
        }
    }
    __syncthreads();

    for (int kb = ks; kb < ke; kb += KT) {
        const int nkeys = min(KT, ke - kb);
        /* rows of the tile in the cache: everything before this batch's own rows */
        const int n_cache = max(0, min(nkeys, s.n_past - kb));
        tile_load<CT>(Ks, kst, kb0 + (int64_t)kb * a.kv_row, a.kv_row, n_cache, dk, tid);
        if (!VINK)
            tile_load<CT>(Vs, dv, vb0 + (int64_t)kb * a.kv_row, a.kv_row, n_cache, dv, tid);
        for (int j = n_cache + warp; j < KT; j += ATT_THREADS / 32) {
            float *dst = Ks + j * kst;
            float *dv_ = Vs + j * dv;
            if (j >= nkeys) {
                for (int d = lane; d < dk; d += 32)
                    dst[d] = 0.0f;
                if (!VINK) {
                    for (int d = lane; d < dv; d += 32)
                        dv_[d] = 0.0f;
                }
            } else {
                /* a row of this batch: from the inputs, rounded as the cache stores it */
                const int64_t in = s.row0 + kb + j - s.n_past;
                const float *ka = a.kn_a + in * a.kn_a_ld + (int64_t)kvh * a.k_hs;
#pragma unroll 4
                for (int d = lane; d < dk; d += 32) {
                    const float v = d < a.kn_a_cols ? ka[d]
                                                    : a.kn_b[in * a.kn_b_ld + d - a.kn_a_cols];
                    dst[d] = round_as<CT>(v);
                }
                if (!VINK) {
                    const float *va = a.vn + in * a.vn_ld + (int64_t)kvh * a.v_hs;
#pragma unroll 4
                    for (int d = lane; d < dv; d += 32)
                        dv_[d] = round_as<CT>(va[d]);
                }
            }
        }
        __syncthreads();
        if (wact) {   /* a warp with no query in the tile only helps loading */
            float sc[ATT_QPW];
#pragma unroll
            for (int m = 0; m < ATT_QPW; m++)
                sc[m] = 0.0f;
            const float *kr = Ks + lane * kst;
            if (qv[1]) {
#pragma unroll 4
                for (int d = 0; d < dk; d++) {
                    const float kv = kr[d];
#pragma unroll
                    for (int m = 0; m < ATT_QPW; m++)
                        sc[m] = fmaf(Qs[(warp + 4 * m) * dk + d], kv, sc[m]);
                }
            } else {
                /* only the first query slot of this warp is used (decode) */
#pragma unroll 4
                for (int d = 0; d < dk; d++)
                    sc[0] = fmaf(Qs[warp * dk + d], kr[d], sc[0]);
            }
            float p[ATT_QPW];
#pragma unroll
            for (int m = 0; m < ATT_QPW; m++) {
                const int key = kb + lane;
                const bool ok = qv[m] && lane < nkeys && key <= qpos[m];
                const float sv = ok ? sc[m] * a.scale : -INFINITY;
                const float mx = warp_max(sv);
                const float mnew = fmaxf(mrun[m], mx);
                float corr = 1.0f;
                if (mnew == -INFINITY) {
                    p[m] = 0.0f;
                } else {
                    p[m] = ok ? expf(sv - mnew) : 0.0f;
                    corr = expf(mrun[m] - mnew);
                }
                lrun[m] = lrun[m] * corr + warp_sum(p[m]);
                mrun[m] = mnew;
#pragma unroll
                for (int e = 0; e < DVL; e++)
                    acc[m][e] *= corr;
            }
            for (int j = 0; j < nkeys; j++) {
                const float *vr = Vs + j * vst;
                float vv[DVL];
#pragma unroll
                for (int e = 0; e < DVL; e++) {
                    const int d = lane + 32 * e;
                    vv[e] = d < dv ? vr[d] : 0.0f;
                }
#pragma unroll
                for (int m = 0; m < ATT_QPW; m++) {
                    if (!qv[m])
                        continue;
                    const float pj = __shfl_sync(0xffffffffu, p[m], j);
#pragma unroll
                    for (int e = 0; e < DVL; e++)
                        acc[m][e] = fmaf(pj, vv[e], acc[m][e]);
                }
            }
        }
        __syncthreads();
    }

#pragma unroll
    for (int m = 0; m < ATT_QPW; m++) {
        if (!qv[m])
            continue;
        const int qi = q0 + warp + 4 * m;
        const int t = qi / a.group, r = qi % a.group;
        const int h = kvh * a.group + r;
        const int64_t row = s.row0 + t;
        if (a.n_split == 1) {
            const float inv = lrun[m] > 0.0f ? 1.0f / lrun[m] : 0.0f;
#pragma unroll
            for (int e = 0; e < DVL; e++) {
                const int d = lane + 32 * e;
                if (d < dv)
                    a.out[row * a.out_ld + (int64_t)h * a.out_hs + d] = acc[m][e] * inv;
            }
        } else {
            const int64_t pb = (row * a.n_head + h) * a.n_split + z;
#pragma unroll
            for (int e = 0; e < DVL; e++) {
                const int d = lane + 32 * e;
                if (d < dv)
                    a.part_o[pb * dv + d] = acc[m][e];
            }
            if (lane == 0) {
                a.part_ml[pb * 2] = mrun[m];
                a.part_ml[pb * 2 + 1] = lrun[m];
            }
        }
    }
}

size_t vl2__cu_attn_smem(int dk, int dv, int v_in_k)
{
    if (dk <= 0 || dv <= 0 || dv > 512 || (v_in_k && dv > dk))
        return 0;
    return sizeof(float) *
           ((size_t)QT * dk + (size_t)KT * k_stride(dk) + (v_in_k ? 0 : (size_t)KT * dv));
}

template <typename CT, int DVL, bool VINK>
static cudaError_t attn_attr(int max_smem)
{
    return cudaFuncSetAttribute(attn_kernel<CT, DVL, VINK>,
                                cudaFuncAttributeMaxDynamicSharedMemorySize, max_smem);
}

template <typename CT, bool VINK>
static cudaError_t attn_attr_all(int max_smem)
{
    cudaError_t e;
    if ((e = attn_attr<CT, 1, VINK>(max_smem)) != cudaSuccess ||
        (e = attn_attr<CT, 2, VINK>(max_smem)) != cudaSuccess ||
        (e = attn_attr<CT, 4, VINK>(max_smem)) != cudaSuccess ||
        (e = attn_attr<CT, 8, VINK>(max_smem)) != cudaSuccess)
        return e;
    return attn_attr<CT, 16, VINK>(max_smem);
}

/* Allow the attention kernels the device's largest shared-memory block. */
int vl2__cu_attn_init(void)
{
    int dev, max_smem;

    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) !=
            cudaSuccess)
        return -1;
    if (attn_attr_all<float, false>(max_smem) != cudaSuccess ||
        attn_attr_all<float, true>(max_smem) != cudaSuccess ||
        attn_attr_all<__nv_bfloat16, false>(max_smem) != cudaSuccess ||
        attn_attr_all<__nv_bfloat16, true>(max_smem) != cudaSuccess ||
        attn_attr_all<__half, false>(max_smem) != cudaSuccess ||
        attn_attr_all<__half, true>(max_smem) != cudaSuccess)
        return -1;
    return max_smem;
}

template <typename CT, int DVL>
static cudaError_t attn_launch_v(const struct vl2__cu_attn_args *a, int v_in_k, dim3 grid,
                                 size_t smem, struct vl2__cu_stream st)
{
    if (v_in_k)
        launch_k(attn_kernel<CT, DVL, true>, grid, ATT_THREADS, smem, st, *a);
    else
        launch_k(attn_kernel<CT, DVL, false>, grid, ATT_THREADS, smem, st, *a);
    return cudaGetLastError();
}

template <typename CT>
static cudaError_t attn_launch_t(const struct vl2__cu_attn_args *a, int v_in_k, dim3 grid,
                                 size_t smem, struct vl2__cu_stream st)
{
    const int dvl = (a->dv + 31) / 32;
    if (dvl <= 1)
        return attn_launch_v<CT, 1>(a, v_in_k, grid, smem, st);
    if (dvl <= 2)
        return attn_launch_v<CT, 2>(a, v_in_k, grid, smem, st);
    if (dvl <= 4)
        return attn_launch_v<CT, 4>(a, v_in_k, grid, smem, st);
    if (dvl <= 8)
        return attn_launch_v<CT, 8>(a, v_in_k, grid, smem, st);
    return attn_launch_v<CT, 16>(a, v_in_k, grid, smem, st);
}

cudaError_t vl2__cu_attn(const struct vl2__cu_attn_args *a, int kv_dtype, int n_seqs,
                         struct vl2__cu_stream st)
{
    const int v_in_k = a->kv_nblk == 1;
    const size_t smem = vl2__cu_attn_smem(a->dk, a->dv, v_in_k);
    if (n_seqs <= 0)
        return cudaSuccess;
    dim3 grid(n_seqs, a->n_kv * a->qt_per_kvh, a->n_split);
    switch (kv_dtype) {
    case VL2_DTYPE_BF16: return attn_launch_t<__nv_bfloat16>(a, v_in_k, grid, smem, st);
    case VL2_DTYPE_F16: return attn_launch_t<__half>(a, v_in_k, grid, smem, st);
    default: return attn_launch_t<float>(a, v_in_k, grid, smem, st);
    }
}

/* ---- split combination ------------------------------------------------------ */

#define ATT_MAX_SPLIT 64

#define CB_THREADS 128   /* value columns per block */

/* Merge the n_split partial results of one (row, head) for CB_THREADS value
 * columns: every partial value of the thread's column is loaded at once, with
 * the splits' running max and sum (one round trip), then weighted.  SMAX:
 * the largest n_split the instance takes. */
template <int SMAX>
static __global__ void __launch_bounds__(CB_THREADS) attn_combine_kernel(const struct vl2__cu_attn_args a)
{
    PDL_ENTRY();
    __shared__ float s_m[SMAX], s_l[SMAX];
    const int64_t row = blockIdx.x;
    const int h = blockIdx.y, S = a.n_split, dv = a.dv;
    const int d = blockIdx.z * CB_THREADS + threadIdx.x;
    const int64_t pb = (row * a.n_head + h) * S;
    float v[SMAX];

    if (a.skip_rows > 0 && a.seqs[a.rows[row].seq].n_rows >= a.skip_rows)
        return;
#pragma unroll
    for (int z = 0; z < SMAX; z++)
        v[z] = z < S && d < dv ? a.part_o[(pb + z) * dv + d] : 0.0f;
    if (threadIdx.x < S) {
        s_m[threadIdx.x] = a.part_ml[(pb + threadIdx.x) * 2];
        s_l[threadIdx.x] = a.part_ml[(pb + threadIdx.x) * 2 + 1];
    }
    __syncthreads();
    if (d >= dv)
        return;
    float M = -INFINITY;
    for (int z = 0; z < S; z++)
        M = fmaxf(M, s_m[z]);
    float L = 0.0f, o = 0.0f;
#pragma unroll
    for (int z = 0; z < SMAX; z++) {
        if (z < S) {
            const float w = s_m[z] == -INFINITY ? 0.0f : expf(s_m[z] - M);
            L = fmaf(w, s_l[z], L);
            o = fmaf(w, v[z], o);
        }
    }
    a.out[row * a.out_ld + (int64_t)h * a.out_hs + d] = L > 0.0f ? o / L : 0.0f;
}

cudaError_t vl2__cu_attn_combine(const struct vl2__cu_attn_args *a, int n_rows,
                                 struct vl2__cu_stream st)
{
    const int S = a->n_split;
    if (n_rows <= 0)
        return cudaSuccess;
    if (S > ATT_MAX_SPLIT || S > CB_THREADS)
        return cudaErrorInvalidValue;
    dim3 grid(n_rows, a->n_head, (a->dv + CB_THREADS - 1) / CB_THREADS);
    if (S <= 8)
        launch_k(attn_combine_kernel<8>, grid, CB_THREADS, 0, st, *a);
    else if (S <= 16)
        launch_k(attn_combine_kernel<16>, grid, CB_THREADS, 0, st, *a);
    else if (S <= 32)
        launch_k(attn_combine_kernel<32>, grid, CB_THREADS, 0, st, *a);
    else
        launch_k(attn_combine_kernel<64>, grid, CB_THREADS, 0, st, *a);
    return cudaGetLastError();
}

/* ---- MLA query absorption --------------------------------------------------------- */

#define QA_WARPS 8
#define QA_COLS 64      /* latent columns per block: 2 per lane */

/* qcat[t, h, c] = sum_i q[t, h*(nope+rope) + i] * kvb[h*(nope+v) + i][c] for
 * c in this block's 64 columns; the i range is split over the 8 warps.  The
 * first block of each head also copies the rotated part:
 * qcat[t, h, R + j] = q[t, h*(nope+rope) + nope + j]. */
template <typename WT, int NT>
static __global__ void __launch_bounds__(QA_WARPS * 32)
mla_qabs_kernel(float *qcat, const float *q, int64_t ldq, const WT *kvb, int64_t ldb, int n,
                int H, int nope, int rope, int vdim, int R)
{
    PDL_ENTRY();
    __shared__ float red[QA_WARPS][NT][QA_COLS];
    const int h = blockIdx.x;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int c0 = blockIdx.y * QA_COLS + lane * 2;
    const int qh = nope + rope;
    const int per = (nope + QA_WARPS - 1) / QA_WARPS;
    const int i0 = warp * per, i1 = min(nope, i0 + per);
    const WT *w = kvb + (int64_t)h * (nope + vdim) * ldb;

    if (blockIdx.y == 0) {
        for (int idx = threadIdx.x; idx < n * rope; idx += blockDim.x) {
            const int t = idx / rope, j = idx - t * rope;
            qcat[((int64_t)t * H + h) * (R + rope) + R + j] =
                q[(int64_t)t * ldq + (int64_t)h * qh + nope + j];
        }
    }
    for (int t0 = 0; t0 < n; t0 += NT) {
        float acc[NT][2];
#pragma unroll
        for (int t = 0; t < NT; t++)
            acc[t][0] = acc[t][1] = 0.0f;
#pragma unroll 16
        for (int i = i0; i < i1; i++) {
            const WT *wr = w + (int64_t)i * ldb;
            const float w0 = c0 < R ? elem<WT>::get(wr, c0) : 0.0f;
            const float w1 = c0 + 1 < R ? elem<WT>::get(wr, c0 + 1) : 0.0f;
#pragma unroll
            for (int t = 0; t < NT; t++) {
                const int tt = min(t0 + t, n - 1);
                const float qv = q[(int64_t)tt * ldq + (int64_t)h * qh + i];
                acc[t][0] = fmaf(qv, w0, acc[t][0]);
                acc[t][1] = fmaf(qv, w1, acc[t][1]);
            }
        }
#pragma unroll
        for (int t = 0; t < NT; t++) {
            red[warp][t][lane * 2] = acc[t][0];
            red[warp][t][lane * 2 + 1] = acc[t][1];
        }
        __syncthreads();
        for (int idx = threadIdx.x; idx < NT * QA_COLS; idx += blockDim.x) {
            const int t = idx / QA_COLS, c = idx % QA_COLS;
            const int col = blockIdx.y * QA_COLS + c;
            if (t0 + t < n && col < R) {
                float v = 0.0f;
#pragma unroll
                for (int ww = 0; ww < QA_WARPS; ww++)
                    v += red[ww][t][c];
                qcat[((int64_t)(t0 + t) * H + h) * (R + rope) + col] = v;
            }
        }
        __syncthreads();
    }
}

template <typename WT>
static cudaError_t qabs_launch(float *qcat, const float *q, int64_t ldq, const void *kvb,
                               int64_t ldb, int n, int H, int nope, int rope, int vdim, int R,
                               struct vl2__cu_stream st)
{
    dim3 grid(H, (R + QA_COLS - 1) / QA_COLS);
    const WT *w = (const WT *)kvb;
    if (n <= 1)
        launch_k(mla_qabs_kernel<WT, 1>, grid, QA_WARPS * 32, 0, st, qcat, q, ldq, w, ldb, n, H, nope,
                                                                rope, vdim, R);
    else if (n <= 2)
        launch_k(mla_qabs_kernel<WT, 2>, grid, QA_WARPS * 32, 0, st, qcat, q, ldq, w, ldb, n, H, nope,
                                                                rope, vdim, R);
    else if (n <= 4)
        launch_k(mla_qabs_kernel<WT, 4>, grid, QA_WARPS * 32, 0, st, qcat, q, ldq, w, ldb, n, H, nope,
                                                                rope, vdim, R);
    else
        launch_k(mla_qabs_kernel<WT, 8>, grid, QA_WARPS * 32, 0, st, qcat, q, ldq, w, ldb, n, H, nope,
                                                                rope, vdim, R);
    return cudaGetLastError();
}

cudaError_t vl2__cu_mla_qabs(float *qcat, const float *q, int64_t ldq, const void *kvb,
                             int64_t ldb, int wdtype, int n, int H, int nope, int rope,
                             int vdim, int R, struct vl2__cu_stream st)
{
    if (n <= 0)
        return cudaSuccess;
    switch (wdtype) {
    case VL2_DTYPE_BF16:
        return qabs_launch<__nv_bfloat16>(qcat, q, ldq, kvb, ldb, n, H, nope, rope, vdim, R, st);
    case VL2_DTYPE_F16:
        return qabs_launch<__half>(qcat, q, ldq, kvb, ldb, n, H, nope, rope, vdim, R, st);
    default:
        return qabs_launch<float>(qcat, q, ldq, kvb, ldb, n, H, nope, rope, vdim, R, st);
    }
}

static __global__ void mla_qpe_kernel(float *qcat, const float *q, int64_t ldq, int H,
                                      int nope, int rope, int R)
{
    PDL_ENTRY();
    const int t = blockIdx.x;
    for (int idx = threadIdx.x; idx < H * rope; idx += blockDim.x) {
        const int h = idx / rope, j = idx % rope;
        qcat[((int64_t)t * H + h) * (R + rope) + R + j] =
            q[(int64_t)t * ldq + (int64_t)h * (nope + rope) + nope + j];
    }
}

cudaError_t vl2__cu_mla_qpe(float *qcat, const float *q, int64_t ldq, int n, int H, int nope,
                            int rope, int R, struct vl2__cu_stream st)
{
    if (n <= 0)
        return cudaSuccess;
    launch_k(mla_qpe_kernel, n, 128, 0, st, qcat, q, ldq, H, nope, rope, R);
    return cudaGetLastError();
}

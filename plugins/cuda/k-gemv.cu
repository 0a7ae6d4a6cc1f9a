/* k-gemv.cu - grouped matrix-vector products for decode-sized batches:
 * y = x W^T with F32 x and BF16/F16/F32 weights, F32 accumulation.
 *
 * Memory-bound: each weight row is read once per pass with 16-byte loads,
 * each warp computes R output rows for up to NT input rows, so one load of x
 * serves R weight rows (R = 1 for single rows: more warps in flight).  The same kernel serves the dense linear
 * (one group), the MoE experts (groups from the routing kernels, optionally
 * silu-gated pairs gate/up) and per-head products (strided groups). */
#include "cuda-dev.cuh"
#include "cuda-impl.h"
#include "cuda-launch.cuh"

#define GV_WARPS 4      /* warps per block */

static __device__ __forceinline__ int in_row(const struct vl2__cu_group &g, int i)
{
    return g.in_map ? g.in_map[g.start + i] : g.in_base + i;
}

template <typename WT, int NT, int GV_R, bool DUAL, bool VEC>
static __global__ void __launch_bounds__(GV_WARPS * 32)
gemv_kernel(const struct vl2__cu_gemv_args a)
{
    struct vl2__cu_group g;

    if (!a.groups) {
        /* the weights do not depend on the kernels before: start pulling this
         * warp's rows into L2 while they finish */
        const int jw = (blockIdx.x * GV_WARPS + (threadIdx.x >> 5)) * GV_R;
        const char *w0 = (const char *)a.g0.wa +
                         (int64_t)blockIdx.y * a.w_gs * (int64_t)sizeof(WT);
        const int64_t row_bytes = (int64_t)a.g0.K * (int64_t)sizeof(WT);
#pragma unroll
        for (int r = 0; r < GV_R; r++) {
            if (jw + r >= a.g0.n_out)
                break;
            const char *row = w0 + (int64_t)(jw + r) * a.g0.ldw * (int64_t)sizeof(WT);
            for (int64_t off = (int64_t)(threadIdx.x & 31) * 128; off < row_bytes; off += 32 * 128)
                asm volatile("prefetch.global.L2 [%0];" ::"l"(row + off));
        }
    } else if ((int)blockIdx.y < a.pre.n_groups) {
        const int jw = (blockIdx.x * GV_WARPS + (threadIdx.x >> 5)) * GV_R;
        const int64_t q = (int64_t)blockIdx.y / a.pre.per_part;
        const int64_t row_bytes = (int64_t)a.pre.K * (int64_t)sizeof(WT);
#pragma unroll
        for (int r = 0; r < GV_R; r++) {
            if (jw + r >= a.pre.n_out)
                break;
            const int64_t el = (q * a.pre.part_rows + jw + r) * a.pre.ldw + q * a.pre.part_cols;
            const char *ra = (const char *)a.pre.wa + el * (int64_t)sizeof(WT);
            const char *rb = DUAL ? (const char *)a.pre.wb + el * (int64_t)sizeof(WT) : NULL;
            for (int64_t off = (int64_t)(threadIdx.x & 31) * 128; off < row_bytes;
                 off += 32 * 128) {
                asm volatile("prefetch.global.L2 [%0];" ::"l"(ra + off));
                if (DUAL)
                    asm volatile("prefetch.global.L2 [%0];" ::"l"(rb + off));
            }
        }
    }
    PDL_ENTRY();

    if (a.groups) {
        if ((int)blockIdx.y >= *a.n_groups)
            return;
        g = a.groups[blockIdx.y];
    } else if (a.tok_split) {
        g = a.g0;
        g.in_base += (int)blockIdx.y * NT;
        g.out_base += (int)blockIdx.y * NT;
        g.count = min(NT, g.count - (int)blockIdx.y * NT);
        if (g.count <= 0)
            return;
    } else {
        g = a.g0;
        g.wa = (const WT *)g.wa + (int64_t)blockIdx.y * a.w_gs;
        if (DUAL)
            g.wb = (const WT *)g.wb + (int64_t)blockIdx.y * a.w_gs;
        g.x_off += (int64_t)blockIdx.y * a.x_gs;
        g.y_off += (int64_t)blockIdx.y * a.y_gs;
    }
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int j0 = (blockIdx.x * GV_WARPS + warp) * GV_R;
    if (j0 >= g.n_out)
        return;
    const int K = g.K;
    const WT *wa = (const WT *)g.wa;
    const WT *wb = (const WT *)g.wb;
    const WT *ra[GV_R];
    const WT *rb[GV_R];
#pragma unroll
    for (int r = 0; r < GV_R; r++) {
        const int j = min(j0 + r, g.n_out - 1);
        ra[r] = wa + (int64_t)j * g.ldw;
        rb[r] = DUAL ? wb + (int64_t)j * g.ldw : ra[r];
    }

    for (int c0 = 0; c0 < g.count; c0 += NT) {
        const int ct = min(NT, g.count - c0);
        const float *xr[NT];
        float acc[NT][GV_R];
        float acc2[NT][GV_R];
#pragma unroll
        for (int t = 0; t < NT; t++) {
            xr[t] = a.x + (int64_t)in_row(g, c0 + min(t, ct - 1)) * a.ldx + g.x_off;
#pragma unroll
            for (int r = 0; r < GV_R; r++) {
                acc[t][r] = 0.0f;
                acc2[t][r] = 0.0f;
            }
        }
        int kbeg = 0;
        if (VEC) {
            const int K8 = K >> 3;
#pragma unroll 4
            for (int c = lane; c < K8; c += 32) {
                float w[GV_R][8], w2[GV_R][8], xv[8];
#pragma unroll
                for (int r = 0; r < GV_R; r++) {
                    elem<WT>::get8(ra[r] + c * 8, w[r]);
                    if (DUAL)
                        elem<WT>::get8(rb[r] + c * 8, w2[r]);
                }
#pragma unroll
                for (int t = 0; t < NT; t++) {
                    float4 x0 = __ldg((const float4 *)(xr[t] + c * 8));
                    float4 x1 = __ldg((const float4 *)(xr[t] + c * 8) + 1);
                    xv[0] = x0.x; xv[1] = x0.y; xv[2] = x0.z; xv[3] = x0.w;
                    xv[4] = x1.x; xv[5] = x1.y; xv[6] = x1.z; xv[7] = x1.w;
#pragma unroll
                    for (int r = 0; r < GV_R; r++) {
#pragma unroll
                        for (int e = 0; e < 8; e++) {
                            acc[t][r] = fmaf(xv[e], w[r][e], acc[t][r]);
                            if (DUAL)
                                acc2[t][r] = fmaf(xv[e], w2[r][e], acc2[t][r]);
                        }
                    }
                }
            }
            kbeg = K8 * 8;
        }
        for (int k = kbeg + lane; k < K; k += 32) {
            float wv[GV_R], wv2[GV_R];
#pragma unroll
            for (int r = 0; r < GV_R; r++) {
                wv[r] = elem<WT>::get(ra[r], k);
                wv2[r] = DUAL ? elem<WT>::get(rb[r], k) : 0.0f;
            }
#pragma unroll
            for (int t = 0; t < NT; t++) {
                const float xv = xr[t][k];
#pragma unroll
                for (int r = 0; r < GV_R; r++) {
                    acc[t][r] = fmaf(xv, wv[r], acc[t][r]);
                    if (DUAL)
                        acc2[t][r] = fmaf(xv, wv2[r], acc2[t][r]);
                }
            }
        }
#pragma unroll
        for (int t = 0; t < NT; t++) {
#pragma unroll
            for (int r = 0; r < GV_R; r++) {
                float v = warp_sum(acc[t][r]);
                if (DUAL)
                    v = silu_f(v) * warp_sum(acc2[t][r]);
                const int j = j0 + r;
                if (lane == ((t * GV_R + r) & 31) && t < ct && j < g.n_out) {
                    if (a.bias)
                        v += ld_any(a.bias, a.bias_dtype, j);
                    const int orow = g.out_base + c0 + t;
                    a.y[(int64_t)orow * a.ldy + g.y_off + j] = v;
                }
            }
        }
    }
}

template <typename WT, int NT, int R, bool DUAL>
static cudaError_t launch_r(const struct vl2__cu_gemv_args *a, int vec, dim3 grid,
                            struct vl2__cu_stream st)
{
    if (vec)
        launch_k(gemv_kernel<WT, NT, R, DUAL, true>, grid, GV_WARPS * 32, 0, st, *a);
    else
        launch_k(gemv_kernel<WT, NT, R, DUAL, false>, grid, GV_WARPS * 32, 0, st, *a);
    return cudaGetLastError();
}

template <typename WT, int NT, bool DUAL>
static cudaError_t launch_vec(const struct vl2__cu_gemv_args *a, int vec, dim3 grid,
                              struct vl2__cu_stream st)
{
    if (NT > 1)
        return launch_r<WT, NT, 2, DUAL>(a, vec, grid, st);
    if (st.gemv_r1 >= 4)
        return launch_r<WT, 1, 4, DUAL>(a, vec, grid, st);
    if (st.gemv_r1 == 2)
        return launch_r<WT, 1, 2, DUAL>(a, vec, grid, st);
    return launch_r<WT, 1, 1, DUAL>(a, vec, grid, st);
}

template <typename WT, int NT>
static cudaError_t launch_dual(const struct vl2__cu_gemv_args *a, int dual, int vec, dim3 grid,
                               struct vl2__cu_stream st)
{
    return dual ? launch_vec<WT, NT, true>(a, vec, grid, st)
                : launch_vec<WT, NT, false>(a, vec, grid, st);
}

template <typename WT>
static cudaError_t launch_nt(const struct vl2__cu_gemv_args *a, int nt, int dual, int vec,
                             dim3 grid, struct vl2__cu_stream st)
{
    switch (nt) {
    case 1: return launch_dual<WT, 1>(a, dual, vec, grid, st);
    case 2: return launch_dual<WT, 2>(a, dual, vec, grid, st);
    case 4: return launch_dual<WT, 4>(a, dual, vec, grid, st);
    default: return launch_dual<WT, 8>(a, dual, vec, grid, st);
    }
}

cudaError_t vl2__cu_gemv(const struct vl2__cu_gemv_args *a, int wdtype, int nt, int dual,
                         int vec, int max_out, int grid_groups, struct vl2__cu_stream st)
{
    const int rows_per_block =
        GV_WARPS * (nt > 1 ? 2 : st.gemv_r1 >= 4 ? 4 : st.gemv_r1 == 2 ? 2 : 1);
    if (max_out <= 0 || grid_groups <= 0)
        return cudaSuccess;
    dim3 grid((max_out + rows_per_block - 1) / rows_per_block, grid_groups);
    switch (wdtype) {
    case VL2_DTYPE_BF16: return launch_nt<__nv_bfloat16>(a, nt, dual, vec, grid, st);
    case VL2_DTYPE_F16: return launch_nt<__half>(a, nt, dual, vec, grid, st);
    default: return launch_nt<float>(a, nt, dual, vec, grid, st);
    }
}

/* cuda-dev.cuh - device helpers shared by the kernels of the CUDA backend:
 * element loads by dtype, 8-wide vector loads, warp reductions. */
#ifndef VL2_CUDA_DEV_CUH
#define VL2_CUDA_DEV_CUH

#include <math.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "vl2-backend.h"

/* Element @i of a BF16/F16/F32 array, as float. */
static __device__ __forceinline__ float ld_any(const void *p, int dtype, int64_t i)
{
    switch (dtype) {
    case VL2_DTYPE_BF16:
        return __bfloat162float(((const __nv_bfloat16 *)p)[i]);
    case VL2_DTYPE_F16:
        return __half2float(((const __half *)p)[i]);
    default:
        return ((const float *)p)[i];
    }
}

static __device__ __forceinline__ void st_any(void *p, int dtype, int64_t i, float v)
{
    switch (dtype) {
    case VL2_DTYPE_BF16:
        ((__nv_bfloat16 *)p)[i] = __float2bfloat16(v);
        break;
    case VL2_DTYPE_F16:
        ((__half *)p)[i] = __float2half(v);
        break;
    default:
        ((float *)p)[i] = v;
        break;
    }
}

/* Typed element access for templates. */
template <typename T> struct elem;
template <> struct elem<float> {
    static __device__ __forceinline__ float get(const float *p, int64_t i) { return p[i]; }
    static __device__ __forceinline__ void put(float *p, int64_t i, float v) { p[i] = v; }
    /* 8 consecutive elements from a 16-byte aligned address. */
    static __device__ __forceinline__ void get8(const float *p, float *v)
    {
        float4 a = __ldg((const float4 *)p);
        float4 b = __ldg((const float4 *)p + 1);
        v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
        v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
    }
};
template <> struct elem<__nv_bfloat16> {
    static __device__ __forceinline__ float get(const __nv_bfloat16 *p, int64_t i)
    {
        return __bfloat162float(p[i]);
    }
    static __device__ __forceinline__ void put(__nv_bfloat16 *p, int64_t i, float v)
    {
        p[i] = __float2bfloat16(v);
    }
    static __device__ __forceinline__ void get8(const __nv_bfloat16 *p, float *v)
    {
        uint4 u = __ldg((const uint4 *)p);
        const uint32_t w[4] = { u.x, u.y, u.z, u.w };
#pragma unroll
        for (int i = 0; i < 4; i++) {
            v[2 * i] = __uint_as_float(w[i] << 16);
            v[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
        }
    }
};
template <> struct elem<__half> {
    static __device__ __forceinline__ float get(const __half *p, int64_t i)
    {
        return __half2float(p[i]);
    }
    static __device__ __forceinline__ void put(__half *p, int64_t i, float v)
    {
        p[i] = __float2half(v);
    }
    static __device__ __forceinline__ void get8(const __half *p, float *v)
    {
        uint4 u = __ldg((const uint4 *)p);
        const __half2 *h = (const __half2 *)&u;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            float2 f = __half22float2(h[i]);
            v[2 * i] = f.x;
            v[2 * i + 1] = f.y;
        }
    }
};

static __device__ __forceinline__ float warp_sum(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

static __device__ __forceinline__ float warp_max(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Sum over the block (blockDim.x a multiple of 32, at most 1024); every
 * thread gets the result.  @sh: 32 floats of shared memory. */
static __device__ __forceinline__ float block_sum(float v, float *sh)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int nw = (blockDim.x + 31) >> 5;

    v = warp_sum(v);
    __syncthreads();
    if (lane == 0)
        sh[warp] = v;
    __syncthreads();
    v = lane < nw ? sh[lane] : 0.0f;
    return warp_sum(v);
}

/* Best (value, index) over the warp; ties go to the lower index. */
static __device__ __forceinline__ void warp_argmax(float &bv, int &bi)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (ov > bv || (ov == bv && oi < bi)) {
            bv = ov;
            bi = oi;
        }
    }
}

/* Maximum over the block, as block_sum. */
static __device__ __forceinline__ float block_max(float v, float *sh)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int nw = (blockDim.x + 31) >> 5;

    v = warp_max(v);
    __syncthreads();
    if (lane == 0)
        sh[warp] = v;
    __syncthreads();
    v = lane < nw ? sh[lane] : -INFINITY;
    return warp_max(v);
}

static __device__ __forceinline__ float silu_f(float g)
{
    return g / (1.0f + expf(-g));
}

/* ---- tiles of a cache into shared memory ----------------------------------- */

#define TL_BATCH 8

/* Asynchronous copies global -> shared (sm_80 and later): 16 bytes, of which
 * the first @src_bytes are read and the rest zeroed. */
static __device__ __forceinline__ void cp_async16(void *smem, const void *gmem, int src_bytes)
{
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem),
                 "r"(src_bytes)
                 : "memory");
}

static __device__ __forceinline__ void cp_async_commit(void)
{
    asm volatile("cp.async.commit_group;\n" ::: "memory");
}

template <int N> static __device__ __forceinline__ void cp_async_wait(void)
{
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

/* Rows [0, rows) x cols of the F32 matrix @src (rows src_ld apart) into @dst
 * (rows dst_ld apart) by asynchronous copies, the block's NT threads striding
 * over the tile; the caller commits and waits.  False (nothing issued) for
 * another element type or when a row is not 16-byte aligned. */
template <int NT, typename CT>
static __device__ __forceinline__ bool tile_load_async(float *, int, const CT *, int64_t, int, int,
                                                       int)
{
    return false;
}
template <int NT>
static __device__ __forceinline__ bool tile_load_async(float *dst, int dst_ld, const float *src,
                                                       int64_t src_ld, int rows, int cols, int tid)
{
    if (((uintptr_t)src & 15) || ((uintptr_t)dst & 15) || (src_ld & 3) || (dst_ld & 3) ||
        (cols & 3))
        return false;
    /* (row j, 16-byte column c) of the flattened index, advanced without
     * dividing */
    const int cc = cols / 4;
    int j = tid / cc, c = tid - j * cc;
    while (j < rows) {
        cp_async16(dst + j * dst_ld + 4 * c, src + (int64_t)j * src_ld + 4 * c, 16);
        c += NT;
        while (c >= cc) {
            c -= cc;
            j++;
        }
    }
    return true;
}

/* @v as the cache of element type CT stores it. */
template <typename CT> static __device__ __forceinline__ float round_as(float v)
{
    CT c;
    elem<CT>::put(&c, 0, v);
    return elem<CT>::get(&c, 0);
}

/* 16 bytes of CT at @p (16-byte aligned) as floats: 4 (F32) or 8 values. */
template <typename CT> static __device__ __forceinline__ void load16(const CT *p, float *v)
{
    elem<CT>::get8(p, v);
}
template <> __device__ __forceinline__ void load16<float>(const float *p, float *v)
{
    const float4 a = __ldg((const float4 *)p);
    v[0] = a.x;
    v[1] = a.y;
    v[2] = a.z;
    v[3] = a.w;
}

/* Rows [0, rows) x cols of @src (rows src_ld apart) into @dst (F32, rows dst_ld
 * apart), the block's NT threads striding over the flattened tile: each thread
 * issues TL_BATCH loads before storing any (16-byte loads when aligned). */
template <typename CT, int NT>
static __device__ __forceinline__ void tile_load_nt(float *dst, int dst_ld, const CT *src,
                                                    int64_t src_ld, int rows, int cols, int tid)
{
    constexpr int V = 16 / sizeof(CT);
    if (((uintptr_t)src & 15) == 0 && src_ld % V == 0 && cols % V == 0) {
        const int cc = cols / V, total = rows * cc;
        for (int base = tid; base < total; base += TL_BATCH * NT) {
            float v[TL_BATCH][8];
#pragma unroll
            for (int u = 0; u < TL_BATCH; u++) {
                const int idx = base + u * NT;
                if (idx < total) {
                    const int j = idx / cc, c = idx - j * cc;
                    load16<CT>(src + (int64_t)j * src_ld + c * V, v[u]);
                }
            }
            /* 16-byte stores when the tile rows allow them (a scalar store per
             * element would hit the same banks from consecutive lanes) */
            const bool v4 = (dst_ld & 3) == 0 && ((uintptr_t)dst & 15) == 0;
#pragma unroll
            for (int u = 0; u < TL_BATCH; u++) {
                const int idx = base + u * NT;
                if (idx < total) {
                    const int j = idx / cc, c = idx - j * cc;
                    float *o = dst + j * dst_ld + c * V;
                    if (v4) {
#pragma unroll
                        for (int e = 0; e < V; e += 4)
                            *(float4 *)(o + e) =
                                make_float4(v[u][e], v[u][e + 1], v[u][e + 2], v[u][e + 3]);
                    } else {
#pragma unroll
                        for (int e = 0; e < V; e++)
                            o[e] = v[u][e];
                    }
                }
            }
        }
        return;
    }
    {
        const int total = rows * cols;
        for (int base = tid; base < total; base += TL_BATCH * NT) {
            float v[TL_BATCH];
#pragma unroll
            for (int u = 0; u < TL_BATCH; u++) {
                const int idx = base + u * NT;
                if (idx < total) {
                    const int j = idx / cols;
                    v[u] = elem<CT>::get(src, (int64_t)j * src_ld + idx - j * cols);
                }
            }
#pragma unroll
            for (int u = 0; u < TL_BATCH; u++) {
                const int idx = base + u * NT;
                if (idx < total) {
                    const int j = idx / cols;
                    dst[j * dst_ld + idx - j * cols] = v[u];
                }
            }
        }
    }
}

#endif /* VL2_CUDA_DEV_CUH */

/* ---- programmatic dependent launch (Hopper) ------------------------------- */

/* Every kernel starts with PDL_ENTRY(): wait until the kernels before it are
 * complete and their writes visible (a no-op without a programmatic
 * dependency), then let the next kernel be scheduled early when this grid
 * fits in about one wave (larger grids let it go when their blocks exit).
 * The next kernel's blocks become resident and wait at their own entry, so
 * its launch latency hides behind this kernel's work. */
static __device__ __forceinline__ void pdl_entry(void)
{
    asm volatile("griddepcontrol.wait;" ::: "memory");
    if (gridDim.x * gridDim.y * gridDim.z <= 1024u)
        asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
}
#define PDL_ENTRY() pdl_entry()

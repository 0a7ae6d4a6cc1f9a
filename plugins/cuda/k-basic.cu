/* k-basic.cu - element-wise and row-wise kernels of the CUDA backend:
 * embedding, norms, add, activations, row copies, patchify, unfold, RoPE,
 * dtype conversion, bias, row softmax. */
#include <limits.h>
#include <math.h>

#include "cuda-dev.cuh"
#include "cuda-impl.h"
#include "cuda-launch.cuh"

#define LAUNCH_CHECK() cudaGetLastError()

static inline unsigned int blocks_for(int64_t n, int threads)
{
    int64_t b = (n + threads - 1) / threads;
    if (b > 1048576)
        b = 1048576;
    return (unsigned int)(b < 1 ? 1 : b);
}

/* ---- embedding ------------------------------------------------------- */

static __global__ void embed_kernel(float *out, int64_t ldo, const void *table, int64_t ldt,
                                    int tdtype, const int32_t *ids, int cols)
{
    PDL_ENTRY();
    const int r = blockIdx.x;
    const int64_t base = (int64_t)ids[r] * ldt;
#pragma unroll 4
    for (int c = threadIdx.x; c < cols; c += blockDim.x)
        out[(int64_t)r * ldo + c] = ld_any(table, tdtype, base + c);
}

cudaError_t vl2__cu_embed(float *out, int64_t ldo, const void *table, int64_t ldt, int tdtype,
                          const int32_t *ids, int n, int cols, struct vl2__cu_stream st)
{
    if (n <= 0)
        return cudaSuccess;
    launch_k(embed_kernel, n, 256, 0, st, out, ldo, table, ldt, tdtype, ids, cols);
    return LAUNCH_CHECK();
}

/* ---- norms ------------------------------------------------------------- */

#define RMS_PER_THREAD 8

static __global__ void rmsnorm_kernel(float *out, int64_t ldo, const float *x, int64_t ldx,
                                      const void *w, int wdtype, int cols, float eps)
{
    PDL_ENTRY();
    __shared__ float sh[32];
    const float *xr = x + (int64_t)blockIdx.x * ldx;
    float *o = out + (int64_t)blockIdx.x * ldo;
    float s = 0.0f;

    if (cols <= RMS_PER_THREAD * (int)blockDim.x) {
        /* one read of the row: values and weights stay in registers */
        float xv[RMS_PER_THREAD], wv[RMS_PER_THREAD];
#pragma unroll
        for (int i = 0; i < RMS_PER_THREAD; i++) {
            const int c = threadIdx.x + i * blockDim.x;
            xv[i] = c < cols ? xr[c] : 0.0f;
            wv[i] = c < cols ? ld_any(w, wdtype, c) : 0.0f;
        }
#pragma unroll
        for (int i = 0; i < RMS_PER_THREAD; i++)
            s += xv[i] * xv[i];
        s = block_sum(s, sh);
        const float inv = 1.0f / sqrtf(s / (float)cols + eps);
#pragma unroll
        for (int i = 0; i < RMS_PER_THREAD; i++) {
            const int c = threadIdx.x + i * blockDim.x;
            if (c < cols)
                o[c] = wv[i] * (xv[i] * inv);
        }
        return;
    }

#pragma unroll 4

    for (int c = threadIdx.x; c < cols; c += blockDim.x)
        s += xr[c] * xr[c];
    s = block_sum(s, sh);
    const float inv = 1.0f / sqrtf(s / (float)cols + eps);
#pragma unroll 4
    for (int c = threadIdx.x; c < cols; c += blockDim.x)
        o[c] = ld_any(w, wdtype, c) * (xr[c] * inv);
}

cudaError_t vl2__cu_rmsnorm(float *out, int64_t ldo, const float *x, int64_t ldx,
                            const void *w, int wdtype, int n, int cols, float eps,
                            struct vl2__cu_stream st)
{
    if (n <= 0)
        return cudaSuccess;
    launch_k(rmsnorm_kernel, n, cols >= 1024 ? 512 : 256, 0, st, out, ldo, x, ldx, w, wdtype, cols,
                                                           eps);
    return LAUNCH_CHECK();
}

static __global__ void layernorm_kernel(float *out, int64_t ldo, const float *x, int64_t ldx,
                                        const void *w, int wdtype, const void *b, int bdtype,
                                        int cols, float eps)
{
    PDL_ENTRY();
    __shared__ float sh[32];
    const float *xr = x + (int64_t)blockIdx.x * ldx;
    float *o = out + (int64_t)blockIdx.x * ldo;
    float s = 0.0f;

#pragma unroll 4

    for (int c = threadIdx.x; c < cols; c += blockDim.x)
        s += xr[c];
    const float mean = block_sum(s, sh) / (float)cols;
    s = 0.0f;
#pragma unroll 4
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        const float d = xr[c] - mean;
        s += d * d;
    }
    const float var = block_sum(s, sh) / (float)cols;
    const float inv = 1.0f / sqrtf(var + eps);
#pragma unroll 4
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        float v = (xr[c] - mean) * inv * ld_any(w, wdtype, c);
        if (b)
            v += ld_any(b, bdtype, c);
        o[c] = v;
    }
}

cudaError_t vl2__cu_layernorm(float *out, int64_t ldo, const float *x, int64_t ldx,
                              const void *w, int wdtype, const void *b, int bdtype, int n,
                              int cols, float eps, struct vl2__cu_stream st)
{
    if (n <= 0)
        return cudaSuccess;
    launch_k(layernorm_kernel, n, cols >= 1024 ? 512 : 256, 0, st, out, ldo, x, ldx, w, wdtype, b,
                                                             bdtype, cols, eps);
    return LAUNCH_CHECK();
}

/* ---- add, activations ---------------------------------------------------- */

/* Greedy choice per row (ABI argmax): one block per row, each thread the
 * first largest of its strided columns, then the block's, ties to the
 * lower column; NaN never wins and a row starting with NaN gives 0. */
#define AM_THREADS 1024
static __global__ void __launch_bounds__(AM_THREADS)
argmax_kernel(int32_t *out, int64_t ldo, const float *x, int64_t ldx, int cols)
{
    PDL_ENTRY();
    __shared__ float s_v[AM_THREADS / 32];
    __shared__ int s_i[AM_THREADS / 32];
    const float *z = x + (int64_t)blockIdx.x * ldx;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    float bv = -INFINITY;
    int bi = INT_MAX;

    for (int c = threadIdx.x; c < cols; c += AM_THREADS) {
        const float v = z[c];
        if (v > bv) {   /* strictly: the first of equal values stays */
            bv = v;
            bi = c;
        }
    }
    /* a column holding -inf everywhere still needs an index */
    if (bi == INT_MAX && threadIdx.x < cols && z[threadIdx.x] == -INFINITY)
        bi = threadIdx.x;
    warp_argmax(bv, bi);
    if (lane == 0) {
        s_v[warp] = bv;
        s_i[warp] = bi;
    }
    __syncthreads();
    if (warp == 0) {
        bv = lane < AM_THREADS / 32 ? s_v[lane] : -INFINITY;
        bi = lane < AM_THREADS / 32 ? s_i[lane] : INT_MAX;
        warp_argmax(bv, bi);
        if (lane == 0)
            out[(int64_t)blockIdx.x * ldo] = z[0] != z[0] || bi == INT_MAX ? 0 : bi;
    }
}

cudaError_t vl2__cu_argmax(int32_t *out, int64_t ldo, const float *x, int64_t ldx, int n,
                           int cols, struct vl2__cu_stream st)
{
    if (n <= 0)
        return cudaSuccess;
    launch_k(argmax_kernel, n, AM_THREADS, 0, st, out, ldo, x, ldx, cols);
    return LAUNCH_CHECK();
}

static __global__ void add_kernel(float *out, int64_t ldo, const void *a, int64_t lda,
                                  int adtype, const void *b, int64_t ldb, int bdtype,
                                  int64_t brows, int64_t n, int cols)
{
    PDL_ENTRY();
    const int64_t total = n * cols;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = i / cols, c = i % cols;
        const float va = ld_any(a, adtype, r * lda + c);
        const float vb = ld_any(b, bdtype, (r % brows) * ldb + c);
        out[r * ldo + c] = va + vb;
    }
}

cudaError_t vl2__cu_add(float *out, int64_t ldo, const void *a, int64_t lda, int adtype,
                        const void *b, int64_t ldb, int bdtype, int64_t brows, int n,
                        int cols, struct vl2__cu_stream st)
{
    const int64_t total = (int64_t)n * cols;
    if (total <= 0)
        return cudaSuccess;
    launch_k(add_kernel, blocks_for(total, 256), 256, 0, st, out, ldo, a, lda, adtype, b, ldb,
                                                       bdtype, brows, n, cols);
    return LAUNCH_CHECK();
}

static __global__ void gelu_kernel(float *x, int64_t ldx, int64_t n, int cols, int kind)
{
    PDL_ENTRY();
    const int64_t total = n * cols;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = i / cols, c = i % cols;
        float *p = x + r * ldx + c;
        const float v = *p;
        if (kind == 0) {
            const float k0 = 0.7978845608028654f; /* sqrt(2 / pi) */
            *p = 0.5f * v * (1.0f + tanhf(k0 * (v + 0.044715f * v * v * v)));
        } else {
            *p = 0.5f * v * (1.0f + erff(v * 0.7071067811865476f));
        }
    }
}

cudaError_t vl2__cu_gelu(float *x, int64_t ldx, int n, int cols, int kind, struct vl2__cu_stream st)
{
    const int64_t total = (int64_t)n * cols;
    if (total <= 0)
        return cudaSuccess;
    launch_k(gelu_kernel, blocks_for(total, 256), 256, 0, st, x, ldx, n, cols, kind);
    return LAUNCH_CHECK();
}

static __global__ void swiglu_kernel(float *out, int64_t ldo, const float *g, int64_t ldg,
                                     const float *u, int64_t ldu, int64_t n, int cols)
{
    PDL_ENTRY();
    const int64_t total = n * cols;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = i / cols, c = i % cols;
        out[r * ldo + c] = silu_f(g[r * ldg + c]) * u[r * ldu + c];
    }
}

cudaError_t vl2__cu_swiglu(float *out, int64_t ldo, const float *g, int64_t ldg,
                           const float *u, int64_t ldu, int n, int cols, struct vl2__cu_stream st)
{
    const int64_t total = (int64_t)n * cols;
    if (total <= 0)
        return cudaSuccess;
    launch_k(swiglu_kernel, blocks_for(total, 256), 256, 0, st, out, ldo, g, ldg, u, ldu, n, cols);
    return LAUNCH_CHECK();
}

/* ---- row copies, patchify, unfold ------------------------------------------ */

static __global__ void copy_rows_kernel(void *dst, int64_t ldd, int ddtype,
                                        const int32_t *drows, const void *src, int64_t lds,
                                        int sdtype, const int32_t *srows, int cols)
{
    PDL_ENTRY();
    const int64_t d = (int64_t)drows[blockIdx.x] * ldd;
    const int64_t s = (int64_t)srows[blockIdx.x] * lds;
#pragma unroll 4
    for (int c = threadIdx.x; c < cols; c += blockDim.x)
        st_any(dst, ddtype, d + c, ld_any(src, sdtype, s + c));
}

cudaError_t vl2__cu_copy_rows(void *dst, int64_t ldd, int ddtype, const int32_t *drows,
                              const void *src, int64_t lds, int sdtype,
                              const int32_t *srows, int n, int cols, struct vl2__cu_stream st)
{
    if (n <= 0)
        return cudaSuccess;
    launch_k(copy_rows_kernel, n, 256, 0, st, dst, ldd, ddtype, drows, src, lds, sdtype, srows,
                                        cols);
    return LAUNCH_CHECK();
}

/* out[i*g*g + gy*g + gx][(c*p + ky)*p + kx] = img[i][c][gy*p + ky][gx*p + kx] */
static __global__ void patchify_kernel(float *out, int64_t ldo, const float *img, int64_t ldi,
                                       int S, int p, int g)
{
    PDL_ENTRY();
    const int row = blockIdx.x;
    const int i = row / (g * g), gy = (row / g) % g, gx = row % g;
    const int F = 3 * p * p;
    for (int f = threadIdx.x; f < F; f += blockDim.x) {
        const int c = f / (p * p), ky = (f / p) % p, kx = f % p;
        out[(int64_t)row * ldo + f] =
            img[(int64_t)i * ldi + ((int64_t)c * S + gy * p + ky) * S + gx * p + kx];
    }
}

cudaError_t vl2__cu_patchify(float *out, int64_t ldo, const float *img, int64_t ldi,
                             int n_img, int S, int p, struct vl2__cu_stream st)
{
    const int g = S / p;
    if (n_img <= 0 || g <= 0)
        return cudaSuccess;
    launch_k(patchify_kernel, n_img * g * g, 256, 0, st, out, ldo, img, ldi, S, p, g);
    return LAUNCH_CHECK();
}

/* out[q][c*4 + ky*2 + kx] = feat[2by+ky][2bx+kx][c] (zero outside the grid) */
static __global__ void unfold_kernel(float *out, int64_t ldo, const float *feat, int64_t ldf,
                                     int g, int c)
{
    PDL_ENTRY();
    const int g2 = (g + 1) / 2;
    const int row = blockIdx.x;
    const int i = row / (g2 * g2), by = (row / g2) % g2, bx = row % g2;
    for (int f = threadIdx.x; f < 4 * c; f += blockDim.x) {
        const int ch = f >> 2, ky = (f >> 1) & 1, kx = f & 1;
        const int y = 2 * by + ky, x = 2 * bx + kx;
        float v = 0.0f;
        if (y < g && x < g)
            v = feat[((int64_t)i * g * g + (int64_t)y * g + x) * ldf + ch];
        out[(int64_t)row * ldo + f] = v;
    }
}

cudaError_t vl2__cu_unfold2x2(float *out, int64_t ldo, const float *feat, int64_t ldf,
                              int n_img, int g, int c, struct vl2__cu_stream st)
{
    const int g2 = (g + 1) / 2;
    if (n_img <= 0 || g <= 0)
        return cudaSuccess;
    launch_k(unfold_kernel, n_img * g2 * g2, 256, 0, st, out, ldo, feat, ldf, g, c);
    return LAUNCH_CHECK();
}

/* ---- RoPE ------------------------------------------------------------------ */

#define ROPE_MAX_PAIRS_PER_LANE 8

/* One warp per (row, head).  Angles in float32 as the reference computes them:
 * inv_freq[i] = 1 / theta^(2i / rot_dim), angle = pos * inv_freq[i]. */
static __global__ void rope_kernel(float *x, int64_t ldx, const struct vl2__cu_row *rows,
                                   int n_head, int head_stride, int rot_off, int rot_dim,
                                   float theta, int layout)
{
    PDL_ENTRY();
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int h = blockIdx.y * (blockDim.x >> 5) + warp;
    if (h >= n_head)
        return;
    const int r = blockIdx.x;
    const float pos = (float)rows[r].pos;
    float *p = x + (int64_t)r * ldx + (int64_t)h * head_stride + rot_off;
    const int half = rot_dim / 2;
    float a[ROPE_MAX_PAIRS_PER_LANE], b[ROPE_MAX_PAIRS_PER_LANE];
    float cs[ROPE_MAX_PAIRS_PER_LANE], sn[ROPE_MAX_PAIRS_PER_LANE];

#pragma unroll
    for (int k = 0; k < ROPE_MAX_PAIRS_PER_LANE; k++) {
        const int i = lane + 32 * k;
        if (i < half) {
            const float e = (float)(2 * i) / (float)rot_dim;
            const float inv = 1.0f / powf(theta, e);
            const float ang = pos * inv;
            cs[k] = cosf(ang);
            sn[k] = sinf(ang);
            if (layout == VL2_ROPE_NEOX) {
                a[k] = p[i];
                b[k] = p[i + half];
            } else {
                a[k] = p[2 * i];
                b[k] = p[2 * i + 1];
            }
        }
    }
    __syncwarp();
#pragma unroll
    for (int k = 0; k < ROPE_MAX_PAIRS_PER_LANE; k++) {
        const int i = lane + 32 * k;
        if (i < half) {
            p[i] = a[k] * cs[k] - b[k] * sn[k];
            p[i + half] = b[k] * cs[k] + a[k] * sn[k];
        }
    }
}

cudaError_t vl2__cu_rope(float *x, int64_t ldx, const struct vl2__cu_row *rows, int n,
                         int n_head, int head_stride, int rot_off, int rot_dim, float theta,
                         int layout, struct vl2__cu_stream st)
{
    const int warps = n_head < 8 ? n_head : 8;
    if (n <= 0 || n_head <= 0)
        return cudaSuccess;
    dim3 grid(n, (n_head + warps - 1) / warps);
    launch_k(rope_kernel, grid, 32 * warps, 0, st, x, ldx, rows, n_head, head_stride, rot_off,
                                             rot_dim, theta, layout);
    return LAUNCH_CHECK();
}

/* ---- conversion, bias, softmax ---------------------------------------------- */

static __global__ void convert_kernel(void *dst, int64_t ldd, int ddtype, const float *src,
                                      int64_t lds, int64_t n, int cols)
{
    PDL_ENTRY();
    const int64_t total = n * cols;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = i / cols, c = i % cols;
        st_any(dst, ddtype, r * ldd + c, src[r * lds + c]);
    }
}

cudaError_t vl2__cu_convert(void *dst, int64_t ldd, int ddtype, const float *src, int64_t lds,
                            int n, int cols, struct vl2__cu_stream st)
{
    const int64_t total = (int64_t)n * cols;
    if (total <= 0)
        return cudaSuccess;
    launch_k(convert_kernel, blocks_for(total, 256), 256, 0, st, dst, ldd, ddtype, src, lds, n, cols);
    return LAUNCH_CHECK();
}

static __global__ void add_bias_kernel(float *out, int64_t ldo, const void *bias, int bdtype,
                                       int64_t n, int cols)
{
    PDL_ENTRY();
    const int64_t total = n * cols;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = i / cols, c = i % cols;
        out[r * ldo + c] += ld_any(bias, bdtype, c);
    }
}

cudaError_t vl2__cu_add_bias(float *out, int64_t ldo, const void *bias, int bdtype, int n,
                             int cols, struct vl2__cu_stream st)
{
    const int64_t total = (int64_t)n * cols;
    if (total <= 0)
        return cudaSuccess;
    launch_k(add_bias_kernel, blocks_for(total, 256), 256, 0, st, out, ldo, bias, bdtype, n, cols);
    return LAUNCH_CHECK();
}

static __global__ void softmax_rows_kernel(float *s, int cols)
{
    PDL_ENTRY();
    __shared__ float sh[32];
    float *r = s + (int64_t)blockIdx.x * cols;
    float m = -INFINITY;

#pragma unroll 4

    for (int c = threadIdx.x; c < cols; c += blockDim.x)
        m = fmaxf(m, r[c]);
    m = block_max(m, sh);
    float sum = 0.0f;
#pragma unroll 4
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        const float e = expf(r[c] - m);
        r[c] = e;
        sum += e;
    }
    sum = block_sum(sum, sh);
    const float inv = 1.0f / sum;
#pragma unroll 4
    for (int c = threadIdx.x; c < cols; c += blockDim.x)
        r[c] *= inv;
}

cudaError_t vl2__cu_softmax_rows(float *s, int64_t n, int cols, struct vl2__cu_stream st)
{
    if (n <= 0)
        return cudaSuccess;
    launch_k(softmax_rows_kernel, (unsigned int)n, 256, 0, st, s, cols);
    return LAUNCH_CHECK();
}

/* ---- profiling aid ------------------------------------------------------------ */

/* Keep the device busy for @us microseconds (so that the host can queue the
 * ops after it and event pairs time kernels, not launch gaps). */
static __global__ void spin_kernel(unsigned long long ns)
{
    PDL_ENTRY();
    unsigned long long t0, t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
    do {
        __nanosleep(1000);
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    } while (t - t0 < ns);
}

cudaError_t vl2__cu_spin(int us, struct vl2__cu_stream st)
{
    launch_k(spin_kernel, 1, 1, 0, st, (unsigned long long)us * 1000ull);
    return cudaGetLastError();
}

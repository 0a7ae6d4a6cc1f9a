/* gpu_bw.cu - the two ceilings of METHOD.md for this GPU, measured once per
 * run: device-to-device copy bandwidth (bytes read + bytes written) and read
 * bandwidth (a streaming 16-byte-load reduction).  Buffers are filled with a
 * non-zero pattern; each figure is the median of 20 timed repetitions after
 * warm-up, timed with CUDA events.
 *
 *     gpu_bw [MiB]      (default 2048 MiB per buffer)
 * prints:  copy_GBps <x>\nread_GBps <y>\n */
#include <algorithm>
#include <stdio.h>
#include <stdlib.h>
#include <vector>

#include <cuda_runtime.h>

#define CK(x)                                                                       \
    do {                                                                            \
        cudaError_t e_ = (x);                                                       \
        if (e_ != cudaSuccess) {                                                    \
            fprintf(stderr, "gpu_bw: %s: %s\n", #x, cudaGetErrorString(e_));        \
            exit(1);                                                                \
        }                                                                           \
    } while (0)

static __global__ void fill(uint4 *p, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        p[i] = make_uint4((unsigned)i * 2654435761u, (unsigned)i ^ 0x5bd1e995u, 7u, (unsigned)i);
}

static __global__ void read_sum(const uint4 *p, size_t n, unsigned *out)
{
    unsigned s = 0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        uint4 v = __ldcs(p + i);
        s ^= v.x ^ v.y ^ v.z ^ v.w;
    }
    if (s == 0x12345678u)
        *out = s;
}

static double median(std::vector<float> v)
{
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

int main(int argc, char **argv)
{
    const size_t mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 2048;
    const size_t bytes = mib << 20, n = bytes / 16;
    uint4 *a, *b;
    unsigned *out;
    cudaEvent_t e0, e1;
    std::vector<float> tc, tr;
    int sms, i;

    CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    CK(cudaMalloc(&a, bytes));
    CK(cudaMalloc(&b, bytes));
    CK(cudaMalloc(&out, 4));
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    fill<<<sms * 8, 256>>>(a, n);
    fill<<<sms * 8, 256>>>(b, n);
    CK(cudaGetLastError());
    for (i = 0; i < 23; i++) {
        float ms;
        CK(cudaEventRecord(e0));
        CK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice));
        CK(cudaEventRecord(e1));
        CK(cudaEventSynchronize(e1));
        CK(cudaEventElapsedTime(&ms, e0, e1));
        if (i >= 3)
            tc.push_back(ms);
    }
    for (i = 0; i < 23; i++) {
        float ms;
        CK(cudaEventRecord(e0));
        read_sum<<<sms * 8, 512>>>(a, n, out);
        CK(cudaEventRecord(e1));
        CK(cudaEventSynchronize(e1));
        CK(cudaGetLastError());
        CK(cudaEventElapsedTime(&ms, e0, e1));
        if (i >= 3)
            tr.push_back(ms);
    }
    printf("copy_GBps %.1f\n", 2.0 * (double)bytes / (median(tc) * 1e-3) / 1e9);
    printf("read_GBps %.1f\n", (double)bytes / (median(tr) * 1e-3) / 1e9);
    {
        /* one logits row (129280 floats) to the host: pageable and pinned */
        const size_t lb = 129280 * 4;
        std::vector<float> tp, tq;
        void *pg = malloc(lb), *pin = NULL;
        CK(cudaMallocHost(&pin, lb));
        for (i = 0; i < 53; i++) {
            float ms;
            CK(cudaEventRecord(e0));
            CK(cudaMemcpy(i & 1 ? pg : pin, a, lb, cudaMemcpyDeviceToHost));
            CK(cudaEventRecord(e1));
            CK(cudaEventSynchronize(e1));
            CK(cudaEventElapsedTime(&ms, e0, e1));
            if (i >= 3)
                (i & 1 ? tp : tq).push_back(ms);
        }
        printf("d2h_logits_row_us pageable %.1f pinned %.1f\n", median(tp) * 1e3,
               median(tq) * 1e3);
        free(pg);
        CK(cudaFreeHost(pin));
    }
    return 0;
}

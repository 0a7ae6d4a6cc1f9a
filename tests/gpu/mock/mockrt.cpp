/* tests/gpu/mock/mockrt.cpp - a fake CUDA runtime and cuBLAS for host-side equivalence checks: device
 * memory is a bump allocator in one fixed mapping (deterministic addresses),
 * copies are memcpy, kernels are the logging stubs, cuBLAS calls are logged. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <cuda_runtime_api.h>
#include <cublas_v2.h>
#include "mock.h"

static FILE *logf_;
static char *base_;
static size_t used_;
#define ARENA ((size_t)64 << 30)

static FILE *L(void)
{
    if (!logf_) {
        const char *p = getenv("MOCK_LOG");
        logf_ = p ? fopen(p, "w") : stderr;
    }
    return logf_;
}
void mock_begin(const char *name) { fprintf(L(), "%s", name); }
void mock_bytes(const char *what, const void *p, size_t n)
{
    const unsigned char *b = (const unsigned char *)p;
    fprintf(L(), " %s=", what);
    for (size_t i = 0; i < n; i++)
        fprintf(L(), "%02x", b[i]);
}
void mock_end(void) { fprintf(L(), "\n"); }

extern "C" {
cudaError_t cudaGetDeviceCount(int *n) { *n = 1; return cudaSuccess; }
cudaError_t cudaSetDevice(int d) { return cudaSuccess; }
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int d)
{
    memset(p, 0, sizeof(*p));
    strcpy(p->name, "Mock H100");
    p->major = 9;
    p->multiProcessorCount = 132;
    p->totalGlobalMem = (size_t)80 << 30;
    p->sharedMemPerBlockOptin = 232448;
    return cudaSuccess;
}
cudaError_t cudaDeviceSetCacheConfig(enum cudaFuncCache c) { mock_begin("cacheconfig"); mock_end(); return cudaSuccess; }
cudaError_t cudaDriverGetVersion(int *v) { *v = 13000; return cudaSuccess; }
cudaError_t cudaRuntimeGetVersion(int *v) { *v = 13000; return cudaSuccess; }
cudaError_t cudaGetLastError(void) { return cudaSuccess; }
const char *cudaGetErrorString(cudaError_t e) { return "mock error"; }
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned int f) { *s = (cudaStream_t)0x5150; return cudaSuccess; }
cudaError_t cudaStreamDestroy(cudaStream_t s) { return cudaSuccess; }
cudaError_t cudaStreamSynchronize(cudaStream_t s) { return cudaSuccess; }
cudaError_t cudaMalloc(void **p, size_t n)
{
    if (!base_) {
        base_ = (char *)mmap((void *)0x600000000000ull, ARENA, PROT_READ | PROT_WRITE,
                             MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0);
        if (base_ == MAP_FAILED)   /* taken (sanitizer shadow): anywhere, not comparable */
            base_ = (char *)mmap(NULL, ARENA, PROT_READ | PROT_WRITE,
                                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (base_ == MAP_FAILED) abort();
    }
    used_ = (used_ + 255) & ~(size_t)255;
    if (used_ + n > ARENA) return cudaErrorMemoryAllocation;
    *p = base_ + used_;
    used_ += n;
    fprintf(L(), "malloc %zu\n", n);
    return cudaSuccess;
}
cudaError_t cudaFree(void *p) { fprintf(L(), "free %lx\n", (unsigned long)((char *)p - base_)); return cudaSuccess; }
cudaError_t cudaMemGetInfo(size_t *f, size_t *t) { *f = 1; *t = 2; return cudaSuccess; }
cudaError_t cudaHostAlloc(void **p, size_t n, unsigned int f) { *p = malloc(n); return cudaSuccess; }
cudaError_t cudaFreeHost(void *p) { free(p); return cudaSuccess; }
static int is_dev(const void *p) { return base_ && (const char *)p >= base_ && (const char *)p < base_ + ARENA; }
cudaError_t cudaMemcpyAsync(void *d, const void *s, size_t n, enum cudaMemcpyKind k, cudaStream_t st)
{
    /* host-to-device copies: the bytes are part of what a step depends on */
    fprintf(L(), "memcpy %d %zu dst %lx", (int)k, n, is_dev(d) ? (unsigned long)((char *)d - base_) : 0ul);
    if (k == cudaMemcpyHostToDevice) { mock_bytes("data", s, n < 4096 ? n : 4096); }
    mock_end();
    memcpy(d, s, n);
    return cudaSuccess;
}
cudaError_t cudaMemcpy(void *d, const void *s, size_t n, enum cudaMemcpyKind k) { return cudaMemcpyAsync(d, s, n, k, 0); }
cudaError_t cudaMemsetAsync(void *d, int v, size_t n, cudaStream_t st) { fprintf(L(), "memset %zu\n", n); memset(d, v, n); return cudaSuccess; }
cudaError_t cudaMemset(void *d, int v, size_t n) { return cudaMemsetAsync(d, v, n, 0); }
cudaError_t cudaEventCreate(cudaEvent_t *e) { *e = (cudaEvent_t)0x1; return cudaSuccess; }
cudaError_t cudaEventDestroy(cudaEvent_t e) { return cudaSuccess; }
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) { fprintf(L(), "event\n"); return cudaSuccess; }
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b) { *ms = 0.001f; return cudaSuccess; }
cudaError_t cudaStreamBeginCapture(cudaStream_t s, enum cudaStreamCaptureMode m) { fprintf(L(), "capture begin\n"); return cudaSuccess; }
cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t *g) { fprintf(L(), "capture end\n"); *g = (cudaGraph_t)0x77; return cudaSuccess; }
cudaError_t cudaGraphInstantiate(cudaGraphExec_t *e, cudaGraph_t g, unsigned long long f) { *e = (cudaGraphExec_t)0x78; return cudaSuccess; }
cudaError_t cudaGraphDestroy(cudaGraph_t g) { return cudaSuccess; }
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t e) { fprintf(L(), "graph drop\n"); return cudaSuccess; }
cudaError_t cudaGraphLaunch(cudaGraphExec_t e, cudaStream_t s) { fprintf(L(), "graph launch\n"); return cudaSuccess; }

cublasStatus_t cublasCreate_v2(cublasHandle_t *h) { *h = (cublasHandle_t)0x99; return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasDestroy_v2(cublasHandle_t h) { return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasSetStream_v2(cublasHandle_t h, cudaStream_t s) { return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasSetWorkspace_v2(cublasHandle_t h, void *w, size_t n) { return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasSetMathMode(cublasHandle_t h, cublasMath_t m) { return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasGemmEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                            const void *alpha, const void *A, cudaDataType Atype, int lda, const void *B,
                            cudaDataType Btype, int ldb, const void *beta, void *C, cudaDataType Ctype,
                            int ldc, cublasComputeType_t ct, cublasGemmAlgo_t algo)
{
    fprintf(L(), "gemm %d %d %d %d %d %g %lx %d %d %lx %d %d %g %lx %d %d %d %d\n", ta, tb, m, n, k,
            *(const float *)alpha, (unsigned long)((const char *)A - base_), Atype, lda,
            (unsigned long)((const char *)B - base_), Btype, ldb, *(const float *)beta,
            (unsigned long)((char *)C - base_), Ctype, ldc, ct, algo);
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb,
                                          int m, int n, int k, const void *alpha, const void *A,
                                          cudaDataType Atype, int lda, long long sA, const void *B,
                                          cudaDataType Btype, int ldb, long long sB, const void *beta,
                                          void *C, cudaDataType Ctype, int ldc, long long sC, int bc,
                                          cublasComputeType_t ct, cublasGemmAlgo_t algo)
{
    fprintf(L(), "gemmsb %d %d %d %d %d %g %lx %d %d %lld %lx %d %d %lld %g %lx %d %d %lld %d %d %d\n", ta, tb,
            m, n, k, *(const float *)alpha, (unsigned long)((const char *)A - base_), Atype, lda, sA,
            (unsigned long)((const char *)B - base_), Btype, ldb, sB, *(const float *)beta,
            (unsigned long)((char *)C - base_), Ctype, ldc, sC, bc, ct, algo);
    return CUBLAS_STATUS_SUCCESS;
}
}

/* cuda-launch.cuh - kernel launches of the CUDA backend: with programmatic
 * stream serialization (kernels start with PDL_ENTRY, see cuda-dev.cuh) when
 * vl2__cu_pdl is set, plain launches otherwise. */
#ifndef VL2_CUDA_LAUNCH_CUH
#define VL2_CUDA_LAUNCH_CUH

#include <cuda_runtime.h>

/* Process-wide: 1 when dependent launches are used (set by open from the
 * device's capability and the `pdl` option). */
extern int vl2__cu_pdl;

template <typename... KArgs, typename... Args>
static inline cudaError_t launch_k(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem,
                                   cudaStream_t st, Args... args)
{
    cudaLaunchConfig_t cfg = {};
    cudaLaunchAttribute at[1];

    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = st;
    at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = at;
    cfg.numAttrs = vl2__cu_pdl ? 1 : 0;
    return cudaLaunchKernelEx(&cfg, kernel, static_cast<KArgs>(args)...);
}

#endif /* VL2_CUDA_LAUNCH_CUH */

/* cuda-launch.cuh - kernel launches of the CUDA backend: on the context's
 * stream, with programmatic stream serialization (kernels start with
 * PDL_ENTRY, see cuda-dev.cuh) when the context's st.pdl is set, plain
 * launches otherwise. */
#ifndef VL2_CUDA_LAUNCH_CUH
#define VL2_CUDA_LAUNCH_CUH

#include <cuda_runtime.h>

#include "cuda-impl.h"

template <typename... KArgs, typename... Args>
static inline cudaError_t launch_k(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem,
                                   struct vl2__cu_stream st, Args... args)
{
    cudaLaunchConfig_t cfg = {};
    cudaLaunchAttribute at[1];

    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = st.s;
    at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = at;
    cfg.numAttrs = st.pdl ? 1 : 0;
    return cudaLaunchKernelEx(&cfg, kernel, static_cast<KArgs>(args)...);
}

#endif /* VL2_CUDA_LAUNCH_CUH */

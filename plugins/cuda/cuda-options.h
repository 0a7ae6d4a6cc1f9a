/* cuda-options.h - the options of vl2-backend-cuda.so, listed once.
 *
 * They arrive in vl2_backend_params.options in the grammar of
 * plugins/vl2-options.h ("key=value,key=value"); open() refuses an unknown
 * key or a bad value with VL2_EINVAL and a one-line message naming both.
 * Booleans take 0/1 (also false/true, off/on).  Each context keeps its own
 * copy (struct vl2__cu_opts in the context), so two contexts never share a
 * setting; the one exception is prefer_shared, see below.
 *
 * Production options (every build):
 *   graphs=0|1        CUDA graphs for decode steps (default 1): steps of at
 *                     most 64 rows are captured the second time a batch
 *                     shape is seen and replayed from then on
 *   pdl=0|1           programmatic dependent launches (default 1)
 *   profile=0|1       device time per op kind and per step inside MoE and
 *                     attention, appended to describe() (default 0; turns
 *                     graphs off)
 *   gemv_r1=1|2|4     weight rows per warp of single-row products (default 1;
 *                     2 gave +7 % at 16 sequences, no change at batch 1)
 *   mla_split=N       most runs of keys per sequence in the MLA decode kernel,
 *                     1..64 (default 32)
 *
 * Test knobs, compiled only into test builds (meson -Dtest_knobs=true, which
 * defines VL2_TEST_KNOBS; a production build refuses them as unknown):
 * ablations of one optimisation each, and skip=, whose results are wrong on
 * purpose.
 *   mma_linear=0      mid-size BF16 products through cuBLAS instead of the
 *                     tensor-core kernel of k-moe.cu
 *   fuse_route=0      decode MoE routing by sorted groups instead of one
 *                     block per token (slot groups)
 *   fuse_router=0     router logits and routing in two kernels
 *   mla_decode=0      the tile kernel of k-attn.cu for MLA decode
 *   mla_blas_rows=N   rows of a sequence from which eager MLA attention runs
 *                     through cuBLAS, 0..1048576 (default 32; 0: never)
 *   mla_chunk=N       most query rows per cuBLAS pass, 0..1048576 (0: sized by
 *                     the 128 MB score limit only)
 *   mla_qgroup=N      queries per MLA decode block, 0..1024 (0: automatic)
 *   moe_prefetch=0    no L2 prefetch of the shared experts during routing
 *   prefer_shared=1   cudaDeviceSetCacheConfig(PreferShared) at open: a
 *                     setting of the device for the whole process (CUDA has
 *                     no per-stream one), which is why it is a test knob
 *   skip=K+K+...      op kinds (embed, linear, ..., moe, argmax) or steps of
 *                     attn_mla (mla_queries, mla_core, mla_out) not run; new
 *                     tensors and scratch are zeroed so the step still runs.
 *                     Results are wrong: for measuring what each part costs.
 */
#ifndef VL2_CU_OPTIONS_H
#define VL2_CU_OPTIONS_H

#include "vl2-status.h"

/* Parsed options of one context (meanings above).  Plain values, owned by
 * the context, read on the thread that drives it. */
struct vl2__cu_opts {
    int      graphs;
    int      pdl;
    int      profile;
    int      gemv_r1;
    int      mla_split;
    /* test knobs (defaults only, unless VL2_TEST_KNOBS) */
    int      mma_linear;
    int      fuse_route;
    int      fuse_router;
    int      mla_decode;
    int      mla_blas_rows;
    int      mla_chunk;
    int      mla_qgroup;
    int      moe_prefetch;
    int      prefer_shared;
    unsigned skip_ops;    /* bit k: op kind k (enum op_kind) not run */
    unsigned skip_sub;    /* bits: mla_queries 1, mla_core 2, mla_out 4 */
};

/* Fill @o with the defaults, then apply @options (NULL or "": none).
 * Returns 0, or VL2_EINVAL with a message naming the option. */
int vl2__cu_opts_parse(struct vl2__cu_opts *o, const char *options, struct vl2_err *err);

#endif /* VL2_CU_OPTIONS_H */

/* prof.cu - the profiler of a context (option profile=1, graphs off): a pair
 * of events around every op and a mark after each step inside MoE and
 * attention; the pending pairs are added up when the stream is idle and
 * reported by describe(). */
#include <stdio.h>
#include <stdlib.h>

#include "cuda-ctx.h"

static const char *const sub_names[SUB_COUNT] = {
    "moe.route", "moe.gate_up", "moe.down", "moe.combine", "attn.queries", "attn.main",
    "attn.combine", "attn.out",
};

/* Add the pending event pairs to the totals (the stream must be idle). */
void vl2__cu_prof_drain(struct vl2_backend_ctx *ctx)
{
    int i;
    for (i = 0; i < ctx->sub_n; i++) {
        float ms = 0.0f;
        cudaEvent_t from = ctx->sub_prev[i] < 0 ? ctx->prof_ev[2 * ctx->sub_op[i]]
                                                : ctx->sub_ev[ctx->sub_prev[i]];
        if (cudaEventElapsedTime(&ms, from, ctx->sub_ev[i]) == cudaSuccess) {
            ctx->sub_ms[ctx->sub_kind[i]] += ms;
            ctx->sub_calls[ctx->sub_kind[i]]++;
        }
    }
    ctx->sub_n = 0;
    for (i = 0; i < ctx->prof_n; i++) {
        float ms = 0.0f;
        if (cudaEventElapsedTime(&ms, ctx->prof_ev[2 * i], ctx->prof_ev[2 * i + 1]) ==
            cudaSuccess) {
            ctx->prof_ms[ctx->prof_kind[i]] += ms;
            ctx->prof_calls[ctx->prof_kind[i]]++;
        }
    }
    (void)cudaGetLastError();
    ctx->prof_n = 0;
}

int vl2__cu_prof_init(struct vl2_backend_ctx *ctx)
{
    int i;
    ctx->prof_ev = (cudaEvent_t *)calloc(2 * PROF_MAX, sizeof(cudaEvent_t));
    ctx->prof_kind = (int32_t *)calloc(PROF_MAX, sizeof(int32_t));
    ctx->sub_ev = (cudaEvent_t *)calloc(PROF_MAX, sizeof(cudaEvent_t));
    ctx->sub_kind = (int32_t *)calloc(PROF_MAX, sizeof(int32_t));
    ctx->sub_prev = (int32_t *)calloc(PROF_MAX, sizeof(int32_t));
    ctx->sub_op = (int32_t *)calloc(PROF_MAX, sizeof(int32_t));
    if (!ctx->prof_ev || !ctx->prof_kind || !ctx->sub_ev || !ctx->sub_kind || !ctx->sub_prev ||
        !ctx->sub_op)
        return -1;
    for (i = 0; i < 2 * PROF_MAX; i++)
        if (cudaEventCreate(&ctx->prof_ev[i]) != cudaSuccess)
            return -1;
    for (i = 0; i < PROF_MAX; i++)
        if (cudaEventCreate(&ctx->sub_ev[i]) != cudaSuccess)
            return -1;
    return 0;
}

void vl2__cu_prof_free(struct vl2_backend_ctx *ctx)
{
    int i;
    if (ctx->prof_ev) {
        for (i = 0; i < 2 * PROF_MAX; i++)
            if (ctx->prof_ev[i])
                (void)cudaEventDestroy(ctx->prof_ev[i]);
        free(ctx->prof_ev);
    }
    if (ctx->sub_ev) {
        for (i = 0; i < PROF_MAX; i++)
            if (ctx->sub_ev[i])
                (void)cudaEventDestroy(ctx->sub_ev[i]);
        free(ctx->sub_ev);
    }
    free(ctx->prof_kind);
    free(ctx->sub_kind);
    free(ctx->sub_prev);
    free(ctx->sub_op);
}

void vl2__cu_prof_sub(struct vl2_backend_ctx *ctx, int kind)
{
    int i;
    if (!ctx->opt.profile || ctx->prof_n == 0 || ctx->sub_n == PROF_MAX)
        return;
    i = ctx->sub_n++;
    ctx->sub_kind[i] = kind;
    ctx->sub_prev[i] = ctx->sub_last;
    ctx->sub_op[i] = ctx->prof_n - 1;
    ctx->sub_last = i;
    (void)cudaEventRecord(ctx->sub_ev[i], ctx->st);
}

int vl2__cu_exec_profiled(struct vl2_backend_ctx *ctx, const struct op_rec *r,
                          struct vl2_err *err)
{
    int i, rc;
    if (ctx->prof_n == PROF_MAX || ctx->sub_n > PROF_MAX - 16) {
        (void)cudaStreamSynchronize(ctx->st);
        vl2__cu_prof_drain(ctx);
    }
    i = ctx->prof_n++;
    ctx->sub_last = -1;
    ctx->prof_kind[i] = r->kind;
    (void)cudaEventRecord(ctx->prof_ev[2 * i], ctx->st);
    rc = vl2__cu_exec_op(ctx, r, err);
    (void)cudaEventRecord(ctx->prof_ev[2 * i + 1], ctx->st);
    return rc;
}

int vl2__cu_prof_describe(struct vl2_backend_ctx *ctx, char *buf, int n, size_t cap)
{
    int k, first = 1;

    (void)cudaStreamSynchronize(ctx->st);
    vl2__cu_prof_drain(ctx);
    for (k = 1; k < OPK_COUNT && n > 0 && (size_t)n < cap; k++) {
        if (!ctx->prof_calls[k])
            continue;
        n += snprintf(buf + n, cap - (size_t)n, "%s %s %.2f ms/%llu", first ? "; profile:" : ",",
                      vl2__cu_op_names[k], ctx->prof_ms[k],
                      (unsigned long long)ctx->prof_calls[k]);
        first = 0;
    }
    for (k = 0; k < SUB_COUNT && n > 0 && (size_t)n < cap; k++)
        if (ctx->sub_calls[k])
            n += snprintf(buf + n, cap - (size_t)n, ", %s %.2f ms/%llu", sub_names[k],
                          ctx->sub_ms[k], (unsigned long long)ctx->sub_calls[k]);
    return n;
}

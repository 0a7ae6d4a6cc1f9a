/* graph.cu - the tape of a context: how op records become launches.
 *
 * Host arrays an op takes (token ids, row indices) are staged into a fixed
 * device buffer.  begin_batch() marks a decode step: for a batch shape seen
 * before, the step's records are captured into a CUDA graph (second time)
 * and replayed from then on (the records of a replayed step are only
 * compared with the recorded tape; its staged host arrays and the batch
 * metadata are uploaded before the launch).  Anything that departs from the
 * tape, and any other call (read, sync, write, alloc, ...), ends the step:
 * a complete step launches its graph, a partial one runs its records
 * eagerly.  So a graph never runs anything an eager step would not. */
#include <stdlib.h>
#include <string.h>

#include "cuda-ctx.h"

static void graph_drop(struct graph_ent *g)
{
    if (g->exec)
        (void)cudaGraphExecDestroy(g->exec);
    g->exec = NULL;
    g->tape_len = 0;
}

void vl2__cu_graph_free(struct graph_ent *g)
{
    graph_drop(g);
    free(g->tape);
    free(g->seq_rows);
    memset(g, 0, sizeof(*g));
}

/* Forget every captured graph (their buffers moved). */
void vl2__cu_graphs_drop_all(struct vl2_backend_ctx *ctx)
{
    int i;
    for (i = 0; i < MAX_GRAPHS; i++)
        if (ctx->graphs[i].used)
            graph_drop(&ctx->graphs[i]);
}

/* Upload the metadata and the staged host arrays of the current step. */
static int upload_step(struct vl2_backend_ctx *ctx, struct vl2_err *err)
{
    cudaError_t e = cudaSuccess;

    if (ctx->have_batch && ctx->meta_bytes)
        e = cudaMemcpyAsync(ctx->meta_d, ctx->meta_h, ctx->meta_bytes, cudaMemcpyHostToDevice,
                            ctx->st);
    if (e == cudaSuccess && ctx->stage_used)
        e = cudaMemcpyAsync(ctx->stage_d, ctx->stage_h, ctx->stage_used,
                            cudaMemcpyHostToDevice, ctx->st);
    return e == cudaSuccess ? 0 : cu_fail(err, e, "upload of step inputs");
}

/* Leave record/replay mode by running the step's records so far eagerly. */
int vl2__cu_graph_fallback(struct vl2_backend_ctx *ctx, struct vl2_err *err)
{
    struct graph_ent *g = ctx->cur;
    int n, j, r;

    if (ctx->mode == MODE_EAGER)
        return 0;
    if (ctx->capturing) {
        cudaGraph_t gr = NULL;
        (void)cudaStreamEndCapture(ctx->st, &gr);
        if (gr)
            (void)cudaGraphDestroy(gr);
        (void)cudaGetLastError();
        ctx->capturing = 0;
    }
    n = ctx->mode == MODE_RECORD ? g->tape_len : ctx->rec_i;
    ctx->mode = MODE_EAGER;
    g->fails++;
    ctx->n_fallback++;
    r = upload_step(ctx, err);
    for (j = 0; r >= 0 && j < n; j++)
        r = vl2__cu_exec_op(ctx, &g->tape[j], err);
    graph_drop(g);
    ctx->cur = NULL;
    return r;
}

/* End the current step: launch its graph when complete, else run it eagerly. */
int vl2__cu_end_step(struct vl2_backend_ctx *ctx, struct vl2_err *err)
{
    struct graph_ent *g = ctx->cur;
    cudaError_t e;
    int r;

    if (ctx->mode == MODE_EAGER)
        return 0;
    if (ctx->mode == MODE_RECORD) {
        cudaGraph_t gr = NULL;
        cudaGraphExec_t ex = NULL;
        e = cudaStreamEndCapture(ctx->st, &gr);
        ctx->capturing = 0;
        if (e != cudaSuccess || !gr) {
            (void)cudaGetLastError();
            return vl2__cu_graph_fallback(ctx, err);
        }
        e = cudaGraphInstantiate(&ex, gr, 0);
        (void)cudaGraphDestroy(gr);
        if (e != cudaSuccess) {
            (void)cudaGetLastError();
            return vl2__cu_graph_fallback(ctx, err);
        }
        g->exec = ex;
        ctx->n_captured++;
    } else if (ctx->rec_i != g->tape_len) {
        return vl2__cu_graph_fallback(ctx, err);
    } else {
        ctx->n_replayed++;
    }
    ctx->mode = MODE_EAGER;
    ctx->cur = NULL;
    r = upload_step(ctx, err);
    if (r < 0)
        return r;
    e = cudaGraphLaunch(g->exec, ctx->st);
    if (e != cudaSuccess)
        return cu_fail(err, e, "graph launch");
    return 0;
}

static struct graph_ent *graph_find(struct vl2_backend_ctx *ctx, const struct vl2_batch *b,
                                    const struct vl2_kv_shape *kvs)
{
    struct graph_ent *best = NULL;
    int i, j;

    for (i = 0; i < MAX_GRAPHS; i++) {
        struct graph_ent *g = &ctx->graphs[i];
        if (!g->used || g->n_rows != b->n_rows || g->n_seqs != b->n_seqs ||
            !same_kv_layout(&g->kvs, kvs))
            continue;
        for (j = 0; j < b->n_seqs; j++)
            if (g->seq_rows[j] != b->seqs[j].n_rows)
                break;
        if (j == b->n_seqs)
            return g;
    }
    /* a free slot, else the least recently used */
    for (i = 0; i < MAX_GRAPHS; i++) {
        struct graph_ent *g = &ctx->graphs[i];
        if (!g->used)
            return g;
        if (!best || g->last_use < best->last_use)
            best = g;
    }
    vl2__cu_graph_free(best);
    return best;
}

int vl2__cu_graph_begin(struct vl2_backend_ctx *ctx, const struct vl2_batch *b,
                        const struct vl2_kv_shape *kvs)
{
    struct graph_ent *g;
    int i;

    if (!ctx->opt.graphs || b->n_rows > GRAPH_MAX_ROWS)
        return 0;
    g = graph_find(ctx, b, kvs);
    if (!g->used) {
        g->seq_rows = (int32_t *)malloc((size_t)b->n_seqs * sizeof(int32_t));
        if (g->seq_rows) {
            g->used = 1;
            g->n_rows = b->n_rows;
            g->n_seqs = b->n_seqs;
            for (i = 0; i < b->n_seqs; i++)
                g->seq_rows[i] = b->seqs[i].n_rows;
            g->kvs = *kvs;
            g->kvs.capacity = 0;
        }
    } else {
        g->seen++;
    }
    g->last_use = ctx->tick;
    if (g->used && g->exec) {
        ctx->mode = MODE_REPLAY;
        ctx->cur = g;
        ctx->rec_i = 0;
        return 1;
    }
    if (g->used && g->seen >= 1 && g->fails < 3) {
        cudaError_t e = cudaStreamBeginCapture(ctx->st, cudaStreamCaptureModeThreadLocal);
        if (e == cudaSuccess) {
            ctx->mode = MODE_RECORD;
            ctx->capturing = 1;
            ctx->cur = g;
            g->tape_len = 0;
            return 1;
        }
        (void)cudaGetLastError();
    }
    return 0;
}

int vl2__cu_submit(struct vl2_backend_ctx *ctx, struct op_rec *r, const void *host,
                   size_t hsize, struct vl2_err *err)
{
    struct graph_ent *g = ctx->cur;
    size_t off;
    int rc;

    if (ctx->mode == MODE_REPLAY) {
        /* the hot path of a replayed step: compare with the tape, stage the inputs */
        off = align_up(ctx->stage_used, 16);
        r->stage_off = (int64_t)off;
        r->stage_size = (int64_t)hsize;
        if (off + hsize <= ctx->stage_cap && ctx->rec_i < g->tape_len &&
            !memcmp(r, &g->tape[ctx->rec_i], sizeof(*r))) {
            if (hsize)
                memcpy(ctx->stage_h + off, host, hsize);
            ctx->stage_used = off + hsize;
            ctx->rec_i++;
            return 0;
        }
        if ((rc = vl2__cu_graph_fallback(ctx, err)) < 0)
            return rc;
    }
    (void)cudaSetDevice(ctx->device);
    rc = vl2__cu_ensure_scratch(ctx, vl2__cu_scratch_need(r), err);
    if (rc < 0)
        return rc;
    if (ctx->mode == MODE_EAGER) {
        if (hsize) {
            cudaError_t e;
            if ((rc = vl2__cu_ensure_stage(ctx, hsize, err)) < 0)
                return rc;
            e = cudaMemcpyAsync(ctx->stage_d, host, hsize, cudaMemcpyHostToDevice, ctx->st);
            if (e != cudaSuccess)
                return cu_fail(err, e, "upload of op inputs");
        }
        r->stage_off = 0;
        r->stage_size = (int64_t)hsize;
        return ctx->opt.profile ? vl2__cu_exec_profiled(ctx, r, err)
                                : vl2__cu_exec_op(ctx, r, err);
    }
    /* record */
    g = ctx->cur;
    off = align_up(ctx->stage_used, 16);
    if (off + hsize > ctx->stage_cap || (g->tape_len == g->tape_cap && g->tape_cap >= 65536)) {
        if ((rc = vl2__cu_graph_fallback(ctx, err)) < 0)
            return rc;
        return vl2__cu_submit(ctx, r, host, hsize, err);
    }
    r->stage_off = (int64_t)off;
    r->stage_size = (int64_t)hsize;
    if (g->tape_len == g->tape_cap) {
        int nc = g->tape_cap ? 2 * g->tape_cap : 256;
        struct op_rec *nt = (struct op_rec *)realloc(g->tape, (size_t)nc * sizeof(*nt));
        if (!nt) {
            if ((rc = vl2__cu_graph_fallback(ctx, err)) < 0)
                return rc;
            return vl2__cu_submit(ctx, r, host, hsize, err);
        }
        g->tape = nt;
        g->tape_cap = nc;
    }
    if (hsize)
        memcpy(ctx->stage_h + off, host, hsize);
    ctx->stage_used = off + hsize;
    memcpy(&g->tape[g->tape_len++], r, sizeof(*r));   /* bytes, padding included */
    rc = vl2__cu_exec_op(ctx, r, err);
    if (rc < 0) {
        /* run what was recorded eagerly: the error, if real, comes back there */
        vl2_err_clear(err);
        return vl2__cu_graph_fallback(ctx, err);
    }
    return 0;
}

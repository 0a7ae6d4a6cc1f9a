/* op-moe.cu - moe(): one whole MoE layer on the device (spec 7.4): router
 * logits in F32, expert selection, the selected experts' SiLU-gated MLPs and
 * the shared experts, the weighted combination.  Validation, the expert
 * pointer tables (one per layer, kept by the context), the record, the
 * scratch plan and the execution.
 *
 * Routing (enum moe_route): sorted groups (the route and bucketing kernels,
 * one group per expert with rows) for prefill; for decode, slot groups (one
 * block per token, one group per selected expert and token), with the
 * router logits computed in the same launch where the router rows allow it.
 * The expert products (enum moe_experts) run on k-gemv.cu with F32
 * activations, or on the tensor-core grouped kernel with BF16 activations
 * for batches of more than GEMV_MAX_ROWS rows. */
#include <stdlib.h>
#include <string.h>

#include "cuda-ctx.h"

/* ---- scratch plan -------------------------------------------------------------- */

struct moe_plan {
    int32_t              *idx, *pos, *slot_tok, *n_groups;
    float                *w, *logits;
    struct vl2__cu_group *g_up, *g_dn;
    void                 *h;
    float                *y;
    void                 *xb;
    int64_t               rows_total, ldh;
};

static size_t plan_moe(const struct rec_moe *m, char *base, struct moe_plan *p)
{
    struct carver c = { base, 0 };
    const int64_t n = m->n, E = m->E, k = m->k, I = m->I, d = m->d;
    const int64_t np = m->n_parts, part = m->part;
    const int64_t mma = m->experts == MOE_EXPERTS_MMA;
    const int64_t ngr = np + E > n * k + np * n ? np + E : n * k + np * n;

    p->rows_total = n * k + np * n;
    p->ldh = I > part ? I : part;
    p->logits = (float *)take(&c, (size_t)(n * E) * 4);
    p->idx = (int32_t *)take(&c, (size_t)(n * k) * 4);
    p->w = (float *)take(&c, (size_t)(n * k) * 4);
    p->pos = (int32_t *)take(&c, (size_t)(n * k) * 4);
    p->slot_tok = (int32_t *)take(&c, (size_t)(n * k) * 4);
    p->n_groups = (int32_t *)take(&c, 4);
    p->g_up = (struct vl2__cu_group *)take(&c, (size_t)ngr * sizeof(struct vl2__cu_group));
    p->g_dn = (struct vl2__cu_group *)take(&c, (size_t)ngr * sizeof(struct vl2__cu_group));
    p->h = take(&c, (size_t)(p->rows_total * p->ldh) * (mma ? 2 : 4));
    p->y = (float *)take(&c, (size_t)(p->rows_total * d) * 4);
    p->xb = mma ? take(&c, (size_t)(n * d) * 2) : NULL;
    return c.off;
}
size_t vl2__cu_plan_moe(const struct op_rec *r)
{
    struct moe_plan p;
    return plan_moe(&r->u.moe, NULL, &p);
}

/* ---- validation and record ----------------------------------------------------- */

/* The device pointer table of a MoE layer's experts (built once per layer). */
static int moe_table(struct vl2_backend_ctx *ctx, const struct vl2_moe_layer *l, int I, int d,
                     const struct moe_tab **ret, struct vl2_err *err)
{
    const int E = l->n_expert;
    struct moe_tab *t;
    void **host;
    int i, k, r;

    for (i = 0; i < ctx->n_tabs; i++) {
        t = ctx->tabs[i];
        if (t->key_gate != (const void *const *)l->gate ||
            t->key_up != (const void *const *)l->up ||
            t->key_down != (const void *const *)l->down || t->E != E || t->I != I || t->d != d)
            continue;
        for (k = 0; k < E; k++)
            if (t->host[k] != l->gate[k]->data || t->host[E + k] != l->up[k]->data ||
                t->host[2 * E + k] != l->down[k]->data)
                break;
        if (k == E) {
            *ret = t;
            return 0;
        }
    }
    if ((r = vl2__cu_graph_fallback(ctx, err)) < 0)
        return r;
    if (ctx->n_tabs == ctx->cap_tabs) {
        int nc = ctx->cap_tabs ? 2 * ctx->cap_tabs : 64;
        struct moe_tab **nt = (struct moe_tab **)realloc(ctx->tabs, (size_t)nc * sizeof(*nt));
        if (!nt)
            return vl2_err_set(err, VL2_ENOMEM, "cuda: out of host memory");
        ctx->tabs = nt;
        ctx->cap_tabs = nc;
    }
    t = (struct moe_tab *)calloc(1, sizeof(*t));
    host = (void **)malloc(3 * (size_t)E * sizeof(void *));
    if (!t || !host) {
        free(t);
        free(host);
        return vl2_err_set(err, VL2_ENOMEM, "cuda: out of host memory");
    }
    t->key_gate = (const void *const *)l->gate;
    t->key_up = (const void *const *)l->up;
    t->key_down = (const void *const *)l->down;
    t->E = E;
    t->I = I;
    t->d = d;
    t->dtype = l->gate[0]->dtype;
    t->ld_gu = l->gate[0]->ld;
    t->ld_dn = l->down[0]->ld;
    t->host = host;
    {
        const size_t es = vl2_dtype_size(t->dtype);
        int vec = (t->ld_gu * es) % 16 == 0 && (t->ld_dn * es) % 16 == 0;
        for (k = 0; k < E; k++) {
            host[k] = l->gate[k]->data;
            host[E + k] = l->up[k]->data;
            host[2 * E + k] = l->down[k]->data;
            vec = vec && aligned16(host[k]) && aligned16(host[E + k]) &&
                  aligned16(host[2 * E + k]);
        }
        t->vec_ok = vec;
        t->mma_ok = vec && t->dtype == VL2_DTYPE_BF16 && I % 8 == 0 && d % 8 == 0;
    }
    r = vl2__cu_dev_alloc(ctx, (void **)&t->dev, 3 * (size_t)E * sizeof(void *), "expert table",
                          err);
    if (r < 0) {
        free(host);
        free(t);
        return r;
    }
    {
        cudaError_t e = cudaMemcpy(t->dev, host, 3 * (size_t)E * sizeof(void *),
                                   cudaMemcpyHostToDevice);
        if (e != cudaSuccess) {
            vl2__cu_dev_free(ctx, t->dev, 3 * (size_t)E * sizeof(void *));
            free(host);
            free(t);
            return cu_fail(err, e, "moe: expert table");
        }
    }
    ctx->tabs[ctx->n_tabs++] = t;
    *ret = t;
    return 0;
}

int vl2__cu_op_moe(struct vl2_backend_ctx *ctx, struct vl2_tensor *out, const struct vl2_tensor *x,
                   const struct vl2_moe_layer *l, struct vl2_err *err)
{
    const struct moe_tab *tab;
    struct op_rec r;
    struct rec_moe *m = &r.u.moe;
    int64_t d, I, n, np = 0, part = 0;
    int e, rc, dt;

    if ((rc = vl2__cu_check_t(out, "moe", "out", 1, err)) < 0 ||
        (rc = vl2__cu_check_t(x, "moe", "x", 1, err)) < 0)
        return rc;
    if (!l || !l->gate || !l->up || !l->down)
        return vl2_err_set(err, VL2_EINVAL, "cuda: moe: layer or expert arrays missing");
    if (l->struct_size != sizeof(struct vl2_moe_layer))
        return vl2_err_set(err, VL2_EABI,
                           "cuda: moe: vl2_moe_layer of %u bytes, this backend knows %zu",
                           l->struct_size, sizeof(struct vl2_moe_layer));
    if ((rc = vl2__cu_check_t(l->router, "moe", "router", 0, err)) < 0 ||
        (l->bias && (rc = vl2__cu_check_t(l->bias, "moe", "bias", 0, err)) < 0))
        return rc;
    n = x->rows;
    d = x->cols;
    if (out->rows != n || out->cols != d)
        return vl2_err_set(err, VL2_EINVAL, "cuda: moe: out is %lld x %lld, x %lld x %lld",
                           (long long)out->rows, (long long)out->cols, (long long)n,
                           (long long)d);
    if (out->data == x->data)
        return vl2_err_set(err, VL2_EINVAL, "cuda: moe: out must not alias x");
    if (l->n_expert <= 0 || l->n_expert > MAX_EXPERTS || l->top_k <= 0 ||
        l->top_k > MAX_TOPK || l->top_k > l->n_expert)
        return vl2_err_set(err, VL2_EINVAL, "cuda: moe: %d experts, top %d (at most %d experts, "
                           "top %d)", l->n_expert, l->top_k, MAX_EXPERTS, MAX_TOPK);
    if (l->scoring != VL2_MOE_SOFTMAX && l->scoring != VL2_MOE_SIGMOID)
        return vl2_err_set(err, VL2_EINVAL, "cuda: moe: scoring %d", l->scoring);
    if (l->method != VL2_MOE_GREEDY && l->method != VL2_MOE_GROUP_LIMITED &&
        l->method != VL2_MOE_NOAUX_TC)
        return vl2_err_set(err, VL2_EINVAL, "cuda: moe: method %d", l->method);
    if (l->method != VL2_MOE_GREEDY &&
        (l->n_group <= 0 || l->n_expert % l->n_group != 0 || l->topk_group <= 0 ||
         l->topk_group > l->n_group))
        return vl2_err_set(err, VL2_EINVAL,
                           "cuda: moe: %d experts in %d groups, top %d groups", l->n_expert,
                           l->n_group, l->topk_group);
    if (l->router->rows != l->n_expert || l->router->cols != d ||
        (l->bias && l->bias->rows * l->bias->cols != l->n_expert) ||
        (l->bias && l->bias->rows != 1 && l->bias->ld != l->bias->cols))
        return vl2_err_set(err, VL2_EINVAL, "cuda: moe: router is %lld x %lld for %d experts "
                           "of width %lld", (long long)l->router->rows,
                           (long long)l->router->cols, l->n_expert, (long long)d);
    if (!l->gate[0] || !l->gate[0]->data)
        return vl2_err_set(err, VL2_EINVAL, "cuda: moe: expert 0 gate missing");
    I = l->gate[0]->rows;
    dt = l->gate[0]->dtype;
    for (e = 0; e < l->n_expert; e++) {
        const struct vl2_tensor *g = l->gate[e], *u = l->up[e], *dn = l->down[e];
        if (!g || !u || !dn || !g->data || !u->data || !dn->data)
            return vl2_err_set(err, VL2_EINVAL, "cuda: moe: expert %d weights missing", e);
        if (g->dtype != dt || u->dtype != dt || dn->dtype != dt || !is_float_dtype(dt))
            return vl2_err_set(err, VL2_EUNSUPPORTED,
                               "cuda: moe: expert %d: weights must share one float dtype", e);
        if (g->rows != I || g->cols != d || u->rows != I || u->cols != d || dn->rows != d ||
            dn->cols != I || g->ld != l->gate[0]->ld || u->ld != l->gate[0]->ld ||
            dn->ld != l->down[0]->ld || g->ld < d || dn->ld < I)
            return vl2_err_set(err, VL2_EINVAL,
                               "cuda: moe: expert %d: gate %lld x %lld, up %lld x %lld, down "
                               "%lld x %lld, expected [%lld, %lld] and [%lld, %lld]",
                               e, (long long)g->rows, (long long)g->cols, (long long)u->rows,
                               (long long)u->cols, (long long)dn->rows, (long long)dn->cols,
                               (long long)I, (long long)d, (long long)d, (long long)I);
    }
    if (l->sh_gate || l->sh_up || l->sh_down) {
        const struct vl2_tensor *g = l->sh_gate, *u = l->sh_up, *dn = l->sh_down;
        if ((rc = vl2__cu_check_t(g, "moe", "sh_gate", 0, err)) < 0 ||
            (rc = vl2__cu_check_t(u, "moe", "sh_up", 0, err)) < 0 ||
            (rc = vl2__cu_check_t(dn, "moe", "sh_down", 0, err)) < 0)
            return rc;
        if (g->dtype != dt || u->dtype != dt || dn->dtype != dt)
            return vl2_err_set(err, VL2_EUNSUPPORTED,
                               "cuda: moe: shared experts must have the experts' dtype");
        if (g->cols != d || u->cols != d || u->rows != g->rows || dn->rows != d ||
            dn->cols != g->rows || u->ld != g->ld)
            return vl2_err_set(err, VL2_EINVAL,
                               "cuda: moe: shared gate %lld x %lld, up %lld x %lld, down %lld x "
                               "%lld do not match width %lld",
                               (long long)g->rows, (long long)g->cols, (long long)u->rows,
                               (long long)u->cols, (long long)dn->rows, (long long)dn->cols,
                               (long long)d);
        if (g->rows % I == 0) {
            np = g->rows / I;
            part = I;
        } else {
            np = 1;
            part = g->rows;
        }
    }
    if (n == 0)
        return 0;
    if (n * l->top_k > INT32_MAX / 2)
        return vl2_err_set(err, VL2_EINVAL, "cuda: moe: too many rows");
    if ((rc = moe_table(ctx, l, (int)I, (int)d, &tab, err)) < 0)
        return rc;
    rec_init(&r, OPK_MOE);
    m->out = td(out);
    m->x = td(x);
    m->router = td(l->router);
    m->bias = td(l->bias);
    m->sh_gate = td(l->sh_gate);
    m->sh_up = td(l->sh_up);
    m->sh_down = td(l->sh_down);
    m->tab = tab;
    m->n = n;
    m->E = l->n_expert;
    m->k = l->top_k;
    m->scoring = l->scoring;
    m->method = l->method;
    m->n_group = l->method == VL2_MOE_GREEDY ? 1 : l->n_group;
    m->topk_group = l->topk_group;
    m->norm = l->norm_topk_prob != 0;
    m->I = I;
    m->d = d;
    m->n_parts = np;
    m->part = part;
    {
        const size_t es = vl2_dtype_size(dt);
        int sh_ok = !np || (aligned16(l->sh_gate->data) && aligned16(l->sh_up->data) &&
                            aligned16(l->sh_down->data) && (l->sh_gate->ld * es) % 16 == 0 &&
                            (l->sh_down->ld * es) % 16 == 0 && (part * es) % 16 == 0);
        int x_ok = aligned16(x->data) && x->ld % 4 == 0 && d % 4 == 0;
        const int mma = n > GEMV_MAX_ROWS && tab->mma_ok && sh_ok && part % 8 == 0;
        int slots, fused;
        m->experts = mma ? MOE_EXPERTS_MMA : MOE_EXPERTS_GEMV;
        m->nt = gemv_nt(n);
        m->vec = tab->vec_ok && sh_ok && x_ok && I % 4 == 0 && part % 4 == 0;
        m->rvec = x_ok && aligned16(l->router->data) &&
                  (l->router->ld * vl2_dtype_size(l->router->dtype)) % 16 == 0;
        /* slot groups: one block per token routes (decode sizes, its shared
         * memory within the default 48 KB) */
        slots = ctx->opt.fuse_route && n <= GEMV_MAX_ROWS && !mma &&
                vl2__cu_moe_route_small_smem(l->n_expert, (int)m->n_group) <= 48u << 10;
        /* and computes the logits in the same launch (router rows 16-byte
         * aligned, its shared memory within the default 48 KB) */
        fused = slots && ctx->opt.fuse_router && m->rvec &&
                vl2__cu_moe_router_route_smem(l->n_expert, (int)m->n_group) <= 48u << 10;
        m->route = fused ? MOE_ROUTE_FUSED : slots ? MOE_ROUTE_SLOTS : MOE_ROUTE_SORTED;
    }
    m->scale = l->routed_scale;
    return vl2__cu_submit(ctx, &r, NULL, 0, err);
}

/* ---- execution ----------------------------------------------------------------- */

int vl2__cu_exec_moe(struct vl2_backend_ctx *ctx, const struct op_rec *r, struct vl2_err *err)
{
    const struct rec_moe *m = &r->u.moe;
    const struct tdesc *out = &m->out, *x = &m->x, *router = &m->router, *bias = &m->bias;
    const struct tdesc *shg = &m->sh_gate, *shu = &m->sh_up, *shd = &m->sh_down;
    const struct moe_tab *tab = m->tab;
    const int n = (int)m->n, E = (int)m->E, k = (int)m->k;
    const int I = (int)m->I, d = (int)m->d, np = (int)m->n_parts, part = (int)m->part;
    const int mma = m->experts == MOE_EXPERTS_MMA;
    const int slots = m->route != MOE_ROUTE_SORTED;
    /* slot groups (decode): n*k + np*n groups of one row; else sorted groups */
    const int max_groups = slots ? n * k + np * n : np + (E < n * k ? E : n * k);
    struct vl2__cu_route_args ra;
    struct vl2__cu_bucket_args ba;
    struct moe_plan p;
    cudaError_t e;

    plan_moe(m, ctx->scratch, &p);
    if (m->route != MOE_ROUTE_FUSED) {
        /* router logits in F32: the product kernel, one group of E rows */
        struct vl2__cu_gemv_args g;
        memset(&g, 0, sizeof(g));
        g.x = (const float *)x->data;
        g.ldx = x->ld;
        g.y = p.logits;
        g.ldy = E;
        g.g0.wa = router->data;
        g.g0.ldw = router->ld;
        g.g0.n_out = E;
        g.g0.count = n;
        g.g0.K = d;
        g.tok_split = 1;
        e = vl2__cu_gemv(&g, router->dtype, (int)m->nt, 0, (int)m->rvec, E,
                         (n + (int)m->nt - 1) / (int)m->nt, ctx->ks);
        if (e != cudaSuccess)
            return cu_fail(err, e, "moe: router");
    }
    memset(&ra, 0, sizeof(ra));
    ra.logits = p.logits;
    ra.x = (const float *)x->data;
    ra.ldx = x->ld;
    ra.router = router->data;
    ra.ldr = router->ld;
    ra.rdtype = router->dtype;
    ra.rvec = (int)m->rvec;
    ra.d = d;
    ra.bias = bias->data;
    ra.bdtype = bias->dtype;
    ra.n = n;
    ra.E = E;
    ra.k = k;
    ra.scoring = (int)m->scoring;
    ra.method = (int)m->method;
    ra.n_group = (int)m->n_group;
    ra.topk_group = (int)m->topk_group;
    ra.norm = (int)m->norm;
    ra.scale = m->scale;
    ra.idx = p.idx;
    ra.w = p.w;

    memset(&ba, 0, sizeof(ba));
    ba.idx = p.idx;
    ba.n = n;
    ba.k = k;
    ba.E = E;
    ba.I = I;
    ba.d = d;
    ba.tab_gate = (const void *const *)tab->dev;
    ba.tab_up = (const void *const *)tab->dev + E;
    ba.tab_down = (const void *const *)tab->dev + 2 * E;
    ba.ld_gu = tab->ld_gu;
    ba.ld_dn = tab->ld_dn;
    ba.sh_gate = shg->data;
    ba.sh_up = shu->data;
    ba.sh_down = shd->data;
    ba.sh_ld_gu = shg->ld;
    ba.sh_ld_dn = shd->ld;
    ba.n_parts = np;
    ba.part = part;
    ba.esize = (int)vl2_dtype_size(tab->dtype);
    ba.pos = p.pos;
    ba.slot_tok = p.slot_tok;
    ba.g_up = p.g_up;
    ba.g_dn = p.g_dn;
    ba.n_groups = p.n_groups;
    if (m->route == MOE_ROUTE_FUSED)
        e = vl2__cu_moe_router_route(&ra, &ba, p.logits, ctx->ticket_d, ctx->ks);
    else if (m->route == MOE_ROUTE_SLOTS)
        e = vl2__cu_moe_route_small(&ra, &ba, ctx->ks);
    else if ((e = vl2__cu_moe_route(&ra, ctx->ks)) == cudaSuccess)
        e = vl2__cu_moe_bucket(&ba, ctx->ks);
    if (e != cudaSuccess)
        return cu_fail(err, e, "moe: routing");
    vl2__cu_prof_sub(ctx, SUB_MOE_ROUTE);

    if (mma) {
        struct vl2__cu_mma_args m;
        e = vl2__cu_convert(p.xb, d, VL2_DTYPE_BF16, (const float *)x->data, x->ld, n, d,
                            ctx->ks);
        if (e != cudaSuccess)
            return cu_fail(err, e, "moe: convert");
        memset(&m, 0, sizeof(m));
        m.a = (const uint16_t *)p.xb;
        m.lda = d;
        m.out = p.h;
        m.ldo = p.ldh;
        m.groups = p.g_up;
        m.n_groups = p.n_groups;
        e = vl2__cu_mma_grouped(&m, 1, (int)p.ldh, max_groups, n, ctx->ks);
        if (e != cudaSuccess)
            return cu_fail(err, e, "moe: gate/up");
        vl2__cu_prof_sub(ctx, SUB_MOE_GATEUP);
        m.a = (const uint16_t *)p.h;
        m.lda = p.ldh;
        m.out = p.y;
        m.ldo = d;
        m.groups = p.g_dn;
        e = vl2__cu_mma_grouped(&m, 0, d, max_groups, n, ctx->ks);
        if (e != cudaSuccess)
            return cu_fail(err, e, "moe: down");
        vl2__cu_prof_sub(ctx, SUB_MOE_DOWN);
    } else {
        struct vl2__cu_gemv_args g;
        const int nt = slots ? 1 : (int)m->nt, vec = (int)m->vec;
        memset(&g, 0, sizeof(g));
        g.x = (const float *)x->data;
        g.ldx = x->ld;
        g.y = (float *)p.h;
        g.ldy = p.ldh;
        g.groups = p.g_up;
        g.n_groups = p.n_groups;
        if (slots && np > 0 && ctx->opt.moe_prefetch) {
            /* slot groups: the shared parts first, their weights known now */
            g.pre.wa = shg->data;
            g.pre.wb = shu->data;
            g.pre.ldw = shg->ld;
            g.pre.part_rows = part;
            g.pre.K = d;
            g.pre.n_out = part;
            g.pre.per_part = n;
            g.pre.n_groups = np * n;
        }
        e = vl2__cu_gemv(&g, tab->dtype, nt, 1, vec, (int)p.ldh, max_groups, ctx->ks);
        if (e != cudaSuccess)
            return cu_fail(err, e, "moe: gate/up");
        vl2__cu_prof_sub(ctx, SUB_MOE_GATEUP);
        g.x = (const float *)p.h;
        g.ldx = p.ldh;
        g.y = p.y;
        g.ldy = d;
        g.groups = p.g_dn;
        if (g.pre.n_groups) {
            g.pre.wa = shd->data;
            g.pre.wb = NULL;
            g.pre.ldw = shd->ld;
            g.pre.part_rows = 0;
            g.pre.part_cols = part;
            g.pre.K = part;
            g.pre.n_out = d;
        }
        e = vl2__cu_gemv(&g, tab->dtype, nt, 0, vec, d, max_groups, ctx->ks);
        if (e != cudaSuccess)
            return cu_fail(err, e, "moe: down");
        vl2__cu_prof_sub(ctx, SUB_MOE_DOWN);
    }
    e = vl2__cu_moe_combine((float *)out->data, out->ld, p.y, d, p.pos, p.w, n, k, d, np,
                            ctx->ks);
    vl2__cu_prof_sub(ctx, SUB_MOE_COMBINE);
    return launched(e, "moe: combine", err);
}

void vl2__cu_moe_tabs_free(struct vl2_backend_ctx *ctx)
{
    int i;
    for (i = 0; i < ctx->n_tabs; i++) {
        vl2__cu_dev_free(ctx, ctx->tabs[i]->dev, 3 * (size_t)ctx->tabs[i]->E * sizeof(void *));
        free(ctx->tabs[i]->host);
        free(ctx->tabs[i]);
    }
    free(ctx->tabs);
    ctx->tabs = NULL;
    ctx->n_tabs = ctx->cap_tabs = 0;
}

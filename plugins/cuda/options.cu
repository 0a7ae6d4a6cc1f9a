/* options.cu - the option parser of vl2-backend-cuda.so (the options are
 * listed in cuda-options.h; the grammar is plugins/vl2-options.h). */
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "cuda-ctx.h"
#include "vl2-options.h"

/* Integer and boolean options: where each goes and what it accepts. */
struct opt_int {
    const char *key;
    size_t      off;       /* offset of its int in struct vl2__cu_opts */
    long        min, max;  /* min 0, max 1: a boolean */
};

#define OPT_FIELD(f) offsetof(struct vl2__cu_opts, f)

static const struct opt_int opt_ints[] = {
    { "graphs", OPT_FIELD(graphs), 0, 1 },
    { "pdl", OPT_FIELD(pdl), 0, 1 },
    { "profile", OPT_FIELD(profile), 0, 1 },
    { "mla_split", OPT_FIELD(mla_split), 1, 64 },
#ifdef VL2_TEST_KNOBS
    { "mma_linear", OPT_FIELD(mma_linear), 0, 1 },
    { "fuse_route", OPT_FIELD(fuse_route), 0, 1 },
    { "fuse_router", OPT_FIELD(fuse_router), 0, 1 },
    { "mla_decode", OPT_FIELD(mla_decode), 0, 1 },
    { "mla_blas_rows", OPT_FIELD(mla_blas_rows), 0, 1 << 20 },
    { "mla_chunk", OPT_FIELD(mla_chunk), 0, 1 << 20 },
    { "mla_qgroup", OPT_FIELD(mla_qgroup), 0, 1024 },
    { "moe_prefetch", OPT_FIELD(moe_prefetch), 0, 1 },
    { "prefer_shared", OPT_FIELD(prefer_shared), 0, 1 },
#endif
};

#ifndef VL2_TEST_KNOBS
/* The test knobs a production build does not know (see cuda-options.h). */
static const char *const test_knobs[] = {
    "mma_linear", "fuse_route", "fuse_router", "mla_decode", "mla_blas_rows", "mla_chunk",
    "mla_qgroup", "moe_prefetch", "prefer_shared", "skip",
};
#endif

#ifdef VL2_TEST_KNOBS
/* skip=K+K: op kinds or steps of attn_mla; an unknown name is an error. */
static int parse_skip(struct vl2__cu_opts *o, const struct vl2_opt *opt, struct vl2_err *err)
{
    static const char *const subs[3] = { "mla_queries", "mla_core", "mla_out" };
    const char *q = opt->val;

    while (*q) {
        const char *pl = strchr(q, '+');
        size_t l = pl ? (size_t)(pl - q) : strlen(q);
        int k, found = 0;
        for (k = 1; k < OPK_COUNT; k++)
            if (strlen(vl2__cu_op_names[k]) == l && !strncmp(q, vl2__cu_op_names[k], l)) {
                o->skip_ops |= 1u << k;
                found = 1;
            }
        for (k = 0; k < 3; k++)
            if (strlen(subs[k]) == l && !strncmp(q, subs[k], l)) {
                o->skip_sub |= 1u << k;
                found = 1;
            }
        if (!found)
            return vl2_err_set(err, VL2_EINVAL,
                               "cuda: option skip '%s': '%.*s' is no op kind nor mla_queries, "
                               "mla_core, mla_out", opt->val, (int)l, q);
        q += l;
        if (*q == '+')
            q++;
    }
    return 0;
}
#endif

int vl2__cu_opts_parse(struct vl2__cu_opts *o, const char *options, struct vl2_err *err)
{
    static const char *const r1[3] = { "1", "2", "4" };
    const char *pos = options;
    struct vl2_opt opt;
    size_t i;
    int r;

    memset(o, 0, sizeof(*o));
    o->graphs = 1;
    o->pdl = 1;
    o->gemv_r1 = 1;
    o->mla_split = 32;
    o->mma_linear = 1;
    o->fuse_route = 1;
    o->fuse_router = 1;
    o->mla_decode = 1;
    o->mla_blas_rows = MLA_BLAS_ROWS;
    o->moe_prefetch = 1;

    while ((r = vl2_opt_next(&pos, &opt, "cuda", err)) > 0) {
        for (i = 0; i < sizeof(opt_ints) / sizeof(opt_ints[0]); i++)
            if (!strcmp(opt.key, opt_ints[i].key))
                break;
        if (i < sizeof(opt_ints) / sizeof(opt_ints[0])) {
            const struct opt_int *d = &opt_ints[i];
            int *field = (int *)((char *)o + d->off);
            long v = 0;
            if (d->min == 0 && d->max == 1)
                r = vl2_opt_bool(&opt, field, "cuda", err);
            else if ((r = vl2_opt_long(&opt, d->min, d->max, &v, "cuda", err)) == 0)
                *field = (int)v;
        } else if (!strcmp(opt.key, "gemv_r1")) {
            int k = 0;
            if ((r = vl2_opt_choice(&opt, r1, 3, &k, "cuda", err)) == 0)
                o->gemv_r1 = 1 << k;
#ifdef VL2_TEST_KNOBS
        } else if (!strcmp(opt.key, "skip")) {
            r = parse_skip(o, &opt, err);
#endif
        } else {
            r = vl2_opt_unknown(&opt, "cuda", err);
#ifndef VL2_TEST_KNOBS
            for (i = 0; i < sizeof(test_knobs) / sizeof(test_knobs[0]); i++)
                if (!strcmp(opt.key, test_knobs[i]))
                    r = vl2_err_set(err, VL2_EINVAL,
                                    "cuda: option '%s': a test knob, built only into test "
                                    "builds (meson -Dtest_knobs=true)", opt.key);
#endif
        }
        if (r < 0)
            return r;
    }
    return r < 0 ? r : 0;
}

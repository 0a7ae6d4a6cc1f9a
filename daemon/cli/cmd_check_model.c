/* cmd_check_model.c - vl2d check-model DIR: validate a checkpoint directory
 * against its config.json and summarise it; or print one line naming the
 * first problem and exit 1. */
#include <getopt.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cmd.h"
#include "vl2-backend.h"
#include "weights.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: vl2d check-model [--config-only | --scan] DIR\n\n"
               "Validate the DeepSeek-VL2 checkpoint in DIR (config.json, processor_config.json,\n"
               "safetensors shards) and print a summary.  --config-only reads config.json alone\n"
               "and computes the parameter counts from the shapes it implies.  --scan also reads\n"
               "every tensor and fails on NaN or infinite values.\n");
}

static const char *billions(int64_t n, char *buf, size_t cap)
{
    if (n >= 1000000000)
        snprintf(buf, cap, "%.2f B", (double) n / 1e9);
    else
        snprintf(buf, cap, "%.1f M", (double) n / 1e6);
    return buf;
}

static const char *variant(const struct vl2_model_config *c, const struct vl2_param_counts *p)
{
    if (p->total == 3370501440LL)
        return "tiny (deepseek-vl2-tiny shapes)";
    if (p->total == 16148349504LL)
        return "small (deepseek-vl2-small shapes)";
    if (p->total == 27480134248LL)
        return "base (deepseek-vl2 shapes)";
    if (!c->lm.use_mla)
        return "tiny-like (MHA)";
    if (c->lm.scoring == VL2_SCORING_SIGMOID || c->lm.topk_method == VL2_TOPK_NOAUX_TC)
        return "base-like (MLA, sigmoid routing)";
    return "small-like (MLA, softmax routing)";
}

static void print_summary(const char *dir, const struct vl2_model_config *c,
                          const struct vl2_processor_config *pc, const struct vl2_param_counts *p,
                          const struct vl2_weights *w)
{
    static const char *const methods[] = { "greedy", "group-limited greedy", "noaux_tc" };
    const struct vl2_lm_config *l = &c->lm;
    char b1[32], b2[32], b3[32];
    int i, n_moe = 0, max_tiles = 0;

    for (i = 0; i < l->n_layer; i++)
        n_moe += vl2_lm_is_moe(l, i);
    printf("model:       %s\n", dir);
    printf("variant:     %s\n", variant(c, p));
    printf("vision:      SigLIP ViT width %d, %d layers, %d heads x %d, mlp %d, patch %d, "
           "image %d (%dx%d patches)\n", c->vision.d_model, c->vision.n_layer, c->vision.n_head,
           c->vision.d_head, c->vision.d_mlp, c->vision.patch_size, c->vision.image_size,
           c->vision.grid, c->vision.grid);
    printf("projector:   %s %d -> %d (downsample %d)\n", c->proj.type,
           c->proj.d_in * c->proj.downsample * c->proj.downsample, c->proj.d_model,
           c->proj.downsample);
    printf("language:    hidden %d, %d layers (%d dense, %d MoE), context %d, rope theta %g\n",
           l->d_model, l->n_layer, l->n_layer - n_moe, n_moe, l->n_ctx, l->rope_theta);
    if (l->use_mla) {
        char q[32];
        if (l->q_lora_rank)
            snprintf(q, sizeof(q), "%d", l->q_lora_rank);
        else
            snprintf(q, sizeof(q), "none");
        printf("attention:   MLA, %d heads, kv_lora_rank %d, q_lora_rank %s, qk nope %d + rope %d, "
               "v %d\n", l->n_head, l->kv_lora_rank, q, l->d_nope, l->d_rope, l->d_v);
    } else {
        printf("attention:   MHA, %d heads (%d kv) x %d\n", l->n_head, l->n_kv_head, l->d_head);
    }
    if (l->n_expert) {
        printf("routing:     %s, %s", l->scoring == VL2_SCORING_SIGMOID ? "sigmoid" : "softmax",
               methods[l->topk_method]);
        if (l->n_group)
            printf(" (%d groups, keep %d)", l->n_group, l->topk_group);
        printf(", %d experts top-%d, %d shared, %s, scale %g\n", l->n_expert, l->top_k,
               l->n_shared, l->norm_topk_prob ? "renormalised" : "not renormalised",
               l->routed_scale);
    } else {
        printf("routing:     none (dense language model)\n");
    }
    printf("parameters:  total %lld (%s); activated per token %lld (%s), language only %lld "
           "(%s)\n", (long long) p->total, billions(p->total, b1, sizeof(b1)),
           (long long) p->active, billions(p->active, b2, sizeof(b2)), (long long) p->active_lm,
           billions(p->active_lm, b3, sizeof(b3)));
    printf("             vision %lld (attn_pool %lld, unused), projector %lld, language %lld\n",
           (long long) p->vision, (long long) p->vision_pool, (long long) p->projector,
           (long long) p->language);
    if (w) {
        unsigned long long by[4] = { 0 };
        size_t k, n = vl2_weights_count(w);
        for (k = 0; k < n; k++) {
            const struct vl2_st_tensor *t = vl2_weights_at(w, k);
            if (t->dtype >= 0 && t->dtype < 4)
                by[t->dtype] += t->size;
        }
        printf("tensors:     %zu in %zu file%s, %zu bytes mapped;", n, vl2_weights_file_count(w),
               vl2_weights_file_count(w) == 1 ? "" : "s", vl2_weights_mapped_size(w));
        for (k = 0; k < 4; k++)
            if (by[k])
                printf(" %s %llu bytes", vl2_dtype_st_name((int) k), by[k]);
        printf("\n");
    }
    printf("vocabulary:  %d (bos %d, eos %d, pad %d)\n", l->n_vocab, l->bos_id, l->eos_id,
           l->pad_id);
    for (i = 0; i < c->n_candidates; i++) {
        int t = (c->candidates[i][0] / c->vision.image_size) *
                (c->candidates[i][1] / c->vision.image_size);
        if (t > max_tiles)
            max_tiles = t;
    }
    printf("tiling:      tile_tag %s, global view %s, %d candidate resolutions (up to %d local "
           "tiles); tiling for prompts with <= 2 images\n", c->tile_tag, c->global_view_pos,
           c->n_candidates, max_tiles);
    if (pc)
        printf("processor:   %d candidates, patch %d, downsample %d, mean %.3g/%.3g/%.3g, "
               "std %.3g/%.3g/%.3g, image token '%s', format '%s'\n", pc->n_candidates,
               pc->patch_size, pc->downsample, pc->image_mean[0], pc->image_mean[1],
               pc->image_mean[2], pc->image_std[0], pc->image_std[1], pc->image_std[2],
               pc->image_token, pc->sft_format);
}

/* Number of NaN / infinite values among @n elements of @dtype at @p. */
static size_t count_nonfinite(int dtype, const uint8_t *p, size_t n)
{
    size_t i, bad = 0;

    if (dtype == VL2_DTYPE_BF16 || dtype == VL2_DTYPE_F16) {
        const uint16_t mask = dtype == VL2_DTYPE_BF16 ? 0x7f80 : 0x7c00;
        for (i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            bad += (h & mask) == mask;
        }
    } else if (dtype == VL2_DTYPE_F32) {
        for (i = 0; i < n; i++) {
            uint32_t u;
            memcpy(&u, p + 4 * i, 4);
            bad += (u & 0x7f800000u) == 0x7f800000u;
        }
    }
    return bad;
}

/* Read every tensor; fail on the first one holding NaN or Inf. */
static int scan(const struct vl2_weights *w, double *ret_seconds, struct vl2_err *err)
{
    struct timespec t0, t1;
    size_t i, n = vl2_weights_count(w);

    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (i = 0; i < n; i++) {
        const struct vl2_st_tensor *t = vl2_weights_at(w, i);
        size_t bad = count_nonfinite(t->dtype, t->data, t->size / vl2_dtype_size(t->dtype));
        if (bad)
            return vl2_err_set(err, VL2_EFORMAT, "weights: tensor '%s': %zu NaN or infinite "
                               "values", t->name, bad);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    *ret_seconds = (double) (t1.tv_sec - t0.tv_sec) + (double) (t1.tv_nsec - t0.tv_nsec) * 1e-9;
    return 0;
}

int vl2d_cmd_check_model(int argc, char **argv)
{
    static const struct option opts[] = {
        { "config-only", no_argument, NULL, 'c' },
        { "scan", no_argument, NULL, 's' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    struct vl2_model_config cfg;
    struct vl2_processor_config pc;
    struct vl2_tokenizer_config tc;
    struct vl2_param_counts counts;
    struct vl2_weights *w = NULL;
    struct vl2_err err = { 0 };
    int c, config_only = 0, do_scan = 0, r;
    double secs = 0;
    const char *dir;

    optind = 1;
    while ((c = getopt_long(argc, argv, "csh", opts, NULL)) != -1) {
        switch (c) {
        case 'c': config_only = 1; break;
        case 's': do_scan = 1; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind != argc - 1) {
        usage(stderr);
        return 2;
    }
    dir = argv[optind];

    if ((r = vl2_config_load(&cfg, dir, &err)) < 0 ||
        (r = vl2_model_count_params(&cfg, &counts, &err)) < 0)
        goto out_fail;
    if (config_only) {
        print_summary(dir, &cfg, NULL, &counts, NULL);
        return 0;
    }
    if ((r = vl2_processor_config_load(&pc, dir, &err)) < 0 ||
        (r = vl2_tokenizer_config_load(&tc, dir, &err)) < 0 ||
        (r = vl2_weights_open(&w, dir, &err)) < 0 ||
        (r = vl2_model_validate(&cfg, w, &err)) < 0 ||
        (do_scan && (r = scan(w, &secs, &err)) < 0))
        goto out_fail;
    print_summary(dir, &cfg, &pc, &counts, w);
    {
        char path[4096];
        snprintf(path, sizeof(path), "%s/tokenizer.json", dir);
        printf("tokenizer:   tokenizer.json %s, tokenizer_config.json %s\n",
               access(path, R_OK) == 0 ? "present" : "absent",
               tc.present ? "present" : "absent (defaults)");
    }
    if (do_scan)
        printf("scan:        every value finite; %zu bytes read in %.2f s (%.0f MB/s)\n",
               vl2_weights_mapped_size(w), secs,
               secs > 0 ? (double) vl2_weights_mapped_size(w) / secs / 1e6 : 0.0);
    vl2_weights_close(w);
    return 0;

out_fail:
    vl2_weights_close(w);
    printf("check-model: %s\n", err.msg[0] ? err.msg : vl2_status_name(r));
    return 1;
}

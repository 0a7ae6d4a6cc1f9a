/* test-config.c - config.json / processor_config.json / tokenizer_config.json
 * parsing: bundled defaults, the golden micro configs, the published base
 * config, and errors that name the key and the value.
 *
 * usage: test-config GOLDEN_DIR TOKENIZER_SRC_DIR */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "weights.h"
#include "weights-impl.h"
#include "../common/check.h"

/* The published deepseek-vl2 (base) config.json (spec 1.1; a copy is in
 * repository earl-juanico/rca), compacted. */
static const char base_config[] =
    "{\"candidate_resolutions\": [[384, 384], [384, 768], [768, 384], [384, 1152], [1152, 384],"
    " [384, 1536], [1536, 384], [768, 768], [384, 1920], [1920, 384], [384, 2304], [2304, 384],"
    " [768, 1152], [1152, 768], [384, 2688], [2688, 384], [384, 3072], [3072, 384], [768, 1536],"
    " [1536, 768], [384, 3456], [3456, 384], [1152, 1152]],"
    " \"global_view_pos\": \"head\","
    " \"language_config\": {\"architectures\": [\"DeepseekV2ForCausalLM\"],"
    "  \"auto_map\": {\"AutoConfig\": \"configuration_deepseek.DeepseekV2Config\","
    "   \"AutoModel\": \"modeling_deepseek.DeepseekV2Model\","
    "   \"AutoModelForCausalLM\": \"modeling_deepseek.CustomDeepseekV2ForCausalLM\"},"
    "  \"bos_token_id\": 0, \"eos_token_id\": 1, \"first_k_dense_replace\": 1,"
    "  \"hidden_size\": 2560, \"intermediate_size\": 12288, \"lm_head\": false,"
    "  \"max_position_embeddings\": 4096, \"model_type\": \"deepseek_v2\","
    "  \"moe_intermediate_size\": 1536, \"n_group\": 1, \"n_routed_experts\": 72,"
    "  \"n_shared_experts\": 2, \"norm_topk_prob\": true, \"num_experts_per_tok\": 6,"
    "  \"q_lora_rank\": null, \"rm_head\": false, \"routed_scaling_factor\": 2.0,"
    "  \"scoring_func\": \"sigmoid\", \"topk_group\": 1, \"topk_method\": \"noaux_tc\","
    "  \"torch_dtype\": \"bfloat16\", \"vocab_size\": 129280},"
    " \"model_type\": \"deepseek_vl_v2\","
    " \"projector_config\": {\"model_type\": \"mlp_projector\", \"n_embed\": 2560},"
    " \"tile_tag\": \"2D\", \"torch_dtype\": \"bfloat16\", \"transformers_version\": \"4.38.2\","
    " \"vision_config\": {\"layers\": 27, \"mlp_ratio\": 3.7362,"
    "  \"model_name\": \"siglip_so400m_patch14_384\", \"model_type\": \"vision\","
    "  \"patch_size\": 14, \"width\": 1152}}";

static int parse(struct vl2_model_config *c, const char *s, struct vl2_err *err)
{
    vl2_err_clear(err);
    return vl2_config_parse(c, s, strlen(s), err);
}

static void test_defaults(void)
{
    /* every language key absent: the bundled DeepseekV2Config defaults (spec 1.1) */
    const char *s = "{\"tile_tag\": \"2D\", \"vision_config\": {\"width\": 1152},"
                    " \"projector_config\": {\"n_embed\": 4096}, \"unknown_key\": [1, {}]}";
    struct vl2_model_config c;
    struct vl2_err err = { 0 };

    CHECK_EQ_INT(parse(&c, s, &err), 0);
    CHECK_EQ_INT(c.lm.n_vocab, 102400);
    CHECK_EQ_INT(c.lm.d_model, 4096);
    CHECK_EQ_INT(c.lm.d_ff, 11008);
    CHECK_EQ_INT(c.lm.d_ff_expert, 1407);
    CHECK_EQ_INT(c.lm.n_layer, 30);
    CHECK_EQ_INT(c.lm.n_head, 32);
    CHECK_EQ_INT(c.lm.n_kv_head, 32);
    CHECK_EQ_INT(c.lm.use_mla, 1);
    CHECK_EQ_INT(c.lm.q_lora_rank, 1536);
    CHECK_EQ_INT(c.lm.kv_lora_rank, 512);
    CHECK_EQ_INT(c.lm.d_rope, 64);
    CHECK_EQ_INT(c.lm.d_v, 128);
    CHECK_EQ_INT(c.lm.d_nope, 128);
    CHECK_EQ_INT(c.lm.n_expert, 0);   /* null: dense */
    CHECK_EQ_INT(c.lm.n_shared, 0);
    CHECK(c.lm.routed_scale == 1.0);
    CHECK_EQ_INT(c.lm.moe_layer_freq, 1);
    CHECK_EQ_INT(c.lm.first_dense, 0);
    CHECK_EQ_INT(c.lm.norm_topk_prob, 0);
    CHECK_EQ_INT(c.lm.scoring, VL2_SCORING_SOFTMAX);
    CHECK_EQ_INT(c.lm.n_ctx, 2048);
    CHECK(c.lm.rms_eps == 1e-6);
    CHECK_EQ_INT(c.lm.bos_id, 100000);
    CHECK_EQ_INT(c.lm.eos_id, 100001);
    CHECK_EQ_INT(c.lm.pad_id, -1);
    CHECK(c.lm.rope_theta == 10000.0);
    CHECK_EQ_INT(c.lm.has_rope_scaling, 0);
    CHECK_EQ_INT(c.lm.tie_embeddings, 0);
    /* VisionEncoderConfig defaults */
    CHECK_EQ_INT(c.vision.n_layer, 24);
    CHECK_EQ_INT(c.vision.n_head, 16);
    CHECK_EQ_INT(c.vision.d_mlp, 4608);
    CHECK_EQ_INT(c.vision.patch_size, 16);
    CHECK_EQ_INT(c.vision.image_size, 384);
    CHECK_EQ_INT(c.vision.grid, 24);
    /* MlpProjectorConfig defaults */
    CHECK_EQ_INT(c.proj.d_in, 1152);
    CHECK_EQ_INT(c.proj.depth, 2);
    CHECK_EQ_INT(c.proj.downsample, 2);
    CHECK(!strcmp(c.proj.type, "downsample_mlp_gelu"));
    /* DeepseekVLV2Config */
    CHECK_EQ_INT(c.n_candidates, 1);
    CHECK_EQ_INT(c.candidates[0][0], 384);
    CHECK(!strcmp(c.global_view_pos, "head"));

    /* num_key_value_heads null -> num_attention_heads */
    CHECK_EQ_INT(parse(&c, "{\"tile_tag\": \"2D\", \"vision_config\": {\"width\": 1152},"
                         " \"projector_config\": {\"n_embed\": 64}, \"language_config\":"
                         " {\"hidden_size\": 64, \"num_attention_heads\": 4, \"use_mla\": false,"
                         " \"num_key_value_heads\": null}}", &err), 0);
    CHECK_EQ_INT(c.lm.n_kv_head, 4);
    CHECK_EQ_INT(c.lm.d_head, 16);
}

static void test_base(void)
{
    struct vl2_model_config c;
    struct vl2_param_counts p;
    struct vl2_err err = { 0 };

    CHECK_EQ_INT(parse(&c, base_config, &err), 0);
    /* spec 1.2, base column */
    CHECK_EQ_INT(c.lm.d_model, 2560);
    CHECK_EQ_INT(c.lm.n_layer, 30);
    CHECK_EQ_INT(c.lm.n_head, 32);
    CHECK_EQ_INT(c.lm.use_mla, 1);
    CHECK_EQ_INT(c.lm.q_lora_rank, 0);
    CHECK_EQ_INT(c.lm.kv_lora_rank, 512);
    CHECK_EQ_INT(c.lm.d_nope, 128);
    CHECK_EQ_INT(c.lm.d_rope, 64);
    CHECK_EQ_INT(c.lm.d_v, 128);
    CHECK_EQ_INT(c.lm.d_ff, 12288);
    CHECK_EQ_INT(c.lm.d_ff_expert, 1536);
    CHECK_EQ_INT(c.lm.n_expert, 72);
    CHECK_EQ_INT(c.lm.n_shared, 2);
    CHECK_EQ_INT(c.lm.top_k, 6);
    CHECK_EQ_INT(c.lm.first_dense, 1);
    CHECK_EQ_INT(c.lm.topk_method, VL2_TOPK_NOAUX_TC);
    CHECK_EQ_INT(c.lm.scoring, VL2_SCORING_SIGMOID);
    CHECK_EQ_INT(c.lm.n_group, 1);
    CHECK_EQ_INT(c.lm.topk_group, 1);
    CHECK_EQ_INT(c.lm.norm_topk_prob, 1);
    CHECK(c.lm.routed_scale == 2.0);
    CHECK_EQ_INT(c.lm.n_vocab, 129280);
    CHECK_EQ_INT(c.lm.n_ctx, 4096);
    CHECK_EQ_INT(c.lm.bos_id, 0);
    CHECK_EQ_INT(c.lm.eos_id, 1);
    CHECK_EQ_INT(c.vision.d_model, 1152);
    CHECK_EQ_INT(c.vision.n_layer, 27);
    CHECK_EQ_INT(c.vision.n_head, 16);
    CHECK_EQ_INT(c.vision.d_head, 72);
    CHECK_EQ_INT(c.vision.d_mlp, 4304);
    CHECK_EQ_INT(c.vision.patch_size, 14);
    CHECK_EQ_INT(c.vision.grid, 27);
    CHECK_EQ_INT(c.proj.d_in, 1152);
    CHECK_EQ_INT(c.proj.d_model, 2560);
    CHECK_EQ_INT(c.n_candidates, 23);
    CHECK_EQ_INT(c.candidates[22][0], 1152);
    CHECK_EQ_INT(c.candidates[5][0], 384);
    CHECK_EQ_INT(c.candidates[5][1], 1536);
    /* spec 1.3: exact totals */
    CHECK_EQ_INT(vl2_model_count_params(&c, &p, &err), 0);
    CHECK_EQ_INT(p.total, 27480134248LL);
    CHECK_EQ_INT(p.vision - p.vision_pool, 412987248LL);
    CHECK_EQ_INT(p.vision_pool, 15238352LL);
    /* activated: spec 4 124 M (LM) and 4.555 B (with vision + projector) */
    CHECK(llabs(p.active_lm - 4124000000LL) < 1000000);
    CHECK(llabs(p.active - 4555000000LL) < 1000000);
}

static void test_golden(const char *golden)
{
    static const char *const presets[] = { "micro-mha", "micro-mla", "micro-base" };
    struct vl2_err err = { 0 };
    int i;

    for (i = 0; i < 3; i++) {
        struct vl2_model_config c;
        struct vl2_processor_config pc;
        char dir[4096];

        snprintf(dir, sizeof(dir), "%s/%s", golden, presets[i]);
        CHECK_EQ_INT(vl2_config_load(&c, dir, &err), 0);
        /* golden README table */
        CHECK_EQ_INT(c.vision.d_model, 64);
        CHECK_EQ_INT(c.vision.n_layer, 2);
        CHECK_EQ_INT(c.vision.n_head, 4);
        CHECK_EQ_INT(c.vision.d_mlp, 239);
        CHECK_EQ_INT(c.lm.d_model, 64);
        CHECK_EQ_INT(c.lm.n_layer, 3);
        CHECK_EQ_INT(c.lm.first_dense, 1);
        CHECK_EQ_INT(c.lm.d_ff, 128);
        CHECK_EQ_INT(c.lm.n_expert, 8);
        CHECK_EQ_INT(c.lm.top_k, 2);
        CHECK_EQ_INT(c.lm.d_ff_expert, 32);
        CHECK_EQ_INT(c.lm.n_shared, 2);
        CHECK_EQ_INT(c.lm.n_vocab, 129280);
        CHECK_EQ_INT(c.n_candidates, 23);
        CHECK_EQ_INT(vl2_lm_is_moe(&c.lm, 0), 0);
        CHECK_EQ_INT(vl2_lm_is_moe(&c.lm, 1), 1);
        CHECK_EQ_INT(vl2_lm_is_moe(&c.lm, 2), 1);
        if (i == 0) {
            CHECK_EQ_INT(c.lm.use_mla, 0);
            CHECK_EQ_INT(c.lm.d_head, 16);
            CHECK_EQ_INT(c.lm.scoring, VL2_SCORING_SOFTMAX);
            CHECK_EQ_INT(c.lm.topk_method, VL2_TOPK_GREEDY);
        } else if (i == 1) {
            CHECK_EQ_INT(c.lm.use_mla, 1);
            CHECK_EQ_INT(c.lm.kv_lora_rank, 32);
            CHECK_EQ_INT(c.lm.q_lora_rank, 0);
            CHECK_EQ_INT(c.lm.d_nope, 16);
            CHECK_EQ_INT(c.lm.d_rope, 8);
            CHECK_EQ_INT(c.lm.d_v, 16);
        } else {
            CHECK_EQ_INT(c.lm.q_lora_rank, 48);
            CHECK_EQ_INT(c.lm.scoring, VL2_SCORING_SIGMOID);
            CHECK_EQ_INT(c.lm.topk_method, VL2_TOPK_NOAUX_TC);
            CHECK_EQ_INT(c.lm.n_group, 4);
            CHECK_EQ_INT(c.lm.topk_group, 2);
            CHECK_EQ_INT(c.lm.norm_topk_prob, 1);
            CHECK(c.lm.routed_scale == 2.0);
        }
        CHECK_EQ_INT(vl2_processor_config_load(&pc, dir, &err), 0);
        CHECK_EQ_INT(pc.n_candidates, 23);
        CHECK_EQ_INT(pc.candidates[1][1], 768);
        CHECK_EQ_INT(pc.patch_size, 14);
        CHECK_EQ_INT(pc.downsample, 2);
        CHECK(pc.image_mean[0] == 0.5f && pc.image_std[2] == 0.5f);
        CHECK_EQ_INT(pc.normalize, 1);
        CHECK(!strcmp(pc.image_token, "<image>"));
        CHECK(!strcmp(pc.sft_format, "deepseek"));
        CHECK(!strcmp(pc.pad_token, "<\xef\xbd\x9c\xe2\x96\x81pad\xe2\x96\x81\xef\xbd\x9c>"));
    }
}

/* pre + extra (whose keys replace those of @lm) + lm + "}}" */
static void lm_text(char *buf, size_t cap, const char *pre, const char *extra, const char *lm)
{
    char keys[1024], rest[1024], *p, *q;

    snprintf(rest, sizeof(rest), "%s", lm);
    snprintf(keys, sizeof(keys), "%s", extra);
    /* drop from @lm every key that @extra sets */
    for (p = strchr(keys, '"'); p; p = strchr(q + 1, '"')) {
        char key[64], *k, *end;
        q = strchr(p + 1, '"');
        if (!q || q - p >= (long) sizeof(key))
            break;
        snprintf(key, sizeof(key), "%.*s", (int) (q - p + 1), p);
        if (q[1] != ':')
            continue;
        k = strstr(rest, key);
        if (!k)
            continue;
        end = strchr(k, ',');
        if (end)
            memmove(k, end + 2, strlen(end + 2) + 1);
        else
            *k = '\0';
    }
    p = rest + strlen(rest);
    while (p > rest && (p[-1] == ' ' || p[-1] == ','))
        *--p = '\0';
    snprintf(buf, cap, "%s%s%s}}", pre, rest, extra);
}

/* Impossible values: the error names the key and the value. */
static void test_errors(void)
{
    struct vl2_model_config c;
    struct vl2_err err = { 0 };
    char buf[1024];
    /* extra keys come first: with a duplicate key the config is refused */
    const char *pre = "{\"tile_tag\": \"2D\", \"vision_config\": {\"width\": 64, \"heads\": 4},"
                      " \"projector_config\": {\"input_dim\": 64, \"n_embed\": 64},"
                      " \"language_config\": {";
    const char *lm = "\"hidden_size\": 64, \"num_attention_heads\": 4, \"use_mla\": false,"
                     " \"num_key_value_heads\": 4,"
                     " \"intermediate_size\": 128, \"n_routed_experts\": 8,"
                     " \"num_experts_per_tok\": 2, \"moe_intermediate_size\": 32,"
                     " \"topk_method\": \"greedy\"";
#define LM(extra) (lm_text(buf, sizeof(buf), pre, extra, lm), buf)

    CHECK_EQ_INT(parse(&c, LM(""), &err), 0);
    CHECK_ERR(parse(&c, LM(", \"num_attention_heads\": 0"), &err), &err, VL2_EFORMAT,
              "language_config.num_attention_heads", "= 0");
    CHECK_ERR(parse(&c, LM(", \"num_attention_heads\": 3"), &err), &err, VL2_EFORMAT,
              "language_config.num_attention_heads", "= 3", "hidden_size");
    CHECK_ERR(parse(&c, LM(", \"num_experts_per_tok\": 9"), &err), &err, VL2_EFORMAT,
              "language_config.num_experts_per_tok", "= 9");
    CHECK_ERR(parse(&c, LM(", \"hidden_size\": \"abc\""), &err), &err, VL2_EFORMAT,
              "language_config.hidden_size", "\"abc\"");
    CHECK_ERR(parse(&c, LM(", \"hidden_size\": 64.5"), &err), &err, VL2_EFORMAT,
              "language_config.hidden_size", "64.5");
    CHECK_ERR(parse(&c, LM(", \"hidden_size\": null"), &err), &err, VL2_EFORMAT,
              "language_config.hidden_size", "null");
    CHECK_ERR(parse(&c, LM(", \"hidden_size\": 1e300"), &err), &err, VL2_EFORMAT,
              "language_config.hidden_size");
    CHECK_ERR(parse(&c, LM(", \"topk_method\": \"bogus\""), &err), &err, VL2_EFORMAT,
              "language_config.topk_method", "bogus");
    CHECK_ERR(parse(&c, LM(", \"n_group\": 3, \"topk_group\": 1"), &err), &err, VL2_EFORMAT,
              "language_config.n_group", "= 3");
    CHECK_ERR(parse(&c, LM(", \"n_group\": 4, \"topk_group\": 5"), &err), &err, VL2_EFORMAT,
              "language_config.topk_group", "= 5");
    CHECK_ERR(parse(&c, LM(", \"scoring_func\": \"relu\""), &err), &err, VL2_EFORMAT,
              "language_config.scoring_func", "relu");
    CHECK_ERR(parse(&c, LM(", \"num_key_value_heads\": 3"), &err), &err, VL2_EFORMAT,
              "language_config.num_key_value_heads", "= 3");
    CHECK_ERR(parse(&c, LM(", \"vocab_size\": -5"), &err), &err, VL2_EFORMAT,
              "language_config.vocab_size", "-5");
    CHECK_ERR(parse(&c, LM(", \"eos_token_id\": 200000"), &err), &err, VL2_EFORMAT,
              "language_config.eos_token_id", "200000");
    CHECK_ERR(parse(&c, LM(", \"use_mla\": true, \"kv_lora_rank\": null"), &err), &err,
              VL2_EFORMAT, "language_config.kv_lora_rank", "null");
    CHECK_ERR(parse(&c, LM(", \"use_mla\": true, \"kv_lora_rank\": 32, \"qk_rope_head_dim\": 7"),
                    &err), &err, VL2_EFORMAT, "language_config.qk_rope_head_dim", "= 7");
    CHECK_ERR(parse(&c, LM(", \"use_mla\": 1"), &err), &err, VL2_EFORMAT,
              "language_config.use_mla", "= 1");
    CHECK_ERR(parse(&c, LM(", \"rope_scaling\": {\"type\": \"yarn\"}"), &err), &err,
              VL2_EUNSUPPORTED, "language_config.rope_scaling", "yarn");
    CHECK_ERR(parse(&c, LM(", \"hidden_act\": \"gelu\""), &err), &err, VL2_EUNSUPPORTED,
              "hidden_act", "gelu");
    CHECK_ERR(parse(&c, LM(", \"topk_method\": \"noaux_tc\", \"n_group\": 1, \"topk_group\": 1"),
                    &err), &err, VL2_EFORMAT, "scoring_func", "noaux_tc");
    CHECK_ERR(parse(&c, LM(", \"intermediate_size\": 0, \"first_k_dense_replace\": 1"), &err),
              &err, VL2_EFORMAT, "language_config.intermediate_size", "= 0");
    /* a config that leaves topk_method at the bundled default "gready" */
    CHECK_ERR(parse(&c, "{\"tile_tag\": \"2D\", \"vision_config\": {\"width\": 1152},"
                        " \"projector_config\": {\"n_embed\": 4096}, \"language_config\":"
                        " {\"n_routed_experts\": 8, \"num_experts_per_tok\": 2}}", &err),
              &err, VL2_EFORMAT, "topk_method", "gready");

    /* sections and top level */
    CHECK_ERR(parse(&c, "{\"tile_tag\": \"2D\", \"language_config\": []}", &err), &err,
              VL2_EFORMAT, "language_config", "[]");
    CHECK_ERR(parse(&c, "{\"language_config\": {}}", &err), &err, VL2_EUNSUPPORTED, "tile_tag");
    CHECK_ERR(parse(&c, "{\"tile_tag\": \"1D\"}", &err), &err, VL2_EUNSUPPORTED, "tile_tag",
              "1D");
    CHECK_ERR(parse(&c, "{\"tile_tag\": \"2D\", \"vision_config\": {\"heads\": 0}}", &err), &err,
              VL2_EFORMAT, "vision_config.heads", "= 0");
    CHECK_ERR(parse(&c, "{\"tile_tag\": \"2D\", \"vision_config\": {\"width\": 1000, \"heads\": "
                        "16}}", &err), &err, VL2_EFORMAT, "vision_config.heads", "16");
    CHECK_ERR(parse(&c, "{\"tile_tag\": \"2D\", \"vision_config\": {\"width\": 1152},"
                        " \"projector_config\": {\"n_embed\": 2048}}", &err), &err, VL2_EFORMAT,
              "projector_config.n_embed", "2048", "4096");
    CHECK_ERR(parse(&c, "{\"tile_tag\": \"2D\"}", &err), &err, VL2_EFORMAT,
              "projector_config.input_dim", "1152", "1024");
    CHECK_ERR(parse(&c, "{\"tile_tag\": \"2D\", \"vision_config\": {\"width\": 1152},"
                        " \"projector_config\": {\"n_embed\": 4096}, \"candidate_resolutions\":"
                        " [[384]]}", &err), &err, VL2_EFORMAT, "candidate_resolutions", "[384]");
    CHECK_ERR(parse(&c, "{\"tile_tag\": \"2D\", \"vision_config\": {\"width\": 1152},"
                        " \"projector_config\": {\"n_embed\": 4096}, \"candidate_resolutions\":"
                        " [[384, 400]]}", &err), &err, VL2_EFORMAT, "candidate_resolutions",
              "400");
    CHECK_ERR(parse(&c, "{\"tile_tag\": \"2D\", \"model_type\": \"llama\"}", &err), &err,
              VL2_EFORMAT, "model_type", "llama");
    CHECK_ERR(parse(&c, "{\"tile_tag\": ", &err), &err, VL2_EFORMAT, "not valid JSON");
    CHECK_ERR(parse(&c, "[1, 2]", &err), &err, VL2_EFORMAT, "not a JSON object");
    CHECK_ERR(parse(&c, "", &err), &err, VL2_EFORMAT, "not valid JSON");
    /* text need not be NUL-terminated: only len bytes are read */
    {
        const char *s = "{\"tile_tag\": \"2D\"}garbage";
        vl2_err_clear(&err);
        CHECK_ERR(vl2_config_parse(&c, s, 18, &err), &err, VL2_EFORMAT, "input_dim");
    }
#undef LM
}

static void test_files(const char *tokdir)
{
    struct vl2_processor_config pc;
    struct vl2_tokenizer_config tc;
    struct vl2_model_config c;
    struct vl2_err err = { 0 };
    char dir[] = "/tmp/vl2-test-config-XXXXXX", path[256];
    FILE *f;

    CHECK(mkdtemp(dir) != NULL);
    /* no processor_config.json / tokenizer_config.json: the spec's defaults */
    CHECK_EQ_INT(vl2_processor_config_load(&pc, dir, &err), 0);
    CHECK_EQ_INT(pc.n_candidates, 23);
    CHECK_EQ_INT(pc.candidates[22][1], 1152);
    CHECK_EQ_INT(pc.patch_size, 14);
    CHECK_EQ_INT(pc.downsample, 2);
    CHECK(pc.image_mean[1] == 0.5f);
    CHECK(!strcmp(pc.image_token, "<image>"));
    CHECK_EQ_INT(vl2_tokenizer_config_load(&tc, dir, &err), 0);
    CHECK_EQ_INT(tc.present, 0);
    /* config.json missing */
    vl2_err_clear(&err);
    CHECK_ERR(vl2_config_load(&c, dir, &err), &err, VL2_ENOTFOUND, "config.json");

    snprintf(path, sizeof(path), "%s/processor_config.json", dir);
    f = fopen(path, "w");
    fputs("{\"image_std\": [0.5, 0, 0.5]}", f);
    fclose(f);
    vl2_err_clear(&err);
    CHECK_ERR(vl2_processor_config_load(&pc, dir, &err), &err, VL2_EFORMAT,
              "processor_config.image_std", "[0.5,0,0.5]", "processor_config.json");
    f = fopen(path, "w");
    fputs("{\"patch_size\": 16, \"candidate_resolutions\": [[384, 384], [768, 384]]}", f);
    fclose(f);
    CHECK_EQ_INT(vl2_processor_config_load(&pc, dir, &err), 0);
    CHECK_EQ_INT(pc.patch_size, 16);
    CHECK_EQ_INT(pc.n_candidates, 2);
    CHECK_EQ_INT(pc.candidates[1][0], 768);
    CHECK(pc.image_std[0] == 0.5f);   /* absent keys keep defaults */
    (void) unlink(path);

    snprintf(path, sizeof(path), "%s/config.json", dir);
    f = fopen(path, "w");
    fputs("{\"tile_tag\": \"2D\", \"language_config\": {\"hidden_size\": 0}}", f);
    fclose(f);
    vl2_err_clear(&err);
    CHECK_ERR(vl2_config_load(&c, dir, &err), &err, VL2_EFORMAT, "config.json",
              "language_config.hidden_size", "= 0");
    (void) unlink(path);
    (void) rmdir(dir);

    /* the shipped tokenizer_config.json */
    CHECK_EQ_INT(vl2_tokenizer_config_load(&tc, tokdir, &err), 0);
    CHECK_EQ_INT(tc.present, 1);
    CHECK_EQ_INT(tc.add_bos_token, 1);
    CHECK_EQ_INT(tc.add_eos_token, 0);
    CHECK_EQ_INT(tc.model_max_length, 131072);
    CHECK(!strcmp(tc.bos_token, "<\xef\xbd\x9c" "begin\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"));
    CHECK(!strcmp(tc.pad_token, "<\xef\xbd\x9c\xe2\x96\x81pad\xe2\x96\x81\xef\xbd\x9c>"));
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: test-config GOLDEN_DIR TOKENIZER_DIR\n");
        return 2;
    }
    test_defaults();
    test_base();
    test_golden(argv[1]);
    test_errors();
    test_files(argv[2]);
    return check_report("test-config");
}

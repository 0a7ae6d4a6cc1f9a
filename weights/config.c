/* config.c - config.json, processor_config.json and tokenizer_config.json of
 * a DeepSeek-VL2 checkpoint directory (spec 1.1 - 1.2).
 *
 * Missing keys take the defaults of the classes bundled with the official
 * code (DeepseekV2Config, VisionEncoderConfig, MlpProjectorConfig,
 * DeepseekVLV2Config), not those of upstream transformers.  Unknown keys are
 * ignored.  Every error names the key (dotted path) and its value. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "weights.h"
#include "weights-impl.h"

#define CONFIG_MAX_SIZE (16u << 20)

/* The 23 candidate resolutions of the released checkpoints, (width, height). */
const int vl2__default_candidates[23][2] = {
    { 384, 384 },   { 384, 768 },   { 768, 384 },   { 384, 1152 },  { 1152, 384 }, { 384, 1536 },
    { 1536, 384 },  { 768, 768 },   { 384, 1920 },  { 1920, 384 },  { 384, 2304 }, { 2304, 384 },
    { 768, 1152 },  { 1152, 768 },  { 384, 2688 },  { 2688, 384 },  { 384, 3072 }, { 3072, 384 },
    { 768, 1536 },  { 1536, 768 },  { 384, 3456 },  { 3456, 384 },  { 1152, 1152 },
};

/* ---- typed getters ---------------------------------------------------- */

/* A short rendering of @item for error messages. */
static void show(const cJSON *item, char *out, size_t cap)
{
    char *s = item ? cJSON_PrintUnformatted(item) : NULL;

    if (!s) {
        snprintf(out, cap, "%s", item ? "?" : "(missing)");
        return;
    }
    if (strlen(s) > 60)
        snprintf(out, cap, "%.57s...", s);
    else
        snprintf(out, cap, "%s", s);
    free(s);
}

static int badc(struct vl2_err *err, int code, const char *sect, const char *key,
                const cJSON *item, const char *why)
{
    char v[72];

    show(item, v, sizeof(v));
    return vl2_err_set(err, code, "config: key '%s%s%s' = %s: %s", sect ? sect : "",
                       sect ? "." : "", key, v, why);
}

static int bad(struct vl2_err *err, const char *sect, const char *key, const cJSON *item,
               const char *why)
{
    return badc(err, VL2_EFORMAT, sect, key, item, why);
}

/* Integer key: absent -> @def; null -> @null_val when @null_ok, else error. */
static int get_int(const cJSON *obj, const char *sect, const char *key, int def, int null_ok,
                   int null_val, int *out, struct vl2_err *err)
{
    const cJSON *it = obj ? cJSON_GetObjectItemCaseSensitive(obj, key) : NULL;
    double d;

    if (!it) {
        *out = def;
        return 0;
    }
    if (cJSON_IsNull(it)) {
        if (!null_ok)
            return bad(err, sect, key, it, "must not be null");
        *out = null_val;
        return 0;
    }
    if (!cJSON_IsNumber(it))
        return bad(err, sect, key, it, "expected an integer");
    d = it->valuedouble;
    if (!isfinite(d) || d != floor(d) || d < INT_MIN || d > INT_MAX)
        return bad(err, sect, key, it, "expected an integer");
    *out = (int) d;
    return 0;
}

static int get_double(const cJSON *obj, const char *sect, const char *key, double def,
                      double *out, struct vl2_err *err)
{
    const cJSON *it = obj ? cJSON_GetObjectItemCaseSensitive(obj, key) : NULL;

    if (!it) {
        *out = def;
        return 0;
    }
    if (!cJSON_IsNumber(it) || !isfinite(it->valuedouble))
        return bad(err, sect, key, it, "expected a number");
    *out = it->valuedouble;
    return 0;
}

static int get_bool(const cJSON *obj, const char *sect, const char *key, int def, int *out,
                    struct vl2_err *err)
{
    const cJSON *it = obj ? cJSON_GetObjectItemCaseSensitive(obj, key) : NULL;

    if (!it) {
        *out = def;
        return 0;
    }
    if (!cJSON_IsBool(it))
        return bad(err, sect, key, it, "expected true or false");
    *out = cJSON_IsTrue(it) ? 1 : 0;
    return 0;
}

/* String key copied into @out (@cap bytes); absent -> @def; null -> @def
 * when @null_ok. */
static int get_str(const cJSON *obj, const char *sect, const char *key, const char *def,
                   int null_ok, char *out, size_t cap, struct vl2_err *err)
{
    const cJSON *it = obj ? cJSON_GetObjectItemCaseSensitive(obj, key) : NULL;
    const char *s = def;

    if (it && cJSON_IsNull(it) && null_ok)
        it = NULL;
    if (it) {
        /* tokenizer_config.json may hold an AddedToken object {"content": ...} */
        if (cJSON_IsObject(it) && cJSON_IsString(cJSON_GetObjectItemCaseSensitive(it, "content")))
            s = cJSON_GetObjectItemCaseSensitive(it, "content")->valuestring;
        else if (cJSON_IsString(it))
            s = it->valuestring;
        else
            return bad(err, sect, key, it, "expected a string");
    }
    if (strlen(s) >= cap)
        return bad(err, sect, key, it, "string too long");
    snprintf(out, cap, "%s", s);
    return 0;
}

static const cJSON *get_obj(const cJSON *root, const char *key, int *r, struct vl2_err *err)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(root, key);

    *r = 0;
    if (!it || cJSON_IsNull(it))
        return NULL;   /* every key takes its defaults */
    if (!cJSON_IsObject(it)) {
        *r = bad(err, NULL, key, it, "expected an object");
        return NULL;
    }
    return it;
}

static int get_candidates(const cJSON *obj, const char *sect, int *n_out, int (*out)[2],
                          struct vl2_err *err)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, "candidate_resolutions");
    const cJSON *pair;
    int n = 0;

    if (!it)
        return 1;  /* absent: caller applies its default */
    if (!cJSON_IsArray(it) || cJSON_GetArraySize(it) < 1)
        return bad(err, sect, "candidate_resolutions", it, "expected a non-empty list of pairs");
    if (cJSON_GetArraySize(it) > VL2_MAX_CANDIDATES)
        return bad(err, sect, "candidate_resolutions", it, "more than 64 entries");
    cJSON_ArrayForEach(pair, it) {
        const cJSON *w, *h;
        char why[96];

        snprintf(why, sizeof(why), "entry %d must be [width, height], positive multiples of 14",
                 n);
        if (!cJSON_IsArray(pair) || cJSON_GetArraySize(pair) != 2)
            return bad(err, sect, "candidate_resolutions", pair, why);
        w = cJSON_GetArrayItem(pair, 0);
        h = cJSON_GetArrayItem(pair, 1);
        if (!cJSON_IsNumber(w) || !cJSON_IsNumber(h) || w->valuedouble != floor(w->valuedouble) ||
            h->valuedouble != floor(h->valuedouble) || w->valuedouble < 14 ||
            h->valuedouble < 14 || w->valuedouble > 16384 || h->valuedouble > 16384)
            return bad(err, sect, "candidate_resolutions", pair, why);
        out[n][0] = (int) w->valuedouble;
        out[n][1] = (int) h->valuedouble;
        n++;
    }
    *n_out = n;
    return 0;
}

static int cmp_name(const void *a, const void *b)
{
    return strcmp(*(const char *const *) a, *(const char *const *) b);
}

/* Python's json keeps the last of duplicate keys, cJSON finds the first:
 * refuse duplicates rather than read a different value than the official code. */
static int check_duplicates(const cJSON *it, const char *what, int depth, struct vl2_err *err)
{
    const cJSON *c;
    const char **names;
    size_t n = 0, i;
    int r = 0;

    if (depth > 64)
        return vl2_err_set(err, VL2_EFORMAT, "%s: nested more than 64 levels deep", what);
    for (c = it->child; c; c = c->next) {
        n++;
        if ((cJSON_IsObject(c) || cJSON_IsArray(c)) &&
            (r = check_duplicates(c, what, depth + 1, err)) < 0)
            return r;
    }
    if (!cJSON_IsObject(it) || n < 2)
        return 0;
    names = malloc(n * sizeof(*names));
    if (!names)
        return vl2_err_set(err, VL2_ENOMEM, "%s: out of memory", what);
    for (c = it->child, i = 0; c; c = c->next)
        names[i++] = c->string ? c->string : "";
    qsort(names, n, sizeof(*names), cmp_name);
    for (i = 1; i < n; i++)
        if (!strcmp(names[i - 1], names[i])) {
            r = vl2_err_set(err, VL2_EFORMAT, "%s: key '%.64s' appears twice in one object", what,
                            names[i]);
            break;
        }
    free(names);
    return r;
}

static int parse_json(cJSON **ret, const char *what, const char *text, size_t len,
                      struct vl2_err *err)
{
    int r;

    const char *end = NULL;
    cJSON *root;

    root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    if (!root) {
        size_t at = end && end >= text && end <= text + len ? (size_t) (end - text) : 0;
        return vl2_err_set(err, VL2_EFORMAT, "%s: not valid JSON (error near byte %zu)", what,
                           at);
    }
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return vl2_err_set(err, VL2_EFORMAT, "%s: top level is not a JSON object", what);
    }
    r = check_duplicates(root, what, 0, err);
    if (r < 0) {
        cJSON_Delete(root);
        return r;
    }
    *ret = root;
    return 0;
}

/* ---- config.json -------------------------------------------------------- */

#define CHECK(cond, sect, key, it, why)                                                      \
    do {                                                                                     \
        if (!(cond))                                                                         \
            return bad(err, sect, key, it, why);                                             \
    } while (0)

static const cJSON *item(const cJSON *obj, const char *key)
{
    return obj ? cJSON_GetObjectItemCaseSensitive(obj, key) : NULL;
}

static int parse_vision(struct vl2_vision_config *v, const cJSON *o, struct vl2_err *err)
{
    const char *S = "vision_config";
    char name[64], pool[16];
    int r, cls, ignore_head;

    if ((r = get_int(o, S, "width", 1024, 0, 0, &v->d_model, err)) < 0 ||
        (r = get_int(o, S, "layers", 24, 0, 0, &v->n_layer, err)) < 0 ||
        (r = get_int(o, S, "heads", 16, 0, 0, &v->n_head, err)) < 0 ||
        (r = get_double(o, S, "mlp_ratio", 4.0, &v->mlp_ratio, err)) < 0 ||
        (r = get_int(o, S, "patch_size", 16, 0, 0, &v->patch_size, err)) < 0 ||
        (r = get_int(o, S, "image_size", 384, 0, 0, &v->image_size, err)) < 0 ||
        (r = get_str(o, S, "model_name", "siglip_large_patch16_384", 1, name, sizeof(name),
                     err)) < 0 ||
        (r = get_str(o, S, "global_pool", "map", 1, pool, sizeof(pool), err)) < 0 ||
        (r = get_bool(o, S, "class_token", 0, &cls, err)) < 0 ||
        (r = get_bool(o, S, "ignore_head", 1, &ignore_head, err)) < 0)
        return r;
    CHECK(v->d_model >= 1 && v->d_model <= 65536, S, "width", item(o, "width"),
          "must be in 1..65536");
    CHECK(v->n_layer >= 1 && v->n_layer <= 1024, S, "layers", item(o, "layers"),
          "must be in 1..1024");
    CHECK(v->n_head >= 1 && v->d_model % v->n_head == 0, S, "heads", item(o, "heads"),
          "must be positive and divide vision_config.width");
    CHECK(v->mlp_ratio > 0 && v->mlp_ratio <= 64, S, "mlp_ratio", item(o, "mlp_ratio"),
          "must be in (0, 64]");
    CHECK(v->patch_size >= 1 && v->patch_size <= 1024, S, "patch_size", item(o, "patch_size"),
          "must be in 1..1024");
    CHECK(v->image_size >= v->patch_size && v->image_size <= 8192, S, "image_size",
          item(o, "image_size"), "must be at least patch_size and at most 8192");
    if (cls)
        return vl2_err_set(err, VL2_EUNSUPPORTED,
                           "config: key 'vision_config.class_token' = true: not supported");
    v->d_head = v->d_model / v->n_head;
    /* Python int(width * mlp_ratio): truncation of the double product */
    v->d_mlp = (int) ((double) v->d_model * v->mlp_ratio);
    CHECK(v->d_mlp >= 1, S, "mlp_ratio", item(o, "mlp_ratio"), "gives an empty MLP");
    v->grid = v->image_size / v->patch_size;
    (void) ignore_head;
    return 0;
}

static int parse_projector(struct vl2_projector_config *p, const cJSON *o, struct vl2_err *err)
{
    const char *S = "projector_config";
    int r, pooling;

    if ((r = get_str(o, S, "projector_type", "downsample_mlp_gelu", 0, p->type, sizeof(p->type),
                     err)) < 0 ||
        (r = get_int(o, S, "input_dim", 1152, 0, 0, &p->d_in, err)) < 0 ||
        (r = get_int(o, S, "n_embed", 2048, 0, 0, &p->d_model, err)) < 0 ||
        (r = get_int(o, S, "depth", 2, 0, 0, &p->depth, err)) < 0 ||
        (r = get_int(o, S, "mlp_ratio", 1, 0, 0, &p->mlp_ratio, err)) < 0 ||
        (r = get_int(o, S, "downsample_ratio", 2, 0, 0, &p->downsample, err)) < 0 ||
        (r = get_bool(o, S, "token_pooling", 0, &pooling, err)) < 0)
        return r;
    if (strcmp(p->type, "downsample_mlp_gelu") != 0)
        return vl2_err_set(err, VL2_EUNSUPPORTED,
                           "config: key 'projector_config.projector_type' = \"%s\": only "
                           "\"downsample_mlp_gelu\" is supported", p->type);
    CHECK(p->d_in >= 1, S, "input_dim", item(o, "input_dim"), "must be positive");
    CHECK(p->d_model >= 1 && p->d_model <= 65536, S, "n_embed", item(o, "n_embed"),
          "must be in 1..65536");
    CHECK(p->depth == 2, S, "depth", item(o, "depth"), "only depth 2 is supported");
    CHECK(p->mlp_ratio == 1, S, "mlp_ratio", item(o, "mlp_ratio"), "only 1 is supported");
    CHECK(p->downsample >= 1 && p->downsample <= 8, S, "downsample_ratio",
          item(o, "downsample_ratio"), "must be in 1..8");
    if (pooling)
        return vl2_err_set(err, VL2_EUNSUPPORTED,
                           "config: key 'projector_config.token_pooling' = true: not supported");
    return 0;
}

static int parse_lm(struct vl2_lm_config *l, const cJSON *o, struct vl2_err *err)
{
    const char *S = "language_config";
    char topk[32], scoring[16], act[16];
    const cJSON *it;
    int r, n_kv;

    if ((r = get_int(o, S, "vocab_size", 102400, 0, 0, &l->n_vocab, err)) < 0 ||
        (r = get_int(o, S, "hidden_size", 4096, 0, 0, &l->d_model, err)) < 0 ||
        (r = get_int(o, S, "intermediate_size", 11008, 0, 0, &l->d_ff, err)) < 0 ||
        (r = get_int(o, S, "moe_intermediate_size", 1407, 0, 0, &l->d_ff_expert, err)) < 0 ||
        (r = get_int(o, S, "num_hidden_layers", 30, 0, 0, &l->n_layer, err)) < 0 ||
        (r = get_int(o, S, "num_attention_heads", 32, 0, 0, &l->n_head, err)) < 0 ||
        (r = get_int(o, S, "num_key_value_heads", 32, 1, -1, &n_kv, err)) < 0 ||
        (r = get_bool(o, S, "use_mla", 1, &l->use_mla, err)) < 0 ||
        (r = get_int(o, S, "q_lora_rank", 1536, 1, 0, &l->q_lora_rank, err)) < 0 ||
        (r = get_int(o, S, "kv_lora_rank", 512, 1, 0, &l->kv_lora_rank, err)) < 0 ||
        (r = get_int(o, S, "qk_nope_head_dim", 128, 1, 0, &l->d_nope, err)) < 0 ||
        (r = get_int(o, S, "qk_rope_head_dim", 64, 1, 0, &l->d_rope, err)) < 0 ||
        (r = get_int(o, S, "v_head_dim", 128, 1, 0, &l->d_v, err)) < 0 ||
        (r = get_int(o, S, "n_routed_experts", 0, 1, 0, &l->n_expert, err)) < 0 ||
        (r = get_int(o, S, "n_shared_experts", 0, 1, 0, &l->n_shared, err)) < 0 ||
        (r = get_int(o, S, "num_experts_per_tok", 0, 1, 0, &l->top_k, err)) < 0 ||
        (r = get_str(o, S, "topk_method", "gready", 0, topk, sizeof(topk), err)) < 0 ||
        (r = get_str(o, S, "scoring_func", "softmax", 0, scoring, sizeof(scoring), err)) < 0 ||
        (r = get_str(o, S, "hidden_act", "silu", 0, act, sizeof(act), err)) < 0 ||
        (r = get_int(o, S, "n_group", 0, 1, 0, &l->n_group, err)) < 0 ||
        (r = get_int(o, S, "topk_group", 0, 1, 0, &l->topk_group, err)) < 0 ||
        (r = get_bool(o, S, "norm_topk_prob", 0, &l->norm_topk_prob, err)) < 0 ||
        (r = get_double(o, S, "routed_scaling_factor", 1.0, &l->routed_scale, err)) < 0 ||
        (r = get_int(o, S, "first_k_dense_replace", 0, 0, 0, &l->first_dense, err)) < 0 ||
        (r = get_int(o, S, "moe_layer_freq", 1, 0, 0, &l->moe_layer_freq, err)) < 0 ||
        (r = get_int(o, S, "max_position_embeddings", 2048, 0, 0, &l->n_ctx, err)) < 0 ||
        (r = get_double(o, S, "rms_norm_eps", 1e-6, &l->rms_eps, err)) < 0 ||
        (r = get_double(o, S, "rope_theta", 10000.0, &l->rope_theta, err)) < 0 ||
        (r = get_int(o, S, "bos_token_id", 100000, 1, -1, &l->bos_id, err)) < 0 ||
        (r = get_int(o, S, "eos_token_id", 100001, 1, -1, &l->eos_id, err)) < 0 ||
        (r = get_int(o, S, "pad_token_id", -1, 1, -1, &l->pad_id, err)) < 0 ||
        (r = get_bool(o, S, "tie_word_embeddings", 0, &l->tie_embeddings, err)) < 0 ||
        (r = get_bool(o, S, "attention_bias", 0, &l->attention_bias, err)) < 0)
        return r;

    CHECK(l->n_vocab >= 1 && l->n_vocab <= (1 << 24), S, "vocab_size", item(o, "vocab_size"),
          "must be in 1..16777216");
    CHECK(l->d_model >= 1 && l->d_model <= 65536, S, "hidden_size", item(o, "hidden_size"),
          "must be in 1..65536");
    CHECK(l->n_layer >= 1 && l->n_layer <= 1024, S, "num_hidden_layers",
          item(o, "num_hidden_layers"), "must be in 1..1024");
    CHECK(l->n_head >= 1 && l->n_head <= 1024, S, "num_attention_heads",
          item(o, "num_attention_heads"), "must be in 1..1024");
    CHECK(l->n_ctx >= 1, S, "max_position_embeddings", item(o, "max_position_embeddings"),
          "must be positive");
    CHECK(l->rms_eps > 0, S, "rms_norm_eps", item(o, "rms_norm_eps"), "must be positive");
    CHECK(l->rope_theta > 0, S, "rope_theta", item(o, "rope_theta"), "must be positive");
    CHECK(l->bos_id >= -1 && l->bos_id < l->n_vocab, S, "bos_token_id", item(o, "bos_token_id"),
          "must be a token id below vocab_size");
    CHECK(l->eos_id >= -1 && l->eos_id < l->n_vocab, S, "eos_token_id", item(o, "eos_token_id"),
          "must be a token id below vocab_size");
    CHECK(l->pad_id >= -1 && l->pad_id < l->n_vocab, S, "pad_token_id", item(o, "pad_token_id"),
          "must be a token id below vocab_size");
    if (strcmp(act, "silu") != 0)
        return vl2_err_set(err, VL2_EUNSUPPORTED,
                           "config: key 'language_config.hidden_act' = \"%s\": only \"silu\" "
                           "is supported", act);
    if (l->attention_bias)
        return vl2_err_set(err, VL2_EUNSUPPORTED,
                           "config: key 'language_config.attention_bias' = true: not supported");
    if (l->tie_embeddings)
        return vl2_err_set(err, VL2_EUNSUPPORTED, "config: key "
                           "'language_config.tie_word_embeddings' = true: not supported");
    it = item(o, "rope_scaling");
    l->has_rope_scaling = it && !cJSON_IsNull(it);
    if (l->has_rope_scaling)
        return badc(err, VL2_EUNSUPPORTED, S, "rope_scaling", it, "not supported");

    l->n_kv_head = n_kv < 0 ? l->n_head : n_kv;
    if (!l->use_mla) {
        CHECK(l->d_model % l->n_head == 0, S, "num_attention_heads",
              item(o, "num_attention_heads"), "must divide hidden_size");
        CHECK(l->n_kv_head >= 1 && l->n_head % l->n_kv_head == 0, S, "num_key_value_heads",
              item(o, "num_key_value_heads"), "must be positive and divide num_attention_heads");
        l->d_head = l->d_model / l->n_head;
        CHECK(l->d_head % 2 == 0, S, "num_attention_heads", item(o, "num_attention_heads"),
              "gives an odd head dimension (RoPE needs pairs)");
    } else {
        CHECK(l->q_lora_rank >= 0 && l->q_lora_rank <= 65536, S, "q_lora_rank",
              item(o, "q_lora_rank"), "must be null or in 1..65536");
        CHECK(l->kv_lora_rank >= 1 && l->kv_lora_rank <= 65536, S, "kv_lora_rank",
              item(o, "kv_lora_rank"), "must be in 1..65536 for MLA");
        CHECK(l->d_rope >= 2 && l->d_rope % 2 == 0 && l->d_rope <= 4096, S, "qk_rope_head_dim",
              item(o, "qk_rope_head_dim"), "must be even and in 2..4096 for MLA");
        CHECK(l->d_nope >= 0 && l->d_nope <= 4096, S, "qk_nope_head_dim",
              item(o, "qk_nope_head_dim"), "must be in 0..4096 for MLA");
        CHECK(l->d_v >= 1 && l->d_v <= 4096, S, "v_head_dim", item(o, "v_head_dim"),
              "must be in 1..4096 for MLA");
        l->d_head = l->d_nope + l->d_rope;
        l->n_kv_head = l->n_head;
    }

    CHECK(l->moe_layer_freq >= 1, S, "moe_layer_freq", item(o, "moe_layer_freq"),
          "must be positive");
    CHECK(l->first_dense >= 0, S, "first_k_dense_replace", item(o, "first_k_dense_replace"),
          "must not be negative");
    CHECK(l->n_expert >= 0 && l->n_expert <= 4096, S, "n_routed_experts",
          item(o, "n_routed_experts"), "must be null or in 1..4096");
    if (!strcmp(topk, "greedy"))
        l->topk_method = VL2_TOPK_GREEDY;
    else if (!strcmp(topk, "group_limited_greedy"))
        l->topk_method = VL2_TOPK_GROUP_LIMITED;
    else if (!strcmp(topk, "noaux_tc"))
        l->topk_method = VL2_TOPK_NOAUX_TC;
    else if (l->n_expert > 0)
        return vl2_err_set(err, VL2_EFORMAT, "config: key 'language_config.topk_method' = "
                           "\"%s\": expected \"greedy\", \"group_limited_greedy\" or "
                           "\"noaux_tc\"", topk);
    else
        l->topk_method = VL2_TOPK_GREEDY;
    if (!strcmp(scoring, "softmax"))
        l->scoring = VL2_SCORING_SOFTMAX;
    else if (!strcmp(scoring, "sigmoid"))
        l->scoring = VL2_SCORING_SIGMOID;
    else
        return vl2_err_set(err, VL2_EFORMAT, "config: key 'language_config.scoring_func' = "
                           "\"%s\": expected \"softmax\" or \"sigmoid\"", scoring);

    if (l->n_expert > 0) {
        CHECK(l->d_ff_expert >= 1 && l->d_ff_expert <= (1 << 20), S, "moe_intermediate_size",
              item(o, "moe_intermediate_size"), "must be in 1..1048576");
        CHECK(l->top_k >= 1 && l->top_k <= l->n_expert, S, "num_experts_per_tok",
              item(o, "num_experts_per_tok"), "must be in 1..n_routed_experts");
        CHECK(l->n_shared >= 0 && l->n_shared <= 64, S, "n_shared_experts",
              item(o, "n_shared_experts"), "must be null or in 0..64");
        CHECK(l->routed_scale > 0, S, "routed_scaling_factor", item(o, "routed_scaling_factor"),
              "must be positive");
        if (l->n_group > 0) {
            CHECK(l->n_expert % l->n_group == 0, S, "n_group", item(o, "n_group"),
                  "must divide n_routed_experts");
            CHECK(l->topk_group >= 1 && l->topk_group <= l->n_group, S, "topk_group",
                  item(o, "topk_group"), "must be in 1..n_group");
            CHECK(l->top_k <= l->topk_group * (l->n_expert / l->n_group), S,
                  "num_experts_per_tok", item(o, "num_experts_per_tok"),
                  "more than the experts of topk_group groups");
        } else {
            CHECK(l->n_group == 0, S, "n_group", item(o, "n_group"), "must be null or positive");
            CHECK(l->topk_method == VL2_TOPK_GREEDY, S, "n_group", item(o, "n_group"),
                  "group-limited routing needs n_group and topk_group");
        }
        if (l->topk_method == VL2_TOPK_NOAUX_TC && l->scoring != VL2_SCORING_SIGMOID)
            return vl2_err_set(err, VL2_EFORMAT, "config: key 'language_config.scoring_func' = "
                               "\"%s\": topk_method \"noaux_tc\" needs \"sigmoid\"", scoring);
        if (l->topk_method == VL2_TOPK_NOAUX_TC && l->n_group > 0) {
            /* the group score is the sum of the two best experts of the group */
            CHECK(l->n_expert / l->n_group >= 2, S, "n_group", item(o, "n_group"),
                  "noaux_tc needs at least 2 experts per group");
        }
    } else {
        l->n_expert = 0;
        l->n_shared = 0;
        l->top_k = 0;
    }
    /* bound the tensor list a config implies (DeepSeek-V3: 61 x 256) */
    CHECK((long long) l->n_layer * l->n_expert <= 65536, S, "n_routed_experts",
          item(o, "n_routed_experts"), "too many experts x layers (limit 65536)");
    /* dense layers exist unless every layer is MoE */
    {
        int i, dense = 0;
        for (i = 0; i < l->n_layer; i++)
            if (!vl2_lm_is_moe(l, i))
                dense = 1;
        if (dense)
            CHECK(l->d_ff >= 1 && l->d_ff <= (1 << 20), S, "intermediate_size",
                  item(o, "intermediate_size"), "must be in 1..1048576");
    }
    return 0;
}

int vl2_config_parse(struct vl2_model_config *c, const char *json, size_t len,
                     struct vl2_err *err)
{
    struct vl2_model_config cfg;
    const cJSON *vo, *po, *lo, *it;
    cJSON *root;
    int r, i;

    memset(&cfg, 0, sizeof(cfg));
    r = parse_json(&root, "config", json, len, err);
    if (r < 0)
        return vl2__err_oneline(err, r);

    it = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    if (it && !(cJSON_IsString(it) && !strcmp(it->valuestring, "deepseek_vl_v2"))) {
        r = bad(err, NULL, "model_type", it, "expected \"deepseek_vl_v2\"");
        goto out_free;
    }
    vo = get_obj(root, "vision_config", &r, err);
    if (r < 0)
        goto out_free;
    po = get_obj(root, "projector_config", &r, err);
    if (r < 0)
        goto out_free;
    lo = get_obj(root, "language_config", &r, err);
    if (r < 0)
        goto out_free;
    if ((r = parse_vision(&cfg.vision, vo, err)) < 0 ||
        (r = parse_projector(&cfg.proj, po, err)) < 0 ||
        (r = parse_lm(&cfg.lm, lo, err)) < 0)
        goto out_free;

    {
        char tag[64];
        if ((r = get_str(root, NULL, "tile_tag", "tile_tag", 0, tag, sizeof(tag), err)) < 0)
            goto out_free;
        if (strcmp(tag, "2D") != 0) {
            r = vl2_err_set(err, VL2_EUNSUPPORTED, "config: key 'tile_tag' = \"%s\"%s: only "
                            "\"2D\" is supported", tag,
                            cJSON_GetObjectItemCaseSensitive(root, "tile_tag") ? ""
                                                                              : " (default)");
            goto out_free;
        }
        memcpy(cfg.tile_tag, "2D", 3);
    }
    {
        char pos[64];
        if ((r = get_str(root, NULL, "global_view_pos", "head", 0, pos, sizeof(pos), err)) < 0)
            goto out_free;
        snprintf(cfg.global_view_pos, sizeof(cfg.global_view_pos), "%.7s", pos);
    }
    if (strcmp(cfg.global_view_pos, "head") != 0 && strcmp(cfg.global_view_pos, "tail") != 0) {
        r = bad(err, NULL, "global_view_pos", cJSON_GetObjectItemCaseSensitive(root,
                "global_view_pos"), "expected \"head\" or \"tail\"");
        goto out_free;
    }
    r = get_candidates(root, NULL, &cfg.n_candidates, cfg.candidates, err);
    if (r < 0)
        goto out_free;
    if (r == 1) {   /* DeepseekVLV2Config default ((384, 384),) */
        cfg.n_candidates = 1;
        cfg.candidates[0][0] = cfg.candidates[0][1] = 384;
    }

    /* cross-section consistency */
    if (cfg.proj.d_in != cfg.vision.d_model) {
        r = vl2_err_set(err, VL2_EFORMAT, "config: key 'projector_config.input_dim' = %d: must "
                        "equal vision_config.width (%d)", cfg.proj.d_in, cfg.vision.d_model);
        goto out_free;
    }
    if (cfg.proj.d_model != cfg.lm.d_model) {
        r = vl2_err_set(err, VL2_EFORMAT, "config: key 'projector_config.n_embed' = %d: must "
                        "equal language_config.hidden_size (%d)", cfg.proj.d_model,
                        cfg.lm.d_model);
        goto out_free;
    }
    for (i = 0; i < cfg.n_candidates; i++)
        if (cfg.candidates[i][0] % cfg.vision.image_size || cfg.candidates[i][1] %
            cfg.vision.image_size) {
            r = vl2_err_set(err, VL2_EFORMAT, "config: key 'candidate_resolutions' entry %d = "
                            "[%d, %d]: not a multiple of the image size %d", i,
                            cfg.candidates[i][0], cfg.candidates[i][1], cfg.vision.image_size);
            goto out_free;
        }
    *c = cfg;
    r = 0;
out_free:
    cJSON_Delete(root);
    return r < 0 ? vl2__err_oneline(err, r) : r;
}

/* ---- files ---------------------------------------------------------------- */

int vl2_file_read(const char *path, size_t max, const char *who, char **ret_buf, size_t *ret_len,
                  struct vl2_err *err)
{
    struct stat st;
    char *buf;
    size_t got = 0;
    int fd, r;

    r = vl2_file_open(path, who, &fd, &st, err);
    if (r < 0)
        return r;
    if ((uint64_t) st.st_size > max) {
        r = vl2_err_set(err, VL2_ELIMIT, "%s: '%s': %lld bytes, more than the limit of %zu",
                        who, path, (long long) st.st_size, max);
        goto out_close;
    }
    buf = malloc((size_t) st.st_size + 1);
    if (!buf) {
        r = vl2_err_set(err, VL2_ENOMEM, "%s: '%s': out of memory", who, path);
        goto out_close;
    }
    while (got < (size_t) st.st_size) {
        ssize_t n = read(fd, buf + got, (size_t) st.st_size - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            r = vl2_err_set(err, VL2_EIO, "%s: '%s': read failed: %s", who, path,
                            n < 0 ? strerror(errno) : "file shrank");
            free(buf);
            goto out_close;
        }
        got += (size_t) n;
    }
    buf[got] = '\0';
    *ret_buf = buf;
    *ret_len = got;
    r = 0;
out_close:
    close(fd);
    return r;
}

static int vl2_config_load_impl(struct vl2_model_config *c, const char *dir, struct vl2_err *err)
{
    char path[4096];
    char *buf;
    size_t len;
    int r;

    snprintf(path, sizeof(path), "%s/config.json", dir);
    r = vl2_file_read(path, CONFIG_MAX_SIZE, "weights", &buf, &len, err);
    if (r < 0)
        return r;
    r = vl2_config_parse(c, buf, len, err);
    free(buf);
    if (r < 0)
        vl2_err_prefix(err, r, path);
    return r;
}

/* ---- processor_config.json ------------------------------------------------ */

static int get_float3(const cJSON *o, const char *key, float out[3], struct vl2_err *err)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, key);
    int i;

    if (!it)
        return 0;
    if (!cJSON_IsArray(it) || cJSON_GetArraySize(it) != 3)
        return bad(err, "processor_config", key, it, "expected a list of 3 numbers");
    for (i = 0; i < 3; i++) {
        const cJSON *x = cJSON_GetArrayItem(it, i);
        if (!cJSON_IsNumber(x) || !isfinite(x->valuedouble))
            return bad(err, "processor_config", key, it, "expected a list of 3 numbers");
        out[i] = (float) x->valuedouble;
    }
    return 0;
}

void vl2__processor_config_defaults(struct vl2_processor_config *p)
{
    int i;

    memset(p, 0, sizeof(*p));
    p->n_candidates = 23;
    memcpy(p->candidates, vl2__default_candidates, sizeof(vl2__default_candidates));
    p->patch_size = 14;
    p->downsample = 2;
    for (i = 0; i < 3; i++) {
        p->image_mean[i] = 0.5f;
        p->image_std[i] = 0.5f;
    }
    p->normalize = 1;
    snprintf(p->image_token, sizeof(p->image_token), "<image>");
    snprintf(p->pad_token, sizeof(p->pad_token), "<\xef\xbd\x9c\xe2\x96\x81pad\xe2\x96\x81\xef\xbd\x9c>");
    snprintf(p->sft_format, sizeof(p->sft_format), "deepseek");
}

int vl2__processor_config_parse(struct vl2_processor_config *c, const char *json, size_t len,
                                struct vl2_err *err)
{
    const char *S = "processor_config";
    struct vl2_processor_config p;
    cJSON *root;
    int r, i;

    vl2__processor_config_defaults(&p);
    r = parse_json(&root, "processor_config", json, len, err);
    if (r < 0)
        return vl2__err_oneline(err, r);
    r = get_candidates(root, S, &p.n_candidates, p.candidates, err);
    if (r < 0)
        goto out_free;
    if ((r = get_int(root, S, "patch_size", 14, 0, 0, &p.patch_size, err)) < 0 ||
        (r = get_int(root, S, "downsample_ratio", 2, 0, 0, &p.downsample, err)) < 0 ||
        (r = get_float3(root, "image_mean", p.image_mean, err)) < 0 ||
        (r = get_float3(root, "image_std", p.image_std, err)) < 0 ||
        (r = get_bool(root, S, "normalize", 1, &p.normalize, err)) < 0 ||
        (r = get_str(root, S, "image_token", "<image>", 0, p.image_token, sizeof(p.image_token),
                     err)) < 0 ||
        (r = get_str(root, S, "pad_token", p.pad_token, 1, p.pad_token, sizeof(p.pad_token),
                     err)) < 0 ||
        (r = get_str(root, S, "sft_format", "deepseek", 0, p.sft_format, sizeof(p.sft_format),
                     err)) < 0)
        goto out_free;
    if (p.patch_size < 1 || p.patch_size > 1024) {
        r = bad(err, S, "patch_size", cJSON_GetObjectItemCaseSensitive(root, "patch_size"),
                "must be in 1..1024");
        goto out_free;
    }
    if (p.downsample < 1 || p.downsample > 8) {
        r = bad(err, S, "downsample_ratio",
                cJSON_GetObjectItemCaseSensitive(root, "downsample_ratio"), "must be in 1..8");
        goto out_free;
    }
    for (i = 0; i < 3; i++)
        if (p.image_std[i] == 0.0f) {
            r = bad(err, S, "image_std", cJSON_GetObjectItemCaseSensitive(root, "image_std"),
                    "must not contain 0");
            goto out_free;
        }
    if (!p.image_token[0]) {
        r = bad(err, S, "image_token", cJSON_GetObjectItemCaseSensitive(root, "image_token"),
                "must not be empty");
        goto out_free;
    }
    *c = p;
    r = 0;
out_free:
    cJSON_Delete(root);
    return r < 0 ? vl2__err_oneline(err, r) : r;
}

static int vl2_processor_config_load_impl(struct vl2_processor_config *c, const char *dir,
                              struct vl2_err *err)
{
    char path[4096];
    char *buf;
    size_t len;
    int r;

    snprintf(path, sizeof(path), "%s/processor_config.json", dir);
    r = vl2_file_read(path, CONFIG_MAX_SIZE, "weights", &buf, &len, err);
    if (r == VL2_ENOTFOUND) {
        vl2__processor_config_defaults(c);
        vl2_err_clear(err);
        return 0;
    }
    if (r < 0)
        return r;
    r = vl2__processor_config_parse(c, buf, len, err);
    free(buf);
    if (r < 0)
        vl2_err_prefix(err, r, path);
    return r;
}

/* ---- tokenizer_config.json ------------------------------------------------ */

int vl2__tokenizer_config_parse(struct vl2_tokenizer_config *c, const char *json, size_t len,
                                struct vl2_err *err)
{
    const char *S = "tokenizer_config";
    struct vl2_tokenizer_config t;
    const cJSON *it;
    cJSON *root;
    int r;

    memset(&t, 0, sizeof(t));
    r = parse_json(&root, "tokenizer_config", json, len, err);
    if (r < 0)
        return vl2__err_oneline(err, r);
    t.present = 1;
    t.model_max_length = 131072;
    if ((r = get_bool(root, S, "add_bos_token", 1, &t.add_bos_token, err)) < 0 ||
        (r = get_bool(root, S, "add_eos_token", 0, &t.add_eos_token, err)) < 0 ||
        (r = get_str(root, S, "bos_token",
                     "<\xef\xbd\x9c" "begin\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>", 1,
                     t.bos_token, sizeof(t.bos_token), err)) < 0 ||
        (r = get_str(root, S, "eos_token",
                     "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>", 1,
                     t.eos_token, sizeof(t.eos_token), err)) < 0 ||
        (r = get_str(root, S, "pad_token", "<\xef\xbd\x9c\xe2\x96\x81pad\xe2\x96\x81\xef\xbd\x9c>",
                     1, t.pad_token, sizeof(t.pad_token), err)) < 0)
        goto out_free;
    it = cJSON_GetObjectItemCaseSensitive(root, "model_max_length");
    if (it && !cJSON_IsNull(it)) {
        /* HF writes 1e30 for "no limit" */
        if (!cJSON_IsNumber(it) || !(it->valuedouble >= 1)) {
            r = bad(err, S, "model_max_length", it, "expected a positive number");
            goto out_free;
        }
        t.model_max_length = it->valuedouble > (double) LONG_MAX ? LONG_MAX
                                                                  : (long) it->valuedouble;
    }
    *c = t;
    r = 0;
out_free:
    cJSON_Delete(root);
    return r < 0 ? vl2__err_oneline(err, r) : r;
}

static int vl2_tokenizer_config_load_impl(struct vl2_tokenizer_config *c, const char *dir,
                              struct vl2_err *err)
{
    char path[4096];
    char *buf;
    size_t len;
    int r;

    snprintf(path, sizeof(path), "%s/tokenizer_config.json", dir);
    r = vl2_file_read(path, CONFIG_MAX_SIZE, "weights", &buf, &len, err);
    if (r == VL2_ENOTFOUND) {
        vl2_err_clear(err);
        r = vl2__tokenizer_config_parse(c, "{}", 2, err);
        c->present = 0;
        return r;
    }
    if (r < 0)
        return r;
    r = vl2__tokenizer_config_parse(c, buf, len, err);
    free(buf);
    if (r < 0)
        vl2_err_prefix(err, r, path);
    return r;
}

int vl2_config_load(struct vl2_model_config *c, const char *dir, struct vl2_err *err)
{
    int r = vl2_config_load_impl(c, dir, err);

    return r < 0 ? vl2__err_oneline(err, r) : r;
}

int vl2_processor_config_load(struct vl2_processor_config *c, const char *dir,
                              struct vl2_err *err)
{
    int r = vl2_processor_config_load_impl(c, dir, err);

    return r < 0 ? vl2__err_oneline(err, r) : r;
}

int vl2_tokenizer_config_load(struct vl2_tokenizer_config *c, const char *dir,
                              struct vl2_err *err)
{
    int r = vl2_tokenizer_config_load_impl(c, dir, err);

    return r < 0 ? vl2__err_oneline(err, r) : r;
}

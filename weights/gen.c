/* gen.c - random checkpoints in the official layout (see gen.h). */
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "gen.h"
#include "pyjson.h"
#include "sha256.h"
#include "vl2-backend.h"
#include "weights-impl.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "vl2-mkweights writes bf16 in host order: little-endian hosts only"
#endif

#define GB5 5000000000ull   /* transformers' default max_shard_size "5GB" */

/* ---- presets -------------------------------------------------------------- */

/* key = JSON text; floats stay text so that "2.0" is written as "2.0" */
struct kv {
    const char *key;
    const char *json;
};

enum layout { SINGLE = 0, SHARDED = 1 };

struct preset {
    const char      *name;
    const char      *about;
    long long        seed;
    int              golden;     /* header metadata as make_ckpt.py writes it */
    int              layout;     /* enum layout */
    uint64_t         shard_size; /* SHARDED: bytes per shard at most */
    const struct kv *top;        /* top-level keys besides the sections */
    const struct kv *vision;
    const struct kv *proj;
    const struct kv *lang;
};

#define AUTO_MAP(causal)                                                                     \
    { "auto_map", "{\"AutoConfig\": \"configuration_deepseek.DeepseekV2Config\", "          \
                  "\"AutoModel\": \"modeling_deepseek.DeepseekV2Model\", "                  \
                  "\"AutoModelForCausalLM\": \"modeling_deepseek." causal "\"}" }

/* LANG_COMMON of make_ckpt.py */
#define MICRO_LANG_COMMON                                                                    \
    { "architectures", "[\"DeepseekV2ForCausalLM\"]" }, AUTO_MAP("DeepseekV2ForCausalLM"),   \
    { "bos_token_id", "0" }, { "eos_token_id", "1" }, { "lm_head", "true" },                 \
    { "max_position_embeddings", "4096" }, { "model_type", "\"deepseek_v2\"" },              \
    { "rm_head", "false" }, { "torch_dtype", "\"bfloat16\"" }, { "vocab_size", "129280" }

#define MICRO_LANG_SHAPE                                                                     \
    { "hidden_size", "64" }, { "intermediate_size", "128" }, { "moe_intermediate_size", "32" }, \
    { "num_hidden_layers", "3" }, { "num_attention_heads", "4" },                            \
    { "num_key_value_heads", "4" }, { "n_routed_experts", "8" },                             \
    { "num_experts_per_tok", "2" }, { "n_shared_experts", "2" },                             \
    { "first_k_dense_replace", "1" }

static const struct kv micro_top[] = {
    { "architectures", "[\"DeepseekVLV2ForCausalLM\"]" }, { NULL, NULL } };
static const struct kv micro_vision[] = {
    { "heads", "4" }, { "layers", "2" }, { "mlp_ratio", "3.7362" },
    { "model_name", "\"siglip_so400m_patch14_384\"" }, { "model_type", "\"vision\"" },
    { "patch_size", "14" }, { "width", "64" }, { NULL, NULL } };
static const struct kv micro_proj[] = {
    { "input_dim", "64" }, { "model_type", "\"mlp_projector\"" }, { "n_embed", "64" },
    { NULL, NULL } };
static const struct kv micro_mha_lang[] = {
    MICRO_LANG_COMMON, MICRO_LANG_SHAPE,
    { "n_group", "1" }, { "topk_group", "1" }, { "topk_method", "\"greedy\"" },
    { "q_lora_rank", "null" }, { "kv_lora_rank", "null" }, { "qk_nope_head_dim", "0" },
    { "qk_rope_head_dim", "0" }, { "v_head_dim", "0" }, { "use_mla", "false" },
    { NULL, NULL } };
static const struct kv micro_mla_lang[] = {
    MICRO_LANG_COMMON, MICRO_LANG_SHAPE,
    { "n_group", "1" }, { "topk_group", "1" }, { "topk_method", "\"greedy\"" },
    { "q_lora_rank", "null" }, { "kv_lora_rank", "32" }, { "qk_nope_head_dim", "16" },
    { "qk_rope_head_dim", "8" }, { "v_head_dim", "16" }, { "use_mla", "true" },
    { NULL, NULL } };
static const struct kv micro_base_lang[] = {
    MICRO_LANG_COMMON, MICRO_LANG_SHAPE,
    { "n_group", "4" }, { "topk_group", "2" }, { "topk_method", "\"noaux_tc\"" },
    { "scoring_func", "\"sigmoid\"" }, { "norm_topk_prob", "true" },
    { "routed_scaling_factor", "2.0" },
    { "q_lora_rank", "48" }, { "kv_lora_rank", "32" }, { "qk_nope_head_dim", "16" },
    { "qk_rope_head_dim", "8" }, { "v_head_dim", "16" }, { "use_mla", "true" },
    { NULL, NULL } };
/* our own: a dense language model (n_routed_experts null), MHA */
static const struct kv mini_dense_lang[] = {
    MICRO_LANG_COMMON,
    { "hidden_size", "64" }, { "intermediate_size", "128" }, { "num_hidden_layers", "2" },
    { "num_attention_heads", "4" }, { "num_key_value_heads", "4" },
    { "q_lora_rank", "null" }, { "kv_lora_rank", "null" }, { "qk_nope_head_dim", "0" },
    { "qk_rope_head_dim", "0" }, { "v_head_dim", "0" }, { "use_mla", "false" },
    { NULL, NULL } };

/* The released configs (spec 1.2): deepseek-vl2's is a copy of the published
 * file; tiny and small follow the same sparse style. */
static const struct kv real_top[] = { { NULL, NULL } };
static const struct kv real_vision[] = {
    { "layers", "27" }, { "mlp_ratio", "3.7362" },
    { "model_name", "\"siglip_so400m_patch14_384\"" }, { "model_type", "\"vision\"" },
    { "patch_size", "14" }, { "width", "1152" }, { NULL, NULL } };
static const struct kv tiny_proj[] = {
    { "model_type", "\"mlp_projector\"" }, { "n_embed", "1280" }, { NULL, NULL } };
static const struct kv small_proj[] = {
    { "model_type", "\"mlp_projector\"" }, { "n_embed", "2048" }, { NULL, NULL } };
static const struct kv base_proj[] = {
    { "model_type", "\"mlp_projector\"" }, { "n_embed", "2560" }, { NULL, NULL } };
#define REAL_LANG_COMMON                                                                     \
    { "architectures", "[\"DeepseekV2ForCausalLM\"]" },                                      \
    AUTO_MAP("CustomDeepseekV2ForCausalLM"),                                                 \
    { "lm_head", "false" }, { "max_position_embeddings", "4096" },                           \
    { "model_type", "\"deepseek_v2\"" }, { "rm_head", "false" },                             \
    { "torch_dtype", "\"bfloat16\"" }
static const struct kv tiny_lang[] = {
    REAL_LANG_COMMON,
    { "bos_token_id", "0" }, { "eos_token_id", "1" }, { "first_k_dense_replace", "1" },
    { "hidden_size", "1280" }, { "intermediate_size", "6848" }, { "kv_lora_rank", "null" },
    { "moe_intermediate_size", "896" }, { "n_group", "1" }, { "n_routed_experts", "64" },
    { "n_shared_experts", "2" }, { "num_attention_heads", "10" },
    { "num_experts_per_tok", "6" }, { "num_hidden_layers", "12" },
    { "num_key_value_heads", "10" }, { "q_lora_rank", "null" }, { "qk_nope_head_dim", "0" },
    { "qk_rope_head_dim", "0" }, { "topk_group", "1" }, { "topk_method", "\"greedy\"" },
    { "use_mla", "false" }, { "v_head_dim", "0" }, { "vocab_size", "129280" },
    { NULL, NULL } };
static const struct kv small_lang[] = {
    REAL_LANG_COMMON,
    { "first_k_dense_replace", "1" }, { "hidden_size", "2048" },
    { "intermediate_size", "10944" }, { "kv_lora_rank", "512" },
    { "moe_intermediate_size", "1408" }, { "n_group", "1" }, { "n_routed_experts", "64" },
    { "n_shared_experts", "2" }, { "num_attention_heads", "16" },
    { "num_experts_per_tok", "6" }, { "num_hidden_layers", "27" },
    { "num_key_value_heads", "16" }, { "q_lora_rank", "null" }, { "topk_group", "1" },
    { "topk_method", "\"greedy\"" }, { NULL, NULL } };
static const struct kv base_lang[] = {
    REAL_LANG_COMMON,
    { "bos_token_id", "0" }, { "eos_token_id", "1" }, { "first_k_dense_replace", "1" },
    { "hidden_size", "2560" }, { "intermediate_size", "12288" },
    { "moe_intermediate_size", "1536" }, { "n_group", "1" }, { "n_routed_experts", "72" },
    { "n_shared_experts", "2" }, { "norm_topk_prob", "true" }, { "num_experts_per_tok", "6" },
    { "q_lora_rank", "null" }, { "routed_scaling_factor", "2.0" },
    { "scoring_func", "\"sigmoid\"" }, { "topk_group", "1" }, { "topk_method", "\"noaux_tc\"" },
    { "vocab_size", "129280" }, { NULL, NULL } };

static const struct preset presets[] = {
    { "micro-mha", "golden micro checkpoint like vl2-tiny (MHA, softmax greedy), 34 MB",
      1001, 1, SINGLE, 0, micro_top, micro_vision, micro_proj, micro_mha_lang },
    { "micro-mla", "golden micro checkpoint like vl2-small (MLA), 34 MB",
      2002, 1, SINGLE, 0, micro_top, micro_vision, micro_proj, micro_mla_lang },
    { "micro-base", "golden micro checkpoint like vl2 (MLA + q_lora, sigmoid noaux_tc), 34 MB",
      3003, 1, SINGLE, 0, micro_top, micro_vision, micro_proj, micro_base_lang },
    { "mini-sharded", "micro-mha shapes, seed 6006, written as 8 MB shards with an index",
      6006, 0, SHARDED, 8000000, micro_top, micro_vision, micro_proj, micro_mha_lang },
    { "mini-dense", "micro vision, dense 2-layer MHA language model (no experts), 34 MB",
      7007, 0, SINGLE, 0, micro_top, micro_vision, micro_proj, mini_dense_lang },
    { "tiny", "deepseek-vl2-tiny shapes (3.37 B parameters, 6.7 GB), 5 GB shards",
      4004, 0, SHARDED, GB5, real_top, real_vision, tiny_proj, tiny_lang },
    { "small", "deepseek-vl2-small shapes (16.1 B parameters, 32.3 GB), 5 GB shards",
      5005, 0, SHARDED, GB5, real_top, real_vision, small_proj, small_lang },
    { "base", "deepseek-vl2 shapes (27.5 B parameters, 55.0 GB), 5 GB shards",
      8008, 0, SHARDED, GB5, real_top, real_vision, base_proj, base_lang },
};

static const struct preset *find_preset(const char *name)
{
    size_t i;

    for (i = 0; i < sizeof(presets) / sizeof(presets[0]); i++)
        if (name && !strcmp(presets[i].name, name))
            return &presets[i];
    return NULL;
}

const char *const *vl2_gen_preset_names(void)
{
    static const char *names[sizeof(presets) / sizeof(presets[0]) + 1];
    size_t i;

    for (i = 0; i < sizeof(presets) / sizeof(presets[0]); i++)
        names[i] = presets[i].name;
    names[i] = NULL;
    return names;
}

const char *vl2_gen_preset_about(const char *name)
{
    const struct preset *p = find_preset(name);

    return p ? p->about : NULL;
}

/* ---- config text ---------------------------------------------------------- */

static cJSON *value(const char *json)
{
    cJSON *v = cJSON_Parse(json);

    if (v && cJSON_IsNumber(v) && strpbrk(json, ".eE")) {
        cJSON_Delete(v);
        return cJSON_CreateRaw(json);
    }
    return v;
}

static int add_kvs(cJSON *obj, const struct kv *kv)
{
    for (; kv->key; kv++) {
        cJSON *v = value(kv->json);
        if (!v || !cJSON_AddItemToObject(obj, kv->key, v)) {
            cJSON_Delete(v);
            return -1;
        }
    }
    return 0;
}

static cJSON *candidates_json(void)
{
    cJSON *a = cJSON_CreateArray();
    size_t i;

    for (i = 0; a && i < 23; i++) {
        cJSON *pair = cJSON_CreateIntArray(vl2__default_candidates[i], 2);
        if (!pair || !cJSON_AddItemToArray(a, pair)) {
            cJSON_Delete(pair);
            cJSON_Delete(a);
            return NULL;
        }
    }
    return a;
}

static char *dump_text(cJSON *root, int ensure_ascii)
{
    struct vl2_strbuf b = { 0 };

    vl2__pyjson_dump(&b, root, ensure_ascii);
    vl2__sb_add(&b, "\n", 1);
    if (b.oom) {
        vl2__sb_free(&b);
        return NULL;
    }
    return b.s;
}

static char *config_text(const struct preset *p)
{
    cJSON *root = cJSON_CreateObject(), *v = NULL, *pr = NULL, *l = NULL, *c;
    char *text = NULL;

    if (!root)
        return NULL;
    if (add_kvs(root, p->top) < 0)
        goto out_free;
    if (!(c = candidates_json()) || !cJSON_AddItemToObject(root, "candidate_resolutions", c))
        goto out_free;
    if (!(v = cJSON_AddObjectToObject(root, "vision_config")) || add_kvs(v, p->vision) < 0)
        goto out_free;
    if (!(pr = cJSON_AddObjectToObject(root, "projector_config")) || add_kvs(pr, p->proj) < 0)
        goto out_free;
    if (!(l = cJSON_AddObjectToObject(root, "language_config")) || add_kvs(l, p->lang) < 0)
        goto out_free;
    if (!cJSON_AddStringToObject(root, "global_view_pos", "head") ||
        !cJSON_AddStringToObject(root, "model_type", "deepseek_vl_v2") ||
        !cJSON_AddStringToObject(root, "tile_tag", "2D") ||
        !cJSON_AddStringToObject(root, "torch_dtype", "bfloat16") ||
        !cJSON_AddStringToObject(root, "transformers_version", "4.38.2"))
        goto out_free;
    text = dump_text(root, 1);
out_free:
    cJSON_Delete(root);
    return text;
}

char *vl2_gen_config_text(const char *preset)
{
    const struct preset *p = find_preset(preset);

    return p ? config_text(p) : NULL;
}

static char *processor_text(void)
{
    cJSON *root = cJSON_CreateObject(), *c;
    char *text = NULL;
    static const struct kv keys[] = {
        { "add_special_token", "false" }, { "downsample_ratio", "2" }, { "ignore_id", "-100" },
        { "image_mean", "[0.5, 0.5, 0.5]" }, { "image_std", "[0.5, 0.5, 0.5]" },
        { "image_token", "\"<image>\"" }, { "mask_prompt", "false" }, { "normalize", "true" },
        { "pad_token", "\"<\xef\xbd\x9c\xe2\x96\x81pad\xe2\x96\x81\xef\xbd\x9c>\"" },
        { "patch_size", "14" }, { "processor_class", "\"DeepseekVLV2Processor\"" },
        { "sft_format", "\"deepseek\"" }, { NULL, NULL } };

    if (!root)
        return NULL;
    if (add_kvs(root, keys) == 0 && (c = candidates_json()) &&
        cJSON_AddItemToObject(root, "candidate_resolutions", c))
        text = dump_text(root, 0);
    cJSON_Delete(root);
    return text;
}

/* ---- values --------------------------------------------------------------- */

static void init_params(const struct vl2_tensor_spec *t, double *std, double *off)
{
    int64_t fan_in = 1;
    int i;

    if (t->ndim > 1)
        for (i = 1; i < t->ndim; i++)
            fan_in *= t->shape[i];
    else
        fan_in = t->shape[0];
    *off = 0.0;
    switch (t->kind) {
    case VL2_TK_LIN:     *std = 1.0 / sqrt((double) fan_in); break;
    case VL2_TK_BIAS:    *std = 0.05; break;
    case VL2_TK_NORMW:   *std = 0.1; *off = 1.0; break;
    case VL2_TK_POS:     *std = 0.5; break;
    case VL2_TK_SPECIAL: *std = 0.5; break;
    case VL2_TK_EMBED:   *std = 1.0; break;
    case VL2_TK_GATE:    *std = 3.0 / sqrt((double) fan_in); break;
    case VL2_TK_EBIAS:   *std = 0.05; break;
    case VL2_TK_HEAD:    *std = 4.0 / sqrt((double) fan_in); break;
    default:             *std = 0.0; break;
    }
}

static uint64_t tensor_seed(long long seed, const char *name)
{
    uint8_t d[32];
    char buf[160];
    uint64_t s = 0;
    int n, i;

    n = snprintf(buf, sizeof(buf), "%lld:%s", seed, name);
    vl2__sha256(buf, (size_t) n, d);
    for (i = 0; i < 8; i++)
        s |= (uint64_t) d[i] << (8 * i);
    return s;
}

static inline uint16_t bf16_bits(float x)
{
    uint32_t b;

    memcpy(&b, &x, sizeof(b));
    return (uint16_t) ((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
}

static void fill(uint16_t *out, uint64_t base, float scale, float off, uint64_t k0, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++) {
        uint64_t z = k0 + i + base + 0x9E3779B97F4A7C15ull;
        float x, y;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
        x = (float) ((int32_t) (z >> 40) - (1 << 23)) * (1.0f / 8388608.0f);
        y = x * scale;
        y = y + off;
        out[i] = bf16_bits(y);
    }
}

void vl2_gen_fill(uint16_t *out, const struct vl2_tensor_spec *t, long long seed, uint64_t k0,
                  size_t n)
{
    uint64_t base = tensor_seed(seed, t->name);
    double std, off;
    float scale, offf;

    init_params(t, &std, &off);
    scale = (float) (std * sqrt(3.0));
    offf = (float) off;
    if (t->kind != VL2_TK_HEAD) {
        fill(out, base, scale, offf, k0, n);
        return;
    }
    /* lm_head: rows with row % 50 == 7 are 4x larger (exact: a power of two) */
    {
        const uint64_t cols = (uint64_t) t->shape[1];
        size_t done = 0;
        while (done < n) {
            uint64_t k = k0 + done, row = k / cols;
            size_t m = (size_t) ((row + 1) * cols - k);
            if (m > n - done)
                m = n - done;
            if (row % 50 == 7)
                fill(out + done, base, scale * 4.0f, 0.0f, k, m);
            else
                fill(out + done, base, scale, 0.0f, k, m);
            done += m;
        }
    }
}

/* ---- files ---------------------------------------------------------------- */

static int write_all(int fd, const void *p, size_t n, const char *path, struct vl2_err *err)
{
    const char *c = p;

    while (n) {
        ssize_t w = write(fd, c, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return vl2_err_set(err, VL2_EIO, "mkweights: '%s': write failed: %s", path,
                               w < 0 ? strerror(errno) : "no progress");
        c += w;
        n -= (size_t) w;
    }
    return 0;
}

static int write_text(const char *dir, const char *name, const char *text, struct vl2_err *err)
{
    char path[4096];
    int fd, r;

    snprintf(path, sizeof(path), "%s/%s", dir, name);
    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return vl2_err_set(err, VL2_EIO, "mkweights: '%s': %s", path, strerror(errno));
    r = write_all(fd, text, strlen(text), path, err);
    if (close(fd) < 0 && r == 0)
        r = vl2_err_set(err, VL2_EIO, "mkweights: '%s': %s", path, strerror(errno));
    return r;
}

static int copy_file(const char *src, const char *dst, struct vl2_err *err)
{
    char buf[1 << 16];
    int in, out, r = 0;

    in = open(src, O_RDONLY | O_CLOEXEC);
    if (in < 0)
        return errno == ENOENT ? 1 : vl2_err_set(err, VL2_EIO, "mkweights: '%s': %s", src,
                                                 strerror(errno));
    out = open(dst, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (out < 0) {
        r = vl2_err_set(err, VL2_EIO, "mkweights: '%s': %s", dst, strerror(errno));
        goto out_in;
    }
    for (;;) {
        ssize_t n = read(in, buf, sizeof(buf));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            r = vl2_err_set(err, VL2_EIO, "mkweights: '%s': %s", src, strerror(errno));
            break;
        }
        if (n == 0)
            break;
        r = write_all(out, buf, (size_t) n, dst, err);
        if (r < 0)
            break;
    }
    if (close(out) < 0 && r == 0)
        r = vl2_err_set(err, VL2_EIO, "mkweights: '%s': %s", dst, strerror(errno));
out_in:
    close(in);
    return r;
}

static int64_t numel(const struct vl2_tensor_spec *t)
{
    int64_t n = 1;
    int i;

    for (i = 0; i < t->ndim; i++)
        n *= t->shape[i];
    return n;
}

/* The safetensors header of specs [a, b): compact JSON as Python's
 * json.dumps(separators=(",", ":")), padded with spaces to a multiple of 8. */
static int header_text(struct vl2_strbuf *h, const struct vl2_tensor_spec *v, size_t a, size_t b,
                       const char *generator)
{
    uint64_t off = 0;
    size_t i;
    int j;

    vl2__sb_add(h, "{\"__metadata__\":{\"format\":\"pt\"", 30);
    if (generator) {
        vl2__sb_add(h, ",\"generator\":", 13);
        vl2__sb_json_string(h, generator, 1);
    }
    vl2__sb_add(h, "}", 1);
    for (i = a; i < b; i++) {
        uint64_t nb = (uint64_t) numel(&v[i]) * 2;
        vl2__sb_add(h, ",", 1);
        vl2__sb_json_string(h, v[i].name, 1);
        vl2__sb_add(h, ":{\"dtype\":\"BF16\",\"shape\":[", 26);
        for (j = 0; j < v[i].ndim; j++)
            vl2__sb_printf(h, "%s%lld", j ? "," : "", (long long) v[i].shape[j]);
        vl2__sb_printf(h, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long) off,
                       (unsigned long long) (off + nb));
        off += nb;
    }
    vl2__sb_add(h, "}", 1);
    while (h->len % 8)
        vl2__sb_add(h, " ", 1);
    return h->oom ? VL2_ENOMEM : 0;
}

#define CHUNK (1u << 21)   /* elements per write: 4 MiB of bf16 */

/* Write specs [a, b) as one safetensors file. */
static int write_shard(const char *path, const struct vl2_tensor_spec *v, size_t a, size_t b,
                       long long seed, const char *generator, uint16_t *buf, char *ret_hex,
                       struct vl2_err *err)
{
    struct vl2_strbuf h = { 0 };
    struct vl2_sha256 sha;
    uint8_t len8[8], dig[32];
    size_t i;
    int fd, r, k;

    r = header_text(&h, v, a, b, generator);
    if (r < 0) {
        vl2__sb_free(&h);
        return vl2_err_set(err, r, "mkweights: out of memory");
    }
    for (k = 0; k < 8; k++)
        len8[k] = (uint8_t) ((uint64_t) h.len >> (8 * k));
    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        r = vl2_err_set(err, VL2_EIO, "mkweights: '%s': %s", path, strerror(errno));
        goto out_free;
    }
    vl2__sha256_init(&sha);
    r = write_all(fd, len8, 8, path, err);
    if (r == 0)
        r = write_all(fd, h.s, h.len, path, err);
    if (ret_hex) {
        vl2__sha256_update(&sha, len8, 8);
        vl2__sha256_update(&sha, h.s, h.len);
    }
    for (i = a; i < b && r == 0; i++) {
        uint64_t n = (uint64_t) numel(&v[i]), k0;
        for (k0 = 0; k0 < n && r == 0; k0 += CHUNK) {
            size_t m = n - k0 < CHUNK ? (size_t) (n - k0) : CHUNK;
            vl2_gen_fill(buf, &v[i], seed, k0, m);
            r = write_all(fd, buf, m * 2, path, err);
            if (ret_hex)
                vl2__sha256_update(&sha, buf, m * 2);
        }
    }
    if (close(fd) < 0 && r == 0)
        r = vl2_err_set(err, VL2_EIO, "mkweights: '%s': %s", path, strerror(errno));
    if (r == 0 && ret_hex) {
        vl2__sha256_final(&sha, dig);
        vl2__sha256_hex(dig, ret_hex);
    }
out_free:
    vl2__sb_free(&h);
    return r;
}

static int mkdir_p(const char *dir, struct vl2_err *err)
{
    char path[4096], *p;

    if (snprintf(path, sizeof(path), "%s", dir) >= (int) sizeof(path))
        return vl2_err_set(err, VL2_EINVAL, "mkweights: output path too long");
    for (p = path + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(path, 0755) < 0 && errno != EEXIST)
            return vl2_err_set(err, VL2_EIO, "mkweights: '%s': %s", path, strerror(errno));
        *p = '/';
    }
    if (mkdir(path, 0755) < 0 && errno != EEXIST)
        return vl2_err_set(err, VL2_EIO, "mkweights: '%s': %s", path, strerror(errno));
    return 0;
}

int vl2_gen_write(const struct vl2_gen_opts *o, char *ret_sha256, struct vl2_err *err)
{
    const struct preset *p = find_preset(o->preset);
    struct vl2_model_config cfg;
    struct vl2_tensor_spec *v = NULL;
    char *cfg_text = NULL, *proc_text = NULL, gen[160], path[4096], hex[65] = "";
    uint16_t *buf = NULL;
    long long seed;
    uint64_t shard_size, total = 0;
    size_t n = 0, i;
    int r;

    if (!p)
        return vl2_err_set(err, VL2_EINVAL, "mkweights: unknown preset '%s'", o->preset);
    seed = o->has_seed ? o->seed : p->seed;
    cfg_text = config_text(p);
    proc_text = processor_text();
    if (!cfg_text || !proc_text) {
        r = vl2_err_set(err, VL2_ENOMEM, "mkweights: out of memory");
        goto out_free;
    }
    r = vl2_config_parse(&cfg, cfg_text, strlen(cfg_text), err);
    if (r < 0) {
        vl2_err_prefix(err, r, "mkweights: preset config");
        goto out_free;
    }
    r = vl2_model_tensor_specs(&cfg, &v, &n, err);
    if (r < 0)
        goto out_free;
    if ((r = mkdir_p(o->out_dir, err)) < 0 ||
        (r = write_text(o->out_dir, "config.json", cfg_text, err)) < 0 ||
        (r = write_text(o->out_dir, "processor_config.json", proc_text, err)) < 0)
        goto out_free;
    if (o->config_only)
        goto out_tokenizer;

    buf = malloc(CHUNK * sizeof(*buf));
    if (!buf) {
        r = vl2_err_set(err, VL2_ENOMEM, "mkweights: out of memory");
        goto out_free;
    }
    if (p->golden)   /* same metadata as golden/tools/make_ckpt.py: same bytes, same sha256 */
        snprintf(gen, sizeof(gen), "make_ckpt.py preset=%s seed=%lld", p->name, seed);
    else
        snprintf(gen, sizeof(gen), "vl2-mkweights preset=%s seed=%lld", p->name, seed);
    for (i = 0; i < n; i++)
        total += (uint64_t) numel(&v[i]) * 2;

    shard_size = o->shard_size ? o->shard_size : p->shard_size;
    if (!shard_size) {
        snprintf(path, sizeof(path), "%s/model.safetensors", o->out_dir);
        r = write_shard(path, v, 0, n, seed, gen, buf, hex, err);
        if (r < 0)
            goto out_free;
    } else {
        /* greedy packing in module order, like transformers' shard_checkpoint */
        size_t *first = malloc((n + 1) * sizeof(*first)), n_shards = 0, s;
        uint64_t cur = 0;
        cJSON *index = NULL, *meta, *map;
        char name[128], *itext = NULL;

        if (!first) {
            r = vl2_err_set(err, VL2_ENOMEM, "mkweights: out of memory");
            goto out_free;
        }
        for (i = 0; i < n; i++) {
            uint64_t nb = (uint64_t) numel(&v[i]) * 2;
            if (i == 0 || (cur > 0 && cur + nb > shard_size)) {
                first[n_shards++] = i;
                cur = 0;
            }
            cur += nb;
        }
        first[n_shards] = n;
        index = cJSON_CreateObject();
        meta = index ? cJSON_AddObjectToObject(index, "metadata") : NULL;
        map = index ? cJSON_AddObjectToObject(index, "weight_map") : NULL;
        if (!meta || !map || !cJSON_AddNumberToObject(meta, "total_size", (double) total))
            r = vl2_err_set(err, VL2_ENOMEM, "mkweights: out of memory");
        for (s = 0; s < n_shards && r == 0; s++) {
            snprintf(name, sizeof(name), "model-%05zu-of-%06zu.safetensors", s + 1, n_shards);
            snprintf(path, sizeof(path), "%s/%s", o->out_dir, name);
            if (!o->quiet)
                fprintf(stderr, "mkweights: writing %s (%zu tensors)\n", path,
                        first[s + 1] - first[s]);
            r = write_shard(path, v, first[s], first[s + 1], seed, gen, buf, NULL, err);
            for (i = first[s]; i < first[s + 1] && r == 0; i++)
                if (!cJSON_AddStringToObject(map, v[i].name, name))
                    r = vl2_err_set(err, VL2_ENOMEM, "mkweights: out of memory");
        }
        if (r == 0 && !(itext = dump_text(index, 1)))
            r = vl2_err_set(err, VL2_ENOMEM, "mkweights: out of memory");
        if (r == 0)
            r = write_text(o->out_dir, "model.safetensors.index.json", itext, err);
        free(itext);
        cJSON_Delete(index);
        free(first);
        if (r < 0)
            goto out_free;
    }

out_tokenizer:
    if (o->tokenizer_dir) {
        static const char *const files[] = { "tokenizer.json", "tokenizer_config.json" };
        char src[4096];
        for (i = 0; i < 2; i++) {
            snprintf(src, sizeof(src), "%s/%s", o->tokenizer_dir, files[i]);
            snprintf(path, sizeof(path), "%s/%s", o->out_dir, files[i]);
            r = copy_file(src, path, err);
            if (r < 0)
                goto out_free;
        }
    }
    if (!o->quiet) {
        struct vl2_param_counts pc;
        if (vl2_model_count_params(&cfg, &pc, NULL) == 0)
            printf("%s: %zu tensors, %lld params, %llu data bytes%s%s\n", p->name, n,
                   (long long) pc.total, (unsigned long long) total,
                   hex[0] ? ", sha256(model.safetensors)=" : "", hex);
    }
    if (ret_sha256)
        memcpy(ret_sha256, hex, sizeof(hex));
    r = 0;
out_free:
    free(buf);
    free(v);
    free(cfg_text);
    free(proc_text);
    return r;
}

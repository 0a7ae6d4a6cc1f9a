/* weights.h - official DeepSeek-VL2 checkpoints: config.json, safetensors
 * (mapped read-only and shared), model-directory validation.
 *
 * Depends on nothing of vl2d but plugins/vl2-status.h (error codes) and the
 * dtype numbers of plugins/vl2-backend.h.
 *
 * Model dimensions get one short name each here and are used everywhere.
 *
 * A model directory (Hugging Face layout, read unchanged):
 *     config.json                   model config (spec 1.1; sparse: bundled defaults apply)
 *     processor_config.json         optional: image processor (spec defaults when absent)
 *     tokenizer.json, tokenizer_config.json
 *     model.safetensors             one file, or
 *     model.safetensors.index.json  {"metadata": {"total_size": N},
 *                                    "weight_map": {"tensor name": "shard file name", ...}}
 *     <shard files>                 any names, resolved through weight_map only
 *
 * safetensors file, byte by byte (all integers little endian):
 *     [0, 8)        u64 N: length of the header
 *     [8, 8+N)      UTF-8 JSON object, possibly padded with spaces:
 *                   {"__metadata__": {"str": "str", ...},            (optional)
 *                    "<name>": {"dtype": "BF16" | "F16" | "F32" | "I32",
 *                               "shape": [d0, d1, ...],            (0 to 8 dims)
 *                               "data_offsets": [begin, end]}, ...}
 *     [8+N, EOF)    data area; tensor bytes are [8+N+begin, 8+N+end), row-major,
 *                   little endian, end - begin = product(shape) * dtype size,
 *                   no two tensors overlap.  Any alignment.
 *
 * Usage:
 *     struct vl2_model_config cfg;
 *     struct vl2_weights *w;
 *     if (vl2_config_load(&cfg, dir, &err) < 0 || vl2_weights_open(&w, dir, &err) < 0 ||
 *         vl2_model_validate(&cfg, w, &err) < 0)
 *         ... err.msg names the file, key or tensor and what is wrong ...
 *     const struct vl2_st_tensor *t = vl2_weights_find(w, "language.lm_head.weight");
 *     ... t->data stays valid (shared, read-only pages) until vl2_weights_close(w) ...
 */
#ifndef VL2_WEIGHTS_H
#define VL2_WEIGHTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vl2-status.h"

#define VL2_MAX_CANDIDATES 64

enum vl2_topk_method { VL2_TOPK_GREEDY = 0, VL2_TOPK_GROUP_LIMITED = 1, VL2_TOPK_NOAUX_TC = 2 };
enum vl2_scoring     { VL2_SCORING_SOFTMAX = 0, VL2_SCORING_SIGMOID = 1 };

struct vl2_vision_config {
    int    d_model;      /* width (1152) */
    int    n_layer;      /* layers (27) */
    int    n_head;       /* heads (16) */
    int    d_head;       /* d_model / n_head (72) */
    int    d_mlp;        /* int(width * mlp_ratio) (4304) */
    double mlp_ratio;
    int    patch_size;   /* 14 */
    int    image_size;   /* 384 */
    int    grid;         /* image_size / patch_size (27) */
};

struct vl2_projector_config {
    int  d_in;           /* input_dim (vision width) */
    int  d_model;        /* n_embed (= language hidden size) */
    int  depth;          /* 2 */
    int  mlp_ratio;      /* 1 */
    int  downsample;     /* downsample_ratio (2) */
    char type[32];       /* "downsample_mlp_gelu" */
};

struct vl2_lm_config {
    int    n_vocab;          /* vocab_size */
    int    d_model;          /* hidden_size */
    int    d_ff;             /* intermediate_size (dense layers) */
    int    d_ff_expert;      /* moe_intermediate_size */
    int    n_layer;          /* num_hidden_layers */
    int    n_head;           /* num_attention_heads */
    int    n_kv_head;        /* num_key_value_heads (null -> n_head); MLA: = n_head */
    int    use_mla;
    int    d_head;           /* MHA: d_model / n_head; MLA: d_nope + d_rope (q/k head) */
    int    q_lora_rank;      /* 0 = null */
    int    kv_lora_rank;     /* MLA */
    int    d_nope;           /* qk_nope_head_dim */
    int    d_rope;           /* qk_rope_head_dim */
    int    d_v;              /* v_head_dim */
    int    n_expert;         /* n_routed_experts (0 = null: dense model) */
    int    n_shared;         /* n_shared_experts (0 = null) */
    int    top_k;            /* num_experts_per_tok */
    int    topk_method;      /* enum vl2_topk_method */
    int    scoring;          /* enum vl2_scoring */
    int    n_group;          /* 0 = null */
    int    topk_group;       /* 0 = null */
    int    norm_topk_prob;
    double routed_scale;     /* routed_scaling_factor */
    int    first_dense;      /* first_k_dense_replace */
    int    moe_layer_freq;
    int    n_ctx;            /* max_position_embeddings */
    double rms_eps;          /* rms_norm_eps */
    double rope_theta;
    int    has_rope_scaling; /* rope_scaling not null: vl2_config_parse refuses it
                                (VL2_EUNSUPPORTED), so always 0 after a parse */
    int    bos_id, eos_id, pad_id;  /* pad -1 = null */
    int    tie_embeddings;
    int    attention_bias;
};

struct vl2_model_config {
    struct vl2_vision_config    vision;
    struct vl2_projector_config proj;
    struct vl2_lm_config        lm;
    int  n_candidates;
    int  candidates[VL2_MAX_CANDIDATES][2];  /* (width, height), config order */
    char tile_tag[8];                        /* "2D" */
    char global_view_pos[8];                 /* "head" */
};

/* processor_config.json, spec defaults where absent. */
struct vl2_processor_config {
    int    n_candidates;
    int    candidates[VL2_MAX_CANDIDATES][2];
    int    patch_size;          /* 14 */
    int    downsample;          /* 2 */
    float  image_mean[3], image_std[3];
    int    normalize;
    char   image_token[32];     /* "<image>" */
    char   pad_token[64];
    char   sft_format[32];      /* "deepseek" */
};

/* Is layer i an MoE layer? */
static inline int vl2_lm_is_moe(const struct vl2_lm_config *c, int i)
{
    return c->n_expert > 0 && i >= c->first_dense && i % c->moe_layer_freq == 0;
}

/* Parse config.json text (need not be NUL-terminated).  Missing keys take the
 * bundled defaults of spec 1.1; a missing required key or an impossible value
 * is VL2_EFORMAT with the key and value named in err. */
int vl2_config_parse(struct vl2_model_config *c, const char *json, size_t len,
                     struct vl2_err *err);
int vl2_config_load(struct vl2_model_config *c, const char *dir, struct vl2_err *err);
int vl2_processor_config_load(struct vl2_processor_config *c, const char *dir,
                              struct vl2_err *err);

/* -- safetensors ------------------------------------------------------- */

struct vl2_st_tensor {
    const char *name;
    int         dtype;       /* enum vl2_dtype of vl2-backend.h */
    int         ndim;
    int64_t     shape[8];
    const void *data;        /* inside the shared read-only mapping; any alignment */
    size_t      size;        /* bytes */
    int         file;        /* index of the shard it lives in */
};

struct vl2_weights;   /* all shards of one model directory, mapped */

/* Open DIR/model.safetensors.index.json and every shard it names, or
 * DIR/model.safetensors.  Headers are validated before anything is used. */
int  vl2_weights_open(struct vl2_weights **ret, const char *dir, struct vl2_err *err);
/* Open one safetensors file (tests, tools). */
int  vl2_weights_open_file(struct vl2_weights **ret, const char *path, struct vl2_err *err);
void vl2_weights_close(struct vl2_weights *w);

const struct vl2_st_tensor *vl2_weights_find(const struct vl2_weights *w, const char *name);
size_t vl2_weights_count(const struct vl2_weights *w);
const struct vl2_st_tensor *vl2_weights_at(const struct vl2_weights *w, size_t i);
/* Total mapped bytes. */
size_t vl2_weights_mapped_size(const struct vl2_weights *w);
/* Shards: their count and paths (as opened: DIR/NAME); NULL past the end. */
size_t vl2_weights_file_count(const struct vl2_weights *w);
const char *vl2_weights_file_path(const struct vl2_weights *w, size_t i);

/* Validate a header held in memory: buf = the whole file (8-byte length,
 * JSON header, data).  Used by vl2_weights_open_file and the fuzz target. */
int  vl2_safetensors_check(const void *buf, size_t size, struct vl2_err *err);

/* Every tensor that the config implies is present with the right shape
 * (names and shapes of spec 2); missing and unexpected tensors are listed. */
int  vl2_model_validate(const struct vl2_model_config *c, const struct vl2_weights *w,
                        struct vl2_err *err);

/* -- expected layout (spec 2) and parameter counts ---------------------- */

/* How a tensor is initialised by vl2-mkweights (golden tools/make_ckpt.py). */
enum vl2_tensor_kind {
    VL2_TK_LIN = 0,      /* linear / conv weight: std 1/sqrt(fan_in) */
    VL2_TK_BIAS,         /* std 0.05 */
    VL2_TK_NORMW,        /* norm weight: 1 + std 0.1 */
    VL2_TK_POS,          /* pos_embed, attn_pool.latent: std 0.5 */
    VL2_TK_SPECIAL,      /* image_newline, view_seperator: std 0.5 */
    VL2_TK_EMBED,        /* embed_tokens: std 1 */
    VL2_TK_GATE,         /* router: std 3/sqrt(fan_in) */
    VL2_TK_EBIAS,        /* e_score_correction_bias: std 0.05 */
    VL2_TK_HEAD,         /* lm_head: std 4/sqrt(fan_in), rows % 50 == 7 x4 */
};

/* Which part of the model a tensor belongs to (parameter counts). */
enum vl2_tensor_part {
    VL2_PART_VISION = 0,     /* vision.* used at inference */
    VL2_PART_VISION_POOL,    /* vision.attn_pool.* (present, unused) */
    VL2_PART_PROJECTOR,      /* projector.*, image_newline, view_seperator */
    VL2_PART_EMBED,          /* language.model.embed_tokens */
    VL2_PART_LM,             /* every other language tensor but routed experts */
    VL2_PART_EXPERT,         /* language...mlp.experts.{e}.* (routed) */
};

#define VL2_TENSOR_NAME_MAX 96

/* One tensor the config implies, in the official module order. */
struct vl2_tensor_spec {
    char    name[VL2_TENSOR_NAME_MAX];
    int     ndim;
    int64_t shape[4];
    int     kind;        /* enum vl2_tensor_kind */
    int     part;        /* enum vl2_tensor_part */
};

/* List every tensor the config implies (names and shapes of spec 2, in the
 * order of the official module tree).  *ret_specs is malloc'd: free() it.
 * Returns the count (>= 0) or a negative status. */
int vl2_model_tensor_specs(const struct vl2_model_config *c, struct vl2_tensor_spec **ret_specs,
                           size_t *ret_n, struct vl2_err *err);

/* Parameter counts computed from the config alone (no files needed). */
struct vl2_param_counts {
    int64_t total;          /* every tensor of the checkpoint */
    int64_t vision;         /* vision tower incl. attn_pool */
    int64_t vision_pool;    /* attn_pool alone (unused at inference) */
    int64_t projector;      /* projector + image_newline + view_seperator */
    int64_t language;       /* language model incl. embed_tokens and lm_head */
    int64_t active_lm;      /* per token, LM only: excl. embed_tokens, incl. lm_head,
                               top_k of the routed experts in each MoE layer */
    int64_t active;         /* active_lm + vision (excl. attn_pool) + projector */
};

int vl2_model_count_params(const struct vl2_model_config *c, struct vl2_param_counts *ret,
                           struct vl2_err *err);

/* Short name of a dtype as in safetensors headers ("BF16"), "?" if unknown. */
const char *vl2_dtype_st_name(int dtype);

/* -- tokenizer_config.json --------------------------------------------- */

/* The fields of tokenizer_config.json the runtime uses; defaults where the
 * file or a key is absent. */
struct vl2_tokenizer_config {
    int  present;              /* 1 if the file was found */
    int  add_bos_token;        /* default 1 (the chat template adds BOS itself) */
    int  add_eos_token;        /* default 0 */
    char bos_token[64];        /* default "<｜begin▁of▁sentence｜>" */
    char eos_token[64];        /* default "<｜end▁of▁sentence｜>" */
    char pad_token[64];        /* default "<｜▁pad▁｜>" */
    long model_max_length;     /* default 131072 */
};

int vl2_tokenizer_config_load(struct vl2_tokenizer_config *c, const char *dir,
                              struct vl2_err *err);

/* Read the whole regular file @path, of at most @max bytes, into *ret_buf
 * (malloc'd, NUL-terminated; *ret_len bytes before the NUL).  Messages read
 * "@who: '<path>': ...": VL2_ENOTFOUND when it does not exist, VL2_ELIMIT when
 * larger than @max, VL2_EIO when not a regular file or unreadable. */
int vl2_file_read(const char *path, size_t max, const char *who, char **ret_buf,
                  size_t *ret_len, struct vl2_err *err);

/* Open the file @path of a model directory for reading (file.c): never
 * blocks (O_NONBLOCK: a FIFO or a device is refused, not waited on), only a
 * regular file (VL2_EIO "not a regular file" otherwise, before anything is
 * read).  Under the beneath policy (vl2_file_set_beneath(true), what vl2d
 * serve sets), a symbolic link leading out of the file's directory is
 * refused (VL2_EPERM).  Returns 0 with *@ret_fd (O_CLOEXEC, owned by the
 * caller) and *@ret_st (may be NULL), or < 0 with "@who: '<path>': ..." in
 * @err (VL2_ENOTFOUND when it does not exist). */
struct stat;
int vl2_file_open(const char *path, const char *who, int *ret_fd, struct stat *ret_st,
                  struct vl2_err *err);
/* The process-wide policy of vl2_file_open (default off: links followed). */
void vl2_file_set_beneath(bool on);
bool vl2_file_beneath(void);

#endif /* VL2_WEIGHTS_H */

/* cmd_run.c - vl2d run: the whole pipeline once, in this process, without a
 * daemon: images -> tiles -> vision tower -> prompt -> prefill -> sampling,
 * streaming the answer to standard output.  --dump writes every stage in the
 * file names and formats of the golden data (shared/golden/README.md). */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>

#include "cmd.h"
#include "image.h"
#include "model.h"
#include "npy.h"
#include "prompt.h"
#include "tokenizer.h"

#define RUN_MAX_IMAGES 16
#define RUN_MAX_STOPS 8
#define RUN_TOPK 20

struct run_opts {
    const char *model;
    const char *images[RUN_MAX_IMAGES];
    int         n_images;
    const char *prompt;
    const char *input_ids_json;
    const char *dump;
    const char *backend;
    const char *plugin_dir;
    const char *stops[RUN_MAX_STOPS];
    int         n_stops;
    long        max_new;
    int         threads;
    int         device;       /* --device: backend device index */
    int         ignore_eos;
    int         apply_exif;   /* --apply-exif: honour the EXIF orientation tag */
    int         json;
    struct vl2_sampler_params sp;
};

static void usage(FILE *f)
{
    fprintf(f,
"usage: vl2d run --model DIR [--image FILE]... --prompt TEXT [options]\n"
"\n"
"Run DeepSeek-VL2 once on a prompt and images, streaming the answer.\n"
"Images go where <image> appears in the prompt, in order; a prompt without\n"
"any <image> gets one \"<image>\\n\" per image in front.\n"
"\n"
"  --model DIR               checkpoint directory (config.json, safetensors, tokenizer)\n"
"  --image FILE              JPEG, PNG or WebP (repeatable, at most %d)\n"
"  --prompt TEXT             the user's message\n"
"  --input-ids-json FILE     take the prompt ids from FILE ({\"input_ids\": [...]})\n"
"                            instead of the tokenizer\n"
"  --max-new-tokens N        default 512\n"
"  --temperature T           0 (default) is greedy\n"
"  --top-p P                 default 1 (off)\n"
"  --top-k K                 default 0 (off)\n"
"  --repetition-penalty R    default 1 (off); counts prompt and generated ids\n"
"  --seed S                  sampler seed (default 0)\n"
"  --stop TEXT               stop when TEXT appears in the output (repeatable)\n"
"  --ignore-eos              keep generating after the end-of-sentence token\n"
"  --apply-exif              rotate/flip images per their EXIF orientation tag\n"
"                            (default: ignore it, as the official code does)\n"
"  --json                    print one JSON object instead of streaming\n"
"  --dump OUT                write every stage to the folder OUT (golden formats)\n"
"  --backend NAME            cpu (default) or cuda\n"
"  --plugin-dir DIR          where the backend plugins are\n"
"  --threads N               backend threads (default: all cores)\n"
"  --device N                backend device index, e.g. the GPU (default 0)\n",
            RUN_MAX_IMAGES);
}

static double now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int parse_long(const char *opt, const char *s, long lo, long hi, long *ret)
{
    char *end;
    long v;

    errno = 0;
    v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "vl2d run: %s '%s': expected an integer in [%ld, %ld]\n", opt, s, lo,
                hi);
        return -1;
    }
    *ret = v;
    return 0;
}

static int parse_float(const char *opt, const char *s, float *ret)
{
    char *end;
    double v;

    errno = 0;
    v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v)) {
        fprintf(stderr, "vl2d run: %s '%s': expected a number\n", opt, s);
        return -1;
    }
    *ret = (float)v;
    return 0;
}

static int parse_args(struct run_opts *o, int argc, char **argv)
{
    int i;

    memset(o, 0, sizeof(*o));
    o->max_new = 512;
    o->backend = "cpu";
    o->sp = vl2_sampler_default_params();
    for (i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        long l;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 1;
        }
        if (!strcmp(a, "--ignore-eos")) {
            o->ignore_eos = 1;
            continue;
        }
        if (!strcmp(a, "--json")) {
            o->json = 1;
            continue;
        }
        if (!strcmp(a, "--apply-exif")) {
            o->apply_exif = 1;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "vl2d run: option '%s' needs a value (or is unknown)\n", a);
            return -1;
        }
        v = argv[++i];
        if (!strcmp(a, "--model")) {
            o->model = v;
        } else if (!strcmp(a, "--image")) {
            if (o->n_images == RUN_MAX_IMAGES) {
                fprintf(stderr, "vl2d run: more than %d images\n", RUN_MAX_IMAGES);
                return -1;
            }
            o->images[o->n_images++] = v;
        } else if (!strcmp(a, "--prompt")) {
            o->prompt = v;
        } else if (!strcmp(a, "--input-ids-json")) {
            o->input_ids_json = v;
        } else if (!strcmp(a, "--dump")) {
            o->dump = v;
        } else if (!strcmp(a, "--backend")) {
            o->backend = v;
        } else if (!strcmp(a, "--plugin-dir")) {
            o->plugin_dir = v;
        } else if (!strcmp(a, "--stop")) {
            if (o->n_stops == RUN_MAX_STOPS) {
                fprintf(stderr, "vl2d run: more than %d stop strings\n", RUN_MAX_STOPS);
                return -1;
            }
            o->stops[o->n_stops++] = v;
        } else if (!strcmp(a, "--max-new-tokens")) {
            if (parse_long(a, v, 0, 1 << 20, &o->max_new) < 0)
                return -1;
        } else if (!strcmp(a, "--threads")) {
            if (parse_long(a, v, 0, 4096, &l) < 0)
                return -1;
            o->threads = (int)l;
        } else if (!strcmp(a, "--device")) {
            if (parse_long(a, v, 0, 1024, &l) < 0)
                return -1;
            o->device = (int)l;
        } else if (!strcmp(a, "--top-k")) {
            if (parse_long(a, v, 0, INT32_MAX, &l) < 0)
                return -1;
            o->sp.top_k = (int32_t)l;
        } else if (!strcmp(a, "--seed")) {
            char *end;
            errno = 0;
            o->sp.seed = strtoull(v, &end, 10);
            if (errno || end == v || *end || v[0] == '-') {
                fprintf(stderr, "vl2d run: --seed '%s': expected an unsigned integer\n", v);
                return -1;
            }
        } else if (!strcmp(a, "--temperature")) {
            if (parse_float(a, v, &o->sp.temperature) < 0)
                return -1;
        } else if (!strcmp(a, "--top-p")) {
            if (parse_float(a, v, &o->sp.top_p) < 0)
                return -1;
        } else if (!strcmp(a, "--repetition-penalty")) {
            if (parse_float(a, v, &o->sp.repetition_penalty) < 0)
                return -1;
        } else {
            fprintf(stderr, "vl2d run: unknown option '%s'\n", a);
            return -1;
        }
    }
    if (!o->model) {
        fprintf(stderr, "vl2d run: --model DIR is required\n");
        return -1;
    }
    if (!o->prompt && !o->input_ids_json) {
        fprintf(stderr, "vl2d run: --prompt TEXT (or --input-ids-json FILE) is required\n");
        return -1;
    }
    if (o->prompt && o->input_ids_json) {
        fprintf(stderr, "vl2d run: --prompt and --input-ids-json exclude each other\n");
        return -1;
    }
    {
        struct vl2_err err = { 0 };
        if (vl2_sampler_check_params(&o->sp, &err) < 0) {
            fprintf(stderr, "vl2d run: %s\n", err.msg);
            return -1;
        }
    }
    return 0;
}

static int read_file(const char *path, char **ret, size_t *ret_size, size_t max,
                     struct vl2_err *err)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t n = 0, cap = 0;

    if (!f)
        return vl2_err_set(err, VL2_EIO, "'%s': %s", path, strerror(errno));
    for (;;) {
        size_t got;
        if (n == cap) {
            char *p;
            cap = cap ? 2 * cap : 1 << 16;
            if (cap > max + 1)
                cap = max + 1;
            if (n == cap) {
                free(buf);
                fclose(f);
                return vl2_err_set(err, VL2_ELIMIT, "'%s': larger than %zu bytes", path,
                                   max);
            }
            p = realloc(buf, cap + 1);
            if (!p) {
                free(buf);
                fclose(f);
                return vl2_err_set(err, VL2_ENOMEM, "'%s': out of memory", path);
            }
            buf = p;
        }
        got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0)
            break;
    }
    if (ferror(f)) {
        free(buf);
        fclose(f);
        return vl2_err_set(err, VL2_EIO, "'%s': read error", path);
    }
    fclose(f);
    if (!buf && !(buf = malloc(1)))
        return vl2_err_set(err, VL2_ENOMEM, "out of memory");
    buf[n] = 0;
    *ret = buf;
    *ret_size = n;
    return 0;
}

/* {"input_ids": [...]} (the golden input_ids.json) -> ids. */
static int read_ids_json(const char *path, int32_t **ret, size_t *ret_n, struct vl2_err *err)
{
    char *text;
    size_t size, n, i = 0;
    cJSON *j, *a, *e;
    int32_t *ids;
    int r;

    r = read_file(path, &text, &size, (size_t)256 << 20, err);
    if (r < 0)
        return r;
    j = cJSON_ParseWithLength(text, size);
    free(text);
    if (!j)
        return vl2_err_set(err, VL2_EFORMAT, "'%s': not valid JSON", path);
    a = cJSON_IsArray(j) ? j : cJSON_GetObjectItem(j, "input_ids");
    if (!cJSON_IsArray(a)) {
        cJSON_Delete(j);
        return vl2_err_set(err, VL2_EFORMAT, "'%s': no \"input_ids\" array", path);
    }
    n = (size_t)cJSON_GetArraySize(a);
    ids = malloc((n ? n : 1) * sizeof(*ids));
    if (!ids) {
        cJSON_Delete(j);
        return vl2_err_set(err, VL2_ENOMEM, "out of memory");
    }
    cJSON_ArrayForEach(e, a) {
        if (!cJSON_IsNumber(e) || e->valuedouble != floor(e->valuedouble) ||
            e->valuedouble < 0 || e->valuedouble > INT32_MAX) {
            free(ids);
            cJSON_Delete(j);
            return vl2_err_set(err, VL2_EFORMAT, "'%s': input_ids[%zu] is not a token id",
                               path, i);
        }
        ids[i++] = (int32_t)e->valuedouble;
    }
    cJSON_Delete(j);
    *ret = ids;
    *ret_n = n;
    return 0;
}

/* ---- dump --------------------------------------------------------------------- */

static int dump_npy(const char *dir, const char *name, int dtype, int ndim, const int64_t *shape,
                    const void *data, struct vl2_err *err)
{
    char path[4096];

    snprintf(path, sizeof(path), "%s/%s", dir, name);
    return vl2_npy_write(path, dtype, ndim, shape, data, err);
}

static int dump_json(const char *dir, const char *name, cJSON *j, struct vl2_err *err)
{
    char path[4096], *text = cJSON_Print(j);
    FILE *f;
    int ok;

    if (!text)
        return vl2_err_set(err, VL2_ENOMEM, "out of memory");
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    f = fopen(path, "wb");
    if (!f) {
        free(text);
        return vl2_err_set(err, VL2_EIO, "'%s': %s", path, strerror(errno));
    }
    ok = fputs(text, f) >= 0;
    ok &= fclose(f) == 0;
    free(text);
    if (!ok)
        return vl2_err_set(err, VL2_EIO, "'%s': write error", path);
    return 0;
}

static cJSON *int_array(const int32_t *v, size_t n)
{
    cJSON *a = cJSON_CreateArray();
    size_t i;

    for (i = 0; a && i < n; i++)
        cJSON_AddItemToArray(a, cJSON_CreateNumber(v[i]));
    return a;
}

/* ---- the run -------------------------------------------------------------------- */

struct run_image {
    struct vl2_image        img;
    struct vl2_tiling       tiling;
    uint8_t                *tiles;
    struct vl2_image_embed *embed;
    struct vl2_image_trace  trace;
};

struct run {
    struct run_opts         o;
    struct vl2_tokenizer   *tok;
    struct vl2_model       *m;
    struct vl2_seq         *seq;
    struct run_image        im[RUN_MAX_IMAGES];
    int32_t                *ids;       /* prompt */
    size_t                  n_ids;
    int32_t                *gen;       /* generated */
    size_t                  n_gen;
    char                   *text;      /* generated text (streamed part and held back) */
    size_t                  text_len, text_cap;
    size_t                  printed;   /* bytes of text written to stdout */
    float                  *embeds;    /* dump: [n_ids, D] */
    float                  *logits2;   /* dump: [2, V] */
    float                  *topv;      /* dump: [max_new, 20] */
    int64_t                *topi;
    float                  *margin;
    const char             *finish;
    double                  t_start, t_loaded, t_vision, t_first, t_end, t_prefill;
    int32_t                 n_tiles, n_image_tokens, image_token_id, eos;
};

static int append_text(struct run *R, const char *s, size_t n)
{
    if (R->text_len + n + 1 > R->text_cap) {
        size_t cap = R->text_cap ? R->text_cap : 256;
        char *p;
        while (cap < R->text_len + n + 1)
            cap *= 2;
        p = realloc(R->text, cap);
        if (!p)
            return VL2_ENOMEM;
        R->text = p;
        R->text_cap = cap;
    }
    memcpy(R->text + R->text_len, s, n);
    R->text_len += n;
    R->text[R->text_len] = 0;
    return 0;
}

/* Write what can be shown: all text up to a stop string, minus what may
 * still become one. */
static void stream(struct run *R, int final)
{
    size_t upto = R->text_len;

    if (!final)
        upto -= vl2_stop_holdback(R->text, R->text_len, R->o.stops, (size_t)R->o.n_stops);
    if (R->o.json || upto <= R->printed)
        return;
    fwrite(R->text + R->printed, 1, upto - R->printed, stdout);
    fflush(stdout);
    R->printed = upto;
}

static int load_images(struct run *R, struct vl2_err *err)
{
    const struct vl2_model_config *cfg = vl2_model_config(R->m);
    const struct vl2_processor_config *pc = vl2_model_processor_config(R->m);
    const int (*cands)[2] = pc->n_candidates ? pc->candidates : cfg->candidates;
    int n_cands = pc->n_candidates ? pc->n_candidates : cfg->n_candidates;
    int cropping = R->o.n_images <= 2, i, r;
    const int S = cfg->vision.image_size;

    if (n_cands > 0 && cands[0][0] != S)
        return vl2_err_set(err, VL2_EUNSUPPORTED, "first candidate resolution %d differs "
                           "from the vision image size %d", cands[0][0], S);
    for (i = 0; i < R->o.n_images; i++) {
        struct run_image *im = &R->im[i];
        struct vl2_image_limits lim = vl2_image_default_limits();
        char *data;
        size_t size;
        lim.apply_exif = R->o.apply_exif;
        r = read_file(R->o.images[i], &data, &size, lim.max_bytes, err);
        if (r < 0)
            return r;
        r = vl2_image_decode(&im->img, data, size, &lim, err);
        free(data);
        if (r < 0)
            return vl2_err_prefix(err, r, R->o.images[i]);
        vl2_image_plan(&im->tiling, im->img.width, im->img.height, cands, n_cands, cropping, S,
                       cfg->vision.patch_size, cfg->proj.downsample);
        R->n_tiles += im->tiling.n_tiles;
        R->n_image_tokens += im->tiling.n_tokens;
    }
    return 0;
}

static int encode_images(struct run *R, struct vl2_err *err)
{
    const int S = vl2_model_config(R->m)->vision.image_size;
    int i, r;

    for (i = 0; i < R->o.n_images; i++) {
        struct run_image *im = &R->im[i];
        size_t bytes = (size_t)im->tiling.n_tiles * 3 * (size_t)S * (size_t)S;
        im->tiles = malloc(bytes);
        if (!im->tiles)
            return vl2_err_set(err, VL2_ENOMEM, "out of memory for tiles");
        r = vl2_image_tile(&im->img, &im->tiling, S, im->tiles, err);
        if (r < 0)
            return vl2_err_prefix(err, r, R->o.images[i]);
        r = vl2_model_encode_image(R->m, im->tiles, im->tiling.n_tiles, im->tiling.tiles_w,
                                   im->tiling.tiles_h, &im->embed,
                                   R->o.dump ? &im->trace : NULL, err);
        if (r < 0)
            return vl2_err_prefix(err, r, R->o.images[i]);
        if (im->embed->n_tokens != im->tiling.n_tokens)
            return vl2_err_set(err, VL2_EINTERNAL, "image tokens %d (model) vs %d "
                               "(plan)", im->embed->n_tokens, im->tiling.n_tokens);
    }
    return 0;
}

static int build_prompt(struct run *R, struct vl2_err *err)
{
    struct vl2_message msg = { .role = VL2_ROLE_USER };
    int32_t counts[RUN_MAX_IMAGES];
    char *text = NULL;
    size_t tags, i;
    int r;

    if (R->o.input_ids_json) {
        size_t n_ph = 0;
        r = read_ids_json(R->o.input_ids_json, &R->ids, &R->n_ids, err);
        if (r < 0)
            return r;
        for (i = 0; i < R->n_ids; i++)
            n_ph += R->ids[i] == R->image_token_id;
        if (n_ph != (size_t)R->n_image_tokens)
            return vl2_err_set(err, VL2_EINVAL, "'%s' has %zu image placeholder ids, the "
                               "images need %d", R->o.input_ids_json, n_ph,
                               (int)R->n_image_tokens);
        return 0;
    }
    msg.text = R->o.prompt;
    msg.len = strlen(R->o.prompt);
    if (R->o.n_images == 0 && strspn(msg.text, " \t\r\n\v\f") == msg.len)
        return vl2_err_set(err, VL2_EINVAL, "empty prompt: give a question or an image");
    tags = vl2_prompt_count_images(&msg, 1);
    if (tags == 0 && R->o.n_images > 0) {
        size_t tl = strlen(VL2_PROMPT_IMAGE_TAG) + 1, n = (size_t)R->o.n_images * tl + msg.len;
        text = malloc(n + 1);
        if (!text)
            return vl2_err_set(err, VL2_ENOMEM, "out of memory");
        for (i = 0; i < (size_t)R->o.n_images; i++) {
            memcpy(text + i * tl, VL2_PROMPT_IMAGE_TAG, tl - 1);
            text[i * tl + tl - 1] = '\n';
        }
        memcpy(text + (size_t)R->o.n_images * tl, msg.text, msg.len);
        text[n] = 0;
        msg.text = text;
        msg.len = n;
    } else if (tags != (size_t)R->o.n_images) {
        return vl2_err_set(err, VL2_EINVAL, "the prompt has %zu <image> tags but %d "
                           "images were given", tags, R->o.n_images);
    }
    for (i = 0; i < (size_t)R->o.n_images; i++)
        counts[i] = R->im[i].tiling.n_tokens;
    r = vl2_prompt_build(R->tok, &msg, 1, counts, (size_t)R->o.n_images, &R->ids, &R->n_ids,
                         err);
    free(text);
    return r;
}

static void record_step(struct run *R, size_t step, const float *z, size_t V)
{
    int32_t top[RUN_TOPK];
    int i, j;
    size_t t;

    if (!R->topv)
        return;
    for (i = 0; i < RUN_TOPK; i++)
        top[i] = -1;
    for (t = 0; t < V; t++) {
        for (i = 0; i < RUN_TOPK; i++)
            if (top[i] < 0 || z[t] > z[top[i]])
                break;
        if (i == RUN_TOPK)
            continue;
        for (j = RUN_TOPK - 1; j > i; j--)
            top[j] = top[j - 1];
        top[i] = (int32_t)t;
    }
    for (i = 0; i < RUN_TOPK; i++) {
        R->topi[step * RUN_TOPK + (size_t)i] = top[i];
        R->topv[step * RUN_TOPK + (size_t)i] = z[top[i]];
    }
    R->margin[step] = z[top[0]] - z[top[1]];
}

static int generate(struct run *R, struct vl2_err *err)
{
    const size_t V = (size_t)vl2_model_config(R->m)->lm.n_vocab;
    const size_t D = (size_t)vl2_model_config(R->m)->lm.d_model;
    const struct vl2_image_embed *imgs[RUN_MAX_IMAGES];
    struct vl2_seq_params sp = vl2_seq_default_params();
    struct vl2_detok dt;
    size_t max_new = (size_t)R->o.max_new, room;
    int32_t n_ctx = vl2_model_n_ctx(R->m);
    int i, r;

    if (R->n_ids == 0)
        return vl2_err_set(err, VL2_EINVAL, "empty prompt");
    if (R->n_ids >= (size_t)n_ctx)
        return vl2_err_set(err, VL2_ELIMIT, "the prompt takes %zu tokens (%d of them "
                           "for images), the context holds %d", R->n_ids,
                           (int)R->n_image_tokens, (int)n_ctx);
    room = (size_t)n_ctx - R->n_ids;
    if (max_new > room)
        max_new = room;
    sp.capacity = (int32_t)(R->n_ids + (max_new ? max_new : 1));
    if (sp.capacity > n_ctx)
        sp.capacity = n_ctx;
    sp.sampler = R->o.sp;
    r = vl2_seq_new(R->m, &sp, &R->seq, err);
    if (r < 0)
        return r;
    R->gen = malloc((max_new ? max_new : 1) * sizeof(*R->gen));
    if (!R->gen)
        return vl2_err_set(err, VL2_ENOMEM, "out of memory");
    if (R->o.dump) {
        size_t steps = max_new ? max_new : 1;
        R->embeds = malloc(R->n_ids * D * sizeof(*R->embeds));
        R->logits2 = calloc(2 * V, sizeof(*R->logits2));
        R->topv = malloc(steps * RUN_TOPK * sizeof(*R->topv));
        R->topi = malloc(steps * RUN_TOPK * sizeof(*R->topi));
        R->margin = malloc(steps * sizeof(*R->margin));
        if (!R->embeds || !R->logits2 || !R->topv || !R->topi || !R->margin)
            return vl2_err_set(err, VL2_ENOMEM, "out of memory for the dump");
    }
    for (i = 0; i < R->o.n_images; i++)
        imgs[i] = R->im[i].embed;
    {
        struct vl2_step_item it = {
            .seq = R->seq, .ids = R->ids, .n_ids = (int32_t)R->n_ids, .images = imgs,
            .n_images = R->o.n_images, .want_logits = 1, .ret_embeds = R->embeds,
        };
        r = vl2_model_step(R->m, &it, 1, err);
        if (r < 0)
            return r;
        if (R->o.sp.penalize_prompt)
            for (i = 0; i < (int)R->n_ids; i++)
                vl2_sampler_accept(vl2_seq_sampler(R->seq), R->ids[i]);
    }
    R->t_prefill = now();
    if (R->logits2)
        memcpy(R->logits2, vl2_seq_logits(R->seq), V * sizeof(float));

    vl2_detok_init(&dt, R->tok);
    R->finish = "length";
    while (R->n_gen < max_new) {
        const char *piece = "";
        size_t plen = 0;
        long stop;
        int32_t id;

        record_step(R, R->n_gen, vl2_seq_logits(R->seq), V);
        id = vl2_seq_sample(R->seq);
        if (R->n_gen == 0)
            R->t_first = now();
        R->gen[R->n_gen++] = id;
        if (id == R->eos && !R->o.ignore_eos) {
            R->finish = "eos";
            break;
        }
        if (R->tok && vl2_detok_push(&dt, id, &piece, &plen) < 0) {
            vl2_detok_done(&dt);
            return vl2_err_set(err, VL2_ENOMEM, "out of memory");
        }
        if (append_text(R, piece, plen) < 0) {
            vl2_detok_done(&dt);
            return vl2_err_set(err, VL2_ENOMEM, "out of memory");
        }
        stop = vl2_stop_find(R->text, R->text_len, R->o.stops, (size_t)R->o.n_stops);
        if (stop >= 0) {
            R->text_len = (size_t)stop;
            R->text[stop] = 0;
            R->finish = "stop";
            break;
        }
        stream(R, 0);
        /* the dump wants the logits after the first generated token */
        if (R->n_gen < max_new || (R->logits2 && R->n_gen == 1)) {
            r = vl2_model_decode(R->m, &R->seq, &id, 1, err);
            if (r < 0) {
                vl2_detok_done(&dt);
                return r;
            }
            if (R->logits2 && R->n_gen == 1)
                memcpy(R->logits2 + V, vl2_seq_logits(R->seq), V * sizeof(float));
        }
    }
    if (strcmp(R->finish, "stop")) {
        const char *piece = "";
        size_t plen = 0;
        if (R->tok && vl2_detok_flush(&dt, &piece, &plen) == 0)
            (void)append_text(R, piece, plen);
    }
    vl2_detok_done(&dt);
    stream(R, 1);
    R->t_end = now();
    return 0;
}

static int write_dump(struct run *R, struct vl2_err *err)
{
    const struct vl2_model_config *cfg = vl2_model_config(R->m);
    const int64_t S = cfg->vision.image_size, D = cfg->lm.d_model, V = cfg->lm.n_vocab;
    const char *dir = R->o.dump;
    cJSON *j, *a;
    int i, r = 0;
    size_t k;

    if (mkdir(dir, 0777) < 0 && errno != EEXIST)
        return vl2_err_set(err, VL2_EIO, "--dump '%s': %s", dir, strerror(errno));

    j = cJSON_CreateObject();
    cJSON_AddItemToObject(j, "input_ids", int_array(R->ids, R->n_ids));
    cJSON_AddStringToObject(j, "prompt_text", R->o.prompt ? R->o.prompt : "");
    a = cJSON_AddArrayToObject(j, "num_image_tokens");
    for (i = 0; i < R->o.n_images; i++)
        cJSON_AddItemToArray(a, cJSON_CreateNumber(R->im[i].tiling.n_tokens));
    a = cJSON_AddArrayToObject(j, "images_spatial_crop");
    for (i = 0; i < R->o.n_images; i++) {
        int32_t c[2] = { R->im[i].tiling.tiles_w, R->im[i].tiling.tiles_h };
        cJSON_AddItemToArray(a, int_array(c, 2));
    }
    cJSON_AddNumberToObject(j, "image_token_id", R->image_token_id);
    a = cJSON_AddArrayToObject(j, "images");
    for (i = 0; i < R->o.n_images; i++)
        cJSON_AddItemToArray(a, cJSON_CreateString(R->o.images[i]));
    a = cJSON_AddArrayToObject(j, "image_sizes");
    for (i = 0; i < R->o.n_images; i++) {
        int32_t c[2] = { R->im[i].img.width, R->im[i].img.height };
        cJSON_AddItemToArray(a, int_array(c, 2));
    }
    r = dump_json(dir, "input_ids.json", j, err);
    cJSON_Delete(j);
    if (r < 0)
        return r;

    if (R->n_tiles > 0) {
        const struct vl2_image_trace *t0 = &R->im[0].trace;
        const int64_t Dv = cfg->vision.d_model, P = t0->n_patches, Q = t0->n_proj;
        uint8_t *px = malloc((size_t)R->n_tiles * 3 * (size_t)(S * S));
        float *vf = malloc((size_t)(R->n_tiles * P * Dv) * sizeof(float));
        float *po = malloc((size_t)(R->n_tiles * Q * D) * sizeof(float));
        size_t o_px = 0, o_vf = 0, o_po = 0;
        if (!px || !vf || !po) {
            free(px);
            free(vf);
            free(po);
            return vl2_err_set(err, VL2_ENOMEM, "out of memory for the dump");
        }
        for (i = 0; i < R->o.n_images; i++) {
            size_t nt = (size_t)R->im[i].tiling.n_tiles;
            memcpy(px + o_px, R->im[i].tiles, nt * 3 * (size_t)(S * S));
            memcpy(vf + o_vf, R->im[i].trace.vision_features, nt * (size_t)(P * Dv) * 4);
            memcpy(po + o_po, R->im[i].trace.projector_out, nt * (size_t)(Q * D) * 4);
            o_px += nt * 3 * (size_t)(S * S);
            o_vf += nt * (size_t)(P * Dv);
            o_po += nt * (size_t)(Q * D);
        }
        {
            int64_t sp[4] = { R->n_tiles, 3, S, S }, sv[3] = { R->n_tiles, P, Dv };
            int64_t so[3] = { R->n_tiles, Q, D };
            if (r >= 0)
                r = dump_npy(dir, "pixel_values_u8.npy", VL2_NPY_U8, 4, sp, px, err);
            if (r >= 0)
                r = dump_npy(dir, "vision_features.npy", VL2_NPY_F32, 3, sv, vf, err);
            if (r >= 0)
                r = dump_npy(dir, "projector_out.npy", VL2_NPY_F32, 3, so, po, err);
        }
        free(px);
        free(vf);
        free(po);
        if (r < 0)
            return r;
    }
    {
        int64_t se[2] = { (int64_t)R->n_ids, D }, sl[2] = { 2, V };
        int64_t sk[2] = { (int64_t)R->n_gen, RUN_TOPK };
        if ((r = dump_npy(dir, "inputs_embeds.npy", VL2_NPY_F32, 2, se, R->embeds, err)) < 0 ||
            (r = dump_npy(dir, "logits.npy", VL2_NPY_F32, 2, sl, R->logits2, err)) < 0)
            return r;
        if (R->n_gen > 0 &&
            ((r = dump_npy(dir, "logits_topk_values.npy", VL2_NPY_F32, 2, sk, R->topv,
                           err)) < 0 ||
             (r = dump_npy(dir, "logits_topk_ids.npy", VL2_NPY_I64, 2, sk, R->topi, err)) < 0))
            return r;
    }
    j = cJSON_CreateObject();
    cJSON_AddItemToObject(j, "generated_ids", int_array(R->gen, R->n_gen));
    cJSON_AddBoolToObject(j, "stopped_on_eos", !strcmp(R->finish, "eos"));
    {
        char *txt = NULL;
        if (R->tok && vl2_tokenizer_decode(R->tok, R->gen, R->n_gen, &txt, NULL, err) == 0) {
            cJSON_AddStringToObject(j, "text", txt);
            free(txt);
        }
    }
    a = cJSON_AddArrayToObject(j, "top1_margin");
    {
        float mn = INFINITY;
        for (k = 0; k < R->n_gen; k++) {
            cJSON_AddItemToArray(a, cJSON_CreateNumber(R->margin[k]));
            if (R->margin[k] < mn)
                mn = R->margin[k];
        }
        cJSON_AddNumberToObject(j, "min_top1_margin", R->n_gen ? mn : 0);
    }
    cJSON_AddNumberToObject(j, "prompt_len", (double)R->n_ids);
    r = dump_json(dir, "generated.json", j, err);
    cJSON_Delete(j);
    return r;
}

static long peak_rss_kib(void)
{
    struct rusage ru;

    if (getrusage(RUSAGE_SELF, &ru) < 0)
        return -1;
    return ru.ru_maxrss;
}

static void report(struct run *R)
{
    double ttft = R->t_first > 0 ? R->t_first - R->t_loaded : 0.0;
    double dec_t = R->n_gen > 1 ? R->t_end - R->t_first : 0.0;
    double dec_tps = dec_t > 0 ? (double)(R->n_gen - 1) / dec_t : 0.0;
    double pre_t = R->t_prefill - R->t_vision;
    double pre_tps = pre_t > 0 ? (double)R->n_ids / pre_t : 0.0;

    if (R->o.json) {
        cJSON *j = cJSON_CreateObject(), *s;
        char *out;
        cJSON_AddItemToObject(j, "prompt_ids", int_array(R->ids, R->n_ids));
        cJSON_AddItemToObject(j, "generated_ids", int_array(R->gen, R->n_gen));
        cJSON_AddStringToObject(j, "text", R->text ? R->text : "");
        cJSON_AddStringToObject(j, "finish_reason", R->finish);
        s = cJSON_AddObjectToObject(j, "stats");
        cJSON_AddNumberToObject(s, "tiles", R->n_tiles);
        cJSON_AddNumberToObject(s, "image_tokens", R->n_image_tokens);
        cJSON_AddNumberToObject(s, "prompt_tokens", (double)R->n_ids);
        cJSON_AddNumberToObject(s, "generated_tokens", (double)R->n_gen);
        cJSON_AddNumberToObject(s, "load_s", R->t_loaded - R->t_start);
        cJSON_AddNumberToObject(s, "vision_s", R->t_vision - R->t_loaded);
        cJSON_AddNumberToObject(s, "prefill_tokens_per_s", pre_tps);
        cJSON_AddNumberToObject(s, "ttft_s", ttft);
        cJSON_AddNumberToObject(s, "decode_tokens_per_s", dec_tps);
        cJSON_AddNumberToObject(s, "peak_rss_mib", (double)peak_rss_kib() / 1024.0);
        out = cJSON_Print(j);
        if (out)
            printf("%s\n", out);
        free(out);
        cJSON_Delete(j);
        return;
    }
    printf("\n");
    fprintf(stderr, "[vl2d run] %s: tiles %d, image tokens %d, prompt tokens %zu, generated %zu "
            "(%s)\n", R->o.model, (int)R->n_tiles, (int)R->n_image_tokens, R->n_ids, R->n_gen,
            R->finish);
    fprintf(stderr, "[vl2d run] load %.2f s, vision %.2f s, prefill %.1f tokens/s, time to "
            "first token %.2f s, decode %.2f tokens/s, peak RSS %.0f MiB\n",
            R->t_loaded - R->t_start, R->t_vision - R->t_loaded, pre_tps, ttft, dec_tps,
            (double)peak_rss_kib() / 1024.0);
}

static void run_done(struct run *R)
{
    int i;

    vl2_seq_free(R->seq);
    for (i = 0; i < RUN_MAX_IMAGES; i++) {
        if (R->m)
            vl2_image_embed_free(R->m, R->im[i].embed);
        vl2_image_trace_done(&R->im[i].trace);
        vl2_image_done(&R->im[i].img);
        free(R->im[i].tiles);
    }
    vl2_model_free(R->m);
    vl2_tokenizer_free(R->tok);
    free(R->ids);
    free(R->gen);
    free(R->text);
    free(R->embeds);
    free(R->logits2);
    free(R->topv);
    free(R->topi);
    free(R->margin);
}

int vl2d_cmd_run(int argc, char **argv)
{
    struct vl2_model_params mp = vl2_model_default_params();
    struct vl2_err err = { 0 };
    struct run R;
    int r;

    memset(&R, 0, sizeof(R));
    R.t_start = now();
    r = parse_args(&R.o, argc, argv);
    if (r != 0) {
        if (r < 0)
            fprintf(stderr, "Try 'vl2d run --help'.\n");
        return r < 0 ? 2 : 0;
    }

    r = vl2_tokenizer_load(&R.tok, R.o.model, &err);
    if (r < 0) {
        if (!R.o.input_ids_json)
            goto out_err;
        /* ids given: the tokenizer only turns the answer into text */
        fprintf(stderr, "vl2d run: %s, printing ids only\n", err.msg);
        R.tok = NULL;
    }
    R.image_token_id = R.tok ? vl2_tokenizer_id(R.tok, VL2_PROMPT_IMAGE_TAG) : -1;
    R.eos = R.tok ? vl2_tokenizer_eos(R.tok) : -1;
    if (R.image_token_id < 0 && R.o.n_images > 0) {
        r = vl2_err_set(&err, VL2_EFORMAT, "the tokenizer has no '%s' token",
                        VL2_PROMPT_IMAGE_TAG);
        goto out_err;
    }

    mp.backend = R.o.backend;
    mp.plugin_dir = R.o.plugin_dir;
    mp.n_threads = R.o.threads;
    mp.device = R.o.device;
    mp.image_token_id = R.image_token_id;
    mp.max_logit_rows = 1;
    r = vl2_model_load(&R.m, R.o.model, &mp, &err);
    if (r < 0)
        goto out_err;
    if (R.eos < 0)
        R.eos = vl2_model_config(R.m)->lm.eos_id;
    R.t_loaded = now();

    r = load_images(&R, &err);
    if (r < 0)
        goto out_err;
    r = build_prompt(&R, &err);
    if (r < 0)
        goto out_err;
    if (R.n_ids >= (size_t)vl2_model_n_ctx(R.m)) {
        r = vl2_err_set(&err, VL2_ELIMIT, "the prompt takes %zu tokens (%d of them for "
                        "%d images), the context holds %d", R.n_ids, (int)R.n_image_tokens,
                        R.o.n_images, (int)vl2_model_n_ctx(R.m));
        goto out_err;
    }
    r = encode_images(&R, &err);
    if (r < 0)
        goto out_err;
    R.t_vision = now();
    r = generate(&R, &err);
    if (r < 0)
        goto out_err;
    if (R.o.dump) {
        r = write_dump(&R, &err);
        if (r < 0)
            goto out_err;
    }
    report(&R);
    run_done(&R);
    return 0;

out_err:
    fflush(stdout);
    fprintf(stderr, "vl2d run: %s\n", err.msg[0] ? err.msg : vl2_status_name(r));
    run_done(&R);
    return 1;
}

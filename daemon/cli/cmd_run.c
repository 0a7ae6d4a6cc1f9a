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
#include "conf.h"
#include "image.h"
#include "model.h"
#include "npy.h"
#include "prepare.h"
#include "prompt.h"
#include "textstream.h"
#include "tokenizer.h"

/* the limits of a request are the daemon's (prepare.h) */
#define RUN_MAX_IMAGES VL2_PREP_DEFAULT_IMAGES
#define RUN_MAX_STOPS VL2_PREP_MAX_STOPS
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
    char        backend_options[VL2_CONF_OPTIONS_MAX]; /* --backend-option, joined */
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
"  --precision f32|bf16      arithmetic of the products: f32 (the cpu default) or\n"
"                            operands rounded to bf16 (the backend option precision=)\n"
"  --backend-option K=V      an option of the backend (cpu: isa=scalar|avx2|avx512,\n"
"                            precision=f32|bf16; the CUDA backend has its own);\n"
"                            repeatable; a key given twice takes the last value\n"
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
        } else if (!strcmp(a, "--precision")) {
            struct vl2_err err = { 0 };
            char item[32];
            if (strcmp(v, "f32") && strcmp(v, "bf16")) {
                fprintf(stderr, "vl2d run: --precision '%s': expected f32 or bf16\n", v);
                return -1;
            }
            snprintf(item, sizeof(item), "precision=%s", v);
            if (vl2_conf_options_append(o->backend_options, sizeof(o->backend_options), item,
                                        "--precision", &err) < 0) {
                fprintf(stderr, "vl2d run: %s\n", err.msg);
                return -1;
            }
        } else if (!strcmp(a, "--backend-option")) {
            struct vl2_err err = { 0 };
            if (vl2_conf_options_append(o->backend_options, sizeof(o->backend_options), v,
                                        "--backend-option", &err) < 0) {
                fprintf(stderr, "vl2d run: %s\n", err.msg);
                return -1;
            }
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

/* The precision the backend was given: the last precision= item of the
 * backend options (--precision, --backend-option), else the cpu backend's
 * default "f32" ("default" for another backend). */
static const char *run_precision(const struct run_opts *o, char *buf, size_t size)
{
    const char *p = o->backend_options, *found = NULL;

    for (; p && *p; p = strchr(p, ',') ? strchr(p, ',') + 1 : p + strlen(p))
        if (!strncmp(p, "precision=", 10))
            found = p + 10;
    if (!found)
        return !strcmp(o->backend, "cpu") ? "f32" : "default";
    snprintf(buf, size, "%.*s", (int)strcspn(found, ","), found);
    return buf;
}

/* {"input_ids": [...]} (the golden input_ids.json) -> ids. */
static int read_ids_json(const char *path, int32_t **ret, size_t *ret_n, struct vl2_err *err)
{
    char *text;
    size_t size, n, i = 0;
    cJSON *j, *a, *e;
    int32_t *ids;
    int r;

    r = vl2_file_read(path, (size_t)256 << 20, "ids", &text, &size, err);
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

struct run {
    struct run_opts         o;
    struct vl2_tokenizer   *tok;
    struct vl2_model       *m;
    struct vl2_seq         *seq;
    struct vl2_prep_model   pm;
    struct vl2_prepared     pr;        /* tiles, prompt ids, settings */
    char                   *files[RUN_MAX_IMAGES];  /* the encoded images */
    size_t                  file_sizes[RUN_MAX_IMAGES];
    int32_t                *given;     /* --input-ids-json */
    size_t                  n_given;
    struct vl2_image_embed *embed[RUN_MAX_IMAGES];
    struct vl2_image_trace  trace[RUN_MAX_IMAGES];
    struct vl2_textstream   ts;
    int32_t                *gen;       /* generated */
    size_t                  n_gen;
    float                  *embeds;    /* dump: [n_ids, D] */
    float                  *logits2;   /* dump: [2, V] */
    float                  *topv;      /* dump: [max_new, 20] */
    int64_t                *topi;
    float                  *margin;
    const char             *finish;
    double                  t_start, t_loaded, t_vision, t_first, t_end, t_prefill;
    int32_t                 n_tiles, n_image_tokens, image_token_id, eos;
};

/* Images, prompt and settings through vl2_prepare (as the daemon's engine
 * does): read the files, one user message. */
static int prepare(struct run *R, struct vl2_err *err)
{
    struct vl2_image_limits lim = vl2_image_default_limits();
    struct vl2_prep_image imgs[RUN_MAX_IMAGES];
    struct vl2_prep_message msg = { .role = VL2_ROLE_USER };
    struct vl2_prep_request rq = { 0 };
    int i, r;

    r = vl2_prep_model_init(&R->pm, R->m, R->tok, err);
    if (r < 0)
        return r;
    for (i = 0; i < R->o.n_images; i++) {
        r = vl2_file_read(R->o.images[i], lim.max_bytes, "image", &R->files[i],
                          &R->file_sizes[i], err);
        if (r < 0)
            return r;
        imgs[i] = (struct vl2_prep_image){
            .data = (const uint8_t *)R->files[i], .size = R->file_sizes[i], .fd = -1,
            .apply_exif = R->o.apply_exif, .name = R->o.images[i],
        };
    }
    if (R->o.input_ids_json) {
        r = read_ids_json(R->o.input_ids_json, &R->given, &R->n_given, err);
        if (r < 0)
            return r;
        rq.ids = R->given;
        rq.n_ids = R->n_given;
    } else if (R->o.n_images == 0 &&
               strspn(R->o.prompt, " \t\r\n\v\f") == strlen(R->o.prompt)) {
        return vl2_err_set(err, VL2_EINVAL, "empty prompt: give a question or an image");
    }
    msg.text = R->o.prompt;
    msg.images = imgs;
    msg.n_images = (size_t)R->o.n_images;
    rq.messages = &msg;
    rq.n_messages = 1;
    rq.sp = R->o.sp;
    rq.stops = R->o.stops;
    rq.n_stops = (size_t)R->o.n_stops;
    rq.max_new = (size_t)R->o.max_new;
    rq.max_images = RUN_MAX_IMAGES;
    rq.max_image_pixels = lim.max_pixels;
    rq.max_image_bytes = lim.max_bytes;
    rq.fd_timeout_s = 10.0;
    r = vl2_prepare(&R->pm, &rq, NULL, &R->pr, err);
    for (i = 0; i < R->o.n_images; i++) {
        free(R->files[i]);
        R->files[i] = NULL;
    }
    if (r < 0)
        return R->o.input_ids_json && r == VL2_EINVAL && strstr(err->msg, "placeholder")
                   ? vl2_err_prefix(err, r, R->o.input_ids_json) : r;
    R->n_tiles = R->pr.n_tiles;
    R->n_image_tokens = R->pr.n_image_tokens;
    return 0;
}

static int encode_images(struct run *R, struct vl2_err *err)
{
    size_t i;
    int r;

    for (i = 0; i < R->pr.n_images; i++) {
        const struct vl2_prepared_image *im = &R->pr.images[i];

        r = vl2_model_encode_image(R->m, im->tiles, im->tiling.n_tiles, im->tiling.tiles_w,
                                   im->tiling.tiles_h, &R->embed[i],
                                   R->o.dump ? &R->trace[i] : NULL, err);
        if (r < 0)
            return vl2_err_prefix(err, r, R->o.images[i]);
        if (R->embed[i]->n_tokens != im->tiling.n_tokens)
            return vl2_err_set(err, VL2_EINTERNAL, "image tokens %d (model) vs %d "
                               "(plan)", R->embed[i]->n_tokens, im->tiling.n_tokens);
    }
    return 0;
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

static const char *finish_name(enum vl2_ts_finish f)
{
    switch (f) {
    case VL2_TS_EOS: return "eos";
    case VL2_TS_STOP: return "stop";
    default: return "length";
    }
}

/* Prefill, then sample, stream (vl2_textstream, as the daemon's engine)
 * and decode one id at a time. */
static int generate(struct run *R, struct vl2_err *err)
{
    const size_t V = (size_t)vl2_model_config(R->m)->lm.n_vocab;
    const size_t D = (size_t)vl2_model_config(R->m)->lm.d_model;
    const int32_t n_ctx = vl2_model_n_ctx(R->m);
    const size_t max_new = R->pr.max_new;
    struct vl2_seq_params sp = vl2_seq_default_params();
    struct vl2_textstream_params tp = {
        .tok = R->tok, .eos_id = R->eos, .ignore_eos = R->o.ignore_eos != 0,
        .max_new = max_new, .stops = R->pr.stops, .n_stops = R->pr.n_stops,
    };
    int r;

    sp.capacity = (int32_t)(R->pr.n_ids + (max_new ? max_new : 1));
    if (sp.capacity > n_ctx)
        sp.capacity = n_ctx;
    sp.sampler = R->pr.sp;
    r = vl2_seq_new(R->m, &sp, &R->seq, err);
    if (r < 0)
        return r;
    R->gen = malloc((max_new ? max_new : 1) * sizeof(*R->gen));
    if (!R->gen)
        return vl2_err_set(err, VL2_ENOMEM, "out of memory");
    if (R->o.dump) {
        size_t steps = max_new ? max_new : 1;
        R->embeds = malloc(R->pr.n_ids * D * sizeof(*R->embeds));
        R->logits2 = calloc(2 * V, sizeof(*R->logits2));
        R->topv = malloc(steps * RUN_TOPK * sizeof(*R->topv));
        R->topi = malloc(steps * RUN_TOPK * sizeof(*R->topi));
        R->margin = malloc(steps * sizeof(*R->margin));
        if (!R->embeds || !R->logits2 || !R->topv || !R->topi || !R->margin)
            return vl2_err_set(err, VL2_ENOMEM, "out of memory for the dump");
    }
    {
        struct vl2_step_item it = {
            .seq = R->seq, .ids = R->pr.ids, .n_ids = (int32_t)R->pr.n_ids,
            .images = (const struct vl2_image_embed *const *)R->embed,
            .n_images = (int32_t)R->pr.n_images, .want_logits = 1, .ret_embeds = R->embeds,
        };
        r = vl2_model_step(R->m, &it, 1, err);
        if (r < 0)
            return r;
    }
    R->t_prefill = now();
    if (R->logits2)
        memcpy(R->logits2, vl2_seq_logits(R->seq), V * sizeof(float));

    r = vl2_textstream_init(&R->ts, &tp, err);
    if (r < 0)
        return r;
    while (R->n_gen < max_new) {
        struct vl2_ts_token t;

        record_step(R, R->n_gen, vl2_seq_logits(R->seq), V);
        r = vl2_textstream_next(&R->ts, R->seq, false, &t, err);
        if (r < 0)
            return r;
        if (R->n_gen == 0)
            R->t_first = now();
        R->gen[R->n_gen++] = t.id;
        if (!R->o.json && t.len > 0) {
            fwrite(t.text, 1, t.len, stdout);
            fflush(stdout);
        }
        /* the dump wants the logits after the first generated token */
        if (!R->ts.finish || (R->logits2 && R->n_gen == 1 && R->ts.finish == VL2_TS_LENGTH)) {
            r = vl2_model_decode(R->m, &R->seq, &t.id, 1, err);
            if (r < 0)
                return r;
            if (R->logits2 && R->n_gen == 1)
                memcpy(R->logits2 + V, vl2_seq_logits(R->seq), V * sizeof(float));
        }
        if (R->ts.finish)
            break;
    }
    R->finish = finish_name(R->ts.finish);
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
    cJSON_AddItemToObject(j, "input_ids", int_array(R->pr.ids, R->pr.n_ids));
    cJSON_AddStringToObject(j, "prompt_text", R->o.prompt ? R->o.prompt : "");
    a = cJSON_AddArrayToObject(j, "num_image_tokens");
    for (i = 0; i < R->o.n_images; i++)
        cJSON_AddItemToArray(a, cJSON_CreateNumber(R->pr.images[i].tiling.n_tokens));
    a = cJSON_AddArrayToObject(j, "images_spatial_crop");
    for (i = 0; i < R->o.n_images; i++) {
        int32_t c[2] = { R->pr.images[i].tiling.tiles_w, R->pr.images[i].tiling.tiles_h };
        cJSON_AddItemToArray(a, int_array(c, 2));
    }
    cJSON_AddNumberToObject(j, "image_token_id", R->image_token_id);
    a = cJSON_AddArrayToObject(j, "images");
    for (i = 0; i < R->o.n_images; i++)
        cJSON_AddItemToArray(a, cJSON_CreateString(R->o.images[i]));
    a = cJSON_AddArrayToObject(j, "image_sizes");
    for (i = 0; i < R->o.n_images; i++) {
        int32_t c[2] = { R->pr.images[i].width, R->pr.images[i].height };
        cJSON_AddItemToArray(a, int_array(c, 2));
    }
    r = dump_json(dir, "input_ids.json", j, err);
    cJSON_Delete(j);
    if (r < 0)
        return r;

    if (R->n_tiles > 0) {
        const struct vl2_image_trace *t0 = &R->trace[0];
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
            size_t nt = (size_t)R->pr.images[i].tiling.n_tiles;
            memcpy(px + o_px, R->pr.images[i].tiles, nt * 3 * (size_t)(S * S));
            memcpy(vf + o_vf, R->trace[i].vision_features, nt * (size_t)(P * Dv) * 4);
            memcpy(po + o_po, R->trace[i].projector_out, nt * (size_t)(Q * D) * 4);
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
        int64_t se[2] = { (int64_t)R->pr.n_ids, D }, sl[2] = { 2, V };
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
    cJSON_AddNumberToObject(j, "prompt_len", (double)R->pr.n_ids);
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
    double pre_tps = pre_t > 0 ? (double)R->pr.n_ids / pre_t : 0.0;

    if (R->o.json) {
        cJSON *j = cJSON_CreateObject(), *s;
        char prec[32];
        char *out;
        cJSON_AddItemToObject(j, "prompt_ids", int_array(R->pr.ids, R->pr.n_ids));
        cJSON_AddItemToObject(j, "generated_ids", int_array(R->gen, R->n_gen));
        cJSON_AddStringToObject(j, "text", R->ts.text ? R->ts.text : "");
        cJSON_AddStringToObject(j, "finish_reason", R->finish);
        s = cJSON_AddObjectToObject(j, "stats");
        cJSON_AddNumberToObject(s, "tiles", R->n_tiles);
        cJSON_AddStringToObject(s, "precision", run_precision(&R->o, prec, sizeof(prec)));
        cJSON_AddNumberToObject(s, "image_tokens", R->n_image_tokens);
        cJSON_AddNumberToObject(s, "prompt_tokens", (double)R->pr.n_ids);
        cJSON_AddNumberToObject(s, "generated_tokens", (double)R->n_gen);
        cJSON_AddNumberToObject(s, "load_s", R->t_loaded - R->t_start);
        cJSON_AddNumberToObject(s, "vision_s", R->t_vision - R->t_loaded);
        cJSON_AddNumberToObject(s, "prefill_tokens_per_s", pre_tps);
        cJSON_AddNumberToObject(s, "ttft_s", ttft);
        cJSON_AddNumberToObject(s, "decode_tokens_per_s", dec_tps);
        /* one request per process: nothing cached (the daemon's Done fields) */
        cJSON_AddNumberToObject(s, "cached_tokens", 0);
        cJSON_AddNumberToObject(s, "images_from_cache", 0);
        cJSON_AddBoolToObject(s, "vision_ran", R->n_tiles > 0);
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
            "(%s)\n", R->o.model, (int)R->n_tiles, (int)R->n_image_tokens, R->pr.n_ids, R->n_gen,
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
            vl2_image_embed_free(R->m, R->embed[i]);
        vl2_image_trace_done(&R->trace[i]);
        free(R->files[i]);
    }
    vl2_prepared_done(&R->pr);
    vl2_textstream_done(&R->ts);
    vl2_model_free(R->m);
    vl2_tokenizer_free(R->tok);
    free(R->given);
    free(R->gen);
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
    mp.backend_options = R.o.backend_options[0] ? R.o.backend_options : NULL;
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

    r = prepare(&R, &err);
    if (r < 0)
        goto out_err;
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

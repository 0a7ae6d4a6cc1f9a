/* test_normalize.c - the vision tower honours processor_config.normalize.
 *
 * The expected values are the golden ones (tests/data/golden, from the
 * official implementation with normalize = true, mean = std = 0.5), carried
 * over by algebra: the patch embedding is linear, so with pixels x = v / 255
 *     W . ((x - 0.5) / 0.5) + b  =  (2W) . x + (b - W . 1)
 * A copy of the micro checkpoint whose patch_embed is W' = 2W and
 * b' = b - (sum of each row of W), both float32, and whose
 * processor_config.json says "normalize": false (ToTensor only: x = v / 255)
 * must therefore give the golden vision features and projector output.  A
 * tower that normalised anyway would feed 2x - 1 into W' and miss them by far.
 *
 * usage: test_normalize --model CKPT_DIR --golden GOLDEN_PRESET_DIR
 *                       --pixels PIXELS_DIR --plugin-dir DIR
 */
#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model.h"
#include "testutil.h"
#include "vl2-float.h"
#include "weights.h"

#define TOL 1e-3

static void die(const char *what)
{
    fprintf(stderr, "FAIL %s\n", what);
    exit(1);
}

static void write_file(const char *dir, const char *name, const void *p, size_t n)
{
    char *path = tu_path(dir, name);
    FILE *f = fopen(path, "wb");

    if (!f || fwrite(p, 1, n, f) != n || fclose(f) != 0)
        die(path);
    free(path);
}

/* Float32 copy of a (bf16, f16 or f32) tensor. */
static float *to_f32(const struct vl2_st_tensor *t, size_t n)
{
    float *o = malloc(n * sizeof(*o));
    size_t i;

    if (!o)
        die("out of memory");
    for (i = 0; i < n; i++) {
        uint16_t h;
        if (t->dtype == VL2_DTYPE_F32) {
            memcpy(&o[i], (const char *)t->data + 4 * i, 4);
            continue;
        }
        memcpy(&h, (const char *)t->data + 2 * i, 2);
        o[i] = t->dtype == VL2_DTYPE_BF16 ? vl2_bf16_to_f32(h) : vl2_f16_to_f32(h);
    }
    return o;
}

/* @src's checkpoint with patch_embed replaced as described above, written
 * as @out/model.safetensors (one file, a fresh header). */
static void write_checkpoint(const char *src, const char *out)
{
    static const char *wname = "vision.patch_embed.proj.weight",
                      *bname = "vision.patch_embed.proj.bias";
    struct vl2_weights *w = NULL;
    struct vl2_err err = { 0 };
    const struct vl2_st_tensor *tw, *tb;
    float *W, *b;
    size_t n_out, n_in, i, j, k, n = 0, off = 0, hlen;
    cJSON *hdr = cJSON_CreateObject();
    char *htext, *path;
    FILE *f;

    if (vl2_weights_open(&w, src, &err) < 0)
        die(err.msg);
    tw = vl2_weights_find(w, wname);
    tb = vl2_weights_find(w, bname);
    if (!tw || !tb || tw->ndim != 4 || tb->ndim != 1 || tb->shape[0] != tw->shape[0])
        die("patch_embed tensors");
    n_out = (size_t)tw->shape[0];
    n_in = (size_t)(tw->shape[1] * tw->shape[2] * tw->shape[3]);
    W = to_f32(tw, n_out * n_in);
    b = to_f32(tb, n_out);
    for (i = 0; i < n_out; i++) {
        double s = 0;
        for (j = 0; j < n_in; j++)
            s += W[i * n_in + j];
        b[i] = (float)((double)b[i] - s);
        for (j = 0; j < n_in; j++)
            W[i * n_in + j] *= 2.0f;   /* exact */
    }
    /* header: every tensor as it was, the two new ones as F32 */
    for (k = 0; k < vl2_weights_count(w); k++) {
        const struct vl2_st_tensor *t = vl2_weights_at(w, k);
        int f32 = t == tw || t == tb;
        size_t size = f32 ? (t == tw ? n_out * n_in : n_out) * 4 : t->size;
        cJSON *e = cJSON_AddObjectToObject(hdr, t->name), *sh, *of;
        int d;

        cJSON_AddStringToObject(e, "dtype", vl2_dtype_st_name(f32 ? VL2_DTYPE_F32 : t->dtype));
        sh = cJSON_AddArrayToObject(e, "shape");
        for (d = 0; d < t->ndim; d++)
            cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)t->shape[d]));
        of = cJSON_AddArrayToObject(e, "data_offsets");
        cJSON_AddItemToArray(of, cJSON_CreateNumber((double)off));
        cJSON_AddItemToArray(of, cJSON_CreateNumber((double)(off + size)));
        off += size;
    }
    htext = cJSON_PrintUnformatted(hdr);
    if (!htext)
        die("header");
    hlen = (strlen(htext) + 7) / 8 * 8;   /* padded with spaces */
    path = tu_path(out, "model.safetensors");
    f = fopen(path, "wb");
    if (!f)
        die(path);
    {
        unsigned char len8[8];
        for (i = 0; i < 8; i++)
            len8[i] = (unsigned char)((uint64_t)hlen >> (8 * i));
        fwrite(len8, 1, 8, f);
        fwrite(htext, 1, strlen(htext), f);
        for (i = strlen(htext); i < hlen; i++)
            fputc(' ', f);
    }
    for (k = 0; k < vl2_weights_count(w); k++) {
        const struct vl2_st_tensor *t = vl2_weights_at(w, k);
        if (t == tw)
            fwrite(W, 4, n_out * n_in, f);
        else if (t == tb)
            fwrite(b, 4, n_out, f);
        else
            fwrite(t->data, 1, t->size, f);
        n++;
    }
    if (fclose(f) != 0)
        die(path);
    printf("wrote %s: %zu tensors, patch_embed as F32 (2W, b - W.1)\n", path, n);
    free(path);
    free(htext);
    cJSON_Delete(hdr);
    free(W);
    free(b);
    vl2_weights_close(w);
}

/* @src's config.json as is, processor_config.json with "normalize": false. */
static void write_configs(const char *src, const char *out)
{
    struct vl2_err err = { 0 };
    char *path = tu_path(src, "config.json"), *buf, *text;
    size_t len;
    cJSON *pc;

    if (vl2_file_read(path, 1 << 20, "test", &buf, &len, &err) < 0)
        die(err.msg);
    write_file(out, "config.json", buf, len);
    free(buf);
    free(path);
    path = tu_path(src, "processor_config.json");
    if (vl2_file_read(path, 1 << 20, "test", &buf, &len, &err) < 0)
        die(err.msg);
    pc = cJSON_Parse(buf);
    if (!pc || !cJSON_GetObjectItemCaseSensitive(pc, "normalize"))
        die("processor_config.json without \"normalize\"");
    cJSON_ReplaceItemInObjectCaseSensitive(pc, "normalize", cJSON_CreateFalse());
    text = cJSON_Print(pc);
    write_file(out, "processor_config.json", text, strlen(text));
    free(text);
    cJSON_Delete(pc);
    free(buf);
    free(path);
}

static void check_case(struct vl2_model *m, const char *golden, const char *pixels,
                       const char *cs)
{
    char *cdir = tu_path(golden, cs), *pdir = tu_path(pixels, cs);
    const struct vl2_model_config *cfg = vl2_model_config(m);
    struct vl2_npy px = { 0 }, gf = { 0 }, gp = { 0 };
    struct vl2_image_embed *e = NULL;
    struct vl2_image_trace tr = { 0 };
    struct vl2_err err = { 0 };
    struct tu_case c;
    int32_t tw, th, nt;
    int r;

    tu_case_load(&c, cdir);
    tu_npy_load(&px, pdir, "pixel_values_u8.npy");
    tu_npy_load(&gf, cdir, "vision_features.npy");
    tu_npy_load(&gp, cdir, "projector_out.npy");
    CHECK_MSG(c.n_images == 1, "%s: %d images", cs, c.n_images);
    tw = c.crop[0][0];
    th = c.crop[0][1];
    nt = 1 + tw * th;
    r = vl2_model_encode_image(m, px.data, nt, tw, th, &e, &tr, &err);
    CHECK_MSG(r == 0, "%s: encode: %s", cs, err.msg);
    if (r == 0) {
        size_t nf = (size_t)nt * (size_t)tr.n_patches * (size_t)cfg->vision.d_model;
        size_t np = (size_t)nt * (size_t)tr.n_proj * (size_t)cfg->lm.d_model;
        CHECK_MSG(nf == gf.count && np == gp.count, "%s: %zu/%zu features, %zu/%zu projector",
                 cs, nf, gf.count, np, gp.count);
        if (nf == gf.count && np == gp.count) {
            printf("case %s (normalize false, patch_embed carried over)\n", cs);
            tu_compare("vision_features", tr.vision_features, &gf, nf, TOL);
            tu_compare("projector_out", tr.projector_out, &gp, np, TOL);
        }
    }
    vl2_image_trace_done(&tr);
    vl2_image_embed_free(m, e);
    vl2_npy_done(&px);
    vl2_npy_done(&gf);
    vl2_npy_done(&gp);
    tu_case_done(&c);
    free(cdir);
    free(pdir);
}

int main(int argc, char **argv)
{
    const char *model = NULL, *golden = NULL, *pixels = NULL, *plugin_dir = NULL;
    struct vl2_model_params mp = vl2_model_default_params();
    struct vl2_model *m = NULL;
    struct vl2_err err = { 0 };
    char dir[] = "/tmp/vl2-test-normalize-XXXXXX";
    char *out;
    int i;

    for (i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--model"))
            model = argv[i + 1];
        else if (!strcmp(argv[i], "--golden"))
            golden = argv[i + 1];
        else if (!strcmp(argv[i], "--pixels"))
            pixels = argv[i + 1];
        else if (!strcmp(argv[i], "--plugin-dir"))
            plugin_dir = argv[i + 1];
    }
    if (!model || !golden || !pixels) {
        fprintf(stderr, "usage: test_normalize --model DIR --golden DIR --pixels DIR "
                        "[--plugin-dir DIR]\n");
        return 2;
    }
    out = mkdtemp(dir);
    if (!out)
        die("mkdtemp");
    write_configs(model, out);
    write_checkpoint(model, out);
    mp.plugin_dir = plugin_dir;
    mp.image_token_id = 128815;
    if (vl2_model_load(&m, out, &mp, &err) < 0) {
        fprintf(stderr, "FAIL load %s: %s\n", out, err.msg);
        return 1;
    }
    CHECK_MSG(vl2_model_processor_config(m)->normalize == 0, "the copy still normalises");
    check_case(m, golden, pixels, "a384");
    check_case(m, golden, pixels, "wide");
    vl2_model_free(m);
    {
        const char *names[] = { "config.json", "processor_config.json", "model.safetensors" };
        for (i = 0; i < 3; i++) {
            char *p = tu_path(out, names[i]);
            unlink(p);
            free(p);
        }
        rmdir(out);
    }
    if (check_failures) {
        printf("%d failures\n", check_failures);
        return 1;
    }
    printf("normalize false: golden features through the carried-over patch_embed\n");
    return 0;
}

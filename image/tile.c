/* tile.c - tile grid selection, global/local views, tiles and
 * normalisation, as the official DeepSeek-VL2 processor (spec 3.2-3.6). */
#include "image.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define PAD_COLOUR 127   /* int(0.5 * 255): the image mean as uint8 */

/* Python's round() of a double: half to even (the default rounding mode). */
static int32_t py_round(double x)
{
    return (int32_t)nearbyint(x);
}

int32_t vl2_image_n_tokens(int32_t tiles_w, int32_t tiles_h, int image_size, int patch,
                           int downsample)
{
    int32_t q;

    if (image_size <= 0 || patch <= 0 || downsample <= 0)
        return 0;
    q = (image_size / patch + downsample - 1) / downsample;   /* ceil((384 // 14) / 2) */
    return q * (q + 1) + 1 + (tiles_h * q) * (tiles_w * q + 1);
}

void vl2_image_plan(struct vl2_tiling *t, int32_t w, int32_t h, const int (*cands)[2],
                    int n_cands, int cropping, int image_size, int patch, int downsample)
{
    int32_t bw = image_size, bh = image_size;

    memset(t, 0, sizeof(*t));
    if (image_size <= 0)
        return;
    if (cropping && cands && n_cands > 0 && w > 0 && h > 0) {
        int64_t max_eff = -1, min_waste = 0;

        for (int i = 0; i < n_cands; i++) {
            const int W = cands[i][0], H = cands[i][1];
            double sw, sh, scale;
            int64_t dw, dh, eff, waste;

            if (W <= 0 || H <= 0)
                continue;
            sw = (double)W / w;
            sh = (double)H / h;
            scale = sh < sw ? sh : sw;              /* Python min(sw, sh) */
            dw = (int64_t)(w * scale);              /* int(): truncation */
            dh = (int64_t)(h * scale);
            eff = dw * dh < (int64_t)w * h ? dw * dh : (int64_t)w * h;
            waste = (int64_t)W * H - eff;
            if (eff > max_eff || (eff == max_eff && waste < min_waste)) {
                max_eff = eff;
                min_waste = waste;
                bw = W;
                bh = H;
            }
        }
    }
    t->best_w = bw;
    t->best_h = bh;
    t->tiles_w = bw / image_size;
    t->tiles_h = bh / image_size;
    t->n_tiles = 1 + t->tiles_w * t->tiles_h;
    t->n_tokens = vl2_image_n_tokens(t->tiles_w, t->tiles_h, image_size, patch, downsample);
}

void vl2_image_pad_geometry(int32_t w, int32_t h, int32_t W, int32_t H, int32_t *ret_rw,
                            int32_t *ret_rh, int32_t *ret_x, int32_t *ret_y)
{
    double im_ratio = (double)w / h, dest_ratio = (double)W / H;
    int32_t rw = W, rh = H;

    /* ImageOps.contain */
    if (im_ratio != dest_ratio) {
        if (im_ratio > dest_ratio) {
            int32_t nh = py_round((double)h / w * W);

            if (nh != H)
                rh = nh;
        } else {
            int32_t nw = py_round((double)w / h * H);

            if (nw != W)
                rw = nw;
        }
    }
    *ret_rw = rw;
    *ret_rh = rh;
    /* ImageOps.pad, centering (0.5, 0.5) */
    *ret_x = rw != W ? py_round((W - rw) * 0.5) : 0;
    *ret_y = rw == W && rh != H ? py_round((H - rh) * 0.5) : 0;
}

/* ImageOps.pad(img, (W, H), BICUBIC, color=127) into @canvas (W x H RGB8). */
static int pad_view(const struct vl2_image *img, int32_t W, int32_t H, uint8_t *canvas,
                    struct vl2_err *err)
{
    int32_t rw, rh, x, y;

    vl2_image_pad_geometry(img->width, img->height, W, H, &rw, &rh, &x, &y);
    if (rw < 1 || rh < 1)
        return vl2_err_set(err, VL2_EUNSUPPORTED,
                           "image: %dx%d: aspect ratio too extreme (it would be resized to "
                           "%dx%d to fit %dx%d)",
                           (int)img->width, (int)img->height, (int)rw, (int)rh, (int)W, (int)H);
    if (rw != W || rh != H)
        memset(canvas, PAD_COLOUR, (size_t)W * H * 3);
    return vl2_image_resize(img->rgb, img->width, img->height,
                            canvas + ((size_t)y * W + x) * 3, rw, rh, (size_t)W * 3, err);
}

/* Copy the S x S window of @src (rows @stride bytes apart) into CHW @out. */
static void hwc_to_chw(const uint8_t *src, size_t stride, int S, uint8_t *out)
{
    const size_t plane = (size_t)S * S;

    for (int y = 0; y < S; y++) {
        const uint8_t *s = src + (size_t)y * stride;
        uint8_t *r = out + (size_t)y * S, *g = r + plane, *b = g + plane;

        for (int x = 0; x < S; x++) {
            r[x] = s[3 * x];
            g[x] = s[3 * x + 1];
            b[x] = s[3 * x + 2];
        }
    }
}

int vl2_image_tile(const struct vl2_image *img, const struct vl2_tiling *t, int image_size,
                   uint8_t *out, struct vl2_err *err)
{
    const int S = image_size;
    const size_t tile = (size_t)3 * S * S;
    uint8_t *canvas;
    int r;

    if (!img || !img->rgb || img->width < 1 || img->height < 1)
        return vl2_err_set(err, VL2_EINVAL, "image: tile: no image");
    if (S < 1 || t->best_w < S || t->best_h < S || t->best_w % S || t->best_h % S ||
        t->tiles_w != t->best_w / S || t->tiles_h != t->best_h / S ||
        t->n_tiles != 1 + t->tiles_w * t->tiles_h)
        return vl2_err_set(err, VL2_EINVAL,
                           "image: tile: plan %dx%d is not a grid of %dx%d tiles",
                           (int)t->best_w, (int)t->best_h, S, S);

    /* global view */
    canvas = malloc(tile);
    if (!canvas)
        return vl2_err_set(err, VL2_ENOMEM, "image: out of memory for tiles");
    r = pad_view(img, S, S, canvas, err);
    if (r < 0)
        goto out_canvas;
    hwc_to_chw(canvas, (size_t)S * 3, S, out);
    free(canvas);

    /* local view: the same padded image when the grid is one tile */
    if (t->best_w == S && t->best_h == S) {
        memcpy(out + tile, out, tile);
        return 0;
    }
    canvas = malloc((size_t)t->best_w * t->best_h * 3);
    if (!canvas)
        return vl2_err_set(err, VL2_ENOMEM, "image: out of memory for tiles");
    r = pad_view(img, t->best_w, t->best_h, canvas, err);
    if (r < 0)
        goto out_canvas;
    for (int32_t ty = 0; ty < t->tiles_h; ty++)
        for (int32_t tx = 0; tx < t->tiles_w; tx++)
            hwc_to_chw(canvas + ((size_t)ty * S * t->best_w + (size_t)tx * S) * 3,
                       (size_t)t->best_w * 3, S,
                       out + (1 + (size_t)ty * t->tiles_w + tx) * tile);
    r = 0;

out_canvas:
    free(canvas);
    return r;
}

void vl2_image_normalize(float *out, const uint8_t *in, size_t n, size_t plane,
                         const float mean[3], const float std[3], int normalize)
{
    float lut[3][256];

    /* torchvision ToTensor (v / 255), then Normalize, in float32 */
    for (int c = 0; c < 3; c++)
        for (int v = 0; v < 256; v++)
            lut[c][v] = normalize ? ((float)v / 255.0f - mean[c]) / std[c] : (float)v / 255.0f;
    if (plane == 0)
        plane = n;
    for (size_t i = 0; i < n;) {
        const float *l = lut[(i / plane) % 3];
        size_t end = (i / plane + 1) * plane;

        if (end > n)
            end = n;
        for (; i < end; i++)
            out[i] = l[in[i]];
    }
}

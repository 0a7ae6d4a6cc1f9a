/* image.h - image input of DeepSeek-VL2: decoding (JPEG, PNG, WebP) into an
 * RGB8 raster, and tiling exactly as the official processor does
 * (spec 3: best-resolution grid, Pillow BICUBIC resize, pad with 127,
 * normalisation to float32 CHW).
 *
 * Usage:
 *     struct vl2_image img = {0};
 *     struct vl2_image_limits lim = vl2_image_default_limits();
 *     struct vl2_tiling t;
 *     r = vl2_image_decode(&img, data, size, &lim, err);
 *     vl2_image_plan(&t, img.width, img.height, cands, n_cands, n_images <= 2,
 *                    384, 14, 2);
 *     u8 = malloc(t.n_tiles * 3 * 384 * 384);
 *     r = vl2_image_tile(&img, &t, 384, u8, err);
 *     vl2_image_normalize(f32, u8, t.n_tiles * 3 * 384 * 384, 384 * 384, mean, std,
 *                         normalize);
 *     vl2_image_done(&img);
 *
 * Conversion rules follow Pillow's Image.open(...).convert("RGB"), which the
 * official code uses:
 *   - alpha is dropped without compositing (the stored colour is kept);
 *   - grey is replicated; palettes are expanded (palette transparency ignored);
 *   - 16-bit PNG: the high byte of each sample (Pillow's ";16B" unpackers),
 *     except 16-bit grey without alpha, which Pillow opens as mode "I" and
 *     converts by clamping the 16-bit value to 0..255;
 *   - CMYK/YCCK JPEG: Adobe-inverted CMYK, then R = (255-K) - C*(255-K)/255
 *     with Pillow's rounding (best effort: no colour management);
 *   - animated WebP: the first frame composed on a transparent canvas, as
 *     libwebp's WebPAnimDecoder (used by Pillow) gives it;
 *   - EXIF orientation is NOT applied unless limits.apply_exif is set (the
 *     official code ignores it).
 */
#ifndef VL2_IMAGE_H
#define VL2_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#include "vl2-status.h"

/* A decoded image, owned by the caller (vl2_image_done frees rgb). */
struct vl2_image {
    int32_t  width, height;
    uint8_t *rgb;       /* RGB8, row-major, width * height * 3 bytes */
};

/* What a decode may cost; from vl2_image_default_limits(), then adjusted. */
struct vl2_image_limits {
    uint64_t max_pixels;  /* width * height; default 50 000 000 */
    size_t   max_bytes;   /* compressed input size; default 64 MiB */
    int      apply_exif;  /* rotate/flip per the EXIF orientation tag; default 0 */
};

struct vl2_image_limits vl2_image_default_limits(void);

/* The formats vl2_image_decode recognises. */
enum vl2_image_format {
    VL2_IMAGE_UNKNOWN = 0,
    VL2_IMAGE_JPEG,
    VL2_IMAGE_PNG,
    VL2_IMAGE_WEBP,
};

/* Identify the format of @data by its signature.  Returns an enum
 * vl2_image_format; for anything else VL2_IMAGE_UNKNOWN, and when @what is
 * not NULL it receives a short name of what was found ("GIF", "BMP",
 * "TIFF", ... or "unknown (first bytes 12 34 56 78)"). */
int vl2_image_sniff(const void *data, size_t size, char *what, size_t what_size);

/* Decode a JPEG, PNG or WebP held in memory into @img (RGB8).
 * The compressed size is checked against lim->max_bytes and the dimensions
 * from the header against lim->max_pixels before any pixel is decoded.
 * @lim may be NULL for the defaults.
 * Returns 0, or VL2_EFORMAT (corrupt, truncated, zero-sized),
 * VL2_EUNSUPPORTED (another format: the message names it), VL2_ELIMIT,
 * VL2_ENOMEM; on failure @img is left zeroed. */
int  vl2_image_decode(struct vl2_image *img, const void *data, size_t size,
                      const struct vl2_image_limits *lim, struct vl2_err *err);
void vl2_image_done(struct vl2_image *img);

/* Width and height from the header only (no pixel decoded).  Returns 0, or
 * the errors of vl2_image_decode. */
int vl2_image_probe(const void *data, size_t size, int32_t *ret_width, int32_t *ret_height,
                    struct vl2_err *err);

/* Apply EXIF orientation @orientation (1..8, TIFF tag 0x0112) to @img in
 * place, as Pillow's ImageOps.exif_transpose does.  Values outside 2..8
 * leave the image unchanged.  Returns 0 or VL2_ENOMEM. */
int vl2_image_orient(struct vl2_image *img, int orientation, struct vl2_err *err);

/* The tile grid of one image. */
struct vl2_tiling {
    int32_t best_w, best_h;    /* local view size (a candidate, or image_size^2) */
    int32_t tiles_w, tiles_h;  /* best_w / image_size, best_h / image_size */
    int32_t n_tiles;           /* 1 + tiles_w * tiles_h (global view first) */
    int32_t n_tokens;          /* image tokens in the prompt (spec 6.2) */
};

/* Choose the tile grid of a w x h image (spec 3.2): best resolution over
 * @cands ((width, height) pairs in config order) when @cropping, else
 * image_size x image_size.  cropping = (number of images in the whole
 * conversation <= 2).  With no candidate, image_size x image_size. */
void vl2_image_plan(struct vl2_tiling *t, int32_t w, int32_t h, const int (*cands)[2],
                    int n_cands, int cropping, int image_size, int patch, int downsample);

/* Make the tiles of @img for plan @t (spec 3.3-3.4) into @out:
 * t->n_tiles * 3 * image_size * image_size bytes, CHW per tile (R, G, B
 * planes), the global view first, then the local tiles row-major.
 * Returns 0, VL2_EINVAL (plan not a multiple of image_size), VL2_EUNSUPPORTED
 * (aspect ratio so extreme that a side rounds to 0 pixels, which the
 * official code cannot process either) or VL2_ENOMEM. */
int  vl2_image_tile(const struct vl2_image *img, const struct vl2_tiling *t, int image_size,
                    uint8_t *out, struct vl2_err *err);

/* The official processor's pixel transform (spec 3.6: ToTensor, then
 * Normalize only when processor_config.normalize is true), in float32:
 *     @normalize != 0: out[i] = (in[i] / 255 - mean[c]) / std[c]
 *     @normalize == 0: out[i] = in[i] / 255  (mean and std unused, may be NULL)
 * with c = (i / plane) % 3, plane = image_size^2 (0: one plane of n).  The one
 * place pixels become floats: the vision tower (daemon/model/vision.c) and
 * `vl2d preprocess` both call it. */
void vl2_image_normalize(float *out, const uint8_t *in, size_t n, size_t plane,
                         const float mean[3], const float std[3], int normalize);

/* ---- building blocks, exposed for tests and benchmarks ------------------ */

/* Pillow-exact BICUBIC resize (Image.resize(..., BICUBIC), spec 3.7) of the
 * RGB8 image @src (sw x sh, rows sw * 3 bytes apart) to dw x dh, written at
 * @dst with rows @dst_stride bytes apart.  Same size: a copy.
 * Uses AVX2 where available; the environment variable VL2_IMAGE_SIMD=0
 * selects the portable code (same results).
 * Returns 0, VL2_EINVAL (a size < 1) or VL2_ENOMEM. */
int vl2_image_resize(const uint8_t *src, int32_t sw, int32_t sh, uint8_t *dst, int32_t dw,
                     int32_t dh, size_t dst_stride, struct vl2_err *err);

/* ImageOps.pad(img, (W, H), BICUBIC, color=(127,127,127)) geometry
 * (spec 3.3): the resized size (*ret_rw, *ret_rh) and paste offset
 * (*ret_x, *ret_y) of a w x h image.  Python rounding (half to even). */
void vl2_image_pad_geometry(int32_t w, int32_t h, int32_t W, int32_t H, int32_t *ret_rw,
                            int32_t *ret_rh, int32_t *ret_x, int32_t *ret_y);

/* Number of image tokens for a tiles_w x tiles_h grid (spec 6.2). */
int32_t vl2_image_n_tokens(int32_t tiles_w, int32_t tiles_h, int image_size, int patch,
                           int downsample);

#endif /* VL2_IMAGE_H */

/* decode.c - JPEG (TurboJPEG), PNG (libspng) and WebP (libwebp) into RGB8,
 * with the conversion rules of Pillow's convert("RGB") (see image.h), size
 * limits checked from the headers before any pixel is decoded, and the
 * optional EXIF orientation. */
#include "image.h"
#include "image-impl.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include <spng.h>
#include <turbojpeg.h>
#include <webp/decode.h>
#include <webp/demux.h>

/* No caller may raise the pixel limit past this (keeps every byte count
 * well inside size_t, 8 bytes a pixel at most). */
#define HARD_MAX_PIXELS ((uint64_t)1 << 36)

struct vl2_image_limits vl2_image_default_limits(void)
{
    return (struct vl2_image_limits){
        .max_pixels = 50000000,
        .max_bytes = (size_t)64 << 20,
        .apply_exif = 0,
    };
}

void vl2_image_done(struct vl2_image *img)
{
    if (!img)
        return;
    free(img->rgb);
    img->rgb = NULL;
    img->width = 0;
    img->height = 0;
}

/* ---- format detection -------------------------------------------------- */

static int starts(const uint8_t *p, size_t size, const char *sig, size_t n)
{
    return size >= n && !memcmp(p, sig, n);
}

int vl2_image_sniff(const void *data, size_t size, char *what, size_t what_size)
{
    static const struct {
        size_t off;
        const char *sig;
        size_t n;
        const char *name;
    } others[] = {
        { 0, "GIF87a", 6, "GIF" },
        { 0, "GIF89a", 6, "GIF" },
        { 0, "II*\0", 4, "TIFF" },
        { 0, "MM\0*", 4, "TIFF" },
        { 0, "\xff\x0a", 2, "JPEG XL" },
        { 0, "\0\0\0\x0cJXL \r\n\x87\n", 12, "JPEG XL" },
        { 0, "\0\0\0\x0cjP  \r\n\x87\n", 12, "JPEG 2000" },
        { 0, "\xff\x4f\xff\x51", 4, "JPEG 2000" },
        { 0, "%PDF", 4, "PDF" },
        { 0, "8BPS", 4, "PSD" },
        { 0, "qoif", 4, "QOI" },
        { 0, "\x76\x2f\x31\x01", 4, "OpenEXR" },
        { 0, "DDS ", 4, "DDS" },
        { 0, "#?RADIANCE", 10, "Radiance HDR" },
        { 0, "\0\0\1\0", 4, "ICO" },
        { 0, "<?xml", 5, "XML/SVG" },
        { 0, "<svg", 4, "SVG" },
        { 4, "ftypavif", 8, "AVIF" },
        { 4, "ftypavis", 8, "AVIF" },
        { 4, "ftypheic", 8, "HEIF" },
        { 4, "ftypheix", 8, "HEIF" },
        { 4, "ftypmif1", 8, "HEIF" },
        { 4, "ftypmsf1", 8, "HEIF" },
        { 4, "ftyp", 4, "ISO media (MP4/HEIF family)" },
        { 0, "BM", 2, "BMP" },
    };
    const uint8_t *p = data;
    const char *name = NULL;
    size_t i;

    if (what && what_size)
        what[0] = '\0';
    if (size >= 3 && p[0] == 0xff && p[1] == 0xd8 && p[2] == 0xff)
        return VL2_IMAGE_JPEG;
    if (starts(p, size, "\x89PNG\r\n\x1a\n", 8))
        return VL2_IMAGE_PNG;
    if (size >= 12 && starts(p, size, "RIFF", 4) && !memcmp(p + 8, "WEBP", 4))
        return VL2_IMAGE_WEBP;
    if (!what || !what_size)
        return VL2_IMAGE_UNKNOWN;
    for (i = 0; i < sizeof(others) / sizeof(others[0]) && !name; i++)
        if (size >= others[i].off + others[i].n &&
            !memcmp(p + others[i].off, others[i].sig, others[i].n))
            name = others[i].name;
    if (!name && size >= 3 && p[0] == 'P' && p[1] >= '1' && p[1] <= '7' && isspace(p[2]))
        name = "PNM";
    if (!name && size >= 12 && starts(p, size, "RIFF", 4))
        name = "RIFF (not WebP)";
    if (!name && size > 0 && size < 8 && !memcmp(p, "\x89PNG\r\n\x1a\n", size))
        name = "truncated PNG signature";
    if (!name && size > 0 && size < 3 && !memcmp(p, "\xff\xd8\xff", size))
        name = "truncated JPEG signature";
    if (name) {
        snprintf(what, what_size, "%s", name);
    } else if (size == 0) {
        snprintf(what, what_size, "empty input");
    } else {
        char hex[3 * 8 + 1] = "";
        size_t n = size < 8 ? size : 8, len = 0;

        for (i = 0; i < n; i++)
            len += (size_t)snprintf(hex + len, sizeof(hex) - len, "%s%02x", i ? " " : "", p[i]);
        snprintf(what, what_size, "unknown (first bytes %s)", hex);
    }
    return VL2_IMAGE_UNKNOWN;
}

/* ---- shared helpers ---------------------------------------------------- */

static int check_dims(int64_t w, int64_t h, const struct vl2_image_limits *lim,
                      const char *fmt, struct vl2_err *err)
{
    uint64_t max = lim->max_pixels < HARD_MAX_PIXELS ? lim->max_pixels : HARD_MAX_PIXELS;

    if (w <= 0 || h <= 0)
        return vl2_err_set(err, VL2_EFORMAT, "image: %s: zero-sized image (%lldx%lld)", fmt,
                           (long long)w, (long long)h);
    if (w > INT32_MAX || h > INT32_MAX || (uint64_t)w * (uint64_t)h > max)
        return vl2_err_set(err, VL2_ELIMIT,
                           "image: %s: %lldx%lld pixels is over the limit of %llu pixels", fmt,
                           (long long)w, (long long)h, (unsigned long long)max);
    return 0;
}

static uint16_t rd16(const uint8_t *p, int le)
{
    return le ? (uint16_t)(p[0] | p[1] << 8) : (uint16_t)(p[0] << 8 | p[1]);
}

static uint32_t rd32(const uint8_t *p, int le)
{
    return le ? (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                    (uint32_t)p[3] << 24
              : (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 |
                    (uint32_t)p[3];
}

/* ---- EXIF orientation -------------------------------------------------- */

int vl2__image_exif_orientation(const uint8_t *exif, size_t size)
{
    uint32_t ifd, n, i;
    int le;

    if (size >= 6 && !memcmp(exif, "Exif\0\0", 6)) {
        exif += 6;
        size -= 6;
    }
    if (size < 8)
        return 0;
    if (!memcmp(exif, "II", 2))
        le = 1;
    else if (!memcmp(exif, "MM", 2))
        le = 0;
    else
        return 0;
    if (rd16(exif + 2, le) != 42)
        return 0;
    ifd = rd32(exif + 4, le);
    if (ifd > size - 2 || ifd < 8)
        return 0;
    n = rd16(exif + ifd, le);
    for (i = 0; i < n; i++) {
        size_t e = (size_t)ifd + 2 + (size_t)i * 12;
        uint16_t type;
        uint32_t v;

        if (e + 12 > size)
            return 0;
        if (rd16(exif + e, le) != 0x0112)
            continue;
        type = rd16(exif + e + 2, le);
        if (rd32(exif + e + 4, le) < 1)
            return 0;
        if (type == 3)          /* SHORT */
            v = rd16(exif + e + 8, le);
        else if (type == 4)     /* LONG */
            v = rd32(exif + e + 8, le);
        else
            return 0;
        return v >= 1 && v <= 8 ? (int)v : 0;
    }
    return 0;
}

int vl2__image_jpeg_orientation(const uint8_t *data, size_t size)
{
    size_t pos = 2;

    while (pos < size) {
        uint8_t m;
        size_t len;

        if (data[pos] != 0xff) {   /* junk between segments: skipped, as Pillow does */
            pos++;
            continue;
        }
        while (pos < size && data[pos] == 0xff)
            pos++;
        if (pos >= size)
            return 0;
        m = data[pos++];
        if (m == 0x01 || (m >= 0xd0 && m <= 0xd8))
            continue;
        if (m == 0xda || m == 0xd9 || pos + 2 > size)
            return 0;
        len = rd16(data + pos, 0);
        if (len < 2 || pos + len > size)
            return 0;
        if (m == 0xe1 && len >= 2 + 6 && !memcmp(data + pos + 2, "Exif\0\0", 6))
            return vl2__image_exif_orientation(data + pos + 2, len - 2);
        pos += len;
    }
    return 0;
}

int vl2_image_orient(struct vl2_image *img, int orientation, struct vl2_err *err)
{
    const int32_t w = img->width, h = img->height;
    int32_t ow = w, oh = h;
    uint8_t *out;

    if (orientation < 2 || orientation > 8 || !img->rgb)
        return 0;
    if (orientation >= 5) {
        ow = h;
        oh = w;
    }
    out = malloc((size_t)w * h * 3);
    if (!out)
        return vl2_err_set(err, VL2_ENOMEM, "image: out of memory applying EXIF orientation");
    for (int32_t y = 0; y < oh; y++) {
        uint8_t *o = out + (size_t)y * ow * 3;

        for (int32_t x = 0; x < ow; x++, o += 3) {
            int32_t sx, sy;

            switch (orientation) {
            case 2: sx = w - 1 - x; sy = y; break;              /* mirror left-right */
            case 3: sx = w - 1 - x; sy = h - 1 - y; break;      /* rotate 180 */
            case 4: sx = x; sy = h - 1 - y; break;              /* mirror top-bottom */
            case 5: sx = y; sy = x; break;                      /* transpose */
            case 6: sx = y; sy = h - 1 - x; break;              /* rotate 90 clockwise */
            case 7: sx = w - 1 - y; sy = h - 1 - x; break;      /* transverse */
            default: sx = w - 1 - y; sy = x; break;             /* 8: rotate 90 counter-clockwise */
            }
            memcpy(o, img->rgb + ((size_t)sy * w + sx) * 3, 3);
        }
    }
    free(img->rgb);
    img->rgb = out;
    img->width = ow;
    img->height = oh;
    return 0;
}

/* ---- JPEG -------------------------------------------------------------- */

/* Width, height and components from the first SOF marker: checked before
 * TurboJPEG sees the data.  Returns 0, or VL2_EFORMAT. */
static int jpeg_sof(const uint8_t *data, size_t size, int64_t *w, int64_t *h, int *ncomp,
                    struct vl2_err *err)
{
    size_t pos = 2;

    for (;;) {
        uint8_t m;
        size_t len;

        if (pos >= size)
            break;
        if (data[pos] != 0xff) {   /* junk between segments: skipped, as Pillow does */
            pos++;
            continue;
        }
        while (pos < size && data[pos] == 0xff)
            pos++;
        if (pos >= size)
            break;
        m = data[pos++];
        if (m == 0x01 || (m >= 0xd0 && m <= 0xd8))
            continue;
        if (m == 0xda || m == 0xd9)
            return vl2_err_set(err, VL2_EFORMAT,
                               "image: jpeg: corrupt header (no frame header before the %s)",
                               m == 0xda ? "scan" : "end of image");
        if (pos + 2 > size)
            break;
        len = rd16(data + pos, 0);
        if (len < 2)
            return vl2_err_set(err, VL2_EFORMAT,
                               "image: jpeg: corrupt header (segment length %zu)", len);
        if (m >= 0xc0 && m <= 0xcf && m != 0xc4 && m != 0xc8 && m != 0xcc) {
            if (len < 8 || pos + 8 > size)
                break;
            *h = rd16(data + pos + 3, 0);
            *w = rd16(data + pos + 5, 0);
            *ncomp = data[pos + 7];
            return 0;
        }
        pos += len;
    }
    return vl2_err_set(err, VL2_EFORMAT, "image: jpeg: truncated before the frame header");
}

/* Pillow: CMYK JPEGs are read as Adobe-inverted ("CMYK;I"), then
 * convert("RGB") computes nk - nk*c/255 with its MULDIV255 rounding. */
static void cmyk_to_rgb(uint8_t *p, size_t n_pixels)
{
    for (size_t i = 0; i < n_pixels; i++) {
        const uint8_t *in = p + i * 4;
        int nk = in[3];   /* 255 - K, with K = 255 - raw */
        uint8_t rgb[3];

        for (int c = 0; c < 3; c++) {
            int cc = 255 - in[c];
            int tmp = cc * nk + 128;
            int v = nk - (((tmp >> 8) + tmp) >> 8);

            rgb[c] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
        }
        memcpy(p + i * 3, rgb, 3);
    }
}

/* TurboJPEG fails a decode after any libjpeg warning, and its error code
 * says "warning" even when a fatal error followed one; the message is that
 * of the last event.  Warnings that leave the image complete (as Pillow
 * accepts them) are let through; truncation and corrupt entropy data, whose
 * missing pixels libjpeg would invent, are errors. */
static int jpeg_benign_warning(const char *msg)
{
    static const char *const benign[] = {
        "extraneous bytes before marker",              /* JWRN_EXTRANEOUS_DATA */
        "Unknown Adobe color transform",               /* JWRN_ADOBE_XFORM */
        "unknown JFIF revision",                       /* JWRN_JFIF_MAJOR */
        "Invalid SOS parameters for sequential JPEG",  /* JWRN_NOT_SEQUENTIAL */
        "Inconsistent progression sequence",           /* JWRN_BOGUS_PROGRESSION */
        "bad ICC marker",                              /* JWRN_BOGUS_ICC */
    };

    for (size_t i = 0; i < sizeof(benign) / sizeof(benign[0]); i++)
        if (strstr(msg, benign[i]))
            return 1;
    return 0;
}

int vl2__image_decode_jpeg(struct vl2_image *img, const uint8_t *data, size_t size,
                           const struct vl2_image_limits *lim, struct vl2_err *err)
{
    int64_t w = 0, h = 0;
    int ncomp = 0, tw, th, subsamp, cs, pf, flags = 0, r;
    tjhandle tj;
    uint8_t *buf;

    r = jpeg_sof(data, size, &w, &h, &ncomp, err);
    if (r < 0)
        return r;
    r = check_dims(w, h, lim, "jpeg", err);
    if (r < 0)
        return r;
    if (ncomp != 1 && ncomp != 3 && ncomp != 4)
        return vl2_err_set(err, VL2_EUNSUPPORTED, "image: jpeg: %d colour components",
                           ncomp);
    tj = tjInitDecompress();
    if (!tj)
        return vl2_err_set(err, VL2_ENOMEM, "image: jpeg: cannot create a decoder");
    if (tjDecompressHeader3(tj, data, (unsigned long)size, &tw, &th, &subsamp, &cs) < 0) {
        /* TurboJPEG 2.x refuses sampling factors it has no name for in the
         * header call only; the decoder itself handles them. */
        if (!strstr(tjGetErrorStr2(tj), "subsampling")) {
            r = vl2_err_set(err, VL2_EFORMAT, "image: jpeg: %s", tjGetErrorStr2(tj));
            goto out_tj;
        }
        tw = (int)w;
        th = (int)h;
        cs = ncomp == 4 ? TJCS_CMYK : TJCS_YCbCr;
    }
    if (tw != w || th != h) {
        r = vl2_err_set(err, VL2_EFORMAT, "image: jpeg: inconsistent frame header");
        goto out_tj;
    }
    pf = (cs == TJCS_CMYK || cs == TJCS_YCCK) ? TJPF_CMYK : TJPF_RGB;
    buf = malloc((size_t)w * (size_t)h * (pf == TJPF_CMYK ? 4 : 3));
    if (!buf) {
        r = vl2_err_set(err, VL2_ENOMEM, "image: jpeg: out of memory for %lldx%lld pixels",
                        (long long)w, (long long)h);
        goto out_tj;
    }
#ifdef TJFLAG_LIMITSCANS
    flags |= TJFLAG_LIMITSCANS;   /* no effect on pixels; stops scan-count bombs */
#endif
    if (tjDecompress2(tj, data, (unsigned long)size, buf, (int)w, 0, (int)h, pf, flags) < 0) {
        const char *msg = tjGetErrorStr2(tj);

        if (!jpeg_benign_warning(msg)) {
            r = vl2_err_set(err, VL2_EFORMAT, "image: jpeg: %s", msg);
            free(buf);
            goto out_tj;
        }
    }
    if (pf == TJPF_CMYK) {
        uint8_t *p;

        cmyk_to_rgb(buf, (size_t)w * h);
        p = realloc(buf, (size_t)w * h * 3);
        if (p)
            buf = p;
    }
    tjDestroy(tj);
    img->width = (int32_t)w;
    img->height = (int32_t)h;
    img->rgb = buf;
    if (lim->apply_exif) {
        r = vl2_image_orient(img, vl2__image_jpeg_orientation(data, size), err);
        if (r < 0) {
            vl2_image_done(img);
            return r;
        }
    }
    return 0;

out_tj:
    tjDestroy(tj);
    return r;
}

/* ---- PNG --------------------------------------------------------------- */

static int png_fail(int code, int spng_code, const char *what, struct vl2_err *err)
{
    return vl2_err_set(err, code, "image: png: %s: %s", what, spng_strerror(spng_code));
}

int vl2__image_decode_png(struct vl2_image *img, const uint8_t *data, size_t size,
                          const struct vl2_image_limits *lim, struct vl2_err *err)
{
    struct spng_ihdr ihdr;
    spng_ctx *ctx;
    uint8_t *buf = NULL, *wide = NULL;
    size_t w, h, n;
    int r, e, gray16;

    ctx = spng_ctx_new(0);
    if (!ctx)
        return vl2_err_set(err, VL2_ENOMEM, "image: png: cannot create a decoder");
    /* ancillary chunks (text, ICC) may not blow up memory */
    spng_set_chunk_limits(ctx, size, (size_t)16 << 20);
    e = spng_set_png_buffer(ctx, data, size);
    if (!e)
        e = spng_get_ihdr(ctx, &ihdr);
    if (e) {
        r = png_fail(VL2_EFORMAT, e, "bad header", err);
        goto out_ctx;
    }
    r = check_dims(ihdr.width, ihdr.height, lim, "png", err);
    if (r < 0)
        goto out_ctx;
    w = ihdr.width;
    h = ihdr.height;
    buf = malloc(w * h * 3);
    if (!buf) {
        r = vl2_err_set(err, VL2_ENOMEM, "image: png: out of memory for %zux%zu pixels", w, h);
        goto out_ctx;
    }
    if (ihdr.bit_depth <= 8) {
        e = spng_decode_image(ctx, buf, w * h * 3, SPNG_FMT_RGB8, 0);
        if (e) {
            r = png_fail(VL2_EFORMAT, e, "cannot decode", err);
            goto out_buf;
        }
    } else {
        /* Pillow keeps the high byte (";16B" unpackers), except for plain
         * 16-bit grey: mode "I", which convert("RGB") clamps to 0..255. */
        gray16 = ihdr.color_type == SPNG_COLOR_TYPE_GRAYSCALE;
        n = ihdr.interlace_method ? h : 1;
        wide = malloc(w * n * 8);
        if (!wide) {
            r = vl2_err_set(err, VL2_ENOMEM, "image: png: out of memory for %zux%zu pixels",
                            w, h);
            goto out_buf;
        }
        if (ihdr.interlace_method) {
            e = spng_decode_image(ctx, wide, w * h * 8, SPNG_FMT_RGBA16, 0);
        } else {
            e = spng_decode_image(ctx, NULL, 0, SPNG_FMT_RGBA16, SPNG_DECODE_PROGRESSIVE);
        }
        for (size_t y = 0; !e && y < h; y++) {
            const uint16_t *row;
            uint8_t *o = buf + y * w * 3;

            if (ihdr.interlace_method) {
                row = (const uint16_t *)(wide + y * w * 8);
            } else {
                e = spng_decode_row(ctx, wide, w * 8);
                if (e == SPNG_EOI && y == h - 1)
                    e = 0;
                if (e)
                    break;
                row = (const uint16_t *)wide;
            }
            for (size_t x = 0; x < w; x++)
                for (int c = 0; c < 3; c++) {
                    uint16_t v = row[x * 4 + c];

                    o[x * 3 + c] = gray16 ? (uint8_t)(v > 255 ? 255 : v) : (uint8_t)(v >> 8);
                }
        }
        free(wide);
        if (e) {
            r = png_fail(VL2_EFORMAT, e, "cannot decode", err);
            goto out_buf;
        }
    }
    img->width = (int32_t)w;
    img->height = (int32_t)h;
    img->rgb = buf;
    if (lim->apply_exif) {
        struct spng_exif ex;
        int orientation = 0;

        if (!spng_get_exif(ctx, &ex))
            orientation = vl2__image_exif_orientation((const uint8_t *)ex.data, ex.length);
        r = vl2_image_orient(img, orientation, err);
        if (r < 0) {
            vl2_image_done(img);
            goto out_ctx;
        }
    }
    spng_ctx_free(ctx);
    return 0;

out_buf:
    free(buf);
out_ctx:
    spng_ctx_free(ctx);
    return r;
}

/* ---- WebP -------------------------------------------------------------- */

static const char *webp_status(VP8StatusCode st)
{
    switch (st) {
    case VP8_STATUS_OK:                  return "ok";
    case VP8_STATUS_OUT_OF_MEMORY:       return "out of memory";
    case VP8_STATUS_INVALID_PARAM:       return "invalid parameter";
    case VP8_STATUS_BITSTREAM_ERROR:     return "corrupt bitstream";
    case VP8_STATUS_UNSUPPORTED_FEATURE: return "unsupported feature";
    case VP8_STATUS_SUSPENDED:           return "suspended";
    case VP8_STATUS_USER_ABORT:          return "aborted";
    case VP8_STATUS_NOT_ENOUGH_DATA:     return "truncated";
    }
    return "unknown error";
}

static int webp_exif_orientation(const uint8_t *data, size_t size)
{
    WebPData wd = { data, size };
    WebPChunkIterator it;
    WebPDemuxer *dmx;
    int o = 0;

    dmx = WebPDemux(&wd);
    if (!dmx)
        return 0;
    if (WebPDemuxGetChunk(dmx, "EXIF", 1, &it)) {
        o = vl2__image_exif_orientation(it.chunk.bytes, it.chunk.size);
        WebPDemuxReleaseChunkIterator(&it);
    }
    WebPDemuxDelete(dmx);
    return o;
}

/* First frame of an animation, composed as WebPAnimDecoder (and so Pillow)
 * does: on a transparent black canvas, alpha then dropped. */
static int webp_first_frame(uint8_t *buf, const uint8_t *data, size_t size, int w, int h,
                            struct vl2_err *err)
{
    WebPData wd = { data, size };
    WebPAnimDecoderOptions opt;
    WebPAnimDecoder *dec;
    WebPAnimInfo info;
    uint8_t *frame;
    int ts, r = 0;

    if (!WebPAnimDecoderOptionsInit(&opt))
        return vl2_err_set(err, VL2_EINTERNAL, "image: webp: libwebp version mismatch");
    opt.color_mode = MODE_RGBA;
    opt.use_threads = 0;
    dec = WebPAnimDecoderNew(&wd, &opt);
    if (!dec)
        return vl2_err_set(err, VL2_EFORMAT, "image: webp: corrupt animation");
    if (!WebPAnimDecoderGetInfo(dec, &info) || (int)info.canvas_width != w ||
        (int)info.canvas_height != h) {
        r = vl2_err_set(err, VL2_EFORMAT, "image: webp: inconsistent canvas size");
        goto out_dec;
    }
    if (!WebPAnimDecoderGetNext(dec, &frame, &ts)) {
        r = vl2_err_set(err, VL2_EFORMAT, "image: webp: cannot decode the first frame");
        goto out_dec;
    }
    for (size_t i = 0; i < (size_t)w * h; i++)
        memcpy(buf + i * 3, frame + i * 4, 3);
out_dec:
    WebPAnimDecoderDelete(dec);
    return r;
}

int vl2__image_decode_webp(struct vl2_image *img, const uint8_t *data, size_t size,
                           const struct vl2_image_limits *lim, struct vl2_err *err)
{
    WebPBitstreamFeatures f;
    VP8StatusCode st;
    uint8_t *buf;
    size_t n;
    int r;

    st = WebPGetFeatures(data, size, &f);
    if (st != VP8_STATUS_OK)
        return vl2_err_set(err, st == VP8_STATUS_UNSUPPORTED_FEATURE ? VL2_EUNSUPPORTED
                                                                      : VL2_EFORMAT,
                           "image: webp: bad header: %s", webp_status(st));
    r = check_dims(f.width, f.height, lim, "webp", err);
    if (r < 0)
        return r;
    n = (size_t)f.width * (size_t)f.height * 3;
    buf = malloc(n);
    if (!buf)
        return vl2_err_set(err, VL2_ENOMEM, "image: webp: out of memory for %dx%d pixels",
                           f.width, f.height);
    if (f.has_animation) {
        r = webp_first_frame(buf, data, size, f.width, f.height, err);
        if (r < 0) {
            free(buf);
            return r;
        }
    } else if (!WebPDecodeRGBInto(data, size, buf, n, f.width * 3)) {
        free(buf);
        return vl2_err_set(err, VL2_EFORMAT, "image: webp: corrupt or truncated image data");
    }
    img->width = f.width;
    img->height = f.height;
    img->rgb = buf;
    if (lim->apply_exif) {
        r = vl2_image_orient(img, webp_exif_orientation(data, size), err);
        if (r < 0) {
            vl2_image_done(img);
            return r;
        }
    }
    return 0;
}

/* ---- entry points ------------------------------------------------------ */

int vl2_image_decode(struct vl2_image *img, const void *data, size_t size,
                     const struct vl2_image_limits *lim, struct vl2_err *err)
{
    struct vl2_image_limits def = vl2_image_default_limits();
    struct vl2_image out = { 0, 0, NULL };
    char what[96];
    int r;

    memset(img, 0, sizeof(*img));
    if (!lim)
        lim = &def;
    if (!data || size == 0)
        return vl2_err_set(err, VL2_EFORMAT, "image: empty input (0 bytes)");
    if (size > lim->max_bytes)
        return vl2_err_set(err, VL2_ELIMIT,
                           "image: %zu bytes of compressed input is over the limit of %zu",
                           size, lim->max_bytes);
    switch (vl2_image_sniff(data, size, what, sizeof(what))) {
    case VL2_IMAGE_JPEG:
        r = vl2__image_decode_jpeg(&out, data, size, lim, err);
        break;
    case VL2_IMAGE_PNG:
        r = vl2__image_decode_png(&out, data, size, lim, err);
        break;
    case VL2_IMAGE_WEBP:
        r = vl2__image_decode_webp(&out, data, size, lim, err);
        break;
    default:
        return vl2_err_set(err, VL2_EUNSUPPORTED,
                           "image: unsupported format '%s' (JPEG, PNG and WebP are supported)",
                           what);
    }
    if (r < 0)
        return r;
    *img = out;
    return 0;
}

int vl2_image_probe(const void *data, size_t size, int32_t *ret_width, int32_t *ret_height,
                    struct vl2_err *err)
{
    struct vl2_image_limits lim = vl2_image_default_limits();
    int64_t w = 0, h = 0;
    char what[96];
    int r, ncomp;

    lim.max_pixels = HARD_MAX_PIXELS;
    if (!data || size == 0)
        return vl2_err_set(err, VL2_EFORMAT, "image: empty input (0 bytes)");
    switch (vl2_image_sniff(data, size, what, sizeof(what))) {
    case VL2_IMAGE_JPEG:
        r = jpeg_sof(data, size, &w, &h, &ncomp, err);
        if (r < 0)
            return r;
        break;
    case VL2_IMAGE_PNG: {
        struct spng_ihdr ihdr;
        spng_ctx *ctx = spng_ctx_new(0);
        int e;

        if (!ctx)
            return vl2_err_set(err, VL2_ENOMEM, "image: png: cannot create a decoder");
        e = spng_set_png_buffer(ctx, data, size);
        if (!e)
            e = spng_get_ihdr(ctx, &ihdr);
        spng_ctx_free(ctx);
        if (e)
            return png_fail(VL2_EFORMAT, e, "bad header", err);
        w = ihdr.width;
        h = ihdr.height;
        break;
    }
    case VL2_IMAGE_WEBP: {
        WebPBitstreamFeatures f;
        VP8StatusCode st = WebPGetFeatures(data, size, &f);

        if (st != VP8_STATUS_OK)
            return vl2_err_set(err, VL2_EFORMAT, "image: webp: bad header: %s",
                               webp_status(st));
        w = f.width;
        h = f.height;
        break;
    }
    default:
        return vl2_err_set(err, VL2_EUNSUPPORTED,
                           "image: unsupported format '%s' (JPEG, PNG and WebP are supported)",
                           what);
    }
    r = check_dims(w, h, &lim, "image", err);
    if (r < 0)
        return r;
    *ret_width = (int32_t)w;
    *ret_height = (int32_t)h;
    return 0;
}

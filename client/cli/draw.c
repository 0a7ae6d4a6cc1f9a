/* draw.c - boxes and labels on an RGB8 raster, and PNG output (libspng),
 * for `vl2 ground -o`. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <spng.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "grounding.h"

/* Thirteen colours that stay distinct from each other and from most photos. */
const uint8_t vl2_cli_palette[VL2_CLI_PALETTE_SIZE][3] = {
    { 230,  25,  75 },   /* red */
    {  60, 180,  75 },   /* green */
    { 255, 225,  25 },   /* yellow */
    {   0, 130, 200 },   /* blue */
    { 245, 130,  48 },   /* orange */
    { 145,  30, 180 },   /* purple */
    {  70, 240, 240 },   /* cyan */
    { 240,  50, 230 },   /* magenta */
    { 210, 245,  60 },   /* lime */
    {   0, 128, 128 },   /* teal */
    { 170, 110,  40 },   /* brown */
    { 128,   0,   0 },   /* maroon */
    {   0,   0, 128 },   /* navy */
};

#define OUTLINE   3    /* box outline width, px (as the official visualiser) */
#define GLYPH_W   5
#define GLYPH_H   7
#define SCALE     2    /* font pixels per glyph dot */
#define ADVANCE   ((GLYPH_W + 1) * SCALE)
#define PAD       2    /* label band padding, px */
#define BAND_H    (GLYPH_H * SCALE + 2 * PAD)
#define MAX_CHARS 80   /* characters of a label drawn */

/* A 5x7 font for printable ASCII (0x20..0x7e), drawn for vl2: seven rows of
 * five dots separated by '|', '#' is ink. */
static const char font[95][42] = {
    ".....|.....|.....|.....|.....|.....|.....",  /* ' ' */
    "..#..|..#..|..#..|..#..|..#..|.....|..#..",  /* '!' */
    ".#.#.|.#.#.|.....|.....|.....|.....|.....",  /* '"' */
    ".#.#.|.#.#.|#####|.#.#.|#####|.#.#.|.#.#.",  /* '#' */
    "..#..|.####|#.#..|.###.|..#.#|####.|..#..",  /* '$' */
    "##...|##..#|...#.|..#..|.#...|#..##|...##",  /* '%' */
    ".##..|#..#.|#.#..|.#...|#.#.#|#..#.|.##.#",  /* '&' */
    "..#..|..#..|.....|.....|.....|.....|.....",  /* ''' */
    "...#.|..#..|.#...|.#...|.#...|..#..|...#.",  /* '(' */
    ".#...|..#..|...#.|...#.|...#.|..#..|.#...",  /* ')' */
    ".....|..#..|#.#.#|.###.|#.#.#|..#..|.....",  /* 'asterisk' */
    ".....|..#..|..#..|#####|..#..|..#..|.....",  /* '+' */
    ".....|.....|.....|.....|.##..|..#..|.#...",  /* ',' */
    ".....|.....|.....|#####|.....|.....|.....",  /* '-' */
    ".....|.....|.....|.....|.....|.##..|.##..",  /* '.' */
    ".....|....#|...#.|..#..|.#...|#....|.....",  /* 'slash' */
    ".###.|#...#|#..##|#.#.#|##..#|#...#|.###.",  /* '0' */
    "..#..|.##..|..#..|..#..|..#..|..#..|.###.",  /* '1' */
    ".###.|#...#|....#|...#.|..#..|.#...|#####",  /* '2' */
    "#####|...#.|..#..|...#.|....#|#...#|.###.",  /* '3' */
    "...#.|..##.|.#.#.|#..#.|#####|...#.|...#.",  /* '4' */
    "#####|#....|####.|....#|....#|#...#|.###.",  /* '5' */
    "..##.|.#...|#....|####.|#...#|#...#|.###.",  /* '6' */
    "#####|....#|...#.|..#..|.#...|.#...|.#...",  /* '7' */
    ".###.|#...#|#...#|.###.|#...#|#...#|.###.",  /* '8' */
    ".###.|#...#|#...#|.####|....#|...#.|.##..",  /* '9' */
    ".....|.##..|.##..|.....|.##..|.##..|.....",  /* ':' */
    ".....|.##..|.##..|.....|.##..|..#..|.#...",  /* ';' */
    "...#.|..#..|.#...|#....|.#...|..#..|...#.",  /* '<' */
    ".....|.....|#####|.....|#####|.....|.....",  /* '=' */
    ".#...|..#..|...#.|....#|...#.|..#..|.#...",  /* '>' */
    ".###.|#...#|....#|...#.|..#..|.....|..#..",  /* '?' */
    ".###.|#...#|....#|.##.#|#.#.#|#.#.#|.###.",  /* '@' */
    ".###.|#...#|#...#|#####|#...#|#...#|#...#",  /* 'A' */
    "####.|#...#|#...#|####.|#...#|#...#|####.",  /* 'B' */
    ".###.|#...#|#....|#....|#....|#...#|.###.",  /* 'C' */
    "###..|#..#.|#...#|#...#|#...#|#..#.|###..",  /* 'D' */
    "#####|#....|#....|####.|#....|#....|#####",  /* 'E' */
    "#####|#....|#....|####.|#....|#....|#....",  /* 'F' */
    ".###.|#...#|#....|#.###|#...#|#...#|.####",  /* 'G' */
    "#...#|#...#|#...#|#####|#...#|#...#|#...#",  /* 'H' */
    ".###.|..#..|..#..|..#..|..#..|..#..|.###.",  /* 'I' */
    "..###|...#.|...#.|...#.|...#.|#..#.|.##..",  /* 'J' */
    "#...#|#..#.|#.#..|##...|#.#..|#..#.|#...#",  /* 'K' */
    "#....|#....|#....|#....|#....|#....|#####",  /* 'L' */
    "#...#|##.##|#.#.#|#.#.#|#...#|#...#|#...#",  /* 'M' */
    "#...#|#...#|##..#|#.#.#|#..##|#...#|#...#",  /* 'N' */
    ".###.|#...#|#...#|#...#|#...#|#...#|.###.",  /* 'O' */
    "####.|#...#|#...#|####.|#....|#....|#....",  /* 'P' */
    ".###.|#...#|#...#|#...#|#.#.#|#..#.|.##.#",  /* 'Q' */
    "####.|#...#|#...#|####.|#.#..|#..#.|#...#",  /* 'R' */
    ".####|#....|#....|.###.|....#|....#|####.",  /* 'S' */
    "#####|..#..|..#..|..#..|..#..|..#..|..#..",  /* 'T' */
    "#...#|#...#|#...#|#...#|#...#|#...#|.###.",  /* 'U' */
    "#...#|#...#|#...#|#...#|#...#|.#.#.|..#..",  /* 'V' */
    "#...#|#...#|#...#|#.#.#|#.#.#|#.#.#|.#.#.",  /* 'W' */
    "#...#|#...#|.#.#.|..#..|.#.#.|#...#|#...#",  /* 'X' */
    "#...#|#...#|#...#|.#.#.|..#..|..#..|..#..",  /* 'Y' */
    "#####|....#|...#.|..#..|.#...|#....|#####",  /* 'Z' */
    ".###.|.#...|.#...|.#...|.#...|.#...|.###.",  /* '[' */
    ".....|#....|.#...|..#..|...#.|....#|.....",  /* 'backslash' */
    ".###.|...#.|...#.|...#.|...#.|...#.|.###.",  /* ']' */
    "..#..|.#.#.|#...#|.....|.....|.....|.....",  /* '^' */
    ".....|.....|.....|.....|.....|.....|#####",  /* '_' */
    ".#...|..#..|.....|.....|.....|.....|.....",  /* '`' */
    ".....|.....|.###.|....#|.####|#...#|.####",  /* 'a' */
    "#....|#....|#.##.|##..#|#...#|#...#|####.",  /* 'b' */
    ".....|.....|.###.|#....|#....|#...#|.###.",  /* 'c' */
    "....#|....#|.##.#|#..##|#...#|#...#|.####",  /* 'd' */
    ".....|.....|.###.|#...#|#####|#....|.###.",  /* 'e' */
    "..##.|.#..#|.#...|###..|.#...|.#...|.#...",  /* 'f' */
    ".....|.####|#...#|#...#|.####|....#|.###.",  /* 'g' */
    "#....|#....|#.##.|##..#|#...#|#...#|#...#",  /* 'h' */
    "..#..|.....|.##..|..#..|..#..|..#..|.###.",  /* 'i' */
    "...#.|.....|..##.|...#.|...#.|#..#.|.##..",  /* 'j' */
    "#....|#....|#..#.|#.#..|##...|#.#..|#..#.",  /* 'k' */
    ".##..|..#..|..#..|..#..|..#..|..#..|.###.",  /* 'l' */
    ".....|.....|##.#.|#.#.#|#.#.#|#...#|#...#",  /* 'm' */
    ".....|.....|#.##.|##..#|#...#|#...#|#...#",  /* 'n' */
    ".....|.....|.###.|#...#|#...#|#...#|.###.",  /* 'o' */
    ".....|.....|####.|#...#|####.|#....|#....",  /* 'p' */
    ".....|.....|.##.#|#..##|.####|....#|....#",  /* 'q' */
    ".....|.....|#.##.|##..#|#....|#....|#....",  /* 'r' */
    ".....|.....|.###.|#....|.###.|....#|####.",  /* 's' */
    ".#...|.#...|###..|.#...|.#...|.#..#|..##.",  /* 't' */
    ".....|.....|#...#|#...#|#...#|#..##|.##.#",  /* 'u' */
    ".....|.....|#...#|#...#|#...#|.#.#.|..#..",  /* 'v' */
    ".....|.....|#...#|#...#|#.#.#|#.#.#|.#.#.",  /* 'w' */
    ".....|.....|#...#|.#.#.|..#..|.#.#.|#...#",  /* 'x' */
    ".....|.....|#...#|#...#|.####|....#|.###.",  /* 'y' */
    ".....|.....|#####|...#.|..#..|.#...|#####",  /* 'z' */
    "...#.|..#..|..#..|.#...|..#..|..#..|...#.",  /* '{' */
    "..#..|..#..|..#..|..#..|..#..|..#..|..#..",  /* '|' */
    ".#...|..#..|..#..|...#.|..#..|..#..|.#...",  /* '}' */
    ".....|.....|.#...|#.#.#|...#.|.....|.....",  /* '~' */
};

static void put(uint8_t *rgb, int32_t w, int32_t h, int64_t x, int64_t y, const uint8_t c[3])
{
    if (x < 0 || y < 0 || x >= w || y >= h)
        return;
    memcpy(rgb + ((size_t) y * (size_t) w + (size_t) x) * 3, c, 3);
}

/* Fill [x0, x1] x [y0, y1] (inclusive), clipped to the raster. */
static void fill(uint8_t *rgb, int32_t w, int32_t h, int64_t x0, int64_t y0, int64_t x1,
                 int64_t y1, const uint8_t c[3])
{
    if (x0 < 0)
        x0 = 0;
    if (y0 < 0)
        y0 = 0;
    if (x1 >= w)
        x1 = (int64_t) w - 1;
    if (y1 >= h)
        y1 = (int64_t) h - 1;
    for (int64_t y = y0; y <= y1; y++)
        for (int64_t x = x0; x <= x1; x++)
            put(rgb, w, h, x, y, c);
}

/* A float box coordinate as a pixel index, bounded so arithmetic on it
 * cannot overflow (daemons may send anything). */
static int64_t coord(float v)
{
    if (!(v > -1e9f))
        return -1000000000;
    if (v > 1e9f)
        return 1000000000;
    return (int64_t) floorf(v);
}

static void draw_glyph(uint8_t *rgb, int32_t w, int32_t h, int64_t x0, int64_t y0,
                       unsigned char ch, const uint8_t c[3])
{
    const char *g = font[(ch >= 0x20 && ch <= 0x7e ? ch : '?') - 0x20];

    for (int row = 0; row < GLYPH_H; row++)
        for (int col = 0; col < GLYPH_W; col++)
            if (g[row * (GLYPH_W + 1) + col] == '#')
                fill(rgb, w, h, x0 + col * SCALE, y0 + row * SCALE, x0 + col * SCALE + SCALE - 1,
                     y0 + row * SCALE + SCALE - 1, c);
}

/* The label as ASCII: each non-ASCII character (a UTF-8 sequence) and each
 * control character becomes one '?'. */
static size_t label_ascii(const char *label, char *out, size_t cap)
{
    size_t n = 0;

    for (const unsigned char *p = (const unsigned char *) label; *p && n < cap; p++) {
        if (*p >= 0x80 && (*p & 0xc0) == 0x80)
            continue;   /* continuation byte: counted with its lead */
        out[n++] = (*p >= 0x20 && *p < 0x7f) ? (char) *p : '?';
    }
    return n;
}

void vl2_cli_draw_boxes(uint8_t *rgb, int32_t w, int32_t h, const struct vl2_box *boxes,
                        size_t n_boxes)
{
    static const uint8_t white[3] = { 255, 255, 255 }, black[3] = { 0, 0, 0 };

    for (size_t i = 0; i < n_boxes; i++) {
        const uint8_t *c = vl2_cli_palette[i % VL2_CLI_PALETTE_SIZE];
        int64_t x1 = coord(boxes[i].x1), y1 = coord(boxes[i].y1);
        int64_t x2 = coord(boxes[i].x2), y2 = coord(boxes[i].y2);
        char text[MAX_CHARS];
        size_t n;
        int64_t by, bw;
        const uint8_t *ink;

        if (x2 < x1 || y2 < y1)
            continue;
        /* outline: OUTLINE px inward from each edge, edges included */
        fill(rgb, w, h, x1, y1, x2, y1 + OUTLINE - 1, c);
        fill(rgb, w, h, x1, y2 - OUTLINE + 1, x2, y2, c);
        fill(rgb, w, h, x1, y1, x1 + OUTLINE - 1, y2, c);
        fill(rgb, w, h, x2 - OUTLINE + 1, y1, x2, y2, c);

        n = label_ascii(boxes[i].label ? boxes[i].label : "", text, sizeof(text));
        if (n == 0)
            continue;
        /* a band of the box colour above the box, or just inside its top */
        by = y1 >= BAND_H ? y1 - BAND_H : y1 + OUTLINE;
        bw = (int64_t) n * ADVANCE - SCALE + 2 * PAD;
        fill(rgb, w, h, x1, by, x1 + bw - 1, by + BAND_H - 1, c);
        /* Rec. 601 luma: dark text on light colours */
        ink = (299 * c[0] + 587 * c[1] + 114 * c[2]) / 1000 > 140 ? black : white;
        for (size_t k = 0; k < n; k++)
            draw_glyph(rgb, w, h, x1 + PAD + (int64_t) k * ADVANCE, by + PAD,
                       (unsigned char) text[k], ink);
    }
}

int vl2_cli_write_png(const char *path, const uint8_t *rgb, int32_t w, int32_t h,
                      struct vl2_err *err)
{
    struct spng_ihdr ihdr = {
        .width = (uint32_t) w, .height = (uint32_t) h, .bit_depth = 8,
        .color_type = SPNG_COLOR_TYPE_TRUECOLOR,
    };
    size_t plen = strlen(path);
    char *tmp = malloc(plen + 8);
    spng_ctx *ctx = NULL;
    FILE *f = NULL;
    mode_t mask;
    int fd, r, e;

    if (!tmp)
        return vl2_err_set(err, VL2_ENOMEM, "vl2: out of memory");
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".XXXXXX", 8);
    fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0) {
        r = vl2_err_set(err, VL2_EIO, "vl2: cannot write '%s': %s", path, strerror(errno));
        goto out_free;
    }
    mask = umask(0);
    umask(mask);
    (void) fchmod(fd, 0666 & ~mask);
    f = fdopen(fd, "wb");
    if (!f) {
        r = vl2_err_set(err, VL2_EIO, "vl2: cannot write '%s': %s", path, strerror(errno));
        (void) close(fd);
        goto out_unlink;
    }
    ctx = spng_ctx_new(SPNG_CTX_ENCODER);
    if (!ctx) {
        r = vl2_err_set(err, VL2_ENOMEM, "vl2: out of memory");
        goto out_fclose;
    }
    e = spng_set_png_file(ctx, f);
    if (!e)
        e = spng_set_ihdr(ctx, &ihdr);
    if (!e)
        e = spng_encode_image(ctx, rgb, (size_t) w * (size_t) h * 3, SPNG_FMT_PNG,
                              SPNG_ENCODE_FINALIZE);
    spng_ctx_free(ctx);
    if (e) {
        r = vl2_err_set(err, VL2_EIO, "vl2: cannot write '%s': PNG encoder: %s", path,
                        spng_strerror(e));
        goto out_fclose;
    }
    if (fflush(f) != 0 || ferror(f)) {
        r = vl2_err_set(err, VL2_EIO, "vl2: cannot write '%s': %s", path, strerror(errno));
        goto out_fclose;
    }
    if (fclose(f) != 0) {
        f = NULL;
        r = vl2_err_set(err, VL2_EIO, "vl2: cannot write '%s': %s", path, strerror(errno));
        goto out_unlink;
    }
    f = NULL;
    if (rename(tmp, path) < 0) {
        r = vl2_err_set(err, VL2_EIO, "vl2: cannot write '%s': %s", path, strerror(errno));
        goto out_unlink;
    }
    free(tmp);
    return 0;

out_fclose:
    if (f)
        (void) fclose(f);
out_unlink:
    (void) unlink(tmp);
out_free:
    free(tmp);
    return r;
}

/* png2webp.c - test helper: re-encode a PNG as lossless WebP (libspng,
 * libwebp), so a WebP request carries exactly the pixels of a golden PNG.
 *
 * usage: png2webp IN.png OUT.webp */
#include <spng.h>
#include <stdio.h>
#include <stdlib.h>
#include <webp/encode.h>

int main(int argc, char **argv)
{
    spng_ctx *ctx;
    struct spng_ihdr ihdr;
    FILE *in, *out;
    uint8_t *rgb = NULL, *webp = NULL;
    size_t size = 0, n;
    int rc = 1;

    if (argc != 3) {
        fprintf(stderr, "usage: png2webp IN.png OUT.webp\n");
        return 2;
    }
    in = fopen(argv[1], "rb");
    ctx = spng_ctx_new(0);
    if (!in || !ctx || spng_set_png_file(ctx, in) || spng_get_ihdr(ctx, &ihdr) ||
        spng_decoded_image_size(ctx, SPNG_FMT_RGB8, &size)) {
        fprintf(stderr, "png2webp: '%s': cannot read\n", argv[1]);
        goto out_free;
    }
    rgb = malloc(size);
    if (!rgb || spng_decode_image(ctx, rgb, size, SPNG_FMT_RGB8, 0)) {
        fprintf(stderr, "png2webp: '%s': cannot decode\n", argv[1]);
        goto out_free;
    }
    n = WebPEncodeLosslessRGB(rgb, (int) ihdr.width, (int) ihdr.height, (int) ihdr.width * 3,
                              &webp);
    out = n ? fopen(argv[2], "wb") : NULL;
    if (!out || fwrite(webp, 1, n, out) != n || fclose(out)) {
        fprintf(stderr, "png2webp: '%s': cannot write\n", argv[2]);
        goto out_free;
    }
    rc = 0;
out_free:
    WebPFree(webp);
    free(rgb);
    spng_ctx_free(ctx);
    if (in)
        fclose(in);
    return rc;
}

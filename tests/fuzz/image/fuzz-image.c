/* fuzz-image.c - libFuzzer target for one decoder wrapper, chosen at build
 * time by FUZZ_FORMAT (1 JPEG, 2 PNG, 3 WebP); the EXIF orientation path is
 * on.  Small decoded images are also planned and tiled, which fuzzes the
 * resize with odd sizes.  Any crash, leak or sanitizer report is a bug;
 * errors are expected. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "image-impl.h"
#include "image.h"

static const int cands[][2] = {
    { 384, 384 }, { 384, 768 }, { 768, 384 }, { 384, 1152 }, { 1152, 384 }, { 768, 768 },
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct vl2_image_limits lim = vl2_image_default_limits();
    struct vl2_image img = { 0, 0, NULL };
    struct vl2_err err;
    int r;

    lim.max_pixels = 1 << 22;   /* keep each run fast; the limit logic is tested */
    lim.apply_exif = 1;
    vl2_err_clear(&err);
#if FUZZ_FORMAT == 1
    r = vl2__image_decode_jpeg(&img, data, size, &lim, &err);
#elif FUZZ_FORMAT == 2
    r = vl2__image_decode_png(&img, data, size, &lim, &err);
#else
    r = vl2__image_decode_webp(&img, data, size, &lim, &err);
#endif
    if (r < 0) {
        if (img.rgb || err.msg[0] == '\0')
            abort();   /* a failure leaves no image and says why */
        return 0;
    }
    if ((int64_t)img.width * img.height <= 4096) {
        struct vl2_tiling t;
        uint8_t *tiles;

        vl2_image_plan(&t, img.width, img.height, cands, 6, 1, 384, 14, 2);
        tiles = malloc((size_t)t.n_tiles * 3 * 384 * 384);
        if (tiles && vl2_image_tile(&img, &t, 384, tiles, &err) < 0 &&
            err.code != VL2_EUNSUPPORTED)
            abort();
        free(tiles);
    }
    vl2_image_done(&img);
    return 0;
}

/* image-impl.h - internals of the image module shared by its files, its
 * tests and its fuzz targets.  Not for other modules. */
#ifndef VL2_IMAGE_IMPL_H
#define VL2_IMAGE_IMPL_H

#include <stddef.h>
#include <stdint.h>

#include "image.h"

/* Resampling coefficients of one axis, as Pillow's precompute_coeffs +
 * normalize_coeffs_8bpc make them. */
struct vl2__coeffs {
    int32_t  out_size;
    int32_t  ksize;    /* coefficients reserved per output sample */
    int32_t *bounds;   /* [out_size][2]: first input sample, number of taps */
    int32_t *k;        /* [out_size][ksize]: fixed point, 22 fractional bits */
};

int  vl2__image_coeffs_init(struct vl2__coeffs *c, int32_t in_size, int32_t out_size);
void vl2__image_coeffs_done(struct vl2__coeffs *c);

/* One decoder each; @data is known to carry that format's signature (the
 * fuzz targets call them on anything).  Same contract as vl2_image_decode,
 * except that the compressed-size limit is not checked. */
int vl2__image_decode_jpeg(struct vl2_image *img, const uint8_t *data, size_t size,
                           const struct vl2_image_limits *lim, struct vl2_err *err);
int vl2__image_decode_png(struct vl2_image *img, const uint8_t *data, size_t size,
                          const struct vl2_image_limits *lim, struct vl2_err *err);
int vl2__image_decode_webp(struct vl2_image *img, const uint8_t *data, size_t size,
                           const struct vl2_image_limits *lim, struct vl2_err *err);

/* The orientation (1..8) stored in an EXIF block (a TIFF header, optionally
 * preceded by "Exif\0\0"), or 0 when absent or unreadable. */
int vl2__image_exif_orientation(const uint8_t *exif, size_t size);

/* The orientation from the first "Exif" APP1 segment of a JPEG, or 0. */
int vl2__image_jpeg_orientation(const uint8_t *data, size_t size);

#endif /* VL2_IMAGE_IMPL_H */

/* npy.h - read and write NumPy .npy files (version 1.0/2.0, little-endian,
 * C order) for the dtypes the golden dumps use: float32, uint8, int64, int32.
 * Used by `--dump` outputs and by the golden tests. */
#ifndef VL2_NPY_H
#define VL2_NPY_H

#include <stddef.h>
#include <stdint.h>

#include "vl2-status.h"

enum vl2_npy_dtype { VL2_NPY_F32, VL2_NPY_U8, VL2_NPY_I64, VL2_NPY_I32 };

struct vl2_npy {
    int     dtype;      /* enum vl2_npy_dtype */
    int     ndim;
    int64_t shape[8];
    size_t  count;      /* number of elements */
    void   *data;       /* malloc'd, count * element size */
};

size_t vl2_npy_elem_size(int dtype);

/* Read @path; on success fills @a (free with vl2_npy_done). */
int  vl2_npy_read(struct vl2_npy *a, const char *path, struct vl2_err *err);
void vl2_npy_done(struct vl2_npy *a);

/* Write @data (C order) with @shape to @path atomically (temp file + rename). */
int  vl2_npy_write(const char *path, int dtype, int ndim, const int64_t *shape,
                   const void *data, struct vl2_err *err);

#endif

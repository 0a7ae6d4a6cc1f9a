/* npy.c - minimal .npy reader/writer (see npy.h). */
#include "npy.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *descr_of(int dtype)
{
    switch (dtype) {
    case VL2_NPY_F32: return "<f4";
    case VL2_NPY_U8:  return "|u1";
    case VL2_NPY_I64: return "<i8";
    case VL2_NPY_I32: return "<i4";
    }
    return NULL;
}

size_t vl2_npy_elem_size(int dtype)
{
    switch (dtype) {
    case VL2_NPY_F32: case VL2_NPY_I32: return 4;
    case VL2_NPY_U8:  return 1;
    case VL2_NPY_I64: return 8;
    }
    return 0;
}

void vl2_npy_done(struct vl2_npy *a)
{
    if (!a)
        return;
    free(a->data);
    a->data = NULL;
    a->count = 0;
}

/* Parse the header dict: {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), } */
static int parse_header(struct vl2_npy *a, const char *h, const char *path, struct vl2_err *err)
{
    const char *p, *q;
    int d;

    p = strstr(h, "'descr'");
    if (!p || !(p = strchr(p + 7, '\'')))
        return vl2_err_set(err, VL2_EFORMAT, "%s: npy header has no descr", path);
    q = strchr(p + 1, '\'');
    if (!q)
        return vl2_err_set(err, VL2_EFORMAT, "%s: npy header: bad descr", path);
    a->dtype = -1;
    for (d = VL2_NPY_F32; d <= VL2_NPY_I32; d++) {
        const char *s = descr_of(d);
        if ((size_t)(q - p - 1) == strlen(s) && !strncmp(p + 1, s, strlen(s)))
            a->dtype = d;
    }
    if (a->dtype < 0)
        return vl2_err_set(err, VL2_EUNSUPPORTED, "%s: npy dtype %.*s not supported",
                           path, (int)(q - p - 1), p + 1);
    p = strstr(h, "'fortran_order'");
    if (!p || strncmp(strchr(p + 15, ':') ? strchr(p + 15, ':') + 1 + strspn(strchr(p + 15, ':') + 1, " ") : "", "False", 5))
        return vl2_err_set(err, VL2_EUNSUPPORTED, "%s: npy in Fortran order not supported", path);
    p = strstr(h, "'shape'");
    if (!p || !(p = strchr(p, '(')))
        return vl2_err_set(err, VL2_EFORMAT, "%s: npy header has no shape", path);
    p++;
    a->ndim = 0;
    a->count = 1;
    for (;;) {
        char *end;
        long long v;
        while (*p == ' ' || *p == ',')
            p++;
        if (*p == ')')
            break;
        v = strtoll(p, &end, 10);
        if (end == p || v < 0 || a->ndim >= 8)
            return vl2_err_set(err, VL2_EFORMAT, "%s: npy header: bad shape", path);
        a->shape[a->ndim++] = v;
        if (v != 0 && a->count > SIZE_MAX / (size_t)v)
            return vl2_err_set(err, VL2_EFORMAT, "%s: npy shape too large", path);
        a->count *= (size_t)v;
        p = end;
    }
    return 0;
}

int vl2_npy_read(struct vl2_npy *a, const char *path, struct vl2_err *err)
{
    unsigned char pre[12];
    size_t hlen, pre_len, nbytes;
    char *hdr = NULL;
    FILE *f;
    int r;

    memset(a, 0, sizeof(*a));
    f = fopen(path, "rb");
    if (!f)
        return vl2_err_set(err, VL2_EIO, "%s: %s", path, strerror(errno));
    if (fread(pre, 1, 10, f) != 10 || memcmp(pre, "\x93NUMPY", 6)) {
        r = vl2_err_set(err, VL2_EFORMAT, "%s: not an npy file", path);
        goto out_close;
    }
    if (pre[6] == 1) {
        hlen = pre[8] | (size_t)pre[9] << 8;
        pre_len = 10;
    } else if (pre[6] == 2 || pre[6] == 3) {
        if (fread(pre + 10, 1, 2, f) != 2) {
            r = vl2_err_set(err, VL2_EFORMAT, "%s: truncated npy header", path);
            goto out_close;
        }
        hlen = pre[8] | (size_t)pre[9] << 8 | (size_t)pre[10] << 16 | (size_t)pre[11] << 24;
        pre_len = 12;
    } else {
        r = vl2_err_set(err, VL2_EUNSUPPORTED, "%s: npy version %d", path, pre[6]);
        goto out_close;
    }
    (void) pre_len;
    if (hlen > (1u << 20)) {
        r = vl2_err_set(err, VL2_EFORMAT, "%s: npy header too long", path);
        goto out_close;
    }
    hdr = malloc(hlen + 1);
    if (!hdr) {
        r = vl2_err_set(err, VL2_ENOMEM, "out of memory");
        goto out_close;
    }
    if (fread(hdr, 1, hlen, f) != hlen) {
        r = vl2_err_set(err, VL2_EFORMAT, "%s: truncated npy header", path);
        goto out_free;
    }
    hdr[hlen] = '\0';
    r = parse_header(a, hdr, path, err);
    if (r < 0)
        goto out_free;
    nbytes = a->count * vl2_npy_elem_size(a->dtype);
    a->data = malloc(nbytes ? nbytes : 1);
    if (!a->data) {
        r = vl2_err_set(err, VL2_ENOMEM, "%s: out of memory (%zu bytes)", path, nbytes);
        goto out_free;
    }
    if (fread(a->data, 1, nbytes, f) != nbytes) {
        vl2_npy_done(a);
        r = vl2_err_set(err, VL2_EFORMAT, "%s: truncated npy data", path);
        goto out_free;
    }
    r = 0;
out_free:
    free(hdr);
out_close:
    fclose(f);
    return r;
}

int vl2_npy_write(const char *path, int dtype, int ndim, const int64_t *shape,
                  const void *data, struct vl2_err *err)
{
    char hdr[256], shp[160], tmp[4096];
    size_t count = 1, n, len, total;
    int i, k = 0;
    FILE *f;

    if (!descr_of(dtype) || ndim < 0 || ndim > 8)
        return vl2_err_set(err, VL2_EINVAL, "npy: bad dtype or rank");
    shp[0] = '\0';
    for (i = 0; i < ndim; i++) {
        k += snprintf(shp + k, sizeof(shp) - k, "%lld%s", (long long)shape[i],
                      ndim == 1 ? "," : (i + 1 < ndim ? ", " : ""));
        count *= (size_t)shape[i];
    }
    n = (size_t)snprintf(hdr, sizeof(hdr), "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }",
                         descr_of(dtype), shp);
    /* pad so that magic(6)+ver(2)+len(2)+header ends on a 64-byte boundary, with '\n' */
    total = 10 + n + 1;
    len = (total + 63) / 64 * 64;
    memset(hdr + n, ' ', len - total);
    hdr[n + len - total] = '\n';
    n = len - 10;
    if (snprintf(tmp, sizeof(tmp), "%s.tmp.%d", path, (int)getpid()) >= (int)sizeof(tmp))
        return vl2_err_set(err, VL2_EINVAL, "npy: path too long");
    f = fopen(tmp, "wb");
    if (!f)
        return vl2_err_set(err, VL2_EIO, "%s: %s", tmp, strerror(errno));
    fwrite("\x93NUMPY\x01\x00", 1, 8, f);
    fputc((int)(n & 0xff), f);
    fputc((int)(n >> 8), f);
    fwrite(hdr, 1, n, f);
    fwrite(data, vl2_npy_elem_size(dtype), count, f);
    if (ferror(f) | (fclose(f) != 0)) {
        (void) unlink(tmp);
        return vl2_err_set(err, VL2_EIO, "%s: write failed", path);
    }
    if (rename(tmp, path) != 0) {
        int e = errno;
        (void) unlink(tmp);
        return vl2_err_set(err, VL2_EIO, "%s: %s", path, strerror(e));
    }
    return 0;
}

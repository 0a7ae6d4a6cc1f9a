/* safetensors.c - safetensors files mapped read-only and shared.
 *
 * File format (little endian):
 *     u64  N                      length of the JSON header
 *     u8   header[N]              {"name": {"dtype": "BF16", "shape": [..],
 *                                           "data_offsets": [begin, end]}, ...,
 *                                  "__metadata__": {"key": "value", ...}}
 *                                 (may be padded with spaces)
 *     u8   data[]                 tensor bytes; offsets are relative to here
 *
 * A model directory holds either model.safetensors, or shards listed in
 * model.safetensors.index.json:
 *     {"metadata": {"total_size": BYTES}, "weight_map": {"name": "shard file", ...}}
 *
 * Everything in a header is validated before any tensor is handed out. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "vl2-backend.h"
#include "weights.h"
#include "weights-impl.h"

#define MAX_NAME 1024
#define MAX_EXACT 9007199254740992.0   /* 2^53: integers above are not exact in JSON doubles */

struct st_file {
    char       *path;
    void       *map;
    size_t      size;
};

struct vl2_weights {
    struct st_file       *files;
    size_t                n_files;
    struct vl2_st_tensor *tensors;
    size_t                n_tensors;
    size_t                cap_tensors;
    uint32_t             *slots;       /* open-addressing table: tensor index + 1, 0 = empty */
    size_t                n_slots;     /* power of two */
    size_t                mapped;
};

/* ---- dtype names ---------------------------------------------------------- */

const char *vl2_dtype_st_name(int dtype)
{
    switch (dtype) {
    case VL2_DTYPE_F32:  return "F32";
    case VL2_DTYPE_F16:  return "F16";
    case VL2_DTYPE_BF16: return "BF16";
    case VL2_DTYPE_I32:  return "I32";
    }
    return "?";
}

/* Returns the dtype, -1 for a known safetensors dtype we do not handle, -2
 * for a name that is no safetensors dtype at all. */
static int dtype_from_name(const char *s)
{
    static const char *const other[] = { "F64", "I64", "U64", "U32", "I16", "U16", "I8", "U8",
                                         "BOOL", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F4",
                                         "F6_E2M3", "F6_E3M2", "C64" };
    size_t i;

    if (!strcmp(s, "F32"))
        return VL2_DTYPE_F32;
    if (!strcmp(s, "F16"))
        return VL2_DTYPE_F16;
    if (!strcmp(s, "BF16"))
        return VL2_DTYPE_BF16;
    if (!strcmp(s, "I32"))
        return VL2_DTYPE_I32;
    for (i = 0; i < sizeof(other) / sizeof(other[0]); i++)
        if (!strcmp(s, other[i]))
            return -1;
    return -2;
}

/* ---- header parsing ------------------------------------------------------- */

struct tlist {
    struct vl2_st_tensor *t;
    size_t n, cap;
};

static int tlist_push(struct tlist *l, const struct vl2_st_tensor *t)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 256;
        struct vl2_st_tensor *p = realloc(l->t, cap * sizeof(*p));
        if (!p)
            return VL2_ENOMEM;
        l->t = p;
        l->cap = cap;
    }
    l->t[l->n++] = *t;
    return 0;
}

/* Copy a user-controlled name into @buf for messages, shortened if long. */
static const char *clip(const char *s, char *buf, size_t cap)
{
    if (strlen(s) < cap)
        snprintf(buf, cap, "%s", s);
    else
        snprintf(buf, cap, "%.*s...", (int) cap - 4, s);
    return buf;
}

static int get_u64(const cJSON *it, uint64_t *out)
{
    if (!cJSON_IsNumber(it))
        return -1;
    if (!(it->valuedouble >= 0 && it->valuedouble <= MAX_EXACT) ||
        it->valuedouble != floor(it->valuedouble))
        return -1;
    *out = (uint64_t) it->valuedouble;
    return 0;
}

struct span {
    uint64_t    begin, end;
    const char *name;
};

static int cmp_span(const void *a, const void *b)
{
    const struct span *x = a, *y = b;

    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *) a, *(const char *const *) b);
}

/* Validate the file image @buf (@size bytes).  @what names the file in
 * messages.  When @out is not NULL, the tensors are appended to it (names
 * malloc'd, data pointing into @buf, file = @file_idx). */
static int parse_header(const uint8_t *buf, size_t size, const char *what, int file_idx,
                        struct tlist *out, struct vl2_err *err)
{
    char nb[80], nb2[80];
    uint64_t hlen = 0, data_size;
    const char *end = NULL;
    struct span *spans = NULL;
    const char **names = NULL;
    size_t n_spans = 0, n_members = 0, i, out0 = out ? out->n : 0;
    const cJSON *m;
    cJSON *root = NULL;
    char *text;
    int r, k;

    if (size < 8)
        return vl2_err_set(err, VL2_EFORMAT, "weights: '%s': file is %zu bytes, too short for "
                           "a safetensors header", what, size);
    for (k = 0; k < 8; k++)
        hlen |= (uint64_t) buf[k] << (8 * k);
    if (hlen > size - 8)
        return vl2_err_set(err, VL2_EFORMAT, "weights: '%s': header length %llu goes past the "
                           "end of the file (%zu bytes): truncated or not a safetensors file",
                           what, (unsigned long long) hlen, size);
    if (hlen > VL2_ST_MAX_HEADER)
        return vl2_err_set(err, VL2_ELIMIT, "weights: '%s': header length %llu is over the "
                           "limit of %u bytes", what, (unsigned long long) hlen,
                           VL2_ST_MAX_HEADER);
    if (hlen < 2)
        return vl2_err_set(err, VL2_EFORMAT, "weights: '%s': header length %llu is too small",
                           what, (unsigned long long) hlen);
    data_size = size - 8 - hlen;

    text = malloc(hlen + 1);
    if (!text)
        return vl2_err_set(err, VL2_ENOMEM, "weights: '%s': out of memory for the header", what);
    memcpy(text, buf + 8, hlen);
    text[hlen] = '\0';
    if (memchr(text, '\0', hlen)) {
        r = vl2_err_set(err, VL2_EFORMAT, "weights: '%s': header contains a NUL byte", what);
        goto out_free;
    }
    root = cJSON_ParseWithLengthOpts(text, hlen, &end, 0);
    if (!root) {
        size_t at = end && end >= text && end <= text + hlen ? (size_t) (end - text) : 0;
        r = vl2_err_set(err, VL2_EFORMAT, "weights: '%s': header is not valid JSON (error near "
                        "byte %zu of %llu)", what, at, (unsigned long long) hlen);
        goto out_free;
    }
    for (; end && end < text + hlen; end++)
        if (*end != ' ' && *end != '\t' && *end != '\n' && *end != '\r') {
            r = vl2_err_set(err, VL2_EFORMAT, "weights: '%s': header has bytes after its JSON "
                            "object (at byte %zu)", what, (size_t) (end - text));
            goto out_free;
        }
    if (!cJSON_IsObject(root)) {
        r = vl2_err_set(err, VL2_EFORMAT, "weights: '%s': header is not a JSON object", what);
        goto out_free;
    }
    cJSON_ArrayForEach(m, root)
        n_members++;
    spans = calloc(n_members ? n_members : 1, sizeof(*spans));
    names = calloc(n_members ? n_members : 1, sizeof(*names));
    if (!spans || !names) {
        r = vl2_err_set(err, VL2_ENOMEM, "weights: '%s': out of memory", what);
        goto out_free;
    }

    cJSON_ArrayForEach(m, root) {
        const cJSON *dt, *shape, *offs, *d;
        struct vl2_st_tensor t;
        const char *name = m->string ? m->string : "";
        uint64_t b, e, n_elem = 1, want;
        int dtype;

        if (!strcmp(name, "__metadata__")) {
            const cJSON *kv;
            if (!cJSON_IsObject(m)) {
                r = vl2_err_set(err, VL2_EFORMAT, "weights: '%s': __metadata__ is not an object",
                                what);
                goto out_free;
            }
            cJSON_ArrayForEach(kv, m)
                if (!cJSON_IsString(kv)) {
                    r = vl2_err_set(err, VL2_EFORMAT, "weights: '%s': __metadata__ value '%s' "
                                    "is not a string", what,
                                    clip(kv->string ? kv->string : "", nb, sizeof(nb)));
                    goto out_free;
                }
            continue;
        }
        clip(name, nb, sizeof(nb));
        if (!name[0] || strlen(name) > MAX_NAME) {
            r = vl2_err_set(err, VL2_EFORMAT, "weights: '%s': tensor name '%s' is empty or longer "
                            "than %d bytes", what, nb, MAX_NAME);
            goto out_free;
        }
        if (!cJSON_IsObject(m)) {
            r = vl2_err_set(err, VL2_EFORMAT, "weights: '%s': tensor '%s': entry is not an "
                            "object", what, nb);
            goto out_free;
        }
        dt = cJSON_GetObjectItemCaseSensitive(m, "dtype");
        shape = cJSON_GetObjectItemCaseSensitive(m, "shape");
        offs = cJSON_GetObjectItemCaseSensitive(m, "data_offsets");
        if (!cJSON_IsString(dt)) {
            r = vl2_err_set(err, VL2_EFORMAT, "weights: '%s': tensor '%s': dtype missing or not "
                            "a string", what, nb);
            goto out_free;
        }
        dtype = dtype_from_name(dt->valuestring);
        if (dtype == -1) {
            r = vl2_err_set(err, VL2_EUNSUPPORTED, "weights: '%s': tensor '%s': dtype '%s' is "
                            "not supported (BF16, F16, F32, I32)", what, nb, dt->valuestring);
            goto out_free;
        }
        if (dtype < 0) {
            r = vl2_err_set(err, VL2_EFORMAT, "weights: '%s': tensor '%s': unknown dtype '%s'",
                            what, nb, clip(dt->valuestring, nb2, 40));
            goto out_free;
        }
        if (!cJSON_IsArray(shape) || cJSON_GetArraySize(shape) > 8) {
            r = vl2_err_set(err, VL2_EFORMAT, "weights: '%s': tensor '%s': shape missing, not a "
                            "list or more than 8 dimensions", what, nb);
            goto out_free;
        }
        memset(&t, 0, sizeof(t));
        t.dtype = dtype;
        t.file = file_idx;
        cJSON_ArrayForEach(d, shape) {
            uint64_t v;
            if (get_u64(d, &v) < 0) {
                r = vl2_err_set(err, VL2_EFORMAT, "weights: '%s': tensor '%s': shape entry %d "
                                "is not a non-negative integer", what, nb, t.ndim);
                goto out_free;
            }
            t.shape[t.ndim++] = (int64_t) v;
            /* saturate: a product over the data size is an error below anyway */
            if (v && n_elem > (UINT64_MAX / 8) / v)
                n_elem = UINT64_MAX / 8;
            else
                n_elem *= v;
        }
        if (!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2 ||
            get_u64(cJSON_GetArrayItem(offs, 0), &b) < 0 ||
            get_u64(cJSON_GetArrayItem(offs, 1), &e) < 0) {
            r = vl2_err_set(err, VL2_EFORMAT, "weights: '%s': tensor '%s': data_offsets missing "
                            "or not two non-negative integers", what, nb);
            goto out_free;
        }
        if (b > e) {
            r = vl2_err_set(err, VL2_EFORMAT, "weights: '%s': tensor '%s': data_offsets [%llu, "
                            "%llu] end before they begin", what, nb, (unsigned long long) b,
                            (unsigned long long) e);
            goto out_free;
        }
        if (e > data_size) {
            r = vl2_err_set(err, VL2_EFORMAT, "weights: '%s': tensor '%s': data ends at %llu, "
                            "past the end of the data area (%llu bytes)", what, nb,
                            (unsigned long long) e, (unsigned long long) data_size);
            goto out_free;
        }
        want = n_elem * vl2_dtype_size(dtype);
        if (want != e - b) {
            char shp[128];
            int j, o = 0;
            for (j = 0; j < t.ndim && o < (int) sizeof(shp) - 24; j++)
                o += snprintf(shp + o, sizeof(shp) - o, "%s%lld", j ? ", " : "",
                              (long long) t.shape[j]);
            shp[o] = '\0';
            r = vl2_err_set(err, VL2_EFORMAT, "weights: '%s': tensor '%s': shape [%s] of %s "
                            "needs %llu bytes, data_offsets give %llu", what, nb, shp,
                            dt->valuestring, (unsigned long long) want,
                            (unsigned long long) (e - b));
            goto out_free;
        }
        spans[n_spans].begin = b;
        spans[n_spans].end = e;
        spans[n_spans].name = name;
        names[n_spans] = name;
        n_spans++;
        if (out) {
            t.size = (size_t) (e - b);
            t.data = buf + 8 + hlen + b;
            t.name = strdup(name);
            if (!t.name || tlist_push(out, &t) < 0) {
                free((char *) t.name);
                r = vl2_err_set(err, VL2_ENOMEM, "weights: '%s': out of memory", what);
                goto out_free;
            }
        }
    }

    qsort(names, n_spans, sizeof(*names), cmp_str);
    for (i = 1; i < n_spans; i++)
        if (!strcmp(names[i - 1], names[i])) {
            r = vl2_err_set(err, VL2_EFORMAT, "weights: '%s': tensor '%s' appears twice in the "
                            "header", what, clip(names[i], nb, sizeof(nb)));
            goto out_free;
        }
    qsort(spans, n_spans, sizeof(*spans), cmp_span);
    {
        const struct span *prev = NULL;
        for (i = 0; i < n_spans; i++) {
            if (spans[i].begin == spans[i].end)
                continue;   /* empty tensors occupy no bytes */
            if (prev && spans[i].begin < prev->end) {
                r = vl2_err_set(err, VL2_EFORMAT, "weights: '%s': tensors '%s' [%llu, %llu) and "
                                "'%s' [%llu, %llu) overlap", what,
                                clip(prev->name, nb, sizeof(nb)),
                                (unsigned long long) prev->begin, (unsigned long long) prev->end,
                                clip(spans[i].name, nb2, sizeof(nb2)),
                                (unsigned long long) spans[i].begin,
                                (unsigned long long) spans[i].end);
                goto out_free;
            }
            prev = &spans[i];
        }
    }
    r = (int) (n_spans > 0x7fffffff ? 0x7fffffff : n_spans);

out_free:
    if (r < 0 && out) {
        for (i = out0; i < out->n; i++)
            free((char *) out->t[i].name);
        out->n = out0;
    }
    free(spans);
    free(names);
    cJSON_Delete(root);
    free(text);
    return r;
}

int vl2_safetensors_check(const void *buf, size_t size, struct vl2_err *err)
{
    int r = parse_header(buf, size, "safetensors", 0, NULL, err);

    return r < 0 ? vl2__err_oneline(err, r) : 0;
}

/* ---- the weights object --------------------------------------------------- */

static uint64_t hash_name(const char *s)
{
    uint64_t h = 1469598103934665603ull;

    for (; *s; s++) {
        h ^= (unsigned char) *s;
        h *= 1099511628211ull;
    }
    return h;
}

/* Build the lookup table; VL2_EFORMAT if a name occurs in two shards. */
static int build_index(struct vl2_weights *w, struct vl2_err *err)
{
    size_t n = 16, i;

    while (n < 2 * w->n_tensors + 1)
        n *= 2;
    w->slots = calloc(n, sizeof(*w->slots));
    if (!w->slots)
        return vl2_err_set(err, VL2_ENOMEM, "weights: out of memory for the tensor index");
    w->n_slots = n;
    for (i = 0; i < w->n_tensors; i++) {
        size_t s = hash_name(w->tensors[i].name) & (n - 1);
        while (w->slots[s]) {
            const struct vl2_st_tensor *o = &w->tensors[w->slots[s] - 1];
            if (!strcmp(o->name, w->tensors[i].name)) {
                char nb[80];
                return vl2_err_set(err, VL2_EFORMAT, "weights: tensor '%s' is in both '%s' and "
                                   "'%s'", clip(o->name, nb, sizeof(nb)), w->files[o->file].path,
                                   w->files[w->tensors[i].file].path);
            }
            s = (s + 1) & (n - 1);
        }
        w->slots[s] = (uint32_t) (i + 1);
    }
    return 0;
}

const struct vl2_st_tensor *vl2_weights_find(const struct vl2_weights *w, const char *name)
{
    size_t s;

    if (!w || !w->n_slots || !name)
        return NULL;
    s = hash_name(name) & (w->n_slots - 1);
    while (w->slots[s]) {
        const struct vl2_st_tensor *t = &w->tensors[w->slots[s] - 1];
        if (!strcmp(t->name, name))
            return t;
        s = (s + 1) & (w->n_slots - 1);
    }
    return NULL;
}

size_t vl2_weights_count(const struct vl2_weights *w)
{
    return w ? w->n_tensors : 0;
}

const struct vl2_st_tensor *vl2_weights_at(const struct vl2_weights *w, size_t i)
{
    return w && i < w->n_tensors ? &w->tensors[i] : NULL;
}

size_t vl2_weights_mapped_size(const struct vl2_weights *w)
{
    return w ? w->mapped : 0;
}

size_t vl2_weights_file_count(const struct vl2_weights *w)
{
    return w ? w->n_files : 0;
}

const char *vl2_weights_file_path(const struct vl2_weights *w, size_t i)
{
    return w && i < w->n_files ? w->files[i].path : NULL;
}

void vl2_weights_close(struct vl2_weights *w)
{
    size_t i;

    if (!w)
        return;
    for (i = 0; i < w->n_tensors; i++)
        free((char *) w->tensors[i].name);
    free(w->tensors);
    for (i = 0; i < w->n_files; i++) {
        if (w->files[i].map)
            (void) munmap(w->files[i].map, w->files[i].size);
        free(w->files[i].path);
    }
    free(w->files);
    free(w->slots);
    free(w);
}

/* Map @path as file number w->n_files and append its tensors. */
static int add_file(struct vl2_weights *w, const char *path, struct vl2_err *err)
{
    struct tlist l = { w->tensors, w->n_tensors, w->cap_tensors };
    struct st_file *f, *files;
    struct stat st;
    int fd, r;

    files = realloc(w->files, (w->n_files + 1) * sizeof(*files));
    if (!files)
        return vl2_err_set(err, VL2_ENOMEM, "weights: out of memory");
    w->files = files;
    f = &files[w->n_files];
    memset(f, 0, sizeof(*f));
    f->path = strdup(path);
    if (!f->path)
        return vl2_err_set(err, VL2_ENOMEM, "weights: out of memory");
    w->n_files++;

    r = vl2_file_open(path, "weights", &fd, &st, err);
    if (r < 0)
        return r;
    if (st.st_size < 8) {
        r = vl2_err_set(err, VL2_EFORMAT, "weights: '%s': file is %lld bytes, too short for a "
                        "safetensors header", path, (long long) st.st_size);
        goto out_close;
    }
    f->map = mmap(NULL, (size_t) st.st_size, PROT_READ, MAP_SHARED, fd, 0);
    if (f->map == MAP_FAILED) {
        f->map = NULL;
        r = vl2_err_set(err, VL2_EIO, "weights: '%s': mmap failed: %s", path, strerror(errno));
        goto out_close;
    }
    f->size = (size_t) st.st_size;
    w->mapped += f->size;
    r = parse_header(f->map, f->size, path, (int) (w->n_files - 1), &l, err);
    w->tensors = l.t;
    w->n_tensors = l.n;
    w->cap_tensors = l.cap;
    if (r > 0)
        r = 0;
out_close:
    close(fd);
    return r;
}

int vl2_weights_open_file(struct vl2_weights **ret, const char *path, struct vl2_err *err)
{
    struct vl2_weights *w;
    int r;

    w = calloc(1, sizeof(*w));
    if (!w)
        return vl2_err_set(err, VL2_ENOMEM, "weights: out of memory");
    r = add_file(w, path, err);
    if (r < 0)
        goto out_close;
    r = build_index(w, err);
    if (r < 0)
        goto out_close;
    *ret = w;
    return 0;
out_close:
    vl2_weights_close(w);
    return vl2__err_oneline(err, r);
}

/* ---- model.safetensors.index.json ----------------------------------------- */

static int shard_name_ok(const char *s)
{
    return s[0] && strlen(s) < 256 && !strchr(s, '/') && strcmp(s, ".") && strcmp(s, "..");
}

/* Parse the index; on success *ret_root holds it and *ret_map its weight_map. */
static int index_parse(cJSON **ret_root, const cJSON **ret_map, const char *what,
                       const char *json, size_t len, struct vl2_err *err)
{
    const cJSON *map, *m;
    const char *end = NULL;
    cJSON *root;
    char nb[80];

    root = cJSON_ParseWithLengthOpts(json, len, &end, 0);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return vl2_err_set(err, VL2_EFORMAT, "weights: '%s': not a JSON object", what);
    }
    map = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!cJSON_IsObject(map) || !map->child) {
        cJSON_Delete(root);
        return vl2_err_set(err, VL2_EFORMAT, "weights: '%s': weight_map missing, empty or not "
                           "an object", what);
    }
    cJSON_ArrayForEach(m, map) {
        if (!cJSON_IsString(m) || !shard_name_ok(m->valuestring)) {
            char *v = cJSON_PrintUnformatted(m);
            vl2_err_set(err, VL2_EFORMAT, "weights: '%s': weight_map entry '%s': shard %s is "
                        "not a plain file name", what,
                        clip(m->string ? m->string : "", nb, sizeof(nb)), v ? v : "?");
            free(v);
            cJSON_Delete(root);
            return VL2_EFORMAT;
        }
    }
    *ret_root = root;
    *ret_map = map;
    return 0;
}

/* Distinct shard names of @map, in order of first appearance; *ret is
 * malloc'd (pointers into the cJSON tree). */
static int index_shards(const cJSON *map, const char ***ret, size_t *ret_n)
{
    const cJSON *m;
    const char **v;
    size_t n = 0, cap = 0, i;

    v = NULL;
    cJSON_ArrayForEach(m, map) {
        for (i = 0; i < n; i++)
            if (!strcmp(v[i], m->valuestring))
                break;
        if (i < n)
            continue;
        if (n == cap) {
            const char **p;
            cap = cap ? 2 * cap : 16;
            p = realloc(v, cap * sizeof(*p));
            if (!p) {
                free(v);
                return VL2_ENOMEM;
            }
            v = p;
        }
        v[n++] = m->valuestring;
    }
    *ret = v;
    *ret_n = n;
    return 0;
}

int vl2__st_index_check(const char *json, size_t len, struct vl2_err *err)
{
    const cJSON *map;
    const char **shards;
    cJSON *root;
    size_t n;
    int r;

    r = index_parse(&root, &map, "index", json, len, err);
    if (r < 0)
        return vl2__err_oneline(err, r);
    r = index_shards(map, &shards, &n);
    cJSON_Delete(root);
    if (r < 0)
        return vl2_err_set(err, r, "weights: out of memory");
    free(shards);
    return n > 0x7fffffff ? 0x7fffffff : (int) n;
}

static int open_index(struct vl2_weights *w, const char *dir, const char *ipath,
                      struct vl2_err *err)
{
    char path[4096], nb[80];
    const char **shards = NULL;
    const cJSON *map, *m;
    size_t n_shards = 0, i;
    cJSON *root;
    char *text;
    size_t len;
    int r;

    r = vl2_file_read(ipath, VL2_ST_MAX_INDEX, "weights", &text, &len, err);
    if (r < 0)
        return r;
    r = index_parse(&root, &map, ipath, text, len, err);
    free(text);
    if (r < 0)
        return r;
    r = index_shards(map, &shards, &n_shards);
    if (r < 0) {
        r = vl2_err_set(err, VL2_ENOMEM, "weights: out of memory");
        goto out_free;
    }
    for (i = 0; i < n_shards; i++) {
        snprintf(path, sizeof(path), "%s/%s", dir, shards[i]);
        r = add_file(w, path, err);
        if (r == VL2_ENOTFOUND) {
            r = vl2_err_set(err, VL2_ENOTFOUND, "weights: shard '%s' listed in '%s' is missing",
                            shards[i], ipath);
            goto out_free;
        }
        if (r < 0)
            goto out_free;
    }
    r = build_index(w, err);
    if (r < 0)
        goto out_free;
    /* the index and the shards must agree, both ways */
    cJSON_ArrayForEach(m, map) {
        const struct vl2_st_tensor *t = vl2_weights_find(w, m->string);
        if (!t) {
            r = vl2_err_set(err, VL2_EFORMAT, "weights: tensor '%s' listed in '%s' is not in "
                            "shard '%s'", clip(m->string, nb, sizeof(nb)), ipath, m->valuestring);
            goto out_free;
        }
        if (strcmp(w->files[t->file].path + strlen(dir) + 1, m->valuestring) != 0) {
            r = vl2_err_set(err, VL2_EFORMAT, "weights: tensor '%s' is listed in '%s' under "
                            "shard '%s' but found in '%s'", clip(m->string, nb, sizeof(nb)),
                            ipath, m->valuestring, w->files[t->file].path);
            goto out_free;
        }
    }
    {
        size_t n_map = 0;
        cJSON_ArrayForEach(m, map)
            n_map++;
        if (n_map != w->n_tensors) {
            /* some tensor of a shard is not in the index: find it */
            for (i = 0; i < w->n_tensors; i++)
                if (!cJSON_GetObjectItemCaseSensitive(map, w->tensors[i].name))
                    break;
            r = vl2_err_set(err, VL2_EFORMAT, "weights: tensor '%s' of '%s' is not listed in "
                            "'%s'", i < w->n_tensors ? clip(w->tensors[i].name, nb, sizeof(nb))
                                                     : "?",
                            i < w->n_tensors ? w->files[w->tensors[i].file].path : "?", ipath);
            goto out_free;
        }
    }
    r = 0;
out_free:
    free(shards);
    cJSON_Delete(root);
    return r;
}

static int vl2_weights_open_impl(struct vl2_weights **ret, const char *dir, struct vl2_err *err)
{
    char ipath[4096], path[4096];
    struct vl2_weights *w;
    int r;

    snprintf(ipath, sizeof(ipath), "%s/model.safetensors.index.json", dir);
    if (access(ipath, F_OK) != 0) {
        snprintf(path, sizeof(path), "%s/model.safetensors", dir);
        if (access(path, F_OK) != 0)
            return vl2_err_set(err, VL2_ENOTFOUND, "weights: '%s': neither "
                               "model.safetensors.index.json nor model.safetensors found", dir);
        return vl2_weights_open_file(ret, path, err);
    }
    w = calloc(1, sizeof(*w));
    if (!w)
        return vl2_err_set(err, VL2_ENOMEM, "weights: out of memory");
    r = open_index(w, dir, ipath, err);
    if (r < 0) {
        vl2_weights_close(w);
        return vl2__err_oneline(err, r);
    }
    *ret = w;
    return 0;
}

int vl2_weights_open(struct vl2_weights **ret, const char *dir, struct vl2_err *err)
{
    int r = vl2_weights_open_impl(ret, dir, err);

    return r < 0 ? vl2__err_oneline(err, r) : r;
}

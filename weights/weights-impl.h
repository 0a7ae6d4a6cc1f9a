/* weights-impl.h - internals shared by the files of weights/ and its tests
 * and tools (vl2-mkweights, fuzz targets).  Not part of the public API. */
#ifndef VL2_WEIGHTS_IMPL_H
#define VL2_WEIGHTS_IMPL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "weights.h"

/* Largest safetensors JSON header accepted (the safetensors library's own limit). */
#define VL2_ST_MAX_HEADER (100u << 20)
/* Largest model.safetensors.index.json accepted. */
#define VL2_ST_MAX_INDEX (64u << 20)

extern const int vl2__default_candidates[23][2];

void vl2__processor_config_defaults(struct vl2_processor_config *p);
int  vl2__processor_config_parse(struct vl2_processor_config *c, const char *json, size_t len,
                                 struct vl2_err *err);
int  vl2__tokenizer_config_parse(struct vl2_tokenizer_config *c, const char *json, size_t len,
                                 struct vl2_err *err);

/* Parse the index text of model.safetensors.index.json without opening any
 * shard: returns the number of distinct shards (>= 1) or a negative status.
 * Used by the fuzz target. */
int  vl2__st_index_check(const char *json, size_t len, struct vl2_err *err);

/* Messages are one line: control bytes from user strings become spaces.
 * Returns err->code (or @r when err is NULL). */
static inline int vl2__err_oneline(struct vl2_err *err, int r)
{
    size_t i;

    if (!err)
        return r;
    for (i = 0; i < sizeof(err->msg) && err->msg[i]; i++)
        if ((unsigned char) err->msg[i] < 0x20 || err->msg[i] == 0x7f)
            err->msg[i] = ' ';
    return r;
}

#endif

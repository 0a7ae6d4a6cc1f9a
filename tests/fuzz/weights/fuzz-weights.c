/* fuzz-weights.c - libFuzzer target for what weights/ parses from files:
 * safetensors headers, config.json, processor_config.json,
 * tokenizer_config.json and model.safetensors.index.json.
 *
 * The first input byte selects the parser (mod 5); the rest is the file. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "weights.h"
#include "weights-impl.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct vl2_model_config c;
    struct vl2_processor_config pc;
    struct vl2_tokenizer_config tc;
    struct vl2_err err = { 0 };
    const char *text;
    char *copy;

    if (size < 1)
        return 0;
    /* an exact-size copy, so that any read past the end is caught */
    copy = malloc(size - 1 ? size - 1 : 1);
    if (!copy)
        return 0;
    memcpy(copy, data + 1, size - 1);
    text = copy;
    switch (data[0] % 5) {
    case 0:
        (void) vl2_safetensors_check(copy, size - 1, &err);
        break;
    case 1:
        if (vl2_config_parse(&c, text, size - 1, &err) == 0) {
            struct vl2_param_counts p;
            /* a parsed config must give a usable layout */
            if (vl2_model_count_params(&c, &p, &err) < 0 || p.total <= 0)
                abort();
        }
        break;
    case 2:
        (void) vl2__processor_config_parse(&pc, text, size - 1, &err);
        break;
    case 3:
        (void) vl2__tokenizer_config_parse(&tc, text, size - 1, &err);
        break;
    case 4:
        (void) vl2__st_index_check(text, size - 1, &err);
        break;
    }
    /* every error message is one NUL-terminated line */
    if (err.code && (!memchr(err.msg, '\0', sizeof(err.msg)) || strchr(err.msg, '\n')))
        abort();
    free(copy);
    return 0;
}

/* fuzz-grounding.c - libFuzzer target for vl2_grounding_parse.  The first
 * four bytes choose the image size; the rest is the model output.  Checks
 * that every box is inside the image, ordered, and has a valid C string. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "grounding.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct vl2_box *boxes = NULL;
    size_t n = 0;
    int32_t w = 1000, h = 600;
    int r;

    if (size >= 4) {
        w = 1 + (int32_t) (((uint32_t) data[0] << 8 | data[1]) % 20000);
        h = 1 + (int32_t) (((uint32_t) data[2] << 8 | data[3]) % 20000);
        data += 4;
        size -= 4;
    }
    r = vl2_grounding_parse((const char *) data, size, w, h, &boxes, &n, NULL);
    if (r < 0)
        return 0;
    if ((size_t) r != n || n > VL2_GROUNDING_MAX_BOXES)
        abort();
    for (size_t i = 0; i < n; i++) {
        const struct vl2_box *b = &boxes[i];
        if (!b->label || strlen(b->label) > VL2_GROUNDING_MAX_LABEL)
            abort();
        if (!(b->x1 >= 0 && b->x1 <= b->x2 && b->x2 <= (float) w &&
              b->y1 >= 0 && b->y1 <= b->y2 && b->y2 <= (float) h))
            abort();
    }
    vl2_boxes_free(boxes, n);
    return 0;
}

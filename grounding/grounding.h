/* grounding.h - parse DeepSeek-VL2 grounding output into boxes (spec §9).
 *
 * The model answers a referring query or a grounded conversation with pairs
 *
 *     <|ref|>label<|/ref|><|det|>[[x1, y1, x2, y2], [x1, y1, x2, y2]]<|/det|>
 *
 * inline in its text.  Coordinates are integers on a 0..999 grid over the
 * original (unpadded) image of the last image in the conversation; they map
 * to pixels as the official visualiser parse_ref_bbox does:
 *
 *     px = int(v / 999 * W),  py = int(v / 999 * H)     (double division, truncation)
 *
 * so 999 maps to W (one past the last column), exactly as the official code.
 *
 * How this parser differs from the official one (which finds all refs and all
 * dets separately, gives up unless their counts are equal, pairs them by
 * index, and eval()s each "[...]" group):
 *
 *  - Pairs are formed in order of appearance: a det takes the label of the
 *    nearest preceding complete ref that no det has taken yet.  A det with no
 *    such ref (e.g. a second det after one ref, or a det alone in a grounded
 *    conversation) still yields its boxes, with an empty label "".  A ref with
 *    no det after it yields nothing.  So unequal counts never discard the
 *    well-formed pairs.
 *  - Unbalanced tags: an opening tag seen before the matching close restarts
 *    the element ("<|ref|>a<|ref|>b<|/ref|>" has label "b"); a close without
 *    an open, or an open never closed, is ignored.  Tags may span lines.
 *  - Inside a det, every innermost "[ ... ]" group is one box candidate
 *    (so "[[a,b,c,d]]" and "[a,b,c,d]" both work); text outside groups is
 *    ignored.  A group is a box only if it holds exactly four comma-separated
 *    non-negative decimal integers (spaces allowed, no signs, no fractions,
 *    at most 9 digits) with every value in 0..999 and x1 <= x2, y1 <= y2.
 *    Anything else (odd or wrong count, values over 999 - not clamped, the
 *    grid has no such values - runaway digits, junk) drops that one group.
 *  - Labels are copied verbatim (no trimming), NUL bytes removed, invalid
 *    UTF-8 bytes replaced by '?', and cut at VL2_GROUNDING_MAX_LABEL bytes
 *    (at a character boundary), so a label is always a valid C string and
 *    valid UTF-8.
 *  - At most VL2_GROUNDING_MAX_BOXES boxes are returned; further boxes are
 *    dropped.
 */
#ifndef VL2_GROUNDING_H
#define VL2_GROUNDING_H

#include <stddef.h>
#include <stdint.h>

#include "vl2-status.h"

#define VL2_GROUNDING_MAX_LABEL 1024   /* bytes of a label, without the NUL */
#define VL2_GROUNDING_MAX_BOXES 4096   /* boxes returned by one parse */

/* One box in pixels of the original image: (x1, y1) top-left, (x2, y2)
 * bottom-right, integral values (see the mapping above).  @label is a
 * NUL-terminated UTF-8 string owned by the box array. */
struct vl2_box { char *label; float x1, y1, x2, y2; };   /* pixels of the original image */

/* Parse <|ref|>label<|/ref|><|det|>[[x1,y1,x2,y2],...]<|/det|> pairs out of model output text; coordinates
 * on the 0-999 grid mapped to pixels as the official visualiser does (spec §9: int(v / 999 * W)). Malformed
 * output (unbalanced tags, odd-length or out-of-range coordinates, runaway digits, junk) never crashes and yields
 * the boxes that are well formed (or none) — the raw text is kept by the caller. boxes malloc'd; free with vl2_boxes_free.
 *
 * @text need not be NUL-terminated; @len bytes are read.  @img_w and @img_h
 * (the original image size) must be > 0.  On success returns the number of
 * boxes (>= 0, also stored in *@ret_n) and *@ret_boxes (NULL when there are
 * none).  Errors: VL2_EINVAL (NULL outputs, NULL text with len > 0, image
 * size <= 0), VL2_ENOMEM; outputs are then untouched. */
int  vl2_grounding_parse(const char *text, size_t len, int32_t img_w, int32_t img_h,
                         struct vl2_box **ret_boxes, size_t *ret_n, struct vl2_err *err);

/* Free an array returned by vl2_grounding_parse (labels included).
 * Accepts NULL. */
void vl2_boxes_free(struct vl2_box *boxes, size_t n);

/* Map one grid value (0..999) to a pixel coordinate for an image side of
 * @side pixels: (int)(v / 999.0 * side), as the official visualiser.  @v is
 * clamped to 0..999 and a negative @side gives 0, so the result is always in
 * 0..side. */
int32_t vl2_grounding_to_pixels(int32_t v, int32_t side);

#endif /* VL2_GROUNDING_H */

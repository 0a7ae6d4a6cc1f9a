/* prompt.h - the token ids of a DeepSeek-VL2 conversation, exactly as the
 * official processor builds them (spec 8.3-8.4, "deepseek" template,
 * format_messages_v2 in inference mode):
 *
 *     [BOS]
 *     system (first message only):  encode(strip(text))
 *     user:       T("<|User|>: " + strip(text) + "\n\n<|Assistant|>:")
 *                 (an empty text gives "<|User|>:<|Assistant|>:")
 *     assistant:  encode(strip(text)) + [EOS]
 *
 * where T() encodes each piece between "<image>" tags separately and expands
 * tag i (counted over the whole conversation) into image_tokens[i] copies of
 * the "<image>" id.  strip() removes leading and trailing whitespace as
 * Python's str.strip().  The implied empty assistant turn that ends an
 * inference prompt contributes nothing (its EOS is removed); a conversation
 * that ends with an assistant message continues that message (no EOS).
 */
#ifndef VL2_PROMPT_H
#define VL2_PROMPT_H

#include <stddef.h>
#include <stdint.h>

#include "vl2-status.h"

struct vl2_tokenizer;

enum vl2_role { VL2_ROLE_SYSTEM = 0, VL2_ROLE_USER = 1, VL2_ROLE_ASSISTANT = 2 };

struct vl2_message {
    int         role;   /* enum vl2_role */
    const char *text;   /* UTF-8, @len bytes (NULL allowed when len is 0) */
    size_t      len;
};

/* The processor's image placeholder. */
#define VL2_PROMPT_IMAGE_TAG "<image>"

/* Number of "<image>" tags in all messages (non-overlapping, left to right). */
size_t vl2_prompt_count_images(const struct vl2_message *msgs, size_t n_msgs);

/* Build the ids of @n_msgs messages with @n_images images whose token counts
 * are @image_tokens (spec 6.2; the caller chooses the tiling, which is off
 * when the conversation has three or more images).  On success *ret_ids is
 * malloc'd (the caller frees) with *ret_n ids.  Errors (VL2_EINVAL, with the
 * reason): no message, an unknown role, a system message that is not the
 * first, "<image>" in a system or assistant message, a tag count different
 * from @n_images, an image count of 0 tokens, a tokenizer without BOS/EOS or
 * "<image>"; VL2_ELIMIT when the total passes INT32_MAX; encode's errors. */
int vl2_prompt_build(const struct vl2_tokenizer *tok, const struct vl2_message *msgs,
                     size_t n_msgs, const int32_t *image_tokens, size_t n_images,
                     int32_t **ret_ids, size_t *ret_n, struct vl2_err *err);

/* Special-token strings in the messages' text.  By default (flags 0) the
 * text of every message is encoded as plain text: an added token's string
 * there (a turn marker such as "<|Assistant|>", BOS, EOS, ...) becomes the
 * ids of its characters, so that the author of a message cannot forge turns;
 * only "<image>" and the grounding tags <|ref|> <|/ref|> <|det|> <|/det|>
 * <|grounding|> keep their ids (the official grounding prompts hold them),
 * and the template's own markers are ids.  For any text free of other
 * special-token strings the ids are those of the official processor.  With
 * VL2_PROMPT_SPECIAL_TOKENS_IN_TEXT every added token in the text becomes
 * its id, as the official processor does (vl2d: special_tokens_in_text). */
#define VL2_PROMPT_SPECIAL_TOKENS_IN_TEXT 1u

/* vl2_prompt_build() with @flags (above); vl2_prompt_build() is flags 0. */
int vl2_prompt_build_ex(const struct vl2_tokenizer *tok, const struct vl2_message *msgs,
                        size_t n_msgs, const int32_t *image_tokens, size_t n_images,
                        unsigned flags, int32_t **ret_ids, size_t *ret_n, struct vl2_err *err);

#endif /* VL2_PROMPT_H */

/* tokenizer.h - byte-level BPE tokenizers loaded from a Hugging Face
 * `tokenizer.json`, reproducing the Rust `tokenizers` library.
 *
 *     struct vl2_tokenizer *tok;
 *     if (vl2_tokenizer_load(&tok, "/usr/share/vl2d/tokenizer", &err) < 0) ...
 *     vl2_tokenizer_encode(tok, text, len, &ids, &n_ids, &err);   // no BOS
 *     vl2_tokenizer_decode(tok, ids, n_ids, &text, &len, &err);
 *     vl2_tokenizer_free(tok);
 *
 * What is supported (anything else is refused at load with VL2_EUNSUPPORTED
 * and a message naming the feature):
 *   - model "BPE": vocab, merges ("a b" strings or ["a", "b"] pairs), unk_token,
 *     fuse_unk, ignore_merges.  Not: dropout, byte_fallback, subword prefixes
 *     or suffixes.
 *   - normalizer: none (null or an empty "Sequence").
 *   - pre_tokenizer: "Split" (Regex or String pattern, every behavior, invert),
 *     "ByteLevel" (add_prefix_space, use_regex; last step only), "Digits" (on
 *     every Unicode number, \p{N}, as the reference),
 *     and "Sequence" of these.  Regexes run through PCRE2 (UTF, Unicode
 *     properties, JIT) with Oniguruma's meaning of \s \S \w \W \h \H and
 *     line anchors, so that they match as the reference's Oniguruma does.
 *   - added tokens: matched in the raw text before anything else, leftmost-
 *     longest, non-normalized tokens first then normalized ones in the
 *     remaining text; lstrip/rstrip honoured; single_word refused.
 *   - decoder "ByteLevel" (or a Sequence of just it).  The post-processor is
 *     ignored: encode never adds special tokens (add_special_tokens=False).
 *
 * Text given to encode is UTF-8.  Invalid sequences (including UTF-8-encoded
 * surrogates) are replaced by U+FFFD, one per maximal invalid subpart, before
 * tokenizing, as Python's bytes.decode(errors="replace") would.
 *
 * Memory: encode needs about 20 bytes per input byte for its longest
 * pre-token (a text without any split point); callers limit prompt sizes.
 *
 * A loaded tokenizer is immutable: every function here may be called from
 * several threads at once on the same tokenizer.
 */
#ifndef VL2_TOKENIZER_H
#define VL2_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vl2-status.h"

/* Longest text vl2_tokenizer_encode accepts (VL2_ELIMIT above). */
#define VL2_TOKENIZER_MAX_TEXT ((size_t) 1 << 29)

struct vl2_tokenizer;

/* Load DIR/tokenizer.json, and DIR/tokenizer_config.json when it exists (for
 * bos_token / eos_token).  On success *ret owns the tokenizer (free with
 * vl2_tokenizer_free).  Errors: VL2_ENOTFOUND / VL2_EIO (files),
 * VL2_EFORMAT (malformed JSON or tables), VL2_EUNSUPPORTED (a feature this
 * implementation does not have, named in the message), VL2_ENOMEM. */
int vl2_tokenizer_load(struct vl2_tokenizer **ret, const char *dir, struct vl2_err *err);

/* Free a tokenizer; NULL is allowed. */
void vl2_tokenizer_free(struct vl2_tokenizer *tok);

/* Encode @len bytes of @text (may contain NUL bytes).  No BOS/EOS is added;
 * added and special token strings in the text become their ids.  On success
 * *ret_ids is malloc'd (never NULL, the caller frees) and holds *ret_n ids.
 * Errors: VL2_EINVAL (NULL text with len > 0), VL2_ELIMIT (len over
 * VL2_TOKENIZER_MAX_TEXT, or a regex exceeding PCRE2's match limits),
 * VL2_ENOMEM. */
int vl2_tokenizer_encode(const struct vl2_tokenizer *tok, const char *text, size_t len,
                         int32_t **ret_ids, size_t *ret_n, struct vl2_err *err);

/* As vl2_tokenizer_encode(), except that only the added tokens whose ids are
 * in @allow[@n_allow] are matched in @text: the text of any other added
 * token (a turn marker, BOS, EOS...) is encoded as ordinary text.  What the
 * daemon uses for the text of clients (prompt.h). */
int vl2_tokenizer_encode_allow(const struct vl2_tokenizer *tok, const char *text, size_t len,
                               const int32_t *allow, size_t n_allow, int32_t **ret_ids,
                               size_t *ret_n, struct vl2_err *err);

/* Cancellation of long encodes (issue 18): while set, the encodes of the
 * calling thread ask @fn(@ud) every few pre-tokenizer chunks and fail with
 * VL2_ECANCELED once it answers true.  @fn NULL clears.  Per thread: a
 * thread sets it around its own encodes (the daemon's prep threads, with
 * the request's cancel flag). */
void vl2_tokenizer_set_cancel(bool (*fn)(void *ud), void *ud);

/* Decode @n ids into text, as the reference decode(ids,
 * skip_special_tokens=False): special tokens printed verbatim, the bytes of
 * the byte-level alphabet mapped back, invalid UTF-8 replaced by U+FFFD (one
 * per maximal invalid subpart).  Ids that have no token (negative, past the
 * vocabulary, holes) are skipped, as the reference does.  On success
 * *ret_text is malloc'd and NUL-terminated, *ret_len its length without the
 * NUL (ret_len may be NULL).  Errors: VL2_EINVAL, VL2_ENOMEM. */
int vl2_tokenizer_decode(const struct vl2_tokenizer *tok, const int32_t *ids, size_t n,
                         char **ret_text, size_t *ret_len, struct vl2_err *err);

/* Id of the token whose string is exactly @token (an added token's content,
 * or a vocabulary entry as spelled in tokenizer.json, e.g. "Ġthe"), or -1. */
int32_t vl2_tokenizer_id(const struct vl2_tokenizer *tok, const char *token);

/* The bytes token @id decodes to on its own (no UTF-8 repair; a byte-level
 * token may hold part of a character), *ret_len set; NULL when @id has no
 * token.  Points into @tok, valid while it lives. */
const char *vl2_tokenizer_token_bytes(const struct vl2_tokenizer *tok, int32_t id,
                                      size_t *ret_len);

/* BOS / EOS ids from tokenizer_config.json (bos_token, eos_token), or -1
 * when there is no config or it names none. */
int32_t vl2_tokenizer_bos(const struct vl2_tokenizer *tok);
int32_t vl2_tokenizer_eos(const struct vl2_tokenizer *tok);

/* Highest token id + 1. */
size_t vl2_tokenizer_vocab_size(const struct vl2_tokenizer *tok);

/* 1 if @id is an added token marked "special", else 0. */
int vl2_tokenizer_is_special(const struct vl2_tokenizer *tok, int32_t id);

/* ---- streaming decoder ------------------------------------------------ */

/* Turns generated ids into text piece by piece without ever emitting a
 * broken UTF-8 sequence: the bytes of an incomplete character are held until
 * it completes; invalid bytes become U+FFFD exactly as in
 * vl2_tokenizer_decode, so the concatenation of everything emitted (pushes
 * then flush) equals vl2_tokenizer_decode of all the ids.  Embedded by the
 * caller; vl2_detok_init / vl2_detok_done. */
struct vl2_detok {
    const struct vl2_tokenizer *tok;
    unsigned char pending[4];   /* leading bytes of an unfinished character */
    size_t n_pending;           /* 0..3 */
    char *buf;                  /* text returned by the last call (malloc'd) */
    size_t buf_size;            /* allocated bytes of buf */
};

/* Start a stream; cannot fail (memory is taken on the first push). */
void vl2_detok_init(struct vl2_detok *d, const struct vl2_tokenizer *tok);

/* Append token @id.  *ret_text / *ret_len receive the newly completed text
 * (may be empty, never NULL), valid until the next call on @d.  Unknown ids
 * add nothing.  Returns 0, or VL2_ENOMEM. */
int vl2_detok_push(struct vl2_detok *d, int32_t id, const char **ret_text, size_t *ret_len);

/* End of stream: held bytes of an unfinished character become one U+FFFD.
 * Same output contract as vl2_detok_push; the stream is empty afterwards and
 * may be reused. */
int vl2_detok_flush(struct vl2_detok *d, const char **ret_text, size_t *ret_len);

/* Release the stream's memory; the struct may be init'ed again. */
void vl2_detok_done(struct vl2_detok *d);

#endif /* VL2_TOKENIZER_H */

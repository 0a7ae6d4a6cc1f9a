/* tokenizer-impl.h - the fields of struct vl2_tokenizer and the helpers
 * shared by the files of the tokenizer module (not for other modules). */
#ifndef VL2_TOKENIZER_IMPL_H
#define VL2_TOKENIZER_IMPL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tokenizer.h"

#define TOK_MAX_ID       (1 << 24)   /* ids at or above are refused at load */
#define TOK_MAX_STEPS    16          /* pre-tokenizer steps after flattening */
#define TOK_NO_RANK      UINT32_MAX

/* ---- string -> id hash map (open addressing) --------------------------- */

struct tok_strmap_slot {
    uint32_t off, len;     /* the string, in tok->strings */
    int32_t  id;           /* -1: empty slot */
    uint32_t hash;         /* low bits of vl2__tok_hash(string) */
};

struct tok_strmap {
    struct tok_strmap_slot *slots;   /* [mask + 1] */
    size_t mask;
    size_t n;
};

/* ---- merges: (left id, right id) -> (rank, merged id) ------------------ */

struct tok_merge_slot {
    uint64_t key;          /* left << 32 | right; UINT64_MAX when empty */
    uint32_t rank;         /* index in "merges": lower merges first */
    int32_t  new_id;
};

/* ---- added tokens, matched by a byte trie ------------------------------ */

struct tok_added {
    int32_t  id;
    uint32_t off, len;     /* content in tok->strings */
    bool special, normalized, lstrip, rstrip;
};

struct tok_trie_node {
    uint32_t child;        /* first child node, 0 none */
    uint32_t sibling;      /* next sibling, 0 none */
    int32_t  added;        /* index in tok->added ending here, -1 none */
    unsigned char byte;
};

struct tok_trie {
    struct tok_trie_node *nodes;   /* [0] is the root */
    size_t n_nodes;
    bool first[256];               /* bytes that start some token */
};

/* ---- pre-tokenizer steps ----------------------------------------------- */

enum tok_step_kind { TOK_STEP_SPLIT, TOK_STEP_BYTELEVEL };

enum tok_split_behavior {
    TOK_SPLIT_REMOVED,
    TOK_SPLIT_ISOLATED,
    TOK_SPLIT_MERGED_PREV,
    TOK_SPLIT_MERGED_NEXT,
    TOK_SPLIT_CONTIGUOUS,
};

struct tok_step {
    int kind;                  /* enum tok_step_kind */
    int behavior;              /* enum tok_split_behavior */
    bool invert;               /* matches and gaps swap roles */
    bool add_prefix_space;     /* ByteLevel */
    pcre2_code *re;            /* NULL: nothing matches (empty String pattern,
                                  ByteLevel without use_regex) */
};

/* ---- the tokenizer ----------------------------------------------------- */

struct vl2_tokenizer {
    /* token strings as spelled in tokenizer.json, and decoded bytes */
    char *strings;
    size_t strings_size, strings_cap;
    size_t n_ids;              /* highest id + 1 */
    uint32_t *dec_off;         /* [n_ids] offset in strings of the decoded bytes */
    uint32_t *dec_len;         /* [n_ids] */
    uint8_t  *flags;           /* [n_ids] TOK_F_* */

    struct tok_strmap vocab;   /* model vocabulary string -> id */
    struct tok_strmap added_map; /* added token content -> id */

    struct tok_merge_slot *merges;
    size_t merge_mask;

    bool byte_level;           /* a ByteLevel pre-tokenizer maps bytes to chars */
    int32_t byte_id[256];      /* id of each byte's alphabet char, -1 none */
    uint16_t byte_cp[256];     /* the byte-level alphabet: byte -> code point */
    int32_t unk_id;            /* -1 none */
    bool fuse_unk;
    bool ignore_merges;

    struct tok_added *added;
    size_t n_added;
    struct tok_trie trie[2];   /* [0] non-normalized tokens, [1] normalized */

    struct tok_step steps[TOK_MAX_STEPS];
    size_t n_steps;

    int32_t bos, eos;
};

enum { TOK_F_TOKEN = 1, TOK_F_ADDED = 2, TOK_F_SPECIAL = 4 };  /* flags[id] */

/* ---- shared helpers ---------------------------------------------------- */

uint64_t vl2__tok_hash(const void *p, size_t n);

/* Look up @s (@n bytes) in @m; -1 when absent. */
int32_t vl2__tok_strmap_get(const struct vl2_tokenizer *tok, const struct tok_strmap *m,
                            const char *s, size_t n);

/* Rank and merged id of the pair (@a, @b); rank TOK_NO_RANK when none. */
static inline const struct tok_merge_slot *
vl2__tok_merge_find(const struct vl2_tokenizer *tok, int32_t a, int32_t b)
{
    uint64_t key = (uint64_t) (uint32_t) a << 32 | (uint32_t) b;
    size_t i = (size_t) ((key * 0x9E3779B97F4A7C15ull) >> 32) & tok->merge_mask;

    for (;;) {
        const struct tok_merge_slot *s = &tok->merges[i];
        if (s->key == key)
            return s;
        if (s->key == UINT64_MAX)
            return NULL;
        i = (i + 1) & tok->merge_mask;
    }
}

/* Length of the longest prefix of @s (@n bytes) that is valid UTF-8. */
size_t vl2__utf8_valid_prefix(const unsigned char *s, size_t n);

/* Write to @out the lossy UTF-8 repair of @s (@n bytes): every maximal
 * invalid subpart becomes U+FFFD.  When @hold is true, an incomplete but so
 * far valid sequence at the very end is not written; its length is stored in
 * *ret_held.  @out needs room for 3 * @n bytes.  Returns bytes written. */
size_t vl2__utf8_repair(const unsigned char *s, size_t n, char *out, bool hold,
                        size_t *ret_held);

/* Python str.isspace() for the code point @c. */
bool vl2__unicode_is_space_py(uint32_t c);
/* Rust char::is_whitespace() (Unicode White_Space) for @c. */
bool vl2__unicode_is_white_space(uint32_t c);

/* Decode the UTF-8 char at @s (valid, @n bytes available): code point, and
 * its length in *ret_len. */
uint32_t vl2__utf8_get(const unsigned char *s, size_t n, size_t *ret_len);

/* Write the UTF-8 form of the code point @c (at most U+10FFFF, not a
 * surrogate) to @out: 1 to 4 bytes, no NUL.  Returns its length. */
size_t vl2__utf8_put(char out[4], uint32_t c);

#endif

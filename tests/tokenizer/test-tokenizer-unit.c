/* test-tokenizer-unit.c - tokenizer semantics on small hand-made
 * tokenizer.json files (expected ids worked out by hand from the rules of
 * the reference library, or by a naive BPE written here), refusal of
 * unsupported features, bad input on the real tokenizer, and the streaming
 * decoder.
 *
 * usage: test-tokenizer-unit TOKENIZER_DIR
 */
#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tokenizer.h"

#include "../common/check.h"
#include "../common/util.h"

static char tmpdir[64];

/* ---- helpers ----------------------------------------------------------- */

static void write_file(const char *path, const char *data, size_t len)
{
    FILE *f = fopen(path, "wb");

    if (!f || fwrite(data, 1, len, f) != len) {
        fprintf(stderr, "cannot write '%s'\n", path);
        exit(1);
    }
    fclose(f);
}

static size_t put_utf8(char *out, uint32_t c)
{
    if (c < 0x80) {
        out[0] = (char) c;
        return 1;
    }
    if (c < 0x800) {
        out[0] = (char) (0xC0 | c >> 6);
        out[1] = (char) (0x80 | (c & 0x3F));
        return 2;
    }
    if (c < 0x10000) {
        out[0] = (char) (0xE0 | c >> 12);
        out[1] = (char) (0x80 | ((c >> 6) & 0x3F));
        out[2] = (char) (0x80 | (c & 0x3F));
        return 3;
    }
    out[0] = (char) (0xF0 | c >> 18);
    out[1] = (char) (0x80 | ((c >> 12) & 0x3F));
    out[2] = (char) (0x80 | ((c >> 6) & 0x3F));
    out[3] = (char) (0x80 | (c & 0x3F));
    return 4;
}

/* GPT-2 bytes_to_unicode, written out from its definition: the printable
 * bytes ! .. ~, 0xA1 .. 0xAC, 0xAE .. 0xFF keep their code point, the other
 * 68 get U+0100, U+0101, ... in byte order. */
static void alphabet_char(int b, char out[3])
{
    int x, k = 0;
    bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;

    if (printable) {
        out[put_utf8(out, (uint32_t) b)] = '\0';
        return;
    }
    for (x = 0; x < b; x++)
        if (!((x >= 0x21 && x <= 0x7E) || (x >= 0xA1 && x <= 0xAC) || x >= 0xAE))
            k++;
    out[put_utf8(out, (uint32_t) (256 + k))] = '\0';
}

static bool ids_equal(const int32_t *got, size_t n_got, const int32_t *want, size_t n_want)
{
    return n_got == n_want && (!n_want || !memcmp(got, want, n_want * sizeof(*want)));
}

static void print_ids(const char *label, const int32_t *ids, size_t n)
{
    size_t i;

    fprintf(stderr, "    %s:", label);
    for (i = 0; i < n; i++)
        fprintf(stderr, " %d", ids[i]);
    fprintf(stderr, "\n");
}

#define EXPECT_IDS(tok, text, len, ...)                                                     \
    do {                                                                                    \
        const int32_t want_[] = { __VA_ARGS__ };                                           \
        expect_ids(tok, text, len, want_, sizeof(want_) / sizeof(want_[0]), __LINE__);     \
    } while (0)

static void expect_ids(const struct vl2_tokenizer *tok, const char *text, size_t len,
                       const int32_t *want, size_t n_want, int line)
{
    struct vl2_err err = { 0 };
    int32_t *got = NULL;
    size_t n = 0;
    int r = vl2_tokenizer_encode(tok, text, len, &got, &n, &err);

    if (r < 0 || !ids_equal(got, n, want, n_want)) {
        fprintf(stderr, "FAIL line %d: encode '%.*s' (r=%d %s)\n", line, (int) len, text, r,
                err.msg);
        print_ids("got ", got, n);
        print_ids("want", want, n_want);
        check_failures++;
    }
    free(got);
}

/* ---- hand-made tokenizer.json ------------------------------------------ */

struct mini {
    cJSON *root, *model, *vocab, *merges, *added;
    int n_vocab;
    cJSON *added_specs[16];
    int n_added;
};

static int mini_tok(struct mini *m, const char *s)
{
    cJSON *v = cJSON_GetObjectItemCaseSensitive(m->vocab, s);

    if (v)
        return (int) v->valuedouble;
    cJSON_AddNumberToObject(m->vocab, s, m->n_vocab);
    return m->n_vocab++;
}

/* A tokenizer with the byte-level alphabet as ids 0..255 (byte_level), or
 * with no vocabulary yet (character level, no pre-tokenizer). */
static void mini_init(struct mini *m, bool byte_level)
{
    int b;

    memset(m, 0, sizeof(*m));
    m->root = cJSON_CreateObject();
    cJSON_AddStringToObject(m->root, "version", "1.0");
    cJSON_AddNullToObject(m->root, "truncation");
    m->added = cJSON_AddArrayToObject(m->root, "added_tokens");
    cJSON_AddNullToObject(m->root, "normalizer");
    if (byte_level) {
        cJSON *p = cJSON_AddObjectToObject(m->root, "pre_tokenizer");
        cJSON_AddStringToObject(p, "type", "ByteLevel");
        cJSON_AddFalseToObject(p, "add_prefix_space");
        cJSON_AddTrueToObject(p, "trim_offsets");
        cJSON_AddFalseToObject(p, "use_regex");
    } else {
        cJSON_AddNullToObject(m->root, "pre_tokenizer");
    }
    cJSON_AddNullToObject(m->root, "post_processor");
    cJSON *d = cJSON_AddObjectToObject(m->root, "decoder");
    cJSON_AddStringToObject(d, "type", "ByteLevel");
    m->model = cJSON_AddObjectToObject(m->root, "model");
    cJSON_AddStringToObject(m->model, "type", "BPE");
    cJSON_AddNullToObject(m->model, "dropout");
    cJSON_AddNullToObject(m->model, "unk_token");
    cJSON_AddFalseToObject(m->model, "fuse_unk");
    cJSON_AddFalseToObject(m->model, "byte_fallback");
    m->vocab = cJSON_AddObjectToObject(m->model, "vocab");
    m->merges = cJSON_AddArrayToObject(m->model, "merges");
    if (byte_level)
        for (b = 0; b < 256; b++) {
            char c[4];
            alphabet_char(b, c);
            mini_tok(m, c);
        }
}

static void mini_merge(struct mini *m, const char *a, const char *b)
{
    char s[256];

    snprintf(s, sizeof(s), "%s %s", a, b);
    cJSON_AddItemToArray(m->merges, cJSON_CreateString(s));
    snprintf(s, sizeof(s), "%s%s", a, b);
    mini_tok(m, s);
}

/* Added tokens get their ids at write time, after the vocabulary, as the
 * reference numbers them; returned by mini_load in @ids. */
static void mini_added(struct mini *m, const char *content, bool special, bool normalized,
                       bool lstrip, bool rstrip)
{
    cJSON *a = cJSON_CreateObject();

    cJSON_AddStringToObject(a, "content", content);
    cJSON_AddBoolToObject(a, "single_word", false);
    cJSON_AddBoolToObject(a, "lstrip", lstrip);
    cJSON_AddBoolToObject(a, "rstrip", rstrip);
    cJSON_AddBoolToObject(a, "normalized", normalized);
    cJSON_AddBoolToObject(a, "special", special);
    m->added_specs[m->n_added++] = a;
}

static void mini_set(struct mini *m, const char *key, const char *json)
{
    cJSON *v = cJSON_Parse(json);

    if (!v) {
        fprintf(stderr, "bad test JSON %s\n", json);
        exit(1);
    }
    cJSON_ReplaceItemInObjectCaseSensitive(m->root, key, v);
}

static int mini_load(struct mini *m, struct vl2_tokenizer **tok, int32_t *added_ids,
                     struct vl2_err *err)
{
    char path[128], *json;
    int i, r;

    for (i = 0; i < m->n_added; i++) {
        cJSON_AddNumberToObject(m->added_specs[i], "id", m->n_vocab + i);
        cJSON_AddItemToArray(m->added, m->added_specs[i]);
        if (added_ids)
            added_ids[i] = m->n_vocab + i;
    }
    json = cJSON_PrintUnformatted(m->root);
    snprintf(path, sizeof(path), "%s/tokenizer.json", tmpdir);
    write_file(path, json, strlen(json));
    free(json);
    cJSON_Delete(m->root);
    memset(err, 0, sizeof(*err));
    *tok = NULL;
    r = vl2_tokenizer_load(tok, tmpdir, err);
    (void) unlink(path);
    return r;
}

/* ---- BPE merge order --------------------------------------------------- */

/* Naive BPE straight from the definition: repeatedly merge the adjacent pair
 * whose merge rule comes first, the leftmost of equal pairs. */
static size_t naive_bpe(const char *const rules[][2], size_t n_rules, char sym[][64], size_t n)
{
    for (;;) {
        size_t best_rule = n_rules, best_pos = 0, i, r;
        for (i = 0; i + 1 < n; i++)
            for (r = 0; r < best_rule; r++)
                if (!strcmp(sym[i], rules[r][0]) && !strcmp(sym[i + 1], rules[r][1])) {
                    best_rule = r;
                    best_pos = i;
                    break;
                }
        if (best_rule == n_rules)
            return n;
        {
            char joined[64];
            snprintf(joined, sizeof(joined), "%s%s", sym[best_pos], sym[best_pos + 1]);
            memcpy(sym[best_pos], joined, sizeof(joined));
        }
        memmove(sym[best_pos + 1], sym[best_pos + 2], (n - best_pos - 2) * sizeof(sym[0]));
        n--;
    }
}

static void test_merge_order(void)
{
    static const char *const rules[][2] = {
        { "a", "b" }, { "b", "c" }, { "ab", "c" }, { "a", "a" }, { "aa", "aa" },
        { "c", "a" }, { "b", "b" }, { "ca", "b" }, { "aaaa", "b" }, { "bc", "ab" },
        { "c", "c" }, { "cc", "cc" }, { "abc", "abc" },
    };
    struct mini m;
    struct vl2_tokenizer *tok;
    struct vl2_err err;
    size_t i, k, n_rules = sizeof(rules) / sizeof(rules[0]);
    uint64_t rng = 12345;
    char text[400];
    static char sym[400][64];

    mini_init(&m, true);
    for (i = 0; i < n_rules; i++)
        mini_merge(&m, rules[i][0], rules[i][1]);
    if (mini_load(&m, &tok, NULL, &err) < 0) {
        CHECK_MSG(0, "load mini BPE: %s", err.msg);
        return;
    }
    /* worked by hand: ab first (rank 0), then ab+c (rank 2) */
    EXPECT_IDS(tok, "abc", 3, vl2_tokenizer_id(tok, "abc"));
    /* a+b (rank 0) before b+c (rank 1); then bc+ab (rank 9) */
    EXPECT_IDS(tok, "bcab", 4, vl2_tokenizer_id(tok, "bcab"));
    /* equal pairs: the leftmost merges first */
    EXPECT_IDS(tok, "aaa", 3, vl2_tokenizer_id(tok, "aa"), 'a' - 0);
    /* 199 a's (a long piece): 99 aa + a, then 49 aaaa + aa + a */
    {
        int32_t want[51];
        memset(text, 'a', 199);
        for (i = 0; i < 49; i++)
            want[i] = vl2_tokenizer_id(tok, "aaaa");
        want[49] = vl2_tokenizer_id(tok, "aa");
        want[50] = 'a';
        expect_ids(tok, text, 199, want, 51, __LINE__);
    }

    /* random strings over {a, b, c} of 1..300 bytes against the naive BPE:
     * covers both merge paths (short and long pieces) */
    for (k = 0; k < 300; k++) {
        size_t n = 1 + k % 300, n_sym, j;
        int32_t want[400];
        for (i = 0; i < n; i++) {
            rng = rng * 6364136223846793005ull + 1442695040888963407ull;
            text[i] = "abc"[(rng >> 33) % 3];
            sym[i][0] = text[i];
            sym[i][1] = '\0';
        }
        n_sym = naive_bpe(rules, n_rules, sym, n);
        for (j = 0; j < n_sym; j++)
            want[j] = vl2_tokenizer_id(tok, sym[j]);
        expect_ids(tok, text, n, want, n_sym, __LINE__);
    }
    vl2_tokenizer_free(tok);
}

/* ---- added tokens ------------------------------------------------------ */

static void test_added_tokens(void)
{
    struct mini m;
    struct vl2_tokenizer *tok;
    struct vl2_err err;
    int32_t ids[8];

    mini_init(&m, true);
    mini_added(&m, "<x>", true, false, false, false);     /* ids[0] */
    mini_added(&m, "<xy>", false, false, false, false);   /* ids[1] */
    mini_added(&m, "cb", false, true, false, false);      /* ids[2]: normalized */
    mini_added(&m, "b<x>", false, false, false, false);   /* ids[3] */
    mini_added(&m, "<m>", true, false, true, true);       /* ids[4]: lstrip + rstrip */
    if (mini_load(&m, &tok, ids, &err) < 0) {
        CHECK_MSG(0, "load mini added: %s", err.msg);
        return;
    }
    /* longest at the leftmost position */
    EXPECT_IDS(tok, "<xy>", 4, ids[1]);
    EXPECT_IDS(tok, "<x>y", 4, ids[0], 'y');
    EXPECT_IDS(tok, "a<x>a", 5, 'a', ids[0], 'a');
    EXPECT_IDS(tok, "<x><x>", 6, ids[0], ids[0]);
    /* the normalized token "cb" is matched in the rest of the text... */
    EXPECT_IDS(tok, "acb", 3, 'a', ids[2]);
    /* ...only after the non-normalized tokens: "b<x>" wins over "cb" */
    EXPECT_IDS(tok, "cb<x>", 5, 'c', ids[3]);
    /* lstrip / rstrip take the spaces around the token */
    EXPECT_IDS(tok, "a  <m>  a", 9, 'a', ids[4], 'a');
    EXPECT_IDS(tok, "a\t<m>\n", 6, 'a', ids[4]);
    CHECK_MSG(vl2_tokenizer_is_special(tok, ids[0]) && !vl2_tokenizer_is_special(tok, ids[1]) &&
              !vl2_tokenizer_is_special(tok, 'a'),
          "is_special");
    CHECK_MSG(vl2_tokenizer_id(tok, "<xy>") == ids[1] && vl2_tokenizer_id(tok, "cb") == ids[2] &&
              vl2_tokenizer_id(tok, "nope") == -1,
          "vl2_tokenizer_id");
    CHECK_MSG(vl2_tokenizer_vocab_size(tok) == (size_t) ids[4] + 1, "vocab size");
    CHECK_MSG(vl2_tokenizer_bos(tok) == -1 && vl2_tokenizer_eos(tok) == -1, "no config: no bos/eos");
    vl2_tokenizer_free(tok);
}

/* ---- pre-tokenizers ---------------------------------------------------- */

/* Character-level vocabulary with whole pieces as tokens and ignore_merges,
 * so that each piece a split produces shows as one id. */
static struct vl2_tokenizer *split_tokenizer(const char *pretok, const char *const *pieces)
{
    struct mini m;
    struct vl2_tokenizer *tok;
    struct vl2_err err;
    const char *chars[] = { "a", "b", "c", "-", "1", "2", "3", " ", "\xE1\xA0\x8E", NULL };
    size_t i;

    mini_init(&m, false);
    for (i = 0; chars[i]; i++)
        mini_tok(&m, chars[i]);
    for (i = 0; pieces[i]; i++)
        mini_tok(&m, pieces[i]);
    cJSON_AddTrueToObject(m.model, "ignore_merges");
    mini_set(&m, "pre_tokenizer", pretok);
    if (mini_load(&m, &tok, NULL, &err) < 0) {
        CHECK_MSG(0, "load split tokenizer %s: %s", pretok, err.msg);
        return NULL;
    }
    return tok;
}

#define ID(s) vl2_tokenizer_id(tok, s)

static void test_split_behaviors(void)
{
    static const char *const pieces[] = { "a-", "b-", "-b", "-c", "--", "123", "12",
                                          "a\xE1\xA0\x8E" "b", NULL };
    struct vl2_tokenizer *tok;
    const char *text = "a-b--c";

    /* the reference's documented example "the-final--countdown", with
     * "-" as delimiter, for each behavior */
    tok = split_tokenizer("{\"type\":\"Split\",\"pattern\":{\"String\":\"-\"},"
                          "\"behavior\":\"Isolated\",\"invert\":false}", pieces);
    if (tok) {
        EXPECT_IDS(tok, text, 6, ID("a"), ID("-"), ID("b"), ID("-"), ID("-"), ID("c"));
        vl2_tokenizer_free(tok);
    }
    tok = split_tokenizer("{\"type\":\"Split\",\"pattern\":{\"String\":\"-\"},"
                          "\"behavior\":\"Removed\",\"invert\":false}", pieces);
    if (tok) {
        EXPECT_IDS(tok, text, 6, ID("a"), ID("b"), ID("c"));
        vl2_tokenizer_free(tok);
    }
    tok = split_tokenizer("{\"type\":\"Split\",\"pattern\":{\"String\":\"-\"},"
                          "\"behavior\":\"MergedWithPrevious\",\"invert\":false}", pieces);
    if (tok) {
        EXPECT_IDS(tok, text, 6, ID("a-"), ID("b-"), ID("-"), ID("c"));
        vl2_tokenizer_free(tok);
    }
    tok = split_tokenizer("{\"type\":\"Split\",\"pattern\":{\"String\":\"-\"},"
                          "\"behavior\":\"MergedWithNext\",\"invert\":false}", pieces);
    if (tok) {
        EXPECT_IDS(tok, text, 6, ID("a"), ID("-b"), ID("-"), ID("-c"));
        vl2_tokenizer_free(tok);
    }
    tok = split_tokenizer("{\"type\":\"Split\",\"pattern\":{\"String\":\"-\"},"
                          "\"behavior\":\"Contiguous\",\"invert\":false}", pieces);
    if (tok) {
        EXPECT_IDS(tok, text, 6, ID("a"), ID("-"), ID("b"), ID("--"), ID("c"));
        vl2_tokenizer_free(tok);
    }
    /* invert: the regex matches what is not a delimiter, so the dashes go */
    tok = split_tokenizer("{\"type\":\"Split\",\"pattern\":{\"Regex\":\"[^-]\"},"
                          "\"behavior\":\"Removed\",\"invert\":true}", pieces);
    if (tok) {
        EXPECT_IDS(tok, text, 6, ID("a"), ID("b"), ID("c"));
        vl2_tokenizer_free(tok);
    }
    /* Digits */
    tok = split_tokenizer("{\"type\":\"Digits\",\"individual_digits\":true}", pieces);
    if (tok) {
        EXPECT_IDS(tok, "a123", 4, ID("a"), ID("1"), ID("2"), ID("3"));
        vl2_tokenizer_free(tok);
    }
    tok = split_tokenizer("{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Digits\","
                          "\"individual_digits\":false}]}", pieces);
    if (tok) {
        EXPECT_IDS(tok, "a123", 4, ID("a"), ID("123"));
        vl2_tokenizer_free(tok);
    }
    /* \p{N}{1,3} counts from the left */
    tok = split_tokenizer("{\"type\":\"Split\",\"pattern\":{\"Regex\":\"\\\\p{N}{1,3}\"},"
                          "\"behavior\":\"Isolated\",\"invert\":false}", pieces);
    if (tok) {
        EXPECT_IDS(tok, "12312", 5, ID("123"), ID("12"));
        vl2_tokenizer_free(tok);
    }
    /* \s as Oniguruma means it: U+180E (Mongolian vowel separator) is not
     * White_Space, though PCRE2's own \s would take it */
    tok = split_tokenizer("{\"type\":\"Split\",\"pattern\":{\"Regex\":\"\\\\s+\"},"
                          "\"behavior\":\"Removed\",\"invert\":false}", pieces);
    if (tok) {
        EXPECT_IDS(tok, "a\xE1\xA0\x8E" "b c", 7, ID("a\xE1\xA0\x8E" "b"), ID("c"));
        vl2_tokenizer_free(tok);
    }
}

static void test_byte_level_options(void)
{
    struct mini m;
    struct vl2_tokenizer *tok;
    struct vl2_err err;
    char sp[4];

    alphabet_char(' ', sp);
    /* add_prefix_space: "ab" is tokenized as " ab" */
    mini_init(&m, true);
    mini_set(&m, "pre_tokenizer", "{\"type\":\"ByteLevel\",\"add_prefix_space\":true,"
                                  "\"use_regex\":false}");
    if (mini_load(&m, &tok, NULL, &err) == 0) {
        EXPECT_IDS(tok, "ab", 2, ID(sp), 'a', 'b');
        EXPECT_IDS(tok, " a", 2, ID(sp), 'a');
        vl2_tokenizer_free(tok);
    } else {
        CHECK_MSG(0, "load: %s", err.msg);
    }
    /* use_regex: GPT-2's split; "a b" is "a" + " b", and the merge Ġ b
     * applies inside the second piece only */
    mini_init(&m, true);
    mini_merge(&m, sp, "b");
    mini_merge(&m, "a", sp);
    mini_set(&m, "pre_tokenizer", "{\"type\":\"ByteLevel\",\"add_prefix_space\":false}");
    if (mini_load(&m, &tok, NULL, &err) == 0) {
        char spb[8];
        snprintf(spb, sizeof(spb), "%sb", sp);
        EXPECT_IDS(tok, "a b", 3, 'a', ID(spb));
        vl2_tokenizer_free(tok);
    } else {
        CHECK_MSG(0, "load: %s", err.msg);
    }
}

/* The pre-tokenizer shape of the DeepSeek-LLM (VL2-small, 102400) tokenizer:
 * newline split, letters with one optional leading space, punctuation runs,
 * trailing spaces, CJK runs, single digits, ByteLevel (letter class
 * shortened here).  Pieces worked out by hand from those rules. */
static void test_deepseek_llm_shape(void)
{
    struct mini m;
    struct vl2_tokenizer *tok;
    struct vl2_err err;
    char spsp[8], spw[16], nl[4];

    mini_init(&m, true);
    alphabet_char(' ', spsp);
    alphabet_char(' ', spsp + strlen(spsp));
    alphabet_char(' ', spw);
    strcat(spw, "world");
    alphabet_char('\n', nl);
    mini_tok(&m, "Hello");
    mini_tok(&m, spw);
    mini_tok(&m, spsp);
    cJSON_AddTrueToObject(m.model, "ignore_merges");
    mini_set(&m, "pre_tokenizer",
             "{\"type\":\"Sequence\",\"pretokenizers\":["
             "{\"type\":\"Split\",\"pattern\":{\"Regex\":\"[\\r\\n]\"},\"behavior\":\"Isolated\",\"invert\":false},"
             "{\"type\":\"Split\",\"pattern\":{\"Regex\":\"\\\\s?[A-Za-z\xC2\xB5\xC3\x80-\xC3\x96]+\"},\"behavior\":\"Isolated\",\"invert\":false},"
             "{\"type\":\"Split\",\"pattern\":{\"Regex\":\"\\\\s?[!-/:-~\xEF\xBC\x81-\xEF\xBC\x8F\xE3\x80\x80-\xE3\x80\x82]+\"},\"behavior\":\"Isolated\",\"invert\":false},"
             "{\"type\":\"Split\",\"pattern\":{\"Regex\":\"\\\\s+$\"},\"behavior\":\"Isolated\",\"invert\":false},"
             "{\"type\":\"Split\",\"pattern\":{\"Regex\":\"[\xE4\xB8\x80-\xE9\xBE\xA5\xE0\xA0\x80-\xE4\xB8\x80\xEA\xB0\x80-\xED\x9F\xBF]+\"},\"behavior\":\"Isolated\",\"invert\":false},"
             "{\"type\":\"Digits\",\"individual_digits\":true},"
             "{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"trim_offsets\":true,\"use_regex\":false}]}");
    if (mini_load(&m, &tok, NULL, &err) < 0) {
        CHECK_MSG(0, "load DeepSeek-LLM shaped pre-tokenizer: %s", err.msg);
        return;
    }
    EXPECT_IDS(tok, "Hello world\n  1234", 18, ID("Hello"), ID(spw), ID(nl), ID(spsp), '1', '2',
               '3', '4');
    EXPECT_IDS(tok, "a  \n", 4, 'a', ID(spsp), ID(nl));
    vl2_tokenizer_free(tok);
}

static void test_unk(void)
{
    struct mini m;
    struct vl2_tokenizer *tok;
    struct vl2_err err;
    int k;

    for (k = 0; k < 3; k++) {
        mini_init(&m, false);
        mini_tok(&m, "a");
        mini_tok(&m, "b");
        mini_tok(&m, "<unk>");
        if (k < 2)
            cJSON_ReplaceItemInObject(m.model, "unk_token", cJSON_CreateString("<unk>"));
        cJSON_ReplaceItemInObject(m.model, "fuse_unk", cJSON_CreateBool(k == 1));
        if (mini_load(&m, &tok, NULL, &err) < 0) {
            CHECK_MSG(0, "load unk: %s", err.msg);
            continue;
        }
        if (k == 0)
            EXPECT_IDS(tok, "azzb", 4, 0, 2, 2, 1);
        else if (k == 1)
            EXPECT_IDS(tok, "azzb", 4, 0, 2, 1);
        else
            EXPECT_IDS(tok, "azzb", 4, 0, 1);   /* no unk token: dropped */
        vl2_tokenizer_free(tok);
    }
}

/* ---- refused features and broken files --------------------------------- */

static void expect_refused(struct mini *m, int code, const char *needle, int line)
{
    struct vl2_tokenizer *tok;
    struct vl2_err err;
    int r = mini_load(m, &tok, NULL, &err);

    if (r != code || !strstr(err.msg, needle)) {
        fprintf(stderr, "FAIL line %d: load gave %d '%s', want %d naming '%s'\n", line, r,
                err.msg, code, needle);
        check_failures++;
    }
    if (r == 0)
        vl2_tokenizer_free(tok);
}

static void test_refused(const char *real_dir)
{
    struct mini m;
    struct vl2_tokenizer *tok = NULL;
    struct vl2_err err = { 0 };
    char path[256], dst[256], *json, *p;
    size_t len;
    int r;

    mini_init(&m, true);
    cJSON_ReplaceItemInObject(m.model, "type", cJSON_CreateString("WordPiece"));
    expect_refused(&m, VL2_EUNSUPPORTED, "WordPiece", __LINE__);
    mini_init(&m, true);
    mini_set(&m, "pre_tokenizer", "{\"type\":\"Metaspace\",\"replacement\":\"_\"}");
    expect_refused(&m, VL2_EUNSUPPORTED, "Metaspace", __LINE__);
    mini_init(&m, true);
    mini_set(&m, "pre_tokenizer", "{\"type\":\"Sequence\",\"pretokenizers\":"
                                  "[{\"type\":\"Whitespace\"}]}");
    expect_refused(&m, VL2_EUNSUPPORTED, "Whitespace", __LINE__);
    mini_init(&m, true);
    mini_set(&m, "pre_tokenizer", "{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":"
                                  "\"ByteLevel\"},{\"type\":\"Digits\"}]}");
    expect_refused(&m, VL2_EUNSUPPORTED, "ByteLevel must be the last", __LINE__);
    mini_init(&m, true);
    mini_set(&m, "normalizer", "{\"type\":\"NFC\"}");
    expect_refused(&m, VL2_EUNSUPPORTED, "NFC", __LINE__);
    mini_init(&m, true);
    mini_set(&m, "normalizer", "{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"Lowercase\"}]}");
    expect_refused(&m, VL2_EUNSUPPORTED, "Lowercase", __LINE__);
    mini_init(&m, true);
    mini_set(&m, "decoder", "{\"type\":\"Metaspace\"}");
    expect_refused(&m, VL2_EUNSUPPORTED, "Metaspace", __LINE__);
    mini_init(&m, true);
    cJSON_ReplaceItemInObject(m.model, "byte_fallback", cJSON_CreateTrue());
    expect_refused(&m, VL2_EUNSUPPORTED, "byte_fallback", __LINE__);
    mini_init(&m, true);
    cJSON_ReplaceItemInObject(m.model, "dropout", cJSON_CreateNumber(0.1));
    expect_refused(&m, VL2_EUNSUPPORTED, "dropout", __LINE__);
    mini_init(&m, true);
    cJSON_AddStringToObject(m.model, "continuing_subword_prefix", "##");
    expect_refused(&m, VL2_EUNSUPPORTED, "continuing_subword_prefix", __LINE__);
    mini_init(&m, true);
    mini_added(&m, "<w>", true, false, false, false);
    cJSON_ReplaceItemInObject(m.added_specs[0], "single_word", cJSON_CreateTrue());
    expect_refused(&m, VL2_EUNSUPPORTED, "single_word", __LINE__);
    mini_init(&m, true);
    mini_set(&m, "pre_tokenizer", "{\"type\":\"Split\",\"pattern\":{\"Regex\":\"x\"},"
                                  "\"behavior\":\"Bogus\"}");
    expect_refused(&m, VL2_EUNSUPPORTED, "Bogus", __LINE__);
    mini_init(&m, true);
    mini_set(&m, "truncation", "{\"max_length\":5}");
    expect_refused(&m, VL2_EUNSUPPORTED, "truncation", __LINE__);

    /* broken files */
    mini_init(&m, true);
    mini_set(&m, "pre_tokenizer", "{\"type\":\"Split\",\"pattern\":{\"Regex\":\"(a\"},"
                                  "\"behavior\":\"Isolated\"}");
    expect_refused(&m, VL2_EFORMAT, "regex '(a'", __LINE__);
    mini_init(&m, true);
    cJSON_AddItemToArray(m.merges, cJSON_CreateString("a zz"));
    expect_refused(&m, VL2_EFORMAT, "'zz' is not in the vocabulary", __LINE__);
    mini_init(&m, true);
    cJSON_AddItemToArray(m.merges, cJSON_CreateString("a b"));   /* "ab" missing */
    expect_refused(&m, VL2_EFORMAT, "result 'ab'", __LINE__);
    mini_init(&m, true);
    cJSON_AddItemToArray(m.merges, cJSON_CreateString("a b c"));
    expect_refused(&m, VL2_EFORMAT, "merge 0", __LINE__);
    mini_init(&m, true);
    cJSON_AddNumberToObject(m.vocab, "dup", 5);
    expect_refused(&m, VL2_EFORMAT, "id 5", __LINE__);
    mini_init(&m, true);
    cJSON_AddNumberToObject(m.vocab, "neg", -3);
    expect_refused(&m, VL2_EFORMAT, "'neg'", __LINE__);
    mini_init(&m, true);
    mini_added(&m, "<z>", true, false, false, false);
    cJSON_AddNumberToObject(m.added_specs[0], "id", 999);   /* the reference gives 256 */
    cJSON_AddItemToArray(m.added, m.added_specs[0]);
    m.n_added = 0;
    expect_refused(&m, VL2_EFORMAT, "would give it id 256", __LINE__);

    snprintf(path, sizeof(path), "%s/tokenizer.json", tmpdir);
    write_file(path, "{\"model\": {\"type\": \"BPE\", ", strlen("{\"model\": {\"type\": \"BPE\", "));
    r = vl2_tokenizer_load(&tok, tmpdir, &err);
    CHECK_MSG(r == VL2_EFORMAT && strstr(err.msg, "invalid JSON"), "truncated JSON: %d %s", r,
          err.msg);
    write_file(path, "[1, 2]", 6);
    r = vl2_tokenizer_load(&tok, tmpdir, &err);
    CHECK_MSG(r == VL2_EFORMAT, "JSON array: %d %s", r, err.msg);
    (void) unlink(path);
    r = vl2_tokenizer_load(&tok, tmpdir, &err);
    CHECK_MSG(r == VL2_ENOTFOUND && strstr(err.msg, "tokenizer.json"), "missing file: %d %s", r,
          err.msg);

    /* the real file with another model type, and an unknown pre-tokenizer */
    snprintf(path, sizeof(path), "%s/tokenizer.json", real_dir);
    json = test_slurp(path, &len);
    CHECK_MSG(json != NULL, "cannot read %s", path);
    if (json) {
        snprintf(dst, sizeof(dst), "%s/tokenizer.json", tmpdir);
        p = strstr(json, "\"type\": \"BPE\"");
        CHECK_MSG(p != NULL, "no BPE in the real file");
        if (p) {
            memcpy(p, "\"type\": \"Uni\"", 13);
            write_file(dst, json, len);
            r = vl2_tokenizer_load(&tok, tmpdir, &err);
            CHECK_MSG(r == VL2_EUNSUPPORTED && strstr(err.msg, "model type 'Uni'"),
                  "real file, model Uni: %d %s", r, err.msg);
            memcpy(p, "\"type\": \"BPE\"", 13);
        }
        p = strstr(json, "\"type\": \"Split\"");
        CHECK_MSG(p != NULL, "no Split in the real file");
        if (p) {
            memcpy(p, "\"type\": \"Spilt\"", 15);
            write_file(dst, json, len);
            r = vl2_tokenizer_load(&tok, tmpdir, &err);
            CHECK_MSG(r == VL2_EUNSUPPORTED && strstr(err.msg, "pre-tokenizer 'Spilt'"),
                  "real file, pre-tokenizer Spilt: %d %s", r, err.msg);
        }
        (void) unlink(dst);
        free(json);
    }
}

/* ---- bad input on the real tokenizer ----------------------------------- */

static void encode_or_fail(const struct vl2_tokenizer *tok, const char *s, size_t n,
                           int32_t **ids, size_t *n_ids, const char *what)
{
    struct vl2_err err = { 0 };

    *ids = NULL;
    *n_ids = 0;
    CHECK_MSG(vl2_tokenizer_encode(tok, s, n, ids, n_ids, &err) == 0, "%s: %s", what, err.msg);
}

static bool roundtrips(const struct vl2_tokenizer *tok, const char *s, size_t n)
{
    int32_t *ids;
    size_t n_ids, len;
    char *text = NULL;
    bool ok;

    encode_or_fail(tok, s, n, &ids, &n_ids, "roundtrip encode");
    ok = ids && vl2_tokenizer_decode(tok, ids, n_ids, &text, &len, NULL) == 0 && len == n &&
         !memcmp(text, s, n);
    free(ids);
    free(text);
    return ok;
}

static void same_ids(const struct vl2_tokenizer *tok, const char *a, size_t na, const char *b,
                     size_t nb, const char *what)
{
    int32_t *ia, *ib;
    size_t n1, n2;

    encode_or_fail(tok, a, na, &ia, &n1, what);
    encode_or_fail(tok, b, nb, &ib, &n2, what);
    CHECK_MSG(ia && ib && ids_equal(ia, n1, ib, n2), "%s: ids differ", what);
    free(ia);
    free(ib);
}

static void test_bad_input(const struct vl2_tokenizer *tok)
{
    static const char fffd[] = "\xEF\xBF\xBD";
    struct vl2_err err = { 0 };
    int32_t *ids = NULL, img = vl2_tokenizer_id(tok, "<image>");
    size_t n, i, big = 10u << 20;
    char *s;
    uint64_t rng = 99;

    /* invalid UTF-8 is replaced by U+FFFD, one per maximal invalid subpart */
    same_ids(tok, "\xFF", 1, fffd, 3, "lone 0xFF");
    same_ids(tok, "a\xC3", 2, "a\xEF\xBF\xBD", 4, "truncated sequence");
    same_ids(tok, "x\xED\xA0\x80y", 5, "x\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBDy", 11,
             "UTF-8 encoded surrogate");
    same_ids(tok, "\xF0\x9F\x98", 3, fffd, 3, "truncated emoji");
    same_ids(tok, "\xC0\xAF", 2, "\xEF\xBF\xBD\xEF\xBF\xBD", 6, "overlong");
    CHECK_MSG(vl2_tokenizer_encode(tok, NULL, 5, &ids, &n, &err) == VL2_EINVAL, "NULL text");
    CHECK_MSG(vl2_tokenizer_encode(tok, "", 0, &ids, &n, &err) == 0 && n == 0 && ids, "empty text");
    free(ids);
    CHECK_MSG(roundtrips(tok, "a\0b\0\0", 5), "NUL bytes");

    /* 10 MB without a space: one pre-token */
    s = malloc(big);
    for (i = 0; i < big; i++) {
        rng = rng * 6364136223846793005ull + 1442695040888963407ull;
        s[i] = (char) ('a' + (rng >> 33) % 26);
    }
    CHECK_MSG(roundtrips(tok, s, big), "10 MB of letters");
    memset(s, '7', big / 4);
    CHECK_MSG(roundtrips(tok, s, big / 4), "2.5 MB of digits");

    /* only special tokens */
    for (i = 0; i + 7 <= big / 4; i += 7)
        memcpy(s + i, "<image>", 7);
    encode_or_fail(tok, s, i, &ids, &n, "special tokens only");
    CHECK_MSG(ids && n == i / 7, "special tokens only: %zu ids", n);
    for (i = 0; ids && i < n; i++)
        if (ids[i] != img) {
            CHECK_MSG(0, "special tokens only: id %zu is %d", i, ids[i]);
            break;
        }
    free(ids);
    free(s);

    /* random valid UTF-8 from all planes round-trips; random bytes encode */
    for (i = 0; i < 2000; i++) {
        char buf[400];
        size_t len = 0, k, cnt = 1 + i % 60;
        for (k = 0; k < cnt; k++) {
            uint32_t c;
            rng = rng * 6364136223846793005ull + 1442695040888963407ull;
            switch ((rng >> 60) & 3) {
            case 0: c = 0x20 + (uint32_t) ((rng >> 20) % 0x60); break;
            case 1: c = (uint32_t) ((rng >> 20) % 0x3000); break;
            case 2: c = 0x4E00 + (uint32_t) ((rng >> 20) % 0x5200); break;
            default: c = (uint32_t) ((rng >> 20) % 0x110000); break;
            }
            if (c >= 0xD800 && c < 0xE000)
                c = 0xFFFD;
            len += put_utf8(buf + len, c);
        }
        CHECK_MSG(roundtrips(tok, buf, len), "random text %zu", i);
        for (k = 0; k < len; k++) {
            rng = rng * 6364136223846793005ull + 1442695040888963407ull;
            buf[k] = (char) (rng >> 56);
        }
        encode_or_fail(tok, buf, len, &ids, &n, "random bytes");
        free(ids);
    }
}

/* ---- streaming decoder ------------------------------------------------- */

static int32_t byte_id(const struct vl2_tokenizer *tok, int b)
{
    char c[4];

    alphabet_char(b, c);
    return vl2_tokenizer_id(tok, c);
}

/* Strict UTF-8 check, from the definition (Unicode table 3-7). */
static bool valid_utf8(const char *p, size_t n)
{
    const unsigned char *s = (const unsigned char *) p;
    size_t i = 0;

    while (i < n) {
        unsigned c = s[i], need, lo = 0x80, hi = 0xBF, k;
        if (c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0xC2 && c <= 0xDF) need = 1;
        else if (c >= 0xE0 && c <= 0xEF) need = 2;
        else if (c >= 0xF0 && c <= 0xF4) need = 3;
        else return false;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
        if (i + need >= n)
            return false;
        for (k = 1; k <= need; k++) {
            unsigned b = s[i + k];
            if (k == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xBF))
                return false;
        }
        i += need + 1;
    }
    return true;
}

/* Push @n ids; the output of each push must be @want[i] (a C string). */
static void expect_stream(const struct vl2_tokenizer *tok, const int32_t *ids,
                          const char *const *want, size_t n, const char *want_flush, int line)
{
    struct vl2_detok d;
    const char *out;
    size_t len, i;

    vl2_detok_init(&d, tok);
    for (i = 0; i < n; i++) {
        CHECK_MSG(vl2_detok_push(&d, ids[i], &out, &len) == 0, "line %d: push", line);
        if (len != strlen(want[i]) || memcmp(out, want[i], len)) {
            fprintf(stderr, "FAIL line %d: push %zu gave '%.*s', want '%s'\n", line, i, (int) len,
                    out, want[i]);
            check_failures++;
        }
    }
    CHECK_MSG(vl2_detok_flush(&d, &out, &len) == 0, "line %d: flush", line);
    if (len != strlen(want_flush) || memcmp(out, want_flush, len)) {
        fprintf(stderr, "FAIL line %d: flush gave '%.*s', want '%s'\n", line, (int) len, out,
                want_flush);
        check_failures++;
    }
    vl2_detok_done(&d);
}

#define R "\xEF\xBF\xBD"

static void test_detok(const struct vl2_tokenizer *tok)
{
    int32_t img = vl2_tokenizer_id(tok, "<image>");
    uint64_t rng = 7;
    size_t k;

    {   /* golden: "😀" is [28927, 225], a character split over two tokens */
        int32_t ids[] = { 28927, 225 };
        const char *want[] = { "", "\xF0\x9F\x98\x80" };
        expect_stream(tok, ids, want, 2, "", __LINE__);
    }
    {   /* 中 = E4 B8 AD, one byte per token */
        int32_t ids[] = { byte_id(tok, 0xE4), byte_id(tok, 0xB8), byte_id(tok, 0xAD) };
        const char *want[] = { "", "", "\xE4\xB8\xAD" };
        expect_stream(tok, ids, want, 3, "", __LINE__);
    }
    {   /* E4 then 'A': the lead byte is a maximal subpart of its own */
        int32_t ids[] = { byte_id(tok, 0xE4), byte_id(tok, 'A') };
        const char *want[] = { "", R "A" };
        expect_stream(tok, ids, want, 2, "", __LINE__);
    }
    {   /* unfinished 4-byte sequence at the end: one replacement at flush */
        int32_t ids[] = { byte_id(tok, 0xF0), byte_id(tok, 0x9F), byte_id(tok, 0x98) };
        const char *want[] = { "", "", "" };
        expect_stream(tok, ids, want, 3, R, __LINE__);
    }
    {   /* ED A0 80 (an encoded surrogate): three replacements */
        int32_t ids[] = { byte_id(tok, 0xED), byte_id(tok, 0xA0), byte_id(tok, 0x80) };
        const char *want[] = { "", R R, R };
        expect_stream(tok, ids, want, 3, "", __LINE__);
    }
    {   /* C0 can never start a sequence; FF neither */
        int32_t ids[] = { byte_id(tok, 0xC0), byte_id(tok, 0x80), byte_id(tok, 0xFF) };
        const char *want[] = { R, R, R };
        expect_stream(tok, ids, want, 3, "", __LINE__);
    }
    {   /* F4 90: past U+10FFFF */
        int32_t ids[] = { byte_id(tok, 0xF4), byte_id(tok, 0x90), byte_id(tok, 0x80),
                          byte_id(tok, 0x80) };
        const char *want[] = { "", R R, R, R };
        expect_stream(tok, ids, want, 4, "", __LINE__);
    }
    {   /* E0 80: overlong */
        int32_t ids[] = { byte_id(tok, 0xE0), byte_id(tok, 0x80) };
        const char *want[] = { "", R R };
        expect_stream(tok, ids, want, 2, "", __LINE__);
    }
    {   /* a special token after a held byte; unknown ids add nothing */
        int32_t ids[] = { byte_id(tok, 0xE4), img, byte_id(tok, 0xE4), 128900, -5,
                          byte_id(tok, 0xB8), byte_id(tok, 0xAD), 1 };
        const char *want[] = { "", R "<image>", "", "", "", "", "\xE4\xB8\xAD",
                               "<\xEF\xBD\x9C" "end\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>" };
        expect_stream(tok, ids, want, 8, "", __LINE__);
    }

    /* random ids (byte tokens, ordinary tokens, specials, unknown ids): the
     * stream equals decode() and every piece is valid UTF-8 */
    for (k = 0; k < 500; k++) {
        int32_t ids[64];
        size_t n = 1 + k % 64, i, len, o = 0, plen;
        char *whole;
        static char stream[64 * 256 * 3 + 8];
        const char *piece;
        struct vl2_detok d;
        for (i = 0; i < n; i++) {
            rng = rng * 6364136223846793005ull + 1442695040888963407ull;
            switch ((rng >> 61) & 3) {
            case 0: case 1: ids[i] = byte_id(tok, (int) ((rng >> 20) & 0xFF)); break;
            case 2: ids[i] = (int32_t) ((rng >> 20) % 129300); break;
            default: ids[i] = (int32_t) ((rng >> 20) % 140000) - 100; break;
            }
        }
        CHECK_MSG(vl2_tokenizer_decode(tok, ids, n, &whole, &len, NULL) == 0, "decode");
        vl2_detok_init(&d, tok);
        for (i = 0; i <= n; i++) {
            if (i < n)
                CHECK_MSG(vl2_detok_push(&d, ids[i], &piece, &plen) == 0, "push");
            else
                CHECK_MSG(vl2_detok_flush(&d, &piece, &plen) == 0, "flush");
            CHECK_MSG(valid_utf8(piece, plen), "random %zu: piece %zu is not valid UTF-8", k, i);
            if (o + plen < sizeof(stream))
                memcpy(stream + o, piece, plen);
            o += plen;
        }
        vl2_detok_done(&d);
        CHECK_MSG(o == len && !memcmp(stream, whole, len), "random %zu: stream != decode", k);
        CHECK_MSG(valid_utf8(whole, len) && strlen(whole) <= len, "random %zu: decode invalid", k);
        free(whole);
    }
}

int main(int argc, char **argv)
{
    struct vl2_tokenizer *tok = NULL;
    struct vl2_err err = { 0 };

    if (argc < 2) {
        fprintf(stderr, "usage: %s TOKENIZER_DIR\n", argv[0]);
        return 2;
    }
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/vl2-tok-test-XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    test_merge_order();
    test_added_tokens();
    test_split_behaviors();
    test_byte_level_options();
    test_deepseek_llm_shape();
    test_unk();
    test_refused(argv[1]);
    if (vl2_tokenizer_load(&tok, argv[1], &err) < 0) {
        fprintf(stderr, "FAIL load: %s\n", err.msg);
        check_failures++;
    } else {
        CHECK_MSG(vl2_tokenizer_bos(tok) == 0 && vl2_tokenizer_eos(tok) == 1, "bos/eos from config");
        CHECK_MSG(vl2_tokenizer_vocab_size(tok) == 128823, "vocab size %zu",
              vl2_tokenizer_vocab_size(tok));
        test_bad_input(tok);
        test_detok(tok);
        vl2_tokenizer_free(tok);
    }
    (void) rmdir(tmpdir);
    if (check_failures)
        fprintf(stderr, "%d check_failures\n", check_failures);
    else
        printf("all tokenizer unit tests passed\n");
    return check_failures ? 1 : 0;
}

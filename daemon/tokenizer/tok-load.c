/* tok-load.c - read tokenizer.json (+ tokenizer_config.json) into the tables
 * of struct vl2_tokenizer: vocabulary and merge hash maps, added-token
 * tries, compiled pre-tokenizer regexes, decoded bytes of every id. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer-impl.h"
#include "weights.h"

#define MAX_JSON_SIZE ((size_t) 1 << 30)

/* The ByteLevel pre-tokenizer's own split regex (GPT-2's), used when its
 * use_regex option is on.  A constant of that component, not of a model. */
static const char gpt2_regex[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

struct loader {
    struct vl2_tokenizer *tok;
    const char *path;          /* for messages */
    struct vl2_err *err;
    int cp_byte[324];          /* byte-level alphabet code point -> byte, -1 */
    int byte_cp[256];
};

static int fail(struct loader *ld, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(struct loader *ld, int code, const char *fmt, ...)
{
    char msg[VL2_ERR_MSG_SIZE];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    return vl2_err_set(ld->err, code, "tokenizer: '%s': %s", ld->path, msg);
}

/* ---- files ------------------------------------------------------------- */

static int read_file(const char *path, char **ret_buf, size_t *ret_len, struct vl2_err *err)
{
    int r = vl2_file_read(path, MAX_JSON_SIZE, "tokenizer", ret_buf, ret_len, err);

    if (r == VL2_ELIMIT)
        r = vl2_err_set(err, VL2_ELIMIT, "tokenizer: '%s': file larger than %zu bytes", path,
                        MAX_JSON_SIZE);
    return r;
}

static int parse_json(struct loader *ld, const char *buf, size_t len, cJSON **ret)
{
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithLengthOpts(buf, len, &end, 0);

    if (!j)
        return fail(ld, VL2_EFORMAT, "invalid JSON near byte %zu",
                    end && end >= buf ? (size_t) (end - buf) : (size_t) 0);
    *ret = j;
    return 0;
}

/* ---- strings and maps -------------------------------------------------- */

static int add_string(struct loader *ld, const char *s, size_t n, uint32_t *ret_off)
{
    struct vl2_tokenizer *tok = ld->tok;

    if (tok->strings_size + n + 1 > UINT32_MAX)
        return fail(ld, VL2_ELIMIT, "token strings larger than 4 GiB");
    if (tok->strings_size + n + 1 > tok->strings_cap) {
        size_t cap = tok->strings_cap ? tok->strings_cap : 1 << 20;
        char *p;
        while (cap < tok->strings_size + n + 1)
            cap *= 2;
        p = realloc(tok->strings, cap);
        if (!p)
            return fail(ld, VL2_ENOMEM, "out of memory");
        tok->strings = p;
        tok->strings_cap = cap;
    }
    memcpy(tok->strings + tok->strings_size, s, n);
    tok->strings[tok->strings_size + n] = '\0';
    *ret_off = (uint32_t) tok->strings_size;
    tok->strings_size += n + 1;
    return 0;
}

static int strmap_init(struct loader *ld, struct tok_strmap *m, size_t n_expected)
{
    size_t cap = 16, i;

    while (cap < n_expected * 2)
        cap *= 2;
    m->slots = malloc(cap * sizeof(*m->slots));
    if (!m->slots)
        return fail(ld, VL2_ENOMEM, "out of memory");
    for (i = 0; i < cap; i++)
        m->slots[i].id = -1;
    m->mask = cap - 1;
    m->n = 0;
    return 0;
}

int32_t vl2__tok_strmap_get(const struct vl2_tokenizer *tok, const struct tok_strmap *m,
                            const char *s, size_t n)
{
    uint64_t h;
    size_t i;

    if (!m->slots)
        return -1;
    h = vl2__tok_hash(s, n);
    for (i = (size_t) (h >> 32) & m->mask;; i = (i + 1) & m->mask) {
        const struct tok_strmap_slot *sl = &m->slots[i];
        if (sl->id < 0)
            return -1;
        if (sl->hash == (uint32_t) h && sl->len == n && !memcmp(tok->strings + sl->off, s, n))
            return sl->id;
    }
}

/* Insert (or, for an existing string, replace the id of) @s.  The string is
 * copied into tok->strings. */
static int strmap_put(struct loader *ld, struct tok_strmap *m, const char *s, size_t n,
                      int32_t id)
{
    struct vl2_tokenizer *tok = ld->tok;
    uint64_t h = vl2__tok_hash(s, n);
    size_t i;
    uint32_t off;
    int r;

    if ((m->n + 1) * 2 > m->mask + 1) {
        /* grow */
        struct tok_strmap old = *m, nm;
        size_t j;
        r = strmap_init(ld, &nm, m->n + 1);
        if (r < 0)
            return r;
        for (j = 0; j <= old.mask; j++) {
            struct tok_strmap_slot *sl = &old.slots[j];
            size_t k;
            if (sl->id < 0)
                continue;
            for (k = (size_t) (vl2__tok_hash(tok->strings + sl->off, sl->len) >> 32) & nm.mask;
                 nm.slots[k].id >= 0; k = (k + 1) & nm.mask)
                ;
            nm.slots[k] = *sl;
        }
        nm.n = old.n;
        free(old.slots);
        *m = nm;
    }
    for (i = (size_t) (h >> 32) & m->mask;; i = (i + 1) & m->mask) {
        struct tok_strmap_slot *sl = &m->slots[i];
        if (sl->id < 0)
            break;
        if (sl->hash == (uint32_t) h && sl->len == n && !memcmp(tok->strings + sl->off, s, n)) {
            sl->id = id;
            return 0;
        }
    }
    r = add_string(ld, s, n, &off);
    if (r < 0)
        return r;
    m->slots[i] = (struct tok_strmap_slot) { .off = off, .len = (uint32_t) n, .id = id,
                                             .hash = (uint32_t) h };
    m->n++;
    return 0;
}

/* ---- JSON helpers ------------------------------------------------------ */

static const char *json_type_name(const cJSON *obj)
{
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(obj, "type");
    return cJSON_IsString(t) ? t->valuestring : NULL;
}

/* A boolean field; @def when absent or null.  -1 when of another type. */
static int json_bool(const cJSON *obj, const char *key, bool def, bool *ret)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);

    if (!v || cJSON_IsNull(v)) {
        *ret = def;
        return 0;
    }
    if (!cJSON_IsBool(v))
        return -1;
    *ret = cJSON_IsTrue(v);
    return 0;
}

static bool json_is_id(const cJSON *v, int32_t *ret)
{
    double d;

    if (!cJSON_IsNumber(v))
        return false;
    d = v->valuedouble;
    if (!(d >= 0 && d < TOK_MAX_ID) || d != floor(d))
        return false;
    *ret = (int32_t) d;
    return true;
}

/* ---- byte-level alphabet ----------------------------------------------- */

/* GPT-2's bytes_to_unicode: printable Latin-1 bytes map to themselves, the
 * others to U+0100 upwards in byte order. */
static void init_alphabet(struct loader *ld)
{
    int b, n = 0;

    for (b = 0; b < 324; b++)
        ld->cp_byte[b] = -1;
    for (b = 0; b < 256; b++) {
        bool keep = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
        ld->byte_cp[b] = keep ? b : 256 + n++;
        ld->cp_byte[ld->byte_cp[b]] = b;
    }
}

/* ---- model ------------------------------------------------------------- */

static int load_vocab(struct loader *ld, const cJSON *vocab, int32_t *ret_max_id,
                      size_t *ret_count)
{
    struct vl2_tokenizer *tok = ld->tok;
    const cJSON *it;
    size_t count = 0;
    int32_t max_id = -1;
    int r;

    if (!cJSON_IsObject(vocab))
        return fail(ld, VL2_EFORMAT, "model.vocab is not an object");
    for (it = vocab->child; it; it = it->next)
        count++;
    r = strmap_init(ld, &tok->vocab, count);
    if (r < 0)
        return r;
    for (it = vocab->child; it; it = it->next) {
        int32_t id;
        if (!json_is_id(it, &id))
            return fail(ld, VL2_EFORMAT, "model.vocab: token '%.64s' has no valid id",
                        it->string);
        r = strmap_put(ld, &tok->vocab, it->string, strlen(it->string), id);
        if (r < 0)
            return r;
        if (id > max_id)
            max_id = id;
    }
    *ret_max_id = max_id;
    *ret_count = tok->vocab.n;
    return 0;
}

static int merge_put(struct loader *ld, const char *a, size_t na, const char *b, size_t nb,
                     uint32_t rank, char **buf, size_t *buf_cap)
{
    struct vl2_tokenizer *tok = ld->tok;
    int32_t ia, ib, in;
    uint64_t key;
    size_t i;

    ia = vl2__tok_strmap_get(tok, &tok->vocab, a, na);
    ib = vl2__tok_strmap_get(tok, &tok->vocab, b, nb);
    if (ia < 0 || ib < 0)
        return fail(ld, VL2_EFORMAT, "merge %u '%.*s %.*s': token '%.*s' is not in the vocabulary",
                    rank, (int) na, a, (int) nb, b, ia < 0 ? (int) na : (int) nb,
                    ia < 0 ? a : b);
    if (na + nb > *buf_cap) {
        char *p = realloc(*buf, na + nb);
        if (!p)
            return fail(ld, VL2_ENOMEM, "out of memory");
        *buf = p;
        *buf_cap = na + nb;
    }
    memcpy(*buf, a, na);
    memcpy(*buf + na, b, nb);
    in = vl2__tok_strmap_get(tok, &tok->vocab, *buf, na + nb);
    if (in < 0)
        return fail(ld, VL2_EFORMAT, "merge %u '%.*s %.*s': result '%.*s' is not in the vocabulary",
                    rank, (int) na, a, (int) nb, b, (int) (na + nb), *buf);
    key = (uint64_t) (uint32_t) ia << 32 | (uint32_t) ib;
    for (i = (size_t) ((key * 0x9E3779B97F4A7C15ull) >> 32) & tok->merge_mask;;
         i = (i + 1) & tok->merge_mask) {
        struct tok_merge_slot *s = &tok->merges[i];
        if (s->key == UINT64_MAX || s->key == key) {
            /* a repeated pair takes its last rank, like the reference's map */
            *s = (struct tok_merge_slot) { .key = key, .rank = rank, .new_id = in };
            return 0;
        }
    }
}

static int load_merges(struct loader *ld, const cJSON *merges)
{
    struct vl2_tokenizer *tok = ld->tok;
    const cJSON *it;
    size_t count = 0, cap = 16, i;
    uint32_t rank = 0;
    char *buf = NULL;
    size_t buf_cap = 0;
    int r = 0;

    if (!cJSON_IsArray(merges))
        return fail(ld, VL2_EFORMAT, "model.merges is not an array");
    for (it = merges->child; it; it = it->next)
        count++;
    while (cap < count * 2)
        cap *= 2;
    tok->merges = malloc(cap * sizeof(*tok->merges));
    if (!tok->merges)
        return fail(ld, VL2_ENOMEM, "out of memory");
    for (i = 0; i < cap; i++)
        tok->merges[i].key = UINT64_MAX;
    tok->merge_mask = cap - 1;

    for (it = merges->child; it; it = it->next) {
        if (cJSON_IsString(it)) {
            const char *s = it->valuestring, *sp;
            if (!strncmp(s, "#version", 8))
                continue;
            sp = strchr(s, ' ');
            if (!sp || strchr(sp + 1, ' '))
                r = fail(ld, VL2_EFORMAT, "merge %u '%.64s' is not two tokens separated by one space",
                         rank, s);
            else
                r = merge_put(ld, s, (size_t) (sp - s), sp + 1, strlen(sp + 1), rank, &buf,
                              &buf_cap);
        } else if (cJSON_IsArray(it) && cJSON_GetArraySize(it) == 2 &&
                   cJSON_IsString(it->child) && cJSON_IsString(it->child->next)) {
            const char *a = it->child->valuestring, *b = it->child->next->valuestring;
            r = merge_put(ld, a, strlen(a), b, strlen(b), rank, &buf, &buf_cap);
        } else {
            r = fail(ld, VL2_EFORMAT, "merge %u is neither \"a b\" nor [\"a\", \"b\"]", rank);
        }
        if (r < 0)
            break;
        rank++;
    }
    free(buf);
    return r;
}

static int check_empty_string_option(struct loader *ld, const cJSON *model, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(model, key);

    if (!v || cJSON_IsNull(v) || (cJSON_IsString(v) && !v->valuestring[0]))
        return 0;
    return fail(ld, VL2_EUNSUPPORTED, "unsupported BPE option '%s'", key);
}

static int load_model(struct loader *ld, const cJSON *model, int32_t *ret_max_id,
                      size_t *ret_vocab_count)
{
    struct vl2_tokenizer *tok = ld->tok;
    const char *type;
    const cJSON *v;
    bool b;
    int r;

    if (!cJSON_IsObject(model))
        return fail(ld, VL2_EFORMAT, "no \"model\" object");
    type = json_type_name(model);
    if (!type && !cJSON_GetObjectItemCaseSensitive(model, "merges"))
        return fail(ld, VL2_EUNSUPPORTED, "model without a type and without merges");
    if (type && strcmp(type, "BPE"))
        return fail(ld, VL2_EUNSUPPORTED, "unsupported model type '%s' (only BPE)", type);

    v = cJSON_GetObjectItemCaseSensitive(model, "dropout");
    if (v && !cJSON_IsNull(v) && !(cJSON_IsNumber(v) && v->valuedouble == 0))
        return fail(ld, VL2_EUNSUPPORTED, "unsupported BPE option 'dropout'");
    if (json_bool(model, "byte_fallback", false, &b) < 0 || b)
        return fail(ld, VL2_EUNSUPPORTED, "unsupported BPE option 'byte_fallback'");
    r = check_empty_string_option(ld, model, "continuing_subword_prefix");
    if (r < 0)
        return r;
    r = check_empty_string_option(ld, model, "end_of_word_suffix");
    if (r < 0)
        return r;
    if (json_bool(model, "fuse_unk", false, &tok->fuse_unk) < 0 ||
        json_bool(model, "ignore_merges", false, &tok->ignore_merges) < 0)
        return fail(ld, VL2_EFORMAT, "model: fuse_unk / ignore_merges is not a boolean");

    r = load_vocab(ld, cJSON_GetObjectItemCaseSensitive(model, "vocab"), ret_max_id,
                   ret_vocab_count);
    if (r < 0)
        return r;
    r = load_merges(ld, cJSON_GetObjectItemCaseSensitive(model, "merges"));
    if (r < 0)
        return r;

    tok->unk_id = -1;
    v = cJSON_GetObjectItemCaseSensitive(model, "unk_token");
    if (cJSON_IsString(v)) {
        tok->unk_id = vl2__tok_strmap_get(tok, &tok->vocab, v->valuestring, strlen(v->valuestring));
        if (tok->unk_id < 0)
            return fail(ld, VL2_EFORMAT, "unk_token '%.64s' is not in the vocabulary",
                        v->valuestring);
    } else if (v && !cJSON_IsNull(v)) {
        return fail(ld, VL2_EFORMAT, "unk_token is not a string");
    }
    return 0;
}

/* ---- normalizer -------------------------------------------------------- */

static int check_normalizer(struct loader *ld, const cJSON *n, int depth)
{
    const char *type;
    const cJSON *it;

    if (!n || cJSON_IsNull(n))
        return 0;
    type = json_type_name(n);
    if (!type)
        return fail(ld, VL2_EFORMAT, "normalizer without a type");
    if (strcmp(type, "Sequence") || depth > 8)
        return fail(ld, VL2_EUNSUPPORTED, "unsupported normalizer '%s'", type);
    it = cJSON_GetObjectItemCaseSensitive(n, "normalizers");
    if (!cJSON_IsArray(it))
        return fail(ld, VL2_EFORMAT, "normalizer Sequence without a \"normalizers\" array");
    for (it = it->child; it; it = it->next) {
        int r = check_normalizer(ld, it, depth + 1);
        if (r < 0)
            return r;
    }
    return 0;
}

/* ---- pre-tokenizer ----------------------------------------------------- */

/* Rewrite an Oniguruma (Ruby syntax) pattern for PCRE2: the escapes whose
 * Unicode meaning differs between the two get Oniguruma's meaning.
 *   \s = White_Space   \w = L, M, Nd, Pc   \h = hex digit
 * Inside a class only the positive forms can be rewritten; the negated ones
 * are left to PCRE2 (which differs only for U+180E and marks). */
static int translate_regex(struct loader *ld, const char *in, char **ret)
{
    static const char space_set[] = "\\t\\n\\x0B\\f\\r\\x{85}\\p{Z}";
    static const char word_set[] = "\\p{L}\\p{M}\\p{Nd}\\p{Pc}";
    static const char hex_set[] = "0-9A-Fa-f";
    size_t n = strlen(in), o = 0, i;
    char *out = malloc(n * 24 + 1);
    bool in_class = false;

    if (!out)
        return fail(ld, VL2_ENOMEM, "out of memory");
    for (i = 0; i < n; i++) {
        char c = in[i];
        const char *set = NULL;
        if (c == '\\' && i + 1 < n) {
            char e = in[i + 1];
            bool neg = e == 'S' || e == 'W' || e == 'H';
            switch (e) {
            case 's': case 'S': set = space_set; break;
            case 'w': case 'W': set = word_set; break;
            case 'h': case 'H': set = hex_set; break;
            default: break;
            }
            if (set && !(in_class && neg)) {
                o += (size_t) sprintf(out + o, in_class ? "%s" : neg ? "[^%s]" : "[%s]", set);
            } else {
                out[o++] = c;
                out[o++] = e;
            }
            i++;
            continue;
        }
        if (!in_class && c == '[') {
            in_class = true;
            out[o++] = c;
            if (i + 1 < n && in[i + 1] == '^')
                out[o++] = in[++i];
            if (i + 1 < n && in[i + 1] == ']')
                out[o++] = in[++i];
            continue;
        }
        if (in_class && c == '[') {
            const char *end = i + 1 < n && in[i + 1] == ':' ? strstr(in + i + 2, ":]") : NULL;
            if (!end) {
                free(out);
                return fail(ld, VL2_EUNSUPPORTED, "regex '%.80s': nested character classes", in);
            }
            memcpy(out + o, in + i, (size_t) (end + 2 - (in + i)));
            o += (size_t) (end + 2 - (in + i));
            i = (size_t) (end + 1 - in);
            continue;
        }
        if (in_class && c == ']')
            in_class = false;
        out[o++] = c;
    }
    out[o] = '\0';
    *ret = out;
    return 0;
}

static int compile_regex(struct loader *ld, const char *pattern, bool literal, pcre2_code **ret)
{
    char *translated = NULL;
    const char *src = pattern;
    int errcode, r;
    PCRE2_SIZE erroff;
    pcre2_code *re;
    uint32_t opts = PCRE2_UTF | PCRE2_UCP | PCRE2_MULTILINE;

    if (literal) {
        opts = PCRE2_UTF | PCRE2_LITERAL;
    } else {
        r = translate_regex(ld, pattern, &translated);
        if (r < 0)
            return r;
        src = translated;
    }
    re = pcre2_compile((PCRE2_SPTR) src, PCRE2_ZERO_TERMINATED, opts, &errcode, &erroff, NULL);
    free(translated);
    if (!re) {
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(errcode, msg, sizeof(msg));
        return fail(ld, VL2_EFORMAT, "regex '%.80s': %s", pattern, (const char *) msg);
    }
    /* JIT where the platform has it; the interpreter otherwise */
    (void) pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
    *ret = re;
    return 0;
}

static struct tok_step *new_step(struct loader *ld)
{
    struct vl2_tokenizer *tok = ld->tok;

    if (tok->n_steps == TOK_MAX_STEPS) {
        fail(ld, VL2_EUNSUPPORTED, "more than %d pre-tokenizer steps", TOK_MAX_STEPS);
        return NULL;
    }
    return &tok->steps[tok->n_steps++];
}

static int add_pretok(struct loader *ld, const cJSON *p, int depth)
{
    struct vl2_tokenizer *tok = ld->tok;
    const char *type;
    struct tok_step *st;
    bool b;
    int r;

    type = json_type_name(p);
    if (!type)
        return fail(ld, VL2_EFORMAT, "pre_tokenizer without a type");
    if (tok->byte_level)
        return fail(ld, VL2_EUNSUPPORTED,
                    "pre-tokenizer '%s' after ByteLevel (ByteLevel must be the last step)", type);

    if (!strcmp(type, "Sequence")) {
        const cJSON *it = cJSON_GetObjectItemCaseSensitive(p, "pretokenizers");
        if (!cJSON_IsArray(it))
            return fail(ld, VL2_EFORMAT, "pre_tokenizer Sequence without a \"pretokenizers\" array");
        if (depth > 8)
            return fail(ld, VL2_EUNSUPPORTED, "pre_tokenizer Sequences nested too deep");
        for (it = it->child; it; it = it->next) {
            r = add_pretok(ld, it, depth + 1);
            if (r < 0)
                return r;
        }
        return 0;
    }

    if (!strcmp(type, "Split")) {
        static const char *const names[] = {
            [TOK_SPLIT_REMOVED] = "Removed",
            [TOK_SPLIT_ISOLATED] = "Isolated",
            [TOK_SPLIT_MERGED_PREV] = "MergedWithPrevious",
            [TOK_SPLIT_MERGED_NEXT] = "MergedWithNext",
            [TOK_SPLIT_CONTIGUOUS] = "Contiguous",
        };
        const cJSON *pat = cJSON_GetObjectItemCaseSensitive(p, "pattern");
        const cJSON *beh = cJSON_GetObjectItemCaseSensitive(p, "behavior");
        const cJSON *rx = cJSON_GetObjectItemCaseSensitive(pat, "Regex");
        const cJSON *lit = cJSON_GetObjectItemCaseSensitive(pat, "String");
        size_t i;

        st = new_step(ld);
        if (!st)
            return ld->err ? ld->err->code : VL2_EUNSUPPORTED;
        st->kind = TOK_STEP_SPLIT;
        st->behavior = -1;
        if (!cJSON_IsString(beh))
            return fail(ld, VL2_EFORMAT, "Split pre-tokenizer without a behavior");
        for (i = 0; i < sizeof(names) / sizeof(names[0]); i++)
            if (!strcmp(beh->valuestring, names[i]))
                st->behavior = (int) i;
        if (st->behavior < 0)
            return fail(ld, VL2_EUNSUPPORTED, "unsupported Split behavior '%.40s'",
                        beh->valuestring);
        if (json_bool(p, "invert", false, &st->invert) < 0)
            return fail(ld, VL2_EFORMAT, "Split: invert is not a boolean");
        if (cJSON_IsString(rx))
            return compile_regex(ld, rx->valuestring, false, &st->re);
        if (cJSON_IsString(lit))
            return lit->valuestring[0] ? compile_regex(ld, lit->valuestring, true, &st->re) : 0;
        return fail(ld, VL2_EFORMAT, "Split pre-tokenizer without a Regex or String pattern");
    }

    if (!strcmp(type, "Digits")) {
        st = new_step(ld);
        if (!st)
            return ld->err ? ld->err->code : VL2_EUNSUPPORTED;
        if (json_bool(p, "individual_digits", false, &b) < 0)
            return fail(ld, VL2_EFORMAT, "Digits: individual_digits is not a boolean");
        st->kind = TOK_STEP_SPLIT;
        st->behavior = b ? TOK_SPLIT_ISOLATED : TOK_SPLIT_CONTIGUOUS;
        /* Hugging Face splits on Rust's char::is_numeric, the Unicode
         * categories Nd, Nl and No (Arabic-Indic and fullwidth digits, (1),
         * 1/2, superscripts, Roman numerals), not on ASCII digits alone */
        return compile_regex(ld, "\\p{N}", false, &st->re);
    }

    if (!strcmp(type, "ByteLevel")) {
        st = new_step(ld);
        if (!st)
            return ld->err ? ld->err->code : VL2_EUNSUPPORTED;
        st->kind = TOK_STEP_BYTELEVEL;
        st->behavior = TOK_SPLIT_ISOLATED;
        if (json_bool(p, "add_prefix_space", true, &st->add_prefix_space) < 0 ||
            json_bool(p, "use_regex", true, &b) < 0)
            return fail(ld, VL2_EFORMAT, "ByteLevel: add_prefix_space / use_regex is not a boolean");
        tok->byte_level = true;
        return b ? compile_regex(ld, gpt2_regex, false, &st->re) : 0;
    }

    return fail(ld, VL2_EUNSUPPORTED, "unsupported pre-tokenizer '%s'", type);
}

/* ---- decoder ----------------------------------------------------------- */

static int check_decoder(struct loader *ld, const cJSON *d)
{
    const char *type;
    const cJSON *list;

    if (!d || cJSON_IsNull(d))
        return fail(ld, VL2_EUNSUPPORTED, "unsupported decoder: none (only ByteLevel)");
    type = json_type_name(d);
    if (!type)
        return fail(ld, VL2_EFORMAT, "decoder without a type");
    if (!strcmp(type, "ByteLevel"))
        return 0;
    if (!strcmp(type, "Sequence")) {
        list = cJSON_GetObjectItemCaseSensitive(d, "decoders");
        if (cJSON_IsArray(list) && cJSON_GetArraySize(list) == 1 &&
            json_type_name(list->child) && !strcmp(json_type_name(list->child), "ByteLevel"))
            return 0;
        return fail(ld, VL2_EUNSUPPORTED, "unsupported decoder Sequence (only ByteLevel alone)");
    }
    return fail(ld, VL2_EUNSUPPORTED, "unsupported decoder '%s'", type);
}

/* ---- added tokens ------------------------------------------------------ */

static int load_added(struct loader *ld, const cJSON *list, size_t vocab_count, int32_t *max_id)
{
    struct vl2_tokenizer *tok = ld->tok;
    const cJSON *it;
    size_t count = 0;
    int64_t next_id;
    int r;

    if (!list || cJSON_IsNull(list))
        return strmap_init(ld, &tok->added_map, 1);
    if (!cJSON_IsArray(list))
        return fail(ld, VL2_EFORMAT, "added_tokens is not an array");
    for (it = list->child; it; it = it->next)
        count++;
    r = strmap_init(ld, &tok->added_map, count);
    if (r < 0)
        return r;
    tok->added = calloc(count ? count : 1, sizeof(*tok->added));
    if (!tok->added)
        return fail(ld, VL2_ENOMEM, "out of memory");

    /* ids as the reference assigns them: a token already in the vocabulary
     * keeps its id, the others are numbered on from the vocabulary size */
    next_id = (int64_t) vocab_count;
    for (it = list->child; it; it = it->next) {
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(it, "content");
        const cJSON *jid = cJSON_GetObjectItemCaseSensitive(it, "id");
        struct tok_added *a = &tok->added[tok->n_added];
        bool single_word;
        int32_t file_id, id;
        size_t len;

        if (!cJSON_IsObject(it) || !cJSON_IsString(content))
            return fail(ld, VL2_EFORMAT, "added token %zu without a content string", tok->n_added);
        len = strlen(content->valuestring);
        if (!len)
            continue;
        if (vl2__utf8_valid_prefix((const unsigned char *) content->valuestring, len) != len)
            return fail(ld, VL2_EFORMAT, "added token %zu is not valid UTF-8", tok->n_added);
        if (json_bool(it, "special", false, &a->special) < 0 ||
            json_bool(it, "normalized", !a->special, &a->normalized) < 0 ||
            json_bool(it, "lstrip", false, &a->lstrip) < 0 ||
            json_bool(it, "rstrip", false, &a->rstrip) < 0 ||
            json_bool(it, "single_word", false, &single_word) < 0)
            return fail(ld, VL2_EFORMAT, "added token '%.64s': a flag is not a boolean",
                        content->valuestring);
        if (single_word)
            return fail(ld, VL2_EUNSUPPORTED, "added token '%.64s': unsupported option single_word",
                        content->valuestring);
        if (!json_is_id(jid, &file_id))
            return fail(ld, VL2_EFORMAT, "added token '%.64s' has no valid id",
                        content->valuestring);

        id = vl2__tok_strmap_get(tok, &tok->added_map, content->valuestring, len);
        if (id < 0)
            id = vl2__tok_strmap_get(tok, &tok->vocab, content->valuestring, len);
        if (id < 0) {
            if (next_id >= TOK_MAX_ID)
                return fail(ld, VL2_EFORMAT, "too many added tokens");
            id = (int32_t) next_id++;
        }
        if (id != file_id)
            return fail(ld, VL2_EFORMAT, "added token '%.64s' has id %d, but the reference "
                        "tokenizer would give it id %d", content->valuestring, file_id, id);
        if (id >= TOK_MAX_ID)
            return fail(ld, VL2_EFORMAT, "added token '%.64s': id out of range",
                        content->valuestring);
        r = strmap_put(ld, &tok->added_map, content->valuestring, len, id);
        if (r < 0)
            return r;
        r = add_string(ld, content->valuestring, len, &a->off);
        if (r < 0)
            return r;
        a->id = id;
        a->len = (uint32_t) len;
        if (id > *max_id)
            *max_id = id;
        tok->n_added++;
    }
    return 0;
}

static int trie_add(struct loader *ld, struct tok_trie *t, const char *s, size_t n, int32_t idx,
                    size_t *cap)
{
    uint32_t node = 0;
    size_t i;

    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char) s[i];
        uint32_t ch = t->nodes[node].child;
        while (ch && t->nodes[ch].byte != c)
            ch = t->nodes[ch].sibling;
        if (!ch) {
            if (t->n_nodes == *cap) {
                struct tok_trie_node *p = realloc(t->nodes, *cap * 2 * sizeof(*p));
                if (!p)
                    return fail(ld, VL2_ENOMEM, "out of memory");
                t->nodes = p;
                *cap *= 2;
            }
            ch = (uint32_t) t->n_nodes++;
            t->nodes[ch] = (struct tok_trie_node) { .child = 0, .sibling = t->nodes[node].child,
                                                    .added = -1, .byte = c };
            t->nodes[node].child = ch;
        }
        node = ch;
    }
    /* the same content twice: the later entry describes the token */
    t->nodes[node].added = idx;
    if (n)
        t->first[(unsigned char) s[0]] = true;
    return 0;
}

static int build_tries(struct loader *ld)
{
    struct vl2_tokenizer *tok = ld->tok;
    size_t caps[2] = { 64, 64 }, i;
    int k, r;

    for (k = 0; k < 2; k++) {
        tok->trie[k].nodes = malloc(caps[k] * sizeof(struct tok_trie_node));
        if (!tok->trie[k].nodes)
            return fail(ld, VL2_ENOMEM, "out of memory");
        tok->trie[k].nodes[0] = (struct tok_trie_node) { .added = -1 };
        tok->trie[k].n_nodes = 1;
    }
    for (i = 0; i < tok->n_added; i++) {
        const struct tok_added *a = &tok->added[i];
        /* with no normalizer, a normalized token matches its own content */
        k = a->normalized ? 1 : 0;
        r = trie_add(ld, &tok->trie[k], tok->strings + a->off, a->len, (int32_t) i, &caps[k]);
        if (r < 0)
            return r;
    }
    return 0;
}

/* ---- per-id tables ----------------------------------------------------- */

/* Decoded bytes of @s as the ByteLevel decoder does it: every char mapped
 * back to its byte, or the raw UTF-8 if some char is outside the alphabet. */
static int add_decoded(struct loader *ld, int32_t id, const char *s, size_t n)
{
    struct vl2_tokenizer *tok = ld->tok;
    char small[256], *buf = n <= sizeof(small) ? small : malloc(n);
    size_t i = 0, o = 0;
    bool mapped = true;
    int r;

    if (!buf)
        return fail(ld, VL2_ENOMEM, "out of memory");
    buf[0] = '\0';
    while (i < n) {
        size_t len;
        uint32_t c = vl2__utf8_get((const unsigned char *) s + i, n - i, &len);
        if (c >= 324 || ld->cp_byte[c] < 0) {
            mapped = false;
            break;
        }
        buf[o++] = (char) ld->cp_byte[c];
        i += len;
    }
    if (!mapped) {
        memcpy(buf, s, n);
        o = n;
    }
    /* @s may point into tok->strings, which add_string may move */
    r = add_string(ld, buf, o, &tok->dec_off[id]);
    tok->dec_len[id] = (uint32_t) o;
    if (buf != small)
        free(buf);
    return r;
}

static int build_id_tables(struct loader *ld, int32_t max_id)
{
    struct vl2_tokenizer *tok = ld->tok;
    size_t i;
    int r;

    tok->n_ids = (size_t) max_id + 1;
    tok->dec_off = calloc(tok->n_ids ? tok->n_ids : 1, sizeof(*tok->dec_off));
    tok->dec_len = calloc(tok->n_ids ? tok->n_ids : 1, sizeof(*tok->dec_len));
    tok->flags = calloc(tok->n_ids ? tok->n_ids : 1, 1);
    if (!tok->dec_off || !tok->dec_len || !tok->flags)
        return fail(ld, VL2_ENOMEM, "out of memory");

    /* a vocabulary with two strings for one id cannot be decoded */
    for (i = 0; i <= tok->vocab.mask; i++) {
        const struct tok_strmap_slot *sl = &tok->vocab.slots[i];
        if (sl->id < 0)
            continue;
        if (tok->flags[sl->id])
            return fail(ld, VL2_EFORMAT, "model.vocab gives id %d to several tokens", sl->id);
        tok->flags[sl->id] = TOK_F_TOKEN;
    }

    /* added tokens take precedence over the vocabulary for the same id */
    for (i = 0; i < tok->n_added; i++) {
        const struct tok_added *a = &tok->added[i];
        tok->flags[a->id] = TOK_F_TOKEN | TOK_F_ADDED | (a->special ? TOK_F_SPECIAL : 0);
        r = add_decoded(ld, a->id, tok->strings + a->off, a->len);
        if (r < 0)
            return r;
    }
    for (i = 0; i <= tok->vocab.mask; i++) {
        const struct tok_strmap_slot *sl = &tok->vocab.slots[i];
        if (sl->id < 0 || (tok->flags[sl->id] & TOK_F_ADDED))
            continue;
        r = add_decoded(ld, sl->id, tok->strings + sl->off, sl->len);
        if (r < 0)
            return r;
    }

    for (i = 0; i < 256; i++) {
        char c[4];
        size_t n = vl2__utf8_put(c, (uint32_t) ld->byte_cp[i]);
        tok->byte_id[i] = tok->byte_level ? vl2__tok_strmap_get(tok, &tok->vocab, c, n) : -1;
        tok->byte_cp[i] = (uint16_t) ld->byte_cp[i];
    }
    return 0;
}

/* ---- tokenizer_config.json --------------------------------------------- */

static int config_token(struct loader *ld, const cJSON *cfg, const char *key, int32_t *ret)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
    const char *s;

    *ret = -1;
    if (!v || cJSON_IsNull(v))
        return 0;
    if (cJSON_IsObject(v))
        v = cJSON_GetObjectItemCaseSensitive(v, "content");
    if (!cJSON_IsString(v))
        return fail(ld, VL2_EFORMAT, "%s is not a string", key);
    s = v->valuestring;
    *ret = vl2_tokenizer_id(ld->tok, s);
    if (*ret < 0)
        return fail(ld, VL2_EFORMAT, "%s '%.64s' is not a token", key, s);
    return 0;
}

static int load_config(struct loader *ld, const char *dir)
{
    char *path, *buf = NULL;
    size_t len;
    cJSON *cfg = NULL;
    struct vl2_err e2;
    int r;

    ld->tok->bos = ld->tok->eos = -1;
    if (asprintf(&path, "%s/tokenizer_config.json", dir) < 0)
        return vl2_err_set(ld->err, VL2_ENOMEM, "tokenizer: out of memory");
    r = read_file(path, &buf, &len, &e2);
    if (r == VL2_ENOTFOUND) {
        r = 0;
        goto out_free;
    }
    if (r < 0) {
        r = vl2_err_set(ld->err, e2.code, "%s", e2.msg);
        goto out_free;
    }
    ld->path = path;
    r = parse_json(ld, buf, len, &cfg);
    if (r < 0)
        goto out_free;
    if (!cJSON_IsObject(cfg)) {
        r = fail(ld, VL2_EFORMAT, "not a JSON object");
        goto out_free;
    }
    r = config_token(ld, cfg, "bos_token", &ld->tok->bos);
    if (r >= 0)
        r = config_token(ld, cfg, "eos_token", &ld->tok->eos);
out_free:
    cJSON_Delete(cfg);
    free(buf);
    free(path);
    return r;
}

/* ---- entry points ------------------------------------------------------ */

static int load_tokenizer_json(struct loader *ld, const cJSON *root)
{
    const cJSON *v;
    int32_t max_id = -1;
    size_t vocab_count = 0;
    int r;

    if (!cJSON_IsObject(root))
        return fail(ld, VL2_EFORMAT, "not a JSON object");
    v = cJSON_GetObjectItemCaseSensitive(root, "truncation");
    if (v && !cJSON_IsNull(v))
        return fail(ld, VL2_EUNSUPPORTED, "unsupported truncation settings");
    r = check_normalizer(ld, cJSON_GetObjectItemCaseSensitive(root, "normalizer"), 0);
    if (r < 0)
        return r;
    r = check_decoder(ld, cJSON_GetObjectItemCaseSensitive(root, "decoder"));
    if (r < 0)
        return r;
    v = cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer");
    if (v && !cJSON_IsNull(v)) {
        r = add_pretok(ld, v, 0);
        if (r < 0)
            return r;
    }
    r = load_model(ld, cJSON_GetObjectItemCaseSensitive(root, "model"), &max_id, &vocab_count);
    if (r < 0)
        return r;
    r = load_added(ld, cJSON_GetObjectItemCaseSensitive(root, "added_tokens"), vocab_count,
                   &max_id);
    if (r < 0)
        return r;
    if (max_id < 0)
        return fail(ld, VL2_EFORMAT, "empty vocabulary");
    r = build_tries(ld);
    if (r < 0)
        return r;
    return build_id_tables(ld, max_id);
}

int vl2_tokenizer_load(struct vl2_tokenizer **ret, const char *dir, struct vl2_err *err)
{
    struct loader ld = { .err = err };
    struct vl2_tokenizer *tok;
    char *path = NULL, *buf = NULL;
    size_t len;
    cJSON *root = NULL;
    int r;

    if (!ret || !dir)
        return vl2_err_set(err, VL2_EINVAL, "tokenizer: no directory given");
    tok = calloc(1, sizeof(*tok));
    if (!tok)
        return vl2_err_set(err, VL2_ENOMEM, "tokenizer: out of memory");
    ld.tok = tok;
    tok->bos = tok->eos = tok->unk_id = -1;
    init_alphabet(&ld);

    if (asprintf(&path, "%s/tokenizer.json", dir) < 0) {
        path = NULL;
        r = vl2_err_set(err, VL2_ENOMEM, "tokenizer: out of memory");
        goto out_free;
    }
    ld.path = path;
    r = read_file(path, &buf, &len, err);
    if (r < 0)
        goto out_free;
    r = parse_json(&ld, buf, len, &root);
    free(buf);
    buf = NULL;
    if (r < 0)
        goto out_free;
    r = load_tokenizer_json(&ld, root);
    cJSON_Delete(root);
    root = NULL;
    if (r < 0)
        goto out_free;
    r = load_config(&ld, dir);
    if (r < 0)
        goto out_free;

    free(path);
    *ret = tok;
    return 0;

out_free:
    free(path);
    vl2_tokenizer_free(tok);
    return r;
}

void vl2_tokenizer_free(struct vl2_tokenizer *tok)
{
    size_t i;

    if (!tok)
        return;
    for (i = 0; i < tok->n_steps; i++)
        pcre2_code_free(tok->steps[i].re);
    free(tok->trie[0].nodes);
    free(tok->trie[1].nodes);
    free(tok->added);
    free(tok->merges);
    free(tok->vocab.slots);
    free(tok->added_map.slots);
    free(tok->dec_off);
    free(tok->dec_len);
    free(tok->flags);
    free(tok->strings);
    free(tok);
}

/* ---- lookups ----------------------------------------------------------- */

int32_t vl2_tokenizer_id(const struct vl2_tokenizer *tok, const char *token)
{
    size_t n;
    int32_t id;

    if (!tok || !token)
        return -1;
    n = strlen(token);
    id = vl2__tok_strmap_get(tok, &tok->added_map, token, n);
    return id >= 0 ? id : vl2__tok_strmap_get(tok, &tok->vocab, token, n);
}

const char *vl2_tokenizer_token_bytes(const struct vl2_tokenizer *tok, int32_t id,
                                      size_t *ret_len)
{
    if (!tok || id < 0 || (size_t) id >= tok->n_ids || !tok->flags[id])
        return NULL;
    if (ret_len)
        *ret_len = tok->dec_len[id];
    return tok->strings + tok->dec_off[id];
}

int32_t vl2_tokenizer_bos(const struct vl2_tokenizer *tok)
{
    return tok ? tok->bos : -1;
}

int32_t vl2_tokenizer_eos(const struct vl2_tokenizer *tok)
{
    return tok ? tok->eos : -1;
}

size_t vl2_tokenizer_vocab_size(const struct vl2_tokenizer *tok)
{
    return tok ? tok->n_ids : 0;
}

int vl2_tokenizer_is_special(const struct vl2_tokenizer *tok, int32_t id)
{
    if (!tok || id < 0 || (size_t) id >= tok->n_ids)
        return 0;
    return (tok->flags[id] & TOK_F_SPECIAL) != 0;
}

/* bench_tokenizer.c - tokenizer speed: load time of tokenizer.json, encode
 * throughput on one thread over 10 MB of generated mixed text (English
 * prose, C-like code, Chinese, digits), decode throughput.  Prints one
 * machine-readable line per figure.
 *
 * usage: bench_tokenizer TOKENIZER_DIR [MEGABYTES]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tokenizer.h"

static double clock_s(clockid_t id)
{
    struct timespec t;

    clock_gettime(id, &t);
    return (double) t.tv_sec + (double) t.tv_nsec * 1e-9;
}

/* Wall time, and this thread's CPU time (what the figure would be on an
 * idle machine, give or take cache sharing). */
struct span {
    double wall, cpu;
};

static struct span now(void)
{
    return (struct span) { clock_s(CLOCK_MONOTONIC), clock_s(CLOCK_THREAD_CPUTIME_ID) };
}

static void keep_best(struct span *best, struct span t0)
{
    struct span t1 = now();

    if (t1.wall - t0.wall < best->wall)
        best->wall = t1.wall - t0.wall;
    if (t1.cpu - t0.cpu < best->cpu)
        best->cpu = t1.cpu - t0.cpu;
}

static uint64_t rng_state = 0x2545F4914F6CDD1Dull;

static uint32_t rnd(uint32_t n)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t) (rng_state % n);
}

static const char *const words[] = {
    "the", "of", "and", "to", "in", "is", "that", "it", "was", "for", "on", "are", "as",
    "with", "his", "they", "at", "be", "this", "have", "from", "or", "one", "had", "by",
    "word", "but", "not", "what", "all", "were", "we", "when", "your", "can", "said",
    "there", "use", "each", "which", "she", "do", "how", "their", "if", "will", "up",
    "other", "about", "out", "many", "then", "them", "these", "so", "some", "her",
    "would", "make", "like", "him", "into", "time", "has", "look", "two", "more",
    "write", "go", "see", "number", "no", "way", "could", "people", "my", "than",
    "first", "water", "been", "call", "who", "oil", "its", "now", "find", "long",
    "down", "day", "did", "get", "come", "made", "may", "part", "model", "image",
    "language", "inference", "daemon", "tokenizer", "vision", "transformer", "expert",
    "mixture", "attention", "performance", "implementation", "quickly", "brown",
    "fox", "jumps", "lazy", "dog", "Meanwhile", "However", "Therefore", "London",
    "December", "John's", "isn't", "we'll", "they've", "state-of-the-art",
};

static const char *const code_lines[] = {
    "int main(int argc, char **argv)\n{\n",
    "    for (size_t i = 0; i < n; i++) {\n",
    "        sum += a[i] * b[i];\n",
    "    }\n",
    "    if (r < 0)\n        goto out_free;\n",
    "    return vl2_err_set(err, VL2_EINVAL, \"bad value '%s'\", name);\n",
    "def forward(self, x: torch.Tensor) -> torch.Tensor:\n",
    "        return self.proj(F.gelu(self.fc(x)))\n",
    "const result = items.filter((x) => x.id !== 0).map((x) => x.name);\n",
    "\t\tprintf(\"%d: %s\\n\", i, names[i]);\n",
    "#include <stdio.h>\n#include <stdlib.h>\n",
    "    uint64_t key = (uint64_t) a << 32 | b;  // pair key\n",
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name;\n",
    "    let mut v: Vec<u32> = Vec::with_capacity(1024);\n",
};

/* Common Chinese characters (UTF-8), picked at random into sentences. */
static const char chinese[] =
    "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把性好应开它合还因由其些然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比或但质气第向道命此变条只没结解问意建月公无系军很情者最立代想已通并提直题党程展五果料象员革位入常文总次品式活设及管特件长求老头基资边流路级少图山统接知较将组见计别她手角期根论运农指几九区强放决西被干做必战先回则任取据处理府研质";

static size_t utf8_chars(const char *s, size_t *offs, size_t max)
{
    size_t n = 0, i = 0, len = strlen(s);

    while (i < len && n < max) {
        unsigned char c = (unsigned char) s[i];
        offs[n++] = i;
        i += c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
    }
    return n;
}

/* ~@size bytes: paragraphs of English (40%), code (25%), Chinese (20%) and
 * digits (15%). */
static char *make_text(size_t size, size_t *ret_len)
{
    char *t = malloc(size + 4096);
    size_t n = 0, offs[512], n_cn = utf8_chars(chinese, offs, 512);

    while (n < size) {
        uint32_t kind = rnd(100), k, lines = 3 + rnd(6);
        if (kind < 40) {
            for (k = 0; k < 40 + rnd(60) && n < size; k++) {
                const char *w = words[rnd(sizeof(words) / sizeof(words[0]))];
                if (k)
                    n += (size_t) sprintf(t + n, " %s", w);
                else
                    n += (size_t) sprintf(t + n, "%c%s", w[0] & ~0x20, w + 1);
                if (rnd(12) == 0)
                    t[n++] = rnd(3) ? ',' : '.';
            }
            n += (size_t) sprintf(t + n, ".\n\n");
        } else if (kind < 65) {
            for (k = 0; k < lines && n < size; k++)
                n += (size_t) sprintf(t + n, "%s",
                                      code_lines[rnd(sizeof(code_lines) / sizeof(code_lines[0]))]);
            t[n++] = '\n';
        } else if (kind < 85) {
            for (k = 0; k < 30 + rnd(80) && n < size; k++) {
                size_t c = rnd((uint32_t) n_cn);
                size_t len = (c + 1 < n_cn ? offs[c + 1] : strlen(chinese)) - offs[c];
                memcpy(t + n, chinese + offs[c], len);
                n += len;
                if (rnd(15) == 0)
                    n += (size_t) sprintf(t + n, rnd(2) ? "，" : "。");
            }
            n += (size_t) sprintf(t + n, "。\n");
        } else {
            for (k = 0; k < 10 + rnd(20) && n < size; k++)
                switch (rnd(4)) {
                case 0: n += (size_t) sprintf(t + n, "%u ", rnd(1000000000)); break;
                case 1: n += (size_t) sprintf(t + n, "$%u.%02u ", rnd(100000), rnd(100)); break;
                case 2: n += (size_t) sprintf(t + n, "20%02u-%02u-%02u ", rnd(30), 1 + rnd(12), 1 + rnd(28)); break;
                default: n += (size_t) sprintf(t + n, "%u,%03u,%03u ", rnd(1000), rnd(1000), rnd(1000)); break;
                }
            t[n++] = '\n';
        }
    }
    *ret_len = n;
    return t;
}

int main(int argc, char **argv)
{
    struct vl2_tokenizer *tok = NULL;
    struct vl2_err err = { 0 };
    size_t mb = argc > 2 ? (size_t) atoi(argv[2]) : 10, len, n_ids = 0, i, out_len;
    struct span t0, best_load = { 1e9, 1e9 }, best_enc = { 1e9, 1e9 }, best_dec = { 1e9, 1e9 };
    int32_t *ids = NULL;
    char *text, *out;

    if (argc < 2) {
        fprintf(stderr, "usage: %s TOKENIZER_DIR [MEGABYTES]\n", argv[0]);
        return 2;
    }
    for (i = 0; i < 5; i++) {
        vl2_tokenizer_free(tok);
        tok = NULL;
        t0 = now();
        if (vl2_tokenizer_load(&tok, argv[1], &err) < 0) {
            fprintf(stderr, "load: %s\n", err.msg);
            return 1;
        }
        keep_best(&best_load, t0);
    }
    printf("tokenizer load_ms=%.1f cpu_ms=%.1f (best of 5) vocab=%zu\n", best_load.wall * 1e3,
           best_load.cpu * 1e3, vl2_tokenizer_vocab_size(tok));

    text = make_text(mb << 20, &len);
    for (i = 0; i < 3; i++) {
        free(ids);
        t0 = now();
        if (vl2_tokenizer_encode(tok, text, len, &ids, &n_ids, &err) < 0) {
            fprintf(stderr, "encode: %s\n", err.msg);
            return 1;
        }
        keep_best(&best_enc, t0);
    }
    printf("tokenizer encode_MBps=%.1f cpu_MBps=%.1f bytes=%zu tokens=%zu seconds=%.3f "
           "(best of 3, 1 thread)\n", (double) len / best_enc.wall / 1e6,
           (double) len / best_enc.cpu / 1e6, len, n_ids, best_enc.wall);

    for (i = 0; i < 3; i++) {
        t0 = now();
        if (vl2_tokenizer_decode(tok, ids, n_ids, &out, &out_len, &err) < 0) {
            fprintf(stderr, "decode: %s\n", err.msg);
            return 1;
        }
        keep_best(&best_dec, t0);
        if (out_len != len || memcmp(out, text, len))
            fprintf(stderr, "warning: decode(encode(text)) != text\n");
        free(out);
    }
    printf("tokenizer decode_MBps=%.1f cpu_MBps=%.1f seconds=%.3f\n",
           (double) len / best_dec.wall / 1e6, (double) len / best_dec.cpu / 1e6, best_dec.wall);

    free(ids);
    free(text);
    vl2_tokenizer_free(tok);
    return 0;
}

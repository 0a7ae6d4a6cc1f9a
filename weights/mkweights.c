/* mkweights.c - vl2-mkweights: write a random DeepSeek-VL2 checkpoint in the
 * official Hugging Face layout (see gen.h for the values). */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gen.h"

static void usage(FILE *f)
{
    const char *const *n;

    fprintf(f, "usage: vl2-mkweights --preset NAME --out DIR [--seed N] [--tokenizer-dir DIR]\n"
               "                     [--shard-size BYTES[K|M|G]] [--config-only] [--list]\n"
               "                     [--stamp FILE] [--quiet]\n\npresets:\n");
    for (n = vl2_gen_preset_names(); *n; n++)
        fprintf(f, "  %-13s %s\n", *n, vl2_gen_preset_about(*n));
}

static int parse_size(const char *s, uint64_t *out)
{
    char *end;
    unsigned long long v;

    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno || end == s || s[0] == '-')
        return -1;
    switch (*end) {
    case 'K': case 'k': v *= 1000; end++; break;
    case 'M': case 'm': v *= 1000000; end++; break;
    case 'G': case 'g': v *= 1000000000ull; end++; break;
    }
    if (*end || !v)
        return -1;
    *out = v;
    return 0;
}

static int list_tensors(const char *preset)
{
    struct vl2_model_config cfg;
    struct vl2_tensor_spec *v;
    struct vl2_err err = { 0 };
    char *text = vl2_gen_config_text(preset);
    size_t n, i;
    int j;

    if (!text) {
        fprintf(stderr, "vl2-mkweights: unknown preset '%s'\n", preset);
        return 2;
    }
    if (vl2_config_parse(&cfg, text, strlen(text), &err) < 0 ||
        vl2_model_tensor_specs(&cfg, &v, &n, &err) < 0) {
        fprintf(stderr, "vl2-mkweights: %s\n", err.msg);
        free(text);
        return 1;
    }
    for (i = 0; i < n; i++) {
        printf("%s [", v[i].name);
        for (j = 0; j < v[i].ndim; j++)
            printf("%s%lld", j ? ", " : "", (long long) v[i].shape[j]);
        printf("]\n");
    }
    free(v);
    free(text);
    return 0;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "preset", required_argument, NULL, 'p' },
        { "out", required_argument, NULL, 'o' },
        { "seed", required_argument, NULL, 's' },
        { "tokenizer-dir", required_argument, NULL, 't' },
        { "shard-size", required_argument, NULL, 'S' },
        { "config-only", no_argument, NULL, 'c' },
        { "list", no_argument, NULL, 'l' },
        { "stamp", required_argument, NULL, 'x' },
        { "quiet", no_argument, NULL, 'q' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    struct vl2_gen_opts o = { 0 };
    struct vl2_err err = { 0 };
    const char *stamp = NULL;
    int c, list = 0;

    while ((c = getopt_long(argc, argv, "p:o:s:t:S:clx:qh", opts, NULL)) != -1) {
        char *end;
        switch (c) {
        case 'p': o.preset = optarg; break;
        case 'o': o.out_dir = optarg; break;
        case 's':
            errno = 0;
            o.seed = strtoll(optarg, &end, 10);
            if (errno || end == optarg || *end) {
                fprintf(stderr, "vl2-mkweights: --seed '%s': not an integer\n", optarg);
                return 2;
            }
            o.has_seed = 1;
            break;
        case 't': o.tokenizer_dir = optarg; break;
        case 'S':
            if (parse_size(optarg, &o.shard_size) < 0) {
                fprintf(stderr, "vl2-mkweights: --shard-size '%s': not a positive size\n",
                        optarg);
                return 2;
            }
            break;
        case 'c': o.config_only = 1; break;
        case 'l': list = 1; break;
        case 'x': stamp = optarg; break;
        case 'q': o.quiet = 1; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc || !o.preset || (!o.out_dir && !list)) {
        usage(stderr);
        return 2;
    }
    if (!vl2_gen_preset_about(o.preset)) {
        fprintf(stderr, "vl2-mkweights: unknown preset '%s'\n", o.preset);
        usage(stderr);
        return 2;
    }
    if (list)
        return list_tensors(o.preset);
    if (vl2_gen_write(&o, NULL, &err) < 0) {
        fprintf(stderr, "vl2-mkweights: %s\n", err.msg);
        return 1;
    }
    if (stamp) {
        int fd = open(stamp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0 || close(fd) < 0) {
            fprintf(stderr, "vl2-mkweights: '%s': %s\n", stamp, strerror(errno));
            return 1;
        }
    }
    return 0;
}

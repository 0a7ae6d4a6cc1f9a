/* main.c - vl2d: the daemon, and offline subcommands that run the same
 * runtime without a socket.  Plain `vl2d` (or `vl2d serve`, or `vl2d` with
 * only options) serves. */
#include <stdio.h>
#include <string.h>

#include "cmd.h"

struct subcommand {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *help;
};

static const struct subcommand subcommands[] = {
    { "serve",       vl2d_cmd_serve,       "serve the Unix socket (default)" },
    { "check-model", vl2d_cmd_check_model, "validate a model directory and summarise it" },
    { "tokenize",    vl2d_cmd_tokenize,    "tokenize standard input (or --decode ids)" },
    { "preprocess",  vl2d_cmd_preprocess,  "decode and tile images, dump the tiles" },
    { "run",         vl2d_cmd_run,         "run the whole pipeline once, without a daemon" },
};

static void usage(FILE *f)
{
    size_t i;

    fprintf(f, "usage: vl2d [serve] [options]\n"
               "       vl2d COMMAND [options]\n\ncommands:\n");
    for (i = 0; i < sizeof(subcommands) / sizeof(subcommands[0]); i++)
        fprintf(f, "  %-12s %s\n", subcommands[i].name, subcommands[i].help);
    fprintf(f, "\n`vl2d COMMAND --help` describes each command's options.\n");
}

int main(int argc, char **argv)
{
    size_t i;

    if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") ||
                      !strcmp(argv[1], "help"))) {
        usage(stdout);
        return 0;
    }
    if (argc >= 2 && !strcmp(argv[1], "--version")) {
        printf("vl2d %s\n", VL2_VERSION);
        return 0;
    }
    if (argc < 2 || argv[1][0] == '-')
        return vl2d_cmd_serve(argc, argv);
    for (i = 0; i < sizeof(subcommands) / sizeof(subcommands[0]); i++)
        if (!strcmp(argv[1], subcommands[i].name))
            return subcommands[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "vl2d: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}

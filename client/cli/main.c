/* main.c - vl2: the command-line client of vl2d.
 *
 * Global options (--socket, --json, --timeout) may come before or after the
 * subcommand; everything else is the subcommand's. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

struct subcommand {
    const char *name;
    int (*fn)(const struct vl2_cli *cli, int argc, char **argv);
    const char *help;
};

static const struct subcommand subcommands[] = {
    { "status", vl2_cmd_status, "show the daemon, its models, queue and speeds" },
    { "models", vl2_cmd_models, "list the models the daemon serves" },
    { "ask",    vl2_cmd_ask,    "ask about images: vl2 ask [-i IMAGE]... PROMPT" },
    { "chat",   vl2_cmd_chat,   "a multi-turn conversation (/image PATH, /reset, /quit)" },
    { "ground", vl2_cmd_ground, "find a phrase: vl2 ground -i IMAGE PHRASE [-o OUT.png]" },
    { "load",   vl2_cmd_load,   "load a model: vl2 load NAME DIR" },
    { "unload", vl2_cmd_unload, "unload a model: vl2 unload NAME" },
    { "tokenize", vl2_cmd_tokenize, "token ids of a text: vl2 tokenize [-m MODEL] [--bos] TEXT" },
};

#define N_SUBCOMMANDS (sizeof(subcommands) / sizeof(subcommands[0]))

static void usage(FILE *f)
{
    size_t i;

    fprintf(f, "usage: vl2 [--socket PATH] [--json] [--timeout SECONDS] COMMAND [args]\n\n"
               "commands:\n");
    for (i = 0; i < N_SUBCOMMANDS; i++)
        fprintf(f, "  %-10s %s\n", subcommands[i].name, subcommands[i].help);
    fprintf(f, "\n'vl2 COMMAND --help' describes each command.\n"
               "\noptions (before or after COMMAND):\n"
               "  --socket PATH      the daemon's socket (default: $VL2_SOCKET, then\n"
               "                     $XDG_RUNTIME_DIR/vl2d.sock or /run/vl2d/vl2d.sock)\n"
               "  --json             print JSON for scripts (streaming commands: one\n"
               "                     object per line and per event; with ask's, chat's\n"
               "                     or ground's --top-logprobs N each token event lists\n"
               "                     its N most likely alternatives)\n"
               "  --timeout SECONDS  longest wait for each answer (default 30; ask, chat,\n"
               "                     ground, load and unload wait as long as it takes)\n"
               "  --help, --version\n");
}

/* Take a global option at argv[*i] when there is one.  Returns 1 when taken,
 * 0 when not a global option, -1 on a usage error. */
static int take_global(struct vl2_cli *cli, int argc, char **argv, int *i)
{
    const char *a = argv[*i], *val = NULL;
    size_t n;

    if (!strcmp(a, "--json")) {
        cli->json = true;
        return 1;
    }
    for (n = 0; n < 2; n++) {
        static const char *const names[] = { "--socket", "--timeout" };
        size_t len = strlen(names[n]);

        if (strncmp(a, names[n], len) != 0 || (a[len] != '\0' && a[len] != '='))
            continue;
        if (a[len] == '=') {
            val = a + len + 1;
        } else {
            if (*i + 1 >= argc) {
                fprintf(stderr, "vl2: %s needs a value\n", names[n]);
                return -1;
            }
            val = argv[++*i];
        }
        if (n == 0) {
            if (!val[0]) {
                fprintf(stderr, "vl2: --socket needs a path\n");
                return -1;
            }
            cli->socket_path = val;
        } else {
            char *end;
            double s = strtod(val, &end);

            if (*end || end == val || s <= 0 || s > 86400) {
                fprintf(stderr, "vl2: --timeout '%s': expected seconds, 0 to 86400\n", val);
                return -1;
            }
            cli->timeout_ms = (int) (s * 1000.0);
            cli->timeout_set = true;
        }
        return 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    struct vl2_cli cli = { .socket_path = NULL, .json = false, .timeout_ms = 30000,
                           .timeout_set = false };
    const struct subcommand *cmd = NULL;
    char **rest;
    int i, n_rest = 0, r;
    size_t k;

    rest = calloc((size_t) argc + 1, sizeof(*rest));
    if (!rest) {
        fprintf(stderr, "vl2: out of memory\n");
        return 1;
    }
    for (i = 1; i < argc; i++) {
        const char *a = argv[i];

        if (!strcmp(a, "--")) {
            if (cmd)
                rest[n_rest++] = argv[i];   /* the subcommand's own end of options */
            for (i++; i < argc; i++)
                rest[n_rest++] = argv[i];
            break;
        }
        r = take_global(&cli, argc, argv, &i);
        if (r < 0) {
            free(rest);
            return 2;
        }
        if (r > 0)
            continue;
        if (!cmd && (!strcmp(a, "--help") || !strcmp(a, "-h") || !strcmp(a, "help"))) {
            usage(stdout);
            free(rest);
            return 0;
        }
        if (!cmd && !strcmp(a, "--version")) {
            printf("vl2 %s\n", VL2_VERSION);
            free(rest);
            return 0;
        }
        if (!cmd && a[0] != '-') {
            for (k = 0; k < N_SUBCOMMANDS; k++)
                if (!strcmp(a, subcommands[k].name))
                    cmd = &subcommands[k];
            if (!cmd) {
                fprintf(stderr, "vl2: unknown command '%s'; try 'vl2 --help'\n", a);
                free(rest);
                return 2;
            }
            rest[n_rest++] = argv[i];  /* the subcommand sees its name as argv[0] */
            continue;
        }
        if (!cmd) {
            fprintf(stderr, "vl2: unknown option '%s'; try 'vl2 --help'\n", a);
            free(rest);
            return 2;
        }
        rest[n_rest++] = argv[i];
    }
    if (!cmd) {
        usage(stderr);
        free(rest);
        return 2;
    }
    r = cmd->fn(&cli, n_rest, rest);
    free(rest);
    return r;
}

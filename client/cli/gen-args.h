/* gen-args.h - the arguments `vl2 ask`, `vl2 chat` and `vl2 ground` share. */
#ifndef VL2_CLI_GEN_ARGS_H
#define VL2_CLI_GEN_ARGS_H

#include <stdio.h>

#include "cli.h"

#define VL2_CLI_MAX_IMAGES 16     /* -i per command (the protocol's descriptors per frame) */
#define VL2_CLI_MAX_WORDS  1024   /* positional arguments */

enum {
    GEN_ALLOW_IMAGES = 1u << 0,   /* -i/--image, --send-bytes */
    GEN_ALLOW_OUTPUT = 1u << 1,   /* -o/--output */
    GEN_ALLOW_GROUNDING = 1u << 2,   /* --grounding */
};

struct vl2_cli_gen_args {
    const char *model;                        /* -m; NULL: the daemon's default */
    const char *images[VL2_CLI_MAX_IMAGES];   /* -i, in order */
    size_t n_images;
    bool send_bytes;                          /* --send-bytes */
    int exif;                                 /* --exif 1, --no-exif 0, else -1 */
    bool grounding;                           /* --grounding */
    const char *output;                       /* -o */
    struct vl2_cli_sampling s;
    const char *words[VL2_CLI_MAX_WORDS];     /* positional arguments */
    size_t n_words;
};

/* Parse argv[1..] (argv[0] is the subcommand).  Returns 0, 1 after printing
 * the help (exit 0), or 2 after a usage error on stderr. */
int vl2_cli_gen_args_parse(struct vl2_cli_gen_args *a, const char *cmd, unsigned allow,
                           int argc, char **argv, void (*usage)(FILE *f));

/* Open the images of @a into @out (a->n_images entries).  Returns 0, or 1
 * after reporting the failure (nothing left open). */
int vl2_cli_open_images(struct vl2_client *c, const struct vl2_cli *cli,
                        const struct vl2_cli_gen_args *a, struct vl2_cli_image *out);

#endif

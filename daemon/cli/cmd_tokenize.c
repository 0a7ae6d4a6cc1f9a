/* cmd_tokenize.c - vl2d tokenize (placeholder until its module lands). */
#include <stdio.h>

#include "cmd.h"

int vl2d_cmd_tokenize(int argc, char **argv)
{
    (void) argc;
    (void) argv;
    fprintf(stderr, "vl2d tokenize: not implemented yet\n");
    return 1;
}

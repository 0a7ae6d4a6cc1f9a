/* cmd_preprocess.c - vl2d preprocess (placeholder until its module lands). */
#include <stdio.h>

#include "cmd.h"

int vl2d_cmd_preprocess(int argc, char **argv)
{
    (void) argc;
    (void) argv;
    fprintf(stderr, "vl2d preprocess: not implemented yet\n");
    return 1;
}

/* cmd_serve.c - vl2d serve (placeholder until its module lands). */
#include <stdio.h>

#include "cmd.h"

int vl2d_cmd_serve(int argc, char **argv)
{
    (void) argc;
    (void) argv;
    fprintf(stderr, "vl2d serve: not implemented yet\n");
    return 1;
}

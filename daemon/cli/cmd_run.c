/* cmd_run.c - vl2d run (placeholder until its module lands). */
#include <stdio.h>

#include "cmd.h"

int vl2d_cmd_run(int argc, char **argv)
{
    (void) argc;
    (void) argv;
    fprintf(stderr, "vl2d run: not implemented yet\n");
    return 1;
}

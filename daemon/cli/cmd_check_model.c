/* cmd_check_model.c - vl2d check-model (placeholder until its module lands). */
#include <stdio.h>

#include "cmd.h"

int vl2d_cmd_check_model(int argc, char **argv)
{
    (void) argc;
    (void) argv;
    fprintf(stderr, "vl2d check-model: not implemented yet\n");
    return 1;
}

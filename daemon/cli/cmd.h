/* cmd.h - the subcommands of vl2d, one file each.  Each returns the process
 * exit status (0 success, 1 failure reported on stderr, 2 usage error). */
#ifndef VL2D_CMD_H
#define VL2D_CMD_H

int vl2d_cmd_serve(int argc, char **argv);
int vl2d_cmd_check_model(int argc, char **argv);
int vl2d_cmd_tokenize(int argc, char **argv);
int vl2d_cmd_preprocess(int argc, char **argv);
int vl2d_cmd_run(int argc, char **argv);

#endif

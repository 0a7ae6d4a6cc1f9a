/* cli.h - the `vl2` command: global options and one function per
 * subcommand.  Each returns the exit status: 0 success, 1 failure (one line
 * on stderr), 2 usage error. */
#ifndef VL2_CLI_H
#define VL2_CLI_H

#include <stdbool.h>

#include "vl2.h"

/* Options every subcommand accepts, before or after its name. */
struct vl2_cli {
    const char *socket_path;   /* --socket PATH; NULL: $VL2_SOCKET, then the default */
    bool json;                 /* --json: one JSON document on stdout */
    int timeout_ms;            /* --timeout SECONDS */
};

/* Connect to the daemon as @cli says; on failure print one line and return
 * NULL. */
struct vl2_client *vl2_cli_connect(const struct vl2_cli *cli);

/* Print a daemon or transport error as one line on stderr. */
void vl2_cli_error(const struct vl2_err *err);

/* Format @bytes as "12.3 MiB" into @buf. */
const char *vl2_cli_bytes(unsigned long long bytes, char *buf, unsigned size);

int vl2_cmd_status(const struct vl2_cli *cli, int argc, char **argv);
int vl2_cmd_models(const struct vl2_cli *cli, int argc, char **argv);

#endif

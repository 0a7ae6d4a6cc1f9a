/* common.c - what the vl2 subcommands share. */
#include <stdio.h>

#include "cli.h"

struct vl2_client *vl2_cli_connect(const struct vl2_cli *cli)
{
    struct vl2_client_opts o = vl2_client_default_opts();
    struct vl2_client *c = NULL;
    struct vl2_err err = { 0 };

    o.socket_path = cli->socket_path;
    o.timeout_ms = cli->timeout_ms;
    o.client_name = "vl2 " VL2_VERSION;
    if (vl2_client_open(&o, &c, &err) < 0) {
        vl2_cli_error(&err);
        return NULL;
    }
    return c;
}

void vl2_cli_error(const struct vl2_err *err)
{
    fprintf(stderr, "%s\n", err->msg[0] ? err->msg : vl2_status_name(err->code));
}

const char *vl2_cli_bytes(unsigned long long bytes, char *buf, unsigned size)
{
    static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB" };
    double v = (double) bytes;
    unsigned u = 0;

    while (v >= 1024.0 && u < 4) {
        v /= 1024.0;
        u++;
    }
    if (u == 0)
        snprintf(buf, size, "%llu B", bytes);
    else
        snprintf(buf, size, "%.1f %s", v, units[u]);
    return buf;
}

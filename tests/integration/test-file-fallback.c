/* test-file-fallback.c - the O_NOFOLLOW fallback of vl2_file_open (issue
 * 18): weights/file.c built with VL2_FILE_NO_OPENAT2, as on a kernel without
 * openat2 (or a seccomp filter answering ENOSYS).  Under the beneath policy
 * a regular file opens; a symbolic link is refused as one, whether it leads
 * out of the directory or stays inside it (no link at all); a FIFO is
 * refused as not a regular file without blocking; a missing file is
 * ENOTFOUND.  With the policy off, the link is followed.
 *
 * usage: test-file-fallback */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/check.h"
#include "weights.h"

static char dir[] = "/tmp/vl2-fallback-XXXXXX";
static char out_file[] = "/tmp/vl2-fallback-out-XXXXXX";

static void path_of(char *buf, size_t n, const char *name)
{
    snprintf(buf, n, "%s/%s", dir, name);
}

static int try_open(const char *name, struct vl2_err *err)
{
    char p[600];
    int fd = -1, r;

    path_of(p, sizeof(p), name);
    memset(err, 0, sizeof(*err));
    r = vl2_file_open(p, "weights", &fd, NULL, err);
    if (r == 0)
        close(fd);
    return r;
}

int main(void)
{
    struct vl2_err err;
    char p[600];
    int fd, r;

    if (!mkdtemp(dir) || (fd = mkstemp(out_file)) < 0) {
        perror("test-file-fallback: temporary files");
        return 1;
    }
    close(fd);
    path_of(p, sizeof(p), "config.json");
    fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    CHECK(fd >= 0 && write(fd, "{}", 2) == 2);
    if (fd >= 0)
        close(fd);
    path_of(p, sizeof(p), "inside");
    CHECK(symlink("config.json", p) == 0);
    path_of(p, sizeof(p), "outside");
    CHECK(symlink(out_file, p) == 0);
    path_of(p, sizeof(p), "fifo");
    CHECK(mkfifo(p, 0644) == 0);

    vl2_file_set_beneath(true);
    CHECK_EQ_INT(try_open("config.json", &err), 0);
    r = try_open("outside", &err);
    CHECK_MSG(r == VL2_EPERM && strstr(err.msg, "symbolic link"), "outside: %d %s", r,
              err.msg);
    r = try_open("inside", &err);
    CHECK_MSG(r == VL2_EPERM && strstr(err.msg, "symbolic link"), "inside: %d %s", r, err.msg);
    r = try_open("fifo", &err);
    CHECK_MSG(r == VL2_EIO && strstr(err.msg, "not a regular file"), "fifo: %d %s", r,
              err.msg);
    r = try_open("missing", &err);
    CHECK_MSG(r == VL2_ENOTFOUND, "missing: %d %s", r, err.msg);

    vl2_file_set_beneath(false);
    CHECK_EQ_INT(try_open("outside", &err), 0);

    path_of(p, sizeof(p), "config.json");
    unlink(p);
    path_of(p, sizeof(p), "inside");
    unlink(p);
    path_of(p, sizeof(p), "outside");
    unlink(p);
    path_of(p, sizeof(p), "fifo");
    unlink(p);
    rmdir(dir);
    unlink(out_file);
    fprintf(stderr, "test-file-fallback: %d check(s) failed\n", check_failures);
    return check_failures ? 1 : 0;
}

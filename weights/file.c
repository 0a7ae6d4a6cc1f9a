/* file.c - opening the files of a model directory (see weights.h:
 * vl2_file_open).
 *
 * A daemon opens model files on behalf of clients, so every open here is
 * safe against what a directory may hold instead of a file: O_NONBLOCK (a
 * FIFO or a tty named config.json must not block the loading thread),
 * O_NOCTTY, and a regular-file check before anything is read.  With the
 * "beneath" policy (vl2d serve sets it), the file is opened relative to its
 * directory with openat2(RESOLVE_BENEATH): a symbolic link that leads out of
 * the model directory is refused.  Where openat2 is missing (Linux < 5.6, or
 * a seccomp filter answering ENOSYS), O_NOFOLLOW stands in: no link at all.
 *
 * The policy is the one process-wide setting of this library: a daemon
 * decides it once, at start, for every model it opens. */
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#if defined(__linux__) && __has_include(<linux/openat2.h>)
#include <linux/openat2.h>
#define HAVE_OPENAT2_H 1
#endif

#include "weights.h"

static atomic_bool open_beneath;

void vl2_file_set_beneath(bool on)
{
    atomic_store(&open_beneath, on);
}

bool vl2_file_beneath(void)
{
    return atomic_load(&open_beneath);
}

/* openat2(RESOLVE_BENEATH), or -1 with errno ENOSYS where there is none
 * (or in a build with VL2_FILE_NO_OPENAT2 defined: the fallback's test). */
static int open_beneath_at(int dfd, const char *name, int flags)
{
#if defined(HAVE_OPENAT2_H) && defined(SYS_openat2) && !defined(VL2_FILE_NO_OPENAT2)
    struct open_how how;

    memset(&how, 0, sizeof(how));
    how.flags = (unsigned long long) flags;
    how.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS;
    return (int) syscall(SYS_openat2, dfd, name, &how, sizeof(how));
#else
    (void) dfd;
    (void) name;
    (void) flags;
    errno = ENOSYS;
    return -1;
#endif
}

/* Open @name inside the directory @dir under the beneath policy. */
static int open_in_dir(const char *dir, const char *name, int flags)
{
    int dfd, fd, e;

    dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return -1;
    fd = open_beneath_at(dfd, name, flags);
    if (fd < 0 && (errno == ENOSYS || errno == EPERM || errno == E2BIG))
        fd = openat(dfd, name, flags | O_NOFOLLOW);   /* no openat2: no link at all */
    e = errno;
    (void) close(dfd);
    errno = e;
    return fd;
}

int vl2_file_open(const char *path, const char *who, int *ret_fd, struct stat *ret_st,
                  struct vl2_err *err)
{
    const int flags = O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY;
    struct stat st;
    int fd, e;

    if (!vl2_file_beneath()) {
        fd = open(path, flags);
    } else {
        const char *slash = strrchr(path, '/');
        char dir[4096];

        if (!slash)
            snprintf(dir, sizeof(dir), ".");
        else if (slash == path)
            snprintf(dir, sizeof(dir), "/");
        else if ((size_t) (slash - path) >= sizeof(dir))
            return vl2_err_set(err, VL2_ELIMIT, "%s: '%s': path too long", who, path);
        else
            snprintf(dir, sizeof(dir), "%.*s", (int) (slash - path), path);
        fd = open_in_dir(dir, slash ? slash + 1 : path, flags);
    }
    if (fd < 0) {
        e = errno;
        if (e == ENOENT)
            return vl2_err_set(err, VL2_ENOTFOUND, "%s: '%s': %s", who, path, strerror(e));
        if (e == EXDEV || e == ELOOP)
            return vl2_err_set(err, VL2_EPERM, "%s: '%s': a symbolic link leading out of the "
                               "model directory; refused", who, path);
        return vl2_err_set(err, VL2_EIO, "%s: '%s': %s", who, path, strerror(e));
    }
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        (void) close(fd);
        return vl2_err_set(err, VL2_EIO, "%s: '%s': not a regular file", who, path);
    }
    *ret_fd = fd;
    if (ret_st)
        *ret_st = st;
    return 0;
}

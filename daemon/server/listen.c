/* listen.c - the listening socket: taken from systemd (socket activation) or
 * bound to a path.
 *
 * Binding a path, in order:
 *   1. lock "<path>.lock" (flock, non-blocking): another vl2d holding it is
 *      serving the path, so we refuse with its pid;
 *   2. a socket file already at the path is either live (something accepts:
 *      refuse) or stale (connection refused: remove it);
 *   3. bind, chmod, listen.
 * On exit the socket file and the lock file are removed, the socket only if
 * it is still the one we created. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "server-impl.h"
#include "vl2-config.h"

#if VL2_HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

/* Take the lock file beside the socket.  Retries when the file we locked was
 * replaced meanwhile (a daemon that exited removes it). */
static int take_lock(struct vl2_server *srv, struct vl2_err *err)
{
    int attempt;

    if (snprintf(srv->lock_path, sizeof(srv->lock_path), "%s.lock", srv->socket_path) >=
        (int) sizeof(srv->lock_path))
        return vl2_err_set(err, VL2_ELIMIT, "server: lock path for '%s' is too long",
                           srv->socket_path);
    for (attempt = 0; attempt < 8; attempt++) {
        struct stat a, b;
        char pid[32];
        int fd, n;

        fd = open(srv->lock_path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd < 0)
            return vl2_err_set(err, VL2_EIO, "server: cannot open lock file '%s': %s",
                               srv->lock_path, strerror(errno));
        if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
            int e = errno;
            char other[32] = "";

            n = (int) pread(fd, other, sizeof(other) - 1, 0);
            other[n > 0 ? n : 0] = '\0';
            other[strcspn(other, "\n")] = '\0';
            (void) close(fd);
            if (e == EWOULDBLOCK)
                return vl2_err_set(err, VL2_EBUSY,
                                   "server: another vl2d (pid %s) is already serving '%s'",
                                   other[0] ? other : "unknown", srv->socket_path);
            return vl2_err_set(err, VL2_EIO, "server: cannot lock '%s': %s",
                               srv->lock_path, strerror(e));
        }
        if (fstat(fd, &a) == 0 && stat(srv->lock_path, &b) == 0 &&
            a.st_dev == b.st_dev && a.st_ino == b.st_ino) {
            n = snprintf(pid, sizeof(pid), "%ld\n", (long) getpid());
            if (ftruncate(fd, 0) == 0)
                (void) !pwrite(fd, pid, (size_t) n, 0);
            srv->lock_fd = fd;
            return 0;
        }
        (void) close(fd);  /* removed under us: lock the new one */
    }
    return vl2_err_set(err, VL2_EBUSY, "server: lock file '%s' keeps changing",
                       srv->lock_path);
}

/* Deal with whatever is at the socket path already. */
static int clear_path(struct vl2_server *srv, const struct sockaddr_un *sa, int sa_len,
                      struct vl2_err *err)
{
    struct stat st;
    int fd, r;

    if (lstat(srv->socket_path, &st) < 0) {
        if (errno == ENOENT)
            return 0;
        return vl2_err_set(err, VL2_EIO, "server: cannot inspect '%s': %s",
                           srv->socket_path, strerror(errno));
    }
    if (!S_ISSOCK(st.st_mode))
        return vl2_err_set(err, VL2_EBUSY,
                           "server: '%s' exists and is not a socket; refusing to replace it",
                           srv->socket_path);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return vl2_err_set(err, VL2_EIO, "server: socket: %s", strerror(errno));
    r = connect(fd, (const struct sockaddr *) sa, (socklen_t) sa_len);
    (void) close(fd);
    if (r == 0)
        return vl2_err_set(err, VL2_EBUSY,
                           "server: another daemon is already listening on '%s'",
                           srv->socket_path);
    if (errno != ECONNREFUSED)
        return vl2_err_set(err, VL2_EIO, "server: cannot probe existing socket '%s': %s",
                           srv->socket_path, strerror(errno));
    if (unlink(srv->socket_path) < 0 && errno != ENOENT)
        return vl2_err_set(err, VL2_EIO, "server: cannot remove stale socket '%s': %s",
                           srv->socket_path, strerror(errno));
    vl2_log(VL2_LOG_INFO, "removed stale socket '%s'", srv->socket_path);
    return 0;
}

/* /run/vl2d outside systemd: create the last directory of the system path. */
static void make_system_dir(const char *path)
{
    char dir[108];
    char *slash;

    snprintf(dir, sizeof(dir), "%s", path);
    slash = strrchr(dir, '/');
    if (!slash || slash == dir)
        return;
    *slash = '\0';
    if (mkdir(dir, 0755) == 0)
        vl2_log(VL2_LOG_INFO, "created '%s'", dir);
}

static int bind_path(struct vl2_server *srv, struct vl2_err *err)
{
    struct sockaddr_un sa;
    struct stat st;
    mode_t old_umask;
    int sa_len, fd, r;

    sa_len = vl2_ipc_sockaddr(srv->socket_path, &sa, err);
    if (sa_len < 0)
        return sa_len;
    r = take_lock(srv, err);
    if (r < 0)
        return r;
    r = clear_path(srv, &sa, sa_len, err);
    if (r < 0)
        return r;
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return vl2_err_set(err, VL2_EIO, "server: socket: %s", strerror(errno));
    old_umask = umask(0777 & ~srv->opts.socket_mode);
    r = bind(fd, (const struct sockaddr *) &sa, (socklen_t) sa_len);
    (void) umask(old_umask);
    if (r < 0) {
        int e = errno;

        (void) close(fd);
        return vl2_err_set(err, e == EADDRINUSE ? VL2_EBUSY : VL2_EIO,
                           "server: cannot bind '%s': %s", srv->socket_path, strerror(e));
    }
    srv->socket_created = true;
    if (stat(srv->socket_path, &st) == 0) {
        srv->socket_dev = st.st_dev;
        srv->socket_ino = st.st_ino;
    }
    (void) chmod(srv->socket_path, srv->opts.socket_mode);
    if (listen(fd, 128) < 0) {
        int e = errno;

        (void) close(fd);
        return vl2_err_set(err, VL2_EIO, "server: cannot listen on '%s': %s",
                           srv->socket_path, strerror(e));
    }
    srv->listen_fd = fd;
    return 0;
}

#if VL2_HAVE_SYSTEMD
/* Returns 1 when systemd passed a socket (now srv->listen_fd), 0 when not. */
static int take_activated(struct vl2_server *srv, struct vl2_err *err)
{
    struct sockaddr_un sa;
    socklen_t len = sizeof(sa);
    int n, fd, flags;

    n = sd_listen_fds(1);
    if (n < 0)
        return vl2_err_set(err, VL2_EIO, "server: sd_listen_fds: %s", strerror(-n));
    if (n == 0)
        return 0;
    if (n > 1)
        return vl2_err_set(err, VL2_EINVAL,
                           "server: systemd passed %d sockets, expected one", n);
    fd = SD_LISTEN_FDS_START;
    if (sd_is_socket_unix(fd, SOCK_STREAM, 1, NULL, 0) <= 0)
        return vl2_err_set(err, VL2_EINVAL,
                           "server: the socket systemd passed is not a listening Unix "
                           "stream socket");
    flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0 ||
        fcntl(fd, F_SETFD, FD_CLOEXEC) < 0)
        return vl2_err_set(err, VL2_EIO, "server: fcntl on the systemd socket: %s",
                           strerror(errno));
    memset(&sa, 0, sizeof(sa));
    if (getsockname(fd, (struct sockaddr *) &sa, &len) == 0 && sa.sun_path[0])
        snprintf(srv->socket_path, sizeof(srv->socket_path), "%.*s",
                 (int) sizeof(sa.sun_path), sa.sun_path);
    else
        srv->socket_path[0] = '\0';
    srv->listen_fd = fd;
    srv->activated = true;
    return 1;
}
#endif

int vl2__server_listen(struct vl2_server *srv, struct vl2_err *err)
{
    const struct vl2_server_opts *o = &srv->opts;
    bool system;
    int r;

#if VL2_HAVE_SYSTEMD
    if (o->socket_activation) {
        r = take_activated(srv, err);
        if (r < 0)
            return r;
        if (r > 0) {
            if (o->socket_path)
                vl2_log(VL2_LOG_INFO, "using the socket from systemd, not '%s'",
                        o->socket_path);
            return 0;
        }
    }
#endif
    system = o->system || (geteuid() == 0 && !getenv("XDG_RUNTIME_DIR"));
    if (o->socket_path) {
        if (snprintf(srv->socket_path, sizeof(srv->socket_path), "%s", o->socket_path) >=
            (int) sizeof(srv->socket_path))
            return vl2_err_set(err, VL2_ELIMIT,
                               "server: socket path '%s' is too long (at most %zu bytes)",
                               o->socket_path, sizeof(srv->socket_path) - 1);
    } else {
        struct vl2_err why = { 0 };

        r = vl2_ipc_default_socket(system, srv->socket_path, sizeof(srv->socket_path), &why);
        if (r < 0) {
            return vl2_err_set(err, r, "server: %s; pass --socket PATH (or --system)",
                               why.msg);
        }
        if (system)
            make_system_dir(srv->socket_path);
    }
    return bind_path(srv, err);
}

void vl2__server_unlisten(struct vl2_server *srv)
{
    vl2__server_unlisten_socket(srv);
    if (srv->lock_fd >= 0) {
        (void) unlink(srv->lock_path);  /* still locked: nobody else owns it */
        (void) close(srv->lock_fd);
        srv->lock_fd = -1;
    }
}

void vl2__server_unlisten_socket(struct vl2_server *srv)
{
    if (srv->listen_fd >= 0) {
        (void) close(srv->listen_fd);
        srv->listen_fd = -1;
    }
    if (srv->socket_created) {
        struct stat st;

        if (stat(srv->socket_path, &st) == 0 && st.st_dev == srv->socket_dev &&
            st.st_ino == srv->socket_ino)
            (void) unlink(srv->socket_path);
        srv->socket_created = false;
    }
}

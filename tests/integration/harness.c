/* harness.c - see harness.h. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "../common/util.h"

static long long now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

char *harness_tmpdir(void)
{
    char tmpl[] = "/tmp/vl2-it-XXXXXX";
    char *d = mkdtemp(tmpl);

    return d ? strdup(d) : NULL;
}

void harness_rmdir(char *dir)
{
    DIR *d;
    struct dirent *e;
    char path[512];

    if (!dir)
        return;
    d = opendir(dir);
    if (d) {
        while ((e = readdir(d))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
                continue;
            snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
            (void) unlink(path);
        }
        closedir(d);
    }
    (void) rmdir(dir);
    free(dir);
}

static void clean_child_env(void)
{
    unsetenv("LISTEN_FDS");
    unsetenv("LISTEN_PID");
    unsetenv("LISTEN_FDNAMES");
    unsetenv("NOTIFY_SOCKET");
    unsetenv("VL2_SOCKET");
}

static bool can_connect(const char *socket)
{
    int fd = harness_connect(socket);

    if (fd < 0)
        return false;
    close(fd);
    return true;
}

pid_t harness_start(const char *vl2d, const char *socket, const char *const *args,
                    const char *log_path, int *ret_status)
{
    const char *argv[32];
    size_t n = 0;
    long long end;
    pid_t pid;

    argv[n++] = vl2d;
    while (args && *args && n < 30)
        argv[n++] = *args++;
    argv[n] = NULL;
    pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        int fd = open(log_path ? log_path : "/dev/null", O_WRONLY | O_CREAT | O_APPEND, 0644);

        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            if (fd > 2)
                close(fd);
        }
        clean_child_env();
        execv(vl2d, (char *const *) argv);
        _exit(127);
    }
    if (!socket)
        return pid;  /* the caller waits for it */
    end = now_ms() + 15000;
    while (now_ms() < end) {
        int status;

        if (waitpid(pid, &status, WNOHANG) == pid) {
            if (ret_status)
                *ret_status = status;
            return -1;
        }
        if (socket && can_connect(socket))
            return pid;
        test_sleep_ms(10);
    }
    fprintf(stderr, "harness: vl2d did not start listening on '%s'\n", socket);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return -1;
}

int harness_wait(pid_t pid, int timeout_ms)
{
    long long end = now_ms() + timeout_ms;
    int status;

    if (pid <= 0)
        return -1;  /* never kill(-1) or a process group */

    while (now_ms() < end) {
        pid_t r = waitpid(pid, &status, WNOHANG);

        if (r == pid)
            return status;
        if (r < 0)
            return -1;
        test_sleep_ms(5);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    return -1;
}

int harness_stop(pid_t pid, int sig, int timeout_ms)
{
    if (pid <= 0)
        return -1;
    kill(pid, sig);
    return harness_wait(pid, timeout_ms);
}

static char *read_fd_all(int fd)
{
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    ssize_t n;

    if (!buf)
        return NULL;
    for (;;) {
        if (len + 1 >= cap) {
            char *p = realloc(buf, cap * 2);

            if (!p)
                break;
            buf = p;
            cap *= 2;
        }
        n = read(fd, buf + len, cap - len - 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        len += (size_t) n;
    }
    buf[len] = '\0';
    return buf;
}

char *harness_slurp(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    char *s;

    if (fd < 0)
        return NULL;
    s = read_fd_all(fd);
    close(fd);
    return s;
}

int harness_run(const char *const *argv, const char *const *env, char **ret_out,
                char **ret_err)
{
    char out_path[] = "/tmp/vl2-it-out-XXXXXX", err_path[] = "/tmp/vl2-it-err-XXXXXX";
    int out_fd = mkstemp(out_path), err_fd = mkstemp(err_path), status = 0;
    pid_t pid;

    if (out_fd < 0 || err_fd < 0)
        return -1;
    pid = fork();
    if (pid == 0) {
        dup2(out_fd, 1);
        dup2(err_fd, 2);
        clean_child_env();
        while (env && *env) {
            const char *eq = strchr(*env, '=');

            if (eq && eq[1] == '\0') {
                char name[128];

                snprintf(name, sizeof(name), "%.*s", (int) (eq - *env), *env);
                unsetenv(name);
            } else {
                putenv((char *) *env);
            }
            env++;
        }
        execv(argv[0], (char *const *) argv);
        _exit(127);
    }
    status = harness_wait(pid, 30000);
    if (ret_out)
        *ret_out = harness_slurp(out_path);
    if (ret_err)
        *ret_err = harness_slurp(err_path);
    close(out_fd);
    close(err_fd);
    unlink(out_path);
    unlink(err_path);
    if (status < 0 || !WIFEXITED(status))
        return -1;
    return WEXITSTATUS(status);
}

int harness_connect(const char *socket_path)
{
    struct sockaddr_un sa;
    int len = vl2_ipc_sockaddr(socket_path, &sa, NULL), fd;

    if (len < 0)
        return -1;
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (connect(fd, (struct sockaddr *) &sa, (socklen_t) len) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

void harness_write(int fd, const void *p, size_t n)
{
    const char *b = p;

    while (n > 0) {
        ssize_t k = send(fd, b, n, MSG_NOSIGNAL);

        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) {
            fprintf(stderr, "harness: write: %s\n", strerror(errno));
            return;
        }
        b += k;
        n -= (size_t) k;
    }
}

void harness_send(int fd, Vl2__Request *req)
{
    size_t n = vl2__request__get_packed_size(req);
    uint8_t *buf = malloc(n + 4);

    if (!buf)
        return;
    buf[0] = (uint8_t) n;
    buf[1] = (uint8_t) (n >> 8);
    buf[2] = (uint8_t) (n >> 16);
    buf[3] = (uint8_t) (n >> 24);
    vl2__request__pack(req, buf + 4);
    harness_write(fd, buf, n + 4);
    free(buf);
}

int harness_recv(int fd, int timeout_ms, Vl2__Response **ret)
{
    struct vl2_ipc_reader r;
    struct vl2_err err = { 0 };
    long long end = now_ms() + timeout_ms;
    int flags = fcntl(fd, F_GETFL), rc = -1;

    fcntl(fd, F_SETFL, flags | O_NONBLOCK);
    vl2_ipc_reader_init(&r, 0);
    for (;;) {
        struct pollfd p = { .fd = fd, .events = POLLIN };
        int k = vl2_ipc_reader_read(&r, fd, &err);

        if (k == VL2_IPC_FRAME) {
            struct vl2_ipc_frame f = { 0 };

            vl2_ipc_reader_take(&r, &f);
            *ret = vl2_ipc_response_decode(f.payload, f.size, &err);
            vl2_ipc_frame_done(&f);
            if (!*ret)
                fprintf(stderr, "harness: %s\n", err.msg);
            rc = *ret ? 1 : -1;
            break;
        }
        if (k == VL2_IPC_EOF) {
            rc = 0;
            break;
        }
        if (k < 0) {
            fprintf(stderr, "harness: %s\n", err.msg);
            break;
        }
        if (now_ms() >= end) {
            fprintf(stderr, "harness: no response within %d ms\n", timeout_ms);
            break;
        }
        poll(&p, 1, (int) (end - now_ms()));
    }
    vl2_ipc_reader_done(&r);
    fcntl(fd, F_SETFL, flags);
    return rc;
}

bool harness_expect_eof(int fd, int timeout_ms)
{
    Vl2__Response *resp = NULL;
    int r = harness_recv(fd, timeout_ms, &resp);

    if (r > 0) {
        fprintf(stderr, "harness: expected the connection to close, got a '%s' response\n",
                vl2_ipc_response_name(resp->body_case));
        vl2__response__free_unpacked(resp, NULL);
        return false;
    }
    return r == 0;
}

Vl2__Response *harness_hello(int fd, uint32_t version, uint64_t id)
{
    Vl2__Request req = VL2__REQUEST__INIT;
    Vl2__Hello h = VL2__HELLO__INIT;
    Vl2__Response *resp = NULL;

    h.has_protocol_version = 1;
    h.protocol_version = version;
    h.client_name = (char *) "integration test";
    req.has_id = 1;
    req.id = id;
    req.body_case = VL2__REQUEST__BODY_HELLO;
    req.hello = &h;
    harness_send(fd, &req);
    if (harness_recv(fd, 5000, &resp) <= 0)
        return NULL;
    return resp;
}

/* harness.h - helpers for the integration tests: temporary directories,
 * starting and stopping vl2d, running vl2, raw protocol clients. */
#ifndef VL2_TEST_HARNESS_H
#define VL2_TEST_HARNESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "ipc.h"

/* A fresh directory under /tmp (short, for socket paths); removed with its
 * files by harness_rmdir(). */
char *harness_tmpdir(void);
void harness_rmdir(char *dir);

/* Start @vl2d with @args (NULL-terminated, after argv[0]).  Waits until
 * @socket accepts connections (or the daemon exits).  Returns the pid, or -1
 * when it exited early (its status in *@ret_status when not NULL).  With a
 * NULL @socket, returns the pid at once (for a daemon expected to fail). */
pid_t harness_start(const char *vl2d, const char *socket, const char *const *args,
                    const char *log_path, int *ret_status);

/* Send @sig and wait up to @timeout_ms; returns the wait status, or -1 after
 * having to SIGKILL it. */
int harness_stop(pid_t pid, int sig, int timeout_ms);

/* Wait for @pid to exit within @timeout_ms; -1 if it did not (then killed). */
int harness_wait(pid_t pid, int timeout_ms);

/* Run @argv with the extra environment @env ("K=V" strings, NULL-terminated;
 * "K=" alone removes K), capturing stdout and stderr into malloc'd strings.
 * Returns the exit status (0-255), or -1 when it did not exit normally. */
int harness_run(const char *const *argv, const char *const *env, char **ret_out,
                char **ret_err);

/* A raw protocol client: connected blocking socket, or -1. */
int harness_connect(const char *socket);
void harness_write(int fd, const void *p, size_t n);
/* Queue @req as one frame and write it. */
void harness_send(int fd, Vl2__Request *req);
/* Read one response within @timeout_ms: 1 and *@ret, 0 on EOF, -1 on error
 * or timeout (reported on stderr). */
int harness_recv(int fd, int timeout_ms, Vl2__Response **ret);
/* True when the daemon closes @fd within @timeout_ms (reading nothing else). */
bool harness_expect_eof(int fd, int timeout_ms);
/* Hello with @version; returns the response (caller frees) or NULL. */
Vl2__Response *harness_hello(int fd, uint32_t version, uint64_t id);

/* Read a whole file into a malloc'd string (NULL if missing). */
char *harness_slurp(const char *path);

#endif

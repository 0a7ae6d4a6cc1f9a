/* fake-daemon.h - a stand-in for vl2d that speaks the protocol (ipc/
 * framing, generated protobuf) and answers from a script, so the vl2
 * command's handling of streams, boxes, errors and descriptors can be tested
 * without a model.  It runs in a forked child and writes one JSON line per
 * request it receives into a log file. */
#ifndef VL2_TEST_FAKE_DAEMON_H
#define VL2_TEST_FAKE_DAEMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define FAKE_MAX 16

struct fake_box {
    const char *label;
    float x1, y1, x2, y2;
};

/* How the fake answers a Generate. */
struct fake_script {
    const char *pieces[FAKE_MAX];   /* Token texts, in order */
    uint32_t ids[FAKE_MAX];         /* their ids */
    size_t n_pieces;
    struct fake_box boxes[FAKE_MAX];   /* Done.boxes */
    size_t n_boxes;
    int error_code;                 /* < 0: answer Error (code, error_msg) after Accepted */
    const char *error_msg;
    bool echo;                      /* one Token "answer<N>", N = number of messages */
    bool wait_cancel;               /* after Accepted, wait for Cancel (Ack + Error CANCELED) */
};

/* Fork a fake daemon listening on @socket, logging requests to @log.
 * Returns its pid (stop with kill + waitpid), or -1. */
pid_t fake_daemon_start(const char *socket, const char *log, const struct fake_script *s);

/* FNV-1a 64 of @n bytes: how the fake reports image contents. */
uint64_t fake_fnv(const void *p, size_t n);

#endif

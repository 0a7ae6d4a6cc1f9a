/* test-daemon.c - the real vl2d on a temporary socket, driven by the real vl2
 * command, by libvl2 and by raw clients that misbehave.  After each bad
 * client, a second client must still get a correct answer.
 *
 * usage: test-daemon VL2D VL2 */
#include <cjson/cJSON.h>
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
#include <unistd.h>

#include "../common/check.h"
#include "harness.h"
#include "vl2-config.h"
#include "vl2.h"

static const char *vl2d_path;
static const char *vl2_path;

/* The daemon most tests share. */
static char *dir;
static char sock[256];
static char log_path[256];
static pid_t daemon_pid = -1;

/* ---- checks through libvl2 -------------------------------------------- */

struct status_seen {
    int n_status;
    uint32_t protocol_version;
    size_t n_models;
    uint32_t pid;
    char socket_path[256];
};

static int on_status(const Vl2__Response *resp, void *ud)
{
    struct status_seen *s = ud;

    if (resp->body_case == VL2__RESPONSE__BODY_STATUS) {
        s->n_status++;
        s->protocol_version = resp->status->protocol_version;
        s->n_models = resp->status->n_models;
        s->pid = resp->status->pid;
        snprintf(s->socket_path, sizeof(s->socket_path), "%s",
                 resp->status->socket_path ? resp->status->socket_path : "");
    }
    return 0;
}

/* A fresh client asks for Status and gets the right answer. */
static void check_second_client(const char *path, pid_t pid, const char *after)
{
    struct vl2_client_opts o = vl2_client_default_opts();
    struct vl2_client *c = NULL;
    struct vl2_err err = { 0 };
    struct status_seen s = { 0 };
    Vl2__Request req = VL2__REQUEST__INIT;
    Vl2__Status st = VL2__STATUS__INIT;
    int r;

    o.socket_path = path;
    o.timeout_ms = 5000;
    r = vl2_client_open(&o, &c, &err);
    CHECK_MSG(r == 0, "after %s: %s", after, err.msg);
    if (r < 0)
        return;
    req.body_case = VL2__REQUEST__BODY_STATUS;
    req.status = &st;
    r = vl2_client_call(c, &req, NULL, 0, on_status, &s, &err);
    CHECK_MSG(r == 0, "after %s: %s", after, err.msg);
    CHECK_MSG(s.n_status == 1, "after %s", after);
    CHECK_EQ_INT(s.protocol_version, 1);
    CHECK_EQ_INT(s.n_models, 0);
    CHECK_EQ_INT(s.pid, pid);
    CHECK(!strcmp(s.socket_path, path));
    CHECK_EQ_INT(vl2_client_hello(c)->protocol_version, 1);
    vl2_client_close(c);
}

/* Read one response and check it is an Error with @id and @code. */
static void expect_error(int fd, uint64_t id, int code, const char *needle)
{
    Vl2__Response *resp = NULL;
    int r = harness_recv(fd, 5000, &resp);

    CHECK_MSG(r == 1, "expected an error %s, got %s", vl2_status_name(code),
              r == 0 ? "the end of the stream" : "nothing");
    if (r != 1)
        return;
    CHECK_MSG(resp->body_case == VL2__RESPONSE__BODY_ERROR, "got '%s'",
              vl2_ipc_response_name(resp->body_case));
    if (resp->body_case == VL2__RESPONSE__BODY_ERROR) {
        CHECK_EQ_INT(resp->id, id);
        CHECK_MSG(resp->error->code == code, "code %s, expected %s: %s",
                  vl2_status_name(resp->error->code), vl2_status_name(code),
                  resp->error->message);
        if (needle)
            CHECK_MSG(strstr(resp->error->message, needle) != NULL, "'%s' not in '%s'",
                      needle, resp->error->message);
        CHECK(strchr(resp->error->message, '\n') == NULL);
    }
    vl2__response__free_unpacked(resp, NULL);
}

static void put_le32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t) v;
    p[1] = (uint8_t) (v >> 8);
    p[2] = (uint8_t) (v >> 16);
    p[3] = (uint8_t) (v >> 24);
}

/* ---- the vl2 command -------------------------------------------------- */

static void test_cli(void)
{
    char *out = NULL, *err = NULL, env_sock[300], bad[300];
    int r;

    {
        const char *argv[] = { vl2_path, "--socket", sock, "status", NULL };

        r = harness_run(argv, NULL, &out, &err);
        CHECK_MSG(r == 0, "vl2 status: %d: %s", r, err ? err : "");
        CHECK(out && strstr(out, "vl2d 0.1.0 (protocol 1)"));
        CHECK(out && strstr(out, "no model loaded"));
        CHECK(out && strstr(out, sock));
        free(out);
        free(err);
    }
    {
        /* --socket after the subcommand, --json */
        const char *argv[] = { vl2_path, "status", "--json", "--socket", sock, NULL };
        cJSON *root, *models, *pv, *pid, *sp;

        r = harness_run(argv, NULL, &out, &err);
        CHECK_MSG(r == 0, "vl2 status --json: %d: %s", r, err ? err : "");
        root = out ? cJSON_Parse(out) : NULL;
        CHECK_MSG(root != NULL, "not JSON: %s", out ? out : "");
        if (root) {
            pv = cJSON_GetObjectItem(root, "protocol_version");
            pid = cJSON_GetObjectItem(root, "pid");
            sp = cJSON_GetObjectItem(root, "socket_path");
            models = cJSON_GetObjectItem(root, "models");
            CHECK(cJSON_IsNumber(pv) && pv->valuedouble == 1);
            CHECK(cJSON_IsNumber(pid) && pid->valuedouble == (double) daemon_pid);
            CHECK(cJSON_IsString(sp) && !strcmp(sp->valuestring, sock));
            CHECK(cJSON_IsArray(models) && cJSON_GetArraySize(models) == 0);
            CHECK(cJSON_IsNumber(cJSON_GetObjectItem(root, "resident_memory_bytes")) &&
                  cJSON_GetObjectItem(root, "resident_memory_bytes")->valuedouble > 0);
            cJSON_Delete(root);
        }
        free(out);
        free(err);
    }
    snprintf(env_sock, sizeof(env_sock), "VL2_SOCKET=%s", sock);
    {
        /* $VL2_SOCKET when there is no --socket */
        const char *argv[] = { vl2_path, "models", NULL };
        const char *env[] = { env_sock, NULL };

        r = harness_run(argv, env, &out, &err);
        CHECK_MSG(r == 0, "vl2 models: %d: %s", r, err ? err : "");
        CHECK_MSG(out && !strcmp(out, "no model loaded\n"), "'%s'", out ? out : "");
        free(out);
        free(err);
    }
    {
        const char *argv[] = { vl2_path, "models", "--json", NULL };
        const char *env[] = { env_sock, NULL };
        cJSON *root, *models;

        r = harness_run(argv, env, &out, &err);
        CHECK_EQ_INT(r, 0);
        root = out ? cJSON_Parse(out) : NULL;
        models = root ? cJSON_GetObjectItem(root, "models") : NULL;
        CHECK(cJSON_IsArray(models) && cJSON_GetArraySize(models) == 0);
        cJSON_Delete(root);
        free(out);
        free(err);
    }
    snprintf(bad, sizeof(bad), "%s/nobody-home.sock", dir);
    {
        /* --socket wins over $VL2_SOCKET; nothing listens: one clear line */
        const char *argv[] = { vl2_path, "status", "--socket", bad, NULL };
        const char *env[] = { env_sock, NULL };
        char *nl;

        r = harness_run(argv, env, &out, &err);
        CHECK_EQ_INT(r, 1);
        CHECK(out && out[0] == '\0');
        CHECK_MSG(err && strstr(err, bad) && strstr(err, "start it"), "'%s'", err ? err : "");
        nl = err ? strchr(err, '\n') : NULL;
        CHECK_MSG(nl && nl[1] == '\0', "not one line: '%s'", err ? err : "");
        free(out);
        free(err);
    }
    {
        /* no --socket, no $VL2_SOCKET: the daemon's default path is named */
        const char *argv[] = { vl2_path, "status", NULL };
        const char *env[] = { "XDG_RUNTIME_DIR=/nonexistent-vl2-test", NULL };

        r = harness_run(argv, env, &out, &err);
        CHECK_EQ_INT(r, 1);
        CHECK_MSG(err && (strstr(err, "/nonexistent-vl2-test/vl2d.sock") ||
                          strstr(err, "/run/vl2d/vl2d.sock")), "'%s'", err ? err : "");
        free(out);
        free(err);
    }
    {
        const char *argv[] = { vl2_path, "frobnicate", NULL };

        r = harness_run(argv, NULL, &out, &err);
        CHECK_EQ_INT(r, 2);
        CHECK(err && strstr(err, "unknown command 'frobnicate'"));
        free(out);
        free(err);
    }
    check_second_client(sock, daemon_pid, "the vl2 command");
}

/* ---- misbehaving clients ---------------------------------------------- */

static void test_garbage(void)
{
    static const char http[] = "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";
    uint8_t frame[64];
    int fd;

    /* text where a length should be: "GET " is a length of 542,393,671 */
    fd = harness_connect(sock);
    CHECK(fd >= 0);
    harness_write(fd, http, sizeof(http) - 1);
    expect_error(fd, 0, VL2_ELIMIT, "over the limit");
    CHECK(harness_expect_eof(fd, 5000));
    close(fd);
    check_second_client(sock, daemon_pid, "an HTTP request");

    /* a well-framed payload that is not a Request */
    fd = harness_connect(sock);
    put_le32(frame, 18);
    memcpy(frame + 4, "GET / HTTP/1.1\r\n\r\n", 18);
    harness_write(fd, frame, 22);
    expect_error(fd, 0, VL2_EFORMAT, "not a valid request");
    CHECK(harness_expect_eof(fd, 5000));
    close(fd);
    check_second_client(sock, daemon_pid, "an undecodable frame");

    /* a zero-length frame */
    fd = harness_connect(sock);
    harness_write(fd, "\0\0\0\0", 4);
    expect_error(fd, 0, VL2_EFORMAT, "zero-length");
    CHECK(harness_expect_eof(fd, 5000));
    close(fd);
    check_second_client(sock, daemon_pid, "a zero-length frame");

    /* garbage after a good Hello on the same connection */
    fd = harness_connect(sock);
    {
        Vl2__Response *h = harness_hello(fd, 1, 5);

        CHECK(h && h->body_case == VL2__RESPONSE__BODY_HELLO && h->id == 5);
        if (h)
            vl2__response__free_unpacked(h, NULL);
    }
    put_le32(frame, 3);
    memcpy(frame + 4, "\x12\x05\x08", 3);
    harness_write(fd, frame, 7);
    expect_error(fd, 0, VL2_EFORMAT, NULL);
    CHECK(harness_expect_eof(fd, 5000));
    close(fd);
    check_second_client(sock, daemon_pid, "garbage after Hello");
}

static void test_truncated(void)
{
    uint8_t frame[64];
    int fd;

    /* 100 bytes announced, 50 sent, then the client stops writing */
    fd = harness_connect(sock);
    put_le32(frame, 100);
    memset(frame + 4, 0x08, 50);
    harness_write(fd, frame, 54);
    shutdown(fd, SHUT_WR);
    expect_error(fd, 0, VL2_EFORMAT, "truncated frame");
    CHECK(harness_expect_eof(fd, 5000));
    close(fd);
    check_second_client(sock, daemon_pid, "a truncated frame");

    /* the stream ends inside the length */
    fd = harness_connect(sock);
    harness_write(fd, "\x10\x00", 2);
    shutdown(fd, SHUT_WR);
    expect_error(fd, 0, VL2_EFORMAT, "2 of 4 length bytes");
    close(fd);
    check_second_client(sock, daemon_pid, "a truncated length");
}

static void test_oversize_default(void)
{
    uint8_t hdr[4];
    int fd;

    /* one byte over the default 64 MiB: refused before any payload is sent */
    fd = harness_connect(sock);
    put_le32(hdr, 64u * 1024 * 1024 + 1);
    harness_write(fd, hdr, 4);
    expect_error(fd, 0, VL2_ELIMIT, "over the limit of 67108864 bytes");
    CHECK(harness_expect_eof(fd, 5000));
    close(fd);
    check_second_client(sock, daemon_pid, "an oversize length");

    fd = harness_connect(sock);
    put_le32(hdr, 0xffffffffu);
    harness_write(fd, hdr, 4);
    expect_error(fd, 0, VL2_ELIMIT, NULL);
    close(fd);
    check_second_client(sock, daemon_pid, "a 4 GiB length");
}

/* A daemon with --max-frame 4096: a 4096-byte request is served, 4097 is
 * refused at once. */
static void test_oversize_configured(void)
{
    char s2[300], log2[300];
    const char *args[] = { "--socket", s2, "--max-frame", "4K", NULL };
    Vl2__Request req = VL2__REQUEST__INIT;
    Vl2__Hello h = VL2__HELLO__INIT;
    Vl2__Response *resp = NULL;
    char name[4096];
    uint8_t hdr[4];
    size_t size;
    pid_t pid;
    int fd, n;

    snprintf(s2, sizeof(s2), "%s/small.sock", dir);
    snprintf(log2, sizeof(log2), "%s/small.log", dir);
    pid = harness_start(vl2d_path, s2, args, log2, NULL);
    CHECK(pid > 0);
    if (pid <= 0)
        return;

    /* a Hello of exactly 4096 bytes: 08 01 (version) 12 <len> name */
    h.has_protocol_version = 1;
    h.protocol_version = 1;
    req.body_case = VL2__REQUEST__BODY_HELLO;
    req.hello = &h;
    req.has_id = 1;
    req.id = 1;
    size = 0;
    for (n = 4000; n < 4095 && size < 4096; n++) {
        memset(name, 'n', (size_t) n);
        name[n] = '\0';
        h.client_name = name;
        size = vl2__request__get_packed_size(&req);
    }
    CHECK_EQ_INT(size, 4096);
    fd = harness_connect(s2);
    harness_send(fd, &req);
    CHECK(harness_recv(fd, 5000, &resp) == 1);
    CHECK(resp && resp->body_case == VL2__RESPONSE__BODY_HELLO);
    if (resp) {
        CHECK_EQ_INT(resp->hello->max_frame_size, 4096);
        vl2__response__free_unpacked(resp, NULL);
    }
    /* 4097 */
    put_le32(hdr, 4097);
    harness_write(fd, hdr, 4);
    expect_error(fd, 0, VL2_ELIMIT, "frame of 4097 bytes is over the limit of 4096");
    CHECK(harness_expect_eof(fd, 5000));
    close(fd);
    check_second_client(s2, pid, "a frame over --max-frame");

    /* libvl2 refuses to send what the daemon would refuse */
    {
        struct vl2_client_opts o = vl2_client_default_opts();
        struct vl2_client *c = NULL;
        struct vl2_err err = { 0 };
        uint64_t id;

        o.socket_path = s2;
        CHECK(vl2_client_open(&o, &c, &err) == 0);
        memset(name, 'n', sizeof(name) - 1);
        name[sizeof(name) - 1] = '\0';
        h.client_name = name;
        if (c) {
            CHECK_EQ_INT(vl2_client_send(c, &req, NULL, 0, &id, &err), VL2_ELIMIT);
            vl2_client_close(c);
        }
    }
    CHECK_EQ_INT(harness_stop(pid, SIGTERM, 10000), 0);
}

static void test_disconnect_mid_frame(void)
{
    uint8_t frame[64];
    int fd, stuck;

    /* header and part of the body, then gone */
    fd = harness_connect(sock);
    put_le32(frame, 1000);
    memset(frame + 4, 0x2a, 10);
    harness_write(fd, frame, 14);
    close(fd);
    check_second_client(sock, daemon_pid, "a client gone mid-frame");

    /* half a length, then gone */
    fd = harness_connect(sock);
    harness_write(fd, "\x05", 1);
    close(fd);
    check_second_client(sock, daemon_pid, "a client gone mid-length");

    /* a client that stays silent mid-frame does not block the others */
    stuck = harness_connect(sock);
    put_le32(frame, 1000);
    harness_write(stuck, frame, 8);
    check_second_client(sock, daemon_pid, "a client stuck mid-frame");
    check_second_client(sock, daemon_pid, "a client stuck mid-frame (again)");
    close(stuck);
    check_second_client(sock, daemon_pid, "a stuck client leaving");
}

/* ---- requests --------------------------------------------------------- */

static void send_body(int fd, uint64_t id, int body_case, void *msg)
{
    Vl2__Request req = VL2__REQUEST__INIT;

    req.has_id = 1;
    req.id = id;
    req.body_case = body_case;
    req.hello = msg;  /* the union: any member */
    harness_send(fd, &req);
}

static void test_requests(void)
{
    Vl2__Generate gen = VL2__GENERATE__INIT;
    Vl2__LoadModel load = VL2__LOAD_MODEL__INIT;
    Vl2__UnloadModel unload = VL2__UNLOAD_MODEL__INIT;
    Vl2__Tokenize tok = VL2__TOKENIZE__INIT;
    Vl2__Cancel cancel = VL2__CANCEL__INIT;
    Vl2__Status st = VL2__STATUS__INIT;
    Vl2__ListModels lm = VL2__LIST_MODELS__INIT;
    Vl2__Response *resp = NULL;
    int fd;

    fd = harness_connect(sock);
    /* before Hello */
    send_body(fd, 41, VL2__REQUEST__BODY_STATUS, &st);
    expect_error(fd, 41, VL2_EPROTO, "Hello");
    resp = harness_hello(fd, 1, 42);
    CHECK(resp && resp->body_case == VL2__RESPONSE__BODY_HELLO && resp->id == 42);
    if (resp) {
        CHECK_EQ_INT(resp->hello->protocol_version, 1);
        CHECK(!strcmp(resp->hello->server_version, "0.1.0"));
        CHECK_EQ_INT(resp->hello->max_frame_size, 64u * 1024 * 1024);
        CHECK_EQ_INT(resp->hello->max_fds, 16);
        vl2__response__free_unpacked(resp, NULL);
    }
    /* no model loaded: each refusal with its id */
    send_body(fd, 100, VL2__REQUEST__BODY_GENERATE, &gen);
    expect_error(fd, 100, VL2_ENOTFOUND, "no model is loaded");
    send_body(fd, 101, VL2__REQUEST__BODY_LOAD_MODEL, &load);
    expect_error(fd, 101, VL2_EINVAL, "not an absolute path");
    send_body(fd, 102, VL2__REQUEST__BODY_UNLOAD_MODEL, &unload);
    expect_error(fd, 102, VL2_ENOTFOUND, "is not loaded");
    /* Tokenize needs a model's tokenizer too */
    send_body(fd, 103, VL2__REQUEST__BODY_TOKENIZE, &tok);
    expect_error(fd, 103, VL2_ENOTFOUND, "no model is loaded");
    /* nothing in flight to cancel */
    cancel.has_target_id = 1;
    cancel.target_id = 100;
    send_body(fd, 104, VL2__REQUEST__BODY_CANCEL, &cancel);
    expect_error(fd, 104, VL2_ENOTFOUND, "no request 100");
    /* a request without a body */
    send_body(fd, 105, VL2__REQUEST__BODY__NOT_SET, NULL);
    expect_error(fd, 105, VL2_EINVAL, "no body");
    /* a kind from a newer protocol: field 99 (varint 1) */
    {
        static const uint8_t newer[] = { 5, 0, 0, 0, 0x08, 106, 0x98, 0x06, 0x00 };

        harness_write(fd, newer, sizeof(newer));
        expect_error(fd, 106, VL2_EUNIMPLEMENTED, NULL);
    }
    /* the connection is still good: pipelined requests answered in order */
    send_body(fd, 200, VL2__REQUEST__BODY_STATUS, &st);
    send_body(fd, 201, VL2__REQUEST__BODY_TOKENIZE, &tok);
    send_body(fd, 202, VL2__REQUEST__BODY_LIST_MODELS, &lm);
    CHECK(harness_recv(fd, 5000, &resp) == 1);
    CHECK(resp && resp->id == 200 && resp->body_case == VL2__RESPONSE__BODY_STATUS);
    if (resp)
        vl2__response__free_unpacked(resp, NULL);
    expect_error(fd, 201, VL2_ENOTFOUND, "tokenize");
    CHECK(harness_recv(fd, 5000, &resp) == 1);
    CHECK(resp && resp->id == 202 && resp->body_case == VL2__RESPONSE__BODY_MODELS &&
          resp->models->n_models == 0);
    if (resp)
        vl2__response__free_unpacked(resp, NULL);
    close(fd);

    /* a protocol version this daemon does not speak: error, then closed */
    fd = harness_connect(sock);
    resp = harness_hello(fd, 2, 7);
    CHECK(resp && resp->body_case == VL2__RESPONSE__BODY_ERROR && resp->id == 7 &&
          resp->error->code == VL2_EPROTO && strstr(resp->error->message, "version 2"));
    if (resp)
        vl2__response__free_unpacked(resp, NULL);
    CHECK(harness_expect_eof(fd, 5000));
    close(fd);
    check_second_client(sock, daemon_pid, "unimplemented requests");
}

/* ---- socket life cycle ------------------------------------------------ */

static void test_second_daemon(void)
{
    const char *args[] = { "--socket", sock, NULL };
    char log2[300], *text;
    int status = 0;
    pid_t pid;

    snprintf(log2, sizeof(log2), "%s/second.log", dir);
    pid = harness_start(vl2d_path, NULL, args, log2, NULL);
    CHECK(pid > 0);
    status = harness_wait(pid, 10000);
    CHECK_MSG(status >= 0 && WIFEXITED(status) && WEXITSTATUS(status) == 1, "status %d",
              status);
    text = harness_slurp(log2);
    CHECK_MSG(text && strstr(text, "already serving") && strstr(text, sock), "'%s'",
              text ? text : "");
    free(text);
    check_second_client(sock, daemon_pid, "a second daemon");
}

static void test_stale_socket(void)
{
    char s2[300], log2[300], *text;
    const char *args[] = { "--socket", s2, NULL };
    struct sockaddr_un sa;
    struct stat st;
    int fd, len, status;
    pid_t pid;

    /* a socket file nobody listens on (a daemon that was killed) */
    snprintf(s2, sizeof(s2), "%s/stale.sock", dir);
    snprintf(log2, sizeof(log2), "%s/stale.log", dir);
    len = vl2_ipc_sockaddr(s2, &sa, NULL);
    fd = socket(AF_UNIX, SOCK_STREAM, 0);
    CHECK(bind(fd, (struct sockaddr *) &sa, (socklen_t) len) == 0);
    close(fd);
    CHECK(stat(s2, &st) == 0 && S_ISSOCK(st.st_mode));
    pid = harness_start(vl2d_path, s2, args, log2, NULL);
    CHECK(pid > 0);
    if (pid > 0) {
        check_second_client(s2, pid, "replacing a stale socket");
        CHECK_EQ_INT(harness_stop(pid, SIGTERM, 10000), 0);
    }
    text = harness_slurp(log2);
    CHECK_MSG(text && strstr(text, "removed stale socket"), "'%s'", text ? text : "");
    free(text);

    /* something that is not a socket is never replaced */
    fd = open(s2, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    CHECK(write(fd, "keep", 4) == 4);
    close(fd);
    pid = harness_start(vl2d_path, NULL, args, log2, NULL);
    status = harness_wait(pid, 10000);
    CHECK(status >= 0 && WIFEXITED(status) && WEXITSTATUS(status) == 1);
    text = harness_slurp(s2);
    CHECK(text && !strcmp(text, "keep"));
    free(text);
    text = harness_slurp(log2);
    CHECK(text && strstr(text, "is not a socket"));
    free(text);
    unlink(s2);
}

static void test_signals(void)
{
    static const int sigs[] = { SIGTERM, SIGINT };
    size_t i;

    for (i = 0; i < 2; i++) {
        char s2[300], lock[310], log2[300];
        const char *args[] = { "--socket", s2, NULL };
        struct stat st;
        pid_t pid;
        int idle, partial, status;
        uint8_t frame[8];

        snprintf(s2, sizeof(s2), "%s/sig%zu.sock", dir, i);
        snprintf(lock, sizeof(lock), "%s.lock", s2);
        snprintf(log2, sizeof(log2), "%s/sig.log", dir);
        pid = harness_start(vl2d_path, s2, args, log2, NULL);
        CHECK(pid > 0);
        if (pid <= 0)
            continue;
        /* clients connected at the time: one idle after Hello, one mid-frame */
        idle = harness_connect(s2);
        {
            Vl2__Response *h = harness_hello(idle, 1, 1);

            CHECK(h != NULL);
            if (h)
                vl2__response__free_unpacked(h, NULL);
        }
        partial = harness_connect(s2);
        put_le32(frame, 100);
        harness_write(partial, frame, 6);
        check_second_client(s2, pid, "clients connected");
        status = harness_stop(pid, sigs[i], 10000);
        CHECK_MSG(status >= 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0,
                  "%s: status %d", i ? "SIGINT" : "SIGTERM", status);
        CHECK_MSG(stat(s2, &st) < 0 && errno == ENOENT, "socket file left behind");
        CHECK_MSG(stat(lock, &st) < 0 && errno == ENOENT, "lock file left behind");
        CHECK(harness_expect_eof(idle, 5000));
        close(idle);
        close(partial);
    }
}

/* ---- peer credentials ------------------------------------------------- */

static void test_peer_check(void)
{
    char s2[300], log2[300], uid_arg[32], gid_arg[32], *out = NULL, *err = NULL, *text;
    const char *deny_args[] = { "--socket", s2, "--allow-uid", uid_arg, NULL };
    const char *group_args[] = { "--socket", s2, "--allow-uid", uid_arg,
                                 "--allow-group", gid_arg, NULL };
    uid_t other = getuid() == 65534 ? 65533 : 65534;
    pid_t pid;
    int fd, r;

    snprintf(s2, sizeof(s2), "%s/peer.sock", dir);
    snprintf(log2, sizeof(log2), "%s/peer.log", dir);
    snprintf(uid_arg, sizeof(uid_arg), "%u", (unsigned) other);
    snprintf(gid_arg, sizeof(gid_arg), "%u", (unsigned) getgid());

    /* only another uid is allowed: we are refused */
    pid = harness_start(vl2d_path, s2, deny_args, log2, NULL);
    CHECK(pid > 0);
    if (pid <= 0)
        return;
    fd = harness_connect(s2);
    expect_error(fd, 0, VL2_EPERM, "permission denied");
    CHECK(harness_expect_eof(fd, 5000));
    close(fd);
    {
        const char *argv[] = { vl2_path, "--socket", s2, "status", NULL };

        r = harness_run(argv, NULL, &out, &err);
        CHECK_EQ_INT(r, 1);
        CHECK_MSG(err && strstr(err, "permission denied") && strstr(err, uid_arg), "'%s'",
                  err ? err : "");
        CHECK(out && !strstr(out, "no model loaded"));
        free(out);
        free(err);
    }
    {
        struct vl2_client_opts o = vl2_client_default_opts();
        struct vl2_client *c = NULL;
        struct vl2_err e = { 0 };

        o.socket_path = s2;
        CHECK_EQ_INT(vl2_client_open(&o, &c, &e), VL2_EPERM);
        CHECK(c == NULL);
    }
    CHECK_EQ_INT(harness_stop(pid, SIGTERM, 10000), 0);
    text = harness_slurp(log2);
    CHECK(text && strstr(text, "permission denied"));
    free(text);

    /* our group is allowed: served */
    pid = harness_start(vl2d_path, s2, group_args, log2, NULL);
    CHECK(pid > 0);
    if (pid > 0) {
        check_second_client(s2, pid, "an allowed group");
        CHECK_EQ_INT(harness_stop(pid, SIGTERM, 10000), 0);
    }
}

/* ---- systemd socket activation and notifications ---------------------- */

#if VL2_HAVE_SYSTEMD
static bool recv_notify(int nfd, const char *what, int timeout_ms)
{
    char buf[512];

    for (;;) {
        struct pollfd p = { .fd = nfd, .events = POLLIN };
        ssize_t n;

        if (poll(&p, 1, timeout_ms) <= 0)
            return false;
        n = recv(nfd, buf, sizeof(buf) - 1, 0);
        if (n <= 0)
            return false;
        buf[n] = '\0';
        if (strstr(buf, what))
            return true;
    }
}

static void test_socket_activation(void)
{
    char s2[300], ns[300], log2[300], env_pid[32];
    struct sockaddr_un sa, na;
    int lfd, nfd, len, nlen, status;
    struct stat st;
    pid_t pid;

    snprintf(s2, sizeof(s2), "%s/act.sock", dir);
    snprintf(ns, sizeof(ns), "%s/notify", dir);
    snprintf(log2, sizeof(log2), "%s/act.log", dir);
    /* what systemd does for vl2d.socket and Type=notify */
    len = vl2_ipc_sockaddr(s2, &sa, NULL);
    lfd = socket(AF_UNIX, SOCK_STREAM, 0);
    CHECK(bind(lfd, (struct sockaddr *) &sa, (socklen_t) len) == 0);
    CHECK(listen(lfd, 16) == 0);
    nlen = vl2_ipc_sockaddr(ns, &na, NULL);
    nfd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    CHECK(bind(nfd, (struct sockaddr *) &na, (socklen_t) nlen) == 0);

    pid = fork();
    if (pid == 0) {
        int logfd = open(log2, O_WRONLY | O_CREAT | O_APPEND, 0644);

        dup2(logfd, 2);
        dup2(lfd, 3);
        if (lfd != 3)
            close(lfd);
        snprintf(env_pid, sizeof(env_pid), "%ld", (long) getpid());
        setenv("LISTEN_FDS", "1", 1);
        setenv("LISTEN_PID", env_pid, 1);
        setenv("NOTIFY_SOCKET", ns, 1);
        execl(vl2d_path, vl2d_path, "serve", (char *) NULL);
        _exit(127);
    }
    close(lfd);
    CHECK_MSG(recv_notify(nfd, "READY=1", 15000), "no READY=1");
    check_second_client(s2, pid, "socket activation");
    status = harness_stop(pid, SIGTERM, 10000);
    CHECK_MSG(recv_notify(nfd, "STOPPING=1", 5000), "no STOPPING=1");
    CHECK(status >= 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0);
    /* the socket belongs to systemd: still there */
    CHECK(stat(s2, &st) == 0 && S_ISSOCK(st.st_mode));
    close(nfd);
    unlink(s2);
    unlink(ns);
}
#endif

int main(int argc, char **argv)
{
    const char *args[3];

    if (argc != 3) {
        fprintf(stderr, "usage: test-daemon VL2D VL2\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    vl2d_path = argv[1];
    vl2_path = argv[2];
    dir = harness_tmpdir();
    if (!dir) {
        fprintf(stderr, "cannot create a temporary directory\n");
        return 1;
    }
    snprintf(sock, sizeof(sock), "%s/vl2d.sock", dir);
    snprintf(log_path, sizeof(log_path), "%s/vl2d.log", dir);
    args[0] = "--socket";
    args[1] = sock;
    args[2] = NULL;
    daemon_pid = harness_start(vl2d_path, sock, args, log_path, NULL);
    if (daemon_pid <= 0) {
        char *text = harness_slurp(log_path);

        fprintf(stderr, "vl2d did not start: %s\n", text ? text : "");
        free(text);
        harness_rmdir(dir);
        return 1;
    }

    RUN(test_cli);
    RUN(test_garbage);
    RUN(test_truncated);
    RUN(test_oversize_default);
    RUN(test_oversize_configured);
    RUN(test_disconnect_mid_frame);
    RUN(test_requests);
    RUN(test_second_daemon);
    RUN(test_stale_socket);
    RUN(test_signals);
    RUN(test_peer_check);
#if VL2_HAVE_SYSTEMD
    RUN(test_socket_activation);
#else
    fprintf(stderr, "skip test_socket_activation (built without libsystemd)\n");
#endif

    {
        int status = harness_stop(daemon_pid, SIGTERM, 10000);

        CHECK_MSG(status >= 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0,
                  "the shared daemon: status %d", status);
    }
    if (check_failures) {
        char *text = harness_slurp(log_path);

        fprintf(stderr, "---- vl2d log ----\n%s\n", text ? text : "");
        free(text);
        fprintf(stderr, "%d check(s) failed\n", check_failures);
    }
    harness_rmdir(dir);
    return check_failures ? 1 : 0;
}

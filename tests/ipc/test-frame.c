/* test-frame.c - the framing of ipc/: round trips, partial reads and writes,
 * truncated / zero-length / oversize / garbage frames, descriptor passing.
 * Expected bytes are built by hand here (little-endian lengths, protobuf
 * encodings written out), not by the code under test. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "../common/check.h"
#include "ipc.h"

static int count_open_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    int n = 0;

    if (!d)
        return -1;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n - 1;  /* the directory's own descriptor */
}

static void make_pair(int sv[2])
{
    int rc = socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv);

    CHECK(rc == 0);
    CHECK(fcntl(sv[0], F_SETFL, O_NONBLOCK) == 0);
    CHECK(fcntl(sv[1], F_SETFL, O_NONBLOCK) == 0);
}

static void put_le32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t) v;
    p[1] = (uint8_t) (v >> 8);
    p[2] = (uint8_t) (v >> 16);
    p[3] = (uint8_t) (v >> 24);
}

static void write_all(int fd, const void *p, size_t n)
{
    const uint8_t *b = p;

    while (n > 0) {
        ssize_t k = write(fd, b, n);

        if (k < 0 && errno == EINTR)
            continue;
        CHECK(k > 0);
        if (k <= 0)
            return;
        b += k;
        n -= (size_t) k;
    }
}

/* Read frames until one is ready or an error/EOF; spins on AGAIN for at
 * most a few thousand tries (the writer has already written everything). */
static int read_one(struct vl2_ipc_reader *r, int fd, struct vl2_err *err)
{
    int i, rc = VL2_IPC_AGAIN;

    for (i = 0; i < 100000 && rc == VL2_IPC_AGAIN; i++)
        rc = vl2_ipc_reader_read(r, fd, err);
    return rc;
}

/* ---- round trips ----------------------------------------------------- */

static void test_roundtrip_status(void)
{
    /* Request { id: 7, status: {} } is, by hand: 08 07 2a 00 */
    static const uint8_t expect[] = { 4, 0, 0, 0, 0x08, 0x07, 0x2a, 0x00 };
    Vl2__Request req = VL2__REQUEST__INIT;
    Vl2__Status st = VL2__STATUS__INIT;
    struct vl2_ipc_writer w;
    struct vl2_ipc_reader r;
    struct vl2_ipc_frame f = { 0 };
    struct vl2_err err = { 0 };
    uint8_t got[16];
    int sv[2], rc;
    Vl2__Request *dec;

    make_pair(sv);
    req.has_id = 1;
    req.id = 7;
    req.body_case = VL2__REQUEST__BODY_STATUS;
    req.status = &st;
    vl2_ipc_writer_init(&w, 0, 0);
    CHECK(vl2_ipc_writer_queue_msg(&w, &req.base, NULL, 0, &err) == 0);
    CHECK(vl2_ipc_writer_pending(&w));
    CHECK_EQ_INT(vl2_ipc_writer_flush(&w, sv[0], &err), 1);
    CHECK(!vl2_ipc_writer_pending(&w));
    /* the bytes on the wire */
    CHECK_EQ_INT(recv(sv[1], got, sizeof(got), MSG_PEEK), sizeof(expect));
    CHECK(memcmp(got, expect, sizeof(expect)) == 0);

    vl2_ipc_reader_init(&r, 0);
    CHECK_EQ_INT(r.max_frame, 64u * 1024 * 1024);
    rc = read_one(&r, sv[1], &err);
    CHECK_EQ_INT(rc, VL2_IPC_FRAME);
    vl2_ipc_reader_take(&r, &f);
    CHECK_EQ_INT(f.size, 4);
    CHECK_EQ_INT(f.n_fds, 0);
    dec = vl2_ipc_request_decode(f.payload, f.size, &err);
    CHECK(dec != NULL);
    if (dec) {
        CHECK_EQ_INT(dec->id, 7);
        CHECK_EQ_INT(dec->body_case, VL2__REQUEST__BODY_STATUS);
        vl2__request__free_unpacked(dec, NULL);
    }
    vl2_ipc_frame_done(&f);
    /* nothing more: the socket would block, then EOF once closed */
    CHECK_EQ_INT(vl2_ipc_reader_read(&r, sv[1], &err), VL2_IPC_AGAIN);
    close(sv[0]);
    CHECK_EQ_INT(vl2_ipc_reader_read(&r, sv[1], &err), VL2_IPC_EOF);
    vl2_ipc_reader_done(&r);
    vl2_ipc_writer_done(&w);
    close(sv[1]);
}

/* A frame far larger than the socket buffer: the writer stops on EAGAIN and
 * the reader gets partial reads; both resume where they were. */
static void test_partial_large(void)
{
    const size_t big = 5u * 1024 * 1024 + 17;
    uint8_t *payload = malloc(big);
    struct vl2_ipc_writer w;
    struct vl2_ipc_reader r;
    struct vl2_ipc_frame f = { 0 };
    struct vl2_err err = { 0 };
    int sv[2], wrc = 0, rrc = VL2_IPC_AGAIN, rounds = 0, partial_writes = 0;
    size_t i, n_frames = 0;

    if (!payload) {
        CHECK(payload != NULL);
        return;
    }
    for (i = 0; i < big; i++)
        payload[i] = (uint8_t) (i * 131u + (i >> 11));
    make_pair(sv);
    vl2_ipc_writer_init(&w, 0, 0);
    vl2_ipc_reader_init(&r, 0);
    CHECK(vl2_ipc_writer_queue(&w, payload, big, NULL, 0, &err) == 0);
    CHECK(vl2_ipc_writer_queue(&w, "\x08\x01", 2, NULL, 0, &err) == 0);
    CHECK_EQ_INT(w.queued_size, big + 4 + 2 + 4);
    while (n_frames < 2 && rounds++ < 100000) {
        if (vl2_ipc_writer_pending(&w)) {
            wrc = vl2_ipc_writer_flush(&w, sv[0], &err);
            CHECK(wrc >= 0);
            if (wrc == 0)
                partial_writes++;
        }
        rrc = vl2_ipc_reader_read(&r, sv[1], &err);
        CHECK(rrc >= 0);
        if (rrc < 0)
            break;
        if (rrc == VL2_IPC_FRAME) {
            vl2_ipc_reader_take(&r, &f);
            if (n_frames == 0) {
                CHECK_EQ_INT(f.size, big);
                CHECK(memcmp(f.payload, payload, big) == 0);
            } else {
                CHECK_EQ_INT(f.size, 2);
                CHECK(memcmp(f.payload, "\x08\x01", 2) == 0);
            }
            vl2_ipc_frame_done(&f);
            n_frames++;
        }
    }
    CHECK_EQ_INT(n_frames, 2);
    CHECK(partial_writes > 0);   /* the socket buffer is far below 5 MiB */
    CHECK_EQ_INT(w.queued_size, 0);
    vl2_ipc_writer_done(&w);
    vl2_ipc_reader_done(&r);
    close(sv[0]);
    close(sv[1]);
    free(payload);
}

/* Feeding the stream one byte at a time through want()/advance(). */
static void test_byte_at_a_time(void)
{
    uint8_t stream[64];
    size_t len = 0, i, frames = 0;
    struct vl2_ipc_reader r;
    struct vl2_ipc_frame f = { 0 };
    struct vl2_err err = { 0 };

    put_le32(stream, 3);
    memcpy(stream + 4, "abc", 3);
    put_le32(stream + 7, 1);
    stream[11] = 'z';
    len = 12;
    vl2_ipc_reader_init(&r, 16);
    for (i = 0; i < len; i++) {
        uint8_t *p = NULL;
        size_t want = vl2_ipc_reader_want(&r, &p);
        int rc;

        CHECK(want >= 1);
        if (want < 1)
            break;
        *p = stream[i];
        rc = vl2_ipc_reader_advance(&r, 1, &err);
        CHECK(rc >= 0);
        if (rc == VL2_IPC_FRAME) {
            CHECK(vl2_ipc_reader_want(&r, &p) == 0);
            vl2_ipc_reader_take(&r, &f);
            if (frames == 0)
                CHECK(f.size == 3 && memcmp(f.payload, "abc", 3) == 0);
            else
                CHECK(f.size == 1 && f.payload[0] == 'z');
            vl2_ipc_frame_done(&f);
            frames++;
            CHECK_EQ_INT(i, frames == 1 ? 6 : 11);
        }
    }
    CHECK_EQ_INT(frames, 2);
    CHECK(!vl2_ipc_reader_busy(&r));
    vl2_ipc_reader_done(&r);
}

/* ---- bad frames ------------------------------------------------------ */

static void test_truncated(void)
{
    struct vl2_ipc_reader r;
    struct vl2_err err = { 0 };
    uint8_t buf[64];
    int sv[2], rc;

    /* inside the body: 100 announced, 50 sent */
    make_pair(sv);
    put_le32(buf, 100);
    memset(buf + 4, 0x41, 50);
    write_all(sv[0], buf, 54);
    shutdown(sv[0], SHUT_WR);
    vl2_ipc_reader_init(&r, 0);
    rc = read_one(&r, sv[1], &err);
    CHECK_EQ_INT(rc, VL2_EFORMAT);
    CHECK_MSG(strstr(err.msg, "truncated") && strstr(err.msg, "50 of 100"), "%s", err.msg);
    vl2_ipc_reader_done(&r);
    close(sv[0]);
    close(sv[1]);

    /* inside the length */
    make_pair(sv);
    write_all(sv[0], "\x05\x00", 2);
    close(sv[0]);
    vl2_ipc_reader_init(&r, 0);
    rc = read_one(&r, sv[1], &err);
    CHECK_EQ_INT(rc, VL2_EFORMAT);
    CHECK_MSG(strstr(err.msg, "2 of 4 length bytes") != NULL, "%s", err.msg);
    vl2_ipc_reader_done(&r);
    close(sv[1]);
}

static void test_zero_length(void)
{
    struct vl2_ipc_reader r;
    struct vl2_ipc_writer w;
    struct vl2_err err = { 0 };
    int sv[2];

    make_pair(sv);
    write_all(sv[0], "\0\0\0\0", 4);
    vl2_ipc_reader_init(&r, 0);
    CHECK_EQ_INT(read_one(&r, sv[1], &err), VL2_EFORMAT);
    CHECK_MSG(strstr(err.msg, "zero-length") != NULL, "%s", err.msg);
    vl2_ipc_reader_done(&r);
    /* and the writer refuses to produce one */
    vl2_ipc_writer_init(&w, 0, 0);
    CHECK_EQ_INT(vl2_ipc_writer_queue(&w, "", 0, NULL, 0, &err), VL2_EINVAL);
    CHECK(!vl2_ipc_writer_pending(&w));
    vl2_ipc_writer_done(&w);
    close(sv[0]);
    close(sv[1]);
}

static void test_oversize(void)
{
    struct vl2_ipc_reader r;
    struct vl2_ipc_writer w;
    struct vl2_err err = { 0 };
    uint8_t hdr[4];
    uint8_t *p;
    int sv[2];
    static const uint32_t lens[] = { 1025, 0x7fffffffu, 0xffffffffu };
    size_t i;

    /* a configured limit of 1024 bytes: 1024 passes, above is refused at
     * once, before any payload byte is allocated or read */
    for (i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        make_pair(sv);
        put_le32(hdr, lens[i]);
        write_all(sv[0], hdr, 4);
        write_all(sv[0], "xyz", 3);
        vl2_ipc_reader_init(&r, 1024);
        CHECK_EQ_INT(read_one(&r, sv[1], &err), VL2_ELIMIT);
        CHECK_MSG(strstr(err.msg, "over the limit of 1024") != NULL, "%s", err.msg);
        CHECK(r.payload == NULL);
        CHECK(vl2_ipc_reader_want(&r, &p) == 0);
        /* the payload bytes were left in the socket */
        CHECK_EQ_INT(recv(sv[1], hdr, 4, MSG_DONTWAIT), 3);
        vl2_ipc_reader_done(&r);
        close(sv[0]);
        close(sv[1]);
    }

    make_pair(sv);
    {
        uint8_t *buf = calloc(1, 1024 + 4);

        put_le32(buf, 1024);
        write_all(sv[0], buf, 1024 + 4);
        free(buf);
    }
    vl2_ipc_reader_init(&r, 1024);
    CHECK_EQ_INT(read_one(&r, sv[1], &err), VL2_IPC_FRAME);
    vl2_ipc_reader_done(&r);
    close(sv[0]);
    close(sv[1]);

    /* the default limit: 64 MiB exactly is accepted as a length, one more not */
    vl2_ipc_reader_init(&r, 0);
    put_le32(hdr, 64u * 1024 * 1024);
    CHECK(vl2_ipc_reader_want(&r, &p) == 4);
    memcpy(p, hdr, 4);
    CHECK_EQ_INT(vl2_ipc_reader_advance(&r, 4, &err), VL2_IPC_AGAIN);
    CHECK(vl2_ipc_reader_want(&r, &p) == 64u * 1024);  /* grows with the data */
    vl2_ipc_reader_done(&r);
    vl2_ipc_reader_init(&r, 0);
    put_le32(hdr, 64u * 1024 * 1024 + 1);
    CHECK(vl2_ipc_reader_want(&r, &p) == 4);
    memcpy(p, hdr, 4);
    CHECK_EQ_INT(vl2_ipc_reader_advance(&r, 4, &err), VL2_ELIMIT);
    vl2_ipc_reader_done(&r);
    /* a configured maximum is clamped to 1 GiB */
    vl2_ipc_reader_init(&r, 0xffffffffu);
    CHECK_EQ_INT(r.max_frame, 1024u * 1024 * 1024);
    vl2_ipc_reader_done(&r);

    /* the writer refuses a message above the peer's limit */
    vl2_ipc_writer_init(&w, 0, 16);
    CHECK_EQ_INT(vl2_ipc_writer_queue(&w, "0123456789abcdefg", 17, NULL, 0, &err), VL2_ELIMIT);
    CHECK_EQ_INT(vl2_ipc_writer_queue(&w, "0123456789abcdef", 16, NULL, 0, &err), 0);
    vl2_ipc_writer_done(&w);
    /* and a queue beyond its byte limit */
    vl2_ipc_writer_init(&w, 30, 0);
    CHECK_EQ_INT(vl2_ipc_writer_queue(&w, "0123456789", 10, NULL, 0, &err), 0);
    CHECK_EQ_INT(vl2_ipc_writer_queue(&w, "0123456789", 10, NULL, 0, &err), 0);
    CHECK_EQ_INT(vl2_ipc_writer_queue(&w, "0123456789", 10, NULL, 0, &err), VL2_ELIMIT);
    CHECK_EQ_INT(w.queued_size, 28);
    vl2_ipc_writer_done(&w);
}

static void test_garbage(void)
{
    /* Each is framed correctly but is not a Request:
     *  - "GET / HTTP/1.1": 'G' = 0x47 is field 8 with wire type 7, which does
     *    not exist;
     *  - 12 05 08: field 2 (hello) announces 5 bytes, 1 follows;
     *  - 0a 01 00: field 1 (id, a varint) sent as a length-delimited field;
     *  - 08 ff ff ff ff ff ff ff ff ff ff 01: a varint of 11 bytes. */
    static const struct { const char *b; size_t n; } bad[] = {
        { "GET / HTTP/1.1\r\n\r\n", 18 },
        { "\x12\x05\x08", 3 },
        { "\x0a\x01\x00", 3 },
        { "\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", 12 },
    };
    struct vl2_err err = { 0 };
    size_t i;

    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        Vl2__Request *m;
        Vl2__Response *resp;

        vl2_err_clear(&err);
        m = vl2_ipc_request_decode((const uint8_t *) bad[i].b, bad[i].n, &err);
        CHECK_MSG(m == NULL, "garbage %zu decoded", i);
        if (m)
            vl2__request__free_unpacked(m, NULL);
        CHECK_EQ_INT(err.code, VL2_EFORMAT);
        CHECK(strstr(err.msg, "not a valid request") != NULL);
        resp = vl2_ipc_response_decode((const uint8_t *) bad[i].b, bad[i].n, &err);
        CHECK(resp == NULL);
        if (resp)
            vl2__response__free_unpacked(resp, NULL);
    }

    /* A well-formed Generate with an image by fd index, written out by hand:
     * Request { id: 300 (ac 02), generate (1a): { model (0a) "t",
     *   messages (12) { role (08) 2, images (1a) { fd_index (10) 1 } } } } */
    {
        static const uint8_t gen[] = {
            0x08, 0xac, 0x02,
            0x1a, 0x0b,
                0x0a, 0x01, 't',
                0x12, 0x06,
                    0x08, 0x02,
                    0x1a, 0x02, 0x10, 0x01,
        };
        Vl2__Request *m = vl2_ipc_request_decode(gen, sizeof(gen), &err);

        CHECK(m != NULL);
        if (m) {
            CHECK_EQ_INT(m->id, 300);
            CHECK_EQ_INT(m->body_case, VL2__REQUEST__BODY_GENERATE);
            CHECK(!strcmp(m->generate->model, "t"));
            CHECK_EQ_INT(m->generate->n_messages, 1);
            CHECK_EQ_INT(m->generate->messages[0]->role, VL2__ROLE__ROLE_USER);
            CHECK_EQ_INT(m->generate->messages[0]->n_images, 1);
            CHECK_EQ_INT(m->generate->messages[0]->images[0]->source_case,
                         VL2__IMAGE__SOURCE_FD_INDEX);
            CHECK_EQ_INT(m->generate->messages[0]->images[0]->fd_index, 1);
            /* defaults of proto2 fields not on the wire */
            CHECK(m->generate->messages[0]->images[0]->apply_exif);
            CHECK(m->generate->stream);
            CHECK(!m->generate->grounding);
            vl2__request__free_unpacked(m, NULL);
        }
    }
}

/* ---- descriptors ----------------------------------------------------- */

static int make_file(const char *content)
{
    char path[] = "/tmp/vl2-test-fd-XXXXXX";
    int fd = mkstemp(path);

    if (fd < 0)
        return -1;
    (void) unlink(path);
    write_all(fd, content, strlen(content));
    return fd;
}

static void check_fd_content(int fd, const char *content)
{
    char buf[64] = { 0 };
    ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);

    CHECK_EQ_INT(n, (ssize_t) strlen(content));
    CHECK(strcmp(buf, content) == 0);
    CHECK(fcntl(fd, F_GETFD) & FD_CLOEXEC);
}

static void test_fd_passing(void)
{
    struct vl2_ipc_writer w;
    struct vl2_ipc_reader r;
    struct vl2_ipc_frame f = { 0 };
    struct vl2_err err = { 0 };
    int sv[2], a, b, c, fds2[2];
    int before = count_open_fds();

    a = make_file("first image");
    b = make_file("second image");
    c = make_file("third image");
    CHECK(a >= 0 && b >= 0 && c >= 0);
    make_pair(sv);
    vl2_ipc_writer_init(&w, 0, 0);
    fds2[0] = a;
    fds2[1] = b;
    /* frame 1: two fds; frame 2: none; frame 3: one */
    CHECK(vl2_ipc_writer_queue(&w, "one", 3, fds2, 2, &err) == 0);
    CHECK(vl2_ipc_writer_queue(&w, "two", 3, NULL, 0, &err) == 0);
    CHECK(vl2_ipc_writer_queue(&w, "three", 5, &c, 1, &err) == 0);
    /* the writer holds duplicates: the caller may close its own */
    close(a);
    close(b);
    close(c);
    CHECK_EQ_INT(vl2_ipc_writer_flush(&w, sv[0], &err), 1);
    vl2_ipc_writer_done(&w);

    vl2_ipc_reader_init(&r, 0);
    CHECK_EQ_INT(read_one(&r, sv[1], &err), VL2_IPC_FRAME);
    vl2_ipc_reader_take(&r, &f);
    CHECK(f.size == 3 && !memcmp(f.payload, "one", 3));
    CHECK_EQ_INT(f.n_fds, 2);
    if (f.n_fds == 2) {
        check_fd_content(f.fds[0], "first image");
        check_fd_content(f.fds[1], "second image");
    }
    vl2_ipc_frame_done(&f);
    CHECK_EQ_INT(read_one(&r, sv[1], &err), VL2_IPC_FRAME);
    vl2_ipc_reader_take(&r, &f);
    CHECK(f.size == 3 && !memcmp(f.payload, "two", 3));
    CHECK_EQ_INT(f.n_fds, 0);
    vl2_ipc_frame_done(&f);
    CHECK_EQ_INT(read_one(&r, sv[1], &err), VL2_IPC_FRAME);
    vl2_ipc_reader_take(&r, &f);
    CHECK(f.size == 5 && !memcmp(f.payload, "three", 5));
    CHECK_EQ_INT(f.n_fds, 1);
    if (f.n_fds == 1)
        check_fd_content(f.fds[0], "third image");
    vl2_ipc_frame_done(&f);
    vl2_ipc_reader_done(&r);
    close(sv[0]);
    close(sv[1]);
    CHECK_EQ_INT(count_open_fds(), before);

    /* a bad descriptor is refused when queued */
    vl2_ipc_writer_init(&w, 0, 0);
    a = -1;
    CHECK_EQ_INT(vl2_ipc_writer_queue(&w, "x", 1, &a, 1, &err), VL2_EINVAL);
    CHECK(!vl2_ipc_writer_pending(&w));
    vl2_ipc_writer_done(&w);
}

/* More descriptors than a frame may carry: refused, and none leaks. */
static void test_too_many_fds(void)
{
    struct vl2_ipc_reader r;
    struct vl2_err err = { 0 };
    int sv[2], fds[VL2_IPC_MAX_FDS + 4], i;
    int before = count_open_fds();
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(fds))];
    } ctl;
    struct msghdr mh;
    struct iovec iov;
    struct cmsghdr *cm;
    uint8_t frame[5];

    make_pair(sv);
    for (i = 0; i < (int) (sizeof(fds) / sizeof(fds[0])); i++)
        fds[i] = open("/dev/null", O_RDONLY | O_CLOEXEC);
    put_le32(frame, 1);
    frame[4] = 0;
    iov.iov_base = frame;
    iov.iov_len = sizeof(frame);
    memset(&mh, 0, sizeof(mh));
    memset(&ctl, 0, sizeof(ctl));
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = ctl.buf;
    mh.msg_controllen = sizeof(ctl.buf);
    cm = CMSG_FIRSTHDR(&mh);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(fds));
    memcpy(CMSG_DATA(cm), fds, sizeof(fds));
    CHECK_EQ_INT(sendmsg(sv[0], &mh, 0), (ssize_t) sizeof(frame));
    for (i = 0; i < (int) (sizeof(fds) / sizeof(fds[0])); i++)
        close(fds[i]);
    vl2_ipc_reader_init(&r, 0);
    CHECK_EQ_INT(read_one(&r, sv[1], &err), VL2_ELIMIT);
    CHECK_MSG(strstr(err.msg, "descriptors") != NULL, "%s", err.msg);
    vl2_ipc_reader_done(&r);
    close(sv[0]);
    close(sv[1]);
    CHECK_EQ_INT(count_open_fds(), before);

    /* the writer refuses more than the maximum */
    {
        struct vl2_ipc_writer w;
        int many[VL2_IPC_MAX_FDS + 1];

        for (i = 0; i < (int) VL2_IPC_MAX_FDS + 1; i++)
            many[i] = 0;
        vl2_ipc_writer_init(&w, 0, 0);
        CHECK_EQ_INT(vl2_ipc_writer_queue(&w, "x", 1, many, VL2_IPC_MAX_FDS + 1, &err),
                     VL2_EINVAL);
        vl2_ipc_writer_done(&w);
    }
}

static void test_peer_gone(void)
{
    struct vl2_ipc_writer w;
    struct vl2_err err = { 0 };
    int sv[2];

    make_pair(sv);
    close(sv[1]);
    vl2_ipc_writer_init(&w, 0, 0);
    CHECK(vl2_ipc_writer_queue(&w, "abc", 3, NULL, 0, &err) == 0);
    /* EPIPE, not SIGPIPE (the test would die) */
    CHECK_EQ_INT(vl2_ipc_writer_flush(&w, sv[0], &err), VL2_EIO);
    CHECK(strstr(err.msg, "send failed") != NULL);
    vl2_ipc_writer_done(&w);
    close(sv[0]);
}

/* ---- socket paths ---------------------------------------------------- */

static void test_paths(void)
{
    char buf[256], longp[200];
    struct sockaddr_un sa;
    struct vl2_err err = { 0 };

    CHECK_EQ_INT(vl2_ipc_default_socket(true, buf, sizeof(buf), &err), 0);
    CHECK(!strcmp(buf, "/run/vl2d/vl2d.sock"));
    setenv("XDG_RUNTIME_DIR", "/run/user/1234", 1);
    CHECK_EQ_INT(vl2_ipc_default_socket(false, buf, sizeof(buf), &err), 0);
    CHECK(!strcmp(buf, "/run/user/1234/vl2d.sock"));
    unsetenv("XDG_RUNTIME_DIR");
    CHECK_EQ_INT(vl2_ipc_default_socket(false, buf, sizeof(buf), &err), VL2_ENOTFOUND);
    CHECK(strstr(err.msg, "XDG_RUNTIME_DIR") != NULL);
    setenv("XDG_RUNTIME_DIR", "relative", 1);
    CHECK_EQ_INT(vl2_ipc_default_socket(false, buf, sizeof(buf), &err), VL2_ENOTFOUND);
    CHECK_EQ_INT(vl2_ipc_default_socket(true, buf, 5, &err), VL2_ELIMIT);

    CHECK_EQ_INT(vl2_ipc_sockaddr("/tmp/x.sock", &sa, &err),
                 (int) (offsetof(struct sockaddr_un, sun_path) + 12));
    CHECK(!strcmp(sa.sun_path, "/tmp/x.sock"));
    memset(longp, 'a', sizeof(longp) - 1);
    longp[0] = '/';
    longp[sizeof(longp) - 1] = 0;
    CHECK_EQ_INT(vl2_ipc_sockaddr(longp, &sa, &err), VL2_ELIMIT);
    CHECK(strstr(err.msg, "limit is 107") != NULL);
    CHECK_EQ_INT(vl2_ipc_sockaddr("", &sa, &err), VL2_EINVAL);
}

/* ---- random streams -------------------------------------------------- */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint32_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t) (rng_state >> 11);
}

/* Random streams in random chunks: whatever the reader reports must agree
 * with a naive parse of the same bytes (lengths read by hand). */
static void test_random_streams(void)
{
    int iter;

    for (iter = 0; iter < 3000; iter++) {
        uint8_t stream[512];
        size_t len = 1 + rnd() % sizeof(stream), i, pos = 0;
        struct vl2_ipc_reader r;
        struct vl2_err err = { 0 };
        size_t expect_off = 0;
        int expect = 0;          /* naive: the first event */
        uint32_t flen = 0;
        int rc = VL2_IPC_AGAIN;

        for (i = 0; i < len; i++)
            stream[i] = (uint8_t) rnd();
        if (rnd() % 2) {  /* a small valid length most of the time */
            put_le32(stream, rnd() % 64);
        }
        /* naive: the header says flen; 0 -> EFORMAT; > 300 -> ELIMIT;
         * else a frame if the bytes are there, else AGAIN */
        if (len >= 4) {
            flen = (uint32_t) stream[0] | (uint32_t) stream[1] << 8 |
                   (uint32_t) stream[2] << 16 | (uint32_t) stream[3] << 24;
            if (flen == 0)
                expect = VL2_EFORMAT;
            else if (flen > 300)
                expect = VL2_ELIMIT;
            else if (len >= 4 + (size_t) flen)
                expect = VL2_IPC_FRAME;
            expect_off = 4 + flen;
        }
        vl2_ipc_reader_init(&r, 300);
        while (pos < len) {
            uint8_t *p = NULL;
            size_t want = vl2_ipc_reader_want(&r, &p), chunk = 1 + rnd() % 40;

            if (want == 0)
                break;
            if (chunk > want)
                chunk = want;
            if (chunk > len - pos)
                chunk = len - pos;
            memcpy(p, stream + pos, chunk);
            pos += chunk;
            rc = vl2_ipc_reader_advance(&r, chunk, &err);
            if (rc != VL2_IPC_AGAIN)
                break;
        }
        CHECK_EQ_INT(rc, expect);
        if (rc == VL2_IPC_FRAME) {
            struct vl2_ipc_frame f = { 0 };
            Vl2__Request *m;

            CHECK_EQ_INT(pos, expect_off);  /* never read past the frame */
            vl2_ipc_reader_take(&r, &f);
            CHECK_EQ_INT(f.size, flen);
            CHECK(memcmp(f.payload, stream + 4, flen) == 0);
            m = vl2_ipc_request_decode(f.payload, f.size, NULL);
            if (m)
                vl2__request__free_unpacked(m, NULL);
            vl2_ipc_frame_done(&f);
        }
        vl2_ipc_reader_done(&r);
        if (check_failures > 20)
            break;
    }
}

int main(void)
{
    signal(SIGPIPE, SIG_DFL);  /* a SIGPIPE must kill us, not be ignored */
    RUN(test_roundtrip_status);
    RUN(test_partial_large);
    RUN(test_byte_at_a_time);
    RUN(test_truncated);
    RUN(test_zero_length);
    RUN(test_oversize);
    RUN(test_garbage);
    RUN(test_fd_passing);
    RUN(test_too_many_fds);
    RUN(test_peer_gone);
    RUN(test_paths);
    RUN(test_random_streams);
    if (check_failures)
        fprintf(stderr, "%d check(s) failed\n", check_failures);
    return check_failures ? 1 : 0;
}

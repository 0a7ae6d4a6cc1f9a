/* test-load.c - issue 18's attacks against one vl2d while a normal client
 * asks; prints how long the normal request waits under each, and fails
 * when it waits more than a few seconds or the daemon's memory grows
 * without bound.  Unix socket only, bounded in count and time (each attack
 * runs for about two seconds; the whole test well under a minute).  As root
 * the attackers run as uid 65534, so that the per-uid caps apply to them
 * and not to the normal client; otherwise the connection floods are scaled
 * below the cap.
 *
 * usage: test-load VL2D MICRO_MHA_DIR */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../common/check.h"
#include "../integration/harness.h"

#define OTHER_UID 65534
#define NORMAL_REQUESTS 4
#define MAX_WAIT_MS 5000
#define MAX_RSS_BYTES (1536ull << 20)

static const char *mha_dir;
static char sock[300];
static pid_t daemon_pid;
static bool as_other;

static long long now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
    struct timespec ts = { ms / 1000, (long) (ms % 1000) * 1000000L };

    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

static unsigned long long daemon_rss(void)
{
    char path[64], *text, *p;
    unsigned long long kb = 0;

    snprintf(path, sizeof(path), "/proc/%ld/status", (long) daemon_pid);
    text = harness_slurp(path);
    p = text ? strstr(text, "VmRSS:") : NULL;
    if (p)
        sscanf(p + 6, "%llu", &kb);
    free(text);
    return kb * 1024;
}

/* ---- protocol ---------------------------------------------------------- */

static int hello_client(void)
{
    int fd = harness_connect(sock);
    Vl2__Response *h;

    if (fd < 0)
        return -1;
    h = harness_hello(fd, 1, 1);
    if (!h || h->body_case != VL2__RESPONSE__BODY_HELLO) {
        if (h)
            vl2__response__free_unpacked(h, NULL);
        close(fd);
        return -1;
    }
    vl2__response__free_unpacked(h, NULL);
    return fd;
}

static void send_generate(int fd, uint64_t id, const char *text, uint32_t max_new, bool long_run)
{
    Vl2__Request req = VL2__REQUEST__INIT;
    Vl2__Generate g = VL2__GENERATE__INIT;
    Vl2__Sampling s = VL2__SAMPLING__INIT;
    Vl2__Message m = VL2__MESSAGE__INIT, *mp = &m;

    m.has_role = 1;
    m.role = VL2__ROLE__ROLE_USER;
    m.text = (char *) text;
    s.has_max_new_tokens = 1;
    s.max_new_tokens = max_new;
    s.ignore_eos = long_run;
    g.n_messages = 1;
    g.messages = &mp;
    g.sampling = &s;
    g.has_stream = 1;
    g.stream = false;
    req.has_id = 1;
    req.id = id;
    req.body_case = VL2__REQUEST__BODY_GENERATE;
    req.generate = &g;
    harness_send(fd, &req);
}

/* The normal client: a fresh connection, Hello, a short Generate, Done.
 * Returns the milliseconds it took, or -1. */
static long long normal_request(void)
{
    long long t0 = now_ms();
    int fd = hello_client();
    long long end = t0 + 15000;

    if (fd < 0)
        return -1;
    send_generate(fd, 2, "Describe a cat in one word.", 4, false);
    while (now_ms() < end) {
        Vl2__Response *r = NULL;
        int done = 0;

        if (harness_recv(fd, 15000, &r) != 1)
            break;
        if (r->id == 2 && r->body_case == VL2__RESPONSE__BODY_DONE)
            done = 1;
        else if (r->body_case == VL2__RESPONSE__BODY_ERROR)
            done = -1;
        vl2__response__free_unpacked(r, NULL);
        if (done) {
            close(fd);
            return done > 0 ? now_ms() - t0 : -1;
        }
    }
    close(fd);
    return -1;
}

/* ---- attacks (each in a child process, until killed) -------------------- */

static void attack_idle(void)
{
    int i;

    for (i = 0; i < (as_other ? 200 : 40); i++)
        (void) harness_connect(sock);     /* never says Hello */
    pause();
}

static void attack_half_frames(void)
{
    static uint8_t chunk[1 << 20];
    int i;

    for (i = 0; i < (as_other ? 48 : 20); i++) {
        int fd = hello_client();
        uint8_t hdr[4] = { 0, 0, 0, 4 };  /* 64 MiB announced */

        if (fd < 0)
            continue;
        harness_write(fd, hdr, 4);
        harness_write(fd, chunk, sizeof(chunk));
    }
    pause();
}

static void attack_tiny_fields(void)
{
    /* frames of 8 MiB holding 4 M two-byte fields, again and again */
    size_t n = 8u << 20, i;
    uint8_t *f = malloc(n + 4);
    int fd = hello_client();

    f[0] = (uint8_t) n;
    f[1] = (uint8_t) (n >> 8);
    f[2] = (uint8_t) (n >> 16);
    f[3] = (uint8_t) (n >> 24);
    for (i = 0; i < n; i += 2) {
        f[4 + i] = 0x08;      /* Request.id, again */
        f[5 + i] = 0x01;
    }
    for (;;) {
        if (fd < 0)
            fd = hello_client();
        if (fd >= 0)
            harness_write(fd, f, n + 4);
        sleep_ms(50);
    }
}

static void attack_big_prompts(void)
{
    size_t n = 1000u << 10;
    char *text = malloc(n + 1);
    int fd = hello_client();
    uint64_t id = 10;

    memset(text, 'a', n);
    text[n] = '\0';
    for (;;) {
        int k;

        if (fd < 0)
            break;
        for (k = 0; k < 20; k++)
            send_generate(fd, id++, text, 1, false);
        sleep_ms(500);
    }
    pause();
}

static void attack_long_generations(void)
{
    int fd = hello_client(), k;

    for (k = 0; fd >= 0 && k < 8; k++)
        send_generate(fd, 20 + (uint64_t) k, "Tell a long story.", 100000, true);
    pause();
}

static void attack_stuck_descriptors(void)
{
    int fd = hello_client(), k;

    for (k = 0; fd >= 0 && k < 4; k++) {
        Vl2__Request req = VL2__REQUEST__INIT;
        Vl2__Generate g = VL2__GENERATE__INIT;
        Vl2__Message m = VL2__MESSAGE__INIT, *mp = &m;
        Vl2__Image im = VL2__IMAGE__INIT, *ip = &im;
        union {
            struct cmsghdr align;
            char buf[CMSG_SPACE(sizeof(int))];
        } ctl;
        struct msghdr mh;
        struct iovec iov;
        struct cmsghdr *cm;
        uint8_t frame[512];
        size_t len;
        int p[2];

        if (pipe(p) < 0)
            break;
        im.source_case = VL2__IMAGE__SOURCE_FD_INDEX;
        m.has_role = 1;
        m.role = VL2__ROLE__ROLE_USER;
        m.text = (char *) "<image>\nWhat is it?";
        m.n_images = 1;
        m.images = &ip;
        g.n_messages = 1;
        g.messages = &mp;
        req.has_id = 1;
        req.id = 30 + (uint64_t) k;
        req.body_case = VL2__REQUEST__BODY_GENERATE;
        req.generate = &g;
        len = vl2__request__get_packed_size(&req);
        frame[0] = (uint8_t) len;
        frame[1] = frame[2] = frame[3] = 0;
        vl2__request__pack(&req, frame + 4);
        memset(&mh, 0, sizeof(mh));
        iov.iov_base = frame;
        iov.iov_len = len + 4;
        mh.msg_iov = &iov;
        mh.msg_iovlen = 1;
        mh.msg_control = ctl.buf;
        mh.msg_controllen = sizeof(ctl.buf);
        cm = CMSG_FIRSTHDR(&mh);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(cm), &p[0], sizeof(int));
        (void) sendmsg(fd, &mh, 0);
        close(p[0]);          /* p[1] stays open: the image never ends */
    }
    pause();
}

static void attack_tokenize_flood(void)
{
    size_t n = 1000u << 10;
    char *text = malloc(n + 1);
    int fd = hello_client();
    uint64_t id = 100;

    memset(text, 'b', n);
    text[n] = '\0';
    while (fd >= 0) {
        Vl2__Request req = VL2__REQUEST__INIT;
        Vl2__Tokenize t = VL2__TOKENIZE__INIT;
        int k;

        t.model = (char *) "mha";
        t.text = text;
        req.has_id = 1;
        req.body_case = VL2__REQUEST__BODY_TOKENIZE;
        req.tokenize = &t;
        for (k = 0; k < 16; k++) {
            req.id = id++;
            harness_send(fd, &req);
        }
        sleep_ms(300);
    }
    pause();
}

static void attack_hostile_load(void)
{
    int fd = hello_client(), k;
    char d[64];

    /* a FIFO named config.json, loaded again and again (refused for
     * another user; fails fast for the daemon's own) */
    snprintf(d, sizeof(d), "/tmp/vl2-load-fifo-%ld", (long) getppid());
    for (k = 0; fd >= 0 && k < 40; k++) {
        Vl2__Request req = VL2__REQUEST__INIT;
        Vl2__LoadModel lm = VL2__LOAD_MODEL__INIT;
        char name[32];

        snprintf(name, sizeof(name), "fifo%d", k);
        lm.name = name;
        lm.dir = d;
        req.has_id = 1;
        req.id = 200 + (uint64_t) k;
        req.body_case = VL2__REQUEST__BODY_LOAD_MODEL;
        req.load_model = &lm;
        harness_send(fd, &req);
        sleep_ms(20);
    }
    pause();
}

struct attack {
    const char *name;
    void (*fn)(void);
};

static const struct attack attacks[] = {
    { "none (baseline)", NULL },
    { "idle connections, no Hello", attack_idle },
    { "half frames of 64 MiB", attack_half_frames },
    { "8 MiB frames of tiny fields", attack_tiny_fields },
    { "20 prompts of 1000 KiB queued", attack_big_prompts },
    { "8 long generations, one connection", attack_long_generations },
    { "4 image descriptors that never end", attack_stuck_descriptors },
    { "Tokenize flood (16 x 1000 KiB)", attack_tokenize_flood },
    { "LoadModel of a FIFO config.json", attack_hostile_load },
};

static pid_t start_attack(const struct attack *a)
{
    pid_t pid;

    if (!a->fn)
        return -1;
    fflush(NULL);
    pid = fork();
    if (pid == 0) {
        if (as_other && (setgroups(0, NULL) < 0 || setresgid(OTHER_UID, OTHER_UID, OTHER_UID) < 0 ||
                         setresuid(OTHER_UID, OTHER_UID, OTHER_UID) < 0))
            _exit(99);
        signal(SIGPIPE, SIG_IGN);
        a->fn();
        _exit(0);
    }
    return pid;
}

int main(int argc, char **argv)
{
    char *dir, log_path[300], model_arg[600], fifo_dir[64], p[128], uid_arg[32];
    size_t i;

    if (argc != 3) {
        fprintf(stderr, "usage: test-load VL2D MICRO_MHA_DIR\n");
        return 2;
    }
    mha_dir = argv[2];
    signal(SIGPIPE, SIG_IGN);
    as_other = geteuid() == 0;
    dir = harness_tmpdir();
    if (!dir)
        return 1;
    chmod(dir, 0755);
    snprintf(sock, sizeof(sock), "%s/load.sock", dir);
    snprintf(log_path, sizeof(log_path), "%s/load.log", dir);
    snprintf(model_arg, sizeof(model_arg), "mha=%s", mha_dir);
    snprintf(uid_arg, sizeof(uid_arg), "%u", (unsigned) (as_other ? OTHER_UID : geteuid()));
    /* the hostile model directory */
    snprintf(fifo_dir, sizeof(fifo_dir), "/tmp/vl2-load-fifo-%ld", (long) getpid());
    mkdir(fifo_dir, 0755);
    snprintf(p, sizeof(p), "%s/config.json", fifo_dir);
    mkfifo(p, 0644);
    {
        const char *args[] = { "--no-config", "--socket", sock, "--socket-mode", "0666",
                               "--allow-uid", "0", "--allow-uid", uid_arg, "--model", model_arg,
                               "--handshake-timeout", "2", "--frame-timeout", "2",
                               "--max-sequences", "4", "--no-notify", "--no-socket-activation",
                               "--log-level", "error", NULL };

        daemon_pid = harness_start(argv[1], sock, args, log_path, NULL);
    }
    CHECK(daemon_pid > 0);
    if (daemon_pid <= 0)
        goto out;
    /* the model is ready when a normal request is answered */
    {
        long long end = now_ms() + 30000;

        while (now_ms() < end && normal_request() < 0)
            sleep_ms(100);
    }
    printf("%-40s %8s %8s %10s\n", "attack", "p50 ms", "max ms", "RSS MiB");
    for (i = 0; i < sizeof(attacks) / sizeof(attacks[0]); i++) {
        const struct attack *a = &attacks[i];
        long long t[NORMAL_REQUESTS], worst = 0, tmp;
        unsigned long long rss = 0, r;
        pid_t pid = start_attack(a);
        int k, j, failed = 0;

        sleep_ms(a->fn ? 500 : 0);
        for (k = 0; k < NORMAL_REQUESTS; k++) {
            t[k] = normal_request();
            if (t[k] < 0)
                failed++;
            if (t[k] > worst)
                worst = t[k];
            r = daemon_rss();
            if (r > rss)
                rss = r;
            sleep_ms(150);
        }
        for (k = 0; k < NORMAL_REQUESTS; k++)      /* sort for the median */
            for (j = k + 1; j < NORMAL_REQUESTS; j++)
                if (t[j] < t[k]) {
                    tmp = t[k];
                    t[k] = t[j];
                    t[j] = tmp;
                }
        printf("%-40s %8lld %8lld %10.0f%s\n", a->name, t[NORMAL_REQUESTS / 2], worst,
               (double) rss / 1048576.0, failed ? "  (normal requests failed)" : "");
        fflush(stdout);
        CHECK_MSG(failed == 0, "%s: %d normal requests failed", a->name, failed);
        CHECK_MSG(worst < MAX_WAIT_MS, "%s: a normal request waited %lld ms", a->name, worst);
        CHECK_MSG(rss < MAX_RSS_BYTES, "%s: the daemon's RSS reached %llu MiB", a->name,
                  rss >> 20);
        if (pid > 0) {
            kill(pid, SIGKILL);
            waitpid(pid, NULL, 0);
        }
        CHECK_MSG(waitpid(daemon_pid, NULL, WNOHANG) == 0, "the daemon died under '%s'",
                  a->name);
        sleep_ms(300);   /* the attacker's requests wind down */
    }
    CHECK_EQ_INT(harness_stop(daemon_pid, SIGTERM, 15000), 0);
out:
    snprintf(p, sizeof(p), "%s/config.json", fifo_dir);
    unlink(p);
    rmdir(fifo_dir);
    if (check_failures) {
        char *text = harness_slurp(log_path);

        fprintf(stderr, "---- daemon log ----\n%s", text ? text : "");
        free(text);
    }
    harness_rmdir(dir);
    fprintf(stderr, "test-load: %d check(s) failed\n", check_failures);
    return check_failures ? 1 : 0;
}

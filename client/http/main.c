/* main.c - vl2-http: flags, configuration, the listening socket (socket
 * activation first, self-bind otherwise), signals.
 *
 *     vl2-http --daemon-socket PATH --listen HOST:PORT [--api-key KEY]
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "http.h"
#include "ipc.h"
#include "vl2-config.h"

#if VL2_HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

static const char usage[] =
    "usage: vl2-http [--daemon-socket PATH] [--listen HOST:PORT] [--api-key KEY]\n"
    "                [--api-key-file FILE] [--config FILE | --no-config]\n"
    "                [--max-body SIZE] [--max-connections N] [--daemon-timeout SECONDS]\n"
    "                [--allow-remote] [--system]\n"
    "\n"
    "OpenAI- and Ollama-compatible HTTP for vl2d (a client of the daemon).\n"
    "  --daemon-socket PATH   vl2d's socket (default: $VL2_SOCKET, then the usual paths)\n"
    "  --listen HOST:PORT     default " VL2H_DEFAULT_LISTEN "; loopback only unless\n"
    "                         --allow-remote; port 0 picks a free one (printed on stderr);\n"
    "                         ignored when systemd passes a socket (vl2-http.socket)\n"
    "  --api-key KEY          require 'Authorization: Bearer KEY' (not on /health)\n"
    "  --api-key-file FILE    the same, the key read from FILE's first line\n"
    "  --config FILE          settings from FILE ([http] section; default\n"
    "                         " VL2_SYSCONF_DIR "/vl2-http.conf as root,\n"
    "                         $XDG_CONFIG_HOME/vl2d/vl2-http.conf otherwise, if present)\n"
    "  --max-body SIZE        largest request body (default 64M); larger: 413\n"
    "  --max-connections N    HTTP connections at once (default 64)\n"
    "  --daemon-timeout S     longest silence of vl2d during a request (default 600)\n"
    "  --system               the system service's defaults: " VL2_SYSCONF_DIR "/vl2-http.conf\n"
    "                         (if present) and vl2d at " VL2_IPC_SYSTEM_SOCKET "\n"
    "\n"
    "Endpoints: POST /v1/chat/completions, GET /v1/models, GET /health, GET /metrics,\n"
    "POST /api/chat, POST /api/generate, GET /api/tags, GET /api/ps, GET /api/version,\n"
    "POST /api/show.\n";

static int fail_usage(const char *fmt, const char *arg)
{
    fprintf(stderr, "vl2-http: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n(vl2-http --help lists the options)\n");
    return 2;
}

static bool is_loopback(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *) sa;

        return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *) sa;

        return IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr);
    }
    return false;
}

/* Bind and listen on @spec.  Returns the socket or < 0 with @err. */
static int bind_listen(const char *spec, bool allow_remote, struct vl2_err *err)
{
    struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE };
    struct addrinfo *res = NULL, *ai;
    char host[256], port_s[16];
    unsigned port;
    int r, fd = -1, one = 1, e = 0;

    r = vl2h_parse_listen(spec, host, sizeof(host), &port, err);
    if (r < 0)
        return r;
    snprintf(port_s, sizeof(port_s), "%u", port);
    r = getaddrinfo(host, port_s, &hints, &res);
    if (r != 0)
        return vl2_err_set(err, VL2_EINVAL, "vl2-http: listen address '%s': %s", spec,
                           gai_strerror(r));
    for (ai = res; ai; ai = ai->ai_next) {
        if (!allow_remote && !is_loopback(ai->ai_addr)) {
            freeaddrinfo(res);
            return vl2_err_set(err, VL2_EPERM, "vl2-http: listen address '%s' is not loopback "
                               "(add --allow-remote, or allow_remote = true, and an api key)",
                               spec);
        }
    }
    for (ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            e = errno;
            continue;
        }
        (void) setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, 128) == 0)
            break;
        e = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0)
        return vl2_err_set(err, VL2_EIO, "vl2-http: cannot listen on '%s': %s", spec,
                           strerror(e));
    return fd;
}

/* "http://127.0.0.1:PORT" of a listening socket. */
static void describe(int fd, char *buf, size_t size)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    char host[INET6_ADDRSTRLEN] = "?";
    unsigned port = 0;

    if (getsockname(fd, (struct sockaddr *) &ss, &len) == 0) {
        if (ss.ss_family == AF_INET) {
            struct sockaddr_in *in = (struct sockaddr_in *) &ss;

            inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
            port = ntohs(in->sin_port);
            snprintf(buf, size, "http://%s:%u", host, port);
            return;
        }
        if (ss.ss_family == AF_INET6) {
            struct sockaddr_in6 *in6 = (struct sockaddr_in6 *) &ss;

            inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
            port = ntohs(in6->sin6_port);
            snprintf(buf, size, "http://[%s]:%u", host, port);
            return;
        }
    }
    snprintf(buf, size, "(socket %d)", fd);
}

/* The socket systemd passed, or -1. */
static int activated_socket(void)
{
#if VL2_HAVE_SYSTEMD
    int n = sd_listen_fds(1);

    if (n >= 1 && sd_is_socket(SD_LISTEN_FDS_START, AF_UNSPEC, SOCK_STREAM, 1) > 0)
        return SD_LISTEN_FDS_START;
#endif
    return -1;
}

static const char *default_config(char *buf, size_t size)
{
    const char *xdg = getenv("XDG_CONFIG_HOME"), *home = getenv("HOME");

    if (geteuid() == 0)
        snprintf(buf, size, "%s/vl2-http.conf", VL2_SYSCONF_DIR);
    else if (xdg && xdg[0])
        snprintf(buf, size, "%s/vl2d/vl2-http.conf", xdg);
    else if (home && home[0])
        snprintf(buf, size, "%s/.config/vl2d/vl2-http.conf", home);
    else
        return NULL;
    return buf;
}

static int set_opt(char **dst, const char *v)
{
    char *s = strdup(v);

    if (!s)
        return -1;
    free(*dst);
    *dst = s;
    return 0;
}

int main(int argc, char **argv)
{
    struct vl2h_conf conf;
    struct vl2h_server srv;
    struct vl2_err err = { 0 };
    const char *config = NULL, *listen_flag = NULL, *socket_flag = NULL, *key_flag = NULL;
    const char *key_file = NULL, *body_flag = NULL, *conns_flag = NULL, *timeout_flag = NULL;
    bool no_config = false, remote_flag = false, system = false;
    char path[1024], where[128];
    sigset_t sigs;
    int i, fd, sig = 0, r;

    for (i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char **slot = NULL;

        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(usage, stdout);
            return 0;
        }
        if (!strcmp(a, "--version")) {
            printf("vl2-http %s\n", VL2_VERSION);
            return 0;
        }
        if (!strcmp(a, "--no-config")) {
            no_config = true;
            continue;
        }
        if (!strcmp(a, "--system")) {
            system = true;
            continue;
        }
        if (!strcmp(a, "--allow-remote")) {
            remote_flag = true;
            continue;
        }
        if (!strcmp(a, "--daemon-socket"))
            slot = &socket_flag;
        else if (!strcmp(a, "--listen"))
            slot = &listen_flag;
        else if (!strcmp(a, "--api-key"))
            slot = &key_flag;
        else if (!strcmp(a, "--api-key-file"))
            slot = &key_file;
        else if (!strcmp(a, "--config"))
            slot = &config;
        else if (!strcmp(a, "--max-body"))
            slot = &body_flag;
        else if (!strcmp(a, "--max-connections"))
            slot = &conns_flag;
        else if (!strcmp(a, "--daemon-timeout"))
            slot = &timeout_flag;
        else
            return fail_usage("unknown option '%s'", a);
        if (i + 1 >= argc)
            return fail_usage("option '%s' needs a value", a);
        *slot = argv[++i];
    }

    vl2h_conf_init(&conf);
    if (!conf.listen) {
        fprintf(stderr, "vl2-http: out of memory\n");
        return 1;
    }
    if (!no_config) {
        const char *p = config;

        if (!p && system)
            p = VL2_SYSCONF_DIR "/vl2-http.conf";
        if (!p)
            p = default_config(path, sizeof(path));

        if (p && vl2h_conf_load(&conf, p, config != NULL, &err) < 0) {
            fprintf(stderr, "%s\n", err.msg);
            vl2h_conf_done(&conf);
            return 1;
        }
    }
    r = 0;
    if (socket_flag)
        r |= set_opt(&conf.daemon_socket, socket_flag);
    else if (system && !conf.daemon_socket)
        r |= set_opt(&conf.daemon_socket, VL2_IPC_SYSTEM_SOCKET);
    if (listen_flag)
        r |= set_opt(&conf.listen, listen_flag);
    if (key_flag)
        r |= set_opt(&conf.api_key, key_flag);
    if (remote_flag)
        conf.allow_remote = true;
    if (r < 0) {
        fprintf(stderr, "vl2-http: out of memory\n");
        vl2h_conf_done(&conf);
        return 1;
    }
    if (key_file) {
        FILE *f = fopen(key_file, "re");
        char line[1024] = "";
        size_t n;

        if (!f || !fgets(line, sizeof(line), f)) {
            fprintf(stderr, "vl2-http: api key file '%s': %s\n", key_file,
                    f ? "empty" : strerror(errno));
            if (f)
                fclose(f);
            vl2h_conf_done(&conf);
            return 1;
        }
        fclose(f);
        n = strcspn(line, "\r\n");
        line[n] = '\0';
        if (!n || set_opt(&conf.api_key, line) < 0) {
            fprintf(stderr, "vl2-http: api key file '%s': empty\n", key_file);
            vl2h_conf_done(&conf);
            return 1;
        }
    }
    if (body_flag && vl2h_parse_size(body_flag, &conf.max_body) < 0) {
        vl2h_conf_done(&conf);
        return fail_usage("--max-body '%s': expected a size such as 64M", body_flag);
    }
    if (conns_flag) {
        char *end = NULL;
        unsigned long v = strtoul(conns_flag, &end, 10);

        if (!*conns_flag || *end || v == 0 || v > 100000) {
            vl2h_conf_done(&conf);
            return fail_usage("--max-connections '%s': expected 1..100000", conns_flag);
        }
        conf.max_connections = (unsigned) v;
    }
    if (timeout_flag) {
        char *end = NULL;
        unsigned long v = strtoul(timeout_flag, &end, 10);

        if (!*timeout_flag || *end || v == 0 || v > 86400) {
            vl2h_conf_done(&conf);
            return fail_usage("--daemon-timeout '%s': expected seconds, 1..86400",
                              timeout_flag);
        }
        conf.daemon_timeout_ms = (int) v * 1000;
    }
    if (conf.api_key && !conf.api_key[0]) {
        free(conf.api_key);
        conf.api_key = NULL;
    }

    fd = activated_socket();
    if (fd < 0) {
        fd = bind_listen(conf.listen, conf.allow_remote, &err);
        if (fd < 0) {
            fprintf(stderr, "%s\n", err.msg);
            vl2h_conf_done(&conf);
            return 1;
        }
    }
    if (conf.allow_remote && !conf.api_key)
        fprintf(stderr, "vl2-http: warning: remote connections allowed without an api key\n");

    /* every thread (MHD's included) inherits the mask; main waits for them */
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    /* said before serving, so that no answer comes before this line */
    describe(fd, where, sizeof(where));
    {
        char sock[256];

        if (vl2_client_socket_path(conf.daemon_socket, sock, sizeof(sock), NULL) < 0)
            snprintf(sock, sizeof(sock), "?");
        fprintf(stderr, "vl2-http: listening on %s (vl2d at '%s'%s)\n", where, sock,
                conf.api_key ? ", api key required" : "");
    }
    memset(&srv, 0, sizeof(srv));
    if (vl2h_server_start(&srv, &conf, fd, &err) < 0) {
        fprintf(stderr, "%s\n", err.msg);
        close(fd);
        vl2h_conf_done(&conf);
        return 1;
    }
#if VL2_HAVE_SYSTEMD
    (void) sd_notify(0, "READY=1");
#endif
    while (sigwait(&sigs, &sig) == 0 && sig == SIGHUP)
        ;   /* nothing to reload: the settings are read at start */
#if VL2_HAVE_SYSTEMD
    (void) sd_notify(0, "STOPPING=1");
#endif
    fprintf(stderr, "vl2-http: stopping (signal %d)\n", sig);
    vl2h_server_stop(&srv);
    vl2h_conf_done(&conf);
    return 0;
}

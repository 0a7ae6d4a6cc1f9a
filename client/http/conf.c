/* conf.c - vl2-http's settings: defaults, the configuration file, sizes and
 * listen addresses.
 *
 * The file (default /etc/vl2d/vl2-http.conf for the system service,
 * $XDG_CONFIG_HOME/vl2d/vl2-http.conf otherwise) holds one [http] section:
 *
 *     [http]
 *     listen = 127.0.0.1:11535     # HOST:PORT, [::1]:PORT; loopback unless allow_remote
 *     daemon_socket = /run/vl2d/vl2d.sock
 *     api_key_file = /etc/vl2d/vl2-http.key   # or api_key = KEY (the file keeps it out of ps)
 *     max_body = 64M               # request bodies; larger: 413
 *     max_connections = 64         # HTTP connections at once
 *     daemon_timeout = 600         # seconds vl2d may stay silent during a request
 *     allow_remote = false         # true: listen may name a non-loopback address
 *
 * '#' and ';' start comments; blank lines are ignored; an unknown key or
 * section is an error (so a typo never passes silently).  Flags given on
 * the command line win over the file. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"

void vl2h_conf_init(struct vl2h_conf *c)
{
    memset(c, 0, sizeof(*c));
    c->listen = strdup(VL2H_DEFAULT_LISTEN);
    c->max_body = VL2H_DEFAULT_MAX_BODY;
    c->max_connections = 64;
    c->daemon_timeout_ms = 600 * 1000;
}

void vl2h_conf_done(struct vl2h_conf *c)
{
    free(c->daemon_socket);
    free(c->listen);
    if (c->api_key) {
        memset(c->api_key, 0, strlen(c->api_key));
        free(c->api_key);
    }
    memset(c, 0, sizeof(*c));
}

int vl2h_parse_size(const char *s, size_t *ret)
{
    char *end = NULL;
    unsigned long long v;
    unsigned shift = 0;

    errno = 0;
    if (!s || !*s || *s == '-')
        return VL2_EINVAL;
    v = strtoull(s, &end, 10);
    if (errno || end == s)
        return VL2_EINVAL;
    switch (*end) {
    case '\0':
        break;
    case 'k': case 'K': shift = 10; end++; break;
    case 'm': case 'M': shift = 20; end++; break;
    case 'g': case 'G': shift = 30; end++; break;
    default:
        return VL2_EINVAL;
    }
    if (*end == 'i' || *end == 'B')
        end++;
    if (*end == 'B')
        end++;
    if (*end || v == 0 || v > (1ull << 40) >> shift)
        return VL2_EINVAL;
    *ret = (size_t) (v << shift);
    return 0;
}

int vl2h_parse_listen(const char *s, char *host, size_t host_size, unsigned *ret_port,
                      struct vl2_err *err)
{
    const char *colon, *h = s;
    size_t hl;
    char *end = NULL;
    unsigned long port;

    if (s[0] == '[') {
        const char *close = strchr(s, ']');

        if (!close || close[1] != ':')
            return vl2_err_set(err, VL2_EINVAL, "vl2-http: listen address '%s': expected "
                               "[IPV6]:PORT", s);
        h = s + 1;
        hl = (size_t) (close - h);
        colon = close + 1;
    } else {
        colon = strrchr(s, ':');
        if (!colon)
            return vl2_err_set(err, VL2_EINVAL, "vl2-http: listen address '%s': expected "
                               "HOST:PORT", s);
        hl = (size_t) (colon - s);
    }
    if (hl == 0 || hl >= host_size)
        return vl2_err_set(err, VL2_EINVAL, "vl2-http: listen address '%s': bad host", s);
    errno = 0;
    port = strtoul(colon + 1, &end, 10);
    if (errno || end == colon + 1 || *end || port > 65535)
        return vl2_err_set(err, VL2_EINVAL, "vl2-http: listen address '%s': bad port", s);
    memcpy(host, h, hl);
    host[hl] = '\0';
    *ret_port = (unsigned) port;
    return 0;
}

static char *trim(char *s)
{
    char *e;

    while (*s == ' ' || *s == '\t')
        s++;
    e = s + strlen(s);
    while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r' || e[-1] == '\n'))
        *--e = '\0';
    return s;
}

static int set_str(char **dst, const char *v)
{
    char *s = strdup(v);

    if (!s)
        return VL2_ENOMEM;
    free(*dst);
    *dst = s;
    return 0;
}

/* The first line of @path, the key. */
static int read_key_file(const char *path, char **ret, struct vl2_err *err)
{
    FILE *f = fopen(path, "re");
    char line[1024];

    if (!f)
        return vl2_err_set(err, VL2_EIO, "vl2-http: api key file '%s': %s", path,
                           strerror(errno));
    if (!fgets(line, sizeof(line), f))
        line[0] = '\0';
    fclose(f);
    if (!trim(line)[0])
        return vl2_err_set(err, VL2_EINVAL, "vl2-http: api key file '%s' is empty", path);
    if (set_str(ret, trim(line)) < 0)
        return vl2_err_set(err, VL2_ENOMEM, "vl2-http: out of memory");
    memset(line, 0, sizeof(line));
    return 0;
}

/* "vl2-http: why" into "vl2-http: PATH:LINE: why". */
static void where(struct vl2_err *err, const char *path, long n)
{
    char msg[VL2_ERR_MSG_SIZE];
    const char *why = err->msg;

    if (!strncmp(why, "vl2-http: ", 10))
        why += 10;
    int k = snprintf(msg, sizeof(msg), "vl2-http: %.200s:%ld: ", path, n);

    if (k > 0 && (size_t) k < sizeof(msg))
        snprintf(msg + k, sizeof(msg) - (size_t) k, "%.300s", why);
    memcpy(err->msg, msg, sizeof(msg));
}

int vl2h_conf_load(struct vl2h_conf *c, const char *path, bool must_exist, struct vl2_err *err)
{
    FILE *f = fopen(path, "re");
    char line[4096];
    bool in_http = false;
    long n = 0;
    int r = 0;

    if (!f) {
        if (errno == ENOENT && !must_exist)
            return 0;
        return vl2_err_set(err, VL2_EIO, "vl2-http: config '%s': %s", path, strerror(errno));
    }
    while (r == 0 && fgets(line, sizeof(line), f)) {
        char *s, *eq, *key, *val, *hash;

        n++;
        for (hash = line; *hash; hash++)
            if (*hash == '#' || *hash == ';')
                break;
        *hash = '\0';
        s = trim(line);
        if (!*s)
            continue;
        if (*s == '[') {
            if (strcmp(s, "[http]")) {
                r = vl2_err_set(err, VL2_EFORMAT, "vl2-http: %s:%ld: unknown section '%s' "
                                "(expected [http])", path, n, s);
                break;
            }
            in_http = true;
            continue;
        }
        if (!in_http) {
            r = vl2_err_set(err, VL2_EFORMAT, "vl2-http: %s:%ld: '%s' outside a section "
                            "(start with [http])", path, n, s);
            break;
        }
        eq = strchr(s, '=');
        if (!eq) {
            r = vl2_err_set(err, VL2_EFORMAT, "vl2-http: %s:%ld: expected key = value", path, n);
            break;
        }
        *eq = '\0';
        key = trim(s);
        val = trim(eq + 1);
        if (!strcmp(key, "listen")) {
            char host[256];
            unsigned port;

            r = vl2h_parse_listen(val, host, sizeof(host), &port, err);
            if (r == 0)
                r = set_str(&c->listen, val);
        } else if (!strcmp(key, "daemon_socket")) {
            r = set_str(&c->daemon_socket, val);
        } else if (!strcmp(key, "api_key")) {
            r = set_str(&c->api_key, val);
        } else if (!strcmp(key, "api_key_file")) {
            r = read_key_file(val, &c->api_key, err);
        } else if (!strcmp(key, "max_body")) {
            if (vl2h_parse_size(val, &c->max_body) < 0)
                r = vl2_err_set(err, VL2_EINVAL, "vl2-http: %s:%ld: max_body '%s': expected a "
                                "size (64M)", path, n, val);
        } else if (!strcmp(key, "max_connections")) {
            char *end = NULL;
            unsigned long v = strtoul(val, &end, 10);

            if (!*val || *end || v == 0 || v > 100000)
                r = vl2_err_set(err, VL2_EINVAL, "vl2-http: %s:%ld: max_connections '%s': "
                                "expected 1..100000", path, n, val);
            else
                c->max_connections = (unsigned) v;
        } else if (!strcmp(key, "daemon_timeout")) {
            char *end = NULL;
            unsigned long v = strtoul(val, &end, 10);

            if (!*val || *end || v == 0 || v > 86400)
                r = vl2_err_set(err, VL2_EINVAL, "vl2-http: %s:%ld: daemon_timeout '%s': "
                                "expected seconds, 1..86400", path, n, val);
            else
                c->daemon_timeout_ms = (int) v * 1000;
        } else if (!strcmp(key, "allow_remote")) {
            if (!strcmp(val, "true") || !strcmp(val, "yes") || !strcmp(val, "1"))
                c->allow_remote = true;
            else if (!strcmp(val, "false") || !strcmp(val, "no") || !strcmp(val, "0"))
                c->allow_remote = false;
            else
                r = vl2_err_set(err, VL2_EINVAL, "vl2-http: %s:%ld: allow_remote '%s': "
                                "expected true or false", path, n, val);
        } else {
            r = vl2_err_set(err, VL2_EINVAL, "vl2-http: %s:%ld: unknown key '%s' (expected "
                            "listen, daemon_socket, api_key, api_key_file, max_body, "
                            "max_connections, daemon_timeout, allow_remote)", path, n, key);
        }
        if (r == VL2_ENOMEM)
            r = vl2_err_set(err, VL2_ENOMEM, "vl2-http: out of memory");
        else if (r < 0 && err && !strstr(err->msg, path))
            where(err, path, n);
    }
    memset(line, 0, sizeof(line));
    fclose(f);
    return r;
}

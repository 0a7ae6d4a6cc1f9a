/* common.c - what the vl2 subcommands share: connecting, error reporting,
 * JSON lines, sampling options, images. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"

struct vl2_client *vl2_cli_connect(const struct vl2_cli *cli)
{
    struct vl2_client_opts o = vl2_client_default_opts();
    struct vl2_client *c = NULL;
    struct vl2_err err = { 0 };

    o.socket_path = cli->socket_path;
    o.timeout_ms = cli->timeout_ms;
    o.client_name = "vl2 " VL2_VERSION;
    if (vl2_client_open(&o, &c, &err) < 0) {
        (void) vl2_cli_fail(cli, &err);
        return NULL;
    }
    return c;
}

void vl2_cli_error(const struct vl2_err *err)
{
    fprintf(stderr, "%s\n", err->msg[0] ? err->msg : vl2_status_name(err->code));
}

void vl2_cli_print_json_line(cJSON *obj)
{
    char *s = obj ? cJSON_PrintUnformatted(obj) : NULL;

    if (s) {
        fputs(s, stdout);
        fputc('\n', stdout);
        cJSON_free(s);
    } else {
        fputs("null\n", stdout);
    }
    fflush(stdout);
    cJSON_Delete(obj);
}

int vl2_cli_fail(const struct vl2_cli *cli, const struct vl2_err *err)
{
    vl2_cli_error(err);
    if (cli && cli->json) {
        cJSON *o = cJSON_CreateObject();
        int code = err->code < 0 ? err->code : VL2_EINTERNAL;

        cJSON_AddStringToObject(o, "event", "error");
        cJSON_AddNumberToObject(o, "code", code);
        cJSON_AddStringToObject(o, "status", vl2_status_name(code));
        cJSON_AddStringToObject(o, "message", err->msg[0] ? err->msg : vl2_status_name(code));
        vl2_cli_print_json_line(o);
    }
    return 1;
}

const char *vl2_cli_bytes(unsigned long long bytes, char *buf, unsigned size)
{
    static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB" };
    double v = (double) bytes;
    unsigned u = 0;

    while (v >= 1024.0 && u < 4) {
        v /= 1024.0;
        u++;
    }
    if (u == 0)
        snprintf(buf, size, "%llu B", bytes);
    else
        snprintf(buf, size, "%.1f %s", v, units[u]);
    return buf;
}

bool vl2_cli_show_progress(const struct vl2_cli *cli)
{
    return !cli->json && isatty(STDERR_FILENO);
}

/* ---- sampling options ------------------------------------------------- */

const char vl2_cli_sampling_help[] =
    "  --max-new-tokens N        longest answer in tokens (default: the daemon's)\n"
    "  --temperature T           0 is greedy (the default)\n"
    "  --top-p P                 nucleus sampling, (0, 1] (default 1: off)\n"
    "  --top-k K                 0 is off (the default)\n"
    "  --repetition-penalty R    > 0; 1 is off (the default)\n"
    "  --seed S                  sampler seed\n"
    "  --stop STR                end the answer before STR (repeatable)\n"
    "  --ignore-eos              keep going after the end-of-sentence token\n"
    "  --top-logprobs N          with --json: each token event lists the N (0-20) most\n"
    "                            likely ids (id, text, bytes, logprob), most likely first\n";

static int parse_u64(const char *cmd, const char *opt, const char *v, uint64_t max,
                     uint64_t *ret)
{
    char *end;
    unsigned long long x;

    errno = 0;
    x = strtoull(v, &end, 10);
    if (errno || end == v || *end || v[0] == '-' || v[0] == '+' || x > max) {
        fprintf(stderr, "vl2 %s: %s '%s': expected an integer from 0 to %llu\n", cmd, opt, v,
                (unsigned long long) max);
        return -1;
    }
    *ret = x;
    return 0;
}

static int parse_float(const char *cmd, const char *opt, const char *v, float *ret)
{
    char *end;
    double x;

    errno = 0;
    x = strtod(v, &end);
    if (errno || end == v || *end || !isfinite(x)) {
        fprintf(stderr, "vl2 %s: %s '%s': expected a number\n", cmd, opt, v);
        return -1;
    }
    *ret = (float) x;
    return 0;
}

int vl2_cli_sampling_arg(struct vl2_cli_sampling *s, const char *cmd, int argc, char **argv,
                         int *i)
{
    static const char *const with_value[] = {
        "--max-new-tokens", "--temperature", "--top-p", "--top-k",
        "--repetition-penalty", "--seed", "--stop", "--top-logprobs",
    };
    const char *a = argv[*i], *v = NULL;
    size_t k, n = 0;
    uint64_t u;

    if (!strcmp(a, "--ignore-eos")) {
        s->ignore_eos = true;
        return 1;
    }
    for (k = 0; k < sizeof(with_value) / sizeof(with_value[0]); k++) {
        n = strlen(with_value[k]);
        if (!strncmp(a, with_value[k], n) && (a[n] == '\0' || a[n] == '='))
            break;
    }
    if (k == sizeof(with_value) / sizeof(with_value[0]))
        return 0;
    if (a[n] == '=') {
        v = a + n + 1;
    } else {
        if (*i + 1 >= argc) {
            fprintf(stderr, "vl2 %s: %s needs a value\n", cmd, with_value[k]);
            return -1;
        }
        v = argv[++*i];
    }
    switch (k) {
    case 0:
        if (parse_u64(cmd, with_value[k], v, UINT32_MAX, &u) < 0)
            return -1;
        s->has_max_new = true;
        s->max_new = (uint32_t) u;
        break;
    case 1:
        if (parse_float(cmd, with_value[k], v, &s->temperature) < 0)
            return -1;
        if (!(s->temperature >= 0.0f)) {
            fprintf(stderr, "vl2 %s: --temperature '%s': must be >= 0\n", cmd, v);
            return -1;
        }
        s->has_temperature = true;
        break;
    case 2:
        if (parse_float(cmd, with_value[k], v, &s->top_p) < 0)
            return -1;
        if (!(s->top_p > 0.0f && s->top_p <= 1.0f)) {
            fprintf(stderr, "vl2 %s: --top-p '%s': must be in (0, 1]\n", cmd, v);
            return -1;
        }
        s->has_top_p = true;
        break;
    case 3:
        if (parse_u64(cmd, with_value[k], v, INT32_MAX, &u) < 0)
            return -1;
        s->has_top_k = true;
        s->top_k = (uint32_t) u;
        break;
    case 4:
        if (parse_float(cmd, with_value[k], v, &s->repetition_penalty) < 0)
            return -1;
        if (!(s->repetition_penalty > 0.0f)) {
            fprintf(stderr, "vl2 %s: --repetition-penalty '%s': must be > 0\n", cmd, v);
            return -1;
        }
        s->has_repetition_penalty = true;
        break;
    case 5:
        if (parse_u64(cmd, with_value[k], v, UINT64_MAX, &s->seed) < 0)
            return -1;
        s->has_seed = true;
        break;
    case 7:
        if (parse_u64(cmd, with_value[k], v, 20, &u) < 0)
            return -1;
        s->top_logprobs = (uint32_t) u;
        break;
    default:
        if (!v[0]) {
            fprintf(stderr, "vl2 %s: --stop needs a non-empty string\n", cmd);
            return -1;
        }
        if (s->n_stops == VL2_CLI_MAX_STOPS) {
            fprintf(stderr, "vl2 %s: more than %d --stop strings\n", cmd, VL2_CLI_MAX_STOPS);
            return -1;
        }
        s->stops[s->n_stops++] = v;
        break;
    }
    return 1;
}

/* ---- images ----------------------------------------------------------- */

/* Read @fd from its current offset to the end, at most @max bytes. */
static int read_all(int fd, const char *path, size_t max, uint8_t **ret_data, size_t *ret_size,
                    struct vl2_err *err)
{
    uint8_t *buf = NULL;
    size_t n = 0, cap = 0;

    for (;;) {
        ssize_t got;

        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 1 << 16;
            uint8_t *p;

            if (ncap > max + 1)
                ncap = max + 1;
            if (ncap <= cap) {
                free(buf);
                return vl2_err_set(err, VL2_ELIMIT, "vl2: image '%s': larger than %zu bytes "
                                   "(the daemon's limit)", path, max);
            }
            p = realloc(buf, ncap);
            if (!p) {
                free(buf);
                return vl2_err_set(err, VL2_ENOMEM, "vl2: image '%s': out of memory", path);
            }
            buf = p;
            cap = ncap;
        }
        got = read(fd, buf + n, cap - n);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0) {
            int e = errno;
            free(buf);
            return vl2_err_set(err, VL2_EIO, "vl2: image '%s': %s", path, strerror(e));
        }
        if (got == 0)
            break;
        n += (size_t) got;
    }
    if (n > max) {
        free(buf);
        return vl2_err_set(err, VL2_ELIMIT, "vl2: image '%s': larger than %zu bytes "
                           "(the daemon's limit)", path, max);
    }
    *ret_data = buf;
    *ret_size = n;
    return 0;
}

int vl2_cli_image_open(struct vl2_cli_image *img, const char *path, bool send_bytes,
                       size_t max_bytes, struct vl2_err *err)
{
    struct stat st;
    int fd, r;

    memset(img, 0, sizeof(*img));
    img->fd = -1;
    img->exif = -1;
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0)
        return vl2_err_set(err, errno == ENOENT ? VL2_ENOTFOUND : VL2_EIO,
                           "vl2: image '%s': %s", path, strerror(errno));
    if (fstat(fd, &st) < 0) {
        r = vl2_err_set(err, VL2_EIO, "vl2: image '%s': %s", path, strerror(errno));
        goto out_close;
    }
    if (S_ISDIR(st.st_mode)) {
        r = vl2_err_set(err, VL2_EINVAL, "vl2: image '%s': is a directory", path);
        goto out_close;
    }
    img->path = strdup(path);
    if (!img->path) {
        r = vl2_err_set(err, VL2_ENOMEM, "vl2: out of memory");
        goto out_close;
    }
    if (S_ISREG(st.st_mode) && !send_bytes) {
        img->fd = fd;
        img->size = (size_t) st.st_size;
        return 0;
    }
    /* --send-bytes, or a pipe/device the daemon could not re-read */
    r = read_all(fd, path, max_bytes, &img->data, &img->size, err);
    if (r < 0)
        goto out_free;
    (void) close(fd);
    return 0;

out_free:
    free(img->path);
    img->path = NULL;
out_close:
    (void) close(fd);
    return r;
}

void vl2_cli_image_close(struct vl2_cli_image *img)
{
    if (!img)
        return;
    if (img->fd >= 0)
        (void) close(img->fd);
    free(img->data);
    free(img->path);
    memset(img, 0, sizeof(*img));
    img->fd = -1;
}

int vl2_cli_image_read(const struct vl2_cli_image *img, size_t max_bytes, uint8_t **ret_data,
                       size_t *ret_size, struct vl2_err *err)
{
    uint8_t *p;

    if (img->fd >= 0) {
        if (lseek(img->fd, 0, SEEK_SET) < 0)
            return vl2_err_set(err, VL2_EIO, "vl2: image '%s': %s", img->path,
                               strerror(errno));
        return read_all(img->fd, img->path, max_bytes, ret_data, ret_size, err);
    }
    p = malloc(img->size ? img->size : 1);
    if (!p)
        return vl2_err_set(err, VL2_ENOMEM, "vl2: out of memory");
    if (img->size)
        memcpy(p, img->data, img->size);
    *ret_data = p;
    *ret_size = img->size;
    return 0;
}

/* ---- message text ----------------------------------------------------- */

size_t vl2_cli_count_image_tags(const char *text)
{
    size_t n = 0;
    const char *p = text;

    while ((p = strstr(p, "<image>")) != NULL) {
        n++;
        p += 7;
    }
    return n;
}

char *vl2_cli_user_text(const char *cmd, const char *text, size_t n_images)
{
    size_t tags = vl2_cli_count_image_tags(text), len = strlen(text);
    char *out;

    if (tags > 0 && tags != n_images) {
        fprintf(stderr, "vl2 %s: the text has %zu <image> tag%s but %zu image%s given; "
                "give one image per tag, or no tag\n", cmd, tags, tags == 1 ? "" : "s",
                n_images, n_images == 1 ? " is" : "s are");
        return NULL;
    }
    if (tags > 0 || n_images == 0)
        return strdup(text);
    out = malloc(n_images * 8 + len + 1);
    if (!out)
        return NULL;
    for (size_t i = 0; i < n_images; i++)
        memcpy(out + i * 8, "<image>\n", 8);
    memcpy(out + n_images * 8, text, len + 1);
    return out;
}

/* fake-daemon.c - see fake-daemon.h. */
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
#include <unistd.h>

#include "fake-daemon.h"
#include "ipc.h"

uint64_t fake_fnv(const void *p, size_t n)
{
    const uint8_t *b = p;
    uint64_t h = 0xcbf29ce484222325ull;

    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

struct conn {
    int fd;
    FILE *log;
    const struct fake_script *s;
    struct vl2_ipc_reader rd;
    struct vl2_ipc_writer wr;
};

static void send_resp(struct conn *c, Vl2__Response *resp)
{
    if (vl2_ipc_writer_queue_msg(&c->wr, &resp->base, NULL, 0, NULL) < 0)
        return;
    while (vl2_ipc_writer_flush(&c->wr, c->fd, NULL) == 0) {
        struct pollfd p = { .fd = c->fd, .events = POLLOUT };
        (void) poll(&p, 1, 1000);
    }
}

static void log_line(struct conn *c, cJSON *o)
{
    char *s = cJSON_PrintUnformatted(o);

    if (s) {
        fprintf(c->log, "%s\n", s);
        fflush(c->log);
        cJSON_free(s);
    }
    cJSON_Delete(o);
}

static void hexstr(char *buf, uint64_t v)
{
    snprintf(buf, 17, "%016llx", (unsigned long long) v);
}

/* Read a received image descriptor from its current offset, as a naive
 * daemon would (so a client that does not rewind shows up). */
static void log_fd_image(cJSON *io, int fd)
{
    struct stat st;
    off_t off = lseek(fd, 0, SEEK_CUR);
    uint8_t *buf;
    size_t n = 0, cap = 1 << 16;
    char hex[17];

    cJSON_AddStringToObject(io, "kind", "fd");
    cJSON_AddNumberToObject(io, "offset", (double) off);
    cJSON_AddBoolToObject(io, "regular", fstat(fd, &st) == 0 && S_ISREG(st.st_mode));
    cJSON_AddBoolToObject(io, "writable", (fcntl(fd, F_GETFL) & O_ACCMODE) != O_RDONLY);
    buf = malloc(cap);
    while (buf) {
        ssize_t got = read(fd, buf + n, cap - n);
        if (got <= 0)
            break;
        n += (size_t) got;
        if (n == cap) {
            uint8_t *p = realloc(buf, cap * 2);
            if (!p)
                break;
            buf = p;
            cap *= 2;
        }
    }
    cJSON_AddNumberToObject(io, "size", (double) n);
    hexstr(hex, fake_fnv(buf, n));
    cJSON_AddStringToObject(io, "fnv", hex);
    free(buf);
}

static void on_generate(struct conn *c, const Vl2__Request *req, const struct vl2_ipc_frame *f)
{
    const Vl2__Generate *g = req->generate;
    const struct fake_script *s = c->s;
    Vl2__Response resp = VL2__RESPONSE__INIT;
    cJSON *o = cJSON_CreateObject(), *msgs, *sp;
    char answer[32];

    cJSON_AddStringToObject(o, "type", "generate");
    cJSON_AddNumberToObject(o, "id", (double) req->id);
    cJSON_AddStringToObject(o, "model", g->model ? g->model : "");
    cJSON_AddBoolToObject(o, "grounding", g->has_grounding && g->grounding);
    cJSON_AddBoolToObject(o, "stream", !g->has_stream || g->stream);
    cJSON_AddNumberToObject(o, "n_fds", (double) f->n_fds);
    msgs = cJSON_AddArrayToObject(o, "messages");
    for (size_t i = 0; i < g->n_messages; i++) {
        const Vl2__Message *m = g->messages[i];
        cJSON *mo = cJSON_CreateObject(), *imgs;

        cJSON_AddNumberToObject(mo, "role", m->role);
        cJSON_AddStringToObject(mo, "text", m->text ? m->text : "");
        imgs = cJSON_AddArrayToObject(mo, "images");
        for (size_t k = 0; k < m->n_images; k++) {
            const Vl2__Image *im = m->images[k];
            cJSON *io = cJSON_CreateObject();

            if (im->has_apply_exif)
                cJSON_AddBoolToObject(io, "apply_exif", im->apply_exif);
            if (im->source_case == VL2__IMAGE__SOURCE_FD_INDEX) {
                cJSON_AddNumberToObject(io, "fd_index", im->fd_index);
                if (im->fd_index < f->n_fds)
                    log_fd_image(io, f->fds[im->fd_index]);
            } else if (im->source_case == VL2__IMAGE__SOURCE_DATA) {
                char hex[17];

                cJSON_AddStringToObject(io, "kind", "data");
                cJSON_AddNumberToObject(io, "size", (double) im->data.len);
                hexstr(hex, fake_fnv(im->data.data, im->data.len));
                cJSON_AddStringToObject(io, "fnv", hex);
            }
            cJSON_AddItemToArray(imgs, io);
        }
        cJSON_AddItemToArray(msgs, mo);
    }
    sp = cJSON_AddObjectToObject(o, "sampling");
    if (g->sampling) {
        const Vl2__Sampling *p = g->sampling;
        cJSON *stops = cJSON_AddArrayToObject(sp, "stop");

        if (p->has_max_new_tokens)
            cJSON_AddNumberToObject(sp, "max_new_tokens", p->max_new_tokens);
        if (p->has_temperature)
            cJSON_AddNumberToObject(sp, "temperature", p->temperature);
        if (p->has_top_p)
            cJSON_AddNumberToObject(sp, "top_p", p->top_p);
        if (p->has_top_k)
            cJSON_AddNumberToObject(sp, "top_k", p->top_k);
        if (p->has_repetition_penalty)
            cJSON_AddNumberToObject(sp, "repetition_penalty", p->repetition_penalty);
        if (p->has_seed)
            cJSON_AddNumberToObject(sp, "seed", (double) p->seed);
        if (p->has_ignore_eos)
            cJSON_AddBoolToObject(sp, "ignore_eos", p->ignore_eos);
        for (size_t i = 0; i < p->n_stop; i++)
            cJSON_AddItemToArray(stops, cJSON_CreateString(p->stop[i]));
    }
    log_line(c, o);

    resp.has_id = 1;
    resp.id = req->id;
    {
        Vl2__Accepted acc = VL2__ACCEPTED__INIT;
        acc.has_queue_position = 1;
        acc.queue_position = 0;
        resp.body_case = VL2__RESPONSE__BODY_ACCEPTED;
        resp.accepted = &acc;
        send_resp(c, &resp);
    }
    if (s->wait_cancel) {
        /* the test interrupts the client now */
        cJSON *w = cJSON_CreateObject();
        cJSON_AddStringToObject(w, "type", "waiting");
        log_line(c, w);
        return;   /* the Cancel arrives as a request: on_cancel answers */
    }
    for (int st = VL2__STAGE__STAGE_TILING; st <= VL2__STAGE__STAGE_PREFILL; st++) {
        Vl2__Progress pr = VL2__PROGRESS__INIT;
        pr.has_stage = 1;
        pr.stage = (Vl2__Stage) st;
        pr.has_fraction = 1;
        pr.fraction = 1.0f;
        resp.body_case = VL2__RESPONSE__BODY_PROGRESS;
        resp.progress = &pr;
        send_resp(c, &resp);
    }
    if (s->error_code < 0) {
        Vl2__Error e = VL2__ERROR__INIT;
        e.has_code = 1;
        e.code = s->error_code;
        e.message = (char *) (s->error_msg ? s->error_msg : "");
        resp.body_case = VL2__RESPONSE__BODY_ERROR;
        resp.error = &e;
        send_resp(c, &resp);
        return;
    }
    size_t n_pieces = s->n_pieces;
    if (s->echo) {
        snprintf(answer, sizeof(answer), "answer%zu", g->n_messages);
        n_pieces = 1;
    }
    for (size_t i = 0; i < n_pieces; i++) {
        Vl2__Token t = VL2__TOKEN__INIT;
        const char *p = s->echo ? answer : s->pieces[i];
        t.has_text = 1;
        t.text.data = (uint8_t *) p;
        t.text.len = strlen(p);
        t.has_id = 1;
        t.id = s->echo ? 7 : s->ids[i];
        resp.body_case = VL2__RESPONSE__BODY_TOKEN;
        resp.token = &t;
        send_resp(c, &resp);
    }
    {
        Vl2__Done d = VL2__DONE__INIT;
        Vl2__Box boxes[FAKE_MAX], *bp[FAKE_MAX];

        d.has_finish_reason = 1;
        d.finish_reason = VL2__FINISH_REASON__FINISH_EOS;
        d.has_prompt_tokens = 1;
        d.prompt_tokens = 432;
        d.has_image_tokens = 1;
        d.image_tokens = 421;
        d.has_generated_tokens = 1;
        d.generated_tokens = (uint32_t) n_pieces;
        d.has_time_to_first_token_s = 1;
        d.time_to_first_token_s = 0.25;
        d.has_decode_tokens_per_s = 1;
        d.decode_tokens_per_s = 40.0;
        for (size_t i = 0; i < s->n_boxes; i++) {
            vl2__box__init(&boxes[i]);
            boxes[i].label = (char *) s->boxes[i].label;
            boxes[i].has_x1 = boxes[i].has_y1 = boxes[i].has_x2 = boxes[i].has_y2 = 1;
            boxes[i].x1 = s->boxes[i].x1;
            boxes[i].y1 = s->boxes[i].y1;
            boxes[i].x2 = s->boxes[i].x2;
            boxes[i].y2 = s->boxes[i].y2;
            boxes[i].has_image_index = 1;
            boxes[i].image_index = 0;
            bp[i] = &boxes[i];
        }
        d.n_boxes = s->n_boxes;
        d.boxes = bp;
        resp.body_case = VL2__RESPONSE__BODY_DONE;
        resp.done = &d;
        send_resp(c, &resp);
    }
}

static void on_request(struct conn *c, const Vl2__Request *req, const struct vl2_ipc_frame *f,
                       uint64_t *waiting_id)
{
    Vl2__Response resp = VL2__RESPONSE__INIT;
    cJSON *o;

    resp.has_id = 1;
    resp.id = req->id;
    switch (req->body_case) {
    case VL2__REQUEST__BODY_HELLO: {
        Vl2__HelloReply h = VL2__HELLO_REPLY__INIT;
        h.has_protocol_version = 1;
        h.protocol_version = VL2_IPC_PROTOCOL_VERSION;
        h.server_version = (char *) "fake";
        h.has_max_frame_size = 1;
        h.max_frame_size = VL2_IPC_MAX_FRAME_DEFAULT;
        h.has_max_fds = 1;
        h.max_fds = VL2_IPC_MAX_FDS;
        resp.body_case = VL2__RESPONSE__BODY_HELLO;
        resp.hello = &h;
        send_resp(c, &resp);
        break;
    }
    case VL2__REQUEST__BODY_GENERATE:
        on_generate(c, req, f);
        if (c->s->wait_cancel)
            *waiting_id = req->id;
        break;
    case VL2__REQUEST__BODY_CANCEL: {
        Vl2__Ack ack = VL2__ACK__INIT;
        Vl2__Error e = VL2__ERROR__INIT;

        o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "type", "cancel");
        cJSON_AddNumberToObject(o, "target_id", (double) req->cancel->target_id);
        log_line(c, o);
        resp.body_case = VL2__RESPONSE__BODY_ACK;
        resp.ack = &ack;
        send_resp(c, &resp);
        if (*waiting_id && req->cancel->target_id == *waiting_id) {
            resp.id = *waiting_id;
            e.has_code = 1;
            e.code = VL2_ECANCELED;
            e.message = (char *) "canceled by the client";
            resp.body_case = VL2__RESPONSE__BODY_ERROR;
            resp.error = &e;
            send_resp(c, &resp);
            *waiting_id = 0;
        }
        break;
    }
    case VL2__REQUEST__BODY_LOAD_MODEL: {
        const Vl2__LoadModel *lm = req->load_model;
        Vl2__Accepted acc = VL2__ACCEPTED__INIT;
        Vl2__ModelLoaded ml = VL2__MODEL_LOADED__INIT;
        Vl2__ModelInfo mi = VL2__MODEL_INFO__INIT;

        o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "type", "load");
        cJSON_AddStringToObject(o, "name", lm->name ? lm->name : "");
        cJSON_AddStringToObject(o, "dir", lm->dir ? lm->dir : "");
        cJSON_AddStringToObject(o, "backend", lm->backend ? lm->backend : "");
        cJSON_AddBoolToObject(o, "progress", lm->has_progress && lm->progress);
        log_line(c, o);
        if (lm->name && !strcmp(lm->name, "bad")) {
            Vl2__Error e = VL2__ERROR__INIT;
            e.has_code = 1;
            e.code = VL2_EFORMAT;
            e.message = (char *) "weights: 'config.json': missing";
            resp.body_case = VL2__RESPONSE__BODY_ERROR;
            resp.error = &e;
            send_resp(c, &resp);
            break;
        }
        resp.body_case = VL2__RESPONSE__BODY_ACCEPTED;
        resp.accepted = &acc;
        send_resp(c, &resp);
        if (lm->has_progress && lm->progress) {
            for (int k = 1; k <= 2; k++) {
                Vl2__Progress pr = VL2__PROGRESS__INIT;
                pr.has_stage = 1;
                pr.stage = VL2__STAGE__STAGE_LOADING;
                pr.has_fraction = 1;
                pr.fraction = 0.5f * (float) k;
                resp.body_case = VL2__RESPONSE__BODY_PROGRESS;
                resp.progress = &pr;
                send_resp(c, &resp);
            }
        }
        mi.name = lm->name;
        mi.dir = lm->dir;
        mi.has_state = 1;
        mi.state = VL2__MODEL_STATE__MODEL_STATE_READY;
        mi.has_memory_bytes = 1;
        mi.memory_bytes = 3u << 20;
        mi.backend = (char *) "cpu";
        ml.model = &mi;
        ml.has_load_s = 1;
        ml.load_s = 0.25;
        resp.body_case = VL2__RESPONSE__BODY_LOADED;
        resp.loaded = &ml;
        send_resp(c, &resp);
        break;
    }
    case VL2__REQUEST__BODY_UNLOAD_MODEL: {
        Vl2__Ack ack = VL2__ACK__INIT;
        Vl2__Error e = VL2__ERROR__INIT;
        const char *name = req->unload_model->name ? req->unload_model->name : "";

        o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "type", "unload");
        cJSON_AddStringToObject(o, "name", name);
        log_line(c, o);
        if (!strcmp(name, "missing")) {
            e.has_code = 1;
            e.code = VL2_ENOTFOUND;
            e.message = (char *) "no model 'missing'";
            resp.body_case = VL2__RESPONSE__BODY_ERROR;
            resp.error = &e;
        } else {
            resp.body_case = VL2__RESPONSE__BODY_ACK;
            resp.ack = &ack;
        }
        send_resp(c, &resp);
        break;
    }
    default: {
        Vl2__Error e = VL2__ERROR__INIT;
        e.has_code = 1;
        e.code = VL2_EUNIMPLEMENTED;
        e.message = (char *) "not in the fake";
        resp.body_case = VL2__RESPONSE__BODY_ERROR;
        resp.error = &e;
        send_resp(c, &resp);
        break;
    }
    }
}

static void serve(int lfd, FILE *log, const struct fake_script *s)
{
    for (;;) {
        struct conn c = { .log = log, .s = s };
        uint64_t waiting_id = 0;

        c.fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (c.fd < 0) {
            if (errno == EINTR)
                continue;
            _exit(3);
        }
        vl2_ipc_reader_init(&c.rd, 0);
        vl2_ipc_writer_init(&c.wr, 0, 0);
        for (;;) {
            struct vl2_ipc_frame f = { 0 };
            Vl2__Request *req;
            int r = vl2_ipc_reader_read(&c.rd, c.fd, NULL);

            if (r == VL2_IPC_AGAIN) {
                struct pollfd p = { .fd = c.fd, .events = POLLIN };
                (void) poll(&p, 1, 1000);
                continue;
            }
            if (r != VL2_IPC_FRAME)
                break;
            vl2_ipc_reader_take(&c.rd, &f);
            req = vl2_ipc_request_decode(f.payload, f.size, NULL);
            if (req) {
                on_request(&c, req, &f, &waiting_id);
                vl2__request__free_unpacked(req, NULL);
            }
            vl2_ipc_frame_done(&f);
        }
        vl2_ipc_reader_done(&c.rd);
        vl2_ipc_writer_done(&c.wr);
        (void) close(c.fd);
    }
}

pid_t fake_daemon_start(const char *socket_path, const char *log_path,
                        const struct fake_script *s)
{
    struct sockaddr_un sa;
    int len = vl2_ipc_sockaddr(socket_path, &sa, NULL), lfd;
    pid_t pid;

    if (len < 0)
        return -1;
    (void) unlink(socket_path);
    lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (lfd < 0)
        return -1;
    if (bind(lfd, (struct sockaddr *) &sa, (socklen_t) len) < 0 || listen(lfd, 8) < 0) {
        (void) close(lfd);
        return -1;
    }
    pid = fork();
    if (pid < 0) {
        (void) close(lfd);
        return -1;
    }
    if (pid == 0) {
        FILE *log = fopen(log_path, "a");

        signal(SIGPIPE, SIG_IGN);
        if (!log)
            _exit(2);
        serve(lfd, log, s);
        _exit(0);
    }
    (void) close(lfd);
    return pid;
}

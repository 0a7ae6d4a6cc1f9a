/* cmd_ask.c - `vl2 ask` (one question, streamed answer) and `vl2 chat`
 * (a conversation on the terminal or from a pipe). */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "gen-args.h"

/* ---- argument parsing shared by ask, chat and ground ------------------ */

int vl2_cli_gen_args_parse(struct vl2_cli_gen_args *a, const char *cmd, unsigned allow,
                           int argc, char **argv, void (*usage)(FILE *f))
{
    bool dashdash = false;

    memset(a, 0, sizeof(*a));
    a->exif = -1;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        const char *val = NULL;
        int r;

        if (dashdash || arg[0] != '-' || !arg[1]) {
            if (a->n_words == VL2_CLI_MAX_WORDS) {
                fprintf(stderr, "vl2 %s: too many arguments\n", cmd);
                return 2;
            }
            a->words[a->n_words++] = arg;
            continue;
        }
        if (!strcmp(arg, "--")) {
            dashdash = true;
            continue;
        }
        if (!strcmp(arg, "--help") || !strcmp(arg, "-h")) {
            usage(stdout);
            return 1;
        }
        if (!strcmp(arg, "--send-bytes") && (allow & GEN_ALLOW_IMAGES)) {
            a->send_bytes = true;
            continue;
        }
        if ((!strcmp(arg, "--exif") || !strcmp(arg, "--no-exif")) &&
            (allow & GEN_ALLOW_IMAGES)) {
            a->exif = arg[2] != 'n';
            continue;
        }
        if (!strcmp(arg, "--grounding") && (allow & GEN_ALLOW_GROUNDING)) {
            a->grounding = true;
            continue;
        }
        r = vl2_cli_sampling_arg(&a->s, cmd, argc, argv, &i);
        if (r < 0)
            return 2;
        if (r > 0)
            continue;
        /* options with a value: -m MODEL, --model MODEL, --model=MODEL */
        {
            static const struct { const char *s, *l; unsigned allow; } opts[] = {
                { "-m", "--model", 0 },
                { "-i", "--image", GEN_ALLOW_IMAGES },
                { "-o", "--output", GEN_ALLOW_OUTPUT },
            };
            size_t k, n = 0;

            for (k = 0; k < 3; k++) {
                n = strlen(opts[k].l);
                if (opts[k].allow && !(allow & opts[k].allow))
                    continue;
                if (!strcmp(arg, opts[k].s) || !strcmp(arg, opts[k].l))
                    break;
                if (!strncmp(arg, opts[k].l, n) && arg[n] == '=') {
                    val = arg + n + 1;
                    break;
                }
            }
            if (k == 3) {
                fprintf(stderr, "vl2 %s: unknown option '%s'; try 'vl2 %s --help'\n", cmd, arg,
                        cmd);
                return 2;
            }
            if (!val) {
                if (i + 1 >= argc) {
                    fprintf(stderr, "vl2 %s: %s needs a value\n", cmd, opts[k].l);
                    return 2;
                }
                val = argv[++i];
            }
            if (!val[0]) {
                fprintf(stderr, "vl2 %s: %s needs a non-empty value\n", cmd, opts[k].l);
                return 2;
            }
            if (k == 0) {
                a->model = val;
            } else if (k == 1) {
                if (a->n_images == VL2_CLI_MAX_IMAGES) {
                    fprintf(stderr, "vl2 %s: more than %d images\n", cmd, VL2_CLI_MAX_IMAGES);
                    return 2;
                }
                a->images[a->n_images++] = val;
            } else {
                a->output = val;
            }
        }
    }
    return 0;
}

int vl2_cli_open_images(struct vl2_client *c, const struct vl2_cli *cli,
                        const struct vl2_cli_gen_args *a, struct vl2_cli_image *out)
{
    const Vl2__HelloReply *h = vl2_client_hello(c);
    size_t max = h && h->max_frame_size ? h->max_frame_size : 64u << 20;
    struct vl2_err err = { 0 };

    for (size_t i = 0; i < a->n_images; i++) {
        if (vl2_cli_image_open(&out[i], a->images[i], a->send_bytes, max, &err) < 0) {
            while (i > 0)
                vl2_cli_image_close(&out[--i]);
            return vl2_cli_fail(cli, &err);
        }
        out[i].exif = a->exif;
    }
    return 0;
}

/* Read all of stdin into a string (for `vl2 ask -`). */
static char *read_stdin(void)
{
    size_t n = 0, cap = 4096;
    char *s = malloc(cap);

    while (s) {
        size_t got;

        if (n + 1 >= cap) {
            char *t = realloc(s, cap * 2);
            if (!t)
                break;
            s = t;
            cap *= 2;
        }
        got = fread(s + n, 1, cap - n - 1, stdin);
        n += got;
        if (got == 0) {
            s[n] = '\0';
            return s;
        }
    }
    free(s);
    return NULL;
}

/* ---- ask -------------------------------------------------------------- */

static void ask_usage(FILE *f)
{
    fprintf(f, "usage: vl2 ask [-m MODEL] [-i IMAGE]... [options] PROMPT...\n"
               "\n"
               "Ask one question and stream the answer to standard output.  The words of\n"
               "PROMPT are joined with spaces; '-' reads the prompt from standard input.\n"
               "Images go where <image> appears in the prompt, in order; a prompt without\n"
               "any <image> gets one \"<image>\\n\" per image in front.\n"
               "\n"
               "  -m, --model MODEL         a model the daemon serves (default: its default)\n"
               "  -i, --image FILE          JPEG, PNG or WebP (repeatable); opened by vl2 and\n"
               "                            passed to the daemon as a file descriptor\n"
               "  --send-bytes              send the images' bytes instead of descriptors\n"
               "  --exif, --no-exif         apply (or ignore) the images' EXIF orientation tag\n"
               "                            (default: the daemon's setting, apply_exif)\n"
               "  --grounding               ask the daemon for the boxes of <|ref|>/<|det|>\n"
               "                            in the answer (for prompts starting with\n"
               "                            <|grounding|>); printed after the answer as\n"
               "                            'x1 y1 x2 y2 label' lines, pixels of the last image\n"
               "%s"
               "  --json                    one JSON object per line and per event\n"
               "                            (accepted, progress, token, done, error)\n"
               "  --socket PATH, --timeout SECONDS   as for every command\n"
               "\n"
               "Progress (tiling, vision, prefill) shows on standard error on a terminal.\n"
               "Ctrl-C cancels the request.\n",
            vl2_cli_sampling_help);
}

int vl2_cmd_ask(const struct vl2_cli *cli, int argc, char **argv)
{
    struct vl2_cli_gen_args a;
    struct vl2_cli_image images[VL2_CLI_MAX_IMAGES];
    struct vl2_cli_image *img_ptrs[VL2_CLI_MAX_IMAGES];
    struct vl2_cli_stream_opts so = { .print_text = true, .json_done = true };
    struct vl2_cli_result res = { 0 };
    struct vl2_cli_turn turn = { .role = VL2__ROLE__ROLE_USER };
    struct vl2_err err = { 0 };
    struct vl2_client *c;
    char *prompt = NULL;
    size_t len = 0;
    int r, rc = 1;

    r = vl2_cli_gen_args_parse(&a, "ask", GEN_ALLOW_IMAGES | GEN_ALLOW_GROUNDING, argc, argv,
                               ask_usage);
    if (r != 0)
        return r == 1 ? 0 : r;
    if (a.n_words == 0) {
        fprintf(stderr, "vl2 ask: a PROMPT is required; try 'vl2 ask --help'\n");
        return 2;
    }
    if (a.n_words == 1 && !strcmp(a.words[0], "-")) {
        prompt = read_stdin();
    } else {
        for (size_t i = 0; i < a.n_words; i++)
            len += strlen(a.words[i]) + 1;
        prompt = malloc(len + 1);
        if (prompt) {
            prompt[0] = '\0';
            for (size_t i = 0; i < a.n_words; i++) {
                if (i)
                    strcat(prompt, " ");
                strcat(prompt, a.words[i]);
            }
        }
    }
    if (!prompt) {
        fprintf(stderr, "vl2 ask: out of memory\n");
        return 1;
    }
    if (!prompt[0]) {
        fprintf(stderr, "vl2 ask: the prompt is empty\n");
        free(prompt);
        return 2;
    }
    turn.text = vl2_cli_user_text("ask", prompt, a.n_images);
    free(prompt);
    if (!turn.text)
        return 2;

    c = vl2_cli_connect(cli);
    if (!c)
        goto out_text;
    if (vl2_cli_open_images(c, cli, &a, images) != 0)
        goto out_close;
    for (size_t i = 0; i < a.n_images; i++)
        img_ptrs[i] = &images[i];
    turn.images = img_ptrs;
    turn.n_images = a.n_images;

    so.grounding = a.grounding;
    r = vl2_cli_generate(c, cli, a.model, &a.s, &turn, 1, &so, &res, &err);
    if (!cli->json && res.len && res.text[res.len - 1] != '\n')
        fputc('\n', stdout);
    if (!cli->json && r == 0)
        vl2_cli_print_boxes(stdout, res.boxes, res.n_boxes);
    fflush(stdout);
    if (r < 0)
        (void) vl2_cli_fail(cli, &err);
    else
        rc = 0;
    vl2_cli_result_done(&res);
    for (size_t i = 0; i < a.n_images; i++)
        vl2_cli_image_close(&images[i]);
out_close:
    vl2_client_close(c);
out_text:
    free(turn.text);
    return rc;
}

/* ---- chat ------------------------------------------------------------- */

#define EOS_TEXT "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"

struct chat {
    struct vl2_cli_turn *turns;
    size_t n_turns, cap_turns;
    struct vl2_cli_image **images;     /* every image of the conversation, owned */
    size_t n_images, cap_images;
    size_t n_pending;                  /* the last n_pending images wait for the next turn */
};

static void chat_reset(struct chat *ch)
{
    for (size_t i = 0; i < ch->n_turns; i++)
        free(ch->turns[i].text);
    for (size_t i = 0; i < ch->n_images; i++) {
        vl2_cli_image_close(ch->images[i]);
        free(ch->images[i]);
    }
    ch->n_turns = 0;
    ch->n_images = 0;
    ch->n_pending = 0;
}

static void chat_free(struct chat *ch)
{
    chat_reset(ch);
    free(ch->turns);
    free(ch->images);
}

static int chat_add_turn(struct chat *ch, Vl2__Role role, char *text, size_t n_images)
{
    if (ch->n_turns == ch->cap_turns) {
        size_t cap = ch->cap_turns ? ch->cap_turns * 2 : 8;
        struct vl2_cli_turn *t = realloc(ch->turns, cap * sizeof(*t));

        if (!t)
            return VL2_ENOMEM;
        ch->turns = t;
        ch->cap_turns = cap;
    }
    ch->turns[ch->n_turns++] = (struct vl2_cli_turn) {
        .role = role, .text = text,
        .images = n_images ? &ch->images[ch->n_images - n_images] : NULL,
        .n_images = n_images,
    };
    return 0;
}

static void chat_usage(FILE *f)
{
    fprintf(f, "usage: vl2 chat [-m MODEL] [options]\n"
               "\n"
               "A conversation: each line read from standard input is a user turn; the\n"
               "whole conversation so far is sent each turn and the answer streams to\n"
               "standard output.  Works on a terminal and with a pipe.  Commands:\n"
               "  /image PATH   attach an image to the next user turn (repeatable)\n"
               "  /reset        forget the conversation\n"
               "  /quit         leave (end of input does too)\n"
               "  /help         this list\n"
               "A line starting with '//' sends the text after the first '/'.\n"
               "\n"
               "  -m, --model MODEL         a model the daemon serves (default: its default)\n"
               "  --send-bytes              send images' bytes instead of descriptors\n"
               "  --exif, --no-exif         apply (or ignore) the images' EXIF orientation tag\n"
               "                            (default: the daemon's setting, apply_exif)\n"
               "  --grounding               boxes of <|ref|>/<|det|> in answers, printed after\n"
               "                            each as 'x1 y1 x2 y2 label' lines\n"
               "%s"
               "  --json                    one JSON object per line and per event\n"
               "  --socket PATH, --timeout SECONDS   as for every command\n",
            vl2_cli_sampling_help);
}

static void chat_note(bool interactive, const char *fmt, const char *arg)
{
    if (!interactive)
        return;
    fprintf(stderr, fmt, arg);
    fputc('\n', stderr);
}

int vl2_cmd_chat(const struct vl2_cli *cli, int argc, char **argv)
{
    struct vl2_cli_gen_args a;
    struct chat ch = { 0 };
    struct vl2_cli_stream_opts so = { .print_text = true, .json_done = true };
    struct vl2_client *c;
    bool interactive = isatty(STDIN_FILENO) && isatty(STDERR_FILENO) && !cli->json;
    const Vl2__HelloReply *h;
    size_t max_bytes;
    char *line = NULL;
    size_t line_cap = 0;
    int r, failures = 0;

    r = vl2_cli_gen_args_parse(&a, "chat", GEN_ALLOW_IMAGES | GEN_ALLOW_GROUNDING, argc, argv,
                               chat_usage);
    if (r != 0)
        return r == 1 ? 0 : r;
    if (a.n_words > 0) {
        fprintf(stderr, "vl2 chat: unexpected argument '%s'; the conversation comes from "
                "standard input\n", a.words[0]);
        return 2;
    }
    if (a.n_images > 0) {
        fprintf(stderr, "vl2 chat: attach images with '/image PATH' in the conversation\n");
        return 2;
    }
    c = vl2_cli_connect(cli);
    if (!c)
        return 1;
    h = vl2_client_hello(c);
    max_bytes = h && h->max_frame_size ? h->max_frame_size : 64u << 20;
    if (interactive)
        fprintf(stderr, "vl2 chat with vl2d at '%s'; /help for commands, /quit or Ctrl-D to "
                "leave\n", vl2_client_socket(c));

    for (;;) {
        struct vl2_cli_result res = { 0 };
        struct vl2_err err = { 0 };
        ssize_t n;
        char *text, *user;

        if (interactive) {
            fputs("> ", stderr);
            fflush(stderr);
        }
        n = getline(&line, &line_cap, stdin);
        if (n < 0)
            break;
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
            line[--n] = '\0';
        text = line;
        if (line[0] == '/' && line[1] != '/') {
            if (!strcmp(line, "/quit") || !strcmp(line, "/exit"))
                break;
            if (!strcmp(line, "/reset")) {
                chat_reset(&ch);
                chat_note(interactive, "(conversation cleared)%s", "");
                continue;
            }
            if (!strcmp(line, "/help")) {
                fputs("/image PATH  attach an image to the next turn\n"
                      "/reset       forget the conversation\n"
                      "/quit        leave\n", stderr);
                continue;
            }
            if (!strncmp(line, "/image", 6) && (line[6] == ' ' || line[6] == '\0')) {
                const char *path = line + 6;
                struct vl2_cli_image *im;

                while (*path == ' ')
                    path++;
                if (!*path) {
                    fprintf(stderr, "vl2 chat: /image needs a PATH\n");
                    failures++;
                    continue;
                }
                if (ch.n_images == ch.cap_images) {
                    size_t cap = ch.cap_images ? ch.cap_images * 2 : 8;
                    struct vl2_cli_image **p = realloc(ch.images, cap * sizeof(*p));

                    if (!p) {
                        fprintf(stderr, "vl2 chat: out of memory\n");
                        failures++;
                        break;
                    }
                    ch.images = p;
                    ch.cap_images = cap;
                }
                im = calloc(1, sizeof(*im));
                if (!im || vl2_cli_image_open(im, path, a.send_bytes, max_bytes, &err) < 0) {
                    if (!im)
                        vl2_err_set(&err, VL2_ENOMEM, "vl2 chat: out of memory");
                    free(im);
                    (void) vl2_cli_fail(cli, &err);
                    failures++;
                    continue;
                }
                ch.images[ch.n_images++] = im;
                ch.n_pending++;
                chat_note(interactive, "(image '%s' attached to your next message)", path);
                continue;
            }
            fprintf(stderr, "vl2 chat: unknown command '%s'; /help lists them\n", line);
            failures++;
            continue;
        }
        if (line[0] == '/')
            text = line + 1;   /* "//..." sends "/..." */
        if (!text[0] && ch.n_pending == 0)
            continue;
        user = vl2_cli_user_text("chat", text, ch.n_pending);
        if (!user) {
            failures++;
            continue;
        }
        if (chat_add_turn(&ch, VL2__ROLE__ROLE_USER, user, ch.n_pending) < 0) {
            free(user);
            fprintf(stderr, "vl2 chat: out of memory\n");
            failures++;
            break;
        }
        so.grounding = a.grounding;
        r = vl2_cli_generate(c, cli, a.model, &a.s, ch.turns, ch.n_turns, &so, &res, &err);
        if (!cli->json && res.len && res.text[res.len - 1] != '\n')
            fputc('\n', stdout);
        if (!cli->json && r == 0)
            vl2_cli_print_boxes(stdout, res.boxes, res.n_boxes);
        fflush(stdout);
        if (r < 0) {
            /* the turn did not happen: forget it, keep its images pending */
            free(ch.turns[--ch.n_turns].text);
            (void) vl2_cli_fail(cli, &err);
            vl2_cli_result_done(&res);
            failures++;
            if (r == VL2_EIO || r == VL2_ETIMEDOUT || vl2_cli_interrupted())
                break;   /* the connection is gone, or the user wants out */
            continue;
        }
        ch.n_pending = 0;
        /* the answer joins the history without the end-of-sentence marker,
         * which the conversation format adds itself */
        if (res.len >= sizeof(EOS_TEXT) - 1 &&
            !memcmp(res.text + res.len - (sizeof(EOS_TEXT) - 1), EOS_TEXT, sizeof(EOS_TEXT) - 1))
            res.text[res.len - (sizeof(EOS_TEXT) - 1)] = '\0';
        if (chat_add_turn(&ch, VL2__ROLE__ROLE_ASSISTANT, res.text, 0) < 0) {
            fprintf(stderr, "vl2 chat: out of memory\n");
            vl2_cli_result_done(&res);
            failures++;
            break;
        }
        res.text = NULL;   /* now owned by the history */
        vl2_cli_result_done(&res);
    }
    free(line);
    chat_free(&ch);
    vl2_client_close(c);
    return failures ? 1 : 0;
}

/* cmd_ground.c - `vl2 ground`: ask where PHRASE is in an image, print the
 * boxes, and draw them on a copy of the image. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "gen-args.h"
#include "grounding.h"
#include "image.h"

static void ground_usage(FILE *f)
{
    fprintf(f, "usage: vl2 ground [-m MODEL] -i IMAGE [-o OUT.png] [options] PHRASE...\n"
               "\n"
               "Ask where PHRASE is in IMAGE (the referring prompt\n"
               "\"<image>\\n<|ref|>PHRASE<|/ref|>.\" with grounding on) and print one line\n"
               "per box: x1 y1 x2 y2 label, in pixels of the image (top-left, bottom-right).\n"
               "\n"
               "  -i, --image FILE          the image (JPEG, PNG or WebP)\n"
               "  -o, --output OUT.png      also draw the boxes, labelled, on a copy of the\n"
               "                            image and save it as PNG\n"
               "  -m, --model MODEL         a model the daemon serves (default: its default)\n"
               "  --send-bytes              send the image's bytes instead of a descriptor\n"
               "  --no-exif                 ignore the image's EXIF orientation tag (default:\n"
               "                            apply it; the boxes and the drawing use the same\n"
               "                            orientation as the daemon, which is told so)\n"
               "%s"
               "  --json                    one JSON object per line and per event; the\n"
               "                            done event carries the boxes\n"
               "  --socket PATH, --timeout SECONDS   as for every command\n",
            vl2_cli_sampling_help);
}

/* Decode the image as the daemon sees it: ground always tells the daemon
 * whether to apply the EXIF orientation (im->exif), so both agree. */
static int decode_local(const struct vl2_cli_image *im, size_t max_bytes, struct vl2_image *out,
                        struct vl2_err *err)
{
    struct vl2_image_limits lim = vl2_image_default_limits();
    uint8_t *data = NULL;
    size_t size = 0;
    int r;

    r = vl2_cli_image_read(im, max_bytes, &data, &size, err);
    if (r < 0)
        return r;
    lim.apply_exif = im->exif != 0;
    if (lim.max_bytes < size)
        lim.max_bytes = size;
    r = vl2_image_decode(out, data, size, &lim, err);
    free(data);
    if (r < 0)
        vl2_err_prefix(err, r, "vl2 ground: cannot draw on the image");
    return r;
}

int vl2_cmd_ground(const struct vl2_cli *cli, int argc, char **argv)
{
    struct vl2_cli_gen_args a;
    struct vl2_cli_image image;
    struct vl2_cli_image *img_ptr = &image;
    struct vl2_cli_stream_opts so = { .print_text = false, .json_done = false,
                                      .grounding = true };
    struct vl2_cli_result res = { 0 };
    struct vl2_cli_turn turn = { .role = VL2__ROLE__ROLE_USER, .images = &img_ptr,
                                 .n_images = 1 };
    struct vl2_image pix = { 0 };
    struct vl2_err err = { 0 };
    struct vl2_box *boxes = NULL, *parsed = NULL;
    const uint32_t *box_image = NULL;
    size_t n_boxes = 0, n_parsed = 0, len = 0, max_bytes;
    const Vl2__HelloReply *h;
    struct vl2_client *c;
    char *phrase;
    int r, rc = 1;

    r = vl2_cli_gen_args_parse(&a, "ground", GEN_ALLOW_IMAGES | GEN_ALLOW_OUTPUT, argc, argv,
                               ground_usage);
    if (r != 0)
        return r == 1 ? 0 : r;
    if (a.n_images != 1) {
        fprintf(stderr, "vl2 ground: give exactly one image with -i IMAGE (got %zu)\n",
                a.n_images);
        return 2;
    }
    if (a.n_words == 0) {
        fprintf(stderr, "vl2 ground: a PHRASE is required; try 'vl2 ground --help'\n");
        return 2;
    }
    for (size_t i = 0; i < a.n_words; i++)
        len += strlen(a.words[i]) + 1;
    phrase = malloc(len + 1);
    turn.text = malloc(len + 32);
    if (!phrase || !turn.text) {
        free(phrase);
        free(turn.text);
        fprintf(stderr, "vl2 ground: out of memory\n");
        return 1;
    }
    phrase[0] = '\0';
    for (size_t i = 0; i < a.n_words; i++) {
        if (i)
            strcat(phrase, " ");
        strcat(phrase, a.words[i]);
    }
    if (vl2_cli_count_image_tags(phrase) > 0) {
        fprintf(stderr, "vl2 ground: the phrase may not contain <image>\n");
        free(phrase);
        free(turn.text);
        return 2;
    }
    /* the referring prompt of the official README (spec 9) */
    snprintf(turn.text, len + 32, "<image>\n<|ref|>%s<|/ref|>.", phrase);
    free(phrase);

    c = vl2_cli_connect(cli);
    if (!c)
        goto out_text;
    h = vl2_client_hello(c);
    max_bytes = h && h->max_frame_size ? h->max_frame_size : 64u << 20;
    if (vl2_cli_open_images(c, cli, &a, &image) != 0)
        goto out_close;
    /* the drawing is made on our own decode: pin the orientation for both */
    image.exif = a.exif != 0;

    r = vl2_cli_generate(c, cli, a.model, &a.s, &turn, 1, &so, &res, &err);
    if (r < 0) {
        (void) vl2_cli_fail(cli, &err);
        goto out_image;
    }
    boxes = res.boxes;
    n_boxes = res.n_boxes;
    box_image = res.box_image;
    /* the daemon's boxes when it sent some; else the text, parsed here */
    if (n_boxes == 0 && strstr(res.text, "<|det|>")) {
        r = decode_local(&image, max_bytes, &pix, &err);
        if (r == 0)
            r = vl2_grounding_parse(res.text, res.len, pix.width, pix.height, &parsed,
                                    &n_parsed, &err);
        if (r < 0) {
            (void) vl2_cli_fail(cli, &err);
            goto out_image;
        }
        boxes = parsed;
        n_boxes = n_parsed;
        box_image = NULL;
    }
    if (a.output) {
        if (!pix.rgb) {
            r = decode_local(&image, max_bytes, &pix, &err);
            if (r < 0) {
                (void) vl2_cli_fail(cli, &err);
                goto out_image;
            }
        }
        vl2_cli_draw_boxes(pix.rgb, pix.width, pix.height, boxes, n_boxes);
        r = vl2_cli_write_png(a.output, pix.rgb, pix.width, pix.height, &err);
        if (r < 0) {
            (void) vl2_cli_fail(cli, &err);
            goto out_image;
        }
    }
    if (cli->json) {
        cJSON *o = vl2_cli_done_json(&res, boxes, box_image, n_boxes);

        if (a.output)
            cJSON_AddStringToObject(o, "output", a.output);
        vl2_cli_print_json_line(o);
    } else {
        vl2_cli_print_boxes(stdout, boxes, n_boxes);
        if (n_boxes == 0)
            fprintf(stderr, "vl2 ground: no boxes in the answer: '%s'\n", res.text);
        if (a.output && isatty(STDERR_FILENO))
            fprintf(stderr, "wrote '%s' (%zu box%s)\n", a.output, n_boxes,
                    n_boxes == 1 ? "" : "es");
    }
    rc = 0;

out_image:
    vl2_boxes_free(parsed, n_parsed);
    vl2_image_done(&pix);
    vl2_cli_result_done(&res);
    vl2_cli_image_close(&image);
out_close:
    vl2_client_close(c);
out_text:
    free(turn.text);
    return rc;
}

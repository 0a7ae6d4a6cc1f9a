/* cli.h - the `vl2` command: global options and one function per
 * subcommand.  Each returns the exit status: 0 success, 1 failure (one line
 * on stderr), 2 usage error. */
#ifndef VL2_CLI_H
#define VL2_CLI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "vl2.h"

struct cJSON;
struct vl2_box;

/* Options every subcommand accepts, before or after its name. */
struct vl2_cli {
    const char *socket_path;   /* --socket PATH; NULL: $VL2_SOCKET, then the default */
    bool json;                 /* --json: JSON on stdout (one object per line when streaming) */
    int timeout_ms;            /* --timeout SECONDS */
    bool timeout_set;          /* --timeout was given (streaming commands wait forever otherwise) */
};

/* Connect to the daemon as @cli says; on failure print one line (and an
 * error event with --json) and return NULL. */
struct vl2_client *vl2_cli_connect(const struct vl2_cli *cli);

/* Print a daemon or transport error as one line on stderr. */
void vl2_cli_error(const struct vl2_err *err);

/* Report a failure: one line on stderr and, with --json, an error event
 * {"event":"error","code":..,"status":..,"message":..} on stdout.  Returns 1
 * (the exit status). */
int vl2_cli_fail(const struct vl2_cli *cli, const struct vl2_err *err);

/* Print @obj as one line of JSON on stdout, flush, and free it. */
void vl2_cli_print_json_line(struct cJSON *obj);

/* Token bytes @p [n] as a NUL-terminated string for JSON: valid UTF-8
 * copied, every other byte (and NUL) as the four characters \xNN.  Returns
 * malloc'd text or NULL (cmd_tokenize.c). */
char *vl2_cli_piece_text(const uint8_t *p, size_t n);

/* Format @bytes as "12.3 MiB" into @buf. */
const char *vl2_cli_bytes(unsigned long long bytes, char *buf, unsigned size);

/* True when stderr is a terminal and --json is off: progress may be shown. */
bool vl2_cli_show_progress(const struct vl2_cli *cli);

/* ---- sampling options (as in `vl2d run`) -------------------------------- */

#define VL2_CLI_MAX_STOPS 16

struct vl2_cli_sampling {
    bool has_max_new;
    uint32_t max_new;
    bool has_temperature;
    float temperature;
    bool has_top_p;
    float top_p;
    bool has_top_k;
    uint32_t top_k;
    bool has_repetition_penalty;
    float repetition_penalty;
    bool has_seed;
    uint64_t seed;
    bool ignore_eos;
    uint32_t top_logprobs;          /* --top-logprobs: alternatives per token, 0..20 */
    const char *stops[VL2_CLI_MAX_STOPS];
    size_t n_stops;
};

/* Take a sampling option at argv[*i] (advancing *i over its value).
 * Returns 1 when taken, 0 when argv[*i] is not one, -1 after printing a
 * usage error that names @cmd. */
int vl2_cli_sampling_arg(struct vl2_cli_sampling *s, const char *cmd, int argc, char **argv,
                         int *i);

/* The help lines of the sampling options. */
extern const char vl2_cli_sampling_help[];

/* ---- images sent with a request ------------------------------------------ */

/* One image opened by the client with its own rights.  Sent as the open
 * descriptor (the daemon never opens a path) or, with --send-bytes or when it
 * is not a regular file (a pipe), as its bytes. */
struct vl2_cli_image {
    char *path;          /* as the user gave it */
    int fd;              /* open for reading; -1 when sent as bytes */
    uint8_t *data;       /* the file's bytes when sent as bytes */
    size_t size;
    int exif;            /* apply the EXIF orientation: 1 yes, 0 no, -1 the daemon's default */
};

/* Open @path.  @send_bytes: read it whole (at most @max_bytes).  Returns 0 or
 * < 0 with a message naming the file. */
int vl2_cli_image_open(struct vl2_cli_image *img, const char *path, bool send_bytes,
                       size_t max_bytes, struct vl2_err *err);
void vl2_cli_image_close(struct vl2_cli_image *img);

/* The file's content (read through the descriptor when it is one, from
 * offset 0).  *@ret_data is malloc'd. */
int vl2_cli_image_read(const struct vl2_cli_image *img, size_t max_bytes, uint8_t **ret_data,
                       size_t *ret_size, struct vl2_err *err);

/* ---- one conversation turn and generation -------------------------------- */

struct vl2_cli_turn {
    Vl2__Role role;
    char *text;                         /* with its <image> tags */
    struct vl2_cli_image **images;      /* borrowed */
    size_t n_images;
};

/* Number of "<image>" tags in @text. */
size_t vl2_cli_count_image_tags(const char *text);

/* @text with "<image>\n" in front once per image when it has no tag.
 * Returns a malloc'd string, or NULL (usage error printed naming @cmd) when
 * the text has tags but not one per image, or on out-of-memory. */
char *vl2_cli_user_text(const char *cmd, const char *text, size_t n_images);

/* What one Generate gave. */
struct vl2_cli_result {
    char *text;                  /* the streamed text (or Done.text), NUL-terminated */
    size_t len;
    size_t cap;
    bool done;                   /* ended with Done */
    Vl2__FinishReason finish_reason;
    uint32_t prompt_tokens, image_tokens, generated_tokens;
    double ttft_s, decode_tps;
    struct vl2_box *boxes;       /* from Done (vl2_boxes_free) */
    uint32_t *box_image;         /* image_index per box */
    size_t n_boxes;
};

void vl2_cli_result_done(struct vl2_cli_result *res);

/* How a Generate streams. */
struct vl2_cli_stream_opts {
    bool print_text;      /* write Token text to stdout as it comes (not with --json) */
    bool json_done;       /* with --json, print the Done event (ground prints its own) */
    bool grounding;       /* Generate.grounding */
};

/* Send a Generate of @turns to @model (NULL: the default) and receive its
 * responses: progress on a terminal, Token text on stdout, JSON events with
 * --json.  Ctrl-C cancels the request (a second one quits).  Fills @res.
 * Returns 0 or < 0 (message in @err; the error event is printed by the
 * caller through vl2_cli_fail). */
int vl2_cli_generate(struct vl2_client *c, const struct vl2_cli *cli, const char *model,
                     const struct vl2_cli_sampling *s, const struct vl2_cli_turn *turns,
                     size_t n_turns, const struct vl2_cli_stream_opts *so,
                     struct vl2_cli_result *res, struct vl2_err *err);

/* True after a second Ctrl-C during the last vl2_cli_generate(): the user
 * wants out, not just to cancel the answer. */
bool vl2_cli_interrupted(void);

/* The JSON event of a Done: finish reason, token counts, speeds, the text
 * and @boxes (pixels; @box_image may be NULL). */
struct cJSON *vl2_cli_done_json(const struct vl2_cli_result *res, const struct vl2_box *boxes,
                                const uint32_t *box_image, size_t n_boxes);

/* Print one line per box: "x1 y1 x2 y2 label" (control characters of the
 * label as spaces). */
void vl2_cli_print_boxes(FILE *f, const struct vl2_box *boxes, size_t n_boxes);

/* ---- drawing (draw.c) ----------------------------------------------------- */

#define VL2_CLI_PALETTE_SIZE 13

/* The box colours, cycling: box i has colour i % VL2_CLI_PALETTE_SIZE. */
extern const uint8_t vl2_cli_palette[VL2_CLI_PALETTE_SIZE][3];

/* Draw @boxes on the RGB8 raster (w x h): outlines 3 px wide inside each box
 * edge, colour cycling through the palette, and each label on a band of the
 * box's colour above the box (inside it when there is no room above) in a
 * 5x7 bitmap font at twice its size, white or black for contrast. */
void vl2_cli_draw_boxes(uint8_t *rgb, int32_t w, int32_t h, const struct vl2_box *boxes,
                        size_t n_boxes);

/* Write an RGB8 raster as a PNG file (through a temporary file in the same
 * directory, renamed into place).  Returns 0 or < 0 with a message. */
int vl2_cli_write_png(const char *path, const uint8_t *rgb, int32_t w, int32_t h,
                      struct vl2_err *err);

/* ---- subcommands ---------------------------------------------------------- */

int vl2_cmd_status(const struct vl2_cli *cli, int argc, char **argv);
int vl2_cmd_models(const struct vl2_cli *cli, int argc, char **argv);
int vl2_cmd_ask(const struct vl2_cli *cli, int argc, char **argv);
int vl2_cmd_chat(const struct vl2_cli *cli, int argc, char **argv);
int vl2_cmd_ground(const struct vl2_cli *cli, int argc, char **argv);
int vl2_cmd_load(const struct vl2_cli *cli, int argc, char **argv);
int vl2_cmd_unload(const struct vl2_cli *cli, int argc, char **argv);
int vl2_cmd_tokenize(const struct vl2_cli *cli, int argc, char **argv);

#endif

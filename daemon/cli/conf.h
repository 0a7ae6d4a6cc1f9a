/* conf.h - vl2d's configuration file (daemon/cli: it fills both the
 * server's options and the engines' parameters, so it sits above both).
 *
 * Where: --config FILE; otherwise, for the system service (--system, or root
 * without XDG_RUNTIME_DIR), VL2_SYSCONF_DIR/vl2d.conf (/etc/vl2d/vl2d.conf);
 * for a user, $XDG_CONFIG_HOME/vl2d/vl2d.conf (~/.config/vl2d/vl2d.conf).
 * A missing default file is no error: every setting has a default and the
 * daemon runs with none.  Command-line options override the file.
 *
 * Format: lines of UTF-8 text.
 *
 *     # a comment (a line whose first non-blank character is '#' or ';')
 *     [daemon]
 *     backend = cpu              # NOT a comment: comments take whole lines
 *     backend_options = isa=avx2
 *     max_sequences = 16
 *     kv_budget = 4G
 *
 *     [model tiny]
 *     dir = /var/lib/vl2d/models/deepseek-vl2-tiny
 *     backend = cuda             (optional: this model's backend)
 *     backend_options = graphs=0 (optional: options of this model's backend)
 *
 * - "[daemon]" holds the daemon's settings, "[model NAME]" one model (NAME:
 *   letters, digits and . _ - + : @, at most 64 bytes; each name once).
 * - "key = value": blanks around both are ignored; a value may be written
 *   in double quotes to keep blanks ("a b"), with \" and \\ inside.
 * - Sizes take K, M, G (powers of 1024, optional "iB"/"B"); durations take
 *   s, m or h (seconds without); booleans are true/false, yes/no, on/off,
 *   1/0.
 * - A relative model dir is relative to the file's directory.
 * - Anything else (an unknown section or key, a bad value, a key outside a
 *   section, a model without dir) is an error naming FILE:LINE.
 *
 * [daemon] keys (default):
 *   backend (cpu)            plugin_dir (the loader's search)   device (0)
 *   threads (0: all cores)   socket (the mode's default)        socket_mode (0660)
 *   max_frame (64M)          max_connections (256)             log_level (info)
 *   max_sequences (8)        max_queue (1024)                   kv_budget (0: auto)
 *   context (0: the model's) max_new_tokens (512)               max_images (16, at most 64)
 *   max_image_pixels (50000000)  max_image_bytes (64M)          apply_exif (true)
 *   special_tokens_in_text (false: messages are plain text, prompt.h)
 *   admin_groups (none: only the daemon's user and root load and unload)
 *                            group names or gids, separated by spaces
 *   model_roots (none: an admin may load any directory)
 *                            absolute directories, separated by spaces
 *   image_timeout (10s)      prep_threads (2)                   idle_unload (0: never)
 *   vision_tiles_per_step (1: tiles of one image encoded between two decode steps
 *                            while other requests run; 0: a whole image at once)
 *   backend_options (none)   options of the backend plugin: key=value items
 *                            separated by commas, no blanks (the grammar of
 *                            plugins/vl2-options.h; the keys are the backend's:
 *                            plugins/cpu/cpu.c, plugins/cuda/cuda-options.h).
 *                            The syntax is checked here, the keys and values
 *                            by the backend when a model loads (an unknown key
 *                            fails the load with the backend's message).  vl2d's
 *                            --backend-option K=V flags are appended after the
 *                            file's value, and for a key given twice the last
 *                            value wins: a flag overrides the file.
 *
 * [model NAME] keys: dir (required), backend (the daemon's), backend_options.
 * The [daemon] backend_options go to the models that run on the daemon's
 * backend; a model whose section sets backend_options gets those instead, and
 * a model on another backend without its own gets none (options of one
 * backend mean nothing to another).
 */
#ifndef VL2_CLI_CONF_H
#define VL2_CLI_CONF_H

#include <stdbool.h>
#include <stddef.h>

#include "engine.h"
#include "log.h"
#include "server.h"
#include "vl2-status.h"

#define VL2_CONF_MAX_MODELS 64
#define VL2_CONF_MAX_NAME   64

struct vl2_conf_model {
    char *name;
    char *dir;
    char *backend;          /* NULL: the daemon's */
    char *backend_options;  /* NULL: see [model NAME] above */
};

/* Longest joined backend options string (file value and flags), bytes. */
#define VL2_CONF_OPTIONS_MAX 4096

/* Everything the file (and then the command line) sets; caller-owned,
 * vl2_conf_init() / vl2_conf_done(). */
struct vl2_conf {
    struct vl2_server_opts server;    /* socket_path points at @socket_path */
    struct vl2_engine_params engine;  /* backend, plugin_dir, backend_options point at
                                         the fields below (backend_options NULL when
                                         empty) */
    char *socket_path;
    char *model_roots;      /* the model_roots value, NUL-split; server.model_roots
                               point into it (flags append their own) */
    char *backend;
    char *plugin_dir;
    char backend_options[VL2_CONF_OPTIONS_MAX]; /* "" or "k=v,..." */
    bool has_log_level;
    enum vl2_log_level log_level;
    struct vl2_conf_model models[VL2_CONF_MAX_MODELS];
    size_t n_models;
};

/* Defaults (vl2_server_default_opts, vl2_engine_default_params). */
void vl2_conf_init(struct vl2_conf *c);
void vl2_conf_done(struct vl2_conf *c);

/* The default file of the mode into @buf: VL2_SYSCONF_DIR/vl2d.conf when
 * @system, else $XDG_CONFIG_HOME/vl2d/vl2d.conf or
 * $HOME/.config/vl2d/vl2d.conf.  Returns 0, VL2_ENOTFOUND (no home), or
 * VL2_ELIMIT (too long). */
int vl2_conf_default_path(bool system, char *buf, size_t size, struct vl2_err *err);

/* Read the file @path into @c.  With !@must_exist a missing file is not an
 * error (returns 0 and changes nothing).  Errors: VL2_EIO / VL2_ENOTFOUND
 * (the file), VL2_EFORMAT / VL2_EINVAL / VL2_ELIMIT with "PATH:LINE: why". */
int vl2_conf_load(struct vl2_conf *c, const char *path, bool must_exist, struct vl2_err *err);

/* Parse @len bytes of @text as the file @name (for messages; relative model
 * dirs are taken relative to its directory). */
int vl2_conf_parse(struct vl2_conf *c, const char *text, size_t len, const char *name,
                   struct vl2_err *err);

/* Set one [daemon] key from text, as the file would (command-line options
 * use it too).  Errors: VL2_EINVAL ("unknown key", "bad value"). */
int vl2_conf_set(struct vl2_conf *c, const char *key, const char *value, struct vl2_err *err);

/* Append @items ("k=v" or "k=v,k2=v2", the grammar of vl2-options.h; ""
 * adds nothing) to the NUL-terminated options string @buf of @size bytes,
 * after a comma.  Only the syntax is checked.  Errors: VL2_EINVAL (the
 * grammar's message, prefixed with @who), VL2_ELIMIT (longer than @size - 1);
 * @buf is unchanged then. */
int vl2_conf_options_append(char *buf, size_t size, const char *items, const char *who,
                            struct vl2_err *err);

/* --backend-option @items: appended to the [daemon] backend_options. */
int vl2_conf_add_backend_option(struct vl2_conf *c, const char *items, struct vl2_err *err);

/* The engine parameters for model @name in @dir on @backend (NULL or "": the
 * daemon's): c->engine, with the backend options chosen as the [model NAME]
 * rule above says.  The result points into @c. */
struct vl2_engine_params vl2_conf_engine_params(const struct vl2_conf *c, const char *name,
                                                const char *dir, const char *backend);

/* Add model @name (NULL or "": the base name of @dir) in @dir; a relative
 * @dir is taken relative to @base_dir (NULL: the working directory).
 * Errors: VL2_EINVAL (bad or duplicate name, empty dir), VL2_ELIMIT, VL2_ENOMEM. */
int vl2_conf_add_model(struct vl2_conf *c, const char *name, const char *dir,
                       const char *base_dir, struct vl2_err *err);

/* "NAME=DIR" or "DIR" (as vl2d --model takes it; a '/' before the first '='
 * means there is no name). */
int vl2_conf_add_model_arg(struct vl2_conf *c, const char *arg, struct vl2_err *err);

#endif /* VL2_CLI_CONF_H */

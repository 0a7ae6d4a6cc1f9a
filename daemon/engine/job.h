/* job.h - the boundary between the server (loop thread) and an engine
 * (one per loaded model, its own threads).  It lives beside the engine
 * (daemon/engine), the lower layer; the server includes it through
 * job_dep.
 *
 * The server translates a Generate request into a struct vl2_job (in
 * dispatch.c, the only place that reads protobuf) and hands it to the model's
 * engine through struct vl2_engine_ops.  The engine reports back with events
 * posted from any thread through the post function of its struct
 * vl2_engine_spec (the server's vl2_server_post(), server.h); the loop thread
 * turns them into responses for the right connection and request.  No
 * protobuf and no libuv on the engine side.
 *
 *     loop thread                          engine thread(s)
 *     ops->submit(engine, job)  ------->   queue, schedule, decode ...
 *     ops->cancel(engine, key)  ------->   stop at the next step
 *     responses to the client   <-------   spec->post(spec->post_ud, event)
 *                                          (ACCEPTED, PROGRESS, TOKEN...,
 *                                           then exactly one DONE or ERROR)
 */
#ifndef VL2_ENGINE_JOB_H
#define VL2_ENGINE_JOB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vl2-status.h"


/* ---- jobs (server -> engine) ----------------------------------------- */


enum vl2_job_role {
    VL2_JOB_ROLE_SYSTEM = 1,
    VL2_JOB_ROLE_USER = 2,
    VL2_JOB_ROLE_ASSISTANT = 3,
};

/* An image as the client sent it: encoded bytes, or a descriptor the client
 * opened (never a path).  Exactly one of @data / @fd is set. */
struct vl2_job_image {
    uint8_t *data;          /* encoded file, owned; NULL when @fd >= 0 */
    size_t   data_size;
    int      fd;            /* owned (O_CLOEXEC); -1 when @data is set */
    bool     apply_exif;
    bool     has_apply_exif;  /* false: the client left it unset (daemon default) */
};

struct vl2_job_message {
    enum vl2_job_role role;
    char *text;                     /* UTF-8, NUL-terminated, owned; may hold "<image>" */
    struct vl2_job_image *images;   /* [n_images], owned */
    size_t n_images;
};

/* Sampling settings; a has_* flag that is false means "the model's default". */
struct vl2_job_sampling {
    bool     has_temperature;
    float    temperature;
    bool     has_top_p;
    float    top_p;
    bool     has_top_k;
    uint32_t top_k;
    bool     has_repetition_penalty;
    float    repetition_penalty;
    bool     has_seed;
    uint64_t seed;
    bool     has_max_new_tokens;
    uint32_t max_new_tokens;
    char   **stop;                  /* [n_stop], owned */
    size_t   n_stop;
    bool     ignore_eos;
};

/* One Generate request.  Owned by the engine after a successful submit(). */
struct vl2_job {
    uint64_t key;                   /* names the job in events; unique per server */
    uint64_t owner;                 /* who asked (the connection), for fair queueing */
    uint64_t owner_uid;             /* the connection's uid: slots go round robin between
                                       uids first (engine.c admit_next) */
    char *model;                    /* model name, owned */
    struct vl2_job_message *messages;  /* [n_messages], owned */
    size_t n_messages;
    struct vl2_job_sampling sampling;
    bool grounding;                 /* parse boxes into the DONE event */
    bool stream;                    /* the server drops TOKEN events when false */
    bool logprobs;                  /* fill vl2_event.logprob */
    uint32_t top_logprobs;          /* 0..VL2_JOB_MAX_TOP_LOGPROBS: fill vl2_event.top;
                                       > 0 comes with logprobs */
};

#define VL2_JOB_MAX_TOP_LOGPROBS 20

/* Free a job and close its descriptors.  Accepts NULL. */
void vl2_job_free(struct vl2_job *job);

/* One Tokenize request: @text encoded by the model's tokenizer on one of
 * the engine's prep threads.  Owned by the engine after a successful
 * tokenize(). */
struct vl2_tokenize_job {
    uint64_t key;                   /* names the job in events; unique per server */
    uint64_t owner;                 /* who asked (the connection) */
    char *text;                     /* UTF-8, owned */
    size_t len;
    bool add_bos;                   /* the BOS id first */
    bool pieces;                    /* fill vl2_event.piece_len and the pieces' bytes */
};

/* Free a Tokenize job.  Accepts NULL. */
void vl2_tokenize_job_free(struct vl2_tokenize_job *job);

/* ---- events (engine -> server) --------------------------------------- */

enum vl2_event_kind {
    VL2_EVENT_ACCEPTED = 1,
    VL2_EVENT_PROGRESS,
    VL2_EVENT_TOKEN,
    VL2_EVENT_DONE,                 /* terminal */
    VL2_EVENT_ERROR,                /* terminal */
    VL2_EVENT_TOKENIZED,            /* terminal: a Tokenize job's ids */
    /* about a model rather than a job (key = vl2_engine_spec.load_key): */
    VL2_EVENT_LOADED,               /* the model is ready (terminal for loading) */
    VL2_EVENT_UNLOADED,             /* after ops->stop(): the engine is idle, free() it */
};

/* Values of vl2_event.stage and .finish_reason: the numbers of vl2.proto's
 * Stage and FinishReason enums. */
enum vl2_event_stage {
    VL2_STAGE_TILING = 1,
    VL2_STAGE_VISION = 2,
    VL2_STAGE_PREFILL = 3,
    VL2_STAGE_LOADING = 4,
};

enum vl2_finish_reason {
    VL2_FINISH_EOS = 1,
    VL2_FINISH_LENGTH = 2,
    VL2_FINISH_STOP = 3,
};

struct vl2_event_box {
    char *label;                    /* owned */
    float x1, y1, x2, y2;           /* pixels of the original image */
    uint32_t image_index;
};

/* One alternative of a TOKEN event: its bytes are the next @text_size of
 * vl2_event.top_text. */
struct vl2_event_alt {
    uint32_t id;
    float logprob;
    size_t text_size;
};

struct vl2_event {
    struct vl2_event *next;         /* the server's queue */
    uint64_t key;                   /* vl2_job.key */
    enum vl2_event_kind kind;
    /* ACCEPTED */
    uint32_t queue_position;
    /* PROGRESS */
    enum vl2_event_stage stage;
    float fraction;
    /* TOKEN: text (whole UTF-8 characters) and the last token id */
    uint8_t *text;                  /* owned; also DONE: the whole answer, optional */
    size_t text_size;
    uint32_t token_id;
    bool has_logprob;
    float logprob;
    struct vl2_event_alt *top;      /* [n_top], owned; most likely first */
    size_t n_top;
    uint8_t *top_text;              /* owned: the alternatives' bytes, one after another */
    /* DONE */
    enum vl2_finish_reason finish_reason;
    uint32_t prompt_tokens;
    uint32_t image_tokens;
    uint32_t generated_tokens;
    double time_to_first_token_s;
    double decode_tokens_per_s;
    struct vl2_event_box *boxes;    /* [n_boxes], owned */
    size_t n_boxes;
    /* ERROR */
    int code;                       /* enum vl2_status */
    char message[VL2_ERR_MSG_SIZE];
    /* LOADED */
    double load_s;                  /* seconds the load took */
    /* TOKENIZED: the ids (BOS first when asked), and with pieces each id's
     * bytes: piece_len[i] bytes each, one after another in @text */
    int32_t *ids;                   /* [n_ids], owned */
    size_t n_ids;
    uint32_t *piece_len;            /* [n_ids], owned; NULL without pieces */
};

/* A zeroed event of @kind for job @key, or NULL when out of memory. */
struct vl2_event *vl2_event_new(enum vl2_event_kind kind, uint64_t key);

/* Copy @size bytes into ev->text.  Returns 0 or VL2_ENOMEM. */
int vl2_event_set_text(struct vl2_event *ev, const void *text, size_t size);

void vl2_event_free(struct vl2_event *ev);

/* ---- engines --------------------------------------------------------- */

/* States of a model (the numbers of vl2.proto's ModelState). */
enum vl2_model_state {
    VL2_MODEL_STATE_LOADING = 1,
    VL2_MODEL_STATE_READY = 2,
    VL2_MODEL_STATE_FAILED = 3,
    VL2_MODEL_STATE_UNLOADING = 4,
};

/* Figures an engine reports for Status; filled on the loop thread.  The
 * server zeroes the struct first: an engine that leaves @state 0 is READY. */
struct vl2_engine_stats {
    uint64_t memory_bytes;          /* mapped weights + backend memory (KV included) */
    uint32_t queue_length;          /* requests waiting for a slot */
    uint32_t active_sequences;      /* requests holding a slot */
    double   tokens_per_s;          /* generated tokens per second, last minute */
    const char *backend;            /* static string or owned by the engine */
    enum vl2_model_state state;     /* 0: READY */
    const char *error;              /* why, when FAILED; owned by the engine */
    uint64_t max_prompt_bytes;      /* READY: text bytes past which a prompt cannot fit
                                       the context (n_ctx x the longest token's bytes);
                                       0: not known yet */
};

/* What a model's engine offers the server.  Every call comes from the loop
 * thread and must not block, except free(). */
struct vl2_engine_ops {
    /* Take @job.  On success (0) the engine owns it and posts exactly one
     * terminal event (DONE or ERROR) for job->key, also when cancelled.  On
     * failure (< 0, detail in @err) the caller keeps the job and nothing is
     * posted. */
    int  (*submit)(void *engine, struct vl2_job *job, struct vl2_err *err);
    /* Stop job @key early; it still ends with one terminal event (ERROR
     * VL2_ECANCELED, or DONE if it finished first).  Unknown keys are
     * ignored. */
    void (*cancel)(void *engine, uint64_t key);
    /* Optional (may be NULL). */
    void (*stats)(void *engine, struct vl2_engine_stats *ret);
    /* The server is going away: stop every job, join the threads, free the
     * engine.  Events posted from here on are dropped. */
    void (*free)(void *engine);
    /* Optional (may be NULL): begin unloading without blocking: end every
     * job (ERROR VL2_ECANCELED), release the model, then post one
     * VL2_EVENT_UNLOADED with the load key; free() follows it.  Without
     * stop(), the server calls free() at once. */
    void (*stop)(void *engine);
    /* Optional (may be NULL: Tokenize is refused as UNIMPLEMENTED): take
     * @job, encoded on a prep thread.  On success (0) the engine owns it
     * and posts exactly one terminal event for job->key: TOKENIZED, or
     * ERROR (cancel() before it started: VL2_ECANCELED).  Accepted jobs are
     * answered also while the model unloads: UNLOADED comes after them.  On
     * failure (< 0, without waiting; the caller keeps the job): VL2_EBUSY
     * while the tokenizer is still loading or while the engine holds its
     * most Tokenize jobs, the load error when loading failed, VL2_ENOTFOUND
     * while unloading, VL2_EUNSUPPORTED for add_bos without a BOS token. */
    int  (*tokenize)(void *engine, struct vl2_tokenize_job *job, struct vl2_err *err);
};

/* How an engine hands events to the server (vl2_server_post for vl2d);
 * callable from any thread. */
typedef void (*vl2_event_post_fn)(void *post_ud, struct vl2_event *ev);

/* A model to load, as the server asks for it. */
struct vl2_engine_spec {
    const char *name;
    const char *dir;                /* model directory, daemon side */
    const char *backend;            /* NULL or "": the daemon's default */
    uint64_t load_key;              /* key of every event about the model itself */
    bool progress;                  /* post PROGRESS (LOADING) events */
    vl2_event_post_fn post;
    void *post_ud;
};

/* Makes engines for LoadModel requests and for the models of the
 * configuration (vl2d serve: the engine module).  create() returns at once
 * (loading happens on the engine's own thread) with an engine that posts,
 * for spec->load_key, PROGRESS (LOADING) events when asked, then exactly one
 * VL2_EVENT_LOADED or VL2_EVENT_ERROR.  Returns 0, or < 0 with @err (nothing
 * is posted then). */
struct vl2_engine_factory {
    int (*create)(void *ud, const struct vl2_engine_spec *spec,
                  const struct vl2_engine_ops **ret_ops, void **ret_engine,
                  struct vl2_err *err);
    void *ud;
};

#endif /* VL2_ENGINE_JOB_H */

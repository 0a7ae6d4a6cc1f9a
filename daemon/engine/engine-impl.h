/* engine-impl.h - the engine's internal state, shared by its .c files only. */
#ifndef VL2_ENGINE_IMPL_H
#define VL2_ENGINE_IMPL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine.h"
#include "image.h"
#include "model.h"
#include "prepare.h"
#include "textstream.h"
#include "tokenizer.h"
#include "weights.h"

/* Prompt ids fed per prefill unit between two decode steps. */
#define VL2_ENGINE_PREFILL_CHUNK 256
/* Seconds of the tokens/s window of Status. */
#define VL2_ENGINE_RATE_WINDOW   60
/* Tokenize jobs one engine holds (waiting or encoding); more get BUSY. */
#define VL2_ENGINE_MAX_TOKENIZE  16

/* A Tokenize job waiting for a prep thread. */
struct vl2_tok_req {
    struct vl2_tok_req *next;
    struct vl2_tokenize_job *job;   /* owned */
};

/* The vision tower's work on one image of a request (engine thread). */
struct vl2_req_vision {
    struct vl2_image_job *job;      /* tiles through the tower so far */
    struct vl2_image_embed *embed;  /* freed after the prefill */
};

/* Where a request is; each list below holds the requests of one place. */
enum vl2_req_place {
    VL2_REQ_QUEUED = 1,             /* waiting for a slot */
    VL2_REQ_PREP_TODO,              /* holds a slot, waits for a prep thread */
    VL2_REQ_PREPPING,               /* a prep thread works on it */
    VL2_REQ_READY,                  /* prepared, waits for the engine thread */
    VL2_REQ_RUNNING,                /* engine thread: vision, prefill, decode */
};

struct vl2_req {
    struct vl2_req *prev, *next;    /* in the list of its place */
    enum vl2_req_place place;
    struct vl2_job *job;            /* owned */
    uint64_t key;
    uint64_t owner;
    uint64_t seq_no;                /* arrival order */
    size_t rank;                    /* queued: requests of its owner queued before it */
    atomic_bool cancelled;          /* set under the engine's lock; the prep hook reads
                                       it without */
    const char *cancel_why;         /* static message for the ERROR; under the lock */
    double t_submit;

    /* ---- set by the prep thread ---- */
    struct vl2_prepared pr;         /* tiles (freed once encoded), prompt, settings */
    struct vl2_req_vision *vis;     /* [pr.n_images] */
    const struct vl2_image_embed **embeds;  /* [pr.n_images], the images' embed */

    /* ---- engine thread ---- */
    struct vl2_seq *seq;
    size_t kv_bytes;                /* reserved by seq from the engine's budget */
    size_t n_encoded;               /* images through the vision tower */
    size_t n_fed;                   /* prompt ids prefilled */
    int64_t image_rows;             /* image rows consumed by the fed ids */
    bool decoding;                  /* prefill done: joins the decode steps */
    bool has_next;
    int32_t next_id;                /* sampled, fed at the next step */
    bool ts_live;                   /* ts initialised */
    struct vl2_textstream ts;       /* the answer: text, stop strings, finish reason */
    double t_first, t_last;
};

struct vl2_req_list {
    struct vl2_req *head, *tail;
    size_t n;
};

struct vl2_engine {
    struct vl2_engine_params p;
    char *name, *dir, *backend, *plugin_dir;   /* owned copies */
    char *backend_options;                    /* owned copy, or NULL */
    uint64_t load_key;
    bool load_progress;
    vl2_event_post_fn post;
    void *post_ud;

    pthread_mutex_t mu;
    pthread_cond_t cv;              /* wakes the engine thread */
    pthread_cond_t prep_cv;         /* wakes prep threads */
    pthread_cond_t state_cv;        /* loading finished (wait_loaded) */
    pthread_t thread;
    bool thread_started;
    pthread_t *prep;
    size_t n_prep;

    /* ---- under mu ---- */
    bool quit;                      /* free(): stop everything */
    bool stopping;                  /* stop(): unload, then UNLOADED */
    atomic_bool halting;            /* quit || stopping, readable without the lock */
    enum vl2_model_state state;
    bool tok_ready;                 /* tok is loaded (Tokenize may use it) */
    int error_code;
    char error[VL2_ERR_MSG_SIZE];   /* FAILED: why */
    struct vl2_req_list queue;      /* VL2_REQ_QUEUED */
    struct vl2_req_list prep_todo;  /* VL2_REQ_PREP_TODO */
    struct vl2_req_list prepping;   /* VL2_REQ_PREPPING */
    struct vl2_req_list ready;      /* VL2_REQ_READY */
    struct vl2_req_list running;    /* VL2_REQ_RUNNING (the engine thread's) */
    struct vl2_tok_req *tok_head, *tok_tail;  /* Tokenize jobs waiting, oldest first */
    size_t n_tok_waiting;
    size_t n_tok_encoding;          /* taken by prep threads */
    uint64_t next_seq_no;
    uint64_t memory_bytes;          /* for Status, refreshed by the engine thread */
    uint32_t rate_tokens[VL2_ENGINE_RATE_WINDOW];  /* tokens per second, ring */
    int64_t rate_sec[VL2_ENGINE_RATE_WINDOW];      /* which second each slot counts */
    double t_rate0;                 /* first second counted */

    /* ---- fixed once loaded (read by prep threads) ---- */
    struct vl2_tokenizer *tok;
    int32_t eos_id;
    int32_t image_token_id;
    int32_t n_ctx;
    size_t max_prompt_bytes;        /* n_ctx times the longest token's bytes */
    struct vl2_prep_model pm;       /* what vl2_prepare needs of the model */
    size_t mapped_bytes;            /* safetensors files of the model directory */

    /* ---- engine thread only ---- */
    struct vl2_model *m;            /* NULL after an idle unload */
    size_t kv_token_bytes;
    size_t kv_budget;
    size_t kv_used;
    double t_idle;                  /* when the engine last had nothing to do */
    struct vl2_seq **batch_seqs;    /* [max_sequences] */
    int32_t *batch_ids;
    struct vl2_req **batch_reqs;
};

/* ---- lists (caller holds mu) ---- */
void vl2__req_list_push(struct vl2_req_list *l, struct vl2_req *r, enum vl2_req_place place);
void vl2__req_list_remove(struct vl2_req_list *l, struct vl2_req *r);
struct vl2_req *vl2__req_list_pop(struct vl2_req_list *l);

/* Free a request: its job, tiles, prompt and text.  Its sequence and
 * image embeddings must have been released before (release_seq, on the
 * engine thread). */
void vl2__req_free(struct vl2_engine *e, struct vl2_req *r);

/* Post an event for @r (ERROR with @code and @err's message). */
void vl2__req_post_error(struct vl2_engine *e, struct vl2_req *r, int code, const char *msg);
void vl2__req_post_progress(struct vl2_engine *e, struct vl2_req *r, enum vl2_event_stage stage,
                            float fraction);

/* prep.c: everything before the model (vl2_prepare into r->pr).  Returns 0
 * or < 0 with @err (the request's error). */
int vl2__prep_request(struct vl2_engine *e, struct vl2_req *r, struct vl2_err *err);

#endif /* VL2_ENGINE_IMPL_H */

/* bench-weights.c - figures for the weights module (never pass/fail):
 * generator throughput, sha256, config.json parsing, opening and validating
 * a checkpoint (headers only), and reading all of its pages.
 *
 * usage: bench-weights MODEL_DIR [MODEL_DIR...]
 * One line per measurement: "weights <what> <value> <unit> [context]". */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gen.h"
#include "sha256.h"
#include "weights.h"
#include "weights-impl.h"

static double now(void)
{
    struct timespec t;

    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double) t.tv_sec + (double) t.tv_nsec * 1e-9;
}

static void bench_gen(void)
{
    struct vl2_tensor_spec t = { .name = "language.model.layers.1.mlp.experts.0.up_proj.weight",
                                 .ndim = 2, .shape = { 896, 1280 }, .kind = VL2_TK_LIN };
    size_t n = (size_t) (t.shape[0] * t.shape[1]), reps = 20, i;
    uint16_t *buf = malloc(n * sizeof(*buf));
    uint8_t dig[32];
    double t0, dt;

    if (!buf)
        return;
    t0 = now();
    for (i = 0; i < reps; i++)
        vl2_gen_fill(buf, &t, 4004, 0, n);
    dt = now() - t0;
    printf("weights gen_fill %.1f Melem/s (%.0f MB/s of bf16, 1 thread)\n",
           (double) (n * reps) / dt / 1e6, (double) (n * reps * 2) / dt / 1e6);
    t0 = now();
    for (i = 0; i < 5; i++)
        vl2__sha256(buf, n * 2, dig);
    dt = now() - t0;
    printf("weights sha256 %.0f MB/s\n", (double) (n * 2 * 5) / dt / 1e6);
    free(buf);
}

static void bench_config(const char *dir)
{
    struct vl2_model_config c;
    char path[4096], *text;
    size_t len;
    int i, reps = 2000;
    double t0;

    snprintf(path, sizeof(path), "%s/config.json", dir);
    if (vl2_file_read(path, 1 << 20, "weights", &text, &len, NULL) < 0)
        return;
    t0 = now();
    for (i = 0; i < reps; i++)
        if (vl2_config_parse(&c, text, len, NULL) < 0)
            break;
    printf("weights config_parse %.1f us (%zu bytes)\n", (now() - t0) / reps * 1e6, len);
    free(text);
}

static void bench_open(const char *dir)
{
    struct vl2_model_config c;
    struct vl2_weights *w = NULL;
    struct vl2_err err = { 0 };
    double t0, t1, t2;
    size_t i, bytes = 0;
    unsigned sum = 0;

    t0 = now();
    if (vl2_config_load(&c, dir, &err) < 0 || vl2_weights_open(&w, dir, &err) < 0) {
        fprintf(stderr, "bench-weights: %s\n", err.msg);
        return;
    }
    t1 = now();
    if (vl2_model_validate(&c, w, &err) < 0)
        fprintf(stderr, "bench-weights: %s\n", err.msg);
    t2 = now();
    printf("weights open %.2f ms (%zu tensors, %zu files, %s)\n", (t1 - t0) * 1e3,
           vl2_weights_count(w), vl2_weights_file_count(w), dir);
    printf("weights validate %.2f ms (%s)\n", (t2 - t1) * 1e3, dir);
    t0 = now();
    for (i = 0; i < vl2_weights_count(w); i++) {
        const struct vl2_st_tensor *t = vl2_weights_at(w, i);
        const volatile uint8_t *p = t->data;
        size_t j;
        for (j = 0; j < t->size; j += 4096)
            sum += p[j];
        bytes += t->size;
    }
    t1 = now();
    printf("weights touch_pages %.0f MB/s (%zu bytes in %.3f s, page cache state as found; "
           "sum %u)\n", (double) bytes / (t1 - t0) / 1e6, bytes, t1 - t0, sum & 1);
    vl2_weights_close(w);
}

int main(int argc, char **argv)
{
    int i;

    if (argc < 2) {
        fprintf(stderr, "usage: bench-weights MODEL_DIR [MODEL_DIR...]\n");
        return 2;
    }
    bench_gen();
    bench_config(argv[1]);
    for (i = 1; i < argc; i++)
        bench_open(argv[i]);
    return 0;
}

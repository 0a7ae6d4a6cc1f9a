/* test-shared.c - two processes that load the same model share its pages.
 *
 * Process A opens the model and touches every page of its tensors, then
 * waits.  Process B, started after, does the same and measures its own
 * /proc/self/smaps_rollup before and after: the pages it touched must be
 * resident and shared (Shared_Clean + Shared_Dirty: a file just written may
 * still be dirty in the page cache), adding almost no private memory.
 *
 * usage: test-shared MODEL_DIR        (exit 77 = skipped: no smaps_rollup) */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "weights.h"
#include "../common/check.h"

struct mem {
    long long rss, pss, shared_clean, shared_dirty, private_clean, private_dirty;   /* kB */
};

static int read_rollup(struct mem *m)
{
    FILE *f = fopen("/proc/self/smaps_rollup", "r");
    char line[256];

    memset(m, 0, sizeof(*m));
    if (!f)
        return -1;
    while (fgets(line, sizeof(line), f)) {
        long long v;
        if (sscanf(line, "Rss: %lld", &v) == 1)
            m->rss = v;
        else if (sscanf(line, "Pss: %lld", &v) == 1)
            m->pss = v;
        else if (sscanf(line, "Shared_Clean: %lld", &v) == 1)
            m->shared_clean = v;
        else if (sscanf(line, "Shared_Dirty: %lld", &v) == 1)
            m->shared_dirty = v;
        else if (sscanf(line, "Private_Clean: %lld", &v) == 1)
            m->private_clean = v;
        else if (sscanf(line, "Private_Dirty: %lld", &v) == 1)
            m->private_dirty = v;
    }
    fclose(f);
    return 0;
}

/* Read one byte of every page of every tensor; returns a checksum so the
 * reads are not optimised away.  Not instrumented: ASan's shadow checks would
 * add private memory of their own. */
#if defined(__GNUC__)
__attribute__((no_sanitize_address))
#endif
static unsigned touch(const struct vl2_weights *w, size_t *ret_bytes)
{
    size_t i, j, bytes = 0;
    unsigned sum = 0;

    for (i = 0; i < vl2_weights_count(w); i++) {
        const struct vl2_st_tensor *t = vl2_weights_at(w, i);
        const volatile uint8_t *p = t->data;
        for (j = 0; j < t->size; j += 4096)
            sum += p[j];
        if (t->size)
            sum += p[t->size - 1];
        bytes += t->size;
    }
    *ret_bytes = bytes;
    return sum;
}

static int load_and_touch(const char *dir, struct vl2_weights **ret, size_t *bytes)
{
    struct vl2_err err = { 0 };

    if (vl2_weights_open(ret, dir, &err) < 0) {
        fprintf(stderr, "open: %s\n", err.msg);
        return -1;
    }
    (void) touch(*ret, bytes);
    return 0;
}

int main(int argc, char **argv)
{
    int ready[2], go[2], res[2], status;
    struct mem before, after;
    pid_t a, b;
    char c = 0;
    long long r[6];
    size_t bytes;

    if (argc != 2) {
        fprintf(stderr, "usage: test-shared MODEL_DIR\n");
        return 2;
    }
    if (read_rollup(&before) < 0) {
        printf("test-shared: /proc/self/smaps_rollup unavailable, skipping\n");
        return 77;
    }
    if (pipe(ready) < 0 || pipe(go) < 0 || pipe(res) < 0)
        return 1;

    a = fork();
    if (a == 0) {   /* A: load, touch, report ready, wait for the go to exit */
        struct vl2_weights *w = NULL;
        c = load_and_touch(argv[1], &w, &bytes) < 0 ? 'E' : 'R';
        if (write(ready[1], &c, 1) != 1)
            _exit(1);
        if (read(go[0], &c, 1) < 0)
            _exit(1);
        vl2_weights_close(w);
        _exit(0);
    }
    if (read(ready[0], &c, 1) != 1 || c != 'R') {
        fprintf(stderr, "process A failed to load the model\n");
        return 1;
    }

    b = fork();
    if (b == 0) {   /* B: measure around its own load */
        struct vl2_weights *w = NULL;
        memset(r, 0, sizeof(r));
        read_rollup(&before);
        if (load_and_touch(argv[1], &w, &bytes) == 0) {
            read_rollup(&after);
            r[0] = after.rss - before.rss;
            r[1] = after.pss - before.pss;
            /* a file just written may still be dirty in the page cache */
            r[2] = (after.shared_clean + after.shared_dirty) -
                   (before.shared_clean + before.shared_dirty);
            r[3] = (after.private_clean + after.private_dirty) -
                   (before.private_clean + before.private_dirty);
            r[4] = (long long) bytes / 1024;
            r[5] = 1;
        }
        if (write(res[1], r, sizeof(r)) != (ssize_t) sizeof(r))
            _exit(1);
        vl2_weights_close(w);
        _exit(0);
    }
    if (read(res[0], r, sizeof(r)) != (ssize_t) sizeof(r) || !r[5]) {
        fprintf(stderr, "process B failed\n");
        return 1;
    }
    c = 'X';
    if (write(go[1], &c, 1) != 1)
        return 1;
    waitpid(a, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    waitpid(b, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);

    printf("second process: tensors %lld kB; rss +%lld kB, pss +%lld kB, shared +%lld kB, "
           "private +%lld kB\n", r[4], r[0], r[1], r[2], r[3]);
    /* every touched page is resident in B and shared with A */
    CHECK(r[0] >= r[4] * 9 / 10);
    CHECK(r[2] >= r[4] * 9 / 10);
    /* shared by two: about half of it is charged to B */
    CHECK(r[1] <= r[4] * 6 / 10 + 2048);
    /* almost no private memory: the tensor table and malloc slack only */
    CHECK(r[3] <= r[4] / 50 + 2048);
    return check_report("test-shared");
}

/* test-tok-cancel.c - a long text's encode notices cancellation (issue 18):
 * with vl2_tokenizer_set_cancel, the encode of an 8 MiB text of words asks
 * the hook while it runs and, once the hook says so, ends with
 * VL2_ECANCELED long before the whole text would be tokenized; a hook that
 * never cancels changes no id; a cleared hook is not asked; a hook set on
 * another thread does not reach this one.
 *
 * usage: test-tok-cancel TOKENIZER_DIR */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../common/check.h"
#include "tokenizer.h"

#define TEXT_BYTES ((size_t) 8 << 20)

static atomic_int asked;

static bool cancel_at_once(void *ud)
{
    (void) ud;
    atomic_fetch_add(&asked, 1);
    return true;
}

static bool never_cancel(void *ud)
{
    (void) ud;
    atomic_fetch_add(&asked, 1);
    return false;
}

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double) ts.tv_sec + (double) ts.tv_nsec * 1e-9;
}

static void *set_elsewhere(void *arg)
{
    (void) arg;
    vl2_tokenizer_set_cancel(cancel_at_once, NULL);
    return NULL;
}

int main(int argc, char **argv)
{
    static const char *words[] = { "the ", "quick ", "brown ", "fox, ", "jumps ", "over ",
                                   "42 ", "lazy ", "dogs.\n" };
    struct vl2_tokenizer *tok = NULL;
    struct vl2_err err = { 0 };
    int32_t *ids = NULL, *ids2 = NULL;
    size_t n = 0, n2 = 0, len = 0, k = 0;
    double t0, t_full, t_cancel;
    pthread_t th;
    char *text;
    int r;

    if (argc != 2) {
        fprintf(stderr, "usage: test-tok-cancel TOKENIZER_DIR\n");
        return 2;
    }
    if (vl2_tokenizer_load(&tok, argv[1], &err) < 0) {
        fprintf(stderr, "test-tok-cancel: %s\n", err.msg);
        return 1;
    }
    text = malloc(TEXT_BYTES + 16);
    while (len < TEXT_BYTES) {
        size_t w = strlen(words[k % 9]);

        memcpy(text + len, words[k++ % 9], w);
        len += w;
    }

    /* the whole text, no hook */
    t0 = now_s();
    CHECK(vl2_tokenizer_encode(tok, text, len, &ids, &n, &err) == 0);
    t_full = now_s() - t0;
    CHECK(n > len / 16);

    /* a hook that never cancels: asked, the same ids */
    vl2_tokenizer_set_cancel(never_cancel, NULL);
    CHECK(vl2_tokenizer_encode(tok, text, len, &ids2, &n2, &err) == 0);
    CHECK_MSG(atomic_load(&asked) > 0, "the hook was never asked");
    CHECK(n2 == n && ids && ids2 && !memcmp(ids, ids2, n * sizeof(*ids)));
    free(ids2);
    ids2 = NULL;

    /* a hook that cancels: VL2_ECANCELED, quickly */
    vl2_tokenizer_set_cancel(cancel_at_once, NULL);
    atomic_store(&asked, 0);
    t0 = now_s();
    r = vl2_tokenizer_encode(tok, text, len, &ids2, &n2, &err);
    t_cancel = now_s() - t0;
    CHECK_MSG(r == VL2_ECANCELED, "encode returned %d (%s)", r, err.msg);
    CHECK_EQ_INT(atomic_load(&asked), 1);
    CHECK_MSG(t_cancel < t_full / 5, "cancelled after %.3f s; the whole text takes %.3f s",
              t_cancel, t_full);
    printf("tok-cancel: whole text %.3f s, cancelled in %.6f s\n", t_full, t_cancel);
    if (r == 0)
        free(ids2);

    /* cleared: not asked; a hook set on another thread: not this one's */
    vl2_tokenizer_set_cancel(NULL, NULL);
    pthread_create(&th, NULL, set_elsewhere, NULL);
    pthread_join(th, NULL);
    atomic_store(&asked, 0);
    ids2 = NULL;
    CHECK(vl2_tokenizer_encode(tok, text, 4096, &ids2, &n2, &err) == 0);
    CHECK_EQ_INT(atomic_load(&asked), 0);
    free(ids2);

    free(ids);
    free(text);
    vl2_tokenizer_free(tok);
    fprintf(stderr, "test-tok-cancel: %d check(s) failed\n", check_failures);
    return check_failures ? 1 : 0;
}

/* pool.c - the CPU backend's worker threads.
 *
 * cpu_pool_run() hands out task indices through an atomic counter to the
 * caller (tid 0) and n_threads - 1 workers.  Workers spin briefly after a
 * job (the next op of a decode step follows within microseconds), then
 * sleep on a condition variable, so an idle daemon uses no CPU.
 */
#include <errno.h>
#include <stdlib.h>

#include "cpu-impl.h"

#define SPIN_ITERS 20000

struct cpu_pool {
    int              n;        /* threads including the caller */
    pthread_t       *th;
    int              n_started;
    pthread_mutex_t  mu;
    pthread_cond_t   cv_work;
    pthread_cond_t   cv_done;
    _Atomic uint64_t gen;      /* bumped for each job */
    _Atomic int      pending;  /* workers still inside the current job */
    _Atomic int64_t  next;     /* next task index */
    int              stop;
    int              sleeping_caller;
    cpu_task_fn      fn;
    void            *arg;
    int64_t          n_tasks;
};

struct worker_arg {
    struct cpu_pool *p;
    int              tid;
};

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static void drain(struct cpu_pool *p, int tid)
{
    for (;;) {
        int64_t i = atomic_fetch_add_explicit(&p->next, 1, memory_order_relaxed);
        if (i >= p->n_tasks)
            break;
        p->fn(p->arg, i, tid);
    }
}

static void *worker_main(void *v)
{
    struct worker_arg wa = *(struct worker_arg *)v;
    struct cpu_pool *p = wa.p;
    uint64_t seen = 0;

    free(v);
    for (;;) {
        uint64_t g;
        int spins = 0;

        while ((g = atomic_load_explicit(&p->gen, memory_order_acquire)) == seen &&
               spins < SPIN_ITERS) {
            cpu_relax();
            spins++;
        }
        if (g == seen) {
            pthread_mutex_lock(&p->mu);
            while ((g = atomic_load(&p->gen)) == seen && !p->stop)
                pthread_cond_wait(&p->cv_work, &p->mu);
            pthread_mutex_unlock(&p->mu);
        }
        if (p->stop && g == seen)
            break;
        seen = g;
        drain(p, wa.tid);
        if (atomic_fetch_sub_explicit(&p->pending, 1, memory_order_acq_rel) == 1) {
            pthread_mutex_lock(&p->mu);
            if (p->sleeping_caller)
                pthread_cond_signal(&p->cv_done);
            pthread_mutex_unlock(&p->mu);
        }
    }
    return NULL;
}

int cpu_pool_new(struct cpu_pool **ret, int n_threads)
{
    struct cpu_pool *p;
    int i;

    if (n_threads < 1)
        n_threads = 1;
    p = calloc(1, sizeof(*p));
    if (!p)
        return VL2_ENOMEM;
    p->n = n_threads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv_work, NULL);
    pthread_cond_init(&p->cv_done, NULL);
    if (n_threads > 1) {
        p->th = calloc((size_t)n_threads, sizeof(*p->th));
        if (!p->th)
            goto out_free;
    }
    for (i = 1; i < n_threads; i++) {
        struct worker_arg *wa = malloc(sizeof(*wa));
        if (!wa)
            goto out_free;
        wa->p = p;
        wa->tid = i;
        if (pthread_create(&p->th[i], NULL, worker_main, wa) != 0) {
            free(wa);
            goto out_free;
        }
        p->n_started++;
    }
    *ret = p;
    return 0;

out_free:
    cpu_pool_free(p);
    return VL2_ENOMEM;
}

void cpu_pool_free(struct cpu_pool *p)
{
    int i;

    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_cond_broadcast(&p->cv_work);
    pthread_mutex_unlock(&p->mu);
    for (i = 1; i <= p->n_started; i++)
        pthread_join(p->th[i], NULL);
    pthread_cond_destroy(&p->cv_work);
    pthread_cond_destroy(&p->cv_done);
    pthread_mutex_destroy(&p->mu);
    free(p->th);
    free(p);
}

void cpu_pool_run(struct cpu_pool *p, int64_t n_tasks, cpu_task_fn fn, void *arg)
{
    int spins = 0;
    int64_t i;

    if (n_tasks <= 0)
        return;
    if (p->n == 1 || n_tasks == 1) {
        for (i = 0; i < n_tasks; i++)
            fn(arg, i, 0);
        return;
    }
    p->fn = fn;
    p->arg = arg;
    p->n_tasks = n_tasks;
    atomic_store_explicit(&p->next, 0, memory_order_relaxed);
    atomic_store_explicit(&p->pending, p->n - 1, memory_order_relaxed);
    pthread_mutex_lock(&p->mu);
    atomic_fetch_add_explicit(&p->gen, 1, memory_order_release);
    pthread_cond_broadcast(&p->cv_work);
    pthread_mutex_unlock(&p->mu);

    drain(p, 0);

    while (atomic_load_explicit(&p->pending, memory_order_acquire) != 0 && spins < SPIN_ITERS) {
        cpu_relax();
        spins++;
    }
    if (atomic_load_explicit(&p->pending, memory_order_acquire) != 0) {
        pthread_mutex_lock(&p->mu);
        p->sleeping_caller = 1;
        while (atomic_load(&p->pending) != 0)
            pthread_cond_wait(&p->cv_done, &p->mu);
        p->sleeping_caller = 0;
        pthread_mutex_unlock(&p->mu);
    }
}

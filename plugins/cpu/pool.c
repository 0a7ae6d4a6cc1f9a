/* pool.c - the CPU backend's worker threads.
 *
 * cpu_pool_run() publishes a job and hands out task indices through an atomic
 * counter to the caller (tid 0) and to whichever workers join in time.  The
 * caller never waits for a worker that has not joined: when the machine is
 * busy and a worker is not scheduled, the caller simply runs more tasks
 * itself.  A job's state word is (generation << 32) | closed bit | joined
 * workers; workers join with a compare-and-swap while the job is open, and
 * the caller closes it once no worker is inside, so a late worker can never
 * run tasks of a job it did not join.  Workers spin briefly after a job (the
 * next op of a decode step follows within microseconds), then sleep on a
 * condition variable, so an idle daemon uses no CPU.
 */
#include <stdlib.h>

#include "cpu-impl.h"

#define SPIN_ITERS 4000       /* workers waiting for the next job */
#define CALLER_SPIN_ITERS 600  /* caller waiting for workers still inside the job: short,
                                  so that a worker descheduled mid-task gets our core soon */
#define CLOSED     (1ull << 31)
#define ACTIVE     (CLOSED - 1)

struct cpu_pool {
    int              n;        /* threads including the caller */
    pthread_t       *th;
    int              n_started;
    pthread_mutex_t  mu;
    pthread_cond_t   cv_work;
    pthread_cond_t   cv_done;
    _Atomic uint64_t state;    /* gen << 32 | CLOSED | joined workers */
    _Atomic int64_t  next;     /* next task index */
    _Atomic int      stop;
    _Atomic int      n_sleeping;
    _Atomic int      caller_sleeping;
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
    uint64_t seen = atomic_load(&p->state) >> 32;

    free(v);
    for (;;) {
        uint64_t s = atomic_load_explicit(&p->state, memory_order_acquire);
        int spins = 0;

        while ((s >> 32) == seen && !atomic_load_explicit(&p->stop, memory_order_relaxed)) {
            if (spins < SPIN_ITERS) {
                cpu_relax();
                spins++;
            } else {
                pthread_mutex_lock(&p->mu);
                atomic_fetch_add(&p->n_sleeping, 1);
                while ((atomic_load(&p->state) >> 32) == seen && !atomic_load(&p->stop))
                    pthread_cond_wait(&p->cv_work, &p->mu);
                atomic_fetch_sub(&p->n_sleeping, 1);
                pthread_mutex_unlock(&p->mu);
            }
            s = atomic_load_explicit(&p->state, memory_order_acquire);
        }
        if (atomic_load(&p->stop))
            break;
        seen = s >> 32;
        /* join the job if it is still open */
        while (!(s & CLOSED) && (s >> 32) == seen) {
            if (atomic_compare_exchange_weak_explicit(&p->state, &s, s + 1, memory_order_acq_rel,
                                                      memory_order_acquire)) {
                drain(p, wa.tid);
                s = atomic_fetch_sub(&p->state, 1);  /* seq_cst: pairs with caller_sleeping */
                if ((s & ACTIVE) == 1 && atomic_load(&p->caller_sleeping)) {
                    pthread_mutex_lock(&p->mu);
                    pthread_cond_signal(&p->cv_done);
                    pthread_mutex_unlock(&p->mu);
                }
                break;
            }
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
    atomic_store(&p->state, CLOSED);
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
    atomic_store(&p->stop, 1);
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
    uint64_t s, gen;
    int spins = 0;

    if (n_tasks <= 0)
        return;
    if (p->n == 1 || n_tasks == 1) {
        for (int64_t i = 0; i < n_tasks; i++)
            fn(arg, i, 0);
        return;
    }
    /* the previous job is closed: no worker reads these now */
    p->fn = fn;
    p->arg = arg;
    p->n_tasks = n_tasks;
    atomic_store_explicit(&p->next, 0, memory_order_relaxed);
    gen = (atomic_load(&p->state) >> 32) + 1;
    atomic_store(&p->state, gen << 32);  /* seq_cst: pairs with n_sleeping */
    if (atomic_load(&p->n_sleeping) > 0) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->cv_work);
        pthread_mutex_unlock(&p->mu);
    }

    drain(p, 0);

    /* close the job once no worker is inside it */
    s = atomic_load_explicit(&p->state, memory_order_acquire);
    for (;;) {
        if ((s & ACTIVE) == 0) {
            if (atomic_compare_exchange_weak_explicit(&p->state, &s, s | CLOSED,
                                                      memory_order_acq_rel,
                                                      memory_order_acquire))
                break;
            continue;
        }
        if (spins < CALLER_SPIN_ITERS) {
            cpu_relax();
            spins++;
        } else {
            pthread_mutex_lock(&p->mu);
            atomic_store(&p->caller_sleeping, 1);
            while (atomic_load(&p->state) & ACTIVE)
                pthread_cond_wait(&p->cv_done, &p->mu);
            atomic_store(&p->caller_sleeping, 0);
            pthread_mutex_unlock(&p->mu);
        }
        s = atomic_load_explicit(&p->state, memory_order_acquire);
    }
}

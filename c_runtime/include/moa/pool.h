/* A worker pool the caller owns: cores as one more level onto which a dimension is lifted
 * (the paper's Pi = cores). The caller starts it once, before any run, and gives it to the
 * model's run; nothing is allocated while the model runs (the threads' stacks are made by
 * moa_pool_init). NULL, or a pool of one thread, runs everything on the caller's thread.
 *
 *     moa_pool_for(pool, items, task, ctx):  thread t of T runs task(ctx, first, end, t) on
 *                                            first = items t / T, end = items (t + 1) / T
 *
 * (t picks the thread's own scratch: a kernel's scratch is planned once per thread in the arena.)
 *
 * The partition is static, so which thread computes an item never changes what it computes:
 * outputs are bitwise the same for every thread count. Thread 0 is the caller's, and it runs a
 * job of one item alone.
 * Without POSIX threads (bare metal) the pool is sequential: one thread, the caller's. */
#ifndef MOA_POOL_H
#define MOA_POOL_H

#include <stddef.h>

#include "moa/status.h"

#if !defined(MOA_POOL_SEQUENTIAL) && (defined(__linux__) || defined(__APPLE__))
#define MOA_POOL_PTHREADS 1
#include <pthread.h>
#else
#define MOA_POOL_PTHREADS 0
#endif

#define MOA_POOL_MAX_THREADS 64

typedef void (*moa_pool_task)(void *ctx, size_t first, size_t end, size_t thread);

struct moa_pool;
typedef struct {
    struct moa_pool *pool;
    size_t index; /* 1 .. threads - 1 */
} moa_pool_worker;

typedef struct moa_pool {
    size_t threads; /* the workers and the caller */
#if MOA_POOL_PTHREADS
    pthread_t workers[MOA_POOL_MAX_THREADS - 1];
    moa_pool_worker worker[MOA_POOL_MAX_THREADS - 1];
    pthread_mutex_t lock;
    pthread_cond_t wake;  /* a job, or the stop, for the workers */
    pthread_cond_t idle;  /* the last worker finished its share */
    unsigned long job;    /* counts the jobs given: each worker runs every one once */
    size_t busy;          /* workers still on the current job */
    int stopping;
    moa_pool_task task;
    void *ctx;
    size_t items;
#endif
} moa_pool;

/* Starts threads - 1 workers (threads <= MOA_POOL_MAX_THREADS; 0 is taken as 1). Without
 * POSIX threads every pool has one thread. MOA_ERR_BAD_PARAMS for too many threads, or
 * when the system refuses a thread (the pool is then left stopped, with none running). */
moa_status moa_pool_init(moa_pool *pool, size_t threads);

/* Stops and joins the workers. */
void moa_pool_destroy(moa_pool *pool);

/* The threads of a pool: 1 for NULL. */
size_t moa_pool_threads(const moa_pool *pool);

/* Runs task over items 0 .. items - 1, split as above, and returns when every share is done.
 * Each thread's share is called once, and not at all when it is empty. */
void moa_pool_for(moa_pool *pool, size_t items, moa_pool_task task, void *ctx);

#endif

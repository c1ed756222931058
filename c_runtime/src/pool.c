/* The worker pool (moa/pool.h): a job is published under the lock, each worker runs its
 * static share of it, and the caller, after its own share, waits for the last worker.
 * Both sides spin a little before they sleep: a model's jobs follow one another within
 * microseconds, and a futex wake-up costs tens of them (more on a virtual machine). */
#include "moa/pool.h"

static void run_share(moa_pool_task task, void *ctx, size_t items, size_t index, size_t threads)
{
    const size_t first = items * index / threads, end = items * (index + 1) / threads;
    if (first < end) {
        task(ctx, first, end, index);
    }
}

size_t moa_pool_threads(const moa_pool *pool)
{
    return pool == NULL || pool->threads == 0 ? 1 : pool->threads;
}

#if MOA_POOL_PTHREADS
/* Polls before a thread sleeps: tens of microseconds (a pause is 10 to 140 cycles, by CPU). */
#define SPINS 4096

static void relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static unsigned long load(const unsigned long *value)
{
    return __atomic_load_n(value, __ATOMIC_ACQUIRE);
}

/* Spins until a job other than `done` (or the stop) is published; 1 if one was seen. */
static int spin_for_job(moa_pool *pool, unsigned long done)
{
    int k;
    for (k = 0; k < SPINS; k++) {
        if (load(&pool->job) != done || __atomic_load_n(&pool->stopping, __ATOMIC_ACQUIRE)) {
            return 1;
        }
        relax();
    }
    return 0;
}

static void *work(void *arg)
{
    const moa_pool_worker *self = (const moa_pool_worker *)arg;
    moa_pool *pool = self->pool;
    unsigned long done = 0;
    for (;;) {
        if (!spin_for_job(pool, done)) {
            pthread_mutex_lock(&pool->lock);
            while (load(&pool->job) == done && !pool->stopping) {
                pthread_cond_wait(&pool->wake, &pool->lock);
            }
            pthread_mutex_unlock(&pool->lock);
        }
        if (__atomic_load_n(&pool->stopping, __ATOMIC_ACQUIRE)) {
            return NULL;
        }
        /* task, ctx and items were written before job (release): they are this job's, and stay
         * so until every worker has counted itself out of busy. */
        done = load(&pool->job);
        run_share(pool->task, pool->ctx, pool->items, self->index, pool->threads);
        if (__atomic_sub_fetch(&pool->busy, 1, __ATOMIC_ACQ_REL) == 0) {
            pthread_mutex_lock(&pool->lock); /* the caller is spinning, or waits on idle under the lock */
            pthread_cond_signal(&pool->idle);
            pthread_mutex_unlock(&pool->lock);
        }
    }
}

static void stop(moa_pool *pool, size_t started)
{
    size_t k;
    pthread_mutex_lock(&pool->lock);
    __atomic_store_n(&pool->stopping, 1, __ATOMIC_RELEASE);
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->lock);
    for (k = 0; k < started; k++) {
        pthread_join(pool->workers[k], NULL);
    }
    pthread_cond_destroy(&pool->idle);
    pthread_cond_destroy(&pool->wake);
    pthread_mutex_destroy(&pool->lock);
    pool->threads = 1;
}

moa_status moa_pool_init(moa_pool *pool, size_t threads)
{
    size_t k;
    if (pool == NULL) {
        return MOA_ERR_NULL_ARGUMENT;
    }
    pool->threads = 1, pool->job = 0, pool->busy = 0, pool->stopping = 0;
    pool->task = NULL, pool->ctx = NULL, pool->items = 0;
    if (threads > MOA_POOL_MAX_THREADS) {
        return MOA_ERR_BAD_PARAMS;
    }
    pthread_mutex_init(&pool->lock, NULL);
    pthread_cond_init(&pool->wake, NULL);
    pthread_cond_init(&pool->idle, NULL);
    pool->threads = threads ? threads : 1;
    for (k = 0; k + 1 < pool->threads; k++) {
        pool->worker[k].pool = pool, pool->worker[k].index = k + 1;
        if (pthread_create(&pool->workers[k], NULL, work, &pool->worker[k]) != 0) {
            stop(pool, k);
            return MOA_ERR_BAD_PARAMS;
        }
    }
    return MOA_OK;
}

void moa_pool_destroy(moa_pool *pool)
{
    if (pool != NULL && pool->threads > 1) {
        stop(pool, pool->threads - 1);
    }
}

void moa_pool_for(moa_pool *pool, size_t items, moa_pool_task task, void *ctx)
{
    const size_t threads = moa_pool_threads(pool);
    if (threads == 1 || items < 2) {
        run_share(task, ctx, items, 0, 1);
        return;
    }
    int k;
    pthread_mutex_lock(&pool->lock);
    pool->task = task, pool->ctx = ctx, pool->items = items;
    __atomic_store_n(&pool->busy, threads - 1, __ATOMIC_RELAXED);
    __atomic_store_n(&pool->job, pool->job + 1, __ATOMIC_RELEASE);
    pthread_cond_broadcast(&pool->wake); /* a system call only when a worker sleeps */
    pthread_mutex_unlock(&pool->lock);
    run_share(task, ctx, items, 0, threads);
    for (k = 0; k < SPINS && __atomic_load_n(&pool->busy, __ATOMIC_ACQUIRE) != 0; k++) {
        relax();
    }
    if (__atomic_load_n(&pool->busy, __ATOMIC_ACQUIRE) != 0) {
        pthread_mutex_lock(&pool->lock);
        while (__atomic_load_n(&pool->busy, __ATOMIC_ACQUIRE) != 0) {
            pthread_cond_wait(&pool->idle, &pool->lock);
        }
        pthread_mutex_unlock(&pool->lock);
    }
}
#else
moa_status moa_pool_init(moa_pool *pool, size_t threads)
{
    if (pool == NULL) {
        return MOA_ERR_NULL_ARGUMENT;
    }
    pool->threads = 1;
    return threads > MOA_POOL_MAX_THREADS ? MOA_ERR_BAD_PARAMS : MOA_OK;
}

void moa_pool_destroy(moa_pool *pool)
{
    (void)pool;
}

void moa_pool_for(moa_pool *pool, size_t items, moa_pool_task task, void *ctx)
{
    (void)pool;
    run_share(task, ctx, items, 0, 1);
}
#endif

/* The worker pool (moa/pool.h): a job is published under the lock, each worker runs its
 * static share of it, and the caller, after its own share, waits for the last worker. */
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
static void *work(void *arg)
{
    const moa_pool_worker *self = (const moa_pool_worker *)arg;
    moa_pool *pool = self->pool;
    unsigned long done = 0;
    pthread_mutex_lock(&pool->lock);
    for (;;) {
        moa_pool_task task;
        void *ctx;
        size_t items;
        while (pool->job == done && !pool->stopping) {
            pthread_cond_wait(&pool->wake, &pool->lock);
        }
        if (pool->stopping) {
            break;
        }
        done = pool->job, task = pool->task, ctx = pool->ctx, items = pool->items;
        pthread_mutex_unlock(&pool->lock);
        run_share(task, ctx, items, self->index, pool->threads);
        pthread_mutex_lock(&pool->lock);
        if (--pool->busy == 0) {
            pthread_cond_signal(&pool->idle);
        }
    }
    pthread_mutex_unlock(&pool->lock);
    return NULL;
}

static void stop(moa_pool *pool, size_t started)
{
    size_t k;
    pthread_mutex_lock(&pool->lock);
    pool->stopping = 1;
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
    pthread_mutex_lock(&pool->lock);
    pool->task = task, pool->ctx = ctx, pool->items = items;
    pool->busy = threads - 1;
    pool->job++;
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->lock);
    run_share(task, ctx, items, 0, threads);
    pthread_mutex_lock(&pool->lock);
    while (pool->busy != 0) {
        pthread_cond_wait(&pool->idle, &pool->lock);
    }
    pthread_mutex_unlock(&pool->lock);
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

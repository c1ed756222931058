/* Token sampling of sampling.h: PCG32, greedy argmax, and the temperature / top-k / top-p
 * warpers followed by one inverse-CDF draw.
 *
 * Rankings use binary heaps over index_work (no qsort: glibc's may allocate): top-k keeps a heap
 * of the k best tokens with the worst on top (O(V log k)); top-p heapifies the candidates with
 * the best on top and pops only as many as the nucleus holds (O(V + kept log V)). Both compare
 * by score, then by token id, a total order, so the result never depends on the heap's shape. */
#include <math.h>
#include <stddef.h>

#include "moa/sampling.h"

#define PCG32_MULTIPLIER 6364136223846793005ULL

uint32_t moa_rng_next_u32(moa_rng *rng)
{
    const uint64_t old = rng->state;
    const uint32_t xorshifted = (uint32_t)(((old >> 18u) ^ old) >> 27u);
    const uint32_t rot = (uint32_t)(old >> 59u);
    rng->state = old * PCG32_MULTIPLIER + (rng->inc | 1u);
    return (xorshifted >> rot) | (xorshifted << ((32u - rot) & 31u));
}

void moa_rng_seed(moa_rng *rng, uint64_t seed)
{
    rng->state = 0u;
    rng->inc = ((uint64_t)MOA_RNG_STREAM << 1u) | 1u;
    (void)moa_rng_next_u32(rng);
    rng->state += seed;
    (void)moa_rng_next_u32(rng);
}

double moa_rng_uniform(moa_rng *rng)
{
    return (double)moa_rng_next_u32(rng) * (1.0 / 4294967296.0);
}

int32_t moa_argmax_f32(const float *logits, int32_t vocab)
{
    int32_t best = 0, i;
    if (logits == NULL || vocab < 1) {
        return -1;
    }
    for (i = 0; i < vocab; i++) {
        if (isnan(logits[i])) {
            return i;
        }
        if (logits[i] > logits[best]) {
            best = i;
        }
    }
    return best;
}

/* Whether token a ranks before token b: a higher score, or the same score and a lower id. */
static int ranks_before(const float *score, int32_t a, int32_t b)
{
    return score[a] > score[b] || (score[a] == score[b] && a < b);
}

/* Moves heap[at] down until every parent ranks before its children (worst_on_top = 0) or after
 * them (worst_on_top = 1), in heap[0..n). */
static void sift_down(const float *score, int32_t *heap, size_t n, size_t at, int worst_on_top)
{
    for (;;) {
        const size_t left = 2 * at + 1, right = left + 1;
        size_t top = at;
        int32_t held;
        if (left < n && ranks_before(score, heap[left], heap[top]) != worst_on_top) {
            top = left;
        }
        if (right < n && ranks_before(score, heap[right], heap[top]) != worst_on_top) {
            top = right;
        }
        if (top == at) {
            return;
        }
        held = heap[at];
        heap[at] = heap[top];
        heap[top] = held;
        at = top;
    }
}

static void heapify(const float *score, int32_t *heap, size_t n, int worst_on_top)
{
    size_t at = n / 2;
    while (at-- > 0) {
        sift_down(score, heap, n, at, worst_on_top);
    }
}

/* The k-th largest score (counting repeated values), 0 < k < vocab. */
static float kth_largest(const float *score, int32_t vocab, int32_t k, int32_t *heap)
{
    int32_t i;
    for (i = 0; i < k; i++) {
        heap[i] = i;
    }
    heapify(score, heap, (size_t)k, 1);
    for (; i < vocab; i++) {
        if (ranks_before(score, i, heap[0])) {
            heap[0] = i;
            sift_down(score, heap, (size_t)k, 0, 1);
        }
    }
    return score[heap[0]];
}

/* Top-p over the tokens not yet removed (score > -inf): sets to -inf every score outside the
 * shortest best-first prefix whose probability exp(score - max) / Z reaches top_p. */
static void keep_nucleus(float *score, int32_t vocab, float max, double top_p, int32_t *heap)
{
    size_t n = 0, k;
    int32_t i;
    double z = 0.0, cumulative = 0.0;
    for (i = 0; i < vocab; i++) {
        if (score[i] > -INFINITY) {
            heap[n++] = i;
            z += exp((double)score[i] - (double)max);
        }
    }
    heapify(score, heap, n, 0);
    while (n > 0) {
        cumulative += exp((double)score[heap[0]] - (double)max) / z;
        heap[0] = heap[--n];
        sift_down(score, heap, n, 0, 0);
        if (cumulative >= top_p) {
            break;
        }
    }
    for (k = 0; k < n; k++) { /* what was never popped */
        score[heap[k]] = -INFINITY;
    }
}

static moa_status check_params(const float *logits, int32_t vocab, const moa_sampling *params, const float *work,
                               const int32_t *index_work)
{
    if (logits == NULL || params == NULL || work == NULL || index_work == NULL) {
        return MOA_ERR_NULL_ARGUMENT;
    }
    if (vocab < 1 || !(params->temperature >= 0.0f) || isinf(params->temperature) || params->top_k < 0 ||
        !(params->top_p > 0.0f && params->top_p <= 1.0f)) { /* the negated forms also refuse NaN */
        return MOA_ERR_BAD_PARAMS;
    }
    return MOA_OK;
}

/* Steps 1-4 of sampling.h for temperature > 0: the weights into w (which may be logits) and
 * their sum, in token-id order, into *total. */
static moa_status sampling_weights(const float *logits, int32_t vocab, const moa_sampling *params, float *w,
                                   int32_t *index_work, double *total)
{
    float max = -INFINITY;
    int32_t i;
    for (i = 0; i < vocab; i++) {
        const float scaled = logits[i] / params->temperature;
        if (isnan(scaled) || scaled == INFINITY) {
            return MOA_ERR_BAD_PARAMS;
        }
        w[i] = scaled;
        if (scaled > max) {
            max = scaled;
        }
    }
    if (max == -INFINITY) {
        return MOA_ERR_BAD_PARAMS;
    }
    if (params->top_k > 0 && params->top_k < vocab) {
        const float kth = kth_largest(w, vocab, params->top_k, index_work);
        for (i = 0; i < vocab; i++) {
            if (w[i] < kth) {
                w[i] = -INFINITY;
            }
        }
    }
    if (params->top_p < 1.0f) {
        keep_nucleus(w, vocab, max, (double)params->top_p, index_work);
    }
    /* Both warpers keep the best token, so max is still the kept maximum: weights are <= 1. */
    *total = 0.0;
    for (i = 0; i < vocab; i++) {
        w[i] = (float)exp((double)w[i] - (double)max);
        *total += w[i];
    }
    return MOA_OK;
}

moa_status moa_sample_f32(const float *logits, int32_t vocab, const moa_sampling *params, moa_rng *rng,
                          float *work, int32_t *index_work, int32_t *token)
{
    double total, target, cumulative = 0.0;
    int32_t i;
    moa_status status = check_params(logits, vocab, params, work, index_work);
    if (status != MOA_OK) {
        return status;
    }
    if (rng == NULL || token == NULL) {
        return MOA_ERR_NULL_ARGUMENT;
    }
    if (params->temperature == 0.0f) {
        *token = moa_argmax_f32(logits, vocab);
        return MOA_OK;
    }
    status = sampling_weights(logits, vocab, params, work, index_work, &total);
    if (status != MOA_OK) {
        return status;
    }
    /* u <= 1 - 2^-32 keeps target below total, and the running sum repeats total's additions
     * exactly, so the loop always stops, at a token of positive weight. */
    target = moa_rng_uniform(rng) * total;
    for (i = 0; i < vocab; i++) {
        cumulative += work[i];
        if (cumulative > target) {
            break;
        }
    }
    *token = i < vocab ? i : moa_argmax_f32(work, vocab);
    return MOA_OK;
}

moa_status moa_sampling_probs_f32(const float *logits, int32_t vocab, const moa_sampling *params, float *probs,
                                  int32_t *index_work)
{
    double total;
    int32_t i;
    moa_status status = check_params(logits, vocab, params, probs, index_work);
    if (status != MOA_OK) {
        return status;
    }
    if (params->temperature == 0.0f) {
        const int32_t best = moa_argmax_f32(logits, vocab); /* before probs overwrites logits */
        for (i = 0; i < vocab; i++) {
            probs[i] = i == best ? 1.0f : 0.0f;
        }
        return MOA_OK;
    }
    status = sampling_weights(logits, vocab, params, probs, index_work, &total);
    if (status != MOA_OK) {
        return status;
    }
    for (i = 0; i < vocab; i++) {
        probs[i] = (float)(probs[i] / total);
    }
    return MOA_OK;
}

/* Choosing the next token from a step's logits: greedy, or seeded sampling with temperature,
 * top-k and top-p, as transformers' generate(do_sample=True) does.
 *
 * PRNG: PCG32 (pcg32_random_r of M. E. O'Neill's pcg-c-basic, XSH-RR output, 64-bit LCG state),
 * seeded as pcg32_srandom_r(rng, seed, MOA_RNG_STREAM). moa_rng_seed(&rng, 42) therefore gives
 * the reference sequence pcg32-demo prints (0xa15c02b7 0x7b47f409 ...). The state is the
 * caller's; nothing here keeps any.
 *
 * Sampling, in transformers' order of logits warpers (TemperatureLogitsWarper, TopKLogitsWarper,
 * TopPLogitsWarper, softmax, one multinomial draw):
 *   1. temperature  s[i] = logits[i] / temperature, in float (as torch divides a float32 tensor);
 *   2. top-k        keep every token with s[i] >= the k-th largest s (ties at the k-th value are
 *                   all kept, as transformers keeps them); off when top_k is 0 or >= vocab;
 *   3. top-p        rank the tokens still kept by s, highest first, ties by lower token id
 *                   first; keep the shortest prefix whose cumulative probability reaches top_p
 *                   (at least one token); off when top_p is 1. The probabilities of this step
 *                   are exp(s[i] - max s) / Z in double, Z summed in token-id order, and the
 *                   cumulative sum is taken in rank order;
 *   4. weights      w[i] = (float)exp((double)s[i] - (double)max s) for kept tokens, 0 for the
 *                   others; W = their sum in double, in token-id order;
 *   5. draw         u = moa_rng_uniform (one PCG32 output); the token is the first id i (in id
 *                   order) whose running sum of w, in double, exceeds u * W.
 * moa_edge/harness/sampling.py mirrors every step bit for bit (numpy).
 *
 * Greedy (temperature 0) is moa_argmax_f32 and takes nothing from the rng. Any other temperature
 * takes exactly one PCG32 output per sampled token.
 *
 * Errors: MOA_ERR_NULL_ARGUMENT for a NULL pointer; MOA_ERR_BAD_PARAMS for vocab < 1, a
 * temperature that is negative, NaN or infinite, top_k < 0, top_p outside (0, 1], and, when
 * sampling (temperature > 0), logits whose scaled values contain NaN or +inf or are all -inf
 * (there is no distribution to draw from; transformers' multinomial raises there). A logit of
 * -inf is a token that is never drawn. On an error *token and the rng are left unchanged. */
#ifndef MOA_SAMPLING_H
#define MOA_SAMPLING_H

#include <stdint.h>

#include "moa/status.h"

/* The PCG32 stream (pcg32_srandom_r's initseq) every moa_rng_seed uses: pcg32-demo's. */
#define MOA_RNG_STREAM 54u

typedef struct {
    uint64_t state;
    uint64_t inc; /* odd: (stream << 1) | 1 */
} moa_rng;

/* pcg32_srandom_r(rng, seed, MOA_RNG_STREAM). */
void moa_rng_seed(moa_rng *rng, uint64_t seed);

/* pcg32_random_r: the next 32-bit output. */
uint32_t moa_rng_next_u32(moa_rng *rng);

/* A uniform double in [0, 1): the next output times 2^-32 (exact, 2^32 equally spaced values). */
double moa_rng_uniform(moa_rng *rng);

typedef struct {
    float temperature; /* 0: greedy; otherwise > 0 */
    int32_t top_k;     /* 0: off */
    float top_p;       /* 1: off; otherwise in (0, 1) */
} moa_sampling;

/* Scratch both sampling functions need, in elements, for a vocabulary of `vocab` tokens:
 * `work` holds this many floats and `index_work` this many int32_t. */
#define MOA_SAMPLING_SCRATCH_ELEMS(vocab) ((vocab) > 0 ? (vocab) : 1)

/* The first index of the largest logit, as numpy.argmax and torch.argmax: a NaN counts as larger
 * than every number, so the first NaN wins. -1 when logits is NULL or vocab < 1. */
int32_t moa_argmax_f32(const float *logits, int32_t vocab);

/* Picks the next token into *token (see the top of this file). work and index_work are the
 * caller's scratch of MOA_SAMPLING_SCRATCH_ELEMS(vocab) elements each; work may be logits itself
 * (the logits are then overwritten). */
moa_status moa_sample_f32(const float *logits, int32_t vocab, const moa_sampling *params, moa_rng *rng,
                          float *work, int32_t *index_work, int32_t *token);

/* The distribution moa_sample_f32 draws from: probs[i] = w[i] / W (steps 1-4), 0 for every
 * token the warpers removed; for temperature 0, 1 at moa_argmax_f32 and 0 elsewhere. probs is
 * also the float scratch (vocab elements) and may be logits itself. */
moa_status moa_sampling_probs_f32(const float *logits, int32_t vocab, const moa_sampling *params, float *probs,
                                  int32_t *index_work);

#endif

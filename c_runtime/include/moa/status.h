/* Status codes returned by every moa-edge runtime and model entry point. */
#ifndef MOA_STATUS_H
#define MOA_STATUS_H

typedef enum {
    MOA_OK = 0,
    MOA_ERR_NULL_ARGUMENT = 1, /* a required pointer was NULL */
    MOA_ERR_ARENA_TOO_SMALL = 2, /* arena_bytes < <PREFIX>_ARENA_BYTES */
    MOA_ERR_ARENA_MISALIGNED = 3, /* arena not aligned to MOA_ARENA_ALIGN */
    MOA_ERR_BAD_PARAMS = 4, /* inconsistent kernel parameters */
    MOA_ERR_INDEX_OUT_OF_RANGE = 5, /* a run-time index (Gather, token id) outside its axis */
    MOA_ERR_CONTEXT_FULL = 6, /* the tokens would pass the key/value cache's max context */
    MOA_ERR_STATE_UNINITIALISED = 7 /* a decoder's state that <prefix>_init did not set up */
} moa_status;

/* A test for an error path: generated code marks each one unlikely. Without it, gcc's
 * guessed profile halves at every `if (status != MOA_OK) return` of a long schedule, judges
 * the later layers' loops cold, and neither inlines nor vectorises them. */
#if defined(__GNUC__) || defined(__clang__)
#define MOA_UNLIKELY(cond) __builtin_expect(!!(cond), 0)
#else
#define MOA_UNLIKELY(cond) (cond)
#endif

/* Alignment the caller must give the arena. */
#define MOA_ARENA_ALIGN 16u

#endif

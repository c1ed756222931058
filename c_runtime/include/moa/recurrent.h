/* ONNX's recurrent ops over fp32: RNN, GRU and LSTM, one layer, forward, reverse or both
 * directions (scalar C99 reference kernel, c_runtime/src/recurrent.c).
 *
 * Shapes (G gates: 1 for RNN, 3 for GRU in the order z r h, 4 for LSTM in the order i o f c;
 * D directions; S steps; N batch; I input size; H hidden size):
 *   W [D, G*H, I]   R [D, G*H, H]   B [D, 2*G*H] (Wb then Rb)   P [D, 3*H] (LSTM peepholes, i o f)
 *   layout 0: X [S, N, I], Y [S, D, N, H], initial_h, initial_c, Y_h, Y_c [D, N, H]
 *   layout 1: X [N, S, I], Y [N, S, D, H], initial_h, initial_c, Y_h, Y_c [N, D, H]
 * B, P, initial_h and initial_c may be NULL (zeros), and so may each of Y, Y_h and Y_c (not
 * written). Every sequence has the full S steps.
 *
 * The caller passes (G + 3) * H floats of scratch: the hidden and cell state, the gates and one
 * more hidden-sized vector of one batch row; the kernel steps each row through time in turn. */
#ifndef MOA_RECURRENT_H
#define MOA_RECURRENT_H

#include <stddef.h>

#include "moa/status.h"

typedef enum { MOA_RECURRENT_RNN, MOA_RECURRENT_GRU, MOA_RECURRENT_LSTM } moa_recurrent_cell;

/* The activation functions of the ONNX spec, with their alpha and beta where they take one. */
typedef enum {
    MOA_ACTIVATION_RELU,             /* max(0, x) */
    MOA_ACTIVATION_TANH,             /* tanh(x) */
    MOA_ACTIVATION_SIGMOID,          /* 1 / (1 + e^-x) */
    MOA_ACTIVATION_AFFINE,           /* alpha * x + beta */
    MOA_ACTIVATION_LEAKY_RELU,       /* x if x >= 0 else alpha * x */
    MOA_ACTIVATION_THRESHOLDED_RELU, /* x if x >= alpha else 0 */
    MOA_ACTIVATION_SCALED_TANH,      /* alpha * tanh(beta * x) */
    MOA_ACTIVATION_HARD_SIGMOID,     /* min(max(alpha * x + beta, 0), 1) */
    MOA_ACTIVATION_ELU,              /* x if x >= 0 else alpha * (e^x - 1) */
    MOA_ACTIVATION_SOFTSIGN,         /* x / (1 + |x|) */
    MOA_ACTIVATION_SOFTPLUS          /* log(1 + e^x) */
} moa_activation_kind;

typedef struct {
    moa_activation_kind kind;
    float alpha, beta;
} moa_activation;

typedef struct {
    moa_recurrent_cell cell;
    size_t steps, batch, input_size, hidden_size;
    size_t directions;       /* 1 or 2 (bidirectional: forward, then reverse) */
    int reverse;             /* with one direction: step from the last input to the first */
    int layout;              /* 0 or 1, as above */
    int clipped;             /* clip each activation's input to [-clip, clip] */
    float clip;
    int linear_before_reset; /* GRU */
    int input_forget;        /* LSTM: ft = 1 - it */
    moa_activation f[2], g[2], h[2]; /* per direction; RNN uses f, GRU f and g, LSTM all three */
} moa_recurrent_params;

typedef struct {
    const float *x, *w, *r, *b, *initial_h, *initial_c, *p;
    float *y, *y_h, *y_c;
} moa_recurrent_tensors;

moa_status moa_recurrent_f32(const moa_recurrent_params *params, const moa_recurrent_tensors *t, float *scratch);

#endif

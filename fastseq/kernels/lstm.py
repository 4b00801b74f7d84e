"""LSTM forward and backward over a whole packed sequence batch.

Glossary (used by every kernel docstring): B batch, T steps, F features,
H hidden units, G gates (1 RNN, 3 GRU, 4 LSTM), N = sum of the sequence
lengths (rows of a packed batch).

Packed layout
-------------
Sequences are sorted by decreasing length; row ``offsets[t] + b`` holds step
``t`` of sequence ``b`` for ``b < batch_sizes[t]``, where
``offsets[t] = batch_sizes[:t].sum()``.  The active sequences at every step are
therefore a prefix of the batch, each step's rows are contiguous, and padded
steps do not exist: they are neither read nor computed.

Notes
-----
Gate order is PyTorch's (i, f, g, o), see :data:`fastseq.kernels.LSTM_GATES`::

    i_t = sigmoid(x_i + W_hi (m * h_{t-1}))       x_* = W_i* x_t + b_i* + b_h*
    f_t = sigmoid(x_f + W_hf (m * h_{t-1}))
    g_t = tanh   (x_g + W_hg (m * h_{t-1}))
    o_t = sigmoid(x_o + W_ho (m * h_{t-1}))
    c_t = f_t * c_{t-1} + i_t * g_t
    h_t = o_t * tanh(c_t)

``m`` is an optional per-sequence recurrent dropout mask (B, H), constant over
time (variational dropout, Gal & Ghahramani 2016); without it ``m = 1``.
"""

import numpy as np
from numba import njit

from .._config import JIT
from .activations import sigmoid, tanh


@njit(**JIT)
def lstm_sequence_forward(xp, w_hh_t, h0, c0, batch_sizes, rec_mask, out_h, out_c, out_gates):
    """Run an LSTM over a packed batch.

    Parameters
    ----------
    xp : (N, 4H) float
        Input projections ``x_t W_ih^T + b_ih + b_hh`` of every packed row.
    w_hh_t : (H, 4H) float
        Recurrent weights, transposed (``W_hh.T``, C-contiguous).
    h0, c0 : (B, H) float
        Initial states, in sorted batch order.
    batch_sizes : (T,) int64
        Number of active sequences at each step (non-increasing, all >= 1).
    rec_mask : (B, H) or (0, H) float
        Recurrent dropout mask applied to ``h_{t-1}``; an empty array for none.
    out_h, out_c : (N, H) float
        Filled with ``h_t`` and ``c_t`` of every row.
    out_gates : (N, 4H) float
        Filled with the activated gates (i, f, g, o), kept for the backward pass.
    """
    B, H = h0.shape
    T = batch_sizes.shape[0]
    use_mask = rec_mask.shape[0] > 0
    hm = np.empty((B, H), dtype=xp.dtype)
    hp = np.empty((B, 4 * H), dtype=xp.dtype)
    off = 0
    prev = 0
    for t in range(T):
        nb = batch_sizes[t]
        if t == 0:
            h_prev = h0[:nb]
            c_prev = c0[:nb]
        else:
            h_prev = out_h[prev:prev + nb]
            c_prev = out_c[prev:prev + nb]
        if use_mask:
            for b in range(nb):
                for j in range(H):
                    hm[b, j] = h_prev[b, j] * rec_mask[b, j]
            np.dot(hm[:nb], w_hh_t, hp[:nb])
        else:
            np.dot(h_prev, w_hh_t, hp[:nb])
        for b in range(nb):
            r = off + b
            for j in range(H):
                gi = sigmoid(xp[r, j] + hp[b, j])
                gf = sigmoid(xp[r, H + j] + hp[b, H + j])
                gg = tanh(xp[r, 2 * H + j] + hp[b, 2 * H + j])
                go = sigmoid(xp[r, 3 * H + j] + hp[b, 3 * H + j])
                c = gf * c_prev[b, j] + gi * gg
                out_c[r, j] = c
                out_h[r, j] = go * tanh(c)
                out_gates[r, j] = gi
                out_gates[r, H + j] = gf
                out_gates[r, 2 * H + j] = gg
                out_gates[r, 3 * H + j] = go
        prev = off
        off += nb


@njit(**JIT)
def lstm_sequence_backward(d_out, w_hh, c0, out_c, out_gates, batch_sizes, rec_mask,
                           io_dh, io_dc, out_dgates):
    """Backpropagate through an LSTM run by :func:`lstm_sequence_forward`.

    Parameters
    ----------
    d_out : (N, H) float
        Gradient of the loss with respect to every ``h_t`` (packed).
    w_hh : (4H, H) float
        Recurrent weights (not transposed).
    c0 : (B, H) float
        Initial cell state of the forward pass.
    out_c, out_gates : (N, H), (N, 4H) float
        What the forward pass stored.
    batch_sizes : (T,) int64
    rec_mask : (B, H) or (0, H) float
        The forward pass's recurrent dropout mask.
    io_dh, io_dc : (B, H) float
        In: gradients with respect to the final states ``h_n``, ``c_n`` (each
        sequence's own last step).  Out: gradients with respect to ``h0``, ``c0``.
    out_dgates : (N, 4H) float
        Filled with the gradients of the gate pre-activations; the weight
        gradients are ``out_dgates.T @ inputs`` and ``out_dgates.T @ h_prev``.
    """
    B, H = io_dh.shape
    T = batch_sizes.shape[0]
    use_mask = rec_mask.shape[0] > 0
    offsets = np.zeros(T + 1, dtype=batch_sizes.dtype)
    for t in range(T):
        offsets[t + 1] = offsets[t] + batch_sizes[t]
    tmp = np.empty((B, H), dtype=d_out.dtype)
    for t in range(T - 1, -1, -1):
        nb = batch_sizes[t]
        off = offsets[t]
        for b in range(nb):
            r = off + b
            for j in range(H):
                if t == 0:
                    cp = c0[b, j]
                else:
                    cp = out_c[offsets[t - 1] + b, j]
                gi = out_gates[r, j]
                gf = out_gates[r, H + j]
                gg = out_gates[r, 2 * H + j]
                go = out_gates[r, 3 * H + j]
                tc = tanh(out_c[r, j])
                dh = io_dh[b, j] + d_out[r, j]
                dc = io_dc[b, j] + dh * go * (1.0 - tc * tc)
                out_dgates[r, j] = dc * gg * gi * (1.0 - gi)
                out_dgates[r, H + j] = dc * cp * gf * (1.0 - gf)
                out_dgates[r, 2 * H + j] = dc * gi * (1.0 - gg * gg)
                out_dgates[r, 3 * H + j] = dh * tc * go * (1.0 - go)
                io_dc[b, j] = dc * gf
        np.dot(out_dgates[off:off + nb], w_hh, tmp[:nb])
        for b in range(nb):
            for j in range(H):
                if use_mask:
                    io_dh[b, j] = tmp[b, j] * rec_mask[b, j]
                else:
                    io_dh[b, j] = tmp[b, j]

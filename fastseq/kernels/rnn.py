"""Elman RNN forward and backward over a whole packed sequence batch.

Shapes and the packed layout as in :mod:`fastseq.kernels.lstm`.

Notes
-----
::

    h_t = act(x_t W_ih^T + b_ih + b_hh + (m * h_{t-1}) W_hh^T)

with ``act`` tanh (``relu = 0``) or ReLU (``relu = 1``) and ``m`` the optional
recurrent dropout mask.
"""

import numpy as np
from numba import njit

from .._config import JIT
from .activations import tanh


@njit(**JIT)
def rnn_sequence_forward(xp, w_hh_t, h0, batch_sizes, rec_mask, relu, out_h):
    """Run an Elman RNN over a packed batch.

    Parameters
    ----------
    xp : (N, H) float
        ``x_t W_ih^T + b_ih + b_hh`` of every packed row.
    w_hh_t : (H, H) float
        ``W_hh.T``, C-contiguous.
    h0 : (B, H) float
        Initial state, sorted batch order.
    batch_sizes : (T,) int64
    rec_mask : (B, H) or (0, H) float
    relu : int
        0 for tanh, 1 for ReLU.
    out_h : (N, H) float
        Filled with ``h_t``.
    """
    B, H = h0.shape
    T = batch_sizes.shape[0]
    use_mask = rec_mask.shape[0] > 0
    hm = np.empty((B, H), dtype=xp.dtype)
    hp = np.empty((B, H), dtype=xp.dtype)
    off = 0
    prev = 0
    for t in range(T):
        nb = batch_sizes[t]
        if t == 0:
            h_prev = h0[:nb]
        else:
            h_prev = out_h[prev:prev + nb]
        if use_mask:
            for b in range(nb):
                for j in range(H):
                    hm[b, j] = h_prev[b, j] * rec_mask[b, j]
            np.dot(hm[:nb], w_hh_t, hp[:nb])
        else:
            np.dot(h_prev, w_hh_t, hp[:nb])
        for b in range(nb):
            r = off + b
            if relu:
                for j in range(H):
                    v = xp[r, j] + hp[b, j]
                    out_h[r, j] = v if v > 0.0 else 0.0
            else:
                for j in range(H):
                    out_h[r, j] = tanh(xp[r, j] + hp[b, j])
        prev = off
        off += nb


@njit(**JIT)
def rnn_sequence_backward(d_out, w_hh, out_h, batch_sizes, rec_mask, relu, io_dh, out_dgates):
    """Backpropagate through an Elman RNN run by :func:`rnn_sequence_forward`.

    Parameters
    ----------
    d_out : (N, H) float
        Gradient with respect to every ``h_t`` (packed).
    w_hh : (H, H) float
        Recurrent weights (not transposed).
    out_h : (N, H) float
        What the forward pass stored.
    batch_sizes : (T,) int64
    rec_mask : (B, H) or (0, H) float
    relu : int
        0 for tanh, 1 for ReLU.
    io_dh : (B, H) float
        In: gradient with respect to ``h_n``.  Out: gradient with respect to ``h0``.
    out_dgates : (N, H) float
        Filled with the gradients of the pre-activations.
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
                h = out_h[r, j]
                dh = io_dh[b, j] + d_out[r, j]
                if relu:
                    out_dgates[r, j] = dh if h > 0.0 else 0.0
                else:
                    out_dgates[r, j] = dh * (1.0 - h * h)
        np.dot(out_dgates[off:off + nb], w_hh, tmp[:nb])
        for b in range(nb):
            for j in range(H):
                if use_mask:
                    io_dh[b, j] = tmp[b, j] * rec_mask[b, j]
                else:
                    io_dh[b, j] = tmp[b, j]

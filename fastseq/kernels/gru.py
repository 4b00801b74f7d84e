"""GRU forward and backward over a whole packed sequence batch.

Shapes and the packed layout as in :mod:`fastseq.kernels.lstm`.

Notes
-----
Gate order is PyTorch's (r, z, n), see :data:`fastseq.kernels.GRU_GATES`::

    r_t = sigmoid(x_r + W_hr (m * h_{t-1}))           x_r = W_ir x_t + b_ir + b_hr
    z_t = sigmoid(x_z + W_hz (m * h_{t-1}))           x_z = W_iz x_t + b_iz + b_hz
    a_t = W_hn (m * h_{t-1}) + b_hn
    n_t = tanh(x_n + r_t * a_t)                       x_n = W_in x_t + b_in
    h_t = (1 - z_t) * n_t + z_t * h_{t-1}

This is the "reset after the matmul" form (PyTorch, Keras ``reset_after=True``),
whose three recurrent products are one matrix product per step.  ``m`` is the
optional recurrent dropout mask; it scales the recurrent product only, not the
``z_t * h_{t-1}`` carry.
"""

import numpy as np
from numba import njit

from .._config import JIT
from .activations import sigmoid, tanh


@njit(**JIT)
def gru_sequence_forward(xp, w_hh_t, b_hn, h0, batch_sizes, rec_mask, out_h, out_gates):
    """Run a GRU over a packed batch.

    Parameters
    ----------
    xp : (N, 3H) float
        ``x_t W_ih^T + b_ih + [b_hr, b_hz, 0]`` of every packed row.
    w_hh_t : (H, 3H) float
        ``W_hh.T``, C-contiguous.
    b_hn : (H,) float
        Recurrent bias of the candidate gate (stays inside ``r * (...)``).
    h0 : (B, H) float
        Initial state, sorted batch order.
    batch_sizes : (T,) int64
    rec_mask : (B, H) or (0, H) float
    out_h : (N, H) float
        Filled with ``h_t``.
    out_gates : (N, 4H) float
        Filled with (r, z, n, a): the activated gates and ``a_t``, the
        recurrent candidate term before the reset gate.
    """
    B, H = h0.shape
    T = batch_sizes.shape[0]
    use_mask = rec_mask.shape[0] > 0
    hm = np.empty((B, H), dtype=xp.dtype)
    hp = np.empty((B, 3 * H), dtype=xp.dtype)
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
            for j in range(H):
                gr = sigmoid(xp[r, j] + hp[b, j])
                gz = sigmoid(xp[r, H + j] + hp[b, H + j])
                a = hp[b, 2 * H + j] + b_hn[j]
                gn = tanh(xp[r, 2 * H + j] + gr * a)
                out_h[r, j] = (1.0 - gz) * gn + gz * h_prev[b, j]
                out_gates[r, j] = gr
                out_gates[r, H + j] = gz
                out_gates[r, 2 * H + j] = gn
                out_gates[r, 3 * H + j] = a
        prev = off
        off += nb


@njit(**JIT)
def gru_sequence_backward(d_out, w_hh, h0, out_h, out_gates, batch_sizes, rec_mask,
                          io_dh, out_dgx, out_dgh):
    """Backpropagate through a GRU run by :func:`gru_sequence_forward`.

    Parameters
    ----------
    d_out : (N, H) float
        Gradient with respect to every ``h_t`` (packed).
    w_hh : (3H, H) float
        Recurrent weights (not transposed).
    h0 : (B, H) float
    out_h, out_gates : (N, H), (N, 4H) float
        What the forward pass stored.
    batch_sizes : (T,) int64
    rec_mask : (B, H) or (0, H) float
    io_dh : (B, H) float
        In: gradient with respect to ``h_n``.  Out: gradient with respect to ``h0``.
    out_dgx : (N, 3H) float
        Filled with the gradients of the input-side pre-activations
        (r, z, n): ``dW_ih = out_dgx.T @ x``, ``db_ih = out_dgx.sum(0)``.
    out_dgh : (N, 3H) float
        Filled with the gradients of the recurrent products (r, z, a):
        ``dW_hh = out_dgh.T @ (m * h_prev)``, ``db_hh = out_dgh.sum(0)``.
    """
    B, H = io_dh.shape
    T = batch_sizes.shape[0]
    use_mask = rec_mask.shape[0] > 0
    offsets = np.zeros(T + 1, dtype=batch_sizes.dtype)
    for t in range(T):
        offsets[t + 1] = offsets[t] + batch_sizes[t]
    tmp = np.empty((B, H), dtype=d_out.dtype)
    carry = np.empty((B, H), dtype=d_out.dtype)
    for t in range(T - 1, -1, -1):
        nb = batch_sizes[t]
        off = offsets[t]
        for b in range(nb):
            r = off + b
            for j in range(H):
                if t == 0:
                    hprev = h0[b, j]
                else:
                    hprev = out_h[offsets[t - 1] + b, j]
                gr = out_gates[r, j]
                gz = out_gates[r, H + j]
                gn = out_gates[r, 2 * H + j]
                a = out_gates[r, 3 * H + j]
                dh = io_dh[b, j] + d_out[r, j]
                dn = dh * (1.0 - gz) * (1.0 - gn * gn)
                dz = dh * (hprev - gn) * gz * (1.0 - gz)
                dr = dn * a * gr * (1.0 - gr)
                out_dgx[r, j] = dr
                out_dgx[r, H + j] = dz
                out_dgx[r, 2 * H + j] = dn
                out_dgh[r, j] = dr
                out_dgh[r, H + j] = dz
                out_dgh[r, 2 * H + j] = dn * gr
                carry[b, j] = dh * gz
        np.dot(out_dgh[off:off + nb], w_hh, tmp[:nb])
        for b in range(nb):
            for j in range(H):
                if use_mask:
                    io_dh[b, j] = carry[b, j] + tmp[b, j] * rec_mask[b, j]
                else:
                    io_dh[b, j] = carry[b, j] + tmp[b, j]

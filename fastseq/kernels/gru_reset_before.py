"""GRU in the "reset before the matmul" form (Cho et al. 2014; Keras
``reset_after=False``), forward and backward over a packed batch.

Shapes and the packed layout as in :mod:`fastseq.kernels.lstm`; weights in
PyTorch's layout and gate order (r, z, n).

Notes
-----
::

    r_t = sigmoid(x_r + W_hr (m * h_{t-1}))          x_r = W_ir x_t + b_ir + b_hr
    z_t = sigmoid(x_z + W_hz (m * h_{t-1}))          x_z = W_iz x_t + b_iz + b_hz
    u_t = r_t * (m * h_{t-1})
    n_t = tanh(x_n + W_hn u_t)                       x_n = W_in x_t + b_in + b_hn
    h_t = (1 - z_t) * n_t + z_t * h_{t-1}

The reset gate scales the state *before* the candidate's recurrent product,
so each step needs two products (``[W_hr; W_hz]`` with the state, then
``W_hn`` with ``u_t``) instead of the one fused product of the reset-after
form (:mod:`fastseq.kernels.gru`).  All recurrent biases add outside a
product, so they fold into ``x``.  ``m`` is the optional recurrent dropout
mask (it scales the recurrent products, not the ``z_t * h_{t-1}`` carry).
"""

import numpy as np
from numba import njit

from .._config import JIT
from .activations import sigmoid, tanh
from ._packed import masked_state, packed_offsets
from .matmul import pack_for_steps, packed_matmul


@njit(**JIT)
def gru_rb_forward_slice(xp, w_rz, w_n, h0, batch_sizes, rec_mask, out_h, out_gates, b0, b1):
    """Reset-before GRU forward for the sorted sequences ``b0 <= b < b1``.

    Parameters
    ----------
    xp : (N, 3H) float
        ``x_t W_ih^T + b_ih + b_hh`` of every packed row.
    w_rz : (2H, H) float
        ``W_hh[:2H]``, C-contiguous.
    w_n : (H, H) float
        ``W_hh[2H:]``, C-contiguous.
    h0 : (B, H) float
        Initial state, sorted batch order.
    batch_sizes : (T,) int64
    rec_mask : (B, H) or (0, H) float
    out_h : (N, H) float
        Filled with ``h_t``.
    out_gates : (N, 3H) or (0, 3H) float
        Filled with (r, z, n); an empty array for inference (nothing stored).
    b0, b1 : int
        The slice of the sorted batch (disjoint slices may run in parallel).
    """
    H = h0.shape[1]
    T = batch_sizes.shape[0]
    store = out_gates.shape[0] > 0
    n = max(b1 - b0, 0)
    wp_rz = pack_for_steps(w_rz, T)
    wp_n = pack_for_steps(w_n, T)
    hm = np.empty((n, H), dtype=xp.dtype)
    u = np.empty((n, H), dtype=xp.dtype)
    hp = np.empty((n, 2 * H), dtype=xp.dtype)
    hn = np.empty((n, H), dtype=xp.dtype)
    off = 0
    prev = 0
    for t in range(T):
        bs = batch_sizes[t]
        nb = min(bs, b1) - b0
        if nb <= 0:
            break
        if t == 0:
            h_prev = h0[b0:b0 + nb]
        else:
            h_prev = out_h[prev + b0:prev + b0 + nb]
        hs = masked_state(h_prev, rec_mask, b0, hm[:nb])
        packed_matmul(hs, w_rz, wp_rz, hp[:nb])
        for b in range(nb):
            r = off + b0 + b
            for j in range(H):
                gr = sigmoid(xp[r, j] + hp[b, j])
                hp[b, j] = gr                       # keep r_t, then z_t, for the second pass
                hp[b, H + j] = sigmoid(xp[r, H + j] + hp[b, H + j])
                u[b, j] = gr * hs[b, j]
        packed_matmul(u[:nb], w_n, wp_n, hn[:nb])
        for b in range(nb):
            r = off + b0 + b
            for j in range(H):
                gz = hp[b, H + j]
                gn = tanh(xp[r, 2 * H + j] + hn[b, j])
                out_h[r, j] = gn + gz * (h_prev[b, j] - gn)
                if store:
                    out_gates[r, j] = hp[b, j]
                    out_gates[r, H + j] = gz
                    out_gates[r, 2 * H + j] = gn
        prev = off
        off += bs


@njit(**JIT)
def gru_rb_backward_slice(d_out, w_rz_t, w_n_t, h0, out_h, out_gates, batch_sizes, rec_mask,
                          io_dh, out_dgx, b0, b1):
    """Backpropagate through :func:`gru_rb_forward_slice` for ``b0 <= b < b1``.

    Parameters
    ----------
    d_out : (N, H) float
        Gradient with respect to every ``h_t`` (packed).
    w_rz_t : (H, 2H) float
        ``W_hh[:2H].T``, C-contiguous.
    w_n_t : (H, H) float
        ``W_hh[2H:].T``, C-contiguous.
    h0 : (B, H) float
    out_h, out_gates : (N, H), (N, 3H) float
        What the forward pass stored.
    batch_sizes : (T,) int64
    rec_mask : (B, H) or (0, H) float
    io_dh : (B, H) float
        In: gradient with respect to ``h_n``.  Out: gradient with respect to ``h0``.
    out_dgx : (N, 3H) float
        Filled with the gradients of the pre-activations (r, z, n), which are
        also those of the recurrent products: ``dW_hh[:2H] = out_dgx[:, :2H].T
        @ (m * h_prev)``, ``dW_hh[2H:] = out_dgx[:, 2H:].T @ u``, and both bias
        gradients are ``out_dgx.sum(0)``.
    b0, b1 : int
    """
    H = io_dh.shape[1]
    T = batch_sizes.shape[0]
    use_mask = rec_mask.shape[0] > 0
    offsets = packed_offsets(batch_sizes)
    n = max(b1 - b0, 0)
    wp_rz = pack_for_steps(w_rz_t, T)
    wp_n = pack_for_steps(w_n_t, T)
    dn = np.empty((n, H), dtype=d_out.dtype)
    du = np.empty((n, H), dtype=d_out.dtype)
    drz = np.empty((n, 2 * H), dtype=d_out.dtype)
    tmp = np.empty((n, H), dtype=d_out.dtype)
    carry = np.empty((n, H), dtype=d_out.dtype)
    one = np.ones(1, dtype=d_out.dtype)[0]
    for t in range(T - 1, -1, -1):
        nb = min(batch_sizes[t], b1) - b0
        if nb <= 0:
            continue
        off = offsets[t]
        for b in range(nb):
            r = off + b0 + b
            for j in range(H):
                hpr = h0[b0 + b, j] if t == 0 else out_h[offsets[t - 1] + b0 + b, j]
                gz = out_gates[r, H + j]
                gn = out_gates[r, 2 * H + j]
                dh = io_dh[b0 + b, j] + d_out[r, j]
                dnp = dh * (one - gz) * (one - gn * gn)
                dn[b, j] = dnp
                out_dgx[r, 2 * H + j] = dnp
                dz = dh * (hpr - gn) * gz * (one - gz)
                drz[b, H + j] = dz
                out_dgx[r, H + j] = dz
                carry[b, j] = dh * gz
        packed_matmul(dn[:nb], w_n_t, wp_n, du[:nb])
        for b in range(nb):
            r = off + b0 + b
            for j in range(H):
                hpr = h0[b0 + b, j] if t == 0 else out_h[offsets[t - 1] + b0 + b, j]
                m = rec_mask[b0 + b, j] if use_mask else one
                gr = out_gates[r, j]
                dr = du[b, j] * hpr * m * gr * (one - gr)
                drz[b, j] = dr
                out_dgx[r, j] = dr
                du[b, j] = du[b, j] * gr           # gradient reaching m * h_prev through u
        packed_matmul(drz[:nb], w_rz_t, wp_rz, tmp[:nb])
        for b in range(nb):
            for j in range(H):
                m = rec_mask[b0 + b, j] if use_mask else one
                io_dh[b0 + b, j] = carry[b, j] + (tmp[b, j] + du[b, j]) * m

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
from ._packed import masked_state, packed_offsets
from ._sync import wait_for, store_release
from .matmul import no_packed_weight, packed_matmul, shared_or_packed


@njit(inline="always", **JIT)
def rnn_cell(x, p, oh, relu, zero, H):
    """One row: ``oh = act(x + p)`` (``relu`` 1 for ReLU, 0 for tanh; ``zero``
    a zero of the arrays' type)."""
    if relu:
        for j in range(H):
            v = x[j] + p[j]
            oh[j] = v if v > zero else zero
    else:
        for j in range(H):
            oh[j] = tanh(x[j] + p[j])


@njit(**JIT)
def rnn_sequence_forward(xp, w_hh, h0, batch_sizes, rec_mask, relu, out_h):
    """Run an Elman RNN over a packed batch.

    Parameters
    ----------
    xp : (N, H) float
        ``x_t W_ih^T + b_ih + b_hh`` of every packed row.
    w_hh : (H, H) float
        Recurrent weights ``W_hh`` (not transposed), C-contiguous.
    h0 : (B, H) float
        Initial state, sorted batch order.
    batch_sizes : (T,) int64
    rec_mask : (B, H) or (0, H) float
    relu : int
        0 for tanh, 1 for ReLU.
    out_h : (N, H) float
        Filled with ``h_t``.
    """
    rnn_forward_slice(xp, w_hh, no_packed_weight(w_hh), h0, batch_sizes, rec_mask, relu, out_h,
                      np.empty(0, dtype=np.int64), np.int64(0), h0.shape[0])


@njit(**JIT)
def rnn_forward_slice(xp, w_hh, wp, h0, batch_sizes, rec_mask, relu, out_h, ready, b0, b1):
    """:func:`rnn_sequence_forward` for the sorted sequences ``b0 <= b < b1`` only
    (disjoint slices may run in parallel threads).

    ``ready`` (int64, empty for none) is the step counter of a producer
    thread filling ``xp`` ahead of the loop (:func:`fastseq.kernels.matmul.project_ahead`):
    step ``t`` waits until ``ready[0] > t``.  ``wp``: ``pack_weight(w_hh)``
    shared by the slices of one call (:func:`fastseq.kernels.matmul.shared_or_packed`),
    or an empty one (:func:`fastseq.kernels.matmul.no_packed_weight`):
    the slice packs its own.
    """
    H = h0.shape[1]
    T = batch_sizes.shape[0]
    n = max(b1 - b0, 0)
    wp = shared_or_packed(w_hh, wp, T)
    hm = np.empty((n, H), dtype=xp.dtype)
    hp = np.empty((n, H), dtype=xp.dtype)
    zero = np.zeros(1, dtype=xp.dtype)[0]
    off = 0
    prev = 0
    wait = ready.shape[0] > 0
    for t in range(T):
        if wait:
            wait_for(ready, 0, t + 1)
        bs = batch_sizes[t]
        nb = min(bs, b1) - b0
        if nb <= 0:
            break
        if t == 0:
            h_prev = h0[b0:b0 + nb]
        else:
            h_prev = out_h[prev + b0:prev + b0 + nb]
        packed_matmul(masked_state(h_prev, rec_mask, b0, hm[:nb]), w_hh, wp, hp[:nb])
        for b in range(nb):
            r = off + b0 + b
            rnn_cell(xp[r], hp[b], out_h[r], relu, zero, H)
        prev = off
        off += bs


@njit(**JIT)
def rnn_sequence_backward(d_out, w_hh_t, out_h, batch_sizes, rec_mask, relu, io_dh, out_dgates):
    """Backpropagate through an Elman RNN run by :func:`rnn_sequence_forward`.

    Parameters
    ----------
    d_out : (N, H) float
        Gradient with respect to every ``h_t`` (packed).
    w_hh_t : (H, H) float
        ``W_hh.T``, C-contiguous.
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
    rnn_backward_slice(d_out, w_hh_t, no_packed_weight(w_hh_t), out_h, batch_sizes, rec_mask, relu, io_dh,
                       out_dgates, np.empty(0, dtype=np.int64), np.int64(0), io_dh.shape[0])


@njit(**JIT)
def rnn_backward_slice(d_out, w_hh_t, wp, out_h, batch_sizes, rec_mask, relu, io_dh, out_dgates, progress,
                       b0, b1):
    """:func:`rnn_sequence_backward` for the sorted sequences ``b0 <= b < b1`` only.

    ``progress`` (int64, empty for none) receives, with a release store,
    the number of steps whose gate gradients are final (counted from the
    last step), for a thread computing weight gradients behind the loop
    (:func:`fastseq.kernels.grads.weight_grads_behind`).  ``wp``:
    ``pack_weight(w_hh_t)`` shared by the slices of one call, or empty (as
    the forward slice's).
    """
    H = io_dh.shape[1]
    T = batch_sizes.shape[0]
    use_mask = rec_mask.shape[0] > 0
    offsets = packed_offsets(batch_sizes)
    n = max(b1 - b0, 0)
    wp = shared_or_packed(w_hh_t, wp, T)
    tmp = np.empty((n, H), dtype=d_out.dtype)
    one = np.ones(1, dtype=d_out.dtype)[0]
    zero = np.zeros(1, dtype=d_out.dtype)[0]
    publish = progress.shape[0] > 0
    for t in range(T - 1, -1, -1):
        if publish and t < T - 1:
            store_release(progress, 0, T - 1 - t)
        nb = min(batch_sizes[t], b1) - b0
        if nb <= 0:
            continue
        off = offsets[t]
        for b in range(nb):
            r = off + b0 + b
            hr = out_h[r]
            dor = d_out[r]
            dhb = io_dh[b0 + b]
            dg = out_dgates[r]
            if relu:
                for j in range(H):
                    dh = dhb[j] + dor[j]
                    dg[j] = dh if hr[j] > zero else zero
            else:
                for j in range(H):
                    h = hr[j]
                    dg[j] = (dhb[j] + dor[j]) * (one - h * h)
        packed_matmul(out_dgates[off + b0:off + b0 + nb], w_hh_t, wp, tmp[:nb])
        for b in range(nb):
            dhb = io_dh[b0 + b]
            tb = tmp[b]
            if use_mask:
                mb = rec_mask[b0 + b]
                for j in range(H):
                    dhb[j] = tb[j] * mb[j]
            else:
                for j in range(H):
                    dhb[j] = tb[j]
    if publish:
        store_release(progress, 0, T)

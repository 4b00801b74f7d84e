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
from ._packed import copy_row, masked_state, own_rows, packed_offsets
from ._sync import barrier, signal_started, store_release, wait_for, wait_joined
from .matmul import no_packed_weight, pack_for_steps, packed_matmul, shared_or_packed


@njit(inline="always", **JIT)
def cell_forward(x, p, cp, oc, oh, g, store, H, j0, j1):
    """Units ``j0 <= j < j1`` of one row: gate pre-activations ``x[k*H + j] +
    p[k*n + j - j0]`` (n = j1 - j0; the recurrent product holds just these
    units), previous cell ``cp``; writes ``oc``, ``oh`` and, if ``store``, the
    activated gates ``g``.

    Every array is sliced to the units first and indexed from 0: an index
    that LLVM cannot prove non-negative (``j0 + q``) keeps numba's
    negative-index wrap-around on each access, and the loop then stays
    scalar (about 1.6x the time of a unit split's step at H = 64-256)."""
    n = j1 - j0
    xi, xf, xg, xo = x[j0:j1], x[H + j0:H + j1], x[2 * H + j0:2 * H + j1], x[3 * H + j0:3 * H + j1]
    pi, pf, pg, po = p[:n], p[n:2 * n], p[2 * n:3 * n], p[3 * n:4 * n]
    cpv, ocv, ohv = cp[j0:j1], oc[j0:j1], oh[j0:j1]
    # (empty views when nothing is stored and ``g`` is shorter)
    gi_, gf_, gg_, go_ = g[j0:j1], g[H + j0:H + j1], g[2 * H + j0:2 * H + j1], g[3 * H + j0:3 * H + j1]
    for q in range(n):
        gi = sigmoid(xi[q] + pi[q])
        gf = sigmoid(xf[q] + pf[q])
        gg = tanh(xg[q] + pg[q])
        go = sigmoid(xo[q] + po[q])
        c = gf * cpv[q] + gi * gg
        ocv[q] = c
        ohv[q] = go * tanh(c)
        if store:
            gi_[q] = gi
            gf_[q] = gf
            gg_[q] = gg
            go_[q] = go


@njit(inline="always", **JIT)
def cell_backward(g, dg, cr, dor, cpr, dhb, dcb, H, j0, j1, one):
    """Units ``j0 <= j < j1`` of one row's gate gradients ``dg`` from the
    stored gates ``g``, cell ``cr``, previous cell ``cpr``, the output
    gradient ``dor`` and the carried ``dhb``, ``dcb`` (``dcb`` updated).
    Sliced to the units first, as :func:`cell_forward`."""
    gi_, gf_, gg_, go_ = g[j0:j1], g[H + j0:H + j1], g[2 * H + j0:2 * H + j1], g[3 * H + j0:3 * H + j1]
    di_, df_, dg_, do_ = dg[j0:j1], dg[H + j0:H + j1], dg[2 * H + j0:2 * H + j1], dg[3 * H + j0:3 * H + j1]
    crv, dorv, cprv, dhv, dcv = cr[j0:j1], dor[j0:j1], cpr[j0:j1], dhb[j0:j1], dcb[j0:j1]
    for q in range(j1 - j0):
        gi = gi_[q]
        gf = gf_[q]
        gg = gg_[q]
        go = go_[q]
        tc = tanh(crv[q])
        dh = dhv[q] + dorv[q]
        dc = dcv[q] + dh * go * (one - tc * tc)
        di_[q] = dc * gg * gi * (one - gi)
        df_[q] = dc * cprv[q] * gf * (one - gf)
        dg_[q] = dc * gi * (one - gg * gg)
        do_[q] = dh * tc * go * (one - go)
        dcv[q] = dc * gf


@njit(**JIT)
def lstm_sequence_forward(xp, w_hh, h0, c0, batch_sizes, rec_mask, out_h, out_c, out_gates):
    """Run an LSTM over a packed batch.

    Parameters
    ----------
    xp : (N, 4H) float
        Input projections ``x_t W_ih^T + b_ih + b_hh`` of every packed row.
    w_hh : (4H, H) float
        Recurrent weights ``W_hh`` (not transposed), C-contiguous.
    h0, c0 : (B, H) float
        Initial states, in sorted batch order.
    batch_sizes : (T,) int64
        Number of active sequences at each step (non-increasing, all >= 1).
    rec_mask : (B, H) or (0, H) float
        Recurrent dropout mask applied to ``h_{t-1}``; an empty array for none.
    out_h, out_c : (N, H) float
        Filled with ``h_t`` and ``c_t`` of every row.
    out_gates : (N, 4H) or (0, 4H) float
        Filled with the activated gates (i, f, g, o), kept for the backward
        pass; an empty array for inference (nothing stored).
    """
    lstm_forward_slice(xp, w_hh, no_packed_weight(w_hh), h0, c0, batch_sizes, rec_mask, out_h, out_c,
                       out_gates, np.empty(0, dtype=np.int64), np.int64(0), h0.shape[0])


@njit(**JIT)
def lstm_forward_slice(xp, w_hh, wp, h0, c0, batch_sizes, rec_mask, out_h, out_c, out_gates, ready, b0, b1):
    """:func:`lstm_sequence_forward` for the sorted sequences ``b0 <= b < b1`` only.

    Slices of one batch are independent: threads may run disjoint slices of
    the same call side by side (each writes only its own rows).

    ``ready`` (int64, empty for none) is the step counter of a producer
    thread filling ``xp`` ahead of the loop (:func:`fastseq.kernels.matmul.project_ahead`):
    step ``t`` waits until ``ready[0] > t``.  ``wp``: ``pack_weight(w_hh)``
    shared by the slices of one call (:func:`fastseq.kernels.matmul.shared_or_packed`),
    or an empty one (:func:`fastseq.kernels.matmul.no_packed_weight`):
    the slice packs its own.
    """
    H = h0.shape[1]
    T = batch_sizes.shape[0]
    store = out_gates.shape[0] > 0
    n = max(b1 - b0, 0)
    wp = shared_or_packed(w_hh, wp, T)
    hm = np.empty((n, H), dtype=xp.dtype)
    hp = np.empty((n, 4 * H), dtype=xp.dtype)
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
            c_prev = c0[b0:b0 + nb]
        else:
            h_prev = out_h[prev + b0:prev + b0 + nb]
            c_prev = out_c[prev + b0:prev + b0 + nb]
        packed_matmul(masked_state(h_prev, rec_mask, b0, hm[:nb]), w_hh, wp, hp[:nb])
        # (the branch outside the row loops: inside them it cost an LSTM of
        # 32 units, batch 1, a third of its step; bench/RESULTS.md,
        # "twenty-first session")
        if store:
            for b in range(nb):
                r = off + b0 + b
                cell_forward(xp[r], hp[b], c_prev[b], out_c[r], out_h[r], out_gates[r], True, H, 0, H)
        else:
            for b in range(nb):
                r = off + b0 + b
                cell_forward(xp[r], hp[b], c_prev[b], out_c[r], out_h[r], hp[b], False, H, 0, H)
        prev = off
        off += bs


@njit(**JIT)
def lstm_sequence_backward(d_out, w_hh_t, c0, out_c, out_gates, batch_sizes, rec_mask,
                           io_dh, io_dc, out_dgates):
    """Backpropagate through an LSTM run by :func:`lstm_sequence_forward`.

    Parameters
    ----------
    d_out : (N, H) float
        Gradient of the loss with respect to every ``h_t`` (packed).
    w_hh_t : (H, 4H) float
        Recurrent weights, transposed (``W_hh.T``, C-contiguous).
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
    lstm_backward_slice(d_out, w_hh_t, no_packed_weight(w_hh_t), c0, out_c, out_gates, batch_sizes, rec_mask,
                        io_dh, io_dc, out_dgates, np.empty(0, dtype=np.int64), np.int64(0), io_dh.shape[0])


@njit(**JIT)
def lstm_backward_slice(d_out, w_hh_t, wp, c0, out_c, out_gates, batch_sizes, rec_mask,
                        io_dh, io_dc, out_dgates, progress, b0, b1):
    """:func:`lstm_sequence_backward` for the sorted sequences ``b0 <= b < b1`` only.

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
            if t == 0:
                cpr = c0[b0 + b]
            else:
                cpr = out_c[offsets[t - 1] + b0 + b]
            cell_backward(out_gates[r], out_dgates[r], out_c[r], d_out[r], cpr, io_dh[b0 + b], io_dc[b0 + b],
                           H, 0, H, one)
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


# ---------------------------------------------------------------------------
# Training with the hidden units split across threads (see
# :mod:`fastseq.kernels.infer` for the scheme): thread ``tid`` computes units
# ``j0 <= j < j1`` of every row and step, a barrier
# (:func:`fastseq.kernels._sync.barrier`) after each step.  No recurrent
# dropout mask.


@njit(**JIT)
def lstm_forward_part(xp, w_hh, h0, c0, batch_sizes, j0, j1, tid, flags, out_h, out_c, out_gates):
    """Units ``j0..j1`` of :func:`lstm_sequence_forward`: gates stored when
    ``out_gates`` has rows (training), none for an empty (0, 4H) array
    (inference)."""
    signal_started(flags, tid)
    H = h0.shape[1]
    T = batch_sizes.shape[0]
    store = out_gates.shape[0] > 0
    w = own_rows(w_hh, 4, j0, j1)
    wp = pack_for_steps(w, T)
    hp = np.empty((batch_sizes[0], 4 * (j1 - j0)), dtype=xp.dtype)
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
        packed_matmul(h_prev, w, wp, hp[:nb])
        if store:  # (outside the row loops, as in lstm_forward_slice)
            for b in range(nb):
                r = off + b
                cell_forward(xp[r], hp[b], c_prev[b], out_c[r], out_h[r], out_gates[r], True, H, j0, j1)
        else:
            for b in range(nb):
                r = off + b
                cell_forward(xp[r], hp[b], c_prev[b], out_c[r], out_h[r], hp[b], False, H, j0, j1)
        if t + 1 < T:
            barrier(flags, tid, t + 1)
        prev = off
        off += nb
    if tid > 0:
        wait_joined(flags)


@njit(**JIT)
def lstm_backward_part(d_out, w_hh_t, c0, out_c, out_gates, batch_sizes, j0, j1, tid, flags,
                       io_dh, io_dc, out_dgates):
    """Units ``j0..j1`` of :func:`lstm_sequence_backward` (no mask): this
    thread's gate gradients, a barrier, then its units of ``dh_{t-1}`` from
    every gate gradient of the step (rows ``j0..j1`` of ``W_hh.T``)."""
    signal_started(flags, tid)
    H = io_dh.shape[1]
    T = batch_sizes.shape[0]
    offsets = packed_offsets(batch_sizes)
    w = w_hh_t[j0:j1]
    wp = pack_for_steps(w, T)
    tmp = np.empty((batch_sizes[0], j1 - j0), dtype=d_out.dtype)
    one = np.ones(1, dtype=d_out.dtype)[0]
    for t in range(T - 1, -1, -1):
        nb = batch_sizes[t]
        off = offsets[t]
        for b in range(nb):
            r = off + b
            if t == 0:
                cpr = c0[b]
            else:
                cpr = out_c[offsets[t - 1] + b]
            cell_backward(out_gates[r], out_dgates[r], out_c[r], d_out[r], cpr, io_dh[b], io_dc[b],
                           H, j0, j1, one)
        barrier(flags, tid, T - t)
        packed_matmul(out_dgates[off:off + nb], w, wp, tmp[:nb])
        for b in range(nb):
            copy_row(tmp[b], io_dh[b, j0:j1])
    if tid > 0:
        wait_joined(flags)

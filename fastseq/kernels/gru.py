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
from ._packed import masked_state, packed_offsets
from ._sync import wait_for, store_release
from .matmul import no_packed_weight, packed_matmul, shared_or_packed


@njit(inline="always", **JIT)
def gru_cell(x, p, hb, b_hn, oh, g, store, H):
    """One row of the reset-after GRU: gate pre-activations ``x`` (input side,
    ``b_hn`` excluded) and ``p`` (recurrent product), previous state ``hb``;
    writes ``oh`` and, if ``store``, ``g`` = (r, z, n, a).  Callers pass
    ``store`` as a literal, so the branch folds away once inlined (as in the
    LSTM's ``cell_forward``)."""
    for j in range(H):
        gr = sigmoid(x[j] + p[j])
        gz = sigmoid(x[H + j] + p[H + j])
        a = p[2 * H + j] + b_hn[j]
        gn = tanh(x[2 * H + j] + gr * a)
        oh[j] = gn + gz * (hb[j] - gn)
        if store:
            g[j] = gr
            g[H + j] = gz
            g[2 * H + j] = gn
            g[3 * H + j] = a


@njit(inline="always", **JIT)
def gru_cell_backward(g, hpr, dh_a, dh_b, dgx, dgh, carry, one, H):
    """The gate gradients of one row of :func:`gru_cell`, from the gradient
    ``dh_a + dh_b`` of its new state, its stored gates ``g`` = (r, z, n, a)
    and previous state ``hpr``: writes ``dgx`` (3H,) (input-side
    pre-activations), ``dgh`` (3H,) (recurrent product) and ``carry`` (H,)
    (the part of the previous state's gradient through the update gate)."""
    for j in range(H):
        gr = g[j]
        gz = g[H + j]
        gn = g[2 * H + j]
        a = g[3 * H + j]
        dh = dh_a[j] + dh_b[j]
        dn = dh * (one - gz) * (one - gn * gn)
        dz = dh * (hpr[j] - gn) * gz * (one - gz)
        dr = dn * a * gr * (one - gr)
        dgx[j] = dr
        dgx[H + j] = dz
        dgx[2 * H + j] = dn
        dgh[j] = dr
        dgh[H + j] = dz
        dgh[2 * H + j] = dn * gr
        carry[j] = dh * gz


@njit(**JIT)
def gru_sequence_forward(xp, w_hh, b_hn, h0, batch_sizes, rec_mask, out_h, out_gates):
    """Run a GRU over a packed batch.

    Parameters
    ----------
    xp : (N, 3H) float
        ``x_t W_ih^T + b_ih + [b_hr, b_hz, 0]`` of every packed row.
    w_hh : (3H, H) float
        Recurrent weights ``W_hh`` (not transposed), C-contiguous.
    b_hn : (H,) float
        Recurrent bias of the candidate gate (stays inside ``r * (...)``).
    h0 : (B, H) float
        Initial state, sorted batch order.
    batch_sizes : (T,) int64
    rec_mask : (B, H) or (0, H) float
    out_h : (N, H) float
        Filled with ``h_t``.
    out_gates : (N, 4H) or (0, 4H) float
        Filled with (r, z, n, a): the activated gates and ``a_t``, the
        recurrent candidate term before the reset gate; an empty array for
        inference (nothing stored).
    """
    gru_forward_slice(xp, w_hh, no_packed_weight(w_hh), b_hn, h0, batch_sizes, rec_mask, out_h, out_gates,
                      np.empty(0, dtype=np.int64), np.int64(0), h0.shape[0])


@njit(**JIT)
def gru_forward_slice(xp, w_hh, wp, b_hn, h0, batch_sizes, rec_mask, out_h, out_gates, ready, b0, b1):
    """:func:`gru_sequence_forward` for the sorted sequences ``b0 <= b < b1`` only
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
    store = out_gates.shape[0] > 0
    n = max(b1 - b0, 0)
    wp = shared_or_packed(w_hh, wp, T)
    hm = np.empty((n, H), dtype=xp.dtype)
    hp = np.empty((n, 3 * H), dtype=xp.dtype)
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
        if store:  # (outside the row loops, as in the LSTM's forward slice)
            for b in range(nb):
                r = off + b0 + b
                gru_cell(xp[r], hp[b], h_prev[b], b_hn, out_h[r], out_gates[r], True, H)
        else:
            for b in range(nb):
                r = off + b0 + b
                gru_cell(xp[r], hp[b], h_prev[b], b_hn, out_h[r], hp[b], False, H)
        prev = off
        off += bs


@njit(**JIT)
def gru_sequence_backward(d_out, w_hh_t, h0, out_h, out_gates, batch_sizes, rec_mask,
                          io_dh, out_dgx, out_dgh):
    """Backpropagate through a GRU run by :func:`gru_sequence_forward`.

    Parameters
    ----------
    d_out : (N, H) float
        Gradient with respect to every ``h_t`` (packed).
    w_hh_t : (H, 3H) float
        ``W_hh.T``, C-contiguous.
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
    H = io_dh.shape[1]
    dgn = np.empty((out_dgx.shape[0], H), dtype=out_dgx.dtype)
    gru_backward_slice(d_out, w_hh_t, no_packed_weight(w_hh_t), h0, out_h, out_gates, batch_sizes, rec_mask,
                       io_dh, out_dgx, dgn, np.empty(0, dtype=np.int64), np.int64(0), io_dh.shape[0])
    for r in range(out_dgx.shape[0]):
        for j in range(2 * H):
            out_dgh[r, j] = out_dgx[r, j]
        for j in range(H):
            out_dgh[r, 2 * H + j] = dgn[r, j]


@njit(**JIT)
def gru_backward_slice(d_out, w_hh_t, wp, h0, out_h, out_gates, batch_sizes, rec_mask,
                       io_dh, out_dgx, out_dgn, progress, b0, b1):
    """:func:`gru_sequence_backward` for the sorted sequences ``b0 <= b < b1`` only.

    Instead of the (N, 3H) ``out_dgh`` it fills ``out_dgn`` (N, H) with its
    last third ``dn * r`` only: the first two thirds equal ``out_dgx``'s
    (``dW_hh = [out_dgx[:, :2H], out_dgn].T @ (m * h_prev)``), which saves
    an (N, 2H) array in training.  ``out_dgn`` may be empty (0, H): nothing
    is written, and the caller forms ``dn * r`` from ``out_dgx`` and the
    stored ``r`` itself (the layer does, in place, once ``out_dgx`` has served
    the input-side gradients: no (N, H) array at all).

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
    store_dgn = out_dgn.shape[0] > 0
    offsets = packed_offsets(batch_sizes)
    n = max(b1 - b0, 0)
    wp = shared_or_packed(w_hh_t, wp, T)
    tmp = np.empty((n, H), dtype=d_out.dtype)
    carry = np.empty((n, H), dtype=d_out.dtype)
    lhs = np.empty((n, 3 * H), dtype=d_out.dtype)
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
                hpr = h0[b0 + b]
            else:
                hpr = out_h[offsets[t - 1] + b0 + b]
            g = out_gates[r]
            dgx = out_dgx[r]
            dgh = lhs[b]
            dor = d_out[r]
            dhb = io_dh[b0 + b]
            cb = carry[b]
            gru_cell_backward(g, hpr, dhb, dor, dgx, dgh, cb, one, H)
            if store_dgn:
                dgn = out_dgn[r]
                for j in range(H):
                    dgn[j] = dgh[2 * H + j]
        packed_matmul(lhs[:nb], w_hh_t, wp, tmp[:nb])
        for b in range(nb):
            dhb = io_dh[b0 + b]
            tb = tmp[b]
            cb = carry[b]
            if use_mask:
                mb = rec_mask[b0 + b]
                for j in range(H):
                    dhb[j] = cb[j] + tb[j] * mb[j]
            else:
                for j in range(H):
                    dhb[j] = cb[j] + tb[j]
    if publish:
        store_release(progress, 0, T)


@njit(**JIT)
def reset_scaled(dg, gates, H, db_n, j0, j1):
    """``dg[:, 2H + j] *= gates[:, j]`` for ``j0 <= j < j1``: the gate
    gradients (N, 3H) made the recurrent side's, whose n-third is the input
    side's times ``r_t`` (``gates`` (N, >= H), ``r_t`` first), in place;
    and, unless ``db_n`` (H,) is empty, its column sums into ``db_n[j]``
    (``b_hn``'s gradient), in the same pass, rows in order (threads may
    take disjoint column ranges: the same sums)."""
    N = dg.shape[0]
    sums = db_n.shape[0] > 0
    if sums:
        db_n[j0:j1] = 0
    for i in range(N):
        d = dg[i, 2 * H + j0:2 * H + j1]
        r = gates[i, j0:j1]
        for j in range(j1 - j0):
            d[j] *= r[j]
        if sums:
            for j in range(j1 - j0):
                db_n[j0 + j] += d[j]

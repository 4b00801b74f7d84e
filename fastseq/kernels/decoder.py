"""Attention decoder: one step, the whole time loop, and its backward pass.

Glossary as in :mod:`fastseq.kernels.attention`; also T output steps, M size
of a decoder input (an embedding, or the previous output vector), R = G*Q the
stacked gate rows of the decoder cell (Q its hidden size), V outputs per step
(vocabulary or output features).

Layout
------
Time-major: ``cache`` arrays are (T, B, ...) or (T+1, B, ...) with index 0
holding the initial state.  The encoder memory is batch-major (B, S, A), see
:mod:`fastseq.kernels.attention`.  All B sequences run all T steps; shorter
targets are masked in the loss, which makes their later steps' gradients zero.

Notes
-----
One step ``t`` (``feed_t`` is the decoder input, ``s``/``c`` decoder states,
``ctx`` contexts, ``o_t`` the outputs)::

    query-before kinds (BAHDANAU, NONE):
        ctx_t = attend(s_{t-1});   x_t = [feed_t, ctx_t]
    query-after kinds (LUONG, DOT, COSINE), Luong's input feeding:
        x_t = [feed_t, ctx_{t-1}]  (ctx_0 = 0)
    s_t = cell(x_t, s_{t-1})       (RNN, GRU or LSTM, PyTorch's equations)
    query-after kinds:  ctx_t = attend(s_t)
    o_t = W_os s_t + W_oc ctx_t + b_out

``feed_t`` is the teacher's (``feed_true[t]``) where ``use_truth[t, b]`` is
set, otherwise the model's own: ``emb[argmax o_{t-1}]`` for token outputs
(``emb`` has rows) or ``o_{t-1}`` itself for vector outputs (``emb`` empty,
M = V).  The model's own feed is treated as a constant by the backward pass
(no gradient through the argmax or the fed-back vector); gradients with
respect to every ``feed_t`` are returned so the caller can route them to an
embedding.

Cell codes: :data:`CELL_CODES`.  The per-step cell math is that of the packed
sequence kernels (their row functions ``cell_forward``, ``gru_cell`` and
``rnn_cell`` of :mod:`fastseq.kernels.lstm`, ``gru``, ``rnn``, and the
backward's ``cell_backward`` and the GRU's and RNN's row loops written out);
the forward step's products use weights packed once per decoding (1-row
products of a 768 x 256 weight: 10 against 14-16 us unpacked, and 2x from 4
rows on), the backward's once per call (the sequence backward kernels, called
for one step at a time, packed nothing: 183 against 60 us for the GRU step of
B=64, Q=128).  The feed gradients are one product after the backward loop
unless a vector model fed its own outputs back (then they flow into the loop).
"""

import numpy as np
from numba import njit

from .._config import JIT
from ._packed import copy_row
from .attention import BAHDANAU, NONE, attention_backward, attention_forward
from .gru import gru_cell, gru_cell_backward
from .lstm import cell_backward, cell_forward
from .matmul import pack_weight, packed_matmul
from .rnn import rnn_cell

RNN_TANH = 0
RNN_RELU = 1
GRU = 2
LSTM = 3
#: codes in the ``fed`` cache array besides token indices
FED_TEACHER = -1
FED_OWN_VECTOR = -2
#: (cell, nonlinearity) -> code passed to the kernels
CELL_CODES = {("rnn", "tanh"): RNN_TANH, ("rnn", "relu"): RNN_RELU, ("gru", "tanh"): GRU,
              ("gru", "relu"): GRU, ("lstm", "tanh"): LSTM, ("lstm", "relu"): LSTM}


@njit(**JIT)
def decoder_step(cell, kind, w, wp, att, mem, keys, src_len, feed, prev, out, work):
    """One decoder step for a batch (see the module Notes).

    Parameters
    ----------
    cell : int
        Code from :data:`CELL_CODES`.
    kind : int
        Attention code from :data:`fastseq.kernels.attention.ATTENTION_KINDS`.
    w : tuple of float arrays
        ``(w_e (R, M), w_c (R, A), b_x (R,), w_hh (R, Q), b_hn (Q,),
        w_os (V, Q), w_oc (V, A), b_out (V,))``: the input weights for the
        feed and the context, input bias (``b_ih + b_hh``; for the GRU
        ``b_ih + [b_hr, b_hz, 0]``), recurrent weights, the GRU's ``b_hn``
        (ignored by other cells), and the output layer, all untransposed and
        C-contiguous.
    wp : tuple of float arrays
        ``(w_e, w_c, w_hh, w_os, w_oc)`` packed
        (:func:`fastseq.kernels.matmul.pack_weight` or ``pack_into``): every
        product of the step runs through
        :func:`fastseq.kernels.matmul.packed_matmul`, the weights packed once
        per decoding rather than once per step.
    att : tuple
        As :func:`fastseq.kernels.attention.attention_forward`.
    mem, keys, src_len :
        (B, S, A), (B, S, K) float and (B,) int64, as ``attention_forward``.
    feed : (B, M) float
        Decoder inputs of this step.
    prev : tuple ``(s (B, Q), c (B, Q), ctx (B, A))``
        States and context of the previous step (``c`` unused but for LSTM).
    out : tuple ``(s (B, Q), c (B, Q), gates (B, 4Q), ctx (B, A), weights (B, S), o (B, V))``
        Filled with this step's states, cell cache, context, attention weights
        and outputs.
    work : tuple ``(xh (2, B, R), res (B, 6Q))``
        Scratch, overwritten; allocated once by the caller for all steps.  The
        cell reads the input side and the recurrent product from ``xh`` and
        writes gates, cell and state to ``res`` (then copied out): with
        buffers allocated in the step, and separate arrays, LLVM left the cell
        loop scalar (16 against 3 ns a unit, GRU B=16 Q=128).
    """
    w_e, w_c, b_x, w_hh, b_hn, w_os, w_oc, b_out = w
    wp_e, wp_c, wp_hh, wp_os, wp_oc = wp
    s_prev, c_prev, ctx_prev = prev
    s_new, c_new, gates, ctx_new, weights, o = out
    B = feed.shape[0]
    R = b_x.shape[0]
    before = kind == BAHDANAU or kind == NONE
    if before:
        attention_forward(kind, s_prev, keys, mem, src_len, att, weights, ctx_new)
        ctx_in = ctx_new
    else:
        ctx_in = ctx_prev
    # the input side (xh[0]) and the recurrent product (xh[1]) in one array,
    # the cell's results (gates | c | h) in another, both from the caller
    # (see ``work``): LLVM then vectorises the cell loop
    Q = s_prev.shape[1]
    xh, res = work
    xc = np.empty((B, R), dtype=feed.dtype)
    packed_matmul(feed, w_e, wp_e, xh[0])
    packed_matmul(ctx_in, w_c, wp_c, xc)
    for b in range(B):
        for j in range(R):
            xh[0, b, j] += xc[b, j] + b_x[j]
    packed_matmul(s_prev, w_hh, wp_hh, xh[1])
    # the cell: one step of the sequence kernels' arithmetic (their row functions)
    zero = np.zeros(1, dtype=feed.dtype)[0]
    for b in range(B):
        rb = res[b]
        if cell == LSTM:
            cell_forward(xh[0, b], xh[1, b], c_prev[b], rb[4 * Q:5 * Q], rb[5 * Q:], rb[:4 * Q], True, Q, 0, Q)
        elif cell == GRU:
            gru_cell(xh[0, b], xh[1, b], s_prev[b], b_hn, rb[5 * Q:], rb[:4 * Q], True, Q)
        else:
            rnn_cell(xh[0, b], xh[1, b], rb[5 * Q:], 1 if cell == RNN_RELU else 0, zero, Q)
    for b in range(B):
        rb = res[b]
        for j in range(Q):
            s_new[b, j] = rb[5 * Q + j]
        if cell == LSTM:
            for j in range(Q):
                c_new[b, j] = rb[4 * Q + j]
        if cell == LSTM or cell == GRU:
            for j in range(4 * Q):
                gates[b, j] = rb[j]
    if not before:
        attention_forward(kind, s_new, keys, mem, src_len, att, weights, ctx_new)
    V = o.shape[1]
    oc = np.empty((B, V), dtype=feed.dtype)
    packed_matmul(s_new, w_os, wp_os, o)
    packed_matmul(ctx_new, w_oc, wp_oc, oc)
    for b in range(B):
        for j in range(V):
            o[b, j] += oc[b, j] + b_out[j]


@njit(**JIT)
def decoder_forward(cell, kind, w, wp, att, emb, mem, keys, src_len, feed_true, use_truth, cache):
    """Run the decoder over T steps, teacher-forced where ``use_truth`` says.

    Parameters
    ----------
    cell, kind, w, wp, att, mem, keys, src_len :
        As :func:`decoder_step`.
    emb : (E, M) float
        Output-token embedding for the model's own feed (token outputs), or a
        (0, M) array for vector outputs (then M = V and ``o_{t-1}`` is fed).
    feed_true : (T, B, M) float
        The teacher's inputs (row 0: the begin input).
    use_truth : (T, B) int64
        1 where the teacher's input is used (always at t = 0), 0 for the
        model's own.
    cache : tuple, filled
        ``(s (T+1, B, Q), c (T+1, B, Q), gates (T, B, 4Q), ctx (T+1, B, A),
        weights (T, B, S), feed (T, B, M), o (T, B, V), fed (T, B) int64)``:
        index 0 of ``s``, ``c`` hold the initial states (set by the caller),
        ``ctx[0]`` is set to 0; ``feed`` the inputs actually used; ``fed`` the
        token fed back by the model, :data:`FED_OWN_VECTOR` where a vector model
        fed back its own output, :data:`FED_TEACHER` where the teacher's input
        was used.
    """
    s, c, gates, ctx, weights, feed, o, fed = cache
    T, B, M = feed_true.shape
    tokens = emb.shape[0] > 0
    ctx[0, :, :] = 0.0
    Q = s.shape[2]
    work = (np.empty((2, B, w[2].shape[0]), dtype=s.dtype), np.empty((B, 6 * Q), dtype=s.dtype))
    for t in range(T):
        for b in range(B):
            if use_truth[t, b] != 0 or t == 0:
                fed[t, b] = FED_TEACHER
                for j in range(M):
                    feed[t, b, j] = feed_true[t, b, j]
            elif tokens:
                k = np.argmax(o[t - 1, b])
                fed[t, b] = k
                for j in range(M):
                    feed[t, b, j] = emb[k, j]
            else:
                fed[t, b] = FED_OWN_VECTOR
                for j in range(M):
                    feed[t, b, j] = o[t - 1, b, j]
        decoder_step(cell, kind, w, wp, att, mem, keys, src_len, feed[t],
                     (s[t], c[t], ctx[t]),
                     (s[t + 1], c[t + 1], gates[t], ctx[t + 1], weights[t], o[t]), work)


@njit(**JIT)
def decoder_backward(cell, kind, w_b, att, mem, keys, src_len, cache, io_d_o, grads):
    """Backpropagate through :func:`decoder_forward`.

    Parameters
    ----------
    cell, kind, att, mem, keys, src_len, cache :
        As given to (and filled by) :func:`decoder_forward`.
    w_b : tuple of float arrays
        Transposed weights ``(w_e_t (M, R), w_c_t (A, R), w_hh_t (Q, R),
        w_os_t (Q, V), w_oc_t (A, V))``, C-contiguous.
    io_d_o : (T, B, V) float
        In: gradient of the loss with respect to the outputs.  Out: plus the
        gradient through the outputs a vector model fed back to itself (what
        the output layer's weight gradients need).
    grads : tuple of float arrays, filled
        ``(d_x (T, B, R), d_h (T, B, R), d_feed (T, B, M), d_s0 (B, Q),
        d_c0 (B, Q), d_keys (B, S, K), d_mem (B, S, A), d_qp (T, B, U),
        d_v (U,), d_g (1,))``.  ``d_x`` and ``d_h`` are the gradients of the
        gates' input and recurrent pre-activations (equal but for the GRU's
        candidate): ``dW_ih = d_x.T @ x``, ``dW_hh = d_h.T @ s_prev``,
        ``db_ih = d_x.sum``, ``db_hh = d_h.sum``.  ``d_keys``, ``d_mem``,
        ``d_v``, ``d_g`` are overwritten (zeroed first); ``d_qp`` gives
        ``dW2 = d_qp.T @ query``.
    """
    s, c, gates, ctx, weights, feed, o, fed = cache
    d_o = io_d_o
    w_e_t, w_c_t, w_hh_t, w_os_t, w_oc_t = w_b
    d_x, d_h, d_feed, d_s0, d_c0, d_keys, d_mem, d_qp, d_v, d_g = grads
    T, B, Q = d_x.shape[0], s.shape[1], s.shape[2]
    A = mem.shape[2]
    V = d_o.shape[2]
    before = kind == BAHDANAU or kind == NONE
    dt = mem.dtype
    one = dt.type(1)
    zero = dt.type(0)
    d_keys[...] = 0.0
    d_mem[...] = 0.0
    d_v[...] = 0.0
    d_g[...] = 0.0
    # every product of the loop through weights packed once per call (the
    # sequence kernels, called for one step at a time, packed nothing and
    # fell back to plain dot products: 3x slower for the recurrent product)
    wp_e = pack_weight(w_e_t)
    wp_c = pack_weight(w_c_t)
    wp_hh = pack_weight(w_hh_t)
    wp_os = pack_weight(w_os_t)
    wp_oc = pack_weight(w_oc_t)
    ds = np.zeros((B, Q), dtype=dt)
    dc = np.zeros((B, Q), dtype=dt)
    carry = np.zeros((B, Q), dtype=dt)
    no_dh = np.zeros(Q, dtype=dt)
    d_ctx = np.empty((B, A), dtype=dt)
    d_ctx_next = np.zeros((B, A), dtype=dt)
    d_ctx_in = np.empty((B, A), dtype=dt)
    tmp_q = np.empty((B, Q), dtype=dt)
    own_vectors = False
    for t in range(1, T):
        for b in range(B):
            if fed[t, b] == FED_OWN_VECTOR:
                own_vectors = True
    for t in range(T - 1, -1, -1):
        d_qp[t, :, :] = 0.0
        # output layer: o_t = W_os s_t + W_oc ctx_t + b
        packed_matmul(d_o[t], w_oc_t, wp_oc, d_ctx)
        packed_matmul(d_o[t], w_os_t, wp_os, tmp_q)
        for b in range(B):
            for j in range(A):
                d_ctx[b, j] += d_ctx_next[b, j]
            for j in range(Q):
                ds[b, j] += tmp_q[b, j]
        grads_att = (ds, d_keys, d_mem, d_qp[t], d_v, d_g)
        if not before:
            attention_backward(kind, d_ctx, s[t + 1], keys, mem, src_len, att, weights[t],
                               grads_att)
        # the cell (the sequence kernels' row arithmetic): ds is the gradient
        # with respect to s_t; gate gradients into d_x[t] (input side) and
        # d_h[t] (recurrent side), then ds <- carry + d_h[t] @ W_hh
        dxt = d_x[t]
        dht = d_h[t]
        if cell == LSTM:
            for b in range(B):
                cell_backward(gates[t, b], dxt[b], c[t + 1, b], ds[b], c[t, b], no_dh, dc[b],
                              Q, 0, Q, one)
            for b in range(B):
                copy_row(dxt[b], dht[b])
        elif cell == GRU:
            for b in range(B):
                gru_cell_backward(gates[t, b], s[t, b], ds[b], no_dh, dxt[b], dht[b], carry[b],
                                  one, Q)
        else:
            for b in range(B):
                hr = s[t + 1, b]
                dor = ds[b]
                dg = dxt[b]
                if cell == RNN_RELU:
                    for j in range(Q):
                        dg[j] = dor[j] if hr[j] > zero else zero
                else:
                    for j in range(Q):
                        h = hr[j]
                        dg[j] = dor[j] * (one - h * h)
            for b in range(B):
                copy_row(dxt[b], dht[b])
        packed_matmul(dht, w_hh_t, wp_hh, ds)
        if cell == GRU:
            for b in range(B):
                for j in range(Q):
                    ds[b, j] += carry[b, j]
        if own_vectors:
            packed_matmul(dxt, w_e_t, wp_e, d_feed[t])
        packed_matmul(dxt, w_c_t, wp_c, d_ctx_in)
        if t > 0 and own_vectors:
            for b in range(B):
                if fed[t, b] == FED_OWN_VECTOR:
                    for j in range(V):
                        d_o[t - 1, b, j] += d_feed[t, b, j]
        if before:
            for b in range(B):
                for j in range(A):
                    d_ctx[b, j] += d_ctx_in[b, j]
            attention_backward(kind, d_ctx, s[t], keys, mem, src_len, att, weights[t],
                               (ds, d_keys, d_mem, d_qp[t], d_v, d_g))
        else:
            for b in range(B):
                copy_row(d_ctx_in[b], d_ctx_next[b])
    if not own_vectors:
        # no feed gradient flows back into the loop: one product for all steps
        np.dot(d_x.reshape(T * B, d_x.shape[2]), w_e_t.T, d_feed.reshape(T * B, d_feed.shape[2]))
    d_s0[...] = ds
    d_c0[...] = dc

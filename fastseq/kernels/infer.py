"""One-call inference of one layer and direction over a full-length batch.

For a small batch most of a forward call used to be Python around the time
loop (packing maps, state arrays, bias additions, reversal, picking the last
states; about 70 us of a 95 us LSTM B=1 H=32 T=32 call).  These entry points
take the input projection ``xp`` (rows ``t*B + b``, all sequences T steps)
and do the rest in one compiled call: bias, optional time reversal, the time
loop of the packed sequence kernels (nothing stored for a backward pass), and
the final states.  The arithmetic is that of the packed kernels, row for row.
"""

import numpy as np
from numba import njit

from .._config import JIT
from ._packed import add_bias, copy_row, own_rows, reverse_steps, swap_major
from ._sync import STRIDE, barrier, signal_started, wait_joined
from .gru import gru_cell, gru_forward_slice
from .lstm import cell_forward, lstm_forward_slice
from ._runtime import packed_blas_min_rows, project_blas_min_bytes
from .matmul import (STRIP_BYTES, empty_strips, no_packed_weight, pack_for_steps, pack_into, packed_matmul, project,
                     project_packed, project_shared)
from .rnn import rnn_forward_slice


@njit(**JIT)
def prepare(xp, b_ih, b_hh, n_hh, B, reverse):
    """``xp += b_ih + b_hh[:n_hh]`` in place (no bias when ``b_ih`` is empty);
    returns it, or a copy with the steps in reverse order when ``reverse``."""
    if b_ih.shape[0] > 0:
        bias = b_ih.copy()
        for j in range(n_hh):
            bias[j] = b_ih[j] + b_hh[j]
        add_bias(xp, bias, 0, xp.shape[0])
    if not reverse:
        return xp
    out = np.empty_like(xp)
    reverse_steps(xp, B, out)
    return out


@njit(**JIT)
def finish(run_h, B, reverse, out_h, h_n):
    """Last states into ``h_n``; the run's rows into ``out_h`` in input step order."""
    h_n[...] = run_h[run_h.shape[0] - B:]
    if reverse:
        reverse_steps(run_h, B, out_h)


@njit(**JIT)
def lstm_infer(xp, b_ih, b_hh, w_hh, h0, c0, reverse, out_h, h_n, c_n):
    """LSTM inference of one direction over B sequences of T = N / B steps.

    Parameters
    ----------
    xp : (N, 4H) float
        ``x_t W_ih^T`` of row ``t*B + b``; overwritten.
    b_ih, b_hh : (4H,) float, or empty for no bias
    w_hh : (4H, H) float
        Recurrent weights (untransposed, C-contiguous).
    h0, c0 : (B, H) float
        Initial states (read only).
    reverse : bool
        Run from step T-1 down to 0 (the reverse direction).
    out_h : (N, H) float
        Filled with ``h_t`` of row ``t*B + b`` (input step order either way).
    h_n, c_n : (B, H) float
        Filled with the states after the last step run.
    """
    B, H = h0.shape
    x = prepare(xp, b_ih, b_hh, 4 * H, B, reverse)
    lstm_run(x, w_hh, h0, c0, reverse, np.empty(0, dtype=np.int64), out_h, h_n, c_n)


@njit(**JIT)
def lstm_run(x, w_hh, h0, c0, reverse, ready, out_h, h_n, c_n):
    """:func:`lstm_infer` on ``x`` (bias added, steps in run order) from
    :func:`prepare` or, filled while this runs, from
    :func:`fastseq.kernels.matmul.project_ahead` (``ready`` its step counter;
    empty for none)."""
    B, H = h0.shape
    N = x.shape[0]
    run_h = np.empty_like(out_h) if reverse else out_h
    run_c = np.empty((N, H), dtype=x.dtype)
    lstm_forward_slice(x, w_hh, no_packed_weight(w_hh), h0, c0, np.full(N // B, B, dtype=np.int64),
                       np.empty((0, H), dtype=x.dtype), run_h, run_c,
                       np.empty((0, 4 * H), dtype=x.dtype), ready, np.int64(0), B)
    c_n[...] = run_c[N - B:]
    finish(run_h, B, reverse, out_h, h_n)


@njit(**JIT)
def gru_infer(xp, b_ih, b_hh, w_hh, h0, reverse, out_h, h_n):
    """GRU (reset after the product) inference; as :func:`lstm_infer` with
    (3H,) biases, ``b_hh``'s n-third kept inside the reset product."""
    B, H = h0.shape
    x = prepare(xp, b_ih, b_hh, 2 * H, B, reverse)
    gru_run(x, w_hh, candidate_bias(b_hh, H), h0, reverse, np.empty(0, dtype=np.int64), out_h, h_n)


@njit(**JIT)
def gru_run(x, w_hh, b_hn, h0, reverse, ready, out_h, h_n):
    """:func:`gru_infer` on prepared ``x`` (see :func:`lstm_run`); ``b_hn`` (H,)."""
    B, H = h0.shape
    N = x.shape[0]
    run_h = np.empty_like(out_h) if reverse else out_h
    gru_forward_slice(x, w_hh, no_packed_weight(w_hh), b_hn, h0, np.full(N // B, B, dtype=np.int64),
                      np.empty((0, H), dtype=x.dtype), run_h,
                      np.empty((0, 4 * H), dtype=x.dtype), ready, np.int64(0), B)
    finish(run_h, B, reverse, out_h, h_n)


@njit(**JIT)
def rnn_infer(xp, b_ih, b_hh, w_hh, h0, relu, reverse, out_h, h_n):
    """Elman RNN inference (``relu`` 1 for ReLU, 0 for tanh); as :func:`lstm_infer`."""
    B, H = h0.shape
    x = prepare(xp, b_ih, b_hh, H, B, reverse)
    rnn_run(x, w_hh, h0, relu, reverse, np.empty(0, dtype=np.int64), out_h, h_n)


@njit(**JIT)
def rnn_run(x, w_hh, h0, relu, reverse, ready, out_h, h_n):
    """:func:`rnn_infer` on prepared ``x`` (see :func:`lstm_run`)."""
    B, H = h0.shape
    N = x.shape[0]
    run_h = np.empty_like(out_h) if reverse else out_h
    rnn_forward_slice(x, w_hh, no_packed_weight(w_hh), h0, np.full(N // B, B, dtype=np.int64),
                      np.empty((0, H), dtype=x.dtype), relu, run_h, ready, np.int64(0), B)
    finish(run_h, B, reverse, out_h, h_n)


@njit(inline="always", **JIT)
def projected(inp, w_ih):
    """A new (N, M) array ``inp @ w_ih.T`` (:func:`fastseq.kernels.matmul.project`,
    no bias)."""
    xp = np.empty((inp.shape[0], w_ih.shape[0]), dtype=inp.dtype)
    project(inp, w_ih, np.empty(0, dtype=inp.dtype), xp)
    return xp


@njit(inline="always", **JIT)
def step_major(inp, out_h, B, batch_major):
    """The step-major rows (``t*B + b``) of the inputs ``inp`` and where the
    run writes the outputs: ``inp`` and ``out_h`` themselves, or with
    ``batch_major`` (rows ``b*T + t``, a batch-first array's) a transposed
    copy of ``inp`` and a new array (:func:`batch_major_out`)."""
    if not batch_major:
        return inp, out_h
    x = np.empty_like(inp)
    swap_major(inp, B, inp.shape[0] // B, x)
    return x, np.empty_like(out_h)


@njit(inline="always", **JIT)
def batch_major_out(run_h, B, batch_major, out_h):
    """The run's step-major outputs ``run_h`` into the batch-major
    ``out_h`` (with ``batch_major``; else they are ``out_h``)."""
    if batch_major:
        swap_major(run_h, run_h.shape[0] // B, B, out_h)


@njit(**JIT)
def lstm_infer_x(inp, w_ih, b_ih, b_hh, w_hh, h0, c0, reverse, batch_major, out_h, h_n, c_n):
    """:func:`lstm_infer` from the inputs ``inp`` (N, F) (rows ``t*B + b``):
    the projection (:func:`projected`) in the same call, one dispatch less
    for a small call.  With ``batch_major``, ``inp`` and ``out_h`` have
    rows ``b*T + t`` (a batch-first array's), transposed in the call (the
    same bits; two numpy copies cost a small call more, 2.6 us of an
    Elman RNN's 18 at batch 4, 32 units, 32 steps)."""
    B = h0.shape[0]
    x, run_h = step_major(inp, out_h, B, batch_major)
    lstm_infer(projected(x, w_ih), b_ih, b_hh, w_hh, h0, c0, reverse, run_h, h_n, c_n)
    batch_major_out(run_h, B, batch_major, out_h)


@njit(**JIT)
def gru_infer_x(inp, w_ih, b_ih, b_hh, w_hh, h0, reverse, batch_major, out_h, h_n):
    """:func:`gru_infer` from the inputs (see :func:`lstm_infer_x`)."""
    B = h0.shape[0]
    x, run_h = step_major(inp, out_h, B, batch_major)
    gru_infer(projected(x, w_ih), b_ih, b_hh, w_hh, h0, reverse, run_h, h_n)
    batch_major_out(run_h, B, batch_major, out_h)


@njit(**JIT)
def rnn_infer_x(inp, w_ih, b_ih, b_hh, w_hh, h0, relu, reverse, batch_major, out_h, h_n):
    """:func:`rnn_infer` from the inputs (see :func:`lstm_infer_x`)."""
    B = h0.shape[0]
    x, run_h = step_major(inp, out_h, B, batch_major)
    rnn_infer(projected(x, w_ih), b_ih, b_hh, w_hh, h0, relu, reverse, run_h, h_n)
    batch_major_out(run_h, B, batch_major, out_h)


@njit(**JIT)
def candidate_bias(b_hh, H):
    """The GRU's ``b_hn`` (last third of ``b_hh``), zeros without a bias."""
    if b_hh.shape[0] > 0:
        return b_hh[2 * H:].copy()
    return np.zeros(H, dtype=b_hh.dtype)


@njit(**JIT)
def fused_weights(w_ih, w_hh, b_ih, b_hh, w_cat, wp, bias, full):
    """What :func:`lstm_fused_slice` reads, in one call: ``wp`` the packed
    form of ``[W_ih | W_hh]`` (4H, F + H) (:func:`fastseq.kernels.matmul.pack_into`,
    packed straight from the two weights), ``bias = b_ih + b_hh`` (zeros
    when ``b_ih`` is empty: no bias) and ``w_cat = [W_ih | W_hh]`` itself:
    all of it with ``full`` (a slice of :data:`fastseq.kernels.matmul.PACKED_BLAS_MIN_ROWS`
    rows or more hands it to BLAS), else only its rows past the packed
    strips, the only ones :func:`fastseq.kernels.matmul.packed_matmul`
    reads then (with the whole copy this call took 99 us at H 256, of
    which the packing 55; 586 and 244 at H 500; one thread;
    bench/RESULTS.md, "eighteenth session")."""
    F, H = w_ih.shape[1], w_hh.shape[1]
    r0 = 0 if full else wp.shape[0] * wp.shape[2]
    for r in range(r0, w_cat.shape[0]):   # (element loops: a slice a row cost 4 us at 128 rows)
        for j in range(F):
            w_cat[r, j] = w_ih[r, j]
        for j in range(H):
            w_cat[r, F + j] = w_hh[r, j]
    pack_into(w_ih, wp[:, :F])
    pack_into(w_hh, wp[:, F:])
    if b_ih.shape[0] > 0:
        for j in range(bias.shape[0]):
            bias[j] = b_ih[j] + b_hh[j]
    else:
        bias[:] = 0


@njit(**JIT)
def lstm_fused_slice(inp, w_cat, wp, bias, h0, c0, reverse, out, col0, h_n, c_n, b0, b1):
    """LSTM inference of sequences ``b0 <= b < b1`` of a full-length batch
    with the input projection inside each step's product: ``[x_t | h_{t-1}]
    @ w_cat.T``, ``w_cat = [W_ih | W_hh]`` (4H, F + H).  This replaces the
    separate projection of every step (an (N, 4H) array written to memory
    and read back: a thin product, memory-bound for few features) by a
    product a little deeper than the recurrent one, whose result stays in
    cache; only the previous step's cell is kept.  From a row block of the
    packed product (4 rows) the step's product is compute-bound and the
    deeper product costs what the two did; at one row it streams ``W_ih``
    from cache every step as well, which a separate projection does not.

    Parameters
    ----------
    inp : (N, F) float
        Step ``t`` of sequence ``b`` in row ``b*T + t`` (a (B, T, F) array's
        rows).
    w_cat : (4H, F + H) float, C-contiguous
    wp : float
        ``pack_weight(w_cat)`` (see :func:`fastseq.kernels.matmul.pack_into`).
    bias : (4H,) float
        ``b_ih + b_hh`` (zeros for no bias).
    h0, c0 : (B, H) float
    reverse : bool
        Run from step T-1 down to 0.
    out : (N, >= col0 + H) float
        ``h_t`` of the slice's rows (ordered as ``inp``'s) in columns
        ``col0..col0+H``.
    h_n, c_n : (B, H) float
        Rows ``b0..b1`` filled with the states after the last step run.

    Slices are independent (threads may run disjoint ones side by side), and
    a row's result does not depend on the slice it is in.
    """
    B, H = h0.shape
    F = inp.shape[1]
    T = inp.shape[0] // B
    n = b1 - b0
    if n <= 0:
        return
    a = np.empty((n, F + H), dtype=inp.dtype)
    hp = np.empty((n, 4 * H), dtype=inp.dtype)
    c = np.empty((n, H), dtype=inp.dtype)
    for b in range(n):
        a[b, F:] = h0[b0 + b]
        c[b] = c0[b0 + b]
    for s in range(T):
        t = T - 1 - s if reverse else s
        # (rows copied by loops, not slice assignments: an LSTM of 32
        # units, 8 sequences of 128 steps on one thread, 224-250 -> 174-208 us)
        for b in range(n):
            copy_row(inp[(b0 + b) * T + t], a[b, :F])
        packed_matmul(a, w_cat, wp, hp)
        for b in range(n):
            ab = a[b, F:]
            cr = c[b]
            cell_forward(bias, hp[b], cr, cr, ab, hp[b], False, H, 0, H)
            copy_row(ab, out[(b0 + b) * T + t, col0:col0 + H])
    for b in range(n):
        h_n[b0 + b] = a[b, F:]
        c_n[b0 + b] = c[b]


@njit(inline="always", **JIT)
def step_rows(B, T, batch_major):
    """``(rs, bs)``: row ``t*rs + b*bs`` holds step ``t`` of sequence ``b``
    of B sequences of T steps: ``(B, 1)`` step-major, ``(1, T)``
    batch-major."""
    if batch_major:
        return 1, T
    return B, 1


@njit(inline="always", **JIT)
def previous_states(out_h, r0, B, bs, hg):
    """The (B, H) states of the step whose sequence 0 is in row ``r0`` of
    ``out_h`` (rows ``r0 + b*bs``): a view of ``out_h``'s rows when they
    are contiguous (``bs`` 1), else gathered into ``hg`` (each part reads
    them all: the other parts' units too)."""
    if bs == 1:
        return out_h[r0:r0 + B]
    for b in range(B):
        copy_row(out_h[r0 + b * bs], hg[b])
    return hg


@njit(**JIT)
def lstm_units_part(inp, w_ih, bias, w_hh, h0, c0, reverse, j0, j1, tid, flags, out_h, h_n, c_n, batch_major):
    """Hidden units ``j0 <= j < j1`` of an LSTM inference over B sequences
    of T = N / B steps (rows ``t*B + b`` of ``inp`` and ``out_h``, as
    :func:`lstm_infer_x`, or with ``batch_major`` rows ``b*T + t``, as a
    (B, T, F) array's: no transposed copy of the input or the output),
    one of the parts that threads run side by side: this part's rows of
    ``W_ih`` and ``W_hh`` (one cache's share each), its own input projection
    (no thread waits for another's), then the time loop
    (:func:`lstm_units_loop`).  ``bias`` (4H,) is ``b_ih + b_hh``, empty for
    none.

    Each output sums in the order :func:`lstm_infer_x`'s does (the packed
    product per output, then the bias), so a split whose parts keep every
    gate row in a whole strip of the packed product
    (:func:`fastseq.kernels.matmul.pack_weight`) gives its bits."""
    signal_started(flags, tid)
    xp = units_projection(inp, w_ih, bias, 4, j0, j1)
    lstm_units_loop(xp, w_hh, h0, c0, reverse, j0, j1, tid, flags, out_h, h_n, c_n, batch_major)


@njit(**JIT)
def lstm_units_slice(inp, w_ih, bias, w_hh, h0, c0, reverse, b0, b1, tid, flags, out_h, h_n, c_n):
    """Sequences ``b0 <= b < b1`` of :func:`lstm_units_part`'s call with
    batch-major rows (``b*T + t``), every unit on this thread: one part of
    a batch split of the unit split's call (no barrier: a row needs no
    other row).  :func:`lstm_units_part` on the slice's rows, all units,
    as the only part of its own split; a row's result does not depend on
    the other rows (nor on the units a part takes), so the parts give the
    unit split's bits and its one-thread form's.  ``tid`` and ``flags``
    are the split's (its start mark, and a pool thread's part returns once
    the caller waits for it)."""
    signal_started(flags, tid)
    T = inp.shape[0] // h0.shape[0]
    if b1 > b0:
        lstm_units_part(inp[b0 * T:b1 * T], w_ih, bias, w_hh, h0[b0:b1], c0[b0:b1], reverse, 0, w_hh.shape[1], 0,
                        np.zeros(STRIDE, dtype=np.int64), out_h[b0 * T:b1 * T], h_n[b0:b1], c_n[b0:b1], True)
    if tid > 0:
        wait_joined(flags)


@njit(**JIT)
def gru_units_slice(inp, w_ih, bias, b_hn, w_hh, h0, reverse, b0, b1, tid, flags, out_h, h_n):
    """:func:`lstm_units_slice` for the reset-after GRU
    (:func:`gru_units_part`'s arguments)."""
    signal_started(flags, tid)
    T = inp.shape[0] // h0.shape[0]
    if b1 > b0:
        gru_units_part(inp[b0 * T:b1 * T], w_ih, bias, b_hn, w_hh, h0[b0:b1], reverse, 0, w_hh.shape[1], 0,
                       np.zeros(STRIDE, dtype=np.int64), out_h[b0 * T:b1 * T], h_n[b0:b1], True)
    if tid > 0:
        wait_joined(flags)


@njit(**JIT)
def own_packed(w, G, j0, j1, steps, rows):
    """``(w_own, wp)``: a part's rows ``g*H + j`` (``j0 <= j < j1``) of
    ``w`` (G*H, K) for :func:`fastseq.kernels.matmul.packed_matmul` of
    ``rows`` rows a call, ``steps`` calls, and their packed form
    (:func:`fastseq.kernels.matmul.pack_for_steps` of
    :func:`fastseq.kernels._packed.own_rows`, the same values).  When each
    gate's share fills whole strips, fewer rows than
    :data:`fastseq.kernels.matmul.PACKED_BLAS_MIN_ROWS` and more than one
    step, each gate's rows are packed straight from ``w`` (no copy of
    them first: a copy and a pack of 0.4 MB a thread at H = 256) and
    ``w_own`` is a view of ``w``'s first rows standing for their shape:
    the packed product then reads no row of it (every output is in a
    strip; no BLAS)."""
    H = w.shape[0] // G
    n = j1 - j0
    SW = STRIP_BYTES // w.itemsize
    if n % SW != 0 or rows >= packed_blas_min_rows() or steps < 2:
        own = own_rows(w, G, j0, j1)
        return own, pack_for_steps(own, steps)
    per = n // SW
    wp = empty_strips(w, G * per)
    for g in range(G):
        pack_into(w[g * H + j0:g * H + j1], wp[g * per:(g + 1) * per])
    return w[:G * n], wp


@njit(**JIT)
def units_projection(inp, w_ih, bias, G, j0, j1):
    """(N, G*n) input projection of the units ``j0 <= j < j1`` (n of them)
    of a layer of G gates: ``inp @ W_ih[rows].T + bias[rows]`` for the
    rows ``g*H + j`` (:func:`fastseq.kernels._packed.own_rows`), gate ``g``
    of unit ``j0 + q`` in column ``g*n + q``; ``bias`` (G*H,) or empty."""
    H = w_ih.shape[0] // G
    n = j1 - j0
    xp = np.empty((inp.shape[0], G * n), dtype=inp.dtype)
    own_bias = np.empty(G * n if bias.shape[0] > 0 else 0, dtype=inp.dtype)
    if bias.shape[0] > 0:
        for g in range(G):
            own_bias[g * n:(g + 1) * n] = bias[g * H + j0:g * H + j1]
    # project()'s packed path (never BLAS: a row's result is then the one-thread
    # call's, whose projection is computed ahead, packed, from this size on:
    # Recurrent._infer_units), its weight packed straight from W_ih's rows;
    # from project()'s BLAS size in blocks of PROJECT_STREAMED_ROWS rows (a
    # weight streamed from the L3 once per block)
    w, wp = own_packed(w_ih, G, j0, j1, 2, 1)
    if G * n * w_ih.shape[1] * w_ih.itemsize >= project_blas_min_bytes():
        project_shared(inp, w, wp, own_bias, xp)
    else:
        project_packed(inp, w, wp, own_bias, xp)
    return xp


@njit(**JIT)
def lstm_units_loop(xp, w_hh, h0, c0, reverse, j0, j1, tid, flags, out_h, h_n, c_n, batch_major):
    """The time loop of :func:`lstm_units_part` from its projection ``xp``
    (N, 4n), gate ``k`` of unit ``j0 + q`` in column ``k*n + q``: each
    step's product from the full ``h_{t-1}``, the cell of this part's
    units, then a barrier (:func:`fastseq.kernels._sync.barrier`, slot
    ``tid`` of ``flags``) before the next step reads what the other parts
    wrote.  Writes columns ``j0..j1`` of ``out_h`` (N, H), ``h_n`` and
    ``c_n`` (B, H).  A pool thread's part (``tid`` > 0) returns once the
    caller waits for it (:func:`fastseq.kernels._sync.wait_joined`).  With
    ``batch_major`` the rows of ``xp`` and ``out_h`` are ``b*T + t``
    (:func:`step_rows`).  (A function of its own: compiled in the same
    function as the projection, the loop ran at about half its speed in
    hand-made trials.)"""
    B = h0.shape[0]
    N = xp.shape[0]
    T = N // B
    n = j1 - j0
    dt = xp.dtype
    w, wp = own_packed(w_hh, 4, j0, j1, T, B)
    hp = np.empty((B, 4 * n), dtype=dt)
    hg = np.empty((B if batch_major else 0, out_h.shape[1]), dtype=dt)
    rs, bs = step_rows(B, T, batch_major)
    # the cell of the previous step and of this one (two buffers, swapped
    # each step: the cell reads one and writes the other)
    cs = np.empty((2, B, n), dtype=dt)
    for b in range(B):
        cs[0, b] = c0[b, j0:j1]
    prev = 0
    for s in range(T):
        t = T - 1 - s if reverse else s
        r0 = t * rs
        h_prev = h0 if s == 0 else previous_states(out_h, prev, B, bs, hg)
        packed_matmul(h_prev, w, wp, hp)
        cp, cn = cs[s & 1], cs[1 - (s & 1)]
        for b in range(B):
            # gate k of unit q at k*n + q in both xp's and hp's rows: the
            # whole-row cell of n units on them
            r = r0 + b * bs
            cell_forward(xp[r], hp[b], cp[b], cn[b], out_h[r, j0:j1], hp[b], False, n, 0, n)
        if s + 1 < T:
            barrier(flags, tid, s + 1)
        prev = r0
    for b in range(B):
        h_n[b, j0:j1] = out_h[prev + b * bs, j0:j1]
        c_n[b, j0:j1] = cs[T & 1, b]
    if tid > 0:
        wait_joined(flags)


@njit(**JIT)
def gru_units_part(inp, w_ih, bias, b_hn, w_hh, h0, reverse, j0, j1, tid, flags, out_h, h_n, batch_major):
    """:func:`lstm_units_part` for the reset-after GRU: ``bias`` (3H,) is
    the input side's (``b_ih + [b_hr, b_hz, 0]``, empty for none) and
    ``b_hn`` (H,) the candidate's (zeros for none); the time loop is
    :func:`gru_units_loop`.  Each output sums as in :func:`gru_infer_x`."""
    signal_started(flags, tid)
    xp = units_projection(inp, w_ih, bias, 3, j0, j1)
    gru_units_loop(xp, w_hh, b_hn[j0:j1].copy(), h0, reverse, j0, j1, tid, flags, out_h, h_n, batch_major)


@njit(**JIT)
def gru_units_loop(xp, w_hh, b_hn, h0, reverse, j0, j1, tid, flags, out_h, h_n, batch_major):
    """The time loop of :func:`gru_units_part` (as :func:`lstm_units_loop`;
    ``b_hn`` (n,) this part's units' candidate bias)."""
    B = h0.shape[0]
    N = xp.shape[0]
    T = N // B
    n = j1 - j0
    w, wp = own_packed(w_hh, 3, j0, j1, T, B)
    hp = np.empty((B, 3 * n), dtype=xp.dtype)
    hg = np.empty((B if batch_major else 0, out_h.shape[1]), dtype=xp.dtype)
    rs, bs = step_rows(B, T, batch_major)
    prev = 0
    for s in range(T):
        t = T - 1 - s if reverse else s
        r0 = t * rs
        h_prev = h0 if s == 0 else previous_states(out_h, prev, B, bs, hg)
        packed_matmul(h_prev, w, wp, hp)
        for b in range(B):
            r = r0 + b * bs
            gru_cell(xp[r], hp[b], h_prev[b, j0:j1], b_hn, out_h[r, j0:j1], hp[b], False, n)
        if s + 1 < T:
            barrier(flags, tid, s + 1)
        prev = r0
    for b in range(B):
        h_n[b, j0:j1] = out_h[prev + b * bs, j0:j1]
    if tid > 0:
        wait_joined(flags)

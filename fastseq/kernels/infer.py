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
from ._packed import own_rows, reverse_steps
from ._sync import barrier
from .activations import sigmoid, tanh
from .gru import gru_forward_slice
from .lstm import lstm_forward_slice
from .matmul import pack_for_steps, packed_matmul
from .rnn import rnn_forward_slice


@njit(**JIT)
def prepare(xp, b_ih, b_hh, n_hh, B, reverse):
    """``xp += b_ih + b_hh[:n_hh]`` in place (no bias when ``b_ih`` is empty);
    returns it, or a copy with the steps in reverse order when ``reverse``."""
    N, GH = xp.shape
    if b_ih.shape[0] > 0:
        bias = b_ih.copy()
        for j in range(n_hh):
            bias[j] = b_ih[j] + b_hh[j]
        for r in range(N):
            xr = xp[r]
            for j in range(GH):
                xr[j] += bias[j]
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
    N = xp.shape[0]
    x = prepare(xp, b_ih, b_hh, 4 * H, B, reverse)
    run_h = np.empty_like(out_h) if reverse else out_h
    run_c = np.empty((N, H), dtype=xp.dtype)
    lstm_forward_slice(x, w_hh, h0, c0, np.full(N // B, B, dtype=np.int64),
                       np.empty((0, H), dtype=xp.dtype), run_h, run_c,
                       np.empty((0, 4 * H), dtype=xp.dtype), np.int64(0), B)
    c_n[...] = run_c[N - B:]
    finish(run_h, B, reverse, out_h, h_n)


@njit(**JIT)
def gru_infer(xp, b_ih, b_hh, w_hh, h0, reverse, out_h, h_n):
    """GRU (reset after the product) inference; as :func:`lstm_infer` with
    (3H,) biases, ``b_hh``'s n-third kept inside the reset product."""
    B, H = h0.shape
    N = xp.shape[0]
    x = prepare(xp, b_ih, b_hh, 2 * H, B, reverse)
    b_hn = b_hh[2 * H:].copy() if b_hh.shape[0] > 0 else np.zeros(H, dtype=xp.dtype)
    run_h = np.empty_like(out_h) if reverse else out_h
    gru_forward_slice(x, w_hh, b_hn, h0, np.full(N // B, B, dtype=np.int64),
                      np.empty((0, H), dtype=xp.dtype), run_h,
                      np.empty((0, 4 * H), dtype=xp.dtype), np.int64(0), B)
    finish(run_h, B, reverse, out_h, h_n)


@njit(**JIT)
def rnn_infer(xp, b_ih, b_hh, w_hh, h0, relu, reverse, out_h, h_n):
    """Elman RNN inference (``relu`` 1 for ReLU, 0 for tanh); as :func:`lstm_infer`."""
    B, H = h0.shape
    N = xp.shape[0]
    x = prepare(xp, b_ih, b_hh, H, B, reverse)
    run_h = np.empty_like(out_h) if reverse else out_h
    rnn_forward_slice(x, w_hh, h0, np.full(N // B, B, dtype=np.int64),
                      np.empty((0, H), dtype=xp.dtype), relu, run_h, np.int64(0), B)
    finish(run_h, B, reverse, out_h, h_n)


# ---------------------------------------------------------------------------
# The same, split over the hidden units (the LSTM's is
# :func:`fastseq.kernels.lstm.lstm_forward_part` with no gates stored): thread ``tid`` computes units
# ``j0 <= j < j1`` of every row from its own rows of W_hh (gate g's rows
# ``g*H + j``, copied into a contiguous block that stays in its core's cache:
# W_hh of an H = 256 LSTM is 1 MB, each half fits a 1 MB L2), then waits at a
# barrier (:mod:`fastseq.kernels._sync`) until all threads have written
# step t before anyone reads it as h_{t-1}.  For batches too small to split by
# sequence (B = 1 cannot be split at all).  ``x`` comes from :func:`prepare`
# (bias added, steps in run order); each thread writes only its own columns
# of ``run_h`` and of the final states.


@njit(**JIT)
def gru_infer_part(x, w_hh, b_hh, h0, j0, j1, tid, flags, run_h):
    """Units ``j0..j1`` of a GRU (reset after the product) run over prepared
    ``x`` (N, 3H); ``b_hh`` (3H,) or empty.  Writes ``run_h[:, j0:j1]``."""
    B, H = h0.shape
    T = x.shape[0] // B
    nj = j1 - j0
    w = own_rows(w_hh, 3, j0, j1)
    wp = pack_for_steps(w, T)
    b_hn = np.zeros(nj, dtype=x.dtype)
    if b_hh.shape[0] > 0:
        for jj in range(nj):
            b_hn[jj] = b_hh[2 * H + j0 + jj]
    hp = np.empty((B, 3 * nj), dtype=x.dtype)
    for t in range(T):
        h_prev = h0 if t == 0 else run_h[(t - 1) * B:t * B]
        packed_matmul(h_prev, w, wp, hp)
        for b in range(B):
            xr = x[t * B + b]
            p = hp[b]
            hb = h_prev[b]
            oh = run_h[t * B + b]
            for jj in range(nj):
                j = j0 + jj
                gr = sigmoid(xr[j] + p[jj])
                gz = sigmoid(xr[H + j] + p[nj + jj])
                a = p[2 * nj + jj] + b_hn[jj]
                gn = tanh(xr[2 * H + j] + gr * a)
                oh[j] = gn + gz * (hb[j] - gn)
        if t + 1 < T:
            barrier(flags, tid, t + 1)


@njit(**JIT)
def rnn_infer_part(x, w_hh, h0, relu, j0, j1, tid, flags, run_h):
    """Units ``j0..j1`` of an Elman RNN run over prepared ``x`` (N, H).
    Writes ``run_h[:, j0:j1]``."""
    B, H = h0.shape
    T = x.shape[0] // B
    nj = j1 - j0
    w = own_rows(w_hh, 1, j0, j1)
    wp = pack_for_steps(w, T)
    hp = np.empty((B, nj), dtype=x.dtype)
    zero = np.zeros(1, dtype=x.dtype)[0]
    for t in range(T):
        h_prev = h0 if t == 0 else run_h[(t - 1) * B:t * B]
        packed_matmul(h_prev, w, wp, hp)
        for b in range(B):
            xr = x[t * B + b]
            p = hp[b]
            oh = run_h[t * B + b]
            if relu:
                for jj in range(nj):
                    v = xr[j0 + jj] + p[jj]
                    oh[j0 + jj] = v if v > zero else zero
            else:
                for jj in range(nj):
                    oh[j0 + jj] = tanh(xr[j0 + jj] + p[jj])
        if t + 1 < T:
            barrier(flags, tid, t + 1)

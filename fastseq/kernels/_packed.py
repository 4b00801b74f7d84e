"""Small pieces every packed time-loop kernel shares (inlined into them)."""

import numpy as np
from numba import njit

from .._config import JIT


@njit(inline="always", **JIT)
def packed_offsets(batch_sizes):
    """(T + 1,) int64: the first packed row of each step, and N last."""
    T = batch_sizes.shape[0]
    offsets = np.zeros(T + 1, dtype=batch_sizes.dtype)
    for t in range(T):
        offsets[t + 1] = offsets[t] + batch_sizes[t]
    return offsets


@njit(inline="always", **JIT)
def masked_state(h_prev, rec_mask, b0, out):
    """``h_prev`` (nb, H) scaled by the recurrent dropout mask rows
    ``b0..b0+nb`` into ``out`` (nb, H), which is returned; ``h_prev`` itself
    when the mask is empty (no copy)."""
    if rec_mask.shape[0] == 0:
        return h_prev
    nb, H = h_prev.shape
    for b in range(nb):
        for j in range(H):
            out[b, j] = h_prev[b, j] * rec_mask[b0 + b, j]
    return out


@njit(inline="always", **JIT)
def own_rows(w, G, j0, j1):
    """(G*(j1-j0), K) contiguous copy of the rows ``g*H + j`` of ``w``
    (G*H, K) (G stacked gates of H rows: ``W_hh``, or ``W_ih`` with K
    inputs), ``j0 <= j < j1``: one thread's share of the weights when the
    hidden units are split across threads."""
    H = w.shape[0] // G
    K = w.shape[1]
    nj = j1 - j0
    out = np.empty((G * nj, K), dtype=w.dtype)
    for g in range(G):
        for jj in range(nj):
            src = w[g * H + j0 + jj]
            dst = out[g * nj + jj]
            for k in range(K):
                dst[k] = src[k]
    return out


@njit(inline="always", **JIT)
def reverse_steps(src, B, out):
    """``out`` = the (T*B, .) rows of ``src`` with the T steps of B rows in
    reverse order."""
    T = src.shape[0] // B
    for t in range(T):
        for b in range(B):
            copy_row(src[(T - 1 - t) * B + b], out[t * B + b])


@njit(inline="always", **JIT)
def copy_row(src, dst):
    """``dst[:] = src`` for 1-D arrays (views of rows), as a plain loop:
    numba's slice assignment costs about 20 ns more a row and 4-5x the
    time an element (8 rows of 64 floats: 27 against 5 ns a row, znver5;
    bench/RESULTS.md, "twenty-fifth session")."""
    for k in range(src.shape[0]):
        dst[k] = src[k]


@njit(inline="always", **JIT)
def swap_major(src, B, T, out):
    """``out[t*B + b] = src[b*T + t]``: the rows of B sequences of T steps,
    batch-major, step-major (``swap_major(src, T, B, out)`` the way back)."""
    for b in range(B):
        for t in range(T):
            copy_row(src[b * T + t], out[t * B + b])


@njit(inline="always", **JIT)
def add_bias(out, bias, r0, r1):
    """``out[r] += bias`` for the rows ``r0 <= r < r1`` (nothing when ``bias``
    is empty)."""
    if bias.shape[0] == 0:
        return
    for r in range(r0, r1):
        o = out[r]
        for j in range(o.shape[0]):
            o[j] += bias[j]

"""Weight gradients of one layer and direction, computed behind its backward
time loop.

After the backward loop of a packed batch, the weight gradients are matrix
products over all rows: ``dW_ih = dg^T x``, ``dW_hh = dg_h^T h_prev``, the
bias gradients column sums, and the input gradient ``dg W_ih``.  When the
loop runs on one thread (a batch too small to split), another thread can
compute them a chunk of steps at a time, from the last step down, as soon as
the loop has published (``progress``, see the ``*_backward_slice`` kernels)
that the chunk's gate gradients are final: the products overlap the loop
instead of following it.  The chunks depend only on the batch sizes, so the
sums are the same whichever thread runs them, and at any thread count.
"""

import numpy as np
from numba import njit

from .._config import JIT
from ._packed import packed_offsets
from ._sync import wait_for

#: rows of the gate gradients per chunk (at least one step): a quarter of
#: the rows, within these bounds.  Each chunk's products write a temporary
#: the size of the weights and add it in, which made 64-row chunks 1.4-1.5x
#: slower than whole BLAS products; larger ones start later behind the
#: loop.  Training steps, alternated, 256 rows against 64: LSTM B=4 H=256
#: T=128 1.19x faster, RNN/GRU B=4 H=256 T=128 1.07-1.09x, but B=1 T=128
#: 0.91-0.95x (one chunk after the loop instead of two behind it).
CHUNK_ROWS = 64
CHUNK_ROWS_MAX = 256


@njit(**JIT)
def weight_grads_behind(dg, inp, w_ih, h0, out_h, gates, batch_sizes, mask, gru, progress,
                        dW_ih, db_ih, dW_hh, db_hh, d_inp):
    """Fill the gradients of one layer and direction from its gate gradients.

    Parameters
    ----------
    dg : (N, GH) float
        Gate (pre-activation) gradients from the backward loop, packed rows.
        For the GRU (``gru`` True) the n-third is multiplied by the reset
        gate in place once the input-side products have used it.
    inp : (N, F) float
        The layer's input rows; ``w_ih`` (GH, F) its input weights.
    h0, out_h : (B, H), (N, H) float
        Initial state and the forward pass's states (``h_prev`` of each row).
    gates : (N, 4H) float
        The GRU's stored gates (``r`` in the first H columns); ignored otherwise.
    batch_sizes : (T,) int64
    mask : (B, H) or (0, H) float
        Recurrent dropout mask of the forward pass (scales ``h_prev``).
    progress : int64 array
        The loop's published count of finished steps from the end (waited on;
        an already-final count for a run after the loop).
    dW_ih, dW_hh : (GH, F), (GH, H) float
        Overwritten with the weight gradients.
    db_ih, db_hh : (GH,) float, or empty without bias
        Overwritten with the bias gradients.
    d_inp : (N, F) float, or (0, F)
        Overwritten with the input gradient, if it has rows.
    """
    T = batch_sizes.shape[0]
    H = h0.shape[1]
    GH = dg.shape[1]
    offsets = packed_offsets(batch_sizes)
    has_bias = db_ih.shape[0] > 0
    want_dx = d_inp.shape[0] > 0
    use_mask = mask.shape[0] > 0
    dW_ih[...] = 0
    dW_hh[...] = 0
    if has_bias:
        db_ih[...] = 0
        db_hh[...] = 0
    # bias columns whose gradient is the same on both sides (all but the
    # GRU's n-third, which the recurrent side takes after the reset gate)
    same = 2 * H if gru else GH
    chunk = min(CHUNK_ROWS_MAX, max(CHUNK_ROWS, offsets[T] // 4))
    most = chunk
    for t in range(T):
        most = max(most, batch_sizes[t])
    hp = np.empty((most, H), dtype=dg.dtype)
    t1 = T
    while t1 > 0:
        t0 = t1 - 1
        rows = batch_sizes[t0]
        while t0 > 0 and rows + batch_sizes[t0 - 1] <= chunk:
            t0 -= 1
            rows += batch_sizes[t0]
        wait_for(progress, 0, T - t0)
        r0 = offsets[t0]
        r1 = offsets[t1]
        g = dg[r0:r1]
        dW_ih += np.dot(g.T, inp[r0:r1])
        if want_dx:
            np.dot(g, w_ih, d_inp[r0:r1])
        if has_bias:
            for r in range(rows):
                gr = g[r]
                for j in range(GH):
                    db_ih[j] += gr[j]
        if gru:
            for r in range(rows):
                gr = g[r]
                rg = gates[r0 + r]
                for j in range(H):
                    gr[2 * H + j] *= rg[j]
        for t in range(t0, t1):
            for b in range(batch_sizes[t]):
                dst = hp[offsets[t] - r0 + b]
                src = h0[b] if t == 0 else out_h[offsets[t - 1] + b]
                if use_mask:
                    mb = mask[b]
                    for j in range(H):
                        dst[j] = src[j] * mb[j]
                else:
                    for j in range(H):
                        dst[j] = src[j]
        dW_hh += np.dot(g.T, hp[:rows])
        if has_bias:
            # only the GRU's n-third differs from db_ih (its rows changed above)
            for r in range(rows):
                gr = g[r]
                for j in range(same, GH):
                    db_hh[j] += gr[j]
        t1 = t0
    if has_bias:
        db_hh[:same] = db_ih[:same]

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

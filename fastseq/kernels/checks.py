"""Input checks in compiled code: whether a float array holds only finite
values, read from its bits (an exponent of all ones is an infinity or a NaN).

Integer arithmetic, so no fast-math flag can fold the test away, and the
loop vectorises (a maximum over integers reorders freely).  Against numpy's
``np.isfinite(a).all()`` (a temporary array of booleans): 0.4 against
1.3 us for a batch-1 input of 32 values, 49 against 76 us for 0.9M values
(AMD EPYC, znver4).
"""

import numpy as np
from numba import njit

from .._config import JIT


@njit(**JIT)
def finite32(a):
    """Whether every value of a 1-D C-contiguous float32 array is finite."""
    bits = a.view(np.uint32)
    mask = np.uint32(0x7F800000)
    m = np.uint32(0)
    for i in range(bits.size):
        m = max(m, bits[i] & mask)
    return m != mask


@njit(**JIT)
def finite64(a):
    """Whether every value of a 1-D C-contiguous float64 array is finite."""
    bits = a.view(np.uint64)
    mask = np.uint64(0x7FF0000000000000)
    m = np.uint64(0)
    for i in range(bits.size):
        m = max(m, bits[i] & mask)
    return m != mask

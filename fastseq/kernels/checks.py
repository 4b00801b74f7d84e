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


def _finite_for(uint, mask):
    """The test for floats whose bits read as ``uint`` with the exponent
    field ``mask`` (as a plain function to compile once per float type)."""

    def finite(a):
        """Whether every value of a 1-D C-contiguous float array is finite."""
        bits = a.view(uint)
        m = uint(0)
        for i in range(bits.size):
            m = max(m, bits[i] & mask)
        return m != mask

    # (a name of its own: numba's cache files are named after it)
    finite.__name__ = finite.__qualname__ = f"finite_{np.dtype(uint).name}"
    return finite


#: float32 and float64 (1-D, C-contiguous)
finite32 = njit(**JIT)(_finite_for(np.uint32, np.uint32(0x7F800000)))
finite64 = njit(**JIT)(_finite_for(np.uint64, np.uint64(0x7FF0000000000000)))

"""Scalar activations, inlined into the fused gate loops of the cell kernels.

``sigmoid`` is written so that it never overflows into NaN: for very negative
``x``, ``exp(-x)`` is ``inf`` and ``1 / (1 + inf)`` is exactly 0.
"""

import numpy as np
from numba import njit

from .._config import JIT


@njit(inline="always", **JIT)
def sigmoid(x):
    """Logistic function 1 / (1 + exp(-x)) of a scalar."""
    return 1.0 / (1.0 + np.exp(-x))


@njit(inline="always", **JIT)
def tanh(x):
    """Hyperbolic tangent of a scalar."""
    return np.tanh(x)

"""The recurrent matrix product of one time step, ``out = a @ w``.

For the few rows of a small batch a BLAS call costs more than it computes
(and, inside a kernel, it would use every BLAS thread on a 1 x H vector):
:func:`step_matmul` runs a hand-written loop for fewer than
:data:`BLAS_MIN_ROWS` rows (four rows at a time, the inner loop over the
``M`` outputs vectorised) and calls BLAS (``np.dot``, SciPy's OpenBLAS)
for more.  The caller keeps BLAS at one thread while kernels run.
"""

import numpy as np
from numba import njit

from .._config import JIT

#: rows from which one step's recurrent product goes to BLAS (measured on
#: znver3: the 4-row loop wins below 8 rows, BLAS from 12, and between them for
#: products of fewer than :data:`BLAS_MIN_SIZE` weights)
BLAS_MIN_ROWS = 12
BLAS_MIN_SIZE = 256 * 1024


@njit(**JIT)
def step_matmul(a, w, out):
    """``out[:n] = a @ w``.

    Parameters
    ----------
    a : (n, K) float, C-contiguous rows
    w : (K, M) float, C-contiguous
    out : (n, M) float
    """
    n, K = a.shape
    M = w.shape[1]
    if n >= BLAS_MIN_ROWS or (n >= 8 and K * M >= BLAS_MIN_SIZE):
        np.dot(a, w, out)
        return
    b = 0
    while b + 4 <= n:
        o0 = out[b]
        o1 = out[b + 1]
        o2 = out[b + 2]
        o3 = out[b + 3]
        x0 = a[b, 0]
        x1 = a[b + 1, 0]
        x2 = a[b + 2, 0]
        x3 = a[b + 3, 0]
        wk = w[0]
        for m in range(M):
            v = wk[m]
            o0[m] = x0 * v
            o1[m] = x1 * v
            o2[m] = x2 * v
            o3[m] = x3 * v
        for k in range(1, K):
            x0 = a[b, k]
            x1 = a[b + 1, k]
            x2 = a[b + 2, k]
            x3 = a[b + 3, k]
            wk = w[k]
            for m in range(M):
                v = wk[m]
                o0[m] += x0 * v
                o1[m] += x1 * v
                o2[m] += x2 * v
                o3[m] += x3 * v
        b += 4
    while b < n:
        o0 = out[b]
        x0 = a[b, 0]
        wk = w[0]
        for m in range(M):
            o0[m] = x0 * wk[m]
        for k in range(1, K):
            x0 = a[b, k]
            wk = w[k]
            for m in range(M):
                o0[m] += x0 * wk[m]
        b += 1

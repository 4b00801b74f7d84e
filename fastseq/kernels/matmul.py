"""The recurrent matrix product of one time step, ``out = a @ w.T``.

``w`` is kept in its natural ``(M, K)`` layout (PyTorch's ``W_hh``), so each
output is a dot product of two contiguous rows.  For the few rows of one step
a BLAS call costs more than it computes: OpenBLAS repacks all of ``w`` on
every call (W_hh is 1 MB at H = 256), and its small-``n`` path reached 4-35
GFLOP/s on znver3 (2-32 rows) where the loops below reach 35-75 (4-32 rows, one
core; measured by ``bench/matmul_step.py``).  :func:`step_matmul` computes
four rows by two outputs at a time (eight running sums that LLVM keeps in
vector registers, ``reassoc`` letting it vectorise the sums over ``K``), then
two rows by four outputs, then one row by four; the outputs are taken in
column blocks of about 256 KB of ``w`` so that a block stays in L2 while every
row passes over it.  From :data:`BLAS_MIN_ROWS` rows BLAS (``np.dot``, SciPy's
OpenBLAS) is faster and is called instead.  The caller keeps BLAS at one
thread while kernels run.
"""

import numpy as np
from numba import njit

from .._config import JIT

#: rows from which one step's product goes to BLAS (znver3, one thread: the
#: loops below win up to 32 rows, tie at 64, and lose from 128 rows)
BLAS_MIN_ROWS = 64

#: bytes of ``w`` per column block (fits, with the rows, in a 1 MB L2)
BLOCK_BYTES = 256 * 1024


@njit(**JIT)
def step_matmul(a, w, out):
    """``out[:n] = a @ w.T``.

    Parameters
    ----------
    a : (n, K) float, C-contiguous rows
    w : (M, K) float, C-contiguous (the untransposed weight)
    out : (n, M) float
    """
    n, K = a.shape
    M = w.shape[0]
    if n >= BLAS_MIN_ROWS:
        np.dot(a, w.T, out)
        return
    z = a.dtype.type(0)
    mb = max(8, BLOCK_BYTES // (max(K, 1) * a.itemsize))
    for m0 in range(0, M, mb):
        m1 = min(M, m0 + mb)
        r = 0
        while r + 4 <= n:
            a0 = a[r]
            a1 = a[r + 1]
            a2 = a[r + 2]
            a3 = a[r + 3]
            m = m0
            while m + 2 <= m1:
                w0 = w[m]
                w1 = w[m + 1]
                s00 = z
                s01 = z
                s10 = z
                s11 = z
                s20 = z
                s21 = z
                s30 = z
                s31 = z
                for k in range(K):
                    x0 = w0[k]
                    x1 = w1[k]
                    s00 += a0[k] * x0
                    s01 += a0[k] * x1
                    s10 += a1[k] * x0
                    s11 += a1[k] * x1
                    s20 += a2[k] * x0
                    s21 += a2[k] * x1
                    s30 += a3[k] * x0
                    s31 += a3[k] * x1
                out[r, m] = s00
                out[r, m + 1] = s01
                out[r + 1, m] = s10
                out[r + 1, m + 1] = s11
                out[r + 2, m] = s20
                out[r + 2, m + 1] = s21
                out[r + 3, m] = s30
                out[r + 3, m + 1] = s31
                m += 2
            while m < m1:
                w0 = w[m]
                s00 = z
                s10 = z
                s20 = z
                s30 = z
                for k in range(K):
                    x0 = w0[k]
                    s00 += a0[k] * x0
                    s10 += a1[k] * x0
                    s20 += a2[k] * x0
                    s30 += a3[k] * x0
                out[r, m] = s00
                out[r + 1, m] = s10
                out[r + 2, m] = s20
                out[r + 3, m] = s30
                m += 1
            r += 4
        if r + 2 <= n:
            a0 = a[r]
            a1 = a[r + 1]
            m = m0
            while m + 4 <= m1:
                w0 = w[m]
                w1 = w[m + 1]
                w2 = w[m + 2]
                w3 = w[m + 3]
                s00 = z
                s01 = z
                s02 = z
                s03 = z
                s10 = z
                s11 = z
                s12 = z
                s13 = z
                for k in range(K):
                    p = a0[k]
                    q = a1[k]
                    s00 += p * w0[k]
                    s01 += p * w1[k]
                    s02 += p * w2[k]
                    s03 += p * w3[k]
                    s10 += q * w0[k]
                    s11 += q * w1[k]
                    s12 += q * w2[k]
                    s13 += q * w3[k]
                out[r, m] = s00
                out[r, m + 1] = s01
                out[r, m + 2] = s02
                out[r, m + 3] = s03
                out[r + 1, m] = s10
                out[r + 1, m + 1] = s11
                out[r + 1, m + 2] = s12
                out[r + 1, m + 3] = s13
                m += 4
            while m < m1:
                w0 = w[m]
                s00 = z
                s10 = z
                for k in range(K):
                    s00 += a0[k] * w0[k]
                    s10 += a1[k] * w0[k]
                out[r, m] = s00
                out[r + 1, m] = s10
                m += 1
            r += 2
        if r < n:
            a0 = a[r]
            m = m0
            while m + 4 <= m1:
                w0 = w[m]
                w1 = w[m + 1]
                w2 = w[m + 2]
                w3 = w[m + 3]
                s00 = z
                s01 = z
                s02 = z
                s03 = z
                for k in range(K):
                    p = a0[k]
                    s00 += p * w0[k]
                    s01 += p * w1[k]
                    s02 += p * w2[k]
                    s03 += p * w3[k]
                out[r, m] = s00
                out[r, m + 1] = s01
                out[r, m + 2] = s02
                out[r, m + 3] = s03
                m += 4
            while m < m1:
                w0 = w[m]
                s00 = z
                for k in range(K):
                    s00 += a0[k] * w0[k]
                out[r, m] = s00
                m += 1

"""Package-wide numeric defaults and Numba flags.

Every kernel takes its ``@njit`` options from :data:`JIT`; no kernel spells out
its own flags.  ``fastmath`` is a *set* of LLVM fast-math flags that leaves out
``nnan`` and ``ninf`` (``fastmath=True`` would let LLVM assume no NaN/inf and
fold away the finiteness checks the clipping kernels rely on) and ``afn``
(approximate transcendental functions would break the float64 gradient checks).
"""

import numpy as np

#: fast-math flags for every kernel: reassociation (lets reductions vectorise),
#: contraction to FMA, no signed zeros, reciprocal approximations of divisions
#: are *not* included ("arcp" changes results at the last ulp only, kept out
#: to make float64 references exact to rounding).
FASTMATH = frozenset({"nsz", "contract", "reassoc"})

#: keyword arguments of every ``numba.njit`` in :mod:`fastseq.kernels`.
#: ``cache=True`` writes compiled code next to the sources (or into
#: ``NUMBA_CACHE_DIR``), ``nogil=True`` lets Python threads run kernels side by
#: side on slices of a batch.
JIT = dict(cache=True, nogil=True, fastmath=set(FASTMATH), error_model="numpy", boundscheck=False)

#: dtypes the kernels are compiled for; anything else is cast or refused.
SUPPORTED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
DEFAULT_DTYPE = np.dtype(np.float32)

#: integer type of every index array passed to a kernel (one signature only).
INDEX_DTYPE = np.dtype(np.int64)


def resolve_dtype(dtype):
    """Return the numpy dtype for ``dtype`` or raise a ``ValueError`` naming it."""
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}") from exc
    if dt not in SUPPORTED_DTYPES:
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    return dt

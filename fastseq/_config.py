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


def target_features():
    """The CPU features numba compiles for: ``NUMBA_CPU_FEATURES`` when it is
    set (``+avx2,-avx512f,...``), none when only ``NUMBA_CPU_NAME`` is (a
    named or generic target: assume nothing), the host's otherwise."""
    from numba.core import config

    if config.CPU_FEATURES:
        return frozenset(f[1:] for f in config.CPU_FEATURES.split(",") if f.startswith("+"))
    if config.CPU_NAME:
        return frozenset()
    import llvmlite.binding as llvm

    return frozenset(k for k, v in llvm.get_host_cpu_features().items() if v)


def vector_bytes(features):
    """Width in bytes of the vectors the micro-kernels use on a CPU with
    ``features``: 64 with AVX-512, 32 with AVX2 and FMA, 16 otherwise (SSE,
    arm64's NEON and any other machine: LLVM splits or legalises the vectors
    for what the target has, so every width is correct everywhere)."""
    if "avx512f" in features:
        return 64
    if "avx2" in features and "fma" in features:
        return 32
    return 16


#: vector width of the compiled micro-kernels on this machine (fixed at
#: import; numba's cache is keyed by the CPU name and features, so cached
#: code always matches it)
VECTOR_BYTES = vector_bytes(target_features())


def resolve_dtype(dtype):
    """Return the numpy dtype for ``dtype`` or raise a ``ValueError`` naming it."""
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}") from exc
    if dt not in SUPPORTED_DTYPES:
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    return dt

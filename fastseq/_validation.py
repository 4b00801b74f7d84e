"""Input checks shared by the layers and estimators.

Every check raises ``ValueError`` or ``TypeError`` naming the argument, before
any compiled kernel can see the data.
"""

import numbers

import numpy as np

from ._config import INDEX_DTYPE
from .kernels.checks import finite32, finite64


_F32, _F64 = np.dtype(np.float32), np.dtype(np.float64)


def check_real_array(a, name, dtype=None, ndim=None):
    """Return ``a`` as a real-valued ndarray (cast to ``dtype`` if given).

    Raises ``TypeError`` for complex, string, object or boolean-free garbage and
    ``ValueError`` for the wrong number of dimensions.
    """
    if type(a) is np.ndarray and (a.dtype is _F32 or a.dtype is _F64) and dtype is None and (
            ndim is None or a.ndim == ndim):
        return a   # (an array of the kernels' floats: what a layer's call gets most)
    try:
        arr = np.asarray(a)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be an array of real numbers: {exc}") from None
    if arr.dtype.kind == "c":
        raise TypeError(f"{name} must hold real numbers, got complex dtype {arr.dtype}")
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-dimensional, got shape {arr.shape}")
    if dtype is not None:
        arr = arr.astype(dtype, copy=False)
    return arr


def all_finite(a):
    """Whether the array ``a`` holds no NaN and no infinity: compiled
    (:mod:`fastseq.kernels.checks`) for a writeable C-contiguous float32 or
    float64 array (one signature each: a read-only array would compile
    again), numpy's ``isfinite`` otherwise."""
    if a.flags.c_contiguous and a.flags.writeable and a.size:
        if a.dtype == _F32:
            return finite32(a.reshape(-1))
        if a.dtype == _F64:
            return finite64(a.reshape(-1))
    return bool(np.isfinite(a).all())


def check_finite(a, name, where=""):
    """Raise ``ValueError`` if ``a`` holds NaN or infinity."""
    if not all_finite(a):
        raise ValueError(f"{name} contains NaN or infinity{where}")


def check_lengths(lengths, batch, steps, name="lengths"):
    """Validate per-sequence lengths: integers (B,) in ``1..T``; return int64 array."""
    if lengths is None:
        return np.full(batch, steps, dtype=INDEX_DTYPE)
    arr = np.asarray(lengths)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError(f"{name} must hold whole numbers, got {arr!r}")
    elif arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integers, got dtype {arr.dtype}")
    if arr.shape != (batch,):
        raise ValueError(f"{name} must have shape ({batch},) (one per sequence), got {arr.shape}")
    arr = arr.astype(INDEX_DTYPE)
    if batch and (arr.min() < 1 or arr.max() > steps):
        raise ValueError(
            f"{name} must lie in 1..{steps} (the number of time steps), "
            f"got values from {arr.min()} to {arr.max()}"
        )
    return arr


def check_state(state, name, shape, dtype):
    """Validate an initial state (or its gradient) of exactly ``shape``."""
    arr = check_real_array(state, name, dtype=dtype)
    if arr.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {arr.shape}")
    check_finite(arr, name)
    return arr


def check_positive_int(value, name, minimum=1):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_n_jobs(value, name="n_jobs"):
    """None or a non-zero integer (scikit-learn's ``n_jobs``)."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be None or a non-zero integer, got {value!r}")
    if value == 0:
        raise ValueError(f"{name} must be None or a non-zero integer, got 0")
    return int(value)


def check_fraction(value, name):
    """A probability in [0, 1) (dropout rates)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number in [0, 1), got {value!r}")
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must lie in [0, 1), got {value}")
    return float(value)


def check_choice(value, name, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def check_fitted_width(est, X, n_features, n_columns):
    """After fit: ``X`` (of ``n_features`` per step, or a 2-D array of
    ``n_columns`` time steps when ``n_columns`` is not None) must match what
    ``est`` read at fit (``n_features_per_step_``, ``n_timesteps_in_``).

    A 2-D X at fit fixes its width (scikit-learn's ``n_features_in_``); after
    a fit on 3-D or ragged X of one feature per step a 2-D X of any width is
    univariate series; the 3-D and ragged forms take any lengths.
    """
    from sklearn.utils.validation import _check_feature_names

    name = type(est).__name__
    F = getattr(est, "n_features_per_step_", est.n_features_in_)  # older pickles
    T = getattr(est, "n_timesteps_in_", None)
    if n_columns is None:
        if n_features != F:
            fitted = ", on a 2-D X of univariate series" if T is not None else ""
            raise ValueError(
                f"X has {n_features} features per step, but {name} is expecting "
                f"{F} features per step as input (as at fit{fitted})")
    elif T is not None:
        if n_columns != T:
            raise ValueError(
                f"X has {n_columns} features, but {name} is expecting {T} features "
                f"as input: a 2-D X holds univariate series of one fixed length (its "
                f"columns are the time steps), and {name} was fitted on series of {T} "
                "steps. For series of other lengths, pass X as a list of (T_i, 1) "
                "arrays (the ragged form) or as a 3-D array (n_samples, n_timesteps, 1)")
        _check_feature_names(est, X, reset=False)
    elif F != 1:
        raise ValueError(
            f"X is a 2-D array, read as univariate series (n_samples, n_timesteps), but "
            f"{name} was fitted on {F} features per step: pass a 3-D array "
            f"(n_samples, n_timesteps, {F}) or a list of (T_i, {F}) arrays")

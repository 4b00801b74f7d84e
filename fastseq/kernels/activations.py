"""Scalar activations, inlined into the fused gate loops of the cell kernels.

``tanh`` and ``sigmoid`` dispatch on the scalar type at compile time:

- float64: ``np.tanh`` and ``1 / (1 + exp(-x))`` (libm accuracy, what the
  float64 gradient checks need).  ``sigmoid`` never overflows into NaN: for
  very negative ``x``, ``exp(-x)`` is ``inf`` and ``1 / (1 + inf)`` is exactly 0.
- float32: a branch-free rational approximation of tanh (Eigen's
  ``generic_fast_tanh_float``: odd degree-13 numerator over even degree-6
  denominator on ``[-7.9053, 7.9053]``, clamped outside), and
  ``sigmoid(x) = 0.5 + 0.5 tanh(x / 2)``.  Only multiplies, adds, one division
  and compares: LLVM vectorises the gate loops with them (pip's llvmlite has
  no SVML, so ``np.tanh``/``np.exp`` in a loop stay scalar calls).  Maximum
  error about 4 ulp (2.6e-7 absolute) for tanh and 1.2e-7 absolute for sigmoid; saturated
  gates come out as exact 0 or 1 (no denormals); NaN propagates and
  ``+-inf`` give ``+-1`` (tanh), ``1``/``0`` (sigmoid).

The plain-Python definitions are what runs under ``NUMBA_DISABLE_JIT=1``.
"""

import numpy as np
from numba import njit, types
from numba.extending import overload

from .._config import JIT

# Eigen's float tanh coefficients (float32 constants, frozen by numba)
_CLAMP = np.float32(7.90531110763549805)
_TINY = np.float32(0.0004)
_A1 = np.float32(4.89352455891786e-03)
_A3 = np.float32(6.37261928875436e-04)
_A5 = np.float32(1.48572235717979e-05)
_A7 = np.float32(5.12229709037114e-08)
_A9 = np.float32(-8.60467152213735e-11)
_A11 = np.float32(2.00018790482477e-13)
_A13 = np.float32(-2.76076847742355e-16)
_B0 = np.float32(4.89352518554385e-03)
_B2 = np.float32(2.26843463243900e-03)
_B4 = np.float32(1.18534705686654e-04)
_B6 = np.float32(1.19825839466702e-06)
_HALF = np.float32(0.5)
_ONE = np.float32(1.0)
_SAT = np.float32(9.0)


def _tanh32_impl(x):
    # written so that NaN propagates: the comparisons are false for NaN
    y = _CLAMP if x > _CLAMP else x
    y = -_CLAMP if y < -_CLAMP else y
    y2 = y * y
    p = y2 * _A13 + _A11
    p = p * y2 + _A9
    p = p * y2 + _A7
    p = p * y2 + _A5
    p = p * y2 + _A3
    p = p * y2 + _A1
    p = p * y
    q = y2 * _B6 + _B4
    q = q * y2 + _B2
    q = q * y2 + _B0
    r = p / q
    # beyond +-9 float32 tanh rounds to +-1: make saturation exact
    r = _ONE if x > _SAT else r
    r = -_ONE if x < -_SAT else r
    return x if abs(x) < _TINY else r


def _sigmoid32_impl(x):
    return _HALF + _HALF * _tanh32_impl(_HALF * x)


def tanh(x):
    """Hyperbolic tangent of a scalar (fast rational form for float32)."""
    return np.tanh(x)


def sigmoid(x):
    """Logistic function 1 / (1 + exp(-x)) of a scalar (via tanh for float32)."""
    return 1.0 / (1.0 + np.exp(-x))


# small functions: LLVM inlines them into the gate loops (numba-IR inlining of
# the conditional expressions trips numba's pedantic IR checks)
_tanh32 = njit(**JIT)(_tanh32_impl)
_OPTS = {"fastmath": set(JIT["fastmath"]), "nogil": True, "error_model": "numpy"}


def _is_f32(x):
    return isinstance(x, types.Float) and x.bitwidth == 32


@overload(tanh, jit_options=_OPTS)
def _ov_tanh(x):
    if _is_f32(x):
        return lambda x: _tanh32(x)
    return lambda x: np.tanh(x)


@overload(sigmoid, jit_options=_OPTS)
def _ov_sigmoid(x):
    if _is_f32(x):
        return lambda x: _HALF + _HALF * _tanh32(_HALF * x)
    return lambda x: 1.0 / (1.0 + np.exp(-x))


@njit(**JIT)
def tanh_array(x, out):
    """``out[k] = tanh(x[k])`` for (n,) float arrays (tests, benchmarks)."""
    for k in range(x.shape[0]):
        out[k] = tanh(x[k])


@njit(**JIT)
def sigmoid_array(x, out):
    """``out[k] = sigmoid(x[k])`` for (n,) float arrays (tests, benchmarks)."""
    for k in range(x.shape[0]):
        out[k] = sigmoid(x[k])

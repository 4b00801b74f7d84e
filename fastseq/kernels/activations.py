"""Scalar activations, inlined into the fused gate loops of the cell kernels.

``tanh`` and ``sigmoid`` dispatch on the scalar type at compile time:

- float64: ``np.tanh`` and ``1 / (1 + exp(-x))`` (libm accuracy, what the
  float64 gradient checks need).  ``sigmoid`` never overflows into NaN: for
  very negative ``x``, ``exp(-x)`` is ``inf`` and ``1 / (1 + inf)`` is exactly 0.
- float32: a branch-free rational approximation of tanh (the coefficients of
  Eigen's ``generic_fast_tanh_float``: odd degree-13 numerator over even
  degree-6 denominator), and ``sigmoid(x) = 0.5 + 0.5 tanh(x / 2)``.  Only
  multiplies, adds, one division, minimum/maximum and one compare: LLVM
  vectorises the gate loops with them (pip's llvmlite has no SVML, so
  ``np.tanh``/``np.exp`` in a loop stay scalar calls).  Maximum error about
  4 ulp (2.6e-7 absolute) for tanh and 1.2e-7 absolute for sigmoid; NaN
  propagates and ``+-inf`` give ``+-1`` (tanh), ``1``/``0`` (sigmoid).
  Saturation is exact (gates of exactly 0 or 1, never denormal) beyond
  ``|x| >= 10.5`` for tanh, 21 for sigmoid: the input is clamped to
  ``+-10.5``, where the rational is at its largest, 1 + 5 or 6 ulp (with
  fused multiply-adds or without), and the result to ``[-1, 1]``.  Eigen
  clamps the input at 7.9053 and saturates at 0.99999976; the two selects
  that made that exact cost a quarter of the LSTM cell's time, the
  minimum and maximum that replace them one instruction each
  (bench/RESULTS.md, "twenty-third session").

The plain-Python definitions are what runs under ``NUMBA_DISABLE_JIT=1``.
"""

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from .._config import JIT

# Eigen's float tanh coefficients (float32 constants, frozen by numba)
#: the input's clamp: the rational's largest value on [9, 12] is at 10.53,
#: about 1 + 6.4 ulp (5 with every operation rounded in float32), and it
#: tracks tanh within 1e-7 up to 9.3 (float64 arithmetic)
_CLAMP = np.float32(10.5)
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


def _minnum(a, b):
    """The smaller of ``a`` and ``b``, the other one where either is NaN
    (``np.fmin``; compiled: one instruction, a NaN argument gives an
    undefined result, which only :func:`_tanh32_impl`'s last select may
    receive and never passes on)."""
    return np.fmin(a, b)


def _maxnum(a, b):
    """The larger of ``a`` and ``b`` (see :func:`_minnum`)."""
    return np.fmax(a, b)


def _min_max_intrinsic(name):
    @intrinsic
    def fn(typingctx, a, b):
        if not (isinstance(a, types.Float) and a == b):
            return None

        def codegen(context, builder, signature, args):
            fty = context.get_value_type(signature.args[0])
            callee = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(fty, [fty, fty]),
                "llvm.%s.%s" % (name, "f32" if fty == ir.FloatType() else "f64"))
            # ``nnan``: no NaN handling, so x86 gives one vminps/vmaxps
            # (without it, a compare and a blend more) and arm64 one fminnm
            return builder.call(callee, args, fastmath=("nnan",))
        return a(a, b), codegen
    return fn


_minnum_ir, _maxnum_ir = _min_max_intrinsic("minnum"), _min_max_intrinsic("maxnum")


@overload(_minnum, jit_options={"inline": "always"})
def _ov_minnum(a, b):
    return lambda a, b: _minnum_ir(a, b)


@overload(_maxnum, jit_options={"inline": "always"})
def _ov_maxnum(a, b):
    return lambda a, b: _maxnum_ir(a, b)


def _tanh32_impl(x):
    y = _maxnum(_minnum(x, _CLAMP), -_CLAMP)
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
    r = _maxnum(_minnum(p / q, _ONE), -_ONE)
    # tanh(x) = x to float32 precision near 0; the compare is false for NaN,
    # which so propagates (the clamps do not)
    return r if abs(x) >= _TINY else x


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

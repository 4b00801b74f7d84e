"""The kernels' scalar activations against numpy.

float32 uses a vectorisable rational tanh (and sigmoid through it): checked
over a sweep of every 97th float32 bit pattern (all exponents, denormals,
+-0, +-inf, NaN).  float64 keeps libm's tanh/exp (the gradient checks need it): checked against
correctly rounded values (mpmath) within a stated ulp budget, a reference
that does not move with the CPU.
"""

import numpy as np
import pytest

from fastseq.kernels.activations import sigmoid_array, tanh_array


def _sweep32():
    bits = np.arange(0, 2 ** 32, 97, dtype=np.uint64).astype(np.uint32)
    x = bits.view(np.float32)
    extra = np.array([0.0, -0.0, 1e-45, -1e-45, 1.1754942e-38, -1.1754942e-38, 1e-4, 4e-4,
                      8.9, 9.0, 9.1, -9.1, 10.49, 10.5, -10.5, 10.51, 21.0, -21.0, 88.7, -88.7, 3.4e38, -3.4e38, np.inf, -np.inf, np.nan],
                     dtype=np.float32)
    return np.concatenate([x, extra])


def _ref_sigmoid(x64):
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x64))


def test_tanh_float32_accuracy_full_range():
    x = _sweep32()
    out = np.empty_like(x)
    tanh_array(x, out)
    fin = np.isfinite(x)
    ref = np.tanh(x[fin].astype(np.float64))
    err = np.abs(out[fin] - ref)
    assert err.max() < 3e-7                                     # absolute
    assert np.all(err <= 5 * np.spacing(np.abs(ref).astype(np.float32)) + 1e-45)  # <= 5 ulp
    assert np.all(np.abs(out[fin]) <= 1.0)
    assert np.all(np.sign(out[fin]) == np.sign(x[fin]))        # odd, sign kept (incl. -0)
    assert np.isnan(out[np.isnan(x)]).all()
    assert out[x == np.inf].tolist() == [1.0] and out[x == -np.inf].tolist() == [-1.0]
    big = fin & (np.abs(x) >= 10.5)                             # the documented clamp
    assert big.sum() > 1000 and np.all(np.abs(out[big]) == 1.0)  # exact saturation


def test_sigmoid_float32_accuracy_full_range():
    x = _sweep32()
    out = np.empty_like(x)
    sigmoid_array(x, out)
    fin = np.isfinite(x)
    ref = _ref_sigmoid(x[fin].astype(np.float64))
    assert np.abs(out[fin] - ref).max() < 2e-7
    assert np.all((out[fin] >= 0.0) & (out[fin] <= 1.0))
    assert np.isnan(out[np.isnan(x)]).all()
    assert out[x == np.inf].tolist() == [1.0] and out[x == -np.inf].tolist() == [0.0]
    # saturated gates are exact 0/1 (beyond 2 x tanh's clamp), never denormal
    big = fin & (np.abs(x) >= 21.0)
    assert big.sum() > 1000 and np.all(out[big] == (x[big] > 0))
    tiny = (out != 0) & (np.abs(out) < np.finfo(np.float32).tiny)
    assert not tiny.any()


def _exact(fn_name, x):
    """``fn_name`` ('tanh' or 'sigmoid') of float64 ``x`` correctly rounded
    to float64: mpmath at 120 bits, so the reference is the same on every
    CPU (numpy's own exp/tanh take SIMD paths that differ by a few ulp from
    one CPU to another, AVX-512 and AVX2 among them)."""
    import mpmath

    out = np.empty_like(x)
    with mpmath.workprec(120):
        for k, v in enumerate(x.tolist()):
            if not np.isfinite(v):
                out[k] = {"tanh": np.tanh, "sigmoid": lambda u: 1.0 / (1.0 + np.exp(-u))}[fn_name](v)
                continue
            m = mpmath.mpf(v)
            out[k] = float(mpmath.tanh(m) if fn_name == "tanh" else 1 / (1 + mpmath.exp(-m)))
    return out


#: ulp budget of the float64 activations against the correctly rounded value:
#: libm's tanh and exp are within 1-2 ulp on glibc, musl and Apple's libm, and
#: sigmoid's 1 + e and 1 / (.) add half an ulp each
F64_ULP_BUDGET = 3


@pytest.mark.parametrize("fn,name", [(tanh_array, "tanh"), (sigmoid_array, "sigmoid")])
def test_float64_is_libm_accurate(fn, name):
    x = np.concatenate([np.linspace(-40, 40, 20001), -37.0 + 1e-3 * np.arange(200),
                        [0.0, -0.0, 1e-300, 5e-324, 710.0, -710.0, 745.5, -745.5, np.inf, -np.inf]])
    out = np.empty_like(x)
    fn(x, out)
    r = _exact(name, x)
    ulp = np.spacing(np.abs(r))
    # below the smallest normal number (sigmoid(x) for x < -708) a result may
    # be 0: exp(-x) overflows first, and denormals are flushed anyway
    tiny = np.finfo(np.float64).tiny
    assert np.all(np.abs(out - r) <= F64_ULP_BUDGET * ulp + tiny), np.max(np.abs(out - r) / ulp)
    nan = np.array([np.nan])
    fn(nan, out[:1])
    assert np.isnan(out[0])

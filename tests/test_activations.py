"""The kernels' scalar activations against numpy.

float32 uses a vectorisable rational tanh (and sigmoid through it): checked
over a sweep of every 97th float32 bit pattern (all exponents, denormals,
+-0, +-inf, NaN).  float64 keeps libm's tanh/exp (the gradient checks need it).
"""

import numpy as np
import pytest

from fastseq.kernels.activations import sigmoid_array, tanh_array


def _sweep32():
    bits = np.arange(0, 2 ** 32, 97, dtype=np.uint64).astype(np.uint32)
    x = bits.view(np.float32)
    extra = np.array([0.0, -0.0, 1e-45, -1e-45, 1.1754942e-38, -1.1754942e-38, 1e-4, 4e-4,
                      8.9, 9.0, 9.1, -9.1, 88.7, -88.7, 3.4e38, -3.4e38, np.inf, -np.inf, np.nan],
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
    big = fin & (np.abs(x) > 9.0)
    assert np.all(np.abs(out[big]) == 1.0)                     # exact saturation


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
    # saturated gates are exact 0/1, never denormal
    tiny = (out != 0) & (np.abs(out) < np.finfo(np.float32).tiny)
    assert not tiny.any()


@pytest.mark.parametrize("fn,ref", [(tanh_array, np.tanh), (sigmoid_array, _ref_sigmoid)])
def test_float64_is_libm_accurate(fn, ref):
    x = np.concatenate([np.linspace(-40, 40, 200001), [0.0, -0.0, 1e-300, 5e-324, 710.0, -710.0,
                                                       np.inf, -np.inf]])
    out = np.empty_like(x)
    fn(x, out)
    r = ref(x)
    assert np.all(np.abs(out - r) <= 2 * np.spacing(np.abs(r)) + 1e-300)
    nan = np.array([np.nan])
    fn(nan, out[:1])
    assert np.isnan(out[0])

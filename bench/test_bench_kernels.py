"""pytest-benchmark: the Recurrent layer and its kernels (float32).

Run: ``python -m pytest bench/test_bench_kernels.py --benchmark-only``
(``--benchmark-json out.json`` to save).  Timings are recorded, never asserted.
"""

import numpy as np
import pytest

from fastseq import _threads
from fastseq import kernels as K
from fastseq.kernels.activations import sigmoid_array, tanh_array
from fastseq.nn import Recurrent

SHAPES = [  # (B, T, F, H)
    (1, 32, 64, 64),
    (16, 32, 128, 128),
    (128, 28, 28, 256),
    (1024, 48, 5, 64),
]
CELLS = ["rnn", "lstm", "gru"]


def _data(B, T, F, H, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((B, T, F), dtype=np.float32),
            rng.standard_normal((B, T, H), dtype=np.float32))


@pytest.fixture(params=[1, 2], ids=lambda n: f"threads{n}")
def threads(request):
    with _threads.limit(request.param):
        yield request.param


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-T{}-F{}-H{}".format(*s))
@pytest.mark.parametrize("cell", CELLS)
def test_forward_inference(benchmark, cell, shape, threads):
    B, T, F, H = shape
    layer = Recurrent(cell, F, H, random_state=0).eval()
    X, _ = _data(B, T, F, H)
    benchmark.group = f"infer-{cell}"
    benchmark(layer.forward, X, need_grad=False)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-T{}-F{}-H{}".format(*s))
@pytest.mark.parametrize("cell", CELLS)
def test_training_step(benchmark, cell, shape, threads):
    B, T, F, H = shape
    layer = Recurrent(cell, F, H, random_state=0)
    X, G = _data(B, T, F, H)
    grad = np.zeros_like(layer.flat)
    m, v = np.zeros_like(grad), np.zeros_like(grad)
    state = {"step": 0}

    def step():
        layer.forward(X)
        layer.backward(G, out=grad, need_input_grad=False)
        K.clip_grad_norm(grad, 1.0)
        state["step"] += 1
        K.adam_update(layer.flat, grad, m, v, state["step"], 1e-3, 0.9, 0.999, 1e-8, 0.0)

    benchmark.group = f"train-{cell}"
    benchmark(step)


@pytest.mark.parametrize("fn", [tanh_array, sigmoid_array], ids=["tanh", "sigmoid"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_activation_throughput(benchmark, fn, dtype):
    x = np.random.default_rng(0).standard_normal(1 << 16).astype(dtype) * 4
    out = np.empty_like(x)
    benchmark.group = "activations"
    benchmark(fn, x, out)

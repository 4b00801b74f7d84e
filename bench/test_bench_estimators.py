"""pytest-benchmark: ``fit`` and ``predict`` of the estimators (guarded: skipped
when an estimator is not available).  Timings are recorded, never asserted.

Run: ``python -m pytest bench/test_bench_estimators.py --benchmark-only``
"""

import numpy as np
import pytest

import fastseq

ESTIMATORS = ["RNNClassifier", "RNNRegressor", "SequenceTagger"]


def _make(name, **kw):
    est = getattr(fastseq, name, None)
    if est is None:
        pytest.skip(f"fastseq.{name} not available")
    return est(**kw)


def _data(name, n=256, T=28, F=28, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, T, F)).astype(np.float32)
    if name == "RNNClassifier":
        y = rng.integers(0, 10, n)
    elif name == "RNNRegressor":
        y = rng.standard_normal(n).astype(np.float32)
    else:
        y = [rng.integers(0, 5, T) for _ in range(n)]
    return X, y


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("name", ESTIMATORS)
def test_fit(benchmark, name, cell):
    X, y = _data(name)
    kw = dict(cell=cell, hidden_size=64, max_iter=2, batch_size=64, random_state=0)
    _make(name, **kw).fit(X[:64], y[:64] if not isinstance(y, list) else y[:64])  # compile
    benchmark.group = f"fit-{name}"
    benchmark.pedantic(lambda: _make(name, **kw).fit(X, y), rounds=3, iterations=1)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("name", ESTIMATORS)
def test_predict(benchmark, name, cell):
    X, y = _data(name)
    est = _make(name, cell=cell, hidden_size=64, max_iter=1, batch_size=64, random_state=0).fit(X, y)
    benchmark.group = f"predict-{name}"
    benchmark(est.predict, X)


@pytest.mark.parametrize("name", ["Seq2SeqClassifier"])
def test_seq2seq_predict(benchmark, name):
    rng = np.random.default_rng(0)
    X = ["".join(rng.choice(list("abcdef"), rng.integers(5, 15))) for _ in range(64)]
    y = [s[::-1] for s in X]
    est = _make(name, hidden_size=64, max_iter=1, batch_size=32, random_state=0).fit(X, y)
    benchmark.group = f"predict-{name}"
    benchmark(est.predict, X)

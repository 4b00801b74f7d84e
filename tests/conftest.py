import inspect

import numpy as np
import pytest


def ragged_batch(rng, B, T, F, lengths=None, fill=np.nan):
    """A padded batch (B, T, F) whose padded steps hold ``fill`` (NaN by default,
    to prove they are never read), with its lengths."""
    if lengths is None:
        lengths = rng.integers(1, T + 1, size=B)
        lengths[rng.integers(B)] = T
    lengths = np.asarray(lengths)
    X = rng.standard_normal((B, T, F))
    for b, n in enumerate(lengths):
        X[b, n:] = fill
    return X, lengths


def central_difference(f, arr, idx, eps=1e-6):
    """``(f() at arr[idx] + eps - f() at arr[idx] - eps) / 2 eps``, the entry
    put back after."""
    old = arr[idx]
    arr[idx] = old + eps
    up = f()
    arr[idx] = old - eps
    down = f()
    arr[idx] = old
    return (up - down) / (2 * eps)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


#: the facts of the 2-vCPU AMD EPYC (znver3) the thresholds were first timed
#: on (a 100 us hand-over, 40 G multiply-adds a second, 512 KB of L2): the
#: suite runs every CPU's calls with the same plan, so that which path a test
#: takes never depends on the machine (tests/test_plan.py checks measuring)
REFERENCE_MACHINE = dict(handover_s=100e-6, madd_rate=40e9, l2_bytes=512 * 1024)


def answers_of(monkeypatch, module, name):
    """A list that receives each answer of ``module.name`` (a compiled
    split: True when its parts ran) from now on, through a wrapper that
    ``monkeypatch`` undoes."""
    answers = []
    real = getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a: answers.append(real(*a)) or answers[-1])
    return answers


def layer_arrays(result):
    """The arrays of a ``Recurrent.forward`` result, in order: the output,
    then ``h_n`` (and ``c_n`` for an LSTM)."""
    out, state = result
    return [out] + (list(state) if isinstance(state, tuple) else [state])


@pytest.fixture(autouse=True)
def _reference_plan(monkeypatch):
    from fastseq import _plan

    monkeypatch.setattr(_plan, "_current", _plan.Plan.for_machine(_plan.Machine(**REFERENCE_MACHINE)))


@pytest.fixture(autouse=True)
def _no_busy_cpu(monkeypatch):
    """No split call is timed for a busy CPU (:func:`fastseq._threads.cpu_busy`):
    a finding on a loaded machine would send the suite's splits to one
    thread, and the tests that count them would fail (the tests of the
    finding itself set their own clocks: tests/test_threads_split.py)."""
    from fastseq import _threads

    monkeypatch.setattr(_threads, "_cpu_clock", None)
    monkeypatch.setattr(_threads, "_busy_until", 0.0)
    monkeypatch.setattr(_threads, "_busy_for", _threads.BUSY_S)
    monkeypatch.setattr(_threads, "_probation", 0)
    monkeypatch.setattr(_threads, "_strikes", 0)
    monkeypatch.setattr(_threads, "_next_check", 0.0)
    monkeypatch.setattr(_threads, "busy_findings", 0)


#: that machine's crossover of the step product's tiles and BLAS (rows): the
#: suite's calls take BLAS from the same rows on every CPU, and measure
#: nothing (tests/test_plan.py checks the measuring)
REFERENCE_BLAS_ROWS = 256
#: and its projection's (bytes of weight from which it calls BLAS)
REFERENCE_PROJECT_BLAS_BYTES = 2 * 1024 * 1024


@pytest.fixture(autouse=True)
def _reference_blas_rows(monkeypatch):
    from fastseq import _fpenv, _plan
    from fastseq.kernels._runtime import PACKED_BLAS_MIN_ROWS, PROJECT_BLAS_MIN_BYTES

    monkeypatch.setattr(_plan, "_values_state", 2)
    monkeypatch.setattr(_fpenv, "before_kernels", None)
    saved = PACKED_BLAS_MIN_ROWS.get(), PROJECT_BLAS_MIN_BYTES.get()
    PACKED_BLAS_MIN_ROWS.set(REFERENCE_BLAS_ROWS)
    PROJECT_BLAS_MIN_BYTES.set(REFERENCE_PROJECT_BLAS_BYTES)
    yield
    PACKED_BLAS_MIN_ROWS.set(saved[0])
    PROJECT_BLAS_MIN_BYTES.set(saved[1])


@pytest.fixture
def blas_rows():
    """``blas_rows(n)``: the step product takes BLAS from ``n`` rows in this
    test (:data:`fastseq.kernels._runtime.PACKED_BLAS_MIN_ROWS`); returns ``n``."""
    from fastseq.kernels._runtime import PACKED_BLAS_MIN_ROWS

    def set_rows(n):
        PACKED_BLAS_MIN_ROWS.set(n)
        return n
    return set_rows


@pytest.fixture
def project_blas_bytes():
    """``project_blas_bytes(n)``: the input projection takes BLAS from ``n``
    bytes of weight in this test
    (:data:`fastseq.kernels._runtime.PROJECT_BLAS_MIN_BYTES`); returns ``n``."""
    from fastseq.kernels._runtime import PROJECT_BLAS_MIN_BYTES

    def set_bytes(n):
        PROJECT_BLAS_MIN_BYTES.set(n)
        return n
    return set_bytes


def sklearn_checks(estimators):
    """``parametrize_with_checks`` over ``estimators``, each one's
    ``_expected_failed_checks`` strict (where scikit-learn supports it)."""
    from sklearn.utils.estimator_checks import parametrize_with_checks

    strict = ({"xfail_strict": True}
              if "xfail_strict" in inspect.signature(parametrize_with_checks).parameters else {})
    return parametrize_with_checks(
        estimators, expected_failed_checks=lambda est: est._expected_failed_checks(), **strict)


def assert_expected_failures_name_real_checks(est):
    """``est``'s expected failures are not empty, each names a check that
    scikit-learn runs on it, and each gives a reason of a sentence."""
    from sklearn.utils.estimator_checks import estimator_checks_generator

    names = set()
    for _, check in estimator_checks_generator(est, legacy=True):
        while hasattr(check, "func"):
            check = check.func
        names.add(check.__name__)
    failed = est._expected_failed_checks()
    assert failed and set(failed) <= names, set(failed) - names
    assert all(isinstance(r, str) and len(r) > 40 for r in failed.values())

"""``n_jobs=None``: every core the process may run on, within the limits set
around it (fastseq._threads.default_num_threads).

The count a call runs with is read inside it: ``fastseq._threads.get_num_threads``
recorded from the estimators' training loop and from ``Recurrent.forward``.
"""

import os
import pathlib
import subprocess
import sys
import types

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from fastseq import RNNClassifier, _threads
from fastseq.estimators._base import BaseRNN
from fastseq.network.recurrent import Recurrent

SMALL = dict(hidden_size=6, max_iter=2, batch_size=8, random_state=0)
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def _data(n=16, T=5, F=3):
    X = np.random.default_rng(0).normal(size=(n, T, F)).astype(np.float32)
    return X, (X[:, :, 0].sum(axis=1) > 0).astype(int)


@pytest.fixture
def seen(monkeypatch):
    """Thread counts seen inside each estimator fit and each layer call."""
    counts = {"fit": [], "layer": []}
    run_epochs, forward = BaseRNN._run_epochs, Recurrent._forward

    def spy_epochs(self, *a, **k):
        counts["fit"].append(_threads.get_num_threads())
        return run_epochs(self, *a, **k)

    def spy_forward(self, *a, **k):
        counts["layer"].append(_threads.get_num_threads())
        return forward(self, *a, **k)
    monkeypatch.setattr(BaseRNN, "_run_epochs", spy_epochs)
    monkeypatch.setattr(Recurrent, "_forward", spy_forward)
    return counts


@pytest.fixture
def cores(monkeypatch):
    """Set the core count of the process (affinity / cgroup, as joblib reads
    them) and clear the environment variables that cap it; returns a setter."""
    for var in _threads.THREAD_ENV_VARS:
        monkeypatch.delenv(var, raising=False)

    def set_cores(n, pools=None):
        monkeypatch.setattr(_threads, "_cpu_count", lambda: n)
        monkeypatch.setattr(_threads, "_process_cache", None)
        if pools is not None:  # what BLAS / OpenMP report (they count the real cores)
            monkeypatch.setattr(_threads, "_threadpool_threads", lambda: pools)
    return set_cores


def _fit_and_call(n_jobs=None):
    X, y = _data()
    RNNClassifier(n_jobs=n_jobs, **SMALL).fit(X, y)
    Recurrent("gru", 3, 4, n_jobs=n_jobs).forward(X)


def test_cores_are_joblibs_count():
    from joblib import cpu_count
    assert _threads._cpu_count() == cpu_count()
    if hasattr(os, "sched_getaffinity"):
        assert _threads._cpu_count() <= len(os.sched_getaffinity(0))


def test_default_is_the_core_count(cores, seen):
    cores(8, pools=_threads._NO_LIMIT)
    assert _threads.default_num_threads() == 8 and _threads.get_num_threads() == 8
    _fit_and_call()
    assert seen["fit"] == [8] and set(seen["layer"]) == {8}
    cores(1)                                   # e.g. one core in the affinity mask
    assert _threads.default_num_threads() == 1
    _fit_and_call()
    assert seen["fit"] == [8, 1] and seen["layer"][-1] == 1


def test_default_is_what_the_libraries_allow(cores):
    """Unpatched, the default is the real core count, capped by what BLAS and
    OpenMP report (the same cores here, unless an environment limits them)."""
    cores(_threads._cpu_count())
    reported = [i["num_threads"] for i in threadpool_info()]
    assert _threads.default_num_threads() == min([_threads._cpu_count()] + reported)


def test_explicit_n_jobs_wins(cores, seen):
    cores(8, pools=_threads._NO_LIMIT)
    _fit_and_call(3)
    assert seen["fit"] == [3] and set(seen["layer"]) == {3}
    with threadpool_limits(1):
        _fit_and_call(3)
        assert seen["fit"][-1] == 3 and seen["layer"][-1] == 3
        _fit_and_call(-1)                      # scikit-learn's -1: every core
        assert seen["fit"][-1] == 8 and seen["layer"][-1] == 8
        _fit_and_call(-3)                      # all but two
        assert seen["fit"][-1] == 6 and seen["layer"][-1] == 6
    with pytest.raises(ValueError, match="n_jobs"):
        Recurrent("gru", 3, 4, n_jobs=0)
    with pytest.raises(TypeError, match="n_jobs"):
        Recurrent("gru", 3, 4, n_jobs=1.5)


@pytest.mark.parametrize("user_api", [None, "blas", "openmp"])
def test_threadpool_limits_caps_the_default(cores, seen, user_api):
    if user_api and not any(i["user_api"] == user_api for i in threadpool_info()):
        pytest.skip(f"no {user_api} library loaded")
    cores(8)
    with threadpool_limits(1, user_api=user_api):
        assert _threads.default_num_threads() == 1
        _fit_and_call()
        assert seen["fit"] == [1] and set(seen["layer"]) == {1}
        X = np.zeros((2, 3, 3), np.float32)
        layer = Recurrent("gru", 3, 4)
        with _threads.limit(2):                # an enclosing block (an estimator's) rules
            layer.forward(X)
        assert seen["layer"][-1] == 2


def test_fastseqs_own_blas_setting_is_not_a_limit(cores):
    """fastseq holds BLAS at one thread inside its calls: another thread that
    resolves its default meanwhile reads BLAS as it was before."""
    cores(8)
    free = _threads.default_num_threads()
    if free < 2:
        pytest.skip("the libraries here run one thread anyway")
    box = []
    import threading
    with _threads.blas_single_thread():
        assert any(i["num_threads"] == 1 for i in threadpool_info() if i["user_api"] == "blas")
        t = threading.Thread(target=lambda: box.append(_threads.default_num_threads()))
        t.start()
        t.join()
        assert _threads.default_num_threads() == free
        with _threads.limit(None) as n:
            assert n == free
    assert box == [free]


def test_limit_none_keeps_the_enclosing_count(cores, seen):
    cores(8, pools=_threads._NO_LIMIT)
    X = np.zeros((2, 3, 3), np.float32)
    layer = Recurrent("lstm", 3, 4)
    with _threads.limit(3) as n:
        assert n == 3
        layer.forward(X)
        with _threads.limit(None) as m:
            assert m == 3
        layer.n_jobs = 2                       # the layer's own count wins
        layer.forward(X)
    layer.n_jobs = None
    layer.forward(X)
    assert seen["layer"] == [3, 2, 8]
    assert _threads.get_num_threads() == 8     # restored


def test_dask_worker_share(cores, monkeypatch):
    """Inside a Dask worker's task: cores // the worker's nthreads (the logic,
    with a stand-in for ``distributed``: it may not be installed)."""
    cores(8, pools=_threads._NO_LIMIT)
    worker = types.SimpleNamespace(nthreads=3)
    fake = types.ModuleType("distributed")
    fake.get_worker = lambda: worker
    monkeypatch.setitem(sys.modules, "distributed", fake)
    assert _threads.default_num_threads() == 2
    worker.nthreads = 16
    assert _threads.default_num_threads() == 1

    def outside():
        raise ValueError("No worker found")
    fake.get_worker = outside
    assert _threads.default_num_threads() == 8


def test_environment_values():
    assert _threads._env_threads("3") == 3
    assert _threads._env_threads("4,2") == 4     # OpenMP's nested levels: the first
    for bad in (None, "", "0", "-1", "x"):
        assert _threads._env_threads(bad) is None


def _run_python(code, **env):
    full = {k: v for k, v in os.environ.items() if k not in _threads.THREAD_ENV_VARS}
    root = str(pathlib.Path(__file__).resolve().parents[1])
    full.update(env, PYTHONPATH=os.pathsep.join([root] + sys.path))
    res = subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout.split()


_PROBE = """
import numpy as np
from fastseq import _threads
from fastseq.network.recurrent import Recurrent
seen = []
forward = Recurrent._forward
Recurrent._forward = lambda self, *a: seen.append(_threads.get_num_threads()) or forward(self, *a)
Recurrent("gru", 3, 4).forward(np.zeros((2, 3, 3), np.float32))
print(_threads.default_num_threads(), seen[0])
"""


@pytest.mark.parametrize("policy,spins", [("passive", "0.0 0 0 0"), ("PASSIVE", "0.0 0 0 0"),
                                          ("active", "0.001 400000 True None"),
                                          ("", "0.001 400000 True None")])
def test_omp_wait_policy_passive_turns_the_polling_off(policy, spins):
    """``OMP_WAIT_POLICY=passive``: no polling at all; otherwise pool
    threads linger 1 ms after a task, in polls timed at the first use of
    the pool (none before: nothing is timed at import)."""
    out = _run_python("from fastseq import _threads; before = _threads.LINGER_SPINS; "
                      "n = _threads.linger_spins(); "
                      "print(_threads.LINGER_S, _threads.JOIN_SPINS, n if n == 0 else n > 1000, before)",
                      OMP_WAIT_POLICY=policy)
    assert " ".join(out) == spins


@pytest.mark.parametrize("var", _threads.THREAD_ENV_VARS)
def test_environment_caps_the_default_in_a_new_process(var):
    assert _run_python(_PROBE, **{var: "1"}) == ["1", "1"]


def test_default_in_a_loky_worker():
    """joblib's workers (``Parallel(n_jobs=2)``, ``cross_validate(n_jobs=2)``)
    run cores // 2 threads each (joblib sets OMP_NUM_THREADS and the others
    there, unless this process sets them), or ``inner_max_num_threads``."""
    from joblib import Parallel, cpu_count, delayed, parallel_config
    from sklearn.model_selection import cross_validate

    cores = cpu_count()
    share = max(1, cores // 2)
    expected = min([cores] + [_threads._env_threads(os.environ.get(v, share)) or cores
                              for v in _threads.THREAD_ENV_VARS])

    class Recording(RNNClassifier):
        def _run_epochs(self, *a, **k):
            from fastseq._threads import get_num_threads
            self.threads_seen_ = get_num_threads()
            return super()._run_epochs(*a, **k)

    X, y = _data(24)
    res = cross_validate(Recording(**SMALL), X, y, cv=2, n_jobs=2, return_estimator=True)
    assert [est.threads_seen_ for est in res["estimator"]] == [expected, expected]

    def probe():
        from fastseq._threads import default_num_threads
        return default_num_threads(), os.getpid()
    got = Parallel(n_jobs=2)(delayed(probe)() for _ in range(4))
    assert {n for n, _ in got} == {expected}
    assert os.getpid() not in {pid for _, pid in got}          # in workers
    if cores >= 2 and not any(v in os.environ for v in _threads.THREAD_ENV_VARS):
        with parallel_config(backend="loky", inner_max_num_threads=2):
            got = Parallel(n_jobs=2)(delayed(probe)() for _ in range(4))
        assert {n for n, _ in got} == {2}


@pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "darwin", reason="needs fork")
def test_counts_are_read_again_after_fork(cores):
    cores(8)
    assert _threads._process_threads() == (8, 8)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: the cached counts are gone (the child may run elsewhere)
        try:
            os.write(w, b"1" if _threads._process_cache is None else b"0")
        finally:
            os._exit(0)
    os.close(w)
    data = os.read(r, 1)
    os.waitpid(pid, 0)
    assert data == b"1"


def test_recurrent_pickles_its_n_jobs():
    import pickle
    layer = Recurrent("gru", 3, 4, n_jobs=2)
    assert pickle.loads(pickle.dumps(layer)).n_jobs == 2
    state = layer.__getstate__()
    del state["n_jobs"]                        # a layer pickled before it had one
    old = Recurrent.__new__(Recurrent)
    old.__setstate__(state)
    assert old.n_jobs is None
    old.forward(np.zeros((1, 2, 3), np.float32))

"""fastseq on a Dask cluster (``fastseq.dask``): searches under the joblib
dask backend, lazy batch inference, block-wise ``partial_fit``, fits on a
worker, the warm-up and the workers' thread counts.

One real ``distributed.LocalCluster`` of two worker *processes* (one thread
each, started with distributed's default spawn method: numba's threading
layers are fork-unsafe) serves the whole module.  Every estimator fixes
``n_jobs`` and ``random_state``, so a fit or prediction on a worker is bit
for bit the local one.
"""

import logging
import subprocess
import sys
import warnings

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")

import dask  # noqa: E402
import joblib  # noqa: E402
from sklearn.base import clone  # noqa: E402
from sklearn.exceptions import ConvergenceWarning, NotFittedError  # noqa: E402
from sklearn.model_selection import GridSearchCV, RandomizedSearchCV, cross_validate  # noqa: E402

import fastseq  # noqa: E402
import fastseq.dask as fd  # noqa: E402
from fastseq import (RNNClassifier, RNNRegressor, Seq2SeqClassifier, Seq2SeqRegressor,  # noqa: E402
                     SequenceTagger)
from fastseq._threads import _dask_worker_threads, _process_threads, default_num_threads  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

N, T, F = 48, 6, 2
_rng = np.random.default_rng(7)
X3 = _rng.standard_normal((N, T, F))
X2 = _rng.standard_normal((N, T))
Y_CLASS = np.arange(N) % 3
Y_REG = _rng.standard_normal(N)


def small(cls, **kw):
    params = dict(hidden_size=4, max_iter=2, batch_size=8, n_jobs=1, random_state=0)
    params.update(kw)
    return cls(**params)


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None, silence_logs=logging.ERROR)
    client = distributed.Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


@pytest.fixture(scope="module")
def clf():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return small(RNNClassifier).fit(X3, Y_CLASS)


def test_import_fastseq_does_not_import_dask():
    code = ("import sys, fastseq\n"
            "assert not [m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')]\n"
            "assert callable(fastseq.dask.predict)\n"
            "assert 'dask.array' in sys.modules\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]


# ------------------------------------------------------------------ search
def _assert_same_cv_results(a, b, n_splits):
    assert [p for p in a["params"]] == [p for p in b["params"]]
    for k in range(n_splits):
        np.testing.assert_array_equal(a[f"split{k}_test_score"], b[f"split{k}_test_score"])
    np.testing.assert_array_equal(a["mean_test_score"], b["mean_test_score"])
    np.testing.assert_array_equal(a["rank_test_score"], b["rank_test_score"])


def _on_cluster(client, fn):
    """``fn()`` under the joblib dask backend; asserts that tasks ran on the workers."""
    with distributed.get_task_stream(client) as ts:
        with joblib.parallel_backend("dask"):
            out = fn()
    assert len(ts.data) > 0, "nothing ran on the cluster"
    return out


def test_grid_search_on_cluster_equals_local(client):
    grid = {"cell": ["gru", "lstm"], "hidden_size": [3, 5]}
    local = GridSearchCV(small(RNNClassifier), grid, cv=3, n_jobs=1).fit(X3, Y_CLASS)
    remote = _on_cluster(client, lambda: GridSearchCV(small(RNNClassifier), grid, cv=3,
                                                      n_jobs=-1).fit(X3, Y_CLASS))
    _assert_same_cv_results(local.cv_results_, remote.cv_results_, 3)
    assert local.best_params_ == remote.best_params_
    np.testing.assert_array_equal(local.best_estimator_.model_.flat, remote.best_estimator_.model_.flat)
    np.testing.assert_array_equal(local.predict_proba(X3), remote.predict_proba(X3))


def test_randomized_search_on_cluster_equals_local(client):
    from scipy.stats import loguniform

    dist = {"learning_rate": loguniform(1e-3, 1e-1), "cell": ["rnn", "gru"]}
    kw = dict(n_iter=3, cv=2, random_state=0)
    local = RandomizedSearchCV(small(RNNRegressor), dist, n_jobs=1, **kw).fit(X2, Y_REG)
    remote = _on_cluster(client, lambda: RandomizedSearchCV(small(RNNRegressor), dist, n_jobs=-1,
                                                            **kw).fit(X2, Y_REG))
    _assert_same_cv_results(local.cv_results_, remote.cv_results_, 2)
    np.testing.assert_array_equal(local.predict(X2), remote.predict(X2))


def test_cross_validate_on_cluster_equals_local(client):
    est = small(RNNClassifier, cell="gru")
    local = cross_validate(est, X3, Y_CLASS, cv=3, n_jobs=1, return_estimator=True)
    remote = _on_cluster(client, lambda: cross_validate(est, X3, Y_CLASS, cv=3, n_jobs=-1,
                                                        return_estimator=True))
    np.testing.assert_array_equal(local["test_score"], remote["test_score"])
    for a, b in zip(local["estimator"], remote["estimator"]):
        np.testing.assert_array_equal(a.model_.flat, b.model_.flat)


# --------------------------------------------------------- batch inference
def _block_slices(chunks0):
    ends = np.cumsum(chunks0)
    return [slice(int(e - c), int(e)) for c, e in zip(chunks0, ends)]


def _check_lazy(result, est, method, X, chunks0):
    """``result`` is a lazy dask array with the chunks and meta of
    ``est.method(X)``; its blocks are bit for bit ``est.method`` of X's
    blocks, and the whole equals ``est.method(X)`` to rounding: the output
    layer's matrix product (numpy's BLAS) may round a row differently in a
    batch of another size (1 ulp of the model's dtype)."""
    full = getattr(est, method)(X)
    assert isinstance(result, da.Array)
    assert isinstance(result._meta, np.ndarray)
    assert result.dtype == full.dtype and result._meta.dtype == full.dtype
    assert result.shape == full.shape and result._meta.ndim == full.ndim
    assert result.chunks[0] == chunks0
    assert all(len(c) == 1 for c in result.chunks[1:])
    got = result.compute()
    assert got.dtype == full.dtype and got.shape == full.shape
    by_block = [getattr(est, method)(X[s]) for s in _block_slices(chunks0) if s.stop > s.start]
    np.testing.assert_array_equal(got, np.concatenate(by_block))
    if full.dtype.kind == "f":
        np.testing.assert_allclose(got, full, rtol=1e-5, atol=1e-6)
    else:  # labels: equal wherever the two best classes are not within rounding
        p = np.sort(est.predict_proba(X), axis=1)
        clear = p[:, -1] - p[:, -2] > 1e-5
        np.testing.assert_array_equal(got[clear], full[clear])


def test_classifier_methods_lazy_and_equal(client, clf):
    Xd = da.from_array(X3, chunks=(20, T, F))
    for method in ("predict", "predict_proba", "predict_log_proba", "decision_function"):
        _check_lazy(getattr(fd, method)(clf, Xd), clf, method, X3, Xd.chunks[0])


def test_inference_is_lazy(clf):
    loaded = []

    def load(i):
        loaded.append(i)
        return X3[16 * i:16 * (i + 1)]

    Xd = da.concatenate([da.from_delayed(dask.delayed(load)(i), shape=(16, T, F), dtype=X3.dtype)
                         for i in range(3)])
    out = fd.predict(clf, Xd)
    assert loaded == []
    with dask.config.set(scheduler="synchronous"):
        got = out.compute()
    np.testing.assert_array_equal(got, np.concatenate([clf.predict(X3[16 * i:16 * (i + 1)])
                                                       for i in range(3)]))
    assert sorted(loaded) == [0, 1, 2]


def test_classifier_2d_string_labels_binary(client):
    y = np.where(np.arange(N) % 2, "yes", "no")
    est = small(RNNClassifier, cell="rnn").fit(X2, y)
    Xd = da.from_array(X2, chunks=(13, T))
    _check_lazy(fd.predict(est, Xd), est, "predict", X2, Xd.chunks[0])  # (n,) of str
    _check_lazy(fd.predict_proba(est, Xd), est, "predict_proba", X2, Xd.chunks[0])  # (n, 2)
    _check_lazy(fd.decision_function(est, Xd), est, "decision_function", X2, Xd.chunks[0])


@pytest.mark.parametrize("y_tail", [(), (3,), (4, 2)])
@pytest.mark.parametrize("x", ["3d", "2d"])
def test_regressor_predict_every_target_shape(client, y_tail, x):
    X = X3 if x == "3d" else X2
    y = np.random.default_rng(1).standard_normal((N,) + y_tail)
    est = small(RNNRegressor, cell="gru", max_iter=1).fit(X, y)
    Xd = da.from_array(X, chunks=(17,) + X.shape[1:])
    _check_lazy(fd.predict(est, Xd), est, "predict", X, Xd.chunks[0])


def test_seq2seq_regressor_predict(client):
    y = np.random.default_rng(2).standard_normal((N, 3, 2))
    est = small(Seq2SeqRegressor, max_iter=1, cell="gru").fit(X3, y)
    Xd = da.from_array(X3, chunks=(25, T, F))
    _check_lazy(fd.predict(est, Xd), est, "predict", X3, Xd.chunks[0])


@pytest.mark.parametrize("x", ["3d", "2d"])
def test_transform_of_the_per_step_transformers(client, x):
    """SequenceScaler and TimeDistributed(PCA) over the blocks: lazy, chunked
    as X along samples, equal to the transform of each block."""
    from sklearn.decomposition import PCA

    X = X3 if x == "3d" else X2
    Xd = da.from_array(X, chunks=(17,) + X.shape[1:])
    ests = [fastseq.SequenceScaler().fit(X)]
    if x == "3d":
        ests.append(fastseq.TimeDistributed(PCA(2)).fit(X))
    for est in ests:
        out = fd.transform(est, Xd)
        want = est.transform(X)
        assert out.shape == want.shape and out.chunks[0] == Xd.chunks[0]
        assert out.dtype == want.dtype
        got = out.compute()
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    with pytest.raises(TypeError, match="has no transform"):
        fd.transform(small(RNNClassifier).fit(X3, np.arange(N) % 2), da.from_array(X3))
    with pytest.raises(NotFittedError):
        fd.transform(fastseq.SequenceScaler(), Xd)


def test_two_estimators_over_one_array_keep_their_own_results(client, clf):
    """Each mapped estimator names its output blocks by its own hash: two
    estimators (or two methods) over one X in one graph never share keys, so
    the scheduler never hands one's results to the other."""
    from sklearn.decomposition import PCA

    other = small(RNNClassifier, random_state=1).fit(X3, Y_CLASS)
    scaler = fastseq.SequenceScaler().fit(X3)
    pca = fastseq.TimeDistributed(PCA(2)).fit(X3)  # same output shape as the scaler's (F = 2)
    Xd = da.from_array(X3, chunks=(16, T, F))
    outs = [fd.predict_proba(clf, Xd), fd.predict_proba(other, Xd), fd.decision_function(clf, Xd),
            fd.transform(scaler, Xd), fd.transform(pca, Xd)]
    assert len({o.name for o in outs}) == len(outs)
    assert fd.predict_proba(clf, Xd).name == outs[0].name  # deterministic: same inputs, same key
    got = dask.compute(*outs)
    want = [clf.predict_proba(X3), other.predict_proba(X3), clf.decision_function(X3),
            scaler.transform(X3), pca.transform(X3)]
    assert not np.allclose(want[0], want[1]) and not np.allclose(want[3], want[4])
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)


def test_chunks_along_time_or_features_are_merged_with_a_warning(client, clf):
    for chunks in [(16, 2, F), (16, T, 1), (16, 4, 1)]:
        Xd = da.from_array(X3, chunks=chunks)
        with pytest.warns(fd.PerformanceWarning, match="rechunked"):
            out = fd.predict_proba(clf, Xd)
        _check_lazy(out, clf, "predict_proba", X3, Xd.chunks[0])


def test_empty_and_unknown_sample_chunks(client, clf):
    Xd = da.from_array(X3, chunks=((0, 20, 28), (T,), (F,)))
    _check_lazy(fd.predict(clf, Xd), clf, "predict", X3, (0, 20, 28))
    keep = np.arange(N) % 4 != 0
    Xu = da.from_array(X3, chunks=(10, T, F))[da.from_array(keep, chunks=10)]
    assert any(np.isnan(c) for c in Xu.chunks[0])
    got = fd.predict_proba(clf, Xu).compute()
    kept = [clf.predict_proba(X3[s][keep[s]]) for s in _block_slices((10, 10, 10, 10, 8))]
    np.testing.assert_array_equal(got, np.concatenate(kept))


def test_inference_errors(clf):
    with pytest.raises(NotFittedError):  # before X is even looked at: no graph is built
        fd.predict(RNNClassifier(), "not an array")
    with pytest.raises(NotFittedError):
        fd.predict_proba(RNNClassifier(), da.from_array(X3, chunks=(10, T, F)))
    with pytest.raises(TypeError, match="dask array"):
        fd.predict(clf, X3)
    with pytest.raises(ValueError, match="2-D .* or 3-D"):
        fd.predict(clf, da.zeros(N, chunks=10))
    reg = small(RNNRegressor, max_iter=1).fit(X3, Y_REG)
    with pytest.raises(TypeError, match="no predict_proba"):
        fd.predict_proba(reg, da.from_array(X3, chunks=(10, T, F)))


def test_ragged_output_estimators_are_refused(client):
    tagger = small(SequenceTagger, max_iter=1).fit(X3, (np.arange(N * T) % 2).reshape(N, T))
    Xd = da.from_array(X3, chunks=(10, T, F))
    for method in (fd.predict, fd.predict_proba):
        with pytest.raises(TypeError, match="list of arrays of different lengths"):
            method(tagger, Xd)


# ----------------------------------------------------- incremental training
def _by_hand(est, X, y, bounds, order, classes=None):
    kw = {} if classes is None else {"classes": classes}
    for i in order:
        s, e = bounds[i]
        est.partial_fit(X[s:e], y[s:e], **kw)
    return est


def _bounds(chunks):
    ends = np.cumsum(chunks)
    return list(zip(ends - np.asarray(chunks), ends))


def test_partial_fit_in_order_equals_calls_by_hand(client):
    Xd = da.from_array(X3, chunks=(20, T, F))
    yd = da.from_array(Y_CLASS, chunks=20)
    classes = np.arange(3)
    got = fd.partial_fit(small(RNNClassifier), Xd, yd, classes=classes, epochs=2,
                         shuffle_blocks=False)
    assert isinstance(got, RNNClassifier)
    bounds = _bounds(Xd.chunks[0])
    ref = _by_hand(small(RNNClassifier), X3, Y_CLASS, bounds, [0, 1, 2, 0, 1, 2], classes)
    np.testing.assert_array_equal(got.model_.flat, ref.model_.flat)
    np.testing.assert_array_equal(got.predict_proba(X3), ref.predict_proba(X3))
    assert got.t_ == ref.t_


def test_partial_fit_shuffled_blocks_follow_random_state(client):
    Xd = da.from_array(X2, chunks=(12, T))
    got = fd.partial_fit(small(RNNRegressor), Xd, Y_REG, epochs=2, random_state=3)
    rs = np.random.RandomState(3)
    order = list(rs.permutation(4)) + list(rs.permutation(4))
    ref = _by_hand(small(RNNRegressor), X2, Y_REG, _bounds(Xd.chunks[0]), order)
    np.testing.assert_array_equal(got.model_.flat, ref.model_.flat)
    again = fd.partial_fit(small(RNNRegressor), Xd, Y_REG, epochs=2, random_state=3)
    np.testing.assert_array_equal(got.model_.flat, again.model_.flat)


def test_partial_fit_rechunks_y_and_takes_multi_horizon_targets(client):
    y = np.random.default_rng(4).standard_normal((N, 4, 2))
    Xd = da.from_array(X3, chunks=(16, T, F))
    yd = da.from_array(y, chunks=(10, 2, 1))  # other chunks than X's, along every axis
    got = fd.partial_fit(small(RNNRegressor), Xd, yd, shuffle_blocks=False)
    ref = _by_hand(small(RNNRegressor), X3, y, _bounds(Xd.chunks[0]), range(3))
    np.testing.assert_array_equal(got.model_.flat, ref.model_.flat)
    assert got.predict(X3).shape == (N, 4, 2)
    # and the time axis of X merged (with a warning) before streaming
    with pytest.warns(fd.PerformanceWarning):
        got2 = fd.partial_fit(small(RNNRegressor), da.from_array(X3, chunks=(16, 3, F)), y,
                              shuffle_blocks=False)
    np.testing.assert_array_equal(got2.model_.flat, ref.model_.flat)


def test_partial_fit_holds_one_block_at_a_time():
    """Block k+1 is computed only after ``partial_fit`` of block k returned."""
    events = []

    def load(i):
        events.append(("load", i))
        return np.full((5, T, F), float(i))

    class Recorder:
        def partial_fit(self, X, y, classes=None):
            events.append(("fit", int(X[0, 0, 0])))
            assert len(X) == len(y) == 5
            return self

    blocks = [da.from_delayed(dask.delayed(load)(i), shape=(5, T, F), dtype=float)
              for i in range(4)]
    Xd = da.concatenate(blocks)
    with dask.config.set(scheduler="synchronous"):
        fd.partial_fit(Recorder(), Xd, np.zeros(20), shuffle_blocks=False)
    assert events == [(kind, i) for i in range(4) for kind in ("load", "fit")]


def test_partial_fit_errors():
    Xd = da.from_array(X3, chunks=(20, T, F))
    with pytest.raises(ValueError, match="classes must be given"):
        fd.partial_fit(small(RNNClassifier), Xd, Y_CLASS)
    with pytest.raises(ValueError, match="classes must be given"):
        fd.partial_fit(small(SequenceTagger), Xd, np.zeros((N, T), dtype=int))
    with pytest.raises(TypeError, match="dask array"):
        fd.partial_fit(small(RNNRegressor), X3, Y_REG)
    with pytest.raises(ValueError, match="different lengths"):
        fd.partial_fit(small(RNNRegressor), Xd, Y_REG[:-1])
    with pytest.raises(ValueError, match="different lengths"):
        fd.partial_fit(small(RNNRegressor), Xd, da.from_array(Y_REG[:-1], chunks=10))
    for epochs in (0, 1.5, True):
        with pytest.raises(ValueError, match="epochs"):
            fd.partial_fit(small(RNNRegressor), Xd, Y_REG, epochs=epochs)
    with pytest.raises(TypeError, match="no partial_fit"):
        fd.partial_fit(object(), Xd, Y_REG)


def test_partial_fit_fitted_classifier_needs_no_classes():
    Xd = da.from_array(X3, chunks=(24, T, F))
    est = small(RNNClassifier).fit(X3, Y_CLASS)
    before = est.model_.flat.copy()
    with dask.config.set(scheduler="synchronous"):
        fd.partial_fit(est, Xd, Y_CLASS, shuffle_blocks=False)
    assert not np.array_equal(before, est.model_.flat)


# ------------------------------------------------------ a fit on a worker
@pytest.mark.parametrize("make", [lambda: (small(RNNClassifier, cell="lstm"), X3, Y_CLASS),
                                  lambda: (small(RNNRegressor, cell="gru"), X2, Y_REG)])
def test_model_fitted_on_a_worker_predicts_as_a_local_fit(client, make):
    est, X, y = make()
    remote = client.submit(clone(est).fit, X, y).result()
    local = clone(est).fit(X, y)
    assert remote is not local and not hasattr(est, "model_")
    np.testing.assert_array_equal(remote.model_.flat, local.model_.flat)
    np.testing.assert_array_equal(remote.predict(X), local.predict(X))


# ------------------------------------------------------- warm-up, threads
def test_warm_up_runs_on_every_worker(client):
    out = fd.warm_up(client, [small(RNNClassifier, cell="gru"),
                              small(SequenceTagger, cell="rnn", bidirectional=True)])
    assert sorted(out) == sorted(client.nthreads())
    assert all(isinstance(s, float) and s >= 0 for s in out.values())
    with pytest.raises(TypeError, match="warm_up takes"):
        fd.warm_up(client, Seq2SeqClassifier())


def test_default_threads_in_a_worker_task_within_its_share(client):
    for addr, nthreads in client.nthreads().items():
        cores = client.submit(_process_threads, workers=[addr], pure=False).result()[0]
        default = client.submit(default_num_threads, workers=[addr], pure=False).result()
        n_jobs_none = client.submit(fastseq._threads.resolve_n_jobs, None, workers=[addr],
                                    pure=False).result()
        share = max(1, cores // nthreads)
        assert 1 <= default <= share and n_jobs_none == default
        # the worker's share as the real distributed API reports it inside a task
        got = client.submit(_dask_worker_threads, 64 * nthreads, workers=[addr], pure=False).result()
        assert got == 64
    assert _dask_worker_threads(64) == 64  # outside a task: no share taken

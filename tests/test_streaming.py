"""Streaming inference (``predict_stream``): fed piece by piece, in chunks of
any sizes and per-stream lengths, the outputs equal ``predict`` on the whole
sequences; the state is plain arrays tied to its model."""

import pickle
import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning

import fastseq
from fastseq import RNNClassifier, RNNRegressor, SequenceTagger
from fastseq.estimators._stream import StreamState


def _fit(est, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return est.fit(X, y)


def _ragged(seed=0, n=6, F=2, lo=1, hi=15):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(int(rng.integers(lo, hi)), F)) for _ in range(n)]


def _feed_lists(est, X, cuts, method="predict_proba_stream"):
    """Feed each stream of the list X in chunks at the cut points ``cuts``
    (shared steps; a stream past its end gets an empty chunk)."""
    state, outs = None, []
    bounds = [0] + list(cuts) + [max(len(x) for x in X)]
    for a, b in zip(bounds[:-1], bounds[1:]):
        chunk = [x[a:b] for x in X]
        out, state = getattr(est, method)(chunk, state)
        outs.append(out)
    return outs, state


KW = dict(hidden_size=5, num_layers=2, max_iter=3, random_state=0, n_jobs=1, batch_size=4)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("pooling", ["last", "mean", "max"])
@pytest.mark.parametrize("dtype, tol", [("float64", 1e-12), ("float32", 1e-6)])
def test_classifier_stream_equals_predict_on_ragged_streams(cell, pooling, dtype, tol):
    X = _ragged()
    y = np.arange(len(X)) % 3
    est = _fit(RNNClassifier(cell=cell, pooling=pooling, dtype=dtype, **KW), X, y)
    full = est.predict_proba(X)
    outs, state = _feed_lists(est, X, [1, 2, 6, 7, 11])
    np.testing.assert_allclose(outs[-1], full, rtol=0, atol=tol)
    labels, _ = est.predict_stream([x[:0] for x in X], state)  # no new step: same answer
    np.testing.assert_array_equal(labels, est.predict(X))
    assert state.steps_seen.tolist() == [len(x) for x in X]
    # every intermediate answer is predict on the prefix seen so far
    prefix = [x[:6] for x in X]
    np.testing.assert_allclose(outs[2], est.predict_proba(prefix), rtol=0, atol=tol)


@pytest.mark.parametrize("dtype, tol", [("float64", 1e-12), ("float32", 1e-6)])
def test_padded_array_with_lengths_and_nan_padding(dtype, tol):
    X = _ragged(seed=1, n=5)
    y = np.arange(5) % 2
    est = _fit(RNNClassifier(cell="lstm", pooling="mean", dtype=dtype, **KW), X, y)
    full = est.predict_proba(X)
    T = max(len(x) for x in X)
    state = None
    # chunks of 4 steps, padded with NaN where a stream has fewer steps (never read)
    for a in range(0, T, 4):
        lens = np.array([max(0, min(len(x) - a, 4)) for x in X])
        chunk = np.full((5, 4, 2), np.nan)
        for i, x in enumerate(X):
            chunk[i, :lens[i]] = x[a:a + lens[i]]
        out, state = est.predict_proba_stream(chunk, state, lengths=lens)
    np.testing.assert_allclose(out, full, rtol=0, atol=tol)


def test_streams_start_and_stop_at_different_times_with_varying_chunks():
    X = _ragged(seed=2, n=4, lo=5, hi=20)
    y = np.array([0, 1, 0, 1])
    est = _fit(RNNClassifier(cell="gru", dtype="float64", **KW), X, y)
    rng = np.random.default_rng(0)
    pos = [0] * 4
    state = None
    while any(p < len(x) for p, x in zip(pos, X)):
        chunk = []
        for i, x in enumerate(X):
            k = int(rng.integers(0 if pos[i] else 1, 5))  # first chunk of a stream: >= 1 step
            chunk.append(x[pos[i]:pos[i] + k])
            pos[i] += len(chunk[-1])
        out, state = est.predict_proba_stream(chunk, state)
    np.testing.assert_allclose(out, est.predict_proba(X), rtol=0, atol=1e-12)


@pytest.mark.parametrize("y_shape", [(), (3,), (2, 2)])
def test_regressor_stream_equals_predict(y_shape):
    X = _ragged(seed=3)
    y = np.random.default_rng(0).normal(size=(len(X),) + y_shape)
    est = _fit(RNNRegressor(cell="lstm", dtype="float64", **KW), X, y)
    outs, _ = _feed_lists(est, X, [3, 4, 9], method="predict_stream")
    assert outs[-1].shape == (len(X),) + y_shape
    np.testing.assert_allclose(outs[-1], est.predict(X), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype, tol", [("float64", 1e-12), ("float32", 1e-6)])
def test_tagger_stream_equals_predict_step_by_step(dtype, tol):
    X = _ragged(seed=4)
    tags = [np.arange(len(x)) % 3 for x in X]
    est = _fit(SequenceTagger(cell="lstm", dtype=dtype, **KW), X, tags)
    full = est.predict_proba(X)
    outs, state = _feed_lists(est, X, [1, 5, 6, 12], method="predict_proba_stream")
    for i, x in enumerate(X):
        got = np.concatenate([o[i] for o in outs])
        assert got.shape == (len(x), 3)
        np.testing.assert_allclose(got, full[i], rtol=0, atol=tol)
    labels, _ = _feed_lists(est, X, [2, 3], method="predict_stream")
    pred = est.predict(X)
    for i in range(len(X)):
        np.testing.assert_array_equal(np.concatenate([o[i] for o in labels]), pred[i])


def test_token_model_and_univariate_2d_chunks():
    docs = ["abcab", "bca", "ccab", "abcabcab"]
    y = np.array([0, 1, 1, 0])
    est = _fit(RNNClassifier(embedding_dim=3, cell="gru", dtype="float64", **KW), docs, y)
    state = None
    for a, b in [(0, 2), (2, 3), (3, 8)]:
        out, state = est.predict_proba_stream([d[a:b] for d in docs], state)
    np.testing.assert_allclose(out, est.predict_proba(docs), rtol=0, atol=1e-12)
    # unseen tokens map to the unknown index, as in predict
    out, _ = est.predict_proba_stream(["xyz", "q", "abz", "zz"])
    np.testing.assert_allclose(out, est.predict_proba(["xyz", "q", "abz", "zz"]), atol=1e-12)
    # univariate series fitted as a 2-D X, streamed as 2-D chunks of any width
    X2 = np.random.default_rng(5).normal(size=(6, 10))
    uni = _fit(RNNClassifier(cell="lstm", dtype="float64", **KW), X2, np.arange(6) % 2)
    state = None
    for a, b in [(0, 3), (3, 4), (4, 10)]:
        out, state = uni.predict_proba_stream(X2[:, a:b], state)
    np.testing.assert_allclose(out, uni.predict_proba(X2), rtol=0, atol=1e-12)


def test_state_is_plain_picklable_and_survives_save_load(tmp_path):
    X = _ragged(seed=6)
    y = np.arange(len(X)) % 2
    est = _fit(RNNClassifier(cell="lstm", pooling="max", dtype="float64", **KW), X, y)
    _, state = est.predict_proba_stream([x[:3] for x in X])
    assert isinstance(state, StreamState) and state.n_streams == len(X)
    assert state.h.shape == (2, len(X), 5) and state.c.shape == (2, len(X), 5)
    assert state.pool.shape == (len(X), 5) and "StreamState" in repr(state)
    state2 = pickle.loads(pickle.dumps(state))
    est.save(tmp_path / "m.npz")
    loaded = fastseq.load(tmp_path / "m.npz")
    a, _ = est.predict_proba_stream([x[3:] for x in X], state)
    b, _ = loaded.predict_proba_stream([x[3:] for x in X], state2)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, est.predict_proba(X), atol=1e-12)
    # the call does not modify the state it is given
    c, _ = est.predict_proba_stream([x[3:] for x in X], state)
    np.testing.assert_array_equal(a, c)


def test_state_of_another_model_or_shape_is_refused():
    X = _ragged(seed=7)
    y = np.arange(len(X)) % 2
    est = _fit(RNNClassifier(cell="gru", dtype="float64", **KW), X, y)
    other = _fit(RNNClassifier(cell="gru", dtype="float64", **{**KW, "random_state": 1}), X, y)
    _, state = est.predict_stream([x[:2] for x in X])
    with pytest.raises(ValueError, match="state belongs to another model"):
        other.predict_stream([x[2:] for x in X], state)
    with pytest.raises(ValueError, match=r"state holds 6 streams, but X has 5"):
        est.predict_stream([x[2:] for x in X[:5]], state)
    with pytest.raises(TypeError, match="state must be None"):
        est.predict_stream([x[2:] for x in X], {"h": state.h})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.partial_fit(X, y)
    with pytest.raises(ValueError, match="before its weights changed"):
        est.predict_stream([x[2:] for x in X], state)


def test_bad_chunks_name_the_argument():
    X = _ragged(seed=8)
    y = np.arange(len(X)) % 2
    est = _fit(RNNClassifier(cell="gru", **KW), X, y)
    with pytest.raises(ValueError, match="X has 3 features per step"):
        est.predict_stream(np.zeros((2, 4, 3)))
    with pytest.raises(ValueError, match=r"X\[1\] must be an \(n_steps, 2\) array"):
        est.predict_stream([np.zeros((2, 2)), np.zeros((2, 3))])
    with pytest.raises(ValueError, match=r"lengths must lie in 0..4"):
        est.predict_stream(np.zeros((2, 4, 2)), lengths=[5, 1])
    with pytest.raises(ValueError, match=r"lengths must have shape \(2,\)"):
        est.predict_stream(np.zeros((2, 4, 2)), lengths=[1, 1, 1])
    with pytest.raises(ValueError, match="NaN or infinity at valid steps"):
        bad = np.zeros((2, 4, 2))
        bad[1, 0, 0] = np.nan
        est.predict_stream(bad)
    with pytest.raises(ValueError, match=r"X\[0\] contains NaN"):
        est.predict_stream([np.array([[np.inf, 0.0]])])
    with pytest.raises(ValueError, match="stream 1 has no step yet"):
        est.predict_stream([np.zeros((2, 2)), np.zeros((0, 2))])
    with pytest.raises(ValueError, match="no stream"):
        est.predict_stream([])
    with pytest.raises(ValueError, match="read as univariate"):
        est.predict_stream(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="lengths is for an array X"):
        est.predict_stream([np.zeros((2, 2))], lengths=[2])
    with pytest.raises(Exception, match="not fitted"):
        RNNClassifier().predict_stream([np.zeros((2, 2))])
    bi = _fit(RNNClassifier(cell="gru", bidirectional=True, **KW), X, y)
    with pytest.raises(ValueError, match="predict_stream needs a unidirectional encoder"):
        bi.predict_stream([x[:2] for x in X])


def test_tagger_streams_without_new_steps_get_empty_outputs():
    X = _ragged(seed=9, n=3)
    tags = [np.arange(len(x)) % 2 for x in X]
    est = _fit(SequenceTagger(cell="gru", dtype="float64", **KW), X, tags)
    labels, state = est.predict_stream([X[0][:2], X[1][:0], X[2][:1]])
    assert [len(a) for a in labels] == [2, 0, 1]
    assert state.steps_seen.tolist() == [2, 0, 1]


def test_long_sequences_example_reduced():
    """examples/long_sequences.py on ACSF1 (shipped with aeon), one epoch of a
    tiny GRU: both trainings run and the streamed answer is predict's."""
    from bench.example_loader import load_example
    mod = load_example("long_sequences")
    rows = mod.main(cells=("gru",), max_iter=1, hidden_size=4)
    assert [r[1] for r in rows] == [None, 100]
    X_tr, y_tr, X_te, y_te = mod.load()
    assert X_tr.shape == (100, 1460) and len(np.unique(y_tr)) == 10
    accs, same = mod.stream_test(rows[1][-1], X_te[:10], y_te[:10], parts=3)
    assert same and len(accs) == 3


def test_stream_through_a_pipelines_per_step_transformers():
    from sklearn.decomposition import PCA
    from sklearn.pipeline import make_pipeline
    from fastseq import SequenceScaler, TimeDistributed
    X = [x * 10 + 3 for x in _ragged(seed=10, n=8, F=3, lo=2, hi=20)]
    y = np.arange(8) % 2
    model = _fit(make_pipeline(SequenceScaler(), TimeDistributed(PCA(2)),
                               RNNClassifier(cell="gru", dtype="float64", tbptt_steps=4, **KW)), X, y)
    state = None
    for a, b in [(0, 3), (3, 9), (9, 20)]:
        out, state = model[-1].predict_proba_stream(model[:-1].transform([x[a:b] for x in X]), state)
    np.testing.assert_allclose(out, model.predict_proba(X), rtol=0, atol=1e-12)


def test_convolution_front_end_is_refused_clearly_and_default_models_stream():
    """A conv front end reads steps ahead ("same" padding) and groups steps
    (pooling): streaming and truncation refuse it by name; a model of the
    default configuration (front end "auto", resolved to none on short
    series) streams."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(12, 40, 2))
    y = np.arange(12) % 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        conv = RNNClassifier(conv_filters=4, max_iter=1, random_state=0).fit(X, y)
        plain = RNNClassifier(max_iter=1, random_state=0).fit(X[:, :20], y)
    with pytest.raises(ValueError, match="predict_stream needs a model without a convolution"):
        conv.predict_stream(X[:, :5])
    with pytest.raises(ValueError, match="tbptt_steps needs a model without a convolution"):
        RNNClassifier(conv_filters=4, tbptt_steps=10, max_iter=1).fit(X, y)
    labels, state = plain.predict_stream(X[:, :20])
    assert labels.shape == (12,) and state.n_streams == 12
    assert (labels == plain.predict(X[:, :20])).all()

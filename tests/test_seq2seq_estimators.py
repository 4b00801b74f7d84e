"""Seq2SeqClassifier and Seq2SeqRegressor: training, decoding, attention, bad input."""

import pickle
import warnings

import numpy as np
import pytest

import fastseq.network.seq2seq as s2s_net
from fastseq import Seq2SeqClassifier, Seq2SeqRegressor

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def reverse_data(n=160, seed=0, alphabet="abcd"):
    rng = np.random.default_rng(seed)
    X = ["".join(rng.choice(list(alphabet), rng.integers(2, 5))) for _ in range(n)]
    return X, [s[::-1] for s in X]


def small_clf(**kw):
    params = dict(hidden_size=16, embedding_dim=8, max_iter=25, batch_size=16,
                  learning_rate=2e-2, random_state=0, cell="gru")
    params.update(kw)
    return Seq2SeqClassifier(**params)


@pytest.fixture(scope="module")
def fitted_clf():
    X, y = reverse_data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return small_clf().fit(X, y), X, y


def test_classifier_learns_reversal(fitted_clf):
    est, X, y = fitted_clf
    assert est.loss_curve_[-1] < 0.2 * est.loss_curve_[0]
    assert est.score(X, y) > 0.8
    pred = est.predict(X[:5])
    assert all(isinstance(p, str) for p in pred)


def test_attention_matrices(fitted_clf):
    est, X, _ = fitted_clf
    pred, att = est.predict(X[:6], return_attention=True)
    for x, p, a in zip(X[:6], pred, att):
        assert a.shape == (len(p), len(x))
        np.testing.assert_allclose(a.sum(axis=1), 1.0, rtol=1e-5)


def test_beam_search_predicts(fitted_clf):
    est, X, y = fitted_clf
    est2 = pickle.loads(pickle.dumps(est))
    est2.set_params(beam_width=3)
    assert est2.score(X, y) >= est.score(X, y) - 0.05
    pred, att = est2.predict(X[:4], return_attention=True)
    for x, p, a in zip(X[:4], pred, att):
        assert a.shape == (len(p), len(x))


def test_pickle_round_trip(fitted_clf):
    est, X, _ = fitted_clf
    est2 = pickle.loads(pickle.dumps(est))
    assert list(est2.predict(X[:10])) == list(est.predict(X[:10]))
    assert est2.model_.params["output.weight"].base is not None  # still views of flat


def test_unseen_source_tokens_map_to_reserved_index(fitted_clf):
    est, _, _ = fitted_clf
    pred = est.predict(["xyz", "a?b"])
    assert len(pred) == 2


def test_plot_attention(fitted_clf):
    est, X, _ = fitted_clf
    fig = est.plot_attention(X[0])
    assert fig.axes


def test_token_lists_come_back_as_lists():
    X = [[1, 2, 3], [2, 3], [3, 1, 1, 2]] * 5
    y = [["A", "B"], ["B"], ["C", "A", "B"]] * 5
    est = small_clf(max_iter=2).fit(X, y)
    pred = est.predict(X[:3])
    assert isinstance(pred, list) and all(isinstance(p, list) for p in pred)
    assert set(t for p in pred for t in p) <= {"A", "B", "C"}


@pytest.mark.parametrize("attention", ["luong", "dot", "cosine", None])
def test_other_attentions_and_scheduled_sampling_fit(attention):
    X, y = reverse_data(40)
    est = small_clf(attention=attention, teacher_forcing=0.5, max_iter=2, cell="lstm",
                    bidirectional=True).fit(X, y)
    assert len(est.loss_curve_) == 2 and np.isfinite(est.loss_curve_).all()
    if attention is None:
        with pytest.raises(ValueError):
            est.plot_attention(X[0])


def test_early_stopping_partial_fit_warm_start_reproducible():
    X, y = reverse_data(60)
    # reproducible for a fixed thread count (n_jobs=None is every core)
    a = small_clf(max_iter=3, early_stopping=True, n_iter_no_change=2, n_jobs=1).fit(X, y)
    assert len(a.validation_scores_) == a.n_iter_
    b = small_clf(max_iter=3, early_stopping=True, n_iter_no_change=2, n_jobs=1).fit(X, y)
    np.testing.assert_array_equal(a.model_.flat, b.model_.flat)
    n = a.n_iter_
    a.partial_fit(X, y)
    assert a.n_iter_ == n + 1
    c = small_clf(max_iter=1, warm_start=True).fit(X, y)
    c.fit(X, y)
    assert c.n_iter_ == 2
    with pytest.raises(ValueError, match="not seen"):
        a.partial_fit(X[:2], ["zz", "q"])


# ---------------------------------------------------------------- bad input
@pytest.fixture
def no_kernels(monkeypatch):
    """Make any decoder kernel call fail: errors must come before them."""
    def boom(*args, **kwargs):
        raise AssertionError("a kernel ran before the input was validated")
    monkeypatch.setattr(s2s_net, "decoder_forward", boom)
    monkeypatch.setattr(s2s_net, "decoder_step", boom)


@pytest.mark.parametrize("X,y,match", [
    (["ab", ""], ["ba", "a"], "zero-length"),
    (["ab", "c"], ["ba", ""], "zero-length"),
    (["ab", "c"], ["ba"], "different lengths"),
    ([], [], "empty"),
])
def test_bad_sequences_raise_before_kernels(no_kernels, X, y, match):
    with pytest.raises(ValueError, match=match):
        small_clf(max_iter=1).fit(X, y)


@pytest.mark.parametrize("params,match", [
    (dict(beam_width=0), "beam_width"),
    (dict(max_output_length=0), "max_output_length"),
    (dict(attention="additive"), "attention"),
    (dict(teacher_forcing=1.5), "teacher_forcing"),
])
def test_bad_parameters_raise_before_kernels(no_kernels, params, match):
    with pytest.raises(ValueError, match=match):
        small_clf(max_iter=1, **params).fit(["ab", "c"], ["ba", "c"])


def test_bad_decoding_parameters_at_predict(fitted_clf, no_kernels):
    est = pickle.loads(pickle.dumps(fitted_clf[0]))
    for params, match in [(dict(beam_width=0), "beam_width"),
                          (dict(max_output_length=0), "max_output_length")]:
        est.set_params(**params)
        with pytest.raises(ValueError, match=match):
            est.predict(["ab"])
        est.set_params(beam_width=1, max_output_length=None)
    with pytest.raises(ValueError, match="zero-length"):
        est.predict([""])


# ---------------------------------------------------------------- regressor
def regression_data(n=80, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 8, 2))
    y = np.stack([X[:, -3:, 0][:, ::-1], X[:, -3:, 1] * 2 + 1], axis=-1)
    return X, y


def test_regressor_fit_predict_attention():
    X, y = regression_data()
    est = Seq2SeqRegressor(hidden_size=12, max_iter=30, learning_rate=2e-2, random_state=0,
                           attention="bahdanau", cell="gru", batch_size=16).fit(X, y)
    pred, att = est.predict(X[:5], return_attention=True)
    assert pred.shape == (5, 3, 2)
    assert all(a.shape == (3, 8) for a in att)
    np.testing.assert_allclose(np.stack(att).sum(axis=2), 1.0, rtol=1e-5)
    assert est.score(X, y) > 0.3
    assert est.loss_curve_[-1] < est.loss_curve_[0]
    est.set_params(max_output_length=5)
    assert est.predict(X[:2]).shape == (2, 5, 2)


def test_regressor_ragged_2d_y_and_teacher_forcing():
    rng = np.random.default_rng(1)
    X = [rng.standard_normal((T, 1)) for T in (4, 6, 3, 5)] * 4
    y = rng.standard_normal((16, 2))
    est = Seq2SeqRegressor(hidden_size=4, max_iter=2, teacher_forcing=0.3, attention="cosine",
                           random_state=0).fit(X, y)
    pred, att = est.predict(X[:4], return_attention=True)
    assert pred.shape == (4, 2, 1)
    assert [a.shape for a in att] == [(2, 4), (2, 6), (2, 3), (2, 5)]


def test_regressor_2d_X_is_univariate_series_of_the_fitted_length():
    rng = np.random.default_rng(2)
    X, y = rng.standard_normal((12, 6)), rng.standard_normal((12, 2, 1))
    est = Seq2SeqRegressor(hidden_size=4, max_iter=2, random_state=0, dtype="float64").fit(X, y)
    assert (est.n_features_in_, est.n_features_per_step_, est.n_timesteps_in_) == (6, 1, 6)
    msg = (r"^X has 4 features, but Seq2SeqRegressor is expecting 6 features as input: .*"
           r"list of \(T_i, 1\) arrays \(the ragged form\)")
    for call in (est.predict, lambda X_: est.score(X_, y), lambda X_: est.partial_fit(X_, y)):
        with pytest.raises(ValueError, match=msg):
            call(X[:, :4])
    ref = est.predict(X)
    np.testing.assert_array_equal(est.predict(X[:, :, None]), ref)
    np.testing.assert_allclose(est.predict([x[:, None] for x in X] + [X[0, :4, None]])[:-1], ref,
                               rtol=1e-12, atol=1e-14)
    assert est.predict([X[0, :4], X[1]]).shape == (2, 2, 1)
    with pytest.raises(ValueError, match="2 features per step"):
        est.predict(np.stack([X, X], axis=2))


@pytest.mark.parametrize("y,match", [
    (np.zeros((3, 2, 1)), "different lengths"),
    (np.zeros((4, 0, 1)), "empty"),
    (np.full((4, 2, 1), np.nan), "NaN"),
    (np.zeros(4), "shape"),
])
def test_regressor_bad_targets(no_kernels, y, match):
    with pytest.raises(ValueError, match=match):
        Seq2SeqRegressor(max_iter=1).fit(np.zeros((4, 3, 2)), y)


def test_save_load_round_trip(fitted_clf, tmp_path):
    import fastseq
    est, X, _ = fitted_clf
    est.save(tmp_path / "m.npz")
    est2 = fastseq.load(tmp_path / "m.npz")
    assert type(est2) is type(est)
    assert list(est2.predict(X[:5])) == list(est.predict(X[:5]))
    est2.set_params(beam_width=3)
    beam = clone_params_predict(est, X[:5], beam_width=3)
    assert list(est2.predict(X[:5])) == beam


def clone_params_predict(est, X, **params):
    old = {k: getattr(est, k) for k in params}
    est.set_params(**params)
    try:
        return list(est.predict(X))
    finally:
        est.set_params(**old)


def test_regressor_save_load_round_trip(tmp_path):
    import fastseq
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((12, 5, 2)), rng.standard_normal((12, 3, 1))
    est = Seq2SeqRegressor(hidden_size=6, max_iter=2, attention="luong", random_state=0).fit(X, y)
    est.save(tmp_path / "r.npz")
    est2 = fastseq.load(tmp_path / "r.npz")
    np.testing.assert_array_equal(est2.predict(X), est.predict(X))

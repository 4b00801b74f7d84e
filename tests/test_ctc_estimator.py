"""CTCClassifier: fitting on every input form, decoding, persistence, bad input.
(The scikit-learn checks are in tests/test_ctc_sklearn.py.)"""

import pickle
import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning

import fastseq
from fastseq import CTCClassifier
from fastseq.metrics import character_error_rate

SMALL = dict(hidden_size=12, bidirectional=True, learning_rate=0.03, batch_size=16,
             random_state=0, cell="gru")


def bursts(n, seed, alphabet="abc", max_len=3, gap=2, width=3, noise=0.1):
    """Each label is ``width`` steps of its own feature, labels separated by
    ``gap`` steps of a "silence" feature: a task with wide margins."""
    rng = np.random.default_rng(seed)
    F = len(alphabet) + 1
    X, y = [], []
    for _ in range(n):
        lab = rng.integers(0, len(alphabet), size=rng.integers(1, max_len + 1))
        rows = []
        for k in lab:
            rows += [F - 1] * gap + [k] * width
        rows += [F - 1] * gap
        X.append(np.eye(F)[rows] + noise * rng.normal(size=(len(rows), F)))
        y.append("".join(alphabet[k] for k in lab))
    return X, y


@pytest.fixture(scope="module")
def fitted():
    X, y = bursts(120, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = CTCClassifier(max_iter=25, **SMALL).fit(X, y)
    return est, X, y


def test_learns_a_separable_task(fitted):
    est, X, y = fitted
    Xt, yt = bursts(40, 1)
    pred = est.predict(Xt)
    assert character_error_rate(yt, pred) < 0.1
    assert est.score(Xt, yt) > 0.8
    assert est.loss_curve_[-1] < 0.3 * est.loss_curve_[0]


def test_outputs_and_attributes(fitted):
    est, X, y = fitted
    assert est.classes_.tolist() == ["a", "b", "c"] and est.y_is_str_
    pred = est.predict(X[:5])
    assert isinstance(pred, np.ndarray) and pred.dtype == object
    assert all(isinstance(p, str) for p in pred)
    proba = est.predict_proba(X[:5])
    assert [p.shape for p in proba] == [(len(x), 4) for x in X[:5]]
    for p in proba:
        np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-5)
    logp = est.predict_log_proba(X[:2])
    np.testing.assert_allclose(np.exp(logp[0]), proba[0], rtol=1e-6)
    dec = est.decode(X[:3])
    assert [d[0] for d in dec] == list(pred[:3])
    assert all(d[1] <= 0 for d in dec)


def test_beam_decoding_agrees_with_greedy_on_a_confident_model(fitted):
    est, X, y = fitted
    est2 = pickle.loads(pickle.dumps(est)).set_params(beam_width=4)
    g, b = est.decode(X[:10]), est2.decode(X[:10])
    for (pg, sg), (pb, sb) in zip(g, b):
        assert sb >= sg - 1e-9          # a labelling's total >= its best path
    assert sum(pg == pb for (pg, _), (pb, _) in zip(g, b)) >= 8


def test_save_load_and_pickle_round_trip(fitted, tmp_path):
    est, X, y = fitted
    est.save(tmp_path / "ctc.npz")
    back = fastseq.load(tmp_path / "ctc.npz")
    assert type(back) is CTCClassifier and back.classes_.tolist() == est.classes_.tolist()
    assert list(back.predict(X[:10])) == list(est.predict(X[:10]))
    again = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(again.predict_proba(X[:3])[0], est.predict_proba(X[:3])[0])


def test_unknown_labels_at_score_count_as_errors(fitted):
    est, X, y = fitted
    yy = list(y[:10])
    yy[0] = "zz"
    yy[1] = [1, 2]
    s = est.score(X[:10], yy)
    assert 0 <= s <= 0.8 + 1e-9
    with pytest.raises(TypeError, match=r"y\[0\] must be a string"):
        est.score(X[:2], [3, 4])


def test_summary_history_and_verbose(fitted, capsys):
    est, X, y = fitted
    lines = []
    est.summary(print_fn=lines.append)
    assert "CTCClassifier" in lines[0] and "(None, T, 4)" in lines[0]
    fig = est.plot_history()
    assert fig is not None


def test_label_sequences_early_stopping_partial_fit_and_warm_start():
    X, y = bursts(60, 2)
    labels = [[{"a": 10, "b": 0, "c": 7}[c] for c in s] for s in y]   # 0 is a label, not the blank
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = CTCClassifier(max_iter=3, early_stopping=True, **SMALL).fit(X, labels)
    assert est.classes_.tolist() == [0, 7, 10] and not est.y_is_str_
    assert len(est.validation_scores_) == est.n_iter_
    assert all(s <= 0 for s in est.validation_scores_)
    pred = est.predict(X[:4])
    assert isinstance(pred, list) and all(isinstance(p, list) for p in pred)
    assert all(t in (0, 7, 10) for p in pred for t in p)
    n = est.n_iter_
    est.partial_fit(X, labels)
    assert est.n_iter_ == n + 1
    with pytest.raises(ValueError, match="not seen at the first fit"):
        est.partial_fit(X[:2], [[99], [7]])
    est.set_params(warm_start=True, max_iter=1, early_stopping=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X, labels)
    assert est.n_iter_ == n + 2


@pytest.mark.parametrize("form", ["3d", "2d", "tokens"])
def test_other_input_forms(form):
    rng = np.random.default_rng(3)
    y = ["ab", "ba", "a", "bb"] * 4
    if form == "3d":
        X = rng.normal(size=(16, 6, 2))
        kw = {}
    elif form == "2d":
        X = rng.normal(size=(16, 6))
        kw = {}
    else:
        X = ["xyxyx", "yyxxy", "xx", "yxyxy"] * 4
        kw = dict(embedding_dim=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = CTCClassifier(max_iter=2, **SMALL, **kw).fit(X, y)
    pred = est.predict(X)
    assert len(pred) == 16 and all(set(p) <= {"a", "b"} for p in pred)
    assert all(len(p) <= len(x) for p, x in zip(pred, X))
    assert [len(p) for p in est.predict_proba(X)] == [len(x) for x in X]


def test_empty_targets_are_allowed():
    X, y = bursts(20, 4)
    X.append(np.tile(np.eye(4)[3], (5, 1)))
    y.append("")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = CTCClassifier(max_iter=2, **SMALL).fit(X, y)
    assert np.all(np.isfinite(est.loss_curve_))
    with pytest.raises(ValueError, match="no label"):
        CTCClassifier(max_iter=1).fit(X[:2], ["", []])


# --------------------------------------------------------------- bad input
def test_input_shorter_than_its_label_is_refused_before_training():
    X = [np.zeros((3, 2)), np.zeros((4, 2))]
    with pytest.raises(ValueError, match=r"X\[1\] has 4 steps .* needs at least 6"):
        CTCClassifier(max_iter=1).fit(X, ["ab", "aabb"])   # 4 labels + 2 adjacent repeats
    est = CTCClassifier(max_iter=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X, ["ab", "aab"])                         # needs exactly 4: fine
    with pytest.raises(ValueError, match=r"X\[0\] has 3 steps"):
        CTCClassifier(max_iter=1).fit(X, ["abcd", "a"])


def test_non_finite_features_are_refused():
    X = [np.zeros((3, 2)), np.full((4, 2), np.nan)]
    with pytest.raises(ValueError, match="NaN or infinity"):
        CTCClassifier(max_iter=1).fit(X, ["a", "b"])


@pytest.mark.parametrize("bw", [0, -2, 1.5])
def test_beam_width_below_one_is_refused(bw):
    with pytest.raises(ValueError, match="beam_width"):
        CTCClassifier(beam_width=bw, max_iter=1).fit([np.zeros((3, 2))], ["a"])


@pytest.mark.parametrize("y,err,match", [
    (None, ValueError, "requires y"),
    ("ab", TypeError, "list of strings"),
    ([1, 2], TypeError, r"y\[0\] must be a string or a sequence"),
    ([[1.0, float("nan")], [1.0]], ValueError, "NaN"),
    ([[[1]], [2]], TypeError, "hashable"),
    (["a"], ValueError, "different lengths"),
])
def test_bad_targets(y, err, match):
    with pytest.raises(err, match=match):
        CTCClassifier(max_iter=1).fit([np.zeros((3, 2)), np.zeros((3, 2))], y)


def test_truncated_bptt_is_refused_clearly():
    """The CTC loss couples every step of a sequence: no window holds it."""
    X = [np.zeros((6, 2)), np.ones((6, 2))]
    with pytest.raises(ValueError, match="tbptt_steps is not available for CTCClassifier"):
        CTCClassifier(tbptt_steps=3, max_iter=1).fit(X, ["ab", "b"])


def test_conv_front_end_pools_the_steps_ctc_reads():
    """CRNN: the CTC loss reads the pooled outputs, and a label that needs
    more steps than pooling leaves is refused before training."""
    rng = np.random.default_rng(0)
    X = [rng.normal(size=(16, 3)) for _ in range(8)]
    clf = CTCClassifier(conv_filters=4, conv_pool=2, hidden_size=8, max_iter=2,
                        random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X, ["ab", "ba"] * 4)
    proba = clf.predict_proba(X[:2])
    assert [p.shape for p in proba] == [(8, 3), (8, 3)]
    assert all(isinstance(p, str) for p in clf.predict(X[:2]))
    with pytest.raises(ValueError, match=r"X\[0\] has 16 steps \(8 after .*conv_pool"):
        CTCClassifier(conv_filters=4, conv_pool=2, max_iter=1).fit(X[:2], ["abababaab", "a"])

"""fastseq.to_onnx: every exported model run in ONNX Runtime against the
estimator's own predict / predict_proba, on ragged padded batches."""

import subprocess
import sys
import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning, NotFittedError

import fastseq
from fastseq import RNNClassifier, RNNRegressor, SequenceTagger

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from fastseq.onnx import encode  # noqa: E402

ATOL = 1e-5
LENGTHS = [5, 9, 2, 7, 9, 1, 4, 3]  # ragged, max 9, one of length 1


def session(model):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so,
                                providers=["CPUExecutionProvider"])


def seqs(F=3, lengths=LENGTHS, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((t, F)).astype(np.float32) for t in lengths]


def fit(est, X, y, scale=2.5):
    """Fit briefly (fitting is not the point), then scale the weights up so
    that the outputs are far from uniform and a wrong graph shows."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X, y)
    est.model_.flat[...] *= est.model_.flat.dtype.type(scale)
    return est


def padded(est, X, fill=np.nan):
    """encode(), with the padding overwritten by ``fill`` (NaN: never read)."""
    Xp, lengths = encode(est, X)
    if Xp.dtype.kind == "f":
        for b, n in enumerate(lengths):
            Xp[b, n:] = fill
    return Xp, lengths


def small(cls, **kw):
    kw = {"hidden_size": 5, "max_iter": 1, "batch_size": 4, "random_state": 0, **kw}
    return cls(**kw)


# ------------------------------------------------------------- classifier
@pytest.mark.parametrize("pooling", ["last", "mean", "max"])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_classifier_matches_predict_proba(cell, bidirectional, num_layers, pooling):
    X = seqs()
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    clf = fit(small(RNNClassifier, cell=cell, bidirectional=bidirectional,
                    num_layers=num_layers, pooling=pooling), X, y)
    Xp, lengths = padded(clf, X)
    label, proba = session(fastseq.to_onnx(clf)).run(None, {"X": Xp, "lengths": lengths})
    want = clf.predict_proba(X)
    assert proba.shape == want.shape and proba.dtype == np.float32
    assert np.ptp(want) > 0.2  # far from uniform: a wrong graph would show
    np.testing.assert_allclose(proba, want, rtol=0, atol=ATOL)
    np.testing.assert_array_equal(label, clf.predict(X))


def test_relu_rnn_string_classes_float64_and_dropout_left_out():
    X = seqs()
    y = np.array(["cat", "dog", "emu", "cat", "dog", "emu", "cat", "dog"])
    clf = fit(small(RNNClassifier, cell="rnn", nonlinearity="relu", bidirectional=True,
                    num_layers=2, dtype="float64", dropout=0.3, recurrent_dropout=0.2),
              X, y, scale=1.5)
    Xp, lengths = padded(clf, X)
    label, proba = session(fastseq.to_onnx(clf)).run(None, {"X": Xp, "lengths": lengths})
    np.testing.assert_allclose(proba, clf.predict_proba(X), rtol=0, atol=ATOL)
    assert label.dtype.kind in "OU"
    np.testing.assert_array_equal(label.astype(str), clf.predict(X))


@pytest.mark.parametrize("opset", [13, 18])
def test_opsets_and_2d_fit_input(opset):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((8, 6)).astype(np.float32)  # univariate, 1 feature per step
    y = np.array([0, 1] * 4)
    clf = fit(small(RNNClassifier, cell="gru", pooling="max"), X, y)
    model = fastseq.to_onnx(clf, opset=opset)
    assert model.opset_import[0].version == opset
    label, proba = session(model).run(None, {"X": X[:, :, None],
                                             "lengths": np.full(8, 6, dtype=np.int64)})
    np.testing.assert_allclose(proba, clf.predict_proba(X), rtol=0, atol=ATOL)
    np.testing.assert_array_equal(label, clf.predict(X))


def test_dynamic_batch_and_length():
    clf = fit(small(RNNClassifier, cell="lstm", bidirectional=True), seqs(),
              np.array([0, 1] * 4))
    sess = session(fastseq.to_onnx(clf))
    for lengths in ([1], [12, 3], [2, 2, 2, 2, 2, 2, 2, 2, 2, 30]):
        X = seqs(lengths=lengths, seed=len(lengths))
        Xp, ln = padded(clf, X)
        _, proba = sess.run(None, {"X": Xp, "lengths": ln})
        np.testing.assert_allclose(proba, clf.predict_proba(X), rtol=0, atol=ATOL)


# ---------------------------------------------------------------- GRU forms
@pytest.mark.parametrize("reset_after", [True, False])
def test_gru_reset_forms(reset_after):
    """fastseq's default GRU (reset after the recurrent product) is ONNX's
    linear_before_reset=1; the "reset before" form of ``Recurrent`` (not a
    parameter of the estimators) is linear_before_reset=0."""
    from fastseq.network.recurrent import Recurrent

    X = seqs()
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    clf = fit(small(RNNClassifier, cell="gru", bidirectional=True, num_layers=2), X, y)
    before = clf.predict_proba(X)
    if not reset_after:
        m = clf.model_
        rnn = Recurrent("gru", m.rnn.input_size, m.rnn.hidden_size, m.rnn.num_layers,
                        m.rnn.bidirectional, reset_after=False, dtype=m.flat.dtype)
        rnn.bind(m.flat[m._rnn_sl], copy=False)
        rnn.eval()
        m.rnn = rnn
        assert np.abs(clf.predict_proba(X) - before).max() > 1e-3  # the forms differ
    model = fastseq.to_onnx(clf)
    attr = [a.i for n in model.graph.node if n.op_type == "GRU" for a in n.attribute
            if a.name == "linear_before_reset"]
    assert attr == [int(reset_after)] * 2
    Xp, lengths = padded(clf, X)
    _, proba = session(model).run(None, {"X": Xp, "lengths": lengths})
    np.testing.assert_allclose(proba, clf.predict_proba(X), rtol=0, atol=ATOL)


# ---------------------------------------------------------------- regressor
@pytest.mark.parametrize("y_shape", [(), (3,), (4, 2)])
@pytest.mark.parametrize("cell,pooling", [("lstm", "last"), ("gru", "mean"), ("rnn", "max")])
def test_regressor_matches_predict(y_shape, cell, pooling):
    X = seqs()
    rng = np.random.default_rng(3)
    y = 50.0 + 20.0 * rng.standard_normal((len(X),) + y_shape)  # scaling to undo
    reg = fit(small(RNNRegressor, cell=cell, pooling=pooling, bidirectional=True,
                    num_layers=2), X, y)
    Xp, lengths = padded(reg, X)
    (pred,) = session(fastseq.to_onnx(reg)).run(None, {"X": Xp, "lengths": lengths})
    want = reg.predict(X)
    assert pred.shape == want.shape == (len(X),) + y_shape
    # float32 output of values ~50: a few ulps of the magnitude
    np.testing.assert_allclose(pred, want, rtol=1e-6, atol=ATOL * np.abs(want).max())


# ------------------------------------------------------------------- tagger
@pytest.mark.parametrize("cell,bidirectional", [("rnn", True), ("lstm", False),
                                                 ("lstm", True), ("gru", True)])
def test_tagger_matches_predict_proba_and_pads_with_zeros(cell, bidirectional):
    X = seqs()
    y = [np.arange(len(s)) % 3 for s in X]
    tag = fit(small(SequenceTagger, cell=cell, bidirectional=bidirectional, num_layers=2),
              X, y)
    Xp, lengths = padded(tag, X)
    (proba,) = session(fastseq.to_onnx(tag)).run(None, {"X": Xp, "lengths": lengths})
    assert proba.shape == (len(X), max(LENGTHS), 3)
    for b, want in enumerate(tag.predict_proba(X)):
        n = lengths[b]
        np.testing.assert_allclose(proba[b, :n], want, rtol=0, atol=ATOL)
        assert np.all(proba[b, n:] == 0)
        np.testing.assert_array_equal(tag.classes_[proba[b, :n].argmax(axis=1)],
                                      tag.predict([X[b]])[0])


# ------------------------------------------------------------------- tokens
def test_token_classifier_and_encode():
    texts = ["abcab", "cba", "aaab", "bcbcbcbc", "ca", "b", "abc", "ccc"]
    y = np.array([1, 0, 1, 0, 1, 0, 1, 0])
    clf = fit(small(RNNClassifier, cell="lstm", embedding_dim=4, bidirectional=True,
                    pooling="mean"), texts, y, scale=1.5)
    model = fastseq.to_onnx(clf)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64
    new = ["abz", "zzzz", "cab"]  # "z" unseen at fit -> the unknown index
    Xp, lengths = encode(clf, new)
    assert Xp.dtype == np.int64 and Xp.shape == (3, 4) and Xp[0, 3] == 0
    np.testing.assert_array_equal(lengths, [3, 4, 3])
    label, proba = session(model).run(None, {"X": Xp, "lengths": lengths})
    np.testing.assert_allclose(proba, clf.predict_proba(new), rtol=0, atol=ATOL)
    np.testing.assert_array_equal(label, clf.predict(new))


# --------------------------------------------------------- conv front end
def conv_lengths(pool, n_layers):
    """Ragged lengths, each at least pool ** n_layers, whose pooled lengths
    differ across the batch (and from the padded T's)."""
    need = pool ** n_layers
    return [need + d for d in (0, 1, 2, 5, 8, 3, 11, 4)]


def check_conv_graph(model, n_layers, pool):
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Conv") == n_layers
    assert ops.count("MaxPool") == (n_layers if pool > 1 else 0)
    # padding zeroed before every Conv (the first one against NaN padding)
    assert ops.count("Where") >= n_layers


@pytest.mark.parametrize("filters,kernel,pool,cell,bidirectional,pooling", [
    ([4], 3, 1, "gru", False, "last"),
    ([4], 5, 2, "lstm", True, "mean"),
    ([4], 3, 3, "rnn", True, "max"),
    ([4, 3], 3, 2, "gru", True, "last"),
    ([4, 3], 5, 1, "lstm", False, "max"),
    ([3, 4], 3, 3, "gru", False, "mean"),
    ([4, 3], 5, 2, "rnn", False, "last"),
    ([4, 3], 3, 2, "lstm", True, "max"),
])
def test_conv_classifier_matches_predict_proba(filters, kernel, pool, cell, bidirectional,
                                               pooling):
    X = seqs(lengths=conv_lengths(pool, len(filters)), seed=7)
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    clf = fit(small(RNNClassifier, cell=cell, bidirectional=bidirectional, pooling=pooling,
                    conv_filters=filters, conv_kernel_size=kernel, conv_pool=pool), X, y)
    model = fastseq.to_onnx(clf)
    check_conv_graph(model, len(filters), pool)
    Xp, lengths = padded(clf, X)
    pooled = clf.model_.output_lengths(lengths)
    assert len(set(pooled.tolist())) > 1  # ragged after pooling too
    label, proba = session(model).run(None, {"X": Xp, "lengths": lengths})
    want = clf.predict_proba(X)
    assert np.ptp(want) > 0.2
    np.testing.assert_allclose(proba, want, rtol=0, atol=ATOL)
    np.testing.assert_array_equal(label, clf.predict(X))


def test_default_front_end_exports():
    """The default ``conv_filters="auto"`` on long series resolves to a front
    end at fit; the exported graph carries it."""
    X = seqs(lengths=[40, 36, 52, 33, 61, 45, 38, 50], seed=11)
    y = np.array([0, 1] * 4)
    clf = fit(RNNClassifier(hidden_size=5, max_iter=1, random_state=0), X, y)
    assert clf.model_.config["conv_filters"] == [32]
    model = fastseq.to_onnx(clf)
    check_conv_graph(model, 1, 4)
    Xp, lengths = padded(clf, X)
    _, proba = session(model).run(None, {"X": Xp, "lengths": lengths})
    np.testing.assert_allclose(proba, clf.predict_proba(X), rtol=0, atol=ATOL)


def test_conv_dynamic_batch_length_and_opset13():
    """One session over batches of other sizes and T, with sequences whose
    pooled length is 1 beside long ones (T // pool ** 2 much larger)."""
    clf = fit(small(RNNClassifier, cell="gru", bidirectional=True, pooling="mean",
                    conv_filters=[3, 4], conv_kernel_size=3, conv_pool=2),
              seqs(lengths=conv_lengths(2, 2)), np.array([0, 1] * 4))
    sess = session(fastseq.to_onnx(clf, opset=13))
    for lengths in ([4], [23, 5], [4, 7, 8, 31, 4, 9, 12, 4, 6]):
        X = seqs(lengths=lengths, seed=len(lengths))
        Xp, ln = padded(clf, X)
        _, proba = sess.run(None, {"X": Xp, "lengths": ln})
        np.testing.assert_allclose(proba, clf.predict_proba(X), rtol=0, atol=ATOL)


@pytest.mark.parametrize("cell,pooling,pool", [("lstm", "last", 2), ("gru", "max", 3)])
def test_conv_regressor_matches_predict(cell, pooling, pool):
    X = seqs(lengths=conv_lengths(pool, 2), seed=8)
    rng = np.random.default_rng(4)
    y = 50.0 + 20.0 * rng.standard_normal((len(X), 2))
    reg = fit(small(RNNRegressor, cell=cell, pooling=pooling, bidirectional=True,
                    conv_filters=[4, 3], conv_kernel_size=5, conv_pool=pool), X, y)
    model = fastseq.to_onnx(reg)
    check_conv_graph(model, 2, pool)
    Xp, lengths = padded(reg, X)
    (pred,) = session(model).run(None, {"X": Xp, "lengths": lengths})
    want = reg.predict(X)
    assert pred.shape == want.shape == (len(X), 2)
    np.testing.assert_allclose(pred, want, rtol=1e-6, atol=ATOL * np.abs(want).max())


@pytest.mark.parametrize("filters,kernel", [([4], 5), ([4, 3], 3)])
def test_conv_tagger_pool1_matches_predict_proba(filters, kernel):
    X = seqs()
    y = [np.arange(len(s)) % 3 for s in X]
    tag = fit(small(SequenceTagger, cell="lstm", bidirectional=True, conv_filters=filters,
                    conv_kernel_size=kernel, conv_pool=1), X, y)
    model = fastseq.to_onnx(tag)
    check_conv_graph(model, len(filters), 1)
    Xp, lengths = padded(tag, X)
    (proba,) = session(model).run(None, {"X": Xp, "lengths": lengths})
    assert proba.shape == (len(X), max(LENGTHS), 3)
    for b, want in enumerate(tag.predict_proba(X)):
        n = lengths[b]
        np.testing.assert_allclose(proba[b, :n], want, rtol=0, atol=ATOL)
        assert np.all(proba[b, n:] == 0)


def test_conv_token_classifier():
    """Embedding, then the convolution front end, then the recurrent layer."""
    texts = ["abcabca", "cbaa", "aaabcc", "bcbcbcbcb", "caab", "bbbb", "abcab", "cccac"]
    y = np.array([1, 0, 1, 0, 1, 0, 1, 0])
    clf = fit(small(RNNClassifier, cell="gru", embedding_dim=4, pooling="max",
                    conv_filters=[5, 3], conv_kernel_size=3, conv_pool=2), texts, y, scale=2.0)
    model = fastseq.to_onnx(clf)
    check_conv_graph(model, 2, 2)
    new = ["abzab", "zzzz", "cabcabcabcab", "bcaaaa"]
    Xp, lengths = encode(clf, new)
    label, proba = session(model).run(None, {"X": Xp, "lengths": lengths})
    np.testing.assert_allclose(proba, clf.predict_proba(new), rtol=0, atol=ATOL)
    np.testing.assert_array_equal(label, clf.predict(new))
    with pytest.raises(ValueError, match="at least 4 steps"):
        encode(clf, ["abc"])  # pooled length 0: refused, as predict refuses it


# ------------------------------------------------------------------- errors
def test_unfitted_raises_not_fitted():
    for cls in (RNNClassifier, RNNRegressor, SequenceTagger):
        with pytest.raises(NotFittedError):
            fastseq.to_onnx(cls())
    with pytest.raises(NotFittedError):
        encode(RNNClassifier(), seqs())


def test_unsupported_estimators_and_options_are_named():
    from sklearn.linear_model import LogisticRegression

    from fastseq import Seq2SeqRegressor
    with pytest.raises(NotImplementedError, match="Seq2SeqRegressor is not supported"):
        fastseq.to_onnx(Seq2SeqRegressor())
    with pytest.raises(TypeError, match="LogisticRegression"):
        fastseq.to_onnx(LogisticRegression())
    clf = fit(small(RNNClassifier), seqs(), np.array([0, 1] * 4))
    clf.model_.config["attention_heads"] = 3  # an option the export does not know
    with pytest.raises(NotImplementedError, match="attention_heads"):
        fastseq.to_onnx(clf)
    del clf.model_.config["attention_heads"]
    clf.model_.config["conv_filters"] = "auto"  # unresolved: the model has no conv layer
    with pytest.raises(NotImplementedError, match="convolution front end"):
        fastseq.to_onnx(clf)
    clf.model_.config["conv_filters"] = None
    clf.classes_ = np.array([(1, 2), "a"], dtype=object)
    with pytest.raises(NotImplementedError, match="class labels"):
        fastseq.to_onnx(clf)


def test_bad_opset_and_nonfinite_weights():
    clf = fit(small(RNNClassifier), seqs(), np.array([0, 1] * 4))
    with pytest.raises(ValueError, match="opset must be in"):
        fastseq.to_onnx(clf, opset=9)
    with pytest.raises(TypeError, match="opset"):
        fastseq.to_onnx(clf, opset="17")
    clf.model_.flat[0] = np.inf
    with pytest.raises(ValueError, match="non-finite"):
        fastseq.to_onnx(clf)


def test_import_fastseq_does_not_import_onnx():
    code = ("import sys, fastseq; assert 'onnx' not in sys.modules; "
            "f = fastseq.to_onnx; e = fastseq.onnx.encode; assert 'onnx' not in sys.modules; "
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=str(__import__("pathlib").Path(fastseq.__file__).parents[1]))
    assert out.stdout.strip() == "ok", out.stderr


# ----------------------------------------------------------------- skl2onnx
def test_skl2onnx_pipeline_classifier_and_regressor():
    skl2onnx = pytest.importorskip("skl2onnx")
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from fastseq.onnx import register_skl2onnx
    register_skl2onnx()
    rng = np.random.default_rng(5)
    X = (3.0 + 2.0 * rng.standard_normal((10, 7))).astype(np.float32)  # (N, T) univariate
    y = np.array(["lo", "hi"] * 5)
    pipe = make_pipeline(StandardScaler(), small(RNNClassifier, cell="gru", bidirectional=True))
    pipe.fit(X, y)
    _check_classifier_pipeline(skl2onnx, pipe, X)

    yr = rng.standard_normal((10, 2))
    pipe = make_pipeline(StandardScaler(), small(RNNRegressor, cell="lstm", pooling="mean"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        pipe.fit(X, yr)
    model = skl2onnx.to_onnx(pipe, X[:1])
    (pred,) = session(model).run(None, {model.graph.input[0].name: X})
    np.testing.assert_allclose(pred, pipe.predict(X), rtol=1e-6, atol=ATOL)

    yt = (X > 3.0).astype(np.int64)  # one label per step
    pipe = make_pipeline(StandardScaler(), small(SequenceTagger, cell="rnn", bidirectional=True))
    pipe.fit(X, yt)
    pipe[-1].model_.flat[...] *= np.float32(2.5)
    model = skl2onnx.to_onnx(pipe, X[:1])
    (proba,) = session(model).run(None, {model.graph.input[0].name: X})
    np.testing.assert_allclose(proba, np.stack(pipe.predict_proba(X)), rtol=0, atol=ATOL)


def _check_classifier_pipeline(skl2onnx, pipe, X):
    """A fitted pipeline ending in an RNNClassifier (weights scaled so that
    the outputs are far from uniform), exported by skl2onnx: ONNX Runtime's
    labels and probabilities are the pipeline's."""
    pipe[-1].model_.flat[...] *= np.float32(2.5)
    model = skl2onnx.to_onnx(pipe, X[:1], options={RNNClassifier: {"zipmap": False}})
    label, proba = session(model).run(None, {model.graph.input[0].name: X})
    np.testing.assert_allclose(proba, pipe.predict_proba(X), rtol=0, atol=ATOL)
    np.testing.assert_array_equal(label, pipe.predict(X))


def test_skl2onnx_refuses_token_estimators():
    skl2onnx = pytest.importorskip("skl2onnx")
    from fastseq.onnx import register_skl2onnx
    register_skl2onnx()
    clf = fit(small(RNNClassifier, embedding_dim=3), ["ab", "ba", "aab", "b"],
              np.array([0, 1, 0, 1]))
    with pytest.raises(NotImplementedError, match="embeds tokens"):
        skl2onnx.to_onnx(clf, np.zeros((1, 3), dtype=np.float32))


def test_bench_onnx_export_runs_one_tiny_case(monkeypatch, tmp_path, capsys):
    import json
    import os

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from bench import onnx_export

    monkeypatch.setattr(onnx_export, "CASES", [("gru", 4, 2, 5)])
    out = tmp_path / "r.json"
    onnx_export.main(["--threads", "1", "--repeats", "1", "--json", str(out)])
    row = json.loads(out.read_text())["rows"][0]
    assert row["max_abs_diff"] < ATOL and row["ort"] > 0 and row["fastseq"] > 0
    assert "CPU:" in capsys.readouterr().out


def test_skl2onnx_pipeline_with_conv_front_end():
    skl2onnx = pytest.importorskip("skl2onnx")
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from fastseq.onnx import register_skl2onnx
    register_skl2onnx()
    rng = np.random.default_rng(6)
    X = (1.0 + 2.0 * rng.standard_normal((10, 11))).astype(np.float32)  # (N, T) univariate
    y = np.array([0, 1] * 5)
    pipe = make_pipeline(StandardScaler(),
                         small(RNNClassifier, cell="lstm", pooling="mean", conv_filters=[4, 3],
                               conv_kernel_size=5, conv_pool=2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        pipe.fit(X, y)
    _check_classifier_pipeline(skl2onnx, pipe, X)

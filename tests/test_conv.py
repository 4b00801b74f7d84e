"""Temporal convolution front end: kernels against the naive reference, padded
batches against the per-sequence loop (NaN padding), gradients by central
differences, parity with torch.nn.Conv1d + ReLU + MaxPool1d, the estimators'
conv_* parameters, persistence and bad input."""

import pickle
import warnings

import numpy as np
import pytest

import fastseq
from fastseq.kernels.conv import (conv_pack, conv_pack_weight, conv_relu_pool,
                                  conv_relu_pool_backward, conv_unpack, strips)
from fastseq.network.conv import ConvStack
from conftest import central_difference, ragged_batch
from reference import conv1d_preactivation, conv1d_relu_pool

EPS = 1e-6


def _stack_reference(cs, x):
    """One sequence (L, F) through every layer of ``cs`` with the reference."""
    for l in range(cs.num_layers):
        x = conv1d_relu_pool(x, np.asarray(cs.params[f"weight_l{l}"], np.float64),
                             np.asarray(cs.params[f"bias_l{l}"], np.float64), cs.pool)
    return x


# ----------------------------------------------------------------- kernels
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("K,pool", [(1, 1), (3, 1), (3, 2), (5, 3), (7, 2)])
def test_kernels_match_reference(rng, dtype, K, pool):
    B, T, F, C = 5, 11, 3, 4
    X, lengths = ragged_batch(rng, B, T, F, lengths=[11, 1 * pool, 6, 9, 2 * pool + 1])
    cs = ConvStack(F, C, K, pool, dtype=dtype, random_state=1)
    out, out_len, _ = cs.forward(X, lengths)
    assert out.shape == (B, T // pool, C) and out.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(out_len, np.asarray(lengths) // pool)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == "float64" else dict(rtol=1e-4, atol=1e-5)
    for b in range(B):
        ref = _stack_reference(cs, X[b, :lengths[b]])
        np.testing.assert_allclose(out[b, :out_len[b]], ref, **tol)
        assert np.all(out[b, out_len[b]:] == 0.0)


def _run_conv_forward(fwd, X, lengths, W, bias, K, pool, b0, b1, keep):
    """``fwd`` (a compiled :func:`conv_forward`) on sequences b0..b1-1 into
    NaN-filled outputs (so that any entry it should write and does not shows)."""
    import fastseq.kernels.conv as kc
    B, T, F = X.shape
    C = W.shape[0]
    sw = kc.STRIP_BYTES // X.itemsize
    wp = np.full((strips(C, X.itemsize), K * F, sw), np.nan, dtype=X.dtype)
    conv_pack_weight(W.transpose(0, 2, 1).reshape(C, K * F).copy(), wp)
    out = np.full((B, T // pool, C), np.nan, dtype=X.dtype)
    arg = np.full(out.shape, -1, dtype=np.int64) if keep else np.empty((0, 0, 0), np.int64)
    rows = max(1, kc.CHUNK_ROWS // pool) * pool
    work = np.full((rows, wp.shape[0] * sw), np.nan, dtype=X.dtype)
    edge = np.full(max(1, K - 1) * K * F, np.nan, dtype=X.dtype)
    fwd(X, np.asarray(lengths, np.int64), K, wp, bias, pool, b0, b1, work, edge, out, arg)
    return out, arg


@pytest.mark.parametrize("vector_bytes,dtype", [(None, "float32"), (None, "float64"),
                                                (32, "float64"), (16, "float64")])
def test_conv_forward_kernel_matches_reference(rng, vector_bytes, dtype):
    """The fused kernel (overlapping views of x for the interior steps, packed
    edges, register tiles over every strip group and k-block, pooling per
    chunk) against the naive reference, at the package's vector width and the
    narrower ones: NaN padding never read, sequences shorter than the window,
    chunks of more than CHUNK_ROWS steps, filters that fill no strip, 5 strips
    (a group of 4 and one), K*F over one k-block; the argmax steps match a
    naive argmax on the reference's pre-activations."""
    import fastseq.kernels.conv as kc
    from fastseq._config import JIT
    from numba import njit
    fwd = (kc.conv_forward if vector_bytes is None
           else njit(**{**JIT, "cache": False})(kc._conv_forward_for(vector_bytes)))
    dt = np.dtype(dtype)
    sw = kc.STRIP_BYTES // dt.itemsize
    tol = dict(rtol=1e-12, atol=1e-12) if dt == np.float64 else dict(rtol=1e-4, atol=1e-5)
    for (T, F, C, K, pool, lengths) in [
            (kc.CHUNK_ROWS * 2 + 37, 3, 2 * sw + 3, 5, 3, [kc.CHUNK_ROWS * 2 + 37, 3, 5, 130, 6]),
            (11, 1, 5 * sw, 7, 1, [11, 1, 2, 6, 7]),
            (9, 21, 3, 7, 2, [9, 2, 4, 7, 8]),  # K*F = 147: two k-blocks
            (6, 2, 4 * sw + 1, 1, 2, [6, 2, 5, 3, 4])]:
        X, L = ragged_batch(rng, len(lengths), T, F, lengths=lengths)
        X = X.astype(dt)
        W = rng.standard_normal((C, F, K)).astype(dt)
        bias = rng.standard_normal(C).astype(dt)
        for keep in (False, True):
            out, arg = _run_conv_forward(fwd, X, L, W, bias, K, pool, 1, len(L), keep)
            assert np.all(np.isnan(out[0])) and np.all(arg[:1] == -1)  # b0 = 1
            for b in range(1, len(L)):
                L2 = L[b] // pool
                ref = conv1d_relu_pool(X[b, :L[b]], W, bias, pool)
                np.testing.assert_allclose(out[b, :L2], ref, **tol)
                assert np.all(out[b, L2:] == 0.0)
                if keep:  # the step of each maximum (up to rounding on near-ties)
                    pre = conv1d_preactivation(X[b, :L[b]], W)
                    win = pre[:L2 * pool].reshape(L2, pool, C)
                    a = arg[b, :L2]
                    assert np.all((a >= np.arange(L2)[:, None] * pool)
                                  & (a < np.arange(1, L2 + 1)[:, None] * pool))
                    np.testing.assert_allclose(np.take_along_axis(pre, a, axis=0),
                                               win.max(axis=1), **tol)
                    assert np.all(arg[b, L2:] == -1)


def test_pack_and_unpack_are_adjoint(rng):
    """<pack(x), c> == <x, unpack(c)> over valid steps: col2im is the exact
    transpose of im2col, and neither touches padding."""
    B, T, F, K = 4, 9, 3, 5
    X, lengths = ragged_batch(rng, B, T, F, lengths=[9, 2, 5, 1])
    lengths = lengths.astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    N = int(lengths.sum())
    cols = np.full((N, K * F), np.nan)
    conv_pack(X, lengths, offsets, K, cols)
    assert np.all(np.isfinite(cols))
    c = rng.standard_normal(cols.shape)
    dx = np.full((B, T, F), np.nan)
    conv_unpack(c, lengths, offsets, K, dx)
    valid = np.arange(T)[None, :] < lengths[:, None]
    assert np.all(dx[~valid] == 0.0)
    np.testing.assert_allclose(np.sum(cols * c), np.sum(X[valid] * dx[valid]), rtol=1e-12)


def test_relu_pool_backward_routes_to_argmax(rng):
    B, T, C, pool = 2, 7, 3, 3
    lengths = np.array([7, 4], dtype=np.int64)
    offsets = np.array([0, 7], dtype=np.int64)
    z = rng.standard_normal((11, C))
    bias = rng.standard_normal(C)
    out = np.empty((B, T // pool, C))
    arg = np.empty(out.shape, dtype=np.int64)
    conv_relu_pool(z, bias, lengths, offsets, pool, out, arg)
    d_out = rng.standard_normal(out.shape)
    d_out[1, 1:] = np.nan  # past sequence 1's pooled length (1): never read
    dz = np.full(z.shape, np.nan)
    conv_relu_pool_backward(d_out, out, arg, lengths // pool, offsets, dz)
    expect = np.zeros_like(z)
    for b in range(B):
        for t in range(lengths[b] // pool):
            for c in range(C):
                rows = offsets[b] + t * pool + np.arange(pool)
                r = rows[np.argmax(z[rows, c])]
                if z[r, c] + bias[c] > 0:
                    expect[r, c] = d_out[b, t, c]
    np.testing.assert_array_equal(dz, expect)


# ----------------------------------------------------------------- padded batch
def test_padded_batch_equals_per_sequence_loop(rng):
    B, T, F = 6, 17, 4
    X, lengths = ragged_batch(rng, B, T, F, lengths=[17, 4, 9, 13, 5, 16])
    cs = ConvStack(F, (5, 3), 3, 2, dtype="float64", random_state=2)
    out, out_len, cache = cs.forward(X, lengths)
    d_out = rng.standard_normal(out.shape)
    for b in range(B):
        d_out[b, out_len[b]:] = np.nan  # gradient at padded steps is never read
    dX, grad = cs.backward(d_out, cache)
    assert np.all(np.isfinite(dX)) and np.all(np.isfinite(grad))
    grad_sum = np.zeros_like(grad)
    for b in range(B):
        o1, l1, c1 = cs.forward(X[b:b + 1, :lengths[b]], None)
        np.testing.assert_allclose(out[b, :out_len[b]], o1[0], rtol=1e-13, atol=1e-14)
        assert l1[0] == out_len[b]
        dx1, g1 = cs.backward(d_out[b:b + 1, :out_len[b]], c1)
        np.testing.assert_allclose(dX[b, :lengths[b]], dx1[0], rtol=1e-12, atol=1e-13)
        assert np.all(dX[b, lengths[b]:] == 0.0)
        grad_sum += g1
    np.testing.assert_allclose(grad, grad_sum, rtol=1e-11, atol=1e-12)


# ----------------------------------------------------------------- gradients
@pytest.mark.parametrize("filters,K,pool", [((4,), 3, 1), ((4, 3), 3, 2), ((3,), 5, 3)])
def test_gradcheck(rng, filters, K, pool):
    B, T, F = 3, 13, 2
    X, lengths = ragged_batch(rng, B, T, F, lengths=[13, 9, 7])
    cs = ConvStack(F, filters, K, pool, dtype="float64", random_state=3)
    out, _, cache = cs.forward(X, lengths)
    R = rng.standard_normal(out.shape)
    dX, grad = cs.backward(R, cache)

    def loss():
        o, _, _ = cs.forward(X, lengths, need_grad=False)
        return np.sum(o * R)

    def numeric(arr, idx):
        return central_difference(loss, arr, idx, EPS)

    # every parameter (weights and biases of every layer)
    num = np.array([numeric(cs.flat, i) for i in range(cs.n_params)])
    np.testing.assert_allclose(grad, num, rtol=1e-5, atol=1e-7)
    # input: every valid entry
    for b in range(B):
        for t in range(lengths[b]):
            for f in range(F):
                np.testing.assert_allclose(dX[b, t, f], numeric(X, (b, t, f)), rtol=1e-5, atol=1e-7)


def test_backward_without_input_grad_gives_same_params_grad(rng):
    X, lengths = ragged_batch(rng, 3, 10, 2, lengths=[10, 4, 8])
    cs = ConvStack(2, (3, 2), 3, 2, dtype="float64", random_state=4)
    out, _, cache = cs.forward(X, lengths)
    R = rng.standard_normal(out.shape)
    _, g1 = cs.backward(R, cache)
    dX, g2 = cs.backward(R, cache, need_input_grad=False)
    assert dX is None
    np.testing.assert_array_equal(g1, g2)


# ----------------------------------------------------------------- PyTorch parity
def _torch_stack(cs, torch):
    layers = []
    for l, C in enumerate(cs.filters):
        F = cs._in_sizes[l]
        conv = torch.nn.Conv1d(F, C, cs.kernel_size, padding=cs.kernel_size // 2,
                               dtype=torch.float64)
        with torch.no_grad():
            conv.weight.copy_(torch.tensor(np.array(cs.params[f"weight_l{l}"], np.float64)))
            conv.bias.copy_(torch.tensor(np.array(cs.params[f"bias_l{l}"], np.float64)))
        layers += [conv, torch.nn.ReLU()]
        if cs.pool > 1:
            layers.append(torch.nn.MaxPool1d(cs.pool))
    return torch.nn.Sequential(*layers)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("filters,K,pool", [((5,), 3, 1), ((6, 4), 5, 2), ((3,), 7, 3)])
def test_torch_parity_ragged(rng, dtype, filters, K, pool):
    """Each sequence alone through torch's Conv1d + ReLU + MaxPool1d (weights
    copied) equals its rows of our padded, NaN-filled batch: outputs, input
    gradient and every weight gradient (summed over the sequences)."""
    torch = pytest.importorskip("torch")
    B, T, F = 5, 23, 3
    X, lengths = ragged_batch(rng, B, T, F, lengths=[23, 9, 17, pool ** len(filters), 12])
    cs = ConvStack(F, filters, K, pool, dtype=dtype, random_state=5)
    out, out_len, cache = cs.forward(X, lengths)
    R = rng.standard_normal(out.shape)
    dX, grad = cs.backward(R, cache)
    net = _torch_stack(cs, torch)
    g_ref = {name: np.zeros(tuple(p.shape)) for name, p in net.named_parameters()}
    tol = dict(rtol=1e-10, atol=1e-11) if dtype == "float64" else dict(rtol=2e-4, atol=2e-5)
    for b in range(B):
        L = lengths[b]
        xt = torch.tensor(X[b, :L].astype(dtype).astype(np.float64).T[None], requires_grad=True)
        y = net(xt)[0].T  # (L2, C)
        assert y.shape[0] == out_len[b]
        np.testing.assert_allclose(out[b, :out_len[b]], y.detach().numpy(), **tol)
        net.zero_grad()
        (y * torch.tensor(R[b, :out_len[b]])).sum().backward()
        np.testing.assert_allclose(dX[b, :L], xt.grad[0].T.numpy(), **tol)
        for name, p in net.named_parameters():
            g_ref[name] += p.grad.numpy()
    g = cs._views(grad)
    convs = [i for i, m in enumerate(net) if isinstance(m, torch.nn.Conv1d)]
    for l, i in enumerate(convs):
        np.testing.assert_allclose(g[f"weight_l{l}"], g_ref[f"{i}.weight"], **tol)
        np.testing.assert_allclose(g[f"bias_l{l}"], g_ref[f"{i}.bias"], **tol)


# ----------------------------------------------------------------- layer API
def test_params_are_views_in_torch_layout():
    cs = ConvStack(3, (4, 2), 5, 1, dtype="float64", random_state=0)
    assert cs.params["weight_l0"].shape == (4, 3, 5)
    assert cs.params["weight_l1"].shape == (2, 4, 5)
    assert cs.n_params == 4 * 3 * 5 + 4 + 2 * 4 * 5 + 2
    big = np.zeros(cs.n_params + 3)
    cs.bind(big[2:2 + cs.n_params])
    cs.params["weight_l0"][1, 2, 3] = 7.0
    assert 7.0 in big
    cs2 = pickle.loads(pickle.dumps(cs))
    assert cs2.params["weight_l0"][1, 2, 3] == 7.0
    cs2.params["bias_l1"][0] = 3.0
    assert cs2.flat[cs2.n_params - 2] == 3.0
    assert cs.output_lengths([9, 8, 3]).tolist() == [9, 8, 3]
    cs3 = ConvStack(3, (4, 2), 3, 2)
    assert cs3.output_lengths([9, 8, 4]).tolist() == [2, 2, 1] and cs3.min_length() == 4
    assert cs3.output_steps(9) == 2


@pytest.mark.parametrize("kwargs,match", [
    (dict(filters=0), "filters must be >= 1"),
    (dict(filters=(3, 0)), r"filters\[1\] must be >= 1"),
    (dict(filters=()), "non-empty"),
    (dict(filters=2.5), "filters must be an integer"),
    (dict(filters=3, kernel_size=4), "kernel_size must be odd"),
    (dict(filters=3, kernel_size=0), "kernel_size must be >= 1"),
    (dict(filters=3, pool=0), "pool must be >= 1"),
])
def test_layer_bad_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        ConvStack(2, **kwargs)


def test_layer_bad_input(rng):
    cs = ConvStack(2, (3, 3), 3, 2)
    X = rng.standard_normal((2, 8, 2))
    with pytest.raises(ValueError, match=r"lengths\[1\] = 3: sequence 1 is too short"):
        cs.forward(X, [8, 3])
    with pytest.raises(ValueError, match="lengths must lie in 1..8"):
        cs.forward(X, [9, 8])
    with pytest.raises(ValueError, match="X must have shape"):
        cs.forward(X[..., :1], [8, 8])
    out, _, cache = cs.forward(X, [8, 4])
    with pytest.raises(ValueError, match="d_out must have shape"):
        cs.backward(np.zeros((2, 3, 3)), cache)
    with pytest.raises(RuntimeError, match="needs a forward"):
        cs.backward(out, None)


# ----------------------------------------------------------------- estimators
def _easy_task(rng, n=80, F=2, lo=16, hi=40):
    """Class = sign of the mean of feature 0 (shifted by +-1.5): clearly separable."""
    y = np.arange(n) % 2
    X = []
    for label in y:
        x = rng.standard_normal((int(rng.integers(lo, hi)), F)).astype(np.float32)
        x[:, 0] += 1.5 if label else -1.5
        X.append(x)
    return X, y


def _fit(est, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return est.fit(X, y)


def test_classifier_with_conv_front_end(rng, tmp_path):
    X, y = _easy_task(rng)
    clf = fastseq.RNNClassifier(cell="gru", hidden_size=8, conv_filters=(6, 5), conv_kernel_size=3,
                                conv_pool=2, max_iter=15, learning_rate=1e-2, batch_size=16,
                                random_state=0, n_jobs=1)
    _fit(clf, X, y)
    model = clf.model_
    assert model.conv is not None and model.conv.filters == (6, 5)
    assert model.rnn.input_size == 5
    assert model.output_lengths([17, 8, 4]).tolist() == [4, 2, 1]
    assert clf.loss_curve_[-1] < clf.loss_curve_[0]
    P = clf.predict_proba(X)
    assert P.shape == (len(X), 2) and np.allclose(P.sum(axis=1), 1.0)
    assert set(clf.predict(X)) <= {0, 1}
    # a padded batch predicts what each sequence alone predicts
    one = np.concatenate([clf.predict_proba([x]) for x in X[:5]])
    np.testing.assert_allclose(P[:5], one, rtol=1e-5, atol=1e-6)
    lines = []
    clf.summary(print_fn=lines.append)
    text = lines[0]
    assert "conv_1 (Conv1D(k=3)+ReLU+MaxPool(2))" in text and "(None, T/4, 5)" in text
    # persistence: pickle and save/load give identical predictions
    clf2 = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(clf2.predict_proba(X), P)
    path = tmp_path / "conv.npz"
    clf.save(path)
    clf3 = fastseq.load(path)
    np.testing.assert_array_equal(clf3.predict_proba(X), P)
    assert list(clf3.conv_filters) == [6, 5] and clf3.conv_pool == 2
    assert clf3.model_.conv.filters == (6, 5)


def test_conv_learns_easy_task(rng):
    """An easy, clearly separable task (margin 3 standard deviations in the
    mean of a feature over >= 16 steps): the hybrid fits it."""
    X, y = _easy_task(rng, n=120)
    clf = fastseq.RNNClassifier(cell="lstm", hidden_size=8, conv_filters=8, conv_pool=2,
                                pooling="mean", max_iter=40, learning_rate=1e-2, batch_size=16,
                                random_state=0, n_jobs=1)
    _fit(clf, X, y)
    assert clf.score(X, y) >= 0.9


def test_regressor_and_tokens_with_conv(rng):
    X, y = _easy_task(rng, n=40)
    reg = fastseq.RNNRegressor(hidden_size=6, conv_filters=4, conv_kernel_size=5, max_iter=2,
                               random_state=0, dtype="float64", n_jobs=1)
    _fit(reg, X, y.astype(float))
    assert reg.predict(X).shape == (40,)
    assert reg.model_.flat.dtype == np.float64
    docs = ["abcabcabc", "cbacbacbacba", "aaaabbbb", "ccccaaaabbbb"] * 5
    lab = [0, 1, 0, 1] * 5
    tok = fastseq.RNNClassifier(embedding_dim=4, hidden_size=6, conv_filters=(5,), conv_pool=2,
                                max_iter=2, random_state=0, n_jobs=1)
    _fit(tok, docs, lab)
    assert tok.model_.conv.input_size == 4
    assert tok.predict(docs).shape == (20,)


def test_tagger_with_conv(rng):
    X, y = _easy_task(rng, n=20)
    ys = [np.full(len(x), label) for x, label in zip(X, y)]
    tag = fastseq.SequenceTagger(hidden_size=6, conv_filters=4, max_iter=2, random_state=0,
                                 n_jobs=1)
    _fit(tag, X, ys)
    pred = tag.predict(X)
    assert [len(p) for p in pred] == [len(x) for x in X]
    with pytest.raises(ValueError, match="conv_pool must be 1"):
        fastseq.SequenceTagger(conv_filters=4, conv_pool=2, max_iter=1).fit(X, ys)


def test_sequence_outputs_follow_pooled_lengths(rng):
    """Per-step outputs (the CTC estimator's use) come one per pooled step."""
    X, y = _easy_task(rng, n=10)
    clf = _fit(fastseq.RNNClassifier(hidden_size=4, conv_filters=3, conv_pool=3, max_iter=1,
                                     random_state=0, n_jobs=1), X, y)
    model = clf.model_
    model.config["pooling"] = "sequence"  # same weights, per-step readout
    lengths = np.array([len(x) for x in X[:4]])
    Xp = np.zeros((4, lengths.max(), 2), np.float32)
    for i, x in enumerate(X[:4]):
        Xp[i, :len(x)] = x
    rows = model.predict_batch(Xp, lengths)
    assert [len(r) for r in rows] == (lengths // 3).tolist()
    _, cache = model._forward(Xp, lengths, training=False, need_grad=False)
    assert cache["lengths"].tolist() == (lengths // 3).tolist()
    assert cache["in_lengths"].tolist() == lengths.tolist()


def test_model_without_conv_keys_still_loads():
    """Configs saved before the front end existed (no conv_* keys) mean none."""
    from fastseq.estimators._model import SequenceModel
    cfg = dict(n_features=2, vocab_size=0, embedding_dim=None, cell="rnn", hidden_size=3,
               num_layers=1, bidirectional=False, nonlinearity="tanh", dropout=0.0,
               recurrent_dropout=0.0, pooling="last", n_outputs=2, loss="softmax",
               dtype="float64")
    m = SequenceModel(cfg, np.random.default_rng(0))
    assert m.conv is None and m.min_length() == 1


@pytest.mark.parametrize("params,match", [
    (dict(conv_filters=0), "conv_filters"),
    (dict(conv_filters=(4, 0)), r"conv_filters\[1\] must be >= 1"),
    (dict(conv_filters=()), "conv_filters must be an int >= 1 or a non-empty tuple"),
    (dict(conv_filters=(4, "a")), r"conv_filters\[1\] must be an integer"),
    (dict(conv_filters=4, conv_kernel_size=4), "conv_kernel_size must be odd"),
    (dict(conv_kernel_size=2), "conv_kernel_size must be odd"),
    (dict(conv_filters=4, conv_kernel_size=0), "conv_kernel_size"),
    (dict(conv_filters=4, conv_pool=0), "conv_pool"),
])
def test_estimator_bad_conv_params(rng, params, match):
    X, y = _easy_task(rng, n=8)
    with pytest.raises((ValueError, TypeError), match=match):
        fastseq.RNNClassifier(max_iter=1, **params).fit(X, y)


def test_estimator_sequence_too_short_for_pooling(rng):
    X, y = _easy_task(rng, n=8, lo=10, hi=12)
    X[3] = X[3][:3]
    clf = fastseq.RNNClassifier(hidden_size=4, conv_filters=(3, 3), conv_pool=2, max_iter=1,
                                n_jobs=1)
    with pytest.raises(ValueError, match=r"X\[3\] has 3 steps.*at least 4 steps"):
        clf.fit(X, y)
    X[3] = np.zeros((10, 2), np.float32)
    _fit(clf, X, y)
    with pytest.raises(ValueError, match=r"X\[1\] has 2 steps.*at least 4 steps"):
        clf.predict([X[0], X[0][:2]])


def test_blocks_and_threads_give_the_same_result(rng, monkeypatch):
    """Many small blocks of sequences, on two threads, give what one block
    gives (forward exactly, both layers in one split; gradients up to the
    order of the block sums)."""
    import fastseq.network.conv as conv_mod
    from fastseq._threads import limit
    X, lengths = ragged_batch(rng, 7, 15, 3, lengths=[15, 4, 9, 12, 6, 15, 8])
    cs = ConvStack(3, (4, 5), 3, 2, dtype="float64", random_state=6)
    out, ol, cache = cs.forward(X, lengths)
    R = rng.standard_normal(out.shape)
    dX, grad = cs.backward(R, cache)
    assert len(cache[0][4]) == 1
    monkeypatch.setattr(conv_mod, "BLOCK_BYTES", 8)
    monkeypatch.setattr(conv_mod, "MIN_SPLIT_WORK", 0)
    from fastseq import _plan
    monkeypatch.setattr(_plan.current(), "split_min_work", 1)
    monkeypatch.setattr(_plan.current(), "min_split_rows", 1)
    splits = []
    real = conv_mod._on_pool
    monkeypatch.setattr(conv_mod, "_on_pool", lambda b, fn: splits.append(len(b)) or real(b, fn))
    with limit(2):
        out2, ol2, cache2 = cs.forward(X, lengths)
        assert splits == [2]          # one hand-over for both layers: each thread its sequences
        dX2, grad2 = cs.backward(R, cache2)
    assert len(cache2[0][4]) == 7
    np.testing.assert_array_equal(out2, out)
    np.testing.assert_array_equal(ol2, ol)
    np.testing.assert_allclose(dX2, dX, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(grad2, grad, rtol=1e-12, atol=1e-13)


def test_seq2seq_with_conv_front_end(rng, tmp_path):
    """The Seq2Seq encoder behind a conv front end: gradient by central
    differences through conv, encoder and attention; estimators fit, predict,
    pickle and save/load."""
    from fastseq.network.seq2seq import Seq2Seq
    m = Seq2Seq(3, outputs="vectors", input_size=2, cell="gru", hidden_size=4,
                attention="dot", conv_filters=(3,), conv_pool=2, dtype="float64",
                random_state=0)
    X, lengths = ragged_batch(rng, 3, 10, 2, lengths=[10, 5, 8])
    Y = rng.standard_normal((3, 4, 3))
    y_len = np.array([4, 2, 3])
    m.forward_loss(X, lengths, Y, y_len)
    assert np.array_equal(m._cache["src_len"], [5, 2, 4])
    grad = m.backward().copy()
    names = [name for name, _ in m._layout]
    start = sum(int(np.prod(shape)) for _, shape in m._layout[:names.index("conv")])
    idx = np.concatenate([start + np.arange(m.params["conv"].size),  # every conv parameter
                          rng.choice(m.n_params, 10, replace=False)])
    for i in idx:
        num = central_difference(lambda: m.forward_loss(X, lengths, Y, y_len), m.flat, i, EPS)
        np.testing.assert_allclose(grad[i], num, rtol=1e-5, atol=1e-8)
    Xs = [rng.standard_normal((int(rng.integers(6, 12)), 2)) for _ in range(12)]
    ys = rng.standard_normal((12, 3, 1))
    reg = fastseq.Seq2SeqRegressor(hidden_size=4, conv_filters=3, conv_pool=2, max_iter=2,
                                   random_state=0, n_jobs=1)
    _fit(reg, Xs, ys)
    assert reg.model_.conv is not None and reg.predict(Xs).shape == (12, 3, 1)
    reg.save(tmp_path / "s2s.npz")
    np.testing.assert_array_equal(fastseq.load(tmp_path / "s2s.npz").predict(Xs), reg.predict(Xs))
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(reg)).predict(Xs), reg.predict(Xs))
    with pytest.raises(ValueError, match=r"X\[0\] has 1 steps"):
        reg.predict([Xs[0][:1]])
    docs, tgt = ["abcdef", "fedcba", "aabbcc", "ccbbaa"] * 3, ["ab", "ba", "ac", "ca"] * 3
    clf = fastseq.Seq2SeqClassifier(hidden_size=6, embedding_dim=4, conv_filters=(4, 4),
                                    max_iter=2, random_state=0, n_jobs=1)
    _fit(clf, docs, tgt)
    assert clf.model_.conv.input_size == 4 and len(clf.predict(docs)) == 12
    lines = []
    clf.summary(print_fn=lines.append)
    assert "conv_2 (Conv1D(k=3)+ReLU)" in lines[0]

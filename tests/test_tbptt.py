"""Truncated BPTT (``tbptt_steps``): each window's gradient is that of the
window alone with the carried state as a constant h0, computed here by an
independent path (a separate ``Recurrent`` on the window, a numpy head and
loss written out) and checked by central differences; training takes one
step per window; a window as long as the batch is plain BPTT bit for bit."""

import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils._param_validation import InvalidParameterError

from fastseq import RNNClassifier, RNNRegressor, SequenceTagger
from fastseq.estimators._stream import TruncatedBatch
from fastseq.nn import Recurrent
from conftest import central_difference

#: lengths of the ragged test batch: with windows of 3 steps, sequences end in
#: windows 0, 0, 1, 3, 3 (window 2 carries no many-to-one loss), and the
#: later windows hold fewer sequences
LENGTHS = [11, 10, 4, 2, 1]
K = 3


def _data(seed=0, F=2):
    rng = np.random.default_rng(seed)
    X = [rng.normal(size=(T, F)) for T in LENGTHS]
    y = np.array([0, 1, 0, 1, 1])
    tags = [rng.integers(0, 3, size=T) for T in LENGTHS]
    tags[0][:3] = [0, 1, 2]
    return X, y, tags


def _fitted(pooling, cell, tagger=False, **kw):
    X, y, tags = _data()
    params = dict(cell=cell, hidden_size=3, num_layers=2, dtype="float64", max_iter=1,
                  random_state=0, n_jobs=1, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        if tagger:
            est = SequenceTagger(**params).fit(X, tags)
            data = est._prepare_fit(X, tags, reset=False)
        else:
            est = RNNClassifier(pooling=pooling, **params).fit(X, y)
            data = est._prepare_fit(X, y, reset=False)
    return est, data.batch(np.arange(len(X)))


# ------------------------------------------------------- independent path
class Reference:
    """The model's window loss written out: a separate float64 Recurrent
    (weights copied), ``z = feat W^T + b``, mean softmax cross-entropy."""

    def __init__(self, model):
        c = model.config
        self.cell, self.pooling, self.L, self.H = c["cell"], c["pooling"], c["num_layers"], c["hidden_size"]
        self.rnn = Recurrent(c["cell"], c["n_features"], self.H, self.L, nonlinearity=c["nonlinearity"],
                             dtype="float64", n_jobs=1)
        self.V = c["n_outputs"]
        self.theta = model.flat.copy()  # [rnn | head W (V, H) | head b (V,)], the model's layout
        self.n_rnn = self.rnn.n_params
        self.bind()

    def bind(self):
        self.rnn.flat[...] = self.theta[:self.n_rnn]
        self.W = self.theta[self.n_rnn:self.n_rnn + self.V * self.H].reshape(self.V, self.H)
        self.b = self.theta[self.n_rnn + self.V * self.H:]

    def run(self, X, lens, h0, c0):
        res = self.rnn.forward(X, lens, h0=(h0, c0) if self.cell == "lstm" else h0)
        out, hn = res
        h_n, c_n = hn if self.cell == "lstm" else (hn, None)
        return out, h_n, c_n

    def carried(self, X, lengths, s):
        """State (and running sum / max) of the rows still running at step s."""
        idx = np.flatnonzero(np.asarray(lengths) > s)
        b = len(idx)
        h = np.zeros((self.L, b, self.H))
        c = np.zeros((self.L, b, self.H))
        pool_sum, pool_max = np.zeros((b, self.H)), np.full((b, self.H), -np.inf)
        if s > 0:
            Xs = np.stack([X[i][:s] for i in idx])
            out, h, c2 = self.run(Xs, np.full(b, s), None, None)
            c = c2 if c2 is not None else c
            pool_sum, pool_max = out.sum(axis=1), out.max(axis=1)
        return idx, h, c, pool_sum, pool_max

    def window(self, X, lengths, s, e, y, carried, need_grad=True):
        """Loss of window [s, e) from the carried state, and its gradient
        (rnn, W, b) as one vector; the loss alone when not need_grad."""
        idx, h0, c0, pool_sum, pool_max = carried
        full = np.asarray(lengths)[idx]
        lens = np.minimum(full - s, e - s)
        t = lens.max()
        Xw = np.zeros((len(idx), t, X[0].shape[1]))
        for j, i in enumerate(idx):
            Xw[j, :lens[j]] = X[i][s:s + lens[j]]
        out, h_n, _ = self.run(Xw, lens, h0, c0)
        valid = np.arange(t)[None, :] < lens[:, None]
        ends = np.flatnonzero(full <= e)
        if self.pooling == "sequence":
            feat = out[valid]
            target = np.concatenate([y[i][s:s + lens[j]] for j, i in enumerate(idx)])
        else:
            target = np.asarray(y)[idx[ends]]
            if self.pooling == "last":
                feat = h_n[-1][ends]
            elif self.pooling == "mean":
                feat = (pool_sum[ends] + out[ends].sum(axis=1)) / full[ends, None]
            else:
                wmax = np.where(valid[:, :, None], out, -np.inf).max(axis=1)
                feat = np.maximum(pool_max, wmax)[ends]
        z = feat @ self.W.T + self.b
        z = z - z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        N = len(target)
        loss = -logp[np.arange(N), target].sum() / N
        if not need_grad:
            return loss
        dz = np.exp(logp)
        dz[np.arange(N), target] -= 1
        dz /= N
        dW, db, dfeat = dz.T @ feat, dz.sum(axis=0), dz @ self.W
        d_out = np.zeros_like(out)
        d_hn = np.zeros_like(h_n)
        if self.pooling == "sequence":
            d_out[valid] = dfeat
        elif self.pooling == "last":
            d_hn[-1, ends] = dfeat
        elif self.pooling == "mean":
            for r, j in enumerate(ends):
                d_out[j, :lens[j]] = dfeat[r] / full[j]
        else:
            for r, j in enumerate(ends):
                for u in range(self.H):
                    steps = out[j, :lens[j], u]
                    if steps.max() > pool_max[j, u]:  # the window holds the max
                        d_out[j, int(np.argmax(steps)), u] = dfeat[r, u]
        _, grads = self.rnn.backward(d_out, d_hn)
        flat = np.zeros(self.n_rnn)
        for name, g in grads.items():
            flat[self._offset(name)] = g.ravel()
        return loss, np.concatenate([flat, dW.ravel(), db])

    def _offset(self, name):
        pos = 0
        for n, shape in self.rnn._layout:
            size = int(np.prod(shape))
            if n == name:
                return slice(pos, pos + size)
            pos += size
        raise KeyError(name)


CASES = [(p, cell) for p in ("last", "mean", "max", "sequence") for cell in ("lstm", "gru", "rnn")]


@pytest.mark.parametrize("pooling, cell", CASES)
def test_window_gradient_equals_window_alone_with_fixed_h0(pooling, cell):
    est, batch = _fitted(pooling, cell, tagger=pooling == "sequence")
    X, y, tags = _data()
    target = tags if pooling == "sequence" else y
    model = est.model_
    ref = Reference(model)
    tb = TruncatedBatch(model, batch, K)
    grad = np.empty_like(model.flat)
    seen = 0
    for w in tb.windows():
        s = seen
        e = min(s + K, max(LENGTHS))
        seen = e
        carried = ref.carried(X, LENGTHS, s)
        np.testing.assert_array_equal(w.idx, carried[0])
        np.testing.assert_allclose(tb.h[:, w.idx], carried[1], rtol=1e-12, atol=1e-14)
        if w.n_loss == 0:
            assert pooling != "sequence" and s == 6  # only window 2 carries no loss
            tb.carry(w)
            continue
        loss = tb.loss_and_grad(w, grad)
        ref_loss, ref_grad = ref.window(X, LENGTHS, s, e, target, carried)
        assert loss == pytest.approx(ref_loss, rel=1e-12)
        np.testing.assert_allclose(grad, ref_grad, rtol=1e-9, atol=1e-12,
                                   err_msg=f"window [{s}, {e})")
    assert seen == max(LENGTHS)


@pytest.mark.parametrize("pooling, cell", [("last", "lstm"), ("mean", "gru"), ("max", "rnn"),
                                           ("sequence", "lstm")])
def test_reference_window_gradient_by_central_differences(pooling, cell):
    """The independent path's gradient is the derivative of the window's loss
    with h0 (and the earlier windows' pooled part) held fixed."""
    est, _ = _fitted(pooling, cell, tagger=pooling == "sequence")
    X, y, tags = _data()
    target = tags if pooling == "sequence" else y
    ref = Reference(est.model_)
    s, e = 9, 11  # the last window: two sequences, both end in it
    carried = ref.carried(X, LENGTHS, s)
    _, g = ref.window(X, LENGTHS, s, e, target, carried)
    eps = 1e-6
    num = np.empty_like(g)
    def loss():
        ref.bind()
        return ref.window(X, LENGTHS, s, e, target, carried, need_grad=False)
    for i in range(len(g)):
        num[i] = central_difference(loss, ref.theta, i, eps)
    ref.bind()
    np.testing.assert_allclose(g, num, rtol=1e-5, atol=1e-8)
    assert np.abs(g).max() > 1e-3  # not a vacuous comparison


@pytest.mark.parametrize("tagger", [False, True])
def test_training_takes_one_sgd_step_per_window(tagger):
    """An epoch of SGD (no momentum, no clipping) on one batch: the weights
    after it are the independent path's window steps, in order, each window
    run from the state the previous one left (with the weights of its
    time)."""
    X, y, tags = _data(seed=3)
    target = tags if tagger else y
    cls = SequenceTagger if tagger else RNNClassifier
    est = cls(cell="gru", hidden_size=3, num_layers=2, dtype="float64", optimizer="sgd",
              momentum=0.0, learning_rate=0.5, clip_norm=None, batch_size=len(X),
              shuffle=False, tbptt_steps=K, random_state=0, n_jobs=1)
    est.partial_fit(X, target, classes=[0, 1, 2] if tagger else [0, 1])
    w0 = est.model_.flat.copy()
    t0 = est.t_
    est.partial_fit(X, target)
    ref = Reference(est.model_)
    ref.theta[...] = w0
    ref.bind()
    lengths = np.asarray(LENGTHS)
    T = lengths.max()
    state = ref.carried(X, LENGTHS, 0)
    n_steps = 0
    for s in range(0, T, K):
        e = min(s + K, T)
        idx = state[0]
        if tagger or np.any(lengths[idx] <= e):
            _, g = ref.window(X, LENGTHS, s, e, target, state)
            new_theta = ref.theta - 0.5 * g
            n_steps += 1
        else:
            new_theta = ref.theta
        # the state moves on with the weights before the step
        full = lengths[idx]
        lens = np.minimum(full - s, e - s)
        Xw = np.zeros((len(idx), lens.max(), 2))
        for j, i in enumerate(idx):
            Xw[j, :lens[j]] = X[i][s:s + lens[j]]
        out, h_n, _ = ref.run(Xw, lens, state[1], state[2])
        keep = full > e
        state = (idx[keep], h_n[:, keep], state[2][:, keep], None, None)
        ref.theta[...] = new_theta
        ref.bind()
    assert est.t_ - t0 == n_steps == (4 if tagger else 3)
    np.testing.assert_allclose(est.model_.flat, ref.theta, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("cls, pooling", [(RNNClassifier, "last"), (RNNClassifier, "mean"),
                                          (RNNClassifier, "max"), (RNNRegressor, "last"),
                                          (SequenceTagger, "last")])
@pytest.mark.parametrize("steps", [11, 12, 1000])
def test_window_as_long_as_the_batch_is_plain_bptt(cls, pooling, steps):
    X, y, tags = _data(seed=1)
    target = tags if cls is SequenceTagger else (y if cls is RNNClassifier else y * 1.5 - 0.2)
    kw = dict(cell="lstm", hidden_size=4, dtype="float32", max_iter=3, batch_size=2,
              random_state=0, n_jobs=1, pooling=pooling)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        a = cls(**kw).fit(X, target)
        b = cls(tbptt_steps=steps, **kw).fit(X, target)
    np.testing.assert_array_equal(a.model_.flat, b.model_.flat)
    assert a.loss_curve_ == b.loss_curve_


def test_truncation_changes_training_and_counts_updates():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(12, 20, 2))
    y = np.arange(12) % 2
    tags = [np.arange(20) % 2 for _ in range(12)]
    kw = dict(cell="gru", hidden_size=4, max_iter=2, batch_size=4, random_state=0, n_jobs=1,
              shuffle=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        plain = RNNClassifier(**kw).fit(X, y)
        trunc = RNNClassifier(tbptt_steps=7, **kw).fit(X, y)
        tag = SequenceTagger(tbptt_steps=7, **kw).fit(X, tags)
        tok = RNNClassifier(tbptt_steps=3, embedding_dim=3, **kw).fit(
            ["abcdefgh", "bcdefgha", "cdefghab", "defghabc"] * 3, y)
    # many-to-one: only the last of 3 windows carries a loss -> 1 step per batch
    assert trunc.t_ == plain.t_ == 2 * 3
    assert not np.array_equal(trunc.model_.flat, plain.model_.flat)
    assert tag.t_ == 2 * 3 * 3  # the tagger: every window
    assert tok.t_ == 2 * 3 and np.all(np.isfinite(tok.model_.flat))
    assert np.all(np.isfinite(trunc.loss_curve_))


@pytest.mark.parametrize("value, exc", [(0, InvalidParameterError), (-2, InvalidParameterError),
                                        (1.5, InvalidParameterError), ("3", InvalidParameterError)])
def test_bad_tbptt_steps_names_the_argument(value, exc):
    X, y, _ = _data()
    with pytest.raises(exc, match="tbptt_steps"):
        RNNClassifier(tbptt_steps=value, max_iter=1).fit(X, y)


def test_tbptt_needs_a_unidirectional_encoder():
    X, y, _ = _data()
    with pytest.raises(ValueError, match="tbptt_steps needs a unidirectional encoder"):
        RNNClassifier(tbptt_steps=3, bidirectional=True, max_iter=1, hidden_size=2).fit(X, y)


def test_tbptt_steps_is_the_last_parameter_and_round_trips(tmp_path):
    import inspect
    import fastseq
    names = list(inspect.signature(RNNClassifier.__init__).parameters)
    assert names[-1] == "tbptt_steps"
    X, y, _ = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = RNNClassifier(tbptt_steps=4, hidden_size=2, max_iter=1, random_state=0).fit(X, y)
    est.save(tmp_path / "m.npz")
    assert fastseq.load(tmp_path / "m.npz").tbptt_steps == 4


@pytest.mark.parametrize("pooling", ["last", "mean", "max", "sequence"])
def test_one_window_path_equals_the_models_full_gradient(pooling):
    """The window code itself, with one window over the whole batch, gives
    the model's own loss and gradient (the training loop routes such batches
    to the model directly, bit for bit)."""
    est, batch = _fitted(pooling, "lstm", tagger=pooling == "sequence")
    model = est.model_
    g_full = np.empty_like(model.flat)
    loss_full = model.loss_and_grad(batch, g_full)
    tb = TruncatedBatch(model, batch, max(LENGTHS))
    (w,) = list(tb.windows())
    g = np.empty_like(model.flat)
    assert tb.loss_and_grad(w, g) == pytest.approx(loss_full, rel=1e-13)
    np.testing.assert_allclose(g, g_full, rtol=1e-11, atol=1e-14)

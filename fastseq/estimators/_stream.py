"""Truncated backpropagation through time and streaming inference.

Both run a :class:`~fastseq.estimators._model.SequenceModel` over a sequence
piece by piece, carrying the recurrent state (and, for the ``"mean"`` and
``"max"`` readouts, the running sum or maximum of the top layer's outputs)
from one piece to the next.

Truncated BPTT (``tbptt_steps=k``)
==================================

A mini-batch whose longest sequence has more than k steps is cut into
windows of k steps.  For each window, in order (PyTorch's idiom
``out, h = model(chunk, h.detach()); loss.backward(); opt.step()`` and Keras's
stateful layers):

1. the recurrent layer runs over the window from the state carried out of
   the previous window, taken as a constant initial state ``h0`` (no
   gradient flows into earlier windows);
2. the window's loss and its gradient are computed, and the optimiser takes
   one step (clipping, L2, non-finite checks as for a full batch);
3. the state at the end of the window (computed with the weights before the
   step) is carried into the next window.

What a window's loss is:

- ``SequenceTagger``: the mean cross-entropy over the valid steps of the
  window; every window updates;
- many-to-one (``RNNClassifier``, ``RNNRegressor``): a sequence's loss lies at
  its last step, so only the window where a sequence ends carries its loss
  (the mean over the sequences ending there); windows where none ends run
  forward only (no gradient, no update) and just carry the state.  With the
  ``"last"`` readout the gradient so reaches the last k steps of each
  sequence: that is truncated BPTT.  With ``"mean"`` / ``"max"`` the pooled
  value includes every step, but the earlier windows' part is a constant
  (the gradient reaches the outputs of the final window only).

Sequences of a ragged batch that ended in an earlier window keep their final
state and leave the later windows' sub-batches; a window's lengths are the
sequences' lengths clipped to it.  Recurrent dropout draws one mask per
sequence and window.  A batch of at most k steps is trained exactly as
without truncation (bit for bit), so ``tbptt_steps >= `` the longest
sequence is plain BPTT.  Truncation needs a unidirectional encoder (the
reverse direction reads each sequence from its end).

Streaming
=========

:func:`stream` feeds the next steps of a batch of streams and their
:class:`StreamState` and returns the model's raw outputs with the new state:
one row per stream (the readout as if each stream ended after this chunk)
for the many-to-one models, the new steps' outputs for a tagger.  Fed piece
by piece, the outputs equal ``predict`` on the whole sequences (up to the
rounding of a different summation order; bit for bit is not promised).
"""

import hashlib
import json

import numpy as np

from .._input import UNKNOWN_INDEX, _check_real

#: the model options this module implements (a model option it does not
#: know, set to a non-default value, makes truncation and streaming refuse)
_KNOWN_CONFIG = frozenset(("n_features", "vocab_size", "embedding_dim", "cell", "hidden_size",
                           "num_layers", "bidirectional", "nonlinearity", "dropout",
                           "recurrent_dropout", "pooling", "n_outputs", "loss", "dtype",
                           "conv_filters", "conv_kernel_size", "conv_pool"))


def check_supported(model, what):
    """ValueError when ``model`` has a part that cannot run piece by piece."""
    c = model.config
    if c["loss"] == "ctc":
        raise ValueError(f"{what} is not available for CTCClassifier: the CTC loss sums over "
                         "every alignment of a whole sequence, which no window holds")
    if c.get("conv_filters"):
        raise ValueError(f"{what} needs a model without a convolution front end: its \"same\" "
                         "padding reads steps ahead of each output and its pooling groups "
                         "steps; fit with conv_filters=None")
    if c["bidirectional"]:
        raise ValueError(f"{what} needs a unidirectional encoder (bidirectional=False): the "
                         "reverse direction reads each sequence from its end")
    for k, v in c.items():
        if k not in _KNOWN_CONFIG and v not in (None, 0, False, "", (), []):
            raise ValueError(f"{what} does not support the model option {k}={v!r}")


# ------------------------------------------------------------ carried state
def _zero_state(model, B):
    c = model.config
    L, H, dt = c["num_layers"], c["hidden_size"], model.flat.dtype
    h = np.zeros((L, B, H), dtype=dt)
    cs = np.zeros((L, B, H), dtype=dt) if c["cell"] == "lstm" else None
    pool = None
    if c["pooling"] == "mean":
        pool = np.zeros((B, H), dtype=np.float64)
    elif c["pooling"] == "max":
        pool = np.full((B, H), -np.inf, dtype=dt)
    return h, cs, pool


def _run_rnn(model, X, lens, idx, h, c, need_grad):
    """The recurrent layer over rows ``idx`` of a window ``X`` (b, t, ...)
    with lengths ``lens`` (b,) >= 1, from the carried states ``h``/``c``
    (updated in place for those rows).  Returns ``out`` (b, t, H)."""
    h0 = h[:, idx]
    inp = model.emb.forward(X) if model.emb is not None else X
    if c is not None:
        out, (h_n, c_n) = model.rnn.forward(inp, lens, h0=(h0, c[:, idx]), need_grad=need_grad)
        c[:, idx] = c_n
    else:
        out, h_n = model.rnn.forward(inp, lens, h0=h0, need_grad=need_grad)
    h[:, idx] = h_n
    return out, h_n


def _window_pool(out, lens):
    """Sum (float64) and maximum, argmax of ``out`` (b, t, H) over each row's
    valid steps."""
    valid = np.arange(out.shape[1])[None, :] < lens[:, None]
    masked = np.where(valid[:, :, None], out, -np.inf)
    arg = masked.argmax(axis=1)
    return valid, masked, arg


# ---------------------------------------------------------- truncated BPTT
class _Window:
    """One window ``[s, e)`` of a batch: the rows still running, their
    clipped lengths, inputs and targets.  ``size`` is the batch's (the L2
    term is scaled by it, as for a full batch)."""

    def __init__(self, batch, s, e, sequence):
        lengths = batch.lengths
        self.idx = np.flatnonzero(lengths > s)
        self.lens = np.minimum(lengths[self.idx] - s, e - s)
        t = int(self.lens.max())
        self.X = np.ascontiguousarray(batch.X[self.idx, s:s + t])
        self.full = lengths[self.idx]
        self.size = batch.size
        if sequence:
            self.ends = None
            self.y = batch.y[self.idx, s:s + t]
            self.n_loss = int(self.lens.sum())
        else:
            self.ends = np.flatnonzero(self.full <= e)
            self.y = batch.y[self.idx[self.ends]]
            self.n_loss = len(self.ends)


class TruncatedBatch:
    """Windows of ``steps`` steps over ``batch`` with the carried state (see
    the module docstring); :meth:`loss_and_grad` follows the model protocol's
    ``loss_and_grad(batch, grad)`` for a :class:`_Window`."""

    def __init__(self, model, batch, steps):
        self.model, self.batch, self.steps = model, batch, int(steps)
        self.h, self.c, self.pool = _zero_state(model, batch.size)
        self.sequence = model.config["pooling"] == "sequence"

    def windows(self):
        T = self.batch.X.shape[1]
        for s in range(0, T, self.steps):
            yield _Window(self.batch, s, min(s + self.steps, T), self.sequence)

    def carry(self, w):
        """Run a window that carries no loss forward only (its state)."""
        out, _ = _run_rnn(self.model, w.X, w.lens, w.idx, self.h, self.c, need_grad=False)
        self._update_pool(w, out)

    def _update_pool(self, w, out):
        """Fold the window's outputs into the running sum / max; returns
        (argmax over the window, mask of rows where the window's max wins)."""
        pooling = self.model.config["pooling"]
        if pooling == "mean":
            valid = np.arange(out.shape[1])[None, :] < w.lens[:, None]
            self.pool[w.idx] += np.where(valid[:, :, None], out, 0).sum(axis=1, dtype=np.float64)
        elif pooling == "max":
            _, masked, arg = _window_pool(out, w.lens)
            wmax = np.take_along_axis(out, arg[:, None, :], axis=1)[:, 0]
            prev = self.pool[w.idx]
            wins = wmax > prev  # ties go to the earlier step, as argmax over the whole sequence
            self.pool[w.idx] = np.where(wins, wmax, prev)
            return arg, wins
        return None, None

    def loss_and_grad(self, w, grad):
        """Mean loss of window ``w`` and its gradient into ``grad`` (P,),
        from the carried state as a constant; the state moves on."""
        m = self.model
        c = m.config
        H, dt = c["hidden_size"], m.flat.dtype
        out, h_n = _run_rnn(m, w.X, w.lens, w.idx, self.h, self.c, need_grad=True)
        rnn_cache = m.rnn._cache
        arg, wins = self._update_pool(w, out)
        b, t = out.shape[:2]
        pooling = c["pooling"]
        if pooling == "last":
            feat = np.ascontiguousarray(h_n[-1][w.ends])
        elif pooling == "mean":
            feat = (self.pool[w.idx[w.ends]] / w.full[w.ends][:, None]).astype(dt)
        elif pooling == "max":
            feat = np.ascontiguousarray(self.pool[w.idx[w.ends]])
        else:
            valid = np.arange(t)[None, :] < w.lens[:, None]
            feat = out[valid]
        mask = None
        if m.training and c["dropout"] > 0:
            keep = 1.0 - c["dropout"]
            mask = (m.rng.random(feat.shape) < keep).astype(dt) / dt.type(keep)
            feat = feat * mask
        y = m.head.forward(feat)
        targets = w.y[valid] if pooling == "sequence" else w.y
        loss, dy = m.loss_fn(y, targets)
        if not np.isfinite(loss):
            return loss
        dfeat = m.head.backward(dy, feat, grad[m._head_sl])
        if not np.all(np.isfinite(dfeat)):
            return float("nan")
        if mask is not None:
            dfeat *= mask
        d_out = np.zeros((b, t, H), dtype=dt)
        d_h_n = None
        if pooling == "last":
            d_h_n = np.zeros((c["num_layers"], b, H), dtype=dt)
            d_h_n[-1, w.ends] = dfeat
        elif pooling == "mean":
            d_out[w.ends] = (dfeat / w.full[w.ends][:, None].astype(dt))[:, None, :]
        elif pooling == "max":
            rows = w.ends
            g = np.where(wins[rows], dfeat, 0).astype(dt)
            sub = np.zeros((len(rows), t, H), dtype=dt)
            np.put_along_axis(sub, arg[rows][:, None, :], g[:, None, :], axis=1)
            d_out[rows] = sub
        else:
            d_out[valid] = dfeat
        m.rnn._cache = rnn_cache
        dX, _ = m.rnn.backward(d_out, d_h_n, out=grad[m._rnn_sl],
                               need_input_grad=m.emb is not None)
        if m.emb is not None:
            valid = np.arange(t)[None, :] < w.lens[:, None]
            m.emb.backward(dX[valid], w.X[valid], grad[m._emb_sl])
        return loss


def train_truncated(est, batch, steps):
    """One mini-batch of truncated BPTT through ``est._apply_update`` (one
    optimiser step per window that carries a loss).  Returns the batch's
    loss (the windows' losses weighted by the sequences or steps they
    count), or None when every update was skipped; sets ``est._last_norm``
    to the windows' mean gradient norm."""
    tb = TruncatedBatch(est.model_, batch, steps)
    total = weight = 0.0
    norms = []
    for w in tb.windows():
        if w.n_loss == 0:
            tb.carry(w)
            continue
        loss = est._apply_update(w, tb.loss_and_grad)
        if loss is None:
            continue
        total += loss * w.n_loss
        weight += w.n_loss
        norms.append(est._last_norm)
    if not weight:
        return None
    est._last_norm = float(np.mean(norms))
    return total / weight


# --------------------------------------------------------------- streaming
class StreamState:
    """The state of a batch of streams between two ``predict_stream`` calls.

    Plain arrays (picklable): ``h`` (num_layers, n_streams, H) and, for an
    LSTM, ``c``; ``pool`` (n_streams, H) the running sum (``"mean"``
    readout) or maximum (``"max"``) of the top layer's outputs, else None;
    ``steps_seen`` (n_streams,) int64.  ``model_key`` identifies the fitted
    model (weights and configuration) the state belongs to: a state is
    refused by any other model, and by the same estimator after its weights
    changed (a refit or ``partial_fit``).
    """

    __slots__ = ("h", "c", "pool", "steps_seen", "model_key")

    def __init__(self, h, c, pool, steps_seen, model_key):
        self.h, self.c, self.pool = h, c, pool
        self.steps_seen, self.model_key = steps_seen, model_key

    @property
    def n_streams(self):
        return int(self.steps_seen.shape[0])

    def __getstate__(self):
        return {k: getattr(self, k) for k in self.__slots__}

    def __setstate__(self, state):
        for k in self.__slots__:
            setattr(self, k, state[k])

    def __repr__(self):
        return (f"StreamState(n_streams={self.n_streams}, "
                f"steps_seen={self.steps_seen.tolist()[:8]}{'...' if self.n_streams > 8 else ''})")


def model_key(est):
    """A fingerprint of the fitted model: its configuration, weights, and
    the estimator's class.  Hashing the weights costs about 0.3 ms for a
    small model, more than a streaming step, so the key is kept until the
    model object or its update count (``t_``, which every optimiser step
    raises) changes."""
    m = est.model_
    tag = (id(m), id(m.flat), getattr(est, "t_", None))
    cached = getattr(est, "_stream_key", None)
    if cached is not None and cached[0] == tag:
        return cached[1]
    key = _fingerprint(est, m)
    est._stream_key = (tag, key)
    return key


def _fingerprint(est, m):
    hsh = hashlib.blake2b(digest_size=16)
    hsh.update(type(est).__name__.encode())
    hsh.update(json.dumps(m.config, sort_keys=True, default=str).encode())
    hsh.update(np.ascontiguousarray(m.flat).view(np.uint8))
    return hsh.hexdigest()


def _check_state(est, state, n, key):
    m = est.model_
    c = m.config
    if not isinstance(state, StreamState):
        raise TypeError(f"state must be None (new streams) or the StreamState returned by the "
                        f"previous predict_stream call, got {type(state).__name__}")
    if state.model_key != key:
        raise ValueError("state belongs to another model (or to this estimator before its "
                         "weights changed): start new streams with state=None")
    if state.n_streams != n:
        raise ValueError(f"state holds {state.n_streams} streams, but X has {n}: give the next "
                         "steps of the same streams, in the same order (an empty (0, F) item "
                         "for a stream without new steps)")
    L, H = c["num_layers"], c["hidden_size"]
    if (not isinstance(state.h, np.ndarray) or state.h.shape != (L, n, H)
            or state.h.dtype != m.flat.dtype):
        raise ValueError(f"state.h must be a ({L}, {n}, {H}) {m.flat.dtype} array")


def _chunk_input(est, X, lengths):
    """Validate the next steps of a batch of streams -> padded ``X`` (n, t,
    ...) and ``lens`` (n,) in 0..t (t >= 1; X all padding when every stream
    is empty)."""
    dt = est.model_.flat.dtype
    tokens = getattr(est, "vocabulary_", None) is not None
    F = est.n_features_per_step_
    if X is None or isinstance(X, str):
        raise TypeError("X must be a 3-D array (n_streams, n_steps, n_features), a 2-D array "
                        "(n_streams, n_steps) of univariate streams, or a list with one "
                        "array of new steps per stream")
    if tokens:
        if isinstance(X, np.ndarray) and X.ndim == 2 and X.dtype.kind in "iuU":
            items = list(X)
            if lengths is not None:
                lens = _check_lens(lengths, len(items), X.shape[1])
                items = [s[:k] for s, k in zip(items, lens)]
        else:
            if lengths is not None:
                raise ValueError("lengths is for an array X; a list gives each stream's steps")
            items = list(X)
        if not items:
            raise ValueError("X holds no stream: at least one is required")
        enc = []
        get = est.vocabulary_.index.get
        for i, s in enumerate(items):
            seq = list(s) if isinstance(s, str) else (s.tolist() if isinstance(s, np.ndarray)
                                                       else list(s))
            for tok in seq:
                if isinstance(tok, (bool, np.bool_)) or not isinstance(tok, (str, int, np.integer)):
                    raise TypeError(f"X[{i}] holds {tok!r}; tokens must be ints or strings")
            enc.append(np.array([get(int(t) if isinstance(t, np.integer) else t, UNKNOWN_INDEX)
                                 for t in seq], dtype=np.int64))
        lens = np.array([len(s) for s in enc], dtype=np.int64)
        out = np.zeros((len(enc), max(1, int(lens.max()))), dtype=np.int64)
        for i, s in enumerate(enc):
            out[i, :len(s)] = s
        return out, lens
    if isinstance(X, np.ndarray) and X.dtype.kind != "O":
        arr = X
        if arr.ndim == 2:
            if F != 1:
                raise ValueError(f"X is a 2-D array, read as univariate streams (n_streams, "
                                 f"n_steps), but {type(est).__name__} reads {F} features per step")
            arr = arr[:, :, None]
        if arr.ndim != 3:
            raise ValueError(f"X must be 3-D (n_streams, n_steps, n_features), got shape {arr.shape}")
        n, t = arr.shape[:2]
        if n == 0:
            raise ValueError("X holds no stream: at least one is required")
        if arr.shape[2] != F:
            raise ValueError(f"X has {arr.shape[2]} features per step, but "
                             f"{type(est).__name__} is expecting {F} features per step")
        lens = _check_lens(lengths, n, t)
        arr = _check_real_valid(arr, lens, dt)
        if t == 0:
            arr = np.zeros((n, 1, F), dtype=dt)
        return arr, lens
    if lengths is not None:
        raise ValueError("lengths is for an array X; a list gives each stream's steps")
    if not hasattr(X, "__len__") or len(X) == 0:
        raise ValueError("X holds no stream: give a list with one array of new steps per stream")
    items = []
    for i, s in enumerate(X):
        a = _check_real(s, f"X[{i}]", dt)
        if a.ndim == 1:
            a = a[:, None]
        if a.ndim != 2 or a.shape[1] != F:
            raise ValueError(f"X[{i}] must be an (n_steps, {F}) array of the stream's new steps"
                             f"{' (or 1-D)' if F == 1 else ''}, got shape {np.shape(s)}")
        items.append(a)
    lens = np.array([len(a) for a in items], dtype=np.int64)
    out = np.zeros((len(items), max(1, int(lens.max())), F), dtype=dt)
    for i, a in enumerate(items):
        out[i, :len(a)] = a
    return out, lens


def _check_lens(lengths, n, t):
    if lengths is None:
        return np.full(n, t, dtype=np.int64)
    arr = np.asarray(lengths)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"lengths must hold integers, got dtype {arr.dtype}")
    if arr.shape != (n,):
        raise ValueError(f"lengths must have shape ({n},) (one per stream), got {arr.shape}")
    if n and (arr.min() < 0 or arr.max() > t):
        raise ValueError(f"lengths must lie in 0..{t} (the steps of X), got values from "
                         f"{arr.min()} to {arr.max()}")
    return arr.astype(np.int64)


def _check_real_valid(arr, lens, dt):
    """``arr`` as ``dt`` with finite values at the valid steps (padding
    beyond ``lens`` may hold anything and is zeroed)."""
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"X must hold real numbers, got dtype {arr.dtype}")
    out = np.array(arr, dtype=dt, order="C", copy=True)
    valid = np.arange(out.shape[1])[None, :] < lens[:, None]
    out[~valid] = 0
    if not np.all(np.isfinite(out)):
        raise ValueError("X contains NaN or infinity at valid steps")
    return out


def stream(est, X, state=None, lengths=None):
    """Raw model outputs for the next steps of a batch of streams, and the
    new :class:`StreamState` (see the module docstring).

    Returns ``(rows, state)``: rows (n_streams, V) for a many-to-one model,
    a list of (t_i, V) arrays for a tagger.
    """
    est._check_fitted()
    m = est.model_
    check_supported(m, "predict_stream")
    key = model_key(est)
    Xp, lens = _chunk_input(est, X, lengths)
    n = len(lens)
    if state is None:
        h, c, pool = _zero_state(m, n)
        seen = np.zeros(n, dtype=np.int64)
    else:
        _check_state(est, state, n, key)
        h, c = state.h.copy(), (None if state.c is None else state.c.copy())
        pool = None if state.pool is None else state.pool.copy()
        seen = state.steps_seen.copy()
    pooling = m.config["pooling"]
    idx = np.flatnonzero(lens > 0)
    out = None
    if len(idx):
        sub = np.ascontiguousarray(Xp[idx, :int(lens[idx].max())])
        out, _ = _run_rnn(m, sub, lens[idx], idx, h, c, need_grad=False)
        if pooling == "mean":
            valid = np.arange(out.shape[1])[None, :] < lens[idx][:, None]
            pool[idx] += np.where(valid[:, :, None], out, 0).sum(axis=1, dtype=np.float64)
        elif pooling == "max":
            _, masked, _ = _window_pool(out, lens[idx])
            pool[idx] = np.maximum(pool[idx], masked.max(axis=1))
    seen += lens
    new = StreamState(h, c, pool, seen, key)
    if pooling == "sequence":
        rows = [np.zeros((0, m.config["n_outputs"]), dtype=m.flat.dtype) for _ in range(n)]
        if out is not None:
            valid = np.arange(out.shape[1])[None, :] < lens[idx][:, None]
            y = m.head.forward(out[valid])
            parts = np.split(y, np.cumsum(lens[idx])[:-1])
            for j, i in enumerate(idx):
                rows[i] = parts[j]
        return rows, new
    empty = np.flatnonzero(seen == 0)
    if len(empty):
        raise ValueError(f"stream {int(empty[0])} has no step yet: a many-to-one prediction "
                         "needs at least one step of every stream")
    if pooling == "last":
        feat = np.ascontiguousarray(h[-1])
    elif pooling == "mean":
        feat = (pool / seen[:, None]).astype(m.flat.dtype)
    else:
        feat = np.ascontiguousarray(pool)
    return m.head.forward(feat), new

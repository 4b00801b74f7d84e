"""``SequenceModel``: [Embedding] -> [ConvStack] -> Recurrent -> (pooling) ->
dropout -> Dense, with a softmax or squared-error loss.  Follows the model protocol of
:mod:`fastseq.estimators._base`.

Readouts (``pooling``):

- ``"last"``: the state at each sequence's own last valid step (``h_n`` of the
  top layer; for the reverse direction that is its state after reading the
  whole sequence back to step 0), [forward, reverse] concatenated;
- ``"mean"`` / ``"max"``: mean / max of ``out`` over the valid steps;
- ``"sequence"``: one output per valid step (many-to-many, the tagger).

The optional convolution front end (``conv_filters`` set; see
:mod:`fastseq.network.conv`) shortens each sequence by its max pooling:
the recurrent layer and every readout see the pooled lengths, which
:meth:`SequenceModel.output_lengths` gives (and ``_forward``'s cache holds as
``"lengths"``; ``"in_lengths"`` are the input's).  With ``"sequence"`` the
outputs are one row per *pooled* valid step.
"""

import numpy as np

from ..network.conv import ConvStack
from ..network.dense import LOSSES, Dense
from ..network.embedding import Embedding
from ..network.recurrent import Recurrent

CONFIG_KEYS = ("n_features", "vocab_size", "embedding_dim", "cell", "hidden_size", "num_layers",
               "bidirectional", "nonlinearity", "dropout", "recurrent_dropout", "pooling",
               "n_outputs", "loss", "dtype")
#: keys added later, with the defaults that configs saved before them mean
CONV_DEFAULTS = {"conv_filters": None, "conv_kernel_size": 3, "conv_pool": 1}


class SequenceModel:
    def __init__(self, config, rng):
        self.config = {k: config[k] for k in CONFIG_KEYS}
        for k, v in CONV_DEFAULTS.items():
            self.config[k] = config.get(k, v)
        c = self.config
        if c["conv_filters"] is not None and not isinstance(c["conv_filters"], int):
            c["conv_filters"] = [int(f) for f in c["conv_filters"]]  # JSON-safe
        dt = np.dtype(c["dtype"])
        self.rng = rng
        self.training = False
        self.emb = None
        if c["embedding_dim"]:
            self.emb = Embedding(c["vocab_size"], c["embedding_dim"], dt, rng)
            in_size = c["embedding_dim"]
        else:
            in_size = c["n_features"]
        self.conv = None
        if c["conv_filters"] is not None:
            self.conv = ConvStack(in_size, c["conv_filters"], c["conv_kernel_size"],
                                  c["conv_pool"], dt, rng)
            in_size = self.conv.output_size
        self.rnn = Recurrent(c["cell"], in_size, c["hidden_size"], c["num_layers"],
                             c["bidirectional"], c["nonlinearity"], dropout=c["dropout"],
                             recurrent_dropout=c["recurrent_dropout"], dtype=dt, random_state=rng)
        self.D = 2 if c["bidirectional"] else 1
        self.feat_size = self.D * c["hidden_size"]
        self.head = Dense(self.feat_size, c["n_outputs"], dt, rng)
        self.loss_fn = LOSSES[c["loss"]]
        layers = [l for l in (self.emb, self.conv) if l is not None] + [self.rnn, self.head]
        self.flat = np.zeros(sum(l.n_params for l in layers), dtype=dt)
        self._slices, pos = [], 0
        for layer in layers:
            sl = slice(pos, pos + layer.n_params)
            layer.bind(self.flat[sl], copy=True)
            self._slices.append(sl)
            pos += layer.n_params
        self._emb_sl = self._slices[0] if self.emb is not None else None
        self._conv_sl = self._slices[-3] if self.conv is not None else None
        self._rnn_sl, self._head_sl = self._slices[-2], self._slices[-1]

    # --------------------------------------------------------------- modes
    def train(self, mode=True):
        self.training = bool(mode)
        self.rnn.train(mode)
        return self

    def eval(self):
        return self.train(False)

    def clear_cache(self):
        self.rnn._cache = None

    def __getstate__(self):
        return {"config": self.config, "flat": self.flat, "rng": self.rng,
                "training": self.training}

    def __setstate__(self, state):
        self.__init__(state["config"], np.random.default_rng(0))
        self.flat[...] = state["flat"]
        self.rng = self.rnn._rng = state["rng"]
        self.train(state["training"])

    # ------------------------------------------------------------- forward
    def output_lengths(self, lengths):
        """Valid steps the recurrent layer and the readout see for inputs of
        ``lengths``: shortened by the convolution front end's pooling."""
        lengths = np.asarray(lengths, dtype=np.int64)
        return lengths if self.conv is None else self.conv.output_lengths(lengths)

    def min_length(self):
        """Fewest input steps a sequence needs (1 without conv pooling)."""
        return 1 if self.conv is None else self.conv.min_length()

    def _forward(self, X, lengths, training, need_grad=True):
        """Outputs (rows: samples, or valid steps for "sequence") and a cache
        (``cache["lengths"]``: the valid lengths after the front end).
        ``need_grad=False`` (prediction, validation loss) keeps nothing for a
        backward pass and writes no layer state."""
        c = self.config
        in_lengths = lengths
        inp = self.emb.forward(X) if self.emb is not None else X
        conv_cache = None
        if self.conv is not None:
            inp, lengths, conv_cache = self.conv.forward(inp, lengths, need_grad=need_grad)
        B, T = inp.shape[:2]
        pooling = c["pooling"]
        # many-to-one on the last state: the top layer's outputs are never read
        out, h_n = self.rnn.forward(inp, lengths, need_grad=need_grad, need_out=pooling != "last")
        rnn_cache = self.rnn._cache
        if isinstance(h_n, tuple):
            h_n = h_n[0]
        arg = None
        if pooling == "last":
            feat = np.ascontiguousarray(h_n[-self.D:].transpose(1, 0, 2).reshape(B, self.feat_size))
        elif pooling == "mean":
            feat = out.sum(axis=1) / lengths[:, None].astype(out.dtype)
        elif pooling == "max":
            valid = np.arange(T)[None, :] < lengths[:, None]
            masked = np.where(valid[:, :, None], out, -np.inf)
            arg = masked.argmax(axis=1)
            feat = np.take_along_axis(out, arg[:, None, :], axis=1)[:, 0]
        else:  # sequence
            valid = np.arange(T)[None, :] < lengths[:, None]
            feat = out[valid]
        mask = None
        if training and c["dropout"] > 0:
            keep = 1.0 - c["dropout"]
            dt = feat.dtype
            mask = (self.rng.random(feat.shape) < keep).astype(dt) / dt.type(keep)
            feat = feat * mask
        y = self.head.forward(feat)
        cache = {"X": X, "lengths": lengths, "B": B, "T": T, "feat": feat, "mask": mask,
                 "arg": arg, "rnn": rnn_cache, "in_lengths": in_lengths, "conv": conv_cache}
        return y, cache

    def predict_batch(self, X, lengths):
        """Eval-mode outputs: (B, V) rows, or a list of (T_i, V) for "sequence"."""
        y, cache = self._forward(X, lengths, training=False, need_grad=False)
        if self.config["pooling"] == "sequence":
            return np.split(y, np.cumsum(cache["lengths"])[:-1])
        return y

    def _targets(self, batch):
        y = batch.y
        if self.config["loss"] == "ctc":  # labels (B, L) padded with 0, per-sample output lengths
            return y, self.output_lengths(batch.lengths)
        if self.config["pooling"] == "sequence":
            valid = np.arange(batch.X.shape[1])[None, :] < batch.lengths[:, None]
            y = y[valid]
        return y

    def loss(self, batch):
        y, _ = self._forward(batch.X, batch.lengths, training=False, need_grad=False)
        return self.loss_fn(y, self._targets(batch), need_grad=False)[0]

    def loss_and_grad(self, batch, grad):
        out, cache = self._forward(batch.X, batch.lengths, training=self.training)
        loss, dy = self.loss_fn(out, self._targets(batch))
        if not np.isfinite(loss):  # overflow: the loop skips this update
            return loss
        dfeat = self.head.backward(dy, cache["feat"], grad[self._head_sl])
        if not np.all(np.isfinite(dfeat)):
            return float("nan")
        if cache["mask"] is not None:
            dfeat *= cache["mask"]
        B, T, lengths = cache["B"], cache["T"], cache["lengths"]
        H, D = self.config["hidden_size"], self.D
        dt = self.flat.dtype
        d_h_n = None
        pooling = self.config["pooling"]
        d_out = None if pooling == "last" else np.zeros((B, T, self.feat_size), dtype=dt)
        if pooling == "last":
            d_h_n = np.zeros((self.config["num_layers"] * D, B, H), dtype=dt)
            d_h_n[-D:] = dfeat.reshape(B, D, H).transpose(1, 0, 2)
        elif pooling == "mean":
            d_out += (dfeat / lengths[:, None].astype(dt))[:, None, :]
        elif pooling == "max":
            np.put_along_axis(d_out, cache["arg"][:, None, :], dfeat[:, None, :], axis=1)
        else:
            valid = np.arange(T)[None, :] < lengths[:, None]
            d_out[valid] = dfeat
        self.rnn._cache = cache["rnn"]
        dX, _ = self.rnn.backward(d_out, d_h_n, out=grad[self._rnn_sl],
                                  need_input_grad=self.emb is not None or self.conv is not None)
        if self.conv is not None:
            dX, _ = self.conv.backward(dX, cache["conv"], out=grad[self._conv_sl],
                                       need_input_grad=self.emb is not None)
            T, lengths = cache["X"].shape[1], cache["in_lengths"]
        if self.emb is not None:
            valid = np.arange(T)[None, :] < lengths[:, None]
            self.emb.backward(dX[valid], cache["X"][valid], grad[self._emb_sl])
        return loss

    # ------------------------------------------------------------- summary
    def summary_rows(self):
        c = self.config
        rows = []
        T = "T"
        if self.emb is not None:
            rows.append(("embedding", "Embedding", (None, T, c["embedding_dim"]),
                         self.emb.n_params))
        if self.conv is not None:
            for name, kind, T, C, n in self.conv.summary_rows("T"):
                rows.append((name, kind, (None, T, C), n))
        kind = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}[c["cell"]]
        if c["bidirectional"]:
            kind = f"Bidirectional {kind}"
        if c["num_layers"] > 1:
            kind = f"{kind} x{c['num_layers']}"
        rows.append(("recurrent", kind, (None, T, self.feat_size), self.rnn.n_params))
        if c["pooling"] != "sequence":
            rows.append((f"{c['pooling']}_state", "Readout", (None, self.feat_size), 0))
        if c["dropout"] > 0:
            rows.append(("dropout", f"Dropout({c['dropout']})",
                         (None, self.feat_size) if c["pooling"] != "sequence"
                         else (None, T, self.feat_size), 0))
        shape = (None, c["n_outputs"]) if c["pooling"] != "sequence" else (None, T, c["n_outputs"])
        rows.append(("output", "Dense", shape, self.head.n_params))
        return rows

"""``Seq2Seq``: an encoder-decoder with attention, parameters in one flat vector.

The encoder is a :class:`~fastseq.network.recurrent.Recurrent` (any cell,
stacked, bidirectional) over source features or embedded source tokens.  The
decoder is one recurrent cell of Q = D*H units (D*H: the encoder's top layer,
both directions), started from the encoder's final top-layer state(s), run by
the compiled time loop of :mod:`fastseq.kernels.decoder` with attention from
:mod:`fastseq.kernels.attention`.  This module owns buffers and parameters,
calls the kernels and does the large matrix products around them (projections
of the encoder states before the loop, weight gradients after it).

Outputs are either *tokens* (``n_outputs`` = V classes: logits, softmax
cross-entropy, the decoder's input is the embedding of the previous token) or
*vectors* (V = k values per step: mean squared error, the decoder's input is
the previous vector).
"""

import numpy as np

from .._config import DEFAULT_DTYPE, resolve_dtype
from .._data import writable
from .._threads import blas_single_thread
from .._workspace import aligned_empty
from ._flat import flat_views, layout_size
from .._validation import check_choice, check_positive_int
from ..kernels.attention import ATTENTION_KINDS, BAHDANAU, COSINE, LUONG, NONE
from ..kernels.decoder import CELL_CODES, decoder_backward, decoder_forward, decoder_step
from ..kernels.matmul import pack_into, packed_shape
from .conv import ConvStack
from .recurrent import CELLS, Recurrent

ATTENTIONS = ("bahdanau", "luong", "dot", "cosine", None)
#: initial value of a learned cosine sharpness
COSINE_SHARPNESS_INIT = 5.0


def _packed(w):
    """The decoder step's packed weights (``wp`` of
    :func:`fastseq.kernels.decoder.decoder_step`) from its ``w`` tuple: ``w_e``,
    ``w_c``, ``w_hh``, ``w_os``, ``w_oc``, each packed once per decoding."""
    w_e, w_c, _, w_hh, _, w_os, w_oc, _ = w
    out = []
    for a in (w_e, w_c, w_hh, w_os, w_oc):
        wp = aligned_empty(packed_shape(a), a.dtype)
        pack_into(a, wp)
        out.append(wp)
    return tuple(out)


def log_softmax(o):
    """Row-wise log-softmax over the last axis (float64 accumulation not needed)."""
    m = o.max(axis=-1, keepdims=True)
    z = o - m
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


class Seq2Seq:
    """Encoder-decoder with attention.

    Parameters
    ----------
    n_outputs : int
        V: target vocabulary size (``outputs="tokens"``) or values per step.
    outputs : {"tokens", "vectors"}
    input_size : int, optional
        F, source features per step (when ``src_vocab`` is None).
    src_vocab : int, optional
        Source vocabulary size; the source is then token indices (B, S).
    embedding_dim : int, default 32
        M, size of the source and target token embeddings.
    cell, hidden_size, num_layers, bidirectional, nonlinearity, dropout, recurrent_dropout :
        The encoder's, as :class:`Recurrent`.
    decoder_cell : {"rnn", "lstm", "gru"}, optional
        Default: ``cell``.  The decoder has Q = D*H units.
    attention : {"bahdanau", "luong", "dot", "cosine", None}, default "bahdanau"
    attention_units : int, optional
        U of Bahdanau's attention (default Q).
    cosine_sharpness : float or None, default None
        Fixed sharpness of the cosine score, or None for a learned one.
    teacher_forcing : float in [0, 1], default 1
        Probability of feeding the true previous output while training
        (scheduled sampling below 1).
    begin_index, end_index : int
        Token outputs: the begin token fed at step 0 and the end token.
    conv_filters, conv_kernel_size, conv_pool : optional
        A convolution front end before the encoder (:class:`ConvStack`;
        None: none).  Its pooling shortens the source: attention reads the
        pooled encoder states.
    dtype, random_state

    Attributes
    ----------
    config : dict
        The constructor's arguments (JSON-safe, ``model_class="Seq2Seq"``);
        ``Seq2Seq.from_config(config)`` builds the same architecture.
    flat : (P,) ndarray
        Every parameter; ``params`` are named views into it (``encoder.*`` are
        the :class:`Recurrent` names).
    """

    def __init__(self, n_outputs, outputs="tokens", input_size=None, src_vocab=None,
                 embedding_dim=32, cell="lstm", hidden_size=32, num_layers=1,
                 bidirectional=False, nonlinearity="tanh", dropout=0.0, recurrent_dropout=0.0,
                 decoder_cell=None, attention="bahdanau", attention_units=None,
                 cosine_sharpness=None, teacher_forcing=1.0, begin_index=0, end_index=1,
                 conv_filters=None, conv_kernel_size=3, conv_pool=1,
                 dtype=DEFAULT_DTYPE, random_state=None):
        if conv_filters is not None and not isinstance(conv_filters, int):
            conv_filters = [int(f) for f in conv_filters]  # JSON-safe
        self.config = dict(
            model_class="Seq2Seq", n_outputs=n_outputs, outputs=outputs, input_size=input_size,
            src_vocab=src_vocab, embedding_dim=embedding_dim, cell=cell,
            hidden_size=hidden_size, num_layers=num_layers, bidirectional=bool(bidirectional),
            nonlinearity=nonlinearity, dropout=float(dropout),
            recurrent_dropout=float(recurrent_dropout), decoder_cell=decoder_cell,
            attention=attention, attention_units=attention_units,
            cosine_sharpness=cosine_sharpness, teacher_forcing=float(teacher_forcing),
            begin_index=int(begin_index), end_index=int(end_index), conv_filters=conv_filters,
            conv_kernel_size=int(conv_kernel_size), conv_pool=int(conv_pool),
            dtype=str(np.dtype(dtype)))
        self.outputs = check_choice(outputs, "outputs", ("tokens", "vectors"))
        self.n_outputs = check_positive_int(n_outputs, "n_outputs")
        self.attention = check_choice(attention, "attention", ATTENTIONS)
        self.cell = check_choice(cell, "cell", CELLS)
        self.decoder_cell = check_choice(decoder_cell or cell, "decoder_cell", CELLS)
        self.nonlinearity = nonlinearity
        self.dtype = resolve_dtype(dtype)
        self.src_vocab = None if src_vocab is None else check_positive_int(src_vocab, "src_vocab")
        self.embedding_dim = check_positive_int(embedding_dim, "embedding_dim")
        if self.src_vocab is None:
            if input_size is None:
                raise ValueError("give input_size (features) or src_vocab (tokens)")
            self.input_size = check_positive_int(input_size, "input_size")
        else:
            self.input_size = self.embedding_dim
        if not 0.0 <= float(teacher_forcing) <= 1.0:
            raise ValueError(f"teacher_forcing must lie in [0, 1], got {teacher_forcing}")
        self.teacher_forcing = float(teacher_forcing)
        self.begin_index, self.end_index = int(begin_index), int(end_index)
        self._rng = np.random.default_rng(random_state)
        self.conv = None
        enc_in = self.input_size
        if conv_filters is not None:
            self.conv = ConvStack(self.input_size, conv_filters, conv_kernel_size, conv_pool,
                                  self.dtype, self._rng)
            enc_in = self.conv.output_size
        self._conv_cache = None
        self.encoder = Recurrent(cell, enc_in, hidden_size, num_layers, bidirectional,
                                 nonlinearity, dropout=dropout,
                                 recurrent_dropout=recurrent_dropout, dtype=self.dtype,
                                 random_state=self._rng)
        D = self.encoder.num_directions
        self.H = hidden_size
        self.A = self.Q = D * hidden_size
        self.U = (check_positive_int(attention_units, "attention_units")
                  if attention_units else self.Q)
        self.kind = ATTENTION_KINDS[self.attention]
        self.cell_code = CELL_CODES[(self.decoder_cell, nonlinearity)]
        self.G = {"rnn": 1, "gru": 3, "lstm": 4}[self.decoder_cell]
        self.fixed_sharpness = None if cosine_sharpness is None else float(cosine_sharpness)
        self.M = self.embedding_dim if self.outputs == "tokens" else self.n_outputs
        self._layout = self._param_layout()
        self.n_params = layout_size(self._layout)
        self.flat = np.zeros(self.n_params, dtype=self.dtype)
        self.params = self._views(self.flat)
        self.encoder.bind(self.params["encoder"], copy=True)
        if self.conv is not None:
            self.conv.bind(self.params["conv"], copy=True)
        self._init_params()
        self.training = False
        self._cache = None

    @classmethod
    def from_config(cls, config, random_state=None):
        """A fresh model from :attr:`config` (a JSON-safe dict; persistence)."""
        cfg = {k: v for k, v in config.items() if k != "model_class"}
        return cls(random_state=random_state, **cfg)

    # ------------------------------------------------------------ parameters
    def _param_layout(self):
        Q, A, U, V, R = self.Q, self.A, self.U, self.n_outputs, self.G * self.Q
        lay = [("encoder", (self.encoder.n_params,))]
        if self.conv is not None:
            lay.append(("conv", (self.conv.n_params,)))
        if self.src_vocab is not None:
            lay.append(("src_embedding", (self.src_vocab, self.embedding_dim)))
        if self.outputs == "tokens":
            lay.append(("tgt_embedding", (V, self.embedding_dim)))
        lay += [("decoder.weight_ih", (R, self.M + A)), ("decoder.weight_hh", (R, Q)),
                ("decoder.bias_ih", (R,)), ("decoder.bias_hh", (R,))]
        if self.kind == BAHDANAU:
            lay += [("attention.W1", (U, A)), ("attention.W2", (U, Q)), ("attention.v", (U,))]
        elif self.kind == LUONG:
            lay.append(("attention.W", (Q, A)))
        elif self.kind == COSINE and self.fixed_sharpness is None:
            lay.append(("attention.sharpness", (1,)))
        lay += [("output.weight", (V, Q + A)), ("output.bias", (V,))]
        return lay

    def _views(self, flat):
        return flat_views(self._layout, flat)

    def _init_params(self):
        rng, p = self._rng, self.params
        for name, shape in self._layout:
            if name in ("encoder", "conv"):
                continue
            if name.endswith("embedding"):
                p[name][...] = rng.normal(0.0, 1.0 / np.sqrt(shape[1]), size=shape)
            elif name == "attention.sharpness":
                p[name][...] = COSINE_SHARPNESS_INIT
            else:
                fan = self.Q if not name.startswith("attention.") else shape[-1]
                bound = 1.0 / np.sqrt(fan)
                p[name][...] = rng.uniform(-bound, bound, size=shape)

    def bind(self, flat):
        """Make the parameters views into ``flat`` (P,) (values move along)."""
        if flat.shape != (self.n_params,) or flat.dtype != self.dtype:
            raise ValueError(f"flat must be a ({self.n_params},) {self.dtype} array")
        flat[...] = self.flat
        self.flat = flat
        self.params = self._views(flat)
        self.encoder.bind(self.params["encoder"], copy=False)
        if self.conv is not None:
            self.conv.bind(self.params["conv"], copy=False)
        return self

    def train(self, mode=True):
        self.training = bool(mode)
        self.encoder.train(mode)
        return self

    def eval(self):
        return self.train(False)

    def clear_cache(self):
        self._cache = None
        self._conv_cache = None
        self.encoder._cache = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_cache"] = None
        state["_conv_cache"] = None
        state.pop("params")
        return state

    def __setstate__(self, state):
        state["flat"] = writable(state["flat"])  # a memmap (joblib's mmap_mode) is read-only
        state.setdefault("conv", None)  # pickled before the front end existed
        state.setdefault("_conv_cache", None)
        self.__dict__.update(state)
        self.params = self._views(self.flat)
        self.encoder.bind(self.params["encoder"], copy=False)
        if self.conv is not None:
            self.conv.bind(self.params["conv"], copy=False)

    def min_length(self):
        """Fewest source steps a sequence needs (1 without conv pooling)."""
        return 1 if self.conv is None else self.conv.min_length()

    def summary_rows(self):
        rows = []
        if self.conv is not None:
            for name, kind, S, C, n in self.conv.summary_rows("S"):
                rows.append((name, kind, f"(B, {S}, {C})", n))
        rows.append(("encoder", f"Recurrent[{self.cell}]", f"(B, S, {self.A})",
                     self.encoder.n_params))
        for name, shape in self._layout[1:]:
            if name == "conv":
                continue
            rows.append((name, "weight", str(shape), int(np.prod(shape))))
        return rows

    # ------------------------------------------------------------ weights
    def _weights(self, need_grad=True):
        """(w, w_b, att) tuples for the kernels (contiguous copies; ``w_b``
        transposed, for the backward kernel: None when ``need_grad`` is False,
        as in decoding, where its copies were about a tenth of a B=1 H=256 call)."""
        p, M, Q, dt = self.params, self.M, self.Q, self.dtype
        W_ih, W_hh = p["decoder.weight_ih"], p["decoder.weight_hh"]
        b_ih, b_hh = p["decoder.bias_ih"], p["decoder.bias_hh"]
        W_e, W_c = W_ih[:, :M], W_ih[:, M:]
        if self.decoder_cell == "gru":
            b_x = b_ih.copy()
            b_x[:2 * Q] += b_hh[:2 * Q]
            b_hn = np.ascontiguousarray(b_hh[2 * Q:])
        else:
            b_x = b_ih + b_hh
            b_hn = np.zeros(Q, dtype=dt)
        W_o = p["output.weight"]
        W_os, W_oc = W_o[:, :Q], W_o[:, Q:]
        c = np.ascontiguousarray
        w = (c(W_e), c(W_c), c(b_x), c(W_hh), b_hn, c(W_os), c(W_oc), c(p["output.bias"]))
        w_b = (c(W_e.T), c(W_c.T), c(W_hh.T), c(W_os.T), c(W_oc.T)) if need_grad else None
        if self.kind == BAHDANAU:
            att = (c(p["attention.W2"].T), c(p["attention.v"]), np.ones(1, dt))
        else:
            if self.kind == COSINE:
                g = (np.array([self.fixed_sharpness], dt) if self.fixed_sharpness is not None
                     else c(p["attention.sharpness"]))
            else:
                g = np.ones(1, dt)
            att = (np.zeros((Q, 1), dt), np.zeros(1, dt), g)
        return w, w_b, att

    # ------------------------------------------------------------ encoder
    def _encode(self, X, lengths, need_grad=True):
        """Encoder states and the decoder's start: (mem, keys, src_len, s0, c0).
        ``need_grad=False`` (decoding) keeps nothing for a backward pass."""
        dt = self.dtype
        if self.src_vocab is not None:
            inp = self.params["src_embedding"][X]
        else:
            inp = X
        if self.conv is not None:
            inp, lengths, conv_cache = self.conv.forward(inp, lengths, need_grad=need_grad)
            if need_grad:
                self._conv_cache = conv_cache
        out, hn = self.encoder.forward(inp, lengths, need_grad=need_grad)
        if self.encoder.cell == "lstm":
            h_n, c_n = hn
        else:
            h_n, c_n = hn, None
        L, D = self.encoder.num_layers, self.encoder.num_directions
        top = slice((L - 1) * D, L * D)
        s0 = np.ascontiguousarray(np.concatenate(list(h_n[top]), axis=1), dtype=dt)
        if self.decoder_cell == "lstm" and c_n is not None:
            c0 = np.ascontiguousarray(np.concatenate(list(c_n[top]), axis=1), dtype=dt)
        else:
            c0 = np.zeros_like(s0)
        if self.kind == NONE:
            mem = np.ascontiguousarray(s0[:, None, :])
            src_len = np.ones(len(s0), dtype=np.int64)
        else:
            mem = np.ascontiguousarray(out, dtype=dt)
            src_len = np.asarray(lengths, dtype=np.int64)
        keys = self._keys(mem)
        return mem, keys, src_len, s0, c0

    def _keys(self, mem):
        p = self.params
        if self.kind == BAHDANAU:
            return np.ascontiguousarray(mem @ p["attention.W1"].T)
        if self.kind == LUONG:
            return np.ascontiguousarray(mem @ p["attention.W"].T)
        return mem

    def _feed_true(self, Y):
        """Teacher's decoder inputs (T, B, M) for targets Y (B, T) or (B, T, k)."""
        B, T = Y.shape[:2]
        dt = self.dtype
        if self.outputs == "tokens":
            prev = np.empty((B, T), dtype=np.int64)
            prev[:, 0] = self.begin_index
            prev[:, 1:] = Y[:, :-1]
            return np.ascontiguousarray(self.params["tgt_embedding"][prev.T]), prev.T
        feed = np.zeros((T, B, self.M), dtype=dt)
        feed[1:] = np.swapaxes(Y[:, :-1], 0, 1)
        return feed, None

    def _alloc_cache(self, T, B, S):
        dt, Q, A = self.dtype, self.Q, self.A
        return (np.zeros((T + 1, B, Q), dt), np.zeros((T + 1, B, Q), dt),
                np.zeros((T, B, 4 * Q), dt), np.zeros((T + 1, B, A), dt),
                np.zeros((T, B, S), dt), np.zeros((T, B, self.M), dt),
                np.zeros((T, B, self.n_outputs), dt), np.zeros((T, B), np.int64))

    def _run(self, X, lengths, feed_true, use_truth, need_grad=True):
        mem, keys, src_len, s0, c0 = self._encode(X, lengths, need_grad)
        T, B = use_truth.shape
        cache = self._alloc_cache(T, B, mem.shape[1])
        cache[0][0] = s0
        cache[1][0] = c0
        w, w_b, att = self._weights(need_grad)
        emb = (np.ascontiguousarray(self.params["tgt_embedding"]) if self.outputs == "tokens"
               else np.zeros((0, self.M), self.dtype))
        decoder_forward(self.cell_code, self.kind, w, _packed(w), att, emb, mem, keys, src_len,
                        feed_true, use_truth, cache)
        conv_cache, self._conv_cache = self._conv_cache, None
        return {"mem": mem, "keys": keys, "src_len": src_len, "cache": cache,
                "w_b": w_b, "att": att, "lengths": lengths, "conv": conv_cache}

    # ------------------------------------------------------------ loss
    def forward_loss(self, X, lengths, Y, y_len, use_truth=None):
        """Mean loss over valid target steps, caching what :meth:`backward` needs.

        X : (B, S) int64 tokens or (B, S, F) float; lengths (B,) int64 in 1..S;
        Y : (B, T) int64 tokens or (B, T, V) float; y_len (B,) int64 in 1..T.
        use_truth : (T, B) int64, optional (default: all teacher-forced).
        """
        B, T = Y.shape[:2]
        y_len = np.asarray(y_len, dtype=np.int64)
        if y_len.shape != (B,) or (B and (y_len.min() < 1 or y_len.max() > T)):
            raise ValueError(f"y_len must be ({B},) integers in 1..{T}, got {y_len!r}")
        if use_truth is None:
            use_truth = np.ones((T, B), dtype=np.int64)
        elif use_truth.shape != (T, B):
            raise ValueError(f"use_truth must have shape {(T, B)}, got {use_truth.shape}")
        feed_true, prev_tok = self._feed_true(Y)
        st = self._run(X, lengths, feed_true, use_truth)
        o = st["cache"][6]
        mask = (np.arange(T)[:, None] < np.asarray(y_len)[None, :])
        n_valid = mask.sum()
        if self.outputs == "tokens":
            lp = log_softmax(o.astype(np.float64))
            Yt = Y.T
            picked = np.take_along_axis(lp, Yt[:, :, None], axis=2)[:, :, 0]
            loss = -(picked * mask).sum() / n_valid
            d_o = np.exp(lp)
            np.put_along_axis(d_o, Yt[:, :, None],
                              np.take_along_axis(d_o, Yt[:, :, None], axis=2) - 1.0, axis=2)
            d_o *= mask[:, :, None] / n_valid
        else:
            diff = o.astype(np.float64) - np.swapaxes(Y, 0, 1)
            diff *= mask[:, :, None]
            denom = n_valid * self.n_outputs
            loss = (diff * diff).sum() / denom
            d_o = 2.0 * diff / denom
        st["d_o"] = np.ascontiguousarray(d_o, dtype=self.dtype)
        st["prev_tok"] = prev_tok
        st["X"] = X
        self._cache = st
        return float(loss)

    def backward(self, out=None):
        """Gradient of the last :meth:`forward_loss` into ``out`` (P,) (overwritten)."""
        st = self._cache
        if st is None:
            raise RuntimeError("backward() needs a forward_loss() first")
        dt, Q, A, M, R = self.dtype, self.Q, self.A, self.M, self.G * self.Q
        grad = np.zeros(self.n_params, dt) if out is None else out
        grad[...] = 0.0
        g = self._views(grad)
        cache = st["cache"]
        s, c, gates, ctx, weights, feed, o, fed = cache
        T, B = o.shape[:2]
        mem, keys = st["mem"], st["keys"]
        Sm, K = keys.shape[1], keys.shape[2]
        U = st["att"][1].shape[0]
        d_x = np.zeros((T, B, R), dt)
        d_h = np.zeros((T, B, R), dt)
        d_feed = np.zeros((T, B, M), dt)
        d_s0 = np.zeros((B, Q), dt)
        d_c0 = np.zeros((B, Q), dt)
        d_keys = np.zeros((B, Sm, K), dt)
        d_mem = np.zeros((B, Sm, A), dt)
        d_qp = np.zeros((T, B, U), dt)
        d_v = np.zeros(U, dt)
        d_g = np.zeros(1, dt)
        d_o = st["d_o"]
        decoder_backward(self.cell_code, self.kind, st["w_b"], st["att"], mem, keys,
                         st["src_len"], cache, d_o,
                         (d_x, d_h, d_feed, d_s0, d_c0, d_keys, d_mem, d_qp, d_v, d_g))
        before = self.kind in (BAHDANAU, NONE)
        ctx_in = ctx[1:] if before else ctx[:-1]
        fl = lambda a: a.reshape(-1, a.shape[-1])  # noqa: E731
        g["decoder.weight_ih"][:, :M] = fl(d_x).T @ fl(feed)
        g["decoder.weight_ih"][:, M:] = fl(d_x).T @ fl(ctx_in)
        g["decoder.weight_hh"][...] = fl(d_h).T @ fl(s[:-1])
        g["decoder.bias_ih"][...] = fl(d_x).sum(axis=0)
        g["decoder.bias_hh"][...] = fl(d_h).sum(axis=0)
        g["output.weight"][:, :Q] = fl(d_o).T @ fl(s[1:])
        g["output.weight"][:, Q:] = fl(d_o).T @ fl(ctx[1:])
        g["output.bias"][...] = fl(d_o).sum(axis=0)
        p = self.params
        if self.kind == BAHDANAU:
            g["attention.W2"][...] = fl(d_qp).T @ fl(s[:-1])
            g["attention.v"][...] = d_v
            g["attention.W1"][...] = fl(d_keys).T @ fl(mem)
            d_mem += d_keys @ p["attention.W1"]
        elif self.kind == LUONG:
            g["attention.W"][...] = fl(d_keys).T @ fl(mem)
            d_mem += d_keys @ p["attention.W"]
        else:
            d_mem += d_keys
            if self.kind == COSINE and self.fixed_sharpness is None:
                g["attention.sharpness"][...] = d_g
        if self.outputs == "tokens":
            ids = np.where(fed >= 0, fed, st["prev_tok"])
            np.add.at(g["tgt_embedding"], ids.ravel(), fl(d_feed))
        # encoder: d_mem through out, d_s0/d_c0 through the top layer's final states
        if self.kind == NONE:
            d_s0 += d_mem[:, 0, :]
        enc = self.encoder
        L, D, H = enc.num_layers, enc.num_directions, self.H
        shape = (L * D, B, H)
        d_hn = np.zeros(shape, dt)
        for d in range(D):
            d_hn[(L - 1) * D + d] = d_s0[:, d * H:(d + 1) * H]
        d_cn = None
        if enc.cell == "lstm":
            d_cn = np.zeros(shape, dt)
            if self.decoder_cell == "lstm":
                for d in range(D):
                    d_cn[(L - 1) * D + d] = d_c0[:, d * H:(d + 1) * H]
        if self.kind == NONE:
            d_out = np.zeros((B, enc._cache["T"], A), dt)
        else:
            d_out = d_mem
        # raw features straight into the encoder need no input gradient
        dX, _ = enc.backward(d_out, d_hn, d_cn, out=g["encoder"],
                             need_input_grad=self.src_vocab is not None or self.conv is not None)
        if self.conv is not None:
            dX, _ = self.conv.backward(dX, st["conv"], out=g["conv"],
                                       need_input_grad=self.src_vocab is not None)
        if self.src_vocab is not None:
            Xs = st["X"]
            valid = np.arange(Xs.shape[1])[None, :] < st["lengths"][:, None]
            np.add.at(g["src_embedding"], Xs[valid], dX[valid])
        return grad

    # ------------------------------------------------------ model protocol
    def _use_truth(self, T, B):
        if not self.training or self.teacher_forcing >= 1.0:
            return np.ones((T, B), dtype=np.int64)
        u = (self._rng.random((T, B)) < self.teacher_forcing).astype(np.int64)
        u[0] = 1
        return u

    def loss_and_grad(self, batch, grad):
        """Mean loss of a batch whose ``y`` is ``(Y, y_len)``; gradient into ``grad``."""
        Y, y_len = batch.y
        loss = self.forward_loss(batch.X, batch.lengths, Y, y_len,
                                 self._use_truth(Y.shape[1], len(y_len)))
        self.backward(grad)
        self.clear_cache()
        return loss

    def loss(self, batch):
        Y, y_len = batch.y
        loss = self.forward_loss(batch.X, batch.lengths, Y, y_len)
        self._cache = None
        return loss

    def predict_batch(self, X, lengths, max_length=None):
        """Greedy outputs: tokens (B, T) int64 or vectors (B, T, V)."""
        return self.greedy(X, lengths, max_length)[0]

    # ------------------------------------------------------------ decoding
    def greedy(self, X, lengths, max_length):
        """Greedy decoding (the model's own output fed back at every step).

        Returns
        -------
        out : (B, T) int64 argmax tokens, or (B, T, V) vectors
        weights : (B, T, S) attention weights
        logp : (B, T) log-probability of each chosen token (tokens only)
        """
        B = len(lengths)
        T = int(max_length)
        if self.outputs == "tokens":
            feed_true = np.zeros((T, B, self.M), self.dtype)
            feed_true[0] = self.params["tgt_embedding"][self.begin_index]
        else:
            feed_true = np.zeros((T, B, self.M), self.dtype)
        use_truth = np.zeros((T, B), dtype=np.int64)
        use_truth[0] = 1
        with blas_single_thread():
            st = self._run(X, lengths, feed_true, use_truth, need_grad=False)
        o, weights = st["cache"][6], st["cache"][4]
        W = np.swapaxes(weights, 0, 1)
        if self.outputs == "vectors":
            return np.swapaxes(o, 0, 1).copy(), W, None
        lp = log_softmax(o.astype(np.float64))
        tok = lp.argmax(axis=2)
        logp = np.take_along_axis(lp, tok[:, :, None], axis=2)[:, :, 0]
        return tok.T.copy(), W, logp.T.copy()

    def beam_search(self, X, lengths, max_length, beam_width, length_penalty=1.0):
        """Batched beam search over token outputs, length-normalised.

        A hypothesis's score is ``sum log p / len**length_penalty`` with ``len``
        its number of tokens including the end token.  Hypotheses stop at the
        end token or after ``max_length`` tokens.  The greedy hypothesis is
        scored too and kept when it beats every finished beam, so the result
        never scores below greedy decoding (and equals it for width 1).

        Returns
        -------
        tokens : list of B int64 arrays (without the end token)
        weights : list of B arrays (len_b, S) attention weights per output step
            (the end token's step included when it was produced)
        scores : (B,) float64 normalised scores
        """
        if self.outputs != "tokens":
            raise ValueError("beam search needs token outputs")
        Kw, T, E = int(beam_width), int(max_length), self.end_index
        B = len(lengths)
        with blas_single_thread():
            mem, keys, src_len, s0, c0 = self._encode(X, lengths, need_grad=False)
        w, _, att = self._weights(need_grad=False)
        wp = _packed(w)
        work = (np.empty((2, B * Kw, w[2].shape[0]), self.dtype), np.empty((B * Kw, 6 * self.Q), self.dtype))
        rep = lambda a: np.ascontiguousarray(np.repeat(a, Kw, axis=0))  # noqa: E731
        mem_r, keys_r, len_r = rep(mem), rep(keys), rep(src_len)
        s, c = rep(s0), rep(c0)
        ctx = np.zeros((B * Kw, self.A), self.dtype)
        Sm = mem.shape[1]
        emb = self.params["tgt_embedding"]
        last = np.full(B * Kw, self.begin_index, dtype=np.int64)
        score = np.full((B, Kw), -np.inf)
        score[:, 0] = 0.0
        length = np.zeros((B, Kw), dtype=np.int64)
        done = np.zeros((B, Kw), dtype=bool)
        hist_tok = np.zeros((T, B, Kw), np.int64)
        hist_par = np.zeros((T, B, Kw), np.int64)
        hist_w = np.zeros((T, B, Kw, Sm), self.dtype)
        V = self.n_outputs
        alpha = float(length_penalty)
        steps = 0
        for t in range(T):
            out = (np.empty_like(s), np.empty_like(c), np.empty((B * Kw, 4 * self.Q), self.dtype),
                   np.empty_like(ctx), np.empty((B * Kw, Sm), self.dtype),
                   np.empty((B * Kw, V), self.dtype))
            feed = np.ascontiguousarray(emb[last])
            with blas_single_thread():
                decoder_step(self.cell_code, self.kind, w, wp, att, mem_r, keys_r, len_r, feed,
                             (s, c, ctx), out, work)
            lp = log_softmax(out[5].astype(np.float64)).reshape(B, Kw, V)
            # finished beams: one continuation, the end token at no cost
            lp[done] = -np.inf
            lp[done, E] = 0.0
            new_len = length[:, :, None] + (~done)[:, :, None]
            total = score[:, :, None] + lp
            norm = total / np.maximum(new_len, 1) ** alpha
            flat_norm = norm.reshape(B, Kw * V)
            pick = np.argsort(-flat_norm, axis=1, kind="stable")[:, :Kw]
            par, tok = pick // V, pick % V
            bidx = np.arange(B)[:, None]
            score = total.reshape(B, Kw * V)[bidx, pick]
            length = np.broadcast_to(new_len, (B, Kw, V)).reshape(B, Kw * V)[bidx, pick]
            done = done[bidx, par] | (tok == E)
            rows = (bidx * Kw + par).ravel()
            s, c, ctx = out[0][rows], out[1][rows], out[3][rows]
            hist_tok[t], hist_par[t] = tok, par
            hist_w[t] = out[4].reshape(B, Kw, Sm)[bidx, par]
            last = tok.ravel().copy()
            steps = t + 1
            if done.all():
                break
        final = score / np.maximum(length, 1) ** alpha
        best = final.argmax(axis=1)
        toks, ws = [], []
        for b in range(B):
            k = best[b]
            seq, wt = [], []
            for t in range(steps - 1, -1, -1):
                seq.append(hist_tok[t, b, k])
                wt.append(hist_w[t, b, k])
                k = hist_par[t, b, k]
            seq, wt = seq[::-1], wt[::-1]
            n = int(length[b, best[b]])
            toks.append(np.array(seq[:n], dtype=np.int64))
            ws.append(np.array(wt[:n]))
        scores = final[np.arange(B), best]
        # greedy fallback: never worse than greedy on the same criterion
        g_tok, g_w, g_lp = self.greedy(X, lengths, T)
        for b in range(B):
            n = self._cut(g_tok[b])
            gs = g_lp[b, :n].sum() / n ** alpha
            if gs > scores[b] + 1e-12 * max(1.0, abs(gs)):
                toks[b], ws[b], scores[b] = g_tok[b, :n].copy(), g_w[b, :n].copy(), gs
        for b in range(B):
            if len(toks[b]) and toks[b][-1] == E:
                toks[b] = toks[b][:-1]
        return toks, ws, scores

    def _cut(self, tokens):
        """Number of steps up to and including the first end token (or all)."""
        hit = np.flatnonzero(tokens == self.end_index)
        return int(hit[0]) + 1 if hit.size else len(tokens)

    def sequence_score(self, X, lengths, Y, y_len, length_penalty=1.0):
        """The model's length-normalised log-likelihood of each target (B,):
        ``sum_t log p(y_t) / y_len**length_penalty`` (teacher-forced)."""
        B, T = Y.shape[:2]
        feed_true, _ = self._feed_true(Y)
        st = self._run(X, lengths, feed_true, np.ones((T, B), dtype=np.int64), need_grad=False)
        lp = log_softmax(st["cache"][6].astype(np.float64))
        picked = np.take_along_axis(lp, Y.T[:, :, None], axis=2)[:, :, 0]
        mask = np.arange(T)[:, None] < np.asarray(y_len)[None, :]
        return (picked * mask).sum(axis=0) / np.asarray(y_len, np.float64) ** length_penalty

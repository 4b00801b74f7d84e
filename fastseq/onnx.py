"""Export fitted estimators to ONNX: :func:`to_onnx`.

``onnx`` (and, for pipelines, ``skl2onnx``) are optional dependencies imported
only inside this module's functions; ``import fastseq`` does not import them.

The exported graph replicates ``predict`` / ``predict_proba`` with the ONNX
recurrent operators (``RNN``, ``LSTM``, ``GRU``, time-major ``layout=0``, as
ONNX Runtime runs them on the CPU):

- inputs: ``X`` ``(N, T, F)`` float32 (or, for an estimator that embeds tokens,
  ``(N, T)`` int64 token *indices* already mapped through the estimator's
  vocabulary: see :func:`encode`) and ``lengths`` ``(N,)`` int64, each in
  ``1..T`` (steps at and past a sequence's length are padding, never read);
- outputs: ``label`` ``(N,)`` and ``probabilities`` ``(N, C)`` (classifier;
  labels are ``classes_`` themselves: int64, double, bool or string tensors
  as the classes are); ``prediction`` float32 of ``predict``'s shape
  ``(N,)``, ``(N, k)`` or ``(N, horizon, k)`` with the target scaling undone
  (regressor); ``probabilities`` ``(N, T, C)`` float32 (tagger; zero at
  padded steps).

A convolution front end (``conv_filters``, see :mod:`fastseq.network.conv`)
becomes, per layer, ``Conv`` ("same" zero padding of ``K // 2`` steps each
side) + ``Relu`` + ``MaxPool`` (kernel and stride ``conv_pool``, floor)
over ``(N, F, T)``; the steps at and past each sequence's valid length are
set to zero (``Where``) before every ``Conv``, so that its padding reads
zeros exactly as fastseq's per-sequence "same" padding does, and the valid
lengths become ``lengths // conv_pool`` after each layer: the recurrent
operators' ``sequence_lens``, the mean / max readouts and the tagger's mask
use those pooled lengths.  Each ``lengths[b]`` must then be at least
``conv_pool ** n_layers`` (as ``predict`` requires; :func:`encode` checks).

The weights are float32 (a float64 estimator is exported in float32).
Dropout is the identity at inference and is left out.  Gate orders differ
from PyTorch's (and fastseq's): ONNX LSTM is (i, o, f, c) against (i, f, g,
o), the GRU (z, r, h) against (r, z, n); the weights are reordered.  The GRU
of fastseq's default form (PyTorch's, reset gate after the recurrent product)
is ``linear_before_reset=1``; the "reset before" form (Cho et al. 2014,
``Recurrent(reset_after=False)``) is ``linear_before_reset=0``.
"""

import numpy as np

#: opset used when ``opset`` is None (run by every recent ONNX Runtime)
DEFAULT_OPSET = 17
#: oldest opset the export writes (Softmax over one axis, axes as inputs)
MIN_OPSET = 13
#: ONNX gate order as indices into the PyTorch/fastseq gate blocks
ONNX_GATE_ORDER = {"rnn": (0,), "lstm": (0, 3, 1, 2), "gru": (1, 0, 2)}
#: model configuration keys the export understands (anything else: refused)
_KNOWN_CONFIG = {"n_features", "vocab_size", "embedding_dim", "cell", "hidden_size",
                 "num_layers", "bidirectional", "nonlinearity", "dropout",
                 "recurrent_dropout", "pooling", "n_outputs", "loss", "dtype",
                 "conv_filters", "conv_kernel_size", "conv_pool"}


def _onnx():
    try:
        import onnx
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("fastseq.to_onnx needs the onnx package: pip install onnx "
                          "(or pip install 'fastseq[onnx]')") from exc
    return onnx


# ---------------------------------------------------------------- the model
class _Spec:
    """What the graph needs from a fitted estimator, checked: the task, the
    encoder's configuration, its float32 weights in ONNX layout, the head."""

    def __init__(self, est):
        from .estimators import RNNClassifier, RNNRegressor, SequenceTagger
        from .estimators._model import SequenceModel
        from .network.conv import ConvStack
        from .network.recurrent import Recurrent

        name = type(est).__name__
        if isinstance(est, RNNClassifier):
            self.task = "classifier"
        elif isinstance(est, RNNRegressor):
            self.task = "regressor"
        elif isinstance(est, SequenceTagger):
            self.task = "tagger"
        elif hasattr(est, "model_") or type(est).__module__.startswith("fastseq"):
            raise NotImplementedError(
                f"to_onnx: {name} is not supported; it exports RNNClassifier, RNNRegressor "
                "and SequenceTagger")
        else:
            raise TypeError(f"to_onnx: estimator must be a fitted fastseq RNNClassifier, "
                            f"RNNRegressor or SequenceTagger, got {name}")
        est._check_fitted()  # NotFittedError
        model = est.model_
        if type(model) is not SequenceModel or type(model.rnn) is not Recurrent:
            raise NotImplementedError(
                f"to_onnx: {name} holds a {type(model).__name__} model "
                f"({type(getattr(model, 'rnn', None)).__name__} encoder); only the "
                "Recurrent encoder of SequenceModel can be exported")
        c = model.config
        extra = sorted(set(c) - _KNOWN_CONFIG)
        if extra:
            raise NotImplementedError(f"to_onnx: {name} uses model options the ONNX export "
                                      f"does not know: {extra}")
        rnn = model.rnn
        self.name = name
        self.cell, self.H, self.L = rnn.cell, rnn.hidden_size, rnn.num_layers
        self.D = rnn.num_directions
        self.nonlinearity = rnn.nonlinearity
        self.reset_after = bool(getattr(rnn, "reset_after", True))
        self.pooling = c["pooling"]
        self.tokens = model.emb is not None
        self.n_features = (int(model.emb.embedding_dim) if self.tokens
                           else int(c["n_features"]))
        self.vocab_size = int(model.emb.num_embeddings) if self.tokens else 0
        f32 = np.float32
        self.embedding = (model.emb.params["weight"].astype(f32) if self.tokens else None)
        self.layers = [self._layer(rnn, k) for k in range(self.L)]
        self.conv = []  # [(W (C, F, K), bias (C,))] float32, one per conv layer
        self.conv_kernel_size = self.conv_pool = 1
        conv = getattr(model, "conv", None)
        if (conv is None) != (c.get("conv_filters") is None) or not (
                conv is None or type(conv) is ConvStack):
            raise NotImplementedError(
                f"to_onnx: {name} has a convolution front end the export does not know "
                f"(conv_filters={c.get('conv_filters')!r}, layer "
                f"{type(conv).__name__})")
        if conv is not None:
            self.conv_kernel_size, self.conv_pool = int(conv.kernel_size), int(conv.pool)
            self.conv = [(np.ascontiguousarray(conv.params[f"weight_l{l}"], dtype=f32),
                          conv.params[f"bias_l{l}"].astype(f32))
                         for l in range(conv.num_layers)]
        self.head_w = model.head.params["weight"].astype(f32)  # (V, D*H)
        self.head_b = model.head.params["bias"].astype(f32)
        self.n_outputs = self.head_w.shape[0]
        if self.task in ("classifier", "tagger"):
            self.classes = np.asarray(est.classes_)
        else:
            self.y_shape = tuple(int(s) for s in est.y_shape_)
            self.y_scale = np.asarray(est.y_scale_, dtype=f32)
            self.y_mean = np.asarray(est.y_mean_, dtype=f32)
        for arr in ([self.head_w, self.head_b] + [a for l in self.layers for a in l]
                    + [a for l in self.conv for a in l]):
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"to_onnx: {name} has non-finite weights (or weights that "
                                 "overflow float32)")

    def _layer(self, rnn, k):
        """W (D, G*H, in), R (D, G*H, H), B (D, 2*G*H) of layer k, gates in
        ONNX order, float32."""
        H, G = rnn.hidden_size, rnn.num_gates
        order = ONNX_GATE_ORDER[rnn.cell]
        perm = np.concatenate([np.arange(g * H, (g + 1) * H) for g in order])
        Ws, Rs, Bs = [], [], []
        for d in range(rnn.num_directions):
            sfx = rnn._suffix(k, d)
            p = rnn.params
            w_ih, w_hh = p["weight_ih" + sfx], p["weight_hh" + sfx]
            zero = np.zeros(G * H, dtype=w_ih.dtype)
            b_ih, b_hh = p.get("bias_ih" + sfx, zero), p.get("bias_hh" + sfx, zero)
            Ws.append(w_ih[perm])
            Rs.append(w_hh[perm])
            Bs.append(np.concatenate([b_ih[perm], b_hh[perm]]))
        f32 = np.float32
        return (np.stack(Ws).astype(f32), np.stack(Rs).astype(f32), np.stack(Bs).astype(f32))


# ------------------------------------------------------------ graph builder
class _Graph:
    """Nodes and initialisers with unique names (standalone model)."""

    def __init__(self, opset, prefix=""):
        self.onnx = _onnx()
        self.opset = opset
        self.prefix = prefix
        self.nodes, self.inits = [], []
        self._n = 0

    def name(self, seed):
        self._n += 1
        return f"{self.prefix}{seed}_{self._n}"

    def const(self, seed, value):
        """Initialiser holding ``value`` (an ndarray; strings as a string tensor)."""
        name = self.name(seed)
        self._add_init(name, np.asarray(value))
        return name

    def _add_init(self, name, arr):
        onnx = self.onnx
        if arr.dtype.kind in "USO":
            t = onnx.helper.make_tensor(name, onnx.TensorProto.STRING, arr.shape,
                                        [str(s).encode("utf-8") for s in arr.ravel()])
        else:
            t = onnx.numpy_helper.from_array(arr, name)
        self.inits.append(t)

    def _add_node(self, op, inputs, outputs, attrs):
        self.nodes.append(self.onnx.helper.make_node(op, inputs, outputs,
                                                     name=self.name(op), **attrs))

    def op(self, op, *inputs, n_out=1, out=None, **attrs):
        """Add node ``op``; returns its output name (a list when ``n_out`` > 1).
        ``out`` names the (single) output."""
        outputs = [out] if out is not None else [self.name(op.lower()) for _ in range(n_out)]
        self._add_node(op, list(inputs), outputs, attrs)
        return outputs[0] if n_out == 1 else outputs

    def axes(self, values):
        return self.const("axes", np.array(values, dtype=np.int64))


class _SklGraph(_Graph):
    """The same builder writing into a skl2onnx scope and container."""

    def __init__(self, scope, container):
        super().__init__(container.target_opset)
        self.scope, self.container = scope, container

    def name(self, seed):
        return self.scope.get_unique_variable_name(seed)

    def _add_init(self, name, arr):
        onnx = self.onnx
        if arr.dtype.kind in "USO":
            self.container.add_initializer(name, onnx.TensorProto.STRING, list(arr.shape),
                                           [str(s) for s in arr.ravel()])
        else:
            self.container.add_initializer(name, None, None,
                                           onnx.numpy_helper.from_array(arr, name))

    def _add_node(self, op, inputs, outputs, attrs):
        self.container.add_node(op, inputs, outputs,
                                name=self.scope.get_unique_operator_name(op), **attrs)


# ------------------------------------------------------------------ the graph
def _steps_valid(g, lengths, x, axis, lengths_axis):
    """Bool mask of ``x``'s steps (its dimension ``axis``) before ``lengths``:
    steps on dimension 0 and ``lengths`` on ``lengths_axis`` of a 2-D
    result, ``(T, N)`` or ``(N, T)``."""
    T = g.op("Gather", g.op("Shape", x), g.const("axis", np.array(axis, dtype=np.int64)),
             axis=0)
    steps = g.op("Range", g.const("zero", np.array(0, dtype=np.int64)), T,
                 g.const("one", np.array(1, dtype=np.int64)))  # (T,)
    if lengths_axis == 1:  # (T, N)
        return g.op("Less", g.op("Unsqueeze", steps, g.axes([1])),
                    g.op("Unsqueeze", lengths, g.axes([0])))
    return g.op("Less", g.op("Unsqueeze", steps, g.axes([0])),
                g.op("Unsqueeze", lengths, g.axes([1])))  # (N, T)


def _conv_front(g, spec, X, lengths):
    """The convolution front end on ``X`` (N, T, F): returns its output
    (N, T2, C) and the pooled ``lengths`` (N,) int64.  Before every ``Conv``
    the steps at and past each sequence's current valid length are set to
    zero (``Where``: NaN padding cannot leak), so the "same" padding reads
    zeros past each sequence's own end as fastseq's does (a layer's output
    there is not zero: a window of zeros gives ReLU(bias))."""
    K, p = spec.conv_kernel_size, spec.conv_pool
    zero = g.const("zerof", np.array(0, dtype=np.float32))
    x = g.op("Transpose", X, perm=[0, 2, 1])  # (N, F, T)
    for l, (W, b) in enumerate(spec.conv):
        valid = g.op("Unsqueeze", _steps_valid(g, lengths, x, 2, 0), g.axes([1]))  # (N, 1, T)
        x = g.op("Where", valid, x, zero)
        x = g.op("Conv", x, g.const(f"conv_W{l}", W), g.const(f"conv_b{l}", b),
                 kernel_shape=[K], pads=[K // 2, K // 2], strides=[1], dilations=[1],
                 group=1)
        x = g.op("Relu", x)
        if p > 1:
            x = g.op("MaxPool", x, kernel_shape=[p], strides=[p], pads=[0, 0], ceil_mode=0)
            lengths = g.op("Div", lengths, g.const("pool", np.array(p, dtype=np.int64)))
    return g.op("Transpose", x, perm=[0, 2, 1]), lengths  # (N, T2, C)


def _encoder(g, spec, X, lengths):
    """Encoder outputs: ``out`` (T, N, D*H) (zero past each length), ``h_last``
    (N, D*H) (the top layer's state at each sequence's last step, [forward,
    reverse]), ``mask`` (T, N, 1) bool (valid steps) and ``lengths`` (N,)
    int64, the valid lengths after the convolution front end's pooling."""
    TP = g.onnx.TensorProto
    if spec.tokens:
        X = g.op("Gather", g.const("embedding", spec.embedding), X, axis=0)  # (N, T, E)
    if spec.conv:
        X, lengths = _conv_front(g, spec, X, lengths)
    x = g.op("Transpose", X, perm=[1, 0, 2])  # (T, N, F)
    seq_lens = g.op("Cast", lengths, to=TP.INT32)
    op = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}[spec.cell]
    direction = "bidirectional" if spec.D == 2 else "forward"
    attrs = {"hidden_size": spec.H, "direction": direction}
    if spec.cell == "rnn":
        attrs["activations"] = ["Tanh" if spec.nonlinearity == "tanh" else "Relu"] * spec.D
    if spec.cell == "gru":
        attrs["linear_before_reset"] = 1 if spec.reset_after else 0
    y_h = None
    for k, (W, R, B) in enumerate(spec.layers):
        y, y_h = g.op(op, x, g.const(f"W{k}", W), g.const(f"R{k}", R), g.const(f"B{k}", B),
                      seq_lens, n_out=2, **attrs)  # Y (T, D, N, H), Y_h (D, N, H)
        if spec.D == 1:
            x = g.op("Squeeze", y, g.axes([1]))
        else:
            x = g.op("Reshape", g.op("Transpose", y, perm=[0, 2, 1, 3]),
                     g.const("shape", np.array([0, 0, -1], dtype=np.int64)))
    h_last = g.op("Reshape", g.op("Transpose", y_h, perm=[1, 0, 2]),
                  g.const("shape", np.array([0, -1], dtype=np.int64)))
    mask = g.op("Unsqueeze", _steps_valid(g, lengths, x, 0, 1), g.axes([2]))  # (T, N, 1)
    return x, h_last, mask, lengths


def _pooled(g, spec, out, h_last, mask, lengths):
    """The readout (N, D*H) of ``pooling``."""
    TP = g.onnx.TensorProto
    if spec.pooling == "last":
        return h_last
    if spec.pooling == "mean":
        masked = g.op("Where", mask, out, g.const("zerof", np.array(0, dtype=np.float32)))
        total = g.op("ReduceSum", masked, g.axes([0]), keepdims=0)
        n = g.op("Cast", g.op("Unsqueeze", lengths, g.axes([1])), to=TP.FLOAT)
        return g.op("Div", total, n)
    masked = g.op("Where", mask, out, g.const("neginf", np.array(-np.inf, dtype=np.float32)))
    if g.opset >= 18:
        return g.op("ReduceMax", masked, g.axes([0]), keepdims=0)
    return g.op("ReduceMax", masked, axes=[0], keepdims=0)


def _emit(g, spec, X, lengths, names):
    """Every node from ``X``, ``lengths`` to the outputs named ``names`` (a dict
    of output -> graph name)."""
    out, h_last, mask, lengths = _encoder(g, spec, X, lengths)
    W, b = g.const("head_W", spec.head_w.T.copy()), g.const("head_b", spec.head_b)
    if spec.task == "tagger":
        logits = g.op("Add", g.op("MatMul", out, W), b)  # (T, N, C)
        p = g.op("Softmax", logits, axis=-1)
        p = g.op("Where", mask, p, g.const("zerof", np.array(0, dtype=np.float32)))
        g.op("Transpose", p, perm=[1, 0, 2], out=names["probabilities"])
        return
    feat = _pooled(g, spec, out, h_last, mask, lengths)
    logits = g.op("Add", g.op("MatMul", feat, W), b)  # (N, V)
    if spec.task == "classifier":
        g.op("Softmax", logits, axis=-1, out=names["probabilities"])
        idx = g.op("ArgMax", logits, axis=1, keepdims=0)
        g.op("Gather", g.const("classes", names.get("_classes", spec.classes)), idx, axis=0,
             out=names["label"])
        return
    y = g.op("Add", g.op("Mul", logits, g.const("y_scale", spec.y_scale)),
             g.const("y_mean", spec.y_mean))
    g.op("Reshape", y, g.const("y_shape", np.array((-1,) + spec.y_shape, dtype=np.int64)),
         out=names["prediction"])


def _classes_tensor(classes, name):
    """``classes_`` as the values of the ``label`` output; NotImplementedError
    for labels ONNX cannot hold."""
    c = np.asarray(classes)
    if c.dtype.kind in "iu":
        return c.astype(np.int64)
    if c.dtype.kind in "fb":
        return c
    if c.dtype.kind in "US" or (c.dtype.kind == "O" and all(isinstance(v, str) for v in c)):
        return c.astype(str)
    raise NotImplementedError(f"to_onnx: {name} has class labels of a kind ONNX cannot "
                              f"hold (dtype {c.dtype}, e.g. {c[0]!r}); use ints or strings")


def _check_opset(opset, onnx):
    latest = onnx.defs.onnx_opset_version()
    if opset is None:
        return min(DEFAULT_OPSET, latest)
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)):
        raise TypeError(f"opset must be an int or None, got {type(opset).__name__}")
    if not MIN_OPSET <= int(opset) <= latest:
        raise ValueError(f"opset must be in {MIN_OPSET}..{latest} (this onnx package's "
                         f"newest), got {opset}")
    return int(opset)


def to_onnx(estimator, opset=None):
    """Export a fitted estimator to an ``onnx.ModelProto``.

    Parameters
    ----------
    estimator : fitted RNNClassifier, RNNRegressor or SequenceTagger
        Any cell, stacked, bidirectional, any pooling, with or without a token
        embedding and a convolution front end (``conv_filters``).
    opset : int, optional
        ONNX opset (default :data:`DEFAULT_OPSET`, at least :data:`MIN_OPSET`).

    Returns
    -------
    onnx.ModelProto
        Inputs ``X`` float32 ``(N, T, F)`` (token estimators: int64 ``(N, T)``
        vocabulary indices, see :func:`encode`) and ``lengths`` int64 ``(N,)``
        (each in 1..T, and at least ``conv_pool ** n_conv_layers`` with a
        pooling front end), N and T dynamic.  Outputs: ``label`` ``(N,)`` (the
        values of ``classes_``) and ``probabilities`` float32 ``(N, C)``
        (classifier); ``prediction`` float32 of ``predict``'s shape
        (regressor); ``probabilities`` float32 ``(N, T, C)``, zero at padded
        steps (tagger).  See the module docstring.

    Raises
    ------
    sklearn.exceptions.NotFittedError
        ``estimator`` is not fitted.
    NotImplementedError
        An estimator or configuration the export cannot express (named).

    Examples
    --------
    >>> import numpy as np, onnxruntime, fastseq
    >>> rng = np.random.default_rng(0)
    >>> seqs = [rng.normal(size=(t, 2)) for t in (5, 9, 7, 6)] * 5
    >>> clf = fastseq.RNNClassifier(cell="gru", hidden_size=8, max_iter=2, random_state=0)
    >>> clf = clf.fit(seqs, ["a", "b"] * 10)
    >>> model = fastseq.to_onnx(clf)
    >>> sess = onnxruntime.InferenceSession(model.SerializeToString())
    >>> X, lengths = fastseq.onnx.encode(clf, seqs[:3])     # padded (3, 9, 2), lengths (3,)
    >>> label, proba = sess.run(None, {"X": X, "lengths": lengths})
    >>> bool(np.allclose(proba, clf.predict_proba(seqs[:3]), atol=1e-5))
    True
    """
    onnx = _onnx()
    spec = _Spec(estimator)
    opset = _check_opset(opset, onnx)
    TP, helper = onnx.TensorProto, onnx.helper
    g = _Graph(opset)
    names = {}
    if spec.task == "classifier":
        classes = _classes_tensor(spec.classes, spec.name)
        names = {"label": "label", "probabilities": "probabilities", "_classes": classes}
        ltype = {"i": TP.INT64, "f": helper.np_dtype_to_tensor_dtype(classes.dtype),
                 "b": TP.BOOL}.get(classes.dtype.kind, TP.STRING)
        outputs = [helper.make_tensor_value_info("label", ltype, ["N"]),
                   helper.make_tensor_value_info("probabilities", TP.FLOAT,
                                                 ["N", spec.n_outputs])]
    elif spec.task == "tagger":
        names = {"probabilities": "probabilities"}
        outputs = [helper.make_tensor_value_info("probabilities", TP.FLOAT,
                                                 ["N", "T", spec.n_outputs])]
    else:
        names = {"prediction": "prediction"}
        outputs = [helper.make_tensor_value_info("prediction", TP.FLOAT,
                                                 ["N", *spec.y_shape])]
    if spec.tokens:
        x_info = helper.make_tensor_value_info("X", TP.INT64, ["N", "T"])
    else:
        x_info = helper.make_tensor_value_info("X", TP.FLOAT, ["N", "T", spec.n_features])
    inputs = [x_info, helper.make_tensor_value_info("lengths", TP.INT64, ["N"])]
    _emit(g, spec, "X", "lengths", names)
    graph = helper.make_graph(g.nodes, f"fastseq_{spec.name}", inputs, outputs, g.inits)
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="fastseq",
                              ir_version=helper.find_min_ir_version_for(opsets))
    from . import __version__
    model.producer_version = __version__
    onnx.checker.check_model(model)
    return model


def encode(estimator, X):
    """Pad ``X`` (any form ``predict`` accepts) into the exported model's inputs:
    ``(X, lengths)`` with ``X`` float32 ``(N, T_max, F)`` (zeros past each
    length) or, for a token estimator, int64 ``(N, T_max)`` indices through
    its vocabulary (unseen tokens -> the unknown index, padding 0), and
    ``lengths`` int64 ``(N,)``."""
    estimator._check_fitted()
    seqs = estimator._check_X(X, reset=False)
    Xp, lengths = seqs.pad(np.arange(seqs.n_samples))
    if not seqs.tokens:
        Xp = Xp.astype(np.float32)
    return np.ascontiguousarray(Xp), lengths.astype(np.int64)


# ----------------------------------------------------------------- skl2onnx
def _skl_shape(operator):
    """skl2onnx shape calculator of the fastseq estimators."""
    from skl2onnx.common.data_types import (FloatTensorType, Int64TensorType,
                                            StringTensorType)
    est = operator.raw_operator
    spec = _Spec(est)
    N = operator.inputs[0].type.shape[0]
    if spec.task == "classifier":
        kind = _skl_classes(spec).dtype.kind
        operator.outputs[0].type = (StringTensorType if kind == "U" else Int64TensorType)([N])
        operator.outputs[1].type = FloatTensorType([N, spec.n_outputs])
    elif spec.task == "tagger":
        operator.outputs[0].type = FloatTensorType([N, None, spec.n_outputs])
    else:
        operator.outputs[0].type = FloatTensorType([N, *spec.y_shape])


def _skl_classes(spec):
    """Labels as skl2onnx carries them: int64 or strings."""
    c = _classes_tensor(spec.classes, spec.name)
    if c.dtype.kind == "b":
        return c.astype(np.int64)
    if c.dtype.kind == "f":
        if not np.all(c == np.round(c)):
            raise NotImplementedError(
                f"skl2onnx: {spec.name} has non-integer float class labels; skl2onnx "
                "carries int64 or string labels")
        return c.astype(np.int64)
    return c


def _skl_convert(scope, operator, container):
    """skl2onnx converter: the input is the pipeline's tensor, (N, T) univariate
    series (one feature per step) or (N, T, F); every sequence has all T steps."""
    spec = _Spec(operator.raw_operator)
    if spec.tokens:
        raise NotImplementedError(f"skl2onnx: {spec.name} embeds tokens; export it alone with "
                                  "fastseq.to_onnx (a pipeline carries float tensors)")
    g = _SklGraph(scope, container)
    X = operator.inputs[0].full_name
    rank = len(operator.inputs[0].type.shape)
    if rank == 2:
        if spec.n_features != 1:
            raise ValueError(f"skl2onnx: a 2-D input holds univariate series, but {spec.name} "
                             f"reads {spec.n_features} features per step")
        X = g.op("Unsqueeze", X, g.axes([2]))
    elif rank != 3:
        raise ValueError(f"skl2onnx: {spec.name} needs a 2-D (N, T) or 3-D (N, T, F) input, "
                         f"got rank {rank}")
    if operator.inputs[0].type.__class__.__name__ != "FloatTensorType":
        X = g.op("Cast", X, to=g.onnx.TensorProto.FLOAT)
    shape = g.op("Shape", X)
    n = g.op("Gather", shape, g.const("zero1", np.array([0], dtype=np.int64)), axis=0)
    t = g.op("Gather", shape, g.const("one1", np.array([1], dtype=np.int64)), axis=0)
    lengths = g.op("Expand", t, n)  # (N,) all T
    outs = [v.full_name for v in operator.outputs]
    if spec.task == "classifier":
        names = {"label": outs[0], "probabilities": outs[1], "_classes": _skl_classes(spec)}
    elif spec.task == "tagger":
        names = {"probabilities": outs[0]}
    else:
        names = {"prediction": outs[0]}
    _emit(g, spec, X, lengths, names)


def register_skl2onnx():
    """Register converters with skl2onnx for RNNClassifier, RNNRegressor and
    SequenceTagger, so that ``skl2onnx.to_onnx(pipeline, X2d)`` exports a
    Pipeline ending in one of them.

    The pipeline's input is a 2-D float tensor ``(N, T)`` (univariate series of
    one length, each step one feature, as ``fit`` reads a 2-D X), or a 3-D one
    ``(N, T, F)`` when every upstream step passes it through; every sequence
    then has all T steps (no ``lengths`` input: export the estimator alone
    with :func:`to_onnx` for ragged batches).  Token estimators are refused.
    Classifier options are skl2onnx's: ``{"zipmap": False}`` keeps
    ``probabilities`` a tensor.  Calling this twice is harmless.
    """
    from skl2onnx import update_registered_converter

    from .estimators import RNNClassifier, RNNRegressor, SequenceTagger
    update_registered_converter(RNNClassifier, "FastseqRNNClassifier", _skl_shape,
                                _skl_convert, options={"zipmap": [True, False, "columns"],
                                                       "nocl": [True, False]})
    update_registered_converter(RNNRegressor, "FastseqRNNRegressor", _skl_shape, _skl_convert)
    update_registered_converter(SequenceTagger, "FastseqSequenceTagger", _skl_shape,
                                _skl_convert)

"""``Seq2SeqClassifier`` and ``Seq2SeqRegressor``: encoder-decoder with attention.

Both train with the shared loop of :class:`~fastseq.estimators._base.BaseRNN`
(mini-batches, Adam/SGD, clipping, L2, early stopping, warm start,
``partial_fit``, verbose, histories) over a
:class:`~fastseq.network.seq2seq.Seq2Seq` model.  The data object given to the
loop yields batches whose ``y`` is ``(Y, y_len)``: padded targets and their
lengths (targets are masked in the loss past their own length).
"""

import numbers

import numpy as np
from sklearn.base import RegressorMixin
from sklearn.utils._param_validation import Interval, StrOptions

from .._config import INDEX_DTYPE
from .._input import Batch, Vocabulary, check_sequences, iter_batches
from .._threads import limit
from ..network.seq2seq import Seq2Seq
from ..persistence import register
from ._base import BaseRNN

#: target-side reserved indices (the source side uses fastseq._input's PAD/UNKNOWN)
BEGIN_INDEX = 0
END_INDEX = 1


class _PairData:
    """Source sequences plus target sequences: the loop's data protocol.

    ``X`` is a :class:`fastseq._input.Sequences`; ``y`` a list of per-sample
    targets, (T_i,) int64 token indices (end token included) or (T_i, k)
    float arrays.  ``batch(idx).y`` is ``(Y (B, T_max[, k]), y_len (B,))``.
    """

    def __init__(self, X, y):
        self.X, self.y = X, y

    @property
    def n_samples(self):
        return self.X.n_samples

    @property
    def lengths(self):
        return self.X.lengths

    def take(self, idx):
        return _PairData(self.X.take(idx), [self.y[i] for i in idx])

    def batch(self, idx):
        idx = np.asarray(idx, dtype=INDEX_DTYPE)
        X, lengths = self.X.pad(idx)
        ys = [self.y[i] for i in idx]
        y_len = np.array([len(t) for t in ys], dtype=INDEX_DTYPE)
        Y = np.zeros((len(ys), int(y_len.max())) + ys[0].shape[1:], dtype=ys[0].dtype)
        for b, t in enumerate(ys):
            Y[b, :len(t)] = t
        return Batch(X, lengths, (Y, y_len), idx)


def _is_feature_input(X):
    """True when X holds real-valued source features: a 3-D array
    ``(n, S, F)`` (``(n, 1, F)`` for one-to-many) or a list of 2-D ``(S_i, F)``
    arrays.  Anything else (strings, token lists, a 2-D array of token ids)
    is read as token sequences."""
    if isinstance(X, (list, tuple)):
        if not X or isinstance(X[0], str):
            return False
        try:
            return np.ndim(X[0]) == 2
        except ValueError:  # a ragged nested list
            return False
    try:
        return np.ndim(X) == 3
    except ValueError:
        return False


class _Seq2SeqBase(BaseRNN):
    """Parameters shared by the two estimators (see :class:`Seq2SeqClassifier`)."""

    _parameter_constraints = {
        **{k: v for k, v in BaseRNN._parameter_constraints.items()
           if k not in ("pooling", "pretrained_embeddings")},
        "attention": [StrOptions({"bahdanau", "luong", "dot", "cosine"}), None],
        "attention_units": [Interval(numbers.Integral, 1, None, closed="left"), None],
        "decoder_cell": [StrOptions({"rnn", "lstm", "gru"}), None],
        "beam_width": [Interval(numbers.Integral, 1, None, closed="left")],
        "length_penalty": [Interval(numbers.Real, 0, None, closed="left")],
        "max_output_length": [Interval(numbers.Integral, 1, None, closed="left"), None],
        "teacher_forcing": [Interval(numbers.Real, 0, 1, closed="both")],
    }

    def __init__(self, *, cell="lstm", hidden_size=64, num_layers=1, bidirectional=False,
                 nonlinearity="tanh", dropout=0.0, recurrent_dropout=0.0, embedding_dim=32,
                 attention="bahdanau", attention_units=None, decoder_cell=None, beam_width=1,
                 length_penalty=1.0, max_output_length=None, teacher_forcing=1.0,
                 conv_filters=None, conv_kernel_size=3, conv_pool=1, optimizer="adam", learning_rate=1e-3, momentum=0.9, nesterovs_momentum=False,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, batch_size="auto", max_iter=100,
                 clip_norm=5.0, clip_value=None, alpha=0.0, early_stopping=False,
                 validation_fraction=0.1, validation_holdout="random", n_iter_no_change=10,
                 tol=1e-4, shuffle=True, random_state=None, warm_start=False, verbose=False,
                 n_jobs=None, dtype="float32", tokenizer="char", max_vocabulary=None,
                 min_frequency=1):
        self.cell = cell
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bidirectional = bidirectional
        self.nonlinearity = nonlinearity
        self.dropout = dropout
        self.recurrent_dropout = recurrent_dropout
        self.embedding_dim = embedding_dim
        self.attention = attention
        self.attention_units = attention_units
        self.decoder_cell = decoder_cell
        self.beam_width = beam_width
        self.length_penalty = length_penalty
        self.max_output_length = max_output_length
        self.teacher_forcing = teacher_forcing
        self.conv_filters = conv_filters
        self.conv_kernel_size = conv_kernel_size
        self.conv_pool = conv_pool
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.batch_size = batch_size
        self.max_iter = max_iter
        self.clip_norm = clip_norm
        self.clip_value = clip_value
        self.alpha = alpha
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.validation_holdout = validation_holdout
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.shuffle = shuffle
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.n_jobs = n_jobs
        self.dtype = dtype
        self.tokenizer = tokenizer
        self.max_vocabulary = max_vocabulary
        self.min_frequency = min_frequency

    def partial_fit(self, X, y):
        """One epoch over (X, y) from the current weights."""
        return self._partial_fit(X, y)

    def _run_epochs(self, train, val, epochs, incremental):
        self.model_.teacher_forcing = float(self.teacher_forcing)
        return super()._run_epochs(train, val, epochs, incremental)

    def _model_kwargs(self):
        return dict(cell=self.cell, hidden_size=int(self.hidden_size),
                    num_layers=int(self.num_layers), bidirectional=bool(self.bidirectional),
                    nonlinearity=self.nonlinearity, dropout=float(self.dropout),
                    recurrent_dropout=float(self.recurrent_dropout),
                    decoder_cell=self.decoder_cell, attention=self.attention,
                    attention_units=self.attention_units,
                    teacher_forcing=float(self.teacher_forcing), dtype=self._dtype,
                    **self._conv_config())

    def _check_pair_counts(self, seqs, n_y):
        if n_y != seqs.n_samples:
            raise ValueError(
                f"X and y have different lengths: {seqs.n_samples} sequences but {n_y} targets")

    def _check_predict_params(self):
        """Re-validate the decoding parameters (they may be set after fit)."""
        self._check_fitted()
        self._validate_params()

    def _decode_batches(self, seqs, fn):
        """Apply ``fn(X, lengths) -> per-sample list`` over length-sorted batches;
        results in input order."""
        outs = [None] * seqs.n_samples
        for idx in iter_batches(seqs.lengths, self._inference_batch_size(64)):
            X, lengths = seqs.pad(idx)
            for j, r in zip(idx, fn(X, lengths)):
                outs[j] = r
        return outs

    def _plot_matrix(self, A, xlabels, ylabels, ax, title):
        from matplotlib.figure import Figure
        fig = None
        if ax is None:
            fig = Figure(figsize=(max(4, 0.35 * len(xlabels) + 2),
                                  max(3, 0.35 * len(ylabels) + 1.5)))
            ax = fig.subplots()
        im = ax.imshow(A, aspect="auto", cmap="viridis", vmin=0.0, vmax=max(1e-12, float(A.max())))
        ax.set_xticks(range(len(xlabels)))
        ax.set_xticklabels([str(t) for t in xlabels], rotation=90)
        ax.set_yticks(range(len(ylabels)))
        ax.set_yticklabels([str(t) for t in ylabels])
        ax.set_xlabel("input")
        ax.set_ylabel("output")
        ax.set_title(title)
        ax.figure.colorbar(im, ax=ax)
        return ax.figure if fig is None else fig


#: the scikit-learn checks (as of 1.9) that fit a Seq2SeqClassifier on real-valued X
_CHECKS_FITTING_ON_REAL_X = (
    "check_fit_score_takes_y", "check_estimators_overwrite_params",
    "check_dont_overwrite_parameters", "check_estimators_fit_returns_self",
    "check_readonly_memmap_input", "check_positive_only_tag_during_fit",
    "check_estimators_dtypes", "check_dtype_object", "check_pipeline_consistency",
    "check_estimators_pickle", "check_f_contiguous_array_estimator",
    "check_methods_sample_order_invariance", "check_methods_subset_invariance",
    "check_fit2d_1sample", "check_fit2d_1feature", "check_dict_unchanged",
    "check_fit_idempotent", "check_fit_check_is_fitted", "check_fit2d_predict1d",
    "check_array_api_input",
)


@register
class Seq2SeqClassifier(_Seq2SeqBase):
    """Sequence-to-token-sequence model with attention (translation,
    normalisation, captioning).

    y holds token sequences: lists of int or str tokens, or strings read as
    characters.  X holds either token sequences (lists of tokens, a 2-D array
    of token ids, or raw strings cut by ``tokenizer``; unseen or capped-out
    tokens map to a reserved index), or real-valued features: a 3-D array
    ``(n, S, F)`` or a list of ``(S_i, F)`` arrays, fed to the encoder as
    they are.  One-to-many (a sequence generated from one vector, as in image
    captioning) is the 3-D form with one step: ``X`` of shape ``(n, 1, F)``
    (a 2-D array is never read as features here: it holds token ids).  The
    form is fixed at fit.  Begin and end tokens are handled internally.
    Predictions are of the same kind as y (strings when y held strings).

    Parameters
    ----------
    cell, hidden_size, num_layers, bidirectional, nonlinearity, dropout, recurrent_dropout :
        The encoder's (see :class:`~fastseq.estimators._base.BaseRNN`).  The
        decoder has ``hidden_size * (2 if bidirectional else 1)`` units and
        starts from the encoder's final top-layer state(s).
    embedding_dim : int, default 32
        Size of the source and target token embeddings.
    tokenizer, max_vocabulary, min_frequency :
        The source side's (see ``BaseRNN``): how raw source strings are cut
        and which source tokens are kept.  The targets are not cut: a target
        string is read as characters, every target token is kept.
    attention : {"bahdanau", "luong", "dot", "cosine"} or None, default "bahdanau"
        Score of the attention (None: the context is the final encoder state).
    attention_units : int, optional
        Bahdanau's hidden units (default: the decoder's size).
    decoder_cell : {"rnn", "lstm", "gru"}, optional
        Default: ``cell``.
    beam_width : int, default 1
        1: greedy decoding; more: batched beam search.
    length_penalty : float, default 1
        Beam scores are ``log p / length ** length_penalty``.
    max_output_length : int, optional
        Longest output (default: 1.5 x the longest target seen at fit + 2).
    teacher_forcing : float in [0, 1], default 1
        Probability of feeding the true previous token while training; below 1
        the model's own argmax is fed otherwise (scheduled sampling).
    conv_filters, conv_kernel_size, conv_pool : default None, 3, 1
        A convolution front end before the encoder, as in ``BaseRNN`` (over
        the source embeddings here); its pooling shortens the source that
        attention reads.
    n_jobs : int or None, default None
        Threads of each call (training and decoding).  None: every core this
        process may run on, within the limits set around it (CPU affinity,
        cgroup quota, ``OMP_NUM_THREADS`` as joblib and Dask set it in their
        workers, ``threadpoolctl.threadpool_limits``); an integer fixes it
        (see ``BaseRNN``).
    optimizer, learning_rate, momentum, nesterovs_momentum, beta_1, beta_2, epsilon, batch_size, max_iter, clip_norm, clip_value, alpha, early_stopping, validation_fraction, validation_holdout, n_iter_no_change, tol, shuffle, random_state, warm_start, verbose, dtype :
        The training loop's (see ``BaseRNN``).

    Attributes
    ----------
    classes_ : ndarray
        Target tokens, in index order.
    vocabulary_ : Vocabulary or None
        Source tokens (None after a fit on real-valued features).
        Target token ``classes_[i]`` has index ``i + 2`` (0 and 1 are the begin
        and end tokens).
    max_target_length_ : int
    n_features_in_, n_iter_, loss_curve_, validation_scores_, best_loss_, ...
        As the other estimators.

    Examples
    --------
    >>> from fastseq import Seq2SeqClassifier
    >>> words = ["abc", "bca", "cab", "acb", "bac", "cba"]
    >>> s2s = Seq2SeqClassifier(hidden_size=16, embedding_dim=8, max_iter=2,
    ...                         random_state=0).fit(words, [w[::-1] for w in words])
    >>> out = s2s.predict(["abc", "ccc"])
    >>> len(out), all(isinstance(s, str) for s in out)
    (2, True)
    """

    _score_name = "exact_match"

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        return tags

    @classmethod
    def _expected_failed_checks(cls):
        """scikit-learn checks that cannot apply by design, check -> reason:
        every check that fits, since they all pass real-valued X."""
        tokens = ("X holds token sequences (strings, lists of tokens, or a 2-D integer array "
                  "of token ids) or real-valued features in 3-D (n, S, F) or ragged form; the "
                  "check's X is a 2-D real-valued array, which is refused with a TypeError "
                  "(not tokens)")
        failed = dict.fromkeys(_CHECKS_FITTING_ON_REAL_X, tokens)
        failed.update(
            check_complex_data=tokens + " before its values are looked at; the check "
            "expects a ValueError about complex data",
            check_estimators_nan_inf=tokens + " before its values are looked at; the check "
            "expects a ValueError about NaN",
            check_fit1d="a 1-D X is a valid list of strings here; the check's 1-D array of "
            "floats is refused with a TypeError (not tokens) where it expects a ValueError",
            check_requires_y_none=tokens + " before y is looked at",
            check_n_features_in=tokens + "; n_features_in_ is 1 for token input",
            check_n_features_in_after_fitting=tokens + "; n_features_in_ is 1 for token input")
        return failed

    # --------------------------------------------------------------- data
    def _check_X(self, X, reset):
        if isinstance(X, np.ndarray) and X.ndim == 2 and X.dtype.kind == "f" and X.size:
            raise TypeError(
                f"X is a 2-D float array {X.shape}: {type(self).__name__} reads a 2-D array as "
                "token ids. For one vector per sample (one to many) pass it as (n, 1, F): "
                "X[:, None, :]; for series of vectors, a 3-D array (n, S, F) or a list of "
                "(S_i, F) arrays")
        features = _is_feature_input(X) if reset else self.vocabulary_ is None
        if features:
            dtype = self._dtype if reset else self.model_.flat.dtype
            seqs = check_sequences(X, dtype=dtype, name="X")
            if reset:
                self.vocabulary_ = None
                self._set_input_shape(X, seqs)
            else:
                self._check_input_shape(X, seqs)
            self._check_conv_lengths(seqs, reset)
            return seqs
        seqs = check_sequences(X, dtype=None, tokens=True, name="X", tokenizer=self.tokenizer)
        self._check_conv_lengths(seqs, reset)
        if reset:
            self.vocabulary_ = self._build_vocabulary(seqs)
            self._set_input_shape(X, seqs)
        return self.vocabulary_.encode(seqs)

    def _prepare_fit(self, X, y, reset):
        seqs = self._check_X(X, reset)
        if y is None:
            raise ValueError("Seq2SeqClassifier requires y to be passed, but the target y is None: "
                             "give one target token sequence per sequence of X")
        ys = check_sequences(y, dtype=None, tokens=True, name="y")
        self._check_pair_counts(seqs, ys.n_samples)
        if reset:
            toks = list(Vocabulary.build(ys).index)
            if all(isinstance(t, numbers.Integral) for t in toks):
                self.classes_ = np.array(toks, dtype=np.int64)
            else:
                self.classes_ = np.empty(len(toks), dtype=object)
                self.classes_[:] = toks
            items = y.tolist() if isinstance(y, np.ndarray) else y
            self.y_is_str_ = all(isinstance(s, str) for s in items)
            self.max_target_length_ = int(ys.lengths.max())
        else:
            unseen = {t for s in ys.items for t in s} - set(self._target_vocabulary.index)
            if unseen:
                raise ValueError(
                    "y holds target tokens not seen at the first fit: "
                    f"{sorted(map(repr, unseen))[:5]}")
            self.max_target_length_ = max(self.max_target_length_, int(ys.lengths.max()))
        enc = self._target_vocabulary.encode(ys)
        targets = [np.append(t, END_INDEX).astype(INDEX_DTYPE) for t in enc.items]
        return _PairData(seqs, targets)

    @property
    def _target_vocabulary(self):
        """Target token -> index (from ``classes_``; 0 begin, 1 end)."""
        return Vocabulary(self.classes_.tolist())

    def _build_model(self, data, rng):
        source = (dict(input_size=int(self.n_features_per_step_)) if self.vocabulary_ is None
                  else dict(src_vocab=len(self.vocabulary_)))
        return Seq2Seq(len(self._target_vocabulary), outputs="tokens",
                       embedding_dim=int(self.embedding_dim), **source,
                       begin_index=BEGIN_INDEX, end_index=END_INDEX, random_state=rng,
                       **self._model_kwargs())

    def _max_len(self):
        if self.max_output_length is not None:
            return int(self.max_output_length)
        return int(1.5 * self.max_target_length_) + 2

    def _validation_score(self, data):
        pred = self._decode_batches(data.X, lambda X, L: self._greedy(X, L)[0])
        hits = [len(p) + 1 == len(t) and np.array_equal(p, t[:-1]) for p, t in zip(pred, data.y)]
        return float(np.mean(hits))

    # ------------------------------------------------------------ decoding
    def _greedy(self, X, lengths):
        tok, W, _ = self.model_.greedy(X, lengths, self._max_len())
        seqs, atts = [], []
        for b in range(len(lengths)):
            n = self.model_._cut(tok[b])
            keep = n - 1 if tok[b, n - 1] == END_INDEX else n
            seqs.append(tok[b, :keep])
            atts.append(W[b, :keep, :lengths[b]])
        return seqs, atts

    def _beam(self, X, lengths):
        toks, ws, _ = self.model_.beam_search(X, lengths, self._max_len(), int(self.beam_width),
                                              float(self.length_penalty))
        return toks, [w[:len(t), :lengths[b]] for b, (t, w) in enumerate(zip(toks, ws))]

    def _decode_indices(self, seqs):
        fn = self._greedy if self.beam_width == 1 else self._beam

        def run(X, lengths):
            t, a = fn(X, lengths)
            return list(zip(t, a))
        return self._decode_batches(seqs, run)

    def _to_tokens(self, idx, classes):
        toks = [classes[i - 2] for i in idx if i >= 2]
        return "".join(map(str, toks)) if self.y_is_str_ else list(toks)

    def predict(self, X, return_attention=False):
        """Decode every sequence of X (greedy, or beam search when
        ``beam_width > 1``), stopping at the end token or ``max_output_length``.

        Returns
        -------
        y_pred : ndarray of str (when y held strings) or list of token lists
        attention : list of (output length, input length) arrays
            Only with ``return_attention``: each row holds one output token's
            weights over the input tokens (it sums to 1).
        """
        self._check_predict_params()
        with limit(self.n_jobs):
            seqs = self._check_X(X, reset=False)
            res = self._decode_indices(seqs)
        classes = self.classes_.tolist()
        preds = [self._to_tokens(t, classes) for t, _ in res]
        if self.y_is_str_:
            out = np.empty(len(preds), dtype=object)
            out[:] = preds
            preds = out
        if return_attention:
            return preds, [np.asarray(a, dtype=np.float64) for _, a in res]
        return preds

    def score(self, X, y, sample_weight=None):
        """Exact-sequence accuracy: the fraction of outputs equal to y."""
        ys = check_sequences(y, dtype=None, tokens=True, name="y")
        pred = self.predict(X)
        if len(pred) != ys.n_samples:
            raise ValueError(f"X and y have different lengths: {len(pred)} sequences but "
                             f"{ys.n_samples} targets")
        hits = np.array([list(p) == list(t) for p, t in zip(pred, ys.items)], dtype=float)
        return float(np.average(hits, weights=sample_weight))

    def plot_attention(self, x, ax=None):
        """Heatmap of the attention of one input sequence ``x`` (a string or a
        token list): output tokens on the vertical axis, input tokens on the
        horizontal one.  Returns the matplotlib Figure."""
        if self.attention is None:
            raise ValueError("plot_attention needs attention (attention=None has none)")
        if self.vocabulary_ is None:
            x = np.asarray(x)
            pred, att = self.predict([x], return_attention=True)
            xs = list(range(len(x)))
        else:
            pred, att = self.predict([x], return_attention=True)
            xs = list(x) if not isinstance(x, str) else check_sequences(
                [x], dtype=None, tokens=True, tokenizer=self.tokenizer).items[0]
        ys = list(pred[0])
        ylabels = ys + (["<end>"] if len(att[0]) > len(ys) else [])
        return self._plot_matrix(att[0], xs, ylabels, ax, "attention")


@register
class Seq2SeqRegressor(RegressorMixin, _Seq2SeqBase):
    """Sequence-to-vector-sequence model with attention (forecasting).

    X is (n, T_in, F), (n, T_in) (univariate series of one fixed length: the
    width is ``n_features_in_`` and must be the same after fit; give other
    lengths as a list of (T_i, 1) arrays) or ragged; one-to-many (a sequence
    generated from one vector) is X of shape (n, 1, F); y is (n, T_out, k) (or
    (n, T_out) for k = 1).  The decoder feeds back its own previous output (the true one
    while teacher forcing; at step 0 a zero vector, which is the mean of the
    internally standardised targets).  Predictions are (n, T_out, k) with
    T_out = ``max_output_length`` or the fitted one.  Parameters are those of
    :class:`Seq2SeqClassifier` (``embedding_dim``, the tokenizer and vocabulary
    caps, and beam search unused).

    Attributes
    ----------
    y_mean_, y_scale_ : (k,) ndarray
        Per-variable standardisation of the targets (the loss is the MSE on
        that scale).
    n_outputs_ : int
        k.
    output_length_ : int
        T_out seen at fit.

    Examples
    --------
    >>> import numpy as np
    >>> from fastseq import Seq2SeqRegressor
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(40, 12, 2)).astype("float32")
    >>> reg = Seq2SeqRegressor(hidden_size=16, max_iter=2, random_state=0).fit(X, X[:, :5])
    >>> reg.predict(X[:3]).shape
    (3, 5, 2)
    """

    _score_name = "r2"

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # y is a sequence per sample, (n, T_out[, k]): never one value per sample
        tags.target_tags.single_output = False
        tags.target_tags.multi_output = True
        return tags

    @classmethod
    def _expected_failed_checks(cls):
        """scikit-learn checks that cannot apply by design, check -> reason."""
        shape = ("predictions are (n_samples, T_out, k) for every y, so the check's 2-D y "
                 "(n_samples, T_out) gets 3-D predictions (k = 1), and the check compares "
                 "their shape with y's (the rest of it passes when predictions are reshaped)")
        return {"check_regressors_train": shape, "check_regressor_multioutput": shape}

    def _check_X(self, X, reset):
        seqs = check_sequences(X, dtype=self._dtype if reset else self.model_.flat.dtype, name="X")
        self._check_conv_lengths(seqs, reset)
        if reset:
            self._set_input_shape(X, seqs)
        else:
            self._check_input_shape(X, seqs)
        return seqs

    def _check_y(self, y, n):
        if y is None:
            raise ValueError("Seq2SeqRegressor requires y to be passed, but the target y is None: "
                             "give target sequences (n_samples, T_out, k)")
        try:
            arr = np.asarray(y, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"y must be a real array (n, T_out, k): {exc}") from None
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if arr.ndim != 3:
            raise ValueError(f"y must have shape (n, T_out, k) or (n, T_out), got {arr.shape}")
        if len(arr) != n:
            raise ValueError(
                f"X and y have different lengths: {n} sequences but {len(arr)} targets")
        if arr.shape[1] == 0 or arr.shape[2] == 0:
            raise ValueError(f"y has empty target sequences (shape {arr.shape})")
        if not np.all(np.isfinite(arr)):
            raise ValueError("y contains NaN or infinity")
        return arr

    def _prepare_fit(self, X, y, reset):
        seqs = self._check_X(X, reset)
        arr = self._check_y(y, seqs.n_samples)
        if reset:
            self.n_outputs_ = arr.shape[2]
            self.output_length_ = arr.shape[1]
            flat = arr.reshape(-1, arr.shape[2])
            self.y_mean_ = flat.mean(axis=0)
            sc = flat.std(axis=0)
            self.y_scale_ = np.where(sc > 1e-12, sc, 1.0)
        elif arr.shape[2] != self.n_outputs_:
            raise ValueError(
                f"y has {arr.shape[2]} outputs per step, the first fit had {self.n_outputs_}")
        dt = self._dtype if reset else self.model_.flat.dtype
        z = ((arr - self.y_mean_) / self.y_scale_).astype(dt)
        return _PairData(seqs, list(z))

    def _build_model(self, data, rng):
        return Seq2Seq(int(self.n_outputs_), outputs="vectors",
                       input_size=int(self.n_features_per_step_), random_state=rng,
                       **self._model_kwargs())

    def _steps(self):
        if self.max_output_length is not None:
            return int(self.max_output_length)
        return self.output_length_

    def _predict_z(self, seqs, steps):
        def run(X, lengths):
            out, W, _ = self.model_.greedy(X, lengths, steps)
            return [(out[b], W[b, :, :lengths[b]]) for b in range(len(lengths))]
        return self._decode_batches(seqs, run)

    def _validation_score(self, data):
        res = self._predict_z(data.X, len(data.y[0]))
        z = np.stack([r[0] for r in res]).astype(np.float64)
        y = np.stack(data.y).astype(np.float64)
        ss_res = ((y - z) ** 2).sum()
        ss_tot = ((y - y.mean(axis=0)) ** 2).sum()
        return float(1.0 - ss_res / ss_tot) if ss_tot > 0 else 0.0

    def predict(self, X, return_attention=False):
        """Forecasts (n, T_out, k); with ``return_attention`` also a list of
        (T_out, input length) attention matrices (rows sum to 1)."""
        self._check_predict_params()
        with limit(self.n_jobs):
            seqs = self._check_X(X, reset=False)
            res = self._predict_z(seqs, self._steps())
        y = np.stack([r[0] for r in res]).astype(np.float64) * self.y_scale_ + self.y_mean_
        if return_attention:
            return y, [np.asarray(r[1], dtype=np.float64) for r in res]
        return y

    def score(self, X, y, sample_weight=None):
        """R^2 over every output step and variable (flattened)."""
        from sklearn.metrics import r2_score
        pred = self.predict(X)
        arr = self._check_y(y, len(pred))
        if arr.shape[1] != pred.shape[1]:
            raise ValueError(f"y has {arr.shape[1]} steps, predictions have {pred.shape[1]} "
                             "(set max_output_length)")
        return float(r2_score(arr.reshape(len(arr), -1), pred.reshape(len(pred), -1),
                              sample_weight=sample_weight))

    def plot_attention(self, x, ax=None):
        """Heatmap of the attention of one input sequence ``x`` (T_in, F):
        output steps down, input steps across.  Returns the matplotlib Figure."""
        if self.attention is None:
            raise ValueError("plot_attention needs attention (attention=None has none)")
        _, att = self.predict([np.asarray(x)], return_attention=True)
        A = att[0]
        return self._plot_matrix(A, list(range(A.shape[1])), list(range(A.shape[0])), ax,
                                 "attention")

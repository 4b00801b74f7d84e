"""``CTCClassifier``: sequence to a shorter label sequence, trained with CTC."""

import inspect
import numbers

import numpy as np
from sklearn.utils._param_validation import Interval

from .._config import INDEX_DTYPE
from .._input import Dataset
from ..metrics import edit_distance
from ..network.ctc import _beam_one, _greedy_one, required_length
from ..network.dense import log_softmax
from ..persistence import register
from ._base import BaseRNN
from .tagger import _CHECKS_FITTING_ON_SAMPLE_LABELS


@register
class CTCClassifier(BaseRNN):
    """Recurrent network trained with connectionist temporal classification
    (Graves et al. 2006): each input sequence maps to a label sequence that
    is no longer than it, with no alignment given (handwriting, speech,
    gesture sequences).

    The network emits, at every step, a distribution over the labels plus a
    blank (class 0); a label sequence is read off by collapsing repeats and
    dropping blanks (two equal adjacent labels need a blank between them, so
    an input needs at least ``len(label) + number of equal adjacent pairs``
    steps: a ValueError names any sequence too short before training).

    ``y`` is a list of strings (each character a label) or of label
    sequences (lists or 1-D arrays of hashable labels: ints, strings...);
    labels are mapped to 1..n_classes internally, so any hashable value,
    0 included, is a label (the blank is internal).  An empty target ("" or
    []) is allowed: it teaches the model to emit only blanks.  X takes every
    form of :class:`~fastseq.estimators._base.BaseRNN` (3-D, 2-D, ragged,
    tokens with ``embedding_dim``).

    The other parameters are those of
    :class:`~fastseq.estimators._base.BaseRNN` (``pooling`` is not used: the
    output is per step).  With ``early_stopping`` the validation score is
    minus the character error rate of greedy decoding.

    Parameters
    ----------
    beam_width : int >= 1, default 1
        1: best-path (greedy) decoding; more: prefix beam search keeping this
        many prefixes (slower: a Python loop over steps and prefixes).

    Attributes
    ----------
    classes_ : ndarray
        The label alphabet, without the blank (sorted when the labels are
        mutually comparable); label ``classes_[i]`` is output class ``i + 1``
        of :meth:`predict_proba`.
    y_is_str_ : bool
        y held strings: :meth:`predict` returns strings.
    n_features_in_, n_iter_, loss_curve_, validation_scores_, best_loss_, ...
        As the other estimators.
    """

    _parameter_constraints = {
        **BaseRNN._parameter_constraints,
        "beam_width": [Interval(numbers.Integral, 1, None, closed="left")],
    }
    _score_name = "neg_character_error_rate"

    def __init__(self, *, beam_width=1, **params):
        super().__init__(**params)
        self.beam_width = beam_width

    # sklearn reads the parameters from the signature: BaseRNN's plus beam_width
    __init__.__signature__ = inspect.signature(BaseRNN.__init__).replace(parameters=[
        *[p for p in inspect.signature(BaseRNN.__init__).parameters.values()
          if p.kind != p.VAR_KEYWORD],
        inspect.Parameter("beam_width", inspect.Parameter.KEYWORD_ONLY, default=1)])

    def partial_fit(self, X, y):
        """One epoch over (X, y) from the current weights."""
        return self._partial_fit(X, y)

    # ---------------------------------------------------------------- data
    def _label_sequences(self, y, n):
        if y is None:
            raise ValueError("CTCClassifier requires y to be passed, but the target y is None: "
                             "give one label sequence (or string) per sequence of X")
        if isinstance(y, str) or not hasattr(y, "__len__"):
            raise TypeError("y must be a list of strings or of label sequences")
        if isinstance(y, np.ndarray) and y.ndim == 2:
            y = list(y)
        if len(y) != n:
            raise ValueError(f"X and y have different lengths: {n} sequences but {len(y)} "
                             "label sequences")
        out = []
        for i, s in enumerate(y):
            if isinstance(s, str):
                out.append(list(s))
                continue
            if isinstance(s, np.ndarray):
                if s.ndim != 1:
                    raise ValueError(f"y[{i}] must be a string or a 1-D label sequence, got "
                                     f"shape {s.shape}")
                s = s.tolist()
            elif not isinstance(s, (list, tuple)):
                raise TypeError(
                    f"y[{i}] must be a string or a sequence of labels (CTC predicts a label "
                    f"sequence per input sequence), got {type(s).__name__}; for one label per "
                    "sequence use RNNClassifier")
            for t in s:
                if isinstance(t, float) and not np.isfinite(t):
                    raise ValueError(f"y[{i}] contains NaN or infinity")
                if isinstance(t, complex):
                    raise TypeError(f"y[{i}] holds complex numbers, which are not labels")
                try:
                    hash(t)
                except TypeError:
                    raise TypeError(f"y[{i}] holds {t!r}: labels must be hashable") from None
            out.append(list(s))
        return out

    def _prepare_fit(self, X, y, reset):
        seqs = self._check_X(X, reset)
        items = y.tolist() if isinstance(y, np.ndarray) and y.ndim == 1 else y
        ys = self._label_sequences(y, seqs.n_samples)
        if reset:
            labels = list(dict.fromkeys(t for s in ys for t in s))
            if not labels:
                raise ValueError("y holds no label at all (every target is empty)")
            try:
                labels = sorted(labels)
            except TypeError:
                pass  # not comparable: first appearance
            if all(isinstance(t, numbers.Integral) and not isinstance(t, bool) for t in labels):
                self.classes_ = np.array(labels, dtype=np.int64)
            else:
                self.classes_ = np.empty(len(labels), dtype=object)
                self.classes_[:] = labels
            self.y_is_str_ = all(isinstance(s, str) for s in items)
        index = {t: i + 1 for i, t in enumerate(self.classes_.tolist())}
        codes = []
        steps = self._pooled_lengths(seqs.lengths, reset)
        pooled = bool(np.any(steps != seqs.lengths))
        for i, s in enumerate(ys):
            try:
                c = np.array([index[t] for t in s], dtype=INDEX_DTYPE)
            except KeyError as exc:
                raise ValueError(f"y[{i}] holds the label {exc.args[0]!r}, not seen at the first "
                                 f"fit; known labels are {self.classes_.tolist()[:20]}") from None
            need = required_length(c)
            if need > steps[i]:
                after = (f" ({steps[i]} after the convolution front end's pooling, conv_pool)"
                         if pooled else "")
                raise ValueError(
                    f"X[{i}] has {seqs.lengths[i]} steps{after} but its label sequence of "
                    f"length {len(c)} needs at least {need} (one step per label plus a blank "
                    "between each pair of equal adjacent labels)")
            codes.append(c)
        return Dataset(seqs, codes, y_pad=0)

    def _build_model(self, data, rng):
        return self._new_model(self._model_config(len(self.classes_) + 1, "ctc", "sequence"), rng)

    def _validation_score(self, data):
        pred = [_greedy_one(z)[0] for z in self._predict_raw(data.X)]
        errors = sum(edit_distance(t.tolist(), p.tolist()) for t, p in zip(data.y, pred))
        return -errors / max(1, sum(len(t) for t in data.y))

    # ---------------------------------------------------------- prediction
    def _step_log_probs(self, X):
        self._check_fitted()
        return [log_softmax(z.astype(np.float64))
                for z in self._predict_raw(self._check_X(X, reset=False))]

    def predict_proba(self, X):
        """Per-step distributions: a list of (T_i, n_classes + 1) arrays,
        column 0 the blank, column ``i + 1`` the label ``classes_[i]``."""
        with self._limit():
            return [np.exp(lp) for lp in self._step_log_probs(X)]

    def predict_log_proba(self, X):
        """Logarithm of :meth:`predict_proba` (computed stably)."""
        with self._limit():
            return self._step_log_probs(X)

    def decode(self, X):
        """Label sequences and their log-probabilities: a list of
        ``(labels, log_prob)``.  Greedy decoding (``beam_width == 1``) scores
        the best path; prefix beam search the labelling's total over the
        alignments it kept."""
        self._validate_params()
        bw = int(self.beam_width)
        with self._limit():
            lps = self._step_log_probs(X)
        res = [_greedy_one(lp) if bw == 1 else _beam_one(lp, bw, None) for lp in lps]
        classes = self.classes_.tolist()
        out = []
        for idx, score in res:
            labels = [classes[i - 1] for i in idx.tolist()]
            out.append(("".join(map(str, labels)) if self.y_is_str_ else labels, score))
        return out

    def predict(self, X):
        """Decoded label sequences: an object array of strings when fitted on
        strings, else a list of label lists."""
        preds = [p for p, _ in self.decode(X)]
        if self.y_is_str_:
            out = np.empty(len(preds), dtype=object)
            out[:] = preds
            return out
        return preds

    def score(self, X, y, sample_weight=None):
        """Exact-sequence accuracy: the fraction of predictions equal to
        their target (labels never seen at fit simply count as errors)."""
        pred = self.predict(X)
        if y is None or isinstance(y, str) or not hasattr(y, "__len__"):
            raise TypeError("y must be a list of strings or of label sequences")
        ys = []
        for i, t in enumerate(y):
            if not isinstance(t, (str, list, tuple, np.ndarray)):
                raise TypeError(f"y[{i}] must be a string or a sequence of labels, got "
                                f"{type(t).__name__}")
            ys.append(t.tolist() if isinstance(t, np.ndarray) else list(t))
        if len(ys) != len(pred):
            raise ValueError(f"X and y have different lengths: {len(pred)} sequences but "
                             f"{len(ys)} targets")
        hits = np.array([list(p) == t for p, t in zip(pred, ys)], dtype=float)
        return float(np.average(hits, weights=sample_weight))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        return tags

    @classmethod
    def _expected_failed_checks(cls):
        """scikit-learn checks that cannot apply by design, check -> reason:
        every check that fits with one label per sample.  The test suite runs
        them through a thin adapter that reads each label as a one-label
        sequence (tests/test_ctc_sklearn.py)."""
        reason = ("y is one label sequence (a string or a list of labels) per input sequence; "
                  "the check fits with one scalar label per sample, which is refused with a "
                  "TypeError that points to RNNClassifier")
        return dict.fromkeys(_CHECKS_FITTING_ON_SAMPLE_LABELS, reason)


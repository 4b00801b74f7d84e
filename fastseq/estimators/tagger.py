"""``SequenceTagger``: many-to-many of equal length, one label per step."""

import numpy as np
from sklearn.utils.multiclass import check_classification_targets

from .._input import Dataset
from ._base import BaseRNN
from ._stream import stream


class SequenceTagger(BaseRNN):
    """Recurrent sequence labeller (part-of-speech tagging, event detection...).

    ``y`` is a list of label sequences (or a 2-D array for a 2-D/3-D X), one
    label per time step of the matching sequence of X; ``predict`` returns a
    list of label arrays of the input lengths.  The softmax cross-entropy is
    averaged over valid steps (padding is masked out).  A bidirectional
    encoder lets each label see the whole sequence.  Parameters are those of
    :class:`fastseq.estimators._base.BaseRNN` (``pooling`` is not used).

    Examples
    --------
    >>> from fastseq import SequenceTagger
    >>> words = [["the", "cat", "sat"], ["a", "dog", "ran", "off"]]
    >>> tags = [["DET", "NOUN", "VERB"], ["DET", "NOUN", "VERB", "ADP"]]
    >>> tagger = SequenceTagger(embedding_dim=8, hidden_size=16, max_iter=3,
    ...                         random_state=0).fit(words, tags)
    >>> [p.shape for p in tagger.predict([["the", "dog"], ["a", "cat", "sat"]])]
    [(2,), (3,)]
    """

    _score_name = "accuracy"

    def partial_fit(self, X, y, classes=None):
        """One epoch over (X, y) from the current weights."""
        self._partial_classes = classes
        try:
            return self._partial_fit(X, y)
        finally:
            self._partial_classes = None

    def _prepare_fit(self, X, y, reset):
        seqs = self._check_X(X, reset)
        if y is None:
            raise ValueError("SequenceTagger requires y to be passed, but the target y is None: "
                             "give one label sequence per sequence of X")
        if isinstance(y, np.ndarray) and y.ndim == 2:
            y = list(y)
        if isinstance(y, str) or not hasattr(y, "__len__"):
            raise TypeError("y must be a list of label sequences")
        if len(y) != seqs.n_samples:
            raise ValueError(f"X and y have different lengths: {seqs.n_samples} sequences "
                             f"but {len(y)} label sequences")
        ys = []
        for i, yi in enumerate(y):
            a = np.asarray(list(yi) if isinstance(yi, str) else yi)
            if a.ndim != 1:
                raise ValueError(f"y[{i}] must be 1-D (one label per step), got shape {a.shape}")
            if len(a) != seqs.lengths[i]:
                raise ValueError(f"y[{i}] has {len(a)} labels but X[{i}] has {seqs.lengths[i]} steps")
            if a.dtype.kind == "c":
                raise TypeError(f"y[{i}] must hold labels, got complex numbers")
            if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
                raise ValueError(f"y[{i}] contains NaN or infinity")
            ys.append(a)
        allv = np.concatenate(ys)
        check_classification_targets(allv)
        if reset:
            classes = getattr(self, "_partial_classes", None)
            self.classes_ = np.unique(allv) if classes is None else np.unique(np.asarray(classes))
            if len(self.classes_) < 2:
                raise ValueError(f"y has 1 class ({self.classes_[0]!r}); a tagger needs "
                                 "at least 2 classes")
        codes = []
        for a in ys:
            c = np.clip(np.searchsorted(self.classes_, a), 0, len(self.classes_) - 1)
            if np.any(self.classes_[c] != a):
                raise ValueError(f"y holds labels not seen at the first fit; known classes are "
                                 f"{self.classes_.tolist()}")
            codes.append(c.astype(np.int64))
        return Dataset(seqs, codes, y_pad=0)

    def _build_model(self, data, rng):
        filters, _, pool = self._conv_params()  # "auto" resolved
        if filters is not None and pool != 1:
            raise ValueError(
                f"SequenceTagger predicts one label per input step, so its convolution front "
                f"end cannot pool: conv_pool must be 1, got {pool}")
        return self._new_model(self._model_config(len(self.classes_), "softmax", "sequence"), rng)

    def _validation_score(self, data):
        pred = self._predict_raw(data.X)
        hit = sum(int(np.sum(p.argmax(axis=1) == t)) for p, t in zip(pred, data.y))
        return hit / float(data.lengths.sum())

    def _step_logits(self, X):
        self._check_fitted()
        return self._predict_raw(self._check_X(X, reset=False))

    def predict_proba(self, X):
        """List of (T_i, n_classes) probabilities."""
        from ..network.dense import softmax
        with self._limit():
            return [softmax(z) for z in self._step_logits(X)]

    def predict(self, X):
        """List of label arrays (T_i,), one per sequence."""
        with self._limit():
            return [self.classes_[z.argmax(axis=1)] for z in self._step_logits(X)]

    def predict_stream(self, X, state=None, lengths=None):
        """Streaming tagging: feed the next steps of a batch of streams.

        Returns the labels of the new steps (a list of (t_i,) arrays, one
        per stream) and the new state; fed piece by piece, the labels are
        those of ``predict`` on the whole sequences.  Needs
        ``bidirectional=False`` (a label then depends on the past only).

        Parameters
        ----------
        X : array or list
            The next steps of each stream: a 3-D array (n_streams, n_steps,
            n_features) (with ``lengths``, streams may get fewer steps), a
            2-D array (n_streams, n_steps) of univariate streams (any
            n_steps), a list of one (t_i, n_features) or (t_i,) array per
            stream (t_i may be 0: a stream without new steps), or token
            sequences for a token model.
        state : StreamState or None
            None for new streams; else the state returned by the previous
            call, for the same streams in the same order.
        lengths : (n_streams,) int, optional
            New steps of each stream in a 3-D or 2-D array X, in 0..n_steps;
            the rest is padding and never read.

        Returns
        -------
        labels : list of (t_i,) ndarray
        state : StreamState
            See :meth:`fastseq.RNNClassifier.predict_stream`.
        """
        with self._limit():
            z, state = stream(self, X, state, lengths)
        return [self.classes_[r.argmax(axis=1)] for r in z], state

    def predict_proba_stream(self, X, state=None, lengths=None):
        """:meth:`predict_stream` with probabilities (t_i, n_classes) per stream."""
        from ..network.dense import softmax
        with self._limit():
            z, state = stream(self, X, state, lengths)
        return [softmax(r) for r in z], state

    def score(self, X, y):
        """Accuracy over all time steps."""
        pred = self.predict(X)
        if len(y) != len(pred):
            raise ValueError(f"X and y have different lengths: {len(pred)} and {len(y)}")
        hit = total = 0
        for p, t in zip(pred, y):
            t = np.asarray(list(t) if isinstance(t, str) else t)
            if len(t) != len(p):
                raise ValueError("each label sequence of y must match its sequence's length")
            hit += int(np.sum(p == t))
            total += len(t)
        return hit / total

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        return tags

    @classmethod
    def _expected_failed_checks(cls):
        """scikit-learn checks that cannot apply by design, check -> reason:
        every check that fits with one label per sample.  The test suite runs
        them all through a thin adapter that repeats each sample's label over
        its steps (tests/test_estimators_sklearn.py)."""
        reason = ("y is one label per time step (a list of label sequences, or an "
                  "(n_samples, n_timesteps) array for a 2-D X); the check fits with one label "
                  "per sample, which is refused with a ValueError")
        return dict.fromkeys(_CHECKS_FITTING_ON_SAMPLE_LABELS, reason)


#: the scikit-learn checks (as of 1.9) that fit with y of one label per sample
_CHECKS_FITTING_ON_SAMPLE_LABELS = (
    "check_fit_score_takes_y", "check_estimators_overwrite_params",
    "check_dont_overwrite_parameters", "check_estimators_fit_returns_self",
    "check_readonly_memmap_input", "check_n_features_in_after_fitting",
    "check_positive_only_tag_during_fit", "check_estimators_dtypes", "check_dtype_object",
    "check_pipeline_consistency", "check_estimators_nan_inf", "check_estimators_pickle",
    "check_f_contiguous_array_estimator", "check_methods_sample_order_invariance",
    "check_methods_subset_invariance", "check_fit2d_1sample", "check_fit2d_1feature",
    "check_dict_unchanged", "check_fit_idempotent", "check_fit_check_is_fitted",
    "check_n_features_in", "check_fit2d_predict1d", "check_array_api_input",
)

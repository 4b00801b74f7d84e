"""``RNNClassifier``: many-to-one sequence classification (binary, multiclass)."""

import numpy as np
from sklearn.base import ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import column_or_1d

from .._input import Dataset
from ..network.dense import softmax
from ._base import BaseRNN
from ._stream import stream


def check_labels(y, n, name="y"):
    """1-D label array of length ``n`` (numbers or strings); ValueError/TypeError
    naming the problem."""
    if y is None:
        raise ValueError(f"{name} is None: this estimator requires y to be passed, but the target y is None")
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = column_or_1d(y, warn=True)
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one label per sequence), got shape {y.shape}")
    if y.dtype.kind == "c":
        raise TypeError(f"{name} must hold class labels, got complex numbers")
    if y.dtype.kind == "f" and not np.all(np.isfinite(y)):
        raise ValueError(f"{name} contains NaN or infinity")
    if len(y) != n:
        raise ValueError(f"X and y have different lengths: {n} sequences but {len(y)} labels")
    return y


class RNNClassifier(ClassifierMixin, BaseRNN):
    """Recurrent many-to-one classifier (think ``MLPClassifier`` over sequences).

    The encoder (any cell, stacked, bidirectional, optional token embedding)
    reads each sequence; its last valid state (or pooled states, see
    ``pooling``) feeds a softmax output layer trained with cross-entropy.
    All parameters are those of :class:`fastseq.estimators._base.BaseRNN`.

    Attributes
    ----------
    classes_ : (n_classes,) ndarray
    n_features_in_, n_features_per_step_, n_timesteps_in_, feature_names_in_
        The input's shape at fit (see the base class: n_features_in_ is the
        width of a 2-D X, else the features per step).
    vocabulary_ : Vocabulary or None
    n_iter_, t_, loss_curve_, validation_loss_curve_, validation_scores_,
    best_loss_, best_validation_score_, grad_norm_curve_, fit_time_,
    n_skipped_updates_
        Training history (see the base class).

    Examples
    --------
    >>> import numpy as np
    >>> from fastseq import RNNClassifier
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(60, 15, 2)).astype("float32")
    >>> y = np.where(X[:, :, 0].mean(axis=1) > 0, "up", "down")
    >>> clf = RNNClassifier(cell="gru", hidden_size=16, max_iter=5, random_state=0).fit(X, y)
    >>> clf.classes_
    array(['down', 'up'], dtype='<U4')
    >>> clf.predict_proba(X[:3]).shape
    (3, 2)
    >>> clf.predict([X[0, :9], X[1]]).shape      # ragged: a list of (T_i, F) arrays
    (2,)
    """

    _score_name = "accuracy"
    _auto_front_end = True

    def partial_fit(self, X, y, classes=None):
        """One epoch over (X, y) from the current weights.  ``classes`` (all
        labels) is needed at the first call unless y holds every class."""
        self._partial_classes = classes
        try:
            return self._partial_fit(X, y)
        finally:
            self._partial_classes = None

    def _prepare_fit(self, X, y, reset):
        seqs = self._check_X(X, reset)
        y = check_labels(y, seqs.n_samples)
        check_classification_targets(y)
        if reset:
            classes = getattr(self, "_partial_classes", None)
            self.classes_ = np.unique(y) if classes is None else np.unique(np.asarray(classes))
            if len(self.classes_) < 2:
                raise ValueError(
                    f"y has 1 class ({self.classes_[0]!r}); a classifier needs at "
                    "least 2 classes")
        codes = np.searchsorted(self.classes_, y)
        codes = np.clip(codes, 0, len(self.classes_) - 1)
        unknown = self.classes_[codes] != y
        if np.any(unknown):
            raise ValueError(
                f"y holds labels not seen at the first fit: {np.unique(y[unknown])[:5].tolist()}; "
                f"known classes are {self.classes_.tolist()}")
        return Dataset(seqs, codes.astype(np.int64))

    def _build_model(self, data, rng):
        return self._new_model(self._model_config(len(self.classes_), "softmax"), rng)

    def _split_validation(self, data, rng):
        if not self.early_stopping or self.validation_holdout == "tail":
            return super()._split_validation(data, rng)
        from sklearn.model_selection import StratifiedShuffleSplit
        y = data.y
        n = data.n_samples
        n_val = int(round(self.validation_fraction * n))
        counts = np.bincount(y)
        if n_val >= len(self.classes_) and n - n_val >= len(self.classes_) and counts[counts > 0].min() >= 2:
            sss = StratifiedShuffleSplit(1, test_size=n_val, random_state=int(rng.integers(2**31 - 1)))
            tr, va = next(sss.split(np.zeros(n), y))
            return data.take(np.sort(tr)), data.take(np.sort(va))
        return super()._split_validation(data, rng)

    def _validation_score(self, data):
        logits = np.stack(self._predict_raw(data.X))
        return float(np.mean(logits.argmax(axis=1) == data.y))

    def _logits(self, X):
        self._check_fitted()
        return np.stack(self._predict_raw(self._check_X(X, reset=False)))

    def decision_function(self, X):
        """Logits (n, n_classes); for binary problems the (n,) difference of the
        two logits (positive means ``classes_[1]``)."""
        with self._limit():
            z = self._logits(X)
        return z[:, 1] - z[:, 0] if z.shape[1] == 2 else z

    def predict_proba(self, X):
        """Class probabilities (n, n_classes), columns ordered as ``classes_``."""
        with self._limit():
            return softmax(self._logits(X))

    def predict_log_proba(self, X):
        return np.log(self.predict_proba(X))

    def predict(self, X):
        """Labels (n,) from ``classes_``."""
        with self._limit():
            z = self._logits(X)
        return self.classes_[z.argmax(axis=1)]

    def predict_stream(self, X, state=None, lengths=None):
        """Streaming prediction: feed the next steps of a batch of streams.

        Returns the label of each stream as if it ended after these steps,
        and the new state.  Fed piece by piece, the last call's labels are
        ``predict`` on the whole sequences (the ``"mean"`` / ``"max"``
        readouts keep their running sum / maximum in the state).  Needs
        ``bidirectional=False``.

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
        labels : (n_streams,) ndarray
        state : StreamState
            Plain arrays (picklable) tied to this fitted model: refused by
            another model, or after this one's weights changed.
        """
        with self._limit():
            z, state = stream(self, X, state, lengths)
        return self.classes_[z.argmax(axis=1)], state

    def predict_proba_stream(self, X, state=None, lengths=None):
        """:meth:`predict_stream` with class probabilities (n_streams,
        n_classes) instead of labels."""
        with self._limit():
            z, state = stream(self, X, state, lengths)
        return softmax(z), state

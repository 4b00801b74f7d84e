"""Transformers for sequence pipelines: ``SequenceScaler`` and ``TimeDistributed``.

Both read X in every format the estimators take (see DESIGN.md) and give it
back in the same format, so that ``make_pipeline(SequenceScaler(),
RNNClassifier())`` works on each of them:

- a 3-D array ``(n_samples, n_timesteps, n_features)`` -> a 3-D array (a 3-D
  array has no padding in fastseq: every step is valid);
- a 2-D array ``(n_samples, n_timesteps)`` of univariate series -> a 2-D
  array of the same shape when the transformer gives one value per step
  (a 3-D ``(n_samples, n_timesteps, k)`` array when it gives ``k != 1``).
  The series are one feature: it is standardised over every step of every
  series, not column by column as ``StandardScaler`` would;
- a list of arrays ``(T_i, n_features)`` or ``(T_i,)`` (the ragged form) ->
  a list of arrays ``(T_i, k)`` (``(T_i,)`` for 1-D items when ``k == 1``),
  also when the lengths happen to be equal.  Items may be empty (``T_i =
  0``, e.g. streams without new steps: see ``predict_stream``), as long as
  a fit sees at least one step.  A list of plain numbers (nested
  lists) is read as the array it makes.

Both fit their per-step transformer on every valid step of every sequence
stacked into one ``(sum T_i, n_features)`` matrix, and apply it to each step.
As the estimators, ``n_features_in_`` is the width of a 2-D X (its number of
steps, which a 2-D X at transform must then match) and the features per step
otherwise (``n_features_per_step_``).
"""

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin, clone
from sklearn.preprocessing import StandardScaler
from sklearn.utils._param_validation import HasMethods
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import _check_feature_names, _check_feature_names_in, check_is_fitted

from ._input import real_array, refuse_non_sequences
from ._validation import check_fitted_width


# --------------------------------------------------------------------- input
class _Steps:
    """X in any accepted format as its stacked valid steps.

    Attributes
    ----------
    steps : (N, F) ndarray, N = sum of the lengths
    lengths : (n,) int64
    form : {"3d", "2d", "list"}
    item_1d : list of bool (``form == "list"``): which items were 1-D
    """

    def __init__(self, steps, lengths, form, item_1d=None):
        self.steps, self.lengths, self.form, self.item_1d = steps, lengths, form, item_1d

    @property
    def n_columns(self):
        """The width of a 2-D X (its number of steps), else None."""
        return int(self.lengths[0]) if self.form == "2d" else None

    def rebuild(self, out):
        """Transformed rows (N, k) -> the input's format."""
        k = out.shape[1]
        if self.form == "list":
            parts = np.split(out, np.cumsum(self.lengths)[:-1])
            return [p[:, 0].copy() if (one and k == 1) else p
                    for p, one in zip(parts, self.item_1d)]
        n, T = len(self.lengths), int(self.lengths[0])
        out = out.reshape(n, T, k)
        if self.form == "2d" and k == 1:
            return out[:, :, 0]
        return out


def _as_float(a, name, allow_nan):
    """``a`` as a float32/float64 array (other real dtypes -> float64)."""
    arr = real_array(a, name)
    if arr.dtype not in (np.float32, np.float64):
        arr = arr.astype(np.float64)
    if allow_nan:
        if np.isinf(arr).any():
            raise ValueError(f"{name} contains infinity")
    elif not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinity: fill or drop missing steps "
                         "first (or wrap an imputer in TimeDistributed)")
    return arr


def _check_input(X, allow_nan, name="X"):
    """Validate ``X`` (any accepted format) -> :class:`_Steps`."""
    refuse_non_sequences(X, name)
    items = None
    if isinstance(X, (list, tuple)):
        if len(X) == 0:
            raise ValueError(f"{name} is empty: at least one sequence is required")
        if any(isinstance(s, np.ndarray) for s in X):
            items = list(X)
        else:
            try:
                arr = np.asarray(X)
                items = list(X) if arr.dtype.kind == "O" else None
            except ValueError:
                items = list(X)
        if items is None:
            X = arr
    if items is not None:
        return _check_items(items, allow_nan, name)
    if not hasattr(X, "__array__") and not isinstance(X, np.ndarray):
        raise TypeError(f"{name} must be an array or a list of sequences, got {type(X).__name__}")
    arr = _as_float(X, name, allow_nan)
    if arr.ndim not in (2, 3):
        raise ValueError(
            f"{name} must be 3-D (n_samples, n_timesteps, n_features), 2-D "
            f"(n_samples, n_timesteps) or a list of 2-D arrays; got shape {arr.shape}. "
            "Reshape your data: a single univariate sequence is X.reshape(1, -1)")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty: got shape {arr.shape}, at least one sequence is required")
    if arr.shape[1] == 0:
        raise ValueError(f"{name} has zero time steps: 0 feature(s) (shape={arr.shape}) while a "
                         "minimum of 1 is required.")
    if arr.ndim == 3 and arr.shape[2] == 0:
        raise ValueError(f"{name} has zero features per step (shape {arr.shape})")
    n, T = arr.shape[:2]
    F = arr.shape[2] if arr.ndim == 3 else 1
    lengths = np.full(n, T, dtype=np.int64)
    return _Steps(arr.reshape(n * T, F), lengths, "3d" if arr.ndim == 3 else "2d")


def _check_items(items, allow_nan, name):
    parts, one, F = [], [], None
    for i, s in enumerate(items):
        a = _as_float(s, f"{name}[{i}]", allow_nan)
        one.append(a.ndim == 1)
        if a.ndim == 1:
            a = a[:, None]
        if a.ndim != 2:
            raise ValueError(f"{name}[{i}] must be a 2-D array (n_timesteps, n_features) or "
                             f"1-D (n_timesteps,), got shape {a.shape}")
        if a.shape[1] == 0:
            raise ValueError(f"{name}[{i}] has zero features per step")
        if F is None:
            F = a.shape[1]
        elif a.shape[1] != F:
            raise ValueError(f"{name} mixes feature counts: {name}[0] has {F} features per step, "
                             f"{name}[{i}] has {a.shape[1]}")
        parts.append(a)
    dtype = np.result_type(*[p.dtype for p in parts])
    steps = np.concatenate(parts, axis=0).astype(dtype, copy=False)
    lengths = np.array([len(p) for p in parts], dtype=np.int64)
    return _Steps(steps, lengths, "list", one)


def _step_targets(y, lengths):
    """Per-sample targets repeated over each sample's steps; a list of
    per-step sequences (one label per step, as SequenceTagger's y) is
    concatenated."""
    if y is None:
        return None
    n = len(lengths)
    if isinstance(y, (list, tuple)) and len(y) == n and all(
            hasattr(t, "__len__") and not isinstance(t, str) and len(t) == lengths[i]
            for i, t in enumerate(y)) and not all(lengths == 1):
        return np.concatenate([np.asarray(t) for t in y], axis=0)
    arr = np.asarray(y)
    if arr.ndim == 0 or len(arr) != n:
        raise ValueError(f"y must have one entry per sequence ({n}), or be a list of one label "
                         f"per step of each sequence; got {len(arr) if arr.ndim else 'a scalar'}")
    return np.repeat(arr, lengths, axis=0)


# --------------------------------------------------------------- transformers
def _inner_has(name):
    """``available_if`` test: the (fitted, else to-be-fitted) per-step
    transformer has method ``name``."""
    def check(self):
        inner = self.inner_ if hasattr(self, "inner_") else self._make_inner()
        return hasattr(inner, name)
    return check


class _StepTransformer(TransformerMixin, BaseEstimator, auto_wrap_output_keys=None):
    """Shared machinery: a per-step transformer fitted on the stacked valid
    steps (``inner_``), applied step by step."""

    _allow_nan = False

    def _make_inner(self):
        raise NotImplementedError

    def _nan_ok(self):
        return self._allow_nan

    def _read(self, X, reset):
        steps = _check_input(X, self._nan_ok())
        name = type(self).__name__
        if reset:
            if steps.steps.shape[0] == 0:
                raise ValueError(f"X has no step: every sequence is empty; {name} needs at "
                                 "least one step to fit")
            self.n_features_per_step_ = int(steps.steps.shape[1])
            self.n_timesteps_in_ = steps.n_columns
            self.n_features_in_ = self.n_timesteps_in_ or self.n_features_per_step_
            if self.n_timesteps_in_ is not None:
                _check_feature_names(self, X, reset=True)
            elif hasattr(self, "feature_names_in_"):
                del self.feature_names_in_
            return steps
        check_is_fitted(self, "inner_")
        check_fitted_width(self, X, steps.steps.shape[1],
                           steps.n_columns if steps.form == "2d" else None)
        return steps

    def _rows(self, out, n):
        """The inner transformer's output as a dense (n, k) array."""
        if hasattr(out, "toarray"):
            out = out.toarray()
        out = np.asarray(out)
        if out.ndim == 1:
            out = out[:, None]
        if out.ndim != 2 or out.shape[0] != n:
            raise ValueError(f"the per-step transformer returned shape {out.shape}; expected "
                             f"one row per step ({n}, k)")
        return out

    def fit(self, X, y=None):
        """Fit the per-step transformer on every valid step of X (stacked).

        ``y``, when given, is passed on per step: one entry per sequence is
        repeated over its steps; a list of one label per step is concatenated.
        """
        self._validate_params()
        steps = self._read(X, reset=True)
        self.inner_ = self._make_inner()
        self.inner_.fit(steps.steps, _step_targets(y, steps.lengths))
        self._set_output_width(steps.steps[:1])
        return self

    def _set_output_width(self, row):
        self.n_features_out_ = int(self._rows(self.inner_.transform(row), 1).shape[1])

    def fit_transform(self, X, y=None):
        """``fit(X, y).transform(X)`` (one pass, the inner ``fit_transform``)."""
        self._validate_params()
        steps = self._read(X, reset=True)
        self.inner_ = self._make_inner()
        out = self.inner_.fit_transform(steps.steps, _step_targets(y, steps.lengths))
        out = self._rows(out, steps.steps.shape[0])
        self.n_features_out_ = int(out.shape[1])
        return steps.rebuild(out)

    def transform(self, X):
        """Apply the per-step transformer to every step; X's format back."""
        steps = self._read(X, reset=False)
        N = steps.steps.shape[0]
        if N == 0:  # only empty sequences (the next steps of streams, say)
            return steps.rebuild(np.zeros((0, self.n_features_out_), dtype=steps.steps.dtype))
        return steps.rebuild(self._rows(self.inner_.transform(steps.steps), N))

    @available_if(_inner_has("inverse_transform"))
    def inverse_transform(self, X):
        """The per-step transformer's ``inverse_transform`` on every step."""
        check_is_fitted(self, "inner_")
        steps = _check_input(X, self._nan_ok())
        if steps.steps.shape[1] != self.n_features_out_:
            raise ValueError(f"X has {steps.steps.shape[1]} features per step, but "
                             f"{type(self).__name__} outputs {self.n_features_out_}")
        out = self._rows(self.inner_.inverse_transform(steps.steps), steps.steps.shape[0])
        if steps.form == "3d" and self.n_timesteps_in_ is not None and out.shape[1] == 1:
            steps.form = "2d"  # the univariate series of a 2-D fit come back 2-D
        return steps.rebuild(out)

    @available_if(_inner_has("partial_fit"))
    def partial_fit(self, X, y=None):
        """Update the per-step transformer with the steps of X (the first call
        fixes the input shape, as ``fit``)."""
        first = not hasattr(self, "inner_")
        if first:
            self._validate_params()
        steps = self._read(X, reset=first)
        if first:
            self.inner_ = self._make_inner()
        self.inner_.partial_fit(steps.steps, _step_targets(y, steps.lengths))
        self._set_output_width(steps.steps[:1])
        return self

    @available_if(_inner_has("get_feature_names_out"))
    def get_feature_names_out(self, input_features=None):
        """Names of the output features.

        After a fit on a 2-D X whose output stays 2-D (one value per step),
        the output columns are the input's columns (time steps): their names
        (``feature_names_in_``, or ``x0, x1, ...``).  Otherwise the names of
        the features per step, from the per-step transformer, with the
        per-step input features named by ``input_features`` (length
        ``n_features_per_step_``; default ``x0, x1, ...``).
        """
        check_is_fitted(self, "inner_")
        if self.n_timesteps_in_ is not None:
            names = _check_feature_names_in(self, input_features)
            if self.n_features_out_ == 1:
                return names
            return self.inner_.get_feature_names_out(["x0"])
        if input_features is not None and len(input_features) != self.n_features_per_step_:
            raise ValueError(f"input_features should have length equal to the number of "
                             f"features per step ({self.n_features_per_step_}), got "
                             f"{len(input_features)}")
        if input_features is None:
            input_features = [f"x{i}" for i in range(self.n_features_per_step_)]
        return self.inner_.get_feature_names_out(np.asarray(input_features, dtype=object))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        tags.input_tags.allow_nan = self._nan_ok()
        return tags


class SequenceScaler(_StepTransformer):
    """Standardise each feature over every valid step of every sequence.

    ``StandardScaler`` fitted on the stacked steps ``(sum T_i, n_features)``
    and applied to each step: ``z = (x - mean_) / scale_``.  Ragged input is
    kept ragged, a 3-D array stays 3-D, and a 2-D X ``(n_samples,
    n_timesteps)`` of univariate series is standardised as ONE feature over
    all its steps (the estimators read it as one feature per step), not
    column by column.  Features of zero variance are left unscaled
    (``scale_ = 1``), as ``StandardScaler`` does.  NaN or infinity in X is a
    ``ValueError``.

    Parameters
    ----------
    with_mean : bool, default True
        Centre the features.
    with_std : bool, default True
        Scale the features to unit variance.

    Attributes
    ----------
    mean_, var_, scale_ : (n_features_per_step,) ndarray or None
        As ``StandardScaler``'s, per feature per step.
    n_samples_seen_ : int
        Number of steps seen (the sum of the lengths).
    n_features_in_ : int
        The width of a 2-D X (n_timesteps) after a fit on one; the features
        per step otherwise.
    n_features_per_step_ : int
    n_timesteps_in_ : int or None
        The width of a 2-D X at fit; None after a 3-D or ragged X.
    feature_names_in_ : ndarray of str
        Only after a fit on a DataFrame with string column names.

    Examples
    --------
    >>> from sklearn.pipeline import make_pipeline
    >>> from fastseq import RNNClassifier, SequenceScaler
    >>> model = make_pipeline(SequenceScaler(), RNNClassifier())   # doctest: +SKIP
    """

    def __init__(self, *, with_mean=True, with_std=True):
        self.with_mean = with_mean
        self.with_std = with_std

    _parameter_constraints = {"with_mean": ["boolean"], "with_std": ["boolean"]}

    def _make_inner(self):
        return StandardScaler(with_mean=self.with_mean, with_std=self.with_std)

    def fit(self, X, y=None):
        """Compute the per-feature mean and scale over every valid step."""
        return super().fit(X, None)

    def fit_transform(self, X, y=None):
        """``fit(X).transform(X)``."""
        return super().fit_transform(X, None)

    def partial_fit(self, X, y=None):
        """Update the mean and scale with the steps of X (``StandardScaler.partial_fit``)."""
        return super().partial_fit(X, None)

    @property
    def mean_(self):
        check_is_fitted(self, "inner_")
        return self.inner_.mean_

    @property
    def var_(self):
        check_is_fitted(self, "inner_")
        return self.inner_.var_

    @property
    def scale_(self):
        check_is_fitted(self, "inner_")
        return self.inner_.scale_

    @property
    def n_samples_seen_(self):
        check_is_fitted(self, "inner_")
        return int(np.max(self.inner_.n_samples_seen_))


class TimeDistributed(_StepTransformer):
    """Apply any scikit-learn transformer to each time step (Keras's
    ``TimeDistributed`` for preprocessing).

    A clone of ``transformer`` is fitted on every valid step of every
    sequence stacked into one ``(sum T_i, n_features)`` matrix, then applied
    step by step: ``TimeDistributed(PCA(8))`` reduces each frame to 8
    features, the "features per frame, then an RNN" shape
    (``make_pipeline(TimeDistributed(PCA(8)), RNNClassifier())``).  X comes
    back in its own format with the transformer's output width ``k`` per
    step (see :mod:`fastseq.preprocessing`; a sparse output is made dense).

    ``y`` at fit is passed on per step (one entry per sequence repeated over
    its steps; a list of one label per step concatenated), for supervised
    per-frame transformers.  NaN in X is accepted when the transformer's tags
    allow it (an imputer), refused otherwise.

    Parameters
    ----------
    transformer : scikit-learn transformer
        Unfitted; it is cloned at fit.

    Attributes
    ----------
    inner_ : transformer
        The fitted clone.
    n_features_out_ : int
        k, its output width per step.
    n_features_in_, n_features_per_step_, n_timesteps_in_, feature_names_in_
        As :class:`SequenceScaler`'s.
    """

    _parameter_constraints = {"transformer": [HasMethods(["fit", "transform"])]}

    def __init__(self, transformer):
        self.transformer = transformer

    def _make_inner(self):
        t = self.transformer
        if not (hasattr(t, "fit") and hasattr(t, "transform")):
            raise TypeError(f"transformer must be a scikit-learn transformer (fit and transform), "
                            f"got {type(t).__name__}")
        return clone(t)

    def _nan_ok(self):
        try:
            return bool(self.transformer.__sklearn_tags__().input_tags.allow_nan)
        except AttributeError:
            return False

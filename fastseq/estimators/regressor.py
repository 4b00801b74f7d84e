"""``RNNRegressor``: many-to-one regression, multi-output and direct
multi-horizon forecasts."""

import numpy as np
from sklearn.base import RegressorMixin

from .._input import Dataset, _check_real
from ._base import BaseRNN
from ._stream import stream


def check_targets(y, n, dtype, name="y"):
    """Real, finite regression targets (n,), (n, k) or (n, horizon, k) as float64."""
    if y is None:
        raise ValueError(f"{name} is None: this estimator requires y to be passed, but the target y is None")
    arr = _check_real(y, name, np.float64)
    if arr.ndim not in (1, 2, 3):
        raise ValueError(f"{name} must have shape (n,), (n, k) or (n, horizon, k), got {arr.shape}")
    if len(arr) != n:
        raise ValueError(f"X and y have different lengths: {n} sequences but {len(arr)} targets")
    if arr.ndim > 1 and 0 in arr.shape[1:]:
        raise ValueError(f"{name} has no outputs (shape {arr.shape})")
    return arr


class RNNRegressor(RegressorMixin, BaseRNN):
    """Recurrent many-to-one regressor.

    y may be (n,), (n, k) (multi-output) or (n, horizon, k) (direct multi-step
    forecasts); predictions keep y's shape.  Targets are standardised
    internally (``y_mean_``, ``y_scale_``) and the loss is the mean squared
    error on that scale; predictions are mapped back.  Parameters are those of
    :class:`fastseq.estimators._base.BaseRNN`.

    Examples
    --------
    >>> import numpy as np
    >>> from fastseq import RNNRegressor
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(50, 20, 3)).astype("float32")
    >>> y = X[:, -4:, :2]                        # the next 4 steps of 2 variables
    >>> reg = RNNRegressor(hidden_size=16, max_iter=3, random_state=0).fit(X, y)
    >>> reg.predict(X[:5]).shape                 # predictions keep y's shape
    (5, 4, 2)
    """

    _score_name = "r2"
    _auto_front_end = True

    def partial_fit(self, X, y):
        """One epoch over (X, y) from the current weights."""
        return self._partial_fit(X, y)

    def _prepare_fit(self, X, y, reset):
        seqs = self._check_X(X, reset)
        y = check_targets(y, seqs.n_samples, self._dtype)
        if reset:
            self.y_shape_ = tuple(int(s) for s in y.shape[1:])
            flat = y.reshape(len(y), -1)
            self.y_mean_ = flat.mean(axis=0)
            scale = flat.std(axis=0)
            self.y_scale_ = np.where(scale > 1e-12 * np.maximum(1.0, np.abs(self.y_mean_)), scale, 1.0)
        elif tuple(y.shape[1:]) != self.y_shape_:
            raise ValueError(f"y has shape {y.shape[1:]} per sample, but the first fit had {self.y_shape_}")
        z = (y.reshape(len(y), -1) - self.y_mean_) / self.y_scale_
        return Dataset(seqs, np.ascontiguousarray(z, dtype=self.model_.flat.dtype
                                                  if not reset else self._dtype))

    def _build_model(self, data, rng):
        n_out = int(np.prod(self.y_shape_)) if self.y_shape_ else 1
        return self._new_model(self._model_config(n_out, "squared_error"), rng)

    def _validation_score(self, data):
        z = np.stack(self._predict_raw(data.X)).astype(np.float64)
        y = data.y.astype(np.float64)
        ss_res = ((y - z) ** 2).sum(axis=0)
        ss_tot = ((y - y.mean(axis=0)) ** 2).sum(axis=0)
        r2 = np.where(ss_tot > 0, 1 - ss_res / np.where(ss_tot > 0, ss_tot, 1), 0.0)
        return float(np.mean(r2))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def predict(self, X):
        """Predictions shaped like y: (n,), (n, k) or (n, horizon, k)."""
        with self._limit():
            self._check_fitted()
            z = np.stack(self._predict_raw(self._check_X(X, reset=False)))
        y = z.astype(np.float64) * self.y_scale_ + self.y_mean_
        return y.reshape((len(y),) + self.y_shape_)

    def predict_stream(self, X, state=None, lengths=None):
        """Streaming prediction: feed the next steps of a batch of streams.

        Returns each stream's prediction as if it ended after these steps
        (shaped like y), and the new state; see
        :meth:`fastseq.RNNClassifier.predict_stream`.

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
        y_pred : (n_streams,) + y's shape per sample
        state : StreamState
        """
        with self._limit():
            z, state = stream(self, X, state, lengths)
        y = z.astype(np.float64) * self.y_scale_ + self.y_mean_
        return y.reshape((len(y),) + self.y_shape_), state

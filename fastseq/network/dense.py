"""Output layer and losses: ``Dense`` (a linear map) and the softmax
cross-entropy and squared-error losses of the estimators' heads.

Shapes: N rows (samples, or valid steps of a tagger), I input features,
V outputs (classes or regression targets).
"""

import numpy as np

from ..init import get_initializer
from .ctc import ctc_rows_loss


class Dense:
    """``y = x @ W.T + b`` with ``W`` (V, I) and ``b`` (V,) (PyTorch's ``Linear``).

    Parameters live in :attr:`flat` (P,) = [W.ravel(), b]; :meth:`bind` makes
    them views into a slice of a model's single parameter vector.
    """

    def __init__(self, in_features, out_features, dtype, rng, init="pytorch"):
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.dtype = np.dtype(dtype)
        self.n_params = self.out_features * self.in_features + self.out_features
        self.bind(np.zeros(self.n_params, dtype=self.dtype), copy=False)
        if init == "pytorch":  # uniform(+-1/sqrt(I)) for W and b, as torch.nn.Linear
            bound = 1.0 / np.sqrt(self.in_features)
            self.params["weight"][...] = rng.uniform(-bound, bound, self.params["weight"].shape)
            self.params["bias"][...] = rng.uniform(-bound, bound, self.out_features)
        else:
            f = get_initializer(init, "init")
            self.params["weight"][...] = f(self.params["weight"].shape, rng, self.in_features,
                                           self.out_features, self.in_features)

    def _views(self, flat):
        V, I = self.out_features, self.in_features
        return {"weight": flat[:V * I].reshape(V, I), "bias": flat[V * I:]}

    def bind(self, flat, copy=True):
        if copy:
            flat[...] = self.flat
        self.flat = flat
        self.params = self._views(flat)
        return self

    def forward(self, x):
        """x (N, I) -> (N, V)."""
        return x @ self.params["weight"].T + self.params["bias"]

    def backward(self, dy, x, out):
        """Gradients of ``dy`` (N, V) into ``out`` (P,) (overwritten); returns dx (N, I)."""
        g = self._views(out)
        np.matmul(dy.T, x, out=g["weight"])
        g["bias"][...] = dy.sum(axis=0)
        return dy @ self.params["weight"]


def log_softmax(z):
    """Row-wise log-softmax of logits (N, V), stable for any finite z."""
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def softmax(z):
    return np.exp(log_softmax(z))


def softmax_cross_entropy(logits, y, need_grad=True):
    """Mean cross-entropy of logits (N, V) against class indices y (N,) int.

    Returns ``(loss, dlogits)``; ``dlogits = (softmax - onehot) / N``.
    """
    N = logits.shape[0]
    lp = log_softmax(logits)
    loss = -float(lp[np.arange(N), y].astype(np.float64).sum()) / N
    if not need_grad:
        return loss, None
    d = np.exp(lp)
    d[np.arange(N), y] -= 1.0
    d /= d.dtype.type(N)
    return loss, d


def squared_error(pred, y, need_grad=True):
    """``0.5 * mean((pred - y)**2)`` over all N*V entries; returns ``(loss, dpred)``."""
    diff = pred - y
    loss = 0.5 * float(np.mean(np.square(diff, dtype=np.float64)))
    if not need_grad:
        return loss, None
    return loss, diff / diff.dtype.type(diff.size)


#: loss name -> ``f(outputs, targets, need_grad) -> (loss, doutputs)``; "ctc"
#: takes the rows of the valid steps and ``(labels, input lengths)``
LOSSES = {"softmax": softmax_cross_entropy, "squared_error": squared_error, "ctc": ctc_rows_loss}

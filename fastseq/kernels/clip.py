"""Gradient clipping over one flat gradient vector.

Both kernels detect non-finite gradients instead of spreading them: the
caller gets a signal (a non-finite norm, or ``False``) and the gradient is
left untouched, so that a training loop can skip the update.
"""

import numpy as np
from numba import njit

from .._config import JIT


@njit(**JIT)
def grad_norm(grad):
    """Euclidean norm of a flat gradient (P,), accumulated in float64.

    Returns ``inf`` or ``nan`` when an entry is not finite (no fast-math flag
    here assumes finiteness).
    """
    s = 0.0
    for k in range(grad.shape[0]):
        v = np.float64(grad[k])
        s += v * v
    return np.sqrt(s)


@njit(**JIT)
def clip_grad_norm(grad, max_norm, eps=1e-6):
    """Scale ``grad`` in place so its global norm is at most ``max_norm``.

    Same semantics as ``torch.nn.utils.clip_grad_norm_``: the coefficient is
    ``max_norm / (norm + eps)``, applied only when it is below 1.

    Parameters
    ----------
    grad : (P,) float
        Flat gradient of all parameters; modified in place.
    max_norm : float
        Largest allowed norm (> 0).

    Returns
    -------
    float
        The norm *before* clipping.  When it is not finite, ``grad`` is left
        unchanged and the non-finite norm is returned.
    """
    norm = grad_norm(grad)
    if not np.isfinite(norm):
        return norm
    coef = max_norm / (norm + eps)
    if coef < 1.0:
        c = grad.dtype.type(coef)
        for k in range(grad.shape[0]):
            grad[k] *= c
    return norm


@njit(**JIT)
def clip_grad_value(grad, clip_value):
    """Clamp every entry of ``grad`` in place to ``[-clip_value, clip_value]``.

    Parameters
    ----------
    grad : (P,) float
        Flat gradient; modified in place only if every entry is finite.
    clip_value : float
        Bound (> 0).

    Returns
    -------
    bool
        ``True`` when every entry was finite (and the clamp applied),
        ``False`` otherwise (``grad`` untouched).
    """
    for k in range(grad.shape[0]):
        if not np.isfinite(grad[k]):
            return False
    lo = grad.dtype.type(-clip_value)
    hi = grad.dtype.type(clip_value)
    for k in range(grad.shape[0]):
        if grad[k] > hi:
            grad[k] = hi
        elif grad[k] < lo:
            grad[k] = lo
    return True

"""Optimiser updates over one flat parameter vector (P,)."""

import numpy as np
from numba import njit

from .._config import JIT


@njit(**JIT)
def adam_update(params, grad, m, v, step, lr, beta1, beta2, eps, weight_decay):
    """One Adam step (Kingma & Ba 2015, as ``torch.optim.Adam``), in place.

    Parameters
    ----------
    params, grad, m, v : (P,) float
        Parameters, their gradient, first and second moment estimates.
    step : int
        1-based step count (after incrementing), for the bias corrections.
    lr, beta1, beta2, eps : float
    weight_decay : float
        L2 coefficient added to the gradient (``grad + weight_decay * params``).
    """
    bc1 = 1.0 - beta1 ** step
    bc2 = 1.0 - beta2 ** step
    step_size = lr / bc1
    sq_bc2 = np.sqrt(bc2)
    for k in range(params.shape[0]):
        g = grad[k] + weight_decay * params[k]
        m[k] = beta1 * m[k] + (1.0 - beta1) * g
        v[k] = beta2 * v[k] + (1.0 - beta2) * g * g
        params[k] -= step_size * m[k] / (np.sqrt(v[k]) / sq_bc2 + eps)


@njit(**JIT)
def sgd_update(params, grad, velocity, lr, momentum, nesterov, weight_decay):
    """One SGD step with optional (Nesterov) momentum, as ``torch.optim.SGD``.

    Parameters
    ----------
    params, grad, velocity : (P,) float
        Parameters, gradient and momentum buffer (zeros at the first step).
    lr, momentum : float
    nesterov : bool
    weight_decay : float
    """
    for k in range(params.shape[0]):
        g = grad[k] + weight_decay * params[k]
        if momentum != 0.0:
            velocity[k] = momentum * velocity[k] + g
            if nesterov:
                g = g + momentum * velocity[k]
            else:
                g = velocity[k]
        params[k] -= lr * g

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
    # the loop in the parameters' precision (as torch's float32 Adam): float64
    # constants would widen every element and halve the vector width
    dt = params.dtype.type
    step_size = dt(lr / bc1)
    inv_sq_bc2 = dt(1.0 / np.sqrt(bc2))
    b1, b2, wd, e = dt(beta1), dt(beta2), dt(weight_decay), dt(eps)
    c1, c2 = dt(1.0 - beta1), dt(1.0 - beta2)
    for k in range(params.shape[0]):
        g = grad[k] + wd * params[k]
        mk = b1 * m[k] + c1 * g
        vk = b2 * v[k] + c2 * g * g
        m[k] = mk
        v[k] = vk
        params[k] -= step_size * mk / (np.sqrt(vk) * inv_sq_bc2 + e)


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

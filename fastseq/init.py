"""Weight initialisers, chosen by name as in Keras and PyTorch.

Each initialiser is ``fn(shape, rng, fan_in, fan_out, hidden_size) -> float64
array``; :func:`get_initializer` looks one up by name and raises a clear
``ValueError`` for an unknown one.

=================  ==========================================================
name               values
=================  ==========================================================
``"pytorch"``      uniform(-1/sqrt(H), 1/sqrt(H)), PyTorch's RNN default
``"glorot_uniform"`` uniform(-l, l), l = sqrt(6 / (fan_in + fan_out)) (Keras
                   ``kernel_initializer`` default)
``"orthogonal"``   (semi-)orthogonal matrix from a QR decomposition (Keras
                   ``recurrent_initializer`` default)
``"zeros"``        0 (Keras ``bias_initializer`` default)
``"ones"``         1
=================  ==========================================================

For LSTM biases, ``unit_forget_bias=True`` (Keras's default) sets the forget
gate's bias to 1 (split as 1 on ``bias_ih`` and 0 on ``bias_hh``).
"""

import numpy as np


def pytorch_uniform(shape, rng, fan_in, fan_out, hidden_size):
    bound = 1.0 / np.sqrt(hidden_size)
    return rng.uniform(-bound, bound, size=shape)


def glorot_uniform(shape, rng, fan_in, fan_out, hidden_size):
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=shape)


def orthogonal(shape, rng, fan_in, fan_out, hidden_size):
    rows, cols = shape[0], int(np.prod(shape[1:]))
    a = rng.standard_normal((max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(a)
    q *= np.sign(np.diag(r))
    if rows < cols:
        q = q.T
    return q.reshape(shape)


def zeros(shape, rng, fan_in, fan_out, hidden_size):
    return np.zeros(shape)


def ones(shape, rng, fan_in, fan_out, hidden_size):
    return np.ones(shape)


INITIALIZERS = {
    "pytorch": pytorch_uniform,
    "glorot_uniform": glorot_uniform,
    "orthogonal": orthogonal,
    "zeros": zeros,
    "ones": ones,
}


def get_initializer(name, argument="initializer"):
    """Return the initialiser called ``name``; ``argument`` names it in errors."""
    if callable(name):
        return name
    try:
        return INITIALIZERS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"{argument} must be one of {sorted(INITIALIZERS)} or a callable, got {name!r}"
        ) from None

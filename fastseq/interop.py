"""PyTorch interop: ``from_torch(module)`` and ``to_torch_state_dict(layer)``.

torch is optional: it is imported only inside these functions (they take or
give torch objects, so a caller has it already).
"""

import numpy as np

from .network.recurrent import Recurrent

_MODES = {"RNN_TANH": ("rnn", "tanh"), "RNN_RELU": ("rnn", "relu"),
          "LSTM": ("lstm", "tanh"), "GRU": ("gru", "tanh")}


def from_torch(module, dtype=None):
    """Build a :class:`~fastseq.nn.Recurrent` with the weights of a
    ``torch.nn.RNN``, ``torch.nn.LSTM`` or ``torch.nn.GRU``.

    Parameters
    ----------
    module : torch.nn.RNNBase
    dtype : {"float32", "float64"}, optional
        Default: the module's own parameter dtype.

    Notes
    -----
    fastseq layers are always batch-first; the module's ``batch_first`` does
    not matter for the weights.  LSTMs with ``proj_size > 0`` are not supported.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from fastseq.interop import from_torch
    >>> gru = torch.nn.GRU(3, 4, num_layers=2, batch_first=True)
    >>> layer = from_torch(gru)
    >>> X = torch.randn(2, 5, 3)
    >>> out, h_n = layer.forward(X.numpy())
    >>> bool(np.allclose(out, gru(X)[0].detach().numpy(), atol=1e-5))
    True
    """
    import torch

    if not isinstance(module, torch.nn.RNNBase):
        raise TypeError(f"module must be a torch.nn.RNN, LSTM or GRU, got {type(module).__name__}")
    if module.mode not in _MODES:
        raise ValueError(f"unsupported torch recurrent mode {module.mode!r}")
    if getattr(module, "proj_size", 0):
        raise ValueError("LSTM with proj_size > 0 is not supported")
    cell, nonlinearity = _MODES[module.mode]
    state = {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}
    if dtype is None:
        dtype = next(iter(state.values())).dtype
        dtype = dtype if dtype in (np.float32, np.float64) else np.float32
    layer = Recurrent(cell, module.input_size, module.hidden_size, num_layers=module.num_layers,
                      bidirectional=module.bidirectional, nonlinearity=nonlinearity,
                      bias=module.bias, dropout=float(module.dropout), dtype=dtype)
    for name, value in layer.params.items():
        value[...] = state[name]
    return layer


def to_torch_state_dict(layer):
    """Return the layer's parameters as an ordered ``{name: torch.Tensor}``
    that ``torch.nn.LSTM(...).load_state_dict`` accepts (copies)."""
    import torch
    from collections import OrderedDict

    if not getattr(layer, "reset_after", True):
        raise ValueError("a GRU with reset_after=False has no torch.nn.GRU equivalent "
                         "(torch applies the reset gate after the recurrent product)")

    return OrderedDict((name, torch.from_numpy(np.array(value))) for name, value in layer.params.items())

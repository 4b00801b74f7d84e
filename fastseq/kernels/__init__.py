"""Numba kernels: pure functions of arrays and scalars (the math).

Nothing here validates input, allocates outputs the caller owns, or imports
anything of fastseq but :mod:`fastseq._config`.  Kernels compile lazily on
first call (``cache=True``); importing this package compiles nothing.
"""

import os as _os

from ._cache import drop_stale_cache as _drop_stale_cache

# before any kernel module is imported: a cache compiled from other sources goes
_drop_stale_cache(_os.path.dirname(__file__))

from .clip import clip_grad_norm, clip_grad_value, grad_norm
from .gru import gru_sequence_backward, gru_sequence_forward
from .gru_reset_before import gru_rb_backward_slice, gru_rb_forward_slice
from .infer import gru_infer, lstm_infer, rnn_infer
from .lstm import lstm_sequence_backward, lstm_sequence_forward
from .optim import adam_update, sgd_update
from .rnn import rnn_sequence_backward, rnn_sequence_forward

#: gate order of the LSTM's stacked weights (PyTorch's): rows ``k*H:(k+1)*H``
#: of ``weight_ih``/``weight_hh`` belong to gate ``LSTM_GATES[k]``.
LSTM_GATES = ("input", "forget", "cell", "output")
#: gate order of the GRU's stacked weights (PyTorch's).
GRU_GATES = ("reset", "update", "new")
#: number of stacked gates per cell type.
NUM_GATES = {"rnn": 1, "gru": 3, "lstm": 4}

__all__ = [
    "LSTM_GATES", "GRU_GATES", "NUM_GATES",
    "lstm_sequence_forward", "lstm_sequence_backward",
    "gru_sequence_forward", "gru_sequence_backward",
    "gru_rb_forward_slice", "gru_rb_backward_slice",
    "rnn_sequence_forward", "rnn_sequence_backward",
    "lstm_infer", "gru_infer", "rnn_infer",
    "grad_norm", "clip_grad_norm", "clip_grad_value",
    "adam_update", "sgd_update",
]

"""Unit-split inference parts handed to pool threads as compiled tasks.

A unit split (:func:`fastseq.kernels.infer.lstm_units_part`,
:func:`fastseq.kernels.infer.gru_units_part`) handed over in Python spends
most of a small call on the hand-over: the pool thread takes the GIL and
runs Python before its part starts and after it ends (20-25 us of a 60 us
two-step call here).  Here the call is written into an int64 description
(:data:`fastseq.kernels._sync.DESC_LEN` slots: the part's function, its
thread and units, then each array's address and shape) and
:func:`fastseq.kernels._sync.split_native` hands it to threads that
linger in compiled code (:func:`fastseq.kernels._sync.linger`), which call
the part's ``numba.cfunc`` by its address.  Nothing in between holds the GIL.

The cfuncs are compiled at their first use (:func:`part_address`; cached
like the kernels), one per cell and dtype.  The arrays of a description
live in the caller's frame until every part is done.
"""

import numpy as np
from numba import carray, cfunc, njit, types

from .._config import JIT
from ._native import pointer_like
from ._sync import DESC_J0, DESC_J1, DESC_LEN, DESC_TID, hand_native, part_failed, split_native, wait_done
from .infer import (gru_run, gru_units_part, gru_units_slice, lstm_fused_slice, lstm_run, lstm_units_part,
                    lstm_units_slice, rnn_run)
from .matmul import pack_weight, project_ahead_packed

#: slot of the description: whether the part runs the reverse direction
DESC_REV = 4
#: slots of a fused slice's description: its output's first column, and
#: the third dimension of its packed weight
DESC_COL, DESC_DEPTH = 5, 6
#: slot of a unit split's description: whether its rows are batch-major
DESC_MAJOR = 7
#: first slot of the arrays: three each (address, rows, columns; 0 columns
#: for a vector)
DESC_ARRAYS = 8


@njit(inline="always", **JIT)
def _put(desc, i, a):
    k = DESC_ARRAYS + 3 * i
    desc[k] = a.ctypes.data
    desc[k + 1] = a.shape[0]
    desc[k + 2] = a.shape[1]


@njit(inline="always", **JIT)
def _put1(desc, i, a):
    k = DESC_ARRAYS + 3 * i
    desc[k] = a.ctypes.data
    desc[k + 1] = a.shape[0]
    desc[k + 2] = 0


@njit(**JIT)
def lstm_units_desc(desc, fn, inp, w_ih, bias, w_hh, h0, c0, reverse, flags, out_h, h_n, c_n, batch_major):
    """Describe :func:`fastseq.kernels.infer.lstm_units_part`'s call (all
    but the part's thread and units) in ``desc``; ``fn`` the address of its
    cfunc (:func:`part_address`)."""
    desc[0] = fn
    desc[DESC_REV] = 1 if reverse else 0
    desc[DESC_MAJOR] = 1 if batch_major else 0
    _put(desc, 0, inp)
    _put(desc, 1, w_ih)
    _put1(desc, 2, bias)
    _put(desc, 3, w_hh)
    _put(desc, 4, h0)
    _put(desc, 5, c0)
    _put1(desc, 6, flags)
    _put(desc, 7, out_h)
    _put(desc, 8, h_n)
    _put(desc, 9, c_n)


@njit(**JIT)
def gru_units_desc(desc, fn, inp, w_ih, bias, b_hn, w_hh, h0, reverse, flags, out_h, h_n, batch_major):
    """:func:`lstm_units_desc` for :func:`fastseq.kernels.infer.gru_units_part`."""
    desc[0] = fn
    desc[DESC_REV] = 1 if reverse else 0
    desc[DESC_MAJOR] = 1 if batch_major else 0
    _put(desc, 0, inp)
    _put(desc, 1, w_ih)
    _put1(desc, 2, bias)
    _put1(desc, 3, b_hn)
    _put(desc, 4, w_hh)
    _put(desc, 5, h0)
    _put1(desc, 6, flags)
    _put(desc, 7, out_h)
    _put(desc, 8, h_n)


@njit(**JIT)
def lstm_fused_desc(desc, fn, inp, w_cat, wp, bias, h0, c0, reverse, out, col0, h_n, c_n, flags):
    """:func:`lstm_units_desc` for :func:`fastseq.kernels.infer.lstm_fused_slice`
    (a batch split: each part's range its sequences; ``flags`` the
    split's, where a part that raised marks it)."""
    desc[0] = fn
    desc[DESC_REV] = 1 if reverse else 0
    desc[DESC_COL] = col0
    desc[DESC_DEPTH] = wp.shape[2]
    _put(desc, 0, inp)
    _put(desc, 1, w_cat)
    _put(desc, 2, wp)        # (its first two dimensions)
    _put1(desc, 3, bias)
    _put(desc, 4, h0)
    _put(desc, 5, c0)
    _put(desc, 6, out)
    _put(desc, 7, h_n)
    _put(desc, 8, c_n)
    _put1(desc, 9, flags)


@njit(**JIT)
def project_desc(desc, fn, inp, w, wp, bias, steps, out, ready):
    """:func:`lstm_units_desc` for :func:`fastseq.kernels.matmul.project_ahead_packed`
    (the input projection a time loop reads as it is published; ``wp``
    packed by the caller, so that the task allocates nothing)."""
    desc[0] = fn
    desc[DESC_DEPTH] = wp.shape[2]
    _put(desc, 0, inp)
    _put(desc, 1, w)
    _put(desc, 2, wp)        # (its first two dimensions)
    _put1(desc, 3, bias)
    _put1(desc, 4, steps)
    _put(desc, 5, out)
    _put1(desc, 6, ready)


@njit(inline="always", **JIT)
def _matrix(d, i, z):
    """Array ``i`` of description ``d``, of ``z``'s type, as a matrix."""
    k = DESC_ARRAYS + 3 * i
    return carray(pointer_like(d[k], z), (d[k + 1], d[k + 2]))


@njit(inline="always", **JIT)
def _vector(d, i, z):
    k = DESC_ARRAYS + 3 * i
    return carray(pointer_like(d[k], z), (d[k + 1],))


@njit(inline="always", **JIT)
def _lstm_args(d, z):
    """The arguments of :func:`fastseq.kernels.infer.lstm_units_part` (all
    but ``batch_major``) and of ``lstm_units_slice`` that description ``d``
    (:func:`lstm_units_desc`) holds, its floats of ``z``'s type."""
    return (_matrix(d, 0, z), _matrix(d, 1, z), _vector(d, 2, z), _matrix(d, 3, z), _matrix(d, 4, z),
            _matrix(d, 5, z), d[DESC_REV] != 0, d[DESC_J0], d[DESC_J1], d[DESC_TID], _vector(d, 6, np.int64(0)),
            _matrix(d, 7, z), _matrix(d, 8, z), _matrix(d, 9, z))


@njit(inline="always", **JIT)
def _gru_args(d, z):
    """:func:`_lstm_args` for the GRU's (:func:`gru_units_desc`)."""
    return (_matrix(d, 0, z), _matrix(d, 1, z), _vector(d, 2, z), _vector(d, 3, z), _matrix(d, 4, z),
            _matrix(d, 5, z), d[DESC_REV] != 0, d[DESC_J0], d[DESC_J1], d[DESC_TID], _vector(d, 6, np.int64(0)),
            _matrix(d, 7, z), _matrix(d, 8, z))


@njit(inline="always", **JIT)
def _description(addr):
    """The description (int64, :data:`DESC_LEN`) at ``addr``."""
    return carray(pointer_like(addr, np.int64(0)), (DESC_LEN,))


# A part's body catches what it raises (a failed allocation: nothing else
# raises in these kernels) and marks it in the split's flags
# (:func:`fastseq.kernels._sync.part_failed`): a cfunc cannot pass an
# exception to its caller, and the others would wait for it at a barrier.
@njit(inline="always", **JIT)
def _guarded(kernel, args, flags, tid):
    """``kernel(*args)``, what it raises marked for part ``tid`` in ``flags``."""
    try:
        kernel(*args)
    except Exception:  # noqa: BLE001 - numba catches no narrower class
        part_failed(flags, tid)


@njit(inline="always", **JIT)
def _lstm_part(addr, z):
    """The LSTM part described at ``addr``, its floats of ``z``'s type."""
    d = _description(addr)
    _guarded(lstm_units_part, _lstm_args(d, z) + (d[DESC_MAJOR] != 0,), _vector(d, 6, np.int64(0)), d[DESC_TID])


@njit(inline="always", **JIT)
def _gru_part(addr, z):
    d = _description(addr)
    _guarded(gru_units_part, _gru_args(d, z) + (d[DESC_MAJOR] != 0,), _vector(d, 6, np.int64(0)), d[DESC_TID])


@njit(inline="always", **JIT)
def _lstm_slices_part(addr, z):
    """:func:`_lstm_part`'s description, the part's range its sequences
    (:func:`fastseq.kernels.infer.lstm_units_slice`, batch-major rows)."""
    d = _description(addr)
    _guarded(lstm_units_slice, _lstm_args(d, z), _vector(d, 6, np.int64(0)), d[DESC_TID])


@njit(inline="always", **JIT)
def _gru_slices_part(addr, z):
    d = _description(addr)
    _guarded(gru_units_slice, _gru_args(d, z), _vector(d, 6, np.int64(0)), d[DESC_TID])


@njit(inline="always", **JIT)
def _fused_part(addr, z):
    d = _description(addr)
    k = DESC_ARRAYS + 3 * 2
    wp = carray(pointer_like(d[k], z), (d[k + 1], d[k + 2], d[DESC_DEPTH]))
    _guarded(lstm_fused_slice, (_matrix(d, 0, z), _matrix(d, 1, z), wp, _vector(d, 3, z), _matrix(d, 4, z),
                                _matrix(d, 5, z), d[DESC_REV] != 0, _matrix(d, 6, z), d[DESC_COL],
                                _matrix(d, 7, z), _matrix(d, 8, z), d[DESC_J0], d[DESC_J1]),
             _vector(d, 9, np.int64(0)), d[DESC_TID])


@njit(inline="always", **JIT)
def _project_part(addr, z):
    d = _description(addr)
    k = DESC_ARRAYS + 3 * 2
    wp = carray(pointer_like(d[k], z), (d[k + 1], d[k + 2], d[DESC_DEPTH]))
    project_ahead_packed(_matrix(d, 0, z), _matrix(d, 1, z), wp, _vector(d, 3, z),
                         _vector(d, 4, np.int64(0)), _matrix(d, 5, z), _vector(d, 6, np.int64(0)))


# the cfuncs' bodies (plain functions: compiled only as cfuncs, by part_address)
def _lstm_f32(addr):
    _lstm_part(addr, np.float32(0))


def _lstm_f64(addr):
    _lstm_part(addr, np.float64(0))


def _gru_f32(addr):
    _gru_part(addr, np.float32(0))


def _gru_f64(addr):
    _gru_part(addr, np.float64(0))


def _lstm_slices_f32(addr):
    _lstm_slices_part(addr, np.float32(0))


def _lstm_slices_f64(addr):
    _lstm_slices_part(addr, np.float64(0))


def _gru_slices_f32(addr):
    _gru_slices_part(addr, np.float32(0))


def _gru_slices_f64(addr):
    _gru_slices_part(addr, np.float64(0))


def _fused_f32(addr):
    _fused_part(addr, np.float32(0))


def _fused_f64(addr):
    _fused_part(addr, np.float64(0))


def _project_f32(addr):
    _project_part(addr, np.float32(0))


def _project_f64(addr):
    _project_part(addr, np.float64(0))


def _noop(addr):
    """An empty part (the planner times a compiled hand-over with it)."""


_BODIES = {("lstm", np.dtype(np.float32)): _lstm_f32, ("lstm", np.dtype(np.float64)): _lstm_f64,
           ("gru", np.dtype(np.float32)): _gru_f32, ("gru", np.dtype(np.float64)): _gru_f64,
           ("lstm-slices", np.dtype(np.float32)): _lstm_slices_f32,
           ("lstm-slices", np.dtype(np.float64)): _lstm_slices_f64,
           ("gru-slices", np.dtype(np.float32)): _gru_slices_f32, ("gru-slices", np.dtype(np.float64)): _gru_slices_f64,
           ("fused", np.dtype(np.float32)): _fused_f32, ("fused", np.dtype(np.float64)): _fused_f64,
           ("project", np.dtype(np.float32)): _project_f32, ("project", np.dtype(np.float64)): _project_f64,
           ("noop", None): _noop}
_addresses = {}


def part_address(cell, dtype):
    """Address of the compiled part of ``cell`` (``"lstm"`` or ``"gru"``:
    a unit split's part; ``"lstm-slices"`` or ``"gru-slices"``: its call's
    sequences ``J0..J1`` with every unit (a split by sequences);
    ``"fused"``: an LSTM fused slice; ``"project"``:
    an input projection published step by step)
    for ``dtype``: a ``numba.cfunc`` ``void(int64)`` taking its
    description's address, compiled at the first call (``"noop"``, dtype
    None: a part that does nothing)."""
    key = (cell, None if dtype is None else np.dtype(dtype))
    addr = _addresses.get(key)
    if addr is None:
        addr = _addresses[key] = cfunc(types.void(types.int64), **JIT)(_BODIES[key]).address
    return addr


@njit(**JIT)
def lstm_units_native(states, descs, own, bounds, flags, fn, inp, w_ih, bias, w_hh, h0, c0, reverse, out_h,
                      h_n, c_n, batch_major):
    """An LSTM unit split as compiled tasks, in one call from Python:
    :func:`lstm_units_desc` into ``own``, then
    :func:`fastseq.kernels._sync.split_native` (its answer)."""
    lstm_units_desc(own, fn, inp, w_ih, bias, w_hh, h0, c0, reverse, flags, out_h, h_n, c_n, batch_major)
    return split_native(states, descs, own, bounds, flags)


@njit(**JIT)
def gru_units_native(states, descs, own, bounds, flags, fn, inp, w_ih, bias, b_hn, w_hh, h0, reverse, out_h,
                     h_n, batch_major):
    """:func:`lstm_units_native` for the reset-after GRU."""
    gru_units_desc(own, fn, inp, w_ih, bias, b_hn, w_hh, h0, reverse, flags, out_h, h_n, batch_major)
    return split_native(states, descs, own, bounds, flags)


@njit(**JIT)
def lstm_fused_native(states, descs, own, bounds, flags, fn, inp, w_cat, wp, bias, h0, c0, reverse, out, col0,
                      h_n, c_n):
    """:func:`lstm_units_native` for the batch slices ``bounds`` of
    :func:`fastseq.kernels.infer.lstm_fused_slice`."""
    lstm_fused_desc(own, fn, inp, w_cat, wp, bias, h0, c0, reverse, out, col0, h_n, c_n, flags)
    return split_native(states, descs, own, bounds, flags)


@njit(**JIT)
def lstm_pipelined_native(states, descs, own, fn, inp, w_ih, bias, steps, x, ready, w_hh, h0, c0, reverse,
                          out_h, h_n, c_n):
    """An LSTM time loop on this thread (:func:`fastseq.kernels.infer.lstm_run`)
    while a lingering pool thread computes its input projection ``x`` a
    few steps ahead (:func:`project_desc`'s task, ``fn`` its part's
    address), in one call from Python: False, with nothing run, when the
    pool thread is not lingering."""
    wp = pack_weight(w_ih)    # (here, where an error reaches the caller: the task allocates nothing)
    project_desc(own, fn, inp, w_ih, wp, bias, steps, x, ready)
    if not hand_native(states, descs, own):
        return False
    lstm_run(x, w_hh, h0, c0, reverse, ready, out_h, h_n, c_n)
    wait_done(states[0])
    return wp.shape[0] >= 0   # (a use of wp after the wait: numba frees it after its last use)


@njit(**JIT)
def gru_pipelined_native(states, descs, own, fn, inp, w_ih, bias, steps, x, ready, w_hh, b_hn, h0, reverse,
                         out_h, h_n):
    """:func:`lstm_pipelined_native` for the reset-after GRU (``b_hn`` its
    candidate bias, :func:`fastseq.kernels.infer.gru_run`)."""
    wp = pack_weight(w_ih)    # (here, where an error reaches the caller: the task allocates nothing)
    project_desc(own, fn, inp, w_ih, wp, bias, steps, x, ready)
    if not hand_native(states, descs, own):
        return False
    gru_run(x, w_hh, b_hn, h0, reverse, ready, out_h, h_n)
    wait_done(states[0])
    return wp.shape[0] >= 0   # (a use of wp after the wait: numba frees it after its last use)


@njit(**JIT)
def rnn_pipelined_native(states, descs, own, fn, inp, w_ih, bias, steps, x, ready, w_hh, h0, relu, reverse,
                         out_h, h_n):
    """:func:`lstm_pipelined_native` for the Elman RNN (``relu`` 1 for ReLU,
    :func:`fastseq.kernels.infer.rnn_run`)."""
    wp = pack_weight(w_ih)    # (here, where an error reaches the caller: the task allocates nothing)
    project_desc(own, fn, inp, w_ih, wp, bias, steps, x, ready)
    if not hand_native(states, descs, own):
        return False
    rnn_run(x, w_hh, h0, relu, reverse, ready, out_h, h_n)
    wait_done(states[0])
    return wp.shape[0] >= 0   # (a use of wp after the wait: numba frees it after its last use)

"""Scratch arrays kept from one call to the next (per thread).

A fresh array of a few megabytes costs its page faults at every call (the
allocator hands large blocks back to the system when they are freed), and
on a virtual machine a fault can cost microseconds: a packed weight of
megabytes faulted in anew at each call can take longer than the call's
arithmetic.  PyTorch's oneDNN scratchpad and ONNX Runtime's arena keep such
memory for the same reason.  :func:`scratch` hands out the same memory under the same
name and dtype, grown when a call asks for more (the layers of a stack ask
for different shapes in turn); only scratch that a call fully overwrites
before reading, and never returns, goes here.  The memory stays with the
thread until :func:`release` (at most the largest request of each name).
"""

import math
import threading

import numpy as np

_local = threading.local()


def scratch(name, shape, dtype):
    """An uninitialised C-contiguous array of ``shape`` and ``dtype`` owned
    by this thread under ``name``: the memory of the last call's when it is
    large enough (its contents are not kept)."""
    arrays = getattr(_local, "arrays", None)
    if arrays is None:
        arrays = _local.arrays = {}
    dtype = np.dtype(dtype)
    shape = tuple(map(int, shape))
    size = math.prod(shape)   # (np.prod costs a few microseconds a call: a small call's share)
    buf = arrays.get(name)
    if buf is None or buf.dtype != dtype or buf.size < size:
        buf = arrays[name] = np.empty(size, dtype=dtype)
    return buf[:size].reshape(shape)


def release():
    """Drop this thread's scratch arrays (their memory goes back)."""
    _local.arrays = {}

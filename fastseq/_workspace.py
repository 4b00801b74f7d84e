"""Scratch arrays kept from one call to the next (per thread).

A fresh array of a few megabytes costs its page faults at every call (the
allocator hands large blocks back to the system when they are freed), and
on a virtual machine a fault can cost microseconds: a packed weight of
megabytes faulted in anew at each call can take longer than the call's
arithmetic.  PyTorch's oneDNN scratchpad and ONNX Runtime's arena keep such
memory for the same reason.  :func:`scratch` hands out the same array for the same
name, shape and dtype until it is asked for another shape; only scratch that
a call fully overwrites before reading, and never returns, goes here.
"""

import threading

import numpy as np

_local = threading.local()


def scratch(name, shape, dtype):
    """An uninitialised array of ``shape`` and ``dtype`` owned by this thread
    under ``name``: the same one as the last call's when they match."""
    arrays = getattr(_local, "arrays", None)
    if arrays is None:
        arrays = _local.arrays = {}
    a = arrays.get(name)
    shape = tuple(int(s) for s in shape)
    if a is None or a.shape != shape or a.dtype != dtype:
        a = arrays[name] = np.empty(shape, dtype=dtype)
    return a


def release():
    """Drop this thread's scratch arrays (their memory goes back)."""
    _local.arrays = {}

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
import sys
import threading

import numpy as np

_local = threading.local()


#: bytes of the line every scratch array starts (:func:`aligned_empty`)
LINE_BYTES = 64


def aligned_empty(shape, dtype):
    """An uninitialised C-contiguous array of ``shape`` and ``dtype`` whose
    first element starts a 64-byte line (numpy aligns to 16 bytes): the
    packed weights that the compiled products read as 64-byte vectors
    (:func:`fastseq.kernels.matmul.empty_strips`)."""
    dtype = np.dtype(dtype)
    shape = tuple(map(int, shape))
    size = math.prod(shape)
    buf = np.empty(size + LINE_BYTES // dtype.itemsize, dtype=dtype)
    off = (-buf.ctypes.data % LINE_BYTES) // dtype.itemsize
    return buf[off:off + size].reshape(shape)


def scratch(name, shape, dtype):
    """An uninitialised C-contiguous array of ``shape`` and ``dtype`` owned
    by this thread under ``name``: the memory of the last call's when it is
    large enough (its contents are not kept).  It starts a 64-byte line
    (:func:`aligned_empty`)."""
    arrays = getattr(_local, "arrays", None)
    if arrays is None:
        arrays = _local.arrays = {}
    dtype = np.dtype(dtype)
    shape = tuple(map(int, shape))
    size = math.prod(shape)   # (np.prod costs a few microseconds a call: a small call's share)
    buf = arrays.get(name)
    if buf is None or buf.dtype != dtype or buf.size < size:
        buf = arrays[name] = aligned_empty((size,), dtype)
    return buf[:size].reshape(shape)


def scratch_arrays(name, shapes, dtype):
    """Uninitialised arrays of ``shapes`` (a tuple of shape tuples of
    ints) and ``dtype`` (a ``numpy.dtype``), each :func:`scratch` of its
    own under ``name``, looked up in one step while a call asks for the
    same shapes as the last one did under ``name`` (a small call's weights
    are prepared at every call: three :func:`scratch` calls were 3.5 us)."""
    sets = getattr(_local, "sets", None)
    if sets is None:
        sets = _local.sets = {}
    key = (shapes, dtype)
    got = sets.get(name)
    if got is None or got[0] != key:
        got = sets[name] = (key, tuple(scratch((name, i), shape, dtype) for i, shape in enumerate(shapes)))
    return got[1]


def release():
    """Drop this thread's scratch arrays (their memory goes back)."""
    _local.arrays = {}
    _local.sets = {}


def _references(store, name):
    """``sys.getrefcount`` of ``store[name]`` as :func:`kept` reads it."""
    buf = store.get(name)
    return sys.getrefcount(buf)


#: :func:`_references` of an array that only its store holds (measured, not
#: assumed: interpreters differ in the references a call takes)
_UNSHARED = _references({"x": np.empty(0)}, "x")


def kept(store, name, shape, dtype):
    """An uninitialised C-contiguous array of ``shape`` and ``dtype`` kept in
    the dict ``store`` (an object's own) under ``name`` from one call to the
    next: the memory of an earlier call's array once nothing but ``store``
    refers to it (the views handed out are gone), else a fresh array, which
    ``store`` keeps instead.  For arrays that live beyond a call (what a
    forward pass keeps for its backward pass) and are rewritten by the next
    one: unlike :func:`scratch`, memory still in use is never handed out
    again, so a caller that holds on to an earlier call's arrays keeps
    their values.  Fresh arrays of megabytes are faulted in anew at every
    call (glibc hands freed blocks at the top of its heap back to the
    system): at MNIST rows an LSTM training step spent 15.7 of its 54 ms
    in the system that way (bench/RESULTS.md, "thirteenth session")."""
    dtype = np.dtype(dtype)
    shape = tuple(map(int, shape))
    size = math.prod(shape)
    old = store.get(name)
    fits = old is not None and old.dtype == dtype and old.size >= size
    del old   # (not counted as a reference below)
    if not fits or _references(store, name) > _UNSHARED:
        store[name] = np.empty(size, dtype=dtype)
    return store[name][:size].reshape(shape)

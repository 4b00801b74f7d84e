"""Flush-to-zero in every thread while it runs fastseq's compiled code.

Values below the smallest normal float (float32 1.18e-38, float64 2.23e-308)
are read and written as zero inside fastseq's calls, on x86-64 (MXCSR FTZ and
DAZ) and aarch64 (FPCR FZ); elsewhere nothing changes
(:mod:`fastseq.kernels._fpenv`).  Denormal arithmetic is many times slower
than normal arithmetic, and gradients fading over thousands of steps reach
it; flushed, they are zero (what PyTorch computes under
``torch.set_flush_denormal(True)``).

The control register is per thread: :func:`flush_denormals` sets the bits in
the thread that enters it and puts them back as they were when that thread's
outermost block exits (a per-thread depth), so the caller's own code after a
fastseq call sees its own setting.  :mod:`fastseq._threads` enters it in
``blas_single_thread`` (so in ``limit`` and around every layer call) and
around the work it hands to pool threads.
"""

import threading

from .kernels import _fpenv as _k

#: whether this machine has a flush-to-zero setting that fastseq sets
#: (x86-64, aarch64); elsewhere :func:`flush_denormals` does nothing
AVAILABLE = _k.FLUSH_BITS != 0
#: the flush-to-zero bits of :func:`control` (0 where not :data:`AVAILABLE`)
FLUSH_BITS = _k.FLUSH_BITS

_local = threading.local()

#: called at every entry until it clears itself (:func:`fastseq._plan.resolve_kernel_values`:
#: the numbers the kernels read at run time are set before any kernel runs,
#: since every compiled call is made inside :func:`flush_denormals`)
before_kernels = None


def control():
    """The calling thread's floating-point control register (MXCSR on x86-64,
    FPCR on aarch64; 0 elsewhere) as an int."""
    return int(_k.read_control()) if AVAILABLE else 0


def set_control(value):
    """Write ``value`` to the calling thread's floating-point control register
    (nothing where there is none).  For tests and measurements."""
    if AVAILABLE:
        _k.write_control(value)


def flushing():
    """Whether flush-to-zero is set in the calling thread now."""
    return AVAILABLE and (control() & FLUSH_BITS) == FLUSH_BITS


class _FlushDenormals:
    """The context manager of :func:`flush_denormals` (a class, entered on
    every call).  Per thread, a list ``[depth, saved]``: the outermost entry
    sets the bits (one compiled call) and keeps the register as it was, its
    exit puts the bits back (a second call, skipped when they were set
    already); nested entries only count."""

    __slots__ = ()

    def __enter__(self):
        if before_kernels is not None:   # (first: nothing here to undo if it raises)
            before_kernels()
        try:
            st = _local.st
        except AttributeError:  # this thread's first entry
            st = _local.st = [0, 0]
        if st[0] == 0 and AVAILABLE:
            st[1] = _enter()
        st[0] += 1
        return self

    def __exit__(self, *exc):
        st = _local.st
        st[0] -= 1
        if st[0] == 0 and AVAILABLE:
            saved = st[1]
            if saved & FLUSH_BITS != FLUSH_BITS:
                _leave(saved)
        return False


_enter = _k.enter_flush
_leave = _k.leave_flush
_FLUSH = _FlushDenormals()   # (without the setting: only the depth and the hook)


def flush_denormals():
    """Context manager: flush-to-zero in the calling thread inside the block.

    Re-entrant and thread-safe (the register and the depth are per thread):
    the outermost block of a thread sets the bits and puts them back on exit,
    also on an exception; everything else in the register is left alone.
    Does nothing on machines without the setting (:data:`AVAILABLE`).
    """
    return _FLUSH

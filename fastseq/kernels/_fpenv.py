"""Flush-to-zero: the floating-point control register of the calling thread.

Denormal (subnormal) floats, of magnitude below the smallest normal number
(float32 1.18e-38, float64 2.23e-308), take a slow path in most CPUs' floating-point
units: an operation that reads or produces one costs tens to a hundred cycles
instead of one.  Gradients that fade over thousands of time steps become
denormal, and a training run can spend most of its time there.  With
flush-to-zero set, such values are read and written as zero instead.

The setting is a bit of a per-thread control register:

- x86-64: MXCSR, bit 15 FTZ (denormal results become zero) and bit 6 DAZ
  (denormal inputs read as zero), through ``llvm.x86.sse.stmxcsr`` and
  ``llvm.x86.sse.ldmxcsr`` (an ``i8*`` to a 32-bit slot);
- aarch64: FPCR, bit 24 FZ (both), through ``llvm.aarch64.get.fpcr`` and
  ``llvm.aarch64.set.fpcr`` (``i64``);
- any other machine: nothing (:data:`FLUSH_BITS` is 0, the register reads as
  0 and writes are dropped).

The architecture is the one numba compiles for (llvmlite's process triple),
chosen at import; the functions compile on first call, like every kernel.
:mod:`fastseq._fpenv` sets and restores the bits around fastseq's calls.
"""

import llvmlite.binding as llvm
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from .._config import JIT


def machine_arch(triple=None):
    """``"x86_64"``, ``"aarch64"`` or None (any other machine) for an LLVM
    target triple (default: this process's, the one numba compiles for)."""
    arch = (triple or llvm.get_process_triple()).split("-", 1)[0].lower()
    if arch in ("x86_64", "amd64"):
        return "x86_64"
    if arch in ("aarch64", "arm64", "aarch64_be"):
        return "aarch64"
    return None


#: the architecture whose control register this module reads and writes
ARCH = machine_arch()
#: the flush-to-zero bits of the control register: MXCSR FTZ | DAZ on x86-64,
#: FPCR FZ on aarch64, 0 elsewhere (no flushing)
FLUSH_BITS = {"x86_64": (1 << 15) | (1 << 6), "aarch64": 1 << 24}.get(ARCH, 0)

_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_I8P = ir.IntType(8).as_pointer()


def emit_read(builder, arch):
    """LLVM IR reading the control register of ``arch`` (as :func:`machine_arch`
    names it) into an i64; constant 0 for any other machine."""
    module = builder.module
    if arch == "x86_64":
        slot = cgutils.alloca_once(builder, _I32)
        stmxcsr = cgutils.get_or_insert_function(module, ir.FunctionType(ir.VoidType(), [_I8P]),
                                                 "llvm.x86.sse.stmxcsr")
        builder.call(stmxcsr, [builder.bitcast(slot, _I8P)])
        return builder.zext(builder.load(slot), _I64)
    if arch == "aarch64":
        get_fpcr = cgutils.get_or_insert_function(module, ir.FunctionType(_I64, []), "llvm.aarch64.get.fpcr")
        return builder.call(get_fpcr, [])
    return ir.Constant(_I64, 0)


def emit_write(builder, arch, value):
    """LLVM IR writing the i64 ``value`` to the control register of ``arch``
    (its low 32 bits to MXCSR); nothing for any other machine."""
    module = builder.module
    if arch == "x86_64":
        slot = cgutils.alloca_once(builder, _I32)
        builder.store(builder.trunc(value, _I32), slot)
        ldmxcsr = cgutils.get_or_insert_function(module, ir.FunctionType(ir.VoidType(), [_I8P]),
                                                 "llvm.x86.sse.ldmxcsr")
        builder.call(ldmxcsr, [builder.bitcast(slot, _I8P)])
    elif arch == "aarch64":
        set_fpcr = cgutils.get_or_insert_function(module, ir.FunctionType(ir.VoidType(), [_I64]),
                                                  "llvm.aarch64.set.fpcr")
        builder.call(set_fpcr, [value])


@intrinsic
def _read(typingctx):
    """The calling thread's control register (int64)."""
    def codegen(context, builder, signature, args):
        return emit_read(builder, ARCH)
    return types.int64(), codegen


@intrinsic
def _write(typingctx, value):
    """Write ``value`` (int64) to the calling thread's control register."""
    def codegen(context, builder, signature, args):
        emit_write(builder, ARCH, context.cast(builder, args[0], signature.args[0], types.int64))
        return context.get_dummy_value()
    return types.void(types.int64), codegen


@njit(**JIT)
def read_control():
    """The calling thread's floating-point control register: MXCSR (x86-64),
    FPCR (aarch64), 0 elsewhere.

    Returns
    -------
    int64
        The register's bits (MXCSR's bits 0-5 are sticky exception flags
        raised by arithmetic, the others control bits).
    """
    return _read()


@njit(**JIT)
def write_control(value):
    """Write ``value`` (int64, as :func:`read_control` returns) to the calling
    thread's floating-point control register; nothing where there is none."""
    _write(value)


@njit(**JIT)
def enter_flush():
    """Set :data:`FLUSH_BITS` in the calling thread's control register.

    Returns
    -------
    int64
        The register before (for :func:`leave_flush`); it is not written when
        the bits were set already.
    """
    old = _read()
    if (old & FLUSH_BITS) != FLUSH_BITS:
        _write(old | FLUSH_BITS)
    return old


@njit(**JIT)
def leave_flush(old):
    """Put :data:`FLUSH_BITS` of the calling thread's control register back
    as they were in ``old`` (int64, from :func:`enter_flush`); every other bit
    keeps its current value (MXCSR's exception flags raised meanwhile stay
    raised, as after any arithmetic)."""
    cur = _read()
    new = (cur & ~FLUSH_BITS) | (old & FLUSH_BITS)
    if new != cur:
        _write(new)

"""Numbers the compiled kernels read at run time: per-machine thresholds.

A module-level number in a kernel is frozen into its machine code when it
compiles, and numba's cache keeps that code from one process to the next: a
threshold that follows the machine (measured by :mod:`fastseq._plan`) would
stay at whatever the compiling process had.  A :class:`RuntimeInt` is
instead a 64-bit integer in this process's memory that compiled code loads
through an external symbol of its own name; the name is bound to the
integer's address when this module is imported
(``llvmlite.binding.add_symbol``), before any kernel can be compiled or
loaded from the cache, so cached code reads this process's value.  Kernels
read it with the intrinsic :func:`read` of its symbol; Python sets it with
:meth:`RuntimeInt.set` (not while a kernel that reads it runs).
"""

import ctypes

import llvmlite.binding as llvm
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

_I64 = ir.IntType(64)


class RuntimeInt:
    """A 64-bit integer that compiled code reads by the symbol ``name``."""

    __slots__ = ("name", "_cell")

    def __init__(self, name, value):
        self.name = name
        self._cell = ctypes.c_int64(int(value))
        llvm.add_symbol(name, ctypes.addressof(self._cell))

    def get(self):
        return self._cell.value

    def set(self, value):
        self._cell.value = int(value)


def _reader(name):
    """An intrinsic ``() -> int64`` that loads the :class:`RuntimeInt` of
    symbol ``name``."""

    @intrinsic
    def read(typingctx):
        def codegen(context, builder, signature, args):
            module = builder.module
            gv = module.globals.get(name)
            if gv is None:
                gv = ir.GlobalVariable(module, _I64, name=name)
                gv.linkage = "external"
            return builder.load(gv)
        return types.int64(), codegen
    return read


#: the symbols' prefix: this module's import name, so that another copy of
#: the package in the same process (``bench.ab`` imports a second checkout
#: as ``fastseq_other``) binds symbols of its own instead of taking these
#: over; the same from one process to the next, as cached code needs
_PREFIX = __name__.replace(".", "_")

#: rows from which :func:`fastseq.kernels.matmul.packed_matmul` calls BLAS
#: rather than its tiles: the machine's crossover, measured once and kept
#: by :func:`fastseq._plan.resolve_kernel_values`; until then 256 (the
#: crossover of the znver3 machine the tiles were first tuned on)
PACKED_BLAS_MIN_ROWS = RuntimeInt(f"{_PREFIX}_packed_blas_min_rows", 256)
packed_blas_min_rows = _reader(PACKED_BLAS_MIN_ROWS.name)
#: bytes of an input weight from which :func:`fastseq.kernels.matmul.project`
#: calls BLAS rather than its packed blocks: four of this machine's L2
#: caches, set by :func:`fastseq._plan.resolve_kernel_values`; until then 2 MB
#: (four of the znver3's)
PROJECT_BLAS_MIN_BYTES = RuntimeInt(f"{_PREFIX}_project_blas_min_bytes", 2 * 1024 * 1024)
project_blas_min_bytes = _reader(PROJECT_BLAS_MIN_BYTES.name)
#: bytes of this machine's L1 data cache: a one-row product whose packed
#: weight fits in it takes more strips at once
#: (:data:`fastseq.kernels.matmul.BLOCKING`), set by
#: :func:`fastseq._plan.resolve_kernel_values`; until then 32 KB
L1_BYTES = RuntimeInt(f"{_PREFIX}_l1_bytes", 32 * 1024)
l1_bytes = _reader(L1_BYTES.name)

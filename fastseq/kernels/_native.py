"""C functions called by address from compiled code.

:func:`fewest_threads` reads the thread counts of the BLAS and OpenMP
libraries that :mod:`fastseq._threads` honours (``openblas_get_num_threads``,
``MKL_Get_Max_Threads``, ``omp_get_max_threads``: each ``int f(void)``) in
one compiled call instead of one ``ctypes`` call each: a layer's call reads
them every time (``n_jobs=None``), and three to five ``ctypes`` calls were
0.9-1.5 us of a 15 us small call, one compiled call 0.3 us.  The addresses
are arguments, never constants, so the cached code serves every process.
"""

from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from .._config import JIT

#: what a library that reports no count (0 or less) is read as: no limit
NO_LIMIT = 1 << 30


@intrinsic
def _call_int(typingctx, addr):
    """``((int (*)(void)) addr)()`` as an int64."""
    def codegen(context, builder, signature, args):
        fnty = ir.FunctionType(ir.IntType(32), [])
        fn = builder.inttoptr(args[0], fnty.as_pointer())
        return builder.sext(builder.call(fn, []), ir.IntType(64))
    return types.int64(types.int64), codegen


@njit(**JIT)
def fewest_threads(addrs, n_first):
    """``(a, b)``: the fewest threads that the ``int f(void)`` functions at
    ``addrs[:n_first]`` report, and those at ``addrs[n_first:]``
    (:data:`NO_LIMIT` for none, and for a count below 1)."""
    a = b = NO_LIMIT
    for i in range(addrs.shape[0]):
        v = _call_int(addrs[i])
        if v < 1:
            v = NO_LIMIT
        if i < n_first:
            a = min(a, v)
        else:
            b = min(b, v)
    return a, b


@intrinsic
def call_at(typingctx, fn, arg):
    """``((void (*)(int64)) fn)(arg)``: a function compiled with
    ``numba.cfunc`` (signature ``void(int64)``), called by its address."""
    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        fnty = ir.FunctionType(ir.VoidType(), [i64])
        builder.call(builder.inttoptr(args[0], fnty.as_pointer()), [args[1]])
        return context.get_dummy_value()
    return types.void(types.int64, types.int64), codegen


@intrinsic
def pointer_like(typingctx, addr, like):
    """``addr`` (int64) as a pointer to values of ``like``'s type (a scalar
    standing for the type), for ``numba.carray``."""
    if not isinstance(like, types.Number):
        return None
    ptr = types.CPointer(like)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(ptr))
    return ptr(types.int64, like), codegen

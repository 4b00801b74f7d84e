"""The recurrent matrix product of one time step, ``out = a @ w.T``.

``w`` is kept in its natural ``(M, K)`` layout (PyTorch's ``W_hh``).  For the
few rows of one step a BLAS call costs more than it computes: OpenBLAS
repacks all of ``w`` on every call (W_hh is 1 MB at H = 256), and its
small-``n`` path reached 4-35 GFLOP/s on znver3 (2-32 rows).

Time loops use a packed form instead (:func:`pack_weight`,
:func:`packed_matmul`): ``w`` is copied once per kernel call into strips of
one cache line of outputs (``wp[s, k, :]`` = ``w[s*SW:(s+1)*SW, k]``), and a
micro-kernel written in LLVM vector IR (:func:`_tile_rows`) keeps a block of
rows by strips in vector registers while it runs over ``k``: one vector load
of ``wp`` and one broadcast of ``a`` per fused multiply-add group, every load
sequential.  Its vector width and register blocking follow the CPU
(:data:`fastseq._config.VECTOR_BYTES`, :data:`BLOCKING`: 512-bit vectors with
AVX-512, 256-bit with AVX2, 128-bit elsewhere, NEON included); each output's
sum runs over ``k`` in the same order at every width, so the widths give
identical results.  Numba's loop vectoriser does not find this form by itself (a
loop over outputs with scalar accumulators stayed at 2-3 GFLOP/s).  On one
znver3 core, float32, H <= 256, it reaches 27-37 GFLOP/s at one row
(bandwidth-bound), 64-70 at two and 65-97 at 4-32 rows: 1.2-2.5x a dot-product
form with eight running sums (``python bench/matmul_step.py``; the figures for
other CPUs are in bench/RESULTS.md).  The input projection of every step
(:func:`project`) runs through the same product, a block of rows at a time.

Compile time: numba links a callee's code into each caller and optimises it
again there, once per compiled level.  :func:`packed_matmul` is called from
every time loop, so it is kept small: outputs outside the strips, and loops of
one step (no packed weight), take a plain dot-product loop; the decoder's
forward steps use weights packed once per decoding; :func:`project_packed` is
inlined into its callers.  This took a cold small LSTM fit, import included,
from 15 to about 8.5 s.
"""

from types import FunctionType

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from .._config import JIT, VECTOR_BYTES
from . import _runtime
from ._packed import add_bias
from ._sync import store_release

#: rows from which :func:`packed_matmul` calls BLAS instead of its tiles: a
#: number read at run time (:mod:`fastseq.kernels._runtime`), this machine's
#: crossover (:func:`fastseq._plan.resolve_kernel_values`; bench/RESULTS.md,
#: "BLAS or tiles")
PACKED_BLAS_MIN_ROWS = _runtime.PACKED_BLAS_MIN_ROWS

#: bytes of one packed strip: one 64-byte cache line of outputs (16 float32)
STRIP_BYTES = 64
#: bytes of one strip's slice over a block of ``k`` (kept in a 32 KB L1 with
#: the rows' slice while every row block passes over it; 8 KB measured best
#: of 4, 8 and 16 KB at H = 256-512)
KBLOCK_BYTES = 8 * 1024


# ---------------------------------------------------------------------------
# Packed form


@intrinsic
def _tile_rows(typingctx, a, wp, out, n, s0, col0, k0, k1, accumulate, R, S, VB):
    """Micro-kernel over all ``n`` rows of ``a`` and ``S`` packed strips from
    ``s0``: ``out[r, col0 + j*SW + c] (+)= sum_{k0<=k<k1} a[r, k] *
    wp[s0+j, k, c]`` for ``r < n, j < S, c < SW`` (added to ``out`` when
    ``accumulate``).  Rows go in blocks of ``R`` (a power of two), then one
    block of each smaller power of two that the remainder holds; each block
    keeps ``rows * S * SW / VW`` accumulators of ``VB``-byte vectors in
    registers while it runs over ``k``: one vector load of ``wp`` per strip
    vector and one broadcast of ``a`` per row for each fused multiply-add
    group, every load sequential.  ``R``, ``S`` and ``VB`` are compile-time
    constants (module or closure integers): one specialisation each.
    ``wp`` is C-contiguous (:func:`pack_weight`), or any view whose elements
    are unit-stride within a strip (consecutive ``k``
    then lie ``wp.strides[1]`` bytes apart); ``a`` likewise C-contiguous,
    or any view (its ``k`` ``a.strides[1]`` bytes apart)."""
    if not all(isinstance(v, types.IntegerLiteral) for v in (R, S, VB)):
        return None  # numba types the call again with the constants as literals
    R, S, VB = R.literal_value, S.literal_value, VB.literal_value
    if R & (R - 1) or VB not in (16, 32, 64):
        raise TypeError("R must be a power of two and VB 16, 32 or 64")
    sig = types.void(a, wp, out, types.intp, types.intp, types.intp, types.intp, types.intp,
                     types.intp, types.IntegerLiteral(R), types.IntegerLiteral(S), types.IntegerLiteral(VB))

    def codegen(context, builder, signature, args):
        aty, wty, oty = signature.args[:3]
        av, wv, ov = args[:3]
        nv, s0v, c0v, k0v, k1v, accv = (
            context.cast(builder, v, t, types.intp) for v, t in zip(args[3:9], signature.args[3:9]))
        intp = context.get_value_type(types.intp)
        i32 = ir.IntType(32)
        fty = context.get_value_type(aty.dtype)
        VW = VB // context.get_abi_sizeof(fty)  # elements per vector
        C = max(1, STRIP_BYTES // VB)  # vectors per strip
        vty = ir.VectorType(fty, VW)
        vptr = vty.as_pointer()
        aarr = context.make_array(aty)(context, builder, av)
        warr = context.make_array(wty)(context, builder, wv)
        oarr = context.make_array(oty)(context, builder, ov)

        def const(v):
            return ir.Constant(intp, v)

        def item(arr, ty, idx):
            return cgutils.get_item_pointer(context, builder, ty, arr, idx, wraparound=False)

        zero = ir.Constant(vty, [ir.Constant(fty, 0.0)] * VW)
        undef = ir.Constant(vty, ir.Undefined)
        splat = ir.Constant(ir.VectorType(i32, VW), [0] * VW)
        fma = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vty, [vty, vty, vty]),
            "llvm.fma.v%d%s" % (VW, "f32" if fty == ir.FloatType() else "f64"))
        if wty.layout == "C":  # packed strips: k runs one strip apart
            sw = const(C * VW)
        else:  # a strided view: k's stride from the array
            kstride = cgutils.unpack_tuple(builder, warr.strides, 3)[1]
            sw = builder.sdiv(kstride, const(context.get_abi_sizeof(fty)))
        if aty.layout == "C":  # rows of ``a`` unit-stride along k
            ak = None
        else:  # a strided view (:func:`tall_matmul`'s transposed inputs)
            ak = builder.sdiv(cgutils.unpack_tuple(builder, aarr.strides, 2)[1],
                              const(context.get_abi_sizeof(fty)))
        wbase = [item(warr, wty, [builder.add(s0v, const(j)), const(0), const(0)]) for j in range(S)]
        is_acc = builder.icmp_signed("!=", accv, const(0))
        n_k = builder.sub(k1v, k0v)
        # accumulators of the largest block, reused by the smaller ones
        accs = [[cgutils.alloca_once_value(builder, zero) for _ in range(S * C)] for _ in range(R)]

        def block(rows, r0v):
            """``rows`` rows from row ``r0v``."""
            def out_ptrs():
                for r in range(rows):
                    for q in range(S * C):
                        p = item(oarr, oty, [builder.add(r0v, const(r)), builder.add(c0v, const(q * VW))])
                        yield r, q, builder.bitcast(p, vptr)

            for r in range(rows):
                for q in range(S * C):
                    builder.store(zero, accs[r][q])
            with builder.if_then(is_acc):
                for r, q, p in out_ptrs():
                    builder.store(builder.load(p, align=4), accs[r][q])
            abase = [item(aarr, aty, [builder.add(r0v, const(r)), const(0)]) for r in range(rows)]
            with cgutils.for_range(builder, n_k, intp=intp) as loop:
                k = builder.add(loop.index, k0v)
                koff = builder.mul(k, sw)
                wvec = []
                for j in range(S):
                    for c in range(C):
                        p = builder.gep(wbase[j], [builder.add(koff, const(c * VW))])
                        wvec.append(builder.load(builder.bitcast(p, vptr), align=4))
                for r in range(rows):
                    x = builder.load(builder.gep(abase[r], [k if ak is None else builder.mul(k, ak)]))
                    bx = builder.shuffle_vector(builder.insert_element(undef, x, ir.Constant(i32, 0)),
                                                undef, splat)
                    for q in range(S * C):
                        builder.store(builder.call(fma, [bx, wvec[q], builder.load(accs[r][q])]),
                                      accs[r][q])
            for r, q, p in out_ptrs():
                builder.store(builder.load(accs[r][q]), p, align=4)

        # whole blocks of R rows, then the remainder's binary digits
        r_ptr = cgutils.alloca_once_value(builder, const(0))
        with cgutils.for_range(builder, builder.sdiv(nv, const(R)), intp=intp) as loop:
            block(R, builder.mul(loop.index, const(R)))
        builder.store(builder.mul(builder.sdiv(nv, const(R)), const(R)), r_ptr)
        rows = R // 2
        while rows >= 1:
            r0v = builder.load(r_ptr)
            has = builder.icmp_signed("!=", builder.and_(builder.sub(nv, r0v), const(rows)), const(0))
            with builder.if_then(has):
                block(rows, r0v)
                builder.store(builder.add(r0v, const(rows)), r_ptr)
            rows //= 2
        return context.get_dummy_value()
    return sig, codegen


#: register blocking of the packed product for each vector width in bytes:
#: (rows, strips) of the main tile, strips taken at once for two rows, and
#: for one row when its packed weight fits in L1 (``l1_bytes``) and when it
#: does not.  A strip is one cache line of outputs (``STRIP_BYTES //
#: vector bytes`` vectors); accumulators are rows x strips x vectors a strip,
#: kept within the register file with room for the strip vectors and a
#: broadcast: 8 of AVX2's 16 registers, 16 of AVX-512's 32, 16 of NEON's 32.
#: One row from L1 is bound by the latency of its accumulators' chains, and
#: takes 8 of them; from L2 by the weight's stream, which fewer strips at
#: once keep better (AVX-512 figures against other blockings in
#: bench/RESULTS.md, "twenty-first session" for one row).
BLOCKING = {64: (4, 4, 4, 8, 4), 32: (4, 1, 2, 4, 4), 16: (4, 1, 2, 4, 4)}
#: rows of a step from which a time loop may take its input projection into
#: the step's product (:func:`fastseq.kernels.infer.lstm_fused_slice`): one
#: row block of every width's micro-kernel, where the product is
#: compute-bound rather than bound by streaming the weights
FUSED_MIN_ROWS = min(b[0] for b in BLOCKING.values())


@intrinsic
def _pack_block(typingctx, w, wp, s, k0):
    """``wp[s, k0 + i, c] = w[s*SW + c, k0 + i]`` for ``i < VW`` (one 256-bit
    vector of elements) and ``c < SW``: VW-wide loads along rows of ``w``
    (unit stride over ``k`` required), VW x VW transposes in registers, VW-wide
    stores; about a third of the scalar copy's time (znver3)."""
    sig = types.void(w, wp, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        wty, pty = signature.args[:2]
        wv, pv = args[:2]
        sv, k0v = (context.cast(builder, v, t, types.intp) for v, t in zip(args[2:], signature.args[2:]))
        intp = context.get_value_type(types.intp)
        i32 = ir.IntType(32)
        fty = context.get_value_type(wty.dtype)
        size = context.get_abi_sizeof(fty)
        VW, SW = 32 // size, STRIP_BYTES // size
        vptr = ir.VectorType(fty, VW).as_pointer()
        warr = context.make_array(wty)(context, builder, wv)
        parr = context.make_array(pty)(context, builder, pv)
        h = VW // 2
        # one stage of the perfect-shuffle transpose: (a, b) -> interleaved halves
        lo = ir.Constant(ir.VectorType(i32, VW), [x for j in range(h) for x in (j, VW + j)])
        hi = ir.Constant(ir.VectorType(i32, VW), [x for j in range(h, VW) for x in (j, VW + j)])

        def const(v):
            return ir.Constant(intp, v)

        row0 = builder.mul(sv, const(SW))
        for g in range(SW // VW):
            rows = []
            for i in range(VW):
                p = cgutils.get_item_pointer(context, builder, wty, warr,
                                             [builder.add(row0, const(g * VW + i)), k0v], wraparound=False)
                rows.append(builder.load(builder.bitcast(p, vptr), align=size))
            for _ in range(VW.bit_length() - 1):
                nxt = []
                for i in range(h):
                    nxt.append(builder.shuffle_vector(rows[i], rows[i + h], lo))
                    nxt.append(builder.shuffle_vector(rows[i], rows[i + h], hi))
                rows = nxt
            for i in range(VW):
                p = cgutils.get_item_pointer(context, builder, pty, parr,
                                             [sv, builder.add(k0v, const(i)), const(g * VW)], wraparound=False)
                builder.store(rows[i], builder.bitcast(p, vptr), align=size)
        return context.get_dummy_value()
    return sig, codegen


@njit(inline="always", **JIT)
def empty_strips(w, ns):
    """An uninitialised (ns, K, SW) array of ``w``'s dtype (``K`` its
    columns, SW the outputs of a strip) whose first element starts a
    64-byte line, so that every strip vector of the packed product is one
    aligned load (numba aligns arrays to 32 bytes: half of them put every
    64-byte vector across two lines, which cost a one-row product 1.2-1.6x
    its time at H = 32-128 on a znver5; bench/RESULTS.md, "twenty-first
    session")."""
    return aligned_strips(w, ns, w.shape[1])


@njit(inline="always", **JIT)
def aligned_strips(x, ns, K):
    """An uninitialised (ns, K, SW) array of ``x``'s dtype whose first
    element starts a 64-byte line (:func:`empty_strips` for ``K`` given)."""
    SW = STRIP_BYTES // x.itemsize
    n = ns * K * SW
    buf = np.empty(n + SW, dtype=x.dtype)
    off = ((STRIP_BYTES - np.int64(buf.ctypes.data) % STRIP_BYTES) % STRIP_BYTES) // x.itemsize
    return buf[off:off + n].reshape((ns, K, SW))


@njit(**JIT)
def pack_weight(w):
    """``w`` (M, K) as (M // SW, K, SW) strips, SW outputs of one cache line
    each (``wp[s, k, c] = w[s*SW + c, k]``); the last ``M % SW`` outputs are
    left to plain dot products.  Blocks of one vector of ``k`` go through
    :func:`_pack_block` when ``w``'s rows are unit-stride.  The strips start
    a cache line (:func:`empty_strips`)."""
    M, K = w.shape
    SW = STRIP_BYTES // w.itemsize
    wp = empty_strips(w, M // SW)
    pack_into(w, wp)
    return wp


@njit(**JIT)
def pack_into(w, wp):
    """:func:`pack_weight` into a given ``wp`` of shape ``packed_shape(w)``
    (for callers in Python, which should not take arrays returned by
    cached kernels)."""
    M, K = w.shape
    SW = STRIP_BYTES // w.itemsize
    VW = 32 // w.itemsize
    NS = M // SW
    kv = K - K % VW if w.strides[1] == w.itemsize else 0
    for s in range(NS):
        for k in range(0, kv, VW):
            _pack_block(w, wp, s, k)
        for c in range(SW):
            wr = w[s * SW + c]
            for k in range(kv, K):
                wp[s, k, c] = wr[k]


def packed_shape(w):
    """Shape of :func:`pack_weight`'s result for ``w`` (M, K)."""
    SW = STRIP_BYTES // w.itemsize
    return (w.shape[0] // SW, w.shape[1], SW)


@njit(**JIT)
def no_packed_weight(w):
    """An empty packed weight: :func:`packed_matmul` then computes plain dot
    products (used for loops of one step only)."""
    return np.empty((0, w.shape[1], STRIP_BYTES // w.itemsize), dtype=w.dtype)


@njit(**JIT)
def pack_for_steps(w, steps):
    """:func:`pack_weight` for a loop of more than one step, else nothing
    (a single step, as the decoder runs, does not repay the copy)."""
    if steps > 1:
        return pack_weight(w)
    return no_packed_weight(w)


@njit(inline="always", **JIT)
def shared_or_packed(w, wp, steps):
    """``wp`` when it holds strips (a packed ``w`` that the batch slices of
    one call share: packed once, read by every thread from one copy), else
    :func:`pack_for_steps` of ``w`` for this slice's own loop."""
    if wp.shape[0] > 0:
        return wp
    return pack_for_steps(w, steps)


def _packed_matmul_for(vector_bytes, blocking=None):
    """:func:`packed_matmul` for micro-kernels of ``vector_bytes`` vectors
    and ``blocking`` (default ``BLOCKING[vector_bytes]``), as a plain Python
    function to compile; the package compiles it for
    :data:`fastseq._config.VECTOR_BYTES`, tests for every width and
    ``bench/matmul_step.py`` for other blockings."""
    VB = vector_bytes
    R, S, S2, S1, S1L2 = BLOCKING[VB] if blocking is None else blocking
    # one row: groups of S1 strips (S1L2 beyond L1), then of each smaller
    # power of two that the strips left hold (three group sizes, then single
    # strips)
    S1h, S1q = max(1, S1 // 2), max(1, S1 // 4)
    if S1 & (S1 - 1) or S1 > 8 or S1L2 not in (S1, S1h):
        raise ValueError("one row's strips at once must be a power of two up to 8, and beyond L1 it or its half")

    def packed_matmul(a, w, wp, out):
        """``out = a @ w.T`` from ``wp = pack_weight(w)``; BLAS from
        :data:`PACKED_BLAS_MIN_ROWS` rows (read at run time), plain dot products when ``wp`` is
        empty or an array is not unit-stride along its rows.

        Groups of strips (:data:`BLOCKING`: more strips at once for one or
        two rows, so that enough accumulators are in flight), each over
        blocks of :data:`KBLOCK_BYTES` of the strip (kept in L1), every row
        through :func:`_tile_rows`.
        """
        n, K = a.shape
        M = w.shape[0]
        isz = a.itemsize
        if n >= _runtime.packed_blas_min_rows():
            np.dot(a, w.T, out)
            return
        m_dot = 0
        if wp.shape[0] > 0 and a.strides[1] == isz and out.strides[1] == isz and n > 0:
            SW = wp.shape[2]
            NS = wp.shape[0]
            m_dot = NS * SW
            KB = max(1, KBLOCK_BYTES // (SW * isz))
            s = 0
            top = S1 if NS * K * SW * isz <= _runtime.l1_bytes() else S1L2
            while s < NS:
                if n == 1:
                    gs = top
                    while gs > NS - s:
                        gs //= 2
                else:
                    gs = S2 if n == 2 else S
                    if s + gs > NS:
                        gs = 1
                for k0 in range(0, K, KB):
                    k1 = min(K, k0 + KB)
                    acc = 1 if k0 > 0 else 0
                    if gs == 1:
                        _tile_rows(a, wp, out, n, s, s * SW, k0, k1, acc, R, 1, VB)
                    elif n == 1:
                        if gs == S1:
                            _tile_rows(a, wp, out, n, s, s * SW, k0, k1, acc, 1, S1, VB)
                        elif gs == S1h:
                            _tile_rows(a, wp, out, n, s, s * SW, k0, k1, acc, 1, S1h, VB)
                        else:
                            _tile_rows(a, wp, out, n, s, s * SW, k0, k1, acc, 1, S1q, VB)
                    elif n == 2:
                        _tile_rows(a, wp, out, n, s, s * SW, k0, k1, acc, 2, S2, VB)
                    else:
                        _tile_rows(a, wp, out, n, s, s * SW, k0, k1, acc, R, S, VB)
                s += gs
        # the outputs not in a strip (all of them without a packed weight): dot
        # products, one loop (an unrolled form would be compiled again into
        # every time-loop kernel)
        z = a.dtype.type(0)
        for m in range(m_dot, M):
            wr = w[m]
            for r in range(n):
                ar = a[r]
                acc_m = z
                for k in range(K):
                    acc_m += ar[k] * wr[k]
                out[r, m] = acc_m

    return packed_matmul


#: ``out = a @ w.T`` from ``wp = pack_weight(w)`` (see
#: :func:`_packed_matmul_for`), with this machine's vector width
packed_matmul = njit(**JIT)(_packed_matmul_for(VECTOR_BYTES))


@njit(inline="always", **JIT)
def _transposed_rows(x, f0, f1):
    """Rows ``f0..f1`` of ``x.T`` (a strided view: :func:`_tile_rows`
    reads ``k`` ``x.strides[0]`` apart)."""
    return x.T[f0:f1]


@njit(inline="always", **JIT)
def _given_rows(xt, f0, f1):
    """Rows ``f0..f1`` of ``xt``, inputs already transposed (read in order)."""
    return xt[f0:f1]


@njit(inline="always", **JIT)
def _copy_strips(g, block, k0, k1, s, gs, SW):
    """``block[j, k - k0, c] = g[k, (s + j)*SW + c]`` for ``j < gs`` and
    ``k0 <= k < k1``: strips of ``g``'s columns packed for
    :func:`tall_matmul`.  ``SW`` must be a constant where this is inlined
    (an itemsize read from the array is not one, and the copy with it ran
    at about half the speed)."""
    for j in range(gs):
        c0 = (s + j) * SW
        for k in range(k1 - k0):
            gr = g[k0 + k]
            for c in range(SW):
                block[j, k, c] = gr[c0 + c]


@njit(inline="always", **JIT)
def _copy_strip_group(g, block, k0, k1, s, s1, S):
    """:func:`_copy_strips` of the next group of strips from ``s`` (``S``
    of them, or a single one where fewer than ``S`` are left before
    ``s1``), with this dtype's strip width as the constant it needs;
    returns the group's size."""
    gs = S if s + S <= s1 else 1
    if g.itemsize == 4:
        _copy_strips(g, block, k0, k1, s, gs, 16)
    else:
        _copy_strips(g, block, k0, k1, s, gs, 8)
    return gs


def _tall_matmul_for(vector_bytes, transposed=False):
    """:func:`tall_matmul` for micro-kernels of ``vector_bytes`` vectors (as
    :func:`_packed_matmul_for`: the package compiles this machine's width,
    tests every width); with ``transposed``, :func:`tall_matmul_t`."""
    VB = vector_bytes
    R, S = BLOCKING[VB][:2]

    def tall_matmul(x, g, out, f0, f1, s0, s1, tail):
        """``out[f0:f1, cols] = x.T[f0:f1] @ g[:, cols]`` for the columns of
        strips ``s0 <= s < s1`` of ``g`` (SW columns each) and, with
        ``tail``, the columns past its last whole strip: the weight gradient
        ``g.T @ x`` of a layer (``g`` (N, M) its gate gradients, ``x`` (N,
        F) its inputs, both C-contiguous; ``x.T`` is read in place),
        transposed, for few inputs ``F``, where BLAS runs far below its rate
        (two threads, znver4: 13 GFLOP/s for 6 inputs into 192 gates, this
        29; ``python -m bench.wgrad``).

        Over blocks of :data:`KBLOCK_BYTES` of ``k`` (the outer loop: ``g``
        is read once, in order), ``S`` strips of ``g`` at a time (SW
        columns each) are copied into a packed block kept in L1, through
        which :func:`_tile_rows` runs the ``F`` rows of ``xt`` in register
        blocks as it would a packed weight's strips.  (Read in place, a
        strip's ``k`` lie a row of ``g`` apart, ``M`` elements: at 1,024
        gates every one in the same L1 set, so that each row block read
        the strips back from L2; one thread, 3,584 rows, 285 inputs into
        1,024 gates, 135 -> 215 GFLOP/s: bench/RESULTS.md, "twenty-second
        session".)  Each output sums over ``k`` in order, whatever the
        strip ranges: threads may take disjoint ranges (of strips or rows)
        side by side with identical results."""
        xt = rows_of(x, f0, f1)
        out = out[f0:f1]
        F, N = xt.shape
        SW = STRIP_BYTES // g.itemsize
        KB = max(1, KBLOCK_BYTES // (SW * xt.itemsize))
        if N == 0:  # an empty sum (no k block writes anything)
            out[:, s0 * SW:(g.shape[1] if tail else s1 * SW)] = 0
        block = aligned_strips(g, S, KB)
        for k0 in range(0, N, KB):
            k1 = min(N, k0 + KB)
            acc = 1 if k0 > 0 else 0
            a = xt[:, k0:k1]
            s = s0
            while s < s1:
                gs = _copy_strip_group(g, block, k0, k1, s, s1, S)
                if gs == S:
                    _tile_rows(a, block, out, F, 0, s * SW, 0, k1 - k0, acc, R, S, VB)
                else:
                    _tile_rows(a, block, out, F, 0, s * SW, 0, k1 - k0, acc, R, 1, VB)
                s += gs
        if tail:
            z = xt.dtype.type(0)
            for m in range((g.shape[1] // SW) * SW, g.shape[1]):
                for f in range(F):
                    xr = xt[f]
                    acc_m = z
                    for k in range(N):
                        acc_m += xr[k] * g[k, m]
                    out[f, m] = acc_m

    # ``rows_of`` becomes the module's global of either form, not a closure
    # cell: numba's cache keys a function by its closure's pickled values,
    # and a pickled dispatcher carries a fresh id in every process (with a
    # cell of it the cache missed, and the function compiled again, in every
    # process); each form has a name of its own, so that the two keep
    # separate index files
    rows_name = "_given_rows" if transposed else "_transposed_rows"
    code = tall_matmul.__code__
    code = code.replace(co_names=tuple(rows_name if n == "rows_of" else n for n in code.co_names))
    fn = FunctionType(code, tall_matmul.__globals__, tall_matmul.__name__, tall_matmul.__defaults__,
                      tall_matmul.__closure__)
    fn.__qualname__ = tall_matmul.__qualname__ + ("_t" if transposed else "")
    fn.__doc__, fn.__module__ = tall_matmul.__doc__, tall_matmul.__module__
    return fn


#: ``out[:, cols] = xt @ g[:, cols]`` by strips (see :func:`_tall_matmul_for`),
#: with this machine's vector width
tall_matmul = njit(**JIT)(_tall_matmul_for(VECTOR_BYTES))
#: :func:`tall_matmul` from the inputs already transposed: ``x`` (F, N),
#: C-contiguous, ``out[f0:f1, cols] = x[f0:f1] @ g[:, cols]``.  Each row
#: block of the micro-kernel then reads its rows of ``x`` in order rather
#: than a few elements of each of ``k`` rows of (N, F) inputs: two
#: threads, 3,584 x 285 inputs into 1,024 gates, 159 -> 186 GFLOP/s
#: (BLAS 144; bench/RESULTS.md, "eighteenth session").  For inputs that a
#: caller copies anyway (:func:`transpose_into` writes them so)
tall_matmul_t = njit(**JIT)(_tall_matmul_for(VECTOR_BYTES, True))


def _tall_cat_for(vector_bytes):
    """:func:`tall_matmul_cat` for micro-kernels of ``vector_bytes`` vectors
    (as :func:`_tall_matmul_for`)."""
    VB = vector_bytes
    R, S = BLOCKING[VB][:2]

    def tall_matmul_cat(x, h, h0, batch_sizes, g, out, f0, f1, s0, s1):
        """``out[f0:f1, cols] = [x | h_prev | 1].T[f0:f1] @ g[:, cols]`` for
        the columns of strips ``s0 <= s < s1`` of ``g`` (N, M) (whole
        strips only): both weight gradients of a layer and its bias
        gradient in one pass over ``g``, each input read in place.  ``x``
        (N, F) the layer's inputs (packed rows); ``h_prev`` its recurrent
        inputs: ``h0[n]`` for the first step's rows (``n < batch_sizes[0]``;
        ``h0`` (0, H) for zero states, whose rows add nothing and are
        skipped), and for a row of step ``t > 0`` the row of ``h`` (N, H,
        the layer's packed outputs) ``batch_sizes[t - 1]`` before it: the
        same sequence's previous step; ``out`` (F + H + 1, M).  With no
        state columns (H = 0) ``batch_sizes`` is not read.

        :func:`tall_matmul` over the three sources at once: each k block
        of ``g``'s strips is packed into L1 once (blocks end where the
        first step's rows end and where the batch size changes) and every
        source's rows run over it.  Without it the sources were first
        transposed into one (F + H + 1, N) buffer (a ragged batch's
        previous states gathered before): at MNIST rows (3,584 x 285 into
        1,024 gates) 6.4 ms against 5.5 in place (two threads, znver5;
        ``python -m bench.wgrad``).  Each output sums over its rows in
        order (a skipped zero state adds exactly 0), so the bits are those
        of :func:`tall_matmul_t` over the buffer, and threads may take
        disjoint ranges (of strips or rows) side by side."""
        N, F = x.shape
        H = h.shape[1]
        B = batch_sizes[0] if H > 0 and N > 0 else 0
        with_h0 = h0.shape[0] > 0
        SW = STRIP_BYTES // g.itemsize
        KB = max(1, KBLOCK_BYTES // (SW * x.itemsize))
        # each source's share of the rows [f0, f1): x, h_prev, the ones
        xa, xb = min(f0, F), min(f1, F)
        ha, hb = min(max(f0, F), F + H) - F, min(max(f1, F), F + H) - F
        ones_row = f0 <= F + H < f1
        if hb > ha and not with_h0 and B == N:   # (one step: h_prev is all zero)
            out[F + ha:F + hb, s0 * SW:s1 * SW] = 0
        if N == 0:   # an empty sum (no k block writes anything)
            out[f0:f1, s0 * SW:s1 * SW] = 0
        block = aligned_strips(g, S, KB)
        ones = np.ones((KB, 1), dtype=x.dtype)
        xt, ht, h0t, onest = x.T, h.T, h0.T, ones.T
        # runs of rows whose h_prev lies ``shift`` rows back in ``h``: the
        # first step's (h0's, shift -1), then steps after a step of one size
        k0 = 0
        t = 1
        while k0 < N:
            if k0 < B:
                end, shift = B, -1
            elif H == 0:
                end, shift = N, 0
            else:
                shift = batch_sizes[t - 1]
                end = k0
                while t < batch_sizes.shape[0] and batch_sizes[t - 1] == shift:
                    end += batch_sizes[t]
                    t += 1
                if end <= k0:   # (batch sizes that sum to fewer rows: never from a layer)
                    break
            while k0 < end:
                k1 = min(k0 + KB, end)
                acc = 1 if k0 > 0 else 0
                # (h_prev's sums start at B where the zero states are skipped)
                acc_h = acc if with_h0 or k0 < B else (1 if k0 > B else 0)
                s = s0
                while s < s1:
                    gs = _copy_strip_group(g, block, k0, k1, s, s1, S)
                    col = s * SW
                    n = k1 - k0
                    has_h = hb > ha and (shift >= 0 or with_h0)
                    if gs == S:
                        if xb > xa:
                            _tile_rows(xt[xa:xb, k0:k1], block, out[xa:xb], xb - xa, 0, col, 0, n, acc, R, S, VB)
                        if has_h:
                            a = ht[ha:hb, k0 - shift:k1 - shift] if shift >= 0 else h0t[ha:hb, k0:k1]
                            _tile_rows(a, block, out[F + ha:F + hb], hb - ha, 0, col, 0, n, acc_h, R, S, VB)
                        if ones_row:
                            _tile_rows(onest[:, :n], block, out[F + H:], 1, 0, col, 0, n, acc, R, S, VB)
                    else:
                        if xb > xa:
                            _tile_rows(xt[xa:xb, k0:k1], block, out[xa:xb], xb - xa, 0, col, 0, n, acc, R, 1, VB)
                        if has_h:
                            a = ht[ha:hb, k0 - shift:k1 - shift] if shift >= 0 else h0t[ha:hb, k0:k1]
                            _tile_rows(a, block, out[F + ha:F + hb], hb - ha, 0, col, 0, n, acc_h, R, 1, VB)
                        if ones_row:
                            _tile_rows(onest[:, :n], block, out[F + H:], 1, 0, col, 0, n, acc, R, 1, VB)
                    s += gs
                k0 = k1

    return tall_matmul_cat


#: ``out[f0:f1, cols] = [x | h_prev | 1].T[f0:f1] @ g[:, cols]`` (see
#: :func:`_tall_cat_for`), with this machine's vector width
tall_matmul_cat = njit(**JIT)(_tall_cat_for(VECTOR_BYTES))


@njit(**JIT)
def transpose_into(src, dst, row0, col0, n0, n1):
    """``dst[row0 + k, col0 + n] = src[n, k]`` for ``n0 <= n < n1`` and
    every column ``k`` of ``src`` (N, K), C-contiguous: blocks of one
    strip of rows by one vector of columns through :func:`_pack_block`
    (transposed in registers; ``dst`` seen as strips by
    :func:`strips_view`), the rest element by element.
    Threads may take disjoint ranges of ``n``."""
    K = src.shape[1]
    isz = src.itemsize
    SW = STRIP_BYTES // isz
    VW = 32 // isz
    ns = (n1 - n0) // SW
    kv = K - K % VW
    if ns > 0:
        w = src[n0:n1]
        wp = strips_view(dst[row0:row0 + K, col0 + n0:col0 + n1])
        for s in range(ns):
            for k in range(0, kv, VW):
                _pack_block(w, wp, s, k)
            for k in range(kv, K):
                dr = dst[row0 + k]
                for c in range(SW):
                    dr[col0 + n0 + s * SW + c] = src[n0 + s * SW + c, k]
    for k in range(K):
        dr = dst[row0 + k]
        for n in range(n0 + ns * SW, n1):
            dr[col0 + n] = src[n, k]


@njit(inline="always", **JIT)
def strips_view(g):
    """``g`` (N, M), C-contiguous, as (M // SW, N, SW) strips of SW
    columns (:func:`transpose_into` writes through it; a view built in
    compiled code, so that its type
    is a strided array even where it happens to be contiguous: one
    signature)."""
    isz = g.itemsize
    SW = STRIP_BYTES // isz
    return np.lib.stride_tricks.as_strided(g, shape=(g.shape[1] // SW, g.shape[0], SW),
                                           strides=(SW * isz, g.strides[0], isz))


#: rows per block of :func:`project` (a block's output stays in L1/L2 while
#: the bias is added)
PROJECT_ROWS = 32
#: rows :func:`project_ahead` computes between two publications (at least
#: one step): small, so that the time loop can start early
PIPELINE_ROWS = 16


#: bytes of ``w`` from which :func:`project` calls BLAS: the packed blocks
#: stream all of ``w`` once per 32 rows, from memory once it is past the
#: caches.  Four L2 caches of the machine at hand, read at run time
#: (:mod:`fastseq.kernels._runtime`; bench/RESULTS.md, "BLAS or tiles")
PROJECT_BLAS_MIN_BYTES = _runtime.PROJECT_BLAS_MIN_BYTES


@njit(**JIT)
def project(inp, w, bias, out):
    """``out = inp @ w.T + bias`` (no bias when ``bias`` is empty): the input
    projection of every step, in blocks of :data:`PROJECT_ROWS` rows through
    the packed product, the bias added while a block is in cache.  A row's
    result does not depend on the block it is in (every tile runs the same
    fused multiply-adds in the same order), so callers may split the rows
    across threads or steps freely.  Faster than BLAS and a separate bias
    pass for the thin products of recurrent inputs (1.5x at K = 5, 1.3x at
    K = 28, a tie from K = 128; one thread).  From
    :data:`PROJECT_BLAS_MIN_BYTES` of ``w``: BLAS, then the bias (a row's
    result then depends on BLAS's blocking: callers split rows only by the
    thread count, which fixes it)."""
    if w.shape[0] * w.shape[1] * w.itemsize >= _runtime.project_blas_min_bytes():
        np.dot(inp, w.T, out)
        add_bias(out, bias, 0, out.shape[0])
        return
    project_packed(inp, w, pack_weight(w), bias, out)


@njit(inline="always", **JIT)
def project_packed(inp, w, wp, bias, out):
    """:func:`project` with ``wp = pack_weight(w)`` given (inlined into its
    two callers: one compiled level less for the packed product to be
    optimised again in)."""
    n = inp.shape[0]
    for r0 in range(0, n, PROJECT_ROWS):
        r1 = min(n, r0 + PROJECT_ROWS)
        packed_matmul(inp[r0:r1], w, wp, out[r0:r1])
        add_bias(out, bias, r0, r1)


#: rows per block of :func:`project_shared`: a weight streamed from the L3
#: (past the L2) is read once per block, four times less often than in
#: :data:`PROJECT_ROWS` (16 MB of weight, one thread: 99 -> 105 GFLOP/s;
#: 256 rows fall back, 190: bench/RESULTS.md, "eighteenth session")
PROJECT_STREAMED_ROWS = 128


@njit(**JIT)
def project_shared(inp, w, wp, bias, out):
    """:func:`project`'s packed path from ``wp = pack_weight(w)`` given (a
    copy that the threads splitting the rows share:
    :func:`fastseq._threads.parallel_project`), in blocks of
    :data:`PROJECT_STREAMED_ROWS` rows; a row's result is
    :func:`project_packed`'s."""
    n = inp.shape[0]
    for r0 in range(0, n, PROJECT_STREAMED_ROWS):
        r1 = min(n, r0 + PROJECT_STREAMED_ROWS)
        packed_matmul(inp[r0:r1], w, wp, out[r0:r1])
        add_bias(out, bias, r0, r1)


@njit(**JIT)
def project_ahead(inp, w, bias, batch_sizes, out, ready):
    """Producer of a time loop's input: :func:`project` a few steps at a time
    (about :data:`PIPELINE_ROWS` rows; step ``t`` has ``batch_sizes[t]``
    rows, in order), publishing the number of steps done in ``ready[0]``
    (release store) for a loop started with ``ready`` (see
    ``lstm_forward_slice``).  The rows come out as :func:`project_packed`'s
    (as :func:`project`'s below :data:`PROJECT_BLAS_MIN_BYTES` of ``w``)."""
    project_ahead_packed(inp, w, pack_weight(w), bias, batch_sizes, out, ready)


@njit(**JIT)
def project_ahead_packed(inp, w, wp, bias, batch_sizes, out, ready):
    """:func:`project_ahead` with ``wp = pack_weight(w)`` given (a compiled
    task that allocates nothing: :mod:`fastseq.kernels.infer_native`)."""
    T = batch_sizes.shape[0]
    t0 = 0
    r0 = 0
    while t0 < T:
        t1 = t0
        r1 = r0
        while t1 < T and (t1 == t0 or r1 - r0 + batch_sizes[t1] <= PIPELINE_ROWS):
            r1 += batch_sizes[t1]
            t1 += 1
        project_packed(inp[r0:r1], w, wp, bias, out[r0:r1])
        store_release(ready, 0, t1)
        t0 = t1
        r0 = r1

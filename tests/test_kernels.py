"""Each kernel called directly on packed arrays, against the naive reference.

Outputs are pre-filled with NaN: a kernel that read a row before writing it
(e.g. ``h[t-1]`` at t = 0, which silently wraps to the last row in compiled
code) would leave NaN behind.
"""

import os

import numpy as np
import pytest

from fastseq import kernels as K
from fastseq._data import Packing
from reference import run_direction

LENGTHS = [5, 1, 3, 5, 2]


def _setup(cell, dtype=np.float64, F=3, H=4, seed=0):
    rng = np.random.default_rng(seed)
    G = K.NUM_GATES[cell]
    W_ih = rng.uniform(-0.6, 0.6, (G * H, F))
    W_hh = rng.uniform(-0.6, 0.6, (G * H, H))
    b_ih = rng.uniform(-0.3, 0.3, G * H)
    b_hh = rng.uniform(-0.3, 0.3, G * H)
    pk = Packing(np.array(LENGTHS))
    seqs = [rng.standard_normal((n, F)) for n in LENGTHS]
    X = np.zeros((len(LENGTHS), max(LENGTHS), F))
    for b, s in enumerate(seqs):
        X[b, :len(s)] = s
    inp = pk.pack(X, dtype)
    h0 = rng.standard_normal((len(LENGTHS), H)) * 0.5
    c0 = rng.standard_normal((len(LENGTHS), H)) * 0.5
    return dict(W_ih=W_ih, W_hh=W_hh, b_ih=b_ih, b_hh=b_hh, pk=pk, seqs=seqs, inp=inp, h0=h0, c0=c0,
                H=H, G=G, dtype=dtype)


def _nan(shape, dtype):
    return np.full(shape, np.nan, dtype=dtype)


def _forward(cell, s, relu=0):
    pk, H, G, dt = s["pk"], s["H"], s["G"], s["dtype"]
    xp = (s["inp"] @ s["W_ih"].T + s["b_ih"]).astype(dt)
    if cell != "gru":
        xp += s["b_hh"].astype(dt)
    else:
        xp[:, :2 * H] += s["b_hh"][:2 * H].astype(dt)
    w_hh = np.ascontiguousarray(s["W_hh"], dtype=dt)
    h0, c0 = pk.sort(s["h0"]).astype(dt), pk.sort(s["c0"]).astype(dt)
    mask = np.empty((0, H), dtype=dt)
    out_h = _nan((pk.N, H), dt)
    extra = {}
    if cell == "lstm":
        extra["out_c"], extra["gates"] = _nan((pk.N, H), dt), _nan((pk.N, 4 * H), dt)
        K.lstm_sequence_forward(xp, w_hh, h0, c0, pk.batch_sizes, mask, out_h, extra["out_c"], extra["gates"])
    elif cell == "gru":
        extra["gates"] = _nan((pk.N, 4 * H), dt)
        b_hn = s["b_hh"][2 * H:].astype(dt)
        K.gru_sequence_forward(xp, w_hh, b_hn, h0, pk.batch_sizes, mask, out_h, extra["gates"])
    else:
        K.rnn_sequence_forward(xp, w_hh, h0, pk.batch_sizes, mask, relu, out_h)
    return out_h, h0, c0, mask, extra


@pytest.mark.parametrize("cell,relu", [("rnn", 0), ("rnn", 1), ("lstm", 0), ("gru", 0)])
def test_forward_kernel_matches_reference(cell, relu):
    s = _setup(cell)
    out_h, _, _, _, extra = _forward(cell, s, relu)
    pk = s["pk"]
    assert np.all(np.isfinite(out_h))
    for sorted_b, b in enumerate(pk.order):
        rows = pk.offsets[:LENGTHS[b]] + sorted_b
        ref, _, ref_c = run_direction(cell, s["seqs"][b], s["h0"][b], s["c0"][b] if cell == "lstm" else None,
                                      s["W_ih"], s["W_hh"], s["b_ih"], s["b_hh"], "relu" if relu else "tanh")
        np.testing.assert_allclose(out_h[rows], ref, rtol=1e-13, atol=1e-13)
        if cell == "lstm":
            np.testing.assert_allclose(extra["out_c"][rows[-1]], ref_c, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("cell,relu", [("rnn", 0), ("rnn", 1), ("lstm", 0), ("gru", 0)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_backward_kernel_writes_every_row_and_state(cell, relu, dtype):
    s = _setup(cell, dtype=dtype)
    out_h, h0, c0, mask, extra = _forward(cell, s, relu)
    pk, H, G = s["pk"], s["H"], s["G"]
    rng = np.random.default_rng(1)
    d_out = rng.standard_normal((pk.N, H)).astype(dtype)
    dh = rng.standard_normal((pk.B, H)).astype(dtype)
    w_hh_t = np.ascontiguousarray(s["W_hh"].T, dtype=dtype)
    dg = _nan((pk.N, G * H), dtype)
    if cell == "lstm":
        dc = rng.standard_normal((pk.B, H)).astype(dtype)
        K.lstm_sequence_backward(d_out, w_hh_t, c0, extra["out_c"], extra["gates"], pk.batch_sizes, mask, dh, dc, dg)
        assert np.all(np.isfinite(dc))
    elif cell == "gru":
        dgh = _nan((pk.N, G * H), dtype)
        K.gru_sequence_backward(d_out, w_hh_t, h0, out_h, extra["gates"], pk.batch_sizes, mask, dh, dg, dgh)
        assert np.all(np.isfinite(dgh))
    else:
        K.rnn_sequence_backward(d_out, w_hh_t, out_h, pk.batch_sizes, mask, relu, dh, dg)
    assert np.all(np.isfinite(dg)) and np.all(np.isfinite(dh))


def test_packing_maps():
    pk = Packing(np.array([2, 4, 1]))
    np.testing.assert_array_equal(pk.order, [1, 0, 2])
    np.testing.assert_array_equal(pk.batch_sizes, [3, 2, 1, 1])
    np.testing.assert_array_equal(pk.offsets, [0, 3, 5, 6, 7])
    # row (t, sorted b): rows of sequence 1 (sorted 0) are 0, 3, 5, 6
    np.testing.assert_array_equal(pk.rev[[0, 3, 5, 6]], [6, 5, 3, 0])
    np.testing.assert_array_equal(pk.rev[pk.rev], np.arange(pk.N))
    np.testing.assert_array_equal(pk.last, [6, 4, 2])
    np.testing.assert_array_equal(pk.prev, [0, 1, 3, 5])
    X = np.arange(3 * 4).reshape(3, 4, 1).astype(float)
    back = pk.unpack(pk.pack(X), 4)
    np.testing.assert_array_equal(back[1], X[1])
    np.testing.assert_array_equal(back[0, :2], X[0, :2])
    assert np.all(back[0, 2:] == 0) and np.all(back[2, 1:] == 0)


@pytest.mark.parametrize("vector_bytes", [16, 32, 64])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("transposed", [False, True])
def test_tall_matmul_every_width(dtype, vector_bytes, transposed):
    """The weight-gradient product ``xt @ g`` over strips of ``g`` (packed a k
    block at a time) for every vector width (as the packed product above): rows of ``xt`` in
    whole register blocks and every remainder, strip groups and single
    strips, several k blocks, columns past the last strip (the tail), and
    strip or row ranges taken in parts (as threads take them) giving the same bits
    as one call; every element written, equal to the float64 product.
    ``tall_matmul_t`` (the inputs given transposed, ``xt`` itself) gives
    ``tall_matmul``'s bits."""
    from numba import njit

    from fastseq._config import JIT, VECTOR_BYTES
    from fastseq.kernels import matmul as mm
    from fastseq.kernels.matmul import KBLOCK_BYTES, STRIP_BYTES

    if vector_bytes == VECTOR_BYTES:
        strided = mm.tall_matmul
        tall = mm.tall_matmul_t if transposed else mm.tall_matmul
    else:
        strided = njit(**{**JIT, "cache": False})(mm._tall_matmul_for(vector_bytes))
        tall = njit(**{**JIT, "cache": False})(mm._tall_matmul_for(vector_bytes, True)) if transposed else strided
    rng = np.random.default_rng(9)
    sw = STRIP_BYTES // np.dtype(dtype).itemsize
    k_block = KBLOCK_BYTES // STRIP_BYTES
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    for N, M in [(1, sw), (5, 3), (k_block + 3, 2 * sw + 5), (2 * k_block + 7, 9 * sw), (40, 6 * sw + 1)]:
        g = rng.standard_normal((N, M)).astype(dtype)
        NS = M // sw
        for F in (1, 2, 3, 4, 5, 7, 9, 29):
            xt = rng.standard_normal((F, N)).astype(dtype)
            ref = xt.astype(np.float64) @ g.astype(np.float64)
            x = xt if transposed else np.ascontiguousarray(xt.T)
            out = _nan((F, M), dtype)
            tall(x, g, out, 0, F, 0, NS, True)
            np.testing.assert_allclose(out, ref, rtol=rtol, atol=rtol * np.sqrt(N) * 4,
                                       err_msg=f"N={N} M={M} F={F}")
            if transposed:
                given = _nan((F, M), dtype)
                strided(np.ascontiguousarray(xt.T), g, given, 0, F, 0, NS, True)
                np.testing.assert_array_equal(out, given)
            parts = _nan((F, M), dtype)
            cut = NS // 2
            tall(x, g, parts, 0, F, cut, NS, True)
            tall(x, g, parts, 0, F, 0, cut, False)
            np.testing.assert_array_equal(parts, out)
            rows = _nan((F, M), dtype)
            tall(x, g, rows, F // 2, F, 0, NS, True)
            tall(x, g, rows, 0, F // 2, 0, NS, True)
            np.testing.assert_array_equal(rows, out)
    empty = _nan((3, 2 * sw + 1), dtype)   # no rows: an empty sum, zeros
    tall(np.zeros((3, 0) if transposed else (0, 3), dtype=dtype), np.zeros((0, 2 * sw + 1), dtype=dtype), empty,
         0, 3, 0, 2, True)
    np.testing.assert_array_equal(empty, 0)
    view = njit(lambda a: mm.strips_view(a).copy())(g)
    np.testing.assert_array_equal(view, g[:, :NS * sw].reshape(N, NS, sw).transpose(1, 0, 2))


@pytest.mark.parametrize("vector_bytes", [16, 32, 64])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tall_matmul_cat_gives_the_transposed_buffers_bits(dtype, vector_bytes):
    """The weight gradients over ``[x | h_prev | 1]`` read in place
    (``tall_matmul_cat``: h_prev is ``h0`` for the first step's rows, a
    zero ``h0`` skipped, and for the others the packed outputs ``h`` of
    the same sequence's previous step, by the batch sizes: full and
    ragged) give the bits of ``tall_matmul_t`` over those inputs
    transposed into one buffer, for every vector width: k blocks that end
    at a step and past it, row ranges that cut a source (as threads take
    them), strip ranges in parts, no state input (H = 0), one step, no
    rows; equal to the float64 product."""
    from numba import njit

    from fastseq._config import JIT, VECTOR_BYTES
    from fastseq.kernels import matmul as mm
    from fastseq.kernels.matmul import KBLOCK_BYTES, STRIP_BYTES

    if vector_bytes == VECTOR_BYTES:
        cat, ref_t = mm.tall_matmul_cat, mm.tall_matmul_t
    else:
        cat = njit(**{**JIT, "cache": False})(mm._tall_cat_for(vector_bytes))
        ref_t = njit(**{**JIT, "cache": False})(mm._tall_matmul_for(vector_bytes, True))
    rng = np.random.default_rng(21)
    sw = STRIP_BYTES // np.dtype(dtype).itemsize
    kb = KBLOCK_BYTES // STRIP_BYTES
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    cases = [([5] * (2 * kb // 5 + 3), 3, 7, 9 * sw), ([kb + 2] * 3, 6, 5, 2 * sw), ([8] * 5, 1, 0, 5 * sw),
             ([7], 2, 3, sw), ([], 3, 4, sw), ([1] * (kb + 1), 9, 4, 4 * sw),
             ([6, 6, 5, 5, 5, 3, 1, 1], 4, 6, 3 * sw), ([kb + 9] * 2 + [kb // 2] * 3 + [2], 2, 3, 2 * sw)]
    for sizes, F, H, M in cases:
        bs = np.array(sizes or [0], dtype=np.int64)
        N, B = int(bs.sum()), int(bs[0])
        off = np.concatenate([[0], np.cumsum(bs)])
        x = rng.standard_normal((N, F)).astype(dtype)
        h = rng.standard_normal((N, H)).astype(dtype)
        g = rng.standard_normal((N, M)).astype(dtype)
        K, NS = F + H + 1, M // sw
        for h0 in (np.zeros((B, H), dtype), rng.standard_normal((B, H)).astype(dtype)):
            given = h0 if h0.any() else np.empty((0, H), dtype)
            h_prev = np.concatenate([h0] + [h[off[t - 1]:off[t - 1] + bs[t]] for t in range(1, len(sizes))])
            xt = np.ascontiguousarray(np.concatenate([x, h_prev.reshape(N, H), np.ones((N, 1), dtype)], 1).T)
            want = _nan((K, M), dtype)
            ref_t(xt, g, want, 0, K, 0, NS, False)
            np.testing.assert_allclose(want, xt.astype(np.float64) @ g, rtol=rtol, atol=rtol * np.sqrt(N + 1) * 4)
            out = _nan((K, M), dtype)
            cat(x, h, given, bs, g, out, 0, K, 0, NS)
            np.testing.assert_array_equal(out, want, err_msg=f"sizes={sizes} F={F} H={H} h0={h0.any()}")
            parts = _nan((K, M), dtype)
            for f0, f1 in ((0, F + 1), (F + 1, K)):              # (a cut inside h_prev's rows)
                cat(x, h, given, bs, g, parts, f0, f1, NS // 2, NS)
                cat(x, h, given, bs, g, parts, f0, f1, 0, NS // 2)
            np.testing.assert_array_equal(parts, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_transpose_into_any_block_and_offset(dtype):
    """``transpose_into``: ``dst[row0 + k, col0 + n] = src[n, k]`` for a
    range of rows of ``src``, whole strips by whole vectors and every
    remainder, at any offset into a larger buffer, leaving the rest of it
    as it was; ranges taken in parts (as threads take them) fill the same;
    ``parallel_transpose`` at 1 and 2 threads likewise."""
    from fastseq import _threads
    from fastseq.kernels.matmul import transpose_into

    rng = np.random.default_rng(12)
    for N, K in [(1, 1), (3, 5), (16, 8), (37, 19), (70, 33), (129, 4)]:
        src = rng.standard_normal((N, K)).astype(dtype)
        for row0, col0, n0, n1 in [(0, 0, 0, N), (2, 3, 0, N), (1, 5, N // 3, N), (0, 1, 1, N // 2 + 1)]:
            dst = _nan((row0 + K + 2, col0 + N + 3), dtype)
            transpose_into(src, dst, row0, col0, n0, n1)
            ref = _nan(dst.shape, dtype)
            ref[row0:row0 + K, col0 + n0:col0 + n1] = src[n0:n1].T
            np.testing.assert_array_equal(dst, ref, err_msg=f"N={N} K={K} at {row0, col0, n0, n1}")
        whole = _nan((K + 1, N + 2), dtype)
        transpose_into(src, whole, 1, 2, N // 2, N)
        transpose_into(src, whole, 1, 2, 0, N // 2)
        np.testing.assert_array_equal(whole[1:, 2:], src.T)
        for threads in (1, 2):
            par = _nan((K + 1, N + 2), dtype)
            with _threads.limit(threads):
                _threads.parallel_transpose(src, par, 1, 2)
            np.testing.assert_array_equal(par, whole)
        # layouts the kernel does not take (a strided source, a destination
        # of strided rows, another dtype): numpy's copy, the same values
        wide = rng.standard_normal((N, 2 * K)).astype(dtype)
        odd = _nan((K + 1, N + 2), dtype)
        _threads.parallel_transpose(wide[:, ::2], odd, 1, 2)
        np.testing.assert_array_equal(odd[1:, 2:], wide[:, ::2].T)
        cols = _nan((K, 2 * N), dtype)
        _threads.parallel_transpose(src, cols[:, ::2])
        np.testing.assert_array_equal(cols[:, ::2], src.T)
        other = np.zeros((K, N), np.float32 if dtype == np.float64 else np.float64)
        _threads.parallel_transpose(src, other)
        np.testing.assert_array_equal(other, src.T.astype(other.dtype))
    big = rng.standard_normal((_threads.MIN_COPY_SPLIT // 8 + 5, 8)).astype(dtype)   # split across threads
    out = np.empty((8, big.shape[0]), dtype)
    with _threads.limit(2):
        _threads.parallel_transpose(big, out)
    np.testing.assert_array_equal(out, big.T)


@pytest.mark.parametrize("F, M, split", [(6, 200, "strips"), (70, 16, "rows")])
def test_parallel_tall_matmul_same_bits_at_any_thread_count(F, M, split, monkeypatch):
    """The threaded weight-gradient product splits the strips (many of
    them) or the rows (few strips), never the sum: the same bits at one
    and two threads, equal to numpy's product."""
    from fastseq import _plan, _threads
    from fastseq._threads import limit, parallel_tall_matmul

    rng = np.random.default_rng(3)
    N = 20000
    x = rng.standard_normal((N, F)).astype(np.float32)
    g = rng.standard_normal((N, M)).astype(np.float32)
    with limit(1):
        one = parallel_tall_matmul(x, g)
    monkeypatch.setattr(_plan.current(), "matmul_split_min_work", 1)
    parts = []
    on_pool = _threads._on_pool
    monkeypatch.setattr(_threads, "_on_pool", lambda bounds, fn: (parts.append(bounds), on_pool(bounds, fn)))
    with limit(2):
        two = parallel_tall_matmul(x, g, out=_nan((F, M), np.float32))
    total = F if split == "rows" else M // 16
    assert parts == [[(0, -(-total // 2)), (-(-total // 2), total)]]
    np.testing.assert_array_equal(one, two)
    np.testing.assert_allclose(one, x.T.astype(np.float64) @ g, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("vector_bytes", [16, 32, 64])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_packed_matmul_every_tile_path(dtype, vector_bytes, blas_rows):
    """The packed product for every vector width (16: NEON/SSE, 32: AVX2, 64:
    AVX-512; LLVM splits a wider vector on narrower hardware, so each is
    checked on any machine): rows in whole blocks and every remainder, one
    and two rows over their strip groups, strips left over from a group,
    several k blocks (accumulated), outputs past the last full strip (dot
    form), one row's larger groups within L1 (the same bits as beyond it),
    BLAS from PACKED_BLAS_MIN_ROWS rows (a number the compiled code
    reads at run time: set to 128 here), and the fallbacks (no packed
    weight, rows that are not unit-stride): every element written, equal to
    a @ w.T in float64."""
    from numba import njit

    from fastseq._config import JIT, VECTOR_BYTES
    from fastseq.kernels import matmul as mm
    from fastseq.kernels._runtime import L1_BYTES
    from fastseq.kernels.matmul import KBLOCK_BYTES, STRIP_BYTES

    PACKED_BLAS_MIN_ROWS = blas_rows(128)

    if vector_bytes == VECTOR_BYTES:
        packed_matmul = mm.packed_matmul   # the package's own, cached
    else:
        packed_matmul = njit(**{**JIT, "cache": False})(mm._packed_matmul_for(vector_bytes))
    # array-returning kernels, called from compiled code only in the package
    # (a cached callee's array is not boxed back to Python reliably)
    pack_weight = njit(lambda w: mm.pack_weight(w).copy())
    no_packed_weight = njit(lambda w: mm.no_packed_weight(w).copy())
    pack_for_steps = njit(lambda w, steps: mm.pack_for_steps(w, steps).copy())
    rng = np.random.default_rng(5)
    itemsize = np.dtype(dtype).itemsize
    sw = STRIP_BYTES // itemsize
    k_block = KBLOCK_BYTES // STRIP_BYTES  # k per block
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    rows = mm.BLOCKING[vector_bytes][0]
    for K, M in [(1, sw), (7, 3), (9, 2 * sw + 5), (33, 4 * sw), (2 * k_block + 3, 5 * sw + 1), (64, 9 * sw),
                 (5, 7 * sw), (20, 15 * sw + 2)]:
        w = rng.standard_normal((M, K)).astype(dtype)
        wp = pack_weight(w)
        assert wp.shape == (M // sw, K, sw)
        for n in sorted({1, 2, 3, 4, 5, 6, 7, 9, 2 * rows - 1, 2 * rows + 3, 63, 64,
                         PACKED_BLAS_MIN_ROWS - 1, PACKED_BLAS_MIN_ROWS}):
            a = rng.standard_normal((n, K)).astype(dtype)
            ref = a.astype(np.float64) @ w.astype(np.float64).T
            tol = dict(rtol=rtol, atol=rtol * np.sqrt(K) * 4, err_msg=f"K={K} M={M} n={n}")
            for weight in (wp, no_packed_weight(w), pack_for_steps(w, 1)):
                out = _nan((n, M), dtype)
                packed_matmul(a, w, weight, out)
                np.testing.assert_allclose(out, ref, **tol)
            # one row takes more strips at once from a weight within L1 (a
            # number read at run time): every group size, the same bits
            saved = L1_BYTES.get()
            try:
                outs = []
                for l1 in (0, 1 << 40):
                    L1_BYTES.set(l1)
                    outs.append(_nan((n, M), dtype))
                    packed_matmul(a, w, wp, outs[-1])
            finally:
                L1_BYTES.set(saved)
            np.testing.assert_array_equal(outs[0], outs[1])
            wide = _nan((n, 2 * K), dtype)
            wide[:, ::2] = a  # rows that are not unit-stride: the dot form
            out = _nan((n, M), dtype)
            packed_matmul(wide[:, ::2], w, wp, out)
            np.testing.assert_allclose(out, ref, **tol)
    assert pack_for_steps(w, 1).shape[0] == 0 and pack_for_steps(w, 2).shape[0] == w.shape[0] // sw


def test_vector_width_follows_the_target():
    """The micro-kernels' width comes from the CPU features numba compiles
    for: AVX-512 64 bytes, AVX2 with FMA 32, anything else (SSE, NEON,
    a generic target) 16."""
    from fastseq._config import VECTOR_BYTES, target_features, vector_bytes
    from fastseq.kernels.matmul import BLOCKING

    assert vector_bytes({"avx512f", "avx2", "fma"}) == 64
    assert vector_bytes({"avx2", "fma"}) == 32
    assert vector_bytes({"avx", "sse4.2"}) == 16
    assert vector_bytes({"neon", "fp-armv8"}) == 16
    assert vector_bytes(frozenset()) == 16
    assert VECTOR_BYTES == vector_bytes(target_features()) and VECTOR_BYTES in BLOCKING


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pack_weight_layout(dtype):
    """``pack_weight``: ``wp[s, k, c] == w[s*SW + c, k]`` exactly, through the
    vector blocks (k in whole 256-bit vectors, transposed in registers), the
    scalar tail (the last ``K % VW`` of k, all of k below one vector) and the
    scalar path for rows that are not unit-stride; outputs past the last full
    strip are left out."""
    from numba import njit

    from fastseq.kernels import matmul as mm
    from fastseq.kernels.matmul import STRIP_BYTES

    pack_weight = njit(lambda w: mm.pack_weight(w).copy())
    itemsize = np.dtype(dtype).itemsize
    sw, vw = STRIP_BYTES // itemsize, 32 // itemsize
    rng = np.random.default_rng(3)
    for M, K in [(sw, 1), (sw, vw - 1), (sw, vw), (2 * sw + 3, vw + 1), (4 * sw, 3 * vw + 5), (5 * sw - 1, 64)]:
        w = rng.standard_normal((M, K)).astype(dtype)
        ns = M // sw
        ref = w[:ns * sw].reshape(ns, sw, K).transpose(0, 2, 1)
        np.testing.assert_array_equal(pack_weight(w), ref, err_msg=f"M={M} K={K}")
        strided = np.ascontiguousarray(w.T).T  # the same values, column-major
        np.testing.assert_array_equal(pack_weight(strided), ref, err_msg=f"strided M={M} K={K}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_weights_concatenate_pack_and_sum_the_biases(dtype):
    """``infer.fused_weights``: the packed form of ``[W_ih | W_hh]`` (packed
    straight from the two weights), ``b_ih + b_hh`` (zeros for empty
    biases: no bias) and ``[W_ih | W_hh]`` itself, all of it with ``full``
    (BLAS reads it), else only its rows past the strips (those the packed
    product reads; the others are left as they were), exactly, into arrays
    that held anything before."""
    from fastseq.kernels.infer import fused_weights
    from fastseq.kernels.matmul import STRIP_BYTES

    sw = STRIP_BYTES // np.dtype(dtype).itemsize
    rng = np.random.default_rng(5)
    for F, H in [(3, 8), (7, 16), (32, 32), (9, 3), (13, 5), (1, 2)]:
        w_ih = rng.standard_normal((4 * H, F)).astype(dtype)
        w_hh = rng.standard_normal((4 * H, H)).astype(dtype)
        b_ih, b_hh = rng.standard_normal((2, 4 * H)).astype(dtype)
        cat = np.concatenate([w_ih, w_hh], axis=1)
        ns = 4 * H // sw
        packed = cat[:ns * sw].reshape(ns, sw, F + H).transpose(0, 2, 1)
        for full in (True, False):
            for bias_in, bias_ref in (((b_ih, b_hh), b_ih + b_hh), ((np.empty(0, dtype),) * 2, np.zeros(4 * H, dtype))):
                w_cat = np.full((4 * H, F + H), np.nan, dtype)
                wp = np.full((ns, F + H, sw), np.nan, dtype)
                bias = np.full(4 * H, np.nan, dtype)
                fused_weights(w_ih, w_hh, *bias_in, w_cat, wp, bias, full)
                np.testing.assert_array_equal(w_cat[ns * sw:], cat[ns * sw:])
                if full:
                    np.testing.assert_array_equal(w_cat, cat)
                else:
                    assert np.isnan(w_cat[:ns * sw]).all()
                np.testing.assert_array_equal(wp, packed)
                np.testing.assert_array_equal(bias, bias_ref)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_project_packed_blocks_and_blas(dtype):
    """``project`` (the input projection plus bias): through the packed
    blocks (rows past one block, a last partial block, outputs outside the
    strips), with and without a bias, and through BLAS from
    PROJECT_BLAS_MIN_BYTES of weight: every element written, equal to
    ``inp @ w.T + bias`` in float64; a packed row does not depend on the
    block it falls in (callers split rows freely).  Which path a weight
    takes is read from the threshold (it may follow the machine); the last
    case is sized past it, the first two are a few KB."""
    from fastseq.kernels import matmul as mm

    rng = np.random.default_rng(11)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    itemsize = np.dtype(dtype).itemsize
    big_m = mm.PROJECT_BLAS_MIN_BYTES.get() // (64 * itemsize) + 3   # K = 64: past the BLAS threshold
    # a block reaches the packed product's own BLAS branch from PACKED_BLAS_MIN_ROWS
    # rows: below it every row runs the same fused multiply-adds, whatever its
    # block (the fewest rows the planner can set is its smallest size timed)
    from fastseq._plan import BLAS_ROWS_SIZES

    assert mm.PROJECT_ROWS < min(BLAS_ROWS_SIZES) <= mm.PACKED_BLAS_MIN_ROWS.get()
    shifted = 0
    for n, K, M in [(1, 5, 16), (70, 28, 37), (33, 64, 200), (9, 64, big_m)]:
        inp = rng.standard_normal((n, K)).astype(dtype)
        w = rng.standard_normal((M, K)).astype(dtype)
        packed = w.nbytes < mm.PROJECT_BLAS_MIN_BYTES.get()
        shifted += packed and n > 1
        for bias in (rng.standard_normal(M).astype(dtype), np.empty(0, dtype)):
            out = _nan((n, M), dtype)
            mm.project(inp, w, bias, out)
            ref = inp.astype(np.float64) @ w.astype(np.float64).T + (bias if bias.size else 0)
            np.testing.assert_allclose(out, ref, rtol=rtol, atol=rtol * np.sqrt(K) * 4,
                                       err_msg=f"n={n} K={K} M={M} bias={bias.size}")
            if packed and n > 1:
                part = _nan((n - 1, M), dtype)
                mm.project(inp[1:], w, bias, part)     # rows shifted across the blocks
                np.testing.assert_array_equal(part, out[1:])
    assert shifted                  # the packed blocks took a batch of several rows


def test_stale_kernel_cache_is_dropped(tmp_path):
    """numba keys a cached kernel by its own file only, while the time loops
    compile in code from matmul.py: one digest over the kernel sources and
    _config.py is kept beside the cache files, and they are removed when it
    changes (an edit of any one source), kept while it holds."""
    from fastseq.kernels._cache import STAMP, cache_folder, drop_stale_cache

    pkg = tmp_path / "pkg"
    kernels = pkg / "kernels"
    kernels.mkdir(parents=True)
    (pkg / "_config.py").write_text("X = 1\n")
    (kernels / "__init__.py").write_text("")
    (kernels / "a.py").write_text("def f():\n    return 1\n")
    cache = cache_folder(str(kernels))
    assert cache is not None
    os.makedirs(cache, exist_ok=True)

    def plant():
        for name in ("a.f-1.py311.nbi", "a.f-1.py311.1.nbc"):
            with open(os.path.join(cache, name), "w") as f:
                f.write("stale")

    def planted():
        return sorted(n for n in os.listdir(cache) if n.endswith((".nbi", ".nbc")))

    plant()
    drop_stale_cache(str(kernels))                      # no stamp yet: dropped
    assert planted() == [] and os.path.exists(os.path.join(cache, STAMP))
    plant()
    drop_stale_cache(str(kernels))                      # same sources: kept
    assert len(planted()) == 2
    (kernels / "a.py").write_text("def f():\n    return 2\n")
    drop_stale_cache(str(kernels))                      # one source changed
    assert planted() == []
    plant()
    (pkg / "_config.py").write_text("X = 2\n")           # a compiled-in constant changed
    drop_stale_cache(str(kernels))
    assert planted() == []


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_all_finite_matches_numpy_on_every_kind_of_value(dtype):
    """The compiled finiteness test (exponent bits) against numpy's
    ``isfinite`` for NaN, both infinities, the largest finite value,
    denormals, negative zero, at every position of arrays of 1 to 70
    values (the vector loop's tail included), and for the arrays it hands
    to numpy (non-contiguous, read-only, integer, empty)."""
    from fastseq._validation import all_finite

    info = np.finfo(dtype)
    specials = [np.nan, -np.nan, np.inf, -np.inf, info.max, -info.max, info.tiny / 4, -0.0, 1.0]
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 16, 31, 70):
        for pos in sorted({0, n // 2, n - 1}):
            for v in specials:
                a = rng.standard_normal(n).astype(dtype)
                a[pos] = v
                want = bool(np.isfinite(a).all())
                assert all_finite(a) == want
                assert all_finite(a.reshape(1, n)) == want        # any shape, C order
                ro = a.copy()
                ro.flags.writeable = False
                assert all_finite(ro) == want                     # numpy's path
    m = rng.standard_normal((6, 5)).astype(dtype)
    m[4, 0] = np.inf
    assert not all_finite(m) and all_finite(m[:, 1:]) and not all_finite(m.T)   # strided views
    assert all_finite(np.arange(5)) and all_finite(np.zeros(0, dtype))

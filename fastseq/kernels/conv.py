"""Temporal convolution front end: the fused forward pass
(:func:`conv_forward`: convolution, bias, ReLU and max pooling in one kernel,
register tiles over views of the input), and for the backward pass packing,
routing through the pooling and unpacking, with the matrix products between
them the caller's (one BLAS gemm each, see
:class:`fastseq.network.conv.ConvStack`).

Glossary as in :mod:`fastseq.kernels.lstm`, plus K kernel size (odd),
P = (K - 1) // 2 the steps on each side, C filters (output channels),
p pool size, N = sum_b L_b the valid steps of a batch, and
T2 = T // p, L2_b = L_b // p the pooled lengths.

Layout
------
Unlike the recurrent kernels, these run **batch-first**: ``x`` (B, T, F) as
the recurrent layer's API takes it.  A convolution reads neighbours along
time, so batch-first makes the window of step t of sequence b one
contiguous run ``x[b, t-P : t+P+1, :]`` of K*F values: the forward pass
reads the rows of the product straight from ``x`` (overlapping rows of
stride F), and packing for the backward pass is K short copies per row.  Only valid steps are packed: row ``offsets[b] + t`` of
``cols`` (N, K*F) is step t < L_b of sequence b (``offsets`` is the
exclusive cumulative sum of ``lengths``), so the gemm never touches
padding.

Notes
-----
With ``W`` (C, F, K) in PyTorch's ``Conv1d`` layout and zero padding at the
ends of each sequence's own valid part ("same" padding)::

    x_b[s] = x[b, s]  for 0 <= s < L_b,   0 otherwise
    z[b, t, c] = bias[c] + sum_{k < K} sum_{f < F} W[c, f, k] x_b[t + k - P][f]   (t < L_b)
    y[b, t, c] = max_{j < p} relu(z[b, t*p + j, c])                               (t < L2_b)

so a padded batch equals the loop over its sequences one by one, and padding
is never read.  ``cols[offsets[b] + t, k*F + f] = x_b[t + k - P][f]`` and the
gemm weight is ``Wm[c, k*F + f] = W[c, f, k]`` (C, K*F): ``z - bias = cols @ Wm.T``.
Pooling has stride p and drops the last ``L_b mod p`` steps (``MaxPool1d``);
the caller ensures L2_b >= 1.
"""

import numpy as np
from numba import njit

from .._config import JIT, VECTOR_BYTES
from .matmul import KBLOCK_BYTES, STRIP_BYTES, _tile_rows

#: register blocking ``(rows, strips)`` of :func:`conv_forward`'s tiles for
#: each vector width in bytes, for 4 or more strips left, 2-3 and 1 (a strip
#: is one 64-byte line of outputs): 16 accumulators of AVX-512's 32 registers
#: in each; 8 of the 16 (AVX2) or 32 (NEON) of narrower vectors, as
#: :data:`fastseq.kernels.matmul.BLOCKING`.
CONV_BLOCKING = {64: ((4, 4), (8, 2), (8, 1)), 32: ((4, 1), (4, 1), (4, 1)),
                 16: ((4, 1), (4, 1), (4, 1))}
#: output steps per chunk of :func:`conv_forward` (rounded down to a multiple
#: of the pool size): the chunk's products (128 x 64 float32 = 32 KB) stay in
#: L1/L2 from the gemm tiles to the pooling pass
CHUNK_ROWS = 128


@njit(**JIT)
def conv_pack(x, lengths, offsets, K, out_cols):
    """Windows of the valid steps, zero outside each sequence (im2col).

    Parameters
    ----------
    x : (B, T, F) float
        Batch-first input; steps ``t >= lengths[b]`` are never read.
    lengths : (B,) int64
        L_b in 1..T.
    offsets : (B,) int64
        Exclusive cumulative sum of ``lengths``.
    K : int
        Kernel size (odd).
    out_cols : (N, K*F) float
        Written: row ``offsets[b] + t`` holds ``x_b[t-P .. t+P]``.
    """
    B = x.shape[0]
    F = x.shape[2]
    P = (K - 1) // 2
    for b in range(B):
        L = lengths[b]
        o = offsets[b]
        for t in range(L):
            r = o + t
            for k in range(K):
                s = t + k - P
                base = k * F
                if s >= 0 and s < L:
                    for f in range(F):
                        out_cols[r, base + f] = x[b, s, f]
                else:
                    for f in range(F):
                        out_cols[r, base + f] = 0.0


def strips(C, itemsize):
    """Strips of one 64-byte line of outputs that hold ``C`` filters."""
    sw = STRIP_BYTES // itemsize
    return -(-C // sw)


@njit(**JIT)
def conv_pack_weight(w, out_wp):
    """The gemm weight ``w`` (C, K*F) as strips for :func:`conv_forward`:
    ``out_wp[s, j, c] = w[s*SW + c, j]``, 0 for ``s*SW + c >= C``.

    Parameters
    ----------
    w : (C, K*F) float
    out_wp : (S, K*F, SW) float, S = ceil(C / SW), SW = 64 // itemsize
    """
    C, KF = w.shape
    S, _, SW = out_wp.shape
    for s in range(S):
        for j in range(KF):
            for c in range(SW):
                m = s * SW + c
                out_wp[s, j, c] = w[m, j] if m < C else 0.0


@njit(**JIT, inline="always")
def _relu_pool_rows(z, zr0, bias, pool, n2, out, arg, b, t2, step0):
    """``out[b, t2 + i, c] = max_j relu(z[zr0 + i*pool + j, c] + bias[c])``
    for ``i < n2``, and (when ``arg`` is not empty) ``arg[b, t2 + i, c]`` the
    step ``step0 + i*pool + j`` of the first maximum."""
    keep = arg.shape[0] != 0
    C = out.shape[2]
    for i in range(n2):
        r0 = zr0 + i * pool
        o = out[b, t2 + i]
        zr = z[r0]
        for c in range(C):
            o[c] = zr[c]
        if keep:
            a = arg[b, t2 + i]
            for c in range(C):
                a[c] = step0 + i * pool
            for j in range(1, pool):
                zr = z[r0 + j]
                for c in range(C):
                    v = zr[c]
                    if v > o[c]:
                        o[c] = v
                        a[c] = step0 + i * pool + j
        else:
            for j in range(1, pool):
                zr = z[r0 + j]
                for c in range(C):
                    v = zr[c]
                    o[c] = v if v > o[c] else o[c]
        for c in range(C):
            v = o[c] + bias[c]
            o[c] = v if v > 0.0 else 0.0


def _conv_forward_for(vector_bytes):
    """:func:`conv_forward` with tiles of ``vector_bytes`` vectors, as a plain
    Python function to compile (the package compiles it for
    :data:`fastseq._config.VECTOR_BYTES`, tests for every width)."""
    VB = vector_bytes
    (R4, S4), (R2, S2), (R1, S1) = CONV_BLOCKING[VB]

    def conv_forward(x, lengths, K, wp, bias, pool, b0, b1, work, edge, out, out_arg):
        """Convolution, bias, ReLU and max pooling of sequences ``b0..b1-1``
        in one pass, without an im2col copy.

        The window of step t (``P <= t < L_b - P``) is the contiguous run
        ``x[b, t-P : t+P+1, :]``, so the rows of the product are overlapping
        views of ``x`` itself (row stride F); only the steps within P of an
        end are packed (zeros outside the sequence) into ``edge``.  Chunks
        of :data:`CHUNK_ROWS` steps go through register tiles
        (:func:`fastseq.kernels.matmul._tile_rows`, every strip of filters,
        blocks of :data:`fastseq.kernels.matmul.KBLOCK_BYTES` of the weight)
        into ``work``, then one pass adds the bias, applies ReLU and pools.
        Only the ``(L_b // p) * p`` steps that the pooling keeps are computed.

        Parameters
        ----------
        x : (B, T, F) float, C-contiguous
            Steps ``t >= lengths[b]`` are never read.
        lengths : (B,) int64
        K : int
        wp : (S, K*F, SW) float
            :func:`conv_pack_weight` of the gemm weight.
        bias : (C,) float
        pool : int
        b0, b1 : int
            The sequences to compute.
        work : (rows, S*SW) float
            Scratch; rows >= :data:`CHUNK_ROWS` rounded down to a multiple
            of ``pool``, and >= ``pool``.
        edge : (max(1, K - 1) * K*F,) float
            Scratch.
        out : (B, T2, C) float
            Written at ``b0 <= b < b1``: ``y``, 0 from ``L_b // p``.
        out_arg : (B, T2, C) int64, or (0, 0, 0) to skip it
            Written at ``t < L_b // p``: the step (of the sequence, before
            pooling) each maximum came from (the first on ties).
        """
        B, T, F = x.shape
        S, KF, SW = wp.shape
        T2 = out.shape[1]
        isz = x.itemsize
        P = (K - 1) // 2
        ch = max(1, CHUNK_ROWS // pool) * pool
        KB = max(1, KBLOCK_BYTES // (SW * isz))
        xf = x.reshape(B * T * F)
        for b in range(b0, b1):
            L = lengths[b]
            L2 = L // pool
            Lp = L2 * pool
            xoff = b * T * F
            for t0 in range(0, Lp, ch):
                t1 = min(t0 + ch, Lp)
                lo = max(t0, P)
                hi = min(t1, L - P)
                if hi <= lo:
                    lo = t1
                    hi = t1
                # the edge steps [t0, lo) and [hi, t1), packed
                ne = 0
                for t in range(t0, t1):
                    if t >= lo and t < hi:
                        continue
                    base = ne * KF
                    for k in range(K):
                        s = t + k - P
                        if s >= 0 and s < L:
                            for f in range(F):
                                edge[base + k * F + f] = xf[xoff + s * F + f]
                        else:
                            for f in range(F):
                                edge[base + k * F + f] = 0.0
                    ne += 1
                nl = lo - t0
                for part in range(3):
                    if part == 0:  # interior: views of x
                        n = hi - lo
                        if n <= 0:
                            continue
                        a = np.lib.stride_tricks.as_strided(
                            xf[xoff + (lo - P) * F:], shape=(n, KF), strides=(F * isz, isz))
                        zo = work[lo - t0:]
                    elif part == 1:  # left edge
                        n = nl
                        if n <= 0:
                            continue
                        a = np.lib.stride_tricks.as_strided(edge, shape=(n, KF),
                                                            strides=(KF * isz, isz))
                        zo = work[0:]
                    else:  # right edge
                        n = t1 - hi
                        if n <= 0:
                            continue
                        a = np.lib.stride_tricks.as_strided(
                            edge[nl * KF:], shape=(n, KF), strides=(KF * isz, isz))
                        zo = work[hi - t0:]
                    s0 = 0
                    while s0 < S:
                        left = S - s0
                        for k0 in range(0, KF, KB):
                            k1 = min(KF, k0 + KB)
                            acc = 1 if k0 > 0 else 0
                            if left >= S4:
                                _tile_rows(a, wp, zo, n, s0, s0 * SW, k0, k1, acc, R4, S4, VB)
                            elif left >= S2:
                                _tile_rows(a, wp, zo, n, s0, s0 * SW, k0, k1, acc, R2, S2, VB)
                            else:
                                _tile_rows(a, wp, zo, n, s0, s0 * SW, k0, k1, acc, R1, S1, VB)
                        s0 += S4 if left >= S4 else (S2 if left >= S2 else S1)
                _relu_pool_rows(work, 0, bias, pool, (t1 - t0) // pool, out, out_arg, b,
                                t0 // pool, t0)
            for t in range(L2, T2):
                for c in range(out.shape[2]):
                    out[b, t, c] = 0.0

    return conv_forward


#: the fused forward pass (see :func:`_conv_forward_for`) with this machine's
#: vector width
conv_forward = njit(**JIT)(_conv_forward_for(VECTOR_BYTES))


@njit(**JIT)
def conv_relu_pool(z, bias, lengths, offsets, pool, out, out_arg):
    """Bias, ReLU and max pooling (stride ``pool``) of a gemm's result
    (the pooling pass of :func:`conv_forward`, on a packed product).

    Parameters
    ----------
    z : (N, C) float
        ``cols @ Wm.T`` (no bias), rows as :func:`conv_pack`'s.
    bias : (C,) float
    lengths, offsets : (B,) int64
        Input lengths L_b and their exclusive cumulative sum.
    pool : int
        p >= 1.
    out : (B, T2, C) float
        Written: ``y`` at ``t < L_b // p``, 0 after.
    out_arg : (B, T2, C) int64, or (0, 0, 0) to skip it
        Written at ``t < L_b // p``: the step of sequence b (row
        ``offsets[b] + step`` of ``z``) each maximum came from (the first on
        ties).  Not needed for a backward pass when p = 1.
    """
    B, T2, C = out.shape
    for b in range(B):
        L2 = lengths[b] // pool
        _relu_pool_rows(z, offsets[b], bias, pool, L2, out, out_arg, b, 0, 0)
        for t in range(L2, T2):
            for c in range(C):
                out[b, t, c] = 0.0


@njit(**JIT)
def conv_relu_pool_backward(d_out, out, arg, lengths2, offsets, out_dz):
    """Gradient of :func:`conv_relu_pool` with respect to ``z``.

    Parameters
    ----------
    d_out : (B, T2, C) float
        Gradient of ``out``; steps ``t >= lengths2[b]`` are never read.
    out, arg : (B, T2, C)
        :func:`conv_forward`'s outputs; ``arg`` (the step of each maximum) may
        be (0, 0, 0) when p = 1 (the step of output t is then t).
    lengths2 : (B,) int64
        Pooled lengths L2_b.
    offsets : (B,) int64
        Exclusive cumulative sum of the *input* lengths.
    out_dz : (N, C) float
        Overwritten: ``d_out`` at the row ``offsets[b] + step`` each maximum
        came from where the
        output is positive (ReLU's derivative at 0 is 0, as PyTorch's), 0
        elsewhere.
    """
    B, T2, C = out.shape
    N = out_dz.shape[0]
    for r in range(N):
        for c in range(C):
            out_dz[r, c] = 0.0
    keep = arg.shape[0] != 0
    for b in range(B):
        for t in range(lengths2[b]):
            o = offsets[b]
            for c in range(C):
                if out[b, t, c] > 0.0:
                    r = o + (arg[b, t, c] if keep else t)
                    out_dz[r, c] = d_out[b, t, c]


@njit(**JIT)
def conv_unpack(d_cols, lengths, offsets, K, out_dx):
    """Gradient of :func:`conv_pack` (col2im): each input step gathers the
    window entries that read it.

    Parameters
    ----------
    d_cols : (N, K*F) float
    lengths, offsets : (B,) int64
    K : int
    out_dx : (B, T, F) float
        Overwritten; 0 at steps ``t >= lengths[b]``.
    """
    B, T, F = out_dx.shape
    P = (K - 1) // 2
    for b in range(B):
        L = lengths[b]
        o = offsets[b]
        for s in range(T):
            for f in range(F):
                out_dx[b, s, f] = 0.0
            if s >= L:
                continue
            for k in range(K):
                t = s - k + P
                if t >= 0 and t < L:
                    base = k * F
                    r = o + t
                    for f in range(F):
                        out_dx[b, s, f] += d_cols[r, base + f]

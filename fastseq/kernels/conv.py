"""Temporal convolution front end: packing, bias + ReLU + max pooling, and
their backward passes.  The matrix products between them are the caller's
(one BLAS gemm each, see :class:`fastseq.network.conv.ConvStack`).

Glossary as in :mod:`fastseq.kernels.lstm`, plus K kernel size (odd),
P = (K - 1) // 2 the steps on each side, C filters (output channels),
p pool size, N = sum_b L_b the valid steps of a batch, and
T2 = T // p, L2_b = L_b // p the pooled lengths.

Layout
------
Unlike the recurrent kernels, these run **batch-first**: ``x`` (B, T, F) as
the recurrent layer's API takes it.  A convolution reads neighbours along
time, so batch-first makes the window of step t of sequence b one
contiguous run ``x[b, t-P : t+P+1, :]`` of K*F values: packing is K short
copies per row.  Only valid steps are packed: row ``offsets[b] + t`` of
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

from numba import njit

from .._config import JIT


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


@njit(**JIT)
def conv_relu_pool(z, bias, lengths, offsets, pool, out, out_arg):
    """Bias, ReLU and max pooling (stride ``pool``) of the gemm's result.

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
        Written at ``t < L_b // p``: the row of ``z`` each maximum came from
        (the first on ties).  Not needed for a backward pass when p = 1.
    """
    keep = out_arg.shape[0] != 0
    B, T2, C = out.shape
    for b in range(B):
        L2 = lengths[b] // pool
        o = offsets[b]
        for t in range(L2):
            r0 = o + t * pool
            for c in range(C):
                out[b, t, c] = z[r0, c]
            if keep:
                for c in range(C):
                    out_arg[b, t, c] = r0
            for j in range(1, pool):
                r = r0 + j
                for c in range(C):
                    v = z[r, c]
                    if v > out[b, t, c]:
                        out[b, t, c] = v
                        if keep:
                            out_arg[b, t, c] = r
            for c in range(C):
                v = out[b, t, c] + bias[c]
                out[b, t, c] = v if v > 0.0 else 0.0
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
        :func:`conv_relu_pool`'s outputs; ``arg`` may be (0, 0, 0) when p = 1
        (the row of step t is then ``offsets[b] + t``).
    lengths2 : (B,) int64
        Pooled lengths L2_b.
    offsets : (B,) int64
        Exclusive cumulative sum of the *input* lengths.
    out_dz : (N, C) float
        Overwritten: ``d_out`` at the row each maximum came from where the
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
            r = offsets[b] + t
            for c in range(C):
                if out[b, t, c] > 0.0:
                    if keep:
                        r = arg[b, t, c]
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

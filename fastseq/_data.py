"""Packing padded batches into the kernels' packed, time-major layout.

The one place where batch-first user arrays become time-major kernel arrays
(and back).  See :mod:`fastseq.kernels.lstm` for the packed layout.
"""

import numpy as np

from ._config import INDEX_DTYPE


class Packing:
    """Index maps between a padded batch (B, T, ...) and its packed rows (N, ...).

    Parameters
    ----------
    lengths : (B,) int
        Valid steps of each sequence, all in ``1..T``.

    Attributes
    ----------
    order : (B,) int64
        Sorted position -> original batch index (lengths non-increasing).
    lengths_sorted : (B,) int64
    batch_sizes : (T_max,) int64
        Active sequences per step, ``T_max = lengths.max()``.
    offsets : (T_max + 1,) int64
        First packed row of each step.
    row_b, row_t : (N,) int64
        Sorted batch index and time step of each packed row.
    src_b : (N,) int64
        Original batch index of each packed row (``order[row_b]``).
    rev : (N,) int64
        Row of the same sequence at the mirrored step ``len - 1 - t``: gathering
        with it reverses every sequence within its own length (an involution).
    last : (B,) int64
        Packed row of each sorted sequence's last valid step.
    prev : (N - B,) int64
        For rows at ``t >= 1`` (that is rows ``B..N-1``), the row of the same
        sequence at ``t - 1``.
    """

    def __init__(self, lengths):
        lengths = np.asarray(lengths, dtype=INDEX_DTYPE)
        self.B = lengths.shape[0]
        self.order = np.argsort(-lengths, kind="stable").astype(INDEX_DTYPE)
        ls = lengths[self.order]
        self.lengths_sorted = ls
        self.T = int(ls[0])
        steps = np.arange(self.T, dtype=INDEX_DTYPE)
        self.batch_sizes = (ls[None, :] > steps[:, None]).sum(axis=1).astype(INDEX_DTYPE)
        self.offsets = np.zeros(self.T + 1, dtype=INDEX_DTYPE)
        np.cumsum(self.batch_sizes, out=self.offsets[1:])
        self.N = int(self.offsets[-1])
        self.row_t = np.repeat(steps, self.batch_sizes)
        self.row_b = np.arange(self.N, dtype=INDEX_DTYPE) - self.offsets[self.row_t]
        self.src_b = self.order[self.row_b]
        self.rev = self.offsets[ls[self.row_b] - 1 - self.row_t] + self.row_b
        self.last = self.offsets[ls - 1] + np.arange(self.B, dtype=INDEX_DTYPE)
        later = slice(self.B, self.N)
        self.prev = self.offsets[self.row_t[later] - 1] + self.row_b[later]

    def pack(self, X, dtype=None):
        """Gather the valid steps of a batch-first array (B, T, ...) into (N, ...)."""
        out = X[self.src_b, self.row_t]
        return np.ascontiguousarray(out, dtype=dtype if dtype is not None else out.dtype)

    def unpack(self, rows, T):
        """Scatter packed rows (N, ...) into a zero-padded batch-first (B, T, ...)."""
        out = np.zeros((self.B, T) + rows.shape[1:], dtype=rows.dtype)
        out[self.src_b, self.row_t] = rows
        return out

    def sort(self, state):
        """(B, ...) in original order -> sorted order (a contiguous copy)."""
        return np.ascontiguousarray(state[self.order])

    def unsort(self, state_sorted, out):
        """Write a sorted (B, ...) array into ``out`` in original order."""
        out[self.order] = state_sorted
        return out


def writable(a):
    """``a`` as a writable C-contiguous array, the kind the kernels' one
    signature per dtype takes: ``a`` itself when it is one, else a copy (a
    read-only array, such as a memmap or a frozen state, would have the
    kernels compiled once more)."""
    if a.flags.c_contiguous and a.flags.writeable:
        return a
    return np.array(a, order="C")

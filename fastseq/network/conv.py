"""``ConvStack``: a temporal convolution front end, 1-D convolutions over time,
each followed by ReLU and optional max pooling (the CNN of a hybrid CNN + RNN).

Each layer l computes, per sequence b of valid length L_b (see
:mod:`fastseq.kernels.conv` for the equations)::

    z = Conv1d(x, W_l, bias_l)   "same" zero padding at the ends of each
                                 sequence's own valid steps (K odd)
    y = MaxPool1d(ReLU(z), p)    stride p, floor: L_b -> L_b // p

so a padded batch gives exactly what each sequence gives alone, and padded
steps are never read.  A sequence whose pooled length would reach 0 is an
error (``ValueError``, before any kernel runs): a stack of n layers with pool
p needs at least ``p ** n`` steps (:meth:`ConvStack.min_length`).

The forward pass is one compiled kernel per group of sequences
(:func:`fastseq.kernels.conv.conv_forward`): the window of each step is a
contiguous run of the batch-first input, so register tiles read the rows of
the product straight from ``x`` (only the steps within K // 2 of an end are
packed, with zeros), for chunks of steps whose products stay in cache while
one pass adds the bias, applies ReLU and pools; only the steps the pooling
keeps are computed.  The backward pass is a gemm over the valid steps: the
kernels pack each step's window into a row of ``cols`` (N, K*F), and the
products run in BLAS (single-threaded), on blocks of whole sequences of about
:data:`BLOCK_BYTES`, so that each block's rows stay in cache, and memory holds
one block's rows, not the batch's.  Sequences (forward) and blocks (backward)
go to fastseq's threads (:func:`fastseq._threads.get_num_threads`) when the
call is large enough.
"""

import numpy as np

from .._config import DEFAULT_DTYPE, INDEX_DTYPE, resolve_dtype
from .._data import writable
from .._threads import _on_pool, _split_threads, blas_single_thread, get_num_threads
from .._validation import check_lengths, check_positive_int
from .._workspace import aligned_empty
from ..kernels.conv import (CHUNK_ROWS, conv_forward, conv_pack, conv_pack_weight,
                            conv_relu_pool_backward, conv_unpack, strips)
from ..kernels.matmul import STRIP_BYTES
from ._flat import layout_size

#: bytes of packed rows and their products per block of sequences (half of a
#: 512 KB L2, the smallest the project targets)
BLOCK_BYTES = 256 * 1024
#: multiply-adds of a layer's call from which its blocks go to several threads
MIN_SPLIT_WORK = 2_000_000


def check_conv_args(filters, kernel_size, pool, prefix=""):
    """Validated ``(filters tuple, kernel_size, pool)``; errors name
    ``{prefix}filters``, ``{prefix}kernel_size``, ``{prefix}pool``."""
    if isinstance(filters, (list, tuple)):
        if len(filters) == 0:
            raise ValueError(f"{prefix}filters must be an int >= 1 or a non-empty tuple of "
                             "them, got an empty sequence")
        filters = tuple(check_positive_int(f, f"{prefix}filters[{i}]")
                        for i, f in enumerate(filters))
    else:
        filters = (check_positive_int(filters, f"{prefix}filters"),)
    kernel_size = check_positive_int(kernel_size, f"{prefix}kernel_size")
    if kernel_size % 2 == 0:
        raise ValueError(f"{prefix}kernel_size must be odd (\"same\" padding centres the "
                         f"window on each step), got {kernel_size}")
    pool = check_positive_int(pool, f"{prefix}pool")
    return filters, kernel_size, pool


class ConvStack:
    """Conv1d -> ReLU -> MaxPool1d, stacked, over batch-first sequences.

    Parameters
    ----------
    input_size : int
        F, features per step of the input.
    filters : int or tuple of int
        C_l, output channels of each layer (an int: one layer).
    kernel_size : int, default 3
        K, odd, shared by every layer.
    pool : int, default 1
        p, max-pooling size and stride after each layer (1: no pooling).
    dtype : {"float32", "float64"}
    random_state : None, int or numpy Generator
        PyTorch's ``Conv1d`` initialisation: weight and bias
        uniform(+-1/sqrt(F_l*K)).

    Attributes
    ----------
    params : dict of str -> ndarray
        ``weight_l{l}`` (C_l, F_l, K) in PyTorch's ``Conv1d.weight`` layout and
        ``bias_l{l}`` (C_l,): views into :attr:`flat` (the weight is a
        transposed view of its (C_l, K, F_l) storage, the gemm's layout).
    flat : (P,) ndarray
    output_size : int
        C of the last layer.
    """

    def __init__(self, input_size, filters, kernel_size=3, pool=1, dtype=DEFAULT_DTYPE,
                 random_state=None):
        self.input_size = check_positive_int(input_size, "input_size")
        self.filters, self.kernel_size, self.pool = check_conv_args(filters, kernel_size, pool)
        self.dtype = resolve_dtype(dtype)
        self.num_layers = len(self.filters)
        self.output_size = self.filters[-1]
        self._in_sizes = (self.input_size,) + self.filters[:-1]
        K = self.kernel_size
        self._layout = []
        for l, (F, C) in enumerate(zip(self._in_sizes, self.filters)):
            self._layout += [(f"weight_l{l}", (C, K, F)), (f"bias_l{l}", (C,))]
        self.n_params = layout_size(self._layout)
        self.bind(np.zeros(self.n_params, dtype=self.dtype), copy=False)
        rng = np.random.default_rng(random_state)
        for l, F in enumerate(self._in_sizes):
            bound = 1.0 / np.sqrt(F * K)
            for name in (f"weight_l{l}", f"bias_l{l}"):
                self.params[name][...] = rng.uniform(-bound, bound, self.params[name].shape)

    # ------------------------------------------------------------ params
    def _views(self, flat):
        """{name: view}: weights (C, F, K) (PyTorch) over (C, K, F) storage,
        and ``_gemm_l{l}`` (C, K*F), the same storage as the gemm reads it."""
        views, pos = {}, 0
        for name, shape in self._layout:
            size = int(np.prod(shape))
            v = flat[pos:pos + size].reshape(shape)
            if name.startswith("weight"):
                C, K, F = shape
                views[name] = v.transpose(0, 2, 1)
                views["_gemm" + name[6:]] = v.reshape(C, K * F)
            else:
                views[name] = v
            pos += size
        return views

    def bind(self, flat, copy=True):
        """Make the parameters views into ``flat`` (P,) (with ``copy`` the
        current values move along)."""
        flat = np.asarray(flat)
        if flat.shape != (self.n_params,) or flat.dtype != self.dtype:
            raise ValueError(f"flat must be a ({self.n_params},) {self.dtype} array, "
                             f"got {flat.shape} {flat.dtype}")
        if copy:
            flat[...] = self.flat
        self.flat = flat
        views = self._views(flat)
        self._gemm = [views.pop(f"_gemm_l{l}") for l in range(self.num_layers)]
        self.params = views
        return self

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("params")
        state.pop("_gemm")
        return state

    def __setstate__(self, state):
        state["flat"] = writable(state["flat"])
        self.__dict__.update(state)
        self.bind(self.flat, copy=False)

    # ------------------------------------------------------------ lengths
    def min_length(self):
        """Fewest steps a sequence needs (pooled length >= 1 after every layer)."""
        return self.pool ** self.num_layers

    def output_lengths(self, lengths):
        """Valid lengths after the stack: ``L // p ** n`` (n layers), int64."""
        lengths = np.asarray(lengths, dtype=INDEX_DTYPE)
        for _ in range(self.num_layers):
            lengths = lengths // self.pool
        return lengths

    def summary_rows(self, steps):
        """One ``(name, kind, steps label, filters, parameters)`` row per
        layer for a model summary; ``steps`` names the input's steps ("T")
        and becomes ``steps/p**l`` after each pooling."""
        rows, label = [], steps
        for l, C in enumerate(self.filters):
            kind = f"Conv1D(k={self.kernel_size})+ReLU"
            if self.pool > 1:
                kind += f"+MaxPool({self.pool})"
                label = f"{steps}/{self.pool ** (l + 1)}"
            n = self.params[f"weight_l{l}"].size + self.params[f"bias_l{l}"].size
            rows.append((f"conv_{l + 1}", kind, label, C, n))
        return rows

    def output_steps(self, T):
        """Padded steps of the output for an input of T steps."""
        for _ in range(self.num_layers):
            T //= self.pool
        return T

    def check_lengths(self, lengths, name="lengths"):
        """ValueError naming the first sequence too short for the pooling."""
        need = self.min_length()
        short = np.flatnonzero(np.asarray(lengths) < need)
        if short.size:
            i = int(short[0])
            raise ValueError(
                f"{name}[{i}] = {int(lengths[i])}: sequence {i} is too short for the "
                f"convolution front end ({self.num_layers} layer(s) with max pooling of "
                f"{self.pool}), which needs at least {need} steps (pooled length would be 0)")

    # ------------------------------------------------------------ blocks
    def _blocks(self, lengths, row_bytes):
        """Consecutive sequence ranges ``[(b0, b1)]`` of about
        :data:`BLOCK_BYTES` of packed rows and products each (at least one
        sequence): a block's ``cols`` and ``z`` stay in cache between the
        packing, the gemm and the pooling, and memory holds one block's."""
        target = max(1, BLOCK_BYTES // row_bytes)
        ends = np.cumsum(lengths)
        bounds, b0, base = [], 0, 0
        for b in range(len(lengths)):
            if ends[b] - base >= target:
                bounds.append((b0, b + 1))
                b0, base = b + 1, ends[b]
        if b0 < len(lengths):
            bounds.append((b0, len(lengths)))
        return bounds

    @staticmethod
    def _on_threads(blocks, work, fn, n_threads=None):
        """``fn(i, j)`` over the block indices ``[i, j)``: in one call, or on
        ``n_threads`` (default :func:`fastseq._threads.get_num_threads`, when
        the batch has ``work`` multiply-adds enough) contiguous groups in
        threads.  Returns the list of results (one per group, in order;
        deterministic for a thread count)."""
        if n_threads is None:
            n_threads = get_num_threads() if work >= MIN_SPLIT_WORK else 1
        n = min(n_threads, len(blocks))
        if n <= 1:
            return [fn(0, len(blocks))]
        step = -(-len(blocks) // n)
        bounds = [(i, min(i + step, len(blocks))) for i in range(0, len(blocks), step)]
        res = [None] * len(bounds)

        def one(i, j):
            res[i // step] = fn(i, j)
        _on_pool(bounds, one)
        return res

    # ------------------------------------------------------------ forward
    def forward(self, X, lengths=None, need_grad=True):
        """Run the stack.

        Parameters
        ----------
        X : (B, T, F) float
            Batch-first; steps ``t >= lengths[b]`` are never read.
        lengths : (B,) int, optional
            L_b in 1..T (default all T), each at least :meth:`min_length`.
        need_grad : bool
            Keep what :meth:`backward` needs in the returned cache.

        Returns
        -------
        out : (B, T2, C) float
            Zero at padded steps; T2 = ``output_steps(T)``.
        out_lengths : (B,) int64
            The valid lengths of ``out``.
        cache : list or None
            For :meth:`backward` (None when ``need_grad`` is False).
        """
        X = np.asarray(X)
        if X.ndim != 3 or X.shape[2] != self.input_size:
            raise ValueError(f"X must have shape (B, T, {self.input_size}), got {X.shape}")
        B, T = X.shape[:2]
        lengths = check_lengths(lengths, B, T)
        self.check_lengths(lengths)
        x = np.ascontiguousarray(X, dtype=self.dtype)
        K, p, dt = self.kernel_size, self.pool, self.dtype
        layers = [self._layer_setup(l, (B, T), lengths, need_grad) for l in range(self.num_layers)]
        rows = max(1, CHUNK_ROWS // p) * p
        SW = STRIP_BYTES // dt.itemsize

        def run(i, j):
            # sequences i..j-1 through every layer: a sequence's steps of one
            # layer depend on its own steps of the layer below only
            xl = x
            for out, arg, wp, bias, lens_l, Fl in layers:
                work = np.empty((rows, wp.shape[0] * SW), dtype=dt)
                edge = np.empty(max(1, K - 1) * K * Fl, dtype=dt)
                conv_forward(xl, lens_l, K, wp, bias, p, i, j, work, edge, out, arg)
                xl = out

        # sequences to threads as the planner splits a batch (its hand-over
        # against the work: the fused pass is too quick to repay it below a
        # few million multiply-adds); one split for the whole stack
        work = sum(int(lens_l.sum()) * K * Fl * out.shape[2] for out, _, _, _, lens_l, Fl in layers)
        with blas_single_thread():
            self._on_threads([(b, b + 1) for b in range(B)], work, run,
                             n_threads=_split_threads(B, work))
        cache = None
        if need_grad:
            # the backward pass packs blocks of whole sequences
            cache, xl = [], x
            for out, arg, _, _, lens_l, Fl in layers:
                blocks = self._blocks(lens_l, dt.itemsize * (K * Fl + out.shape[2]))
                cache.append((xl, lens_l, out, arg, blocks))
                xl = out
        out, _, _, _, lens_l, _ = layers[-1]
        return out, lens_l // p, cache

    def _layer_setup(self, l, BT, lengths, need_grad):
        """Layer ``l``'s output arrays, packed weight and bias, the valid
        lengths of its input and its input width, for a batch of ``BT`` =
        (B, T) input steps of the stack."""
        B, T = BT
        p, dt = self.pool, self.dtype
        Tl, lens_l = T, lengths
        for _ in range(l):
            Tl, lens_l = Tl // p, lens_l // p
        Fl, C, K = self._in_sizes[l], self.filters[l], self.kernel_size
        out = np.empty((B, Tl // p, C), dtype=dt)
        arg = np.empty(out.shape if need_grad and p > 1 else (0, 0, 0), dtype=INDEX_DTYPE)
        wp = aligned_empty((strips(C, dt.itemsize), K * Fl, STRIP_BYTES // dt.itemsize), dt)
        conv_pack_weight(self._gemm[l], wp)
        return out, arg, wp, self.params[f"bias_l{l}"], lens_l, Fl

    # ------------------------------------------------------------ backward
    def backward(self, d_out, cache, out=None, need_input_grad=True):
        """Gradients of the forward pass that produced ``cache``.

        Parameters
        ----------
        d_out : (B, T2, C) float
            Gradient of ``out``; padded steps are never read.
        cache : from :meth:`forward` with ``need_grad=True``.
        out : (P,) float, optional
            Receives the parameter gradients (overwritten), laid out as
            :attr:`flat`.
        need_input_grad : bool
            Compute the gradient with respect to X.

        Returns
        -------
        dX : (B, T, F) float or None
            Zero at padded steps.
        grad : (P,) float
        """
        if cache is None:
            raise RuntimeError("backward() needs a forward(need_grad=True) cache")
        grad = np.zeros(self.n_params, dtype=self.dtype) if out is None else out
        g = self._views(grad)
        d = np.ascontiguousarray(d_out, dtype=self.dtype)
        with blas_single_thread():
            for l in reversed(range(self.num_layers)):
                y = cache[l][2]
                if d.shape != y.shape:
                    raise ValueError(f"d_out must have shape {y.shape}, got {d.shape}")
                want_dx = l > 0 or need_input_grad
                d = self._layer_backward(l, d, cache[l], g, want_dx)
        return (d if need_input_grad else None), grad

    def _layer_backward(self, l, d, cache, g, want_dx):
        """Parameter gradients of layer ``l`` into the views ``g``; returns
        the gradient of its input (or None)."""
        x, lengths, y, arg, blocks = cache
        B, Tl, Fl = x.shape
        K, p, C, dt = self.kernel_size, self.pool, self.filters[l], self.dtype
        W = self._gemm[l]
        dx = np.empty(x.shape, dtype=dt) if want_dx else None
        L2s = lengths // p

        def run(i, j):
            rows = max(int(lengths[b0:b1].sum()) for b0, b1 in blocks[i:j])
            cols_buf = np.empty(rows * K * Fl, dtype=dt)
            dz_buf = np.empty(rows * C, dtype=dt)
            gW = np.zeros((C, K * Fl), dtype=dt)
            tmp = np.empty_like(gW)
            gb = np.zeros(C, dtype=dt)
            for b0, b1 in blocks[i:j]:
                L = lengths[b0:b1]
                off = _offsets(L)
                N = int(L.sum())
                cols = cols_buf[:N * K * Fl].reshape(N, K * Fl)
                dz = dz_buf[:N * C].reshape(N, C)
                conv_pack(x[b0:b1], L, off, K, cols)  # again: cheaper than keeping it
                conv_relu_pool_backward(d[b0:b1], y[b0:b1], arg[b0:b1], L2s[b0:b1], off, dz)
                np.matmul(dz.T, cols, out=tmp)
                gW += tmp
                gb += dz.sum(axis=0)
                if want_dx:
                    np.matmul(dz, W, out=cols)  # d_cols, in cols' place
                    conv_unpack(cols, L, off, K, dx[b0:b1])
            return gW, gb

        parts = self._on_threads(blocks, 2 * int(lengths.sum()) * K * Fl * C, run)
        gW, gb = parts[0]
        for pw, pb in parts[1:]:
            gW += pw
            gb += pb
        g[f"_gemm_l{l}"][...] = gW
        g[f"bias_l{l}"][...] = gb
        return dx


def _offsets(lengths):
    """Exclusive cumulative sum (B,) int64 of ``lengths``."""
    off = np.zeros(len(lengths), dtype=INDEX_DTYPE)
    np.cumsum(lengths[:-1], out=off[1:])
    return off

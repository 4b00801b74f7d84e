"""``Recurrent``: a stacked, optionally bidirectional RNN/LSTM/GRU layer.

The layer owns its parameters (one flat vector with PyTorch-named views),
packs padded batches, runs one kernel per layer and direction, and keeps what
the backward pass needs.  It does no math of its own beyond the large matrix
products around the kernels (input projections before the time loop, weight
gradients after it).
"""

import contextlib
import functools
import time

import numpy as np

from .. import _plan
from .. import kernels as K
from .._threads import (
    _matmul_threads, _on_pool, blas_single_thread, call_threads, cpu_busy, get_num_threads, limit, matmul_splits,
    packed_for_slices, parallel_copy, parallel_matmul, parallel_project, parallel_tall_cat, parallel_tall_matmul,
    parallel_transpose,
    ONE, SPLIT, SplitWatch, pipelines, run_native, run_pipelined, run_sliced, run_units, split_bounds, splits,
    unit_bounds, unit_split_slot,
)
from ..kernels.gru import gru_backward_slice, gru_forward_slice
from ..kernels.gru import reset_scaled as gru_reset_scaled
from ..kernels._sync import AVAILABLE as UNIT_SPLIT_AVAILABLE, STRIDE
from ..kernels.grads import weight_grads_behind
from ..kernels.infer import (
    fused_weights, gru_infer, gru_infer_x, gru_run, gru_units_part, lstm_fused_slice, lstm_infer, lstm_infer_x, lstm_run,
    lstm_units_part, rnn_infer, rnn_infer_x, rnn_run,
)
from ..kernels.infer_native import (
    gru_pipelined_native, gru_units_native, lstm_fused_native, lstm_pipelined_native, lstm_units_native,
    part_address, rnn_pipelined_native,
)
from ..kernels.gru_reset_before import gru_rb_backward_slice, gru_rb_forward_slice
from ..kernels.matmul import (
    FUSED_MIN_ROWS, KBLOCK_BYTES, PACKED_BLAS_MIN_ROWS, PROJECT_BLAS_MIN_BYTES, STRIP_BYTES, project_ahead,
)
from ..kernels.lstm import lstm_backward_part, lstm_backward_slice, lstm_forward_part, lstm_forward_slice
from ..kernels.rnn import rnn_backward_slice, rnn_forward_slice
from .._config import DEFAULT_DTYPE, INDEX_DTYPE, resolve_dtype
from .._data import Packing, writable
from .._fpenv import flush_denormals
from .._workspace import kept, scratch, scratch_arrays
from ._flat import flat_views, layout_size
from .._validation import (
    check_choice, check_finite, check_fraction, check_lengths, check_n_jobs, check_positive_int,
    check_real_array, check_state,
)
from ..init import get_initializer

#: "no producer" for the time loops' ``ready`` argument (never written)
_NO_READY = np.empty(0, dtype=INDEX_DTYPE)
#: the slot of a call that runs on this thread alone (never free)
@functools.lru_cache(maxsize=64)
def _slices_array(bounds):
    """Batch slices ``((b0, b1), ...)`` as an (n, 2) int64 array (read only)."""
    a = np.array(bounds, dtype=np.int64).reshape(len(bounds), 2)
    a.flags.writeable = False
    return a


#: :meth:`Recurrent._forward_infer`'s ``units`` of each plan
_UNIT_TIERS = {"units": 1, "units-lingering": 2}
_NO_SLOT = contextlib.nullcontext(False)
#: the "bounds" of a pipelined projection's compiled hand-over (two parts:
#: the projection on a pool thread, the loop here; only their count is read)
_PAIR = np.zeros((2, 2), dtype=np.int64)
_PAIR.flags.writeable = False


def _column_sums(g, out):
    """``out[...] = g.sum(axis=0)`` for a C-contiguous (N, G) ``g``, as one
    BLAS product with a vector of ones (half the time of numpy's row-by-row
    reduction at the training sizes here, e.g. 0.15 against 0.32 ms for
    (3584, 768) float32); returns ``out``."""
    return np.matmul(np.ones(g.shape[0], dtype=g.dtype), g, out=out)


def _tall_fits(cols, dt):
    """Whether a weight gradient into ``cols`` gates goes to
    :func:`fastseq._threads.parallel_tall_matmul` rather than BLAS: when
    the gates fill whole strips (the product's columns past its last strip
    take a plain loop: 3-4x BLAS's time for a GRU of 100 units, 300 gates,
    thirteenth session).  With the gates' strips packed a block at a time
    (:func:`fastseq.kernels.matmul.tall_matmul`) it ran 1.2-2.0x BLAS's
    speed at every shape timed, 6 to 4,097 inputs, 64 to 49,152 rows
    (two threads, znver5, OpenBLAS's Haswell kernels; ``python -m
    bench.wgrad``, bench/RESULTS.md, "twenty-second session")."""
    return cols % (STRIP_BYTES // dt.itemsize) == 0


def _strided_x_spills(F, dt):
    """Whether the tall product over (N, F) inputs read in place
    (:func:`fastseq.kernels.matmul.tall_matmul`) is slower than over the
    inputs transposed first (:func:`fastseq.kernels.matmul.tall_matmul_t`,
    the copy included): when a k block of them (``F`` elements of each of
    its k rows, which every group of strips reads again) is larger than
    half a core's L2.  Two threads, znver5, ms, in place / transposed:
    3,584 x 285 inputs into 1,024 gates 4.9 / 5.8, 2,048 x 513 4.7 / 5.4;
    1,600 x 1,025 into 4,096 30.4 / 28.5, 1,600 x 2,049 67.7 / 61.8
    (``python -m bench.wgrad``)."""
    return F * (KBLOCK_BYTES // STRIP_BYTES) * dt.itemsize > _plan.for_threads(get_num_threads()).l2_bytes // 2


#: elements (rows times units) from which :func:`_reset_scaled` splits
#: its columns across threads (a pass over memory, as a copy)
RESET_SCALED_SPLIT = 1 << 18


def _reset_scaled(dg, gates, H, db_n):
    """:func:`fastseq.kernels.gru.reset_scaled` of every column, in column
    blocks of whole cache lines across the threads from
    :data:`RESET_SCALED_SPLIT` elements (the same sums: each column's in
    row order; at MNIST rows, 3,584 x 256, 1.3 ms on one thread)."""
    line = STRIP_BYTES // dg.itemsize
    n = min(get_num_threads(), H // line) if dg.shape[0] * H >= RESET_SCALED_SPLIT else 1
    if n <= 1:
        gru_reset_scaled(dg, gates, H, db_n, 0, H)
        return
    step = -(-(H // line) // n) * line
    _on_pool([(j, min(j + step, H)) for j in range(0, H, step)],
             lambda j0, j1: gru_reset_scaled(dg, gates, H, db_n, j0, j1))


def _backward_product(a, b, out=None, name="bwd"):
    """``a @ b`` (into ``out`` when given) for the backward pass's large
    products (weight gradients over many rows, the input gradient): on
    the packed tiles (:func:`fastseq._threads.parallel_project`, ``a``
    and ``b.T`` made C-contiguous first where they are not, in scratch
    buffers under ``name``) where each thread's block of output rows is
    under the machine's measured crossover of the step product
    (:data:`fastseq.kernels.matmul.PACKED_BLAS_MIN_ROWS`: BLAS overtakes
    the tiles from that many rows), the output's columns fill whole strips
    and both copies fit in half the L3; else BLAS
    (:func:`fastseq._threads.parallel_matmul`).  On a znver5, whose BLAS
    runs Haswell kernels, the LSTM's (1,024 x 2,048) @ (2,048 x 512) weight
    gradient took 5.9 ms against 8.7 (bench/RESULTS.md, "twentieth
    session")."""
    (m, k), n, dt = a.shape, b.shape[1], np.result_type(a, b)
    threads = _matmul_threads(m, k, n)       # (the row blocks parallel_project takes)
    half_l3 = _plan.for_threads(threads).l3_bytes // 2
    if (a.dtype != dt or b.dtype != dt or -(-m // threads) >= PACKED_BLAS_MIN_ROWS.get()
            or n % (STRIP_BYTES // dt.itemsize) or m * k * dt.itemsize > half_l3
            or n * k * dt.itemsize > half_l3 or (out is not None and out.strides[1] != dt.itemsize)
            or not (a.flags.c_contiguous or a.T.flags.c_contiguous)
            or not (b.flags.c_contiguous or b.T.flags.c_contiguous)):
        return parallel_matmul(a, b, out=out)
    if not a.flags.c_contiguous:
        a_c = scratch(name + "_a", (m, k), dt)
        parallel_transpose(a.T, a_c)
        a = a_c
    if b.T.flags.c_contiguous:
        w = b.T
    else:
        w = scratch(name + "_w", (n, k), dt)
        parallel_transpose(b, w)
    if out is None:
        out = np.empty((m, n), dtype=dt)
    return parallel_project(a, w, np.empty(0, dtype=dt), out)


def _product_grads(x, dg, dW):
    """``dW[...] = dg.T @ x``: :func:`fastseq._threads.parallel_tall_matmul`
    where :func:`_tall_fits` ``dg``'s columns (from ``x`` transposed first
    where :func:`_strided_x_spills`), else BLAS (the recurrent weights'
    gradient of the GRU, whose n-third differs from the input side's)."""
    (N, F), M, dt = x.shape, dg.shape[1], dg.dtype
    if _strided_x_spills(F, dt) and _tall_fits(M, dt):
        # (a k block of x's rows past half the L2: the inputs transposed first)
        xt = scratch("wgrad_h_xt", (F, N), dt)
        parallel_transpose(np.ascontiguousarray(x), xt)
        parallel_transpose(parallel_tall_matmul(xt, dg, transposed=True), dW)
    elif _tall_fits(M, dt):
        # (the (F, M) product into dW transposed in registers: numpy's
        # transposed copy took 0.4 ms of 768 x 256 gradients)
        parallel_transpose(parallel_tall_matmul(x, dg), dW)
    else:
        _backward_product(dg.T, x, out=dW)


def _gate_grads(dg, K, fill, db, name, dests):
    """``dW[...] = (dg.T @ x)[:, k0:k1]`` for each ``(dW, k0, k1)`` of
    ``dests``, the (N, K) inputs ``x`` written transposed by ``fill(xt)``
    into the rows of a buffer (K + 1, N) kept under ``name``
    (:func:`fastseq._workspace.scratch`; a copy made either way, as
    :func:`fastseq._threads.parallel_transpose` writes it) and, unless
    ``db`` is None, ``db[...] = dg.sum(axis=0)``: where
    :func:`_tall_fits` the gates, one product of
    :func:`fastseq._threads.parallel_tall_matmul` over the inputs and a
    row of ones below them (the bias gradient in the same pass; its (K,
    M) result goes into each ``dW`` transposed in registers), else BLAS
    and :func:`_column_sums`."""
    (N, M), dt = dg.shape, dg.dtype
    ones = db is not None
    tall = _tall_fits(M, dt)
    xt = scratch(name + "_xt", (K + (tall and ones), N), dt)
    fill(xt)
    if not tall:
        out = _backward_product(dg.T, xt.T, out=scratch(name + "_out", (M, K), dt))
        if ones:
            _column_sums(dg, db)
        for dW, k0, k1 in dests:
            dW[...] = out[:, k0:k1]
        return
    if ones:
        xt[K] = 1
    out = parallel_tall_matmul(xt, dg, transposed=True)
    if ones:
        db[...] = out[K]
    for dW, k0, k1 in dests:
        parallel_transpose(out[k0:k1], dW)


def _cat_grads(dg, x, h, h0, batch_sizes, db, dests):
    """:func:`_gate_grads` over ``[x | h_prev | 1]`` read in place
    (:func:`fastseq._threads.parallel_tall_cat`; h_prev: ``h0`` (B, H)
    for the first step's rows, the packed outputs ``h`` (N, H) of each
    sequence's previous step for the others, by ``batch_sizes``) where
    :func:`_in_place_fits`, without the transposed copy; else False
    (nothing done).  ``h0`` may be None (zero states)."""
    (N, M), dt = dg.shape, dg.dtype
    F, H = x.shape[1], h.shape[1]
    if not _in_place_fits(M, F + H, dt):
        return False
    h0 = np.empty((0, H), dtype=dt) if h0 is None or not h0.any() else np.ascontiguousarray(h0)
    out = parallel_tall_cat(np.ascontiguousarray(x), h, h0, batch_sizes, dg,
                            scratch("wgrad_cat", (F + H + 1, M), dt))
    if db is not None:
        db[...] = out[F + H]
    for dW, k0, k1 in dests:
        parallel_transpose(out[k0:k1], dW)
    return True


def _in_place_fits(cols, K, dt):
    """Whether the weight gradients into ``cols`` gates over ``K`` inputs
    read them in place (:func:`_cat_grads`): where :func:`_tall_fits` the
    gates and a k block of the inputs does not spill
    (:func:`_strided_x_spills`)."""
    return _tall_fits(cols, dt) and not _strided_x_spills(K, dt)


#: the batch sizes :func:`_cat_grads` takes for inputs alone (not read;
#: writeable, as every layer's: a read-only array is another signature)
_NO_STEPS = np.zeros(1, dtype=INDEX_DTYPE)


def _input_grads(dg, inp, dW, db):
    """``dW[...] = dg.T @ inp`` and, unless ``db`` is None, ``db[...] =
    dg.sum(axis=0)``: :func:`_cat_grads` of the inputs alone where it
    takes them, else :func:`_gate_grads`."""
    N, F = inp.shape
    if _cat_grads(dg, inp, np.empty((N, 0), dtype=dg.dtype), None, _NO_STEPS, db, ((dW, 0, F),)):
        return
    _gate_grads(dg, F, lambda xt: parallel_transpose(np.ascontiguousarray(inp), xt), db, "wgrad_in", ((dW, 0, F),))


@functools.lru_cache(maxsize=256)
def _slice_bounds(B, n):
    """The (n, 2) int64 sequence ranges ``[k*B//n, (k+1)*B//n)`` of
    :meth:`Recurrent._slices_direction` (read only, as the unit split's
    bounds: one compiled signature)."""
    a = np.array([(k * B // n, (k + 1) * B // n) for k in range(n)], dtype=np.int64).reshape(n, 2)
    a.flags.writeable = False
    return a


def _transposed(w):
    """``w.T`` as a C-contiguous copy, transposed in registers
    (:func:`fastseq._threads.parallel_transpose`; numpy's copy took
    0.3 ms of a 1 MB W_hh in a training step, in blocks of 32 rows, 0.41
    in one)."""
    out = np.empty(w.shape[::-1], dtype=w.dtype)
    parallel_transpose(np.ascontiguousarray(w), out)
    return out

CELLS = ("rnn", "lstm", "gru")
#: training computes the weight gradients of a layer whose batch is not split
#: on a second thread behind its backward loop (:mod:`fastseq.kernels.grads`)
#: when the plan's pipeline threshold allows (bench/RESULTS.md, "Planner")
PIPELINE_BACKWARD = True
NONLINEARITIES = ("tanh", "relu")
#: initialiser presets: (input weights, recurrent weights, biases, unit forget bias)
INIT_PRESETS = {
    "pytorch": ("pytorch", "pytorch", "pytorch", False),
    "keras": ("glorot_uniform", "orthogonal", "zeros", True),
}


class _UniformPacking(Packing):
    """:class:`~fastseq._data.Packing` of a batch whose sequences all have T
    steps (``lengths`` None or all equal): row ``t*B + b``, no sorting, and
    the index maps built only when asked for (the per-call cost of a small
    batch is mostly Python; this is the common case)."""

    uniform = True

    def __init__(self, B, T):  # noqa: D107 - no super().__init__: nothing to sort
        self.B, self.T, self.N = B, T, B * T
        self.lengths_sorted = np.full(B, T, dtype=INDEX_DTYPE)
        self.batch_sizes = np.full(T, B, dtype=INDEX_DTYPE)

    @property
    def order(self):
        return np.arange(self.B, dtype=INDEX_DTYPE)

    @property
    def offsets(self):
        return np.arange(0, self.N + 1, self.B, dtype=INDEX_DTYPE)

    @property
    def row_t(self):
        return np.repeat(np.arange(self.T, dtype=INDEX_DTYPE), self.B)

    @property
    def row_b(self):
        return np.tile(np.arange(self.B, dtype=INDEX_DTYPE), self.T)

    @property
    def src_b(self):
        return self.row_b

    @property
    def rev(self):
        return ((self.T - 1 - self.row_t) * self.B + self.row_b).astype(INDEX_DTYPE)

    @property
    def last(self):
        return (self.T - 1) * self.B + np.arange(self.B, dtype=INDEX_DTYPE)

    @property
    def prev(self):
        return np.arange(self.N - self.B, dtype=INDEX_DTYPE)

    def pack(self, X, dtype=None):
        dtype = X.dtype if dtype is None else dtype
        if self.B == 1:  # a copy, as Packing's: callers may modify it in place
            return np.array(X[0], dtype=dtype, order="C", copy=True)
        out = np.empty((self.T, self.B) + X.shape[2:], dtype=dtype)
        out[...] = X.swapaxes(0, 1)
        return out.reshape((self.N,) + X.shape[2:])

    def unpack(self, rows, T):
        shape = (self.B, T) + rows.shape[1:]
        out = np.empty(shape, dtype=rows.dtype) if T == self.T else np.zeros(shape, dtype=rows.dtype)
        parallel_copy(out[:, :self.T], rows.reshape((self.T, self.B) + rows.shape[1:]).swapaxes(0, 1))
        return out

    def sort(self, state):
        return np.array(state, order="C", copy=True)  # kernels update it in place

    def unsort(self, state_sorted, out):
        out[...] = state_sorted
        return out


class Recurrent:
    """Stacked, optionally bidirectional Elman RNN / LSTM / GRU over padded batches.

    Parameters
    ----------
    cell : {"rnn", "lstm", "gru"}
    input_size : int
        F, features per step.
    hidden_size : int
        H, units per direction.
    num_layers : int, default 1
    bidirectional : bool, default False
        D = 2 directions when True; the reverse one starts at each sequence's
        own last valid step.
    nonlinearity : {"tanh", "relu"}, default "tanh"
        Activation of the Elman RNN (ignored by LSTM and GRU).
    bias : bool, default True
        Without bias the layer has only ``weight_ih``/``weight_hh`` (as PyTorch).
    dropout : float in [0, 1), default 0
        Dropout on the inputs of layers 2..num_layers while ``training``
        (PyTorch's ``dropout``).
    recurrent_dropout : float in [0, 1), default 0
        Variational dropout on ``h_{t-1}`` inside the recurrent product: one mask
        per sequence, layer and direction, constant over time (Keras's
        ``recurrent_dropout``), while ``training``.
    dtype : {"float32", "float64"}, default "float32"
    random_state : None, int or numpy Generator
        Seeds the initialisation and the dropout masks.
    init : {"pytorch", "keras"}, default "pytorch"
        Preset of initialisers: PyTorch's uniform(+-1/sqrt(H)) everywhere, or
        Keras's glorot_uniform / orthogonal / zeros with unit forget bias.
    kernel_initializer, recurrent_initializer, bias_initializer : str or callable
        Override the preset for input weights, recurrent weights and biases
        (names in :mod:`fastseq.init`).
    unit_forget_bias : bool, optional
        LSTM only: forget gate bias 1 (overrides the preset).
    reset_after : bool, default True
        GRU only.  True: PyTorch's form, the reset gate applied after the
        candidate's recurrent product, ``n = tanh(W_in x + b_in + r * (W_hn h +
        b_hn))`` (Keras ``reset_after=True``).  False: the original form of Cho
        et al. (2014), ``n = tanh(W_in x + b_in + W_hn (r * h) + b_hn)``
        (Keras ``reset_after=False``); same parameter names and shapes.
    n_jobs : int or None, default None
        Threads of each :meth:`forward` and :meth:`backward` call (as
        ``torch.set_num_threads``, but for this layer; it may be changed
        between calls).  None: every core this process may run on, within the
        limits set around it (CPU affinity, cgroup CPU quota,
        ``OMP_NUM_THREADS`` as set in joblib/loky and Dask workers,
        ``threadpoolctl.threadpool_limits``; see
        :func:`fastseq._threads.default_num_threads`), or inside an
        estimator's call (or a :func:`fastseq._threads.limit` block) that
        block's count.  An integer fixes it; negative values count back from
        all cores as in scikit-learn (-1 all, -2 all but one).  Results are
        identical for a fixed thread count.

    Attributes
    ----------
    params : dict of str -> ndarray
        PyTorch ``state_dict`` names and shapes, views into :attr:`flat`:
        ``weight_ih_l{k}[_reverse]`` (G*H, in), ``weight_hh_l{k}[_reverse]``
        (G*H, H), ``bias_ih_l{k}[_reverse]`` (G*H,), ``bias_hh_l{k}[_reverse]``
        (G*H,); G = 1 (rnn), 3 (gru: r, z, n), 4 (lstm: i, f, g, o).
    flat : (P,) ndarray
        All parameters in one vector.
    d_h0, d_c0 : (num_layers*D, B, H) ndarray
        After :meth:`backward`: gradients with respect to the initial states.
    training : bool
        Dropout applies only while True (see :meth:`train`, :meth:`eval`).

    Examples
    --------
    >>> import numpy as np
    >>> from fastseq.nn import Recurrent
    >>> layer = Recurrent("lstm", input_size=3, hidden_size=4, bidirectional=True,
    ...                   random_state=0)
    >>> X = np.random.default_rng(0).normal(size=(2, 5, 3)).astype("float32")
    >>> out, (h_n, c_n) = layer.forward(X, lengths=[5, 2])
    >>> out.shape, h_n.shape
    ((2, 5, 8), (2, 2, 4))
    >>> float(abs(out[1, 2:]).max())             # padded steps are zero
    0.0
    >>> dX, grads = layer.backward(np.ones_like(out))
    >>> dX.shape, grads["weight_hh_l0"].shape
    ((2, 5, 3), (16, 4))
    """

    def __init__(self, cell, input_size, hidden_size, num_layers=1, bidirectional=False,
                 nonlinearity="tanh", bias=True, dropout=0.0, recurrent_dropout=0.0,
                 dtype=DEFAULT_DTYPE, random_state=None, init="pytorch",
                 kernel_initializer=None, recurrent_initializer=None,
                 bias_initializer=None, unit_forget_bias=None, reset_after=True, n_jobs=None):
        self.cell = check_choice(cell, "cell", CELLS)
        self.input_size = check_positive_int(input_size, "input_size")
        self.hidden_size = check_positive_int(hidden_size, "hidden_size")
        self.num_layers = check_positive_int(num_layers, "num_layers")
        self.bidirectional = bool(bidirectional)
        self.nonlinearity = check_choice(nonlinearity, "nonlinearity", NONLINEARITIES)
        self.bias = bool(bias)
        self.dropout = check_fraction(dropout, "dropout")
        self.recurrent_dropout = check_fraction(recurrent_dropout, "recurrent_dropout")
        self.reset_after = bool(reset_after)
        self.n_jobs = check_n_jobs(n_jobs)
        if not self.reset_after and self.cell != "gru":
            raise ValueError(f"reset_after=False is a GRU option, got cell={self.cell!r}")
        self.dtype = resolve_dtype(dtype)
        self.training = True
        self._rng = np.random.default_rng(random_state)
        self.num_directions = 2 if self.bidirectional else 1
        self.num_gates = K.NUM_GATES[self.cell]
        self._layout = self._param_layout()
        self.n_params = layout_size(self._layout)
        self.bind(np.zeros(self.n_params, dtype=self.dtype), copy=False)
        check_choice(init, "init", tuple(INIT_PRESETS))
        preset = INIT_PRESETS[init]
        self.reset_parameters(
            kernel_initializer or preset[0],
            recurrent_initializer or preset[1],
            bias_initializer or preset[2],
            preset[3] if unit_forget_bias is None else bool(unit_forget_bias),
        )
        self._cache = None
        self.d_h0 = self.d_c0 = None

    # ------------------------------------------------------------------ params
    def _suffix(self, k, d):
        return f"_l{k}" + ("_reverse" if d == 1 else "")

    def _layer_input_size(self, k):
        return self.input_size if k == 0 else self.hidden_size * self.num_directions

    def _widest_input(self):
        """The most inputs a step of any layer has (the first layer's, or a
        stacked layer's ``D * H``)."""
        return max(self._layer_input_size(k) for k in range(self.num_layers))

    def _param_layout(self):
        GH, H = self.num_gates * self.hidden_size, self.hidden_size
        layout = []
        for k in range(self.num_layers):
            for d in range(self.num_directions):
                s = self._suffix(k, d)
                layout.append(("weight_ih" + s, (GH, self._layer_input_size(k))))
                layout.append(("weight_hh" + s, (GH, H)))
                if self.bias:
                    layout.append(("bias_ih" + s, (GH,)))
                    layout.append(("bias_hh" + s, (GH,)))
        return layout

    def _views(self, flat):
        return flat_views(self._layout, flat)

    def bind(self, flat, copy=True):
        """Make the parameters views into ``flat`` (P,), e.g. a slice of a model's
        single parameter vector.  With ``copy`` the current values move along."""
        flat = np.asarray(flat)
        if flat.shape != (self.n_params,) or flat.dtype != self.dtype:
            raise ValueError(
                f"flat must be a ({self.n_params},) {self.dtype} array, got {flat.shape} {flat.dtype}"
            )
        if copy:
            flat[...] = self.flat
        self.flat = flat
        self.params = self._views(flat)
        return self

    def reset_parameters(self, kernel_initializer="pytorch", recurrent_initializer="pytorch",
                         bias_initializer="pytorch", unit_forget_bias=False):
        """Draw fresh parameters from the named initialisers (see :mod:`fastseq.init`)."""
        f_in = get_initializer(kernel_initializer, "kernel_initializer")
        f_rec = get_initializer(recurrent_initializer, "recurrent_initializer")
        f_b = get_initializer(bias_initializer, "bias_initializer")
        H, G = self.hidden_size, self.num_gates
        for name, shape in self._layout:
            if name.startswith("weight_ih"):
                value = f_in(shape, self._rng, shape[1], shape[0], H)
            elif name.startswith("weight_hh"):
                value = f_rec(shape, self._rng, H, G * H, H)
            else:
                value = f_b(shape, self._rng, H, G * H, H)
                if unit_forget_bias and self.cell == "lstm":
                    value[H:2 * H] = 1.0 if name.startswith("bias_ih") else 0.0
            self.params[name][...] = value
        return self

    def __getstate__(self):
        # params are views into flat: pickle flat only, rebuild the views on
        # load (pickle would otherwise store independent copies); drop caches
        state = self.__dict__.copy()
        state.pop("params")
        state["_cache"] = None
        state.pop("_plans", None)  # decisions for this process's plan and threads
        state.pop("_kept_arrays", None)   # memory of the training calls (Recurrent._kept)
        state.pop("_bound", None)   # views of flat (Recurrent._bound_weights)
        return state

    def __setstate__(self, state):
        state.setdefault("n_jobs", None)  # pickled before the layer had it
        state["flat"] = writable(state["flat"])  # a memmap (joblib's mmap_mode) is read-only
        self.__dict__.update(state)
        self.params = self._views(self.flat)

    def train(self, mode=True):
        self.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)

    def _weights(self, k, d):
        s, p = self._suffix(k, d), self.params
        if self.bias:
            return p["weight_ih" + s], p["weight_hh" + s], p["bias_ih" + s], p["bias_hh" + s]
        return p["weight_ih" + s], p["weight_hh" + s], None, None

    def _bound_weights(self):
        """:meth:`_weights` of every layer and direction (index ``k * D +
        d``), an empty array standing for no bias: views of the flat
        vector (C-contiguous and writable), looked up once per binding
        (:meth:`bind`) instead of on every call of a small batch."""
        got = self.__dict__.get("_bound")
        if got is None or got[0] is not self.params:
            none = np.empty(0, dtype=self.dtype)
            views = []
            for k in range(self.num_layers):
                for d in range(self.num_directions):
                    w_ih, w_hh, b_ih, b_hh = self._weights(k, d)
                    views.append((w_ih, w_hh, none, none) if b_ih is None else (w_ih, w_hh, b_ih, b_hh))
            got = self._bound = (self.params, tuple(views))
        return got[1]

    # ----------------------------------------------------------------- checks
    def _check_states(self, h0, B):
        if h0 is None:
            return None, None
        L = self.num_layers * self.num_directions
        shape = (L, B, self.hidden_size)
        c0 = None
        if self.cell == "lstm" and h0 is not None:
            if not (isinstance(h0, (tuple, list)) and len(h0) == 2):
                raise TypeError("h0 must be a tuple (h0, c0) for an LSTM, or None")
            h0, c0 = h0
            if c0 is not None:
                c0 = check_state(c0, "c0", shape, self.dtype)
        if h0 is not None:
            h0 = check_state(h0, "h0", shape, self.dtype)
        return h0, c0

    # ---------------------------------------------------------------- forward
    def forward(self, X, lengths=None, h0=None, need_grad=True, need_out=True):
        """Run the layer over a padded batch.

        Parameters
        ----------
        X : (B, T, F) array
            Batch-first input.  Steps at or past a sequence's length are never
            read (they may hold anything, NaN included).
        lengths : (B,) int, optional
            Valid steps per sequence, in ``1..T``; default all T.
        h0 : (num_layers*D, B, H) array, or a tuple (h0, c0) for an LSTM, optional
            Initial states, PyTorch's order; default zeros (also for a None
            member of the LSTM tuple).
        need_grad : bool, default True
            False for inference: the gates are not stored and nothing is kept
            for :meth:`backward` (less memory traffic; ``backward`` then raises).
        need_out : bool, default True
            False when only the final states are wanted (a many-to-one model:
            Keras's ``return_sequences=False``): ``out`` is then None and the
            top layer's states are not copied into batch-first order.  The
            matching :meth:`backward` takes ``d_out=None``.

        Returns
        -------
        out : (B, T, D*H) ndarray, or None when ``need_out`` is False
            Top layer's hidden states, [forward, reverse] concatenated; zero at
            padded steps.
        h_n : (num_layers*D, B, H) ndarray, or a tuple (h_n, c_n) for an LSTM
            Each sequence's state at its own last valid step.
        """
        if lengths is None and h0 is None and not need_grad:
            small = self._small_call(X)
            if small is not None:
                return (small[0] if need_out else None), small[1]
        with limit(self.n_jobs, blas=False):  # the thread count of this call (BLAS: below)
            out, h_n = self._forward(X, lengths, h0, need_grad, need_out)
            return (out if need_out else None), h_n

    def _forward(self, X, lengths, h0, need_grad, need_out=True):
        X = check_real_array(X, "X", ndim=3)
        B, T, F = X.shape
        if B < 1 or T < 1:
            raise ValueError(f"X must have at least one sequence and one time step, got shape {X.shape}")
        if F != self.input_size:
            raise ValueError(f"X has {F} features per step, but the layer expects input_size={self.input_size}")
        self._cache = None  # the last call's state goes now, not after this call has allocated its own
        uniform = True
        if lengths is not None:
            lengths = check_lengths(lengths, B, T)
            uniform = lengths.min() == T
        h0, c0 = self._check_states(h0, B)
        if uniform and not need_grad:
            plan, parts, blas, detail = self._inference_route(B, T)[:4]
            if plan == "fused" or plan == "fused-lingering":
                return self._forward_fused(X, h0, c0, detail, blas, plan == "fused-lingering")
            if plan is not None:
                return self._forward_infer(X, h0, c0, _UNIT_TIERS.get(plan, 0), blas, detail)
        pk = _UniformPacking(B, T) if uniform else Packing(lengths)
        inp = pk.pack(X, self.dtype)
        check_finite(inp, "X", " at valid (unpadded) steps")
        with blas_single_thread():
            return self._forward_packed(pk, inp, h0, c0, T, need_grad, need_out)

    def _inference_plan(self, B, T):
        """The plan of :meth:`_inference_route` (None, ``"fused"``,
        ``"units"``, ``"units-lingering"`` or ``"one"``)."""
        return self._inference_route(B, T)[0]

    def _inference_route(self, B, T):
        """:meth:`_decide_inference` for ``B`` sequences of ``T`` steps, kept
        on the layer for the thread count, the mode, the dropouts, the
        plan's version and the BLAS bounds it was taken under (the Python
        of the decision costs up to 5 us, on every call of a small batch
        otherwise: an LSTM of 32 units, batch 1, 32 steps, 31 -> 26 us),
        with the route's :class:`fastseq._threads.SplitWatch` last (which
        form a unit split's small calls take: :meth:`_small_call`)."""
        key = self._route_key(B, T, get_num_threads())
        plans = self.__dict__.setdefault("_plans", {})
        got = plans.get(key)
        if got is None:
            if len(plans) >= 64:
                plans.clear()
            got = plans[key] = self._decide_inference(B, T) + (SplitWatch(3 if B > 1 else 2),)
        return got

    def _route_key(self, B, T, n):
        """What :meth:`_inference_route` keeps a route under, at ``n`` threads."""
        plan = _plan._current  # (not measured here: a one-thread call never is)
        return (B, T, n, self.training, self.dropout, self.recurrent_dropout,
                None if plan is None else plan.version, PACKED_BLAS_MIN_ROWS.get(), PROJECT_BLAS_MIN_BYTES.get())

    def _small_call(self, X):
        """The inference of a one-layer, one-way layer whose kept route
        (:meth:`_inference_route`) needs no BLAS and is one compiled call
        on this thread (what every small batch-1 call takes; rows
        transposed inside it at a larger batch: an Elman RNN of 32 units,
        4 sequences of 32 steps, 20-24 -> 15-17 us, bench/RESULTS.md,
        "twenty-fifth session"), that call with its projection ahead on
        a pool thread, the fused LSTM's batch slices, or a unit split (its input
        projection in its parts, or ahead on a pool thread when the split
        finds its slot taken; by hidden units, on one thread or by
        sequences, :meth:`_slices_direction`, as the route's
        :class:`fastseq._threads.SplitWatch` finds fastest, each with the
        same bits): the arithmetic of :meth:`_forward_infer` or
        :meth:`_forward_fused`, with none of their generality (a third of
        a 14 us call's Python, 8 us of a 53 us LSTM call at batch 4).
        Rows stay batch-major from ``X`` to the output (the unit split's
        parts take them so: no transposed copy in or out, 3-9% of a call
        at batch 2-4, e.g. an LSTM of 128 units, 128 steps, 812 -> 784
        us; bench/RESULTS.md, "seventeenth session").
        None when ``X`` (a writable C-contiguous array of the layer's
        dtype) or the route is another: then :meth:`forward` runs as
        usual."""
        if (type(X) is not np.ndarray or X.ndim != 3 or X.dtype is not self.dtype
                or not (X.flags.c_contiguous and X.flags.writeable)):
            return None
        B, T, F = X.shape
        if F != self.input_size or self.num_layers != 1 or self.bidirectional:
            return None
        n = call_threads(self.n_jobs)
        plans = self.__dict__.get("_plans")    # (no route is kept for an empty X)
        got = plans and plans.get(self._route_key(B, T, n))
        if not got or got[2]:
            return None
        plan = got[0]
        if plan == "one":
            if got[3][0] not in ("one", "ahead"):
                return None
        elif plan != "fused" and plan != "fused-lingering" and (plan not in _UNIT_TIERS or got[3][0] == "split"):
            return None
        H, dt = self.hidden_size, self.dtype
        # batch-major rows (the fused slices, a unit split's batch_major
        # parts; step-major as well at batch 1): a view of X (only read)
        inp = X.reshape(B * T, F)
        check_finite(inp, "X", " at valid (unpadded) steps")
        zeros = np.zeros((B, H), dtype=dt)
        out = np.empty((B * T, H), dtype=dt)
        h_n = np.empty((1, B, H), dtype=dt)
        c_n = np.empty((1, B, H), dtype=dt) if self.cell == "lstm" else None
        c_n0 = None if c_n is None else c_n[0]
        weights = self._bound_weights()[0]
        self._cache = None
        if plan == "one" and got[3][0] == "one":
            with flush_denormals():
                self._unsplit_batch_major(X, "one", weights, zeros, out, h_n[0], c_n0, False)
        elif plan == "one":
            with limit(n, blas=False), flush_denormals(), unit_split_slot() as free:
                self._unsplit_batch_major(X, "ahead", weights, zeros, out, h_n[0], c_n0, free)
        elif plan[0] == "f":
            with flush_denormals():
                self._fused_direction(inp, weights, zeros, zeros, False, out, 0, h_n[0], c_n0, got[3],
                                      plan == "fused-lingering")
        else:
            watch = got[4]    # (the route's SplitWatch: which form runs, each timed now and then)
            form = watch.form_now()
            t0 = time.perf_counter()
            with limit(n, blas=False), flush_denormals(), unit_split_slot() as free:
                ran = free and form != ONE and (
                    self._units_direction(inp, weights, zeros, zeros, False, out, h_n[0], c_n0,
                                          _UNIT_TIERS[plan] == 2, B > 1) if form == SPLIT
                    else self._slices_direction(inp, weights, zeros, zeros, out, h_n[0], c_n0))
                if not ran:
                    self._unsplit_batch_major(X, got[3][0], weights, zeros, out, h_n[0], c_n0, free and form != ONE)
            if ran or (free and form == ONE):
                watch.record(form, time.perf_counter() - t0)
        return out.reshape(B, T, H), (h_n if c_n is None else (h_n, c_n))

    def _unsplit_batch_major(self, X, mode, weights, zeros, out, h_n, c_n, parallel):
        """:meth:`_direction_unsplit` of the forward direction from zero
        states over the rows of ``X`` (B, T, F) into ``out`` (B*T, H), both
        batch-major: the one-call kernel (``mode`` ``"one"``) transposes
        them inside the call; the others' rows are step-major, transposed
        by numpy in and out (but at batch 1)."""
        B, T, F = X.shape
        if mode == "one":
            self._one_call(X.reshape(B * T, F), None, weights, zeros, zeros, False, out, h_n, c_n, B > 1)
            return
        inp_s, out_s = X.reshape(B * T, F), out
        if B > 1:
            inp_s = np.ascontiguousarray(X.swapaxes(0, 1)).reshape(B * T, F)
            out_s = np.empty_like(out)
        self._direction_unsplit(mode, inp_s, weights, zeros, zeros, False, out_s, h_n, c_n, parallel)
        if B > 1:
            out.reshape(B, T, -1)[...] = out_s.reshape(T, B, -1).swapaxes(0, 1)

    def _one_call(self, inp, xp, weights, h0, c0, reverse, out_h, h_n, c_n, batch_major=False):
        """One direction of one layer in one compiled call on this thread
        (:mod:`fastseq.kernels.infer`): from the input projection ``xp``
        when given, else from ``inp`` with the projection in the call (and
        with ``batch_major``, rows ``b*T + t`` in ``inp`` and ``out_h``);
        ``weights`` as :meth:`_bound_weights` gives them, ``c0``/``c_n``
        an LSTM's (None otherwise)."""
        w_ih, w_hh, b_ih, b_hh = weights
        if self.cell == "lstm":
            if xp is None:
                lstm_infer_x(inp, w_ih, b_ih, b_hh, w_hh, h0, c0, reverse, batch_major, out_h, h_n, c_n)
            else:
                lstm_infer(xp, b_ih, b_hh, w_hh, h0, c0, reverse, out_h, h_n, c_n)
        elif self.cell == "gru":
            if xp is None:
                gru_infer_x(inp, w_ih, b_ih, b_hh, w_hh, h0, reverse, batch_major, out_h, h_n)
            else:
                gru_infer(xp, b_ih, b_hh, w_hh, h0, reverse, out_h, h_n)
        else:
            relu = 1 if self.nonlinearity == "relu" else 0
            if xp is None:
                rnn_infer_x(inp, w_ih, b_ih, b_hh, w_hh, h0, relu, reverse, batch_major, out_h, h_n)
            else:
                rnn_infer(xp, b_ih, b_hh, w_hh, h0, relu, reverse, out_h, h_n)

    def _layer_modes(self, B, T, units=False):
        """How each layer's input projection runs in :meth:`_forward_infer`
        (a tuple, one per layer; part of :meth:`_inference_route`):
        ``"ahead"`` on a pool thread a few steps ahead of the loop
        (:meth:`_run_pipelined`; with more than one thread, from the plan's
        pipeline work, and unless the loop's hidden ``units`` are split,
        from its work a step), ``"split"`` in row blocks across the threads
        before the loop (:func:`fastseq._threads.parallel_matmul`), else
        ``"one"``: in the loop's own compiled call (also for a projection
        whose steps are too small to compute ahead: a loop on one core
        beside it waits for the other core's rows at every step, and a
        split of it before the loop costs more than it moves;
        bench/RESULTS.md, "twentieth session")."""
        N, GH = B * T, self.num_gates * self.hidden_size
        pipe = get_num_threads() > 1 and UNIT_SPLIT_AVAILABLE and T > 1
        modes = []
        for k in range(self.num_layers):
            F = self._layer_input_size(k)
            if pipe and pipelines(N * F * GH):
                modes.append("ahead" if units or pipelines(N * F * GH, B * F * GH) else "one")
            else:
                modes.append("split" if matmul_splits(N, F, GH) else "one")
        return tuple(modes)

    def _decide_inference(self, B, T):
        """How a full-length inference call runs, as ``(plan, parts, blas,
        detail)``: ``detail`` the batch slices of ``"fused"``, each layer's
        projection (:meth:`_layer_modes`) of ``"one"`` and ``"units"``.
        ``plan``: None for the packed path
        (active dropout, the reset-before GRU, and batches the threaded batch
        split pays for), ``"fused"`` (:meth:`_fused_parts`), ``"units"``
        and ``"units-lingering"`` (:meth:`_infer_units` 1 and 2, unless
        :meth:`_batch_over_units` takes a batch split of the fused
        kernel), else ``"one"``: each layer and direction in one
        compiled call on this thread, its input projection computed ahead on
        a second thread when there is one and the projection is large enough
        (:meth:`fastseq._plan.Plan.pipeline`)."""
        if self.training and (self.recurrent_dropout > 0 or (self.dropout > 0 and self.num_layers > 1)):
            return None, 0, False, ()
        if self.cell == "gru" and not self.reset_after:
            return None, 0, False, ()
        tier = self._infer_units(B, T)
        parts, lingering = self._fused_parts(B, T)
        if tier and not (parts > 1 and self._batch_over_units(B)):
            modes = self._layer_modes(B, T, units=True)
            return ("units" if tier == 1 else "units-lingering"), 1, self._kernel_blas(B, B * T, modes), modes
        if parts:
            return ("fused-lingering" if lingering else "fused"), parts, self._kernel_blas(B // parts), \
                self._fused_slices(B, T, parts)
        H = self.hidden_size
        N, GH = B * T, self.num_gates * H
        n = get_num_threads()
        if n > 1 and _plan.current().inference_split(n, B, B * GH * H, N * GH * H):
            return None, 0, False, ()
        modes = self._layer_modes(B, T)
        return "one", 1, self._kernel_blas(B, N, modes), modes

    def _batch_over_units(self, B):
        """Whether an LSTM inference call of ``B`` sequences that
        :meth:`_infer_units` splits by hidden units takes the fused
        kernel's batch split instead, its steps being short
        (:meth:`fastseq._plan.Plan.batch_over_units`: the unit split's
        barrier a step would be a large part of each)."""
        H, F = self.hidden_size, self._widest_input()
        n = get_num_threads()
        return _plan.current().batch_over_units(n, B, B * 4 * H * (H + F), 4 * H * (H + F) * self.dtype.itemsize,
                                                FUSED_MIN_ROWS)

    def _fused_parts(self, B, T):
        """Batch slices (one per thread) of a full-length LSTM inference call
        that runs with its input projection inside the step product
        (:func:`fastseq.kernels.infer.lstm_fused_slice`), 0 for not fused:
        the slices of the planner's batch split
        (:meth:`fastseq._plan.Plan.batch_split`) when
        :meth:`fastseq._plan.Plan.fuse_projection` takes their rows (not
        when the batch stays in one slice and :meth:`_forward_infer` would
        compute the projection on a second thread), as ``(parts,
        lingering)``.  ``lingering``: slices of the batch split on polling
        threads (:meth:`fastseq._plan.Plan.batch_split_lingering`, below
        the plan's split from sleeping threads, and
        :meth:`fastseq._plan.Plan.batch_split_few_rows` for fewer rows a
        thread than a row block), whose whole batch a call that finds a
        pool thread asleep runs in one slice on its own thread (the same
        bits: a row's result does not depend on its slice)."""
        if self.cell != "lstm" or T < 2:
            return 0, False
        H = self.hidden_size
        F = self._widest_input()
        n = get_num_threads()
        plan = _plan.for_threads(n)
        work = B * T * 4 * H * (H + F)
        parts = plan.batch_split(n, B, work) if n > 1 else 1
        pipelined = parts == 1 and n > 1 and UNIT_SPLIT_AVAILABLE and plan.pipeline(n, B * T * F * 4 * H, B * F * 4 * H)
        weight_bytes = 4 * H * (F + H) * self.dtype.itemsize
        if parts == 1 and not pipelined and n > 1 and UNIT_SPLIT_AVAILABLE:
            lingering = plan.batch_split_lingering(n, B, work)
            if lingering > 1 and plan.fuse_projection(B // lingering, FUSED_MIN_ROWS, weight_bytes):
                return lingering, True
            few = plan.batch_split_few_rows(n, B, H, work, weight_bytes) if lingering == 1 else 1
            if few > 1:
                return few, True
        fuse = plan.fuse_projection(B // parts, FUSED_MIN_ROWS, weight_bytes, pipelined)
        return (parts, False) if fuse else (0, False)

    @staticmethod
    def _fused_slices(B, T, parts):
        """The ``parts`` batch slices ``((b0, b1), ...)`` of a fused call over
        a full-length batch of ``B`` sequences of ``T`` steps."""
        return ((0, B),) if parts == 1 else tuple(split_bounds(np.full(B, T, dtype=INDEX_DTYPE), parts))

    def _infer_units(self, B, T):
        """Whether a full-length LSTM or (reset-after) GRU inference call
        splits each layer's hidden units across the threads (1; 2: only
        when every pool thread it needs lingers after a task, 0: never)
        (:func:`fastseq.kernels.infer.lstm_units_part`,
        :func:`fastseq.kernels.infer.gru_units_part`, a barrier a step)
        rather than its batch: when :meth:`fastseq._plan.Plan.infer_units`
        takes the batch and the call's work, and when each part's gate rows
        fill whole strips of the packed product and a projection whose
        weight would reach BLAS (:data:`fastseq.kernels.matmul.PROJECT_BLAS_MIN_BYTES`)
        is one that the one-thread form computes ahead, packed, as the
        parts do (:meth:`_layer_modes`):
        every output then sums as in the one-thread call, so the split
        gives its bits, and a call that finds the split taken by another
        (:func:`fastseq._threads.unit_split_slot`) runs on one thread with
        the same results.  Below the plan's work for a split, a call whose
        work repays a compiled hand-over to a lingering thread
        (:meth:`fastseq._plan.Plan.infer_units_lingering`) splits when the
        threads linger (:func:`fastseq._threads.run_units`), else runs on
        one thread."""
        n = get_num_threads()
        if (self.cell == "rnn" or (self.cell == "gru" and not self.reset_after) or T < 2 or n < 2
                or not UNIT_SPLIT_AVAILABLE):
            return 0
        H, G, isz = self.hidden_size, self.num_gates, self.dtype.itemsize
        F = self._widest_input()
        if any((G * (j1 - j0) * isz) % STRIP_BYTES for j0, j1 in unit_bounds(H, n)) or (G * H * isz) % STRIP_BYTES:
            return 0
        # a projection that project() would send to BLAS: only where the
        # one-thread form computes it ahead (packed, as the parts do)
        modes = self._layer_modes(B, T, units=True)
        if any(G * H * self._layer_input_size(k) * isz >= PROJECT_BLAS_MIN_BYTES.get() and modes[k] != "ahead"
               for k in range(self.num_layers)):
            return 0
        plan, work = _plan.current(), B * T * G * H * (H + F)
        rows = plan.units_max_rows(n, H, G, FUSED_MIN_ROWS, G * H * (H + F) * isz)
        return 1 if plan.infer_units(n, B, H, work, rows) else 2 if plan.infer_units_lingering(
            n, B, H, work, rows) else 0

    def _train_units(self, B, T, mask):
        """Whether an LSTM training pass (forward with gates stored, or
        backward) over ``B`` sequences of up to ``T`` steps splits its hidden
        units across threads: no recurrent dropout, and the sizes of
        :meth:`fastseq._plan.Plan.unit_split`."""
        n = get_num_threads()
        H = self.hidden_size
        return (n > 1 and UNIT_SPLIT_AVAILABLE and mask.shape[0] == 0
                and _plan.current().unit_split(n, H, B, B * T * 4 * H * H, 4 * H * H * self.dtype.itemsize))

    def _forward_infer(self, X, h0, c0, units, blas, modes):
        """Inference of a full-length batch, each layer and direction in one
        compiled call (:mod:`fastseq.kernels.infer`): the arithmetic of the
        packed path without its per-call Python (most of a small call).  With
        ``units`` (an LSTM or GRU, :meth:`_infer_units`) the threads split
        each layer's hidden units (:func:`fastseq.kernels.infer.lstm_units_part`,
        :func:`fastseq.kernels.infer.gru_units_part`).
        Otherwise, with more than one thread and a large enough projection,
        the input projection runs on a pool thread a few steps ahead of the
        time loop (:meth:`_run_pipelined`).  When another call holds the
        slot (:func:`fastseq._threads.unit_split_slot`), the same
        arithmetic runs on this thread (one call, or the two kernels one
        after the other), so results never depend on concurrency.
        ``blas``: whether BLAS may be called (:meth:`_kernel_blas`);
        ``modes``: each layer's projection (:meth:`_layer_modes`)."""
        B, T, F = X.shape
        H, D, dt = self.hidden_size, self.num_directions, self.dtype
        N = B * T
        # a read-only array (a memmap) would compile the kernels again for it
        if B == 1 and X.dtype == dt and X.flags.c_contiguous and X.flags.writeable:
            inp = X.reshape(N, F)  # step-major already: a view (only read)
        else:
            inp = np.empty((T, B, F), dtype=dt)
            inp[...] = X.swapaxes(0, 1)
            inp = inp.reshape(N, F)
        check_finite(inp, "X", " at valid (unpadded) steps")
        L = self.num_layers * D
        lstm = self.cell == "lstm"
        h_n = np.empty((L, B, H), dtype=dt)
        c_n = np.empty((L, B, H), dtype=dt) if lstm else None
        weights = self._bound_weights()
        zeros = np.zeros((B, H), dtype=dt) if h0 is None or (lstm and c0 is None) else None  # (only read)
        # (a call that can neither split nor pipeline takes no slot: 0.5 us)
        slot = unit_split_slot() if units or "ahead" in modes else _NO_SLOT
        with self._kernel_context(blas), slot as free:
            for k in range(self.num_layers):
                out = np.empty((N, D * H), dtype=dt)
                mode = modes[k]
                for d in range(D):
                    idx = k * D + d
                    rev = d == 1
                    h0s = writable(h0[idx]) if h0 is not None else zeros
                    hn, cn, c0s = h_n[idx], None, None
                    if lstm:
                        cn = c_n[idx]
                        c0s = writable(c0[idx]) if c0 is not None else zeros
                    out_h = np.empty((N, H), dtype=dt) if D == 2 else out
                    # (a lingering-only split that finds a pool thread not
                    # lingering runs below, on this thread)
                    if not (units and free and self._units_direction(inp, weights[idx], h0s, c0s, rev, out_h, hn,
                                                                     cn, units == 2)):
                        self._direction_unsplit(mode, inp, weights[idx], h0s, c0s, rev, out_h, hn, cn, free)
                    if D == 2:
                        out[:, d * H:(d + 1) * H] = out_h
                inp = out
        self._cache = None
        # (batch 1: the step-major rows are batch-first already)
        out = inp.reshape(B, T, D * H) if B == 1 else np.ascontiguousarray(inp.reshape(T, B, D * H).swapaxes(0, 1))
        if lstm:
            return out, (h_n, c_n)
        return out, h_n

    def _direction_unsplit(self, mode, inp, weights, h0, c0, reverse, out_h, h_n, c_n, parallel):
        """One direction of one layer of :meth:`_forward_infer` without a
        unit split, from the step-major rows ``inp`` and the layer's
        ``weights`` (:meth:`_bound_weights`), its input projection as
        ``mode`` (:meth:`_layer_modes`) says: ``"ahead"`` on a pool thread
        a few steps ahead of the loop (on this thread, after it, unless
        ``parallel``), ``"split"`` in row blocks across the threads
        before the loop, ``"one"`` in the loop's own compiled call."""
        w_ih, w_hh, b_ih, b_hh = weights
        if mode == "ahead":
            self._run_pipelined(inp, w_ih, b_ih, b_hh, 1 if self.nonlinearity == "relu" else 0, w_hh, h0, c0,
                                reverse, out_h, h_n, c_n, parallel=parallel)
            return
        xp = None if mode != "split" else parallel_matmul(
            inp, w_ih.T, out=self._projection_buffer(inp.shape[0], w_ih.shape[0], False))
        self._one_call(inp, xp, weights, h0, c0, reverse, out_h, h_n, c_n)

    def _units_direction(self, inp, weights, h0, c0, reverse, out_h, h_n, c_n, lingering_only, batch_major=False):
        """One direction of one layer of :meth:`_forward_infer` with its
        hidden units split across the threads (:func:`fastseq._threads.run_units`,
        an LSTM or reset-after GRU; ``c0``/``c_n`` None for a GRU), from
        the step-major rows ``inp`` (with ``batch_major``, rows ``b*T + t``
        in and out) and the layer's ``weights`` (:meth:`_bound_weights`);
        True when it ran (False: with ``lingering_only``, a pool thread
        was not lingering and nothing ran)."""
        w_ih, w_hh, b_ih, b_hh = weights
        H, dt = self.hidden_size, self.dtype
        bias = self._input_bias(b_ih, b_hh)
        if self.cell == "lstm":
            fn = part_address("lstm", dt)
            return run_units(lambda tid, j0, j1, flags: lstm_units_part(
                inp, w_ih, bias, w_hh, h0, c0, reverse, j0, j1, tid, flags, out_h, h_n, c_n, batch_major),
                H, False,   # (blas: no projection reaches it)
                lambda states, descs, own, bounds, flags: lstm_units_native(
                    states, descs, own, bounds, flags, fn, inp, w_ih, bias, w_hh, h0, c0, reverse,
                    out_h, h_n, c_n, batch_major), lingering_only)
        b_hn = self._candidate_bias(b_hh)
        fn = part_address("gru", dt)
        return run_units(lambda tid, j0, j1, flags: gru_units_part(
            inp, w_ih, bias, b_hn, w_hh, h0, reverse, j0, j1, tid, flags, out_h, h_n, batch_major),
            H, False,
            lambda states, descs, own, bounds, flags: gru_units_native(
                states, descs, own, bounds, flags, fn, inp, w_ih, bias, b_hn, w_hh, h0, reverse,
                out_h, h_n, batch_major), lingering_only)

    def _slices_direction(self, inp, weights, h0, c0, out_h, h_n, c_n):
        """:meth:`_units_direction`'s call (one layer, one direction, rows
        batch-major) split by sequences instead of hidden units
        (:func:`fastseq.kernels.infer.lstm_units_slice`,
        :func:`fastseq.kernels.infer.gru_units_slice`: the unit split's
        bits), as compiled tasks on pool threads that linger; True when it
        ran, else False (nothing ran: the threads are roused for the next
        call).  ``c0``/``c_n`` None for a GRU."""
        w_ih, w_hh, b_ih, b_hh = weights
        B, dt = h0.shape[0], self.dtype
        n = min(get_num_threads(), B)
        bias = self._input_bias(b_ih, b_hh)
        flags = np.zeros(n * STRIDE, dtype=np.int64)
        if self.cell == "lstm":
            fn = part_address("lstm-slices", dt)
            return run_native(_slice_bounds(B, n), flags, lambda states, descs, own, bounds, flags: lstm_units_native(
                states, descs, own, bounds, flags, fn, inp, w_ih, bias, w_hh, h0, c0, False, out_h, h_n, c_n, True),
                rouse=True)
        b_hn = self._candidate_bias(b_hh)
        fn = part_address("gru-slices", dt)
        return run_native(_slice_bounds(B, n), flags, lambda states, descs, own, bounds, flags: gru_units_native(
            states, descs, own, bounds, flags, fn, inp, w_ih, bias, b_hn, w_hh, h0, False, out_h, h_n, True),
            rouse=True)

    def _forward_fused(self, X, h0, c0, bounds, blas=True, lingering=False):
        """LSTM inference of a full-length batch with each step's input
        projection inside its recurrent product
        (:func:`fastseq.kernels.infer.lstm_fused_slice`), the batch in the
        slices ``bounds`` (:meth:`_fused_slices`, kept with the route: 5 us
        of Python a call) on as many threads.  Rows stay batch-major from
        ``X`` to the output: nothing is transposed."""
        B, T, F = X.shape
        H, D, dt = self.hidden_size, self.num_directions, self.dtype
        N = B * T
        inp = np.ascontiguousarray(X, dtype=dt)
        if not inp.flags.writeable:  # a read-only array would compile the kernel again for it
            inp = inp.copy()
        inp = inp.reshape(N, F)
        check_finite(inp, "X", " at valid (unpadded) steps")
        L = self.num_layers * D
        h_n = np.empty((L, B, H), dtype=dt)
        c_n = np.empty((L, B, H), dtype=dt)
        zeros = np.zeros((B, H), dtype=dt)
        weights = self._bound_weights()
        with self._kernel_context(blas):
            for k in range(self.num_layers):
                out = np.empty((N, D * H), dtype=dt)
                for d in range(D):
                    idx = k * D + d
                    h0s = writable(h0[idx]) if h0 is not None else zeros
                    c0s = writable(c0[idx]) if c0 is not None else zeros
                    self._fused_direction(inp, weights[idx], h0s, c0s, d == 1, out, d * H, h_n[idx], c_n[idx],
                                          bounds, lingering)
                inp = out
        self._cache = None
        return inp.reshape(B, T, D * H), (h_n, c_n)

    def _fused_direction(self, inp, weights, h0, c0, reverse, out, col0, h_n, c_n, bounds, lingering):
        """One direction of one layer of :meth:`_forward_fused` (columns
        ``col0..col0+H`` of ``out``) from the layer's ``weights``
        (:meth:`_bound_weights`): ``[W_ih | W_hh]``, its packed form and
        the bias in this thread's scratch (one compiled call,
        :func:`fastseq.kernels.infer.fused_weights`), then the batch
        slices ``bounds``, side by side when there are more than one (one
        after the other on this thread while
        :func:`fastseq._threads.cpu_busy`: the same bits)."""
        H, dt = self.hidden_size, self.dtype
        G, K = 4 * H, inp.shape[1] + H
        SW = STRIP_BYTES // dt.itemsize
        w_cat, wp, bias = scratch_arrays("fused", ((G, K), (G // SW, K, SW), (G,)), dt)
        w_ih, w_hh, b_ih, b_hh = weights
        # (w_cat in full only for a slice whose product BLAS takes; the
        # lingering split's fallback runs the whole batch in one slice)
        rows = h0.shape[0] if lingering else max(b1 - b0 for b0, b1 in bounds)
        fused_weights(w_ih, w_hh, b_ih, b_hh, w_cat, wp, bias, rows >= PACKED_BLAS_MIN_ROWS.get())
        args = (inp, w_cat, wp, bias, h0, c0, reverse, out, col0, h_n, c_n)
        if len(bounds) == 1:
            lstm_fused_slice(*args, *bounds[0])
        elif cpu_busy():    # (a thread held off its CPU: the slices one after the other here)
            for b0, b1 in bounds:
                lstm_fused_slice(*args, b0, b1)
        elif not run_native(_slices_array(bounds), np.zeros(len(bounds) * STRIDE, dtype=np.int64),
                            lambda states, descs, own, b, flags: lstm_fused_native(
                                states, descs, own, b, flags, part_address("fused", dt), *args), rouse=lingering):
            if lingering:   # (a pool thread asleep: the whole batch here, the same bits)
                lstm_fused_slice(*args, bounds[0][0], bounds[-1][1])
            else:
                _on_pool(bounds, lambda b0, b1: lstm_fused_slice(*args, b0, b1))

    @staticmethod
    def _kernel_context(blas):
        """What a full-length inference call runs in:
        :func:`fastseq._threads.blas_single_thread` when a BLAS call may come
        (``blas``, :meth:`_kernel_blas`), else only
        :func:`fastseq._fpenv.flush_denormals` (the compiled products call no
        BLAS, and setting BLAS's threads costs a few microseconds, a good
        part of a small call)."""
        return blas_single_thread() if blas else flush_denormals()

    def _kernel_blas(self, step_rows, projection_rows=0, modes=()):
        """Whether a full-length inference call whose step products have
        ``step_rows`` rows and, unless fused, whose input projection has
        ``projection_rows`` rows, each layer's as ``modes`` says
        (:meth:`_layer_modes`), may call BLAS: a step product of
        :data:`fastseq.kernels.matmul.PACKED_BLAS_MIN_ROWS` rows or more, a
        projection whose weight has
        :data:`fastseq.kernels.matmul.PROJECT_BLAS_MIN_BYTES` or more, or
        one split across threads (``"split"``,
        :func:`fastseq._threads.parallel_matmul`; one computed ahead runs
        the packed product, as a unit split's parts do)."""
        if step_rows >= PACKED_BLAS_MIN_ROWS.get():
            return True
        if projection_rows:
            GH, F = self.num_gates * self.hidden_size, self._widest_input()
            return GH * F * self.dtype.itemsize >= PROJECT_BLAS_MIN_BYTES.get() or "split" in modes
        return False

    def _input_bias(self, b_ih, b_hh):
        """The bias added to the input projection: ``b_ih + b_hh``, but for the
        reset-after GRU, whose ``b_hn`` (last third of ``b_hh``) stays inside
        the reset product; empty without a bias (``b_ih`` None or empty)."""
        if b_ih is None or b_ih.shape[0] == 0:
            return np.empty(0, dtype=self.dtype)
        if self.cell == "gru" and self.reset_after:
            bias = b_ih.copy()
            bias[:2 * self.hidden_size] += b_hh[:2 * self.hidden_size]
            return bias
        return b_ih + b_hh

    def _candidate_bias(self, b_hh):
        """The reset-after GRU's ``b_hn`` (last third of ``b_hh``, kept inside
        the reset product), contiguous; zeros without a bias (``b_hh`` None or
        empty)."""
        if b_hh is None or b_hh.shape[0] == 0:
            return np.zeros(self.hidden_size, dtype=self.dtype)
        return np.ascontiguousarray(b_hh[2 * self.hidden_size:])

    def _run_pipelined(self, inp, w_ih, b_ih, b_hh, relu, w_hh, h0s, c0s, reverse, out_h, h_n, c_n,
                       parallel=True):
        """One layer and direction on this thread while a pool thread computes
        its input projection a few steps ahead (:func:`fastseq.kernels.matmul.project_ahead`,
        in run order: the steps reversed for the reverse direction): as a
        compiled task when the thread polls for work
        (:func:`fastseq.kernels.infer_native.lstm_pipelined_native` and its
        kin), else handed over in Python; the same arithmetic either way.
        (Only for large projections: a time loop that reads rows another
        core has just written waits on each cache line, about 0.5 us a
        step at batch 4 and 128 gates, more than a projection of 32
        features costs: bench/RESULTS.md, "fifteenth session".)"""
        B, H = h0s.shape
        T = inp.shape[0] // B
        dt = self.dtype
        x = np.empty((inp.shape[0], w_ih.shape[0]), dtype=dt)
        bias = self._input_bias(b_ih, b_hh)
        run_inp = np.ascontiguousarray(inp.reshape(T, B, -1)[::-1].reshape(inp.shape)) if reverse else inp
        steps = np.full(T, B, dtype=INDEX_DTYPE)
        if parallel:
            fn = part_address("project", dt)
            if self.cell == "lstm":
                def native(states, descs, own, pair, ready):
                    return lstm_pipelined_native(states, descs, own, fn, run_inp, w_ih, bias, steps, x, ready,
                                                 w_hh, h0s, c0s, reverse, out_h, h_n, c_n)
            elif self.cell == "gru":
                b_hn = self._candidate_bias(b_hh)

                def native(states, descs, own, pair, ready):
                    return gru_pipelined_native(states, descs, own, fn, run_inp, w_ih, bias, steps, x, ready,
                                                w_hh, b_hn, h0s, reverse, out_h, h_n)
            else:
                def native(states, descs, own, pair, ready):
                    return rnn_pipelined_native(states, descs, own, fn, run_inp, w_ih, bias, steps, x, ready,
                                                w_hh, h0s, relu, reverse, out_h, h_n)
            if run_native(_PAIR, np.zeros(STRIDE, dtype=np.int64), native):
                return

        def produce(ready):
            project_ahead(run_inp, w_ih, bias, steps, x, ready)
        if self.cell == "lstm":
            def consume(ready):
                lstm_run(x, w_hh, h0s, c0s, reverse, ready, out_h, h_n, c_n)
        elif self.cell == "gru":
            b_hn = self._candidate_bias(b_hh)

            def consume(ready):
                gru_run(x, w_hh, b_hn, h0s, reverse, ready, out_h, h_n)
        else:
            def consume(ready):
                rnn_run(x, w_hh, h0s, relu, reverse, ready, out_h, h_n)
        run_pipelined(produce, consume, parallel)

    def _forward_packed(self, pk, inp, h0, c0, T, need_grad=True, need_out=True):
        H, D, dt = self.hidden_size, self.num_directions, self.dtype
        B = pk.B
        L = self.num_layers * D
        h_n = np.zeros((L, B, H), dtype=dt)
        c_n = np.zeros((L, B, H), dtype=dt) if self.cell == "lstm" else None
        layers = []
        for k in range(self.num_layers):
            drop = None
            if k > 0 and self.dropout > 0 and self.training:
                keep = 1.0 - self.dropout
                drop = (self._rng.random(inp.shape) < keep).astype(dt) / dt.type(keep)
                inp = inp * drop
            dirs = []
            for d in range(D):
                idx = k * D + d
                inp_d = inp if d == 0 else np.ascontiguousarray(inp[pk.rev])
                h0s = pk.sort(h0[idx]) if h0 is not None else np.zeros((B, H), dtype=dt)
                c0s = None
                if self.cell == "lstm":
                    c0s = pk.sort(c0[idx]) if c0 is not None else np.zeros((B, H), dtype=dt)
                if self.recurrent_dropout > 0 and self.training:
                    keep = 1.0 - self.recurrent_dropout
                    mask = (self._rng.random((B, H)) < keep).astype(dt) / dt.type(keep)
                else:
                    mask = np.empty((0, H), dtype=dt)
                state = self._run_direction(k, d, pk, inp_d, h0s, c0s, mask, need_grad)
                out_h = state["out_h"]
                h_n[idx] = pk.unsort(out_h[pk.last], h_n[idx])
                if c_n is not None:
                    c_n[idx] = pk.unsort(state["out_c"][pk.last], c_n[idx])
                dirs.append(state)
            outs = [dirs[0]["out_h"]] + ([dirs[1]["out_h"][pk.rev]] if D == 2 else [])
            layers.append({"drop": drop, "dirs": dirs})
            inp = np.concatenate(outs, axis=1) if D == 2 else outs[0]
        self._cache = {"pk": pk, "layers": layers, "T": T} if need_grad else None
        out = pk.unpack(inp, T) if need_out else None
        if self.cell == "lstm":
            return out, (h_n, c_n)
        return out, h_n

    def _projection_buffer(self, N, M, need_grad):
        """Memory for an (N, M) input projection, read by one direction's
        loop only, kept from call to call: a fresh array of tens of MB took
        its huge pages' faults at every call, 5 ms and up to 40 ms when the
        kernel had to compact memory for them (bench/RESULTS.md, "eleventh
        session").  Without a backward pass the thread's
        (:func:`fastseq._workspace.scratch`); in training the layer's
        (:meth:`_kept`), which the backward pass takes for its gate
        gradients of the same shape: kept, it does not raise the peak
        memory."""
        if need_grad:
            return self._kept("gates_x", (N, M))
        return scratch("input_projection", (N, M), self.dtype)

    def _kept(self, name, shape):
        """An uninitialised array of ``shape`` kept on the layer from one
        training call to the next (:func:`fastseq._workspace.kept`: what a
        forward pass keeps for its backward pass, rewritten by the next
        one; memory still referred to, by a forward pass's state kept
        elsewhere, is never handed out again).  Fresh, such arrays were
        faulted in anew at every call: an LSTM training step at MNIST rows
        spent 15.7 of its 54 ms in the system that way (bench/RESULTS.md,
        "thirteenth session")."""
        return kept(self.__dict__.setdefault("_kept_arrays", {}), name, shape, self.dtype)

    def _run_direction(self, k, d, pk, inp_d, h0s, c0s, mask, need_grad=True):
        """One layer, one direction: input projection, then the time-loop kernel
        (on batch slices in parallel threads when :func:`fastseq._threads.get_num_threads`
        allows and the batch is large enough)."""
        W_ih, W_hh, b_ih, b_hh = self._weights(k, d)
        H, dt = self.hidden_size, self.dtype
        bias = self._input_bias(b_ih, b_hh)
        inp_c, w_ih = np.ascontiguousarray(inp_d), np.ascontiguousarray(W_ih)
        N = pk.N
        work = N * self.num_gates * H * H
        ls = pk.lengths_sorted
        NG = N if need_grad else 0
        w_hh = np.ascontiguousarray(W_hh)  # already contiguous: a view, no copy
        state = {"inp": inp_d, "h0": h0s, "c0": c0s, "mask": mask}
        # without a backward pass the states are read only by the next layer
        # (the buffer of the other parity) and the caller's copy: kept memory
        out_h = self._kept(f"out_h{k}{d}", (N, H)) if need_grad else scratch(f"layer_out{k % 2}{d}", (N, H), dt)
        units = self.cell == "lstm" and NG and self._train_units(pk.B, len(pk.batch_sizes), mask)
        # (packed once for every slice of a split batch, else empty: each packs
        # its own; the reset-before GRU's slices take two weights of their own)
        wp = packed_for_slices(w_hh, pk.B, work) if self.cell != "gru" or self.reset_after else None
        if (not units and (self.cell != "gru" or self.reset_after) and get_num_threads() > 1
                and UNIT_SPLIT_AVAILABLE and len(pk.batch_sizes) > 1 and not splits(pk.B, work)
                and pipelines(N * inp_c.shape[1] * w_ih.shape[0])):
            # one thread runs the loop: a second computes its input ahead
            xp = self._projection_buffer(N, w_ih.shape[0], need_grad)

            def loop(kernel, args):
                with unit_split_slot() as free:
                    run_pipelined(lambda ready: project_ahead(inp_c, w_ih, bias, pk.batch_sizes, xp, ready),
                                  lambda ready: kernel(*args, ready, 0, pk.B), free)
        else:
            xp = parallel_project(inp_c, w_ih, bias, out=self._projection_buffer(N, w_ih.shape[0], need_grad))

            def loop(kernel, args):
                run_sliced(kernel, args + (_NO_READY,), ls, work)
        if self.cell == "gru" and not self.reset_after:
            gates = self._kept(f"gates{k}{d}", (NG, 3 * H))
            run_sliced(gru_rb_forward_slice,
                       (xp, np.ascontiguousarray(W_hh[:2 * H]), np.ascontiguousarray(W_hh[2 * H:]),
                        h0s, pk.batch_sizes, mask, out_h, gates), ls, work)
            state["gates"] = gates
        elif self.cell == "gru":
            b_hn = self._candidate_bias(b_hh)
            gates = self._kept(f"gates{k}{d}", (NG, 4 * H))
            loop(gru_forward_slice, (xp, w_hh, wp, b_hn, h0s, pk.batch_sizes, mask, out_h, gates))
            state["gates"] = gates
        elif self.cell == "lstm":
            out_c = self._kept(f"out_c{k}{d}", (N, H)) if need_grad else scratch(f"layer_cell{d}", (N, H), dt)
            gates = self._kept(f"gates{k}{d}", (NG, 4 * H))
            with unit_split_slot() as free:
                if units and free:
                    run_units(lambda tid, j0, j1, flags: lstm_forward_part(
                        xp, w_hh, h0s, c0s, pk.batch_sizes, j0, j1, tid, flags, out_h, out_c, gates), H)
            if not (units and free):
                loop(lstm_forward_slice, (xp, w_hh, wp, h0s, c0s, pk.batch_sizes, mask, out_h, out_c, gates))
            state["out_c"], state["gates"] = out_c, gates
        else:
            relu = 1 if self.nonlinearity == "relu" else 0
            loop(rnn_forward_slice, (xp, w_hh, wp, h0s, pk.batch_sizes, mask, relu, out_h))
        state["out_h"] = out_h
        return state

    __call__ = forward

    # --------------------------------------------------------------- backward
    def backward(self, d_out, d_h_n=None, d_c_n=None, out=None, need_input_grad=True):
        """Backpropagate through the last :meth:`forward`.

        Parameters
        ----------
        d_out : (B, T, D*H) array, or None
            Gradient of the loss with respect to ``out``; padded steps are
            ignored.  None for zero (a loss on the final states alone, after
            ``forward(..., need_out=False)``).
        d_h_n, d_c_n : (num_layers*D, B, H) array, optional
            Gradients with respect to ``h_n`` and (LSTM) ``c_n``; default zero.
        out : (P,) array, optional
            Flat gradient vector to fill (overwritten, not accumulated);
            a new one by default.
        need_input_grad : bool, default True
            False when nothing needs ``dX`` (raw features into the first
            layer): its matrix product is skipped and ``dX`` is None.

        Returns
        -------
        dX : (B, T, F) ndarray or None
            Gradient with respect to ``X`` (zero at padded steps); None when
            ``need_input_grad`` is False.
        grads : dict of str -> ndarray
            Keyed and shaped like :attr:`params`, views into one flat vector
            (``out`` when given).  Gradients with respect to the initial states
            are left in :attr:`d_h0` and :attr:`d_c0`.
        """
        with limit(self.n_jobs, blas=False):  # the thread count of this call (BLAS: below)
            return self._backward(d_out, d_h_n, d_c_n, out, need_input_grad)

    def _backward(self, d_out, d_h_n, d_c_n, out, need_input_grad):
        if self._cache is None:
            raise RuntimeError("backward() needs a forward() with need_grad=True first")
        cache = self._cache
        pk, T = cache["pk"], cache["T"]
        H, D, dt = self.hidden_size, self.num_directions, self.dtype
        B = pk.B
        L = self.num_layers * D
        if d_out is None:  # zeros (calloc'd: pages the kernel reads stay unwritten)
            d_layer = np.zeros((pk.N, D * H), dtype=dt)
        else:
            d_out = check_real_array(d_out, "d_out", ndim=3)
            if d_out.shape != (B, T, D * H):
                raise ValueError(f"d_out must have shape {(B, T, D * H)} (like out), got {d_out.shape}")
            d_layer = pk.pack(d_out, dt)
            check_finite(d_layer, "d_out", " at valid (unpadded) steps")
        shape = (L, B, H)
        d_h_n = None if d_h_n is None else check_state(d_h_n, "d_h_n", shape, dt)
        if d_c_n is not None:
            if self.cell != "lstm":
                raise ValueError("d_c_n is only defined for cell='lstm'")
            d_c_n = check_state(d_c_n, "d_c_n", shape, dt)
        if out is None:
            flat = np.zeros(self.n_params, dtype=dt)
        else:
            flat = out
            if not (isinstance(flat, np.ndarray) and flat.shape == (self.n_params,) and flat.dtype == dt):
                raise ValueError(f"out must be a ({self.n_params},) {dt} array")
        with blas_single_thread():
            grads = self._views(flat)
            self.d_h0 = np.zeros(shape, dtype=dt)
            self.d_c0 = np.zeros(shape, dtype=dt) if self.cell == "lstm" else None
            for k in range(self.num_layers - 1, -1, -1):
                layer = cache["layers"][k]
                want_dx = k > 0 or need_input_grad
                d_inp = np.zeros((pk.N, self._layer_input_size(k)), dtype=dt) if want_dx else None
                for d in range(D):
                    idx = k * D + d
                    dd = d_layer[:, d * H:(d + 1) * H]
                    dd = np.ascontiguousarray(dd[pk.rev] if d == 1 else dd)
                    dh = pk.sort(d_h_n[idx]) if d_h_n is not None else np.zeros((B, H), dtype=dt)
                    dc = None
                    if self.cell == "lstm":
                        dc = pk.sort(d_c_n[idx]) if d_c_n is not None else np.zeros((B, H), dtype=dt)
                    dx = self._backward_direction(k, d, pk, layer["dirs"][d], dd, dh, dc, grads, want_dx)
                    if want_dx:
                        d_inp += dx[pk.rev] if d == 1 else dx
                    pk.unsort(dh, self.d_h0[idx])
                    if dc is not None:
                        pk.unsort(dc, self.d_c0[idx])
                if layer["drop"] is not None and want_dx:
                    d_inp *= layer["drop"]
                d_layer = d_inp
            return (pk.unpack(d_layer, T) if need_input_grad else None), grads

    def _backward_direction(self, k, d, pk, st, dd, dh, dc, grads, want_dx=True):
        """One layer, one direction: the time-loop kernel, then weight gradients
        as matrix products over all packed rows.  Returns the input gradient."""
        W_ih, W_hh, _, _ = self._weights(k, d)
        s = self._suffix(k, d)
        N, H, dt = pk.N, self.hidden_size, self.dtype
        GH = self.num_gates * H
        mask = st["mask"]
        dgx = self._kept("gates_x", (N, GH))   # (the forward projection's memory)
        w_hh_t = _transposed(W_hh)
        work = N * self.num_gates * H * H
        ls = pk.lengths_sorted
        if self.cell == "gru" and not self.reset_after:
            return self._backward_reset_before(k, d, pk, st, dd, dh, grads, want_dx)
        inp = st["inp"]
        # (packed once for every slice of a split batch, else empty: each packs its own)
        wp = packed_for_slices(w_hh_t, pk.B, work)
        # the backward time loop of this cell: kernel(*args, progress, b0, b1)
        if self.cell == "lstm":
            kernel, args = lstm_backward_slice, (dd, w_hh_t, wp, st["c0"], st["out_c"], st["gates"],
                                                 pk.batch_sizes, mask, dh, dc, dgx)
        elif self.cell == "gru":
            # dgh (recurrent side) equals dgx but for the n-third, dn * r: formed
            # in place in dgx after its input-side uses (no (N, H) array)
            kernel, args = gru_backward_slice, (dd, w_hh_t, wp, st["h0"], st["out_h"], st["gates"],
                                                pk.batch_sizes, mask, dh, dgx, np.empty((0, H), dtype=dt))
        else:
            kernel, args = rnn_backward_slice, (dd, w_hh_t, wp, st["out_h"], pk.batch_sizes, mask,
                                                1 if self.nonlinearity == "relu" else 0, dh, dgx)
        units = self.cell == "lstm" and self._train_units(pk.B, len(pk.batch_sizes), mask)
        if (PIPELINE_BACKWARD and not units and get_num_threads() > 1 and UNIT_SPLIT_AVAILABLE
                and len(pk.batch_sizes) > 1 and not splits(pk.B, work)
                and pipelines(N * GH * (inp.shape[1] + H))):
            # the loop on one thread, the weight gradients behind it on another
            no_bias = np.empty(0, dtype=dt)
            d_inp = np.empty((N if want_dx else 0, inp.shape[1]), dtype=dt)
            with unit_split_slot() as free:
                run_pipelined(
                    lambda progress: kernel(*args, progress, 0, pk.B),
                    lambda progress: weight_grads_behind(
                        dgx, np.ascontiguousarray(inp), np.ascontiguousarray(W_ih), st["h0"], st["out_h"],
                        st.get("gates", dgx), pk.batch_sizes, mask, self.cell == "gru", progress,
                        grads["weight_ih" + s], grads.get("bias_ih" + s, no_bias),
                        grads["weight_hh" + s], grads.get("bias_hh" + s, no_bias), d_inp),
                    free)
            return d_inp if want_dx else None
        with unit_split_slot() as free:
            if units and free:
                run_units(lambda tid, j0, j1, flags: lstm_backward_part(
                    dd, w_hh_t, st["c0"], st["out_c"], st["gates"], pk.batch_sizes, j0, j1, tid,
                    flags, dh, dc, dgx), H)
        if not (units and free):
            run_sliced(kernel, args + (_NO_READY,), ls, work)
        dgh = None if self.cell == "gru" else dgx
        B = pk.B
        F = inp.shape[1]
        # RNN, LSTM: both weight gradients as one product, dgates.T @ [inputs
        # | h_prev | 1] (the tall product; BLAS runs a product of few columns
        # far below its rate), into buffers kept from call to call (fresh ones
        # cost their page faults: with them the one product lost to two at
        # MNIST rows; python -m bench.handover, part 3)
        fused = dgh is not None
        if fused:
            db_ih = grads["bias_ih" + s] if self.bias else None
            dests = ((grads["weight_ih" + s], 0, F), (grads["weight_hh" + s], F, F + H))
            # (h_prev in place, the layer's outputs, without a recurrent
            # dropout mask)
            if not (mask.shape[0] == 0
                    and _cat_grads(dgx, inp, st["out_h"], st["h0"], pk.batch_sizes, db_ih, dests)):
                def fill(xt):   # [inputs | h_prev], transposed
                    parallel_transpose(np.ascontiguousarray(inp), xt)
                    self._h_prev_transposed(pk, st, mask, xt, F)
                _gate_grads(dgx, F + H, fill, db_ih, "wgrad", dests)
        else:
            _input_grads(dgx, inp, grads["weight_ih" + s], grads["bias_ih" + s] if self.bias else None)
        d_inp = _backward_product(dgx, W_ih, name="dx") if want_dx else None
        dW, db = grads["weight_hh" + s], grads.get("bias_hh" + s)
        if self.bias:  # every gate's bias gradient but the GRU's b_hn is b_ih's
            db[...] = grads["bias_ih" + s]
        if fused:
            return d_inp
        if dgh is None:  # GRU: dgh = dgx with its n-third times r (dgx is done with), b_hn's sums
            _reset_scaled(dgx, st["gates"], H, db[2 * H:] if self.bias else np.empty(0, dtype=dt))
            dgh = dgx
        if mask.shape[0] == 0 and _cat_grads(dgh, np.empty((N, 0), dtype=dt), st["out_h"], st["h0"], pk.batch_sizes,
                                             None, ((dW, 0, H),)):
            return d_inp    # (h_prev read in place, full or ragged batch: no gathered copy, N x H less memory)
        if mask.shape[0] == 0 and getattr(pk, "uniform", False) and not st["h0"].any():
            # h_prev of rows B..N-1 is out_h[:N-B] (the first step's add
            # nothing from a zero state): no gathered copy
            _product_grads(st["out_h"][:N - B], dgh[B:], dW)
        else:
            _product_grads(self._h_prev(pk, st, mask, np.empty((N, H), dtype=dt)), dgh, dW)
        return d_inp

    @staticmethod
    def _h_prev(pk, st, mask, out):
        """``out`` (N, H) = the recurrent input of every packed row: ``h0``
        for the first step's B rows, the previous step's output for the
        others, times the recurrent dropout mask when there is one."""
        B, N = pk.B, pk.N
        out[:B] = st["h0"]
        if getattr(pk, "uniform", False):
            parallel_copy(out[B:], st["out_h"][:N - B])
        else:
            out[B:] = st["out_h"][pk.prev]
        if mask.shape[0]:
            out *= mask[pk.row_b]
        return out

    def _h_prev_transposed(self, pk, st, mask, xt, row0):
        """:meth:`_h_prev` transposed into rows ``row0..row0+H`` of ``xt``
        (K, N): from ``h0`` and the outputs in place for a batch of full
        lengths without a recurrent dropout mask, else through
        :meth:`_h_prev`'s (N, H) rows."""
        B, N = pk.B, pk.N
        if mask.shape[0] == 0 and getattr(pk, "uniform", False):
            parallel_transpose(np.ascontiguousarray(st["h0"]), xt, row0, 0)
            parallel_transpose(st["out_h"][:N - B], xt, row0, B)
        else:
            h_prev = self._h_prev(pk, st, mask, scratch("h_prev_rows", (N, self.hidden_size), self.dtype))
            parallel_transpose(h_prev, xt, row0, 0)

    def _backward_reset_before(self, k, d, pk, st, dd, dh, grads, want_dx):
        """:meth:`_backward_direction` of the reset-before GRU: the candidate's
        recurrent product acts on ``u = r * (m * h_prev)``, not on the state."""
        W_ih, W_hh, _, _ = self._weights(k, d)
        s = self._suffix(k, d)
        N, H, dt = pk.N, self.hidden_size, self.dtype
        mask = st["mask"]
        dgx = self._kept("gates_x", (N, 3 * H))
        run_sliced(gru_rb_backward_slice,
                   (dd, _transposed(W_hh[:2 * H]), _transposed(W_hh[2 * H:]),
                    st["h0"], st["out_h"], st["gates"], pk.batch_sizes, mask, dh, dgx),
                   pk.lengths_sorted, N * 3 * H * H)
        _input_grads(dgx, st["inp"], grads["weight_ih" + s], grads["bias_ih" + s] if self.bias else None)
        h_prev = self._h_prev(pk, st, mask, np.empty((N, H), dtype=dt))
        dW = grads["weight_hh" + s]
        parallel_matmul(dgx[:, :2 * H].T, h_prev, out=dW[:2 * H])
        parallel_matmul(dgx[:, 2 * H:].T, st["gates"][:, :H] * h_prev, out=dW[2 * H:])
        if self.bias:
            grads["bias_hh" + s][...] = grads["bias_ih" + s]
        return _backward_product(dgx, W_ih, name="dx") if want_dx else None

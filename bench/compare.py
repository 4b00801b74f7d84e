"""fastseq against PyTorch (and ONNX Runtime for inference), side by side.

Run from the repository root::

    python -m bench.compare                 # full comparison (a few minutes on 2 cores)
    python -m bench.compare --quick         # a small subset (smoke test, ~1-2 min)
    python -m bench.compare --only course --epochs 1   # the MNIST-rows section alone
    python bench/compare.py --threads 1 --only lstm --json out.json --png out.png

Every case is float32, both libraries limited to the same number of threads
(``--threads``, default 2: ``torch.set_num_threads`` for torch, threadpoolctl
plus :func:`fastseq._threads.limit` for fastseq and the BLAS it calls, and
``intra_op_num_threads`` for ONNX Runtime).  Weights are copied from the torch
module with :func:`fastseq.interop.from_torch`.  fastseq and torch are timed
alternately (fastseq, torch, fastseq, ...) after a warm-up and the median of
the repeats is reported, so that a load change hits both alike and the
*ratios* stay meaningful on a shared machine.  ONNX Runtime is timed in turn
with fastseq again (a second fastseq timing, ``fastseq ms (vs ORT)``, the
one its ORT ratio uses), each ORT sample in a fresh session closed before
fastseq's sample: its spin-waiting worker threads (ORT's default) otherwise
slow down whatever runs next in the process (:func:`time_against_ort`).

Modes per case
--------------
``infer``  forward only: torch under ``torch.inference_mode()``, fastseq with
           ``layer.eval()`` and ``forward(..., need_grad=False)`` when the layer
           has it, ORT on the torch model exported with ``torch.onnx.export``.
``train``  forward, loss ``sum(out * G)`` for a fixed random ``G`` (so
           ``d_out = G``), backward, global-norm clipping (max norm 1) and one
           Adam step; the input needs no gradient in either library.

GFLOP/s count only the matrix products (2 G H (I + H) per row forward, three
times that for a training step) and are compared with this machine's float32
matrix-multiply peak, measured at start-up (the best of numpy's BLAS, torch
and fastseq's own projection product on 2048^3 and 4096^3 products at the
same thread count; ``--matmul-size``: where a BLAS does not know the CPU,
OpenBLAS 0.3.30's Haswell kernels on a znver5, fastseq's 512-bit product
is the machine's fastest, and a peak read from the BLAS alone would put the
matrix-bound cases above 100% of it).
How much the threads add is measured at the start and the end of the run
(:func:`thread_speedup`: a compute-bound kernel on every thread against
one; close to the thread count on free cores, less where the host shares
them) and reported with the summary.
Peak memory is measured in a fresh subprocess per case and engine (peak RSS
of one training step above the RSS before it, after a warm-up on a smaller
batch), for the training cases.
Cold start runs ``bench.compare --_cold`` twice in fresh interpreters sharing
an initially empty ``NUMBA_CACHE_DIR``.

Groups of cases
---------------
``latency``  B = 1, 4, 16, H = 32-256, T = 32 and 128 (the batch-1 ones are
             also summarised on their own: ``batch-1``, with the decoder's).
``course``   the course's systems: ``small-train``, ``mnist-rows`` and
             ``weather`` (layer calls at their sizes), and the MNIST-rows
             system end to end (``course/mnist/*``: estimator ``fit`` against
             a torch training loop, seconds per epoch and test accuracy, each
             engine in a fresh process at its default threads, torch also
             with glibc keeping its freed memory; see :mod:`bench.course`).
``matrix``   large B, I and H: bound by the matrix products.
``long``     T = 1500 (B = 8, F = 6, H = 64), a classifier-like training step
             (the loss on the last step only: ``d_out`` is zero before it) and
             inference, with Keras's initialisation (Glorot input weights,
             orthogonal recurrent blocks, zero biases, LSTM forget bias 1)
             and inputs scaled per cell (``x_scale``) so that the gradient
             fades through the denormal range part of the way back: the row
             gives the share of steps whose input gradient (torch's, no
             flush) holds a denormal.  torch is timed twice, as usual and
             with ``torch.set_flush_denormal(True)`` (``torch_ftz`` columns;
             flush-to-zero and denormals-are-zero on the calling thread, the
             previous state put back after each call).
``decoder``  greedy attention decoding (torch: a hand-written loop).

The summary gives, per group, the geometric mean and the worst case of every
ratio (inference, training step, epoch) against torch and, for inference,
against ONNX Runtime, then the same over all cases, the count of cases below
1.0x, and the project's targets with their measured values.

Output files: ``bench/results-<cpu>.json``, ``.md`` and ``.png``, where
``<cpu>`` is LLVM's name for the host CPU (``znver4``, ``skylake-avx512``...):
runs on different kinds of CPU land side by side instead of overwriting each
other (``bench/RESULTS.md`` keeps one table per CPU kind).  A partial run
(``--quick`` or ``--only``) writes ``bench/results-<cpu>-partial.*`` so that
it never replaces a full run's files.  The Markdown starts with a
``CPU: <model> (<llvm name>, <widest vector ISA>), <n> threads`` line.
"""

import argparse
import gc
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field

if __package__ in (None, ""):  # python bench/compare.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np

from bench.course import CELLS as COURSE_CELLS
from bench.course import TARGET_ACC_DIFF, TARGET_SPEEDUP, course_table, run_course

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GATES = {"rnn": 1, "gru": 3, "lstm": 4}
TORCH_PATH = {"lstm": "oneDNN", "gru": "native", "rnn": "native"}


# --------------------------------------------------------------------- cases
@dataclass
class Case:
    name: str
    group: str
    cell: str
    B: int
    T: int
    I: int
    H: int
    modes: tuple = ("infer", "train")
    memory: bool = False
    extra: dict = field(default_factory=dict)

    def flops(self, mode):
        """Matrix-product flops of one call (forward, or a training step)."""
        f = 2.0 * GATES[self.cell] * self.H * (self.I + self.H) * self.B * self.T
        return f if mode == "infer" else 3.0 * f


#: long sequences: Keras initialisation and input scales under which the
#: gradient of a last-step loss fades into denormals part of the way back
#: over 1500 steps (share of steps with a denormal input gradient, torch,
#: no flush: RNN 32%, LSTM 18%, GRU 5%, reported in each row; with
#: PyTorch's initialisation 3% for each cell, the gradient exactly zero
#: after 200-250 steps)
LONG_X_SCALE = {"rnn": 0.3, "lstm": 2.0, "gru": 1.0}


def all_cases():
    cases = []
    for cell in ("rnn", "lstm", "gru"):
        for B in (1, 4, 16):
            for H in (32, 64, 128, 256):
                for T in (32, 128):
                    cases.append(Case(f"latency/{cell}/B{B}/H{H}/T{T}", "latency", cell, B, T, H, H))
    cases.append(Case("small-train/gru/B32/T64/I32/H64", "small-train", "gru", 32, 64, 32, 64, memory=True))
    for cell in ("rnn", "lstm", "gru"):
        cases.append(Case(f"mnist-rows/{cell}/B128/T28/I28/H256", "mnist-rows", cell, 128, 28, 28, 256, memory=True))
    for cell in ("rnn", "lstm", "gru"):
        cases.append(Case(f"weather/{cell}/B1024/T48/I5/H64", "weather", cell, 1024, 48, 5, 64, memory=True))
    cases.append(Case("matrix/lstm/B64/T50/I500/H500", "matrix", "lstm", 64, 50, 500, 500, memory=True))
    cases.append(Case("matrix/lstm/B64/T25/I1024/H1024", "matrix", "lstm", 64, 25, 1024, 1024, memory=True))
    for B in (1, 16):
        for S in (32, 128):
            for H in (128, 256):
                cases.append(Case(f"decoder/gru/B{B}/S{S}/H{H}", "decoder", "gru", B, 32, H, H,
                                  modes=("infer",), extra={"S": S}))
    for cell in ("rnn", "lstm", "gru"):
        cases.append(Case(f"long/{cell}/B8/T1500/F6/H64", "long", cell, 8, 1500, 6, 64,
                          extra={"init": "keras", "x_scale": LONG_X_SCALE[cell], "grad": "last",
                                 "torch_ftz": True}))
    return cases


QUICK = {
    "latency/lstm/B1/H64/T32", "latency/gru/B1/H64/T32", "latency/rnn/B1/H64/T32",
    "latency/lstm/B16/H128/T32", "small-train/gru/B32/T64/I32/H64",
    "mnist-rows/lstm/B128/T28/I28/H256", "weather/gru/B1024/T48/I5/H64",
    "long/lstm/B8/T1500/F6/H64",
}


# ------------------------------------------------------------------ engines
def make_torch(case, seed=0):
    import torch

    torch.manual_seed(seed)
    cls = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[case.cell]
    module = cls(case.I, case.H, batch_first=True).float()
    if case.extra.get("init") == "keras":
        keras_init(module, case.cell)
    return module


def keras_init(module, cell):
    """Keras's initialisation in place: glorot_uniform input weights,
    orthogonal recurrent weights (each gate's block), zero biases, LSTM
    forget-gate bias 1."""
    import torch

    H = module.hidden_size
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.startswith("weight_ih"):
                torch.nn.init.xavier_uniform_(p)
            elif name.startswith("weight_hh"):
                for g in range(GATES[cell]):
                    torch.nn.init.orthogonal_(p[g * H:(g + 1) * H])
            else:
                p.zero_()
                if cell == "lstm" and name.startswith("bias_ih"):
                    p[H:2 * H] = 1.0  # gate order i, f, g, o


class FastseqTrainer:
    """fastseq training step: forward, backward, clip_grad_norm, adam_update."""

    def __init__(self, layer, lr=1e-3):
        from fastseq import kernels as K

        self.K, self.layer, self.lr = K, layer, lr
        self.grad = np.zeros_like(layer.flat)
        self.m = np.zeros_like(layer.flat)
        self.v = np.zeros_like(layer.flat)
        self.step_count = 0
        self.input_grad = _accepts(layer.backward, "need_input_grad")

    def step(self, X, G):
        layer = self.layer
        layer.forward(X)
        if self.input_grad:
            layer.backward(G, out=self.grad, need_input_grad=False)
        else:
            layer.backward(G, out=self.grad)
        self.K.clip_grad_norm(self.grad, 1.0)
        self.step_count += 1
        self.K.adam_update(layer.flat, self.grad, self.m, self.v, self.step_count,
                           self.lr, 0.9, 0.999, 1e-8, 0.0)


def _accepts(fn, name):
    import inspect

    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


class TorchTrainer:
    def __init__(self, module, lr=1e-3):
        import torch

        self.torch, self.module = torch, module
        self.params = list(module.parameters())
        self.opt = torch.optim.Adam(self.params, lr=lr)

    def step(self, X, G):
        out, _ = self.module(X)
        loss = (out * G).sum()
        loss.backward()
        self.torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


_ONNX_CACHE = {}


def make_ort(case, module, threads):
    """ONNX Runtime session of ``module`` (exported once per cell and size)."""
    import io
    import warnings

    import torch

    key = (case.cell, case.I, case.H)
    if key not in _ONNX_CACHE:
        buf = io.BytesIO()
        x = torch.zeros(1, 3, case.I)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (x,), buf, dynamo=False, input_names=["x"],
                              output_names=["out", "h_n"] if case.cell != "lstm" else ["out", "h_n", "c_n"],
                              dynamic_axes={"x": {0: "B", 1: "T"}, "out": {0: "B", 1: "T"}})
        _ONNX_CACHE[key] = buf.getvalue()
    return ort_session(_ONNX_CACHE[key], threads)


def ort_session(model_bytes, threads):
    """An ONNX Runtime CPU session of a serialised model: ``threads`` intra-op
    threads, one inter-op, sequential execution, every graph optimisation."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])


# ----------------------------------------------------------------- timing
def _calibrate(fn, min_time):
    """How many calls of ``fn`` take about ``min_time`` seconds (1 for 0),
    from the speed of consecutive calls: batches of 1, 4, 16, ... calls until
    one takes an eighth of ``min_time`` (and at least two batches), at the
    fastest batch's rate.  The first calls after :func:`time_alternating`'s
    pause are slow for every engine (the vCPUs wake: 300-470 us for calls of
    20-50 us, the next ones 1.5-2x), so one call alone, as this used to
    time, made a small call's samples a few dozen calls of the ramp back
    from idle (26-107 calls where 20 ms holds 600-1,000; ``bench/RESULTS.md``,
    "twenty-fourth session")."""
    if min_time <= 0:
        return 1
    n, batches, per = 1, 0, float("inf")
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        dt = time.perf_counter() - t0
        batches += 1
        per = min(per, dt / n)
        if (dt >= min_time / 8 and batches >= 2) or n >= 1 << 16:
            return max(1, round(min_time / max(per, 1e-7)))
        if dt < min_time / 8:
            n *= 4


def time_alternating(fns, repeats, warmup=2, min_time=0.02, pause=0.02, refill=True):
    """Median seconds per call of each of ``fns`` (a dict), timed in turn.

    Each sample runs one engine ``inner`` times (calibrated to about
    ``min_time``) after an untimed ``pause`` and one untimed call.  The pause
    lets the worker threads of the previous engine go idle (torch's OpenMP
    threads spin about 9 ms after each call here, measured as CPU time used
    during a sleep; on this machine's two hardware threads of one core a
    spinning thread halves the other's speed); the untimed call refills the
    caches the other engine evicted (``refill=False`` skips it, for calls
    whose data do not fit in cache anyway).  Both engines get the same
    treatment.  The warm-up calls and the calibrating call of each engine
    come after the same pause: fastseq times some of its split calls, and
    one whose thread waits on another engine's spinning threads twice in a
    row runs its next calls on one thread for a while
    (:func:`fastseq._threads.cpu_busy`).
    """
    for _ in range(warmup):
        for fn in fns.values():
            time.sleep(pause)
            fn()
    inner = {}
    for k, fn in fns.items():
        time.sleep(pause)
        inner[k] = _calibrate(fn, min_time)
    samples = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            n = inner[k]
            time.sleep(pause)
            if refill:
                fn()
            samples[k].append(_per_call(fn, n))
    return {k: statistics.median(v) for k, v in samples.items()}


def _per_call(fn, n):
    """Seconds per call of ``n`` calls of ``fn`` in a row."""
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def time_against_ort(fs_fn, open_session, feeds, repeats, warmup=2, min_time=0.02, pause=0.02):
    """Median seconds per call of fastseq (``fs_fn``) and of ONNX Runtime,
    timed in turn as :func:`time_alternating` does, each ORT sample in a
    session of its own (``open_session()``, warmed by ``warmup`` untimed
    runs, closed before fastseq's sample): ORT's worker threads spin-wait
    (its default, kept: it is ORT's fastest setting) and, as long as a
    session lives, took a core from whichever engine ran next (fastseq LSTM
    B16/H256/T128 inference 19.6 ms alone, 27-41 ms timed in turn with a
    live session, even with 0.5 s pauses).  Timing ORT after fastseq instead
    (as this benchmark did until the twenty-sixth session) put a load
    change between the two: fastseq's LSTM B16/H128/T32 took 0.734 ms in a
    full run against ORT's 0.465 timed seconds later, and 0.40-0.43 against
    0.43-0.44 in two runs of that case alone."""
    def in_a_session(measure):
        """``measure(run)`` in a fresh session, warmed, after the pause;
        the session is closed when this returns."""
        sess = open_session()
        for _ in range(warmup):
            sess.run(None, feeds)
        time.sleep(pause)
        return measure(lambda: sess.run(None, feeds))

    n_ort = in_a_session(lambda run: _calibrate(run, min_time))
    for _ in range(warmup):
        time.sleep(pause)
        fs_fn()
    time.sleep(pause)
    n_fs = _calibrate(fs_fn, min_time)
    samples = {"fastseq": [], "ort": []}
    for _ in range(repeats):
        samples["ort"].append(in_a_session(lambda run: _per_call(run, n_ort)))
        time.sleep(pause)
        fs_fn()
        samples["fastseq"].append(_per_call(fs_fn, n_fs))
    return {k: statistics.median(v) for k, v in samples.items()}


def thread_speedup(threads, seconds=0.3):
    """How much faster ``threads`` threads run a compute-bound kernel than
    one: fastseq's packed step product (64 x 256 rows into 1,024 outputs,
    within each core's L2), each thread on its own arrays, the same number
    of calls per thread; ``threads`` for cores of their own, less where
    the host gives the vCPUs less (another guest on the same cores, or
    two vCPUs on one core's hardware threads). Measured at the start and
    the end of a run, it says the state that run's two-thread figures
    were taken in."""
    import threading

    from fastseq.kernels.matmul import pack_weight, packed_matmul

    rng = np.random.default_rng(0)
    data = []
    for _ in range(threads):
        a = rng.standard_normal((64, 256), dtype=np.float32)
        w = rng.standard_normal((1024, 256), dtype=np.float32)
        data.append((a, w, pack_weight(w), np.empty((64, 1024), np.float32)))
    a, w, wp, out = data[0]
    packed_matmul(a, w, wp, out)
    t0 = time.perf_counter()
    packed_matmul(a, w, wp, out)
    calls = max(10, int(seconds / max(time.perf_counter() - t0, 1e-7)))

    def run(k):
        a, w, wp, out = data[k]
        for _ in range(calls):
            packed_matmul(a, w, wp, out)
    best_one = best_all = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        run(0)
        best_one = min(best_one, time.perf_counter() - t0)
        ts = [threading.Thread(target=run, args=(k,)) for k in range(threads)]
        t0 = time.perf_counter()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        best_all = min(best_all, time.perf_counter() - t0)
    return threads * best_one / best_all


def matmul_peak(threads, sizes=(2048, 4096), repeats=5):
    """float32 GFLOP/s of n^3 matrix products for each n of ``sizes``, numpy's
    BLAS, torch and fastseq's threaded projection product
    (:func:`fastseq._threads.parallel_project`, zero bias, its weight
    packed in the call) alternated: ``{"numpy 2048": ..., "torch 2048":
    ..., "fastseq 2048": ...}``; the peak is the best of them.  The median of ``repeats`` calls at 2048,
    of 2 at larger sizes (a 4096^3 product takes about a second on 2 cores),
    without a warm-up call there."""
    import torch
    from fastseq import _threads

    peak = {}
    for n in sizes:
        rng = np.random.default_rng(0)
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)
        c = np.empty_like(a)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        tc = torch.empty_like(ta)
        big = n > 2048
        wt, zero = np.ascontiguousarray(b.T), np.zeros(n, dtype=np.float32)

        def ours():
            with _threads.limit(threads):
                _threads.parallel_project(a, wt, zero, c)
        ts = time_alternating({"numpy": lambda: np.matmul(a, b, out=c),
                               "torch": lambda: torch.mm(ta, tb, out=tc), "fastseq": ours},
                              min(repeats, 2) if big else repeats, warmup=0 if big else 1,
                              min_time=0.0, refill=not big)
        peak.update({f"{k} {n}": 2.0 * n ** 3 / v / 1e9 for k, v in ts.items()})
        del a, b, c, ta, tb, tc, wt
    return peak


# ------------------------------------------------------------- one case
def run_case(case, threads, repeats, use_ort=True):
    import torch

    from fastseq.interop import from_torch

    module = make_torch(case)
    layer = from_torch(module, dtype="float32")
    X, G = case_data(case)
    tX, tG = torch.from_numpy(X), torch.from_numpy(G)
    res = {"case": case.name, "group": case.group, "cell": case.cell,
           "B": case.B, "T": case.T, "I": case.I, "H": case.H,
           "torch_path": TORCH_PATH[case.cell]}
    for k in ("init", "x_scale"):
        if k in case.extra:
            res[k] = case.extra[k]
    ftz = case.extra.get("torch_ftz", False)
    if ftz:
        res.update(denormal_share(module, tX, tG))
    # correctness guard: the two forwards must agree (a benchmark of a wrong
    # result is worthless)
    layer.eval()
    fwd_kw = {"need_grad": False} if _accepts(layer.forward, "need_grad") else {}
    out_f = layer.forward(X, **fwd_kw)[0]
    with torch.inference_mode():
        out_t = module(tX)[0].numpy()
    res["max_abs_diff"] = float(np.abs(out_f - out_t).max())

    if "infer" in case.modes:
        fns = {"fastseq": lambda: layer.forward(X, **fwd_kw)}

        def torch_infer():
            with torch.inference_mode():
                module(tX)
        fns["torch"] = torch_infer
        if ftz:
            fns["torch_ftz"] = flushing_denormals(torch_infer)
        ts = time_alternating(fns, repeats)
        if use_ort:
            # in turn with fastseq again, each ORT sample in a fresh session
            # (time_against_ort: a live session's spinning threads slow the
            # other engine)
            try:
                make_ort(case, module, threads)  # (exported once, here)
                vs = time_against_ort(fns["fastseq"], lambda: make_ort(case, module, threads),
                                      {"x": X}, repeats)
                ts["ort"], ts["fastseq_vs_ort"] = vs["ort"], vs["fastseq"]
            except Exception as exc:  # pragma: no cover - depends on the install
                res["ort_error"] = repr(exc)
        for k, v in ts.items():
            res[f"infer_{k}_ms"] = v * 1e3
            res[f"infer_{k}_gflops"] = case.flops("infer") / v / 1e9
        res["infer_speedup_torch"] = ts["torch"] / ts["fastseq"]
        if ftz:
            res["infer_speedup_torch_ftz"] = ts["torch_ftz"] / ts["fastseq"]
        if "ort" in ts:
            res["infer_speedup_ort"] = ts["ort"] / ts["fastseq_vs_ort"]

    if "train" in case.modes:
        layer.train()
        ft = FastseqTrainer(layer)
        tt = TorchTrainer(module)
        fns = {"fastseq": lambda: ft.step(X, G), "torch": lambda: tt.step(tX, tG)}
        if ftz:
            fns["torch_ftz"] = flushing_denormals(fns["torch"])
        ts = time_alternating(fns, repeats)
        for k, v in ts.items():
            res[f"train_{k}_ms"] = v * 1e3
            res[f"train_{k}_gflops"] = case.flops("train") / v / 1e9
        res["train_speedup_torch"] = ts["torch"] / ts["fastseq"]
        if ftz:
            res["train_speedup_torch_ftz"] = ts["torch_ftz"] / ts["fastseq"]
    return res


def case_data(case):
    """Input X (B, T, I) and output gradient G (B, T, H), float32: standard
    normal, X times ``extra["x_scale"]``, G zero before the last step when
    ``extra["grad"] == "last"`` (a loss on the last state, as a classifier)."""
    rng = np.random.default_rng(1)
    X = rng.standard_normal((case.B, case.T, case.I), dtype=np.float32)
    G = rng.standard_normal((case.B, case.T, case.H), dtype=np.float32)
    if case.extra.get("x_scale", 1.0) != 1.0:
        X *= np.float32(case.extra["x_scale"])
    if case.extra.get("grad") == "last":
        G[:, :-1] = 0.0
    return X, G


def denormals_flushed():
    """True when this thread's float unit flushes denormals (FTZ or DAZ set):
    numpy's float32 arithmetic on this thread follows the same control
    register."""
    tiny = np.finfo(np.float32).tiny
    return bool(np.float32(tiny) * np.float32(0.5) == 0 or np.float32(tiny / 4) + np.float32(0) == 0)


def flushing_denormals(fn):
    """``fn`` run under ``torch.set_flush_denormal(True)``, the thread's
    previous state put back after each call (fastseq's calls, timed in turn,
    run on the same thread)."""
    import torch

    before = denormals_flushed()

    def run():
        torch.set_flush_denormal(True)
        try:
            fn()
        finally:
            torch.set_flush_denormal(before)
    return run


def denormal_share(module, tX, tG):
    """How much of torch's backward pass (no flush) meets denormals: the
    share of steps whose input gradient holds a denormal, and of steps where
    it is exactly zero (faded out)."""
    import torch

    before = denormals_flushed()
    torch.set_flush_denormal(False)
    try:
        x = tX.clone().requires_grad_(True)
        out = module(x)[0]
        (out * tG).sum().backward()
    finally:
        torch.set_flush_denormal(before)
    module.zero_grad(set_to_none=True)
    d = x.grad.abs().numpy()
    sub = ((d > 0) & (d < np.finfo(np.float32).tiny)).any(axis=(0, 2))
    zero = ~(d > 0).any(axis=(0, 2))
    return {"denormal_steps_pct": 100.0 * float(sub.mean()),
            "zero_grad_steps_pct": 100.0 * float(zero.mean())}


def check_determinism(threads):
    """Two fresh training runs of the same seed give bit-identical weights."""
    from fastseq.nn import Recurrent

    outs = []
    for _ in range(2):
        layer = Recurrent("lstm", 16, 48, random_state=3)
        tr = FastseqTrainer(layer)
        rng = np.random.default_rng(5)
        X = rng.standard_normal((37, 20, 16), dtype=np.float32)
        G = rng.standard_normal((37, 20, 48), dtype=np.float32)
        for _ in range(3):
            tr.step(X, G)
        outs.append(layer.flat.copy())
    return bool(np.array_equal(outs[0], outs[1]))


# ------------------------------------------------------- decoder (guarded)
DEC_F, DEC_V, DEC_M = 32, 64, 32  # source features, target vocabulary, embedding size


def _torch_greedy(enc, emb, cell, out_lin, tX, steps):
    """Greedy attention decoding in plain torch: GRU encoder, GRUCell decoder
    fed [embedding, previous context], dot attention, linear output, argmax."""
    import torch

    mem, h = enc(tX)
    h = h[0]
    B = tX.shape[0]
    ctx = torch.zeros(B, mem.shape[2])
    y = torch.zeros(B, dtype=torch.long)
    toks = []
    for _ in range(steps):
        h = cell(torch.cat([emb(y), ctx], dim=1), h)
        w = torch.softmax(torch.bmm(mem, h[:, :, None]), dim=1)
        ctx = (w * mem).sum(1)
        y = out_lin(torch.cat([h, ctx], dim=1)).argmax(1)
        toks.append(y)
    return torch.stack(toks, 1)


def run_decoder_case(case, threads, repeats):
    """Greedy decoding of ``case.T`` steps with the attention decoder
    (fastseq's Seq2Seq, attention "dot", GRU) against the same-size loop in
    torch; None when the seq2seq module is not there."""
    try:
        from fastseq.network.seq2seq import Seq2Seq
    except Exception:
        return None
    import torch

    S, H, B = case.extra["S"], case.H, case.B
    res = {"case": case.name, "group": case.group, "cell": case.cell, "B": B, "T": case.T,
           "I": DEC_F, "H": H, "S": S, "torch_path": "native"}
    try:
        model = Seq2Seq(DEC_V, outputs="tokens", input_size=DEC_F, embedding_dim=DEC_M, cell="gru",
                        hidden_size=H, attention="dot", random_state=0)
        model.eval()
    except Exception as exc:  # pragma: no cover - depends on the other engineer's API
        res["skipped"] = f"Seq2Seq unavailable: {exc!r}"
        return res
    rng = np.random.default_rng(0)
    X = rng.standard_normal((B, S, DEC_F), dtype=np.float32)
    lengths = np.full(B, S, dtype=np.int64)
    torch.manual_seed(0)
    enc = torch.nn.GRU(DEC_F, H, batch_first=True)
    emb = torch.nn.Embedding(DEC_V, DEC_M)
    cell = torch.nn.GRUCell(DEC_M + H, H)
    out_lin = torch.nn.Linear(2 * H, DEC_V)
    tX = torch.from_numpy(X)

    def torch_dec():
        with torch.inference_mode():
            _torch_greedy(enc, emb, cell, out_lin, tX, case.T)
    ts = time_alternating({"fastseq": lambda: model.greedy(X, lengths, case.T), "torch": torch_dec},
                          repeats)
    for k, v in ts.items():
        res[f"infer_{k}_ms"] = v * 1e3
    res["infer_speedup_torch"] = ts["torch"] / ts["fastseq"]
    res["note"] = "torch: hand-written greedy loop of the same sizes (GRU, dot attention); no ORT"
    return res


# ------------------------------------------------------------ subprocesses
MEMORY_SNIPPET = r"""
import gc, json, os, sys
sys.path.insert(0, {root!r})
import numpy as np
from bench.compare import Case, make_torch, FastseqTrainer, TorchTrainer, set_threads
case = Case(**json.loads({case!r}))
engine = {engine!r}
set_threads({threads})
from fastseq import _threads
# held in a name: a generator context manager entered on a temporary is
# closed when the temporary goes, which undoes the limit at once
_LIMIT = _threads.limit({threads})
_LIMIT.__enter__()
import torch
module = make_torch(case)
def build(B):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((B, case.T, case.I), dtype=np.float32)
    G = rng.standard_normal((B, case.T, case.H), dtype=np.float32)
    if engine == "torch":
        return TorchTrainer(module), torch.from_numpy(X), torch.from_numpy(G)
    from fastseq.interop import from_torch
    return FastseqTrainer(from_torch(module, dtype="float32")), X, G
tr, X, G = build(2)
tr.step(X, G); tr.step(X, G)
tr, X, G = build(case.B)
del module
gc.collect()
def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
base = status("VmRSS:")
tr.step(X, G)
tr.step(X, G)
print(json.dumps({{"peak": status("VmHWM:") - base}}))
"""


def measure_memory(case, engine, threads):
    code = MEMORY_SNIPPET.format(root=ROOT, case=json.dumps(asdict(case)), engine=engine,
                                 threads=threads)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    if p.returncode != 0:
        return None
    return json.loads(p.stdout.strip().splitlines()[-1])["peak"]


COLD_SNIPPET = r"""
import time
t0 = time.perf_counter()
import sys
sys.path.insert(0, {root!r})
import numpy as np
import fastseq
t_import = time.perf_counter() - t0
from fastseq import kernels as K
from fastseq.nn import Recurrent
rng = np.random.default_rng(0)
X = rng.standard_normal((8, 10, 3)).astype(np.float32)
y = rng.standard_normal(8).astype(np.float32)
est = getattr(fastseq, "RNNRegressor", None)
if est is not None:
    est(cell="lstm", hidden_size=8, max_iter=2, batch_size=4, random_state=0).fit(X, y)
    how = "RNNRegressor(cell='lstm').fit"
else:
    for cell in ("lstm", "gru", "rnn"):
        layer = Recurrent(cell, 3, 8, random_state=0)
        g = np.zeros_like(layer.flat); m = np.zeros_like(g); v = np.zeros_like(g)
        for step in range(1, 3):
            out, _ = layer.forward(X)
            layer.backward(np.ones_like(out), out=g)
            K.clip_grad_norm(g, 1.0)
            K.adam_update(layer.flat, g, m, v, step, 1e-3, 0.9, 0.999, 1e-8, 0.0)
        layer.eval(); layer.forward(X)
    how = "Recurrent lstm+gru+rnn: 2 training steps + predict each"
import json
print(json.dumps({{"import_s": t_import, "total_s": time.perf_counter() - t0, "how": how}}))
"""


def measure_cold_start():
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        res = {}
        for label in ("cold", "warm"):
            t0 = time.perf_counter()
            p = subprocess.run([sys.executable, "-c", COLD_SNIPPET.format(root=ROOT)],
                               capture_output=True, text=True, env=env, timeout=600)
            wall = time.perf_counter() - t0
            if p.returncode != 0:
                res[label] = {"error": p.stderr[-2000:]}
                continue
            d = json.loads(p.stdout.strip().splitlines()[-1])
            d["process_wall_s"] = wall
            res[label] = d
        return res


# ------------------------------------------------------------------ output
def set_threads(n):
    """Limit torch and every BLAS/OpenMP pool to ``n`` threads; returns the
    threadpoolctl limiter.  fastseq runs inside ``fastseq._threads.limit(n)``
    (what its estimators do with ``n_jobs=n``): its own ``n`` threads, BLAS
    held at one thread inside."""
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(n)
    return threadpool_limits(limits=n)


def cpu_model():
    """The CPU's model name: /proc/cpuinfo on Linux, platform.processor() elsewhere."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "Model")):  # x86; some ARM boards
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


#: the widest vector instruction set first, as LLVM names its feature
VECTOR_ISAS = (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"), ("sve2", "SVE2"),
               ("sve", "SVE"), ("neon", "NEON"), ("sse4.2", "SSE4.2"), ("sse2", "SSE2"))


def cpu_kind():
    """(LLVM's name of the host CPU, as numba compiles for it, and the widest
    vector ISA it has).  ``NUMBA_CPU_NAME`` overrides the name as it does for
    numba."""
    import llvmlite.binding as llvm
    import numba

    name = numba.config.CPU_NAME or llvm.get_host_cpu_name()
    try:
        features = llvm.get_host_cpu_features()
        have = {k for k, v in features.items() if v}
    except RuntimeError:  # LLVM cannot tell on some hosts
        have = set()
    if platform.machine().lower() in ("arm64", "aarch64"):
        have.add("neon")  # mandatory on 64-bit ARM, not always listed
    isa = next((label for feat, label in VECTOR_ISAS if feat in have), "unknown")
    return name, isa


def blas_info():
    """BLAS and OpenMP libraries loaded (threadpoolctl), by the package that
    ships them, and torch's own BLAS (MKL is linked into torch, out of
    threadpoolctl's sight)."""
    import scipy.linalg.cython_blas  # noqa: F401  (the BLAS numba's np.dot calls)
    import torch
    from threadpoolctl import threadpool_info

    libs = {}
    for lib in threadpool_info():
        path = lib.get("filepath", "")
        owner = next((pkg for pkg in ("numpy", "scipy", "torch", "scikit_learn", "onnxruntime")
                      if f"{os.sep}{pkg}" in path), os.path.basename(os.path.dirname(path)))
        desc = lib.get("internal_api", "?")
        if lib.get("version"):
            desc += " " + lib["version"]
        if lib.get("architecture"):
            desc += f" ({lib['architecture']})"
        libs.setdefault(f"{owner.replace('.libs', '')} {lib['user_api']}", desc)
    config = torch.__config__.show()
    found = re.search(r"BLAS_INFO=([^,\s]+)", config)
    blas = found.group(1) if found else "?"
    try:
        blas += f" ({torch.backends.cpu.get_cpu_capability()})"
    except Exception:  # pragma: no cover - older torch
        pass
    libs["torch blas"] = blas
    return libs


def machine_info(threads):
    import numba
    import torch

    name, isa = cpu_kind()
    info = {"cpu": cpu_model(), "llvm_cpu": name, "vector_isa": isa, "threads": threads,
            "cores": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "numpy": np.__version__, "numba": numba.__version__,
            "torch": torch.__version__}
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    try:
        info["blas"] = blas_info()
    except Exception as exc:  # pragma: no cover - depends on the install
        info["blas"] = {"error": repr(exc)}
    info["load_avg"] = os.getloadavg()
    return info


def cpu_header(info):
    """One line naming the CPU kind, for the top of the Markdown output."""
    return (f"CPU: {info.get('cpu', '?')} ({info.get('llvm_cpu', '?')}, "
            f"{info.get('vector_isa', '?')}), {info.get('threads', '?')} threads")


def geomean(xs):
    xs = [x for x in xs if x and x > 0]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else float("nan")


#: the summary's groups: the case groups each one gathers ("batch-1" is a
#: view across them: every inference case at B = 1)
SUMMARY_GROUPS = {"latency": ("latency",),
                  "course": ("small-train", "mnist-rows", "weather", "course"),
                  "matrix": ("matrix",), "long": ("long",), "decoder": ("decoder",)}
#: what a row can be measured in: ``{mode}_speedup_{engine}`` keys
MODES = ("infer", "train", "epoch")


def ratios(rows, against="torch"):
    """(case, mode, ratio) of every measurement of ``rows`` against
    ``against`` ("torch", "ort", "torch_ftz"); > 1 means fastseq is faster."""
    out = []
    for r in rows:
        for m in MODES:
            v = r.get(f"{m}_speedup_{against}")
            if isinstance(v, (int, float)) and v > 0:
                out.append((r["case"], m, float(v)))
    return out


def group_summary(rows):
    """Geometric mean and worst case of every ratio of ``rows``, and how many
    cases have one below 1.0x, against torch (also per mode), ONNX Runtime
    and, where timed, torch with denormals flushed."""
    g = {"cases": len(rows)}
    for against in ("torch", "ort", "torch_ftz"):
        rs = ratios(rows, against)
        if not rs:
            continue
        case, mode, worst = min(rs, key=lambda x: x[2])
        d = {"geomean": geomean([v for _, _, v in rs]), "ratios": len(rs),
             "worst": {"case": case, "mode": mode, "ratio": worst},
             "cases_below_1x": len({c for c, _, v in rs if v < 1.0})}
        if against == "torch":
            for m in MODES:
                vs = [v for _, mm, v in rs if mm == m]
                if vs:
                    d[f"{m}_geomean"] = geomean(vs)
        g[f"vs_{against}"] = d
    return g


def targets(s, rows):
    """The performance issue's targets with this run's values."""
    t = []

    def add(name, value, met):
        t.append({"target": name, "value": value, "met": None if value is None else bool(met)})
    o = s["overall"]
    worst = o.get("vs_torch", {}).get("worst", {}).get("ratio")
    add("every case >= 1.0x torch (inference, training, epoch)", worst, worst is not None and worst >= 1.0)
    worst = o.get("vs_ort", {}).get("worst", {}).get("ratio")
    add("every inference case >= 1.0x ONNX Runtime", worst, worst is not None and worst >= 1.0)
    gm = o.get("vs_torch", {}).get("geomean")
    add("geometric mean over all cases >= 2x torch", gm, gm is not None and gm >= 2.0)
    pct = [v for d in s["matrix_bound_pct_of_peak"].values() for v in d.values()]
    low = min(pct) if pct else None
    add("matrix-bound cases >= 75% of the matmul peak (lowest)", low, low is not None and low >= 75.0)
    b1 = s["groups"].get("batch-1", {})
    gm = b1.get("vs_torch", {}).get("geomean")
    add("batch-1 latency >= 5x torch (geomean)", gm, gm is not None and gm >= 5.0)
    gm = b1.get("vs_ort", {}).get("geomean")
    add("batch-1 latency >= 1.5x ONNX Runtime (geomean)", gm, gm is not None and gm >= 1.5)
    course = [r for r in rows if "epoch_speedup_torch" in r]
    low = min((r["epoch_speedup_torch"] for r in course), default=None)
    add(f"MNIST rows end to end >= {TARGET_SPEEDUP}x torch per epoch (every cell)", low,
        low is not None and low >= TARGET_SPEEDUP)
    diff = max((abs(r["acc_diff"]) for r in course), default=None)
    seeds = min((r.get("seeds", 1) for r in course), default=1)
    add(f"MNIST rows test accuracy within {TARGET_ACC_DIFF} of torch (largest gap of the means over "
        f"{seeds} seed(s))", diff, diff is not None and diff <= TARGET_ACC_DIFF)
    return t


def summarize(results, peak):
    rows = [r for r in results if "skipped" not in r]
    s = {}
    inf = [r for r in rows if "infer_speedup_torch" in r]
    tr = [r for r in rows if "train_speedup_torch" in r]
    s["infer_geomean_vs_torch"] = geomean([r["infer_speedup_torch"] for r in inf])
    s["infer_geomean_vs_ort"] = geomean([r.get("infer_speedup_ort") for r in inf])
    b1 = [r for r in inf if r["B"] == 1]
    s["infer_batch1_geomean_vs_torch"] = geomean([r["infer_speedup_torch"] for r in b1])
    s["infer_batch1_min_vs_torch"] = min((r["infer_speedup_torch"] for r in b1), default=float("nan"))
    s["infer_min_vs_ort"] = min((r.get("infer_speedup_ort", float("inf")) for r in inf), default=float("nan"))
    s["infer_cases_behind_ort"] = [r["case"] for r in inf if r.get("infer_speedup_ort", 1.0) < 1.0]
    s["train_geomean_vs_torch"] = geomean([r["train_speedup_torch"] for r in tr])
    s["train_min_vs_torch"] = min((r["train_speedup_torch"] for r in tr), default=float("nan"))
    s["train_cases_below_1x"] = [r["case"] for r in tr if r["train_speedup_torch"] < 1.0]
    best = max(peak.values())
    s["matmul_peak_gflops"] = best
    s["matrix_bound_pct_of_peak"] = {
        r["case"]: {m: 100.0 * r[f"{m}_fastseq_gflops"] / best for m in ("infer", "train")
                    if f"{m}_fastseq_gflops" in r}
        for r in rows if r["group"] == "matrix"}
    mem = [r for r in rows if r.get("train_mem_fastseq_mb") and r.get("train_mem_torch_mb")]
    s["train_memory_cases_above_torch"] = [r["case"] for r in mem
                                           if r["train_mem_fastseq_mb"] > r["train_mem_torch_mb"]]
    groups = {}
    for name, members in SUMMARY_GROUPS.items():
        g = [r for r in rows if r["group"] in members]
        if g:
            groups[name] = group_summary(g)
        if name == "latency" and b1:  # the batch-1 view next to its group
            groups["batch-1"] = group_summary(
                [{k: v for k, v in r.items() if not k.startswith(("train_", "epoch_"))} for r in b1])
    s["groups"] = groups
    s["overall"] = group_summary(rows)
    s["below_1x_torch"] = [f"{c} {m} {v:.2f}" for c, m, v in ratios(rows, "torch") if v < 1.0]
    s["below_1x_ort"] = [f"{c} {m} {v:.2f}" for c, m, v in ratios(rows, "ort") if v < 1.0]
    s["targets"] = targets(s, rows)
    kept = {r["case"]: r["epoch_speedup_torch_kept"] for r in rows if "epoch_speedup_torch_kept" in r}
    if kept:  # (bench.course: torch without its page faults, next to the targets)
        s["course_vs_torch_kept_heap"] = kept
    return s


def summary_lines(s):
    """The summary as a Markdown table of the groups and a list of targets
    (printed as is, and written into the Markdown output)."""
    def f(v, fmt=".2f"):
        return format(v, fmt) if isinstance(v, (int, float)) else "-"

    def worst(d):
        w = d.get("worst")
        return f"{w['ratio']:.2f} {w['case']} ({w['mode']})" if w else "-"
    lines = ["Ratios are the other engine's time over fastseq's (> 1: fastseq is faster).", "",
             "| group | cases | x torch geomean | infer / train / epoch | worst x torch | "
             "x ORT geomean | worst x ORT | cases below 1.0x torch / ORT |",
             "|" + "---|" * 8]
    named = list(s["groups"].items()) + [("**all**", s["overall"])]
    for name, g in named:
        t, o = g.get("vs_torch", {}), g.get("vs_ort", {})
        modes = " / ".join(f(t.get(f"{m}_geomean")) for m in MODES)
        lines.append(f"| {name} | {g['cases']} | {f(t.get('geomean'))} | {modes} | {worst(t)} | "
                     f"{f(o.get('geomean'))} | {worst(o)} | {t.get('cases_below_1x', '-')} / "
                     f"{o.get('cases_below_1x', '-')} |")
    ftz = s["groups"].get("long", {}).get("vs_torch_ftz")
    if ftz:
        lines += ["", f"long sequences against torch with flush-to-zero "
                      f"(`torch.set_flush_denormal(True)`): geomean {f(ftz['geomean'])}, "
                      f"worst {worst(ftz)}"]
    lines += ["", "batch-1 is a view of the inference cases at B = 1 (latency and decoder), "
                  "also counted in their groups; **all** counts every case once.", ""]
    for t in s["targets"]:
        mark = {True: "met", False: "**short**", None: "not measured"}[t["met"]]
        lines.append(f"- {t['target']}: {f(t['value'], '.3g')} ({mark})")
    kept = s.get("course_vs_torch_kept_heap")
    if kept:
        lines.append("- (not a target) MNIST rows end to end against torch with its heap kept "
                     "(glibc told to keep freed memory: torch's LSTM workspace is not faulted in again "
                     "at every batch; `bench.course`): "
                     + ", ".join(f"{c.rsplit('/', 1)[-1]} {v:.2f}x" for c, v in kept.items()))
    sp = s.get("thread_speedup")
    if sp:
        lines += ["", f"{sp['threads']} threads ran a compute-bound kernel {sp['start']:.2f}x one thread's "
                      f"speed at the start of the run and {sp['end']:.2f}x at the end "
                      f"({sp['threads']} on free cores; `bench.compare.thread_speedup`)"]
    if s.get("busy_cpu_findings"):
        lines += ["", f"fastseq found a busy CPU {s['busy_cpu_findings']} time(s) in this run "
                      "(`fastseq._threads.cpu_busy`): some of its calls ran on one thread for a while, "
                      "so the machine was loaded"]
    return lines


def print_table(results):
    results = [r for r in results if not r["case"].startswith("course/")]  # course_table's
    if not results:
        return
    hdr = (f"{'case':40s} {'path':7s} {'inf fs ms':>9s} {'torch':>8s} {'fs2 ms':>8s} {'ort':>8s} "
           f"{'x torch':>7s} "
           f"{'x ort':>6s} {'trn fs ms':>9s} {'torch':>8s} {'x torch':>7s} {'GF/s fs':>8s} "
           f"{'mem fs':>7s} {'torch':>6s}")
    print(hdr)
    print("-" * len(hdr))

    def f(r, k, fmt):
        v = r.get(k)
        return format(v, fmt) if isinstance(v, (int, float)) else "-".rjust(len(format(0.0, fmt)))
    for r in results:
        if "skipped" in r:
            print(f"{r['case']:40s} skipped: {r['skipped']}")
            continue
        gf = r.get("train_fastseq_gflops", r.get("infer_fastseq_gflops"))
        print(f"{r['case']:40s} {r['torch_path']:7s} {f(r, 'infer_fastseq_ms', '9.3f')} "
              f"{f(r, 'infer_torch_ms', '8.3f')} {f(r, 'infer_fastseq_vs_ort_ms', '8.3f')} "
              f"{f(r, 'infer_ort_ms', '8.3f')} {f(r, 'infer_speedup_torch', '7.2f')} "
              f"{f(r, 'infer_speedup_ort', '6.2f')} "
              f"{f(r, 'train_fastseq_ms', '9.3f')} {f(r, 'train_torch_ms', '8.3f')} "
              f"{f(r, 'train_speedup_torch', '7.2f')} {format(gf, '8.1f') if gf else '-':>8s} "
              f"{f(r, 'train_mem_fastseq_mb', '7.1f')} {f(r, 'train_mem_torch_mb', '6.1f')}")


def long_table(results):
    """Rows of the long-sequence cases with torch's flush-to-zero timings."""
    def f(v, fmt):
        return format(v, fmt) if isinstance(v, (int, float)) else "-"
    out = [("case", "x scale", "steps with denormal dX %", "steps with zero dX %",
            "infer fastseq ms", "torch", "torch FTZ", "x torch", "x torch FTZ",
            "train fastseq ms", "torch", "torch FTZ", "x torch", "x torch FTZ")]
    for r in results:
        if r.get("group") != "long" or "skipped" in r:
            continue
        out.append((r["case"], f(r.get("x_scale"), "g"), f(r.get("denormal_steps_pct"), ".1f"),
                    f(r.get("zero_grad_steps_pct"), ".1f"))
                   + tuple(f(r.get(f"{m}_{k}"), fmt) for m in ("infer", "train")
                           for k, fmt in (("fastseq_ms", ".2f"), ("torch_ms", ".2f"),
                                          ("torch_ftz_ms", ".2f"), ("speedup_torch", ".2f"),
                                          ("speedup_torch_ftz", ".2f"))))
    return out if len(out) > 1 else []


def md_table(rows):
    """Markdown lines of a table given as tuples (the first one the header)."""
    if not rows:
        return []
    return (["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
            + ["| " + " | ".join(r) + " |" for r in rows[1:]])


def markdown(out):
    """The run as Markdown for bench/RESULTS.md: the CPU line, machine,
    summary (groups, targets, the JSON), the MNIST-rows and long-sequence
    tables, then one row per case."""
    def f(v, fmt):
        return format(v, fmt) if isinstance(v, (int, float)) else "-"
    m, s = out["machine"], out["summary"]
    lines = [cpu_header(m), "",
             "Command: `python -m bench.compare " + " ".join(out["argv"]) + "`", "",
             "Machine: " + ", ".join(f"{k}={v}" for k, v in m.items()), "",
             "float32 matmul peak: " + ", ".join(f"{k} {v:.1f} GFLOP/s"
                                                 for k, v in out["matmul_peak_gflops"].items()), ""]
    lines += summary_lines(s)
    lines += ["", "```", json.dumps(s, indent=1), "```", ""]
    course = [r for r in out["results"] if r["case"].startswith("course/")]
    if course:
        lines += ["MNIST rows end to end (each engine in a fresh process at its default threads; "
                  "torch kept: with its heap kept, see `bench.course`):", ""]
        lines += md_table(course_table(course)) + [""]
    if long_table(out["results"]):
        lines += ["Long sequences, torch also with flush-to-zero:", ""]
        lines += md_table(long_table(out["results"])) + [""]
    rows = [r for r in out["results"] if not r["case"].startswith("course/")]
    if rows:
        lines += ["| case | torch path | infer fastseq ms | torch ms | fastseq ms (vs ORT) | ORT ms "
                  "| x torch | x ORT | train fastseq ms | torch ms | x torch "
                  "| fastseq GFLOP/s (train) | mem fastseq MB | mem torch MB |",
                  "|" + "---|" * 14]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['case']} | skipped: {r['skipped']} |" + " |" * 12)
            continue
        lines.append("| " + " | ".join([
            r["case"], r.get("torch_path", "-"), f(r.get("infer_fastseq_ms"), ".3f"),
            f(r.get("infer_torch_ms"), ".3f"), f(r.get("infer_fastseq_vs_ort_ms"), ".3f"),
            f(r.get("infer_ort_ms"), ".3f"),
            f(r.get("infer_speedup_torch"), ".2f"), f(r.get("infer_speedup_ort"), ".2f"),
            f(r.get("train_fastseq_ms"), ".3f"), f(r.get("train_torch_ms"), ".3f"),
            f(r.get("train_speedup_torch"), ".2f"), f(r.get("train_fastseq_gflops"), ".1f"),
            f(r.get("train_mem_fastseq_mb"), ".1f"), f(r.get("train_mem_torch_mb"), ".1f")]) + " |")
    return "\n".join(lines) + "\n"


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results if "skipped" not in r and not r["case"].startswith("course/")]
    fig, axes = plt.subplots(2, 1, figsize=(max(8, 0.22 * len(rows)), 9), sharex=True)
    x = np.arange(len(rows))
    w = 0.4
    ax = axes[0]
    ax.bar(x - w / 2, [r.get("infer_speedup_torch", 0) for r in rows], w, label="vs torch")
    ax.bar(x + w / 2, [r.get("infer_speedup_ort", 0) for r in rows], w, label="vs ONNX Runtime")
    ax.set_ylabel("inference speed-up (x)")
    ax = axes[1]
    ax.bar(x, [r.get("train_speedup_torch", 0) for r in rows], w, label="vs torch", color="C2")
    ax.set_ylabel("training-step speed-up (x)")
    for ax in axes:
        ax.set_yscale("log")
        ax.axhline(1.0, color="k", lw=0.8)
        ax.legend(loc="upper right")
        ax.grid(axis="y", which="both", alpha=0.3)
    axes[1].set_xticks(x)
    axes[1].set_xticklabels([r["case"] for r in rows], rotation=90, fontsize=6)
    fig.suptitle("fastseq speed-up, float32 (higher is better; >1 = fastseq faster)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2,
                   help="threads for every engine (default 2; not the MNIST-rows section's, "
                        "which runs both engines at their defaults)")
    p.add_argument("--quick", action="store_true", help="a small subset of cases")
    p.add_argument("--only", default=None,
                   help="run only cases whose name contains this string (comma-separated: any); "
                        "'course' runs the MNIST-rows section alone (course/mnist/<cell>)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per engine (default 7, quick 3)")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs of the MNIST-rows section (default 10, quick 1)")
    p.add_argument("--no-course", action="store_true", help="skip the MNIST-rows section")
    p.add_argument("--seeds", type=int, default=None,
                   help="fits of each engine whose test accuracies the MNIST-rows section averages "
                        "(default 3, quick 1; the first is the timed one)")
    p.add_argument("--json", default=None,
                   help="JSON output (default bench/results-<cpu>[-partial].json; '' for none)")
    p.add_argument("--png", default=None, help="chart (default bench/results-<cpu>[-partial].png)")
    p.add_argument("--md", default=None,
                   help="Markdown summary and tables for bench/RESULTS.md "
                        "(default bench/results-<cpu>[-partial].md; '' for none)")
    p.add_argument("--no-ort", action="store_true", help="skip ONNX Runtime")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--no-cold", action="store_true", help="skip the cold-start subprocesses")
    p.add_argument("--memory-all", action="store_true", help="measure memory for every training case")
    p.add_argument("--matmul-size", default=None,
                   help="n of the n^3 float32 products that measure the peak, comma-separated "
                        "(default 2048,4096; quick, or no matrix-bound case selected: 512)")
    args = p.parse_args(argv)
    if args.seeds is not None and args.seeds < 1:
        p.error(f"--seeds must be at least 1, got {args.seeds}")
    return args


def output_paths(args, info):
    """(json, md, png): the paths given, or bench/results-<cpu>[-partial].*
    (see the module docstring); '' (given) means none."""
    kind = re.sub(r"[^A-Za-z0-9_.-]", "_", info.get("llvm_cpu") or platform.machine() or "cpu")
    stem = os.path.join(ROOT, "bench", f"results-{kind}" + ("-partial" if args.quick or args.only else ""))
    return tuple(stem + ext if given is None else given
                 for given, ext in ((args.json, ".json"), (args.md, ".md"), (args.png, ".png")))


def select_cases(args):
    """The cases of ``all_cases`` this run times, and the cells of the
    MNIST-rows section it runs."""
    cases = all_cases()
    course = [] if args.no_course else list(COURSE_CELLS)
    if args.quick:
        cases = [c for c in cases if c.name in QUICK]
    if args.only:
        keys = args.only.split(",")
        cases = [c for c in cases if any(k in c.name for k in keys)]
        course = [c for c in course if any(k in f"course/mnist/{c}" for k in keys)]
    return cases, course


def main(argv=None):
    import torch

    args = parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 7)
    cases, course_cells = select_cases(args)
    epochs = args.epochs or (1 if args.quick else 10)
    seeds = args.seeds or (1 if args.quick else 3)
    torch_default_threads = torch.get_num_threads()  # before set_threads: the course section's
    use_ort = not args.no_ort
    if use_ort:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            print("onnxruntime not installed: skipping ONNX Runtime")
            use_ort = False
    t_start = time.perf_counter()
    limits = set_threads(args.threads)
    info = machine_info(args.threads)
    print(cpu_header(info))
    print("machine:", json.dumps(info))
    if args.matmul_size:
        sizes = tuple(int(n) for n in args.matmul_size.split(","))
    elif args.quick or not (course_cells or any(c.group == "matrix" for c in cases)):
        sizes = (512,)
    else:
        sizes = (2048, 4096)
    peak = matmul_peak(args.threads, sizes=sizes, repeats=3 if args.quick else 5)
    print(f"float32 matmul peak ({args.threads} threads): "
          + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in peak.items()))
    speedup_start = thread_speedup(args.threads) if args.threads > 1 else None
    results = []
    from fastseq import _threads

    fs_limit = _threads.limit(args.threads)
    fs_limit.__enter__()
    findings_before = _threads.busy_findings
    for case in cases:
        if case.group == "decoder":
            r = run_decoder_case(case, args.threads, repeats)
            if r is None:
                continue
        else:
            r = run_case(case, args.threads, repeats, use_ort=use_ort)
            if not args.no_memory and "train" in case.modes and (case.memory or args.memory_all):
                for eng in ("fastseq", "torch"):
                    m = measure_memory(case, eng, args.threads)
                    r[f"train_mem_{eng}_mb"] = None if m is None else m / 2 ** 20
        results.append(r)
        gc.collect()
        print(f"  {r['case']}: " + ", ".join(f"{k}={v:.2f}" for k, v in r.items()
                                             if k.endswith(("speedup_torch", "speedup_ort",
                                                            "speedup_torch_ftz"))), flush=True)
    deterministic = check_determinism(args.threads)
    fs_limit.__exit__(None, None, None)
    limits.restore_original_limits()
    if course_cells:
        # both engines at their defaults, each in a fresh process of its own
        # (bench.course: torch's speed there depends on what the process
        # allocated before)
        # (the peak was measured at --threads: the course's share of it only
        # when both engines' defaults run that many threads)
        same = torch_default_threads == args.threads
        results += run_course(epochs, course_cells, seeds=seeds,
                              peak_gflops=max(peak.values()) if same and not args.quick else None)
        gc.collect()
    summary = summarize(results, peak)
    summary["deterministic_fixed_threads"] = deterministic
    # (each finding ran some fastseq calls on one thread for a while: a
    # loaded machine; 0 expected on idle CPUs)
    summary["busy_cpu_findings"] = _threads.busy_findings - findings_before
    if speedup_start is not None:
        # (the two-thread figures' conditions: see thread_speedup)
        summary["thread_speedup"] = {"threads": args.threads, "start": speedup_start,
                                     "end": thread_speedup(args.threads)}
    if not args.no_cold:
        summary["cold_start"] = measure_cold_start()
    summary["bench_wall_s"] = time.perf_counter() - t_start
    print()
    print_table(results)
    course = [r for r in results if r["case"].startswith("course/")]
    if course:
        print()
        print("MNIST rows end to end (each engine in a fresh process at its default threads, "
              "not --threads; torch kept: its heap kept, see bench.course):")
        for row in course_table(course):
            print("  ".join(f"{c:>{18 if i == 0 else 10}s}" for i, c in enumerate(row)))
    if long_table(results):
        print()
        print("long sequences, torch also with flush-to-zero (torch.set_flush_denormal(True)):")
        for row in long_table(results):
            print("  ".join(f"{c:>{26 if i == 0 else 9}s}" for i, c in enumerate(row)))
    print()
    print(cpu_header(info))
    print("\n".join(summary_lines(summary)))
    print()
    print(json.dumps({k: v for k, v in summary.items() if k not in ("groups", "overall", "targets")},
                     indent=2))
    out = {"machine": info, "matmul_peak_gflops": peak, "summary": summary, "results": results,
           "argv": sys.argv[1:] if argv is None else list(argv)}
    json_path, md_path, png_path = output_paths(args, info)
    written = []
    if json_path:
        with open(json_path, "w") as f:
            json.dump(out, f, indent=1)
        written.append(json_path)
    if md_path:
        with open(md_path, "w") as f:
            f.write(markdown(out))
        written.append(md_path)
    if png_path and results:
        try:
            plot(results, png_path)
            written.append(png_path)
        except ImportError:
            print("matplotlib not installed: no chart")
    if written:
        print("wrote " + ", ".join(os.path.relpath(p) for p in written))
    return out


if __name__ == "__main__":
    main()

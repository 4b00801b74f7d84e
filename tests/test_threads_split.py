"""Batch splitting across Python threads (fastseq._threads.run_sliced).

The kernels run on disjoint slices of a sorted batch in threads when
``n_jobs > 1``: results must match the single-thread run (to rounding: the
per-step recurrent product may take another code path for fewer rows), be
bit-identical for a fixed thread count, survive ``fork`` and concurrent
callers, and never start numba's threading layer.
"""

import os
import sys
import threading

import numpy as np
import pytest

from fastseq.kernels import _sync
from fastseq import _plan, _threads
from fastseq.nn import Recurrent
from conftest import REFERENCE_MACHINE, answers_of, layer_arrays


@pytest.fixture(autouse=True)
def _split_small_batches(monkeypatch):
    """The package splits a batch (and a matrix product) only from a few
    hand-overs' worth of work (:mod:`fastseq._plan`, millions of
    multiply-adds); the batches here are far smaller, so the thresholds are
    lowered for these tests to run the split paths
    (:func:`test_small_batches_split_here`)."""
    monkeypatch.setattr(_plan.current(), "split_min_work", 100_000)
    monkeypatch.setattr(_plan.current(), "matmul_split_min_work", 100_000)


def _run(cell, n_jobs, dtype="float32", seed=0, bidirectional=True):
    layer = Recurrent(cell, 7, 48, num_layers=2, bidirectional=bidirectional, dtype=dtype,
                      random_state=seed)
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((45, 23, 7)).astype(dtype)
    lengths = rng.integers(1, 24, 45)
    lengths[3] = 23
    with _threads.limit(n_jobs):
        out, _ = layer.forward(X, lengths)
        G = np.random.default_rng(1).standard_normal(out.shape).astype(dtype)
        dX, grads = layer.backward(G)
        out_inf, _ = layer.forward(X, lengths, need_grad=False)
    return out, dX, layer.d_h0.copy(), {k: v.copy() for k, v in grads.items()}, out_inf


def test_small_batches_split_here(monkeypatch):
    """With this module's thresholds :func:`_run` splits its batches (so the
    tests below compare split and unsplit runs), with the reference plan's
    (conftest) it runs them on one thread.  The reference plan is set again
    rather than undone: ``monkeypatch.undo()`` would put back this machine's
    own, measured plan, whose thresholds differ from machine to machine."""
    calls = []
    real = _threads._on_pool
    monkeypatch.setattr(_threads, "_on_pool", lambda bounds, fn: calls.append(len(bounds)) or real(bounds, fn))
    _run("gru", 2)
    assert calls and all(n == 2 for n in calls)
    del calls[:]
    monkeypatch.setattr(_plan, "_current", _plan.Plan.for_machine(_plan.Machine(**REFERENCE_MACHINE)))
    _run("gru", 2)
    assert calls == []


def test_split_bounds_cover_batch():
    for n in (1, 2, 3, 4):
        ls = np.sort(np.random.default_rng(n).integers(1, 50, 37))[::-1]
        b = _threads.split_bounds(ls, n)
        assert b[0][0] == 0 and b[-1][1] == 37
        assert all(b[i][1] == b[i + 1][0] for i in range(len(b) - 1))
        assert all(lo < hi for lo, hi in b) and len(b) <= n


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_split_matches_single_thread(cell, dtype):
    one = _run(cell, 1, dtype)
    two = _run(cell, 2, dtype)
    tol = 2e-5 if dtype == "float32" else 1e-12
    for a, b in zip(one[:3], two[:3]):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)
    for k in one[3]:
        np.testing.assert_allclose(one[3][k], two[3][k], rtol=tol, atol=tol * 10)
    np.testing.assert_allclose(one[4], two[4], rtol=tol, atol=tol)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_fixed_thread_count_is_deterministic(cell):
    a = _run(cell, 2)
    b = _run(cell, 2)
    for x, y in zip(a[:3], b[:3]):
        assert np.array_equal(x, y)
    for k in a[3]:
        assert np.array_equal(a[3][k], b[3][k])


def test_inference_path_matches_training_forward_float32():
    out, _, _, _, out_inf = _run("lstm", 1)
    assert np.array_equal(out, out_inf)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_slices_sharing_one_packed_weight_give_the_same_bits(monkeypatch, cell):
    """A recurrent weight larger than the L2 is packed once for the batch
    slices of a call (:func:`fastseq._threads.packed_for_slices`), which
    all read it: the same values as each slice packing its own, in the
    training forward pass (gates stored, ragged lengths), its backward
    pass and inference."""
    shared = []
    real = _threads.packed_for_slices

    def spy(w, B, work):
        wp = real(w, B, work)
        shared.append(wp.shape[0])
        return wp
    monkeypatch.setattr("fastseq.network.recurrent.packed_for_slices", spy)
    own = _run(cell, 2)      # (weights of a few KB: never shared)
    assert shared and not any(shared)
    del shared[:]
    monkeypatch.setattr(_plan.Plan, "share_packed", lambda self, n, nbytes: True)
    both = _run(cell, 2)
    assert shared and all(shared)
    for a, b in zip(own[:3] + own[4:], both[:3] + both[4:]):
        assert np.array_equal(a, b)
    for k in own[3]:
        assert np.array_equal(own[3][k], both[3][k])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_parallel_projection_shares_one_packed_weight_where_its_blocks_would_call_blas(monkeypatch, dtype,
                                                                                        project_blas_bytes):
    """An input projection split by rows whose weight would send each
    block to BLAS (from PROJECT_BLAS_MIN_BYTES, set to a few KB here) runs
    the packed product from one copy that the threads pack and share
    (``kernels.matmul.project_shared``) while the plan takes it (half the
    L3): every row gets the bits of the packed path of one thread
    (``project`` under the threshold), at 2 and 3 threads, with and
    without a bias, outputs past the strips included, and equals the
    float64 product.  Past half the L3 the blocks call BLAS, as before."""
    from fastseq.kernels import matmul as mm

    rng = np.random.default_rng(4)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    monkeypatch.setattr(_plan.current(), "matmul_split_min_work", 0)
    shared = []
    real = mm.project_shared
    monkeypatch.setattr(mm, "project_shared", lambda *a: shared.append(a[0].shape[0]) or real(*a))
    m, K, M = 301, 64, 37
    inp = rng.standard_normal((m, K)).astype(dtype)
    w = rng.standard_normal((M, K)).astype(dtype)
    for bias in (rng.standard_normal(M).astype(dtype), np.empty(0, dtype)):
        ref = inp.astype(np.float64) @ w.astype(np.float64).T + (bias if bias.size else 0)
        project_blas_bytes(w.nbytes + 1)
        one = np.full((m, M), np.nan, dtype)
        mm.project(inp, w, bias, one)             # the packed path, one thread
        project_blas_bytes(w.nbytes)
        for n in (2, 3):
            del shared[:]
            with _threads.limit(n):
                out = _threads.parallel_project(inp, w, bias, out=np.full((m, M), np.nan, dtype))
            assert len(shared) == n and sum(shared) == m
            np.testing.assert_array_equal(out, one)
            np.testing.assert_allclose(out, ref, rtol=rtol, atol=rtol * np.sqrt(K) * 4)
        del shared[:]
        with monkeypatch.context() as mp, _threads.limit(2):
            mp.setattr(_plan.current(), "l3_bytes", 2 * w.nbytes - 2)
            out = _threads.parallel_project(inp, w, bias)
        assert shared == []
        np.testing.assert_allclose(out, ref, rtol=rtol, atol=rtol * np.sqrt(K) * 4)


def test_backward_after_inference_forward_raises():
    layer = Recurrent("gru", 3, 5)
    layer.forward(np.zeros((2, 4, 3), np.float32), need_grad=False)
    with pytest.raises(RuntimeError):
        layer.backward(np.zeros((2, 4, 5), np.float32))


def test_need_input_grad_false_same_weight_grads():
    layer = Recurrent("lstm", 4, 6, num_layers=2, random_state=0)
    X = np.random.default_rng(0).standard_normal((3, 5, 4)).astype(np.float32)
    with _threads.limit(1):        # bit-identity is promised for a fixed thread count
        out, _ = layer.forward(X)
        G = np.ones_like(out)
        dX, g1 = layer.backward(G)
        g1 = {k: v.copy() for k, v in g1.items()}
        layer.forward(X)
        dX2, g2 = layer.backward(G, need_input_grad=False)
    assert dX2 is None
    for k in g1:
        assert np.array_equal(g1[k], g2[k])


def test_concurrent_callers_and_no_numba_threading_layer():
    # the reference also runs outside the main thread: OpenBLAS itself rounds
    # some single-threaded sgemm shapes differently in the main thread than in
    # any other thread (all other threads agree)
    box = []
    t = threading.Thread(target=lambda: box.append(_run("gru", 2)))
    t.start()
    t.join()
    ref = box[0]
    results = [None] * 4

    def work(i):
        results[i] = _run("gru", 2)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        assert np.array_equal(r[0], ref[0])
    import numba

    with pytest.raises(ValueError):
        numba.threading_layer()  # never started: no parallel region anywhere


@pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "darwin", reason="needs fork")
def test_split_after_fork():
    ref = _run("lstm", 2)  # pool threads exist in the parent
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            out = _run("lstm", 2)
            ok = np.array_equal(out[0], ref[0])
            os.write(w, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(w)
    data = os.read(r, 1)
    os.waitpid(pid, 0)
    assert data == b"1"


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("B", [1, 4])
def test_uniform_length_fast_path_matches_general_packing(cell, B, monkeypatch):
    """Full-length batches skip the sort/index maps; results, gradients and
    the caller's arrays (never modified) are as with the general Packing."""
    from fastseq._data import Packing
    from fastseq.network import recurrent

    def run():
        layer = Recurrent(cell, 3, 5, num_layers=2, bidirectional=True, dtype="float64",
                          random_state=0)
        rng = np.random.default_rng(2)
        X = rng.standard_normal((B, 6, 3))
        h0 = rng.standard_normal((4, B, 5))
        state = (h0, h0.copy()) if cell == "lstm" else h0
        out, hn = layer.forward(X, None, state)
        G = rng.standard_normal(out.shape)
        dhn = rng.standard_normal((4, B, 5))
        copies = [a.copy() for a in (X, h0, G, dhn)]
        kw = {"d_c_n": dhn.copy()} if cell == "lstm" else {}
        dX, grads = layer.backward(G, dhn, **kw)
        for a, c in zip((X, h0, G, dhn), copies):
            assert np.array_equal(a, c)
        return out, dX, layer.d_h0, layer.flat.copy(), {k: v.copy() for k, v in grads.items()}

    fast = run()
    monkeypatch.setattr(recurrent, "_UniformPacking",
                        lambda B, T: Packing(np.full(B, T, dtype=np.int64)))
    slow = run()
    for a, b in zip(fast[:4], slow[:4]):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    for k in fast[4]:
        np.testing.assert_allclose(fast[4][k], slow[4][k], rtol=1e-12, atol=1e-14)


# ----------------------------------------------------------------------------
# Inference with the input projection computed ahead on a second thread

def _spy_pipeline(monkeypatch, every=True):
    """Pipeline every layer (no size threshold; with ``every=False``, the
    plan's threshold); returns the list of the
    ``parallel`` flags of each :func:`run_pipelined` call (a hand-over in
    Python, or the two kernels in turn on this thread) and ``"native"``
    for each pipeline handed over as a compiled task
    (``*_pipelined_native``)."""
    import fastseq.network.recurrent as R
    if every:
        monkeypatch.setattr(_plan.current(), "pipeline_min_work", 0)
    calls = []
    real = R.run_pipelined

    def spy(produce, consume, parallel=True):
        calls.append(parallel)
        return real(produce, consume, parallel)
    monkeypatch.setattr(R, "run_pipelined", spy)
    for name in ("lstm_pipelined_native", "gru_pipelined_native", "rnn_pipelined_native"):
        def native(*a, real_native=getattr(R, name)):
            ran = real_native(*a)
            if ran:
                calls.append("native")
            return ran
        monkeypatch.setattr(R, name, native)
    return calls


@pytest.mark.parametrize("cell,nl", [("rnn", "tanh"), ("rnn", "relu"), ("lstm", "tanh"), ("gru", "tanh")])
@pytest.mark.parametrize("n_jobs", [2, 3])
@pytest.mark.parametrize("dtype,tol", [("float32", 1e-5), ("float64", 1e-12)])
def test_pipelined_inference_equals_the_packed_path(monkeypatch, lingering, cell, nl, n_jobs, dtype, tol):
    """Stacked, bidirectional (the reverse direction's projection is produced
    in run order), bias-free, with initial states, batches of 1 and 3: equal
    to the packed one-thread path to rounding, bit-identical across repeats
    (handed over in Python to a sleeping pool thread, as compiled tasks
    to a polling one) and to the same two kernels run one after the other
    (what a call that cannot take the slot does)."""
    import fastseq.network.recurrent as R
    calls = _spy_pipeline(monkeypatch)
    kw = {"nonlinearity": nl} if cell == "rnn" else {}
    rng = np.random.default_rng(0)
    for B, T, H, bias, layers, bi in [(3, 6, 7, True, 1, False), (1, 37, 33, False, 2, True),
                                      (3, 20, 16, True, 1, True)]:
        layer = Recurrent(cell, 5, H, num_layers=layers, bidirectional=bi, bias=bias, dtype=dtype,
                          random_state=1, **kw).eval()
        X = rng.standard_normal((B, T, 5))
        D = 2 if bi else 1
        h = rng.standard_normal((layers * D, B, H))
        h0 = (h, -h) if cell == "lstm" else h
        ref = layer.forward(X, h0=h0)                     # packed, one thread
        del calls[:]
        with _threads.limit(n_jobs):
            assert layer._inference_plan(B, T) == "one"
            got = layer.forward(X, h0=h0, need_grad=False)
            again = layer.forward(X, h0=h0, need_grad=False)
            assert len(calls) == 2 * layers * D and set(calls) <= {True, "native"}, calls
            assert calls[-layers * D:] == ["native"] * (layers * D)   # (the threads linger by then)
            real = R.run_pipelined
            with monkeypatch.context() as m:
                m.setattr(R, "run_pipelined", lambda p, c, parallel=True: real(p, c, False))
                m.setattr(R, "run_native", lambda *a, **k: False)
                serial = layer.forward(X, h0=h0, need_grad=False)
        flat = lambda r: [r[0]] + (list(r[1]) if isinstance(r[1], tuple) else [r[1]])  # noqa: E731
        for a, b, c, d in zip(flat(got), flat(ref), flat(again), flat(serial)):
            np.testing.assert_allclose(a, b, rtol=tol, atol=tol)
            np.testing.assert_array_equal(a, c)           # deterministic for a thread count
            np.testing.assert_array_equal(a, d)           # and whether or not it overlaps


def test_inference_plan_and_pipeline_threshold(monkeypatch):
    from fastseq.kernels._sync import AVAILABLE as UNITS
    # (a pipeline is handed over in Python, or as a compiled task when the
    # pool thread still lingers after an earlier test's call: either counts)
    calls = _spy_pipeline(monkeypatch, every=False)
    with _threads.limit(2):
        assert Recurrent("lstm", 8, 256).eval()._inference_plan(1, 10) == "one"      # 2.7M: one thread
        # the hidden units split across the threads: batches a batch split
        # would give under two row blocks a thread (B < 16 here), from the
        # reference plan's 8.4M multiply-adds of a pipelined projection
        units = "units" if UNITS else "one"       # (no unit split without the barrier)
        assert Recurrent("lstm", 8, 256).eval()._inference_plan(7, 5) == units       # 9.5M
        assert Recurrent("lstm", 8, 256).eval()._inference_plan(15, 5) in (units, "fused")
        assert Recurrent("lstm", 8, 256).eval()._inference_plan(1, 32) == units
        # [W_ih | W_hh] of 1 MB, over half the reference plan's L2 and within
        # half its L3: units up to 8 row blocks a thread (32 rows), then fused
        assert Recurrent("lstm", 8, 256).eval()._inference_plan(16, 10) == units
        assert Recurrent("lstm", 8, 256).eval()._inference_plan(63, 10) == units
        assert Recurrent("lstm", 8, 256).eval()._inference_plan(64, 10) == "fused"   # split too
        # past half the L3 (4*512*(512+512)*4 bytes: 8 MB), which the fused
        # kernel does not take: up to 16 row blocks (64 rows)
        assert Recurrent("lstm", 512, 512).eval()._inference_plan(127, 10) == units
        assert Recurrent("lstm", 512, 512).eval()._inference_plan(128, 10) is None    # a batch split
        # (a narrow layer's, 20 KB, within it: fused from two row blocks)
        assert Recurrent("lstm", 8, 64).eval()._inference_plan(16, 1000) == "fused"
        assert Recurrent("lstm", 8, 32).eval()._inference_plan(4, 10) == "fused"     # 20 KB: one block
        assert Recurrent("lstm", 8, 32).eval()._inference_plan(3, 10) == "one"
        assert Recurrent("lstm", 8, 32).eval()._inference_plan(8, 1000) == "fused"   # 16 units a thread
        # no split of 62 units (248 gate rows: not whole strips of the packed
        # product, whose bits the one-thread call would not give) ...
        assert Recurrent("lstm", 128, 62).eval()._inference_plan(4, 128) == "one"
        # ... where one slice's projection (4*128*128*248 = 16.3M
        # multiply-adds) goes to the second thread, not into the step product
        assert Recurrent("lstm", 128, 62).eval()._inference_plan(4, 32) == "fused"   # 4.1M: not pipelined
        assert Recurrent("lstm", 128, 64).eval()._inference_plan(4, 128) in (units, "fused")
        # where a projection would reach BLAS (4*512*256 float32: 2 MB) only
        # with a pipeline's work of it (8.4M: the one-thread form computes it
        # ahead, packed, as the parts do), not with less (15 steps: 7.9M)
        assert Recurrent("lstm", 256, 512).eval()._inference_plan(1, 16) == units
        assert Recurrent("lstm", 256, 512).eval()._inference_plan(1, 15) == "one"
        assert Recurrent("lstm", 256, 512, dtype="float64").eval()._inference_plan(1, 64) == units
        assert Recurrent("lstm", 256, 512, dtype="float64").eval()._inference_plan(1, 15) == "one"
        assert Recurrent("lstm", 255, 512).eval()._inference_plan(1, 15) == units
        # a GRU of 64 units a thread or more splits them for batches under two
        # row blocks a thread (B < 16), as the LSTM (under 16 row blocks where
        # its weights pass half the L2, as GRU(8, 256)'s 811 KB, which no
        # fused kernel takes); a narrower
        # one under half a row block (B < 4)
        assert Recurrent("gru", 8, 128).eval()._inference_plan(15, 64) == units
        assert Recurrent("gru", 8, 128).eval()._inference_plan(16, 64) == "one"
        assert Recurrent("gru", 8, 256).eval()._inference_plan(127, 64) == units
        assert Recurrent("gru", 8, 256).eval()._inference_plan(128, 64) is None      # a batch split
        assert Recurrent("gru", 8, 96).eval()._inference_plan(3, 400) == units
        assert Recurrent("gru", 8, 96).eval()._inference_plan(4, 400) == "one"
        assert Recurrent("gru", 8, 112).eval()._inference_plan(1, 400) == "one"    # 56-unit halves: 168 rows
        assert Recurrent("rnn", 8, 256).eval()._inference_plan(1, 64) == "one"
    with _threads.limit(1):
        assert Recurrent("lstm", 128, 62).eval()._inference_plan(4, 128) == "fused"
        assert Recurrent("lstm", 128, 64).eval()._inference_plan(4, 128) == "fused"
    with _threads.limit(2):
        # the reference plan (conftest) splits from 8M multiply-adds a step:
        # one thread below
        assert Recurrent("gru", 8, 128).eval()._inference_plan(16, 100) == "one"     # 0.8M
        assert Recurrent("gru", 8, 256).eval()._inference_plan(128, 100) is None     # 25.2M: batch split
        small = Recurrent("lstm", 8, 32, random_state=0).eval()   # 32*8*128 = 32K multiply-adds
        small.forward(np.ones((1, 32, 8), np.float32), need_grad=False)
        assert calls == []
        mid = Recurrent("lstm", 64, 64, random_state=0).eval()    # 128*64*256 = 2.1M
        mid.forward(np.ones((1, 128, 64), np.float32), need_grad=False)
        assert calls == []
        big = Recurrent("gru", 128, 96, random_state=0).eval()    # 64*128*128*288 = 302M
        # (a narrow GRU: no unit split from B 4, nor a batch split of 1.8M a
        # step)
        big.forward(np.ones((64, 128, 128), np.float32), need_grad=False)
        assert len(calls) == 1 and calls[0] in (True, "native")
    with _threads.limit(1):
        big.forward(np.ones((64, 128, 128), np.float32), need_grad=False)   # one thread: never
    assert len(calls) == 1


def test_training_unit_split_thresholds():
    """LSTM training splits its units while the batch is too small for a
    batch split (under 8 sequences at two threads), for W_hh of a quarter
    of an L2 cache or more (the reference plan's 128 KB: H >= 91 in
    float32) and from a pipeline's work (8M multiply-adds of step
    products), with two threads and no recurrent dropout; never
    otherwise."""
    from fastseq.kernels._sync import AVAILABLE

    no_mask = np.empty((0, 256), np.float32)
    layer = Recurrent("lstm", 8, 256)                                     # 256K multiply-adds a step and row
    with _threads.limit(2):
        assert layer._train_units(1, 32, no_mask) == AVAILABLE           # 8.4M
        assert layer._train_units(7, 32, no_mask) == AVAILABLE
        assert not layer._train_units(1, 31, no_mask)                     # too little work
        assert not layer._train_units(8, 128, no_mask)                    # a batch split's batch
        assert not layer._train_units(1, 128, np.ones((1, 256), np.float32))   # recurrent dropout
        assert Recurrent("lstm", 8, 96)._train_units(1, 256, no_mask[:, :96]) == AVAILABLE   # 144 KB
        assert not Recurrent("lstm", 8, 64)._train_units(1, 1024, no_mask[:, :64])   # 64 KB of weights
    with _threads.limit(1):
        assert not layer._train_units(1, 128, no_mask)                    # one thread


def test_pipeline_concurrent_callers_and_a_failing_producer(monkeypatch):
    """Three threads at once (one overlaps, the others run the same kernels
    in turn: no deadlock, identical results), and a producer that raises
    releases the waiting time loop and its error reaches the caller."""
    _spy_pipeline(monkeypatch)
    layer = Recurrent("lstm", 4, 40, random_state=0).eval()
    X = np.random.default_rng(0).standard_normal((2, 50, 4)).astype(np.float32)
    with _threads.limit(2):
        ref = layer.forward(X, need_grad=False)[0]
    results, errors = [], []

    def work():
        try:
            with _threads.limit(2):
                for _ in range(20):
                    results.append(layer.forward(X, need_grad=False)[0])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "pipelined inference deadlocked"
    assert not errors and len(results) == 60
    for r in results:
        np.testing.assert_array_equal(r, ref)

    import fastseq.network.recurrent as R

    def boom(*args):
        raise MemoryError("producer failed")
    monkeypatch.setattr(R, "project_ahead", boom)
    monkeypatch.setattr(R, "run_native", lambda *a, **k: False)   # (a thread asleep: the Python hand-over)
    done = []

    def failing():
        with _threads.limit(2):
            try:
                layer.forward(X, need_grad=False)
            except MemoryError as exc:
                done.append(str(exc))
    t = threading.Thread(target=failing)
    t.start()
    t.join(timeout=60)
    assert not t.is_alive(), "a failing producer left the time loop waiting"
    assert done == ["producer failed"]


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_pipelined_training_forward_is_bit_identical(monkeypatch, cell):
    """The packed path (training, ragged batches) with the projection
    produced ahead on a second thread: outputs bit-identical to the same
    thread count without it (a row's projection does not depend on how rows
    are grouped); dX and the weight gradients (then computed behind the
    backward loop, in chunks) and all of it close to one thread."""
    import fastseq.network.recurrent as R
    from fastseq.kernels._runtime import PROJECT_BLAS_MIN_BYTES
    rng = np.random.default_rng(0)

    def run(layer, X, lengths, G):
        out, _ = layer.forward(X, lengths)
        dX, g = layer.backward(G)
        return [out, dX] + [v.copy() for v in g.values()]
    real = R.run_pipelined
    for B, T, F, H, L, bi, ragged in [(1, 40, 8, 32, 1, False, False), (3, 30, 5, 24, 2, True, True)]:
        layer = Recurrent(cell, F, H, num_layers=L, bidirectional=bi, random_state=0)
        # the unpipelined projection (project) takes the packed blocks, as
        # project_ahead always does, only below PROJECT_BLAS_MIN_BYTES of
        # weight: the outputs are bit-identical on that side of it
        assert all(w.nbytes < PROJECT_BLAS_MIN_BYTES.get()
                   for k, w in layer.params.items() if k.startswith("weight_ih"))
        X = rng.standard_normal((B, T, F)).astype(np.float32)
        lengths = None
        if ragged:
            lengths = rng.integers(1, T + 1, B)
            lengths[0] = T
        G = rng.standard_normal((B, T, H * (2 if bi else 1))).astype(np.float32)
        calls = []
        with _threads.limit(2):
            monkeypatch.setattr(_plan.current(), "pipeline_min_work", 0)
            monkeypatch.setattr(R, "run_pipelined", lambda *a: calls.append(1) or real(*a))
            piped = run(layer, X, lengths, G)
            monkeypatch.setattr(_plan.current(), "pipeline_min_work", 10 ** 18)
            plain = run(layer, X, lengths, G)
        assert len(calls) == 2 * L * (2 if bi else 1)      # forward and backward
        with _threads.limit(1):
            one = run(layer, X, lengths, G)
        np.testing.assert_array_equal(piped[0], plain[0])
        for a, b, c in zip(piped, plain, one):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_weight_grads_behind_the_backward_loop(monkeypatch, cell):
    """Backward with the weight, bias and input gradients computed a chunk of
    steps at a time on a second thread behind the loop: equal to one thread
    (float64, 1e-11), bit-identical across repeats; ragged and bidirectional
    batches, recurrent dropout, no bias, ``need_input_grad=False``."""
    import fastseq.network.recurrent as R
    monkeypatch.setattr(_plan.current(), "pipeline_min_work", 0)
    calls = []
    real = R.run_pipelined
    monkeypatch.setattr(R, "run_pipelined", lambda *a: calls.append(1) or real(*a))
    rng = np.random.default_rng(0)

    def run(layer, X, lengths, G, need_dx):
        layer._rng = np.random.default_rng(5)           # the same dropout masks each run
        out, _ = layer.forward(X, lengths)
        dX, g = layer.backward(G, need_input_grad=need_dx)
        return [out, layer.d_h0.copy()] + ([dX] if need_dx else []) + [v.copy() for v in g.values()]
    for B, T, F, H, L, bi, rd, bias, need_dx in [(1, 40, 8, 32, 1, False, 0.0, True, True),
                                                  (3, 30, 5, 24, 2, True, 0.0, False, True),
                                                  (4, 70, 16, 40, 1, False, 0.3, True, False)]:
        layer = Recurrent(cell, F, H, num_layers=L, bidirectional=bi, bias=bias, recurrent_dropout=rd,
                          dtype="float64", random_state=0)
        X = rng.standard_normal((B, T, F))
        lengths = rng.integers(1, T + 1, B)
        lengths[0] = T
        G = rng.standard_normal((B, T, H * (2 if bi else 1)))
        del calls[:]
        with _threads.limit(2):
            got = run(layer, X, lengths, G, need_dx)
            again = run(layer, X, lengths, G, need_dx)
        assert len(calls) == 2 * 2 * L * (2 if bi else 1)   # forward and backward, twice
        with _threads.limit(1):
            ref = run(layer, X, lengths, G, need_dx)
        for a, b, c in zip(got, again, ref):
            np.testing.assert_array_equal(a, b)
            np.testing.assert_allclose(a, c, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("layers,bidirectional", [(1, False), (2, True)])
@pytest.mark.parametrize("dtype,tol", [("float32", 2e-5), ("float64", 1e-11)])
def test_lstm_training_unit_split_equals_one_thread(monkeypatch, layers, bidirectional, dtype, tol):
    """Forward (gates stored) and backward with the units split: outputs,
    final states, dX, d_h0, d_c0 and every weight gradient, on a ragged batch."""
    import fastseq.network.recurrent as R
    rng = np.random.default_rng(0)
    layer = Recurrent("lstm", 5, 40, num_layers=layers, bidirectional=bidirectional, dtype=dtype,
                      random_state=1)
    X = rng.standard_normal((3, 7, 5))
    D = 2 if bidirectional else 1
    G = rng.standard_normal((3, 7, D * 40))

    def run():
        out, (hn, cn) = layer.forward(X, [7, 4, 6])
        dX, g = layer.backward(G, d_h_n=np.ones_like(hn), d_c_n=np.ones_like(cn))
        return [out, hn, cn, dX, layer.d_h0.copy(), layer.d_c0.copy()] + [v.copy() for v in g.values()]
    with _threads.limit(1):
        ref = run()
    monkeypatch.setattr(_plan.current(), "unit_split_min_weight_bytes", 0)
    monkeypatch.setattr(_plan.current(), "unit_split_min_units", 1)
    monkeypatch.setattr(_plan.current(), "pipeline_min_work", 0)
    calls = []
    real = R.run_units
    monkeypatch.setattr(R, "run_units", lambda *a: calls.append(1) or real(*a))
    with _threads.limit(2):
        got = run()
        again = run()
    assert len(calls) == 4 * layers * D                  # forward and backward, twice
    for a, b, c in zip(got, ref, again):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)
        np.testing.assert_array_equal(a, c)


def _unit_split_inputs(monkeypatch, layer, rng, B, T):
    """``(X, state, ref)`` for ``layer``: B sequences of T steps, initial
    states (an LSTM's cells -0.5 times its states), the one-thread call's
    arrays; then the plan split units for any work from 8 units a thread."""
    L, D = layer.num_layers, layer.num_directions
    X = rng.standard_normal((B, T, layer.input_size)).astype(layer.dtype)
    h = rng.standard_normal((L * D, B, layer.hidden_size)).astype(layer.dtype)
    state = (h, -0.5 * h) if layer.cell == "lstm" else h
    with _threads.limit(1):
        ref = layer_arrays(layer.forward(X, h0=state, need_grad=False))
    monkeypatch.setattr(_plan.current(), "pipeline_min_work", 0)       # a split for any work
    monkeypatch.setattr(_plan.current(), "unit_split_min_units", 8)
    return X, state, ref


@pytest.mark.skipif(not _sync.AVAILABLE, reason="no unit split without the barrier")
@pytest.mark.parametrize("B", [4, 9])
def test_a_wide_gru_splits_its_units_for_larger_batches_with_the_one_thread_bits(monkeypatch, B):
    """A GRU of twice the plan's least units a thread splits them for
    batches up to two row blocks a thread, as the LSTM does (a narrower
    one only under half a row block), with the one-thread call's bits."""
    layer = Recurrent("gru", 24, 64, bidirectional=True, random_state=1).eval()
    X, state, ref = _unit_split_inputs(monkeypatch, layer, np.random.default_rng(2), B, 30)
    with _threads.limit(2):
        assert layer._inference_plan(B, 30) == "units"
        got = layer_arrays(layer.forward(X, h0=state, need_grad=False))
        monkeypatch.setattr(_plan.current(), "unit_split_min_units", 17)      # 32 units a thread: narrow
        assert layer._inference_plan(B, 30) == "one"
    for a, b in zip(got, ref):
        np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(not _sync.AVAILABLE, reason="no unit split without the barrier")
@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("layers,bidirectional,bias,F,H", [(1, False, True, 24, 64), (2, True, False, 24, 96),
                                                          (1, True, True, 96, 100)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_inference_unit_split_gives_the_one_thread_bits(monkeypatch, cell, layers, bidirectional, bias, F, H,
                                                         dtype):
    """LSTM and GRU inference with the hidden units split across 2 and 3
    threads (``kernels.infer.lstm_units_part``, ``gru_units_part``, a
    barrier a step; H not a multiple of the threads' cuts, given
    initial states, no bias, reverse directions, a stacked layer whose
    input is the first's output) gives the bits of the one-thread call,
    also when another call holds the unit split (the call then runs on its
    own thread); and the packed path's values.  (A GRU split whose parts
    do not fill whole strips of the packed product is not taken: the
    thread counts here are those that do.)"""
    import fastseq.network.recurrent as R
    layer = Recurrent(cell, F, H, num_layers=layers, bidirectional=bidirectional, bias=bias, dtype=dtype,
                      random_state=1).eval()
    B, T, D = 3, 40, 2 if bidirectional else 1
    X, state, ref = _unit_split_inputs(monkeypatch, layer, np.random.default_rng(2), B, T)
    calls = []
    real = R.run_units
    monkeypatch.setattr(R, "run_units", lambda *a: calls.append(1) or real(*a))
    counts = [n for n in (2, 3) if all((layer.num_gates * (j1 - j0) * np.dtype(dtype).itemsize) % 64 == 0
                                       for j0, j1 in _threads.unit_bounds(H, n))]
    if cell == "gru" and (3 * H * np.dtype(dtype).itemsize) % 64:
        counts = []                                      # no whole strips at all: one thread
    for n in counts:
        with _threads.limit(n):
            assert layer._inference_plan(B, T) == "units"
            got = layer_arrays(layer.forward(X, h0=state, need_grad=False))
            with _threads._UnitSlot() as mine:          # the split held by another call
                assert mine
                held = layer_arrays(layer.forward(X, h0=state, need_grad=False))
        for a, b, c in zip(got, ref, held):
            assert a.dtype == np.dtype(dtype)
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(c, b)
    assert len(calls) == len(counts) * layers * D       # once per layer and direction and count
    assert counts == ([] if cell == "gru" and H == 100 else
                      [2] if cell == "gru" and H == 64 and dtype == "float32" else [2, 3])
    tol = 2e-5 if dtype == "float32" else 1e-12
    for a, b in zip(ref, layer_arrays(layer.forward(X, np.full(B, T), h0=state))):   # need_grad: packed
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


@pytest.mark.skipif(not _sync.AVAILABLE, reason="no unit split without the barrier")
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_a_unit_split_whose_projection_reaches_blas_gives_its_own_bits_when_held(monkeypatch, project_blas_bytes,
                                                                                 cell):
    """A layer whose input projection ``project()`` would send to BLAS
    (:data:`fastseq.kernels._runtime.PROJECT_BLAS_MIN_BYTES`, a few KB here)
    splits its units where the one-thread form at the same thread count
    computes that projection ahead (packed, never BLAS, as each part does
    its own share): the split and the call that finds the split held by
    another give the same bits, close to one thread's (BLAS's) values; a
    projection too small to compute ahead keeps the layer from the split."""
    import fastseq.network.recurrent as R
    layer = Recurrent(cell, 40, 64, num_layers=2, bidirectional=True, random_state=1).eval()
    B, T = 3, 30
    project_blas_bytes(4096)     # every projection's weight (at least 3*64*40*4 bytes) reaches BLAS
    X, state, ref = _unit_split_inputs(monkeypatch, layer, np.random.default_rng(2), B, T)
    calls = []
    real = R.run_units
    monkeypatch.setattr(R, "run_units", lambda *a: calls.append(1) or real(*a))
    with _threads.limit(2):
        assert layer._inference_plan(B, T) == "units"
        got = layer_arrays(layer.forward(X, h0=state, need_grad=False))
        with _threads._UnitSlot() as mine:          # the split held by another call
            assert mine
            held = layer_arrays(layer.forward(X, h0=state, need_grad=False))
    assert len(calls) == 4
    for a, b, c in zip(got, held, ref):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, c, rtol=2e-5, atol=2e-5)
    # the first layer's projection (B*T*40*G*64 multiply-adds) under the
    # plan's pipeline work, the call's work above it: one thread
    G = layer.num_gates
    monkeypatch.setattr(_plan.current(), "pipeline_min_work", B * T * 40 * G * 64 + 1)
    with _threads.limit(2):
        assert layer._inference_plan(B, T) == "one"


def _wait_for_state(worker, state):
    """Wait (up to 5 s) until the pool thread ``worker`` is in ``state``."""
    for _ in range(5000):
        if worker.state[0] == state:
            return
        threading.Event().wait(0.001)
    pytest.fail(f"the pool thread never reached state {state}")


def _asleep_pool_thread(monkeypatch):
    """The thread of the one-thread pool, asleep on its queue (a task with
    no linger after it); from then on it lingers until claimed after each
    task (``LINGER_SPINS`` set high: end it with a short linger's task)."""
    from fastseq.kernels._sync import IDLE
    worker = _threads._pool(1).workers[0]
    monkeypatch.setattr(_threads, "LINGER_SPINS", 0)
    _threads._start(1, [int])()
    _wait_for_state(worker, IDLE)
    monkeypatch.setattr(_threads, "LINGER_SPINS", 10 ** 12)
    return worker


@pytest.fixture
def lingering(monkeypatch):
    """Pool threads that linger (the GIL released) until the next
    hand-over claims them, so that a unit split always finds them there;
    a last hand-over with a short linger lets them go idle after the test."""
    monkeypatch.setattr(_threads, "LINGER_SPINS", 10 ** 12)
    yield
    monkeypatch.setattr(_threads, "LINGER_SPINS", 200)
    for n in (1, 2):
        _threads._start(n, [int] * n, _threads._pool(n))()


@pytest.mark.skipif(not _sync.AVAILABLE, reason="no unit split without the barrier")
@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_unit_split_as_compiled_tasks_gives_the_one_thread_bits(monkeypatch, lingering, cell, dtype):
    """A unit split handed to lingering pool threads as compiled tasks
    (``kernels._sync.split_native``: each part a cfunc called by its
    address, no Python on either side) is taken once the pool threads
    linger, at 2 and 3 threads, and gives the bits of the one-thread call
    (both directions, given initial states)."""
    import fastseq.network.recurrent as R
    layer = Recurrent(cell, 24, 96, bidirectional=True, dtype=dtype, random_state=1).eval()
    X, state, ref = _unit_split_inputs(monkeypatch, layer, np.random.default_rng(2), 2, 30)
    answers = answers_of(monkeypatch, R, f"{cell}_units_native")
    for n in (2, 3):
        answers.clear()
        with _threads.limit(n):
            assert layer._inference_plan(2, 30) == "units"
            for _ in range(3):
                for a, b in zip(layer_arrays(layer.forward(X, h0=state, need_grad=False)), ref):
                    np.testing.assert_array_equal(a, b)
        assert len(answers) == 6 and answers[-4:] == [True] * 4, answers   # (the first: threads asleep)


@pytest.mark.skipif(not _sync.AVAILABLE, reason="no unit split without the barrier")
def test_a_lingering_only_unit_split_runs_on_one_thread_until_the_thread_lingers(monkeypatch, lingering):
    """Below the plan's work for a split from idle, a call splits its units
    only as compiled tasks on lingering threads (plan
    ``"units-lingering"``): with its pool thread asleep it runs on its own
    thread (no part handed over in Python) and rouses the thread, which
    then lingers, so that the next call splits; both give the one-thread
    bits."""
    import fastseq.network.recurrent as R
    from fastseq.kernels._sync import LINGER
    layer = Recurrent("gru", 24, 96, random_state=1).eval()
    X = np.random.default_rng(2).standard_normal((1, 20, 24)).astype(np.float32)
    with _threads.limit(1):
        ref = layer_arrays(layer.forward(X, need_grad=False))
    monkeypatch.setattr(_plan.current(), "pipeline_min_work", 1 << 62)   # never from idle
    monkeypatch.setattr(_plan.current(), "matmul_split_min_work", 1 << 62)   # (nothing else on the pool)
    monkeypatch.setattr(_plan.current(), "lingering_units_min_work", 0)
    monkeypatch.setattr(_plan.current(), "unit_split_min_units", 8)
    answers, python_parts = answers_of(monkeypatch, R, "gru_units_native"), []
    real_part = R.gru_units_part
    monkeypatch.setattr(R, "gru_units_part", lambda *a: python_parts.append(1) or real_part(*a))
    worker = _asleep_pool_thread(monkeypatch)
    with _threads.limit(2):
        assert layer._inference_plan(1, 20) == "units-lingering"
        got = layer_arrays(layer.forward(X, need_grad=False))
        assert answers == [False] and not python_parts
        _wait_for_state(worker, LINGER)                     # roused: it lingers now
        again = layer_arrays(layer.forward(X, need_grad=False))
        assert answers == [False, True] and not python_parts
    for a, b, c in zip(got, again, ref):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, c)


@pytest.mark.skipif(not _sync.AVAILABLE, reason="no unit split without the barrier")
@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("tier", ["units", "units-lingering"])
def test_small_unit_split_call_gives_the_general_paths_bits(monkeypatch, lingering, cell, tier):
    """A one-layer, one-way inference call whose kept route is a unit
    split (from idle, its projection ahead when the split's slot is taken;
    or only on lingering threads, else on one thread) at batch 1 and 3
    goes through ``Recurrent._small_call`` (not ``_forward_infer``), splits
    as compiled tasks, and gives the one-thread bits; so does it with the
    slot taken by another call (then on this thread)."""
    import contextlib

    import fastseq.network.recurrent as R
    layer = Recurrent(cell, 24, 96, random_state=1).eval()
    rng = np.random.default_rng(2)
    refs = {}
    for B in (1, 3):
        X = rng.standard_normal((B, 20, 24)).astype(np.float32)
        with _threads.limit(1):
            refs[B] = (X, layer_arrays(layer.forward(X, need_grad=False)))
    monkeypatch.setattr(_plan.current(), "unit_split_min_units", 8)
    monkeypatch.setattr(_plan.current(), "matmul_split_min_work", 1 << 62)
    if tier == "units":
        monkeypatch.setattr(_plan.current(), "pipeline_min_work", 0)
    else:
        monkeypatch.setattr(_plan.current(), "pipeline_min_work", 1 << 62)
        monkeypatch.setattr(_plan.current(), "lingering_units_min_work", 0)
    general = []
    real = Recurrent._forward_infer
    monkeypatch.setattr(Recurrent, "_forward_infer", lambda self, *a: general.append(1) or real(self, *a))
    answers = answers_of(monkeypatch, R, f"{cell}_units_native")
    worker = _threads._pool(1).workers[0]
    with _threads.limit(2):
        for B, (X, ref) in refs.items():
            general.clear()
            layer.forward(X, need_grad=False)                  # the first call: the general path
            assert layer._inference_route(B, 20)[0] == tier and general == [1]
            answers.clear()
            for i in range(3):
                if i:   # (a thread roused by the call before may still be waking on a busy machine)
                    _wait_for_state(worker, _sync.LINGER)
                for a, b in zip(layer_arrays(layer.forward(X, need_grad=False)), ref):
                    np.testing.assert_array_equal(a, b)
            assert general == [1] and answers[-2:] == [True, True], answers
            with monkeypatch.context() as m:
                m.setattr(R, "unit_split_slot", lambda: contextlib.nullcontext(False))
                for a, b in zip(layer_arrays(layer.forward(X, need_grad=False)), ref):
                    np.testing.assert_array_equal(a, b)
            assert general == [1] and len(answers) == 3


def test_split_watch_takes_the_faster_form_and_keeps_timing_the_other():
    """A route's SplitWatch splits every call but one in WATCH_EVERY (its
    one-thread form); once each form has WATCH_KEEP timings it takes the
    form with the fastest of them, and keeps timing the other one call in
    WATCH_EVERY, so it turns back when that form is faster again; slow
    calls among fast ones (after an idle moment) do not turn it."""
    from fastseq._threads import ONE, SPLIT, WATCH_EVERY, WATCH_KEEP, SplitWatch

    w = SplitWatch()
    forms = []
    for _ in range(WATCH_EVERY * WATCH_KEEP):
        form = w.form_now()
        forms.append(form)
        w.record(form, 2.0 if form == SPLIT else 1.0)       # the split slower
    assert forms.count(ONE) == WATCH_KEEP and forms[WATCH_EVERY - 1] == ONE
    assert w.best == ONE
    forms = []
    while w.best == ONE:
        form = w.form_now()
        forms.append(form)
        w.record(form, 0.5 if form == SPLIT else 1.0)       # the split faster again
    # (it turns at the first fast split)
    assert len(forms) == WATCH_EVERY and forms.count(SPLIT) == 1
    assert [w.form_now() for _ in range(WATCH_EVERY - 1)] == [SPLIT] * (WATCH_EVERY - 1)
    for t in (5.0, 4.0):                              # two slow splits after a pause
        w.record(SPLIT, t)
    assert w.best == SPLIT


def test_split_watch_judges_the_form_in_use_by_its_last_calls():
    """The form in use is judged by the fastest of its last WATCH_EVERY
    calls: a run of slow calls after an idle moment (longer than
    WATCH_KEEP) does not turn the route to a form slower than the split's
    usual speed, a slowdown that lasts WATCH_EVERY calls does."""
    from fastseq._threads import ONE, SPLIT, WATCH_EVERY, WATCH_KEEP, SplitWatch

    w = SplitWatch()

    def run(calls, split_s, one_s=1.5):
        forms = []
        for _ in range(calls):
            form = w.form_now()
            forms.append(form)
            w.record(form, split_s if form == SPLIT else one_s)
        return forms
    run(WATCH_EVERY * WATCH_KEEP, 1.0)
    assert w.best == SPLIT
    for _ in range(3):
        # slow calls after a pause, WATCH_KEEP of them just before a
        # comparison (the one-thread form's call) and more after it
        run((-WATCH_KEEP - 1 - w.calls) % WATCH_EVERY, 1.0)
        burst = run(2 * WATCH_KEEP, 4.0)
        assert burst[WATCH_KEEP] == ONE and ONE not in burst[WATCH_KEEP + 1:]
        assert w.best == SPLIT
    run(2 * WATCH_EVERY, 4.0)               # the split slower for good
    assert w.best == ONE


def test_split_watch_of_three_forms_times_each_other_form_in_turn():
    """With the split by sequences as a third form, each call in
    WATCH_EVERY takes one of the two forms not in use, in turn; the watch
    takes the fastest median once all three have WATCH_KEEP timings, ties
    going to the earlier form (split, one thread, sequences)."""
    from fastseq._threads import ONE, SLICES, SPLIT, WATCH_EVERY, WATCH_KEEP, SplitWatch

    w = SplitWatch(3)
    cost = {SPLIT: 3.0, ONE: 2.0, SLICES: 1.0}
    forms = []
    for _ in range(2 * WATCH_EVERY * WATCH_KEEP):
        form = w.form_now()
        forms.append(form)
        w.record(form, cost[form])
    others = forms[WATCH_EVERY - 1::WATCH_EVERY]
    assert others == [ONE, SLICES] * WATCH_KEEP
    assert forms.count(SPLIT) == len(forms) - 2 * WATCH_KEEP
    assert w.best == SLICES
    assert [w.form_now() for _ in range(WATCH_EVERY - 1)] == [SLICES] * (WATCH_EVERY - 1)
    # (from the sequences, the next comparison calls take the other two in turn)
    w.calls = 0
    assert [w.form_now() for _ in range(2 * WATCH_EVERY)][WATCH_EVERY - 1::WATCH_EVERY] in ([SPLIT, ONE], [ONE, SPLIT])
    tie = SplitWatch(3)
    tie.times = [[1.0] * WATCH_KEEP, [1.0] * WATCH_KEEP, [1.0] * (WATCH_KEEP - 1)]
    tie.record(SLICES, 1.0)
    assert tie.best == SPLIT


@pytest.mark.skipif(not _sync.AVAILABLE, reason="no unit split without the barrier")
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_small_unit_split_call_runs_one_thread_while_its_watch_says_so(monkeypatch, lingering, cell):
    """A small call whose kept route is a unit split runs its one-thread
    form (not split, the same bits) while the route's SplitWatch finds the
    split slower, timing that form; and split again once it does not."""
    import fastseq.network.recurrent as R
    from fastseq._threads import ONE, SPLIT
    layer = Recurrent(cell, 24, 96, random_state=1).eval()
    X = np.random.default_rng(2).standard_normal((1, 20, 24)).astype(np.float32)
    with _threads.limit(1):
        ref = layer_arrays(layer.forward(X, need_grad=False))
    monkeypatch.setattr(_plan.current(), "unit_split_min_units", 8)
    monkeypatch.setattr(_plan.current(), "matmul_split_min_work", 1 << 62)
    monkeypatch.setattr(_plan.current(), "pipeline_min_work", 0)
    answers = answers_of(monkeypatch, R, f"{cell}_units_native")
    with _threads.limit(2):
        layer.forward(X, need_grad=False)
        assert layer._inference_route(1, 20)[0] == "units"
        layer.forward(X, need_grad=False)
        watch = layer._inference_route(1, 20)[4]
        assert len(watch.times) == 2     # (batch 1: no split by sequences)
        watch.calls, watch.best, watch.times[ONE] = 0, ONE, []
        answers.clear()
        for _ in range(3):
            for a, b in zip(layer_arrays(layer.forward(X, need_grad=False)), ref):
                np.testing.assert_array_equal(a, b)
        assert answers == [] and len(watch.times[ONE]) == 3
        watch.best = SPLIT
        for a, b in zip(layer_arrays(layer.forward(X, need_grad=False)), ref):
            np.testing.assert_array_equal(a, b)
        assert answers == [True]
    assert "_plans" not in layer.__getstate__()    # (nor the watch: it is the route's)


@pytest.mark.skipif(not _sync.AVAILABLE, reason="no unit split without the barrier")
@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_small_call_split_by_sequences_gives_the_one_thread_bits(monkeypatch, lingering, cell, dtype):
    """A small call whose kept route is a unit split, while its SplitWatch
    takes the split by sequences (more than one sequence), runs each
    thread's sequences as a compiled task (``kernels.infer.lstm_units_slice``,
    ``gru_units_slice``) and gives the bits of the route's one-thread form
    and of its split by units, the output, ``h_n`` and ``c_n``; at 2 and 3
    threads, batches of 2, 3 and 5 (two sequences on three threads: two
    parts)."""
    import fastseq.network.recurrent as R
    from fastseq._threads import ONE, SLICES, SPLIT
    monkeypatch.setattr(_plan.current(), "unit_split_min_units", 8)
    monkeypatch.setattr(_plan.current(), "matmul_split_min_work", 1 << 62)
    monkeypatch.setattr(_plan.current(), "pipeline_min_work", 0)
    layer = Recurrent(cell, 24, 96, dtype=dtype, random_state=1).eval()
    rng = np.random.default_rng(3)
    native = answers_of(monkeypatch, R, f"{cell}_units_native")
    for B in (2, 3, 5):
        X = rng.standard_normal((B, 20, 24)).astype(dtype)
        for n in (2, 3):
            with _threads.limit(n):
                layer.forward(X, need_grad=False)
                route = layer._inference_route(B, 20)
                assert route[0] == "units" and len(route[4].times) == 3
                watch = route[4]
                got = {}
                for form in (ONE, SPLIT, SLICES):
                    watch.calls, watch.best = 0, form
                    native.clear()
                    for _ in range(3):
                        got[form] = layer_arrays(layer.forward(X, need_grad=False))
                    assert (native == []) if form == ONE else (native[-2:] == [True, True]), (form, native)
                assert len(watch.times[SLICES]) == 3 and len(watch.times[ONE]) == 3
                for form in (SPLIT, SLICES):
                    for a, b in zip(got[form], got[ONE]):
                        np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(not _sync.AVAILABLE, reason="no unit split without the barrier")
@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("reverse", [False, True])
def test_sequence_slices_give_the_unit_parts_bits(cell, reverse):
    """The split by sequences' parts (``lstm_units_slice``,
    ``gru_units_slice``: batch-major rows, every unit) over any slicing of
    the batch, one after the other on this thread, give the bits of one
    part over the whole batch (``lstm_units_part``), from given states,
    in either direction; every output is written, and an empty slice
    writes nothing."""
    from fastseq.kernels.infer import gru_units_part, gru_units_slice, lstm_units_part, lstm_units_slice
    F, H, B, T = 20, 96, 5, 13
    layer = Recurrent(cell, F, H, random_state=4).eval()
    w_ih, w_hh, b_ih, b_hh = layer._bound_weights()[0]
    bias, b_hn = layer._input_bias(b_ih, b_hh), layer._candidate_bias(b_hh)
    rng = np.random.default_rng(6)
    inp = rng.standard_normal((B * T, F)).astype(np.float32)
    h0 = rng.standard_normal((B, H)).astype(np.float32)
    c0 = 0.5 * h0

    def fresh():
        return [np.full((B * T, H), np.nan, np.float32), np.full((B, H), np.nan, np.float32),
                np.full((B, H), np.nan, np.float32)]
    ref = fresh()
    flags = np.zeros(_sync.STRIDE, np.int64)
    if cell == "lstm":
        lstm_units_part(inp, w_ih, bias, w_hh, h0, c0, reverse, 0, H, 0, flags, *ref, True)
    else:
        gru_units_part(inp, w_ih, bias, b_hn, w_hh, h0, reverse, 0, H, 0, flags, *ref[:2], True)
        ref[2][...] = 0
    for cuts in ([0, 5], [0, 2, 5], [0, 1, 3, 5], [0, 0, 4, 5]):
        got = fresh()
        if cell == "gru":
            got[2][...] = 0
        for b0, b1 in zip(cuts[:-1], cuts[1:]):
            flags = np.zeros(_sync.STRIDE, np.int64)
            if cell == "lstm":
                lstm_units_slice(inp, w_ih, bias, w_hh, h0, c0, reverse, b0, b1, 0, flags, *got)
            else:
                gru_units_slice(inp, w_ih, bias, b_hn, w_hh, h0, reverse, b0, b1, 0, flags, *got[:2])
        for a, b in zip(got, ref):
            np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(not _sync.AVAILABLE, reason="no unit split without the barrier")
@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("reverse", [False, True])
def test_batch_major_unit_split_parts_give_the_step_major_bits(cell, reverse):
    """The unit split's parts with batch-major rows (``b*T + t``: what
    ``Recurrent._small_call`` hands them, a view of X in and the array it
    returns out, no transposed copy) give the step-major parts' bits, row
    for row, at 2 and 3 threads, in either direction, from given states;
    every output is written."""
    from fastseq.kernels.infer import gru_units_part, lstm_units_part
    F, H, B, T = 20, 96, 5, 13
    layer = Recurrent(cell, F, H, random_state=4).eval()
    w_ih, w_hh, b_ih, b_hh = layer._bound_weights()[0]
    bias, b_hn = layer._input_bias(b_ih, b_hh), layer._candidate_bias(b_hh)
    rng = np.random.default_rng(5)
    X = rng.standard_normal((B, T, F)).astype(np.float32)
    h0 = rng.standard_normal((B, H)).astype(np.float32)
    c0 = 0.5 * h0
    for n in (2, 3):
        got = {}
        for major in (False, True):
            inp = X.reshape(B * T, F) if major else np.ascontiguousarray(X.swapaxes(0, 1)).reshape(T * B, F)
            out = np.full((B * T, H), np.nan, np.float32)
            hn, cn = np.full((B, H), np.nan, np.float32), np.full((B, H), np.nan, np.float32)

            def part(tid, j0, j1, flags):
                if cell == "lstm":
                    lstm_units_part(inp, w_ih, bias, w_hh, h0, c0, reverse, j0, j1, tid, flags, out, hn, cn, major)
                else:
                    gru_units_part(inp, w_ih, bias, b_hn, w_hh, h0, reverse, j0, j1, tid, flags, out, hn, major)
            with _threads.limit(n):
                assert _threads.run_units(part, H)
            rows = out.reshape(B, T, H) if major else out.reshape(T, B, H).swapaxes(0, 1)
            got[major] = (rows, hn) if cell == "gru" else (rows, hn, cn)
        for a, b in zip(got[True], got[False]):
            assert not np.isnan(a).any()
            np.testing.assert_array_equal(a, b)


def test_inference_holds_blas_only_for_a_split_projection(monkeypatch):
    """The BLAS setting of an inference route (``Recurrent._kernel_blas``)
    follows its layers' projection modes: a projection computed ahead on a
    pool thread (or in a unit split's parts) runs the packed product and
    takes none, even where ``parallel_matmul`` would split it (the
    setting cost 5 us, and kept ``_small_call`` from a unit split's
    call); one split across threads by ``parallel_matmul`` (BLAS) holds
    BLAS at one thread."""
    layer = Recurrent("gru", 32, 64, random_state=0).eval()
    plan = _plan.current()
    monkeypatch.setattr(plan, "matmul_split_min_work", 0)
    with _threads.limit(2):
        monkeypatch.setattr(plan, "pipeline_min_work", 0)
        route = layer._inference_route(4, 20)
        assert route[3] == ("ahead",) and route[2] is False
        monkeypatch.setattr(plan, "pipeline_min_work", _plan.NEVER)
        route = layer._inference_route(4, 20)
        assert route[3] == ("split",) and route[2] is True


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fused_batch_split_as_compiled_tasks_gives_the_python_hand_overs_bits(monkeypatch, lingering, dtype):
    """An LSTM inference batch split of the fused kernel
    (``kernels.infer.lstm_fused_slice``) handed to lingering pool threads
    as compiled tasks (``kernels.infer_native.lstm_fused_native``) is
    taken once they linger, and gives the bits of the same slices handed
    over in Python (both directions, a stacked layer, given states); the
    slices also give the values of the one-thread call."""
    import fastseq.network.recurrent as R
    layer = Recurrent("lstm", 12, 32, num_layers=2, bidirectional=True, dtype=dtype, random_state=3).eval()
    rng = np.random.default_rng(4)
    B, T = 16, 20
    X = rng.standard_normal((B, T, 12)).astype(dtype)
    h = rng.standard_normal((4, B, 32)).astype(dtype)
    state = (h, 0.5 * h)
    monkeypatch.setattr(_plan.current(), "split_min_work", 0)
    answers = answers_of(monkeypatch, R, "lstm_fused_native")
    with _threads.limit(2):
        assert layer._inference_route(B, T)[:2] == ("fused", 2)
        native = [layer_arrays(layer.forward(X, h0=state, need_grad=False)) for _ in range(3)]
        assert len(answers) == 12 and answers[-4:] == [True] * 4, answers
        monkeypatch.setattr(_threads, "LINGER_SPINS", 0)        # the same slices, handed over in Python
        python = layer_arrays(layer.forward(X, h0=state, need_grad=False))
    with _threads.limit(1):
        ref = layer_arrays(layer.forward(X, h0=state, need_grad=False))
    tol = 2e-5 if dtype == "float32" else 1e-12
    for got in native:
        for a, b, c in zip(got, python, ref):
            np.testing.assert_array_equal(a, b)
            np.testing.assert_allclose(a, c, rtol=tol, atol=tol)


def test_a_lingering_only_batch_split_runs_its_slices_here_until_the_thread_lingers(monkeypatch, lingering):
    """Below the plan's work for a batch split from idle, the fused LSTM's
    inference splits its batch only as compiled tasks on polling threads
    (plan ``"fused-lingering"``): with its pool thread asleep it runs the
    whole batch in one slice on its own thread (nothing handed over in
    Python) and rouses the thread; the next call splits.  Both give the
    bits of the split."""
    import fastseq.network.recurrent as R
    from fastseq.kernels._sync import LINGER
    layer = Recurrent("lstm", 12, 32, bidirectional=True, random_state=3).eval()
    X = np.random.default_rng(4).standard_normal((16, 20, 12)).astype(np.float32)
    monkeypatch.setattr(_plan.current(), "split_min_work", 1 << 62)          # never from idle
    monkeypatch.setattr(_plan.current(), "pipeline_min_work", 1 << 62)
    monkeypatch.setattr(_plan.current(), "lingering_split_min_work", 0)
    answers, pool_slices = answers_of(monkeypatch, R, "lstm_fused_native"), []
    real_on_pool = R._on_pool
    monkeypatch.setattr(R, "_on_pool", lambda *a: pool_slices.append(1) or real_on_pool(*a))
    worker = _asleep_pool_thread(monkeypatch)
    with _threads.limit(2):
        assert layer._inference_route(16, 20)[:2] == ("fused-lingering", 2)
        here = layer_arrays(layer.forward(X, need_grad=False))
        assert answers[0] is False and not pool_slices   # (the reverse direction may find it roused)
        _wait_for_state(worker, LINGER)
        split = layer_arrays(layer.forward(X, need_grad=False))
        assert answers[-2:] == [True, True] and not pool_slices
    for a, b in zip(here, split):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("B", [2, 3, 5])
def test_a_batch_of_few_rows_a_thread_splits_on_lingering_threads(monkeypatch, lingering, B):
    """A batch too small for a row block a thread (fewer than
    ``min_split_rows`` sequences each) of an LSTM too narrow for a unit
    split splits across lingering threads all the same
    (:meth:`fastseq._plan.Plan.batch_split_few_rows`): the split, and the
    whole batch on the caller's thread when its pool thread sleeps, give
    the same bits, and the values of the one-thread call.  A layer wide
    enough for a unit split keeps it."""
    import fastseq.network.recurrent as R
    layer = Recurrent("lstm", 12, 16, random_state=3).eval()
    X = np.random.default_rng(4).standard_normal((B, 20, 12)).astype(np.float32)
    monkeypatch.setattr(_plan.current(), "split_min_work", 1 << 62)          # never from idle
    monkeypatch.setattr(_plan.current(), "lingering_split_min_work", 0)
    answers = answers_of(monkeypatch, R, "lstm_fused_native")
    worker = _asleep_pool_thread(monkeypatch)
    with _threads.limit(2):
        route = layer._inference_route(B, 20)
        assert route[:2] == ("fused-lingering", 2) and route[3][0] == (0, (B + 1) // 2), route
        here = layer_arrays(layer.forward(X, need_grad=False))
        assert answers == [False]
        _wait_for_state(worker, _sync.LINGER)
        split = layer_arrays(layer.forward(X, need_grad=False))
        assert answers[-1] is True
        wide = Recurrent("lstm", 12, 64, random_state=3).eval()
        assert wide._inference_route(B, 20)[0] != "fused-lingering"
    with _threads.limit(1):
        ref = layer_arrays(layer.forward(X, need_grad=False))
    for a, b, c in zip(here, split, ref):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, c, rtol=2e-5, atol=2e-5)


def test_a_compiled_split_runs_nothing_without_a_lingering_thread():
    """``split_native`` claims every pool thread it needs before anything
    runs: when one is not lingering (idle here) it answers False, leaves
    the threads it had claimed lingering and the descriptions as they were,
    and calls no part (the description's function address is 0)."""
    from fastseq.kernels._sync import DESC_LEN, IDLE, LINGER
    states = np.zeros((2, _sync.STRIDE), dtype=np.int64)
    states[0, 0], states[1, 0] = LINGER, IDLE
    descs = np.zeros((2, DESC_LEN), dtype=np.int64)
    own = np.zeros(DESC_LEN, dtype=np.int64)
    bounds = np.array([[0, 8], [8, 16], [16, 24]], dtype=np.int64)
    flags = np.zeros(3 * _sync.STRIDE, dtype=np.int64)
    assert not _sync.split_native(states, descs, own, bounds, flags)
    assert states[0, 0] == LINGER and states[1, 0] == IDLE
    assert not descs.any() and not own.any() and not flags.any()


def test_unit_split_parts_that_fail_or_mark_no_start_release_the_others():
    """``run_units``: a pool thread's part that raises before its kernel
    runs, or one that never marks its start (plain Python), neither leaves
    the caller waiting for the start mark nor a kernel part waiting at its
    barrier or for the caller's join; the first error reaches the caller."""
    from fastseq.kernels.infer import lstm_units_part

    layer = Recurrent("lstm", 16, 64, random_state=0).eval()
    W_ih, W_hh, b_ih, b_hh = layer._weights(0, 0)
    B, T, H = 1, 20, 64
    inp = np.ones((T * B, 16), np.float32)
    out_h = np.zeros((T * B, H), np.float32)
    hn, cn = np.zeros((B, H), np.float32), np.zeros((B, H), np.float32)
    z = np.zeros((B, H), np.float32)
    args = (inp, np.ascontiguousarray(W_ih), b_ih + b_hh, np.ascontiguousarray(W_hh), z, z, False)

    def kernel(tid, j0, j1, flags):
        lstm_units_part(*args, j0, j1, tid, flags, out_h, hn, cn, False)
    seen = []

    def part(tid, j0, j1, flags):
        if tid == 0:
            kernel(tid, j0, j1, flags)
        else:
            seen.append(tid)
            raise ValueError("part failed")
    with _threads.limit(2):
        with pytest.raises(ValueError, match="part failed"):
            _threads.run_units(part, H)
        assert seen == [1]
        quiet = []
        _threads.run_units(lambda tid, j0, j1, flags: quiet.append((tid, j0, j1)), H)   # no start mark
        assert sorted(quiet) == [(0, 0, 32), (1, 32, 64)]
        _threads.run_units(kernel, H)                     # and the pool still works
    with _threads.limit(1):
        ref = layer.forward(np.ones((B, T, 16), np.float32), need_grad=False)[0]
    np.testing.assert_array_equal(out_h.reshape(T, B, H).swapaxes(0, 1), ref)


@pytest.mark.skipif(not _sync.AVAILABLE, reason="no compiled tasks without the barrier")
@pytest.mark.parametrize("kind", ["lstm", "gru", "fused"])
def test_compiled_parts_that_fail_release_the_others_and_raise(lingering, kind):
    """A compiled part (a unit split's, a fused batch slice's) whose
    allocation fails cannot pass its exception out of its cfunc: it marks
    the split's flags and releases the barriers, so no thread waits for
    it (no hang), and the call raises ``MemoryError`` in Python; the pool
    then runs the next call as usual.  The failure is made by describing
    ``W_ih`` of 2**40 columns (the unit split's own rows of it) or an
    input of 2**40 columns (the fused slice's row buffer): in the unit split only the pool thread's
    part fails (the caller's has no units, so allocates no row of the
    weights) and the caller's part runs its barriers."""
    from fastseq.kernels import infer_native as N
    cell = "gru" if kind == "gru" else "lstm"
    layer = Recurrent(cell, 8, 64, random_state=0).eval()
    w_ih, w_hh, b_ih, b_hh = layer._bound_weights()[0]
    B, T, H = 4, 6, 64
    X = np.random.default_rng(0).standard_normal((B, T, 8)).astype(np.float32)
    inp = np.ascontiguousarray(X.swapaxes(0, 1)).reshape(T * B, 8)
    out, hn, cn = np.zeros((T * B, H), np.float32), np.zeros((B, H), np.float32), np.zeros((B, H), np.float32)
    z = np.zeros((B, H), np.float32)
    bias = layer._input_bias(b_ih, b_hh)
    fn = N.part_address(kind, np.float32)
    if kind == "fused":
        from fastseq._workspace import scratch_arrays
        from fastseq.kernels.infer import fused_weights
        w_cat, wp, fb = scratch_arrays("test_fused", ((4 * H, 8 + H), (4 * H // 16, 8 + H, 16), (4 * H,)),
                                       np.dtype(np.float32))
        fused_weights(w_ih, w_hh, b_ih, b_hh, w_cat, wp, fb, False)
        bounds = np.array([[0, 2], [2, 4]], dtype=np.int64)
        binp = X.reshape(B * T, 8)

        def describe(own, flags):
            N.lstm_fused_desc(own, fn, binp, w_cat, wp, fb, z, z, False, out, 0, hn, cn, flags)
            return 2                    # (the input's columns: the slice's buffer of F + H)
    else:
        bounds = np.array([[0, 0], [0, H]], dtype=np.int64)

        def describe(own, flags):
            if kind == "lstm":
                N.lstm_units_desc(own, fn, inp, w_ih, bias, w_hh, z, z, False, flags, out, hn, cn, False)
            else:
                N.gru_units_desc(own, fn, inp, w_ih, bias, layer._candidate_bias(b_hh), w_hh, z, False, flags,
                                 out, hn, False)
            return 3 + 2                # (W_ih's columns: a part's own rows of W_ih)

    def native(states, descs, own, b, flags, fail):
        k = describe(own, flags)
        if fail:
            own[N.DESC_ARRAYS + k] = 2 ** 40
        return _sync.split_native(states, descs, own, b, flags)

    def call(fail):
        # (repeated until the pool thread is found lingering: the first may rouse it)
        for _ in range(400):
            flags = np.zeros(2 * _sync.STRIDE, dtype=np.int64)
            if _threads.run_native(bounds, flags, lambda *a: native(*a, fail), rouse=True):
                return flags
            threading.Event().wait(0.001)
        pytest.fail("the pool thread never lingered")
    got = {}

    def failing():
        try:
            call(True)
        except BaseException as e:     # noqa: BLE001 - what the call raised, checked below
            got["error"] = e
    with _threads.limit(2):
        t = threading.Thread(target=failing, daemon=True)
        t.start()
        t.join(30)
        assert not t.is_alive(), "a failed compiled part left the call waiting"
        assert isinstance(got.get("error"), MemoryError), got
        flags = call(False)                       # the pool runs the next call
        assert not flags[_sync.FAILED]
        if kind != "fused":
            ref = layer_arrays(layer.forward(X, need_grad=False))
    if kind != "fused":   # (the layer's own route here is another: its values)
        np.testing.assert_allclose(out.reshape(T, B, H).swapaxes(0, 1), ref[0], rtol=2e-5, atol=2e-5)


@pytest.mark.skipif(not _threads.PLACEMENT_AVAILABLE or len(os.sched_getaffinity(0)) < 2,
                    reason="needs Linux's sched_getcpu/sched_setaffinity and two CPUs")
def test_pool_threads_are_placed_off_the_callers_cpu(monkeypatch):
    """Each hand-over lets the pool's threads run on every CPU of the
    process but the caller's current one (so that a woken pool thread never
    queues behind its caller), follows the caller to another CPU, and
    leaves them free when there are not more CPUs than pool threads."""
    allowed = frozenset(os.sched_getaffinity(0))
    lo, hi = min(allowed), max(allowed)

    def worker_cpus():
        return _threads._pool(1).submit(lambda: frozenset(os.sched_getaffinity(0))).result()
    try:
        monkeypatch.setattr(_threads, "_current_cpu", lambda: lo)
        assert worker_cpus() == allowed - {lo}
        monkeypatch.setattr(_threads, "_current_cpu", lambda: hi)
        assert worker_cpus() == allowed - {hi}
        monkeypatch.setattr(_threads, "_allowed_cpus", lambda: frozenset({hi}))
        assert worker_cpus() == {hi}                     # one CPU for one thread: no choice
    finally:
        monkeypatch.undo()
        monkeypatch.setattr(_threads, "_current_cpu", lambda: -1)   # unknown: every CPU
        assert worker_cpus() == allowed


@pytest.mark.parametrize("join_spins", [0, 1_000_000])
def test_hand_over_waits_for_every_part_and_reraises_the_first_error(monkeypatch, join_spins):
    """``_start``: parts that outlast the caller's spin are waited for
    (blocking), parts that finish within it are seen through their flags;
    every part runs even when one raises, and the first error (in part
    order) reaches the caller; lingering workers take the next hand-over."""
    import time

    monkeypatch.setattr(_threads, "JOIN_SPINS", join_spins)
    out = [None] * 3

    def part(k, delay):
        time.sleep(delay)
        out[k] = k * 10
    join = _threads._start(3, [lambda: part(0, 0.05), lambda: part(1, 0.0), lambda: part(2, 0.01)])
    join()
    assert out == [0, 10, 20]

    def bad(k):
        time.sleep(0.01 * k)
        raise ValueError(f"part {k}")
    out[:] = [None] * 3
    join = _threads._start(3, [lambda: bad(1), lambda: part(1, 0.02), lambda: bad(2)])
    with pytest.raises(ValueError, match="part 1"):
        join()
    assert out[1] == 10
    for _ in range(20):                          # back to back: the lingering workers
        join = _threads._start(1, [lambda: part(0, 0.0)])
        join()
    assert out[0] == 0


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fused_lstm_inference_slices_are_bit_identical(dtype):
    """The fused-projection LSTM inference (``Recurrent._forward_fused``) on
    1, 2 and 3 batch slices, on as many threads, gives the same bits: a
    row's result does not depend on its slice.  Checked against the packed
    path (a separate projection: rounding apart) and, as a full-length
    batch's rows, against each sequence run alone."""
    layer = Recurrent("lstm", 7, 24, num_layers=2, bidirectional=True, dtype=dtype, random_state=3).eval()
    rng = np.random.default_rng(4)
    X = rng.standard_normal((25, 9, 7)).astype(dtype)
    h = rng.standard_normal((4, 25, 24)).astype(dtype)
    runs = []
    for parts in (1, 2, 3):
        with _threads.limit(parts):
            assert layer._fused_parts(25, 9) == (parts, False)
            runs.append(layer.forward(X, h0=(h, -h), need_grad=False))
    for other in runs[1:]:
        for a, b in zip(layer_arrays(runs[0]), layer_arrays(other)):
            assert np.array_equal(a, b)
    tol = 2e-5 if dtype == "float32" else 1e-12
    packed = layer.forward(X, np.full(25, 9), h0=(h, -h))            # need_grad: the packed path
    for a, b in zip(layer_arrays(runs[0]), layer_arrays(packed)):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)
    for b in (0, 13, 24):
        alone = layer.forward(X[b:b + 1], h0=(h[:, b:b + 1], -h[:, b:b + 1]), need_grad=False)
        np.testing.assert_allclose(alone[0][0], runs[0][0][b], rtol=tol, atol=tol)


def test_a_pool_thread_lingers_after_a_queued_task(monkeypatch):
    """A task handed through the queue (the thread asleep) leaves no
    queued mark behind, so the thread lingers after it and the next
    hand-over claims it (the mark used to stay set and end every linger at
    once: each hand-over then woke a sleeping thread)."""
    from fastseq.kernels._sync import LINGER, QUEUED

    worker = _asleep_pool_thread(monkeypatch)   # (idle: the next task comes by the queue)
    states = []
    real = _threads._Worker.hand
    monkeypatch.setattr(_threads._Worker, "hand", lambda self, job: states.append(int(self.state[0]))
                        or real(self, job))
    _threads._start(1, [int])()                            # queued: the thread was idle
    assert worker.state[QUEUED] == 0
    for _ in range(3):
        _threads._start(1, [int])()                        # claimed while it lingers
    monkeypatch.setattr(_threads, "LINGER_SPINS", 200)
    _threads._start(1, [int])()                            # (ends the long linger)
    assert states[0] == 0 and states[1:4] == [LINGER] * 3, states


def test_pool_hand_overs_from_concurrent_callers_each_run_once():
    """Callers on several threads hand tasks to the same pool thread at once
    (one claims it while it lingers, the others queue theirs): every task runs
    exactly once, on a pool thread, and every join returns."""
    ran = []
    lock = threading.Lock()

    def caller(c):
        for i in range(200):
            def task(key=(c, i)):
                with lock:
                    ran.append((key, threading.current_thread().name))
            _threads._start(1, [task])()
    threads = [threading.Thread(target=caller, args=(c,)) for c in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    keys = [k for k, _ in ran]
    assert sorted(keys) == [(c, i) for c in range(3) for i in range(200)]
    assert all(name == "fastseq-worker" for _, name in ran)


def test_a_pool_thread_keeps_nothing_of_its_last_task():
    """After a hand-over returns, the pool thread holds no reference to the
    task or what it refers to (a call's arrays: held, they could not be
    reused, and stayed allocated until the thread's next task)."""
    import gc
    import weakref

    class Payload:
        pass

    for spins in (0, 10 ** 5):     # the thread sleeps after the task, or lingers
        payload = Payload()
        ref = weakref.ref(payload)
        _threads.LINGER_SPINS, saved = spins, _threads.LINGER_SPINS
        try:
            _threads._start(1, [lambda p=payload: p])()
        finally:
            _threads.LINGER_SPINS = saved
        del payload
        gc.collect()
        assert ref() is None


def test_a_thread_held_off_its_cpu_is_told_from_an_interrupt():
    """``busy_share``: a thread that ran under half of a split call and lost
    a time slice's worth of it (0.2 ms) was held off its CPU; a short loss
    (an interrupt) or a large share is not."""
    assert _threads.busy_share(1e-3, 0.3e-3)
    assert _threads.busy_share(40e-3, 0.5e-3)
    assert not _threads.busy_share(1e-3, 0.6e-3)        # over half the call
    assert not _threads.busy_share(0.3e-3, 0.12e-3)     # 0.18 ms lost
    assert not _threads.busy_share(1e-3, 1e-3)


def _threads_clock(monkeypatch, perf_counter):
    """``_threads`` reads ``perf_counter()`` as its wall clock (the rest of
    its ``time`` module unchanged)."""
    import time

    class Time:
        def __getattr__(self, name):
            return getattr(time, name)
    clock = Time()
    clock.perf_counter = perf_counter
    monkeypatch.setattr(_threads, "time", clock)


def _fake_cpu_times(monkeypatch, ran):
    """Threads whose CPU clocks advance by ``ran()`` times the wall time
    between two readings (the split call's own clocks replaced): each
    reading is ``ran()`` times the wall-clock reading ``_threads`` took
    just before it, so a stall between the two (a loaded machine) moves
    nothing."""
    import time
    last = [time.perf_counter()]

    def recorded():
        last[0] = time.perf_counter()
        return last[0]
    _threads_clock(monkeypatch, recorded)
    monkeypatch.setattr(_threads, "_cpu_clock", lambda ident: 0)
    monkeypatch.setattr(_threads, "_cpu_times", lambda clocks: [ran() * last[0]] * (1 + len(clocks)))
    for pool in _threads._pools.values():   # (each thread reads the fake clock id, undone after)
        for w in pool.workers:
            monkeypatch.setattr(w, "clock", None)


@pytest.mark.skipif(not _sync.AVAILABLE, reason="no unit split without the barrier")
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_a_thread_held_off_its_cpu_sends_unit_splits_to_one_thread_for_a_while(monkeypatch, lingering, cell):
    """``STRIKES`` timed split calls in a row (compiled parts on lingering
    threads) one of whose threads was held off its CPU make the next calls
    run on one thread, with the same bits and nothing handed over, until
    ``cpu_busy`` ends; then calls split again, each timed: a finding in
    that probation doubles the time to the next try, ``PROBATION_CALLS``
    clean calls in a row bring it back to ``BUSY_S``."""
    import fastseq.network.recurrent as R
    layer = Recurrent(cell, 24, 96, dtype="float64", random_state=1).eval()
    X, state, ref = _unit_split_inputs(monkeypatch, layer, np.random.default_rng(2), 2, 30)
    answers, python_parts = answers_of(monkeypatch, R, f"{cell}_units_native"), []
    real_part = getattr(R, f"{cell}_units_part")
    monkeypatch.setattr(R, f"{cell}_units_part", lambda *a: python_parts.append(1) or real_part(*a))
    share = [0.0]                       # held off for the whole call
    _fake_cpu_times(monkeypatch, lambda: share[0])
    monkeypatch.setattr(_threads, "HELD_MIN_S", 0.0)
    monkeypatch.setattr(_threads, "STRIKE_GAP_S", 0.0)     # (the gap: the next test)

    def call():
        for a, b in zip(layer_arrays(layer.forward(X, h0=state, need_grad=False)), ref):
            np.testing.assert_array_equal(a, b)
    with _threads.limit(2):
        assert layer._inference_plan(2, 30) == "units"
        while not answers or not answers[-1]:   # (until the pool thread lingers)
            call()
        for _ in range(_threads.STRIKES - 1):
            assert not _threads.cpu_busy()
            call()
        assert _threads.cpu_busy() and _threads._busy_for == 2 * _threads.BUSY_S
        n = len(answers)
        python_parts.clear()        # (the first call's, its thread asleep)
        for _ in range(3):
            call()
        assert len(answers) == n and not python_parts          # on this thread
        monkeypatch.setattr(_threads, "_busy_until", 0.0)      # (its time over)
        for _ in range(_threads.STRIKES):
            call()
        assert len(answers) == n + _threads.STRIKES and answers[-1] and _threads.cpu_busy()   # held off again
        assert _threads._busy_for == 4 * _threads.BUSY_S
        monkeypatch.setattr(_threads, "_busy_until", 0.0)
        share[0] = 1.0                                         # the CPU free again
        n = len(answers)
        for k in range(_threads.PROBATION_CALLS):
            assert _threads._busy_for == 4 * _threads.BUSY_S
            call()
            assert not _threads.cpu_busy()
        assert len(answers) == n + _threads.PROBATION_CALLS and all(answers[n:])
        assert _threads._busy_for == _threads.BUSY_S and not python_parts


def test_a_busy_cpu_runs_the_fused_batch_slices_here_with_their_bits(monkeypatch, lingering):
    """While ``cpu_busy``, the fused LSTM's batch split runs its slices one
    after the other on the calling thread (no compiled task, nothing on
    the pool), with the bits of the split."""
    import time

    import fastseq.network.recurrent as R
    layer = Recurrent("lstm", 12, 32, num_layers=2, bidirectional=True, random_state=3).eval()
    X = np.random.default_rng(4).standard_normal((16, 20, 12)).astype(np.float32)
    monkeypatch.setattr(_plan.current(), "split_min_work", 0)
    with _threads.limit(2):
        assert layer._inference_route(16, 20)[:2] == ("fused", 2)
        split = layer_arrays(layer.forward(X, need_grad=False))
        answers, pool_slices = answers_of(monkeypatch, R, "lstm_fused_native"), []
        real_on_pool = R._on_pool
        monkeypatch.setattr(R, "_on_pool", lambda *a: pool_slices.append(1) or real_on_pool(*a))
        monkeypatch.setattr(_threads, "_busy_until", time.perf_counter() + 60.0)
        here = layer_arrays(layer.forward(X, need_grad=False))
        assert not answers and not pool_slices
    for a, b in zip(here, split):
        np.testing.assert_array_equal(a, b)


def test_one_held_off_call_between_clean_ones_is_no_busy_cpu(monkeypatch, lingering):
    """A thread held off its CPU in one timed call (an interrupt, another
    process's moment) finds no busy CPU when the next timed call is clean;
    a thread that is not lingering (asleep, its wake-up to come) is not
    timed."""
    import time

    from fastseq.kernels._sync import LINGER
    share = [1.0]
    _fake_cpu_times(monkeypatch, lambda: share[0])
    monkeypatch.setattr(_threads, "HELD_MIN_S", 0.0)
    monkeypatch.setattr(_threads, "CHECK_S", 0.0)
    monkeypatch.setattr(_threads, "STRIKE_GAP_S", 0.0)
    workers = _threads._pool(1).workers
    _threads._start(1, [int], _threads._pool(1))()      # (it lingers after a task)
    _wait_for_state(workers[0], LINGER)
    for k in range(6):
        share[0] = 0.0 if k % 2 == 0 else 1.0          # held off, clean, held off, ...
        timing = _threads._start_timing(workers)
        assert timing is not None
        time.sleep(0.001)
        assert not _threads._held_off(timing)
        assert not _threads.cpu_busy() and _threads._strikes == (1 if k % 2 == 0 else 0)
    workers[0].state[0] = 0     # (as if idle)
    try:
        assert _threads._start_timing(workers) is None
    finally:
        workers[0].state[0] = LINGER


def test_a_second_strike_comes_from_a_call_timed_a_strike_gap_later(monkeypatch, lingering):
    """After a timed call that found a thread held off, the next call is
    timed only ``STRIKE_GAP_S`` later (another engine's threads spinning for
    a few ms after its call do not make a busy CPU), and a held-off call
    then is the second strike; in a probation every call is timed."""
    import time

    from fastseq.kernels._sync import LINGER
    _fake_cpu_times(monkeypatch, lambda: 0.0)           # every call held off
    monkeypatch.setattr(_threads, "HELD_MIN_S", 0.0)
    workers = _threads._pool(1).workers
    _threads._start(1, [int], _threads._pool(1))()
    _wait_for_state(workers[0], LINGER)
    clock = [time.perf_counter() + 1000.0]
    _threads_clock(monkeypatch, lambda: clock[0])   # (moved by the test: a loaded machine's stalls move nothing)

    def timed_call():
        timing = _threads._start_timing(workers)
        if timing is not None:
            clock[0] += 0.001
            _threads._held_off(timing)
        return timing is not None
    assert timed_call() and _threads._strikes == 1 and not _threads.cpu_busy()
    assert _threads._next_check == clock[0] + _threads.STRIKE_GAP_S
    clock[0] += 0.9 * _threads.STRIKE_GAP_S
    assert not timed_call() and _threads._strikes == 1      # within the gap: not timed
    clock[0] = _threads._next_check                         # (the gap over)
    assert timed_call() and _threads.cpu_busy() and _threads._strikes == 0
    monkeypatch.setattr(_threads, "_busy_until", 0.0)
    assert timed_call() and _threads._strikes == 1           # probation: timed at once
    assert timed_call() and _threads.cpu_busy()


@pytest.mark.skipif(not _sync.AVAILABLE, reason="no unit split without the barrier")
def test_a_training_unit_split_handed_over_in_python_is_timed_too(monkeypatch, lingering):
    """The LSTM training's unit split (its parts handed over in Python,
    ``run_units`` without compiled tasks) is timed as the compiled splits
    are: held-off threads send its next passes to one thread, with the
    one-thread bits."""
    from fastseq.kernels._sync import LINGER
    layer = Recurrent("lstm", 16, 64, dtype="float64", random_state=5)
    rng = np.random.default_rng(6)
    X = rng.standard_normal((2, 9, 16))
    G = rng.standard_normal((2, 9, 64))
    with _threads.limit(1):
        out, _ = layer.forward(X)
        ref = [out, layer.backward(G)[0]]
    monkeypatch.setattr(_plan.current(), "unit_split_min_units", 8)
    monkeypatch.setattr(_plan.current(), "unit_split_min_weight_bytes", 0)
    monkeypatch.setattr(_plan.current(), "pipeline_min_work", 0)
    _fake_cpu_times(monkeypatch, lambda: 0.0)
    monkeypatch.setattr(_threads, "HELD_MIN_S", 0.0)
    monkeypatch.setattr(_threads, "STRIKE_GAP_S", 0.0)
    parts = []
    real = _threads.run_units
    import fastseq.network.recurrent as R
    monkeypatch.setattr(R, "run_units", lambda *a, **k: parts.append(1) or real(*a, **k))
    with _threads.limit(2):
        assert layer._train_units(2, 9, np.zeros((0, 64)))
        _threads._start(1, [int], _threads._pool(1))()      # (it lingers after a task)
        _wait_for_state(_threads._pool(1).workers[0], LINGER)
        while not _threads.cpu_busy():
            assert len(parts) < 20
            out, _ = layer.forward(X)
            got = [out, layer.backward(G)[0]]
        n = len(parts)
        out, _ = layer.forward(X)
        here = [out, layer.backward(G)[0]]
        assert len(parts) == n                             # on this thread
    for a, b, c in zip(got, here, ref):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, c)


def test_a_cpu_clock_that_cannot_be_read_times_nothing(monkeypatch, lingering):
    """A pool thread's CPU clock that cannot be read (``OSError``: a thread
    gone) leaves the call untimed, or its timing without a finding."""
    import time

    from fastseq.kernels._sync import LINGER
    if not hasattr(time, "pthread_getcpuclockid"):
        pytest.skip("no thread CPU clocks here")
    workers = _threads._pool(1).workers
    _threads._start(1, [int], _threads._pool(1))()
    _wait_for_state(workers[0], LINGER)
    monkeypatch.setattr(_threads, "_cpu_clock", time.pthread_getcpuclockid)
    monkeypatch.setattr(workers[0], "clock", None)
    monkeypatch.setattr(_threads, "HELD_MIN_S", 0.0)
    monkeypatch.setattr(_threads, "STRIKES", 1)
    timing = _threads._start_timing(workers)
    assert timing is not None

    def gone(clock):
        raise OSError("no such thread")
    monkeypatch.setattr(time, "clock_gettime", gone)
    assert not _threads._held_off(timing) and not _threads.cpu_busy()
    monkeypatch.setattr(_threads, "_next_check", 0.0)
    assert _threads._start_timing(workers) is None

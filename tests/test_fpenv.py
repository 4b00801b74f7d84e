"""Flush-to-zero inside fastseq's calls (:mod:`fastseq._fpenv`).

While fastseq's compiled code runs, in the calling thread and in the pool
threads it hands work to, values below the smallest normal number (float32
1.18e-38, float64 2.23e-308) are read and produced as zero (x86-64 MXCSR FTZ
and DAZ, aarch64 FPCR FZ): denormal arithmetic is many times slower, and
gradients fading over long sequences reach it.  The caller's own setting is
back after every call, after an exception too, and in the pool threads.
"""

import platform
import threading

import numpy as np
import pytest

import fastseq.network.recurrent as rec
from fastseq import RNNClassifier, _fpenv, _plan, _threads
from fastseq.kernels import _fpenv as kfp
from fastseq.nn import Recurrent
from conftest import answers_of

needs_ftz = pytest.mark.skipif(
    not _fpenv.AVAILABLE,
    reason=f"no flush-to-zero setting handled on this machine ({platform.machine()}): "
           "fastseq leaves the floating-point environment alone here")

#: MXCSR's bits 0-5 are sticky exception flags raised by arithmetic (not a
#: setting): left out when comparing the caller's state
STATUS = 0x3F if kfp.ARCH == "x86_64" else 0


def settings():
    """The calling thread's floating-point control bits (flags left out)."""
    return _fpenv.control() & ~STATUS


def _clear_flush():
    _fpenv.set_control(_fpenv.control() & ~_fpenv.FLUSH_BITS)


def _on_pool_thread(fn):
    """``fn()`` on the pool thread of every two-thread hand-over (``_pool(1)``
    has one worker)."""
    return _threads._pool(1).submit(fn).result()


@pytest.fixture(autouse=True)
def _caller_does_not_flush():
    """Each test starts in a thread that does not flush (as Python starts);
    its state is put back after."""
    before = _fpenv.control()
    _clear_flush()
    yield
    _fpenv.set_control(before)


def _no_flush(monkeypatch):
    """fastseq's calls leave the register alone (as if the caller had set the
    bits already): the contrast that shows a test sees flushing at work."""
    monkeypatch.setattr(_fpenv, "_enter", lambda: _fpenv.FLUSH_BITS)


def _small(dtype):
    """A normal number whose square is denormal (1/100 of the smallest normal)."""
    return np.sqrt(np.finfo(dtype).tiny * 0.01).astype(dtype)


def _probe_layer(dtype, B, T=4):
    """A ReLU RNN with one input feature of normal size ``s`` and one denormal
    input ``d``; unit 0 copies the first (normal), unit 1 multiplies it by
    ``s`` (a denormal result, s*s), unit 2 copies the denormal input.  Flushed:
    ``[s, 0, 0]`` at every step; not flushed: ``[s, s*s, d]``."""
    s = _small(dtype)
    d = (np.finfo(dtype).tiny / 4).astype(dtype)
    layer = Recurrent("rnn", 2, 3, nonlinearity="relu", dtype=dtype, random_state=0)
    layer.flat[...] = 0
    layer.params["weight_ih_l0"][...] = np.array([[1, 0], [s, 0], [0, 1]], dtype=dtype)
    X = np.empty((B, T, 2), dtype=dtype)
    X[..., 0], X[..., 1] = s, d
    return layer, X, s, d


# ------------------------------------------------------------ the register
def test_architecture_is_chosen_from_the_triple():
    assert kfp.machine_arch("x86_64-unknown-linux-gnu") == "x86_64"
    assert kfp.machine_arch("aarch64-unknown-linux-gnu") == "aarch64"
    assert kfp.machine_arch("arm64-apple-darwin23.0.0") == "aarch64"
    assert kfp.machine_arch("powerpc64le-unknown-linux-gnu") is None
    assert kfp.machine_arch("riscv64-unknown-linux-gnu") is None
    bits = {"x86_64": (1 << 15) | (1 << 6), "aarch64": 1 << 24, None: 0}
    assert kfp.FLUSH_BITS == bits[kfp.ARCH]
    assert _fpenv.AVAILABLE == (kfp.ARCH is not None)


@pytest.mark.parametrize("arch,read,write", [
    ("x86_64", "stmxcsr", "ldmxcsr"),
    ("aarch64", "mrs\tx0, FPCR", "msr\tFPCR"),
])
def test_intrinsics_compile_for_each_architecture(arch, read, write):
    """The IR of both paths is valid for LLVM (intrinsic names and signatures:
    a wrong one fails verification) and compiles to the register accesses,
    whatever the machine running the test."""
    import llvmlite.binding as llvm
    from llvmlite import ir

    triple = {"x86_64": "x86_64-unknown-linux-gnu", "aarch64": "aarch64-unknown-linux-gnu"}[arch]
    llvm.initialize_all_targets()  # numba registers only the host's
    llvm.initialize_all_asmprinters()
    try:
        target = llvm.Target.from_triple(triple)
    except RuntimeError as exc:  # pragma: no cover - llvmlite built without that target
        pytest.skip(f"llvmlite has no {arch} target: {exc}")
    module = ir.Module(name="fpenv_" + arch)
    module.triple = triple
    i64 = ir.IntType(64)
    fn = ir.Function(module, ir.FunctionType(i64, []), name="enter")
    builder = ir.IRBuilder(fn.append_basic_block())
    old = kfp.emit_read(builder, arch)
    kfp.emit_write(builder, arch, builder.or_(old, ir.Constant(i64, kfp.FLUSH_BITS or 1)))
    builder.ret(old)
    parsed = llvm.parse_assembly(str(module))
    parsed.verify()
    asm = target.create_target_machine(opt=2).emit_assembly(parsed)
    assert read in asm and write in asm, asm


@needs_ftz
def test_enter_and_leave_touch_only_the_flush_bits():
    base = _fpenv.control()
    assert not _fpenv.flushing()
    old = kfp.enter_flush()
    assert old == base and _fpenv.flushing()
    assert (_fpenv.control() & ~STATUS) == ((base | _fpenv.FLUSH_BITS) & ~STATUS)
    kfp.leave_flush(old)
    assert settings() == base & ~STATUS
    if kfp.ARCH == "x86_64":  # the caller's DAZ alone survives (FTZ goes)
        _fpenv.set_control(base | (1 << 6))
        kfp.leave_flush(kfp.enter_flush())
        assert settings() == (base | (1 << 6)) & ~STATUS


# ------------------------------------------------------------ (a) flushed results
@needs_ftz
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("need_grad", [False, True])
def test_denormal_results_and_inputs_become_zero(dtype, need_grad, monkeypatch):
    """A product below the smallest normal (s*s) and a denormal input are zero
    in the output; without flushing they would stay (the contrast)."""
    layer, X, s, d = _probe_layer(dtype, B=3)
    out, _ = layer.forward(X, need_grad=need_grad)
    assert np.all(out[..., 0] == s)
    assert np.all(out[..., 1:] == 0)
    _no_flush(monkeypatch)
    out, _ = layer.forward(X, need_grad=need_grad)
    assert np.all(out[..., 0] == s)
    assert np.all((out[..., 1] > 0) & (out[..., 1] < np.finfo(dtype).tiny))
    assert np.all(out[..., 2] == d)


# ------------------------------------------------------------ (b) the caller's state
@needs_ftz
def test_caller_state_is_unchanged_after_calls():
    layer, X, _, _ = _probe_layer("float32", B=2)
    before = settings()
    layer.forward(X, need_grad=False)
    layer.forward(X)
    layer.backward(np.ones((2, 4, 3), dtype=np.float32))
    assert settings() == before and not _fpenv.flushing()
    with _threads.limit(2):
        assert _fpenv.flushing()
        with _threads.blas_single_thread(), _fpenv.flush_denormals():
            layer.forward(X)
        assert _fpenv.flushing()  # nested blocks leave the outer one's setting
    assert settings() == before
    _fpenv.set_control(_fpenv.control() | _fpenv.FLUSH_BITS)  # a caller that flushes itself
    layer.forward(X)
    with _threads.limit(1):
        pass
    assert _fpenv.flushing()


@needs_ftz
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_caller_state_is_unchanged_after_an_estimator():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((16, 5, 2)).astype(np.float32)
    y = np.arange(16) % 2
    before = settings()
    est = RNNClassifier(hidden_size=4, max_iter=1, batch_size=8, random_state=0).fit(X, y)
    assert settings() == before
    est.predict(X[:1])
    assert settings() == before


@needs_ftz
def test_caller_state_is_restored_after_an_exception(monkeypatch):
    layer, X, _, _ = _probe_layer("float32", B=1)
    seen = []

    def boom(*args):
        seen.append(_fpenv.flushing())
        raise RuntimeError("inside the call")
    monkeypatch.setattr(rec, "rnn_infer", boom)
    monkeypatch.setattr(rec, "rnn_infer_x", boom)   # the projection in the same call
    before = settings()
    with pytest.raises(RuntimeError, match="inside the call"):
        layer.forward(X, need_grad=False)
    assert settings() == before
    with pytest.raises(RuntimeError, match="inside the call"):
        with _threads.limit(2):
            layer.forward(X, need_grad=False)
    assert settings() == before
    assert seen == [True, True]
    assert _fpenv._local.st[0] == 0  # the depth is back at zero


@needs_ftz
def test_depth_is_per_thread():
    """A thread leaving its block does not end another thread's."""
    inside, leave = threading.Event(), threading.Event()
    other = {}

    def worker():
        _clear_flush()
        with _fpenv.flush_denormals():
            inside.set()
            leave.wait(10)
            other["inside"] = _fpenv.flushing()
        other["after"] = _fpenv.flushing()
    t = threading.Thread(target=worker)
    with _fpenv.flush_denormals():
        t.start()
        inside.wait(10)
    assert not _fpenv.flushing()  # this thread's block is over
    leave.set()
    t.join()
    assert other == {"inside": True, "after": False}


# ------------------------------------------------------------ (b, c) pool threads
@needs_ftz
def test_every_pool_hand_over_flushes_and_restores():
    """Work handed to a pool thread (_on_pool, _in_chunks, run_pipelined,
    run_units) runs flushed there, and the pool thread's own setting (here:
    not flushing) is back after."""
    _on_pool_thread(_clear_flush)
    pool_before = _on_pool_thread(settings)
    seen = []

    def record(*_):
        seen.append((threading.current_thread().name.startswith("fastseq"), _fpenv.flushing()))
    with _threads.limit(2):
        _threads._on_pool([(0, 1), (1, 2)], record)
        _threads._in_chunks(10, 2, record)
        _threads.run_pipelined(record, record)
        _threads.run_units(lambda tid, j0, j1, flags: record(), 16)
    assert len(seen) == 8 and sum(pool for pool, _ in seen) == 4, seen
    assert all(flushed for _, flushed in seen), seen
    assert _on_pool_thread(settings) == pool_before
    assert not _on_pool_thread(_fpenv.flushing)


@needs_ftz
@pytest.mark.parametrize("need_grad", [True, False])
def test_split_layer_flushes_in_both_threads(need_grad, monkeypatch):
    """A Recurrent forward with two threads on a batch large enough to split
    (thresholds lowered as in test_threads_split.py; the pipelined inference
    with need_grad=False, handed over in Python or as a compiled task):
    every row is flushed, rows that the pool thread
    computed too, and the pool thread's own setting is back after."""
    monkeypatch.setattr(_plan.current(), "split_min_work", 1)
    monkeypatch.setattr(_plan.current(), "matmul_split_min_work", 1)
    monkeypatch.setattr(_plan.current(), "pipeline_min_work", 1)
    calls = []
    real = _threads._on_pool
    monkeypatch.setattr(_threads, "_on_pool", lambda bounds, fn: calls.append(len(bounds)) or real(bounds, fn))
    pipelined = []
    real_pipe = rec.run_pipelined
    monkeypatch.setattr(rec, "run_pipelined", lambda *a: pipelined.append(1) or real_pipe(*a))
    for name in ("lstm_pipelined_native", "gru_pipelined_native", "rnn_pipelined_native"):
        # (a pipeline handed to a polling thread as a compiled task: its rows flushed in linger)
        monkeypatch.setattr(rec, name, lambda *a, real_native=getattr(rec, name):
                            real_native(*a) and (pipelined.append(1) or True))
    _on_pool_thread(_clear_flush)
    pool_before = _on_pool_thread(settings)
    layer, X, s, _ = _probe_layer("float32", B=64, T=8)
    before = settings()
    with _threads.limit(2):
        out, _ = layer.forward(X, need_grad=need_grad)
    assert (calls if need_grad else pipelined), "the layer did not hand work to the pool"
    assert np.all(out[..., 0] == s) and np.all(out[..., 1:] == 0)
    assert settings() == before
    assert _on_pool_thread(settings) == pool_before


@needs_ftz
@pytest.mark.skipif(not rec.UNIT_SPLIT_AVAILABLE, reason="no unit split without the barrier")
def test_unit_split_compiled_tasks_flush_in_the_pool_thread(monkeypatch):
    """LSTM inference split by hidden units, the pool thread's part run as
    a compiled task while it lingers (``kernels._sync.linger``, no Python):
    its units are flushed too (every candidate ``g`` is s * s, denormal,
    so every state is denormal unflushed and zero flushed), and the pool
    thread's own setting, like the caller's, is back after."""
    s = _small("float32")
    H = 64
    layer = Recurrent("lstm", 2, H, random_state=0).eval()
    layer.flat[...] = 0
    layer.params["weight_ih_l0"][2 * H:3 * H, 0] = s
    X = np.full((1, 12, 2), s, dtype=np.float32)
    monkeypatch.setattr(_plan.current(), "pipeline_min_work", 0)
    monkeypatch.setattr(_plan.current(), "unit_split_min_units", 8)
    monkeypatch.setattr(_threads, "LINGER_SPINS", 10 ** 12)   # lingers until the next call
    answers = answers_of(monkeypatch, rec, "lstm_units_native")
    try:
        _on_pool_thread(_clear_flush)
        pool_before = _on_pool_thread(settings)
        before = settings()
        with _threads.limit(2):
            assert layer._inference_plan(1, 12) == "units"
            outs = [layer.forward(X, need_grad=False) for _ in range(3)]
        assert answers[-2:] == [True, True], answers
        for out, (h_n, c_n) in outs:
            assert not out.any() and not h_n.any() and not c_n.any()
        assert settings() == before
    finally:
        monkeypatch.setattr(_threads, "LINGER_SPINS", 200)
        assert _on_pool_thread(settings) == pool_before


# ------------------------------------------------------------ (d) against PyTorch
@needs_ftz
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_matches_torch_with_flush_denormal(dtype):
    """PyTorch keeps denormals unless asked (``torch.set_flush_denormal(True)``);
    fastseq always flushes them.  A ReLU RNN whose second half of units gets
    only denormal pre-activations (small inputs times small weights): outputs,
    final state, input and weight gradients equal PyTorch's with flush on,
    and differ from PyTorch's without it (there those units are denormal,
    not zero, and pass gradient through the ReLU)."""
    torch = pytest.importorskip("torch")
    from fastseq.interop import from_torch

    tdt = getattr(torch, dtype)
    B, T, F, H = 3, 6, 4, 6
    s = float(np.sqrt(np.finfo(dtype).tiny * 0.1))  # s * s: a tenth of the smallest normal
    rng = np.random.default_rng(0)
    m = torch.nn.RNN(F, H, nonlinearity="relu", batch_first=True).to(tdt)
    with torch.no_grad():
        w_ih = rng.uniform(0.2, 1.0, (H, F))
        w_ih[:H // 2, F // 2:] = 0          # normal units read normal features
        w_ih[H // 2:, :F // 2] = 0          # the others read small features ...
        w_ih[H // 2:, F // 2:] *= s         # ... with small weights
        w_hh = np.zeros((H, H))
        w_hh[:H // 2, :H // 2] = rng.uniform(-0.3, 0.3, (H // 2, H // 2))
        m.weight_ih_l0.copy_(torch.tensor(w_ih))
        m.weight_hh_l0.copy_(torch.tensor(w_hh))
        m.bias_ih_l0.zero_()
        m.bias_hh_l0.zero_()
        m.bias_ih_l0[:H // 2] = 0.1
    layer = from_torch(m)
    X = rng.uniform(0.5, 1.0, (B, T, F))
    X[..., F // 2:] *= s
    R = rng.standard_normal((B, T, H))

    def run_torch(flush):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        assert torch.set_flush_denormal(flush)
        try:
            m.zero_grad()
            Xt = torch.tensor(X, dtype=tdt, requires_grad=True)
            out, hn = m(Xt)
            (out * torch.tensor(R, dtype=tdt)).sum().backward()
            return dict(out=out.detach().numpy(), hn=hn.detach().numpy()[0], dX=Xt.grad.numpy(),
                        **{k: p.grad.numpy().copy() for k, p in m.named_parameters()})
        finally:
            torch.set_flush_denormal(False)
            torch.set_num_threads(threads)

    out, hn = layer.forward(X.astype(dtype))
    dX, grads = layer.backward(R.astype(dtype))
    ours = dict(out=out, hn=hn[0], dX=dX, **grads)
    flushed, kept = run_torch(True), run_torch(False)
    tol = dict(rtol=2e-4, atol=2e-5) if dtype == "float32" else dict(rtol=1e-10, atol=1e-11)
    for k in ours:
        np.testing.assert_allclose(ours[k], flushed[k], err_msg=k, **tol)
    # where they differ, below any tolerance: exact zeros with flushing, small
    # (denormal outputs, normal gradients of size s) without
    tiny = np.finfo(dtype).tiny
    blocks = {"out": np.s_[..., H // 2:], "dX": np.s_[..., F // 2:], "weight_ih_l0": np.s_[H // 2:, F // 2:]}
    for k, block in blocks.items():
        assert np.all(ours[k][block] == 0) and np.all(flushed[k][block] == 0), k
        assert np.all(kept[k][block] != 0), k
    assert np.all(kept["out"][blocks["out"]] < tiny)


@needs_ftz
def test_small_one_call_inference_flushes_and_leaves_blas_alone(monkeypatch, blas_rows, project_blas_bytes):
    """A one-call inference that calls no BLAS (a projection weight under
    PROJECT_BLAS_MIN_BYTES, whatever its rows) runs flushed without setting
    BLAS's threads (a few microseconds of a small call); one whose
    projection weight has PROJECT_BLAS_MIN_BYTES or more, or whose
    projection is split across threads, or whose step product has
    PACKED_BLAS_MIN_ROWS, holds BLAS at one thread."""
    from threadpoolctl import threadpool_info, threadpool_limits

    seen = []

    def spy(real):
        def call(*a):
            blas = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
            seen.append((_fpenv.flushing(), blas))
            return real(*a)
        return call
    monkeypatch.setattr(rec, "lstm_infer_x", spy(rec.lstm_infer_x))   # projection in the same call
    monkeypatch.setattr(rec, "lstm_infer", spy(rec.lstm_infer))       # after a split projection
    layer = Recurrent("lstm", 3, 4, random_state=0).eval()
    # the thread counts as Recurrent.forward sets them (BLAS left to the call)
    with threadpool_limits(2, user_api="blas"), _threads.limit(1, blas=False):
        outside = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
        if not outside or max(outside) < 2:
            pytest.skip("no BLAS here runs two threads: nothing to tell apart")
        layer.forward(np.ones((1, 5, 3), np.float32), need_grad=False)
        layer.forward(np.ones((1, 300, 3), np.float32), need_grad=False)     # many rows, the packed product
        project_blas_bytes(16 * 3 * 4)                                      # as if W_ih were large: BLAS
        layer.forward(np.ones((1, 5, 3), np.float32), need_grad=False)
        project_blas_bytes(2 * 1024 * 1024)
        monkeypatch.setattr(_plan.current(), "matmul_split_min_work", 0)       # split from 16 rows
        monkeypatch.setattr(_plan.current(), "pipeline_min_work", 10 ** 18)    # (not computed ahead)
        with _threads.limit(2, blas=False):
            layer.forward(np.ones((1, 20, 3), np.float32), need_grad=False)    # split
        blas_rows(1)                                              # as if the batch were large
        layer.forward(np.ones((1, 5, 3), np.float32), need_grad=False)
    (flushed_small, blas_small), (flushed_rows, blas_rows), *large = seen
    assert flushed_small and flushed_rows and all(flushed for flushed, _ in large) and len(large) == 3
    assert blas_small == outside and blas_rows == outside
    assert all(n == 1 for _, blas in large for n in blas)
    assert not _fpenv.flushing()

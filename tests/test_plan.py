"""The planner (:mod:`fastseq._plan`): thresholds derived from what the
machine measures, kept in a cache file, and the decisions built on them."""

import json
import math
import os

import pytest

from fastseq import _plan, _threads
from fastseq.kernels import _sync
from fastseq._plan import Machine, Plan


def test_thresholds_follow_the_measured_handover():
    """Each threshold is its rule's number of hand-overs' worth of work (the
    hand-over time times one core's multiply-add rate), rounded to a power
    of two; a slower hand-over or a faster core raises them all alike."""
    m = Machine(handover_s=100e-6, madd_rate=40e9, l2_bytes=512 * 1024)
    p = Plan.for_machine(m)
    w = m.handover_work
    assert w == pytest.approx(4e6)
    for value, factor in [(p.pipeline_min_work, _plan.PIPELINE_HANDOVERS),
                          (p.split_min_work, _plan.SPLIT_HANDOVERS),
                          (p.matmul_split_min_work, _plan.MATMUL_SPLIT_HANDOVERS),
                          (p.infer_split_step_work, _plan.INFER_SPLIT_STEP_HANDOVERS)]:
        assert value & (value - 1) == 0                          # a power of two
        assert abs(math.log2(value) - math.log2(factor * w)) <= 0.5
    assert p.unit_split_min_weight_bytes == 128 * 1024           # a quarter of an L2 cache
    fast = Plan.for_machine(Machine(handover_s=25e-6, madd_rate=40e9, l2_bytes=2 * 1024 * 1024))
    assert fast.split_min_work == p.split_min_work // 4
    assert fast.pipeline_min_work == p.pipeline_min_work // 4
    assert fast.unit_split_min_weight_bytes == 512 * 1024


def test_decisions():
    p = Plan.for_machine(Machine(handover_s=100e-6, madd_rate=40e9, l2_bytes=512 * 1024))
    big = p.split_min_work
    assert p.batch_split(2, 64, big) == 2
    assert p.batch_split(2, 64, big - 1) == 1                    # too little work
    assert p.batch_split(2, 7, big) == 1                         # fewer than 4 sequences a thread
    assert p.batch_split(4, 8, big) == 2
    assert p.batch_split(1, 64, 10 * big) == 1
    assert p.matmul_split(2, 64, 1024, 1024) == 2 and p.matmul_split(2, 15, 10 ** 6, 10 ** 6) == 1
    assert p.pipeline(2, p.pipeline_min_work) and not p.pipeline(2, p.pipeline_min_work - 1)
    assert not p.pipeline(1, 10 ** 12)
    assert p.inference_split(2, 64, p.infer_split_step_work, big)
    assert not p.inference_split(2, 64, p.infer_split_step_work - 1, big)
    w, kb = p.pipeline_min_work, 128 * 1024
    assert p.unit_split_min_weight_bytes == kb                   # a quarter of the L2
    assert p.unit_split(2, 256, 1, w, kb) and p.unit_split(2, 256, 7, w, kb)
    assert not p.unit_split(2, 256, 1, w - 1, kb)                # too little work
    assert not p.unit_split(2, 256, 8, w, kb)                    # a batch split's batch
    assert p.unit_split(4, 256, 15, w, kb)
    assert not p.unit_split(2, 256, 1, w, kb - 1)                # W_hh too small
    assert not p.unit_split(2, 48, 1, w, kb)                     # too few units a thread
    assert not p.unit_split(1, 256, 1, 10 ** 12, 1 << 30)


def test_lingering_unit_split_rule():
    """Inference splits its units on lingering threads from two compiled
    hand-overs' worth of work (rounded to a power of two), with the
    batch and unit bounds of the plain unit split; never when the machine
    has no compiled hand-over (not measured, or not available: inf)."""
    p = Plan.for_machine(Machine(handover_s=100e-6, madd_rate=40e9, l2_bytes=1 << 20, linger_handover_s=1e-6))
    assert p.lingering_units_min_work == 65536
    assert p.infer_units_lingering(2, 1, 64, 65536, 8) and not p.infer_units_lingering(2, 1, 64, 65535, 8)
    assert not p.infer_units_lingering(1, 1, 64, 10 ** 9, 8)          # one thread
    assert not p.infer_units_lingering(2, 16, 64, 10 ** 9, 8)         # rows enough for a batch split
    assert not p.infer_units_lingering(2, 1, 48, 10 ** 9, 8)          # too few units a thread
    assert not p.infer_units(2, 1, 64, 65536, 8)                      # a hand-over from idle: not yet
    assert p.lingering_split_min_work == 131072                       # 4 hand-overs: a batch split
    assert p.batch_split_lingering(2, 16, 131072) == 2 and p.batch_split_lingering(2, 16, 131071) == 1
    assert p.batch_split_lingering(2, 7, 10 ** 9) == 1 and p.batch_split(2, 16, 131072) == 1
    for m in (Machine(handover_s=100e-6, madd_rate=40e9, l2_bytes=1 << 20),
              Machine(handover_s=100e-6, madd_rate=40e9, l2_bytes=1 << 20, linger_handover_s=math.inf)):
        assert not Plan.for_machine(m).infer_units_lingering(2, 1, 64, 10 ** 15, 8)
        assert Plan.for_machine(m).batch_split_lingering(2, 64, 10 ** 15) == 1


def test_pipeline_step_rule():
    """An inference projection is computed ahead only when a step's share of
    it is at least two compiled hand-overs' worth (rounded to a power of
    two); without a compiled hand-over (not measured) the total work alone
    decides, as the plan's other callers do."""
    p = Plan.for_machine(Machine(handover_s=100e-6, madd_rate=40e9, l2_bytes=1 << 20, linger_handover_s=1e-6))
    assert p.pipeline_min_step_work == 65536                          # 2 x 1 us x 40 G/s: 80K -> 64K
    w = p.pipeline_min_work
    assert p.pipeline(2, w, 65536) and not p.pipeline(2, w, 65535)
    assert p.pipeline(2, w) and not p.pipeline(2, w - 1, 10 ** 9)     # (no step: the total alone)
    assert not p.pipeline(1, 10 ** 12, 10 ** 9)
    unmeasured = Plan.for_machine(Machine(handover_s=100e-6, madd_rate=40e9, l2_bytes=1 << 20))
    assert unmeasured.pipeline_min_step_work == 0 and unmeasured.pipeline(2, w, 1)


def test_small_steps_are_not_pipelined(monkeypatch):
    """A layer whose projection a step is under the plan's step work runs
    it in the loop's own call (not ahead, nor split before the loop), and
    a small LSTM batch takes the fused batch split on polling threads
    instead; a unit split keeps its projection ahead; the results are the
    same bits as at one thread."""
    import numpy as np
    from fastseq.nn import Recurrent
    plan = _plan.current()
    monkeypatch.setattr(plan, "pipeline_min_work", 1 << 20)
    monkeypatch.setattr(plan, "matmul_split_min_work", 1 << 20)
    monkeypatch.setattr(plan, "pipeline_min_step_work", 65536)
    monkeypatch.setattr(plan, "lingering_split_min_work", 1 << 17)
    with _threads.limit(2):
        rnn = Recurrent("rnn", 64, 64, random_state=0).eval()
        assert rnn._layer_modes(4, 128) == ("one",)                  # 16K a step, 2.1M in all
        assert rnn._layer_modes(16, 128) == ("ahead",)               # 64K a step
        assert Recurrent("gru", 6, 64)._layer_modes(8, 1500) == ("one",)   # 9K a step: not split either
        assert Recurrent("gru", 6, 64)._layer_modes(8, 1500, units=True) == ("ahead",)
        lstm = Recurrent("lstm", 32, 32, random_state=0).eval()
        if _sync.AVAILABLE:
            assert lstm._decide_inference(4, 128)[:2] == ("fused-lingering", 2)
        monkeypatch.setattr(plan, "pipeline_min_step_work", 0)
        assert rnn._layer_modes(4, 128) == ("ahead",)
        assert lstm._decide_inference(4, 128)[0] == "one"
        monkeypatch.setattr(plan, "pipeline_min_step_work", 65536)
        X = np.random.default_rng(0).standard_normal((4, 128, 32)).astype(np.float32)
        two = [lstm.forward(X, need_grad=False)[0] for _ in range(3)]
    with _threads.limit(1):
        one = lstm.forward(X, need_grad=False)[0]
    for out in two:
        np.testing.assert_array_equal(out, one)


def test_measure_and_cache(tmp_path, monkeypatch):
    """The facts are measured once (finite, positive, in a plausible range),
    written to the cache file, and read back instead of measured again; a
    broken or foreign file is measured around and replaced."""
    path = str(tmp_path / "sub" / "plan.json")
    m = _plan.load_or_measure(path)
    assert 1e-7 < m.handover_s < 0.1 and 1e7 < m.madd_rate < 1e14 and m.l2_bytes >= 64 * 1024
    assert 4 * 1024 <= m.l1_bytes <= m.l2_bytes
    assert 1e-9 < m.linger_handover_s < 0.01 or not _sync.AVAILABLE
    with open(path) as f:
        assert json.load(f)["machine"] == {"handover_s": m.handover_s, "madd_rate": m.madd_rate,
                                           "l2_bytes": m.l2_bytes, "l3_bytes": m.l3_bytes,
                                           "linger_handover_s": m.linger_handover_s, "l1_bytes": m.l1_bytes}
    monkeypatch.setattr(_plan, "measure", lambda: pytest.fail("measured again"))
    assert _plan.load_or_measure(path) == m
    with open(path, "w") as f:
        f.write("{not json")
    monkeypatch.setattr(_plan, "measure", lambda: Machine(1e-4, 1e9, 1 << 20))
    assert _plan.load_or_measure(path) == Machine(1e-4, 1e9, 1 << 20)
    assert _plan.load_or_measure(path) == Machine(1e-4, 1e9, 1 << 20)   # rewritten


def test_cache_location_and_first_use(tmp_path, monkeypatch):
    """FASTSEQ_CACHE_DIR holds the facts, in a file named by the CPU, the
    vector width and the core count; the plan is made on first use, and a
    call on one thread needs none (nothing measured)."""
    monkeypatch.setenv("FASTSEQ_CACHE_DIR", str(tmp_path))
    path = _plan._cache_path()
    assert path.startswith(str(tmp_path)) and path.endswith(".json")
    monkeypatch.setattr(_plan, "_current", None)
    monkeypatch.setattr(_plan, "measure", lambda: pytest.fail("measured for a one-thread call"))
    with _threads.limit(1):
        assert not _threads.splits(1000, 10 ** 12) and not _threads.matmul_splits(10 ** 4, 10 ** 4, 10 ** 4)
    monkeypatch.setattr(_plan, "measure", lambda: Machine(1e-4, 4e10, 512 * 1024))
    with _threads.limit(2):
        assert _threads.splits(64, 10 ** 9)
    assert _plan._current == Plan.for_machine(Machine(1e-4, 4e10, 512 * 1024))


def test_one_thread_layer_calls_measure_nothing(monkeypatch):
    """Layer calls on one thread (LSTM inference fused, one-call and
    packed, GRU and Elman inference, an LSTM training step) decide
    without the machine's measured facts: the fused projection's rule
    reads the cache sizes from the operating system
    (:func:`fastseq._plan.for_threads`), and a projection is split only
    with more than one thread."""
    import numpy as np
    from fastseq.nn import Recurrent

    monkeypatch.setattr(_plan, "_current", None)
    monkeypatch.setattr(_plan, "_one_thread", None)
    monkeypatch.setattr(_plan, "measure", lambda: pytest.fail("measured for a one-thread call"))
    rng = np.random.default_rng(0)
    with _threads.limit(1):
        for cell in ("lstm", "gru", "rnn"):
            layer = Recurrent(cell, 8, 16, random_state=0)
            for B in (1, 8):
                X = rng.standard_normal((B, 5, 8)).astype(np.float32)
                layer.eval().forward(X, need_grad=False)
                out, _ = layer.train().forward(X)
                layer.backward(np.ones_like(out))
        assert Recurrent("lstm", 8, 16).eval()._inference_plan(8, 5) == "fused"
    assert _plan._current is None
    one = _plan.for_threads(1)
    assert one.l2_bytes == _plan._cache_bytes(2, 1024 ** 2) and _plan.for_threads(1) is one


def test_batch_split_over_a_unit_split_of_short_steps_rule():
    """An LSTM inference call splits its batch rather than its units when
    a thread's share of a step is under eight compiled hand-overs' worth
    (rounded to a power of two; its barrier a step would cost more than an
    eighth), each thread gets a row block and the weights fit in half the
    L2; never when the machine has no compiled hand-over."""
    p = Plan.for_machine(Machine(handover_s=100e-6, madd_rate=40e9, l2_bytes=1 << 20, linger_handover_s=1e-6))
    assert p.units_min_step_work == 262144
    w = 2 * 262144                                                  # two threads' shares
    assert p.batch_over_units(2, 8, w - 1, 512 * 1024, 4)
    assert not p.batch_over_units(2, 8, w, 512 * 1024, 4)            # long enough steps
    assert not p.batch_over_units(2, 7, 100, 512 * 1024, 4)          # under a row block a thread
    assert not p.batch_over_units(2, 8, 100, 512 * 1024 + 1, 4)      # weights past half the L2
    assert p.batch_over_units(4, 16, 2 * w - 1, 1000, 4)
    for m in (Machine(handover_s=100e-6, madd_rate=40e9, l2_bytes=1 << 20),
              Machine(handover_s=100e-6, madd_rate=40e9, l2_bytes=1 << 20, linger_handover_s=math.inf)):
        assert not Plan.for_machine(m).batch_over_units(2, 64, 1, 1, 4)


def test_fused_projection_rule():
    """The input projection goes into the step product from one row block
    when [W_ih | W_hh] fits in half the L2, from two row blocks when it
    fits in half the L3, never beyond, and never when the separate
    projection runs on a second thread beside the loop."""
    p = Plan.for_machine(Machine(handover_s=100e-6, madd_rate=40e9, l2_bytes=1 << 20, l3_bytes=32 << 20))
    assert not p.fuse_projection(3, 4, 1000)                  # below a row block
    assert p.fuse_projection(4, 4, 512 * 1024)                # half the L2
    assert not p.fuse_projection(7, 4, 512 * 1024 + 1)
    assert p.fuse_projection(8, 4, 512 * 1024 + 1)            # two row blocks
    assert p.fuse_projection(64, 4, 16 << 20)                 # half the L3
    assert not p.fuse_projection(64, 4, (16 << 20) + 1)       # streamed from memory
    assert not p.fuse_projection(4, 4, 1000, pipelined=True)  # the projection on a second thread


def test_shared_packed_weight_rule():
    """The slices of a batch split share one packed weight from just past
    a core's L2; one thread has nothing to share."""
    p = Plan.for_machine(Machine(handover_s=100e-6, madd_rate=40e9, l2_bytes=1 << 20))
    assert not p.share_packed(2, 1 << 20)
    assert p.share_packed(2, (1 << 20) + 1) and p.share_packed(8, 16 << 20)
    assert not p.share_packed(1, 16 << 20)
    big_l2 = Plan.for_machine(Machine(handover_s=100e-6, madd_rate=40e9, l2_bytes=2 << 20))
    assert not big_l2.share_packed(2, (1 << 20) + 1)


def test_few_rows_batch_split_rule():
    """A batch of fewer rows a thread than a row block splits on lingering
    threads (a sequence a thread at least) while a unit split cannot take
    the layer, its fused weights fit in half the L2 and from the lingering
    split's work."""
    p = Plan.for_machine(Machine(handover_s=100e-6, madd_rate=40e9, l2_bytes=1 << 20, linger_handover_s=1e-6))
    w = p.lingering_split_min_work
    assert p.batch_split_few_rows(2, 4, 32, w, 32 * 1024) == 2
    assert p.batch_split_few_rows(2, 2, 63, w, 512 * 1024) == 2
    assert p.batch_split_few_rows(4, 3, 32, w, 1000) == 3                  # a sequence a thread
    assert p.batch_split_few_rows(2, 1, 32, w, 1000) == 1
    assert p.batch_split_few_rows(2, 4, 64, w, 1000) == 1                  # a unit split's layer
    assert p.batch_split_few_rows(2, 4, 32, w, 512 * 1024 + 1) == 1        # past half the L2
    assert p.batch_split_few_rows(2, 4, 32, w - 1, 1000) == 1
    assert p.batch_split_few_rows(1, 4, 32, w, 1000) == 1
    never = Plan.for_machine(Machine(handover_s=100e-6, madd_rate=40e9, l2_bytes=1 << 20))
    assert never.batch_split_few_rows(2, 4, 32, 1 << 40, 1000) == 1        # no thread lingers


def test_unit_split_rows_rule():
    """An LSTM splits its units for batches under two row blocks a thread;
    a GRU from 64 units a thread too, narrower under half a row block."""
    p = Plan.for_machine(Machine(handover_s=100e-6, madd_rate=40e9, l2_bytes=1 << 20))
    assert p.units_max_rows(2, 64, 4, 4) == 8
    assert p.units_max_rows(2, 128, 3, 4) == 8 and p.units_max_rows(4, 256, 3, 4) == 8
    assert p.units_max_rows(2, 127, 3, 4) == 2 and p.units_max_rows(2, 64, 3, 4) == 2
    assert p.units_max_rows(4, 128, 3, 4) == 2
    assert p.units_max_rows(2, 64, 3, 1) == 1
    # weights [W_ih | W_hh] over half the L2, from 64 units a thread (each
    # thread of a batch split would stream them all from the L3 at every
    # step): up to 8 row blocks a thread for an LSTM whose weights fit in
    # half the L3 (the fused kernel's batch split takes it beyond), else 16
    half, l3_half = (1 << 20) // 2, p.l3_bytes // 2
    assert p.units_max_rows(2, 256, 4, 4, half + 1) == 32 and p.units_max_rows(2, 256, 4, 4, half) == 8
    assert p.units_max_rows(2, 256, 4, 4, l3_half) == 32 and p.units_max_rows(2, 256, 4, 4, l3_half + 1) == 64
    assert p.units_max_rows(2, 128, 3, 4, half + 1) == 64 and p.units_max_rows(2, 128, 3, 4, l3_half + 1) == 64
    assert p.units_max_rows(2, 127, 4, 4, half + 1) == 8 and p.units_max_rows(2, 127, 3, 4, half + 1) == 2


def test_inference_unit_split_rule():
    """Inference splits its hidden units while a batch split would give a
    thread fewer than the given rows, from a pipelined projection's work
    and with enough units a thread; never on one thread."""
    p = Plan.for_machine(Machine(handover_s=100e-6, madd_rate=40e9, l2_bytes=1 << 20))
    w = p.pipeline_min_work
    assert p.infer_units(2, 1, 64, w, 16)
    assert p.infer_units(2, 31, 256, w, 16)
    assert not p.infer_units(2, 32, 256, w, 16)                # 16 rows a thread
    assert p.infer_units(4, 63, 256, w, 16)                    # (more threads: a larger batch)
    assert p.infer_units(2, 3, 256, w, 2) and not p.infer_units(2, 4, 256, w, 2)
    assert not p.infer_units(2, 1, 64, w - 1, 16)              # too little work
    assert not p.infer_units(2, 1, 63, w, 16)                  # under 32 units a thread
    assert not p.infer_units(1, 1, 256, 10 ** 12, 16)


def test_blas_crossover_rule():
    """The step product calls BLAS from the fewest rows timed from which
    BLAS is at least BLAS_ROWS_MARGIN faster at every larger count; never
    within the counts timed: twice the most rows timed."""
    m = _plan.BLAS_ROWS_MARGIN
    assert _plan.blas_crossover({128: (1.0, 2.0), 256: (2.0, 3.0), 512: (4.0, 5.0)}) == 1024
    assert _plan.blas_crossover({128: (2.0, 1.0), 256: (4.0, 2.0), 512: (8.0, 4.0)}) == 128
    assert _plan.blas_crossover({128: (1.0, 2.0), 256: (4.0, 2.0), 512: (8.0, 4.0)}) == 256
    assert _plan.blas_crossover({128: (2.0, 1.0), 256: (1.0, 2.0), 512: (8.0, 4.0)}) == 512   # not at 256
    assert _plan.blas_crossover({128: (1.0, 1.0), 256: (1.0 * m, 1.0)}) == 256                 # the margin
    assert _plan.blas_crossover({128: (1.0, 1.0), 256: (0.999 * m, 1.0)}) == 512


def test_blas_rows_measured_once_and_kept(tmp_path, monkeypatch):
    """The crossover is timed on this machine (every count timed, both
    engines, positive), written beside the planner's facts and read back
    instead of timed again; a broken file is timed around and replaced.
    Timing leaves the kernels' number as it was."""
    from fastseq.kernels._runtime import PACKED_BLAS_MIN_ROWS

    before = PACKED_BLAS_MIN_ROWS.get()
    times = _plan.measure_blas_times()
    assert sorted(times) == list(_plan.BLAS_ROWS_SIZES)
    assert all(0 < t < 10 for pair in times.values() for t in pair)
    assert PACKED_BLAS_MIN_ROWS.get() == before
    path = str(tmp_path / "sub" / "blas.json")
    monkeypatch.setattr(_plan, "measure_blas_times", lambda: {128: (2.0, 1.0), 256: (4.0, 2.0)})
    assert _plan.load_or_measure_blas_rows(path) == 128
    with open(path) as f:
        assert json.load(f)["rows"] == 128
    monkeypatch.setattr(_plan, "measure_blas_times", lambda: pytest.fail("timed again"))
    assert _plan.load_or_measure_blas_rows(path) == 128
    with open(path, "w") as f:
        f.write("{not json")
    monkeypatch.setattr(_plan, "measure_blas_times", lambda: {128: (1.0, 2.0)})
    assert _plan.load_or_measure_blas_rows(path) == 256
    assert _plan.load_or_measure_blas_rows(path) == 256   # rewritten


def test_packed_product_reads_its_blas_rows_at_run_time(blas_rows):
    """The kernels read the crossover when they run, not when they were
    compiled (or loaded from the cache): the same compiled product takes
    BLAS (which reads ``w``) from the rows set and its tiles (which read the
    packed weight, here packed from another matrix) below them."""
    import numpy as np
    from numba import njit

    from fastseq.kernels.matmul import pack_weight, packed_matmul

    pack = njit(lambda w: pack_weight(w).copy())
    rng = np.random.default_rng(0)
    a = rng.standard_normal((40, 32), dtype=np.float32)
    w = rng.standard_normal((64, 32), dtype=np.float32)
    other = -w
    wp = pack(other)
    for rows, read in ((40, w), (41, other), (1, w), (1 << 40, other)):
        blas_rows(rows)
        out = np.full((40, 64), np.nan, np.float32)
        packed_matmul(a, w, wp, out)
        np.testing.assert_allclose(out, a @ read.T, rtol=1e-4, atol=1e-4, err_msg=str(rows))


def test_blas_rows_are_set_before_the_first_kernel(tmp_path):
    """In a fresh process the first compiled call (at one thread) finds the
    crossover set from this machine's file, and sets it once: the hook is
    gone afterwards."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, FASTSEQ_CACHE_DIR=str(tmp_path))
    code = ("import numpy as np, fastseq, fastseq.nn\n"
            "from fastseq import _fpenv, _plan\n"
            "from fastseq.kernels._runtime import PACKED_BLAS_MIN_ROWS as R\n"
            "print(_plan._blas_rows_path())\n"
            "before = R.get()\n"
            "fastseq.nn.Recurrent('gru', 3, 4, n_jobs=1).eval().forward(np.ones((2, 3, 3), np.float32), need_grad=False)\n"
            "print(before, R.get(), _fpenv.before_kernels is None)\n")
    run = lambda: subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                 timeout=600)
    first = run()
    assert first.returncode == 0, first.stderr
    path, values = first.stdout.split("\n")[:2]
    assert path.startswith(str(tmp_path)) and os.path.exists(path)
    assert values.split()[0] == "256" and values.split()[2] == "True"
    with open(path) as f:
        data = json.load(f)
    data["rows"] = 64   # as if this machine had measured 64
    with open(path, "w") as f:
        json.dump(data, f)
    second = run()
    assert second.returncode == 0, second.stderr
    assert second.stdout.split("\n")[1].split() == ["256", "64", "True"]


def test_projection_blas_bytes_follow_the_l2_cache(monkeypatch, tmp_path):
    """The input projection calls BLAS from PROJECT_BLAS_L2S of the
    machine's L2 caches of weight (2 MB on the 512 KB znver3 it was timed
    on), set with the step product's crossover, and read by the compiled
    projection at run time: the same weight takes BLAS's path below and
    above it (its packed blocks give each row the same bits whatever the
    block; BLAS's split by rows is a different sum)."""
    import numpy as np

    from fastseq import _fpenv
    from fastseq.kernels import matmul as mm
    from fastseq.kernels._runtime import PACKED_BLAS_MIN_ROWS, PROJECT_BLAS_MIN_BYTES

    monkeypatch.setattr(_plan, "_values_state", 0)
    monkeypatch.setattr(_plan, "_cache_bytes", lambda level, default: 512 * 1024 if level == 2 else default)
    monkeypatch.setattr(_plan, "load_or_measure_blas_rows", lambda: 512)
    _plan.resolve_kernel_values()
    assert PROJECT_BLAS_MIN_BYTES.get() == _plan.PROJECT_BLAS_L2S * 512 * 1024 == 2 * 1024 * 1024
    assert PACKED_BLAS_MIN_ROWS.get() == 512 and _fpenv.before_kernels is None and _plan._values_state == 2
    from numba import njit

    from fastseq._config import JIT

    blas = njit(**{**JIT, "cache": False})(lambda a, w_t, out: np.dot(a, w_t, out))
    packed = njit(**{**JIT, "cache": False})(
        lambda a, w, bias, out: mm.project_packed(a, w, mm.pack_weight(w), bias, out))
    rng = np.random.default_rng(0)
    inp = rng.standard_normal((8, 4096), dtype=np.float32)
    w = rng.standard_normal((40, 4096), dtype=np.float32)
    bias = np.empty(0, np.float32)
    ref_blas, ref_packed = np.empty((8, 40), np.float32), np.empty((8, 40), np.float32)
    blas(inp, np.ascontiguousarray(w.T), ref_blas)
    packed(inp, w, bias, ref_packed)
    for limit, ref in ((w.nbytes, ref_blas), (w.nbytes + 1, ref_packed), (1, ref_blas)):
        PROJECT_BLAS_MIN_BYTES.set(limit)
        out = np.full((8, 40), np.nan, np.float32)
        mm.project(inp, w, bias, out)
        np.testing.assert_array_equal(out, ref, err_msg=str(limit))
    # (over 4,096 inputs the two sum differently here, so each path is told apart)


def test_a_failed_timing_leaves_the_defaults_and_the_thread_as_it_was(monkeypatch):
    """When the crossover cannot be timed, the first compiled call runs on
    with the kernels' default, the flush-to-zero depth of its thread is
    left as it was, and nothing is tried again."""
    import numpy as np

    from fastseq import _fpenv
    from fastseq.kernels._runtime import PACKED_BLAS_MIN_ROWS
    from fastseq.nn import Recurrent

    def broken():
        raise RuntimeError("no timing here")
    monkeypatch.setattr(_plan, "_values_state", 0)
    monkeypatch.setattr(_fpenv, "before_kernels", _plan.resolve_kernel_values)
    monkeypatch.setattr(_plan, "load_or_measure_blas_rows", broken)
    PACKED_BLAS_MIN_ROWS.set(256)
    depth = getattr(_fpenv._local, "st", [0, 0])[0]
    out, _ = Recurrent("gru", 3, 4, random_state=0, n_jobs=1).eval().forward(
        np.ones((2, 3, 3), np.float32), need_grad=False)
    assert np.isfinite(out).all()
    assert PACKED_BLAS_MIN_ROWS.get() == 256 and _plan._values_state == 2 and _fpenv.before_kernels is None
    assert getattr(_fpenv._local, "st", [0, 0])[0] == depth


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_fork_while_the_numbers_are_being_set_does_not_hang_the_child(monkeypatch):
    """A process forked while another of its threads holds the lock of the
    first call's timing: the child's first compiled call sets the numbers
    itself instead of waiting for a thread it does not have."""
    import os
    import threading
    import time

    import numpy as np

    from fastseq import _fpenv
    from fastseq.nn import Recurrent

    started, release = threading.Event(), threading.Event()

    def slow():
        started.set()
        release.wait(30)
        return 512
    monkeypatch.setattr(_plan, "_values_state", 0)
    monkeypatch.setattr(_fpenv, "before_kernels", _plan.resolve_kernel_values)
    monkeypatch.setattr(_plan, "load_or_measure_blas_rows", slow)
    t = threading.Thread(target=_plan.resolve_kernel_values)
    t.start()
    assert started.wait(30)
    pid = os.fork()
    if pid == 0:   # the child: one forward, then out without pytest's teardown
        code = 1
        try:
            _plan.load_or_measure_blas_rows = lambda: 128
            out, _ = Recurrent("rnn", 2, 3, random_state=0, n_jobs=1).eval().forward(
                np.ones((1, 2, 2), np.float32), need_grad=False)
            from fastseq.kernels._runtime import PACKED_BLAS_MIN_ROWS
            code = 0 if np.isfinite(out).all() and PACKED_BLAS_MIN_ROWS.get() == 128 else 2
        finally:
            os._exit(code)
    release.set()
    t.join(30)
    deadline = time.monotonic() + 60
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            pytest.fail("the child's first call hung")
        threading.Event().wait(0.05)
    assert os.waitstatus_to_exitcode(status) == 0

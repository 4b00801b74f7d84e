"""How fastseq hands work to its second thread, measured: where the halves of
a split call run, what polling saves, and the one-product weight gradients.

Run from the repository root::

    python -m bench.handover              # about a minute on 2 cores
    python -m bench.handover --quick      # seconds (smaller counts)

Four parts, each against the baseline it changed, on this machine:

1. **Placement** (:func:`fastseq._threads._place`): a conv front-end layer
   (B 32, T 400, F 12, 32 filters, K 7, pool 2) at 2 threads, in bursts of
   10 calls after 20 ms idle; the CPU of each half is logged
   (``sched_getcpu``).  Reported: the calls whose halves shared a CPU and the
   median call, with the pool threads placed off the caller's CPU (fastseq's
   way) and left anywhere (the scheduler's choice).
2. **Polling** (:func:`fastseq._threads._start`): a small split layer (B 32,
   T 100, F 12, 32 filters, K 7) timed with
   :func:`bench.compare.time_alternating`: 2 threads polling, 2 threads
   sleeping at once (``LINGER_SPINS = JOIN_SPINS = 0``, what
   ``OMP_WAIT_POLICY=passive`` sets), 1 thread, and torch's Conv1d + ReLU +
   MaxPool1d at 2 threads.
3. **Weight gradients** of a recurrent layer at 2 threads: ``dgates.T @
   [inputs | h_prev]`` as one product (fastseq's way when the inputs are no
   wider than the state) against the two products ``dgates.T @ inputs`` and
   ``dgates.T @ h_prev``, each split in row blocks.

4. **Hand-over latency** (:class:`fastseq._threads._Worker`): back-to-back
   hand-overs of a part that does nothing, with ``time.perf_counter`` stamps:
   when the pool thread's part starts after the call begins, when the
   caller's ``join`` returns after that part, and the whole call; fastseq's
   pool (the thread lingers after a task, publishes its done flag and polls
   for the next claim in one compiled call, and polls ``SETTLE_SPINS`` times
   before it takes the GIL), the same with ``SETTLE_SPINS = 0``, and a
   ``concurrent.futures.ThreadPoolExecutor`` round trip (what the pool was
   before; its thread runs Python between the task and its next wait, so a
   caller that returns then waits for the GIL).

Placement needs Linux; elsewhere part 1 says so and is skipped.
"""

import argparse
import ctypes
import statistics
import time

import numpy as np


def _conv(B, T, F, C, K, p):
    from fastseq.network.conv import ConvStack

    X = np.random.default_rng(0).standard_normal((B, T, F)).astype(np.float32)
    cs = ConvStack(F, C, K, p, dtype="float32", random_state=0)
    return cs, X, np.full(B, T, dtype=np.int64)


def placement(bursts, calls=10, idle=0.02):
    """``{mode: (co-located calls, all calls, median ms)}`` for "placed" and
    "anywhere" (see the module docstring)."""
    import fastseq.network.conv as NC
    from fastseq import _threads

    if not _threads.PLACEMENT_AVAILABLE:
        return None
    getcpu = ctypes.CDLL(None).sched_getcpu
    cs, X, lengths = _conv(32, 400, 12, 32, 7, 2)
    cpus = []
    real, available = NC.conv_forward, _threads.PLACEMENT_AVAILABLE

    def logged(*args):
        cpus.append(getcpu())
        real(*args)
    NC.conv_forward = logged
    res = {}
    try:
        with _threads.limit(2):
            for mode in ("anywhere", "placed"):
                _threads.PLACEMENT_AVAILABLE = mode == "placed"
                if mode == "anywhere":  # undo what an earlier call set
                    every = _threads._allowed_cpus()
                    for tids in _threads._worker_tids.values():
                        for tid in tids:
                            _threads._set_affinity(tid, every)
                    _threads._placed.clear()
                cs.forward(X, lengths, need_grad=False)
                shared = total = 0
                times = []
                for _ in range(bursts):
                    time.sleep(idle)
                    for _ in range(calls):
                        del cpus[:]
                        t0 = time.perf_counter()
                        cs.forward(X, lengths, need_grad=False)
                        times.append(time.perf_counter() - t0)
                        if len(cpus) == 2:
                            total += 1
                            shared += cpus[0] == cpus[1]
                res[mode] = (shared, total, 1e3 * statistics.median(times))
    finally:
        NC.conv_forward, _threads.PLACEMENT_AVAILABLE = real, available
    return res


def polling(repeats):
    """Median ms of the small split layer: polling, sleeping, one thread, torch."""
    import torch

    from bench.compare import time_alternating
    from fastseq import _threads

    B, T, F, C, K, p = 32, 100, 12, 32, 7, 2
    cs, X, lengths = _conv(B, T, F, C, K, p)
    conv = torch.nn.Conv1d(F, C, K, padding=K // 2)
    net = torch.nn.Sequential(conv, torch.nn.ReLU(), torch.nn.MaxPool1d(p))
    tX = torch.tensor(np.ascontiguousarray(X.transpose(0, 2, 1)))
    spins = (_threads.LINGER_SPINS, _threads.JOIN_SPINS)

    def with_spins(linger, join):
        def call():
            _threads.LINGER_SPINS, _threads.JOIN_SPINS = linger, join
            cs.forward(X, lengths, need_grad=False)
        return call

    def one_thread():
        with _threads.limit(1):
            cs.forward(X, lengths, need_grad=False)

    def torch_forward():
        with torch.inference_mode():
            net(tX)
    try:
        with _threads.limit(2):
            t = time_alternating({"polling": with_spins(*spins), "sleeping": with_spins(0, 0),
                                  "one thread": one_thread, "torch": torch_forward}, repeats)
    finally:
        _threads.LINGER_SPINS, _threads.JOIN_SPINS = spins
    return {k: 1e3 * v for k, v in t.items()}


#: (name, gate rows GH, inputs F, state H, rows N)
GRAD_CASES = [("MNIST rows LSTM", 1024, 28, 256, 3584), ("MNIST rows RNN", 256, 28, 256, 3584),
              ("LSTM F = H = 256", 1024, 256, 256, 2048), ("weather-like LSTM", 256, 5, 64, 49152)]


def weight_grads(repeats, cases=None):
    """Median ms of both weight gradients: one product against two
    (``cases`` default :data:`GRAD_CASES`)."""
    from bench.compare import time_alternating
    from fastseq import _threads
    from fastseq._workspace import scratch

    cases = GRAD_CASES if cases is None else cases
    rng = np.random.default_rng(0)
    rows = []
    for name, GH, F, H, N in cases:
        g = rng.standard_normal((N, GH), dtype=np.float32)
        x = rng.standard_normal((N, F), dtype=np.float32)
        h = rng.standard_normal((N, H), dtype=np.float32)
        d_ih, d_hh = np.empty((GH, F), np.float32), np.empty((GH, H), np.float32)

        def two():
            _threads.parallel_matmul(g.T, x, out=d_ih)
            _threads.parallel_matmul(g.T, h, out=d_hh)

        def one(xh=None, both=None):
            xh = np.empty((N, F + H), np.float32) if xh is None else xh
            _threads.parallel_copy(xh[:, :F], x)
            _threads.parallel_copy(xh[:, F:], h)
            both = _threads.parallel_matmul(g.T, xh, out=both)
            d_ih[...], d_hh[...] = both[:, :F], both[:, F:]

        def one_kept():
            one(scratch("bench_xh", (N, F + H), np.float32), scratch("bench_both", (GH, F + H), np.float32))
        with _threads.limit(2), _threads.blas_single_thread():
            t = time_alternating({"two products": two, "one product": one, "kept buffers": one_kept},
                                 repeats, min_time=0.01)
        rows.append((name, GH, F, H, N, 1e3 * t["two products"], 1e3 * t["one product"],
                     1e3 * t["kept buffers"]))
    return rows


def handover_latency(rounds):
    """``{mode: (part starts, join returns after it, whole call)}`` in
    microseconds, medians of ``rounds`` back-to-back hand-overs (see the
    module docstring)."""
    from concurrent.futures import ThreadPoolExecutor

    from fastseq import _threads

    stamp = [0.0]

    def part():
        stamp[0] = time.perf_counter()

    def fastseq_way():
        t0 = time.perf_counter()
        join = _threads._start(1, [part])
        join()
        return t0, time.perf_counter()

    executor = ThreadPoolExecutor(1)

    def executor_way():
        t0 = time.perf_counter()
        executor.submit(part).result()
        return t0, time.perf_counter()

    settle = _threads.SETTLE_SPINS
    out = {}
    try:
        for mode, way, spins in (("fastseq", fastseq_way, settle), ("no settle polls", fastseq_way, 0),
                                 ("ThreadPoolExecutor", executor_way, settle)):
            _threads.SETTLE_SPINS = spins
            starts, joins, calls = [], [], []
            for i in range(rounds + 20):
                t0, t1 = way()
                if i >= 20:
                    starts.append(stamp[0] - t0)
                    joins.append(t1 - stamp[0])
                    calls.append(t1 - t0)
            out[mode] = tuple(1e6 * statistics.median(v) for v in (starts, joins, calls))
    finally:
        _threads.SETTLE_SPINS = settle
        executor.shutdown()
    return out


def main(argv=None):
    from bench.compare import cpu_header, machine_info, set_threads

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    bursts, repeats = (4, 3) if args.quick else (40, 11)
    info = machine_info(2)
    print(cpu_header(info), f"(load average {info['load_avg'][0]:.1f})")
    with set_threads(2):
        place = placement(bursts)
        if place is None:
            print("1. placement: not available here (needs Linux)")
        else:
            print("1. conv layer B32 T400 F12 C32 K7 p2, 2 threads, bursts of 10 calls after "
                  "20 ms idle")
            for mode, (shared, total, ms) in place.items():
                print(f"   pool threads {mode:8s}: halves on one CPU in {shared} of {total} "
                      f"calls, median call {ms:.3f} ms")
        poll = polling(repeats)
        print("2. conv layer B32 T100 F12 C32 K7 p2, median ms: "
              + ", ".join(f"{k} {v:.3f}" for k, v in poll.items())
              + f"; torch / polling {poll['torch'] / poll['polling']:.2f}x, "
              f"torch / sleeping {poll['torch'] / poll['sleeping']:.2f}x")
        print("3. both weight gradients, 2 threads, median ms (two products -> one, "
              "with a fresh buffer / a kept one):")
        for name, GH, F, H, N, two, one, kept in weight_grads(repeats):
            print(f"   {name:18s} ({GH} x {N}) @ ({N} x {F} + {H}): {two:7.2f} -> {one:7.2f} "
                  f"({two / one:.2f}x) / {kept:7.2f} ({two / kept:.2f}x)")
        print("4. hand-over of a part that does nothing, back to back, median us:")
        latency = handover_latency(50 if args.quick else 1000)
        for mode, (start, join, call) in latency.items():
            print(f"   {mode:18s}: part starts {start:6.1f}, join returns {join:6.1f} after it, "
                  f"call {call:6.1f}")
    return {"placement": place, "polling": poll, "latency": latency}


if __name__ == "__main__":
    main()

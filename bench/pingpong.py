"""The round trip of a cache line between two CPUs, over time, beside a
unit-split call and its one-thread form.

Run from the repository root::

    python -m bench.pingpong                    # 20 s, a line every 0.5 s
    python -m bench.pingpong --seconds 60 --H 128

Two threads pinned to the first two CPUs this process may use bounce a
counter (each waits for the other's store, then stores its own): the
nanoseconds a round trip takes is what every step of a unit split pays at
its barrier, twice or more (the barrier, then the other thread's half of
the state). Between two probes the script times an LSTM layer's
inference of one sequence (``--H`` units, ``--T`` steps) split by units
(``n_jobs=2``) and on one thread (``n_jobs=1``; the same bits), medians
of ``--calls`` calls back to back. On a virtual machine whose two vCPUs
the host places near or far from each other, and moves, the round trip
and the split's time change together while the one-thread time does not.
"""

import argparse
import os
import threading
import time

import numpy as np
from numba import njit

from fastseq.kernels._sync import load_acquire, store_release


@njit(nogil=True, cache=True)
def _ping(flags, n):
    for i in range(1, n + 1):
        store_release(flags, 0, i)
        while load_acquire(flags, 8) < i:
            pass


@njit(nogil=True, cache=True)
def _pong(flags, n):
    for i in range(1, n + 1):
        while load_acquire(flags, 0) < i:
            pass
        store_release(flags, 8, i)


def round_trip_ns(cpus, rounds=20000):
    """Nanoseconds a round trip between threads pinned to ``cpus[0]`` (this
    thread, for the call) and ``cpus[1]``."""
    flags = np.zeros(32, dtype=np.int64)   # (the two counters 64 bytes apart)
    saved = os.sched_getaffinity(0)

    def other():
        os.sched_setaffinity(0, {cpus[1]})
        _pong(flags, rounds)

    t = threading.Thread(target=other)
    os.sched_setaffinity(0, {cpus[0]})
    try:
        t.start()
        t0 = time.perf_counter()
        _ping(flags, rounds)
        dt = time.perf_counter() - t0
        t.join()
    finally:
        os.sched_setaffinity(0, saved)
    return dt / rounds * 1e9


def _median_us(fn, calls):
    ts = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)) * 1e6


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--H", type=int, default=64)
    ap.add_argument("--T", type=int, default=128)
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--every", type=float, default=0.5, help="seconds from one line to the next")
    args = ap.parse_args(argv)
    if args.seconds <= 0 or args.H < 1 or args.T < 2 or args.calls < 1:
        ap.error("--seconds, --H, --calls must be positive and --T at least 2")
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        ap.error("needs two CPUs")
    from fastseq.nn import Recurrent

    from bench.compare import cpu_header, machine_info

    print(cpu_header(machine_info(2)))
    X = np.random.default_rng(0).standard_normal((1, args.T, args.H)).astype(np.float32)
    layers = {}
    for n in (2, 1):
        layer = Recurrent("lstm", args.H, args.H, random_state=0, n_jobs=n)
        layer.eval()
        for _ in range(3):
            layer.forward(X, need_grad=False)
        layers[n] = layer
    same = np.array_equal(layers[1].forward(X, need_grad=False)[0], layers[2].forward(X, need_grad=False)[0])
    print(f"LSTM B1/H{args.H}/T{args.T}, route at 2 threads: {layers[2]._inference_plan(1, args.T)}; "
          f"the same bits on 1 and 2 threads: {same}")
    print(f"CPUs {cpus[0]} and {cpus[1]} | round trip ns | 2 threads us | 1 thread us")
    rows = []
    end = time.perf_counter() + args.seconds
    t_start = time.perf_counter()
    while time.perf_counter() < end:
        t_line = time.perf_counter()
        rt = round_trip_ns(cpus[:2])
        two = _median_us(lambda: layers[2].forward(X, need_grad=False), args.calls)
        one = _median_us(lambda: layers[1].forward(X, need_grad=False), args.calls)
        rows.append({"t_s": time.perf_counter() - t_start, "round_trip_ns": rt, "two_us": two, "one_us": one})
        print(f"{rows[-1]['t_s']:6.1f} s | {rt:6.0f} | {two:7.1f} | {one:7.1f}", flush=True)
        time.sleep(max(0.0, args.every - (time.perf_counter() - t_line)))
    mid = float(np.median([r["round_trip_ns"] for r in rows]))
    groups = (("round trip under 0.6x the median (the two vCPUs one core's hardware threads?)",
               lambda r: r < 0.6 * mid),
              ("within 0.6-2x the median", lambda r: 0.6 * mid <= r <= 2 * mid),
              ("over 2x the median (far apart)", lambda r: r > 2 * mid))
    for name, sel in groups:
        part = [r for r in rows if sel(r["round_trip_ns"])]
        if part:
            print(f"{name}: {len(part)} lines, round trip {np.median([r['round_trip_ns'] for r in part]):.0f} ns, "
                  f"2 threads {np.median([r['two_us'] for r in part]):.1f} us, "
                  f"1 thread {np.median([r['one_us'] for r in part]):.1f} us (medians)")
    return rows


if __name__ == "__main__":
    main()

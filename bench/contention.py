"""Inference beside a busy CPU: what fastseq's busy-CPU finding
(:func:`fastseq._threads.cpu_busy`) saves, against torch.

Run from the repository root::

    python -m bench.contention                 # about a minute on 2 cores
    python -m bench.contention --busy 0        # the same with nothing beside it
    python -m bench.contention --train         # training steps instead
    python -m bench.contention --quick         # seconds

For each case (a layer's inference at the given thread count, weights
copied from torch; with ``--train`` a training step of
:class:`bench.compare.FastseqTrainer` and ``TorchTrainer``: forward,
backward, clipping, Adam), three engines take turns, each calling back to back for
``--seconds`` while ``--busy`` other processes (a Python loop each) keep
CPUs busy: fastseq as it is, fastseq with the finding off (no split call is
timed: every split runs split, as before the finding existed), and torch.
The mean of a call counts everything a user would wait for, the slow calls
that find a busy CPU included; the median is also given, and the busy CPUs
that fastseq found in its turns (``fastseq._threads.busy_findings``).  The first
``--warmup`` seconds of each turn are not counted.  Results are printed
with the CPU kind; nothing is asserted.
"""

import argparse
import statistics
import subprocess
import sys
import time

import numpy as np

#: (cell, B, T, F, H) of the cases
CASES = [("lstm", 1, 32, 256, 256), ("lstm", 4, 32, 128, 128), ("gru", 1, 32, 256, 256),
         ("lstm", 16, 32, 256, 256), ("lstm", 128, 28, 28, 256)]


def _busy(n):
    """``n`` processes that keep a CPU busy each (killed by the caller)."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def _calls(fn, seconds, warmup):
    """Seconds of each call of ``fn`` made back to back for ``seconds``
    (after ``warmup`` seconds of calls not counted)."""
    end = time.perf_counter() + warmup
    while time.perf_counter() < end:
        fn()
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def run_case(case, threads, seconds, warmup, rounds, train=False):
    import torch

    from bench.compare import Case, FastseqTrainer, TorchTrainer, make_torch
    from fastseq import _threads
    from fastseq.interop import from_torch

    cell, B, T, F, H = case
    c = Case(f"{cell}/B{B}/T{T}/I{F}/H{H}", "contention", cell, B, T, F, H)
    module = make_torch(c)
    layer = from_torch(module, dtype="float32")
    layer.n_jobs = threads
    X = np.random.default_rng(0).standard_normal((B, T, F)).astype(np.float32)
    G = np.random.default_rng(1).standard_normal((B, T, H)).astype(np.float32)
    tX, tG = torch.from_numpy(X), torch.from_numpy(G)
    clock = _threads._cpu_clock

    def finding(on):
        # (from a fresh state either way: a finding made by the other
        # engine's turn does not carry over)
        _threads._cpu_clock = clock if on else None
        _threads._busy_until, _threads._busy_for = 0.0, _threads.BUSY_S
        _threads._probation = _threads._strikes = 0

    if train:
        fs_trainer, torch_trainer = FastseqTrainer(layer.train()), TorchTrainer(module)

        def fastseq_call():
            fs_trainer.step(X, G)

        def torch_call():
            torch_trainer.step(tX, tG)
    else:
        layer.eval()

        def fastseq_call():
            layer.forward(X, need_grad=False)

        def torch_call():
            with torch.inference_mode():
                module(tX)
    engines = {"fastseq": (lambda: finding(True), fastseq_call),
               "no finding": (lambda: finding(False), fastseq_call),
               "torch": (lambda: None, torch_call)}
    times = {k: [] for k in engines}
    findings = 0
    try:
        for _ in range(rounds):
            for k, (setup, fn) in engines.items():
                setup()
                before = _threads.busy_findings
                times[k] += _calls(fn, seconds, warmup)
                findings += _threads.busy_findings - before
    finally:
        finding(True)
    return c.name, {k: (statistics.fmean(v), statistics.median(v)) for k, v in times.items()}, findings


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--busy", type=int, default=1, help="busy processes beside the engines (default 1)")
    p.add_argument("--seconds", type=float, default=2.0, help="seconds of timed calls a turn")
    p.add_argument("--warmup", type=float, default=0.3, help="seconds of calls before each turn's timing")
    p.add_argument("--rounds", type=int, default=2, help="turns of each engine a case")
    p.add_argument("--train", action="store_true", help="training steps instead of inference")
    p.add_argument("--quick", action="store_true", help="one small case, short turns")
    args = p.parse_args(argv)

    import torch

    from bench.compare import cpu_header, machine_info, set_threads

    set_threads(args.threads)
    torch.set_num_threads(args.threads)
    cases, seconds, warmup, rounds = CASES, args.seconds, args.warmup, args.rounds
    if args.quick:
        cases, seconds, warmup, rounds = [("lstm", 1, 8, 32, 32)], 0.1, 0.05, 1
    print(cpu_header(machine_info(args.threads)))
    print(f"{'training steps' if args.train else 'inference'}, {args.busy} busy process(es) beside the engines; "
          f"ms a call, mean (median) over "
          f"{rounds} x {seconds:g} s of calls each")
    print(f"{'case':28s} {'fastseq':>17s} {'no finding':>17s} {'torch':>17s}  torch / fastseq  findings")
    rows = []
    procs = _busy(args.busy)
    try:
        time.sleep(0.2)
        for case in cases:
            name, t, findings = run_case(case, args.threads, seconds, warmup, rounds, args.train)
            cols = "".join(f" {1e3 * m:8.3f} ({1e3 * md:6.3f})" for m, md in t.values())
            print(f"{name:28s}{cols}  {t['torch'][0] / t['fastseq'][0]:15.2f}  {findings:8d}", flush=True)
            rows.append((name, t))
    finally:
        for proc in procs:
            proc.kill()
    return rows


if __name__ == "__main__":
    main()

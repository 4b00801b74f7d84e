"""Page faults and system time of a training step, for every training case
of ``bench.compare``: a step whose arrays are faulted in anew each time
spends its system time there (bench/RESULTS.md, thirteenth session,
"Training memory kept from step to step").

Run from the repository root::

    python -m bench.faults [--only weather] [--steps 5] [--threads 2]

Each case: ``bench.compare``'s layer and data, three warm-up steps of
:class:`bench.compare.FastseqTrainer` (forward, backward, clipping, Adam),
then ``--steps`` steps with ``resource.getrusage`` around them: the wall
time, minor page faults and system CPU time a step.  Nothing is compared
with torch here.
"""

import argparse
import resource
import time

from bench.compare import FastseqTrainer, all_cases, case_data, cpu_header, machine_info, make_torch


def step_costs(case, threads, steps):
    """``(ms, faults, sys_ms)`` a training step of ``case``."""
    from fastseq._threads import limit
    from fastseq.interop import from_torch

    layer = from_torch(make_torch(case), dtype="float32").train()
    X, G = case_data(case)
    trainer = FastseqTrainer(layer)
    with limit(threads):
        for _ in range(3):
            trainer.step(X, G)
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for _ in range(steps):
            trainer.step(X, G)
        t1, r1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    return ((t1 - t0) / steps * 1e3, (r1.ru_minflt - r0.ru_minflt) / steps,
            (r1.ru_stime - r0.ru_stime) / steps * 1e3)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="cases whose name contains this string")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    print(cpu_header(machine_info(args.threads)))
    rows = []
    for case in all_cases():
        if "train" not in case.modes or case.group == "latency" or args.only not in case.name:
            continue
        ms, faults, sys_ms = step_costs(case, args.threads, args.steps)
        rows.append((case.name, ms, faults, sys_ms))
        print(f"{case.name:40s} {ms:9.2f} ms a step  {faults:7.0f} faults  {sys_ms:6.2f} ms system", flush=True)
    return rows


if __name__ == "__main__":
    main()

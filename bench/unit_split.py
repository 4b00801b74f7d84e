"""Which inference plan is fastest for a full-length batch, per cell, H and B.

Run from the repository root::

    python bench/unit_split.py [--cells lstm,gru,rnn] [--threads 2] [--T 64]

Times ``Recurrent.forward(X, need_grad=False)`` (input size = H) under
``fastseq._threads.limit(threads)`` with each plan forced: ``one`` (each layer
in one compiled call on one thread), ``units`` (hidden units split across the
threads, a barrier per step) and ``packed`` (the batch split across threads;
from B = 8).  The thresholds in ``fastseq.network.recurrent``
(``UNIT_SPLIT_TIERS``) come from this table.  Median ms of 5 repeats.
"""

import argparse
import time

import numpy as np

from fastseq import _threads
from fastseq.nn import Recurrent

GATES = {"lstm": 4, "gru": 3, "rnn": 1}


def _time(fn):
    fn()
    t0 = time.perf_counter()
    fn()
    one = time.perf_counter() - t0
    reps = max(3, min(200, int(0.15 / max(one, 1e-6))))
    samples = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        samples.append((time.perf_counter() - t0) / reps)
    return float(np.median(samples)) * 1e3


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", default="lstm,gru,rnn")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--T", type=int, default=64)
    ap.add_argument("--H", default="32,64,128,256,512")
    ap.add_argument("--B", default="1,4,16,32,64")
    args = ap.parse_args(argv)
    for cell in args.cells.split(","):
        for H in (int(v) for v in args.H.split(",")):
            for B in (int(v) for v in args.B.split(",")):
                net = Recurrent(cell, H, H, random_state=0).eval()
                X = np.random.default_rng(0).standard_normal((B, args.T, H), dtype=np.float32)
                res = {}
                with _threads.limit(args.threads):
                    chosen = net._inference_plan(B, args.T)
                    for plan in ("one", "units", None):
                        if plan is None and B < 8:
                            continue
                        net._inference_plan = (lambda p: (lambda B, T: p))(plan)
                        res[plan or "packed"] = _time(lambda: net.forward(X, need_grad=False))
                best = min(res, key=res.get)
                print(f"{cell} H{H:4d} B{B:3d} W_hh {GATES[cell] * H * H:8d}  "
                      + "  ".join(f"{k} {v:8.3f}" for k, v in res.items())
                      + f"  best {best:6s} chosen {chosen or 'packed'}", flush=True)


if __name__ == "__main__":
    main()

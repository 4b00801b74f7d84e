"""Which inference plan is fastest for a full-length batch, per cell, H and B.

Run from the repository root::

    python -m bench.unit_split [--cells lstm,gru,rnn] [--threads 2] [--T 64] [--H ...] [--B ...] [--I ...]
    python -m bench.unit_split --contention [--H 128,256] [--T 256]

``--contention`` times what a unit split of batch-1 LSTM inference can gain
here: one thread running half the hidden units of a layer (its own half of
``W_hh``, ``lstm_forward_part`` with no partner) alone, then two such
halves of two independent layers at once on two threads (no barrier
between them).  If the two threads' halves stayed in their own L2 caches,
each would keep its speed; the per-step times show what the cores share.

Times ``Recurrent.forward(X, need_grad=False)`` (input size ``--I``, H where not given) under
``fastseq._threads.limit(threads)`` with each plan forced: ``one`` (each layer
in one compiled call, the input projection computed a few steps ahead on a
second thread: the plan's ``pipeline_min_work`` set to 0), ``one-seq`` (the same, the
projection first, on this thread; split in row blocks across the threads from
the plan's ``matmul_split_min_work``), ``packed`` (the batch split across
threads; from B = 8) and, for the LSTM and the GRU, ``units`` (the hidden
units split across the threads, ``kernels.infer.lstm_units_part``,
``gru_units_part``) and, for the LSTM, ``fused`` (the
input projection inside the step product, where the planner would take
it), alternated call by
call (:func:`bench.compare.time_alternating`, median ms), with the plan the
planner chooses.
"""

import argparse
import time

import numpy as np

from fastseq import _plan, _threads
from fastseq.kernels import NUM_GATES as GATES
from fastseq.kernels._sync import AVAILABLE as UNITS_AVAILABLE
from fastseq.nn import Recurrent



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


def contention(H, T):
    """Median us per step of a batch-1 LSTM half (``H // 2`` units): alone,
    and two independent ones at once on two threads."""
    from fastseq.kernels.lstm import lstm_forward_part

    rng = np.random.default_rng(0)

    def layer():
        return (rng.standard_normal((T, 4 * H), dtype=np.float32),
                (0.05 * rng.standard_normal((4 * H, H))).astype(np.float32),
                np.zeros((1, H), np.float32), np.zeros((1, H), np.float32), np.full(T, 1, np.int64),
                np.empty((T, H), np.float32), np.empty((T, H), np.float32), np.empty((0, 4 * H), np.float32))
    layers = [layer(), layer()]

    def half(k):
        xp, w, h0, c0, bs, oh, oc, gates = layers[k]
        lstm_forward_part(xp, w, h0, c0, bs, 0, H // 2, 0, np.zeros(8, np.int64), oh, oc, gates)

    def both():
        _threads._on_pool([(0, 1), (1, 2)], lambda i, j: half(i))
    with _threads.limit(2), _threads.blas_single_thread():
        return {name: 1e3 * _time(fn) / T for name, fn in (("alone", lambda: half(0)), ("two at once", both))}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", default="lstm,gru,rnn")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--T", type=int, default=64)
    ap.add_argument("--H", default="32,64,128,256,512")
    ap.add_argument("--B", default="1,4,16,32,64")
    ap.add_argument("--I", type=int, default=None, help="input size (default: H)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--contention", action="store_true")
    args = ap.parse_args(argv)
    if args.contention:
        from bench.compare import cpu_header, machine_info

        print(cpu_header(machine_info(2)))
        rows = []
        for H in (int(v) for v in args.H.split(",")):
            t = contention(H, args.T)
            rows.append((H, t))
            print(f"LSTM batch 1, H {H}, half the units a thread ({4 * H * H * 2 // 1024} KB of W_hh "
                  f"each): alone {t['alone']:.1f} us a step, two independent halves at once "
                  f"{t['two at once']:.1f} us a step each", flush=True)
        return rows
    from bench.compare import cpu_header, machine_info, time_alternating

    print(cpu_header(machine_info(args.threads)), f"T {args.T}, input size {args.I or 'H'}, median ms")
    the_plan = _plan.current()
    default_pipe = the_plan.pipeline_min_work
    rows = []
    for cell in args.cells.split(","):
        for H in (int(v) for v in args.H.split(",")):
            for B in (int(v) for v in args.B.split(",")):
                I = args.I or H
                net = Recurrent(cell, I, H, random_state=0).eval()
                X = np.random.default_rng(0).standard_normal((B, args.T, I), dtype=np.float32)
                with _threads.limit(args.threads):
                    chosen = net._inference_plan(B, args.T)
                    if chosen == "one":
                        work = B * args.T * I * GATES[cell] * H
                        chosen = "one" if the_plan.pipeline(args.threads, work) else "one-seq"
                    plans = [("one", 0), ("one-seq", 10 ** 18)]
                    if B >= 8:
                        plans.append(("packed", 0))
                    if cell in ("lstm", "gru") and UNITS_AVAILABLE and args.threads > 1:
                        plans.append(("units", 0))
                    parts = net._fused_parts(B, args.T)[0]
                    if parts:
                        plans.append(("fused", default_pipe))

                    def way(plan, pipe):
                        forced = None if plan == "packed" else plan
                        # the route _forward takes: the plan, its slices, whether BLAS
                        # may come, each layer's projection (under this pipeline work)
                        the_plan.pipeline_min_work = pipe
                        route = ((forced, parts, net._kernel_blas(B // parts),
                                  net._fused_slices(B, args.T, parts)) if plan == "fused"
                                 else (forced, 1, net._kernel_blas(B, B * args.T), net._layer_modes(B, args.T)))
                        the_plan.pipeline_min_work = default_pipe

                        def call():
                            the_plan.pipeline_min_work = pipe
                            net._inference_route = lambda B, T: route
                            try:
                                net.forward(X, need_grad=False)
                            finally:
                                the_plan.pipeline_min_work = default_pipe
                        return call
                    res = {k: 1e3 * v for k, v in time_alternating(
                        {plan: way(plan, pipe) for plan, pipe in plans}, args.repeats).items()}
                best = min(res, key=res.get)
                rows.append((cell, H, B, res, best, chosen or "packed"))
                print(f"{cell} H{H:4d} B{B:3d} W_hh {GATES[cell] * H * H:8d}  "
                      + "  ".join(f"{k} {v:8.3f}" for k, v in res.items())
                      + f"  best {best:7s} chosen {chosen or 'packed'}", flush=True)
    return rows


if __name__ == "__main__":
    main()

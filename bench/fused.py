"""LSTM inference with the input projection inside each step's product
(``Recurrent._forward_fused``, :func:`fastseq.kernels.infer.lstm_fused_slice`)
against the separate projection (the one-call or packed path), alternated
in one process (:func:`bench.compare.time_alternating`) at this machine's
thread count.

Run from the repository root::

    python -m bench.fused                 # a minute on 2 cores
    python -m bench.fused --quick

For each shape it prints what the planner chose
(:meth:`fastseq._plan.Plan.fuse_projection`) and the median ms of both
ways, so that the rule can be checked against the machine at hand.
"""

import argparse

import numpy as np

#: (B, T, F, H): MNIST rows, a latency case, the weather system, the two
#: matrix-bound cases, a small batch beyond one row block, two small
#: batches in one slice whose separate projection a second thread computes
#: ahead (latency B 4, H 128 at T 32 and 128)
SHAPES = [(128, 28, 28, 256), (16, 32, 256, 256), (1024, 48, 5, 64), (64, 50, 500, 500),
          (64, 25, 1024, 1024), (4, 32, 256, 256), (4, 32, 128, 128), (4, 128, 128, 128)]


def compare(shapes, repeats):
    """``[(shape, plan, fused ms, separate ms)]``: both ways on the batch
    slices the fused path would take (the planner's batch split)."""
    from bench.compare import time_alternating
    from fastseq import _plan
    from fastseq.nn import Recurrent

    rows = []
    real = Recurrent._fused_parts
    rule = _plan.Plan.fuse_projection
    try:
        for B, T, F, H in shapes:
            X = np.random.default_rng(0).standard_normal((B, T, F)).astype(np.float32)
            layer = Recurrent("lstm", F, H, random_state=0).eval()
            Recurrent._fused_parts = real
            plan = layer._inference_plan(B, T)
            _plan.Plan.fuse_projection = lambda self, *a: True   # the slices it would take
            parts = real(layer, B, T)     # (slices, and whether only on polling threads)
            _plan.Plan.fuse_projection = rule
            def way(fused_parts):
                def call():
                    Recurrent._fused_parts = lambda self, B, T: fused_parts
                    layer.__dict__.pop("_plans", None)   # decided again with the forced slices
                    layer.forward(X, need_grad=False)
                return call
            t = time_alternating({"fused": way(parts), "separate": way((0, False))}, repeats)
            rows.append(((B, T, F, H), plan, 1e3 * t["fused"], 1e3 * t["separate"]))
    finally:
        Recurrent._fused_parts = real
        _plan.Plan.fuse_projection = rule
    return rows


def main(argv=None):
    from bench.compare import cpu_header, machine_info

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    from fastseq._threads import get_num_threads

    info = machine_info(get_num_threads())
    print(cpu_header(info), f"(load average {info['load_avg'][0]:.1f})")
    shapes, repeats = (SHAPES[:1] + SHAPES[-1:], 3) if args.quick else (SHAPES, 9)
    rows = compare(shapes, repeats)
    for (B, T, F, H), plan, fused, separate in rows:
        print(f"LSTM B{B} T{T} F{F} H{H}: planner {plan or 'packed (batch split)'}; fused {fused:8.2f} ms, "
              f"separate projection {separate:8.2f} ms ({separate / fused:.2f}x)")
    return rows


if __name__ == "__main__":
    main()

"""The threading thresholds against other values, call by call.

Run from the repository root::

    python -m bench.thresholds --show
    python -m bench.thresholds --mode infer --alt pipeline_min_work=2097152,matmul_split_min_work=2097152
    python -m bench.thresholds --mode train --alt split_min_work=1048576

For every latency case of ``bench.compare`` (B in 1, 4, 16; H in 32..256;
T in 32, 128; input size = H) whose threading decision differs between the
package's current thresholds ("now") and the ``--alt`` ones, it times
``Recurrent.forward(X, need_grad=False)`` (``--mode infer``) or forward +
backward (``--mode train``) under ``fastseq._threads.limit(threads)``, the two
settings alternating call by call (``bench.compare.time_alternating``, each
timed call after an untimed one; this machine's timings drift by 10-30%
within minutes, so only alternated calls compare), and prints the medians,
``alt / now`` time ratios (above 1: "now" is faster) and their geometric mean.

Thresholds: the attributes of this machine's plan (:mod:`fastseq._plan`):
``pipeline_min_work``, ``infer_split_step_work``, ``matmul_split_min_work``
and ``split_min_work``.  ``--show`` prints the machine's measured facts and
the plan derived from them.
"""

import argparse

import numpy as np

from bench.compare import time_alternating
from fastseq import _plan, _threads
from fastseq.kernels import NUM_GATES as GATES
from fastseq.nn import Recurrent


def _apply(setting):
    for name, value in setting.items():
        setattr(_plan.current(), name, value)


def _works(cell, B, T, H):
    """The sizes the thresholds are compared with, for this case."""
    N, GH = B * T, GATES[cell] * H
    return (N * H * GH, N * GH * H, N * GH * 2 * H, B * GH * H)


def _differs(now, alt, works):
    return any((w >= now[k]) != (w >= alt[k]) for k in now for w in works)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=("infer", "train"), default="infer")
    ap.add_argument("--alt", help="NAME=VALUE[,NAME=VALUE...]")
    ap.add_argument("--show", action="store_true", help="print the measured facts and the plan")
    ap.add_argument("--cells", default="lstm,gru,rnn")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=31)
    args = ap.parse_args(argv)
    if args.show or not args.alt:
        m = _plan.machine()
        print(f"{m}: one hand-over is {m.handover_work / 1e6:.2f}M multiply-adds")
        print(_plan.current())
        from fastseq.kernels import _runtime

        _plan.resolve_kernel_values()
        print(f"in the kernels: the step product calls BLAS from {_runtime.PACKED_BLAS_MIN_ROWS.get()} rows, "
              f"the input projection from {_runtime.PROJECT_BLAS_MIN_BYTES.get()} bytes of weight")
        return
    alt = {k: int(v) for k, v in (kv.split("=") for kv in args.alt.split(","))}
    now = {k: getattr(_plan.current(), k) for k in alt}
    rng = np.random.default_rng(0)
    ratios = []
    try:
        with _threads.limit(args.threads):
            for cell in args.cells.split(","):
                for B in (1, 4, 16):
                    for H in (32, 64, 128, 256):
                        for T in (32, 128):
                            if not _differs(now, alt, _works(cell, B, T, H)):
                                continue
                            layer = Recurrent(cell, H, H, random_state=0)
                            X = rng.standard_normal((B, T, H), dtype=np.float32)
                            G = rng.standard_normal((B, T, H), dtype=np.float32)
                            g = np.zeros_like(layer.flat)
                            if args.mode == "infer":
                                layer.eval()

                                def call():
                                    layer.forward(X, need_grad=False)
                            else:
                                def call():
                                    layer.forward(X)
                                    layer.backward(G, out=g)
                            fns = {label: (lambda st=setting: (_apply(st), call()))
                                   for label, setting in (("now", now), ("alt", alt))}
                            ts = time_alternating(fns, args.repeats, warmup=1, min_time=0.0, pause=0.0)
                            a, b = ts["now"] * 1e3, ts["alt"] * 1e3
                            ratios.append(b / a)
                            print(f"{args.mode} {cell} B{B} H{H} T{T}: now {a:.3f} ms  alt {b:.3f} ms"
                                  f"  alt/now {b / a:.2f}", flush=True)
    finally:
        _apply(now)
    if ratios:
        print(f"geometric mean alt/now {np.exp(np.mean(np.log(ratios))):.3f} over {len(ratios)} cases")
    else:
        print("no case's threading decision differs")


if __name__ == "__main__":
    main()

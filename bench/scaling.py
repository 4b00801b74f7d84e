"""How fastseq and torch scale with CPU threads, on cases with enough batch.

    python -m bench.scaling                       # threads 1, 2
    python -m bench.scaling --threads 1,2,4,8,16  # on a machine with more cores

For each case and thread count: median time of an inference forward and of a
training step (forward + backward + clipping + Adam) for fastseq (under
``fastseq._threads.limit(n)``: its batch split over n threads, BLAS at one
thread) and torch (``torch.set_num_threads(n)``), weights copied with
``from_torch``, float32, engines alternated; then speed-up over one thread.
"""

import argparse
import json
import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np

from bench.compare import Case, FastseqTrainer, make_torch, time_alternating

CASES = [
    Case("weather/lstm/B1024/T48/I5/H64", "weather", "lstm", 1024, 48, 5, 64),
    Case("weather/gru/B1024/T48/I5/H64", "weather", "gru", 1024, 48, 5, 64),
    Case("mnist-rows/rnn/B128/T28/I28/H256", "mnist-rows", "rnn", 128, 28, 28, 256),
    Case("batch/lstm/B256/T64/I128/H128", "batch", "lstm", 256, 64, 128, 128),
]


def _torch_step(module, opt, X, G, torch):
    opt.zero_grad(set_to_none=True)
    out, _ = module(X)
    (out * G).sum().backward()
    torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
    opt.step()


def run(threads, repeats):
    import torch

    from fastseq._threads import limit
    from fastseq.interop import from_torch

    rows = []
    for case in CASES:
        rng = np.random.default_rng(0)
        X = rng.standard_normal((case.B, case.T, case.I)).astype(np.float32)
        G = rng.standard_normal((case.B, case.T, case.H)).astype(np.float32)
        module = make_torch(case)
        layer = from_torch(module)
        trainer = FastseqTrainer(layer)
        opt = torch.optim.Adam(module.parameters(), lr=1e-3)
        Xt, Gt = torch.from_numpy(X), torch.from_numpy(G)
        for n in threads:
            torch.set_num_threads(n)
            with limit(n):
                def fs_infer():
                    layer.forward(X, need_grad=False)

                def fs_train():
                    trainer.step(X, G)

                def th_infer():
                    with torch.inference_mode():
                        module(Xt)

                def th_train():
                    _torch_step(module, opt, Xt, Gt, torch)

                t_inf = time_alternating({0: fs_infer, 1: th_infer}, repeats)
                t_tr = time_alternating({0: fs_train, 1: th_train}, repeats)
            row = dict(case=case.name, threads=n, fastseq_infer=t_inf[0], torch_infer=t_inf[1],
                       fastseq_train=t_tr[0], torch_train=t_tr[1])
            rows.append(row)
            print(f"{case.name:34s} n={n:2d}  infer fastseq {t_inf[0]*1e3:8.2f} ms torch {t_inf[1]*1e3:8.2f} ms"
                  f"  train fastseq {t_tr[0]*1e3:8.2f} ms torch {t_tr[1]*1e3:8.2f} ms", flush=True)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", default=None, help="write the rows here")
    args = p.parse_args(argv)
    threads = [int(t) for t in args.threads.split(",")]
    rows = run(threads, args.repeats)
    print("\nspeed-up over 1 thread (fastseq / torch), and fastseq's ratio to torch")
    base = {(r["case"], k): r[k] for r in rows if r["threads"] == threads[0]
            for k in ("fastseq_infer", "torch_infer", "fastseq_train", "torch_train")}
    print(f"{'case':34s} {'n':>3s} {'infer fs':>9s} {'infer th':>9s} {'train fs':>9s} {'train th':>9s}"
          f" {'infer x':>8s} {'train x':>8s}")
    for r in rows:
        c = r["case"]
        s = [base[(c, k)] / r[k] for k in ("fastseq_infer", "torch_infer", "fastseq_train", "torch_train")]
        print(f"{c:34s} {r['threads']:3d} {s[0]:9.2f} {s[1]:9.2f} {s[2]:9.2f} {s[3]:9.2f}"
              f" {r['torch_infer']/r['fastseq_infer']:8.2f} {r['torch_train']/r['fastseq_train']:8.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()

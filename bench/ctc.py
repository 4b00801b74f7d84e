"""CTC loss + gradient: fastseq's kernel against ``torch.nn.functional.ctc_loss``
(with ``log_softmax`` and ``backward``) on the CPU, same thread count.

    python -m bench.ctc [--threads 1] [--repeats 15]

Both engines start from float32 logits (T, B, V) and return the mean loss
(torch's "mean" reduction) and its gradient w.r.t. the logits.  Cases:
"handwriting" (B=32, T 56..112 ragged, V=11: 10 digits + blank, target
lengths 3..8), "speech" (B=32, T=200, V=30, L=40) and "crnn-example" (the
shapes of ``examples/crnn_digits.py``: one batch of 32 of its lines, the
recurrent layer's steps and the lines' digit strings, see :func:`example_case`).  Timings use
:func:`bench.compare.time_alternating` (median per call, engines timed in
turn); the ratio is torch's time over fastseq's (> 1: fastseq is faster).
"""

import argparse
import json

import numpy as np

from bench.compare import cpu_header, machine_info, set_threads, time_alternating

CASES = {
    "handwriting": dict(B=32, T=(56, 112), V=11, L=(3, 8)),
    "speech": dict(B=32, T=(200, 200), V=30, L=(40, 40)),
}


def make_case(B, T, V, L, seed=0):
    rng = np.random.default_rng(seed)
    il = rng.integers(T[0], T[1] + 1, size=B)
    il[0] = T[1]
    tl = rng.integers(L[0], L[1] + 1, size=B)
    tg = rng.integers(1, V, size=(B, int(tl.max())))
    x = rng.normal(size=(int(il.max()), B, V)).astype(np.float32)
    return x, tg, il, tl


def example_case(B=32, seed=0):
    """The shapes of ``examples/crnn_digits.py``'s CTC loss for one batch of
    its lines: the recurrent layer's steps (each line's columns // 4, after
    the two poolings), 11 classes (blank + 10 digits), the lines' own digit
    strings as targets; random logits."""
    from bench.conv import example_batch

    _, lengths, y = example_batch(B, seed)
    il = lengths // 4
    tl = np.array([len(s) for s in y], dtype=np.int64)
    tg = np.zeros((B, int(tl.max())), dtype=np.int64)
    for b, s in enumerate(y):
        tg[b, :len(s)] = [int(c) + 1 for c in s]
    x = np.random.default_rng(seed).normal(size=(int(il.max()), B, 11)).astype(np.float32)
    spec = dict(B=B, T=(int(il.min()), int(il.max())), V=11, L=(int(tl.min()), int(tl.max())))
    return (x, tg, il, tl), spec


def run(threads, repeats):
    import torch

    from fastseq import _threads
    from fastseq.ctc import ctc_loss

    rows = []
    with set_threads(threads), _threads.limit(threads):
        cases = [(name, make_case(**spec), spec) for name, spec in CASES.items()]
        cases.append(("crnn-example",) + example_case())
        for name, (x, tg, il, tl), spec in cases:
            tx = torch.tensor(x, requires_grad=True)
            ttg, til, ttl = torch.tensor(tg), torch.tensor(il), torch.tensor(tl)

            def fs():
                return ctc_loss(x, tg, il, tl)

            def th():
                tx.grad = None
                loss = torch.nn.functional.ctc_loss(torch.log_softmax(tx, -1), ttg, til, ttl)
                loss.backward()
                return loss

            l1, g1 = fs()
            l2 = float(th().detach())
            err = float(np.abs(g1 - tx.grad.numpy()).max())
            t = time_alternating({"fastseq": fs, "torch": th}, repeats)
            rows.append(dict(case=name, **{k: v if not isinstance(v, tuple) else list(v)
                                           for k, v in spec.items()},
                             fastseq_ms=t["fastseq"] * 1e3, torch_ms=t["torch"] * 1e3,
                             ratio=t["torch"] / t["fastseq"], loss_diff=abs(l1 - l2),
                             grad_max_abs_diff=err))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--json", help="also write the rows and machine info here")
    args = ap.parse_args()
    info = machine_info(args.threads)
    rows = run(args.threads, args.repeats)
    print(cpu_header(info), f"(load average {info['load_avg'][0]:.1f})")
    print(f"{'case':12s} {'B':>3s} {'T':>9s} {'V':>3s} {'L':>6s} {'fastseq ms':>11s} "
          f"{'torch ms':>9s} {'torch/fastseq':>14s}")
    for r in rows:
        print(f"{r['case']:12s} {r['B']:3d} {'%d..%d' % tuple(r['T']):>9s} {r['V']:3d} "
              f"{'%d..%d' % tuple(r['L']):>6s} {r['fastseq_ms']:11.3f} {r['torch_ms']:9.3f} "
              f"{r['ratio']:14.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()

"""The convolution front end against PyTorch's Conv1d + ReLU + MaxPool1d.

Run from the repository root::

    python -m bench.conv                  # the full grid (about a minute a thread count)
    python -m bench.conv --quick          # four cases
    python -m bench.conv --threads 2 --json out.json

Each case is float32, B sequences of T steps and F features (all of length T:
torch pads, so both do the same work) through one Conv1d of C filters and
kernel K ("same" padding), ReLU and MaxPool1d(p).  Modes:

``forward``  torch under ``torch.inference_mode()`` on (B, F, T) (its layout),
             fastseq's ``ConvStack.forward(need_grad=False)`` on (B, T, F);
``train``    forward, ``sum(out * G)`` and the backward pass to the weights
             and bias (the input needs no gradient in either library, as the
             first layer of a model).

Both run at the same thread count (``torch.set_num_threads`` and
threadpoolctl for torch, one :func:`fastseq._threads.limit` block around the
whole run for fastseq, as an estimator holds one around its fit: entering it
per call would time threadpoolctl setting OpenBLAS's threads to 1 and back,
about 0.25 ms a call at 2 threads here), timed
alternately with :func:`bench.compare.time_alternating` (median of the
repeats); ratios are torch's time over fastseq's (> 1: fastseq faster).
"""

import argparse
import itertools
import json
import math

import numpy as np


def cases(quick=False):
    if quick:
        return [dict(B=32, T=100, F=1, C=32, K=3, p=2), dict(B=32, T=400, F=40, C=64, K=7, p=2),
                dict(B=32, T=200, F=12, C=32, K=5, p=1), dict(B=32, T=400, F=1, C=64, K=7, p=2)]
    return [dict(B=32, T=T, F=F, C=C, K=K, p=2)
            for T, F, C, K in itertools.product((100, 400), (1, 12, 40), (32, 64), (3, 7))]


def run_case(case, threads, repeats):
    """One case, inside the caller's ``fastseq._threads.limit(threads)``."""
    import torch

    from fastseq.network.conv import ConvStack
    from bench.compare import time_alternating

    B, T, F, C, K, p = (case[k] for k in "BTFCKp")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((B, T, F)).astype(np.float32)
    lengths = np.full(B, T, dtype=np.int64)
    cs = ConvStack(F, C, K, p, dtype="float32", random_state=0)
    conv = torch.nn.Conv1d(F, C, K, padding=K // 2)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(np.array(cs.params["weight_l0"])))
        conv.bias.copy_(torch.tensor(cs.params["bias_l0"]))
    net = torch.nn.Sequential(conv, torch.nn.ReLU(), torch.nn.MaxPool1d(p))
    tX = torch.tensor(np.ascontiguousarray(X.transpose(0, 2, 1)))
    G = rng.standard_normal((B, T // p, C)).astype(np.float32)
    tG = torch.tensor(np.ascontiguousarray(G.transpose(0, 2, 1)))
    grad = np.zeros(cs.n_params, np.float32)

    with torch.inference_mode():
        ref = net(tX).numpy().transpose(0, 2, 1)
    out = cs.forward(X, lengths, need_grad=False)[0]
    err = float(np.abs(out - ref).max())

    def fs_forward():
        cs.forward(X, lengths, need_grad=False)

    def fs_train():
        out, _, cache = cs.forward(X, lengths)
        cs.backward(G, cache, out=grad, need_input_grad=False)

    def torch_forward():
        with torch.inference_mode():
            net(tX)

    def torch_train():
        net.zero_grad(set_to_none=True)
        (net(tX) * tG).sum().backward()

    res = dict(case)
    res["max_abs_diff"] = err
    for mode, fs, tt in (("forward", fs_forward, torch_forward), ("train", fs_train, torch_train)):
        t = time_alternating({"fastseq": fs, "torch": tt}, repeats)
        res[f"{mode}_fastseq_ms"] = 1e3 * t["fastseq"]
        res[f"{mode}_torch_ms"] = 1e3 * t["torch"]
        res[f"{mode}_ratio"] = t["torch"] / t["fastseq"]
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    from bench.compare import cpu_kind, cpu_model, set_threads

    from fastseq._threads import limit

    name, isa = cpu_kind()
    with set_threads(args.threads), limit(args.threads):
        import torch
        head = (f"CPU: {cpu_model()} ({name}, {isa}), {args.threads} thread(s), "
                f"torch {torch.__version__}")
        print(head)
        print(f"{'B':>3} {'T':>4} {'F':>3} {'C':>3} {'K':>2} {'p':>2} | "
              f"{'fwd fs ms':>9} {'torch':>8} {'ratio':>6} | "
              f"{'train fs':>9} {'torch':>8} {'ratio':>6}")
        rows = []
        for case in cases(args.quick):
            r = run_case(case, args.threads, args.repeats)
            rows.append(r)
            print(f"{r['B']:>3} {r['T']:>4} {r['F']:>3} {r['C']:>3} {r['K']:>2} {r['p']:>2} | "
                  f"{r['forward_fastseq_ms']:9.3f} {r['forward_torch_ms']:8.3f} "
                  f"{r['forward_ratio']:6.2f} | {r['train_fastseq_ms']:9.3f} "
                  f"{r['train_torch_ms']:8.3f} {r['train_ratio']:6.2f}", flush=True)
    for mode in ("forward", "train"):
        ratios = [r[f"{mode}_ratio"] for r in rows]
        gm = math.exp(sum(math.log(x) for x in ratios) / len(ratios))
        print(f"{mode}: geometric mean of torch/fastseq {gm:.2f}, worst {min(ratios):.2f}, "
              f"{sum(x < 1 for x in ratios)} of {len(ratios)} cases below 1.0")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cpu": cpu_model(), "llvm_cpu": name, "vector_isa": isa,
                       "threads": args.threads, "cases": rows}, f, indent=1)


if __name__ == "__main__":
    main()

"""The convolution front end against PyTorch's Conv1d + ReLU + MaxPool1d.

Run from the repository root::

    python -m bench.conv                  # the full grid (about a minute a thread count)
    python -m bench.conv --quick          # four cases
    python -m bench.conv --threads 2 --json out.json

After the grid, the CRNN example's own front end (``examples/crnn_digits.py``:
one batch of 32 of its lines, 28 pixels a column, Conv1d 32 then 64 filters,
K 5, pooling of 2 twice), fastseq on the padded batch (torch's work) and on
the ragged one (what its estimators run), torch on the padded one.

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


def _steps(cs, X, G, net, tX, tG):
    """What is timed: fastseq's forward and training step for given lengths
    (functions of the lengths), torch's forward and training step."""
    import torch

    grad = np.zeros(cs.n_params, X.dtype)

    def fs_forward(lengths):
        return lambda: cs.forward(X, lengths, need_grad=False)

    def fs_train(lengths):
        def step():
            _, _, cache = cs.forward(X, lengths)
            cs.backward(G, cache, out=grad, need_input_grad=False)
        return step

    def torch_forward():
        with torch.inference_mode():
            net(tX)

    def torch_train():
        net.zero_grad(set_to_none=True)
        (net(tX) * tG).sum().backward()
    return fs_forward, fs_train, torch_forward, torch_train


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

    with torch.inference_mode():
        ref = net(tX).numpy().transpose(0, 2, 1)
    out = cs.forward(X, lengths, need_grad=False)[0]
    err = float(np.abs(out - ref).max())

    fs_forward, fs_train, torch_forward, torch_train = _steps(cs, X, G, net, tX, tG)
    fs_forward, fs_train = fs_forward(lengths), fs_train(lengths)
    res = dict(case)
    res["max_abs_diff"] = err
    for mode, fs, tt in (("forward", fs_forward, torch_forward), ("train", fs_train, torch_train)):
        t = time_alternating({"fastseq": fs, "torch": tt}, repeats)
        res[f"{mode}_fastseq_ms"] = 1e3 * t["fastseq"]
        res[f"{mode}_torch_ms"] = 1e3 * t["torch"]
        res[f"{mode}_ratio"] = t["torch"] / t["fastseq"]
    return res


def example_batch(B=32, seed=0):
    """One batch of ``examples/crnn_digits.py``: ``B`` lines of 3-8 real MNIST
    digits read column by column, zero-padded to the longest: ``(X (B, W, 28)
    float32, lengths (B,) int64, y (digit strings))``."""
    from bench.example_loader import load_example

    ex = load_example("crnn_digits")
    train, _, _ = ex.load_digits()
    lines, y, _ = ex.make_lines(train, B, seed=seed)
    lengths = np.array([len(x) for x in lines], dtype=np.int64)
    X = np.zeros((B, int(lengths.max()), 28), np.float32)
    for b, x in enumerate(lines):
        X[b, :len(x)] = x
    return X, lengths, y


def run_example(threads, repeats, B=32):
    """The CRNN example's front end (28 pixels a column, Conv1d 32 then 64
    filters, K 5, ReLU and max pooling of 2 after each) on one batch of its
    lines: fastseq on the ragged batch as its estimators run it (padded steps
    skipped) and on the padded one (torch's work), torch on the padded one."""
    import torch

    from bench.compare import time_alternating
    from fastseq.network.conv import ConvStack

    X, lengths, _ = example_batch(B)
    Bn, W, F = X.shape
    K, p = 5, 2
    cs = ConvStack(F, (32, 64), K, p, dtype="float32", random_state=0)
    layers = []
    for l, (fi, fo) in enumerate(((F, 32), (32, 64))):
        conv = torch.nn.Conv1d(fi, fo, K, padding=K // 2)
        with torch.no_grad():
            conv.weight.copy_(torch.tensor(np.array(cs.params[f"weight_l{l}"])))
            conv.bias.copy_(torch.tensor(cs.params[f"bias_l{l}"]))
        layers += [conv, torch.nn.ReLU(), torch.nn.MaxPool1d(p)]
    net = torch.nn.Sequential(*layers)
    tX = torch.tensor(np.ascontiguousarray(X.transpose(0, 2, 1)))
    full = np.full(Bn, W, dtype=np.int64)
    W2 = cs.output_steps(W)
    G = np.random.default_rng(1).standard_normal((Bn, W2, 64)).astype(np.float32)
    tG = torch.tensor(np.ascontiguousarray(G.transpose(0, 2, 1)))
    with torch.inference_mode():
        ref = net(tX).numpy().transpose(0, 2, 1)
    err = float(np.abs(cs.forward(X, full, need_grad=False)[0] - ref).max())

    fs_forward, fs_train, torch_forward, torch_train = _steps(cs, X, G, net, tX, tG)
    res = dict(B=Bn, W=W, W_min=int(lengths.min()), max_abs_diff=err)
    for mode, fs, tt in (("forward", fs_forward, torch_forward), ("train", fs_train, torch_train)):
        t = time_alternating({"ragged": fs(lengths), "padded": fs(full), "torch": tt}, repeats)
        for k in ("ragged", "padded", "torch"):
            res[f"{mode}_{k}_ms"] = 1e3 * t[k]
        res[f"{mode}_ratio_padded"] = t["torch"] / t["padded"]
        res[f"{mode}_ratio_ragged"] = t["torch"] / t["ragged"]
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
        ex = run_example(args.threads, args.repeats)
    for mode in ("forward", "train"):
        ratios = [r[f"{mode}_ratio"] for r in rows]
        gm = math.exp(sum(math.log(x) for x in ratios) / len(ratios))
        print(f"{mode}: geometric mean of torch/fastseq {gm:.2f}, worst {min(ratios):.2f}, "
              f"{sum(x < 1 for x in ratios)} of {len(ratios)} cases below 1.0")
    print(f"CRNN example front end (B {ex['B']}, W {ex['W_min']}..{ex['W']}, 28 -> conv 32 -> "
          f"conv 64, K 5, pool 2 twice): max |diff| {ex['max_abs_diff']:.1e}")
    for mode in ("forward", "train"):
        print(f"  {mode:7s} fastseq {ex[f'{mode}_padded_ms']:.3f} ms padded "
              f"({ex[f'{mode}_ragged_ms']:.3f} ragged), torch {ex[f'{mode}_torch_ms']:.3f} ms: "
              f"{ex[f'{mode}_ratio_padded']:.2f}x padded, {ex[f'{mode}_ratio_ragged']:.2f}x ragged")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cpu": cpu_model(), "llvm_cpu": name, "vector_isa": isa,
                       "threads": args.threads, "cases": rows, "crnn_example": ex}, f, indent=1)


if __name__ == "__main__":
    main()

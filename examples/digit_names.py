"""One to many: spell the name of the digit in an 8x8 image, letter by letter.

Each of scikit-learn's 8x8 digit images (``load_digits``: 64 pixels) is one
vector, given to a ``Seq2SeqClassifier`` as a source of a single step
(X of shape ``(n, 1, 64)``: the 3-D form; a 2-D X would be read as token ids),
and the decoder writes the English name of the digit, "zero" .. "nine", one
character at a time (the shape of image captioning: a sequence generated from
one vector).  Prints the held-out exact-word accuracy and the character
accuracy (characters of the true name matched at their position).

Run::

    python examples/digit_names.py            # full budget
    python examples/digit_names.py --quick    # seconds
"""

import argparse
import time

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from fastseq import Seq2SeqClassifier

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def load_data():
    """X (1797, 1, 64) float32 in [0, 1], y the names of the digits."""
    X, digit = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)[:, None, :]
    return X, [NAMES[d] for d in digit]


def char_accuracy(pred, true):
    """Characters of the true names matched at their position, over all of them."""
    hit = sum(sum(a == b for a, b in zip(p, t)) for p, t in zip(pred, true))
    return hit / sum(len(t) for t in true)


def run(n_train=None, max_iter=60, hidden_size=64, embedding_dim=16, verbose=False,
        random_state=0):
    X, y = load_data()
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.25, stratify=y, random_state=0)
    if n_train:
        X_tr, y_tr = X_tr[:n_train], y_tr[:n_train]
    est = Seq2SeqClassifier(cell="gru", hidden_size=hidden_size, embedding_dim=embedding_dim,
                            attention="dot", batch_size=32, learning_rate=3e-3,
                            max_iter=max_iter, early_stopping=True, n_iter_no_change=10,
                            dropout=0.1, random_state=random_state, verbose=verbose)
    start = time.perf_counter()
    est.fit(X_tr, y_tr)
    seconds = time.perf_counter() - start
    pred = est.predict(X_te)
    res = {"word_accuracy": float(np.mean([p == t for p, t in zip(pred, y_te)])),
           "char_accuracy": float(char_accuracy(pred, y_te)), "epochs": est.n_iter_,
           "fit_seconds": seconds, "n_train": len(y_tr), "n_test": len(y_te),
           "examples": list(zip(y_te[:6], pred[:6]))}
    return res


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a small budget (seconds)")
    a = p.parse_args()
    kw = dict(n_train=300, max_iter=5, hidden_size=16) if a.quick else {}
    res = run(verbose=not a.quick, **kw)
    print(f"digit names (one to many, GRU seq2seq): held-out exact word accuracy "
          f"{res['word_accuracy']:.4f}, character accuracy {res['char_accuracy']:.4f} "
          f"({res['n_train']} train / {res['n_test']} test images, {res['epochs']} epochs, "
          f"{res['fit_seconds']:.0f} s)")
    print("  true -> predicted:", ", ".join(f"{t} -> {p}" for t, p in res["examples"]))


if __name__ == "__main__":
    main()

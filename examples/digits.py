"""scikit-learn's digits read row by row: 8 steps of 8 pixels.

    python examples/digits.py
"""

import argparse

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from fastseq import RNNClassifier


def main(max_iter=100, n_samples=None, hidden_size=128, cell="lstm", plot="digits.png",
         verbose=False, random_state=0):
    X, y = load_digits(return_X_y=True)
    if n_samples:
        X, y = X[:n_samples], y[:n_samples]
    X = (X / 16.0).reshape(-1, 8, 8).astype(np.float32)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.25, stratify=y, random_state=0)
    clf = RNNClassifier(cell=cell, hidden_size=hidden_size, bidirectional=True, batch_size=32,
                        learning_rate=2e-3, max_iter=max_iter, early_stopping=True,
                        validation_fraction=0.1, n_iter_no_change=25, dropout=0.2,
                        random_state=random_state, verbose=verbose)
    clf.fit(X_tr, y_tr)
    score = clf.score(X_te, y_te)
    print(f"digits, BiLSTM({hidden_size}): test accuracy {score:.4f} ({clf.n_iter_} epochs, "
          f"{clf.fit_time_:.0f} s)")
    if plot:
        clf.plot_history().savefig(plot)
    return score


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--max-iter", type=int, default=100)
    a = p.parse_args()
    main(a.max_iter, verbose=True)

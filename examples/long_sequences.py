"""Long sequences: truncated BPTT and streaming on ACSF1 (aeon, shipped with
the package: nothing is downloaded).

ACSF1: power consumption of 10 kinds of home appliances, one series of
1,460 steps per appliance-day, 100 training and 100 test series (10 per
class).  Published: 1-NN Euclidean 0.54, 1-NN DTW 0.64 (UCR archive).

Each cell is trained twice on the full-length series, with plain BPTT
through all 1,460 steps and with ``tbptt_steps=100`` (the state flows
through the whole series, the gradient through the last 100 steps; the
earlier windows of a many-to-one model run forward only).  Then the
truncated model reads the test series as streams, 146 steps at a time,
with ``predict_stream``: its accuracy after each part, and a check that the
last answer is ``predict`` on the whole series.

    python examples/long_sequences.py              # GRU and LSTM, 100 epochs
    python examples/long_sequences.py --cells gru --max-iter 20
"""

import argparse
import os
import time
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning

from fastseq import RNNClassifier


def load():
    from aeon.datasets import load_classification
    X_tr, y_tr = load_classification("ACSF1", split="train")
    X_te, y_te = load_classification("ACSF1", split="test")
    # (n, 1 channel, 1460): univariate series, a 2-D (n, T) X for fastseq
    return X_tr[:, 0, :], np.asarray(y_tr), X_te[:, 0, :], np.asarray(y_te)


def make(cell, tbptt_steps, max_iter, hidden_size, random_state):
    # conv_filters=None: a plain recurrent model (truncation and streaming need one; the
    # default front end would shorten the 1,460 steps four times)
    return RNNClassifier(cell=cell, hidden_size=hidden_size, batch_size=10, learning_rate=3e-3,
                         max_iter=max_iter, tbptt_steps=tbptt_steps, conv_filters=None,
                         random_state=random_state)


def stream_test(clf, X, y, parts=10):
    """Accuracy after each 1/parts of the test series, fed as streams."""
    state, accs = None, []
    for chunk in np.array_split(X, parts, axis=1):
        pred, state = clf.predict_stream(chunk, state)
        accs.append(float(np.mean(pred == y)))
    same = np.array_equal(pred, clf.predict(X))
    return accs, same


def main(cells=("gru", "lstm"), max_iter=100, hidden_size=32, tbptt_steps=100, random_state=0):
    X_tr, y_tr, X_te, y_te = load()
    print(f"ACSF1: {X_tr.shape[0]} training, {X_te.shape[0]} test series of {X_tr.shape[1]} steps; "
          f"{os.cpu_count()} CPUs")
    rows = []
    for cell in cells:
        for steps in (None, tbptt_steps):
            clf = make(cell, steps, max_iter, hidden_size, random_state)
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                clf.fit(X_tr, y_tr)
            fit_s = time.perf_counter() - t0
            acc = clf.score(X_te, y_te)
            label = "plain BPTT" if steps is None else f"tbptt_steps={steps}"
            print(f"{cell.upper()}({hidden_size}) {label:>16}: test accuracy {acc:.2f}, "
                  f"fit {fit_s:.0f} s ({clf.n_iter_} epochs, {clf.t_} updates)", flush=True)
            rows.append((cell, steps, acc, fit_s, clf))
    cell, steps, _, _, clf = [r for r in rows if r[1] is not None][0]
    accs, same = stream_test(clf, X_te, y_te)
    print(f"streaming {cell.upper()} (tbptt_steps={steps}), test accuracy after each tenth of the "
          f"series: {' '.join(f'{a:.2f}' for a in accs)}; last = predict: {same}")
    return rows


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", nargs="+", default=["gru", "lstm"], choices=["rnn", "gru", "lstm"])
    p.add_argument("--max-iter", type=int, default=100)
    p.add_argument("--hidden-size", type=int, default=32)
    p.add_argument("--tbptt-steps", type=int, default=100)
    a = p.parse_args()
    main(a.cells, a.max_iter, a.hidden_size, a.tbptt_steps)

"""JapaneseVowels (aeon, shipped locally): 9 speakers, 12 LPC features,
ragged sequences of 7 to 29 steps.  Published: 1-NN DTW 0.949, MLP 0.976,
FCN 0.993.

    python examples/japanese_vowels.py
"""

import argparse

import numpy as np

from fastseq import RNNClassifier


def load():
    from aeon.datasets import load_japanese_vowels
    X_tr, y_tr = load_japanese_vowels(split="train")
    X_te, y_te = load_japanese_vowels(split="test")
    # aeon gives a list of (channels, T_i) arrays: fastseq wants (T_i, F)
    return ([np.asarray(x).T for x in X_tr], np.asarray(y_tr),
            [np.asarray(x).T for x in X_te], np.asarray(y_te))


def main(max_iter=60, n_samples=None, hidden_size=64, plot="japanese_vowels.png",
         verbose=False, random_state=0):
    X_tr, y_tr, X_te, y_te = load()
    if n_samples:
        X_tr, y_tr = X_tr[:n_samples], y_tr[:n_samples]
    mu = np.concatenate(X_tr).mean(axis=0)
    sd = np.concatenate(X_tr).std(axis=0)
    X_tr = [(x - mu) / sd for x in X_tr]
    X_te = [(x - mu) / sd for x in X_te]
    clf = RNNClassifier(cell="lstm", hidden_size=hidden_size, bidirectional=True, batch_size=16,
                        learning_rate=2e-3, max_iter=max_iter, dropout=0.3,
                        random_state=random_state, verbose=verbose)
    clf.fit(X_tr, y_tr)
    score = clf.score(X_te, y_te)
    print(f"JapaneseVowels, BiLSTM({hidden_size}): test accuracy {score:.4f} "
          f"({clf.n_iter_} epochs, {clf.fit_time_:.0f} s)")
    if plot:
        clf.plot_history().savefig(plot)
    return score


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--max-iter", type=int, default=60)
    a = p.parse_args()
    main(a.max_iter, verbose=True)

"""Deliberately naive float64 references for CTC (see tests/reference.py).

Blank = class 0.  ``probs`` is (T, V) per-step probabilities of one sequence.
"""

import itertools

import numpy as np


def collapse(path):
    """CTC's many-to-one map: merge repeats, then drop blanks."""
    out, prev = [], None
    for k in path:
        if k != prev and k != 0:
            out.append(int(k))
        prev = k
    return tuple(out)


def labelling_probs(probs):
    """Every labelling with non-zero probability -> its probability, by
    enumerating all V**T paths (tiny T and V only)."""
    T, V = probs.shape
    out = {}
    for path in itertools.product(range(V), repeat=T):
        p = 1.0
        for t, k in enumerate(path):
            p *= probs[t, k]
        lab = collapse(path)
        out[lab] = out.get(lab, 0.0) + p
    return out


def ctc_loss_brute(probs, labels):
    """-log p(labels | x) summed over all alignments by enumeration."""
    return -np.log(labelling_probs(probs).get(tuple(labels), 0.0))


def ctc_loss_alpha(probs, labels):
    """-log p(labels | x) by the forward recursion of Graves et al. (2006),
    in probability space, written straight from the equations."""
    T = probs.shape[0]
    ext = [0]
    for k in labels:
        ext += [int(k), 0]
    S = len(ext)
    alpha = np.zeros((T, S))
    alpha[0, 0] = probs[0, 0]
    if S > 1:
        alpha[0, 1] = probs[0, ext[1]]
    for t in range(1, T):
        for s in range(S):
            a = alpha[t - 1, s]
            if s >= 1:
                a += alpha[t - 1, s - 1]
            if s >= 2 and ext[s] != 0 and ext[s] != ext[s - 2]:
                a += alpha[t - 1, s - 2]
            alpha[t, s] = a * probs[t, ext[s]]
    p = alpha[T - 1, S - 1] + (alpha[T - 1, S - 2] if S > 1 else 0.0)
    return -np.log(p) if p > 0 else np.inf

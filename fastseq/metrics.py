"""Sequence metrics: edit distance and character (label) error rate."""

import numpy as np


def _as_seq(s, name):
    if isinstance(s, str):
        return list(s)
    if isinstance(s, np.ndarray):
        if s.ndim != 1:
            raise ValueError(f"{name} must be a string or a 1-D sequence, got shape {s.shape}")
        return s.tolist()
    try:
        return list(s)
    except TypeError:
        raise TypeError(f"{name} must be a string or a sequence of labels, got "
                        f"{type(s).__name__}") from None


def edit_distance(a, b):
    """Levenshtein distance between two strings or sequences of hashable
    labels: the fewest insertions, deletions and substitutions that turn
    ``a`` into ``b`` (each costs 1)."""
    a, b = _as_seq(a, "a"), _as_seq(b, "b")
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, y in enumerate(b, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y))
        prev = cur
    return prev[-1]


def character_error_rate(y_true, y_pred):
    """Sum of the edit distances between each reference and its prediction,
    divided by the total length of the references (0 <= CER, may exceed 1
    when predictions hold insertions).  ``y_true`` and ``y_pred`` are lists
    of strings or of label sequences, of the same length."""
    if isinstance(y_true, str) or isinstance(y_pred, str):
        raise TypeError("y_true and y_pred must be lists of strings or label sequences, not "
                        "one string (wrap it in a list)")
    y_true, y_pred = list(y_true), list(y_pred)
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true and y_pred have different lengths: {len(y_true)} and "
                         f"{len(y_pred)}")
    ref = [_as_seq(t, f"y_true[{i}]") for i, t in enumerate(y_true)]
    total = sum(len(t) for t in ref)
    if total == 0:
        raise ValueError("the references are all empty: the character error rate is undefined")
    return sum(edit_distance(t, _as_seq(p, f"y_pred[{i}]"))
               for i, (t, p) in enumerate(zip(ref, y_pred))) / total

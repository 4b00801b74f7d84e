"""CTC loss (validation around :func:`fastseq.kernels.ctc.ctc_loss_grad`) and
CTC decoding (best path and prefix beam search).

Conventions: the blank is class 0, labels are the ints 1..V-1 (V classes
with the blank).  Arrays are time-major ``(T, B, V)`` as in
``torch.nn.functional.ctc_loss`` unless ``batch_first``.
"""

import warnings

import numpy as np

from .. import _threads
from .._config import INDEX_DTYPE, resolve_dtype
from ..kernels.ctc import ctc_loss_grad as _kernel

BLANK = 0
REDUCTIONS = ("mean", "sum", "none")


class CTCWarning(RuntimeWarning):
    """Samples whose input is too short for their target (infinite loss) were skipped."""


# ------------------------------------------------------------------- checks
def _check_lengths(a, name, n):
    arr = np.asarray(a)
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and arr.size and np.all(np.isfinite(arr)) \
                and np.all(arr == np.round(arr)):
            arr = arr.astype(INDEX_DTYPE)
        else:
            raise TypeError(f"{name} must hold integers, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr.reshape(-1) if arr.ndim == 0 else arr, dtype=INDEX_DTYPE)
    if arr.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) (one per sample), got {arr.shape}")
    return arr


def check_targets(targets, target_lengths, n_classes, B):
    """Targets (padded (B, L_max) or concatenated 1-D) -> (B, L_max) int64 and
    (B,) int64 lengths, every label checked to lie in 1..V-1."""
    tl = _check_lengths(target_lengths, "target_lengths", B)
    if np.any(tl < 0):
        raise ValueError(f"target_lengths must be >= 0, got {tl.min()}")
    t = np.asarray(targets)
    if t.size and t.dtype.kind not in "iu":
        raise TypeError(f"targets must hold integer labels 1..{n_classes - 1}, got dtype "
                        f"{t.dtype}")
    t = t.astype(INDEX_DTYPE)
    if t.ndim == 1:
        if t.shape[0] != int(tl.sum()):
            raise ValueError(f"concatenated 1-D targets must have sum(target_lengths)="
                             f"{int(tl.sum())} labels, got {t.shape[0]}")
        L_max = int(tl.max()) if B else 0
        out = np.zeros((B, L_max), dtype=INDEX_DTYPE)
        pos = np.concatenate([[0], np.cumsum(tl)])
        for b in range(B):
            out[b, :tl[b]] = t[pos[b]:pos[b + 1]]
    elif t.ndim == 2:
        if t.shape[0] != B:
            raise ValueError(f"padded targets must have shape (B, L_max) with B={B}, got "
                             f"{t.shape}")
        if np.any(tl > t.shape[1]):
            raise ValueError(f"target_lengths exceed the width of targets ({t.shape[1]}): "
                             f"max {tl.max()}")
        out = np.zeros((B, max(t.shape[1], 1)), dtype=INDEX_DTYPE)
        out[:, :t.shape[1]] = t
    else:
        raise ValueError(f"targets must be (B, L_max) padded or 1-D concatenated, got shape "
                         f"{t.shape}")
    valid = np.arange(out.shape[1])[None, :] < tl[:, None]
    used = out[valid]
    if used.size and (used.min() < 1 or used.max() >= n_classes):
        bad = used[(used < 1) | (used >= n_classes)][0]
        what = "the blank (0)" if bad == BLANK else f"{bad}"
        raise ValueError(f"targets hold {what}; labels must lie in 1..{n_classes - 1} (class 0 "
                         "is the blank, which cannot be a target)")
    if out.shape[1] == 0:
        out = np.zeros((B, 1), dtype=INDEX_DTYPE)
    return np.ascontiguousarray(out), tl


def required_length(labels):
    """Fewest input steps a CTC alignment of ``labels`` needs: their number
    plus one blank between each pair of equal adjacent labels."""
    labels = np.asarray(labels)
    return int(len(labels) + np.count_nonzero(labels[1:] == labels[:-1]))


def _check_finite(x, name, allow_neg_inf):
    bad = np.isnan(x) | (x == np.inf) if allow_neg_inf else ~np.isfinite(x)
    if np.any(bad):
        raise ValueError(f"{name} contains NaN or infinity at valid steps" +
                         (" (-inf log-probabilities are allowed)" if allow_neg_inf else ""))


def _check_scores(x, name, dtype=None, allow_neg_inf=False, finite=True):
    """Real array as float32/float64; finite (or -inf when ``allow_neg_inf``)
    unless ``finite=False`` (padded: the caller checks the valid steps)."""
    if isinstance(x, (list, tuple)) or not hasattr(x, "dtype"):
        x = np.asarray(x)
    if x.dtype.kind not in "fiu":
        raise TypeError(f"{name} must hold real numbers, got dtype {x.dtype}")
    dt = resolve_dtype(dtype) if dtype is not None else (
        x.dtype if x.dtype in (np.float32, np.float64) else np.dtype(np.float64))
    x = np.ascontiguousarray(x, dtype=dt)
    if finite:
        _check_finite(x, name, allow_neg_inf)
    return x


# --------------------------------------------------------------------- loss
#: multiply-add equivalents of one (step, state) cell of the forward-backward
#: (a few float64 multiply-adds in the scaled recursion, the softmax shared
#: out), for the thread planner, whose work unit is a multiply-add at one
#: core's sgemm rate: a cell takes about 11 ns against about 47 G
#: multiply-adds/s on the 2-vCPU znver4 (``python -m bench.ctc --threads 1``)
CELL_WORK = 500


def _run(x, tg, il, tl, from_logits, scale, losses, grad):
    """The kernel over the whole batch, split over threads (contiguous
    slices balanced by each sample's steps x states) when it pays."""
    cost = il * (2 * tl + 1)
    _threads.run_sliced(_kernel, (x, tg, il, tl, from_logits, scale, losses, grad), cost,
                        int(cost.sum()) * CELL_WORK)


def ctc_loss(x, targets, input_lengths, target_lengths, *, reduction="mean", log_probs=False,
             batch_first=False, zero_infinity=True, return_grad=True):
    """CTC loss (``torch.nn.functional.ctc_loss`` semantics, blank 0) and its gradient.

    Parameters
    ----------
    x : (T, B, V) array (``(B, T, V)`` when ``batch_first``), float32 or float64
        Logits (default: ``log_softmax`` is applied inside and the gradient
        is w.r.t. the logits, as torch gives through ``log_softmax``), or
        log-probabilities when ``log_probs=True`` (gradient w.r.t. them: the
        true partial derivatives ``-gamma``, see Notes).  ``-inf`` is allowed
        in log-probabilities; padded steps are never read.
    targets : (B, L_max) int array padded with anything, or 1-D concatenated
        Labels in 1..V-1 (0 is the blank and cannot be a target).
    input_lengths : (B,) ints in 1..T
    target_lengths : (B,) ints >= 0 (an empty target is allowed: its loss is
        ``-sum_t log y_t(blank)``)
    reduction : {"mean", "sum", "none"}
        "mean": each loss divided by its target length (at least 1), then the
        mean over the batch (torch's); "sum"; "none": per-sample losses, with
        the gradient of their sum.
    zero_infinity : bool, default True
        A sample whose input is shorter than its target needs has an
        infinite loss: with True it counts as 0 (a :class:`CTCWarning` names
        it), as torch's ``zero_infinity``; with False its loss stays
        ``inf``.  Its gradient is 0 either way (never NaN).
    return_grad : bool
        Return ``(loss, grad)`` (grad of x's shape and dtype) or the loss alone.

    Returns
    -------
    loss : float, or (B,) float64 for ``reduction="none"``
    grad : ndarray like x (only with ``return_grad``)

    Notes
    -----
    torch's ``ctc_loss`` backward w.r.t. log-probabilities returns
    ``exp(lp) - gamma``, which is the gradient w.r.t. the logits once passed
    back through ``log_softmax``; here ``log_probs=True`` gives the true
    partial derivatives ``-gamma`` (the same after ``log_softmax``'s backward).
    Equations: :mod:`fastseq.kernels.ctc`.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    name = "log_probs" if log_probs else "logits"
    x = _check_scores(x, name, allow_neg_inf=log_probs, finite=False)
    if x.ndim != 3:
        raise ValueError(f"x must be 3-D ({'(B, T, V)' if batch_first else '(T, B, V)'}), got "
                         f"shape {x.shape}")
    if batch_first:
        x = np.ascontiguousarray(x.transpose(1, 0, 2))
    T, B, V = x.shape
    if B == 0 or T == 0:
        raise ValueError(f"x must hold at least one sample and one step, got shape {x.shape}")
    if V < 2:
        raise ValueError(f"x needs at least 2 classes (the blank and one label), got V={V}")
    il = _check_lengths(input_lengths, "input_lengths", B)
    if np.any(il < 1) or np.any(il > T):
        raise ValueError(f"input_lengths must lie in 1..T={T}, got {il.min()}..{il.max()}")
    tg, tl = check_targets(targets, target_lengths, V, B)
    _check_finite(x[np.arange(T)[:, None] < il[None, :]], name, log_probs)
    denom = np.maximum(tl, 1).astype(np.float64) if reduction == "mean" else np.ones(B)
    scale = 1.0 / denom / (B if reduction == "mean" else 1)
    losses = np.empty(B, dtype=np.float64)
    grad = np.empty_like(x)
    _run(x, tg, il, tl, bool(not log_probs), scale, losses, grad)
    inf = ~np.isfinite(losses)
    if np.any(inf):
        if zero_infinity:
            idx = np.flatnonzero(inf)
            warnings.warn(
                f"CTC: {len(idx)} sample(s) {idx[:10].tolist()} have an input shorter than "
                "their target needs (input length < target length + adjacent repeats): "
                "infinite loss, skipped (loss 0, gradient 0)", CTCWarning, stacklevel=2)
            losses[inf] = 0.0
    if reduction == "none":
        loss = losses
    else:
        loss = float(np.sum(losses * scale))
    if batch_first and return_grad:
        grad = np.ascontiguousarray(grad.transpose(1, 0, 2))
    return (loss, grad) if return_grad else loss


def ctc_rows_loss(rows, target, need_grad=True):
    """The estimators' CTC loss over packed rows (the model protocol's
    ``LOSSES["ctc"]``): ``rows`` (N, V) logits of the valid steps, sample by
    sample; ``target`` = (labels (B, T_max) padded with 0, input lengths
    (B,)).  Mean reduction (torch's); infeasible samples are skipped with a
    :class:`CTCWarning`.  Returns ``(loss, drows)``."""
    labels, lengths = target
    B, T = len(lengths), int(lengths.max())
    V = rows.shape[1]
    valid = np.arange(T)[None, :] < lengths[:, None]
    x = np.zeros((T, B, V), dtype=rows.dtype)
    x.transpose(1, 0, 2)[valid] = rows
    tl = np.count_nonzero(labels, axis=1).astype(INDEX_DTYPE)
    tg = np.ascontiguousarray(labels, dtype=INDEX_DTYPE)
    if tg.shape[1] == 0:
        tg = np.zeros((B, 1), dtype=INDEX_DTYPE)
    scale = 1.0 / np.maximum(tl, 1) / B
    losses = np.empty(B)
    grad = np.empty_like(x)
    _run(x, tg, np.ascontiguousarray(lengths, dtype=INDEX_DTYPE), tl, True, scale, losses, grad)
    inf = ~np.isfinite(losses)
    if np.any(inf):
        warnings.warn(f"CTC: {int(inf.sum())} sample(s) of the batch have an input too short "
                      "for their target: skipped (zero gradient)", CTCWarning, stacklevel=2)
        losses[inf] = 0.0
    loss = float(np.sum(losses * scale))
    if not need_grad:
        return loss, None
    return loss, np.ascontiguousarray(grad.transpose(1, 0, 2)[valid])


# ----------------------------------------------------------------- decoding
def _as_sequences(log_probs, input_lengths, batch_first, name="log_probs"):
    """A (T, V) array, a (T, B, V) / (B, T, V) array with lengths, or a list
    of (T_i, V) arrays -> (list of (T_i, V) float64 arrays, single)."""
    if isinstance(log_probs, (list, tuple)) and len(log_probs) and np.ndim(log_probs[0]) == 2:
        seqs = [_check_scores(a, f"{name}[{i}]", "float64", allow_neg_inf=True)
                for i, a in enumerate(log_probs)]
        if input_lengths is not None:
            raise ValueError("input_lengths is only for a padded 3-D log_probs")
        single = False
    else:
        x = _check_scores(log_probs, name, "float64", allow_neg_inf=True, finite=False)
        if x.ndim == 2:
            if input_lengths is not None:
                raise ValueError("input_lengths is only for a padded 3-D log_probs")
            _check_finite(x, name, True)
            seqs, single = [x], True
        elif x.ndim == 3:
            if not batch_first:
                x = x.transpose(1, 0, 2)
            B, T = x.shape[:2]
            il = (np.full(B, T, dtype=INDEX_DTYPE) if input_lengths is None
                  else _check_lengths(input_lengths, "input_lengths", B))
            if np.any(il < 0) or np.any(il > T):
                raise ValueError(f"input_lengths must lie in 0..T={T}")
            seqs, single = [x[b, :il[b]] for b in range(B)], False
            for b, s in enumerate(seqs):
                _check_finite(s, f"{name}[{b}]", True)
        else:
            raise ValueError(f"{name} must be (T, V), (T, B, V) or a list of (T_i, V) arrays, "
                             f"got shape {x.shape}")
    V = {s.shape[1] for s in seqs}
    if len(V) != 1 or min(V) < 2:
        raise ValueError(f"{name} must have one number of classes >= 2 (blank first), got "
                         f"{sorted(V)}")
    return seqs, single


def _greedy_one(lp):
    best = lp.argmax(axis=1) if len(lp) else np.zeros(0, dtype=np.int64)
    score = float(lp[np.arange(len(lp)), best].sum())
    keep = np.ones(len(best), dtype=bool)
    keep[1:] = best[1:] != best[:-1]
    keep &= best != BLANK
    return best[keep].astype(INDEX_DTYPE), score


def ctc_greedy_decode(log_probs, input_lengths=None, *, batch_first=False):
    """Best-path decoding: the argmax class at each step, repeats collapsed,
    blanks dropped.

    ``log_probs``: one (T, V) array, a padded (T, B, V) array (``(B, T, V)``
    when ``batch_first``) with optional ``input_lengths``, or a list of
    (T_i, V) arrays; class 0 is the blank.  Returns ``(labels, log_prob)``
    for one (T, V) array, else a list of them: ``labels`` an int64 array of
    labels in 1..V-1, ``log_prob`` the log-probability of the best path
    (a lower bound of the labelling's, which sums over all its alignments).
    """
    seqs, single = _as_sequences(log_probs, input_lengths, batch_first)
    out = [_greedy_one(lp) for lp in seqs]
    return out[0] if single else out


def _lae(a, b):
    return np.logaddexp(a, b) if (a != -np.inf or b != -np.inf) else -np.inf


def _beam_one(lp, beam_width, prune):
    """Prefix beam search over one (T, V) array (log space)."""
    NEG = -np.inf
    beams = {(): (0.0, NEG)}  # prefix -> (log p ending in blank, log p ending in a label)
    V = lp.shape[1]
    for t in range(lp.shape[0]):
        row = lp[t]
        cand = np.arange(1, V)
        if prune is not None:
            cand = cand[row[1:] >= prune]
        nxt = {}

        def add(p, pb, pnb):
            ob, onb = nxt.get(p, (NEG, NEG))
            nxt[p] = (_lae(ob, pb), _lae(onb, pnb))

        for prefix, (pb, pnb) in beams.items():
            tot = _lae(pb, pnb)
            add(prefix, tot + row[BLANK], NEG)
            last = prefix[-1] if prefix else -1
            for k in cand:
                k = int(k)
                p = row[k]
                if k == last:
                    add(prefix, NEG, pnb + p)          # repeat collapsed
                    add(prefix + (k,), NEG, pb + p)    # repeat after a blank
                else:
                    add(prefix + (k,), NEG, tot + p)
        ranked = sorted(nxt.items(), key=lambda kv: -_lae(*kv[1]))
        beams = dict(ranked[:beam_width])
    prefix, (pb, pnb) = max(beams.items(), key=lambda kv: _lae(*kv[1]))
    return np.array(prefix, dtype=INDEX_DTYPE), float(_lae(pb, pnb))


def ctc_beam_decode(log_probs, input_lengths=None, *, beam_width=8, batch_first=False,
                    prune_log_prob=None):
    """Prefix beam search (Hannun et al. 2014), in log space.

    Same inputs and outputs as :func:`ctc_greedy_decode`; ``log_prob`` is the
    total log-probability of the labelling over all its alignments that the
    search kept (exact when the beam never drops a prefix).  ``beam_width``
    (>= 1) prefixes are kept after each step; ``prune_log_prob`` (optional)
    skips labels whose log-probability at a step is below it.
    """
    if isinstance(beam_width, bool) or not isinstance(beam_width, (int, np.integer)) \
            or beam_width < 1:
        raise ValueError(f"beam_width must be an integer >= 1, got {beam_width!r}")
    if prune_log_prob is not None and not np.isfinite(prune_log_prob):
        raise ValueError(f"prune_log_prob must be a finite number or None, got "
                         f"{prune_log_prob!r}")
    seqs, single = _as_sequences(log_probs, input_lengths, batch_first)
    out = [_beam_one(lp, int(beam_width), prune_log_prob) for lp in seqs]
    return out[0] if single else out

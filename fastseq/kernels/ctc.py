"""Connectionist temporal classification (CTC): loss and gradient.

Glossary as in :mod:`fastseq.kernels.lstm`, plus L target length (labels of
a sample), S = 2 L + 1 states of the extended label sequence
``l' = (blank, l_1, blank, l_2, ..., l_L, blank)``.  The blank is class 0;
labels are 1..V-1.

Notes
-----
Forward-backward in log space (Graves et al. 2006), one sample at a time,
internally in float64 whatever the input dtype.  With ``y_t(k)`` the
probability of class k at step t (``lp = log y``), for a sample of ``T_b``
valid steps::

    alpha_0(0) = y_0(blank),  alpha_0(1) = y_0(l_1),  alpha_0(s > 1) = 0
    alpha_t(s) = y_t(l'_s) * (alpha_{t-1}(s) + alpha_{t-1}(s-1)
                              + [l'_s != blank and l'_s != l'_{s-2}] alpha_{t-1}(s-2))
    beta_{T_b-1}(S-1) = beta_{T_b-1}(S-2) = 1, other beta_{T_b-1}(s) = 0
    beta_t(s) = sum over s' in {s, s+1, s+2 (same condition on l'_{s+2})}
                of y_{t+1}(l'_{s'}) beta_{t+1}(s')
    p(l | x) = alpha_{T_b-1}(S-1) + alpha_{T_b-1}(S-2) = sum_s alpha_t(s) beta_t(s)

(``beta`` excludes the emission at t.)  The loss is ``-log p``.  The
occupancy of class k at step t is ``gamma_t(k) = sum_{s: l'_s = k} alpha_t(s)
beta_t(s) / p``; the gradient of the loss w.r.t. the log-probabilities is
``-gamma_t(k)``, and w.r.t. the logits z of ``lp = log_softmax(z)`` it is
``softmax(z)_t(k) - gamma_t(k)`` (what PyTorch returns through
``log_softmax``).  Steps ``t >= T_b`` and targets past ``L_b`` are never read;
their gradient is 0.  A sample whose ``T_b`` is shorter than its labels need
(``L_b`` plus the number of equal adjacent labels) has ``p = 0``: its loss is
``+inf`` and its gradient 0 (the caller decides what to report).

Two ways to run the recursions, one result:

- **Scaled probabilities** (Rabiner's scaling, Graves 2012 section 7.3.1),
  tried first: ``alpha_t`` and ``beta_t`` are kept as probabilities,
  divided at each step by their sum, and ``log p`` is the sum of the logs of
  those sums.  A cell is then two or three multiply-adds instead of two
  ``exp`` and a ``log`` (about 10x fewer cycles), and every quantity stays
  within a few rounding errors of the log-space one.
- **Log space**, the exact fallback: a sample whose scaled recursion meets a
  value below :data:`TINY` (an emission probability, or a normalised
  ``alpha``/``beta``/occupancy, that float64 could no longer hold to full
  precision: logits more than about 640 apart, or a step sum of 0) is run
  again in log space, which never underflows.  Infeasible samples take this
  path too (their forward sum reaches 0).
"""

import numpy as np
from numba import njit

from .._config import JIT

NEG_INF = -np.inf
#: smallest value the scaled recursion trusts (float64's subnormals start
#: near 2.2e-308; below this a sample is run again in log space)
TINY = 1e-280


@njit(**JIT)
def _lse2(a, b):
    """log(exp(a) + exp(b)), exact at -inf."""
    if a < b:
        a, b = b, a
    if b == NEG_INF:
        return a
    return a + np.log1p(np.exp(b - a))


@njit(**JIT)
def _lse3(a, b, c):
    """log(exp(a) + exp(b) + exp(c)), exact at -inf (two exp and one log)."""
    if a < b:
        a, b = b, a
    if a < c:
        a, c = c, a
    if a == NEG_INF:
        return a
    return a + np.log(1.0 + np.exp(b - a) + np.exp(c - a))


@njit(inline="always", **JIT)
def _row_max(x, t, b):
    """The largest score of step ``t`` of sample ``b``, in float64 (the
    shift of a softmax)."""
    m = NEG_INF
    for k in range(x.shape[2]):
        v = np.float64(x[t, b, k])
        if v > m:
            m = v
    return m


@njit(**JIT)
def _log_probs(x, b, Tb, from_logits, lp):
    """``lp[:Tb]`` = the log-probabilities of sample ``b``'s valid steps
    (``log_softmax`` of the logits, or ``x`` as given), in float64."""
    V = x.shape[2]
    for t in range(Tb):
        if from_logits:
            m = _row_max(x, t, b)
            acc = 0.0
            for k in range(V):
                acc += np.exp(np.float64(x[t, b, k]) - m)
            lz = m + np.log(acc)
            for k in range(V):
                lp[t, k] = np.float64(x[t, b, k]) - lz
        else:
            for k in range(V):
                lp[t, k] = np.float64(x[t, b, k])


@njit(inline="always", **JIT)
def _normalise(a, t, lo, hi):
    """Divide ``a[t, lo:hi]`` by its sum and return the sum; 0.0 (nothing
    to trust) when the sum, or a quotient other than 0, is below
    :data:`TINY` (NaN included)."""
    c = 0.0
    for s in range(lo, hi):
        c += a[t, s]
    if not c >= TINY:
        return 0.0
    inv = 1.0 / c
    for s in range(lo, hi):
        v = a[t, s] * inv
        if v < TINY and v != 0.0:
            return 0.0
        a[t, s] = v
    return c


@njit(**JIT)
def _sample_scaled(x, b, Tb, ext, skip, S, from_logits, y, alpha, beta, occ, scale, out_grad):
    """The loss of sample ``b`` (rows ``x[:Tb, b]``) and its gradient times
    ``scale`` into ``out_grad[:, b]``, by the scaled recursions (module
    docstring).  Returns ``(loss, ok)``; ``ok`` False when a value fell below
    :data:`TINY` (what was written to ``out_grad[:, b]`` is then to be
    overwritten by :func:`_sample_log`).  ``y`` (T, V), ``alpha``/``beta``
    (T, S_max), ``occ`` (V,) are float64 work buffers."""
    T, V = out_grad.shape[0], out_grad.shape[2]
    # the probabilities y_t(k): softmax of the logits, or exp of log-probabilities
    for t in range(Tb):
        if from_logits:
            m = _row_max(x, t, b)
            acc = 0.0
            for k in range(V):
                e = np.exp(np.float64(x[t, b, k]) - m)
                y[t, k] = e
                acc += e
            inv = 1.0 / acc
            for k in range(V):
                v = y[t, k] * inv
                if v < TINY:  # finite logits: never exactly 0 in log space
                    return 0.0, False
                y[t, k] = v
        else:
            for k in range(V):
                lv = np.float64(x[t, b, k])
                v = np.exp(lv)
                if v < TINY and lv != NEG_INF:
                    return 0.0, False
                y[t, k] = v
    # forward, over lo(t) <= s < hi(t) (see _sample_log), each step divided
    # by its sum c_t; log p = sum_t log c_t + log(the last step's end states)
    for s in range(S):
        alpha[0, s] = 0.0
    alpha[0, 0] = y[0, 0]
    if S > 1:
        alpha[0, 1] = y[0, ext[1]]
    logp = 0.0
    for t in range(Tb):
        lo = max(0, S - 2 * (Tb - t))
        hi = min(S, 2 * t + 2)
        if t > 0:
            for s in range(lo):
                alpha[t, s] = 0.0
            for s in range(hi, S):
                alpha[t, s] = 0.0
            for s in range(lo, hi):
                v = alpha[t - 1, s]
                if s >= 1:
                    v += alpha[t - 1, s - 1]
                if skip[s]:
                    v += alpha[t - 1, s - 2]
                alpha[t, s] = v * y[t, ext[s]]
        else:  # states that cannot reach the end in time count for nothing
            for s in range(lo):
                alpha[0, s] = 0.0
        c = _normalise(alpha, t, lo, hi)
        if c == 0.0:
            return 0.0, False
        logp += np.log(c)
    end = alpha[Tb - 1, S - 1]
    if S > 1:
        end += alpha[Tb - 1, S - 2]
    if not end >= TINY:
        return 0.0, False
    logp += np.log(end)
    # backward (beta excludes the emission at t), each step divided by its sum
    for s in range(S):
        beta[Tb - 1, s] = 0.0
    beta[Tb - 1, S - 1] = 1.0
    if S > 1:
        beta[Tb - 1, S - 2] = 1.0
    for t in range(Tb - 2, -1, -1):
        lo = max(0, S - 2 * (Tb - t))
        hi = min(S, 2 * t + 2)
        for s in range(lo):
            beta[t, s] = 0.0
        for s in range(hi, S):
            beta[t, s] = 0.0
        for s in range(lo, hi):
            v = beta[t + 1, s] * y[t + 1, ext[s]]
            if s + 1 < S:
                v += beta[t + 1, s + 1] * y[t + 1, ext[s + 1]]
            if s + 2 < S and skip[s + 2]:
                v += beta[t + 1, s + 2] * y[t + 1, ext[s + 2]]
            beta[t, s] = v
        if _normalise(beta, t, lo, hi) == 0.0:
            return 0.0, False
    # occupancies: alpha_t(s) beta_t(s) over their sum at t (p, scaled) -> gradient
    for t in range(Tb):
        lo = max(0, S - 2 * (Tb - t))
        hi = min(S, 2 * t + 2)
        for k in range(V):
            occ[k] = 0.0
        z = 0.0
        for s in range(lo, hi):
            g = alpha[t, s] * beta[t, s]
            occ[ext[s]] += g
            z += g
        if not z >= TINY:
            return 0.0, False
        inv = 1.0 / z
        for k in range(V):
            g = -occ[k] * inv
            if from_logits:
                g += y[t, k]
            out_grad[t, b, k] = g * scale
    for t in range(Tb, T):
        for k in range(V):
            out_grad[t, b, k] = 0.0
    return -logp, True


@njit(**JIT)
def _sample_log(b, Tb, ext, skip, S, from_logits, lp, alpha, beta, row, occ, scale, out_grad):
    """Loss of sample ``b`` and its gradient times ``scale`` into
    ``out_grad[:, b]``, in log space, from its log-probabilities
    ``lp[:Tb]``.  ``ext`` (S_max,) is the extended label sequence,
    ``skip[s]`` whether state s may be entered from s - 2.  ``alpha``/``beta``
    (T, S_max), ``row`` (S_max,) and ``occ`` (V,) are float64 work buffers."""
    T, V = out_grad.shape[0], out_grad.shape[2]
    # forward, over the states that were reachable from the start and can
    # still reach the end: lo(t) <= s < hi(t)
    for s in range(S):
        alpha[0, s] = NEG_INF
    alpha[0, 0] = lp[0, 0]
    if S > 1:
        alpha[0, 1] = lp[0, ext[1]]
    for t in range(1, Tb):
        lo = max(0, S - 2 * (Tb - t))
        hi = min(S, 2 * t + 2)
        for s in range(lo):
            alpha[t, s] = NEG_INF
        for s in range(hi, S):
            alpha[t, s] = NEG_INF
        for s in range(lo, hi):
            if skip[s]:
                v = _lse3(alpha[t - 1, s], alpha[t - 1, s - 1], alpha[t - 1, s - 2])
            elif s >= 1:
                v = _lse2(alpha[t - 1, s], alpha[t - 1, s - 1])
            else:
                v = alpha[t - 1, s]
            alpha[t, s] = v + lp[t, ext[s]]
    logp = alpha[Tb - 1, S - 1]
    if S > 1:
        logp = _lse2(logp, alpha[Tb - 1, S - 2])
    if not np.isfinite(logp):
        for t in range(T):
            for k in range(V):
                out_grad[t, b, k] = 0.0
        return np.inf if logp == NEG_INF else logp
    # backward; row[s] = beta_{t+1}(s) + lp_{t+1}(l'_s)
    for s in range(S):
        beta[Tb - 1, s] = NEG_INF
    beta[Tb - 1, S - 1] = 0.0
    if S > 1:
        beta[Tb - 1, S - 2] = 0.0
    for t in range(Tb - 2, -1, -1):
        lo = max(0, S - 2 * (Tb - t))
        hi = min(S, 2 * t + 2)
        for s in range(lo, min(S, hi + 2)):
            row[s] = beta[t + 1, s] + lp[t + 1, ext[s]]
        for s in range(lo):
            beta[t, s] = NEG_INF
        for s in range(hi, S):
            beta[t, s] = NEG_INF
        for s in range(lo, hi):
            if s + 2 < S and skip[s + 2]:
                beta[t, s] = _lse3(row[s], row[s + 1], row[s + 2])
            elif s + 1 < S:
                beta[t, s] = _lse2(row[s], row[s + 1])
            else:
                beta[t, s] = row[s]
    # occupancies (linear: alpha + beta <= log p, nothing overflows) -> gradient
    for t in range(Tb):
        lo = max(0, S - 2 * (Tb - t))
        hi = min(S, 2 * t + 2)
        for k in range(V):
            occ[k] = 0.0
        for s in range(lo, hi):
            occ[ext[s]] += np.exp(alpha[t, s] + beta[t, s] - logp)
        for k in range(V):
            g = -occ[k]
            if from_logits:
                g += np.exp(lp[t, k])
            out_grad[t, b, k] = g * scale
    for t in range(Tb, T):
        for k in range(V):
            out_grad[t, b, k] = 0.0
    return -logp


@njit(**JIT)
def ctc_loss_grad(x, targets, input_lengths, target_lengths, from_logits, grad_scale,
                  out_loss, out_grad, b0, b1):
    """CTC loss of samples ``b0 <= b < b1`` and their gradient.

    Parameters
    ----------
    x : (T, B, V) float32 or float64
        Logits (``from_logits``) or log-probabilities; step t of sample b is
        read only for ``t < input_lengths[b]``.
    targets : (B, L_max) int64
        Labels in 1..V-1; ``targets[b, :target_lengths[b]]`` are read.
    input_lengths, target_lengths : (B,) int64
        ``1 <= input_lengths[b] <= T``, ``0 <= target_lengths[b] <= L_max``.
    from_logits : bool
        Gradient w.r.t. the logits (softmax fused) or w.r.t. ``x`` as given.
    grad_scale : (B,) float64
        Factor of each sample's gradient (the reduction's weight).
    out_loss : (B,) float64
        ``-log p(l_b | x_b)`` (``+inf`` for an infeasible sample).
    out_grad : (T, B, V), dtype of x
        Gradient times ``grad_scale[b]``; 0 at padded steps and for
        infeasible samples.
    b0, b1 : int
        Samples to process (slices of a batch may run in parallel threads).

    Notes
    -----
    See the module docstring.
    """
    T, V = x.shape[0], x.shape[2]
    L_max = targets.shape[1]
    S_max = 2 * L_max + 1
    lp = np.empty((T, V))
    y = np.empty((T, V))
    alpha = np.empty((T, S_max))
    beta = np.empty((T, S_max))
    row = np.empty(S_max)
    occ = np.empty(V)
    ext = np.zeros(S_max, dtype=np.int64)
    skip = np.zeros(S_max, dtype=np.bool_)
    for b in range(b0, b1):
        L = target_lengths[b]
        S = 2 * L + 1
        for j in range(L):
            ext[2 * j + 1] = targets[b, j]
        for s in range(S):
            skip[s] = s >= 2 and ext[s] != 0 and ext[s] != ext[s - 2]
        Tb = input_lengths[b]
        loss, ok = _sample_scaled(x, b, Tb, ext, skip, S, from_logits, y, alpha, beta, occ,
                                  grad_scale[b], out_grad)
        if not ok:
            _log_probs(x, b, Tb, from_logits, lp)
            loss = _sample_log(b, Tb, ext, skip, S, from_logits, lp, alpha, beta, row, occ,
                               grad_scale[b], out_grad)
        out_loss[b] = loss

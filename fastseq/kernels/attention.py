"""Attention over encoder states: scores, masked softmax, context, and backward.

Glossary as in :mod:`fastseq.kernels.lstm`, plus S source steps, A size of an
encoder state (D*H of the encoder), Q size of the query (the decoder state),
K size of a key (see below), U attention units (Bahdanau).

Layout
------
Attention reduces over the source steps of each sequence, so its memory is
batch-major: ``mem`` (B, S, A) holds the encoder states ``h_s`` and ``keys``
(B, S, K) their projection, computed once per sequence by the caller (one large
matrix product before the decoder loop):

==========  =====================  ==========================================
kind        keys                   score e_s of query q
==========  =====================  ==========================================
BAHDANAU    ``W1 h_s``   (K = U)   ``v . tanh(W1 h_s + W2 q)``
LUONG       ``W h_s``    (K = Q)   ``q . (W h_s)``           (Luong "general")
DOT         ``h_s``      (K = A)   ``q . h_s``
COSINE      ``h_s``      (K = A)   ``g * cos(q, h_s)``, g a sharpness
NONE        ``h_s``                as DOT; the caller passes the final encoder
                                   state as a one-step memory, whose weight is 1
==========  =====================  ==========================================

Notes
-----
With ``L_b`` the length of source sequence ``b``::

    a_s = exp(e_s - max e) / sum_{s' < L_b} exp(e_s' - max e)    for s < L_b
    a_s = 0                                                      for s >= L_b
    context = sum_s a_s h_s

Padded source steps (``s >= L_b``) are never read: their weight is exactly 0
and their gradients are exactly 0.  The cosine uses smoothed norms
``|x|_eps = sqrt(|x|^2 + eps)`` with ``eps = 1e-8`` so it is differentiable at 0.
"""

import numpy as np
from numba import njit

from .._config import JIT
from .activations import tanh

BAHDANAU = 0
LUONG = 1
DOT = 2
COSINE = 3
NONE = 4
#: kind name -> code passed to the kernels
ATTENTION_KINDS = {"bahdanau": BAHDANAU, "luong": LUONG, "dot": DOT, "cosine": COSINE, None: NONE}
COSINE_EPS = 1e-8


@njit(**JIT)
def _scores(kind, q, qp, keys_b, L, att, out_e):
    """Scores e_s (s < L) of one query ``q`` (Q,) against ``keys_b`` (S, K).

    ``qp`` (U,) is the projected query ``W2 q`` (Bahdanau only)."""
    v = att[1]
    g = att[2][0]
    K = keys_b.shape[1]
    z = keys_b.dtype.type(0)
    if kind == BAHDANAU:
        # accumulated in the arrays' dtype with the package's tanh (a rational
        # form for float32): the loop over u vectorises (np.tanh and a float64
        # accumulator kept it scalar libm calls, ~16 ns a term)
        U = qp.shape[0]
        for s in range(L):
            kr = keys_b[s]
            acc = z
            for u in range(U):
                acc += v[u] * tanh(kr[u] + qp[u])
            out_e[s] = acc
    elif kind == COSINE:
        nq = 0.0
        for j in range(K):
            nq += q[j] * q[j]
        nq = np.sqrt(nq + COSINE_EPS)
        for s in range(L):
            dot = 0.0
            nk = 0.0
            for j in range(K):
                dot += q[j] * keys_b[s, j]
                nk += keys_b[s, j] * keys_b[s, j]
            out_e[s] = g * dot / (nq * np.sqrt(nk + COSINE_EPS))
    else:
        for s in range(L):
            kr = keys_b[s]
            acc = z
            for j in range(K):
                acc += q[j] * kr[j]
            out_e[s] = acc


@njit(**JIT)
def attention_forward(kind, query, keys, mem, src_len, att, out_weights, out_ctx):
    """Attention weights and context for one decoder step of a batch.

    Parameters
    ----------
    kind : int
        One of the codes in :data:`ATTENTION_KINDS`.
    query : (B, Q) float
        Decoder states doing the looking.
    keys : (B, S, K) float
        Projected encoder states (see the module table).
    mem : (B, S, A) float
        Encoder states ``h_s``.
    src_len : (B,) int64
        Valid source steps, in ``1..S``.
    att : tuple (w2_t (Q, U), v (U,), g (1,)) of float arrays
        Bahdanau's ``W2.T`` and ``v``, and the cosine sharpness ``g``; arrays
        a kind does not use may hold anything of the right rank.
    out_weights : (B, S) float
        Filled with the weights ``a_s`` (0 at padded steps; rows sum to 1).
    out_ctx : (B, A) float
        Filled with the contexts ``sum_s a_s h_s``.
    """
    B, S, A = mem.shape
    U = att[1].shape[0]
    e = np.empty(S, dtype=mem.dtype)
    qp = np.zeros((B, U), dtype=mem.dtype)
    if kind == BAHDANAU:
        np.dot(query, att[0], qp)
    for b in range(B):
        L = src_len[b]
        _scores(kind, query[b], qp[b], keys[b], L, att, e)
        m = e[0]
        for s in range(1, L):
            if e[s] > m:
                m = e[s]
        tot = 0.0
        for s in range(L):
            e[s] = np.exp(e[s] - m)
            tot += e[s]
        for s in range(S):
            out_weights[b, s] = e[s] / tot if s < L else 0.0
        for j in range(A):
            out_ctx[b, j] = 0.0
        for s in range(L):
            a = out_weights[b, s]
            for j in range(A):
                out_ctx[b, j] += a * mem[b, s, j]


@njit(**JIT)
def attention_backward(kind, d_ctx, query, keys, mem, src_len, att, weights, grads):
    """Backpropagate one step of :func:`attention_forward`, accumulating.

    Parameters
    ----------
    kind : int
    d_ctx : (B, A) float
        Gradient of the loss with respect to the contexts.
    query, keys, mem, src_len, att :
        As given to :func:`attention_forward`.
    weights : (B, S) float
        The weights it returned.
    grads : tuple of float arrays, all accumulated into (``+=``)
        ``(d_query (B, Q), d_keys (B, S, K), d_mem (B, S, A), d_qp (B, U),
        d_v (U,), d_g (1,))``: gradients with respect to the query, the keys,
        the encoder states (through the context only), Bahdanau's projected
        query ``W2 q`` (so ``dW2 = d_qp.T @ query`` summed over steps; its
        share of ``d_query`` is already added), ``v`` and the sharpness.
    """
    d_query, d_keys, d_mem, d_qp, d_v, d_g = grads
    B, S, A = mem.shape
    K = keys.shape[2]
    Q = query.shape[1]
    w2_t, v, gv = att
    U = v.shape[0]
    g = gv[0]
    da = np.empty(S, dtype=mem.dtype)
    one = mem.dtype.type(1)
    qp = np.zeros((B, U), dtype=mem.dtype)
    if kind == BAHDANAU:
        np.dot(query, w2_t, qp)
    # Bahdanau: the projected query's gradient of every row, then its share
    # of d_query as one product after the loop over the batch
    dqp_all = np.zeros((B, U), dtype=mem.dtype)
    z = mem.dtype.type(0)
    for b in range(B):
        L = src_len[b]
        # context: ctx = sum_s a_s h_s
        ssum = z
        dcb = d_ctx[b]
        for s in range(L):
            acc = z
            a = weights[b, s]
            mr = mem[b, s]
            dm = d_mem[b, s]
            for j in range(A):
                acc += dcb[j] * mr[j]
                dm[j] += a * dcb[j]
            da[s] = acc
            ssum += a * acc
        # softmax: d e_s = a_s (d a_s - sum a d a)
        for s in range(L):
            da[s] = weights[b, s] * (da[s] - ssum)
        if kind == BAHDANAU:
            dqp = dqp_all[b]
            qb = qp[b]
            for s in range(L):
                de = da[s]
                kr = keys[b, s]
                dk = d_keys[b, s]
                for u in range(U):
                    th = tanh(kr[u] + qb[u])
                    d_v[u] += de * th
                    dpre = de * v[u] * (one - th * th)
                    dk[u] += dpre
                    dqp[u] += dpre
            for u in range(U):
                d_qp[b, u] += dqp[u]
        elif kind == COSINE:
            nq2 = 0.0
            for j in range(K):
                nq2 += query[b, j] * query[b, j]
            nq = np.sqrt(nq2 + COSINE_EPS)
            for s in range(L):
                dot = 0.0
                nk2 = 0.0
                for j in range(K):
                    dot += query[b, j] * keys[b, s, j]
                    nk2 += keys[b, s, j] * keys[b, s, j]
                nk = np.sqrt(nk2 + COSINE_EPS)
                cos = dot / (nq * nk)
                d_g[0] += da[s] * cos
                dc = da[s] * g
                for j in range(K):
                    qj = query[b, j]
                    kj = keys[b, s, j]
                    d_query[b, j] += dc * (kj / (nq * nk) - cos * qj / (nq * nq))
                    d_keys[b, s, j] += dc * (qj / (nq * nk) - cos * kj / (nk * nk))
        else:
            for s in range(L):
                de = da[s]
                for j in range(K):
                    d_query[b, j] += de * keys[b, s, j]
                    d_keys[b, s, j] += de * query[b, j]
    if kind == BAHDANAU:
        dq = np.empty((B, Q), dtype=mem.dtype)
        np.dot(dqp_all, w2_t.T, dq)
        for b in range(B):
            for i in range(Q):
                d_query[b, i] += dq[b, i]

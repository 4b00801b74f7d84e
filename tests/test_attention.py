"""Attention kernels against a naive numpy reference, masks, and central differences."""

import numpy as np
import pytest

from fastseq.kernels.attention import (
    ATTENTION_KINDS, BAHDANAU, COSINE, COSINE_EPS, attention_backward, attention_forward,
)
from conftest import central_difference

KINDS = ["bahdanau", "luong", "dot", "cosine"]


# ------------------------------------------------------------------ reference
def naive_attention(kind, q, mem, L, W1=None, W2=None, v=None, W=None, g=1.0):
    """One query (Q,) against one sequence's valid states mem[:L] (L, A),
    straight from the equations; returns (weights (L,), context (A,))."""
    e = np.zeros(L)
    for s in range(L):
        h = mem[s]
        if kind == "bahdanau":
            e[s] = v @ np.tanh(W1 @ h + W2 @ q)
        elif kind == "luong":
            e[s] = q @ (W @ h)
        elif kind == "dot":
            e[s] = q @ h
        else:
            nq = np.sqrt(q @ q + COSINE_EPS)
            nh = np.sqrt(h @ h + COSINE_EPS)
            e[s] = g * (q @ h) / (nq * nh)
    a = np.exp(e - e.max())
    a /= a.sum()
    return a, a @ mem[:L]


def make_problem(kind, rng, B=4, S=6, A=5, U=3):
    Q = A
    mem = rng.standard_normal((B, S, A))
    src_len = np.array([6, 1, 3, 4], dtype=np.int64)[:B]
    for b in range(B):
        mem[b, src_len[b]:] = np.nan  # padded steps: never read
    q = rng.standard_normal((B, Q))
    W1 = rng.standard_normal((U, A))
    W2 = rng.standard_normal((U, Q))
    v = rng.standard_normal(U)
    W = rng.standard_normal((Q, A))
    g = 3.0
    if kind == "bahdanau":
        keys = mem @ W1.T
        att = (np.ascontiguousarray(W2.T), v, np.array([g]))
    else:
        keys = mem @ W.T if kind == "luong" else mem.copy()
        att = (np.zeros((Q, 1)), np.zeros(1), np.array([g]))
    P = dict(W1=W1, W2=W2, v=v, W=W, g=g)
    return q, np.ascontiguousarray(keys), mem, src_len, att, P


def run_forward(kind, q, keys, mem, src_len, att):
    B, S, A = mem.shape
    w = np.full((B, S), -1.0)
    ctx = np.full((B, A), -1.0)
    attention_forward(ATTENTION_KINDS[kind], q, keys, mem, src_len, att, w, ctx)
    return w, ctx


@pytest.mark.parametrize("kind", KINDS)
def test_forward_matches_naive_reference(kind):
    rng = np.random.default_rng(0)
    q, keys, mem, src_len, att, P = make_problem(kind, rng)
    w, ctx = run_forward(kind, q, keys, mem, src_len, att)
    for b in range(len(q)):
        L = src_len[b]
        a, c = naive_attention(kind, q[b], mem[b], L, **P)
        np.testing.assert_allclose(w[b, :L], a, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(ctx[b], c, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kind", KINDS)
def test_rows_sum_to_one_and_padding_gets_zero_weight(kind):
    rng = np.random.default_rng(1)
    q, keys, mem, src_len, att, _ = make_problem(kind, rng)
    w, ctx = run_forward(kind, q, keys, mem, src_len, att)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=1e-12)
    for b, L in enumerate(src_len):
        assert np.all(w[b, L:] == 0.0)
        assert np.all(w[b, :L] > 0.0)
    assert np.all(np.isfinite(ctx))


def test_large_scores_do_not_overflow():
    rng = np.random.default_rng(2)
    q, keys, mem, src_len, att, _ = make_problem("dot", rng)
    w, ctx = run_forward("dot", q * 1e3, keys, mem, src_len, att)
    assert np.all(np.isfinite(w)) and np.all(np.isfinite(ctx))
    np.testing.assert_allclose(w.sum(axis=1), 1.0)


def test_float32_matches_float64():
    rng = np.random.default_rng(3)
    q, keys, mem, src_len, att, _ = make_problem("bahdanau", rng)
    w64, c64 = run_forward("bahdanau", q, keys, mem, src_len, att)
    f = lambda a: np.ascontiguousarray(a, dtype=np.float32)  # noqa: E731
    w32 = np.zeros(w64.shape, np.float32)
    c32 = np.zeros(c64.shape, np.float32)
    attention_forward(BAHDANAU, f(q), f(keys), f(mem), src_len, tuple(f(a) for a in att), w32, c32)
    np.testing.assert_allclose(w32, w64, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(c32, c64, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_backward_central_differences(kind):
    """d(sum R * ctx) with respect to the query, keys, memory, v and sharpness."""
    rng = np.random.default_rng(4)
    q, keys, mem, src_len, att, _ = make_problem(kind, rng)
    for b, L in enumerate(src_len):  # finite padding for the perturbations below
        mem[b, L:] = 0.0
        keys[b, L:] = 0.0
    R = rng.standard_normal((mem.shape[0], mem.shape[2]))
    code = ATTENTION_KINDS[kind]

    def loss():
        _, ctx = run_forward(kind, q, keys, mem, src_len, att)
        return float((R * ctx).sum())

    w, _ = run_forward(kind, q, keys, mem, src_len, att)
    U = att[1].shape[0]
    grads = (np.zeros_like(q), np.zeros_like(keys), np.zeros_like(mem),
             np.zeros((len(q), U)), np.zeros(U), np.zeros(1))
    attention_backward(code, R, q, keys, mem, src_len, att, w, grads)
    targets = [(q, grads[0]), (keys, grads[1]), (mem, grads[2])]
    if kind == "bahdanau":
        targets.append((att[1], grads[4]))
    if kind == "cosine":
        targets.append((att[2], grads[5]))
    eps = 1e-6
    for arr, g in targets:
        num = np.zeros_like(arr)
        it = np.nditer(arr, flags=["multi_index"])
        for _ in it:
            i = it.multi_index
            num[i] = central_difference(loss, arr, i, eps)
        np.testing.assert_allclose(g, num, rtol=1e-6, atol=1e-8)
    # padded steps get exactly zero gradient
    for b, L in enumerate(src_len):
        assert np.all(grads[1][b, L:] == 0.0) and np.all(grads[2][b, L:] == 0.0)
    if kind == "bahdanau":
        # d_qp holds the projected query's gradient: d_query = d_qp @ W2
        np.testing.assert_allclose(grads[3] @ att[0].T, grads[0], rtol=1e-12)
    assert code != COSINE or grads[5][0] != 0.0


@pytest.mark.parametrize("kind", KINDS)
def test_float32_backward_matches_float64(kind):
    """The float32 kernels (the package's rational tanh for Bahdanau, float32
    accumulators) give the float64 gradients to float32 rounding, padded steps
    exactly zero; U = 40 and A = 36 run the vectorised loops' main bodies and
    their remainders."""
    rng = np.random.default_rng(5)
    q, keys, mem, src_len, att, _ = make_problem(kind, rng, A=36, U=40)
    for b, L in enumerate(src_len):
        mem[b, L:] = 0.0
        keys[b, L:] = 0.0
    R = rng.standard_normal((mem.shape[0], mem.shape[2]))
    code = ATTENTION_KINDS[kind]
    U = att[1].shape[0]

    def grads_of(dt):
        f = lambda a: np.ascontiguousarray(a, dtype=dt)  # noqa: E731
        a_ = tuple(f(a) for a in att)
        w = np.zeros(mem.shape[:2], dt)
        ctx = np.zeros((mem.shape[0], mem.shape[2]), dt)
        attention_forward(code, f(q), f(keys), f(mem), src_len, a_, w, ctx)
        g = (np.zeros(q.shape, dt), np.zeros(keys.shape, dt), np.zeros(mem.shape, dt),
             np.zeros((len(q), U), dt), np.zeros(U, dt), np.zeros(1, dt))
        attention_backward(code, f(R), f(q), f(keys), f(mem), src_len, a_, w, g)
        return g

    g64, g32 = grads_of(np.float64), grads_of(np.float32)
    for a, b in zip(g32, g64):
        scale = max(1e-3, float(np.abs(b).max()))
        assert np.abs(a - b).max() <= 1e-4 * scale
    for b, L in enumerate(src_len):
        assert np.all(g32[1][b, L:] == 0.0) and np.all(g32[2][b, L:] == 0.0)

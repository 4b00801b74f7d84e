"""CTC loss and gradient, decoding, and the sequence metrics.

The loss is checked against enumeration of every alignment and a plain
alpha recursion (tests/reference_ctc.py), against
``torch.nn.functional.ctc_loss`` (losses and gradients through
``log_softmax``; ragged inputs and targets, repeats, float32 and float64),
and its gradient by central differences in float64.
"""

import warnings

import numpy as np
import pytest
import torch

from fastseq.ctc import CTCWarning, ctc_beam_decode, ctc_greedy_decode, ctc_loss, required_length
from fastseq.metrics import character_error_rate, edit_distance

from reference_ctc import ctc_loss_alpha, ctc_loss_brute, labelling_probs


def _softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _batch(rng, T=14, B=5, V=6, dtype=np.float64):
    """Ragged batch with repeats, an empty target and NaN in every padding."""
    il = np.array([14, 11, 9, 6, 3])[:B]
    tl = np.array([4, 5, 0, 3, 1])[:B]
    L = tl.max()
    tg = rng.integers(1, V, size=(B, L))
    tg[0, :3] = [2, 2, 3]          # adjacent repeat
    tg[1, :5] = [1, 3, 3, 3, 4]    # two repeats: needs 7 <= 11 steps
    tg[3, :3] = [5, 5, 5]          # needs 5 <= 6
    x = rng.normal(scale=2.0, size=(T, B, V)).astype(dtype)
    for b in range(B):
        x[il[b]:, b] = np.nan      # never read
        tg[b, tl[b]:] = 999        # never read (out of range if it were)
    return x, tg, il, tl


def _torch(x, tg, il, tl, reduction):
    xt = torch.tensor(np.nan_to_num(x), requires_grad=True)
    tgt = torch.tensor(np.where(tg == 999, 1, tg))
    loss = torch.nn.functional.ctc_loss(torch.log_softmax(xt, -1), tgt, torch.tensor(il),
                                        torch.tensor(tl), blank=0, reduction=reduction)
    loss.sum().backward()
    return loss.detach().numpy().astype(np.float64), xt.grad.numpy()


# ------------------------------------------------------------ references
@pytest.mark.parametrize("labels", [(), (1,), (2, 2), (1, 2), (2, 1, 2), (1, 1, 1)])
def test_loss_matches_enumeration_and_alpha_recursion(labels):
    rng = np.random.default_rng(len(labels))
    T, V = 5, 3
    z = rng.normal(size=(T, V))
    p = _softmax(z)
    ref = ctc_loss_brute(p, labels)
    assert np.isclose(ctc_loss_alpha(p, labels), ref, rtol=1e-12)
    L = len(labels)
    tg = np.array([list(labels) or [1]])
    got = ctc_loss(z[:, None, :], tg, [T], [L], reduction="none", return_grad=False)
    assert np.isclose(got[0], ref, rtol=1e-10)


def test_required_length_counts_adjacent_repeats():
    assert required_length([]) == 0
    assert required_length([1, 2, 3]) == 3
    assert required_length([1, 1, 2, 2, 2]) == 8
    p = _softmax(np.zeros((4, 3)))
    assert np.isinf(ctc_loss_alpha(p, (1, 1, 1)))       # needs 5 > 4
    assert np.isfinite(ctc_loss_alpha(p, (1, 2, 1, 2)))  # needs 4


# ----------------------------------------------------------------- torch
@pytest.mark.parametrize("dtype,rtol,atol", [(np.float64, 1e-9, 1e-12), (np.float32, 2e-4, 2e-5)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_loss_and_grad_match_torch(dtype, rtol, atol, reduction):
    rng = np.random.default_rng(1)
    x, tg, il, tl = _batch(rng, dtype=dtype)
    loss, grad = ctc_loss(x, tg, il, tl, reduction=reduction)
    ref_loss, ref_grad = _torch(x.astype(np.float64), tg, il, tl, reduction)
    assert grad.dtype == dtype and grad.shape == x.shape
    np.testing.assert_allclose(loss, ref_loss, rtol=rtol)
    np.testing.assert_allclose(grad, ref_grad, rtol=rtol, atol=atol)
    for b in range(x.shape[1]):   # padding: exactly zero gradient
        assert np.all(grad[il[b]:, b] == 0)


def test_concatenated_targets_and_batch_first_agree_with_padded():
    rng = np.random.default_rng(2)
    x, tg, il, tl = _batch(rng)
    loss, grad = ctc_loss(x, tg, il, tl, reduction="none")
    flat = np.concatenate([tg[b, :tl[b]] for b in range(len(tl))])
    loss2, grad2 = ctc_loss(x, flat, il, tl, reduction="none")
    loss3, grad3 = ctc_loss(x.transpose(1, 0, 2), tg, il, tl, reduction="none", batch_first=True)
    np.testing.assert_array_equal(loss, loss2)
    np.testing.assert_array_equal(grad, grad2)
    np.testing.assert_array_equal(loss, loss3)
    np.testing.assert_array_equal(grad, grad3.transpose(1, 0, 2))


def test_padded_batch_equals_per_sequence_loop():
    rng = np.random.default_rng(3)
    x, tg, il, tl = _batch(rng)
    loss, grad = ctc_loss(x, tg, il, tl, reduction="none")
    for b in range(len(il)):
        lb, gb = ctc_loss(x[:il[b], b:b + 1], tg[b:b + 1, :max(tl[b], 1)], il[b:b + 1],
                          tl[b:b + 1], reduction="none")
        assert np.isclose(lb[0], loss[b], rtol=1e-13)
        np.testing.assert_allclose(gb[:, 0], grad[:il[b], b], rtol=1e-12, atol=1e-15)


def test_empty_target_is_minus_sum_log_blank():
    rng = np.random.default_rng(4)
    z = rng.normal(size=(7, 1, 4))
    loss = ctc_loss(z, np.zeros((1, 0), dtype=int), [7], [0], reduction="sum", return_grad=False)
    lp = np.log(_softmax(z[:, 0]))
    assert np.isclose(loss, -lp[:, 0].sum(), rtol=1e-12)


# ------------------------------------------------------- central differences
@pytest.mark.parametrize("log_probs", [False, True])
def test_gradient_by_central_differences(log_probs):
    rng = np.random.default_rng(5)
    il = np.array([8, 6, 5])
    tl = np.array([3, 2, 0])
    tg = np.array([[1, 1, 2], [3, 2, 999], [999, 999, 999]])
    x = rng.normal(size=(8, 3, 4))
    if log_probs:  # unnormalised scores are fine: the loss is a function of them
        x = np.log(_softmax(x)) + 0.1 * rng.normal(size=x.shape)
    for b in range(3):
        x[il[b]:, b] = np.nan
    f = lambda v: ctc_loss(v, tg, il, tl, reduction="mean", log_probs=log_probs,  # noqa: E731
                           return_grad=False)
    _, grad = ctc_loss(x, tg, il, tl, reduction="mean", log_probs=log_probs)
    eps = 1e-6
    num = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        if idx[0] >= il[idx[1]]:
            continue
        xp, xm = x.copy(), x.copy()
        xp[idx] += eps
        xm[idx] -= eps
        num[idx] = (f(xp) - f(xm)) / (2 * eps)
    np.testing.assert_allclose(grad, num, rtol=1e-6, atol=1e-8)


def test_log_probs_gradient_through_log_softmax_equals_logits_gradient():
    rng = np.random.default_rng(6)
    x, tg, il, tl = _batch(rng)
    z = np.nan_to_num(x)
    _, g_logits = ctc_loss(z, tg, il, tl)
    lp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    _, g_lp = ctc_loss(lp, tg, il, tl, log_probs=True)
    # log_softmax backward: g - softmax * sum(g)
    back = g_lp - np.exp(lp) * g_lp.sum(-1, keepdims=True)
    valid = np.arange(z.shape[0])[:, None] < il[None, :]
    np.testing.assert_allclose(back[valid], g_logits[valid], rtol=1e-9, atol=1e-12)


# ------------------------------------------- scaled and log-space recursions
def _log_space(x, tg, il, tl, from_logits):
    """Losses and gradients (scale 1) of the kernel's log-space recursion
    alone (the fallback of the scaled one), sample by sample."""
    from fastseq.kernels.ctc import _log_probs, _sample_log

    T, B, V = x.shape
    S_max = 2 * tg.shape[1] + 1
    lp, alpha, beta = np.empty((T, V)), np.empty((T, S_max)), np.empty((T, S_max))
    row, occ = np.empty(S_max), np.empty(V)
    losses, grad = np.empty(B), np.empty(x.shape, dtype=x.dtype)
    for b in range(B):
        ext, skip = _extended(tg, tl, b)
        _log_probs(x, b, il[b], from_logits, lp)
        losses[b] = _sample_log(b, il[b], ext, skip, 2 * tl[b] + 1, from_logits, lp, alpha, beta,
                                row, occ, 1.0, grad)
    return losses, grad


def _extended(tg, tl, b):
    """The kernel's extended label sequence of sample b and its skip flags."""
    S_max = 2 * tg.shape[1] + 1
    ext = np.zeros(S_max, dtype=np.int64)
    ext[1:2 * tl[b]:2] = tg[b, :tl[b]]
    skip = np.array([s >= 2 and ext[s] != 0 and ext[s] != ext[s - 2] for s in range(S_max)])
    return ext, skip


def _scaled_ok(x, tg, il, tl, b, from_logits):
    """Whether the scaled recursion alone accepts sample b."""
    from fastseq.kernels.ctc import _sample_scaled

    T, B, V = x.shape
    S_max = 2 * tg.shape[1] + 1
    ext, skip = _extended(tg, tl, b)
    return _sample_scaled(x, b, il[b], ext, skip, 2 * tl[b] + 1, from_logits, np.empty((T, V)),
                          np.empty((T, S_max)), np.empty((T, S_max)), np.empty(V), 1.0,
                          np.empty(x.shape, dtype=x.dtype))[1]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("log_probs", [False, True])
def test_scaled_recursion_equals_log_space(dtype, log_probs):
    """The scaled-probability recursion (the kernel's first try) gives the
    log-space results to float64 rounding: ragged inputs, repeats, an empty
    target, and samples with just the steps their labels need (states that
    cannot reach the end pruned from the first step on)."""
    rng = np.random.default_rng(11)
    x, tg, il, tl = _batch(rng, dtype=dtype)
    il = il.copy()
    il[2], tl[2] = 3, 3                       # [x, y, z] with no repeat: exactly 3 steps
    tg[2, :3] = [1, 2, 3]
    il[4], tl[4] = 3, 2
    tg[4, :2] = [4, 4]                        # a repeat needs a blank between: 3 steps
    for b in range(len(il)):
        x[:il[b], b] = rng.normal(scale=3.0, size=(il[b], x.shape[2]))
        x[il[b]:, b] = np.nan
    if log_probs:
        x = np.where(np.isnan(x), x, x - np.log(np.exp(x).sum(-1, keepdims=True))).astype(dtype)
    loss, grad = ctc_loss(x, tg, il, tl, reduction="none", log_probs=log_probs)
    tg = np.where(tg == 999, 1, tg)
    assert all(_scaled_ok(x, tg, il, tl, b, not log_probs) for b in range(len(il)))
    ref_loss, ref_grad = _log_space(x, tg, il, tl, not log_probs)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-12)
    valid = np.arange(x.shape[0])[:, None] < il[None, :]
    atol = 1e-13 if dtype == np.float64 else 1e-6   # the gradient is stored in x's dtype
    np.testing.assert_allclose(grad[valid], ref_grad[valid], rtol=0, atol=atol)


@pytest.mark.parametrize("log_probs", [False, True])
def test_extreme_scores_fall_back_to_log_space(log_probs):
    """Probabilities float64 cannot hold to full precision (logits 900
    apart, log-probabilities of -900) send the sample to the log-space
    recursion: finite losses and gradients equal to torch's (float64), the
    other samples of the batch unaffected."""
    rng = np.random.default_rng(12)
    T, B, V = 9, 3, 4
    z = rng.normal(size=(T, B, V))
    z[:, 0, :] *= 300.0                       # sample 0: peaked far beyond exp's range
    z[2, 0, 0] = 900.0
    tg = np.array([[1, 2], [3, 3], [2, 1]])
    il, tl = np.array([9, 9, 7]), np.array([2, 2, 2])
    x = z - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - z.max(-1, keepdims=True) if log_probs else z
    assert x[:, 0].min() < -700 if log_probs else np.ptp(z[:, 0]) > 700
    assert [_scaled_ok(x, tg, il, tl, b, not log_probs) for b in range(B)] == [False, True, True]
    loss, grad = ctc_loss(x, tg, il, tl, reduction="none", log_probs=log_probs)
    assert np.all(np.isfinite(loss)) and np.all(np.isfinite(grad))
    ref_loss, ref_grad = _log_space(x, tg, il, tl, not log_probs)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-12)
    np.testing.assert_allclose(grad, ref_grad, rtol=0, atol=1e-12)
    if not log_probs:
        t_loss, t_grad = _torch(x, tg, il, tl, "none")
        np.testing.assert_allclose(loss, t_loss, rtol=1e-9)
        np.testing.assert_allclose(grad, t_grad, rtol=0, atol=1e-9)


# ------------------------------------------------------------- infeasible
def test_input_too_short_warns_and_is_skipped_with_zero_gradient():
    rng = np.random.default_rng(7)
    z = rng.normal(size=(4, 2, 3))
    tg = np.array([[1, 1, 1], [1, 2, 1]])   # first needs 5 steps > 4
    with pytest.warns(CTCWarning, match=r"\[0\]"):
        loss, grad = ctc_loss(z, tg, [4, 4], [3, 3], reduction="none")
    assert loss[0] == 0 and np.all(grad[:, 0] == 0) and np.all(np.isfinite(grad))
    ref = ctc_loss_brute(_softmax(z[:, 1]), (1, 2, 1))
    assert np.isclose(loss[1], ref, rtol=1e-10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss, grad = ctc_loss(z, tg, [4, 4], [3, 3], reduction="none", zero_infinity=False)
    assert loss[0] == np.inf and np.all(grad[:, 0] == 0)
    with pytest.warns(CTCWarning):
        m = ctc_loss(z, tg, [4, 4], [3, 3], return_grad=False)
    assert np.isclose(m, ref / 3 / 2)   # torch's zero_infinity: the zero still counts in the mean


# -------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs,err,match", [
    (dict(targets=[[0, 1]]), ValueError, "blank"),
    (dict(targets=[[1, 4]]), ValueError, r"1\.\.3"),
    (dict(targets=[[1.0, 2.0]]), TypeError, "integer labels"),
    (dict(target_lengths=[-1]), ValueError, ">= 0"),
    (dict(target_lengths=[3]), ValueError, "exceed"),
    (dict(input_lengths=[6]), ValueError, "1..T=5"),
    (dict(input_lengths=[0]), ValueError, "1..T=5"),
    (dict(input_lengths=[5, 5]), ValueError, "shape"),
    (dict(x=np.full((5, 1, 4), np.nan)), ValueError, "NaN"),
    (dict(x=np.zeros((5, 4))), ValueError, "3-D"),
    (dict(x=np.zeros((5, 1, 1))), ValueError, "2 classes"),
    (dict(reduction="avg"), ValueError, "reduction"),
    (dict(targets=[1, 2, 3]), ValueError, "sum\\(target_lengths\\)"),
])
def test_bad_input_is_refused_before_the_kernel(kwargs, err, match):
    args = dict(x=np.zeros((5, 1, 4)), targets=[[1, 2]], input_lengths=[5], target_lengths=[2])
    args.update(kwargs)
    red = args.pop("reduction", "mean")
    with pytest.raises(err, match=match):
        ctc_loss(args["x"], args["targets"], args["input_lengths"], args["target_lengths"],
                 reduction=red)


def test_log_probs_may_hold_minus_infinity():
    with np.errstate(divide="ignore"):
        lp = np.log(np.array([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]]))[:, None, :]
    loss, grad = ctc_loss(lp, [[1]], [2], [1], log_probs=True, reduction="sum")
    assert np.isclose(loss, -np.log(0.5)) and np.all(np.isfinite(grad))
    with pytest.raises(ValueError, match="NaN"):
        ctc_loss(np.full((2, 1, 3), np.inf), [[1]], [2], [1], log_probs=True)


# --------------------------------------------------------------- decoding
def test_greedy_collapses_repeats_and_drops_blanks():
    path = [0, 1, 1, 0, 1, 2, 2, 0, 0, 3]
    lp = np.log(np.full((len(path), 4), 0.1))
    lp[np.arange(len(path)), path] = np.log(0.7)
    labels, score = ctc_greedy_decode(lp)
    assert labels.tolist() == [1, 1, 2, 3]
    assert np.isclose(score, len(path) * np.log(0.7))


def test_greedy_and_beam_on_padded_batch_and_list():
    rng = np.random.default_rng(8)
    lp = np.log(_softmax(rng.normal(size=(6, 3, 4))))
    il = [6, 4, 2]
    lp[4:, 1] = np.nan
    lp[2:, 2] = np.nan
    for dec in (ctc_greedy_decode, lambda *a, **k: ctc_beam_decode(*a, beam_width=3, **k)):
        res = dec(lp, il)
        assert len(res) == 3
        lst = dec([lp[:il[b], b] for b in range(3)])
        for (a, s), (b_, s2) in zip(res, lst):
            assert a.tolist() == b_.tolist() and s == s2


@pytest.mark.parametrize("seed", range(6))
def test_wide_beam_finds_the_most_probable_labelling(seed):
    rng = np.random.default_rng(seed)
    T, V = 4, 3
    p = _softmax(rng.normal(scale=1.5, size=(T, V)))
    probs = labelling_probs(p)
    best = max(probs, key=probs.get)
    labels, lp = ctc_beam_decode(np.log(p), beam_width=1000)
    assert tuple(labels.tolist()) == best
    assert np.isclose(lp, np.log(probs[best]), rtol=1e-12)
    g_labels, g_lp = ctc_greedy_decode(np.log(p))      # the best path's probability
    assert g_lp <= np.log(probs[tuple(g_labels.tolist())]) + 1e-12
    assert g_lp <= lp + 1e-12


def test_beam_beats_greedy_where_alignments_add_up():
    # blank is the best class at both steps (greedy: ""), but "a" has 0.64 > 0.36
    lp = np.log(np.array([[0.6, 0.4], [0.6, 0.4]]))
    assert ctc_greedy_decode(lp)[0].tolist() == []
    assert ctc_beam_decode(lp, beam_width=1)[0].tolist() == []
    labels, score = ctc_beam_decode(lp, beam_width=2)
    assert labels.tolist() == [1] and np.isclose(score, np.log(0.64))


def test_beam_width_one_equals_greedy_on_peaked_outputs():
    rng = np.random.default_rng(9)
    for _ in range(20):
        path = rng.integers(0, 5, size=12)
        p = np.full((12, 5), 0.02)
        p[np.arange(12), path] = 0.92
        a, _ = ctc_greedy_decode(np.log(p))
        b, _ = ctc_beam_decode(np.log(p), beam_width=1)
        assert a.tolist() == b.tolist()


@pytest.mark.parametrize("bw", [0, -1, 1.5, True, "2"])
def test_beam_width_must_be_a_positive_integer(bw):
    with pytest.raises(ValueError, match="beam_width"):
        ctc_beam_decode(np.zeros((3, 2)), beam_width=bw)


def test_decoders_refuse_nan_and_bad_shapes():
    with pytest.raises(ValueError, match="NaN"):
        ctc_greedy_decode(np.full((3, 2), np.nan))
    with pytest.raises(ValueError, match="classes"):
        ctc_greedy_decode(np.zeros((3, 1)))
    with pytest.raises(ValueError, match="input_lengths"):
        ctc_greedy_decode(np.zeros((3, 2, 2)), [4, 1])


# ---------------------------------------------------------------- metrics
@pytest.mark.parametrize("a,b,d", [
    ("", "", 0), ("abc", "", 3), ("", "ab", 2), ("kitten", "sitting", 3),
    ("flaw", "lawn", 2), ("abc", "abc", 0), ([1, 2, 3], [1, 3], 1), (["ab", "c"], ["c"], 1),
    ("intention", "execution", 5),
])
def test_edit_distance_hand_cases(a, b, d):
    assert edit_distance(a, b) == d
    assert edit_distance(b, a) == d


def test_character_error_rate_hand_cases():
    # distances 1 (kitten/sitten) + 0 + 2 (ab -> "") over 6 + 3 + 2 reference chars
    assert character_error_rate(["kitten", "abc", "ab"], ["sitten", "abc", ""]) == 3 / 11
    assert character_error_rate([[1, 2]], [[1, 2, 3, 4]]) == 1.0
    with pytest.raises(ValueError, match="different lengths"):
        character_error_rate(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="empty"):
        character_error_rate([""], ["a"])
    with pytest.raises(TypeError, match="lists"):
        character_error_rate("abc", "abd")


def test_batch_split_over_threads_gives_identical_results(monkeypatch):
    from fastseq import _threads
    rng = np.random.default_rng(10)
    T, B, V, L = 800, 8, 5, 40     # work above the reference plan's split threshold
    x = rng.normal(size=(T, B, V)).astype(np.float32)
    tg = rng.integers(1, V, size=(B, L))
    il = np.full(B, T)
    il[3] = 500
    tl = np.full(B, L)
    with _threads.limit(1):
        ref = ctc_loss(x, tg, il, tl, reduction="none")
    calls = []
    on_pool = _threads._on_pool
    monkeypatch.setattr(_threads, "_on_pool", lambda bounds, fn: (calls.append(bounds),
                                                                    on_pool(bounds, fn)))
    with _threads.limit(2):
        got = ctc_loss(x, tg, il, tl, reduction="none")
    assert calls and len(calls[0]) == 2        # the batch was split in two slices
    np.testing.assert_array_equal(got[0], ref[0])
    np.testing.assert_array_equal(got[1], ref[1])

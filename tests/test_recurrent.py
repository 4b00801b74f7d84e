"""The Recurrent layer against the naive reference, padding, states, checks."""

import pickle
import subprocess
import sys

import numpy as np
import pytest

from fastseq import kernels
from fastseq.nn import Recurrent
from reference import recurrent_sequence, sigmoid
from conftest import layer_arrays, ragged_batch

CASES = [("rnn", "tanh"), ("rnn", "relu"), ("lstm", "tanh"), ("gru", "tanh")]


def _states(rng, layer, B):
    L = layer.num_layers * layer.num_directions
    h0 = rng.standard_normal((L, B, layer.hidden_size)) * 0.5
    c0 = rng.standard_normal((L, B, layer.hidden_size)) * 0.5
    return h0, c0


@pytest.mark.parametrize("cell,nl", CASES)
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_padded_batch_equals_per_sequence_reference(rng, cell, nl, num_layers, bidirectional, bias):
    B, T, F, H = 5, 7, 3, 4
    layer = Recurrent(cell, F, H, num_layers=num_layers, bidirectional=bidirectional,
                      nonlinearity=nl, bias=bias, dtype="float64", random_state=0)
    X, lengths = ragged_batch(rng, B, T, F, lengths=[7, 2, 5, 1, 7])
    h0, c0 = _states(rng, layer, B)
    res = layer.forward(X, lengths, (h0, c0) if cell == "lstm" else h0)
    out, h_n = (res[0], res[1][0]) if cell == "lstm" else res
    assert out.shape == (B, T, layer.num_directions * H)
    assert np.all(np.isfinite(out))
    for b in range(B):
        n = lengths[b]
        ref_out, ref_h, ref_c = recurrent_sequence(layer.params, cell, X[b, :n], num_layers, bidirectional,
                                                   h0[:, b], c0[:, b], nl)
        np.testing.assert_allclose(out[b, :n], ref_out, rtol=1e-12, atol=1e-12)
        assert np.all(out[b, n:] == 0.0), "padded steps of out must be zero"
        np.testing.assert_allclose(h_n[:, b], ref_h, rtol=1e-12, atol=1e-12)
        if cell == "lstm":
            np.testing.assert_allclose(res[1][1][:, b], ref_c, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cell,nl", CASES)
def test_float32_matches_float64_reference(rng, cell, nl):
    B, T, F, H = 4, 9, 5, 6
    layer = Recurrent(cell, F, H, num_layers=2, bidirectional=True, nonlinearity=nl, random_state=1)
    assert layer.flat.dtype == np.float32
    X, lengths = ragged_batch(rng, B, T, F)
    out, _ = layer.forward(X, lengths)
    assert out.dtype == np.float32
    p64 = {k: v.astype(np.float64) for k, v in layer.params.items()}
    for b in range(B):
        ref, _, _ = recurrent_sequence(p64, cell, X[b, :lengths[b]].astype(np.float32), 2, True, nonlinearity=nl)
        np.testing.assert_allclose(out[b, :lengths[b]], ref, rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("cell,nl", CASES)
def test_batch_of_one_step_one_unit(cell, nl):
    layer = Recurrent(cell, 1, 1, nonlinearity=nl, dtype="float64", random_state=3)
    X = np.array([[[0.7]]])
    res = layer.forward(X)
    out = res[0]
    ref, _, _ = recurrent_sequence(layer.params, cell, X[0], nonlinearity=nl)
    np.testing.assert_allclose(out[0], ref, rtol=1e-14)
    dX, grads = layer.backward(np.ones_like(out))
    assert dX.shape == (1, 1, 1) and set(grads) == set(layer.params)


def test_lstm_gate_order_is_i_f_g_o():
    assert kernels.LSTM_GATES == ("input", "forget", "cell", "output")
    layer = Recurrent("lstm", 1, 1, dtype="float64")
    layer.flat[:] = 0.0
    # pre-activations i=2, f=-1, g=0.5, o=1 come from bias_ih only
    layer.params["bias_ih_l0"][:] = [2.0, -1.0, 0.5, 1.0]
    c0 = np.array([[[0.3]]])
    out, (h, c) = layer.forward(np.zeros((1, 1, 1)), h0=(np.zeros((1, 1, 1)), c0))
    c_expect = sigmoid(-1.0) * 0.3 + sigmoid(2.0) * np.tanh(0.5)
    assert c[0, 0, 0] == pytest.approx(c_expect, rel=1e-14)
    assert h[0, 0, 0] == pytest.approx(sigmoid(1.0) * np.tanh(c_expect), rel=1e-14)


def test_gru_gate_order_is_r_z_n():
    assert kernels.GRU_GATES == ("reset", "update", "new")
    layer = Recurrent("gru", 1, 1, dtype="float64")
    layer.flat[:] = 0.0
    layer.params["weight_hh_l0"][:, 0] = [0.0, 0.0, 0.8]   # W_hn
    layer.params["bias_ih_l0"][:] = [-0.5, 1.5, 0.25]      # r, z, n pre-activations
    layer.params["bias_hh_l0"][:] = [0.0, 0.0, 0.1]        # b_hn inside r * (...)
    h0 = np.array([[[0.6]]])
    _, h = layer.forward(np.zeros((1, 1, 1)), h0=h0)
    r, z = sigmoid(-0.5), sigmoid(1.5)
    n = np.tanh(0.25 + r * (0.8 * 0.6 + 0.1))
    assert h[0, 0, 0] == pytest.approx((1 - z) * n + z * 0.6, rel=1e-14)


def test_padding_costs_nothing_and_is_ignored_in_backward(rng):
    layer = Recurrent("lstm", 2, 3, dtype="float64", random_state=0)
    X, lengths = ragged_batch(rng, 3, 6, 2, lengths=[6, 2, 3])
    out, _ = layer.forward(X, lengths)
    d_out = rng.standard_normal(out.shape)
    d_pad = d_out.copy()
    for b, n in enumerate(lengths):
        d_pad[b, n:] = 1e30   # anything at padded steps must be ignored
    dX1, g1 = layer.backward(d_out)
    layer.forward(X, lengths)
    dX2, g2 = layer.backward(d_pad)
    np.testing.assert_array_equal(dX1, dX2)
    for k in g1:
        np.testing.assert_array_equal(g1[k], g2[k])
    for b, n in enumerate(lengths):
        assert np.all(dX1[b, n:] == 0.0)
    assert layer._cache["pk"].N == lengths.sum()


def test_reverse_direction_starts_at_each_sequences_last_step(rng):
    layer = Recurrent("gru", 2, 3, bidirectional=True, dtype="float64", random_state=0)
    X, _ = ragged_batch(rng, 1, 5, 2, lengths=[5])
    short, _ = layer.forward(X[:, :3], [3])
    padded, _ = layer.forward(X, [3])
    np.testing.assert_allclose(padded[:, :3], short, rtol=0, atol=0)


def _read_only(a):
    a = a.copy()
    a.setflags(write=False)
    return a


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru", "gru_rb"])
def test_each_kernel_has_at_most_one_signature_per_dtype(rng, cell):
    kw = {"reset_after": False} if cell == "gru_rb" else {}
    for dtype in ("float32", "float64"):
        for rd in (0.0, 0.3):
            layer = Recurrent("gru" if cell == "gru_rb" else cell, 2, 3, recurrent_dropout=rd, dtype=dtype, random_state=0, **kw)
            X, lengths = ragged_batch(rng, 3, 4, 2)
            layer.forward(X, lengths, need_grad=False)
            out = layer.forward(X, lengths)[0]
            layer.backward(np.ones_like(out))
            layer.eval()
            X = np.nan_to_num(X)                          # (NaN padding): all steps valid
            layer.forward(X, need_grad=False)             # the one-call inference path
            six = np.repeat(X, 2, axis=0)                 # an LSTM's fused path (from 4 sequences)
            layer.forward(six, need_grad=False)
            six = six.astype(dtype)
            six.setflags(write=False)
            layer.forward(six, need_grad=False)
            layer.forward(X, need_grad=False, h0=np.zeros((1, 3, 3)) if cell != "lstm" else None)
            # read-only input and state (a memmap, a frozen array): no new signature
            one = np.ascontiguousarray(X[:1].astype(dtype))
            one.setflags(write=False)
            frozen = np.zeros((1, 1, 3), dtype=dtype)
            frozen.setflags(write=False)
            layer.forward(one, need_grad=False, h0=(frozen, frozen) if cell == "lstm" else frozen)
            # weights loaded read-only (joblib's mmap_mode, as scikit-learn's readonly checks do)
            mapped = pickle.loads(pickle.dumps(layer))
            mapped.__setstate__({**mapped.__dict__, "flat": _read_only(mapped.flat)})
            mapped.forward(X, need_grad=False)
    import importlib
    module = importlib.import_module("fastseq.kernels." + {"gru_rb": "gru_reset_before"}.get(cell, cell))
    prefix = "gru_rb" if cell == "gru_rb" else cell
    names = [f"{prefix}_forward_slice", f"{prefix}_backward_slice"]
    for name in names:
        sigs = getattr(module, name).signatures
        assert 1 <= len(sigs) <= 2, (name, sigs)       # used by the layer, one per dtype
    if cell != "gru_rb":
        sigs = getattr(kernels, f"{cell}_infer").signatures
        assert len(sigs) <= 2, sigs                       # dispatched only after a split projection
        from fastseq.kernels import infer
        sigs = getattr(infer, f"{cell}_infer_x").signatures
        assert 1 <= len(sigs) <= 2, sigs
    if cell == "lstm":
        from fastseq.kernels.infer import fused_weights, lstm_fused_slice
        assert 1 <= len(lstm_fused_slice.signatures) <= 2, lstm_fused_slice.signatures
        assert 1 <= len(fused_weights.signatures) <= 2, fused_weights.signatures


@pytest.mark.parametrize("cell,nl", [("rnn", "tanh"), ("rnn", "relu"), ("lstm", "tanh"), ("gru", "tanh")])
@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (1, True), (2, True)])
@pytest.mark.parametrize("dtype,tol", [("float32", 1e-5), ("float64", 1e-13)])
def test_one_call_inference_equals_the_packed_path(rng, monkeypatch, blas_rows, cell, nl, num_layers,
                                                   bidirectional, dtype, tol):
    kw = {"nonlinearity": nl} if cell == "rnn" else {}
    D = 2 if bidirectional else 1
    # B = 3: the one-call kernels; B = 9: an LSTM's fused input projection,
    # last with its step products through BLAS (which reads all of
    # [W_ih | W_hh], where the packed product reads the rows past its strips)
    for bias, B, rows in ((True, 3, 0), (False, 3, 0), (True, 9, 0), (False, 9, 0), (True, 9, 4)):
        if rows:
            blas_rows(rows)
        layer = Recurrent(cell, 4, 5, num_layers=num_layers, bidirectional=bidirectional, bias=bias,
                          dtype=dtype, random_state=2, **kw).eval()
        if cell == "lstm":
            assert layer._inference_plan(B, 6) == ("fused" if B == 9 else "one")
        X = rng.standard_normal((B, 6, 4))
        h = rng.standard_normal((num_layers * D, B, 5))
        for h0 in (None, (h, h[::-1].copy()) if cell == "lstm" else h):
            fast = layer.forward(X, h0=h0, need_grad=False)
            packed = layer.forward(X, h0=h0)              # need_grad: the packed path
            with monkeypatch.context() as m:
                m.setattr(Recurrent, "_inference_route", lambda *a: (None, 0, False, ()))
                packed_inf = layer.forward(X, h0=h0, need_grad=False)
            for f, p, q in zip(layer_arrays(fast), layer_arrays(packed), layer_arrays(packed_inf)):
                assert f.dtype == np.dtype(dtype) and f.shape == p.shape and f.flags.c_contiguous
                np.testing.assert_allclose(f, p, rtol=tol, atol=tol)
                np.testing.assert_allclose(f, q, rtol=tol, atol=tol)
            with pytest.raises(RuntimeError, match="backward"):
                layer.backward(np.ones_like(fast[0]))    # nothing kept for backward


def test_one_call_inference_is_taken_only_where_it_applies(monkeypatch):
    from fastseq import _threads
    calls = []
    real = Recurrent._forward_infer
    monkeypatch.setattr(Recurrent, "_forward_infer", lambda self, *a: calls.append("one") or real(self, *a))
    real_fused = Recurrent._forward_fused
    monkeypatch.setattr(Recurrent, "_forward_fused",
                        lambda self, *a: calls.append(("fused", len(a[3]))) or real_fused(self, *a))
    small = Recurrent("lstm", 3, 4, random_state=0)
    X = np.zeros((2, 5, 3))
    small.forward(X)                                      # need_grad: packed
    small.forward(X, [5, 4], need_grad=False)             # ragged: packed
    assert calls == []
    small.forward(X, [5, 5], need_grad=False)             # full lengths: one call
    assert calls == ["one"]
    rd = Recurrent("gru", 3, 4, recurrent_dropout=0.5, random_state=0)
    rd.forward(X, need_grad=False)                        # training with dropout: packed
    rb = Recurrent("gru", 3, 4, reset_after=False, random_state=0).eval()
    rb.forward(X, need_grad=False)                        # reset-before GRU: packed
    assert calls == ["one"]
    big = Recurrent("gru", 64, 192, random_state=0).eval()   # 14M multiply-adds a step
    Xb = np.zeros((128, 30, 64), np.float32)
    with _threads.limit(2):
        big.forward(Xb, need_grad=False)                  # split across threads: packed
    assert calls == ["one"]
    with _threads.limit(1):
        big.forward(Xb, need_grad=False)                  # one thread: one call
    assert calls == ["one", "one"]
    # [W_ih | W_hh] of 384 KB, over half the reference plan's L2 (conftest):
    # fused from two row blocks (8 sequences) a slice
    lstm = Recurrent("lstm", 64, 128, random_state=0).eval()
    with _threads.limit(2):
        lstm.forward(Xb, need_grad=False)                 # the planner's split: two slices
        lstm.forward(Xb[:8], need_grad=False)             # split in two slices of 4: one call
        lstm.forward(Xb[:, :1], need_grad=False)          # one step: one call
    with _threads.limit(1):
        lstm.forward(Xb, need_grad=False)
        lstm.forward(Xb[:8], need_grad=False)             # one slice of 8
        lstm.forward(Xb[:7], need_grad=False)             # 7 rows: one call
    small = Recurrent("lstm", 8, 16, random_state=0).eval()   # 6 KB of weights: from one row block
    small.forward(Xb[:4, :, :8], need_grad=False)
    small.forward(Xb[:3, :, :8], need_grad=False)
    assert calls[2:] == [("fused", 2), "one", "one", ("fused", 1), ("fused", 1), "one", ("fused", 1), "one"]


def test_short_lstm_steps_split_the_batch_rather_than_the_units(monkeypatch):
    """Where the plan splits an LSTM's hidden units, a batch of whole row
    blocks a thread whose step shares are short
    (``Plan.batch_over_units``) takes the fused kernel's batch split
    instead, where the plan would split that batch, with the values of
    the unit split."""
    from fastseq import _plan, _threads
    monkeypatch.setattr(_plan.current(), "pipeline_min_work", 0)      # a unit split for any work
    lstm = Recurrent("lstm", 16, 64, random_state=0).eval()
    X = np.random.default_rng(1).standard_normal((8, 12, 16)).astype(np.float32)
    with _threads.limit(2):
        assert lstm._inference_plan(8, 12) == "units"
        units = layer_arrays(lstm.forward(X, need_grad=False))
        step = 8 * 4 * 64 * (64 + 16)                                  # the step's multiply-adds
        monkeypatch.setattr(_plan.current(), "units_min_step_work", step // 2)
        assert lstm._inference_plan(8, 12) == "units"                  # a share of step / 2: not under it
        monkeypatch.setattr(_plan.current(), "units_min_step_work", step // 2 + 1)
        assert lstm._inference_plan(8, 12) == "units"                  # no batch split of this work
        monkeypatch.setattr(_plan.current(), "split_min_work", 0)
        assert lstm._inference_route(8, 12)[:2] == ("fused", 2)
        assert lstm._inference_plan(7, 12) == "units"                  # under a row block a thread
        batch = layer_arrays(lstm.forward(X, need_grad=False))
    for a, b in zip(batch, units):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("cell,nl", [("rnn", "tanh"), ("rnn", "relu"), ("lstm", "tanh"), ("gru", "tanh")])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("bias", [True, False])
def test_small_call_gives_the_one_call_bits_and_is_taken_only_where_it_applies(rng, monkeypatch, cell, nl, dtype,
                                                                               bias):
    """A batch-1 inference call of a one-layer, one-way layer, once its
    route (one compiled call, no BLAS) is kept, runs through
    ``Recurrent._small_call`` (not ``_forward_infer``) and gives the bits
    of the general path; it leaves to the general path a first call (of
    another batch too: its route is not kept yet), states, lengths,
    training, a read-only or another dtype's input, and checks its input
    as that path does."""
    kw = {"nonlinearity": nl} if cell == "rnn" else {}
    layer = Recurrent(cell, 4, 5, bias=bias, dtype=dtype, random_state=2, **kw).eval()
    X = rng.standard_normal((1, 7, 4)).astype(dtype)
    general = []
    real = Recurrent._forward_infer
    monkeypatch.setattr(Recurrent, "_forward_infer", lambda self, *a: general.append(1) or real(self, *a))
    first = layer.forward(X, need_grad=False)              # no route kept yet: the general path
    assert len(general) == 1 and layer._inference_plan(1, 7) == "one"
    small = layer.forward(X, need_grad=False)
    h_only = layer.forward(X, need_grad=False, need_out=False)
    assert len(general) == 1 and h_only[0] is None
    for a, b in zip(layer_arrays(small), layer_arrays(first)):
        assert a.dtype == np.dtype(dtype) and a.shape == b.shape and a.flags.c_contiguous
        np.testing.assert_array_equal(a, b)
    for a, b in zip(layer_arrays((small[0], h_only[1]))[1:], layer_arrays(small)[1:]):   # the states
        np.testing.assert_array_equal(a, b)
    layer.forward(X, h0=np.zeros((1, 1, 5), dtype) if cell != "lstm" else None, need_grad=False)
    layer.forward(X, lengths=[7], need_grad=False)
    layer.forward(np.repeat(X, 2, axis=0), need_grad=False)
    ro = X.copy()
    ro.flags.writeable = False
    layer.forward(ro, need_grad=False)
    layer.forward(X.astype("float32" if dtype == "float64" else "float64"), need_grad=False)
    expected = 5 if cell != "lstm" else 4                  # (an LSTM's h0 of None: the small call)
    assert len(general) == 1 + expected
    bad = X.copy()
    bad[0, 3, 1] = np.nan
    with pytest.raises(ValueError, match="X contains NaN"):
        layer.forward(bad, need_grad=False)
    assert len(general) == 1 + expected                    # refused before any kernel
    layer.train()
    layer.forward(X, need_grad=False)                      # another route key (training)
    assert len(general) == 2 + expected


@pytest.mark.parametrize("cell,nl", [("rnn", "tanh"), ("rnn", "relu"), ("lstm", "tanh"), ("gru", "tanh")])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("ahead", [False, True])
def test_small_call_of_a_batch_gives_the_general_paths_bits(rng, monkeypatch, cell, nl, dtype, ahead):
    """A batch above 1 through a one-layer, one-way layer whose kept route
    is one compiled call (its rows transposed inside it, ``batch_major``)
    or that call with the projection ahead on a pool thread (``ahead``:
    rows transposed by numpy) runs through ``Recurrent._small_call``, not
    ``_forward_infer``, and gives that path's bits (its rows transposed
    before and after the step-major kernels), as does each sequence."""
    from fastseq import _threads
    from fastseq.kernels._sync import AVAILABLE
    from fastseq.network import recurrent
    if ahead and not AVAILABLE:
        pytest.skip("no pool threads to compute a projection ahead on this platform")
    kw = {"nonlinearity": nl} if cell == "rnn" else {}
    layer = Recurrent(cell, 4, 5, dtype=dtype, random_state=2, **kw).eval()
    X = rng.standard_normal((3, 7, 4)).astype(dtype)    # (B != T != F: a wrong transpose mixes them up)
    general = []
    real = Recurrent._forward_infer
    monkeypatch.setattr(Recurrent, "_forward_infer", lambda self, *a: general.append(1) or real(self, *a))
    if ahead:
        monkeypatch.setattr(recurrent, "pipelines", lambda work, step_work=None: _threads.get_num_threads() > 1)
    with _threads.limit(2):
        first = layer_arrays(layer.forward(X, need_grad=False))   # no route kept yet: the general path
        route = layer._inference_route(3, 7)
        assert route[0] == "one" and route[3] == (("ahead",) if ahead else ("one",)) and not route[2]
        small = layer_arrays(layer.forward(X, need_grad=False))
        assert len(general) == 1
        alone = [layer_arrays(layer.forward(X[b:b + 1], need_grad=False)) for b in range(3)]
    for a, b in zip(small, first):
        assert a.dtype == np.dtype(dtype) and a.shape == b.shape and a.flags.c_contiguous
        np.testing.assert_array_equal(a, b)
    tol = 1e-6 if dtype == "float32" else 1e-14
    for b in range(3):
        np.testing.assert_allclose(alone[b][0][0], small[0][b], rtol=tol, atol=tol)
        for a, e in zip(alone[b][1:], small[1:]):         # the states, (1, B, H)
            np.testing.assert_allclose(a[:, 0], e[:, b], rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("bias", [True, False])
def test_small_fused_call_gives_the_general_paths_bits_and_reads_the_weights_each_call(rng, monkeypatch, dtype,
                                                                                      bias):
    """An LSTM inference call of a batch above 1 through a one-layer,
    one-way layer whose kept route is the fused kernel's slices (one, or
    two threads' worth) runs through ``Recurrent._small_call`` (not
    ``_forward_fused``) and gives the general path's bits; weights changed
    in place between calls are read (nothing packed is kept from call to
    call), and a layer of another input width reuses no scratch of the
    wrong shape."""
    from fastseq import _plan, _threads
    layer = Recurrent("lstm", 6, 16, bias=bias, dtype=dtype, random_state=2).eval()
    other = Recurrent("lstm", 3, 16, bias=bias, dtype=dtype, random_state=3).eval()
    X = rng.standard_normal((8, 9, 6)).astype(dtype)
    X3 = rng.standard_normal((8, 9, 3)).astype(dtype)
    general = []
    real = Recurrent._forward_fused
    monkeypatch.setattr(Recurrent, "_forward_fused", lambda self, *a: general.append(a[3]) or real(self, *a))
    monkeypatch.setattr(_plan.current(), "split_min_work", 0)
    for n, slices in ((1, ((0, 8),)), (2, ((0, 4), (4, 8)))):
        general.clear()
        with _threads.limit(n):
            first = layer_arrays(layer.forward(X, need_grad=False))     # no route kept yet: the general path
            assert general == [slices]
            small = layer_arrays(layer.forward(X, need_grad=False))
            third = layer_arrays(other.forward(X3, need_grad=False))
            third_small = layer_arrays(other.forward(X3, need_grad=False))
            assert len(general) == 2
            for a, b in zip(small + third_small, first + third):
                assert a.dtype == np.dtype(dtype) and a.shape == b.shape and a.flags.c_contiguous
                np.testing.assert_array_equal(a, b)
            w = layer.params["weight_hh_l0"]
            w *= 0.5
            halved = layer_arrays(layer.forward(X, need_grad=False))
            w *= 2.0
            assert len(general) == 2 and not np.array_equal(halved[0], first[0])
            fresh = Recurrent("lstm", 6, 16, bias=bias, dtype=dtype, random_state=2).eval()
            fresh.params["weight_hh_l0"][...] *= 0.5
            for a, b in zip(halved, layer_arrays(fresh.forward(X, need_grad=False))):
                np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_one_step_batch_recurrent_gradient_is_zero(cell):
    """A batch of one step from a zero state: the recurrent weights see no
    previous state, so their gradient is exactly zero (an empty product
    over no rows; the flat gradient starts as NaN, so every element must be
    written), and the rest equals a two-sample central difference."""
    layer = Recurrent(cell, 3, 5, dtype="float64", random_state=0)
    X = np.random.default_rng(1).standard_normal((4, 1, 3))
    out, _ = layer.forward(X)
    flat = np.full(layer.flat.shape, np.nan)
    _, grads = layer.backward(np.ones_like(out), out=flat, need_input_grad=False)
    assert np.all(np.isfinite(flat))
    np.testing.assert_array_equal(grads["weight_hh_l0"], 0)
    w = layer.params["weight_ih_l0"]
    eps = 1e-6
    w[0, 0] += eps
    up = layer.forward(X, need_grad=False)[0].sum()
    w[0, 0] -= 2 * eps
    down = layer.forward(X, need_grad=False)[0].sum()
    w[0, 0] += eps
    np.testing.assert_allclose(grads["weight_ih_l0"][0, 0], (up - down) / (2 * eps), rtol=1e-6)


def test_training_weight_gradients_one_signature_per_dtype():
    """Training through the tall weight-gradient product (few inputs: every
    cell, with and without bias, one input, one sequence, ragged batches,
    both dtypes) compiles it and the reset-scaling kernel once per dtype
    (a fresh process: the kernel tests call them with other arrays)."""
    code = (
        "import numpy as np\n"
        "from fastseq.nn import Recurrent\n"
        "from fastseq.kernels import matmul, gru\n"
        "rng = np.random.default_rng(0)\n"
        "for dt in ('float32', 'float64'):\n"
        "    for cell in ('rnn', 'lstm', 'gru'):\n"
        "        for bias, F, B in ((True, 3, 5), (False, 1, 1), (True, 1, 4)):\n"
        "            layer = Recurrent(cell, F, 16, bias=bias, dtype=dt, random_state=0)\n"
        "            X = rng.standard_normal((B, 6, F))\n"
        "            out, _ = layer.forward(X, lengths=np.arange(6, 6 - B, -1).clip(1))\n"
        "            layer.backward(np.ones_like(out), need_input_grad=False)\n"
        "assert len(matmul.tall_matmul.signatures) in (0, 2), matmul.tall_matmul.signatures\n"
        "assert len(matmul.tall_matmul_cat.signatures) == 2, matmul.tall_matmul_cat.signatures\n"
        "assert len(gru.reset_scaled.signatures) == 2, gru.reset_scaled.signatures\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_tall_weight_gradients_only_for_whole_strips():
    """The tall weight-gradient product is taken for gates that fill whole
    strips of 16 float32 (8 float64), however many inputs; gates past the
    last strip take a plain loop there (3-4x BLAS's time for a GRU of 100
    units), so those layers' products go to BLAS, with the same gradients
    as the tall product gives."""
    from fastseq.network import recurrent as R

    f32, f64 = np.dtype(np.float32), np.dtype(np.float64)
    assert R._tall_fits(192, f32) and R._tall_fits(8, f64) and R._tall_fits(4096, f32)
    assert not R._tall_fits(300, f32) and not R._tall_fits(20, f64)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((3, 5, 4)).astype(np.float32)
    for H in (5, 16):                                            # GRU gates 15 (BLAS) and 48 (tall)
        layer = Recurrent("gru", 4, H, random_state=0)
        out, _ = layer.forward(X)
        _, g = layer.backward(np.ones_like(out), need_input_grad=False)
        ref = Recurrent("gru", 4, H, random_state=0, dtype="float64")
        out64, _ = ref.forward(X.astype(np.float64))
        _, g64 = ref.backward(np.ones_like(out64), need_input_grad=False)
        for name in g:
            np.testing.assert_allclose(g[name], g64[name], rtol=1e-4, atol=1e-5, err_msg=f"H={H} {name}")


@pytest.mark.parametrize("lengths", [None, [6, 4, 6, 2, 5]])
def test_recurrent_weight_gradient_from_transposed_states_gives_the_same_bits(monkeypatch, lengths):
    """Where a k block of the states would pass half the L2 in the strided
    tall product (``_strided_x_spills``; the plan's L2 set to a few bytes
    here), the GRU's recurrent weight gradient is computed from the states
    transposed first (``tall_matmul_t``): the same sums in the same order,
    so the same bits as the strided product, full and ragged batches, one
    and two threads."""
    from fastseq import _plan, _threads
    from fastseq.network import recurrent as R

    X = np.random.default_rng(3).standard_normal((5, 6, 4)).astype(np.float32)
    grads = {}
    for l2 in (1 << 30, 8):
        with monkeypatch.context() as m:
            m.setattr(_plan.current(), "l2_bytes", l2)
            m.setattr(_plan.current(), "matmul_split_min_work", 0)
            spills = []
            real = R._strided_x_spills
            m.setattr(R, "_strided_x_spills", lambda F, dt: spills.append(real(F, dt)) or spills[-1])
            for n in (1, 2):
                layer = Recurrent("gru", 4, 16, random_state=0)
                with _threads.limit(n):
                    out, _ = layer.forward(X, lengths)
                    _, g = layer.backward(np.ones_like(out), need_input_grad=False)
                grads[l2, n] = g
            assert spills and all(spills) == (l2 == 8)
    for key in grads:
        for name, v in grads[key].items():
            np.testing.assert_array_equal(v, grads[1 << 30, 1][name], err_msg=f"{key} {name}")


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_weight_gradients_read_in_place_give_the_transposed_copys_bits(monkeypatch, cell):
    """Weight gradients over the inputs and the previous states read in
    place (``_cat_grads``: the RNN's and the LSTM's both weights and bias,
    the GRU's input side and its recurrent side) give the bits of the
    inputs transposed into one buffer first (``_gate_grads``; the GRU's
    recurrent side from the previous states gathered: ``_product_grads``;
    taken here by making ``_in_place_fits`` refuse), full and ragged batches, with zero and
    given initial states, with and without bias, at one and two threads,
    two bidirectional layers; a recurrent dropout mask keeps the copy."""
    from fastseq import _plan, _threads
    from fastseq.network import recurrent as R

    rng = np.random.default_rng(8)
    X = rng.standard_normal((6, 9, 5)).astype(np.float32)
    h0 = rng.standard_normal((1, 6, 16)).astype(np.float32)
    monkeypatch.setattr(_plan.current(), "matmul_split_min_work", 0)
    calls = []
    real_cat = R.parallel_tall_cat
    monkeypatch.setattr(R, "parallel_tall_cat", lambda *a: calls.append(1) or real_cat(*a))
    real_fits = R._in_place_fits
    for lengths in (None, [9, 4, 9, 2, 5, 8]):
        for bias in (True, False):
            for state in (None, h0):
                grads = {}
                for in_place in (True, False):
                    monkeypatch.setattr(R, "_in_place_fits", real_fits if in_place else (lambda *a: False))
                    for n in (1, 2):
                        del calls[:]
                        layer = Recurrent(cell, 5, 16, bias=bias, random_state=0)
                        with _threads.limit(n):
                            init = None if state is None else ((state, state) if cell == "lstm" else state)
                            out, _ = layer.forward(X, lengths, h0=init)
                            _, grads[in_place, n] = layer.backward(np.ones_like(out), need_input_grad=False)
                        # (the GRU: its input side, then its recurrent side)
                        want = (2 if cell == "gru" else 1) if in_place else 0
                        assert len(calls) == want, (lengths, bias, state is None, in_place, n)
                for key, g in grads.items():
                    for name in g:
                        np.testing.assert_array_equal(g[name], grads[False, 1][name],
                                                      err_msg=f"{lengths} {key} {name}")
    # two bidirectional layers (the reversed direction's own packed order;
    # the second layer's inputs, the first one's outputs), ragged
    grads = {}
    for in_place in (True, False):
        monkeypatch.setattr(R, "_in_place_fits", real_fits if in_place else (lambda *a: False))
        del calls[:]
        layer = Recurrent(cell, 5, 16, num_layers=2, bidirectional=True, random_state=0)
        with _threads.limit(2):
            out, _ = layer.forward(X, [9, 4, 9, 2, 5, 8])
            grads[in_place] = layer.backward(np.ones_like(out))[1]
        assert len(calls) == ((2 if cell == "gru" else 1) * 4 if in_place else 0)
    for name in grads[True]:
        np.testing.assert_array_equal(grads[True][name], grads[False][name], err_msg=f"bidirectional {name}")
    monkeypatch.setattr(R, "_in_place_fits", real_fits)
    del calls[:]
    layer = Recurrent(cell, 5, 16, random_state=0, recurrent_dropout=0.3)
    out, _ = layer.forward(X)
    layer.backward(np.ones_like(out), need_input_grad=False)
    assert len(calls) == (1 if cell == "gru" else 0)    # (the GRU's input side has no h_prev)


def test_gru_reset_scaled_gradients_split_by_columns_give_the_same_bits(monkeypatch):
    """The GRU backward pass's reset-scaled gate gradients and ``b_hn``'s
    sums, split in column blocks across threads (``_reset_scaled``, from
    ``RESET_SCALED_SPLIT`` elements: 0 here), give one call's bits: each
    column sums its rows in order (40 units: two whole blocks of 16 and a
    part)."""
    from fastseq import _threads
    from fastseq.kernels import gru as G
    from fastseq.network import recurrent as R

    X = np.random.default_rng(5).standard_normal((6, 7, 3)).astype(np.float32)
    calls = []
    real = G.reset_scaled
    monkeypatch.setattr(R, "gru_reset_scaled", lambda *a: calls.append(a[4:]) or real(*a))
    grads = []
    for split in (1 << 62, 0):
        monkeypatch.setattr(R, "RESET_SCALED_SPLIT", split)
        del calls[:]
        layer = Recurrent("gru", 3, 40, random_state=0)
        with _threads.limit(2):
            out, _ = layer.forward(X)
            grads.append(layer.backward(np.ones_like(out))[1])
        assert sorted(calls) == ([(0, 40)] if split else [(0, 16), (16, 32), (32, 40)])
    for name in grads[0]:
        np.testing.assert_array_equal(grads[0][name], grads[1][name], err_msg=name)


def test_import_compiles_nothing():
    code = ("import fastseq, fastseq.nn, fastseq.kernels as K\n"
            "jitted = [getattr(K, n) for n in K.__all__ if hasattr(getattr(K, n), 'signatures')]\n"
            "assert len(jitted) >= 10, jitted\n"
            "assert all(f.signatures == [] for f in jitted), [f for f in jitted if f.signatures]\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_dropout_only_in_training_and_reproducible(rng):
    X, lengths = ragged_batch(rng, 4, 5, 3)
    a = Recurrent("lstm", 3, 4, num_layers=2, dropout=0.5, recurrent_dropout=0.5, random_state=7)
    b = Recurrent("lstm", 3, 4, num_layers=2, dropout=0.5, recurrent_dropout=0.5, random_state=7)
    np.testing.assert_array_equal(a.flat, b.flat)
    oa, ob = a.forward(X, lengths)[0], b.forward(X, lengths)[0]
    np.testing.assert_array_equal(oa, ob)                       # same seed, same masks
    a2 = a.forward(X, lengths)[0]
    assert not np.array_equal(oa, a2)                           # fresh masks each call
    a.eval()
    e1, e2 = a.forward(X, lengths)[0], a.forward(X, lengths)[0]
    np.testing.assert_array_equal(e1, e2)
    plain = Recurrent("lstm", 3, 4, num_layers=2, random_state=7)
    np.testing.assert_array_equal(e1, plain.forward(X, lengths)[0])


# --------------------------------------------------------------- bad input
@pytest.fixture
def lstm():
    return Recurrent("lstm", 3, 4, num_layers=2)


@pytest.mark.parametrize("X,exc,match", [
    (np.zeros((2, 3)), ValueError, "X must be 3-dimensional"),
    (np.zeros((2, 3, 5)), ValueError, "input_size=3"),
    (np.zeros((0, 3, 3)), ValueError, "at least one sequence"),
    (np.zeros((2, 0, 3)), ValueError, "at least one sequence"),
    (np.zeros((2, 3, 3), dtype=complex), TypeError, "complex"),
    (np.array([[["a", "b", "c"]]]), TypeError, "real numbers"),
    (np.full((2, 3, 3), np.inf), ValueError, "NaN or infinity"),
])
def test_bad_X(lstm, X, exc, match):
    with pytest.raises(exc, match=match):
        lstm.forward(X)


@pytest.mark.parametrize("lengths,exc,match", [
    ([0, 3], ValueError, r"lengths must lie in 1\.\.3"),
    ([4, 3], ValueError, r"lengths must lie in 1\.\.3"),
    ([-1, 3], ValueError, r"lengths must lie in 1\.\.3"),
    ([3], ValueError, r"shape \(2,\)"),
    ([1.5, 3], ValueError, "whole numbers"),
    (["a", "b"], TypeError, "integers"),
])
def test_bad_lengths(lstm, lengths, exc, match):
    with pytest.raises(exc, match=match):
        lstm.forward(np.zeros((2, 3, 3)), lengths)


def test_nan_only_in_padding_is_fine_but_not_in_valid_steps(lstm):
    X = np.zeros((2, 3, 3))
    X[1, 2] = np.nan
    lstm.forward(X, [3, 2])
    with pytest.raises(ValueError, match="X contains NaN or infinity at valid"):
        lstm.forward(X, [3, 3])
    with pytest.raises(ValueError, match="X contains NaN or infinity at valid"):
        lstm.forward(X, need_grad=False)                  # the one-call inference path


def test_bad_states(lstm):
    X = np.zeros((2, 3, 3))
    good = np.zeros((2, 2, 4))
    with pytest.raises(TypeError, match=r"tuple \(h0, c0\)"):
        lstm.forward(X, h0=good)
    with pytest.raises(ValueError, match=r"h0 must have shape \(2, 2, 4\)"):
        lstm.forward(X, h0=(np.zeros((1, 2, 4)), good))
    with pytest.raises(ValueError, match="c0 contains NaN"):
        lstm.forward(X, h0=(good, np.full_like(good, np.nan)))
    gru = Recurrent("gru", 3, 4)
    with pytest.raises(ValueError, match=r"h0 must have shape \(1, 2, 4\)"):
        gru.forward(X, h0=np.zeros((1, 3, 4)))


def test_backward_checks(lstm):
    fresh = Recurrent("gru", 3, 4)
    with pytest.raises(RuntimeError, match="forward"):
        fresh.backward(np.zeros((1, 1, 4)))
    out, _ = lstm.forward(np.zeros((2, 3, 3)))
    with pytest.raises(ValueError, match="d_out must have shape"):
        lstm.backward(np.zeros((2, 3, 5)))
    with pytest.raises(ValueError, match="d_h_n must have shape"):
        lstm.backward(out, d_h_n=np.zeros((1, 2, 4)))
    with pytest.raises(ValueError, match="d_out contains NaN"):
        lstm.backward(np.full_like(out, np.nan))
    with pytest.raises(ValueError, match="out must be"):
        lstm.backward(out, out=np.zeros(3))


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(cell="cnn"), ValueError, "cell must be one of"),
    (dict(hidden_size=0), ValueError, "hidden_size must be >= 1"),
    (dict(hidden_size=2.5), TypeError, "hidden_size must be an integer"),
    (dict(num_layers=0), ValueError, "num_layers must be >= 1"),
    (dict(dropout=1.0), ValueError, r"dropout must lie in \[0, 1\)"),
    (dict(recurrent_dropout=-0.1), ValueError, r"recurrent_dropout must lie in \[0, 1\)"),
    (dict(nonlinearity="sigmoid"), ValueError, "nonlinearity must be one of"),
    (dict(dtype="float16"), ValueError, "dtype must be"),
    (dict(init="he"), ValueError, "init must be one of"),
    (dict(recurrent_initializer="nope"), ValueError, "recurrent_initializer must be one of"),
])
def test_bad_constructor_arguments(kwargs, exc, match):
    args = dict(cell="lstm", input_size=3, hidden_size=4)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        Recurrent(**args)


# ------------------------------------------------------------ initialisers
def test_keras_initialisers():
    H = 8
    layer = Recurrent("lstm", 5, H, init="keras", dtype="float64", random_state=0)
    W_hh = layer.params["weight_hh_l0"]            # (4H, H): orthonormal columns
    np.testing.assert_allclose(W_hh.T @ W_hh, np.eye(H), atol=1e-12)
    limit = np.sqrt(6.0 / (5 + 4 * H))
    assert np.abs(layer.params["weight_ih_l0"]).max() <= limit
    b = layer.params["bias_ih_l0"] + layer.params["bias_hh_l0"]
    np.testing.assert_array_equal(b[H:2 * H], 1.0)  # unit forget bias
    np.testing.assert_array_equal(np.delete(b, np.s_[H:2 * H]), 0.0)


def test_pytorch_initialiser_bound_and_seed():
    H = 16
    a = Recurrent("gru", 3, H, random_state=42)
    b = Recurrent("gru", 3, H, random_state=42)
    c = Recurrent("gru", 3, H, random_state=43)
    np.testing.assert_array_equal(a.flat, b.flat)
    assert not np.array_equal(a.flat, c.flat)
    assert np.abs(a.flat).max() <= 1 / np.sqrt(H)
    assert np.abs(a.flat).max() > 0.9 / np.sqrt(H)


def test_params_are_views_into_flat_and_bind_moves_them():
    layer = Recurrent("lstm", 3, 4, num_layers=2, bidirectional=True)
    names = list(layer.params)
    assert names[:4] == ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"]
    assert "weight_ih_l1_reverse" in names and layer.params["weight_ih_l1"].shape == (16, 8)
    assert sum(v.size for v in layer.params.values()) == layer.n_params == layer.flat.size
    before = layer.flat.copy()
    big = np.zeros(layer.n_params + 10, dtype=np.float32)
    layer.bind(big[5:5 + layer.n_params])
    np.testing.assert_array_equal(big[5:5 + layer.n_params], before)
    layer.params["bias_hh_l0"][:] = 9.0
    assert np.count_nonzero(big == 9.0) == 16


def test_pickle_keeps_params_as_views_into_flat(rng):
    import pickle
    layer = Recurrent("lstm", 3, 4, num_layers=2, bidirectional=True, random_state=0)
    X, lengths = ragged_batch(rng, 3, 5, 3)
    out = layer.forward(X, lengths)[0]
    copy = pickle.loads(pickle.dumps(layer))
    assert copy._cache is None
    np.testing.assert_array_equal(copy.forward(X, lengths)[0], out)
    copy.flat[:] = 0.0
    assert all(np.all(v == 0.0) for v in copy.params.values())


@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (2, True)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype,tol", [("float64", 1e-12), ("float32", 2e-5)])
def test_gru_reset_before_matches_reference(rng, num_layers, bidirectional, bias, dtype, tol):
    B, T, F, H = 4, 6, 3, 5
    layer = Recurrent("gru", F, H, num_layers=num_layers, bidirectional=bidirectional, bias=bias,
                      reset_after=False, dtype=dtype, random_state=0)
    X, lengths = ragged_batch(rng, B, T, F, lengths=[6, 2, 5, 1])
    h0 = rng.standard_normal((layer.num_layers * layer.num_directions, B, H)) * 0.5
    out, h_n = layer.forward(X, lengths, h0)
    params = {k: v.astype(np.float64) for k, v in layer.params.items()}
    after = Recurrent("gru", F, H, num_layers=num_layers, bidirectional=bidirectional, bias=bias,
                      dtype=dtype, random_state=0)
    assert not np.allclose(after.forward(X, lengths, h0)[0], out)   # a different model
    for b in range(B):
        n = lengths[b]
        Xb = X[b, :n].astype(dtype).astype(np.float64)
        ref, ref_h, _ = recurrent_sequence(params, "gru", Xb, num_layers, bidirectional, h0[:, b].astype(dtype),
                                           reset_after=False)
        np.testing.assert_allclose(out[b, :n], ref, rtol=tol, atol=tol)
        np.testing.assert_allclose(h_n[:, b], ref_h, rtol=tol, atol=tol)


def test_reset_after_is_a_gru_option():
    with pytest.raises(ValueError, match="reset_after=False is a GRU option"):
        Recurrent("lstm", 2, 3, reset_after=False)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_backward_products_on_the_tiles(monkeypatch, blas_rows, dtype):
    """The backward pass's large products (:func:`_backward_product`) run on
    the packed tiles below the step product's BLAS crossover a thread's
    block of rows, from either operand laid out either way, and on BLAS
    from it (or where the output's columns do not fill whole strips): the
    same values either way."""
    import fastseq.network.recurrent as R
    from fastseq import _threads
    rng = np.random.default_rng(0)
    dt = np.dtype(dtype)
    tol = dict(rtol=1e-5, atol=1e-4) if dt == np.float32 else dict(rtol=1e-12, atol=1e-12)
    used = []
    real_project, real_matmul = R.parallel_project, R.parallel_matmul
    monkeypatch.setattr(R, "parallel_project", lambda *a: used.append("tiles") or real_project(*a))
    monkeypatch.setattr(R, "parallel_matmul", lambda *a, **k: used.append("blas") or real_matmul(*a, **k))
    dg = rng.standard_normal((300, 64)).astype(dt)          # (N, 4H)
    x = rng.standard_normal((300, 48)).astype(dt)           # (N, K)
    W = rng.standard_normal((64, 32)).astype(dt)            # (4H, F)
    for threads in (1, 2):
        with _threads.limit(threads):
            for rows, path in ((10 ** 6, "tiles"), (1, "blas")):
                blas_rows(rows)
                for a, b in ((dg.T, x), (dg.T, np.ascontiguousarray(x.T).T), (dg, W)):
                    used.clear()
                    out = R._backward_product(a, b)
                    assert used == [path]
                    np.testing.assert_allclose(out, a @ b, **tol)
                    into = np.empty_like(out)
                    assert R._backward_product(a, b, out=into) is into
                    np.testing.assert_allclose(into, a @ b, **tol)
            blas_rows(10 ** 6)
            used.clear()
            np.testing.assert_allclose(R._backward_product(dg.T, x[:, :44]), dg.T @ x[:, :44], **tol)
            assert used == ["blas"]                              # 44 columns: not whole strips


def test_backward_on_the_tiles_matches_blas(monkeypatch, blas_rows):
    """An LSTM's and a GRU's gradients (float64, two threads) with the
    backward products on the tiles equal those on BLAS (1e-12), and those
    of one thread."""
    import fastseq.network.recurrent as R
    from fastseq import _threads
    blas = []
    real = R.parallel_matmul
    monkeypatch.setattr(R, "parallel_matmul", lambda *a, **k: blas.append(1) or real(*a, **k))
    rng = np.random.default_rng(1)
    X = rng.standard_normal((6, 20, 16))
    for cell in ("lstm", "gru"):
        layer = Recurrent(cell, 16, 16, dtype="float64", random_state=0)
        G = rng.standard_normal((6, 20, 16))
        runs = []
        for threads, rows in ((2, 10 ** 6), (2, 1), (1, 10 ** 6)):
            blas_rows(rows)
            blas.clear()
            with _threads.limit(threads):
                layer.forward(X)
                dX, g = layer.backward(G)
            runs.append([dX] + [v.copy() for v in g.values()])
            if cell == "lstm":      # (the GRU's recurrent weight gradient stays on BLAS)
                assert bool(blas) == (rows == 1)
        for other in runs[1:]:
            for a, b in zip(runs[0], other):
                np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)

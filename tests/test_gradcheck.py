"""Backpropagation through time against central differences in float64."""

import numpy as np
import pytest

from fastseq.nn import Recurrent
from conftest import central_difference, ragged_batch

EPS = 1e-6


def _loss_fn(layer, X, lengths, h0, c0, R, Rh, Rc, seed=None):
    """Scalar loss = <out, R> + <h_n, Rh> (+ <c_n, Rc>) and the gradient seeds."""
    if seed is not None:                       # same dropout masks every call
        layer._rng = np.random.default_rng(seed)
    state = (h0, c0) if layer.cell == "lstm" else h0
    res = layer.forward(X, lengths, state)
    out = res[0]
    if layer.cell == "lstm":
        h_n, c_n = res[1]
        return np.sum(out * R) + np.sum(h_n * Rh) + np.sum(c_n * Rc)
    return np.sum(out * R) + np.sum(res[1] * Rh)


def _numeric(f, arr, idx):
    return central_difference(f, arr, idx, EPS)


def _check(analytic, numeric, what):
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-7, err_msg=what)


def _gradcheck(cell, nl, num_layers, bidirectional, bias, ragged, with_state, rec_dropout=0.0, dropout=0.0,
               n_param_samples=6, reset_after=True):
    rng = np.random.default_rng(hash((cell, nl, num_layers, bidirectional, bias, ragged)) % 2**32)
    B, T, F, H = 3, 4, 2, 3
    layer = Recurrent(cell, F, H, num_layers=num_layers, bidirectional=bidirectional, nonlinearity=nl,
                      bias=bias, dropout=dropout, recurrent_dropout=rec_dropout, dtype="float64",
                      random_state=0, reset_after=reset_after)
    X, lengths = ragged_batch(rng, B, T, F, lengths=[4, 2, 3] if ragged else [4, 4, 4])
    L = num_layers * layer.num_directions
    h0 = rng.standard_normal((L, B, H)) * 0.5 if with_state else None
    c0 = rng.standard_normal((L, B, H)) * 0.5 if with_state and cell == "lstm" else None
    R = rng.standard_normal((B, T, layer.num_directions * H))
    Rh = rng.standard_normal((L, B, H))
    Rc = rng.standard_normal((L, B, H))
    seed = 99 if (dropout or rec_dropout) else None

    def f():
        return _loss_fn(layer, X, lengths, h0, c0, R, Rh, Rc, seed)

    f()
    dX, grads = layer.backward(R, Rh, Rc if cell == "lstm" else None)
    # input: every valid entry; padded entries must get exactly zero
    for b in range(B):
        for t in range(T):
            for j in range(F):
                if t < lengths[b]:
                    _check(dX[b, t, j], _numeric(f, X, (b, t, j)), f"dX[{b},{t},{j}]")
                else:
                    assert dX[b, t, j] == 0.0
    # every parameter tensor, a sample of entries (always the first and last)
    for name, p in layer.params.items():
        flat_idx = {0, p.size - 1} | set(rng.integers(0, p.size, n_param_samples).tolist())
        for fi in sorted(flat_idx):
            idx = np.unravel_index(fi, p.shape)
            _check(grads[name][idx], _numeric(f, p, idx), f"{name}{idx}")
    if with_state:
        for idx in np.ndindex(h0.shape):
            _check(layer.d_h0[idx], _numeric(f, h0, idx), f"d_h0{idx}")
        if cell == "lstm":
            for idx in np.ndindex(c0.shape):
                _check(layer.d_c0[idx], _numeric(f, c0, idx), f"d_c0{idx}")


CELLS = [("rnn", "tanh"), ("rnn", "relu"), ("lstm", "tanh"), ("gru", "tanh")]


@pytest.mark.parametrize("cell,nl", CELLS)
@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (2, False), (1, True), (2, True)])
def test_gradients_ragged_with_initial_states(cell, nl, num_layers, bidirectional):
    _gradcheck(cell, nl, num_layers, bidirectional, bias=True, ragged=True, with_state=True)


@pytest.mark.parametrize("cell,nl", CELLS)
def test_gradients_without_bias_full_length_zero_state(cell, nl):
    _gradcheck(cell, nl, 2, True, bias=False, ragged=False, with_state=False)


@pytest.mark.parametrize("cell,nl", CELLS)
def test_gradients_with_dropout_masks(cell, nl):
    _gradcheck(cell, nl, 2, True, bias=True, ragged=True, with_state=True, rec_dropout=0.4, dropout=0.3)


@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (2, True)])
@pytest.mark.parametrize("bias,rec_dropout", [(True, 0.0), (False, 0.0), (True, 0.4)])
def test_gradients_gru_reset_before(num_layers, bidirectional, bias, rec_dropout):
    _gradcheck("gru", "tanh", num_layers, bidirectional, bias=bias, ragged=True, with_state=True,
               rec_dropout=rec_dropout, reset_after=False)

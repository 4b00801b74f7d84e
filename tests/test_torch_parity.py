"""Parity with torch.nn.RNN/LSTM/GRU, weights copied with from_torch:
outputs, final states, input gradient and every weight gradient."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fastseq.interop import from_torch, to_torch_state_dict  # noqa: E402
from fastseq.nn import Recurrent  # noqa: E402

MODULES = [
    ("RNN", dict(nonlinearity="tanh")),
    ("RNN", dict(nonlinearity="relu")),
    ("LSTM", {}),
    ("GRU", {}),
]
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-11), torch.float32: dict(rtol=2e-4, atol=2e-5)}


def _run_torch(m, X, lengths, h0, c0, R, Rh, Rc):
    Xt = torch.tensor(np.nan_to_num(X), dtype=next(m.parameters()).dtype, requires_grad=True)
    dt = Xt.dtype
    state = None
    if h0 is not None:
        h0t = torch.tensor(h0, dtype=dt, requires_grad=True)
        c0t = torch.tensor(c0, dtype=dt, requires_grad=True) if c0 is not None else None
        state = (h0t, c0t) if c0t is not None else h0t
    inp = Xt
    if lengths is not None:
        inp = torch.nn.utils.rnn.pack_padded_sequence(Xt, torch.tensor(lengths), batch_first=True,
                                                      enforce_sorted=False)
    out, hn = m(inp, state)
    if lengths is not None:
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=X.shape[1])
    hn, cn = hn if isinstance(hn, tuple) else (hn, None)
    loss = (out * torch.tensor(R, dtype=dt)).sum() + (hn * torch.tensor(Rh, dtype=dt)).sum()
    if cn is not None:
        loss = loss + (cn * torch.tensor(Rc, dtype=dt)).sum()
    loss.backward()
    res = dict(out=out.detach().numpy(), hn=hn.detach().numpy(), dX=Xt.grad.numpy(),
               grads={k: p.grad.numpy() for k, p in m.named_parameters()})
    if cn is not None:
        res["cn"] = cn.detach().numpy()
    if state is not None:
        res["dh0"] = (state[0] if c0 is not None else state).grad.numpy()
        if c0 is not None:
            res["dc0"] = state[1].grad.numpy()
    return res


@pytest.mark.parametrize("kind,kw", MODULES)
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("tdtype", [torch.float32, torch.float64])
def test_parity_with_torch(kind, kw, num_layers, bidirectional, padded, tdtype):
    torch.manual_seed(hash((kind, str(kw), num_layers, bidirectional)) % 2**31)
    B, T, F, H = 4, 6, 5, 7
    m = getattr(torch.nn, kind)(F, H, num_layers=num_layers, bidirectional=bidirectional,
                                batch_first=True, **kw).to(tdtype)
    layer = from_torch(m)
    assert layer.dtype == np.dtype(str(tdtype).replace("torch.", ""))
    rng = np.random.default_rng(0)
    X = rng.standard_normal((B, T, F))
    lengths = np.array([6, 2, 5, 1]) if padded else None
    if padded:
        for b, n in enumerate(lengths):
            X[b, n:] = np.nan
    D = 2 if bidirectional else 1
    L = num_layers * D
    h0 = rng.standard_normal((L, B, H)) * 0.5
    c0 = rng.standard_normal((L, B, H)) * 0.5 if kind == "LSTM" else None
    R = rng.standard_normal((B, T, D * H))
    Rh, Rc = rng.standard_normal((L, B, H)), rng.standard_normal((L, B, H))
    ref = _run_torch(m, X, lengths, h0, c0, R, Rh, Rc)

    res = layer.forward(X, lengths, (h0, c0) if kind == "LSTM" else h0)
    out = res[0]
    hn, cn = res[1] if kind == "LSTM" else (res[1], None)
    dX, grads = layer.backward(R, Rh, Rc if kind == "LSTM" else None)
    tol = TOL[tdtype]
    np.testing.assert_allclose(out, ref["out"], **tol)
    np.testing.assert_allclose(hn, ref["hn"], **tol)
    if kind == "LSTM":
        np.testing.assert_allclose(cn, ref["cn"], **tol)
        np.testing.assert_allclose(layer.d_c0, ref["dc0"], **tol)
    np.testing.assert_allclose(np.nan_to_num(dX), ref["dX"], **tol)
    np.testing.assert_allclose(layer.d_h0, ref["dh0"], **tol)
    assert set(grads) == set(ref["grads"])
    for name, g in grads.items():
        np.testing.assert_allclose(g, ref["grads"][name], err_msg=name, **tol)


@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
def test_bias_free_parity(kind):
    torch.manual_seed(0)
    m = getattr(torch.nn, kind)(3, 4, bias=False, batch_first=True).double()
    layer = from_torch(m)
    assert set(layer.params) == {"weight_ih_l0", "weight_hh_l0"}
    X = np.random.default_rng(0).standard_normal((2, 5, 3))
    out_t = m(torch.tensor(X))[0].detach().numpy()
    np.testing.assert_allclose(layer.forward(X)[0], out_t, rtol=1e-12, atol=1e-13)


def test_round_trip_state_dict():
    layer = Recurrent("gru", 3, 4, num_layers=2, bidirectional=True, random_state=0)
    m = torch.nn.GRU(3, 4, num_layers=2, bidirectional=True, batch_first=True)
    m.load_state_dict(to_torch_state_dict(layer))
    X = np.random.default_rng(1).standard_normal((2, 3, 3)).astype(np.float32)
    np.testing.assert_allclose(layer.forward(X)[0], m(torch.tensor(X))[0].detach().numpy(), rtol=1e-5, atol=1e-6)
    back = from_torch(m)
    np.testing.assert_array_equal(back.flat, layer.flat)


def test_from_torch_rejects_what_it_cannot_represent():
    with pytest.raises(TypeError, match="torch.nn.RNN, LSTM or GRU"):
        from_torch(torch.nn.Linear(2, 3))
    with pytest.raises(ValueError, match="proj_size"):
        from_torch(torch.nn.LSTM(3, 4, proj_size=2))


def test_reset_before_gru_has_no_torch_state_dict():
    with pytest.raises(ValueError, match="no torch.nn.GRU equivalent"):
        to_torch_state_dict(Recurrent("gru", 2, 3, reset_after=False))

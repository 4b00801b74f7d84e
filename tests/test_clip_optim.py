"""Clipping and optimiser kernels against torch, and their non-finite guards."""

import numpy as np
import pytest

from fastseq import kernels as K

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("max_norm", [0.5, 1e6])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clip_grad_norm_matches_torch(max_norm, dtype):
    g = np.random.default_rng(0).standard_normal(50).astype(dtype) * 3
    t = torch.tensor(g.copy(), requires_grad=False)
    p = torch.nn.Parameter(torch.zeros_like(t))
    p.grad = t
    ref_norm = torch.nn.utils.clip_grad_norm_([p], max_norm).item()
    norm = K.clip_grad_norm(g, max_norm)
    assert norm == pytest.approx(ref_norm, rel=1e-6)
    np.testing.assert_allclose(g, p.grad.numpy(), rtol=1e-6)
    assert np.linalg.norm(g) <= max(max_norm, ref_norm) * (1 + 1e-6)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_clip_grad_norm_reports_non_finite_and_leaves_grad(bad):
    g = np.ones(10)
    g[3] = bad
    before = g.copy()
    norm = K.clip_grad_norm(g, 1.0)
    assert not np.isfinite(norm)
    np.testing.assert_array_equal(g, before)


def test_clip_grad_norm_of_huge_finite_gradient_does_not_overflow():
    g = np.full(8, 3e38, dtype=np.float32)        # squares overflow float32
    norm = K.clip_grad_norm(g, 1.0)
    assert np.isfinite(norm) and np.isfinite(g).all()
    assert np.linalg.norm(g.astype(np.float64)) == pytest.approx(1.0, rel=1e-5)


def test_clip_grad_value_matches_torch_and_guards():
    g = np.random.default_rng(1).standard_normal(40) * 2
    p = torch.nn.Parameter(torch.zeros(40, dtype=torch.float64))
    p.grad = torch.tensor(g.copy())
    torch.nn.utils.clip_grad_value_([p], 0.7)
    assert K.clip_grad_value(g, 0.7) is True
    np.testing.assert_array_equal(g, p.grad.numpy())
    g[0] = np.nan
    before = g.copy()
    assert K.clip_grad_value(g, 0.7) is False
    np.testing.assert_array_equal(g[1:], before[1:])


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_adam_matches_torch(weight_decay):
    rng = np.random.default_rng(2)
    p = rng.standard_normal(30)
    tp = torch.nn.Parameter(torch.tensor(p.copy()))
    opt = torch.optim.Adam([tp], lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=weight_decay)
    m, v = np.zeros_like(p), np.zeros_like(p)
    for step in range(1, 6):
        g = rng.standard_normal(30)
        tp.grad = torch.tensor(g.copy())
        opt.step()
        K.adam_update(p, g, m, v, step, 0.01, 0.9, 0.999, 1e-8, weight_decay)
    np.testing.assert_allclose(p, tp.detach().numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("momentum,nesterov", [(0.0, False), (0.9, False), (0.9, True)])
def test_sgd_matches_torch(momentum, nesterov):
    rng = np.random.default_rng(3)
    p = rng.standard_normal(20)
    tp = torch.nn.Parameter(torch.tensor(p.copy()))
    opt = torch.optim.SGD([tp], lr=0.1, momentum=momentum, nesterov=nesterov, weight_decay=0.001)
    vel = np.zeros_like(p)
    for _ in range(4):
        g = rng.standard_normal(20)
        tp.grad = torch.tensor(g.copy())
        opt.step()
        K.sgd_update(p, g, vel, 0.1, momentum, nesterov, 0.001)
    np.testing.assert_allclose(p, tp.detach().numpy(), rtol=1e-12, atol=1e-14)

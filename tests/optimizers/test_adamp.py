"""AdamP and SGDP against the authors' package (adamp==0.3.0), by hand, and on their central claim."""

from __future__ import annotations

import adamp
import pytest
import torch
from torch import nn

import adaptim
from adaptim.optimizers import adamp as adamp_module
from helpers import assert_same_trajectory, trajectory


@pytest.fixture(autouse=True)
def _one_thread():
    """Small tensors: extra threads only contend (tests run beside other jobs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


ADAMP_CASES = [
    dict(),
    dict(lr=1e-2),
    dict(lr=1e-2, nesterov=True),
    dict(lr=1e-2, weight_decay=0.1),
    dict(lr=1e-2, weight_decay=0.3, delta=0.2, wd_ratio=0.5),
    dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-6, nesterov=True, weight_decay=0.1, delta=0.05),
]

SGDP_CASES = [
    dict(lr=0.1),
    dict(lr=0.1, momentum=0.9),
    dict(lr=0.1, momentum=0.9, nesterov=True),
    dict(lr=0.1, momentum=0.9, weight_decay=0.1, dampening=0.1),
    dict(lr=0.05, momentum=0.5, weight_decay=0.2, delta=0.2, wd_ratio=0.5),
    dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.1, delta=0.05, wd_ratio=0.3),
]


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("kw", ADAMP_CASES, ids=str)
def test_adamp_matches_official(kw, foreach):
    assert_same_trajectory(
        lambda p: adaptim.AdamP(p, foreach=foreach, **kw), lambda p: adamp.AdamP(p, **kw)
    )


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("kw", SGDP_CASES, ids=str)
def test_sgdp_matches_official(kw, foreach):
    assert_same_trajectory(
        lambda p: adaptim.SGDP(p, foreach=foreach, **kw), lambda p: adamp.SGDP(p, **kw)
    )


@pytest.mark.parametrize("name", ["adamp", "sgdp"])
@pytest.mark.parametrize("foreach", [False, True])
def test_projection_fires_on_the_test_network(name, foreach, monkeypatch):
    """The oracle comparisons above exercise the projection: bn_net's first weight is projected."""
    seen = []
    if foreach:
        original = adamp_module._project_

        def counting(u, p, norm, view, like, *rest):
            seen.append((tuple(like.shape), view))
            return original(u, p, norm, view, like, *rest)

        monkeypatch.setattr(adamp_module, "_project_", counting)
    else:  # the per-tensor update decides without a branch: read its decisions back
        original_tangential = adamp_module._tangential_

        def recording(u, p, *rest, **kw):
            channel, layer = original_tangential(u, p, *rest, **kw)
            if channel or layer:
                seen.append((tuple(p.shape), "channel" if channel else "layer"))
            return channel, layer

        monkeypatch.setattr(adamp_module, "_tangential_", recording)
    lr = 1e-2 if name == "adamp" else 0.1
    trajectory(lambda p: adaptim.create(name, p, lr=lr, foreach=foreach), steps=10)
    assert seen.count(((8, 6), "channel")) == 10  # the weight before batch norm, every step
    assert all(len(shape) > 1 for shape, _ in seen)  # 1-D tensors are never projected


def test_adamp_first_step_by_hand():
    """One AdamP step on a 2x2 weight and a bias, computed from the update rule by hand.

    Rows of the gradient are orthogonal to the rows of the weight (as for a scale-invariant weight),
    so the channel-view cosine is 0 < delta / sqrt(2): the update is projected and the decay of the
    weight is scaled by wd_ratio. The bias (1-D) is never projected and gets the full decay.
    """
    lr, wd, wd_ratio = 0.1, 0.5, 0.1
    w = torch.tensor([[3.0, 4.0], [1.0, 0.0]], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([2.0, -1.0], dtype=torch.float64, requires_grad=True)
    w.grad = torch.tensor([[4.0, -3.0], [0.0, 2.0]], dtype=torch.float64)
    b.grad = torch.tensor([0.5, 0.5], dtype=torch.float64)
    adaptim.AdamP([w, b], lr=lr, weight_decay=wd, wd_ratio=wd_ratio, eps=1e-12).step()
    # Step 1 with eps ~ 0: m_hat / (sqrt(v_hat) + eps) = sign(g) (0 where g = 0).
    # Row 0: u = (1, -1); q = (3, 4)/5; <q, u> = -0.2; u - q <q, u> = (1.12, -0.84).
    # Row 1: u = (0, 1); q = (1, 0); <q, u> = 0: unchanged.
    f64 = dict(dtype=torch.float64)
    expected_w = torch.tensor([[3.0, 4.0], [1.0, 0.0]], **f64) * (
        1 - lr * wd * wd_ratio
    ) - lr * torch.tensor([[1.12, -0.84], [0.0, 1.0]], **f64)
    expected_b = torch.tensor([2.0, -1.0], **f64) * (1 - lr * wd) - lr * torch.tensor(
        [1.0, 1.0], **f64
    )
    torch.testing.assert_close(w.detach(), expected_w, rtol=0, atol=1e-10)
    torch.testing.assert_close(b.detach(), expected_b, rtol=0, atol=1e-10)
    # the projected step is tangential: it does not change the norm of row 0 to first order
    assert abs(3.0 * 1.12 + 4.0 * -0.84) < 1e-12


@pytest.mark.parametrize("foreach", [False, True])
def test_adamp_not_projected_when_gradient_is_radial(foreach):
    """A gradient parallel to the weight (cos = 1) is not projected: a plain AdamW step."""
    lr, wd = 0.1, 0.5
    w = torch.tensor([[3.0, 4.0], [1.0, 2.0]], dtype=torch.float64, requires_grad=True)
    w.grad = 2.0 * w.detach()
    adaptim.AdamP([w], lr=lr, weight_decay=wd, eps=0.0, foreach=foreach).step()
    expected = torch.tensor([[3.0, 4.0], [1.0, 2.0]], dtype=torch.float64) * (1 - lr * wd) - lr
    torch.testing.assert_close(w.detach(), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("foreach", [False, True])
def test_sgdp_stores_the_projected_buffer(foreach):
    """Without nesterov the reference projects its momentum buffer in place (the direction aliases
    it), so the projection of step 1 is remembered by step 2. Two steps by hand, momentum 0.5.
    """
    lr, mom = 0.1, 0.5
    w = torch.eye(2, dtype=torch.float64, requires_grad=True)
    opt = adaptim.SGDP([w], lr=lr, momentum=mom, eps=0.0, foreach=foreach)
    # Step 1: rows of g are nearly orthogonal to the rows of w: cos = 0.05/sqrt(1.0025) = 0.0499 <
    # 0.1/sqrt(2) = 0.0707, so the channel view projects buf = g: (0.05, 1) - (1, 0) * 0.05 = (0, 1)
    # and (1, 0.05) - (0, 1) * 0.05 = (1, 0).
    w.grad = torch.tensor([[0.05, 1.0], [1.0, 0.05]], dtype=torch.float64)
    opt.step()
    p1 = torch.tensor([[1.0, -0.1], [-0.1, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(w.detach(), p1, rtol=0, atol=1e-12)
    torch.testing.assert_close(
        opt.state[w]["momentum"], torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    )
    # Step 2: g = w (cos = 1, no projection); buf = 0.5 * (projected buf) + g = [[1, 0.4], [0.4, 1]]
    # (an unprojected buffer would give 1.025 on the diagonal, hence 0.8975 below).
    w.grad = p1.clone()
    opt.step()
    expected = torch.tensor([[0.9, -0.14], [-0.14, 0.9]], dtype=torch.float64)
    torch.testing.assert_close(w.detach(), expected, rtol=0, atol=1e-12)


def _weight_norm_growth(make_opt, steps: int = 300) -> float:
    """Norm of a scale-invariant weight (Linear -> BatchNorm) after training / before."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(20, 32, bias=False), nn.BatchNorm1d(32, affine=False), nn.ReLU(), nn.Linear(32, 2)
    )
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(256, 20, generator=gen)
    y = (x[:, :5].sum(1) > 0).long()
    opt = make_opt(model.parameters())
    start = model[0].weight.norm().item()
    for i in range(steps):
        idx = torch.arange(i * 32, (i + 1) * 32) % 256
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    return model[0].weight.norm().item() / start


def test_adamp_and_sgdp_stop_the_norm_growth_of_scale_invariant_weights():
    """The paper's claim (Sec. 3): momentum makes the norm of scale-invariant weights grow, which
    shrinks their effective step; AdamP/SGDP's projection keeps it nearly constant."""
    adam = _weight_norm_growth(lambda p: torch.optim.Adam(p, lr=1e-2))
    adamp_ = _weight_norm_growth(lambda p: adaptim.AdamP(p, lr=1e-2))
    sgd = _weight_norm_growth(lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9))
    sgdp = _weight_norm_growth(lambda p: adaptim.SGDP(p, lr=0.1, momentum=0.9))
    assert adam > 1.15 and adamp_ - 1 < 0.25 * (adam - 1), (adam, adamp_)
    assert sgd > 1.15 and sgdp - 1 < 0.25 * (sgd - 1), (sgd, sgdp)

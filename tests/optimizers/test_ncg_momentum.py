"""NCG-style adaptive momentum SGD (Wang & Ye, arXiv 2012.02188): hand-computed steps and behaviour.

No oracle package exists (and no official code); expected steps are the (reconstructed) rule written out
with plain tensor arithmetic over the concatenation of both parameters.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import adaptim
from adaptim.core import base

A = torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
T = torch.tensor([[1.0, -1.0], [0.5, 2.0]], dtype=torch.float64)


def loss_fn(w, u):
    return (
        0.5 * ((A @ w - T) ** 2).sum() + 0.5 * (u**2 * torch.tensor([[1.0, 4.0], [2.0, 0.5]])).sum()
    )


def start():
    return (
        torch.tensor([[0.5, -0.3], [0.2, 0.1]], dtype=torch.float64),
        torch.tensor([[-1.0, 0.4], [0.3, 0.8]], dtype=torch.float64),
    )


def expected_trajectory(lr, steps, beta_type="fr", max_momentum=0.99, restart=True, wd=0.0):
    w, u = start()
    d = [torch.zeros(2, 2, dtype=torch.float64) for _ in range(2)]
    g_prev = None
    out, betas = [], []
    for _ in range(steps):
        wg, ug = w.clone().requires_grad_(), u.clone().requires_grad_()
        g = [
            gi + wd * p
            for gi, p in zip(torch.autograd.grad(loss_fn(wg, ug), (wg, ug)), (w, u), strict=True)
        ]
        gcat = torch.cat([gi.flatten() for gi in g])
        if g_prev is None:
            beta = 0.0
        else:
            if beta_type == "fr":
                beta = (gcat @ gcat / (g_prev @ g_prev)).item()
            else:
                beta = max(0.0, (gcat @ (gcat - g_prev)).item()) / (g_prev @ g_prev).item()
            beta = 0.0 if (restart and beta > 1) else min(beta, max_momentum)
        betas.append(beta)
        g_prev = gcat
        d = [beta * di + gi for di, gi in zip(d, g, strict=True)]
        w, u = w - lr * d[0], u - lr * d[1]
        out.append((w.clone(), u.clone()))
    return out, betas


def our_trajectory(make, steps):
    w, u = (torch.nn.Parameter(t) for t in start())
    opt = make([w, u])
    out = []
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(w, u).backward()
        opt.step()
        out.append((w.detach().clone(), u.detach().clone()))
    return out


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize(
    "kw",
    [
        dict(lr=0.1),
        dict(lr=0.1, beta_type="pr"),
        dict(lr=0.1, max_momentum=0.5, weight_decay=0.1),
        dict(lr=0.15, restart=False),
    ],
)
def test_matches_hand_computed_steps(kw, foreach):
    expected, betas = expected_trajectory(
        kw["lr"],
        10,
        beta_type=kw.get("beta_type", "fr"),
        max_momentum=kw.get("max_momentum", 0.99),
        restart=kw.get("restart", True),
        wd=kw.get("weight_decay", 0.0),
    )
    assert any(b > 0 for b in betas)  # the momentum is really used
    ours = our_trajectory(lambda p: adaptim.NCGMomentumSGD(p, foreach=foreach, **kw), 10)
    for (wa, ua), (wb, ub) in zip(ours, expected, strict=True):
        torch.testing.assert_close(wa, wb, atol=1e-12, rtol=0)
        torch.testing.assert_close(ua, ub, atol=1e-12, rtol=0)


def test_restart_when_gradient_norm_grows():
    x = torch.nn.Parameter(torch.tensor([1.0, 1.0], dtype=torch.float64))
    opt = adaptim.NCGMomentumSGD([x], lr=0.1)
    x.grad = torch.tensor([1.0, 0.0], dtype=torch.float64)
    opt.step()  # d = g
    x.grad = torch.tensor([0.0, 2.0], dtype=torch.float64)  # ||g||^2 ratio 4 > 1: restart
    opt.step()
    torch.testing.assert_close(opt.state[x]["momentum_buffer"], x.grad)
    x.grad = torch.tensor([0.0, 1.0], dtype=torch.float64)  # ratio 1/4: d = g + d / 4
    opt.step()
    torch.testing.assert_close(
        opt.state[x]["momentum_buffer"], torch.tensor([0.0, 1.5], dtype=torch.float64)
    )


def test_faster_than_sgd_on_an_ill_conditioned_quadratic():
    torch.manual_seed(0)
    n = 20
    h = torch.logspace(-2, 0, n, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64))
    a, x0 = q @ torch.diag(h) @ q.T, torch.randn(n, dtype=torch.float64)

    def final_loss(make):
        x = torch.nn.Parameter(x0.clone())
        opt = make([x])
        for _ in range(60):
            opt.zero_grad()
            (0.5 * x @ a @ x).backward()
            opt.step()
        return (0.5 * x @ a @ x).item()

    ncg = final_loss(lambda p: adaptim.NCGMomentumSGD(p, lr=1.0))
    sgd = final_loss(lambda p: torch.optim.SGD(p, lr=1.0))
    heavy = final_loss(lambda p: torch.optim.SGD(p, lr=1.0, momentum=0.9))
    assert ncg < 1e-3 * sgd
    assert ncg < heavy


def test_beta_type_must_agree_across_groups():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    opt = adaptim.NCGMomentumSGD([a], lr=0.1)
    with pytest.raises(ValueError, match="beta_type"):
        opt.add_param_group({"params": [b], "beta_type": "pr"})


# -- the cache-blocked passes ---------------------------------------------------------------------

BLOCKING_CASES = [
    dict(lr=0.05, weight_decay=0.05),  # FR: g + wd p recomputed in each pass
    dict(lr=0.05, beta_type="pr", weight_decay=0.05),  # PR: g_k stored in prev_grad, read back
    dict(lr=0.05, beta_type="pr", maximize=True, restart=False),
]


def _blocked_run(kw, chunk_bytes, monkeypatch, parts):
    """Two param groups (different lr); the last layer starts at step 3 (mixed step counts)."""
    monkeypatch.setattr(base, "CPU_CHUNK_BYTES", chunk_bytes)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 3)
    )
    model = model.double()
    params = list(model.parameters())
    groups = [{"params": params[:3]}, {"params": params[3:], "lr": kw["lr"] / 3}]
    opt = adaptim.NCGMomentumSGD(groups, foreach=True, **kw)
    chunks = opt._chunks

    def counting(batch):
        out = chunks(batch)
        parts.append(len(out))
        return out

    monkeypatch.setattr(opt, "_chunks", counting)
    gen = torch.Generator().manual_seed(5)
    betas = []
    for step in range(6):
        x = torch.randn(8, 5, generator=gen, dtype=torch.float64)
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        if step < 2:
            params[-1].grad = params[-2].grad = None  # frozen for two steps
        opt.step()
        betas.append(opt._sums)
    return [p.detach().clone() for p in params], betas


@pytest.mark.parametrize("kw", BLOCKING_CASES, ids=str)
def test_cache_blocked_passes_are_bit_identical(kw, monkeypatch):
    """Both passes (statistics, then the update) over one-tensor chunks equal one pass over the
    whole batch, bit for bit."""
    parts_small: list[int] = []
    parts_whole: list[int] = []
    small, sums_small = _blocked_run(kw, 1, monkeypatch, parts_small)
    whole, sums_whole = _blocked_run(kw, 2**40, monkeypatch, parts_whole)
    assert max(parts_small) == 3 and max(parts_whole) == 1  # really chunked (3 tensors a group)
    assert sums_small == sums_whole
    assert any(s[1] > 0 for s in sums_whole)  # the coefficient really had history
    for x, y in zip(small, whole, strict=True):
        assert torch.equal(x, y), f"max diff {(x - y).abs().max().item():.3e}"


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("beta_type", ["fr", "pr"])
def test_grad_sq_is_the_squared_norm_of_the_gradient(foreach, beta_type):
    """``grad_sq`` keeps its meaning (old checkpoints): ``||g_k||^2`` of the tensor, a Python float."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2)).double()
    opt = adaptim.NCGMomentumSGD(
        model.parameters(), lr=0.05, beta_type=beta_type, weight_decay=0.1, foreach=foreach
    )
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(5, 4, dtype=torch.float64)).pow(2).sum().backward()
        expected = [(p.grad + 0.1 * p.detach()).pow(2).sum().item() for p in model.parameters()]
        opt.step()
        for p, want in zip(model.parameters(), expected, strict=True):
            grad_sq = opt.state[p]["grad_sq"]
            assert type(grad_sq) is float
            assert math.isclose(grad_sq, want, rel_tol=1e-9)


def test_one_host_transfer_per_step(monkeypatch):
    """The per-tensor statistics come to the host in one ``tolist`` a step, no ``.item()``."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    opt = adaptim.NCGMomentumSGD(model.parameters(), lr=0.05, beta_type="pr", foreach=True)
    calls = []
    tolist = torch.Tensor.tolist

    def refuse(*args, **kwargs):
        raise AssertionError("host synchronization in the multi-tensor step")

    def counting(self):
        calls.append(1)
        return tolist(self)

    for step in range(3):
        opt.zero_grad()
        model(torch.randn(3, 4, dtype=torch.float64)).pow(2).mean().backward()
        with monkeypatch.context() as m:
            for name in ("item", "__float__", "__bool__"):
                m.setattr(torch.Tensor, name, refuse)
            m.setattr(torch.Tensor, "tolist", counting)
            opt.step()
        assert len(calls) == step + 1
    assert opt._sums[1] > 0


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("beta_type", ["fr", "pr"])
def test_huge_gradients_restart_instead_of_nan(foreach, beta_type):
    """``g = 1e30`` (float32): ``||g_k||^2`` and ``||g_{k-1}||^2`` overflow, and the coefficient
    inf / inf is NaN; there is no coefficient to take, so the method restarts (``beta_k = 0``) and
    takes the plain step ``lr * g``."""
    from adaptim.optimizers.ncg_momentum import ncg_momentum

    assert ncg_momentum(math.inf, math.inf, None, "fr", 0.99, True) == 0.0
    assert ncg_momentum(math.inf, math.inf, None, "fr", 0.99, False) == 0.0
    w = nn.Parameter(torch.ones(3))
    opt = adaptim.NCGMomentumSGD([w], lr=0.1, beta_type=beta_type, foreach=foreach)
    for k in range(1, 4):
        w.grad = torch.full_like(w, 1e30)
        opt.step()
        assert torch.isfinite(w).all(), f"step {k}"
        torch.testing.assert_close(w.detach(), torch.full_like(w, 1.0 - k * 0.1 * 1e30))

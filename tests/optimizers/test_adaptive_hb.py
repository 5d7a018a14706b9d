"""Adaptive heavy-ball SGD/Adam (Sun et al., arXiv 2110.09057): hand-computed steps and the paper's claim.

No oracle package exists; the expected steps below are written out from the update rule with plain tensor
arithmetic (global norms over the concatenation of both parameters), independent of the implementation.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import adaptim
from adaptim.core import base
from adaptim.core.state_precision import is_quantized

A = torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
B = torch.tensor([[1.0, 0.0], [0.0, 4.0]], dtype=torch.float64)
T = torch.tensor([[1.0, -1.0], [0.5, 2.0]], dtype=torch.float64)


def loss_fn(w, u):
    # two 2x2 parameters, so the global norms really span two tensors
    return 0.5 * ((A @ w - T) ** 2).sum() + 0.25 * ((B * u) ** 2).sum() + (w * u).sum() * 0.1


def grads_at(w, u, wd):
    w = w.clone().requires_grad_()
    u = u.clone().requires_grad_()
    gw, gu = torch.autograd.grad(loss_fn(w, u), (w, u))
    return gw + wd * w.detach(), gu + wd * u.detach()


def expected_trajectory(lr, steps, *, adam, wd=0.0, beta2=0.999, eps=1e-8, delta=1e-3, ceps=1e-6):
    w = torch.tensor([[0.5, -0.3], [0.2, 0.1]], dtype=torch.float64)
    u = torch.tensor([[-1.0, 0.4], [0.3, 0.8]], dtype=torch.float64)
    m = [torch.zeros(2, 2, dtype=torch.float64) for _ in range(2)]
    v = [torch.zeros(2, 2, dtype=torch.float64) for _ in range(2)]
    g_prev = x_prev = None
    out = []
    for k in range(1, steps + 1):
        g = grads_at(w, u, wd)
        x = torch.cat([w.flatten(), u.flatten()])
        gcat = torch.cat([gi.flatten() for gi in g])
        if g_prev is None:
            beta = 0.0
        else:
            curv = (gcat - g_prev).norm() / ((x - x_prev).norm() + ceps)
            beta = min(max((1 - math.sqrt(lr * curv)) ** 2, 0.0), 1 - delta)
        g_prev, x_prev = gcat, x
        new = []
        for i, (p, gi) in enumerate(zip((w, u), g, strict=True)):
            if adam:
                m[i] = beta * m[i] + (1 - beta) * gi
                v[i] = beta2 * v[i] + (1 - beta2) * gi * gi
                new.append(p - lr * m[i] / ((v[i] / (1 - beta2**k)).sqrt() + eps))
            else:
                m[i] = beta * m[i] + gi
                new.append(p - lr * m[i])
        w, u = new
        out.append((w.clone(), u.clone()))
    return out


def our_trajectory(make, steps):
    w = torch.nn.Parameter(torch.tensor([[0.5, -0.3], [0.2, 0.1]], dtype=torch.float64))
    u = torch.nn.Parameter(torch.tensor([[-1.0, 0.4], [0.3, 0.8]], dtype=torch.float64))
    opt = make([w, u])
    out = []
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(w, u).backward()
        opt.step()
        out.append((w.detach().clone(), u.detach().clone()))
    return out


def assert_close_trajectories(a, b):
    moved = (a[-1][0] - a[0][0]).abs().max().item()
    assert moved > 1e-3
    for (wa, ua), (wb, ub) in zip(a, b, strict=True):
        torch.testing.assert_close(wa, wb, atol=1e-12, rtol=0)
        torch.testing.assert_close(ua, ub, atol=1e-12, rtol=0)


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize(
    "kw", [dict(lr=0.1), dict(lr=0.3, weight_decay=0.05), dict(lr=0.2, delta=0.2)]
)
def test_sgd_matches_hand_computed_steps(kw, foreach):
    wd, delta = kw.get("weight_decay", 0.0), kw.get("delta", 1e-3)
    expected = expected_trajectory(kw["lr"], 8, adam=False, wd=wd, delta=delta)
    ours = our_trajectory(lambda p: adaptim.AdaptiveHeavyBallSGD(p, foreach=foreach, **kw), 8)
    assert_close_trajectories(ours, expected)


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize(
    "kw", [dict(lr=0.05), dict(lr=0.02, beta2=0.9, eps=1e-6, weight_decay=0.1)]
)
def test_adam_matches_hand_computed_steps(kw, foreach):
    expected = expected_trajectory(
        kw["lr"],
        8,
        adam=True,
        wd=kw.get("weight_decay", 0.0),
        beta2=kw.get("beta2", 0.999),
        eps=kw.get("eps", 1e-8),
        delta=1e-2,
    )
    ours = our_trajectory(lambda p: adaptim.AdaptiveHeavyBallAdam(p, foreach=foreach, **kw), 8)
    assert_close_trajectories(ours, expected)


def test_first_step_is_plain_sgd():
    x = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    opt = adaptim.AdaptiveHeavyBallSGD([x], lr=0.1)
    x.grad = torch.tensor([0.5, 0.25], dtype=torch.float64)
    opt.step()
    torch.testing.assert_close(x.detach(), torch.tensor([0.95, -2.025], dtype=torch.float64))


def test_default_delta_is_the_authors_1e_3():
    # a constant gradient has no curvature: beta_2 = clip((1 - 0)^2, 0, 1 - delta) = 1 - delta, the
    # clip of eq. (17) of the authors' restatement (Nguyen et al., MSML 2022), delta = 1e-3
    x = torch.nn.Parameter(torch.tensor([0.0], dtype=torch.float64))
    opt = adaptim.AdaptiveHeavyBallSGD([x], lr=0.1)
    for _ in range(2):
        x.grad = torch.tensor([1.0], dtype=torch.float64)
        opt.step()
    # m_1 = g, m_2 = beta_2 m_1 + g
    assert x.item() == pytest.approx(-0.1 * (1.0 + (1.0 - 1e-3) + 1.0), rel=1e-12)
    # the Adam form keeps the R script's 1e-2: that script is its only source
    assert adaptim.AdaptiveHeavyBallAdam([x]).defaults["delta"] == 1e-2


# -- the paper's claim at toy scale: robust to large learning rates, faster than fixed momentum -------


def _ill_conditioned():
    torch.manual_seed(0)
    n = 20
    h = torch.logspace(-2, 0, n, dtype=torch.float64)  # curvatures 0.01 .. 1
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64))
    return q @ torch.diag(h) @ q.T, torch.randn(n, dtype=torch.float64)


def _steps_to(make, lr, frac=1e-3, steps=300):
    a, x0 = _ill_conditioned()
    x = torch.nn.Parameter(x0.clone())
    opt = make([x], lr)
    f0 = 0.5 * x0 @ a @ x0
    for k in range(steps):
        opt.zero_grad()
        loss = 0.5 * x @ a @ x
        if loss.item() < frac * f0:
            return k
        loss.backward()
        opt.step()
    return None


def test_tolerates_larger_lr_and_beats_fixed_momentum():
    ahb = lambda p, lr: adaptim.AdaptiveHeavyBallSGD(p, lr=lr)  # noqa: E731
    sgd = lambda p, lr: torch.optim.SGD(p, lr=lr)  # noqa: E731
    heavy = lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9)  # noqa: E731
    for lr in (0.5, 1.0, 1.9):  # where plain SGD converges, so does the adaptive momentum
        assert _steps_to(sgd, lr) is not None
        assert _steps_to(ahb, lr) is not None
    # beyond SGD's stability limit 2 / L_max = 2 the adaptive momentum still converges
    assert _steps_to(sgd, 3.0) is None
    assert _steps_to(ahb, 3.0) is not None
    # at large lr it needs fewer steps than a fixed momentum of 0.9
    assert _steps_to(ahb, 1.9) < _steps_to(heavy, 1.9)
    assert _steps_to(ahb, 1.0) < _steps_to(heavy, 1.0)


def test_bad_hyperparameters_are_refused():
    x = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="delta"):
        adaptim.AdaptiveHeavyBallSGD([x], lr=0.1, delta=0.0)
    with pytest.raises(ValueError, match="beta2"):
        adaptim.AdaptiveHeavyBallAdam([x], beta2=1.0)


# -- the cache-blocked passes ---------------------------------------------------------------------

BLOCKING_CASES = [
    (adaptim.AdaptiveHeavyBallSGD, dict(lr=0.05, weight_decay=0.05)),
    (adaptim.AdaptiveHeavyBallAdam, dict(lr=1e-2, weight_decay=0.05)),
    (adaptim.AdaptiveHeavyBallAdam, dict(lr=1e-2, maximize=True)),
]


def _blocked_run(cls, kw, chunk_bytes, monkeypatch, parts):
    """Two param groups (different lr); the last layer starts at step 3, so a batch mixes step
    counts and tensors without history."""
    monkeypatch.setattr(base, "CPU_CHUNK_BYTES", chunk_bytes)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 3)
    )
    model = model.double()
    params = list(model.parameters())
    groups = [{"params": params[:3]}, {"params": params[3:], "lr": kw["lr"] / 3}]
    opt = cls(groups, foreach=True, **kw)
    chunks = opt._chunks

    def counting(batch):
        out = chunks(batch)
        parts.append(len(out))
        return out

    monkeypatch.setattr(opt, "_chunks", counting)
    gen = torch.Generator().manual_seed(5)
    for step in range(6):
        x = torch.randn(8, 5, generator=gen, dtype=torch.float64)
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        if step < 2:
            params[-1].grad = params[-2].grad = None  # frozen for two steps
        opt.step()
    return [p.detach().clone() for p in params], [s["step_sq"] for s in opt.state.values()]


@pytest.mark.parametrize(("cls", "kw"), BLOCKING_CASES, ids=str)
def test_cache_blocked_passes_are_bit_identical(cls, kw, monkeypatch):
    """Both passes (the change of the gradient, then the update) over one-tensor chunks equal one
    pass over the whole batch, bit for bit, with L2 decay, maximize and mixed step counts."""
    parts_small: list[int] = []
    parts_whole: list[int] = []
    small, small_steps = _blocked_run(cls, kw, 1, monkeypatch, parts_small)
    whole, whole_steps = _blocked_run(cls, kw, 2**40, monkeypatch, parts_whole)
    assert max(parts_small) == 3 and max(parts_whole) == 1  # really chunked (3 tensors a group)
    for x, y in zip(small, whole, strict=True):
        assert torch.equal(x, y), f"max diff {(x - y).abs().max().item():.3e}"
    assert small_steps == whole_steps


@pytest.mark.parametrize("foreach", [False, True])
def test_step_sq_is_the_squared_length_of_the_last_step(foreach):
    """``step_sq`` keeps its meaning (old checkpoints): ``||x_{k+1} - x_k||^2``, a Python float.
    Two param groups of two tensors each: the step norms the update writes are kept between steps
    per batch (``_per_tensor_outputs``), and the groups' must not be the same tensors (they are
    read after the step's last batch)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2)).double()
    groups = [
        {"params": model[0].parameters()},
        {"params": model[2].parameters(), "lr": 0.01},
    ]
    opt = adaptim.AdaptiveHeavyBallAdam(groups, lr=0.03, foreach=foreach)
    for _ in range(3):
        before = [p.detach().clone() for p in model.parameters()]
        opt.zero_grad()
        model(torch.randn(5, 4, dtype=torch.float64)).pow(2).sum().backward()
        opt.step()
        for p, b in zip(model.parameters(), before, strict=True):
            step_sq = opt.state[p]["step_sq"]
            assert type(step_sq) is float
            assert step_sq > 0
            assert math.isclose(step_sq, (p.detach() - b).pow(2).sum().item(), rel_tol=1e-9)


@pytest.mark.parametrize("state_bits", [32, 8])
def test_step_norm_outputs_are_kept_between_steps(state_bits):
    """The 0-dim tensors the update writes its step norms into are made once per batch, not at
    every step (``_per_tensor_outputs``), with 8-bit states too, whose parts see each state dict
    through a view made anew at each step; and each step's ``step_sq`` is still its own."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 64))
    groups = [
        {"params": model[0].parameters()},
        {"params": model[2].parameters(), "lr": 0.01},
    ]
    opt = adaptim.AdaptiveHeavyBallAdam(groups, lr=0.03, foreach=False, state_bits=state_bits)
    sizes = []
    for _ in range(4):
        before = [p.detach().clone() for p in model.parameters()]
        opt.zero_grad()
        model(torch.randn(5, 64)).pow(2).sum().backward()
        opt.step()
        sizes.append(len(opt.__dict__.get("_per_tensor_outputs_cache", {})))
        for p, b in zip(model.parameters(), before, strict=True):
            assert math.isclose(
                opt.state[p]["step_sq"], (p.detach() - b).double().pow(2).sum().item(), rel_tol=1e-5
            )
    weight = model[0].weight  # 4,096 elements: quantized at 8 bits
    assert is_quantized(opt.state[weight], "exp_avg") == (state_bits == 8)
    assert sizes[0] >= 2  # one set per batch at least: the two groups
    assert sizes[-1] == sizes[1], sizes


@pytest.mark.parametrize("cls", [adaptim.AdaptiveHeavyBallSGD, adaptim.AdaptiveHeavyBallAdam])
def test_one_host_transfer_per_step(cls, monkeypatch):
    """``beta_k`` stays a device tensor: no .item()/float()/bool() in the multi-tensor step, and one
    ``tolist`` (the step lengths written to the states)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    opt = cls(model.parameters(), lr=0.05, weight_decay=0.01, foreach=True)
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
    assert all(s["step_sq"] > 0 for s in opt.state.values())  # the states really moved

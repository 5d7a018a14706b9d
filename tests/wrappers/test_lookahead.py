"""Lookahead against pytorch_optimizer.Lookahead (= official code for none/reset), a hand-computed
pullback, the optimizer contract of the wrapper, and the paper's noisy-quadratic claim."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import pytorch_optimizer
import torch

import adaptim
from helpers import assert_same_trajectory, bn_net, trajectory


def _inner(kind: str, params, foreach: bool = False):
    if kind == "sgd":
        return torch.optim.SGD(params, lr=0.05, momentum=0.9, foreach=foreach)
    if kind == "adam":
        return torch.optim.Adam(params, lr=1e-2, foreach=foreach)
    return adaptim.Adam(params, lr=1e-2, foreach=foreach)


ORACLE_CASES = [
    # (mode, inner, foreach, k, alpha)
    ("none", "sgd", False, 5, 0.8),
    ("none", "sgd", True, 3, 0.5),
    ("none", "adam", False, 5, 0.8),
    ("none", "adaptim_adam", False, 5, 0.8),
    ("none", "adaptim_adam", True, 3, 0.5),
    ("reset", "sgd", False, 5, 0.8),
    ("reset", "sgd", True, 3, 0.5),
    ("reset", "adaptim_adam", True, 5, 0.8),
]


@pytest.mark.parametrize("mode,inner,foreach,k,alpha", ORACLE_CASES, ids=str)
def test_matches_pytorch_optimizer(mode, inner, foreach, k, alpha):
    # pytorch_optimizer's reset writes a zero ``momentum_buffer`` only; restrict ours to that key so
    # that Adam inners compare like for like (for Adam the reset is then a no-op in both).
    assert_same_trajectory(
        lambda p: adaptim.Lookahead(
            _inner(inner, p, foreach),
            k=k,
            alpha=alpha,
            pullback_momentum=mode,
            momentum_keys=("momentum_buffer",),
        ),
        lambda p: pytorch_optimizer.Lookahead(
            _inner(inner.replace("adaptim_", ""), p), k=k, alpha=alpha, pullback_momentum=mode
        ),
        steps=40,
    )


def test_pullback_matches_pytorch_optimizer():
    assert_same_trajectory(
        lambda p: adaptim.Lookahead(_inner("sgd", p), k=4, alpha=0.6, pullback_momentum="pullback"),
        lambda p: pytorch_optimizer.Lookahead(
            _inner("sgd", p), k=4, alpha=0.6, pullback_momentum="pullback"
        ),
        steps=40,
    )


def test_pullback_by_hand():
    """f(x) = x^2 / 2 on one coordinate, SGD momentum 0.5, lr 0.1, k = 2, alpha = 0.5, three syncs.

    Written out with plain arithmetic from the paper's rule and the intended pullback
    m <- alpha m + (1 - alpha) m_slow, m_slow <- m (m_slow starts at 0). The official code's aliasing
    bug would make m_slow the live buffer, so the third sync would differ.
    """
    lr, mu, alpha = 0.1, 0.5, 0.5
    x, m, phi, m_slow = 1.0, None, 1.0, 0.0
    expected = []
    for _sync in range(3):
        for _ in range(2):
            g = x
            m = g if m is None else mu * m + g  # torch SGD: first buffer = g
            x = x - lr * m
            expected.append(x)
        phi = phi + alpha * (x - phi)
        x = phi
        m = alpha * m + (1 - alpha) * m_slow
        m_slow = m
        expected[-1] = x

    p = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    opt = adaptim.Lookahead(
        torch.optim.SGD([p], lr=lr, momentum=mu), k=2, alpha=alpha, pullback_momentum="pullback"
    )
    got = []
    for _ in range(6):
        opt.zero_grad()
        (0.5 * p**2).sum().backward()
        opt.step()
        got.append(p.item())
    assert got == pytest.approx(expected, abs=1e-15)
    buf = opt.optimizer.state[p]["momentum_buffer"]
    assert (
        opt.state[p]["lookahead_slow_momentum_buffer"].data_ptr() != buf.data_ptr()
    )  # a copy, no aliasing
    assert buf.item() == pytest.approx(m, abs=1e-15)


def test_reset_zeroes_adam_first_moment_only():
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = adaptim.Lookahead(adaptim.Adam([p], lr=0.1), k=2, pullback_momentum="reset")
    for _ in range(2):
        opt.zero_grad()
        (p**2).sum().backward()
        opt.step()
    state = opt.optimizer.state[p]
    assert torch.equal(state["exp_avg"], torch.zeros(2))
    assert (state["exp_avg_sq"] > 0).all()


def _run(model, opt, steps, seed=0):
    gen = torch.Generator().manual_seed(seed)
    data = [
        (
            torch.randn(16, 6, generator=gen, dtype=torch.float64),
            torch.randint(0, 3, (16,), generator=gen),
        )
        for _ in range(steps)
    ]
    for x, y in data:

        def closure(x=x, y=y):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            return loss

        opt.step(closure)


def _params(model):
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("mode", ["none", "reset", "pullback"])
def test_state_dict_round_trip_mid_cycle(mode):
    model = bn_net()
    make = lambda m: adaptim.Lookahead(  # noqa: E731
        torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9), k=5, pullback_momentum=mode
    )
    opt = make(model)
    _run(model, opt, 12)  # 12 = 2 syncs + 2 inner steps: slow weights differ from the fast ones
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    twin = copy.deepcopy(model)
    twin_opt = make(twin)
    buffer.seek(0)
    twin_opt.load_state_dict(torch.load(buffer, weights_only=False))
    assert twin_opt.lookahead_step == 2
    _run(model, opt, 9, seed=5)
    _run(twin, twin_opt, 9, seed=5)
    for a, b in zip(_params(model), _params(twin), strict=True):
        assert torch.equal(a, b)


def test_refuses_a_plain_optimizer_state_dict():
    model = bn_net()
    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    _run(model, sgd, 1)  # a plain optimizer's state dict with state (an empty one is harmless)
    opt = adaptim.Lookahead(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    with pytest.raises(ValueError, match=r"Lookahead\.state_dict"):
        opt.load_state_dict(sgd.state_dict())
    with pytest.raises(TypeError, match=r"torch\.optim\.Optimizer"):
        adaptim.Lookahead(model.parameters())


def test_deepcopy_and_pickle_continue_identically():
    model = bn_net()
    opt = adaptim.Lookahead(adaptim.Adam(model.parameters(), lr=1e-2), k=3)
    _run(model, opt, 4)
    pair = copy.deepcopy((model, opt))
    pickled = pickle.loads(pickle.dumps((model, opt)))
    _run(model, opt, 5, seed=3)
    for twin, twin_opt in (pair, pickled):
        _run(twin, twin_opt, 5, seed=3)
        for a, b in zip(_params(model), _params(twin), strict=True):
            assert torch.equal(a, b)


def test_slow_weights_context_swaps_and_restores():
    model = bn_net()
    opt = adaptim.Lookahead(torch.optim.SGD(model.parameters(), lr=0.1), k=5)
    _run(model, opt, 7)
    fast = _params(model)
    with opt.slow_weights():
        inside = _params(model)
    for p, f, s in zip(model.parameters(), fast, inside, strict=True):
        assert torch.equal(s, opt.state[p]["lookahead_slow_param"])
        assert torch.equal(p.detach(), f)
    assert any(not torch.equal(f, s) for f, s in zip(fast, inside, strict=True))


def test_is_an_optimizer_for_schedulers_groups_and_closures():
    model = bn_net()
    opt = adaptim.Lookahead(torch.optim.SGD(model[0].parameters(), lr=0.1), k=2)
    assert opt.param_groups is opt.optimizer.param_groups
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    opt.add_param_group({"params": list(model[3].parameters()), "lr": 0.2})
    new = next(iter(model[3].parameters()))
    assert (
        new not in opt.state
    )  # slow weights are created at the first step, as torch.optim's state
    x = torch.randn(8, 6, dtype=torch.float64)
    before = new.detach().clone()

    def closure():
        opt.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert isinstance(loss, torch.Tensor)
    assert torch.equal(opt.state[new]["lookahead_slow_param"], before)
    sched.step()
    assert opt.optimizer.param_groups[0]["lr"] == pytest.approx(0.05)
    opt.step(closure)  # k = 2: synchronises the new group too
    assert torch.equal(opt.state[new]["lookahead_slow_param"], new.detach())
    assert not torch.equal(new.detach(), before)
    opt.zero_grad()
    assert all(p.grad is None for group in opt.param_groups for p in group["params"])


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"k": 0}, "k"),
        ({"k": 2.5}, "k"),
        ({"alpha": 1.5}, "alpha"),
        ({"alpha": -0.1}, "alpha"),
        ({"pullback_momentum": "bad"}, "pullback_momentum"),
    ],
)
def test_bad_hyperparameters(kwargs, name):
    p = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match=name):
        adaptim.Lookahead(torch.optim.SGD([p], lr=0.1), **kwargs)


def test_bf16_slow_weights_are_fp32():
    p = torch.nn.Parameter(torch.randn(4).to(torch.bfloat16))
    opt = adaptim.Lookahead(torch.optim.SGD([p], lr=0.1), k=1)
    opt.zero_grad()
    p.float().pow(2).sum().backward()
    opt.step()
    assert opt.state[p]["lookahead_slow_param"].dtype == torch.float32
    assert torch.equal(p.detach(), opt.state[p]["lookahead_slow_param"].to(torch.bfloat16))


def test_noisy_quadratic_lower_steady_state_loss():
    """Paper Sec. 3 at toy scale: on a noisy quadratic, Lookahead lowers SGDM's steady-state loss."""
    h = torch.logspace(-2, 0, 20, dtype=torch.float64)

    def steady_loss(wrap: bool) -> float:
        gen = torch.Generator().manual_seed(0)
        x = torch.nn.Parameter(torch.ones(20, dtype=torch.float64))
        inner = torch.optim.SGD([x], lr=0.5, momentum=0.9)
        opt = adaptim.Lookahead(inner, k=5, alpha=0.5) if wrap else inner
        losses = []
        for t in range(3000):
            c = torch.randn(20, generator=gen, dtype=torch.float64)  # the minimum moves every step
            opt.zero_grad()
            (0.5 * h * (x - c) ** 2).sum().backward()
            opt.step()
            if t >= 1000:
                losses.append((0.5 * h * x.detach() ** 2).sum().item())
        return sum(losses) / len(losses)

    plain, lookahead = steady_loss(False), steady_loss(True)
    assert lookahead < 0.75 * plain, (plain, lookahead)


def test_trajectory_changes_with_alpha():
    """alpha = 1 recovers the inner optimizer; alpha < 1 does not (the comparison above is not vacuous)."""
    inner = trajectory(lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9), steps=12)
    same = trajectory(
        lambda p: adaptim.Lookahead(torch.optim.SGD(p, lr=0.05, momentum=0.9), alpha=1.0), steps=12
    )
    other = trajectory(
        lambda p: adaptim.Lookahead(torch.optim.SGD(p, lr=0.05, momentum=0.9)), steps=12
    )
    assert all(torch.equal(a, b) for a, b in zip(inner[-1], same[-1], strict=True))
    assert any(not torch.allclose(a, b) for a, b in zip(inner[-1], other[-1], strict=True))

"""MADA and AVGrad (Ozkara et al., ICML 2024): oracle, hand-written steps, and the hyper-gradient.

* With frozen coefficients at (beta3, c, rho) = (0, 1, 1) MADA is Adam with decoupled decay: oracle
  torch.optim.AdamW.
* AVGrad against a plain-tensor transcription of the reference code (gdtuo.Meta with rho = 0).
* The closed-form hyper-gradient against autograd through one step of the reference's equations.
* The Lion interpolation (``lion=True``, gdtuo.Meta's ``gamma``) against steps written out by hand on a
  2-by-2 problem, with ``gamma`` frozen and learned.
* The cache-blocked CPU update against one pass over the whole batch.
"""

from __future__ import annotations

import copy

import pytest
import torch

import adaptim
from adaptim.core import base
from adaptim.optimizers import mada
from helpers import assert_same_trajectory


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("kw", [dict(), dict(weight_decay=0.1, beta2=0.95, eps=1e-8)])
def test_mada_frozen_at_adam_equals_adamw(kw, foreach):
    frozen = dict(hyper_lr=(0.0,) * 5)
    assert_same_trajectory(
        lambda p: adaptim.MADA(p, lr=1e-2, foreach=foreach, **frozen, **kw),
        lambda p: torch.optim.AdamW(
            p,
            lr=1e-2,
            betas=(0.9, kw.get("beta2", 0.99)),
            eps=kw.get("eps", 1e-6),
            weight_decay=kw.get("weight_decay", 0.0),
        ),
    )


class _ReferenceAVGrad(torch.optim.Optimizer):
    """gdtuo.Meta with rho = 0, beta3 = 0, c = 1, gamma = 1, written out (no hyper-gradient)."""

    def __init__(self, params, lr, betas, eps, wd):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, wd=wd))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                s = self.state[p]
                if not s:
                    s["t"], s["m"], s["v"], s["vm"] = (
                        0,
                        torch.zeros_like(p),
                        torch.zeros_like(p),
                        torch.zeros_like(p),
                    )
                s["t"] += 1
                t, g = s["t"], p.grad
                s["m"] = b1 * s["m"] + (1 - b1) * g
                s["v"] = b2 * s["v"] + (1 - b2) * g * g
                s["vm"] = (s["v"] + (t - 1) * s["vm"]) / t
                m_hat = s["m"] / (1 - b1**t)
                v_hat = s["vm"] / (1 - b2**t)
                p.mul_(1 - group["lr"] * group["wd"])
                p.sub_(group["lr"] * m_hat / (v_hat.sqrt() + group["eps"]))


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("kw", [dict(), dict(betas=(0.8, 0.95), eps=1e-8, weight_decay=0.1)])
def test_avgrad_matches_reference_equations(kw, foreach):
    betas, eps, wd = kw.get("betas", (0.9, 0.99)), kw.get("eps", 1e-6), kw.get("weight_decay", 0.0)
    assert_same_trajectory(
        lambda p: adaptim.AVGrad(p, lr=1e-2, foreach=foreach, **kw),
        lambda p: _ReferenceAVGrad(p, 1e-2, betas, eps, wd),
    )


def test_mada_at_rho_zero_is_avgrad():
    assert_same_trajectory(
        lambda p: adaptim.MADA(p, lr=1e-2, rho=0.0, hyper_lr=(0.0,) * 5),
        lambda p: adaptim.AVGrad(p, lr=1e-2),
    )


def _reference_update(g, g_prev, m, v, v_mean, n, t, h, eps, m_lion=None):
    """One update direction of gdtuo.Meta as a differentiable function of h = (b1, b2, b3, rho, c[, gamma]).

    With ``m_lion`` (Lion's momentum before the step) the direction is gdtuo.Meta's
    ``gamma * u + (1 - gamma) * sign(0.95 * m_lion_new + 0.05 * g)``, ``m_lion_new = 0.98 m_lion + 0.02 g``.
    """
    b1, b2, b3, rho, c = h[:5]
    g_hat = g + b3 * (g - g_prev)
    g_tilde_sq = c * g_hat * g_hat + (1 - c) * (v + g_hat * g_hat * torch.sign(g_hat * g_hat - v))
    m_new = b1 * m + (1 - b1) * g
    v_new = b2 * v + (1 - b2) * g_tilde_sq
    n_new = b3 * n + (1 - b3) * (g - g_prev)
    v_mean_new = ((v_new + (t - 1) * v_mean) / t).detach()
    m_hat = m_new / (1 - b1**t)
    v_hat = (rho * v_new + (1 - rho) * v_mean_new) / (1 - b2**t)
    u = (m_hat + b3 * n_new) / (v_hat**0.5 + eps)
    if m_lion is None:
        return u
    gamma = h[5]
    m_lion_new = 0.98 * m_lion + 0.02 * g
    return gamma * u + (1 - gamma) * torch.sign(0.95 * m_lion_new + 0.05 * g)


@pytest.mark.parametrize("lion", [False, True])
@pytest.mark.parametrize("foreach", [False, True])
def test_hypergradient_derivatives_match_autograd(foreach, lion):
    torch.manual_seed(0)
    x = torch.nn.Parameter(torch.randn(3, 4, dtype=torch.float64))
    extra = dict(lion=True, gamma=0.7, gamma_hyper_lr=1e-4) if lion else {}
    opt = adaptim.MADA(
        [x], lr=0.05, beta3=0.3, rho=0.6, c=0.7, hyper_lr=(1e-4,) * 5, foreach=foreach, **extra
    )
    names = ("beta1", "beta2", "beta3", "rho", "c") + (("gamma",) if lion else ())
    for _ in range(3):
        x.grad = torch.randn(3, 4, dtype=torch.float64)
        opt.step()
    state = opt.state[x]
    snap = {k: v.clone() for k, v in state.items() if isinstance(v, torch.Tensor)}
    x.grad = torch.randn(3, 4, dtype=torch.float64)
    opt.step()
    group = opt.param_groups[0]
    h = [torch.tensor(group[k], dtype=torch.float64, requires_grad=True) for k in names]
    u = _reference_update(
        x.grad,
        snap["prev_grad"],
        snap["exp_avg"],
        snap["exp_avg_sq"],
        snap["exp_avg_sq_mean"],
        snap["diff_avg"],
        4,
        h,
        group["eps"],
        snap["lion_exp_avg"] if lion else None,
    )
    probe = torch.randn(3, 4, dtype=torch.float64)  # <probe, lr du/dh> for every h
    auto = torch.autograd.grad((probe * u).sum() * group["lr"], h)
    for name, a in zip(names, auto, strict=True):
        ours = (probe * state[f"d_{name}"]).sum()
        assert abs(a.item()) > 1e-8
        torch.testing.assert_close(ours, a, atol=1e-12, rtol=1e-9, msg=name)
    # the next step moves each coefficient by -hyper_lr * (-<g, lr du/dh>), then projects
    before = {k: group[k] for k in names}
    x.grad = torch.randn(3, 4, dtype=torch.float64)
    expected = {k: before[k] + 1e-4 * (x.grad * state[f"d_{k}"]).sum().item() for k in before}
    opt.step()
    for k, value in expected.items():
        assert group[k] == pytest.approx(value, abs=1e-15)
        assert group[k] != before[k]


def test_coefficients_are_projected_and_clipped():
    x = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
    opt = adaptim.MADA(
        [x], beta3=0.0, rho=1.0, hyper_lr=(0.0, 0.0, 1e3, 1e3, 0.0), hypergrad_clip=0.5
    )
    for g in ([1.0, -1.0], [-2.0, 3.0], [0.5, 0.5]):
        x.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
    group = opt.param_groups[0]
    assert 0.0 <= group["beta3"] <= 0.99 and 0.0 <= group["rho"] <= 1.0
    assert group["beta1"] == 0.9 and group["c"] == 1.0  # not learned


@pytest.mark.parametrize(
    "name, lion",
    [(h, False) for h in ("beta1", "beta2", "beta3", "rho", "c")]
    + [("gamma", True), ("beta1", True)],
)
def test_hypergradient_is_the_derivative_of_the_next_loss(name, lion):
    # End to end: d L(x_t) / d h_{t-1}, by central finite differences of the real step, equals the
    # hyper-gradient -<g_t, lr du_{t-1}/dh> the optimizer descends. Like the reference, the hyper-gradient
    # treats the time-average v_avg as a constant, so for the coefficients that act on v (beta2, beta3, c)
    # the comparison is exact at rho = 1, where v_avg does not enter the step.
    # With Lion the step is gamma u + (1 - gamma) sign(.): linear in gamma, and gamma scales du/dh.
    rho = 0.5 if name in ("beta1", "rho", "gamma") else 1.0
    kw = dict(lr=0.05, beta3=0.2, rho=rho, c=0.5, hyper_lr=(1e-300,) * 5)
    if lion:
        kw.update(lion=True, gamma=0.6, gamma_hyper_lr=1e-300)
    a = torch.diag(torch.logspace(-1, 1, 6, dtype=torch.float64))
    b = torch.linspace(-1, 1, 6, dtype=torch.float64)

    def loss(x):
        return 0.5 * x @ a @ x + b @ x + 0.1 * (x**4).sum()

    x = torch.nn.Parameter(torch.ones(6, dtype=torch.float64))
    opt = adaptim.MADA([x], **kw)
    for _ in range(5):
        opt.zero_grad()
        loss(x).backward()
        opt.step()
    opt.zero_grad()
    loss(x).backward()

    def next_loss(delta):
        x2 = copy.deepcopy(x)
        opt2 = adaptim.MADA([x2], **kw)
        opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
        x2.grad = x.grad.clone()
        opt2._before_update = lambda prepared: None  # keep h_{t-1} as set
        opt2.param_groups[0][name] += delta
        opt2.step()
        return loss(x2).item(), x2, opt2

    h = 1e-6
    fd = (next_loss(h)[0] - next_loss(-h)[0]) / (2 * h)
    _, x2, opt2 = next_loss(0.0)
    x2.grad = None
    loss(x2).backward()
    hypergrad = -(x2.grad * opt2.state[x2][f"d_{name}"]).sum().item()
    assert abs(fd) > 1e-6
    assert hypergrad == pytest.approx(fd, rel=1e-5, abs=1e-9)


PATH_VARIANTS = [
    dict(),  # Adam start, all five coefficients learned
    dict(hyper_lr=(0.0,) * 5),  # frozen: the cheap path
    dict(beta3=0.3, rho=0.5, c=0.4),  # every term of the interpolation
    dict(beta3=0.3, rho=0.5, c=0.4, hyper_lr=(0.0,) * 5),
    dict(rho=0.0, c=0.0, beta3=0.5, weight_decay=0.1),  # rho, c at the ends of their ranges
    dict(hyper_lr=(1e-3, 0.0, 0.0, 0.1, 0.0)),  # some learned, some frozen
    dict(hyper_lr=(0.0, 1e-3, 0.1, 0.0, 0.1), c=0.5, rho=0.7, beta3=0.1, maximize=True),
    dict(lion=True),  # Lion interpolation, gamma learned from 1
    dict(lion=True, gamma=0.4, beta3=0.3, rho=0.5, c=0.4, weight_decay=0.1),
    dict(lion=True, gamma=0.4, hyper_lr=(0.0,) * 5, gamma_hyper_lr=0.0),  # frozen: the cheap path
    dict(lion=True, gamma=0.6, hyper_lr=(0.0,) * 5, lion_betas=(0.9, 0.99)),  # only gamma learned
]


def _run_paths(foreach: bool, kw: dict, steps: int = 40):
    gen = torch.Generator().manual_seed(0)
    shapes = [(3, 4), (5,), (2, 2, 2), (0,)]
    params = [
        torch.nn.Parameter(torch.randn(s, generator=gen, dtype=torch.float64)) for s in shapes
    ]
    opt = adaptim.MADA(params, lr=0.02, foreach=foreach, **kw)
    for k in range(steps):
        for j, p in enumerate(params):
            if j == 1 and k < 3:  # frozen, then unfrozen: tensors at different steps
                p.grad = None
                continue
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            p.grad = noise + 0.3 * p.detach()
        opt.step()
    group = {k: opt.param_groups[0][k] for k in ("beta1", "beta2", "beta3", "rho", "c", "gamma")}
    states = [{k: v.clone() for k, v in opt.state[p].items() if torch.is_tensor(v)} for p in params]
    return [p.detach().clone() for p in params], group, states


@pytest.mark.parametrize("kw", PATH_VARIANTS, ids=[str(i) for i in range(len(PATH_VARIANTS))])
def test_multi_tensor_path_equals_per_tensor_path(kw):
    """Parameters, every state (the derivative states too) and the learned coefficients, in float64."""
    ref_params, ref_group, ref_states = _run_paths(False, kw)
    params, group, states = _run_paths(True, kw)
    moved = max((p.abs().max().item() for p in ref_params if p.numel()), default=0.0)
    assert moved > 0
    for a, b in zip(ref_params, params, strict=True):
        torch.testing.assert_close(b, a, atol=1e-10, rtol=0)
    for sa, sb in zip(ref_states, states, strict=True):
        assert sa.keys() == sb.keys()
        for key in sa:
            scale = max(sa[key].abs().max().item(), 1.0) if sa[key].numel() else 1.0
            torch.testing.assert_close(sb[key], sa[key], atol=1e-10 * scale, rtol=0, msg=key)
    for key, value in ref_group.items():
        assert group[key] == pytest.approx(value, abs=1e-12), key
    learned = [h for h, k in zip(ref_group, kw.get("hyper_lr", (1,) * 5), strict=False) if k > 0]
    assert any(f"d_{h}" in ref_states[0] for h in learned) or not learned


def test_multi_tensor_path_never_writes_the_gradients():
    x = torch.nn.Parameter(torch.randn(4, 3, dtype=torch.float64))
    opt = adaptim.MADA([x], beta3=0.3, rho=0.5, c=0.4, foreach=True)
    for _ in range(3):
        x.grad = torch.randn(4, 3, dtype=torch.float64)
        before = x.grad.clone()
        opt.step()
        assert torch.equal(x.grad, before)
        assert all(
            v.data_ptr() != x.grad.data_ptr() for v in opt.state[x].values() if torch.is_tensor(v)
        )


# -- the Lion interpolation (gdtuo.Meta's gamma), by hand on a 2-by-2 problem -------------------------

X0 = [[1.0, -2.0], [0.5, 3.0]]
# Fixed gradients (no model): element [0][0] goes 1.0 then -0.3, where gdtuo.Meta's Lion direction
# (sign of an interpolation with the *new* Lion momentum) and Lion's own (with the old one) differ.
GRADS = [
    [[1.0, -1.0], [0.25, 2.0]],
    [[-0.3, 0.8], [0.1, -1.5]],
    [[0.7, 0.2], [-0.4, 0.9]],
]


def _mada_on_fixed_grads(steps: int, **kw):
    x = torch.nn.Parameter(torch.tensor(X0, dtype=torch.float64))
    opt = adaptim.MADA([x], **kw)
    out = []
    for g in GRADS[:steps]:
        x.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
        out.append((x.detach().clone(), opt.param_groups[0]["gamma"]))
    return out, opt.state[x]


@pytest.mark.parametrize("foreach", [False, True])
def test_lion_interpolation_matches_steps_by_hand(foreach):
    """Adam start (beta3 = 0, rho = c = 1), gamma frozen at 0.6: x -= lr (0.6 adam + 0.4 lion)."""
    lr, b1, b2, eps, lb1, lb2, gamma = 0.1, 0.9, 0.99, 1e-6, 0.95, 0.98, 0.6
    ours, _ = _mada_on_fixed_grads(
        3,
        lr=lr,
        lion=True,
        gamma=gamma,
        gamma_hyper_lr=0.0,
        hyper_lr=(0.0,) * 5,
        foreach=foreach,
    )
    x = torch.tensor(X0, dtype=torch.float64)
    m = torch.zeros(2, 2, dtype=torch.float64)
    v = torch.zeros(2, 2, dtype=torch.float64)
    m_lion = torch.zeros(2, 2, dtype=torch.float64)
    for t, (g, (x_ours, gamma_ours)) in enumerate(zip(GRADS, ours, strict=True), start=1):
        g = torch.tensor(g, dtype=torch.float64)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        lion_own = torch.sign(lb1 * m_lion + (1 - lb1) * g)  # Lion (Chen et al.): old momentum
        m_lion = lb2 * m_lion + (1 - lb2) * g
        lion = torch.sign(lb1 * m_lion + (1 - lb1) * g)  # gdtuo.Meta: new momentum
        if t == 2:
            assert lion[0, 0] == -1 and lion_own[0, 0] == 1  # the test tells the two apart
        adam = (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps)
        x = x - lr * (gamma * adam + (1 - gamma) * lion)
        torch.testing.assert_close(x_ours, x, atol=1e-14, rtol=0)
        assert gamma_ours == gamma


@pytest.mark.parametrize("foreach", [False, True])
def test_learned_gamma_follows_its_hypergradient_by_hand(foreach):
    """Only gamma learned: gamma_t = clip01(gamma - k clip(-<g_t, lr (adam_{t-1} - lion_{t-1})>))."""
    lr, b1, b2, eps, lb1, lb2, k = 0.1, 0.9, 0.99, 1e-6, 0.95, 0.98, 0.1
    ours, state = _mada_on_fixed_grads(
        3, lr=lr, lion=True, gamma=0.5, gamma_hyper_lr=k, hyper_lr=(0.0,) * 5, foreach=foreach
    )
    x = torch.tensor(X0, dtype=torch.float64)
    m = torch.zeros(2, 2, dtype=torch.float64)
    v = torch.zeros(2, 2, dtype=torch.float64)
    m_lion = torch.zeros(2, 2, dtype=torch.float64)
    gamma, direction = 0.5, None
    for t, (g, (x_ours, gamma_ours)) in enumerate(zip(GRADS, ours, strict=True), start=1):
        g = torch.tensor(g, dtype=torch.float64)
        if direction is not None:  # dL(x_t)/dgamma = <g_t, dx_t/dgamma> = -lr <g_t, adam - lion>
            hypergrad = -lr * (g * direction).sum().item()
            gamma = min(max(gamma - k * min(max(hypergrad, -10.0), 10.0), 0.0), 1.0)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_lion = lb2 * m_lion + (1 - lb2) * g
        lion = torch.sign(lb1 * m_lion + (1 - lb1) * g)
        adam = (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps)
        x = x - lr * (gamma * adam + (1 - gamma) * lion)
        direction = adam - lion
        assert gamma_ours == pytest.approx(gamma, abs=1e-15)
        torch.testing.assert_close(x_ours, x, atol=1e-14, rtol=0)
    assert ours[1][1] != 0.5 and ours[2][1] != ours[1][1]  # gamma did move
    torch.testing.assert_close(state["d_gamma"], lr * direction, atol=1e-15, rtol=0)


def test_lion_off_is_gamma_one_and_keeps_no_lion_state():
    base = dict(lr=1e-2, beta3=0.2, rho=0.5, c=0.5)
    assert_same_trajectory(
        lambda p: adaptim.MADA(p, **base),
        lambda p: adaptim.MADA(p, lion=True, gamma=1.0, gamma_hyper_lr=0.0, **base),
        atol=1e-13,
    )
    ours, state = _mada_on_fixed_grads(2)
    assert "lion_exp_avg" not in state and "d_gamma" not in state
    assert ours[-1][1] == 1.0


def test_gamma_below_one_needs_lion():
    x = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="gamma"):
        adaptim.MADA([x], gamma=0.5)
    opt = adaptim.MADA([x])
    with pytest.raises(ValueError, match="gamma"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))], "gamma": 0.5})
    with pytest.raises(ValueError, match="lion_betas"):
        adaptim.MADA([x], lion=True, lion_betas=(0.95, 1.5))


def test_checkpoint_without_the_lion_keys_still_loads():
    """A state dict saved before ``lion`` existed loads, and continues as lion=False."""
    x = torch.nn.Parameter(torch.tensor(X0, dtype=torch.float64))
    opt = adaptim.MADA([x], lr=0.05)
    for g in GRADS[:2]:
        x.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
    saved = copy.deepcopy(opt.state_dict())
    for group in saved["param_groups"]:
        for key in ("lion", "gamma", "gamma_hyper_lr", "lion_betas"):
            del group[key]
    x2 = torch.nn.Parameter(x.detach().clone())
    opt2 = adaptim.MADA([x2], lr=0.05)
    opt2.load_state_dict(saved)
    assert opt2.param_groups[0]["lion"] is False
    x.grad = torch.tensor(GRADS[2], dtype=torch.float64)
    x2.grad = x.grad.clone()
    opt.step()
    opt2.step()
    assert torch.equal(x, x2)


# -- the cache-blocked CPU update ---------------------------------------------------------------------


def _run_blocked(monkeypatch, block: int, small: int, kw: dict, steps: int):
    monkeypatch.setattr(base, "CPU_CHUNK_BYTES", block * 8)  # float64: chunks of the update
    monkeypatch.setattr(mada, "CPU_BLOCK_NUMEL", block)  # pieces of the dot products
    monkeypatch.setattr(mada, "SMALL_DOT_NUMEL", small)
    gen = torch.Generator().manual_seed(0)
    shapes = [(7, 5), (3,), (4, 6), (0,), (6, 4)]
    params = [
        torch.nn.Parameter(torch.randn(s, generator=gen, dtype=torch.float64)) for s in shapes
    ]
    params.append(torch.nn.Parameter(torch.randn(5, 8, generator=gen, dtype=torch.float64).t()))
    opt = adaptim.MADA(params, lr=0.02, foreach=True, **kw)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64) + 0.3 * p.detach()
        opt.step()
    states = [{k: v.clone() for k, v in opt.state[p].items() if torch.is_tensor(v)} for p in params]
    coefficients = {k: opt.param_groups[0][k] for k in (*mada.COEFFICIENTS, "gamma")}
    return [p.detach().clone() for p in params], states, coefficients


@pytest.mark.parametrize(
    "kw",
    [dict(hyper_lr=(0.0,) * 5, beta3=0.3, rho=0.5, c=0.4), dict(lion=True, beta3=0.3, c=0.5)],
    ids=["frozen", "learned"],
)
def test_cache_blocked_update_equals_one_pass(monkeypatch, kw):
    """Chunks of 8 elements (every tensor its own chunk; the base class's piece cutting is tested in
    tests/test_conformance.py) against one pass: bit-identical updates. The hyper-gradient dot products, per tensor, per 8-element
    piece or over the concatenated small tensors, are summed in other orders: equal to rounding."""
    for steps in (1, 12):  # step 1 has no hyper-step: bit-identical states, derivatives included
        whole = _run_blocked(monkeypatch, 10**9, 0, kw, steps)  # one vdot per tensor
        exact = steps == 1 or "hyper_lr" in kw
        for block, small in ((8, 0), (10**9, 10**9)):  # pieces of 8 / one concatenation
            other = _run_blocked(monkeypatch, block, small, kw, steps)
            for a, b in zip(whole[0], other[0], strict=True):
                assert torch.equal(a, b) if exact else torch.allclose(a, b, atol=1e-12, rtol=0)
            for sa, sb in zip(whole[1], other[1], strict=True):
                assert sa.keys() == sb.keys()
                for key in sa:
                    same = torch.equal(sa[key], sb[key])
                    assert same if exact else torch.allclose(sa[key], sb[key], atol=1e-10, rtol=0)
            for key, value in whole[2].items():
                assert other[2][key] == pytest.approx(value, abs=1e-12)
    assert whole[2]["gamma"] != 1.0 or "hyper_lr" in kw  # the learned case did learn


# -- AVGrad at the edges of the float range -------------------------------------------------------


@pytest.mark.parametrize("foreach", [False, True])
def test_avgrad_huge_gradients_leave_the_coordinate_still_as_adam_does(foreach):
    """``g = 1e30`` (float32): ``g^2`` overflows, ``v`` is inf and so must be its running mean (not
    NaN from inf - inf, at the first two steps' lerp or later), so that the coordinate does not move
    (``m / inf = 0``), as with ``torch.optim.Adam``; the other parameters are unaffected."""
    big, small = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(4))
    ref_big, ref_small = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(4))
    opt = adaptim.AVGrad([big, small], lr=0.1, foreach=foreach)
    adam = torch.optim.Adam([ref_big], lr=0.1)
    plain = adaptim.AVGrad([ref_small], lr=0.1, foreach=foreach)
    for k in range(5):  # t = 1, 2 (lerp's upper branch) and t >= 3
        big.grad, ref_big.grad = torch.full_like(big, 1e30), torch.full_like(big, 1e30)
        small.grad = ref_small.grad = torch.full_like(small, 1.0 + k)
        opt.step()
        adam.step()
        plain.step()
        assert torch.isfinite(big).all(), f"step {k + 1}"
        assert torch.equal(big, ref_big)  # Adam: m / inf = 0, the coordinate stands still
        assert torch.equal(small, ref_small)
    assert torch.isinf(opt.state[big]["exp_avg_sq_mean"]).all()


@pytest.mark.parametrize("foreach", [False, True])
def test_avgrad_all_zero_gradients_stay_finite(foreach):
    w = torch.nn.Parameter(torch.ones(3))
    opt = adaptim.AVGrad([w], lr=0.1, foreach=foreach)
    for _ in range(3):
        w.grad = torch.zeros_like(w)
        opt.step()
    assert torch.equal(w.detach(), torch.ones(3))
    w.grad = torch.full_like(w, 0.5)
    opt.step()
    assert torch.isfinite(w).all() and (w < 1).all()


# -- MADA at the edges of the float range -----------------------------------------------------------

HUGE_PATTERNS = {
    "constant": lambda k, shape: torch.full(shape, 1e30),
    "alternating": lambda k, shape: torch.full(shape, 1e30 * (-1) ** k),
    # huge and ordinary elements in one tensor, signs and sizes changing every step
    "mixed": lambda k, shape: (
        torch.randn(shape, generator=torch.Generator().manual_seed(k))
        * torch.tensor([1e30, 1.0]).repeat(shape.numel())[: shape.numel()].reshape(shape)
    ),
    "spike": lambda k, shape: torch.full(shape, 1e30 if k == 2 else 0.5 + k),  # then ordinary again
}


@pytest.mark.parametrize("pattern", list(HUGE_PATTERNS))
@pytest.mark.parametrize("lion", [False, True])
@pytest.mark.parametrize("foreach", [False, True])
def test_huge_gradients_keep_everything_finite(foreach, lion, pattern):
    """float32 gradients of 1e30 (their squares, and the Adan product ``d g_hat`` of the ``beta3``
    derivative, overflow) with the default learned coefficients, and with Lion: after every step the
    parameters, every state (the derivative states too) and the coefficients are finite."""
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(5))]
    opt = adaptim.MADA(params, lion=lion, foreach=foreach)
    for k in range(6):
        for p in params:
            p.grad = HUGE_PATTERNS[pattern](k, p.shape)
        opt.step()
        for i, p in enumerate(params):
            assert torch.isfinite(p).all(), f"step {k + 1}: parameter {i}"
            for key, value in opt.state[p].items():
                if torch.is_tensor(value) and value.is_floating_point():
                    assert torch.isfinite(value).all(), f"step {k + 1}: state {key!r} of {i}"
        group = opt.param_groups[0]
        for h in (*mada.COEFFICIENTS, "gamma"):
            lo, hi = mada.RANGES[h]
            assert lo <= group[h] <= hi, f"step {k + 1}: {h} = {group[h]}"
    assert {f"d_{h}" for h in mada.COEFFICIENTS} <= opt.state[params[0]].keys()


@pytest.mark.parametrize("foreach", [False, True])
def test_a_huge_gradient_is_clipped_and_steps_as_adam_would(foreach):
    """A gradient element beyond ``_clip_bound`` (2**57 in float32) is clipped to it, so a constant
    1e30 moves its coordinate by about ``lr`` a step, as Adam does with any constant gradient in exact
    arithmetic (``torch.optim.Adam`` stands still: ``m / sqrt(inf) = 0``); ordinary elements of the
    same tensor step exactly as without the huge ones (frozen coefficients: the update is elementwise)."""
    assert mada._clip_bound(torch.float32) == 2.0**57
    assert mada._clip_bound(torch.float64) == 2.0**505
    frozen = dict(lr=0.1, hyper_lr=(0.0,) * 5, foreach=foreach)
    x, ref = torch.nn.Parameter(torch.zeros(4)), torch.nn.Parameter(torch.zeros(4))
    opt, opt_ref = adaptim.MADA([x], **frozen), adaptim.MADA([ref], **frozen)
    for k in range(5):
        x.grad = torch.tensor([1e30, -1e30, 0.3 * k, -2.0])
        ref.grad = torch.tensor([1.0, -1.0, 0.3 * k, -2.0])
        opt.step()
        opt_ref.step()
        assert torch.equal(x[2:], ref[2:])
        torch.testing.assert_close(x[:2], ref[:2], rtol=1e-5, atol=0)
        torch.testing.assert_close(x[:2], torch.tensor([-0.1, 0.1]) * (k + 1), rtol=1e-5, atol=0)
    assert opt.state[x]["prev_grad"][0] == 2.0**57  # the clipped gradient, never inf


@pytest.mark.parametrize("foreach", [False, True])
def test_a_nan_hypergradient_skips_that_hyper_step(foreach):
    """Gradients near the float32 maximum make the dot product <g, lr du/dgamma> overflow to
    inf - inf = NaN at the third step: ``gamma`` keeps its value for that step instead of turning NaN."""
    x = torch.nn.Parameter(torch.zeros(4))
    opt = adaptim.MADA([x], lr=2.0, lion=True, gamma=0.5, hyper_lr=(0.0,) * 5, foreach=foreach)
    grads = [[3e38, -3e38, 3e38, -3e38], [-3e38, 3e38, 3e38, -3e38], [3e38, 3e38, -3e38, -3e38]]
    for k, g in enumerate(grads):
        x.grad = torch.tensor(g)
        if k == 2:  # the premise: the hyper-gradient of this step is NaN
            assert torch.vdot(x.grad, opt.state[x]["d_gamma"]).isnan()
        opt.step()
        assert opt.param_groups[0]["gamma"] == 0.5  # the first two dot products are 0
        assert torch.isfinite(x).all()

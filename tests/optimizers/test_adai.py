"""Adai and AdaiV2 against pytorch_optimizer.Adai (4.1.0) and against steps computed by hand.

``pytorch_optimizer.Adai`` follows the reference code (github.com/zeke-xie/adaptive-inertia-adai)
except that it clamps the global mean of ``v_hat`` from below at ``eps``; on the test network that mean
is above ``eps``, so the trajectories agree to rounding. The hand-computed test uses small gradients
(mean below ``eps``) and pins the reference code's unclamped mean.
"""

from __future__ import annotations

import copy

import pytest
import torch
from pytorch_optimizer import Adai as OracleAdai
from torch import nn

import adaptim
from adaptim.core import base
from helpers import assert_same_trajectory


def two_groups(params, **second):
    """The global mean runs over all groups: split the network into two groups."""
    params = list(params)
    return [{"params": params[:3]}, {"params": params[3:], **second}]


def oracle_kwargs(kw: dict, decoupled_default: bool) -> dict:
    kw = dict(kw)
    kw["weight_decouple"] = kw.pop("decoupled_weight_decay", decoupled_default)
    return kw


ADAI_CASES = [
    dict(),
    dict(weight_decay=0.05),
    dict(weight_decay=0.05, decoupled_weight_decay=True),
    dict(betas=(0.3, 0.9), eps=1e-4),
]


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("kw", ADAI_CASES, ids=str)
def test_adai_matches_pytorch_optimizer(kw, foreach):
    assert_same_trajectory(
        lambda p: adaptim.Adai(p, lr=0.1, foreach=foreach, **kw),
        lambda p: OracleAdai(p, lr=0.1, foreach=False, **oracle_kwargs(kw, False)),
    )


@pytest.mark.parametrize("foreach", [False, True])
def test_adai_global_mean_spans_param_groups(foreach):
    assert_same_trajectory(
        lambda p: adaptim.Adai(two_groups(p, lr=0.03), lr=0.1, foreach=foreach),
        lambda p: OracleAdai(two_groups(p, lr=0.03), lr=0.1, foreach=False),
    )


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize(
    "kw",
    [
        dict(dampening=0.5),
        dict(dampening=0.0, weight_decay=0.05),
        dict(dampening=0.7, weight_decay=0.05, decoupled_weight_decay=False),
    ],
    ids=str,
)
def test_adaiv2_matches_pytorch_optimizer_with_dampening(kw, foreach):
    assert_same_trajectory(
        lambda p: adaptim.AdaiV2(p, lr=0.1, foreach=foreach, **kw),
        lambda p: OracleAdai(p, lr=0.1, foreach=False, **oracle_kwargs(kw, True)),
    )


# -- hand-computed steps --------------------------------------------------------------------------


def _problem(w: torch.Tensor, b: torch.Tensor, step: int) -> torch.Tensor:
    """A 2-by-2 least-squares problem with a bias; small residuals (mean v_hat below eps=1e-3)."""
    a = torch.tensor([[0.1, 0.2], [-0.05, 0.15]], dtype=torch.float64) * (1 + 0.25 * step)
    y = torch.tensor([[0.02, -0.03], [0.01, 0.04]], dtype=torch.float64)
    return 0.15 * ((a @ w + b - y) ** 2).sum()


def _grads(w, b, step):
    w = w.detach().clone().requires_grad_(True)
    b = b.detach().clone().requires_grad_(True)
    _problem(w, b, step).backward()
    return w.grad, b.grad


W0 = [[0.3, -0.2], [0.1, 0.4]]
B0 = [0.05, -0.02]


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("decoupled", [True, False])
def test_adaiv2_hand_computed_steps(foreach, decoupled):
    lr, b0, b2, eps, wd, d = 0.5, 0.1, 0.99, 1e-3, 0.02, 0.5
    w = nn.Parameter(torch.tensor(W0, dtype=torch.float64))
    b = nn.Parameter(torch.tensor(B0, dtype=torch.float64))
    opt = adaptim.AdaiV2(
        [w, b],
        lr=lr,
        betas=(b0, b2),
        eps=eps,
        weight_decay=wd,
        dampening=d,
        decoupled_weight_decay=decoupled,
        foreach=foreach,
    )
    ew, eb = torch.tensor(W0, dtype=torch.float64), torch.tensor(B0, dtype=torch.float64)
    m = [torch.zeros(2, 2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)]
    v = [torch.zeros(2, 2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)]
    prod = [torch.ones(2, 2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)]
    means = []
    for t in range(1, 5):
        opt.zero_grad()
        _problem(w, b, t - 1).backward()
        opt.step()

        gs = list(_grads(ew, eb, t - 1))
        ps = [ew, eb]
        if decoupled:
            ps = [p * (1 - lr * wd) for p in ps]
        else:
            gs = [g + wd * p for g, p in zip(gs, ps, strict=True)]
        v = [b2 * vi + (1 - b2) * g * g for vi, g in zip(v, gs, strict=True)]
        v_hat = [vi / (1 - b2**t) for vi in v]
        mean = (v_hat[0].sum() + v_hat[1].sum()) / 6  # over all 6 coordinates of both tensors
        means.append(mean.item())
        new = []
        for i in range(2):
            beta1 = (1 - b0 * (v_hat[i] / mean) ** (1 / (3 - 2 * d))).clamp(0, 1 - eps)
            prod[i] = prod[i] * beta1
            m[i] = beta1 * m[i] + (1 - beta1) ** d * gs[i]
            new.append(ps[i] - lr * b0 ** (1 - d) * m[i] / (1 - prod[i]))
        ew, eb = new
        torch.testing.assert_close(w.detach(), ew, atol=1e-12, rtol=0)
        torch.testing.assert_close(b.detach(), eb, atol=1e-12, rtol=0)
    assert max(means) < eps  # the regime where pytorch_optimizer would clamp the mean to eps


def test_adai_equals_adaiv2_with_dampening_one():
    def run(cls, **kw):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
        opt = cls(model.parameters(), lr=0.2, weight_decay=0.01, **kw)
        gen = torch.Generator().manual_seed(3)
        for _ in range(10):
            x = torch.randn(5, 3, generator=gen, dtype=torch.float64)
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
        return [p.detach().clone() for p in model.parameters()]

    a = run(adaptim.Adai, decoupled_weight_decay=True)
    b = run(adaptim.AdaiV2, dampening=1.0)
    c = run(adaptim.AdaiV2, dampening=0.5)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, atol=0, rtol=0)
    assert any(not torch.allclose(x, z) for x, z in zip(a, c, strict=True))


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("cls, kwargs", [(adaptim.Adai, {}), (adaptim.AdaiV2, {"dampening": 0.5})])
def test_all_zero_gradients_give_no_nan(cls, kwargs, foreach):
    # The reference code divides 0 by 0 here; we take v_hat / v_bar = 0 (beta1 = 1 - eps); AdaiV2
    # the same, with the dampening's powers.
    w = nn.Parameter(torch.ones(3, dtype=torch.float64))
    opt = cls([w], lr=0.1, foreach=foreach, **kwargs)
    for _ in range(3):
        w.grad = torch.zeros_like(w)
        opt.step()
    assert torch.equal(w.detach(), torch.ones(3, dtype=torch.float64))
    w.grad = torch.full_like(w, 0.5)
    opt.step()
    assert torch.isfinite(w).all() and (w < 1).all()


# -- the two passes: cache blocking, no host synchronization, FSDP2 --------------------------------

BLOCKING_CASES = [
    (adaptim.Adai, dict(weight_decay=0.05)),  # L2: g + wd p recomputed in each pass
    (adaptim.Adai, dict(weight_decay=0.05, decoupled_weight_decay=True)),
    (adaptim.AdaiV2, dict(dampening=0.5, weight_decay=0.05, decoupled_weight_decay=False)),
]


def _blocked_run(cls, kw, chunk_bytes, monkeypatch, parts):
    """Two param groups; the last layer starts at step 3, so a batch mixes step counts."""
    monkeypatch.setattr(base, "CPU_CHUNK_BYTES", chunk_bytes)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 3)
    )
    model = model.double()
    params = list(model.parameters())
    opt = cls(two_groups(params, lr=0.03), lr=0.1, foreach=True, **kw)
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
    return [p.detach().clone() for p in params]


@pytest.mark.parametrize(("cls", "kw"), BLOCKING_CASES, ids=str)
def test_cache_blocked_passes_are_bit_identical(cls, kw, monkeypatch):
    """Both passes (second moment and global sum, then the update) over one-tensor chunks equal one
    pass over the whole batch, bit for bit, with L2 decay and mixed step counts in a batch."""
    parts_small: list[int] = []
    parts_whole: list[int] = []
    small = _blocked_run(cls, kw, 1, monkeypatch, parts_small)
    whole = _blocked_run(cls, kw, 2**40, monkeypatch, parts_whole)
    assert max(parts_small) == 3 and max(parts_whole) == 1  # really chunked (3 tensors a group)
    for x, y in zip(small, whole, strict=True):
        assert torch.equal(x, y), f"max diff {(x - y).abs().max().item():.3e}"


@pytest.mark.parametrize("cls", [adaptim.Adai, adaptim.AdaiV2])
def test_multi_tensor_step_does_not_read_the_mean_on_the_host(cls, monkeypatch):
    """The global mean stays a device tensor: no .item()/float()/tolist()/bool() in the step."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    opt = cls(model.parameters(), lr=0.1, weight_decay=0.01, foreach=True)
    start = [p.detach().clone() for p in model.parameters()]

    def refuse(*args, **kwargs):
        raise AssertionError("host synchronization in the multi-tensor step")

    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(3, 4, dtype=torch.float64)).pow(2).mean().backward()
        with monkeypatch.context() as m:
            for name in ("item", "tolist", "__float__", "__bool__"):
                m.setattr(torch.Tensor, name, refuse)
            opt.step()
    assert all(not torch.equal(p, s) for p, s in zip(model.parameters(), start, strict=True))


FSDP2_CASES = [
    ("adai-l2-chunked", "adai", dict(lr=1e-2, weight_decay=0.1)),
    ("adaiv2-chunked", "adaiv2", dict(lr=1e-2, dampening=0.5, weight_decay=0.1)),
]


@pytest.mark.slow
def test_fsdp2_with_one_chunk_per_tensor_matches_single_process(tmp_path):
    """Per-chunk sums reduced over shards (uneven, empty and dim-1 shards) give the same steps."""
    import test_fsdp2

    test_fsdp2.check_one_chunk_per_tensor(FSDP2_CASES)


# -- b0 is the inertia scale, not a momentum: stored as beta0/beta2, never silently scheduled -------


def _snapshot(opt: torch.optim.Optimizer) -> list[dict]:
    return [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]


SCHEDULERS = {
    "OneCycleLR": lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.5, total_steps=10),
    "CyclicLR": lambda opt: torch.optim.lr_scheduler.CyclicLR(opt, base_lr=0.01, max_lr=0.5),
}


@pytest.mark.parametrize("cls", [adaptim.Adai, adaptim.AdaiV2])
@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
def test_momentum_cycling_schedulers_refuse_before_changing_b0(cls, scheduler):
    """OneCycleLR/CyclicLR(cycle_momentum=True) overwrite ``betas[0]`` of an optimizer with ``betas``;
    Adai's b0 is the inertia scale (0.1), not a momentum coefficient, so they must refuse."""
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    opt = cls(two_groups(model.parameters(), lr=0.05), lr=0.1, betas=(0.1, 0.99))
    before = _snapshot(opt)
    with pytest.raises(ValueError, match="momentum"):
        SCHEDULERS[scheduler](opt)
    for group, saved in zip(_snapshot(opt), before, strict=True):
        # CyclicLR sets lr to base_lr before its momentum check (torch's order, for every optimizer)
        assert {k: v for k, v in group.items() if k in saved and k != "lr"} == {
            k: v for k, v in saved.items() if k != "lr"
        }
        assert (group["beta0"], group["beta2"]) == (0.1, 0.99) and "betas" not in group
    assert len(opt.state) == 0
    # without momentum cycling the schedulers work, and leave b0 alone
    sched = (
        torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.5, total_steps=10, cycle_momentum=False)
        if scheduler == "OneCycleLR"
        else torch.optim.lr_scheduler.CyclicLR(opt, 0.01, 0.5, cycle_momentum=False)
    )
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    sched.step()
    assert all(g["beta0"] == 0.1 for g in opt.param_groups)


def _old_format(state_dict: dict) -> dict:
    """A state dict as Adai saved it before its coefficients were ``beta0`` and ``beta2``."""
    old = dict(state_dict)
    old["param_groups"] = []
    for group in state_dict["param_groups"]:
        group = dict(group)
        group["betas"] = (group.pop("beta0"), group.pop("beta2"))
        old["param_groups"].append(group)
    return old


@pytest.mark.parametrize("cls", [adaptim.Adai, adaptim.AdaiV2])
def test_old_checkpoint_with_betas_loads_and_continues_bit_identically(cls):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    x = torch.randn(6, 4, dtype=torch.float64)

    def run(opt, steps):
        for _ in range(steps):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()

    groups = two_groups(model.parameters(), lr=0.05, betas=(0.3, 0.9))
    opt = cls(groups, lr=0.1)
    run(opt, 3)
    old = _old_format(copy.deepcopy(opt.state_dict()))  # the states are updated in place
    start = [p.detach().clone() for p in model.parameters()]
    run(opt, 3)
    expected = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p, s in zip(model.parameters(), start, strict=True):
            p.copy_(s)
    resumed = cls(two_groups(model.parameters()), lr=0.1)
    resumed.load_state_dict(old)
    assert [(g["beta0"], g["beta2"]) for g in resumed.param_groups] == [(0.1, 0.99), (0.3, 0.9)]
    assert all("betas" not in g for g in resumed.param_groups)
    run(resumed, 3)
    for got, want in zip(model.parameters(), expected, strict=True):
        assert torch.equal(got, want)


def test_old_pickled_optimizer_with_betas_unpickles():
    """``__setstate__`` (pickle, deepcopy) translates ``betas`` in the defaults and the groups."""
    w = nn.Parameter(torch.ones(2))
    opt = adaptim.Adai([{"params": [w], "betas": (0.2, 0.9)}], lr=0.1)
    state = _old_format({"param_groups": opt.param_groups})
    defaults = dict(opt.defaults)
    defaults["betas"] = (defaults.pop("beta0"), defaults.pop("beta2"))
    restored = adaptim.Adai.__new__(adaptim.Adai)
    restored.__setstate__(
        {"defaults": defaults, "state": {}, "param_groups": state["param_groups"]}
    )
    assert (restored.defaults["beta0"], restored.defaults["beta2"]) == (0.1, 0.99)
    assert (restored.param_groups[0]["beta0"], restored.param_groups[0]["beta2"]) == (0.2, 0.9)
    assert "betas" not in restored.defaults and "betas" not in restored.param_groups[0]


def test_param_group_betas_are_translated_and_checked():
    w, b = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(1))
    opt = adaptim.Adai([{"params": [w], "betas": (0.2, 0.9)}], lr=0.1)
    opt.add_param_group({"params": [b], "betas": [0.3, 0.5]})
    assert [(g["beta0"], g["beta2"]) for g in opt.param_groups] == [(0.2, 0.9), (0.3, 0.5)]
    with pytest.raises(ValueError, match="betas"):
        adaptim.Adai([w], lr=0.1, betas=(0.1, 1.0))
    with pytest.raises(ValueError, match="disagrees"):
        opt.add_param_group(
            {"params": [nn.Parameter(torch.ones(1))], "betas": (0.1, 0.9), "beta0": 0.2}
        )
    assert len(opt.param_groups) == 2


def test_betas_set_after_construction_is_refused_at_the_next_step():
    """A ``betas`` that reaches a group later (ZeRO syncs its groups' keys into the local optimizer's;
    a momentum-cycling scheduler on a ZeRO given ``betas=`` writes there) must not be ignored."""
    w = nn.Parameter(torch.ones(2))
    opt = adaptim.Adai([w], lr=0.1)
    opt.param_groups[0]["betas"] = (0.1, 0.99)  # agrees: fine
    w.grad = torch.ones(2)
    opt.step()
    before = w.detach().clone()
    state = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in opt.state[w].items()}
    opt.param_groups[0]["betas"] = (0.95, 0.99)
    with pytest.raises(ValueError, match="inertia scale"):
        opt.step()
    assert torch.equal(w, before)
    assert opt.state[w]["step"] == state["step"]
    assert torch.equal(opt.state[w]["exp_avg_sq"], state["exp_avg_sq"])


# -- gradients at the edges of the float range ------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [{"foreach": False}, {"foreach": True}, {"foreach": False, "fused": True}],
    ids=["per-tensor", "foreach", "fused"],
)
@pytest.mark.parametrize(("cls", "kw"), [(adaptim.Adai, {}), (adaptim.AdaiV2, {"dampening": 0.5})])
def test_huge_gradients_give_finite_steps(cls, kw, path):
    """``g = 1e30`` (float32): ``g^2`` overflows, so ``v`` and the mean ``v_bar`` are inf and
    ``v_hat / v_bar`` is inf / inf. Such a coordinate is among the largest: it gets no inertia
    (beta1 = 0), so it takes the plain step ``lr * b0^(1-d) * g``, and the others stay finite."""
    big = nn.Parameter(torch.ones(3))
    small = nn.Parameter(torch.ones(4))
    opt = cls([big, small], lr=0.1, **path, **kw)
    step = 0.1 * 0.1 ** (1.0 - kw.get("dampening", 1.0)) * 1e30
    for k in range(1, 5):
        big.grad = torch.full_like(big, 1e30)
        small.grad = torch.full_like(small, 1.0)
        opt.step()
        assert torch.isfinite(big).all() and torch.isfinite(small).all(), f"step {k}"
        torch.testing.assert_close(big.detach(), torch.full_like(big, 1.0 - k * step))
    assert (small < 1).all()
    for name, value in opt.state[small].items():
        assert not isinstance(value, torch.Tensor) or torch.isfinite(value).all(), name

"""Conformance, over every registered optimizer: refused steps, extreme gradients, ``eps=0``.

* A step that is refused (a sparse gradient, a complex parameter for a non-elementwise rule) raises
  before anything changes: parameters and the whole state dict are as they were, mid-run too.
* An all-zero gradient (a LoRA adapter's first step, a frozen branch) and gradients of 1e30 keep
  parameters and states finite, on both paths, where ``torch.optim.Adam`` does.
* ``eps=0`` is refused (``ValueError`` naming ``eps``) where the rule divides by ``eps`` alone;
  elsewhere it is accepted and a step runs.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from helpers import assert_same_tree
from test_conformance import IDS, INFOS, accepts, make, small_model, train

parametrize_infos = pytest.mark.parametrize("info", INFOS, ids=IDS)


def _snapshot(model: nn.Module, opt: torch.optim.Optimizer) -> tuple[list, dict]:
    return [p.detach().clone() for p in model.parameters()], copy.deepcopy(opt.state_dict())


@parametrize_infos
@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("bad", ["sparse", "complex"])
def test_a_refused_step_changes_nothing(info, foreach, bad):
    if bad == "complex" and info.supports_complex:
        pytest.skip("complex parameters are supported")
    model = small_model(torch.float64)
    if bad == "sparse":
        extra = nn.Embedding(5, 3, sparse=True).double()
        odd = extra.weight
    else:
        odd = nn.Parameter(torch.randn(3, dtype=torch.complex128))
    opt = make(info, [*model.parameters(), odd], foreach=foreach)
    train(model, opt, range(2))  # state exists, and for closure-driven rules a loss history
    before = _snapshot(model, opt)
    odd_before = odd.detach().clone()

    x = torch.randn(8, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(7))

    def closure():
        opt.zero_grad()
        loss = model(x).pow(2).mean()
        if bad == "sparse":
            loss = loss + extra(torch.tensor([1, 3])).sum()
        else:
            loss = loss + odd.abs().pow(2).sum()
        loss.backward()
        return loss

    with pytest.raises(TypeError, match=bad):
        opt.step(closure)
    after = _snapshot(model, opt)
    for i, (p, q) in enumerate(zip(before[0], after[0], strict=True)):
        assert torch.equal(p, q), f"parameter {i} changed"
    assert torch.equal(odd, odd_before)
    assert_same_tree(before[1], after[1], "state_dict")


def _run_with_gradients(info, value: float, foreach: bool) -> list[torch.Tensor]:
    torch.manual_seed(0)
    params = [nn.Parameter(torch.randn(4, 3)), nn.Parameter(torch.randn(5))]
    opt = make(info, params, foreach=foreach)
    for _ in range(3):

        def closure():
            for p in params:
                p.grad = torch.full_like(p, value)
            return torch.tensor(1.0)

        opt.step(closure)
    for p in params:
        for key, state in opt.state[p].items():
            if isinstance(state, torch.Tensor) and state.is_floating_point():
                assert not torch.isnan(state).any(), f"state {key!r} has NaN"
    return params


@parametrize_infos
@pytest.mark.parametrize("foreach", [True, False])
def test_all_zero_gradients_keep_everything_finite(info, foreach):
    for p in _run_with_gradients(info, 0.0, foreach):
        assert torch.isfinite(p).all()


@parametrize_infos
@pytest.mark.parametrize("foreach", [True, False])
def test_huge_gradients_keep_parameters_finite(info, foreach):
    # 1e30 squared overflows float32; torch.optim.Adam's parameters stay finite (m / inf = 0).
    params = [nn.Parameter(torch.randn(4, 3)), nn.Parameter(torch.randn(5))]
    adam = torch.optim.Adam(params, lr=1e-3)
    for _ in range(3):
        for p in params:
            p.grad = torch.full_like(p, 1e30)
        adam.step()
    assert all(torch.isfinite(p).all() for p in params), "the premise: torch's Adam stays finite"
    for p in _run_with_gradients(info, 1e30, foreach):
        assert torch.isfinite(p).all()


@parametrize_infos
def test_eps_zero_is_refused_or_steps(info):
    if not accepts(info, "eps"):
        pytest.skip("no eps")
    model = small_model()
    try:
        opt = make(info, model.parameters(), eps=0.0)
    except ValueError as error:
        assert "eps" in str(error)
        return
    train(model, opt, range(2))  # must not raise (e.g. ZeroDivisionError)

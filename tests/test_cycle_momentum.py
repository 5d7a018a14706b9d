"""Schedulers that cycle momentum change only momentum coefficients, for every registered optimizer.

``torch.optim.lr_scheduler.OneCycleLR`` and ``CyclicLR`` with ``cycle_momentum=True`` (their default)
look for ``"betas"`` or ``"momentum"`` in ``optimizer.defaults`` and overwrite ``betas[0]`` (or
``momentum``) in every group. That is right only where that entry is a momentum coefficient (the EMA
coefficient of the gradient, or heavy-ball momentum). Elsewhere the optimizer must not offer the key
under that name, so that the scheduler refuses it with its ``ValueError``: Adai's ``b0`` (an inertia
scale) is stored as ``beta0`` for that reason.

``MOMENTUM_COEFFICIENTS`` records, per registered optimizer, the entry that is its momentum
coefficient under torch's naming (checked against each optimizer's docstring and update); an
optimizer missing from it must be refused. A new optimizer that a scheduler accepts fails here until
someone checks what the scheduler would change and records it.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from adaptim.registry import OptimInfo, registered

INFOS = registered(kind="optimizer")

#: registry name -> (group key, index into it or None) of the momentum coefficient a momentum-cycling
#: scheduler may change
MOMENTUM_COEFFICIENTS: dict[str, tuple[str, int | None]] = {
    "acprop": ("betas", 0),  # EMA coefficient of the gradient
    "adabelief": ("betas", 0),
    "adam": ("betas", 0),
    "adamax": ("betas", 0),
    "adamp": ("betas", 0),
    "adamw": ("betas", 0),
    "adan": ("betas", 0),  # code betas: EMA coefficient of the gradient (1 - the paper's beta1)
    "adapnm": ("betas", 0),  # b1: momentum (each of PNM's two buffers decays by b1^2 per update)
    "avgrad": ("betas", 0),
    "diffgrad": ("betas", 0),
    "gensignsgd": ("betas", 0),
    "hfac": ("betas", 0),  # decay rate of the factored momentum
    "mars": ("betas", 0),
    "padam": ("betas", 0),
    "pnm": ("betas", 0),
    "radam": ("betas", 0),
    "sgdp": ("momentum", None),  # heavy-ball momentum, as torch.optim.SGD
    "sgdhess": ("momentum", None),  # its momentum coefficient, as torch.optim.SGD
    "sigsigngrad": ("betas", 0),
    "tanhsigngrad": ("betas", 0),
}

#: keys the schedulers add for their own bookkeeping (not hyperparameters of the optimizer)
SCHEDULER_KEYS = {"initial_lr", "max_lr", "min_lr", "max_momentum", "base_momentum"}

SCHEDULERS = {
    "OneCycleLR": lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.5, total_steps=10),
    "CyclicLR": lambda opt: torch.optim.lr_scheduler.CyclicLR(opt, base_lr=0.01, max_lr=0.5),
}


def _groups(opt: torch.optim.Optimizer) -> list[dict[str, Any]]:
    return [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]


def _changed(before: dict[str, Any], after: dict[str, Any]) -> set[str]:
    """The optimizer's own hyperparameters that differ (``betas[i]`` per entry), lr aside."""
    changed = set()
    for key, value in before.items():
        if key == "lr" or key in SCHEDULER_KEYS:
            continue
        new = after.get(key)
        if (
            isinstance(value, tuple | list)
            and isinstance(new, tuple | list)
            and len(new) == len(value)
        ):
            changed |= {
                f"{key}[{i}]" for i, (a, b) in enumerate(zip(value, new, strict=True)) if a != b
            }
        elif new != value:
            changed.add(key)
    return changed


@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
@pytest.mark.parametrize("info", INFOS, ids=[i.name for i in INFOS])
def test_momentum_cycling_touches_only_a_momentum_coefficient(info: OptimInfo, scheduler: str):
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    params = list(model.parameters())
    groups = [{"params": params[:1]}, {"params": params[1:], "lr": 0.05}]
    opt = info.cls(groups, **{"lr": 0.1, **info.test_kwargs})
    before = _groups(opt)
    try:
        sched = SCHEDULERS[scheduler](opt)
    except ValueError as err:
        assert info.name not in MOMENTUM_COEFFICIENTS, f"{info.name} refused: {err}"
        assert "momentum" in str(err)
        for old, new in zip(before, _groups(opt), strict=True):
            assert not _changed(old, new), f"{info.name}: changed before refusing"
        assert len(opt.state) == 0
        return
    assert info.name in MOMENTUM_COEFFICIENTS, (
        f"{scheduler} accepted {info.name} and changed {_changed(before[0], _groups(opt)[0])}: "
        "is that a momentum coefficient? Record it in MOMENTUM_COEFFICIENTS, or store the "
        "hyperparameter under another name so that the scheduler refuses"
    )
    key, index = MOMENTUM_COEFFICIENTS[info.name]
    allowed = {key if index is None else f"{key}[{index}]"}
    for _ in range(3):  # construction and a few steps: every change is to the momentum
        x = torch.randn(4, 3)

        def closure(x: torch.Tensor = x) -> torch.Tensor:  # closure-driven rules need one
            opt.zero_grad()
            loss = model(x).sum()
            loss.backward()
            return loss

        opt.step(closure)
        opt.zero_grad()
        sched.step()
        for old, new in zip(before, _groups(opt), strict=True):
            assert _changed(old, new) <= allowed, info.name
    assert any(_changed(old, new) == allowed for old, new in zip(before, _groups(opt), strict=True))

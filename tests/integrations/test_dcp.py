"""Every registered optimizer through PyTorch Distributed Checkpoint (the FSDP2 checkpoint path), on one
process: ``get_optimizer_state_dict`` -> ``dcp.save`` -> a fresh model and optimizer ->
``dcp.load`` into their state dicts -> ``set_optimizer_state_dict``; training then continues
bit-identically to an uninterrupted run.

DCP loads only the keys that the fresh optimizer's own state dict has (after its zero-gradient
initialising step), so an optimizer that creates a state key later than its first step, keeps state
outside its parameters' entries, or cannot take a step without a closure loses state or fails here.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
    set_state_dict,
)

from adaptim.registry import OptimInfo, registered

pytestmark = pytest.mark.filterwarnings(
    "ignore:torch.distributed is disabled, unavailable or uninitialized:UserWarning"
)

INFOS = registered(kind="optimizer")
KNOWN_FAILURES: dict[str, str] = {}  # registry name -> reason, for an xfail


def _cases() -> list[Any]:
    cases = []
    for info in INFOS:
        marks = []
        if info.name in KNOWN_FAILURES:
            marks.append(pytest.mark.xfail(reason=KNOWN_FAILURES[info.name], strict=False))
        cases.append(pytest.param(info, id=info.name, marks=marks))
    return cases


def small_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()


def train(model: nn.Module, opt: torch.optim.Optimizer, steps: range) -> None:
    """With a closure, as the conformance suite (closure-driven algorithms need it)."""
    for s in steps:
        gen = torch.Generator().manual_seed(1000 + s)
        x = torch.randn(8, 4, generator=gen, dtype=torch.float64)
        y = torch.randn(8, 3, generator=gen, dtype=torch.float64)

        def closure(x=x, y=y):
            opt.zero_grad()
            loss = ((model(x) - y) ** 2).mean()
            loss.backward()
            return loss

        opt.step(closure)


def make(info: OptimInfo, model: nn.Module) -> torch.optim.Optimizer:
    return info.cls(model.parameters(), **info.test_kwargs)


@pytest.mark.parametrize("flatten", [False, True], ids=["nested", "flattened"])
@pytest.mark.parametrize("info", _cases())
def test_dcp_round_trip_continues_bit_identically(info, flatten, tmp_path):
    options = StateDictOptions(flatten_optimizer_state_dict=flatten)
    model = small_model()
    opt = make(info, model)
    train(model, opt, range(4))
    dcp.save(
        {
            "model": get_model_state_dict(model),
            "optim": get_optimizer_state_dict(model, opt, options=options),
        },
        checkpoint_id=tmp_path,
    )

    twin = small_model(seed=1)  # other weights: everything must come from the checkpoint
    twin_opt = make(info, twin)
    state = {
        "model": get_model_state_dict(twin),
        "optim": get_optimizer_state_dict(twin, twin_opt, options=options),
    }
    dcp.load(state, checkpoint_id=tmp_path)
    set_model_state_dict(twin, state["model"])
    set_optimizer_state_dict(twin, twin_opt, state["optim"], options=options)

    train(model, opt, range(4, 9))
    train(twin, twin_opt, range(4, 9))
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q), f"max diff {(p - q).abs().max().item():.3e}"


@pytest.mark.parametrize("info", _cases())
def test_set_state_dict_loads_the_model_before_the_optimizer_initialises(info):
    """``set_state_dict`` loads the model first; DCP's initialising step on the fresh optimizer
    (zero gradients, lr 0) then runs on the loaded parameters and must leave them where they are."""
    model = small_model()
    opt = make(info, model)
    train(model, opt, range(4))
    # copies, as a file would give (torch.optim's load_state_dict keeps the tensors it is given)
    model_sd, optim_sd = copy.deepcopy(get_state_dict(model, opt))
    twin = small_model(seed=1)
    twin_opt = make(info, twin)
    set_state_dict(twin, twin_opt, model_state_dict=model_sd, optim_state_dict=optim_sd)
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)
    train(model, opt, range(4, 9))
    train(twin, twin_opt, range(4, 9))
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q), f"max diff {(p - q).abs().max().item():.3e}"

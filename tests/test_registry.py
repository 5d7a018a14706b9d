"""The registry's listing: ``available()`` and ``create()`` agree on what an optimizer is."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch

import adaptim
from adaptim import registry
from adaptim.bench.claims_common import _find


def test_available_lists_what_create_accepts() -> None:
    names = adaptim.available()
    assert names == sorted(names)
    assert names == [i.name for i in registry.registered() if i.kind == "optimizer"]
    for name in names:
        info = adaptim.get(name)
        p = torch.nn.Parameter(torch.zeros(2))
        assert isinstance(adaptim.create(name, [p], **info.test_kwargs), info.cls)


@pytest.mark.parametrize("kind", ["wrapper", "tool"])
def test_wrappers_and_tools_are_listed_apart_and_refused_by_create(kind: str) -> None:
    names = adaptim.available(kind=kind)
    assert names, kind
    assert not set(names) & set(adaptim.available())
    for name in names:
        with pytest.raises(ValueError, match=f"is a {kind}, not an optimizer"):
            adaptim.create(name, [torch.nn.Parameter(torch.zeros(2))])


def test_kind_all_lists_everything() -> None:
    every = adaptim.available(kind="all")
    assert every == sorted(i.name for i in registry.registered())
    parts = [adaptim.available(kind=k) for k in registry.KINDS]
    assert sorted(n for part in parts for n in part) == every
    assert "lookahead" in every and "adadagrad" in every


def test_patterns_combine_with_kind() -> None:
    assert adaptim.available("adam*") == ["adam", "adamax", "adamp", "adamw"]
    assert adaptim.available("*a*", kind="wrapper") == [
        "activelr",
        "iterate_averaging",
        "lookahead",
    ]
    assert adaptim.available("ADA*GRAD", kind="tool") == ["adadagrad"]
    assert adaptim.available("lookahead") == []


@pytest.mark.parametrize("kind", ["optimizers", "Wrapper", "", None, 1])
def test_a_bad_kind_is_refused_naming_the_accepted_ones(kind: object) -> None:
    accepted = r"'optimizer', 'wrapper', 'tool', 'all'; got " + re.escape(repr(kind))
    with pytest.raises(ValueError, match=r"kind must be one of " + accepted):
        adaptim.available(kind=kind)  # type: ignore[arg-type]
    if kind is not None:
        with pytest.raises(ValueError, match="kind must be one of"):
            registry.registered(kind=kind)  # type: ignore[arg-type]


def test_registered_without_kind_is_everything() -> None:
    assert registry.registered() == registry.registered(kind="all")


def test_register_refuses_an_unknown_kind() -> None:
    info = dataclasses.replace(adaptim.get("adam"), name="not_registered_x", kind="scheduler")
    with pytest.raises(ValueError, match="kind must be one of 'optimizer', 'wrapper', 'tool'"):
        registry.register(info)
    assert "not_registered_x" not in adaptim.available(kind="all")


def test_an_unknown_name_points_to_the_full_listing() -> None:
    with pytest.raises(ValueError, match=r"adaptim.available\(kind='all'\) lists all"):
        adaptim.get("adamz")


def test_the_claims_suite_finds_wrappers_by_pattern() -> None:
    """The bench resolves ``"name|pattern"`` specs over every kind (a wrapper claim needs it)."""
    info = _find("no_such_name|*look*head*")
    assert info is not None and info.name == "lookahead"
    info = _find("adadagrad*")
    assert info is not None and info.kind == "tool"


# -- what the README says about every optimizer --------------------------------------------------

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_examples_run() -> None:
    """The Python blocks of the README's example section (available, param groups, create(model))."""
    text = README.read_text()
    section = text[text.index("## Example\n") : text.index("## What every optimizer gives you")]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) >= 2 and "layerwise_lr_groups" in blocks[1]
    torch.manual_seed(0)
    for block in blocks:
        exec(compile(block, str(README), "exec"), {})


@pytest.mark.parametrize("info", registry.registered(kind="optimizer"), ids=lambda i: i.name)
def test_schedulers_cycling_momentum_need_momentum_or_betas(info: registry.OptimInfo) -> None:
    """README: OneCycleLR and CyclicLR work with every optimizer given ``cycle_momentum=False``;
    with the default ``True`` exactly those with a ``momentum`` or ``betas`` hyperparameter."""
    sched = torch.optim.lr_scheduler
    makers = {
        "OneCycleLR": lambda opt, cycle: sched.OneCycleLR(
            opt, max_lr=0.01, total_steps=10, cycle_momentum=cycle
        ),
        "CyclicLR": lambda opt, cycle: sched.CyclicLR(opt, 1e-3, 1e-2, cycle_momentum=cycle),
    }
    for make in makers.values():
        for cycle in (False, True):
            p = torch.nn.Parameter(torch.ones(3))
            opt = adaptim.create(info.name, [p], **info.test_kwargs)
            has_momentum = "momentum" in opt.defaults or "betas" in opt.defaults
            if cycle and not has_momentum:
                with pytest.raises(ValueError, match="momentum"):
                    make(opt, cycle)
                continue
            s = make(opt, cycle)
            for _ in range(3):
                opt.zero_grad()
                (p**2).sum().backward()
                opt.step(lambda p=p: (p**2).sum())
                s.step()
            assert torch.isfinite(p).all()


#: the optimizers the README names as refusing OneCycleLR/CyclicLR's default cycle_momentum=True
README_NO_MOMENTUM = {
    "adafactor": "Adafactor",
    "adai": "Adai",
    "adaiv2": "AdaiV2",
    "adarem": "AdaRem",
    "ahb_adam": "the adaptive heavy-ball pair",
    "ahb_sgd": "the adaptive heavy-ball pair",
    "koala_m": "KOALA",
    "koala_v": "KOALA",
    "mada": "MADA",
    "ncg_sgd": "NCG",
}


def test_readme_names_the_optimizers_without_momentum() -> None:
    without = set()
    for info in registry.registered(kind="optimizer"):
        opt = adaptim.create(info.name, [torch.nn.Parameter(torch.ones(1))], **info.test_kwargs)
        if "momentum" not in opt.defaults and "betas" not in opt.defaults:
            without.add(info.name)
    assert without == set(README_NO_MOMENTUM), "update the README's scheduler bullet"
    text = README.read_text()
    bullet = text[text.index("`OneCycleLR` and `CyclicLR`") :].split("\n- ")[0]
    for words in README_NO_MOMENTUM.values():
        assert words in bullet, words

"""The registry's listing: ``available()`` and ``create()`` agree on what an optimizer is."""

from __future__ import annotations

import dataclasses
import re

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

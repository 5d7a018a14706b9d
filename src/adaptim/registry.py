"""One record per optimizer, wrapper and tool: class, paper, reference code, defaults, capabilities.

Each algorithm module registers itself with :func:`register`; the package imports every module under
``adaptim.optimizers``, ``adaptim.wrappers`` and ``adaptim.tools`` at import time, so the registry is
complete once ``import adaptim`` returns.

>>> import adaptim
>>> opt = adaptim.create("adabelief", model.parameters(), lr=1e-3)   # doctest: +SKIP
>>> opt = adaptim.create("adamw", model, lr=1e-3, weight_decay=0.05) # doctest: +SKIP
>>> adaptim.available("adam*")                                       # doctest: +SKIP
['adam', 'adamax', 'adamp', 'adamw']
>>> adaptim.available(kind="wrapper")                                # doctest: +SKIP
['activelr', 'iterate_averaging', 'lookahead']
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from adaptim.param_groups import param_groups

__all__ = [
    "KINDS",
    "OptimInfo",
    "available",
    "closest",
    "create",
    "get",
    "markdown_table",
    "register",
    "registered",
]


@dataclass(frozen=True)
class OptimInfo:
    """What the registry knows about one algorithm.

    ``test_kwargs`` are hyperparameters the automatic conformance suite passes (e.g. an ``lr`` for
    optimizers without a default one); ``tuned_lr`` is the learning rate the convergence tests use
    on the quadratic and on Rosenbrock.
    """

    name: str
    cls: type
    paper: str
    paper_url: str
    reference: str
    description: str
    kind: str = "optimizer"  # one of KINDS: "optimizer" | "wrapper" | "tool"
    has_foreach: bool = True
    supports_complex: bool = True
    test_kwargs: Mapping[str, Any] = field(default_factory=dict)
    tuned_lr: Mapping[str, float | None] = field(
        default_factory=dict
    )  # {"quadratic": ..., "rosenbrock": ...}
    aliases: tuple[str, ...] = ()
    #: how the implementation is checked: the oracle package, "hand-computed steps", "behaviour"
    verified: str = ""

    @property
    def defaults(self) -> dict[str, Any]:
        """Default hyperparameters, read from the constructor's signature."""
        sig = inspect.signature(self.cls)
        return {
            k: p.default
            for k, p in sig.parameters.items()
            if k not in ("params", "optimizer") and p.default is not inspect.Parameter.empty
        }


#: the kinds of record: ``create()`` builds optimizers; wrappers (Lookahead, ...) and tools (adaptive
#: batch sizes, ...) are constructed directly from their classes
KINDS = ("optimizer", "wrapper", "tool")

_REGISTRY: dict[str, OptimInfo] = {}
_ALIASES: dict[str, str] = {}


def register(info: OptimInfo) -> OptimInfo:
    """Add a record; names are lower-case and unique."""
    name = info.name.lower()
    if info.kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(map(repr, KINDS))}; got {info.kind!r}")
    if name != info.name:
        raise ValueError(f"registry names are lower-case; got {info.name!r}")
    if name in _REGISTRY or name in _ALIASES:
        raise ValueError(f"an optimizer named {name!r} is already registered")
    _REGISTRY[name] = info
    for alias in info.aliases:
        _ALIASES[alias.lower()] = name
    return info


_KIND_CHOICES = (*KINDS, "all")


def _check_kind(kind: object) -> None:
    if kind not in _KIND_CHOICES:
        accepted = ", ".join(repr(k) for k in _KIND_CHOICES)
        raise ValueError(f"kind must be one of {accepted}; got {kind!r}")


def registered(kind: str | None = None) -> list[OptimInfo]:
    """All records, sorted by name; ``kind`` (``"optimizer"``, ``"wrapper"``, ``"tool"``) keeps one
    kind, ``None`` or ``"all"`` keeps every record."""
    if kind is not None:
        _check_kind(kind)
    return [i for n, i in sorted(_REGISTRY.items()) if kind in (None, "all") or i.kind == kind]


def available(pattern: str = "*", kind: str = "optimizer") -> list[str]:
    """Registered names matching a shell-style pattern, sorted, e.g. ``available("adam*")``.

    By default only optimizers, the names :func:`create` accepts; ``kind="wrapper"`` lists the
    wrappers (Lookahead, ...), ``kind="tool"`` the tools, ``kind="all"`` everything registered. Any
    other ``kind`` raises ``ValueError`` naming the accepted ones.
    """
    _check_kind(kind)
    pattern = pattern.lower()
    return [i.name for i in registered(kind) if fnmatch.fnmatchcase(i.name, pattern)]


def _edit_distance(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def closest(name: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """The candidates nearest to a misspelt ``name``: fewest edits first, then most similar."""
    name = name.lower()
    scored = sorted(
        (_edit_distance(name, c), -difflib.SequenceMatcher(None, name, c).ratio(), c)
        for c in candidates
    )
    limit = max(2, len(name) // 3)
    return [c for d, r, c in scored if d <= limit or -r >= 0.6][:n]


def get(name: str) -> OptimInfo:
    """The record of ``name``; an unknown name raises ``ValueError`` suggesting the closest ones."""
    key = name.lower()
    key = _ALIASES.get(key, key)
    if key in _REGISTRY:
        return _REGISTRY[key]
    close = closest(key, list(_REGISTRY) + list(_ALIASES))
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(
        f"unknown optimizer {name!r}{hint} (adaptim.available(kind='all') lists all {len(_REGISTRY)})"
    )


def create(
    name: str,
    params: nn.Module | Iterable[torch.Tensor] | Iterable[dict[str, Any]],
    **kwargs: Any,
) -> torch.optim.Optimizer:
    """Construct the optimizer registered as ``name`` over ``params``.

    ``params`` is what the optimizer's class takes (an iterable of tensors or of param-group dicts),
    or a model (``nn.Module``): then the optimizer gets the model's trainable parameters
    (``requires_grad=False`` ones are left out), split as :func:`adaptim.param_groups` splits them
    (no weight decay on biases, norms and embeddings) whenever the weight decay in force is not
    zero: ``weight_decay`` from ``kwargs``, else the class's default (``AdamW``'s is 0.01). To decay
    every parameter, pass ``model.parameters()``. Anything else raises ``TypeError``.

    >>> opt = adaptim.create("adamw", model, lr=1e-3, weight_decay=0.05)   # doctest: +SKIP
    """
    info = get(name)
    if info.kind != "optimizer":
        raise ValueError(
            f"{info.name!r} is a {info.kind}, not an optimizer; construct {info.cls.__name__} directly"
        )
    args: Any = params
    if isinstance(params, nn.Module):
        wd = kwargs.get("weight_decay", info.defaults.get("weight_decay", 0.0))
        # a bad value (negative, NaN, a bool) is left to the class's validation to refuse
        if not isinstance(wd, bool) and isinstance(wd, int | float) and wd > 0:
            args = param_groups(params, wd)
        else:
            args = [p for p in params.parameters() if p.requires_grad]
    elif isinstance(params, torch.Tensor | str | bytes | Mapping) or not isinstance(
        params, Iterable
    ):
        extra = ""
        if isinstance(params, torch.Tensor):
            extra = "; for one tensor pass [tensor]"
        elif isinstance(params, Mapping):
            extra = "; for one param group pass [group]"
        raise TypeError(
            f"create({name!r}, ...): params must be an nn.Module, or an iterable of tensors or of "
            f"param-group dicts; got {type(params).__name__}{extra}"
        )
    opt: torch.optim.Optimizer = info.cls(args, **kwargs)
    return opt


def markdown_table() -> str:
    """The README's table of everything registered: name, class, paper, reference, verification."""
    lines = [
        "| name | class | kind | paper | reference code | verified against |",
        "|---|---|---|---|---|---|",
    ]
    for info in registered():
        ref = re.sub(
            r"github\.com/([\w.-]+/[\w.-]+?)(?=[@ /;,)]|$)",
            lambda m: f"[{m.group(1)}](https://github.com/{m.group(1)})",
            info.reference,
        ).replace("|", "/")
        lines.append(
            f"| `{info.name}` | `{info.cls.__name__}` | {info.kind} | "
            f"[{info.paper}]({info.paper_url}) | {ref} | {info.verified or 'conformance suite'} |"
        )
    return "\n".join(lines)

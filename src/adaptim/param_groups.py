"""Param groups that transformer recipes build: no weight decay on biases, norms and embeddings, and
layer-wise lr decay (BEiT, ELECTRA fine-tuning).

Both helpers return a list of ``torch.optim`` param-group dicts, so they work with every adaptim
optimizer and with ``torch.optim``'s:

>>> import torch, adaptim
>>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2))
>>> groups = adaptim.param_groups(model, weight_decay=0.05)
>>> [(len(g["params"]), g["weight_decay"]) for g in groups]   # 2 matrices; 2 biases, LayerNorm's 2
[(2, 0.05), (4, 0.0)]
>>> opt = adaptim.AdamW(groups, lr=1e-3)

Which parameters are exempt from weight decay (``param_groups``; also ``layerwise_lr_groups`` when it
is given a ``weight_decay``):

- every parameter of a ``torch.nn`` normalization layer (:data:`NORM_TYPES`) or embedding
  (:data:`EMBEDDING_TYPES`), found by module type;
- every parameter named ``bias``, in any module;
- custom norms, as a fallback: a parameter with at most one dimension whose module's class name
  contains "norm" (``LlamaRMSNorm``, ``T5LayerNorm``) or whose module's attribute name matches one of
  :data:`NORM_NAME_PATTERNS` (``norm1``, ``ln_f``, ``final_layer_norm``, ``bn1``);
- the user's ``no_decay`` patterns: shell-style patterns (``fnmatch``, case-sensitive) matched against
  the full dotted name that ``model.named_parameters()`` gives, e.g. ``("pos_embed", "*.cls_token")``.

Parameters with ``requires_grad=False`` are left out. A parameter shared by several modules (tied
weights) appears once, under its first name in ``model.named_parameters()`` order, and is exempt when
any of the places that hold it is exempt (an embedding tied to an output layer is an embedding).
Parameters keep ``model.parameters()`` order inside each group, so the groups are deterministic.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from adaptim.core.validation import NONNEGATIVE, POSITIVE, Interval

__all__ = [
    "EMBEDDING_TYPES",
    "NORM_NAME_PATTERNS",
    "NORM_TYPES",
    "layer_ids",
    "layerwise_lr_groups",
    "param_groups",
]

#: every normalization layer in ``torch.nn``; their parameters get no weight decay
NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.LazyBatchNorm1d,
    nn.LazyBatchNorm2d,
    nn.LazyBatchNorm3d,
    nn.SyncBatchNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LazyInstanceNorm1d,
    nn.LazyInstanceNorm2d,
    nn.LazyInstanceNorm3d,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.RMSNorm,
    nn.LocalResponseNorm,
    nn.CrossMapLRN2d,
)

#: embedding layers; their parameters get no weight decay
EMBEDDING_TYPES: tuple[type[nn.Module], ...] = (nn.Embedding, nn.EmbeddingBag)

#: attribute names (lower-cased) of modules taken for custom norms: their parameters with at most one
#: dimension get no weight decay
NORM_NAME_PATTERNS: tuple[str, ...] = ("*norm*", "ln", "ln_*", "ln[0-9]*", "*_ln", "bn", "bn[0-9]*")


@dataclass
class _Param:
    name: str  # the first name in model.named_parameters() order
    tensor: torch.Tensor
    exempt: bool  # from weight decay


def _looks_like_norm(attr: str, module: nn.Module) -> bool:
    if "norm" in type(module).__name__.lower():
        return True
    attr = attr.lower()
    return any(fnmatch.fnmatchcase(attr, pat) for pat in NORM_NAME_PATTERNS)


def _exempt(module: nn.Module, attr: str, pname: str, p: torch.Tensor) -> bool:
    """Whether the parameter ``pname`` of ``module`` (held as ``attr`` by its parent) is a bias, a
    norm's or an embedding's."""
    if isinstance(module, NORM_TYPES + EMBEDDING_TYPES) or pname == "bias":
        return True
    return p.dim() <= 1 and _looks_like_norm(attr, module)


def _check_module(fn: str, model: object) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"{fn}(): model must be a torch.nn.Module; got {type(model).__name__} (for a list of "
            "parameters, build the param groups yourself)"
        )


def _patterns(fn: str, no_decay: Iterable[str]) -> tuple[str, ...]:
    if isinstance(no_decay, str):
        return (no_decay,)
    patterns = tuple(no_decay)
    bad = [p for p in patterns if not isinstance(p, str)]
    if bad:
        raise TypeError(f"{fn}(): no_decay must hold name patterns (str); got {bad[0]!r}")
    return patterns


def _trainable(model: nn.Module, no_decay: tuple[str, ...]) -> list[_Param]:
    """Every trainable parameter once, in ``model.parameters()`` order, with its exemption."""
    found: dict[int, _Param] = {}
    for mname, module in model.named_modules(remove_duplicate=False):
        attr = mname.rpartition(".")[2]
        for pname, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            full = f"{mname}.{pname}" if mname else pname
            exempt = _exempt(module, attr, pname, p) or any(
                fnmatch.fnmatchcase(full, pat) for pat in no_decay
            )
            entry = found.get(id(p))
            if entry is None:
                found[id(p)] = _Param(full, p, exempt)
            else:
                entry.exempt = entry.exempt or exempt
    return list(found.values())


_LAYER_DECAY = Interval(0.0, 1.0, low_open=True)


def param_groups(
    model: nn.Module, weight_decay: float, *, no_decay: Iterable[str] = ()
) -> list[dict[str, Any]]:
    """``model``'s trainable parameters in two param groups: with ``weight_decay`` and without.

    Biases, normalization layers' and embeddings' parameters go to the group with
    ``weight_decay=0.0``, and so do parameters whose full name matches a ``no_decay`` pattern (see the
    module's docstring for the exact rules); the rest go to the group with ``weight_decay``. An empty
    group is left out. Parameters with ``requires_grad=False`` are left out; shared (tied)
    parameters appear once. The groups carry no ``lr``: the optimizer's applies.

    >>> import torch, adaptim
    >>> model = torch.nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=32)
    >>> groups = adaptim.param_groups(model, weight_decay=0.05, no_decay=["self_attn.in_proj_*"])
    >>> opt = adaptim.AdaBelief(groups, lr=1e-3)
    >>> [g["weight_decay"] for g in opt.param_groups]
    [0.05, 0.0]
    """
    _check_module("param_groups", model)
    NONNEGATIVE.check("param_groups()", "weight_decay", weight_decay)
    params = _trainable(model, _patterns("param_groups", no_decay))
    decay = [p.tensor for p in params if not p.exempt]
    exempt = [p.tensor for p in params if p.exempt]
    groups: list[dict[str, Any]] = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    if exempt:
        groups.append({"params": exempt, "weight_decay": 0.0})
    return groups


def _holds_params(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def layer_ids(model: nn.Module) -> dict[str, int]:
    """The layer of each trainable parameter, by name, as :func:`layerwise_lr_groups` assigns it
    when no ``layer_of`` is given: ``0`` for what comes before the blocks (embeddings), ``1..N`` for
    the N blocks, ``N + 1`` for what comes after them (final norm, head).

    The blocks are the children that hold parameters of an ``nn.ModuleList`` or ``nn.Sequential``
    that is not inside another one (``model.blocks`` of a ViT, ``encoder.layer`` of BERT, ``h`` of
    GPT-2, ``layers`` of Llama; a block's own ``nn.Sequential`` MLP is not a candidate); of several
    such lists, the one with the most blocks, then the most parameter elements, then the first. A
    parameter outside the blocks is "before" them if it comes before the first block's parameters
    in ``model.named_parameters()`` order, else "after". A frozen block keeps its place. A model
    without such a list is one layer: every id is ``0``.
    """
    _check_module("layer_ids", model)
    best: tuple[int, int] = (0, 0)  # (blocks, parameter elements) of the chosen list
    blocks: list[nn.Module] = []
    inside: set[int] = set()  # ids of the modules below a list already seen
    for module in model.modules():  # parents before their children
        if id(module) in inside or not isinstance(module, nn.ModuleList | nn.Sequential):
            continue
        inside.update(id(m) for m in module.modules())
        children = [c for c in module.children() if _holds_params(c)]
        key = (len(children), sum(p.numel() for p in module.parameters()))
        if key > best:
            best, blocks = key, children
    block_of: dict[int, int] = {}
    for i, block in enumerate(blocks, start=1):
        for p in block.parameters():
            block_of.setdefault(id(p), i)
    out: dict[str, int] = {}
    seen_block = False
    for entry in _trainable(model, ()):
        layer = block_of.get(id(entry.tensor))
        if layer is None:
            layer = len(blocks) + 1 if seen_block else 0
        else:
            seen_block = True
        out[entry.name] = layer
    return out


def layerwise_lr_groups(
    model: nn.Module,
    lr: float,
    layer_decay: float,
    *,
    weight_decay: float | None = None,
    no_decay: Iterable[str] = (),
    layer_of: Callable[[str], int] | None = None,
) -> list[dict[str, Any]]:
    """Param groups with layer-wise lr decay: layer ``i`` trains at ``lr * layer_decay ** (L - i)``.

    ``L`` is the highest layer id, which trains at ``lr``; each layer below it at ``layer_decay``
    times the lr of the layer above, as in BEiT's and ELECTRA's fine-tuning recipes. ``layer_of``
    maps a parameter's name (as ``model.named_parameters()`` gives it) to its layer id, an int >= 0;
    by default :func:`layer_ids`: 0 for the embeddings, 1..N for the N blocks, N + 1 for the head.

    Every group carries an explicit ``lr``, so it works with optimizers that have no default lr and
    with ``torch.optim``'s; multiplicative ``torch.optim.lr_scheduler`` schedulers keep the ratios.
    With ``weight_decay`` (a number) each layer is also split as :func:`param_groups` splits, and
    every group carries its ``weight_decay`` (``0.0`` for biases, norms, embeddings and the
    ``no_decay`` patterns); with ``weight_decay=None`` (the default) the groups carry no
    ``weight_decay`` and the optimizer's applies to every parameter. Groups are ordered by layer
    (embeddings first), with decay before no decay; empty groups are left out; frozen parameters
    are left out.

    >>> import torch, adaptim
    >>> class Tiny(torch.nn.Module):
    ...     def __init__(self) -> None:
    ...         super().__init__()
    ...         self.embed = torch.nn.Embedding(10, 8)
    ...         self.blocks = torch.nn.ModuleList(torch.nn.Linear(8, 8) for _ in range(2))
    ...         self.head = torch.nn.Linear(8, 3)
    >>> groups = adaptim.layerwise_lr_groups(Tiny(), lr=1e-3, layer_decay=0.5)
    >>> [g["lr"] for g in groups]                                   # embed, block 1, block 2, head
    [0.000125, 0.00025, 0.0005, 0.001]
    >>> opt = adaptim.Adan(groups)
    """
    fn = "layerwise_lr_groups"
    _check_module(fn, model)
    POSITIVE.check(f"{fn}()", "lr", lr)
    _LAYER_DECAY.check(f"{fn}()", "layer_decay", layer_decay)
    patterns = _patterns(fn, no_decay)
    if weight_decay is None:
        if patterns:
            raise ValueError(f"{fn}(): no_decay needs a weight_decay (a number >= 0)")
    else:
        NONNEGATIVE.check(f"{fn}()", "weight_decay", weight_decay)
    params = _trainable(model, patterns)
    if layer_of is None:
        ids = layer_ids(model)
        layer_of = ids.__getitem__
    layers: list[int] = []
    for entry in params:
        layer = layer_of(entry.name)
        if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
            raise ValueError(f"{fn}(): layer_of({entry.name!r}) must be an int >= 0; got {layer!r}")
        layers.append(layer)
    if not params:
        return []
    top = max(layers)
    buckets: dict[tuple[int, bool], list[torch.Tensor]] = {}
    for entry, layer in zip(params, layers, strict=True):
        exempt = entry.exempt if weight_decay is not None else False
        buckets.setdefault((layer, exempt), []).append(entry.tensor)
    groups: list[dict[str, Any]] = []
    for (layer, exempt), tensors in sorted(buckets.items()):
        group: dict[str, Any] = {"params": tensors, "lr": lr * layer_decay ** (top - layer)}
        if weight_decay is not None:
            group["weight_decay"] = 0.0 if exempt else weight_decay
        groups.append(group)
    return groups

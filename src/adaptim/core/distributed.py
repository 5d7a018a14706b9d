"""Whole-tensor reductions that stay correct when parameters are DTensors (FSDP2, tensor parallel).

Elementwise updates need nothing special: ``torch._foreach_*`` ops run on DTensor lists shard by shard
(checked in ``tests/test_fsdp2.py``), except ``torch._foreach_copy_``, which has no DTensor sharding
rule in torch 2.13 (``TensorBatch.write_back`` copies local shards). Running the update on the local shards
(:func:`local_list`; in-place ops on them update the DTensors) avoids DTensor dispatch altogether and
is what AdamP, SGDP and Adan do. A reduction over a whole tensor (a norm, a per-row cosine, a
maximum) is different: each rank holds only a shard, so the local result must be combined over the
ranks that hold the other shards. This module does that with one ``all_reduce`` per set of process
groups, on the *local* shards, so the math runs on plain tensors and the collectives carry a few
scalars per tensor.

A tensor is sharded along its tensor dimension ``d`` over mesh dimension ``i`` when its ``i``-th
placement is ``Shard(d)`` (FSDP2: ``Shard(0)``, uneven sizes allowed, a rank may hold zero rows).
Replicated mesh dimensions need no reduction (every rank holds the same values); ``Partial``
placements (unreduced sums) are refused, since a norm of a partial sum is not the sum of norms.

Factored statistics (Adafactor, H-Fac: row and column means of a matrix, or of the last two
dimensions of a tensor) need finer groups: :func:`dim_groups` gives the mesh dimensions that shard
given tensor dimensions (a row mean is summed over those that shard the last one, a column mean over
those that shard the second-to-last; a sharded leading batch dimension needs nothing), and
:func:`reduced_zeros` creates the statistic's state as a DTensor sharded like the parameter's rows or
columns. :func:`all_reduce_grouped` reduces many values over explicitly given groups in one
collective per set of groups.

For plain tensors every function is a no-op or the obvious local computation: no collective, no
import of ``torch.distributed``, no overhead beyond one ``isinstance``-like check.

ZeRO (``torch.distributed.optim.ZeroRedundancyOptimizer``) is the other way parameters get split:
each rank's optimizer is built on a *partition* of whole, plain tensors. Elementwise and per-tensor
updates need nothing, but a statistic over all parameters (a global mean or norm, a sum of dot
products) must be summed over the partition group: :func:`zero_partition` finds that group while the
optimizer is being built, and :func:`partition_sum` sums a vector of partial statistics over it in one
collective.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeGuard

import torch

if TYPE_CHECKING:
    from types import FrameType

    from torch.distributed.tensor import DTensor

__all__ = [
    "Partition",
    "all_reduce_",
    "all_reduce_grouped",
    "all_reduce_many",
    "any_dtensor",
    "dim_groups",
    "drop_empty",
    "global_max",
    "global_norm",
    "global_sum",
    "is_dtensor",
    "local",
    "local_list",
    "local_states",
    "norm",
    "partition_sum",
    "reduced_zeros",
    "shard_groups",
    "sharded_norms",
    "zero_partition",
]

Along = Literal["any", "first", "rest"]
_NO_GROUPS: tuple[Any, ...] = ()


def is_dtensor(tensor: Any) -> TypeGuard[DTensor]:
    """True for a ``torch.distributed.tensor.DTensor``; cheap when no DTensor was ever imported."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(tensor, module.DTensor)


def any_dtensor(tensors: Iterable[Any]) -> bool:
    """True if one of ``tensors`` is a DTensor."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and any(isinstance(t, module.DTensor) for t in tensors)


def local(tensor: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor (sharing its storage: in-place ops update the DTensor), else itself."""
    return tensor.to_local() if is_dtensor(tensor) else tensor


def local_list(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [local(t) for t in tensors]


def shard_groups(tensor: torch.Tensor, along: Along = "any") -> tuple[Any, ...]:
    """The process groups of the mesh dimensions over which ``tensor`` is sharded.

    ``along="first"`` keeps the mesh dimensions that shard tensor dimension 0 (which rows a rank
    holds), ``"rest"`` those that shard any other dimension (which part of each row), ``"any"`` both.
    A plain tensor has none.
    """
    if along == "any":
        return _groups(tensor, lambda dim: True)
    return _groups(tensor, lambda dim: (along == "first") == (dim == 0))


def dim_groups(tensor: torch.Tensor, dims: Iterable[int]) -> tuple[Any, ...]:
    """The process groups of the mesh dimensions that shard ``tensor`` along one of ``dims``.

    Negative ``dims`` count from the end, so ``dim_groups(p, (-1,))`` are the groups over which a row
    sum of the local shard must be summed (each rank holds part of every row it has), and
    ``(-2,)`` those of a column sum. Shards along the other dimensions (other rows, or the leading
    batch dimensions of a tensor factored over its last two) need no reduction. A plain tensor has
    none.
    """
    if not is_dtensor(tensor):
        return _NO_GROUPS
    ndim = max(tensor.ndim, 1)
    wanted = {d % ndim for d in dims}
    return _groups(tensor, wanted.__contains__)


def _groups(tensor: torch.Tensor, keep: Any) -> tuple[Any, ...]:
    """The groups of the mesh dimensions that shard a tensor dimension ``d`` with ``keep(d)``."""
    if not is_dtensor(tensor):
        return _NO_GROUPS
    from torch.distributed.tensor import Partial, Shard

    groups = []
    mesh = tensor.device_mesh
    for mesh_dim, placement in enumerate(tensor.placements):
        if isinstance(placement, Partial):
            raise TypeError(
                "adaptim cannot reduce over a DTensor with a Partial placement "
                f"({tensor.placements}); reduce it (redistribute to Shard or Replicate) first"
            )
        if not isinstance(placement, Shard) or mesh.size(mesh_dim) == 1:
            continue
        if keep(placement.dim % max(tensor.ndim, 1)):
            groups.append(mesh.get_group(mesh_dim))
    return tuple(groups)


def all_reduce_(
    value: torch.Tensor, groups: Sequence[Any], op: Literal["sum", "max"] = "sum"
) -> torch.Tensor:
    """All-reduce the plain tensor ``value`` in place over each of ``groups``; returns it."""
    if groups:
        import torch.distributed as dist

        reduce_op = dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX
        for group in groups:
            dist.all_reduce(value, op=reduce_op, group=group)
    return value


def all_reduce_many(
    values: Sequence[torch.Tensor],
    likes: Sequence[torch.Tensor],
    op: Literal["sum", "max"] = "sum",
    along: Along = "any",
) -> list[torch.Tensor]:
    """Reduce each ``values[i]`` (computed from ``likes[i]``'s local shard) over the shards of ``likes[i]``.

    Values whose tensors share process groups travel in one ``all_reduce`` (one per distinct set of
    groups), so a model sharded on one mesh costs one collective whatever its number of tensors.
    Returns a new list; plain tensors' values come back unchanged.
    """
    return all_reduce_grouped(values, [shard_groups(like, along) for like in likes], op)


def all_reduce_grouped(
    values: Sequence[torch.Tensor],
    groups: Sequence[tuple[Any, ...]],
    op: Literal["sum", "max"] = "sum",
) -> list[torch.Tensor]:
    """Reduce each ``values[i]`` over the process groups ``groups[i]`` (from :func:`shard_groups` or
    :func:`dim_groups`; empty: no reduction).

    Values with the same groups travel in one ``all_reduce``, in the order of their first appearance;
    since placements are the same on every rank, so are the number and order of the collectives
    (a rank whose shard is empty still takes part). Returns a new list; values without groups come
    back unchanged (the same objects).
    """
    out = list(values)
    by_groups: dict[tuple[Any, ...], list[int]] = {}
    for i, g in enumerate(groups):
        if g:
            by_groups.setdefault(tuple(g), []).append(i)
    for group_set, idx in by_groups.items():
        flat = torch.cat([values[i].reshape(-1) for i in idx])
        all_reduce_(flat, group_set, op)
        for i, part in zip(idx, flat.split([values[i].numel() for i in idx]), strict=True):
            out[i] = part.view_as(values[i])
    return out


def sharded_norms(
    norms: Sequence[torch.Tensor], likes: Sequence[torch.Tensor]
) -> list[torch.Tensor]:
    """Per-tensor L2 norms from the norms of local shards: ``norms[i]`` is the norm of ``likes[i]``'s
    local shard (or of a tensor sharded like it); the squares are summed over its shards, one
    collective per set of process groups. Plain tensors' norms come back unchanged (same objects)."""
    groups = [shard_groups(like) for like in likes]
    idx = [i for i, g in enumerate(groups) if g]
    out = list(norms)
    if not idx:
        return out
    squares = [norms[i].square() for i in idx]
    summed = all_reduce_grouped(squares, [groups[i] for i in idx], "sum")
    for i, sq in zip(idx, summed, strict=True):
        out[i] = sq.sqrt()
    return out


def reduced_zeros(param: torch.Tensor, dim: int) -> torch.Tensor:
    """Zeros shaped like ``param`` with dimension ``dim`` of size 1: the state of a row statistic
    (``dim=-1``) or a column statistic (``dim=-2``).

    A plain ``param`` gives ``param.new_zeros(shape)``. A DTensor gives a DTensor on the same mesh
    whose local shard matches the parameter's: sharded like ``param`` along the other dimensions,
    replicated over the mesh dimensions that shard ``dim`` (every rank holds the statistic of the
    rows, or of the whole columns, its shard touches; the values agree because the statistic is
    summed over those ranks). ``param.new_zeros`` on a DTensor would replicate the whole statistic.
    """
    shape = list(param.shape)
    shape[dim] = 1
    if not is_dtensor(param):
        return param.new_zeros(shape)
    from torch.distributed.tensor import DTensor, Replicate, Shard

    ndim = param.ndim
    placements = [
        Replicate() if isinstance(pl, Shard) and pl.dim % ndim == dim % ndim else pl
        for pl in param.placements
    ]
    local_shape = list(param.to_local().shape)
    local_shape[dim] = 1
    stride = [1] * ndim
    for d in range(ndim - 2, -1, -1):
        stride[d] = stride[d + 1] * shape[d + 1]
    return DTensor.from_local(
        param.to_local().new_zeros(local_shape),
        param.device_mesh,
        placements,
        run_check=False,
        shape=torch.Size(shape),
        stride=tuple(stride),
    )


def local_states(states: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Shallow copies of per-parameter state dicts with every DTensor replaced by its local shard
    (sharing storage: in-place updates reach the DTensor). For reading states only: a key assigned in
    a copy does not reach the real state."""
    return [
        {k: local(v) if isinstance(v, torch.Tensor) else v for k, v in s.items()} for s in states
    ]


def drop_empty(
    likes: Sequence[torch.Tensor], *lists: Sequence[Any] | None
) -> list[Any]:  # each a list, or None where that list was None
    """Each of ``lists`` (aligned with ``likes``; ``None`` passes through) without the entries whose
    tensor in ``likes`` is empty. ``likes`` are the DTensors under FSDP2 (global sizes: a rank whose
    own shard is empty keeps the entry, so it still joins the tensor's collectives), otherwise the
    plain tensors themselves."""
    keep = [i for i, t in enumerate(likes) if t.numel()]
    if len(keep) == len(likes):
        return [None if xs is None else list(xs) for xs in lists]
    return [None if xs is None else [xs[i] for i in keep] for xs in lists]


def global_sum(value: torch.Tensor, like: torch.Tensor, along: Along = "any") -> torch.Tensor:
    """``value`` (computed from ``like``'s local shard) summed over the shards of ``like``."""
    return all_reduce_(value, shard_groups(like, along), "sum")


def global_max(value: torch.Tensor, like: torch.Tensor, along: Along = "any") -> torch.Tensor:
    """``value`` (computed from ``like``'s local shard) maximized over the shards of ``like``."""
    return all_reduce_(value, shard_groups(like, along), "max")


def _accumulation_dtype(tensors: Sequence[torch.Tensor]) -> torch.dtype:
    if any(t.dtype == torch.float64 for t in tensors):
        return torch.float64
    return torch.float32


def global_norm(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """The L2 norm of all ``tensors`` together, as if concatenated: a 0-dim plain tensor, equal on all ranks.

    Squares are summed in float64 if any tensor is float64, else in float32 (bf16/fp16 included).
    Tensors are grouped by the process groups they are sharded over; each group costs one
    ``all_reduce`` of one scalar (none for plain tensors).
    """
    if not tensors:
        return torch.zeros(())
    dtype = _accumulation_dtype(tensors)
    device = local(tensors[0]).device
    by_groups: dict[tuple[Any, ...], list[torch.Tensor]] = {}
    for t in tensors:
        by_groups.setdefault(shard_groups(t), []).append(local(t))
    total = torch.zeros((), dtype=dtype, device=device)
    for groups, locals_ in by_groups.items():
        norms = torch._foreach_norm(locals_)
        squares = torch.stack([n.to(device=device, dtype=dtype) for n in norms]).square_().sum()
        total += all_reduce_(squares, groups, "sum")
    return total.sqrt_()


def norm(tensor: torch.Tensor) -> torch.Tensor:
    """The L2 norm of one (possibly sharded) tensor, as a 0-dim plain tensor equal on all ranks."""
    return global_norm([tensor])


def foreach_copy_(destinations: Sequence[torch.Tensor], sources: Sequence[torch.Tensor]) -> None:
    """``torch._foreach_copy_`` that also works on DTensors (it copies their local shards)."""
    torch._foreach_copy_(local_list(destinations), local_list(sources))


# -- ZeRO partitions ---------------------------------------------------------------------------------

_ZERO_MODULE = "torch.distributed.optim.zero_redundancy_optimizer"
#: how many frames above the caller :func:`zero_partition` looks for the ZeroRedundancyOptimizer
#: (torch 2.13: ZeRO._init_local_optimizer -> Subclass.__init__ [-> Parent.__init__ ...] -> here)
_ZERO_SEARCH_DEPTH = 12


@dataclass(frozen=True)
class Partition:
    """The ranks among which a ``ZeroRedundancyOptimizer`` partitions the parameters.

    ``group`` is its process group; ``device`` is where the collectives' tensors go (the device of
    its parameters, as ZeRO's own broadcasts: a CUDA device under NCCL, any under gloo)."""

    group: Any
    device: torch.device
    size: int


def zero_partition() -> Partition | None:
    """The partition of the ``ZeroRedundancyOptimizer`` that is constructing the caller, or ``None``.

    ``ZeroRedundancyOptimizer(params, optimizer_class=C, ...)`` builds ``C`` on this rank's share of
    the parameters only (``_init_local_optimizer``), so a statistic that ``C`` computes over "all
    parameters" would be over the share. Call this from the optimizer's constructor (adaptim's base
    class does it for classes with ``global_statistics = True``, storing the result as
    ``self.partition``): it walks up to ``_ZERO_SEARCH_DEPTH`` caller frames looking for a
    ``ZeroRedundancyOptimizer`` instance as ``self``, and returns its process group, device and size;
    ``None`` when there is none (or the group has one rank). No frame is inspected when
    ``torch.distributed.optim`` was never imported.

    To make a cross-tensor statistic exact under ZeRO (how Adai, AdaptiveHeavyBall*, NCGMomentumSGD
    and MADA do it):

    1. set ``global_statistics = True`` on the class;
    2. in the step, compute the statistic's *additive* parts from the local tensors (sums, and the
       counts a mean needs: a mean of means is not the mean), in a fixed order;
    3. when ``self.partition`` is not ``None``, sum them with :func:`partition_sum` on *every* rank
       and every step, also on a rank that holds no parameter or no gradient (with zeros): the
       collective must be entered by all ranks of the group, or they hang;
    4. derive the statistic (the division, the square root) from the summed parts.

    The result then equals a single process's up to the order of the floating-point additions. A
    statistic that is not a sum of per-rank parts (a median, a per-group quantity when groups differ
    between ranks) cannot be made exact this way; refuse partitioned use in the constructor instead,
    naming the optimizer and the alternative (e.g. DDP without ZeRO).
    """
    module = sys.modules.get(_ZERO_MODULE)
    if module is None:
        return None
    frame: FrameType | None = sys._getframe(1)
    for _ in range(_ZERO_SEARCH_DEPTH):
        if frame is None:
            return None
        owner = frame.f_locals.get("self")
        if isinstance(owner, module.ZeroRedundancyOptimizer):
            if owner.world_size < 2:
                return None
            device = next(
                (p.device for g in owner.param_groups for p in g["params"]), torch.device("cpu")
            )
            return Partition(owner.process_group, device, owner.world_size)
        frame = frame.f_back
    return None


def partition_sum(values: torch.Tensor, partition: Partition | None) -> torch.Tensor:
    """``values`` (a 1-D tensor of partial sums, the same length on every rank) summed over the ranks
    of ``partition`` in one ``all_reduce``; a new tensor on ``values``' device and in its dtype.

    ``partition=None`` returns ``values`` itself. Pass float64 partial sums (counts included: they
    stay exact up to 2**53) so that the sum loses nothing to rounding beyond the order of additions.
    """
    if partition is None:
        return values
    import torch.distributed as dist

    summed = values.to(device=partition.device, copy=True)
    dist.all_reduce(summed, op=dist.ReduceOp.SUM, group=partition.group)
    return summed.to(values.device)

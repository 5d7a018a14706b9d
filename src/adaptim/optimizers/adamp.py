"""AdamP and SGDP: Adam and SGD that do not inflate the norm of scale-invariant weights.

Paper: Heo, Chun, Oh, Han, Yun, Kim, Uh, Ha, "AdamP: Slowing Down the Slowdown for Momentum Optimizers
on Scale-invariant Weights", ICLR 2021, arXiv:2006.08217 (Alg. 1 for SGDP, Alg. 2 for AdamP).
Reference code: github.com/clovaai/AdamP at commit 7f6f038, files ``adamp/adamp.py`` and
``adamp/sgdp.py`` (identical to pip ``adamp==0.3.0``, the oracle of tests/optimizers/test_adamp.py).

A weight followed by a normalization layer (batch norm, layer norm) is scale invariant: the loss does
not change when it is scaled, so its gradient is orthogonal to it, and every momentum step increases
its norm, which shrinks its effective step size. AdamP/SGDP detect such weights from the cosine
between the *raw gradient* and the weight, and then remove the radial component of the *update
direction*. Update of AdamP (per parameter, step t >= 1)::

    m = b1 m + (1 - b1) g ;  v = b2 v + (1 - b2) g^2
    u = m / (sqrt(v / (1 - b2^t)) + eps)            # nesterov: u = (b1 m + (1 - b1) g) / (...)
    r = 1
    if p.ndim > 1:                                   # 1-D tensors (biases, norm scales) never projected
        for view in (channel: p.view(p.size(0), -1), layer: p.view(1, -1)):
            cos_i = |<g_i, p_i>| / (max(|g_i|, eps) max(|p_i|, eps))        # per row i of the view
            if max_i cos_i < delta / sqrt(row length of the view):
                q_i = p_i / (|p_i| + eps)
                u_i -= q_i <q_i, u_i>                 # remove the radial component, row by row
                r = wd_ratio
                break                                 # the channel view is tried first
    p *= 1 - lr * weight_decay * r                   # decoupled decay, reduced on projected weights
    p -= lr / (1 - b1^t) * u

SGDP: ``buf = momentum buf + (1 - dampening) g`` (the buffer starts at zero, unlike torch.optim.SGD);
``d = g + momentum buf`` (nesterov) or ``d = buf``; the same projection of ``d``; then
``p *= 1 - lr weight_decay r / (1 - momentum)``, ``p -= lr d``.

Paper vs code. We follow the code where the two could be read differently: the cosine is tested on
the raw gradient ``g`` (not the momentum), the projection is applied to the update direction (not to
``g``), the channel view is tried before the layer view, projected tensors get ``wd_ratio`` times the
decay, and SGDP scales its decay by ``1/(1 - momentum)``. Quirks of the code kept by default:

* SGDP without nesterov projects ``d``, which *is* the momentum buffer (an alias), so the stored
  buffer is the projected one; with nesterov the buffer is untouched. We reproduce that.
* The cosine threshold uses the row length of the view, ``delta / sqrt(numel / size(0))`` (channel)
  and ``delta / sqrt(numel)`` (layer).

Differences from the reference code, none of which changes a trajectory beyond rounding:

* The cosine is computed from per-row sums of ``g p``, ``g^2`` and ``p^2`` (the formula of
  ``F.cosine_similarity``); the layer view reuses the channel view's row sums instead of a second
  pass. ``q <q, u>`` is computed as ``p <p, u> / (|p| + eps)^2``.
* Empty tensors are never projected (the reference raises for them).
* Non-contiguous parameters work (the reference's ``view`` raises).
* The multi-tensor path decides all projections of a step with one host synchronization (the
  reference synchronizes once or twice per tensor). Under FSDP2 (DTensor parameters, sharded along
  any dimension, unevenly) the row sums, maxima and norms are reduced over the shards
  (``adaptim.core.distributed``): two collectives per step for the decisions, plus one per
  projected tensor whose rows are split over ranks or that is projected in the layer view. A
  sharded update equals the unsharded one (tests/test_fsdp2.py).
* The per-tensor path (``foreach=False``) and ``fused=True`` run one function, which never reads a
  value back to the host: it computes the decisions as 0-dim boolean tensors and the coefficients of
  both projections (from the same row sums, ``<p_i, u_i>`` included), and selects with
  ``torch.where`` (an unprojected update subtracts ``p * 0``); likewise the decay factor. ``fused=True``
  compiles it over whole tensors (``splits_tensors = False``). Under FSDP2 the per-tensor path
  reduces each tensor's sums over its shards (three collectives per tensor); ``fused=True`` refuses
  sharded parameters, since the compiled update sees one shard only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch

from adaptim.core.base import AdaptimOptimizer, TensorBatch, required
from adaptim.core.distributed import (
    all_reduce_many,
    any_dtensor,
    global_max,
    global_sum,
    local_list,
)
from adaptim.core.functional import (
    Scalar,
    adam_denominator,
    bias_correction,
    decoupled_weight_decay_,
    is_one,
    scalar_arg,
    scalars,
)
from adaptim.core.fused import run_elementwise
from adaptim.core.validation import NONNEGATIVE, UNIT_CLOSED, UNIT_HALF_OPEN, TupleOf
from adaptim.registry import OptimInfo, register

__all__ = ["SGDP", "AdamP"]

CHANNEL, LAYER = "channel", "layer"


class _ProjectionMixin(AdaptimOptimizer):
    """What AdamP and SGDP share: batch preparation (local shards of DTensors) and the rules."""

    cache_blocking = True  # the multi-tensor update is per tensor
    #: the multi-tensor update (the one torch.compile traces) reads its projection decisions back
    #: to the host; the per-tensor one (also fused=True) does not
    traceable_update = False
    fused_on_shards = False  # its reductions over each tensor would see one shard
    #: the per-tensor update reduces over whole tensors (cosines per row and per tensor), so
    #: fused=True compiles it over whole tensors, not flat pieces
    splits_tensors = False

    supports_dtensor = True  # tests/test_fsdp2.py

    elementwise = False

    @staticmethod
    def _tensors(batch: TensorBatch, *keys: str) -> tuple[list[torch.Tensor], ...]:
        """Params, grads and the states ``keys`` as plain tensors (DTensors' local shards)."""
        lists = [batch.params, batch.grads, *(batch.state(k) for k in keys)]
        if any_dtensor(batch.params):
            lists = [local_list(ts) for ts in lists]
        return tuple(lists)

    def _run_elementwise(self, group: dict[str, Any], batch: TensorBatch, *, fused: bool) -> None:
        if not any_dtensor(batch.params):
            super()._run_elementwise(group, batch, fused=fused)
            return
        # FSDP2 (never fused: fused_on_shards = False): the per-tensor update on the local shards,
        # given the DTensors as ``likes`` to reduce its sums over the shards
        fn, keys = self._elementwise_update(group)
        run_elementwise(
            fn,
            [*batch.local(*[k for k in keys if k is not None]), batch.params],
            batch.steps,
            lambda step: self._step_scalars(group, step),
            fused=False,
        )


class AdamP(_ProjectionMixin):
    """AdamP (Heo et al., ICLR 2021): Adam whose update of scale-invariant weights is made tangential.

    Args:
        params: parameters or param groups.
        lr: learning rate.
        betas: EMA coefficients of the gradient and of its square.
        eps: added to ``sqrt(v_hat)``; also the floor of the norms in the cosine and the projection.
        weight_decay: decoupled decay rate, ``p *= 1 - lr * weight_decay`` (times ``wd_ratio`` on
            projected tensors).
        delta: cosine threshold; a tensor is projected when ``max cos < delta / sqrt(row length)``.
        wd_ratio: factor on the weight decay of projected tensors.
        nesterov: use the Nesterov momentum direction ``b1 m + (1 - b1) g``.
        maximize: ascend instead of descend.
        foreach: ``None`` or ``True`` for the multi-tensor path, ``False`` for the per-tensor one.
        fused: ``True`` runs the per-tensor update compiled (C++ on CPU, Triton on CUDA;
            docs/fused.md) over whole tensors; refused for sharded (FSDP2) parameters. ``None``
            and ``False``: the eager path.
    """

    hyperparameter_rules = {
        "betas": TupleOf((UNIT_HALF_OPEN, UNIT_HALF_OPEN)),
        "delta": NONNEGATIVE,
        "wd_ratio": NONNEGATIVE,
    }
    state_keys = ("exp_avg", "exp_avg_sq")
    quantized_states = {"exp_avg": True, "exp_avg_sq": False}

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        delta: float = 0.1,
        wd_ratio: float = 0.1,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        state_bits: int = 32,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            delta=delta,
            wd_ratio=wd_ratio,
            nesterov=nesterov,
            maximize=maximize,
            foreach=foreach,
            fused=fused,
            state_bits=state_bits,
        )
        super().__init__(params, defaults)

    def _update(self, group: dict[str, Any], batch: TensorBatch, foreach: bool) -> None:
        params, grads, exp_avgs, exp_avg_sqs = self._tensors(batch, "exp_avg", "exp_avg_sq")
        beta1, beta2 = group["betas"]
        _multi_tensor_adamp(
            params,
            grads,
            exp_avgs,
            exp_avg_sqs,
            batch.steps,
            batch.params,
            lr=float(group["lr"]),
            beta1=beta1,
            beta2=beta2,
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            delta=group["delta"],
            wd_ratio=group["wd_ratio"],
            nesterov=group["nesterov"],
        )

    def _elementwise_update(
        self, group: Mapping[str, Any]
    ) -> tuple[Callable[..., None], tuple[str | None, ...]]:
        return _single_tensor_adamp, self.state_keys

    def _step_scalars(self, group: Mapping[str, Any], step: int) -> dict[str, Any]:
        lr, wd = float(group["lr"]), group["weight_decay"]
        beta1, beta2 = group["betas"]
        return dict(
            beta1=beta1,
            beta2=beta2,
            eps=group["eps"],
            delta=group["delta"],
            nesterov=group["nesterov"],
            bias_correction2=bias_correction(beta2, step),
            step_size=lr / bias_correction(beta1, step),
            # the decay as its factors, unprojected and projected (1 without decay): a group
            # without decay compiles the same graph as one with it
            keep=1.0 - lr * wd * 1.0,
            keep_projected=1.0 - lr * wd * group["wd_ratio"],
        )


class SGDP(_ProjectionMixin):
    """SGDP (Heo et al., ICLR 2021): SGD with momentum whose update of scale-invariant weights is tangential.

    Args:
        params: parameters or param groups.
        lr: learning rate (required, as in the reference code).
        momentum: momentum factor; the buffer starts at zero.
        dampening: the gradient enters the buffer with weight ``1 - dampening``.
        weight_decay: decoupled decay, ``p *= 1 - lr * weight_decay * r / (1 - momentum)`` with
            ``r = wd_ratio`` on projected tensors, else 1.
        nesterov: step along ``g + momentum * buf``.
        eps: floor of the norms in the cosine and the projection.
        delta: cosine threshold; a tensor is projected when ``max cos < delta / sqrt(row length)``.
        wd_ratio: factor on the weight decay of projected tensors.
        maximize: ascend instead of descend.
        foreach: ``None`` or ``True`` for the multi-tensor path, ``False`` for the per-tensor one.
        fused: ``True`` runs the per-tensor update compiled (C++ on CPU, Triton on CUDA;
            docs/fused.md) over whole tensors; refused for sharded (FSDP2) parameters. ``None``
            and ``False``: the eager path.
    """

    hyperparameter_rules = {
        "momentum": UNIT_HALF_OPEN,
        "dampening": UNIT_CLOSED,
        "delta": NONNEGATIVE,
        "wd_ratio": NONNEGATIVE,
    }
    state_keys = ("momentum",)
    quantized_states = {"momentum": True}

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = required,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        eps: float = 1e-8,
        delta: float = 0.1,
        wd_ratio: float = 0.1,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        state_bits: int = 32,
    ) -> None:
        defaults = dict(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
            eps=eps,
            delta=delta,
            wd_ratio=wd_ratio,
            maximize=maximize,
            foreach=foreach,
            fused=fused,
            state_bits=state_bits,
        )
        super().__init__(params, defaults)

    def _update(self, group: dict[str, Any], batch: TensorBatch, foreach: bool) -> None:
        params, grads, bufs = self._tensors(batch, "momentum")
        _multi_tensor_sgdp(
            params,
            grads,
            bufs,
            batch.params,
            lr=float(group["lr"]),
            momentum=group["momentum"],
            dampening=group["dampening"],
            weight_decay=group["weight_decay"],
            nesterov=group["nesterov"],
            eps=group["eps"],
            delta=group["delta"],
            wd_ratio=group["wd_ratio"],
        )

    def _elementwise_update(
        self, group: Mapping[str, Any]
    ) -> tuple[Callable[..., None], tuple[str | None, ...]]:
        return _single_tensor_sgdp, self.state_keys

    def _step_scalars(self, group: Mapping[str, Any], step: int) -> dict[str, Any]:
        lr, wd, momentum = float(group["lr"]), group["weight_decay"], group["momentum"]
        return dict(
            lr=lr,
            momentum=momentum,
            dampening=group["dampening"],
            nesterov=group["nesterov"],
            eps=group["eps"],
            delta=group["delta"],
            # the decay as its factors, unprojected and projected (1 without decay)
            keep=1.0 - lr * wd * 1.0 / (1 - momentum),
            keep_projected=1.0 - lr * wd * group["wd_ratio"] / (1 - momentum),
        )


# -- the projection -------------------------------------------------------------------------------
#
# ``p``, ``g`` and ``u`` are plain tensors: the parameter, its gradient and the update direction, or
# their local shards when the parameter ``like`` is a DTensor. Row ``i`` is ``p[i]`` flattened (the
# channel view); under FSDP2 a rank holds whole rows, but any sharding works.


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], math.prod(x.shape[1:]))


def _row_dot(x: torch.Tensor, y: torch.Tensor, scratch: torch.Tensor | None = None) -> torch.Tensor:
    """``<x_i, y_i>`` per row; the elementwise products go to ``scratch`` if given (no allocation)."""
    x, y = _rows(x), _rows(y)
    if scratch is None:
        return torch.linalg.vecdot(x, y)
    return torch.mul(x, y, out=scratch[: x.numel()].view(x.shape)).sum(1)


def _scratch(tensors: Sequence[torch.Tensor], likes: Sequence[torch.Tensor]) -> torch.Tensor | None:
    """One buffer for the row products of all projectable tensors of a step.

    On CPU a fresh tensor-sized temporary per dot product costs more (page faults) than the product;
    one buffer, reused tensor after tensor, is touched fresh only once per step.
    """
    sizes = [t.numel() for t, like in zip(tensors, likes, strict=True) if _projectable(like)]
    if not sizes:
        return None
    return tensors[0].new_empty(max(sizes))


def _thresholds(like: torch.Tensor, delta: float) -> tuple[float, float]:
    """``delta / sqrt(row length)`` for the channel and the layer view (global shape)."""
    numel = like.numel()
    return delta / math.sqrt(numel // like.shape[0]), delta / math.sqrt(numel)


def _projectable(like: torch.Tensor) -> bool:
    return like.ndim > 1 and like.numel() > 0


def _project_(
    u: torch.Tensor,
    p: torch.Tensor,
    norm: torch.Tensor,
    view: str,
    like: torch.Tensor,
    eps: float,
    scratch: torch.Tensor | None = None,
) -> None:
    """``u -= q <q, u>`` with ``q = p / (|p| + eps)`` per row (channel) or over the tensor (layer).

    ``norm`` holds the norms of ``p``: per local row (channel view) or of the whole tensor (layer).
    """
    if view == CHANNEL:
        radial = global_sum(_row_dot(p, u, scratch), like, along="rest")
        coef = radial.div_((norm + eps).square_()).view(-1, *([1] * (p.ndim - 1)))
    else:
        radial = global_sum(_row_dot(p.reshape(1, -1), u.reshape(1, -1), scratch)[0], like)
        coef = radial.div_((norm + eps).square_())
    u.addcmul_(p, coef, value=-1.0)


def _projection_decisions(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    likes: Sequence[torch.Tensor],
    *,
    delta: float,
    eps: float,
    scratch: torch.Tensor | None = None,
) -> list[tuple[str, torch.Tensor] | None]:
    """For each tensor: ``(view, norms of p in that view)`` if its update is projected, else ``None``.

    The reference's tests: the channel view if ``max_i |cos(g_i, p_i)| < delta / sqrt(row length)``,
    else the layer view if ``|cos(g, p)| < delta / sqrt(numel)``, else none; 1-D and empty tensors
    never. All tensors at once: per tensor one dot product and two norms per row, then a few ops
    over the concatenated rows, one collective per reduction under FSDP2, and one host
    synchronization for all decisions.
    """
    decisions: list[tuple[str, torch.Tensor] | None] = [None] * len(params)
    idx = [i for i, like in enumerate(likes) if _projectable(like)]
    if not idx:
        return decisions
    sub_likes = [likes[i] for i in idx]
    sharded = any_dtensor(sub_likes)
    dots, gnorms, pnorms = [], [], []
    for i in idx:
        g, p = _rows(grads[i]), _rows(params[i])
        dots.append(_row_dot(g, p, scratch))
        gnorms.append(torch.linalg.vector_norm(g, dim=1))
        pnorms.append(torch.linalg.vector_norm(p, dim=1))
    lengths = [d.numel() for d in dots]
    if sharded:  # rows split over ranks (sharded along dim >= 1): sum the squares, then the roots
        stats = [
            torch.stack([d, gn.square(), pn.square()])
            for d, gn, pn in zip(dots, gnorms, pnorms, strict=True)
        ]
        stats = all_reduce_many(stats, sub_likes, "sum", along="rest")
        dot, gg, pp = torch.cat(stats, dim=1)
        gnorm, pnorm = gg.sqrt(), pp.sqrt()
    else:
        dot, gnorm, pnorm = torch.cat(dots), torch.cat(gnorms), torch.cat(pnorms)
        gg, pp = gnorm.square(), pnorm.square()
    cos = dot.abs().div_(gnorm.clamp_min(eps).mul_(pnorm.clamp_min(eps)))
    segments = torch.repeat_interleave(
        torch.arange(len(idx), device=dot.device), torch.tensor(lengths, device=dot.device)
    )
    # per tensor: max row cosine (cos >= 0, so 0 is the empty maximum) and the layer sums
    cos_max = cos.new_zeros(len(idx)).scatter_reduce_(0, segments, cos, "amax")
    layer = dot.new_zeros(3, len(idx)).index_add_(1, segments, torch.stack([dot, gg, pp]))
    if sharded:  # rows split over ranks: combine the per-rank maxima and sums
        cos_max = torch.stack(all_reduce_many(list(cos_max), sub_likes, "max", along="first"))
        layer = torch.stack(
            all_reduce_many(list(layer.unbind(1)), sub_likes, "sum", along="first"), dim=1
        )
    layer_norm = layer[2].sqrt()
    cos_layer = layer[0].abs() / (layer[1].sqrt().clamp_min(eps) * layer_norm.clamp_min(eps))
    thresholds = torch.tensor([_thresholds(like, delta) for like in sub_likes], dtype=cos.dtype).t()
    channel_taken, layer_taken = torch.stack(
        [cos_max < thresholds[0].to(cos.device), cos_layer < thresholds[1].to(cos.device)]
    ).tolist()  # the one host synchronization
    row_norms = pnorm.split(lengths)
    for k, i in enumerate(idx):
        if channel_taken[k]:
            decisions[i] = (CHANNEL, row_norms[k])
        elif layer_taken[k]:
            decisions[i] = (LAYER, layer_norm[k])
    return decisions


def _tangential_(
    u: torch.Tensor,
    p: torch.Tensor,
    g: torch.Tensor,
    like: torch.Tensor | None,
    *,
    delta: Scalar,
    eps: Scalar,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's ``_projection`` without a branch on a value: ``u`` made tangential in place
    (``u -= q <q, u>``, per row or over the tensor) where ``p`` looks scale invariant.

    Returns the decisions ``(channel, layer)`` as 0-dim booleans, at most one true (the tests of
    :func:`_projection_decisions`). Both projections' coefficients come from the same per-row sums
    ``<g_i, p_i>``, ``|g_i|^2``, ``|p_i|^2``, ``<p_i, u_i>``; the one decided is selected, 0 (an
    exact no-op for finite ``p``) if none. ``p`` must be projectable (:func:`_projectable`).
    ``like`` is the DTensor whose local shards ``p``, ``g``, ``u`` are (FSDP2: the sums are reduced
    over its shards, three collectives), ``None`` for plain tensors.
    """
    gnorm = torch.linalg.vector_norm(_rows(g), dim=1)
    pnorm = torch.linalg.vector_norm(_rows(p), dim=1)
    dot, gg, pp, radial = _row_dot(g, p), gnorm.square(), pnorm.square(), _row_dot(p, u)
    if like is not None:  # rows split over ranks (sharded along dim >= 1): sum the squares
        dot, gg, pp, radial = global_sum(torch.stack([dot, gg, pp, radial]), like, along="rest")
        gnorm, pnorm = gg.sqrt(), pp.sqrt()
    cos = dot.abs() / (gnorm.clamp_min(eps) * pnorm.clamp_min(eps))
    cos_max = cos.amax() if cos.numel() else cos.new_zeros(())  # cos >= 0: 0 is the empty max
    layer_sums = torch.stack([dot.sum(), gg.sum(), pp.sum(), radial.sum()])
    if like is not None:  # the ranks that hold other rows
        cos_max = global_max(cos_max, like, along="first")
        layer_sums = global_sum(layer_sums, like, along="first")
    layer_dot, layer_gg, layer_pp, layer_radial = layer_sums
    layer_norm = layer_pp.sqrt()
    cos_layer = layer_dot.abs() / (layer_gg.sqrt().clamp_min(eps) * layer_norm.clamp_min(eps))
    shape = p.shape if like is None else like.shape  # the thresholds use the global shape
    numel = math.prod(shape)
    channel = _below(cos_max, delta / math.sqrt(numel // shape[0]))
    layer = _below(cos_layer, delta / math.sqrt(numel)) & ~channel
    coef = torch.where(
        channel,
        radial / (pnorm + eps).square(),
        torch.where(layer, layer_radial / (layer_norm + eps).square(), 0.0),
    )
    u.addcmul_(p, coef.view(-1, *([1] * (p.ndim - 1))), value=-1.0)
    return channel, layer


def _below(value: torch.Tensor, threshold: Scalar) -> torch.Tensor:
    """``value < threshold`` in ``value``'s dtype (the reference's comparison with a Python float),
    also where ``threshold`` is a float64 tensor (``fused=True``)."""
    if isinstance(threshold, torch.Tensor):
        threshold = threshold.to(value.dtype)
    return value < threshold


def _decay_(
    param: torch.Tensor, projected: torch.Tensor | None, keep: Scalar, keep_projected: Scalar
) -> None:
    """``p *= keep_projected`` if ``projected`` (a 0-dim boolean; ``None``: never), else ``keep``."""
    if projected is None:
        if not is_one(keep):
            param.mul_(keep)
        return
    if is_one(keep) and is_one(keep_projected):
        return
    if not isinstance(keep_projected, torch.Tensor):  # exact: no float32 tensor of a Python float
        keep_projected = torch.full((), keep_projected, dtype=torch.float64, device=param.device)
    param.mul_(torch.where(projected, keep_projected, keep))


# -- AdamP ----------------------------------------------------------------------------------------


def _single_tensor_adamp(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    likes: Sequence[torch.Tensor] | None = None,
    *,
    beta1: Scalar,
    beta2: Scalar,
    eps: Scalar,
    delta: Scalar,
    nesterov: bool,
    bias_correction2: Scalar,
    step_size: Scalar,
    keep: Scalar,
    keep_projected: Scalar,
) -> None:
    """AdamP's step; ``keep``/``keep_projected`` are the decay factors ``1 - lr wd`` and
    ``1 - lr wd wd_ratio``, ``likes`` the DTensors of local shards (FSDP2), else ``None``."""
    for i, param in enumerate(params):
        grad, exp_avg, exp_avg_sq = grads[i], exp_avgs[i], exp_avg_sqs[i]
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=scalar_arg(1 - beta2))
        denom = adam_denominator(exp_avg_sq, eps, bias_correction2)
        numer = exp_avg.lerp(grad, 1 - beta1) if nesterov else exp_avg
        update = numer / denom
        like = None if likes is None else likes[i]
        if _projectable(param if like is None else like):
            channel, layer = _tangential_(update, param, grad, like, delta=delta, eps=eps)
            _decay_(param, channel | layer, keep, keep_projected)
        else:
            _decay_(param, None, keep, keep_projected)
        param.add_(update, alpha=scalar_arg(-step_size))


def _multi_tensor_adamp(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    steps: list[int],
    likes: Sequence[torch.Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    delta: float,
    wd_ratio: float,
    nesterov: bool,
) -> None:
    # The decisions read p and the raw g only: take them before anything changes.
    scratch = _scratch(params, likes)
    decisions = _projection_decisions(params, grads, likes, delta=delta, eps=eps, scratch=scratch)
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
    numers = torch._foreach_lerp(exp_avgs, grads, 1 - beta1) if nesterov else exp_avgs
    # sqrt(v/bc2) + eps == (sqrt(v) + eps*sqrt(bc2)) / sqrt(bc2): sqrt(bc2) moves into the step size
    # (the projection is linear in the update, so it commutes with the scale).
    bc2_sqrt = [math.sqrt(bias_correction(beta2, s)) for s in steps]
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_add_(denom, scalars([eps * b for b in bc2_sqrt]))
    step_size = [-lr * b / bias_correction(beta1, s) for b, s in zip(bc2_sqrt, steps, strict=True)]

    proj = [i for i, d in enumerate(decisions) if d is not None]
    plain = [i for i, d in enumerate(decisions) if d is None]
    if proj:  # the update u = numer / denom, projected, in the denominator's memory
        updates = [denom[i] for i in proj]
        torch._foreach_reciprocal_(updates)
        torch._foreach_mul_(updates, [numers[i] for i in proj])
        for update, i in zip(updates, proj, strict=True):
            view, norm = decisions[i]  # type: ignore[misc]
            _project_(update, params[i], norm, view, likes[i], eps, scratch)
    if weight_decay != 0:
        ratios = [1.0 if d is None else wd_ratio for d in decisions]
        decoupled_weight_decay_(params, scalars([lr * weight_decay * r for r in ratios]))
    if plain:
        torch._foreach_addcdiv_(
            [params[i] for i in plain],
            [numers[i] for i in plain],
            [denom[i] for i in plain],
            scalars([step_size[i] for i in plain]),
        )
    if proj:
        proj_steps = scalars([step_size[i] for i in proj])
        if isinstance(proj_steps, list):
            torch._foreach_mul_(updates, proj_steps)
            proj_steps = 1.0
        torch._foreach_add_([params[i] for i in proj], updates, alpha=proj_steps)


# -- SGDP -----------------------------------------------------------------------------------------


def _single_tensor_sgdp(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    bufs: list[torch.Tensor],
    likes: Sequence[torch.Tensor] | None = None,
    *,
    lr: Scalar,
    momentum: Scalar,
    dampening: Scalar,
    nesterov: bool,
    eps: Scalar,
    delta: Scalar,
    keep: Scalar,
    keep_projected: Scalar,
) -> None:
    """SGDP's step; ``keep``/``keep_projected`` are the decay factors ``1 - lr wd / (1 - momentum)``
    and ``1 - lr wd wd_ratio / (1 - momentum)``, ``likes`` as for :func:`_single_tensor_adamp`."""
    for i, param in enumerate(params):
        grad, buf = grads[i], bufs[i]
        buf.mul_(momentum).add_(grad, alpha=scalar_arg(1 - dampening))
        # Without nesterov the direction IS the buffer (the reference aliases it): projecting the
        # direction projects the stored momentum too.
        direction = grad + buf * momentum if nesterov else buf
        like = None if likes is None else likes[i]
        if _projectable(param if like is None else like):
            channel, layer = _tangential_(direction, param, grad, like, delta=delta, eps=eps)
            _decay_(param, channel | layer, keep, keep_projected)
        else:
            _decay_(param, None, keep, keep_projected)
        param.add_(direction, alpha=scalar_arg(-lr))


def _multi_tensor_sgdp(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    bufs: list[torch.Tensor],
    likes: Sequence[torch.Tensor],
    *,
    lr: float,
    momentum: float,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
    eps: float,
    delta: float,
    wd_ratio: float,
) -> None:
    scratch = _scratch(params, likes)
    decisions = _projection_decisions(params, grads, likes, delta=delta, eps=eps, scratch=scratch)
    torch._foreach_mul_(bufs, momentum)
    torch._foreach_add_(bufs, grads, alpha=1 - dampening)
    directions = torch._foreach_add(grads, bufs, alpha=momentum) if nesterov else bufs
    for i, decision in enumerate(decisions):
        if decision is not None:
            _project_(directions[i], params[i], decision[1], decision[0], likes[i], eps, scratch)
    if weight_decay != 0:
        ratios = [1.0 if d is None else wd_ratio for d in decisions]
        decoupled_weight_decay_(
            params, scalars([lr * weight_decay * r / (1 - momentum) for r in ratios])
        )
    torch._foreach_add_(params, directions, alpha=-lr)


register(
    OptimInfo(
        name="adamp",
        verified="adamp==0.3.0 AdamP (2e-10); hand-computed projection; FSDP2",
        cls=AdamP,
        paper="Heo et al., AdamP: Slowing Down the Slowdown for Momentum Optimizers on "
        "Scale-invariant Weights, ICLR 2021",
        paper_url="https://arxiv.org/abs/2006.08217",
        reference="github.com/clovaai/AdamP@7f6f038 adamp/adamp.py (pip adamp==0.3.0)",
        description="Adam that removes the radial component of updates to scale-invariant weights.",
        supports_complex=False,
        tuned_lr={"quadratic": 0.1, "rosenbrock": 0.1},
    )
)
register(
    OptimInfo(
        name="sgdp",
        verified="adamp==0.3.0 SGDP (3e-16); hand-computed steps; FSDP2",
        cls=SGDP,
        paper="Heo et al., AdamP: Slowing Down the Slowdown for Momentum Optimizers on "
        "Scale-invariant Weights, ICLR 2021",
        paper_url="https://arxiv.org/abs/2006.08217",
        reference="github.com/clovaai/AdamP@7f6f038 adamp/sgdp.py (pip adamp==0.3.0)",
        description="SGD with momentum that removes the radial component of updates to "
        "scale-invariant weights.",
        supports_complex=False,
        test_kwargs={"lr": 0.01, "momentum": 0.9},
        tuned_lr={"quadratic": 0.1, "rosenbrock": 1e-3},
    )
)

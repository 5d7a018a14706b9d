"""SGD with a nonlinear-conjugate-gradient-style adaptive momentum.

Paper: Bao Wang, Qiang Ye, "Improving Deep Neural Networks' Training for Image Classification With
Nonlinear Conjugate Gradient-Style Adaptive Momentum", IEEE Transactions on Neural Networks and Learning
Systems 35(9):12288-12300 (2024); preprint "Stochastic Gradient Descent with Nonlinear Conjugate
Gradient-Style Adaptive Momentum", arXiv:2012.02188 (2020). Reference code: none published
(PapersWithCode lists no code); optimizer catalogues list the method as "FRSGD" (Fletcher-Reeves SGD).

**RECONSTRUCTED.** The paper's equations could not be retrieved, in either version (only the abstracts,
which agree, and a copy of the preprint with the mathematics stripped). The abstract: the momentum coefficient is set at each step like a nonlinear
conjugate gradient ``beta`` and needs no momentum hyperparameter. What follows is the most defensible
reading: heavy-ball momentum written as a CG direction, with the Fletcher-Reeves coefficient (the name
the method goes by), global over all parameters, and the classical NCG safeguard of a restart when the
coefficient exceeds one (the gradient norm grew, i.e. the last step overshot)::

    g_k     = grad (+ wd * p)                              # L2, folded into the gradient
    beta_k  = ||g_k||^2 / ||g_{k-1}||^2                      # beta_type="fr" (default)
            = max(0, <g_k, g_k - g_{k-1}>) / ||g_{k-1}||^2   # beta_type="pr" (Polak-Ribiere+)
    beta_k  = 0 if restart and beta_k > 1, else min(beta_k, max_momentum);  beta_1 = 0
    d_k     = g_k + beta_k d_{k-1}
    x_{k+1} = x_k - lr * d_k

Second search (2025), paper still unavailable: ar5iv.labs.arxiv.org/html/2012.02188 and the other stored
copies (PapersWithCode, deepai, emergentmind, arxivlens) show only the abstract and the opening of the
introduction; ``find_string`` "2012.02188" and the title find only optimizer catalogues (listing "FRSGD",
no code); the authors' repositories (BaoWangMath/*) hold no implementation.

Norms and inner products run over the concatenation of ALL parameters of ALL groups, as in the
deterministic method (the gradient of the whole objective). ``max_momentum`` (default 0.99) only caps the
coefficient between the restart threshold and one; it is a safeguard, not a tuned momentum.

Two passes per step, both over cache-sized chunks of tensors on CPU (``cache_blocking``; bit-identical
to one pass over all tensors). The first (``_before_update``) computes each tensor's ``||g_k||`` (and,
for PR, ``<g_k, g_{k-1}>``, then stores ``g_k`` in ``prev_grad``, which the update reads back); with
weight decay FR recomputes ``g + wd * p`` per chunk in each pass instead of storing it. The per-tensor
values come to the host once per step (the coefficient's restart is a branch, and ``grad_sq``, each
tensor's ``||g_{k-1}||^2``, is kept as a Python float so that checkpoints keep their meaning).

Given ``beta_k`` the update is elementwise: ``fused=True`` compiles it (core/fused.py), ``beta_k``
passed to it as a scalar of the step, while the first pass stays eager.

FSDP2 (DTensor parameters): the per-tensor squared norms (and PR's inner products) of the local shards
are summed over the shards (one collective per step), so ``beta_k`` is the same on every rank and
equals a single process's; the update then runs on the local shards (tests/test_fsdp2.py).

ZeRO (``torch.distributed.optim.ZeroRedundancyOptimizer`` builds the optimizer on one rank's share of
the tensors): the share's three sums are summed over the partition in one collective per step
(``global_statistics``; tests/test_zero.py), so ``beta_k`` is a single process's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from adaptim.core.base import AdaptimOptimizer, TensorBatch, required
from adaptim.core.distributed import all_reduce_many, any_dtensor, partition_sum
from adaptim.core.functional import Scalar, l2_weight_decay, scalar_arg
from adaptim.core.validation import BOOL, UNIT_HALF_OPEN, OneOf
from adaptim.registry import OptimInfo, register

__all__ = ["NCGMomentumSGD", "ncg_momentum"]


def ncg_momentum(
    grad_sq: float,
    prev_grad_sq: float,
    inner: float | None,
    beta_type: str,
    max_momentum: float,
    restart: bool,
) -> float:
    """The momentum coefficient from the global ``||g_k||^2``, ``||g_{k-1}||^2`` and ``<g_k, g_{k-1}>``."""
    if prev_grad_sq <= 0.0:
        return 0.0
    if beta_type == "fr":
        beta = grad_sq / prev_grad_sq
    else:
        assert inner is not None
        beta = max(0.0, grad_sq - inner) / prev_grad_sq
    # NaN: both squared norms overflowed (inf / inf; |g| ~ 1e19 and more in float32), so there is no
    # coefficient to take: restart, as for a coefficient above one
    if math.isnan(beta) or (restart and beta > 1.0):
        return 0.0
    return min(beta, max_momentum)


class NCGMomentumSGD(AdaptimOptimizer):
    """SGD whose momentum coefficient is a nonlinear-CG ``beta`` (Wang & Ye, 2020).

    The norms are over all parameters also under FSDP2 and ZeRO (exact there, up to rounding).

    Args:
        params: parameters or param groups.
        lr: learning rate (required).
        beta_type: ``"fr"`` (Fletcher-Reeves, default) or ``"pr"`` (Polak-Ribiere+, keeps the previous
            gradient: one more state tensor).
        max_momentum: upper bound of the coefficient.
        restart: set the coefficient to 0 when it exceeds 1.
        weight_decay: L2 coefficient, added to the gradient.
        maximize: ascend instead of descend.
        foreach: ``None`` or ``True`` for the multi-tensor path, ``False`` for the per-tensor one.
        fused: ``True`` runs the update as one compiled kernel per piece of parameters (C++ on CPU,
            Triton on CUDA; docs/fused.md); ``None`` and ``False``: the eager path.
    """

    hyperparameter_rules = {
        "beta_type": OneOf(("fr", "pr")),
        "max_momentum": UNIT_HALF_OPEN,
        "restart": BOOL,
    }
    state_keys = ("momentum_buffer",)
    quantized_states = {"momentum_buffer": True}
    supports_dtensor = True  # tests/test_fsdp2.py
    #: the norms are over all parameters: summed over a ZeRO partition (tests/test_zero.py)
    global_statistics = True
    #: the update reads the global squared norms and inner product back to the host
    traceable_update = False
    #: elementwise given ``beta_k``, which a first pass (``_before_update``) computes
    cache_blocking = True

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = required,
        beta_type: str = "fr",
        max_momentum: float = 0.99,
        weight_decay: float = 0.0,
        *,
        restart: bool = True,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        state_bits: int = 32,
    ) -> None:
        defaults = dict(
            lr=lr,
            beta_type=beta_type,
            max_momentum=max_momentum,
            weight_decay=weight_decay,
            restart=restart,
            maximize=maximize,
            foreach=foreach,
            fused=fused,
            state_bits=state_bits,
        )
        super().__init__(params, defaults)

    def _validate_relations(self, values: Any) -> None:
        # Norms are global: every group must use the same coefficient formula.
        if hasattr(self, "defaults") and values.get("beta_type") != self.defaults["beta_type"]:
            raise ValueError(
                "NCGMomentumSGD: invalid beta_type per param group; the coefficient is global, all "
                f"groups must use beta_type={self.defaults['beta_type']!r}"
            )

    def _init_state(
        self, group: Mapping[str, Any], param: torch.Tensor, state: dict[str, Any]
    ) -> None:
        super()._init_state(group, param, state)
        state["grad_sq"] = 0.0  # ||g_{k-1}||^2 of this tensor
        if group["beta_type"] == "pr":
            state["prev_grad"] = torch.zeros_like(param, memory_format=torch.preserve_format)

    def _before_update(self, prepared: list[tuple[dict[str, Any], list[TensorBatch]]]) -> None:
        """First pass: each tensor's ``||g_k||^2`` (and PR's ``<g_k, g_{k-1}>``, storing ``g_k`` in
        ``prev_grad``), per cache-sized chunk on CPU; one host transfer and, under FSDP2, one
        collective per step."""
        pr = self.defaults["beta_type"] == "pr"
        taken: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = []  # (values, likes) per part
        part_states: list[list[dict[str, Any]]] = []
        for group, batches in prepared:
            foreach, weight_decay = self._use_foreach(group), group["weight_decay"]
            fn: Callable[..., tuple[list[torch.Tensor], list[torch.Tensor]]]  # PR takes prev_grad
            if pr:
                fn = _multi_tensor_pr_stats_ if foreach else _single_tensor_pr_stats_
            else:
                fn = _multi_tensor_fr_stats if foreach else _single_tensor_fr_stats
            for batch in batches:
                for part in self._chunks(batch) if foreach else (batch,):
                    if not part.params:
                        continue
                    lists = part.local("prev_grad") if pr else part.local()
                    squares, dots = fn(*lists, weight_decay=weight_decay)
                    # the part's squares, then (PR) its dots: the same order on every rank
                    taken.append((squares + dots, part.params + part.params[: len(dots)]))
                    part_states.append(part.states)
        values = _gather(taken)
        grad_sq = prev_sq = inner = 0.0
        start = 0
        for states in part_states:
            k = len(states)
            part_squares = values[start : start + k]
            part_dots = values[start + k : start + 2 * k] if pr else [0.0] * k
            start += 2 * k if pr else k
            for state, sq, dot in zip(states, part_squares, part_dots, strict=True):
                if state["step"] > 1:  # only tensors with history enter the ratio
                    grad_sq += sq
                    prev_sq += state["grad_sq"]
                    inner += dot
                state["grad_sq"] = sq
        if self.partition is not None:
            # ZeRO: this rank holds a share of the tensors; the norms and the inner product are
            # over all of them (one collective per step, on every rank)
            partial = torch.tensor([grad_sq, prev_sq, inner], dtype=torch.float64)
            grad_sq, prev_sq, inner = partition_sum(partial, self.partition).tolist()
        self._sums = (grad_sq, prev_sq, inner if pr else None)

    def _momentum(self, group: Mapping[str, Any]) -> float:
        """``beta_k`` of this step, from the global sums of the first pass."""
        return ncg_momentum(
            *self._sums, group["beta_type"], group["max_momentum"], group["restart"]
        )

    def _update(self, group: dict[str, Any], batch: TensorBatch, foreach: bool) -> None:
        if group["beta_type"] == "pr":  # prev_grad holds g_k (L2 included) since the first pass
            params, _, bufs, grads = batch.local("momentum_buffer", "prev_grad")
            weight_decay = 0.0
        else:
            params, grads, bufs = batch.local("momentum_buffer")
            weight_decay = group["weight_decay"]
        _multi_tensor_ncg_sgd(
            params,
            grads,
            bufs,
            lr=float(group["lr"]),
            beta=self._momentum(group),
            weight_decay=weight_decay,
        )

    def _elementwise_update(
        self, group: Mapping[str, Any]
    ) -> tuple[Callable[..., None], tuple[str | None, ...]]:
        """The second pass, elementwise given ``beta_k`` (``_step_scalars``); PR reads ``g_k``
        from ``prev_grad``, where the first pass stored it."""
        prev_grad = "prev_grad" if group["beta_type"] == "pr" else None
        return _single_tensor_ncg_sgd, ("momentum_buffer", prev_grad)

    def _step_scalars(self, group: Mapping[str, Any], step: int) -> dict[str, Any]:
        """The keyword arguments of ``_single_tensor_ncg_sgd``: ``beta_k`` is global, the same at
        every step count."""
        pr = group["beta_type"] == "pr"  # g_k in prev_grad has the L2 term already
        return dict(
            lr=float(group["lr"]),
            beta=self._momentum(group),
            weight_decay=0.0 if pr else group["weight_decay"],
        )


def _gather(taken: list[tuple[list[torch.Tensor], list[torch.Tensor]]]) -> list[float]:
    """The values of all parts in order, each summed over the shards of its ``like`` under FSDP2
    (one collective per set of process groups), as Python floats: the one host transfer of the
    step."""
    if not taken:
        return []
    likes = [like for _, ls in taken for like in ls]
    if any_dtensor(likes):
        flat = all_reduce_many([v for vals, _ in taken for v in vals], likes)
        start, regrouped = 0, []
        for vals, ls in taken:
            regrouped.append((flat[start : start + len(vals)], ls))
            start += len(vals)
        taken = regrouped
    device = taken[0][0][0].device
    return torch.cat(
        [torch.stack(vals).to(device=device, dtype=torch.float64) for vals, _ in taken]
    ).tolist()


# -- first pass: the per-tensor statistics --------------------------------------------------------


def _single_tensor_fr_stats(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    *,
    weight_decay: float,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Each ``||g_k||^2`` with ``g_k = grad + wd * p``; no inner products."""
    squares = []
    for param, grad in zip(params, grads, strict=True):
        if weight_decay:
            grad = grad.add(param, alpha=weight_decay)  # a new tensor, never p.grad
        squares.append(torch.linalg.vector_norm(grad).square())
    return squares, []


def _multi_tensor_fr_stats(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    *,
    weight_decay: float,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    grads = l2_weight_decay(grads, params, weight_decay)
    return list(torch._foreach_pow(torch._foreach_norm(grads), 2)), []


def _single_tensor_pr_stats_(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    prev_grads: list[torch.Tensor],
    *,
    weight_decay: float,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Each ``||g_k||^2`` and ``<g_k, g_{k-1}>``; stores ``g_k`` in ``prev_grads``."""
    squares, dots = [], []
    for param, grad, prev in zip(params, grads, prev_grads, strict=True):
        if weight_decay:
            grad = grad.add(param, alpha=weight_decay)
        squares.append(torch.linalg.vector_norm(grad).square())
        dots.append(torch.vdot(grad.flatten(), prev.flatten()))
        prev.copy_(grad)
    return squares, dots


def _multi_tensor_pr_stats_(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    prev_grads: list[torch.Tensor],
    *,
    weight_decay: float,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    grads = l2_weight_decay(grads, params, weight_decay)
    squares = list(torch._foreach_pow(torch._foreach_norm(grads), 2))
    dots = [torch.vdot(g.flatten(), q.flatten()) for g, q in zip(grads, prev_grads, strict=True)]
    torch._foreach_copy_(prev_grads, grads)
    return squares, dots


# -- second pass: the step ------------------------------------------------------------------------


def _single_tensor_ncg_sgd(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    bufs: list[torch.Tensor],
    prev_grads: list[torch.Tensor] | None,
    *,
    lr: Scalar,
    beta: Scalar,
    weight_decay: Scalar,
) -> None:
    """One step per tensor. ``g_k`` is ``prev_grads[i]`` where the first pass stored it (PR, L2
    included), else ``grad + weight_decay * p``, recomputed as in the first pass."""
    for i, param in enumerate(params):
        if prev_grads is not None:
            grad = prev_grads[i]
        else:
            grad = l2_weight_decay(grads[i], param, weight_decay)
        bufs[i].mul_(beta).add_(grad)  # d_k = g_k + beta_k d_{k-1}
        param.add_(bufs[i], alpha=scalar_arg(-lr))


def _multi_tensor_ncg_sgd(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    bufs: list[torch.Tensor],
    *,
    lr: float,
    beta: float,
    weight_decay: float,
) -> None:
    if not params:
        return
    grads = l2_weight_decay(grads, params, weight_decay)  # as in the first pass
    torch._foreach_mul_(bufs, beta)
    torch._foreach_add_(bufs, grads)
    torch._foreach_add_(params, bufs, alpha=-lr)


register(
    OptimInfo(
        name="ncg_sgd",
        verified="hand-computed steps (rule RECONSTRUCTED); behaviour; FSDP2",
        cls=NCGMomentumSGD,
        paper="Wang & Ye, Improving Deep Neural Networks' Training for Image Classification With "
        "Nonlinear Conjugate Gradient-Style Adaptive Momentum, IEEE TNNLS 35(9), 2024 (arXiv "
        "2012.02188)",
        paper_url="https://arxiv.org/abs/2012.02188",
        reference="no official code; rule RECONSTRUCTED (Fletcher-Reeves coefficient with restart)",
        description="SGD whose momentum is the Fletcher-Reeves (or PR+) nonlinear-CG coefficient, "
        "restarted when it exceeds one.",
        test_kwargs={"lr": 0.05},
        tuned_lr={"quadratic": 0.3, "rosenbrock": 1e-3},
        aliases=("frsgd",),
    )
)

"""SGD with a nonlinear-conjugate-gradient-style adaptive momentum.

Paper: Bao Wang, Qiang Ye, "Stochastic Gradient Descent with Nonlinear Conjugate Gradient-Style Adaptive
Momentum", arXiv:2012.02188 (2020). Reference code: none published (PapersWithCode lists no code);
optimizer catalogues list the method as "FRSGD" (Fletcher-Reeves SGD).

**RECONSTRUCTED.** The paper's equations could not be retrieved (only the abstract and a copy with the
mathematics stripped). The abstract: the momentum coefficient is set at each step like a nonlinear
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

FSDP2 (DTensor parameters): the per-tensor squared norms (and PR's inner products) of the local shards
are summed over the shards (one collective per batch), so ``beta_k`` is the same on every rank and
equals a single process's; the update then runs on the local shards (tests/test_fsdp2.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from adaptim.core.base import AdaptimOptimizer, TensorBatch
from adaptim.core.distributed import (
    all_reduce_many,
    any_dtensor,
    foreach_copy_,
    local,
    local_list,
    sharded_norms,
)
from adaptim.core.functional import l2_weight_decay
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
    if restart and beta > 1.0:
        return 0.0
    return min(beta, max_momentum)


class NCGMomentumSGD(AdaptimOptimizer):
    """SGD whose momentum coefficient is a nonlinear-CG ``beta`` (Wang & Ye, 2020).

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
    """

    hyperparameter_rules = {
        "beta_type": OneOf(("fr", "pr")),
        "max_momentum": UNIT_HALF_OPEN,
        "restart": BOOL,
    }
    state_keys = ("momentum_buffer",)
    supports_dtensor = True  # tests/test_fsdp2.py

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        beta_type: str = "fr",
        max_momentum: float = 0.99,
        weight_decay: float = 0.0,
        *,
        restart: bool = True,
        maximize: bool = False,
        foreach: bool | None = None,
    ) -> None:
        defaults = dict(
            lr=lr,
            beta_type=beta_type,
            max_momentum=max_momentum,
            weight_decay=weight_decay,
            restart=restart,
            maximize=maximize,
            foreach=foreach,
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
        self, group: dict[str, Any], param: torch.Tensor, state: dict[str, Any]
    ) -> None:
        super()._init_state(group, param, state)
        state["grad_sq"] = 0.0  # ||g_{k-1}||^2 of this tensor
        if group["beta_type"] == "pr":
            state["prev_grad"] = torch.zeros_like(param, memory_format=torch.preserve_format)

    def _before_update(self, prepared: list[tuple[dict[str, Any], list[TensorBatch]]]) -> None:
        pr = self.defaults["beta_type"] == "pr"
        grad_sq = prev_sq = inner = 0.0
        for group, batches in prepared:
            foreach = self._use_foreach(group)
            for batch in batches:
                batch.grads = l2_weight_decay(batch.grads, batch.params, group["weight_decay"])
                # FSDP2: norms of the local shards, squares summed over the shards
                likes = batch.grads if any_dtensor(batch.grads) else None
                grads = batch.grads if likes is None else local_list(batch.grads)
                if foreach:
                    norms = torch._foreach_norm(grads)
                else:
                    norms = [torch.linalg.vector_norm(g) for g in grads]
                if likes is not None:
                    norms = sharded_norms(norms, likes)
                sq = [n * n for n in torch.stack(norms).double().tolist()]
                for state, s in zip(batch.states, sq, strict=True):
                    if state["step"] > 1:  # only tensors with history enter the ratio
                        grad_sq += s
                        prev_sq += state["grad_sq"]
                    state["grad_sq_new"] = s
                if pr and likes is None:
                    for g, state in zip(batch.grads, batch.states, strict=True):
                        if state["step"] > 1:
                            inner += torch.vdot(g.flatten(), state["prev_grad"].flatten()).item()
                elif pr:  # the local shards' dot products, summed over the shards
                    idx = [i for i, state in enumerate(batch.states) if state["step"] > 1]
                    dots = [
                        torch.vdot(
                            grads[i].flatten(), local(batch.states[i]["prev_grad"]).flatten()
                        )
                        for i in idx
                    ]
                    dots = all_reduce_many(dots, [likes[i] for i in idx])
                    inner += sum(torch.stack(dots).tolist()) if dots else 0.0
        for _, batches in prepared:
            for batch in batches:
                for state in batch.states:
                    state["grad_sq"] = state.pop("grad_sq_new")
        self._sums = (grad_sq, prev_sq, inner if pr else None)

    def _update(self, group: dict[str, Any], batch: TensorBatch, foreach: bool) -> None:
        beta = ncg_momentum(
            *self._sums, group["beta_type"], group["max_momentum"], group["restart"]
        )
        fn = _multi_tensor_ncg_sgd if foreach else _single_tensor_ncg_sgd
        params, grads = batch.params, batch.grads
        bufs = batch.state("momentum_buffer")
        prev = batch.state("prev_grad") if group["beta_type"] == "pr" else None
        if any_dtensor(params):  # elementwise given the global beta: run on the local shards
            params, grads, bufs = local_list(params), local_list(grads), local_list(bufs)
            prev = None if prev is None else local_list(prev)
        fn(
            params,
            grads,
            bufs,
            prev,
            lr=float(group["lr"]),
            beta=beta,
        )


def _single_tensor_ncg_sgd(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    bufs: list[torch.Tensor],
    prev_grads: list[torch.Tensor] | None,
    *,
    lr: float,
    beta: float,
) -> None:
    for i, param in enumerate(params):
        bufs[i].mul_(beta).add_(grads[i])  # d_k = g_k + beta_k d_{k-1}
        if prev_grads is not None:
            prev_grads[i].copy_(grads[i])
        param.add_(bufs[i], alpha=-lr)


def _multi_tensor_ncg_sgd(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    bufs: list[torch.Tensor],
    prev_grads: list[torch.Tensor] | None,
    *,
    lr: float,
    beta: float,
) -> None:
    torch._foreach_mul_(bufs, beta)
    torch._foreach_add_(bufs, grads)
    if prev_grads is not None:
        foreach_copy_(prev_grads, grads)
    torch._foreach_add_(params, bufs, alpha=-lr)


register(
    OptimInfo(
        name="ncg_sgd",
        verified="hand-computed steps (rule RECONSTRUCTED); behaviour; FSDP2",
        cls=NCGMomentumSGD,
        paper="Wang & Ye, Stochastic Gradient Descent with Nonlinear Conjugate Gradient-Style "
        "Adaptive Momentum, arXiv 2020",
        paper_url="https://arxiv.org/abs/2012.02188",
        reference="no official code; rule RECONSTRUCTED (Fletcher-Reeves coefficient with restart)",
        description="SGD whose momentum is the Fletcher-Reeves (or PR+) nonlinear-CG coefficient, "
        "restarted when it exceeds one.",
        test_kwargs={"lr": 0.05},
        tuned_lr={"quadratic": 0.3, "rosenbrock": 1e-3},
        aliases=("frsgd",),
    )
)

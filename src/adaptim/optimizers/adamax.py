"""AdaMax: Adam with the infinity norm.

Paper: Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015, arXiv:1412.6980,
Sec. 7.1 (Alg. 2).
Reference code: ``torch.optim.Adamax`` (torch 2.13), which this matches step for step
(tests/optimizers/test_adamax.py).

Update (per parameter, step t >= 1)::

    g = grad (+ wd * p unless decoupled)          # L2, torch's (only) weight decay
    p *= 1 - lr * wd                              # decoupled_weight_decay=True (our option)
    m = b1 m + (1 - b1) g
    u = max(b2 u, |g| + eps)
    p -= lr / (1 - b1^t) * m / u

Paper vs reference code: Alg. 2 has no eps, ``u_t = max(b2 u_{t-1}, |g_t|)``, so a coordinate whose
gradients have all been zero divides 0 by 0. ``torch.optim.Adamax`` puts eps *inside* the max
(``|g| + eps``), which keeps ``u >= eps``; we follow torch (``eps=0`` gives the paper's rule). Defaults
are the paper's and torch's: lr 2e-3, betas (0.9, 0.999), eps 1e-8. ``decoupled_weight_decay`` is not in
torch's Adamax; it is the shared AdamW-style decay (Loshchilov & Hutter, arXiv:1711.05101), off by default.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from adaptim.core.base import AdaptimOptimizer, TensorBatch
from adaptim.core.functional import (
    Scalar,
    bias_correction,
    decoupled_weight_decay_,
    l2_weight_decay,
    scalar_arg,
    scalars,
)
from adaptim.core.validation import UNIT_HALF_OPEN, TupleOf
from adaptim.registry import OptimInfo, register

__all__ = ["Adamax"]


class Adamax(AdaptimOptimizer):
    """AdaMax (Kingma & Ba, 2015, Sec. 7.1), as ``torch.optim.Adamax``.

    Args:
        params: parameters or param groups.
        lr: learning rate.
        betas: EMA coefficient of the gradient and decay of the infinity norm ``u``.
        eps: added to ``|g|`` inside the max, so ``u >= eps``.
        weight_decay: L2 coefficient (added to the gradient) or, if ``decoupled_weight_decay``,
            the decoupled decay rate ``p *= 1 - lr * weight_decay``.
        decoupled_weight_decay: decay the parameters directly instead of adding ``wd * p`` to ``g``.
        maximize: ascend instead of descend.
        foreach: ``None`` or ``True`` for the multi-tensor path, ``False`` for the per-tensor one.
        fused: ``True`` runs the update as one compiled kernel per piece of parameters (C++ on CPU,
            Triton on CUDA; docs/fused.md); ``None`` and ``False``: the eager path.
    """

    cache_blocking = True  # the multi-tensor update is per tensor
    splits_tensors = True  # and elementwise inside each tensor

    supports_dtensor = True  # tests/test_fsdp2.py

    hyperparameter_rules = {"betas": TupleOf((UNIT_HALF_OPEN, UNIT_HALF_OPEN))}
    state_keys = ("exp_avg", "exp_inf")
    quantized_states = {"exp_avg": True, "exp_inf": False}

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 2e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        decoupled_weight_decay: bool = False,
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
            decoupled_weight_decay=decoupled_weight_decay,
            maximize=maximize,
            foreach=foreach,
            fused=fused,
            state_bits=state_bits,
        )
        super().__init__(params, defaults)

    def _update(self, group: dict[str, Any], batch: TensorBatch, foreach: bool) -> None:
        beta1, beta2 = group["betas"]
        _multi_tensor_adamax(
            batch.params,
            batch.grads,
            batch.state("exp_avg"),
            batch.state("exp_inf"),
            batch.steps,
            lr=float(group["lr"]),
            beta1=beta1,
            beta2=beta2,
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            decoupled_weight_decay=group["decoupled_weight_decay"],
        )

    def _elementwise_update(
        self, group: Mapping[str, Any]
    ) -> tuple[Callable[..., None], tuple[str | None, ...]]:
        return _single_tensor_adamax, ("exp_avg", "exp_inf")

    def _step_scalars(self, group: Mapping[str, Any], step: int) -> dict[str, Any]:
        lr = float(group["lr"])
        beta1, beta2 = group["betas"]
        return dict(
            lr=lr,
            beta1=beta1,
            beta2=beta2,
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            decoupled_weight_decay=group["decoupled_weight_decay"],
            step_size=lr / bias_correction(beta1, step),
        )


def _single_tensor_adamax(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_infs: list[torch.Tensor],
    *,
    lr: Scalar,
    beta1: Scalar,
    beta2: Scalar,
    eps: Scalar,
    weight_decay: Scalar,
    decoupled_weight_decay: bool,
    step_size: Scalar,
) -> None:
    """``step_size``: ``lr / (1 - b1^t)``."""
    for i, param in enumerate(params):
        grad, exp_avg, exp_inf = grads[i], exp_avgs[i], exp_infs[i]
        if decoupled_weight_decay:
            decoupled_weight_decay_(param, lr * weight_decay)
        else:
            grad = l2_weight_decay(grad, param, weight_decay)
        exp_avg.lerp_(grad, 1 - beta1)  # m = b1 m + (1 - b1) g
        exp_inf.mul_(beta2)
        torch.maximum(exp_inf, grad.abs().add_(eps), out=exp_inf)  # u = max(b2 u, |g| + eps)
        param.addcdiv_(exp_avg, exp_inf, value=scalar_arg(-step_size))


def _multi_tensor_adamax(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_infs: list[torch.Tensor],
    steps: list[int],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled_weight_decay: bool,
) -> None:
    fresh = not decoupled_weight_decay and weight_decay != 0  # l2_weight_decay returns new tensors
    if decoupled_weight_decay:
        decoupled_weight_decay_(params, lr * weight_decay)
    else:
        grads = l2_weight_decay(grads, params, weight_decay)
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    if fresh:  # ours to overwrite; never the user's p.grad
        torch._foreach_abs_(grads)
        abs_grads = grads
    else:
        abs_grads = list(torch._foreach_abs(grads))
    if eps:
        torch._foreach_add_(abs_grads, eps)
    torch._foreach_mul_(exp_infs, beta2)
    torch._foreach_maximum_(exp_infs, abs_grads)
    step_size = [-lr / bias_correction(beta1, s) for s in steps]
    torch._foreach_addcdiv_(params, exp_avgs, exp_infs, scalars(step_size))


register(
    OptimInfo(
        name="adamax",
        cls=Adamax,
        paper="Kingma & Ba, Adam: A Method for Stochastic Optimization, ICLR 2015 (Sec. 7.1)",
        paper_url="https://arxiv.org/abs/1412.6980",
        reference="torch.optim.Adamax",
        description="Adam's variant with an exponentially weighted infinity norm instead of sqrt(v).",
        # Rosenbrock: u keeps the large early gradients for ~1/(1-b2) steps, so small lrs crawl;
        # lr 1.2 to 1.5 converge (1.4: 9.7e-3 from the minimizer), 1.0 and 2.0 do not (7.9e-2, 8.6e-2).
        tuned_lr={"quadratic": 0.05, "rosenbrock": 1.4},
        verified="torch.optim.Adamax",
    )
)

"""Adam and AdamW.

Paper: Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015, arXiv:1412.6980 (Alg. 1).
AdamW: Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019, arXiv:1711.05101 (Alg. 2).
Reference code: ``torch.optim.Adam`` / ``torch.optim.AdamW`` (torch 2.13), which these match step for step
(tests/optimizers/test_oracle_parity.py).

Update (per parameter, step t >= 1)::

    g = grad (+ wd * p unless decoupled)          # L2, torch's default for Adam
    p *= 1 - lr * wd                              # decoupled (AdamW)
    m = b1 m + (1 - b1) g
    v = b2 v + (1 - b2) g^2                       # amsgrad: v_max = max(v_max, v), used below
    p -= lr / (1 - b1^t) * m / (sqrt(v / (1 - b2^t)) + eps)

eps sits outside the square root of the bias-corrected ``v`` (Alg. 1), as in torch. AdamW's decay is
multiplied by ``lr`` (torch's convention), so a schedule on ``lr`` also schedules the decay; the paper
multiplies it by the schedule factor only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from adaptim.core.base import AdaptimOptimizer, TensorBatch
from adaptim.core.functional import (
    Scalar,
    adam_denominator,
    bias_correction,
    decoupled_weight_decay_,
    l2_weight_decay,
    scalar_arg,
    scalars,
)
from adaptim.core.fused import by_step, run_elementwise
from adaptim.core.validation import UNIT_HALF_OPEN, TupleOf
from adaptim.registry import OptimInfo, register

__all__ = ["Adam", "AdamW"]


class Adam(AdaptimOptimizer):
    """Adam (Kingma & Ba, 2015); ``decoupled_weight_decay=True`` gives AdamW.

    Args:
        params: parameters or param groups.
        lr: learning rate.
        betas: EMA coefficients of the gradient and of its square.
        eps: added to ``sqrt(v_hat)``.
        weight_decay: L2 coefficient (added to the gradient) or, if ``decoupled_weight_decay``,
            the decoupled decay rate ``p *= 1 - lr * weight_decay``.
        amsgrad: use the running maximum of ``v`` (Reddi et al., 2018).
        maximize: ascend instead of descend.
        foreach: ``None`` or ``True`` for the multi-tensor path, ``False`` for the per-tensor one.
        fused: ``True`` runs the update as one compiled kernel per piece of parameters (C++ on CPU,
            Triton on CUDA; docs/fused.md); ``None`` and ``False``: the eager path.
    """

    cache_blocking = True  # the multi-tensor update is per tensor
    splits_tensors = True  # and elementwise inside each tensor

    supports_dtensor = True  # tests/test_fsdp2.py

    hyperparameter_rules = {"betas": TupleOf((UNIT_HALF_OPEN, UNIT_HALF_OPEN))}
    state_keys = ("exp_avg", "exp_avg_sq")
    optional_state_keys = {"amsgrad": "max_exp_avg_sq"}
    quantized_states = {"exp_avg": True, "exp_avg_sq": False, "max_exp_avg_sq": False}

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        decoupled_weight_decay: bool = False,
        amsgrad: bool = False,
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
            amsgrad=amsgrad,
            maximize=maximize,
            foreach=foreach,
            fused=fused,
            state_bits=state_bits,
        )
        super().__init__(params, defaults)

    def _update(self, group: dict[str, Any], batch: TensorBatch, foreach: bool) -> None:
        beta1, beta2 = group["betas"]
        _multi_tensor_adam(
            batch.params,
            batch.grads,
            batch.state("exp_avg"),
            batch.state("exp_avg_sq"),
            batch.state("max_exp_avg_sq") if group["amsgrad"] else None,
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
        amsgrad = "max_exp_avg_sq" if group["amsgrad"] else None
        return _single_tensor_adam, ("exp_avg", "exp_avg_sq", amsgrad)

    def _step_scalars(self, group: Mapping[str, Any], step: int) -> dict[str, Any]:
        return adam_step_scalars(
            float(group["lr"]),
            group["betas"],
            group["eps"],
            group["weight_decay"],
            group["decoupled_weight_decay"],
            step,
        )

    def _use_fused(self, group: Mapping[str, Any], batch: TensorBatch) -> bool:
        # torch's fused Adam kernels compute exactly this update and need no compilation, so they
        # are also the default (fused=None) where torch has them
        if group["fused"] is None:
            return group["foreach"] is None and _torch_fused_supports(batch)
        return super()._use_fused(group, batch)

    def _fused_unavailable_reason(self, device: torch.device) -> str | None:
        if device.type in ("cpu", "cuda"):
            return None
        return f"torch has fused Adam kernels for CPU and CUDA, not {device.type!r}"

    def _fused_update(self, group: dict[str, Any], batch: TensorBatch) -> None:
        params, grads, exp_avgs, exp_avg_sqs, *rest = batch.local(
            "exp_avg", "exp_avg_sq", *(["max_exp_avg_sq"] if group["amsgrad"] else [])
        )
        kernel = torch._fused_adamw_ if group["decoupled_weight_decay"] else torch._fused_adam_
        beta1, beta2 = group["betas"]
        # torch's CPU kernel walks the raw memory of param, grad and states in step: a tensor whose
        # layouts differ (a transposed parameter with a contiguous gradient) takes the eager update
        lists = [params, grads, exp_avgs, exp_avg_sqs, *rest]
        steps = batch.steps  # a new list at each read: read once, not per tensor (O(n^2))
        same_layout = [all(ts[i].is_contiguous() for ts in lists) for i in range(len(params))]
        odd = [i for i, ok in enumerate(same_layout) if not ok]
        kept = [i for i, ok in enumerate(same_layout) if ok]
        if odd:
            run_elementwise(
                _single_tensor_adam,
                [[ts[i] for i in odd] for ts in lists] + ([] if rest else [None]),
                [steps[i] for i in odd],
                lambda step: self._step_scalars(group, step),
                fused=False,
            )
        for step, positions in by_step([steps[i] for i in kept]).items():
            idx = [kept[j] for j in positions]

            def pick(ts: list[torch.Tensor], idx: list[int] = idx) -> list[torch.Tensor]:
                return ts if len(idx) == len(ts) else [ts[i] for i in idx]

            step_t = torch.tensor(float(step), dtype=torch.float32, device=params[0].device)
            kernel(
                pick(params),
                pick(grads),
                pick(exp_avgs),
                pick(exp_avg_sqs),
                pick(rest[0]) if rest else [],
                [step_t] * len(idx),
                lr=float(group["lr"]),
                beta1=beta1,
                beta2=beta2,
                weight_decay=group["weight_decay"],
                eps=group["eps"],
                amsgrad=group["amsgrad"],
                maximize=False,  # the base class has already negated the gradients
            )


def adam_step_scalars(
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    decoupled_weight_decay: bool,
    step: int,
) -> dict[str, Any]:
    """The keyword arguments of ``_single_tensor_adam`` at step ``step``."""
    beta1, beta2 = betas
    return dict(
        lr=lr,
        beta1=beta1,
        beta2=beta2,
        eps=eps,
        weight_decay=weight_decay,
        decoupled_weight_decay=decoupled_weight_decay,
        step_size=lr / bias_correction(beta1, step),
        bias_correction2=bias_correction(beta2, step),
    )


def _torch_fused_supports(batch: TensorBatch) -> bool:
    """torch has fused Adam kernels for CPU and CUDA floating-point tensors."""
    param = batch.params[0]
    return param.device.type in ("cpu", "cuda") and param.dtype in (
        torch.float16,
        torch.bfloat16,
        torch.float32,
        torch.float64,
    )


class AdamW(Adam):
    """AdamW (Loshchilov & Hutter, 2019): Adam with decoupled weight decay, default ``1e-2`` as torch."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        *,
        amsgrad: bool = False,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        state_bits: int = 32,
    ) -> None:
        super().__init__(
            params,
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            decoupled_weight_decay=True,
            amsgrad=amsgrad,
            maximize=maximize,
            foreach=foreach,
            fused=fused,
            state_bits=state_bits,
        )


def _single_tensor_adam(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    max_exp_avg_sqs: list[torch.Tensor] | None,
    *,
    lr: Scalar,
    beta1: Scalar,
    beta2: Scalar,
    eps: Scalar,
    weight_decay: Scalar,
    decoupled_weight_decay: bool,
    step_size: Scalar,
    bias_correction2: Scalar,
) -> None:
    for i, param in enumerate(params):
        grad, exp_avg, exp_avg_sq = grads[i], exp_avgs[i], exp_avg_sqs[i]
        if decoupled_weight_decay:
            decoupled_weight_decay_(param, lr * weight_decay)
        else:
            grad = l2_weight_decay(grad, param, weight_decay)
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=scalar_arg(1 - beta2))
        if max_exp_avg_sqs is not None:
            torch.maximum(max_exp_avg_sqs[i], exp_avg_sq, out=max_exp_avg_sqs[i])
            exp_avg_sq = max_exp_avg_sqs[i]
        denom = adam_denominator(exp_avg_sq, eps, bias_correction2)
        param.addcdiv_(exp_avg, denom, value=scalar_arg(-step_size))


def _multi_tensor_adam(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    max_exp_avg_sqs: list[torch.Tensor] | None,
    steps: list[int],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled_weight_decay: bool,
) -> None:
    if decoupled_weight_decay:
        decoupled_weight_decay_(params, lr * weight_decay)
    else:
        grads = l2_weight_decay(grads, params, weight_decay)
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
    if max_exp_avg_sqs is not None:
        torch._foreach_maximum_(max_exp_avg_sqs, exp_avg_sqs)
        exp_avg_sqs = max_exp_avg_sqs
    # sqrt(v/bc2) + eps == (sqrt(v) + eps*sqrt(bc2)) / sqrt(bc2): moving sqrt(bc2) into the step size
    # saves one pass over the denominator.
    bc2_sqrt = [math.sqrt(bias_correction(beta2, s)) for s in steps]
    denom = adam_denominator(exp_avg_sqs, 0.0)
    torch._foreach_add_(denom, scalars([eps * b for b in bc2_sqrt]))
    step_size = [-lr * b / bias_correction(beta1, s) for b, s in zip(bc2_sqrt, steps, strict=True)]
    torch._foreach_addcdiv_(params, exp_avgs, denom, scalars(step_size))


register(
    OptimInfo(
        name="adam",
        verified="torch.optim.Adam (float64, 40 steps)",
        cls=Adam,
        paper="Kingma & Ba, Adam: A Method for Stochastic Optimization, ICLR 2015",
        paper_url="https://arxiv.org/abs/1412.6980",
        reference="torch.optim.Adam",
        description="Adaptive moment estimation: bias-corrected EMAs of g and g^2.",
        tuned_lr={"quadratic": 0.05, "rosenbrock": 0.1},
    )
)
register(
    OptimInfo(
        name="adamw",
        verified="torch.optim.AdamW (float64, 40 steps)",
        cls=AdamW,
        paper="Loshchilov & Hutter, Decoupled Weight Decay Regularization, ICLR 2019",
        paper_url="https://arxiv.org/abs/1711.05101",
        reference="torch.optim.AdamW",
        description="Adam with weight decay decoupled from the adaptive step.",
        test_kwargs={"weight_decay": 0.0},
        tuned_lr={"quadratic": 0.05, "rosenbrock": 0.1},
    )
)

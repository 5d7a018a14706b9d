"""Generalized SignSGD.

Paper: Crawshaw, Liu, Orabona, Zhang, Zhuang, "Robustness to Unbounded Smoothness of Generalized SignSGD",
NeurIPS 2022, arXiv:2208.11195 (Alg. 1).
Reference code: github.com/zhenxun-zhuang/Generalized-SignSGD, ``cifar10/generalized_signsgd.py``
(identical copies under ``penntreebank/`` and ``multi30k/``; commit 3105b7e), which this follows step
for step.

Update (per parameter, step t >= 1)::

    g = grad + wd * p                                   # L2, coupled (the reference code's only mode)
    m = b1 m + (1 - b1) g
    v = b2 v + (1 - b2) m^2                             # the square of the MOMENTUM, not of g
    p -= lr * (m / bc1) / (sqrt(v / bc2) + eps)         # bc1 = 1 - b1^t, bc2 = 1 - b2^t if
                                                        # use_bias_correction, else bc1 = bc2 = 1

The key difference from Adam is that ``v`` tracks ``m^2``. ``b2 = 0`` gives ``m / (|m| + eps)``, i.e.
signSGD with momentum (Signum; ``b1 = b2 = 0`` is signSGD); ``b2 -> 1`` behaves like Adam. Defaults are
the reference code's: lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight_decay 0, no bias correction. Note
that the bias correction of ``v`` uses the *uncorrected* ``m`` (``v`` is the EMA of ``m^2``), as in the
code. Without bias correction the first step moves each coordinate with a non-zero gradient by
``lr / sqrt(1 - b2)`` (up to eps): ~31.6 lr with the defaults, so the defaults' lr is small.

Paper vs reference code: the paper's Alg. 1 has no eps and no bias correction; the code adds eps
outside the square root and an optional bias correction (``use_bias_correction``, off by default,
an instance attribute in the code and a per-group hyperparameter here); we follow the code.

Oracle: only the ``b2 = 0`` case has one: ``pytorch_optimizer.SignSGD(momentum=b1)`` equals
``GenSignSGD(betas=(b1, 0), eps=0)`` where no momentum coordinate is exactly zero
(tests/optimizers/test_signsgd.py; the general case is tested against steps computed by hand).
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
    l2_weight_decay,
    scalar_arg,
    scalars,
)
from adaptim.core.validation import BOOL, UNIT_HALF_OPEN, TupleOf
from adaptim.registry import OptimInfo, register

__all__ = ["GenSignSGD"]


class GenSignSGD(AdaptimOptimizer):
    """Generalized SignSGD (Crawshaw et al., 2022): Adam whose second moment tracks ``m^2``.

    Args:
        params: parameters or param groups.
        lr: learning rate.
        betas: ``(b1, b2)``: EMA coefficients of the gradient and of the squared momentum;
            ``b2 = 0`` is signSGD with momentum.
        eps: added to ``sqrt(v)`` (bias-corrected if ``use_bias_correction``).
        weight_decay: L2 coefficient, added to the gradient.
        use_bias_correction: divide ``m`` by ``1 - b1^t`` and ``v`` by ``1 - b2^t``.
        maximize: ascend instead of descend.
        foreach: ``None`` or ``True`` for the multi-tensor path, ``False`` for the per-tensor one.
        fused: ``True`` runs the update as one compiled kernel per piece of parameters (C++ on CPU,
            Triton on CUDA; docs/fused.md); ``None`` and ``False``: the eager path.
    """

    cache_blocking = True  # the multi-tensor update is per tensor
    splits_tensors = True  # and elementwise inside each tensor

    supports_dtensor = True  # tests/test_fsdp2.py

    hyperparameter_rules = {
        "betas": TupleOf((UNIT_HALF_OPEN, UNIT_HALF_OPEN)),
        "use_bias_correction": BOOL,
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
        *,
        use_bias_correction: bool = False,
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
            use_bias_correction=use_bias_correction,
            maximize=maximize,
            foreach=foreach,
            fused=fused,
            state_bits=state_bits,
        )
        super().__init__(params, defaults)

    def _update(self, group: dict[str, Any], batch: TensorBatch, foreach: bool) -> None:
        beta1, beta2 = group["betas"]
        _multi_tensor_gensignsgd(
            batch.params,
            batch.grads,
            batch.state("exp_avg"),
            batch.state("exp_avg_sq"),
            batch.steps,
            lr=float(group["lr"]),
            beta1=beta1,
            beta2=beta2,
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            use_bias_correction=group["use_bias_correction"],
        )

    def _elementwise_update(
        self, group: Mapping[str, Any]
    ) -> tuple[Callable[..., None], tuple[str | None, ...]]:
        return _single_tensor_gensignsgd, ("exp_avg", "exp_avg_sq")

    def _step_scalars(self, group: Mapping[str, Any], step: int) -> dict[str, Any]:
        beta1, beta2 = group["betas"]
        corrected = group["use_bias_correction"]
        return dict(
            lr=float(group["lr"]),
            beta1=beta1,
            beta2=beta2,
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            use_bias_correction=corrected,
            bias_correction1=bias_correction(beta1, step) if corrected else 1.0,
            bias_correction2=bias_correction(beta2, step) if corrected else 1.0,
        )


def _single_tensor_gensignsgd(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    *,
    lr: Scalar,
    beta1: Scalar,
    beta2: Scalar,
    eps: Scalar,
    weight_decay: Scalar,
    use_bias_correction: bool,
    bias_correction1: Scalar,
    bias_correction2: Scalar,
) -> None:
    for i, param in enumerate(params):
        exp_avg, exp_avg_sq = exp_avgs[i], exp_avg_sqs[i]
        grad = l2_weight_decay(grads[i], param, weight_decay)
        exp_avg.lerp_(grad, 1.0 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(exp_avg, exp_avg, value=scalar_arg(1.0 - beta2))
        if use_bias_correction:
            denom = (exp_avg_sq / bias_correction2).sqrt_().add_(eps)
            param.addcdiv_(exp_avg / bias_correction1, denom, value=scalar_arg(-lr))
        else:
            denom = exp_avg_sq.sqrt().add_(eps)
            param.addcdiv_(exp_avg, denom, value=scalar_arg(-lr))


def _multi_tensor_gensignsgd(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    steps: list[int],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    use_bias_correction: bool,
) -> None:
    grads = l2_weight_decay(grads, params, weight_decay)
    torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, exp_avgs, exp_avgs, 1.0 - beta2)
    denom = adam_denominator(exp_avg_sqs, 0.0)
    if use_bias_correction:
        # sqrt(v/bc2) + eps == (sqrt(v) + eps sqrt(bc2)) / sqrt(bc2): sqrt(bc2)/bc1 joins the step
        bc2_sqrt = [math.sqrt(bias_correction(beta2, s)) for s in steps]
        if eps:
            torch._foreach_add_(denom, scalars([eps * b for b in bc2_sqrt]))
        step_size = scalars(
            [-lr * b / bias_correction(beta1, s) for b, s in zip(bc2_sqrt, steps, strict=True)]
        )
    else:
        if eps:
            torch._foreach_add_(denom, eps)
        step_size = -lr
    torch._foreach_addcdiv_(params, exp_avgs, denom, step_size)


register(
    OptimInfo(
        name="gensignsgd",
        cls=GenSignSGD,
        paper=(
            "Crawshaw, Liu, Orabona, Zhang & Zhuang, Robustness to Unbounded Smoothness of "
            "Generalized SignSGD, NeurIPS 2022"
        ),
        paper_url="https://arxiv.org/abs/2208.11195",
        reference=(
            "github.com/zhenxun-zhuang/Generalized-SignSGD cifar10/generalized_signsgd.py @ 3105b7e"
        ),
        description="Adam-like step whose second moment tracks the momentum squared (b2=0: Signum).",
        tuned_lr={"quadratic": 0.03, "rosenbrock": 0.01},
        verified="pytorch-optimizer==4.1.0 SignSGD (b2=0); hand-computed steps",
    )
)

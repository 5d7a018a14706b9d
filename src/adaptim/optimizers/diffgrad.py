"""diffGrad: Adam with a friction coefficient from the change of the gradient.

Paper: Dubey, Chakraborty, Roy, Mukherjee, Singh, Chaudhuri, "diffGrad: An Optimization Method for
Convolutional Neural Networks", IEEE TNNLS 31(11), 2020, arXiv:1909.11015.
Reference code: github.com/shivram1987/diffGrad, ``diffGrad_v2.py`` (commit 73233ba; the README says
``diffGrad.py`` has a bug and points to v2 and to torch-optimizer). ``torch_optimizer.DiffGrad``
(torch-optimizer==0.3.0) equals v2; we match it step for step, and ``pytorch_optimizer.DiffGrad``
(tests/optimizers/test_diffgrad.py).

Update (per parameter, step t >= 1)::

    g = grad (+ wd * p)                                   # L2 (the reference's only decay)
    p *= 1 - lr * wd                                      # decoupled_weight_decay=True (our option)
    m = b1 m + (1 - b1) g ;  v = b2 v + (1 - b2) g^2
    xi = sigmoid(|g_prev - g|) = 1 / (1 + exp(-|g_prev - g|))   # "diffGrad friction", in [1/2, 1)
    g_prev = g                                            # a copy; g_0 = 0, so xi_1 = sigmoid(|g_1|)
    p -= lr * sqrt(1 - b2^t) / (1 - b1^t) * xi * m / (sqrt(v) + eps)

Paper vs reference code: the paper writes Adam's bias-corrected form ``m_hat / (sqrt(v_hat) + eps)``; the
code uses Adam's "efficient version" (eps on the un-corrected ``sqrt(v)``, ``sqrt(1 - b2^t)`` in the step
size), which we follow. The stored ``g_prev`` is the gradient after the L2 term (the code adds the term to
``p.grad`` in place, then clones it). ``diffGrad.py`` (v1, as printed in the paper) stores a *reference*
to ``p.grad``: when the gradient tensor is reused in place (``zero_grad(set_to_none=False)``) it changes
with it and ``xi`` stays at ``sigmoid(0) = 1/2``. We always store a copy (v2), so both ``zero_grad`` modes
give v2's trajectory. Defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight_decay 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from adaptim.core.base import AdaptimOptimizer, TensorBatch
from adaptim.core.distributed import foreach_copy_
from adaptim.core.functional import (
    Scalar,
    adam_denominator,
    bias_correction,
    decoupled_weight_decay_,
    l2_weight_decay,
    scalar_arg,
    scalars,
)
from adaptim.core.validation import UNIT_HALF_OPEN, TupleOf
from adaptim.registry import OptimInfo, register

__all__ = ["DiffGrad"]


class DiffGrad(AdaptimOptimizer):
    """diffGrad (Dubey et al., 2020), as the authors' ``diffGrad_v2.py`` / ``torch_optimizer.DiffGrad``.

    Args:
        params: parameters or param groups.
        lr: learning rate.
        betas: EMA coefficients of the gradient and of its square.
        eps: added to the un-bias-corrected ``sqrt(v)``.
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
    state_keys = ("exp_avg", "exp_avg_sq", "previous_grad")
    quantized_states = {"exp_avg": True, "exp_avg_sq": False}

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
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
        _multi_tensor_diffgrad(
            batch.params,
            batch.grads,
            batch.state("exp_avg"),
            batch.state("exp_avg_sq"),
            batch.state("previous_grad"),
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
        return _single_tensor_diffgrad, ("exp_avg", "exp_avg_sq", "previous_grad")

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
            step_size=_step_size(lr, beta1, beta2, step),
        )


def _step_size(lr: float, beta1: float, beta2: float, step: int) -> float:
    return lr * math.sqrt(bias_correction(beta2, step)) / bias_correction(beta1, step)


def _single_tensor_diffgrad(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    previous_grads: list[torch.Tensor],
    *,
    lr: Scalar,
    beta1: Scalar,
    beta2: Scalar,
    eps: Scalar,
    weight_decay: Scalar,
    decoupled_weight_decay: bool,
    step_size: Scalar,
) -> None:
    """``step_size``: ``lr sqrt(1 - b2^t) / (1 - b1^t)``."""
    for i, param in enumerate(params):
        grad, exp_avg, exp_avg_sq, previous = (
            grads[i],
            exp_avgs[i],
            exp_avg_sqs[i],
            previous_grads[i],
        )
        if decoupled_weight_decay:
            decoupled_weight_decay_(param, lr * weight_decay)
        else:
            grad = l2_weight_decay(grad, param, weight_decay)
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=scalar_arg(1 - beta2))
        # m xi / (sqrt(v) + eps), xi = 1 / (1 + exp(-|g_{t-1} - g_t|)), as one division:
        # m / ((sqrt(v) + eps) (1 + exp(-|g_{t-1} - g_t|))): the fused step took 54.0 -> 51.2 ms
        # on the transformer set (old and new in one process); the exponential remains.
        inverse_xi = (previous - grad).abs_().neg_().exp_().add_(1)
        previous.copy_(grad)  # a copy, never a reference to p.grad
        denom = adam_denominator(exp_avg_sq, eps).mul_(inverse_xi)  # v not bias-corrected
        param.addcdiv_(exp_avg, denom, value=scalar_arg(-step_size))


def _multi_tensor_diffgrad(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    previous_grads: list[torch.Tensor],
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
    # xi * m is built in the previous-gradient buffer (no temporary), which then takes the new g.
    torch._foreach_sub_(previous_grads, grads)
    torch._foreach_abs_(previous_grads)
    torch._foreach_sigmoid_(previous_grads)
    torch._foreach_mul_(previous_grads, exp_avgs)
    denom = adam_denominator(exp_avg_sqs, eps)
    step_sizes = [-_step_size(lr, beta1, beta2, s) for s in steps]
    torch._foreach_addcdiv_(params, previous_grads, denom, scalars(step_sizes))
    foreach_copy_(previous_grads, grads)


register(
    OptimInfo(
        name="diffgrad",
        cls=DiffGrad,
        paper="Dubey et al., diffGrad: An Optimization Method for Convolutional Neural Networks, "
        "IEEE TNNLS 2020",
        paper_url="https://arxiv.org/abs/1909.11015",
        reference="github.com/shivram1987/diffGrad diffGrad_v2.py (73233ba); torch_optimizer.DiffGrad",
        description="Adam whose step is damped by sigmoid(|g_prev - g|): small steps where g barely changes.",
        tuned_lr={"quadratic": 0.05, "rosenbrock": 0.2},
        verified="torch-optimizer==0.3.0 DiffGrad; pytorch-optimizer==4.1.0 DiffGrad",
    )
)

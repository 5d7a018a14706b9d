"""Padam: partially adaptive momentum estimation, as used by GadamX.

Paper: Chen, Zhou, Tang, Yang, Cao & Gu, "Closing the Generalization Gap of Adaptive Gradient Methods in
Training Deep Neural Networks", IJCAI 2020, arXiv:1806.06763 (Alg. 1, Padam); used with decoupled weight
decay and iterate averaging as GadamX in Granziol, Wan, Albanie, Roberts et al., "Iterate Averaging in
the Quest for Best Test Error", arXiv:2003.01247.
Reference code: github.com/diegogranziol/GadamX, commit 7ce18a8, ``optimizers/padam.py`` (class
``Padam``), constructed by ``run_gadam_gap.py`` with ``--partial 0.125`` and ``--decoupled_wd``.

Update (per parameter, step t >= 1)::

    p *= 1 - lr * wd                       # decoupled (GadamX); or g += wd * p (L2)
    m = b1 m + (1 - b1) g
    v = b2 v + (1 - b2) g^2
    v_max = max(v_max, v)                  # amsgrad (default); else v_max := v
    p -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v_max) + eps)^(2 partial)

``partial`` = p in the paper: 1/2 is AMSGrad, 0 is SGD with (bias-corrected) momentum.

Paper vs code, and what we follow (the code):

* eps is added to ``sqrt(v)`` *before* the power ``2 partial`` (the paper writes ``v^p`` with no eps).
* The bias correction ``sqrt(1 - b2^t)`` multiplies the step at full strength although the
  denominator only has ``v^partial``; the paper's Alg. 1 has no bias correction at all. With
  ``partial = 1/8`` the early steps are therefore smaller than the paper's by ``sqrt(1-b2^t)``.
* Defaults: the reference class defaults to ``partial=1/4`` and L2 weight decay; the GadamX
  experiments use ``partial=0.125`` and ``decoupled_wd``; we default to those (``partial=0.125``,
  ``decoupled_weight_decay=True``), ``amsgrad=True`` (the class default; note ``run_gadam_gap.py``
  passes ``amsgrad=False``), lr 0.1, eps 1e-8. The decoupled decay uses ``lr`` (AdamW's convention).
* The reference applies L2 by ``grad.add(wd, p)`` into a new tensor, as we do; ``p.grad`` is untouched.

``pytorch_optimizer.PAdam`` (4.1.0) implements the same step (eps before the power, the same
``sqrt(bc2)/bc1`` step size) but has no AMSGrad, keeps one step counter per param group and defaults to
``partial=0.25`` and L2 decay; with ``amsgrad=False`` and matching decay both agree to float rounding
(tests/optimizers/test_padam.py).

Iterate averaging (the "Gadam" part) is a wrapper, not part of this optimizer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from adaptim.core.base import AdaptimOptimizer, TensorBatch
from adaptim.core.functional import (
    Exponent,
    Scalar,
    bias_correction,
    decoupled_weight_decay_,
    l2_weight_decay,
    power_,
    scalar_arg,
    scalars,
)
from adaptim.core.validation import UNIT_HALF_OPEN, Interval, TupleOf
from adaptim.registry import OptimInfo, register

__all__ = ["Padam"]


class Padam(AdaptimOptimizer):
    """Padam (Chen & Gu, 2018) with GadamX's defaults: partial 1/8, AMSGrad, decoupled decay.

    Args:
        params: parameters or param groups.
        lr: learning rate.
        betas: EMA coefficients of the gradient and of its square.
        eps: added to ``sqrt(v)`` before the power ``2 * partial``.
        weight_decay: decoupled decay rate ``p *= 1 - lr * weight_decay`` or, with
            ``decoupled_weight_decay=False``, the L2 coefficient added to the gradient.
        partial: the partial-adaptivity exponent p in ``[0, 1/2]`` (1/2: AMSGrad/Adam, 0: SGD-momentum).
        amsgrad: normalize by the running maximum of ``v``.
        decoupled_weight_decay: decoupled (GadamX) or L2 weight decay.
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
        "partial": Interval(0.0, 0.5),
    }
    state_keys = ("exp_avg", "exp_avg_sq")
    optional_state_keys = {"amsgrad": "max_exp_avg_sq"}
    quantized_states = {"exp_avg": True, "exp_avg_sq": False, "max_exp_avg_sq": False}

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-1,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        partial: float = 0.125,
        amsgrad: bool = True,
        decoupled_weight_decay: bool = True,
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
            partial=partial,
            amsgrad=amsgrad,
            decoupled_weight_decay=decoupled_weight_decay,
            maximize=maximize,
            foreach=foreach,
            fused=fused,
            state_bits=state_bits,
        )
        super().__init__(params, defaults)

    def _update(self, group: dict[str, Any], batch: TensorBatch, foreach: bool) -> None:
        beta1, beta2 = group["betas"]
        _multi_tensor_padam(
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
            partial=group["partial"],
            decoupled_weight_decay=group["decoupled_weight_decay"],
        )

    def _elementwise_update(
        self, group: Mapping[str, Any]
    ) -> tuple[Callable[..., None], tuple[str | None, ...]]:
        amsgrad = "max_exp_avg_sq" if group["amsgrad"] else None
        return _single_tensor_padam, ("exp_avg", "exp_avg_sq", amsgrad)

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
            partially_adaptive=group["partial"] != 0.5,
            power=Exponent(2 * group["partial"]),
            step_size=_step_size(lr, beta1, beta2, step),
        )


def _step_size(lr: float, beta1: float, beta2: float, step: int) -> float:
    return lr * bias_correction(beta2, step) ** 0.5 / bias_correction(beta1, step)


def _single_tensor_padam(
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
    partially_adaptive: bool,
    power: float,
    step_size: Scalar,
) -> None:
    """``power``: ``2 partial``, applied when ``partially_adaptive`` (``partial != 1/2``);
    ``step_size``: ``lr sqrt(1 - b2^t) / (1 - b1^t)``."""
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
        denom = exp_avg_sq.sqrt().add_(eps)
        if partially_adaptive:
            power_(denom, power)
        param.addcdiv_(exp_avg, denom, value=scalar_arg(-step_size))


def _multi_tensor_padam(
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
    partial: float,
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
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_add_(denom, eps)
    # x^(2p): repeated square roots for p = 1/4 and GadamX's 1/8 (several times cheaper than pow).
    if partial == 0.25:
        torch._foreach_sqrt_(denom)
    elif partial == 0.125:
        torch._foreach_sqrt_(denom)
        torch._foreach_sqrt_(denom)
    elif partial != 0.5:
        torch._foreach_pow_(denom, 2 * partial)
    step_size = scalars([-_step_size(lr, beta1, beta2, s) for s in steps])
    torch._foreach_addcdiv_(params, exp_avgs, denom, step_size)


register(
    OptimInfo(
        name="padam",
        verified="hand-computed steps; GadamX padam.py out of tree (1e-16); pytorch-optimizer PAdam (no amsgrad)",
        cls=Padam,
        paper="Chen & Gu, Closing the Generalization Gap of Adaptive Gradient Methods in Training Deep "
        "Neural Networks (Padam), IJCAI 2020; GadamX: Granziol et al., arXiv:2003.01247",
        paper_url="https://arxiv.org/abs/1806.06763",
        reference="github.com/diegogranziol/GadamX@7ce18a8 optimizers/padam.py",
        description="Partially adaptive AMSGrad: the denominator is raised to 2p (p = 1/8) instead of 1.",
        test_kwargs={},
        tuned_lr={"quadratic": 0.3, "rosenbrock": 0.1},
    )
)

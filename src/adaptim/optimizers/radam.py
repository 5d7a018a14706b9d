"""RAdam: Adam with a rectified adaptive learning rate.

Paper: Liu, Jiang, He, Chen, Liu, Gao, Han, "On the Variance of the Adaptive Learning Rate and Beyond",
ICLR 2020, arXiv:1908.03265 (Alg. 2).
Reference code: github.com/LiyuanLucasLiu/RAdam, ``radam/radam.py``, class ``RAdam`` (commit d9fd30a,
2021-07-31). ``torch.optim.RAdam`` (torch 2.13) equals it with ``degenerated_to_sgd=True``
(tests/optimizers/test_radam.py).

Update (per parameter, step t >= 1)::

    g = grad (+ wd * p if not decoupled)                # L2 (decoupled_weight_decay=False)
    m = b1 m + (1 - b1) g ;  v = b2 v + (1 - b2) g^2
    rho_inf = 2 / (1 - b2) - 1 ;  rho_t = rho_inf - 2 t b2^t / (1 - b2^t)
    if rho_t >= 5:                                      # variance of the adaptive lr is tractable
        r_t = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))
        p *= 1 - lr * wd                                # if decoupled
        p -= lr * r_t * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)
    elif degenerated_to_sgd:
        p *= 1 - lr * wd                                # if decoupled
        p -= lr / (1 - b1^t) * m                        # SGD with bias-corrected momentum
    else:
        nothing: no update and no weight decay (the moments above still accumulate)

Paper vs reference code (we follow the code by default):

* Threshold: the paper rectifies when ``rho_t > 4``; the code when ``rho_t >= 5`` ("more conservative").
  With b2 = 0.999, rho_5 = 4.996 and rho_6 = 5.994, so the first rectified step is t = 6.
* Early steps: the paper takes the un-adapted momentum step; the authors' current code
  (``degenerated_to_sgd=False`` since d9fd30a) skips them entirely, weight decay included. Both are
  offered; the default is the code's. ``torch.optim.RAdam`` always takes the momentum step.
* eps: the paper has none; the code adds it to the un-corrected ``sqrt(v)`` and folds ``sqrt(1 - b2^t)``
  into the step size (Adam's "efficient version"), as does torch.
* Weight decay: the code decays decoupled (``p -= lr * wd * p``) and only on steps that update; that is our
  default (``decoupled_weight_decay=True``). ``decoupled_weight_decay=False`` is L2 into the gradient,
  torch's default for RAdam.
* The code works in fp32 and caches step sizes per group in a 10-slot buffer; neither changes the
  numbers (the base class does the fp32 part for bf16/fp16 parameters).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

import torch

from adaptim.core.base import AdaptimOptimizer, TensorBatch
from adaptim.core.functional import (
    Scalar,
    adam_denominator,
    bias_correction,
    decoupled_weight_decay_,
    either,
    is_one,
    is_zero,
    l2_weight_decay,
    radam_rectification,
    scalar_arg,
    scalars,
)
from adaptim.core.validation import BOOL, UNIT_HALF_OPEN, TupleOf
from adaptim.registry import OptimInfo, register

__all__ = ["RAdam"]

#: the authors' code rectifies when rho_t >= 5
RHO_THRESHOLD = 5.0


class RAdam(AdaptimOptimizer):
    """RAdam (Liu et al., 2020), following the authors' ``radam.py`` by default.

    Args:
        params: parameters or param groups.
        lr: learning rate.
        betas: EMA coefficients of the gradient and of its square.
        eps: added to the un-bias-corrected ``sqrt(v)``.
        weight_decay: decoupled decay rate ``p *= 1 - lr * weight_decay`` (applied only on steps that
            update) or, if not ``decoupled_weight_decay``, the L2 coefficient added to the gradient.
        decoupled_weight_decay: decoupled decay (the authors' code) rather than L2 (torch's default).
        degenerated_to_sgd: while ``rho_t < 5``, take the bias-corrected momentum step (paper,
            ``torch.optim.RAdam``) instead of doing nothing (the authors' current default).
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
        "degenerated_to_sgd": BOOL,
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
        decoupled_weight_decay: bool = True,
        degenerated_to_sgd: bool = False,
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
            degenerated_to_sgd=degenerated_to_sgd,
            maximize=maximize,
            foreach=foreach,
            fused=fused,
            state_bits=state_bits,
        )
        super().__init__(params, defaults)

    def _update(self, group: dict[str, Any], batch: TensorBatch, foreach: bool) -> None:
        beta1, beta2 = group["betas"]
        _multi_tensor_radam(
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
            decoupled_weight_decay=group["decoupled_weight_decay"],
            degenerated_to_sgd=group["degenerated_to_sgd"],
        )

    def _elementwise_update(
        self, group: Mapping[str, Any]
    ) -> tuple[Callable[..., None], tuple[str | None, ...]]:
        return _single_tensor_radam, ("exp_avg", "exp_avg_sq")

    def _step_scalars(self, group: Mapping[str, Any], step: int) -> dict[str, Any]:
        lr = float(group["lr"])
        beta1, beta2 = group["betas"]
        wd, decoupled = group["weight_decay"], group["decoupled_weight_decay"]
        rect = radam_rectification(beta2, step, RHO_THRESHOLD)
        bc1 = bias_correction(beta1, step)
        updates = rect is not None or group["degenerated_to_sgd"]
        if rect is None:
            # the un-adapted momentum step (degenerated_to_sgd), or none (the authors' default)
            step_size = lr / bc1 if updates else 0.0
        else:
            step_size = lr * rect * math.sqrt(bias_correction(beta2, step)) / bc1
        return dict(
            beta1=beta1,
            beta2=beta2,
            eps=group["eps"],
            decoupled_weight_decay=decoupled,
            weight_decay=0.0 if decoupled else wd,  # L2
            # the decoupled decay as its factor, 1 without decay (never an exact zero): a group
            # without decay compiles the same graph as one with it; none on a step without update
            decay=1.0 - lr * wd if decoupled and updates else 1.0,
            # numbers, not flags: 0-dim tensors when fused, one graph before and after rho_t >= 5
            rectified=1.0 if rect is not None else 0.0,
            step_size=step_size,
        )


def _single_tensor_radam(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    *,
    beta1: Scalar,
    beta2: Scalar,
    eps: Scalar,
    weight_decay: Scalar,
    decoupled_weight_decay: bool,
    decay: Scalar,
    rectified: Scalar,
    step_size: Scalar,
) -> None:
    """One step; ``decay``: ``1 - lr wd`` (decoupled). ``rectified`` 1: rho_t >= 5
    (``step_size = lr r_t sqrt(1 - b2^t) / (1 - b1^t)``); 0: the un-adapted momentum step
    (``step_size = lr / (1 - b1^t)``), or none (``step_size`` 0)."""
    for i, param in enumerate(params):
        grad, exp_avg, exp_avg_sq = grads[i], exp_avgs[i], exp_avg_sqs[i]
        if not decoupled_weight_decay:
            grad = l2_weight_decay(grad, param, weight_decay)
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=scalar_arg(1 - beta2))
        if is_zero(step_size):
            continue  # the authors' default: no update, no decay while rho_t < 5 (or lr 0)
        if decoupled_weight_decay and not is_one(decay):
            param.mul_(decay)  # p *= 1 - lr * wd
        if is_zero(rectified):
            param.add_(exp_avg, alpha=scalar_arg(-step_size))
        else:
            # sqrt(v) + eps, v not bias-corrected; 1 for the momentum step (fused, rectified 0)
            denom = either(rectified, adam_denominator(exp_avg_sq, eps), 1.0)
            param.addcdiv_(exp_avg, denom, value=scalar_arg(-step_size))


def _multi_tensor_radam(
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
    decoupled_weight_decay: bool,
    degenerated_to_sgd: bool,
) -> None:
    if not decoupled_weight_decay:
        grads = l2_weight_decay(grads, params, weight_decay)
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)

    # Parameters of one group may be at different steps (frozen, then unfrozen): split the batch into
    # the rectified tensors and the early ones. Usually one of the two is the whole batch.
    # (traced by torch.compile, steps are symbolic ints, which cannot key a dict: no sharing)
    compiling = torch.compiler.is_compiling()
    by_step = (
        {} if compiling else {s: radam_rectification(beta2, s, RHO_THRESHOLD) for s in set(steps)}
    )
    rects = [
        radam_rectification(beta2, s, RHO_THRESHOLD) if compiling else by_step[s] for s in steps
    ]
    rectified = [i for i, r in enumerate(rects) if r is not None]
    early = [i for i, r in enumerate(rects) if r is None] if degenerated_to_sgd else []

    def pick(tensors: list[torch.Tensor], idx: list[int]) -> list[torch.Tensor]:
        return tensors if len(idx) == len(tensors) else [tensors[i] for i in idx]

    if decoupled_weight_decay and weight_decay != 0 and (rectified or early):
        decoupled_weight_decay_(pick(params, sorted(rectified + early)), lr * weight_decay)
    if rectified:

        def size(s: int, rect: float) -> float:
            return -lr * rect * math.sqrt(bias_correction(beta2, s)) / bias_correction(beta1, s)

        if compiling:
            step_size = [size(steps[i], cast(float, rects[i])) for i in rectified]
        else:
            size_by_step = {
                s: size(s, cast(float, by_step[s])) for s in {steps[i] for i in rectified}
            }
            step_size = [size_by_step[steps[i]] for i in rectified]
        denom = adam_denominator(pick(exp_avg_sqs, rectified), eps)
        torch._foreach_addcdiv_(
            pick(params, rectified), pick(exp_avgs, rectified), denom, scalars(step_size)
        )
    if early:
        early_size = scalars([-lr / bias_correction(beta1, steps[i]) for i in early])
        early_params, early_avgs = pick(params, early), pick(exp_avgs, early)
        if isinstance(early_size, float):
            torch._foreach_add_(early_params, early_avgs, alpha=early_size)
        else:
            torch._foreach_add_(early_params, torch._foreach_mul(early_avgs, early_size))


register(
    OptimInfo(
        name="radam",
        cls=RAdam,
        paper="Liu et al., On the Variance of the Adaptive Learning Rate and Beyond, ICLR 2020",
        paper_url="https://arxiv.org/abs/1908.03265",
        reference="github.com/LiyuanLucasLiu/RAdam radam/radam.py (d9fd30a); torch.optim.RAdam",
        description="Adam with the adaptive lr's variance rectified; un-adapted or no steps while t is small.",
        # The conformance suite expects parameters to move within 3 steps; the authors' default skips
        # the first 5 (tested against hand-computed steps in tests/optimizers/test_radam.py).
        test_kwargs={"degenerated_to_sgd": True},
        # Rosenbrock from (-1.5, 2) (|g| ~ 160): with degenerated_to_sgd=True the 5 un-adapted momentum
        # steps diverge for lr >= 0.011, and lr <= 0.01 is too slow to arrive in 3000 steps (0.69 away
        # at best), so no lr works in that mode. The authors' default (skip) mode converges with lr 0.2
        # (3.8e-6 away): tests/optimizers/test_radam.py checks it.
        tuned_lr={"quadratic": 0.1, "rosenbrock": None},
        verified="torch.optim.RAdam (degenerated_to_sgd=True); hand-computed steps (skip mode)",
    )
)

"""ACProp: asynchronous centering of the second moment.

Paper: Zhuang, Ding, Tang, Dvornek, Tatikonda & Duncan, "Momentum Centering and Asynchronous Update for
Adaptive Gradient Methods", NeurIPS 2021, arXiv:2110.05454 (Alg. 2, ACProp).
Reference code: github.com/juntang-zhuang/ACProp-Optimizer, commit a880843, ``optimizers/ACProp.py``
(class ``ACProp``), which we follow step for step, including its class defaults. No pip package exists;
tests use steps computed by hand from the equations below (tests/optimizers/test_acprop.py).

Update (per parameter, step t >= 1; ``s_0 = 0``)::

    p *= 1 - lr * wd            # decoupled (code default); fixed_decay: p *= 1 - wd; or g += wd p (L2)
    m_t = b1 m_{t-1} + (1 - b1) g_t
    t == 1:  p -= lr * m_1 / (1 - b1)                        # plain bias-corrected momentum step
    t >= 2:  s_{t-1} += eps                                   # in place, as AdaBelief's code
             denom = sqrt(s_{t-1}) / sqrt(1 - b2^(t-1)) + eps # only information up to t-1
             num   = g_t (default) | m_t / (1 - b1^t) (momentum_update)
             p -= lr * num / denom
    s_t = b2 s_{t-1} + (1 - b2) (g_t - m_t)^2                 # AFTER the parameter step

The denominator of step t never sees ``g_t``: this asynchrony is ACProp's point (Sec. 3).

Options, as in the code:

* ``amsgrad``: from the first step ``s += eps`` and ``s_max = max(s_max, s)`` replaces ``s`` in the
  denominator.
* ``rectify`` (code default True; the paper's experiments in ``main.py`` use False): RAdam's
  rectification with ``rho_t >= 5``: ``p -= lr * sqrt(1 - b2^t) * r_t / (1 - b1^t) * num' / (sqrt(s) + eps)``
  with ``num' = g_t (1 - b1^t)`` or ``m_t``; note the mixture of ``1 - b2^t`` with ``s_{t-1}``, and that
  this branch uses ``s`` even with ``amsgrad``. While ``rho_t < 5`` it takes the momentum step
  ``p -= lr * m_t / (1 - b1^t)`` (``degenerated_to_sgd``, default) or no step.

Paper vs code: the paper's abstract and Alg. 2 put the gradient ``g_t`` in the numerator (third-party
summaries write ``m_t``); the official default ``momentum_update=False`` uses ``g_t``, True gives ``m_t``.
Defaults follow the class: lr 1e-3, betas (0.9, 0.999), eps 1e-16, decoupled decay, rectify=True; the
paper's CIFAR runs use ``rectify=False``, L2 decay 5e-4 and eps 1e-8. The code's L2 decay adds into
``p.grad`` in place; we add into a copy. Pitfall: with ``b1 = 0``, ``g - m = 0`` and ``s`` only
accumulates eps, so steps become enormous; keep ``b1 > 0``.
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

__all__ = ["ACProp"]

_RHO_THRESHOLD = 5.0  # the code's N_sma >= 5


class ACProp(AdaptimOptimizer):
    """ACProp (Zhuang et al., 2021), defaults as in the authors' class.

    Args:
        params: parameters or param groups.
        lr: learning rate.
        betas: EMA coefficients of the gradient and of the centered squared gradient.
        eps: added to ``s`` in place every step and again outside the square root.
        weight_decay: decoupled decay rate (``p *= 1 - lr * weight_decay``) or L2 coefficient.
        decoupled_weight_decay: decoupled (code default ``weight_decouple=True``) or L2 decay.
        fixed_decay: decoupled decay without the ``lr`` factor (``p *= 1 - weight_decay``).
        rectify: RAdam-style rectification (code default True).
        degenerated_to_sgd: while the rectification is undefined, take momentum steps (else none).
        momentum_update: numerator ``m_t`` instead of the code default ``g_t``.
        amsgrad: use the running maximum of ``s``.
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
        "fixed_decay": BOOL,
        "rectify": BOOL,
        "degenerated_to_sgd": BOOL,
        "momentum_update": BOOL,
    }
    state_keys = ("exp_avg", "exp_avg_var")
    optional_state_keys = {"amsgrad": "max_exp_avg_var"}
    quantized_states = {"exp_avg": True, "exp_avg_var": False, "max_exp_avg_var": False}

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-16,
        weight_decay: float = 0.0,
        *,
        decoupled_weight_decay: bool = True,
        fixed_decay: bool = False,
        rectify: bool = True,
        degenerated_to_sgd: bool = True,
        momentum_update: bool = False,
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
            fixed_decay=fixed_decay,
            rectify=rectify,
            degenerated_to_sgd=degenerated_to_sgd,
            momentum_update=momentum_update,
            amsgrad=amsgrad,
            maximize=maximize,
            foreach=foreach,
            fused=fused,
            state_bits=state_bits,
        )
        super().__init__(params, defaults)

    def _update(self, group: dict[str, Any], batch: TensorBatch, foreach: bool) -> None:
        beta1, beta2 = group["betas"]
        wd = group["weight_decay"]
        lr = float(group["lr"])
        _multi_tensor_acprop(
            batch.params,
            batch.grads,
            batch.state("exp_avg"),
            batch.state("exp_avg_var"),
            batch.state("max_exp_avg_var") if group["amsgrad"] else None,
            batch.steps,
            lr=lr,
            beta1=beta1,
            beta2=beta2,
            eps=group["eps"],
            weight_decay=wd,
            decoupled_weight_decay=group["decoupled_weight_decay"],
            decay_factor=wd if group["fixed_decay"] else lr * wd,
            rectify=group["rectify"],
            degenerated_to_sgd=group["degenerated_to_sgd"],
            momentum_update=group["momentum_update"],
        )

    def _elementwise_update(
        self, group: Mapping[str, Any]
    ) -> tuple[Callable[..., None], tuple[str | None, ...]]:
        amsgrad = "max_exp_avg_var" if group["amsgrad"] else None
        return _single_tensor_acprop, ("exp_avg", "exp_avg_var", amsgrad)

    def _step_scalars(self, group: Mapping[str, Any], step: int) -> dict[str, Any]:
        beta1, beta2 = group["betas"]
        wd, decoupled = group["weight_decay"], group["decoupled_weight_decay"]
        lr = float(group["lr"])
        bc1 = bias_correction(beta1, step)
        # Which step: the first is a momentum step; later ones are adaptive, except, with
        # rectification, while rho_t < 5: a momentum step (degenerated_to_sgd) or none.
        step_size = lr / bc1
        adaptive = 0.0
        if step == 1:
            pass  # the momentum step
        elif not group["rectify"]:
            adaptive = 1.0
        else:
            rectified_size = _rectified_step_size(beta1, beta2, step)
            if rectified_size is not None:
                adaptive, step_size = 1.0, lr * rectified_size
            elif not group["degenerated_to_sgd"]:
                step_size = 0.0  # no step
        return dict(
            beta1=beta1,
            beta2=beta2,
            eps=group["eps"],
            decoupled_weight_decay=decoupled,
            weight_decay=0.0 if decoupled else wd,  # L2
            # the decoupled decay as its factor, 1 without decay (never an exact zero): a group
            # without decay compiles the same graph as one with it
            decay=1.0 - (wd if group["fixed_decay"] else lr * wd) if decoupled else 1.0,
            rectify=group["rectify"],
            momentum_update=group["momentum_update"],
            # numbers, not flags: 0-dim tensors when fused, one graph for the first step and the
            # later ones
            has_previous=0.0 if step == 1 else 1.0,
            adaptive=adaptive,
            bias_correction1=bc1,
            bias_correction2_prev=bias_correction(beta2, step - 1),  # s holds information up to t-1
            step_size=step_size,
        )


def _rectified_step_size(beta1: float, beta2: float, step: int) -> float | None:
    """``sqrt(1 - b2^t) r_t / (1 - b1^t)``, or ``None`` while ``rho_t < 5``."""
    r = radam_rectification(beta2, step, _RHO_THRESHOLD)
    if r is None:
        return None
    return math.sqrt(bias_correction(beta2, step)) * r / bias_correction(beta1, step)


def _single_tensor_acprop(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_vars: list[torch.Tensor],
    max_exp_avg_vars: list[torch.Tensor] | None,
    *,
    beta1: Scalar,
    beta2: Scalar,
    eps: Scalar,
    weight_decay: Scalar,
    decoupled_weight_decay: bool,
    decay: Scalar,
    rectify: bool,
    momentum_update: bool,
    has_previous: Scalar,
    adaptive: Scalar,
    bias_correction1: Scalar,
    bias_correction2_prev: Scalar,
    step_size: Scalar,
) -> None:
    """One step; ``decay``: ``1 - lr wd`` or ``1 - wd`` (decoupled). ``has_previous``: 0 at the
    first step, else 1. ``adaptive`` 1: ``p -= step_size * num / denom`` (``step_size = lr / (1 -
    b1^t)``, or ``lr sqrt(1 - b2^t) r_t / (1 - b1^t)`` with ``rectify``); 0: ``p -= step_size * m``
    (``step_size = lr / (1 - b1^t)``, or 0: no step)."""
    for i, param in enumerate(params):
        grad, exp_avg, exp_avg_var = grads[i], exp_avgs[i], exp_avg_vars[i]
        if decoupled_weight_decay:
            if not is_one(decay):
                param.mul_(decay)  # p *= 1 - lr * wd (fixed_decay: 1 - wd)
        else:
            grad = l2_weight_decay(grad, param, weight_decay)
        exp_avg.lerp_(grad, 1 - beta1)
        denom_src = exp_avg_var
        if max_exp_avg_vars is not None:
            exp_avg_var.add_(eps)
            torch.maximum(max_exp_avg_vars[i], exp_avg_var, out=max_exp_avg_vars[i])
            denom_src = max_exp_avg_vars[i]
        elif not is_zero(has_previous):
            exp_avg_var.add_(eps * has_previous)  # s_{t-1} += eps from the second step on
        if is_zero(step_size):
            pass  # no step while rho_t < 5 without degenerated_to_sgd (or lr 0)
        elif is_zero(adaptive):
            param.add_(exp_avg, alpha=scalar_arg(-step_size))
        else:
            if rectify:  # sqrt(1 - b2^t) is in the step size; s, not s_max, even with amsgrad
                denom = adam_denominator(exp_avg_var, eps)
            else:
                denom = adam_denominator(denom_src, eps, bias_correction2_prev)
            numerator = exp_avg if momentum_update else grad * bias_correction1
            # fused (adaptive a 0-dim tensor): the momentum step is m / 1, in the same graph
            param.addcdiv_(
                either(adaptive, numerator, exp_avg),
                either(adaptive, denom, 1.0),
                value=scalar_arg(-step_size),
            )
        residual = grad - exp_avg
        exp_avg_var.mul_(beta2).addcmul_(residual, residual, value=scalar_arg(1 - beta2))


def _multi_tensor_acprop(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_vars: list[torch.Tensor],
    max_exp_avg_vars: list[torch.Tensor] | None,
    steps: list[int],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled_weight_decay: bool,
    decay_factor: float,
    rectify: bool,
    degenerated_to_sgd: bool,
    momentum_update: bool,
) -> None:
    n = len(params)
    if decoupled_weight_decay:
        decoupled_weight_decay_(params, decay_factor)
    else:
        grads = l2_weight_decay(grads, params, weight_decay)
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    if max_exp_avg_vars is not None:
        torch._foreach_add_(exp_avg_vars, eps)
        torch._foreach_maximum_(max_exp_avg_vars, exp_avg_vars)
    else:
        later = [exp_avg_vars[i] for i in range(n) if steps[i] > 1]
        if later:
            torch._foreach_add_(later, eps)

    # Each tensor takes one of three steps (tensors of one group can be at different steps).
    momentum_idx: list[int] = []  # p -= lr/bc1 * m
    momentum_scale: list[float] = []
    adaptive_idx: list[int] = []  # p -= scale * num / denom
    adaptive_scale: list[float] = []
    adaptive_eps: list[float] = []
    for i, step in enumerate(steps):
        bc1 = bias_correction(beta1, step)
        if step == 1:
            momentum_idx.append(i)
            momentum_scale.append(-lr / bc1)
        elif not rectify:
            # sqrt(s)/c + eps == (sqrt(s) + eps c)/c, c = sqrt(1 - b2^(t-1)): c moves into the
            # step size, which saves a pass over the denominator.
            c = math.sqrt(bias_correction(beta2, step - 1))
            adaptive_idx.append(i)
            adaptive_scale.append((-lr / bc1 if momentum_update else -lr) * c)
            adaptive_eps.append(eps * c)
        else:
            step_size = _rectified_step_size(beta1, beta2, step)
            if step_size is not None:
                adaptive_idx.append(i)
                adaptive_scale.append(-lr * step_size * (1.0 if momentum_update else bc1))
                adaptive_eps.append(eps)
            elif degenerated_to_sgd:
                momentum_idx.append(i)
                momentum_scale.append(-lr / bc1)
    if momentum_idx:
        torch._foreach_add_(
            [params[i] for i in momentum_idx],
            torch._foreach_mul([exp_avgs[i] for i in momentum_idx], scalars(momentum_scale)),
        )
    denom: list[torch.Tensor] = []
    if adaptive_idx:
        src = max_exp_avg_vars if (max_exp_avg_vars is not None and not rectify) else exp_avg_vars
        denom = list(torch._foreach_sqrt([src[i] for i in adaptive_idx]))
        torch._foreach_add_(denom, scalars(adaptive_eps))
        numerators = exp_avgs if momentum_update else grads
        torch._foreach_addcdiv_(
            [params[i] for i in adaptive_idx],
            [numerators[i] for i in adaptive_idx],
            denom,
            scalars(adaptive_scale),
        )
    if len(adaptive_idx) == n:
        # Reuse the denominators' memory for g - m: a fresh full-size allocation costs more on CPU
        # (page faults) than the extra pass of the copy.
        residual = denom
        foreach_copy_(residual, grads)
        torch._foreach_sub_(residual, exp_avgs)
    else:
        residual = list(torch._foreach_sub(grads, exp_avgs))
    torch._foreach_mul_(exp_avg_vars, beta2)
    torch._foreach_addcmul_(exp_avg_vars, residual, residual, 1 - beta2)


register(
    OptimInfo(
        name="acprop",
        verified="hand-computed steps (5 option sets); official ACProp.py run out of tree (2.5e-16); behaviour: denominator independent of g_t",
        cls=ACProp,
        paper="Zhuang et al., Momentum Centering and Asynchronous Update for Adaptive Gradient "
        "Methods, NeurIPS 2021",
        paper_url="https://arxiv.org/abs/2110.05454",
        reference="github.com/juntang-zhuang/ACProp-Optimizer@a880843 optimizers/ACProp.py",
        description="Centered second moment used asynchronously: step t is normalized by s_{t-1}.",
        # With b2 = 0.999 the gradient numerator over a slowly adapting centered s diverges or stalls
        # on Rosenbrock (0.84 from the minimizer at lr 0.01, overflow above); b2 = 0.9 converges.
        test_kwargs={"betas": (0.9, 0.9)},
        tuned_lr={"quadratic": 0.05, "rosenbrock": 0.005},
    )
)

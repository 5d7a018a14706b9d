"""sigSignGrad and tanhSignGrad: Adam with a sign-agreement friction coefficient.

Paper: Zheng, Wang, Xiao, Qin, Wu & Tan, "Adaptive Friction in Deep Learning: Enhancing Optimizers with
Sigmoid and Tanh Function", arXiv:2408.11839 (2024). No pip package implements them; tests use steps
computed by hand (tests/optimizers/test_signgrad_friction.py).

Reference code: github.com/Deo0330/SignGrad (commit c69f499, Feb 2023), "Official PyTorch implementation
of SignGrad: Adapting Step Size by Sign Change between Gradients": ``optims/SignGrad.py`` (the
sigmoid friction on diffGrad's code), ``optims/SignAdamW.py`` and ``optims/SignAdamP.py`` (the plug-ins),
with the same experiments as the arXiv paper (ResNet-50 / ViT on CIFAR-10/100 and Mini-ImageNet). It is
the sigmoid variant under its earlier name; there is no tanh variant in it. Built like diffGrad (Dubey
et al., IEEE TNNLS 2020, arXiv:1909.11015; ``torch_optimizer.DiffGrad`` 0.3.0), whose friction
``xi_t = sigmoid(|g_{t-1} - g_t|)`` is replaced by

    sigSignGrad:   S_t = sigmoid(beta3 * g_{t-1} * g_t)          in (0, 1)
    tanhSignGrad:  S_t = tanh(beta3 * g_{t-1} * g_t) + 1         in (0, 2)

Update (per parameter, step t >= 1, ``g_0 = 0``)::

    g = grad (+ wd * p)                       # L2 (SignGrad's code)
    m = b1 m + (1 - b1) g
    v = b2 v + (1 - b2) g^2
    S = friction(beta3 * g_prev * g);  g_prev = g (a copy)
    p -= lr * sqrt(1 - b2^t) / (1 - b1^t) * S * m / (sqrt(v) + eps)

    decoupled_weight_decay=True (sigSignAdamW, SignAdamW.py):
    p *= 1 - lr * wd;  p -= lr / (1 - b1^t) * S * m / (sqrt(v) / sqrt(1 - b2^t) + eps)

When consecutive gradients agree in sign, ``S`` grows (sigmoid -> 1, tanh -> 2: a larger step); when
they disagree (oscillation), ``S`` shrinks towards 0, damping the step.

Sources and what we follow:

* Paper (abstract; a review of the paper at themoonlight.io; the body could not be retrieved here): the
  two friction functions above with a coefficient ``beta3`` on the product of consecutive gradients,
  scaling the Adam step like diffGrad's ``xi_t``; plug-ins sigSignAdamW and sigSignAdamP.
* Reference code (``SignGrad.py``): ``S = sigmoid(100000. * previous_grad * grad)``, i.e. ``beta3 = 1e5``
  (our default, for both classes); bias correction and eps exactly as diffGrad's code (eps outside the
  uncorrected ``sqrt(v)``, ``sqrt(1 - b2^t) / (1 - b1^t)`` in the step size); ``g_0 = 0`` (zero-initialized
  ``previous_grad``, so ``S_1 = 1/2`` for sigmoid, ``1`` for tanh); the L2 term is added to the gradient
  before the friction, and the L2-augmented gradient is stored as ``g_prev``. (The reference adds the L2
  term into ``p.grad`` in place; we never write ``p.grad``.) ``SignAdamW.py``: decoupled decay and
  torch's AdamW eps placement (``eps`` added to the bias-corrected ``sqrt(v_hat)``), followed here when
  ``decoupled_weight_decay=True``. Its ``nesterov`` option (default off) and sigSignAdamP (AdamP's
  projection) are not implemented.
* With ``beta3 = 1e5`` the friction is nearly a step function of the sign agreement for gradients above
  ~3e-3 in magnitude (``S`` ~ 0 or 1 for sigmoid, 0 or 2 for tanh) and smooth for smaller ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

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
from adaptim.core.validation import NONNEGATIVE, UNIT_HALF_OPEN, TupleOf
from adaptim.registry import OptimInfo, register

__all__ = ["SigSignGrad", "TanhSignGrad"]


class _FrictionAdam(AdaptimOptimizer):
    """Adam scaled by an elementwise friction of consecutive gradients; see the module docstring.

    Args:
        params: parameters or param groups.
        lr: learning rate.
        betas: EMA coefficients of the gradient and of its square.
        eps: added to ``sqrt(v)`` (uncorrected; the bias correction is in the step size), or to
            ``sqrt(v_hat)`` with ``decoupled_weight_decay``.
        weight_decay: L2 coefficient or, with ``decoupled_weight_decay``, the decoupled decay rate.
        beta3: scale of ``g_{t-1} * g_t`` inside the friction function (>= 0; 0 gives a constant S);
            default 1e5 as in the reference code.
        decoupled_weight_decay: sigSignAdamW: ``p *= 1 - lr * weight_decay`` instead of L2, and eps
            added to the bias-corrected ``sqrt(v_hat)`` (AdamW's placement, as the reference code).
        maximize: ascend instead of descend.
        foreach: ``None`` or ``True`` for the multi-tensor path, ``False`` for the per-tensor one.
        fused: ``True`` runs the update as one compiled kernel per piece of parameters (C++ on CPU,
            Triton on CUDA; docs/fused.md); ``None`` and ``False``: the eager path.
    """

    cache_blocking = True  # the multi-tensor update is per tensor
    splits_tensors = True  # and elementwise inside each tensor

    supports_dtensor = True  # tests/test_fsdp2.py

    friction: ClassVar[str] = "sigmoid"
    hyperparameter_rules = {
        "betas": TupleOf((UNIT_HALF_OPEN, UNIT_HALF_OPEN)),
        "beta3": NONNEGATIVE,
    }
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
        beta3: float = 1e5,
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
            beta3=beta3,
            decoupled_weight_decay=decoupled_weight_decay,
            maximize=maximize,
            foreach=foreach,
            fused=fused,
            state_bits=state_bits,
        )
        super().__init__(params, defaults)

    def _update(self, group: dict[str, Any], batch: TensorBatch, foreach: bool) -> None:
        beta1, beta2 = group["betas"]
        _multi_tensor_friction_adam(
            batch.params,
            batch.grads,
            batch.state("exp_avg"),
            batch.state("exp_avg_sq"),
            batch.state("previous_grad"),
            batch.steps,
            lr=float(group["lr"]),
            beta1=beta1,
            beta2=beta2,
            beta3=group["beta3"],
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            decoupled_weight_decay=group["decoupled_weight_decay"],
            friction=self.friction,
        )

    def _elementwise_update(
        self, group: Mapping[str, Any]
    ) -> tuple[Callable[..., None], tuple[str | None, ...]]:
        return _single_tensor_friction_adam, ("exp_avg", "exp_avg_sq", "previous_grad")

    def _step_scalars(self, group: Mapping[str, Any], step: int) -> dict[str, Any]:
        lr = float(group["lr"])
        beta1, beta2 = group["betas"]
        decoupled = group["decoupled_weight_decay"]
        return dict(
            lr=lr,
            beta1=beta1,
            beta2=beta2,
            beta3=group["beta3"],
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            decoupled_weight_decay=decoupled,
            friction=self.friction,
            # sigSignAdamW puts eps on the bias-corrected sqrt(v_hat); SignGrad on sqrt(v)
            bias_correction2=bias_correction(beta2, step) if decoupled else 1.0,
            step_size=_step_size(lr, beta1, beta2, step, decoupled),
        )


class SigSignGrad(_FrictionAdam):
    """sigSignGrad (Zheng et al., 2024): Adam step scaled by ``S = sigmoid(beta3 g_{t-1} g_t)``."""

    friction = "sigmoid"


class TanhSignGrad(_FrictionAdam):
    """tanhSignGrad (Zheng et al., 2024): Adam step scaled by ``S = tanh(beta3 g_{t-1} g_t) + 1``."""

    friction = "tanh"


def _step_size(lr: float, beta1: float, beta2: float, step: int, decoupled: bool) -> float:
    """``lr sqrt(1 - b2^t) / (1 - b1^t)`` (SignGrad.py), or ``lr / (1 - b1^t)`` (SignAdamW.py)."""
    if decoupled:
        return lr / bias_correction(beta1, step)
    return lr * math.sqrt(bias_correction(beta2, step)) / bias_correction(beta1, step)


def _single_tensor_friction_adam(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    previous_grads: list[torch.Tensor],
    *,
    lr: Scalar,
    beta1: Scalar,
    beta2: Scalar,
    beta3: Scalar,
    eps: Scalar,
    weight_decay: Scalar,
    decoupled_weight_decay: bool,
    friction: str,
    bias_correction2: Scalar,
    step_size: Scalar,
) -> None:
    for i, param in enumerate(params):
        grad, exp_avg, exp_avg_sq, prev = grads[i], exp_avgs[i], exp_avg_sqs[i], previous_grads[i]
        if decoupled_weight_decay:
            decoupled_weight_decay_(param, lr * weight_decay)
        else:
            grad = l2_weight_decay(grad, param, weight_decay)
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=scalar_arg(1 - beta2))
        agreement = prev.mul(grad).mul_(beta3)
        # The friction sigmoid(x), or 1 + tanh(x) = 2 sigmoid(2x) (closer where tanh(x) is near
        # -1, and Inductor's C++ computes a sigmoid about twice as fast as a tanh), times
        # m / denom, as one division per element: m / (denom (1 + exp(-x))), the factor 2 in the
        # step (one division saved per element, as for diffGrad).
        doubled = friction != "sigmoid"
        inverse_friction = agreement.mul_(-2.0 if doubled else -1.0).exp_().add_(1)
        prev.copy_(grad)
        # sigSignAdamW puts eps on the bias-corrected sqrt(v_hat); SignGrad on the uncorrected sqrt(v).
        denom = adam_denominator(
            exp_avg_sq, eps, bias_correction2 if decoupled_weight_decay else 1.0
        ).mul_(inverse_friction)
        param.addcdiv_(exp_avg, denom, value=scalar_arg(step_size * (-2.0 if doubled else -1.0)))


def _multi_tensor_friction_adam(
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
    beta3: float,
    eps: float,
    weight_decay: float,
    decoupled_weight_decay: bool,
    friction: str,
) -> None:
    if decoupled_weight_decay:
        decoupled_weight_decay_(params, lr * weight_decay)
    else:
        grads = l2_weight_decay(grads, params, weight_decay)
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
    # S * m is built in place in the previous-gradient buffer (no temporary), which then receives g.
    # tanh(z) + 1 == 2 sigmoid(2 z): sigmoid is several times cheaper than tanh on CPU, and the
    # factor 2 moves into the step size.
    friction_coef = previous_grads
    torch._foreach_mul_(friction_coef, grads)
    scale = beta3 if friction == "sigmoid" else 2.0 * beta3
    if scale != 1.0:
        torch._foreach_mul_(friction_coef, scale)
    torch._foreach_sigmoid_(friction_coef)
    torch._foreach_mul_(friction_coef, exp_avgs)
    bc2 = [bias_correction(beta2, s) for s in steps] if decoupled_weight_decay else 1.0
    denom = adam_denominator(exp_avg_sqs, eps, bc2)
    factor = 1.0 if friction == "sigmoid" else 2.0
    step_size = scalars(
        [-factor * _step_size(lr, beta1, beta2, s, decoupled_weight_decay) for s in steps]
    )
    torch._foreach_addcdiv_(params, friction_coef, denom, step_size)
    foreach_copy_(previous_grads, grads)


_PAPER = (
    "Zheng, Wang, Xiao, Qin, Wu & Tan, Adaptive Friction in Deep Learning: Enhancing Optimizers with "
    "Sigmoid and Tanh Function, arXiv 2024"
)
register(
    OptimInfo(
        name="sigsigngrad",
        verified="hand-computed steps following the reference code (SignGrad.py / SignAdamW.py); behaviour",
        cls=SigSignGrad,
        paper=_PAPER,
        paper_url="https://arxiv.org/abs/2408.11839",
        reference="github.com/Deo0330/SignGrad@c69f499 optims/SignGrad.py, optims/SignAdamW.py",
        description="Adam scaled by sigmoid(beta3 g_{t-1} g_t): damps steps where the gradient flips sign.",
        test_kwargs={},
        tuned_lr={"quadratic": 0.1, "rosenbrock": 0.3},
    )
)
register(
    OptimInfo(
        name="tanhsigngrad",
        verified="hand-computed steps (tanh friction from the paper; the rest as SignGrad's code); behaviour",
        cls=TanhSignGrad,
        paper=_PAPER,
        paper_url="https://arxiv.org/abs/2408.11839",
        reference="github.com/Deo0330/SignGrad@c69f499 (sigmoid only); tanh friction from the paper",
        description="Adam scaled by tanh(beta3 g_{t-1} g_t) + 1: up to 2x steps while gradients agree.",
        test_kwargs={},
        tuned_lr={"quadratic": 0.05, "rosenbrock": 0.1},
    )
)

"""PNM and AdaPNM: positive-negative momentum.

Paper: Xie, Yuan, Zhu, Sugiyama, "Positive-Negative Momentum: Manipulating Stochastic Gradient Noise to
Improve Generalization", ICML 2021, arXiv:2103.17182 (Alg. 1 PNM, Alg. 2 AdaPNM).
Reference code: github.com/zeke-xie/Positive-Negative-Momentum, ``pnm_optim/pnm.py`` and
``pnm_optim/adapnm.py`` (commit 9ffd201), which these follow step for step.

Two momentum buffers are kept; odd steps update the first, even steps the second. The buffer updated
this step is the "positive" one, the other the "negative" one (updated last step)::

    g = grad (+ wd * p unless decoupled)               # L2 when decoupled_weight_decay=False
    p *= 1 - lr * wd                                   # decoupled (the default)
    pos = b1^2 pos + (1 - b1^2) g                      # each buffer sees every other gradient
    n = sqrt((1 + b0)^2 + b0^2)                        # the noise norm
    PNM:    p -= lr * ((1 + b0) pos - b0 neg) / n
    AdaPNM: v = b2 v + (1 - b2) g^2 ; v_max = max(v_max, v)      # amsgrad, on by default
            p -= lr / (1 - b1^t) * ((1 + b0) pos - b0 neg) / n / (sqrt(v_max / (1 - b2^t)) + eps)

``betas`` are ``(b1, b0)`` for PNM and ``(b1, b2, b0)`` for AdaPNM, as in the reference code; ``b0`` is
the positive-negative mixing coefficient (1 by default). ``decoupled_weight_decay`` is the reference
code's ``decoupled`` (default ``True``).

Paper vs reference code: the ICML version of the algorithms has notation typos that the updated arXiv
version fixes (the repository's README says so); the code and the updated paper agree, and we follow
them. AdaPNM's ``1 - b1^t`` bias correction does not exactly match an EMA with rate ``b1^2`` over every
other step (the code's choice, kept). ``b0 = 0`` does *not* reduce PNM to SGD with momentum: each buffer
still sees only every other gradient.

Oracles: ``pytorch_optimizer.PNM`` (4.1.0) agrees to rounding. ``pytorch_optimizer.AdaPNM`` places eps
differently, ``(sqrt(v_max + 1e-15) + eps) / sqrt(1 - b2^t)`` instead of the reference code's
``sqrt(v_max) / sqrt(1 - b2^t) + eps``; this (not float32 casting) is the ~5e-7 difference noted in
the spec. With ``eps=0`` the two agree to ~1e-12 (tests/optimizers/test_pnm.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from adaptim.core.base import AdaptimOptimizer, TensorBatch, required
from adaptim.core.functional import (
    Scalar,
    adam_denominator,
    bias_correction,
    decoupled_weight_decay_,
    is_one,
    l2_weight_decay,
    scalar_arg,
    scalars,
)
from adaptim.core.validation import NONNEGATIVE, UNIT_HALF_OPEN, TupleOf
from adaptim.registry import OptimInfo, register

__all__ = ["PNM", "AdaPNM"]


def _noise_norm(beta0: float) -> float:
    """``sqrt((1 + b0)^2 + b0^2)``: the factor by which PNM enlarges the gradient noise's norm."""
    return math.sqrt((1.0 + beta0) ** 2 + beta0**2)


def _pos_neg(
    odd: list[torch.Tensor], even: list[torch.Tensor], steps: list[int]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per parameter, (positive, negative) buffers: odd steps update ``odd``, even ones ``even``."""
    pos = [o if s % 2 == 1 else e for o, e, s in zip(odd, even, steps, strict=True)]
    neg = [e if s % 2 == 1 else o for o, e, s in zip(odd, even, steps, strict=True)]
    return pos, neg


def _momenta_in_roles(
    self: AdaptimOptimizer, states: list[list[torch.Tensor] | None], steps: list[int]
) -> list[list[torch.Tensor] | None]:
    """``_in_roles`` of PNM and AdaPNM: the two momenta (the first two states) handed to the update
    as (positive, negative), so that it has no branch on the step's parity (one compiled graph)."""
    odd, even, *rest = states
    assert odd is not None and even is not None
    return [*_pos_neg(odd, even, steps), *rest]


class PNM(AdaptimOptimizer):
    """Positive-negative momentum SGD (Xie et al., 2021, Alg. 1).

    Args:
        params: parameters or param groups.
        lr: learning rate (required, as in the reference code; use an SGD-momentum-like value).
        betas: ``(b1, b0)``: the momentum coefficient (each buffer decays by ``b1^2`` per update)
            and the positive-negative mixing coefficient.
        weight_decay: decoupled decay rate ``p *= 1 - lr * wd`` or, if not
            ``decoupled_weight_decay``, the L2 coefficient added to the gradient.
        decoupled_weight_decay: the reference code's ``decoupled`` (default ``True``).
        maximize: ascend instead of descend.
        foreach: ``None`` or ``True`` for the multi-tensor path, ``False`` for the per-tensor one.
        fused: ``True`` runs the update as one compiled kernel per piece of parameters (C++ on CPU,
            Triton on CUDA; docs/fused.md); ``None`` and ``False``: the eager path.
    """

    cache_blocking = True  # the multi-tensor update is per tensor
    splits_tensors = True  # and elementwise inside each tensor

    supports_dtensor = True  # tests/test_fsdp2.py

    hyperparameter_rules = {"betas": TupleOf((UNIT_HALF_OPEN, NONNEGATIVE))}
    state_keys = ("pos_momentum", "neg_momentum")
    quantized_states = {"pos_momentum": True, "neg_momentum": True}

    def _unwritten_states(self, state: Mapping[str, Any]) -> tuple[str, ...]:
        # the buffer of the other parity is read, not written: not encoded again (8-bit states)
        return ("neg_momentum",) if state["step"] % 2 == 1 else ("pos_momentum",)

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = required,
        betas: tuple[float, float] = (0.9, 1.0),
        weight_decay: float = 0.0,
        *,
        decoupled_weight_decay: bool = True,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        state_bits: int = 32,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=betas,
            weight_decay=weight_decay,
            decoupled_weight_decay=decoupled_weight_decay,
            maximize=maximize,
            foreach=foreach,
            fused=fused,
            state_bits=state_bits,
        )
        super().__init__(params, defaults)

    def _update(self, group: dict[str, Any], batch: TensorBatch, foreach: bool) -> None:
        pos, neg = _pos_neg(batch.state("pos_momentum"), batch.state("neg_momentum"), batch.steps)
        beta1, beta0 = group["betas"]
        _multi_tensor_pnm(
            batch.params,
            batch.grads,
            pos,
            neg,
            lr=float(group["lr"]),
            beta1=beta1,
            beta0=beta0,
            weight_decay=group["weight_decay"],
            decoupled_weight_decay=group["decoupled_weight_decay"],
        )

    def _elementwise_update(
        self, group: Mapping[str, Any]
    ) -> tuple[Callable[..., None], tuple[str | None, ...]]:
        return _single_tensor_pnm, ("pos_momentum", "neg_momentum")

    _in_roles = _momenta_in_roles

    def _step_scalars(self, group: Mapping[str, Any], step: int) -> dict[str, Any]:
        lr = float(group["lr"])
        beta1, beta0 = group["betas"]
        wd, decoupled = group["weight_decay"], group["decoupled_weight_decay"]
        return dict(
            lr=lr,
            beta1=beta1,
            beta0=beta0,
            noise_norm=_noise_norm(beta0),
            decoupled_weight_decay=decoupled,
            weight_decay=0.0 if decoupled else wd,  # L2
            decay=1.0 - lr * wd if decoupled else 1.0,  # never 0: one graph with and without decay
        )


class AdaPNM(AdaptimOptimizer):
    """Adaptive positive-negative momentum (Xie et al., 2021, Alg. 2): Adam(AMSGrad) with PNM.

    Args:
        params: parameters or param groups.
        lr: learning rate.
        betas: ``(b1, b2, b0)``: momentum coefficient, EMA coefficient of ``g^2``, and the
            positive-negative mixing coefficient.
        eps: added to ``sqrt(v_hat)``.
        weight_decay: decoupled decay rate ``p *= 1 - lr * wd`` or, if not
            ``decoupled_weight_decay``, the L2 coefficient added to the gradient.
        amsgrad: use the running maximum of ``v`` (default ``True``, as the reference code).
        decoupled_weight_decay: the reference code's ``decoupled`` (default ``True``).
        maximize: ascend instead of descend.
        foreach: ``None`` or ``True`` for the multi-tensor path, ``False`` for the per-tensor one.
        fused: ``True`` runs the update as one compiled kernel per piece of parameters (C++ on CPU,
            Triton on CUDA; docs/fused.md); ``None`` and ``False``: the eager path.
    """

    cache_blocking = True  # the multi-tensor update is per tensor
    splits_tensors = True  # and elementwise inside each tensor

    supports_dtensor = True  # tests/test_fsdp2.py

    hyperparameter_rules = {"betas": TupleOf((UNIT_HALF_OPEN, UNIT_HALF_OPEN, NONNEGATIVE))}
    state_keys = ("exp_avg", "neg_exp_avg", "exp_avg_sq")
    optional_state_keys = {"amsgrad": "max_exp_avg_sq"}
    quantized_states = {
        "exp_avg": True,
        "neg_exp_avg": True,
        "exp_avg_sq": False,
        "max_exp_avg_sq": False,
    }

    def _unwritten_states(self, state: Mapping[str, Any]) -> tuple[str, ...]:
        # the buffer of the other parity is read, not written: not encoded again (8-bit states)
        return ("neg_exp_avg",) if state["step"] % 2 == 1 else ("exp_avg",)

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float, float] = (0.9, 0.999, 1.0),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
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
            amsgrad=amsgrad,
            decoupled_weight_decay=decoupled_weight_decay,
            maximize=maximize,
            foreach=foreach,
            fused=fused,
            state_bits=state_bits,
        )
        super().__init__(params, defaults)

    def _update(self, group: dict[str, Any], batch: TensorBatch, foreach: bool) -> None:
        pos, neg = _pos_neg(batch.state("exp_avg"), batch.state("neg_exp_avg"), batch.steps)
        beta1, beta2, beta0 = group["betas"]
        _multi_tensor_adapnm(
            batch.params,
            batch.grads,
            pos,
            neg,
            batch.state("exp_avg_sq"),
            batch.state("max_exp_avg_sq") if group["amsgrad"] else None,
            batch.steps,
            lr=float(group["lr"]),
            beta1=beta1,
            beta2=beta2,
            beta0=beta0,
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            decoupled_weight_decay=group["decoupled_weight_decay"],
        )

    def _elementwise_update(
        self, group: Mapping[str, Any]
    ) -> tuple[Callable[..., None], tuple[str | None, ...]]:
        amsgrad = "max_exp_avg_sq" if group["amsgrad"] else None
        return _single_tensor_adapnm, ("exp_avg", "neg_exp_avg", "exp_avg_sq", amsgrad)

    _in_roles = _momenta_in_roles

    def _step_scalars(self, group: Mapping[str, Any], step: int) -> dict[str, Any]:
        lr = float(group["lr"])
        beta1, beta2, beta0 = group["betas"]
        wd, decoupled = group["weight_decay"], group["decoupled_weight_decay"]
        return dict(
            beta1=beta1,
            beta2=beta2,
            beta0=beta0,
            noise_norm=_noise_norm(beta0),
            eps=group["eps"],
            decoupled_weight_decay=decoupled,
            weight_decay=0.0 if decoupled else wd,  # L2
            decay=1.0 - lr * wd if decoupled else 1.0,  # never 0: one graph with and without decay
            step_size=lr / bias_correction(beta1, step),
            bias_correction2=bias_correction(beta2, step),
        )


# -- PNM ------------------------------------------------------------------------------------------


def _single_tensor_pnm(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    pos_momentums: list[torch.Tensor],
    neg_momentums: list[torch.Tensor],
    *,
    lr: Scalar,
    beta1: Scalar,
    beta0: Scalar,
    noise_norm: Scalar,
    weight_decay: Scalar,
    decoupled_weight_decay: bool,
    decay: Scalar,
) -> None:
    """One step; ``decay``: ``1 - lr wd`` (decoupled). ``pos_momentums`` is updated, read with
    ``neg_momentums``: on odd steps the states ``pos_momentum`` and ``neg_momentum``, on even ones
    the reverse (``_momenta_in_roles``)."""
    for i, param in enumerate(params):
        grad, pos, neg = grads[i], pos_momentums[i], neg_momentums[i]
        if decoupled_weight_decay:
            if not is_one(decay):
                param.mul_(decay)  # p *= 1 - lr * wd
        else:
            grad = l2_weight_decay(grad, param, weight_decay)
        pos.mul_(beta1**2).add_(grad, alpha=scalar_arg(1.0 - beta1**2))
        delta = pos.mul(1.0 + beta0).add_(neg, alpha=scalar_arg(-beta0)).mul_(1.0 / noise_norm)
        param.add_(delta, alpha=scalar_arg(-lr))


def _multi_tensor_pnm(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    pos_momentums: list[torch.Tensor],
    neg_momentums: list[torch.Tensor],
    *,
    lr: float,
    beta1: float,
    beta0: float,
    weight_decay: float,
    decoupled_weight_decay: bool,
) -> None:
    if decoupled_weight_decay:
        decoupled_weight_decay_(params, lr * weight_decay)
    else:
        grads = l2_weight_decay(grads, params, weight_decay)
    torch._foreach_lerp_(pos_momentums, grads, 1.0 - beta1**2)
    # p -= lr/n * ((1 + b0) pos - b0 neg), as two in-place passes without a temporary.
    step = lr / _noise_norm(beta0)
    torch._foreach_add_(params, pos_momentums, alpha=-step * (1.0 + beta0))
    if beta0 != 0:
        torch._foreach_add_(params, neg_momentums, alpha=step * beta0)


# -- AdaPNM ---------------------------------------------------------------------------------------


def _single_tensor_adapnm(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    pos_momentums: list[torch.Tensor],
    neg_momentums: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    max_exp_avg_sqs: list[torch.Tensor] | None,
    *,
    beta1: Scalar,
    beta2: Scalar,
    beta0: Scalar,
    noise_norm: Scalar,
    eps: Scalar,
    weight_decay: Scalar,
    decoupled_weight_decay: bool,
    decay: Scalar,
    step_size: Scalar,
    bias_correction2: Scalar,
) -> None:
    """One step; ``step_size``: ``lr / (1 - b1^t)``, ``decay``: ``1 - lr wd`` (decoupled).
    ``pos_momentums`` is updated, read with ``neg_momentums``: on odd steps the states ``exp_avg``
    and ``neg_exp_avg``, on even ones the reverse (``_momenta_in_roles``)."""
    for i, param in enumerate(params):
        grad, exp_avg_sq = grads[i], exp_avg_sqs[i]
        pos, neg = pos_momentums[i], neg_momentums[i]
        if decoupled_weight_decay:
            if not is_one(decay):
                param.mul_(decay)  # p *= 1 - lr * wd
        else:
            grad = l2_weight_decay(grad, param, weight_decay)
        pos.mul_(beta1**2).add_(grad, alpha=scalar_arg(1.0 - beta1**2))
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=scalar_arg(1.0 - beta2))
        if max_exp_avg_sqs is not None:
            torch.maximum(max_exp_avg_sqs[i], exp_avg_sq, out=max_exp_avg_sqs[i])
            exp_avg_sq = max_exp_avg_sqs[i]
        denom = adam_denominator(exp_avg_sq, eps, bias_correction2)
        pn_momentum = (
            pos.mul(1.0 + beta0).add_(neg, alpha=scalar_arg(-beta0)).mul_(1.0 / noise_norm)
        )
        param.addcdiv_(pn_momentum, denom, value=scalar_arg(-step_size))


def _multi_tensor_adapnm(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    pos_momentums: list[torch.Tensor],
    neg_momentums: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    max_exp_avg_sqs: list[torch.Tensor] | None,
    steps: list[int],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    beta0: float,
    eps: float,
    weight_decay: float,
    decoupled_weight_decay: bool,
) -> None:
    if decoupled_weight_decay:
        decoupled_weight_decay_(params, lr * weight_decay)
    else:
        grads = l2_weight_decay(grads, params, weight_decay)
    torch._foreach_lerp_(pos_momentums, grads, 1.0 - beta1**2)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1.0 - beta2)
    if max_exp_avg_sqs is not None:
        torch._foreach_maximum_(max_exp_avg_sqs, exp_avg_sqs)
        exp_avg_sqs = max_exp_avg_sqs
    # sqrt(v/bc2) + eps == (sqrt(v) + eps*sqrt(bc2)) / sqrt(bc2): sqrt(bc2) moves into the step size.
    bc2_sqrt = [math.sqrt(bias_correction(beta2, s)) for s in steps]
    denom = adam_denominator(exp_avg_sqs, 0.0)
    torch._foreach_add_(denom, scalars([eps * b for b in bc2_sqrt]))
    # (1 + b0) pos - b0 neg == lerp(pos, neg, -b0), in one pass.
    pn_momentum = torch._foreach_lerp(pos_momentums, neg_momentums, -beta0)
    noise_norm = _noise_norm(beta0)
    step_size = [
        -lr * b / (bias_correction(beta1, s) * noise_norm)
        for b, s in zip(bc2_sqrt, steps, strict=True)
    ]
    torch._foreach_addcdiv_(params, pn_momentum, denom, scalars(step_size))


register(
    OptimInfo(
        name="pnm",
        cls=PNM,
        paper=(
            "Xie, Yuan, Zhu & Sugiyama, Positive-Negative Momentum: Manipulating Stochastic Gradient "
            "Noise to Improve Generalization, ICML 2021"
        ),
        paper_url="https://arxiv.org/abs/2103.17182",
        reference="github.com/zeke-xie/Positive-Negative-Momentum pnm_optim/pnm.py @ 9ffd201",
        description="SGD with two alternating momentum buffers mixed positively and negatively.",
        test_kwargs={"lr": 0.05},
        # Rosenbrock: no lr reaches 5e-2 in 3000 steps (best 0.36 at lr 0.003, NaN from 0.008; SGD-M
        # reaches 8e-7): the negative momentum limits the stable lr (docs/optimizers/pnm.md)
        tuned_lr={"quadratic": 1.0, "rosenbrock": None},
        verified="pytorch-optimizer==4.1.0 PNM",
    )
)
register(
    OptimInfo(
        name="adapnm",
        cls=AdaPNM,
        paper=(
            "Xie, Yuan, Zhu & Sugiyama, Positive-Negative Momentum: Manipulating Stochastic Gradient "
            "Noise to Improve Generalization, ICML 2021"
        ),
        paper_url="https://arxiv.org/abs/2103.17182",
        reference="github.com/zeke-xie/Positive-Negative-Momentum pnm_optim/adapnm.py @ 9ffd201",
        description="AMSGrad-style Adam whose momentum is positive-negative momentum.",
        # Rosenbrock: no lr reaches 5e-2 in 3000 steps (best 0.42 at lr 0.3, also with amsgrad=False
        # or b0=0.5; docs/optimizers/pnm.md)
        tuned_lr={"quadratic": 0.1, "rosenbrock": None},
        verified="pytorch-optimizer==4.1.0 AdaPNM (eps=0); hand-computed steps",
    )
)

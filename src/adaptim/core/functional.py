"""Update pieces shared by the optimizers, written once for both execution paths.

Every function takes either one tensor (the per-tensor reference path) or a list of tensors (the
multi-tensor path, dispatched to ``torch._foreach_*``). Scalars may be one number or, on the
multi-tensor path, one number per tensor (parameters in one group can be at different steps).

Nothing here writes into a gradient: functions that derive a new gradient return a new tensor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypeAlias, cast, overload

import torch

Tensors: TypeAlias = torch.Tensor | list[torch.Tensor]
Scalars: TypeAlias = float | Sequence[float]
#: a scalar of the per-tensor path: a Python number, or a 0-dim tensor when the update is compiled
#: (``fused=True``, core/fused.py)
Scalar: TypeAlias = float | torch.Tensor


def is_zero(value: Scalar) -> bool:
    """``value == 0`` for a Python number, to skip work that would change nothing; ``False`` for a
    0-dim tensor (the fused path's scalars), so no branch depends on a tensor's value: the work is
    done with the zero."""
    return not isinstance(value, torch.Tensor) and value == 0


def is_one(value: Scalar) -> bool:
    """``value == 1`` for a Python number (a multiplier that changes nothing); ``False`` for a 0-dim
    tensor, as :func:`is_zero`."""
    return not isinstance(value, torch.Tensor) and value == 1


def scalar_arg(value: Scalar) -> float:
    """``value`` as the number torch's type stubs expect for ``alpha=``/``value=``: at run time
    in-place ops also take the fused path's 0-dim tensors there (out-of-place ops must not, see
    ``AdaptimOptimizer._elementwise_update``). Typing only; returns ``value`` unchanged."""
    return cast(float, value)


def sqrt(value: Scalar) -> Scalar:
    """``math.sqrt`` of a Python number, ``torch.sqrt`` of a 0-dim tensor."""
    return value.sqrt() if isinstance(value, torch.Tensor) else math.sqrt(value)


def either(flag: Scalar, if_set: torch.Tensor, otherwise: torch.Tensor | float) -> torch.Tensor:
    """``if_set`` when ``flag`` is 1, ``otherwise`` when it is 0: a Python choice for a Python
    number, a select in the kernel for the fused path's 0-dim tensor. A choice that changes with the
    step (RAdam's rectification, ACProp's first step) passed as a number rather than a flag makes
    one compiled graph for both branches instead of one each. A select, not ``a f + b (1 - f)``: a
    non-finite value in the branch not taken (a division by ``1 - b2^0``) does not leak."""
    if not isinstance(flag, torch.Tensor):
        if flag:
            return if_set
        return (
            otherwise if isinstance(otherwise, torch.Tensor) else torch.full_like(if_set, otherwise)
        )
    return torch.where(flag != 0, if_set, otherwise)


# An operator defined on a ``torch.library.Library`` with one kernel for every device, not with
# ``torch.library.custom_op``: a compiled graph calls it once per tensor at every step, and
# ``custom_op``'s Python layers (its autograd wrapper, then a redispatch to the kernel) cost 16-28 us
# a call against 5-8 us (a clone of 1,000 floats: 2-3 us). Fused Adafactor on 2,000 tensors of
# 1,000 calls it 2,000 times a step. It has no autograd formula: the optimizers' updates run
# without gradients. Tagged ``pt2_compliant_tag``, as ``custom_op`` tags its operators (dynamo's
# ``only_allow_pt2_compliant_ops`` would stop at it otherwise).
_LIBRARY = torch.library.Library("adaptim", "FRAGMENT")
_LIBRARY.define("computed_once(Tensor x) -> Tensor", tags=(torch.Tag.pt2_compliant_tag,))
_LIBRARY.impl("computed_once", lambda x: x.clone(), "CompositeExplicitAutograd")
torch.library.register_fake("adaptim::computed_once", lambda x: torch.empty_like(x), lib=_LIBRARY)
_computed_once_op = torch.ops.adaptim.computed_once.default


def computed_once(x: torch.Tensor) -> torch.Tensor:
    """``x``; under ``torch.compile``, ``x`` written to a buffer of its own first.

    For a small tensor that a loop over a whole matrix reads: a row or column factor, made from
    reductions. Inductor inlines such a factor into every loop that reads it, recomputing its
    square roots and divisions once per element of the matrix, and stores full-size temporaries
    where a mutation reads it; an opaque op is a boundary that it cannot inline across. Fused
    H-Fac on the transformer set (2 threads, min of 15 steps): 186 ms a step without, 87 with
    (torch's fused AdamW, which moves more bytes, 34-39 ms); Adafactor 134-162 -> 101-109 ms
    (docs/fused.md). Measured on CPU only: on CUDA each call is a small copy kernel more.
    """
    if torch.compiler.is_compiling():
        return _computed_once_op(x)
    return x


class Exponent(float):
    """An exponent handed to a per-tensor update: a Python float on both paths, also when fused,
    where every other float becomes a 0-dim tensor (core/fused.py). Inductor's C++ computes
    ``x ** t`` with a tensor ``t`` through a generic power: AdaiV2's fused step with
    ``dampening=0.5`` (two powers of 1/2) took 436 ms against 119 eager, where ``torch.pow`` takes
    1/2 as a square root. With a constant exponent Inductor takes 1/2 as a square root and
    vectorizes the others. One graph per value: an exponent is a hyperparameter, not scheduled."""


def power_(x: torch.Tensor, exponent: float) -> torch.Tensor:
    """``x **= exponent`` in place; 1/2, 1/4 and 1/8 as one, two or three square roots (correct to
    rounding, and several times cheaper than a general power, eager or compiled)."""
    roots = {0.5: 1, 0.25: 2, 0.125: 3}.get(float(exponent))
    if roots is None:
        return x.pow_(exponent)
    for _ in range(roots):
        x.sqrt_()
    return x


__all__ = [
    "Exponent",
    "adam_denominator",
    "bias_correction",
    "clamp_finite_",
    "decoupled_weight_decay_",
    "either",
    "is_one",
    "is_zero",
    "l2_weight_decay",
    "power_",
    "proximal_weight_decay_",
    "radam_rectification",
    "scalar_arg",
    "scalars",
    "sqrt",
]


def scalars(values: Sequence[float]) -> float | list[float]:
    """One scalar when all are equal (the common case; cheaper for foreach ops), else the list."""
    first = values[0]
    return first if all(v == first for v in values) else list(values)


def bias_correction(beta: float, step: int) -> float:
    """``1 - beta**step``: the bias correction of an EMA started at zero (Kingma & Ba, Sec. 3)."""
    return 1.0 - beta**step


# -- weight decay ---------------------------------------------------------------------------------


@overload
def l2_weight_decay(
    grads: torch.Tensor, params: torch.Tensor, weight_decay: Scalar
) -> torch.Tensor: ...
@overload
def l2_weight_decay(
    grads: list[torch.Tensor], params: list[torch.Tensor], weight_decay: float
) -> list[torch.Tensor]: ...


def l2_weight_decay(grads: Tensors, params: Tensors, weight_decay: Scalar) -> Tensors:
    """L2 regularization folded into the gradient: returns a new ``g + wd * p``."""
    if is_zero(weight_decay):
        return grads
    if isinstance(grads, list | tuple):
        return list(torch._foreach_add(grads, params, alpha=scalar_arg(weight_decay)))
    if isinstance(weight_decay, torch.Tensor):
        # Not ``add(alpha=tensor)``: torch 2.13's compile bakes the first value of a 0-dim tensor
        # ``alpha=``/``value=`` of an out-of-place op into the graph, unguarded (in-place forms
        # are right); a product of tensors is a graph input like any other.
        return grads + cast(torch.Tensor, params) * weight_decay
    return grads.add(cast(torch.Tensor, params), alpha=weight_decay)


@overload
def decoupled_weight_decay_(params: torch.Tensor, factor: Scalar) -> None: ...
@overload
def decoupled_weight_decay_(params: list[torch.Tensor], factor: Scalars) -> None: ...


def decoupled_weight_decay_(params: Tensors, factor: Scalars | torch.Tensor) -> None:
    """Decoupled decay (Loshchilov & Hutter): ``p *= 1 - factor``, with ``factor = lr * wd`` usually."""
    if isinstance(params, list | tuple):
        if isinstance(factor, Sequence):
            torch._foreach_mul_(params, [1.0 - f for f in factor])
        elif not is_zero(factor):
            torch._foreach_mul_(params, scalar_arg(1.0 - factor))
    elif not is_zero(cast(Scalar, factor)):
        params.mul_(1.0 - cast(Scalar, factor))


@overload
def proximal_weight_decay_(params: torch.Tensor, factor: Scalar) -> None: ...
@overload
def proximal_weight_decay_(params: list[torch.Tensor], factor: Scalars) -> None: ...


def proximal_weight_decay_(params: Tensors, factor: Scalars | torch.Tensor) -> None:
    """Proximal step of ``wd/2 ||p||^2`` after the update (Adan): ``p /= 1 + factor``."""
    if isinstance(params, list | tuple):
        if isinstance(factor, Sequence):
            torch._foreach_div_(params, [1.0 + f for f in factor])
        elif not is_zero(factor):
            torch._foreach_div_(params, scalar_arg(1.0 + factor))
    elif not is_zero(cast(Scalar, factor)):
        params.div_(1.0 + cast(Scalar, factor))


# -- denominators ---------------------------------------------------------------------------------


@overload
def adam_denominator(
    exp_avg_sq: torch.Tensor,
    eps: Scalar,
    bias_correction2: Scalar = 1.0,
    *,
    eps_inside: Scalar = 0.0,
) -> torch.Tensor: ...
@overload
def adam_denominator(
    exp_avg_sq: list[torch.Tensor],
    eps: float,
    bias_correction2: Scalars = 1.0,
    *,
    eps_inside: float = 0.0,
) -> list[torch.Tensor]: ...


def adam_denominator(
    exp_avg_sq: Tensors,
    eps: Scalar,
    bias_correction2: Scalars | torch.Tensor = 1.0,
    *,
    eps_inside: Scalar = 0.0,
) -> Tensors:
    """A new ``sqrt((v + eps_inside) / bias_correction2) + eps``.

    With the defaults this is torch.optim.Adam's placement, ``sqrt(v_hat) + eps``. Folding
    ``sqrt(bias_correction2)`` into the step size instead (eps on the uncorrected ``sqrt(v)``, Adam's
    "efficient version", Sec. 2, used by RAdam's and diffGrad's code) is ``bias_correction2=1``.
    ``eps_inside`` adds a term under the root too (ACProp, the diffGrad notebook's Adam).
    """
    if isinstance(exp_avg_sq, list | tuple):
        if eps_inside:
            denoms = list(torch._foreach_add(exp_avg_sq, eps_inside))
            torch._foreach_sqrt_(denoms)
        else:
            denoms = list(torch._foreach_sqrt(exp_avg_sq))
        if isinstance(bias_correction2, Sequence):
            torch._foreach_div_(denoms, [math.sqrt(b) for b in bias_correction2])
        elif bias_correction2 != 1.0:
            torch._foreach_div_(denoms, math.sqrt(bias_correction2))
        if eps:
            torch._foreach_add_(denoms, eps)
        return denoms
    inside = not is_zero(eps_inside)
    denom = exp_avg_sq.add(eps_inside).sqrt_() if inside else exp_avg_sq.sqrt()
    bc2 = cast(Scalar, bias_correction2)
    if isinstance(bc2, torch.Tensor):
        # fused: a multiplication by the reciprocal, computed once (float64), not a vector division
        # per element, which Inductor's loop keeps (AdaBelief's fused step was compute-bound)
        denom.mul_(bc2.rsqrt())
    elif bc2 != 1.0:
        denom.div_(sqrt(bc2))
    if not is_zero(eps):
        denom.add_(eps)
    return denom


# -- RAdam ----------------------------------------------------------------------------------------


def radam_rectification(beta2: float, step: int, threshold: float = 5.0) -> float | None:
    """RAdam's variance rectification term ``r_t`` (Liu et al., 2020, Alg. 2), or ``None``.

    ``rho_inf = 2/(1-b2) - 1``, ``rho_t = rho_inf - 2 t b2^t / (1 - b2^t)``. When ``rho_t`` is at least
    ``threshold`` (the authors' code uses ``rho_t >= 5``, torch.optim.RAdam ``rho_t > 5``, the paper
    ``rho_t > 4``) returns
    ``r_t = sqrt((rho_t-4)(rho_t-2) rho_inf / ((rho_inf-4)(rho_inf-2) rho_t))``; otherwise ``None``:
    the adaptive step is not yet trustworthy.
    """
    beta2_t = beta2**step
    rho_inf = 2.0 / (1.0 - beta2) - 1.0
    rho_t = rho_inf - 2.0 * step * beta2_t / (1.0 - beta2_t)
    if rho_t < threshold:
        return None
    return math.sqrt(
        (rho_t - 4.0) * (rho_t - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t)
    )


@overload
def clamp_finite_(squares: torch.Tensor) -> torch.Tensor: ...
@overload
def clamp_finite_(squares: list[torch.Tensor]) -> list[torch.Tensor]: ...


def clamp_finite_(squares: Tensors) -> Tensors:
    """Clamp squared gradients (or their row and column means) to the dtype's largest value, in place.

    A gradient of 1e30 squares to inf in float32. Where a rule only divides by the square root of
    its EMA, inf is harmless (``torch.optim.Adam``: ``m / sqrt(inf) = 0``), but an EMA written as
    ``lerp`` towards inf (inf - inf) and a factored ``V = r s^T / mean(r)`` (inf / inf) give NaN.
    Clamped, the statistic is huge but finite. Use it on vectors or temporaries: it costs a pass.
    """
    if isinstance(squares, torch.Tensor):
        return squares.clamp_(max=torch.finfo(squares.dtype).max)
    if squares:
        torch._foreach_clamp_max_(squares, torch.finfo(squares[0].dtype).max)
    return squares

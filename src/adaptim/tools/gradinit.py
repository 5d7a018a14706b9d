"""GradInit: learn one scale per parameter tensor so that the first optimizer step works well.

Paper: Zhu, Ni, Xu, Kong, Huang & Goldstein, "GradInit: Learning to Initialize Neural Networks for
Stable and Efficient Training", NeurIPS 2021, arXiv:2102.08098.
Reference code: github.com/zhuchen03/gradinit (commit 777c407): ``gradinit_utils.py`` (``gradinit``,
``take_opt_step``, ``set_bn_modes``), ``gradinit_optimizers.py`` (``RescaleAdam``), CLI defaults in
``train_cifar.py``. (``gradinit==0.1.1`` on PyPI is an unrelated simplified method.)

Each trainable tensor is reparametrised as ``theta_l = alpha_l * theta_l^0`` (alpha_l = 1 at start) and
only the scales are trained, for ``iters`` iterations::

    draw S = S0 u S1 (two batches);  g = grad L(S; theta)
    A(g) = g  (target "sgd"; g / ||g||_2 with normalize_grad)   or   sign(g)  (target "adam")
    ||g||_* = ||g||_2 (sgd) or ||g||_1 (adam)
    if ||g||_* > gamma:  minimise ||g||_*                                   (constraint step)
    else:                minimise L(S~; theta - eta A(g)) / eta,  S~ = S0 u S2 (S2 a new batch)
    each alpha_l: one Adam step on d(objective)/d(alpha_l) clipped to +-grad_clip, then
                  alpha_l = max(alpha_l, min_scale)   (min_scale for weights, 0 for biases)

Faithful to the reference code by default:

* the simulated step ``eta A(g)`` is a constant for the objective's derivative (the code subtracts
  ``gstep.data``); only the constraint ``||g||`` is differentiated through the gradient (second order).
  ``second_order=True`` differentiates the objective through ``g`` as well;
* the scales' Adam (``RescaleAdam``) keeps separate first moments for the constraint and objective
  steps, one shared second moment, bias corrections ``1 - b1^(own steps)`` and
  ``1 - b2^(all steps)``; parameters whose initial norm is 0 (zero-initialised biases) keep alpha = 1;
* parameters whose name contains ``bias`` get ``min_scale = 0`` (the code's second param group);
* the model runs in eval mode (no dropout) with batch-norm layers in training mode without running
  statistics; modes are restored afterwards.

Defaults are the reference CLI's: ``lr=1e-3, iters=390, eta=0.1, gamma=inf, min_scale=0.01,
grad_clip=1, target="sgd"``; the paper's launch scripts often use ``gamma=1`` with ``normalize_grad``.
Differences: the scaled parameters are evaluated with ``torch.func.functional_call`` instead of
replacing module attributes, and every trainable parameter is scaled (the code scales Conv2d, Linear,
BatchNorm2d and its own Scale/Bias modules).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any, cast

import torch
from torch import nn
from torch.utils._pytree import tree_map

__all__ = ["gradinit", "gradinit_objective"]

TARGETS = ("sgd", "adam")


class _LossModule(nn.Module):
    """``forward(batch) = loss_fn(model, batch)``, so ``functional_call`` can swap the model's params."""

    def __init__(self, model: nn.Module, loss_fn: Callable[[nn.Module, Any], torch.Tensor]) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: Any) -> torch.Tensor:
        return self.loss_fn(self.model, batch)


def _concat(a: Any, b: Any) -> Any:
    return tree_map(lambda x, y: torch.cat([x, y]) if isinstance(x, torch.Tensor) else x, a, b)


def gradinit_objective(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
    batch: Any,
    update_batch: Any | Callable[[], Any],
    scales: dict[str, torch.Tensor],
    initial: dict[str, torch.Tensor],
    *,
    target: str = "sgd",
    eta: float = 0.1,
    gamma: float = math.inf,
    normalize_grad: bool = False,
    second_order: bool = False,
) -> tuple[torch.Tensor, bool, torch.Tensor]:
    """The GradInit objective as a differentiable function of the scales.

    ``scales[name]`` (0-dim tensors) multiply ``initial[name]`` (the parameters at initialisation).
    ``update_batch`` is S~, or a zero-argument function returning it (called only when needed).
    Returns ``(objective, is_constraint, grad_norm)``: ``||g||_*`` when it exceeds ``gamma`` (then
    ``is_constraint``), else ``L(update_batch; theta - eta A(g)) / eta``.
    """
    wrapper = _LossModule(model, loss_fn)
    names = list(scales)
    theta = {n: scales[n] * initial[n] for n in names}
    loss = torch.func.functional_call(
        wrapper, {f"model.{n}": t for n, t in theta.items()}, (batch,)
    )
    raw_grads = torch.autograd.grad(
        loss, [theta[n] for n in names], create_graph=True, allow_unused=True
    )
    grads = [
        torch.zeros_like(theta[n]) if g is None else g
        for n, g in zip(names, raw_grads, strict=True)
    ]
    if target == "adam":
        gnorm = cast(torch.Tensor, sum(g.abs().sum() for g in grads))  # grads: never empty
        steps = [g.sign() for g in grads]
    else:
        gnorm = torch.sqrt(cast(torch.Tensor, sum(g.square().sum() for g in grads)))
        steps = [g / gnorm for g in grads] if normalize_grad else grads
    if float(gnorm.detach()) > gamma:
        return gnorm, True, gnorm.detach()
    if not second_order:
        steps = [s.detach() for s in steps]
    updated = {f"model.{n}": theta[n] - eta * s for n, s in zip(names, steps, strict=True)}
    if callable(update_batch):
        update_batch = update_batch()
    new_loss = torch.func.functional_call(wrapper, updated, (update_batch,))
    return new_loss / eta, False, gnorm.detach()


def _cycle(batches: Iterable[Any]) -> Iterator[Any]:
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:
            raise ValueError("gradinit: batches yielded nothing")
        if iter(batches) is batches:  # a one-shot iterator cannot be restarted
            raise ValueError("gradinit: batches ran out; pass a re-iterable (e.g. a DataLoader)")


def gradinit(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
    batches: Iterable[Any],
    target: str = "sgd",
    lr: float = 1e-3,
    iters: int = 390,
    *,
    eta: float = 0.1,
    gamma: float = math.inf,
    min_scale: float = 0.01,
    grad_clip: float = 1.0,
    normalize_grad: bool = False,
    second_order: bool = False,
    batch_no_overlap: bool = False,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> dict[str, float]:
    """Rescale ``model``'s trainable parameters in place by GradInit; return the learned scales.

    Args:
        model: the network at its (default) initialisation.
        loss_fn: ``loss_fn(model, batch) -> scalar`` mean loss of a batch.
        batches: a re-iterable of batches (e.g. a DataLoader over half the training batch size, as in
            the reference code); it is cycled. Batches are concatenated along dim 0 (any pytree of
            tensors).
        target: ``"sgd"`` (A(g) = g) or ``"adam"`` (A(g) = sign(g)), the optimizer to be used.
        lr: learning rate of the scales' Adam.
        iters: GradInit iterations (constraint and objective steps together).
        eta: the simulated step size (set it to the lr of the training run).
        gamma: gradient-norm bound (``inf``: no constraint).
        min_scale: lower bound of the weights' scales (biases: 0).
        grad_clip: clip of each scale's gradient (0: none).
        normalize_grad: SGD target with ``A(g) = g / ||g||_2``.
        second_order: differentiate the objective through the simulated step (reference: no).
        batch_no_overlap: draw a fresh first half for the updated batch (reference option).
        betas, eps: the scales' Adam.
    """
    if target not in TARGETS:
        raise ValueError(f"gradinit: invalid target={target!r}; accepted values: one of {TARGETS}")
    for name, value, ok, accepted in (
        ("lr", lr, lr >= 0, "a number >= 0"),
        ("iters", iters, isinstance(iters, int) and iters >= 0, "an integer >= 0"),
        ("eta", eta, eta > 0, "a number > 0"),
        ("gamma", gamma, gamma > 0, "a number > 0"),
        ("min_scale", min_scale, min_scale >= 0, "a number >= 0"),
        ("grad_clip", grad_clip, grad_clip >= 0, "a number >= 0"),
    ):
        if not ok:
            raise ValueError(f"gradinit: invalid {name}={value!r}; accepted values: {accepted}")
    beta1, beta2 = betas
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    initial = {n: p.detach().clone() for n, p in params.items()}
    init_norm = {n: float(w.norm()) for n, w in initial.items()}
    alpha = {n: 1.0 for n in params}
    floor = {n: 0.0 if "bias" in n else min_scale for n in params}
    adam = {
        n: dict(step=0, cons_step=0, exp_avg=0.0, cons_exp_avg=0.0, exp_avg_sq=0.0) for n in params
    }

    modes = {m: m.training for m in model.modules()}
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    tracking = {m: m.track_running_stats for m in norms}
    model.eval()  # no dropout
    for m in norms:  # batch statistics, running statistics untouched
        m.train()
        m.track_running_stats = False
    source = _cycle(batches)
    try:
        for _ in range(iters):
            s0, s1 = next(source), next(source)
            scales = {
                n: torch.tensor(
                    alpha[n], dtype=initial[n].dtype, device=initial[n].device, requires_grad=True
                )
                for n in params
            }

            def update_batch(s0: Any = s0) -> Any:
                # drawn only when the objective branch is taken, as in the reference code
                s2 = next(source)
                head = next(source) if batch_no_overlap else s0
                return _concat(head, s2)

            objective, constraint, _gnorm = gradinit_objective(
                model,
                loss_fn,
                _concat(s0, s1),
                update_batch,
                scales,
                initial,
                target=target,
                eta=eta,
                gamma=gamma,
                normalize_grad=normalize_grad,
                second_order=second_order,
            )
            grads = torch.autograd.grad(objective, list(scales.values()), allow_unused=True)
            for (n, _), g in zip(scales.items(), grads, strict=True):
                if init_norm[n] == 0.0 or g is None:
                    continue
                gval = float(g)
                if grad_clip > 0:
                    gval = max(min(gval, grad_clip), -grad_clip)
                st = adam[n]
                if constraint:
                    st["cons_step"] += 1
                    st["cons_exp_avg"] = beta1 * st["cons_exp_avg"] + (1 - beta1) * gval
                    steps, exp_avg = st["cons_step"], st["cons_exp_avg"]
                else:
                    st["step"] += 1
                    st["exp_avg"] = beta1 * st["exp_avg"] + (1 - beta1) * gval
                    steps, exp_avg = st["step"], st["exp_avg"]
                st["exp_avg_sq"] = beta2 * st["exp_avg_sq"] + (1 - beta2) * gval * gval
                bc1 = 1 - beta1**steps
                bc2 = 1 - beta2 ** (st["cons_step"] + st["step"])
                denom = math.sqrt(st["exp_avg_sq"] / bc2) + eps
                alpha[n] = max(alpha[n] - lr / bc1 * exp_avg / denom, floor[n])
    finally:
        for m, flag in tracking.items():
            m.track_running_stats = flag
        for mod, mode in modes.items():
            mod.training = mode
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(alpha[n] * initial[n])
    return alpha

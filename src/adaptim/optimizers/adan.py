"""Adan: adaptive Nesterov momentum.

Paper: Xie, Zhou, Li, Lin, Yan, "Adan: Adaptive Nesterov Momentum Algorithm for Faster Optimizing Deep
Models", IEEE TPAMI 2024, arXiv:2208.06677 (Alg. 1).
Reference code: github.com/sail-sg/Adan at commit 2c65bea, file ``adan.py`` (``_single_tensor_adan``
and ``_multi_tensor_adan``). Oracle in tests: ``pytorch_optimizer.Adan`` (pytorch-optimizer==4.1.0),
which matches the official file exactly; its ``weight_decouple=True`` is the official ``no_prox=True``.

Update (per parameter, step t >= 1; code betas, ``b = 1 - beta_paper``)::

    g     = c * grad                                  # c = min(max_grad_norm / (|grad|_global + eps), 1)
    diff  = g - g_prev                                # g_prev = g at t = 1, so diff_1 = 0
    m     = b1 m + (1 - b1) g
    d     = b2 d + (1 - b2) diff
    n     = b3 n + (1 - b3) (g + b2 diff)^2
    denom = sqrt(n / (1 - b3^t)) + eps
    upd   = lr / (1 - b1^t) * m / denom + lr * b2 / (1 - b2^t) * d / denom
    no_prox=False (default, Alg. 1):  p = (p - upd) / (1 + lr * wd)        # proximal step
    no_prox=True:                     p = p * (1 - lr * wd) - upd          # decoupled, AdamW-like
    g_prev = g

Paper vs code. Alg. 1 uses the paper's betas (0.02, 0.08, 0.01), initializes ``m_0 = g_0``,
``v_1 = g_1 - g_0``, ``n_0 = g_0^2`` and has no bias correction; the code (which we follow) starts the
moments at zero, bias-corrects them and takes ``diff_1 = 0``. Both weigh the difference term in the
numerator and inside the square by ``1 - B2 = b2``.

Differences from the reference code:

* The gradient is never modified: clipping scales a copy (the reference multiplies ``p.grad`` in
  place). As in the reference, the state ``neg_pre_grad`` holds the negative of the previous
  (clipped) gradient, a copy, and serves as the work buffer of the step, so the multi-tensor path
  allocates no temporary but the denominator (and the scaled gradient when clipping).
* The step counter is per parameter (the reference keeps one per param group); the two agree unless
  parameters of one group start receiving gradients at different steps, where ours bias-corrects each
  parameter from its own first step.
* ``max_grad_norm`` and the ``eps`` of the clip factor are global: they are read from the
  constructor's defaults (as the reference does for ``max_grad_norm``; its ``eps`` there is the last
  group's); a param group with another ``max_grad_norm`` is refused. The global norm runs over all
  groups in float64 when a gradient is float64 (the reference accumulates in float32), and over the
  shards of DTensor (FSDP2) gradients.
* ``restart_opt()`` zeros ``m``, ``d``, ``n`` and the step counters, and the previous gradient is
  re-initialized from the next gradient, as in the reference.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from adaptim.core.base import AdaptimOptimizer, TensorBatch
from adaptim.core.distributed import any_dtensor, foreach_copy_, global_norm, local_list
from adaptim.core.functional import (
    Scalar,
    adam_denominator,
    bias_correction,
    decoupled_weight_decay_,
    is_one,
    proximal_weight_decay_,
    scalar_arg,
    scalars,
)
from adaptim.core.state_precision import zero_state_
from adaptim.core.validation import BOOL, NONNEGATIVE, UNIT_HALF_OPEN, TupleOf
from adaptim.registry import OptimInfo, register

__all__ = ["Adan"]


class Adan(AdaptimOptimizer):
    """Adan (Xie et al., 2022): Nesterov momentum estimated from EMAs of the gradient and its differences.

    Args:
        params: parameters or param groups.
        lr: learning rate (the authors suggest 5-10x that of AdamW).
        betas: code betas ``(b1, b2, b3)`` of the gradient, gradient-difference and squared-term EMAs
            (``1 -`` the paper's betas).
        eps: added to ``sqrt(n_hat)``, and to the global gradient norm in the clip factor.
        weight_decay: proximal (default) or decoupled (``no_prox=True``) weight decay.
        max_grad_norm: clip the global gradient norm over all param groups to this value
            (0 disables); global, so it is set once for the optimizer.
        no_prox: decay decoupled as AdamW, ``p *= 1 - lr * wd``, instead of the proximal
            ``p /= 1 + lr * wd`` after the step.
        maximize: ascend instead of descend.
        foreach: ``None`` or ``True`` for the multi-tensor path, ``False`` for the per-tensor one.
        fused: ``True`` runs the update as one compiled kernel per piece of parameters (C++ on CPU,
            Triton on CUDA; docs/fused.md); ``None`` and ``False``: the eager path.
    """

    cache_blocking = True  # the multi-tensor update is per tensor
    splits_tensors = True  # and elementwise inside each tensor

    supports_dtensor = True  # tests/test_fsdp2.py

    hyperparameter_rules = {
        "betas": TupleOf((UNIT_HALF_OPEN, UNIT_HALF_OPEN, UNIT_HALF_OPEN)),
        "max_grad_norm": NONNEGATIVE,
        "no_prox": BOOL,
    }
    state_keys = ("exp_avg", "exp_avg_sq", "exp_avg_diff", "neg_pre_grad")
    # neg_pre_grad is a copy of the last gradient, not a moment: it stays in the working dtype
    quantized_states = {"exp_avg": True, "exp_avg_sq": False, "exp_avg_diff": True}

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float, float] = (0.98, 0.92, 0.99),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        max_grad_norm: float = 0.0,
        no_prox: bool = False,
        *,
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
            max_grad_norm=max_grad_norm,
            no_prox=no_prox,
            maximize=maximize,
            foreach=foreach,
            fused=fused,
            state_bits=state_bits,
        )
        self._clip = 1.0
        super().__init__(params, defaults)

    def _validate_relations(self, values: Mapping[str, Any]) -> None:
        defaults = getattr(self, "defaults", None)
        if defaults is not None and values.get("max_grad_norm") != defaults["max_grad_norm"]:
            raise ValueError(
                f"Adan: invalid max_grad_norm={values.get('max_grad_norm')!r} in a param group; "
                "the gradient norm is clipped globally over all groups, so max_grad_norm must "
                f"equal the optimizer's ({defaults['max_grad_norm']!r})"
            )

    def _before_update(self, prepared: list[tuple[dict[str, Any], list[TensorBatch]]]) -> None:
        """The global clip factor ``min(max_grad_norm / (norm + eps), 1)`` over all groups."""
        self._clip = 1.0
        max_norm = self.defaults["max_grad_norm"]
        if max_norm <= 0:
            return
        grads = [g for _, batches in prepared for b in batches for g in b.grads]
        if grads:
            total = global_norm(grads)
            self._clip = min(max_norm / (total.item() + self.defaults["eps"]), 1.0)

    @torch.no_grad()
    def restart_opt(self) -> None:
        """Restart the moments (the paper's restart strategy, Table 12 of the paper).

        Zeros ``m``, ``d``, ``n`` and the step counters; the next gradient re-initializes the stored
        previous gradient (so its difference is 0 again), as the reference's ``restart_opt``.
        """
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(p)
                if not state:
                    continue
                state["step"] = 0
                for key in ("exp_avg", "exp_avg_sq", "exp_avg_diff"):
                    zero_state_(state, key, self.quantized_states[key])

    def _update(self, group: dict[str, Any], batch: TensorBatch, foreach: bool) -> None:
        lists = [batch.params, batch.grads, *(batch.state(k) for k in self.state_keys)]
        if any_dtensor(batch.params):
            lists = [local_list(ts) for ts in lists]
        params, grads, exp_avgs, exp_avg_sqs, exp_avg_diffs, neg_pre_grads = lists
        beta1, beta2, beta3 = group["betas"]
        _multi_tensor_adan(
            params,
            grads,
            exp_avgs,
            exp_avg_sqs,
            exp_avg_diffs,
            neg_pre_grads,
            batch.steps,
            lr=float(group["lr"]),
            beta1=beta1,
            beta2=beta2,
            beta3=beta3,
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            no_prox=group["no_prox"],
            clip=self._clip,
        )

    def _elementwise_update(
        self, group: Mapping[str, Any]
    ) -> tuple[Callable[..., None], tuple[str | None, ...]]:
        return _single_tensor_adan, self.state_keys

    def _step_scalars(self, group: Mapping[str, Any], step: int) -> dict[str, Any]:
        lr = float(group["lr"])
        beta1, beta2, beta3 = group["betas"]
        lr_wd = lr * group["weight_decay"]
        return dict(
            beta1=beta1,
            beta2=beta2,
            beta3=beta3,
            eps=group["eps"],
            no_prox=group["no_prox"],
            # the factor of _before_update, this step's; None without clipping. Where clipping is
            # on, a step whose gradient needs none multiplies by 1 (exact): no second graph
            clip=self._clip if self.defaults["max_grad_norm"] > 0 else None,
            # 0 at the first step, whose difference is 0 (g_prev = g_1): a factor, not a flag,
            # so that the fused step compiles one graph for every step, not a second at step 2
            has_previous=0.0 if step == 1 else 1.0,
            step_size=lr / bias_correction(beta1, step),
            diff_step_size=lr * beta2 / bias_correction(beta2, step),
            bias_correction3=bias_correction(beta3, step),
            # the decay as the factor itself (1 when weight_decay is 0, never an exact zero): a
            # group without decay compiles the same graph as one with it
            decay=1.0 - lr_wd if group["no_prox"] else 1.0 + lr_wd,
        )


def _single_tensor_adan(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    exp_avg_diffs: list[torch.Tensor],
    neg_pre_grads: list[torch.Tensor],
    *,
    beta1: Scalar,
    beta2: Scalar,
    beta3: Scalar,
    eps: Scalar,
    no_prox: bool,
    clip: Scalar | None,
    has_previous: Scalar,
    step_size: Scalar,
    diff_step_size: Scalar,
    bias_correction3: Scalar,
    decay: Scalar,
) -> None:
    """Adan's step; ``decay`` is ``1 - lr wd`` (``no_prox``: ``p *= decay``) or ``1 + lr wd``
    (proximal: ``p /= decay``), ``clip`` the global clip factor (``None``: no clipping)."""
    for i, param in enumerate(params):
        grad = grads[i] if clip is None else grads[i] * clip
        m, n, d, work = exp_avgs[i], exp_avg_sqs[i], exp_avg_diffs[i], neg_pre_grads[i]
        work.add_(grad)  # -g_prev + g = diff
        if not is_one(has_previous):
            work.mul_(has_previous)  # 0 at the first step: g_prev = g_1, so diff_1 = 0
        m.lerp_(grad, 1 - beta1)
        d.lerp_(work, 1 - beta2)
        work.mul_(beta2).add_(grad)  # g + b2 diff
        n.mul_(beta3).addcmul_(work, work, value=scalar_arg(1 - beta3))
        denom = adam_denominator(n, eps, bias_correction3)
        if no_prox and not is_one(decay):
            param.mul_(decay)
        # both moments over one denominator: one division per element, not two (measured fused:
        # 49.5 -> 48.6 ms on the transformer set, within noise; Adan is bound by memory)
        param.addcdiv_((m * step_size).add_(d, alpha=scalar_arg(diff_step_size)), denom, value=-1.0)
        if not no_prox and not is_one(decay):
            param.mul_(1.0 / decay)  # one division per step, not per element
        torch.neg(grad, out=work)  # store -g for the next difference (a copy, never an alias)


def _multi_tensor_adan(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    exp_avg_diffs: list[torch.Tensor],
    neg_pre_grads: list[torch.Tensor],
    steps: list[int],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    beta3: float,
    eps: float,
    weight_decay: float,
    no_prox: bool,
    clip: float,
) -> None:
    if clip != 1.0:
        grads = list(torch._foreach_mul(grads, clip))  # a scaled copy: p.grad is never written
    first = [i for i, s in enumerate(steps) if s == 1]
    if first:  # g_prev = g_1, so diff_1 = 0
        foreach_copy_([neg_pre_grads[i] for i in first], [grads[i] for i in first])
        torch._foreach_neg_([neg_pre_grads[i] for i in first])
    # The stored -g_prev is the work buffer (as in the reference): no temporary but the denominator.
    work = neg_pre_grads
    torch._foreach_add_(work, grads)  # diff
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_lerp_(exp_avg_diffs, work, 1 - beta2)
    # (g + b2 diff) / (1 + b2) as one lerp of diff towards g; (1 + b2)^2 moves into n's weight.
    torch._foreach_lerp_(work, grads, 1 / (1 + beta2))
    torch._foreach_mul_(exp_avg_sqs, beta3)
    torch._foreach_addcmul_(exp_avg_sqs, work, work, (1 - beta3) * (1 + beta2) ** 2)
    # sqrt(n/bc3) + eps == (sqrt(n) + eps*sqrt(bc3)) / sqrt(bc3): sqrt(bc3) moves into the steps.
    bc3_sqrt = [math.sqrt(bias_correction(beta3, s)) for s in steps]
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_add_(denom, scalars([eps * b for b in bc3_sqrt]))
    if no_prox:
        decoupled_weight_decay_(params, lr * weight_decay)
    torch._foreach_addcdiv_(
        params,
        exp_avgs,
        denom,
        scalars(
            [-lr * b / bias_correction(beta1, s) for b, s in zip(bc3_sqrt, steps, strict=True)]
        ),
    )
    torch._foreach_addcdiv_(
        params,
        exp_avg_diffs,
        denom,
        scalars(
            [
                -lr * beta2 * b / bias_correction(beta2, s)
                for b, s in zip(bc3_sqrt, steps, strict=True)
            ]
        ),
    )
    if not no_prox:
        proximal_weight_decay_(params, lr * weight_decay)
    foreach_copy_(work, grads)  # store -g for the next difference (a copy, never an alias)
    torch._foreach_neg_(work)


register(
    OptimInfo(
        name="adan",
        verified="pytorch-optimizer==4.1.0 Adan, prox/no-prox/clipping (0.0); hand-computed steps; FSDP2",
        cls=Adan,
        paper="Xie et al., Adan: Adaptive Nesterov Momentum Algorithm for Faster Optimizing Deep "
        "Models, IEEE TPAMI 2024",
        paper_url="https://arxiv.org/abs/2208.06677",
        reference="github.com/sail-sg/Adan@2c65bea adan.py",
        description="Nesterov momentum from EMAs of gradients and gradient differences, "
        "proximal weight decay.",
        tuned_lr={"quadratic": 0.3, "rosenbrock": 0.03},
    )
)

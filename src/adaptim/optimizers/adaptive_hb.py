"""SGD and Adam with the adaptive heavy-ball momentum "inspired by the quadratic optimization".

Paper: Tao Sun, Huaming Ling, Zuoqiang Shi, Dongsheng Li, Bao Wang, "Training Deep Neural Networks with
Adaptive Momentum Inspired by the Quadratic Optimization", arXiv:2110.09057 (2021).
Reference code: none published by the authors (no repository linked from the paper or PapersWithCode).
The only implementation found that cites the paper is a third-party R/TensorFlow training script
(found in the public GitHub index by the string "2110.09057"); it computes exactly the rule below.

**RECONSTRUCTED.** The paper's text with its equations could not be retrieved (the stored copies have the
mathematics stripped). The rule is the paper's stated derivation -- the optimal heavy-ball momentum for a
quadratic with curvature ``lambda`` at step size ``lr`` is the critically damped
``beta* = (1 - sqrt(lr * lambda))^2`` -- with ``lambda`` replaced by an online estimate from the last two
iterates, as the third-party script does. Verify against the PDF before calling it "faithful".

Second search (2025): the stored copies of the paper (ar5iv.labs.arxiv.org/html/2110.09057, arxivlens,
researchtrend, PapersWithCode) expose only the abstract and the introduction; no LaTeX source, no
journal version and no authors' code were found (``find_string`` "2110.09057", "Adaptive Momentum
Inspired by the Quadratic"; authors' repositories: BaoWangMath/*, zqOuO/*). Corroborating evidence from
the same group (Tao Sun, NUDT): their follow-ups' code -- ANSHB, github.com/zqOuO/
ziqwnudt-Normalized-Stochastic-Heavy-Ball-with-Adaptive-Momentum @ 7ed8973, file
``ECAI2023/CIFAR10&100/imageclassification/ANSHB.py``, and the AMS sampler, github.com/zqOuO/
Score-based-Generative-Models-with-Adaptive-Momentum @ d7249ad, ``ImageGeneration/AMS.py`` -- estimate
``h = ||g_k - g_{k-1}|| / ||x_k - x_{k-1}||`` and use ``clip(((1 - lr h) / (1 + lr h))^2, 0, 1 - delta)``
for the EMA form ``m = beta m + (1 - beta) g``. That is exactly the critically damped value
``(1 - sqrt(lr_eff h))^2`` for the EMA form's effective step ``lr_eff = lr (1 - beta)``, i.e. the same
derivation as ours for the heavy-ball form ``m = beta m + g``: the SGD rule below is consistent with it;
for the Adam variant (an EMA) it suggests ``((1 - lr h)/(1 + lr h))^2`` instead (not adopted: unverified).

Update (step k >= 1; norms over ALL parameters of ALL groups, i.e. of the concatenated vector)::

    g_k     = grad (+ wd * p)                                  # L2, folded into the gradient
    L_k     = ||g_k - g_{k-1}|| / (||x_k - x_{k-1}|| + curvature_eps)      (k >= 2)
    beta_k  = clip((1 - sqrt(lr * L_k))^2, 0, 1 - delta);  beta_1 = 0     (per group: its own lr)

    SGD  (ahb_sgd):   m = beta_k m + g_k ;  x -= lr * m        # heavy ball x+ = x - lr g + beta (x - x-)
    Adam (ahb_adam):  m = beta_k m + (1 - beta_k) g_k ;  v = b2 v + (1 - b2) g_k^2
                      x -= lr * m / (sqrt(v / (1 - b2^k)) + eps)

``(1 - sqrt(a))^2`` is not monotone: for ``lr * L > 1`` it rises again (the critically damped momentum
of a step size beyond ``1/lambda``, which keeps heavy ball stable up to ``lr * lambda < 2 (1 + beta)``);
that is what makes the method tolerate large learning rates. The clip at ``1 - delta`` keeps it a
contraction. ``x_k - x_{k-1}`` is the displacement of the previous step, recorded when it is taken
(``lr * ||m||`` for SGD, ``lr * ||update||`` for Adam), so no copy of the parameters is kept.

Choices where the sources are silent (named options where they matter):

* global norms over all parameters (the third-party script concatenates all variables);
  ``delta = 1e-2`` and ``curvature_eps = 1e-6`` are that script's constants;
* step 1 uses ``beta_1 = 0`` (no history); a parameter that has no history yet (first step, or just
  unfrozen) does not enter the curvature estimate;
* weight decay is L2 (``g + wd * p``), so the curvature is that of the regularized objective;
* Adam variant: the step size inside ``sqrt(lr * L)`` is the raw ``lr`` (the script feeds the same formula
  into Adam's ``beta_1``); the paper's choice is UNDERSPECIFIED in the available sources. Because
  ``beta_1 = 0`` the EMA ``m`` has weights summing to one at every step, so it needs no bias correction
  (``1 - prod(beta_i) = 1``); ``v`` keeps Adam's bias correction.

FSDP2 (DTensor parameters): the updates are elementwise given ``beta_k`` and run on the local shards;
the norms of ``g_k - g_{k-1}`` and of each step sum their squares over the shards (one collective per
batch), so ``L_k`` and ``beta_k`` are the same on every rank and equal a single process's, and the
recorded step length is the global one (tests/test_fsdp2.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from adaptim.core.base import AdaptimOptimizer, TensorBatch
from adaptim.core.distributed import (
    any_dtensor,
    foreach_copy_,
    local_list,
    sharded_norms,
)
from adaptim.core.functional import adam_denominator, bias_correction, l2_weight_decay, scalars
from adaptim.core.validation import POSITIVE, UNIT_HALF_OPEN, Interval
from adaptim.registry import OptimInfo, register

__all__ = ["AdaptiveHeavyBallAdam", "AdaptiveHeavyBallSGD", "adaptive_momentum"]

PAPER = (
    "Sun, Ling, Shi, Li, Wang, Training Deep Neural Networks with Adaptive Momentum Inspired by the "
    "Quadratic Optimization, arXiv 2021"
)
PAPER_URL = "https://arxiv.org/abs/2110.09057"
REFERENCE = (
    "no official code; rule RECONSTRUCTED from the paper's derivation and the only third-party "
    "implementation citing it (an R/TensorFlow training script); consistent with the same group's "
    "ANSHB code (zqOuO/ziqwnudt-Normalized-Stochastic-Heavy-Ball-with-Adaptive-Momentum @ 7ed8973)"
)


def adaptive_momentum(lr: float, curvature: float | None, delta: float) -> float:
    """``clip((1 - sqrt(lr * L))^2, 0, 1 - delta)``; ``0`` when there is no curvature estimate yet."""
    if curvature is None:
        return 0.0
    return min(max((1.0 - math.sqrt(lr * curvature)) ** 2, 0.0), 1.0 - delta)


class _AdaptiveHeavyBall(AdaptimOptimizer):
    """Shared parts: the global curvature estimate, computed before any parameter moves."""

    state_keys = ("momentum_buffer", "prev_grad")
    supports_dtensor = True  # tests/test_fsdp2.py

    def _init_state(
        self, group: dict[str, Any], param: torch.Tensor, state: dict[str, Any]
    ) -> None:
        super()._init_state(group, param, state)
        state["step_sq"] = 0.0  # ||x_k - x_{k-1}||^2 of this tensor's last step

    def _before_update(self, prepared: list[tuple[dict[str, Any], list[TensorBatch]]]) -> None:
        grad_sq, step_sq, seen = 0.0, 0.0, False
        for group, batches in prepared:
            foreach = self._use_foreach(group)
            for batch in batches:
                # L2 weight decay once, here: the curvature is that of the regularized objective.
                batch.grads = l2_weight_decay(batch.grads, batch.params, group["weight_decay"])
                idx = [i for i, s in enumerate(batch.states) if s["step"] > 1]
                if not idx:
                    continue
                seen = True
                grads = [batch.grads[i] for i in idx]
                prev = [batch.states[i]["prev_grad"] for i in idx]
                likes = grads if any_dtensor(grads) else None
                if likes is not None:  # FSDP2: norms of the local shards, squares summed below
                    grads, prev = local_list(grads), local_list(prev)
                if foreach:
                    norms = torch._foreach_norm(torch._foreach_sub(grads, prev))
                else:
                    norms = [
                        torch.linalg.vector_norm(g - q) for g, q in zip(grads, prev, strict=True)
                    ]
                if likes is not None:
                    norms = sharded_norms(norms, likes)
                grad_sq += sum(n * n for n in torch.stack(norms).double().tolist())
                step_sq += sum(batch.states[i]["step_sq"] for i in idx)
        eps = self.defaults["curvature_eps"]
        self._curvature = math.sqrt(grad_sq) / (math.sqrt(step_sq) + eps) if seen else None

    def _momentum(self, group: dict[str, Any]) -> float:
        return adaptive_momentum(float(group["lr"]), self._curvature, group["delta"])


class AdaptiveHeavyBallSGD(_AdaptiveHeavyBall):
    """SGD with the adaptive heavy-ball momentum of Sun et al. (2021); no momentum hyperparameter.

    Args:
        params: parameters or param groups.
        lr: learning rate (required).
        delta: the momentum is clipped to ``[0, 1 - delta]``.
        curvature_eps: added to ``||x_k - x_{k-1}||`` in the curvature estimate.
        weight_decay: L2 coefficient, added to the gradient.
        maximize: ascend instead of descend.
        foreach: ``None`` or ``True`` for the multi-tensor path, ``False`` for the per-tensor one.
    """

    hyperparameter_rules = {
        "delta": Interval(0.0, 1.0, low_open=True),
        "curvature_eps": POSITIVE,
    }

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        delta: float = 1e-2,
        curvature_eps: float = 1e-6,
        weight_decay: float = 0.0,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
    ) -> None:
        defaults = dict(
            lr=lr,
            delta=delta,
            curvature_eps=curvature_eps,
            weight_decay=weight_decay,
            maximize=maximize,
            foreach=foreach,
        )
        super().__init__(params, defaults)

    def _update(self, group: dict[str, Any], batch: TensorBatch, foreach: bool) -> None:
        fn = _multi_tensor_ahb_sgd if foreach else _single_tensor_ahb_sgd
        likes, lists = _local(batch, "momentum_buffer", "prev_grad")
        fn(
            *lists,
            batch.states,
            likes=likes,
            lr=float(group["lr"]),
            beta=self._momentum(group),
        )


class AdaptiveHeavyBallAdam(_AdaptiveHeavyBall):
    """Adam whose ``beta1`` is the adaptive heavy-ball momentum of Sun et al. (2021).

    Args:
        params: parameters or param groups.
        lr: learning rate.
        beta2: EMA coefficient of the squared gradient.
        eps: added to ``sqrt(v_hat)``.
        delta: the momentum is clipped to ``[0, 1 - delta]``.
        curvature_eps: added to ``||x_k - x_{k-1}||`` in the curvature estimate.
        weight_decay: L2 coefficient, added to the gradient.
        maximize: ascend instead of descend.
        foreach: ``None`` or ``True`` for the multi-tensor path, ``False`` for the per-tensor one.
    """

    hyperparameter_rules = {
        "beta2": UNIT_HALF_OPEN,
        "delta": Interval(0.0, 1.0, low_open=True),
        "curvature_eps": POSITIVE,
    }
    state_keys = ("exp_avg", "exp_avg_sq", "prev_grad")

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        beta2: float = 0.999,
        eps: float = 1e-8,
        delta: float = 1e-2,
        curvature_eps: float = 1e-6,
        weight_decay: float = 0.0,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
    ) -> None:
        defaults = dict(
            lr=lr,
            beta2=beta2,
            eps=eps,
            delta=delta,
            curvature_eps=curvature_eps,
            weight_decay=weight_decay,
            maximize=maximize,
            foreach=foreach,
        )
        super().__init__(params, defaults)

    def _update(self, group: dict[str, Any], batch: TensorBatch, foreach: bool) -> None:
        fn = _multi_tensor_ahb_adam if foreach else _single_tensor_ahb_adam
        likes, lists = _local(batch, "exp_avg", "exp_avg_sq", "prev_grad")
        fn(
            *lists,
            batch.states,
            likes=likes,
            lr=float(group["lr"]),
            beta=self._momentum(group),
            beta2=group["beta2"],
            eps=group["eps"],
        )


def _local(
    batch: TensorBatch, *keys: str
) -> tuple[list[torch.Tensor] | None, list[list[torch.Tensor]]]:
    """``(likes, [params, grads, states...])``: under FSDP2 the local shards and their DTensors
    (``likes``, over whose shards the norms of the recorded step lengths are summed)."""
    lists = [batch.params, batch.grads, *(batch.state(k) for k in keys)]
    if any_dtensor(batch.params):
        return batch.params, [local_list(ts) for ts in lists]
    return None, lists


def _step_norms(norms: list[torch.Tensor], likes: list[torch.Tensor] | None) -> list[float]:
    """Per-tensor norms of the steps (local shards' norms summed over the shards under FSDP2)."""
    if likes is not None:
        norms = sharded_norms(norms, likes)
    return torch.stack(norms).tolist()


def _step_norm(norm: torch.Tensor, like: torch.Tensor | None) -> float:
    return norm.item() if like is None else _step_norms([norm], [like])[0]


# -- SGD ------------------------------------------------------------------------------------------


def _single_tensor_ahb_sgd(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    bufs: list[torch.Tensor],
    prev_grads: list[torch.Tensor],
    states: list[dict[str, Any]],
    *,
    likes: list[torch.Tensor] | None = None,
    lr: float,
    beta: float,
) -> None:
    for i, (param, grad, buf, prev, state) in enumerate(
        zip(params, grads, bufs, prev_grads, states, strict=True)
    ):
        buf.mul_(beta).add_(grad)  # m_k = beta_k m_{k-1} + g_k
        prev.copy_(grad)
        param.add_(buf, alpha=-lr)  # x_{k+1} = x_k - lr m_k
        like = None if likes is None else likes[i]
        state["step_sq"] = (lr * _step_norm(torch.linalg.vector_norm(buf), like)) ** 2


def _multi_tensor_ahb_sgd(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    bufs: list[torch.Tensor],
    prev_grads: list[torch.Tensor],
    states: list[dict[str, Any]],
    *,
    likes: list[torch.Tensor] | None = None,
    lr: float,
    beta: float,
) -> None:
    torch._foreach_mul_(bufs, beta)
    torch._foreach_add_(bufs, grads)
    foreach_copy_(prev_grads, grads)
    torch._foreach_add_(params, bufs, alpha=-lr)
    norms = _step_norms(list(torch._foreach_norm(bufs)), likes)
    for state, n in zip(states, norms, strict=True):
        state["step_sq"] = (lr * n) ** 2


# -- Adam -----------------------------------------------------------------------------------------


def _single_tensor_ahb_adam(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    prev_grads: list[torch.Tensor],
    states: list[dict[str, Any]],
    *,
    likes: list[torch.Tensor] | None = None,
    lr: float,
    beta: float,
    beta2: float,
    eps: float,
) -> None:
    for i, param in enumerate(params):
        grad, exp_avg, exp_avg_sq, state = grads[i], exp_avgs[i], exp_avg_sqs[i], states[i]
        exp_avg.mul_(beta).add_(grad, alpha=1 - beta)  # beta_1 = 0: no bias correction needed
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        prev_grads[i].copy_(grad)
        update = exp_avg / adam_denominator(exp_avg_sq, eps, bias_correction(beta2, state["step"]))
        param.add_(update, alpha=-lr)
        like = None if likes is None else likes[i]
        state["step_sq"] = (lr * _step_norm(torch.linalg.vector_norm(update), like)) ** 2


def _multi_tensor_ahb_adam(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    prev_grads: list[torch.Tensor],
    states: list[dict[str, Any]],
    *,
    likes: list[torch.Tensor] | None = None,
    lr: float,
    beta: float,
    beta2: float,
    eps: float,
) -> None:
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
    foreach_copy_(prev_grads, grads)
    bc2_sqrt = [math.sqrt(bias_correction(beta2, s["step"])) for s in states]
    # update = m / (sqrt(v)/sqrt(bc2) + eps), built in the denominator's buffer
    update = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(update, scalars(bc2_sqrt))
    torch._foreach_add_(update, eps)
    torch._foreach_reciprocal_(update)
    torch._foreach_mul_(update, exp_avgs)
    torch._foreach_add_(params, update, alpha=-lr)
    norms = _step_norms(list(torch._foreach_norm(update)), likes)
    for state, n in zip(states, norms, strict=True):
        state["step_sq"] = (lr * n) ** 2


register(
    OptimInfo(
        name="ahb_sgd",
        verified="hand-computed steps (rule RECONSTRUCTED); behaviour: converges at lr where SGD "
        "diverges; FSDP2",
        cls=AdaptiveHeavyBallSGD,
        paper=PAPER,
        paper_url=PAPER_URL,
        reference=REFERENCE,
        description="SGD whose heavy-ball momentum is the critically damped (1-sqrt(lr*L))^2 "
        "for an online curvature estimate L.",
        test_kwargs={"lr": 0.05},
        tuned_lr={"quadratic": 0.3, "rosenbrock": 1e-3},
        aliases=("adaptive_hb_sgd",),
    )
)
register(
    OptimInfo(
        name="ahb_adam",
        verified="hand-computed steps (rule RECONSTRUCTED); FSDP2",
        cls=AdaptiveHeavyBallAdam,
        paper=PAPER,
        paper_url=PAPER_URL,
        reference=REFERENCE,
        description="Adam whose beta1 is the adaptive heavy-ball momentum (1-sqrt(lr*L))^2.",
        tuned_lr={"quadratic": 0.1, "rosenbrock": 3.0},
        aliases=("adaptive_hb_adam",),
    )
)

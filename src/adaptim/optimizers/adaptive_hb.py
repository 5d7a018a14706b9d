"""SGD and Adam with the adaptive heavy-ball momentum "inspired by the quadratic optimization".

Paper: Tao Sun, Huaming Ling, Zuoqiang Shi, Dongsheng Li, Bao Wang, "Training Deep Neural Networks with
Adaptive Momentum Inspired by the Quadratic Optimization", arXiv:2110.09057 (2021). Its text with the
equations could not be retrieved (the stored copies have the mathematics stripped).
Restated by its authors: Tan Nguyen, Richard G. Baraniuk, Robert M. Kirby, Stanley J. Osher, Bao Wang,
"Momentum Transformer: Closing the Performance Gap Between Self-attention and Its Linearization",
MSML 2022, PMLR 190:189-204 (github.com/mlresearch/v190, ``nguyen22a/nguyen22a.pdf``), Sec. 3.2.1:

* Theorem 2 (Sun et al.): for ``f(x) = x^T A x / 2 + b^T x`` with eigenvalues of ``A`` in
  ``[nu, L]`` and a fixed step ``gamma <= 1/L``, the optimal heavy-ball momentum (heavy ball in the
  form ``m = beta m + g; x -= gamma m``, their eq. (10)) is ``beta = (1 - sqrt(gamma nu))^2``, and
  then ``||x_{k+1} - x*|| <= (1 - sqrt(gamma nu)) ||x_k - x*||``.
* Proposition 3 (Sun et al.): under the same conditions (``gamma <= 1/L``, any fixed beta),
  ``||grad f(x_k) - grad f(x_{k-1})|| / ||x_k - x_{k-1}||`` tends to ``nu``, the SMALLEST eigenvalue.
* Eq. (17): the adaptive momentum ``proj_[0, 1-delta]((1 - sqrt(gamma ||grad f(x_k) -
  grad f(x_{k-1})|| / ||x_k - x_{k-1}||))^2)``, with "delta ... 10^-3 in this work".

Reference code: none published by the authors. A third-party R/TensorFlow training script citing the
paper (found in the public GitHub index by the string "2110.09057") computes eq. (17) for SGD with
momentum with global norms, ``delta = 1e-2`` and ``1e-6`` added to ``||x_k - x_{k-1}||``; in its Adam
branch it puts the PREVIOUS ``beta_1`` (not the lr) under the root: ``beta_1 <- (1 - sqrt(beta_1 *
ratio))^2``. The same group's ANSHB code (github.com/zqOuO/
ziqwnudt-Normalized-Stochastic-Heavy-Ball-with-Adaptive-Momentum @ 7ed8973,
``ECAI2023/CIFAR10&100/imageclassification/ANSHB.py``; also the AMS sampler,
github.com/zqOuO/Score-based-Generative-Models-with-Adaptive-Momentum @ d7249ad, ``AMS.py``) is a
different method: per-tensor ratios with ``x_diff = lr ||g_k||`` instead of the true displacement, and
``clip(((1 - lr h) / (1 + lr h))^2, 0, 1 - delta)`` for the EMA form ``m = beta m + (1 - beta) g``,
with ``delta = 1e-3``.

Status. ``ahb_sgd`` is eq. (17) with heavy ball in the form of eq. (10): sourced, no longer
reconstructed. ``ahb_adam`` stays RECONSTRUCTED: the authors give no Adam form (future work in the
Momentum Transformer paper); we feed the same beta, with the raw lr under the root, into Adam's
``beta_1`` -- unlike the R script (previous ``beta_1`` under the root) and unlike ANSHB's EMA rule.

What the theory covers and what it does not. The ratio estimates the smallest curvature ``nu``, and the
momentum is the critically damped one for ``nu`` at step ``lr``; the theorem takes ``lr <= 1/L``
(the claim ``ahb-ratio-finds-lambda-min`` of ``adaptim bench --suite claims`` checks both statements
on a quadratic). For ``lr * ratio > 1``, beyond the theory, ``(1 - sqrt(a))^2`` rises again: heavy ball
stays stable up to ``lr * lambda < 2 (1 + beta)``, so the method tolerates somewhat larger learning
rates than plain SGD (our observation on toy problems, not the papers' claim).

``delta = 1e-3`` for the SGD form: the authors' own choice in the restatement, and the ANSHB default
of the same group; the ``1e-2`` of the third-party script (our default until 2026-12) is not theirs.
The Adam form keeps the script's ``1e-2``: that script is its only source (with ``1e-3`` the
reconstructed Adam form stopped reaching the Rosenbrock minimizer at its tuned lr). The
``curvature_eps = 1e-6`` added to ``||x_k - x_{k-1}||`` is the script's guard against a zero step (the
paper has none).

Update (step k >= 1; norms over ALL parameters of ALL groups, i.e. of the concatenated vector)::

    g_k     = grad (+ wd * p)                                  # L2, folded into the gradient
    nu_k    = ||g_k - g_{k-1}|| / (||x_k - x_{k-1}|| + curvature_eps)     (k >= 2)
    beta_k  = clip((1 - sqrt(lr * nu_k))^2, 0, 1 - delta);  beta_1 = 0    (per group: its own lr)

    SGD  (ahb_sgd):   m = beta_k m + g_k ;  x -= lr * m        # heavy ball x+ = x - lr g + beta (x - x-)
    Adam (ahb_adam):  m = beta_k m + (1 - beta_k) g_k ;  v = b2 v + (1 - b2) g_k^2
                      x -= lr * m / (sqrt(v / (1 - b2^k)) + eps)

``x_k - x_{k-1}`` is the displacement of the previous step, recorded when it is taken
(``lr * ||m||`` for SGD, ``lr * ||update||`` for Adam), so no copy of the parameters is kept.

Choices where the sources are silent (named options where they matter):

* global norms over all parameters (the R script concatenates all variables; the paper's ``x`` is the
  whole parameter vector);
* step 1 uses ``beta_1 = 0`` (no history); a parameter that has no history yet (first step, or just
  unfrozen) does not enter the curvature estimate;
* weight decay is L2 (``g + wd * p``), so the curvature is that of the regularized objective;
* Adam variant: the step size inside ``sqrt(lr * nu)`` is the raw ``lr`` (see Status). Because
  ``beta_1 = 0`` the EMA ``m`` has weights summing to one at every step, so it needs no bias correction
  (``1 - prod(beta_i) = 1``); ``v`` keeps Adam's bias correction.

Two passes per step, both over cache-sized chunks of tensors on CPU (``cache_blocking``; bit-identical
to one pass over all tensors). The first (``_before_update``) computes each tensor's
``||g_k - g_{k-1}||`` in ``prev_grad``'s buffer (``prev_grad - g_k``, whose norm is the same) and then
stores ``g_k`` there, so no temporary as large as the model exists and ``prev_grad`` is written while it
is in cache; the second (the update) reads ``g_k`` back from ``prev_grad`` (with weight decay it is the
regularized gradient, computed once). The global sum of squares stays a 0-dim float64 tensor on the
parameters' device, and so does ``beta_k``: the only host synchronization is one per step, when the step
lengths are written to the states as Python floats (``step_sq``, the ``||x_k - x_{k-1}||^2`` of each
tensor, kept as a float so that checkpoints keep their meaning).

Given ``beta_k`` the update is elementwise but for the norm of each tensor's step: ``fused=True``
compiles it over whole tensors (core/fused.py), ``beta_k`` passed to it as a 0-dim tensor, each step
norm written into a 0-dim tensor; the first pass stays eager.

FSDP2 (DTensor parameters): the updates are elementwise given ``beta_k`` and run on the local shards;
the norms of ``g_k - g_{k-1}`` (one collective per batch) and of the steps (one collective per step) sum
their squares over the shards, so ``nu_k`` and ``beta_k`` are the same on every rank and equal a single
process's, and the recorded step length is the global one (tests/test_fsdp2.py).

ZeRO (``torch.distributed.optim.ZeroRedundancyOptimizer`` builds the optimizer on one rank's share of
the tensors): the share's two sums of squares and its number of tensors with a history are summed
over the partition in one collective per step (``global_statistics``; tests/test_zero.py), so ``nu_k``
is a single process's; each rank records the step lengths of its own tensors.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, overload

import torch

from adaptim.core.base import AdaptimOptimizer, TensorBatch, required, run_eagerly
from adaptim.core.distributed import any_dtensor, partition_sum, sharded_norms
from adaptim.core.functional import (
    Scalar,
    adam_denominator,
    bias_correction,
    l2_weight_decay,
    scalar_arg,
    scalars,
)
from adaptim.core.fused import run_elementwise
from adaptim.core.validation import POSITIVE, UNIT_HALF_OPEN, Interval
from adaptim.registry import OptimInfo, register

__all__ = ["AdaptiveHeavyBallAdam", "AdaptiveHeavyBallSGD", "adaptive_momentum"]

PAPER = (
    "Sun, Ling, Shi, Li, Wang, Training Deep Neural Networks with Adaptive Momentum Inspired by the "
    "Quadratic Optimization, arXiv 2021"
)
PAPER_URL = "https://arxiv.org/abs/2110.09057"
REFERENCE = (
    "no official code; the SGD rule is eq. (17) of the authors' restatement (Nguyen, Baraniuk, Kirby, "
    "Osher, Wang, Momentum Transformer, MSML 2022, PMLR 190:189-204, Sec. 3.2.1); the Adam form is "
    "RECONSTRUCTED (none published)"
)

Beta = float | torch.Tensor


@overload
def adaptive_momentum(lr: float, curvature: torch.Tensor, delta: float) -> torch.Tensor: ...
@overload
def adaptive_momentum(lr: float, curvature: float | None, delta: float) -> float: ...


def adaptive_momentum(lr: float, curvature: Beta | None, delta: float) -> Beta:
    """``clip((1 - sqrt(lr * nu))^2, 0, 1 - delta)`` (eq. (17) of the restatement); ``0`` when there
    is no curvature estimate ``nu`` yet.

    ``curvature`` may be a Python float or a 0-dim tensor (then so is the result: no host sync)."""
    if curvature is None:
        return 0.0
    if isinstance(curvature, torch.Tensor):
        return (1.0 - (lr * curvature).sqrt()).square().clamp(0.0, 1.0 - delta)
    return min(max((1.0 - math.sqrt(lr * curvature)) ** 2, 0.0), 1.0 - delta)


class _AdaptiveHeavyBall(AdaptimOptimizer):
    """Shared parts: the global curvature estimate, computed before any parameter moves, and the
    recording of each tensor's step length once the step is taken."""

    state_keys: ClassVar[tuple[str, ...]] = ("momentum_buffer", "prev_grad")
    # prev_grad is a copy of the last gradient, not a moment: it stays in the working dtype
    quantized_states: ClassVar[Mapping[str, bool]] = {"momentum_buffer": True}
    supports_dtensor = True  # tests/test_fsdp2.py
    #: the norms are over all parameters: summed over a ZeRO partition (tests/test_zero.py)
    global_statistics = True
    #: step lengths are read back to the host and kept as Python floats in the state
    traceable_update = False
    #: elementwise given ``beta_k``, which a first pass (``_before_update``) computes
    cache_blocking = True

    def _init_state(
        self, group: Mapping[str, Any], param: torch.Tensor, state: dict[str, Any]
    ) -> None:
        super()._init_state(group, param, state)
        state["step_sq"] = 0.0  # ||x_k - x_{k-1}||^2 of this tensor's last step

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one optimization step; ``closure`` re-evaluates the model and returns the loss."""
        if torch.compiler.is_compiling():  # see traceable_update
            return run_eagerly(self.step, closure)
        self._steps_taken: list[
            tuple[list[torch.Tensor], list[torch.Tensor], list[Any], float]
        ] = []
        loss = super().step(closure)
        self._record_step_lengths()
        return loss

    def _before_update(self, prepared: list[tuple[dict[str, Any], list[TensorBatch]]]) -> None:
        """First pass: ``prev_grad <- g_k`` everywhere and the global ``||g_k - g_{k-1}||^2`` over the
        tensors with a history, per cache-sized chunk on CPU (see the module notes)."""
        totals: list[torch.Tensor] = []
        step_sq = 0.0
        n = 0  # tensors with a history
        for group, batches in prepared:
            foreach, weight_decay = self._use_foreach(group), group["weight_decay"]
            fn = _multi_tensor_grad_change_ if foreach else _single_tensor_grad_change_
            for batch in batches:
                norms: list[torch.Tensor] = []
                likes: list[torch.Tensor] = []
                for part in self._chunks(batch) if foreach else (batch,):
                    params, grads, prev = part.local("prev_grad")
                    changes = fn(params, grads, prev, weight_decay=weight_decay)
                    for i, state in enumerate(part.states):
                        if state["step"] > 1:  # a tensor without history does not enter nu_k
                            norms.append(changes[i])
                            likes.append(part.params[i])
                            step_sq += state["step_sq"]
                            n += 1
                if not norms:
                    continue
                if any_dtensor(likes):  # FSDP2: squares of the local shards' norms, summed
                    norms = sharded_norms(norms, likes)
                totals.append(torch.stack(norms).to(torch.float64).square().sum())
        self._betas: dict[tuple[float, float, torch.device, torch.dtype], Beta] = {}
        self._curvature: torch.Tensor | None = None
        eps = self.defaults["curvature_eps"]
        if self.partition is not None:
            # ZeRO: this rank holds a share of the tensors; both squared norms are over all of them,
            # and so is the question whether any tensor has a history (one collective per step)
            device = totals[0].device if totals else self.partition.device
            f64: dict[str, Any] = dict(dtype=torch.float64, device=device)
            partial = [t.to(device) for t in totals] + [torch.zeros((), **f64)]
            parts = torch.stack(
                [
                    torch.stack(partial).sum(),
                    torch.full((), step_sq, **f64),
                    torch.full((), n, **f64),
                ]
            )
            grad_sq, step_sq_t, with_history = partition_sum(parts, self.partition).unbind()
            if with_history.item() > 0:  # a host sync, as _record_step_lengths has one anyway
                self._curvature = grad_sq.sqrt() / (step_sq_t.sqrt() + eps)
        elif totals:
            device = totals[0].device
            grad_sq = torch.stack([t.to(device) for t in totals]).sum()
            self._curvature = grad_sq.sqrt() / (math.sqrt(step_sq) + eps)

    def _momentum(self, group: Mapping[str, Any], like: torch.Tensor) -> Beta:
        """``beta_k`` of ``group``: ``0.0``, or a 0-dim tensor on ``like``'s device, in its dtype."""
        if self._curvature is None:
            return 0.0
        lr, delta = float(group["lr"]), group["delta"]
        key = (lr, delta, like.device, like.dtype)
        beta = self._betas.get(key)
        if beta is None:
            beta = adaptive_momentum(lr, self._curvature, delta)
            beta = self._betas[key] = beta.to(device=like.device, dtype=like.dtype)
        return beta

    def _run_elementwise(self, group: dict[str, Any], batch: TensorBatch, *, fused: bool) -> None:
        """The update (``_elementwise_update``) over whole tensors, with one more list after the
        states: a 0-dim tensor per parameter into which the update writes the norm of its step
        (``||m_k||`` or ``||update||``), recorded as the tensor's step length afterwards.

        The update writes them with ``norms[i][()] = ...``: torch 2.13's compile silently drops a
        ``copy_`` (or ``fill_``, ``mul_``, ...) into a 0-dim float64 CPU tensor that is a graph
        input (dynamo's restart for float scalars traces it away), the indexed assignment is kept."""
        fn, keys = self._elementwise_update(group)
        lists = batch.local(*[k for k in keys if k is not None])
        params = lists[0]
        if not params:
            return
        self._like = params[0]  # beta_k is handed to the update on its device, in its dtype
        norms = self._per_tensor_outputs(batch, params[0].dtype)
        run_elementwise(
            fn,
            [*lists, norms],
            batch.steps,
            lambda step: self._step_scalars(group, step),
            fused=fused,
            split=False,
            plans=self.__dict__.setdefault("_fused_plans", {}),
        )
        self._took(batch, norms, float(group["lr"]))

    def _beta_scalar(self, group: Mapping[str, Any]) -> torch.Tensor:
        """``beta_k`` for ``_step_scalars``: a 0-dim tensor on the batch's device, in its dtype, also
        at the first step (its zero), so that the compiled update sees one kind of scalar."""
        like = self._like
        beta = self._momentum(group, like)
        if isinstance(beta, torch.Tensor):
            return beta
        return torch.zeros((), dtype=like.dtype, device=like.device)

    def _took(self, batch: TensorBatch, norms: list[torch.Tensor], lr: float) -> None:
        """Remember the per-tensor norms of the step just taken (``||x_{k+1} - x_k|| / lr``)."""
        self._steps_taken.append((norms, batch.params, batch.states, lr))

    def _record_step_lengths(self) -> None:
        """``step_sq = (lr * ||step||)^2`` of every tensor that moved: one host sync per step (and,
        under FSDP2, one collective per set of process groups)."""
        taken, self._steps_taken = self._steps_taken, []
        if not taken:
            return
        likes = [p for _, params, _, _ in taken for p in params]
        if any_dtensor(likes):
            flat = sharded_norms([n for norms, _, _, _ in taken for n in norms], likes)
            start, regrouped = 0, []
            for norms, params, states, lr in taken:
                regrouped.append((flat[start : start + len(norms)], params, states, lr))
                start += len(norms)
            taken = regrouped
        device = taken[0][0][0].device
        values = torch.cat(
            [torch.stack(norms).to(device=device, dtype=torch.float64) for norms, *_ in taken]
        ).tolist()
        start = 0
        for norms, _, states, lr in taken:
            for state, n in zip(states, values[start : start + len(norms)], strict=True):
                state["step_sq"] = (lr * n) ** 2
            start += len(norms)


class AdaptiveHeavyBallSGD(_AdaptiveHeavyBall):
    """SGD with the adaptive heavy-ball momentum of Sun et al. (2021), eq. (17) of its restatement
    (Nguyen et al., MSML 2022); no momentum hyperparameter.

    The theory (Theorem 2 there) takes ``lr <= 1/L`` for the largest curvature ``L``; the ratio then
    estimates the smallest one. The norms are over all parameters also under FSDP2 and ZeRO (exact there, up to rounding).

    Args:
        params: parameters or param groups.
        lr: learning rate (required).
        delta: the momentum is clipped to ``[0, 1 - delta]`` (``1e-3``: the authors' choice).
        curvature_eps: added to ``||x_k - x_{k-1}||`` in the curvature estimate.
        weight_decay: L2 coefficient, added to the gradient.
        maximize: ascend instead of descend.
        foreach: ``None`` or ``True`` for the multi-tensor path, ``False`` for the per-tensor one.
        fused: ``True`` runs the update as one compiled kernel per piece of parameters (C++ on CPU,
            Triton on CUDA; docs/fused.md); ``None`` and ``False``: the eager path.
    """

    hyperparameter_rules = {
        "delta": Interval(0.0, 1.0, low_open=True),
        "curvature_eps": POSITIVE,
    }

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = required,
        delta: float = 1e-3,
        curvature_eps: float = 1e-6,
        weight_decay: float = 0.0,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        state_bits: int = 32,
    ) -> None:
        defaults = dict(
            lr=lr,
            delta=delta,
            curvature_eps=curvature_eps,
            weight_decay=weight_decay,
            maximize=maximize,
            foreach=foreach,
            fused=fused,
            state_bits=state_bits,
        )
        super().__init__(params, defaults)

    def _update(self, group: dict[str, Any], batch: TensorBatch, foreach: bool) -> None:
        # prev_grad holds g_k (with the L2 term) since the first pass
        params, _, bufs, grads = batch.local("momentum_buffer", "prev_grad")
        if not params:
            return
        lr = float(group["lr"])
        norms = _multi_tensor_ahb_sgd(
            params, grads, bufs, lr=lr, beta=self._momentum(group, params[0])
        )
        self._took(batch, norms, lr)

    def _elementwise_update(
        self, group: Mapping[str, Any]
    ) -> tuple[Callable[..., None], tuple[str | None, ...]]:
        return _single_tensor_ahb_sgd, ("momentum_buffer", "prev_grad")

    def _step_scalars(self, group: Mapping[str, Any], step: int) -> dict[str, Any]:
        """The keyword arguments of ``_single_tensor_ahb_sgd``: ``beta_k`` is global (a 0-dim
        tensor on the device), the same at every step count."""
        return dict(lr=float(group["lr"]), beta=self._beta_scalar(group))


class AdaptiveHeavyBallAdam(_AdaptiveHeavyBall):
    """Adam whose ``beta1`` is the adaptive heavy-ball momentum of Sun et al. (2021): RECONSTRUCTED,
    the authors give no Adam form (module notes).

    The norms are over all parameters also under FSDP2 and ZeRO (exact there, up to rounding).

    Args:
        params: parameters or param groups.
        lr: learning rate.
        beta2: EMA coefficient of the squared gradient.
        eps: added to ``sqrt(v_hat)``.
        delta: the momentum is clipped to ``[0, 1 - delta]`` (``1e-2``: the R script's, the only
            source of an Adam form; the SGD form takes the authors' ``1e-3``).
        curvature_eps: added to ``||x_k - x_{k-1}||`` in the curvature estimate.
        weight_decay: L2 coefficient, added to the gradient.
        maximize: ascend instead of descend.
        foreach: ``None`` or ``True`` for the multi-tensor path, ``False`` for the per-tensor one.
        fused: ``True`` runs the update as one compiled kernel per piece of parameters (C++ on CPU,
            Triton on CUDA; docs/fused.md); ``None`` and ``False``: the eager path.
    """

    hyperparameter_rules = {
        "beta2": UNIT_HALF_OPEN,
        "delta": Interval(0.0, 1.0, low_open=True),
        "curvature_eps": POSITIVE,
    }
    state_keys = ("exp_avg", "exp_avg_sq", "prev_grad")
    quantized_states = {"exp_avg": True, "exp_avg_sq": False}

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
        fused: bool | None = None,
        state_bits: int = 32,
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
            fused=fused,
            state_bits=state_bits,
        )
        super().__init__(params, defaults)

    def _update(self, group: dict[str, Any], batch: TensorBatch, foreach: bool) -> None:
        # prev_grad holds g_k (with the L2 term) since the first pass
        params, _, exp_avgs, exp_avg_sqs, grads = batch.local("exp_avg", "exp_avg_sq", "prev_grad")
        if not params:
            return
        lr = float(group["lr"])
        norms = _multi_tensor_ahb_adam(
            params,
            grads,
            exp_avgs,
            exp_avg_sqs,
            batch.steps,
            lr=lr,
            beta=self._momentum(group, params[0]),
            beta2=group["beta2"],
            eps=group["eps"],
        )
        self._took(batch, norms, lr)

    def _elementwise_update(
        self, group: Mapping[str, Any]
    ) -> tuple[Callable[..., None], tuple[str | None, ...]]:
        return _single_tensor_ahb_adam, ("exp_avg", "exp_avg_sq", "prev_grad")

    def _step_scalars(self, group: Mapping[str, Any], step: int) -> dict[str, Any]:
        """The keyword arguments of ``_single_tensor_ahb_adam`` at step ``step``; ``beta_k`` is
        global (a 0-dim tensor on the device)."""
        return dict(
            lr=float(group["lr"]),
            beta=self._beta_scalar(group),
            beta2=group["beta2"],
            eps=group["eps"],
            bias_correction2=bias_correction(group["beta2"], step),
        )


# -- first pass: the change of the gradient -------------------------------------------------------


def _single_tensor_grad_change_(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    prev_grads: list[torch.Tensor],
    *,
    weight_decay: float,
) -> list[torch.Tensor]:
    """``g_k = grad + wd * p``; returns each ``||g_k - g_{k-1}||`` and stores ``g_k`` in ``prev_grads``."""
    norms = []
    for param, grad, prev in zip(params, grads, prev_grads, strict=True):
        if weight_decay:
            grad = grad.add(param, alpha=weight_decay)  # a new tensor, never p.grad
        norms.append(torch.linalg.vector_norm(grad - prev))
        prev.copy_(grad)
    return norms


def _multi_tensor_grad_change_(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    prev_grads: list[torch.Tensor],
    *,
    weight_decay: float,
) -> list[torch.Tensor]:
    if not params:
        return []
    grads = l2_weight_decay(grads, params, weight_decay)  # a new list of new tensors, or grads
    torch._foreach_sub_(prev_grads, grads)  # g_{k-1} - g_k: the same norm, no temporary
    norms = list(torch._foreach_norm(prev_grads))
    torch._foreach_copy_(prev_grads, grads)
    return norms


# -- SGD ------------------------------------------------------------------------------------------


def _single_tensor_ahb_sgd(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    bufs: list[torch.Tensor],
    prev_grads: list[torch.Tensor],
    step_norms: list[torch.Tensor],
    *,
    lr: Scalar,
    beta: Scalar,
) -> None:
    """One step per tensor. ``g_k`` is ``prev_grads[i]`` (stored by the first pass, L2 included);
    ``grads`` are not read. Writes each ``||m_k||`` into the 0-dim ``step_norms[i]``."""
    for i, param in enumerate(params):
        buf = bufs[i]
        buf.mul_(beta).add_(prev_grads[i])  # m_k = beta_k m_{k-1} + g_k
        param.add_(buf, alpha=scalar_arg(-lr))  # x_{k+1} = x_k - lr m_k
        step_norms[i][()] = torch.linalg.vector_norm(buf)  # not copy_: see _run_elementwise


def _multi_tensor_ahb_sgd(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    bufs: list[torch.Tensor],
    *,
    lr: float,
    beta: Beta,
) -> list[torch.Tensor]:
    torch._foreach_mul_(bufs, beta)
    torch._foreach_add_(bufs, grads)
    torch._foreach_add_(params, bufs, alpha=-lr)
    return list(torch._foreach_norm(bufs))


# -- Adam -----------------------------------------------------------------------------------------


def _single_tensor_ahb_adam(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    prev_grads: list[torch.Tensor],
    step_norms: list[torch.Tensor],
    *,
    lr: Scalar,
    beta: Scalar,
    beta2: Scalar,
    eps: Scalar,
    bias_correction2: Scalar,
) -> None:
    """One step per tensor, all at the same step. ``g_k`` is ``prev_grads[i]`` (stored by the first
    pass, L2 included); ``grads`` are not read. Writes each ``||update||`` into ``step_norms[i]``."""
    for i, param in enumerate(params):
        grad, exp_avg, exp_avg_sq = prev_grads[i], exp_avgs[i], exp_avg_sqs[i]
        exp_avg.mul_(beta).add_(grad * (1.0 - beta))  # beta_1 = 0: no bias correction needed
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=scalar_arg(1 - beta2))
        update = exp_avg / adam_denominator(exp_avg_sq, eps, bias_correction2)
        param.add_(update, alpha=scalar_arg(-lr))
        step_norms[i][()] = torch.linalg.vector_norm(update)  # not copy_: _run_elementwise


def _multi_tensor_ahb_adam(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    steps: list[int],
    *,
    lr: float,
    beta: Beta,
    beta2: float,
    eps: float,
) -> list[torch.Tensor]:
    # m = beta m + (1 - beta) g; a tensor weight travels as a list (the scalar overload would sync)
    weight = 1.0 - beta
    torch._foreach_lerp_(
        exp_avgs, grads, [weight] * len(grads) if isinstance(weight, torch.Tensor) else weight
    )
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1.0 - beta2)
    # update = m / (sqrt(v) / sqrt(1 - b2^k) + eps)
    denom = torch._foreach_sqrt(exp_avg_sqs)
    bc2_sqrt = scalars([math.sqrt(bias_correction(beta2, s)) for s in steps])
    torch._foreach_div_(denom, bc2_sqrt)
    torch._foreach_add_(denom, eps)
    update = torch._foreach_div(exp_avgs, denom)
    torch._foreach_add_(params, update, alpha=-lr)
    return list(torch._foreach_norm(update))


register(
    OptimInfo(
        name="ahb_sgd",
        verified="hand-computed steps (eq. (17) of the authors' restatement); behaviour: the ratio "
        "tends to lambda_min and the error contracts at about 1 - sqrt(lr lambda_min) (claims); "
        "FSDP2",
        cls=AdaptiveHeavyBallSGD,
        paper=PAPER,
        paper_url=PAPER_URL,
        reference=REFERENCE,
        description="SGD whose heavy-ball momentum is the critically damped (1-sqrt(lr*nu))^2 "
        "for an online estimate nu of the smallest curvature.",
        test_kwargs={"lr": 0.05},
        tuned_lr={"quadratic": 0.3, "rosenbrock": 1e-3},
        aliases=("adaptive_hb_sgd",),
    )
)
register(
    OptimInfo(
        name="ahb_adam",
        verified="hand-computed steps (Adam form RECONSTRUCTED); FSDP2",
        cls=AdaptiveHeavyBallAdam,
        paper=PAPER,
        paper_url=PAPER_URL,
        reference=REFERENCE,
        description="Adam whose beta1 is the adaptive heavy-ball momentum (1-sqrt(lr*nu))^2 "
        "(Adam form RECONSTRUCTED).",
        tuned_lr={"quadratic": 0.1, "rosenbrock": 3.0},
        aliases=("adaptive_hb_adam",),
    )
)

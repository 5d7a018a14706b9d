"""MARS: variance reduction for preconditioned optimizers (MARS-AdamW, MARS-Lion).

Paper: Yuan, Liu, Wu, Zhou, Gu, "MARS: Unleashing the Power of Variance Reduction for Training Large
Models", ICML 2025, arXiv:2411.10438 (Alg. 1 general, Alg. 2 MARS-AdamW).
Reference code: github.com/AGI-Arena/MARS, ``MARS/optimizers/mars.py`` (commit 4831e28), which this
follows step for step for ``mars_type`` "mars-adamw" (the default) and "mars-lion".

Update of a parameter on the MARS path (``ndim >= 2``, or every parameter if ``optimize_1d``)::

    c = g + gamma * b1 / (1 - b1) * (g - g_last)       # scaled stochastic recursive momentum
    c = c / ||c||_2  if ||c||_2 > 1                     # per-TENSOR clipping to norm 1
    m = b1 m + (1 - b1) c
    mars-adamw: v = b2 v + (1 - b2) c^2                # v from the clipped c, as the code does
                p -= lr * (wd * p + (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps))
    mars-lion:  p -= lr * (wd * p + sign(m))

Parameters on the fallback path (``ndim < 2`` unless ``optimize_1d``) take a plain AdamW step with
``betas_1d``, ``weight_decay_1d`` and the learning rate ``lr * lr_1d / lr_0``, where ``lr_0`` is the
constructor's ``lr`` (the reference code's ``lr_1d_factor``): a scheduler that scales ``lr`` scales the
fallback learning rate by the same factor. ``amsgrad`` (running max of ``v``) applies to both paths.
Weight decay is always decoupled and multiplied by the (path's) learning rate.

``g_last``. In the approximate mode (``is_approx=True``, the default and the paper's "MARS-approx",
used for all its experiments) it is the previous step's gradient, taken on the previous batch at the
previous iterate; it starts at zero, so the first step uses ``c = (1 + gamma b1/(1-b1)) g``. We store
it as a *copy*: the reference code keeps a reference to ``p.grad``, which is wrong when gradients are
zeroed in place (``zero_grad(set_to_none=False)``) or accumulated. In the exact mode (``is_approx=False``)
``g_last`` must be the gradient of the *previous iterate on the current batch*, which needs a second
backward pass per step, through two methods (the reference code's interface)::

    x_t = current parameters, batch_t = this step's batch, batch_{t+1} = the next one
    loss(x_t, batch_{t+1}).backward(); opt.update_previous_grad(); opt.zero_grad()  # stores g(x_t, b_{t+1})
    loss(x_t, batch_t).backward();     opt.step();                 opt.zero_grad()  # uses g(x_{t-1}, b_t)
    opt.update_last_grad()             # g_last := the stored g(x_t, b_{t+1}), for the next step

i.e. each step evaluates the *next* batch at the current parameters before stepping (the official
training script ``train_mars.py`` does this; the docstring in ``mars.py`` shows the current batch
twice, which would make the correction vanish). Without these calls ``g_last`` stays zero.

Paper vs reference code: the README writes ``v`` with the raw gradient, the code with the clipped
``c`` (we follow the code). The reference code sends only exactly-2-D parameters down the MARS path
(``len(grad.shape) == 2``), so convolution kernels (4-D) take the AdamW fallback there; we send every
parameter with ``ndim >= 2`` down the MARS path, which is what the code's comment and the README
("use AdamW for 1d params") describe and what ``pytorch_optimizer.MARS`` does. For GPT-2 (the paper's
experiments) the two agree. ``gamma``, ``mars_type``, ``optimize_1d``, ``betas_1d`` and ``is_approx`` are
optimizer-wide in the reference code and per param group here. MARS-Shampoo (Newton-Schulz
orthogonalization in bf16) is not implemented. If ``lr_0 = 0`` (the reference code would divide by
zero) the ratio ``lr_1d / lr_0`` is taken as 1.

``fused=True`` compiles the per-tensor update (core/fused.py): the MARS path over whole tensors (the
clipping norm reduces over each), the AdamW fallback through Adam's own elementwise update.

FSDP2 (DTensor parameters): the update runs on the local shards and the clipping norm of each tensor
sums its squares over the shards (one collective per step for all tensors; on the per-tensor and
fused paths the norms are computed in an eager pass before the update, which then divides by them);
checked against a single-process run in tests/test_fsdp2.py.

Oracle: ``pytorch_optimizer.MARS`` (4.1.0) agrees except for eps placement, which it takes as
``(sqrt(v + 1e-15) + eps) / sqrt(1 - b2^t)`` instead of ``sqrt(v) / sqrt(1 - b2^t) + eps``: that is the
~3e-7 difference recorded in the spec (tests/optimizers/test_mars.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from adaptim.core.base import LOW_PRECISION, AdaptimOptimizer, TensorBatch
from adaptim.core.distributed import (
    all_reduce_many,
    any_dtensor,
    foreach_copy_,
    local_list,
    sharded_norms,
)
from adaptim.core.functional import (
    Scalar,
    adam_denominator,
    bias_correction,
    decoupled_weight_decay_,
    scalar_arg,
    scalars,
)
from adaptim.core.fused import run_elementwise
from adaptim.core.validation import BOOL, NONNEGATIVE, UNIT_HALF_OPEN, OneOf, TupleOf
from adaptim.optimizers.adam import _multi_tensor_adam, _single_tensor_adam, adam_step_scalars
from adaptim.registry import OptimInfo, register

__all__ = ["MARS"]

MARS_TYPES = ("mars-adamw", "mars-lion")


class MARS(AdaptimOptimizer):
    """MARS (Yuan et al., 2025): AdamW or Lion on a clipped, variance-reduced gradient estimate.

    Args:
        params: parameters or param groups.
        lr: learning rate of the MARS path.
        betas: ``(b1, b2)`` of the MARS path.
        eps: added to ``sqrt(v_hat)``.
        weight_decay: decoupled decay rate of the MARS path, ``p *= 1 - lr * weight_decay``.
        amsgrad: use the running maximum of ``v`` (both paths).
        gamma: scale of the gradient correction ``gamma * b1/(1-b1) * (g - g_last)``.
        is_approx: ``g_last`` is the previous step's gradient (True) or the one stored by
            :meth:`update_previous_grad` / :meth:`update_last_grad` (exact MARS).
        mars_type: ``"mars-adamw"`` or ``"mars-lion"``.
        optimize_1d: send parameters with ``ndim < 2`` down the MARS path too (else AdamW).
        lr_1d: learning rate of the AdamW fallback, relative to ``lr`` (see the module notes).
        betas_1d: ``(b1, b2)`` of the AdamW fallback.
        weight_decay_1d: decoupled decay rate of the AdamW fallback.
        maximize: ascend instead of descend.
        foreach: ``None`` or ``True`` for the multi-tensor path, ``False`` for the per-tensor one.
        fused: ``True`` runs the update as one compiled kernel per piece of parameters (C++ on CPU,
            Triton on CUDA; docs/fused.md); ``None`` and ``False``: the eager path.
    """

    cache_blocking = True  # the multi-tensor update is per tensor

    elementwise = False  # per-tensor norm clipping
    supports_dtensor = True  # tests/test_fsdp2.py
    hyperparameter_rules = {
        "betas": TupleOf((UNIT_HALF_OPEN, UNIT_HALF_OPEN)),
        "betas_1d": TupleOf((UNIT_HALF_OPEN, UNIT_HALF_OPEN)),
        "gamma": NONNEGATIVE,
        "is_approx": BOOL,
        "mars_type": OneOf(MARS_TYPES),
        "optimize_1d": BOOL,
        "lr_1d": NONNEGATIVE,
        "weight_decay_1d": NONNEGATIVE,
    }
    state_keys = ("exp_avg", "exp_avg_sq")
    quantized_states = {"exp_avg": True, "exp_avg_sq": False, "max_exp_avg_sq": False}

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 3e-3,
        betas: tuple[float, float] = (0.95, 0.99),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        amsgrad: bool = False,
        gamma: float = 0.025,
        is_approx: bool = True,
        mars_type: str = "mars-adamw",
        optimize_1d: bool = False,
        lr_1d: float = 3e-3,
        betas_1d: tuple[float, float] = (0.9, 0.95),
        weight_decay_1d: float = 0.1,
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
            gamma=gamma,
            is_approx=is_approx,
            mars_type=mars_type,
            optimize_1d=optimize_1d,
            lr_1d=lr_1d,
            betas_1d=betas_1d,
            weight_decay_1d=weight_decay_1d,
            maximize=maximize,
            foreach=foreach,
            fused=fused,
            state_bits=state_bits,
        )
        super().__init__(params, defaults)

    # -- state ------------------------------------------------------------------------------------

    @staticmethod
    def _on_mars_path(group: Mapping[str, Any], param: torch.Tensor) -> bool:
        return bool(group["optimize_1d"]) or param.ndim >= 2

    def _init_state(
        self, group: Mapping[str, Any], param: torch.Tensor, state: dict[str, Any]
    ) -> None:
        super()._init_state(group, param, state)
        if self._on_mars_path(group, param):
            state["last_grad"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        if group["amsgrad"]:
            state["max_exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)

    def _lr_1d(self, group: dict[str, Any]) -> float:
        """The fallback path's learning rate: ``lr * lr_1d / lr_0`` (the reference's lr_1d_factor)."""
        lr0 = float(self.defaults["lr"])
        ratio = float(group["lr_1d"]) / lr0 if lr0 != 0 else 1.0
        return float(group["lr"]) * ratio

    # -- exact MARS -------------------------------------------------------------------------------

    def _state_for(self, group: dict[str, Any], p: torch.Tensor) -> dict[str, Any]:
        """The state of ``p``, created as a step would create it (so ``step`` finds it complete)."""
        state = self.state[p]
        if not state:
            if p.is_complex():
                raise TypeError(f"{type(self).__name__} does not support complex parameters")
            working = p.detach().float() if p.dtype in LOW_PRECISION else p.detach()
            state["step"] = 0
            self._init_state(group, working, state)
        return state

    @torch.no_grad()
    def update_previous_grad(self) -> None:
        """Exact MARS: store a copy of the current ``p.grad`` (the gradient of the current parameters
        on the *next* batch) as ``previous_grad``; :meth:`update_last_grad` later makes it ``g_last``.
        Groups with ``is_approx=True`` are left alone."""
        for group in self.param_groups:
            if group["is_approx"]:
                continue
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.layout is not torch.strided:
                    raise TypeError(f"{type(self).__name__} does not support sparse gradients")
                state = self._state_for(group, p)
                grad = p.grad.neg() if group["maximize"] else p.grad
                dtype = torch.float32 if p.dtype in LOW_PRECISION else p.dtype
                if "previous_grad" in state:
                    state["previous_grad"].copy_(grad)
                else:  # a copy, never an alias of p.grad
                    state["previous_grad"] = grad.to(dtype=dtype, copy=True)

    @torch.no_grad()
    def update_last_grad(self) -> None:
        """Exact MARS: ``g_last := previous_grad``, after :meth:`step`, for the next step."""
        for group in self.param_groups:
            if group["is_approx"]:
                continue
            for p in group["params"]:
                state = self.state[p]
                if "previous_grad" not in state:
                    continue
                if "last_grad" in state:
                    state["last_grad"].copy_(state["previous_grad"])
                else:
                    state["last_grad"] = state["previous_grad"].clone()

    # -- the step ---------------------------------------------------------------------------------

    def _complete_states(self, group: Mapping[str, Any], batch: TensorBatch) -> list[bool]:
        """Create the states an option switched on mid-run needs (``amsgrad``: ``max_exp_avg_sq``;
        ``optimize_1d``: ``last_grad`` of the vectors), before any update; returns, per tensor,
        whether it takes the MARS path (else the AdamW fallback)."""
        amsgrad, on_mars_path = group["amsgrad"], []
        for p, s in zip(batch.params, batch.states, strict=True):
            if amsgrad and "max_exp_avg_sq" not in s:
                s["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            mars = self._on_mars_path(group, p)
            if mars and "last_grad" not in s:
                s["last_grad"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            on_mars_path.append(mars)
        return on_mars_path

    def _update(self, group: dict[str, Any], batch: TensorBatch, foreach: bool) -> None:
        amsgrad = group["amsgrad"]
        on_mars_path = self._complete_states(group, batch)
        mars_idx = [i for i, mars in enumerate(on_mars_path) if mars]
        adam_idx = [i for i, mars in enumerate(on_mars_path) if not mars]

        # FSDP2: the update runs on the local shards; the clipping norms are summed over shards.
        sharded = any_dtensor(batch.params)
        view = local_list if sharded else list

        def pick(values: list[Any], idx: list[int]) -> list[Any]:
            return [values[i] for i in idx]

        def state(key: str, idx: list[int]) -> list[torch.Tensor]:
            return view([batch.states[i][key] for i in idx])

        if mars_idx:
            beta1, beta2 = group["betas"]
            _multi_tensor_mars(
                view(pick(batch.params, mars_idx)),
                view(pick(batch.grads, mars_idx)),
                state("exp_avg", mars_idx),
                state("exp_avg_sq", mars_idx),
                state("max_exp_avg_sq", mars_idx) if amsgrad else None,
                state("last_grad", mars_idx),
                pick(batch.steps, mars_idx),
                lr=float(group["lr"]),
                beta1=beta1,
                beta2=beta2,
                eps=group["eps"],
                weight_decay=group["weight_decay"],
                gamma=group["gamma"],
                mars_type=group["mars_type"],
                store_last_grad=group["is_approx"],
                likes=pick(batch.params, mars_idx) if sharded else None,
            )
        if adam_idx:
            beta1, beta2 = group["betas_1d"]
            _multi_tensor_adam(
                view(pick(batch.params, adam_idx)),
                view(pick(batch.grads, adam_idx)),
                state("exp_avg", adam_idx),
                state("exp_avg_sq", adam_idx),
                state("max_exp_avg_sq", adam_idx) if amsgrad else None,
                pick(batch.steps, adam_idx),
                lr=self._lr_1d(group),
                beta1=beta1,
                beta2=beta2,
                eps=group["eps"],
                weight_decay=group["weight_decay_1d"],
                decoupled_weight_decay=True,
            )

    # -- the per-tensor update: run eagerly (foreach=False) or compiled (fused=True) ---------------

    def _elementwise_update(
        self, group: Mapping[str, Any]
    ) -> tuple[Callable[..., None], tuple[str | None, ...]]:
        """The MARS path's update, over whole tensors (the clipping norm is per tensor); the
        tensors of the AdamW fallback take ``_single_tensor_adam`` (see ``_run_elementwise``)."""
        amsgrad = "max_exp_avg_sq" if group["amsgrad"] else None
        return _single_tensor_mars, ("exp_avg", "exp_avg_sq", amsgrad, "last_grad")

    def _step_scalars(self, group: Mapping[str, Any], step: int) -> dict[str, Any]:
        """The keyword arguments of ``_single_tensor_mars`` at step ``step``."""
        beta1, beta2 = group["betas"]
        return dict(
            lr=float(group["lr"]),
            beta1=beta1,
            beta2=beta2,
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            correction=group["gamma"] * (beta1 / (1.0 - beta1)),
            bias_correction1=bias_correction(beta1, step),
            bias_correction2=bias_correction(beta2, step),
            lion=group["mars_type"] == "mars-lion",
            store_last_grad=group["is_approx"],
        )

    def _run_elementwise(self, group: dict[str, Any], batch: TensorBatch, *, fused: bool) -> None:
        """The MARS path's tensors through ``_single_tensor_mars`` (whole tensors), the fallback's
        through ``_single_tensor_adam`` (elementwise: flat pieces when fused), one batch each.

        ``_single_tensor_mars`` takes a last list besides its states: each tensor's clipping norm
        ``||c||`` computed beforehand, or ``None`` to compute it in the update. Under FSDP2 the
        update sees local shards, so the norms are computed first, eagerly, and summed over the
        shards (one collective per step for all tensors); the update then divides by them."""
        on_mars_path = self._complete_states(group, batch)
        mars = _sub_batch(batch, [i for i, m in enumerate(on_mars_path) if m])
        adam = _sub_batch(batch, [i for i, m in enumerate(on_mars_path) if not m])
        if mars.params:
            fn, keys = self._elementwise_update(group)
            lists = _local_lists(mars, keys)
            clip_norms = None
            if any_dtensor(mars.params):
                _, grads, last_grads = mars.local("last_grad")
                correction = self._step_scalars(group, 1)["correction"]
                norms = [
                    torch.linalg.vector_norm(_corrected_gradient(g, last, correction))
                    for g, last in zip(grads, last_grads, strict=True)
                ]
                clip_norms = sharded_norms(norms, mars.params)
            run_elementwise(
                fn,
                [*lists, clip_norms],
                mars.steps,
                lambda step: self._step_scalars(group, step),
                fused=fused,
                split=False,
                plans=self.__dict__.setdefault("_fused_plans", {}),
            )
        if adam.params:
            amsgrad = "max_exp_avg_sq" if group["amsgrad"] else None
            run_elementwise(
                _single_tensor_adam,
                _local_lists(adam, ("exp_avg", "exp_avg_sq", amsgrad)),
                adam.steps,
                lambda step: adam_step_scalars(
                    self._lr_1d(group),
                    group["betas_1d"],
                    group["eps"],
                    group["weight_decay_1d"],
                    True,
                    step,
                ),
                fused=fused,
                plans=self.__dict__.setdefault("_fused_plans", {}),
            )


def _local_lists(
    batch: TensorBatch, keys: tuple[str | None, ...]
) -> list[list[torch.Tensor] | None]:
    """``[params, grads, *states]`` of ``batch`` (local shards under FSDP2), the states in the order
    of ``keys`` (``None``: an optional state that is off, passed as ``None``)."""
    lists = batch.local(*[k for k in keys if k is not None])
    states = iter(lists[2:])
    return [lists[0], lists[1], *(None if k is None else next(states) for k in keys)]


def _sub_batch(batch: TensorBatch, idx: list[int]) -> TensorBatch:
    """The tensors ``idx`` of ``batch`` (no originals: the whole batch is written back)."""
    return TensorBatch(
        [batch.params[i] for i in idx],
        [batch.grads[i] for i in idx],
        [batch.states[i] for i in idx],
        [],
        batch.copied,
    )


def _corrected_gradient(
    grad: torch.Tensor, last_grad: torch.Tensor, correction: Scalar
) -> torch.Tensor:
    """A new ``c = g + correction * (g - g_last)``, ``correction = gamma * b1 / (1 - b1)``."""
    return (grad - last_grad).mul_(correction).add_(grad)


def _single_tensor_mars(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    max_exp_avg_sqs: list[torch.Tensor] | None,
    last_grads: list[torch.Tensor],
    clip_norms: list[torch.Tensor] | None,
    *,
    lr: Scalar,
    beta1: Scalar,
    beta2: Scalar,
    eps: Scalar,
    weight_decay: Scalar,
    correction: Scalar,
    bias_correction1: Scalar,
    bias_correction2: Scalar,
    lion: bool,
    store_last_grad: bool,
) -> None:
    """One MARS step per (whole) tensor, all at the same step. ``clip_norms``: each tensor's
    ``||c||`` computed beforehand (FSDP2: summed over the shards), or ``None``: computed here."""
    for i, param in enumerate(params):
        grad, exp_avg, exp_avg_sq = grads[i], exp_avgs[i], exp_avg_sqs[i]
        c = _corrected_gradient(grad, last_grads[i], correction)
        norm = torch.linalg.vector_norm(c) if clip_norms is None else clip_norms[i]
        c.div_(norm.clamp_min(1.0))  # c / ||c|| if ||c|| > 1 (no sync)
        exp_avg.mul_(beta1).add_(c, alpha=scalar_arg(1 - beta1))
        if lion:
            update = exp_avg.sign()
        else:
            exp_avg_sq.mul_(beta2).addcmul_(c, c, value=scalar_arg(1 - beta2))
            if max_exp_avg_sqs is not None:
                torch.maximum(max_exp_avg_sqs[i], exp_avg_sq, out=max_exp_avg_sqs[i])
                exp_avg_sq = max_exp_avg_sqs[i]
            denom = adam_denominator(exp_avg_sq, eps, bias_correction2)
            update = exp_avg / denom.mul_(bias_correction1)
        param.add_(param.mul(weight_decay).add_(update), alpha=scalar_arg(-lr))
        if store_last_grad:
            last_grads[i].copy_(grad)


def _multi_tensor_mars(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    max_exp_avg_sqs: list[torch.Tensor] | None,
    last_grads: list[torch.Tensor],
    steps: list[int],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    gamma: float,
    mars_type: str,
    store_last_grad: bool,
    likes: list[torch.Tensor] | None = None,
) -> None:
    decoupled_weight_decay_(params, lr * weight_decay)
    # c = g + k (g - g_last) == lerp(g, g_last, -k), in one pass
    c = torch._foreach_lerp(grads, last_grads, -gamma * beta1 / (1.0 - beta1))
    norms = list(torch._foreach_norm(c))
    if likes is not None:  # FSDP2: squares summed over the shards, one collective for all tensors
        norms = all_reduce_many(torch._foreach_mul(norms, norms), likes)
        torch._foreach_sqrt_(norms)
    torch._foreach_clamp_min_(norms, 1.0)
    torch._foreach_div_(c, norms)
    torch._foreach_lerp_(exp_avgs, c, 1.0 - beta1)
    if mars_type == "mars-lion":
        torch._foreach_add_(params, torch._foreach_sign(exp_avgs), alpha=-lr)
    else:
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, c, c, 1.0 - beta2)
        if max_exp_avg_sqs is not None:
            torch._foreach_maximum_(max_exp_avg_sqs, exp_avg_sqs)
            exp_avg_sqs = max_exp_avg_sqs
        # sqrt(v/bc2) + eps == (sqrt(v) + eps sqrt(bc2)) / sqrt(bc2): sqrt(bc2) joins the step size
        bc2_sqrt = [math.sqrt(bias_correction(beta2, s)) for s in steps]
        denom = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_add_(denom, scalars([eps * b for b in bc2_sqrt]))
        step_size = [
            -lr * b / bias_correction(beta1, s) for b, s in zip(bc2_sqrt, steps, strict=True)
        ]
        torch._foreach_addcdiv_(params, exp_avgs, denom, scalars(step_size))
    if store_last_grad:
        foreach_copy_(last_grads, grads)


register(
    OptimInfo(
        name="mars",
        cls=MARS,
        paper=(
            "Yuan, Liu, Wu, Zhou & Gu, MARS: Unleashing the Power of Variance Reduction for "
            "Training Large Models, ICML 2025"
        ),
        paper_url="https://arxiv.org/abs/2411.10438",
        reference="github.com/AGI-Arena/MARS MARS/optimizers/mars.py @ 4831e28",
        description="AdamW on a clipped variance-reduced gradient g + gamma b1/(1-b1) (g - g_prev).",
        supports_complex=False,
        # the convergence problems are 1-D: send them down the MARS path, not the AdamW fallback
        test_kwargs={"optimize_1d": True},
        tuned_lr={"quadratic": 0.1, "rosenbrock": 0.01},
        verified="pytorch-optimizer==4.1.0 MARS (eps=0); hand-computed exact mode",
    )
)

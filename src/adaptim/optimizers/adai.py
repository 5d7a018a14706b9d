"""Adai (adaptive inertia) and AdaiV2.

Paper: Xie, Wang, Zhang, Sato, Sugiyama, "Adaptive Inertia: Disentangling the Effects of Adaptive Learning
Rate and Momentum", ICML 2022, arXiv:2006.15815 (Alg. 2 Adai, Alg. 3 AdaiW).
Reference code: github.com/zeke-xie/adaptive-inertia-adai, ``adai_optim/adai.py`` and
``adai_optim/adaiv2.py`` (commit e6c1b9d), which these follow step for step.

Adai adapts the *momentum* (inertia) per coordinate instead of the learning rate; there is no division by
``sqrt(v)``. With ``b0, b2 = betas`` and ``d = dampening`` (AdaiV2; Adai is ``d = 1``)::

    g = grad (+ wd * p unless decoupled)             # L2 by default for Adai; AdaiW: p *= 1 - lr * wd
    v = b2 v + (1 - b2) g^2 ;  v_hat = v / (1 - b2^t)
    v_bar = mean of v_hat over ALL parameters of ALL param groups      # one global scalar per step
    beta1 = clamp(1 - b0 * (v_hat / v_bar)^(1/(3 - 2d)), 0, 1 - eps)    # per-coordinate inertia
    beta1_prod *= beta1
    m = beta1 m + (1 - beta1)^d g
    p -= lr * b0^(1 - d) * m / (1 - beta1_prod)

``eps`` is the inertia bound (``beta1 <= 1 - eps``), not a denominator guard. Defaults follow the
reference code: ``betas=(0.1, 0.99)``, ``eps=1e-3``, ``weight_decay=0``; ``lr`` is required (the authors
recommend an SGD-like learning rate); ``decoupled_weight_decay`` (the code's ``decoupled``) is ``False``
for Adai and ``True`` for AdaiV2.

Two passes per step. The first (``_before_update``) updates ``v`` and sums each tensor (in its dtype, as
the reference code does); the global mean ``v_bar`` over the parameters that have a gradient (as in the
reference code) is combined in float64 and stays a 0-dim tensor on the parameters' device: no
host-device synchronization. Given ``v_bar``, the second pass (the update) is elementwise: with
``fused=True`` it is compiled (core/fused.py), ``v_bar`` passed to it as that 0-dim tensor, while the
first pass stays eager. On CPU both eager passes run over cache-sized chunks of tensors
(``cache_blocking``; bit-identical to one pass over all tensors), so the L2 term ``g + wd * p`` is
recomputed per chunk in each pass instead of being stored. Under FSDP2 the per-tensor sums are summed over the shards in one collective per batch.
Under ZeRO (``torch.distributed.optim.ZeroRedundancyOptimizer``, which builds Adai on one rank's share
of the tensors) the share's sum and coordinate count are summed over the partition in one collective
per step (``global_statistics``; tests/test_zero.py), so ``v_bar`` is the mean over all parameters.

Paper vs reference code: Alg. 2 is what the code does (the paper writes the bias-corrected momentum
``m_hat = m / (1 - prod beta1)``); AdaiV2's ``dampening`` exists only in the code. Where the code would
divide by zero (every gradient seen so far exactly zero, so ``v_bar = 0``) we take ``v_hat / v_bar = 0``,
i.e. ``beta1 = 1 - eps``, instead of producing NaN. Where ``g^2`` overflows (``|g|`` beyond about
``1e19`` in float32: ``v`` and ``v_bar`` are inf, and the code computes inf / inf = NaN), such a
coordinate is taken as the largest, ``beta1 = 0`` (it takes the plain step ``lr b0^(1-d) g``), and the
others get ``v_hat / v_bar = 0``; ordinary steps are unchanged bit for bit.

Oracle: ``pytorch_optimizer.Adai`` (4.1.0, ``weight_decouple`` <-> ``decoupled_weight_decay``,
``dampening`` for AdaiV2) agrees to rounding, except that it clamps ``v_bar`` from below at ``eps``
(``max(v_bar, eps)``), which the reference code does not; the two differ when the mean squared gradient
is below ``eps`` (tests/optimizers/test_adai.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from adaptim.core.base import AdaptimOptimizer, TensorBatch, required
from adaptim.core.distributed import all_reduce_many, any_dtensor, partition_sum
from adaptim.core.functional import (
    Exponent,
    Scalar,
    bias_correction,
    decoupled_weight_decay_,
    l2_weight_decay,
    power_,
    scalars,
)
from adaptim.core.validation import (
    NONNEGATIVE,
    UNIT_CLOSED,
    UNIT_HALF_OPEN,
    TupleOf,
    validate_hyperparameters,
)
from adaptim.registry import OptimInfo, register

__all__ = ["Adai", "AdaiV2"]

#: the param-group keys of the reference code's ``betas=(b0, b2)`` (the paper's names)
BETA_KEYS = ("beta0", "beta2")


class Adai(AdaptimOptimizer):
    """Adaptive inertia (Xie et al., 2022): per-coordinate momentum from the global mean of ``v_hat``.

    The mean is over all parameters also under FSDP2 and ZeRO (``ZeroRedundancyOptimizer(params,
    optimizer_class=Adai, lr=...)``): exact there, up to the order of additions.

    Args:
        params: parameters or param groups.
        lr: learning rate (required). Adai's momentum is an average, not a sum: use the learning
            rate of plain SGD, about 10x that of ``torch.optim.SGD(momentum=0.9)``.
        betas: ``(b0, b2)``: the inertia scale and the EMA coefficient of ``g^2``, as the reference
            code takes them; stored in the param groups as ``beta0`` and ``beta2`` (see below).
        eps: the inertia bound: ``beta1`` is clamped to ``[0, 1 - eps]``.
        weight_decay: L2 coefficient (added to the gradient) or, if ``decoupled_weight_decay``
            ("AdaiW"), the decoupled decay rate ``p *= 1 - lr * weight_decay``.
        decoupled_weight_decay: the reference code's ``decoupled``.
        maximize: ascend instead of descend.
        foreach: ``None`` or ``True`` for the multi-tensor path, ``False`` for the per-tensor one.
        fused: ``True`` runs the update as one compiled kernel per piece of parameters (C++ on CPU,
            Triton on CUDA; docs/fused.md); ``None`` and ``False``: the eager path.

    Param groups hold ``beta0`` and ``beta2``, not ``betas``: ``b0`` is the inertia scale, not a
    momentum coefficient, and torch's schedulers that cycle momentum (``OneCycleLR``, ``CyclicLR``
    with ``cycle_momentum=True``) overwrite ``betas[0]`` of any optimizer that has ``betas``. Under
    these names they refuse Adai with their own ``ValueError`` instead; use ``cycle_momentum=False``.
    A param group given with ``betas`` is translated, and so is an older checkpoint's; a ``betas``
    that appears in a group later (e.g. synced in by a ``ZeroRedundancyOptimizer`` whose scheduler
    cycled it) and disagrees with ``beta0, beta2`` is refused at the next step, before any change.
    """

    supports_dtensor = True  # tests/test_fsdp2.py
    #: the mean of ``v_hat`` is over all parameters: summed over a ZeRO partition (tests/test_zero.py)
    global_statistics = True
    #: elementwise given the global mean, computed in a first pass (``_before_update``)
    cache_blocking = True

    hyperparameter_rules = {
        "beta0": NONNEGATIVE,
        "beta2": UNIT_HALF_OPEN,
        # the constructor's (and a given param group's) ``betas``, checked before it is split
        "betas": TupleOf((NONNEGATIVE, UNIT_HALF_OPEN)),
        "eps": UNIT_CLOSED,
    }
    state_keys = ("exp_avg", "exp_avg_sq")
    # beta1_prod, a running product of coefficients in (0, 1], is not a moment: it stays fp32
    quantized_states = {"exp_avg": True, "exp_avg_sq": False}

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = required,
        betas: tuple[float, float] = (0.1, 0.99),
        eps: float = 1e-3,
        weight_decay: float = 0.0,
        *,
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
            decoupled_weight_decay=decoupled_weight_decay,
            maximize=maximize,
            foreach=foreach,
            fused=fused,
            state_bits=state_bits,
        )
        super().__init__(params, self._split_betas(defaults))

    # -- betas=(b0, b2) in, beta0 and beta2 stored ------------------------------------------------

    def _split_betas(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """A copy of ``values`` (defaults, a param group) with ``betas=(b0, b2)``, if present, stored
        as ``beta0`` and ``beta2``; refused if it disagrees with those also given."""
        out = dict(values)
        if "betas" not in out:
            return out
        betas = out.pop("betas")
        name = type(self).__name__
        validate_hyperparameters(name, {"betas": betas}, self._rules())
        for key, value in zip(BETA_KEYS, betas, strict=True):
            if key in out and out[key] != value:
                raise ValueError(
                    f"{name}: betas={tuple(betas)!r} disagrees with {key}={out[key]!r}; give "
                    "either betas=(b0, b2) or beta0 and beta2"
                )
            out[key] = value
        return out

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if isinstance(param_group, dict) and "betas" in param_group:
            param_group = self._split_betas(param_group)
        super().add_param_group(param_group)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict; one saved before the coefficients were ``beta0`` and ``beta2`` (its
        groups have ``betas`` where ours have those two) is translated first. Groups with other
        unknown keys are left alone: they come from another optimizer (e.g. ``torch.optim.Adam``),
        which the base class refuses, naming it."""
        groups = state_dict.get("param_groups", [])
        if any(self._is_old_group(g) for g in groups):
            state_dict = {
                **state_dict,
                "param_groups": [
                    self._split_betas(g) if self._is_old_group(g) else g for g in groups
                ],
            }
        super().load_state_dict(state_dict)

    def _is_old_group(self, group: Mapping[str, Any]) -> bool:
        """A saved group of this class from before ``beta0`` and ``beta2``: ``betas`` is its only
        key that the defaults lack (a ZeRO-synced group may also have the two new keys)."""
        unknown = set(group) - set(self.defaults) - {"params", "param_names"}
        return unknown == {"betas"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # an optimizer pickled before the coefficients were beta0 and beta2
        state = dict(state)
        if "betas" in state.get("defaults", {}):
            state["defaults"] = self._split_betas(state["defaults"])
        if any("betas" in g for g in state.get("param_groups", [])):
            state["param_groups"] = [self._split_betas(g) for g in state["param_groups"]]
        super().__setstate__(state)

    def _check_gradients(self) -> None:
        # A "betas" that appeared in a group after construction (synced in by ZeRO from its own
        # groups, or written by a scheduler that cycles momentum) must not be silently ignored.
        for gi, group in enumerate(self.param_groups):
            betas = group.get("betas")
            if betas is not None and tuple(betas) != (group["beta0"], group["beta2"]):
                raise ValueError(
                    f"{type(self).__name__}: param group {gi} has betas={tuple(betas)!r}, which "
                    f"disagrees with its beta0={group['beta0']!r} (the inertia scale, not a "
                    f"momentum coefficient) and beta2={group['beta2']!r}. Something set 'betas' "
                    "after construction, e.g. a scheduler with cycle_momentum=True on a "
                    "ZeroRedundancyOptimizer given betas=...; set 'beta0' / 'beta2' instead (and "
                    "cycle_momentum=False)"
                )
        super()._check_gradients()

    def _dampening(self, group: Mapping[str, Any]) -> float:
        return 1.0

    def _init_state(
        self, group: Mapping[str, Any], param: torch.Tensor, state: dict[str, Any]
    ) -> None:
        super()._init_state(group, param, state)
        # cumulative product of the per-coordinate beta1, for the bias correction of m
        state["beta1_prod"] = torch.ones_like(param, memory_format=torch.preserve_format)

    def _before_update(self, prepared: list[tuple[dict[str, Any], list[TensorBatch]]]) -> None:
        """First pass: update ``v`` everywhere and compute the global mean of ``v_hat``, once per step.

        On CPU the pass runs over the same cache-sized chunks as the update (``_chunks``). The mean
        stays a 0-dim tensor on the parameters' device (no host synchronization); under FSDP2 each
        tensor's sum is summed over its shards in one collective per batch.
        """
        totals: list[torch.Tensor] = []
        count = 0
        for group, batches in prepared:
            beta2, foreach = group["beta2"], self._use_foreach(group)
            l2 = 0.0 if group["decoupled_weight_decay"] else group["weight_decay"]
            fn = _multi_tensor_adai_second_moment if foreach else _single_tensor_adai_second_moment
            for batch in batches:
                sums: list[torch.Tensor] = []
                likes: list[torch.Tensor] = []
                steps: list[int] = []
                # 8-bit states: decoded and encoded part by part here too (this pass updates v)
                for unit in self._decoded_parts(batch, keys=("exp_avg_sq",)):
                    for part in self._chunks(unit) if foreach else (unit,):
                        params, grads, exp_avg_sqs = part.local("exp_avg_sq")
                        sums += fn(params, grads, exp_avg_sqs, beta2=beta2, weight_decay=l2)
                        likes += part.params
                        steps += part.steps
                        # not kept while the next part decodes (8 bits: its decoded v)
                        del params, grads, exp_avg_sqs
                if not sums:
                    continue
                if any_dtensor(likes):
                    sums = all_reduce_many(sums, likes)
                # sum over tensors of sum(v) / (1 - b2^t), accumulated in float64
                totals.append(_sum_of_hats(sums, [bias_correction(beta2, s) for s in steps]))
                count += sum(p.numel() for p in batch.params)
        self._v_bar: dict[torch.device, torch.Tensor] = {}
        self._inv_v_bar: dict[torch.device, torch.Tensor] = {}
        if totals:
            device = totals[0].device
            total = torch.stack([t.to(device) for t in totals]).sum()
        elif self.partition is not None:  # a ZeRO rank with no gradient still joins the collective
            device = self.partition.device
            total = torch.zeros((), dtype=torch.float64, device=device)
        else:
            return
        count_value: float | torch.Tensor = max(count, 1)
        if self.partition is not None:
            # ZeRO: this rank holds a share of the tensors; the mean is over all of them, so the
            # sum and the count are summed over the partition (one collective, on every rank)
            parts = torch.stack(
                [total.double(), torch.full((), count, dtype=torch.float64, device=device)]
            )  # torch.full: no host-to-device copy
            total, count_value = partition_sum(parts, self.partition).unbind()
            count_value = count_value.clamp_min(1.0)
        # all v_hat are zero iff the total is zero (or there are no coordinates): then
        # v_hat / v_bar is taken as 0 (see the module notes)
        positive = total > 0
        self._v_bar[device] = torch.where(positive, total / count_value, math.inf)
        self._inv_v_bar[device] = torch.where(positive, count_value / total, 0.0)

    def _on(self, cache: dict[torch.device, torch.Tensor], device: torch.device) -> torch.Tensor:
        """The global statistic in ``cache``, as a 0-dim tensor on ``device`` (moved once per step)."""
        value = cache.get(device)
        if value is None:
            value = cache[device] = next(iter(cache.values())).to(device)
        return value

    def _update(self, group: dict[str, Any], batch: TensorBatch, foreach: bool) -> None:
        lists = batch.local("exp_avg", "exp_avg_sq", "beta1_prod")
        params, grads, exp_avgs, exp_avg_sqs, beta1_prods = lists
        _multi_tensor_adai(
            params,
            grads,
            exp_avgs,
            exp_avg_sqs,
            beta1_prods,
            batch.steps,
            # the multi-tensor path takes 1 / v_bar, the per-tensor one v_bar (_step_scalars)
            self._on(self._inv_v_bar, params[0].device),
            lr=float(group["lr"]),
            beta0=group["beta0"],
            beta2=group["beta2"],
            eps=group["eps"],
            dampening=self._dampening(group),
            weight_decay=group["weight_decay"],
            decoupled_weight_decay=group["decoupled_weight_decay"],
        )

    def _elementwise_update(
        self, group: Mapping[str, Any]
    ) -> tuple[Callable[..., None], tuple[str | None, ...]]:
        return _single_tensor_adai, ("exp_avg", "exp_avg_sq", "beta1_prod")

    def _run_elementwise(self, group: dict[str, Any], batch: TensorBatch, *, fused: bool) -> None:
        # v_bar is handed to the update as a scalar of _step_scalars, on the batch's device
        self._device = batch.params[0].device
        super()._run_elementwise(group, batch, fused=fused)

    def _step_scalars(self, group: Mapping[str, Any], step: int) -> dict[str, Any]:
        """The keyword arguments of ``_single_tensor_adai`` at step ``step``; ``exp_avg_sq_hat_mean``
        is this step's ``v_bar``, a 0-dim tensor on the device (passed as it is, also when fused)."""
        lr, beta0, eps = float(group["lr"]), group["beta0"], group["eps"]
        dampening, weight_decay = self._dampening(group), group["weight_decay"]
        decoupled = group["decoupled_weight_decay"]
        return dict(
            exp_avg_sq_hat_mean=self._on(self._v_bar, self._device),
            bias_correction2=bias_correction(group["beta2"], step),
            beta0=beta0,
            max_beta1=1.0 - eps,
            damped=dampening != 1.0,
            dampening=Exponent(dampening),
            inertia_power=Exponent(1.0 / (3.0 - 2.0 * dampening)),
            decay=lr * weight_decay if decoupled else 0.0,
            l2=0.0 if decoupled else weight_decay,
            step_size=lr * beta0 ** (1.0 - dampening),
        )


class AdaiV2(Adai):
    """AdaiV2: Adai with momentum ``dampening`` (reference code ``adaiv2.py``); ``dampening=1`` is Adai.

    The defaults are the authors' (``adaiv2.py`` @ e6c1b9d), and they are Adai's but for the
    weight-decay mode (decoupled here, L2 in Adai), which does nothing at the default
    ``weight_decay=0``: with its defaults AdaiV2 takes Adai's steps exactly. The authors' README
    says "Adai is a special case of AdaiV2 with dampening=1", and it recommends no ``dampening``
    below 1 ("AdaiV2 is in testing phase"). So the bench leaves ``adaiv2`` out of its default set
    (``adaptim.bench.optimizers.SAME_AS_AT_DEFAULTS``); choose ``dampening < 1`` to get something else.

    Args:
        params: parameters or param groups.
        lr: learning rate (required).
        betas: ``(b0, b2)``: the inertia scale and the EMA coefficient of ``g^2``; stored in the
            param groups as ``beta0`` and ``beta2`` (see :class:`Adai`).
        eps: the inertia bound: ``beta1`` is clamped to ``[0, 1 - eps]``.
        weight_decay: decoupled decay rate (default mode) or L2 coefficient.
        dampening: ``d`` in ``[0, 1]``: ``m = beta1 m + (1 - beta1)^d g``, the inertia uses
            ``(v_hat / v_bar)^(1/(3 - 2d))`` and the step is scaled by ``b0^(1 - d)``.
        decoupled_weight_decay: the reference code's ``decoupled`` (default ``True`` for AdaiV2).
        maximize: ascend instead of descend.
        foreach: ``None`` or ``True`` for the multi-tensor path, ``False`` for the per-tensor one.
        fused: ``True`` runs the update as one compiled kernel per piece of parameters (C++ on CPU,
            Triton on CUDA; docs/fused.md); ``None`` and ``False``: the eager path.
    """

    hyperparameter_rules = {**Adai.hyperparameter_rules, "dampening": UNIT_CLOSED}

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = required,
        betas: tuple[float, float] = (0.1, 0.99),
        eps: float = 1e-3,
        weight_decay: float = 0.0,
        dampening: float = 1.0,
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
            eps=eps,
            weight_decay=weight_decay,
            dampening=dampening,
            decoupled_weight_decay=decoupled_weight_decay,
            maximize=maximize,
            foreach=foreach,
            fused=fused,
            state_bits=state_bits,
        )
        AdaptimOptimizer.__init__(self, params, self._split_betas(defaults))

    def _dampening(self, group: Mapping[str, Any]) -> float:
        return float(group["dampening"])


# -- first phase: the second moment and its per-tensor sums -------------------------------------


def _single_tensor_adai_second_moment(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    *,
    beta2: float,
    weight_decay: float,
) -> list[torch.Tensor]:
    """``v = b2 v + (1 - b2) g^2`` per tensor (``g`` with the L2 term ``wd * p`` when
    ``weight_decay``); returns each ``sum(v)`` (0-dim, in ``v``'s dtype, as the reference code)."""
    sums = []
    for param, grad, exp_avg_sq in zip(params, grads, exp_avg_sqs, strict=True):
        if weight_decay:
            grad = grad.add(param, alpha=weight_decay)  # a new tensor, never p.grad
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        sums.append(exp_avg_sq.sum())
    return sums


def _multi_tensor_adai_second_moment(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    *,
    beta2: float,
    weight_decay: float,
) -> list[torch.Tensor]:
    if not exp_avg_sqs:
        return []
    grads = l2_weight_decay(grads, params, weight_decay)  # a new list of new tensors, or grads
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1.0 - beta2)
    return _sums(exp_avg_sqs)


def _sum_of_hats(sums: list[torch.Tensor], bias_corrections: list[float]) -> torch.Tensor:
    """``sum_i sums[i] / bias_corrections[i]`` in float64, a 0-dim tensor on the sums' device.

    On CPU one division of stacked tensors; elsewhere the factors travel as scalars of a foreach
    division (a blocking host-to-device copy of them would synchronize). The same values either way.
    """
    stacked = torch.stack(sums).to(torch.float64)
    if stacked.device.type == "cpu":
        return (stacked / torch.tensor(bias_corrections, dtype=torch.float64)).sum()
    return torch.stack(torch._foreach_div(list(stacked.unbind()), bias_corrections)).sum()


def _sums(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each tensor's sum (the tensors are ``>= 0``). On CPU one ``sum`` per tensor: about 10x faster
    than the L1 norm of ``torch._foreach_norm`` there; elsewhere that norm, one fused kernel."""
    if tensors[0].device.type == "cpu":
        return [t.sum() for t in tensors]
    return list(torch._foreach_norm(tensors, 1))


# -- second phase: the inertia and the step -----------------------------------------------------


def _single_tensor_adai(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    beta1_prods: list[torch.Tensor],
    *,
    exp_avg_sq_hat_mean: torch.Tensor,
    bias_correction2: Scalar,
    beta0: Scalar,
    max_beta1: Scalar,
    damped: bool,
    dampening: float,
    inertia_power: float,
    decay: Scalar,
    l2: Scalar,
    step_size: Scalar,
) -> None:
    """The per-tensor reference, also the fused update; ``exp_avg_sq_hat_mean`` is ``v_bar`` (``inf``
    when all ``v`` are 0), ``max_beta1 = 1 - eps``, ``inertia_power = 1 / (3 - 2d)``, ``decay = lr * wd``
    (decoupled) or ``l2 = wd``, ``step_size = lr * b0^(1 - d)``; ``damped`` is ``d != 1``."""
    for i, param in enumerate(params):
        grad, exp_avg, beta1_prod = grads[i], exp_avgs[i], beta1_prods[i]
        decoupled_weight_decay_(param, decay)
        grad = l2_weight_decay(grad, param, l2)  # as in the first phase
        exp_avg_sq_hat = exp_avg_sqs[i] / bias_correction2
        ratio = exp_avg_sq_hat / exp_avg_sq_hat_mean
        # inf / inf where g^2 overflowed (|g| ~ 1e19 and more in float32; the mean is then inf too):
        # such a coordinate is among the largest, so it gets no inertia (beta1 = 0), not NaN. A
        # `where` on `x == x`, not nan_to_num_: Inductor's C++ tests isnan one element at a time
        ratio = torch.where(ratio == ratio, ratio, math.inf)
        if damped:
            ratio = power_(ratio, inertia_power)
        beta1 = (1.0 - ratio.mul(beta0)).clamp_min_(0.0).clamp_max_(max_beta1)
        beta3 = power_(1.0 - beta1, dampening) if damped else 1.0 - beta1
        beta1_prod.mul_(beta1)
        exp_avg.mul_(beta1).addcmul_(beta3, grad)
        exp_avg_hat = exp_avg / (1.0 - beta1_prod)
        # a 0-dim tensor when fused, which add_ takes (torch's stubs say a Python number)
        param.add_(exp_avg_hat, alpha=-step_size)  # type: ignore[arg-type]


def _multi_tensor_adai(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    beta1_prods: list[torch.Tensor],
    steps: list[int],
    inv_exp_avg_sq_hat_mean: torch.Tensor,
    *,
    lr: float,
    beta0: float,
    beta2: float,
    eps: float,
    dampening: float,
    weight_decay: float,
    decoupled_weight_decay: bool,
) -> None:
    """The multi-tensor update; ``inv_exp_avg_sq_hat_mean`` is ``1 / v_bar`` (0 when all ``v`` are 0).

    Elementwise given that 0-dim tensor, so on CPU it runs over cache-sized chunks (``cache_blocking``).
    """
    if not params:
        return
    if decoupled_weight_decay:
        decoupled_weight_decay_(params, lr * weight_decay)
    else:
        grads = l2_weight_decay(grads, params, weight_decay)  # as in the first phase
    # w = 1 - beta1 = clamp(b0 (v / ((1 - b2^t) v_bar))^(1/(3-2d)), eps, 1); the per-tensor factor is
    # one 0-dim tensor (on the device, no host synchronization), the same whatever the chunking
    # (cast to the states' dtype, as a Python scalar would be)
    # b0 enters under the power: b0 x^(1/k) = (b0^k x)^(1/k) with k = 3 - 2d (one pass fewer)
    outer, dtype = beta0 ** (3.0 - 2.0 * dampening), exp_avg_sqs[0].dtype
    # The factor is 0 only when v_bar is inf (g^2 overflowed somewhere); then a v that overflowed
    # would give inf * 0 = NaN. The smallest positive float instead keeps the limits: an inf v gets
    # w = 1 (no inertia, as in the per-tensor path), a finite one w = eps. No ordinary factor is
    # anywhere near it, so ordinary steps are unchanged.
    info = torch.finfo(dtype)
    smallest = info.tiny * info.eps
    factors = scalars([outer / bias_correction(beta2, s) for s in steps])
    if isinstance(factors, list):  # parameters at different steps (scalars, not a copied tensor)
        scales = torch._foreach_mul([inv_exp_avg_sq_hat_mean] * len(factors), factors)
        scale = torch.stack(scales).to(dtype).clamp_min_(smallest)
        weights = torch._foreach_mul(exp_avg_sqs, list(scale.unbind()))
    else:
        scale = (inv_exp_avg_sq_hat_mean * factors).to(dtype).clamp_min_(smallest)
        weights = torch._foreach_mul(exp_avg_sqs, scale)
    if dampening != 1.0:
        torch._foreach_pow_(weights, 1.0 / (3.0 - 2.0 * dampening))
    torch._foreach_clamp_min_(weights, eps)
    torch._foreach_clamp_max_(weights, 1.0)
    # beta1_prod *= 1 - w
    torch._foreach_addcmul_(beta1_prods, beta1_prods, weights, -1.0)
    if dampening == 1.0 and torch.compiler.is_compiling():
        # m += w (g - m): dynamo's polyfill of _foreach_lerp_ takes the weights for one scalar
        # (torch 2.13: "'>=' not supported between 'tuple' and 'int'")
        torch._foreach_addcmul_(exp_avgs, weights, torch._foreach_sub(grads, exp_avgs))
    elif dampening == 1.0:
        torch._foreach_lerp_(exp_avgs, grads, weights)  # m = (1 - w) m + w g
    else:
        torch._foreach_addcmul_(exp_avgs, exp_avgs, weights, -1.0)
        torch._foreach_pow_(weights, dampening)
        torch._foreach_addcmul_(exp_avgs, weights, grads)
    # p -= lr b0^(1-d) m / (1 - beta1_prod) == p += lr b0^(1-d) m / (beta1_prod - 1)
    denom = weights  # reused: one temporary per chunk, not two
    torch._foreach_copy_(denom, beta1_prods)
    torch._foreach_sub_(denom, 1.0)
    torch._foreach_addcdiv_(params, exp_avgs, denom, lr * beta0 ** (1.0 - dampening))


_PAPER = (
    "Xie, Wang, Zhang, Sato & Sugiyama, Adaptive Inertia: Disentangling the Effects of Adaptive "
    "Learning Rate and Momentum, ICML 2022"
)

register(
    OptimInfo(
        name="adai",
        cls=Adai,
        paper=_PAPER,
        paper_url="https://arxiv.org/abs/2006.15815",
        reference="github.com/zeke-xie/adaptive-inertia-adai adai_optim/adai.py @ e6c1b9d",
        description="Adaptive inertia: per-coordinate momentum from v_hat over its global mean.",
        test_kwargs={"lr": 0.1},
        tuned_lr={"quadratic": 1.0, "rosenbrock": 0.006},
        verified="pytorch-optimizer==4.1.0 Adai",
    )
)
register(
    OptimInfo(
        name="adaiv2",
        cls=AdaiV2,
        paper=_PAPER,
        paper_url="https://arxiv.org/abs/2006.15815",
        reference="github.com/zeke-xie/adaptive-inertia-adai adai_optim/adaiv2.py @ e6c1b9d",
        description="Adai with momentum dampening and decoupled weight decay by default.",
        test_kwargs={"lr": 0.1, "dampening": 0.5},
        tuned_lr={"quadratic": 0.3, "rosenbrock": 0.005},
        verified="pytorch-optimizer==4.1.0 Adai(dampening); hand-computed steps",
    )
)

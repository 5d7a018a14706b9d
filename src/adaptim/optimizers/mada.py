"""MADA (meta-adaptive optimizer learned by hyper-gradient descent) and AVGrad.

Paper: Kaan Ozkara, Can Karakus, Parameswaran Raman, Mingyi Hong, Shoham Sabach, Branislav Kveton,
Volkan Cevher, "MADA: Meta-Adaptive Optimizers through hyper-gradient Descent", ICML 2024,
arXiv:2401.08893. Reference code: github.com/amazon-science/mada_optimizer_search, ``gdtuo.py`` class
``Meta`` and its driver ``train_ddp.py`` (commit 2beded8, "version released with ICML 24 submission").
We follow that code by default; the differences are listed below.

Parameterized optimizer (per element; ``t`` the step; states from earlier steps are constants)::

    d      = g - g_prev                     (g_prev = 0 at t = 1)
    g_hat  = g + b3 d
    g2     = c g_hat^2 + (1 - c) (v_{t-1} + g_hat^2 sign(g_hat^2 - v_{t-1}))      # Yogi interpolation
    m      = b1 m + (1 - b1) g
    v      = b2 v + (1 - b2) g2
    n      = b3 n + (1 - b3) d               (the reference starts n at g_1^2, see below)
    v_avg  = v_avg + (v - v_avg) / t        # AVGrad: running time-average of v (AMSGrad's max -> mean)
    u      = (m / (1 - b1^t) + b3 n) / (sqrt((rho v + (1 - rho) v_avg) / (1 - b2^t)) + eps)
    p     *= 1 - lr wd ;  p -= lr u

``b3 = 0, c = 1, rho = 1`` is Adam; ``rho = 0`` is AVGrad; ``c = 0`` Yogi-like; ``b3 > 0`` Adan-like.

Lion interpolation (``lion=True``; the ICML code's ``gamma``, with Lion's coefficients fixed at the
code's ``lb1, lb2 = 0.95, 0.98``)::

    m_lion = lb2 m_lion + (1 - lb2) g
    p     -= lr (gamma u + (1 - gamma) sign(lb1 m_lion + (1 - lb1) g))     (instead of p -= lr u)

As in ``gdtuo.Meta`` the sign is taken of an interpolation with the *new* ``m_lion`` (Lion's own
algorithm, Chen et al. 2023, uses the old one and then updates it); we follow the code. ``gamma = 1``
is the optimizer above, ``gamma = 0`` that Lion. ``lion=False`` (the default) is ``gamma = 1`` without
``m_lion``: the behaviour of the first versions of this module.

Hyper-gradient descent (the reference's one-step unrolling): the loss at ``x_t`` depends on the
coefficients ``h`` through the last update, ``x_t = x_{t-1} - lr u_{t-1}(h)`` (older states detached,
``v_avg`` detached inside the root), so ``dL(x_t)/dh = -lr <g_t, du_{t-1}/dh>`` summed over all
parameters of the group. At each step, before the update::

    h <- clip_range(h - hyper_lr_h * clip(dL/dh, -hypergrad_clip, hypergrad_clip))

with ranges b1 in [0.01, 0.99], b2 in [0.501, 0.99], b3 in [0, 0.99], rho, c and gamma in [0, 1] and
the reference's hyper learning rates (train_ddp.py): b1, b2: 5e-4; b3, rho, c, gamma: 0.1; the clip is
10. With Lion the step is ``gamma u + (1 - gamma) sign(.)``: the derivatives of the other coefficients
carry a factor ``gamma`` and ``d/dgamma = u - sign(.)`` (the sign's derivative is 0, as autograd's).
We compute ``du/dh`` analytically in the update and keep ``lr du/dh`` per learned coefficient (one
state tensor each; a coefficient whose hyper learning rate is 0 is not learned and costs nothing). The
coefficients live in the param group (``group["beta1"]`` ...), so they are saved with the state dict;
with several groups each learns its own from its own parameters.

Differences from the reference: it computes the hyper-gradient with autograd through a graph kept
between steps; we use the closed form of the same derivative (tests check it against autograd). The
reference always carries the Lion term (``gamma`` started at 1 and learned); here it is opt-in
(``lion=True``), because a learned ``gamma`` leaves 1 at the first hyper-step and changes the default
behaviour. The reference adds ``1e-15`` to ``v`` and ``v_avg`` at initialization so that autograd's
``sqrt`` is differentiable at 0; we start them at 0 and guard the derivative instead. We keep the
reference's start ``n_0 = g_1^2`` (probably unintended, it only matters at ``t = 1`` when ``b3 > 0``).
The reference's driver zeroes gradients in place after each step (``ModuleWrapper.zero_grad``) and
``Meta`` keeps the previous gradient as an alias of ``p.grad`` (``g = param.grad.detach()``), so in the
authors' runs the stored ``g_prev`` is 0 at every step (``d = g``: the Adan term is an EMA of ``g``);
we use the real previous gradient, as the paper's equations. With that one change (a copy of ``g`` in
the code's cache) our steps match ``gdtuo.Meta`` run out of tree, Lion included (2-by-2 problem, 30
steps, float64): to 2e-14 with ``gamma`` frozen or learned alone (1e-15 without the code's ``1e-15``
start of ``v``), to 5e-9 with all six coefficients learned (the code clips a hyper-gradient with
``clip_grad_norm_``, to ``10 |g| / (|g| + 1e-6)``, not exactly 10). The reference's driver applies
decoupled weight decay to matrices only and clips gradients; here ``weight_decay`` is decoupled and
applies to the group (use param groups to exempt biases). Gradient accumulation and DDP averaging of
the hyper-gradient are the training script's business.

Paths: ``_single_tensor_mada`` writes the equations out per tensor (the reference); given the
coefficients, which the hyper-step of ``_before_update`` sets first (eagerly: its dot products are
read back), it is elementwise, so ``fused=True`` compiles it (core/fused.py), this step's coefficients,
bias corrections and ``1 / t`` passed as scalars (``MADA._step_scalars``);
``_multi_tensor_mada`` (the default) computes the same with ``torch._foreach_*`` ops, materializing
only the terms in use (frozen ``c = 1``, ``beta3 = 0``, ``rho`` in {0, 1}, ``gamma = 1`` cost nothing)
and using ``m_old - g = (m - g) / b1``, ``v_old - g2 = (v - g2) / b2`` and ``b3 (n_old - d) = n - d``
for the derivatives instead of copies of the old states (tests: equal to the reference in float64).
On CPU the multi-tensor update is cache-blocked by the base class (chunks of tensors, large tensors
cut into flat pieces): its ~40 elementwise passes then work on a chunk held in cache, and only the
states themselves stream through memory (bit-identical to one pass over the batch). The
hyper-gradient dot products read each block of ``CPU_BLOCK_NUMEL`` gradient elements once for all
coefficients, and reach the
host in one synchronization per step. FSDP2 (DTensor parameters): the update is elementwise and runs
on the local shards; the dot products are summed over the shards in one collective
(tests/test_fsdp2.py). ZeRO (``torch.distributed.optim.ZeroRedundancyOptimizer`` builds MADA on one
rank's share of each group's tensors): the hyper-gradients of all groups are summed over the
partition in one collective per step (``global_statistics``; tests/test_zero.py). AVGrad is
elementwise and needs nothing.

AVGrad (class :class:`AVGrad`) is the ``rho = 0, b3 = 0, c = 1`` member without hyper-gradients::

    m = b1 m + (1 - b1) g ; v = b2 v + (1 - b2) g^2 ; v_avg = v_avg + (v - v_avg) / t
    p *= 1 - lr wd ;  p -= lr (m / (1 - b1^t)) / (sqrt(v_avg / (1 - b2^t)) + eps)

Where ``g^2`` overflows (``|g|`` beyond about ``1e19`` in float32) ``v`` is inf and so is ``v_avg``
(the running mean guards against inf - inf: ``_running_mean_``), so the coordinate stands still, as
with ``torch.optim.Adam``.

MADA cannot keep an inf ``v`` that way: its ``v`` and Yogi term are interpolations (inf - inf) and its
derivatives multiply them by 0 where ``sqrt(V)`` is inf, and the Adan product ``d g_hat`` of the
``beta3`` derivative overflows as well. So each gradient element is clipped to ``+-2**(e/2 - 7)``
first, ``e`` the dtype's largest exponent (``2**57``, 1.4e17, in float32; ``2**505`` in float64;
``_clip_bound``): below it nothing changes (bit-identical), beyond it every square and product of the
update stays finite with a margin, and a coordinate with a constant huge gradient moves by about
``lr`` a step, as Adam does in exact arithmetic (``torch.optim.Adam`` stands still there; so does
AVGrad; an inf gradient is clipped too). The clip is one pass per tensor, in the cache-blocked chunks
on CPU. The hyper-gradient dot products use the gradient as it is: a product that overflows to
inf - inf gives a NaN hyper-gradient, and that coefficient then takes no hyper-step at that step
(+-inf is clipped to ``hypergrad_clip`` as any large value). With ``beta3 > 0`` the reference's start
``n_0 = g_1^2`` still makes the first step grow with a huge first gradient (finite).

Defaults follow ``gdtuo.Meta``: ``lr = 1e-3``, ``betas = (0.9, 0.99)``, ``eps = 1e-6``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from adaptim.core.base import AdaptimOptimizer, TensorBatch
from adaptim.core.distributed import (
    all_reduce_many,
    any_dtensor,
    is_dtensor,
    local,
    local_list,
    partition_sum,
)
from adaptim.core.functional import (
    Scalar,
    bias_correction,
    decoupled_weight_decay_,
    is_zero,
    scalar_arg,
    scalars,
)
from adaptim.core.validation import BOOL, NONNEGATIVE, UNIT_CLOSED, UNIT_HALF_OPEN, TupleOf
from adaptim.registry import OptimInfo, register

__all__ = ["MADA", "AVGrad"]

COEFFICIENTS = ("beta1", "beta2", "beta3", "rho", "c")
#: projection ranges of the learned coefficients (gdtuo.Meta.step)
RANGES = {
    "beta1": (0.01, 0.99),
    "beta2": (0.501, 0.99),
    "beta3": (0.0, 0.99),
    "rho": (0.0, 1.0),
    "c": (0.0, 1.0),
    "gamma": (0.0, 1.0),
}
#: the coefficients whose derivatives ``lr du/dh`` the per-tensor update takes, in its order
DERIVATIVES = (*COEFFICIENTS, "gamma")
#: elements per block of the hyper-gradient dot products on CPU
CPU_BLOCK_NUMEL = 2**17
#: tensors up to this size are concatenated for the hyper-gradient dot products (one dot for all)
SMALL_DOT_NUMEL = 2**14
#: gradients of at least this many elements are clipped one tensor at a time (``_clipped``)
CLIP_LARGE_NUMEL = 2**20

PAPER = (
    "Ozkara, Karakus, Raman, Hong, Sabach, Kveton, Cevher, MADA: Meta-Adaptive Optimizers through "
    "hyper-gradient Descent, ICML 2024"
)
PAPER_URL = "https://arxiv.org/abs/2401.08893"
REFERENCE = (
    "github.com/amazon-science/mada_optimizer_search gdtuo.py (Meta) + train_ddp.py @ 2beded8"
)


class MADA(AdaptimOptimizer):
    """MADA (Ozkara et al., 2024): an Adam/AVGrad/Yogi/Adan(/Lion) interpolation learned by hyper-gradients.

    Paper: arXiv:2401.08893 (ICML 2024). Reference: github.com/amazon-science/mada_optimizer_search
    ``gdtuo.py`` (``Meta``) and ``train_ddp.py`` at 2beded8. See the module docstring for the equations.
    The hyper-gradients are over all of a group's parameters also under FSDP2 and ZeRO (exact there,
    up to rounding).

    Args:
        params: parameters or param groups.
        lr: learning rate (not learned, as in the reference).
        beta1, beta2, beta3, rho, c: initial coefficients (projected onto their ranges at use).
        eps: added to the root of the second moment.
        weight_decay: decoupled, ``p *= 1 - lr * weight_decay``.
        hyper_lr: hyper learning rates of (beta1, beta2, beta3, rho, c); 0 freezes a coefficient.
        hypergrad_clip: each hyper-gradient is clipped to ``[-hypergrad_clip, hypergrad_clip]``.
        lion: interpolate towards Lion as the ICML code does: the step is
            ``gamma * u + (1 - gamma) * sign(lion direction)``. ``False`` (the default) is ``gamma = 1``
            without Lion's state.
        gamma: initial weight of the adaptive direction (used with ``lion=True``; in ``[0, 1]``).
        gamma_hyper_lr: hyper learning rate of ``gamma`` (the reference's 0.1); 0 freezes it.
        lion_betas: Lion's ``(beta1, beta2)``, the reference's fixed ``(0.95, 0.98)``.
        maximize: ascend instead of descend.
        foreach: ``None`` or ``True`` for the multi-tensor path, ``False`` for the per-tensor one.
        fused: ``True`` runs the update as one compiled kernel per piece of parameters (C++ on CPU,
            Triton on CUDA; docs/fused.md); ``None`` and ``False``: the eager path.
    """

    supports_dtensor = True  # tests/test_fsdp2.py
    #: the hyper-gradients are read back to the host every step: under torch.compile the step runs
    #: eagerly instead of recompiling at every step (core/base.py)
    traceable_update = False
    #: the hyper-gradients are sums over a group's parameters: summed over a ZeRO partition
    #: (tests/test_zero.py)
    global_statistics = True
    # the update is elementwise once the hyper-gradient step (``_before_update``) is done, so on CPU
    # it runs over cache-sized chunks, large tensors cut into flat pieces (core/base.py)
    cache_blocking = True
    splits_tensors = True
    chunk_divisor = 4  # ~12 full-size tensors per parameter: 512 KB chunks keep them in cache

    hyperparameter_rules = {
        "beta1": UNIT_HALF_OPEN,
        "beta2": UNIT_HALF_OPEN,
        "beta3": UNIT_HALF_OPEN,
        "rho": UNIT_CLOSED,
        "c": UNIT_CLOSED,
        "hyper_lr": TupleOf((NONNEGATIVE,) * 5),
        "hypergrad_clip": NONNEGATIVE,
        "lion": BOOL,
        "gamma": UNIT_CLOSED,
        "gamma_hyper_lr": NONNEGATIVE,
        "lion_betas": TupleOf((UNIT_HALF_OPEN, UNIT_HALF_OPEN)),
    }
    state_keys = ("exp_avg", "exp_avg_sq", "exp_avg_sq_mean", "diff_avg", "prev_grad")
    optional_state_keys = {"lion": "lion_exp_avg"}
    # prev_grad is a copy of the last gradient, not a moment: it stays in the working dtype
    quantized_states = {
        "exp_avg": True,
        "exp_avg_sq": False,
        "exp_avg_sq_mean": False,
        "diff_avg": True,
        "lion_exp_avg": True,
    }

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        beta1: float = 0.9,
        beta2: float = 0.99,
        beta3: float = 0.0,
        rho: float = 1.0,
        c: float = 1.0,
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        hyper_lr: tuple[float, float, float, float, float] = (5e-4, 5e-4, 0.1, 0.1, 0.1),
        hypergrad_clip: float = 10.0,
        *,
        lion: bool = False,
        gamma: float = 1.0,
        gamma_hyper_lr: float = 0.1,
        lion_betas: tuple[float, float] = (0.95, 0.98),
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        state_bits: int = 32,
    ) -> None:
        defaults = dict(
            lr=lr,
            beta1=beta1,
            beta2=beta2,
            beta3=beta3,
            rho=rho,
            c=c,
            eps=eps,
            weight_decay=weight_decay,
            hyper_lr=tuple(hyper_lr),
            hypergrad_clip=hypergrad_clip,
            lion=lion,
            gamma=gamma,
            gamma_hyper_lr=gamma_hyper_lr,
            lion_betas=tuple(lion_betas),
            maximize=maximize,
            foreach=foreach,
            fused=fused,
            state_bits=state_bits,
        )
        super().__init__(params, defaults)

    def _validate_relations(self, values: Mapping[str, Any]) -> None:
        if not values.get("lion", False) and values.get("gamma", 1.0) != 1.0:
            raise ValueError(
                f"MADA: gamma={values['gamma']!r} weights Lion's direction, which needs lion=True; "
                "accepted: gamma=1.0 with lion=False, or any gamma in [0, 1] with lion=True"
            )

    @staticmethod
    def _hyper_lrs(group: Mapping[str, Any]) -> dict[str, float]:
        """The hyper learning rate of every coefficient in use (gamma only with ``lion=True``)."""
        rates = dict(zip(COEFFICIENTS, group["hyper_lr"], strict=True))
        if group["lion"]:
            rates["gamma"] = group["gamma_hyper_lr"]
        return rates

    @classmethod
    def _learned(cls, group: Mapping[str, Any]) -> list[str]:
        return [h for h, k in cls._hyper_lrs(group).items() if k > 0]

    def _before_update(self, prepared: list[tuple[dict[str, Any], list[TensorBatch]]]) -> None:
        """Hyper-gradient step on each group's coefficients, from the new gradients.

        The hyper-gradient of ``h`` is ``-sum <g, lr du/dh>`` over the group's tensors. Plain tensors'
        dot products are summed on the device: small tensors are concatenated (one dot per
        coefficient for all of them), large ones on CPU read in cache-sized pieces, each piece of the
        gradient serving all coefficients while in cache. FSDP2 (DTensor) parameters' dot products
        are computed on the local shards and summed over the shards in one collective. All values
        reach the host in one synchronization per device.
        """
        # (group index, coefficient) -> partial sums of <g, lr du/dh> (0-d tensors)
        parts: dict[tuple[int, str], list[torch.Tensor]] = {}
        dots: list[torch.Tensor] = []  # DTensor parameters: one dot per tensor, summed over shards
        likes: list[torch.Tensor] = []
        owners: list[tuple[int, str]] = []
        for gi, (group, batches) in enumerate(prepared):
            learned = self._learned(group)
            if not learned:
                continue
            for batch in batches:
                small: list[tuple[torch.Tensor, dict[str, Any]]] = []
                for param, grad, state in zip(batch.params, batch.grads, batch.states, strict=True):
                    if state["step"] <= 1:
                        continue
                    keys = [h for h in learned if f"d_{h}" in state]
                    if not keys:
                        continue
                    if is_dtensor(param):
                        flats = [local(state[f"d_{h}"]).reshape(-1) for h in keys]
                        dots += _dots(local(grad).reshape(-1), flats)
                        likes += [param] * len(keys)
                        owners += [(gi, h) for h in keys]
                    elif grad.numel() <= SMALL_DOT_NUMEL and len(keys) == len(learned):
                        small.append((grad, state))
                    else:
                        flats = [state[f"d_{h}"].reshape(-1) for h in keys]
                        for h, dot in zip(keys, _dots(grad.reshape(-1), flats), strict=True):
                            parts.setdefault((gi, h), []).append(dot)
                if small:
                    flat_grads = torch.cat([g.reshape(-1) for g, _ in small])
                    for h in learned:
                        flat = torch.cat([s[f"d_{h}"].reshape(-1) for _, s in small])
                        parts.setdefault((gi, h), []).append(torch.vdot(flat_grads, flat))
        if dots:
            for key, dot in zip(owners, all_reduce_many(dots, likes, "sum"), strict=True):
                parts.setdefault(key, []).append(dot)
        summed: list[tuple[int, str]] = []
        sums: list[torch.Tensor] = []
        for key, values in parts.items():
            by_device: dict[torch.device, list[torch.Tensor]] = {}
            for x in values:
                by_device.setdefault(x.device, []).append(x)
            for same in by_device.values():
                summed.append(key)
                sums.append(torch.stack(same).to(torch.float64).sum())
        hypergrads: list[dict[str, float]] = [
            dict.fromkeys(self._learned(group), 0.0) for group, _ in prepared
        ]
        for (gi, h), value in zip(summed, _host_values(sums), strict=True):
            hypergrads[gi][h] -= value
        if self.partition is not None:
            # ZeRO: this rank holds a share of each group's tensors; the hyper-gradients are sums
            # over all of them. Every rank has every group (ZeRO keeps empty ones) with the same
            # coefficients, so the vector has the same layout everywhere (one collective per step).
            flat = [value for hypergrad in hypergrads for value in hypergrad.values()]
            if flat:
                partial = torch.tensor(flat, dtype=torch.float64)
                summed_flat = iter(partition_sum(partial, self.partition).tolist())
                for hypergrad in hypergrads:
                    for h in hypergrad:
                        hypergrad[h] = next(summed_flat)
        for (group, _), hypergrad in zip(prepared, hypergrads, strict=True):
            clip = group["hypergrad_clip"]
            for h, k in self._hyper_lrs(group).items():
                value = group[h]
                if k > 0 and not math.isnan(hypergrad[h]):
                    # NaN (a dot product of huge gradients that overflowed to inf - inf): no
                    # hyper-step for this coefficient; +-inf is clipped as any large value
                    value = value - k * min(max(hypergrad[h], -clip), clip)
                lo, hi = RANGES[h]
                group[h] = min(max(value, lo), hi)
        # The derivatives du/dh of the learned coefficients start at zero, here rather than in
        # _update, which on CPU sees chunks and pieces of the batch (state dicts of views).
        for group, batches in prepared:
            learned = self._learned(group)
            for batch in batches:
                for s, p in zip(batch.states, batch.params, strict=True):
                    for h in learned:
                        if f"d_{h}" not in s:
                            s[f"d_{h}"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _update(self, group: dict[str, Any], batch: TensorBatch, foreach: bool) -> None:
        learned = self._learned(group)
        lion = bool(group["lion"])
        keys = self.state_keys + (("lion_exp_avg",) if lion else ())
        lists = [batch.params, batch.grads, *(batch.state(k) for k in keys)]
        lists += [batch.state(f"d_{h}") for h in learned]
        if any_dtensor(batch.params):  # elementwise: run on the local shards
            lists = [local_list(ts) for ts in lists]
        n = len(keys) + 2
        _multi_tensor_mada(
            *lists[:7],
            lists[7] if lion else None,
            dict(zip(learned, lists[n:], strict=True)),
            batch.steps,
            lr=float(group["lr"]),
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            gamma=group["gamma"] if lion else 1.0,
            lion_betas=group["lion_betas"],
            **{h: group[h] for h in COEFFICIENTS},
        )

    def _elementwise_update(
        self, group: Mapping[str, Any]
    ) -> tuple[Callable[..., None], tuple[str | None, ...]]:
        """``_single_tensor_mada`` with its states: Lion's momentum (``None`` without ``lion``), then
        ``lr du/dh`` of each coefficient in ``DERIVATIVES`` order (``None`` where it is not learned);
        the learned coefficients themselves reach it as step scalars (``_step_scalars``), after the
        hyper-step of ``_before_update``."""
        learned = self._learned(group)
        keys = (
            *self.state_keys,
            "lion_exp_avg" if group["lion"] else None,
            *(f"d_{h}" if h in learned else None for h in DERIVATIVES),
        )
        return _single_tensor_mada, keys

    def _step_scalars(self, group: Mapping[str, Any], step: int) -> dict[str, Any]:
        """The keyword arguments of ``_single_tensor_mada`` at step ``step``: this step's (learned)
        coefficients, as floats (an int coefficient would be a static value of the compiled graph),
        their bias corrections and the derivatives of ``1 / bc`` with respect to ``beta1``, ``beta2``."""
        lr = float(group["lr"])
        beta1, beta2 = float(group["beta1"]), float(group["beta2"])
        bc1, bc2 = bias_correction(beta1, step), bias_correction(beta2, step)
        lion_beta1, lion_beta2 = group["lion_betas"]
        return dict(
            # the reference's start of n (n_0 = g_1^2) as a weight, not a flag: the fused step
            # compiles one graph for every step, not a second at step 2
            first_weight=1.0 if step == 1 else 0.0,
            lr=lr,
            beta1=beta1,
            beta2=beta2,
            beta3=float(group["beta3"]),
            rho=float(group["rho"]),
            c=float(group["c"]),
            gamma=float(group["gamma"]) if group["lion"] else 1.0,
            lion_beta1=float(lion_beta1),
            lion_beta2=float(lion_beta2),
            eps=float(group["eps"]),
            decay=lr * group["weight_decay"],
            mean_weight=1.0 / step,  # v_avg += (v - v_avg) / t
            bias_correction1=bc1,
            bias_correction2=bc2,
            # d(1 / bc)/d beta = t beta^(t - 1) / bc^2 (bc = 1 - beta^t): d(m / bc1)/d beta1 is
            # (m_old - g) / bc1 + m * bias_derivative1
            bias_derivative1=step * beta1 ** (step - 1) / bc1**2,
            bias_derivative2=step * beta2 ** (step - 1) / bc2**2,
        )


def _dots(flat: torch.Tensor, others: list[torch.Tensor]) -> list[torch.Tensor]:
    """``[<flat, x> for x in others]``; on CPU a long ``flat`` is read in cache-sized pieces once."""
    size = flat.numel()
    if flat.device.type != "cpu" or size <= CPU_BLOCK_NUMEL:
        return [torch.vdot(flat, x) for x in others]
    parts: list[list[torch.Tensor]] = [[] for _ in others]
    for start in range(0, size, CPU_BLOCK_NUMEL):
        piece = flat[start : start + CPU_BLOCK_NUMEL]
        for part, x in zip(parts, others, strict=True):
            part.append(torch.vdot(piece, x[start : start + CPU_BLOCK_NUMEL]))
    return [torch.stack(part).sum() for part in parts]


def _host_values(xs: list[torch.Tensor]) -> list[float]:
    """The values of 0-d tensors, read in one synchronization per device."""
    by_device: dict[torch.device, list[int]] = {}
    for i, x in enumerate(xs):
        by_device.setdefault(x.device, []).append(i)
    values = [0.0] * len(xs)
    for indices in by_device.values():
        read = torch.stack([xs[i] for i in indices]).tolist()
        for i, value in zip(indices, read, strict=True):
            values[i] = value
    return values


def _clip_bound(dtype: torch.dtype) -> float:
    """The clip of the gradients, ``2**(e/2 - 7)`` for a dtype whose largest value is about ``2**e``:
    ``2**57`` (1.4e17) in float32, ``2**505`` (1.0e152) in float64 (the working dtypes: float32 for
    bf16/fp16 parameters).

    With ``|g| <= bound`` (and so the stored ``|g_prev| <= bound``) every square and product of the
    update stays finite with a margin: ``|d| <= 2 bound``, ``|g_hat| < 3 bound``, ``g_hat^2``, the Yogi
    term, ``v``, ``v_avg`` and their mix at most ``18 bound^2`` (``bound^2`` is about ``max / 2**14``),
    ``v / (1 - b2^t)`` at most 100 times that (0.11 of the largest value), the Adan product
    ``d g_hat`` of the ``beta3`` derivative at most ``6 bound^2``.
    """
    return math.ldexp(1.0, math.frexp(torch.finfo(dtype).max)[1] // 2 - 7)


def _clipped(grads: list[torch.Tensor]) -> list[torch.Tensor]:
    """New tensors ``clamp(g, -bound, bound)`` (see :func:`_clip_bound`): identical to ``g`` below
    the bound, so ordinary steps are bit-identical; the gradients themselves are not written.

    One pass per tensor (``torch.clamp``) for a batch of one tensor (a piece of a cache-blocked CPU
    update) and for large tensors; the small ones of a longer batch in two foreach ops (torch has no
    two-sided foreach clamp), which costs less than a call per tensor.
    """
    bound = _clip_bound(grads[0].dtype)
    out = list(grads)
    rest: list[int] = []
    for i, g in enumerate(grads):
        if len(grads) == 1 or g.numel() >= CLIP_LARGE_NUMEL:
            out[i] = g.clamp(-bound, bound)
        else:
            rest.append(i)
    if rest:
        part = torch._foreach_clamp_min([grads[i] for i in rest], -bound)
        torch._foreach_clamp_max_(part, bound)
        for i, clipped in zip(rest, part, strict=True):
            out[i] = clipped
    return out


def _single_tensor_mada(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    exp_avg_sq_means: list[torch.Tensor],
    diff_avgs: list[torch.Tensor],
    prev_grads: list[torch.Tensor],
    lion_exp_avgs: list[torch.Tensor] | None,
    d_beta1: list[torch.Tensor] | None,
    d_beta2: list[torch.Tensor] | None,
    d_beta3: list[torch.Tensor] | None,
    d_rho: list[torch.Tensor] | None,
    d_c: list[torch.Tensor] | None,
    d_gamma: list[torch.Tensor] | None,
    *,
    first_weight: Scalar,
    lr: Scalar,
    beta1: Scalar,
    beta2: Scalar,
    beta3: Scalar,
    rho: Scalar,
    c: Scalar,
    gamma: Scalar,
    lion_beta1: Scalar,
    lion_beta2: Scalar,
    eps: Scalar,
    decay: Scalar,
    mean_weight: Scalar,
    bias_correction1: Scalar,
    bias_correction2: Scalar,
    bias_derivative1: Scalar,
    bias_derivative2: Scalar,
) -> None:
    """The reference: the equations of the module docstring, one tensor at a time; also the fused
    update (the scalars then 0-dim tensors, see ``MADA._step_scalars``).

    ``d_h[i]`` receives ``lr du/dh`` of tensor ``i`` for each learned coefficient ``h`` (``None``:
    not learned). ``lion_exp_avgs`` is ``None`` without the Lion interpolation (then ``gamma`` is 1).
    ``decay`` is ``lr * weight_decay``, ``mean_weight`` is ``1 / t``, ``bias_derivative1`` is
    ``t beta1^(t - 1) / bc1^2`` (likewise for ``beta2``).
    """
    named = zip(DERIVATIVES, (d_beta1, d_beta2, d_beta3, d_rho, d_c, d_gamma), strict=True)
    derivs = {h: out for h, out in named if out is not None}
    bc1, bc2 = bias_correction1, bias_correction2
    for i, param in enumerate(params):
        bound = _clip_bound(grads[i].dtype)
        g = grads[i].clamp(-bound, bound)  # huge gradients: see _clip_bound
        m, v, v_avg, n, g_prev = (
            exp_avgs[i],
            exp_avg_sqs[i],
            exp_avg_sq_means[i],
            diff_avgs[i],
            prev_grads[i],
        )
        m_old, v_old = m.clone(), v.clone()
        # the reference's start of n: g^2 at the first step (exact: both terms are finite, g is
        # clipped), n before this step's update at the others (eagerly, a plain copy then)
        if is_zero(first_weight):
            n_old = n.clone()
        else:
            n_old = n * (1 - first_weight) + (g * g) * first_weight
        d = g - g_prev
        g_hat = g + beta3 * d
        g_hat_sq = g_hat * g_hat
        sign = torch.sign(g_hat_sq - v_old)
        yogi = v_old + g_hat_sq * sign
        g2 = c * g_hat_sq + (1 - c) * yogi
        m.mul_(beta1).add_(g, alpha=scalar_arg(1 - beta1))
        v.mul_(beta2).add_(g2, alpha=scalar_arg(1 - beta2))
        n.copy_(n_old.mul(beta3).add_(d, alpha=scalar_arg(1 - beta3)))
        v_avg.add_(v - v_avg, alpha=scalar_arg(mean_weight))
        g_prev.copy_(g)
        v_mix = rho * v + (1 - rho) * v_avg
        root = (v_mix / bc2).sqrt()
        denom = root + eps
        numer = m / bc1 + beta3 * n
        update = numer / denom
        lion_dir = None
        if lion_exp_avgs is not None:
            # gdtuo.Meta: m_lion = b2 m_lion + (1 - b2) g, then sign(b1 m_lion + (1 - b1) g) with the
            # new m_lion (Lion's own code interpolates with the old one)
            m_lion = lion_exp_avgs[i]
            m_lion.lerp_(g, 1 - lion_beta2)
            lion_dir = m_lion.clone().lerp_(g, 1 - lion_beta1).sign_()
        if derivs:
            # u = N / D with D = sqrt(V) + eps:  du = dN / D - N / D^2 * dV / (2 sqrt(V))
            inv_d = denom.reciprocal()
            dv_coef = torch.where(
                root > 0, -numer * inv_d * inv_d / (2 * root), torch.zeros_like(root)
            )
            for h, out in derivs.items():
                if h == "gamma":  # the step is gamma u + (1 - gamma) sign(lion direction)
                    assert lion_dir is not None  # gamma is learned only with lion=True
                    out[i].copy_(update).sub_(lion_dir).mul_(lr)
                    continue
                if h == "beta1":
                    du = inv_d * ((m_old - g) / bc1 + m * bias_derivative1)
                elif h == "beta2":
                    du = dv_coef * (rho * (v_old - g2) / bc2 + v_mix * bias_derivative2)
                elif h == "beta3":
                    du = inv_d * (n + beta3 * (n_old - d)) + dv_coef * (
                        rho * (1 - beta2) / bc2 * 2 * g_hat * (c + (1 - c) * sign) * d
                    )
                elif h == "rho":
                    du = dv_coef * ((v - v_avg) / bc2)
                else:  # c
                    du = dv_coef * (rho * (1 - beta2) / bc2 * (g_hat_sq - yogi))
                out[i].copy_(du).mul_(lr * gamma)  # d x_{t+1} / dh = -lr gamma du/dh
        decoupled_weight_decay_(param, decay)
        if lion_dir is None:
            param.add_(update, alpha=scalar_arg(-lr))
        else:
            param.add_(update, alpha=scalar_arg(-lr * gamma))
            param.add_(lion_dir, alpha=scalar_arg(-lr * (1 - gamma)))


def _multi_tensor_mada(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    exp_avg_sq_means: list[torch.Tensor],
    diff_avgs: list[torch.Tensor],
    prev_grads: list[torch.Tensor],
    lion_exp_avgs: list[torch.Tensor] | None,
    derivs: dict[str, list[torch.Tensor]],
    steps: list[int],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    beta3: float,
    rho: float,
    c: float,
    gamma: float,
    lion_betas: tuple[float, float],
    eps: float,
    weight_decay: float,
) -> None:
    """The same update with ``torch._foreach_*`` ops; temporaries only for the terms in use.

    Frozen coefficients at their usual values cost nothing: ``c = 1`` skips the Yogi terms,
    ``beta3 = 0`` the Adan terms (``n`` is then ``d`` itself), ``rho`` in {0, 1} the mix, a frozen
    ``gamma = 1`` Lion's direction. With learned coefficients the derivative states are written by
    ``zero_`` + ``addcmul_`` terms whose per-tensor scalars carry the bias corrections, ``lr gamma``
    and the constant factors. On CPU the base class runs this over cache-sized chunks (``cache_blocking``).
    """
    if not params:
        return
    g, m, v, v_avg, n, g_prev = (
        _clipped(grads),  # huge gradients: see _clip_bound
        exp_avgs,
        exp_avg_sqs,
        exp_avg_sq_means,
        diff_avgs,
        prev_grads,
    )
    learned = set(derivs)
    bc1 = [bias_correction(beta1, t) for t in steps]
    bc2 = [bias_correction(beta2, t) for t in steps]

    # d = g - g_prev ; n = b3 n + (1 - b3) d ; g_hat = g + b3 d
    if beta3 != 0:
        first = [i for i, t in enumerate(steps) if t == 1]
        if first:  # the reference's start of n: n_0 = g_1^2 (no effect when b3 = 0)
            n_first, g_first = [n[i] for i in first], [g[i] for i in first]
            torch._foreach_copy_(n_first, g_first)
            torch._foreach_mul_(n_first, g_first)
        d = torch._foreach_sub(g, g_prev)
        g_hat = torch._foreach_add(g, d, alpha=beta3)
        torch._foreach_lerp_(n, d, 1 - beta3)
    else:  # n = d: no temporary
        torch._foreach_copy_(n, g)
        torch._foreach_sub_(n, g_prev)
        d, g_hat = n, g  # read only from here on
    # g2 = c g_hat^2 + (1 - c) yogi, yogi = v + g_hat^2 sign(g_hat^2 - v); materialized only if needed
    g_hat_sq = g2 = c_term = sign = None
    if c != 1 or learned & {"c", "beta2"}:
        g_hat_sq = g2 = torch._foreach_mul(g_hat, g_hat)
    if c != 1 or "c" in learned:
        diff = torch._foreach_sub(g_hat_sq, v)
        if "c" in learned:
            sign = torch._foreach_sign(diff)
            torch._foreach_addcmul_(diff, g_hat_sq, sign, -1.0)
            c_term = diff  # g_hat^2 - yogi
        else:
            sign = diff
            torch._foreach_sign_(sign)
        if c != 1:
            g2 = torch._foreach_addcmul(v, g_hat_sq, sign)  # yogi
            torch._foreach_lerp_(g2, g_hat_sq, c)
    if g2 is None:
        torch._foreach_mul_(v, beta2)
        torch._foreach_addcmul_(v, g_hat, g_hat, 1 - beta2)
    else:
        torch._foreach_lerp_(v, g2, 1 - beta2)
    torch._foreach_lerp_(m, g, 1 - beta1)
    torch._foreach_lerp_(v_avg, v, scalars([1.0 / t for t in steps]))
    lion_dir = None
    if lion_exp_avgs is not None:  # gdtuo.Meta: sign(b1 m_lion + (1 - b1) g) with the new m_lion
        lion_beta1, lion_beta2 = lion_betas
        torch._foreach_lerp_(lion_exp_avgs, g, 1 - lion_beta2)
        if gamma != 1 or "gamma" in learned:
            lion_dir = torch._foreach_lerp(lion_exp_avgs, g, 1 - lion_beta1)
            torch._foreach_sign_(lion_dir)
    torch._foreach_copy_(g_prev, g)
    if rho == 1:
        v_mix = v
    elif rho == 0:
        v_mix = v_avg
    else:
        v_mix = torch._foreach_lerp(v_avg, v, rho)
    decoupled_weight_decay_(params, lr * weight_decay)
    if lion_dir is not None and gamma != 1:
        torch._foreach_add_(params, lion_dir, alpha=-lr * (1 - gamma))
    lr_g = lr * gamma  # the adaptive step and its derivatives carry gamma

    if not learned:  # sqrt(v/bc2) + eps == (sqrt(v) + eps sqrt(bc2)) / sqrt(bc2), as in Adam
        bc2_sqrt = [math.sqrt(b) for b in bc2]
        denom = torch._foreach_sqrt(v_mix)
        torch._foreach_add_(denom, scalars([eps * b for b in bc2_sqrt]))
        numer = m
        if beta3 != 0:  # m / bc1 + b3 n == (m + b3 bc1 n) / bc1
            numer = torch._foreach_mul(n, scalars([beta3 * b for b in bc1]))
            torch._foreach_add_(numer, m)
        step = [-lr_g * s / b for s, b in zip(bc2_sqrt, bc1, strict=True)]
        torch._foreach_addcdiv_(params, numer, denom, scalars(step))
        return

    # u = N / D, N = m / bc1 + b3 n, D = sqrt(V) + eps, V = v_mix / bc2
    root = torch._foreach_div(v_mix, scalars(bc2))
    torch._foreach_sqrt_(root)
    inv_d = torch._foreach_add(root, eps)
    dvq: list[torch.Tensor] = []  # 1 / (D sqrt(V)) where sqrt(V) > 0, else 0; later u / (D sqrt(V))
    if learned & {"beta2", "beta3", "rho", "c"}:
        q = torch._foreach_mul(root, inv_d)
        # A positive q is at least the smallest subnormal (sqrt(V) >= its square root), so the clamp
        # changes only q = 0, where the mask sign(sqrt(V)) is 0 too.
        info = torch.finfo(q[0].dtype)
        torch._foreach_clamp_min_(q, info.tiny * info.eps)
        dvq = root
        torch._foreach_sign_(dvq)
        torch._foreach_div_(dvq, q)
        del q
    torch._foreach_reciprocal_(inv_d)
    u = torch._foreach_div(m, scalars(bc1))
    if beta3 != 0:
        torch._foreach_add_(u, n, alpha=beta3)
    torch._foreach_mul_(u, inv_d)
    torch._foreach_add_(params, u, alpha=-lr_g)
    if "gamma" in learned:  # lr (u - sign(lion direction))
        out = derivs["gamma"]
        torch._foreach_copy_(out, u)
        torch._foreach_sub_(out, lion_dir)
        torch._foreach_mul_(out, lr)
    del lion_dir
    if dvq:
        torch._foreach_mul_(dvq, u)  # N / (D^2 sqrt(V)) = -2 x the coefficient of dV in du
    del u
    half = -0.5 * lr_g  # derivs[h] = lr gamma du/dh
    k1 = [t * beta1 ** (t - 1) / b**2 for t, b in zip(steps, bc1, strict=True)]
    k2 = [t * beta2 ** (t - 1) / b**2 for t, b in zip(steps, bc2, strict=True)]

    if "beta1" in learned:
        # inv_d ((m_old - g) / bc1 + k1 m), with m_old - g = (m - g) / b1 (b1 >= 0.01 after projection)
        out = derivs["beta1"]
        torch._foreach_zero_(out)
        a = [1.0 / (beta1 * b) for b in bc1]
        torch._foreach_addcmul_(
            out, inv_d, m, scalars([lr_g * (x + k) for x, k in zip(a, k1, strict=True)])
        )
        torch._foreach_addcmul_(out, inv_d, g, scalars([-lr_g * x for x in a]))
    if "beta2" in learned:
        # dv (rho (v_old - g2) / bc2 + k2 v_mix), with v_old - g2 = (v - g2) / b2 (b2 > 0.5)
        out = derivs["beta2"]
        torch._foreach_zero_(out)
        a = [rho / (beta2 * b) for b in bc2]
        if rho != 0:
            both = rho == 1  # v_mix is v
            torch._foreach_addcmul_(
                out,
                dvq,
                v,
                scalars([half * (x + (k if both else 0.0)) for x, k in zip(a, k2, strict=True)]),
            )
            torch._foreach_addcmul_(out, dvq, g2, scalars([-half * x for x in a]))
        if rho != 1:
            torch._foreach_addcmul_(out, dvq, v_mix, scalars([half * k for k in k2]))
    del g2, g_hat_sq
    if "rho" in learned:  # dv (v - v_avg) / bc2
        out = derivs["rho"]
        torch._foreach_zero_(out)
        torch._foreach_addcmul_(out, dvq, v, scalars([half / b for b in bc2]))
        torch._foreach_addcmul_(out, dvq, v_avg, scalars([-half / b for b in bc2]))
    if "c" in learned:  # dv rho (1 - b2) / bc2 (g_hat^2 - yogi)
        out = derivs["c"]
        torch._foreach_zero_(out)
        scale = [half * rho * (1 - beta2) / b for b in bc2]
        torch._foreach_addcmul_(out, dvq, c_term, scalars(scale))
    del c_term
    if "beta3" in learned:
        # inv_d (n + b3 (n_old - d)) + dv rho (1 - b2) / bc2 2 g_hat (c + (1 - c) sign) d, where
        # b3 (n_old - d) = n - d exactly (n = b3 n_old + (1 - b3) d; n is d when b3 = 0)
        out = derivs["beta3"]
        torch._foreach_zero_(out)
        if beta3 != 0:
            torch._foreach_addcmul_(out, inv_d, n, 2.0 * lr_g)
            torch._foreach_addcmul_(out, inv_d, d, -lr_g)
        else:
            torch._foreach_addcmul_(out, inv_d, n, lr_g)
        if rho != 0:
            if beta3 != 0:  # d is a temporary
                torch._foreach_mul_(d, g_hat)
            else:  # d is the state n
                d = torch._foreach_mul(d, g_hat)
            if c != 1:  # c + (1 - c) sign
                torch._foreach_mul_(sign, 1 - c)
                torch._foreach_add_(sign, c)
                torch._foreach_mul_(d, sign)
            scale = [half * rho * (1 - beta2) * 2 / b for b in bc2]
            torch._foreach_addcmul_(out, dvq, d, scalars(scale))


class AVGrad(AdaptimOptimizer):
    """AVGrad (Ozkara et al., 2024): AMSGrad with the maximum of ``v`` replaced by its time-average.

    Elementwise, with no statistic across tensors: exact under DDP, FSDP2 and ZeRO as it is.

    Args:
        params: parameters or param groups.
        lr: learning rate.
        betas: EMA coefficients of the gradient and of its square.
        eps: added to ``sqrt(v_avg_hat)``.
        weight_decay: decoupled, ``p *= 1 - lr * weight_decay``.
        maximize: ascend instead of descend.
        foreach: ``None`` or ``True`` for the multi-tensor path, ``False`` for the per-tensor one.
        fused: ``True`` runs the update as one compiled kernel per piece of parameters (C++ on CPU,
            Triton on CUDA; docs/fused.md); ``None`` and ``False``: the eager path.
    """

    supports_dtensor = True  # tests/test_fsdp2.py
    # elementwise: on CPU the update runs over cache-sized chunks, large tensors cut into flat pieces
    # (core/base.py; bit-identical to one pass), so its ~10 passes, the overflow guard of the running
    # mean included, read and write a chunk held in cache
    cache_blocking = True
    splits_tensors = True

    hyperparameter_rules = {"betas": TupleOf((UNIT_HALF_OPEN, UNIT_HALF_OPEN))}
    state_keys = ("exp_avg", "exp_avg_sq", "exp_avg_sq_mean")
    quantized_states = {"exp_avg": True, "exp_avg_sq": False, "exp_avg_sq_mean": False}

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.99),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
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
            maximize=maximize,
            foreach=foreach,
            fused=fused,
            state_bits=state_bits,
        )
        super().__init__(params, defaults)

    def _update(self, group: dict[str, Any], batch: TensorBatch, foreach: bool) -> None:
        beta1, beta2 = group["betas"]
        _multi_tensor_avgrad(
            *batch.local("exp_avg", "exp_avg_sq", "exp_avg_sq_mean"),  # FSDP2: the local shards
            batch.steps,
            lr=float(group["lr"]),
            beta1=beta1,
            beta2=beta2,
            eps=group["eps"],
            weight_decay=group["weight_decay"],
        )

    def _elementwise_update(
        self, group: Mapping[str, Any]
    ) -> tuple[Callable[..., None], tuple[str | None, ...]]:
        return _single_tensor_avgrad, self.state_keys

    def _step_scalars(self, group: Mapping[str, Any], step: int) -> dict[str, Any]:
        lr = float(group["lr"])
        beta1, beta2 = group["betas"]
        return dict(
            lr=lr,
            beta1=beta1,
            beta2=beta2,
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            mean_weight=1.0 / step,  # v_avg += (v - v_avg) / t
            bias_correction2=bias_correction(beta2, step),
            step_size=lr / bias_correction(beta1, step),
        )


def _running_mean_(means: list[torch.Tensor], values: list[torch.Tensor], steps: list[int]) -> None:
    """``mean += (v - mean) / t`` (``torch._foreach_lerp_``), such that an overflowed ``v`` gives
    an inf mean, not NaN.

    With ``|g|`` beyond about ``1e19`` (float32) ``g^2`` overflows and ``v`` is inf; its mean must be
    inf too, so that the coordinate stands still (``m / inf = 0``), as in ``torch.optim.Adam``. Two
    places would give ``inf - inf = NaN``: a mean that is already inf (kept finite before the
    update: the clamp changes no finite value), and lerp's form for weights ``>= 0.5`` (``t <= 2``),
    ``end - (end - self) (1 - w)``, for any inf ``end`` (those few tensors: NaN, which only an inf
    ``v`` produces here, set to inf). Finite values get exactly the lerp they had.
    """
    torch._foreach_clamp_max_(means, torch.finfo(means[0].dtype).max)
    torch._foreach_lerp_(means, values, scalars([1.0 / t for t in steps]))
    for mean, t in zip(means, steps, strict=True):
        if t <= 2:
            mean.nan_to_num_(nan=math.inf, posinf=math.inf)


def _single_tensor_avgrad(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    means: list[torch.Tensor],
    *,
    lr: Scalar,
    beta1: Scalar,
    beta2: Scalar,
    eps: Scalar,
    weight_decay: Scalar,
    mean_weight: Scalar,
    bias_correction2: Scalar,
    step_size: Scalar,
) -> None:
    for i, param in enumerate(params):
        grad = grads[i]
        exp_avgs[i].lerp_(grad, 1 - beta1)
        exp_avg_sqs[i].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        # a v that overflowed (g^2 beyond the dtype's range) is inf and so must be its mean, not
        # NaN from inf - inf: the mean is kept finite before it moves (see _running_mean_)
        means[i].clamp_max_(torch.finfo(means[i].dtype).max)
        means[i].add_(exp_avg_sqs[i] - means[i], alpha=mean_weight)  # mean of v_1 .. v_t
        denom = (means[i] / bias_correction2).sqrt_().add_(eps)
        decoupled_weight_decay_(param, lr * weight_decay)
        param.addcdiv_(exp_avgs[i], denom, value=-step_size)


def _multi_tensor_avgrad(
    params, grads, exp_avgs, exp_avg_sqs, means, steps, *, lr, beta1, beta2, eps, weight_decay
):
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
    _running_mean_(means, exp_avg_sqs, steps)
    bc2_sqrt = [math.sqrt(bias_correction(beta2, t)) for t in steps]
    denom = torch._foreach_sqrt(means)
    torch._foreach_add_(denom, scalars([eps * b for b in bc2_sqrt]))
    decoupled_weight_decay_(params, lr * weight_decay)
    step_size = [-lr * b / bias_correction(beta1, t) for b, t in zip(bc2_sqrt, steps, strict=True)]
    torch._foreach_addcdiv_(params, exp_avgs, denom, scalars(step_size))


register(
    OptimInfo(
        name="mada",
        verified="frozen at Adam = torch.optim.AdamW; hyper-gradient vs autograd and finite "
        "differences; Lion interpolation vs steps by hand (2x2)",
        cls=MADA,
        paper=PAPER,
        paper_url=PAPER_URL,
        reference=REFERENCE,
        description="Interpolation of Adam, AVGrad, Yogi and Adan (and, with lion=True, Lion) "
        "whose coefficients are learned online by hyper-gradient descent.",
        tuned_lr={"quadratic": 0.05, "rosenbrock": 0.03},
    )
)
register(
    OptimInfo(
        name="avgrad",
        verified="transcription of the authors' Meta class (rho=0)",
        cls=AVGrad,
        paper=PAPER,
        paper_url=PAPER_URL,
        reference=REFERENCE + " (Meta with rho=0, beta3=0, c=1, no hyper-gradient)",
        description="AMSGrad with the running maximum of v replaced by its running time-average.",
        tuned_lr={"quadratic": 0.05, "rosenbrock": 0.1},
    )
)

"""Adafactor: adaptive learning rates with sublinear memory cost.

Paper: Shazeer & Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost", ICML 2018,
arXiv:1804.04235 (Alg. 4 for matrices, Alg. 5 for vectors; Sec. 5 update clipping, Sec. 7 beta1).
Reference code: ``torch.optim.Adafactor`` (torch 2.13, ``torch/optim/_adafactor.py``), which the default
mode matches step for step; the paper's eps placement, manual learning rate and first-moment modes
match ``transformers.optimization.Adafactor`` (transformers 5.23.0, itself a port of tensor2tensor's
``adafactor.py``) (tests/optimizers/test_adafactor.py).

Update (per parameter X with gradient G, step t >= 1)::

    b2_t    = 1 - t^beta2_decay                               # increasing decay, b2_1 = 0
    rho_t   = min(lr, 1/sqrt(t))       if relative_step        # lr = 1e-2 is the paper's cap
              (min(lr, 1e-6 t, 1/sqrt(t)) with warmup_init)
              lr                       otherwise
    alpha_t = max(eps2, RMS(X_{t-1})) * rho_t  if scale_parameter else rho_t
    X *= 1 - lr * wd                                          # (1 - alpha_t * wd if decay_by_step_size)
    n x m (last two dims; leading dims are batch dims):
        R = b2_t R + (1 - b2_t) mean_cols(G^2 [+ eps1])        # n row statistics
        C = b2_t C + (1 - b2_t) mean_rows(G^2 [+ eps1])        # m column statistics
        V = R C / mean(R)                                      # rank-1 reconstruction (Alg. 4)
    vectors / scalars:
        V = b2_t V + (1 - b2_t) (G^2 [+ eps1])                 # Alg. 5
    U     = G / sqrt(V)
    U_hat = U / max(1, RMS(U) / d)                            # update clipping, d = 1
    beta1 is None:  X -= alpha_t U_hat
    else:           M = beta1 M + (1 - beta1) alpha_t U_hat;  X -= M

Means instead of the paper's sums give the same ``V`` (the factor cancels) and keep magnitudes small.

Paper vs code, and what we follow:

* eps1 (``eps1_placement``): the paper adds ``eps1 = 1e-30`` to ``G^2`` before the row/column
  statistics (``"add"``, as tensor2tensor and transformers). torch.optim.Adafactor instead leaves the
  statistics alone and clamps: ``mean(R) >= eps1`` and ``V >= eps1^2``, with ``eps1=None`` meaning
  ``torch.finfo(dtype).eps`` (``"clamp"``, our default, so ``Adafactor()`` equals
  ``torch.optim.Adafactor()``). In ``"add"`` mode ``eps1=None`` means the paper's 1e-30. For bf16/fp16
  parameters the update runs in fp32, so ``None`` resolves to fp32's eps (torch uses the parameter
  dtype's eps there).
* Learning rate: the paper has no ``lr``; its relative step is ``min(1e-2, 1/sqrt(t))``. torch keeps
  relative steps always on and uses ``lr`` as the cap (default 1e-2 = the paper). ``relative_step=False``
  makes ``lr`` the step size ``rho_t`` itself (transformers' manual mode, e.g. with a schedule), and
  ``scale_parameter=False`` drops the parameter-RMS factor.
* Weight decay: the paper has none. torch decays ``X *= 1 - lr * wd`` with the raw ``lr`` (even when it
  is only the relative-step cap); transformers uses ``1 - alpha_t * wd`` (``decay_by_step_size=True``).
* beta1 (Sec. 7, optional): the EMA is taken of the already scaled and clipped update
  ``alpha_t U_hat`` (tensor2tensor and transformers); ``None`` (default) keeps no first moment.
* ``warmup_init`` (tensor2tensor/transformers): ``rho_t = min(1e-6 t, 1/sqrt(t))`` (also capped by
  ``lr``, which changes nothing for ``lr >= 1e-2``); needs ``relative_step``.

The update is not elementwise (RMS over the tensor, factored statistics): no complex parameters.
Zero-size parameters have no RMS; they are left unchanged.

``fused=True`` compiles the per-tensor update (``_single_tensor_adafactor``, also the ``foreach=False``
path) over whole tensors (core/fused.py): matrices and vectors keep different states, so each kind
runs on its own, and ``RMS(X)``, ``RMS(U)``, ``alpha_t`` and the clip factor stay 0-dim tensors (no
read-back, no branch on their values). The multi-tensor path (the default, and what
``torch.compile(opt.step)`` would trace) reads them back in one sync per batch, so its step runs
eagerly under ``torch.compile`` (``traceable_update = False``).

FSDP2 (DTensor parameters): the update runs on the local shards and equals a single process's up to
rounding (tests/test_fsdp2.py). A rank holds whole rows of a parameter sharded along its
second-to-last dimension (FSDP2's ``Shard(0)`` of a matrix): its row statistics are local, the column
statistics and ``mean(R)`` are summed over the ranks (``adaptim.core.distributed.dim_groups``); a
parameter sharded along its last dimension is the converse; shards along a leading (batch) dimension
need no reduction. ``R`` and ``C`` are DTensors sharded like the parameter's rows and columns
(``reduced_zeros``). Means divide by global sizes, and ``RMS(X)``, ``RMS(U)`` sum squares over all
shards. A rank whose shard is empty takes part in every collective. Each kind of reduction costs one
collective per set of process groups and batch on the multi-tensor path, one per tensor on the
per-tensor path. ``fused=True`` refuses DTensor parameters (before the step changes anything): the
compiled update would see the local shards only, without the sums over the others.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

import torch

from adaptim.core.base import AdaptimOptimizer, TensorBatch
from adaptim.core.distributed import (
    all_reduce_,
    all_reduce_grouped,
    any_dtensor,
    dim_groups,
    drop_empty,
    local_list,
    local_states,
    reduced_zeros,
    shard_groups,
    sharded_norms,
)
from adaptim.core.functional import (
    Scalar,
    clamp_finite_,
    computed_once,
    decoupled_weight_decay_,
    is_zero,
    scalars,
)
from adaptim.core.fused import run_elementwise
from adaptim.core.validation import (
    BOOL,
    NONNEGATIVE,
    UNIT_HALF_OPEN,
    Interval,
    OneOf,
    Optional,
    TupleOf,
)
from adaptim.registry import OptimInfo, register

__all__ = ["Adafactor"]

_PAPER_EPS1 = 1e-30


class Adafactor(AdaptimOptimizer):
    """Adafactor (Shazeer & Stern, 2018); defaults equal ``torch.optim.Adafactor()``.

    Args:
        params: parameters or param groups.
        lr: with ``relative_step`` the cap of the relative step size ``min(lr, 1/sqrt(t))`` (the paper's
            1e-2); otherwise the step size itself. Also the weight-decay factor (torch's convention).
        beta2_decay: exponent of the increasing second-moment decay ``b2_t = 1 - t^beta2_decay`` (<= 0).
        eps: ``(eps1, eps2)``. eps1 regularizes the second moment (see ``eps1_placement``; ``None`` =
            dtype eps for ``"clamp"``, 1e-30 for ``"add"``); eps2 is the floor of the parameter RMS.
        d: update clipping threshold (>= 1).
        weight_decay: decoupled decay ``X *= 1 - lr * weight_decay``.
        beta1: first-moment coefficient, or ``None`` for no first moment (the paper's default).
        relative_step: use ``rho_t = min(lr, 1/sqrt(t))`` instead of ``rho_t = lr``.
        scale_parameter: multiply the step by ``max(eps2, RMS(X))``.
        warmup_init: relative step ``min(1e-6 t, 1/sqrt(t))`` (needs ``relative_step``).
        eps1_placement: ``"clamp"`` (torch) or ``"add"`` (paper, transformers: ``G^2 + eps1``).
        decay_by_step_size: multiply ``weight_decay`` by ``alpha_t`` instead of ``lr`` (transformers).
        maximize: ascend instead of descend.
        foreach: ``None`` or ``True`` for the multi-tensor path, ``False`` for the per-tensor one.
        fused: ``True`` runs the update compiled over whole tensors (C++ on CPU, Triton on CUDA;
            docs/fused.md; not for DTensor parameters); ``None`` and ``False``: the eager path.
    """

    elementwise = False
    #: the multi-tensor update reads each tensor's RMS and clip factor back to the host
    traceable_update = False
    fused_on_shards = False  # its reductions over each tensor would see one shard
    # the factored row and column statistics stay in the working dtype (they are small)
    quantized_states = {"exp_avg": True, "variance": False}
    supports_dtensor = True  # tests/test_fsdp2.py
    #: with ``beta1`` the first moment holds already lr-scaled updates (tensor2tensor, transformers),
    #: so the weights keep moving while it decays after the lr drops to 0
    moves_at_zero_lr: ClassVar[bool] = True
    hyperparameter_rules = {
        "beta2_decay": Interval(high=0.0),
        "eps": TupleOf((Optional(NONNEGATIVE), NONNEGATIVE)),
        "d": Interval(1.0),
        "beta1": Optional(UNIT_HALF_OPEN),
        "relative_step": BOOL,
        "scale_parameter": BOOL,
        "warmup_init": BOOL,
        "eps1_placement": OneOf(("clamp", "add")),
        "decay_by_step_size": BOOL,
    }

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-2,
        beta2_decay: float = -0.8,
        eps: tuple[float | None, float] = (None, 1e-3),
        d: float = 1.0,
        weight_decay: float = 0.0,
        *,
        beta1: float | None = None,
        relative_step: bool = True,
        scale_parameter: bool = True,
        warmup_init: bool = False,
        eps1_placement: str = "clamp",
        decay_by_step_size: bool = False,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        state_bits: int = 32,
    ) -> None:
        defaults = dict(
            lr=lr,
            beta2_decay=beta2_decay,
            eps=eps,
            d=d,
            weight_decay=weight_decay,
            beta1=beta1,
            relative_step=relative_step,
            scale_parameter=scale_parameter,
            warmup_init=warmup_init,
            eps1_placement=eps1_placement,
            decay_by_step_size=decay_by_step_size,
            maximize=maximize,
            foreach=foreach,
            fused=fused,
            state_bits=state_bits,
        )
        super().__init__(params, defaults)

    def _validate_relations(self, values: Any) -> None:
        if values.get("warmup_init") and not values.get("relative_step", True):
            raise ValueError(
                f"{type(self).__name__}: warmup_init=True needs relative_step=True "
                "(the warm-up is a schedule of the relative step size)"
            )

    def _init_state(
        self, group: Mapping[str, Any], param: torch.Tensor, state: dict[str, Any]
    ) -> None:
        if param.dim() >= 2:
            # Row statistics keep the last dim as 1, column statistics the second-to-last (as torch);
            # under FSDP2 they are sharded like the rows / columns of the parameter's shard.
            state["row_var"] = reduced_zeros(param, -1)
            state["col_var"] = reduced_zeros(param, -2)
        else:
            state["variance"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        if group["beta1"] is not None:
            state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)

    def _prepare_group(self, group: dict[str, Any]) -> list[TensorBatch]:
        batches = super()._prepare_group(group)
        if group["beta1"] is not None:  # beta1 switched on mid-run: its first moment starts at 0
            for batch in batches:
                for s, p in zip(batch.states, batch.params, strict=True):
                    if "exp_avg" not in s:
                        s["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return batches

    def _update(self, group: dict[str, Any], batch: TensorBatch, foreach: bool) -> None:
        eps1, eps2 = group["eps"]
        placement = group["eps1_placement"]
        if eps1 is None:
            eps1 = torch.finfo(batch.params[0].dtype).eps if placement == "clamp" else _PAPER_EPS1
        params, grads, states, likes = batch.params, batch.grads, batch.states, None
        if any_dtensor(params):  # FSDP2: run on the local shards, reduce over the others
            likes, params, grads = params, local_list(params), local_list(grads)
            states = local_states(states)
        _multi_tensor_adafactor(
            params,
            grads,
            states,
            batch.steps,
            likes=likes,
            lr=float(group["lr"]),
            beta2_decay=group["beta2_decay"],
            eps1=float(eps1),
            eps2=float(eps2),
            d=group["d"],
            weight_decay=group["weight_decay"],
            beta1=group["beta1"],
            relative_step=group["relative_step"],
            scale_parameter=group["scale_parameter"],
            warmup_init=group["warmup_init"],
            add_eps1=placement == "add",
            decay_by_step_size=group["decay_by_step_size"],
        )

    def _elementwise_update(
        self, group: Mapping[str, Any]
    ) -> tuple[Callable[..., None], tuple[str | None, ...]]:
        # matrices keep row_var and col_var, vectors variance: _run_elementwise passes None for the
        # states a kind of tensor lacks
        exp_avg = "exp_avg" if group["beta1"] is not None else None
        return _single_tensor_adafactor, ("row_var", "col_var", "variance", exp_avg)

    def _run_elementwise(self, group: dict[str, Any], batch: TensorBatch, *, fused: bool) -> None:
        _run_by_kind(self, group, batch, fused=fused)

    def _step_scalars(self, group: Mapping[str, Any], step: int) -> dict[str, Any]:
        """The keyword arguments of ``_single_tensor_adafactor`` at step ``step``: ``1 - b2_t``, the
        relative step size ``rho_t``, and the hyperparameters as floats (``eps1=None``: the working
        dtype's eps, resolved in the update)."""
        lr = float(group["lr"])
        eps1, eps2 = group["eps"]
        add_eps1 = group["eps1_placement"] == "add"
        if eps1 is None and add_eps1:
            eps1 = _PAPER_EPS1
        beta1 = group["beta1"]
        return dict(
            lr=lr,
            one_minus_beta2=float(step ** group["beta2_decay"]),
            rho=_relative_step_size(lr, step, group["relative_step"], group["warmup_init"]),
            eps1=None if eps1 is None else float(eps1),
            eps2=float(eps2),
            d=float(group["d"]),
            weight_decay=float(group["weight_decay"]),
            beta1=0.0 if beta1 is None else float(beta1),
            scale_parameter=group["scale_parameter"],
            add_eps1=add_eps1,
            decay_by_step_size=group["decay_by_step_size"],
        )


def _run_by_kind(
    opt: AdaptimOptimizer, group: dict[str, Any], batch: TensorBatch, *, fused: bool
) -> None:
    """Run the per-tensor update over the batch's factored tensors (two dimensions or more), then
    over the others: each kind keeps other states, and a state the kind lacks is passed as ``None``.
    Under FSDP2 (eager only: ``fused_on_shards = False``) the DTensors are passed last, as
    ``likes``, for the sums over shards; both kinds are global, so every rank runs the same
    collectives in the same order."""
    fn, keys = opt._elementwise_update(group)
    sharded = any_dtensor(batch.params)
    for factored in (True, False):
        idx = [i for i, p in enumerate(batch.params) if (p.dim() >= 2) == factored]
        if not idx:
            continue
        part = batch
        if len(idx) < len(batch.params):
            part = TensorBatch(
                [batch.params[i] for i in idx],
                [batch.grads[i] for i in idx],
                [batch.states[i] for i in idx],
            )
        kind_keys = [k if k is not None and k in part.states[0] else None for k in keys]
        lists = part.local(*[k for k in kind_keys if k is not None])
        states = iter(lists[2:])
        tensors = [lists[0], lists[1], *(None if k is None else next(states) for k in kind_keys)]
        if sharded:
            tensors.append(part.params)
        run_elementwise(
            fn,
            tensors,
            part.steps,
            lambda step: opt._step_scalars(group, step),
            fused=fused,
            split=False,
            plans=opt.__dict__.setdefault("_fused_plans", {}),
        )


def _relative_step_size(lr: float, step: int, relative_step: bool, warmup_init: bool) -> float:
    """``rho_t``: the relative step size (Sec. 8 of the paper) or the manual ``lr``."""
    if not relative_step:
        return lr
    rho = min(lr, 1.0 / math.sqrt(step))
    return min(rho, 1e-6 * step) if warmup_init else rho


def _rms(x: torch.Tensor, like: torch.Tensor | None = None) -> torch.Tensor:
    """RMS of ``x`` as a 0-dim float64 tensor (no read-back to the host); under FSDP2 ``x`` is a
    local shard of (or shaped like) ``like``: the global RMS. ``math.sqrt`` of a size (a symbolic
    int when compiled), not of a float scalar."""
    if like is None:
        return x.norm(2).double() / math.sqrt(x.numel())
    sq = all_reduce_(x.norm(2).square(), shard_groups(like))
    return sq.sqrt().double() / math.sqrt(like.numel())


def _mean_(x: torch.Tensor, dim: int, like: torch.Tensor | None) -> torch.Tensor:
    """``x.mean(dim, keepdim=True)``; under FSDP2 (``x`` a local shard shaped like ``like``'s) the
    sum is taken over the ranks that hold other parts of ``dim`` and divided by its global size."""
    if like is None:
        return x.mean(dim=dim, keepdim=True)
    total = x.sum(dim=dim, keepdim=True).div_(like.shape[dim])
    return all_reduce_(total, dim_groups(like, (dim,)))


def _amin(x: torch.Tensor) -> torch.Tensor:
    """``min(x)``; ``inf`` for the empty local shard of a DTensor (plain empty tensors are skipped)."""
    if x.numel() == 0:
        return torch.full((), math.inf, dtype=x.dtype, device=x.device)
    return x.amin()


def _single_tensor_adafactor(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    row_vars: list[torch.Tensor] | None,
    col_vars: list[torch.Tensor] | None,
    variances: list[torch.Tensor] | None,
    exp_avgs: list[torch.Tensor] | None,
    likes: list[torch.Tensor] | None = None,
    *,
    lr: Scalar,
    one_minus_beta2: Scalar,
    rho: Scalar,
    eps1: Scalar | None,
    eps2: Scalar,
    d: Scalar,
    weight_decay: Scalar,
    beta1: Scalar,
    scale_parameter: bool,
    add_eps1: bool,
    decay_by_step_size: bool,
) -> None:
    """The per-tensor reference, also the fused update (over whole tensors, one kind at a time:
    ``row_vars``/``col_vars`` for tensors of two dimensions or more, ``variances`` for the others,
    ``None`` where absent; ``exp_avgs`` is ``None`` without ``beta1``). ``one_minus_beta2 = t^beta2_decay``,
    ``rho`` is ``rho_t``, ``eps1=None`` the working dtype's eps. ``RMS(X)``, ``RMS(U)`` and
    ``alpha_t`` stay 0-dim tensors: no read-back, no branch on their values. ``likes`` (eager only):
    the DTensors whose local shards the lists hold, for the sums over shards (FSDP2); a rank with an
    empty shard takes part in every collective."""
    for i, (param, grad) in enumerate(zip(params, grads, strict=True)):
        like = None if likes is None else likes[i]
        if (param if like is None else like).numel() == 0:  # no RMS: left unchanged
            continue
        eps = torch.finfo(param.dtype).eps if eps1 is None else eps1
        alpha = _rms(param, like).clamp(min=eps2) * rho if scale_parameter else rho
        if not is_zero(weight_decay):
            decoupled_weight_decay_(param, (alpha if decay_by_step_size else lr) * weight_decay)
        grad_sq = grad * grad
        if add_eps1:
            grad_sq.add_(eps)
        if param.dim() >= 2:
            assert row_vars is not None and col_vars is not None
            row_var, col_var = row_vars[i], col_vars[i]
            # Clamped: a lerp towards inf is NaN (gradients of 1e30 square to inf in float32);
            # mean(R) is summed in float64, since R may then be near the largest float32.
            row_var.lerp_(clamp_finite_(_mean_(grad_sq, -1, like)), one_minus_beta2)
            col_var.lerp_(clamp_finite_(_mean_(grad_sq, -2, like)), one_minus_beta2)
            row_mean = _mean_(row_var.double(), -2, like).to(row_var.dtype)
            if not add_eps1:
                row_mean = row_mean.clamp(min=eps)
            # rsqrt(V) = rsqrt(R_i / mean(R)) rsqrt(C_j), as in the multi-tensor update: V = R C^T /
            # mean(R) is never formed, and the two factors are computed once, not per element of
            # G when compiled (computed_once). The clamp V >= eps^2 is rsqrt(V) <= 1 / eps.
            row_factor = computed_once((row_var / row_mean).rsqrt())
            inv_sqrt_var = row_factor * computed_once(col_var.rsqrt())
            if not add_eps1:
                inv_sqrt_var.clamp_(max=1 / eps)
        else:
            assert variances is not None
            variance = variances[i]
            variance.lerp_(clamp_finite_(grad_sq), one_minus_beta2)
            var = variance.clone() if add_eps1 else variance.clamp(min=eps * eps)
            inv_sqrt_var = var.rsqrt_()
        update = inv_sqrt_var.mul_(grad)
        # U_hat = U / max(1, RMS(U) / d), and the step alpha_t U_hat, as one factor
        scale = computed_once(alpha / (_rms(update, like) / d).clamp(min=1.0))
        if exp_avgs is None:
            param.sub_(update.mul_(scale))
        else:
            exp_avg = exp_avgs[i]
            # p -= the new m, written from the old m: read back after its update, the new m was
            # stored in full once more by the compiled update (a temporary the size of p)
            param.sub_(exp_avg * beta1 + update * ((1 - beta1) * scale))
            exp_avg.mul_(beta1).add_(update.mul_((1 - beta1) * scale))


def _multi_tensor_adafactor(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    states: list[dict[str, Any]],
    steps: list[int],
    *,
    likes: list[torch.Tensor] | None = None,
    lr: float,
    beta2_decay: float,
    eps1: float,
    eps2: float,
    d: float,
    weight_decay: float,
    beta1: float | None,
    relative_step: bool,
    scale_parameter: bool,
    warmup_init: bool,
    add_eps1: bool,
    decay_by_step_size: bool,
) -> None:
    # Under FSDP2 (``likes``: the DTensors whose local shards the lists hold) sizes are global and
    # every mean and norm is reduced over the shards: one collective per kind of reduction and set
    # of process groups, the same on every rank (also on one whose shard is empty).
    params, grads, states, steps, likes = drop_empty(
        params if likes is None else likes, params, grads, states, steps, likes
    )
    if not params:
        return
    shapes = [p.shape for p in (params if likes is None else likes)]
    n = len(params)
    one_minus_beta2 = [s**beta2_decay for s in steps]
    rho = [_relative_step_size(lr, s, relative_step, warmup_init) for s in steps]

    # The unscaled update U = G / sqrt(V) is built without touching the parameters. For matrices it is
    # kept as U = row_factor * W with W = G * col_factor (broadcast): V = a_i c_j is never materialized,
    # RMS(U) comes from the row norms of W, and the row factor is applied by the final addcmul.
    work: list[torch.Tensor | None] = [None] * n  # U, or W for factored matrices
    row_factor: list[torch.Tensor | None] = [None] * n
    sq_norm: list[torch.Tensor | None] = [None] * n  # ||U||^2 of factored matrices
    vec = [i for i in range(n) if params[i].dim() < 2]
    if vec:
        v_states = [states[i]["variance"] for i in vec]
        v_grads = [grads[i] for i in vec]
        omb2 = [one_minus_beta2[i] for i in vec]
        torch._foreach_mul_(v_states, scalars([1.0 - w for w in omb2]))
        torch._foreach_addcmul_(v_states, v_grads, v_grads, scalars(omb2))
        if add_eps1:
            torch._foreach_add_(v_states, scalars([w * eps1 for w in omb2]))
            v_upd = torch._foreach_rsqrt(v_states)
        else:
            v_upd = torch._foreach_clamp_min(v_states, eps1 * eps1)
            torch._foreach_rsqrt_(v_upd)
        torch._foreach_mul_(v_upd, v_grads)
        for i, u in zip(vec, v_upd, strict=True):
            work[i] = u
    mat = [i for i in range(n) if params[i].dim() >= 2]
    if mat:
        rows = [states[i]["row_var"] for i in mat]
        cols = [states[i]["col_var"] for i in mat]
        m_grads = [grads[i] for i in mat]
        m_shapes = [shapes[i] for i in mat]
        # Row/column sums of G^2 from one squared temporary per tensor (freed at once): a norm
        # along dim -2 strides across rows and costs ~15x one pass over G on CPU.
        row_means, col_means = [], []
        for g in m_grads:
            grad_sq = g.square()
            row_means.append(grad_sq.sum(dim=-1, keepdim=True))
            col_means.append(grad_sq.sum(dim=-2, keepdim=True))
            del grad_sq
        torch._foreach_div_(row_means, [float(shape[-1]) for shape in m_shapes])
        torch._foreach_div_(col_means, [float(shape[-2]) for shape in m_shapes])
        if likes is not None:  # row sums over the ranks holding other columns, and vice versa
            m_likes = [likes[i] for i in mat]
            row_groups = [dim_groups(like, (-1,)) for like in m_likes]
            col_groups = [dim_groups(like, (-2,)) for like in m_likes]
            means = all_reduce_grouped(row_means + col_means, row_groups + col_groups)
            row_means, col_means = means[: len(mat)], means[len(mat) :]
        if add_eps1:
            torch._foreach_add_(row_means, eps1)
            torch._foreach_add_(col_means, eps1)
        clamp_finite_(row_means + col_means)  # a lerp towards inf is NaN
        mat_omb2 = scalars([one_minus_beta2[i] for i in mat])
        torch._foreach_lerp_(rows, row_means, mat_omb2)
        torch._foreach_lerp_(cols, col_means, mat_omb2)
        del row_means, col_means
        # mean(R) summed in float64: R may be near the largest float32 (clamped above)
        if likes is None:
            row_avg = [r.double().mean(dim=-2, keepdim=True) for r in rows]
        else:
            row_avg = [
                r.double().sum(dim=-2, keepdim=True).div_(shape[-2])
                for r, shape in zip(rows, m_shapes, strict=True)
            ]
            row_avg = all_reduce_grouped(row_avg, col_groups)
        row_avg = [a.to(r.dtype) for a, r in zip(row_avg, rows, strict=True)]
        if not add_eps1:
            torch._foreach_clamp_min_(row_avg, eps1)
        scaled_rows = torch._foreach_div(rows, row_avg)  # V = scaled_rows * cols
        # torch clamps V >= eps1^2 elementwise; that clamp is inactive (and the factored form exact)
        # wherever min(scaled_rows) * min(cols) >= eps1^2, which one sync tells for every tensor.
        # Under FSDP2 the test is local (the shard's own rows and columns): either form gives the
        # same U and the same collectives, so ranks may choose differently; an empty shard has no U.
        if add_eps1:
            factored = [True] * len(mat)
        else:
            lows = torch.stack(
                [_amin(r) * _amin(c) for r, c in zip(scaled_rows, cols, strict=True)]
            )
            factored = [low >= eps1 * eps1 for low in lows.tolist()]
        for k, i in enumerate(mat):
            g = m_grads[k]
            if factored[k]:
                w = g * cols[k].rsqrt()
                rf = scaled_rows[k].rsqrt_()
                row_sq = torch.linalg.vector_norm(w, dim=-1, keepdim=True).square_()
                work[i], row_factor[i] = w, rf
                sq_norm[i] = (row_sq * rf.square()).sum()
            else:
                u = torch.matmul(scaled_rows[k], cols[k]).clamp_min_(eps1 * eps1).rsqrt_().mul_(g)
                work[i] = u
    upd: list[torch.Tensor] = work  # type: ignore[assignment]

    # One host sync for every per-tensor scalar: RMS of each parameter and of each update.
    plain = [i for i in range(n) if sq_norm[i] is None]
    norms: list[torch.Tensor] = [torch.zeros(())] * n
    for i, nrm in zip(
        plain, torch._foreach_norm([upd[i] for i in plain]) if plain else [], strict=True
    ):
        norms[i] = nrm
    for i in range(n):
        if sq_norm[i] is not None:
            norms[i] = sq_norm[i].sqrt()  # type: ignore[union-attr]
    if scale_parameter:
        norms = norms + list(torch._foreach_norm(params))
    if likes is not None:  # squares summed over the shards
        norms = sharded_norms(norms, likes + likes if scale_parameter else likes)
    values = torch.stack([x.to(norms[0].dtype) for x in norms]).tolist()
    inv_sqrt_numel = [1.0 / math.sqrt(math.prod(shape)) for shape in shapes]
    clip = [max(1.0, values[i] * inv_sqrt_numel[i] / d) for i in range(n)]
    if scale_parameter:
        alpha = [max(eps2, values[n + i] * inv_sqrt_numel[i]) * rho[i] for i in range(n)]
    else:
        alpha = rho
    if weight_decay:
        factor = [a * weight_decay for a in alpha] if decay_by_step_size else lr * weight_decay
        decoupled_weight_decay_(params, scalars(factor) if isinstance(factor, list) else factor)
    scale = [a / c for a, c in zip(alpha, clip, strict=True)]  # X -= scale * U
    if beta1 is None:
        targets = params
        sign = -1.0
    else:
        targets = [s["exp_avg"] for s in states]
        torch._foreach_mul_(targets, beta1)
        sign = 1.0 - beta1
    if plain:
        plain_upd = [upd[i] for i in plain]
        torch._foreach_mul_(plain_upd, scalars([sign * scale[i] for i in plain]))
        torch._foreach_add_([targets[i] for i in plain], plain_upd)
    for i in range(n):
        if row_factor[i] is not None:
            targets[i].addcmul_(upd[i], row_factor[i].mul_(sign * scale[i]))  # type: ignore[union-attr]
    if beta1 is not None:
        torch._foreach_sub_(params, targets)


register(
    OptimInfo(
        name="adafactor",
        verified="torch.optim.Adafactor (1e-16); transformers Adafactor paper modes (4e-16); "
        "hand-computed steps; FSDP2",
        cls=Adafactor,
        paper="Shazeer & Stern, Adafactor: Adaptive Learning Rates with Sublinear Memory Cost, ICML 2018",
        paper_url="https://arxiv.org/abs/1804.04235",
        reference="torch.optim.Adafactor; transformers.optimization.Adafactor (paper modes)",
        description="Factored second moment (row/column statistics), relative step and update clipping.",
        # Without a first moment Adafactor stalls in Rosenbrock's valley (0.09 from the minimizer
        # after 3000 steps at best); the paper's beta1 = 0.9 mode converges.
        test_kwargs={"beta1": 0.9},
        tuned_lr={"quadratic": 0.1, "rosenbrock": 0.3},
        supports_complex=False,
        has_foreach=True,
    )
)

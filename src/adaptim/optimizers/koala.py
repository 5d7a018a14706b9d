"""KOALA: a Kalman optimization algorithm with loss adaptivity (KOALA-V and KOALA-M).

Paper: Aram Davtyan, Sepehr Sameni, Llukman Cerkezi, Givi Meishvili, Adam Bielski, Paolo Favaro,
"KOALA: A Kalman Optimization Algorithm with Loss Adaptivity", AAAI 2022, arXiv:2107.03331.
Reference code: github.com/Araachie/koala, ``koala.py`` (``VanillaKOALA``, ``MomentumKOALA``) and its use
in ``training_funcs.py``, commit f864580. We follow that code step for step (checked against it out of
tree: tests/optimizers/test_koala.py writes its equations out by hand).

Model: the mini-batch loss is a noisy observation of its target value 0, ``y = L(x) + noise(R)``; the
parameters are the hidden state of a Kalman filter whose covariance is shared by ALL parameters.

KOALA-V (scalar covariance ``P``)::

    predict:  P <- P + q
    update:   R <- alpha_r R + (1 - alpha_r) loss_var          (R starts at 1; fixed if r is given)
              for every tensor l with ||g_l|| >= 1e-9:
                  h_l = g_l + wd p_l ;  S_l = P ||h_l||^2 + R ;  L_l = loss + wd/2 ||p_l||^2
                  p_l -= lr * L_l * P / S_l * g_l              # g_l, not h_l: wd enters the gain only
              P <- P - P^2 * max_l ||h_l||^2 / S_l

KOALA-M (state (p, v) per tensor, F = [[1, 1], [0, a]], 2x2 covariance ``P`` shared by all)::

    predict:  q_w <- 0.9 q_w + 0.1 ||(p_bar - p)_all|| / n_params     (p_bar: EMA 0.9 of p; starts at 0)
              p <- p + v ;  v <- a v ;  P <- F P F^T + diag(q_w, q_v)
    update:   R as above; for every tensor with ||g_l|| >= 1e-9:
                  h_l = g_l + wd p_l ;  S_l = P00 ||h_l||^2 + R ;  L_l = loss + wd/2 ||p_l||^2
                  p_l -= lr L_l P00 / S_l * h_l ;  v_l -= lr L_l P10 / S_l * h_l ;  p_bar_l <- 0.9 p_bar_l + 0.1 p_l
              P <- P - P diag(max_l ||h_l||^2 / S_l, 0) P^T

``loss_var`` is the mean of the squared per-sample losses (``training_funcs.py``), i.e. a second
moment. The Adam-like variant mentioned in the abstract is not in the authors' code and is not
implemented.

Two ways to drive it:

* the authors' interface: ``opt.predict()`` before the forward pass, then after ``backward()``
  ``opt.update(loss_mean, loss_var)``;
* ``opt.step(closure)`` in an ordinary loop: ``predict()``, then the closure (which zeroes the grads,
  computes the loss at the predicted point and calls ``backward()``), then ``update``. The closure
  returns one of: a tuple ``(loss_mean, loss_var)``; a tensor of per-sample losses (then
  ``loss_mean = mean``, ``loss_var = mean of squares``; call backward on its mean yourself); or a
  scalar loss (then ``loss_var = loss^2``, the second moment of a one-sample batch -- the online ``R``
  averages it over steps). ``step()`` without a closure raises ``TypeError``: KOALA cannot step
  without the loss value (except in torch.distributed.checkpoint's state-creating call: no state,
  zero gradients, lr 0, which creates the state and moves nothing).

A gradient KOALA refuses (sparse, or of a complex parameter) only exists after the closure, which
runs after ``predict()``: ``step`` then puts back what ``predict()`` changed, so a refused step
changes nothing. KOALA-M's ``p += v`` and ``v *= a`` cannot be inverted in floating point, so they are
copied beforehand, but only while a trainable tensor has no state yet (the others' gradients passed
the checks before); a stepped tensor whose gradient turns sparse mid-run is not covered.

``maximize`` is refused (``ValueError``). KOALA is not a descent method on the loss but a filter that
drives the observed value to its target 0: ``p -= lr L P / (P ||g||^2 + R) g`` is the same step for
``(L, g)`` and ``(-L, -g)``. It minimizes because losses are non-negative; "maximize f = minimize -f"
would be KOALA on f, which ascends an f <= 0 and descends an f > 0, whatever the flag says. To
maximize f, let the closure return a non-negative loss that is 0 at the optimum (``-f`` for an
``f <= 0``, such as a log-likelihood; ``f_max - f``).

Speed: a tensor's gains depend only on its own norms and the shared scalars (``P``, ``R``, the loss),
so on CPU the multi-tensor ``update`` runs chunk by chunk over about 2 MB of tensors
(``cache_blocking``): the chunk's norms, then its update while it is still in cache. KOALA-M's
``predict`` does the same (drift norms, ``p += v``, ``v *= a``). The shared statistics (``max |h|^2/S``,
the drift) are combined afterwards in a fixed order, so the result is bit-identical to one pass over all
tensors. The norms are read on the host (one synchronization per chunk on CPU, per batch elsewhere):
which tensors move (``||g|| >= 1e-9``) and ``P`` are decided there, as in the reference code. The
per-tensor path (``foreach=False``) and ``fused=True`` run one function per tensor
(``_koala_v_tensors``, ``_koala_m_tensors``; compiled over whole tensors with ``fused=True``, see
docs/fused.md, where it is slower than the eager path on CPU) that decides on the device and
writes each tensor's ``|h|^2/S`` for the host to read once per batch; ``fused=True`` is refused on
FSDP2 shards, whose norms only the multi-tensor path sums over the shards.

Several processes (tests/test_koala_distributed.py). The loss is part of the step (it scales every
gain, and its second moment is the noise ``R``), but a closure returns its own rank's loss. With
``torch.distributed`` initialized and more than one rank, KOALA combines the loss statistics over the
*loss group* (``loss_group``; by default the world group, the data-parallel ranks of DDP, FSDP2 and
ZeRO over DDP) in one all-reduce per step, so every replica takes the step of one process that sees
all ranks' batches: per-sample losses as sums and counts; a scalar loss, a ``(loss, loss_var)`` pair
or ``update(loss, loss_var)`` as means over the ranks (equal batch sizes); a scalar loss's
``loss_var`` is the square of the combined loss, as that one process computes it. Ranks that see the
same data (tensor parallelism, ZeRO without DDP) average equal values. Gradients are not touched: DDP
and FSDP2 average them already. Pass a subgroup to train independent replicas in one job.

* FSDP2 (DTensor parameters): the updates run on the local shards; every per-tensor norm sums its
  squares over the shards (one collective per list of norms), so the Kalman gains, the covariance and
  the drift ``q_w`` are the same on all ranks and equal to a single process's (tests/test_fsdp2.py).
* ZeRO (``ZeroRedundancyOptimizer(params, optimizer_class=VanillaKOALA, ...)`` builds KOALA on each
  rank's share of the tensors): per-tensor norms need nothing (tensors are whole), ``max |h|^2/S`` is
  maximized and KOALA-M's drift and parameter count are summed over the partition, and KOALA-M's
  ``predict()`` broadcasts every share through ZeRO before the closure runs (ZeRO itself syncs only
  after the step): one all-reduce (KOALA-V) or three and a parameter broadcast (KOALA-M) more per
  step. Step through ``zero.step(closure)``; a consolidated ZeRO checkpoint loads into ZeRO or a
  plain KOALA.

Checkpoints keep torch's format (``state`` keyed by parameter; ``torch.distributed.checkpoint``,
Trainer and Lightning assume it): the shared ``P``, ``R`` (and ``q_w``; KOALA-M's ``P`` as four floats
``P00 .. P11``) are a dict of Python floats under ``"koala"`` in the state of the first parameter that
requires a gradient (DCP drops the others' states), whose own state is created with it. Floats, so
torch's casting of state tensors to the parameter's dtype leaves them exact. Checkpoints and pickles of
the previous format (a top-level ``state["koala"]``, KOALA-M's ``P`` a tensor) still load.

Differences from the reference code, none of which changes the update: the hyperparameters are
validated; state lives in ``self.state`` per parameter (``velocity``, ``param_avg``); per-parameter
state is created lazily, for tensors that have a gradient; the learning rate lives in the param
groups, so schedulers drive it (the authors' script sets it by hand each step). One deliberate
difference where the reference breaks: a norm whose sum of squares overflows the tensor's dtype (fp32
gradients of ~1e19 and more) is recomputed in float64, where the reference gets ``inf / inf`` and a
NaN covariance.
"""

from __future__ import annotations

import math
import sys
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, NamedTuple

import torch

from adaptim.core.base import (
    COMPLEX,
    LOW_PRECISION,
    AdaptimOptimizer,
    TensorBatch,
    run_eagerly,
)
from adaptim.core.distributed import (
    all_reduce_many,
    any_dtensor,
    local,
    local_list,
    partition_sum,
)
from adaptim.core.functional import is_zero, l2_weight_decay, scalar_arg
from adaptim.core.fused import run_elementwise
from adaptim.core.state_precision import absmax_key
from adaptim.core.validation import POSITIVE, UNIT_CLOSED, Interval, Optional
from adaptim.registry import OptimInfo, register

__all__ = ["MomentumKOALA", "VanillaKOALA", "loss_statistics"]

GRAD_EPS = 1e-9  # tensors whose gradient norm is below this are skipped (reference code)
#: the key of the shared state (P, R, q_w) in its carrier parameter's entry of ``state_dict()``
SHARED = "koala"


def _norm_tensors(
    tensors: list[torch.Tensor],
    likes: list[torch.Tensor] | None = None,
    dtype: torch.dtype | None = None,
) -> list[torch.Tensor]:
    """Per-tensor L2 norms as 0-dim tensors (accumulated in ``dtype``, default the tensors'); with
    ``likes`` (DTensors whose local shards ``tensors`` are), the squares are summed over the shards in
    one collective."""
    if not tensors:
        return []
    norms = list(torch._foreach_norm(tensors, dtype=dtype))
    if likes is not None and any_dtensor(likes):
        norms = all_reduce_many(torch._foreach_mul(norms, norms), likes)
        torch._foreach_sqrt_(norms)
    return norms


def _norms_of_many(
    lists: list[list[torch.Tensor]], likes: list[torch.Tensor] | None = None
) -> list[list[float]]:
    """:func:`_norm_tensors` of several non-empty lists of tensors, as floats, in one host
    synchronization.

    A sum of squares that overflows the tensors' dtype (fp32 entries beyond ~1e19, e.g. gradients of
    1e30) gives an infinite norm, then ``inf / inf`` in ``max |h|^2 / S`` and a NaN covariance (as in
    the reference code). Those norms alone are recomputed in float64 (always accumulating in float64
    would make every norm ~5x slower on CPU); the result is the norm, and the step stays finite."""
    norms = [_norm_tensors(tensors, likes) for tensors in lists]
    flat = torch.stack([n for ns in norms for n in ns]).double().tolist()
    out, start = [], 0
    for tensors, ns in zip(lists, norms, strict=True):
        values = flat[start : start + len(ns)]
        start += len(ns)
        over = [i for i, v in enumerate(values) if math.isinf(v)]  # the same on every rank: reduced
        if over:
            redo = _norm_tensors(
                [tensors[i] for i in over],
                None if likes is None else [likes[i] for i in over],
                torch.float64,
            )
            for i, v in zip(over, torch.stack(redo).tolist(), strict=True):
                values[i] = v
        out.append(values)
    return out


def _add_scaled_(targets: list[torch.Tensor], xs: list[torch.Tensor], factors: list[float]) -> None:
    """``targets[i] += factors[i] * xs[i]`` for every ``i``.

    On CPU as ``addcmul`` with a 0-dim one: one pass, no temporary (``torch._foreach_add_`` takes a
    single ``alpha``); elsewhere ``torch._foreach_mul`` then ``torch._foreach_add_`` (fused kernels,
    where a list of 0-dim tensors would fall back to one kernel per tensor). Both round ``factor * x``
    and then add (bit-identical on CPU in our checks), unlike ``add_(x, alpha=factor)``, which fuses.
    """
    if targets[0].device.type == "cpu":
        one = torch.ones((), dtype=xs[0].dtype)
        torch._foreach_addcmul_(targets, xs, [one] * len(xs), factors)
    else:
        torch._foreach_add_(targets, torch._foreach_mul(xs, factors))


def _local(
    batch: TensorBatch, *keys: str
) -> tuple[list[torch.Tensor] | None, list[list[torch.Tensor]]]:
    """``(likes, batch.local(*keys))``: the DTensors whose local shards the lists hold, under FSDP2."""
    return (batch.params if any_dtensor(batch.params) else None), batch.local(*keys)


class _Observation(NamedTuple):
    """What one step observed: the loss, its second moment ``loss_var``, and how to combine it
    with other ranks' observations (:meth:`_KOALA._reduce`)."""

    mean: float
    second: float
    weight: float  # the number of per-sample losses; 1 for a scalar loss or a (loss, loss_var) pair
    scalar: bool  # a scalar loss: loss_var is the square of the (combined) loss


def _observation(out: Any) -> _Observation:
    """The observation in what a closure returned; see the module docstring."""
    if isinstance(out, tuple | list):
        if len(out) != 2:
            raise ValueError(
                f"a KOALA closure returns (loss_mean, loss_var); got {len(out)} values"
            )
        return _Observation(float(out[0]), float(out[1]), 1.0, False)
    if not isinstance(out, torch.Tensor):
        raise TypeError(
            f"a KOALA closure must return a loss tensor or (loss, loss_var); got {type(out)}"
        )
    out = out.detach()
    if out.numel() == 1:
        value = float(out)
        return _Observation(value, value * value, 1.0, True)
    return _Observation(
        float(out.mean()), float(out.double().pow(2).mean()), float(out.numel()), False
    )


def loss_statistics(out: Any) -> tuple[float, float]:
    """``(loss_mean, loss_var)`` from what a closure returned (this process's batch only); see the
    module docstring."""
    observed = _observation(out)
    return observed.mean, observed.second


def _maximize_error(name: str) -> ValueError:
    return ValueError(
        f"{name}: invalid maximize=True; KOALA drives the loss it observes to its target 0 and takes "
        "the same step for (loss, gradient) and (-loss, -gradient), so no flag can make it ascend. "
        "To maximize f, let the closure return a non-negative loss that is 0 at the optimum (-f "
        "for an f <= 0 such as a log-likelihood, or f_max - f)"
    )


class _KOALA(AdaptimOptimizer):
    """Shared parts: the closure-driven ``step``, the loss statistics and the shared state."""

    elementwise = False
    supports_dtensor = True  # tests/test_fsdp2.py
    supports_maximize = False  # see the module docstring: the step is invariant to the loss's sign
    #: each tensor's gain depends on its own norms and the shared scalars only, so on CPU the
    #: multi-tensor update (and KOALA-M's predict) runs chunk by chunk: norms, then the update of the
    #: chunk while it is in cache; the shared statistics (max |h|^2/S, the drift) are combined after
    cache_blocking = True
    requires_closure: ClassVar[bool] = True
    #: the Kalman filter runs on Python floats read back from the device every step
    traceable_update = False
    #: max |h|^2/S (and KOALA-M's drift) span all tensors: combined over a ZeRO partition
    global_statistics = True
    #: the per-tensor measurement update reduces over each tensor (its norms), so fused=True
    #: compiles it over whole tensors; on FSDP2 shards those norms would be a shard's, so fused=True
    #: is refused there (the multi-tensor update sums them over the shards)
    splits_tensors = False
    fused_on_shards = False

    def __init__(
        self, params: Iterable[Any], defaults: dict[str, Any], loss_group: Any = None
    ) -> None:
        super().__init__(params, defaults)
        self._loss_group = loss_group
        #: the ZeroRedundancyOptimizer building this one on its rank's share, if any (weakly)
        self._zero = _constructing_zero()
        #: the shared state of an optimizer without parameters (a ZeRO rank with an empty share)
        self._unsaved: dict[str, Any] | None = None

    def _validate_relations(self, values: Mapping[str, Any]) -> None:
        if values.get("maximize"):
            raise _maximize_error(type(self).__name__)

    # -- the shared state, kept in torch's format ---------------------------------------------------
    #
    # ``state`` stays keyed by parameters (torch.distributed.checkpoint, Trainer and Lightning assume
    # it): P, R (and q_w) are a dict of floats under ``"koala"`` in the entry of the *carrier*, the
    # first parameter that requires a gradient (DCP drops the others' entries). Floats, so that
    # torch's casting of state tensors to the parameter's dtype and device leaves them exact. The
    # carrier's entry always has its own state too ("step", ...), created with the shared state:
    # the base class creates an entry's state only when the entry is empty.

    def _carrier(self) -> tuple[dict[str, Any], torch.Tensor] | None:
        """``(group, parameter)`` of the carrier; ``None`` without parameters."""
        first = None
        for group in self.param_groups:
            for p in group["params"]:
                if p.requires_grad:
                    return group, p
                if first is None:
                    first = (group, p)
        return first

    def _holder(self) -> torch.Tensor | None:
        """The parameter whose entry holds the shared state, if any."""
        return next((p for p, s in self.state.items() if SHARED in s), None)

    def _global(self, create: bool = True) -> dict[str, Any] | None:
        """The shared state, in the carrier's entry: created there, or moved there when the carrier
        changed (a frozen first layer) or a load put it elsewhere (ZeRO, another partition)."""
        carrier = self._carrier()
        if carrier is None:
            if self._unsaved is None and create:
                self._unsaved = self._init_global()
            return self._unsaved
        group, param = carrier
        entry = self.state.get(param)
        if entry is None or SHARED not in entry:
            holder = self._holder()
            if holder is None and not create:
                return None
            shared = self.state[holder].pop(SHARED) if holder is not None else self._init_global()
            entry = self.state[param]
            entry[SHARED] = shared
        if "step" not in entry:  # the carrier's own state, as the base class would create it
            working = torch.view_as_real(param) if param.dtype in COMPLEX else param
            working = working.detach()
            entry["step"] = 0
            self._init_state(
                group, working.float() if working.dtype in LOW_PRECISION else working, entry
            )
        return entry[SHARED]

    def _init_global(self) -> dict[str, Any]:  # pragma: no cover - interface
        raise NotImplementedError

    def _upgrade(self, shared: Mapping[str, Any]) -> dict[str, Any]:
        """A shared state of the previous format (Python floats, KOALA-M's P a 2x2 tensor) in
        today's (floats only)."""
        return {k: v.item() if isinstance(v, torch.Tensor) else v for k, v in shared.items()}

    def state_dict(self) -> dict[str, Any]:
        """torch's format; the shared state (moved to the carrier, if it is not there) as a copy."""
        self._global(create=False)
        saved = super().state_dict()
        for key, entry in saved["state"].items():
            if SHARED in entry:
                saved["state"][key] = {**entry, SHARED: dict(entry[SHARED])}
        return saved

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict of :meth:`state_dict`'s format, or of the format before the shared
        state moved into a parameter's entry (a top-level ``state["koala"]``)."""
        for group in state_dict.get("param_groups", []):
            if group.get("maximize"):
                raise ValueError(
                    f"{type(self).__name__}.load_state_dict: the state dict has maximize=True, "
                    "which KOALA no longer accepts (it took it as minimizing the negated loss, "
                    "the same step as minimizing the loss); let the closure return the negated "
                    "objective and set 'maximize' to False in the state dict's param_groups"
                )
        state = dict(state_dict["state"])
        old = state.pop(SHARED, None)
        if old is not None:  # the previous format: on the first saved entry (moved on first use)
            key = state_dict["param_groups"][0]["params"][0]
            state[key] = {**state.get(key, {}), SHARED: self._upgrade(old)}
        holders = [k for k, entry in state.items() if SHARED in entry]
        for key in holders[1:]:  # a consolidated ZeRO checkpoint has one per rank, all equal
            state[key] = {k: v for k, v in state[key].items() if k != SHARED}
        super().load_state_dict({**state_dict, "state": state})
        self._unsaved = None
        self._global(create=False)  # in the carrier's entry, with the carrier's own state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_loss_group", None)  # not pickled: a copy uses the default
        self.__dict__.setdefault("_zero", None)
        self.__dict__.setdefault("_unsaved", None)
        if SHARED in self.state:  # pickled in the previous format (moved on first use)
            shared = self._upgrade(self.state.pop(SHARED))
            carrier = self._carrier()
            if carrier is not None:
                self.state[carrier[1]][SHARED] = shared
                self._global(create=False)

    def _snapshot(self) -> list[tuple[torch.Tensor, dict[str, Any] | None]]:
        """The entries that ``predict()`` may change beyond tensors it moves in place (the carrier's,
        where the shared state is created or moved to, and its holder's), as they are now."""
        carrier = self._carrier()
        param = carrier[1] if carrier is not None else None
        entry = self.state.get(param) if param is not None else None
        holder = param if entry is not None and SHARED in entry else self._holder()
        params = {id(p): p for p in (param, holder) if p is not None}
        out = []
        for p in params.values():
            entry = self.state.get(p)
            if entry is not None and SHARED in entry:
                entry = {**entry, SHARED: dict(entry[SHARED])}
            out.append((p, None if entry is None else dict(entry)))
        return out

    def _restore(self, snapshot: list[tuple[torch.Tensor, dict[str, Any] | None]]) -> None:
        for p, entry in snapshot:
            if entry is None:
                self.state.pop(p, None)
            else:
                self.state[p] = entry

    # -- the step ---------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """``predict()``, the closure (loss and gradients at the predicted point), ``update()``.

        The gradients only exist after the closure, which runs at the point ``predict()`` moved
        to; a refused gradient (sparse, or of a complex parameter) or closure result puts back
        what ``predict()`` changed."""
        if torch.compiler.is_compiling():  # see traceable_update
            return run_eagerly(self.step, closure)
        if closure is None:
            self._check_gradients()
            if self._creates_state_for_dcp():
                return None
            raise TypeError(
                f"{type(self).__name__}.step() needs a closure that computes the loss, calls "
                "backward() and returns the loss (or (loss, loss_var), or per-sample losses); or call "
                "predict() before the forward pass and update(loss, loss_var) after backward()"
            )
        snapshot = self._snapshot()
        moved = self._copies_before_predict()
        self.predict()
        with torch.enable_grad():
            out = closure()
        try:
            self._check_gradients()
            observed = _observation(out)
        except (TypeError, ValueError):
            self._restore(snapshot)
            self._put_back(moved)
            raise
        self._measure(*self._reduce(observed))
        return out

    @torch.no_grad()
    def update(self, loss: float | torch.Tensor, loss_var: float | torch.Tensor) -> None:
        """Measurement update, after ``backward()``, with the mini-batch loss and its second moment.

        Under ``torch.distributed`` both are averaged over the loss group (see the module
        docstring), so every rank's batch must have the same size."""
        self._check_gradients()
        self._measure(*self._reduce(_Observation(float(loss), float(loss_var), 1.0, False)))

    def _measure(self, loss: float, loss_var: float) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def _copies_before_predict(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``(tensor, copy)`` of what ``predict()`` changes in place beyond the shared state."""
        return []

    def _put_back(self, copies: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        if copies:
            torch._foreach_copy_([t for t, _ in copies], [c for _, c in copies])

    def _check_gradients(self) -> None:
        super()._check_gradients()
        zero = self._zero_owner()
        if zero is None:
            return
        # ZeRO: this optimizer checks its rank's share only, but every rank must refuse together
        # (the others would wait in the next collective forever); the whole model ran backward
        # here, so all gradients are on this rank
        for i, p in enumerate(p for group in zero.param_groups for p in group["params"]):
            grad = p.grad
            if grad is not None and (grad.layout is not torch.strided or p.dtype in COMPLEX):
                kind = "complex parameters" if p.dtype in COMPLEX else "sparse gradients"
                raise TypeError(
                    f"{type(self).__name__} does not support {kind} (parameter {i} of the "
                    "ZeroRedundancyOptimizer)"
                )

    def _zero_owner(self) -> Any | None:
        """The ZeroRedundancyOptimizer of a partition of two or more ranks, else ``None``."""
        return self._zero() if self._zero is not None and self.partition is not None else None

    def _partition_max(self, value: float | None) -> float | None:
        """``value`` (``None``: no tensor moved here) maximized over a ZeRO partition: every rank
        joins, also one whose share moved no tensor."""
        if self.partition is None:
            return value
        import torch.distributed as dist

        top = torch.tensor(
            [-math.inf if value is None else value],
            dtype=torch.float64,
            device=self.partition.device,
        )
        dist.all_reduce(top, op=dist.ReduceOp.MAX, group=self.partition.group)
        result = top.item()
        return None if result == -math.inf else result

    def _creates_state_for_dcp(self) -> bool:
        """torch.distributed.checkpoint creates a fresh optimizer's state by calling ``step()``
        without a closure on zero gradients at lr 0 (``state_dict._init_optim_state``), so that its
        state dict has every entry a checkpoint can be loaded into. KOALA cannot step without the
        loss; in exactly that situation it creates its state (as its first step would) and moves
        nothing."""
        if self.state or self._unsaved is not None:
            return False
        groups = self.param_groups
        grads = [local(p.grad) for g in groups for p in g["params"] if p.grad is not None]
        if not grads or any(float(g["lr"]) != 0.0 for g in groups):
            return False
        if any(bool(grad.any()) for grad in grads):
            return False
        self._global()
        for state in self._prepare_groups_states():
            state["step"] = 0
        return True

    def _prepare_groups(self) -> list[tuple[dict[str, Any], list[TensorBatch]]]:
        return [(group, self._prepare_group(group)) for group in self.param_groups]

    def _prepare_groups_states(self) -> list[dict[str, Any]]:
        return [s for _, batches in self._prepare_groups() for b in batches for s in b.states]

    # -- the measurement update of one batch -------------------------------------------------------

    def _step_scalars(self, group: Mapping[str, Any], step: int) -> dict[str, Any]:
        """The scalars of the update functions: the filter's for this step (``_filter``, set by
        ``_measure``: the loss, the covariance, ``R``) and the group's. Where no group decays
        (KOALA's default), ``weight_decay`` is the integer 0, which the fused step keeps a
        constant of its graph rather than a 0-dim tensor: multiplied by a zero tensor, the update
        still summed ``||g + 0 p||^2`` and ``||p||^2``, a second pass over the parameters (fused
        KOALA-V on the transformer set: 70 ms a step against 41 with the constant, its eager step
        41-45; KOALA-M 185 against 131). Where some group decays, every group's is a tensor, so
        that biases without decay beside weights with share the graph."""
        decays = any(g["weight_decay"] for g in self.param_groups)
        weight_decay = float(group["weight_decay"]) if decays else 0
        return dict(self._filter, lr=float(group["lr"]), weight_decay=weight_decay)

    def _measure_batch(
        self, group: dict[str, Any], batch: TensorBatch, multi_tensor: Callable[..., Any]
    ) -> float | None:
        """The measurement update of one batch (its 8-bit states decoded); returns the largest
        ``|h|^2/S`` of its tensors that moved, or ``None`` if none did.

        ``foreach`` (and FSDP2 shards, whose norms only it sums over the shards): ``multi_tensor``,
        chunk by chunk on CPU. Otherwise the per-tensor function of :meth:`_elementwise_update`,
        eagerly with Python floats or, with ``fused=True``, compiled over whole tensors
        (core/fused.py); it writes each tensor's ``|h|^2/S`` into a 0-dim float64 tensor, read back
        once per batch."""
        fn, keys = self._elementwise_update(group)
        fused = self._use_fused(group, batch)
        if not fused and (self._use_foreach(group) or any_dtensor(batch.params)):
            hh = None
            for part in self._chunks(batch):
                likes, lists = _local(part, *keys)
                out = multi_tensor(*lists, likes=likes, **self._step_scalars(group, 0))
                if out is not None:
                    hh = out if hh is None else max(hh, out)
            return hh
        lists = batch.local(*keys)
        if not lists[0]:
            return None
        ratios = self._per_tensor_outputs(batch, torch.float64)
        run_elementwise(
            fn,
            [*lists, ratios],
            [0] * len(ratios),  # the filter's scalars do not depend on a per-tensor step count
            lambda step: self._step_scalars(group, step),
            fused=fused,
            split=False,
            plans=self.__dict__.setdefault("_fused_plans", {}),
        )
        top = torch.stack(ratios).max().item()
        return None if top == -math.inf else top

    # -- the loss statistics under torch.distributed ------------------------------------------------

    def _reduce(self, observed: _Observation) -> tuple[float, float]:
        """``(loss, loss_var)``: this process's, or, with more than one process, the combination of
        all ranks' in the loss group, so that every replica takes the same step (that of a single
        process seeing all ranks' batches). Per-sample losses are combined as sums and counts; a
        scalar loss and a ``(loss, loss_var)`` pair are averaged (equal batches); a scalar loss's
        ``loss_var`` is the square of the averaged loss, as one process would compute it."""
        mean, second = observed.mean, observed.second
        group = self._loss_process_group()
        if group is not None:
            import torch.distributed as dist

            w = observed.weight
            sums = torch.tensor(
                [w * mean, w * second, w], dtype=torch.float64, device=self._device_for(group)
            )
            dist.all_reduce(sums, group=group)
            total_mean, total_second, total = sums.tolist()
            mean, second = total_mean / total, total_second / total
        if observed.scalar:
            second = mean * mean
        return mean, second

    def _loss_process_group(self) -> Any | None:
        """The group whose ranks' losses are combined: ``loss_group``, else the default (world)
        group; ``None`` (no reduction) in a single process."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return None
        group = self._loss_group if self._loss_group is not None else dist.group.WORLD
        return group if dist.get_world_size(group) > 1 else None

    def _device_for(self, group: Any) -> torch.device:
        """Where the collective's tensor lives: the parameters' device (CUDA under NCCL)."""
        for g in self.param_groups:
            for p in g["params"]:
                return local(p).device
        import torch.distributed as dist

        if dist.get_backend(group) == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def _observe(self, loss_var: float) -> float:
        """Update and return the observation noise ``R``."""
        glob = self._global()
        if self.defaults["r"] is not None:
            return float(self.defaults["r"])
        alpha = self.defaults["alpha_r"]
        glob["R"] = alpha * glob["R"] + (1 - alpha) * float(loss_var)
        return glob["R"]

    def _norm_tensors(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per-tensor norms of (possibly FSDP2-sharded) tensors, as 0-dim tensors."""
        if any_dtensor(tensors):
            return _norm_tensors(local_list(tensors), tensors)
        return _norm_tensors(tensors)


_ZERO_MODULE = "torch.distributed.optim.zero_redundancy_optimizer"


def _constructing_zero() -> weakref.ref | None:
    """A weak reference to the ``ZeroRedundancyOptimizer`` whose constructor builds the caller.

    ``core.distributed.zero_partition`` (which the base class calls for ``self.partition``) returns
    the partition's process group only; KOALA-M also needs ZeRO itself, whose broadcast of every
    rank's share makes the parameters its ``predict()`` moved visible to the closure on all ranks,
    and KOALA needs ZeRO's parameters to refuse a gradient on every rank. The same walk over the
    callers' frames (``ZeroRedundancyOptimizer._init_local_optimizer`` -> the class's ``__init__``
    -> ``_KOALA.__init__`` -> here)."""
    module = sys.modules.get(_ZERO_MODULE)
    if module is None:
        return None
    frame = sys._getframe(1)
    for _ in range(12):
        if frame is None:
            return None
        owner = frame.f_locals.get("self")
        if isinstance(owner, module.ZeroRedundancyOptimizer):
            return weakref.ref(owner)
        frame = frame.f_back
    return None


class VanillaKOALA(_KOALA):
    """KOALA-V (Davtyan et al., 2022): Kalman filtering of the parameters with a scalar covariance.

    Args:
        params: parameters or param groups.
        lr: multiplies the Kalman gain (the authors' schedules start from 1).
        sigma: initial covariance ``P``.
        q: process noise added to ``P`` by ``predict()``.
        r: fixed observation noise ``R``; ``None`` estimates it online.
        alpha_r: EMA coefficient of the online ``R``.
        weight_decay: enters the gain and the loss (``wd/2 ||p||^2``), see the module docstring.
        maximize: only ``False``: KOALA drives the loss to its target 0 whatever its sign, so
            ``True`` is refused (see the module docstring); return a non-negative loss instead.
        foreach: ``None`` or ``True`` for the multi-tensor path, ``False`` for the per-tensor one.
        fused: ``True`` runs the measurement update compiled over whole tensors (C++ on CPU,
            Triton on CUDA; docs/fused.md; slower than eager on CPU here); refused for FSDP2
            shards. ``None`` and ``False``: the eager path.
        loss_group: the ``torch.distributed`` process group whose ranks' losses are combined
            (``None``: the default, world group), see the module docstring. Not saved in the state
            dict, nor pickled.
    """

    hyperparameter_rules = {
        "sigma": POSITIVE,
        "q": Interval(0.0),
        "r": Optional(POSITIVE),
        "alpha_r": UNIT_CLOSED,
    }

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1.0,
        sigma: float = 1.0,
        q: float = 1.0,
        r: float | None = None,
        alpha_r: float = 0.9,
        weight_decay: float = 0.0,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        state_bits: int = 32,
        loss_group: Any = None,
    ) -> None:
        defaults = dict(
            lr=lr,
            sigma=sigma,
            q=q,
            r=r,
            alpha_r=alpha_r,
            weight_decay=weight_decay,
            maximize=maximize,
            foreach=foreach,
            fused=fused,
            state_bits=state_bits,
        )
        super().__init__(params, defaults, loss_group)

    def _init_global(self) -> dict[str, Any]:
        return {"P": float(self.defaults["sigma"]), "R": 1.0}

    @torch.no_grad()
    def predict(self) -> None:
        """Time update, before the forward pass: ``P <- P + q``."""
        self._global()["P"] += float(self.defaults["q"])

    def _measure(self, loss: float, loss_var: float) -> None:
        """The measurement update (``update()`` after its checks and the loss reduction)."""
        glob = self._global()  # first: it completes the carrier's entry (see _global)
        prepared = self._prepare_groups()
        r = self._observe(loss_var)
        p_cov = glob["P"]
        self._filter = dict(loss=loss, p_cov=p_cov, r=r)
        hh = None
        for group, batches in prepared:
            for batch in batches:
                out = self._measure_batch(group, batch, _multi_tensor_koala_v)
                if out is not None:
                    hh = out if hh is None else max(hh, out)
                batch.write_back()
        hh = self._partition_max(hh)
        if hh is not None:
            glob["P"] = p_cov - p_cov**2 * hh

    def _elementwise_update(
        self, group: Mapping[str, Any]
    ) -> tuple[Callable[..., None], tuple[str | None, ...]]:
        return _koala_v_tensors, ()


def _koala_v_scales(
    grad_norms: list[float],
    h_norms: list[float],
    p_norms: list[float],
    *,
    loss,
    p_cov,
    r,
    lr,
    weight_decay,
) -> tuple[list[int], list[float], float | None]:
    """Indices of the tensors that move, their step factors ``lr L_l P / S_l``, and max ``|h|^2/S``."""
    keep, factors, ratios = [], [], []
    for i, (gn, hn, pn) in enumerate(zip(grad_norms, h_norms, p_norms, strict=True)):
        if gn < GRAD_EPS:
            continue
        s = p_cov * hn * hn + r
        layer_loss = loss + 0.5 * weight_decay * pn * pn
        keep.append(i)
        factors.append(lr * layer_loss * p_cov / s)
        ratios.append(hn * hn / s)
    return keep, factors, (max(ratios) if ratios else None)


def _sq_norm(t: torch.Tensor) -> torch.Tensor:
    """``||t||^2`` accumulated in float64 (no overflow for finite elements), a 0-dim tensor."""
    return torch.linalg.vector_norm(t, dtype=torch.float64).square()


def _regularized(
    h: torch.Tensor, grad_sq: torch.Tensor, param: torch.Tensor, loss: Any, weight_decay: Any
) -> tuple[torch.Tensor, Any]:
    """``(||h||^2, L)`` of one tensor, ``h = g + wd p`` (``l2_weight_decay``) and
    ``L = loss + wd/2 ||p||^2``. Without weight decay (a Python zero: the eager path) they are
    ``||g||^2`` and the loss: neither ``h`` nor the parameter is read again, as in the
    multi-tensor path."""
    if is_zero(weight_decay):
        return grad_sq, loss
    return _sq_norm(h), loss + 0.5 * weight_decay * _sq_norm(param)


def _koala_v_tensors(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    ratios: list[torch.Tensor],
    *,
    loss: Any,
    p_cov: Any,
    r: Any,
    lr: Any,
    weight_decay: Any,
) -> None:
    """KOALA-V's measurement update, one tensor at a time: the per-tensor path (``foreach=False``,
    Python floats) and, compiled, ``fused=True`` (0-dim tensors; see
    ``AdaptimOptimizer._elementwise_update`` for what such a function may use). Writes each
    tensor's ``|h|^2/S`` into the 0-dim float64 ``ratios[i]`` (``-inf`` where ``||g|| < 1e-9``:
    the tensor does not move). Norms accumulate in float64, where the multi-tensor path
    recomputes in float64 only those that overflow."""
    for param, grad, ratio in zip(params, grads, ratios, strict=True):
        grad_sq = _sq_norm(grad)
        moves = ~(grad_sq < GRAD_EPS * GRAD_EPS)  # as the reference: a NaN norm moves
        h = l2_weight_decay(grad, param, weight_decay)  # g itself without decay
        h_sq, layer_loss = _regularized(h, grad_sq, param, loss, weight_decay)
        s = p_cov * h_sq + r
        gain = torch.where(moves, lr * layer_loss * p_cov / s, 0.0)
        param.add_(grad, alpha=scalar_arg(-gain))
        ratio[()] = torch.where(moves, h_sq / s, -math.inf)  # not copy_: see adaptive_hb.py


def _multi_tensor_koala_v(
    params, grads, *, loss, p_cov, r, lr, weight_decay, likes=None
) -> float | None:
    if not params:
        return None
    if weight_decay:
        hs = l2_weight_decay(grads, params, weight_decay)
        grad_norms, h_norms, p_norms = _norms_of_many([grads, hs, params], likes)
    else:
        (grad_norms,) = _norms_of_many([grads], likes)
        h_norms, p_norms = grad_norms, [0.0] * len(params)
    keep, factors, hh = _koala_v_scales(
        grad_norms, h_norms, p_norms, loss=loss, p_cov=p_cov, r=r, lr=lr, weight_decay=weight_decay
    )
    if keep:
        moved = [params[i] for i in keep]
        _add_scaled_(moved, [grads[i] for i in keep], [-f for f in factors])
    return hh


class MomentumKOALA(_KOALA):
    """KOALA-M (Davtyan et al., 2022): Kalman filtering of parameters and velocities.

    Args:
        params: parameters or param groups.
        lr: multiplies the Kalman gains.
        sw, sc, sv: initial covariance ``[[sw, sc], [sc, sv]]``.
        a: velocity decay (``F = [[1, 1], [0, a]]``).
        qw: initial process noise of the parameters (then an EMA of the parameters' drift).
        qv: process noise of the velocities.
        r: fixed observation noise ``R``; ``None`` estimates it online.
        alpha_r: EMA coefficient of the online ``R``.
        weight_decay: enters the gains, the step and the loss, see the module docstring.
        maximize: only ``False``: KOALA drives the loss to its target 0 whatever its sign, so
            ``True`` is refused (see the module docstring); return a non-negative loss instead.
        foreach: ``None`` or ``True`` for the multi-tensor path, ``False`` for the per-tensor one.
        fused: ``True`` runs the measurement update compiled over whole tensors (C++ on CPU,
            Triton on CUDA; docs/fused.md; slower than eager on CPU here); refused for FSDP2
            shards. ``None`` and ``False``: the eager path.
        loss_group: the ``torch.distributed`` process group whose ranks' losses are combined
            (``None``: the default, world group), see the module docstring. Not saved in the state
            dict, nor pickled.
    """

    hyperparameter_rules = {
        "sw": POSITIVE,
        "sc": Interval(),
        "sv": POSITIVE,
        "a": UNIT_CLOSED,
        "qw": Interval(0.0),
        "qv": Interval(0.0),
        "r": Optional(POSITIVE),
        "alpha_r": UNIT_CLOSED,
    }
    state_keys = ("velocity", "param_avg")
    #: 8-bit states: the velocity, a momentum (signed). The parameter average is a copy of the
    #: parameters and stays in the working dtype. predict() and the measurement update each decode
    #: and encode it around their unchanged loops, part by part.
    quantized_states: ClassVar[Mapping[str, bool]] = {"velocity": True}
    #: lr scales the Kalman gains only; the velocity keeps moving the weights at lr = 0 (official code)
    moves_at_zero_lr: ClassVar[bool] = True

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1.0,
        sw: float = 1e-1,
        sc: float = 0.0,
        sv: float = 1e-1,
        a: float = 0.9,
        qw: float = 1e-2,
        qv: float = 1e-2,
        r: float | None = None,
        alpha_r: float = 0.9,
        weight_decay: float = 0.0,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        state_bits: int = 32,
        loss_group: Any = None,
    ) -> None:
        defaults = dict(
            lr=lr,
            sw=sw,
            sc=sc,
            sv=sv,
            a=a,
            qw=qw,
            qv=qv,
            r=r,
            alpha_r=alpha_r,
            weight_decay=weight_decay,
            maximize=maximize,
            foreach=foreach,
            fused=fused,
            state_bits=state_bits,
        )
        super().__init__(params, defaults, loss_group)

    def _validate_relations(self, values: Mapping[str, Any]) -> None:
        super()._validate_relations(values)
        sw, sc, sv = values.get("sw", 1.0), values.get("sc", 0.0), values.get("sv", 1.0)
        if sc * sc > sw * sv:
            raise ValueError(
                f"MomentumKOALA: invalid sc={sc!r}; the initial covariance [[sw, sc], [sc, sv]] must "
                "be positive semi-definite (sc^2 <= sw * sv)"
            )

    def _init_global(self) -> dict[str, Any]:
        d = self.defaults
        sw, sc, sv = float(d["sw"]), float(d["sc"]), float(d["sv"])
        return {"P00": sw, "P01": sc, "P10": sc, "P11": sv, "R": 1.0, "qw": float(d["qw"])}

    def _upgrade(self, shared: Mapping[str, Any]) -> dict[str, Any]:
        shared = dict(shared)
        p = shared.pop("P", None)
        if p is not None:  # a 2x2 float64 tensor
            (shared["P00"], shared["P01"]), (shared["P10"], shared["P11"]) = p.tolist()
        return super()._upgrade(shared)

    def _copies_before_predict(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Copies of the parameters that have a velocity, and of their velocities, while a trainable
        parameter has no state yet: ``predict()`` moves them (``p += v``, ``v *= a``, which cannot
        be inverted exactly in floating point) before the closure's gradients can be checked, and a
        gradient that would be refused (sparse, complex) can only come from a tensor never stepped
        before: the others' passed the checks already. (A stepped tensor whose gradient turns sparse, e.g.
        ``nn.Embedding.sparse`` switched on mid-run, is not covered.) In steady training every
        trainable tensor has state and nothing is copied."""
        params = [p for group in self.param_groups for p in group["params"]]
        unstepped = any(p.requires_grad and not self.state.get(p) for p in params)
        if self.partition is not None:  # ZeRO: if any rank's share has one, every rank copies
            flag = torch.tensor([float(unstepped)], dtype=torch.float64)
            unstepped = partition_sum(flag, self.partition).item() > 0
        if not unstepped:
            return []
        moved = [p for p in params if self.state.get(p)]
        # an 8-bit velocity: its codes and their block absmax
        kept = ("velocity", absmax_key("velocity"))
        tensors = local_list(
            list(moved) + [self.state[p][k] for p in moved for k in kept if k in self.state[p]]
        )
        return [(t, t.clone()) for t in tensors]

    def _put_back(self, copies: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        super()._put_back(copies)
        self._share_moved()

    def _share_moved(self) -> None:
        """Under ZeRO, this rank moved its share of the parameters only: broadcast every share
        from its owner (ZeRO's own synchronization, which it otherwise runs after the step), so
        that the closure sees the predicted point on every rank."""
        zero = self._zero_owner()
        if zero is not None:
            zero._sync_params()

    @torch.no_grad()
    def predict(self) -> None:
        """Time update, before the forward pass: move ``p += v``, decay ``v``, propagate ``P``."""
        glob = self._global()
        a = float(self.defaults["a"])
        norms: list[torch.Tensor] = []  # each tensor's drift ||p_bar - p||, in a fixed order
        total = 0
        for group in self.param_groups:
            params = group["params"]
            total += sum(p.numel() for p in params)
            with_state = [p for p in params if self.state.get(p)]
            without = [p.detach() for p in params if not self.state.get(p)]
            saved_keys = self._saved_codes_keys()
            for p in with_state:  # an entry ZeRO's load_state_dict wrote in as saved
                if not saved_keys.isdisjoint(self.state[p]):
                    self._adopt_saved_state(self.state[p])
            # The reference starts the parameter average at 0: a tensor without state drifts by ||p||.
            norms += self._norm_tensors(without)
            if not with_state:
                continue
            batch = TensorBatch(with_state, with_state, [self.state[p] for p in with_state])
            foreach = self._use_foreach(group)
            for unit in self._decoded_parts(batch):
                for part in self._chunks(unit) if foreach else (unit,):
                    likes, (moved, _, vels, avgs) = _local(part, "velocity", "param_avg")
                    norms += _koala_m_predict(moved, vels, avgs, a=a, likes=likes, foreach=foreach)
                    del moved, vels, avgs  # not kept while the next part decodes (8 bits)
        drift_sq = 0.0
        if norms:
            devices = {n.device for n in norms}
            if len(devices) > 1:
                norms = [n.cpu() for n in norms]
            drift_sq = sum(n * n for n in torch.stack(norms).double().tolist())
        if self.partition is not None:  # ZeRO: this rank's share of the tensors; sum over all
            parts = torch.tensor([drift_sq, float(total)], dtype=torch.float64)
            drift_sq, total = partition_sum(parts, self.partition).tolist()
        self._share_moved()
        drift = drift_sq**0.5 / max(total, 1)
        glob["qw"] = 0.9 * glob["qw"] + 0.1 * drift
        f = torch.tensor([[1.0, 1.0], [0.0, a]], dtype=torch.float64)
        q = torch.diag(torch.tensor([glob["qw"], float(self.defaults["qv"])], dtype=torch.float64))
        _set_covariance(glob, f @ _covariance(glob) @ f.T + q)

    def _measure(self, loss: float, loss_var: float) -> None:
        """The measurement update (``update()`` after its checks and the loss reduction)."""
        glob = self._global()  # first: it completes the carrier's entry (see _global)
        prepared = self._prepare_groups()
        r = self._observe(loss_var)
        self._filter = dict(loss=loss, p00=glob["P00"], p10=glob["P10"], r=r)
        hh = None
        for group, batches in prepared:
            for batch in batches:
                for unit in self._decoded_parts(batch):
                    out = self._measure_batch(group, unit, _multi_tensor_koala_m)
                    if out is not None:
                        hh = out if hh is None else max(hh, out)
                batch.write_back()
        hh = self._partition_max(hh)
        if hh is not None:
            p = _covariance(glob)
            hhs = torch.tensor([[hh, 0.0], [0.0, 0.0]], dtype=torch.float64)
            _set_covariance(glob, p - p @ hhs @ p.T)

    def _elementwise_update(
        self, group: Mapping[str, Any]
    ) -> tuple[Callable[..., None], tuple[str | None, ...]]:
        return _koala_m_tensors, ("velocity", "param_avg")


def _covariance(shared: Mapping[str, Any]) -> torch.Tensor:
    """KOALA-M's 2x2 covariance (kept as four floats: DCP's flattened state dicts take no lists)."""
    return torch.tensor(
        [[shared["P00"], shared["P01"]], [shared["P10"], shared["P11"]]], dtype=torch.float64
    )


def _set_covariance(shared: dict[str, Any], p: torch.Tensor) -> None:
    (shared["P00"], shared["P01"]), (shared["P10"], shared["P11"]) = p.tolist()


def _koala_m_predict(
    params: list[torch.Tensor],
    vels: list[torch.Tensor],
    avgs: list[torch.Tensor],
    *,
    a: float,
    likes: list[torch.Tensor] | None,
    foreach: bool,
) -> list[torch.Tensor]:
    """``p += v``, ``v *= a``; returns each tensor's drift ``||p_bar - p||`` (before the move).

    ``p`` is moved in its own dtype (``v`` is fp32 for bf16/fp16 parameters), as in the reference.
    """
    work = [p.to(avg.dtype) for p, avg in zip(params, avgs, strict=True)]  # p itself, unless bf16
    if foreach:
        norms = _norm_tensors(torch._foreach_sub(avgs, work), likes)
        torch._foreach_add_(params, vels)  # F00 = F01 = 1
        torch._foreach_mul_(vels, a)
        return norms
    norms = []
    for i, (param, vel, avg) in enumerate(zip(params, vels, avgs, strict=True)):
        norms += _norm_tensors([avg - work[i]], None if likes is None else [likes[i]])
        param.add_(vel)
        vel.mul_(a)
    return norms


def _koala_m_tensors(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    vels: list[torch.Tensor],
    avgs: list[torch.Tensor],
    ratios: list[torch.Tensor],
    *,
    loss: Any,
    p00: Any,
    p10: Any,
    r: Any,
    lr: Any,
    weight_decay: Any,
) -> None:
    """KOALA-M's measurement update, one tensor at a time (per-tensor path and ``fused=True``,
    as :func:`_koala_v_tensors`, whose ``ratios`` it writes the same way)."""
    for param, grad, vel, avg, ratio in zip(params, grads, vels, avgs, ratios, strict=True):
        grad_sq = _sq_norm(grad)
        moves = ~(grad_sq < GRAD_EPS * GRAD_EPS)  # as the reference: a NaN norm moves
        h = l2_weight_decay(grad, param, weight_decay)
        h_sq, layer_loss = _regularized(h, grad_sq, param, loss, weight_decay)
        s = h_sq * p00 + r
        param.add_(h, alpha=scalar_arg(torch.where(moves, -p00 / s * layer_loss * lr, 0.0)))  # K1 h
        vel.add_(h, alpha=scalar_arg(torch.where(moves, -p10 / s * layer_loss * lr, 0.0)))  # K2 h
        # p_bar = 0.9 p_bar + 0.1 p where the tensor moved; the factors in float64 (a Python
        # float's torch.where gives float32, whose 0.1 is not the reference's)
        pull = 0.1 * moves.to(torch.float64)
        avg.mul_(1.0 - pull).add_(param, alpha=scalar_arg(pull))
        ratio[()] = torch.where(moves, h_sq / s, -math.inf)


def _multi_tensor_koala_m(
    params, grads, vels, avgs, *, loss, p00, p10, r, lr, weight_decay, likes=None
):
    if not params:
        return None
    hs = l2_weight_decay(grads, params, weight_decay)
    if weight_decay:
        grad_norms, h_norms, p_norms = _norms_of_many([grads, hs, params], likes)
    else:
        (grad_norms,) = _norms_of_many([grads], likes)
        h_norms, p_norms = grad_norms, [0.0] * len(params)
    keep, k1, k2, ratios = [], [], [], []
    for i, (gn, hn, pn) in enumerate(zip(grad_norms, h_norms, p_norms, strict=True)):
        if gn < GRAD_EPS:
            continue
        s = hn * hn * p00 + r
        layer_loss = loss + 0.5 * weight_decay * pn * pn
        keep.append(i)
        k1.append(-p00 / s * layer_loss * lr)
        k2.append(-p10 / s * layer_loss * lr)
        ratios.append(hn * hn / s)
    if not keep:
        return None
    h_kept = [hs[i] for i in keep]
    moved = [params[i] for i in keep]
    _add_scaled_(moved, h_kept, k1)
    _add_scaled_([vels[i] for i in keep], h_kept, k2)
    # p_bar = 0.9 p_bar + 0.1 p, in one pass (equal up to rounding)
    torch._foreach_lerp_([avgs[i] for i in keep], moved, 0.1)
    return max(ratios)


_KOALA_PAPER = (
    "Davtyan, Sameni, Cerkezi, Meishvili, Bielski, Favaro, KOALA: A Kalman Optimization Algorithm "
    "with Loss Adaptivity, AAAI 2022"
)
_KOALA_REF = "github.com/Araachie/koala koala.py (VanillaKOALA, MomentumKOALA) @ f864580"

register(
    OptimInfo(
        name="koala_v",
        verified="hand-computed steps of the official equations; official koala.py out of tree (1.5e-15)",
        cls=VanillaKOALA,
        paper=_KOALA_PAPER,
        paper_url="https://arxiv.org/abs/2107.03331",
        reference=_KOALA_REF,
        description="Kalman filter on the parameters with a shared scalar covariance; the loss is "
        "observed with target 0 (step with a closure).",
        supports_complex=False,
        tuned_lr={"quadratic": 1.0, "rosenbrock": 1.0},
    )
)
register(
    OptimInfo(
        name="koala_m",
        verified="hand-computed steps of the official equations; official koala.py out of tree (1.2e-15 in float64)",
        cls=MomentumKOALA,
        paper=_KOALA_PAPER,
        paper_url="https://arxiv.org/abs/2107.03331",
        reference=_KOALA_REF,
        description="Kalman filter on parameters and velocities with a shared 2x2 covariance "
        "(step with a closure).",
        supports_complex=False,
        tuned_lr={"quadratic": 1.0, "rosenbrock": 1.0},
    )
)

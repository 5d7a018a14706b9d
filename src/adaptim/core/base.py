"""The base class every adaptim optimizer derives from.

It keeps ``torch.optim.Optimizer``'s contract (param groups, ``state_dict``, hooks, ``zero_grad``,
schedulers) and adds, in one place, what every algorithm needs:

* hyperparameter validation against the class's declared rules, before any state exists, for the
  defaults and for every param group added later;
* gathering the parameters that have a gradient into :class:`TensorBatch` es, one per device,
  working dtype and kind (the parameters themselves, or fp32 copies to write back), so a
  multi-tensor (``torch._foreach_*``) path can run over each; one param group may mix fp32, fp64,
  bf16, fp16 and complex parameters;
* lazy state creation, per-parameter step counters;
* ``maximize`` (the gradient is negated into a new tensor; ``p.grad`` is never written);
* low-precision parameters: bf16 and fp16 parameters are updated with fp32 math on an fp32 copy that is
  written back after the step, and **their states are kept in fp32**. Moments of squared gradients
  underflow and lose most of their mantissa in bf16 (8 bits), which biases the denominator; fp32
  states cost memory but keep the update equal to the fp32 algorithm up to the final rounding of the
  parameter. All other dtypes keep states in the parameter's dtype, and ``load_state_dict`` casts
  floating states to these working dtypes (an fp64 checkpoint continues in fp32);
* complex parameters, for elementwise algorithms, as real views (``torch.view_as_real``), so each
  real and imaginary part is its own coordinate, as in ``torch.optim``;
* 8-bit block-wise states (``state_bits=8`` per param group) for the states a class declares in
  ``quantized_states``: stored as codes and block absmax, decoded part by part around the unchanged
  update (core/state_precision.py);
* refusal of sparse gradients, and of another optimizer's state dict, with a clear error, before
  anything changes;
* hyperparameters without a default (``lr=required``, as in ``torch.optim``), given per param group.

A subclass declares ``hyperparameter_rules`` and ``state_keys`` and implements :meth:`_update`, which
receives a batch and dispatches to a per-tensor reference function or a multi-tensor function.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch.optim import Optimizer
from torch.optim.optimizer import required as _required

from adaptim.core.distributed import (
    Partition,
    any_dtensor,
    foreach_copy_,
    is_dtensor,
    local_list,
    zero_partition,
)
from adaptim.core.fused import fused_unavailable_reason, run_elementwise
from adaptim.core.state_precision import (
    STATE_BITS,
    Part,
    absmax_key,
    codes_key,
    dequantize_state_,
    is_quantized,
    loaded_state,
    plan_parts,
    quantize_state_,
    quantizes,
    release_large_scratch,
    saved_state,
)
from adaptim.core.validation import (
    BOOL,
    NONNEGATIVE,
    OneOf,
    Optional,
    Rule,
    validate_hyperparameters,
)

__all__ = ["AdaptimOptimizer", "TensorBatch", "required"]

#: the default of a hyperparameter with no default (torch's sentinel, typed ``Any`` so that
#: ``lr: float = required`` type-checks): every param group must then give it
required: Any = _required

LOW_PRECISION = (torch.float16, torch.bfloat16)
COMPLEX = (torch.complex32, torch.complex64, torch.complex128)
#: parameter bytes per chunk of a cache-blocked CPU update (see ``AdaptimOptimizer._chunks``)
CPU_CHUNK_BYTES = 2 * 2**20
#: sets of per-tensor output tensors kept per optimizer (one per batch, usually a few)
_MAX_OUTPUT_SETS = 256

COMMON_RULES: Mapping[str, Rule] = {
    "lr": NONNEGATIVE,
    "eps": NONNEGATIVE,
    "weight_decay": NONNEGATIVE,
    "maximize": BOOL,
    "foreach": Optional(BOOL),
    "fused": Optional(BOOL),
    "decoupled_weight_decay": BOOL,
    "amsgrad": BOOL,
    "nesterov": BOOL,
    "state_bits": OneOf(STATE_BITS),
}


@dataclass
class TensorBatch:
    """The parameters of one param group that share a device and working dtype, and have a gradient.

    ``params`` are the tensors the update writes into: the parameters themselves, their real views
    (complex) or fp32 working copies (bf16/fp16, written back by :meth:`write_back`). ``grads`` are
    read-only: an algorithm must never write into them (they may be the user's ``p.grad``).
    """

    params: list[torch.Tensor]
    grads: list[torch.Tensor]
    states: list[dict[str, Any]]
    originals: list[torch.Tensor] = field(default_factory=list)
    copied: bool = False  # params are fp32 copies that must be written back

    def state(self, key: str) -> list[torch.Tensor]:
        return [s[key] for s in self.states]

    @property
    def steps(self) -> list[int]:
        """The tensors' step counts: a new list at each read (read it once, not once per tensor:
        a per-tensor read made Adam's step quadratic in the number of tensors)."""
        return [s["step"] for s in self.states]

    def local(self, *keys: str) -> list[list[torch.Tensor]]:
        """``[params, grads, *(state(k) for k in keys)]``, as local shards when the parameters are
        DTensors (FSDP2; in-place ops on a local shard update its DTensor), so an update written for
        plain tensors runs unchanged; reductions over shards are the caller's."""
        lists = [self.params, self.grads, *(self.state(k) for k in keys)]
        if any_dtensor(self.params):
            return [local_list(ts) for ts in lists]
        return lists

    def slice(self, start: int, stop: int) -> TensorBatch:
        return TensorBatch(
            self.params[start:stop],
            self.grads[start:stop],
            self.states[start:stop],
            self.originals[start:stop],
            self.copied,
        )

    def write_back(self) -> None:
        if self.copied:
            # Shard by shard: torch._foreach_copy_ has no DTensor rule (torch 2.13), so bf16 FSDP2
            # parameters are written through their local shards (a no-op view for plain tensors).
            foreach_copy_(self.originals, self.params)


#: flat pieces start at multiples of this many elements, so each piece's vectorized body and scalar
#: tail cover the same elements as a pass over the whole tensor would (bit-identical results)
_PIECE_ALIGN = 64


def _flat_pieces(batch: TensorBatch, i: int, chunk_bytes: int) -> list[TensorBatch]:
    """Tensor ``i`` of ``batch`` as one-tensor batches of flat pieces of about ``chunk_bytes``,
    or ``[]`` when it cannot be cut: a DTensor, or a param, grad or state of its shape that is not
    contiguous. Each piece's state dict holds views of the tensor states shaped like the parameter
    (other entries, such as ``step``, as they are)."""
    param, grad, state = batch.params[i], batch.grads[i], batch.states[i]
    shape, numel = param.shape, param.numel()
    per_piece = max(
        _PIECE_ALIGN, chunk_bytes // param.element_size() // _PIECE_ALIGN * _PIECE_ALIGN
    )
    if numel <= per_piece or is_dtensor(param):
        return []
    shaped = [k for k, v in state.items() if isinstance(v, torch.Tensor) and v.shape == shape]
    if not all(t.is_contiguous() for t in (param, grad, *(state[k] for k in shaped))):
        return []
    pieces = []
    for a in range(0, numel, per_piece):
        b = min(numel, a + per_piece)
        piece_state = dict(state)
        for k in shaped:
            piece_state[k] = state[k].view(-1)[a:b]
        pieces.append(
            TensorBatch(
                [param.view(-1)[a:b]], [grad.view(-1)[a:b]], [piece_state], [], batch.copied
            )
        )
    return pieces


def _in_turn(parts: list[Part], copied: bool) -> Iterator[TensorBatch]:
    """The parts as batches, each decoded before it is yielded and encoded when the next is asked
    for."""
    for part in parts:
        part.decode()
        yield TensorBatch(part.params, part.grads, part.states, [], copied)
        part.encode()


def _working_dtype(param: torch.Tensor) -> torch.dtype:
    """The dtype of a parameter's update and states: fp32 for bf16/fp16, the real dtype of a
    complex parameter's real view, else the parameter's own."""
    if param.dtype in COMPLEX:
        param = torch.view_as_real(torch.empty(0, dtype=param.dtype))
    if param.dtype in LOW_PRECISION:
        return torch.float32
    return param.dtype


def _guess_origin(group: Mapping[str, Any]) -> str:
    """The optimizer class whose hyperparameters a saved param group has (torch.optim's and
    adaptim's registered ones), for error messages; "unrecognized" if none matches exactly."""
    import adaptim.registry

    ignored = {
        "params",
        "param_names",
        "foreach",
        "differentiable",
        "capturable",
        "fused",
        "state_bits",
    }
    keys = set(group) - ignored
    candidates: list[tuple[str, type]] = [
        (f"torch.optim.{n}", c)
        for n, c in vars(torch.optim).items()
        if isinstance(c, type) and issubclass(c, Optimizer) and c is not Optimizer
    ]
    candidates += [(f"adaptim.{i.cls.__name__}", i.cls) for i in adaptim.registry.registered()]
    dummy = [torch.nn.Parameter(torch.zeros(1))]
    for label, cls in candidates:
        try:
            defaults = cls(dummy, lr=1e-3).defaults
        except Exception:  # a wrapper, a tool, or a class needing other arguments
            continue
        if set(defaults) - ignored == keys:
            return label
    return "unrecognized"


def _float_code(value: Any, odd: bool) -> tuple[int, int] | None:
    """A Python float as ``(m, e)`` with ``value == m * 2.0**e`` exactly and ``|m| < 2**62`` (an
    int64), or ``None`` for anything else (a tensor ``lr`` is left as it is). ``odd`` picks the
    other of two codes of each value (``e`` one less, ``m`` doubled): alternated from call to call,
    both ints change at the second step whether ``lr`` does or not, so dynamo makes them symbolic in
    the recompile that the step counters cause anyway, and a later new ``lr`` costs none."""
    if isinstance(value, bool) or not isinstance(value, float | int) or not math.isfinite(value):
        return None
    value = float(value)
    exponent = (math.frexp(value)[1] if value else 0) - 60 - odd  # m has at most 60 + 1 bits
    if not -1000 < exponent < 900:  # 2.0**exponent must be a normal float
        return None
    return int(math.ldexp(value, -exponent)), exponent


@torch.compiler.disable
def run_eagerly(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, run eagerly also where ``torch.compile`` traces the caller (a graph break):
    the step of an optimizer whose update is not ``traceable_update``."""
    return fn(*args)


@torch.compiler.disable
def _eager_prologue(
    opt: AdaptimOptimizer,
) -> tuple[list[tuple[dict[str, Any], list[TensorBatch]]], list[tuple[int, int] | None]]:
    """Check the gradients, create states, advance the step counters and batch the parameters,
    eagerly, for a step that ``torch.compile`` traces; also return each group's ``lr`` as two ints.

    Run inside the traced frame, this bookkeeping would make dynamo guard on Python values that
    change every step: whether a state exists, the int step counters, and the float ``lr`` a
    scheduler sets. Dynamo turns a changing int into a symbolic int after one recompile, but it
    makes a float symbolic only while every use of it can be rewritten as a tensor operation (the
    "tensorify" pass); a float that reaches ``math.sqrt``, a ``value=``/``alpha=`` argument or a
    ``torch._foreach_*`` scalar is specialized instead, so each new ``lr`` recompiles. Handed over
    from this graph break as the two ints of ``lr == m * 2**e``, it is symbolic after one recompile
    and rebuilt exactly in the traced update, whatever the update does with it.
    """
    opt._check_gradients()
    prepared = [(group, opt._prepare_group(group)) for group in opt.param_groups]
    odd = opt.__dict__["_odd_lr_code"] = not opt.__dict__.get("_odd_lr_code", True)
    return prepared, [_float_code(group["lr"], odd) for group, _ in prepared]


class AdaptimOptimizer(Optimizer):
    """Base class: see the module docstring for what it provides."""

    #: rules checked for the defaults and every param group; merged over ``COMMON_RULES``
    hyperparameter_rules: ClassVar[Mapping[str, Rule]] = {}
    #: state tensors created as zeros shaped like the (working) parameter on its first step
    state_keys: ClassVar[tuple[str, ...]] = ()
    #: boolean option -> the zero-initialized state tensor it needs (e.g. amsgrad -> max_exp_avg_sq);
    #: created on the first step with the option on, also when it is switched on mid-run
    optional_state_keys: ClassVar[Mapping[str, str]] = {}
    #: the update is elementwise, so complex parameters can be handled as real views
    elementwise: ClassVar[bool] = True
    #: the multi-tensor update treats each tensor on its own (no reduction across the batch), so on
    #: CPU it runs over cache-sized chunks of the batch: a chunk's params, grads and states stay in
    #: cache across the update's passes instead of streaming every pass through memory
    cache_blocking: ClassVar[bool] = False
    #: with ``cache_blocking``: the multi-tensor update is elementwise inside each tensor too (no
    #: per-tensor reduction, no state entry assigned in ``_update``), so on CPU a contiguous tensor
    #: larger than a chunk is cut into flat pieces of about ``CPU_CHUNK_BYTES`` (see ``_chunks``)
    splits_tensors: ClassVar[bool] = False
    #: with ``cache_blocking``: chunks of ``CPU_CHUNK_BYTES / chunk_divisor`` parameter bytes, for an
    #: update that touches many more full-size tensors per parameter than Adam's four
    chunk_divisor: ClassVar[int] = 1
    #: checked on FSDP2-sharded (DTensor) parameters against a single-process run (tests/test_fsdp2.py);
    #: the others refuse DTensor parameters rather than risk a reduction over one shard only
    supports_dtensor: ClassVar[bool] = False
    #: ``maximize=True`` means ascending the objective; a rule for which that has no meaning (KOALA
    #: drives the loss to a target, whatever its sign) sets this to False and refuses the flag
    supports_maximize: ClassVar[bool] = True
    #: the update uses a statistic over all parameters (a global mean, norm or dot product): built by
    #: a ``ZeroRedundancyOptimizer`` on one rank's share of the parameters, the optimizer finds the
    #: partition (``core.distributed.zero_partition``) and must sum the statistic over it
    global_statistics: ClassVar[bool] = False
    #: with ``global_statistics``: the ZeRO partition this optimizer was built on, else ``None``
    partition: Partition | None = None
    #: ``torch.compile(opt.step)`` traces the update without recompiling at every step. False for an
    #: update that reads values back from the device every step (norms, maxima, decisions) and goes
    #: on computing with them in Python: after that graph break each new value would be a constant
    #: of the next graph, recompiled at every step. Such a step runs eagerly under torch.compile.
    traceable_update: ClassVar[bool] = True
    #: ``fused=True`` is correct on FSDP2 local shards. False for an update that reduces over each
    #: whole tensor inside the compiled function (norms, row and column statistics), which would see
    #: one shard only: ``fused=True`` on DTensor parameters is then refused before anything changes
    fused_on_shards: ClassVar[bool] = True
    #: the states that ``state_bits=8`` keeps as 8-bit block-wise codes (moment-like statistics
    #: only), each with its map: ``True`` signed (a state that can be negative), ``False`` unsigned.
    #: Empty: the class has no such state and refuses ``state_bits=8`` (core/state_precision.py)
    quantized_states: ClassVar[Mapping[str, bool]] = {}

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]) -> None:
        defaults.setdefault("maximize", False)
        defaults.setdefault("foreach", None)
        defaults.setdefault("fused", None)
        defaults.setdefault("state_bits", 32)
        self._validate(defaults, allow_required=True)
        if self.global_statistics:  # only these pay for the look at the callers' frames
            self.partition = zero_partition()
        super().__init__(params, defaults)

    # -- validation -------------------------------------------------------------------------------

    @classmethod
    def _rules(cls) -> dict[str, Rule]:
        return {**COMMON_RULES, **cls.hyperparameter_rules}

    def _validate(self, values: Mapping[str, Any], *, allow_required: bool = False) -> None:
        """Check ``values``; ``allow_required`` lets the defaults leave a hyperparameter ``required``
        (e.g. an ``lr`` with no default), which every param group must then give."""
        missing = [k for k, v in values.items() if v is required]
        if missing and not allow_required:
            raise ValueError(
                f"{type(self).__name__}: {missing[0]!r} has no default; give it to the constructor "
                f"(e.g. {missing[0]}=0.01) or in every param group"
            )
        if missing:
            values = {k: v for k, v in values.items() if v is not required}
        validate_hyperparameters(type(self).__name__, values, self._rules())
        self._validate_fused(values)
        if values.get("state_bits") == 8 and not self.quantized_states:
            raise ValueError(
                f"{type(self).__name__}: state_bits=8 is not available: it keeps no moment-like "
                "state that could be quantized (quantized_states is empty); use state_bits=32"
            )
        if not missing:
            self._validate_relations(values)

    def _validate_fused(self, values: Mapping[str, Any]) -> None:
        name = type(self).__name__
        if not values.get("fused"):
            return
        if values.get("foreach"):
            raise ValueError(f"{name}: fused=True and foreach=True cannot be set together")
        if not self.supports_fused():
            raise ValueError(
                f"{name}: fused=True is not available yet: {name} has no per-tensor update "
                "function to compile (supports_fused() is False); use fused=None or False (the "
                "eager multi-tensor path)"
            )

    @classmethod
    def supports_fused(cls) -> bool:
        """Whether ``fused=True`` is accepted: the class states its update as a per-tensor function
        (:meth:`_elementwise_update`)."""
        return cls._elementwise_update is not AdaptimOptimizer._elementwise_update

    def _validate_relations(self, values: Mapping[str, Any]) -> None:
        """Hook for rules that relate several hyperparameters; raise ``ValueError``."""

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if isinstance(param_group, dict):
            merged = {**self.defaults, **{k: v for k, v in param_group.items() if k != "params"}}
            self._validate(merged)
            if merged.get("fused"):
                params = param_group["params"]
                params = [params] if isinstance(params, torch.Tensor) else list(params)
                param_group = {**param_group, "params": params}
                for device in {p.device for p in params}:
                    reason = self._fused_unavailable_reason(device)
                    if reason is not None:
                        raise RuntimeError(f"{type(self).__name__}: fused=True: {reason}")
        super().add_param_group(param_group)

    def __setstate__(self, state: dict[str, Any]) -> None:
        had_differentiable = "differentiable" in state.get("defaults", {})
        super().__setstate__(state)
        self.defaults.setdefault("state_bits", 32)  # pickled before 8-bit states existed
        if not had_differentiable:  # torch adds this flag; adaptim steps are never differentiable
            self.defaults.pop("differentiable", None)
        # Old checkpoints keep loading: hyperparameters added later take their defaults.
        for group in self.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)
        self._note_quantized_states()

    def _saved_codes_keys(self) -> frozenset[str]:
        """The keys under which a saved state dict holds codes (``key_codes``)."""
        return frozenset(codes_key(k) for k in self.quantized_states)

    def _adopt_saved_state(self, state: dict[str, Any]) -> None:
        """Take a parameter's state as a state dict saved it (codes under ``key_codes``) into the
        live format, in place: ``ZeroRedundancyOptimizer.load_state_dict`` writes saved entries
        straight into the inner optimizer's ``state``, without its ``load_state_dict``."""
        adopted = loaded_state(state, self.quantized_states)
        state.clear()
        state.update(adopted)
        if isinstance(state.get("step"), torch.Tensor):  # torch.optim's format
            state["step"] = int(state["step"].item())
        self.__dict__["_quantized_before"] = True

    def _note_quantized_states(self) -> None:
        """Mark that some state is quantized (``_parts`` and ``state_dict`` look only where it
        is): a copy or an unpickled optimizer (torch pickles ``state`` and ``param_groups``, not
        the instance's other attributes) and a loaded one must decode its codes before its first
        step, which may not start with ``_prepare_group`` (KOALA-M's ``predict()``)."""
        if self.quantized_states and any(
            is_quantized(state, key)
            for state in self.state.values()
            for key in self.quantized_states
        ):
            self.__dict__["_quantized_before"] = True

    def state_dict(self) -> dict[str, Any]:
        """``torch.optim``'s state dict, with each 8-bit state saved as ``key_codes`` (uint8) and
        ``key_absmax`` (float32), never under ``key``: a checkpoint of the other precision then
        fails to load into a template state dict (``torch.distributed.checkpoint``) instead of
        casting codes to numbers. The 8-bit states of sharded (FSDP2) parameters keep 8 bits
        where each row of the parameter is whole blocks (the absmax is then a DTensor sharded as
        the codes); others are given as float32 DTensors and quantized again on loading
        (:func:`~adaptim.core.state_precision.saved_state`)."""
        state_dict = super().state_dict()
        if not self.__dict__.get("_quantized_before"):
            return state_dict
        states = state_dict["state"]
        for pid, state in states.items():
            if any(is_quantized(state, k) for k in self.quantized_states):
                # torch's state dict shares the live dicts: a new one
                states[pid] = saved_state(state, self.quantized_states)
        return state_dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict; floating state tensors take the working dtype of their parameter.

        The working dtype is the parameter's own, except for bf16/fp16 parameters, whose states stay
        fp32 (``torch.optim.Optimizer`` would round them to bf16), and complex ones, whose states are
        real views. So a checkpoint taken with fp64 parameters continues in fp32 when loaded into the
        same model in fp32, as with ``torch.optim``; integer tensors (codes, counters) keep their
        dtype. A tensor ``step`` (``torch.optim``'s format) becomes the int adaptim counts with. A
        state dict from another optimizer is refused before anything changes.

        ``state_bits`` stays this optimizer's (per group), whatever the checkpoint's was: a 32-bit
        checkpoint loaded into an 8-bit optimizer is quantized, an 8-bit one loaded with 32 bits is
        decoded (and block absmaxes stay float32 whatever the parameter's dtype).
        """
        if self.quantized_states:  # 8-bit states saved under their own keys: back under theirs
            state_dict = {
                **state_dict,
                "state": {
                    pid: loaded_state(state, self.quantized_states)
                    for pid, state in state_dict["state"].items()
                },
            }
        self._check_state_dict_kind(state_dict)
        # state precision is this optimizer's choice, as ``foreach`` is, not the checkpoint's
        bits = [group["state_bits"] for group in self.param_groups]
        super().load_state_dict(state_dict)
        for group, group_bits in zip(self.param_groups, bits, strict=True):
            group["state_bits"] = group_bits
        saved = state_dict["state"]
        params = [p for g in self.param_groups for p in g["params"]]
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        for param, pid in zip(params, saved_ids, strict=True):
            if pid not in saved:
                continue
            loaded = self.state[param]
            dtype = _working_dtype(param)
            saved_state = saved[pid]
            # a quantized state's block absmax stays float32 whatever the parameter's dtype
            absmaxes = {
                absmax_key(k) for k in self.quantized_states if is_quantized(saved_state, k)
            }
            for key, value in saved_state.items():
                if not isinstance(value, torch.Tensor):
                    continue
                if key == "step":
                    loaded[key] = int(value.item())
                elif value.is_floating_point() and key not in absmaxes:
                    loaded[key] = value.to(device=param.device, dtype=dtype, copy=True)
                else:
                    loaded[key] = value.to(device=param.device, copy=True)
        # a 32-bit checkpoint loaded with state_bits=8 is quantized, an 8-bit one with 32 decoded
        for group in self.param_groups:
            for param in group["params"]:
                if self.state.get(param):
                    self._set_state_precision(group, param, self.state[param])
        self._note_quantized_states()

    def _check_state_dict_kind(self, state_dict: Mapping[str, Any]) -> None:
        """Refuse a state dict that another optimizer wrote: its param groups have other
        hyperparameters, or a parameter's state lacks a tensor this optimizer keeps (it would fail
        with a bare ``KeyError`` at the next step)."""
        name = type(self).__name__
        saved_groups = state_dict.get("param_groups", [])
        saved_state = state_dict.get("state", {})
        for group in saved_groups:
            optional = ("foreach", "fused", "state_bits")
            missing = [k for k in self.defaults if k not in group and k not in optional]
            unknown = [
                k for k in group if k not in self.defaults and k not in ("params", "param_names")
            ]
            if unknown and missing:
                raise ValueError(
                    f"{name}.load_state_dict: the state dict comes from another optimizer "
                    f"({_guess_origin(group)}), not {name} (unknown hyperparameters "
                    f"{sorted(unknown)}, missing {sorted(missing)})"
                )
        if len(saved_groups) != len(self.param_groups):
            return  # torch's own check names the mismatch
        for group, saved_group in zip(self.param_groups, saved_groups, strict=True):
            options = {**group, **{k: v for k, v in saved_group.items() if k != "params"}}
            for param, pid in zip(group["params"], saved_group.get("params", []), strict=False):
                state = saved_state.get(pid)
                if not state or is_dtensor(param):
                    continue
                needed = self._expected_state_keys(options, param)
                lacking = sorted(needed - set(state))
                if lacking:
                    raise ValueError(
                        f"{name}.load_state_dict: the state dict comes from another optimizer "
                        f"({_guess_origin(saved_group)}), not {name}: the state of parameter {pid} "
                        f"has {sorted(state)} but {name} needs {lacking} too"
                    )

    def _expected_state_keys(self, group: Mapping[str, Any], param: torch.Tensor) -> set[str]:
        """The keys a parameter's state has after its first step (created on a meta tensor)."""
        working = torch.empty(param.shape, dtype=_working_dtype(param), device="meta")
        if param.dtype in COMPLEX:
            working = torch.empty((*param.shape, 2), dtype=working.dtype, device="meta")
        state: dict[str, Any] = {}
        self._init_state(group, working, state)
        keys = {"step", *state}
        keys.update(key for option, key in self.optional_state_keys.items() if group.get(option))
        return keys

    # -- the step ---------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one optimization step; ``closure`` re-evaluates the model and returns the loss."""
        if torch.compiler.is_compiling() and not self.traceable_update:
            return run_eagerly(self.step, closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if torch.compiler.is_compiling():
            # The graph break must be in this frame: a float built from the ints and handed to a
            # frame of its own (after a graph break in a called function) would be guarded again.
            prepared, codes = _eager_prologue(self)
            originals = [group for group, _ in prepared]
            prepared = [
                (group if code is None else {**group, "lr": code[0] * 2.0 ** code[1]}, batches)
                for (group, batches), code in zip(prepared, codes, strict=True)
            ]
        else:
            self._check_gradients()
            prepared = [(group, self._prepare_group(group)) for group in self.param_groups]
            originals = []
        self._before_update(prepared)
        compiling = torch.compiler.is_compiling()
        for group, batches in prepared:
            foreach = self._use_foreach(group)
            for batch in batches:
                for part in self._decoded_parts(batch):
                    self._update_batch(group, part, foreach, compiling)
                batch.write_back()
        # under torch.compile the update saw copies of the groups with the rebuilt lr: keep
        # anything else it set in them (MADA learns hyperparameters)
        for original, (group, _) in zip(originals, prepared, strict=False):
            if group is not original:
                original.update(
                    (k, v) for k, v in group.items() if k != "lr" and original[k] is not v
                )
        return loss

    def _update_batch(
        self, group: dict[str, Any], batch: TensorBatch, foreach: bool, compiling: bool
    ) -> None:
        if not compiling and self._use_fused(group, batch):
            self._fused_update(group, batch)
        elif foreach or compiling:
            for part in self._chunks(batch) if self.cache_blocking else (batch,):
                self._update(group, part, foreach=True)
        else:
            self._per_tensor_update(group, batch)

    def _chunks(self, batch: TensorBatch) -> list[TensorBatch]:
        """Split a CPU batch into runs of tensors of at most ``CPU_CHUNK_BYTES / chunk_divisor`` bytes
        (a larger tensor is a chunk of its own, or, with ``splits_tensors``, cut into flat pieces). Sizes are
        global (a DTensor's ``numel`` is its full size), so all ranks of a sharded run cut the batch
        at the same places. The result is bit-identical to one pass over the whole batch; on CPU it is
        about twice as fast for large tensors."""
        if batch.params[0].device.type != "cpu":
            return [batch]
        if len(batch.params) < 2 and not self.splits_tensors:
            return [batch]
        chunk_bytes = max(1, CPU_CHUNK_BYTES // self.chunk_divisor)
        parts, start, size = [], 0, 0
        for i, p in enumerate(batch.params):
            nbytes = p.numel() * p.element_size()
            split = self.splits_tensors and nbytes > chunk_bytes
            pieces = _flat_pieces(batch, i, chunk_bytes) if split else []
            if pieces:
                if i > start:
                    parts.append(batch.slice(start, i))
                parts += pieces
                start, size = i + 1, 0
                continue
            if size and size + nbytes > chunk_bytes:
                parts.append(batch.slice(start, i))
                start, size = i, 0
            size += nbytes
        if start < len(batch.params):
            parts.append(batch.slice(start, len(batch.params)))
        return parts

    def _use_foreach(self, group: Mapping[str, Any]) -> bool:
        return group["foreach"] is not False

    def _use_fused(self, group: Mapping[str, Any], batch: TensorBatch) -> bool:
        """``fused=True``, checked against the batch's device; ``None`` is the eager path (a
        subclass with a kernel that needs no compilation may choose it, see Adam)."""
        if not group["fused"]:
            return False
        reason = self._fused_unavailable_reason(batch.params[0].device)
        if reason is not None:
            raise RuntimeError(f"{type(self).__name__}: fused=True: {reason}")
        return True

    def _fused_unavailable_reason(self, device: torch.device) -> str | None:
        """Why ``fused=True`` cannot run on ``device`` (no compiler, no Triton), or ``None``."""
        return fused_unavailable_reason(device)

    # -- elementwise updates: one function, run eagerly per tensor or compiled (core/fused.py) ------

    def _elementwise_update(
        self, group: Mapping[str, Any]
    ) -> tuple[Callable[..., None], tuple[str | None, ...]]:
        """The update as ``(fn, state_keys)`` for an algorithm that is elementwise given per-step
        scalars: ``fn(params, grads, *states, **self._step_scalars(group, step))`` updates lists of
        tensors in place, its states passed in the order of ``state_keys`` (``None`` passes
        ``None``, for an optional state that is off). The per-tensor path (``foreach=False``) calls
        it with Python floats, ``fused=True`` compiles it with the floats as 0-dim tensors, so its
        body must take either: no ``math``, no Python branch on a float, and a 0-dim tensor as
        ``alpha=``/``value=``/weight only of ``add_``, ``addcmul_``, ``addcdiv_`` and ``lerp_``
        (torch 2.13's compile bakes the first value of that tensor into the graph, unguarded, for
        out-of-place ops and for ``sub_``: write ``a + b * s`` or ``add_(x, alpha=-s)``;
        tests/test_fused.py varies every scalar between groups and steps to catch it). It also
        drops in-place writes into a 0-dim float64 CPU tensor given as an input (``copy_``,
        ``fill_``): write such a per-tensor result with ``out[()] = value`` (adaptive_hb.py).
        Without ``splits_tensors`` the function gets whole tensors (it may reduce over each);
        with it, flat pieces. Not overridden: the class has no such form (no ``fused=True``)."""
        raise NotImplementedError

    def _step_scalars(self, group: Mapping[str, Any], step: int) -> dict[str, Any]:
        """The scalars ``fn`` of :meth:`_elementwise_update` takes at step ``step``: floats (0-dim
        tensors when fused) and flags (static: one graph per value)."""
        raise NotImplementedError

    def _run_elementwise(self, group: dict[str, Any], batch: TensorBatch, *, fused: bool) -> None:
        fn, keys = self._elementwise_update(group)
        lists = batch.local(*[k for k in keys if k is not None])
        states = iter(lists[2:])
        ordered = [None if k is None else next(states) for k in keys]
        run_elementwise(
            fn,
            [lists[0], lists[1], *self._in_roles(ordered, batch.steps)],
            batch.steps,
            lambda step: self._step_scalars(group, step),
            fused=fused,
            split=self.splits_tensors,
            # not an attribute set in __init__: an unpickled or copied optimizer has none yet
            plans=self.__dict__.setdefault("_fused_plans", {}),
        )

    def _in_roles(
        self, states: list[list[torch.Tensor] | None], steps: list[int]
    ) -> list[list[torch.Tensor] | None]:
        """The state lists of :meth:`_run_elementwise` in the roles the update takes them at these
        steps; by default in the order of :meth:`_elementwise_update`'s keys. Overridden where
        buffers swap roles with the step (PNM's two momenta): swapping the lists, rather than
        branching on the step inside the update, keeps one compiled graph for every step."""
        return states

    def _per_tensor_outputs(self, batch: TensorBatch, dtype: torch.dtype) -> list[torch.Tensor]:
        """A 0-dim tensor of ``dtype`` per tensor of ``batch``, on its device, into which an update
        writes a per-tensor result (a norm, a ratio; see ``_elementwise_update``). The same tensors
        at every step for the same batch, keyed by its first tensor's state dict (the real one
        under 8-bit states, whose parts see it through a view made anew at each step) and where
        that tensor starts in its storage (a flat piece of a larger tensor). A caller that reads
        the results after the step's next batch ran (the adaptive heavy ball's step norms) keeps
        the batch's states alive until then, so that no later batch of the step gets the same
        key. New 0-dim tensors at every step cost 3-10 ms a step on 2,000 tensors of 1,000
        (fused, side by side: KOALA-V 60.8 -> 57.5 ms, AHB-SGD 112.4 -> 102.1). Not saved:
        ``torch.optim.Optimizer``'s ``__getstate__`` keeps only the defaults, the state and the
        param groups."""
        first = batch.states[0]
        device = batch.params[0].device
        key = (
            id(getattr(first, "_real", first)),
            batch.params[0].storage_offset(),
            len(batch.states),
            dtype,
            device,
        )
        cache = self.__dict__.setdefault("_per_tensor_outputs_cache", {})
        outputs = cache.get(key)
        if outputs is None:
            if len(cache) >= _MAX_OUTPUT_SETS:
                cache.clear()
            outputs = cache[key] = [
                torch.empty((), dtype=dtype, device=device) for _ in batch.states
            ]
        return outputs

    def _per_tensor_update(self, group: dict[str, Any], batch: TensorBatch) -> None:
        if self.supports_fused():
            self._run_elementwise(group, batch, fused=False)
        else:
            self._update(group, batch, foreach=False)

    def _fused_update(self, group: dict[str, Any], batch: TensorBatch) -> None:
        self._run_elementwise(group, batch, fused=True)

    def _check_gradients(self) -> None:
        """Refuse what the algorithm cannot handle before any state changes."""
        module = sys.modules.get("torch.distributed.tensor")
        dtensor: type | tuple[()] = () if module is None else module.DTensor  # (): no class
        strided, elementwise = torch.strided, self.elementwise
        for gi, group in enumerate(self.param_groups):
            # sharded parameters, where the class is not verified on them or where its fused
            # update would reduce over one shard of each tensor
            no_shards = module is not None and (
                not self.supports_dtensor or (not self.fused_on_shards and bool(group["fused"]))
            )
            for pi, p in enumerate(group["params"]):
                grad = p.grad
                if grad is None:
                    continue
                # One cheap test per parameter on the hot path; the messages are built on failure.
                if (
                    grad.layout is not strided
                    or (not elementwise and p.dtype in COMPLEX)
                    or (no_shards and isinstance(p, dtensor))
                ):
                    self._refuse(gi, pi, p)

    def _refuse(self, gi: int, pi: int, p: torch.Tensor) -> None:
        name = type(self).__name__
        dtensor = sys.modules.get("torch.distributed.tensor")
        sharded = dtensor is not None and isinstance(p, dtensor.DTensor)
        if sharded and not self.supports_dtensor:
            raise TypeError(
                f"{name} is not yet verified on sharded (DTensor, FSDP2) parameters (param "
                f"group {gi}, parameter {pi}); the optimizers that are have "
                "supports_dtensor = True"
            )
        if sharded and not self.fused_on_shards and self.param_groups[gi]["fused"]:
            raise TypeError(
                f"{name}: fused=True does not support sharded (DTensor, FSDP2) parameters "
                f"(param group {gi}): its update reduces over each whole tensor, and the "
                "compiled update would see one shard of it; use fused=None or False (the eager "
                "paths reduce over the shards)"
            )
        grad = p.grad
        assert grad is not None  # _check_gradients refuses only parameters with a gradient
        if grad.layout is not torch.strided:
            raise TypeError(
                f"{name} does not support sparse gradients (param group {gi}, parameter "
                f"{pi}, layout {grad.layout}); use dense gradients, e.g. "
                "nn.Embedding(sparse=False), or torch.optim.SparseAdam"
            )
        raise TypeError(
            f"{name} does not support complex parameters (param group {gi}, parameter "
            f"{pi}): its update is not elementwise, so real and imaginary parts "
            "cannot be treated as independent coordinates"
        )

    def _prepare_group(self, group: dict[str, Any]) -> list[TensorBatch]:
        """Create missing state, advance step counters, and bucket by (device, working dtype)."""
        # The key holds whether the bucket's params are fp32 copies: a bf16 parameter's working
        # copy has the dtype of a real fp32 parameter, but only the copy must be written back.
        buckets: dict[tuple[int, torch.dtype, bool], TensorBatch] = {}
        states = self.state
        optional = [key for option, key in self.optional_state_keys.items() if group[option]]
        bits8 = group["state_bits"] == 8
        if bits8:
            self.__dict__["_quantized_before"] = True
        quantized_before = self.__dict__.get("_quantized_before", False)
        saved_keys = self._saved_codes_keys()
        for p in group["params"]:
            grad = p.grad
            if grad is None:
                continue
            working, dtype = p, p.dtype
            if dtype in COMPLEX:
                working, grad = torch.view_as_real(p), torch.view_as_real(grad)
                dtype = working.dtype
            original = working  # what a working copy is written back into (a real view if complex)
            copied = dtype in LOW_PRECISION
            if copied:
                working, grad, dtype = working.float(), grad.float(), torch.float32
            state = states[p]
            if not state:
                state["step"] = 0
                self._init_state(group, working, state)
            elif saved_keys and not saved_keys.isdisjoint(state):
                self._adopt_saved_state(state)
                quantized_before = True
            for key in optional:  # an option switched on mid-run gets its state now
                if key not in state:
                    state[key] = torch.zeros_like(working, memory_format=torch.preserve_format)
            if bits8 or quantized_before:
                self._set_state_precision(group, p, state)
            state["step"] += 1
            bucket_key = (p.get_device(), dtype, copied)
            batch = buckets.get(bucket_key)
            if batch is None:
                batch = buckets[bucket_key] = TensorBatch([], [], [], [], copied)
            batch.params.append(working)
            batch.grads.append(grad)
            batch.states.append(state)
            batch.originals.append(original)
        batches = list(buckets.values())
        if group["maximize"]:
            for batch in batches:
                batch.grads = list(torch._foreach_neg(batch.grads))
        return batches

    def _init_state(
        self, group: Mapping[str, Any], param: torch.Tensor, state: dict[str, Any]
    ) -> None:
        """Create the state of one parameter; ``param`` is its working tensor (fp32 for bf16/fp16)."""
        for key in self.state_keys:
            state[key] = torch.zeros_like(param, memory_format=torch.preserve_format)

    def _set_state_precision(
        self, group: Mapping[str, Any], param: torch.Tensor, state: dict[str, Any]
    ) -> None:
        """Quantize or decode the declared states of ``param`` to its group's ``state_bits``
        (a group switched mid-run, a checkpoint of the other precision). 8-bit states are kept for
        parameters of at least ``MIN_QUANTIZED_NUMEL`` elements whose working dtype is float32
        (float64 parameters keep float64 states: 8 bits would undo what they are for)."""
        dtype = _working_dtype(param)
        want = group["state_bits"] == 8 and dtype == torch.float32 and quantizes(param)
        for key, signed in self.quantized_states.items():
            if key not in state:
                continue
            if is_quantized(state, key):
                if not want:
                    dequantize_state_(state, key, signed, dtype)
            elif want:
                quantize_state_(state, key, signed)

    def _unwritten_states(self, state: Mapping[str, Any]) -> tuple[str, ...]:
        """The quantized states of a parameter (its state dict, the step counter already advanced)
        that this step's update reads but does not write: they are not encoded again (PNM's buffer
        of the other parity)."""
        return ()

    def _decoded_parts(
        self, batch: TensorBatch, keys: tuple[str, ...] | None = None
    ) -> Iterator[TensorBatch]:
        """``batch`` itself, or, when some of its states are 8-bit, the parts it runs in, one at a
        time: each part's states are decoded before it is yielded and encoded when the caller asks
        for the next (a part's float32 states are all that is decoded at once). ``keys``: decode
        only these states (and encode them again), for a pass that reads no other."""
        parts = []
        if self.quantized_states and self.__dict__.get("_quantized_before"):
            parts = plan_parts(
                batch.params,
                batch.grads,
                batch.states,
                self.quantized_states,
                split=self.splits_tensors,
                keys=keys,
                unwritten=self._unwritten_states,
            )
        if not parts:
            yield batch
            return
        if torch.compiler.is_compiling():
            # every take is a fresh tensor; and a try here broke torch.compile(opt.step)
            # (functionalization of the update's in-place kernel)
            yield from _in_turn(parts, batch.copied)
            return
        try:
            yield from _in_turn(parts, batch.copied)
        finally:  # also when the update raised: no large buffer kept past the batch
            release_large_scratch()

    def _before_update(self, prepared: list[tuple[dict[str, Any], list[TensorBatch]]]) -> None:
        """Hook for algorithms that need statistics over all groups (e.g. a global gradient norm)."""

    def _update(self, group: dict[str, Any], batch: TensorBatch, foreach: bool) -> None:
        raise NotImplementedError

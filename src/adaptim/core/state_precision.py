"""8-bit block-wise optimizer states: which states are kept as codes, and how an update sees them.

Method: Dettmers, Lewis, Shleifer, Zettlemoyer, "8-bit Optimizers via Block-wise Quantization", ICLR
2022, arXiv 2110.02861; reference implementations bitsandbytes
(github.com/bitsandbytes-foundation/bitsandbytes, ``optim/optimizer.py``) and torchao
(github.com/pytorch/ao, ``torchao/optim``). The codec (maps, exact encoding, blocks of 256) is
:mod:`adaptim.core.quantization`; this module is the part every optimizer shares.

**State precision is a property of the state, chosen per param group** (``state_bits``: 32, the
default, or 8), not of the algorithm: an optimizer only declares which of its states are moment-like
statistics that may be quantized, with the map each takes (``quantized_states = {"exp_avg": True,
"exp_avg_sq": False}``: signed map for states that can be negative, unsigned for the others). Copies
of parameters or gradients, factored statistics, products and scalars are never declared, so they
stay in the working dtype.

**Storage.** A quantized state ``key`` of a parameter is two plain tensors in its state dict:
``state[key]``, uint8 codes shaped (and strided) like the parameter's working tensor, and
``state[key + "_absmax"]``, the float32 absmax of each block of :data:`~adaptim.core.quantization.BLOCK`
elements, taken in memory order. A checkpoint is therefore uint8 and float32 tensors only
(``torch.load(weights_only=True)``); 1 + 4/256 bytes per element. Parameters with fewer than
:data:`~adaptim.core.quantization.MIN_QUANTIZED_NUMEL` elements (their global size, for an FSDP2
shard too) keep working-dtype states, as in both references.

**The update is unchanged.** A batch with quantized states runs in parts of at most
:func:`part_elements` quantized elements: each part's states are decoded into float32 tensors
(one per state and tensor: the fused engine wants no two of a call's tensors on one storage;
reused scratch on a CPU, see :class:`_Scratch`), the
optimizer's own update runs on the part exactly as on fp32 states (multi-tensor, per-tensor or
fused), and the part is encoded back. A tensor larger than a part is cut into flat pieces at block
boundaries when the update is elementwise inside tensors (``splits_tensors``); otherwise it is
decoded whole. Peak extra memory: a part's float32 states, never a model's (bitsandbytes' CPU path
decodes every state of the model at once).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch._dynamo
from torch.fx.experimental import _config as fx_config

from adaptim.core.distributed import is_dtensor
from adaptim.core.quantization import (
    BLOCK,
    MIN_QUANTIZED_NUMEL,
    _describe,
    dequantize_blocks,
    dequantize_blockwise,
    num_blocks,
    quantize_blocks,
    quantize_blockwise,
)

__all__ = [
    "STATE_BITS",
    "Part",
    "absmax_key",
    "codes_key",
    "dequantize_state_",
    "dequantized_state_dict",
    "is_quantized",
    "loaded_state",
    "part_elements",
    "quantize_state_",
    "quantizes",
    "release_large_scratch",
    "saved_state",
    "zero_state_",
]

#: the accepted values of ``state_bits``
STATE_BITS = (32, 8)
#: quantized elements per part on CPU: 2 MB of float32 per state, so a part's decoded states, its
#: parameters and gradients stay in cache between decoding, the update and encoding
CPU_PART_ELEMENTS = 2**19
#: on a GPU: large enough that the kernels of a part fill the device
GPU_PART_ELEMENTS = 2**24


def absmax_key(key: str) -> str:
    """The state-dict key of the block absmax of quantized state ``key``."""
    return f"{key}_absmax"


def quantizes(param: torch.Tensor) -> bool:
    """Whether a parameter's states are quantized with ``state_bits=8``: its global size (the full
    tensor's, for an FSDP2 shard) is at least ``MIN_QUANTIZED_NUMEL``."""
    return param.numel() >= MIN_QUANTIZED_NUMEL


def is_quantized(state: Mapping[str, Any], key: str) -> bool:
    value = state.get(key)
    return isinstance(value, torch.Tensor) and value.dtype == torch.uint8


def part_elements(device: torch.device) -> int:
    return CPU_PART_ELEMENTS if device.type == "cpu" else GPU_PART_ELEMENTS


def _memory_order(t: torch.Tensor) -> torch.Tensor:
    """A dense tensor's elements as a 1-D view in memory order (``view(-1)`` when contiguous; a
    channels-last or transposed state is permuted to its memory order first)."""
    if t.is_contiguous():
        return t.view(-1)
    order = sorted(range(t.dim()), key=lambda d: (-t.stride()[d], -t.shape[d]))
    permuted = t.permute(order)
    if not permuted.is_contiguous():
        raise ValueError(
            f"an 8-bit state needs a dense tensor; got shape {tuple(t.shape)}, stride {t.stride()}"
        )
    return permuted.reshape(-1)


# --- the codec, compiled where Inductor can ----------------------------------------------------------

_codecs: dict[tuple[str, bool], tuple[Callable[..., Any], Callable[..., Any]]] = {}


def _codec(device: torch.device, signed: bool) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """``(quantize, dequantize)`` for ``device`` and one map, with the signatures of
    ``quantize_blockwise(x, out=(codes, absmax))`` and ``dequantize_blockwise(codes, absmax,
    out=values)`` (1-D, starting at a block boundary). Where Inductor can run, the whole blocks go
    through ``quantize_blocks`` / ``dequantize_blocks`` compiled once over ``(n, BLOCK)`` shapes with
    ``n`` dynamic (the lookup-free codec, vectorized, about 4 ns per element on one CPU thread;
    compiling the flat functions instead, with the block count symbolic, left a copy with index
    arithmetic that ran 4x slower), and a partial last block through the eager table codec. On a
    CPU the native codec (:mod:`adaptim.core.native_codec`, a C loop built on first use) comes
    first: the same codes, 3-4x faster than Inductor's, and no compile to wait for. Without a
    compiler everything takes the eager table codec (its ``searchsorted`` encoder is much slower,
    but needs nothing)."""
    if torch.compiler.is_compiling():
        # traced as part of a compiled step (torch.compile(opt.step)): opaque ops that run this
        # eager codec. Inlined, the arithmetic codec (about 30 ops per call, two calls per state
        # and part) made an 8-bit AdamW step over four small tensors a graph that took 11 minutes
        # to compile on 2 CPU cores; and the native codec is 3-4x faster than Inductor's anyway.
        return _TRACED_CODECS[signed]
    key = (device.type, signed)
    codec = _codecs.get(key)
    if codec is None:
        from adaptim.core import native_codec
        from adaptim.core.fused import fused_unavailable_reason

        if device.type == "cpu" and native_codec.available():
            codec = native_codec.state_codec(signed)
        elif fused_unavailable_reason(device) is None:
            codec = _compiled_codec(signed)
        else:
            codec = (
                functools.partial(quantize_blockwise, signed=signed),
                functools.partial(dequantize_blockwise, signed=signed),
            )
        _codecs[key] = codec
    return codec


@torch.library.custom_op("adaptim::quantize_state_blocks_", mutates_args=("codes", "absmax"))
def _quantize_op(x: torch.Tensor, codes: torch.Tensor, absmax: torch.Tensor, signed: bool) -> None:
    quantize, _ = _codec(x.device, signed)
    quantize(x, out=(codes, absmax))


@_quantize_op.register_fake
def _(x: torch.Tensor, codes: torch.Tensor, absmax: torch.Tensor, signed: bool) -> None:
    return None


@torch.library.custom_op("adaptim::dequantize_state_blocks_", mutates_args=("out",))
def _dequantize_op(
    codes: torch.Tensor, absmax: torch.Tensor, out: torch.Tensor, signed: bool
) -> None:
    _, dequantize = _codec(codes.device, signed)
    dequantize(codes, absmax, out=out)


@_dequantize_op.register_fake
def _(codes: torch.Tensor, absmax: torch.Tensor, out: torch.Tensor, signed: bool) -> None:
    return None


def _traced_codec(signed: bool) -> tuple[Callable[..., Any], Callable[..., Any]]:
    def quantize(x: torch.Tensor, out: tuple[torch.Tensor, torch.Tensor]) -> None:
        _quantize_op(x, out[0], out[1], signed)

    def dequantize(codes: torch.Tensor, absmax: torch.Tensor, out: torch.Tensor) -> None:
        _dequantize_op(codes, absmax, out, signed)

    return quantize, dequantize


_TRACED_CODECS = {signed: _traced_codec(signed) for signed in (False, True)}


def _compiled_codec(signed: bool) -> tuple[Callable[..., Any], Callable[..., Any]]:
    quantize_full = _compiled(functools.partial(quantize_blocks, signed=signed))
    dequantize_full = _compiled(functools.partial(dequantize_blocks, signed=signed))

    def quantize(x: torch.Tensor, out: tuple[torch.Tensor, torch.Tensor]) -> None:
        codes, absmax = out
        full = x.numel() // BLOCK
        if full:
            n = full * BLOCK
            quantize_full(x[:n].view(full, BLOCK), codes[:n].view(full, BLOCK), absmax[:full])
        if full * BLOCK < x.numel():
            quantize_blockwise(
                x[full * BLOCK :], signed=signed, out=(codes[full * BLOCK :], absmax[full:])
            )

    def dequantize(codes: torch.Tensor, absmax: torch.Tensor, out: torch.Tensor) -> None:
        full = codes.numel() // BLOCK
        if full:
            n = full * BLOCK
            dequantize_full(codes[:n].view(full, BLOCK), absmax[:full], out[:n].view(full, BLOCK))
        if full * BLOCK < codes.numel():
            dequantize_blockwise(
                codes[full * BLOCK :], absmax[full:], signed=signed, out=out[full * BLOCK :]
            )

    return quantize, dequantize


def _compiled(fn: Callable[..., Any]) -> Callable[..., Any]:
    compiled = torch.compile(fn, dynamic=True, fullgraph=True)

    from adaptim.core.fused import _RECOMPILE_LIMITS

    def run(*args: Any) -> Any:
        # both maps share the code objects (and dynamo's cache) of the two codec functions
        with (
            fx_config.patch(use_duck_shape=False),  # type: ignore[attr-defined]
            torch._dynamo.config.patch(_RECOMPILE_LIMITS),
        ):
            return compiled(*args)

    return run


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if is_dtensor(t) else t


def _like(codes: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``values`` (the decoded local tensor) as a DTensor placed as ``codes`` is, when it is one:
    an FSDP2 update sees its states as DTensors, as with 32 bits."""
    if not is_dtensor(codes):
        return values
    from torch.distributed.tensor import DTensor

    return DTensor.from_local(
        values, codes.device_mesh, codes.placements, shape=codes.shape, stride=codes.stride()
    )


def quantize_state_(state: dict[str, Any], key: str, signed: bool) -> None:
    """Replace the floating state ``state[key]`` by its codes and block absmax."""
    value = state[key]
    local = _local(value)
    codes = torch.empty_like(local, dtype=torch.uint8)
    absmax = torch.empty(num_blocks(local.numel()), dtype=torch.float32, device=local.device)
    quantize, _ = _codec(local.device, signed)
    quantize(_memory_order(local).float(), out=(_memory_order(codes), absmax))
    if is_dtensor(value):
        from torch.distributed.tensor import DTensor

        codes = DTensor.from_local(
            codes, value.device_mesh, value.placements, shape=value.shape, stride=value.stride()
        )
    state[key] = codes
    state[absmax_key(key)] = absmax


def dequantize_state_(
    state: dict[str, Any], key: str, signed: bool, dtype: torch.dtype = torch.float32
) -> None:
    """Replace the codes of ``state[key]`` by the decoded state in ``dtype``."""
    codes = state[key]
    local = _local(codes)
    absmax = state.pop(absmax_key(key))
    decoded = torch.empty_like(local, dtype=torch.float32)
    _, dequantize = _codec(local.device, signed)
    dequantize(_memory_order(local), absmax, out=_memory_order(decoded))
    decoded = decoded.to(dtype)
    if is_dtensor(codes):
        from torch.distributed.tensor import DTensor

        decoded = DTensor.from_local(
            decoded, codes.device_mesh, codes.placements, shape=codes.shape, stride=codes.stride()
        )
    state[key] = decoded


def zero_state_(state: dict[str, Any], key: str, signed: bool) -> None:
    """Set a state to zeros, quantized or not (zeroing codes alone would not: code 0 of the signed
    map is its most negative value; an absmax of 0 decodes every code of a block to 0)."""
    if is_quantized(state, key):
        zero_code = 127 if signed else 0
        _local(state[key]).fill_(zero_code)
        state[absmax_key(key)].zero_()
    else:
        state[key].zero_()


# --- parts of a batch, decoded for the update ---------------------------------------------------------


class _Scratch:
    """Float32 buffers for decoded states, reused from part to part and step to step on a CPU.

    A fresh multi-megabyte tensor per part and state comes from the kernel as untouched pages; the
    first write to each page faults, and decoding into fresh tensors took three times as long as
    into reused ones (an 8-bit AdamW step over 44.6M parameters: about 50 of its 180 ms). A part
    takes one buffer per decoded state (each its own storage, as the fused engine wants) and gives
    them back after encoding. Buffers of at most ``CPU_PART_ELEMENTS`` elements are kept, up to
    ``_SCRATCH_BYTES`` in all. A larger one (a whole tensor above a part, for an update that
    needs whole tensors) is kept only until the end of its batch's parts (:meth:`release_large`),
    for the next large tensor of the batch to decode into: a model-sized amount of fresh pages at
    every step made Adai's 8-bit decoding five times slower per element than AdamW's, and the
    batch's peak stays its largest tensor's decoded states, as without reuse. Elsewhere (a GPU has
    its caching allocator) and under ``torch.compile`` every take is a fresh tensor."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self.kept_bytes = 0
        self.free: dict[int, list[torch.Tensor]] = {}
        #: whole-storage buffers above a part, given back during the current batch
        self.large: list[torch.Tensor] = []
        self.lock = threading.Lock()

    def take(self, numel: int, device: torch.device) -> torch.Tensor:
        if device.type == "cpu" and not torch.compiler.is_compiling():
            with self.lock:
                buffers = self.free.get(numel)
                if buffers:
                    self.kept_bytes -= 4 * numel
                    return buffers.pop()
                if numel > CPU_PART_ELEMENTS:
                    fits = [i for i, b in enumerate(self.large) if b.numel() >= numel]
                    if not fits:
                        # none is large enough: free them before allocating, so that the peak
                        # stays one tensor's decoded states
                        self.large.clear()
                    else:
                        buffer = self.large.pop(min(fits, key=lambda i: self.large[i].numel()))
                        # not a view (the fused engine re-plans batches that hold views)
                        return buffer.new_empty(0).set_(buffer.untyped_storage(), 0, (numel,), (1,))
        return torch.empty(numel, dtype=torch.float32, device=device)

    def give(self, values: torch.Tensor) -> None:
        numel = values.numel()
        if values.device.type != "cpu" or torch.compiler.is_compiling():
            return
        if numel > CPU_PART_ELEMENTS:
            storage = values.untyped_storage()
            whole = values.new_empty(0).set_(storage, 0, (storage.nbytes() // 4,), (1,))
            with self.lock:
                self.large.append(whole)
            return
        with self.lock:
            if self.kept_bytes + 4 * numel <= self.limit_bytes:
                self.free.setdefault(numel, []).append(values.view(-1))
                self.kept_bytes += 4 * numel

    def release_large(self) -> None:
        """Free the buffers above a part (the end of a batch's parts)."""
        with self.lock:
            self.large.clear()


#: the most bytes of decoded-state scratch kept between parts: a part's worth of three states, twice
_SCRATCH_BYTES = 2 * 3 * 4 * CPU_PART_ELEMENTS
_SCRATCH = _Scratch(_SCRATCH_BYTES)


def release_large_scratch() -> None:
    """The end of a batch's parts: free its decoded-state buffers above a part's size."""
    _SCRATCH.release_large()


@dataclass
class _Decoded:
    codes: torch.Tensor  # 1-D, memory order, the part's elements
    absmax: torch.Tensor  # the blocks of those elements
    values: torch.Tensor  # 1-D float32 view, memory order, of the tensor the update sees
    signed: bool


class _StateView(dict[str, Any]):
    """A part's view of one parameter's state dict: the decoded states (and a piece's views of
    shaped states) are its own; any other entry an update sets, during the step or after it (the
    adaptive heavy ball records step lengths after the update), is set in the real state dict too."""

    def __init__(self, real: dict[str, Any], own: Mapping[str, Any], own_keys: Iterable[str]):
        super().__init__(real)
        self.update(own)
        self._real = real
        self._own = set(own) | set(own_keys)

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        if key not in self._own:
            self._real[key] = value


@dataclass
class Part:
    """Some tensors of a batch (or a piece of one tensor), with their quantized states decoded."""

    params: list[torch.Tensor]
    grads: list[torch.Tensor]
    states: list[dict[str, Any]]  # per tensor: a _StateView of its state dict
    originals: list[dict[str, Any]]  # the real state dicts
    pieces: bool  # a flat piece of one tensor
    decoded: list[_Decoded] = field(default_factory=list)
    taken: list[torch.Tensor] = field(default_factory=list)  # scratch to give back after encode
    #: (tensor index, key, signed map, start, stop, written): a state the update only reads is
    #: not encoded again (a decode-encode round trip is not the identity: on the signed map, whose
    #: most negative value is -0.993, a block led by a negative value shrinks by 0.7% each time)
    plan: list[tuple[int, str, bool, int, int, bool]] = field(default_factory=list)

    def decode(self) -> None:
        """Decode the part's quantized states into float32 tensors of their own (reused scratch
        on a CPU, see :class:`_Scratch`)."""
        self.decoded = []
        self.taken = []
        for i, key, signed, start, stop, written in self.plan:
            real = self.originals[i]
            codes = _local(real[key])
            like = self.params[i]
            if self.pieces or codes.is_contiguous():
                values = _SCRATCH.take(stop - start, like.device)
                self.taken.append(values)
                if not self.pieces:
                    values = values.view(codes.shape)
            else:
                values = torch.empty_like(codes, dtype=torch.float32)
            flat_codes = _memory_order(codes)[start:stop]
            absmax = real[absmax_key(key)][start // BLOCK : -(-stop // BLOCK)]
            flat_values = values if self.pieces else _memory_order(values)
            _, dequantize = _codec(like.device, signed)
            dequantize(flat_codes, absmax, out=flat_values)
            self.states[i][key] = _like(real[key], values)
            if written:
                self.decoded.append(_Decoded(flat_codes, absmax, flat_values, signed))

    def encode(self) -> None:
        """Encode the states the update wrote back into their codes."""
        for d in self.decoded:
            quantize, _ = _codec(d.values.device, d.signed)
            quantize(d.values, out=(d.codes, d.absmax))
        self.decoded = []
        for values in self.taken:
            _SCRATCH.give(values)
        self.taken = []
        # the views drop their decoded states: a part its caller still holds (the batch's list of
        # parts, a loop variable) then keeps no float32 state alive, so what the scratch frees is
        # freed, and where every take is fresh (a GPU) a batch's peak stays one part's
        for i, key, *_ in self.plan:
            self.states[i].pop(key, None)


def plan_parts(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    states: list[dict[str, Any]],
    quantized: Mapping[str, bool],
    *,
    split: bool,
    keys: Iterable[str] | None = None,
    unwritten: Callable[[Mapping[str, Any]], Iterable[str]] | None = None,
) -> list[Part]:
    """The parts a batch runs in, or ``[]`` when none of its states is quantized. ``keys``: decode
    only these (a pass that reads some states); ``unwritten(state)``: the states of a parameter that
    its update this step reads but does not write (not encoded again)."""
    wanted = quantized if keys is None else [k for k in quantized if k in set(keys)]
    keys_of = [[k for k in wanted if is_quantized(s, k)] for s in states]
    if not any(keys_of):
        return []
    limit = part_elements(params[0].device)
    per_piece = max(BLOCK, limit // BLOCK * BLOCK)
    parts: list[Part] = []
    current: Part | None = None
    size = 0

    def close() -> None:
        nonlocal current, size
        if current is not None:
            parts.append(current)
        current, size = None, 0

    for param, grad, state, keys in zip(params, grads, states, keys_of, strict=True):
        numel = _local(param).numel()
        idle = set(unwritten(state)) if unwritten is not None and keys else set()
        cut = split and keys and numel > per_piece and not is_dtensor(param)
        if cut:  # the other states shaped like the parameter are cut alongside (as _flat_pieces)
            shaped = [
                k
                for k, v in state.items()
                if isinstance(v, torch.Tensor) and v.shape == param.shape and k not in keys
            ]
            cut = all(
                t.is_contiguous() for t in (param, grad, *(state[k] for k in (*keys, *shaped)))
            )
        if cut:
            close()
            for a in range(0, numel, per_piece):
                b = min(numel, a + per_piece)
                views = {k: state[k].view(-1)[a:b] for k in shaped}
                piece_state = _StateView(state, views, keys)
                part = Part(
                    [param.view(-1)[a:b]], [grad.view(-1)[a:b]], [piece_state], [state], True
                )
                part.plan = [(0, k, quantized[k], a, b, k not in idle) for k in keys]
                parts.append(part)
            continue
        weight = numel if keys else 0
        if current is not None and size and size + weight > limit:
            close()
        if current is None:
            current = Part([], [], [], [], False)
        i = len(current.params)
        current.params.append(param)
        current.grads.append(grad)
        current.states.append(_StateView(state, {}, keys))
        current.originals.append(state)
        current.plan += [(i, k, quantized[k], 0, numel, k not in idle) for k in keys]
        size += weight
    close()
    return parts


# --- checkpoints ----------------------------------------------------------------------------------


def codes_key(key: str) -> str:
    """The state-dict key of the codes of quantized state ``key`` in a saved state dict."""
    return f"{key}_codes"


def _row_blocks(codes: torch.Tensor, absmax: torch.Tensor) -> int | None:
    """Blocks per row when a state's absmax can be saved as ``(rows, blocks per row)``, the shape
    FSDP2's shards and a single process agree on: every row (the elements of one index of dimension
    0, which FSDP2 shards) is whole blocks and lies contiguous, so block ``j`` lies in row
    ``j // per_row`` and every row-wise shard is whole blocks too; else ``None``. Sharded codes
    (a DTensor) must be ``Shard(0)`` on a 1-D mesh, FSDP2's layout."""
    if is_dtensor(codes):
        from torch.distributed.tensor import Shard

        if codes.device_mesh.ndim != 1 or tuple(codes.placements) != (Shard(0),):
            return None
    if codes.dim() < 1 or codes.shape[0] == 0:
        return None
    local = _local(codes)
    if not local.is_contiguous():
        return None
    row = codes.numel() // codes.shape[0]
    local_rows = local.shape[0] if local.dim() else 0
    if row == 0 or row % BLOCK or absmax.numel() != local_rows * (row // BLOCK):
        return None
    return row // BLOCK


def saved_state(state: Mapping[str, Any], quantized: Mapping[str, bool]) -> dict[str, Any]:
    """A parameter's state as a state dict saves it: quantized state ``key`` as ``key_codes``
    (uint8) and ``key_absmax`` (float32), never under ``key``.

    A tool that loads into the tensors of a template state dict (``torch.distributed.checkpoint``
    copies each saved tensor into the template's tensor of the same key, casting it) would
    otherwise read codes into a 32-bit optimizer's float32 ``exp_avg`` as the numbers 0-255,
    silently; with their own key, a checkpoint of the other precision fails to load, naming the
    missing key. Sharded (DTensor) codes whose absmax can be placed (:func:`_row_blocks`) keep 8
    bits, the absmax as a DTensor of shape ``(rows, blocks per row)`` sharded as the codes are,
    so a distributed checkpoint places and reshards both; other sharded states are saved
    decoded, as float32 DTensors under ``key``, and quantized again on loading. A single
    process saves the absmax of rows of whole blocks in the same ``(rows, blocks per row)``
    shape, so a distributed checkpoint moves between a single process and an FSDP2 run."""
    out = dict(state)
    for key, signed in quantized.items():
        if not is_quantized(out, key) or absmax_key(key) not in out:
            continue
        codes, absmax = out[key], out[absmax_key(key)]
        per_row = _row_blocks(codes, absmax)
        if is_dtensor(codes):
            if per_row is None:
                dequantize_state_(out, key, signed)
                continue
            from torch.distributed.tensor import DTensor

            rows = codes.shape[0]
            absmax = DTensor.from_local(
                absmax.view(-1, per_row),
                codes.device_mesh,
                codes.placements,
                shape=torch.Size((rows, per_row)),
                stride=(per_row, 1),
            )
        elif per_row is not None:  # the shape a sharded run saves, so DCP moves it either way
            absmax = absmax.view(-1, per_row)
        del out[key]
        out[codes_key(key)] = codes
        out[absmax_key(key)] = absmax
    return out


def loaded_state(state: Mapping[str, Any], quantized: Mapping[str, bool]) -> dict[str, Any]:
    """:func:`saved_state` undone: codes back under ``key``, a DTensor absmax as the 1-D absmax of
    the local shard. A state saved before codes had their own key (uint8 under ``key``) passes."""
    out = dict(state)
    for key in quantized:
        if codes_key(key) not in out:
            absmax = out.get(absmax_key(key))
            if isinstance(absmax, torch.Tensor) and absmax.dim() != 1:  # codes under ``key``
                out[absmax_key(key)] = _local(absmax).reshape(-1)
            continue
        codes = out.pop(codes_key(key))
        if not isinstance(codes, torch.Tensor) or codes.dtype != torch.uint8:
            raise ValueError(
                f"state {codes_key(key)!r} must be a uint8 tensor of codes, got {_describe(codes)}"
            )
        absmax = out.get(absmax_key(key))
        if not isinstance(absmax, torch.Tensor):
            raise ValueError(f"state {codes_key(key)!r} comes without its {absmax_key(key)!r}")
        # a sharded checkpoint's (rows, blocks per row) absmax: the local shard's, or, gathered
        # into a plain tensor (a full state dict), the whole tensor's; either way 1-D
        absmax = _local(absmax).reshape(-1)
        if absmax.numel() != num_blocks(_local(codes).numel()):
            raise ValueError(
                f"state {absmax_key(key)!r} has {absmax.numel()} blocks, but {codes_key(key)!r} "
                f"needs {num_blocks(_local(codes).numel())}"
            )
        out[key] = codes
        out[absmax_key(key)] = absmax
    return out


def dequantized_state_dict(
    state_dict: Mapping[str, Any], quantized: Mapping[str, bool]
) -> dict[str, Any]:
    """A copy of an optimizer state dict with every quantized state decoded to float32 (and its
    absmax entry removed): loadable by the same optimizer with ``state_bits=32``, and, where the
    state names agree (Adam, AdamW), by ``torch.optim``. ``quantized`` is the optimizer class's
    ``quantized_states``. The step counts become float32 tensors, as ``torch.optim`` keeps them
    (adaptim reads either)."""
    out = dict(state_dict)
    out["state"] = {}
    for pid, state in state_dict["state"].items():
        state = loaded_state(state, quantized)
        for key, signed in quantized.items():
            if is_quantized(state, key) and absmax_key(key) in state:
                dequantize_state_(state, key, signed)
        if isinstance(state.get("step"), int):  # torch.optim counts in a float32 tensor
            state["step"] = torch.tensor(float(state["step"]))
        out["state"][pid] = state
    return out

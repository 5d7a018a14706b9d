"""The fused step: an optimizer's own elementwise update, compiled once, run over flat pieces.

``fused=True`` does not bring a second copy of any algorithm. An optimizer whose update is
elementwise states it once as a per-tensor function (its ``elementwise_update``: lists of params,
grads and states in, updated in place) plus the per-step scalars it needs (``_step_scalars``:
bias corrections, step sizes, flags, computed in Python from the step count and the param group).
The eager per-tensor path calls that function with Python floats; the fused path hands it to
``torch.compile`` (Inductor: C++ on CPU, Triton on CUDA) with the scalars as 0-dim tensors.

What keeps the compile cost from growing with the model, and the step from recompiling:

* the function is always called with ``ARITY`` flat 1-D pieces of at most ``PIECE_ELEMENTS``
  elements (cut at multiples of 64, as the cache-blocked eager path cuts), compiled with
  ``dynamic=True`` and without duck sizing, so one graph serves every tensor size; a call that has
  fewer pieces is padded with scratch pieces owned by this module;
* the pieces are 1-D tensors over the storage of the parameters, gradients and states (``set_``),
  not autograd views, so dynamo does not guard on the shapes of the tensors they were cut from; the
  pieces of one call come from pairwise distinct storages, so it does not guard on their aliasing;
* every float scalar is a 0-dim float64 tensor (on the parameters' device), so a scheduler, the
  step count or a group's own hyperparameters never recompile. Booleans and exponents
  (``functional.Exponent``) are static: one graph per combination that occurs (a step-dependent
  branch such as RAdam's rectification adds one).

What keeps a step's cost close to its kernels': the cut of a batch into calls is planned once and
reused (``_Plan``), and a call that dynamo has matched to a graph once is made directly to that graph
at later steps, without dynamo's guards (see "calling a compiled graph without dynamo" below).

``fused=None`` means the eager path (compiling costs 10-60 s on a 2-core CPU, which a short run does
not earn back; see the README's speed section), except where torch has a fused kernel for exactly
the same math (Adam, AdamW), which needs no compilation.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import operator
import shutil
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
import torch._dynamo
from torch.fx.experimental import _config as fx_config

from adaptim.core.functional import Exponent

__all__ = [
    "ARITY",
    "CALL_TENSORS",
    "PIECE_ELEMENTS",
    "WHOLE_ARITY",
    "by_step",
    "fused_unavailable_reason",
    "run_elementwise",
]

#: elements per flat piece: about 8 MB of float32; a compiled Adam over 2 MB pieces ran at 1.5x
#: torch's fused AdamW per byte, over 8 MB pieces at 1.15-1.2x (benchmarks/step_time.py)
PIECE_ELEMENTS = 2**21
#: pieces per compiled call: per-call overhead (dynamo's guards, Python) against compile time, which
#: grows with the number of pieces traced; 16 keeps 2,000 small tensors within 1.5x fused AdamW
ARITY = 16
#: whole tensors per compiled call, for updates that need whole tensors (``split=False``): each
#: tensor of a call is its own loops (its reductions, then its update), so the graph, and the
#: compile, grow with the call's arity far faster than for flat pieces; see docs/fused.md
WHOLE_ARITY = 4
#: tensors per compiled call of flat pieces (pieces times columns): an update with more than 6
#: columns (params, grads and states; 6 is the widest but MADA's, at 16 pieces) takes fewer pieces
#: a call, at least 4. MADA (12 columns) compiled in 88.5 s cold, 14.2 s warm at 16 pieces a call;
#: at 8, 33.1 s and 7.1 s, and the same step time (transformer set, 2 threads)
CALL_TENSORS = 96
#: tensors are cut at multiples of this many elements (the vectorized loop covers the same elements
#: as a pass over the whole tensor), and a last piece shorter than this joins the one before. Tensors
#: of 0 or 1 element run eagerly: those sizes would specialize the graph.
_ALIGN = 64

_Scalars = Mapping[str, Any]
_compiled: dict[tuple[Callable[..., None], str], Callable[..., None]] = {}
_scratch: dict[tuple[torch.dtype, torch.device, tuple[int, ...], int], torch.Tensor] = {}


@functools.cache
def _has_cxx() -> bool:
    """A C++ compiler is on PATH (looked up once: a fused step checks its device every step)."""
    compilers = [torch._inductor.config.cpp.cxx[1], "g++", "clang++", "c++"]
    return any(shutil.which(c) for c in compilers if c)


def fused_unavailable_reason(device: torch.device) -> str | None:
    """Why ``fused=True`` cannot run on ``device`` here, or ``None`` if it can."""
    if device.type == "cpu":
        if not _has_cxx():
            return (
                "Inductor's CPU backend needs a C++ compiler (g++ or clang++), and none is on PATH"
            )
        return None
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        return (
            None if has_triton() else "Inductor's CUDA backend needs Triton, which is not installed"
        )
    return f"the fused step supports CPU and CUDA tensors, not {device.type!r}"


def _compile(fn: Callable[..., None], device: torch.device) -> Callable[..., None]:
    key = (fn, device.type)
    compiled = _compiled.get(key)
    if compiled is None:
        # Each elementwise update is its own function, so dynamo's per-function cache (and its
        # recompile limit) is per algorithm; the graphs in it differ by dtype and by flags. On
        # CUDA, Inductor's combo kernels fuse the pieces' loops horizontally: a few launches per
        # call instead of one per piece.
        # no Inductor per-call size asserts (one per tensor, a tenth of a small tensor's update):
        # dynamo's guards check the first call of each key, and a direct call after it (below)
        # reuses a key that fixes what those guards checked
        options: dict[str, Any] = {"size_asserts": False}
        if device.type == "cuda":
            options["combo_kernels"] = True
        else:
            # Inductor's C++ decides per loop, at compile time, whether to run it on several
            # threads, from the sizes of the call it compiles for (under 1,024 elements on 2
            # threads: one thread), and its cache keeps that decision for every later size. A
            # graph first compiled for small pieces (a model's biases first, or the tests' small
            # tensors in a shared cache) then ran the 8 MB pieces of a large model on one
            # thread: RAdam's fused step took 45.6 ms on the transformer set, 30.5 with the
            # thread count left to OpenMP at run time.
            options["cpp.dynamic_threads"] = True
        compiled = _compiled[key] = torch.compile(
            fn, dynamic=True, fullgraph=True, backend=_Backend(options)
        )
    return compiled


# -- calling a compiled graph without dynamo ------------------------------------------------------
#
# Through dynamo, a call of 16 pieces in 4 columns cost 175 us of which 30 in the graph itself: the
# guards on 67 inputs and reading 16 sizes through disabled frames. A call whose inputs dynamo has
# already matched to a graph is, at the next step, the same call in what the graph depends on (the
# plan fixes dtypes and the kind of every piece; the key holds the device, the columns, ARITY, the
# global state of _global_state and the scalars' kinds and flags; docs/fused.md lists what it does
# not hold), so it calls that graph directly: the arguments in
# the graph's order, each a piece, a scalar, or a piece's size. How to build them is read from the
# graph and checked against the arguments dynamo passed, once; anything unexpected (an input that
# is not one of ours, an output) keeps that call on dynamo.


class _Graph:
    """A graph Inductor compiled for an update: its callable, and what each input is (per tensor,
    the symbols of its sizes; per size, its symbol; nothing else kept of the traced graph)."""

    def __init__(self, run: Callable[..., Any], gm: torch.fx.GraphModule) -> None:
        self.run = run
        nodes = list(gm.graph.nodes)
        self.inputs: list[tuple[str, list[str]] | None] = []
        for node in nodes:
            if node.op != "placeholder":
                continue
            value = node.meta.get("example_value")
            if isinstance(value, torch.Tensor):
                self.inputs.append(("tensor", [_symbol(size) for size in value.shape]))
            elif isinstance(value, torch.SymInt):
                self.inputs.append(("size", [_symbol(value)]))
            else:
                self.inputs.append(None)
        outputs = [n.args[0] for n in nodes if n.op == "output"]
        self.returns_nothing = outputs in ([()], [[]], [None])


def _symbol(size: int | torch.SymInt) -> str:
    return str(size.node.expr) if isinstance(size, torch.SymInt) else ""


#: the graph and arguments of each call through dynamo while ``_recording`` is set
_recorded: list[tuple[_Graph, tuple[Any, ...]]] = []
_recording = False


class _Backend:
    """Inductor, remembering which graph each recorded call ran (a class, so that dynamo's cache
    key, which includes the backend, is stable)."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
        from torch._inductor.compile_fx import compile_fx

        run: Callable[..., Any] = compile_fx(  # type: ignore[assignment]
            gm, example_inputs, config_patches=self.options
        )
        graph = _Graph(run, gm)

        def call(*args: Any) -> Any:
            if _recording:
                _recorded.append((graph, args))
            return run(*args)

        return call


#: per (update, device, call signature): the graph's callable and, per input, the index of the
#: flat argument it is (with ``None``) or whose size along a dimension it is; ``None``: dynamo
_direct: dict[tuple[Any, ...], tuple[Callable[..., Any], list[tuple[int, int | None]]] | None] = {}
#: per update: how many graphs dynamo held when a direct call was last set up (fewer: it was reset)
_direct_graphs: dict[Callable[..., None], int] = {}


def _dynamo_graphs(fn: Callable[..., None]) -> int:
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    return len(_debug_get_cache_entry_list(fn.__code__))


def _sources(
    graph: _Graph, args: tuple[Any, ...], flat: list[torch.Tensor]
) -> list[tuple[int, int | None]] | None:
    """How to build ``args`` (a recorded call of ``graph``) from ``flat``; ``None`` if unsure."""
    if not graph.returns_nothing or len(graph.inputs) != len(args):
        return None
    index = {id(t): j for j, t in enumerate(flat)}
    if len(index) != len(flat):  # one tensor twice (two scalars given one tensor): one input
        return None
    sources: list[tuple[int, int | None] | None] = []
    dims: dict[str, tuple[int, int]] = {}
    for kind, arg in zip(graph.inputs, args, strict=True):
        j = index.get(id(arg)) if isinstance(arg, torch.Tensor) else None
        sources.append(None if j is None else (j, None))
        if j is not None and kind is not None and kind[0] == "tensor":
            for d, symbol in enumerate(kind[1]):
                if symbol:
                    dims.setdefault(symbol, (j, d))
    for i, kind in enumerate(graph.inputs):
        if sources[i] is None and kind is not None and kind[0] == "size":
            sources[i] = dims.get(kind[1][0])
    if any(s is None for s in sources):
        return None
    resolved = [s for s in sources if s is not None]
    rebuilt = [flat[j] if d is None else flat[j].shape[d] for j, d in resolved]
    same = all(
        (b is a) if isinstance(a, torch.Tensor) else (type(a) is int and b == a)
        for a, b in zip(args, rebuilt, strict=True)
    )
    return resolved if same else None


def _as_tensors(scalars: _Scalars, device: torch.device) -> dict[str, Any]:
    """Floats as 0-dim float64 tensors; the rest (flags, tensors) as they are. float64, so that
    arithmetic on them in the update (``1 - beta2``) rounds as the eager path's Python floats do;
    an operation with a float32 tensor still runs in float32. Zeros too: the eager path skips the
    work of a zero weight decay (``core.functional.is_zero``), the compiled one multiplies by it,
    which costs nothing in a memory-bound kernel and saves a graph per zero pattern (a group of
    biases without weight decay beside one with it)."""
    out: dict[str, Any] = {}
    for key, value in scalars.items():
        if isinstance(value, Exponent):  # a constant of the graph (see Exponent)
            value = float(value)
        elif isinstance(value, float):
            value = torch.tensor(value, dtype=torch.float64, device=device)
        out[key] = value
    return out


def _piece(t: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Elements ``start:stop`` of contiguous ``t`` as a 1-D tensor on its storage (not a view)."""
    return t.new_empty(0).set_(
        t.untyped_storage(), t.storage_offset() + start, (stop - start,), (1,)
    )


@functools.cache
def _per_piece(dtype: torch.dtype) -> int:
    """Elements per piece: ``PIECE_ELEMENTS`` float32 elements' bytes, a multiple of 64."""
    per_piece = max(_ALIGN, PIECE_ELEMENTS * 4 // torch.empty(0, dtype=dtype).element_size())
    return per_piece - per_piece % _ALIGN


def _cuts(numel: int, per_piece: int) -> list[tuple[int, int]]:
    cuts = [(a, min(numel, a + per_piece)) for a in range(0, numel, per_piece)]
    if len(cuts) > 1 and cuts[-1][1] - cuts[-1][0] < _ALIGN:  # no short last piece
        cuts[-2:] = [(cuts[-2][0], numel)]
    return cuts


def _whole(t: torch.Tensor) -> torch.Tensor:
    """Contiguous ``t`` as a plain tensor of its shape on its storage: not an autograd view, not a
    ``Parameter``, no ``requires_grad`` (dynamo guards on each). A plain tensor (a state, a
    gradient) is itself; ``detach`` a parameter (a quarter of the cost of ``set_``, which matters
    for 2,000 small tensors)."""
    if t._base is None:
        return t if type(t) is torch.Tensor and not t.requires_grad else t.detach()
    return t.new_empty(0).set_(t.untyped_storage(), t.storage_offset(), t.shape, t.stride())


def _scratch_piece(like: torch.Tensor, slot: int) -> torch.Tensor:
    """A padding piece shaped like ``like``'s kind (1-D, or a whole tensor with every dimension 2
    but those of size 1) with storage of its own (distinct per slot, so no aliasing guards)."""
    # size-1 dimensions kept (Adafactor's (n, 1) row statistics): a 1 would specialize the graph
    shape = (_ALIGN,) if like.dim() == 1 else tuple(1 if n == 1 else 2 for n in like.shape)
    key = (like.dtype, like.device, shape, slot)
    t = _scratch.get(key)
    if t is None:
        t = _scratch[key] = torch.zeros(shape, dtype=like.dtype, device=like.device)
    return t


def by_step(steps: Sequence[int]) -> dict[int, list[int]]:
    """The indices of the tensors at each step count (usually one: a group steps together)."""
    groups: dict[int, list[int]] = {}
    for i, step in enumerate(steps):
        groups.setdefault(step, []).append(i)
    return groups


def run_elementwise(
    fn: Callable[..., None],
    tensors: Sequence[Sequence[torch.Tensor | None] | None],
    steps: Sequence[int],
    step_scalars: Callable[[int], _Scalars],
    *,
    fused: bool,
    split: bool = True,
    plans: dict[Any, _Plan] | None = None,
) -> None:
    """Run ``fn(*tensor_lists, **step_scalars(step))`` over the tensors, grouped by step.

    ``tensors`` is ``[params, grads, *states]``: lists of equal length (a ``None`` list, e.g. an
    optional state that is off, is passed as ``None``). Eager (``fused=False``) calls ``fn`` once per
    distinct step count with Python scalars; fused runs it compiled over flat pieces, or, where
    ``fn`` needs whole tensors (``split=False``: it reduces over a tensor or uses its shape), over
    whole tensors, calls grouped by their numbers of dimensions. ``plans``: where the fused path
    keeps how it cut these tensors into calls, to reuse at the next step (see :class:`_Plan`);
    owned by the optimizer, so that it goes with it.
    """
    lists = [list(ts) if ts is not None else None for ts in tensors]
    for step, idx in by_step(steps).items():
        scalars = step_scalars(step)
        picked = [None if ts is None else [ts[i] for i in idx] for ts in lists]
        if fused:
            _run_fused(fn, picked, scalars, split, plans)
        else:
            fn(*picked, **scalars)


#: plans kept per optimizer (one per batch of tensors and step count, usually a few)
_MAX_PLANS = 256
_INT32_MAX = 2**31 - 1
#: a piece of a row of tensors: the row's index, and the flat range ``start:stop`` (``None``: the
#: whole tensors)
_Slot = tuple[int, int | None, int | None]


#: per column: each tensor's size, number of dimensions, contiguity, dtype and (where the calls take
#: whole tensors) which of its dimensions are 1 (the graph specializes those; where none is, the
#: number of dimensions)
_ColumnLayout = tuple[
    list[int], list[int], list[bool], list[torch.dtype], list[tuple[bool, ...] | int]
]


class _Plan:
    """How a list of tensors was cut into compiled calls, kept for the next step.

    On 2,000 small tensors the cutting (tests per tensor, packing, aliases) cost as much Python
    time as dynamo's calls themselves: 18 of 49 ms of a fused RAdam step, 4.5 of which in the
    kernels. The cut depends only on the tensors' layout: per column, each tensor's size, number
    of dimensions, contiguity and dtype, and whether any is a view (whose storage another tensor
    may share: such batches are cut at every step). A plan keeps that layout and the cut as
    indices, never a tensor: the arguments are taken from this step's tensors, so a replaced
    ``.data``, new states or fp32 working copies made anew at each step are what the kernels
    write, and nothing a plan holds keeps memory alive."""

    def __init__(
        self,
        layout: list[_ColumnLayout],
        eager: list[int],
        calls: list[tuple[list[_Slot], _Slot]],
    ) -> None:
        self.layout = layout
        self.eager = eager
        #: per call: its slots, and the slot whose tensors its padding pieces are shaped like
        self.calls = calls
        #: per call, per column: its tensors' dtypes and dimensions of size 1, those of its padding
        #: pieces included: what the call's graph depends on that the layout does not fix
        #: (and whether a whole tensor is too large for 32-bit indices, where Inductor compiles
        #: CUDA kernels with 64-bit ones)
        self.signatures = [
            None
            if layout is None
            else tuple(
                (
                    tuple((dtypes[i], ones[i]) for i, _, _ in slots),
                    (dtypes[like[0]], ones[like[0]]),
                    any(numels[i] > _INT32_MAX for i, a, _ in slots if a is None),
                )
                for numels, _, _, dtypes, ones in layout
            )
            for slots, like in calls
        ]


_shape = operator.attrgetter("shape")


def _layout(columns: list[list[torch.Tensor]], whole: bool) -> list[_ColumnLayout] | None:
    """What a cut depends on, per column; ``None`` if a tensor is a view. ``whole``: the calls take
    whole tensors (not 1-D pieces)."""
    out: list[_ColumnLayout] = []
    for column in columns:
        if [t._base for t in column].count(None) != len(column):
            return None
        # which dimensions are 1; for none (the usual case, 5x cheaper to tell) the number of
        # dimensions, which the call signatures must still tell apart
        ones: list[tuple[bool, ...] | int] = (
            [tuple(n == 1 for n in s) if 1 in s else len(s) for s in map(_shape, column)]
            if whole
            else [()] * len(column)
        )
        out.append(
            (
                list(map(torch.Tensor.numel, column)),
                list(map(torch.Tensor.dim, column)),
                list(map(torch.Tensor.is_contiguous, column)),
                [t.dtype for t in column],
                ones,
            )
        )
    return out


def _run_fused(
    fn: Callable[..., None],
    lists: list[list[Any] | None],
    scalars: _Scalars,
    split: bool,
    plans: dict[Any, _Plan] | None = None,
) -> None:
    present = [k for k, ts in enumerate(lists) if ts is not None]
    columns = [ts for ts in lists if ts is not None]
    layout = _layout(columns, whole=not split) if plans is not None else None
    key = (fn, split, tuple(present), tuple(layout[0][0])) if layout is not None else None
    plan = plans.get(key) if plans is not None and key is not None else None
    if plan is None or plan.layout != layout:
        plan = _make_plan(columns, split, layout)
        if plans is not None and key is not None:
            if len(plans) >= _MAX_PLANS:
                plans.clear()
            plans[key] = plan
    arity = _arity(split, len(columns))
    if plan.eager:
        fn(*[None if ts is None else [ts[i] for i in plan.eager] for ts in lists], **scalars)
    if not plan.calls:
        return
    device = columns[0][0].device
    tensor_scalars = _as_tensors(scalars, device)
    compiled = _compile(fn, device)
    if fn in _direct_graphs and _dynamo_graphs(fn) < _direct_graphs[fn]:
        # torch._dynamo.reset(): its graphs are gone, and so are the direct calls into them
        for stale in [k for k in list(_direct) if k[0] is fn]:
            _direct.pop(stale, None)
        _direct_graphs.pop(fn, None)
    signature = _signature(tensor_scalars) if plan.layout is not None else None
    direct_key = (
        None
        if signature is None or not _direct_allowed()
        else (fn, device, tuple(present), arity, _global_state(device), signature)
    )
    scalar_tensors = [v for v in tensor_scalars.values() if isinstance(v, torch.Tensor)]
    with (
        fx_config.patch(use_duck_shape=False),  # type: ignore[attr-defined]
        # a float the update reads from its module (KOALA's GRAD_EPS) is a constant of the
        # graph, not a 0-dim tensor input made at each call (which a direct call could not make)
        torch._dynamo.config.patch({"specialize_float": True, **_RECOMPILE_LIMITS}),
        _without_scalar_tensorify(),
    ):
        for (slots, like), call_signature in zip(plan.calls, plan.signatures, strict=True):
            call_key = (
                None
                if direct_key is None or call_signature is None
                else (*direct_key, call_signature)
            )
            direct = _direct.get(call_key) if call_key is not None else None
            args = _arguments(columns, slots, like, arity, guarded=direct is None)
            flat = [p for column in args for p in column] + scalar_tensors
            if direct is not None:
                run, sources = direct
                run(*[flat[j] if d is None else flat[j].shape[d] for j, d in sources])
                continue
            full: list[Any] = [None] * len(lists)
            for col, k in enumerate(present):
                full[k] = args[col]
            if call_key is None or call_key in _direct:  # on dynamo for good
                compiled(*full, **tensor_scalars)
                continue
            recorded = _recorded_call(compiled, full, tensor_scalars)
            if recorded is None:
                _direct[call_key] = None
                continue
            graph, graph_args = recorded
            found = _sources(graph, graph_args, flat)
            _direct[call_key] = None if found is None else (graph.run, found)
            _direct_graphs[fn] = _dynamo_graphs(fn)


def _recorded_call(
    compiled: Callable[..., None], full: list[Any], scalars: Mapping[str, Any]
) -> tuple[_Graph, tuple[Any, ...]] | None:
    """Call through dynamo; the graph it ran and the arguments it gave it (``None``: not one)."""
    global _recording
    _recorded.clear()
    _recording = True
    try:
        compiled(*full, **scalars)
        return _recorded[0] if len(_recorded) == 1 else None
    finally:
        _recording = False
        _recorded.clear()  # it holds this call's tensors


#: generous per-update recompile limits (a graph per dtype and flag combination); the names of
#: torch 2.7 and later, and of 2.6
_RECOMPILE_LIMITS: dict[str, Any] = (
    {"recompile_limit": 64, "accumulated_recompile_limit": 4096}
    if hasattr(torch._dynamo.config, "recompile_limit")
    else {"cache_size_limit": 64, "accumulated_cache_size_limit": 4096}
)


#: set while this thread runs fused calls (see _without_scalar_tensorify)
_fused_thread = threading.local()


@contextlib.contextmanager
def _without_scalar_tensorify() -> Iterator[None]:
    """Compile without AOTAutograd's pass that turns Python-float arithmetic into tensor arithmetic.

    The updates have no such floats (floats are 0-dim tensors or constants), but the fake tensor of
    every 0-dim float64 CPU input gets a float symbol for its ``item()``; the pass finds it unused,
    marks it specialized and restarts dynamo's whole analysis: every graph was traced twice
    (AdaBelief's first fused step on the transformer set, cold: 24 of 97.6 s in the discarded
    first attempt). torch decides whether the pass runs once per process (a cached function), so
    the function the pass consults is wrapped, once, to answer "no" on this thread while fused
    calls run, and what torch would answer everywhere else."""
    try:
        module = importlib.import_module("torch.fx.passes._tensorify_python_scalars")
    except ImportError:  # a torch without the pass
        module = None
    enabled = getattr(module, "_is_tensorify_enabled", None)
    if enabled is not None and not getattr(enabled, "_adaptim", False):

        def wrapped() -> bool:
            return not getattr(_fused_thread, "active", False) and enabled()

        wrapped._adaptim = True  # type: ignore[attr-defined]
        module._is_tensorify_enabled = wrapped  # type: ignore[union-attr]
    previous = getattr(_fused_thread, "active", False)
    _fused_thread.active = True
    try:
        yield
    finally:
        _fused_thread.active = previous


def _direct_allowed() -> bool:
    """Direct calls only where dynamo would run its graphs as they are: not under a
    ``torch.compiler.set_stance`` other than the default (``force_eager``, ``fail_on_recompile``)."""
    stance = getattr(torch._dynamo.eval_frame, "_stance", None)
    return stance is None or getattr(stance, "stance", "default") == "default"


def _global_state(device: torch.device) -> tuple[Any, ...]:
    """The global state dynamo guards on that an update's graph depends on: autograd, autocast on
    the device, the default dtype."""
    return (
        torch.is_grad_enabled(),
        torch.is_autocast_enabled(device.type),
        torch.get_default_dtype(),
    )


def _signature(scalars: Mapping[str, Any]) -> tuple[Any, ...] | None:
    """What dynamo guards on in the scalars: a tensor's dtype, device and dimensions, any other
    value itself (flags are static)."""
    out = tuple(
        (k, (v.dtype, v.device, v.dim()) if isinstance(v, torch.Tensor) else (type(v), v))
        for k, v in scalars.items()
    )
    try:
        hash(out)
    except TypeError:
        return None
    return out


def _arity(split: bool, columns: int) -> int:
    """Pieces per call of an update with ``columns`` tensor lists: ``WHOLE_ARITY`` whole tensors,
    or ``ARITY`` flat pieces, fewer (at least 4) where that would pass more than ``CALL_TENSORS``
    tensors."""
    if not split:
        return WHOLE_ARITY
    return min(ARITY, max(4, CALL_TENSORS // columns))


def _arguments(
    columns: list[list[torch.Tensor]],
    slots: list[_Slot],
    like: _Slot,
    arity: int,
    *,
    guarded: bool = True,
) -> list[list[torch.Tensor]]:
    """One call's argument columns, from this step's tensors, padded to ``arity`` with scratch
    pieces shaped as when the plan was made (like the first piece of the call's kind).
    ``guarded``: the call goes through dynamo, which guards on what a tensor is, so parameters and
    views are passed as plain aliases (:func:`_whole`). A direct call into a compiled graph
    (``guarded=False``) has no guards, and its kernels see the same storage, sizes and strides
    whichever is passed (the plan holds only contiguous tensors): the tensors as they are, about
    1.5 us a parameter less."""
    whole = [i for i, a, _ in slots if a is None]
    args = []
    for col, column in enumerate(columns):
        if len(whole) == len(slots):  # whole tensors: themselves, or detached (_whole)
            pieces = [column[i] for i in whole]
            # _whole(t) is t for a plain tensor: tested for the whole column at once
            plain = not guarded or (
                list(map(type, pieces)).count(torch.Tensor) == len(pieces)
                and [t._base for t in pieces].count(None) == len(pieces)
                and not any([t.requires_grad for t in pieces])
            )
            if not plain:
                pieces = [_whole(t) for t in pieces]
        else:
            pieces = [_slot_piece(column, slot, guarded) for slot in slots]
        if len(slots) < arity:
            first = _slot_piece(column, like, guarded)
            pieces += [_scratch_piece(first, col * arity + j) for j in range(len(slots), arity)]
        args.append(pieces)
    return args


def _slot_piece(column: list[torch.Tensor], slot: _Slot, guarded: bool = True) -> torch.Tensor:
    i, a, b = slot
    if a is None or b is None:
        return _whole(column[i]) if guarded else column[i]
    return _piece(column[i], a, b)


def _make_plan(columns: list[list[torch.Tensor]], split: bool, layout: Any) -> _Plan:
    """The cut of ``columns`` into calls (``layout``: what it depends on, see :func:`_layout`)."""
    per_piece = _per_piece(columns[0][0].dtype)
    eager: list[int] = []  # tensors the compiled graph cannot take: of 0 or 1 element, or strided
    # slots by the numbers of dimensions of their tensors (one graph per kind); each with the
    # storages it shares with others (pieces of one tensor, views into one buffer), or None
    kinds: dict[tuple[int, ...], list[tuple[_Slot, set[int] | None]]] = {}
    # per-tensor tests as map() over C methods and list methods: generator expressions here cost
    # about 1 us more per tensor (2,000 small tensors, RAdam fused: 51.4 -> 49.1 ms a step)
    for i, numel in enumerate(map(torch.Tensor.numel, columns[0])):
        row = [c[i] for c in columns]
        if numel < 2 or not all(map(torch.Tensor.is_contiguous, row)):
            eager.append(i)
            continue
        views = [t._base for t in row].count(None) != len(row)
        shared = {t.untyped_storage().data_ptr() for t in row} if views else None
        if not split:
            kinds.setdefault(tuple(t.dim() for t in row), []).append(((i, None, None), shared))
        elif list(map(torch.Tensor.numel, row)).count(numel) != len(row):
            eager.append(i)
        elif numel <= per_piece and list(map(torch.Tensor.dim, row)).count(1) == len(row):
            kinds.setdefault((1,) * len(row), []).append(((i, None, None), shared))
        else:  # pieces of one tensor share its storages
            shared = {t.untyped_storage().data_ptr() for t in row}
            kinds.setdefault((1,) * len(row), []).extend(
                ((i, a, b), shared) for a, b in _cuts(numel, per_piece)
            )
    arity = _arity(split, len(columns))
    calls = [(call, slots[0][0]) for slots in kinds.values() for call in _pack(slots, arity)]
    return _Plan(layout, eager, calls)


def _pack(slots: list[tuple[_Slot, set[int] | None]], arity: int) -> list[list[_Slot]]:
    """Slots into calls of at most ``arity``, no two pieces of a call sharing a storage (dynamo
    would guard on their aliasing: a graph per pattern). Pieces of distinct plain tensors share
    none and fill the calls in order."""
    calls: list[list[_Slot]] = []
    storages: list[set[int]] = []
    open_from = 0  # calls before this one are full
    for piece, shared in slots:
        if shared is None:
            # the last call, if it has room (it may be full while an earlier one is not: pieces
            # that share a storage went to the first call without it)
            if len(calls) > open_from and len(calls[-1]) < arity:
                calls[-1].append(piece)
            else:
                calls.append([piece])
                storages.append(set())
        else:
            for c in range(open_from, len(calls)):
                if len(calls[c]) < arity and not shared & storages[c]:
                    calls[c].append(piece)
                    storages[c] |= shared
                    break
            else:
                calls.append([piece])
                storages.append(set(shared))
        while open_from < len(calls) and len(calls[open_from]) == arity:
            open_from += 1
    return calls

"""What an optimizer costs, next to how well it does: its state memory and its step time.

Measured by ``adaptim bench`` on one model, the bench's ``fmnist-mlp`` network (784-128-10, ReLU,
101,770 parameters) on a fixed random minibatch of 64 (no data needed), each optimizer built as the
bench builds it (:func:`adaptim.bench.optimizers.make_optimizer`: its defaults, torch's for the
baselines):

* **state bytes per parameter**: the bytes of every tensor in the optimizer's state after two steps
  (an optimizer may allocate a state at its second step), divided by the number of parameters; with
  the default ``state_bits=32`` and, for a class whose ``quantized_states`` is not empty, with
  ``state_bits=8`` (8-bit block-wise states, :mod:`adaptim.core.state_precision`). Tensors that share
  a parameter's storage are not state; per-tensor scalars (a step count) count, as they take memory.
* **step time**: the CPU time of one training step, ``opt.step(closure)`` with a closure that runs
  the forward and backward pass (a closure-driven method's extra passes included), on one thread,
  relative to ``torch.optim.AdamW(fused=True)`` measured in the same call on the same model. The
  median over short repeats; the reference is timed before and after the list and its median used.
  The forward and backward pass is most of a step on a model this small, so the ratios understate
  how much slower one *update* is; they say what a user of a model this size pays.

The results go in the bench's database, in a ``costs`` table this module creates when it first
writes (a database without it reads as having no costs), one row per optimizer and state precision
and measurement; the report shows the latest of each (:func:`load_costs`).
"""

from __future__ import annotations

import json
import math
import statistics
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = [
    "MODEL_DESCRIPTION",
    "REFERENCE",
    "OptimizerCost",
    "load_costs",
    "measure_costs",
    "optimizer_state_bytes",
    "state_bytes_per_param",
    "step_seconds",
    "store_costs",
    "supports_8bit",
]

MODEL_DESCRIPTION = "fmnist-mlp network (784-128-10, 101,770 parameters), batch 64, one thread"
REFERENCE = "torch.optim.AdamW(fused=True)"
BATCH = 64
STEPS_PER_REPEAT = 10
WARMUP_STEPS = 3

COSTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS costs (
    id INTEGER PRIMARY KEY,
    env_id INTEGER,
    created REAL NOT NULL,
    optimizer TEXT NOT NULL,
    state_bits INTEGER NOT NULL,
    state_bytes_per_param REAL,
    step_ratio REAL,
    step_seconds REAL,
    reference_seconds REAL,
    model TEXT,
    error TEXT
)
"""


@dataclass(frozen=True)
class OptimizerCost:
    """An optimizer's measured costs; ``None`` where not measured (no 8-bit states, no timing)."""

    optimizer: str
    state_bytes_32: float | None = None
    state_bytes_8: float | None = None
    step_ratio: float | None = None  # step time / the reference's step time
    step_seconds: float | None = None  # CPU seconds of one step
    error: str | None = None


def _model(seed: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The fmnist-mlp architecture with a fixed random minibatch (inputs in [0, 1], labels 0..9)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # nn.Linear draws its init from the global generator
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))
    inputs = torch.rand(BATCH, 1, 28, 28, generator=gen)
    labels = torch.randint(0, 10, (BATCH,), generator=gen)
    return model, inputs, labels


def _closure(
    opt: torch.optim.Optimizer, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor
) -> Callable[[], torch.Tensor]:
    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(inputs), labels)
        loss.backward()
        return loss

    return closure


def supports_8bit(name: str) -> bool:
    """Whether the bench optimizer ``name`` accepts ``state_bits=8`` (a non-empty
    ``quantized_states``); the ``torch.optim`` baselines do not."""
    from adaptim.bench.optimizers import BASELINES

    if name in BASELINES:
        return False
    from adaptim.registry import get

    return bool(getattr(get(name).cls, "quantized_states", None))


def _build(name: str, params: Sequence[nn.Parameter], state_bits: int) -> torch.optim.Optimizer:
    """``name`` as the bench builds it, at its usual lr (some classes have no default lr)."""
    from adaptim.bench.optimizers import all_optimizers, bench_kwargs, make_optimizer

    lr = all_optimizers()[name].default_lr
    if state_bits == 32:
        return make_optimizer(name, params, lr)
    from adaptim.registry import get

    kwargs = bench_kwargs(name)
    if lr is not None:
        kwargs["lr"] = lr
    return get(name).cls(params, **kwargs, state_bits=state_bits)


def _tensors(value: Any) -> Iterable[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _tensors(v)


def optimizer_state_bytes(opt: torch.optim.Optimizer, params: Sequence[torch.Tensor]) -> int:
    """Bytes of the tensors in ``opt.state`` (and in that of an optimizer it wraps), each storage
    once, parameters' own storages left out."""
    seen = {p.untyped_storage().data_ptr() for p in params}
    total = 0
    states = [opt.state]
    for attr in vars(opt).values():  # a wrapper keeps its inner optimizer's state there
        if isinstance(attr, torch.optim.Optimizer) and attr is not opt:
            states.append(attr.state)
    for state in states:
        for t in _tensors(list(state.values())):
            ptr = t.untyped_storage().data_ptr()
            if ptr in seen:
                continue
            seen.add(ptr)
            total += t.untyped_storage().nbytes()
    return total


def state_bytes_per_param(name: str, state_bits: int = 32, seed: int = 0) -> float | None:
    """Optimizer-state bytes per parameter of the bench optimizer ``name`` on the bench's MLP after
    two steps; ``None`` for ``state_bits=8`` when the class has no 8-bit states."""
    if state_bits not in (8, 32):
        raise ValueError(f"state_bits must be 8 or 32, got {state_bits!r}")
    if state_bits == 8 and not supports_8bit(name):
        return None
    model, inputs, labels = _model(seed)
    params = list(model.parameters())
    opt = _build(name, params, state_bits)
    closure = _closure(opt, model, inputs, labels)
    for _ in range(2):
        opt.step(closure)
    return optimizer_state_bytes(opt, params) / sum(p.numel() for p in params)


def _timer(opt_factory: Callable[[list[nn.Parameter]], torch.optim.Optimizer], seed: int):
    model, inputs, labels = _model(seed)
    params = list(model.parameters())
    opt = opt_factory(params)
    closure = _closure(opt, model, inputs, labels)
    for _ in range(WARMUP_STEPS):
        opt.step(closure)

    def repeat() -> float:
        t0 = time.process_time()
        for _ in range(STEPS_PER_REPEAT):
            opt.step(closure)
        return (time.process_time() - t0) / STEPS_PER_REPEAT

    return repeat


def step_seconds(
    opt_factory: Callable[[list[nn.Parameter]], torch.optim.Optimizer],
    repeats: int = 5,
    seed: int = 0,
) -> float:
    """Median CPU seconds of one training step (forward, backward, update) on the bench's MLP, on
    the calling thread's torch settings; ``repeats`` runs of ``STEPS_PER_REPEAT`` steps."""
    if repeats < 1:
        raise ValueError(f"repeats must be a positive integer, got {repeats!r}")
    repeat = _timer(opt_factory, seed)
    return statistics.median(repeat() for _ in range(repeats))


def _reference(params: list[nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, fused=True)


def measure_costs(
    names: Sequence[str],
    *,
    timing: bool = True,
    repeats: int = 5,
    progress: Callable[[str], None] | None = None,
) -> list[OptimizerCost]:
    """State bytes per parameter (32-bit, and 8-bit where the class has it) of each bench optimizer
    in ``names`` and, with ``timing``, its step time relative to :data:`REFERENCE`, on one thread.

    An optimizer that raises gets its error and ``None`` costs; the others are measured anyway.
    With the default 5 repeats, timing the bench's 34 optimizers takes about 10-20 CPU-seconds.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref: list[float] = []
        if timing:
            ref.append(step_seconds(_reference, repeats))
        out = []
        for name in names:
            if progress is not None:
                progress(name)
            try:
                b32 = state_bytes_per_param(name, 32)
                b8 = state_bytes_per_param(name, 8)
                secs = None
                if timing:
                    secs = step_seconds(lambda p, n=name: _build(n, p, 32), repeats)
                out.append(OptimizerCost(name, b32, b8, None, secs))
            except Exception as err:  # one broken optimizer must not stop the others' numbers
                first = traceback.format_exception_only(err)[-1].strip()
                out.append(OptimizerCost(name, error=first))
        if timing:
            ref.append(step_seconds(_reference, repeats))
            base = statistics.median(ref)
            out = [
                OptimizerCost(
                    c.optimizer,
                    c.state_bytes_32,
                    c.state_bytes_8,
                    None if c.step_seconds is None else c.step_seconds / base,
                    c.step_seconds,
                    c.error,
                )
                for c in out
            ]
        return out
    finally:
        torch.set_num_threads(threads)


def _has_table(conn: Any) -> bool:
    row = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'costs'")
    return row.fetchone() is not None


def store_costs(store: Any, costs: Sequence[OptimizerCost], env_id: int | None) -> None:
    """Add ``costs`` to ``store`` (an :class:`adaptim.bench.store.Store`), one row per optimizer and
    state precision, in one transaction (the ``costs`` table is created when missing)."""
    now = time.time()
    conn = store.conn
    with conn:
        conn.execute(COSTS_SCHEMA)
        for c in costs:
            rows = [(32, c.state_bytes_32, c.step_ratio, c.step_seconds)]
            if c.state_bytes_8 is not None:
                rows.append((8, c.state_bytes_8, None, None))
            for bits, nbytes, ratio, secs in rows:
                conn.execute(
                    "INSERT INTO costs (env_id, created, optimizer, state_bits,"
                    " state_bytes_per_param, step_ratio, step_seconds, reference_seconds, model,"
                    " error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        env_id,
                        now,
                        c.optimizer,
                        bits,
                        _num(nbytes),
                        _num(ratio),
                        _num(secs),
                        None if ratio is None or secs is None else secs / ratio,
                        json.dumps({"model": MODEL_DESCRIPTION, "reference": REFERENCE}),
                        c.error,
                    ),
                )


def load_costs(store: Any) -> dict[str, OptimizerCost]:
    """The latest measured costs of each optimizer in ``store``: each number from the latest row
    that has it (a ``--quick`` bench measures no step time and leaves an earlier one standing);
    ``{}`` for a database without costs."""
    conn = store.conn
    if not _has_table(conn):
        return {}
    latest: dict[str, dict[str, Any]] = {}
    rows = conn.execute(
        "SELECT optimizer, state_bits, state_bytes_per_param, step_ratio, step_seconds, error"
        " FROM costs ORDER BY id"
    )
    for name, bits, nbytes, ratio, secs, error in rows:
        d = latest.setdefault(name, {})
        d["error"] = error  # the latest measurement says whether it failed
        if nbytes is not None:
            d[f"state_bytes_{bits}"] = nbytes
        if ratio is not None:
            d["step_ratio"], d["step_seconds"] = ratio, secs
    return {name: OptimizerCost(name, **d) for name, d in latest.items()}


def _num(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)

"""``torch.compile(opt.step)`` for every registered optimizer (issue 9).

torch documents compiling an optimizer's step as ``torch.compile(fn)`` over a function that calls
``opt.step()``, with graph breaks allowed (``fullgraph=False``). What must hold: the step does not
recompile as the step counters and a scheduled ``lr`` change, it does not crash, and it gives the
parameters an eager step gives.

The counter is the number of graphs handed to the backend over the whole run: every compiled piece
between graph breaks, and every recompilation of one, is one call. ``AdaptimOptimizer.step`` starts
with one graph break (the bookkeeping runs eagerly, see ``core/base.py: _eager_prologue``), after
which an update compiles on step 1 (states just created, step counters 1), once more on step 2 (the
counters and ``lr`` become symbolic) and at most once more where a step-dependent branch flips
(RAdam's rectification threshold, PNM's parity). An optimizer whose update reads values back from
the device every step (``traceable_update = False``) runs its step eagerly: zero graphs.
The ``aot_eager`` backend skips code generation; whether and how often dynamo compiles does not
depend on the backend.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import adaptim  # noqa: F401  (registers every optimizer)
from adaptim.registry import OptimInfo, registered

INFOS = registered(kind="optimizer")
STEPS = 12
MAX_GRAPHS = 3

XFAIL: dict[str, str] = {}  # registry name -> why it still recompiles


def _params(infos: list[OptimInfo]) -> list[Any]:
    return [
        pytest.param(i, marks=pytest.mark.xfail(strict=True, reason=XFAIL[i.name]))
        if i.name in XFAIL
        else i
        for i in infos
    ]


def small_model(dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).to(dtype)


def data(step: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1000 + step)
    return torch.randn(8, 4, generator=gen).to(dtype), torch.randn(8, 3, generator=gen).to(dtype)


def run(
    info: OptimInfo,
    compile_step: Callable[[Callable[..., Any]], Callable[..., Any]] | None,
    dtype: torch.dtype = torch.float32,
) -> tuple[list[torch.Tensor], torch.optim.Optimizer]:
    """``STEPS`` steps with a scheduled ``lr``; the step compiled by
    ``compile_step`` if given. A closure is passed only to optimizers that require one (KOALA):
    the others' forward and backward run outside the compiled function."""
    model = small_model(dtype)
    opt = info.cls(model.parameters(), **info.test_kwargs)
    # lr constant over the first steps (as with StepLR), where the step counters already make the
    # update recompile once, then new at every step
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 if s < 3 else 0.9**s)
    needs_closure = getattr(info.cls, "requires_closure", False)

    def step(closure: Callable[[], torch.Tensor]) -> Any:
        return opt.step(closure) if needs_closure else opt.step()

    fn = step if compile_step is None else compile_step(step)
    for s in range(STEPS):
        x, y = data(s, dtype)

        def closure(x: torch.Tensor = x, y: torch.Tensor = y) -> torch.Tensor:
            opt.zero_grad()
            loss = ((model(x) - y) ** 2).mean()
            loss.backward()
            return loss

        if not needs_closure:
            closure()
        fn(closure)
        sched.step()
    return [p.detach().clone() for p in model.parameters()], opt


class GraphCounter:
    """A backend that counts the graphs dynamo hands it, then runs them with ``aot_eager``."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
        from torch._dynamo.backends.debugging import aot_eager

        self.graphs += 1
        return aot_eager(gm, example_inputs)


def assert_close_to_eager(compiled: list[torch.Tensor], eager: list[torch.Tensor]) -> None:
    start = [p.detach() for p in small_model(eager[0].dtype).parameters()]
    moved = max((e - s).abs().max().item() for e, s in zip(eager, start, strict=True))
    assert moved > 1e-4, f"parameters barely moved ({moved:.1e}): the comparison is vacuous"
    for c, e in zip(compiled, eager, strict=True):
        err = (c - e).abs().max().item() / max(e.abs().max().item(), 1e-30)
        assert err <= 1e-5, f"compiled step differs from eager by {err:.1e} (relative)"


@pytest.mark.parametrize("info", _params(INFOS), ids=[i.name for i in INFOS])
def test_compiled_step_does_not_recompile(info: OptimInfo) -> None:
    torch._dynamo.reset()
    eager, _ = run(info, None)
    counter = GraphCounter()
    # a frame compiled more often than MAX_GRAPHS fails the test anyway: stop it early (speed)
    with torch._dynamo.config.patch(recompile_limit=MAX_GRAPHS + 1):
        compiled, opt = run(info, lambda f: torch.compile(f, backend=counter, fullgraph=False))
    torch._dynamo.reset()
    assert counter.graphs <= MAX_GRAPHS, (
        f"{info.name}: {counter.graphs} graphs in {STEPS} steps (see TORCH_LOGS=recompiles)"
    )
    if getattr(info.cls, "traceable_update", True):
        assert counter.graphs >= 1, f"{info.name}: nothing was compiled"
    else:
        assert counter.graphs == 0, f"{info.name}: declared eager, but graphs were compiled"
    assert_close_to_eager(compiled, eager)
    # the state dict format is unchanged: step counters stay Python ints
    steps = [s["step"] for s in opt.state.values() if "step" in s]
    assert all(type(s) is int for s in steps), steps


def _has_cxx_compiler() -> bool:
    return any(shutil.which(c) for c in ("g++", "c++", "clang++"))


@pytest.mark.skipif(not _has_cxx_compiler(), reason="Inductor needs a C++ compiler on CPU")
def test_adam_compiled_with_inductor() -> None:
    info = next(i for i in INFOS if i.name == "adam")
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    eager, _ = run(info, None)
    compiled, _ = run(info, lambda f: torch.compile(f, fullgraph=False))
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    torch._dynamo.reset()
    assert 1 <= graphs <= MAX_GRAPHS, f"{graphs} graphs in {STEPS} steps"
    assert_close_to_eager(compiled, eager)

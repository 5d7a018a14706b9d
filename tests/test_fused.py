"""``fused=True``, over every registered optimizer that has it (issue 9; core/fused.py).

The fused step compiles an optimizer's own elementwise update; these tests check it against the eager
per-tensor path that runs the same function with Python scalars. The pieces are made small here
(``ARITY`` 2, 256 elements), so that a few small tensors exercise what a model's tensors do at the
real sizes: tensors cut into several pieces, a short last piece merged into the one before, calls
padded with scratch pieces, tensors too small or not contiguous for a piece (run eagerly); and so
that each graph compiles in seconds.
"""

from __future__ import annotations

import copy
import functools
import gc
import re
import warnings
import weakref
from collections.abc import Callable
from typing import Any

import pytest
import torch

import adaptim
import adaptim.core.fused as fused_module
from adaptim.core.base import AdaptimOptimizer
from test_conformance import INFOS, accepts, make

FUSABLE = [i for i in INFOS if i.cls.supports_fused()]
NOT_FUSABLE = [i for i in INFOS if not i.cls.supports_fused()]
STEPS = 20


pytestmark = pytest.mark.usefixtures("small_fused_pieces")


def _params(dtypes: tuple[torch.dtype, ...] = (torch.float32,)) -> list[torch.nn.Parameter]:
    """Tensors of every kind the packing treats differently, in each dtype."""
    gen = torch.Generator().manual_seed(0)
    params = []
    for dtype in dtypes:
        for shape in [(40, 30), (300,), (7,), (1,), (64, 5)]:
            params.append(torch.nn.Parameter((0.1 * torch.randn(shape, generator=gen)).to(dtype)))
        # not contiguous: runs through the eager function
        params.append(torch.nn.Parameter((0.1 * torch.randn(20, 30, generator=gen)).to(dtype).t()))
    return params


def _groups(info: Any, params: list[torch.nn.Parameter]) -> list[dict[str, Any]]:
    """Two groups: the second at another lr, with ``maximize``, and every float hyperparameter
    given another nonzero value in each group where it has one (weight decay, eps, the betas):
    a value baked into a compiled graph would show as the other group's."""
    half = len(params) // 2
    defaults = make(info, [torch.zeros(1)]).defaults
    first: dict[str, Any] = {"params": params[:half]}
    second: dict[str, Any] = {"params": params[half:]}
    if info.cls.supports_maximize:
        second["maximize"] = True
    second["lr"] = 0.5 * info.test_kwargs.get("lr", defaults["lr"])
    if accepts(info, "weight_decay"):
        first["weight_decay"], second["weight_decay"] = 0.02, 0.05
    if isinstance(defaults.get("eps"), float) and defaults["eps"] > 0:
        second["eps"] = 2 * defaults["eps"]
    if isinstance(defaults.get("betas"), tuple):
        second["betas"] = tuple(0.95 * b for b in defaults["betas"])
    return [first, second]


def _grads(params: list[torch.nn.Parameter], step: int) -> None:
    gen = torch.Generator().manual_seed(100 + step)
    for p in params:
        g = torch.randn(p.shape, generator=gen) * (0.5 + 0.1 * step)
        p.grad = g.to(p.device, p.dtype)


def _train(
    info: Any,
    params: list[torch.nn.Parameter],
    steps: range,
    opt: torch.optim.Optimizer | None = None,
    **kwargs: Any,
) -> torch.optim.Optimizer:
    if opt is None:
        opt = make(info, _groups(info, params), **kwargs)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.95**s)
    with warnings.catch_warnings():  # catching up with a schedule before any step of this optimizer
        warnings.filterwarnings("ignore", re.escape("Detected call of `lr_scheduler.step()`"))
        for _ in range(steps.start):
            sched.step()
    for step in steps:
        _step(opt, params, step)
        sched.step()
    return opt


def _step(opt: torch.optim.Optimizer, params: list[torch.nn.Parameter], step: int) -> None:
    _grads(params, step)
    if not getattr(opt, "requires_closure", False):
        opt.step()
        return

    def closure() -> torch.Tensor:
        # the loss for KOALA; a gradient that depends on the point (+ 0.1 p), so that SGDHess's
        # finite-difference Hessian-vector product is not zero
        _grads(params, step)
        for p in params:
            p.grad += (0.1 * p.detach()).to(p.dtype)
        return torch.tensor(1.0 / (1 + step))

    opt.step(closure)


def _assert_close(a: torch.Tensor, b: torch.Tensor, what: str, coupled: bool = False) -> None:
    """``coupled``: the update of every tensor uses a statistic over all of them (MADA's learned
    coefficients), so float32 rounding in the fp32 tensors reaches the fp64 ones too (1e-8 here)."""
    if a.dtype == torch.bfloat16:  # a last rounding to bf16 may differ by one unit
        rtol = 2.0**-7
    elif a.dtype == torch.float64:
        rtol = 1e-6 if coupled else 1e-12
    else:
        rtol = 1e-5
    scale = b.double().abs().max().clamp_min(1e-30)
    err = ((a.double() - b.double()).abs().max() / scale).item()
    assert err <= rtol, f"{what}: relative difference {err:.3g} > {rtol:g}"


def _assert_same_run(
    params_a: list[torch.Tensor],
    opt_a: torch.optim.Optimizer,
    params_b: list[torch.Tensor],
    opt_b: torch.optim.Optimizer,
) -> None:
    coupled = getattr(opt_a, "global_statistics", False)
    for i, (a, b) in enumerate(zip(params_a, params_b, strict=True)):
        what = f"parameter {i} ({a.dtype}, {tuple(a.shape)})"
        _assert_close(a.detach(), b.detach(), what, coupled)
        for key, value in opt_b.state[b].items():
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                what = f"state {key!r} of parameter {i}"
                _assert_close(opt_a.state[a][key], value, what, coupled)


def _decay_modes() -> list[Any]:
    """Each fusable optimizer with its defaults, and again with the other weight decay mode (L2 or
    decoupled) where it has both."""
    cases = []
    for info in FUSABLE:
        cases.append(pytest.param(info, {}, id=info.name))
        if accepts(info, "decoupled_weight_decay"):
            default = make(info, [torch.zeros(1)]).defaults["decoupled_weight_decay"]
            other = {"decoupled_weight_decay": not default}
            cases.append(pytest.param(info, other, id=f"{info.name}-decoupled-{not default}"))
    return cases


@pytest.mark.parametrize(("info", "options"), _decay_modes())
def test_fused_equals_eager(info: Any, options: dict[str, Any]) -> None:
    """20 steps, two groups (other lr, maximize, weight decay), fp32, fp64 and bf16 parameters in
    each, with a scheduler: the fused step equals the eager per-tensor step. The other weight
    decay mode in fp64 only (its strictest check): the dtypes' handling does not depend on it, and
    each dtype is a graph to compile."""
    dtypes = (torch.float64,) if options else (torch.float32, torch.float64, torch.bfloat16)
    eager_params, fused_params = _params(dtypes), _params(dtypes)
    eager = _train(info, eager_params, range(STEPS), foreach=False, fused=False, **options)
    fused = _train(info, fused_params, range(STEPS), fused=True, **options)
    _assert_same_run(fused_params, fused, eager_params, eager)


@pytest.mark.parametrize("info", FUSABLE, ids=[i.name for i in FUSABLE])
@pytest.mark.parametrize("first", [True, False], ids=["fused-then-eager", "eager-then-fused"])
def test_checkpoint_moves_between_fused_and_eager(info: Any, first: bool) -> None:
    """A state dict taken with ``fused=first`` loads with ``fused=not first`` and the run continues as
    one that never switched (within float32 rounding)."""
    straight_params = _params()
    straight = _train(info, straight_params, range(STEPS), foreach=False, fused=first)
    params = _params()
    before = _train(info, params, range(STEPS // 2), foreach=False, fused=first)
    after = make(info, _groups(info, params), foreach=False, fused=not first)
    after.load_state_dict(before.state_dict())
    _train(info, params, range(STEPS // 2, STEPS), opt=after)
    _assert_same_run(params, after, straight_params, straight)


#: updates whose first step takes other tensors than the later ones, a graph each: SGDHess has no
#: Hessian-vector product at the first step. (Choices that only change with the step, such as
#: RAdam's rectification or PNM's swap of its momenta, are numbers or swapped lists: one graph.)
STEP_BRANCHES = {"sgdhess"}


@pytest.mark.parametrize("info", FUSABLE, ids=[i.name for i in FUSABLE])
def test_no_recompiles(info: Any) -> None:
    """50 steps with a scheduler, two groups at different lr (one without weight decay), fp32 and
    bf16 parameters: the graphs are compiled in the first steps (one per working dtype, here
    float32, and flag combination; a flag that depends on the step, such as RAdam's rectification,
    adds one), none later; all at the first step where the update has no branch on the step
    (Adan's and MADA's first-step flags compiled a second graph at step 2: a cold compile more)."""
    torch._dynamo.reset()  # count from nothing: earlier tests compiled graphs of this update
    counters = torch._dynamo.utils.counters["stats"]
    params = _params((torch.float32, torch.bfloat16))
    groups = _groups(info, params)
    if "weight_decay" in groups[0]:  # biases without decay beside weights with: the same graph
        groups[0]["weight_decay"] = 0.0
    opt = make(info, groups, fused=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.97**s)
    start = counters["unique_graphs"]
    first = late = 0
    for step in range(50):
        _step(opt, params, step)
        sched.step()
        if step == 0:
            first = counters["unique_graphs"]
        if step == 9:
            late = counters["unique_graphs"]
    assert counters["unique_graphs"] - start <= 3
    assert counters["unique_graphs"] == late, "compiled again after step 10"
    if info.name not in STEP_BRANCHES:
        assert late == first, "compiled again after the first step"


@pytest.mark.parametrize("cls", [adaptim.VanillaKOALA, adaptim.MomentumKOALA])
def test_koala_without_weight_decay_compiles_no_decay_norms(
    cls: type, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where no group decays, KOALA's fused graph has the gradients' norms only: a zero weight
    decay passed as a 0-dim tensor made it also sum ``||g + 0 p||^2`` and ``||p||^2``, a second
    pass over the parameters (70 against 41 ms a step, KOALA-V, transformer set). Where some group
    decays, all groups share the graph with the decay's norms."""
    graphs: list[torch.fx.GraphModule] = []
    backend_call = fused_module._Backend.__call__

    def recording(self: Any, gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
        graphs.append(gm)
        return backend_call(self, gm, example_inputs)

    monkeypatch.setattr(fused_module._Backend, "__call__", recording)
    norms = {}
    for decay in (0.0, 0.1):
        torch._dynamo.reset()
        graphs.clear()
        gen = torch.Generator().manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(64, generator=gen)) for _ in range(4)]
        groups = [{"params": params[:2], "weight_decay": 0.0}, {"params": params[2:]}]
        opt = cls(groups, lr=1e-2, weight_decay=decay, fused=True)
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step(lambda: torch.tensor(1.0))
        assert len(graphs) == 1  # the groups' calls share it
        norms[decay] = sum("vector_norm" in str(n.target) for n in graphs[0].graph.nodes)
    # per tensor of a call: ||g||; with decay also ||g + wd p|| and ||p||
    assert norms[0.1] == 3 * norms[0.0] > 0


#: options under which an update chooses with the step beyond what the registry's settings
#: exercise: rectification from rho_t >= 5 (the second group's betas reach it sooner), before it
#: the momentum step or none, ACProp's first step (without rectification its untaken adaptive
#: branch divides 0 by 0 there), its numerator and amsgrad
STEP_CHOICES = [
    ("adabelief", {"rectify": True}),
    ("adabelief", {"rectify": True, "degenerated_to_sgd": False, "amsgrad": True}),
    ("radam", {"degenerated_to_sgd": False}),  # the registry's settings take the momentum step
    ("acprop", {"rectify": False}),
    ("acprop", {"rectify": False, "amsgrad": True}),
    ("acprop", {"degenerated_to_sgd": False, "momentum_update": True}),
]


@pytest.mark.parametrize(
    ("name", "options"), STEP_CHOICES, ids=[f"{n}-{'-'.join(o)}" for n, o in STEP_CHOICES]
)
def test_choices_that_change_with_the_step_compile_once(name: str, options: dict[str, Any]) -> None:
    """Such a choice is a number of the step's scalars, not a flag: all graphs are compiled at
    the first step (a flag compiled another at the second step or at the rectification's start),
    and the run equals the eager one."""
    info = adaptim.registry.get(name)
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters["stats"]
    eager_params, fused_params = _params(), _params()
    eager = _train(info, eager_params, range(STEPS), foreach=False, fused=False, **options)
    fused = _train(info, fused_params, range(1), fused=True, **options)
    first = counters["unique_graphs"]
    _train(info, fused_params, range(1, STEPS), opt=fused)
    assert counters["unique_graphs"] == first, "compiled again after the first step"
    _assert_same_run(fused_params, fused, eager_params, eager)


class _WithoutPerTensorForm(AdaptimOptimizer):
    """A rule with a multi-tensor update only (every registered optimizer has the per-tensor form)."""

    def __init__(self, params: Any, lr: float = 0.1, **kwargs: Any) -> None:
        super().__init__(params, dict(lr=lr, **kwargs))

    def _update(self, group: dict[str, Any], batch: Any, foreach: bool) -> None:
        torch._foreach_add_(batch.params, batch.grads, alpha=-group["lr"])


def test_every_registered_optimizer_fuses() -> None:
    assert not NOT_FUSABLE, [i.name for i in NOT_FUSABLE]


def test_fused_is_refused_without_a_per_tensor_function() -> None:
    p = torch.nn.Parameter(torch.ones(3))
    with pytest.raises(ValueError, match="fused=True is not available"):
        _WithoutPerTensorForm([p], fused=True)
    opt = _WithoutPerTensorForm([p])
    with pytest.raises(ValueError, match="fused=True is not available"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(2))], "fused": True})
    assert len(opt.param_groups) == 1
    p.grad = torch.ones(3)
    opt.step()
    assert torch.equal(p.detach(), torch.full((3,), 0.9))


@pytest.mark.parametrize("info", FUSABLE[:1], ids=[i.name for i in FUSABLE[:1]])
def test_fused_and_foreach_together_are_refused(info: Any) -> None:
    with pytest.raises(ValueError, match="fused=True and foreach=True"):
        make(info, [torch.nn.Parameter(torch.zeros(3))], fused=True, foreach=True)
    opt = make(info, [torch.nn.Parameter(torch.zeros(3))])
    with pytest.raises(ValueError, match="fused=True and foreach=True"):
        opt.add_param_group(
            {"params": [torch.nn.Parameter(torch.zeros(3))], "fused": True, "foreach": True}
        )
    assert len(opt.param_groups) == 1


def _compiled_info() -> Any:
    """A fusable optimizer that compiles (Adam calls torch's own fused kernels instead)."""
    return next(i for i in FUSABLE if i.cls not in (adaptim.Adam, adaptim.AdamW))


def _compiled_optimizer() -> Callable[..., torch.optim.Optimizer]:
    info = _compiled_info()
    return lambda params, **kw: make(info, params, **kw)


def test_unsupported_device_is_refused() -> None:
    build = _compiled_optimizer()
    with pytest.raises(RuntimeError, match="supports CPU and CUDA tensors, not 'meta'"):
        build([torch.nn.Parameter(torch.zeros(3, device="meta"))], fused=True)


def test_no_compiler_is_refused_and_fused_none_runs_eagerly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(fused_module.shutil, "which", lambda name: None)
    # the lookup is cached per process: a fresh cache for this test only
    monkeypatch.setattr(
        fused_module, "_has_cxx", functools.cache(fused_module._has_cxx.__wrapped__)
    )
    build = _compiled_optimizer()
    with pytest.raises(RuntimeError, match="needs a C\\+\\+ compiler"):
        build([torch.nn.Parameter(torch.zeros(3))], fused=True)
    p = torch.nn.Parameter(torch.ones(3))
    opt = build([p])
    p.grad = torch.ones(3)
    opt.step()
    assert not torch.equal(p.detach(), torch.ones(3))


@pytest.mark.parametrize("name", ["adamp", "sgdp"])
def test_fused_equals_eager_where_the_projection_fires(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AdamP/SGDP project only where gradient and weight are nearly orthogonal, which random
    gradients never are: here every row of every matrix has a gradient orthogonal to it, so the
    channel projection fires at every step (counted on the eager run), fused and eager alike."""
    from adaptim.optimizers import adamp as adamp_module

    info = next(i for i in FUSABLE if i.name == name)
    fired: list[bool] = []
    original = adamp_module._tangential_

    def counting(*args: Any, **kwargs: Any) -> Any:
        channel, layer = original(*args, **kwargs)
        if not torch.compiler.is_compiling():
            fired.append(bool(channel | layer))
        return channel, layer

    def orthogonal_grads(params: list[torch.nn.Parameter], step: int) -> None:
        _grads(params, step)
        for p in params:
            if p.dim() == 2 and p.is_contiguous():
                rows, g = p.detach().double(), p.grad.double()
                g -= rows * (g * rows).sum(1, keepdim=True) / (rows * rows).sum(1, keepdim=True)
                p.grad = g.to(p.dtype)

    def train(params: list[torch.nn.Parameter], **kwargs: Any) -> torch.optim.Optimizer:
        opt = make(info, [{"params": params}], **kwargs)
        for step in range(STEPS):
            orthogonal_grads(params, step)
            opt.step()
        return opt

    eager_params, fused_params = _params(), _params()
    monkeypatch.setattr(adamp_module, "_tangential_", counting)
    eager = train(eager_params, foreach=False, fused=False)
    assert sum(fired) >= STEPS, f"the projection fired {sum(fired)} times"
    fused = train(fused_params, fused=True)
    _assert_same_run(fused_params, fused, eager_params, eager)


# -- the plans kept between steps (core/fused.py's _Plan) -------------------------------------------


def _run_with(
    build: Callable[..., torch.optim.Optimizer],
    params: list[torch.nn.Parameter],
    between: Callable[[int, torch.optim.Optimizer, list[torch.nn.Parameter]], None],
    **kwargs: Any,
) -> torch.optim.Optimizer:
    opt = build(params, **kwargs)
    for step in range(8):
        between(step, opt, params)
        _grads(params, step)
        opt.step()
    return opt


def _plan_cases() -> dict[str, Callable[[int, Any, list[torch.nn.Parameter]], None]]:
    def swap_data(step: int, opt: Any, params: list[torch.nn.Parameter]) -> None:
        if step == 4:  # what module.to() does: the same Parameter, new storage
            for p in params:
                p.data = p.data.clone()

    def reload_state(step: int, opt: Any, params: list[torch.nn.Parameter]) -> None:
        if step == 4:  # new state tensors in the same optimizer
            opt.load_state_dict(copy.deepcopy(opt.state_dict()))

    return {"swap_data": swap_data, "reload_state": reload_state}


@pytest.mark.parametrize("case", sorted(_plan_cases()))
def test_a_plan_is_not_reused_for_other_tensors(case: str) -> None:
    """A parameter whose storage was replaced and a reloaded state are updated where they are now
    (a plan made for the old tensors would write into those)."""
    build = _compiled_optimizer()
    between = _plan_cases()[case]
    eager_params, fused_params = _params(), _params()
    eager = _run_with(build, eager_params, between, foreach=False)
    fused = _run_with(build, fused_params, between, fused=True)
    _assert_same_run(fused_params, fused, eager_params, eager)


def test_gradients_that_become_views_of_one_buffer() -> None:
    """Gradients that are views into one flat buffer (DDP's bucket views) from some step on: the
    plan made for plain gradients does not serve them (their pieces would share a storage in a
    call), and the step equals the eager one."""
    build = _compiled_optimizer()
    results = []
    for kwargs in ({"foreach": False}, {"fused": True}):
        params = _params()
        opt = build(params, **kwargs)
        for step in range(8):
            _grads(params, step)
            if step >= 4:
                flat = torch.cat([p.grad.reshape(-1) for p in params])
                views = flat.split([p.numel() for p in params])
                for p, v in zip(params, views, strict=True):
                    p.grad = v.view(p.shape) if p.grad.is_contiguous() else p.grad
            opt.step()
        results.append((params, opt))
    (eager_params, eager), (fused_params, fused) = results
    _assert_same_run(fused_params, fused, eager_params, eager)


def test_the_optimizer_keeps_no_gradient_alive() -> None:
    """After a fused step and ``zero_grad()``, the gradients are freed (a model's worth of
    gradients kept through the next forward pass would raise its peak memory)."""
    build = _compiled_optimizer()
    params = _params()
    opt = build(params, fused=True)
    for step in range(3):
        _grads(params, step)
        opt.step()
        watched = [weakref.ref(p.grad) for p in params]
        opt.zero_grad()
        gc.collect()
        assert all(w() is None for w in watched), "a gradient outlived zero_grad()"


def _tensors_in(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for k, v in obj.items() for t in _tensors_in(k) + _tensors_in(v)]
    if isinstance(obj, list | tuple):
        return [t for v in obj for t in _tensors_in(v)]
    if hasattr(obj, "__dict__"):
        return _tensors_in(vars(obj))
    return []


def test_plans_are_made_once_and_hold_no_tensor(monkeypatch: pytest.MonkeyPatch) -> None:
    """bf16 parameters step on fp32 working copies made anew at each step, and gradients are new
    tensors at each step: one plan per batch still serves every step after the first, and the
    plans hold no tensor (a plan holding this step's copies would keep a model's worth of memory
    per step, and one holding a parameter's old storage would write there)."""
    made = []
    real = fused_module._make_plan

    def counting(*args: Any, **kwargs: Any) -> Any:
        made.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(fused_module, "_make_plan", counting)
    build = _compiled_optimizer()
    params = _params((torch.float32, torch.bfloat16))
    opt = build(_groups(_compiled_info(), params), fused=True)
    for step in range(6):
        _grads(params, step)
        opt.step()
        if step == 0:
            first = len(made)
    plans = opt.__dict__["_fused_plans"]
    assert first > 0 and len(made) == first, f"{len(made) - first} plans made after the first step"
    assert len(plans) == first
    assert _tensors_in(plans) == []


# -- calls into a compiled graph without dynamo (core/fused.py's _direct) --------------------------


def _without_dynamo(monkeypatch: pytest.MonkeyPatch) -> None:
    """From here on, a call through dynamo fails the test."""

    def refused(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("called through dynamo")

    for key in list(fused_module._compiled):
        monkeypatch.setitem(fused_module._compiled, key, refused)


@pytest.mark.parametrize("info", FUSABLE, ids=[i.name for i in FUSABLE])
def test_later_steps_call_the_graphs_directly(info: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """After the steps that compile (8, past RAdam's rectification switch), every optimizer's
    calls go straight to the compiled graphs, and the run still equals the eager one: two groups,
    fp32, fp64 and bf16 parameters, a scheduler."""
    dtypes = (torch.float32, torch.float64, torch.bfloat16)
    eager_params, fused_params = _params(dtypes), _params(dtypes)
    eager = _train(info, eager_params, range(STEPS), foreach=False, fused=False)
    fused = make(info, _groups(info, fused_params), fused=True)
    sched = torch.optim.lr_scheduler.LambdaLR(fused, lambda s: 0.95**s)
    for step in range(STEPS):
        if step == 8:
            _without_dynamo(monkeypatch)
        _step(fused, fused_params, step)
        sched.step()
    _assert_same_run(fused_params, fused, eager_params, eager)


def test_dynamo_reset_drops_the_direct_calls() -> None:
    """After ``torch._dynamo.reset()`` the next step compiles again (through dynamo), rather than
    calling graphs that dynamo no longer holds."""
    info = _compiled_info()
    params = _params()
    opt = make(info, _groups(info, params), fused=True)
    for step in range(3):
        _step(opt, params, step)
    counters = torch._dynamo.utils.counters["stats"]
    torch._dynamo.reset()
    before = counters["unique_graphs"]
    _step(opt, params, 3)
    assert counters["unique_graphs"] > before


def _add_scaled(params: list[torch.Tensor], grads: list[torch.Tensor], *, k: int) -> None:
    for p, g in zip(params, grads, strict=True):
        p.add_(g * k)


def test_an_input_that_is_not_a_piece_keeps_the_call_on_dynamo() -> None:
    """An int scalar is a symbolic input of the graph (``dynamic=True``) that is no piece and no
    piece's size: such a call stays on dynamo, and a new value is not run with the old one."""
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(300, generator=gen) for _ in range(3)]
    grads = [torch.randn(300, generator=gen) for _ in range(3)]
    expected = [p + g * 2 + g * 3 for p, g in zip(params, grads, strict=True)]
    plans: dict[Any, Any] = {}
    for k in (2, 3):
        fused_module.run_elementwise(
            _add_scaled,
            [params, grads],
            [1] * 3,
            lambda step, k=k: {"k": k},
            fused=True,
            plans=plans,
        )
    for p, e in zip(params, expected, strict=True):
        torch.testing.assert_close(p, e, rtol=0, atol=0)
    mine = [v for k, v in fused_module._direct.items() if k[0] is _add_scaled]
    assert mine and all(v is None for v in mine)


def test_a_direct_call_is_not_reused_at_another_arity(monkeypatch: pytest.MonkeyPatch) -> None:
    """A direct call's arguments are positions in the call's pieces: after ``ARITY`` changes, the
    same tensors take other positions, and the run still equals the eager one."""
    info = _compiled_info()
    eager_params, fused_params = _params(), _params()
    eager = _train(info, eager_params, range(8), foreach=False, fused=False)
    fused = make(info, _groups(info, fused_params), fused=True)
    sched = torch.optim.lr_scheduler.LambdaLR(fused, lambda s: 0.95**s)
    for step in range(8):
        if step == 4:
            monkeypatch.setattr(fused_module, "ARITY", 3)
        _step(fused, fused_params, step)
        sched.step()
    _assert_same_run(fused_params, fused, eager_params, eager)


def test_no_direct_call_under_a_compiler_stance(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under ``torch.compiler.set_stance("force_eager")`` the update runs as dynamo runs it (here:
    eagerly), not through a graph called directly."""
    info = _compiled_info()
    params = _params()
    opt = make(info, _groups(info, params), fused=True)
    for step in range(3):
        _step(opt, params, step)
    calls = []
    for key, direct in list(fused_module._direct.items()):
        if direct is not None:

            def counted(*args: Any, run: Any = direct[0]) -> Any:
                calls.append(1)
                return run(*args)

            monkeypatch.setitem(fused_module._direct, key, (counted, direct[1]))
    _step(opt, params, 3)
    assert calls, "no direct call at all"
    calls.clear()
    with torch.compiler.set_stance("force_eager"):
        _step(opt, params, 4)
    assert not calls


def test_no_call_takes_more_than_arity_pieces() -> None:
    """Pieces of one large tensor go to distinct calls, each then open; small tensors after it
    fill the last call and then new ones, never a call past ``ARITY`` pieces (such a call is a
    graph of its own, compiled for its own count: the transformer set compiled a call of 59)."""
    gen = torch.Generator().manual_seed(0)
    sizes = [1000, 100, 100, 100, 900, 100, 100]  # 256-element pieces: 4 of 1000, 4 of 900
    columns = [[torch.randn(n, generator=gen) for n in sizes] for _ in range(3)]
    plan = fused_module._make_plan(columns, True, fused_module._layout(columns, whole=False))
    counts = [len(slots) for slots, _ in plan.calls]
    assert max(counts) <= fused_module.ARITY, counts
    pieces = sorted(slot for slots, _ in plan.calls for slot in slots)
    assert len(pieces) == len(set(pieces)) == 4 + 3 + 4 + 2


def test_whole_tensor_calls_take_whole_arity_tensors(monkeypatch: pytest.MonkeyPatch) -> None:
    """An update that needs whole tensors gets ``WHOLE_ARITY`` of them per call (each a loop nest
    of its own in the graph, so fewer than ``ARITY``), padded to it; flat pieces keep ``ARITY``."""
    monkeypatch.setattr(fused_module, "ARITY", 5)
    monkeypatch.setattr(fused_module, "WHOLE_ARITY", 3)
    gen = torch.Generator().manual_seed(0)
    columns = [[torch.randn(8, 6, generator=gen) for _ in range(7)] for _ in range(2)]
    whole = fused_module._make_plan(columns, False, fused_module._layout(columns, whole=True))
    assert [len(slots) for slots, _ in whole.calls] == [3, 3, 1]
    args = fused_module._arguments(columns, *whole.calls[-1], fused_module._arity(False, 2))
    assert [len(column) for column in args] == [3, 3]
    flat = fused_module._make_plan(columns, True, fused_module._layout(columns, whole=False))
    assert [len(slots) for slots, _ in flat.calls] == [5, 2]


def test_wide_updates_take_fewer_pieces_a_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flat pieces per call: ``ARITY``, fewer (not below 4) for an update with so many columns
    that a call would pass more than ``CALL_TENSORS`` tensors (MADA: 12 columns, 8 pieces)."""
    monkeypatch.setattr(fused_module, "ARITY", 16)
    assert fused_module._arity(True, 4) == fused_module._arity(True, 6) == 16
    assert fused_module._arity(True, 12) == 8
    assert fused_module._arity(True, 40) == 4
    gen = torch.Generator().manual_seed(0)
    columns = [[torch.randn(10, generator=gen) for _ in range(9)] for _ in range(24)]
    plan = fused_module._make_plan(columns, True, fused_module._layout(columns, whole=False))
    assert [len(slots) for slots, _ in plan.calls] == [4, 4, 1]


def test_each_graph_is_traced_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fused step compiles without AOTAutograd's scalar tensorify pass, which restarted
    dynamo's analysis of every graph (a float symbol for each 0-dim float64 input, found unused);
    outside the fused calls the pass runs as torch decides."""
    tensorify = pytest.importorskip("torch.fx.passes._tensorify_python_scalars")
    specialized: list[str] = []
    original = tensorify.TensorifyState.specialize

    def recording(name: str) -> None:
        specialized.append(name)
        original(name)

    monkeypatch.setattr(tensorify.TensorifyState, "specialize", recording)
    torch._dynamo.reset()
    info = _compiled_info()
    params = _params()
    opt = make(info, _groups(info, params), fused=True)
    # the caches would skip the pass: compile for real
    with (
        torch._inductor.config.patch(fx_graph_cache=False),
        torch._functorch.config.patch(enable_autograd_cache=False),
    ):
        _step(opt, params, 0)
    assert specialized == []
    assert tensorify._is_tensorify_enabled() == torch._dynamo.utils._is_tensorify_enabled()


WHOLE = [i for i in FUSABLE if not i.cls.splits_tensors]


def _matrix_sized(code: str) -> list[str]:
    """The shapes of the buffers Inductor's generated ``code`` allocates with two or more
    dimensions none of which is 1: the size of a matrix the update runs over, not a row or
    column statistic."""
    shapes = re.findall(r"empty_strided_\w+\(\(([^)]*)\)", code)
    dims = [[d.strip() for d in shape.split(",") if d.strip()] for shape in shapes]
    return [", ".join(d) for d in dims if len(d) >= 2 and "1" not in d]


def _whole_tensor_cases() -> list[Any]:
    """Each whole-tensor update with the registry's settings, and Adafactor also without its
    momentum (``beta1=None``, its default; the registry's is 0.9): another last pass."""
    cases = []
    for info in WHOLE:
        xfail = pytest.mark.xfail(
            info.name == "adamp",
            strict=True,
            reason="AdamP's denominator is read by the projection's per-row sums and by the last "
            "pass, and Inductor stores it (a temporary of the tensor's size, for the call); "
            "computed twice instead, the step was slower (83-87 -> 100-105 ms)",
        )
        cases.append(pytest.param(info, {}, id=info.name, marks=xfail))
        if info.name == "adafactor":
            cases.append(pytest.param(info, {"beta1": None}, id="adafactor-beta1-none"))
    return cases


def test_computed_once_is_a_well_formed_opaque_operator() -> None:
    """``computed_once``'s operator (a ``torch.library.Library`` definition, not ``custom_op``,
    for its cost per call: docs/fused.md) passes torch's operator checks (schema, fake tensor,
    autograd registration, AOT dispatch), is tagged PT2-compliant as ``custom_op`` would tag it,
    and stays one call in a compiled graph."""
    from adaptim.core.functional import computed_once

    op = torch.ops.adaptim.computed_once.default
    results = torch.library.opcheck(
        op, (torch.randn(3, 4, generator=torch.Generator().manual_seed(0)),)
    )
    assert set(results.values()) == {"SUCCESS"}, results
    assert torch.Tag.pt2_compliant_tag in op.tags
    graphs: list[torch.fx.GraphModule] = []

    def capture(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
        graphs.append(gm)
        return gm.forward

    x = torch.rand(5, generator=torch.Generator().manual_seed(0)) + 0.1
    out = torch.compile(lambda t: computed_once(t.sqrt()) * t, backend=capture, fullgraph=True)(x)
    torch.testing.assert_close(out, x.sqrt() * x)
    assert [n.target for n in graphs[0].graph.nodes if n.op == "call_function"].count(op) == 1


@pytest.mark.parametrize(("info", "options"), _whole_tensor_cases())
def test_whole_tensor_updates_store_no_matrix_sized_temporary(
    info: Any, options: dict[str, Any]
) -> None:
    """The fused step allocates no model-sized temporaries (issue 9). A whole-tensor update of a
    matrix is compiled code that allocates nothing of the matrix's size: H-Fac's stored its
    momentum and its update in full (a pass of 8 bytes per element each way, more than the rest
    of its step) until its row and column factors were ``computed_once``, and Adafactor's stored
    ``V = R C^T / mean(R)``. Two steps: the graphs of the first and of any later branch (SGDHess
    corrects from its second step on)."""
    from torch._inductor.utils import run_and_get_code

    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(0.1 * torch.randn(40, 30, generator=gen))]
    opt = make(info, params, fused=True, **options)

    def two_steps() -> None:
        _step(opt, params, 0)
        _step(opt, params, 1)

    _, codes = run_and_get_code(two_steps)
    assert codes, "no graph was compiled"
    assert [s for code in codes for s in _matrix_sized(code)] == []

"""Wrappers as drop-in ``torch.optim`` optimizers for checkpoints and hooks: torch's state-dict format
(top-level ``state`` and ``param_groups``), DCP's ``get_optimizer_state_dict`` /
``set_optimizer_state_dict`` with ``dcp.save`` / ``dcp.load``, the instance and global hooks, and the
format adaptim saved before (``data/v1_checkpoints.pt``, written by ``data/make_v1_checkpoints.py`` with
the code of commit 7a79caf)."""

from __future__ import annotations

import copy
import io
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

import adaptim

pytestmark = pytest.mark.filterwarnings(
    "ignore:torch.distributed is disabled, unavailable or uninitialized:UserWarning"
)

DATA = Path(__file__).with_name("data")

WRAPPERS: dict[str, Callable[[nn.Module], torch.optim.Optimizer]] = {
    "lookahead-adam": lambda m: adaptim.Lookahead(
        torch.optim.Adam(m.parameters(), lr=0.05), k=3, pullback_momentum="pullback"
    ),
    "lookahead-k1": lambda m: adaptim.Lookahead(
        torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9), k=1, alpha=0.5
    ),
    "averaging-adabelief": lambda m: adaptim.IterateAveraging(
        adaptim.AdaBelief(m.parameters(), lr=0.05), start=1, gap=2
    ),
    "activelr-adamw": lambda m: adaptim.ActiveLR(
        torch.optim.AdamW(m.parameters(), lr=0.05), steps_per_epoch=2
    ),
    "averaging-of-lookahead": lambda m: adaptim.IterateAveraging(
        adaptim.Lookahead(torch.optim.Adam(m.parameters(), lr=0.05), k=2), start=0
    ),
    "lookahead-of-lookahead": lambda m: adaptim.Lookahead(
        adaptim.Lookahead(torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9), k=2), k=3
    ),
}
parametrize_wrappers = pytest.mark.parametrize("make", WRAPPERS.values(), ids=WRAPPERS.keys())


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()


def run(m: nn.Module, opt: torch.optim.Optimizer, steps: range) -> None:
    for s in steps:
        gen = torch.Generator().manual_seed(100 + s)
        x = torch.randn(5, 3, generator=gen, dtype=torch.float64)
        y = torch.randn(5, 2, generator=gen, dtype=torch.float64)
        opt.zero_grad()
        ((m(x) - y) ** 2).mean().backward()
        opt.step()


def params(m: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in m.parameters()]


def assert_equal(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y), f"max diff {(x - y).abs().max().item():.3e}"


# -- the format -------------------------------------------------------------------------------------


@parametrize_wrappers
def test_state_dict_has_torch_format_with_the_wrapper_state_inside(make):
    m = model()
    opt = make(m)
    run(m, opt, range(7))
    sd = opt.state_dict()
    assert set(sd) == {"state", "param_groups"}
    inner = opt.optimizer
    while isinstance(inner, adaptim.wrappers._base.OptimizerWrapper):
        inner = inner.optimizer
    assert sd["param_groups"] == inner.state_dict()["param_groups"]
    prefix = opt._prefix
    for i, p in enumerate(m.parameters()):
        entry = sd["state"][i]
        assert set(inner.state_dict()["state"].get(i, {})) <= set(entry)  # the inner optimizer's
        assert any(k.startswith(prefix) for k in entry)  # the wrapper's, under distinct keys
        assert set(entry) == set(opt.state[p])  # state_dict()["state"] is opt.state, as in torch
    buffer = io.BytesIO()
    torch.save(sd, buffer)
    buffer.seek(0)
    torch.load(buffer, weights_only=True)  # plain containers, tensors and numbers only


@parametrize_wrappers
def test_state_dict_round_trip_continues_bit_identically(make):
    m, twin = model(), model()
    opt, twin_opt = make(m), make(twin)
    run(m, opt, range(7))
    run(twin, twin_opt, range(3))  # some other state, to be replaced
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    twin.load_state_dict(m.state_dict())
    twin_opt.load_state_dict(torch.load(buffer, weights_only=True))
    run(m, opt, range(7, 14))
    run(twin, twin_opt, range(7, 14))
    assert_equal(params(m), params(twin))


def test_nested_wrappers_of_one_kind_keep_distinct_keys():
    m = model()
    opt = WRAPPERS["lookahead-of-lookahead"](m)
    run(m, opt, range(5))
    entry = opt.state_dict()["state"][0]
    assert {
        "lookahead_slow_param",
        "lookahead2_slow_param",
        "lookahead_step",
        "lookahead2_step",
    } <= set(entry)
    assert entry["lookahead_step"] == 1 and entry["lookahead2_step"] == 2  # k=2 inside, k=3 outside


def test_a_plain_optimizer_state_dict_is_refused_before_anything_changes():
    m = model()
    adam = torch.optim.Adam(m.parameters(), lr=0.05)
    run(m, adam, range(2))
    opt = WRAPPERS["lookahead-adam"](m)
    run(m, opt, range(3))
    before = opt.state_dict()
    with pytest.raises(ValueError, match=r"Lookahead\.state_dict.*no 'lookahead_\*' entries"):
        opt.load_state_dict(adam.state_dict())
    after = opt.state_dict()
    assert after["state"][0]["lookahead_step"] == before["state"][0]["lookahead_step"] == 0
    assert torch.equal(after["state"][0]["exp_avg"], before["state"][0]["exp_avg"])
    with pytest.raises(ValueError, match="parameters"):
        opt.load_state_dict({"state": {}, "param_groups": [{"params": [0]}]})


@parametrize_wrappers
def test_state_view_reads_and_writes_through(make):
    """What tools do with ``optimizer.state`` (Lightning moves every entry to the device this way)."""
    m, twin = model(), model()
    opt, twin_opt = make(m), make(twin)
    assert not opt.state and len(opt.state) == 0  # nothing before the first step, as torch.optim
    run(m, opt, range(5))
    run(twin, twin_opt, range(5))
    assert len(opt.state) == len(list(m.parameters())) and all(
        p in opt.state for p in m.parameters()
    )
    for _, entry in twin_opt.state.items():
        for key, value in entry.items():
            if key != "step":
                entry[key] = value.clone() if isinstance(value, torch.Tensor) else value
    first = next(twin.parameters())
    twin_opt.state[first] = dict(twin_opt.state[first])  # a whole entry replaced
    twin_opt.state = dict(twin_opt.state)  # the whole state replaced (as torch's __setstate__ does)
    run(m, opt, range(5, 11))
    run(twin, twin_opt, range(5, 11))
    assert_equal(params(m), params(twin))


# -- DCP ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flatten", [False, True], ids=["nested", "flattened"])
@parametrize_wrappers
def test_dcp_save_load_continues_bit_identically(make, flatten, tmp_path):
    options = StateDictOptions(flatten_optimizer_state_dict=flatten)
    m = model()
    opt = make(m)
    run(m, opt, range(7))
    saved = {
        "model": get_model_state_dict(m),
        "optim": get_optimizer_state_dict(m, opt, options=options),
    }
    dcp.save(saved, checkpoint_id=tmp_path)

    twin = model()
    twin_opt = make(twin)  # fresh: DCP initialises it with a zero-gradient step, then loads into it
    loaded = {
        "model": get_model_state_dict(twin),
        "optim": get_optimizer_state_dict(twin, twin_opt, options=options),
    }
    dcp.load(loaded, checkpoint_id=tmp_path)
    set_model_state_dict(twin, loaded["model"])
    set_optimizer_state_dict(twin, twin_opt, loaded["optim"], options=options)

    run(m, opt, range(7, 14))
    run(twin, twin_opt, range(7, 14))
    assert_equal(params(m), params(twin))


@parametrize_wrappers
def test_set_optimizer_state_dict_after_the_model_is_loaded(make):
    """In memory, model first (as ``set_state_dict`` does): DCP's initialising step on the fresh
    wrapper must not move the loaded parameters (Lookahead k=1 would, with slow weights taken at
    construction)."""
    m = model()
    opt = make(m)
    run(m, opt, range(7))
    # copies (torch.optim's load_state_dict keeps the very tensors it is given, as a file would not)
    osd = copy.deepcopy(get_optimizer_state_dict(m, opt))
    msd = copy.deepcopy(get_model_state_dict(m))
    twin = model()
    twin_opt = make(twin)
    set_model_state_dict(twin, msd)
    set_optimizer_state_dict(twin, twin_opt, osd)
    assert_equal(params(m), params(twin))
    run(m, opt, range(7, 14))
    run(twin, twin_opt, range(7, 14))
    assert_equal(params(m), params(twin))


# -- hooks -------------------------------------------------------------------------------------------


@parametrize_wrappers
def test_state_dict_hooks_are_called(make):
    m = model()
    opt = make(m)
    run(m, opt, range(3))
    calls = []
    opt.register_state_dict_pre_hook(lambda o: calls.append(("sd_pre", o)))

    def post(o, sd):
        calls.append(("sd_post", o))
        return {**sd, "note": "added by a hook"}

    opt.register_state_dict_post_hook(post)

    def load_pre(o, sd):
        calls.append(("load_pre", o))
        assert sd.pop("note") == "added by a hook"
        return sd

    opt.register_load_state_dict_pre_hook(load_pre)
    opt.register_load_state_dict_post_hook(lambda o: calls.append(("load_post", o)))
    sd = opt.state_dict()
    assert sd["note"] == "added by a hook"
    opt.load_state_dict(sd)
    assert calls == [("sd_pre", opt), ("sd_post", opt), ("load_pre", opt), ("load_post", opt)]


@parametrize_wrappers
def test_step_hooks_fire_once_per_step(make):
    m = model()
    opt = make(m)
    inner = opt.optimizer
    calls = []
    handles = [
        register_optimizer_step_pre_hook(lambda o, a, k: calls.append(("global_pre", o))),
        register_optimizer_step_post_hook(lambda o, a, k: calls.append(("global_post", o))),
        opt.register_step_pre_hook(lambda o, a, k: calls.append(("pre", o))),
        opt.register_step_post_hook(lambda o, a, k: calls.append(("post", o))),
        inner.register_step_pre_hook(lambda o, a, k: calls.append(("inner_pre", o))),
        inner.register_step_post_hook(lambda o, a, k: calls.append(("inner_post", o))),
    ]
    try:
        run(m, opt, range(2))
    finally:
        for h in handles:
            h.remove()
    one_step = [
        ("global_pre", opt),
        ("pre", opt),
        ("inner_pre", inner),
        ("inner_post", inner),
        ("post", opt),
        ("global_post", opt),
    ]
    assert calls == one_step * 2


def test_global_hooks_of_a_plain_optimizer_and_a_scheduled_inner_one():
    m = model()
    inner = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(inner, step_size=1, gamma=0.5)  # patches inner.step
    opt = adaptim.Lookahead(inner, k=2)
    seen = []
    handle = register_optimizer_step_post_hook(lambda o, a, k: seen.append(o))
    try:
        run(m, opt, range(2))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no "lr_scheduler.step() before optimizer.step()"
            sched.step()
    finally:
        handle.remove()
    assert seen == [opt, opt]
    assert inner.param_groups[0]["lr"] == pytest.approx(0.05)


# -- the format saved before -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["lookahead", "iterate_averaging", "activelr"])
def test_v1_checkpoint_loads_and_continues_as_the_old_code_did(name):
    import make_v1_checkpoints as v1  # tests/wrappers/data, on the path below

    saved = torch.load(DATA / "v1_checkpoints.pt", weights_only=True)[name]
    assert set(saved["optimizer"]) == {"optimizer", "wrapper", "state", "extra"}
    m = v1.model()
    opt = v1.CASES[name](m)
    m.load_state_dict(saved["model"])
    opt.load_state_dict(saved["optimizer"])
    assert set(opt.state_dict()) == {"state", "param_groups"}  # saved again in today's format
    v1.run(m, opt, range(7, 12))
    assert_equal(params(m), saved["after"])


@pytest.fixture(autouse=True)
def _data_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(DATA))

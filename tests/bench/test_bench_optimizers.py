"""How the bench picks optimizers, their lr grids and the hyperparameters it sets."""

from __future__ import annotations

import inspect
import re

import pytest
import torch

from adaptim import registry
from adaptim.bench import optimizers as O


class _NoDefaultLr(torch.optim.SGD):
    """A stand-in registry entry: required lr and ``rho``, momentum defaulting to 0."""

    def __init__(self, params, lr, rho, momentum=0.0):
        self.rho = rho
        super().__init__(params, lr=lr, momentum=momentum)


@pytest.fixture
def fake_entry(monkeypatch):
    info = registry.OptimInfo(
        name="zz-fake-sgd",
        cls=_NoDefaultLr,
        paper="-",
        paper_url="-",
        reference="-",
        description="a test stand-in",
        test_kwargs={"lr": 0.02, "rho": 0.5, "momentum": 0.3},
        tuned_lr={"quadratic": 0.4, "rosenbrock": None},
    )
    monkeypatch.setitem(registry._REGISTRY, info.name, info)
    return info


def test_registry_entry_defaults_and_kwargs(fake_entry):
    opt = O.all_optimizers()["zz-fake-sgd"]
    assert opt.default_lr == 0.02  # no default lr: the record's test_kwargs lr
    assert opt.tuned_lr == {"quadratic": 0.4}  # a None hint is ignored
    # Required arguments come from test_kwargs; momentum 0 (torch SGD's default) becomes 0.9.
    assert O.bench_kwargs("zz-fake-sgd") == {"rho": 0.5, "momentum": 0.9}
    p = torch.nn.Parameter(torch.zeros(2))
    made = O.make_optimizer("zz-fake-sgd", [p], 0.1)
    assert made.rho == 0.5 and made.param_groups[0]["momentum"] == 0.9
    assert made.param_groups[0]["lr"] == 0.1


def test_lr_centres(fake_entry):
    opts = O.all_optimizers()
    fake, adam, sgdm = opts["zz-fake-sgd"], opts["adam"], opts["torch-sgdm"]
    assert O.lr_center(fake, "quadratic") == 0.4
    assert O.lr_center(fake, "rosenbrock") == pytest.approx(0.2)  # no hint: 10 x the usual lr
    assert O.lr_center(fake, "default", 3.0) == pytest.approx(0.06)
    assert O.lr_center(adam, "default") == 1e-3
    assert O.lr_center(sgdm, "rosenbrock") == 1e-3


def test_lr_grids():
    assert O.lr_grid(1e-3) == [0.0003162, 0.001, 0.003162]
    assert O.lr_grid(1e-2, points=5, spacing=1.0) == [1e-4, 1e-3, 1e-2, 1e-1, 1.0]
    assert O.lr_grid(None) == [None]
    grid = O.parse_lrs("1e-4:1e-1:4")
    assert grid == [1e-4, 1e-3, 1e-2, 1e-1]
    assert O.parse_lrs("3e-3, 1e-3") == [1e-3, 3e-3]
    refused = {
        "1e-3:1e-1": "expected lo:hi:n",
        "0:1:3": "learning rates must be positive",
        "1:0.1:3": "0 < lo <= hi",
        "-1": "learning rates must be positive",
        "a:b:c": "'a' is not a finite number",
        "nan": "'nan' is not a finite number",
        "1e-3,inf": "'inf' is not a finite number",
        "-inf:1:3": "'-inf' is not a finite number",
        "1e-3:1e-1:2.5": "n = '2.5' is not a positive integer",
        "1e-3:1e-1:0": "n = '0' is not a positive integer",
        " , ": "expected lo:hi:n",
    }
    for bad, why in refused.items():
        with pytest.raises(
            ValueError, match=f"--lrs '{re.escape(bad.strip())}': .*{re.escape(why)}"
        ):
            O.parse_lrs(bad)


def test_resolve_names_patterns_and_errors(monkeypatch):
    wrapper = registry.OptimInfo(
        name="zz-fake-wrapper",
        cls=_NoDefaultLr,
        paper="-",
        paper_url="-",
        reference="-",
        description="a test stand-in",
        kind="wrapper",
    )
    monkeypatch.setitem(registry._REGISTRY, wrapper.name, wrapper)
    assert O.resolve_optimizers(["torch-sgdm", "ADAM", "adam"]) == ["torch-sgdm", "adam"]
    assert set(O.resolve_optimizers(["adam*"])) >= {"adam", "adamw"}
    everything = O.resolve_optimizers(["all"])
    assert everything[:2] == ["torch-adamw", "torch-sgdm"] and "adam" in everything
    with pytest.raises(ValueError, match="did you mean 'adamw'"):
        O.resolve_optimizers(["adamww"])
    with pytest.raises(ValueError, match="is a wrapper, not an optimizer"):
        O.resolve_optimizers(["zz-fake-wrapper"])


# -- an entry that is another's optimizer at the bench's settings is not run twice ------------------


def test_default_set_leaves_out_entries_that_repeat_another():
    defaults = O.default_optimizers()
    assert "adaiv2" not in defaults and "adai" in defaults
    assert set(O.SAME_AS_AT_DEFAULTS).isdisjoint(defaults)
    assert set(O.SAME_AS_AT_DEFAULTS.values()) <= set(defaults)
    # still there when asked for by name, and in "all"
    assert O.resolve_optimizers(["adaiv2"]) == ["adaiv2"]
    assert "adaiv2" in O.resolve_optimizers(["all"])
    assert set(O.default_optimizers()) | set(O.SAME_AS_AT_DEFAULTS) == set(O.all_optimizers())


@pytest.mark.parametrize(("name", "twin"), sorted(O.SAME_AS_AT_DEFAULTS.items()))
def test_a_left_out_entry_steps_exactly_as_its_twin(name, twin):
    # the reason to leave it out: as the bench builds them, the two take the same steps
    gen = torch.Generator().manual_seed(0)
    w0 = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    b0 = torch.randn(4, generator=gen, dtype=torch.float64)
    grads = [
        (torch.randn(6, 4, generator=gen, dtype=torch.float64), torch.randn(4, generator=gen))
        for _ in range(5)
    ]

    def trajectory(which):
        w = torch.nn.Parameter(w0.clone())
        b = torch.nn.Parameter(b0.clone())
        opt = O.make_optimizer(which, [w, b], 0.1)
        out = []
        for gw, gb in grads:
            w.grad, b.grad = gw.clone(), gb.to(torch.float64)
            opt.step()
            out.append(torch.cat([w.detach().flatten(), b.detach()]))
        return torch.stack(out)

    ours, theirs = trajectory(name), trajectory(twin)
    assert not torch.equal(ours[-1], torch.cat([w0.flatten(), b0]))  # it moved
    assert torch.equal(ours, theirs)


# -- the torch.optim baselines ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "cls", "set_by_bench"),
    [
        ("torch-adamw", torch.optim.AdamW, {}),
        ("torch-sgdm", torch.optim.SGD, {"momentum": 0.9}),
        ("torch-nadam", torch.optim.NAdam, {}),
        ("torch-rmsprop", torch.optim.RMSprop, {}),
        ("torch-adagrad", torch.optim.Adagrad, {}),
    ],
)
def test_baselines_are_torch_optimizers_at_torch_defaults(name, cls, set_by_bench):
    opt = O.all_optimizers()[name]
    assert opt.baseline and name in O.default_optimizers()
    p = torch.nn.Parameter(torch.zeros(3))
    made = O.make_optimizer(name, [p], 0.02)
    assert type(made) is cls
    reference = cls([torch.nn.Parameter(torch.zeros(3))], lr=0.02, **set_by_bench).param_groups[0]
    group = made.param_groups[0]
    assert {k: v for k, v in group.items() if k != "params"} == {
        k: v for k, v in reference.items() if k != "params"
    }
    # The centre of the lr search on the training tasks: torch's default lr, but for SGD (torch's
    # 1e-3 is no one's choice with momentum 0.9: 1e-2, as in the papers the registry follows).
    default = inspect.signature(cls.__init__).parameters["lr"].default
    expected = 1e-2 if name == "torch-sgdm" else default
    assert opt.default_lr == expected == O.lr_center(opt, "default")

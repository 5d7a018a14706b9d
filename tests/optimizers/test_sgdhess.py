"""SGDHess (Tran & Cutkosky, NeurIPS 2022): steps by hand, the two ways to get the Hessian-vector
product, and a trajectory against the authors' code run out of tree.

The authors' code (github.com/tranhp98/SGDHess, SGDHess_optimizer/SGDHess.py @ cb80bd7) is not on
PyPI. Point ``ADAPTIM_SGDHESS_REFERENCE`` at a copy of that file to run the oracle tests, e.g.::

    git --git-dir=<clone>/.git show HEAD:SGDHess_optimizer/SGDHess.py > /tmp/ref/SGDHess.py
    ADAPTIM_SGDHESS_REFERENCE=/tmp/ref/SGDHess.py pytest tests/optimizers/test_sgdhess.py

Without it those tests are skipped; the hand-computed steps always run.
"""

from __future__ import annotations

import copy
import importlib.util
import os
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from adaptim.optimizers.sgdhess import SGDHess

F64 = torch.float64
# a fixed symmetric positive definite Hessian and per-step linear terms (minibatch noise)
A = torch.tensor([[2.0, 0.5, 0.0], [0.5, 1.0, -0.3], [0.0, -0.3, 0.5]], dtype=F64)
B = [
    torch.tensor(v, dtype=F64)
    for v in (
        [1.0, -0.5, 0.2],
        [0.3, 0.1, -0.4],
        [-0.2, 0.6, 0.1],
        [0.5, 0.0, 0.3],
        [0.1, -0.2, 0.0],
    )
]
X0 = torch.tensor([0.4, -0.3, 0.8], dtype=F64)


def quadratic(x: torch.Tensor, t: int) -> torch.Tensor:
    """0.5 x^T A x - b_t^T x: gradient A x - b_t, Hessian A at every step."""
    return 0.5 * x @ A @ x - B[t] @ x


def by_hand(lr: float, momentum: float, dampening=0.0, wd=0.0, nesterov=False):
    """The reference code's equations on ``quadratic``, with the exact Hessian A."""
    x, m, d = X0.clone(), None, torch.zeros(3, dtype=F64)
    out = []
    for t in range(len(B)):
        g = A @ x - B[t] + wd * x
        if m is None:
            m = g.clone()
        else:
            m = momentum * (m + A @ d + wd * d) + (1 - dampening) * g
        u = g + momentum * m if nesterov else m
        d = -lr * u
        x = x + d
        out.append(x.clone())
    return out


def run_ours(how: str, **kw: Any) -> list[torch.Tensor]:
    """SGDHess on ``quadratic``: ``how`` is "graph" (backward(create_graph=True), step()) or
    "closure" (a plain closure: finite difference)."""
    x = nn.Parameter(X0.clone())
    opt = SGDHess([x], **kw)
    out = []
    for t in range(len(B)):
        if how == "graph":
            opt.zero_grad()
            quadratic(x, t).backward(create_graph=True)
            opt.step()
        else:

            def closure(t: int = t) -> torch.Tensor:
                opt.zero_grad()
                loss = quadratic(x, t)
                loss.backward()
                return loss

            opt.step(closure)
        out.append(x.detach().clone())
    return out


OPTIONS = [
    dict(lr=0.1, momentum=0.9),
    dict(lr=0.05, momentum=0.5, dampening=0.3, wd=0.1),
    dict(lr=0.1, momentum=0.9, nesterov=True, wd=0.05),
]


@pytest.mark.parametrize("how", ["graph", "closure"])
@pytest.mark.parametrize("options", OPTIONS, ids=["plain", "dampening-wd", "nesterov-wd"])
def test_steps_by_hand(how: str, options: dict[str, Any]) -> None:
    kw = {("weight_decay" if k == "wd" else k): v for k, v in options.items()}
    ours = run_ours(how, **kw)
    expected = by_hand(**options)
    # the forward difference is exact on a quadratic up to rounding (h ~ 1e-8 relative in float64)
    atol = 1e-15 if how == "graph" else 1e-9
    for a, b in zip(ours, expected, strict=True):
        torch.testing.assert_close(a, b, atol=atol, rtol=0)
    assert (ours[-1] - X0).abs().max() > 0.1  # it moved


def test_the_correction_changes_the_trajectory() -> None:
    """SGD momentum (the same rule without H d) differs from SGDHess by more than rounding."""
    x = nn.Parameter(X0.clone())
    sgd = torch.optim.SGD([x], lr=0.1, momentum=0.9)
    for t in range(len(B)):
        sgd.zero_grad()
        quadratic(x, t).backward()
        sgd.step()
    ours = run_ours("graph", lr=0.1, momentum=0.9)[-1]
    assert (ours - x.detach()).abs().max() > 1e-2


def test_momentum_zero_is_sgd() -> None:
    ours = run_ours("graph", lr=0.1, momentum=0.0, weight_decay=0.1)
    x = nn.Parameter(X0.clone())
    sgd = torch.optim.SGD([x], lr=0.1, weight_decay=0.1)
    for t in range(len(B)):
        sgd.zero_grad()
        quadratic(x, t).backward()
        sgd.step()
    torch.testing.assert_close(ours[-1], x.detach(), atol=1e-15, rtol=0)


# -- a small network: graph vs closure, groups, dropout --------------------------------------------


def net(seed: int = 0, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(seed)
    layers = [nn.Linear(5, 8), nn.Tanh(), nn.Dropout(dropout), nn.Linear(8, 2)]
    return nn.Sequential(*layers).to(F64)


def data(steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(3)
    return [
        (torch.randn(16, 5, generator=gen, dtype=F64), torch.randn(16, 2, generator=gen, dtype=F64))
        for _ in range(steps)
    ]


def train(
    model: nn.Module,
    make: Callable[[Any], torch.optim.Optimizer],
    how: str,
    steps: int = 15,
    seed: int = 11,
) -> list[torch.Tensor]:
    opt = make(model)
    torch.manual_seed(seed)  # dropout masks
    for x, y in data(steps):
        if how == "graph":
            opt.zero_grad()
            ((model(x) - y) ** 2).mean().backward(create_graph=True)
            opt.step()
        else:

            def closure(x: torch.Tensor = x, y: torch.Tensor = y) -> torch.Tensor:
                opt.zero_grad()
                loss = ((model(x) - y) ** 2).mean()
                loss.backward()
                return loss

            opt.step(closure)
    return [p.detach().clone() for p in model.parameters()]


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_closure_finite_difference_follows_the_exact_product(dropout: float) -> None:
    """The finite difference draws the same dropout masks as the evaluation at x (the generators
    are reset), so it approximates the exact product; with other masks it would be off by O(1/h)."""
    start = net(dropout=dropout)

    def make(m: nn.Module) -> SGDHess:
        return SGDHess(m.parameters(), lr=0.05, momentum=0.9)

    exact = train(copy.deepcopy(start), make, "graph")
    finite = train(copy.deepcopy(start), make, "closure")
    sgd = train(
        copy.deepcopy(start),
        lambda m: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9),
        "closure",
    )
    assert max_diff(exact, sgd) > 1e-3  # the correction is not negligible here
    assert max_diff(exact, finite) < 1e-6


def test_the_product_spans_param_groups() -> None:
    """Two param groups take the same steps as one: the product has the Hessian blocks between
    groups (the reference computes it group by group and drops them)."""
    start = net()
    one = train(copy.deepcopy(start), lambda m: SGDHess(m.parameters(), lr=0.05), "graph")
    two = train(
        copy.deepcopy(start),
        lambda m: SGDHess([{"params": m[0].parameters()}, {"params": m[3].parameters()}], lr=0.05),
        "graph",
    )
    assert max_diff(one, two) < 1e-15


def test_a_step_without_product_is_refused_and_changes_nothing() -> None:
    model = net()
    opt = SGDHess(model.parameters(), lr=0.05)
    x, y = data(1)[0]
    ((model(x) - y) ** 2).mean().backward()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(RuntimeError, match="create_graph=True"):
        opt.step()
    assert max_diff(before, [p.detach() for p in model.parameters()]) == 0.0
    assert all(len(opt.state[p]) == 0 for p in model.parameters())

    strict = SGDHess(model.parameters(), lr=0.05, hvp="autograd")

    def closure() -> torch.Tensor:
        strict.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        return loss

    with pytest.raises(RuntimeError, match="hvp='autograd'"):
        strict.step(closure)
    assert all(len(strict.state[p]) == 0 for p in model.parameters())


def test_a_first_step_with_zero_gradients_needs_no_product() -> None:
    """torch.distributed.checkpoint creates an optimizer's state by one step with zero gradients,
    lr 0 and no closure: accepted (nothing moves); a real gradient without a product is not."""
    model = net()
    opt = SGDHess(model.parameters(), lr=0.0)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    before = [p.detach().clone() for p in model.parameters()]
    opt.step()
    assert max_diff(before, [p.detach() for p in model.parameters()]) == 0.0
    assert all(opt.state[p]["step"] == 1 for p in model.parameters())


def test_bad_options_are_refused() -> None:
    params = [nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError, match="hvp"):
        SGDHess(params, hvp="finite")
    with pytest.raises(ValueError, match="nesterov"):
        SGDHess(params, momentum=0.0, nesterov=True)


# -- the authors' code, out of tree -----------------------------------------------------------------


def _reference() -> type:
    path = os.environ.get("ADAPTIM_SGDHESS_REFERENCE")
    if not path or not os.path.isfile(path):
        pytest.skip("ADAPTIM_SGDHESS_REFERENCE does not point at the authors' SGDHess.py")
    spec = importlib.util.spec_from_file_location("sgdhess_reference", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SGDHess


@pytest.mark.parametrize(
    "options",
    [
        dict(lr=0.05, momentum=0.9),
        dict(lr=0.05, momentum=0.9, weight_decay=0.01, nesterov=True),
        dict(lr=0.02, momentum=0.5, dampening=0.2, weight_decay=0.05),
    ],
    ids=["default", "nesterov-wd", "dampening-wd"],
)
@pytest.mark.parametrize("foreach", [False, True])
def test_trajectory_equals_the_authors_code(options: dict[str, Any], foreach: bool) -> None:
    reference = _reference()
    start = net()
    theirs = train(
        copy.deepcopy(start), lambda m: reference(m.parameters(), **options), "graph", 30
    )
    ours = train(
        copy.deepcopy(start),
        lambda m: SGDHess(m.parameters(), foreach=foreach, **options),
        "graph",
        30,
    )
    moved = max_diff(ours, [p.detach() for p in start.parameters()])
    assert moved > 1e-2
    assert max_diff(ours, theirs) < 1e-13
    # an ordinary closure (finite difference) stays close to it
    finite = train(
        copy.deepcopy(start), lambda m: SGDHess(m.parameters(), **options), "closure", 30
    )
    assert max_diff(finite, theirs) < 1e-6

"""Shared test fixtures: a small network with batch norm, seeded data, trajectories and comparisons."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

OptFactory = Callable[[Iterable[torch.nn.Parameter]], Any]


def bn_net(dtype: torch.dtype = torch.float64, seed: int = 0) -> nn.Module:
    """Linear -> BatchNorm -> ReLU -> Linear: the first weight is scale-invariant (AdamP projects it)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)).to(dtype)


def batches(steps: int, dtype: torch.dtype = torch.float64, seed: int = 1, n: int = 16):
    """``steps`` seeded minibatches (inputs, class labels) for :func:`bn_net`."""
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(n, 6, generator=gen, dtype=dtype), torch.randint(0, 3, (n,), generator=gen))
        for _ in range(steps)
    ]


def trajectory(
    make_opt: OptFactory,
    *,
    steps: int = 40,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
    set_to_none: bool = True,
    clip_grad_norm: float | None = None,
    model_factory: Callable[..., nn.Module] = bn_net,
) -> list[list[torch.Tensor]]:
    """Train ``model_factory()`` for ``steps`` steps; return the parameters after every step."""
    model = model_factory(dtype=dtype, seed=seed)
    opt = make_opt(model.parameters())
    loss_fn = nn.CrossEntropyLoss()
    out = []
    for x, y in batches(steps, dtype=dtype):
        opt.zero_grad(set_to_none=set_to_none)
        loss_fn(model(x), y).backward()
        if clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
        opt.step()
        out.append([p.detach().clone() for p in model.parameters()])
    return out


def max_trajectory_diff(a: list[list[torch.Tensor]], b: list[list[torch.Tensor]]) -> float:
    assert len(a) == len(b)
    return max(
        (x - y).abs().max().item()
        for pa, pb in zip(a, b, strict=True)
        for x, y in zip(pa, pb, strict=True)
    )


def assert_same_trajectory(
    ours: OptFactory, oracle: OptFactory, *, atol: float = 1e-7, min_change: float = 1e-3, **kw: Any
) -> float:
    """Ours and the oracle agree within ``atol`` at every step, and the parameters actually moved."""
    a = trajectory(ours, **kw)
    b = trajectory(oracle, **kw)
    diff = max_trajectory_diff(a, b)
    start = trajectory(
        lambda params: torch.optim.SGD(params, lr=0.0),
        steps=1,
        **{k: v for k, v in kw.items() if k in ("dtype", "seed", "model_factory")},
    )[0]
    moved = max((p - s).abs().max().item() for p, s in zip(a[-1], start, strict=True))
    assert moved > min_change, f"parameters barely moved ({moved:.2e}); the comparison is vacuous"
    assert diff < atol, f"trajectories differ by {diff:.3e} (tolerance {atol:.0e})"
    return diff


# -- convergence problems ---------------------------------------------------------------------------

CONVERGENCE_STEPS = {"quadratic": 500, "rosenbrock": 3000}
CONVERGENCE_TOL = {"quadratic": 1e-2, "rosenbrock": 5e-2}


def _quadratic(x: torch.Tensor) -> torch.Tensor:
    # Curvatures from 0.1 to 1 along the axes, minimizer at (1, 2, ..., 10) / 10.
    h = torch.logspace(-1, 0, x.numel(), dtype=x.dtype)
    target = torch.arange(1, x.numel() + 1, dtype=x.dtype) / x.numel()
    return 0.5 * (h * (x - target) ** 2).sum()


def _rosenbrock(x: torch.Tensor) -> torch.Tensor:
    return (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2


PROBLEMS = {
    "quadratic": (
        _quadratic,
        lambda: torch.zeros(10, dtype=torch.float64),
        torch.arange(1, 11) / 10,
    ),
    "rosenbrock": (
        _rosenbrock,
        lambda: torch.tensor([-1.5, 2.0], dtype=torch.float64),
        torch.tensor([1.0, 1.0]),
    ),
}


def converge(make_opt: OptFactory, problem: str, lr: float, steps: int | None = None) -> float:
    """Distance to the known minimizer after training with ``lr`` cosine-annealed to zero.

    The optimizer is stepped with a closure (loss and gradient), so closure-driven methods work too.
    """
    fn, x0, minimizer = PROBLEMS[problem]
    steps = steps or CONVERGENCE_STEPS[problem]
    x = torch.nn.Parameter(x0())
    opt = make_opt([x], lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)

    def closure():
        opt.zero_grad()
        loss = fn(x)
        loss.backward()
        return loss

    for _ in range(steps):
        opt.step(closure)
        sched.step()
    return (x.detach() - minimizer.to(x.dtype)).norm().item()


def assert_same_tree(a: Any, b: Any, path: str = "") -> None:
    """``a`` and ``b`` (state dicts, nested dicts, lists, tensors) are equal: same keys, same tensor
    dtypes and values, bit for bit (NaN equal to NaN in plain numbers)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype, path
        assert torch.equal(a, b), f"{path} changed"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{path} keys changed"
        for k in a:
            assert_same_tree(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_tree(x, y, f"{path}[{i}]")
    else:
        assert a == b or (a != a and b != b), f"{path}: {a!r} != {b!r}"

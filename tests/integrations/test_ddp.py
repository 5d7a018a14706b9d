"""adaptim optimizers under ``DistributedDataParallel``: two CPU processes (gloo) each take half of
every batch; DDP averages the gradients, so both replicas must stay bit-identical to each other and
equal (to float64 rounding of the averaged gradient) to one process training on the full batch. One
spawn runs every case; each rank writes its parameters to a file."""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import adaptim
from multiprocess import run_on_ranks

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="needs torch.distributed with gloo",
)

STEPS, BATCH, WORLD = 8, 16, 2
TOL = 1e-6

CASES: dict[str, Callable[[Any], torch.optim.Optimizer]] = {
    "adabelief": lambda params: adaptim.AdaBelief(params, lr=1e-2, weight_decay=0.01),
    "adan": lambda params: adaptim.Adan(params, lr=1e-2, weight_decay=0.02, max_grad_norm=1.0),
    "lookahead-adan": lambda params: adaptim.Lookahead(adaptim.Adan(params, lr=1e-2), k=3),
}


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).double()


def data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [
        (
            torch.randn(BATCH, 6, generator=gen, dtype=torch.float64),
            torch.randn(BATCH, 3, generator=gen, dtype=torch.float64),
        )
        for _ in range(STEPS)
    ]


def train(module: nn.Module, opt: torch.optim.Optimizer, rank: int | None = None) -> None:
    """On the full batch (``rank=None``) or on rank ``rank``'s half of it."""
    for x, y in data():
        if rank is not None:
            half = BATCH // WORLD
            x, y = x[rank * half : (rank + 1) * half], y[rank * half : (rank + 1) * half]
        opt.zero_grad()
        nn.functional.mse_loss(module(x), y).backward()
        opt.step()


def _run_cases(rank: int) -> dict[str, Any]:
    """Every case on this rank (inside :func:`multiprocess.run_on_ranks`)."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    results: dict[str, Any] = {}
    for name, make in CASES.items():
        try:
            ddp = DDP(model())
            train(ddp, make(ddp.parameters()), rank=rank)
            results[name] = [p.detach().clone() for p in ddp.module.parameters()]
        except Exception:  # report per case; the other cases still run
            results[name] = traceback.format_exc()
    return results


@pytest.fixture(scope="module")
def replicas() -> list[dict[str, Any]]:
    return run_on_ranks(_run_cases, world_size=WORLD)


@pytest.mark.parametrize("name", CASES)
def test_replicas_agree_and_equal_one_process_on_the_full_batch(replicas, name):
    for r in range(WORLD):
        assert not isinstance(replicas[r][name], str), replicas[r][name]
    zero, one = replicas[0][name], replicas[1][name]
    for a, b in zip(zero, one, strict=True):
        assert torch.equal(a, b)  # DDP gives every rank the same averaged gradient
    single = model()
    start = [p.detach().clone() for p in single.parameters()]
    train(single, CASES[name](single.parameters()))
    moved = max((p - s).abs().max().item() for p, s in zip(single.parameters(), start, strict=True))
    assert moved > 1e-2
    for got, want in zip(zero, single.parameters(), strict=True):
        torch.testing.assert_close(got, want.detach(), atol=TOL, rtol=0)

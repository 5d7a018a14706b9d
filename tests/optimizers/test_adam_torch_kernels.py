"""Adam/AdamW's step through torch's fused kernels (the default, ``fused=None``): its Python work
must not grow faster than the number of tensors.

``TensorBatch.steps`` builds a new list of every tensor's step count at each read; read once per
tensor, it made the step quadratic in the number of tensors (2,000 tensors of 1,000 elements: 130 ms
a step instead of 18, benchmarks/step_time.py's many-small set). Counting the reads is the
deterministic form of that check.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import adaptim
from adaptim.core.base import TensorBatch


def _params(count: int) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(7, generator=gen)) for _ in range(count)]
    # a transposed parameter with a contiguous gradient: torch's CPU kernel cannot take it, so it
    # takes the per-tensor eager update beside the kernel
    params.append(torch.nn.Parameter(torch.randn(3, 5, generator=gen).t()))
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)
    return params


def _count_work(
    monkeypatch: pytest.MonkeyPatch, cls: type[adaptim.Adam], count: int
) -> tuple[int, int]:
    """(reads of ``TensorBatch.steps``, calls of torch's fused kernel) in the third step."""
    reads, kernel_calls = [0], [0]
    steps_of = TensorBatch.__dict__["steps"].fget
    kernel_name = "_fused_adamw_" if cls is adaptim.AdamW else "_fused_adam_"
    kernel = getattr(torch, kernel_name)

    def counted_steps(batch: TensorBatch) -> list[int]:
        reads[0] += 1
        return steps_of(batch)

    def counted_kernel(*args: Any, **kwargs: Any) -> None:
        kernel_calls[0] += 1
        kernel(*args, **kwargs)

    opt = cls(_params(count), lr=1e-2)
    opt.step()
    opt.step()
    with monkeypatch.context() as patch:
        patch.setattr(TensorBatch, "steps", property(counted_steps))
        patch.setattr(torch, kernel_name, counted_kernel)
        opt.step()
    return reads[0], kernel_calls[0]


@pytest.mark.parametrize("cls", [adaptim.Adam, adaptim.AdamW], ids=lambda c: c.__name__)
def test_default_step_reads_the_step_counts_a_fixed_number_of_times(
    monkeypatch: pytest.MonkeyPatch, cls: type[adaptim.Adam]
) -> None:
    few_reads, few_calls = _count_work(monkeypatch, cls, 4)
    many_reads, many_calls = _count_work(monkeypatch, cls, 64)
    # fused=None runs torch's kernel once over the contiguous tensors (one step count)
    assert few_calls == many_calls == 1
    assert 1 <= many_reads == few_reads <= 2

"""``fused=True`` on CUDA (issue 9): the same compiled update functions, through Inductor's Triton
backend. Skipped without a GPU with Triton; never run in this workplace so far (no GPU lent since
session 3), so a failure here on a first GPU run may be this file's as well as the library's.

The cases are those of ``tests/test_fused.py`` (its small pieces, its parameter and group
settings) with the parameters on the GPU: every fusable optimizer, 20 steps, two param groups,
fp32, fp64 and bf16 parameters, equal to the eager per-tensor step on the same device.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from test_fused import FUSABLE, STEPS, _assert_same_run, _params, _train


def _cuda_ready() -> bool:
    if not torch.cuda.is_available():
        return False
    from torch.utils._triton import has_triton

    return has_triton()


pytestmark = [
    pytest.mark.skipif(not _cuda_ready(), reason="needs a CUDA GPU and Triton"),
    pytest.mark.usefixtures("small_fused_pieces"),
]


def _cuda_params(dtypes: tuple[torch.dtype, ...]) -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(p.detach().to("cuda")) for p in _params(dtypes)]


@pytest.mark.parametrize("info", FUSABLE, ids=[i.name for i in FUSABLE])
def test_fused_equals_eager_on_cuda(info: Any) -> None:
    dtypes = (torch.float32, torch.float64, torch.bfloat16)
    eager_params, fused_params = _cuda_params(dtypes), _cuda_params(dtypes)
    eager = _train(info, eager_params, range(STEPS), foreach=False, fused=False)
    fused = _train(info, fused_params, range(STEPS), fused=True)
    assert all(p.is_cuda for p in fused_params)
    _assert_same_run(fused_params, fused, eager_params, eager)

"""The conformance contracts again with 8-bit states (issue 10), over every optimizer that declares
quantizable states.

The contracts are the conformance suite's own test functions, imported here and run with
``state_bits=8`` added to every optimizer they build, and with every parameter quantized: the
threshold (4,096 elements) is lowered to 1, so the suite's small models (tensors of 3 to 24
elements, one partial block each) have 8-bit states, and parts are made small (1,024 elements), so
a batch runs in several. Only the contracts whose parameters are float32 or bf16 are taken: float64
parameters keep float64 states (``docs/state_bits.md``), so a float64 contract would check 32-bit
states again (so would the refused step's and another optimizer's state dict, whose models are
float64). Left out as well: ``maximize`` against the negated loss (the signed map is not
symmetric, its most negative value is -0.993, so negated states round differently) and an fp64
checkpoint continuing in fp32 within 1e-4 (quantized on load, it continues within 8-bit rounding:
``test_state_bits.py`` checks the moves between precisions).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import adaptim.core.state_precision as sp
import test_conformance as conformance
from test_conformance import (
    test_bf16_params_follow_fp32_with_fp32_states,
    test_deepcopy_and_pickle_continue_identically,
    test_frozen_then_unfrozen,
    test_lr_scheduler_drives_lr,
    test_param_groups_with_different_lr,
    test_params_without_grad_are_skipped,
    test_state_dict_round_trip_continues_bit_identically,
)
from test_conformance_dtypes import test_mixed_dtypes_in_one_group_train_each_param_as_alone
from test_conformance_robustness import (
    test_all_zero_gradients_keep_everything_finite,
    test_huge_gradients_keep_parameters_finite,
)

CONTRACTS = [
    test_state_dict_round_trip_continues_bit_identically,
    test_deepcopy_and_pickle_continue_identically,
    test_param_groups_with_different_lr,
    test_params_without_grad_are_skipped,
    test_frozen_then_unfrozen,
    test_bf16_params_follow_fp32_with_fp32_states,
    test_lr_scheduler_drives_lr,
    test_mixed_dtypes_in_one_group_train_each_param_as_alone,
    test_all_zero_gradients_keep_everything_finite,
    test_huge_gradients_keep_parameters_finite,
]
_CONTRACT_NAMES = {f.__name__ for f in CONTRACTS}


@pytest.fixture(autouse=True)
def eight_bit_states(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every optimizer a contract builds gets ``state_bits=8``; every parameter is quantized."""
    if request.function.__name__ not in _CONTRACT_NAMES:
        return
    info = request.getfixturevalue("info")
    if not info.cls.quantized_states:
        pytest.skip(f"{info.name} has no quantizable state")
    monkeypatch.setattr(sp, "MIN_QUANTIZED_NUMEL", 1)
    monkeypatch.setattr(sp, "CPU_PART_ELEMENTS", 1024)
    plain = conformance.make

    def make_8_bit(info: Any, params: Any, **override: Any) -> torch.optim.Optimizer:
        return plain(info, params, **{"state_bits": 8, **override})

    monkeypatch.setitem(request.function.__globals__, "make", make_8_bit)


QUANTIZING = [i for i in conformance.INFOS if i.cls.quantized_states]


@pytest.mark.parametrize("info", QUANTIZING, ids=lambda i: i.name)
def test_the_contracts_above_see_8_bit_states(info: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # The set-up the contracts run under: the small model's states are codes, every parameter's.
    monkeypatch.setattr(sp, "MIN_QUANTIZED_NUMEL", 1)
    model = conformance.small_model()
    opt = conformance.make(info, model.parameters(), state_bits=8)
    conformance.train(model, opt, range(2))
    found = 0
    for p in model.parameters():  # (H-Fac keeps only factored statistics for matrices)
        keys = [k for k in info.cls.quantized_states if k in opt.state[p]]
        assert all(sp.is_quantized(opt.state[p], k) for k in keys), info.name
        found += len(keys)
    assert found, f"{info.name}: no quantized state"

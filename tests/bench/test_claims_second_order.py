"""The SGDHess claim, called directly: it runs, its numbers are finite, and its verdict can fail."""

from __future__ import annotations

import math

import pytest
import torch

import adaptim  # noqa: F401  (registers the optimizers)
from adaptim.bench import claims_second_order
from adaptim.bench.claims_second_order import CLAIMS


def test_the_claim_runs_and_reports_its_numbers() -> None:
    (claim,) = CLAIMS
    assert claim.missing() == []
    result = claim.run(1)
    assert result.name == "sgdhess-beats-sgd-momentum"
    assert result.holds in (True, False)
    for lr in claims_second_order._LRS:
        for key in ("sgdhess_loss", "sgdm_loss", "sgdhess_err", "sgdm_err"):
            assert math.isfinite(result.numbers[f"{key}_lr{lr:g}_mean"])
    # the two runs are different optimizers: SGDHess's loss differs from SGD momentum's
    assert result.numbers["sgdhess_loss_lr0.05_mean"] != result.numbers["sgdm_loss_lr0.05_mean"]


def test_the_verdict_fails_when_sgdhess_is_plain_sgd_momentum(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With SGD momentum registered as "sgdhess" the two runs tie, and a tie is not a win."""

    def sgd(params, lr, momentum):  # type: ignore[no-untyped-def]
        return torch.optim.SGD(params, lr=lr, momentum=momentum)

    monkeypatch.setattr(claims_second_order, "_make", lambda name, params, **kw: sgd(params, **kw))
    result = CLAIMS[0].run(1)
    assert result.holds is False
    assert result.numbers["sgdhess_loss_lr0.02_mean"] == result.numbers["sgdm_loss_lr0.02_mean"]

"""Momentum scaling 1 - beta ~ lr^(2/3) (Cowsik, Can & Glorioso, arXiv:2210.16400)."""

from __future__ import annotations

import math

import pytest

from adaptim.tools.momentum_scaling import MOMENTUM_EXPONENT, momentum_for_lr, scale_momentum


def test_exponent_is_two_thirds():
    assert MOMENTUM_EXPONENT == pytest.approx(2 / 3, abs=1e-15)


def test_eight_times_smaller_lr_quarter_of_one_minus_beta():
    assert scale_momentum(0.1 / 8, 0.1, 0.9) == pytest.approx(1 - 0.1 / 4)
    assert scale_momentum(0.1 / 64, 0.1, 0.9) == pytest.approx(1 - 0.1 / 16)
    assert scale_momentum(0.1 * 8, 0.1, 0.99) == pytest.approx(1 - 0.04)


def test_identity_at_base_composes_and_follows_the_power_law():
    assert scale_momentum(0.3, 0.3, 0.95) == pytest.approx(0.95)
    twice = scale_momentum(0.01, 0.05, scale_momentum(0.05, 0.3, 0.95))
    assert twice == pytest.approx(scale_momentum(0.01, 0.3, 0.95))
    # log(1 - beta) against log(lr) has slope 2/3 over three decades
    lrs = [1e-4, 1e-3, 1e-2, 1e-1]
    gammas = [1 - scale_momentum(lr, 1e-1, 0.9) for lr in lrs]
    for i in range(len(lrs) - 1):
        slope = math.log(gammas[i + 1] / gammas[i]) / math.log(lrs[i + 1] / lrs[i])
        assert slope == pytest.approx(2 / 3)
    # a base momentum of 0 (plain SGD) scales too: 1 - beta = (lr/base_lr)^(2/3)
    assert scale_momentum(0.001, 1.0, 0.0) == pytest.approx(1 - 0.01)


def test_momentum_for_lr_with_a_coefficient():
    assert momentum_for_lr(0.001, 1.0) == pytest.approx(0.99)
    assert momentum_for_lr(0.008, 2.5) == pytest.approx(1 - 2.5 * 0.04)
    # consistent with scale_momentum: the coefficient cancels
    beta0 = momentum_for_lr(0.1, 0.5)
    assert scale_momentum(0.003, 0.1, beta0) == pytest.approx(momentum_for_lr(0.003, 0.5))


@pytest.mark.parametrize(
    "args,name",
    [
        ((0.0, 0.1, 0.9), "lr"),
        ((-1e-3, 0.1, 0.9), "lr"),
        ((float("inf"), 0.1, 0.9), "lr"),
        ((0.1, 0.0, 0.9), "base_lr"),
        ((0.1, float("nan"), 0.9), "base_lr"),
        ((0.1, 0.1, 1.0), "base_momentum"),
        ((0.1, 0.1, -0.1), "base_momentum"),
        ((0.1, 0.1, True), "base_momentum"),
        ((True, 0.1, 0.9), "lr"),
    ],
)
def test_bad_arguments(args, name):
    with pytest.raises(ValueError, match=name):
        scale_momentum(*args)


def test_rule_leaving_the_unit_interval_is_refused():
    # 1 - 0.9 = 0.1 times 1000^(2/3) = 100 gives 10: no momentum can do that
    with pytest.raises(ValueError, match="outside"):
        scale_momentum(100.0, 0.1, 0.9)
    with pytest.raises(ValueError, match="outside"):
        momentum_for_lr(1.0, 2.0)
    with pytest.raises(ValueError, match="coefficient"):
        momentum_for_lr(0.1, 0.0)
    with pytest.raises(ValueError, match="lr"):
        momentum_for_lr("0.1", 1.0)

"""The shared pieces and the base class, tested on their own."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import adaptim
from adaptim.core.functional import (
    adam_denominator,
    bias_correction,
    decoupled_weight_decay_,
    l2_weight_decay,
    proximal_weight_decay_,
    radam_rectification,
    scalars,
)
from adaptim.core.validation import Interval, TupleOf, validate_hyperparameters

finite = st.floats(allow_nan=False, allow_infinity=False, width=64)


@given(low=finite, high=finite, x=finite, low_open=st.booleans(), high_open=st.booleans())
def test_interval_accepts_exactly_its_points(low, high, x, low_open, high_open):
    rule = Interval(low, high, low_open=low_open, high_open=high_open)
    inside = (low < x if low_open else low <= x) and (x < high if high_open else x <= high)
    assert rule.accepts(x) == inside
    assert not rule.accepts(float("nan"))
    assert not rule.accepts(True)


def test_validation_error_names_parameter_and_range():
    rules = {"betas": TupleOf((Interval(0, 1, high_open=True), Interval(0, 1, high_open=True)))}
    with pytest.raises(ValueError, match=r"Foo: invalid betas=\(0.9, 1.0\).*0 <= value < 1"):
        validate_hyperparameters("Foo", {"betas": (0.9, 1.0)}, rules)
    validate_hyperparameters("Foo", {"betas": (0.9, 0.999)}, rules)


@settings(max_examples=50, deadline=None)
@given(beta2=st.floats(0.5, 0.9999), step=st.integers(1, 10_000))
def test_radam_rectification_closed_form(beta2, step):
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 * step * beta2**step / (1 - beta2**step)
    r = radam_rectification(beta2, step)
    if rho_t < 5:
        assert r is None
    else:
        expected = math.sqrt(
            (rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)
        )
        assert r == pytest.approx(expected, rel=1e-12)
        assert 0 < r <= 1 + 1e-12


def test_radam_rectification_starts_at_step_6_for_default_beta2():
    # Liu et al.'s code (rho_t >= 5): rho_5 = 4.996, rho_6 = 5.994 for beta2 = 0.999.
    assert [radam_rectification(0.999, t) is None for t in range(1, 8)] == [True] * 5 + [False] * 2
    assert radam_rectification(0.999, 10**6) == pytest.approx(1.0, abs=1e-6)


def test_bias_correction_and_scalars():
    assert bias_correction(0.9, 1) == pytest.approx(0.1)
    assert bias_correction(0.9, 2) == pytest.approx(0.19)
    assert scalars([0.5, 0.5, 0.5]) == 0.5
    assert scalars([0.5, 0.25]) == [0.5, 0.25]


def test_pieces_agree_on_tensors_and_lists_and_never_touch_grads():
    torch.manual_seed(0)
    params = [torch.randn(3, 2, dtype=torch.float64), torch.randn(4, dtype=torch.float64)]
    grads = [torch.randn_like(p) for p in params]
    grads_before = [g.clone() for g in grads]
    many = l2_weight_decay(grads, params, 0.1)
    one = [l2_weight_decay(g, p, 0.1) for g, p in zip(grads, params, strict=True)]
    for a, b, g, g0 in zip(many, one, grads, grads_before, strict=True):
        torch.testing.assert_close(a, b)
        assert torch.equal(g, g0)
    v = [g * g for g in grads]
    for bc2 in (1.0, 0.3, [0.3, 0.7]):
        many = adam_denominator(v, 1e-3, bc2, eps_inside=1e-4)
        per = [bc2[i] if isinstance(bc2, list) else bc2 for i in range(2)]
        for i, d in enumerate(many):
            expected = ((v[i] + 1e-4) / per[i]).sqrt() + 1e-3
            torch.testing.assert_close(d, expected)
            torch.testing.assert_close(
                adam_denominator(v[i], 1e-3, per[i], eps_inside=1e-4), expected
            )
    a, b = copy.deepcopy(params), copy.deepcopy(params)
    decoupled_weight_decay_(a, [0.1, 0.2])
    proximal_weight_decay_(b, 0.1)
    torch.testing.assert_close(a[1], params[1] * 0.8)
    torch.testing.assert_close(b[0], params[0] / 1.1)


def test_bf16_checkpoint_keeps_fp32_states_and_continues_bit_identically():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3).to(torch.bfloat16)
    opt = adaptim.Adam(model.parameters(), lr=1e-2)

    def run(m, o, steps):
        for s in range(steps):
            x = torch.randn(5, 4, generator=torch.Generator().manual_seed(s)).to(torch.bfloat16)
            o.zero_grad()
            m(x).float().pow(2).mean().backward()
            o.step()

    run(model, opt, 3)
    twin = copy.deepcopy(model)
    twin_opt = adaptim.Adam(twin.parameters(), lr=1e-2)
    twin_opt.load_state_dict(opt.state_dict())
    for p in twin.parameters():
        assert twin_opt.state[p]["exp_avg_sq"].dtype == torch.float32
        assert (
            twin_opt.state[p]["exp_avg"].data_ptr() != opt.state[model.weight]["exp_avg"].data_ptr()
        )
    run(model, opt, 3)
    run(twin, twin_opt, 3)
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)


def test_old_checkpoint_without_a_new_hyperparameter_loads_with_its_default():
    model = torch.nn.Linear(2, 2)
    opt = adaptim.Adam(model.parameters())
    state = opt.state_dict()
    del state["param_groups"][0]["amsgrad"]
    fresh = adaptim.Adam(model.parameters())
    fresh.load_state_dict(state)
    assert fresh.param_groups[0]["amsgrad"] is False


def test_registry_create_available_and_suggestions():
    assert "adam" in adaptim.available("adam*")
    assert all(n.startswith("adam") for n in adaptim.available("adam*"))
    opt = adaptim.create("AdamW", [torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    assert isinstance(opt, adaptim.AdamW)
    with pytest.raises(ValueError, match=r"did you mean .*'adamw'"):
        adaptim.create("adamv", [torch.nn.Parameter(torch.zeros(2))])

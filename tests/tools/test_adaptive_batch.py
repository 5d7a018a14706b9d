"""Adaptive batch sizes (AdAdaGrad): test statistics by hand, per-example and microbatch gradients, the
batch growing as noise dominates near the optimum, the AdaGrad / AdaGrad-Norm steps, and the rest of
the conformance suite on both optimizers."""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import adaptim
import test_conformance as conformance
from adaptim.tools.adaptive_batch import (
    AdaptiveBatchSampler,
    AdaptiveBatchSize,
    batch_test,
    microbatch_grads,
    per_sample_grads,
)
from helpers import assert_same_trajectory, converge

# Three per-example gradients in 2-D: g1 = (1, 0), g2 = (0, 1), g3 = (2, 2); mean g_B = (1, 1), ||g_B||^2 = 2.
#   norm test:    deviations (0,-1), (-1,0), (1,1): sum of squares 4, Var = 4 / (3 - 1) = 2
#                 passes iff Var / b = 2/3 <= eta^2 * 2; if not, b_next = ceil(2 / (eta^2 * 2)) = ceil(1 / eta^2)
#   inner product: <g_i, g_B> = 1, 1, 4 (mean 2): Var = (1 + 1 + 4) / 2 = 3
#   orthogonal:   g_i - (<g_i,g_B>/2) g_B = (.5,-.5), (-.5,.5), (0,0): Var = (.5 + .5 + 0) / 2 = 0.5
#                 inner product passes iff 3/3 <= theta^2 * 4; augmented also needs 0.5/3 <= nu^2 * 2
G = [torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]], dtype=torch.float64)]


def _linear_problem():
    """A bias-free linear model at w = 0 with loss (w.x - y)^2 / 2: per-example gradients -y x = G."""
    model = nn.Linear(2, 1, bias=False).double()
    nn.init.zeros_(model.weight)
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    y = torch.tensor([[-1.0], [-1.0], [-2.0]], dtype=torch.float64)
    return model, x, y, lambda out, t: 0.5 * ((out - t) ** 2).mean()


def test_norm_test_by_hand():
    fail = batch_test(G, "norm", eta=0.5)
    assert fail.grad_norm_sq == pytest.approx(2.0)
    assert fail.variance == pytest.approx(2.0)
    assert not fail.passed and fail.suggested == 4  # ceil(1 / 0.25)
    assert batch_test(G, "norm", eta=0.6).passed  # 2/3 <= 0.72
    assert batch_test(G, "norm", eta=0.57).passed is False  # 2/3 > 0.6498
    assert batch_test(G, "norm", eta=0.3).suggested == 12  # ceil(1 / 0.09) = ceil(11.1)


def test_inner_product_test_by_hand():
    # plain inner-product test (the reference code's "ip"): passes iff Var / b = 1 <= theta^2 * 4
    plain = batch_test(G, "inner_product", theta=0.4, nu=1e-9)  # nu plays no part
    assert plain.variance == pytest.approx(3.0) and math.isnan(plain.orth_variance)
    assert not plain.passed and plain.suggested == math.ceil(3 / (0.16 * 4))  # 5
    assert batch_test(G, "inner_product", theta=0.51).passed  # 1 <= 1.0404
    assert not batch_test(G, "inner_product", theta=0.49).passed  # 1 > 0.9604
    # augmented ("ip+orth"): also Var_orth / b = 1/6 <= nu^2 * 2; the larger batch size of the two
    ok = batch_test(G, "augmented_inner_product", theta=0.9, nu=5.84)
    assert ok.passed
    assert ok.variance == pytest.approx(3.0) and ok.orth_variance == pytest.approx(0.5)
    fail = batch_test(G, "augmented_inner_product", theta=0.4, nu=5.84)
    assert not fail.passed and fail.suggested == 5
    orth_fail = batch_test(G, "augmented_inner_product", theta=0.9, nu=0.2)  # 0.5/3 > 0.04 * 2
    assert not orth_fail.passed and orth_fail.suggested == math.ceil(0.5 / (0.04 * 2))  # 7


def test_tests_sum_per_tensor_blocks_by_hand():
    """Two parameter tensors: G's two columns as separate 1-D blocks (the reference code's per-tensor loop).

    Block 1: g = 1, 0, 2 (mean 1); block 2: g = 0, 1, 2 (mean 1); ||g_B||^2 = 1 + 1 = 2.
      norm test: sum of coordinate variances (0 + 1 + 1)/2 + (1 + 0 + 1)/2 = 2 (the same as one block)
      inner products per block: 1*g = 1, 0, 2 (var 1) and 0, 1, 2 (var 1): V_ip = 2 (not 3: no cross terms)
      orthogonal parts of 1-D blocks are 0: V_or = 0
    """
    blocks = [G[0][:, :1], G[0][:, 1:]]
    assert batch_test(blocks, "norm", eta=0.5).variance == pytest.approx(2.0)
    r = batch_test(blocks, "augmented_inner_product", theta=0.4, nu=1e-3)
    assert r.grad_norm_sq == pytest.approx(2.0)
    assert r.variance == pytest.approx(2.0) and r.orth_variance == pytest.approx(0.0, abs=1e-15)
    assert not r.passed and r.suggested == math.ceil(2.0 / (0.16 * 4))  # 4
    assert batch_test(blocks, "inner_product", theta=0.41).passed  # 2/3 <= 0.6724


# Coordinate-wise norm test: three per-example gradients in 2-D, g1 = (4, 1), g2 = (6, 2), g3 = (2, 0).
#   coordinate 0: 4, 6, 2 (mean 4): deviations 0, 2, -2: Var_0 = 8 / 2 = 4,  (g_B)_0^2 = 16, ratio 1/4
#   coordinate 1: 1, 2, 0 (mean 1): deviations 0, 1, -1: Var_1 = 2 / 2 = 1,  (g_B)_1^2 = 1,  ratio 1
#   passes iff Var_j / 3 <= eta^2 (g_B)_j^2 for j = 0, 1, i.e. iff 1/3 <= eta^2 (coordinate 1 binds);
#   if not, b_next = ceil(max(1/4, 1) / eta^2) = ceil(1 / eta^2)
#   the norm test on the same gradients: Var = 4 + 1 = 5, ||g_B||^2 = 17: passes iff 5/3 <= 17 eta^2
G2 = [torch.tensor([[4.0, 1.0], [6.0, 2.0], [2.0, 0.0]], dtype=torch.float64)]


def test_coordinate_norm_test_by_hand():
    fail = batch_test(G2, "coordinate_norm", eta=0.5)  # 1/3 > 0.25
    assert not fail.passed and fail.suggested == 4  # ceil(1 / 0.25)
    assert fail.variance == pytest.approx(5.0) and fail.grad_norm_sq == pytest.approx(17.0)
    assert fail.max_coordinate_ratio == pytest.approx(1.0)
    assert batch_test(
        G2, "norm", eta=0.5
    ).passed  # 5/3 <= 4.25: only the coordinate-wise test fails
    assert batch_test(G2, "coordinate_norm", eta=0.58).passed  # 1/3 <= 0.3364
    assert not batch_test(G2, "coordinate_norm", eta=0.57).passed  # 1/3 > 0.3249
    assert batch_test(G2, "coordinate_norm", eta=0.3).suggested == 12  # ceil(1 / 0.09) = ceil(11.1)
    # the coordinates do not depend on how they are grouped into tensors
    split = batch_test([G2[0][:, :1], G2[0][:, 1:]], "coordinate_norm", eta=0.5)
    assert (split.passed, split.suggested) == (False, 4)
    # G: both coordinates have Var_j = 1 and (g_B)_j^2 = 1 (see above): passes iff 1/3 <= eta^2
    assert batch_test(G, "coordinate_norm", eta=0.58).passed
    assert batch_test(G, "coordinate_norm", eta=0.5).suggested == 4
    # microbatches of m = 2 examples: per-example Var_j = 2 * (4, 1), b = 6: same ratios, need 2/eta^2
    micro = batch_test(G2, "coordinate_norm", eta=0.5, samples_per_grad=2)
    assert micro.variance == pytest.approx(10.0) and not micro.passed and micro.suggested == 8


def test_coordinate_norm_test_zero_mean_coordinates():
    """A coordinate with (g_B)_j = 0 passes if all its sample gradients are 0 and never passes otherwise."""
    unused = torch.zeros(3, 1, dtype=torch.float64)  # e.g. a parameter the loss does not use
    r = batch_test([G2[0], unused], "coordinate_norm", eta=0.58)
    assert r.passed and r.max_coordinate_ratio == pytest.approx(1.0)
    cancelling = torch.tensor([[1.0], [-1.0], [0.0]], dtype=torch.float64)  # mean 0, Var = 1
    r = batch_test([G2[0], cancelling], "coordinate_norm", eta=10.0)
    assert not r.passed and r.suggested == 2**62 and r.max_coordinate_ratio == math.inf
    assert batch_test([G2[0], cancelling], "norm", eta=10.0).passed
    schedule = AdaptiveBatchSize(batch_size=3, max_batch_size=50, test="coordinate_norm", eta=10.0)
    assert schedule.update([G2[0], cancelling]) == 50  # capped


def _coordinate_test_from_variances(grads, eta):
    """The coordinate-wise rule written out from the per-coordinate pieces of the authors' norm_test:
    var_sample_grad's ``torch.var(g, dim=0, correction=1)`` and ``torch.mean(g, dim=0)``."""
    var = torch.cat([torch.var(g.double(), dim=0, correction=1).ravel() for g in grads])
    mean_sq = torch.cat([torch.mean(g.double(), dim=0).ravel() ** 2 for g in grads])
    b = grads[0].shape[0]
    passed = bool(torch.all(var / b <= eta**2 * mean_sq))
    ratio = float(torch.max(var / mean_sq))
    return passed, math.ceil(ratio / eta**2), ratio


def test_coordinate_norm_test_matches_the_per_coordinate_variances():
    gen = torch.Generator().manual_seed(3)
    for dtype in (torch.float64, torch.float32):
        grads = [
            (torch.randn(8, 3, 4, generator=gen) + 2.0).to(dtype),
            (torch.randn(8, 5, generator=gen) - 3.0).to(dtype),
        ]
        for eta in (0.1, 0.5, 2.0):
            expected = _coordinate_test_from_variances(grads, eta)
            r = batch_test(grads, "coordinate_norm", eta=eta)
            assert (r.passed, r.suggested) == expected[:2]
            assert r.max_coordinate_ratio == pytest.approx(expected[2], rel=1e-12)
        # just above / below the tolerance where the binding coordinate passes
        eta_crit = math.sqrt(expected[2] / 8)
        assert batch_test(grads, "coordinate_norm", eta=1.001 * eta_crit).passed
        assert not batch_test(grads, "coordinate_norm", eta=0.999 * eta_crit).passed


def test_coordinate_norm_test_is_per_coordinate_inner_product_and_implies_norm_test():
    """For one coordinate the inner-product test is the same inequality (Var(g_ij (g_B)_j) =
    (g_B)_j^2 Var_j), so the coordinate-wise test = the inner-product test on every 1-D coordinate with
    theta = eta; summing its inequalities gives the norm test, which therefore passes whenever it does and
    never asks for a larger batch."""
    gen = torch.Generator().manual_seed(4)
    for _ in range(20):
        g = torch.randn(6, 4, generator=gen, dtype=torch.float64) + torch.randn(
            4, generator=gen, dtype=torch.float64
        )
        eta = float(torch.empty(()).uniform_(0.2, 3.0, generator=gen))
        r = batch_test([g], "coordinate_norm", eta=eta)
        per_coordinate = [
            batch_test([g[:, j : j + 1]], "inner_product", theta=eta) for j in range(4)
        ]
        assert r.passed == all(c.passed for c in per_coordinate)
        assert r.suggested == max(c.suggested for c in per_coordinate)
        norm = batch_test([g], "norm", eta=eta)
        assert norm.suggested <= r.suggested
        assert norm.passed or not r.passed


def test_defaults_follow_reference_code():
    s = AdaptiveBatchSize()
    assert (s.eta, s.theta, s.nu, s.test) == (0.1, 0.1, 0.1, "norm")
    assert (
        adaptim.AdAdaGrad([nn.Parameter(torch.zeros(2))], batch_size=4).batch_schedule.theta == 0.1
    )


def test_per_sample_grads_and_schedule_update():
    model, x, y, loss_fn = _linear_problem()
    grads = per_sample_grads(model, loss_fn, x, y)
    torch.testing.assert_close(grads[0].reshape(3, 2), G[0])
    schedule = AdaptiveBatchSize(batch_size=3, eta=0.5)
    loss = schedule.compute_grads(model, loss_fn, x, y)
    assert schedule.batch_size == 4
    torch.testing.assert_close(model.weight.grad.reshape(2), G[0].mean(0))  # p.grad = batch mean
    torch.testing.assert_close(loss, loss_fn(model(x), y))
    capped = AdaptiveBatchSize(batch_size=2, max_batch_size=3, eta=0.1)
    capped.update(G)
    assert capped.batch_size == 3  # would be 100, capped
    capped.update(G)
    assert capped.batch_size == 3


def test_microbatch_grads_estimate_the_same_variance():
    torch.manual_seed(0)
    model = nn.Linear(5, 1).double()
    x = torch.randn(512, 5, dtype=torch.float64)
    y = torch.randn(512, 1, dtype=torch.float64)
    loss_fn = nn.MSELoss()
    per = per_sample_grads(model, loss_fn, x, y)
    micro = microbatch_grads(model, loss_fn, x, y, num_microbatches=32)
    for p, m in zip(per, micro, strict=True):  # same mean gradient
        torch.testing.assert_close(m.mean(0), p.mean(0), atol=1e-12, rtol=0)
    exact = batch_test(per, "norm").variance
    approx = batch_test(micro, "norm", samples_per_grad=16).variance
    assert abs(approx - exact) < 0.35 * exact, (exact, approx)
    with pytest.raises(ValueError, match="num_microbatches"):
        microbatch_grads(model, loss_fn, x, y, num_microbatches=5)


def _shift_loss(out, _target):
    return 0.5 * out.square().sum(-1).mean()


class _Shift(nn.Module):
    """f_i(w) = ||w - c_i||^2 / 2: per-example gradient w - c_i, whose variance does not depend on w."""

    def __init__(self, w0: torch.Tensor):
        super().__init__()
        self.w = nn.Parameter(w0.clone())

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        return self.w - c


def test_batch_grows_as_noise_dominates_near_the_optimum():
    """Noisy quadratic started far from the optimum: the gradient dominates the (fixed) noise and the
    batch stays small; near the optimum the noise dominates and the norm test grows the batch."""
    gen = torch.Generator().manual_seed(0)
    n, d = 4096, 5
    w_star = torch.randn(d, generator=gen, dtype=torch.float64)
    c = w_star + torch.randn(n, d, generator=gen, dtype=torch.float64)  # unit noise per example
    model = _Shift(w_star + 20.0)
    opt = adaptim.AdAdaGradNorm(model.parameters(), lr=5.0, batch_size=4, max_batch_size=n, eta=0.5)
    loader = DataLoader(
        TensorDataset(c, torch.zeros(n)),
        batch_sampler=opt.batch_sampler(n, generator=torch.Generator().manual_seed(1)),
    )

    def loss_fn(out, _target):
        return 0.5 * out.square().sum(-1).mean()

    sizes, seen = [], []
    for _epoch in range(3):
        for x, y in loader:
            seen.append(len(x))
            sizes.append(opt.batch_size)
            opt.zero_grad()
            opt.compute_grads(model, loss_fn, x, y)
            opt.step()
    # the loader reads the size when it forms each batch (an epoch's last batch may be shorter)
    assert all(s <= z for s, z in zip(seen, sizes, strict=True))
    assert sum(s == z for s, z in zip(seen, sizes, strict=True)) >= len(sizes) - 3
    assert sizes[:10] == [4] * 10  # far away: the test passes, no growth
    assert all(b2 >= b1 for b1, b2 in itertools.pairwise(sizes))  # never shrinks
    assert sizes[-1] >= 64, sizes[-1]
    assert (model.w.detach() - c.mean(0)).norm() < 0.3


def test_coordinate_test_grows_the_batch_where_the_norm_test_does_not():
    """Coordinate 0 at the optimum (its gradient is pure noise), the other four 20 away: the norm test is
    dominated by the far coordinates and passes; the coordinate-wise test sees coordinate 0 and grows."""
    gen = torch.Generator().manual_seed(0)
    w_star = torch.randn(5, generator=gen, dtype=torch.float64)
    c = w_star + torch.randn(16, 5, generator=gen, dtype=torch.float64)
    w0 = w_star.clone()
    w0[1:] += 20.0
    grads = per_sample_grads(_Shift(w0), _shift_loss, c, torch.zeros(16))
    norm = AdaptiveBatchSize(batch_size=16, eta=0.5)
    coordinate = AdaptiveBatchSize(batch_size=16, eta=0.5, test="coordinate_norm")
    assert norm.update(grads) == 16
    assert coordinate.update(grads) > 16
    # the size asked for is coordinate 0's: ceil(Var_0 / (eta^2 (g_B)_0^2)), written out
    g0 = (w0[0] - c[:, 0]).double()
    assert coordinate.batch_size == math.ceil(g0.var() / (0.25 * g0.mean() ** 2))


def test_adadagrad_coordinate_test_grows_the_batch_as_noise_dominates():
    """The paper's pairing, coordinate-wise AdaGrad with the coordinate-wise test, on the noisy quadratic
    of the norm-test behaviour test: small batches far away, growth near the optimum."""
    gen = torch.Generator().manual_seed(0)
    n, d = 4096, 5
    w_star = torch.randn(d, generator=gen, dtype=torch.float64)
    c = w_star + torch.randn(n, d, generator=gen, dtype=torch.float64)
    model = _Shift(w_star + 20.0)
    opt = adaptim.AdAdaGrad(
        model.parameters(),
        lr=5.0,
        batch_size=4,
        max_batch_size=n,
        eta=0.5,
        batch_test="coordinate_norm",
    )
    loader = DataLoader(
        TensorDataset(c, torch.zeros(n)),
        batch_sampler=opt.batch_sampler(n, generator=torch.Generator().manual_seed(1)),
    )
    sizes = []
    for _epoch in range(3):
        for x, y in loader:
            sizes.append(opt.batch_size)
            opt.zero_grad()
            opt.compute_grads(model, _shift_loss, x, y)
            opt.step()
    assert opt.batch_schedule.test == "coordinate_norm"
    assert sizes[:10] == [4] * 10  # far away every coordinate's gradient dominates its noise
    assert all(b2 >= b1 for b1, b2 in itertools.pairwise(sizes))
    assert sizes[-1] >= 64, sizes[-1]
    assert (model.w.detach() - c.mean(0)).norm() < 0.5


def test_sampler_follows_the_schedule():
    schedule = AdaptiveBatchSize(batch_size=3)
    sampler = AdaptiveBatchSampler(10, schedule, shuffle=False)
    assert len(sampler) == 4
    batches = []
    for i, batch in enumerate(sampler):
        batches.append(batch)
        if i == 0:
            schedule.batch_size = 5
    assert batches == [[0, 1, 2], [3, 4, 5, 6, 7], [8, 9]]
    assert list(AdaptiveBatchSampler(10, schedule, shuffle=False, drop_last=True)) == [
        [0, 1, 2, 3, 4],
        [5, 6, 7, 8, 9],
    ]
    shuffled = list(AdaptiveBatchSampler(10, schedule, generator=torch.Generator().manual_seed(0)))
    assert sorted(i for b in shuffled for i in b) == list(range(10))


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize(
    "kw", [dict(), dict(weight_decay=0.1), dict(initial_accumulator_value=0.5, eps=1e-6)], ids=str
)
def test_adadagrad_step_matches_torch_adagrad(kw, foreach):
    kw = {"lr": 0.05, **kw}
    assert_same_trajectory(
        lambda p: adaptim.AdAdaGrad(p, foreach=foreach, **kw),
        lambda p: torch.optim.Adagrad(p, foreach=False, **kw),
        steps=40,
    )


@pytest.mark.parametrize("foreach", [False, True])
def test_adagrad_norm_by_hand(foreach):
    """f = (|u|^2 + v^2) / 2 with u = (3, 0), v = 4: gradients are the parameters themselves.

    step 1: b^2 = 1 + 9 + 16 = 26,  u, v <- (1 - 0.5/sqrt(26)) (u, v)
    step 2: b^2 = 26 + (1 - 0.5/sqrt(26))^2 * 25,  same shrink with the new b.
    """
    u = nn.Parameter(torch.tensor([3.0, 0.0], dtype=torch.float64))
    v = nn.Parameter(torch.tensor([4.0], dtype=torch.float64))
    opt = adaptim.AdAdaGradNorm(
        [{"params": [u]}, {"params": [v]}],
        lr=0.5,
        eps=0.0,
        initial_accumulator_value=1.0,
        foreach=foreach,
    )
    b2, scale = 1.0, 1.0
    for _ in range(2):
        b2 += 25 * scale**2
        scale *= 1 - 0.5 / math.sqrt(b2)
        opt.zero_grad()
        (0.5 * (u**2).sum() + 0.5 * (v**2).sum()).backward()
        opt.step()
        torch.testing.assert_close(
            u.detach(), torch.tensor([3.0 * scale, 0.0], dtype=torch.float64)
        )
        torch.testing.assert_close(v.detach(), torch.tensor([4.0 * scale], dtype=torch.float64))


def test_adagrad_norm_equals_adagrad_in_one_dimension():
    class Model(nn.Module):  # one scalar parameter scaling fixed features
        def __init__(self, dtype=torch.float64, seed=0):
            super().__init__()
            torch.manual_seed(seed)
            self.s = nn.Parameter(torch.tensor(0.3, dtype=dtype))
            self.register_buffer("w", torch.randn(6, 3, dtype=dtype))

        def forward(self, x):
            return self.s * (x @ self.w)

    assert_same_trajectory(
        lambda p: adaptim.AdAdaGradNorm(p, lr=0.1),
        lambda p: torch.optim.Adagrad(p, lr=0.1),
        steps=40,
        model_factory=Model,
        min_change=1e-3,
    )


def test_state_dict_keeps_the_batch_size_and_bad_arguments():
    w = nn.Parameter(torch.zeros(2, dtype=torch.float64))
    opt = adaptim.AdAdaGradNorm([w], batch_size=3, eta=0.5)
    opt.batch_schedule.update(G)
    w.grad = torch.ones_like(w)
    opt.step()
    twin = adaptim.AdAdaGradNorm(
        [nn.Parameter(torch.zeros(2, dtype=torch.float64))], batch_size=3, eta=0.5
    )
    twin.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert twin.batch_size == opt.batch_size == 4
    with pytest.raises(ValueError, match="batch_size"):
        AdaptiveBatchSize(batch_size=1)
    with pytest.raises(ValueError, match="max_batch_size"):
        AdaptiveBatchSize(batch_size=8, max_batch_size=4)
    with pytest.raises(ValueError, match="test"):
        adaptim.AdAdaGrad([w], batch_size=4, batch_test="nope")
    with pytest.raises(ValueError, match="eta"):
        AdaptiveBatchSize(eta=0.0)
    with pytest.raises(ValueError, match="no adaptive batch"):
        adaptim.AdAdaGrad([w]).batch_sampler(10)


# -- the conformance suite, minus Rosenbrock convergence (see adaptive_batch._KIND_NOTE) ------------

INFOS = [adaptim.get("adadagrad"), adaptim.get("adadagradnorm")]
SUITE = [
    conformance.test_state_dict_round_trip_continues_bit_identically,
    conformance.test_deepcopy_and_pickle_continue_identically,
    conformance.test_param_groups_with_different_lr,
    conformance.test_params_without_grad_are_skipped,
    conformance.test_frozen_then_unfrozen,
    conformance.test_zero_size_and_non_contiguous_params,
    conformance.test_bf16_params_follow_fp32_with_fp32_states,
    conformance.test_complex_params,
    conformance.test_maximize_equals_minimizing_the_negation,
    conformance.test_closure_loss_is_returned_and_equals_manual_stepping,
    conformance.test_lr_scheduler_drives_lr,
    conformance.test_bad_hyperparameters_are_refused_before_any_state,
    conformance.test_sparse_gradients_are_refused_before_any_change,
    conformance.test_multi_tensor_path_equals_per_tensor_path,
]


@pytest.mark.parametrize("info", INFOS, ids=lambda i: i.name)
@pytest.mark.parametrize("check", SUITE, ids=lambda f: f.__name__.removeprefix("test_"))
def test_conformance(check, info):
    check(info)


@pytest.mark.parametrize("info", INFOS, ids=lambda i: i.name)
def test_conformance_grads_untouched_and_quadratic(info):
    for set_to_none in (True, False):
        conformance.test_step_never_changes_grads(info, set_to_none)
    assert (
        converge(lambda p, lr: info.cls(p, lr=lr), "quadratic", info.tuned_lr["quadratic"]) < 1e-2
    )


def test_adagrad_norm_refuses_eps_zero_with_no_initial_accumulator():
    p = nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match="eps"):
        adaptim.AdAdaGradNorm([p], eps=0.0)
    # with b_0 > 0 the denominator is never zero: eps=0 is fine
    opt = adaptim.AdAdaGradNorm([p], eps=0.0, initial_accumulator_value=1.0)
    p.grad = torch.zeros(3)
    opt.step()
    assert torch.equal(p, torch.zeros(3))

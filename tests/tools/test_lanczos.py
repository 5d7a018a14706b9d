"""Lanczos, stochastic Lanczos quadrature and the lr/momentum learner (Granziol et al.), checked against
eigenvalues computed exactly (torch.linalg.eigvalsh of the explicit Hessian)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call

from adaptim.tools.lanczos import (
    LanczosLearner,
    heavy_ball_hyperparameters,
    hessian_vector_product,
    lanczos,
    stochastic_lanczos_quadrature,
    top_eigenvalues,
)

F64 = torch.float64


def _spd(eigenvalues: list[float] | torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A symmetric matrix with the given eigenvalues in a random orthonormal basis."""
    lam = torch.as_tensor(eigenvalues, dtype=F64)
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(lam.numel(), lam.numel(), generator=gen, dtype=F64))
    return q @ torch.diag(lam) @ q.T


def _quadratic_hvp(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, object]:
    x = torch.randn(a.shape[0], generator=torch.Generator().manual_seed(5), dtype=F64)
    x.requires_grad_(True)
    loss = 0.5 * x @ a @ x + b @ x
    return x, hessian_vector_product(loss, [x])


def test_hvp_of_a_quadratic_is_its_matrix():
    a = _spd(torch.linspace(-1, 4, 9), seed=1)
    b = torch.randn(9, generator=torch.Generator().manual_seed(2), dtype=F64)
    _, hvp = _quadratic_hvp(a, b)
    v = torch.randn(9, generator=torch.Generator().manual_seed(3), dtype=F64)
    torch.testing.assert_close(hvp(v), a @ v, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(hvp(2 * v), 2 * (a @ v), rtol=1e-12, atol=1e-12)  # reusable graph


def test_hvp_with_unused_and_linear_parameters():
    """Rows of the Hessian for a parameter used linearly (b) or not at all (c) are zero."""
    a = _spd([1.0, 2.0, 3.0], seed=6)
    x = torch.ones(3, dtype=F64, requires_grad=True)
    b = torch.ones(2, dtype=F64, requires_grad=True)
    c = torch.ones(4, dtype=F64, requires_grad=True)
    hvp = hessian_vector_product(0.5 * x @ a @ x + b.sum(), [x, b, c])
    v = torch.arange(1.0, 10.0, dtype=F64)
    expected = torch.cat([a @ v[:3], torch.zeros(6, dtype=F64)])
    torch.testing.assert_close(hvp(v), expected, rtol=1e-12, atol=1e-12)
    flat = hessian_vector_product(b.sum(), [b, c])
    torch.testing.assert_close(flat(torch.ones(6, dtype=F64)), torch.zeros(6, dtype=F64))
    with pytest.raises(ValueError, match="shape"):
        hvp(torch.ones(3, dtype=F64))


def test_full_lanczos_gives_every_eigenvalue_of_a_quadratic():
    lam = torch.tensor([-2.0, -0.5, 0.1, 0.3, 1.0, 1.7, 2.5, 4.0, 7.0, 11.0, 13.0, 20.0], dtype=F64)
    a = _spd(lam, seed=4)
    _, hvp = _quadratic_hvp(a, torch.zeros(12, dtype=F64))
    res = lanczos(hvp, 12, 12, generator=torch.Generator().manual_seed(0))
    assert res.num_steps == 12
    torch.testing.assert_close(res.ritz_values(), torch.linalg.eigvalsh(a), rtol=0, atol=1e-10)
    # the basis is orthonormal and tridiagonalises the matrix
    q = res.basis
    torch.testing.assert_close(q.T @ q, torch.eye(12, dtype=F64), rtol=0, atol=1e-12)
    torch.testing.assert_close(q.T @ a @ q, res.tridiagonal(), rtol=0, atol=1e-10)


def test_few_steps_find_the_separated_top_eigenvalues():
    gen = torch.Generator().manual_seed(7)
    bulk = torch.rand(58, generator=gen, dtype=F64)  # in [0, 1]
    lam = torch.cat([bulk, torch.tensor([10.0, 5.0], dtype=F64)])
    a = _spd(lam, seed=8)
    top = top_eigenvalues(lambda v: a @ v, 60, k=2, num_steps=15, generator=gen)
    assert top == pytest.approx([10.0, 5.0], abs=1e-8)
    # and the largest Ritz value never exceeds the largest eigenvalue (interlacing)
    for m in (2, 3, 5):
        ritz = lanczos(lambda v: a @ v, 60, m, generator=gen).ritz_values()
        assert float(ritz[-1]) <= 10.0 + 1e-12


def test_lanczos_stops_at_an_invariant_subspace():
    """Three distinct eigenvalues: the Krylov space has dimension 3, so Lanczos stops after 3 steps."""
    a = _spd([1.0] * 5 + [3.0] * 4 + [-2.0] * 3, seed=9)
    res = lanczos(lambda v: a @ v, 12, 12, generator=torch.Generator().manual_seed(1))
    assert res.num_steps == 3
    torch.testing.assert_close(res.ritz_values(), torch.tensor([-2.0, 1.0, 3.0], dtype=F64))


def _tiny_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).to(F64)


def _mlp_data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(11)
    return torch.randn(16, 3, generator=gen, dtype=F64), torch.randn(
        16, 2, generator=gen, dtype=F64
    )


def _exact_mlp_hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    sizes = [p.numel() for _, p in model.named_parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss_of(flat: torch.Tensor) -> torch.Tensor:
        tensors = {
            n: piece.view(s) for n, piece, s in zip(names, flat.split(sizes), shapes, strict=True)
        }
        return ((functional_call(model, tensors, (x,)) - y) ** 2).mean()

    return torch.autograd.functional.hessian(loss_of, flat0)


def test_full_lanczos_on_a_tiny_mlp_equals_the_exact_hessian_spectrum():
    model = _tiny_mlp()
    x, y = _mlp_data()
    hess = _exact_mlp_hessian(model, x, y)
    dim = hess.shape[0]
    assert dim == 26
    exact = torch.linalg.eigvalsh(hess)
    assert float(exact[0]) < 0 < float(exact[-1])  # indefinite, as a network's Hessian is
    hvp = hessian_vector_product(((model(x) - y) ** 2).mean(), model.parameters())
    v = torch.randn(dim, generator=torch.Generator().manual_seed(2), dtype=F64)
    torch.testing.assert_close(hvp(v), hess @ v, rtol=1e-10, atol=1e-12)
    res = lanczos(hvp, dim, dim, generator=torch.Generator().manual_seed(3))
    ritz = res.ritz_values()
    # a generic start vector sees every eigenspace; the MLP's eigenvalues are distinct
    assert res.num_steps == dim
    torch.testing.assert_close(ritz, exact, rtol=0, atol=1e-9)


def test_slq_quadrature_reproduces_moments_and_hutchinson():
    lam = torch.linspace(0.5, 6.0, 10, dtype=F64)
    a = _spd(lam, seed=12)
    gen = torch.Generator().manual_seed(0)
    m = 3
    dens = stochastic_lanczos_quadrature(lambda v: a @ v, 10, m, 4, generator=gen)
    assert dens.nodes.shape == (4, m)
    torch.testing.assert_close(dens.weights.sum(1), torch.ones(4, dtype=F64))
    # Gauss quadrature with m nodes is exact for polynomials of degree < 2m: compare with the probes
    gen = torch.Generator().manual_seed(0)
    probes = [torch.randint(0, 2, (10,), generator=gen, dtype=F64) * 2 - 1 for _ in range(4)]
    for power in range(2 * m):
        ap = torch.linalg.matrix_power(a, power)
        expected = sum(float(z @ ap @ z) for z in probes) / (4 * 10)
        assert dens.moment(power) == pytest.approx(expected, rel=1e-9)
    assert dens.trace() == pytest.approx(sum(float(z @ a @ z) for z in probes) / 4, rel=1e-10)


def test_slq_density_with_enough_steps_and_probes():
    lam = torch.tensor([1.0, 1.0, 1.0, 4.0], dtype=F64)
    a = _spd(torch.cat([lam, lam, lam]), seed=13)  # eigenvalue 1 (x9) and 4 (x3)
    dens = stochastic_lanczos_quadrature(
        lambda v: a @ v, 12, 12, 200, generator=torch.Generator().manual_seed(1)
    )
    # every probe finds exactly the two distinct eigenvalues
    used = dens.nodes[dens.weights > 1e-12]
    near_1, near_4 = (used - 1).abs() < 1e-9, (used - 4).abs() < 1e-9
    assert bool((near_1 | near_4).all()) and int(near_1.sum()) == int(near_4.sum()) == 200
    mass_at_4 = float((dens.weights * (dens.nodes > 2)).sum(1).mean())
    assert mass_at_4 == pytest.approx(0.25, abs=0.05)  # 3 of 12 eigenvalues
    grid = torch.linspace(-2.0, 7.0, 2001, dtype=F64)
    smooth = dens.density(grid, bandwidth=0.1)
    assert float(torch.trapezoid(smooth, grid)) == pytest.approx(1.0, abs=1e-6)
    assert dens.trace() == pytest.approx(21.0, rel=0.1)


def test_heavy_ball_rule_is_polyaks_and_converges_at_its_rate():
    lr, beta = heavy_ball_hyperparameters(16.0, 1.0)
    assert lr == pytest.approx(4 / 25)
    assert beta == pytest.approx(9 / 25)
    assert heavy_ball_hyperparameters(16.0, 1.0, momentum=False) == (pytest.approx(2 / 17), 0.0)
    # on a quadratic with spectrum [1, 100]: heavy ball contracts like ((sqrt k - 1)/(sqrt k + 1))^t
    a = _spd(torch.linspace(1.0, 100.0, 20), seed=14)
    lr, beta = heavy_ball_hyperparameters(100.0, 1.0)
    x = torch.ones(20, dtype=F64, requires_grad=True)
    opt = torch.optim.SGD([x], lr=lr, momentum=beta)
    for _ in range(200):
        x.grad = a @ x.detach()
        opt.step()
    rate = (10 - 1) / (10 + 1)
    assert float(x.detach().norm()) <= 200 * rate**200 * math.sqrt(20) * 10
    # plain GD with its optimal step is much slower: (100-1)/(100+1) per step
    y = torch.ones(20, dtype=F64)
    lr_gd, _ = heavy_ball_hyperparameters(100.0, 1.0, momentum=False)
    for _ in range(200):
        y = y - lr_gd * (a @ y)
    assert float(y.norm()) > 1e3 * float(x.detach().norm())


def test_learner_on_a_quadratic_sets_the_rule_from_exact_extremes():
    lam = torch.linspace(0.5, 8.0, 15, dtype=F64)
    a = _spd(lam, seed=15)
    x = torch.zeros(15, dtype=F64, requires_grad=True)
    learner = LanczosLearner(
        [x], lambda: 0.5 * x @ a @ x, num_steps=15, generator=torch.Generator().manual_seed(0)
    )
    opt = torch.optim.SGD([x], lr=0.01, momentum=0.0)
    lr, beta = learner.update(opt)
    exp_lr, exp_beta = heavy_ball_hyperparameters(8.0, 0.5)
    assert lr == pytest.approx(exp_lr, rel=1e-9) and beta == pytest.approx(exp_beta, rel=1e-9)
    assert opt.param_groups[0]["lr"] == lr and opt.param_groups[0]["momentum"] == beta
    assert learner.last is not None and learner.last.lambda_max == pytest.approx(8.0, rel=1e-10)
    # an indefinite Hessian: mu is floored at curvature_floor * L
    b = _spd(torch.linspace(-3.0, 6.0, 10), seed=16)
    z = torch.zeros(10, dtype=F64, requires_grad=True)
    floored = LanczosLearner([z], lambda: 0.5 * z @ b @ z, num_steps=10, curvature_floor=0.01)
    est = floored.estimate()
    assert est.lambda_max == pytest.approx(6.0, rel=1e-10)
    assert est.lambda_min == pytest.approx(0.06, rel=1e-10)
    assert float(est.ritz_values[0]) == pytest.approx(-3.0, rel=1e-10)
    # without momentum: the optimal plain step, momentum untouched in the optimizer
    plain = LanczosLearner(
        [x], lambda: 0.5 * x @ a @ x, num_steps=15, momentum=False, generator=torch.Generator()
    )
    opt2 = torch.optim.Adam([x], lr=0.1)
    lr2, beta2 = plain.update(opt2)
    assert lr2 == pytest.approx(2 / 8.5, rel=1e-9) and beta2 == 0.0
    assert opt2.param_groups[0]["lr"] == lr2 and opt2.param_groups[0]["betas"] == (0.9, 0.999)


@pytest.mark.parametrize("momentum", [True, False])
def test_learner_trains_a_tiny_mlp(momentum):
    """Hyperparameters re-learnt every 10 steps on the full batch lower the loss of the tiny MLP."""
    model = _tiny_mlp()
    x, y = _mlp_data()

    def loss() -> torch.Tensor:
        return ((model(x) - y) ** 2).mean()

    learner = LanczosLearner(
        model.parameters(),
        loss,
        num_steps=10,
        momentum=momentum,
        generator=torch.Generator().manual_seed(0),
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.0)
    start = float(loss().detach())
    for t in range(100):
        if t % 10 == 0:
            lr, beta = learner.update(opt)
            assert lr > 0 and (0 < beta < 0.68 if momentum else beta == 0.0)
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert float(loss().detach()) < 0.2 * start


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: lanczos("not callable", 3, 2), "matvec"),
        (lambda: lanczos(lambda v: v, 0, 2), "dim"),
        (lambda: lanczos(lambda v: v, 3, 0), "num_steps"),
        (lambda: lanczos(lambda v: v, 3, 2, start=torch.zeros(3, dtype=F64)), "start"),
        (lambda: lanczos(lambda v: v, 3, 2, start=torch.ones(4, dtype=F64)), "start"),
        (lambda: stochastic_lanczos_quadrature(lambda v: v, 3, 2, 0), "num_probes"),
        (lambda: heavy_ball_hyperparameters(1.0, 2.0), "lambda_min"),
        (lambda: heavy_ball_hyperparameters(1.0, 0.0), "lambda_min"),
        (lambda: heavy_ball_hyperparameters(float("nan"), 1.0), "lambda_max"),
        (lambda: top_eigenvalues(lambda v: v, 3, 0, 2), "k"),
    ],
)
def test_bad_arguments(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


def test_learner_bad_arguments_change_nothing():
    x = torch.zeros(3, dtype=F64, requires_grad=True)
    with pytest.raises(ValueError, match="curvature_floor"):
        LanczosLearner([x], lambda: (x**2).sum(), curvature_floor=0.0)
    with pytest.raises(ValueError, match="num_steps"):
        LanczosLearner([x], lambda: (x**2).sum(), num_steps=0)
    with pytest.raises(TypeError, match="loss_fn"):
        LanczosLearner([x], 3.0)
    with pytest.raises(ValueError, match="requires_grad"):
        LanczosLearner([torch.zeros(3)], lambda: torch.zeros(()))
    # an optimizer without momentum entries is refused before anything is set
    learner = LanczosLearner([x], lambda: (x**2).sum(), num_steps=3)
    opt = torch.optim.Adam([x], lr=0.123)
    with pytest.raises(ValueError, match="momentum"):
        learner.update(opt)
    assert opt.param_groups[0]["lr"] == 0.123
    # no positive curvature: refused, optimizer untouched
    concave = LanczosLearner([x], lambda: -(x**2).sum(), num_steps=3)
    sgd = torch.optim.SGD([x], lr=0.5, momentum=0.1)
    with pytest.raises(ValueError, match="positive curvature"):
        concave.update(sgd)
    assert sgd.param_groups[0]["lr"] == 0.5 and sgd.param_groups[0]["momentum"] == 0.1
    with pytest.raises(ValueError, match="loss"):
        hessian_vector_product(torch.ones(2, requires_grad=True), [x])

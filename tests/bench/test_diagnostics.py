"""R_med (Jiang, Malik & Li, arXiv:2211.02254) and the Hessian diagonal behind it, on problems whose
Hessian is known by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.autograd.functional import hessian
from torch.func import functional_call

from adaptim.bench.diagnostics import hessian_diagonal, r_med, r_med_of_diagonal

F64 = torch.float64


def _quadratic(a: torch.Tensor) -> tuple[nn.Module, object]:
    """0.5 w^T A w over a bias-free linear layer's weight row (Hessian A everywhere)."""
    model = nn.Linear(len(a), 1, bias=False).to(F64)
    with torch.no_grad():
        model.weight.copy_(torch.linspace(-1.0, 1.0, len(a), dtype=F64))

    def loss(m: nn.Module, batch: object) -> torch.Tensor:
        w = m.weight[0]
        return 0.5 * w @ a @ w

    return model, loss


def test_quadratic_diagonal_and_r_med_by_hand() -> None:
    a = torch.tensor([[4.0, 1.0, 0.0], [1.0, 2.0, 0.5], [0.0, 0.5, -1.0]], dtype=F64)
    model, loss = _quadratic(a)
    assert torch.equal(
        hessian_diagonal(model, loss, None), torch.tensor([4.0, 2.0, -1.0], dtype=F64)
    )
    # |diag| = 4, 2, 1: max 4, median 2
    assert r_med(model, loss, None) == 2.0


def test_logistic_regression_at_zero_by_hand() -> None:
    # loss softplus(w.x) for one example: H = s(1-s) x x^T with s = sigmoid(0) = 1/2, so the diagonal
    # is x_i^2 / 4 = (0.25, 1, 2.25): max 2.25, median 1
    model = nn.Linear(3, 1, bias=False).to(F64)
    nn.init.zeros_(model.weight)
    x = torch.tensor([[1.0, 2.0, 3.0]], dtype=F64)

    def loss(m: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        return nn.functional.softplus(m(batch)).sum()

    diag = hessian_diagonal(model, loss, x)
    assert torch.allclose(diag, torch.tensor([0.25, 1.0, 2.25], dtype=F64))
    assert r_med(model, loss, x) == pytest.approx(2.25)


def test_exact_diagonal_matches_the_full_hessian_of_an_mlp() -> None:
    gen = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).to(F64)
    x = torch.randn(16, 4, generator=gen, dtype=F64)
    y = torch.randint(0, 3, (16,), generator=gen)

    def loss(m: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return nn.functional.cross_entropy(m(batch[0]), batch[1])

    names = [n for n, _ in net.named_parameters()]
    shapes = [p.shape for p in net.parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for p in net.parameters()])

    def of_flat(w: torch.Tensor) -> torch.Tensor:
        parts, i = {}, 0
        for n, shape in zip(names, shapes, strict=True):
            size = math.prod(shape)
            parts[n] = w[i : i + size].reshape(shape)
            i += size
        return nn.functional.cross_entropy(functional_call(net, parts, (x,)), y)

    full = hessian(of_flat, flat0).diagonal()
    diag = hessian_diagonal(net, loss, (x, y), chunk=7)  # chunks that do not divide the count
    assert torch.allclose(diag, full, atol=1e-12)
    # one block: the matching slice, in the same order
    first = hessian_diagonal(net, loss, (x, y), params=[net[0].weight])
    assert torch.allclose(first, full[:20], atol=1e-12)
    size = full[:20].abs().sort().values  # 20 entries: the median is the mean of the 10th and 11th
    assert r_med(net, loss, (x, y), params=[net[0].weight]) == pytest.approx(
        float(size[-1] / size[9:11].mean())
    )


def test_hutchinson_is_exact_on_a_diagonal_hessian_and_close_otherwise() -> None:
    # z * (D z) = D z^2 = D for Rademacher z: one sample gives the exact diagonal
    model, loss = _quadratic(torch.diag(torch.tensor([3.0, -0.5, 7.0, 1.0], dtype=F64)))
    est = hessian_diagonal(
        model,
        loss,
        None,
        method="hutchinson",
        samples=1,
        generator=torch.Generator().manual_seed(1),
    )
    assert torch.equal(est, torch.tensor([3.0, -0.5, 7.0, 1.0], dtype=F64))
    a = torch.tensor([[2.0, 1.0], [1.0, 5.0]], dtype=F64)
    model, loss = _quadratic(a)
    gen = torch.Generator().manual_seed(2)
    est = hessian_diagonal(model, loss, None, method="hutchinson", samples=4000, generator=gen)
    # the error of each entry is the off-diagonal 1 times a mean of +-1's: sd 1/sqrt(4000) = 0.016
    assert torch.allclose(est, torch.tensor([2.0, 5.0], dtype=F64), atol=0.08)
    assert not torch.equal(est, torch.tensor([2.0, 5.0], dtype=F64))


def test_the_model_and_its_grads_are_left_alone() -> None:
    model, loss = _quadratic(torch.eye(3, dtype=F64))
    model.weight.grad = torch.full_like(model.weight, 7.0)
    before = model.weight.detach().clone()
    r_med(model, loss, None)
    assert torch.equal(model.weight, before)
    assert torch.equal(model.weight.grad, torch.full_like(model.weight, 7.0))


def test_r_med_of_diagonal_by_hand() -> None:
    assert r_med_of_diagonal(torch.tensor([1.0, -2.0, 3.0, 10.0])) == 4.0  # median (2 + 3) / 2
    assert r_med_of_diagonal([torch.tensor([5.0]), torch.tensor([[1.0, 1.0]])]) == 5.0
    assert r_med_of_diagonal(torch.tensor([0.0, 0.0, 3.0])) == math.inf
    assert math.isnan(r_med_of_diagonal(torch.zeros(4)))


def test_a_loss_linear_in_the_weights_has_a_zero_hessian() -> None:
    model = nn.Linear(3, 1, bias=False).to(F64)

    def loss(m: nn.Module, batch: object) -> torch.Tensor:
        return m.weight.sum()

    assert torch.equal(hessian_diagonal(model, loss, None), torch.zeros(3, dtype=F64))
    assert math.isnan(r_med(model, loss, None))


def test_bad_input_is_refused() -> None:
    model, loss = _quadratic(torch.eye(2, dtype=F64))
    with pytest.raises(ValueError, match="method must be one of"):
        hessian_diagonal(model, loss, None, method="fisher")
    with pytest.raises(ValueError, match="samples"):
        hessian_diagonal(model, loss, None, method="hutchinson", samples=0)
    with pytest.raises(ValueError, match="chunk"):
        hessian_diagonal(model, loss, None, chunk=0)
    with pytest.raises(ValueError, match="params"):
        hessian_diagonal(model, loss, None, params=[])
    with pytest.raises(TypeError, match="params"):
        hessian_diagonal(model, loss, None, params=[torch.zeros(2)])
    with pytest.raises(ValueError, match="scalar"):
        hessian_diagonal(model, lambda m, b: m.weight * 2, None)
    with pytest.raises(ValueError, match="empty"):
        r_med_of_diagonal(torch.zeros(0))
    with pytest.raises(ValueError, match="non-finite"):
        r_med_of_diagonal(torch.tensor([1.0, math.nan]))
    with pytest.raises(TypeError, match="diagonal"):
        r_med_of_diagonal([])

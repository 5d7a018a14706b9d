"""ActiveLR: steps computed by hand, the authors' ActiveAdamW update written out from its equations, the
paper's claim (robustness to a too-small initial lr) at toy scale, and the wrapper's state."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

import adaptim
from helpers import assert_same_trajectory, bn_net


def test_two_coordinates_by_hand():
    """SGD lr 0.1, two steps per epoch, gradients scripted (loss = <c_t, x>), default gains (+2, *0.5).

    epoch 1: c = (1, 1), (1, -3)  -> G1 = (2, -2)
    epoch 2: c = (1, 1), (1, 1)   -> G2 = (2, 2):  G1*G2 = (4, -4)  -> gain (1 + 2, 1 * 0.5) = (3, 0.5)
    epoch 3: c = (1, 1), (-1, 1)  -> G3 = (0, 2):  G2*G3 = (0, 4)   -> gain (3 * 0.5, 0.5 + 2) = (1.5, 2.5)
    epoch 4: c = (1, 1)
    x = x - 0.1 * gain * c: four steps with gain 1 reach (-0.4, 0.0); then (-0.7, -0.05), (-0.4, -0.1)
    with gain (3, 0.5), and (-0.55, -0.35) with gain (1.5, 2.5).
    """
    cs = [(1, 1), (1, -3), (1, 1), (1, 1), (1, 1), (-1, 1), (1, 1)]
    expected = [
        (-0.1, -0.1),
        (-0.2, 0.2),
        (-0.3, 0.1),
        (-0.4, 0.0),
        (-0.7, -0.05),
        (-0.4, -0.1),
        (-0.55, -0.35),
    ]
    p = nn.Parameter(torch.zeros(2, dtype=torch.float64))
    opt = adaptim.ActiveLR(torch.optim.SGD([p], lr=0.1), steps_per_epoch=2)
    for t, c in enumerate(cs):
        opt.zero_grad()
        (torch.tensor(c, dtype=torch.float64) * p).sum().backward()
        opt.step()
        assert tuple(p.tolist()) == pytest.approx(expected[t], abs=1e-14), t
    assert opt.state[p]["activelr_gain"].tolist() == [1.5, 2.5]
    assert opt.epochs_done == 3


class _AuthorsActiveAdamW(torch.optim.Optimizer):
    """The authors' ActiveAdamW written out from its equations, independently of adaptim (test oracle).

    gain_i starts at 1; every step: G += g; p *= 1 - lr gain wd; m, v as Adam;
    p -= lr gain m_hat / (sqrt(v_hat) + eps); every E steps from the second epoch end on:
    gain = gain * low where G_prev G <= 0, else gain + high; then G_prev = G, G = 0.
    """

    def __init__(self, params, lr, wd, epoch, high=2.0, low=0.5, betas=(0.9, 0.999), eps=1e-8):
        super().__init__(params, dict(lr=lr))
        self.c = dict(
            lr=lr, wd=wd, epoch=epoch, high=high, low=low, b1=betas[0], b2=betas[1], eps=eps
        )

    @torch.no_grad()
    def step(self, closure=None):
        c = self.c
        for p in self.param_groups[0]["params"]:
            s = self.state[p]
            if not s:
                s.update(
                    t=0,
                    m=torch.zeros_like(p),
                    v=torch.zeros_like(p),
                    gain=torch.ones_like(p),
                    G=torch.zeros_like(p),
                )
            g = p.grad
            s["G"] = s["G"] + g
            s["t"] += 1
            t = s["t"]
            p.mul_(1 - c["lr"] * s["gain"] * c["wd"])
            s["m"] = c["b1"] * s["m"] + (1 - c["b1"]) * g
            s["v"] = c["b2"] * s["v"] + (1 - c["b2"]) * g * g
            m_hat = s["m"] / (1 - c["b1"] ** t)
            v_hat = s["v"] / (1 - c["b2"] ** t)
            p.sub_(c["lr"] * s["gain"] * m_hat / (v_hat.sqrt() + c["eps"]))
            if t % c["epoch"] == 0:
                if t > c["epoch"]:
                    flip = s["G_prev"] * s["G"] <= 0
                    s["gain"] = torch.where(flip, s["gain"] * c["low"], s["gain"] + c["high"])
                s["G_prev"], s["G"] = s["G"], torch.zeros_like(p)


def _mlp(dtype=torch.float64, seed=0):
    # No batch norm: the bias before a batch norm has a gradient of pure round-off, whose sign is noise.
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).to(dtype)


@pytest.mark.parametrize(
    "foreach,high,low", [(False, 2.0, 0.5), (True, 2.0, 0.5), (True, 0.05, 0.95)]
)
def test_matches_authors_active_adamw_equations(foreach, high, low):
    assert_same_trajectory(
        lambda p: adaptim.ActiveLR(
            adaptim.AdamW(p, lr=1e-2, weight_decay=0.01, foreach=foreach),
            steps_per_epoch=4,
            lr_high=high,
            lr_low=low,
        ),
        lambda p: _AuthorsActiveAdamW(p, lr=1e-2, wd=0.01, epoch=4, high=high, low=low),
        steps=40,
        model_factory=_mlp,
    )


def test_gains_actually_move_in_that_comparison():
    model = _mlp()
    opt = adaptim.ActiveLR(adaptim.AdamW(model.parameters(), lr=1e-2), steps_per_epoch=4)
    gen = torch.Generator().manual_seed(1)
    for _ in range(12):
        opt.zero_grad()
        x, y = (
            torch.randn(16, 6, generator=gen, dtype=torch.float64),
            torch.randint(0, 3, (16,), generator=gen),
        )
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    gains = torch.cat([opt.state[p]["activelr_gain"].flatten() for p in model.parameters()])
    assert (gains > 1).any() and (gains < 1).any()


def test_small_initial_lr_is_rescued():
    """Paper claim at toy scale: with a far too small lr, the Active variant still makes progress.

    Least squares with 8 minibatches per epoch, AdamW lr 3e-4 (the solution is ~1 away), 25 epochs."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(256, 10, generator=gen, dtype=torch.float64)
    w_true = torch.randn(10, generator=gen, dtype=torch.float64)
    b = a @ w_true + 0.01 * torch.randn(256, generator=gen, dtype=torch.float64)

    def final_loss(active: bool) -> float:
        w = nn.Parameter(torch.zeros(10, dtype=torch.float64))
        inner = torch.optim.AdamW([w], lr=3e-4, weight_decay=0.0)
        opt = adaptim.ActiveLR(inner, steps_per_epoch=8) if active else inner
        for _ in range(25):
            for i in range(8):
                rows = slice(32 * i, 32 * (i + 1))
                opt.zero_grad()
                ((a[rows] @ w - b[rows]) ** 2).mean().backward()
                opt.step()
        return ((a @ w.detach() - b) ** 2).mean().item()

    plain, active = final_loss(False), final_loss(True)
    assert active < 0.2 * plain, (plain, active)


def test_manual_epochs_and_state_dict_round_trip():
    model = bn_net()
    make = lambda m: adaptim.ActiveLR(torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9))  # noqa: E731
    opt = make(model)
    gen = torch.Generator().manual_seed(2)
    data = [
        (
            torch.randn(16, 6, generator=gen, dtype=torch.float64),
            torch.randint(0, 3, (16,), generator=gen),
        )
        for _ in range(20)
    ]

    def run(m, o, batches):
        for i, (x, y) in enumerate(batches):

            def closure(x=x, y=y):
                o.zero_grad()
                loss = nn.functional.cross_entropy(m(x), y)
                loss.backward()
                return loss

            assert isinstance(o.step(closure), torch.Tensor)
            if i % 3 == 2:
                o.end_epoch()

    run(model, opt, data[:10])
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    twin = copy.deepcopy(model)
    twin_opt = make(twin)
    buffer.seek(0)
    twin_opt.load_state_dict(torch.load(buffer, weights_only=False))
    run(model, opt, data[10:])
    run(twin, twin_opt, data[10:])
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)
        assert torch.equal(opt.state[p]["activelr_gain"], twin_opt.state[q]["activelr_gain"])
    assert any(
        not torch.equal(opt.state[p]["activelr_gain"], torch.ones_like(p))
        for p in model.parameters()
    )


def test_complex_and_bf16_params():
    z = nn.Parameter(torch.tensor([1 + 2j, -1j], dtype=torch.complex128))
    r = nn.Parameter(torch.view_as_real(z.detach()).clone())
    oz = adaptim.ActiveLR(torch.optim.SGD([z], lr=0.1), steps_per_epoch=1)
    orr = adaptim.ActiveLR(torch.optim.SGD([r], lr=0.1), steps_per_epoch=1)
    for _ in range(4):
        for o, loss_fn in (
            (oz, lambda: (z.abs() ** 2).sum() + z.real.sum()),
            (orr, lambda: (r**2).sum() + r[:, 0].sum()),
        ):
            o.zero_grad()
            loss_fn().backward()
            o.step()
    torch.testing.assert_close(torch.view_as_real(z.detach()), r.detach(), atol=1e-12, rtol=0)
    w = nn.Parameter(torch.ones(3, dtype=torch.bfloat16))
    ow = adaptim.ActiveLR(torch.optim.SGD([w], lr=0.1), steps_per_epoch=1)
    w.grad = torch.ones_like(w)
    ow.step()
    assert ow.state[w]["activelr_gain"].dtype == torch.float32 and w.dtype == torch.bfloat16


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"steps_per_epoch": 0}, "steps_per_epoch"),
        ({"lr_high": -1.0}, "lr_high"),
        ({"lr_low": 0.0}, "lr_low"),
        ({"lr_low": 1.5}, "lr_low"),
    ],
)
def test_bad_hyperparameters(kwargs, name):
    with pytest.raises(ValueError, match=name):
        adaptim.ActiveLR(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1), **kwargs)


def test_sparse_gradients_refused():
    emb = nn.Embedding(4, 2, sparse=True)
    opt = adaptim.ActiveLR(torch.optim.SGD(emb.parameters(), lr=0.1))
    emb(torch.tensor([1])).sum().backward()
    before = emb.weight.detach().clone()
    with pytest.raises(TypeError, match="sparse"):
        opt.step()
    assert torch.equal(emb.weight, before)

"""Claims of second-order methods: SGDHess (Tran & Cutkosky).

The abstract of arXiv 2103.03265 ("Correcting Momentum with Second-order Information"; NeurIPS 2022 as
"Better SGD using Second-order Momentum"): the algorithm "uses Hessian-vector products to 'correct' a
bias term in the momentum of SGD with momentum. This leads to better gradient estimates in a manner
analogous to variance reduction methods", and the experiments "see improvements over SGD". At toy
scale: on a minibatch problem, SGDHess's momentum is a better estimate of the full gradient than SGD
momentum's at the same learning rate and momentum, and it reaches a lower training loss.
"""

from __future__ import annotations

import statistics

import torch
from torch import nn

from adaptim.bench.claims_common import F64, Claim, ClaimResult, _gen, _make, _stats

__all__ = ["CLAIMS"]

_SGDHESS = "SGDHess (Tran & Cutkosky, NeurIPS 2022, arXiv:2103.03265)"
_LRS = (0.02, 0.05)
_MOMENTUM = 0.9
_STEPS = 300
_LAST = 50  # the loss and the estimate error are averaged over the last steps


def _teacher_task(seed: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A student MLP (5-16-1, tanh) and 256 samples labelled by a random teacher MLP plus noise."""
    gen = _gen(seed, salt=41)
    x = torch.randn(256, 5, generator=gen, dtype=F64)
    w1 = torch.randn(5, 8, generator=gen, dtype=F64)
    w2 = torch.randn(8, 1, generator=gen, dtype=F64)
    y = torch.tanh(x @ w1) @ w2 + 0.3 * torch.randn(256, 1, generator=gen, dtype=F64)
    torch.manual_seed(seed)
    student = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 1)).to(F64)
    return student, x, y


def _run_one(seed: int, lr: float, hessian: bool) -> tuple[float, float]:
    """(mean full-batch loss, mean relative error of the momentum as a gradient estimate) over the
    last steps of minibatch (8 samples) training with SGDHess or SGD momentum (same lr, momentum
    0.9, dampening 0: both buffers estimate the gradient times 1 / (1 - momentum))."""
    model, x, y = _teacher_task(seed)
    params = list(model.parameters())
    if hessian:
        opt = _make("sgdhess", params, lr=lr, momentum=_MOMENTUM)
    else:
        opt = torch.optim.SGD(params, lr=lr, momentum=_MOMENTUM)
    batches = _gen(seed, salt=42)
    losses, errors = [], []
    for t in range(_STEPS):
        idx = torch.randint(0, 256, (8,), generator=batches)
        last = t >= _STEPS - _LAST
        if last:  # the full loss and gradient at x_t, which this step's buffer estimates
            full = ((model(x) - y) ** 2).mean()
            full_grads = torch.autograd.grad(full, params)
            losses.append(float(full))
        opt.zero_grad()
        loss = ((model(x[idx]) - y[idx]) ** 2).mean()
        loss.backward(create_graph=hessian)
        opt.step()
        if last:
            errors.append(_estimate_error(opt, params, full_grads))
    return statistics.fmean(losses), statistics.fmean(errors)


def _estimate_error(
    opt: torch.optim.Optimizer, params: list[torch.Tensor], full_grads: tuple[torch.Tensor, ...]
) -> float:
    """``||(1 - momentum) m_t - grad F(x_t)|| / ||grad F(x_t)||`` over all parameters: the buffer
    of step t (which the step moved along) as an estimate of the full gradient at x_t."""
    sq_err = sq_norm = 0.0
    for p, g in zip(params, full_grads, strict=True):
        m = opt.state[p]["momentum_buffer"]
        sq_err += float(((1 - _MOMENTUM) * m - g).pow(2).sum())
        sq_norm += float(g.pow(2).sum())
    return (sq_err / max(sq_norm, 1e-300)) ** 0.5


def _run_sgdhess(seeds: int) -> ClaimResult:
    c = next(claim for claim in CLAIMS if claim.name == "sgdhess-beats-sgd-momentum")
    nums: dict[str, float] = {}
    holds = True
    parts = []
    for lr in _LRS:
        hess = [_run_one(s, lr, True) for s in range(seeds)]
        sgdm = [_run_one(s, lr, False) for s in range(seeds)]
        h_loss, m_loss = [h[0] for h in hess], [m[0] for m in sgdm]
        h_err, m_err = [h[1] for h in hess], [m[1] for m in sgdm]
        nums.update(_stats(f"sgdhess_loss_lr{lr:g}", h_loss))
        nums.update(_stats(f"sgdm_loss_lr{lr:g}", m_loss))
        nums.update(_stats(f"sgdhess_err_lr{lr:g}", h_err))
        nums.update(_stats(f"sgdm_err_lr{lr:g}", m_err))
        wins = sum(a < b for a, b in zip(h_loss, m_loss, strict=True))
        holds = holds and statistics.fmean(h_loss) < statistics.fmean(m_loss)
        holds = holds and 2 * wins > seeds
        holds = holds and statistics.fmean(h_err) < statistics.fmean(m_err)
        parts.append(
            f"lr {lr:g}: loss {statistics.fmean(h_loss):.4g} vs {statistics.fmean(m_loss):.4g} "
            f"(lower in {wins}/{seeds} seeds), momentum error {statistics.fmean(h_err):.3g} vs "
            f"{statistics.fmean(m_err):.3g}"
        )
    detail = (
        "SGDHess vs SGD momentum 0.9, teacher-student MLP, minibatches of 8, "
        f"{_STEPS} steps, means over the last {_LAST}: " + "; ".join(parts) + ". Holds if at every "
        "lr SGDHess's mean loss is lower, in more than half of the seeds, and its momentum's mean "
        "relative error as a full-gradient estimate is lower"
    )
    return c.result(holds, nums, detail)


CLAIMS: list[Claim] = [
    Claim(
        name="sgdhess-beats-sgd-momentum",
        paper=_SGDHESS,
        statement="Correcting the momentum of SGD with a Hessian-vector product gives better "
        "gradient estimates (like variance reduction) and improves over SGD with momentum.",
        needs=("sgdhess",),
        run=_run_sgdhess,
        setup="teacher-student regression: 256 samples from a random 5-8-1 tanh MLP + noise 0.3, "
        f"student 5-16-1 tanh MLP, float64; minibatches of 8, {_STEPS} steps, lr in {list(_LRS)}, "
        "momentum 0.9 (dampening 0) for both; SGDHess with the exact product "
        "(backward(create_graph=True)); baseline torch.optim.SGD(momentum=0.9)",
        criterion="at every lr: SGDHess's full-batch loss (mean of the last 50 steps, mean over "
        "seeds) is lower than SGD momentum's and lower in more than half of the seeds, and the "
        "relative error of (1 - momentum) * buffer as an estimate of the full gradient is lower",
    ),
]

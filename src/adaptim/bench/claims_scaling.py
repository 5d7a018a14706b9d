"""Claims about scaling rules for hyperparameters, for ``adaptim bench --suite claims``.

Same rules as :mod:`adaptim.bench.claims` (float64, every draw from a seeded ``torch.Generator``, a
criterion fixed in this file before the result was looked at and reported as it comes out). Both claims
are about tools (scaling rules), so they are :class:`~adaptim.bench.claims_common.ToolClaim` objects,
skipped only when the tool cannot be imported. ``docs/claims.md`` records the set-ups and results.

* ``momentum-lr-two-thirds``: Cowsik, Can & Glorioso, "Flatter, faster: scaling momentum for optimal
  speedup of SGD", arXiv:2210.16400 (no reference code); tool :func:`adaptim.tools.momentum_scaling.
  scale_momentum`.
* ``lr-batch-linear-sgd-sqrt-adam``: Granziol, Zohren & Roberts, "Learning Rates as a Function of
  Batch Size", JMLR 2022, arXiv:2006.09092 (authors' code github.com/diegogranziol/rmt_damping_dl);
  tool :func:`adaptim.tools.lr_scaling.scale_lr`.

Both toys need many runs (a grid of hyperparameters times replicas), so the optimizers are written out
as tensor operations batched over the grid: :func:`heavy_ball_step`, :func:`sgd_step` and
:func:`adam_step` follow ``torch.optim.SGD`` / ``torch.optim.Adam`` to the letter (the tests check
them against those classes step for step).
"""

from __future__ import annotations

import math
import statistics

import torch

from adaptim.bench.claims_common import (
    F64,
    Claim,
    ClaimResult,
    ToolClaim,
    _fmt,
    _gen,
    _named,
    _stats,
)

__all__ = ["CLAIMS", "adam_step", "heavy_ball_step", "sgd_step"]


def _claim(name: str) -> Claim:
    return _named(CLAIMS, name)


def _slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ``log ys`` against ``log xs``."""
    lx = [math.log(x) for x in xs]
    ly = [math.log(y) for y in ys]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / sum(
        (a - mx) ** 2 for a in lx
    )


# -- batched optimizer steps (torch.optim semantics) ---------------------------------------------


def heavy_ball_step(
    param: torch.Tensor, buf: torch.Tensor, grad: torch.Tensor, lr: float, momentum: torch.Tensor
) -> None:
    """``torch.optim.SGD(lr, momentum)`` in place, with a momentum per row (broadcast); ``buf`` starts
    at zero, which equals torch's first step ``buf = grad``."""
    buf.mul_(momentum).add_(grad)
    param.sub_(lr * buf)


def sgd_step(param: torch.Tensor, grad: torch.Tensor, lr: torch.Tensor) -> None:
    """``torch.optim.SGD(lr)`` (no momentum) in place, with a learning rate per row (broadcast)."""
    param.sub_(lr * grad)


def adam_step(
    param: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    grad: torch.Tensor,
    step: int,
    lr: torch.Tensor,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> None:
    """``torch.optim.Adam(lr, betas, eps)`` in place (step counts from 1), a learning rate per row."""
    beta1, beta2 = betas
    exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    bias1 = 1 - beta1**step
    bias2 = 1 - beta2**step
    denom = (exp_avg_sq.sqrt() / math.sqrt(bias2)).add_(eps)
    param.sub_((lr / bias1) * exp_avg / denom)


# -- (a) momentum: 1 - beta ~ lr^(2/3) -----------------------------------------------------------

_COWSIK = "Momentum scaling (Cowsik, Can & Glorioso, arXiv:2210.16400)"
_MOM_LRS = (0.08, 0.02, 0.005, 0.00125)
_MOM_GAMMAS = tuple(2.0 ** (-k / 4) for k in range(37))  # 1 - beta from 1 down to 2^-9
_MOM_SIGMA = 0.5  # label noise
_MOM_U0 = (
    3.0  # start on the manifold uv = 1 at (3, 1/3): flat-limit sharpness sqrt(8.89^2 + 4) = 9.1
)
_MOM_TARGET = 3.0  # the flattest minimiser has sharpness 2
_MOM_REPLICAS = 64
_MOM_MAX_STEPS = 20_000


def _limit_sharpness(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Sharpness of the minimiser that gradient flow from (u, v) reaches on uv = 1.

    Gradient flow on (uv - 1)^2 / 2 conserves u^2 - v^2, so it lands where u v = 1 and u^2 - v^2 = D,
    whose Hessian's non-zero eigenvalue is u^2 + v^2 = sqrt(D^2 + 4). This measures the drift along
    the manifold and ignores the fast fluctuations off it.
    """
    return torch.sqrt((u * u - v * v) ** 2 + 4.0)


def _first_flat(seed: int, lr: float, gammas: tuple[float, ...]) -> tuple[list[float], int]:
    """SGD with label noise and heavy-ball momentum on f = u v (target 1 + N(0, sigma^2)), every
    ``1 - beta`` in ``gammas`` at once (64 replicas each, the same noise for every gamma): the step at
    which the replica mean of :func:`_limit_sharpness` first reaches the target, and the gammas that
    reach it at that step (all of them; ``_MOM_MAX_STEPS`` and ``[]`` if none does)."""
    gen = _gen(seed, 40)
    gamma = torch.tensor(gammas, dtype=F64).unsqueeze(1)
    momentum = 1.0 - gamma
    shape = (len(gammas), _MOM_REPLICAS)
    u = torch.full(shape, _MOM_U0, dtype=F64)
    v = torch.full(shape, 1.0 / _MOM_U0, dtype=F64)
    buf_u, buf_v = torch.zeros(shape, dtype=F64), torch.zeros(shape, dtype=F64)
    for t in range(1, _MOM_MAX_STEPS + 1):
        target = 1.0 + _MOM_SIGMA * torch.randn(_MOM_REPLICAS, generator=gen, dtype=F64)
        residual = u * v - target
        grad_u, grad_v = residual * v, residual * u  # gradient of (uv - y)^2 / 2
        heavy_ball_step(u, buf_u, grad_u, lr, momentum)
        heavy_ball_step(v, buf_v, grad_v, lr, momentum)
        sharp = torch.nan_to_num(_limit_sharpness(u, v).mean(1), nan=math.inf)
        hit = sharp <= _MOM_TARGET
        if bool(hit.any()):
            return [g for g, h in zip(gammas, hit.tolist(), strict=True) if h], t
    return [], _MOM_MAX_STEPS


def _run_momentum(seeds: int) -> ClaimResult:
    """Cowsik, Can & Glorioso (arXiv:2210.16400): scaling 1 - beta as lr^(2/3) maximally accelerates
    SGD with label noise along a manifold of minimisers."""
    from adaptim.tools.momentum_scaling import scale_momentum

    c = _claim("momentum-lr-two-thirds")
    exponents, speedups, best_gammas, best_steps, sgd_steps, predicted = [], [], [], [], [], []
    for s in range(seeds):
        gam_star, steps = [], []
        for lr in _MOM_LRS:
            hit, t = _first_flat(s, lr, _MOM_GAMMAS)
            # ties: the geometric mean of the gammas that reach the target at the same step
            gam_star.append(
                math.exp(statistics.fmean(math.log(g) for g in hit)) if hit else math.nan
            )
            steps.append(t)
        sgd_hit, sgd_t = _first_flat(s, _MOM_LRS[0], (1.0,))
        sgd_steps.append(sgd_t if sgd_hit else math.inf)
        best_gammas.append(gam_star)
        best_steps.append(steps)
        ok = all(math.isfinite(g) for g in gam_star)
        exponents.append(_slope(list(_MOM_LRS), gam_star) if ok else math.nan)
        speedups.append(sgd_steps[-1] / steps[0])
        if ok and gam_star[0] < 1:
            # scale_momentum carries the best momentum at the largest lr down to the smallest one
            pred = 1.0 - scale_momentum(_MOM_LRS[-1], _MOM_LRS[0], 1.0 - gam_star[0])
            predicted.append(pred / gam_star[-1])
        else:
            predicted.append(math.nan)
    holds = all(abs(k - 2 / 3) <= 0.08 for k in exponents) and all(x >= 2 for x in speedups)
    nums = {**_stats("exponent", exponents), **_stats("speedup_over_sgd_at_lr_0.08", speedups)}
    for i, lr in enumerate(_MOM_LRS):
        nums.update(_stats(f"best_1_minus_beta_lr_{lr:g}", [g[i] for g in best_gammas]))
        nums.update(_stats(f"steps_lr_{lr:g}", [t[i] for t in best_steps]))
    nums.update(_stats("sgd_steps_lr_0.08", sgd_steps))
    nums.update(_stats("scale_momentum_pred_over_best", predicted))
    mean_g = [statistics.fmean(g[i] for g in best_gammas) for i in range(len(_MOM_LRS))]
    detail = (
        f"f = uv, label noise 0.5, heavy ball, steps until the flat-limit sharpness (mean of 64 "
        f"replicas) goes 9.1 -> 3: fastest 1 - beta at lr {list(_MOM_LRS)} = "
        f"{', '.join(f'{g:.3g}' for g in mean_g)}, exponent {statistics.fmean(exponents):.3f} "
        f"(theory 2/3; 1/2 would be critical damping); at lr 0.08 {statistics.fmean(speedups):.3g}x "
        "faster than plain SGD (mean); holds if in every seed the exponent is within 0.08 of 2/3 and "
        "the speed-up is >= 2"
    )
    return c.result(holds, nums, detail)


# -- (b) lr ~ B for SGD, ~ sqrt(B) for Adam -----------------------------------------------------

_GRANZIOL = "lr vs batch size (Granziol, Zohren & Roberts, JMLR 2022, arXiv:2006.09092)"
_BATCHES = (4, 16, 64)
_LR_GRID = tuple(2.0 ** (k / 4) for k in range(-48, 1))  # 2^-12 .. 1 in quarter octaves
_LSQ_N, _LSQ_D, _LSQ_REPLICAS, _LSQ_EPOCHS = 1024, 16, 16, 4


def _lsq_problem(seed: int) -> tuple[torch.Tensor, torch.Tensor, float, torch.Generator]:
    """y = X w* + N(0, 1), X: 1024 x 16 standard normal, w* ~ N(0, I/16); the least-squares MSE."""
    gen = _gen(seed, 41)
    x = torch.randn(_LSQ_N, _LSQ_D, generator=gen, dtype=F64)
    w_star = torch.randn(_LSQ_D, generator=gen, dtype=F64) / math.sqrt(_LSQ_D)
    y = x @ w_star + torch.randn(_LSQ_N, generator=gen, dtype=F64)
    w_ls = torch.linalg.lstsq(x, y.unsqueeze(1)).solution.squeeze(1)
    return x, y, float(((x @ w_ls - y) ** 2).mean()), gen


def _excess_after_epochs(seed: int, batch: int, optimizer: str) -> torch.Tensor:
    """Mean over 16 replicas (own shuffles) of the final full-data excess MSE after 4 epochs from
    w = 0, for every lr of the grid at once (``inf`` where a run diverged)."""
    x, y, best, gen = _lsq_problem(seed)
    lr = torch.tensor(_LR_GRID, dtype=F64).reshape(-1, 1, 1)
    shape = (len(_LR_GRID), _LSQ_REPLICAS, _LSQ_D)
    w = torch.zeros(shape, dtype=F64)
    exp_avg, exp_avg_sq = torch.zeros(shape, dtype=F64), torch.zeros(shape, dtype=F64)
    step = 0
    for _ in range(_LSQ_EPOCHS):
        order = torch.argsort(torch.rand(_LSQ_REPLICAS, _LSQ_N, generator=gen), dim=1)
        for start in range(0, _LSQ_N, batch):
            idx = order[:, start : start + batch]  # (replicas, batch)
            xb, yb = x[idx], y[idx]
            residual = torch.einsum("lrd,rbd->lrb", w, xb) - yb
            grad = torch.einsum("lrb,rbd->lrd", residual, xb) * (2.0 / batch)  # of the batch MSE
            step += 1
            if optimizer == "sgd":
                sgd_step(w, grad, lr)
            else:
                adam_step(w, exp_avg, exp_avg_sq, grad, step, lr)
    mse = ((torch.einsum("lrd,nd->lrn", w, x) - y) ** 2).mean(2)
    excess = torch.nan_to_num(mse - best, nan=math.inf, posinf=math.inf).mean(1)
    return excess


def _best_lrs(seed: int, optimizer: str) -> tuple[list[float], bool]:
    """The grid lr with the lowest excess MSE for each batch size, and whether all are interior."""
    lrs, interior = [], True
    for batch in _BATCHES:
        i = int(torch.argmin(_excess_after_epochs(seed, batch, optimizer)))
        interior &= 0 < i < len(_LR_GRID) - 1
        lrs.append(_LR_GRID[i])
    return lrs, interior


def _run_batch_scaling(seeds: int) -> ClaimResult:
    """Granziol, Zohren & Roberts (arXiv:2006.09092): the learning rate scales linearly with the batch
    size for SGD and as its square root for Adam."""
    from adaptim.tools.lr_scaling import scale_lr

    c = _claim("lr-batch-linear-sgd-sqrt-adam")
    k_sgd, k_adam, interior, best = [], [], [], {"sgd": [], "adam": []}
    pred_err = {"sgd": [], "adam": []}
    for s in range(seeds):
        for opt, ks in (("sgd", k_sgd), ("adam", k_adam)):
            lrs, inner = _best_lrs(s, opt)
            interior.append(inner)
            ks.append(_slope(list(_BATCHES), lrs))
            best[opt].append(lrs)
            # what scale_lr predicts at the largest batch from the best lr at the smallest
            pred = scale_lr(lrs[0], _BATCHES[-1], _BATCHES[0], opt)
            pred_err[opt].append(lrs[-1] / pred)
    holds = (
        all(interior)
        and all(0.75 <= k <= 1.25 for k in k_sgd)
        and all(0.25 <= k <= 0.75 for k in k_adam)
    )
    nums = {**_stats("sgd_exponent", k_sgd), **_stats("adam_exponent", k_adam)}
    for opt in ("sgd", "adam"):
        for i, b in enumerate(_BATCHES):
            nums.update(_stats(f"{opt}_best_lr_b{b}", [lrs[i] for lrs in best[opt]]))
        nums.update(_stats(f"{opt}_best_over_scale_lr_b64", pred_err[opt]))
    mean_lrs = {
        opt: [statistics.fmean(lrs[i] for lrs in best[opt]) for i in range(len(_BATCHES))]
        for opt in best
    }
    detail = (
        f"least squares 1024x16 (noise 1), 4 epochs from w = 0, best lr (quarter octaves) for batch "
        f"{list(_BATCHES)}: SGD {', '.join(_fmt(x) for x in mean_lrs['sgd'])}, Adam "
        f"{', '.join(_fmt(x) for x in mean_lrs['adam'])} (mean); exponent of lr ~ B^k: SGD "
        f"{statistics.fmean(k_sgd):.3f}, Adam {statistics.fmean(k_adam):.3f}; holds if in every seed "
        "SGD's k is in [0.75, 1.25], Adam's in [0.25, 0.75] and every best lr is inside the grid"
        + ("" if all(interior) else " (a best lr fell on the grid's edge)")
    )
    return c.result(holds, nums, detail)


# -- the list -------------------------------------------------------------------------------------

CLAIMS: list[Claim] = [
    ToolClaim(
        name="momentum-lr-two-thirds",
        paper=_COWSIK,
        statement="For SGD with label noise and momentum, scaling 1 - beta with the learning rate to the "
        "power 2/3 maximally accelerates training (the drift along the manifold of minimisers towards "
        "flatter ones).",
        needs=("adaptim.tools.momentum_scaling:scale_momentum",),
        run=_run_momentum,
        setup="f(u, v) = u v fitted to targets 1 + N(0, 0.25) (one fresh label per step, loss "
        "(uv - y)^2 / 2), 64 replicas from (3, 1/3) on the manifold uv = 1; heavy ball as "
        f"torch.optim.SGD(lr, momentum); lr in {list(_MOM_LRS)}, 1 - beta on 2^(-k/4), k = 0..36; "
        "time = first step at which the replica mean of the sharpness of the gradient-flow limit "
        "point, sqrt((u^2 - v^2)^2 + 4), is <= 3 (start 9.1, flattest 2); per lr the fastest 1 - beta "
        "(geometric mean of ties); exponent = least-squares slope of log(1 - beta*) on log(lr); plain "
        "SGD (beta = 0) at lr 0.08 for the speed-up",
        criterion="in every seed the exponent is within 0.08 of 2/3 (1/2 would be critical damping, 1 a "
        "fixed effective lr) and at lr 0.08 the fastest momentum reaches the target at least 2x sooner "
        "than plain SGD",
    ),
    ToolClaim(
        name="lr-batch-linear-sgd-sqrt-adam",
        paper=_GRANZIOL,
        statement="The learning rate should scale linearly with the batch size for SGD and as its "
        "square root for Adam.",
        needs=("adaptim.tools.lr_scaling:scale_lr",),
        run=_run_batch_scaling,
        setup="least squares y = X w* + N(0, 1), X 1024x16 standard normal, w* ~ N(0, I/16), from w = 0, "
        f"{_LSQ_EPOCHS} epochs of shuffled batches of B in {list(_BATCHES)}; SGD (no momentum) and Adam "
        "(betas 0.9, 0.999, eps 1e-8) as torch.optim; lr on 2^(k/4), k = -48..0; best lr = lowest final "
        "full-data excess MSE (mean of 16 replicas with their own shuffles); exponent = least-squares "
        "slope of log(best lr) on log(B)",
        criterion="in every seed SGD's exponent is in [0.75, 1.25], Adam's in [0.25, 0.75], and every "
        "best lr lies inside the grid",
    ),
]

"""Claims about SGD's momentum made adaptive, two-signed or inertial: adaptive heavy ball, PNM, Adai,
NCG-style momentum.

Conventions (float64, every draw from a seeded ``torch.Generator``, ``torch.optim`` baselines, a
criterion fixed in the code before the result was looked at): :mod:`adaptim.bench.claims`; set-ups
and the last run's numbers: ``docs/claims.md``.

* ``ahb-larger-lr``, ``ahb-faster-than-fixed-momentum``: adaptive heavy-ball momentum, Sun, Ling, Shi,
  Li & Wang, arXiv:2110.09057.
* ``ahb-ratio-finds-lambda-min``: the same method as its authors restate it (Nguyen, Baraniuk,
  Kirby, Osher & Wang, "Momentum Transformer", MSML 2022, PMLR 190:189-204, Sec. 3.2.1: Theorem 2,
  Proposition 3, eq. (17)).
* ``pnm-larger-noise``: PNM, Xie, Yuan, Zhu & Sugiyama, ICML 2021, arXiv:2103.17182.
* ``adai-flat-minima``: Adai, Xie et al., ICML 2022, arXiv:2006.15815; github.com/zeke-xie/
  adaptive-inertia-adai.
* ``ncg-larger-lr-faster``: Wang & Ye, IEEE TNNLS 35(9), 2024 (preprint arXiv:2012.02188; no code;
  our rule is RECONSTRUCTED).
"""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Callable

import torch

from adaptim.bench.claims_common import (
    F64,
    Claim,
    ClaimResult,
    _all,
    _drive,
    _fmt,
    _gen,
    _make,
    _named,
    _noisy_quadratic,
    _nqm_excess,
    _stats,
)

__all__ = ["MOMENTUM_CLAIMS"]


def _claim(name: str) -> Claim:
    """This module's claim called ``name`` (its run function labels its result with it)."""
    return _named(MOMENTUM_CLAIMS, name)


# -- Adaptive heavy-ball momentum: larger lr, faster ----------------------------------------------

_AHB = "Adaptive heavy-ball momentum (Sun, Ling, Shi, Li, Wang, arXiv:2110.09057)"
_AHB_NAMES = "ahb_sgd|ahb-sgd|adahb_sgd|ahbsgd|*heavy*ball*sgd*|ahb*sgd*"
_AHB_LRS = (0.5, 1.0, 1.5, 1.9, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0)


def _quad_problem(seed: int, dim: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """Ill-conditioned quadratic 0.5 x^T H x: eigenvalues logspace(-2, 0), a random rotation and a
    random start per seed."""
    gen = _gen(seed, 8)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=F64))
    hmat = q @ torch.diag(_noisy_quadratic(dim)) @ q.T
    return hmat, torch.randn(dim, generator=gen, dtype=F64)


def _quad_steps(seed: int, make_opt: Callable, steps: int, target: float) -> tuple[int, float]:
    """Run on :func:`_quad_problem`; (the first step with loss <= target * initial, or inf; the final
    loss / initial loss). A run that exceeds 1e6 x the initial loss is stopped (diverged)."""
    hmat, x0 = _quad_problem(seed)

    def loss(x: torch.Tensor) -> float:
        return 0.5 * float(x @ hmat @ x)

    f0 = loss(x0)
    hit = [math.inf]

    def stop(x: torch.Tensor, t: int) -> bool:
        f = loss(x)
        if f <= target * f0 and hit[0] == math.inf:
            hit[0] = t
        return not math.isfinite(f) or f > 1e6 * f0

    x, _ = _drive(make_opt, x0, lambda x, t: hmat @ x, steps, stop)
    final = loss(x) / f0 if bool(torch.isfinite(x).all()) else math.inf
    return hit[0], final if math.isfinite(final) else math.inf


def _quad_converges(seed: int, make_opt: Callable, steps: int = 1000) -> bool:
    """Does the loss end at or below 1e-3 of its initial value after ``steps`` steps?"""
    return _quad_steps(seed, make_opt, steps, 1e-3)[1] <= 1e-3


def _run_ahb(seeds: int) -> ClaimResult:
    c = _claim("ahb-larger-lr")
    ahb, hb = [], []
    for s in range(seeds):
        ok_a = [
            lr
            for lr in _AHB_LRS
            if _quad_converges(s, lambda p, lr=lr: _make(_AHB_NAMES, p, lr=lr))
        ]
        ok_h = [
            lr
            for lr in _AHB_LRS
            if _quad_converges(s, lambda p, lr=lr: torch.optim.SGD(p, lr=lr, momentum=0.9))
        ]
        ahb.append(max(ok_a, default=0.0))
        hb.append(max(ok_h, default=0.0))
    holds = all(a > b for a, b in zip(ahb, hb, strict=True))
    nums = {**_stats("ahb_max_lr", ahb), **_stats("sgdm_max_lr", hb)}
    detail = (
        f"largest lr in {list(_AHB_LRS)} that reaches 1e-3 of the initial loss in 1000 steps on a "
        f"20-d quadratic with eigenvalues 1e-2..1: adaptive HB {_fmt(min(ahb))}, SGD momentum 0.9 "
        f"{_fmt(max(hb))} (worst seeds); holds if adaptive HB's is larger in every seed"
    )
    return c.result(holds, nums, detail)


_AHB_FAST_LRS = (0.5, 1.0, 1.9)


def _run_ahb_faster(seeds: int) -> ClaimResult:
    c = _claim("ahb-faster-than-fixed-momentum")
    ahb: dict[float, list[float]] = {lr: [] for lr in _AHB_FAST_LRS}
    hb: dict[float, list[float]] = {lr: [] for lr in _AHB_FAST_LRS}
    for s in range(seeds):
        for lr in _AHB_FAST_LRS:
            ahb[lr].append(
                _quad_steps(s, lambda p, lr=lr: _make(_AHB_NAMES, p, lr=lr), 3000, 1e-6)[0]
            )
            hb[lr].append(
                _quad_steps(
                    s, lambda p, lr=lr: torch.optim.SGD(p, lr=lr, momentum=0.9), 3000, 1e-6
                )[0]
            )
    holds = all(a < b for lr in _AHB_FAST_LRS for a, b in zip(ahb[lr], hb[lr], strict=True))
    nums: dict[str, float] = {}
    for lr in _AHB_FAST_LRS:
        nums.update(_stats(f"ahb_steps_lr{lr:g}", ahb[lr]))
        nums.update(_stats(f"sgdm_steps_lr{lr:g}", hb[lr]))
    shown = ", ".join(
        f"lr {lr:g}: {_fmt(statistics.fmean(ahb[lr]))} vs {_fmt(statistics.fmean(hb[lr]))}"
        for lr in _AHB_FAST_LRS
    )
    detail = (
        f"steps to 1e-6 of the initial loss (cap 3000, inf = not reached), adaptive HB vs SGD "
        f"momentum 0.9, mean: {shown}; holds if adaptive HB needs fewer steps at every lr in every seed"
    )
    return c.result(holds, nums, detail)


# -- Adaptive heavy ball as its authors restate it: the ratio finds lambda_min ------------------

_AHB_RESTATED = (
    "Adaptive heavy-ball momentum as restated by its authors (Nguyen, Baraniuk, Kirby, Osher, Wang, "
    "Momentum Transformer, MSML 2022, PMLR 190:189-204, Sec. 3.2.1, Theorem 2, Prop. 3, eq. (17))"
)
_AHB_THEORY_LRS = (0.25, 1.0)  # the theory's range: lr <= 1 / lambda_max = 1
# ||x_k - x_{k-1}|| stays above 1e-4 down to the stopping error, so the optimizer's curvature_eps
# (1e-6, added to it) biases its own estimate by at most about 1%
_AHB_X0_SCALE = 1e3


def _ratio_and_rate(seed: int, make_opt: Callable, cap: int = 3000) -> tuple[float, float, int]:
    """Run on :func:`_quad_problem` (x* = 0) from ``_AHB_X0_SCALE`` x its start until ||x_k|| <= 1e-6
    ||x_0|| (or ``cap`` steps); (median of the last 10 ratios ||g_k - g_{k-1}|| / ||x_k - x_{k-1}||
    measured on the trajectory, the mean contraction of ||x_k|| per step over the second half of the
    run, the steps taken)."""
    hmat, x0 = _quad_problem(seed)
    x = (_AHB_X0_SCALE * x0).requires_grad_(True)
    opt = make_opt([x])
    errors = [float(x.detach().norm())]
    ratios: list[float] = []
    g_prev = x_prev = None
    for _ in range(cap):
        xk = x.detach().clone()
        g = hmat @ xk
        if g_prev is not None and x_prev is not None:
            moved = float((xk - x_prev).norm())
            ratios.append(float((g - g_prev).norm()) / moved if moved > 0 else math.inf)
        g_prev, x_prev = g, xk
        x.grad = g.clone()
        opt.step()
        errors.append(float(x.detach().norm()))
        if not math.isfinite(errors[-1]) or errors[-1] <= 1e-6 * errors[0]:
            break
    steps = len(errors) - 1
    half = steps // 2
    if not (math.isfinite(errors[-1]) and errors[half] > 0 and steps > half and ratios):
        return math.nan, math.inf, steps
    rate = (errors[-1] / errors[half]) ** (1 / (steps - half))
    return statistics.median(ratios[-10:]), rate, steps


def _run_ahb_restated(seeds: int) -> ClaimResult:
    c = _claim("ahb-ratio-finds-lambda-min")
    lam_min = float(_noisy_quadratic().min())
    ratio: dict[float, list[float]] = {lr: [] for lr in _AHB_THEORY_LRS}
    rate: dict[float, list[float]] = {lr: [] for lr in _AHB_THEORY_LRS}
    steps: dict[float, list[float]] = {lr: [] for lr in _AHB_THEORY_LRS}
    for s in range(seeds):
        for lr in _AHB_THEORY_LRS:
            r, q, n = _ratio_and_rate(s, lambda p, lr=lr: _make(_AHB_NAMES, p, lr=lr))
            ratio[lr].append(r / lam_min)
            rate[lr].append(q)
            steps[lr].append(n)

    def exponent_ratio(q: float, lr: float) -> float:
        # -log(measured contraction) / -log(1 - sqrt(lr lambda_min)): 1 when the rate is the theory's
        return math.log(q) / math.log(1 - math.sqrt(lr * lam_min)) if q > 0 else math.nan

    holds = all(
        abs(r - 1) <= 0.1 and abs(exponent_ratio(q, lr) - 1) <= 0.25
        for lr in _AHB_THEORY_LRS
        for r, q in zip(ratio[lr], rate[lr], strict=True)
    )
    nums: dict[str, float] = {}
    for lr in _AHB_THEORY_LRS:
        nums.update(_stats(f"ratio_over_lambda_min_lr{lr:g}", ratio[lr]))
        nums.update(_stats(f"contraction_lr{lr:g}", rate[lr]))
        nums[f"theory_contraction_lr{lr:g}"] = 1 - math.sqrt(lr * lam_min)
        nums.update(_stats(f"steps_lr{lr:g}", steps[lr]))
    shown = ", ".join(
        f"lr {lr:g}: ratio/lambda_min {statistics.fmean(ratio[lr]):.3f}, contraction "
        f"{statistics.fmean(rate[lr]):.4f} vs theory {1 - math.sqrt(lr * lam_min):.4f}"
        for lr in _AHB_THEORY_LRS
    )
    detail = (
        f"quadratic of ahb-larger-lr (lambda 1e-2..1), start x {_AHB_X0_SCALE:g}, run to 1e-6 of the "
        f"initial error (mean): {shown}; holds if in every seed and lr the ratio "
        "||g_k - g_{k-1}||/||x_k - x_{k-1}|| ends within 10% of lambda_min and -log(contraction) is "
        "within 25% of -log(1 - sqrt(lr lambda_min))"
    )
    return c.result(holds, nums, detail)


# -- PNM: enlarged noise at the same effective learning rate --------------------------------------

_PNM = "PNM (Xie, Yuan, Zhu, Sugiyama, ICML 2021, arXiv:2103.17182)"


def _run_pnm(seeds: int) -> ClaimResult:
    c = _claim("pnm-larger-noise")
    # PNM's step has mean lr * g / sqrt((1+b0)^2 + b0^2) (normalized EMAs); torch SGD's momentum
    # buffer sums the gradients, mean step lr_sgd * g / (1 - momentum). Match the two.
    b1, b0, lr_eff = 0.9, 1.0, 0.1
    lr_pnm = lr_eff * math.sqrt((1 + b0) ** 2 + b0**2)
    lr_sgd = lr_eff * (1 - b1)
    pn, sg, pn0 = [], [], []
    for s in range(seeds):
        pn.append(
            _nqm_excess(
                s, lambda p: _make("pnm", p, lr=lr_pnm, betas=(b1, b0)), 4000, 2000, 1, 10.0, 12
            )
        )
        sg.append(
            _nqm_excess(
                s, lambda p: torch.optim.SGD(p, lr=lr_sgd, momentum=b1), 4000, 2000, 1, 10.0, 12
            )
        )
        gen = _gen(s, 12)
        x0 = 10.0 * torch.randn(20, generator=gen, dtype=F64)
        pn0.append(0.5 * float((_noisy_quadratic() * x0**2).sum()))
    holds = all(a >= 1.5 * b for a, b in zip(pn, sg, strict=True)) and all(
        a <= 0.1 * f0 for a, f0 in zip(pn, pn0, strict=True)
    )
    nums = {**_stats("pnm_loss", pn), **_stats("sgdm_loss", sg), **_stats("initial_loss", pn0)}
    detail = (
        f"noisy quadratic from 10*N(0,I), effective lr {lr_eff} for both (PNM lr {lr_pnm:.3g}, betas "
        f"({b1}, {b0}); SGD lr {lr_sgd:.3g}, momentum {b1}): steady-state excess loss (steps "
        f"2000-4000) PNM {statistics.fmean(pn):.3g} vs SGDM {statistics.fmean(sg):.3g}; holds if PNM's "
        "is >= 1.5x SGDM's (larger noise) and <= 0.1x the initial loss (it still converges), every seed"
    )
    return c.result(holds, nums, detail)


# -- Adai: favours flat minima as SGD does --------------------------------------------------------

_ADAI = "Adai (Xie, Wang, Zhang, Sato, Sugiyama, ICML 2022, arXiv:2006.15815)"
_ADAI_H = (1.0, 1.0 / 16)  # sharp and flat curvature


def _temperatures(seed: int, make_opt: Callable, replicas: int = 400, steps: int = 3000) -> float:
    """Quadratic wells 0.5 h x^2 with Hessian-shaped gradient noise (variance h), a sharp (h = 1) and
    a flat (h = 1/16) row of ``replicas`` coordinates in ONE tensor, from x = 0. The effective
    temperature of a row is T = h E[x^2] over steps 1001..steps (a Kramers escape over a barrier dL
    takes log tau ~ dL / T); returns the exponent log(T_sharp/T_flat) / log(h_sharp/h_flat)."""
    gen = _gen(seed, 21)
    hs, hf = _ADAI_H
    h = torch.tensor([[hs], [hf]], dtype=F64).expand(2, replicas).contiguous()
    root = h.sqrt()
    x = torch.zeros(2, replicas, dtype=F64, requires_grad=True)
    opt = make_opt([x])
    acc = torch.zeros(2, dtype=F64)
    burn = 1000
    for t in range(1, steps + 1):
        x.grad = h * x.detach() + root * torch.randn(2, replicas, generator=gen, dtype=F64)
        opt.step()
        if t > burn:
            acc += x.detach().square().mean(1)
    temp = h[:, 0] * acc / (steps - burn)
    if not bool(torch.isfinite(temp).all()) or float(temp.min()) <= 0:
        return math.nan
    return math.log(float(temp[0] / temp[1])) / math.log(hs / hf)


def _run_adai(seeds: int) -> ClaimResult:
    """Adai (Xie et al., ICML 2022, arXiv:2006.15815; reference github.com/zeke-xie/
    adaptive-inertia-adai): Adai's escape time depends on sharpness as SGD's does, Adam's on its
    square root (the paper's diffusion analysis, Sec. 3-4)."""
    c = _claim("adai-flat-minima")
    ai, ad, sg = [], [], []
    for s in range(seeds):
        ai.append(_temperatures(s, lambda p: _make("adai", p, lr=0.05)))
        ad.append(_temperatures(s, lambda p: torch.optim.Adam(p, lr=0.01)))
        sg.append(_temperatures(s, lambda p: torch.optim.SGD(p, lr=0.05)))
    holds = all(abs(a - g) <= 0.15 and d <= a - 0.25 for a, d, g in zip(ai, ad, sg, strict=True))
    nums = {
        **_stats("adai_exponent", ai),
        **_stats("adam_exponent", ad),
        **_stats("sgd_exponent", sg),
    }
    detail = (
        "exponent k in T ~ H^k of the temperature in a well with Hessian-shaped noise (H = 1 vs 1/16 in "
        f"one tensor; escape time log tau ~ dL/T): Adai {statistics.fmean(ai):.3f}, SGD "
        f"{statistics.fmean(sg):.3f}, Adam {statistics.fmean(ad):.3f} (mean; theory 1, 1, 0.5); holds "
        "if in every seed Adai's is within 0.15 of SGD's and Adam's is at least 0.25 below Adai's"
    )
    return c.result(holds, nums, detail)


# -- NCG-style momentum: larger lr, faster --------------------------------------------------------

_NCG = "SGD with NCG-style adaptive momentum (Wang & Ye, IEEE TNNLS 2024, arXiv:2012.02188)"
_NCG_FAST_LRS = (0.5, 1.0, 1.9)


@functools.lru_cache(maxsize=256)
def _sgdm_quad(seed: int, lr: float, what: str) -> float:
    """torch SGD(momentum=0.9) on ``_quad_problem``: converged in 1000 steps (1.0/0.0) or steps to
    1e-6 (cached: the baseline does not depend on the registry)."""

    def make(p: list[torch.Tensor]) -> torch.optim.Optimizer:
        return torch.optim.SGD(p, lr=lr, momentum=0.9)

    if what == "converges":
        return float(_quad_converges(seed, make))
    return float(_quad_steps(seed, make, 3000, 1e-6)[0])


def _run_ncg(seeds: int) -> ClaimResult:
    """NCG-style momentum (Wang & Ye, IEEE TNNLS 2024, arXiv:2012.02188; no reference code, rule
    reconstructed in ``optimizers/ncg_momentum.py``): no momentum hyperparameter, a larger usable lr
    and faster convergence than a constant momentum."""
    c = _claim("ncg-larger-lr-faster")
    ncg_lr, hb_lr = [], []
    ncg_steps: dict[float, list[float]] = {lr: [] for lr in _NCG_FAST_LRS}
    hb_steps: dict[float, list[float]] = {lr: [] for lr in _NCG_FAST_LRS}
    for s in range(seeds):
        ok = [
            lr for lr in _AHB_LRS if _quad_converges(s, lambda p, lr=lr: _make("ncg_sgd", p, lr=lr))
        ]
        ncg_lr.append(max(ok, default=0.0))
        hb_lr.append(max((lr for lr in _AHB_LRS if _sgdm_quad(s, lr, "converges")), default=0.0))
        for lr in _NCG_FAST_LRS:
            ncg_steps[lr].append(
                _quad_steps(s, lambda p, lr=lr: _make("ncg_sgd", p, lr=lr), 3000, 1e-6)[0]
            )
            hb_steps[lr].append(_sgdm_quad(s, lr, "steps"))
    larger = _all(zip(ncg_lr, hb_lr, strict=True), lambda a, b: a > b)
    faster = all(
        a < b for lr in _NCG_FAST_LRS for a, b in zip(ncg_steps[lr], hb_steps[lr], strict=True)
    )
    nums = {**_stats("ncg_max_lr", ncg_lr), **_stats("sgdm_max_lr", hb_lr)}
    for lr in _NCG_FAST_LRS:
        nums.update(_stats(f"ncg_steps_lr{lr:g}", ncg_steps[lr]))
        nums.update(_stats(f"sgdm_steps_lr{lr:g}", hb_steps[lr]))
    shown = ", ".join(
        f"lr {lr:g}: {_fmt(statistics.fmean(ncg_steps[lr]))} vs {_fmt(statistics.fmean(hb_steps[lr]))}"
        for lr in _NCG_FAST_LRS
    )
    detail = (
        f"quadratic of ahb-larger-lr: largest converging lr NCG {_fmt(min(ncg_lr))} vs SGD momentum 0.9 "
        f"{_fmt(max(hb_lr))} (worst seeds); steps to 1e-6 (mean) {shown}; holds if NCG's largest lr is "
        "larger and it needs fewer steps at every lr, in every seed"
    )
    return c.result(larger and faster, nums, detail)


# -- the list -------------------------------------------------------------------------------------

MOMENTUM_CLAIMS: list[Claim] = [
    Claim(
        name="ahb-larger-lr",
        paper=_AHB,
        statement="SGD with the adaptive heavy-ball momentum tolerates a larger learning rate than "
        "SGD with fixed momentum.",
        needs=(_AHB_NAMES,),
        run=_run_ahb,
        setup="0.5 x^T H x in 20-d, eigenvalues logspace(-2,0), random rotation and start per seed; "
        f"lr grid {list(_AHB_LRS)}; converged = loss <= 1e-3 x initial after 1000 steps; baseline "
        "torch.optim.SGD(momentum=0.9)",
        criterion="the largest converging lr of adaptive HB exceeds that of fixed momentum 0.9, "
        "in every seed",
    ),
    Claim(
        name="ahb-faster-than-fixed-momentum",
        paper=_AHB,
        statement="SGD with the adaptive heavy-ball momentum converges faster than SGD with a fixed "
        "momentum, at small and large learning rates.",
        needs=(_AHB_NAMES,),
        run=_run_ahb_faster,
        setup="the quadratic of ahb-larger-lr; lr in {0.5, 1, 1.9} (plain SGD's stable range is "
        "lr < 2); steps until loss <= 1e-6 x initial (cap 3000); baseline "
        "torch.optim.SGD(momentum=0.9)",
        criterion="adaptive HB needs fewer steps than fixed momentum 0.9 at every lr, in every seed",
    ),
    Claim(
        name="ahb-ratio-finds-lambda-min",
        paper=_AHB_RESTATED,
        statement="On a quadratic with lr <= 1/lambda_max, the ratio ||g_k - g_{k-1}|| / "
        "||x_k - x_{k-1}|| tends to the smallest eigenvalue lambda_min, and heavy ball with the "
        "momentum (1 - sqrt(lr * ratio))^2 contracts the error by about 1 - sqrt(lr * lambda_min) per "
        "step.",
        needs=(_AHB_NAMES,),
        run=_run_ahb_restated,
        setup="the quadratic of ahb-larger-lr (20-d, eigenvalues logspace(-2,0), so lambda_min 0.01 "
        "and 1/lambda_max = 1), start 1000 x its random start, lr in {0.25, 1}, defaults otherwise, "
        "until ||x_k - x*|| <= 1e-6 ||x_0 - x*|| (cap 3000 steps); the ratio is measured on the "
        "trajectory (median of its last 10 values), the contraction is the mean per-step factor of "
        "||x_k - x*|| over the second half of the run",
        criterion="in every seed and at both lr the ratio ends within 10% of lambda_min, and "
        "-log(contraction) is within 25% of -log(1 - sqrt(lr * lambda_min))",
    ),
    Claim(
        name="pnm-larger-noise",
        paper=_PNM,
        statement="Positive-negative momentum enlarges the stochastic-gradient noise at the same "
        "effective learning rate, and still converges.",
        needs=("pnm",),
        run=_run_pnm,
        setup="noisy quadratic (h = logspace(-2,0,20), c ~ N(0,I)) from 10*N(0,I); PNM betas (0.9, 1) "
        "lr 0.1*sqrt(5) vs torch SGD momentum 0.9 lr 0.01 (both: mean step 0.1*g); excess loss "
        "averaged over steps 2000-4000",
        criterion="PNM's steady-state loss >= 1.5x SGDM's and <= 0.1x the initial loss, every seed",
    ),
    Claim(
        name="adai-flat-minima",
        paper=_ADAI,
        statement="Adai favours flat minima as SGD does: its escape time from a minimum depends on the "
        "sharpness H as SGD's does (log tau ~ 1/H), where Adam's depends only on sqrt(H).",
        needs=("adai",),
        run=_run_adai,
        setup="one tensor of 2 x 400 coordinates in wells 0.5 h x^2, h = 1 (sharp) and 1/16 (flat), "
        "gradient noise N(0, h) (Hessian-shaped), from x = 0, 3000 steps; temperature T = h E[x^2] over "
        "steps 1001-3000, exponent k = log(T_sharp/T_flat)/log 16; Adai lr 0.05 (defaults otherwise), "
        "torch.optim.SGD lr 0.05, torch.optim.Adam lr 0.01",
        criterion="in every seed Adai's exponent is within 0.15 of SGD's, and Adam's is at least 0.25 "
        "below Adai's",
    ),
    Claim(
        name="ncg-larger-lr-faster",
        paper=_NCG,
        statement="SGD with the NCG-style adaptive momentum (no momentum hyperparameter) allows a "
        "larger learning rate and converges faster than SGD with a constant momentum.",
        needs=("ncg_sgd",),
        run=_run_ncg,
        setup="the quadratic of ahb-larger-lr (20-d, eigenvalues 1e-2..1); largest lr in "
        f"{list(_AHB_LRS)} reaching 1e-3 of the initial loss in 1000 steps, and steps to 1e-6 at lr in "
        "{0.5, 1, 1.9} (cap 3000); NCG momentum defaults (Fletcher-Reeves, restart) vs "
        "torch.optim.SGD(momentum=0.9)",
        criterion="in every seed NCG's largest converging lr is larger and it needs fewer steps at every "
        "lr",
    ),
]

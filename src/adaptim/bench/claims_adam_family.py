"""Claims about Adam's variants: what each changes in Adam's moments, denominator, step or decay.

Conventions (float64, every draw from a seeded ``torch.Generator``, ``torch.optim`` baselines, a
criterion fixed in the code before the result was looked at): :mod:`adaptim.bench.claims`; set-ups
and the last run's numbers: ``docs/claims.md``.

* ``diffgrad-f1-global-min``: diffGrad, Dubey et al., IEEE TNNLS 2020, arXiv:1909.11015.
* ``adabelief-abs-faster``: AdaBelief, Zhuang et al., NeurIPS 2020, arXiv:2010.07468.
* ``adamp-norm-growth``, ``sgdp-norm-growth``: AdamP/SGDP, Heo et al., ICLR 2021, arXiv:2006.08217.
* ``adamw-uniform-decay``: AdamW, Loshchilov & Hutter, ICLR 2019, arXiv:1711.05101.
* ``radam-bounded-variance``: RAdam, Liu et al., ICLR 2020, arXiv:1908.03265.
* ``gensignsgd-x4-no-divergence``: generalized signSGD, Crawshaw et al., NeurIPS 2022, arXiv:2208.11195.
* ``adan-larger-lr``: Adan, Xie et al., TPAMI 2024, arXiv:2208.06677.
* ``mars-beats-adamw``: MARS, Yuan et al., ICML 2025, arXiv:2411.10438.
* ``acprop-reddi-counterexample``: ACProp, Zhuang et al., NeurIPS 2021, arXiv:2110.05454;
  github.com/juntang-zhuang/ACProp-Optimizer.
* ``mada-best-member``: MADA, Ozkara et al., ICML 2024, arXiv:2401.08893; github.com/amazon-science/
  mada_optimizer_search.
* ``padam-between-sgd-and-adam``: Padam, Chen et al., IJCAI 2020, arXiv:1806.06763; github.com/
  uclaml/Padam (and github.com/diegogranziol/GadamX, ``optimizers/padam.py``).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from adaptim.bench.claims_common import (
    _ADAM_LRS,
    F64,
    Claim,
    ClaimResult,
    _adam_best,
    _all,
    _cls,
    _drive,
    _fmt,
    _gen,
    _make,
    _mlp_regression,
    _named,
    _seeded_module,
    _stats,
    _uniform,
)

__all__ = ["ADAM_FAMILY_CLAIMS"]


def _claim(name: str) -> Claim:
    """This module's claim called ``name`` (its run function labels its result with it)."""
    return _named(ADAM_FAMILY_CLAIMS, name)


# -- diffGrad: F1 ---------------------------------------------------------------------------------

_DIFFGRAD = "diffGrad (Dubey et al., IEEE TNNLS 2020, arXiv:1909.11015)"


def _f1_grad(x: torch.Tensor, t: int) -> torch.Tensor:
    # F1 = (x+0.3)^2 for x <= 0 (global min -0.3), (x-0.2)^2 + 0.05 for x > 0 (local min 0.2)
    return torch.where(x <= 0, 2 * x + 0.6, 2 * x - 0.4)


def _run_diffgrad_f1(seeds: int) -> ClaimResult:
    c = _claim("diffgrad-f1-global-min")
    kw = dict(lr=0.1, betas=(0.95, 0.999), eps=1e-8)
    xd, xa = [], []
    for s in range(seeds):
        x0 = -1.0 if s == 0 else float(_uniform(_gen(s, 1), -1.1, -0.9))
        start = torch.tensor([x0], dtype=F64)
        xd.append(_drive(lambda p: _make("diffgrad", p, **kw), start, _f1_grad, 300)[0].item())
        xa.append(_drive(lambda p: torch.optim.Adam(p, **kw), start, _f1_grad, 300)[0].item())
    holds = all(abs(x + 0.3) < 0.05 for x in xd) and all(abs(x - 0.2) < 0.05 for x in xa)
    nums = {**_stats("diffgrad_x", xd), **_stats("adam_x", xa)}
    detail = (
        f"final x after 300 steps: diffGrad {statistics.fmean(xd):+.4f}, Adam "
        f"{statistics.fmean(xa):+.4f} (mean of {seeds}); holds if every diffGrad run ends within "
        "0.05 of the global min -0.3 and every Adam run within 0.05 of the local min 0.2"
    )
    return c.result(holds, nums, detail)


# -- AdaBelief: |x| + |y| -------------------------------------------------------------------------

_ADABELIEF = "AdaBelief (Zhuang et al., NeurIPS 2020, arXiv:2010.07468)"


def _run_adabelief_abs(seeds: int) -> ClaimResult:
    c = _claim("adabelief-abs-faster")
    cap, tol = 6000, 0.05

    def grad(x: torch.Tensor, t: int) -> torch.Tensor:
        return torch.sign(x)

    def reached(x: torch.Tensor, t: int) -> bool:
        return bool(x.abs().max() < tol)

    nb, na = [], []
    for s in range(seeds):
        start = torch.tensor([-20.0, 20.0], dtype=F64)
        if s:
            start = start * (1 + _uniform(_gen(s, 2), -0.05, 0.05, 2))
        xb, tb = _drive(lambda p: _make("adabelief", p, lr=1e-2), start, grad, cap, reached)
        xa, ta = _drive(lambda p: torch.optim.Adam(p, lr=1e-2), start, grad, cap, reached)
        nb.append(tb if reached(xb, tb) else math.inf)
        na.append(ta if reached(xa, ta) else math.inf)
    holds = all(math.isfinite(b) and b <= a / 2 for b, a in zip(nb, na, strict=True))
    nums = {**_stats("adabelief_steps", nb), **_stats("adam_steps", na)}
    detail = (
        f"steps until max|coord| < {tol} (cap {cap}, inf = not reached): AdaBelief "
        f"{_fmt(statistics.fmean(nb))}, Adam {_fmt(statistics.fmean(na))} (mean); holds if in every "
        "seed AdaBelief gets there in at most half of Adam's steps"
    )
    return c.result(holds, nums, detail)


# -- AdamP / SGDP: norm growth of scale-invariant weights -----------------------------------------

_ADAMP = "AdamP/SGDP (Heo et al., ICLR 2021, arXiv:2006.08217)"


def _bn_net() -> nn.Module:
    return nn.Sequential(
        nn.Linear(20, 32, bias=False),
        nn.BatchNorm1d(32, affine=False),
        nn.ReLU(),
        nn.Linear(32, 2),
    )


def _norm_ratio(seed: int, make_opt: Callable[[Iterable[nn.Parameter]], Any], steps: int) -> float:
    """Train the BN net on a seeded teacher task; ||W1|| final / initial (W1 is scale-invariant)."""
    gen = _gen(seed, 3)
    x = torch.randn(512, 20, generator=gen, dtype=F64)
    teacher = torch.randn(20, 2, generator=gen, dtype=F64)
    y = (x @ teacher).argmax(1)
    net = _seeded_module(seed, _bn_net)
    opt = make_opt(net.parameters())
    w = net[0].weight
    n0 = w.detach().norm().item()
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(steps):
        idx = torch.randint(0, 512, (64,), generator=gen)
        opt.zero_grad(set_to_none=True)
        loss_fn(net(x[idx]), y[idx]).backward()
        opt.step()
    return w.detach().norm().item() / n0


def _norm_claim(name: str, ours: str, baseline: Callable, ours_kw: dict, seeds: int) -> ClaimResult:
    c = _claim(name)
    ro, rb = [], []
    for s in range(seeds):
        ro.append(_norm_ratio(s, lambda p: _make(ours, p, **ours_kw), 300))
        rb.append(_norm_ratio(s, baseline, 300))
    holds = all(o - 1 < (b - 1) / 3 for o, b in zip(ro, rb, strict=True))
    label = "AdamP" if ours == "adamp" else "SGDP"
    base = "Adam" if ours == "adamp" else "SGD(m=0.9)"
    nums = {
        **_stats(f"{ours}_norm_ratio", ro),
        **_stats(f"{base.split('(')[0].lower()}_norm_ratio", rb),
    }
    detail = (
        f"||W1|| final/initial after 300 steps: {label} {statistics.fmean(ro):.3f}, {base} "
        f"{statistics.fmean(rb):.3f} (mean); holds if in every seed {label}'s growth (ratio - 1) is "
        f"less than a third of {base}'s"
    )
    return c.result(holds, nums, detail)


def _run_adamp_norm(seeds: int) -> ClaimResult:
    return _norm_claim(
        "adamp-norm-growth", "adamp", lambda p: torch.optim.Adam(p, lr=1e-2), {"lr": 1e-2}, seeds
    )


def _run_sgdp_norm(seeds: int) -> ClaimResult:
    return _norm_claim(
        "sgdp-norm-growth",
        "sgdp",
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
        {"lr": 0.1, "momentum": 0.9},
        seeds,
    )


# -- AdamW: decoupled decay -----------------------------------------------------------------------

_ADAMW = "AdamW (Loshchilov & Hutter, ICLR 2019, arXiv:1711.05101)"


def _run_adamw(seeds: int) -> ClaimResult:
    c = _claim("adamw-uniform-decay")
    lr, wd, steps = 1e-2, 0.1, 100

    def zero(x: torch.Tensor, t: int) -> torch.Tensor:
        return torch.zeros_like(x)

    spread_w, spread_l, decay_w = [], [], []
    for s in range(seeds):
        p0 = torch.tensor([10.0, 0.1], dtype=F64)
        if s:
            p0 = p0 * 10 ** _uniform(_gen(s, 5), -0.2, 0.2, 2)
        pw = _drive(lambda p: _make("adamw", p, lr=lr, weight_decay=wd), p0, zero, steps)[0]
        pl = _drive(lambda p: torch.optim.Adam(p, lr=lr, weight_decay=wd), p0, zero, steps)[0]
        fw, fl = (pw / p0).abs(), (pl / p0).abs()
        spread_w.append(float(fw.max() / fw.min()) if fw.min() > 0 else math.inf)
        spread_l.append(float(fl.max() / fl.min()) if fl.min() > 0 else math.inf)
        decay_w.append(float(fw.mean()))
    holds = (
        all(sp - 1 < 1e-6 for sp in spread_w)
        and all(d < 0.99 for d in decay_w)
        and all(sp > 2 for sp in spread_l)
    )
    nums = {
        **_stats("adamw_factor", decay_w),
        **_stats("adamw_spread", spread_w),
        **_stats("adam_l2_spread", spread_l),
    }
    detail = (
        f"zero data loss, lr {lr}, wd {wd}, {steps} steps from p=[10, 0.1]: per-weight decay factor "
        f"|p_T/p_0| is {statistics.fmean(decay_w):.4f} for AdamW, max/min spread AdamW "
        f"{_fmt(max(spread_w))} vs Adam+L2 {_fmt(min(spread_l))}; holds if AdamW's factors agree "
        "within 1e-6, are < 0.99, and Adam+L2's differ by more than 2x, in every seed"
    )
    return c.result(holds, nums, detail)


# -- RAdam: variance of the adaptive learning rate ------------------------------------------------

_RADAM = "RAdam (Liu et al., ICLR 2020, arXiv:1908.03265)"


def _adaptive_lr_var(
    make_opt: Callable[[list[torch.Tensor]], Any], grads: torch.Tensor, b1: float
) -> tuple[list[float], list[float]]:
    """Per step: variance and mean over replicas of (step / (lr * m_hat)), lr = 1, i.e. the adaptive
    learning rate the optimizer applied to the bias-corrected momentum."""
    p = torch.zeros(grads.shape[1], dtype=F64, requires_grad=True)
    opt = make_opt([p])
    m = torch.zeros_like(p)
    var, mean = [], []
    for t in range(1, grads.shape[0] + 1):
        g = grads[t - 1]
        m = b1 * m + (1 - b1) * g
        m_hat = m / (1 - b1**t)
        with torch.no_grad():
            p.zero_()
        p.grad = g.clone()
        opt.step()
        psi = -p.detach() / m_hat
        var.append(float(psi.var()))
        mean.append(float(psi.mean()))
    return var, mean


def _rectifier(t: int, b2: float) -> float:
    rho_inf = 2 / (1 - b2) - 1
    rho = rho_inf - 2 * t * b2**t / (1 - b2**t)
    return math.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))


def _run_radam(seeds: int) -> ClaimResult:
    c = _claim("radam-bounded-variance")
    b1, b2, n, T = 0.9, 0.999, 20_000, 50
    kw = dict(lr=1.0, betas=(b1, b2), eps=1e-8, weight_decay=0.0)
    a1, a_end, r_max, ratio = [], [], [], []
    for s in range(seeds):
        grads = torch.randn(T, n, generator=_gen(s, 6), dtype=F64)
        va, ma = _adaptive_lr_var(lambda p: torch.optim.Adam(p, **kw), grads, b1)
        vr, mr = _adaptive_lr_var(lambda p: _make("radam", p, **kw), grads, b1)
        a1.append(va[0])
        a_end.append(va[-1])
        r_max.append(max(vr))
        ratio.append(mr[-1] / (_rectifier(T, b2) * ma[-1]))
    holds = (
        all(x >= 100 * y for x, y in zip(a1, a_end, strict=True))
        and all(r <= y for r, y in zip(r_max, a_end, strict=True))
        and all(0.5 <= q <= 2 for q in ratio)
    )
    nums = {
        **_stats("adam_var_t1", a1),
        **_stats(f"adam_var_t{T}", a_end),
        **_stats(f"radam_max_var_t1to{T}", r_max),
        **_stats(f"radam_over_rT_adam_t{T}", ratio),
    }
    detail = (
        f"Var over {n} replicas (g ~ N(0,1)) of the adaptive lr applied to m_hat: Adam "
        f"{statistics.fmean(a1):.3g} at t=1, {statistics.fmean(a_end):.3g} at t={T}; RAdam max over "
        f"t=1..{T} {statistics.fmean(r_max):.3g}; holds if Adam's t=1 variance is >= 100x its t={T} "
        f"one, RAdam's never exceeds Adam's t={T} one, and RAdam really steps (mean adaptive lr at "
        f"t={T} within 2x of r_t times Adam's)"
    )
    return c.result(holds, nums, detail)


# -- Generalized signSGD: x^4 from x0 = 20 --------------------------------------------------------

_GENSIGN = "Generalized SignSGD (Crawshaw et al., NeurIPS 2022, arXiv:2208.11195)"
_GENSIGN_NAMES = "gensignsgd|generalized_signsgd|generalized-signsgd|*gen*sign*sgd*"


def _run_gensignsgd(seeds: int) -> ClaimResult:
    c = _claim("gensignsgd-x4-no-divergence")
    lr, steps = 0.01, 3000

    def grad(x: torch.Tensor, t: int) -> torch.Tensor:
        return x**3

    def blown(x: torch.Tensor, t: int) -> bool:
        return not bool(torch.isfinite(x).all()) or bool(x.abs().max() > 1e6)

    x0s = [20.0] + [float(20 * (1 + _uniform(_gen(s, 7), -0.05, 0.05))) for s in range(1, seeds)]
    sgd_div, g_final, g_peak = [], [], []
    for x0 in x0s:
        start = torch.tensor([x0], dtype=F64)
        xs, ts = _drive(lambda p: torch.optim.SGD(p, lr=lr), start, grad, steps, blown)
        sgd_div.append(ts if blown(xs, ts) else math.inf)
        peak = [x0]

        def track(x: torch.Tensor, t: int, peak: list[float] = peak) -> bool:
            peak[0] = max(peak[0], float(x.abs().max()) if torch.isfinite(x).all() else math.inf)
            return blown(x, t)

        xg, _ = _drive(lambda p: _make(_GENSIGN_NAMES, p, lr=lr), start, grad, steps, track)
        g_final.append(float(xg.abs().max()) if torch.isfinite(xg).all() else math.inf)
        g_peak.append(peak[0] / x0)
    holds = (
        all(math.isfinite(t) for t in sgd_div)
        and all(p <= 2 for p in g_peak)
        and all(x**4 <= 1e-2 * x0**4 for x, x0 in zip(g_final, x0s, strict=True))
    )
    nums = {
        **_stats("sgd_diverged_at_step", sgd_div),
        **_stats("gensignsgd_final_abs_x", g_final),
        **_stats("gensignsgd_peak_over_x0", g_peak),
    }
    detail = (
        f"f = x^4/4 from x0=20, lr {lr}, {steps} steps: SGD blows up (|x| > 1e6) at step "
        f"{_fmt(max(sgd_div))}, generalized signSGD (default betas) ends at |x| = "
        f"{statistics.fmean(g_final):.3g}; holds if SGD blows up in every seed and signSGD never "
        "exceeds 2|x0| and ends with f(x) <= f(x0)/100"
    )
    return c.result(holds, nums, detail)


# -- Adan: prefers a larger learning rate ---------------------------------------------------------

_ADAN = "Adan (Xie et al., TPAMI 2024, arXiv:2208.06677)"
_ADAN_LRS = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)


def _run_adan(seeds: int) -> ClaimResult:
    c = _claim("adan-larger-lr")
    best_ratio, best_adan, best_adam, loss_adan, loss_adam = [], [], [], [], []
    for s in range(seeds):
        la = [_mlp_regression(s, lambda p, lr=lr: _make("adan", p, lr=lr)) for lr in _ADAN_LRS]
        lb = [_mlp_regression(s, lambda p, lr=lr: torch.optim.Adam(p, lr=lr)) for lr in _ADAN_LRS]
        ia, ib = la.index(min(la)), lb.index(min(lb))
        best_adan.append(_ADAN_LRS[ia])
        best_adam.append(_ADAN_LRS[ib])
        best_ratio.append(_ADAN_LRS[ia] / _ADAN_LRS[ib])
        loss_adan.append(la[ia])
        loss_adam.append(lb[ib])
    log_ratio = statistics.fmean(math.log10(r) for r in best_ratio)
    holds = log_ratio >= math.log10(5)
    nums = {
        **_stats("adan_best_lr", best_adan),
        **_stats("adam_best_lr", best_adam),
        "best_lr_ratio_geomean": 10**log_ratio,
        **_stats("adan_best_mse", loss_adan),
        **_stats("adam_best_mse", loss_adam),
    }
    detail = (
        f"20-64-64-1 tanh MLP regression, 400 steps, lr grid {list(_ADAN_LRS)}: best lr Adan "
        f"{_fmt(statistics.fmean(best_adan))} vs Adam {_fmt(statistics.fmean(best_adam))} (mean), "
        f"geometric-mean ratio {10**log_ratio:.3g}; holds if Adan's best lr is >= 5x Adam's "
        "(geometric mean over seeds)"
    )
    return c.result(holds, nums, detail)


# -- MARS: variance reduction beats AdamW at equal steps ------------------------------------------

_MARS = "MARS (Yuan, Liu, Wu, Zhou, Gu, ICML 2025, arXiv:2411.10438)"


def _run_mars(seeds: int) -> ClaimResult:
    c = _claim("mars-beats-adamw")
    lr = 3e-3
    lm, la = [], []
    for s in range(seeds):
        lm.append(_mlp_regression(s, lambda p: _make("mars", p, lr=lr), 600))
        la.append(
            _mlp_regression(
                s, lambda p: torch.optim.AdamW(p, lr=lr, betas=(0.95, 0.99), weight_decay=0.0), 600
            )
        )
    holds = all(m < a for m, a in zip(lm, la, strict=True))
    nums = {**_stats("mars_mse", lm), **_stats("adamw_mse", la)}
    detail = (
        f"20-64-64-1 tanh MLP regression, batches of 64, 600 steps, lr {lr}, betas (0.95, 0.99) for "
        f"both (MARS defaults otherwise, AdamW without decay): full-data MSE MARS "
        f"{statistics.fmean(lm):.3g} vs AdamW {statistics.fmean(la):.3g} (mean); holds if MARS is "
        "lower in every seed"
    )
    return c.result(holds, nums, detail)


# -- ACProp: converges on Reddi et al.'s counter-example ------------------------------------------

_ACPROP = "ACProp (Zhuang et al., NeurIPS 2021, arXiv:2110.05454)"
_REDDI_B2 = (0.01, 0.1)


def _reddi(make_opt: Callable, x0: float, c: float = 3.0, steps: int = 1500) -> float:
    """Reddi et al.'s online problem: f_t(x) = c x if t mod 3 == 1 else -x on [-1, 1] (optimum -1),
    lr 0.5 / sqrt(t), projection onto [-1, 1] after every step; the final x."""
    x = torch.tensor([x0], dtype=F64, requires_grad=True)
    opt = make_opt([x])
    big, small = torch.tensor([c], dtype=F64), torch.tensor([-1.0], dtype=F64)
    for t in range(1, steps + 1):
        for group in opt.param_groups:
            group["lr"] = 0.5 / math.sqrt(t)
        x.grad = (big if t % 3 == 1 else small).clone()
        opt.step()
        with torch.no_grad():
            x.clamp_(-1.0, 1.0)
    return float(x.detach())


def _run_acprop(seeds: int) -> ClaimResult:
    """ACProp (Zhuang et al., NeurIPS 2021, arXiv:2110.05454; reference github.com/juntang-zhuang/
    ACProp-Optimizer): the asynchronous (and centred) denominator weakens the convergence condition
    on Reddi et al.'s example, where synchronous Adam converges to the worst point."""
    c = _claim("acprop-reddi-counterexample")
    b1 = 0.1
    xc: dict[float, list[float]] = {b2: [] for b2 in _REDDI_B2}
    xa: dict[float, list[float]] = {b2: [] for b2 in _REDDI_B2}
    for s in range(seeds):
        x0 = 0.0 if s == 0 else float(_uniform(_gen(s, 22), -0.5, 0.5))
        for b2 in _REDDI_B2:
            xc[b2].append(
                _reddi(
                    lambda p, b2=b2: _make(
                        "acprop", p, lr=0.5, betas=(b1, b2), eps=1e-8, rectify=False
                    ),
                    x0,
                )
            )
            xa[b2].append(
                _reddi(lambda p, b2=b2: torch.optim.Adam(p, lr=0.5, betas=(b1, b2), eps=1e-8), x0)
            )
    holds = all(v <= -0.9 for b2 in _REDDI_B2 for v in xc[b2]) and all(
        v >= 0.9 for b2 in _REDDI_B2 for v in xa[b2]
    )
    nums: dict[str, float] = {}
    for b2 in _REDDI_B2:
        nums.update(_stats(f"acprop_x_b2_{b2:g}", xc[b2]))
        nums.update(_stats(f"adam_x_b2_{b2:g}", xa[b2]))
    shown = ", ".join(
        f"b2 {b2:g}: ACProp {statistics.fmean(xc[b2]):+.3f}, Adam {statistics.fmean(xa[b2]):+.3f}"
        for b2 in _REDDI_B2
    )
    detail = (
        f"f_t = 3x (t mod 3 = 1) else -x on [-1, 1], optimum -1, lr 0.5/sqrt(t), 1500 steps, b1 {b1}, "
        f"final x (mean): {shown}; holds if in every seed and b2 ACProp ends <= -0.9 and Adam >= +0.9"
    )
    return c.result(holds, nums, detail)


# -- MADA: at least as good as the best member it interpolates ------------------------------------

_MADA = "MADA (Ozkara et al., ICML 2024, arXiv:2401.08893)"
_FROZEN = (0.0, 0.0, 0.0, 0.0, 0.0)


def _run_mada(seeds: int) -> ClaimResult:
    """MADA (Ozkara et al., ICML 2024, arXiv:2401.08893; reference github.com/amazon-science/
    mada_optimizer_search): learning the interpolation coefficients by hyper-gradient descent does at
    least as well as the best fixed optimizer it interpolates."""
    c = _claim("mada-best-member")
    lr = 3e-3
    members: dict[str, Callable] = {
        "adam": lambda p: torch.optim.Adam(p, lr=lr, betas=(0.9, 0.99), eps=1e-6),
        "avgrad": lambda p: _make("avgrad", p, lr=lr),
        "yogi_c0": lambda p: _make("mada", p, lr=lr, c=0.0, hyper_lr=_FROZEN),
        "adan_b3_0.9": lambda p: _make("mada", p, lr=lr, beta3=0.9, hyper_lr=_FROZEN),
    }
    md: list[float] = []
    mem: dict[str, list[float]] = {k: [] for k in members}
    best = []
    for s in range(seeds):
        md.append(_mlp_regression(s, lambda p: _make("mada", p, lr=lr)))
        for k, make in members.items():
            mem[k].append(_mlp_regression(s, make))
        best.append(min(mem[k][-1] for k in members))
    holds = _all(zip(md, best, strict=True), lambda m, b: m <= b)
    nums = {**_stats("mada_mse", md), **_stats("best_member_mse", best)}
    for k in members:
        nums.update(_stats(f"{k}_mse", mem[k]))
    shown = ", ".join(f"{k} {statistics.fmean(v):.3g}" for k, v in mem.items())
    detail = (
        f"20-64-64-1 tanh MLP regression, 400 steps, lr {lr}: final MSE MADA (learned from Adam's "
        f"corner) {statistics.fmean(md):.3g}; fixed members {shown} (mean); holds if MADA's is no higher "
        "than the best member's in every seed"
    )
    return c.result(holds, nums, detail)


# -- Padam: between SGD with momentum and Adam, as fast as Adam -----------------------------------

_PADAM = "Padam (Chen, Zhou, Tang, Yang, Cao, Gu, IJCAI 2020, arXiv:1806.06763)"
_PADAM_LRS = (0.1, 0.3, 1.0, 3.0)


def _scale_exponent(make_opt: Callable, seed: int) -> float:
    """k in |step| ~ s^k: the displacement after 20 steps with gradients s * xi_t (xi ~ N(0, I), 1000
    coordinates) for s = 1 and s = 1e-2. SGD: 1, Adam: 0, Padam with partial p: 1 - 2p."""
    xi = torch.randn(20, 1000, generator=_gen(seed, 26), dtype=F64)
    moved = []
    for scale in (1.0, 1e-2):
        x = torch.zeros(1000, dtype=F64, requires_grad=True)
        opt = make_opt([x])
        for g in xi:
            x.grad = scale * g
            opt.step()
        moved.append(float(x.detach().norm()))
    if moved[1] <= 0 or not all(math.isfinite(m) for m in moved):
        return math.nan
    return math.log(moved[0] / moved[1]) / math.log(100.0)


def _run_padam(seeds: int) -> ClaimResult:
    """Padam (Chen et al., IJCAI 2020, arXiv:1806.06763; reference github.com/uclaml/Padam, used by
    GadamX, github.com/diegogranziol/GadamX): a partially adaptive step (v^p, 0 < p < 1/2) sits between
    SGD with momentum (p = 0) and Adam/AMSGrad (p = 1/2) and trains as fast as Adam."""
    c = _claim("padam-between-sgd-and-adam")
    partial = float(
        _cls("padam")([torch.zeros(1, requires_grad=True)]).defaults.get("partial", 0.125)
    )
    kp, ks, ka, lp, la = [], [], [], [], []
    for s in range(seeds):
        kp.append(_scale_exponent(lambda p: _make("padam", p), s))
        ks.append(_scale_exponent(lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), s))
        ka.append(_scale_exponent(lambda p: torch.optim.Adam(p, lr=0.1), s))
        lp.append(
            min(_mlp_regression(s, lambda p, lr=lr: _make("padam", p, lr=lr)) for lr in _PADAM_LRS)
        )
        la.append(_adam_best(s))
    between = all(
        a < p < g and abs(p - (1 - 2 * partial)) <= 0.05 for p, g, a in zip(kp, ks, ka, strict=True)
    )
    fast = _all(zip(lp, la, strict=True), lambda p, a: p <= 2 * a)
    nums = {
        **_stats("padam_exponent", kp),
        **_stats("sgdm_exponent", ks),
        **_stats("adam_exponent", ka),
        **_stats("padam_best_mse", lp),
        **_stats("adam_best_mse", la),
    }
    detail = (
        f"step ~ (gradient scale)^k: Padam (partial {partial:g}) {statistics.fmean(kp):.3f}, SGD momentum "
        f"{statistics.fmean(ks):.3f}, Adam {statistics.fmean(ka):.3f}; MLP regression of adan-larger-lr, "
        f"best final MSE over lr {list(_PADAM_LRS)} (Padam) and {list(_ADAM_LRS)} (Adam): "
        f"{statistics.fmean(lp):.3g} vs {statistics.fmean(la):.3g} (mean); holds if in every seed Padam's "
        "k lies strictly between Adam's and SGD's and within 0.05 of 1 - 2 partial, and its best MSE is "
        "within 2x of Adam's"
    )
    return c.result(between and fast, nums, detail)


# -- the list -------------------------------------------------------------------------------------

ADAM_FAMILY_CLAIMS: list[Claim] = [
    Claim(
        name="diffgrad-f1-global-min",
        paper=_DIFFGRAD,
        statement="On the 1-D function F1 diffGrad reaches the global minimum (x=-0.3) where Adam "
        "stops at the local one (x=0.2).",
        needs=("diffgrad",),
        run=_run_diffgrad_f1,
        setup="F1'(x) = 2x+0.6 (x<=0), 2x-0.4 (x>0); x0=-1 (seeds>0: U(-1.1,-0.9)); lr 0.1, "
        "betas (0.95, 0.999), eps 1e-8, 300 steps; baseline torch.optim.Adam",
        criterion="every diffGrad run ends within 0.05 of -0.3 and every Adam run within 0.05 of 0.2",
    ),
    Claim(
        name="adabelief-abs-faster",
        paper=_ADABELIEF,
        statement="In a region of large gradient and small curvature (f = |x|+|y|) AdaBelief takes "
        "larger steps than Adam and reaches the optimum faster.",
        needs=("adabelief",),
        run=_run_adabelief_abs,
        setup="f(x,y) = |x|+|y| from (-20, 20) (seeds>0: +-5%); lr 1e-2, defaults otherwise; steps "
        "until max|coord| < 0.05 (cap 6000); baseline torch.optim.Adam",
        criterion="in every seed AdaBelief reaches the target in at most half of Adam's steps",
    ),
    Claim(
        name="adamp-norm-growth",
        paper=_ADAMP,
        statement="AdamP keeps the norm of scale-invariant weights from growing, where Adam's "
        "momentum inflates it.",
        needs=("adamp",),
        run=_run_adamp_norm,
        setup="Linear(20,32,no bias) -> BatchNorm1d(affine=False) -> ReLU -> Linear(32,2) on a "
        "seeded linear-teacher classification task (512 points, batches of 64), 300 steps, lr 1e-2; "
        "baseline torch.optim.Adam",
        criterion="in every seed AdamP's growth ||W1||_T/||W1||_0 - 1 is below a third of Adam's",
    ),
    Claim(
        name="sgdp-norm-growth",
        paper=_ADAMP,
        statement="SGDP keeps the norm of scale-invariant weights from growing, where SGD with "
        "momentum inflates it.",
        needs=("sgdp",),
        run=_run_sgdp_norm,
        setup="as adamp-norm-growth with SGD: lr 0.1, momentum 0.9; baseline torch.optim.SGD",
        criterion="in every seed SGDP's growth ||W1||_T/||W1||_0 - 1 is below a third of SGD's",
    ),
    Claim(
        name="adamw-uniform-decay",
        paper=_ADAMW,
        statement="AdamW decays all weights by the same factor, where L2 regularization inside "
        "Adam is rescaled per weight (large weights barely decay, small ones are wiped out).",
        needs=("adamw",),
        run=_run_adamw,
        setup="zero data loss, p0 = [10, 0.1] (seeds>0: each x 10^U(-0.2,0.2)); lr 1e-2, wd 0.1, "
        "100 steps; adaptim AdamW vs torch.optim.Adam(weight_decay=0.1)",
        criterion="AdamW's factors |p_T/p_0| agree within 1e-6 and are < 0.99; Adam+L2's differ by "
        "more than 2x (every seed)",
    ),
    Claim(
        name="radam-bounded-variance",
        paper=_RADAM,
        statement="Adam's adaptive learning rate has a huge variance in the first steps; RAdam's "
        "rectified one stays bounded.",
        needs=("radam",),
        run=_run_radam,
        setup="20,000 independent scalar replicas, g ~ N(0,1) i.i.d., betas (0.9, 0.999), lr 1, "
        "50 steps; adaptive lr = step / (lr * m_hat); baseline torch.optim.Adam",
        criterion="Adam's variance at t=1 >= 100x its variance at t=50; RAdam's maximum over t<=50 "
        "<= Adam's t=50 variance; RAdam's mean adaptive lr at t=50 within 2x of r_50 x Adam's",
    ),
    Claim(
        name="gensignsgd-x4-no-divergence",
        paper=_GENSIGN,
        statement="Generalized signSGD survives the unbounded smoothness of x^4 from x0=20 (no "
        "clipping needed) where SGD with the same lr diverges.",
        needs=(_GENSIGN_NAMES,),
        run=_run_gensignsgd,
        setup="f = x^4/4, x0 = 20 (seeds>0: +-5%), lr 0.01, 3000 steps, default betas (0.9, "
        "0.999); baseline torch.optim.SGD",
        criterion="SGD exceeds |x| = 1e6 in every seed; signSGD never exceeds 2|x0| and ends with "
        "f(x_T) <= f(x0)/100",
    ),
    Claim(
        name="adan-larger-lr",
        paper=_ADAN,
        statement="Adan works best with a learning rate 5-10x larger than Adam's (README tip).",
        needs=("adan",),
        run=_run_adan,
        setup="20-64-64-1 tanh MLP regressing a random tanh teacher, 1024 points, batches of 64, 400 "
        "steps; lr grid {1e-3, 3e-3, 1e-2, 3e-2, 1e-1}; Adan defaults vs torch.optim.Adam",
        criterion="the geometric mean over seeds of best_lr(Adan)/best_lr(Adam) is >= 5",
    ),
    Claim(
        name="mars-beats-adamw",
        paper=_MARS,
        statement="MARS's variance-reduced gradient estimate reaches a lower training loss than AdamW "
        "at an equal number of steps.",
        needs=("mars",),
        run=_run_mars,
        setup="the MLP regression of adan-larger-lr, 600 steps, lr 3e-3; MARS defaults vs "
        "torch.optim.AdamW(betas=(0.95, 0.99), weight_decay=0)",
        criterion="MARS's final full-data MSE is lower in every seed",
    ),
    Claim(
        name="acprop-reddi-counterexample",
        paper=_ACPROP,
        statement="With its asynchronous, centred denominator ACProp converges on Reddi et al.'s online "
        "counter-example at settings where synchronous Adam converges to the worst point.",
        needs=("acprop",),
        run=_run_acprop,
        setup="f_t(x) = 3x if t mod 3 == 1 else -x on [-1, 1] (optimum -1), projection after each step, "
        "x0 = 0 (seeds>0: U(-0.5, 0.5)), lr 0.5/sqrt(t), 1500 steps, betas (0.1, b2) with b2 in {0.01, "
        "0.1}, eps 1e-8; ACProp with rectify=False (the paper's experiments) vs torch.optim.Adam",
        criterion="in every seed and for both b2, ACProp ends at x <= -0.9 and Adam at x >= +0.9",
    ),
    Claim(
        name="mada-best-member",
        paper=_MADA,
        statement="MADA, learning the coefficients of its interpolation by hyper-gradient descent, "
        "reaches a loss at least as low as the best fixed optimizer it interpolates.",
        needs=("mada", "avgrad"),
        run=_run_mada,
        setup="the MLP regression of adan-larger-lr, 400 steps, lr 3e-3; MADA with its defaults (starts "
        "at Adam's corner, learns all five coefficients) vs the fixed members torch.optim.Adam(betas "
        "(0.9, 0.99), eps 1e-6), AVGrad, and MADA frozen at c = 0 (Yogi-like) and at beta3 = 0.9 "
        "(Adan-like)",
        criterion="MADA's final full-data MSE is no higher than the best member's, every seed",
    ),
    Claim(
        name="padam-between-sgd-and-adam",
        paper=_PADAM,
        statement="Padam's partially adaptive step (partial p in (0, 1/2)) lies between SGD with "
        "momentum and Adam, and it trains as fast as Adam.",
        needs=("padam",),
        run=_run_padam,
        setup="(a) displacement after 20 steps with gradients s*N(0, I) (1000 coordinates) for s = 1 and "
        "1e-2, exponent k = log(ratio)/log(100); Padam defaults, torch SGD(momentum 0.9), torch Adam; "
        "(b) the MLP regression of adan-larger-lr, 400 steps, best final MSE over lr "
        f"{list(_PADAM_LRS)} (Padam defaults otherwise) and {list(_ADAM_LRS)} (torch.optim.Adam)",
        criterion="in every seed Padam's k lies strictly between Adam's and SGD's and within 0.05 of "
        "1 - 2p, and its best MSE is within 2x of Adam's",
    ),
]

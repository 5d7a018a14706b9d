"""The first sixteen claims of ``adaptim bench --suite claims`` (conventions: :mod:`adaptim.bench.claims`)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from adaptim.bench.claims_common import (
    F64,
    Claim,
    ClaimResult,
    _cls,
    _drive,
    _find,
    _fmt,
    _gen,
    _kwarg,
    _make,
    _noisy_quadratic,
    _seeded_module,
    _stats,
    _uniform,
)

__all__ = ["FIRST_CLAIMS"]


def _claim(name: str) -> Claim:
    """This module's claim called ``name`` (its run function labels its result with it)."""
    for c in FIRST_CLAIMS:
        if c.name == name:
            return c
    raise KeyError(name)


# -- 1. diffGrad: F1 -----------------------------------------------------------------------------

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


# -- 2. AdaBelief: |x| + |y| -------------------------------------------------------------------

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


# -- 3. AdamP / SGDP: norm growth of scale-invariant weights -------------------------------------

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


# -- 4. Lookahead: noisy quadratic ----------------------------------------------------------------

_LOOKAHEAD = "Lookahead (Zhang, Lucas, Hinton, Ba, NeurIPS 2019, arXiv:1907.08610)"


def _lookahead(inner: torch.optim.Optimizer, k: int, alpha: float) -> Any:
    info = _find("lookahead")
    if info is None:
        raise LookupError("needs lookahead, not registered")
    cls = info.cls
    return cls(
        inner, **{_kwarg(cls, "k", "la_steps", "steps"): k, _kwarg(cls, "alpha", "la_alpha"): alpha}
    )


def _nqm_excess(
    seed: int,
    make_opt: Callable[[list[torch.Tensor]], Any],
    steps: int,
    burn_in: int,
    every: int,
    x0_scale: float = 1.0,
    salt: int = 4,
) -> float:
    """Noisy quadratic 0.5 * sum h_i (x_i - c_i)^2, c ~ N(0, I) fresh each step; the mean excess
    expected loss 0.5 * sum h_i x_i^2 at steps ``burn_in + every, ...`` (x* = 0)."""
    h = _noisy_quadratic()
    gen = _gen(seed, salt)
    x0 = x0_scale * torch.randn(h.numel(), generator=gen, dtype=F64)
    noise = torch.randn(steps, h.numel(), generator=gen, dtype=F64)
    x = x0.clone().requires_grad_(True)
    opt = make_opt([x])
    losses = []
    for t in range(1, steps + 1):
        x.grad = h * (x.detach() - noise[t - 1])
        opt.step()
        if t > burn_in and t % every == 0:
            losses.append(0.5 * float((h * x.detach() ** 2).sum()))
    return statistics.fmean(losses)


def _run_lookahead(seeds: int) -> ClaimResult:
    c = _claim("lookahead-noisy-quadratic")
    k, alpha, lr = 5, 0.5, 0.5
    la, sg = [], []
    for s in range(seeds):
        sg.append(_nqm_excess(s, lambda p: torch.optim.SGD(p, lr=lr, momentum=0.9), 2000, 1000, k))
        la.append(
            _nqm_excess(
                s,
                lambda p: _lookahead(torch.optim.SGD(p, lr=lr, momentum=0.9), k, alpha),
                2000,
                1000,
                k,
            )
        )
    holds = all(a < b for a, b in zip(la, sg, strict=True)) and statistics.fmean(
        la
    ) <= 0.8 * statistics.fmean(sg)
    nums = {**_stats("lookahead_loss", la), **_stats("sgdm_loss", sg)}
    detail = (
        f"steady-state excess loss (steps 1000-2000, on the slow weights): Lookahead(SGDM, k={k}, "
        f"alpha={alpha}) {statistics.fmean(la):.3f} vs SGDM {statistics.fmean(sg):.3f} (lr {lr}, "
        "momentum 0.9); holds if lower in every seed and at least 20% lower on average"
    )
    return c.result(holds, nums, detail)


# -- 5. AdamW: decoupled decay ------------------------------------------------------------------

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


# -- 6. RAdam: variance of the adaptive learning rate ----------------------------------------

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


# -- 7. Generalized signSGD: x^4 from x0 = 20 ------------------------------------------------------

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


# -- 8. Adaptive heavy-ball momentum: larger lr ---------------------------------------------------

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


# -- Gadam: iterate averaging -------------------------------------------------------------------

_GADAM = "Gadam, iterate averaging (Granziol et al., arXiv:2003.01247)"


def _run_gadam(seeds: int) -> ClaimResult:
    c = _claim("gadam-iterate-averaging")
    steps, start, lr = 6000, 3000, 0.05
    cls = _cls("iterate_averaging")
    h = _noisy_quadratic()
    last, avg = [], []
    for s in range(seeds):
        gen = _gen(s, 9)
        x = torch.randn(h.numel(), generator=gen, dtype=F64).requires_grad_(True)
        noise = torch.randn(steps, h.numel(), generator=gen, dtype=F64)
        opt = cls(_make("adamw", [x], lr=lr), start=start, gap=1)
        for t in range(steps):
            x.grad = h * (x.detach() - noise[t])
            opt.step()
        last.append(0.5 * float((h * x.detach() ** 2).sum()))
        with opt.averaged():
            avg.append(0.5 * float((h * x.detach() ** 2).sum()))
    holds = all(a <= 0.1 * b for a, b in zip(avg, last, strict=True))
    nums = {**_stats("averaged_loss", avg), **_stats("last_iterate_loss", last)}
    detail = (
        f"noisy quadratic, AdamW lr {lr} constant, {steps} steps, average of iterates {start + 1}.."
        f"{steps}: excess loss averaged {statistics.fmean(avg):.3g} vs last iterate "
        f"{statistics.fmean(last):.3g} (mean); holds if the average is at least 10x lower in every seed"
    )
    return c.result(holds, nums, detail)


# -- Adafactor: sublinear memory -----------------------------------------------------------------

_ADAFACTOR = "Adafactor (Shazeer & Stern, ICML 2018, arXiv:1804.04235)"


def _state_floats(opt: torch.optim.Optimizer, p: torch.Tensor) -> int:
    return sum(
        v.numel() for v in opt.state[p].values() if isinstance(v, torch.Tensor) and v.dim() > 0
    )


def _lsq_run(
    seed: int, make_opt: Callable, steps: int, zero_init: bool = False
) -> tuple[float, float, int]:
    """Multi-output least squares Y = X W^T (X: 1024 x 128, W: 64 x 128, noise 0.1), batches of 64,
    from nn.Linear's default init U(-1/sqrt(128), 1/sqrt(128)) (or from 0); (initial, final)
    full-data MSE and the state floats the optimizer keeps for W."""
    gen = _gen(seed, 10)
    x = torch.randn(1024, 128, generator=gen, dtype=F64)
    w_true = torch.randn(64, 128, generator=gen, dtype=F64) / math.sqrt(128)
    y = x @ w_true.T + 0.1 * torch.randn(1024, 64, generator=gen, dtype=F64)
    w = torch.zeros(64, 128, dtype=F64)
    if not zero_init:
        w = _uniform(gen, -1 / math.sqrt(128), 1 / math.sqrt(128), 64 * 128).view(64, 128)
    w.requires_grad_(True)
    opt = make_opt([w])

    def mse() -> float:
        return float(((x @ w.detach().T - y) ** 2).mean())

    f0 = mse()
    for _ in range(steps):
        idx = torch.randint(0, 1024, (64,), generator=gen)
        w.grad = 2 * (x[idx] @ w.detach().T - y[idx]).T @ x[idx] / (64 * 64)
        opt.step()
    return f0, mse(), _state_floats(opt, w)


def _run_adafactor(seeds: int) -> ClaimResult:
    c = _claim("adafactor-sublinear-memory")
    steps = 500
    mem_f, mem_a, loss_f, loss_a, loss_z = [], [], [], [], []
    for s in range(seeds):
        _, lf, mf = _lsq_run(s, lambda p: _make("adafactor", p), steps)
        _, la, ma = _lsq_run(s, lambda p: torch.optim.Adam(p), steps)
        # not part of the verdict: from W = 0 the relative step (scaled by RMS(W), floored at eps2)
        # is tiny, a known trap of Adafactor's defaults
        loss_z.append(_lsq_run(s, lambda p: _make("adafactor", p), steps, zero_init=True)[1])
        mem_f.append(mf)
        mem_a.append(ma)
        loss_f.append(lf)
        loss_a.append(la)
    holds = all(m <= 64 + 128 + 2 for m in mem_f) and all(
        f <= 2 * a for f, a in zip(loss_f, loss_a, strict=True)
    )
    nums = {
        "adafactor_state_floats": float(max(mem_f)),
        "adam_state_floats": float(max(mem_a)),
        **_stats("adafactor_mse", loss_f),
        **_stats("adam_mse", loss_a),
        **_stats("adafactor_mse_from_zero_init", loss_z),
    }
    detail = (
        f"64x128 least squares, {steps} steps, both with their defaults: state floats for W "
        f"Adafactor {max(mem_f)} vs Adam {max(mem_a)}; full-data MSE {statistics.fmean(loss_f):.3g} vs "
        f"{statistics.fmean(loss_a):.3g} (mean); holds if Adafactor keeps <= 64+128(+2) floats and "
        "ends within 2x of Adam's MSE in every seed (not judged: from W=0 Adafactor reaches "
        f"{statistics.fmean(loss_z):.3g})"
    )
    return c.result(holds, nums, detail)


# -- Adan: prefers a larger learning rate --------------------------------------------------------

_ADAN = "Adan (Xie et al., TPAMI 2024, arXiv:2208.06677)"
_ADAN_LRS = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)


def _mlp_regression(seed: int, make_opt: Callable, steps: int = 400) -> float:
    """20-64-64-1 tanh MLP regressing a random tanh teacher (1024 points), batches of 64; the final
    full-data MSE (inf if it diverged)."""
    gen = _gen(seed, 11)
    x = torch.randn(1024, 20, generator=gen, dtype=F64)
    w1 = torch.randn(20, 32, generator=gen, dtype=F64) / math.sqrt(20)
    w2 = torch.randn(32, 1, generator=gen, dtype=F64) / math.sqrt(32)
    y = torch.tanh(x @ w1) @ w2
    net = _seeded_module(
        seed,
        lambda: nn.Sequential(
            nn.Linear(20, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1)
        ),
    )
    opt = make_opt(net.parameters())
    for _ in range(steps):
        idx = torch.randint(0, 1024, (64,), generator=gen)
        opt.zero_grad(set_to_none=True)
        ((net(x[idx]) - y[idx]) ** 2).mean().backward()
        opt.step()
    with torch.no_grad():
        f = float(((net(x) - y) ** 2).mean())
    return f if math.isfinite(f) else math.inf


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


# -- PNM: enlarged noise at the same effective learning rate ---------------------------------------

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


# -- MARS: variance reduction beats AdamW at equal steps -----------------------------------------

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


# -- KOALA: no learning-rate tuning -------------------------------------------------------------

_KOALA = "KOALA (Davtyan et al., AAAI 2022, arXiv:2107.03331)"
_KOALA_V = "koala_v|koala-v|koalav|koala"
_KOALA_M = "koala_m|koala-m|koalam"


def _koala_lsq(seed: int, make_opt: Callable, steps: int = 300) -> tuple[float, float, float]:
    """Least squares y = X w + 0.1 noise (X: 256 x 10), batches of 32, from w = 0, every step through
    ``opt.step(closure)`` (the closure returns the batch's per-sample losses); (initial, final,
    optimal) full-data MSE."""
    gen = _gen(seed, 13)
    x = torch.randn(256, 10, generator=gen, dtype=F64)
    y = x @ torch.randn(10, generator=gen, dtype=F64) + 0.1 * torch.randn(
        256, generator=gen, dtype=F64
    )
    w_opt = torch.linalg.lstsq(x, y.unsqueeze(1)).solution.squeeze(1)
    w = torch.zeros(10, dtype=F64, requires_grad=True)
    opt = make_opt([w])

    def mse(v: torch.Tensor) -> float:
        return float(((x @ v - y) ** 2).mean())

    f0 = mse(w.detach())
    for _ in range(steps):
        idx = torch.randint(0, 256, (32,), generator=gen)

        def closure(idx: torch.Tensor = idx) -> torch.Tensor:
            # as the authors' training loop: backward on the mean, and the per-sample losses go
            # to the optimizer (KOALA takes loss_mean and loss_var = mean of their squares)
            opt.zero_grad(set_to_none=True)
            per_sample = (x[idx] @ w - y[idx]) ** 2
            per_sample.mean().backward()
            return per_sample.detach()

        opt.step(closure)
    final = mse(w.detach())
    return f0, final if math.isfinite(final) else math.inf, mse(w_opt)


def _run_koala(seeds: int) -> ClaimResult:
    c = _claim("koala-no-lr-tuning")
    kv, km, ad, best, init = [], [], [], [], []
    for s in range(seeds):
        f0, fv, fopt = _koala_lsq(s, lambda p: _make(_KOALA_V, p))
        _, fm, _ = _koala_lsq(s, lambda p: _make(_KOALA_M, p))
        _, fa, _ = _koala_lsq(s, lambda p: torch.optim.Adam(p))
        kv.append(fv)
        km.append(fm)
        ad.append(fa)
        best.append(fopt)
        init.append(f0)
    holds = all(v <= 1.5 * b and m <= 1.5 * b for v, m, b in zip(kv, km, best, strict=True))
    nums = {
        **_stats("koala_v_mse", kv),
        **_stats("koala_m_mse", km),
        **_stats("optimal_mse", best),
        **_stats("adam_default_lr_mse", ad),
        **_stats("initial_mse", init),
    }
    detail = (
        f"least squares 256x10, batches of 32, 300 steps, all defaults (lr 1): full-data MSE KOALA-V "
        f"{statistics.fmean(kv):.3g}, KOALA-M {statistics.fmean(km):.3g}, optimum "
        f"{statistics.fmean(best):.3g} (Adam at its default lr 1e-3: {statistics.fmean(ad):.3g}, not "
        "judged); holds if both KOALA variants end within 1.5x of the optimum in every seed"
    )
    return c.result(holds, nums, detail)


# -- registry of claims ------------------------------------------------------------------------

FIRST_CLAIMS: list[Claim] = [
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
        name="lookahead-noisy-quadratic",
        paper=_LOOKAHEAD,
        statement="Lookahead lowers the steady-state loss of SGD with momentum on a noisy quadratic "
        "(it reduces the variance of the iterates).",
        needs=("lookahead",),
        run=_run_lookahead,
        setup="0.5*sum h_i (x_i - c_i)^2, h = logspace(-2,0,20), c ~ N(0,I) fresh every step; "
        "SGD lr 0.5 momentum 0.9 alone and inside Lookahead(k=5, alpha=0.5); excess loss "
        "0.5*sum h_i x_i^2 averaged over steps 1000-2000 at sync points",
        criterion="Lookahead's loss is lower in every seed and at least 20% lower on average",
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
        name="gadam-iterate-averaging",
        paper=_GADAM,
        statement="Averaging the iterates of an adaptive optimizer (AdamW) run at a constant lr gives "
        "a much lower loss than its last iterate.",
        needs=("iterate_averaging", "adamw"),
        run=_run_gadam,
        setup="noisy quadratic of lookahead-noisy-quadratic, start ~ N(0,I); adaptim AdamW lr 0.05 "
        "(default decay) for 6000 steps inside IterateAveraging(start=3000, gap=1)",
        criterion="the averaged iterate's excess loss is <= 0.1 x the last iterate's, every seed",
    ),
    Claim(
        name="adafactor-sublinear-memory",
        paper=_ADAFACTOR,
        statement="Adafactor's factored second moment needs only n+m numbers for an n x m weight and "
        "still trains about as well as Adam.",
        needs=("adafactor",),
        run=_run_adafactor,
        setup="least squares Y = X W^T + noise (X 1024x128, W 64x128, nn.Linear-style init), "
        "batches of 64, 500 "
        "steps; Adafactor with its defaults (relative step) vs torch.optim.Adam with its defaults "
        "(lr 1e-3)",
        criterion="Adafactor keeps <= 64+128(+2) state floats for W and ends within 2x of Adam's "
        "full-data MSE, every seed",
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
        name="koala-no-lr-tuning",
        paper=_KOALA,
        statement="KOALA (Kalman filtering of the loss) trains well with its default settings, "
        "without tuning a learning rate.",
        needs=(_KOALA_V, _KOALA_M),
        run=_run_koala,
        setup="least squares y = X w + 0.1 noise (X 256x10 ~ N(0,1), w ~ N(0,I)) from w = 0, batches "
        "of 32, 300 steps through step(closure); KOALA-V and KOALA-M with their defaults; optimum by "
        "lstsq",
        criterion="both KOALA variants end within 1.5x of the optimal full-data MSE, every seed",
    ),
]

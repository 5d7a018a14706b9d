"""Claims about wrappers and tools around an optimizer: Lookahead's slow weights, iterate averaging,
GradInit's initialisation, AdAdaGrad's growing batch.

Conventions (float64, every draw from a seeded ``torch.Generator``, ``torch.optim`` baselines, a
criterion fixed in the code before the result was looked at): :mod:`adaptim.bench.claims`; set-ups
and the last run's numbers: ``docs/claims.md``.

* ``lookahead-noisy-quadratic``: Lookahead, Zhang, Lucas, Hinton & Ba, NeurIPS 2019, arXiv:1907.08610.
* ``gadam-iterate-averaging``: Gadam, Granziol et al., arXiv:2003.01247.
* ``gradinit-first-step``: GradInit, Zhu et al., NeurIPS 2021, arXiv:2102.08098; github.com/zhuchen03/
  gradinit.
* ``adadagrad-batch-growth``: AdAdaGrad, Lau, Liu & Kolar, arXiv:2402.11215; github.com/timlautk/
  AdAdaGrad.
"""

from __future__ import annotations

import copy
import importlib
import math
import statistics
from typing import Any

import torch
from torch import nn

from adaptim.bench.claims_common import (
    F64,
    Claim,
    ClaimResult,
    ToolClaim,
    _all,
    _cls,
    _find,
    _fmt,
    _gen,
    _kwarg,
    _make,
    _named,
    _noisy_quadratic,
    _nqm_excess,
    _seeded_module,
    _stats,
)

__all__ = ["WRAPPERS_TOOLS_CLAIMS"]


def _claim(name: str) -> Claim:
    """This module's claim called ``name`` (its run function labels its result with it)."""
    return _named(WRAPPERS_TOOLS_CLAIMS, name)


# -- Lookahead: noisy quadratic -------------------------------------------------------------------

_LOOKAHEAD = "Lookahead (Zhang, Lucas, Hinton, Ba, NeurIPS 2019, arXiv:1907.08610)"


def _lookahead(inner: torch.optim.Optimizer, k: int, alpha: float) -> Any:
    info = _find("lookahead")
    if info is None:
        raise LookupError("needs lookahead, not registered")
    cls = info.cls
    return cls(
        inner, **{_kwarg(cls, "k", "la_steps", "steps"): k, _kwarg(cls, "alpha", "la_alpha"): alpha}
    )


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


# -- Gadam: iterate averaging ---------------------------------------------------------------------

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


# -- GradInit: the first SGD step of a deep unnormalised MLP --------------------------------------

_GRADINIT = "GradInit (Zhu, Ni, Xu, Kong, Huang, Goldstein, NeurIPS 2021, arXiv:2102.08098)"
_GI_LR = 0.3


def _deep_mlp(depth: int = 20, width: int = 64) -> nn.Module:
    layers: list[nn.Module] = [nn.Linear(16, width), nn.ReLU()]
    for _ in range(depth - 2):
        layers += [nn.Linear(width, width), nn.ReLU()]
    layers.append(nn.Linear(width, 4))
    net = nn.Sequential(*layers)
    for m in net:
        if isinstance(m, nn.Linear):  # Kaiming (He) normal: the variance-preserving ReLU init
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return net


def _gradinit_run(seed: int, use_gradinit: bool) -> tuple[float, float, float]:
    """(initial full-data loss, mean full-data loss after one SGD step over 8 fresh batches of 64,
    loss after 100 SGD steps) for the 20-layer MLP on a 4-class linear-teacher task."""
    gen = _gen(seed, 23)
    x = torch.randn(1024, 16, generator=gen, dtype=F64)
    y = (x @ torch.randn(16, 4, generator=gen, dtype=F64)).argmax(1)
    probes = [torch.randint(0, 1024, (64,), generator=gen) for _ in range(8)]
    train = [torch.randint(0, 1024, (64,), generator=gen) for _ in range(100)]
    net = _seeded_module(seed, _deep_mlp)
    ce = nn.CrossEntropyLoss()
    if use_gradinit:
        tool = importlib.import_module("adaptim.tools.gradinit")
        halves = [(x[i : i + 32], y[i : i + 32]) for i in range(0, 1024, 32)]
        tool.gradinit(
            net, lambda m, b: ce(m(b[0]), b[1]), halves, target="sgd", lr=1e-2, iters=50, eta=_GI_LR
        )

    def full(m: nn.Module) -> float:
        with torch.no_grad():
            f = float(ce(m(x), y))
        return f if math.isfinite(f) else math.inf

    f0 = full(net)
    after = []
    for idx in probes:
        probe = copy.deepcopy(net)
        opt = torch.optim.SGD(probe.parameters(), lr=_GI_LR)
        ce(probe(x[idx]), y[idx]).backward()
        opt.step()
        after.append(full(probe))
    opt = torch.optim.SGD(net.parameters(), lr=_GI_LR)
    for idx in train:
        opt.zero_grad(set_to_none=True)
        ce(net(x[idx]), y[idx]).backward()
        opt.step()
    return f0, statistics.fmean(after), full(net)


def _run_gradinit(seeds: int) -> ClaimResult:
    """GradInit (Zhu et al., NeurIPS 2021, arXiv:2102.08098; reference github.com/zhuchen03/gradinit):
    after GradInit a single SGD step at the prescribed lr lowers the loss of a deep network without
    normalisation, where the standard initialisation's first step overshoots."""
    c = _claim("gradinit-first-step")
    d0, d1, dt, g0, g1, gt = [], [], [], [], [], []
    for s in range(seeds):
        a, b, t = _gradinit_run(s, False)
        d0.append(a)
        d1.append(b)
        dt.append(t)
        a, b, t = _gradinit_run(s, True)
        g0.append(a)
        g1.append(b)
        gt.append(t)
    holds = (
        _all(zip(d1, d0, strict=True), lambda a, b: a > b)
        and _all(zip(g1, g0, strict=True), lambda a, b: a < b)
        and _all(zip(g1, d1, strict=True), lambda a, b: a < b)
    )
    nums = {
        **_stats("default_loss_init", d0),
        **_stats("default_loss_after_step1", d1),
        **_stats("gradinit_loss_init", g0),
        **_stats("gradinit_loss_after_step1", g1),
        **_stats("default_loss_after_100_steps", dt),
        **_stats("gradinit_loss_after_100_steps", gt),
    }
    diverged = sum(not math.isfinite(v) for v in dt)
    detail = (
        f"20-layer ReLU MLP, no normalisation, Kaiming init, SGD lr {_GI_LR}: full-data loss before -> "
        f"after one step (mean of 8 batches) default {_fmt(statistics.fmean(d0))} -> "
        f"{_fmt(statistics.fmean(d1))}, after GradInit (50 iters) {_fmt(statistics.fmean(g0))} -> "
        f"{_fmt(statistics.fmean(g1))}; holds if in every seed the default step raises the loss, the "
        f"GradInit step lowers it and ends below the default's (not judged: after 100 steps the default "
        f"diverged in {diverged} of {seeds} seeds)"
    )
    return c.result(holds, nums, detail)


# -- AdAdaGrad: the batch grows, far fewer steps --------------------------------------------------

_ADADAGRAD = "AdAdaGrad (Lau, Liu, Kolar, arXiv:2402.11215)"


def _adadagrad_run(seed: int, adaptive: bool, epochs: int = 10) -> tuple[float, int, int]:
    """Least squares y = X w + N(0, 1) noise (X: 2048 x 20), AdaGrad lr 1 from w = 0 with batches of 8
    (fixed, ``torch.optim.Adagrad``) or growing by the norm test (eta 0.5, cap 2048), until ``epochs``
    x 2048 samples are used; (excess full-data MSE, optimizer steps, final batch size)."""
    gen = _gen(seed, 24)
    x = torch.randn(2048, 20, generator=gen, dtype=F64)
    y = x @ torch.randn(20, generator=gen, dtype=F64) + torch.randn(2048, generator=gen, dtype=F64)
    w_opt = torch.linalg.lstsq(x, y.unsqueeze(1)).solution.squeeze(1)
    w = torch.zeros(20, dtype=F64, requires_grad=True)
    if adaptive:
        opt = _make(
            "adadagrad", [w], lr=1.0, batch_size=8, max_batch_size=2048, batch_test="norm", eta=0.5
        )
    else:
        opt = torch.optim.Adagrad([w], lr=1.0)
    used, steps, b = 0, 0, 8
    while used < epochs * 2048:
        if adaptive:
            b = opt.batch_size
        idx = torch.randint(0, 2048, (b,), generator=gen)
        per_example = 2 * (x[idx] @ w.detach() - y[idx]).unsqueeze(1) * x[idx]
        w.grad = per_example.mean(0)
        if adaptive:
            opt.batch_schedule.update([per_example])
        opt.step()
        used += b
        steps += 1

    def mse(v: torch.Tensor) -> float:
        return float(((x @ v - y) ** 2).mean())

    excess = mse(w.detach()) - mse(w_opt)
    return excess if math.isfinite(excess) else math.inf, steps, b


def _run_adadagrad(seeds: int) -> ClaimResult:
    """AdAdaGrad (Lau, Liu & Kolar, arXiv:2402.11215; reference github.com/timlautk/AdAdaGrad): an
    adaptive batch grown by the norm test reaches the loss of a fixed small batch in far fewer steps."""
    c = _claim("adadagrad-batch-growth")
    ea, sa, ba, ef, sf = [], [], [], [], []
    for s in range(seeds):
        e, n, b = _adadagrad_run(s, True)
        ea.append(e)
        sa.append(n)
        ba.append(b)
        e, n, _ = _adadagrad_run(s, False)
        ef.append(e)
        sf.append(n)
    holds = (
        all(b >= 64 for b in ba)
        and _all(zip(ea, ef, strict=True), lambda a, f: a <= f)
        and _all(zip(sa, sf, strict=True), lambda a, f: a <= f / 10)
    )
    nums = {
        **_stats("adaptive_excess_mse", ea),
        **_stats("fixed8_excess_mse", ef),
        **_stats("adaptive_steps", sa),
        **_stats("fixed8_steps", sf),
        **_stats("adaptive_final_batch", ba),
    }
    detail = (
        "least squares 2048x20 (noise 1), AdaGrad lr 1, 10 epochs of samples each: batch 8 -> "
        f"{_fmt(statistics.fmean(ba))} by the norm test (eta 0.5) in {_fmt(statistics.fmean(sa))} steps, "
        f"excess MSE {statistics.fmean(ea):.3g}, vs fixed batch 8 in {_fmt(statistics.fmean(sf))} steps, "
        f"{statistics.fmean(ef):.3g} (mean); holds if in every seed the batch grows >= 8x, the excess "
        "MSE is no higher and the steps are <= 1/10"
    )
    return c.result(holds, nums, detail)


# -- the list -------------------------------------------------------------------------------------

WRAPPERS_TOOLS_CLAIMS: list[Claim] = [
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
    ToolClaim(
        name="gradinit-first-step",
        paper=_GRADINIT,
        statement="After GradInit, a single SGD step at the prescribed learning rate lowers the loss of a "
        "deep network without normalisation, where the first step from the standard initialisation "
        "overshoots.",
        needs=("adaptim.tools.gradinit:gradinit",),
        run=_run_gradinit,
        setup="20-layer ReLU MLP (16-64-...-64-4, no normalisation, Kaiming-normal weights, zero biases) "
        "on a 4-class linear-teacher task (1024 points); SGD lr 0.3, batches of 64; one-step loss = mean "
        "full-data loss after one step on each of 8 fresh batches; GradInit(target sgd, eta 0.3, lr 1e-2, "
        "50 iterations, batches of 32+32, gamma inf)",
        criterion="in every seed the default init's one-step loss exceeds its initial loss, GradInit's "
        "one-step loss is below its initial loss and below the default's one-step loss",
    ),
    Claim(
        name="adadagrad-batch-growth",
        paper=_ADADAGRAD,
        statement="An adaptive batch grown by the norm test as the gradient noise starts to dominate "
        "reaches the loss of a fixed small batch with far fewer optimizer steps (same number of "
        "samples).",
        needs=("adadagrad",),
        run=_run_adadagrad,
        setup="least squares y = X w + N(0,1) (X 2048x20), from w = 0, AdaGrad lr 1, 10 epochs of "
        "samples; AdAdaGrad from batch 8 (norm test, eta 0.5, cap 2048; per-example gradients) vs "
        "torch.optim.Adagrad with batches of 8",
        criterion="in every seed the batch grows >= 8x, the excess MSE is no higher than the fixed "
        "batch's, with <= 1/10 of its steps",
    ),
]

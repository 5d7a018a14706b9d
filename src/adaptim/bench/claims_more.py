"""More claims for ``adaptim bench --suite claims``: the methods added after the first sixteen.

Same rules as :mod:`adaptim.bench.claims` (float64, every draw from a seeded ``torch.Generator``, module
initialisation under ``torch.random.fork_rng``, baselines from ``torch.optim``, a criterion fixed in this
file and reported as it comes out). :mod:`adaptim.bench.claims` puts :data:`MORE_CLAIMS` after
the first sixteen (:mod:`adaptim.bench.claims_first`) in ``CLAIMS``.

The claims, their papers and reference code (see ``docs/claims.md`` for the set-ups and results):

* ``adai-flat-minima``: Adai, Xie et al., ICML 2022, arXiv:2006.15815; github.com/zeke-xie/
  adaptive-inertia-adai.
* ``acprop-reddi-counterexample``: ACProp, Zhuang et al., NeurIPS 2021, arXiv:2110.05454;
  github.com/juntang-zhuang/ACProp-Optimizer.
* ``gradinit-first-step``: GradInit, Zhu et al., NeurIPS 2021, arXiv:2102.08098; github.com/zhuchen03/
  gradinit.
* ``adadagrad-batch-growth``: AdAdaGrad, Lau, Liu & Kolar, arXiv:2402.11215; github.com/timlautk/
  AdAdaGrad.
* ``activelr-lr-robustness``: ActiveLR, Wadi, Fredette & Senecal, arXiv:2301.10133; github.com/
  davoodwadi/ConsciousLR.
* ``hfac-sublinear-memory``: H-Fac, Nguyen, Chen, Liu & Liu, AISTATS 2025, arXiv:2406.09958 (no code).
* ``ncg-larger-lr-faster``: Wang & Ye, arXiv:2012.02188 (no code; our rule is RECONSTRUCTED).
* ``adarem-faster-than-adam``: AdaRem, Liu et al., arXiv:2010.11041 (no code; RECONSTRUCTED).
* ``mada-best-member``: MADA, Ozkara et al., ICML 2024, arXiv:2401.08893; github.com/amazon-science/
  mada_optimizer_search.
* ``padam-between-sgd-and-adam``: Padam, Chen et al., IJCAI 2020, arXiv:1806.06763; github.com/
  uclaml/Padam (and github.com/diegogranziol/GadamX, ``optimizers/padam.py``).
"""

from __future__ import annotations

import copy
import functools
import importlib
import math
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from adaptim.bench.claims_common import (
    F64,
    Claim,
    ClaimResult,
    _cls,
    _fmt,
    _gen,
    _make,
    _seeded_module,
    _stats,
    _uniform,
)
from adaptim.bench.claims_first import (
    _AHB_LRS,
    _lsq_run,
    _mlp_regression,
    _quad_converges,
    _quad_steps,
)

__all__ = ["MORE_CLAIMS", "ToolClaim"]


@dataclass(frozen=True)
class ToolClaim(Claim):
    """A claim about a tool (a function, not a registered optimizer).

    Each entry of ``needs`` is ``"module:attribute"``; the claim is skipped when the module cannot be
    imported or lacks the attribute.
    """

    def missing(self) -> list[str]:
        out = []
        for need in self.needs:
            module, _, attr = need.partition(":")
            try:
                found = hasattr(importlib.import_module(module), attr) if attr else True
            except ImportError:
                found = False
            if not found:
                out.append(need)
        return out


def _claim(name: str) -> Claim:
    """This module's claim called ``name`` (its run function labels its result with it)."""
    for c in MORE_CLAIMS:
        if c.name == name:
            return c
    raise KeyError(name)


def _all(pairs: Iterable[tuple[float, float]], ok: Callable[[float, float], bool]) -> bool:
    return all(ok(a, b) for a, b in pairs)


# -- Adai: favours flat minima as SGD does -------------------------------------------------------

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


# -- ACProp: converges on Reddi et al.'s counter-example -------------------------------------------

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


# -- GradInit: the first SGD step of a deep unnormalised MLP -----------------------------------------

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


# -- AdAdaGrad: the batch grows, far fewer steps -------------------------------------------------

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


# -- ActiveLR: robust to the initial learning rate -------------------------------------------------

_ACTIVELR = "ActiveLR (Wadi, Fredette, Senecal, arXiv:2301.10133)"
_ACTIVE_LRS = (1e-4, 1e-3, 1e-2, 1e-1)


def _mlp_epochs(seed: int, make_opt: Callable, epochs: int = 80, batch: int = 256) -> float:
    """20-32-1 tanh MLP regressing a random tanh teacher (1024 points), shuffled epochs of batches of
    ``batch``; the final full-data MSE (inf if it diverged)."""
    gen = _gen(seed, 25)
    x = torch.randn(1024, 20, generator=gen, dtype=F64)
    y = torch.tanh(x @ torch.randn(20, 32, generator=gen, dtype=F64) / math.sqrt(20)) @ (
        torch.randn(32, 1, generator=gen, dtype=F64) / math.sqrt(32)
    )
    net = _seeded_module(
        seed, lambda: nn.Sequential(nn.Linear(20, 32), nn.Tanh(), nn.Linear(32, 1))
    )
    opt = make_opt(net.parameters())
    for _ in range(epochs):
        for idx in torch.randperm(1024, generator=gen).split(batch):
            opt.zero_grad(set_to_none=True)
            ((net(x[idx]) - y[idx]) ** 2).mean().backward()
            opt.step()
    with torch.no_grad():
        f = float(((net(x) - y) ** 2).mean())
    return f if math.isfinite(f) else math.inf


def _run_activelr(seeds: int) -> ClaimResult:
    """ActiveLR (Wadi et al., arXiv:2301.10133; reference github.com/davoodwadi/ConsciousLR): the
    Active variant is robust to the initial learning rate."""
    c = _claim("activelr-lr-robustness")
    wa, wp, ba, bp = [], [], [], []
    for s in range(seeds):
        plain = [
            _mlp_epochs(s, lambda p, lr=lr: torch.optim.AdamW(p, lr=lr, weight_decay=0.0))
            for lr in _ACTIVE_LRS
        ]
        active = [
            _mlp_epochs(
                s,
                lambda p, lr=lr: _make(
                    "activelr", torch.optim.AdamW(p, lr=lr, weight_decay=0.0), steps_per_epoch=4
                ),
            )
            for lr in _ACTIVE_LRS
        ]
        wa.append(max(active))
        wp.append(max(plain))
        ba.append(min(active))
        bp.append(min(plain))
    holds = _all(zip(wa, wp, strict=True), lambda a, p: a <= p / 3) and _all(
        zip(ba, bp, strict=True), lambda a, p: a <= 2 * p
    )
    nums = {
        **_stats("active_worst_mse", wa),
        **_stats("adamw_worst_mse", wp),
        **_stats("active_best_mse", ba),
        **_stats("adamw_best_mse", bp),
    }
    detail = (
        f"20-32-1 tanh MLP, 80 epochs of 4 batches, AdamW (no decay) at initial lr {list(_ACTIVE_LRS)}: "
        f"worst MSE over the lrs ActiveLR {statistics.fmean(wa):.3g} vs AdamW {statistics.fmean(wp):.3g}, "
        f"best {statistics.fmean(ba):.3g} vs {statistics.fmean(bp):.3g} (mean); holds if in every seed "
        "ActiveLR's worst is <= 1/3 of AdamW's and its best within 2x of AdamW's"
    )
    return c.result(holds, nums, detail)


# -- H-Fac: sublinear memory ---------------------------------------------------------------------

_HFAC = "H-Fac (Nguyen, Chen, Liu, Liu, AISTATS 2025, arXiv:2406.09958)"


@functools.lru_cache(maxsize=16)
def _adam_lsq(seed: int) -> tuple[float, int]:
    """(final MSE, state floats) of torch.optim.Adam with its defaults on :func:`_lsq_run` (cached:
    the baseline does not depend on the registry)."""
    _, loss, mem = _lsq_run(seed, lambda p: torch.optim.Adam(p), 500)
    return loss, mem


def _run_hfac(seeds: int) -> ClaimResult:
    """H-Fac (Nguyen et al., AISTATS 2025, arXiv:2406.09958; no reference code): rank-1 momentum and
    second moment, 2(m+n) state numbers, and training close to Adam's."""
    c = _claim("hfac-sublinear-memory")
    mem_h, loss_h, loss_a, mem_a = [], [], [], []
    for s in range(seeds):
        _, lh, mh = _lsq_run(s, lambda p: _make("hfac", p), 500)
        la, ma = _adam_lsq(s)
        mem_h.append(mh)
        loss_h.append(lh)
        loss_a.append(la)
        mem_a.append(ma)
    bound = 2 * (64 + 128) + 2
    holds = all(m <= bound for m in mem_h) and _all(
        zip(loss_h, loss_a, strict=True), lambda h, a: h <= 2 * a
    )
    nums = {
        "hfac_state_floats": float(max(mem_h)),
        "adam_state_floats": float(max(mem_a)),
        **_stats("hfac_mse", loss_h),
        **_stats("adam_mse", loss_a),
    }
    detail = (
        f"64x128 least squares of adafactor-sublinear-memory, 500 steps, both with their defaults: "
        f"state floats for W H-Fac {max(mem_h)} vs Adam {max(mem_a)}; full-data MSE "
        f"{statistics.fmean(loss_h):.3g} vs {statistics.fmean(loss_a):.3g} (mean); holds if H-Fac keeps "
        f"<= 2(64+128)(+2) floats and ends within 2x of Adam's MSE in every seed"
    )
    return c.result(holds, nums, detail)


# -- NCG-style momentum: larger lr, faster ----------------------------------------------------------

_NCG = "SGD with NCG-style adaptive momentum (Wang & Ye, arXiv:2012.02188)"
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
    """NCG-style momentum (Wang & Ye, arXiv:2012.02188; no reference code, rule reconstructed in
    ``optimizers/ncg_momentum.py``): no momentum hyperparameter, a larger usable lr and faster
    convergence than a constant momentum."""
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


# -- AdaRem: faster training than adaptive methods --------------------------------------------------

_ADAREM = "AdaRem (Liu, Lin, Li, Sheng, Sun, Yan, Ouyang, arXiv:2010.11041)"
_ADAREM_LRS = (0.03, 0.1, 0.3)
_ADAM_LRS = (1e-3, 3e-3, 1e-2, 3e-2)


@functools.lru_cache(maxsize=64)
def _adam_mlp(seed: int, lr: float) -> float:
    """torch.optim.Adam on the MLP regression of adan-larger-lr, 400 steps (cached: the baseline does
    not depend on the registry)."""
    return _mlp_regression(seed, lambda p: torch.optim.Adam(p, lr=lr))


def _adam_best(seed: int) -> float:
    return min(_adam_mlp(seed, lr) for lr in _ADAM_LRS)


def _run_adarem(seeds: int) -> ClaimResult:
    """AdaRem (Liu et al., arXiv:2010.11041; no reference code, rule reconstructed in
    ``optimizers/adarem.py``): faster training than the adaptive-learning-rate methods."""
    c = _claim("adarem-faster-than-adam")
    ar, ad = [], []
    for s in range(seeds):
        ar.append(
            min(
                _mlp_regression(s, lambda p, lr=lr: _make("adarem", p, lr=lr)) for lr in _ADAREM_LRS
            )
        )
        ad.append(_adam_best(s))
    holds = _all(zip(ar, ad, strict=True), lambda a, b: a <= b)
    nums = {**_stats("adarem_best_mse", ar), **_stats("adam_best_mse", ad)}
    detail = (
        f"20-64-64-1 tanh MLP regression, 400 steps, best final MSE over lr {list(_ADAREM_LRS)} (AdaRem) "
        f"and {list(_ADAM_LRS)} (Adam): AdaRem {statistics.fmean(ar):.3g} vs Adam "
        f"{statistics.fmean(ad):.3g} (mean); holds if AdaRem's is no higher in every seed"
    )
    return c.result(holds, nums, detail)


# -- MADA: at least as good as the best member it interpolates ----------------------------------------

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


# -- Padam: between SGD with momentum and Adam, as fast as Adam --------------------------------------

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

MORE_CLAIMS: list[Claim] = [
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
    Claim(
        name="activelr-lr-robustness",
        paper=_ACTIVELR,
        statement="The Active variant of an optimizer (per-parameter learning rates adapted each epoch "
        "from the sign of the epoch gradient) is robust to the initial learning rate.",
        needs=("activelr",),
        run=_run_activelr,
        setup="20-32-1 tanh MLP regressing a random tanh teacher (1024 points), 80 shuffled epochs of "
        "batches of 256; torch.optim.AdamW (weight_decay 0) alone and inside ActiveLR(steps_per_epoch=4, "
        f"defaults), initial lr in {list(_ACTIVE_LRS)}",
        criterion="in every seed ActiveLR's worst final MSE over the lrs is <= 1/3 of AdamW's worst, and "
        "its best is within 2x of AdamW's best",
    ),
    Claim(
        name="hfac-sublinear-memory",
        paper=_HFAC,
        statement="H-Fac's rank-1 momentum and second moment need only 2(m+n) numbers for an m x n "
        "weight, and it still trains about as well as Adam.",
        needs=("hfac",),
        run=_run_hfac,
        setup="the least squares of adafactor-sublinear-memory (W 64x128), 500 steps; H-Fac with its "
        "defaults (lr 1e-3) vs torch.optim.Adam with its defaults",
        criterion="H-Fac keeps <= 2(64+128)(+2) state floats for W and ends within 2x of Adam's "
        "full-data MSE, every seed",
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
    Claim(
        name="adarem-faster-than-adam",
        paper=_ADAREM,
        statement="AdaRem (SGD whose per-parameter lr grows when the past update direction agrees with "
        "the gradient) trains faster than adaptive-learning-rate methods such as Adam.",
        needs=("adarem",),
        run=_run_adarem,
        setup="the MLP regression of adan-larger-lr (400 steps, batches of 64); best final MSE over lr "
        f"{list(_ADAREM_LRS)} for AdaRem (defaults otherwise) and {list(_ADAM_LRS)} for "
        "torch.optim.Adam",
        criterion="AdaRem's best final MSE is no higher than Adam's, every seed",
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

"""Claims about methods that set or adapt the learning rate themselves: KOALA (no lr to tune),
ActiveLR (robust to the initial lr), AdaRem (per-parameter lr from the agreement of past and present
directions).

Conventions (float64, every draw from a seeded ``torch.Generator``, ``torch.optim`` baselines, a
criterion fixed in the code before the result was looked at): :mod:`adaptim.bench.claims`; set-ups
and the last run's numbers: ``docs/claims.md``.

* ``koala-no-lr-tuning``: KOALA, Davtyan et al., AAAI 2022, arXiv:2107.03331.
* ``activelr-lr-robustness``: ActiveLR, Wadi, Fredette & Senecal, arXiv:2301.10133; github.com/
  davoodwadi/ConsciousLR.
* ``adarem-faster-than-adam``: AdaRem, Liu et al., arXiv:2010.11041 (no authors' code; RECONSTRUCTED
  after a Flax reading whose author marks it not guaranteed and withdrew it).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable

import torch
from torch import nn

from adaptim.bench.claims_common import (
    _ADAM_LRS,
    F64,
    Claim,
    ClaimResult,
    _adam_best,
    _all,
    _gen,
    _make,
    _mlp_regression,
    _named,
    _seeded_module,
    _stats,
)

__all__ = ["LR_ADAPTATION_CLAIMS"]


def _claim(name: str) -> Claim:
    """This module's claim called ``name`` (its run function labels its result with it)."""
    return _named(LR_ADAPTATION_CLAIMS, name)


# -- KOALA: no learning-rate tuning ---------------------------------------------------------------

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


# -- ActiveLR: robust to the initial learning rate ------------------------------------------------

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


# -- AdaRem: faster training than adaptive methods ------------------------------------------------

_ADAREM = "AdaRem (Liu, Lin, Li, Sheng, Sun, Yan, Ouyang, arXiv:2010.11041)"
_ADAREM_LRS = (0.03, 0.1, 0.3)


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


# -- the list -------------------------------------------------------------------------------------

LR_ADAPTATION_CLAIMS: list[Claim] = [
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
]

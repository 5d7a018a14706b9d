"""Claims about factored second moments: sublinear optimizer memory that still trains like Adam
(Adafactor, H-Fac).

Conventions (float64, every draw from a seeded ``torch.Generator``, ``torch.optim`` baselines, a
criterion fixed in the code before the result was looked at): :mod:`adaptim.bench.claims`; set-ups
and the last run's numbers: ``docs/claims.md``.

* ``adafactor-sublinear-memory``: Adafactor, Shazeer & Stern, ICML 2018, arXiv:1804.04235.
* ``hfac-sublinear-memory``: H-Fac, Nguyen, Chen, Liu & Liu, AISTATS 2025, arXiv:2406.09958 (no code).
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
    _gen,
    _make,
    _named,
    _stats,
    _uniform,
)

__all__ = ["FACTORED_CLAIMS"]


def _claim(name: str) -> Claim:
    """This module's claim called ``name`` (its run function labels its result with it)."""
    return _named(FACTORED_CLAIMS, name)


# -- Adafactor: sublinear memory ------------------------------------------------------------------

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


# -- H-Fac: sublinear memory ----------------------------------------------------------------------

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


# -- the list -------------------------------------------------------------------------------------

FACTORED_CLAIMS: list[Claim] = [
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
]

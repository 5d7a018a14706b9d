"""``adaptim bench --suite claims``: the papers' headline claims, each checked on a toy problem.

Every claim is a sentence a paper makes about its method, a toy problem small enough to run in a few
seconds per seed on one CPU thread, and a verdict criterion that was fixed in its module *before* the
result was looked at (the toy set-ups and the numbers the spec's authors measured are in
``shared/spec/ALGORITHMS.md``, "CPU check"; ``docs/claims.md`` records each claim's source and the last
run). A claim that does not hold at this scale is reported with its numbers, never hidden or re-tuned.

Optimizers are looked up in the registry (``adaptim.get``); the baselines a claim compares against
("plain Adam", "SGD with momentum") are ``torch.optim`` classes, so they do not depend on adaptim. A
claim whose optimizer is not registered returns ``holds=None`` with ``detail="needs <name>, not
registered"``.

Conventions: float64 everywhere; every random draw comes from a ``torch.Generator`` seeded with the
seed index (module initialisation runs under ``torch.random.fork_rng`` so the caller's global RNG is left
alone). Seed 0 reproduces the paper's (or spec's) exact set-up; deterministic problems vary their
starting point a little with the other seeds, so "in every seed" means "from several nearby starts".

>>> from adaptim.bench.claims import run_claims
>>> for r in run_claims(seeds=1, only=["adamw-uniform-decay"]):   # doctest: +SKIP
...     print(r.name, r.holds, r.numbers)
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Callable

from adaptim.bench.claims_adam_family import ADAM_FAMILY_CLAIMS
from adaptim.bench.claims_common import Claim, ClaimResult, format_table
from adaptim.bench.claims_factored import FACTORED_CLAIMS
from adaptim.bench.claims_lr_adaptation import LR_ADAPTATION_CLAIMS
from adaptim.bench.claims_momentum import MOMENTUM_CLAIMS
from adaptim.bench.claims_scaling import CLAIMS as SCALING_CLAIMS
from adaptim.bench.claims_second_order import CLAIMS as SECOND_ORDER_CLAIMS
from adaptim.bench.claims_state_precision import CLAIMS as STATE_PRECISION_CLAIMS
from adaptim.bench.claims_training_dynamics import CLAIMS as TRAINING_DYNAMICS_CLAIMS
from adaptim.bench.claims_wrappers_tools import WRAPPERS_TOOLS_CLAIMS

__all__ = ["CLAIMS", "REPORT_ORDER", "Claim", "ClaimResult", "format_table", "run_claims"]

# The order of the report (and of docs/claims.md): the eight headline claims first, then the
# others in the order they joined the suite, a later claim about a method next to its earlier ones.
# Every claim of the modules above appears here once.
REPORT_ORDER: tuple[str, ...] = (
    "diffgrad-f1-global-min",
    "adabelief-abs-faster",
    "adamp-norm-growth",
    "sgdp-norm-growth",
    "lookahead-noisy-quadratic",
    "adamw-uniform-decay",
    "radam-bounded-variance",
    "radam-replaces-warmup",
    "gensignsgd-x4-no-divergence",
    "ahb-larger-lr",
    "ahb-faster-than-fixed-momentum",
    "ahb-ratio-finds-lambda-min",
    "gadam-iterate-averaging",
    "adafactor-sublinear-memory",
    "8bit-states-match-32bit",
    "adan-larger-lr",
    "pnm-larger-noise",
    "mars-beats-adamw",
    "koala-no-lr-tuning",
    "adai-flat-minima",
    "acprop-reddi-counterexample",
    "gradinit-first-step",
    "adadagrad-batch-growth",
    "activelr-lr-robustness",
    "hfac-sublinear-memory",
    "ncg-larger-lr-faster",
    "adarem-faster-than-adam",
    "mada-best-member",
    "padam-between-sgd-and-adam",
    "sgdhess-beats-sgd-momentum",
    "momentum-lr-two-thirds",
    "lr-batch-linear-sgd-sqrt-adam",
    "preln-no-warmup",
    "weights-not-stationary",
    "adam-smaller-rmed",
)


def _in_report_order(claims: list[Claim], order: tuple[str, ...]) -> list[Claim]:
    """``claims`` sorted by ``order``; a claim missing from ``order`` (or a name in it without a claim,
    or a name twice) is a ``ValueError`` naming it, so no claim can silently drop out of the suite."""
    by_name = {c.name: c for c in claims}
    if len(by_name) != len(claims) or len(set(order)) != len(order):
        raise ValueError("claim names must be unique")
    unplaced = [name for name in by_name if name not in order]
    unknown = [name for name in order if name not in by_name]
    if unplaced or unknown:
        raise ValueError(
            f"claims missing from REPORT_ORDER: {unplaced}; names without a claim: {unknown}"
        )
    return [by_name[name] for name in order]


CLAIMS: list[Claim] = _in_report_order(
    [
        *ADAM_FAMILY_CLAIMS,
        *MOMENTUM_CLAIMS,
        *FACTORED_CLAIMS,
        *LR_ADAPTATION_CLAIMS,
        *WRAPPERS_TOOLS_CLAIMS,
        *SECOND_ORDER_CLAIMS,
        *SCALING_CLAIMS,
        *TRAINING_DYNAMICS_CLAIMS,
        *STATE_PRECISION_CLAIMS,
    ],
    REPORT_ORDER,
)


def run_claims(
    seeds: int = 3,
    only: list[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[ClaimResult]:
    """Check the claims (all, or those whose names match ``only``: names or shell patterns).

    ``progress`` is called with a short message before and after each claim. An unknown name in
    ``only`` raises ``ValueError`` listing the valid ones.
    """
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    claims = list(CLAIMS)
    if only:
        names = [c.name for c in claims]
        for pat in only:
            if not fnmatch.filter(names, pat):
                raise ValueError(f"unknown claim {pat!r}; the claims are: {', '.join(names)}")
        claims = [c for c in claims if any(fnmatch.fnmatchcase(c.name, p) for p in only)]
    results = []
    for i, claim in enumerate(claims, 1):
        if progress is not None:
            progress(f"[{i}/{len(claims)}] {claim.name}")
        start = time.perf_counter()
        missing = claim.missing()
        if missing:
            res = claim.result(None, {}, f"needs {', '.join(missing)}, not registered")
        else:
            try:
                res = claim.run(seeds)
            except Exception as exc:  # a crash is reported, it does not stop the suite
                res = claim.result(None, {}, f"error: {type(exc).__name__}: {exc}")
        res.seconds = time.perf_counter() - start
        results.append(res)
        if progress is not None:
            progress(f"[{i}/{len(claims)}] {claim.name}: {res.verdict} ({res.seconds:.1f} s)")
    return results


def _claim(name: str) -> Claim:
    for c in CLAIMS:
        if c.name == name:
            return c
    raise KeyError(name)

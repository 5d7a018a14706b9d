"""``adaptim bench --suite claims``: the papers' headline claims, each checked on a toy problem.

Every claim is a sentence a paper makes about its method, a toy problem small enough to run in a few
seconds per seed on one CPU thread, and a verdict criterion that was fixed in its module
(``claims_first.py``, ``claims_more.py``) *before* the result was looked at (the toy set-ups and the numbers the spec's authors measured are in
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

from adaptim.bench.claims_common import Claim, ClaimResult, format_table
from adaptim.bench.claims_first import FIRST_CLAIMS
from adaptim.bench.claims_more import MORE_CLAIMS

__all__ = ["CLAIMS", "Claim", "ClaimResult", "format_table", "run_claims"]

CLAIMS: list[Claim] = [*FIRST_CLAIMS, *MORE_CLAIMS]


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

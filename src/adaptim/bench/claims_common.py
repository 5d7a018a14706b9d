"""The claims suite's framework: a claim, its result, the verdict table, and shared toy-problem helpers.

See :mod:`adaptim.bench.claims` for the suite and its conventions. The claims live in one module per
family of methods: :mod:`~adaptim.bench.claims_adam_family`, :mod:`~adaptim.bench.claims_momentum`,
:mod:`~adaptim.bench.claims_factored`, :mod:`~adaptim.bench.claims_lr_adaptation` and
:mod:`~adaptim.bench.claims_wrappers_tools`; the toy problems more than one of them uses are here.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from adaptim import registry

__all__ = ["Claim", "ClaimResult", "ToolClaim", "format_table"]

F64 = torch.float64


# -- the interface ------------------------------------------------------------------------------


@dataclass
class ClaimResult:
    """The verdict on one claim.

    ``holds`` is ``True`` / ``False``, or ``None`` when the claim was not checked: its optimizer is not
    registered (``detail`` starts with ``"needs "``) or running it raised (``detail`` starts with
    ``"error: "``).
    """

    name: str  # short id, e.g. "diffgrad-f1-global-min"
    paper: str  # e.g. "diffGrad (Dubey et al., 2020, arXiv:1909.11015)"
    statement: str  # the claim in one sentence
    holds: bool | None  # None = skipped (optimizer not registered yet), with the reason in detail
    numbers: dict[str, float]  # the measured numbers behind the verdict (means over seeds etc.)
    detail: str  # one line explaining the numbers and the criterion
    seconds: float = 0.0  # wall time of the check

    @property
    def verdict(self) -> str:
        """``"holds"``, ``"does not hold"``, ``"skipped"`` or ``"error"``."""
        if self.holds is True:
            return "holds"
        if self.holds is False:
            return "does not hold"
        return "error" if self.detail.startswith("error") else "skipped"


@dataclass(frozen=True)
class Claim:
    """One paper's claim: ``run(seeds)`` measures it and returns a :class:`ClaimResult`.

    ``needs`` lists the registry entries the claim uses; an entry ``"a|b*"`` accepts the first
    registered of several names or shell patterns.
    """

    name: str
    paper: str
    statement: str
    needs: tuple[str, ...]
    run: Callable[[int], ClaimResult]
    setup: str = ""
    criterion: str = ""

    def missing(self) -> list[str]:
        """The entries of ``needs`` that are not registered."""
        return [need for need in self.needs if _find(need) is None]

    def result(self, holds: bool | None, numbers: dict[str, float], detail: str) -> ClaimResult:
        return ClaimResult(self.name, self.paper, self.statement, holds, numbers, detail)


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


def format_table(results: Sequence[ClaimResult], brief: bool = True) -> str:
    """A Markdown table of the verdicts (docs/claims.md, the CLI's plain output).

    ``brief`` leaves out the per-seed ``_min`` / ``_max`` numbers (the means stay).
    """
    lines = ["| claim | verdict | numbers | criterion and result |", "|---|---|---|---|"]
    for r in results:
        shown = {k: v for k, v in r.numbers.items() if not (brief and k.endswith(("_min", "_max")))}
        nums = ", ".join(f"{k}={_fmt(v)}" for k, v in shown.items())
        detail = r.detail.replace("|", "\\|")  # a literal | inside a Markdown cell
        lines.append(f"| {r.name} | {r.verdict} | {nums} | {detail} |")
    return "\n".join(lines)


# -- helpers ------------------------------------------------------------------------------------


def _find(spec: str) -> registry.OptimInfo | None:
    """The first registered entry among ``"name|pattern|..."``, or ``None``."""
    for alt in spec.split("|"):
        if any(ch in alt for ch in "*?["):
            matches = registry.available(alt, kind="all")
            if matches:
                return registry.get(matches[0])
        else:
            try:
                return registry.get(alt)
            except ValueError:
                continue
    return None


def _cls(spec: str) -> type:
    info = _find(spec)
    if info is None:
        raise LookupError(f"needs {spec}, not registered")
    return info.cls


def _make(spec: str, params: Iterable[Any], **kw: Any) -> torch.optim.Optimizer:
    return _cls(spec)(params, **kw)


def _fmt(v: float) -> str:
    if isinstance(v, bool):
        return str(v)
    if v != v or math.isinf(v):
        return str(v)
    if v == int(v) and abs(v) < 1e7:
        return str(int(v))
    return f"{v:.3g}"


def _stats(key: str, values: Sequence[float]) -> dict[str, float]:
    """``key_mean``, and ``key_min`` / ``key_max`` when there are several seeds."""
    vals = [float(v) for v in values]
    finite = [v for v in vals if math.isfinite(v)]
    mean = statistics.fmean(vals) if len(finite) == len(vals) else float("inf")
    out = {f"{key}_mean": mean}
    if len(vals) > 1:
        out[f"{key}_min"] = min(vals)
        out[f"{key}_max"] = max(vals)
    return out


def _gen(seed: int, salt: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(1_000 * salt + seed)


def _uniform(gen: torch.Generator, lo: float, hi: float, n: int = 1) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen, dtype=F64)


def _drive(
    opt_factory: Callable[[list[torch.Tensor]], Any],
    x0: torch.Tensor,
    grad_fn: Callable[[torch.Tensor, int], torch.Tensor],
    steps: int,
    stop: Callable[[torch.Tensor, int], bool] | None = None,
) -> tuple[torch.Tensor, int]:
    """Run an optimizer on a single tensor with a hand-written gradient; return (x, steps taken).

    ``grad_fn(x, t)`` gives the gradient at ``x`` on step ``t`` (1-based); a fresh tensor is assigned
    to ``x.grad`` every step. ``stop(x, t)`` ends the run early when it returns True.
    """
    x = x0.detach().clone().to(F64).requires_grad_(True)
    opt = opt_factory([x])
    for t in range(1, steps + 1):
        x.grad = grad_fn(x.detach(), t)
        opt.step()
        if stop is not None and stop(x.detach(), t):
            return x.detach().clone(), t
    return x.detach().clone(), steps


def _seeded_module(seed: int, build: Callable[[], nn.Module]) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build().to(F64)


def _kwarg(cls: type, *names: str) -> str:
    """The first of ``names`` that ``cls.__init__`` accepts (wrapper hyperparameters vary)."""
    params = inspect.signature(cls.__init__).parameters
    for n in names:
        if n in params:
            return n
    raise TypeError(f"{cls.__name__} accepts none of {names}")


def _noisy_quadratic(dim: int = 20) -> torch.Tensor:
    """Curvatures of the noisy quadratic model: logspace(-2, 0) (spec sections 3 and 15i)."""
    return torch.logspace(-2, 0, dim, dtype=F64)


def _named(claims: Sequence[Claim], name: str) -> Claim:
    """The claim called ``name`` in ``claims`` (a module's run function labels its result with it)."""
    for c in claims:
        if c.name == name:
            return c
    raise KeyError(name)


def _all(pairs: Iterable[tuple[float, float]], ok: Callable[[float, float], bool]) -> bool:
    return all(ok(a, b) for a, b in pairs)


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


# the lr grid over which plain Adam's best run is the baseline (AdaRem, Padam)
_ADAM_LRS = (1e-3, 3e-3, 1e-2, 3e-2)


@functools.lru_cache(maxsize=64)
def _adam_mlp(seed: int, lr: float) -> float:
    """torch.optim.Adam on the MLP regression of adan-larger-lr, 400 steps (cached: the baseline does
    not depend on the registry)."""
    return _mlp_regression(seed, lambda p: torch.optim.Adam(p, lr=lr))


def _adam_best(seed: int) -> float:
    return min(_adam_mlp(seed, lr) for lr in _ADAM_LRS)

"""The optimizers the bench compares: adaptim's registry plus five ``torch.optim`` baselines.

Baselines (torch's defaults but for the lr, which is searched like every other optimizer's):
``torch-adamw`` (``torch.optim.AdamW``, weight decay 1e-2), ``torch-sgdm`` (``torch.optim.SGD`` with
momentum 0.9), ``torch-nadam`` (``torch.optim.NAdam``), ``torch-rmsprop`` (``torch.optim.RMSprop``,
no momentum) and ``torch-adagrad`` (``torch.optim.Adagrad``).

Each optimizer's learning-rate grid is centred per task (see :func:`lr_center`): on its default lr for
the training tasks, on its registry ``tuned_lr`` for the test functions (``"rosenbrock"``) and the noisy
quadratic (``"quadratic"``), times the task's ``lr_scale``. The default grid is three points half a
decade apart around that centre.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from adaptim.registry import closest

__all__ = [
    "BASELINES",
    "SAME_AS_AT_DEFAULTS",
    "BenchOptimizer",
    "all_optimizers",
    "bench_kwargs",
    "default_optimizers",
    "lr_center",
    "lr_grid",
    "make_optimizer",
    "resolve_optimizers",
    "round_lr",
]


@dataclass(frozen=True)
class BenchOptimizer:
    name: str
    description: str
    default_lr: float | None
    tuned_lr: dict[str, float]
    baseline: bool = False
    uses_lr: bool = True  # False: the optimizer picks its own step size (no lr sweep)


BASELINES: dict[str, BenchOptimizer] = {
    "torch-adamw": BenchOptimizer(
        "torch-adamw",
        "baseline: torch.optim.AdamW with torch's defaults (weight decay 1e-2)",
        1e-3,
        {"quadratic": 0.05, "rosenbrock": 0.1},
        baseline=True,
    ),
    "torch-sgdm": BenchOptimizer(
        "torch-sgdm",
        "baseline: torch.optim.SGD with momentum 0.9",
        0.01,
        {"quadratic": 0.3, "rosenbrock": 1e-3},
        baseline=True,
    ),
    # Their tuned_lr: the best of a seed-0 sweep half a decade apart (3e-4 to 3) on Rosenbrock and
    # on the noisy quadratic at the bench's settings; the search widens from there when needed.
    "torch-nadam": BenchOptimizer(
        "torch-nadam",
        "baseline: torch.optim.NAdam with torch's defaults",
        2e-3,
        {"quadratic": 0.05, "rosenbrock": 0.03},
        baseline=True,
    ),
    "torch-rmsprop": BenchOptimizer(
        "torch-rmsprop",
        "baseline: torch.optim.RMSprop with torch's defaults (alpha 0.99, no momentum)",
        1e-2,
        {"quadratic": 0.03, "rosenbrock": 0.01},
        baseline=True,
    ),
    "torch-adagrad": BenchOptimizer(
        "torch-adagrad",
        "baseline: torch.optim.Adagrad with torch's defaults",
        1e-2,
        {"quadratic": 0.5, "rosenbrock": 1.0},
        baseline=True,
    ),
}

# The torch.optim class of each baseline, and what the bench sets besides lr.
_BASELINE_CLASSES: dict[str, tuple[type[torch.optim.Optimizer], dict[str, Any]]] = {
    "torch-adamw": (torch.optim.AdamW, {}),
    "torch-sgdm": (torch.optim.SGD, {"momentum": 0.9}),
    "torch-nadam": (torch.optim.NAdam, {}),
    "torch-rmsprop": (torch.optim.RMSprop, {}),
    "torch-adagrad": (torch.optim.Adagrad, {}),
}


def _from_registry(info: Any) -> BenchOptimizer:
    params = inspect.signature(info.cls.__init__).parameters
    uses_lr = "lr" in params
    default = info.defaults.get("lr")
    if not _positive_number(default):
        default = dict(info.test_kwargs or {}).get("lr")
    if not _positive_number(default):
        default = None
    return BenchOptimizer(
        info.name,
        info.description,
        None if default is None else float(default),
        {
            k: float(v)
            for k, v in dict(info.tuned_lr or {}).items()
            if isinstance(v, int | float) and not isinstance(v, bool) and v > 0
        },
        uses_lr=uses_lr,
    )


def _positive_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and x > 0


def all_optimizers() -> dict[str, BenchOptimizer]:
    """Every optimizer the bench can run: the baselines, then the registry's optimizers by name."""
    from adaptim.registry import registered

    out = dict(BASELINES)
    for info in registered(kind="optimizer"):
        out[info.name] = _from_registry(info)
    return out


#: Registry entries that, at the class defaults the bench runs them with, take exactly the steps of
#: another entry: the default set leaves them out, so that the bench does not run one configuration
#: twice (a run that names them, or ``all``, still includes them; tests/bench/test_bench_optimizers.py
#: checks that the two step alike).
#:
#: * ``adaiv2``: the authors' AdaiV2 defaults (zeke-xie/adaptive-inertia-adai ``adai_optim/adaiv2.py``
#:   @ e6c1b9d: ``betas=(0.1, 0.99)``, ``eps=1e-3``, ``weight_decay=0``, ``dampening=1``,
#:   ``decoupled=True``) are Adai's but for the weight-decay mode, which does nothing without weight
#:   decay; their README: "Adai is a special case of AdaiV2 with dampening=1", and it recommends no
#:   dampening below 1 ("AdaiV2 is in testing phase").
SAME_AS_AT_DEFAULTS: dict[str, str] = {"adaiv2": "adai"}


def default_optimizers() -> list[str]:
    """What ``adaptim bench`` compares when ``--optimizers`` is not given: everything registered,
    less the entries of :data:`SAME_AS_AT_DEFAULTS`."""
    return [name for name in all_optimizers() if name not in SAME_AS_AT_DEFAULTS]


def resolve_optimizers(names: Iterable[str]) -> list[str]:
    """Validate names (``all`` expands; shell patterns like ``adam*`` match registry names).

    An unknown name raises ``ValueError`` naming the closest valid ones.
    """
    import fnmatch

    known = all_optimizers()
    out: list[str] = []
    for raw in names:
        name = raw.strip().lower()
        if not name:
            continue
        if name == "all":
            matched = list(known)
        elif any(ch in name for ch in "*?["):
            matched = [n for n in known if fnmatch.fnmatchcase(n, name)]
            if not matched:
                raise ValueError(f"no optimizer matches {raw!r}; `adaptim list` shows them all")
        elif name in known:
            matched = [name]
        else:
            matched = [_registry_alias(name)]
        out += [m for m in matched if m not in out]
    if not out:
        raise ValueError("no optimizers given")
    return out


def _registry_alias(name: str) -> str:
    from adaptim.registry import get

    known = all_optimizers()
    try:
        info = get(name)
    except ValueError:
        info = None
    if info is not None and info.name in known:
        return info.name
    close = closest(name, list(known))
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    if info is not None:  # a wrapper or tool
        raise ValueError(f"{name!r} is a {info.kind}, not an optimizer the bench can run{hint}")
    raise ValueError(f"unknown optimizer {name!r}{hint} (`adaptim list` shows them all)")


def lr_center(opt: BenchOptimizer, lr_hint: str, lr_scale: float = 1.0) -> float | None:
    """The middle of ``opt``'s lr grid on a task whose ``lr_hint`` is given (``None``: no lr)."""
    if not opt.uses_lr:
        return None
    if lr_hint in opt.tuned_lr:
        base = opt.tuned_lr[lr_hint]
    elif opt.default_lr is not None:
        base = opt.default_lr * (1.0 if lr_hint == "default" else 10.0)
    elif opt.tuned_lr:
        base = next(iter(opt.tuned_lr.values()))
    else:
        base = 1e-3
    return base * lr_scale


def lr_grid(center: float | None, points: int = 3, spacing: float = 0.5) -> list[float | None]:
    """``points`` learning rates ``spacing`` decades apart, centred on ``center`` (log grid)."""
    if center is None:
        return [None]
    mid = (points - 1) / 2
    return [round_lr(center * 10 ** (spacing * (i - mid))) for i in range(points)]


_LRS_FORMAT = "lo:hi:n (e.g. 1e-4:1e-1:7) or a comma list of learning rates (e.g. 1e-3,3e-3)"


def parse_lrs(text: str) -> list[float]:
    """``"lo:hi:n"`` (n points, log-spaced, inclusive) or a comma list ``"1e-3,3e-3"``.

    Raises ``ValueError`` naming ``--lrs`` for anything else: a malformed range, a value that is not
    a finite positive number (``float`` accepts ``nan`` and ``inf``), ``lo > hi``, ``n < 1``.
    """
    text = text.strip()
    if ":" in text:
        parts = text.split(":")
        if len(parts) != 3:
            raise ValueError(f"--lrs {text!r}: expected {_LRS_FORMAT}")
        lo, hi = (_finite_lr(text, part) for part in parts[:2])
        if not parts[2].strip().isdigit() or int(parts[2]) < 1:
            raise ValueError(
                f"--lrs {text!r}: n = {parts[2].strip()!r} is not a positive integer; "
                f"expected {_LRS_FORMAT}"
            )
        n = int(parts[2])
        if not lo <= hi:
            raise ValueError(f"--lrs {text!r}: need 0 < lo <= hi and n >= 1")
        if n == 1:
            return [round_lr(lo)]
        step = (math.log10(hi) - math.log10(lo)) / (n - 1)
        return [round_lr(10 ** (math.log10(lo) + i * step)) for i in range(n)]
    values = [_finite_lr(text, v) for v in text.split(",") if v.strip()]
    if not values:
        raise ValueError(f"--lrs {text!r}: expected {_LRS_FORMAT}")
    return sorted({round_lr(v) for v in values})


def _finite_lr(text: str, part: str) -> float:
    try:
        value = float(part)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ValueError(
            f"--lrs {text!r}: {part.strip()!r} is not a finite number; expected {_LRS_FORMAT}"
        )
    if value <= 0:
        raise ValueError(f"--lrs {text!r}: learning rates must be positive, got {part.strip()!r}")
    return value


def round_lr(x: float) -> float:
    """A learning rate to 4 significant digits: the bench's lrs, so that a run's key is stable."""
    return float(f"{x:.4g}")


def bench_kwargs(name: str) -> dict[str, Any]:
    """Hyperparameters the bench sets besides lr (everything else stays at the class defaults).

    * a hyperparameter without a default is taken from the record's ``test_kwargs``;
    * ``momentum`` defaulting to 0 (torch SGD's convention, kept by e.g. SGDP) is set to 0.9, the
      papers' setting and that of the ``torch-sgdm`` baseline.
    """
    if name in BASELINES:
        return dict(_BASELINE_CLASSES[name][1])
    from adaptim.registry import get

    info = get(name)
    kw: dict[str, Any] = {}
    for key, p in inspect.signature(info.cls.__init__).parameters.items():
        if key in ("self", "params", "lr") or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.default is inspect.Parameter.empty and key in dict(info.test_kwargs or {}):
            kw[key] = info.test_kwargs[key]
        elif key == "momentum" and p.default == 0:
            kw[key] = 0.9
    return kw


def make_optimizer(name: str, params: Sequence[torch.nn.Parameter], lr: float | None) -> Any:
    """Construct the optimizer ``name`` over ``params`` with learning rate ``lr`` (else its defaults)
    and :func:`bench_kwargs`."""
    kw: dict[str, Any] = bench_kwargs(name)
    if lr is not None:
        kw["lr"] = lr
    if name in _BASELINE_CLASSES:
        return _BASELINE_CLASSES[name][0](params, **kw)
    from adaptim.registry import get

    return get(name).cls(params, **kw)

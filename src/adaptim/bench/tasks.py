"""The bench's tasks: small, real, offline problems that each train in seconds on one CPU thread.

A :class:`Task` describes a problem (metric, target, default length, how to pick learning rates) and
builds a :class:`Problem` for one seed: the parameters, a minibatch loss for each step and an evaluation
of the task's metric. The runner (:mod:`adaptim.bench.runner`) owns the training loop, so every task is
trained the same way: ``opt.step(closure)`` with a closure that zeroes the gradients, computes the loss
of the step's minibatch, back-propagates and returns the loss.

Tasks (``adaptim list`` prints them):

* ``rosenbrock``, ``beale``, ``rastrigin``: 2-D test functions; metric: distance to the global minimizer.
  Their trajectories are stored and drawn over the function's contours.
* ``diffgrad-f1``, ``diffgrad-f2``, ``diffgrad-f3``: the three 1-D non-convex functions of diffGrad's
  analysis notebook (Dubey et al., arXiv:1909.11015; github.com/shivram1987/diffGrad,
  ``diffGrad_analytical.ipynb``), given there by their gradients; x0 = -1, 300 steps; metric: distance
  to the global minimizer.
* ``noisy-quadratic``: the noisy quadratic model of Zhang et al. (NeurIPS 2019, arXiv:1907.04164):
  curvatures ``h_i = 1/i``, gradient noise with covariance ``H / B``; metric: the exact loss
  ``0.5 sum h_i x_i^2`` of the last iterate (its mean over seeds estimates the expected loss).
* ``digits-logreg``: L2-regularised multinomial logistic regression on scikit-learn's bundled
  ``digits``; metric: gap of the full training objective to its optimum found by L-BFGS.
* ``fmnist-mlp``, ``fmnist-cnn``: an MLP and a small CNN on Fashion-MNIST (Debian package
  ``dataset-fashion-mnist``); metric: test accuracy; target: a test accuracy to reach.
* ``charlm``: a tiny character-level transformer on the King James Bible (Debian ``bible-kjv``);
  metric: validation bits per character.

The neural-network tasks also give a :class:`HessianProbe`: the first layer's weight and a fixed
probe batch of training data, on which the runner measures ``R_med`` at the end of a run (a
diagnostic: :func:`adaptim.bench.diagnostics.r_med`).
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import math
import os
import shutil
import struct
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from adaptim.bench.diagnostics import r_med

__all__ = [
    "TASKS",
    "DataMissing",
    "HessianProbe",
    "Problem",
    "Task",
    "first_layer_weight",
    "load_fashion_mnist",
    "load_idx",
    "load_text",
    "rmed_method",
]

# A run *learned* when it closed at least this fraction of the gap between its task's trivial
# baseline (:meth:`Task.baseline`) and the best possible value; otherwise it "did not learn", however
# long it ran without diverging (a network at chance accuracy, a point that barely moved).
LEARN_FRACTION = 0.05

FMNIST_DIR_ENV = "ADAPTIM_FASHION_MNIST_DIR"
FMNIST_DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
FMNIST_HINT = (
    "install it with `sudo apt-get install dataset-fashion-mnist` (or `bash dev.sh bench`), "
    f"or point ${FMNIST_DIR_ENV} at a folder holding the four IDX files"
)
TEXT_ENV = "ADAPTIM_CHARLM_TEXT"
TEXT_HINT = (
    "install it with `sudo apt-get install bible-kjv` (or `bash dev.sh bench`), "
    f"or point ${TEXT_ENV} at a plain-text file"
)


#: run lengths of the bench (``adaptim bench --quick``, the default, ``--long``)
LENGTHS = ("quick", "default", "long")


def check_length(length: str) -> None:
    if length not in LENGTHS:
        raise ValueError(f"length must be one of {', '.join(LENGTHS)}, got {length!r}")


def _accumulate_grad(x: torch.Tensor, g: torch.Tensor) -> None:
    """``x.grad += g`` (set when there is none), as ``backward()`` accumulates."""
    if x.grad is None:
        x.grad = g
    else:
        x.grad.add_(g)


class DataMissing(RuntimeError):
    """A task's data is not installed; the message says how to install it."""


# -- problems --------------------------------------------------------------------------------------


# R_med's Hessian diagonal: exact up to this many weights (one Hessian-vector product each), else
# Hutchinson's estimate from RMED_SAMPLES Rademacher vectors drawn from RMED_SEED (the same vectors
# for every run of a task, so that its optimizers are measured alike).
RMED_EXACT_MAX = 4096
RMED_SAMPLES = 16
RMED_SEED = 0


def rmed_method(n_weights: int) -> str:
    """How :meth:`HessianProbe.r_med` computes the Hessian diagonal of a weight of ``n_weights``
    entries: ``"exact"`` or ``"hutchinson"``."""
    return "exact" if n_weights <= RMED_EXACT_MAX else "hutchinson"


@dataclass(frozen=True)
class HessianProbe:
    """Where to measure a network's ``R_med``: ``loss(model, batch)`` on a fixed probe ``batch`` (the
    same for every seed and optimizer), over one weight tensor ``weight`` (named ``name`` in
    ``model``), in the argument order of :func:`adaptim.bench.diagnostics.r_med`."""

    model: nn.Module
    loss: Callable[[nn.Module, Any], torch.Tensor]
    batch: Any
    weight: nn.Parameter
    name: str

    def r_med(self) -> float:
        """``R_med`` (Jiang, Malik & Li, NeurIPS 2023, arXiv:2211.02254) of ``weight`` on the probe
        batch at the model's current parameters, by :func:`rmed_method`; ``inf`` when the diagonal's
        median is zero (e.g. most of the layer's units dead on the probe).

        Puts the model in the default memory format first (torch.func's vmap cannot query a
        channels-last tensor's layout): the probe comes after training, and the values are the
        same in either layout."""
        self.model.to(memory_format=torch.contiguous_format)
        batch = self.batch
        if isinstance(batch, tuple):
            batch = tuple(b.contiguous() if isinstance(b, torch.Tensor) else b for b in batch)
        return r_med(
            self.model,
            self.loss,
            batch,
            params=[self.weight],
            method=rmed_method(self.weight.numel()),
            samples=RMED_SAMPLES,
            generator=torch.Generator().manual_seed(RMED_SEED),
        )


@dataclass
class Problem:
    """One seeded instance of a task.

    ``loss(step)`` returns the (minibatch) training loss at ``step`` as a scalar tensor; the same step
    always gives the same minibatch, so a closure may be called several times per step.
    ``evaluate()`` returns the task metric for the current parameters; ``position()`` (optional)
    returns the point to record for trajectory plots; ``probe`` (neural networks) where to measure
    ``R_med``.
    """

    params: list[torch.nn.Parameter]
    loss: Callable[[int], torch.Tensor]
    evaluate: Callable[[], float]
    position: Callable[[], list[float]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    probe: HessianProbe | None = None
    # Optional: computes the loss at ``step`` and writes every parameter's ``.grad`` itself,
    # without autograd; returns the loss (detached). The runner's closure calls it instead of
    # ``loss(step).backward()``. The test functions have one: there, autograd's graph over a
    # handful of scalar ops costs more than the optimizer step.
    backward: Callable[[int], torch.Tensor] | None = None


PROBE_SEED = 777  # the probe batch's random source: one batch for every seed and optimizer


def first_layer_weight(model: nn.Module, layer: nn.Module) -> tuple[str, nn.Parameter]:
    """The largest parameter of at least two dimensions of ``layer`` (a submodule of ``model``; the
    first of a tie), and its name in ``model``: the first layer's weight matrix (or kernel)."""
    best: tuple[str, nn.Parameter] | None = None
    for name, p in layer.named_parameters():
        if p.dim() >= 2 and (best is None or p.numel() > best[1].numel()):
            best = (name, p)
    if best is None:
        raise ValueError(f"layer {type(layer).__name__} has no weight of two dimensions or more")
    prefix = next(n for n, m in model.named_modules() if m is layer)
    return (f"{prefix}.{best[0]}" if prefix else best[0]), best[1]


@dataclass(frozen=True)
class Task:
    """What the bench needs to know about a task.

    ``lower_is_better`` orients ``metric``; ``target`` is the value whose first crossing gives the
    steps and seconds to target. ``lr_hint`` says where to center an optimizer's learning-rate grid:
    ``"default"`` (its default lr), ``"rosenbrock"`` or ``"quadratic"`` (its registry ``tuned_lr``
    for that problem), times ``lr_scale``. ``schedule`` is ``"constant"`` or ``"cosine"`` (annealed to zero over the run).
    ``seconds`` is the measured cost of one run of ``steps`` steps on one thread of the reference
    machine, in a warm worker, R_med included (for the estimate printed before a run and the
    progress bar's ETA; measured 2026-12-06 on this project's 2-core machine, the mean of AdamW,
    AdaBelief, Adan and SGDP).

    ``chance`` is the accuracy of guessing (classification tasks), the trivial baseline a run must
    beat to have learned; without it the baseline is the run's initial metric. ``ideal`` is the best
    possible metric value (0 for the distances, losses and gaps here, 1 for an accuracy).
    """

    name: str
    description: str
    metric: str
    lower_is_better: bool
    target: float
    steps: int
    quick_steps: int
    eval_every: int
    build: Callable[..., Problem]
    lr_hint: str = "default"
    lr_scale: float = 1.0
    schedule: str = "constant"
    seconds: float = 1.0
    group: str = "training"  # "2d" | "1d" | "training"
    log_every: int = 0  # 0: steps // 50
    # Raises DataMissing when the data, or a package the task needs, is absent.
    requires: Callable[[], None] | None = None
    chance: float | None = None
    ideal: float = 0.0
    # Neural networks: the weight whose R_med the runner measures (:class:`HessianProbe`) and its
    # probe batch, described for the report, and the weight's shape (which decides how its Hessian
    # diagonal is computed: :func:`rmed_method`); None: no R_med.
    probe_layer: str | None = None
    probe_shape: tuple[int, ...] = ()
    # Successive halving: the lr search runs on short runs of this fraction of the steps (the
    # schedule compressed to them), then its best lrs at full length (runner.Group). 1: the search
    # runs at full length (the cheap tasks, and the test functions, whose constant-lr runs a short
    # run would not predict).
    search_fraction: float = 1.0
    setup_seconds: float = 0.0  # the part of ``seconds`` that does not grow with the steps
    # ``adaptim bench --long``: steps long enough to reach the regime where optimizers differ
    # (None: ``steps``, the tasks that are there already)
    long_steps: int | None = None
    long_target: float | None = None  # ... and their target (None: ``target``)

    def steps_for(self, length: str) -> int:
        """The steps of a run of ``length`` ``"quick"``, ``"default"`` or ``"long"``."""
        check_length(length)
        if length == "quick":
            return self.quick_steps
        if length == "long" and self.long_steps is not None:
            return self.long_steps
        return self.steps

    def target_for(self, length: str) -> float:
        """The target of a run of ``length`` ``"quick"``, ``"default"`` or ``"long"``."""
        check_length(length)
        return (
            self.long_target if length == "long" and self.long_target is not None else self.target
        )

    def run_seconds(self, steps: int) -> float:
        """Estimated one-thread seconds of a run of ``steps`` steps: ``setup_seconds`` (building the
        problem, the final evaluation, R_med) plus the rest of ``seconds`` in proportion."""
        return self.setup_seconds + (self.seconds - self.setup_seconds) * steps / self.steps

    def missing_data(self) -> str | None:
        """``None`` when the task can run, else a message saying what is missing (data or a package)
        and how to get it."""
        if self.requires is None:
            return None
        try:
            self.requires()
        except DataMissing as err:
            return str(err)
        return None

    def better(self, a: float, b: float) -> bool:
        """Whether metric value ``a`` is strictly better than ``b`` (NaN is never better)."""
        if math.isnan(a):
            return False
        if math.isnan(b):
            return True
        return a < b if self.lower_is_better else a > b

    def baseline(self, initial: float | None) -> float | None:
        """The trivial baseline of a run that started at ``initial``: chance accuracy for a
        classification task, else the initial metric (``None`` when unknown)."""
        if self.chance is not None:
            return self.chance
        if initial is None or not math.isfinite(initial):
            return None
        return initial

    def learned(self, initial: float | None, final: float | None) -> bool:
        """Whether a run that went from ``initial`` to ``final`` learned: it closed more than
        ``LEARN_FRACTION`` of the gap from the trivial baseline to the ideal value.

        A non-finite ``final`` did not learn; an unknown baseline (an old run without its initial
        metric) gives the benefit of the doubt.
        """
        if final is None or not math.isfinite(final):
            return False
        base = self.baseline(initial)
        if base is None:
            return True
        gap = abs(base - self.ideal)
        progress = base - final if self.lower_is_better else final - base
        if gap == 0.0:  # started at the ideal: nothing to learn, nothing to lose
            return progress >= 0.0
        return progress > LEARN_FRACTION * gap

    def reached(self, value: float) -> bool:
        if math.isnan(value):
            return False
        return value <= self.target if self.lower_is_better else value >= self.target


# -- 2-D and 1-D test functions --------------------------------------------------------------------


def rosenbrock(x: torch.Tensor) -> torch.Tensor:
    return (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2


def beale(x: torch.Tensor) -> torch.Tensor:
    a, b = x[0], x[1]
    return (1.5 - a + a * b) ** 2 + (2.25 - a + a * b**2) ** 2 + (2.625 - a + a * b**3) ** 2


def rastrigin(x: torch.Tensor) -> torch.Tensor:
    return 20 + (x**2 - 10 * torch.cos(2 * math.pi * x)).sum()


# (function, start, minimizer, plot box (xmin, xmax, ymin, ymax))
FUNCTIONS_2D: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], tuple, tuple, tuple]] = {
    "rosenbrock": (rosenbrock, (-1.5, 2.0), (1.0, 1.0), (-2.0, 2.0, -1.0, 3.0)),
    "beale": (beale, (1.0, 1.5), (3.0, 0.5), (-0.5, 4.0, -1.0, 2.0)),
    "rastrigin": (rastrigin, (-2.2, 2.4), (0.0, 0.0), (-3.0, 3.0, -3.0, 3.0)),
}


def diffgrad_f1(x: torch.Tensor) -> torch.Tensor:
    # F1'(x) = 2x + 0.6 (x <= 0), 2x - 0.4 (x > 0): global min -0.3, local min 0.2.
    return torch.where(x <= 0, (x + 0.3) ** 2, (x - 0.2) ** 2 + 0.05)


def diffgrad_f2(x: torch.Tensor) -> torch.Tensor:
    # F2'(x) = -40 (x <= -0.9), x cos 8x + sin 8x + 3x^2 (x > -0.9); continuous at -0.9.
    def smooth(z):
        return z * torch.sin(8 * z) / 8 - 7 * torch.cos(8 * z) / 64 + z**3

    at = smooth(torch.tensor(-0.9, dtype=x.dtype))
    return torch.where(x <= -0.9, at - 40 * (x + 0.9), smooth(x))


def diffgrad_f3(x: torch.Tensor) -> torch.Tensor:
    # F3'(x) = 2x (|x| >= 0.5), +-1 on 0.4 < |x| < 0.5, -+7/8 on |x| < 0.4: global min 0, local +-0.5.
    a = x.abs()
    inner = torch.where(a > 0.4, 0.25 + (0.5 - a), 0.35 - 7 / 8 * (0.4 - a))
    return torch.where(a >= 0.5, x**2, inner)


# The same functions with their gradients in closed form, on Python floats: ``f(xs) -> (value,
# gradient)``. The bench trains on these (:attr:`Problem.backward`): a step on them costs a few
# microseconds instead of autograd's 150-400 for the graph of the tensor versions above, which
# remain the definitions (plots, minimizers) and the tests' reference (equal to 1e-12).


def _rosenbrock_grad(xs: list[float]) -> tuple[float, list[float]]:
    a, b = xs
    r = b - a * a
    return (1 - a) ** 2 + 100 * r**2, [-2 * (1 - a) - 400 * a * r, 200 * r]


def _beale_grad(xs: list[float]) -> tuple[float, list[float]]:
    a, b = xs
    t1, t2, t3 = 1.5 - a + a * b, 2.25 - a + a * b**2, 2.625 - a + a * b**3
    value = t1**2 + t2**2 + t3**2
    da = 2 * (t1 * (b - 1) + t2 * (b**2 - 1) + t3 * (b**3 - 1))
    db = 2 * a * (t1 + 2 * b * t2 + 3 * b**2 * t3)
    return value, [da, db]


def _rastrigin_grad(xs: list[float]) -> tuple[float, list[float]]:
    value = 20 + sum(x * x - 10 * math.cos(2 * math.pi * x) for x in xs)
    return value, [2 * x + 20 * math.pi * math.sin(2 * math.pi * x) for x in xs]


def _diffgrad_f1_grad(xs: list[float]) -> tuple[float, list[float]]:
    (x,) = xs
    if x <= 0:
        return (x + 0.3) ** 2, [2 * (x + 0.3)]
    return (x - 0.2) ** 2 + 0.05, [2 * (x - 0.2)]


def _diffgrad_f2_grad(xs: list[float]) -> tuple[float, list[float]]:
    (x,) = xs
    if x <= -0.9:
        z = -0.9
        at = z * math.sin(8 * z) / 8 - 7 * math.cos(8 * z) / 64 + z**3
        return at - 40 * (x + 0.9), [-40.0]
    value = x * math.sin(8 * x) / 8 - 7 * math.cos(8 * x) / 64 + x**3
    return value, [x * math.cos(8 * x) + math.sin(8 * x) + 3 * x**2]


def _diffgrad_f3_grad(xs: list[float]) -> tuple[float, list[float]]:
    (x,) = xs
    a, sign = abs(x), (x > 0) - (x < 0)
    if a >= 0.5:
        return x * x, [2 * x]
    if a > 0.4:
        return 0.25 + (0.5 - a), [-float(sign)]
    return 0.35 - 7 / 8 * (0.4 - a), [7 / 8 * sign]


GRADIENTS: dict[str, Callable[[list[float]], tuple[float, list[float]]]] = {
    "rosenbrock": _rosenbrock_grad,
    "beale": _beale_grad,
    "rastrigin": _rastrigin_grad,
    "diffgrad-f1": _diffgrad_f1_grad,
    "diffgrad-f2": _diffgrad_f2_grad,
    "diffgrad-f3": _diffgrad_f3_grad,
}


def _global_min_1d(fn: Callable[[torch.Tensor], torch.Tensor], lo: float, hi: float) -> float:
    xs = torch.linspace(lo, hi, 200_001, dtype=torch.float64)
    return float(xs[fn(xs).argmin()])


FUNCTIONS_1D: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], float]] = {
    "diffgrad-f1": (diffgrad_f1, -0.3),
    "diffgrad-f2": (diffgrad_f2, _global_min_1d(diffgrad_f2, -0.9, 2.0)),
    "diffgrad-f3": (diffgrad_f3, 0.0),
}


def _build_function(name: str, seed: int, steps: int, dim: int) -> Problem:
    if dim == 2:
        fn, start, minimizer, _ = FUNCTIONS_2D[name]
        x0 = torch.tensor(start, dtype=torch.float64)
        target = torch.tensor(minimizer, dtype=torch.float64)
        jitter = 0.1
    else:
        fn, xmin = FUNCTIONS_1D[name]
        x0 = torch.tensor([-1.0], dtype=torch.float64)
        target = torch.tensor([xmin], dtype=torch.float64)
        jitter = 0.05
    if seed:  # seed 0 starts at the canonical point; other seeds nearby
        gen = torch.Generator().manual_seed(seed)
        x0 = x0 + jitter * torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    x = nn.Parameter(x0)
    f = (lambda z: fn(z)) if dim == 2 else (lambda z: fn(z).sum())
    value_and_grad = GRADIENTS[name]
    target_xs = target.tolist()

    def backward(step: int) -> torch.Tensor:
        xs = x.tolist()
        try:
            value, grad = value_and_grad(xs)
        except (OverflowError, ValueError):  # |x| ~ 1e77, where tensors give inf: diverged
            value, grad = math.inf, [math.nan] * len(xs)
        _accumulate_grad(x, torch.tensor(grad, dtype=x.dtype))
        return torch.tensor(value, dtype=x.dtype)

    return Problem(
        params=[x],
        loss=lambda step: f(x),
        evaluate=lambda: math.dist(x.tolist(), target_xs),  # every step: floats, not tensors
        position=lambda: x.detach().tolist(),
        backward=backward,
    )


# -- noisy quadratic model -------------------------------------------------------------------------

NQM_DIM = 100
NQM_BATCH = 4


def _build_nqm(seed: int, steps: int) -> Problem:
    h = 1.0 / torch.arange(1, NQM_DIM + 1, dtype=torch.float64)
    noise_std = (h / NQM_BATCH).sqrt()
    x = nn.Parameter(torch.ones(NQM_DIM, dtype=torch.float64))
    gen = torch.Generator().manual_seed(1000 + seed)
    noise = torch.randn(steps, NQM_DIM, generator=gen, dtype=torch.float64) * noise_std

    def loss(step: int) -> torch.Tensor:
        # Gradient h * x + noise: the minibatch gradient of the noisy quadratic model.
        return 0.5 * (h * x**2).sum() + (noise[min(step, steps - 1)] * x).sum()

    def backward(step: int) -> torch.Tensor:
        with torch.no_grad():
            e = noise[min(step, steps - 1)]
            hx = h * x
            value = torch.dot(0.5 * hx + e, x)
            _accumulate_grad(x, hx.add_(e))
        return value

    return Problem(
        params=[x],
        loss=loss,
        evaluate=lambda: float(0.5 * (h * x.detach() ** 2).sum()),
        backward=backward,
    )


# -- logistic regression on digits -----------------------------------------------------------------

LOGREG_L2 = 1e-3
LOGREG_BATCH = 64


def _require_digits() -> None:
    # Without them a run would fail on its import: the task is skipped instead, saying why.
    modules = {"scipy": "scipy", "sklearn": "scikit-learn"}
    missing = [pkg for mod, pkg in modules.items() if importlib.util.find_spec(mod) is None]
    if missing:
        raise DataMissing(
            f'needs {" and ".join(missing)} (not installed): pip install "adaptim[bench]"'
        )


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[torch.Tensor, torch.Tensor, float]:
    """Standardised ``digits`` features, labels and the optimum of the regularised objective."""
    from scipy.optimize import minimize
    from scipy.special import logsumexp
    from sklearn.datasets import load_digits

    data = load_digits()
    x = data.data.astype(np.float64)
    x = (x - x.mean(0)) / (x.std(0) + 1e-8)
    y = data.target.astype(np.int64)
    (n, d), k = x.shape, 10
    onehot = np.eye(k)[y]

    def fg(theta: np.ndarray) -> tuple[float, np.ndarray]:
        # The objective of _logreg_objective and its gradient, in numpy (float64).
        w, b = theta[: d * k].reshape(d, k), theta[d * k :]
        z = x @ w + b
        lse = logsumexp(z, axis=1)
        f = float((lse - (z * onehot).sum(1)).mean() + 0.5 * LOGREG_L2 * (w**2).sum())
        g = (np.exp(z - lse[:, None]) - onehot) / n
        return f, np.concatenate([(x.T @ g + LOGREG_L2 * w).ravel(), g.sum(0)])

    with _single_threaded_blas():
        res = minimize(
            fg,
            np.zeros(d * k + k),
            jac=True,
            method="L-BFGS-B",
            options={"maxiter": 5000, "gtol": 1e-10, "ftol": 1e-15},
        )
    return torch.from_numpy(x), torch.from_numpy(y), float(res.fun)


def _single_threaded_blas():
    """numpy's BLAS on one thread (threads fight each other on a busy machine: 30x slower)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(limits=1)


def _logreg_objective(w, b, x, y) -> torch.Tensor:
    return F.cross_entropy(x @ w + b, y) + 0.5 * LOGREG_L2 * (w**2).sum()


def _build_logreg(seed: int, steps: int) -> Problem:
    x, y, optimum = _digits()
    x32 = x.float()
    gen = torch.Generator().manual_seed(seed)
    w = nn.Parameter(0.01 * torch.randn(x.shape[1], 10, generator=gen))
    b = nn.Parameter(torch.zeros(10))
    order = _batches(len(y), LOGREG_BATCH, steps, gen)

    def loss(step: int) -> torch.Tensor:
        idx = order[step]
        return _logreg_objective(w, b, x32[idx], y[idx])

    def evaluate() -> float:
        with torch.no_grad():
            full = _logreg_objective(w.double(), b.double(), x, y)
        return max(float(full) - optimum, 0.0)

    return Problem(params=[w, b], loss=loss, evaluate=evaluate)


def _batches(n: int, batch: int, steps: int, gen: torch.Generator) -> torch.Tensor:
    """Minibatch indices for ``steps`` steps: epochs of seeded permutations, ``(steps, batch)``."""
    per_epoch = n // batch
    epochs = -(-steps // per_epoch)
    perms = [torch.randperm(n, generator=gen)[: per_epoch * batch] for _ in range(epochs)]
    return torch.cat(perms).view(-1, batch)[:steps]


# -- Fashion-MNIST ---------------------------------------------------------------------------------

_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def load_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST format, optionally gzipped) into a numpy array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise ValueError(f"{path}: not an IDX file")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=_IDX_TYPES[raw[2]], offset=4 + 4 * ndim)
    if data.size != math.prod(dims):
        raise ValueError(f"{path}: expected {math.prod(dims)} values, found {data.size}")
    return data.reshape(dims)


def _fmnist_dir() -> Path:
    return Path(os.environ.get(FMNIST_DIR_ENV) or FMNIST_DEFAULT_DIR)


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


_FMNIST_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}


def _require_fmnist() -> None:
    folder = _fmnist_dir()
    missing = [s for s in _FMNIST_FILES.values() if _find_idx(folder, s) is None]
    if missing:
        raise DataMissing(
            f"Fashion-MNIST not found in {folder} (missing {missing[0]}): {FMNIST_HINT}"
        )


@functools.lru_cache(maxsize=2)
def load_fashion_mnist(folder: str | None = None) -> dict[str, torch.Tensor]:
    """Fashion-MNIST as uint8 images ``(n, 28, 28)`` and int64 labels, from IDX files."""
    root = Path(folder) if folder else _fmnist_dir()
    out = {}
    for key, stem in _FMNIST_FILES.items():
        path = _find_idx(root, stem)
        if path is None:
            raise DataMissing(f"Fashion-MNIST not found in {root} (missing {stem}): {FMNIST_HINT}")
        arr = load_idx(path)
        out[key] = torch.from_numpy(arr.astype(np.int64) if key.endswith("y") else arr.copy())
    return out


FMNIST_BATCH = 64
FMNIST_EVAL_SUBSET = 1000  # test images used for the metric during training; the final one uses all
# Training images of the R_med probe, by model: few for the CNN, whose kernel (72 weights) gets an
# exact Hessian diagonal, 72 Hessian-vector products over the batch (0.37 s at 32 images, 11% of a
# run's CPU time on one thread; 0.19 s, 6%, at 16); the MLP's weight (100,352 entries) gets
# Hutchinson's estimate, 0.04 s.
FMNIST_PROBE = {"mlp": 64, "cnn": 16}


def fmnist_model(model_kind: str) -> nn.Module:
    """The Fashion-MNIST task's network (``"mlp"`` or ``"cnn"``), initialised from torch's global
    random source."""
    if model_kind == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))
    # pool, then ReLU: the same function and gradients as ReLU then pool (ReLU is monotone and
    # max-pooling picks the same element), on a quarter of the elements
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.MaxPool2d(2),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 7 * 7, 10),
    )
    # channels-last: half the time per step of the default layout on one CPU thread (max-pool
    # and the first convolution dominate), the same model; optimizers see channels-last weights
    return model.to(memory_format=torch.channels_last)


def _build_fmnist(seed: int, steps: int, model_kind: str) -> Problem:
    data = load_fashion_mnist(str(_fmnist_dir()))
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = fmnist_model(model_kind)
    train_x, train_y = data["train_x"], data["train_y"]
    test_x, test_y = data["test_x"], data["test_y"]
    order = _batches(len(train_y), FMNIST_BATCH, steps, gen)
    sub = torch.randperm(len(test_y), generator=torch.Generator().manual_seed(0))[
        :FMNIST_EVAL_SUBSET
    ]

    def prep(images: torch.Tensor) -> torch.Tensor:
        x = ((images.float() / 255.0) - 0.2860).div_(0.3530).unsqueeze(1)
        return x if model_kind == "mlp" else x.contiguous(memory_format=torch.channels_last)

    def loss(step: int) -> torch.Tensor:
        idx = order[step]
        return F.cross_entropy(model(prep(train_x[idx])), train_y[idx])

    def accuracy(idx: torch.Tensor | None) -> float:
        xs, ys = (test_x, test_y) if idx is None else (test_x[idx], test_y[idx])
        correct = 0
        with torch.no_grad():
            for i in range(0, len(ys), 500):
                correct += int((model(prep(xs[i : i + 500])).argmax(1) == ys[i : i + 500]).sum())
        return correct / len(ys)

    probe_idx = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(PROBE_SEED))
    probe_idx = probe_idx[: FMNIST_PROBE[model_kind]]
    name, weight = first_layer_weight(model, model[1] if model_kind == "mlp" else model[0])
    probe = HessianProbe(
        model=model,
        loss=lambda m, batch: F.cross_entropy(m(batch[0]), batch[1]),
        batch=(prep(train_x[probe_idx]), train_y[probe_idx]),
        weight=weight,
        name=name,
    )
    problem = Problem(
        params=list(model.parameters()), loss=loss, evaluate=lambda: accuracy(sub), probe=probe
    )
    problem.extra["final_evaluate"] = lambda: accuracy(None)
    return problem


# -- character-level language model ----------------------------------------------------------------

CHARLM_CONTEXT = 32
CHARLM_BATCH = 16
CHARLM_WIDTH = 48
CHARLM_LAYERS = 2
CHARLM_HEADS = 4
CHARLM_VALID_BATCHES = 8
CHARLM_PROBE = 8  # training windows of the R_med probe


def _require_text() -> None:
    path = os.environ.get(TEXT_ENV)
    if path:
        if not Path(path).is_file():
            raise DataMissing(f"the text file {path} (${TEXT_ENV}) does not exist: {TEXT_HINT}")
        return
    if shutil.which("bible") is None:
        raise DataMissing(
            f"the King James Bible text (`bible` command) is not installed: {TEXT_HINT}"
        )


@functools.lru_cache(maxsize=2)
def load_text(path: str | None = None) -> str:
    """The charlm corpus: a text file, or the King James Bible printed by Debian's ``bible`` command
    (``bible -f Gen1:1-Rev22:21``, one verse a line) with the verse references removed."""
    path = path or os.environ.get(TEXT_ENV)
    if path:
        if not Path(path).is_file():
            raise DataMissing(f"the text file {path} does not exist: {TEXT_HINT}")
        return Path(path).read_text(encoding="utf-8", errors="replace")
    exe = shutil.which("bible")
    if exe is None:
        raise DataMissing(
            f"the King James Bible text (`bible` command) is not installed: {TEXT_HINT}"
        )
    out = subprocess.run(
        [exe, "-f", "Gen1:1-Rev22:21"], capture_output=True, text=True, check=True
    ).stdout
    # Each line is "Ge1:1 In the beginning ..."; keep the verse text.
    lines = [line.split(" ", 1)[1] if " " in line else "" for line in out.splitlines()]
    return "\n".join(line for line in lines if line) + "\n"


class TinyCharTransformer(nn.Module):
    """A pre-norm decoder-only transformer over characters (learned positions, causal attention)."""

    def __init__(self, vocab: int, width: int, layers: int, heads: int, context: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.pos = nn.Parameter(torch.zeros(context, width))
        layer = nn.TransformerEncoderLayer(
            width, heads, 4 * width, dropout=0.0, batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab)
        mask = torch.triu(torch.full((context, context), float("-inf")), diagonal=1)
        self.register_buffer("mask", mask, persistent=False)
        nn.init.normal_(self.pos, std=0.02)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        t = ids.shape[1]
        h = self.embed(ids) + self.pos[:t]
        h = self.blocks(h, mask=self.mask[:t, :t], is_causal=True)
        return self.head(self.norm(h))


@functools.lru_cache(maxsize=2)
def _encoded_text(path: str | None) -> tuple[torch.Tensor, int]:
    text = load_text(path)
    chars = sorted(set(text))
    lut = np.zeros(max(map(ord, chars)) + 1, dtype=np.uint8)
    for i, c in enumerate(chars):
        lut[ord(c)] = i
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    return torch.from_numpy(lut[codes].astype(np.int64)), len(chars)


def _build_charlm(seed: int, steps: int) -> Problem:
    ids, vocab = _encoded_text(os.environ.get(TEXT_ENV) or None)
    n_valid = max(len(ids) // 10, CHARLM_CONTEXT + 2)
    train, valid = ids[:-n_valid], ids[-n_valid:]
    ctx = CHARLM_CONTEXT
    torch.manual_seed(seed)
    model = TinyCharTransformer(vocab, CHARLM_WIDTH, CHARLM_LAYERS, CHARLM_HEADS, ctx)
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(train) - ctx - 1, (steps, CHARLM_BATCH), generator=gen)
    vgen = torch.Generator().manual_seed(12345)
    vstarts = torch.randint(
        0, len(valid) - ctx - 1, (CHARLM_VALID_BATCHES * CHARLM_BATCH,), generator=vgen
    )
    offsets = torch.arange(ctx + 1)
    vwin = valid[vstarts[:, None] + offsets]

    def loss(step: int) -> torch.Tensor:
        win = train[starts[step][:, None] + offsets]
        logits = model(win[:, :-1])
        return F.cross_entropy(logits.reshape(-1, vocab), win[:, 1:].reshape(-1))

    def bits_per_char() -> float:
        with torch.no_grad():
            total = 0.0
            for i in range(0, len(vwin), 64):
                w = vwin[i : i + 64]
                logits = model(w[:, :-1])
                total += float(
                    F.cross_entropy(
                        logits.reshape(-1, vocab), w[:, 1:].reshape(-1), reduction="sum"
                    )
                )
        return total / (vwin.shape[0] * ctx) / math.log(2)

    # The first layer is the first transformer block: the embedding before it is a lookup table
    # whose rows of characters absent from the probe have a zero Hessian diagonal.
    pgen = torch.Generator().manual_seed(PROBE_SEED)
    probe_win = train[
        torch.randint(0, len(train) - ctx - 1, (CHARLM_PROBE,), generator=pgen)[:, None] + offsets
    ]
    name, weight = first_layer_weight(model, model.blocks.layers[0])

    def probe_loss(m: nn.Module, win: torch.Tensor) -> torch.Tensor:
        # The math kernel of attention: the fused CPU one has no second derivative.
        with sdpa_kernel(SDPBackend.MATH):
            logits = m(win[:, :-1])
        return F.cross_entropy(logits.reshape(-1, vocab), win[:, 1:].reshape(-1))

    probe = HessianProbe(model, probe_loss, probe_win, weight, name)
    return Problem(params=list(model.parameters()), loss=loss, evaluate=bits_per_char, probe=probe)


# -- the task table --------------------------------------------------------------------------------


# Where a task's best lrs sit relative to the optimizer's usual lr (the grid's centre is multiplied by
# this). Measured with the default bench of 31 optimizers (version 1 of the tasks, all at 1 except
# the NN tasks at 3 and digits at 10): the best lr was at the grid's upper edge for most optimizers
# on beale, digits-logreg, the Fashion-MNIST tasks and charlm (short runs favour large steps), and at
# the lower edge on diffgrad-f2 (the global minimum is 0.1 from the start). A second run (version 2)
# put fmnist-mlp at 10 and found it too high (17 of 31 at the lower edge): 5.
# The neural networks' lr search runs on a quarter of their steps (successive halving, issue 11):
# the search costs about a quarter as much, and the lrs it promotes are decided at full length.
SEARCH_FRACTION = 0.25

LR_SCALE = {
    "beale": 3.0,
    "diffgrad-f2": 0.3,
    "digits-logreg": 30.0,
    "fmnist-mlp": 5.0,
    "fmnist-cnn": 10.0,
    "charlm": 10.0,
}


def _task_list() -> list[Task]:
    tasks = []
    for name, (_, start, minimizer, _) in FUNCTIONS_2D.items():
        tasks.append(
            Task(
                name=name,
                description=f"2-D {name.capitalize()} function from {start}: distance to the minimizer "
                f"{minimizer}",
                metric="distance to minimizer",
                lower_is_better=True,
                target=0.05,
                steps=1000,
                quick_steps=500,
                eval_every=1,
                log_every=10,
                build=functools.partial(_build_function, name, dim=2),
                lr_hint="rosenbrock",
                lr_scale=LR_SCALE.get(name, 1.0),
                seconds=0.19,
                group="2d",
            )
        )
    for name, (_, xmin) in FUNCTIONS_1D.items():
        tasks.append(
            Task(
                name=name,
                description=f"diffGrad's 1-D non-convex function {name[-2:].upper()} from x0=-1:"
                f" distance to the global minimizer x={xmin:.4g}",
                metric="distance to minimizer",
                lower_is_better=True,
                target=0.05,
                steps=300,
                quick_steps=300,
                eval_every=1,
                log_every=3,
                build=functools.partial(_build_function, name, dim=1),
                lr_hint="rosenbrock",
                lr_scale=LR_SCALE.get(name, 1.0),
                seconds=0.06,
                group="1d",
            )
        )
    tasks += [
        Task(
            name="noisy-quadratic",
            description=f"noisy quadratic model (h_i = 1/i, {NQM_DIM} dims, noise H/{NQM_BATCH}), "
            "loss of the last iterate",
            metric="loss",
            lower_is_better=True,
            target=0.05,
            steps=1000,
            quick_steps=500,
            eval_every=10,
            build=_build_nqm,
            lr_hint="quadratic",
            schedule="cosine",
            seconds=0.22,
        ),
        Task(
            name="digits-logreg",
            description="logistic regression on scikit-learn's digits (L2 1e-3, batch 64):"
            " gap to the L-BFGS optimum",
            metric="objective gap",
            lower_is_better=True,
            target=0.02,
            steps=300,
            quick_steps=200,
            eval_every=10,
            build=_build_logreg,
            lr_scale=LR_SCALE["digits-logreg"],
            schedule="cosine",
            seconds=0.2,
            requires=_require_digits,
        ),
        Task(
            name="fmnist-mlp",
            description="MLP 784-128-10 on Fashion-MNIST (batch 64): test accuracy",
            metric="test accuracy",
            lower_is_better=False,
            target=0.80,
            steps=400,
            quick_steps=200,
            long_steps=1600,
            long_target=0.86,
            eval_every=40,
            build=functools.partial(_build_fmnist, model_kind="mlp"),
            lr_scale=LR_SCALE["fmnist-mlp"],
            schedule="cosine",
            search_fraction=SEARCH_FRACTION,
            seconds=0.66,
            requires=_require_fmnist,
            chance=0.1,
            ideal=1.0,
            probe_layer="the first linear layer's weight (128 x 784), on "
            f"{FMNIST_PROBE['mlp']} training images",
            probe_shape=(128, 784),
        ),
        Task(
            name="fmnist-cnn",
            description="small CNN (conv 8, pool, strided conv 16, linear) on Fashion-MNIST (batch 64), "
            "test accuracy",
            metric="test accuracy",
            lower_is_better=False,
            target=0.80,
            steps=300,
            quick_steps=150,
            long_steps=1200,
            long_target=0.87,
            eval_every=60,
            build=functools.partial(_build_fmnist, model_kind="cnn"),
            lr_scale=LR_SCALE["fmnist-cnn"],
            schedule="cosine",
            search_fraction=SEARCH_FRACTION,
            seconds=1.95,
            setup_seconds=0.27,  # the final 10,000-image evaluation, R_med
            requires=_require_fmnist,
            chance=0.1,
            ideal=1.0,
            probe_layer="the first convolution's kernel (8 x 1 x 3 x 3), on "
            f"{FMNIST_PROBE['cnn']} training images",
            probe_shape=(8, 1, 3, 3),
        ),
        Task(
            name="charlm",
            description=f"character transformer ({CHARLM_LAYERS} layers, width {CHARLM_WIDTH}, context "
            f"{CHARLM_CONTEXT}) on the King James Bible: validation bits per character",
            metric="validation bits/char",
            lower_is_better=True,
            target=3.3,
            steps=300,
            quick_steps=150,
            long_steps=1200,
            long_target=2.7,
            eval_every=60,
            build=_build_charlm,
            lr_scale=LR_SCALE["charlm"],
            schedule="cosine",
            search_fraction=SEARCH_FRACTION,
            seconds=2.7,
            requires=_require_text,
            probe_layer="the first transformer block's feed-forward input weight "
            f"({4 * CHARLM_WIDTH} x {CHARLM_WIDTH}), on {CHARLM_PROBE} training windows of "
            f"{CHARLM_CONTEXT} characters",
            probe_shape=(4 * CHARLM_WIDTH, CHARLM_WIDTH),
        ),
    ]
    return tasks


TASKS: dict[str, Task] = {t.name: t for t in _task_list()}

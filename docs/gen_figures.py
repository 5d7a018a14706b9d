"""Draw each registry entry's figure for the docs: its trajectories on the bench's Rosenbrock task.

    .venv/bin/python docs/gen_figures.py            # every entry (about a minute on one core)
    .venv/bin/python docs/gen_figures.py adam adan  # some entries

Writes ``docs/figures/<name>.png`` (committed; the site build fails while a registered entry has no
figure, see ``docs/hooks.py``). Everything is deterministic: the bench's ``rosenbrock`` task at seed 0
(start (-1.5, 2), float64), its full length, and the bench's own learning-rate grid (three rates half a
decade apart around the entry's registry ``tuned_lr``); each optimizer run is the bench's own
``execute_run``, and the thick line is the rate the bench would pick (the lowest final distance to the
minimizer, a diverged run never wins). A wrapper is drawn around the bench's Adam at the same grid,
with the unwrapped Adam dashed; the adaptive-batch tools step as AdaGrad does (the full gradient of a
2-D function has no batch to grow).
"""

from __future__ import annotations

import io
import math
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.colors import LogNorm
from PIL import Image

import adaptim
from adaptim.bench.optimizers import (
    _from_registry,
    all_optimizers,
    lr_center,
    lr_grid,
    make_optimizer,
)
from adaptim.bench.runner import execute_run
from adaptim.bench.tasks import FUNCTIONS_2D, TASKS

FIGURES = Path(__file__).resolve().parent / "figures"
TASK = "rosenbrock"
#: the wrappers' inner optimizer, built as the bench builds it
WRAPPED = "adam"


def figure_path(name: str) -> Path:
    """Where the figure of registry entry ``name`` lives."""
    return FIGURES / f"{name}.png"


def _bench_run(name: str, lr: float | None, steps: int) -> tuple[np.ndarray | None, float]:
    """The seed-0 trajectory and final distance of one bench run (``None``, NaN when it diverged)."""
    result = execute_run({"task": TASK, "optimizer": name, "lr": lr, "seed": 0, "steps": steps})
    if result["status"] == "failed":
        raise RuntimeError(f"{name} at lr {lr}: {result['error']}")
    path = result["series"].get("trajectory")
    final = result["final_metric"] if result["status"] == "done" else math.nan
    return (np.asarray(path) if path else None), final


def _wrapped_run(info: Any, lr: float | None, steps: int) -> tuple[np.ndarray | None, float]:
    """The bench's loop (closure, seed 0) for ``info``'s wrapper around the bench's Adam."""
    task = TASKS[TASK]
    torch.manual_seed(0)
    problem = task.build(seed=0, steps=steps)
    opt = info.cls(make_optimizer(WRAPPED, problem.params, lr), **dict(info.test_kwargs))
    positions = [problem.position()]
    for step in range(steps):

        def closure(step: int = step) -> torch.Tensor:
            opt.zero_grad(set_to_none=True)
            loss = problem.loss(step)
            loss.backward()
            return loss

        loss = float(opt.step(closure).detach())
        if not math.isfinite(loss) or abs(loss) > 1e12:
            return np.asarray(positions), math.nan
        positions.append(problem.position())
    if hasattr(opt, "swap_average_in"):  # iterate averaging: the answer is the average
        opt.swap_average_in()
        positions.append(problem.position())
    return np.asarray(positions), float(problem.evaluate())


def _contours(ax: Any) -> None:
    fn, _start, minimizer, box = FUNCTIONS_2D[TASK]
    gx, gy = np.meshgrid(np.linspace(box[0], box[1], 160), np.linspace(box[2], box[3], 160))
    with torch.no_grad():
        z = np.maximum(fn(torch.from_numpy(np.stack([gx, gy]))).numpy(), 1e-3)
    levels = np.logspace(math.log10(z.min()), math.log10(z.max()), 16)
    ax.contour(gx, gy, z, levels=levels, cmap="Greys", linewidths=0.4, norm=LogNorm())
    ax.plot(*minimizer, "*", color="gold", ms=10, mec="k", mew=0.5, zorder=5)
    ax.set_xlim(box[0], box[1])
    ax.set_ylim(box[2], box[3])
    ax.set_xticks([])
    ax.set_yticks([])


def draw(name: str) -> Path:
    """Run the bench's lr grid for ``name`` on Rosenbrock and save its figure."""
    info = adaptim.get(name)
    task = TASKS[TASK]
    steps = task.steps
    if info.kind == "wrapper":
        center = lr_center(all_optimizers()[WRAPPED], task.lr_hint, task.lr_scale)
    else:
        opts = all_optimizers()
        # a tool (adaptive batch sizes) is an optimizer too; its grid is found the same way
        center = lr_center(opts.get(name) or _from_registry(info), task.lr_hint, task.lr_scale)

    def run(lr: float | None) -> tuple[np.ndarray | None, float]:
        if info.kind == "wrapper":
            return _wrapped_run(info, lr, steps)
        return _bench_run(name, lr, steps)

    grid = lr_grid(center)
    runs = {lr: run(lr) for lr in grid}
    finite = {lr: d for lr, (_, d) in runs.items() if math.isfinite(d)}
    best = min(finite, key=lambda lr: finite[lr]) if finite else None

    fig, ax = plt.subplots(figsize=(3.9, 3.4))
    _contours(ax)
    box = FUNCTIONS_2D[TASK][3]
    colors = ["tab:blue", "tab:red", "tab:green"]
    for color, (lr, (path, dist)) in zip(colors, runs.items(), strict=False):
        label = "default lr" if lr is None else f"lr {lr:.3g}"
        label += ": diverged" if not math.isfinite(dist) else f": dist {dist:.2g}"
        if path is None:
            continue
        clipped = np.clip(path, [box[0] - 1, box[2] - 1], [box[1] + 1, box[3] + 1])
        width, alpha = (1.6, 1.0) if lr == best else (0.8, 0.6)
        ax.plot(clipped[:, 0], clipped[:, 1], color=color, lw=width, alpha=alpha, label=label)
        ax.plot(clipped[-1, 0], clipped[-1, 1], "x", color=color, ms=5)
    if info.kind == "wrapper" and best is not None:
        path, dist = _bench_run(WRAPPED, best, steps)
        if path is not None:
            ax.plot(
                path[:, 0], path[:, 1], "--", color="k", lw=0.8, label=f"Adam alone: {dist:.2g}"
            )
    ax.plot(*FUNCTIONS_2D[TASK][1], "o", color="k", ms=3)
    ax.legend(fontsize=6, loc="lower right", framealpha=0.8)
    title = f"{name} on Rosenbrock, {steps} steps"
    if info.kind == "wrapper":
        title = f"{name}(Adam) on Rosenbrock, {steps} steps"
    ax.set_title(title + "\nthick: the bench's best lr; dist: final distance to *", fontsize=7)
    fig.tight_layout()
    FIGURES.mkdir(exist_ok=True)
    out = figure_path(name)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=72)
    plt.close(fig)
    # a 64-colour palette keeps each file near 15 KB; Pillow writes no timestamp, so the same
    # numbers give the same bytes
    image = Image.open(buffer).convert("RGB").quantize(colors=64, method=Image.Quantize.MEDIANCUT)
    image.save(out, optimize=True)
    return out


def main(names: list[str]) -> None:
    threads = torch.get_num_threads()
    try:
        for name in names or [info.name for info in adaptim.registry.registered()]:
            out = draw(name)
            print(f"{out}: {out.stat().st_size / 1024:.1f} KB")
    finally:
        torch.set_num_threads(threads)  # execute_run pins one thread


if __name__ == "__main__":
    main(sys.argv[1:])

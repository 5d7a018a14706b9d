"""The bench report: a self-contained HTML page and a Markdown summary, drawn from the database alone.

``render_report(db, out)`` writes ``out/index.html`` (every figure embedded as a base64 palette PNG,
a quarter of the size of a full-colour one), the same figures as ``out/img/*.png``, and
``out/summary.md``. The page, after its table of contents:

* **what to use when** (:func:`recommendations`): per kind of learning task, the optimizers in the
  top tie group on the most of its tasks, with their costs and the caveats of the numbers;
* mean ranks by kind of task (the 2-D and 1-D test functions are diagnostics, outside the ranks),
  next to each optimizer's cost: state bytes per parameter (32-bit, 8-bit states) and step time
  relative to fused AdamW (:mod:`adaptim.bench.costs`);
* performance profiles over the learning tasks, time to target, the costs, the claims' verdicts;
* per task, by kind and then the diagnostics: a table (rank with ties, best lr, the lrs searched,
  mean ± sd, the 95% interval of the mean, time to target, lr band, statuses; optimizers that did
  not learn marked), loss and metric curves at each optimizer's best lr (median over seeds with a
  min-max band; chance level in view), lr-sensitivity curves; the 2-D functions' trajectories over
  their contours, diffGrad's 1-D functions' x against step; for the neural networks, a diagnostic
  table of ``R_med`` (Jiang, Malik & Li, NeurIPS 2023) at each optimizer's best lr, outside the ranks;
* failed runs, and the environments the runs came from (with the load average).
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from adaptim.bench.analysis import (
    BAND_TOLERANCE,
    DIAGNOSTIC,
    GroupSummary,
    TaskSummary,
    describe_value,
    performance_profile,
    profile_curve,
    ranking_by_kind,
    summarize,
)
from adaptim.bench.costs import MODEL_DESCRIPTION, REFERENCE, OptimizerCost, load_costs
from adaptim.bench.store import RunRecord, Store
from adaptim.bench.tasks import FUNCTIONS_1D, FUNCTIONS_2D, RMED_SAMPLES, rmed_method

__all__ = ["Advice", "recommendations", "render_report"]

# The torch.optim baselines: black and grey, told apart by their dashes.
BASELINE_STYLE: dict[str, tuple[str, Any]] = {
    "torch-adamw": ("black", "-"),
    "torch-sgdm": ("dimgray", "--"),
    "torch-nadam": ("black", ":"),
    "torch-rmsprop": ("dimgray", "-."),
    "torch-adagrad": ("black", (0, (6, 2, 1, 2, 1, 2))),
}


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _styles(names: Sequence[str]) -> dict[str, tuple[Any, str]]:
    """A stable colour and line style per optimizer (baselines black/grey)."""
    plt = _plt()
    # Strong colours only (no pastels); a figure colours at most HIGHLIGHT + 2 optimizers.
    palette = [
        *plt.get_cmap("tab10").colors[:7],
        *plt.get_cmap("tab10").colors[8:],
        *plt.get_cmap("Dark2").colors[:7],  # not its grey: the baselines are black and grey
        *plt.get_cmap("Set1").colors[:5],
    ]
    lines = ["-", "--", "-.", ":"]
    out: dict[str, tuple[Any, str]] = {}
    others = [n for n in sorted(names) if n not in BASELINE_STYLE]
    for i, n in enumerate(others):
        out[n] = (palette[i % len(palette)], lines[(i // len(palette) + i) % len(lines)])
    for n in names:
        if n in BASELINE_STYLE:
            out[n] = BASELINE_STYLE[n]
    return out


HIGHLIGHT = 8  # figures colour the best few and the baselines; the others are thin grey lines
OTHER = {"color": "#b8b8b8", "lw": 0.7, "zorder": 1}


def _highlighted(ranked: Sequence[str]) -> set[str]:
    """The optimizers a crowded figure draws in colour: the best ``HIGHLIGHT`` and the baselines."""
    if len(ranked) <= HIGHLIGHT + 4:
        return set(ranked)
    return set(ranked[:HIGHLIGHT]) | (set(ranked) & set(BASELINE_STYLE))


def _other_label(n_other: int, done: dict[Any, bool], key: Any = 0) -> str | None:
    """The legend label of the first grey line (per ``key``: one per axes), else ``None``."""
    if done.get(key) or n_other == 0:
        return None
    done[key] = True
    return f"other optimizers ({n_other}, see the table)"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


PNG_COLOURS = 256  # colours of a figure's palette


class _Figures:
    """Saves figures as PNG files and remembers them for embedding."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.files: dict[str, Path] = {}

    def save(self, fig: Any, name: str, dpi: int = 90) -> str:
        """Save ``fig`` as a palette PNG: line plots have few colours, and an RGBA PNG of their
        anti-aliased edges is about four times larger for no visible difference (the page embeds
        every figure, so their size is the page's)."""
        from PIL import Image

        plt = _plt()
        path = self.folder / f"{name}.png"
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
        plt.close(fig)
        buffer.seek(0)
        with Image.open(buffer) as image:
            rgb = image.convert("RGB")
        palette = rgb.quantize(
            colors=PNG_COLOURS, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE
        )
        palette.save(path, format="PNG", optimize=True)
        self.files[name] = path
        return name

    def img(self, name: str, alt: str) -> str:
        data = base64.b64encode(self.files[name].read_bytes()).decode()
        return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _log_ok(values: np.ndarray) -> bool:
    """Log scale for non-negative values spanning decades (exact zeros are left out of the plot)."""
    v = values[np.isfinite(values)]
    if v.size == 0 or bool((v < 0).any()):
        return False
    pos = v[v > 0]
    return pos.size > 0 and pos.max() / pos.min() > 30


def _aligned(runs: Sequence[RunRecord], name: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Steps and (seeds, steps) values of a metric over runs, cut to the common steps."""
    series = [r.metrics[name] for r in runs if name in r.metrics and len(r.metrics[name])]
    if not series:
        return None
    n = min(len(s) for s in series)
    steps = series[0][:n, 0]
    return steps, np.stack([s[:n, 2] for s in series])


def _legend(fig: Any, ax: Any, n: int, reverse: bool = False) -> None:
    """A legend right of ``ax`` (outside the plot)."""
    del fig
    handles, labels = ax.get_legend_handles_labels()
    if reverse:
        handles, labels = handles[::-1], labels[::-1]
    if handles:
        ax.legend(
            handles,
            labels,
            loc="center left",
            bbox_to_anchor=(1.02, 0.5),
            fontsize=7,
            ncol=1 if n <= 24 else 2,
            frameon=False,
        )


def _curves_figure(t: TaskSummary, styles: dict, figs: _Figures) -> str | None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    drawn = 0
    ranked = [g for g in t.ranked() if g.best_runs]
    shown = _highlighted([g.optimizer for g in ranked])
    n_other, labelled = len(ranked) - len(shown), {}
    for g in ranked[::-1]:  # best last, on top
        runs = g.best_runs
        color, ls = styles[g.optimizer]
        for i, (ax, name) in enumerate(zip(axes, ("train_loss", "metric"), strict=True)):
            got = _aligned(runs, name)
            if got is None:
                continue
            steps, vals = got
            med = np.nanmedian(vals, axis=0)
            if g.optimizer not in shown:
                ax.plot(steps, med, label=_other_label(n_other, labelled, i), **OTHER)
                continue
            lr = "default lr" if g.best_lr is None else f"lr {g.best_lr:.3g}"
            if not g.learned:
                lr += ", did not learn"
            ax.plot(steps, med, color=color, ls=ls, lw=1.3, label=f"{g.optimizer} ({lr})", zorder=3)
            if vals.shape[0] > 1:
                ax.fill_between(
                    steps, np.nanmin(vals, 0), np.nanmax(vals, 0), color=color, alpha=0.15
                )
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    unit = " in nats" if t.task.name == "charlm" else ""
    axes[0].set_title(f"training loss{unit} (minibatch, averaged between logs)")
    axes[1].set_title(f"{t.task.metric} (target {t.task.target:g})")
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        vals = (
            np.concatenate([line.get_ydata() for line in ax.get_lines()])
            if ax.get_lines()
            else np.array([])
        )
        if _log_ok(vals):
            ax.set_yscale("log")
    _reference_lines(axes[1], t)
    if not t.task.lower_is_better:
        # Every curve stays in view, those at chance level too: no zoom on the best few.
        vals = np.concatenate([np.asarray(ln.get_ydata(), float) for ln in axes[1].get_lines()])
        vals = vals[np.isfinite(vals)]
        if vals.size:
            axes[1].set_ylim(max(0.0, vals.min() - 0.03), min(1.0, vals.max() + 0.02))
    fig.suptitle(
        f"{t.label}: median over seeds at each optimizer's best lr, band = min..max", fontsize=10
    )
    _legend(fig, axes[1], drawn, reverse=True)
    return figs.save(fig, f"curves-{_slug(t.label)}")


def _reference_lines(ax: Any, t: TaskSummary) -> None:
    """The task's target (red, dotted) and, for a classification task, chance level (grey)."""
    ax.axhline(t.task.target, color="red", lw=0.8, ls=":", label=f"target {t.task.target:g}")
    if t.task.chance is not None:
        ax.axhline(t.task.chance, color="gray", lw=0.8, ls="--", label="chance")


def _lr_figure(t: TaskSummary, styles: dict, figs: _Figures) -> str | None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    drawn = 0
    finite_vals = []
    diverged: list[tuple[float, str]] = []
    finite_bars: list[float] = []  # the lower ends of the error bars
    ranked = [g for g in t.ranked() if any(p[0] is not None for p in g.lr_curve)]
    shown = _highlighted([g.optimizer for g in ranked])
    n_other, labelled = len(ranked) - len(shown), {}
    for g in ranked[::-1]:
        pts = [(lr, m, lo, hi) for lr, m, lo, hi, _ in g.lr_curve if lr is not None]
        color, ls = styles[g.optimizer]
        lrs = np.array([p[0] for p in pts])
        means = np.array([p[1] for p in pts])
        finite_vals += [m for m in means if math.isfinite(m)]
        if g.optimizer not in shown:
            ax.plot(lrs, means, marker="o", ms=2, label=_other_label(n_other, labelled), **OTHER)
            drawn += 1
            continue
        ax.plot(
            lrs, means, color=color, ls=ls, marker="o", ms=3, lw=1.2, label=g.optimizer, zorder=3
        )
        if g.has_best and g.best_lr is not None and g.n_seeds > 1 and math.isfinite(g.std):
            finite_bars.append(g.mean - g.std)
            ax.errorbar(
                [g.best_lr], [g.mean], yerr=[[g.std], [g.std]], color=color, capsize=3, lw=1
            )
        diverged += [
            (lr, g.optimizer) for lr, m in zip(lrs, means, strict=True) if not math.isfinite(m)
        ]
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xscale("log")
    vals = np.array(finite_vals)
    # A few lrs that ended far worse than they started (a loss of 37 bits/char) would squash the
    # range where the optimizers differ: the axis stops a little above the initial metric.
    cap = _worse_than_start_cap(t)
    clipped = cap is not None and bool((vals > cap).any())
    if clipped:
        vals = vals[vals <= cap]
    if _log_ok(vals):
        ax.set_yscale("log")
    if diverged and vals.size:
        top = vals.max() * (3 if ax.get_yscale() == "log" else 1.05)
        ax.scatter(
            [d[0] for d in diverged],
            [top] * len(diverged),
            marker="x",
            color="red",
            s=18,
            zorder=5,
            label="diverged",
        )
    if t.task.chance is not None:
        ax.axhline(t.task.chance, color="gray", lw=0.8, ls="--", label="chance")
    ax.set_xlabel("learning rate")
    ax.set_ylabel(f"final {t.task.metric}")
    ax.grid(alpha=0.3, which="both")
    short = {int(r.config["steps"]) for g in t.groups.values() for r in g.search_runs}
    what = (
        f"seed 0 of the lr search's {'/'.join(map(str, sorted(short)))}-step runs; bar: spread"
        f" over the seeds of the {t.steps}-step runs at the chosen lr"
        if short
        else "mean over the seeds every lr ran; bar: spread at the best lr"
    )
    if clipped and vals.size:
        log = ax.get_yscale() == "log"
        highest = vals.max() * ((3 if log else 1.05) if diverged else 1.0)  # the "diverged" row
        if log:  # exact zeros (a minimizer reached) are left out of a log axis
            positive = [v for v in [*vals, *finite_bars] if v > 0]
            lowest = min(positive) if positive else highest / 10
            ax.set_ylim(lowest / 1.5, highest * 1.5)
        else:
            lowest = min([vals.min(), *finite_bars])
            margin = 0.05 * (highest - lowest)
            ax.set_ylim(lowest - margin, highest + margin)
        what += f"; lrs that ended above {CLIP_ABOVE_INITIAL:g}x the initial metric are off the top"
    ax.set_title(f"{t.label}: lr sensitivity ({what})", fontsize=9)
    _legend(fig, ax, drawn, reverse=True)
    return figs.save(fig, f"lr-{_slug(t.label)}")


# The lr figure's axis of a lower-is-better task stops at this multiple of the initial metric.
CLIP_ABOVE_INITIAL = 1.1


def _worse_than_start_cap(t: TaskSummary) -> float | None:
    """``CLIP_ABOVE_INITIAL`` x the median initial metric of a lower-is-better task without a chance level (``None``
    otherwise): where an lr's final metric stops telling anything but "worse than the start"."""
    if not t.task.lower_is_better or t.task.chance is not None:
        return None
    starts = [
        r.initial_metric
        for g in t.groups.values()
        for r in [*g.runs, *g.search_runs]
        if r.initial_metric is not None and math.isfinite(r.initial_metric)
    ]
    return CLIP_ABOVE_INITIAL * float(np.median(starts)) if starts else None


def _trajectory_figure(t: TaskSummary, styles: dict, figs: _Figures, store: Store) -> str | None:
    fn, _start, minimizer, box = FUNCTIONS_2D[t.task.name]
    import torch

    groups = [g for g in t.ranked() if g.has_best]
    paths = []
    for g in groups:
        run = next((r for r in g.best_runs if r.seed == 0), None)
        arr = store.series(run.id, "trajectory") if run is not None else None
        if arr is not None and len(arr):
            paths.append((g, arr))
    if not paths:
        return None
    plt = _plt()
    ncol = min(6, len(paths))
    nrow = math.ceil(len(paths) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(2.3 * ncol, 2.2 * nrow), squeeze=False)
    xs = np.linspace(box[0], box[1], 200)
    ys = np.linspace(box[2], box[3], 200)
    gx, gy = np.meshgrid(xs, ys)
    with torch.no_grad():
        z = (
            fn(torch.from_numpy(np.stack([gx, gy])).double()).numpy()
            if t.task.name != "rastrigin"
            else (20 + gx**2 - 10 * np.cos(2 * np.pi * gx) + gy**2 - 10 * np.cos(2 * np.pi * gy))
        )
    levels = np.logspace(math.log10(max(z.min(), 1e-3)), math.log10(z.max()), 20)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, (g, arr) in zip(axes.flat, paths, strict=False):
        ax.set_axis_on()
        ax.contour(
            gx,
            gy,
            np.maximum(z, 1e-3),
            levels=levels,
            cmap="Greys",
            linewidths=0.4,
            norm=_lognorm(levels),
        )
        a = np.clip(arr, [box[0] - 1, box[2] - 1], [box[1] + 1, box[3] + 1])
        ax.plot(a[:, 0], a[:, 1], color="tab:red", lw=0.9)
        ax.plot(a[0, 0], a[0, 1], "o", color="tab:blue", ms=3)
        ax.plot(a[-1, 0], a[-1, 1], "x", color="tab:red", ms=5)
        ax.plot(*minimizer, "*", color="gold", ms=9, mec="k", mew=0.5)
        ax.set_xlim(box[0], box[1])
        ax.set_ylim(box[2], box[3])
        ax.set_xticks([])
        ax.set_yticks([])
        lr = "default" if g.best_lr is None else f"{g.best_lr:.2g}"
        learned = "" if g.learned else " (did not learn)"
        ax.set_title(f"{g.optimizer}\nlr {lr}, dist {g.mean:.2g}{learned}", fontsize=7)
    fig.suptitle(
        f"{t.label}: seed-0 trajectory at each optimizer's best lr (o start, x end, * minimizer)",
        fontsize=9,
    )
    fig.tight_layout()
    return figs.save(fig, f"trajectories-{_slug(t.label)}", dpi=72)


def _lognorm(levels: np.ndarray) -> Any:
    from matplotlib.colors import LogNorm

    return LogNorm(vmin=levels.min(), vmax=levels.max())


FUNCTION_1D_SPAN = 5.0  # the 1-D figure shows x within +-this at most


def _functions_1d_figure(
    tasks: Sequence[TaskSummary], styles: dict, figs: _Figures, store: Store
) -> str | None:
    one_d = [t for t in tasks if t.task.name in FUNCTIONS_1D]
    if not one_d:
        return None
    plt = _plt()
    import torch

    fig, axes = plt.subplots(
        2,
        len(one_d),
        figsize=(4.2 * len(one_d), 6.2),
        squeeze=False,
        gridspec_kw={"height_ratios": [1, 2]},
    )
    for col, t in enumerate(one_d):
        fn, xmin = FUNCTIONS_1D[t.task.name]
        xs = torch.linspace(-1.5, 1.0, 600, dtype=torch.float64)
        axf, ax = axes[0, col], axes[1, col]
        axf.plot(xs.numpy(), fn(xs).numpy(), color="k", lw=1)
        axf.axvline(xmin, color="gold", lw=1.5)
        axf.set_title(f"{t.label}: f(x); global min at {xmin:.3g}", fontsize=9)
        paths = []
        for g in t.ranked():
            run = next((r for r in g.best_runs if r.seed == 0), None)
            arr = store.series(run.id, "trajectory") if run is not None else None
            if arr is not None and len(arr):
                paths.append((g, arr))
        shown = _highlighted([g.optimizer for g, _ in paths])
        n_other, labelled = len(paths) - len(shown), {}
        for g, arr in paths[::-1]:
            steps = np.arange(len(arr))
            if g.optimizer not in shown:
                ax.plot(steps, arr[:, 0], label=_other_label(n_other, labelled), **OTHER)
                continue
            color, ls = styles[g.optimizer]
            ax.plot(steps, arr[:, 0], color=color, ls=ls, lw=1.1, label=g.optimizer, zorder=3)
            axf.plot(
                [arr[-1, 0]],
                fn(torch.tensor([float(arr[-1, 0])], dtype=torch.float64)).numpy(),
                "o",
                color=color,
                ms=4,
            )
        handles, labels = ax.get_legend_handles_labels()
        ax.legend(
            handles[::-1],
            labels[::-1],
            fontsize=6.5,
            ncol=2,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.15),
            frameon=False,
        )
        ax.axhline(xmin, color="gold", lw=1.5)
        ax.set_xlabel("step")
        ax.set_ylabel("x")
        # The plotted window of f, widened to every path that leaves it (up to FUNCTION_1D_SPAN:
        # beyond, a path is running away and its end is in the table).
        xs_all = np.concatenate([arr[:, 0] for _, arr in paths]) if paths else np.zeros(0)
        xs_all = xs_all[np.isfinite(xs_all)]
        lo = max(-FUNCTION_1D_SPAN, min(-1.6, float(xs_all.min(initial=0.0)) - 0.1))
        hi = min(FUNCTION_1D_SPAN, max(1.2, float(xs_all.max(initial=0.0)) + 0.1))
        ax.set_ylim(lo, hi)
        ax.grid(alpha=0.3)
    fig.suptitle(
        "diffGrad's 1-D functions: x over the steps (seed 0, best lr); dots: where each ended",
        fontsize=9,
    )
    fig.tight_layout()
    return figs.save(fig, "functions-1d")


def _profile_figure(tasks: Sequence[TaskSummary], styles: dict, figs: _Figures) -> str | None:
    if not tasks:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    any_drawn = False
    for ax, measure, title in (
        (axes[0], "final", "final error at the best lr"),
        (axes[1], "steps", "steps to target"),
    ):
        names, ratios = performance_profile(tasks, measure)
        finite = ratios[np.isfinite(ratios)]
        hi = max(2.0, min(float(finite.max()) * 1.2 if finite.size else 2.0, 1e4))
        taus = np.logspace(0, math.log10(hi), 300)
        rho = profile_curve(ratios, taus)
        area = np.trapezoid(rho, np.log(taus), axis=0) + rho[0]  # ties: wins at tau = 1 first
        order = list(np.argsort(-area, kind="stable"))
        shown = _highlighted([names[j] for j in order])
        n_other, labelled = len(names) - len(shown), {}
        for j in order[::-1]:
            if names[j] not in shown:
                ax.step(
                    taus, rho[:, j], where="post", label=_other_label(n_other, labelled), **OTHER
                )
                continue
            color, ls = styles[names[j]]
            ax.step(
                taus, rho[:, j], where="post", color=color, ls=ls, lw=1.3, label=names[j], zorder=3
            )
            any_drawn = True
        handles, labels = ax.get_legend_handles_labels()
        ax.legend(
            handles[::-1],
            labels[::-1],
            fontsize=6.5,
            loc="lower right",
            frameon=True,
            framealpha=0.8,
        )
        ax.set_xscale("log")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("tau (ratio to the best optimizer on each task)")
        ax.set_ylabel("fraction of tasks within tau")
        ax.set_title(f"performance profile: {title}", fontsize=9)
        ax.grid(alpha=0.3, which="both")
    if not any_drawn:
        plt.close(fig)
        return None
    fig.tight_layout()
    return figs.save(fig, "performance-profile")


# -- tables ---------------------------------------------------------------------------------------


def _fmt_lr(g: GroupSummary) -> str:
    if not g.has_best:
        return "-"
    s = "default" if g.best_lr is None else f"{g.best_lr:.3g}"
    return s + ("*" if g.best_at_edge else "")


def _fmt_searched(g: GroupSummary) -> str:
    """The lrs the group ran, lowest to highest, and the end its best lr sits at (``*``)."""
    if g.searched is None:
        return "-"
    lo, hi = g.searched
    n = len({lr for lr in g.lrs if lr is not None})
    text = f"{lo:.3g}" if lo == hi else f"{lo:.3g} – {hi:.3g} ({n} lrs)"
    if g.edge is not None:
        text += f"; * best at the {g.edge} end"
    return text


def _fmt_band(g: GroupSummary) -> str:
    if g.band_decades is None:
        return "-"
    return ("≥" if g.band_open else "") + f"{g.band_decades:.2g}"


def _fmt_result(t: TaskSummary, g: GroupSummary) -> str:
    if not g.has_best:
        return "-"
    s = describe_value(t.task, g.mean)
    if g.n_seeds > 1:
        s += (
            " ± "
            + describe_value(t.task, g.std).rstrip("%")
            + ("%" if t.task.metric.endswith("accuracy") else "")
        )
    s += f" (n={g.n_seeds})"
    return s if g.learned else s + ", did not learn"


def _fmt_ci(t: TaskSummary, g: GroupSummary) -> str:
    """The 95% interval of the mean at the best lr (Student's t over the seeds)."""
    if not g.has_best or not math.isfinite(g.ci95) or not math.isfinite(g.mean):
        return "-" if not g.has_best else f"- ({g.n_seeds} seed{'s' if g.n_seeds != 1 else ''})"
    lo, hi = g.mean - g.ci95, g.mean + g.ci95
    return f"[{describe_value(t.task, lo)}, {describe_value(t.task, hi)}]"


def _fmt_ttt(g: GroupSummary) -> tuple[str, str]:
    if g.steps_to_target is None:
        return (f"not reached ({g.reached}/{g.n_seeds})" if g.has_best else "-"), "-"
    return f"{g.steps_to_target:.0f}", f"{g.seconds_to_target:.3g}"


def _status_text(g: GroupSummary) -> str:
    parts = [f"{n} {s}" for s, n in sorted(g.statuses.items())]
    return ", ".join(parts)


def _task_rows(t: TaskSummary) -> tuple[list[list[str]], list[str]]:
    """The rows of a task's table (best first) and each row's CSS class (``dnl``: did not learn)."""
    ranks = t.ranks()
    rows, classes = [], []
    for g in t.ranked():
        steps, secs = _fmt_ttt(g)
        learned = g.has_best and g.learned and math.isfinite(g.mean)
        rows.append(
            [
                str(ranks[g.optimizer]) if learned else "-",
                g.optimizer,
                _fmt_lr(g),
                _fmt_searched(g),
                _fmt_result(t, g),
                _fmt_ci(t, g),
                steps,
                secs,
                _fmt_band(g),
                _status_text(g),
            ]
        )
        classes.append("" if learned or not g.has_best else "dnl")
    return rows, classes


TASK_HEADER = [
    "rank",
    "optimizer",
    "best lr",
    "lrs searched",
    "final metric (mean ± sd)",
    "95% interval of the mean",
    "steps to target",
    "seconds to target",
    "lr band (decades)",
    "runs",
]


RMED_HEADER = ["optimizer", "best lr", "R_med (mean over seeds)", "min - max", "runs measured"]
RMED_PAPER = (
    "Jiang, Malik & Li, How Does Adaptive Optimization Impact Local Neural Network Geometry?,"
    " NeurIPS 2023, arXiv:2211.02254"
)


def _rmed_point(r: RunRecord) -> tuple[float, float] | None:
    """A run's stored R_med and the CPU seconds it took (``None``: not measured, as for a run that
    diverged or an older bench's; a NaN value: not finite, or the measurement failed)."""
    points = r.metrics.get("r_med")
    if points is None or len(points) == 0:
        return None
    return float(points[-1, 2]), float(points[-1, 1])


def _rmed_rows(t: TaskSummary) -> list[list[str]]:
    """R_med at each optimizer's best lr, in the task table's order (R_med itself orders nothing);
    no rows when no run of the task has R_med."""
    if not any(_rmed_point(r) for g in t.groups.values() for r in g.runs):
        return []
    rows = []
    for g in t.ranked():
        if not g.has_best:
            continue
        points = [_rmed_point(r) for r in g.best_runs]
        values = [p[0] for p in points if p is not None and math.isfinite(p[0])]
        rows.append(
            [
                g.optimizer,
                _fmt_lr(g),
                f"{sum(values) / len(values):.3g}" if values else "-",
                f"{min(values):.3g} - {max(values):.3g}" if values else "-",
                f"{len(values)} of {len(points)}",
            ]
        )
    return rows


def _rmed_note(t: TaskSummary) -> str:
    """What the R_med table shows, how it was measured and what it cost (plain text)."""
    if rmed_method(math.prod(t.task.probe_shape)) == "exact":
        method = "exact"
    else:
        method = (
            f"Hutchinson's estimate from {RMED_SAMPLES} seeded Rademacher vectors, biased but the"
            " same for every optimizer"
        )
    costs = [
        (p[1], r.cpu_seconds)
        for g in t.groups.values()
        for r in g.runs
        if (p := _rmed_point(r)) is not None and r.cpu_seconds
    ]
    cost = ""
    if costs:
        seconds = sum(c[0] for c in costs) / len(costs)
        share = sum(c[0] / c[1] for c in costs) / len(costs)
        cost = f" Measuring it took {seconds:.2g} s per run ({share:.0%} of a run's CPU time)."
    return (
        "Diagnostic, not used in any ranking. R_med = max_i |H_ii| / median_i |H_ii|, with H_ii"
        f" the diagonal of the training loss's Hessian over {t.task.probe_layer}, at the end of"
        f" each run at the best lr; the diagonal is {method}. The paper ({RMED_PAPER}) finds"
        " Adam's iterates where R_med is small and SGD's where it is comparatively large." + cost
    )


def _html_table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    bold_first: bool = False,
    row_classes: Sequence[str] | None = None,
) -> str:
    out = [
        "<table><thead><tr>",
        *(f"<th>{html.escape(h)}</th>" for h in header),
        "</tr></thead><tbody>",
    ]
    for i, row in enumerate(rows):
        cells = "".join(f"<td>{html.escape(str(c))}</td>" for c in row)
        names = [row_classes[i]] if row_classes is not None and row_classes[i] else []
        if bold_first and i == 0:
            names.append("best")
        cls = f' class="{" ".join(names)}"' if names else ""
        out.append(f"<tr{cls}>{cells}</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def esc(c: Any) -> str:
        return str(c).replace("|", "\\|")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _ttt_table(tasks: Sequence[TaskSummary]) -> tuple[list[str], list[list[str]]]:
    names = sorted({o for t in tasks for o in t.groups})
    header = ["optimizer", *[f"{t.label} (target {t.task.target:g})" for t in tasks]]
    rows = []
    for n in names:
        row = [n]
        for t in tasks:
            g = t.groups.get(n)
            if g is None or not g.has_best:
                row.append("-")
            elif g.steps_to_target is None:
                row.append("not reached")
            else:
                k = g.steps_to_target
                row.append(f"{k:.0f} step{'' if k == 1 else 's'} / {g.seconds_to_target:.3g} s")
        rows.append(row)
    return header, rows


def _claims_rows(claims: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for c in claims:
        verdict = c.get("verdict") or (
            "skipped" if c["holds"] is None else "holds" if c["holds"] else "does not hold"
        )
        if verdict == "does not hold":
            verdict = "does not hold at this scale"
        nums = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in c["numbers"].items()
        )
        rows.append(
            [c["name"], c["paper"] or "", c["statement"] or "", verdict, nums, c["detail"] or ""]
        )
    return rows


CLAIMS_HEADER = ["claim", "paper", "statement", "verdict", "numbers", "detail"]


# -- costs and recommendations --------------------------------------------------------------------


def _fmt_bytes(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


def _fmt_ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}×"


def _cost_cells(name: str, costs: dict[str, OptimizerCost]) -> list[str]:
    c = costs.get(name)
    if c is None:
        return ["-", "-", "-"]
    if c.error and c.state_bytes_32 is None:
        return ["failed", "-", "-"]
    eight = "no 8-bit states" if c.state_bytes_8 is None else _fmt_bytes(c.state_bytes_8)
    return [_fmt_bytes(c.state_bytes_32), eight, _fmt_ratio(c.step_ratio)]


COST_HEADER = [
    "state bytes / param (32-bit)",
    "state bytes / param (8-bit states)",
    "step time vs fused AdamW",
]


def _cost_rows(names: Sequence[str], costs: dict[str, OptimizerCost]) -> list[list[str]]:
    rows = []
    for n in names:
        if n in costs:
            c = costs[n]
            rows.append([n, *_cost_cells(n, costs), c.error or ""])
    return rows


@dataclass(frozen=True)
class Advice:
    """What the stored results say about one kind of learning task (:func:`recommendations`)."""

    kind: str
    tasks: tuple[str, ...]  # the labels of its tasks
    per_task: dict[str, tuple[str, ...]]  # task label -> its top tie group (empty: none learned)
    best: tuple[str, ...]  # the optimizers in the top tie group on the most of its tasks
    top_count: int  # on how many of its tasks each of ``best`` is in the top group
    mean_rank: dict[str, float]  # the kind's mean rank of each optimizer
    seeds: tuple[int, int]  # the fewest and most seeds at a best lr, over the kind's groups
    steps: tuple[int, int]  # the shortest and longest run, in steps
    at_edge: tuple[str, ...]  # those of ``best`` whose best lr is at an end of its search somewhere
    halving: bool = False  # some lr search of the kind ran on short runs (successive halving)


def recommendations(tasks: Sequence[TaskSummary]) -> list[Advice]:
    """For each kind of learning task, the optimizers in the top tie group
    (:meth:`TaskSummary.tie_groups`) on the most tasks of that kind, best mean rank first."""
    by_kind: dict[str, list[TaskSummary]] = {}
    for t in tasks:
        if t.kind != DIAGNOSTIC:
            by_kind.setdefault(t.kind, []).append(t)
    ranking = ranking_by_kind(tasks)
    out = []
    for kind, ts in sorted(by_kind.items()):
        per_task = {}
        for t in ts:
            groups = t.tie_groups()
            per_task[t.label] = tuple(groups[0]) if groups else ()
        counts: dict[str, int] = {}
        for top in per_task.values():
            for name in top:
                counts[name] = counts.get(name, 0) + 1
        mean_rank = {name: r for name, r, _ in ranking.get(kind, [])}
        top_count = max(counts.values(), default=0)
        best = tuple(
            sorted(
                (n for n, c in counts.items() if c == top_count),
                key=lambda n: (mean_rank.get(n, math.inf), n),
            )
        )
        with_best = [g for t in ts for g in t.groups.values() if g.has_best]
        seeds = [g.n_seeds for g in with_best] or [0]
        edge = {g.optimizer for g in with_best if g.best_at_edge} & set(best)
        out.append(
            Advice(
                kind,
                tuple(t.label for t in ts),
                per_task,
                best,
                top_count,
                mean_rank,
                (min(seeds), max(seeds)),
                (min(t.steps for t in ts), max(t.steps for t in ts)),
                tuple(sorted(edge)),
                any(g.search_runs for t in ts for g in t.groups.values()),
            )
        )
    return out


KIND_TITLES = {"neural network": "Neural networks", "convex": "Convex problems"}


def _kind_title(kind: str) -> str:
    return KIND_TITLES.get(kind, kind.capitalize())


def _describe_cost(name: str, costs: dict[str, OptimizerCost]) -> str:
    c = costs.get(name)
    if c is None or c.state_bytes_32 is None:
        return "cost not measured"
    parts = [f"{c.state_bytes_32:.3g} B/param of state"]
    if c.state_bytes_8 is not None:
        parts[0] += f" ({c.state_bytes_8:.3g} with state_bits=8)"
    if c.step_ratio is not None:
        parts.append(f"a step {c.step_ratio:.2f}× fused AdamW's")
    return ", ".join(parts)


def _advice_text(a: Advice, costs: dict[str, OptimizerCost]) -> tuple[str, list[str]]:
    """A sentence naming the recommended optimizers with their costs, and the caveats."""
    n = len(a.tasks)
    tasks = ", ".join(a.tasks)
    if not a.best:
        return f"No optimizer learned on {tasks}.", []
    named = "; ".join(
        f"{name} (mean rank {a.mean_rank.get(name, math.nan):.2f}; {_describe_cost(name, costs)})"
        for name in a.best
    )
    head = (
        f"In the top tie group on {a.top_count} of {n} task{'s' if n > 1 else ''} ({tasks}): "
        f"{named}."
    )
    leader = min(a.mean_rank, key=lambda m: (a.mean_rank[m], m), default=None)
    if leader is not None and leader not in a.best:
        k = sum(leader in top for top in a.per_task.values())
        head += (
            f" Best mean rank over these tasks: {leader} ({a.mean_rank[leader]:.2f}; in the top"
            f" tie group on {k} of {n}; {_describe_cost(leader, costs)})."
        )
    measured = [
        name for name in a.best if costs.get(name) and costs[name].state_bytes_32 is not None
    ]
    if len(measured) > 1:
        light = min(measured, key=lambda m: (costs[m].state_bytes_32, m))
        head += f" Least state memory among them: {light}."
        timed = [m for m in measured if costs[m].step_ratio is not None]
        if len(timed) > 1:
            head += f" Fastest step among them: {min(timed, key=lambda m: costs[m].step_ratio)}."
    caveats = [
        f"Toy scale: small models and short runs ({a.steps[0]}"
        + (f"-{a.steps[1]}" if a.steps[1] != a.steps[0] else "")
        + " steps); the order may not carry over to larger models or longer training.",
    ]
    lo, hi = a.seeds
    seeds = f"{lo}" if lo == hi else f"{lo}-{hi}"
    if hi <= 1:
        caveats.append(
            "One seed per optimizer: no two optimizers can tie, so each top group is a single "
            "optimizer and a narrow win may be noise; run with --seeds 5 or more."
        )
    else:
        caveats.append(
            f"{seeds} seeds at each optimizer's best lr; a tie group is what a Welch t-test at 5% "
            "cannot tell apart, not proof that the optimizers are equal."
        )
    caveats.append(
        "Budget: each optimizer's lr searched on seed 0 (other hyperparameters at their defaults)."
        + (
            " Successive halving: the search on short runs, its two best lrs at full length."
            if a.halving
            else ""
        )
        + (
            f" Best lr at an end of its search for {', '.join(a.at_edge)}: a wider search may "
            "change the picture."
            if a.at_edge
            else ""
        )
    )
    return head, caveats


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1300px;color:#222}
h1{font-size:1.6em} h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
h3{margin-top:1.6em}
table{border-collapse:collapse;font-size:.85em;margin:.8em 0} td,th{border:1px solid #ddd;padding:3px 7px}
th{background:#f3f3f3;text-align:left} tr.best td{font-weight:600} img{max-width:100%;margin:.5em 0}
tr.dnl td{color:#888;font-style:italic}
.note{color:#555;font-size:.9em} code{background:#f5f5f5;padding:0 3px}
nav.toc{background:#fafafa;border:1px solid #e5e5e5;padding:.4em 1.2em;font-size:.9em}
nav.toc ul{margin:.2em 0;padding-left:1.2em}
"""


class _Page:
    """The HTML body and the Markdown summary, written side by side, with a table of contents."""

    def __init__(self) -> None:
        self.body: list[str] = []
        self.md: list[str] = []
        self.toc: list[tuple[int, str, str]] = []  # (level, anchor, title)

    def heading(self, level: int, title: str, anchor: str | None = None) -> None:
        anchor = anchor or _slug(title)
        self.toc.append((level, anchor, title))
        self.body.append(f"<h{level} id='{anchor}'>{html.escape(title)}</h{level}>")
        self.md += ["#" * level + " " + title, ""]

    def toc_html(self) -> str:
        """The headings as nested lists: each section's subsections inside its item."""
        out = ["<nav class=toc><b>Contents</b><ul>"]
        item_open = sub_open = False
        for level, anchor, title in self.toc:
            link = f"<a href='#{anchor}'>{html.escape(title)}</a>"
            if level <= 2 or not item_open:
                if sub_open:
                    out.append("</ul>")
                if item_open:
                    out.append("</li>")
                out.append(f"<li>{link}")
                item_open, sub_open = True, False
                continue
            if not sub_open:
                out.append("<ul>")
                sub_open = True
            out.append(f"<li>{link}</li>")
        out += ["</ul>"] * sub_open + ["</li>"] * item_open + ["</ul></nav>"]
        return "".join(out)


def render_report(
    db: str | Path | Store,
    out: str | Path,
    *,
    config_hashes: Sequence[str] | None = None,
    optimizers: Sequence[str] | None = None,
    title: str = "adaptim bench",
) -> Path:
    """Render the report of the runs in ``db`` (optionally only some configurations / optimizers).

    Returns the path of ``index.html``.
    """
    store = db if isinstance(db, Store) else Store(db)
    try:
        return _render(store, Path(out), config_hashes, optimizers, title)
    finally:
        if not isinstance(db, Store):
            store.close()


def _task_section(
    page: _Page, t: TaskSummary, styles: dict, figs: _Figures, store: Store, ranked: bool
) -> None:
    page.heading(3, f"Task: {t.label}", _slug(t.label))
    scope = "" if ranked else " A diagnostic: its order is not counted in the ranks."
    page.body.append(
        f"<p>{html.escape(t.task.description)}. Metric: {html.escape(t.task.metric)} "
        f"({'lower' if t.task.lower_is_better else 'higher'} is better), target {t.task.target:g}, "
        f"{t.steps} steps, lr schedule {t.task.schedule}.{scope}</p>"
    )
    rows, classes = _task_rows(t)
    page.body.append(_html_table(TASK_HEADER, rows, True, classes))
    page.md += [
        f"{t.task.description}; {t.steps} steps, lr schedule {t.task.schedule}, "
        f"target {t.task.target:g}.{scope}",
        "",
        _md_table(TASK_HEADER, rows),
        "",
    ]
    rmed_rows = _rmed_rows(t) if t.task.probe_layer else []
    if rmed_rows:
        note = _rmed_note(t)
        page.body.append(f"<p class=note><b>R_med (diagnostic).</b> {html.escape(note)}</p>")
        page.body.append(_html_table(RMED_HEADER, rmed_rows))
        page.md += [f"**R_med (diagnostic).** {note}", "", _md_table(RMED_HEADER, rmed_rows), ""]
    makers = [_curves_figure, _lr_figure]
    for maker in makers:
        name = maker(t, styles, figs)
        if name:
            page.body.append(figs.img(name, f"{t.label} {name}"))
            page.md.append(f"![{name}](img/{name}.png)")
    if t.task.name in FUNCTIONS_2D:
        name = _trajectory_figure(t, styles, figs, store)
        if name:
            page.body.append(figs.img(name, f"{t.label} trajectories"))
            page.md.append(f"![{name}](img/{name}.png)")
    page.md.append("")


def _render(store: Store, out: Path, config_hashes, optimizers, title: str) -> Path:
    runs = store.runs(config_hashes=config_hashes)
    if optimizers is not None:
        keep = set(optimizers)
        runs = [r for r in runs if r.optimizer in keep]
    tasks = summarize(runs)
    learning = [t for t in tasks if t.kind != DIAGNOSTIC]
    diagnostics = [t for t in tasks if t.kind == DIAGNOSTIC]
    claims = store.latest_claims()
    envs = store.environments()
    out.mkdir(parents=True, exist_ok=True)
    figs = _Figures(out / "img")
    for old in figs.folder.glob("*.png"):
        old.unlink()
    names = sorted({o for t in tasks for o in t.groups})
    costs = {n: c for n, c in load_costs(store).items() if n in set(names)}
    styles = _styles(names)

    page = _Page()
    page.md += [f"# {title}: summary", ""]
    counts: dict[str, int] = {}
    for t in tasks:  # the statuses as judged now (an older bench's runs included)
        for g in t.groups.values():
            for status, n in g.statuses.items():
                counts[status] = counts.get(status, 0) + n
    status_line = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no runs"
    intro = (
        f"{len(runs)} runs ({status_line}) on {len(tasks)} task configurations "
        f"({len(learning)} ranked, {len(diagnostics)} diagnostics), {len(names)} optimizers."
    )
    page.body.append(f"<h1>{html.escape(title)}</h1>")
    page.body.append(
        f"<p>{intro} Each optimizer is shown at the best learning rate of its search (chosen on the"
        " seeds that every lr ran; where the search ran on short runs, successive halving, the"
        " best of its two best lrs rerun at full length, and the lr curve and band are the short"
        " runs'); <code>*</code> marks a best lr at an end of the lrs searched (a"
        " wider search may do better). Optimizers whose best lr did not beat the task's trivial"
        " baseline (chance accuracy, the initial metric) are marked <i>did not learn</i> and rank"
        f" after every one that did. The lr band is the range of lrs within {BAND_TOLERANCE:.0%} of"
        " the best, measured as a fraction of the progress from the starting value (≥: the band"
        " reaches an end of the lrs searched).</p>"
    )
    toc_at = len(page.body)
    page.md += [
        intro,
        "Full report with figures: `index.html`. `*`: best lr at an end of the lrs searched.",
        "",
    ]

    if learning:
        page.heading(2, "What to use when")
        page.body.append(
            "<p class=note>Computed from the results below, not written by hand: for each kind of"
            " task, the optimizers that are in the top tie group (the best optimizer and every one a"
            " Welch t-test at 5% cannot tell from it) on the most tasks of that kind, with what they"
            " cost (see <a href='#cost-state-memory-and-step-time'>Cost</a>).</p>"
        )
        advice = {a.kind: a for a in recommendations(tasks)}
        for a in advice.values():
            head, caveats = _advice_text(a, costs)
            page.body.append(
                f"<p><b>{html.escape(_kind_title(a.kind))}.</b> {html.escape(head)}</p>"
            )
            if caveats:
                page.body.append(
                    "<ul class=note>"
                    + "".join(f"<li>{html.escape(c)}</li>" for c in caveats)
                    + "</ul>"
                )
            page.md += [f"**{_kind_title(a.kind)}.** {head}", ""]
            page.md += [f"- {c}" for c in caveats] + [""]

        page.heading(2, "Mean rank by kind of task")
        page.body.append(
            "<p class=note>Each optimizer's rank on each learning task, averaged over the tasks of"
            " one kind. On a task, a tie group (the leader and every optimizer a Welch t-test at 5%"
            " over the seeds cannot tell from it; one seed ties with nobody) shares the rank of its"
            " first place; an optimizer that did not learn, or has no finished run, counts as last."
            " The 2-D and 1-D test functions are diagnostics, outside the ranks. Costs: see"
            " <a href='#cost-state-memory-and-step-time'>Cost</a>.</p>"
        )
        for kind, ranking in ranking_by_kind(tasks).items():
            a = advice[kind]
            tops = {n: sum(n in top for top in a.per_task.values()) for n, _, _ in ranking}
            header = [
                "#",
                "optimizer",
                "mean rank (1 = best)",
                "tasks",
                "in the top tie group",
                *COST_HEADER,
            ]
            rows = [
                [
                    str(i),
                    n,
                    f"{r:.2f}",
                    str(k),
                    f"{tops[n]} of {len(a.tasks)}",
                    *_cost_cells(n, costs),
                ]
                for i, (n, r, k) in enumerate(ranking, 1)
            ]
            page.heading(3, f"{_kind_title(kind)} ({', '.join(a.tasks)})", f"rank-{_slug(kind)}")
            page.body.append(_html_table(header, rows, True))
            page.md += [_md_table(header, rows), ""]

        prof = _profile_figure(learning, styles, figs)
        if prof:
            page.heading(2, "Performance profiles")
            page.body.append(
                "<p class=note>Over the learning tasks: for each optimizer, the fraction of tasks on"
                " which its cost is within a factor tau of the best optimizer's on that task (Dolan"
                " &amp; Moré, 2002). Left: final error (the metric, or 1 - accuracy) at the best lr;"
                " right: steps to the task's target (unreached = never). Higher and further left is"
                " better.</p>"
            )
            page.body.append(figs.img(prof, "performance profiles"))
            page.md += ["![performance profile](img/performance-profile.png)", ""]

    if tasks:
        header, rows = _ttt_table(tasks)
        page.heading(2, "Time to target")
        page.body.append(
            "<p class=note>Median over the best lr's seeds of the first evaluation at which the target"
            " was reached; seconds are the CPU time of training (one thread), without evaluation.</p>"
        )
        page.body.append(_html_table(header, rows))
        page.md += [_md_table(header, rows), ""]

    cost_rows = _cost_rows(names, costs)
    if cost_rows:
        page.heading(2, "Cost: state memory and step time")
        page.body.append(
            f"<p class=note>Measured on the {html.escape(MODEL_DESCRIPTION)}, each optimizer built"
            " as the bench builds it: the bytes of its state tensors after two steps per parameter"
            " (with <code>state_bits=8</code> where the class has 8-bit states), and the CPU time of"
            " one training step (forward, backward and update; closure-driven methods' extra passes"
            f" included) relative to {html.escape(REFERENCE)} timed in the same bench. On a model"
            " this small the forward and backward pass is most of a step, so these ratios"
            " understate how much slower an update is. <code>--quick</code> measures no step"
            " time. No compile time: the bench steps every optimizer as <code>fused=None</code>"
            " does (eager; Adam and AdamW through torch's own fused kernels, which need no"
            " compiling), so nothing compiles; <code>python benchmarks/step_time.py"
            " --compile-times</code> measures the compile time of each <code>fused=True</code>"
            " step (the README's speed section).</p>"
        )
        header = ["optimizer", *COST_HEADER, "error"]
        page.body.append(_html_table(header, cost_rows))
        page.md += [_md_table(header, cost_rows), ""]

    if claims:
        rows = _claims_rows(claims)
        page.heading(2, "Claims of the papers, checked at toy scale")
        page.body.append(_html_table(CLAIMS_HEADER, rows))
        page.md += [
            _md_table(
                ["claim", "paper", "verdict", "numbers"], [[r[0], r[1], r[3], r[4]] for r in rows]
            ),
            "",
        ]

    by_kind: dict[str, list[TaskSummary]] = {}
    for t in learning:
        by_kind.setdefault(t.kind, []).append(t)
    for kind, ts in sorted(by_kind.items()):
        page.heading(2, f"{_kind_title(kind)}: tasks", f"tasks-{_slug(kind)}")
        for t in ts:
            _task_section(page, t, styles, figs, store, ranked=True)
    name = _functions_1d_figure(diagnostics, styles, figs, store)
    if diagnostics:
        page.heading(2, "Diagnostics: test functions (not ranked)", "diagnostics")
        page.body.append(
            "<p class=note>The 2-D and 1-D test functions show how each optimizer moves (its"
            " trajectory) on a landscape with a known minimizer; they are outside the ranks and"
            " the recommendations.</p>"
        )
        for t in diagnostics:
            _task_section(page, t, styles, figs, store, ranked=False)
        if name:
            page.heading(3, "diffGrad's 1-D functions: trajectories", "functions-1d")
            page.body.append(figs.img(name, "1-D trajectories"))
            page.md += [f"![{name}](img/{name}.png)", ""]

    errors = [(t.label, g.optimizer, e) for t in tasks for g in t.groups.values() for e in g.errors]
    if errors:
        page.heading(2, "Failed runs")
        page.body.append("<ul>")
        page.body += [
            f"<li><b>{html.escape(o)}</b> on {html.escape(tl)}: {html.escape(e)}</li>"
            for tl, o, e in errors[:200]
        ]
        page.body.append("</ul>")
        page.md += [f"- {o} on {tl}: {e}" for tl, o, e in errors[:200]] + [""]

    used = sorted({r.env_id for r in runs if r.env_id is not None})
    if used or envs:
        page.heading(2, "Environment")
        env_rows = []
        for i in used or sorted(envs):
            e = envs.get(i, {})
            load = e.get("load_average")
            env_rows.append(
                [
                    str(i),
                    e.get("time", ""),
                    e.get("cpu", ""),
                    f"{e.get('cores', '')}",
                    f"{e.get('jobs', '')} x {e.get('threads_per_run', '')}",
                    " ".join(f"{x:.2f}" for x in load) if load else "-",
                    e.get("python", ""),
                    e.get("torch", ""),
                    e.get("adaptim", ""),
                    str(e.get("git") or "-"),
                    " ".join(e.get("argv", []))[:120],
                ]
            )
        header = [
            "env",
            "time",
            "cpu",
            "cores",
            "jobs x threads",
            "load average (1, 5, 15 min)",
            "python",
            "torch",
            "adaptim",
            "git",
            "command",
        ]
        page.body.append(_html_table(header, env_rows))
        page.md += [_md_table(header, env_rows), ""]

    page.body.insert(toc_at, page.toc_html())
    html_page = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
        + "\n".join(page.body)
        + "</body></html>"
    )
    index = out / "index.html"
    index.write_text(html_page, encoding="utf-8")
    (out / "summary.md").write_text("\n".join(page.md) + "\n", encoding="utf-8")
    return index

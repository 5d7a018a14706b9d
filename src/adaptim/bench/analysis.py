"""From stored runs to the numbers of the report, and the learning-rate search the runner follows.

A run's **status** (:func:`run_status`): ``done`` (it learned), ``did-not-learn`` (it finished no
better than its task's trivial baseline: chance accuracy, or its initial metric;
:meth:`adaptim.bench.tasks.Task.learned`), ``diverged``, ``timeout`` or ``failed``. Runs stored as
``done`` by an older bench are judged again here, so an old database reads as honestly as a new one.

**The lr search** (:func:`replay_search`): on seed 0, from a starting grid (3 lrs half a decade
apart), the search *widens* while the best lr that learned is the lowest or the highest searched (one
lr half a decade further out per round, at most ``SEARCH_MAX_WIDEN`` beyond each end of the starting
grid; with no lr that learned, it goes lower when one diverged, both ways otherwise), then *refines*
once: one lr between the best and its neighbours, at the vertex of the parabola through the three
(log lr, metric) points, or half-way to the better neighbour when one has no finite metric. The
search is a function of the stored results alone, so a bench that resumes it, or a report that reads
it, replays the same decisions.

For each task configuration and optimizer (a *group*):

* **best lr**: among the lrs whose runs learned, the one with the best mean final metric over the
  seeds that every lr of the group has (seed 0 under the default ``tune`` protocol, all seeds under
  ``grid``); diverged runs never win. With no lr that learned, the best of those that did not (the
  group is then marked as not learned, ranked after every group that learned, and still drawn).
* **searched range**: the lowest and highest lr run; a best lr at either end is *at the edge* (a wider
  search might do better), which the report flags.
* **final metric at the best lr**: mean, standard deviation and count over all its seeds.
* **steps / seconds to target**: the median over the best lr's seeds of the first evaluation at which
  the task's target was reached (training seconds, evaluation excluded); ``None`` unless more than
  half of the seeds reached it.
* **lr sensitivity**: the band of grid lrs, contiguous around the best, whose mean metric is within
  5% of the best -- measured as a fraction of the progress from the starting value, i.e.
  ``|m - best| <= 0.05 * |initial - best|`` -- and its width in decades (``log10(hi / lo)``); a band
  that touches the edge of the grid is open (its width is a lower bound).

* **95% interval** of the mean at the best lr: ``t(0.975, n-1) * std / sqrt(n)`` over its seeds.
* **tie groups** (:meth:`TaskSummary.tie_groups`): the optimizers that learned, best first; each group
  is a leader and every later optimizer that a two-sided Welch t-test at 5% cannot tell from it
  (one seed: told apart from nobody). Ranks respect them: a group shares the rank of its first place.

The overall ranks (:func:`overall_ranking`) average these ranks over the learning tasks of one kind
(:data:`TASK_KINDS`: neural networks, convex problems); the 2-D and 1-D test functions are
diagnostics, outside the ranks.

Across tasks, a **performance profile** (Dolan & Moré, Math. Program. 2002): for each optimizer, the
fraction of tasks on which its cost is within a factor ``tau`` of the best optimizer's, where the cost
is the final error (the metric for lower-is-better tasks, ``1 - metric`` for accuracies) or the steps
to target (unreached = infinite).
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from adaptim.bench.optimizers import round_lr
from adaptim.bench.store import RunRecord
from adaptim.bench.tasks import TASKS, Task

__all__ = [
    "BAND_TOLERANCE",
    "PROMOTE",
    "SEARCH_MAX_WIDEN",
    "SEARCH_SPACING",
    "TASK_KINDS",
    "GroupSummary",
    "LrResult",
    "SearchState",
    "TaskSummary",
    "lr_result",
    "overall_ranking",
    "performance_profile",
    "promoted",
    "ranking_by_kind",
    "replay_search",
    "run_status",
    "summarize",
]

BAND_TOLERANCE = 0.05
TIE_ALPHA = 0.05  # Welch t-test level below which two optimizers are told apart on a task
#: The kind of each learning task; every other task (the 2-D and 1-D test functions) is a diagnostic.
TASK_KINDS = {
    "fmnist-mlp": "neural network",
    "fmnist-cnn": "neural network",
    "charlm": "neural network",
    "noisy-quadratic": "convex",
    "digits-logreg": "convex",
}
DIAGNOSTIC = "diagnostic"
SEARCH_SPACING = 0.5  # decades between an end of the searched range and the lr that widens it
SEARCH_MAX_WIDEN = 4  # lrs added beyond each end of the starting grid at most (2 decades)
REFINE_MIN_DECADES = 0.05  # a refinement closer than this to the best lr is not worth a run
# Successive halving: at most this many lrs of a short-run search go on to a full-length run (seed
# 0; the runner-up only if the short runs cannot tell it from the best: promoted); the best of
# them at full length is the chosen lr.
PROMOTE = 2


def _finite(x: float | None) -> bool:
    return x is not None and not (math.isnan(x) or math.isinf(x))


def run_status(task: Task, status: str, initial: float | None, final: float | None) -> str:
    """A stored run's status, with a ``done`` run that did not learn (an older bench's) judged again."""
    if status == "done" and not task.learned(initial, final):
        return "did-not-learn" if _finite(final) else "diverged"
    return status


# -- the learning-rate search ----------------------------------------------------------------------


@dataclass(frozen=True)
class LrResult:
    """What a seed-0 run says to the search: ``kind`` is ``learned``, ``not-learned``, ``diverged``
    or ``failed`` (a timeout or an error: nothing about the lr); ``value`` its final metric and
    ``initial`` its initial one."""

    kind: str
    value: float = math.nan
    initial: float | None = None


def lr_result(task: Task, status: str, initial: float | None, final: float | None) -> LrResult:
    status = run_status(task, status, initial, final)
    if status == "done":
        return LrResult("learned", float(final), initial)
    if status == "did-not-learn":
        return LrResult("not-learned", float(final), initial)
    return LrResult("diverged" if status == "diverged" else "failed", initial=initial)


@dataclass(frozen=True)
class SearchState:
    """Where a group's lr search stands: the lrs asked for so far (ascending), those of them still
    without a result (to run next), and once ``finished``, whether an lr learned (``found``) and
    which one is ``chosen`` for the other seeds."""

    searched: tuple[float, ...]
    pending: tuple[float, ...]
    finished: bool
    chosen: float | None = None
    widened: tuple[int, int] = (0, 0)  # lrs added below and above the starting grid

    @property
    def found(self) -> bool:
        return self.finished and self.chosen is not None


def best_learned(task: Task, lrs: Sequence[float], results: Mapping[float, LrResult]):
    best = None
    for lr in lrs:  # ascending: a tie goes to the smaller lr
        r = results[lr]
        if r.kind == "learned" and (best is None or task.better(r.value, results[best].value)):
            best = lr
    return best


def promoted(
    task: Task, lrs: Sequence[float], results: Mapping[float, LrResult], k: int
) -> list[float]:
    """Of the ``k`` lrs that learned with the best metrics, those that the short runs cannot tell
    from the best (successive halving: the short-run search's lrs that go on to a full-length
    run), best first; a tie goes to the smaller lr.

    "Cannot tell": within ``BAND_TOLERANCE`` of the progress from the trivial baseline to the best,
    the report's lr band. A runner-up clearly worse at short length is not worth a full run.
    """
    learned = [lr for lr in sorted(lrs) if results[lr].kind == "learned"]
    sign = 1.0 if task.lower_is_better else -1.0
    top = sorted(learned, key=lambda lr: (sign * results[lr].value, lr))[:k]
    if not top:
        return []
    best = results[top[0]]
    base = task.baseline(best.initial)
    if base is None:  # no baseline known (an old run): keep them all
        return top
    tolerance = BAND_TOLERANCE * abs(base - best.value)
    return [lr for lr in top if abs(results[lr].value - best.value) <= tolerance]


def replay_search(
    task: Task,
    start: Sequence[float],
    results: Mapping[float, LrResult],
    *,
    widen: int = SEARCH_MAX_WIDEN,
    refine: bool = True,
    spacing: float = SEARCH_SPACING,
) -> SearchState:
    """Replay a group's lr search from its starting grid over the results known so far.

    Deterministic: the same results give the same decisions. ``widen=0, refine=False`` is a fixed
    grid (``--lrs``): pick its best lr that learned.
    """
    searched = sorted(set(start))
    low = high = 0
    refined = not refine
    while True:
        pending = tuple(lr for lr in searched if lr not in results)
        if pending:
            return SearchState(tuple(searched), pending, False, None, (low, high))
        new: list[float] = []
        best = best_learned(task, searched, results)
        if best is not None:
            i = searched.index(best)
            if i == 0 and low < widen:
                new, low = [_lr_at(searched[0], -spacing)], low + 1
            elif i == len(searched) - 1 and high < widen:
                new, high = [_lr_at(searched[-1], spacing)], high + 1
            elif not refined:
                refined = True
                point = _refinement(task, searched, results, i)
                new = [] if point is None else [point]
        else:
            kinds = {results[lr].kind for lr in searched}
            if "diverged" in kinds and low < widen:  # too large somewhere: look lower
                new, low = [_lr_at(searched[0], -spacing)], low + 1
            elif "diverged" not in kinds and "not-learned" in kinds:
                if low < widen:
                    new, low = [*new, _lr_at(searched[0], -spacing)], low + 1
                if high < widen:
                    new, high = [*new, _lr_at(searched[-1], spacing)], high + 1
        new = [lr for lr in new if lr not in searched]
        if not new:
            return SearchState(tuple(searched), (), True, best, (low, high))
        searched = sorted(searched + new)


def _refinement(
    task: Task, searched: Sequence[float], results: Mapping[float, LrResult], i: int
) -> float | None:
    """One lr between the best (``searched[i]``) and its neighbours, or ``None`` if not worth it.

    The vertex of the parabola through the best and both neighbours in (log10 lr, metric), kept
    within half the way to each; with a neighbour missing or without a finite metric, half-way to
    the better neighbour (a finite metric beats none; the smaller lr on a tie).
    """
    xs = [math.log10(lr) for lr in searched]
    sign = 1.0 if task.lower_is_better else -1.0

    def f(j: int) -> float | None:
        v = results[searched[j]].value
        return sign * v if _finite(v) else None

    b, fb = xs[i], f(i)
    left = i - 1 if i > 0 else None
    right = i + 1 if i < len(xs) - 1 else None
    fl = f(left) if left is not None else None
    fr = f(right) if right is not None else None
    if fl is not None and fr is not None and fb is not None:
        dl, dr = b - xs[left], b - xs[right]
        den = dl * (fb - fr) - dr * (fb - fl)
        vertex = b if den == 0 else b - 0.5 * (dl * dl * (fb - fr) - dr * dr * (fb - fl)) / den
        x = min(max(vertex, (xs[left] + b) / 2), (b + xs[right]) / 2)
    else:
        sides = [j for j in (left, right) if j is not None]
        if not sides:
            return None
        finite = [j for j in sides if f(j) is not None]
        j = min(finite, key=lambda k: (f(k), k)) if finite else sides[0]
        x = (b + xs[j]) / 2
    if abs(x - b) < REFINE_MIN_DECADES:
        return None
    lr = _lr_at(10.0**x, 0.0)
    return None if lr in searched else lr


def _lr_at(lr: float, decades: float) -> float:
    """``lr`` moved by ``decades``, on a lattice of a thousandth of a decade (so that half a decade
    twice from 0.03162 is 0.003162, not 0.003161), to the bench's 4 significant digits."""
    return round_lr(10.0 ** round(math.log10(lr) + decades, 3))


@dataclass
class GroupSummary:
    task: str
    optimizer: str
    lrs: list[float | None]
    runs: list[RunRecord]
    best_lr: float | None = None
    has_best: bool = False
    learned: bool = False  # the best lr's runs beat the task's trivial baseline
    best_at_edge: bool = False
    edge: str | None = None  # "low" / "high": the end of the searched range the best lr sits at
    searched: tuple[float, float] | None = None  # lowest and highest lr run
    mean: float = math.nan
    std: float = math.nan
    ci95: float = math.nan  # half-width of the 95% interval of the mean (NaN with one seed)
    n_seeds: int = 0
    lr_curve: list[tuple[float | None, float, float, float, int]] = field(default_factory=list)
    steps_to_target: float | None = None
    seconds_to_target: float | None = None
    reached: int = 0
    band: tuple[float, float] | None = None
    band_decades: float | None = None
    band_open: bool = False
    search_runs: list[RunRecord] = field(default_factory=list)  # successive halving's short runs
    statuses: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    @property
    def best_runs(self) -> list[RunRecord]:
        return [r for r in self.runs if self.has_best and r.lr == self.best_lr]


@dataclass
class TaskSummary:
    task: Task
    config_hash: str
    steps: int
    label: str
    groups: dict[str, GroupSummary]

    @property
    def kind(self) -> str:
        return TASK_KINDS.get(self.task.name, DIAGNOSTIC)

    def tie_groups(self) -> list[list[str]]:
        """The optimizers that learned, best first, in groups that a Welch t-test cannot tell apart
        from the group's leader (``TIE_ALPHA``); one seed tells nothing, so it ties with nobody."""
        from scipy.stats import ttest_ind_from_stats

        order = [g for g in self.ranked() if g.learned and _finite(g.mean)]
        out: list[list[str]] = []
        while order:
            lead, rest = order[0], order[1:]
            group, order = [lead], []
            for g in rest:
                tied = False
                if lead.n_seeds > 1 and g.n_seeds > 1:
                    if lead.std == 0 and g.std == 0:
                        tied = lead.mean == g.mean
                    else:
                        p = ttest_ind_from_stats(
                            lead.mean,
                            lead.std,
                            lead.n_seeds,
                            g.mean,
                            g.std,
                            g.n_seeds,
                            equal_var=False,
                        ).pvalue
                        tied = bool(p >= TIE_ALPHA)
                (group if tied else order).append(g)
            out.append([g.optimizer for g in group])
        return out

    def ranks(self) -> dict[str, int]:
        """Each optimizer's rank on this task (1 is best): a tie group shares the rank of its first
        place; an optimizer that did not learn, or has no finished run, ranks last."""
        out: dict[str, int] = {}
        for group in self.tie_groups():
            rank = len(out) + 1
            out.update({name: rank for name in group})
        return {name: out.get(name, len(self.groups)) for name in self.groups}

    def ranked(self) -> list[GroupSummary]:
        """Groups best first: those that learned by mean final metric at the best lr, then those that
        did not learn, then those without a finished run."""
        sign = 1.0 if self.task.lower_is_better else -1.0
        return sorted(
            self.groups.values(),
            key=lambda g: (
                0 if g.learned and _finite(g.mean) else 1 if _finite(g.mean) else 2,
                sign * g.mean if _finite(g.mean) else 0.0,
                g.optimizer,
            ),
        )


def _lr_curve(
    runs: Sequence[RunRecord], status: Mapping[int, str]
) -> tuple[
    list[tuple[float | None, float, float, float, int]],
    dict[float | None, dict[int, float]],
    dict[float | None, dict[int, float | None]],
    set[int],
]:
    """Per lr (ascending): the mean, min and max final metric over the seeds that every lr ran
    (NaN where a run diverged) and how many were finite; and the finals and initial metrics by lr
    and seed, and those common seeds."""
    by_lr: dict[float | None, dict[int, float]] = defaultdict(dict)
    by_lr_init: dict[float | None, dict[int, float | None]] = defaultdict(dict)
    for r in runs:
        if status[r.id] not in ("done", "did-not-learn", "diverged", "timeout"):
            continue
        ran = status[r.id] in ("done", "did-not-learn") and _finite(r.final_metric)
        by_lr[r.lr][r.seed] = r.final_metric if ran else math.nan
        by_lr_init[r.lr][r.seed] = r.initial_metric
    if not by_lr:
        return [], by_lr, by_lr_init, set()
    common = set.intersection(*(set(d) for d in by_lr.values()))
    if not common:
        common = {min(min(d) for d in by_lr.values())}
    curve = []
    for lr in sorted(by_lr, key=lambda x: -1.0 if x is None else x):
        vals = [by_lr[lr].get(s, math.nan) for s in sorted(common)]
        fin = [v for v in vals if _finite(v)]
        mean = statistics.fmean(fin) if fin and len(fin) == len(vals) else math.nan
        lo, hi = (min(fin), max(fin)) if fin else (math.nan, math.nan)
        curve.append((lr, mean, lo, hi, len(fin)))
    return curve, by_lr, by_lr_init, common


def _summarize_group(
    task: Task,
    optimizer: str,
    runs: list[RunRecord],
    search_runs: Sequence[RunRecord] = (),
) -> GroupSummary:
    """One optimizer on one task configuration.

    ``search_runs``: the short runs of its lr search (successive halving), which give the lrs
    searched, the lr curve, the lr band and the edge flag; the chosen lr (the best of the lrs that
    ran at full length) and everything else come from the full-length ``runs``.
    """
    every = [*runs, *search_runs]
    lrs = sorted({r.lr for r in every}, key=lambda x: -1.0 if x is None else x)
    g = GroupSummary(task.name, optimizer, lrs, runs, search_runs=list(search_runs))
    status = {r.id: run_status(task, r.status, r.initial_metric, r.final_metric) for r in every}
    search_ids = {r.id for r in search_runs}
    for r in every:
        g.statuses[status[r.id]] = g.statuses.get(status[r.id], 0) + 1
        if r.status in ("failed", "timeout") and r.error:
            where = f"lr={r.lr} seed={r.seed}" + (" (lr search)" if r.id in search_ids else "")
            g.errors.append(f"{where}: {r.error.strip().splitlines()[0]}")
    finished = [r for r in runs if status[r.id] in ("done", "did-not-learn", "diverged", "timeout")]
    search_curve = _lr_curve(search_runs, status)[0]
    full_curve, by_lr, by_lr_init, common = _lr_curve(runs, status)
    g.lr_curve = search_curve or full_curve
    tried = [p[0] for p in [*search_curve, *full_curve] if p[0] is not None]
    if tried:
        g.searched = (min(tried), max(tried))
    if not by_lr:
        return g
    # Under successive halving the runner chose among the finalists of the short runs (replayed
    # here from them), so the report does too: a full-length run at another lr (left by an earlier
    # search) is shown, never chosen.
    finalists = _finalists(task, search_runs, status)
    best_v = math.nan
    for lr, mean, *_ in full_curve:
        if not _finite(mean) or (finalists and lr not in finalists):
            continue
        # An lr that learned beats one that did not; then the better mean (a tie: the smaller lr).
        # Judged against the initial metric of the same runs, as the runner judged each run.
        starts = [by_lr_init[lr].get(s) for s in sorted(common)]
        starts = [v for v in starts if _finite(v)]
        learned = task.learned(statistics.fmean(starts) if starts else None, mean)
        if not g.has_best or (learned and not g.learned):
            g.best_lr, best_v, g.has_best, g.learned = lr, mean, True, learned
        elif learned == g.learned and task.better(mean, best_v):
            g.best_lr, best_v = lr, mean
    if not g.has_best:
        return g
    grid = [p[0] for p in g.lr_curve]
    if g.best_lr in grid:  # (a chosen lr is one of its search's lrs)
        i_best = grid.index(g.best_lr)
        g.best_at_edge = len(grid) > 1 and i_best in (0, len(grid) - 1)
        if g.best_at_edge:
            g.edge = "low" if i_best == 0 else "high"
    vals = [v for v in by_lr[g.best_lr].values() if _finite(v)]
    g.n_seeds = len(by_lr[g.best_lr])
    g.mean = statistics.fmean(vals) if vals else math.nan
    g.std = statistics.stdev(vals) if len(vals) > 1 else 0.0
    if len(vals) > 1:
        from scipy.stats import t as student_t

        g.ci95 = float(student_t.ppf(0.975, len(vals) - 1)) * g.std / math.sqrt(len(vals))
    # Time to target at the best lr: median over seeds, if most seeds got there.
    best = [r for r in finished if r.lr == g.best_lr]
    hits = [r for r in best if r.steps_to_target is not None]
    g.reached = len(hits)
    if best and len(hits) * 2 > len(best):
        steps = sorted(
            r.steps_to_target if r.steps_to_target is not None else math.inf for r in best
        )
        secs = sorted(
            r.seconds_to_target if r.seconds_to_target is not None else math.inf for r in best
        )
        g.steps_to_target = float(np.median(steps))
        g.seconds_to_target = float(np.median(secs))
    _set_band(g, [r for r in (search_runs or runs) if status[r.id] != "failed"])
    return g


def _finalists(
    task: Task, search_runs: Sequence[RunRecord], status: Mapping[int, str]
) -> set[float | None]:
    """The lrs a successive-halving search promoted to full length (empty: no short runs)."""
    short = {
        r.lr: lr_result(task, r.status, r.initial_metric, r.final_metric)
        for r in search_runs
        if r.seed == 0 and r.lr is not None and status[r.id] != "running"
    }
    return set(promoted(task, sorted(short), short, PROMOTE))


def _set_band(g: GroupSummary, runs: Sequence[RunRecord]) -> None:
    """The lr band within ``BAND_TOLERANCE`` of the progress from the starting value, on the lr
    curve (the short runs' under successive halving), around the curve's best lr."""
    means = [p[1] for p in g.lr_curve]
    grid = [p[0] for p in g.lr_curve]
    initial = [r.initial_metric for r in runs if _finite(r.initial_metric)]
    finite = [i for i, m in enumerate(means) if _finite(m) and grid[i] is not None]
    if not initial or not finite:
        return
    init = statistics.fmean(initial)
    sign = 1.0 if TASKS[g.task].lower_is_better else -1.0
    i_best = min(finite, key=lambda i: (sign * means[i], i))
    best_v = means[i_best]
    tol = BAND_TOLERANCE * abs(init - best_v)

    def inside(i: int) -> bool:
        return _finite(means[i]) and abs(means[i] - best_v) <= tol

    lo = hi = i_best
    while lo > 0 and inside(lo - 1):
        lo -= 1
    while hi < len(grid) - 1 and inside(hi + 1):
        hi += 1
    lo_lr, hi_lr = grid[lo], grid[hi]
    assert lo_lr is not None and hi_lr is not None
    g.band = (lo_lr, hi_lr)
    g.band_decades = math.log10(hi_lr / lo_lr)
    g.band_open = len(grid) > 1 and (lo == 0 or hi == len(grid) - 1)


def summarize(runs: Sequence[RunRecord]) -> list[TaskSummary]:
    """Group runs by task configuration and optimizer; tasks in the bench's order. The short runs
    of a successive-halving lr search (``search_of`` in their configuration) belong to the
    configuration they searched for, not to one of their own."""
    by_cfg: dict[tuple[str, str], dict[str, list[RunRecord]]] = defaultdict(
        lambda: defaultdict(list)
    )
    search: dict[tuple[str, str], dict[str, list[RunRecord]]] = defaultdict(
        lambda: defaultdict(list)
    )
    steps_of: dict[tuple[str, str], int] = {}
    target_of: dict[tuple[str, str], float] = {}  # a configuration's own target (e.g. --long's)
    for r in runs:
        if r.task not in TASKS:
            continue
        of = r.config.get("search_of")
        if of:
            search[(r.task, of)][r.optimizer].append(r)
            by_cfg[(r.task, of)].setdefault(r.optimizer, [])
            steps_of[(r.task, of)] = int(r.config.get("full_steps") or TASKS[r.task].steps)
            if r.config.get("target") is not None:  # (before any full-length run has finished)
                target_of.setdefault((r.task, of), float(r.config["target"]))
        else:
            by_cfg[(r.task, r.config_hash)][r.optimizer].append(r)
            steps_of[(r.task, r.config_hash)] = int(r.config.get("steps", TASKS[r.task].steps))
            if r.config.get("target") is not None:
                target_of[(r.task, r.config_hash)] = float(r.config["target"])
    order = {name: i for i, name in enumerate(TASKS)}
    n_cfg: dict[str, int] = defaultdict(int)
    n_same: dict[tuple[str, int], int] = defaultdict(int)
    for key in by_cfg:
        n_cfg[key[0]] += 1
        n_same[(key[0], steps_of[key])] += 1
    out = []
    for (task_name, chash), groups in sorted(
        by_cfg.items(), key=lambda kv: (order[kv[0][0]], kv[0][1])
    ):
        task = TASKS[task_name]
        target = target_of.get((task_name, chash), task.target)
        if target != task.target:
            task = replace(task, target=target)
        steps = steps_of[(task_name, chash)]
        short = search.get((task_name, chash), {})
        label = task_name
        if n_cfg[task_name] > 1:  # several configurations: tell them apart (labels name figures)
            how = ", lr search on short runs" if short else ""
            if n_same[(task_name, steps)] > 1 and not short:
                how = f", configuration {chash[:6]}"
            label = f"{task_name} ({steps} steps{how})"
        summaries = {
            opt: _summarize_group(task, opt, rs, short.get(opt, ()))
            for opt, rs in sorted(groups.items())
        }
        out.append(TaskSummary(task, chash, steps, label, summaries))
    return out


def _cost(task: Task, value: float) -> float:
    if not _finite(value):
        return math.inf
    err = value if task.lower_is_better else 1.0 - value
    return max(err, 1e-12)


def performance_profile(
    tasks: Sequence[TaskSummary], measure: str = "final"
) -> tuple[list[str], np.ndarray]:
    """Performance ratios ``r[task, optimizer]`` (inf = failed or missing) and the optimizer names.

    ``measure`` is ``"final"`` (final error at the best lr) or ``"steps"`` (steps to target).
    """
    names = sorted({o for t in tasks for o in t.groups})
    ratios = np.full((len(tasks), len(names)), np.inf)
    for i, t in enumerate(tasks):
        costs = np.full(len(names), np.inf)
        for j, name in enumerate(names):
            g = t.groups.get(name)
            if g is None:
                continue
            if measure == "final":
                costs[j] = _cost(t.task, g.mean)
            elif g.steps_to_target is not None and math.isfinite(g.steps_to_target):
                costs[j] = max(g.steps_to_target, 1.0)
        best = costs.min()
        if math.isfinite(best):
            ratios[i] = costs / best
    return names, ratios


def profile_curve(ratios: np.ndarray, taus: np.ndarray) -> np.ndarray:
    """``rho[tau, optimizer]``: the fraction of tasks with ratio <= tau."""
    if ratios.shape[0] == 0:
        return np.zeros((len(taus), ratios.shape[1]))
    return (ratios[None, :, :] <= taus[:, None, None]).mean(axis=1)


def overall_ranking(
    tasks: Sequence[TaskSummary], kind: str | None = None
) -> list[tuple[str, float, int]]:
    """(optimizer, mean rank over tasks, number of tasks) -- rank 1 is best -- over the learning
    tasks (of ``kind`` when given; diagnostics never count). Ranks respect the task's tie groups; an
    optimizer that did not learn, or has no finished run, on a task counts as last there."""
    chosen = [t for t in tasks if t.kind != DIAGNOSTIC and (kind is None or t.kind == kind)]
    ranks: dict[str, list[float]] = defaultdict(list)
    names = sorted({o for t in chosen for o in t.groups})
    for t in chosen:
        on_task = t.ranks()
        for name in names:
            ranks[name].append(on_task.get(name, len(names)))
    out = [(n, statistics.fmean(r), len(r)) for n, r in ranks.items()]
    return sorted(out, key=lambda x: (x[1], x[0]))


def ranking_by_kind(tasks: Sequence[TaskSummary]) -> dict[str, list[tuple[str, float, int]]]:
    """:func:`overall_ranking` for each kind of learning task present."""
    kinds = sorted({t.kind for t in tasks} - {DIAGNOSTIC})
    return {k: overall_ranking(tasks, k) for k in kinds}


def describe_value(task: Task, value: float | None) -> str:
    if not _finite(value):
        return "-"
    if task.metric.endswith("accuracy"):
        return f"{100 * value:.2f}%"
    if abs(value) < 1e-3 or abs(value) >= 1e4:
        return f"{value:.2e}"
    return f"{value:.4g}"


def as_dict(g: GroupSummary) -> dict[str, Any]:
    return {
        "optimizer": g.optimizer,
        "best_lr": g.best_lr,
        "learned": g.learned,
        "searched": g.searched,
        "best_at_edge": g.best_at_edge,
        "mean": g.mean,
        "std": g.std,
        "ci95": g.ci95,
        "seeds": g.n_seeds,
        "steps_to_target": g.steps_to_target,
        "seconds_to_target": g.seconds_to_target,
        "band_decades": g.band_decades,
        "statuses": g.statuses,
    }

"""Planning and running the bench: the lr sweep, the seeds, the worker processes, the progress bar.

Training seconds (the ``seconds`` of every metric point, the seconds to target) are the CPU time of
the run's process around ``opt.step(closure)`` (one thread: its compute time, not inflated when the
machine is shared; evaluation excluded). ``wall_seconds`` is the run's elapsed time.

Protocol (``"tune"``, the default): for each task and optimizer, search the learning rate on seed 0
(:func:`adaptim.bench.analysis.replay_search`: from a 3-point grid, widen while the best lr that
learned is at an end of what was searched, then refine once around it), then run seeds 1..N-1 at the
chosen lr. Each next lr is computed from the stored results alone, so a resumed bench takes the
search up where it stopped. With ``--lrs`` the grid is fixed (no widening, no refinement).
(``"grid"``: every lr with every seed.) Every run trains on one thread (``torch.set_num_threads(1)``);
runs are spread over ``jobs`` worker processes. Each finished run is written to the database in one
transaction by the parent process.

A run is claimed in the database (:meth:`Store.claim_run`) before it is handed to a worker, so a second
bench on the same database skips what this one holds, and a killed bench loses at most the runs in
progress: re-running the same command skips the finished ones and takes over the stale claims. The
workers are this bench's own: stopped when it stops (an exception, Ctrl-C, the SIGTERM the CLI turns
into an exception), and each one exits by itself within ``PARENT_POLL_SECONDS`` of its parent's death
(even by SIGKILL), so no worker outlives its bench.

Diagnostic (neural-network tasks): at the end of every run that finished without diverging, the
runner measures ``R_med`` (Jiang, Malik & Li, NeurIPS 2023, arXiv:2211.02254;
:mod:`adaptim.bench.diagnostics`) of the first layer's weight on the task's fixed probe batch
(:meth:`adaptim.bench.tasks.HessianProbe.r_med`: exact, or Hutchinson's estimate for a weight of
more than a few thousand entries), and stores it as the run's ``r_med`` metric: one point at
the last step, whose ``seconds`` are the CPU seconds the measurement took. Every full-length run
gets it (not only the seeds at the chosen lr): seed 0 of the chosen lr is a search run, known only
once the search ends. It comes after training and evaluation, from its own random source, so it
changes no result; it is in ``wall_seconds`` and ``cpu_seconds``, never in ``train_seconds``. A
short lr-search run of successive halving gets none: its network is not one the report shows.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
import os
import sqlite3
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import torch

from adaptim.bench.analysis import PROMOTE, best_learned, lr_result, promoted, replay_search
from adaptim.bench.optimizers import (
    all_optimizers,
    bench_kwargs,
    lr_center,
    lr_grid,
    make_optimizer,
)
from adaptim.bench.store import Store
from adaptim.bench.tasks import TASKS, Task, check_length

__all__ = [
    "BENCH_VERSION",
    "RUN_ELSEWHERE",
    "Plan",
    "RunSpec",
    "execute_run",
    "make_plan",
    "run_plan",
]

BENCH_VERSION = 5  # bump when a task changes, so old results are not mixed in
DIVERGED_LOSS = 1e12  # |loss| above this (or NaN/inf) marks the run as diverged
TIME_LIMIT_FACTOR = 20.0  # a run is stopped after this many times its task's estimated seconds
# A claim's lease is the run's time limit plus this (a worker's start-up, a busy machine): a claim
# older than that is taken over even if its owner seems alive.
CLAIM_GRACE_SECONDS = 120.0
PARENT_POLL_SECONDS = 0.2  # how often a worker checks that its bench is still alive
RUN_ELSEWHERE = "run by another bench"  # a key of run_plan's counts
# The 2-D and 1-D test functions are diagnostics, outside the ranks (issue 11): at most this many
# seeds each, which leaves the time budget to the seeds of the tasks that are ranked.
DIAGNOSTIC_SEEDS = 3


def config_hash(
    task: Task, steps: int, search_steps: int | None = None, target: float | None = None
) -> str:
    """Identifies a task configuration (not the optimizer, lr or seed). ``search_steps``: the length
    of the short runs its lr search ran on (successive halving), part of the protocol that chose the
    lr, so a configuration searched another way is another configuration. ``target``: the metric
    value whose first crossing is timed (default: the task's)."""
    cfg: dict[str, Any] = {
        "bench": BENCH_VERSION,
        "task": task.name,
        "steps": steps,
        "schedule": task.schedule,
        "eval_every": task.eval_every,
        "target": task.target if target is None else target,
        "lr_hint": task.lr_hint,  # the default lr grid: a new grid is a new configuration
        "lr_scale": task.lr_scale,
    }
    if search_steps is not None:
        cfg["search_steps"] = search_steps
    return hashlib.sha1(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:12]


def search_config_hash(task: Task, search_steps: int, full_hash: str) -> str:
    """The configuration of the short lr-search runs of the configuration ``full_hash``."""
    cfg = {"bench": BENCH_VERSION, "task": task.name, "steps": search_steps, "search_of": full_hash}
    return hashlib.sha1(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:12]


def run_key(task: str, optimizer: str, lr: float | None, seed: int, chash: str) -> str:
    lr_s = "default" if lr is None else f"{lr:.6g}"
    return f"{task}|{optimizer}|{lr_s}|{seed}|{chash}"


@dataclass(frozen=True)
class RunSpec:
    task: str
    optimizer: str
    lr: float | None
    seed: int
    steps: int
    config_hash: str
    time_limit: float
    cost: float  # estimated seconds on one thread
    search_of: str | None = None  # a short lr-search run: the full configuration it searches for
    full_steps: int | None = None  # ... and that configuration's steps
    target: float | None = None  # the metric value to time the first crossing of (None: the task's)

    @property
    def key(self) -> str:
        return run_key(self.task, self.optimizer, self.lr, self.seed, self.config_hash)

    def as_dict(self) -> dict[str, Any]:
        task = TASKS[self.task]
        return {
            "key": self.key,
            "task": self.task,
            "optimizer": self.optimizer,
            "lr": self.lr,
            "seed": self.seed,
            "steps": self.steps,
            "config_hash": self.config_hash,
            "schedule": task.schedule,
            "eval_every": task.eval_every,
            "target": task.target if self.target is None else self.target,
            "metric": task.metric,
            "lower_is_better": task.lower_is_better,
            "bench_version": BENCH_VERSION,
            "optimizer_kwargs": _kwargs_of(self.optimizer),
            **(
                {"search_of": self.search_of, "full_steps": self.full_steps}
                if self.search_of
                else {}
            ),
        }


def _kwargs_of(name: str) -> dict[str, Any]:
    try:
        return {
            k: v if isinstance(v, int | float | str | bool) else repr(v)
            for k, v in bench_kwargs(name).items()
        }
    except Exception:  # an unknown name is reported by the run itself
        return {}


# Runs a searched group is expected to add to its starting grid: one refinement (not on the
# diagnostic test functions) and, on average, about one widening (0.6 to 0.9 per search in the
# default bench of 2026-12-06). Only for the estimates printed before and during a bench.
EXPECTED_SEARCH_EXTRA = 2


@dataclass
class Group:
    """One (task, optimizer) pair: its starting lr grid, whether the search may widen and refine it
    (``search``), and its seeds.

    With ``search_steps`` (successive halving), the lr search runs on short runs of that many steps
    (their own configuration, ``search_hash``, the schedule compressed to the short run); its
    ``PROMOTE`` best lrs that learned then run at full length on seed 0, and the best of those is
    the chosen lr. Without it, the search runs at full length."""

    task: str
    optimizer: str
    lrs: list[float | None]
    seeds: int
    steps: int
    config_hash: str
    protocol: str
    cost: float
    time_limit: float
    search: bool = False
    search_steps: int | None = None
    search_hash: str | None = None
    target: float | None = None  # None: the task's

    @property
    def refines(self) -> bool:
        """Whether the lr search refines around its best (the test functions are diagnostics:
        bracketing their lr is enough)."""
        return TASKS[self.task].group == "training"

    @property
    def expected_extra(self) -> int:
        """The runs the search is expected to add to the starting grid (estimates only)."""
        if not self.search:
            return 0
        return EXPECTED_SEARCH_EXTRA - (0 if self.refines else 1)

    @property
    def search_cost(self) -> float:
        return TASKS[self.task].run_seconds(self.search_steps or self.steps)

    def next_runs(
        self, search_results: dict[Any, Any], full_results: dict[Any, Any]
    ) -> tuple[list[RunSpec], int, list[float | None], tuple[int, float]]:
        """From the seed-0 results known so far (``tune`` only; ``search_results`` of the short
        runs, ``full_results`` of the full-length ones): the seed-0 runs to do next, how many
        seed-0 runs have finished, the lr for the other seeds (``[]``: none yet, or none learned),
        and the number and estimated cost of the seed-0 runs expected beyond those returned."""
        if self.lrs == [None]:  # an optimizer without an lr: one setting, nothing to search
            if None not in full_results:
                return [self.spec(None, 0)], 0, [], (0, 0.0)
            return [], 1, [None] if full_results[None].kind == "learned" else [], (0, 0.0)
        task, start = TASKS[self.task], [lr for lr in self.lrs if lr is not None]
        short = self.search_steps is not None
        results = search_results if short else full_results
        if self.search:
            state = replay_search(task, start, results, refine=self.refines)
        else:
            state = replay_search(task, start, results, widen=0, refine=False)
        n_done = len(state.searched) - len(state.pending)
        if not state.finished:
            extra = max(0, len(start) + self.expected_extra - len(state.searched))
            n_promote = PROMOTE if short else 0
            later = (extra + n_promote, extra * self.search_cost + n_promote * self.cost)
            make = self.search_spec if short else lambda lr: self.spec(lr, 0)
            return [make(lr) for lr in state.pending], n_done, [], later
        if not short:
            return [], n_done, [state.chosen] if state.found else [], (0, 0.0)
        finalists = promoted(task, state.searched, search_results, PROMOTE)
        pending = [lr for lr in finalists if lr not in full_results]
        n_done += len(finalists) - len(pending)
        if pending:
            return [self.spec(lr, 0) for lr in pending], n_done, [], (0, 0.0)
        chosen = best_learned(task, sorted(finalists), full_results)
        return [], n_done, [] if chosen is None else [chosen], (0, 0.0)

    def spec(self, lr: float | None, seed: int) -> RunSpec:
        return RunSpec(
            self.task,
            self.optimizer,
            lr,
            seed,
            self.steps,
            self.config_hash,
            self.time_limit,
            self.cost,
            target=self.target,
        )

    def search_spec(self, lr: float | None) -> RunSpec:
        """A short lr-search run (seed 0) of a successive-halving group."""
        assert self.search_steps is not None and self.search_hash is not None
        return RunSpec(
            self.task,
            self.optimizer,
            lr,
            0,
            self.search_steps,
            self.search_hash,
            self.time_limit,
            self.search_cost,
            search_of=self.config_hash,
            full_steps=self.steps,
            target=self.target,
        )

    def first_phase(self) -> list[RunSpec]:
        if self.protocol == "grid":
            return [self.spec(lr, s) for lr in self.lrs for s in range(self.seeds)]
        if self.search_steps is not None:  # (never set for an optimizer without an lr)
            return [self.search_spec(lr) for lr in self.lrs]
        return [self.spec(lr, 0) for lr in self.lrs]

    def n_runs(self) -> int:
        """The number of runs (an estimate for a searched group: the search adapts)."""
        if self.protocol == "grid":
            return len(self.lrs) * self.seeds
        n = len(self.lrs) + self.expected_extra + self.seeds - 1
        return n + (PROMOTE if self.search_steps is not None else 0)

    def expected_cost(self) -> float:
        """Estimated one-thread seconds of all of the group's runs."""
        if self.protocol == "grid" or self.search_steps is None:
            return self.n_runs() * self.cost
        n_search = len(self.lrs) + self.expected_extra
        return n_search * self.search_cost + (PROMOTE + self.seeds - 1) * self.cost


@dataclass
class Plan:
    groups: list[Group]
    skipped_tasks: dict[str, str] = field(default_factory=dict)  # task -> why (missing data)

    @property
    def config_hashes(self) -> list[str]:
        """Every configuration the plan's runs are stored under (the short search runs' too)."""
        hashes = {g.config_hash for g in self.groups}
        return sorted(hashes | {g.search_hash for g in self.groups if g.search_hash})

    def total_runs(self) -> int:
        return sum(g.n_runs() for g in self.groups)

    def total_cost(self) -> float:
        return sum(g.expected_cost() for g in self.groups)


def make_plan(
    tasks: Sequence[str],
    optimizers: Sequence[str],
    *,
    seeds: int = 3,
    lrs: Sequence[float] | None = None,
    lr_points: int = 3,
    steps: int | None = None,
    length: str = "default",
    protocol: str = "tune",
) -> Plan:
    """The runs of a bench invocation (tasks whose data is missing are left out, with the reason).
    ``length`` (``"quick"``, ``"default"``, ``"long"``) picks each task's steps; ``steps``, when
    given, overrides it for every task."""
    if protocol not in ("tune", "grid"):
        raise ValueError(f"protocol must be 'tune' or 'grid', got {protocol!r}")
    check_length(length)
    known = all_optimizers()
    plan = Plan(groups=[])
    for tname in tasks:
        task = TASKS[tname]
        why = task.missing_data()
        if why is not None:
            plan.skipped_tasks[tname] = why
            continue
        n_steps = steps or task.steps_for(length)
        cost = task.run_seconds(n_steps)
        limit = max(60.0, TIME_LIMIT_FACTOR * cost)
        # Successive halving where the task asks for it and the lr is searched (not --lrs/grid).
        halving = protocol == "tune" and not lrs and task.search_fraction < 1.0
        search_steps = max(1, round(n_steps * task.search_fraction)) if halving else None
        if search_steps is not None and search_steps >= n_steps:  # e.g. --steps 2: no shorter run
            search_steps = None
        target = task.target_for(length)
        chash = config_hash(task, n_steps, search_steps, target)
        shash = None if search_steps is None else search_config_hash(task, search_steps, chash)
        for oname in optimizers:
            opt = known[oname]
            if not opt.uses_lr:
                grid: list[float | None] = [None]
            elif lrs:
                grid = list(lrs)
            else:
                grid = lr_grid(lr_center(opt, task.lr_hint, task.lr_scale), lr_points)
            search = protocol == "tune" and not lrs and opt.uses_lr
            short = search_steps if opt.uses_lr else None
            n_seeds = seeds if task.group == "training" else min(seeds, DIAGNOSTIC_SEEDS)
            plan.groups.append(
                Group(
                    tname,
                    oname,
                    grid,
                    n_seeds,
                    n_steps,
                    chash,
                    protocol,
                    cost,
                    limit,
                    search,
                    short,
                    shash if short else None,
                    target if target != task.target else None,
                )
            )
    return plan


# -- one run ------------------------------------------------------------------------------------


def _finite(x: float) -> bool:
    return not (math.isnan(x) or math.isinf(x))


def execute_run(spec: dict[str, Any] | RunSpec, time_limit: float | None = None) -> dict[str, Any]:
    """Train one (task, optimizer, lr, seed) run; return its result (never raises)."""
    if isinstance(spec, RunSpec):
        time_limit = spec.time_limit if time_limit is None else time_limit
        spec = spec.as_dict()
    started = time.time()
    wall0 = time.perf_counter()
    cpu0 = time.process_time()
    result: dict[str, Any] = {"started": started, "metrics": {}, "series": {}}
    try:
        torch.set_num_threads(1)
        task = TASKS[spec["task"]]
        if spec.get("target") is not None and spec["target"] != task.target:  # e.g. --long's
            task = replace(task, target=float(spec["target"]))
        steps, seed, lr = int(spec["steps"]), int(spec["seed"]), spec["lr"]
        torch.manual_seed(seed)
        problem = task.build(seed=seed, steps=steps)
        opt = make_optimizer(spec["optimizer"], problem.params, lr)
        sched = None
        if task.schedule == "cosine":
            sched = torch.optim.lr_scheduler.LambdaLR(
                opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
            )
        log_every = task.log_every or max(1, steps // 50)
        initial = float(problem.evaluate())
        evals = [(0, 0.0, initial)]
        losses: list[tuple[int, float, float]] = []
        positions = [problem.position()] if problem.position else None
        result["initial_metric"] = initial
        train_s = 0.0
        window: list[float] = []
        status = "done"
        steps_to_target = seconds_to_target = None
        if task.reached(initial):
            steps_to_target, seconds_to_target = 0, 0.0
        step = 0
        for step in range(steps):
            seen: list[float] = []

            def closure(step: int = step, seen: list[float] = seen) -> torch.Tensor:
                opt.zero_grad(set_to_none=True)
                if problem.backward is not None:
                    loss = problem.backward(step)
                else:
                    loss = problem.loss(step)
                    loss.backward()
                if not seen:
                    seen.append(float(loss.detach()))
                return loss

            t0 = time.process_time()
            opt.step(closure)
            if sched is not None:
                sched.step()
            train_s += time.process_time() - t0
            if not seen:
                raise RuntimeError(f"{spec['optimizer']}.step(closure) did not call the closure")
            loss_v = seen[0]
            window.append(loss_v)
            if not _finite(loss_v) or abs(loss_v) > DIVERGED_LOSS:
                status = "diverged"
                losses.append((step + 1, train_s, loss_v))
                break
            if positions is not None:
                positions.append(problem.position())
            if (step + 1) % log_every == 0 or step + 1 == steps:
                losses.append((step + 1, train_s, sum(window) / len(window)))
                window = []
            if (step + 1) % task.eval_every == 0 or step + 1 == steps:
                value = float(problem.evaluate())
                evals.append((step + 1, train_s, value))
                if not _finite(value):
                    status = "diverged"
                    break
                if steps_to_target is None and task.reached(value):
                    steps_to_target, seconds_to_target = step + 1, train_s
            if time_limit is not None and time.perf_counter() - wall0 > time_limit:
                status = "timeout"
                result["error"] = (
                    f"stopped after {step + 1} of {steps} steps: over {time_limit:.0f} s"
                )
                break
        final_eval = problem.extra.get("final_evaluate")
        if status == "done":
            final = float(final_eval()) if final_eval else evals[-1][2]
            if not _finite(final):
                status, final = "diverged", math.nan
            elif not task.learned(initial, final):
                status = "did-not-learn"
        else:
            final = math.nan
        result.update(
            status=status,
            final_metric=final,
            final_loss=losses[-1][2] if losses else math.nan,
            steps_done=step + 1,
            train_seconds=train_s,
            steps_to_target=steps_to_target,
            seconds_to_target=seconds_to_target,
        )
        result["metrics"] = {"train_loss": losses, "metric": evals}
        # not on a short lr-search run: its network is not one the report shows
        probe = None if spec.get("search_of") else problem.probe
        if probe is not None and status in ("done", "did-not-learn"):
            t0 = time.process_time()
            try:
                value = probe.r_med()
            except Exception as err:  # a failing diagnostic costs the run nothing but its value
                value = math.nan
                result["error"] = f"R_med diagnostic failed: {type(err).__name__}: {err}"
            result["metrics"]["r_med"] = [(step + 1, time.process_time() - t0, value)]
        if positions is not None and spec["seed"] == 0:
            result["series"]["trajectory"] = positions
    except Exception as err:  # a failing optimizer is recorded, never crashes the bench
        result.update(
            status="failed",
            error=f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=-4)}",
        )
    result["wall_seconds"] = time.perf_counter() - wall0
    result["cpu_seconds"] = time.process_time() - cpu0
    return result


def _worker_init() -> None:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=1)
    except ImportError:  # pragma: no cover - comes with scikit-learn
        pass
    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass


# The first lines a worker process runs, before its slow imports (torch: seconds on a busy machine),
# so that from its first moment it exits when its bench dies (even by SIGKILL, which leaves the bench
# no chance to stop it: the orphan is re-parented, which the thread notices) and ignores Ctrl-C,
# which a terminal sends to the whole process group: the bench alone decides, and stops its workers.
_WORKER_BOOT = """
import json, os, signal, sys, threading, time
parent, fd, poll = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
sys.path[:] = json.loads(sys.argv[4])
signal.signal(signal.SIGINT, signal.SIG_IGN)
def exit_with_parent():
    while os.getppid() == parent:
        time.sleep(poll)
    os._exit(1)
threading.Thread(target=exit_with_parent, daemon=True).start()
from multiprocessing.connection import Connection
from adaptim.bench.runner import _worker_main
_worker_main(Connection(fd))
"""


def _worker_main(conn: Any) -> None:
    """A worker process: run the ``(spec, time_limit)`` the parent sends, one at a time, until the
    parent sends ``None`` or goes away."""
    _worker_init()
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        spec, time_limit = job
        conn.send(execute_run(spec, time_limit=time_limit))


@dataclass(eq=False)
class _Worker:
    process: subprocess.Popen
    conn: Any  # multiprocessing.connection.Connection: the bench's end of the worker's pipe


class Executor(Protocol):
    """Where the scheduler's runs execute: one run per :meth:`submit`, results from :meth:`wait`.

    ``busy`` maps each submitted run not yet returned by :meth:`wait` to its spec (the scheduler
    reads its size). :meth:`wait` blocks until at least one run has ended and returns every ended
    run with its result dict (a run whose process died is ``{"status": "failed", "error": ...}``);
    :meth:`close` stops the runs in progress and frees everything (the scheduler then releases
    their claims, so the next bench runs them again).
    """

    busy: Mapping[Any, RunSpec]

    def submit(self, spec: RunSpec) -> None: ...

    def wait(self) -> list[tuple[RunSpec, dict[str, Any]]]: ...

    def close(self) -> None: ...


class _Workers:
    """The bench's worker processes (fresh interpreters, POSIX), one run at a time each, started as
    they are needed (the scheduler keeps at most ``jobs`` busy).

    Our own processes rather than a ``concurrent.futures`` pool: :meth:`close` terminates the busy
    ones (a pool lets running tasks finish), a worker that dies fails its own run only, and a worker
    watches for its bench's death from its first line (``_WORKER_BOOT``), not after its imports.
    """

    def __init__(self) -> None:
        self.idle: list[_Worker] = []
        self.busy: dict[_Worker, RunSpec] = {}

    def submit(self, spec: RunSpec) -> None:
        worker = self.idle.pop() if self.idle else self._start()
        worker.conn.send((spec.as_dict(), spec.time_limit))
        self.busy[worker] = spec

    def _start(self) -> _Worker:
        from multiprocessing import Pipe

        ours, theirs = Pipe()
        fd = theirs.fileno()
        argv = [str(os.getpid()), str(fd), str(PARENT_POLL_SECONDS), json.dumps(sys.path)]
        process = subprocess.Popen([sys.executable, "-c", _WORKER_BOOT, *argv], pass_fds=[fd])
        theirs.close()  # the worker holds the only other end: its death reads as end of file here
        return _Worker(process, ours)

    def wait(self) -> list[tuple[RunSpec, dict[str, Any]]]:
        """Wait until at least one busy worker has a result or has died; those runs' results."""
        from multiprocessing.connection import wait

        by_conn = {worker.conn: worker for worker in self.busy}
        out = []
        for ready in wait(list(by_conn)):
            worker = by_conn[ready]
            spec = self.busy.pop(worker)
            try:
                result = worker.conn.recv()
            except (EOFError, OSError):  # killed, out of memory, a crash in C code
                worker.conn.close()
                code = worker.process.wait()
                result = {
                    "status": "failed",
                    "error": f"the worker process died (exit code {code})",
                }
            else:
                self.idle.append(worker)
            out.append((spec, result))
        return out

    def close(self) -> None:
        """Stop every worker, busy or idle, and wait for them."""
        workers = [*self.idle, *self.busy]
        for worker in workers:
            worker.process.terminate()
        for worker in workers:
            try:
                worker.process.wait(5.0)
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait()
            worker.conn.close()
        self.idle.clear()
        self.busy.clear()


# -- the scheduler ------------------------------------------------------------------------------


@dataclass
class Progress:
    """What the scheduler reports to its progress callback after each run."""

    done: int
    total: int
    cost_done: float
    cost_total: float
    last: RunSpec | None
    status: str | None


def _seed0_results(
    store: Store, group: Group, retry: bool, ran_here: set[str], search: bool = False
) -> dict[Any, Any]:
    """The stored seed-0 results of a group, by lr, as the search reads them (``search``: those of
    its short search runs).

    A ``running`` row is no result yet. A ``failed`` row is one only if this bench ran it (``retry``
    off); a bench that starts retries the failed runs of earlier ones, as it does any unfinished run.
    """
    rows = store.conn.execute(
        "SELECT key, lr, status, initial_metric, final_metric FROM runs"
        " WHERE task = ? AND optimizer = ? AND config_hash = ? AND seed = 0",
        (group.task, group.optimizer, group.search_hash if search else group.config_hash),
    ).fetchall()
    task = TASKS[group.task]
    out: dict[Any, Any] = {}
    for key, lr, status, initial, final in rows:
        if status == "running" or (status == "failed" and (retry or key not in ran_here)):
            continue
        out[lr] = lr_result(task, status, initial, final)
    return out


def run_plan(
    plan: Plan,
    store: Store,
    *,
    jobs: int = 1,
    env_id: int | None = None,
    progress: Callable[[Progress], None] | None = None,
    on_start: Callable[[int, int, float], None] | None = None,
    executor: Executor | None = None,
) -> dict[str, int]:
    """Run every unfinished run of ``plan``; returns counts by status of the runs done now.

    ``executor`` runs the runs elsewhere (e.g. on a Ray cluster); by default ``jobs`` > 1 starts
    local worker processes and ``jobs`` = 1 runs in this process. The scheduler keeps at most
    ``jobs`` runs with the executor at a time, and this process alone writes to the database.

    Runs that another bench on the same database finished or holds meanwhile are not run; their
    number is under ``RUN_ELSEWHERE``. Under the ``tune`` protocol, each group's next runs (the
    search's next lrs, then the seeds at the chosen lr) are queued as its seed-0 runs end, computed
    from the database.

    ``on_start(n_to_run, n_already_finished, estimated_cost)`` is called once the resume state is
    known, before any run starts; the totals are estimates while searches are under way.
    """
    queue: list[tuple[float, int, RunSpec]] = []
    queued: set[str] = set()  # keys this bench has queued (each once)
    ran_here: set[str] = set()
    running = 0
    counter = 0
    # The runs a group is still expected to need beyond those queued, and their one-thread seconds.
    future: dict[tuple[str, str], tuple[int, float]] = {}
    by_group = {(g.task, g.optimizer): g for g in plan.groups}

    def push(spec: RunSpec) -> bool:
        nonlocal counter
        if spec.key in queued:
            return False
        queued.add(spec.key)
        # Expensive runs first (shortest makespan), then plan order.
        heapq.heappush(queue, (-spec.cost, counter, spec))
        counter += 1
        return True

    def advance(g: Group, retry: bool = False) -> int:
        """Queue what a ``tune`` group needs next; returns how many of its runs are finished."""
        search = {} if g.search_hash is None else _seed0_results(store, g, retry, ran_here, True)
        full = _seed0_results(store, g, retry, ran_here, False)
        pending, n_done, chosen, (n_later, later) = g.next_runs(search, full)
        for spec in pending:
            push(spec)
        # Once nothing is pending, the seeds are queued, or no lr learned and none will run.
        expected = (n_later + g.seeds - 1, later + (g.seeds - 1) * g.cost) if pending else (0, 0.0)
        for lr in chosen:
            specs = [g.spec(lr, s) for s in range(1, g.seeds)]
            done_keys = store.finished_keys(s.key for s in specs)
            n_done += len(done_keys)
            for s in specs:
                if s.key not in done_keys:
                    push(s)
        future[(g.task, g.optimizer)] = expected
        return n_done

    already = 0
    for g in plan.groups:
        if g.protocol == "grid":
            runs = g.first_phase()
            finished = store.finished_keys(s.key for s in runs)
            already += len(finished)
            for s in runs:
                if s.key not in finished:
                    push(s)
        else:
            already += advance(g, retry=True)

    def totals() -> tuple[int, float]:
        n = len(queue) + running + sum(n for n, _ in future.values())
        cost = sum(-c for c, _, _ in queue) + running_cost + sum(c for _, c in future.values())
        return done_runs + n, cost_done + cost

    counts: dict[str, int] = {}
    done_runs, cost_done, elsewhere, running_cost = 0, 0.0, 0, 0.0
    if on_start is not None:
        n_todo, cost_todo = totals()
        on_start(n_todo, already, cost_todo)

    def seed0_ended(spec: RunSpec) -> None:
        """A seed-0 run ended (here or in another bench): the group's next runs may be due."""
        g = by_group[(spec.task, spec.optimizer)]
        if g.protocol == "tune":
            advance(g)

    def take_next() -> RunSpec | None:
        """The next run of the queue that this bench may run now (claimed), or ``None``."""
        nonlocal elsewhere, running, running_cost
        while queue:
            _, _, spec = heapq.heappop(queue)
            if store.claim_run(spec.as_dict(), env_id, spec.time_limit + CLAIM_GRACE_SECONDS):
                running += 1
                running_cost += spec.cost
                return spec
            # Another bench on this database has finished it or is running it.
            elsewhere += 1
            if spec.seed == 0:
                seed0_ended(spec)
        return None

    def finish(spec: RunSpec, result: dict[str, Any]) -> None:
        nonlocal done_runs, cost_done, running, running_cost
        store.write_result(spec.as_dict(), result, env_id)
        ran_here.add(spec.key)
        counts[result["status"]] = counts.get(result["status"], 0) + 1
        done_runs += 1
        cost_done += spec.cost
        running -= 1
        running_cost -= spec.cost
        if spec.seed == 0:
            seed0_ended(spec)
        if progress is not None:
            n_total, cost_total = totals()
            progress(Progress(done_runs, n_total, cost_done, cost_total, spec, result["status"]))

    workers: Executor | None = (
        executor if executor is not None else _Workers() if jobs > 1 else None
    )
    try:
        if workers is None:
            _worker_init()
            while (spec := take_next()) is not None:
                finish(spec, execute_run(spec))
        else:
            for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
                os.environ.setdefault(
                    var, "1"
                )  # inherited by the spawned workers before numpy loads
            while True:
                while len(workers.busy) < jobs and (spec := take_next()) is not None:
                    workers.submit(spec)
                if not workers.busy:
                    break
                for spec, result in workers.wait():
                    finish(spec, result)
    finally:
        try:
            if workers is not None:
                workers.close()
        finally:
            try:  # an interrupted bench frees its runs in progress for the next one
                store.release_claims()
            except sqlite3.Error:  # the database itself failed: the claims lapse with this process
                pass
    if elsewhere:
        counts[RUN_ELSEWHERE] = elsewhere
    return counts

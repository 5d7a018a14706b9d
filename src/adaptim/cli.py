"""The ``adaptim`` command.

``adaptim bench``   train the bench's tasks with each optimizer, store every run, write the report
``adaptim report``  render the report from the database alone
``adaptim list``    tasks and optimizers, one line each

Run ``adaptim bench --help`` for the options; ``docs/bench.md`` explains the protocol and the report.

``bench`` and ``report`` need the ``[bench]`` extra and say so at once when it is missing; a bad
``--db`` (a directory, a damaged file) is refused before anything runs; SIGTERM stops a bench the way
Ctrl-C does: its workers stop with it and the next run resumes (:mod:`adaptim.bench.runner`).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["main"]

DEFAULT_DB = "adaptim-results.db"
DEFAULT_OUT = "adaptim-report"
DEFAULT_SEEDS = 5  # issue 11: at least 5 seeds at each optimizer's chosen setting
QUICK_TASKS = (
    "rosenbrock",
    "diffgrad-f1",
    "noisy-quadratic",
    "digits-logreg",
    "fmnist-mlp",
    "charlm",
)


# The modules of the `[bench]` extra each command imports (module -> its package on PyPI).
EXTRA_MODULES = {
    "bench": {
        "matplotlib": "matplotlib",
        "rich": "rich",
        "scipy": "scipy",
        "sklearn": "scikit-learn",
    },
    "report": {"matplotlib": "matplotlib", "scipy": "scipy"},  # scipy: intervals and ties
}


class UsageError(Exception):
    """A bad command line: printed with the usage hint, exit status 2."""


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread so that a bench stops the way Ctrl-C stops it.

    A ``BaseException``, like ``KeyboardInterrupt``: a run executing in this process records what
    its code raises (``except Exception``) and must not swallow this.
    """


def _missing_packages(command: str) -> list[str]:
    """The packages of the ``[bench]`` extra that ``command`` needs and cannot find."""
    needed = EXTRA_MODULES.get(command, {})
    return [
        package for module, package in needed.items() if importlib.util.find_spec(module) is None
    ]


def _require_extra(command: str) -> None:
    missing = _missing_packages(command)
    if missing:
        raise UsageError(
            f"`adaptim {command}` needs the bench extra; missing: {', '.join(missing)}. "
            'Install it with: pip install "adaptim[bench]"'
        )


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Turn SIGTERM into :class:`_Terminated` while the block runs (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _split(text: str | None) -> list[str]:
    if not text:
        return []
    return [p.strip() for p in text.replace(" ", ",").split(",") if p.strip()]


def _resolve_tasks(text: str | None, quick: bool) -> list[str]:
    from adaptim.bench.tasks import TASKS

    if not text:
        return list(QUICK_TASKS if quick else TASKS)
    out: list[str] = []
    for name in _split(text):
        key = name.lower()
        if key == "all":
            out += [t for t in TASKS if t not in out]
            continue
        if key not in TASKS:
            from adaptim.registry import closest

            close = closest(key, list(TASKS))
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise UsageError(f"unknown task {name!r}{hint} (`adaptim list` shows them all)")
        if key not in out:
            out.append(key)
    return out


def _resolve_optimizers(text: str | None) -> list[str]:
    from adaptim.bench.optimizers import default_optimizers, resolve_optimizers

    if not text:
        return default_optimizers()
    try:
        return resolve_optimizers(_split(text))
    except ValueError as err:
        raise UsageError(str(err)) from None


def _parse_lrs_option(text: str) -> list[float]:
    """``--lrs``: finite positive learning rates, ``lo:hi:n`` or a comma list; else a UsageError
    (:func:`adaptim.bench.optimizers.parse_lrs` checks it and names ``--lrs``)."""
    from adaptim.bench.optimizers import parse_lrs

    try:
        return parse_lrs(text)
    except ValueError as err:
        raise UsageError(str(err)) from None


def _positive_int(name: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{name} must be a positive integer, got {text!r}"
            ) from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{name} must be a positive integer, got {text!r}")
        return value

    return parse


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adaptim", description="adaptim: adaptive optimizers for PyTorch, and their bench."
    )
    sub = parser.add_subparsers(dest="command", metavar="{bench,report,list}")

    b = sub.add_parser(
        "bench",
        help="train the bench's tasks with each optimizer and write the report",
        description="Train real small tasks with each optimizer (a learning-rate search and several "
        "seeds, one thread per run), store every run in SQLite, and write an HTML report. Re-running "
        "the same command skips the runs already finished.",
    )
    b.add_argument(
        "--optimizers",
        help="comma-separated names or patterns (adam*, all); default: every registered optimizer "
        "plus the torch.optim baselines torch-adamw, torch-sgdm, torch-nadam, torch-rmsprop and "
        "torch-adagrad",
    )
    b.add_argument("--tasks", help="comma-separated task names (default: all; `adaptim list`)")
    b.add_argument(
        "--seeds",
        type=_positive_int("--seeds"),
        help=f"seeds per optimizer and task, at its chosen lr (default {DEFAULT_SEEDS}; "
        "1 with --quick)",
    )
    b.add_argument(
        "--lrs",
        help="one fixed lr grid for every optimizer, no search beyond it: lo:hi:n (log-spaced) or "
        "a comma list (default: an lr search from --lr-points around each optimizer's usual lr)",
    )
    b.add_argument(
        "--lr-points",
        type=_positive_int("--lr-points"),
        default=3,
        help="points of the starting grid of each optimizer's lr search, half a decade apart; "
        "the search widens it while the best lr is at an end, then refines once (default 3)",
    )
    b.add_argument(
        "--protocol",
        choices=("tune", "grid"),
        default="tune",
        help="tune: sweep lrs on seed 0, then the other seeds at the best lr (default); "
        "grid: every lr with every seed",
    )
    b.add_argument(
        "--steps",
        type=_positive_int("--steps"),
        help="training steps per run for every chosen task (default: each task's own; overrides "
        "--quick's and --long's steps, not --long's targets)",
    )
    b.add_argument(
        "--jobs",
        type=_positive_int("--jobs"),
        default=None,
        help=f"concurrent runs, one thread each: worker processes, or Ray tasks with --executor ray "
        f"(default: the number of cores, {_cores()}; with --executor ray, the Ray cluster's CPUs)",
    )
    b.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="where the runs execute: local worker processes (default), or Ray tasks on a local "
        'Ray runtime or on the cluster at --ray-address (pip install "adaptim[ray]"); the '
        "database stays here either way",
    )
    b.add_argument(
        "--ray-address",
        metavar="ADDRESS",
        help="with --executor ray: the Ray cluster to run on (host:port, auto or ray://...; "
        "default: start a Ray runtime on this machine)",
    )
    b.add_argument("--db", default=DEFAULT_DB, help=f"results database (default {DEFAULT_DB})")
    b.add_argument("--out", default=DEFAULT_OUT, help=f"report folder (default {DEFAULT_OUT}/)")
    length = b.add_mutually_exclusive_group()
    length.add_argument(
        "--quick",
        action="store_true",
        help="a smoke test: fewer tasks, shorter runs, one seed, no step-time measurement "
        "(about 3 minutes on 2 cores)",
    )
    length.add_argument(
        "--long",
        action="store_true",
        help="the neural networks trained 4x longer (charlm 1,200 steps, fmnist-mlp 1,600, "
        "fmnist-cnn 1,200) with tighter targets, into the regime where optimizers differ (about "
        "45 minutes on 2 cores, estimated; scale out with --executor ray)",
    )
    b.add_argument(
        "--suite",
        choices=("default", "claims"),
        default="default",
        help="default: the comparison; claims: check the papers' claims at toy scale",
    )
    b.add_argument("--claims", help="with --suite claims: only these claims (names or patterns)")
    b.add_argument("--no-report", action="store_true", help="store the runs, skip the report")
    b.add_argument("--no-progress", action="store_true", help="no progress bar (one line per run)")

    r = sub.add_parser("report", help="render the report from the database alone")
    r.add_argument("--db", default=DEFAULT_DB, help=f"results database (default {DEFAULT_DB})")
    r.add_argument("--out", default=DEFAULT_OUT, help=f"report folder (default {DEFAULT_OUT}/)")
    r.add_argument("--tasks", help="only these tasks")
    r.add_argument("--optimizers", help="only these optimizers")

    sub.add_parser("list", help="tasks and optimizers with one-line descriptions")
    return parser


# -- commands -------------------------------------------------------------------------------------


def _cmd_list() -> int:
    from adaptim.bench.optimizers import all_optimizers
    from adaptim.bench.tasks import TASKS

    missing_extra = _missing_packages("bench")
    if missing_extra:
        print(
            f"note: the bench extra is not installed (missing: {', '.join(missing_extra)}); "
            'install it with: pip install "adaptim[bench]"\n'
        )
    print("Tasks (adaptim bench --tasks NAME,...):")
    width = max(len(n) for n in TASKS)
    for name, task in TASKS.items():
        missing = task.missing_data()
        note = f"  [cannot run: {missing}]" if missing else ""
        steps = f"{task.steps} steps"
        if task.long_steps is not None:
            steps += f"; --long: {task.long_steps}, target {task.target_for('long'):g}"
        print(f"  {name:<{width}}  {task.description} [{steps}]{note}")
    print()
    opts = all_optimizers()
    print("Optimizers (adaptim bench --optimizers NAME,...):")
    width = max(len(n) for n in opts)
    for name, opt in opts.items():
        print(f"  {name:<{width}}  {opt.description}")
    return 0


def _fmt_minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def _cmd_report(args: argparse.Namespace) -> int:
    from adaptim.bench.report import render_report
    from adaptim.bench.store import Store

    _require_extra("report")
    if not Path(args.db).exists():
        raise UsageError(
            f"no results database at {args.db}; run `adaptim bench` first (or pass --db)"
        )
    tasks = _resolve_tasks(args.tasks, False) if args.tasks else None
    optimizers = _resolve_optimizers(args.optimizers) if args.optimizers else None
    with Store(args.db) as store:
        hashes = None
        if tasks is not None:
            rows = store.conn.execute("SELECT DISTINCT task, config_hash FROM runs").fetchall()
            hashes = [h for t, h in rows if t in tasks]
        index = render_report(store, args.out, config_hashes=hashes, optimizers=optimizers)
    print(f"report: {index}")
    print(f"summary: {index.parent / 'summary.md'}")
    return 0


def _cmd_claims(args: argparse.Namespace) -> int:
    import importlib

    try:  # written in parallel with the bench; absent or broken -> a clear message
        claims_mod = importlib.import_module("adaptim.bench.claims")
    except ImportError as err:
        print(
            f"adaptim: the claims suite is not available in this installation ({err})",
            file=sys.stderr,
        )
        return 1
    from adaptim.bench.env import describe
    from adaptim.bench.report import render_report
    from adaptim.bench.store import Store

    only = _split(args.claims) or None
    seeds = args.seeds or 3
    Store(args.db).close()  # a bad --db is refused now, not after the claims have run
    start = time.perf_counter()
    try:
        results = claims_mod.run_claims(
            seeds=seeds, only=only, progress=lambda msg: print(msg, flush=True)
        )
    except ValueError as err:
        raise UsageError(str(err)) from None
    rows = []
    for r in results:
        verdict = (
            "skipped" if r.holds is None else "holds" if r.holds else "does not hold at this scale"
        )
        nums = ", ".join(f"{k}={v:.4g}" for k, v in dict(r.numbers).items())
        rows.append((r.name, verdict, nums))
    if rows:
        w0 = max(len(r[0]) for r in rows)
        w1 = max(len(r[1]) for r in rows)
        print()
        print(f"{'claim':<{w0}}  {'verdict':<{w1}}  numbers")
        for name, verdict, nums in rows:
            print(f"{name:<{w0}}  {verdict:<{w1}}  {nums}")
    held = sum(1 for r in results if r.holds is True)
    failed = sum(1 for r in results if r.holds is False)
    skipped = sum(1 for r in results if r.holds is None)
    print(
        f"\n{held} hold, {failed} do not hold at this scale, {skipped} skipped "
        f"({_fmt_minutes(time.perf_counter() - start)})"
    )
    with Store(args.db) as store:
        env_id = store.add_environment(describe(jobs=1))
        store.add_claims(results, env_id)
        if not args.no_report:
            index = render_report(store, args.out)
            print(f"report: {index}")
    print(f"results: {args.db}")
    return 0


def _ray_executor(args: argparse.Namespace) -> Any:
    """``--executor ray``'s executor, started (or connected to ``--ray-address``) now."""
    from adaptim.bench.ray_executor import RayExecutor, RayUnavailable

    try:
        return RayExecutor(address=args.ray_address, num_cpus=args.jobs)
    except RayUnavailable as err:
        where = "--ray-address: " if args.ray_address else ""
        raise UsageError(f"--executor ray: {where}{err}") from None


def _cmd_bench(args: argparse.Namespace) -> int:
    if args.ray_address is not None and args.executor != "ray":
        raise UsageError(f"--ray-address {args.ray_address} needs --executor ray")
    if args.executor == "ray" and args.suite == "claims":
        raise UsageError("--executor ray runs the default suite only (--suite claims runs here)")
    _require_extra("bench")
    if args.suite == "claims":
        return _cmd_claims(args)
    from adaptim.bench.env import describe
    from adaptim.bench.runner import RUN_ELSEWHERE, make_plan, run_plan
    from adaptim.bench.store import Store

    tasks = _resolve_tasks(args.tasks, args.quick)
    optimizers = _resolve_optimizers(args.optimizers)
    lrs = _parse_lrs_option(args.lrs) if args.lrs else None
    seeds = args.seeds or (1 if args.quick else DEFAULT_SEEDS)
    jobs = args.jobs or _cores()
    plan = make_plan(
        tasks,
        optimizers,
        seeds=seeds,
        lrs=lrs,
        lr_points=args.lr_points,
        steps=args.steps,
        length="quick" if args.quick else "long" if args.long else "default",
        protocol=args.protocol,
    )
    for task, why in plan.skipped_tasks.items():
        print(f"skipping task {task}: {why}", file=sys.stderr)
    if not plan.groups:
        print(
            "adaptim: nothing to run (every chosen task lacks its data or packages)",
            file=sys.stderr,
        )
        return 1

    # run_plan closes the executor whichever way it ends; until then, this function does.
    executor = _ray_executor(args) if args.executor == "ray" else None
    try:
        if executor is not None:
            jobs = args.jobs or executor.cpus
        store = Store(args.db)
        env_id = store.add_environment(describe(threads_per_run=1, jobs=jobs))
    except BaseException:
        if executor is not None:
            executor.close()
        raise
    workers = "processes" if executor is None else "Ray tasks"
    fewer = sorted({g.seeds for g in plan.groups if g.seeds < seeds})
    diag = f" ({fewer[0]} on the diagnostic test functions)" if fewer else ""
    print(
        f"adaptim bench: {len({g.task for g in plan.groups})} tasks x {len(optimizers)} optimizers, "
        f"{seeds} seed{'s' if seeds > 1 else ''}{diag}, protocol {args.protocol}, {jobs} {workers}; "
        f"results in {args.db}",
        flush=True,
    )

    state: dict[str, Any] = {}

    def on_start(n_todo: int, n_done: int, cost: float) -> None:
        state["total"] = n_todo
        est = cost / min(jobs, max(n_todo, 1)) if n_todo else 0.0
        state["estimate"] = est
        resumed = f" ({n_done} already finished, skipped)" if n_done else ""
        busy = ""
        try:
            load = os.getloadavg()[0]
        except OSError:  # pragma: no cover - not available everywhere
            load = 0.0
        cores = _cores()
        if n_todo and load > 0.5 * cores:
            # Our workers share the cores with whatever else runs: a rough slow-down factor.
            factor = max(1.0, (load + min(jobs, cores)) / cores)
            busy = (
                f"; this machine is busy (load average {load:.1f} on {cores} cores): "
                f"expect about {_fmt_minutes(est * factor)}"
            )
        print(
            f"{n_todo} runs to do{resumed}; estimated {_fmt_minutes(est)} on an idle machine{busy}",
            flush=True,
        )

    start = time.perf_counter()
    counts: dict[str, int] = {}
    try:
        with _sigterm_raises():
            if args.no_progress or not sys.stderr.isatty():
                counts = run_plan(
                    plan,
                    store,
                    jobs=jobs,
                    env_id=env_id,
                    on_start=on_start,
                    progress=_line_progress(start),
                    executor=executor,
                )
            else:
                counts = _run_with_bar(plan, store, jobs, env_id, on_start, executor)
    except (KeyboardInterrupt, _Terminated) as stop:
        # run_plan has stopped its workers and freed the runs they had in progress.
        done = store.counts()
        store.close()
        what = "terminated" if isinstance(stop, _Terminated) else "interrupted"
        print(
            f"\n{what}; finished runs are stored in {args.db} ({done.get('done', 0)} done). "
            "Run the same command again to resume.",
            file=sys.stderr,
        )
        return 128 + (signal.SIGTERM if isinstance(stop, _Terminated) else signal.SIGINT)
    elapsed = time.perf_counter() - start
    elsewhere = counts.pop(RUN_ELSEWHERE, 0)
    status = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "nothing new to run"
    if elsewhere:
        status += f" ({elsewhere} runs left to another bench on this database)"
    print(f"finished in {_fmt_minutes(elapsed)}: {status}", flush=True)
    try:
        with _sigterm_raises():
            _measure_costs(store, optimizers, env_id, timing=not args.quick)
    except (KeyboardInterrupt, _Terminated) as stop:  # the runs are stored; only the costs are lost
        store.close()
        print(
            f"\nstopped while measuring the optimizers' costs; the runs are stored in {args.db}.",
            file=sys.stderr,
        )
        return 128 + (signal.SIGTERM if isinstance(stop, _Terminated) else signal.SIGINT)
    if not args.no_report:
        from adaptim.bench.report import render_report

        index = render_report(
            store, args.out, config_hashes=plan.config_hashes, optimizers=optimizers
        )
        _print_winners(store, plan.config_hashes, optimizers)
        print(f"report: {index}")
        print(f"summary: {index.parent / 'summary.md'}")
    store.close()
    return 0


def _measure_costs(store: Any, optimizers: Sequence[str], env_id: int, timing: bool) -> None:
    """Store each optimizer's state bytes per parameter and (unless ``timing`` is off: ``--quick``)
    its step time relative to fused AdamW, for the report's cost columns."""
    from adaptim.bench.costs import measure_costs, store_costs

    start = time.perf_counter()
    what = "state memory and step time" if timing else "state memory"
    print(f"measuring the optimizers' {what} on the MLP ...", flush=True)
    costs = measure_costs(optimizers, timing=timing)
    store_costs(store, costs, env_id)
    failed = [c.optimizer for c in costs if c.error]
    note = f"; failed: {', '.join(failed)}" if failed else ""
    print(f"measured in {_fmt_minutes(time.perf_counter() - start)}{note}", flush=True)


def _line_progress(start: float):
    def report(p: Any) -> None:
        spec = p.last
        elapsed = time.perf_counter() - start
        eta = elapsed / p.cost_done * (p.cost_total - p.cost_done) if p.cost_done else 0.0
        lr = "default" if spec.lr is None else f"{spec.lr:.3g}"
        print(
            f"[{p.done}/{p.total}] {spec.task} {spec.optimizer} lr={lr} seed={spec.seed}: {p.status}"
            f"  (elapsed {_fmt_minutes(elapsed)}, ETA {_fmt_minutes(eta)})",
            flush=True,
        )

    return report


def _run_with_bar(
    plan: Any, store: Any, jobs: int, env_id: int, on_start: Any, executor: Any = None
) -> dict[str, int]:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from adaptim.bench.runner import run_plan

    console = Console(stderr=True)
    columns = [
        TextColumn("[bold]bench[/]"),
        BarColumn(bar_width=32),
        TextColumn("{task.fields[runs]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[last]}"),
    ]
    del MofNCompleteColumn
    with Progress(*columns, console=console, transient=False) as bar:
        tid = bar.add_task("bench", total=None, runs="", last="")

        def started(n_todo: int, n_done: int, cost: float) -> None:
            on_start(n_todo, n_done, cost)
            bar.update(tid, total=max(cost, 1e-9), runs=f"0/{n_todo} runs")

        def report(p: Any) -> None:
            spec = p.last
            bar.update(
                tid,
                completed=p.cost_done,
                total=max(p.cost_total, p.cost_done, 1e-9),
                runs=f"{p.done}/{p.total} runs",
                last=f"{spec.task} {spec.optimizer}: {p.status}"[:48],
            )

        return run_plan(
            plan,
            store,
            jobs=jobs,
            env_id=env_id,
            on_start=started,
            progress=report,
            executor=executor,
        )


def _print_winners(store: Any, hashes: Sequence[str], optimizers: Sequence[str]) -> None:
    from adaptim.bench.analysis import DIAGNOSTIC, describe_value, summarize

    runs = [
        r
        for r in store.runs(config_hashes=hashes, with_metrics=False)
        if r.optimizer in set(optimizers)
    ]
    tasks = summarize(runs)
    if not tasks:
        return
    print(
        "\nbest per task (mean over seeds at the best lr): the top tie group of a ranked task,"
        " the best means of a diagnostic"
    )
    width = max(len(t.label) for t in tasks)
    for t in tasks:
        ranked = [g for g in t.ranked() if g.has_best and g.learned]
        if t.kind == DIAGNOSTIC:
            shown, more = ranked[:3], 0
        else:  # a tie group need not be contiguous in means: show it, not the next means
            top_group = set(t.tie_groups()[0]) if ranked else set()
            members = [g for g in ranked if g.optimizer in top_group]
            shown, more = members[:3], max(0, len(members) - 3)
        top = ", ".join(f"{g.optimizer} {describe_value(t.task, g.mean)}" for g in shown)
        top = (top + (f" (+{more} tied)" if more else "")) or "no optimizer learned"
        print(f"  {t.label:<{width}}  {top}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from adaptim.bench.store import StoreError

    try:
        if args.command == "list":
            return _cmd_list()
        if args.command == "report":
            return _cmd_report(args)
        return _cmd_bench(args)
    except UsageError as err:
        print(f"adaptim {args.command}: error: {err}", file=sys.stderr)
        return 2
    except StoreError as err:
        print(f"adaptim {args.command}: error: --db: {err}", file=sys.stderr)
        return 2
    except sqlite3.DatabaseError as err:  # damaged or locked after it was opened
        print(
            f"adaptim {args.command}: error: the results database failed: {err}",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

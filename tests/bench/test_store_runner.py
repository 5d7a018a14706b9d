"""The results store and the runner: statuses, the tune protocol, the worker processes.

A killed bench, its resume and two benches on one database: ``test_robustness.py``."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from adaptim.bench import runner as R
from adaptim.bench.store import Store


def _spec(task="noisy-quadratic", opt="torch-sgdm", lr=0.1, seed=0, steps=20, **kw):
    plan = R.make_plan([task], [opt], seeds=1, lrs=[lr], steps=steps, **kw)
    spec = plan.groups[0].first_phase()[0]
    return R.RunSpec(
        spec.task, spec.optimizer, lr, seed, steps, spec.config_hash, spec.time_limit, spec.cost
    )


def test_store_round_trip(tmp_path):
    with Store(tmp_path / "r.db") as store:
        env = store.add_environment({"cpu": "test"})
        spec = _spec().as_dict()
        assert store.claim_run(spec, env, lease_seconds=60)
        assert store.finished_keys([spec["key"]]) == set()
        result = {
            "status": "done",
            "final_metric": 0.25,
            "initial_metric": 2.0,
            "steps_to_target": 7,
            "seconds_to_target": 0.5,
            "metrics": {"metric": [(0, 0.0, 2.0), (10, 0.1, 1.0), (20, 0.2, math.nan)]},
            "series": {"trajectory": [[0.0, 1.0], [0.5, 0.5]]},
        }
        store.write_result(spec, result, env)
        assert store.finished_keys([spec["key"], "other"]) == {spec["key"]}
        (rec,) = store.runs()
        assert (rec.status, rec.final_metric, rec.steps_to_target, rec.env_id) == (
            "done",
            0.25,
            7,
            env,
        )
        assert rec.config["optimizer"] == "torch-sgdm" and rec.lr == 0.1
        m = rec.metrics["metric"]
        assert m.shape == (3, 3) and m[1].tolist() == [10, 0.1, 1.0] and math.isnan(m[2, 2])
        np.testing.assert_array_equal(store.series(rec.id, "trajectory"), [[0.0, 1.0], [0.5, 0.5]])
        assert store.environments()[env] == {"cpu": "test"}
        claim = SimpleNamespace(
            name="c1",
            paper="P",
            statement="S",
            holds=False,
            numbers={"a": 1.5},
            detail="d",
            seconds=0.1,
            verdict="does not hold",
        )
        store.add_claims([claim], env)
        (row,) = store.latest_claims()
        assert (
            row["holds"] == 0 and row["numbers"] == {"a": 1.5} and row["verdict"] == "does not hold"
        )


def test_nan_metrics_are_stored_as_null(tmp_path):
    with Store(tmp_path / "r.db") as store:
        spec = _spec().as_dict()
        store.write_result(spec, {"status": "diverged", "final_metric": math.nan}, None)
        (rec,) = store.runs()
        assert rec.status == "diverged" and rec.final_metric is None
        assert store.finished_keys([spec["key"]]) == {spec["key"]}


def test_execute_run_records_metrics_and_target():
    result = R.execute_run(_spec(task="diffgrad-f1", lr=0.01, steps=200))
    assert result["status"] == "done", result.get("error")
    assert result["final_metric"] < result["initial_metric"] / 5
    steps = [p[0] for p in result["metrics"]["metric"]]
    assert steps[0] == 0 and steps[-1] == 200 and steps == sorted(steps)
    assert len(result["metrics"]["train_loss"]) >= 10
    assert result["steps_to_target"] is not None and 0 < result["steps_to_target"] <= 200
    assert 0 < result["seconds_to_target"] <= result["train_seconds"]
    assert result["cpu_seconds"] > 0


def test_divergence_is_recorded_not_raised():
    result = R.execute_run(_spec(task="rosenbrock", lr=1.0, steps=100))
    assert result["status"] == "diverged" and math.isnan(result["final_metric"])
    assert result["steps_done"] < 100


def test_trajectory_series_for_seed_zero_only():
    r0 = R.execute_run(_spec(task="beale", opt="adam", lr=0.1, steps=30, seed=0))
    r1 = R.execute_run(_spec(task="beale", opt="adam", lr=0.1, steps=30, seed=1))
    traj = np.asarray(r0["series"]["trajectory"])
    assert traj.shape == (31, 2) and traj[0].tolist() == [1.0, 1.5]
    assert "trajectory" not in r1["series"]


def test_failing_optimizer_is_recorded(monkeypatch):
    def broken(name, params, lr):
        raise RuntimeError("boom")

    monkeypatch.setattr(R, "make_optimizer", broken)
    result = R.execute_run(_spec())
    assert result["status"] == "failed" and "boom" in result["error"]


def test_time_limit_stops_a_run():
    result = R.execute_run(_spec(steps=100_000), time_limit=0.2)
    assert result["status"] == "timeout" and result["steps_done"] < 100_000


def test_tune_protocol_runs_seeds_at_the_best_lr(tmp_path):
    plan = R.make_plan(
        ["noisy-quadratic"], ["torch-sgdm"], seeds=3, lrs=[0.003, 0.03, 0.3], steps=40
    )
    with Store(tmp_path / "r.db") as store:
        counts = R.run_plan(plan, store, jobs=1)
        runs = store.runs(with_metrics=False)
    assert counts == {"done": 5} and len(runs) == 5
    seed0 = {r.lr: r.final_metric for r in runs if r.seed == 0}
    best = min(seed0, key=seed0.get)
    assert sorted(r.seed for r in runs if r.lr == best) == [0, 1, 2]
    assert all(r.seed == 0 for r in runs if r.lr != best)


def test_grid_protocol_and_skipping_finished_runs(tmp_path):
    plan = R.make_plan(
        ["diffgrad-f1"], ["adam"], seeds=2, lrs=[0.01, 0.1], steps=20, protocol="grid"
    )
    events = []
    with Store(tmp_path / "r.db") as store:
        R.run_plan(plan, store, jobs=1, on_start=lambda n, done, cost: events.append((n, done)))
        assert len(store.runs()) == 4
        again = R.run_plan(
            plan, store, jobs=1, on_start=lambda n, done, cost: events.append((n, done))
        )
    assert events == [(4, 0), (0, 4)] and again == {}


def test_all_lrs_diverged_runs_no_seeds(tmp_path):
    plan = R.make_plan(["rosenbrock"], ["torch-sgdm"], seeds=3, lrs=[1.0, 3.0], steps=50)
    seen = []
    with Store(tmp_path / "r.db") as store:
        counts = R.run_plan(plan, store, jobs=1, progress=lambda p: seen.append((p.done, p.total)))
    assert counts == {"diverged": 2}
    assert seen[-1] == (2, 2)  # the total shrank: no seed runs for a sweep where nothing finished


@pytest.mark.parametrize("jobs", [2])
def test_worker_pool_gives_the_same_results_as_in_process(tmp_path, jobs):
    plan = R.make_plan(
        ["diffgrad-f1", "noisy-quadratic"], ["adam", "torch-sgdm"], seeds=1, steps=30
    )
    with Store(tmp_path / "a.db") as a, Store(tmp_path / "b.db") as b:
        R.run_plan(plan, a, jobs=1)
        R.run_plan(plan, b, jobs=jobs)
        ra = {r.key: r.final_metric for r in a.runs(with_metrics=False)}
        rb = {r.key: r.final_metric for r in b.runs(with_metrics=False)}
    # 2 tasks x 2 optimizers: the lr searches (3 lrs, then widened; the quadratic's refined) take
    # the same steps
    assert ra.keys() == rb.keys() and len(ra) >= 4 * 3 + 2
    for k in ra:  # one thread per run: deterministic
        assert ra[k] == rb[k], k


def test_a_worker_that_dies_fails_its_own_run_only(tmp_path):
    workers = R._Workers()
    try:
        workers.submit(_spec(steps=10_000_000))  # long enough to be killed while it runs
        (worker,) = workers.busy
        worker.process.kill()
        ((spec, result),) = workers.wait()
        assert spec.steps == 10_000_000 and result["status"] == "failed"
        assert f"exit code {-9}" in result["error"] and not workers.busy and not workers.idle
    finally:
        workers.close()


def test_a_long_configuration_times_its_own_target(tmp_path, monkeypatch):
    # --long runs time the first crossing of the task's long_target, stored with the configuration
    # and used again by the report's summary; the default configuration keeps the task's target.
    from dataclasses import replace

    from adaptim.bench import analysis as A
    from adaptim.bench.tasks import TASKS

    task = TASKS["noisy-quadratic"]
    loose = 1e6  # crossed before the first step
    monkeypatch.setitem(TASKS, task.name, replace(task, long_steps=30, long_target=loose))
    kw = dict(seeds=1, lrs=[0.03])
    long, default = (
        R.make_plan([task.name], ["torch-sgdm"], length=n, **kw) for n in ("long", "default")
    )
    assert long.groups[0].config_hash != default.groups[0].config_hash
    with Store(tmp_path / "r.db") as store:
        R.run_plan(long, store, jobs=1)
        R.run_plan(default, store, jobs=1)
        runs = store.runs(with_metrics=False)
    by_steps = {r.steps_done: r for r in runs}
    assert by_steps[30].steps_to_target == 0
    assert by_steps[task.steps].steps_to_target != 0
    targets = {t.steps: t.task.target for t in A.summarize(runs)}
    assert targets == {30: loose, task.steps: task.target}


@pytest.mark.parametrize("where", ["_check_integrity", "_add_missing_columns"])
def test_opening_waits_out_another_bench_opening_the_same_database(tmp_path, monkeypatch, where):
    """Two benches creating one database at once: SQLite can answer "database is locked" at
    once (where waiting could deadlock), in the integrity check or the schema; the opening is tried
    again rather than refused, and a locked check is not reported as damage."""
    import sqlite3

    real = getattr(Store, where)
    calls = []

    def locked_twice(self):
        calls.append(1)
        if len(calls) <= 2:
            raise sqlite3.OperationalError("database is locked")
        return real(self)

    monkeypatch.setattr(Store, where, locked_twice)
    store = Store(tmp_path / "shared.db")
    assert len(calls) == 3
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.close()

"""``adaptim bench --executor ray``: the runs as Ray tasks on a local Ray runtime of 2 CPUs, started
once for the module. The same results as the local executor, a stopped bench that resumes, a dead
worker that fails its own run only, the CLI end to end (in this process and as a second driver
connecting to the runtime by its address), and the refusals."""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")

import ray

from adaptim.bench import runner as R
from adaptim.bench.ray_executor import RayExecutor, RayUnavailable
from adaptim.bench.store import FINISHED, Store
from adaptim.cli import main

TASK_TITLE = b"ray::_run_in_worker"  # a Ray worker's process title while it runs a run


@pytest.fixture(scope="module", autouse=True)
def ray_runtime():
    """One local Ray runtime for the module; the executors of the tests use it."""
    if ray.is_initialized():  # pragma: no cover - another module left one
        ray.shutdown()
    owner = RayExecutor(num_cpus=2)
    assert owner.owns_ray and owner.cpus == 2
    yield owner
    owner.close()
    assert not ray.is_initialized()


def _results(db: Path) -> dict[str, tuple]:
    with Store(db) as store:
        return {
            r.key: (r.status, r.final_metric, r.steps_done) for r in store.runs(with_metrics=False)
        }


def _rows(db: Path) -> dict[str, tuple]:
    with Store(db) as store:
        rows = store.conn.execute("SELECT key, status, id, finished FROM runs").fetchall()
    return {r[0]: r for r in rows}


def _long_spec() -> R.RunSpec:
    """A run that trains until it is stopped, or for 60 s: a failing test cannot hang on it."""
    plan = R.make_plan(["noisy-quadratic"], ["torch-sgdm"], seeds=1, lrs=[0.01], steps=10_000_000)
    return dataclasses.replace(plan.groups[0].first_phase()[0], time_limit=60.0)


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def _alive(pid: int) -> bool:
    return _state(pid) not in (None, "Z")  # a zombie has exited; its parent (the raylet) reaps it


def _running_task_pids(timeout: float = 60.0) -> list[int]:
    """The workers of this process's Ray runtime that are running a run now (waits for one); not
    those of another Ray runtime on the machine, whose raylet is not a child of this process."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        procs = [int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit()]
        ours = {pid for pid in procs if _parent(pid) == os.getpid()}  # the raylet among them
        pids = []
        for pid in procs:
            try:
                title = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if title.startswith(TASK_TITLE) and _parent(pid) in ours:
                pids.append(pid)
        if pids:
            return pids
        time.sleep(0.05)
    raise AssertionError("no Ray worker started the run")


def test_ray_gives_the_local_executors_results(tmp_path, monkeypatch):
    # the quadratic with successive halving: short search runs (their own configuration) go
    # through Ray as well
    halving = dataclasses.replace(R.TASKS["noisy-quadratic"], search_fraction=0.5)
    monkeypatch.setitem(R.TASKS, "noisy-quadratic", halving)
    plan = R.make_plan(
        ["diffgrad-f1", "noisy-quadratic"], ["adam", "torch-sgdm"], seeds=2, steps=30
    )
    assert [g.search_steps for g in plan.groups] == [None, None, 15, 15]
    with Store(tmp_path / "local.db") as store:
        R.run_plan(plan, store, jobs=1)
    executor = RayExecutor()
    assert not executor.owns_ray  # the module's runtime
    with Store(tmp_path / "ray.db") as store:
        counts = R.run_plan(plan, store, jobs=2, executor=executor)
    local, on_ray = _results(tmp_path / "local.db"), _results(tmp_path / "ray.db")
    # 2 tasks x 2 optimizers: each lr search (3 lrs, widened; the quadratic's refined, on short
    # runs, then its finalists at full length) and the second seed, the same runs
    assert sum(counts.values()) == len(on_ray) >= 4 * 4 + 2
    assert on_ray == local  # statuses, final metrics, steps: one thread per run, deterministic
    assert {steps for _, _, steps in on_ray.values()} >= {15, 30}  # short and full runs
    assert ray.is_initialized() and not executor.busy  # closed, the runtime left to its owner


BENCH_ARGS = [
    "bench",
    "--executor",
    "ray",
    "--optimizers",
    "adam,torch-sgdm",
    "--tasks",
    "diffgrad-f1",
    "--steps",
    "20",
    "--seeds",
    "2",
    "--lrs",  # a fixed grid: 2 optimizers x (2 lrs + 1 seed) runs
    "0.01,0.1",
    "--quick",  # the optimizers' state memory only, no step timing
    "--no-report",
    "--no-progress",
]


@pytest.fixture
def no_cost_step(monkeypatch):
    """The optimizers' cost measurement after the runs (10 s here) is not this module's subject."""
    import adaptim.cli

    monkeypatch.setattr(adaptim.cli, "_measure_costs", lambda *args, **kwargs: None)


def test_cli_executor_ray_end_to_end(tmp_path, capsys, no_cost_step):
    db = tmp_path / "cli.db"
    assert main([*BENCH_ARGS, "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "2 Ray tasks" in out and "6 runs to do" in out  # --jobs: the runtime's 2 CPUs
    assert len(_results(db)) == 6
    assert {status for status, _, _ in _results(db).values()} <= {"done", "did-not-learn"}
    assert main([*BENCH_ARGS, "--db", str(db)]) == 0
    assert "0 runs to do (6 already finished, skipped)" in capsys.readouterr().out
    assert ray.is_initialized()


def test_a_stopped_ray_bench_resumes_without_running_a_finished_run_again(tmp_path):
    plan = R.make_plan(
        ["diffgrad-f1", "noisy-quadratic"],
        ["adam", "torch-sgdm"],
        seeds=2,
        lrs=[0.01, 0.1],
        steps=30,
        protocol="grid",
    )  # 16 runs, known in advance

    def stop(progress: R.Progress) -> None:
        raise KeyboardInterrupt  # Ctrl-C after the first finished run

    db = tmp_path / "r.db"
    executor = RayExecutor()
    with Store(db) as store, pytest.raises(KeyboardInterrupt):
        R.run_plan(plan, store, jobs=2, executor=executor, progress=stop)
    assert not executor.busy
    before = _rows(db)
    finished = {k: r for k, r in before.items() if r[1] in FINISHED}
    assert len(finished) == 1 and all(r[1] in FINISHED for r in before.values())  # no claim left
    starts = []
    with Store(db) as store:
        counts = R.run_plan(
            plan,
            store,
            jobs=2,
            executor=RayExecutor(),
            on_start=lambda n, done, cost: starts.append((n, done)),
        )
    assert starts == [(15, 1)] and sum(counts.values()) == 15
    after = _rows(db)
    assert len(after) == 16 and all(r[1] in FINISHED for r in after.values())
    for key, row in finished.items():
        assert after[key] == row  # same row id and finish time: not run again
    with Store(tmp_path / "local.db") as store:
        R.run_plan(plan, store, jobs=1)
    assert _results(db) == _results(tmp_path / "local.db")


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="reads /proc")
def test_a_dead_worker_fails_its_run_only_and_close_stops_a_run(tmp_path):
    executor = RayExecutor()
    try:
        executor.submit(_long_spec())
        (pid,) = _running_task_pids()
        os.kill(pid, signal.SIGKILL)
        ((spec, result),) = executor.wait()
        assert spec.steps == 10_000_000 and result["status"] == "failed"
        assert "the Ray worker failed" in result["error"] and not executor.busy
        # The executor goes on: a next run, stopped by close() while it trains.
        executor.submit(_long_spec())
        (pid,) = _running_task_pids()
    finally:
        executor.close()
    deadline = time.time() + 10
    while time.time() < deadline and _alive(pid):
        time.sleep(0.05)
    assert not _alive(pid) and not executor.busy
    assert ray.is_initialized()  # not this executor's runtime to shut down


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="reads /proc")
def test_sigterm_while_waiting_stops_the_bench_as_ctrl_c_does():
    from adaptim.cli import _sigterm_raises, _Terminated

    executor = RayExecutor()
    try:
        executor.submit(_long_spec())
        _running_task_pids()
        threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM)).start()
        with pytest.raises(_Terminated), _sigterm_raises():  # not Ray's SystemError around it
            executor.wait()
    finally:
        executor.close()
    assert not executor.busy


def test_cli_connects_to_a_cluster_by_its_address(tmp_path):
    # A second driver, as on a cluster: it runs its plan on this runtime, and its database is its own.
    db = tmp_path / "remote.db"
    address = ray.get_runtime_context().gcs_address
    cli = (  # the CLI without its cost step, as in no_cost_step
        "import sys, adaptim.cli as cli; cli._measure_costs = lambda *args, **kwargs: None; "
        "sys.exit(cli.main(sys.argv[1:]))"
    )
    argv = [*BENCH_ARGS, "--ray-address", address, "--db", str(db)]
    proc = subprocess.run(
        [sys.executable, "-c", cli, *argv],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "2 Ray tasks" in proc.stdout and "finished in" in proc.stdout
    assert len(_results(db)) == 6


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--ray-address", "127.0.0.1:6379"], "--ray-address 127.0.0.1:6379 needs --executor ray"),
        (["--executor", "local", "--ray-address", "auto"], "needs --executor ray"),
        (["--executor", "ray", "--suite", "claims"], "--executor ray runs the default suite only"),
        (["--executor", "ray", "--ray-address", "127.0.0.1:PORT"], "no Ray cluster answers at"),
    ],
)
def test_refusals_exit_2_and_write_nothing(argv, expected, tmp_path, capsys):
    db = tmp_path / "x.db"
    argv = [a.replace("PORT", str(_closed_port())) for a in argv]
    assert main(["bench", "--tasks", "diffgrad-f1", *argv, "--db", str(db), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
    assert not db.exists()


def test_without_ray_the_cli_says_how_to_install_it(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(RayUnavailable, match=r'pip install "adaptim\[ray\]"'):
        RayExecutor()
    db = tmp_path / "x.db"
    argv = ["bench", "--executor", "ray", "--tasks", "diffgrad-f1", "--db", str(db)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert '--executor ray: Ray is not installed: pip install "adaptim[ray]"' in err
    assert not db.exists()

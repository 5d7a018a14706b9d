"""The bench's robustness: a missing extra, a damaged or odd database, a killed bench (no orphaned
workers, resume), run claims (two benches on one database never run a configuration twice)."""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adaptim.bench import runner as R
from adaptim.bench.store import FINISHED, Store, StoreError
from adaptim.cli import main

# -- without the [bench] extra ----------------------------------------------------------------------


@pytest.mark.parametrize("module", ["matplotlib", "rich", "scipy", "sklearn"])
def test_bench_without_the_extra_exits_2_at_once(module, monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, module, None)  # importlib.util.find_spec(module) -> None
    db = tmp_path / "x.db"
    start = time.perf_counter()
    assert main(["bench", "--tasks", "beale", "--db", str(db), "--no-progress"]) == 2
    assert time.perf_counter() - start < 5.0
    err = capsys.readouterr().err
    package = "scikit-learn" if module == "sklearn" else module
    assert f"missing: {package}" in err and 'pip install "adaptim[bench]"' in err
    assert not db.exists()


@pytest.mark.parametrize("module", ["matplotlib", "scipy"])  # scipy: 95% intervals, tie groups
def test_report_without_the_extra_exits_2(module, monkeypatch, capsys, tmp_path):
    db = tmp_path / "r.db"
    Store(db).close()
    monkeypatch.setitem(sys.modules, module, None)
    assert main(["report", "--db", str(db), "--out", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err
    assert f"missing: {module}" in err and 'pip install "adaptim[bench]"' in err
    assert not (tmp_path / "rep").exists()


def test_missing_packages_are_marked_and_the_task_skipped(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "scipy", None)
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    (line,) = [ln for ln in out.splitlines() if ln.startswith("  digits-logreg ")]
    assert "cannot run: needs scipy" in line and 'pip install "adaptim[bench]"' in line
    assert "the bench extra is not installed (missing: scipy)" in out
    (beale,) = [ln for ln in out.splitlines() if ln.startswith("  beale ")]
    assert "cannot run" not in beale
    # The bench leaves the task out, saying why, instead of storing failed runs.
    plan = R.make_plan(["digits-logreg", "diffgrad-f1"], ["adam"], seeds=1, lrs=[0.01], steps=5)
    assert "scipy" in plan.skipped_tasks["digits-logreg"]
    with Store(tmp_path / "r.db") as store:
        assert R.run_plan(plan, store) == {"done": 1}
        assert [(r.task, r.status) for r in store.runs(with_metrics=False)] == [
            ("diffgrad-f1", "done")
        ]


# -- the database ---------------------------------------------------------------------------------


def _filled_store(path: Path, n_runs: int = 40) -> None:
    with Store(path) as store:
        env = store.add_environment({"cpu": "test"})
        for i in range(n_runs):
            spec = {
                "key": f"k{i}",
                "task": "t",
                "optimizer": "o",
                "lr": 0.1,
                "seed": i,
                "config_hash": "h",
            }
            points = [(j, 0.01 * j, 1.0 / (j + 1)) for j in range(50)]
            store.write_result(spec, {"status": "done", "metrics": {"metric": points}}, env)
    assert not Path(f"{path}-wal").exists()  # checkpointed into the file on close


def test_a_damaged_page_is_found_when_the_database_is_opened(tmp_path, capsys):
    db = tmp_path / "damaged.db"
    _filled_store(db)
    page = 4096
    assert db.stat().st_size % page == 0 and db.stat().st_size >= 8 * page
    with open(db, "r+b") as f:  # garbage over the head of the last page (a metrics b-tree page)
        f.seek(db.stat().st_size - page)
        f.write(b"\xff" * 64)
    conn = sqlite3.connect(db)
    try:  # a query that does not read that page notices nothing
        assert conn.execute("SELECT COUNT(*) FROM runs").fetchone() == (40,)
    finally:
        conn.close()
    with pytest.raises(StoreError, match=r"is damaged .*PRAGMA quick_check"):
        Store(db)
    before = db.read_bytes()
    assert main(["report", "--db", str(db), "--out", str(tmp_path / "rep")]) == 2
    argv = ["bench", "--tasks", "diffgrad-f1", "--optimizers", "adam", "--db", str(db)]
    assert main([*argv, "--steps", "3", "--no-report", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("is damaged") == 2 and "Traceback" not in err
    assert db.read_bytes() == before  # refused before anything was written


def test_a_file_that_is_not_a_database_is_refused(tmp_path, capsys):
    db = tmp_path / "notes.db"
    db.write_bytes(b"not an sqlite file\n" * 300)
    with pytest.raises(StoreError, match="not an SQLite database"):
        Store(db)
    assert main(["report", "--db", str(db)]) == 2
    assert "not an SQLite database" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["bench", "report"])
def test_a_directory_as_db_is_a_clear_error(command, tmp_path, capsys):
    argv = [command, "--db", str(tmp_path), "--out", str(tmp_path / "rep")]
    if command == "bench":
        argv += ["--tasks", "diffgrad-f1", "--optimizers", "adam", "--steps", "3"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"--db: {tmp_path} is a directory" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_an_older_database_gets_the_claim_columns(tmp_path):
    db = tmp_path / "old.db"
    conn = sqlite3.connect(db)
    conn.execute(
        "CREATE TABLE runs (id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, task TEXT NOT NULL,"
        " optimizer TEXT NOT NULL, lr REAL, seed INTEGER NOT NULL, config_hash TEXT NOT NULL,"
        " config TEXT NOT NULL, status TEXT NOT NULL, env_id INTEGER, started REAL, finished REAL,"
        " wall_seconds REAL, cpu_seconds REAL, train_seconds REAL, steps_done INTEGER,"
        " final_metric REAL, initial_metric REAL, final_loss REAL, steps_to_target INTEGER,"
        " seconds_to_target REAL, error TEXT)"
    )
    conn.execute(
        "INSERT INTO runs (key, task, optimizer, seed, config_hash, config, status)"
        " VALUES ('k', 't', 'o', 0, 'h', '{}', 'running')"
    )
    conn.commit()
    conn.close()
    spec = {"key": "k", "task": "t", "optimizer": "o", "lr": None, "seed": 0, "config_hash": "h"}
    with Store(db) as store:
        # An old bench's `running` row has no owner: stale, so it is run again.
        assert store.claim_run(spec, None, lease_seconds=60)
        assert store.conn.execute("SELECT owner FROM runs").fetchone() == (store.owner,)


# -- claims ---------------------------------------------------------------------------------------


def _spec(key: str = "k") -> dict:
    return {"key": key, "task": "t", "optimizer": "o", "lr": 0.1, "seed": 0, "config_hash": "h"}


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_claimed_run_is_not_claimed_again(tmp_path):
    db = tmp_path / "c.db"
    with Store(db) as a, Store(db) as b:
        assert a.claim_run(_spec(), None, lease_seconds=60)
        assert a.claim_run(_spec(), None, lease_seconds=60)  # its own claim: still ours
        assert not b.claim_run(_spec(), None, lease_seconds=60)  # a live bench holds it
        assert a.release_claims() == 1
        assert b.claim_run(_spec(), None, lease_seconds=60)  # released: free again
        b.write_result(_spec(), {"status": "done", "final_metric": 1.0}, None)
        assert not a.claim_run(_spec(), None, lease_seconds=60)  # finished: never run twice
        b.write_result(_spec("f"), {"status": "failed", "error": "boom"}, None)
        assert a.claim_run(_spec("f"), None, lease_seconds=60)  # a failed run is retried


@pytest.mark.parametrize(
    ("owner", "lease", "taken_over"),
    [
        ("dead pid", 60.0, True),  # its bench was killed
        ("this process, closed store", 60.0, True),
        ("live pid", -1.0, True),  # lease lapsed: a hung bench or a reused pid
        ("live pid", 60.0, False),
        ("other host", 60.0, False),  # out of sight: the lease decides
        ("other host", -1.0, True),
    ],
)
def test_stale_claims_are_taken_over(owner, lease, taken_over, tmp_path):
    db = tmp_path / "c.db"
    host = socket.gethostname()
    owners = {
        "dead pid": f"{host}:{_dead_pid()}:x",
        "this process, closed store": f"{host}:{os.getpid()}:gone",
        "live pid": f"{host}:{os.getppid()}:x",
        "other host": f"{host}-elsewhere:{os.getppid()}:x",
    }
    with Store(db) as store:
        assert store.claim_run(_spec(), None, lease_seconds=lease)
        with store.conn:  # make the claim someone else's
            store.conn.execute("UPDATE runs SET owner = ?", (owners[owner],))
    with Store(db) as store:
        assert store.claim_run(_spec(), None, lease_seconds=60) is taken_over


# -- a killed bench -------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not reaped by its new parent, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _workers_of(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid and b"_worker_main" in cmdline:
            out.append(int(entry.name))
    return out


def _rows(db: Path) -> list[tuple]:
    conn = sqlite3.connect(db, timeout=30)
    try:
        return conn.execute("SELECT key, status, id, finished FROM runs").fetchall()
    except sqlite3.OperationalError:  # the bench has not created its tables yet
        return []
    finally:
        conn.close()


BENCH_ARGS = [
    "bench",
    "--optimizers",
    "torch-sgdm,adam",
    "--tasks",
    "noisy-quadratic",
    "--steps",
    "2000",
    "--seeds",
    "2",
    "--lrs",  # a fixed grid: a known number of runs (2 x (3 lrs + 1 seed)), no search
    "0.003,0.03,0.3",
    "--no-report",
    "--no-progress",
]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM", "SIGINT to the process group"])
def test_killed_bench_leaves_no_workers_and_resumes(how, tmp_path, capsys):
    db = tmp_path / "kill.db"
    args = [*BENCH_ARGS, "--db", str(db)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "adaptim.cli", *args, "--jobs", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group, as a terminal would make it
        # Ctrl-C as a terminal delivers it: a test suite started as a background job of a
        # non-interactive shell inherits SIGINT ignored, and the bench rightly keeps ignoring it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if any(r[1] == "done" for r in _rows(db)):
                break
            time.sleep(0.05)
        workers = _workers_of(proc.pid)
        assert proc.poll() is None, proc.stderr.read().decode()
        assert len(workers) == 2, workers
        if how == "SIGKILL":
            proc.send_signal(signal.SIGKILL)
        elif how == "SIGTERM":
            proc.send_signal(signal.SIGTERM)
        else:  # Ctrl-C: the workers get it too, and must leave the decision to their bench
            os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(30)
        err = proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    expected = {"SIGKILL": -signal.SIGKILL, "SIGTERM": 143}.get(how, 130)
    assert code == expected, err
    deadline = time.time() + 5
    while time.time() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.05)
    assert not any(_alive(w) for w in workers), "orphaned workers"
    before = _rows(db)
    done_before = {r[0]: r for r in before if r[1] in FINISHED}
    assert 0 < len(done_before) < 8
    running = [r for r in before if r[1] == "running"]
    if how != "SIGKILL":
        assert "Run the same command again to resume" in err and "Traceback" not in err
        assert running == []  # a bench that stops frees its runs in progress
        return  # resuming from here is the easier case of the one below
    assert len(running) <= 2  # the runs in progress, claimed by a dead bench: taken over now
    assert main([*args, "--jobs", "1"]) == 0
    assert f"({len(done_before)} already finished, skipped)" in capsys.readouterr().out
    after = {r[0]: r for r in _rows(db)}
    assert len(after) == 8  # 2 x (3 lrs + 1 seed)
    assert {r[1] for r in after.values()} <= {"done", "did-not-learn", "diverged"}
    for key, row in done_before.items():
        assert after[key] == row  # same row id and finish time: not run again


# -- two benches on one database ------------------------------------------------------------------


def test_two_benches_on_one_database_never_run_a_configuration_twice(tmp_path):
    db = tmp_path / "shared.db"
    argv = [
        sys.executable,
        "-m",
        "adaptim.cli",
        "bench",
        "--optimizers",
        "torch-sgdm,adam",
        "--tasks",
        "noisy-quadratic,diffgrad-f1",
        "--steps",
        "1000",
        "--seeds",
        "2",
        "--lrs",  # a fixed grid: a known number of runs, no search
        "0.003,0.03,0.3",
        "--jobs",
        "1",
        "--db",
        str(db),
        "--no-report",
        "--no-progress",
    ]
    benches = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in "ab"]
    outs = [b.communicate(timeout=180) for b in benches]
    assert [b.returncode for b in benches] == [0, 0], [e.decode() for _, e in outs]
    ran, left = [], []
    for out, _ in outs:
        (line,) = [ln for ln in out.decode().splitlines() if ln.startswith("finished in")]
        ran.append(
            sum(
                int(n)
                for n in re.findall(r"(\d+) (?:done|did-not-learn|diverged|timeout|failed)", line)
            )
        )
        found = re.search(r"(\d+) runs left to another bench", line)
        left.append(int(found.group(1)) if found else 0)
    rows = _rows(db)
    # 2 tasks x 2 optimizers x (3 lrs + 1 more seed), each row written by exactly one bench.
    assert len(rows) == 16 and {r[1] for r in rows} <= {"done", "did-not-learn", "diverged"}
    assert sum(ran) == 16, (ran, [o.decode() for o, _ in outs])
    assert sum(left) > 0  # they did meet: one skipped runs the other held or had finished

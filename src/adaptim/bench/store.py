"""The bench's results database (SQLite, stdlib ``sqlite3``).

Tables:

* ``environments``: one row per ``adaptim bench`` invocation: machine, threads, versions, git
  revision, command line (:func:`adaptim.bench.env.describe`).
* ``runs``: one row per (task, optimizer, lr, seed, config hash): the configuration (JSON), status
  (``running`` / ``done`` / ``did-not-learn`` / ``diverged`` / ``timeout`` / ``failed``), final metrics, steps and seconds to target,
  wall time, error text, and the environment it ran in. ``key`` is unique, so running the same command
  again finds the finished runs and skips them. A ``running`` row is a claim: ``owner`` names the
  bench process that runs it (host, pid) and ``lease_until`` when the claim lapses at the latest.
* ``metrics``: per-step series of a run (``train_loss`` every few steps, the task metric at every
  evaluation), with the training seconds elapsed at that step; for the neural networks, ``r_med``
  (a diagnostic, :mod:`adaptim.bench.runner`): one point at the last step, whose seconds are the CPU
  seconds its measurement took, and whose value is NULL when it was not finite or failed. Older
  databases have no ``r_med`` rows and load as they are.
* ``series``: arrays too long for rows (the 2-D / 1-D trajectories), as float32 blobs.
* ``claims``: verdicts of ``adaptim bench --suite claims``.

A run is claimed (:meth:`Store.claim_run`, one ``BEGIN IMMEDIATE`` transaction) before it starts, so two
benches on one database never run the same configuration twice: the second skips what the first has
finished or holds. A claim whose owner process is dead (same host) or whose lease has lapsed is stale
and taken over, so a run that was in progress when its bench was killed is run again by the next
invocation. Its results are written in one transaction when it finishes.

Opening the database runs ``PRAGMA quick_check``: a damaged file is refused with :class:`StoreError`
at once, not met halfway through a bench (or never, when the damaged page is not read).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["FINISHED", "RunRecord", "Store", "StoreError"]

# A re-run skips these; "failed" and "running" are retried. "did-not-learn": the run finished without
# diverging but no better than its task's trivial baseline (chance accuracy, the initial metric).
FINISHED = ("done", "did-not-learn", "diverged", "timeout")

SCHEMA = """
CREATE TABLE IF NOT EXISTS environments (
    id INTEGER PRIMARY KEY,
    created REAL NOT NULL,
    info TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    task TEXT NOT NULL,
    optimizer TEXT NOT NULL,
    lr REAL,
    seed INTEGER NOT NULL,
    config_hash TEXT NOT NULL,
    config TEXT NOT NULL,
    status TEXT NOT NULL,
    env_id INTEGER REFERENCES environments(id),
    started REAL,
    finished REAL,
    wall_seconds REAL,
    cpu_seconds REAL,
    train_seconds REAL,
    steps_done INTEGER,
    final_metric REAL,
    initial_metric REAL,
    final_loss REAL,
    steps_to_target INTEGER,
    seconds_to_target REAL,
    error TEXT,
    owner TEXT,
    lease_until REAL
);
CREATE INDEX IF NOT EXISTS runs_group ON runs(task, config_hash, optimizer);
CREATE TABLE IF NOT EXISTS metrics (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    step INTEGER NOT NULL,
    seconds REAL,
    value REAL
);
CREATE INDEX IF NOT EXISTS metrics_run ON metrics(run_id, name);
CREATE TABLE IF NOT EXISTS series (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    shape TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (run_id, name)
);
CREATE TABLE IF NOT EXISTS claims (
    id INTEGER PRIMARY KEY,
    env_id INTEGER REFERENCES environments(id),
    created REAL NOT NULL,
    name TEXT NOT NULL,
    paper TEXT,
    statement TEXT,
    holds INTEGER,
    verdict TEXT,
    numbers TEXT,
    detail TEXT,
    seconds REAL
);
"""


@dataclass
class RunRecord:
    """A finished run as read back from the database."""

    id: int
    key: str
    task: str
    optimizer: str
    lr: float | None
    seed: int
    config_hash: str
    config: dict[str, Any]
    status: str
    wall_seconds: float | None
    cpu_seconds: float | None
    train_seconds: float | None
    steps_done: int | None
    final_metric: float | None
    initial_metric: float | None
    final_loss: float | None
    steps_to_target: int | None
    seconds_to_target: float | None
    error: str | None
    env_id: int | None
    finished: float | None = None
    metrics: dict[str, np.ndarray] = field(
        default_factory=dict
    )  # name -> (n, 3): step, seconds, value


class StoreError(Exception):
    """The results database cannot be used: a directory, not an SQLite file, or damaged."""


# The owners (``Store.owner``) of the stores open in this process: a claim made by this process is
# live only while the store that made it is open.
_OPEN_OWNERS: set[str] = set()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _claim_is_live(owner: str | None, lease_until: float | None, now: float) -> bool:
    """Whether a ``running`` row still belongs to a bench that will finish it."""
    if owner is None or lease_until is None or now > lease_until:
        return False  # an older bench's row, or a lapsed lease (a hung bench, a reused pid)
    host, pid, _ = owner.rsplit(":", 2)
    if host != socket.gethostname():
        return True  # that machine's processes are out of sight: the lease decides
    if int(pid) == os.getpid():
        return owner in _OPEN_OWNERS
    return _pid_alive(int(pid))


class Store:
    """A connection to the results database (created on first use; checked when opened).

    Raises :class:`StoreError` when ``path`` is a directory, not an SQLite database, or fails
    ``PRAGMA quick_check``.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise StoreError(
                f"{self.path} is a directory, not a results database file; "
                f"pass a file path such as {self.path / 'adaptim-results.db'}"
            )
        # host:pid:token; the token tells two stores of one process apart.
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        # Two benches opening one new database at once: switching it to WAL and creating the
        # schema can meet the other's lock in a way SQLite does not wait out (it returns "database
        # is locked" at once where waiting could deadlock), so the whole opening is tried again.
        deadline = time.monotonic() + 60
        delay = 0.05
        while True:
            conn = None
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(str(self.path), timeout=60)
                self.conn = conn
                self._check_integrity()
                conn.execute("PRAGMA foreign_keys = ON")
                conn.execute("PRAGMA journal_mode = WAL")
                conn.executescript(SCHEMA)
                conn.commit()
                self._add_missing_columns()
                break
            except (sqlite3.DatabaseError, OSError, StoreError) as err:
                if conn is not None:
                    conn.close()
                if isinstance(err, StoreError):
                    raise
                locked = isinstance(err, sqlite3.OperationalError) and "locked" in str(err)
                if locked and time.monotonic() < deadline:
                    time.sleep(delay)
                    delay = min(2 * delay, 1.0)
                    continue
                raise StoreError(
                    f"{self.path} cannot be used as a results database ({err}); "
                    "pass another --db, or move this file aside"
                ) from None
        _OPEN_OWNERS.add(self.owner)

    def _check_integrity(self) -> None:
        # quick_check reads every page (without integrity_check's cross-checks of the indexes): a
        # damaged page is found now, not when a report or a resume happens to read it, or never.
        try:
            problems = [row[0] for row in self.conn.execute("PRAGMA quick_check")]
        except sqlite3.OperationalError as err:
            if "locked" in str(err):  # another bench is opening it: not damage (tried again)
                raise
            problems = [str(err)]
        except sqlite3.DatabaseError as err:  # a damaged header or b-tree: no list of problems
            problems = [str(err)]
        if problems != ["ok"]:
            more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
            raise StoreError(
                f"{self.path} is damaged or not an SQLite database (PRAGMA quick_check: "
                f"{'; '.join(problems[:3])}{more}); its results cannot be trusted: restore a "
                "backup, or move it aside and run again"
            )

    def _add_missing_columns(self) -> None:
        """Databases written before run claims existed lack ``owner`` and ``lease_until``."""
        wanted = {"owner": "TEXT", "lease_until": "REAL"}
        if wanted.keys() <= self._run_columns():
            return
        with self._write() as conn:
            have = self._run_columns()  # again, under the lock: another bench may have added them
            for name, kind in wanted.items():
                if name not in have:
                    conn.execute(f"ALTER TABLE runs ADD COLUMN {name} {kind}")

    def _run_columns(self) -> set[str]:
        return {row[1] for row in self.conn.execute("PRAGMA table_info(runs)")}

    def close(self) -> None:
        _OPEN_OWNERS.discard(self.owner)
        self.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One transaction that takes the write lock as it begins (``BEGIN IMMEDIATE``).

        What it reads cannot change before it commits, so a check-then-write (a claim) is atomic
        between processes; a second writer waits for the lock up to the connection's timeout.
        """
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.rollback()
            raise
        self.conn.commit()

    # -- writing ------------------------------------------------------------------------------

    def add_environment(self, info: dict[str, Any]) -> int:
        with self._write() as conn:
            cur = conn.execute(
                "INSERT INTO environments (created, info) VALUES (?, ?)",
                (time.time(), json.dumps(info, sort_keys=True)),
            )
        return int(cur.lastrowid)

    def finished_keys(self, keys: Iterable[str]) -> set[str]:
        """The keys among ``keys`` whose run is done, diverged or timed out."""
        keys = list(keys)
        out: set[str] = set()
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            rows = self.conn.execute(
                f"SELECT key FROM runs WHERE status IN ({','.join('?' * len(FINISHED))}) "
                f"AND key IN ({','.join('?' * len(chunk))})",
                (*FINISHED, *chunk),
            )
            out.update(r[0] for r in rows)
        return out

    def claim_run(self, spec: dict[str, Any], env_id: int | None, lease_seconds: float) -> bool:
        """Claim a run for this bench: ``True`` when it is ours to run now.

        ``False`` when the run is finished or another bench holds it (a live owner, within its
        lease). Otherwise a ``running`` row owned by this store replaces what was there (nothing, a
        failed run, a stale claim). The lease must cover the run's time limit: a claim past its
        lease is taken over even when its owner seems alive.
        """
        now = time.time()
        with self._write() as conn:
            row = conn.execute(
                "SELECT status, owner, lease_until FROM runs WHERE key = ?", (spec["key"],)
            ).fetchone()
            if row is not None:
                status, owner, lease_until = row
                if status in FINISHED:
                    return False
                held = status == "running" and owner != self.owner
                if held and _claim_is_live(owner, lease_until, now):
                    return False
            conn.execute("DELETE FROM runs WHERE key = ?", (spec["key"],))
            conn.execute(
                "INSERT INTO runs (key, task, optimizer, lr, seed, config_hash, config, status,"
                " env_id, started, owner, lease_until)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, 'running', ?, ?, ?, ?)",
                (
                    spec["key"],
                    spec["task"],
                    spec["optimizer"],
                    spec["lr"],
                    spec["seed"],
                    spec["config_hash"],
                    json.dumps(spec, sort_keys=True),
                    env_id,
                    now,
                    self.owner,
                    now + lease_seconds,
                ),
            )
        return True

    def release_claims(self) -> int:
        """Drop this store's unfinished claims (a bench that stops early); returns how many."""
        with self._write() as conn:
            cur = conn.execute(
                "DELETE FROM runs WHERE status = 'running' AND owner = ?", (self.owner,)
            )
        return cur.rowcount

    def write_result(
        self, spec: dict[str, Any], result: dict[str, Any], env_id: int | None
    ) -> None:
        """Store a finished run (status, finals, per-step metrics, series) in one transaction."""
        with self._write():
            self.conn.execute("DELETE FROM runs WHERE key = ?", (spec["key"],))
            cur = self.conn.execute(
                "INSERT INTO runs (key, task, optimizer, lr, seed, config_hash, config, status, env_id,"
                " started, finished, wall_seconds, cpu_seconds, train_seconds, steps_done,"
                " final_metric, initial_metric, final_loss, steps_to_target, seconds_to_target, error)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    spec["key"],
                    spec["task"],
                    spec["optimizer"],
                    spec["lr"],
                    spec["seed"],
                    spec["config_hash"],
                    json.dumps(spec, sort_keys=True),
                    result["status"],
                    env_id,
                    result.get("started"),
                    time.time(),
                    result.get("wall_seconds"),
                    result.get("cpu_seconds"),
                    result.get("train_seconds"),
                    result.get("steps_done"),
                    _num(result.get("final_metric")),
                    _num(result.get("initial_metric")),
                    _num(result.get("final_loss")),
                    result.get("steps_to_target"),
                    result.get("seconds_to_target"),
                    result.get("error"),
                ),
            )
            run_id = cur.lastrowid
            rows = [
                (run_id, name, int(step), float(sec), _num(val))
                for name, points in result.get("metrics", {}).items()
                for step, sec, val in points
            ]
            self.conn.executemany(
                "INSERT INTO metrics (run_id, name, step, seconds, value) VALUES (?, ?, ?, ?, ?)",
                rows,
            )
            for name, arr in result.get("series", {}).items():
                a = np.asarray(arr, dtype=np.float32)
                self.conn.execute(
                    "INSERT INTO series (run_id, name, shape, data) VALUES (?, ?, ?, ?)",
                    (run_id, name, json.dumps(list(a.shape)), a.tobytes()),
                )

    def add_claims(self, results: Sequence[Any], env_id: int | None) -> None:
        now = time.time()
        with self._write():
            for r in results:
                verdict = getattr(r, "verdict", None) or (
                    "holds" if r.holds else "skipped" if r.holds is None else "does not hold"
                )
                self.conn.execute(
                    "INSERT INTO claims (env_id, created, name, paper, statement, holds, verdict,"
                    " numbers, detail, seconds) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        env_id,
                        now,
                        r.name,
                        r.paper,
                        r.statement,
                        None if r.holds is None else int(bool(r.holds)),
                        verdict,
                        json.dumps({k: _num(v) for k, v in dict(r.numbers).items()}),
                        r.detail,
                        float(getattr(r, "seconds", 0.0) or 0.0),
                    ),
                )

    # -- reading ------------------------------------------------------------------------------

    def runs(
        self,
        *,
        config_hashes: Iterable[str] | None = None,
        statuses: Sequence[str] | None = None,
        with_metrics: bool = True,
    ) -> list[RunRecord]:
        sql = (
            "SELECT id, key, task, optimizer, lr, seed, config_hash, config, status, wall_seconds,"
            " cpu_seconds, train_seconds, steps_done, final_metric, initial_metric, final_loss, steps_to_target,"
            " seconds_to_target, error, env_id, finished FROM runs"
        )
        cond, args = [], []
        if statuses is not None:
            cond.append(f"status IN ({','.join('?' * len(statuses))})")
            args += list(statuses)
        if config_hashes is not None:
            hashes = list(config_hashes)
            cond.append(f"config_hash IN ({','.join('?' * len(hashes))})")
            args += hashes
        if cond:
            sql += " WHERE " + " AND ".join(cond)
        sql += " ORDER BY task, optimizer, lr, seed"
        out = []
        for row in self.conn.execute(sql, args):
            rec = RunRecord(*row[:7], json.loads(row[7]), *row[8:])
            out.append(rec)
        if with_metrics and out:
            by_id = {r.id: r for r in out}
            grouped: dict[tuple[int, str], list[tuple[int, float, float]]] = {}
            for run_id, name, step, sec, val in self.conn.execute(
                "SELECT run_id, name, step, seconds, value FROM metrics ORDER BY run_id, name, step"
            ):
                if run_id in by_id:
                    grouped.setdefault((run_id, name), []).append(
                        (
                            step,
                            sec if sec is not None else np.nan,
                            val if val is not None else np.nan,
                        )
                    )
            for (run_id, name), pts in grouped.items():
                by_id[run_id].metrics[name] = np.asarray(pts, dtype=np.float64)
        return out

    def series(self, run_id: int, name: str) -> np.ndarray | None:
        row = self.conn.execute(
            "SELECT shape, data FROM series WHERE run_id = ? AND name = ?", (run_id, name)
        ).fetchone()
        if row is None:
            return None
        return np.frombuffer(row[1], dtype=np.float32).reshape(json.loads(row[0]))

    def environments(self) -> dict[int, dict[str, Any]]:
        return {i: json.loads(s) for i, s in self.conn.execute("SELECT id, info FROM environments")}

    def latest_claims(self) -> list[dict[str, Any]]:
        """The most recent verdict of each claim."""
        rows = self.conn.execute(
            "SELECT name, paper, statement, holds, verdict, numbers, detail, seconds, created, env_id"
            " FROM claims c WHERE id = (SELECT MAX(id) FROM claims WHERE name = c.name) ORDER BY name"
        ).fetchall()
        keys = ("name", "paper", "statement", "holds", "verdict", "numbers", "detail", "seconds")
        out = []
        for row in rows:
            d = dict(zip(keys, row[:8], strict=True))
            d["numbers"] = json.loads(d["numbers"] or "{}")
            d["created"], d["env_id"] = row[8], row[9]
            out.append(d)
        return out

    def counts(self) -> dict[str, int]:
        return dict(
            self.conn.execute("SELECT status, COUNT(*) FROM runs GROUP BY status").fetchall()
        )


def _num(x: Any) -> float | None:
    """A float for SQLite (``None`` for missing; NaN/inf are stored as NULL/±1e308 would lie)."""
    if x is None:
        return None
    x = float(x)
    if x != x:  # NaN
        return None
    if x in (float("inf"), float("-inf")):
        return None
    return x

"""The bench's runs on a Ray cluster: :class:`RayExecutor`, an executor for
:func:`adaptim.bench.runner.run_plan` (``adaptim bench --executor ray``).

Each run is one Ray task of one CPU that calls :func:`~adaptim.bench.runner.execute_run` on one
thread, as a local worker process does, so its results are the local executor's. Only the runs leave
this process: the scheduler stays here, claims each run and writes each finished one to the SQLite
database in one transaction, so the database never leaves the driver and a stopped bench resumes as
with the local workers. Ray is the ``[ray]`` extra (``pip install "adaptim[ray]"``).
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from adaptim.bench.runner import RunSpec, _worker_init, execute_run

__all__ = ["INSTALL_HINT", "RayExecutor", "RayUnavailable"]

INSTALL_HINT = 'pip install "adaptim[ray]"'
# Ray itself retries an address that does not answer for minutes; a probe fails in seconds.
CONNECT_TIMEOUT_SECONDS = 5.0
# Ray's wait runs no signal handler until it returns: waiting in slices of this length lets Ctrl-C
# and SIGTERM stop a bench within it, not when some run ends.
WAIT_POLL_SECONDS = 0.2


class RayUnavailable(RuntimeError):
    """Ray is not installed, or no cluster answers at the given address."""


_worker_ready = False  # per Ray worker process: they are reused from one run to the next


def _run_in_worker(spec: dict[str, Any], time_limit: float) -> dict[str, Any]:
    """The Ray task: one run, one thread (the thread limits are set once per worker process)."""
    global _worker_ready
    if not _worker_ready:
        _worker_init()
        _worker_ready = True
    return execute_run(spec, time_limit=time_limit)


def _check_reachable(address: str) -> None:
    """Refuse a ``host:port`` where nothing listens ("auto" and ``ray://`` URLs are Ray's to read)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in address:
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), CONNECT_TIMEOUT_SECONDS).close()
    except OSError as err:
        raise RayUnavailable(f"no Ray cluster answers at {address} ({err})") from None


class RayExecutor:
    """Runs on Ray: one task of one CPU per run; the scheduler keeps at most its ``jobs`` submitted.

    ``address=None`` starts a Ray runtime on this machine with ``num_cpus`` CPUs (default: Ray's
    count of the cores), without dashboard or usage reporting; an address (``host:port``, ``auto``,
    ``ray://...``) connects to an existing cluster, whose nodes need adaptim and the tasks' data
    installed. In a program that has already called ``ray.init`` the executor uses that runtime
    (``address`` must then be ``None``). :meth:`close` stops the runs in progress and shuts Ray down
    only if this executor started or connected it.

    A run whose Ray worker dies (killed, out of memory, a crash in C code) is a failed run, with
    Ray's error; Ray does not retry it.
    """

    def __init__(self, address: str | None = None, num_cpus: int | None = None) -> None:
        try:
            import ray
        except ImportError as err:
            raise RayUnavailable(f"Ray is not installed: {INSTALL_HINT}") from err
        self._ray = ray
        if address is not None:
            _check_reachable(address)
        self.busy: dict[Any, RunSpec] = {}  # ray.ObjectRef -> the run it will hold
        self.owns_ray = not ray.is_initialized()
        if not self.owns_ray:
            if address is not None:
                raise ValueError(
                    f"address={address!r}: Ray is already initialized in this process; "
                    "pass address=None to use that runtime"
                )
        elif address is None:
            # No data leaves the machine: Ray's usage statistics stay off unless the user set them.
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            ray.init(
                address="local",  # a new runtime here, even when RAY_ADDRESS names a cluster
                num_cpus=num_cpus,
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.ERROR,
            )
        else:
            try:
                ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
            except ConnectionError as err:  # e.g. "auto" with no cluster running on this machine
                raise RayUnavailable(
                    f"could not connect to a Ray cluster at {address}: {err}"
                ) from None
        self._task = ray.remote(num_cpus=1, max_retries=0)(_run_in_worker)

    @property
    def cpus(self) -> int:
        """The CPUs of the Ray cluster (the default number of concurrent runs)."""
        return max(1, int(self._ray.cluster_resources().get("CPU", 1)))

    def submit(self, spec: RunSpec) -> None:
        self.busy[self._task.remote(spec.as_dict(), spec.time_limit)] = spec

    def wait(self) -> list[tuple[RunSpec, dict[str, Any]]]:
        """Wait until at least one run has ended; every run that has ended, with its result."""
        ready: list[Any] = []
        rest = list(self.busy)
        while not ready:  # in short waits: a signal's handler (Ctrl-C, SIGTERM) runs between them
            ready, rest = self._ray_wait(rest, num_returns=1, timeout=WAIT_POLL_SECONDS)
        if rest:
            ready += self._ray_wait(rest, num_returns=len(rest), timeout=0)[0]
        return [(self.busy.pop(ref), self._result(ref)) for ref in ready]

    def _ray_wait(self, refs: list[Any], **kwargs: Any) -> tuple[list[Any], list[Any]]:
        try:
            return self._ray.wait(refs, **kwargs)
        except SystemError as err:
            # A signal handler that raised as Ray's wait returned (the CLI turns SIGTERM into an
            # exception) comes out wrapped in a SystemError: the handler's exception stops the bench.
            if err.__cause__ is None:
                raise
            raise err.__cause__ from None

    def _result(self, ref: Any) -> dict[str, Any]:
        try:
            return self._ray.get(ref)
        except self._ray.exceptions.RayError as err:  # execute_run never raises: the worker died
            return {
                "status": "failed",
                "error": f"the Ray worker failed: {type(err).__name__}: {err}",
            }

    def close(self) -> None:
        """Stop the runs in progress (their workers are killed) and release Ray if it is ours."""
        try:
            for ref in self.busy:
                try:
                    self._ray.cancel(ref, force=True)
                except Exception:  # e.g. the cluster is gone: nothing left to cancel there
                    pass
            self.busy.clear()
        finally:
            if self.owns_ray and self._ray.is_initialized():
                self._ray.shutdown()
            self.owns_ray = False

"""What a bench run records about where it ran: machine, threads, versions, git revision, and the
load average when it started (a busy machine makes wall times, not CPU times, longer)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["cpu_name", "describe", "git_revision"]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_revision(path: str | os.PathLike | None = None) -> str | None:
    """The commit of the checkout holding adaptim (with ``+dirty`` if modified), or ``None``."""
    root = Path(path) if path else Path(__file__).resolve().parents[3]
    if not (root / ".git").exists():
        return None
    try:
        rev = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return rev + ("+dirty" if dirty else "")


def describe(
    threads_per_run: int = 1, jobs: int = 1, argv: list[str] | None = None
) -> dict[str, Any]:
    """A JSON-able description of this machine and software, stored with every bench run."""
    import numpy
    import torch

    import adaptim

    info: dict[str, Any] = {
        "time": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "threads_per_run": threads_per_run,
        "jobs": jobs,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "adaptim": adaptim.__version__,
        "git": git_revision(),
        "argv": list(sys.argv if argv is None else argv),
    }
    try:
        info["load_average"] = list(os.getloadavg())
    except OSError:
        pass
    return info

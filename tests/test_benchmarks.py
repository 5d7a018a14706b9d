"""The benchmark scripts still run (their numbers are not checked here: they are benchmarks, run by
hand on a quiet machine). A script that no test runs rots: ``benchmarks/state_bits.py --time``
crashed for a session after ``step_time.time_steps`` began to return the first step's time too."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def run(script: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_state_bits_prints_memory_and_time_rows() -> None:
    out = run("state_bits.py", "--set", "smoke", "--time", "--only", "radam,adan", "--repeats", "1")
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[2:]}
    assert set(rows) == {"radam", "adan"}
    for values in rows.values():
        numbers = [float(v) for v in values]
        assert len(numbers) == 5 and all(n > 0 for n in numbers)
    # RAdam's two moments: 8 bytes per parameter at 32 bits, fewer at 8
    assert float(rows["radam"][0]) == 8.0 and float(rows["radam"][1]) < 8.0


def test_step_time_prints_a_row_per_optimizer() -> None:
    """Adam and AdamW only: their fused step is torch's kernel, so nothing is compiled here."""
    out = run("step_time.py", "--sets", "smoke", "--only", "adam,adamw", "--repeats", "1")
    summary = out.split("summary", 1)[1].splitlines()
    rows = {line.split()[1]: line.split()[2:] for line in summary if line.startswith("smoke")}
    assert {"adam", "adamw"} <= set(rows)
    for name in ("adam", "adamw"):
        # eager ms, fused ms, MiB, then the two per-byte ratios to fused AdamW (times of this
        # tiny set may print as 0.0 on a fast machine; the ratios may not)
        eager_ratio, fused_ratio = float(rows[name][3]), float(rows[name][4])
        assert eager_ratio > 0 and fused_ratio > 0

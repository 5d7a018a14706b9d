"""Time one ``step()`` of every registered optimizer, per byte moved, against torch's fused AdamW.

Two parameter sets:

* ``transformer``: the tensors of a small transformer (d_model 640, 8 layers, vocab 8192): 44.6M
  parameters in 99 tensors;
* ``many-small``: 2,000 tensors of 1,000 elements (per-tensor overhead dominates).

For each optimizer the eager multi-tensor path (``foreach=True``) and, where the optimizer has it, the
fused step (``fused=True``, core/fused.py) are timed, and, when ``pytorch-optimizer`` is installed,
its class of the same name. References measured in the same run: ``torch.optim.AdamW(foreach=True)``
and ``torch.optim.AdamW(fused=True)``, the latter again beside each optimizer (``AdamW ms``): the
row's optimizers and a fused AdamW are all built, then stepped in turn, one step each per round, so
each row's ratios compare steps taken within the same seconds. The machines are shared and their
speed drifts by up to 2x within minutes (fused AdamW took 18 to 67 ms over one afternoon); timed one
after the other, the ratios moved with it.

An optimizer step is memory-bound, so time is compared per byte moved: parameters read and written,
gradients read, every state tensor read and written (its real size, so factored or scalar states count
for what they are). ``eager`` and ``fused`` are the per-byte ratios to fused AdamW (targets for the
fused step: at most 1.25 on the transformer set, 1.5 on many-small); ``vs peer`` = our eager time /
pytorch-optimizer's time for the same algorithm.

With ``--compile-times`` the compile cost of each fused optimizer is measured too, in fresh
processes: ``cold`` with an empty Inductor cache, ``warm`` with the cache the cold run filled (the
time of the first fused step less a compiled step). Targets: at most 60 s cold and 10 s warm on a
2-core CPU, the same for both sets.

    python benchmarks/step_time.py                      # both sets, every optimizer, 2 threads
    python benchmarks/step_time.py --sets many-small --only adam,adan --threads 1
    python benchmarks/step_time.py --compile-times --markdown results.md

Steps are timed after six warm-up steps (past RAdam's un-rectified phase; the fused step compiles in
the first, whose time is ``first s``: the compile from the Inductor cache as the run finds it); the
median of ``--repeats`` rounds is reported. The machines are shared and noisy: compare
ratios within one run, not times across runs.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch

import adaptim
from adaptim.registry import registered

SetFactory = Callable[[], list[torch.Tensor]]
# RAdam-like rules take a cheaper un-rectified step for the first 5 steps: time steady-state steps.
WARMUP = 6


def transformer_set() -> list[torch.Tensor]:
    d, layers, vocab, ff = 640, 8, 8192, 2560
    shapes: list[tuple[int, ...]] = [(vocab, d)]
    for _ in range(layers):
        shapes += [(3 * d, d), (3 * d,), (d, d), (d,), (ff, d), (ff,), (d, ff), (d,)]
        shapes += [(d,), (d,), (d,), (d,)]  # two layer norms
    shapes += [(d,), (d,)]
    return _make(shapes)


def many_small_set() -> list[torch.Tensor]:
    return _make([(1000,)] * 2000)


def _make(shapes: list[tuple[int, ...]]) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    params = []
    for shape in shapes:
        p = torch.nn.Parameter(torch.randn(shape, generator=gen) * 0.02)
        p.grad = torch.randn(shape, generator=gen) * 1e-3
        params.append(p)
    return params


def smoke_set() -> list[torch.Tensor]:
    """A few tensors, two of them above the 8-bit threshold: for checking that a benchmark runs
    (tests/test_benchmarks.py), not for its numbers."""
    return _make([(64, 128), (64,), (8192,)])


SETS: dict[str, SetFactory] = {
    "transformer": transformer_set,
    "many-small": many_small_set,
    "smoke": smoke_set,
}


def bytes_moved(opt: torch.optim.Optimizer, params: list[torch.Tensor]) -> int:
    total = 0
    for p in params:
        total += 3 * p.numel() * p.element_size()  # param read + write, grad read
        for value in opt.state.get(p, {}).values():
            if isinstance(value, torch.Tensor) and value.numel() > 1:
                total += 2 * value.numel() * value.element_size()
    return total


def time_steps(opt: torch.optim.Optimizer, repeats: int) -> tuple[float, float]:
    """The median time of ``repeats`` steps after the warm-up, and the time of the first step
    (with ``fused=True``: the compile, from the Inductor cache as this run finds it)."""

    times = []
    for _ in range(WARMUP + repeats):
        start = time.perf_counter()
        step(opt)
        times.append(time.perf_counter() - start)
    return statistics.median(times[WARMUP:]), times[0]


def step(opt: torch.optim.Optimizer) -> None:
    """One step; an optimizer that requires a closure (KOALA, SGDHess) gets one returning a loss
    (the gradients are left as they are)."""
    if getattr(type(opt), "requires_closure", False):
        opt.step(lambda: torch.tensor(1.0))
    else:
        opt.step()


def peer_class(name: str) -> type | None:
    try:
        import pytorch_optimizer
    except ImportError:
        return None
    wanted = name.replace("_", "").lower()
    for attr in dir(pytorch_optimizer):
        obj = getattr(pytorch_optimizer, attr)
        if isinstance(obj, type) and issubclass(obj, torch.optim.Optimizer):
            if attr.lower() == wanted and not obj.__module__.startswith("torch."):
                return obj
    return None


def measure(
    make: Callable[[list[torch.Tensor]], torch.optim.Optimizer], factory: SetFactory, repeats: int
) -> tuple[float, int, float]:
    """``(seconds per step, bytes moved per step, seconds of the first step)``."""
    return side_by_side({"": make}, factory, repeats)[""]


def side_by_side(
    makers: dict[str, Callable[[list[torch.Tensor]], torch.optim.Optimizer]],
    factory: SetFactory,
    repeats: int,
) -> dict[str, tuple[float, int, float]]:
    """Per optimizer, ``(median seconds per step, bytes moved per step, seconds of the first step)``
    with each on a parameter set of its own, all built and warmed up first, then stepped in turn
    (one step each per round, ``repeats`` rounds): their ratios come from the same seconds of a
    machine whose speed drifts."""
    built: dict[str, tuple[torch.optim.Optimizer, list[torch.Tensor], float]] = {}
    for key, make in makers.items():
        params = factory()
        opt = make(params)
        start = time.perf_counter()
        step(opt)
        first = time.perf_counter() - start
        for _ in range(WARMUP - 1):
            step(opt)
        built[key] = (opt, params, first)
    times: dict[str, list[float]] = {key: [] for key in built}
    for _ in range(repeats):
        for key, (opt, _, _) in built.items():
            start = time.perf_counter()
            step(opt)
            times[key].append(time.perf_counter() - start)
    out = {
        key: (statistics.median(times[key]), bytes_moved(opt, params), first)
        for key, (opt, params, first) in built.items()
    }
    del built, opt, params  # the loops' last optimizer too
    gc.collect()
    return out


def kwargs_for(info: Any) -> dict[str, Any]:
    kw = dict(info.test_kwargs)
    kw.setdefault("lr", info.defaults.get("lr", 1e-3) or 1e-3)
    return kw


def compile_seconds(name: str, set_name: str, cache_dir: str, threads: int) -> float:
    """The first fused step's time less a compiled step's, in a fresh process using ``cache_dir``
    as its Inductor cache."""
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache_dir}
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--probe-compile",
            f"{name}:{set_name}",
            "--threads",
            str(threads),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def probe_compile(spec: str) -> None:
    name, set_name = spec.split(":")
    info = next(i for i in registered(kind="optimizer") if i.name == name)
    params = SETS[set_name]()
    opt = info.cls(params, fused=True, **kwargs_for(info))
    start = time.perf_counter()
    step(opt)
    first = time.perf_counter() - start
    print(first - time_steps(opt, 3)[0])


def run(
    sets: list[str], only: set[str] | None, repeats: int, compile_times: bool, threads: int
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for set_name in sets:
        factory = SETS[set_name]
        refs = side_by_side(
            {
                "foreach": lambda p: torch.optim.AdamW(p, foreach=True),
                "fused": lambda p: torch.optim.AdamW(p, fused=True),
            },
            factory,
            repeats,
        )
        (ref_s, ref_b, _), (fused_s, fused_b, _) = refs["foreach"], refs["fused"]
        fused_per_byte = fused_s / fused_b
        for label, sec, moved in [
            ("torch AdamW foreach", ref_s, ref_b),
            ("torch AdamW fused", fused_s, fused_b),
        ]:
            rows.append(
                dict(
                    set=set_name,
                    name=label,
                    ms=sec * 1e3,
                    mb=moved / 2**20,
                    eager=sec / moved / fused_per_byte,
                    peer_ms=None,
                )
            )
            print(_format(rows[-1]), flush=True)
        for info in registered(kind="optimizer"):
            if only and info.name not in only:
                continue
            kw = kwargs_for(info)
            # the machine is shared: fused AdamW steps beside each optimizer, in turn with it,
            # and the row's ratios are to that time
            makers: dict[str, Callable[[list[torch.Tensor]], torch.optim.Optimizer]] = {
                "adamw": lambda p: torch.optim.AdamW(p, fused=True),
                "eager": lambda p, info=info, kw=kw: info.cls(p, foreach=True, **kw),
            }
            if info.cls.supports_fused():
                makers["fused"] = lambda p, info=info, kw=kw: info.cls(p, fused=True, **kw)
            try:
                timed = side_by_side(makers, factory, repeats)
            except Exception as exc:  # report, keep going
                rows.append(dict(set=set_name, name=info.name, error=repr(exc)))
                continue
            near_s, near_b, _ = timed["adamw"]
            fused_per_byte = near_s / near_b
            s, b, _ = timed["eager"]
            row: dict[str, Any] = dict(
                set=set_name,
                name=info.name,
                ref_ms=near_s * 1e3,
                ms=s * 1e3,
                mb=b / 2**20,
                eager=(s / b) / fused_per_byte,
                peer_ms=None,
            )
            if "fused" in timed:
                fs, fb, first = timed["fused"]
                row.update(fused_ms=fs * 1e3, fused=(fs / fb) / fused_per_byte, first_s=first)
                if compile_times:
                    with tempfile.TemporaryDirectory() as cache:
                        row["cold_s"] = compile_seconds(info.name, set_name, cache, threads)
                        row["warm_s"] = compile_seconds(info.name, set_name, cache, threads)
            peer = peer_class(info.name)
            if peer is not None:
                try:
                    peer_s, _, _ = measure(
                        lambda p, peer=peer, kw=kw: peer(p, lr=kw["lr"]), factory, repeats
                    )
                    row["peer_ms"] = peer_s * 1e3
                except Exception:
                    pass
            rows.append(row)
            print(_format(row), flush=True)
    return rows


def _num(value: float | None, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def _format(row: dict[str, Any]) -> str:
    if "error" in row:
        return f"{row['set']:<11} {row['name']:<22} ERROR {row['error']}"
    peer = None if row["peer_ms"] is None else row["ms"] / row["peer_ms"]
    return (
        f"{row['set']:<11} {row['name']:<22} {row['ms']:9.1f} {_num(row.get('fused_ms'), '9.1f'):>9} "
        f"{row['mb']:8.0f} {row['eager']:6.2f} {_num(row.get('fused'), '6.2f'):>6} "
        f"{_num(row.get('first_s'), '7.1f'):>7} "
        f"{_num(row.get('cold_s'), '6.1f'):>6} {_num(row.get('warm_s'), '6.1f'):>6} "
        f"{_num(peer, '7.2f'):>7} {_num(row.get('ref_ms'), '8.1f'):>8}"
    )


HEADER = (
    f"{'set':<11} {'optimizer':<22} {'eager ms':>9} {'fused ms':>9} {'MiB':>8} {'eager':>6} "
    f"{'fused':>6} {'first s':>7} {'cold s':>6} {'warm s':>6} {'vs peer':>7} {'AdamW ms':>8}"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", default="transformer,many-small")
    parser.add_argument("--only", default="", help="comma-separated registry names")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compile-times", action="store_true", help="cold and warm compile times")
    parser.add_argument("--markdown", default="", help="also write the table to this file")
    parser.add_argument("--probe-compile", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.probe_compile:
        probe_compile(args.probe_compile)
        return
    only = set(args.only.split(",")) if args.only else None
    print(
        f"adaptim {adaptim.__version__}, torch {torch.__version__}, {args.threads} threads; "
        "eager, fused = time per byte / fused AdamW's (fused targets: <= 1.25 transformer, "
        "<= 1.5 many-small); cold, warm = compile seconds; vs peer = eager time / "
        "pytorch-optimizer's same-named class"
    )
    print(HEADER)
    rows = run(args.sets.split(","), only, args.repeats, args.compile_times, args.threads)
    print("\nsummary")
    print(HEADER)
    for row in rows:
        print(_format(row))
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write(
                "| set | optimizer | eager step (ms) | fused step (ms) | moved (MiB) "
                "| eager / fused AdamW per byte | fused / fused AdamW per byte "
                "| first fused step (s) | compile cold (s) | compile warm (s) "
                "| fused AdamW beside it (ms) |\n"
            )
            fh.write("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
            for row in rows:
                if "error" in row:
                    fh.write(f"| {row['set']} | {row['name']} | error | | | | | | | | |\n")
                    continue
                fh.write(
                    f"| {row['set']} | {row['name']} | {row['ms']:.1f} | "
                    f"{_num(row.get('fused_ms'), '.1f')} | {row['mb']:.0f} | {row['eager']:.2f} | "
                    f"{_num(row.get('fused'), '.2f')} | {_num(row.get('first_s'), '.1f')} | "
                    f"{_num(row.get('cold_s'), '.0f')} | "
                    f"{_num(row.get('warm_s'), '.0f')} | {_num(row.get('ref_ms'), '.1f')} |\n"
                )


if __name__ == "__main__":
    main()

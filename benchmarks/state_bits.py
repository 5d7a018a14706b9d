"""8-bit optimizer states (``state_bits=8``, core/state_precision.py): memory and step time.

For every registered optimizer: bytes of optimizer state per parameter with ``state_bits=32`` and,
where the class declares quantizable states, with ``state_bits=8`` (every state tensor at its real
size: codes, block absmax, the states that stay fp32, factored statistics). Target: at most 2.1
bytes per parameter for a two-moment optimizer (fp32 Adam: 8).

With ``--time``, the step of each 8-bit optimizer against its own 32-bit step (both eager, the
default multi-tensor path; target: at most 2x), and ``AdamW(state_bits=8, fused=True)`` against
``torch.optim.AdamW(fused=True)`` in fp32 (target: at most 2x, stretch 1.5x). The two optimizers of a
ratio are built side by side and stepped in turn (``step_time.side_by_side``): times are medians of
``--repeats`` rounds after warm-up, and a ratio compares steps of the same seconds of a machine whose
speed drifts; compare ratios, not times across rows.

    python benchmarks/state_bits.py                         # memory table, transformer set
    python benchmarks/state_bits.py --time --only adamw,adan,radam --threads 2
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
import adaptim
from adaptim.registry import registered
from step_time import SETS, kwargs_for, side_by_side


def state_bytes_per_param(opt: torch.optim.Optimizer, params: list[torch.Tensor]) -> float:
    total = 0
    for p in params:
        for value in opt.state.get(p, {}).values():
            if isinstance(value, torch.Tensor):
                total += value.numel() * value.element_size()
    return total / sum(p.numel() for p in params)


def _step(opt: torch.optim.Optimizer) -> None:
    if getattr(type(opt), "requires_closure", False):
        opt.step(lambda: torch.tensor(1.0))
    else:
        opt.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--set", default="transformer", choices=sorted(SETS))
    parser.add_argument("--only", default="", help="comma-separated registry names")
    parser.add_argument("--time", action="store_true", help="also time 8-bit against 32-bit steps")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.threads])
    only = {n.strip() for n in args.only.split(",") if n.strip()}
    factory = SETS[args.set]
    print(f"set {args.set}, {args.threads} thread(s), torch {torch.__version__}")
    header = f"{'optimizer':<12} {'B/param 32':>10} {'B/param 8':>10}"
    if args.time:
        header += f" {'ms 32':>8} {'ms 8':>8} {'8 / 32':>7}"
    print(header)
    for info in registered(kind="optimizer"):
        if only and info.name not in only:
            continue
        row: dict[str, Any] = {}
        bits_list = [32, 8] if info.cls.quantized_states else [32]
        for bits in bits_list:
            params = factory()
            opt = info.cls(params, **kwargs_for(info), state_bits=bits)
            _step(opt)
            row[bits] = state_bytes_per_param(opt, params)
            del opt, params
            gc.collect()
        line = f"{info.name:<12} {row[32]:>10.3f} {row.get(8, float('nan')):>10.3f}"
        if args.time:
            timed = side_by_side(
                {
                    bits: lambda p, info=info, bits=bits: info.cls(
                        p, **kwargs_for(info), state_bits=bits
                    )
                    for bits in bits_list
                },
                factory,
                args.repeats,
            )
            ms32 = 1e3 * timed[32][0]
            ms8 = 1e3 * timed[8][0] if 8 in timed else float("nan")
            line += f" {ms32:>8.1f} {ms8:>8.1f} {ms8 / ms32:>7.2f}"
        print(line, flush=True)
    if args.time and (not only or "adamw" in only):
        timed = side_by_side(
            {
                "torch": lambda p: torch.optim.AdamW(p, lr=1e-3, fused=True),
                "ours": lambda p: adaptim.AdamW(p, lr=1e-3, state_bits=8, fused=True),
            },
            factory,
            args.repeats,
        )
        ref_ms, ours_ms = 1e3 * timed["torch"][0], 1e3 * timed["ours"][0]
        print(
            f"AdamW 8-bit fused {ours_ms:.1f} ms, torch AdamW fp32 fused {ref_ms:.1f} ms: "
            f"{ours_ms / ref_ms:.2f}x"
        )


if __name__ == "__main__":
    main()

"""Time the 8-bit block-wise codec (``adaptim.core.quantization``) against a plain fp32 copy.

Each variant runs on the same ``--numel`` elements, compiled with ``torch.compile`` (Inductor, one
graph, static shapes) unless marked eager. Reported per element and as ratios to a compiled fp32
copy of the same elements, by time (``x copy``) and by time per byte moved (``x copy/B``; a copy
moves 8 bytes per element, an encode 5 plus the absmax, a decode 5):

* ``encode`` / ``decode``: the elementwise fast codec (no table lookups), ``decode gather``: the
  256-entry gather;
* ``quantize`` / ``dequantize``: the block-wise functions (absmax per block of 256 and the codec),
  ``dequantize gather``: the same with the gather;
* ``native quantize`` / ``native dequantize``: the C loop (``adaptim.core.native_codec``), the one
  the optimizers use on a CPU (not compiled by Inductor: built once with the system C compiler);
* eager rows: what an optimizer gets when it calls the codec op by op without compiling.

    python benchmarks/codec.py                  # 2^24 elements, 1 thread
    python benchmarks/codec.py --threads 2 --numel 17000000

Variants are timed interleaved (``--repeats`` rounds, the minimum of each) so that the load of a
shared machine hits them alike; compare ratios within one run, not times across runs.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import torch

from adaptim.core import native_codec
from adaptim.core.quantization import (
    BLOCK,
    decode,
    decode_reference,
    dequantize_blockwise,
    encode,
    encode_reference,
    quantize_blockwise,
)


def _compiled(fn: Callable[..., object]) -> Callable[..., object]:
    return torch.compile(fn, fullgraph=True, dynamic=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--numel", type=int, default=1 << 24)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no-eager", action="store_true", help="skip the (slow) eager rows")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    if hasattr(os, "sched_setaffinity"):
        cpus = sorted(os.sched_getaffinity(0))[: args.threads]
        os.sched_setaffinity(0, cpus)
    n = args.numel - args.numel % BLOCK
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, generator=g) * torch.exp(torch.randn(n, generator=g) * 3)
    y = x / x.abs().max()
    codes, absmax = quantize_blockwise(x, signed=True)
    out = torch.empty(n)
    q_codes, q_absmax = torch.empty_like(codes), torch.empty_like(absmax)

    def copy(t: torch.Tensor) -> torch.Tensor:
        return t * 1.0

    def dequantize_gather(c: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return (decode_reference(c.view(-1, BLOCK), signed=True) * a[:, None]).view(-1)

    copy_c, encode_c, decode_c = _compiled(copy), _compiled(encode), _compiled(decode)
    gather_c, quantize_c = _compiled(decode_reference), _compiled(quantize_blockwise)
    dequantize_c, dequantize_gather_c = (
        _compiled(dequantize_blockwise),
        _compiled(dequantize_gather),
    )
    block_bytes = 5 + 4 / BLOCK
    cases: list[tuple[str, Callable[[], object], float]] = [
        ("fp32 copy", lambda: copy_c(x), 8),
        ("encode", lambda: encode_c(y, signed=True), 5),
        ("decode", lambda: decode_c(codes, signed=True), 5),
        ("decode gather", lambda: gather_c(codes, signed=True), 5),
        # into given buffers, as the optimizers call it (allocating them inside the compiled
        # function made Inductor's loop 4x slower once the codec kept infinities)
        ("quantize", lambda: quantize_c(x, signed=True, out=(q_codes, q_absmax)), block_bytes),
        ("dequantize", lambda: dequantize_c(codes, absmax, signed=True, out=out), block_bytes),
        ("dequantize gather", lambda: dequantize_gather_c(codes, absmax), block_bytes),
    ]
    if native_codec.available():  # the C loop the optimizers use on a CPU
        n_codes, n_absmax = torch.empty_like(codes), torch.empty_like(absmax)
        cases += [
            (
                "native quantize",
                lambda: native_codec.quantize_blockwise(x, signed=True, out=(n_codes, n_absmax)),
                block_bytes,
            ),
            (
                "native dequantize",
                lambda: native_codec.dequantize_blockwise(codes, absmax, signed=True, out=out),
                block_bytes,
            ),
        ]
    else:
        print(f"no native codec rows: {native_codec.unavailable_reason()}")
    if not args.no_eager:
        cases += [
            ("eager encode", lambda: encode(y, signed=True), 5),
            ("eager encode_reference", lambda: encode_reference(y, signed=True), 5),
            ("eager decode", lambda: decode(codes, signed=True), 5),
            ("eager decode gather", lambda: decode_reference(codes, signed=True), 5),
            ("eager quantize", lambda: quantize_blockwise(x, signed=True), block_bytes),
            (
                "eager dequantize",
                lambda: dequantize_blockwise(codes, absmax, signed=True),
                block_bytes,
            ),
        ]
    for _, fn, _ in cases:  # compile and warm up
        fn()
    best = {name: float("inf") for name, _, _ in cases}
    for _ in range(args.repeats):
        for name, fn, _ in cases:
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)

    copy_time = best["fp32 copy"]
    print(f"{n} elements, {args.threads} thread(s), torch {torch.__version__}")
    print(f"{'variant':<24}{'ns/elem':>9}{'x copy':>9}{'x copy/B':>10}")
    for name, _, nbytes in cases:
        t = best[name]
        per_byte = (t / nbytes) / (copy_time / 8)
        print(f"{name:<24}{t / n * 1e9:>9.2f}{t / copy_time:>9.2f}{per_byte:>10.2f}")


if __name__ == "__main__":
    main()

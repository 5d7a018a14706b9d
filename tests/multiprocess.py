"""Run a test's function on several CPU processes joined in one gloo process group.

The distributed tests (FSDP2, ZeRO, DDP, KOALA's loss reduction) each spawn their ranks once and run
every case inside; this module is the part they share: a free port, one thread per rank (the models
are tiny: threads only contend), the process group, and each rank's result brought back to the test.
"""

from __future__ import annotations

import inspect
import os
import socket
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import torch


def run_on_ranks(fn: Callable[..., Any], *args: Any, world_size: int = 2) -> list[Any]:
    """``[fn(rank, *args) for rank in range(world_size)]``, each call in its own spawned process
    inside an initialized gloo process group. ``fn`` must be a module-level function (the children
    import its module by path) and its result picklable by ``torch.save``."""
    import torch.multiprocessing as mp

    module_dir = os.path.dirname(inspect.getfile(fn))
    if module_dir not in sys.path:  # spawned children get the parent's sys.path
        sys.path.insert(0, module_dir)
    with tempfile.TemporaryDirectory() as out_dir:
        mp.start_processes(
            _rank_main,
            args=(world_size, _free_port(), out_dir, fn, args),
            nprocs=world_size,
            start_method="spawn",
        )
        return [
            torch.load(os.path.join(out_dir, f"rank{rank}.pt"), weights_only=False)
            for rank in range(world_size)
        ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(
    rank: int,
    world_size: int,
    port: int,
    out_dir: str,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        torch.save(fn(rank, *args), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()

"""Writes ``v1_checkpoints.pt``: wrapper checkpoints in the format adaptim saved up to commit 7a79caf
(``{"optimizer": inner_state_dict, "wrapper": name, "state": {index: {...}}, "extra": {...}}``), with the
parameters a run that continued from them reached. Run once, with that commit's code; kept to show how
the fixture was made (``tests/wrappers/test_wrapper_checkpoints.py`` loads it with today's code):

    git archive 7a79caf src | tar -x -C /tmp/old
    PYTHONPATH=/tmp/old/src python tests/wrappers/data/make_v1_checkpoints.py
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

import adaptim

CASES = {
    "lookahead": lambda m: adaptim.Lookahead(
        torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9), k=3, pullback_momentum="pullback"
    ),
    "iterate_averaging": lambda m: adaptim.IterateAveraging(
        torch.optim.Adam(m.parameters(), lr=0.05), start=1, gap=2
    ),
    "activelr": lambda m: adaptim.ActiveLR(
        torch.optim.AdamW(m.parameters(), lr=0.05), steps_per_epoch=2
    ),
}


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()


def run(m: nn.Module, opt: torch.optim.Optimizer, steps: range) -> None:
    for s in steps:
        gen = torch.Generator().manual_seed(100 + s)
        x = torch.randn(5, 3, generator=gen, dtype=torch.float64)
        y = torch.randn(5, 2, generator=gen, dtype=torch.float64)
        opt.zero_grad()
        ((m(x) - y) ** 2).mean().backward()
        opt.step()


def main() -> None:
    out = {}
    for name, make in CASES.items():
        m = model()
        opt = make(m)
        run(m, opt, range(7))  # mid-cycle / mid-epoch, after at least one sync / average / epoch
        saved = copy.deepcopy({"model": m.state_dict(), "optimizer": opt.state_dict()})
        run(m, opt, range(7, 12))
        saved["after"] = [p.detach().clone() for p in m.parameters()]
        out[name] = saved
    torch.save(out, Path(__file__).with_name("v1_checkpoints.pt"))


if __name__ == "__main__":
    main()

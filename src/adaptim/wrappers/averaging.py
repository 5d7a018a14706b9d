"""Iterate averaging (the "G" of Gadam / GadamX) over any optimizer.

Paper: Granziol, Wan, Garipov, Vetrov, Zohren, Roberts, "Iterate Averaging in the Quest for Best Test
Error" (Gadam / GadamX), arXiv:2003.01247.
Reference code: github.com/diegogranziol/GadamX (commit 7ce18a8), ``run_gadam_gap.py`` (the averaging
loop) and ``utils.bn_update`` (batch-norm statistics of the averaged model).

Rule: after the switch point, every ``gap``-th iterate is added to a running mean::

    after inner step s (s = 1, 2, ...):
        if s > start and (s - start - 1) % gap == 0:
            n += 1
            theta_avg += (theta - theta_avg) / n

so the first averaged iterate is the one after the first step past ``start`` (as in the reference
loop, whose counter ``t`` starts at 0 after the switch and averages when ``t % swa_gap == 0``). The
optimizer itself keeps training the un-averaged iterate; the average is what one evaluates (batch-norm
running statistics must then be recomputed for the averaged weights: :func:`update_bn`).

Gadam is AdamW + this wrapper; GadamX is Padam (partially adaptive Adam, p = 1/8) + decoupled weight
decay + this wrapper. Only the averaging is implemented here; it works over any optimizer.

Differences from the reference script: the switch and gap are counted in optimizer steps (the script
counts steps from the start of its averaging phase, with ``swa_gap`` in steps too); the average of
bf16/fp16 parameters is kept in fp32; each parameter keeps its own count ``n`` (a parameter group added
later starts its own average).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from adaptim.registry import OptimInfo, register
from adaptim.wrappers._base import OptimizerWrapper, _shadow

__all__ = ["IterateAveraging", "update_bn"]


class IterateAveraging(OptimizerWrapper):
    """Running mean of the iterates of ``optimizer`` from step ``start`` on, every ``gap`` steps.

    Args:
        optimizer: the optimizer whose iterates are averaged (e.g. AdamW for Gadam).
        start: number of inner steps before averaging begins (the switch point).
        gap: average every ``gap``-th iterate after the switch.

    >>> opt = IterateAveraging(adaptim.AdamW(model.parameters()), start=1000)   # doctest: +SKIP
    >>> with opt.averaged(model=model, bn_loader=train_loader):                 # doctest: +SKIP
    ...     evaluate(model)          # averaged weights, batch-norm statistics recomputed for them
    """

    state_prefix = "averaging_"
    _scalar_state = {"step": "step_count"}

    def __init__(self, optimizer: Optimizer, start: int = 0, gap: int = 1) -> None:
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise ValueError(
                f"IterateAveraging: invalid start={start!r}; accepted values: an integer >= 0"
            )
        if isinstance(gap, bool) or not isinstance(gap, int) or gap < 1:
            raise ValueError(
                f"IterateAveraging: invalid gap={gap!r}; accepted values: an integer >= 1"
            )
        super().__init__(optimizer)
        self.start = start
        self.gap = gap
        self.step_count = 0

    def _repr_keys(self) -> tuple[str, ...]:
        return ("start", "gap")

    def _init_param(self, p: torch.Tensor) -> None:
        self.wrapper_state[p].update(average=_shadow(p), n_averaged=0)

    def _after_step(self) -> None:
        self.step_count += 1
        s = self.step_count
        if s > self.start and (s - self.start - 1) % self.gap == 0:
            self.update_average()

    @torch.no_grad()
    def update_average(self) -> None:
        """Add the current iterate to the running mean (called automatically after the switch)."""
        self._ensure_state()
        for p in self.params():
            state = self.wrapper_state[p]
            state["n_averaged"] += 1
            avg = state["average"]
            avg.lerp_(p.detach().to(avg.dtype), 1.0 / state["n_averaged"])

    @property
    def n_averaged(self) -> int:
        """How many iterates the average holds (the largest count over the parameters)."""
        return max((s.get("n_averaged", 0) for s in self.wrapper_state.values()), default=0)

    @contextlib.contextmanager
    def averaged(
        self,
        model: nn.Module | None = None,
        bn_loader: Iterable[Any] | None = None,
        input_fn: Callable[[Any], Any] | None = None,
    ) -> Iterator[None]:
        """Evaluate on the averaged weights; the trained (last) iterate is restored on exit.

        With ``model`` and ``bn_loader``, batch-norm running statistics are recomputed for the averaged
        weights (:func:`update_bn`) and the model's own statistics are restored on exit too.
        Parameters with no average yet keep their current values.
        """
        if (model is None) != (bn_loader is None):
            raise ValueError("IterateAveraging.averaged: give both model and bn_loader, or neither")
        bn_backup: dict[str, torch.Tensor] = {}
        if model is not None:
            for prefix, module in model.named_modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    for name, buf in module.named_buffers(prefix=prefix, recurse=False):
                        bn_backup[name] = buf.detach().clone()
        own = self.wrapper_state
        params = [p for p in self.params() if own.get(p, {}).get("n_averaged", 0) > 0]
        backup = [p.detach().clone() for p in params]
        try:
            with torch.no_grad():
                for p in params:
                    p.copy_(own[p]["average"])
            if model is not None:
                assert bn_loader is not None  # both or neither, checked above
                update_bn(bn_loader, model, input_fn=input_fn)
            yield
        finally:
            with torch.no_grad():
                for p, saved in zip(params, backup, strict=True):
                    p.copy_(saved)
                if model is not None:
                    buffers = dict(model.named_buffers())
                    for name, saved_buf in bn_backup.items():
                        buffers[name].copy_(saved_buf)

    @torch.no_grad()
    def swap_average_in(self) -> None:
        """Copy the average into the parameters for good (e.g. at the end of training)."""
        for p in self.params():
            state = self.wrapper_state.get(p, {})
            if state.get("n_averaged", 0) > 0:
                p.copy_(state["average"])


@torch.no_grad()
def update_bn(
    loader: Iterable[Any],
    model: nn.Module,
    input_fn: Callable[[Any], Any] | None = None,
) -> None:
    """Recompute batch-norm running statistics of ``model`` as the exact mean over ``loader``.

    Running statistics are reset and accumulated with ``momentum=None`` (a cumulative average), in train
    mode, without gradients; modules' momenta and train/eval modes are restored afterwards. A batch is
    passed to the model as ``input_fn(batch)`` if given, else its first element when it is a list or
    tuple, else the batch itself. (Reference: GadamX ``utils.bn_update``; same idea as
    ``torch.optim.swa_utils.update_bn``.)
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = {m: m.momentum for m in norms}
    modes = {m: m.training for m in model.modules()}
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    try:
        for batch in loader:
            if input_fn is not None:
                inputs = input_fn(batch)
            elif isinstance(batch, list | tuple):
                inputs = batch[0]
            else:
                inputs = batch
            model(inputs)
    finally:
        for m, momentum in momenta.items():
            m.momentum = momentum
        for mod, mode in modes.items():
            mod.training = mode


register(
    OptimInfo(
        name="iterate_averaging",
        verified="hand-computed running mean; behaviour on a noisy quadratic",
        cls=IterateAveraging,
        kind="wrapper",
        paper="Granziol et al., Iterate Averaging in the Quest for Best Test Error (Gadam), arXiv 2020",
        paper_url="https://arxiv.org/abs/2003.01247",
        reference="github.com/diegogranziol/GadamX run_gadam_gap.py (7ce18a8)",
        description="Wrapper: running mean of every gap-th iterate after a switch step (Gadam's IA).",
        test_kwargs={"start": 0, "gap": 1},
    )
)

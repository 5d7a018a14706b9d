"""ActiveLR: per-parameter learning rates adapted once per epoch by the sign of the epoch's gradient.

Paper: Wadi, Fredette & Senecal, "Read the Signs: Towards Invariance to Gradient Descent's
Hyperparameter Initialization", arXiv:2301.10133 (2023).
Reference code: github.com/davoodwadi/ConsciousLR (commit af39393): ``ConsciousLR.py`` (ActiveAdamW),
``RAdamConsciousLR.py``/``ActiveRAdam.py``, ``ActiveBelief.py``, and the experiment scripts
``Scripts/cifar10_ActiveAdam.py``, ``Scripts/Imagenet.py``, ``Scripts/WikiText-103.py``.

Rule, per coordinate ``i`` (``G_e`` = sum of the minibatch gradients of epoch ``e``)::

    every step:            theta_i <- theta_i + gain_i * (A(theta, g)_i - theta_i)   # inner step, scaled
                           G_e     <- G_e + g
    at the end of epoch e >= 2:
        gain_i <- gain_i * lr_low     if G_{e-1,i} * G_{e,i} <= 0     # sign changed: steps too large
        gain_i <- gain_i + lr_high    otherwise                       # same sign: steps too small
    gain starts at 1 (the inner optimizer's own lr); epoch 1 only records G_1.

What the paper (abstract, and the authors' code) specifies: the learning rate is localized (one per
coordinate) and adapted at each epoch from whether the epoch gradient changed sign, decreasing it on a
change and increasing it otherwise; the Active variants of SGD-M, AdamW, RAdam and AdaBelief scale their
update (and AdamW's decoupled decay) by the local gain. The full text of the paper could not be
retrieved here, so the exact form comes from the authors' code: the increase is *additive* and the
decrease *multiplicative* (as in Jacobs' delta-bar-delta), the epoch gradient is the plain sum of the
minibatch gradients, a zero product counts as a sign change, and there are no bounds on the gain.

Defaults: ``lr_high=2.0, lr_low=0.5``, the values every experiment script passes for the Active
optimizers (the classes' own defaults, ``lr_high=0.05, lr_low=0.95``, are never used by the scripts);
``steps_per_epoch`` is the scripts' ``stepSize = len(train_loader)``.

Our choices, as a wrapper over any optimizer: the inner step's displacement is scaled coordinate-wise,
``theta <- theta_old + gain * (theta_new - theta_old)``. For the authors' optimizers this is exactly
their update (their gain multiplies both the adaptive step and the decoupled decay, and both are linear
in the lr). The epoch is counted in wrapper steps (the authors count each parameter's own steps; they
differ only for parameters that have no gradient at some steps); pass ``steps_per_epoch=None`` and call
:meth:`ActiveLR.end_epoch` yourself to use real epoch boundaries. Complex parameters are handled as real
views (each real and imaginary part has its own gain); bf16/fp16 parameters keep fp32 state.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch.optim import Optimizer

from adaptim.registry import OptimInfo, register
from adaptim.wrappers._base import LOW_PRECISION, OptimizerWrapper

__all__ = ["ActiveLR"]


def _working(t: torch.Tensor) -> torch.Tensor:
    """Real view of a complex tensor, fp32 copy of a bf16/fp16 one, else the tensor itself."""
    t = t.detach()
    if t.is_complex():
        t = torch.view_as_real(t)
    return t.float() if t.dtype in LOW_PRECISION else t


class ActiveLR(OptimizerWrapper):
    """ActiveLR (Wadi et al., 2023) around any optimizer: per-coordinate gains adapted per epoch.

    Args:
        optimizer: the inner optimizer (e.g. AdamW, RAdam, SGD with momentum).
        steps_per_epoch: steps between gain updates (the authors' ``stepSize = len(train_loader)``);
            ``None`` to call :meth:`end_epoch` yourself.
        lr_high: added to the gain when the epoch gradient kept its sign (authors' ``lrHigh``).
        lr_low: multiplies the gain when the sign changed (authors' ``lrLow``).

    >>> opt = ActiveLR(adaptim.AdamW(model.parameters(), lr=1e-5), steps_per_epoch=len(loader))  # doctest: +SKIP
    """

    state_prefix = "activelr_"
    _scalar_state = {"epoch_step": "epoch_step", "epochs_done": "epochs_done"}

    def __init__(
        self,
        optimizer: Optimizer,
        steps_per_epoch: int | None = None,
        lr_high: float = 2.0,
        lr_low: float = 0.5,
    ) -> None:
        if steps_per_epoch is not None and (
            isinstance(steps_per_epoch, bool)
            or not isinstance(steps_per_epoch, int)
            or steps_per_epoch < 1
        ):
            raise ValueError(
                f"ActiveLR: invalid steps_per_epoch={steps_per_epoch!r}; accepted values: None or an "
                "integer >= 1"
            )
        if isinstance(lr_high, bool) or not isinstance(lr_high, int | float) or not lr_high >= 0:
            raise ValueError(
                f"ActiveLR: invalid lr_high={lr_high!r}; accepted values: a number >= 0"
            )
        if isinstance(lr_low, bool) or not isinstance(lr_low, int | float) or not 0 < lr_low <= 1:
            raise ValueError(
                f"ActiveLR: invalid lr_low={lr_low!r}; accepted values: a number with 0 < value <= 1"
            )
        super().__init__(optimizer)
        self.steps_per_epoch = steps_per_epoch
        self.lr_high = float(lr_high)
        self.lr_low = float(lr_low)
        self.epoch_step = 0
        self.epochs_done = 0

    def _repr_keys(self) -> tuple[str, ...]:
        return ("steps_per_epoch", "lr_high", "lr_low")

    def _init_param(self, p: torch.Tensor) -> None:
        w = _working(p)
        self.wrapper_state[p].update(
            gain=torch.ones_like(w, memory_format=torch.preserve_format),
            grad_sum=torch.zeros_like(w, memory_format=torch.preserve_format),
            grad_steps=0,
            # every key exists from the first step (DCP loads only the keys a fresh optimizer has)
            prev_grad_sum=torch.zeros_like(w, memory_format=torch.preserve_format),
            grad_epochs=0,  # epochs that summed a gradient of this parameter
        )

    def _complete_entry(self, entry: dict[str, Any]) -> None:
        # saved in v1 (up to commit 7a79caf): ``prev_grad_sum`` appeared after the first epoch with a gradient
        if "grad_epochs" not in entry:
            entry["grad_epochs"] = 1 if "prev_grad_sum" in entry else 0
        if "prev_grad_sum" not in entry and "grad_sum" in entry:
            entry["prev_grad_sum"] = torch.zeros_like(entry["grad_sum"])

    def step(self, closure: Any = None) -> Any:
        """Inner step with the displacement scaled by the gains; accumulate the epoch gradient."""
        params = [p for p in self.params() if p.requires_grad]
        if any(p.grad is not None and p.grad.layout is not torch.strided for p in params):
            raise TypeError("ActiveLR does not support sparse gradients; use dense gradients")
        with torch.no_grad():
            self._ensure_state()
            before = [_working(p).clone() for p in params]
        loss = self._step_inner(closure)
        with torch.no_grad():
            stepped = [i for i, p in enumerate(params) if p.grad is not None]
            if stepped:
                working = [_working(params[i]) for i in stepped]
                olds = [before[i] for i in stepped]
                states = [self.wrapper_state[params[i]] for i in stepped]
                # theta = theta_old + gain (theta_new - theta_old), computed in ``olds``
                torch._foreach_lerp_(olds, working, [s["gain"] for s in states])
                for i, new in zip(stepped, olds, strict=True):
                    p = params[i]
                    (torch.view_as_real(p) if p.is_complex() else p).copy_(new)
                grads = [_working(cast(torch.Tensor, params[i].grad)) for i in stepped]
                torch._foreach_add_([s["grad_sum"] for s in states], grads)
                for s in states:
                    s["grad_steps"] += 1
            self.epoch_step += 1
            if self.steps_per_epoch is not None and self.epoch_step >= self.steps_per_epoch:
                self.end_epoch()
        return loss

    @torch.no_grad()
    def end_epoch(self) -> None:
        """Adapt the gains from the sign of this epoch's summed gradient against the last epoch's."""
        for p in self.params():
            state = self.wrapper_state.get(p)
            if not state or state["grad_steps"] == 0:
                continue
            current, previous = state["grad_sum"], state["prev_grad_sum"]
            if state["grad_epochs"] > 0:
                gain = state["gain"]
                flipped = previous * current <= 0
                state["gain"] = torch.where(flipped, gain * self.lr_low, gain + self.lr_high)
            previous.copy_(current)
            state["grad_epochs"] += 1
            current.zero_()
            state["grad_steps"] = 0
        self.epoch_step = 0
        self.epochs_done += 1


register(
    OptimInfo(
        name="activelr",
        verified="hand-computed epochs; authors' ActiveAdamW equations (2e-15); behaviour",
        cls=ActiveLR,
        kind="wrapper",
        paper="Wadi, Fredette & Senecal, Read the Signs: Towards Invariance to Gradient Descent's "
        "Hyperparameter Initialization, arXiv 2023",
        paper_url="https://arxiv.org/abs/2301.10133",
        reference="github.com/davoodwadi/ConsciousLR ConsciousLR.py, ActiveAdam.py (af39393)",
        description="Wrapper: per-coordinate lr gains, +lr_high if the epoch gradient kept its sign, "
        "*lr_low if it flipped.",
        test_kwargs={"steps_per_epoch": 5},
    )
)

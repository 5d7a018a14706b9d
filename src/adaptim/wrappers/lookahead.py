"""Lookahead: k steps forward, one step back, over any optimizer.

Paper: Zhang, Lucas, Hinton & Ba, "Lookahead Optimizer: k steps forward, 1 step back", NeurIPS 2019,
arXiv:1907.08610 (Algorithm 1).
Reference code: github.com/michaelrzhang/lookahead, ``lookahead_pytorch.py`` (commit c4fd85f),
``Lookahead(optimizer, la_steps=5, la_alpha=0.8, pullback_momentum="none")``. Oracle in the tests:
``pytorch_optimizer.Lookahead`` 4.1.0, which equals the official file for ``none`` and ``reset``.

Rule (slow weights ``phi`` start as a copy of the parameters at the first step)::

    every step:          theta <- A(theta, g)                 # the inner optimizer's step (fast weights)
    after k inner steps: phi   <- phi + alpha (theta - phi)   # = alpha theta + (1 - alpha) phi
                         theta <- phi

Defaults are the authors' code's ``k=5, alpha=0.8`` (the paper's experiments use k in {5, 10} and alpha in
{0.5, 0.8}; many third-party implementations default to alpha=0.5).

Inner-optimizer momentum at each synchronisation (``pullback_momentum``):

* ``"none"`` (default): untouched.
* ``"reset"``: momentum-like state of the inner optimizer is zeroed. The official code only knows torch
  SGD's ``momentum_buffer``; we zero every state tensor whose key is in ``momentum_keys``, by default
  ``("momentum_buffer", "exp_avg")``: torch SGD's buffer and the first moment of Adam-like optimizers
  (torch and adaptim Adam/AdamW/RAdam/AdaBelief/... all call it ``exp_avg``). Second moments (``exp_avg_sq``)
  are left alone: they are scale estimates, not a direction. Note that an Adam step counter is not reset,
  so the bias correction of a zeroed ``exp_avg`` is the late-training one (~1): the first steps after a
  reset are smaller than Adam's very first steps. Pass ``momentum_keys`` to choose other keys.
* ``"pullback"``: ``m <- alpha m + (1 - alpha) m_slow; m_slow <- m`` with ``m_slow`` starting at zero: the
  momentum is interpolated like the weights. The official code has an aliasing bug here: after the
  first synchronisation its ``cached_mom`` *is* the live momentum tensor (it stores a reference, not a
  copy), so later synchronisations compute ``alpha m + (1 - alpha) alpha m``, not the intended
  interpolation. We store a copy (as ``pytorch_optimizer.Lookahead`` does, which we match).

Differences from the official file, all deliberate: slow weights and the step counter are saved by
``state_dict()`` and restored by ``load_state_dict()`` (the official ``state_dict`` only returns the inner
optimizer's); ``reset``/``pullback`` work for any state key listed in ``momentum_keys``; slow weights of
bf16/fp16 parameters are kept in fp32; slow weights are copied at the first step, not when the wrapper
is built (as ``torch.optim`` creates its state; the same unless the parameters change in between, e.g.
a checkpoint loaded into the model after building the optimizer), parameter groups added later get
theirs at their first step.

The wrapper is an ``Optimizer``: its ``param_groups`` *are* the inner optimizer's (so lr schedulers,
``zero_grad``, ``add_param_group`` work through it), ``step(closure)`` returns the closure's loss, and
:meth:`Lookahead.slow_weights` is a context manager that evaluates the model on the slow weights.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch.optim import Optimizer

from adaptim.core.state_precision import (
    dequantize_state_,
    is_quantized,
    quantize_state_,
    zero_state_,
)
from adaptim.registry import OptimInfo, register
from adaptim.wrappers._base import OptimizerWrapper, _shadow

__all__ = ["Lookahead"]


class Lookahead(OptimizerWrapper):
    """Lookahead (Zhang et al., 2019) around any ``torch.optim`` or adaptim optimizer.

    Args:
        optimizer: the inner ("fast") optimizer, already built over the parameters.
        k: inner steps between synchronisations (official ``la_steps``).
        alpha: slow-weight step size (official ``la_alpha``); 1 recovers the inner optimizer.
        pullback_momentum: ``"none"``, ``"reset"`` or ``"pullback"``; see the module docstring.
        momentum_keys: inner-state keys treated as momentum by ``reset`` and ``pullback``.

    >>> opt = Lookahead(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))  # doctest: +SKIP
    >>> with opt.slow_weights():                                                   # doctest: +SKIP
    ...     evaluate(model)
    """

    state_prefix = "lookahead_"
    _scalar_state = {"step": "lookahead_step"}
    PULLBACK_MODES = ("none", "reset", "pullback")

    def __init__(
        self,
        optimizer: Optimizer,
        k: int = 5,
        alpha: float = 0.8,
        pullback_momentum: str = "none",
        momentum_keys: tuple[str, ...] = ("momentum_buffer", "exp_avg"),
    ) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"Lookahead: invalid k={k!r}; accepted values: an integer >= 1")
        if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0.0 <= alpha <= 1.0:
            raise ValueError(
                f"Lookahead: invalid alpha={alpha!r}; accepted values: a number with 0 <= value <= 1"
            )
        if pullback_momentum not in self.PULLBACK_MODES:
            raise ValueError(
                f"Lookahead: invalid pullback_momentum={pullback_momentum!r}; accepted values: "
                + ", ".join(repr(m) for m in self.PULLBACK_MODES)
            )
        super().__init__(optimizer)
        self.k = k
        self.alpha = float(alpha)
        self.pullback_momentum = pullback_momentum
        self.momentum_keys = tuple(momentum_keys)
        self.lookahead_step = 0  # inner steps since the last synchronisation

    def _repr_keys(self) -> tuple[str, ...]:
        return ("k", "alpha", "pullback_momentum")

    def _init_param(self, p: torch.Tensor) -> None:
        self.wrapper_state[p]["slow_param"] = _shadow(p)

    def _after_step(self) -> None:
        if self.pullback_momentum == "pullback":
            self._ensure_slow_momentum()
        self.lookahead_step += 1
        if self.lookahead_step >= self.k:
            self.lookahead_step = 0
            self.synchronize()

    def _ensure_slow_momentum(self) -> None:
        """``m_slow = 0`` for each inner momentum as soon as it exists (not at the first
        synchronisation: every state key exists after the first step, as DCP's loading expects)."""
        inner = self.optimizer.state
        for p in self.params():
            entry = inner.get(p)
            if not entry:
                continue
            own = self.wrapper_state[p]
            for key in self.momentum_keys:
                mom = entry.get(key)
                if isinstance(mom, torch.Tensor) and f"slow_{key}" not in own:
                    # float32 for an 8-bit (uint8 codes) momentum: the slow copy is not quantized
                    dtype = torch.float32 if mom.dtype == torch.uint8 else mom.dtype
                    own[f"slow_{key}"] = torch.zeros_like(mom, dtype=dtype)

    @torch.no_grad()
    def synchronize(self) -> None:
        """The slow step: ``phi += alpha (theta - phi); theta = phi`` (and the momentum handling)."""
        self._ensure_state()
        params = list(self.params())
        slow = [self.wrapper_state[p]["slow_param"] for p in params]
        fast = [p if p.dtype == s.dtype else p.float() for p, s in zip(params, slow, strict=True)]
        if params:
            torch._foreach_lerp_(slow, fast, self.alpha)
            torch._foreach_copy_(params, slow)
        if self.pullback_momentum == "none":
            return
        # 8-bit states of the inner optimizer (state_bits=8): codes and a block absmax, handled
        # through their float32 values; the slow copy of the momentum stays float32
        signed_of = getattr(type(self.optimizer), "quantized_states", {})
        for p in params:
            inner = self.optimizer.state.get(p, {})
            for key in self.momentum_keys:
                mom = inner.get(key)
                if not isinstance(mom, torch.Tensor):
                    continue
                quantized = is_quantized(inner, key) and key in signed_of
                if self.pullback_momentum == "reset":
                    if quantized:
                        zero_state_(inner, key, signed_of[key])
                    else:
                        mom.zero_()
                    continue
                # pullback: interpolate toward the momentum saved at the last synchronisation
                if quantized:
                    dequantize_state_(inner, key, signed_of[key])
                    mom = inner[key]
                state = self.wrapper_state[p]
                slow_key = f"slow_{key}"
                if slow_key not in state:
                    state[slow_key] = torch.zeros_like(mom)
                mom.lerp_(state[slow_key], 1.0 - self.alpha)
                state[slow_key].copy_(mom)  # a copy: the official code stores a reference here
                if quantized:
                    quantize_state_(inner, key, signed_of[key])

    @contextlib.contextmanager
    def slow_weights(self) -> Iterator[None]:
        """Evaluate on the slow weights: swap them into the parameters, restore the fast ones on exit."""
        with self._swapped_in("slow_param"):
            yield


register(
    OptimInfo(
        name="lookahead",
        verified="pytorch-optimizer==4.1.0 Lookahead none/reset (exact); hand-computed pullback",
        cls=Lookahead,
        kind="wrapper",
        paper="Zhang, Lucas, Hinton & Ba, Lookahead Optimizer: k steps forward, 1 step back, NeurIPS 2019",
        paper_url="https://arxiv.org/abs/1907.08610",
        reference="github.com/michaelrzhang/lookahead lookahead_pytorch.py (c4fd85f)",
        description="Wrapper: every k inner steps, pull slow weights toward the fast ones and restart there.",
        test_kwargs={"k": 5, "alpha": 0.8},
    )
)

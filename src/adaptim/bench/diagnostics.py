"""Diagnostics of the local geometry an optimizer's trajectory visits.

``R_med`` (Jiang, Malik & Li, "How Does Adaptive Optimization Impact Local Neural Network Geometry?",
NeurIPS 2023, arXiv:2211.02254; no reference code was published with the paper). At an iterate
``w_t`` with loss Hessian ``H = d^2 L / dw^2`` (over the chosen parameters ``w``),

    R_med(t) = max_i |H_ii| / median_i |H_ii|,

the ratio of the largest to the median absolute diagonal entry of the Hessian. It is the paper's
stand-in for a condition number (the largest curvature over a typical one; the median rather than
the minimum because most diagonal entries of a network's Hessian are near zero), and the paper's
finding is that Adam's iterates sit where it is small and SGD's where it is comparatively large. The
paper computes it per layer (the Hessian's diagonal over one weight matrix): pass that layer's
weights as ``params``. The paper's body was not available to us while writing this (only its
abstract is in ``shared/seeds/001``): the formula above is how we read Sec. 3 of the paper and should
be checked against it; :func:`r_med_of_diagonal` is the one place to change if it differs.

The Hessian diagonal is exact (one Hessian-vector product per coordinate, batched, for networks of a
few thousand parameters) or Hutchinson's estimate ``E[z * Hz]`` over Rademacher vectors ``z`` (for
larger ones; noisy, so its median is biased for small ``samples``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["hessian_diagonal", "r_med", "r_med_of_diagonal"]

LossFn = Callable[[nn.Module, Any], torch.Tensor]
_METHODS = ("exact", "hutchinson")


def _params(model: nn.Module, params: Iterable[torch.Tensor] | None) -> list[torch.Tensor]:
    chosen = [p for p in model.parameters() if p.requires_grad] if params is None else list(params)
    if not chosen:
        raise ValueError(
            "params: no parameters to differentiate (none given or none requires grad)"
        )
    for p in chosen:
        if not isinstance(p, torch.Tensor) or not p.requires_grad:
            raise TypeError("params: every entry must be a tensor with requires_grad=True")
    return chosen


def _hvp_rows(
    flat_grad: torch.Tensor, params: list[torch.Tensor], vectors: torch.Tensor
) -> torch.Tensor:
    """``vectors @ H`` for a batch of row vectors (H is symmetric, so each row is H v)."""
    rows = torch.autograd.grad(
        flat_grad,
        params,
        grad_outputs=vectors,
        retain_graph=True,
        allow_unused=True,
        is_grads_batched=True,
    )
    return torch.cat(
        [
            (torch.zeros(len(vectors), p.numel(), dtype=vectors.dtype) if r is None else r)
            .reshape(len(vectors), -1)
            .to(vectors.dtype)
            for r, p in zip(rows, params, strict=True)
        ],
        dim=1,
    )


def hessian_diagonal(
    model: nn.Module,
    loss_fn: LossFn,
    batch: Any,
    *,
    params: Iterable[torch.Tensor] | None = None,
    method: str = "exact",
    samples: int = 64,
    generator: torch.Generator | None = None,
    chunk: int = 256,
) -> torch.Tensor:
    """The diagonal of the Hessian of ``loss_fn(model, batch)`` over ``params``, flattened in order.

    Args:
        model: the network, at the iterate to measure (its parameters and ``.grad`` are not changed).
        loss_fn: ``loss_fn(model, batch)`` returns the scalar loss.
        batch: passed to ``loss_fn`` as it is.
        params: the parameters whose Hessian block is measured (default: all that require grad).
        method: ``"exact"`` (one Hessian-vector product per coordinate) or ``"hutchinson"``.
        samples: Rademacher vectors for ``"hutchinson"``.
        generator: the random source of ``"hutchinson"``'s vectors.
        chunk: Hessian-vector products per batched backward pass.
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    if not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be an int >= 1, got {samples!r}")
    if not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be an int >= 1, got {chunk!r}")
    chosen = _params(model, params)
    loss = loss_fn(model, batch)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise ValueError("loss_fn must return a scalar tensor")
    grads = torch.autograd.grad(loss, chosen, create_graph=True, allow_unused=True)
    flat_grad = torch.cat(
        [
            torch.zeros(p.numel(), dtype=p.dtype) if g is None else g.reshape(-1)
            for g, p in zip(grads, chosen, strict=True)
        ]
    )
    n, dtype = flat_grad.numel(), flat_grad.dtype
    if not flat_grad.requires_grad:  # the loss is linear in params: H = 0
        return torch.zeros(n, dtype=dtype)
    diag = torch.zeros(n, dtype=dtype)
    if method == "exact":
        for start in range(0, n, chunk):
            idx = torch.arange(start, min(start + chunk, n))
            units = torch.zeros(len(idx), n, dtype=dtype)
            units[torch.arange(len(idx)), idx] = 1.0
            diag[idx] = _hvp_rows(flat_grad, chosen, units)[torch.arange(len(idx)), idx]
        return diag.detach()
    for start in range(0, samples, chunk):
        k = min(chunk, samples - start)
        signs = torch.randint(0, 2, (k, n), generator=generator).to(dtype) * 2 - 1
        diag += (signs * _hvp_rows(flat_grad, chosen, signs)).sum(0)
    return (diag / samples).detach()


def r_med_of_diagonal(diagonal: torch.Tensor | Sequence[torch.Tensor]) -> float:
    """``max_i |h_i| / median_i |h_i|`` of a Hessian diagonal (one tensor, or several concatenated).

    The median of an even count is the mean of the two middle values. A zero median gives ``inf``
    (``nan`` if the whole diagonal is zero).
    """
    if isinstance(diagonal, torch.Tensor):
        flat = diagonal.reshape(-1)
    else:
        parts = list(diagonal)
        if not parts or not all(isinstance(d, torch.Tensor) for d in parts):
            raise TypeError("diagonal must be a tensor or a non-empty sequence of tensors")
        flat = torch.cat([d.reshape(-1) for d in parts])
    if flat.numel() == 0:
        raise ValueError("diagonal is empty")
    if not torch.isfinite(flat).all():
        raise ValueError("diagonal has non-finite entries")
    size = flat.abs().to(torch.float64).sort().values
    n = size.numel()
    median = float(size[n // 2]) if n % 2 else 0.5 * float(size[n // 2 - 1] + size[n // 2])
    largest = float(size[-1])
    if median == 0.0:
        return math.nan if largest == 0.0 else math.inf
    return largest / median


def r_med(
    model: nn.Module,
    loss_fn: LossFn,
    batch: Any,
    *,
    params: Iterable[torch.Tensor] | None = None,
    method: str = "exact",
    samples: int = 64,
    generator: torch.Generator | None = None,
) -> float:
    """``R_med`` of Jiang, Malik & Li at the model's current parameters (see the module docstring).

    ``params`` restricts it to one block, e.g. ``[model.fc1.weight]`` for the paper's per-layer
    value; the other arguments are those of :func:`hessian_diagonal`.
    """
    diag = hessian_diagonal(
        model, loss_fn, batch, params=params, method=method, samples=samples, generator=generator
    )
    return r_med_of_diagonal(diag)

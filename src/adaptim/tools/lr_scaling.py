"""Learning-rate scaling with the batch size: linear for SGD, square root for adaptive methods.

Paper: Granziol, Zohren & Roberts, "Learning Rates as a Function of Batch Size: A Random Matrix Theory
Approach to Neural Network Training", JMLR 23 (2022), arXiv:2006.09092.

Statement (abstract, verified): from the extremal eigenvalues of the batch Hessian (spiked,
field-dependent random matrix theory) the paper derives the *maximal* learning rate as a function of the
batch size B: it scales **linearly** in B for stochastic gradient descent (a rule derived before under
more restrictive conditions, generalised there) and as the **square root** of B for adaptive optimisers
such as Adam (new in that paper)::

    sgd:       lr(B) = lr(B0) * B / B0
    adaptive:  lr(B) = lr(B0) * sqrt(B / B0)

The derivation holds while the batch noise dominates the batch Hessian's outliers, i.e. for batches
small compared with the dataset; for very large batches the maximal lr saturates (the batch Hessian
approaches the empirical one), so do not extrapolate far beyond the batch sizes you validated.

See also :mod:`adaptim.tools.momentum_scaling` (momentum as a function of the learning rate) and
:mod:`adaptim.tools.lanczos` (the same paper's on-the-fly lr/momentum learner from Lanczos estimates of
the Hessian's spectrum).
"""

from __future__ import annotations

import math

__all__ = ["FAMILIES", "scale_lr"]

#: accepted ``optimizer_family`` names and the rule each one uses
FAMILIES = {
    "sgd": "linear",
    "momentum": "linear",
    "linear": "linear",
    "adaptive": "sqrt",
    "adam": "sqrt",
    "sqrt": "sqrt",
}


def scale_lr(lr: float, batch_size: int, base_batch_size: int, optimizer_family: str) -> float:
    """The learning rate for ``batch_size`` given one tuned at ``base_batch_size``.

    ``optimizer_family``: ``"sgd"`` (also ``"momentum"``, ``"linear"``) scales linearly;
    ``"adaptive"`` (also ``"adam"``, ``"sqrt"``) by the square root of the ratio.

    >>> scale_lr(0.1, 1024, 256, "sgd")
    0.4
    >>> scale_lr(1e-3, 1024, 256, "adam")
    0.002
    """
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not lr >= 0 or math.isinf(lr):
        raise ValueError(f"scale_lr: invalid lr={lr!r}; accepted values: a finite number >= 0")
    for name, value in (("batch_size", batch_size), ("base_batch_size", base_batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(
                f"scale_lr: invalid {name}={value!r}; accepted values: an integer >= 1"
            )
    rule = FAMILIES.get(optimizer_family.lower()) if isinstance(optimizer_family, str) else None
    if rule is None:
        raise ValueError(
            f"scale_lr: invalid optimizer_family={optimizer_family!r}; accepted values: one of "
            + ", ".join(repr(k) for k in FAMILIES)
        )
    ratio = batch_size / base_batch_size
    return lr * ratio if rule == "linear" else lr * math.sqrt(ratio)

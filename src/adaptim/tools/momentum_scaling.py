"""Momentum scaled with the learning rate: ``1 - beta`` proportional to ``lr^(2/3)``.

Paper: Cowsik, Can & Glorioso, "Flatter, faster: scaling momentum for optimal speedup of SGD",
arXiv:2210.16400 (2022). No reference code is published with the paper.

Statement (abstract, verified): for SGD with label noise and heavy-ball momentum on an overparametrised
model (a degenerate manifold of global minimisers), training shows two timescales, the relaxation onto
the manifold and the noise-driven drift along it towards flatter minimisers. The drift is fastest when
the two timescales meet, which happens when ``gamma = 1 - beta`` scales as the learning rate to the
power 2/3::

    1 - beta = C * lr^(2/3)

with ``lr`` and ``beta`` as in ``torch.optim.SGD(lr=lr, momentum=beta)`` (``buf = beta buf + g``,
``p -= lr buf``; the paper writes the same heavy ball). The abstract gives the exponent, not the constant
``C``, and the body of the paper could not be retrieved here, so :func:`scale_momentum` transfers a
momentum tuned at one learning rate to another (``C`` cancels), and :func:`momentum_for_lr` takes ``C``
from the caller. The derivation is asymptotic (small ``lr``, ``1 - beta`` small): use it for changes of
the learning rate, not to pick a momentum from scratch.
"""

from __future__ import annotations

import math

__all__ = ["MOMENTUM_EXPONENT", "momentum_for_lr", "scale_momentum"]

#: the exponent of the rule: 1 - beta ~ lr ** MOMENTUM_EXPONENT
MOMENTUM_EXPONENT = 2.0 / 3.0


def _check_positive(fn: str, name: str, value: object) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not value > 0
        or math.isinf(value)
    ):
        raise ValueError(f"{fn}: invalid {name}={value!r}; accepted values: a finite number > 0")
    return float(value)


def _checked_momentum(fn: str, one_minus_beta: float, how: str) -> float:
    if not 0.0 < one_minus_beta <= 1.0:
        raise ValueError(
            f"{fn}: {how} gives 1 - momentum = {one_minus_beta:.6g}, outside (0, 1]; the 2/3 rule "
            "is asymptotic (small lr, momentum near 1): use a smaller lr or coefficient"
        )
    return 1.0 - one_minus_beta


def scale_momentum(lr: float, base_lr: float, base_momentum: float) -> float:
    """The momentum to use at ``lr`` given ``base_momentum`` tuned at ``base_lr``.

    ``1 - beta = (1 - base_momentum) * (lr / base_lr) ** (2/3)``: dividing the learning rate by 8
    divides ``1 - beta`` by 4. Raises ``ValueError`` when the result leaves ``[0, 1)``.

    >>> round(scale_momentum(0.1 / 8, 0.1, 0.9), 6)
    0.975
    """
    fn = "scale_momentum"
    lr = _check_positive(fn, "lr", lr)
    base_lr = _check_positive(fn, "base_lr", base_lr)
    if (
        isinstance(base_momentum, bool)
        or not isinstance(base_momentum, int | float)
        or not 0.0 <= base_momentum < 1.0
    ):
        raise ValueError(
            f"{fn}: invalid base_momentum={base_momentum!r}; accepted values: a number in [0, 1)"
        )
    gamma = (1.0 - base_momentum) * (lr / base_lr) ** MOMENTUM_EXPONENT
    return _checked_momentum(fn, gamma, f"lr={lr:g} from base_lr={base_lr:g}")


def momentum_for_lr(lr: float, coefficient: float) -> float:
    """``beta = 1 - coefficient * lr ** (2/3)``; the paper's abstract gives no value for the coefficient.

    Raises ``ValueError`` when the result leaves ``[0, 1)``.

    >>> round(momentum_for_lr(0.001, 1.0), 6)
    0.99
    """
    fn = "momentum_for_lr"
    lr = _check_positive(fn, "lr", lr)
    coefficient = _check_positive(fn, "coefficient", coefficient)
    gamma = coefficient * lr**MOMENTUM_EXPONENT
    return _checked_momentum(fn, gamma, f"coefficient={coefficient:g} at lr={lr:g}")

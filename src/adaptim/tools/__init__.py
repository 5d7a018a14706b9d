"""Tools around training (GradInit, adaptive batch sizes, lr and momentum scaling rules, Lanczos
estimates of the Hessian's spectrum and the lr/momentum learner built on them)."""

from adaptim.tools.lanczos import (
    LanczosLearner,
    hessian_vector_product,
    lanczos,
    stochastic_lanczos_quadrature,
)
from adaptim.tools.lr_scaling import scale_lr
from adaptim.tools.momentum_scaling import momentum_for_lr, scale_momentum

__all__ = [
    "LanczosLearner",
    "hessian_vector_product",
    "lanczos",
    "momentum_for_lr",
    "scale_lr",
    "scale_momentum",
    "stochastic_lanczos_quadrature",
]

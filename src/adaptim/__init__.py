"""adaptim: adaptive optimizers for PyTorch, checked step for step against their authors' code.

Every optimizer is a drop-in for ``torch.optim.Adam``; ``adaptim.create(name, params_or_model, **kw)``
builds one by its registry name, ``adaptim.available("adam*")`` lists optimizer names (and
``available(kind="wrapper" | "tool" | "all")`` the others), and ``adaptim.param_groups(model, ...)`` /
``adaptim.layerwise_lr_groups(model, ...)`` build the usual transformer param groups.
"""

from __future__ import annotations

import importlib
import pkgutil

# Every public class by name, so that type checkers and IDEs see them (the package ships py.typed).
# tests/test_typing.py checks that this list and __all__ match the registry.
from adaptim.core.base import AdaptimOptimizer
from adaptim.optimizers.acprop import ACProp
from adaptim.optimizers.adabelief import AdaBelief
from adaptim.optimizers.adafactor import Adafactor
from adaptim.optimizers.adai import Adai, AdaiV2
from adaptim.optimizers.adam import Adam, AdamW
from adaptim.optimizers.adamax import Adamax
from adaptim.optimizers.adamp import SGDP, AdamP
from adaptim.optimizers.adan import Adan
from adaptim.optimizers.adaptive_hb import AdaptiveHeavyBallAdam, AdaptiveHeavyBallSGD
from adaptim.optimizers.adarem import AdaRem
from adaptim.optimizers.diffgrad import DiffGrad
from adaptim.optimizers.hfac import HFac
from adaptim.optimizers.koala import MomentumKOALA, VanillaKOALA
from adaptim.optimizers.mada import MADA, AVGrad
from adaptim.optimizers.mars import MARS
from adaptim.optimizers.ncg_momentum import NCGMomentumSGD
from adaptim.optimizers.padam import Padam
from adaptim.optimizers.pnm import PNM, AdaPNM
from adaptim.optimizers.radam import RAdam
from adaptim.optimizers.sgdhess import SGDHess
from adaptim.optimizers.signgrad_friction import SigSignGrad, TanhSignGrad
from adaptim.optimizers.signsgd import GenSignSGD
from adaptim.param_groups import layerwise_lr_groups, param_groups
from adaptim.registry import OptimInfo, available, create, get, register, registered
from adaptim.tools.adaptive_batch import AdAdaGrad, AdAdaGradNorm
from adaptim.wrappers.activelr import ActiveLR
from adaptim.wrappers.averaging import IterateAveraging
from adaptim.wrappers.lookahead import Lookahead

# The registry fills itself as modules are imported: import every module, so that one registered
# without an import above is still in the registry (and fails the test that compares it with __all__).
for _pkg in ("optimizers", "wrappers", "tools"):
    _mod = importlib.import_module(f"adaptim.{_pkg}")
    for _sub in pkgutil.iter_modules(_mod.__path__):
        if not _sub.name.startswith("_"):
            importlib.import_module(f"adaptim.{_pkg}.{_sub.name}")

__version__ = "0.1.0"
__all__ = [
    "MADA",
    "MARS",
    "PNM",
    "SGDP",
    "ACProp",
    "AVGrad",
    "ActiveLR",
    "AdAdaGrad",
    "AdAdaGradNorm",
    "AdaBelief",
    "AdaPNM",
    "AdaRem",
    "Adafactor",
    "Adai",
    "AdaiV2",
    "Adam",
    "AdamP",
    "AdamW",
    "Adamax",
    "Adan",
    "AdaptimOptimizer",
    "AdaptiveHeavyBallAdam",
    "AdaptiveHeavyBallSGD",
    "DiffGrad",
    "GenSignSGD",
    "HFac",
    "IterateAveraging",
    "Lookahead",
    "MomentumKOALA",
    "NCGMomentumSGD",
    "OptimInfo",
    "Padam",
    "RAdam",
    "SGDHess",
    "SigSignGrad",
    "TanhSignGrad",
    "VanillaKOALA",
    "available",
    "create",
    "get",
    "layerwise_lr_groups",
    "param_groups",
    "register",
    "registered",
]

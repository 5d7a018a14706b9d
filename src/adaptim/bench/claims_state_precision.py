"""The claim of 8-bit optimizer states: with ``state_bits=8`` an optimizer trains as well as with
32-bit states.

Dettmers, Lewis, Shleifer & Zettlemoyer, "8-bit Optimizers via Block-wise Quantization", ICLR 2022,
arXiv:2110.02861; reference implementations github.com/bitsandbytes-foundation/bitsandbytes and
github.com/pytorch/ao (``torchao/optim``). The states' storage is :mod:`adaptim.core.state_precision`.

Conventions as in :mod:`adaptim.bench.claims` (every draw from a seeded ``torch.Generator``, a
criterion fixed in the code before the result was looked at), with one exception: the models are
**float32**, not float64, because 8-bit states are only used for float32 (and bf16/fp16) parameters;
float64 parameters keep float64 states. The two tasks:

* an MLP on a subset of Fashion-MNIST (the bench's ``fmnist-mlp`` data), or, where the data is not
  installed, a deterministic synthetic 10-class set of the same shape (every result says which, in
  ``fmnist_is_real`` and in its detail);
* the tiny Pre-LN character transformer of :mod:`adaptim.bench.claims_training_dynamics` on its corpus.

Both have tensors of at least 4,096 elements (the MLP's first layer; the transformer's MLP matrices,
width 32 x 4 x 32 = 4,096), so 8-bit states are really used; the number of quantized states is part
of the result and the claim fails if it is zero.
"""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from adaptim.bench.claims_common import Claim, ClaimResult, _cls, _gen, _named, _stats
from adaptim.bench.claims_training_dynamics import (
    _LM_CONTEXT,
    _LM_HEADS,
    _LM_LAYERS,
    _LM_WIDTH,
    _corpus_note,
    _encoded,
    _lm,
    _lm_loss,
    _windows,
)
from adaptim.core.state_precision import is_quantized

__all__ = ["CLAIMS"]

F32 = torch.float32

_DETTMERS = (
    "8-bit Optimizers via Block-wise Quantization (Dettmers, Lewis, Shleifer, Zettlemoyer, ICLR 2022, "
    "arXiv:2110.02861)"
)

# -- fixed before the first run ----------------------------------------------------------------------

# the optimizers (registry names) and their learning rates on each task; everything else is default
_OPTIMIZERS = ("adam", "adabelief", "adan")
_FMNIST_LR = {"adam": 1e-3, "adabelief": 1e-3, "adan": 3e-3}
_LM_LR = {"adam": 3e-3, "adabelief": 3e-3, "adan": 1e-2}

# Fashion-MNIST subset: 2,000 training images, 3 epochs of batches of 64, 784-64-10 ReLU MLP (first
# layer 50,176 weights); metric: the error rate on 2,000 test images
_FM_TRAIN, _FM_TEST, _FM_HIDDEN, _FM_BATCH, _FM_EPOCHS = 2000, 2000, 64, 64, 3

# char LM: Pre-LN tiny transformer, 200 steps of 16 windows; metric: loss on 128 validation windows
_LM_STEPS, _LM_BATCH, _LM_VALID = 200, 16, 128

# Floors under the seed spread, so that a tiny spread (or one seed) does not demand bit-identical
# results. Dettmers et al. call 8-bit "matching" where it lands within a few tenths of a point of
# accuracy and about 1% of perplexity of the 32-bit run (their Tables 1-2); at toy scale we allow
# half a point of test error (10 of the 2,000 test images) and 0.01 nats/char (1% of perplexity).
_FLOOR = {"fmnist": 0.005, "charlm": 0.01}


def _claim(name: str) -> Claim:
    return _named(CLAIMS, name)


# -- the data ---------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _fmnist_subset() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, bool]:
    """(train x, train y, test x, test y, is_real): the first ``_FM_TRAIN`` training and ``_FM_TEST``
    test images of Fashion-MNIST, standardized like the bench's task, flattened, float32. Where the
    data is missing: a synthetic set from seed 0, ten Gaussian classes around random centres in 784
    dimensions, hard enough that neither side reaches 0 error."""
    from adaptim.bench.tasks import DataMissing, _fmnist_dir, load_fashion_mnist

    try:
        data = load_fashion_mnist(str(_fmnist_dir()))
    except (DataMissing, OSError, ValueError):
        gen = torch.Generator().manual_seed(0)
        centres = 0.15 * torch.randn(10, 784, generator=gen)
        n = _FM_TRAIN + _FM_TEST
        labels = torch.randint(0, 10, (n,), generator=gen)
        images = centres[labels] + torch.randn(n, 784, generator=gen)
        return (
            images[:_FM_TRAIN],
            labels[:_FM_TRAIN],
            images[_FM_TRAIN:],
            labels[_FM_TRAIN:],
            False,
        )

    def prep(images: torch.Tensor) -> torch.Tensor:
        return ((images.to(F32) / 255.0 - 0.2860) / 0.3530).reshape(len(images), -1)

    return (
        prep(data["train_x"][:_FM_TRAIN]),
        data["train_y"][:_FM_TRAIN],
        prep(data["test_x"][:_FM_TEST]),
        data["test_y"][:_FM_TEST],
        True,
    )


def _fmnist_note() -> tuple[dict[str, float], str]:
    is_real = _fmnist_subset()[4]
    note = (
        f"Fashion-MNIST, first {_FM_TRAIN} train / {_FM_TEST} test images"
        if is_real
        else "synthetic 10-class stand-in (Fashion-MNIST not installed)"
    )
    return {"fmnist_is_real": float(is_real)}, note


# -- one training run -------------------------------------------------------------------------------


def _optimizer(
    name: str, params: list[nn.Parameter], lr: float, bits: int
) -> torch.optim.Optimizer:
    return _cls(name)(params, lr=lr, state_bits=bits)


def _quantized_count(opt: torch.optim.Optimizer) -> int:
    return sum(
        is_quantized(state, key) for state in opt.state.values() for key in list(state.keys())
    )


@functools.lru_cache(maxsize=64)
def _fmnist_run(seed: int, name: str, bits: int) -> tuple[float, int]:
    """Train the MLP; (test error rate, inf if training diverged; number of quantized states)."""
    train_x, train_y, test_x, test_y, _ = _fmnist_subset()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(784, _FM_HIDDEN), nn.ReLU(), nn.Linear(_FM_HIDDEN, 10))
    opt = _optimizer(name, list(model.parameters()), _FMNIST_LR[name], bits)
    gen = _gen(seed, 81)
    steps_per_epoch = len(train_y) // _FM_BATCH
    for _ in range(_FM_EPOCHS):
        order = torch.randperm(len(train_y), generator=gen)
        for i in range(steps_per_epoch):
            idx = order[i * _FM_BATCH : (i + 1) * _FM_BATCH]
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(train_x[idx]), train_y[idx])
            if not torch.isfinite(loss):
                return math.inf, _quantized_count(opt)
            loss.backward()
            opt.step()
    with torch.no_grad():
        logits = model(test_x)
    if not torch.isfinite(logits).all():
        return math.inf, _quantized_count(opt)
    return float((logits.argmax(1) != test_y).to(F32).mean()), _quantized_count(opt)


@functools.lru_cache(maxsize=64)
def _lm_run(seed: int, name: str, bits: int) -> tuple[float, int]:
    """Train the Pre-LN tiny LM in float32; (validation loss in nats/char, inf if it diverged; number
    of quantized states)."""
    train, valid, vocab = _encoded()
    length = _LM_CONTEXT + 1
    batches = _windows(train, _LM_STEPS * _LM_BATCH, length, _gen(seed, 82))
    held_out = _windows(valid, _LM_VALID, length, _gen(seed, 83))
    model = _lm(seed, vocab, post_ln=False).to(F32)
    opt = _optimizer(name, list(model.parameters()), _LM_LR[name], bits)
    for t in range(_LM_STEPS):
        opt.zero_grad(set_to_none=True)
        loss = _lm_loss(model, batches[t * _LM_BATCH : (t + 1) * _LM_BATCH])
        if not torch.isfinite(loss):
            return math.inf, _quantized_count(opt)
        loss.backward()
        opt.step()
    with torch.no_grad():
        final = float(_lm_loss(model, held_out))
    return (final if math.isfinite(final) else math.inf), _quantized_count(opt)


# the two tasks (a test swaps a run function to check that the verdict can fail)
_TASKS: dict[str, Callable[[int, str, int], tuple[float, int]]] = {
    "fmnist": _fmnist_run,
    "charlm": _lm_run,
}


# -- the verdict ------------------------------------------------------------------------------------


def _matches(
    eight: list[float], thirty_two: list[float], floor: float
) -> tuple[bool, float, float]:
    """(holds, |mean 8-bit - mean 32-bit|, allowed): the 8-bit mean lies within the 32-bit seeds'
    spread (max - min), or within ``floor`` when the spread is smaller; any diverged run fails."""
    if not all(math.isfinite(v) for v in eight + thirty_two):
        return False, math.inf, floor
    gap = abs(statistics.fmean(eight) - statistics.fmean(thirty_two))
    allowed = max(max(thirty_two) - min(thirty_two), floor)
    return gap <= allowed, gap, allowed


def _run(seeds: int) -> ClaimResult:
    c = _claim("8bit-states-match-32bit")
    nums: dict[str, float] = {}
    verdicts: list[str] = []
    ok = True
    for task, run in _TASKS.items():
        for name in _OPTIMIZERS:
            values: dict[int, list[float]] = {32: [], 8: []}
            quantized = 0
            for s in range(seeds):
                for bits in (32, 8):
                    metric, count = run(s, name, bits)
                    values[bits].append(metric)
                    if bits == 8:
                        quantized = min(quantized, count) if s else count
            holds, gap, allowed = _matches(values[8], values[32], _FLOOR[task])
            holds = holds and quantized > 0
            ok = ok and holds
            nums.update(_stats(f"{task}_{name}_32bit", values[32]))
            nums.update(_stats(f"{task}_{name}_8bit", values[8]))
            nums[f"{task}_{name}_gap"] = gap
            nums[f"{task}_{name}_allowed"] = allowed
            nums[f"{task}_{name}_quantized_states"] = float(quantized)
            verdicts.append(
                f"{task} {name} {statistics.fmean(values[32]):.4f} vs "
                f"{statistics.fmean(values[8]):.4f} (gap {gap:.4f}, allowed {allowed:.4f}, "
                f"{quantized} 8-bit states){'' if holds else ' FAILS'}"
            )
    fm_nums, fm_note = _fmnist_note()
    lm_nums, lm_note = _corpus_note()
    nums.update(fm_nums)
    nums.update(lm_nums)
    detail = (
        "mean final metric, 32-bit vs 8-bit states (fmnist: test error rate, "
        f"{fm_note}; charlm: validation nats/char, {lm_note}): "
        + "; ".join(verdicts)
        + ". Holds if "
        "for every optimizer and task |mean 8-bit - mean 32-bit| <= max(32-bit seed spread, floor "
        f"{_FLOOR['fmnist']} error / {_FLOOR['charlm']} nats) and some states really were 8-bit"
    )
    return c.result(ok, nums, detail)


CLAIMS: list[Claim] = [
    Claim(
        name="8bit-states-match-32bit",
        paper=_DETTMERS,
        statement="8-bit optimizers with block-wise dynamic quantization match the performance of "
        "32-bit optimizer states, without changing the optimizer's hyperparameters.",
        needs=_OPTIMIZERS,
        run=_run,
        setup=f"float32 models; Adam, AdaBelief and Adan from the registry with their defaults except "
        f"lr, state_bits 32 vs 8, same init and batches. (a) 784-{_FM_HIDDEN}-10 ReLU MLP on the "
        f"first {_FM_TRAIN} Fashion-MNIST training images (synthetic 10-class set if the data is "
        f"missing), {_FM_EPOCHS} epochs of batches of {_FM_BATCH}, lr {_FMNIST_LR}; error rate on "
        f"{_FM_TEST} test images. (b) the Pre-LN tiny transformer of preln-no-warmup ({_LM_LAYERS} "
        f"layers, width {_LM_WIDTH}, {_LM_HEADS} heads, context {_LM_CONTEXT}), {_LM_STEPS} steps "
        f"of {_LM_BATCH} windows, lr {_LM_LR}; loss on {_LM_VALID} validation windows (nats/char)",
        criterion=f"for each optimizer and task, |mean 8-bit - mean 32-bit| <= max(max - min of the "
        f"32-bit seeds, {_FLOOR['fmnist']} test error / {_FLOOR['charlm']} nats/char), no run "
        "diverged, and the 8-bit runs kept at least one state in 8 bits",
    ),
]

"""Claims about how training behaves rather than about one optimizer: warm-up and the place of layer
normalization, RAdam's rectification as a warm-up, weights that do not settle on a stationary point,
and the local geometry (R_med) Adam's and SGD's trajectories visit.

Conventions (float64, every draw from a seeded ``torch.Generator``, ``torch.optim`` baselines, a
criterion fixed in the code before the result was looked at): :mod:`adaptim.bench.claims`; set-ups
and the last run's numbers: ``docs/claims.md``.

* ``preln-no-warmup``: Xiong et al., "On Layer Normalization in the Transformer Architecture",
  ICML 2020, arXiv:2002.04745.
* ``radam-replaces-warmup``: RAdam, Liu et al., ICLR 2020, arXiv:1908.03265;
  github.com/LiyuanLucasLiu/RAdam.
* ``weights-not-stationary``: Zhang, Li, Sra & Jadbabaie, "Neural Network Weights Do Not Converge to
  Stationary Points: An Invariant Measure Perspective", ICML 2022 (its abstract in
  ``shared/seeds/001`` is a machine translation into Chinese).
* ``adam-smaller-rmed``: Jiang, Malik & Li, "How Does Adaptive Optimization Impact Local Neural
  Network Geometry?", NeurIPS 2023, arXiv:2211.02254; R_med is :func:`adaptim.bench.diagnostics.r_med`.

The language-model claims share one corpus: Genesis 1-11 of the King James Bible from Debian's
``bible-kjv`` (the bench's ``charlm`` text, cut short so that a run takes seconds), or, where that
package is missing, a deterministic synthetic text of English words (every result says which, in
``corpus_is_kjv`` and in its detail).
"""

from __future__ import annotations

import functools
import math
import shutil
import statistics
import subprocess
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from adaptim.bench.claims_common import (
    F64,
    Claim,
    ClaimResult,
    ToolClaim,
    _cls,
    _gen,
    _named,
    _seeded_module,
    _stats,
)
from adaptim.bench.diagnostics import r_med

__all__ = ["CLAIMS", "TinyTransformer", "corpus"]


def _claim(name: str) -> Claim:
    """This module's claim called ``name`` (its run function labels its result with it)."""
    return _named(CLAIMS, name)


# -- the corpus -----------------------------------------------------------------------------------

_KJV_RANGE = "Gen1:1-Gen11:32"  # about 37,000 characters
_SYNTHETIC_WORDS = (
    "the and of to in that he shall unto for his i a lord they be is him not them it with all thou "
    "thy was god which my me said but ye their have will thee from as are when this out were upon "
    "man by you israel king son up there hath then people came had house into her on before also"
).split()


def _synthetic_text(chars: int = 37_000) -> str:
    """A fixed stand-in corpus: sentences of 4-12 words drawn with Zipf weights (seed 0 always)."""
    gen = torch.Generator().manual_seed(0)
    weights = 1.0 / torch.arange(1, len(_SYNTHETIC_WORDS) + 1, dtype=F64)
    lines: list[str] = []
    total = 0
    while total < chars:
        n = int(torch.randint(4, 13, (1,), generator=gen))
        idx = torch.multinomial(weights, n, replacement=True, generator=gen)
        words = [_SYNTHETIC_WORDS[i] for i in idx.tolist()]
        line = " ".join(words).capitalize() + "."
        lines.append(line)
        total += len(line) + 1
    return "\n".join(lines) + "\n"


@functools.lru_cache(maxsize=1)
def corpus() -> tuple[str, bool]:
    """(text, is_kjv): Genesis 1-11 from ``bible-kjv``, or the synthetic stand-in when it is missing."""
    exe = shutil.which("bible")
    if exe is not None:
        try:
            out = subprocess.run(
                [exe, "-f", _KJV_RANGE], capture_output=True, text=True, check=True, timeout=30
            ).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        # each line is "Ge1:1 In the beginning ..."; keep the verse text
        verses = [line.split(" ", 1)[1] for line in out.splitlines() if " " in line]
        if len(verses) > 100:
            return "\n".join(verses) + "\n", True
    return _synthetic_text(), False


@functools.lru_cache(maxsize=1)
def _encoded() -> tuple[torch.Tensor, torch.Tensor, int]:
    """(train ids, validation ids, vocabulary size): the first 90% of the corpus and the rest."""
    text, _ = corpus()
    chars = sorted(set(text))
    lut = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([lut[c] for c in text], dtype=torch.long)
    n_valid = len(ids) // 10
    return ids[:-n_valid], ids[-n_valid:], len(chars)


def _corpus_note() -> tuple[dict[str, float], str]:
    is_kjv = corpus()[1]
    note = (
        f"text: KJV {_KJV_RANGE} (bible-kjv)"
        if is_kjv
        else "text: synthetic fallback (bible-kjv not installed)"
    )
    return {"corpus_is_kjv": float(is_kjv)}, note


def _windows(ids: torch.Tensor, count: int, length: int, gen: torch.Generator) -> torch.Tensor:
    starts = torch.randint(0, len(ids) - length, (count,), generator=gen)
    return ids[starts[:, None] + torch.arange(length)]


# -- the tiny transformer -------------------------------------------------------------------------


class _Block(nn.Module):
    """Causal self-attention then a 4x MLP, each in a residual branch, normalized before (Pre-LN) or
    after the residual sum (Post-LN, the original Transformer's layout)."""

    def __init__(self, width: int, heads: int, post_ln: bool) -> None:
        super().__init__()
        self.heads, self.post_ln = heads, post_ln
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.fc1 = nn.Linear(width, 4 * width)
        self.fc2 = nn.Linear(4 * width, width)
        self.ln1 = nn.LayerNorm(width)
        self.ln2 = nn.LayerNorm(width)

    def _attention(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.post_ln:
            x = self.ln1(x + self._attention(x))
            return self.ln2(x + self._mlp(x))
        x = x + self._attention(self.ln1(x))
        return x + self._mlp(self.ln2(x))


class TinyTransformer(nn.Module):
    """A decoder-only character transformer in the Pre-LN or the Post-LN layout (Xiong et al., 2020,
    Fig. 1): Pre-LN normalizes the input of each residual branch and adds a final LayerNorm before
    the output layer; Post-LN normalizes after each residual sum and has no final LayerNorm.

    Weight matrices are Xavier-uniform and biases zero (the original Transformer's initialisation,
    which Xiong et al. analyse); learned positions start at N(0, 0.02^2).
    """

    def __init__(
        self, vocab: int, width: int, layers: int, heads: int, context: int, *, post_ln: bool
    ) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width ({width}) must be a multiple of heads ({heads})")
        self.post_ln = post_ln
        self.embed = nn.Embedding(vocab, width)
        self.pos = nn.Parameter(0.02 * torch.randn(context, width))
        self.blocks = nn.ModuleList(_Block(width, heads, post_ln) for _ in range(layers))
        self.final_ln = nn.Identity() if post_ln else nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids) + self.pos[: ids.shape[1]]
        for block in self.blocks:
            h = block(h)
        return self.head(self.final_ln(h))


_LM_WIDTH, _LM_LAYERS, _LM_HEADS, _LM_CONTEXT = 32, 2, 2, 16


def _lm(seed: int, vocab: int, post_ln: bool) -> TinyTransformer:
    return _seeded_module(
        seed,
        lambda: TinyTransformer(
            vocab, _LM_WIDTH, _LM_LAYERS, _LM_HEADS, _LM_CONTEXT, post_ln=post_ln
        ),
    )


def _lm_loss(model: nn.Module, windows: torch.Tensor) -> torch.Tensor:
    """Mean next-character cross-entropy (nats) over windows of ``context + 1`` ids."""
    logits = model(windows[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1))


# -- Xiong et al.: Pre-LN needs no warm-up, Post-LN does ------------------------------------------

_XIONG = "On Layer Normalization in the Transformer Architecture (Xiong et al., ICML 2020, arXiv:2002.04745)"
_RADAM = "RAdam (Liu et al., ICLR 2020, arXiv:1908.03265)"

_WARMUP_LRS = (1e-3, 3e-3, 1e-2)
_WARMUP_STEPS, _WARMUP_LENGTH, _WARMUP_BATCH, _WARMUP_VALID = 120, 30, 8, 64
_WARMUP_BETAS = (0.9, 0.98)  # the Transformer's (Vaswani et al.), which Xiong et al. keep
_PENALTY_NEEDED, _PENALTY_NONE, _COMPARABLE = 0.10, 0.05, 0.05  # nats per character


@functools.lru_cache(maxsize=256)
def _warmup_run(seed: int, post_ln: bool, opt_cls: type, lr: float, warmup: bool) -> float:
    """Train the tiny LM for ``_WARMUP_STEPS`` steps at a constant lr (after a linear warm-up over
    the first ``_WARMUP_LENGTH`` steps if ``warmup``); the validation loss in nats per character,
    ``inf`` if training diverged. Every configuration of a seed sees the same initial weights (up to
    the layout) and the same minibatches. Cached: the RAdam claim reuses the Post-LN Adam runs."""
    train, valid, vocab = _encoded()
    length = _LM_CONTEXT + 1
    batches = _windows(train, _WARMUP_STEPS * _WARMUP_BATCH, length, _gen(seed, 61))
    held_out = _windows(valid, _WARMUP_VALID, length, _gen(seed, 62))
    model = _lm(seed, vocab, post_ln)
    opt = opt_cls(model.parameters(), lr=lr, betas=_WARMUP_BETAS, eps=1e-8)
    for t in range(1, _WARMUP_STEPS + 1):
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, t / _WARMUP_LENGTH) if warmup else lr
        opt.zero_grad(set_to_none=True)
        loss = _lm_loss(model, batches[(t - 1) * _WARMUP_BATCH : t * _WARMUP_BATCH])
        if not torch.isfinite(loss):
            return math.inf
        loss.backward()
        opt.step()
    with torch.no_grad():
        final = float(_lm_loss(model, held_out))
    return final if math.isfinite(final) else math.inf


def _penalty(without: float, with_: float) -> float:
    """What leaving the warm-up out costs; two diverged runs cost nothing (inf - inf would be nan)."""
    if math.isinf(without) and math.isinf(with_):
        return 0.0
    return without - with_


def _run_preln(seeds: int) -> ClaimResult:
    c = _claim("preln-no-warmup")
    adam = torch.optim.Adam
    pre_pen, post_pen, pre_best, post_best = [], [], [], []
    per_lr: dict[str, list[float]] = {}
    ok = []
    for s in range(seeds):
        pen = {}
        for post in (False, True):
            layout = "post" if post else "pre"
            for lr in _WARMUP_LRS:
                no = _warmup_run(s, post, adam, lr, False)
                yes = _warmup_run(s, post, adam, lr, True)
                pen[layout, lr] = _penalty(no, yes)
                per_lr.setdefault(f"{layout}_penalty_lr{lr:g}", []).append(pen[layout, lr])
        pre_pen.append(max(pen["pre", lr] for lr in _WARMUP_LRS))
        post_pen.append(max(pen["post", lr] for lr in _WARMUP_LRS))
        pre_best.append(min(_warmup_run(s, False, adam, lr, False) for lr in _WARMUP_LRS))
        post_best.append(min(_warmup_run(s, True, adam, lr, True) for lr in _WARMUP_LRS))
        ok.append(
            post_pen[-1] >= _PENALTY_NEEDED
            and pre_pen[-1] <= _PENALTY_NONE
            and pre_best[-1] <= post_best[-1] + _COMPARABLE
        )
    corpus_nums, note = _corpus_note()
    nums = {
        **_stats("post_penalty_max", post_pen),
        **_stats("pre_penalty_max", pre_pen),
        **_stats("pre_nowarmup_best", pre_best),
        **_stats("post_warmup_best", post_best),
        **{k: statistics.fmean(v) for k, v in per_lr.items()},
        **corpus_nums,
    }
    detail = (
        f"validation loss (nats/char) without minus with warm-up, largest over lr {list(_WARMUP_LRS)}: "
        f"Post-LN {statistics.fmean(post_pen):+.3f}, Pre-LN {statistics.fmean(pre_pen):+.3f}; best "
        f"Pre-LN without warm-up {statistics.fmean(pre_best):.3f} vs best Post-LN with "
        f"{statistics.fmean(post_best):.3f} (means; {note}); holds if in every seed Post-LN's "
        f"penalty is >= {_PENALTY_NEEDED} at some lr, Pre-LN's is <= {_PENALTY_NONE} at every lr, "
        f"and Pre-LN without warm-up is within {_COMPARABLE} of Post-LN with it"
    )
    return c.result(all(ok), nums, detail)


# -- Liu et al.: RAdam's rectification does the warm-up's work ------------------------------------


def _run_radam(seeds: int) -> ClaimResult:
    c = _claim("radam-replaces-warmup")
    adam, radam = torch.optim.Adam, _cls("radam")
    penalties, gaps, worst = [], [], []
    ok = []
    for s in range(seeds):
        no = {lr: _warmup_run(s, True, adam, lr, False) for lr in _WARMUP_LRS}
        yes = {lr: _warmup_run(s, True, adam, lr, True) for lr in _WARMUP_LRS}
        rect = {lr: _warmup_run(s, True, radam, lr, False) for lr in _WARMUP_LRS}
        worst_lr = max(_WARMUP_LRS, key=lambda lr: _penalty(no[lr], yes[lr]))
        penalties.append(_penalty(no[worst_lr], yes[worst_lr]))
        gaps.append(_penalty(rect[worst_lr], yes[worst_lr]))
        worst.append(max(_penalty(rect[lr], yes[lr]) for lr in _WARMUP_LRS))
        ok.append(penalties[-1] >= _PENALTY_NEEDED and worst[-1] <= _COMPARABLE)
    corpus_nums, note = _corpus_note()
    nums = {
        **_stats("adam_penalty_max", penalties),
        **_stats("radam_gap_at_that_lr", gaps),
        **_stats("radam_gap_max", worst),
        **corpus_nums,
    }
    detail = (
        f"Post-LN LM of preln-no-warmup, validation loss (nats/char): Adam without minus with warm-up "
        f"at its worst lr {statistics.fmean(penalties):+.3f}; RAdam without warm-up minus Adam with it "
        f"there {statistics.fmean(gaps):+.3f}, worst over lr {list(_WARMUP_LRS)} "
        f"{statistics.fmean(worst):+.3f} (means; {note}); holds if in every seed Adam's penalty is "
        f">= {_PENALTY_NEEDED} at some lr and RAdam without warm-up is within {_COMPARABLE} of Adam "
        "with it at every lr"
    )
    return c.result(all(ok), nums, detail)


# -- Zhang et al.: the loss settles, the gradient does not vanish ---------------------------------

_ZHANG = (
    "Neural Network Weights Do Not Converge to Stationary Points (Zhang, Li, Sra, Jadbabaie, "
    "ICML 2022)"
)
_STAT_STEPS, _STAT_BATCH, _STAT_TRAIN, _STAT_LR = 480, 8, 1024, 1e-2
_STAT_CHECKS = (0, 240, 300, 360, 420, 480)
_PROGRESS, _PLATEAU, _GRAD_FLOOR = 0.8, 0.05, 0.5


def _stationary_optimizer(params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=_STAT_LR)


def _full_batch(model: nn.Module, data: torch.Tensor) -> tuple[float, float]:
    """(loss, gradient norm) over the whole training set, without touching ``.grad``."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = _lm_loss(model, data)
    grads = torch.autograd.grad(loss, params)
    return float(loss.detach()), float(torch.sqrt(sum((g * g).sum() for g in grads)))


def _stationary_run(seed: int) -> tuple[list[float], list[float], float]:
    """Pre-LN LM trained by Adam at a constant lr on a fixed set of windows; the full-batch loss and
    gradient norm at ``_STAT_CHECKS``, and how far the weights moved over the second half relative to
    their norm."""
    train, _, vocab = _encoded()
    gen = _gen(seed, 63)
    data = _windows(train, _STAT_TRAIN, _LM_CONTEXT + 1, gen)
    order = torch.randint(0, _STAT_TRAIN, (_STAT_STEPS, _STAT_BATCH), generator=gen)
    model = _lm(seed, vocab, post_ln=False)
    opt = _stationary_optimizer(model.parameters())
    losses, norms = [], []
    half = None
    for t in range(_STAT_STEPS + 1):
        if t in _STAT_CHECKS:
            loss, norm = _full_batch(model, data)
            losses.append(loss)
            norms.append(norm)
        if t == _STAT_STEPS // 2:
            half = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        if t == _STAT_STEPS:
            break
        opt.zero_grad(set_to_none=True)
        _lm_loss(model, data[order[t]]).backward()
        opt.step()
    end = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    assert half is not None
    return losses, norms, float((end - half).norm() / half.norm())


def _run_stationary(seeds: int) -> ClaimResult:
    c = _claim("weights-not-stationary")
    mid = _STAT_CHECKS.index(_STAT_STEPS // 2)
    progress, drift, floor, moved, final_norm = [], [], [], [], []
    ok = []
    for s in range(seeds):
        losses, norms, move = _stationary_run(s)
        progress.append(losses[mid] / losses[0])
        drift.append(abs(losses[-1] - losses[mid]) / losses[mid])
        floor.append(min(norms[mid + 1 :]) / norms[mid])
        moved.append(move)
        final_norm.append(norms[-1])
        ok.append(
            all(math.isfinite(v) for v in losses + norms)
            and progress[-1] <= _PROGRESS
            and drift[-1] <= _PLATEAU
            and floor[-1] >= _GRAD_FLOOR
        )
    corpus_nums, note = _corpus_note()
    nums = {
        **_stats("loss_mid_over_init", progress),
        **_stats("loss_change_second_half", drift),
        **_stats("grad_norm_min_over_mid", floor),
        **_stats("grad_norm_final", final_norm),
        **_stats("weights_moved_second_half", moved),
        **corpus_nums,
    }
    detail = (
        f"Pre-LN LM, Adam lr {_STAT_LR:g} constant, {_STAT_STEPS} steps of {_STAT_BATCH} windows "
        f"from {_STAT_TRAIN} fixed ones ({note}); full-batch loss mid-run / initial "
        f"{statistics.fmean(progress):.3f}, relative loss change over the second half "
        f"{statistics.fmean(drift):.3f}, smallest full-batch gradient norm in the second half / at "
        f"mid-run {statistics.fmean(floor):.3f} (means); holds if in every seed the loss has fallen to "
        f"<= {_PROGRESS} x initial by mid-run, changes by <= {_PLATEAU:.0%} over the second half, "
        f"and the gradient norm stays >= {_GRAD_FLOOR} x its mid-run value"
    )
    return c.result(all(ok), nums, detail)


# -- Jiang, Malik & Li: Adam's trajectory has the smaller R_med -----------------------------------

_JIANG = (
    "How Does Adaptive Optimization Impact Local Neural Network Geometry? (Jiang, Malik, Li, "
    "NeurIPS 2023, arXiv:2211.02254)"
)
_RMED_HIDDEN, _RMED_STEPS, _RMED_BATCH, _RMED_PROBE = 8, 400, 64, 1024
_RMED_CHECKS = (200, 300, 400)
_RMED_FACTOR, _RMED_PROGRESS = 1.5, 0.8

# the two trajectories compared (a test swaps one to check that the verdict can fail)
_RMED_OPTIMIZERS: dict[str, Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]] = {
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
    "sgd": lambda p: torch.optim.SGD(p, lr=0.3, momentum=0.9),
}


class _BigramNet(nn.Module):
    """Two-layer tanh network from the one-hot current character to the next one's logits."""

    def __init__(self, vocab: int, hidden: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.fc1 = nn.Linear(vocab, hidden)
        self.fc2 = nn.Linear(hidden, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.fc1(F.one_hot(ids, self.vocab).to(self.fc1.weight.dtype))))


def _weight(layer: Any) -> torch.Tensor:
    weight = layer.weight
    assert isinstance(weight, torch.Tensor)
    return weight


def _bigram_loss(model: nn.Module, pairs: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(pairs[:, 0]), pairs[:, 1])


def _pair_counts(pairs: torch.Tensor, vocab: int) -> torch.Tensor:
    counts = torch.zeros(vocab, vocab, dtype=F64)
    counts.index_put_(
        (pairs[:, 0], pairs[:, 1]), torch.ones(len(pairs), dtype=F64), accumulate=True
    )
    return counts


def _bigram_probe_loss(model: nn.Module, counts: torch.Tensor) -> torch.Tensor:
    """:func:`_bigram_loss` over the pairs that ``counts`` tallies, computed once per distinct input
    character (the logits depend on it alone): the same value, ~20x cheaper Hessian diagonals."""
    logits = model(torch.arange(len(counts)))
    return -(counts * F.log_softmax(logits, dim=1)).sum() / counts.sum()


def _rmed_run(seed: int, which: str) -> tuple[float, float, float]:
    """Train the bigram net with ``_RMED_OPTIMIZERS[which]``; (probe loss at the end / at the start,
    mean R_med of fc1.weight and of fc2.weight over ``_RMED_CHECKS``), R_med on a fixed probe batch."""
    train, _, vocab = _encoded()
    gen = _gen(seed, 64)
    pairs = _windows(train, _RMED_STEPS * _RMED_BATCH, 2, gen)
    probe = _pair_counts(_windows(train, _RMED_PROBE, 2, _gen(seed, 65)), vocab)
    model = _seeded_module(seed, lambda: _BigramNet(vocab, _RMED_HIDDEN))
    opt = _RMED_OPTIMIZERS[which](model.parameters())
    with torch.no_grad():
        start = float(_bigram_probe_loss(model, probe))
    r1, r2 = [], []
    for t in range(1, _RMED_STEPS + 1):
        opt.zero_grad(set_to_none=True)
        _bigram_loss(model, pairs[(t - 1) * _RMED_BATCH : t * _RMED_BATCH]).backward()
        opt.step()
        if t in _RMED_CHECKS:
            r1.append(r_med(model, _bigram_probe_loss, probe, params=[_weight(model.fc1)]))
            r2.append(r_med(model, _bigram_probe_loss, probe, params=[_weight(model.fc2)]))
    with torch.no_grad():
        end = float(_bigram_probe_loss(model, probe))
    return end / start, statistics.fmean(r1), statistics.fmean(r2)


def _run_rmed(seeds: int) -> ClaimResult:
    c = _claim("adam-smaller-rmed")
    out: dict[str, list[float]] = {}
    ok = []
    for s in range(seeds):
        pa, a1, a2 = _rmed_run(s, "adam")
        ps, s1, s2 = _rmed_run(s, "sgd")
        for key, value in (
            ("adam_loss_ratio", pa),
            ("sgd_loss_ratio", ps),
            ("adam_rmed_fc1", a1),
            ("sgd_rmed_fc1", s1),
            ("adam_rmed_fc2", a2),
            ("sgd_rmed_fc2", s2),
        ):
            out.setdefault(key, []).append(value)
        ok.append(
            pa <= _RMED_PROGRESS
            and ps <= _RMED_PROGRESS
            and s1 >= _RMED_FACTOR * a1
            and s2 >= _RMED_FACTOR * a2
        )
    corpus_nums, note = _corpus_note()
    nums = {k: v for key, vals in out.items() for k, v in _stats(key, vals).items()}
    nums.update(corpus_nums)
    mean = {k: statistics.fmean(v) for k, v in out.items()}
    detail = (
        f"bigram net V-{_RMED_HIDDEN}-V (tanh), {_RMED_STEPS} steps of {_RMED_BATCH} pairs ({note}); "
        f"R_med = max/median |Hessian diagonal| per weight matrix on {_RMED_PROBE} fixed pairs, mean "
        f"over steps {list(_RMED_CHECKS)}: fc1 Adam {mean['adam_rmed_fc1']:.3g} vs SGD "
        f"{mean['sgd_rmed_fc1']:.3g}, fc2 Adam {mean['adam_rmed_fc2']:.3g} vs SGD "
        f"{mean['sgd_rmed_fc2']:.3g}; loss end/start Adam {mean['adam_loss_ratio']:.3f}, SGD "
        f"{mean['sgd_loss_ratio']:.3f} (means); holds if in every seed both losses fall to <= "
        f"{_RMED_PROGRESS} x initial and SGD's R_med is >= {_RMED_FACTOR} x Adam's for both matrices"
    )
    return c.result(all(ok), nums, detail)


# -- the list -------------------------------------------------------------------------------------

_LM_SETUP = (
    f"character LM on {_KJV_RANGE} of the KJV (synthetic text if bible-kjv is missing), first 90% "
    f"train, last 10% validation; decoder-only transformer, {_LM_LAYERS} layers, width {_LM_WIDTH}, "
    f"{_LM_HEADS} heads, context {_LM_CONTEXT}, Xavier init; torch.optim.Adam betas "
    f"{_WARMUP_BETAS}, eps 1e-8, lr in {list(_WARMUP_LRS)} held constant for {_WARMUP_STEPS} steps "
    f"of {_WARMUP_BATCH} windows, or reached by a linear warm-up over the first {_WARMUP_LENGTH}; "
    f"score = loss on {_WARMUP_VALID} validation windows (nats/char)"
)

CLAIMS: list[Claim] = [
    ToolClaim(
        name="preln-no-warmup",
        paper=_XIONG,
        statement="Post-LN Transformers need a learning-rate warm-up; Pre-LN Transformers train "
        "without it and reach results comparable to the Post-LN baseline with warm-up.",
        needs=("torch.nn.functional:scaled_dot_product_attention",),
        run=_run_preln,
        setup=_LM_SETUP + "; Pre-LN and Post-LN from the same seed",
        criterion=f"in every seed: Post-LN's warm-up penalty (loss without minus with) is >= "
        f"{_PENALTY_NEEDED} at some lr, Pre-LN's is <= {_PENALTY_NONE} at every lr, and the best "
        f"Pre-LN loss without warm-up is within {_COMPARABLE} of the best Post-LN loss with it",
    ),
    Claim(
        name="radam-replaces-warmup",
        paper=_RADAM,
        statement="RAdam's rectification of the adaptive learning rate's variance does the work of "
        "the warm-up: without warm-up it trains as well as Adam with one, where Adam without one "
        "does worse.",
        needs=("radam",),
        run=_run_radam,
        setup=_LM_SETUP + "; Post-LN only; RAdam from the registry with the same betas and eps, "
        "no warm-up",
        criterion=f"in every seed Adam's warm-up penalty is >= {_PENALTY_NEEDED} at some lr, and "
        f"RAdam without warm-up is within {_COMPARABLE} of Adam with warm-up at every lr",
    ),
    ToolClaim(
        name="weights-not-stationary",
        paper=_ZHANG,
        statement="In neural network training the loss stabilizes while the weights do not converge "
        "to a stationary point: the gradient norm stays away from zero.",
        needs=("torch.nn.functional:scaled_dot_product_attention",),
        run=_run_stationary,
        setup=f"the Pre-LN LM of preln-no-warmup on {_STAT_TRAIN} fixed training windows; "
        f"torch.optim.Adam lr {_STAT_LR:g} constant, {_STAT_STEPS} steps of {_STAT_BATCH} windows "
        f"drawn from them; full-batch loss and gradient norm at steps {list(_STAT_CHECKS)}",
        criterion=f"in every seed the full-batch loss at mid-run is <= {_PROGRESS} x initial, its "
        f"change over the second half is <= {_PLATEAU:.0%}, and the full-batch gradient norm at "
        f"every later check is >= {_GRAD_FLOOR} x its mid-run value",
    ),
    ToolClaim(
        name="adam-smaller-rmed",
        paper=_JIANG,
        statement="Adam biases its trajectory towards regions where R_med (max / median of the "
        "loss Hessian's diagonal) is small; SGD's trajectory has a comparatively large R_med.",
        needs=("adaptim.bench.diagnostics:r_med",),
        run=_run_rmed,
        setup=f"next-character prediction on the corpus of preln-no-warmup with a V-{_RMED_HIDDEN}-V "
        f"tanh network on one-hot input; {_RMED_STEPS} steps of {_RMED_BATCH} pairs; "
        "torch.optim.Adam lr 1e-2 vs torch.optim.SGD lr 0.3 momentum 0.9, same init and batches; "
        f"exact R_med of fc1.weight and fc2.weight on {_RMED_PROBE} fixed pairs at steps "
        f"{list(_RMED_CHECKS)}, averaged",
        criterion=f"in every seed both runs bring the probe loss to <= {_RMED_PROGRESS} x initial, "
        f"and SGD's mean R_med is >= {_RMED_FACTOR} x Adam's for each of the two weight matrices",
    ),
]

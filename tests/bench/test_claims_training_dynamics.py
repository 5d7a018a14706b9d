"""The training-dynamics claims: each runs (one seed) with finite numbers, and a stand-in that should
fail a claim makes it fail (stand-in measurements where a real failing run would take too long)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import pytest
import torch

from adaptim import registry
from adaptim.bench import claims_training_dynamics as td
from adaptim.bench.claims_common import ClaimResult


def _run(name: str, seeds: int = 1) -> ClaimResult:
    claim = next(c for c in td.CLAIMS if c.name == name)
    assert claim.missing() == []
    r = claim.run(seeds)
    assert r.name == name and r.holds in (True, False)
    assert r.detail and "\n" not in r.detail
    assert r.numbers and all(isinstance(v, float) for v in r.numbers.values())
    assert r.numbers["corpus_is_kjv"] == float(td.corpus()[1])
    return r


def _replace(monkeypatch: pytest.MonkeyPatch, name: str, cls: type) -> None:
    info = registry._REGISTRY[name]
    monkeypatch.setitem(registry._REGISTRY, name, dataclasses.replace(info, cls=cls))


@pytest.fixture
def synthetic_corpus(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The corpus as on a machine without bible-kjv."""
    monkeypatch.setattr(td.shutil, "which", lambda name: None)
    for cached in (td.corpus, td._encoded, td._warmup_run):
        cached.cache_clear()
    yield
    for cached in (td.corpus, td._encoded, td._warmup_run):
        cached.cache_clear()


def test_the_claims_are_well_formed() -> None:
    names = [c.name for c in td.CLAIMS]
    assert names == [
        "preln-no-warmup",
        "radam-replaces-warmup",
        "weights-not-stationary",
        "adam-smaller-rmed",
    ]
    for c in td.CLAIMS:
        assert c.paper and c.statement and c.setup and c.criterion and c.needs


def test_the_synthetic_corpus_is_fixed_and_used_without_bible_kjv(synthetic_corpus: None) -> None:
    text, is_kjv = td.corpus()
    assert not is_kjv
    assert text == td._synthetic_text() and len(text) >= 37_000
    train, valid, vocab = td._encoded()
    assert len(valid) == (len(train) + len(valid)) // 10 and vocab == len(set(text))
    r = _run("adam-smaller-rmed")
    assert r.numbers["corpus_is_kjv"] == 0.0 and "synthetic fallback" in r.detail


# -- real runs, one seed --------------------------------------------------------------------------


def test_preln_and_radam_claims_run() -> None:
    r = _run("preln-no-warmup")
    for layout in ("pre", "post"):
        for lr in td._WARMUP_LRS:
            assert math.isfinite(r.numbers[f"{layout}_penalty_lr{lr:g}"])
    assert 1.0 < r.numbers["pre_nowarmup_best_mean"] < math.log(td._encoded()[2])
    radam = _run("radam-replaces-warmup")  # reuses the cached Post-LN Adam runs
    assert radam.numbers["adam_penalty_max_mean"] == r.numbers["post_penalty_max_mean"]


def test_post_ln_and_pre_ln_differ_only_in_the_layout() -> None:
    vocab = 10
    pre, post = td._lm(0, vocab, post_ln=False), td._lm(0, vocab, post_ln=True)
    # same initial weights where both have them; only Pre-LN has a final LayerNorm
    post_params = dict(post.named_parameters())
    extra = [n for n in dict(pre.named_parameters()) if n not in post_params]
    assert extra == ["final_ln.weight", "final_ln.bias"]
    for n, p in post.named_parameters():
        assert torch.equal(p, dict(pre.named_parameters())[n])
    ids = torch.randint(0, vocab, (2, td._LM_CONTEXT), generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(pre(ids), post(ids))
    # causal: the logits at position t do not depend on later characters
    changed = ids.clone()
    changed[:, -1] = (changed[:, -1] + 1) % vocab
    for model in (pre, post):
        assert torch.allclose(model(ids)[:, :-1], model(changed)[:, :-1], rtol=0, atol=1e-12)


def test_weights_not_stationary_runs() -> None:
    r = _run("weights-not-stationary")
    assert 0.0 < r.numbers["loss_mid_over_init_mean"] < 1.0
    assert r.numbers["grad_norm_final_mean"] > 0.0
    assert r.numbers["weights_moved_second_half_mean"] > 0.0


def test_rmed_claim_runs_and_fails_when_adam_is_replaced_by_sgd(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    r = _run("adam-smaller-rmed")
    assert r.numbers["adam_rmed_fc1_mean"] >= 1.0 and r.numbers["sgd_rmed_fc1_mean"] >= 1.0
    # the same optimizer on both sides: the same trajectory, so equal R_med and no 1.5x gap
    monkeypatch.setitem(td._RMED_OPTIMIZERS, "adam", td._RMED_OPTIMIZERS["sgd"])
    same = _run("adam-smaller-rmed")
    assert same.holds is False
    assert same.numbers["adam_rmed_fc1_mean"] == same.numbers["sgd_rmed_fc1_mean"]
    assert same.numbers["adam_rmed_fc2_mean"] == same.numbers["sgd_rmed_fc2_mean"]


# -- the criteria, on stand-in measurements -------------------------------------------------------


def _table(post_penalty: float, pre_penalty: float, pre_gap: float, radam_gap: float):
    """A stand-in ``_warmup_run``: with warm-up every run ends at 2.0 (Post-LN) / 2.0 + pre_gap
    (Pre-LN); leaving it out costs ``post_penalty`` / ``pre_penalty`` at the largest lr only; the
    registered RAdam without warm-up ends ``radam_gap`` above Adam with it at every lr."""
    largest = max(td._WARMUP_LRS)

    def run(seed: int, post_ln: bool, opt_cls: type, lr: float, warmup: bool) -> float:
        base = 2.0 if post_ln else 2.0 + pre_gap
        if opt_cls is not torch.optim.Adam:
            return 2.0 + radam_gap
        if warmup or lr != largest:
            return base
        return base + (post_penalty if post_ln else pre_penalty)

    return run


@pytest.mark.parametrize(
    ("post_penalty", "pre_penalty", "pre_gap", "holds"),
    [
        (0.3, 0.0, 0.0, True),
        (0.3, 0.2, 0.0, False),  # Pre-LN needs the warm-up too
        (0.02, 0.0, 0.0, False),  # Post-LN does not need it
        (0.3, 0.0, 0.2, False),  # Pre-LN without warm-up is not comparable to Post-LN with it
        (math.inf, 0.0, 0.0, True),  # Post-LN without warm-up diverges
    ],
)
def test_preln_criterion(
    monkeypatch: pytest.MonkeyPatch,
    post_penalty: float,
    pre_penalty: float,
    pre_gap: float,
    holds: bool,
) -> None:
    monkeypatch.setattr(td, "_warmup_run", _table(post_penalty, pre_penalty, pre_gap, 0.0))
    r = td._run_preln(3)
    assert r.holds is holds
    assert r.numbers["post_penalty_max_mean"] == pytest.approx(post_penalty)


def test_an_adam_registered_as_radam_fails_the_radam_claim(monkeypatch: pytest.MonkeyPatch) -> None:
    # Post-LN Adam loses 0.3 without warm-up; a "RAdam" that is plain Adam loses it as well
    monkeypatch.setattr(td, "_warmup_run", _table(0.3, 0.0, 0.0, radam_gap=0.0))
    assert td._run_radam(2).holds is True
    _replace(monkeypatch, "radam", torch.optim.Adam)
    r = td._run_radam(2)
    assert r.holds is False
    assert r.numbers["radam_gap_at_that_lr_mean"] == r.numbers["adam_penalty_max_mean"]
    assert r.numbers["adam_penalty_max_mean"] == pytest.approx(0.3)


def test_radam_criterion_needs_a_warmup_effect_and_radam_close_to_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(td, "_warmup_run", _table(0.02, 0.0, 0.0, radam_gap=0.0))
    assert td._run_radam(1).holds is False  # nothing for the rectification to replace
    monkeypatch.setattr(td, "_warmup_run", _table(0.3, 0.0, 0.0, radam_gap=0.1))
    assert td._run_radam(1).holds is False  # RAdam 0.1 worse than Adam with warm-up


@pytest.mark.parametrize(
    ("losses", "norms", "holds"),
    [
        ((4.0, 2.0, 1.98, 1.97, 1.96, 1.95), (1.0, 0.5, 0.45, 0.5, 0.4, 0.45), True),
        # a stationary point: the loss settles and the gradient norm goes to zero
        ((4.0, 2.0, 1.98, 1.97, 1.96, 1.95), (1.0, 0.5, 0.1, 0.02, 1e-3, 1e-4), False),
        # the loss is still falling
        ((4.0, 2.0, 1.9, 1.8, 1.7, 1.6), (1.0, 0.5, 0.45, 0.5, 0.4, 0.45), False),
        # nothing was learned (an optimizer that does not move)
        ((4.0, 4.0, 4.0, 4.0, 4.0, 4.0), (1.0, 1.0, 1.0, 1.0, 1.0, 1.0), False),
    ],
)
def test_stationary_criterion(
    monkeypatch: pytest.MonkeyPatch,
    losses: tuple[float, ...],
    norms: tuple[float, ...],
    holds: bool,
) -> None:
    assert len(losses) == len(td._STAT_CHECKS)
    monkeypatch.setattr(td, "_stationary_run", lambda seed: (list(losses), list(norms), 0.3))
    r = td._run_stationary(2)
    assert r.holds is holds
    assert r.numbers["grad_norm_min_over_mid_mean"] == pytest.approx(min(norms[2:]) / norms[1])


@pytest.mark.parametrize(
    ("adam", "sgd", "holds"),
    [
        ((0.5, 10.0, 20.0), (0.5, 30.0, 40.0), True),
        ((0.5, 10.0, 20.0), (0.5, 30.0, 25.0), False),  # fc2 gap below 1.5x
        ((0.5, 30.0, 20.0), (0.5, 10.0, 40.0), False),  # Adam's fc1 larger
        ((0.5, 10.0, 20.0), (0.9, 30.0, 40.0), False),  # SGD did not train
    ],
)
def test_rmed_criterion(
    monkeypatch: pytest.MonkeyPatch,
    adam: tuple[float, float, float],
    sgd: tuple[float, float, float],
    holds: bool,
) -> None:
    monkeypatch.setattr(td, "_rmed_run", lambda seed, which: adam if which == "adam" else sgd)
    r = td._run_rmed(2)
    assert r.holds is holds
    assert r.numbers["sgd_rmed_fc1_mean"] == sgd[1]

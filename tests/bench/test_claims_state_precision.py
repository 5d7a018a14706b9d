"""The 8-bit-states claim: it runs (one seed) with finite numbers and really uses 8-bit states, its
criterion is the one documented, and an 8-bit codec that is deliberately broken fails it."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from adaptim.bench import claims_state_precision as sp
from adaptim.bench.claims import CLAIMS, REPORT_ORDER
from adaptim.bench.claims_common import ClaimResult
from adaptim.bench.tasks import FMNIST_DIR_ENV
from adaptim.core import state_precision

NAME = "8bit-states-match-32bit"


def _clear() -> None:
    for cached in (sp._fmnist_subset, sp._fmnist_run, sp._lm_run):
        cached.cache_clear()


@pytest.fixture
def fresh_runs() -> Iterator[None]:
    """No cached run leaks into or out of a test that changes how runs behave."""
    _clear()
    yield
    _clear()


def _run(seeds: int = 1) -> ClaimResult:
    (claim,) = sp.CLAIMS
    assert claim.missing() == []
    r = claim.run(seeds)
    assert r.name == NAME and r.holds in (True, False)
    assert r.detail and "\n" not in r.detail
    assert r.numbers and all(isinstance(v, float) for v in r.numbers.values())
    return r


def test_the_claim_is_well_formed_and_in_the_suite() -> None:
    (claim,) = sp.CLAIMS
    assert claim.name == NAME
    assert claim.paper and claim.statement and claim.setup and claim.criterion
    assert set(claim.needs) == {"adam", "adabelief", "adan"}
    assert REPORT_ORDER.index(NAME) == REPORT_ORDER.index("adafactor-sublinear-memory") + 1
    assert sum(c.name == NAME for c in CLAIMS) == 1


@pytest.mark.parametrize(
    ("eight", "thirty_two", "holds"),
    [
        ([0.20], [0.20], True),  # one seed: only the floor
        ([0.204], [0.20], True),  # within the floor 0.005
        ([0.206], [0.20], False),  # outside it
        ([0.25, 0.27], [0.20, 0.30], True),  # within the spread 0.1, which is larger than the floor
        ([0.36, 0.36], [0.20, 0.30], False),  # the means differ by 0.11 > spread
        ([math.inf], [0.20], False),  # a diverged run fails
        ([0.20], [math.nan], False),
    ],
)
def test_criterion(eight: list[float], thirty_two: list[float], holds: bool) -> None:
    assert sp._matches(eight, thirty_two, sp._FLOOR["fmnist"])[0] is holds


def test_the_claim_runs_on_one_seed_with_8bit_states() -> None:
    r = _run()
    for task in sp._TASKS:
        for name in sp._OPTIMIZERS:
            for bits in (32, 8):
                assert math.isfinite(r.numbers[f"{task}_{name}_{bits}bit_mean"])
            # 8 bits are really used (MLP first layer; the transformer's 32x128 MLP matrices)
            assert r.numbers[f"{task}_{name}_quantized_states"] >= 2
            assert sp._TASKS[task](0, name, 32)[1] == 0  # and 32 bits keep none
    # the runs learn: the MLP beats chance, the LM beats a uniform guess over the characters
    assert r.numbers["fmnist_adam_32bit_mean"] < 0.5
    assert r.numbers["charlm_adam_32bit_mean"] < math.log(sp._encoded()[2])
    assert r.numbers["fmnist_is_real"] == float(sp._fmnist_subset()[4])
    assert r.numbers["corpus_is_kjv"] in (0.0, 1.0)


def test_a_broken_8bit_codec_fails_the_claim(
    monkeypatch: pytest.MonkeyPatch, fresh_runs: None
) -> None:
    """Decoding first moments 3x too large (a codec bug) makes 8-bit training diverge: not a match."""
    real_codec = state_precision._codec

    def broken_codec(device: torch.device, signed: bool):  # type: ignore[no-untyped-def]
        quantize, dequantize = real_codec(device, signed)
        if not signed:
            return quantize, dequantize

        def dequantize_too_large(codes: torch.Tensor, absmax: torch.Tensor, out: torch.Tensor):  # type: ignore[no-untyped-def]
            dequantize(codes, absmax, out=out)
            out.mul_(3.0)

        return quantize, dequantize_too_large

    monkeypatch.setattr(state_precision, "_codec", broken_codec)
    monkeypatch.setattr(
        sp, "_TASKS", {"fmnist": sp._fmnist_run}
    )  # the LM is slower, same mechanism
    r = _run()
    assert r.holds is False
    for name in sp._OPTIMIZERS:
        assert math.isfinite(r.numbers[f"fmnist_{name}_32bit_mean"])
        assert r.numbers[f"fmnist_{name}_gap"] > r.numbers[f"fmnist_{name}_allowed"]
    assert "FAILS" in r.detail


def test_without_fashion_mnist_a_fixed_synthetic_set_is_used(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fresh_runs: None
) -> None:
    monkeypatch.setenv(FMNIST_DIR_ENV, str(tmp_path))  # an empty folder: no IDX files
    train_x, train_y, test_x, test_y, is_real = sp._fmnist_subset()
    assert not is_real
    assert train_x.shape == (sp._FM_TRAIN, 784) and test_x.shape == (sp._FM_TEST, 784)
    assert train_x.dtype == torch.float32 and set(train_y.tolist()) == set(range(10))
    sp._fmnist_subset.cache_clear()
    again = sp._fmnist_subset()
    assert torch.equal(again[0], train_x) and torch.equal(again[3], test_y)
    error, quantized = sp._fmnist_run(0, "adam", 8)
    assert error < 0.5 and quantized == 2  # learnable, and the first layer's states are 8-bit
    numbers, note = sp._fmnist_note()
    assert numbers == {"fmnist_is_real": 0.0} and "synthetic" in note

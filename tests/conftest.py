"""Test-wide settings: one thread (the tensors are tiny; threads only add contention and noise)."""

from collections.abc import Iterator

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture
def small_fused_pieces(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``fused=True`` over small pieces (2 a call, 256 elements): a few small tensors exercise what a
    model's tensors do at the real sizes, and each graph compiles in seconds (at the real arity of
    16 pieces a graph takes several times longer)."""
    import adaptim.core.fused as fused_module

    monkeypatch.setattr(fused_module, "ARITY", 2)
    monkeypatch.setattr(fused_module, "WHOLE_ARITY", 2)
    monkeypatch.setattr(fused_module, "PIECE_ELEMENTS", 256)
    fused_module._per_piece.cache_clear()  # pieces per dtype, from PIECE_ELEMENTS
    yield
    fused_module._per_piece.cache_clear()

"""The optimizers' costs: state bytes per parameter, step time, and their place in the database."""

from __future__ import annotations

import sqlite3

import pytest
import torch

from adaptim.bench import costs as C
from adaptim.bench.store import Store

N_PARAMS = 784 * 128 + 128 + 128 * 10 + 10  # the fmnist-mlp network


class _Toy(torch.optim.Optimizer):
    """Keeps known tensors: a float64 copy, an alias of the parameter, one tensor twice, a list."""

    def __init__(self, params, inner: torch.optim.Optimizer | None = None) -> None:
        super().__init__(params, {"lr": 0.1})
        self.inner = inner

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                if not state:
                    shared = torch.zeros(p.numel(), dtype=torch.uint8)
                    state["copy"] = p.detach().clone().double()  # 8 bytes per element
                    state["alias"] = p.view(-1)  # the parameter's own storage: not state
                    state["codes"] = shared  # 1 byte per element ...
                    state["again"] = [shared, {"nested": shared}]  # ... counted once
                    state["scale"] = torch.ones((), dtype=torch.float32)  # 4 bytes
        return None


def test_state_bytes_count_each_storage_once_and_not_the_parameters():
    params = [torch.nn.Parameter(torch.randn(10, 3)), torch.nn.Parameter(torch.randn(5))]
    opt = _Toy(params)
    opt.step()
    assert C.optimizer_state_bytes(opt, params) == 35 * (8 + 1) + 2 * 4
    # A wrapper's inner optimizer keeps its own state: it is counted too.
    inner_params = [torch.nn.Parameter(torch.randn(4))]
    inner = torch.optim.SGD(inner_params, lr=0.1, momentum=0.9)
    inner_params[0].grad = torch.ones(4)
    inner.step()
    wrapper = _Toy(params, inner=inner)
    wrapper.step()
    assert C.optimizer_state_bytes(wrapper, params) == 35 * 9 + 2 * 4 + 4 * 4


def test_state_bytes_of_the_baselines():
    # AdamW: two float32 moments per element, plus a float32 step count per parameter tensor (4).
    assert C.state_bytes_per_param("torch-adamw") == pytest.approx(8 + 4 * 4 / N_PARAMS)
    assert C.state_bytes_per_param("torch-sgdm") == pytest.approx(4.0)  # one momentum buffer
    assert C.state_bytes_per_param("torch-adamw", state_bits=8) is None  # torch has no 8-bit


def test_8bit_states_where_the_class_has_them():
    from adaptim.registry import get

    assert not get("koala_v").cls.quantized_states  # one shared scalar: nothing to quantize
    assert not C.supports_8bit("koala_v") and C.state_bytes_per_param("koala_v", 8) is None
    assert C.supports_8bit("koala_m")
    assert not C.supports_8bit("torch-sgdm")
    b32 = C.state_bytes_per_param("adam", 32)
    assert b32 == pytest.approx(8.0, abs=1e-3)
    assert C.supports_8bit("adam") == bool(get("adam").cls.quantized_states)
    if C.supports_8bit("adam"):
        # Two moments of 1 byte per element plus a float32 absmax per block of 256; the biases (too
        # small to quantize) stay float32: between 2 and 2.5 bytes, not 8.
        b8 = C.state_bytes_per_param("adam", 8)
        assert 2.0 < b8 < 2.5


@pytest.mark.parametrize("bits", [16, 0, "8"])
def test_bad_state_bits_is_refused(bits):
    with pytest.raises(ValueError, match="state_bits must be 8 or 32"):
        C.state_bytes_per_param("adam", bits)


def test_step_time_sees_extra_work():
    def one_pass(params):
        return torch.optim.SGD(params, lr=0.01)

    class FourPasses(torch.optim.SGD):
        def step(self, closure=None):
            for _ in range(3):
                closure()
            return super().step(closure)

    with pytest.raises(ValueError, match="repeats must be a positive integer"):
        C.step_seconds(one_pass, repeats=0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fast = C.step_seconds(one_pass, repeats=3)
        slow = C.step_seconds(lambda p: FourPasses(p, lr=0.01), repeats=3)
    finally:
        torch.set_num_threads(threads)
    assert fast > 0 and slow / fast > 2.0  # four forward-backward passes per step against one


def test_measure_costs_records_errors_and_restores_threads():
    threads = torch.get_num_threads()
    out = C.measure_costs(["torch-sgdm", "no-such-optimizer", "torch-adamw"], repeats=2)
    assert torch.get_num_threads() == threads
    sgdm, broken, adamw = out
    assert sgdm.state_bytes_32 == pytest.approx(4.0) and sgdm.error is None
    assert broken.state_bytes_32 is None and broken.step_ratio is None and broken.error
    # Relative to fused AdamW: the unfused one does the same work, on the same model.
    assert 0.3 < adamw.step_ratio < 3.0 and adamw.step_seconds > 0
    quick = C.measure_costs(["torch-sgdm"], timing=False)
    assert quick[0].step_ratio is None and quick[0].state_bytes_32 == pytest.approx(4.0)


def test_costs_in_the_store_latest_number_of_each_kind(tmp_path):
    db = tmp_path / "c.db"
    with Store(db) as store:
        assert C.load_costs(store) == {}  # a database without the table reads as no costs
        C.store_costs(store, [C.OptimizerCost("a", 8.0, 2.1, 1.5, 0.002)], None)
        # A later --quick bench: bytes again, no step time; a failure for another optimizer.
        C.store_costs(
            store,
            [C.OptimizerCost("a", 8.5, None), C.OptimizerCost("b", error="ValueError: x")],
            None,
        )
    with Store(db) as store:  # the table survives, and the store still opens
        got = C.load_costs(store)
    assert got["a"] == C.OptimizerCost("a", 8.5, 2.1, 1.5, 0.002)
    assert got["b"].error == "ValueError: x" and got["b"].state_bytes_32 is None
    rows = sqlite3.connect(db).execute("SELECT COUNT(*) FROM costs").fetchone()[0]
    assert rows == 4  # a: 32- and 8-bit, then 32-bit; b: 32-bit

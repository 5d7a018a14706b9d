"""Optimizers under ``torch.distributed.optim.ZeroRedundancyOptimizer`` take a single process's steps.

ZeRO gives each rank a partition of the parameters and builds the inner optimizer on that partition
only. An optimizer with a statistic over all parameters (Adai's mean of ``v_hat``, the adaptive
heavy ball's and NCG's global norms, MADA's hyper-gradients) must combine it over the partition
group, or it silently follows another trajectory. Two CPU processes (gloo) train the same small
model on the same data under ZeRO; a single-process run of the plain optimizer is the reference.

The model makes the partition uneven: one large weight on one rank, the smaller tensors on the other
(different numbers of tensors per rank), a parameter that never gets a gradient, and two param groups
(weights and biases with different learning rates). Everything runs in one spawn to keep the file
fast.
"""

from __future__ import annotations

import traceback
from typing import Any

import pytest
import torch
from torch import nn

import adaptim
from multiprocess import run_on_ranks

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="needs torch.distributed with gloo",
)

STEPS = 8
TOL = 1e-6

# (case id, registry name, kwargs)
CASES: list[tuple[str, str, dict[str, Any]]] = [
    # controls: elementwise updates are exact under ZeRO without any help
    ("adam", "adam", dict(lr=1e-2)),
    ("avgrad", "avgrad", dict(lr=1e-2, weight_decay=0.1)),
    # Adai: mean of v_hat over all parameters (sums and counts)
    ("adai", "adai", dict(lr=0.1)),
    ("adai-l2-per-tensor", "adai", dict(lr=0.1, weight_decay=0.1, foreach=False)),
    ("adaiv2", "adaiv2", dict(lr=0.1, dampening=0.5, weight_decay=0.1)),
    ("adai-bf16", "adai", dict(lr=0.1)),
    # betas given to ZeRO: its groups keep them and sync them into Adai's (beta0, beta2) groups
    ("adai-betas", "adai", dict(lr=0.1, betas=(0.2, 0.95))),
    # adaptive heavy ball: ||g_k - g_{k-1}|| and ||x_k - x_{k-1}|| over all parameters
    ("ahb_sgd", "ahb_sgd", dict(lr=0.05)),
    ("ahb_sgd-wd-per-tensor", "ahb_sgd", dict(lr=0.05, weight_decay=0.1, foreach=False)),
    ("ahb_adam", "ahb_adam", dict(lr=1e-2)),
    ("ahb_adam-per-tensor", "ahb_adam", dict(lr=1e-2, foreach=False)),
    ("ahb_sgd-bf16", "ahb_sgd", dict(lr=0.05)),
    # NCG: ||g_k||^2, ||g_{k-1}||^2 (and PR's <g_k, g_{k-1}>) over all parameters
    ("ncg_sgd", "ncg_sgd", dict(lr=0.05)),
    ("ncg_sgd-pr-wd", "ncg_sgd", dict(lr=0.05, beta_type="pr", weight_decay=0.1)),
    ("ncg_sgd-pr-per-tensor", "ncg_sgd", dict(lr=0.05, beta_type="pr", foreach=False)),
    # MADA: hyper-gradients <g, lr du/dh> summed over each group's parameters
    ("mada", "mada", dict(lr=1e-2)),
    ("mada-interp", "mada", dict(lr=1e-2, beta3=0.3, rho=0.5, c=0.5, weight_decay=0.1)),
    ("mada-interp-per-tensor", "mada", dict(lr=1e-2, beta3=0.3, rho=0.5, c=0.5, foreach=False)),
    ("mada-lion", "mada", dict(lr=1e-2, lion=True)),
    ("mada-bf16", "mada", dict(lr=1e-2, beta3=0.3, rho=0.5, c=0.5)),
]


def dtype_of(case_id: str) -> torch.dtype:
    return torch.bfloat16 if case_id.endswith("-bf16") else torch.float64


class Model(nn.Module):
    """Seven parameter tensors; ``unused`` never gets a gradient. ZeRO's greedy partition (largest
    first) puts ``big.weight`` (96 elements) alone on rank 0 and the other five on rank 1 (plus
    the unused one, 3 elements, wherever it falls)."""

    def __init__(self) -> None:
        super().__init__()
        self.big = nn.Linear(6, 16)
        self.middle = nn.Linear(16, 4)
        self.head = nn.Linear(4, 1)
        self.unused = nn.Parameter(torch.randn(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.middle(torch.tanh(self.big(x)))))


def make_model(dtype: torch.dtype) -> Model:
    torch.manual_seed(0)
    return Model().to(dtype)


def param_groups(model: nn.Module, lr: float) -> list[dict[str, Any]]:
    """Weights and the rest (biases, the unused vector) in two groups with different learning rates."""
    named = list(model.named_parameters())
    weights = [p for n, p in named if n.endswith("weight")]
    others = [p for n, p in named if not n.endswith("weight")]
    return [{"params": weights}, {"params": others, "lr": lr / 2}]


def make_data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [
        (
            torch.randn(16, 6, generator=gen, dtype=torch.float64),
            torch.randn(16, 1, generator=gen, dtype=torch.float64),
        )
        for _ in range(STEPS)
    ]


def train(model: nn.Module, opt: torch.optim.Optimizer) -> None:
    dtype = next(model.parameters()).dtype
    for x, y in make_data():
        opt.zero_grad(set_to_none=True)
        nn.functional.mse_loss(model(x.to(dtype)), y.to(dtype)).backward()
        opt.step()


def _run_cases(rank: int) -> dict[str, Any]:
    """Every case on this rank (inside :func:`multiprocess.run_on_ranks`)."""
    from torch.distributed.optim import ZeroRedundancyOptimizer

    results: dict[str, Any] = {}
    for case_id, name, kwargs in CASES:
        try:
            model = make_model(dtype_of(case_id))
            kwargs = dict(kwargs)
            lr = kwargs.pop("lr")
            zero = ZeroRedundancyOptimizer(
                param_groups(model, lr),
                optimizer_class=adaptim.get(name).cls,
                lr=lr,
                **kwargs,
            )
            train(model, zero)
            names = {id(p): n for n, p in model.named_parameters()}
            results[case_id] = dict(
                params=[p.detach().clone() for p in model.parameters()],
                local=[names[id(p)] for g in zero.optim.param_groups for p in g["params"]],
            )
        except Exception:  # report per case; the other cases still run
            results[case_id] = dict(error=traceback.format_exc())
    return results


@pytest.fixture(scope="module")
def zero_results() -> list[dict[str, Any]]:
    """The results of both ranks, one dict per rank."""
    return run_on_ranks(_run_cases)


def test_partition_is_uneven(zero_results):
    """The set-up covers the hard cases: ranks with different numbers of tensors, one of them
    holding the parameter without a gradient (otherwise the parity tests prove less)."""
    local = [rank["adam"]["local"] for rank in zero_results]
    assert local[0] == ["big.weight"] or local[1] == ["big.weight"], local
    assert sorted(local[0] + local[1]) == sorted(
        n for n, _ in make_model(torch.float64).named_parameters()
    )
    assert len(local[0]) != len(local[1])


@pytest.mark.parametrize(("case_id", "name", "kwargs"), CASES, ids=[c[0] for c in CASES])
def test_zero_matches_single_process(zero_results, case_id, name, kwargs):
    for rank, results in enumerate(zero_results):
        assert "error" not in results[case_id], f"rank {rank}: {results[case_id].get('error')}"
    model = make_model(dtype_of(case_id))
    start = [p.detach().clone() for p in model.parameters()]
    kwargs = dict(kwargs)
    lr = kwargs.pop("lr")
    train(model, adaptim.create(name, param_groups(model, lr), lr=lr, **kwargs))
    expected = [p.detach() for p in model.parameters()]
    moved = max((e - s).abs().max().item() for e, s in zip(expected, start, strict=True))
    assert moved > 1e-3, f"parameters barely moved ({moved:.1e}); the comparison is vacuous"
    for rank, results in enumerate(zero_results):
        for (pname, _), got, want in zip(
            model.named_parameters(), results[case_id]["params"], expected, strict=True
        ):
            diff = (got.double() - want.double()).abs().max().item()
            assert diff < TOL, f"{case_id}, rank {rank}: {pname} differs by {diff:.2e}"


def test_only_optimizers_with_global_statistics_look_for_a_partition():
    """Outside ZeRO the partition is ``None``; the flag is on exactly where a statistic spans tensors."""
    flagged = {i.name for i in adaptim.registered(kind="optimizer") if i.cls.global_statistics}
    assert {"adai", "adaiv2", "ahb_sgd", "ahb_adam", "ncg_sgd", "mada"} <= flagged
    assert not {"adam", "avgrad"} & flagged
    opt = adaptim.Adai([nn.Parameter(torch.zeros(2))], lr=0.1)
    assert opt.partition is None


# --- a consolidated checkpoint with 8-bit states ---------------------------------------------------


def _run_8_bit_checkpoint(rank: int, path: str) -> dict[str, Any]:
    """AdamW with 8-bit states under ZeRO: 3 steps, consolidate the state on rank 0 and save it,
    3 more steps; then a fresh model and ZeRO optimizer load the checkpoint and take the same 3.
    ``ZeroRedundancyOptimizer.load_state_dict`` writes each saved entry straight into the inner
    optimizer's ``state`` (codes under ``exp_avg_codes``), without its ``load_state_dict``."""
    import torch.distributed as dist
    from torch.distributed.optim import ZeroRedundancyOptimizer

    def build() -> tuple[nn.Module, ZeroRedundancyOptimizer]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(64, 128), nn.Tanh(), nn.Linear(128, 64))
        zero = ZeroRedundancyOptimizer(
            model.parameters(), optimizer_class=adaptim.AdamW, lr=1e-2, state_bits=8
        )
        return model, zero

    def steps(model: nn.Module, zero: ZeroRedundancyOptimizer, which: range) -> None:
        for step in which:
            gen = torch.Generator().manual_seed(step)
            x = torch.randn(16, 64, generator=gen)
            zero.zero_grad(set_to_none=True)
            model(x).square().mean().backward()
            zero.step()

    model, zero = build()
    steps(model, zero, range(3))
    zero.consolidate_state_dict(to=0)
    if rank == 0:
        torch.save(zero.state_dict(), path)
    dist.barrier()
    steps(model, zero, range(3, 6))

    resumed, resumed_zero = build()
    twin, twin_zero = build()
    steps(twin, twin_zero, range(3))  # the parameters at the checkpoint (deterministic)
    resumed.load_state_dict(twin.state_dict())
    resumed_zero.load_state_dict(torch.load(path, weights_only=True))
    steps(resumed, resumed_zero, range(3, 6))
    local = [p for g in resumed_zero.optim.param_groups for p in g["params"]]
    return dict(
        same=all(
            torch.equal(a, b) for a, b in zip(model.parameters(), resumed.parameters(), strict=True)
        ),
        quantized=sorted(
            k
            for p in local
            for k, v in resumed_zero.optim.state[p].items()
            if torch.is_tensor(v) and v.dtype == torch.uint8
        ),
    )


def test_a_consolidated_8_bit_checkpoint_resumes_exactly(tmp_path) -> None:
    results = run_on_ranks(_run_8_bit_checkpoint, str(tmp_path / "zero.pt"))
    assert all(r["same"] for r in results)
    assert sum(len(r["quantized"]) for r in results) == 4  # two weights, two moments each
    assert all(set(r["quantized"]) <= {"exp_avg", "exp_avg_sq"} for r in results)

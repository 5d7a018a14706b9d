"""Optimizers on FSDP2 (DTensor) parameters take the same steps as on plain parameters.

Two CPU processes (gloo) shard a small model with ``fully_shard``, train it for a few steps on the
same data, and gather the full parameters; a single-process run of the same model gives the
reference. The model has a layer whose first dimension is odd (uneven shards), a 1-row layer (one
rank holds no rows at all), a layer sharded along its second dimension (``Shard(1)``, so per-row sums
are split across ranks), and batch norm after weights without bias, so AdamP/SGDP's projection fires
(checked on the reference run). Adafactor and H-Fac, which factor the last two dimensions, run on a
variant with a 3-D weight sharded along its leading (batch) dimension. Everything runs in one spawn to
keep the file fast.
"""

from __future__ import annotations

import traceback
from typing import Any

import pytest
import torch
from torch import nn

import adaptim
from adaptim.optimizers import adamp as adamp_module
from adaptim.registry import registered
from multiprocess import run_on_ranks

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="needs torch.distributed with gloo",
)

STEPS = 10
TOL = 1e-6

# (case id, registry name, kwargs). Adam/AdamW run their elementwise foreach ops on DTensors
# directly; AdamP, SGDP and Adan reduce over shards with adaptim.core.distributed.
CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("adam", "adam", dict(lr=1e-2)),
    ("adam-amsgrad-l2", "adam", dict(lr=1e-2, amsgrad=True, weight_decay=0.1)),
    ("adamw", "adamw", dict(lr=1e-2, weight_decay=0.1)),
    ("adamw-per-tensor", "adamw", dict(lr=1e-2, weight_decay=0.1, foreach=False)),
    ("adamp", "adamp", dict(lr=1e-2, weight_decay=0.1)),
    ("adamp-nesterov-per-tensor", "adamp", dict(lr=1e-2, nesterov=True, foreach=False)),
    ("adamp-delta", "adamp", dict(lr=1e-2, delta=0.5, wd_ratio=0.5, weight_decay=0.2)),
    ("sgdp", "sgdp", dict(lr=0.1, momentum=0.9, weight_decay=0.1)),
    ("sgdp-nesterov-per-tensor", "sgdp", dict(lr=0.1, momentum=0.9, nesterov=True, foreach=False)),
    ("adan", "adan", dict(lr=1e-2, weight_decay=0.05)),
    ("adan-clip-noprox", "adan", dict(lr=1e-2, max_grad_norm=0.1, no_prox=True, weight_decay=0.05)),
    ("adan-clip-per-tensor", "adan", dict(lr=1e-2, max_grad_norm=0.1, foreach=False)),
    ("adan-maximize", "adan", dict(lr=1e-2, maximize=True)),  # the base class negates DTensor grads
    ("adamp-maximize-per-tensor", "adamp", dict(lr=1e-2, maximize=True, foreach=False)),
    # bf16 parameters: fp32 working copies of DTensors, written back shard by shard
    ("adamp-bf16", "adamp", dict(lr=1e-2, weight_decay=0.1)),
    ("sgdp-bf16", "sgdp", dict(lr=0.1, momentum=0.9)),
    ("adan-bf16", "adan", dict(lr=1e-2, max_grad_norm=0.1)),
    # MARS: per-tensor clipping norms summed over shards (matrices; vectors take the AdamW fallback)
    ("mars", "mars", dict(lr=1e-2, weight_decay=0.1)),
    (
        "mars-1d-amsgrad-per-tensor",
        "mars",
        dict(lr=1e-2, optimize_1d=True, amsgrad=True, foreach=False),
    ),
    ("mars-lion", "mars", dict(lr=1e-3, mars_type="mars-lion", gamma=0.5)),
    # KOALA: global norms, shared covariance; stepped with a closure (see train)
    ("koala_v", "koala_v", dict(lr=0.5)),
    ("koala_v-wd-per-tensor", "koala_v", dict(lr=0.5, weight_decay=0.1, foreach=False)),
    ("koala_m", "koala_m", dict(lr=0.5, weight_decay=0.1)),
    ("koala_m-per-tensor", "koala_m", dict(lr=0.5, foreach=False)),
    # MADA: elementwise update on local shards, hyper-gradient dot products summed over shards
    ("mada", "mada", dict(lr=1e-2)),
    ("mada-interp-per-tensor", "mada", dict(lr=1e-2, beta3=0.3, rho=0.5, c=0.5, foreach=False)),
    ("mada-interp-wd", "mada", dict(lr=1e-2, beta3=0.3, rho=0.5, c=0.5, weight_decay=0.1)),
    ("mada-lion", "mada", dict(lr=1e-2, lion=True)),
    # Adafactor, H-Fac: row statistics summed over the ranks of a Shard(1) layer, column statistics
    # over those of a Shard(0) layer, none over a sharded batch dim; RMS over all shards
    ("adafactor", "adafactor", dict()),
    ("adafactor-per-tensor", "adafactor", dict(foreach=False)),
    ("adafactor-beta1-wd", "adafactor", dict(beta1=0.9, weight_decay=0.1)),
    # an input feature that is always 0: a zero gradient column on rank 0's shard of the Shard(1)
    # layer, where V's clamp is active and the multi-tensor path builds U = G / sqrt(V) in full
    ("adafactor-zero-input", "adafactor", dict()),
    (
        "adafactor-manual-lr-per-tensor",
        "adafactor",
        dict(lr=1e-2, relative_step=False, scale_parameter=False, beta1=0.9, foreach=False),
    ),
    (
        "adafactor-paper-eps",
        "adafactor",
        dict(eps1_placement="add", decay_by_step_size=True, weight_decay=0.1, d=1.5),
    ),
    ("hfac", "hfac", dict(lr=1e-2)),
    ("hfac-wd-per-tensor", "hfac", dict(lr=1e-2, weight_decay=0.1, foreach=False)),
    # Adaptive heavy ball, NCG momentum: global norms (and NCG-PR's inner product) over all shards
    ("ahb_sgd", "ahb_sgd", dict(lr=0.05)),
    ("ahb_sgd-wd-per-tensor", "ahb_sgd", dict(lr=0.05, weight_decay=0.1, foreach=False)),
    ("ahb_adam", "ahb_adam", dict(lr=1e-2)),
    ("ahb_adam-wd-per-tensor", "ahb_adam", dict(lr=1e-2, weight_decay=0.1, foreach=False)),
    ("ncg_sgd", "ncg_sgd", dict(lr=0.05)),
    ("ncg_sgd-pr-wd", "ncg_sgd", dict(lr=0.05, beta_type="pr", weight_decay=0.1)),
    ("ncg_sgd-pr-per-tensor", "ncg_sgd", dict(lr=0.05, beta_type="pr", foreach=False)),
    # AdaRem: max |m| per tensor over all shards
    ("adarem", "adarem", dict(lr=0.05, weight_decay=0.1)),
    ("adarem-per-tensor", "adarem", dict(lr=0.05, foreach=False)),
    # fused=True on the local shards (compared with an eager single-process run): torch's fused
    # kernel (AdamW), compiled updates (the rest), a global statistic (Adan's clip, Adai's mean)
    ("adamw-fused", "adamw", dict(lr=1e-2, weight_decay=0.1, fused=True)),
    ("radam-fused", "radam", dict(lr=1e-2, weight_decay=0.1, fused=True)),
    ("adan-clip-fused", "adan", dict(lr=1e-2, max_grad_norm=0.1, fused=True)),
    ("adai-fused", "adai", dict(lr=0.1, fused=True)),
    ("adabelief-fused-bf16", "adabelief", dict(lr=1e-2, weight_decay=0.1, fused=True)),
]
# Other registered optimizers whose updates are elementwise (foreach ops on DTensors), checked in
# passing; the ones with whole-tensor reductions need adaptim.core.distributed first.
OTHERS = (
    "adabelief",
    "adai",
    "adaiv2",
    "adamax",
    "adapnm",
    "avgrad",
    "gensignsgd",
    "padam",
    "pnm",
    "radam",
    "acprop",
    "diffgrad",
    "sigsigngrad",
    "tanhsigngrad",
)
CASES += [
    (name, name, {"lr": 1e-2, **adaptim.get(name).test_kwargs})
    for name in OTHERS
    if name in adaptim.available()
]
# Cases also run with a state_dict round trip (DTensor states) half-way on the sharded side.
RESUMED = {
    "adamw",
    "adamp",
    "sgdp",
    "adan-clip-noprox",
    "mars",
    "koala_m",
    "mada",
    "mada-lion",
    "adafactor-beta1-wd",
    "hfac",
    "ahb_adam",
    "ncg_sgd-pr-wd",
    "adarem",
}
# Optimizers that factor the last two dimensions: trained on the model with a 3-D weight.
FACTORED = {"adafactor", "hfac"}
# Cases trained on data whose first input feature is always 0.
ZERO_INPUT = {"adafactor-zero-input"}
# Optimizers that keep no per-parameter state tensors (only global scalars).
NO_PARAM_STATE = {"koala_v"}


def dtype_of(case_id: str) -> torch.dtype:
    return torch.bfloat16 if case_id.endswith("-bf16") else torch.float64


class Heads(nn.Module):
    """A 3-D weight ``(heads, in, out)``: ``x -> [x W_h for each head]``, flattened. Adafactor and H-Fac
    factor its last two dims; FSDP2 shards it along dim 0, a batch dim of the factorization."""

    def __init__(self, heads: int, features_in: int, features_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(heads, features_in, features_out) / features_in**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bi,hio->bho", x, self.weight).flatten(1)


def make_model(
    seed: int = 0, dtype: torch.dtype = torch.float64, heads: bool = False
) -> nn.Sequential:
    """The test model; ``heads=True`` inserts a 3-D weight (3 heads: 2 on rank 0, 1 on rank 1)."""
    torch.manual_seed(seed)
    middle = (
        [Heads(3, 5, 2), nn.Linear(6, 7, bias=False)] if heads else [nn.Linear(5, 7, bias=False)]
    )
    return nn.Sequential(
        nn.Linear(6, 5, bias=False),  # odd first dim; sharded along dim 1 (see SHARD_DIM1)
        nn.BatchNorm1d(5),  # makes the weight above scale invariant
        nn.ReLU(),
        *middle,  # nn.Linear(5 or 6, 7): odd first dim, Shard(0): 4 rows on rank 0, 3 on rank 1
        nn.LayerNorm(7),
        nn.Tanh(),
        nn.Linear(7, 1),  # one row: rank 1 holds an empty shard
    ).to(dtype)


SHARD_DIM1 = "0.weight"


def make_data(
    steps: int = STEPS, zero_input: bool = False
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    data = [
        (
            torch.randn(16, 6, generator=gen, dtype=torch.float64),
            torch.randn(16, 1, generator=gen, dtype=torch.float64),
        )
        for _ in range(steps)
    ]
    if zero_input:
        for x, _ in data:
            x[:, 0] = 0.0
    return data


def train(
    model: nn.Module, make_opt, resume_at: int | None = None, zero_input: bool = False
) -> torch.optim.Optimizer:
    """``STEPS`` steps; with ``resume_at``, the optimizer is rebuilt from its state_dict there."""
    opt = make_opt(model.parameters())
    dtype = next(model.parameters()).dtype
    for step, (x, y) in enumerate(make_data(zero_input=zero_input)):
        x, y = x.to(dtype), y.to(dtype)
        if step == resume_at:
            saved = opt.state_dict()
            opt = make_opt(model.parameters())
            opt.load_state_dict(saved)
        if getattr(
            opt, "requires_closure", False
        ):  # KOALA: loss and gradients at the predicted point

            def closure(opt=opt, x=x, y=y):
                opt.zero_grad(set_to_none=True)
                loss = nn.functional.mse_loss(model(x), y)
                loss.backward()
                return loss

            opt.step(closure)
            continue
        opt.zero_grad(set_to_none=True)
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    return opt


class UnverifiedAdam(adaptim.Adam):
    """Adam with the DTensor flag set back to False: stands for any optimizer not verified here."""

    supports_dtensor = False


REFUSAL = "__refusal__"


def _refusal_case(mesh) -> dict[str, Any]:
    """Step an unverified optimizer on FSDP2 parameters: it must refuse before changing anything."""
    from torch.distributed.fsdp import fully_shard

    model = make_model()
    fully_shard(model, mesh=mesh)
    opt = UnverifiedAdam(model.parameters(), lr=1e-2)
    x, y = make_data(1)[0]
    nn.functional.mse_loss(model(x), y).backward()
    before = [p.to_local().detach().clone() for p in model.parameters()]
    message = None
    try:
        opt.step()
    except TypeError as err:
        message = str(err)
    unchanged = all(
        torch.equal(p.to_local(), b) for p, b in zip(model.parameters(), before, strict=True)
    )
    return dict(message=message, unchanged=unchanged, state_size=len(opt.state))


#: updates that reduce over each whole tensor inside the compiled function (projections, maxima,
#: row and column statistics, KOALA's norms)
FUSED_ON_SHARDS_REFUSED = tuple(
    i.name
    for i in registered(kind="optimizer")
    if i.cls.supports_dtensor and i.cls.supports_fused() and not i.cls.fused_on_shards
)


def _fused_shards_refusal(mesh, name: str) -> dict[str, Any]:
    """``fused=True`` on FSDP2 parameters for an update that reduces over whole tensors
    (``fused_on_shards = False``): refused before anything changes."""
    from torch.distributed.fsdp import fully_shard

    model = make_model()
    fully_shard(model, mesh=mesh)
    opt = adaptim.create(name, model.parameters(), lr=1e-2, fused=True)
    x, y = make_data(1)[0]
    nn.functional.mse_loss(model(x), y).backward()
    before = [p.to_local().detach().clone() for p in model.parameters()]
    message = None
    try:
        opt.step()
    except TypeError as err:
        message = str(err)
    unchanged = all(
        torch.equal(p.to_local(), b) for p, b in zip(model.parameters(), before, strict=True)
    )
    return dict(message=message, unchanged=unchanged, state_size=len(opt.state))


def _run_cases(rank: int) -> dict[str, Any]:
    """Every case on this rank (inside :func:`multiprocess.run_on_ranks`)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Shard

    from adaptim.core import fused

    fused.ARITY = fused.WHOLE_ARITY = 2  # this process only: small graphs compile fast
    mesh = init_device_mesh("cpu", (2,))
    results: dict[str, Any] = {}
    for case_id, name, kwargs in CASES:
        try:
            model = make_model(dtype=dtype_of(case_id), heads=name in FACTORED)
            dim1 = model.get_parameter(SHARD_DIM1)
            fully_shard(
                model,
                mesh=mesh,
                shard_placement_fn=lambda p, dim1=dim1: Shard(1) if p is dim1 else Shard(0),
            )
            placements = {
                n: (p.placements, tuple(p.to_local().shape)) for n, p in model.named_parameters()
            }
            opt = train(
                model,
                lambda params, name=name, kwargs=kwargs: adaptim.create(name, params, **kwargs),
                resume_at=STEPS // 2 if case_id in RESUMED else None,
                zero_input=case_id in ZERO_INPUT,
            )
            state_kinds = {  # per-parameter states (not KOALA's global scalars)
                type(v).__name__
                for p, s in opt.state.items()
                if isinstance(p, torch.Tensor)
                for v in s.values()
                if isinstance(v, torch.Tensor)
            }
            full = [p.full_tensor().detach().clone() for p in model.parameters()]
            results[case_id] = dict(params=full, placements=placements, state_kinds=state_kinds)
        except Exception:  # report per case; the other cases still run
            results[case_id] = dict(error=traceback.format_exc())
    try:
        results[REFUSAL] = _refusal_case(mesh)
    except Exception:
        results[REFUSAL] = dict(error=traceback.format_exc())
    for name in FUSED_ON_SHARDS_REFUSED:
        try:
            results[f"{REFUSAL}fused-{name}"] = _fused_shards_refusal(mesh, name)
        except Exception:
            results[f"{REFUSAL}fused-{name}"] = dict(error=traceback.format_exc())
    return results


def _run_cases_one_chunk_per_tensor(
    rank: int, cases: list[tuple[str, str, dict[str, Any]]]
) -> dict[str, Any]:
    """:func:`_run_cases` for ``cases`` only, with every tensor its own CPU chunk (cache blocking)."""
    from adaptim.core import base

    base.CPU_CHUNK_BYTES = 1
    CASES[:] = cases
    return _run_cases(rank)


def check_one_chunk_per_tensor(
    cases: list[tuple[str, str, dict[str, Any]]], dtensor_states: bool = True
) -> None:
    """Cache-blocked optimizers whose per-chunk statistics are reduced over shards: run ``cases``
    sharded with one CPU chunk per tensor (uneven, empty and dim-1 shards) and compare each with a
    single-process run (which moves the weights, so the comparison means something)."""
    results = run_on_ranks(_run_cases_one_chunk_per_tensor, cases)[0]
    for case_id, name, kwargs in cases:
        result = results[case_id]
        assert "error" not in result, result.get("error")
        if dtensor_states:
            assert result["state_kinds"] == {"DTensor"}, case_id
        model = make_model()
        start = [p.detach().clone() for p in model.parameters()]
        train(model, lambda params, n=name, kw=kwargs: adaptim.create(n, params, **kw))
        moved = max(
            (p - s).abs().max().item() for p, s in zip(model.parameters(), start, strict=True)
        )
        assert moved > 1e-3, case_id
        for got, want in zip(result["params"], model.parameters(), strict=True):
            assert (got - want).abs().max().item() < TOL, case_id


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models: threads only contend (the single-process runs are 50x slower with 2 threads)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sharded_results() -> dict[str, Any]:
    return run_on_ranks(_run_cases)[0]


def test_sharding_is_uneven_and_split_along_rows(sharded_results):
    """The set-up really covers the hard cases (otherwise the parity tests prove little)."""
    placements = sharded_results["adam"]["placements"]
    shard = torch.distributed.tensor.Shard
    assert placements["0.weight"] == ((shard(1),), (5, 3))  # per-row sums split over ranks
    assert placements["3.weight"] == ((shard(0),), (4, 5))  # rank 0 holds 4 of 7 rows
    assert placements["6.weight"] == ((shard(0),), (1, 7))  # rank 1 holds none (rank 0 saved)
    placements = sharded_results["adafactor"]["placements"]  # the model with a 3-D weight
    assert placements["0.weight"] == ((shard(1),), (5, 3))
    assert placements["3.weight"] == ((shard(0),), (2, 5, 2))  # 2 of 3 heads: a batch dim
    assert placements["4.weight"] == ((shard(0),), (4, 6))
    assert placements["7.weight"] == ((shard(0),), (1, 7))


@pytest.mark.parametrize(("case_id", "name", "kwargs"), CASES, ids=[c[0] for c in CASES])
def test_fsdp2_matches_single_process(sharded_results, case_id, name, kwargs):
    result = sharded_results[case_id]
    assert "error" not in result, result.get("error")
    assert result["state_kinds"] <= {"DTensor"}, result["state_kinds"]
    assert result["state_kinds"] or name in NO_PARAM_STATE, "no state tensors"
    model = make_model(dtype=dtype_of(case_id), heads=name in FACTORED)
    start = [p.detach().clone() for p in model.parameters()]
    eager = {k: v for k, v in kwargs.items() if k != "fused"}  # the reference runs eagerly
    train(
        model,
        lambda params: adaptim.create(name, params, **eager),
        zero_input=case_id in ZERO_INPUT,
    )
    expected = [p.detach() for p in model.parameters()]
    moved = max((e - s).abs().max().item() for e, s in zip(expected, start, strict=True))
    assert moved > 1e-3, f"parameters barely moved ({moved:.1e}); the comparison is vacuous"
    for (pname, _), got, want in zip(
        model.named_parameters(), result["params"], expected, strict=True
    ):
        if got.dtype == torch.bfloat16:  # forward/backward rounding in bf16: a few ulps
            torch.testing.assert_close(got, want, rtol=2**-6, atol=1e-4, msg=f"{case_id}: {pname}")
            continue
        diff = (got - want).abs().max().item()
        assert diff < TOL, f"{case_id}: {pname} differs by {diff:.2e} from the single-process run"


@pytest.mark.parametrize("name", ["adamp", "sgdp"])
def test_projection_fires_on_the_fsdp_model(name, monkeypatch):
    """The scale-invariant weights of the test model are projected, so the test above covers it."""
    seen = []
    original = adamp_module._project_

    def counting(u, p, norm, view, like, *rest):
        seen.append((tuple(like.shape), view))
        return original(u, p, norm, view, like, *rest)

    monkeypatch.setattr(adamp_module, "_project_", counting)
    model = make_model()
    kwargs = next(kw for _, n, kw in CASES if n == name)
    train(model, lambda params: adaptim.create(name, params, **kwargs))
    assert ((5, 6), "channel") in seen
    assert ((7, 5), "layer") in seen  # LayerNorm: the whole layer, not each row, is invariant


def test_unverified_optimizer_refuses_dtensor_parameters(sharded_results):
    """supports_dtensor = False: a clear TypeError naming DTensor, before any state or parameter changes."""
    result = sharded_results[REFUSAL]
    assert "error" not in result, result.get("error")
    assert result["message"] is not None, "step() on DTensor parameters did not raise TypeError"
    assert "DTensor" in result["message"] and "UnverifiedAdam" in result["message"]
    assert result["unchanged"], "parameters changed before the refusal"
    assert result["state_size"] == 0, "state was created before the refusal"


def test_unverified_optimizer_still_steps_plain_parameters():
    """The refusal is about DTensors only (so the test above checks the flag, not a broken class)."""
    model = make_model()
    start = [p.detach().clone() for p in model.parameters()]
    train(model, lambda params: UnverifiedAdam(params, lr=1e-2))
    assert any(not torch.equal(p, s) for p, s in zip(model.parameters(), start, strict=True))


@pytest.mark.parametrize("name", FUSED_ON_SHARDS_REFUSED)
def test_fused_is_refused_on_shards_where_the_update_reduces_over_tensors(sharded_results, name):
    result = sharded_results[f"{REFUSAL}fused-{name}"]
    assert "error" not in result, result.get("error")
    assert (
        result["message"] is not None and "fused=True does not support sharded" in result["message"]
    )
    assert result["unchanged"] and result["state_size"] == 0

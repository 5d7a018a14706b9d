"""8-bit states (``state_bits=8``) on FSDP2-sharded parameters, 2 gloo processes.

Each rank quantizes its local shard: codes shaped like the shard, one absmax per block of the shard.
Where every shard is a whole number of blocks (here a 512 x 16 weight, 256 rows = 16 blocks per
rank), the blocks are those of the unsharded tensor, so the sharded run equals a single-process
8-bit run. Its rows (16 elements) are not whole blocks, so the state dict gives these states as
float32 DTensors (a per-shard absmax has no place in a sharded checkpoint); loading quantizes them
again. A 64 x 512 weight (rows of two blocks) is saved with 8 bits: uint8 codes and an absmax of
shape (rows, blocks per row), both sharded by rows, through ``torch.distributed.checkpoint``; a
single process saves the same shapes, so DCP checkpoints move between it and FSDP2. The
threshold is the parameter's global size: the 512-element bias of the last layer keeps fp32 states
on both sides (its shards are 256 elements each).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import adaptim
from adaptim.core import state_precision as sp
from multiprocess import run_on_ranks

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

CASES = [("adamw", dict(lr=1e-2, weight_decay=0.1)), ("adan", dict(lr=1e-2))]
STEPS = 5


def make_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 512), nn.Tanh(), nn.Linear(512, 1))


def train(
    model: nn.Module, name: str, kwargs: dict[str, Any], resume_at: int | None = None
) -> torch.optim.Optimizer:
    """``STEPS`` steps; with ``resume_at``, the optimizer is rebuilt from its state dict there."""
    opt = adaptim.create(name, model.parameters(), state_bits=8, **kwargs)
    gen = torch.Generator().manual_seed(1)
    for step in range(STEPS):
        if step == resume_at:
            saved = opt.state_dict()
            opt = adaptim.create(name, model.parameters(), state_bits=8, **kwargs)
            opt.load_state_dict(saved)
        x, y = torch.randn(32, 16, generator=gen), torch.randn(32, 1, generator=gen)
        opt.zero_grad(set_to_none=True)
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    return opt


def _run(rank: int) -> dict[str, Any]:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (2,))
    results: dict[str, Any] = {}
    for name, kwargs in CASES:
        model = make_model()
        fully_shard(model, mesh=mesh)
        opt = train(model, name, kwargs)
        weight = model[0].weight
        state = opt.state[weight]
        saved = opt.state_dict()["state"][0]
        resumed = make_model()
        fully_shard(resumed, mesh=mesh)
        train(resumed, name, kwargs, resume_at=3)
        results[name] = dict(
            saved_kind=(type(saved["exp_avg"]).__name__, saved["exp_avg"].dtype),
            saved_absmax="exp_avg_absmax" in saved,
            resumed=[p.full_tensor().detach().clone() for p in resumed.parameters()],
            params=[p.full_tensor().detach().clone() for p in model.parameters()],
            codes_kind=type(state["exp_avg"]).__name__,
            local_codes=tuple(state["exp_avg"].to_local().shape),
            absmax=tuple(state["exp_avg_absmax"].shape),
            bias_quantized=sp.is_quantized(opt.state[model[2].bias], "exp_avg"),
            first_bias_quantized=sp.is_quantized(opt.state[model[0].bias], "exp_avg"),
        )
    return results


@pytest.fixture(scope="module")
def sharded() -> dict[str, Any]:
    return run_on_ranks(_run)[0]


@pytest.mark.parametrize(("name", "kwargs"), CASES, ids=[c[0] for c in CASES])
def test_sharded_8_bit_run_equals_a_single_process(sharded, name, kwargs) -> None:
    result = sharded[name]
    assert result["codes_kind"] == "DTensor"
    assert result["local_codes"] == (256, 16) and result["absmax"] == (16,)
    assert not result["bias_quantized"] and not result["first_bias_quantized"]  # 512, 1 element
    model = make_model()
    start = [p.detach().clone() for p in model.parameters()]
    opt = train(model, name, kwargs)
    assert sp.is_quantized(opt.state[model[0].weight], "exp_avg")
    moved = max((p - s).abs().max().item() for p, s in zip(model.parameters(), start, strict=True))
    assert moved > 1e-3
    for got, want in zip(result["params"], model.parameters(), strict=True):
        torch.testing.assert_close(got, want.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("name", "kwargs"), CASES, ids=[c[0] for c in CASES])
def test_sharded_8_bit_state_dict_is_float32_dtensors_and_resumes(sharded, name, kwargs) -> None:
    """A sharded checkpoint cannot place per-shard absmax: the state dict gives the 8-bit states of
    DTensor parameters as float32 DTensors, and loading quantizes them again. The run resumed at
    step 3 follows the uninterrupted one up to that re-encoding."""
    result = sharded[name]
    assert result["saved_kind"] == ("DTensor", torch.float32)
    assert not result["saved_absmax"]
    for got, want in zip(result["resumed"], result["params"], strict=True):
        # decode and encode again are not the identity (a block led by a negative value lands on
        # the signed map's -0.993, and its absmax with it): the two steps after the resume move
        # coordinates by at most a fifth of lr (1e-2) apart
        assert (got - want).abs().max().item() <= 2e-3


# --- 8-bit-sized distributed checkpoints -------------------------------------------------------------


def make_wide_model() -> nn.Sequential:
    """A 64 x 512 weight: every row is two blocks, so each rank's 32 rows are whole blocks (and
    a mix-up of rows and blocks in the saved (rows, blocks per row) absmax would show)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(512, 64), nn.Tanh(), nn.Linear(64, 1))


def _wide_steps(model: nn.Module, opt: torch.optim.Optimizer, steps: range) -> None:
    for step in steps:
        gen = torch.Generator().manual_seed(100 + step)
        x, y = torch.randn(16, 512, generator=gen), torch.randn(16, 1, generator=gen)
        opt.zero_grad(set_to_none=True)
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()


def _run_dcp(rank: int, path: str, single_path: str) -> dict[str, Any]:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_state_dict,
        set_state_dict,
    )
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (2,))

    def build(bits: int) -> tuple[nn.Module, torch.optim.Optimizer]:
        model = make_wide_model()
        fully_shard(model, mesh=mesh)
        return model, adaptim.AdamW(model.parameters(), lr=1e-2, state_bits=bits)

    def checkpoint(model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
        model_state, optim_state = get_state_dict(model, opt)
        return {"model": model_state, "optim": optim_state}

    model, opt = build(8)
    _wide_steps(model, opt, range(3))
    # gathered into plain tensors on rank 0, as for a checkpoint read without FSDP2
    full = StateDictOptions(full_state_dict=True, cpu_offload=True)
    gathered = get_state_dict(model, opt, options=full)
    saved = checkpoint(model, opt)
    weight_state = saved["optim"]["state"]["0.weight"]
    bias_keys = sorted(saved["optim"]["state"]["0.bias"])
    dcp.save(saved, checkpoint_id=path)
    _wide_steps(model, opt, range(3, 6))

    resumed, resumed_opt = build(8)
    state = checkpoint(resumed, resumed_opt)
    dcp.load(state, checkpoint_id=path)
    set_state_dict(
        resumed, resumed_opt, model_state_dict=state["model"], optim_state_dict=state["optim"]
    )
    _wide_steps(resumed, resumed_opt, range(3, 6))

    # the checkpoint a single process saved (below), loaded into this sharded run
    from_single, from_single_opt = build(8)
    state = checkpoint(from_single, from_single_opt)
    dcp.load(state, checkpoint_id=single_path)
    set_state_dict(
        from_single,
        from_single_opt,
        model_state_dict=state["model"],
        optim_state_dict=state["optim"],
    )
    from_single_absmax = from_single_opt.state[from_single[0].weight]["exp_avg_absmax"]
    _wide_steps(from_single, from_single_opt, range(3, 6))

    # a 32-bit optimizer cannot take an 8-bit checkpoint for its float32 moments: loud, not cast
    model32, opt32 = build(32)
    error = ""
    try:
        dcp.load(checkpoint(model32, opt32), checkpoint_id=path)
    except CheckpointException as exc:  # DCP gathers the ranks' errors (a BaseException)
        error = str(exc)
    return dict(
        codes=(type(weight_state["exp_avg_codes"]).__name__, weight_state["exp_avg_codes"].dtype),
        absmax=(
            type(weight_state["exp_avg_absmax"]).__name__,
            tuple(weight_state["exp_avg_absmax"].shape),
        ),
        float_key="exp_avg" in weight_state,
        bias=bias_keys,
        params=[p.full_tensor().detach().clone() for p in model.parameters()],
        resumed=[p.full_tensor().detach().clone() for p in resumed.parameters()],
        error=error,
        gathered=gathered if rank == 0 else None,
        from_single=[p.full_tensor().detach().clone() for p in from_single.parameters()],
        from_single_absmax=tuple(from_single_absmax.shape),
    )


def _single_process_dcp(path: str) -> tuple[list[torch.Tensor], dict[str, Any]]:
    """Three steps in this process, a distributed checkpoint of them at ``path`` (DCP without a
    process group), three more steps: the parameters, and the saved optimizer state's shapes."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model = make_wide_model()
    opt = adaptim.AdamW(model.parameters(), lr=1e-2, state_bits=8)
    _wide_steps(model, opt, range(3))
    model_state, optim_state = get_state_dict(model, opt)
    shapes = {k: tuple(v.shape) for k, v in optim_state["state"]["0.weight"].items() if k != "step"}
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=path)
    _wide_steps(model, opt, range(3, 6))
    return [p.detach().clone() for p in model.parameters()], shapes


def _resume_in_a_single_process(path: str) -> tuple[list[torch.Tensor], tuple[int, ...]]:
    """A single process resumes from the distributed checkpoint at ``path`` and takes steps 3-5:
    the parameters, and the shape of the loaded live absmax."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model = make_wide_model()
    opt = adaptim.AdamW(model.parameters(), lr=1e-2, state_bits=8)
    model_state, optim_state = get_state_dict(model, opt)
    state = {"model": model_state, "optim": optim_state}
    dcp.load(state, checkpoint_id=path)
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    absmax = tuple(opt.state[model[0].weight]["exp_avg_absmax"].shape)
    _wide_steps(model, opt, range(3, 6))
    return [p.detach().clone() for p in model.parameters()], absmax


@pytest.fixture(scope="module")
def dcp_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    path = tmp_path_factory.mktemp("dcp8")
    single_path = tmp_path_factory.mktemp("dcp8-single")
    single_params, single_saved = _single_process_dcp(str(single_path))
    results = run_on_ranks(_run_dcp, str(path), str(single_path))
    results[0]["single"] = single_params
    results[0]["single_saved"] = single_saved
    results[0]["single_from_sharded"] = _resume_in_a_single_process(str(path))
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    saved = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
    results[0]["saved"] = {
        key: (meta.properties.dtype, tuple(meta.size))
        for key, meta in saved.items()
        if key.startswith("optim.state.0.weight.") and isinstance(meta, TensorStorageMetadata)
    }
    return results[0]


def test_a_distributed_checkpoint_keeps_8_bits_and_resumes_exactly(dcp_run) -> None:
    """Rows of whole blocks: the codes are saved as a uint8 DTensor and the absmax as a DTensor of
    shape (rows, blocks per row), sharded as the codes are; the run resumed from the checkpoint is
    bit for bit the uninterrupted one."""
    assert dcp_run["codes"] == ("DTensor", torch.uint8)
    assert dcp_run["absmax"] == ("DTensor", (64, 2))
    assert not dcp_run["float_key"]
    assert dcp_run["bias"] == ["exp_avg", "exp_avg_sq", "step"]  # 64 elements: fp32
    for got, want in zip(dcp_run["resumed"], dcp_run["params"], strict=True):
        assert torch.equal(got, want)
    # in the checkpoint: the global codes and absmax of the weight's two moments, 8-bit sized
    assert dcp_run["saved"] == {
        "optim.state.0.weight.exp_avg_codes": (torch.uint8, (64, 512)),
        "optim.state.0.weight.exp_avg_absmax": (torch.float32, (64, 2)),
        "optim.state.0.weight.exp_avg_sq_codes": (torch.uint8, (64, 512)),
        "optim.state.0.weight.exp_avg_sq_absmax": (torch.float32, (64, 2)),
    }


def test_a_32_bit_optimizer_refuses_an_8_bit_distributed_checkpoint(dcp_run) -> None:
    assert "exp_avg" in dcp_run["error"] and "issing" in dcp_run["error"]


def test_a_gathered_8_bit_checkpoint_continues_in_a_single_process(dcp_run) -> None:
    """A full state dict (``full_state_dict=True``) gathers the codes and the (rows, blocks per
    row) absmax into plain tensors: a single process loads it (the blocks of whole rows are its own
    blocks) and continues as the sharded run does."""
    from torch.distributed.checkpoint.state_dict import set_state_dict

    model_state, optim_state = dcp_run["gathered"]
    weight_state = optim_state["state"]["0.weight"]
    assert weight_state["exp_avg_codes"].dtype == torch.uint8
    assert tuple(weight_state["exp_avg_absmax"].shape) == (64, 2)
    model = make_wide_model()
    opt = adaptim.AdamW(model.parameters(), lr=1e-2, state_bits=8)
    set_state_dict(model, opt, model_state_dict=model_state, optim_state_dict=optim_state)
    assert opt.state[model[0].weight]["exp_avg_absmax"].shape == (128,)
    _wide_steps(model, opt, range(3, 6))
    for got, want in zip(model.parameters(), dcp_run["params"], strict=True):
        torch.testing.assert_close(got.detach(), want, rtol=1e-5, atol=1e-6)


def test_a_distributed_checkpoint_moves_between_fsdp2_and_a_single_process(dcp_run) -> None:
    """A single process saves the absmax of rows of whole blocks as (rows, blocks per row), the
    shape FSDP2 saves: DCP loads an FSDP2 checkpoint into a single process and a single process's
    checkpoint into FSDP2 (2 ranks), both at 8 bits, and each resumed run continues as the
    uninterrupted one on the other side (the sharded run equals a single process here)."""
    assert dcp_run["single_saved"] == {
        "exp_avg_codes": (64, 512),
        "exp_avg_absmax": (64, 2),
        "exp_avg_sq_codes": (64, 512),
        "exp_avg_sq_absmax": (64, 2),
    }
    params, live_absmax = dcp_run["single_from_sharded"]
    assert live_absmax == (128,)  # the live absmax is 1-D again
    for got, want in zip(params, dcp_run["params"], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    assert dcp_run["from_single_absmax"] == (64,)  # a rank's 32 rows of two blocks
    for got, want in zip(dcp_run["from_single"], dcp_run["single"], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)

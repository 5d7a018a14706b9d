"""Conformance, over every registered optimizer: checkpoints that cross dtypes or optimizers.

* A checkpoint taken with fp64 parameters and loaded into the same model in fp32 (or bf16) continues,
  with states cast to the working dtype (fp32 for bf16), as ``torch.optim`` does.
* Another optimizer's state dict is refused at ``load_state_dict``, naming both optimizers, before
  anything changes; or, where it is compatible (``torch.optim.Adam``'s into ``adaptim.Adam``), it
  loads and training continues.
"""

from __future__ import annotations

import copy

import pytest
import torch

from test_conformance import IDS, INFOS, make, params_of, small_model, train

parametrize_infos = pytest.mark.parametrize("info", INFOS, ids=IDS)


@parametrize_infos
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fp64_checkpoint_continues_in_lower_precision(info, dtype):
    model64 = small_model(torch.float64)
    opt64 = make(info, model64.parameters())
    train(model64, opt64, range(3))
    checkpoint = copy.deepcopy(opt64.state_dict())

    model = copy.deepcopy(model64).to(dtype)
    opt = make(info, model.parameters())
    opt.load_state_dict(checkpoint)
    train(model, opt, range(3, 6))
    train(model64, opt64, range(3, 6))

    for p in model.parameters():
        for key, value in opt.state[p].items():
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                assert value.dtype == torch.float32, f"state {key!r} is {value.dtype}"
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    for p, p64 in zip(params_of(model), params_of(model64), strict=True):
        assert p.dtype == dtype
        torch.testing.assert_close(p.double(), p64, atol=tol, rtol=tol)


def _trained_state_dict(kind: str) -> tuple[torch.nn.Module, dict]:
    model = small_model(torch.float64)
    if kind == "torch.optim.Adam":
        other = torch.optim.Adam(model.parameters(), lr=1e-3)
    else:
        other = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    train(model, other, range(2))
    return model, other.state_dict()


@parametrize_infos
@pytest.mark.parametrize("kind", ["torch.optim.Adam", "torch.optim.SGD"])
def test_another_optimizers_state_dict_is_refused_or_continues(info, kind):
    model, foreign = _trained_state_dict(kind)
    opt = make(info, model.parameters())
    before = params_of(model)
    try:
        opt.load_state_dict(copy.deepcopy(foreign))
    except ValueError as error:
        assert kind in str(error) and info.cls.__name__ in str(error), str(error)
        assert all(len(opt.state[p]) == 0 for p in model.parameters()), "state changed"
        assert all(torch.equal(a, b) for a, b in zip(before, params_of(model), strict=True)), (
            "parameters changed"
        )
        return
    # Accepted: the next steps must work and keep the parameters finite.
    train(model, opt, range(2, 5))
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_torch_adams_state_dict_continues_in_adaptim_adam():
    model, foreign = _trained_state_dict("torch.optim.Adam")
    twin = copy.deepcopy(model)
    reference = torch.optim.Adam(twin.parameters(), lr=1e-3)
    reference.load_state_dict(copy.deepcopy(foreign))
    import adaptim

    opt = adaptim.Adam(model.parameters(), lr=1e-3)
    opt.load_state_dict(foreign)
    train(model, opt, range(2, 6))
    train(twin, reference, range(2, 6))
    for a, b in zip(params_of(model), params_of(twin), strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)

"""Conformance, over every registered optimizer: parameters of mixed dtypes in one param group.

A group may hold fp32, fp64, bf16, fp16 and complex parameters in any order (a model with a bf16
trunk and fp32 norms, a complex layer beside real ones). Each parameter must then train exactly as it
does when it has a param group of its own: same values, same states. The reference below puts every
parameter in its own group of one optimizer, so statistics over all parameters (Adai, the heavy-ball
rules, KOALA, MADA) see the same parameters in both runs.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from test_conformance import IDS, INFOS, make

F32, F64, BF16, F16, C64 = (
    torch.float32,
    torch.float64,
    torch.bfloat16,
    torch.float16,
    torch.complex64,
)
_ALL = (F32, F64, BF16, F16, C64)

#: optimizers that learn hyperparameters per param group: frozen here, since the reference gives every
#: parameter a group of its own (their learning is tested in their own files)
PER_GROUP_LEARNING = {"mada": {"hyper_lr": (0.0,) * 5}}


def _every_ordered_pair(kinds: tuple[torch.dtype, ...]) -> list[torch.dtype]:
    """A sequence in which every ordered pair of ``kinds`` (a dtype followed by another, or by
    itself) appears next to each other at least once (an Eulerian circuit of the complete digraph
    with loops, found greedily)."""
    unused = {a: list(kinds) for a in kinds}
    order, stack = [], [kinds[0]]
    while stack:
        node = stack[-1]
        if unused[node]:
            stack.append(unused[node].pop())
        else:
            order.append(stack.pop())
    return order[::-1]


def _params(dtypes: list[torch.dtype]) -> tuple[list[torch.nn.Parameter], list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    params, targets = [], []
    for i, dtype in enumerate(dtypes):
        shape = (3, 4) if i % 2 else (5,)
        real_dtype = torch.float32 if dtype.is_complex else dtype
        # Small values, so a step of ~1e-3 is above bf16's resolution and a lost update shows.
        value = 0.05 * torch.randn(*shape, 2, generator=gen) if dtype.is_complex else None
        if value is None:
            value = 0.05 * torch.randn(*shape, generator=gen)
            params.append(torch.nn.Parameter(value.to(real_dtype)))
        else:
            params.append(torch.nn.Parameter(torch.view_as_complex(value).to(dtype)))
        targets.append(torch.randn(params[-1].shape, generator=gen, dtype=params[-1].dtype))
    return params, targets


def _train(opt: torch.optim.Optimizer, params, targets, steps: int = 4) -> None:
    for step in range(steps):

        def closure(step=step):
            # Gradients set directly: one loss over every dtype would need casts in the graph.
            opt.zero_grad()
            loss = torch.zeros((), dtype=torch.float64)
            for i, (p, t) in enumerate(zip(params, targets, strict=True)):
                noise = torch.randn(
                    p.shape, generator=torch.Generator().manual_seed(100 * step + i), dtype=p.dtype
                )
                diff = p.detach() - t
                p.grad = diff + 0.1 * noise
                loss += 0.5 * diff.abs().double().pow(2).sum()
            return loss

        opt.step(closure)


@pytest.mark.parametrize("info", INFOS, ids=IDS)
def test_mixed_dtypes_in_one_group_train_each_param_as_alone(info):
    kinds = _ALL if info.supports_complex else _ALL[:-1]
    dtypes = _every_ordered_pair(kinds)
    mixed, targets = _params(dtypes)
    alone = [torch.nn.Parameter(p.detach().clone()) for p in mixed]
    initial = [p.detach().clone() for p in mixed]

    frozen = PER_GROUP_LEARNING.get(info.name, {})
    opt_mixed = make(info, mixed, **frozen)
    lr = info.test_kwargs.get("lr", info.defaults.get("lr"))
    opt_alone = make(info, [{"params": [p], "lr": lr} for p in alone], **frozen)
    _train(opt_mixed, mixed, targets)
    _train(opt_alone, alone, targets)

    for i, (m, a, p0) in enumerate(zip(mixed, alone, initial, strict=True)):
        where = f"parameter {i} ({m.dtype}, after {dtypes[i - 1] if i else 'nothing'})"
        assert m.dtype == dtypes[i], where
        assert not torch.equal(a, p0), f"{where}: the reference did not move; the test is too weak"
        torch.testing.assert_close(m, a, atol=0, rtol=1e-6, msg=lambda s, w=where: f"{w}: {s}")
        for key, value in opt_alone.state[a].items():
            if isinstance(value, torch.Tensor):
                got = opt_mixed.state[m][key]
                assert got.dtype == value.dtype, f"{where}: state {key!r} dtype"
                torch.testing.assert_close(got, value, atol=0, rtol=1e-6)


def test_the_pair_sequence_covers_every_ordered_pair():
    seq = _every_ordered_pair(_ALL)
    pairs = set(itertools.pairwise(seq))
    assert pairs == {(a, b) for a in _ALL for b in _ALL}

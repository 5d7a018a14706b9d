"""``state_bits=8``: 8-bit block-wise optimizer states (issue 10; core/state_precision.py).

Over every registered optimizer that declares quantized states, the 8-bit step is checked against
its definition: decode the states (the reference table codec), run the optimizer's own fp32 update,
encode the result (the reference ``searchsorted`` encoder over exact midpoints). The parts are made
small here (1,024 elements), so that a few tensors exercise what a model's do at real sizes: several
tensors per part, tensors cut into pieces at block boundaries, a partial last block, tensors below
the threshold that keep fp32 states, bf16 parameters.
"""

from __future__ import annotations

import copy
import io
import math
import pickle
import weakref
from typing import Any

import pytest
import torch

import adaptim
import adaptim.core.state_precision as sp
from adaptim.core.quantization import BLOCK, MIN_QUANTIZED_NUMEL, quantize_blockwise
from test_conformance import INFOS, make

QUANTIZING = [i for i in INFOS if i.cls.quantized_states]
#: Adai updates v in a first pass over all parameters (for its global mean) and encodes it there;
#: its update decodes v again, so it sees v rounded to its code: not the fp32 step on decoded states
TWO_PASS = {"adai", "adaiv2"}
NOT_QUANTIZING = [i for i in INFOS if not i.cls.quantized_states]


@pytest.fixture(autouse=True)
def small_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sp, "CPU_PART_ELEMENTS", 1024)


def _params(seed: int = 0, bf16: bool = True) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    shapes = [(80, 64), (5000,), (7,), (3, 1500)]  # 5,000 = 19 blocks + 136; (7,) stays fp32
    params = [torch.nn.Parameter(0.1 * torch.randn(s, generator=gen)) for s in shapes]
    if bf16:
        params.append(torch.nn.Parameter((0.1 * torch.randn(64, 80, generator=gen)).bfloat16()))
    return params


def _grads(params: list[torch.nn.Parameter], step: int, scale: float = 1.0) -> None:
    gen = torch.Generator().manual_seed(100 + step)
    for p in params:
        # magnitudes spread over decades, so that blocks hold values far below their absmax
        g = torch.randn(p.shape, generator=gen) * torch.exp(2 * torch.randn(p.shape, generator=gen))
        p.grad = (scale * g).to(p.dtype)


def _quantized_keys(opt: torch.optim.Optimizer) -> set[tuple[int, str]]:
    return {
        (i, key)
        for i, p in enumerate(opt.param_groups[0]["params"])
        for key in type(opt).quantized_states
        if sp.is_quantized(opt.state.get(p, {}), key)
    }


def _closure_for(info: Any) -> bool:
    return bool(getattr(info.cls, "requires_closure", False))


#: steps on the gradients' graph (backward(create_graph=True)): the Hessian-vector product is exact,
#: so a step needs no closure and two runs from the same point agree
GRAPH_DRIVEN = {"sgdhess"}


def _set_grads(info: Any, params: list[torch.nn.Parameter], step: int) -> None:
    """This step's gradients: :func:`_grads`, or for a graph-driven optimizer those of a random
    separable quadratic with gradients of the same spread, with their graph."""
    if info.name not in GRAPH_DRIVEN:
        _grads(params, step)
        return
    gen = torch.Generator().manual_seed(100 + step)
    loss = torch.zeros(())
    for p in params:
        curvature = torch.rand(p.shape, generator=gen) + 0.5
        g = torch.randn(p.shape, generator=gen) * torch.exp(2 * torch.randn(p.shape, generator=gen))
        loss = loss + (curvature * p.float() ** 2 + g * p.float()).sum()
        p.grad = None
    loss.backward(create_graph=True)


@pytest.mark.parametrize("path", ["foreach", "per-tensor"])
@pytest.mark.parametrize("info", QUANTIZING, ids=lambda i: i.name)
def test_step_is_decode_fp32_update_encode(info: Any, path: str) -> None:
    """Each 8-bit step equals: the 32-bit optimizer loaded with the decoded states, one step, and
    its new states encoded by the reference encoder (codes equal, absmax equal)."""
    if (_closure_for(info) and info.name not in GRAPH_DRIVEN) or info.name in TWO_PASS:
        pytest.skip("needs a closure" if _closure_for(info) else "two passes (test below)")
    foreach = path == "foreach"
    params8 = _params()
    opt8 = make(info, params8, state_bits=8, foreach=foreach)
    signed_of = type(opt8).quantized_states
    for step in range(4):
        params32 = [torch.nn.Parameter(p.detach().clone()) for p in params8]
        opt32 = make(info, params32, foreach=foreach)
        if step:
            opt32.load_state_dict(sp.dequantized_state_dict(opt8.state_dict(), signed_of))
        _set_grads(info, params8, step)
        _set_grads(info, params32, step)
        before = {
            (i, k): v.clone()
            for i, p in enumerate(params8)
            for k, v in opt8.state.get(p, {}).items()
            if torch.is_tensor(v)
        }
        opt8.step()
        opt32.step()
        for p8, p32 in zip(params8, params32, strict=True):
            torch.testing.assert_close(p8, p32, rtol=1e-6, atol=1e-7)
        for i, (p8, p32) in enumerate(zip(params8, params32, strict=True)):
            s8, s32 = opt8.state[p8], opt32.state[p32]
            for key, signed in signed_of.items():
                if key not in s8:
                    continue
                quantized = p8.numel() >= MIN_QUANTIZED_NUMEL
                assert sp.is_quantized(s8, key) == quantized, (i, key)
                if not quantized:
                    continue
                assert s8[sp.absmax_key(key)].dtype == torch.float32
                if key in opt8._unwritten_states(s8):  # read, not written: codes kept as they were
                    if (i, key) in before:
                        assert torch.equal(s8[key], before[i, key])
                        assert torch.equal(s8[sp.absmax_key(key)], before[i, sp.absmax_key(key)])
                    else:  # created this step: still the zeros it started as
                        assert not s8[sp.absmax_key(key)].any()
                    continue
                codes, absmax = quantize_blockwise(
                    s32[key].float().reshape(-1).contiguous(), signed=signed
                )
                torch.testing.assert_close(s8[sp.absmax_key(key)], absmax, rtol=1e-6, atol=0)
                mismatch = (s8[key].reshape(-1) != codes).float().mean().item()
                assert mismatch <= 1e-3, (i, key)
    assert _quantized_keys(opt8), "nothing was quantized"


@pytest.mark.parametrize("name", sorted(TWO_PASS))
def test_two_pass_optimizers_train_as_with_32_bits(name: str) -> None:
    """Adai 8-bit on a least-squares problem ends within 5% of the 32-bit loss."""
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(256, 64, generator=gen), torch.randn(256, 128, generator=gen)
    losses = []
    for bits in (32, 8):
        w = torch.nn.Parameter(torch.zeros(64, 128))
        opt = make(adaptim.get(name), [w], state_bits=bits, lr=0.05)
        for _ in range(100):
            w.grad = None
            loss = (a @ w - b).square().mean()
            loss.backward()
            opt.step()
        assert sp.is_quantized(opt.state[w], "exp_avg") == (bits == 8)
        losses.append((a @ w - b).square().mean().item())
    assert losses[1] <= 1.05 * losses[0]


@pytest.mark.parametrize("info", QUANTIZING, ids=lambda i: i.name)
def test_state_memory_is_about_one_byte_per_element(info: Any) -> None:
    # a matrix and a vector: factored optimizers keep full moments for vectors only
    params = [torch.nn.Parameter(torch.randn(256, 256)), torch.nn.Parameter(torch.randn(8192))]
    opt = make(info, params, state_bits=8)
    _grads(params, 0)
    if _closure_for(info):
        opt.step(lambda: sum((p**2).sum() for p in params))
    else:
        opt.step()
    found = 0
    for p in params:
        state = opt.state[p]
        for key in info.cls.quantized_states:
            if sp.is_quantized(state, key):
                found += 1
                nbytes = state[key].numel() + 4 * state[sp.absmax_key(key)].numel()
                assert nbytes / p.numel() == 1 + 4 / BLOCK
    assert found


def test_two_moment_state_bytes_per_parameter() -> None:
    """The issue's target: Adam's states at most 2.1 bytes per parameter with 8 bits (fp32: 8)."""
    params = [torch.nn.Parameter(torch.randn(1000, 1000))]
    opt = adaptim.AdamW(params, state_bits=8)
    params[0].grad = torch.randn(1000, 1000)
    opt.step()
    total = sum(
        t.numel() * t.element_size() for t in opt.state[params[0]].values() if torch.is_tensor(t)
    )
    assert total / params[0].numel() <= 2.1


@pytest.mark.parametrize("info", NOT_QUANTIZING, ids=lambda i: i.name)
def test_optimizers_without_moments_refuse_8_bits(info: Any) -> None:
    with pytest.raises(ValueError, match="state_bits=8"):
        make(info, _params(), state_bits=8)


@pytest.mark.parametrize("bad", [16, 0, 8.0, "8", None, True])
def test_bad_state_bits_is_refused_naming_it(bad: Any) -> None:
    params = _params()
    with pytest.raises(ValueError, match=r"state_bits.*accepted values: one of 32, 8"):
        adaptim.AdamW(params, state_bits=bad)
    opt = adaptim.AdamW(params)
    with pytest.raises(ValueError, match="state_bits"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(3))], "state_bits": bad})
    assert len(opt.param_groups) == 1


def test_zero_gradient_means_zero_update() -> None:
    """Parameters whose gradient is always exactly 0 stay where fp32 leaves them (bitsandbytes
    0.50's CPU quantizer fails this: it never maps 0 to code 0)."""
    gen = torch.Generator().manual_seed(0)
    start = torch.randn(64, 128, generator=gen)
    mask = torch.rand(64, 128, generator=gen) < 0.5
    results = []
    for bits in (32, 8):
        p = torch.nn.Parameter(start.clone())
        opt = adaptim.Adam([p], lr=1e-2, state_bits=bits)
        g = torch.Generator().manual_seed(1)
        for _ in range(200):
            p.grad = torch.randn(p.shape, generator=g) * mask
            opt.step()
        results.append(p.detach())
    assert torch.equal(results[0][~mask], start[~mask])
    assert torch.equal(results[1][~mask], start[~mask])


@pytest.mark.parametrize("name", ["adamw", "adabelief", "adan", "radam", "adai", "mars"])
def test_never_non_finite_where_fp32_is_finite(name: str) -> None:
    """Gradients from 0 and denormals to 1e30 (whose squares overflow fp32), mixed in blocks."""
    info = adaptim.get(name)
    gen = torch.Generator().manual_seed(0)
    exponents = torch.randint(-45, 31, (64, 96), generator=gen).float()
    start = torch.randn(64, 96, generator=gen)
    runs = []
    for bits in (32, 8):
        p = torch.nn.Parameter(start.clone())
        opt = make(info, [p], state_bits=bits)
        g = torch.Generator().manual_seed(1)
        for step in range(30):
            grad = torch.randn(p.shape, generator=g) * torch.pow(10.0, exponents)
            grad[:, :4] = 0.0
            p.grad = torch.roll(grad, step, dims=1)
            opt.step()
        runs.append(p.detach())
    finite32 = torch.isfinite(runs[0])
    assert finite32.any()
    assert torch.isfinite(runs[1][finite32]).all()


def _save_load(obj: Any) -> Any:
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("name", ["adamw", "adan", "adabelief", "adafactor"])
def test_checkpoint_mid_run_continues_bit_identically(name: str) -> None:
    info = adaptim.get(name)

    def fresh() -> tuple[list[torch.nn.Parameter], torch.optim.Optimizer]:
        params = _params()
        return params, make(info, params, state_bits=8)

    params, opt = fresh()
    for step in range(6):
        _grads(params, step)
        opt.step()
        if step == 2:
            saved = _save_load({"opt": opt.state_dict(), "params": [p.detach() for p in params]})
    params2, opt2 = fresh()
    with torch.no_grad():
        for p, v in zip(params2, saved["params"], strict=True):
            p.copy_(v)
    opt2.load_state_dict(saved["opt"])
    for p in params2:
        state = opt2.state[p]
        for key in info.cls.quantized_states:
            if sp.is_quantized(state, key):
                # not cast to the bf16 parameter's dtype, as torch.optim would
                assert state[sp.absmax_key(key)].dtype == torch.float32
    for step in range(3, 6):
        _grads(params2, step)
        opt2.step()
    for a, b in zip(params, params2, strict=True):
        assert torch.equal(a, b)
    for a, b in zip(params, params2, strict=True):
        for key, value in opt.state[a].items():
            other = opt2.state[b][key]
            assert torch.equal(value, other) if torch.is_tensor(value) else value == other


def test_checkpoints_move_between_precisions_and_to_torch_optim() -> None:
    params = _params(bf16=False)
    opt32 = adaptim.AdamW(params, lr=1e-2, weight_decay=0.1)
    for step in range(3):
        _grads(params, step)
        opt32.step()
    # fp32 checkpoint into an 8-bit optimizer: quantized on load
    opt8 = adaptim.AdamW(params, lr=1e-2, weight_decay=0.1, state_bits=8)
    opt8.load_state_dict(_save_load(opt32.state_dict()))
    assert _quantized_keys(opt8) == {(i, k) for i in (0, 1, 3) for k in ("exp_avg", "exp_avg_sq")}
    state = opt8.state[params[0]]
    decoded = sp.dequantized_state_dict(opt8.state_dict(), adaptim.AdamW.quantized_states)
    for key in ("exp_avg", "exp_avg_sq"):
        exact = opt32.state[params[0]][key]
        back = decoded["state"][0][key]
        assert back.dtype == torch.float32 and back.shape == exact.shape
        # one code of the dynamic map is at most a few percent of the block's absmax away
        absmax = state[sp.absmax_key(key)].repeat_interleave(BLOCK)[: exact.numel()]
        assert ((back - exact).abs().reshape(-1) <= 0.04 * absmax + 1e-12).all()
    # an 8-bit checkpoint into a 32-bit optimizer: decoded on load
    back32 = adaptim.AdamW(params, lr=1e-2, weight_decay=0.1)
    back32.load_state_dict(_save_load(opt8.state_dict()))
    assert not _quantized_keys(back32)
    assert torch.equal(back32.state[params[0]]["exp_avg"], decoded["state"][0]["exp_avg"])
    assert "exp_avg_absmax" not in back32.state[params[0]]
    # the exported state continues in torch.optim.AdamW exactly as in adaptim's 32-bit AdamW
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    ref = torch.optim.AdamW(twins, lr=1e-2, weight_decay=0.1, foreach=False)
    ref.load_state_dict(copy.deepcopy(decoded))
    for step in range(3, 5):
        _grads(params, step)
        for p, t in zip(params, twins, strict=True):
            t.grad = p.grad.clone()
        back32.step()
        ref.step()
    for p, t in zip(params, twins, strict=True):
        torch.testing.assert_close(p, t, rtol=1e-6, atol=1e-7)


def test_switching_a_group_between_precisions_mid_run() -> None:
    params = _params(bf16=False)
    opt = adaptim.RAdam(params, lr=1e-2)
    _grads(params, 0)
    opt.step()
    opt.param_groups[0]["state_bits"] = 8
    _grads(params, 1)
    opt.step()
    assert _quantized_keys(opt)
    opt.param_groups[0]["state_bits"] = 32
    _grads(params, 2)
    opt.step()
    assert not _quantized_keys(opt)
    assert all(torch.isfinite(p).all() for p in params)


def test_stable_embedding_recipe_per_group_precision() -> None:
    """bitsandbytes' "stable embedding": 32-bit states for the embedding, 8-bit for the rest, by
    param group (no global override registry)."""
    emb = torch.nn.Embedding(1000, 16)
    lin = torch.nn.Linear(128, 64)
    opt = adaptim.AdamW(
        [{"params": emb.parameters(), "state_bits": 32}, {"params": lin.parameters()}],
        state_bits=8,
    )
    x = torch.randint(0, 1000, (4, 8))
    loss = lin(emb(x).reshape(4, 128)).square().mean()
    loss.backward()
    opt.step()
    assert opt.state[emb.weight]["exp_avg"].dtype == torch.float32
    assert opt.state[lin.weight]["exp_avg"].dtype == torch.uint8
    assert opt.state[lin.bias]["exp_avg"].dtype == torch.float32  # 64 elements: below threshold


def test_restart_zeroes_quantized_moments() -> None:
    params = _params(bf16=False)
    opt = adaptim.Adan(params, state_bits=8)
    for step in range(3):
        _grads(params, step)
        opt.step()
    opt.restart_opt()
    for p in params:
        state = opt.state[p]
        for key in ("exp_avg", "exp_avg_sq", "exp_avg_diff"):
            decoded = dict(state)
            if sp.is_quantized(state, key):
                sp.dequantize_state_(decoded, key, adaptim.Adan.quantized_states[key])
            assert torch.equal(decoded[key], torch.zeros_like(decoded[key], dtype=torch.float32))


@pytest.mark.usefixtures("small_fused_pieces")
@pytest.mark.parametrize("name", ["adamw", "radam", "adan", "koala_m", "sgdhess"])
def test_fused_8_bit_equals_eager_8_bit(name: str) -> None:
    """Also for the rules driven by a closure (KOALA-M's velocity, SGDHess's momentum, whose
    finite-difference product needs a gradient that depends on the point)."""
    info = adaptim.get(name)
    runs = []
    for fused in (False, True):
        params = _params()
        opt = make(info, params, state_bits=8, fused=fused)
        for step in range(4):
            if getattr(info.cls, "requires_closure", False):

                def closure(
                    step: int = step, params: list[torch.nn.Parameter] = params
                ) -> torch.Tensor:
                    _grads(params, step)
                    for p in params:
                        p.grad += (0.1 * p.detach()).to(p.dtype)
                    return torch.tensor(1.0 / (1 + step))

                opt.step(closure)
            else:
                _grads(params, step)
                opt.step()
        runs.append((params, opt))
    (pa, oa), (pb, ob) = runs
    for a, b in zip(pa, pb, strict=True):
        # compiled float32 rounds differently (fused multiply-adds): a state that lands on
        # another code after that moves its coordinate by a code's step in the next update
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        for key in info.cls.quantized_states:
            if sp.is_quantized(oa.state[a], key):
                mismatch = (oa.state[a][key] != ob.state[b][key]).float().mean().item()
                assert mismatch <= 1e-3


def test_matches_torchao_adamw8bit() -> None:
    """Parity with torchao's AdamW8bit on CPU (same dynamic maps, blocks of 256, exact nearest
    code): within 1e-6 after 20 steps, but for coordinates whose state rounded to the other
    neighbouring code in one implementation."""
    torchao_optim = pytest.importorskip("torchao.optim")
    gen = torch.Generator().manual_seed(0)
    start = 0.1 * torch.randn(64, 256, generator=gen)
    ours = torch.nn.Parameter(start.clone())
    theirs = torch.nn.Parameter(start.clone())
    opt = adaptim.AdamW([ours], lr=1e-3, weight_decay=0.01, state_bits=8)
    ref = torchao_optim.AdamW8bit([theirs], lr=1e-3, weight_decay=0.01, block_size=256)
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        grad = torch.randn(ours.shape, generator=g)
        ours.grad, theirs.grad = grad.clone(), grad.clone()
        opt.step()
        ref.step()
    # torchao's step is compiled (other float32 roundings): once in a while a state lands on the
    # neighbouring code (here one exp_avg_sq code of 16,384 at step 16), which moves that one
    # coordinate by a few 1e-6 over the following steps; every other one stays within 1e-6
    diff = (ours - theirs).abs()
    assert (diff > 1e-6).sum().item() <= 2
    assert diff.max().item() <= 1e-4


def test_compiled_step_equals_eager_with_8_bits() -> None:
    """``torch.compile(opt.step)`` with 8-bit states: the codec runs as opaque ops (the eager codec)
    inside the compiled step, which compiles a few graphs (inlining the codec took 11 minutes)
    and equals the eager step. Two tensors: one of five parts, the last a partial block, and one
    that keeps fp32 states (each part is code in the traced step: the four tensors of
    :func:`_params` took 45 s to compile)."""
    runs = []
    counters = torch._dynamo.utils.counters["stats"]
    for compiled in (False, True):
        torch._dynamo.reset()
        counters.clear()
        params = _params(bf16=False)[1:3]  # (5000,) and (7,)
        opt = adaptim.AdamW(params, lr=1e-2, state_bits=8)
        step = torch.compile(opt.step) if compiled else opt.step
        for i in range(4):
            _grads(params, i)
            step()
        runs.append(params)
    assert 1 <= counters["unique_graphs"] <= 4
    for a, b in zip(*runs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_a_compiled_step_calls_the_codec_as_opaque_ops() -> None:
    """Under ``torch.compile(opt.step)`` the codec is two custom ops in the graph, not its
    elementwise ops traced inline (which made one graph that took 11 minutes to compile)."""
    graphs: list[torch.fx.GraphModule] = []

    def capture(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    params = _params(bf16=False)
    opt = adaptim.AdamW(params, lr=1e-2, state_bits=8)
    step = torch.compile(opt.step, backend=capture)
    for i in range(2):
        _grads(params, i)
        step()
    targets = [str(n.target) for gm in graphs for n in gm.graph.nodes if n.op == "call_function"]
    assert any("quantize_state_blocks_" in t and "dequantize" not in t for t in targets)
    assert any("dequantize_state_blocks_" in t for t in targets)
    assert not any("where" in t for t in targets), "the codec was traced inline"


def test_8_bit_states_are_smaller_in_a_checkpoint() -> None:
    model = torch.nn.Linear(512, 512)
    sizes = []
    for bits in (32, 8):
        opt = adaptim.AdamW(model.parameters(), state_bits=bits)
        model(torch.randn(2, 512)).sum().backward()
        opt.step()
        buf = io.BytesIO()
        torch.save(opt.state_dict(), buf)
        sizes.append(buf.tell())
    assert sizes[1] < 0.3 * sizes[0]
    assert math.isclose(sizes[0] / (512 * 513 * 8), 1.0, rel_tol=0.05)


_DOC_NAMES = {
    "AdaptiveHeavyBallAdam": "AHB-Adam",
    "AdaptiveHeavyBallSGD": "AHB-SGD",
    "NCGMomentumSGD": "NCG momentum",
    "SigSignGrad": "sigSignGrad",
    "TanhSignGrad": "tanhSignGrad",
    "HFac": "H-Fac",
    "AdaiV2": "Adai",
    "DiffGrad": "diffGrad",
}


def test_the_docs_table_lists_every_quantized_state() -> None:
    """docs/state_bits.md's table names each class with all of its quantized states."""
    from pathlib import Path

    text = (Path(__file__).parents[1] / "docs" / "state_bits.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and "`" in line]
    for info in QUANTIZING:
        name = _DOC_NAMES.get(info.cls.__name__, info.cls.__name__)
        matching = [r for r in rows if name in [n.strip() for n in r.split("|")[1].split(",")]]
        assert matching, f"{name} is not in the table"
        for key in info.cls.quantized_states:
            assert any(f"`{key}`" in r for r in matching), (name, key)


def test_a_record_written_after_the_update_reaches_the_state() -> None:
    """The adaptive heavy ball records each tensor's step length after its update (``step_sq``):
    with 8-bit states it must land in the parameter's state, as with 32 bits."""
    runs = []
    for bits in (32, 8):
        params = _params(bf16=False)
        opt = adaptim.AdaptiveHeavyBallSGD(params, lr=0.01, state_bits=bits)
        for step in range(3):
            _grads(params, step, scale=0.01)
            opt.step()
        runs.append([opt.state[p]["step_sq"] for p in params])
    for a, b in zip(*runs, strict=True):
        assert b != 0.0
        assert math.isclose(float(a), float(b), rel_tol=0.05)


def test_a_state_the_update_only_reads_is_not_encoded_again() -> None:
    """PNM writes one of its two buffers per step: the other one keeps its codes and absmax
    exactly (a decode-encode round trip would shrink a block led by a negative value by 0.7%)."""
    params = _params(bf16=False)
    opt = adaptim.PNM(params, lr=1e-2, state_bits=8)
    for step in range(3):
        _grads(params, step)
        opt.step()
    state = opt.state[params[0]]
    idle = "pos_momentum"  # step 4 is even: it writes neg_momentum and reads pos_momentum
    before = (state[idle].clone(), state[sp.absmax_key(idle)].clone())
    _grads(params, 3)
    opt.step()
    assert torch.equal(state[idle], before[0])
    assert torch.equal(state[sp.absmax_key(idle)], before[1])


@pytest.mark.parametrize("mode", ["reset", "pullback"])
def test_lookahead_momentum_handling_with_8_bit_inner_states(mode: str) -> None:
    """Lookahead resets or pulls back the inner optimizer's momentum through its decoded values."""
    runs = []
    for bits in (32, 8):
        params = _params(bf16=False)
        inner = adaptim.Adam(params, lr=1e-2, state_bits=bits)
        opt = adaptim.Lookahead(inner, k=2, pullback_momentum=mode)
        gen = torch.Generator().manual_seed(1)
        for _ in range(4):
            for p in params:  # plain normal gradients: no coordinate far below its block's absmax
                p.grad = torch.randn(p.shape, generator=gen)
            opt.step()
        state = dict(inner.state[params[0]])
        if sp.is_quantized(state, "exp_avg"):
            sp.dequantize_state_(state, "exp_avg", True)
        runs.append((params, state["exp_avg"]))
    (p32, m32), (p8, m8) = runs
    if mode == "reset":
        assert torch.equal(m8, torch.zeros_like(m8)) and torch.equal(m32, torch.zeros_like(m32))
    else:
        assert (m8 - m32).abs().max().item() <= 0.05 * m32.abs().max().item()
    for a, b in zip(p32, p8, strict=True):
        assert (a - b).abs().max().item() <= 0.05


@pytest.mark.parametrize("part_elements", [1024, 8192])
@pytest.mark.parametrize("name", ["adamw", "adan", "pnm", "adai", "radam"])
def test_reused_scratch_changes_nothing(
    name: str, part_elements: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Decoded states live in scratch buffers reused from part to part and step to step: the run is
    bit for bit the one with fresh buffers, and the scratch kept stays within its limit. (Parts of
    1,024 elements: pieces of tensors, or for Adai, which decodes whole tensors, none kept between
    steps, but reused within a batch, see the next test; of 8,192: whole tensors.)"""
    monkeypatch.setattr(sp, "CPU_PART_ELEMENTS", part_elements)
    info = next(i for i in QUANTIZING if i.name == name)

    def run(limit: int) -> tuple[list[torch.Tensor], dict[str, Any], sp._Scratch]:
        scratch = sp._Scratch(limit)
        if limit == 0:  # every buffer fresh, those above a part's size too
            monkeypatch.setattr(scratch, "take", lambda n, device: torch.empty(n, device=device))
        monkeypatch.setattr(sp, "_SCRATCH", scratch)
        params = _params()
        opt = make(info, params, state_bits=8)
        for step in range(5):
            _grads(params, step)
            opt.step()
        return [p.detach().clone() for p in params], opt.state_dict(), scratch

    params_fresh, state_fresh, _ = run(0)
    params_reused, state_reused, scratch = run(64 * 1024)
    assert scratch.kept_bytes <= 64 * 1024
    assert (scratch.kept_bytes > 0) == (info.cls.splits_tensors or part_elements == 8192)
    assert all(torch.equal(a, b) for a, b in zip(params_fresh, params_reused, strict=True))
    for pid, state in state_fresh["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                assert torch.equal(value, state_reused["state"][pid][key]), (pid, key)


@pytest.mark.parametrize("ascending", [False, True], ids=["descending", "ascending"])
@pytest.mark.parametrize("name", ["adai", "adamp"])
def test_whole_tensors_above_a_part_reuse_buffers_within_a_batch(
    name: str, ascending: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An update that needs whole tensors decodes a tensor above a part's size whole. Its buffers
    go back to the scratch for the batch's next large tensor (a fresh buffer per tensor and step
    made Adai's 8-bit decoding five times slower per element: fresh pages fault), and are freed
    when the batch's parts end. At most one tensor's decoded states are alive at a time, whatever
    the order of sizes (the part's state views used to keep every decoded state of the batch
    alive until its end), and none after the step."""
    scratch = sp._Scratch(0)
    monkeypatch.setattr(sp, "_SCRATCH", scratch)
    take = scratch.take
    handed: list[weakref.ref[torch.Tensor]] = []
    sizes: list[int] = []  # bytes of each large buffer handed out
    most_alive = 0

    def recording_take(numel: int, device: torch.device) -> torch.Tensor:
        nonlocal most_alive
        values = take(numel, device)
        if numel > sp.CPU_PART_ELEMENTS:
            handed.append(weakref.ref(values))
            sizes.append(values.untyped_storage().nbytes())
            alive = {t.untyped_storage().data_ptr() for r in handed if (t := r()) is not None}
            alive |= {b.untyped_storage().data_ptr() for b in scratch.large}
            most_alive = max(most_alive, len(alive))
        return values

    monkeypatch.setattr(scratch, "take", recording_take)
    info = next(i for i in QUANTIZING if i.name == name)
    gen = torch.Generator().manual_seed(0)
    shapes = [(80, 64), (5000,), (3, 1500)]  # above parts of 1,024 elements
    shapes = shapes[::-1] if ascending else shapes
    params = [torch.nn.Parameter(0.1 * torch.randn(s, generator=gen)) for s in shapes]
    opt = make(info, params, state_bits=8)
    for step in range(3):
        _grads(params, step)
        handed.clear()
        sizes.clear()
        most_alive = 0
        opt.step()
        assert len(handed) >= 6  # three tensors, two states (Adai's first pass: v once more)
        # this tensor's two states, nothing of the tensors before
        assert most_alive <= 2, most_alive
        storages = {t.untyped_storage().data_ptr() for r in handed if (t := r()) is not None}
        assert not storages and scratch.large == []  # all freed at the end of the batch
        if not ascending:  # the first (largest) tensor's buffers serve the smaller ones
            assert set(sizes) == {4 * 5120}


def test_distributed_checkpoint_of_other_precision_fails_loudly(tmp_path: Any) -> None:
    """``torch.distributed.checkpoint`` copies each saved tensor into the template's tensor of the
    same key, casting it. Codes under ``exp_avg`` would load into a 32-bit optimizer's float32
    ``exp_avg`` as the numbers 0-255, silently; under their own key they fail to load, and an
    8-bit optimizer resumes from them bit for bit."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    def build(bits: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(0)
        model = torch.nn.Linear(256, 64)
        return model, adaptim.AdamW(model.parameters(), lr=1e-2, state_bits=bits)

    def steps(model: torch.nn.Module, opt: torch.optim.Optimizer, which: range) -> None:
        for step in which:
            gen = torch.Generator().manual_seed(step)
            opt.zero_grad()
            model(torch.randn(8, 256, generator=gen)).square().mean().backward()
            opt.step()

    def template(model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
        model_state, optim_state = get_state_dict(model, opt)
        return {"model": model_state, "optim": optim_state}

    model, opt = build(8)
    steps(model, opt, range(3))
    dcp.save(template(model, opt), checkpoint_id=tmp_path)
    steps(model, opt, range(3, 6))

    resumed, resumed_opt = build(8)
    state = template(resumed, resumed_opt)
    dcp.load(state, checkpoint_id=tmp_path)
    set_state_dict(
        resumed, resumed_opt, model_state_dict=state["model"], optim_state_dict=state["optim"]
    )
    steps(resumed, resumed_opt, range(3, 6))
    assert torch.equal(resumed.weight, model.weight)

    model32, opt32 = build(32)
    with pytest.raises(
        CheckpointException,
        match=r"Missing key in checkpoint state_dict: optim\.state\.weight\.exp_avg",
    ):
        dcp.load(template(model32, opt32), checkpoint_id=tmp_path)


def test_saved_codes_have_their_own_key_and_old_checkpoints_load() -> None:
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(64, 80))]
    opt = adaptim.AdamW(params, lr=1e-2, state_bits=8)
    _grads(params, 0)
    opt.step()
    saved = opt.state_dict()["state"][0]
    assert sorted(saved) == [
        "exp_avg_absmax",
        "exp_avg_codes",
        "exp_avg_sq_absmax",
        "exp_avg_sq_codes",
        "step",
    ]
    assert saved["exp_avg_codes"].dtype == torch.uint8
    assert sp.is_quantized(opt.state[params[0]], "exp_avg")  # the live state keeps its names
    # a checkpoint written before the codes had their own key (uint8 under "exp_avg") still loads
    old = copy.deepcopy(opt.state_dict())
    for key in ("exp_avg", "exp_avg_sq"):
        old["state"][0][key] = old["state"][0].pop(sp.codes_key(key))
    again = adaptim.AdamW(params, lr=1e-2, state_bits=8)
    again.load_state_dict(old)
    for key in ("exp_avg", "exp_avg_sq", "exp_avg_absmax", "exp_avg_sq_absmax"):
        assert torch.equal(again.state[params[0]][key], opt.state[params[0]][key])
    # saved again before any step, and from copies: still under their own keys
    for other in (again, copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        assert sorted(other.state_dict()["state"][0]) == sorted(saved)
    broken = copy.deepcopy(opt.state_dict())
    del broken["state"][0]["exp_avg_absmax"]
    with pytest.raises(ValueError, match="'exp_avg_codes' comes without its 'exp_avg_absmax'"):
        adaptim.AdamW(params, lr=1e-2, state_bits=8).load_state_dict(broken)


# --- KOALA-M: an 8-bit velocity, decoded and encoded by predict() and by the measurement update ----


def _least_squares(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(256, 64, generator=gen), torch.randn(256, 128, generator=gen)


def test_koala_m_8_bit_trains_as_with_32_bits() -> None:
    """KOALA-M's velocity is decoded and encoded twice a step (predict moves it, the measurement
    update adds its gain): on least squares the 8-bit run ends within 5% of the 32-bit loss, its
    velocity is codes and its parameter average stays float32."""
    a, b = _least_squares()
    losses = []
    for bits in (32, 8):
        w = torch.nn.Parameter(torch.zeros(64, 128))
        opt = adaptim.MomentumKOALA([w], lr=0.5, state_bits=bits)

        def closure(w: torch.Tensor = w, opt: torch.optim.Optimizer = opt) -> torch.Tensor:
            opt.zero_grad()
            loss = (a @ w - b).square().mean()
            loss.backward()
            return loss

        first = (a @ w - b).square().mean().item()
        for _ in range(60):
            opt.step(closure)
        state = opt.state[w]
        assert sp.is_quantized(state, "velocity") == (bits == 8)
        assert state["param_avg"].dtype == torch.float32
        losses.append((a @ w - b).square().mean().item())
    assert losses[0] < 0.9 * first  # it trains
    assert losses[1] <= 1.05 * losses[0]


def test_koala_m_refused_closure_puts_the_8_bit_velocity_back() -> None:
    """A closure result KOALA cannot read is refused after predict() moved the parameters and
    decayed the velocity: codes, absmax and parameters are put back exactly."""
    a, b = _least_squares(1)
    w = torch.nn.Parameter(torch.zeros(64, 128))
    opt = adaptim.MomentumKOALA([w], lr=0.5, state_bits=8)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = (a @ w - b).square().mean()
        loss.backward()
        return loss

    for _ in range(3):
        opt.step(closure)
    fresh = torch.nn.Parameter(torch.zeros(7))  # never stepped: predict() keeps copies
    opt.add_param_group({"params": [fresh]})
    before = {k: v.clone() for k, v in opt.state[w].items() if torch.is_tensor(v)}
    w_before = w.detach().clone()
    assert sp.is_quantized(opt.state[w], "velocity")

    def unreadable() -> str:
        closure()
        fresh.grad = torch.zeros(7)
        return "not a loss"

    with pytest.raises(TypeError):
        opt.step(unreadable)
    assert torch.equal(w, w_before)
    for key, value in before.items():
        assert torch.equal(opt.state[w][key], value), key

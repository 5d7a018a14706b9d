"""KOALA-V / KOALA-M (Davtyan et al., AAAI 2022): the official equations by hand, and a least-squares toy.

The official code (github.com/Araachie/koala koala.py @ f864580) is not on PyPI; its update equations are
written out below with plain tensor arithmetic (see the module docstring of adaptim.optimizers.koala).
Run out of tree against the official file, our trajectories agree to 1e-15 (KOALA-V) and 4e-7 (KOALA-M,
whose official code rounds P0, F, Q and the correction through float32 torch.Tensor constructors).
"""

from __future__ import annotations

import math

import pytest
import torch

import adaptim
from adaptim.core import base
from helpers import assert_same_tree

X = torch.tensor([[1.0, 2.0], [0.5, -1.0], [-1.5, 0.3], [2.0, 1.0]], dtype=torch.float64)
Y = torch.tensor([1.0, -0.5, 0.2, 2.5], dtype=torch.float64)


def per_sample(w, b):
    return (X @ w + b - Y) ** 2


def start():
    return torch.tensor([0.3, -0.2], dtype=torch.float64), torch.tensor([0.1], dtype=torch.float64)


def official_v(steps, lr=1.0, sigma=1.0, q=1.0, alpha_r=0.9, wd=0.0):
    w, b = start()
    p_cov, r = sigma, 1.0
    out = []
    for _ in range(steps):
        p_cov += q  # predict
        wg, bg = w.clone().requires_grad_(), b.clone().requires_grad_()
        losses = per_sample(wg, bg)
        grads = torch.autograd.grad(losses.mean(), (wg, bg))
        loss, loss_var = losses.mean().item(), (losses**2).mean().item()
        r = alpha_r * r + (1 - alpha_r) * loss_var
        ratios, new = [], []
        for p, g in zip((w, b), grads, strict=True):
            h = g + wd * p
            s = p_cov * (h.norm() ** 2).item() + r
            layer_loss = loss + 0.5 * wd * (p.norm() ** 2).item()
            new.append(p - lr * layer_loss * p_cov / s * g)
            ratios.append((h.norm() ** 2).item() / s)
        w, b = new
        p_cov -= p_cov**2 * max(ratios)
        out.append((w.clone(), b.clone()))
    return out


def official_m(steps, lr=1.0, sw=0.1, sc=0.0, sv=0.1, a=0.9, qw=1e-2, qv=1e-2, alpha_r=0.9, wd=0.0):
    w, b = start()
    vel = [torch.zeros_like(w), torch.zeros_like(b)]
    avg = [torch.zeros_like(w), torch.zeros_like(b)]
    P = torch.tensor([[sw, sc], [sc, sv]], dtype=torch.float64)
    F = torch.tensor([[1.0, 1.0], [0.0, a]], dtype=torch.float64)
    r, q_w, n_params = 1.0, qw, 3
    out = []
    for _ in range(steps):
        drift = torch.cat([(avg[0] - w), (avg[1] - b)]).norm().item() / n_params  # predict
        w, b = w + vel[0], b + vel[1]
        vel = [a * v for v in vel]
        q_w = 0.9 * q_w + 0.1 * drift
        P = F @ P @ F.T + torch.diag(torch.tensor([q_w, qv], dtype=torch.float64))
        wg, bg = w.clone().requires_grad_(), b.clone().requires_grad_()
        losses = per_sample(wg, bg)
        grads = torch.autograd.grad(losses.mean(), (wg, bg))
        loss, loss_var = losses.mean().item(), (losses**2).mean().item()
        r = alpha_r * r + (1 - alpha_r) * loss_var
        ratios, new = [], []
        for i, (p, g) in enumerate(zip((w, b), grads, strict=True)):
            h = g + wd * p
            s = (h.norm() ** 2).item() * P[0, 0].item() + r
            layer_loss = loss + 0.5 * wd * (p.norm() ** 2).item()
            new.append(p - P[0, 0].item() / s * layer_loss * lr * h)
            vel[i] = vel[i] - P[1, 0].item() / s * layer_loss * lr * h
            avg[i] = 0.9 * avg[i] + 0.1 * new[-1]
            ratios.append((h.norm() ** 2).item() / s)
        w, b = new
        P = P - P @ torch.diag(torch.tensor([max(ratios), 0.0], dtype=torch.float64)) @ P.T
        out.append((w.clone(), b.clone()))
    return out


def ours(make, steps, mode="closure"):
    w, b = (torch.nn.Parameter(t) for t in start())
    opt = make([w, b])
    out = []
    for _ in range(steps):
        if mode == "closure":

            def closure():
                opt.zero_grad()
                losses = per_sample(w, b)
                losses.mean().backward()
                return losses

            opt.step(closure)
        else:  # the authors' interface
            opt.predict()
            losses = per_sample(w, b)
            opt.zero_grad()
            losses.mean().backward()
            opt.update(losses.mean(), (losses**2).mean())
        out.append((w.detach().clone(), b.detach().clone()))
    return out


def shared_state(opt):
    """KOALA's shared state (P, R, q_w), as its state dict carries it in a parameter's entry."""
    (shared,) = [s["koala"] for s in opt.state_dict()["state"].values() if "koala" in s]
    return shared


def assert_same(a, b):
    assert (a[-1][0] - a[0][0]).abs().max() > 1e-3
    for (wa, ba), (wb, bb) in zip(a, b, strict=True):
        torch.testing.assert_close(wa, wb, atol=1e-12, rtol=0)
        torch.testing.assert_close(ba, bb, atol=1e-12, rtol=0)


@pytest.mark.parametrize("mode", ["closure", "predict_update"])
@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("kw", [dict(), dict(sigma=0.1, lr=0.5, weight_decay=0.05), dict(q=0.1)])
def test_koala_v_matches_official_equations(kw, foreach, mode):
    expected = official_v(
        12,
        lr=kw.get("lr", 1.0),
        sigma=kw.get("sigma", 1.0),
        q=kw.get("q", 1.0),
        wd=kw.get("weight_decay", 0.0),
    )
    assert_same(ours(lambda p: adaptim.VanillaKOALA(p, foreach=foreach, **kw), 12, mode), expected)


@pytest.mark.parametrize("mode", ["closure", "predict_update"])
@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize(
    "kw", [dict(), dict(sw=0.2, sc=0.05, sv=0.05, a=0.8, weight_decay=0.05, lr=0.5)]
)
def test_koala_m_matches_official_equations(kw, foreach, mode):
    mapped = {k if k != "weight_decay" else "wd": v for k, v in kw.items()}
    expected = official_m(12, **mapped)
    assert_same(ours(lambda p: adaptim.MomentumKOALA(p, foreach=foreach, **kw), 12, mode), expected)


def test_closure_return_forms():
    def run(form):
        w, b = (torch.nn.Parameter(t) for t in start())
        opt = adaptim.VanillaKOALA([w, b])
        for _ in range(5):

            def closure():
                opt.zero_grad()
                losses = per_sample(w, b)
                losses.mean().backward()
                if form == "tuple":
                    return losses.mean(), (losses**2).mean()
                if form == "scalar":
                    return losses.mean()
                return losses

            opt.step(closure)
        return w.detach().clone(), shared_state(opt)["R"]

    w_tuple, r_tuple = run("tuple")
    w_samples, r_samples = run("samples")
    _, r_scalar = run("scalar")
    torch.testing.assert_close(w_tuple, w_samples, atol=1e-14, rtol=0)
    assert r_tuple == pytest.approx(r_samples, abs=1e-14)
    assert r_scalar < r_tuple  # mean^2 <= mean of squares: the scalar fallback observes less noise


@pytest.mark.parametrize("cls", [adaptim.VanillaKOALA, adaptim.MomentumKOALA])
def test_step_without_closure_is_refused_clearly(cls):
    w = torch.nn.Parameter(torch.ones(2))
    opt = cls([w])
    w.grad = torch.ones(2)
    with pytest.raises(TypeError, match="closure"):
        opt.step()
    assert torch.equal(w.detach(), torch.ones(2))


def test_momentum_covariance_must_be_psd():
    with pytest.raises(ValueError, match="sc"):
        adaptim.MomentumKOALA([torch.nn.Parameter(torch.ones(2))], sw=0.1, sv=0.1, sc=0.5)


@pytest.mark.parametrize(
    "make",
    [lambda p: adaptim.VanillaKOALA(p, sigma=0.1), lambda p: adaptim.MomentumKOALA(p)],
    ids=["v", "m"],
)
def test_least_squares_without_lr_tuning(make):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 10, generator=gen)
    w_true = torch.randn(10, 1, generator=gen)
    y = x @ w_true + 0.1 * torch.randn(256, 1, generator=gen)  # noise floor: MSE 0.01
    torch.manual_seed(0)  # the bias's initialization too, whatever ran before
    model = torch.nn.Linear(10, 1)
    torch.nn.init.normal_(model.weight)
    opt = make(model.parameters())
    start = ((model(x) - y) ** 2).mean().item()
    for _ in range(300):
        idx = torch.randint(0, 256, (32,), generator=gen)

        def closure(idx=idx):
            opt.zero_grad()
            losses = ((model(x[idx]) - y[idx]) ** 2).squeeze(1)
            losses.mean().backward()
            return losses

        opt.step(closure)
    final = ((model(x) - y) ** 2).mean().item()
    assert start > 1.0
    assert final < 0.03, f"full-batch MSE {final:.4f}"


# -- chunk by chunk on CPU (cache blocking), and under FSDP2 ----------------------------------------


def _blocked_run(cls, kw, chunk_bytes, monkeypatch, parts):
    """A small network: its last layer is frozen for two steps (no state: predict's ||p|| drift),
    the first layer's bias never gets a gradient past step 0 (zero: skipped by the 1e-9 rule)."""
    monkeypatch.setattr(base, "CPU_CHUNK_BYTES", chunk_bytes)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 12), torch.nn.Tanh()
    )
    model.append(torch.nn.Linear(12, 3))
    model = model.double()
    params = list(model.parameters())
    start = [p.detach().clone() for p in params]
    opt = cls(params, foreach=True, **kw)
    chunks = opt._chunks

    def counting(batch):
        out = chunks(batch)
        parts.append(len(out))
        return out

    monkeypatch.setattr(opt, "_chunks", counting)
    gen = torch.Generator().manual_seed(5)
    for step in range(8):
        x = torch.randn(8, 5, generator=gen, dtype=torch.float64)
        y = torch.randn(8, 3, generator=gen, dtype=torch.float64)

        def closure(x=x, y=y, step=step):
            opt.zero_grad()
            losses = ((model(x) - y) ** 2).mean(1)
            losses.mean().backward()
            if step < 2:
                params[-1].grad = params[-2].grad = None
            if step > 0:
                params[1].grad.zero_()
            return losses

        opt.step(closure)
    return start, [p.detach().clone() for p in params], shared_state(opt)


@pytest.mark.parametrize(
    ("cls", "kw"),
    [
        (adaptim.VanillaKOALA, dict(sigma=0.1, lr=0.5, weight_decay=0.05)),
        (adaptim.MomentumKOALA, dict(lr=0.5, weight_decay=0.05)),
        (adaptim.MomentumKOALA, dict(lr=0.5)),
    ],
    ids=["v-wd", "m-wd", "m"],
)
def test_chunk_by_chunk_update_is_bit_identical(cls, kw, monkeypatch):
    """Norms and updates chunk by chunk (and KOALA-M's predict) equal one pass over all tensors, bit
    for bit: parameters and the shared P, R, q_w."""
    parts_small: list[int] = []
    parts_whole: list[int] = []
    _, small, glob_small = _blocked_run(cls, kw, 1, monkeypatch, parts_small)
    start, whole, glob_whole = _blocked_run(cls, kw, 2**40, monkeypatch, parts_whole)
    assert max(parts_small) == 6 and max(parts_whole) == 1  # really one chunk per tensor
    for x, y in zip(small, whole, strict=True):
        assert torch.equal(x, y), f"max diff {(x - y).abs().max().item():.3e}"
    assert all((p - s).abs().max() > 1e-3 for p, s in zip(whole, start, strict=True))  # all moved
    for key, value in glob_whole.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(glob_small[key], value), key
        else:
            assert glob_small[key] == value, key


FSDP2_CASES = [
    ("koala_v-wd-chunked", "koala_v", dict(lr=0.5, weight_decay=0.1)),
    ("koala_m-wd-chunked", "koala_m", dict(lr=0.5, weight_decay=0.1)),
]


@pytest.mark.slow
def test_fsdp2_with_one_chunk_per_tensor_matches_single_process(tmp_path):
    """Per-chunk norms summed over shards (uneven, empty and dim-1 shards) give the same steps."""
    import test_fsdp2

    test_fsdp2.check_one_chunk_per_tensor(FSDP2_CASES, dtensor_states=False)


# -- maximize ---------------------------------------------------------------------------------------


def _drive_to_zero(cls, sign):
    """KOALA on ``sign * f`` for the concave ``f = -(x - 1)^2`` (maximum 0 at x = 1): x, and f at
    each step."""
    x = torch.nn.Parameter(torch.tensor([2.0], dtype=torch.float64))
    opt = cls([x], lr=0.5)
    values = []
    for _ in range(20):

        def closure():
            opt.zero_grad()
            f = -((x - 1.0) ** 2).sum()
            (sign * f).backward()
            return sign * f

        values.append(float(opt.step(closure)) * sign)
    return x.detach().clone(), values


@pytest.mark.parametrize("cls", [adaptim.VanillaKOALA, adaptim.MomentumKOALA])
def test_maximize_is_refused_clearly(cls):
    """KOALA drives the observed loss to its target 0 from either side: its step is the same for
    (L, grad L) and (-L, -grad L), so "maximize f = minimize -f" would be KOALA on f, and a flag
    cannot change its direction. The flag is refused (at construction, in a new param group, in a
    loaded state dict, before anything changes); a non-negative loss says what to do."""
    x_f, values = _drive_to_zero(cls, 1.0)
    x_neg, _ = _drive_to_zero(cls, -1.0)
    torch.testing.assert_close(x_f, x_neg, atol=1e-15, rtol=0)
    assert values[0] == -1.0 and -0.05 < values[-1] < 0  # f <= 0 rises towards its maximum 0

    w = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="maximize"):
        cls([w], maximize=True)
    opt = cls([w])
    with pytest.raises(ValueError, match="maximize"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(1))], "maximize": True})
    assert len(opt.param_groups) == 1
    saved = opt.state_dict()
    saved["param_groups"][0]["maximize"] = True
    with pytest.raises(ValueError, match="maximize"):
        opt.load_state_dict(saved)
    assert opt.param_groups[0]["maximize"] is False


# -- a refused step changes nothing -------------------------------------------------------------------


def _snapshot(opt, params):
    """Deep copies of the parameters and the whole state dict."""
    import copy

    return [p.detach().clone() for p in params], copy.deepcopy(opt.state_dict())


def _assert_unchanged(opt, params, snapshot):
    before, saved = snapshot
    for p, b in zip(params, before, strict=True):
        assert torch.equal(p.detach(), b)
    assert_same_tree(opt.state_dict(), saved, "state_dict")


def _dense_steps(opt, w, steps):
    for _ in range(steps):

        def closure():
            opt.zero_grad()
            loss = ((w - 1.0) ** 2).sum()
            loss.backward()
            return loss

        opt.step(closure)


@pytest.mark.parametrize("steps", [0, 3])
@pytest.mark.parametrize("cls", [adaptim.VanillaKOALA, adaptim.MomentumKOALA])
def test_step_refusing_a_complex_parameter_changes_nothing(cls, steps):
    """The complex parameter is refused before predict() (which moves P, and KOALA-M's parameters)."""
    w = torch.nn.Parameter(torch.tensor([0.3, -0.2], dtype=torch.float64))
    z = torch.nn.Parameter(torch.tensor([1.0 + 1.0j], dtype=torch.complex128))
    z.requires_grad_(False)  # frozen: allowed
    opt = cls([w, z], lr=0.5)
    _dense_steps(opt, w, steps)
    z.requires_grad_(True)
    snapshot = _snapshot(opt, [w, z])

    def closure():
        opt.zero_grad()
        loss = ((w - 1.0) ** 2).sum() + (z.abs() ** 2).sum()
        loss.backward()
        return loss

    with pytest.raises(TypeError, match="complex"):
        opt.step(closure)
    _assert_unchanged(opt, [w, z], snapshot)


@pytest.mark.parametrize(
    ("cls", "steps"),
    [(cls, steps) for cls in (adaptim.VanillaKOALA, adaptim.MomentumKOALA) for steps in (0, 3)],
)
def test_refusing_a_sparse_gradient_changes_nothing(cls, steps):
    """step(closure): the closure's sparse gradient is found after predict(), whose changes are
    undone (mid-run, KOALA-M's predict() moved the stepped tensor by its velocity); the authors'
    update(): checked before R is observed or anything moves."""
    w = torch.nn.Parameter(torch.tensor([0.3, -0.2], dtype=torch.float64))
    emb = torch.nn.Embedding(4, 2, sparse=True).double()
    emb.requires_grad_(False)
    params = [w, *emb.parameters()]
    opt = cls(params, lr=0.5)
    _dense_steps(opt, w, steps)
    emb.requires_grad_(True)

    def loss_fn():
        return ((w - 1.0) ** 2).sum() + emb(torch.tensor([1, 2])).sum()

    def closure():
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    snapshot = _snapshot(opt, params)
    with pytest.raises(TypeError, match="sparse"):
        opt.step(closure)
    _assert_unchanged(opt, params, snapshot)

    opt.predict()
    opt.zero_grad()
    loss = loss_fn()
    loss.backward()
    snapshot = _snapshot(opt, params)
    with pytest.raises(TypeError, match="sparse"):
        opt.update(loss, loss**2)
    _assert_unchanged(opt, params, snapshot)


# -- checkpoints: torch's format (state keyed by parameters), DCP, old checkpoints --------------------


def _mlp(first_frozen=False):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    model = model.double()
    model[0].weight.requires_grad_(not first_frozen)
    return model


def _train(model, opt, steps):
    for step in steps:
        gen = torch.Generator().manual_seed(100 + step)
        x = torch.randn(6, 3, generator=gen, dtype=torch.float64)
        y = torch.randn(6, 2, generator=gen, dtype=torch.float64)

        def closure(x=x, y=y):
            opt.zero_grad()
            losses = ((model(x) - y) ** 2).mean(1)
            losses.mean().backward()
            return losses

        opt.step(closure)


def _resumed(cls, save, load, first_frozen=False):
    """Train 3 steps, checkpoint with ``save(model, opt)``, restore a fresh model and optimizer
    with ``load(model, opt, saved)``; 4 more steps on both; the resumed one must match bit for bit."""
    import copy

    kw = dict(lr=0.5, weight_decay=0.01)
    model = _mlp(first_frozen)
    opt = cls(model.parameters(), **kw)
    _train(model, opt, range(3))
    saved = save(model, opt)
    twin = copy.deepcopy(model)
    twin_opt = cls(twin.parameters(), **kw)
    load(twin, twin_opt, saved)
    _train(model, opt, range(3, 7))
    _train(twin, twin_opt, range(3, 7))
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)
    return opt


@pytest.mark.parametrize("flatten", [False, True], ids=["nested", "flattened"])
@pytest.mark.parametrize("first_frozen", [False, True])
@pytest.mark.parametrize("cls", [adaptim.VanillaKOALA, adaptim.MomentumKOALA])
def test_state_is_keyed_by_parameters_and_round_trips_through_dcp(
    cls, first_frozen, flatten, tmp_path
):
    """torch.distributed.checkpoint's get/set_optimizer_state_dict (the FSDP2 checkpoint path) need
    ``opt.state`` keyed by parameters; KOALA's shared P, R (and q_w) ride in a parameter's state.
    Through memory, and through DCP files loaded into a fresh optimizer's state dict (which DCP
    builds by stepping with zero gradients at lr 0); nested, and flattened (which takes only
    tensors, ints, floats and dicts, and rebuilds an entry from the keys of the live state). With
    the first parameter frozen, DCP drops its state: the shared state must ride on a trained one."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(flatten_optimizer_state_dict=flatten)

    def get(model, opt):
        return get_optimizer_state_dict(model, opt, options=options)

    def load_from_memory(model, opt, saved):
        set_optimizer_state_dict(model, opt, optim_state_dict=saved, options=options)

    opt = _resumed(cls, get, load_from_memory, first_frozen)
    assert opt.state and all(isinstance(key, torch.Tensor) for key in opt.state)
    assert all(isinstance(key, int) for key in opt.state_dict()["state"])

    def save_to_disk(model, opt):
        dcp.save({"optim": get(model, opt)}, checkpoint_id=str(tmp_path))

    def load_from_disk(model, opt, _):
        template = {"optim": get(model, opt)}
        dcp.load(template, checkpoint_id=str(tmp_path))
        load_from_memory(model, opt, template["optim"])

    _resumed(cls, save_to_disk, load_from_disk, first_frozen)


@pytest.mark.parametrize("cls", [adaptim.VanillaKOALA, adaptim.MomentumKOALA])
def test_checkpoint_with_the_old_koala_key_still_loads(cls):
    """Checkpoints written before the shared state moved into a parameter's state kept it under
    ``state["koala"]`` (KOALA-M's P as a float64 tensor)."""

    def old_format(model, opt):
        saved = opt.state_dict()
        state = saved["state"]
        (carrier,) = [i for i, s in state.items() if "koala" in s]
        shared = dict(state[carrier].pop("koala"))
        if not state[carrier]:
            del state[carrier]
        if "P00" in shared:  # KOALA-M
            rows = [[shared.pop(f"P{i}{j}") for j in range(2)] for i in range(2)]
            shared["P"] = torch.tensor(rows, dtype=torch.float64)
        state["koala"] = shared
        return saved

    _resumed(cls, old_format, lambda model, opt, saved: opt.load_state_dict(saved))


# -- overflow -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("cls", [adaptim.VanillaKOALA, adaptim.MomentumKOALA])
def test_norms_that_overflow_fp32_are_recomputed_in_float64(cls, foreach):
    """Gradients of 2^100 in fp32: the sum of squares overflows (the reference code then gets
    inf / inf and a NaN covariance). The shared state equals that of the same run in float64, where
    nothing overflows (powers of two: the norms are exact in both; KOALA-M's drift sees fp32
    parameters)."""

    def run(dtype):
        params = [
            torch.nn.Parameter(torch.ones(4, 3, dtype=dtype)),
            torch.nn.Parameter(torch.ones(5, dtype=dtype)),
        ]
        opt = cls(params, foreach=foreach)
        for _ in range(3):

            def closure():
                for p in params:
                    p.grad = torch.full_like(p, 2.0**100)
                return torch.tensor(1.0)

            opt.step(closure)
        return shared_state(opt)

    in_fp32, in_fp64 = run(torch.float32), run(torch.float64)
    assert all(math.isfinite(v) for v in in_fp32.values())
    assert in_fp32 == pytest.approx(in_fp64, rel=1e-6, abs=1e-12)

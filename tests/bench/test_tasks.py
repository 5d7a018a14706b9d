"""The bench's tasks: data loaders on files the tests write, missing data, the test functions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from adaptim.bench import tasks as T
from adaptim.bench.runner import execute_run, make_plan
from conftest import write_idx


def test_load_idx_reads_raw_and_gzip(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = write_idx(tmp_path / "a-idx3-ubyte", arr)
    gz = write_idx(tmp_path / "b-idx3-ubyte", arr[::-1], gz=True)
    np.testing.assert_array_equal(T.load_idx(raw), arr)
    np.testing.assert_array_equal(T.load_idx(gz), arr[::-1])


def test_load_idx_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x02\x03\x04hello")
    with pytest.raises(ValueError, match="not an IDX file"):
        T.load_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(bytes([0, 0, 8, 1]) + (10).to_bytes(4, "big") + b"abc")
    with pytest.raises(ValueError, match="expected 10 values"):
        T.load_idx(short)


def test_fashion_mnist_loader_and_tasks(bench_data):
    data = T.load_fashion_mnist(str(bench_data["fmnist"]))
    assert data["train_x"].shape == (256, 28, 28) and data["train_x"].dtype == torch.uint8
    assert data["test_y"].shape == (100,) and int(data["test_y"].max()) <= 9
    for name in ("fmnist-mlp", "fmnist-cnn"):
        assert T.TASKS[name].missing_data() is None
        spec = (
            make_plan([name], ["torch-adamw"], seeds=1, lrs=[3e-3], steps=30)
            .groups[0]
            .first_phase()[0]
        )
        result = execute_run(spec)
        assert result["status"] == "done", result.get("error")
        acc = result["final_metric"]
        # The fake classes are separable bands: 30 steps of AdamW must beat chance clearly.
        assert 0.0 <= result["initial_metric"] <= 0.3
        assert 0.5 < acc <= 1.0


def test_text_loader_and_charlm(bench_data):
    text = T.load_text(str(bench_data["text"]))
    assert text.startswith(bench_data["text"].read_text()[:20])
    ids, vocab = T._encoded_text(str(bench_data["text"]))
    assert vocab == len(set(text)) and int(ids.max()) == vocab - 1 and len(ids) == len(text)
    problem = T.TASKS["charlm"].build(seed=0, steps=5)
    bpc0 = problem.evaluate()
    # An untrained model predicts close to uniform: about log2(vocab) bits per character.
    assert abs(bpc0 - math.log2(vocab)) < 1.0
    spec = (
        make_plan(["charlm"], ["torch-adamw"], seeds=1, lrs=[1e-2], steps=20)
        .groups[0]
        .first_phase()[0]
    )
    result = execute_run(spec)
    assert result["status"] == "done", result.get("error")
    assert result["final_metric"] < bpc0 - 0.5


def test_bible_text_is_stripped_of_references(monkeypatch, tmp_path):
    # A stand-in for Debian's `bible` command: prints "Book1:1 text" lines like `bible -f`.
    exe = tmp_path / "bible"
    exe.write_text("#!/bin/sh\nprintf 'Ge1:1 In the beginning.\\nGe1:2 And the earth.\\n'\n")
    exe.chmod(0o755)
    monkeypatch.delenv(T.TEXT_ENV, raising=False)
    monkeypatch.setattr(T.shutil, "which", lambda name: str(exe) if name == "bible" else None)
    T.load_text.cache_clear()
    try:
        assert T.load_text() == "In the beginning.\nAnd the earth.\n"
    finally:
        T.load_text.cache_clear()


def test_missing_data_is_skipped_with_install_hint(no_data):
    msg = T.TASKS["fmnist-mlp"].missing_data()
    assert msg is not None and "apt-get install dataset-fashion-mnist" in msg
    msg = T.TASKS["charlm"].missing_data()
    assert msg is not None and "apt-get install bible-kjv" in msg
    plan = make_plan(["fmnist-cnn", "charlm", "rosenbrock"], ["adam"], seeds=1)
    assert set(plan.skipped_tasks) == {"fmnist-cnn", "charlm"}
    assert {g.task for g in plan.groups} == {"rosenbrock"}


def test_text_env_pointing_nowhere_is_missing(monkeypatch, tmp_path):
    monkeypatch.setenv(T.TEXT_ENV, str(tmp_path / "nope.txt"))
    msg = T.TASKS["charlm"].missing_data()
    assert msg is not None and "nope.txt" in msg and "bible-kjv" in msg


@pytest.mark.parametrize(
    ("fn", "grad"),
    [
        (T.diffgrad_f1, lambda x: 2 * x + 0.6 if x <= 0 else 2 * x - 0.4),
        (
            T.diffgrad_f2,
            lambda x: -40.0 if x <= -0.9 else x * math.cos(8 * x) + math.sin(8 * x) + 3 * x * x,
        ),
        (
            T.diffgrad_f3,
            lambda x: (
                2 * x
                if abs(x) >= 0.5
                else (1.0 if x <= -0.4 else -7 / 8 if x <= 0 else 7 / 8 if x <= 0.4 else -1.0)
            ),
        ),
    ],
)
def test_diffgrad_functions_have_the_notebook_gradients(fn, grad):
    # The notebook gives F1..F3 by their gradients; our losses must reproduce them (autograd).
    for x0 in np.linspace(-1.45, 1.45, 59):
        if any(abs(x0 - k) < 1e-6 for k in (-0.9, -0.5, -0.4, 0.0, 0.4, 0.5)):
            continue
        x = torch.tensor(float(x0), dtype=torch.float64, requires_grad=True)
        fn(x).backward()
        assert abs(float(x.grad) - grad(float(x0))) < 1e-9, x0


def test_one_d_global_minimizers():
    assert T.FUNCTIONS_1D["diffgrad-f1"][1] == -0.3
    assert abs(T.FUNCTIONS_1D["diffgrad-f2"][1] + 0.9) < 1e-4  # the kink at -0.9 is the global min
    xs = torch.linspace(-1.5, 1.5, 30001, dtype=torch.float64)
    for name, (fn, xmin) in T.FUNCTIONS_1D.items():
        assert float(fn(torch.tensor(xmin, dtype=torch.float64))) <= float(fn(xs).min()) + 1e-9, (
            name
        )


def test_two_d_minimizers_are_minima():
    for name, (fn, _, minimizer, _) in T.FUNCTIONS_2D.items():
        x = torch.tensor(minimizer, dtype=torch.float64)
        assert float(fn(x)) < 1e-12, name
        gen = torch.Generator().manual_seed(0)
        for _ in range(20):
            y = x + 0.1 * torch.randn(2, generator=gen, dtype=torch.float64)
            assert float(fn(y)) > float(fn(x)), name


def test_digits_optimum_is_below_any_trained_point():
    x, _y, optimum = T._digits()
    assert x.shape == (1797, 64) and 0 < optimum < math.log(10)
    problem = T.TASKS["digits-logreg"].build(seed=0, steps=50)
    gap0 = problem.evaluate()
    assert gap0 > 1.0  # near-zero weights: about log(10) - optimum
    opt = torch.optim.SGD(problem.params, lr=0.5)
    for step in range(50):
        opt.zero_grad()
        problem.loss(step).backward()
        opt.step()
    gap = problem.evaluate()
    assert 0 <= gap < gap0 / 4


def test_noisy_quadratic_metric_is_the_exact_loss():
    problem = T.TASKS["noisy-quadratic"].build(seed=0, steps=10)
    x = problem.params[0]
    h = 1.0 / torch.arange(1, x.numel() + 1, dtype=torch.float64)
    assert problem.evaluate() == pytest.approx(float(0.5 * (h * x.detach() ** 2).sum()))
    # The minibatch gradient is h*x plus zero-mean noise of variance h/B.
    grads = []
    for step in range(10):
        x.grad = None
        problem.loss(step).backward()
        grads.append(x.grad - h * x.detach())
    noise = torch.stack(grads)
    assert noise.abs().max() > 0
    assert not torch.allclose(noise[0], noise[1])


@pytest.mark.parametrize("name", [*T.FUNCTIONS_2D, *T.FUNCTIONS_1D])
def test_analytic_gradients_equal_autograd(name):
    # The runner trains the test functions through Problem.backward (closed-form gradients); it
    # must be the tensor definition's loss and autograd gradient, kinks and branch edges included.
    dim = 2 if name in T.FUNCTIONS_2D else 1
    gen = torch.Generator().manual_seed(3)
    points = (3 * torch.rand(200, dim, generator=gen, dtype=torch.float64) - 1.5).tolist()
    if dim == 1:
        points += [[v] for v in (-0.9, -0.5, -0.4, 0.0, 0.4, 0.5, -0.3, 0.2)]
    for point in points:
        problem = T._build_function(name, seed=0, steps=1, dim=dim)
        (x,) = problem.params
        with torch.no_grad():
            x.copy_(torch.tensor(point, dtype=torch.float64))
        problem.loss(0).backward()
        expected_value, expected_grad = float(problem.loss(0)), x.grad.clone()
        x.grad = None
        value = problem.backward(0)
        assert math.isclose(float(value), expected_value, rel_tol=1e-12, abs_tol=1e-12), point
        torch.testing.assert_close(x.grad, expected_grad, rtol=1e-12, atol=1e-12)
        problem.backward(0)  # accumulates, as backward() does
        torch.testing.assert_close(x.grad, 2 * expected_grad, rtol=1e-12, atol=1e-12)


def test_noisy_quadratic_analytic_gradient_equals_autograd():
    problem = T._build_nqm(seed=2, steps=5)
    (x,) = problem.params
    with torch.no_grad():
        x.mul_(torch.linspace(-2, 2, x.numel(), dtype=torch.float64))
    for step in (0, 3, 7):  # past the last step: the last minibatch
        x.grad = None
        loss = problem.loss(step)
        loss.backward()
        expected_value, expected_grad = float(loss), x.grad.clone()
        x.grad = None
        value = problem.backward(step)
        assert math.isclose(float(value), expected_value, rel_tol=1e-12)
        torch.testing.assert_close(x.grad, expected_grad, rtol=1e-12, atol=1e-15)
        problem.backward(step)
        torch.testing.assert_close(x.grad, 2 * expected_grad, rtol=1e-12, atol=1e-15)


def test_cnn_pools_before_relu_with_the_same_function_and_gradients():
    # The bench's CNN pools before its first ReLU (a quarter of the elements); it must be the
    # conv-ReLU-pool network it describes: the same outputs and gradients, bit for bit.
    torch.manual_seed(0)
    net = T.fmnist_model("cnn")
    conv, pool, relu = net[0], net[1], net[2]
    assert isinstance(pool, torch.nn.MaxPool2d) and isinstance(relu, torch.nn.ReLU)
    reference = torch.nn.Sequential(conv, relu, pool, *list(net)[3:])
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(32, 1, 28, 28, generator=gen).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (32,), generator=gen)
    grads = []
    for model in (net, reference):
        model.zero_grad()
        out = model(x)
        torch.nn.functional.cross_entropy(out, y).backward()
        grads.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
    assert torch.equal(grads[0][0], grads[1][0])
    assert all(torch.equal(a, b) for a, b in zip(grads[0][1], grads[1][1], strict=True))


@pytest.mark.parametrize("name", [*T.FUNCTIONS_2D, *T.FUNCTIONS_1D])
def test_closed_form_gradient_far_out_is_a_non_finite_loss_not_an_error(name):
    # Python floats raise OverflowError (or ValueError for sin(inf)) where tensors give inf; the
    # runner must see a non-finite loss (the run diverged), never an exception (a failed run).
    dim = 2 if name in T.FUNCTIONS_2D else 1
    problem = T._build_function(name, seed=0, steps=1, dim=dim)
    (x,) = problem.params
    for far in (1e200, -1e300, math.inf):
        with torch.no_grad():
            x.fill_(far)
        x.grad = None
        value = float(problem.backward(0))
        finite = math.isfinite(value) and bool(torch.isfinite(x.grad).all())
        expected = float(problem.loss(0))  # the tensor definition (f2 is linear far left: finite)
        assert finite == math.isfinite(expected), (name, far, value, expected)


def test_a_far_out_run_is_diverged_not_failed():
    spec = {"key": "k", "task": "rosenbrock", "optimizer": "torch-sgdm", "lr": 1e3, "seed": 0}
    result = execute_run({**spec, "steps": 50, "config_hash": "h"})
    assert result["status"] == "diverged", result.get("error")

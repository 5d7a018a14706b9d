"""R_med (Jiang, Malik & Li, NeurIPS 2023) as a bench diagnostic: measured at the end of each
neural-network run on the task's probe, stored with the run, shown in the report outside the ranks.

The statistic itself is tested in ``test_diagnostics.py``; the fixtures' tiny data in ``conftest.py``.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch.func import functional_call

from adaptim.bench import analysis as A
from adaptim.bench import report as REP
from adaptim.bench import runner as R
from adaptim.bench.diagnostics import r_med_of_diagonal
from adaptim.bench.report import render_report
from adaptim.bench.store import RunRecord, Store
from adaptim.bench.tasks import TASKS, rmed_method

NN_WEIGHTS = {
    "fmnist-mlp": "1.weight",
    "fmnist-cnn": "0.weight",
    "charlm": "blocks.layers.0.linear1.weight",
}


def _probe(task: str, seed: int = 0):
    problem = TASKS[task].build(seed=seed, steps=5)
    assert problem.probe is not None
    return problem, problem.probe


def test_every_network_task_has_a_probe_and_only_they(bench_data):
    assert {name for name, t in TASKS.items() if t.probe_layer} == set(NN_WEIGHTS)
    assert set(NN_WEIGHTS) == {n for n, k in A.TASK_KINDS.items() if k == "neural network"}
    assert TASKS["noisy-quadratic"].build(seed=0, steps=5).probe is None
    for name, weight_name in NN_WEIGHTS.items():
        problem, probe = _probe(name)
        params = dict(probe.model.named_parameters())
        assert probe.name == weight_name and params[weight_name] is probe.weight
        assert any(p is probe.weight for p in problem.params)  # the weight that is trained
        assert tuple(probe.weight.shape) == TASKS[name].probe_shape  # what the report says
        # One probe batch for every seed (the models differ: their seeds).
        _, other = _probe(name, seed=1)
        first = probe.batch if isinstance(probe.batch, tuple) else (probe.batch,)
        second = other.batch if isinstance(other.batch, tuple) else (other.batch,)
        assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
        assert not torch.equal(probe.weight, other.weight)
    assert rmed_method(math.prod(TASKS["fmnist-cnn"].probe_shape)) == "exact"
    assert rmed_method(math.prod(TASKS["fmnist-mlp"].probe_shape)) == "hutchinson"


def test_the_cnn_probe_matches_the_full_hessian_of_its_kernel(bench_data):
    # Exact method: R_med from the diagonal of the kernel's full 72 x 72 Hessian, computed here by
    # torch.autograd.functional.hessian, independently of adaptim.bench.diagnostics.
    _, probe = _probe("fmnist-cnn")
    x, y = probe.batch
    others = {n: p.detach() for n, p in probe.model.named_parameters() if n != probe.name}

    def loss_of(kernel: torch.Tensor) -> torch.Tensor:
        logits = functional_call(probe.model, {**others, probe.name: kernel}, (x,))
        return torch.nn.functional.cross_entropy(logits, y)

    full = torch.autograd.functional.hessian(loss_of, probe.weight.detach())
    diagonal = full.reshape(72, 72).diagonal()
    assert probe.r_med() == pytest.approx(r_med_of_diagonal(diagonal), rel=1e-4)


def test_a_diverged_run_has_no_r_med(bench_data):
    spec = R.make_plan(["fmnist-mlp"], ["torch-sgdm"], seeds=1, lrs=[1e6], steps=10)
    result = R.execute_run(spec.groups[0].first_phase()[0])
    assert result["status"] == "diverged" and "r_med" not in result["metrics"]


def test_a_tiny_bench_stores_r_med_per_run_and_the_report_shows_it(bench_data, tmp_path):
    db = tmp_path / "r.db"
    plan = R.make_plan(
        ["fmnist-mlp", "noisy-quadratic"], ["adam", "torch-sgdm"], seeds=2, lrs=[0.01], steps=20
    )
    with Store(db) as store:
        R.run_plan(plan, store, jobs=1)
        runs = store.runs()
    mlp = [r for r in runs if r.task == "fmnist-mlp"]
    assert len(mlp) == 4 and {r.status for r in mlp} <= {"done", "did-not-learn"}
    values: dict[str, list[float]] = {}
    for r in mlp:
        ((step, seconds, value),) = r.metrics["r_med"]
        assert step == 20 and math.isfinite(value) and value >= 1.0  # max / median >= 1
        assert 0.0 < seconds < r.cpu_seconds  # its own CPU time, inside the run's
        values.setdefault(r.optimizer, []).append(value)
    assert all("r_med" not in r.metrics for r in runs if r.task == "noisy-quadratic")

    summary = render_report(db, tmp_path / "report").with_name("summary.md").read_text()
    mlp_part = summary.split("### Task: fmnist-mlp")[1].split("### ")[0]
    assert "**R_med (diagnostic).** Diagnostic, not used in any ranking" in mlp_part
    assert "arXiv:2211.02254" in mlp_part and "Hutchinson" in mlp_part
    for opt, vals in values.items():  # the mean over both seeds at the (only) lr
        mean = f"{sum(vals) / len(vals):.3g}"
        assert re.search(rf"\| {opt} \| 0\.01 \| {re.escape(mean)} \| [^|]+ \| 2 of 2 \|", mlp_part)
    quadratic_part = summary.split("### Task: noisy-quadratic")[1].split("### ")[0]
    assert "R_med" not in quadratic_part


def _record(i: int, opt: str, final: float, r_med: float | None) -> RunRecord:
    metrics = {} if r_med is None else {"r_med": torch.tensor([[50, 0.1, r_med]]).double().numpy()}
    return RunRecord(
        id=i,
        key=f"k{i}",
        task="charlm",
        optimizer=opt,
        lr=0.01,
        seed=i,
        config_hash="h",
        config={"steps": 50},
        status="done",
        wall_seconds=2.0,
        cpu_seconds=2.0,
        train_seconds=1.5,
        steps_done=50,
        final_metric=final,
        initial_metric=6.0,
        final_loss=final,
        steps_to_target=None,
        seconds_to_target=None,
        error=None,
        env_id=None,
        metrics=metrics,
    )


def test_r_med_rows_count_only_finite_values_and_skip_older_runs():
    # b's second run has no finite R_med (NULL in the database reads back NaN); c is an older
    # bench's, without R_med. Without any R_med the task has no table.
    runs = [
        _record(0, "a", 2.0, 10.0),
        _record(1, "a", 2.1, 30.0),
        _record(2, "b", 3.0, 5.0),
        _record(3, "b", 3.1, math.nan),
        _record(4, "c", 4.0, None),
    ]
    (t,) = A.summarize(runs)
    rows = {row[0]: row for row in REP._rmed_rows(t)}
    assert rows["a"][2:] == ["20", "10 - 30", "2 of 2"]
    assert rows["b"][2:] == ["5", "5 - 5", "1 of 2"]
    assert rows["c"][2:] == ["-", "-", "0 of 1"]
    assert "0.1 s per run (5% of a run's CPU time)" in REP._rmed_note(t)
    (old,) = A.summarize([_record(5, "a", 2.0, None)])
    assert REP._rmed_rows(old) == []

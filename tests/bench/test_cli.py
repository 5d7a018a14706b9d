"""The ``adaptim`` command: list, argument errors, a tiny bench end to end, report."""

from __future__ import annotations

import subprocess
import sys

import pytest

from adaptim.bench.costs import load_costs
from adaptim.bench.runner import EXPECTED_SEARCH_EXTRA, PROMOTE, make_plan
from adaptim.bench.store import Store
from adaptim.cli import main


def test_list_shows_tasks_and_optimizers(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in (
        "rosenbrock",
        "beale",
        "rastrigin",
        "diffgrad-f1",
        "noisy-quadratic",
        "digits-logreg",
        "fmnist-mlp",
        "fmnist-cnn",
        "charlm",
        "torch-adamw",
        "torch-sgdm",
        "adam",
        "adamw",
    ):
        assert f"  {name} " in out, name
    assert "Tasks" in out and "Optimizers" in out
    assert "[300 steps; --long: 1200, target 2.7]" in out  # charlm


def test_console_entry_point_runs():
    proc = subprocess.run(
        [sys.executable, "-m", "adaptim.cli", "list"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and "noisy-quadratic" in proc.stdout


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["bench", "--optimizers", "adamm"], "unknown optimizer 'adamm'; did you mean 'adam'"),
        (["bench", "--optimizers", "adam,torch-sgd"], "did you mean 'torch-sgdm'"),
        (["bench", "--tasks", "rosenbrok"], "unknown task 'rosenbrok'; did you mean 'rosenbrock'"),
        (["bench", "--tasks", "fmnist-mpl"], "did you mean 'fmnist-mlp'"),
        (["bench", "--lrs", "1e-3:1e-1"], "expected lo:hi:n"),
        (["bench", "--lrs", "1e-1:1e-3:3"], "0 < lo <= hi"),
        (["bench", "--lrs", "nan"], "--lrs 'nan': 'nan' is not a finite number"),
        (["bench", "--lrs", "1e-3,inf"], "--lrs '1e-3,inf': 'inf' is not a finite number"),
        (["bench", "--lrs", "1e-3:inf:3"], "--lrs '1e-3:inf:3': 'inf' is not a finite number"),
        (["bench", "--lrs=-inf:1e-1:3"], "'-inf' is not a finite number"),
        (["bench", "--lrs", "1e-3:1e-1:2.5"], "--lrs '1e-3:1e-1:2.5': n = '2.5' is not a positive"),
        (["bench", "--lrs", "fast"], "--lrs 'fast': 'fast' is not a finite number"),
        (["bench", "--lrs", "0,1e-3"], "--lrs '0,1e-3': learning rates must be positive"),
        (["bench", "--optimizers", "zzz*"], "no optimizer matches"),
    ],
)
def test_bad_arguments_exit_nonzero_with_a_hint(argv, expected, capsys, tmp_path):
    assert main([*argv, "--db", str(tmp_path / "x.db")]) == 2
    err = capsys.readouterr().err
    assert expected in err
    assert not (tmp_path / "x.db").exists()  # refused before anything was written


@pytest.mark.parametrize(
    "argv",
    [
        ["bench", "--seeds", "0"],
        ["bench", "--jobs", "-1"],
        ["bench", "--quick", "--long"],
        ["frobnicate"],
    ],
)
def test_argparse_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "bench" in capsys.readouterr().out


def test_report_without_database_is_an_error(tmp_path, capsys):
    assert main(["report", "--db", str(tmp_path / "none.db"), "--out", str(tmp_path / "r")]) == 2
    assert "no results database" in capsys.readouterr().err


def test_tiny_bench_end_to_end(tmp_path, capsys, bench_data):
    db, out = tmp_path / "b.db", tmp_path / "report"
    argv = [
        "bench",
        "--optimizers",
        "adam,torch-sgdm",
        "--tasks",
        "beale,fmnist-mlp",
        "--steps",
        "12",
        "--seeds",
        "2",
        "--jobs",
        "1",
        "--db",
        str(db),
        "--out",
        str(out),
        "--no-progress",
    ]
    # The estimate printed before the runs is the plan's: per group, the 3-lr starting grid, the
    # runs a search is expected to add, the lrs a short-run search promotes (fmnist-mlp: successive
    # halving), and the second seed.
    plan = make_plan(["beale", "fmnist-mlp"], ["adam", "torch-sgdm"], seeds=2, steps=12)
    halving = [g.search_steps is not None for g in plan.groups]
    assert halving == [False, False, True, True]
    expected = sum(
        len(g.lrs) + EXPECTED_SEARCH_EXTRA - (g.task == "beale") + 1 + PROMOTE * h
        for g, h in zip(plan.groups, halving, strict=True)
    )
    assert plan.total_runs() == expected and len(plan.groups) == 4
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert f"{expected} runs to do" in text
    assert "estimated" in text and f"report: {out / 'index.html'}" in text
    with Store(db) as store:
        runs = store.runs(with_metrics=False)
        envs = store.environments()
        costs = load_costs(store)
    assert {r.status for r in runs} <= {"done", "did-not-learn", "diverged"}
    for task in ("beale", "fmnist-mlp"):
        for opt in ("adam", "torch-sgdm"):
            group = [r for r in runs if (r.task, r.optimizer) == (task, opt)]
            search = [r for r in group if r.config.get("search_of")]
            full = [r for r in group if not r.config.get("search_of")]
            searched = search if task == "fmnist-mlp" else full
            assert len({r.lr for r in searched if r.seed == 0}) >= 3  # at least the starting grid
            if task == "fmnist-mlp":  # the short runs' best lrs ran at full length on seed 0
                assert all(r.steps_done <= 3 and r.seed == 0 for r in search)
                promoted = {r.lr for r in full if r.seed == 0}
                assert 1 <= len(promoted) <= PROMOTE and promoted <= {r.lr for r in search}
            assert len([r for r in group if r.seed == 1]) <= 1  # the other seed, at the chosen lr
    (env,) = envs.values()
    assert env["threads_per_run"] == 1 and env["torch"] and env["cores"] >= 1 and "git" in env
    assert len(env["load_average"]) == 3
    # The costs were measured for the optimizers of the bench (a step time: not --quick).
    assert sorted(costs) == ["adam", "torch-sgdm"]
    assert costs["torch-sgdm"].state_bytes_32 == pytest.approx(4.0)  # one momentum buffer
    assert all(c.step_ratio is not None and c.step_ratio > 0 for c in costs.values())
    assert "measuring the optimizers' state memory and step time" in text
    assert (out / "index.html").stat().st_size > 10_000 and (out / "summary.md").is_file()
    # Same command again: everything is skipped (the searches replay to their end from the db).
    assert main(argv) == 0
    assert f"0 runs to do ({len(runs)} already finished, skipped)" in capsys.readouterr().out
    # `adaptim report` re-renders from the database alone.
    out2 = tmp_path / "report2"
    assert main(["report", "--db", str(db), "--out", str(out2)]) == 0
    assert (out2 / "index.html").is_file()


def test_bench_defaults_to_five_seeds(monkeypatch, tmp_path, capsys):
    import adaptim.cli as cli
    from adaptim.bench import runner

    seen = {}

    def fake_make_plan(tasks, optimizers, **kwargs):
        seen.update(kwargs)
        return runner.Plan(groups=[])

    monkeypatch.setattr(runner, "make_plan", fake_make_plan)
    argv = ["bench", "--tasks", "beale", "--optimizers", "adam", "--db", str(tmp_path / "x.db")]
    assert cli.main(argv) == 1  # an empty plan: nothing to run
    assert seen["seeds"] == 5 == cli.DEFAULT_SEEDS
    assert seen["length"] == "default"
    assert cli.main([*argv, "--quick"]) == 1
    assert seen["seeds"] == 1 and seen["length"] == "quick"
    assert cli.main([*argv, "--long"]) == 1
    assert seen["seeds"] == 5 and seen["length"] == "long"


def test_bench_skips_tasks_without_data(tmp_path, capsys, no_data):
    db = tmp_path / "b.db"
    argv = [
        "bench",
        "--optimizers",
        "torch-sgdm",
        "--tasks",
        "fmnist-mlp,charlm,diffgrad-f3",
        "--steps",
        "5",
        "--seeds",
        "1",
        "--jobs",
        "1",
        "--db",
        str(db),
        "--no-report",
        "--no-progress",
    ]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert (
        "skipping task fmnist-mlp" in captured.err
        and "apt-get install dataset-fashion-mnist" in captured.err
    )
    assert "skipping task charlm" in captured.err and "apt-get install bible-kjv" in captured.err
    with Store(db) as store:
        assert {r.task for r in store.runs(with_metrics=False)} == {"diffgrad-f3"}
    # Only missing tasks: nothing to run is an error.
    assert main([*argv[:4], "fmnist-cnn", *argv[5:]]) == 1
    assert "nothing to run" in capsys.readouterr().err


def test_claims_suite_is_stored_and_reported(tmp_path, capsys, monkeypatch):
    import types

    calls = {}

    def fake_run_claims(seeds=3, only=None, progress=None):
        calls.update(seeds=seeds, only=only)
        if progress:
            progress("checking toy claim")
        result = types.SimpleNamespace
        return [
            result(
                name="toy-holds",
                paper="Paper A",
                statement="A beats B.",
                holds=True,
                numbers={"a": 1.0, "b": 2.0},
                detail="a < b",
                seconds=0.1,
                verdict="holds",
            ),
            result(
                name="toy-fails",
                paper="Paper B",
                statement="C beats D.",
                holds=False,
                numbers={"c": 3.0},
                detail="c > d",
                seconds=0.1,
                verdict="does not hold",
            ),
            result(
                name="toy-skipped",
                paper="Paper C",
                statement="E.",
                holds=None,
                numbers={},
                detail="needs e, not registered",
                seconds=0.0,
                verdict="skipped",
            ),
        ]

    # A stand-in for adaptim.bench.claims with the agreed interface (the real suite is tested apart).
    fake = types.ModuleType("adaptim.bench.claims")
    fake.run_claims = fake_run_claims
    monkeypatch.setitem(sys.modules, "adaptim.bench.claims", fake)
    db, out = tmp_path / "c.db", tmp_path / "rep"
    assert (
        main(
            [
                "bench",
                "--suite",
                "claims",
                "--seeds",
                "2",
                "--claims",
                "toy-*",
                "--db",
                str(db),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert calls == {"seeds": 2, "only": ["toy-*"]}
    assert "checking toy claim" in text
    assert "does not hold at this scale" in text and "skipped" in text and "1 hold" in text
    with Store(db) as store:
        assert [c["name"] for c in store.latest_claims()] == [
            "toy-fails",
            "toy-holds",
            "toy-skipped",
        ]
    page = (out / "index.html").read_text()
    assert (
        "Claims of the papers" in page
        and "toy-fails" in page
        and "does not hold at this scale" in page
    )


def test_claims_suite_without_module(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "adaptim.bench.claims", None)  # import raises ImportError
    assert main(["bench", "--suite", "claims", "--db", str(tmp_path / "c.db")]) == 1
    assert "claims suite is not available" in capsys.readouterr().err


def test_ctrl_c_while_measuring_costs_keeps_the_runs(monkeypatch, tmp_path, capsys):
    from adaptim.bench import costs

    def interrupted(names, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(costs, "measure_costs", interrupted)
    db = tmp_path / "k.db"
    argv = ["bench", "--tasks", "diffgrad-f1", "--optimizers", "adam", "--steps", "3"]
    argv += ["--seeds", "1", "--lrs", "0.1", "--jobs", "1", "--db", str(db), "--no-progress"]
    assert main(argv) == 130
    assert "stopped while measuring the optimizers' costs" in capsys.readouterr().err
    with Store(db) as store:
        assert [r.status for r in store.runs(with_metrics=False)] == ["done"]
        assert load_costs(store) == {}

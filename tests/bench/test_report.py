"""The report and the numbers behind it."""

from __future__ import annotations

import base64
import math
import re

import numpy as np
import pytest

from adaptim.bench import analysis as A
from adaptim.bench import report as REP
from adaptim.bench import runner as R
from adaptim.bench.costs import OptimizerCost, store_costs
from adaptim.bench.optimizers import BASELINES
from adaptim.bench.report import recommendations, render_report
from adaptim.bench.store import RunRecord, Store


def _rec(
    i,
    lr,
    seed,
    final,
    status="done",
    init=1.0,
    stt=None,
    sec=None,
    task="noisy-quadratic",
    opt="x",
    metrics=None,
):
    return RunRecord(
        id=i,
        key=f"k{i}",
        task=task,
        optimizer=opt,
        lr=lr,
        seed=seed,
        config_hash="h",
        config={"steps": 10},
        status=status,
        wall_seconds=1.0,
        cpu_seconds=1.0,
        train_seconds=1.0,
        steps_done=10,
        final_metric=final,
        initial_metric=init,
        final_loss=final,
        steps_to_target=stt,
        seconds_to_target=sec,
        error=None,
        env_id=None,
        metrics=metrics or {},
    )


def test_best_lr_spread_band_and_time_to_target():
    runs = [
        _rec(1, 1e-3, 0, 0.5),
        _rec(2, 3e-3, 0, 0.10, stt=40, sec=0.4),
        _rec(3, 1e-2, 0, 0.14),
        _rec(4, 3e-2, 0, None, status="diverged"),
        _rec(5, 3e-3, 1, 0.20, stt=60, sec=0.6),
        _rec(6, 3e-3, 2, 0.15),  # did not reach the target
    ]
    (t,) = A.summarize(runs)
    g = t.groups["x"]
    # Best lr chosen on the seed every lr ran (seed 0), spread over all seeds of the best lr.
    assert g.best_lr == 3e-3 and not g.best_at_edge
    assert g.mean == pytest.approx(0.15) and g.std == pytest.approx(0.05) and g.n_seeds == 3
    # 2 of 3 seeds reached the target: median steps over (40, 60, never) is 60.
    assert g.reached == 2 and g.steps_to_target == 60 and g.seconds_to_target == pytest.approx(0.6)
    # Band: |m - 0.10| <= 0.05 * (1.0 - 0.10) = 0.045 -> 1e-2 (0.14) is inside, 1e-3 (0.5) is not.
    assert g.band == (3e-3, 1e-2) and g.band_decades == pytest.approx(math.log10(1e-2 / 3e-3))
    assert not g.band_open
    curve = {lr: m for lr, m, *_ in g.lr_curve}
    assert math.isnan(curve[3e-2]) and curve[1e-3] == 0.5


def test_higher_is_better_metrics_and_profile():
    acc = "fmnist-mlp"
    runs = [
        _rec(1, 1e-3, 0, 0.80, task=acc, opt="a", init=0.1, stt=100),
        _rec(2, 1e-2, 0, 0.85, task=acc, opt="a", init=0.1, stt=50),
        _rec(3, 1e-3, 0, 0.90, task=acc, opt="b", init=0.1, stt=25),
        _rec(4, 1e-2, 0, 0.70, task=acc, opt="b", init=0.1),
        _rec(5, 0.1, 0, 0.02, opt="a"),
        _rec(6, 0.1, 0, 0.01, opt="b"),
    ]
    tasks = A.summarize(runs)
    assert [t.task.name for t in tasks] == ["noisy-quadratic", "fmnist-mlp"]  # the bench's order
    mlp = tasks[1]
    assert mlp.groups["a"].best_lr == 1e-2 and mlp.groups["a"].best_at_edge
    assert mlp.groups["a"].band_open  # the band reaches the grid's edge
    assert [g.optimizer for g in mlp.ranked()] == ["b", "a"]
    names, ratios = A.performance_profile(tasks, "final")
    assert names == ["a", "b"]
    # noisy-quadratic: errors 0.02 vs 0.01; fmnist: 1-acc = 0.15 vs 0.10.
    np.testing.assert_allclose(ratios, [[2.0, 1.0], [1.5, 1.0]])
    _, steps = A.performance_profile(tasks, "steps")
    assert steps[1].tolist() == [2.0, 1.0] and np.isinf(steps[0]).all()
    rho = A.profile_curve(ratios, np.array([1.0, 1.6, 2.0]))
    np.testing.assert_allclose(rho, [[0.0, 1.0], [0.5, 1.0], [1.0, 1.0]])
    assert [n for n, _, _ in A.overall_ranking(tasks)] == ["b", "a"]


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_report_renders_images_tables_and_claims(tmp_path):
    db = tmp_path / "r.db"
    plan = R.make_plan(
        ["rosenbrock", "diffgrad-f2", "noisy-quadratic"], ["adam", "torch-sgdm"], seeds=2, steps=40
    )
    with Store(db) as store:
        env = store.add_environment(
            {
                "cpu": "test-cpu",
                "cores": 2,
                "jobs": 1,
                "threads_per_run": 1,
                "python": "3",
                "torch": "2",
                "adaptim": "0",
                "git": None,
                "argv": ["adaptim", "bench"],
                "load_average": [1.5, 0.25, 3.0],
            }
        )
        R.run_plan(plan, store, jobs=1, env_id=env)
        store_costs(store, [OptimizerCost("torch-sgdm", 4.0, None, 0.97, 1e-3)], env)

        class Claim:
            name, paper, statement, holds = "toy", "Paper", "A beats B.", False
            numbers, detail, seconds, verdict = {"a": 1.0}, "a > b", 0.1, "does not hold"

        store.add_claims([Claim()], env)
    out = tmp_path / "report"
    index = render_report(db, out)
    assert index == out / "index.html"
    pngs = sorted(p.name for p in (out / "img").glob("*.png"))
    expected = {
        "performance-profile.png",
        "functions-1d.png",
        "trajectories-rosenbrock.png",
        *(
            f"{kind}-{t}.png"
            for kind in ("curves", "lr")
            for t in ("rosenbrock", "diffgrad-f2", "noisy-quadratic")
        ),
    }
    assert expected <= set(pngs), pngs
    import matplotlib.image as mpimg
    from PIL import Image

    for name in pngs:
        data = (out / "img" / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5_000, name
        img = mpimg.imread(out / "img" / name)
        assert img.shape[0] > 100 and img.shape[1] > 100 and float(img[..., :3].std()) > 0.01, name
        with Image.open(out / "img" / name) as im:  # a palette PNG: a light page
            assert im.mode == "P" and len(im.getcolors(1024)) <= 256, name
    page = index.read_text()
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(embedded) == len(pngs)  # self-contained: every figure is inside the page
    assert all(base64.b64decode(e).startswith(PNG_MAGIC) for e in embedded)
    for text in (
        "Time to target",
        "Performance profiles",
        "Task: rosenbrock",
        "torch-sgdm",
        "does not hold at this scale",
        "test-cpu",
        "1.50 0.25 3.00",  # the load average when the bench started
        "Mean rank by kind of task",
        "What to use when",
        "Convex problems (noisy-quadratic)",
        "Cost: state memory and step time",
        "No compile time: the bench steps every optimizer as <code>fused=None</code>",
        "<td>torch-sgdm</td><td>4</td><td>no 8-bit states</td><td>0.97×</td>",
    ):
        assert text in page, text
    # The test functions are diagnostics: after the ranked tasks, under their own heading.
    diag = page.index("Diagnostics: test functions (not ranked)")
    assert page.index("Task: noisy-quadratic") < diag < page.index("Task: rosenbrock")
    assert page.index("Task: diffgrad-f2") > diag
    # The table of contents links every section heading, and every link has its target.
    toc = page[page.index("<nav class=toc>") : page.index("</nav>")]
    links = re.findall(r"<a href='#([^']+)'>", toc)
    ids = re.findall(r"<h[23] id='([^']+)'>", page)
    assert links == ids and len(ids) >= 10 and len(set(ids)) == len(ids)
    assert set(re.findall(r"<a href='#([^']+)'>", page)) <= set(ids)  # links in the text too
    assert page.index("<nav class=toc>") < page.index("<h2")
    assert _unbalanced_tags(page) == []
    summary = (out / "summary.md").read_text()
    assert "| optimizer |" in summary and "### Task: noisy-quadratic" in summary
    assert "![performance profile](img/performance-profile.png)" in summary


def _unbalanced_tags(page: str) -> list[str]:
    """Tags closed out of order or never closed, and lists placed straight inside lists."""
    from html.parser import HTMLParser

    class Checker(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.stack: list[str] = []
            self.problems: list[str] = []

        def handle_starttag(self, tag, attrs):
            if tag in ("img", "meta", "br"):
                return
            if tag == "ul" and self.stack[-1:] == ["ul"]:
                self.problems.append(f"ul inside ul at {self.getpos()}")
            self.stack.append(tag)

        def handle_endtag(self, tag):
            if self.stack[-1:] != [tag]:
                self.problems.append(f"</{tag}> at {self.getpos()} inside {self.stack[-3:]}")
            else:
                self.stack.pop()

    checker = Checker()
    checker.feed(page)
    return checker.problems + [f"<{t}> never closed" for t in checker.stack]


def test_report_of_an_empty_database(tmp_path):
    db = tmp_path / "empty.db"
    Store(db).close()
    index = render_report(db, tmp_path / "r")
    assert "0 runs" in index.read_text()


def test_baselines_have_their_own_styles():
    assert set(REP.BASELINE_STYLE) == set(BASELINES)
    styles = REP._styles([*BASELINES, "adam", "adan"])
    assert len({repr(styles[n]) for n in styles}) == len(styles)  # no two drawn alike
    assert all(styles[n] == REP.BASELINE_STYLE[n] for n in BASELINES)
    # The other optimizers get colours, never the baselines' black and greys.
    greys = {"black", "dimgray"}
    assert styles["adam"][0] not in greys and len(set(styles["adam"][0])) > 1


def test_task_rows_mark_did_not_learn_the_searched_range_and_the_interval():
    runs = [
        _rec(1, 1e-3, 0, 0.5, opt="good"),
        _rec(2, 1e-2, 0, 0.2, opt="good"),
        _rec(3, 3e-2, 0, 0.10, opt="good"),
        _rec(4, 3e-2, 1, 0.20, opt="good"),
        _rec(5, 3e-2, 2, 0.15, opt="good"),
        # 1.0 -> 0.98: 2% of the gap to the ideal 0, under LEARN_FRACTION: did not learn.
        _rec(6, 1e-3, 0, 0.99, status="did-not-learn", opt="stuck"),
        _rec(7, 1e-2, 0, 0.98, status="did-not-learn", opt="stuck"),
    ]
    (t,) = A.summarize(runs)
    rows, classes = REP._task_rows(t)
    good, stuck = rows
    half = 4.302652729911275 * 0.05 / math.sqrt(3)  # t(0.975, 2) * sd / sqrt(n)
    assert good[:6] == [
        "1",
        "good",
        "0.03*",
        "0.001 – 0.03 (3 lrs); * best at the high end",
        "0.15 ± 0.05 (n=3)",
        f"[{0.15 - half:.4g}, {0.15 + half:.4g}]",
    ]
    assert stuck[0] == "-" and stuck[4] == "0.98 (n=1), did not learn"
    assert stuck[5] == "- (1 seed)" and "2 did-not-learn" in stuck[9]
    assert classes == ["", "dnl"]
    table = REP._html_table(REP.TASK_HEADER, rows, True, classes)
    assert '<tr class="best"><td>1</td>' in table and '<tr class="dnl"><td>-</td>' in table


def _series(values):
    return np.array([[10 * i, 0.1 * i, v] for i, v in enumerate(values)], dtype=float)


def test_curves_keep_runs_at_chance_level_in_view(tmp_path):
    mlp = "fmnist-mlp"
    learner = {"metric": _series([0.1, 0.7, 0.85]), "train_loss": _series([2.3, 0.6, 0.4])}
    stuck = {"metric": _series([0.1, 0.1, 0.11]), "train_loss": _series([2.3, 2.3, 2.3])}
    runs = [
        _rec(1, 1e-2, 0, 0.85, task=mlp, opt="a", init=0.1, metrics=learner),
        _rec(2, 1e-2, 0, 0.11, "did-not-learn", task=mlp, opt="b", init=0.1, metrics=stuck),
    ]
    (t,) = A.summarize(runs)
    assert not t.groups["b"].learned
    seen = {}

    class Capture(REP._Figures):
        def save(self, fig, name, dpi=90):
            seen["ylim"] = fig.axes[1].get_ylim()
            seen["labels"] = fig.axes[1].get_legend_handles_labels()[1]
            return super().save(fig, name, dpi)

    figs = Capture(tmp_path)
    assert REP._curves_figure(t, REP._styles(["a", "b"]), figs) == "curves-fmnist-mlp"
    low, high = seen["ylim"]
    assert low <= 0.1 and high >= 0.85  # the run at chance is drawn, not clipped
    assert "b (lr 0.01, did not learn)" in seen["labels"] and "chance" in seen["labels"]


def _store_group(store, task, opt, values, init, status="done", lr=0.01):
    for seed, value in enumerate(values):
        spec = {
            "key": f"{task}|{opt}|{seed}",
            "task": task,
            "optimizer": opt,
            "lr": lr,
            "seed": seed,
            "config_hash": f"h-{task}",
            "steps": 100,
        }
        result = {"status": status, "final_metric": value, "initial_metric": init}
        store.write_result(spec, result, None)


def test_what_to_use_when_is_computed_from_the_stored_results(tmp_path):
    db = tmp_path / "w.db"
    with Store(db) as store:
        # fmnist-mlp: a and b cannot be told apart (3 seeds each), c is clearly behind, d at chance.
        _store_group(store, "fmnist-mlp", "a", [0.85, 0.86, 0.84], 0.1)
        _store_group(store, "fmnist-mlp", "b", [0.848, 0.852, 0.85], 0.1)
        _store_group(store, "fmnist-mlp", "c", [0.60, 0.61, 0.59], 0.1)
        _store_group(store, "fmnist-mlp", "d", [0.1, 0.1, 0.1], 0.1, status="did-not-learn")
        # charlm (bits per character, lower is better): b alone in front.
        _store_group(store, "charlm", "b", [2.0, 2.1, 2.05], 6.0)
        _store_group(store, "charlm", "a", [3.0, 3.1, 3.05], 6.0)
        _store_group(store, "charlm", "c", [3.5, 3.6, 3.55], 6.0)
        # The noisy quadratic (convex), one seed each: c first; rosenbrock is a diagnostic.
        _store_group(store, "noisy-quadratic", "c", [0.01], 1.0)
        _store_group(store, "noisy-quadratic", "a", [0.05], 1.0)
        _store_group(store, "rosenbrock", "a", [0.001], 1.0)
        _store_group(store, "rosenbrock", "b", [0.5], 1.0)
        store_costs(
            store,
            [OptimizerCost("a", 8.0, 2.11, 1.2, 1e-3), OptimizerCost("b", 4.0, None, 0.9, 1e-3)],
            None,
        )
        advice = {a.kind: a for a in recommendations(A.summarize(store.runs()))}
    assert sorted(advice) == ["convex", "neural network"]  # no advice from a diagnostic
    nn = advice["neural network"]
    assert nn.per_task == {"fmnist-mlp": ("a", "b"), "charlm": ("b",)}
    assert nn.best == ("b",) and nn.top_count == 2 and nn.seeds == (3, 3)
    # Mean ranks: fmnist-mlp a 1, b 1 (tied), c 3, d last (4); charlm b 1, a 2, c 3, d absent (4).
    assert nn.mean_rank == {"a": 1.5, "b": 1.0, "c": 3.0, "d": 4.0}
    assert advice["convex"].best == ("c",) and advice["convex"].seeds == (1, 1)

    page = render_report(db, tmp_path / "rep").read_text()
    section = page[page.index("<h2 id='what-to-use-when'>") : page.index("<h2 id='mean-rank")]
    assert (
        "<b>Neural networks.</b> In the top tie group on 2 of 2 tasks (fmnist-mlp, charlm): b "
        "(mean rank 1.00; 4 B/param of state, a step 0.90× fused AdamW&#x27;s)." in section
    )
    assert (
        "<b>Convex problems.</b> In the top tie group on 1 of 1 task (noisy-quadratic): c"
        in section
    )
    assert "One seed per optimizer" in section and "3 seeds at each optimizer" in section
    assert "rosenbrock" not in section
    summary = (tmp_path / "rep" / "summary.md").read_text()
    assert "| 1 | b | 1.00 | 2 | 2 of 2 | 4 | no 8-bit states | 0.90× |" in summary
    assert "| 2 | a | 1.50 | 2 | 1 of 2 | 8 | 2.11 | 1.20× |" in summary


def test_1d_paths_that_leave_the_window_stay_in_view(tmp_path):
    db = tmp_path / "f.db"
    with Store(db) as store:
        for opt, path in (("a", np.linspace(-1.0, -0.3, 50)), ("b", np.linspace(-1.0, 2.5, 50))):
            spec = {
                "key": opt,
                "task": "diffgrad-f1",
                "optimizer": opt,
                "lr": 0.1,
                "seed": 0,
                "config_hash": "h",
                "steps": 49,
            }
            final = abs(path[-1] + 0.3)  # distance to the minimizer at -0.3
            result = {"status": "done", "final_metric": final, "initial_metric": 0.7}
            result["series"] = {"trajectory": path[:, None]}
            store.write_result(spec, result, None)
        tasks = A.summarize(store.runs())
        seen = {}

        class Capture(REP._Figures):
            def save(self, fig, name, dpi=90):
                seen["ylim"] = fig.axes[1].get_ylim()  # x against step, under f(x)
                return super().save(fig, name, dpi)

        name = REP._functions_1d_figure(tasks, REP._styles(["a", "b"]), Capture(tmp_path), store)
    assert name == "functions-1d"
    assert not tasks[0].groups["b"].learned  # it ran away from the minimizer
    low, high = seen["ylim"]
    assert low <= -1.0 and high >= 2.5  # b's path is drawn to its end


def _draw_lr_figure(t, folder) -> dict:
    """Draw ``t``'s lr figure (one optimizer, "x"); its y limits, y scale and title."""
    seen = {}

    class Capture(REP._Figures):
        def save(self, fig, name, dpi=90):
            ax = fig.axes[0]
            seen.update(ylim=ax.get_ylim(), scale=ax.get_yscale(), title=ax.get_title())
            return super().save(fig, name, dpi)

    assert REP._lr_figure(t, {"x": ("C0", "-")}, Capture(folder)) is not None
    return seen


def test_the_lr_figure_stops_a_little_above_the_initial_metric(tmp_path):
    # charlm-like: starts near 6, one lr ended at 37 (worse than the start), the others near 3
    runs = [
        _rec(1, 1e-3, 0, 3.4, init=6.0, task="charlm"),
        _rec(2, 1e-2, 0, 3.1, init=6.2, task="charlm"),
        _rec(3, 1e-1, 0, 37.0, init=6.0, task="charlm"),
    ]
    (t,) = A.summarize(runs)
    assert REP._worse_than_start_cap(t) == pytest.approx(1.1 * 6.0)
    (acc,) = A.summarize([_rec(1, 1e-3, 0, 0.8, init=0.1, task="fmnist-mlp")])
    assert REP._worse_than_start_cap(acc) is None  # a chance level bounds the axis already
    seen = _draw_lr_figure(t, tmp_path)
    low, high = seen["ylim"]
    assert 3.1 > low > 2.5 and 3.4 < high < 6.6  # the 37 is off the top, 3.1-3.4 fills the axis
    assert "off the top" in seen["title"]


def test_a_clipped_log_axis_leaves_exact_zeros_out(tmp_path):
    import warnings

    runs = [  # distances: one lr reached the minimizer exactly, one ended far from the start
        _rec(i, lr, 0, final, init=2.0, task="rosenbrock")
        for i, (lr, final) in enumerate([(1e-3, 1e-3), (1e-2, 0.0), (1e-1, 1e-5), (1.0, 100.0)])
    ]
    (t,) = A.summarize(runs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "non-positive ylim on a log-scaled axis"
        seen = _draw_lr_figure(t, tmp_path)
    low, high = seen["ylim"]
    assert seen["scale"] == "log" and 0 < low < 1e-5 and 1e-3 < high < 2.2

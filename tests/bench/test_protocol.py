"""The bench's protocol: the lr search that brackets the best lr, did-not-learn detection, and the
recommendation read back from the stored results."""

from __future__ import annotations

import math
from dataclasses import replace
from unittest.mock import patch

import pytest

from adaptim.bench import analysis as A
from adaptim.bench import runner as R
from adaptim.bench.store import FINISHED, RunRecord, Store
from adaptim.bench.tasks import TASKS

QUADRATIC = TASKS["noisy-quadratic"]  # lower is better, baseline: the initial metric
ACCURACY = TASKS["fmnist-mlp"]  # higher is better, baseline: chance (10%)
START = [1e-3, 0.003162, 0.01]


def _bowl(best_lr: float, initial: float = 10.0):
    """A unimodal metric of log10(lr), minimal at ``best_lr``; above 1 the run diverges."""

    def result(lr: float) -> A.LrResult:
        if lr > 1.0:
            return A.LrResult("diverged")
        value = (math.log10(lr) - math.log10(best_lr)) ** 2
        return A.LrResult("learned" if value < 0.95 * initial else "not-learned", value)

    return result


def _search(outcome, start=START, **kwargs) -> tuple[A.SearchState, int]:
    """Run a search to its end, feeding it ``outcome(lr)``; the state and the rounds it took."""
    results: dict[float, A.LrResult] = {}
    for rounds in range(1, 50):
        state = A.replay_search(QUADRATIC, start, results, **kwargs)
        if state.finished:
            return state, rounds
        for lr in state.pending:
            results[lr] = outcome(lr)
    raise AssertionError("the search did not end")


def test_a_best_lr_at_the_edge_widens_the_search_until_it_is_bracketed():
    state, _ = _search(_bowl(0.1))
    # 3 lrs, widened up half a decade at a time to 0.3162 (worse than 0.1), then one refinement
    assert state.searched[:3] == tuple(START)
    assert state.widened == (0, 3) and max(state.searched) == pytest.approx(0.3162)
    assert state.chosen == pytest.approx(0.1)
    i = state.searched.index(state.chosen)
    assert 0 < i < len(state.searched) - 1  # bracketed: not at the edge
    # the same on the low side, on a lattice that snaps to round numbers
    low, _ = _search(_bowl(3e-5))
    assert (
        low.widened == (4, 0) and low.searched[0] == 1e-5 and low.chosen == pytest.approx(3.162e-5)
    )


def test_the_widening_is_bounded_and_an_edge_best_stays_an_edge():
    state, _ = _search(_bowl(1e-9, initial=1e3), widen=2)  # every lr learned something
    assert state.widened == (2, 0) and state.searched[0] == 1e-4
    assert state.chosen == 1e-4  # the lowest searched: the report flags it


def test_refinement_goes_to_the_parabola_vertex_between_the_neighbours():
    # the optimum 0.0045 lies between the grid's 0.003162 and 0.01, nearer the former
    state, _ = _search(_bowl(0.0045))
    (extra,) = set(state.searched) - set(START)  # no widening: one refinement
    assert extra == pytest.approx(0.0045, rel=1e-3) and state.chosen == extra
    # an optimum on a grid point needs no refinement
    on_grid, _ = _search(_bowl(0.003162))
    assert on_grid.searched == tuple(START) and on_grid.chosen == 0.003162


def test_refinement_halfway_to_the_finite_neighbour_when_the_other_diverged():
    results = {
        1e-3: A.LrResult("learned", 5.0),
        0.003162: A.LrResult("learned", 1.0),
        0.01: A.LrResult("diverged"),
    }
    state = A.replay_search(QUADRATIC, START, results)
    assert state.pending == (0.001778,)  # 10 ** -2.75: half-way (in log lr) to 1e-3


def test_without_any_lr_that_learned_the_search_looks_lower_or_both_ways():
    diverged = {lr: A.LrResult("diverged") for lr in START}
    assert A.replay_search(QUADRATIC, START, diverged).pending == (0.0003162,)
    flat = {lr: A.LrResult("not-learned", 10.0) for lr in START}
    assert A.replay_search(QUADRATIC, START, flat).pending == (0.0003162, 0.03162)
    failed = {lr: A.LrResult("failed") for lr in START}
    state = A.replay_search(QUADRATIC, START, failed)  # errors say nothing about the lr
    assert state.finished and not state.found and state.searched == tuple(START)
    # a fixed grid (--lrs) never grows
    fixed = A.replay_search(QUADRATIC, START, diverged, widen=0, refine=False)
    assert fixed.finished and not fixed.found and fixed.searched == tuple(START)


def test_the_search_is_a_function_of_the_results_whatever_their_order():
    outcome = _bowl(0.05)
    full, rounds = _search(outcome)
    assert rounds > 2
    # results that arrive in any order, or all at once (a resumed bench), give the same decisions
    everything = {lr: outcome(lr) for lr in full.searched}
    assert A.replay_search(QUADRATIC, START, everything) == full
    partial = {lr: everything[lr] for lr in full.searched[::2]}
    state = A.replay_search(QUADRATIC, START, partial)
    assert not state.finished and set(state.pending) <= set(full.searched)


# -- did not learn ---------------------------------------------------------------------------------


def test_learned_means_beating_the_trivial_baseline():
    # classification: chance accuracy, whatever the run started at
    assert ACCURACY.baseline(0.3) == 0.1
    assert not ACCURACY.learned(0.1, 0.10) and not ACCURACY.learned(0.1, 0.14)
    assert ACCURACY.learned(0.1, 0.16) and not ACCURACY.learned(0.1, math.nan)
    # otherwise: the initial metric
    assert QUADRATIC.learned(2.0, 1.8) and not QUADRATIC.learned(2.0, 1.95)
    assert not QUADRATIC.learned(2.0, 2.5) and QUADRATIC.learned(None, 2.5)  # unknown start
    assert "did-not-learn" in FINISHED  # a resumed bench does not run it again


def _tiny(task: str, opt: str, lr: float, steps: int) -> R.RunSpec:
    (group,) = R.make_plan([task], [opt], seeds=1, lrs=[lr], steps=steps).groups
    return group.first_phase()[0]


def test_a_run_that_does_not_learn_is_recorded_as_such():
    stuck = R.execute_run(_tiny("diffgrad-f1", "adam", 1e-7, 50))
    assert stuck["status"] == "did-not-learn" and math.isfinite(stuck["final_metric"])
    moving = R.execute_run(_tiny("diffgrad-f1", "adam", 1e-2, 50))
    assert moving["status"] == "done"


def _rec(i, opt, lr, seed, final, status="done", init=0.1) -> RunRecord:
    return RunRecord(
        id=i,
        key=f"k{i}",
        task="fmnist-cnn",
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
        final_loss=1.0,
        steps_to_target=None,
        seconds_to_target=None,
        error=None,
        env_id=None,
    )


def test_an_old_done_run_at_chance_reads_as_did_not_learn_and_ranks_last():
    runs = [  # an older database: "done" at chance accuracy
        _rec(1, "stuck", 1.0, 0, 0.10),
        _rec(2, "stuck", 3.0, 0, 0.1002),
        _rec(3, "stuck", 10.0, 0, None, status="diverged"),
        _rec(4, "ok", 1e-3, 0, 0.70),
        _rec(5, "ok", 3e-3, 0, 0.80),
        _rec(6, "ok", 1e-2, 0, 0.11),  # at chance: not the best even if it were higher
    ]
    (t,) = A.summarize(runs)
    stuck, ok = t.groups["stuck"], t.groups["ok"]
    assert stuck.statuses == {"did-not-learn": 2, "diverged": 1}
    assert stuck.has_best and not stuck.learned and stuck.best_lr == 3.0
    assert stuck.best_runs  # still drawn in the figures
    assert ok.learned and ok.best_lr == 3e-3 and ok.searched == (1e-3, 1e-2)
    assert not ok.best_at_edge and stuck.best_at_edge is False and ok.edge is None
    assert [g.optimizer for g in t.ranked()] == ["ok", "stuck"]
    # never ranked among the optimizers that learned: last on this task
    assert A.overall_ranking([t]) == [("ok", 1.0, 1), ("stuck", 2.0, 1)]


# -- the runner follows the search, and the report's choice is the runner's -------------------------


def test_the_bench_widens_a_grid_whose_best_is_at_the_edge_and_resumes_it(tmp_path):
    plan = R.make_plan(["noisy-quadratic"], ["adam"], seeds=3, steps=40)
    (group,) = plan.groups
    plan.groups = [replace(group, lrs=START)]  # below adam's best lr for 40 steps
    db = tmp_path / "r.db"
    with Store(db) as store:
        counts = R.run_plan(plan, store, jobs=1)
        runs = store.runs(with_metrics=False)
    searched = sorted(r.lr for r in runs if r.seed == 0)
    assert searched[0] == 1e-3 and searched[-1] > 1e-2  # widened upwards
    assert sum(counts.values()) == len(runs) == len(searched) + 2
    # The recommendation, computed again from the stored results alone, is where the seeds ran.
    with Store(db) as store:
        (t,) = A.summarize(store.runs())
        g = t.groups["adam"]
        seeded = {r.lr for r in store.runs(with_metrics=False) if r.seed > 0}
        assert seeded == {g.best_lr} and g.n_seeds == 3 and g.learned
        assert g.searched == (searched[0], searched[-1])
        # resuming: nothing left, nothing run again
        events = []
        again = R.run_plan(plan, store, jobs=1, on_start=lambda n, d, c: events.append((n, d)))
    assert again == {} and events == [(0, len(runs))]


def test_a_fixed_grid_is_not_searched(tmp_path):
    plan = R.make_plan(["diffgrad-f1"], ["adam"], seeds=2, lrs=[1e-7, 1e-6], steps=20)
    with Store(tmp_path / "r.db") as store:
        counts = R.run_plan(plan, store, jobs=1)
        runs = store.runs(with_metrics=False)
    # both lrs did not learn: no widening (the grid was asked for), no seed runs
    assert counts == {"did-not-learn": 2} and sorted(r.lr for r in runs) == [1e-7, 1e-6]


# -- ranks: tie groups, intervals, kinds of task ---------------------------------------------------


def _seeds(start: int, opt: str, values: list[float], task: str = "fmnist-cnn") -> list[RunRecord]:
    return [replace(_rec(start + i, opt, 1e-3, i, v), task=task) for i, v in enumerate(values)]


def test_tie_groups_intervals_and_ranks_by_kind():
    runs = [
        *_seeds(0, "a", [0.80, 0.81, 0.79, 0.80, 0.82]),
        *_seeds(10, "b", [0.80, 0.79, 0.81, 0.78, 0.80]),  # indistinguishable from a
        *_seeds(20, "c", [0.70, 0.71, 0.69, 0.70, 0.72]),  # clearly worse
        *_seeds(30, "d", [0.10, 0.10, 0.10, 0.10, 0.10]),  # did not learn
        # a diagnostic where d is best: outside the ranks
        *_seeds(40, "d", [0.01] * 5, task="rosenbrock"),
        *_seeds(50, "a", [2.0] * 5, task="rosenbrock"),
    ]
    runs = [replace(r, initial_metric=3.0) if r.task == "rosenbrock" else r for r in runs]
    cnn, rosen = sorted(A.summarize(runs), key=lambda t: t.task.name)
    assert (cnn.kind, rosen.kind) == ("neural network", "diagnostic")
    a = cnn.groups["a"]
    assert a.n_seeds == 5 and a.ci95 == pytest.approx(2.776445 * a.std / math.sqrt(5), rel=1e-6)
    assert cnn.tie_groups() == [["a", "b"], ["c"]]
    assert cnn.ranks() == {"a": 1, "b": 1, "c": 3, "d": 4}
    assert A.overall_ranking([cnn, rosen]) == [
        ("a", 1.0, 1),
        ("b", 1.0, 1),
        ("c", 3.0, 1),
        ("d", 4.0, 1),
    ]
    assert A.ranking_by_kind([cnn, rosen]).keys() == {"neural network"}
    # one seed says nothing about the spread: no ties claimed
    single = A.summarize([r for r in runs if r.seed == 0 and r.task == "fmnist-cnn"])[0]
    assert single.tie_groups() == [["a"], ["b"], ["c"]] and math.isnan(single.groups["a"].ci95)


# -- successive halving: the search on short runs, its best lrs at full length ---------------------


def _halving_group(**kwargs) -> R.Group:
    # the plan only, no training: the task is planned whether or not Fashion-MNIST is installed
    # (make_plan skips a task whose data is missing, and `bash dev.sh test` installs no data)
    with patch.dict(TASKS, {"fmnist-mlp": replace(TASKS["fmnist-mlp"], requires=None)}):
        plan = R.make_plan(["fmnist-mlp"], ["adam"], seeds=3, steps=400)
    (group,) = plan.groups
    return replace(group, lrs=START, **kwargs)


def test_halving_searches_on_short_runs_then_decides_among_the_best_two_at_full_length():
    g = _halving_group()
    assert g.search_steps == 100 and g.search_hash not in (None, g.config_hash)

    def short(lr: float) -> A.LrResult:  # the short runs' accuracy peaks at 0.01
        return A.LrResult("learned", 0.9 - 0.1 * (math.log10(lr) + 2.0) ** 2)

    search: dict[float, A.LrResult] = {}
    rounds = 0
    while True:
        pending, _, chosen, _ = g.next_runs(search, {})
        if not pending or pending[0].search_of is None:
            break
        assert all(
            s.steps == 100 and s.seed == 0 and s.config_hash == g.search_hash for s in pending
        )
        assert all(s.cost == pytest.approx(g.cost / 4) for s in pending)
        search.update({s.lr: short(s.lr) for s in pending})
        rounds += 1
    assert rounds >= 2 and chosen == []  # widened past 0.01, then refined
    finalists = [s.lr for s in pending]
    assert all(s.steps == 400 and s.config_hash == g.config_hash for s in pending)
    assert len(finalists) == R.PROMOTE and 0.01 in finalists
    assert finalists == A.promoted(ACCURACY, sorted(search), search, R.PROMOTE)
    # the second finalist is the short runs' second best (a neighbour of 0.01, within the band)
    second = sorted(search, key=lambda lr: -search[lr].value)[1]
    assert finalists == [0.01, second] and second != 0.01
    # at full length the second finalist is the better one: it is chosen, not the short runs' best
    full = {0.01: A.LrResult("learned", 0.8), second: A.LrResult("learned", 0.9)}
    pending, n_done, chosen, _ = g.next_runs(search, full)
    assert chosen == [second]
    # one finalist done, the other not: only the other is pending (a resumed bench)
    pending, _, chosen, _ = g.next_runs(search, {0.01: full[0.01]})
    assert [s.lr for s in pending] == [second] and chosen == []
    pending, n_done, chosen, _ = g.next_runs(search, full)
    long_best = second
    assert pending == [] and chosen == [long_best] and n_done == len(search) + R.PROMOTE


def test_halving_promotes_only_lrs_that_learned_and_none_when_none_did():
    g = _halving_group()
    nothing = {lr: A.LrResult("not-learned", 0.1) for lr in START}
    # nothing learned: the search widens both ways to its bounds, then ends with no finalist
    state = A.replay_search(ACCURACY, START, nothing)
    while not state.finished:
        nothing.update({lr: A.LrResult("not-learned", 0.1) for lr in state.pending})
        state = A.replay_search(ACCURACY, START, nothing)
    assert g.next_runs(nothing, {})[:3] == ([], len(nothing), [])
    one = {**nothing, START[1]: A.LrResult("learned", 0.5)}
    assert A.promoted(ACCURACY, sorted(one), one, 2) == [START[1]]


def test_halving_promotes_the_runner_up_only_when_the_short_runs_cannot_tell_it_from_the_best():
    # accuracy: chance 0.1, best 0.9, so the band is 5% of 0.8 = 0.04 wide
    close = {1e-3: A.LrResult("learned", 0.87), 1e-2: A.LrResult("learned", 0.9)}
    assert A.promoted(ACCURACY, sorted(close), close, 2) == [1e-2, 1e-3]
    apart = {1e-3: A.LrResult("learned", 0.85), 1e-2: A.LrResult("learned", 0.9)}
    assert A.promoted(ACCURACY, sorted(apart), apart, 2) == [1e-2]
    # a loss: the baseline is the run's initial metric (here 10, best 1: a band of 0.45)
    losses = {
        lr: A.LrResult("learned", v, 10.0) for lr, v in [(1e-3, 1.4), (1e-2, 1.0), (0.1, 1.5)]
    }
    assert A.promoted(QUADRATIC, sorted(losses), losses, 2) == [1e-2, 1e-3]
    losses[1e-3] = A.LrResult("learned", 1.5, 10.0)  # tie with 0.1 at 1.5: the smaller lr, apart
    assert A.promoted(QUADRATIC, sorted(losses), losses, 2) == [1e-2]


def test_the_bench_runs_halving_end_to_end_and_the_report_reads_it_back(tmp_path, monkeypatch):
    task = replace(TASKS["noisy-quadratic"], search_fraction=0.25)
    monkeypatch.setitem(TASKS, "noisy-quadratic", task)
    plan = R.make_plan(["noisy-quadratic"], ["adam"], seeds=3, steps=40)
    (group,) = plan.groups
    plan.groups = [replace(group, lrs=START)]
    assert plan.config_hashes == sorted([group.config_hash, group.search_hash])
    db = tmp_path / "r.db"
    with Store(db) as store:
        R.run_plan(plan, store, jobs=1)
        runs = store.runs(with_metrics=False)
    search = [r for r in runs if r.config.get("search_of") == group.config_hash]
    full = [r for r in runs if r.config_hash == group.config_hash]
    assert len(search) + len(full) == len(runs) and len(search) >= 4
    assert {r.steps_done for r in search} == {10} and {r.seed for r in search} == {0}
    finalists = {r.lr for r in full if r.seed == 0}
    assert 1 <= len(finalists) <= R.PROMOTE and finalists <= {r.lr for r in search}
    assert {r.steps_done for r in full} == {40}
    (t,) = A.summarize(runs)  # one configuration: the search belongs to the full one
    g = t.groups["adam"]
    assert (
        t.steps == 40 and t.config_hash == group.config_hash and len(g.search_runs) == len(search)
    )
    seeded = {r.lr for r in full if r.seed > 0}
    assert seeded == {g.best_lr} and g.best_lr in finalists and g.n_seeds == 3
    full_means = {r.lr: r.final_metric for r in full if r.seed == 0}
    assert full_means[g.best_lr] == min(full_means.values())
    assert g.searched == (min(r.lr for r in search), max(r.lr for r in search))
    assert [p[0] for p in g.lr_curve] == sorted(r.lr for r in search)  # the short runs' curve
    # resuming replays the search, the promotion and the seeds from the database: nothing to run
    with Store(db) as store:
        events = []
        again = R.run_plan(plan, store, jobs=1, on_start=lambda n, d, c: events.append((n, d)))
    assert again == {} and events == [(0, len(runs))]


def test_the_report_shows_a_halving_group_whose_short_runs_never_learned(tmp_path):
    from adaptim.bench.report import _fmt_searched

    full = [_rec(1, "ok", 1e-2, s, 0.8 + 0.01 * s) for s in range(3)]
    short = [
        replace(_rec(10 + i, opt, lr, 0, v), config={"steps": 3, "search_of": "h"}, config_hash="s")
        for i, (opt, lr, v) in enumerate(
            [
                *[("ok", 1e-3, 0.5), ("ok", 1e-2, 0.6), ("ok", 1e-1, 0.4)],
                *[("stuck", 1e-3, 0.1), ("stuck", 1e-2, 0.1), ("stuck", 1e-1, 0.1)],
            ]
        )
    ]
    (t,) = A.summarize(full + short)  # one configuration, the full one
    ok, stuck = t.groups["ok"], t.groups["stuck"]
    assert t.config_hash == "h" and t.label == "fmnist-cnn"
    assert ok.best_lr == 1e-2 and ok.n_seeds == 3 and len(ok.search_runs) == 3
    assert _fmt_searched(ok) == "0.001 – 0.1 (3 lrs)"  # the short runs' lrs, counted once
    assert not stuck.has_best and stuck.statuses == {"did-not-learn": 3}
    assert _fmt_searched(stuck) == "0.001 – 0.1 (3 lrs)"
    assert [g.optimizer for g in t.ranked()] == ["ok", "stuck"]


def test_the_report_chooses_among_the_finalists_of_the_short_runs_as_the_runner_did():
    short = [
        replace(
            _rec(10 + i, "ok", lr, 0, v), config={"steps": 3, "search_of": "h"}, config_hash="s"
        )
        for i, (lr, v) in enumerate([(1e-3, 0.5), (1e-2, 0.8), (1e-1, 0.79)])
    ]
    full = [
        *[_rec(1 + s, "ok", 1e-1, s, 0.84) for s in range(3)],  # the chosen finalist, 3 seeds
        _rec(4, "ok", 1e-2, 0, 0.83),  # the other finalist
        _rec(5, "ok", 1e-3, 0, 0.90),  # left by an earlier search: not a finalist now
    ]
    (t,) = A.summarize(short + full)
    g = t.groups["ok"]
    assert A.promoted(
        ACCURACY,
        [1e-3, 1e-2, 1e-1],
        {r.lr: A.LrResult("learned", r.final_metric, r.initial_metric) for r in short},
        A.PROMOTE,
    ) == [1e-2, 1e-1]
    assert g.best_lr == 1e-1 and g.n_seeds == 3  # not 1e-3, the better single run
    assert {p[0] for p in g.lr_curve} == {1e-3, 1e-2, 1e-1}


def test_long_runs_train_the_networks_longer_and_only_them(bench_data):
    default = {g.task: g for g in R.make_plan(["charlm", "beale"], ["adam"], seeds=5).groups}
    long = {
        g.task: g for g in R.make_plan(["charlm", "beale"], ["adam"], seeds=5, length="long").groups
    }
    assert long["charlm"].steps == TASKS["charlm"].long_steps > 3 * default["charlm"].steps
    # a configuration of its own: long results never mix with default ones
    assert long["charlm"].config_hash != default["charlm"].config_hash
    assert long["charlm"].search_hash != default["charlm"].search_hash
    assert long["beale"].steps == default["beale"].steps
    assert long["beale"].config_hash == default["beale"].config_hash
    quick = R.make_plan(["charlm"], ["adam"], seeds=1, length="quick").groups[0]
    assert quick.steps == TASKS["charlm"].quick_steps
    assert R.make_plan(["charlm"], ["adam"], steps=7, length="long").groups[0].steps == 7
    with pytest.raises(ValueError, match="length must be one of quick, default, long"):
        R.make_plan(["charlm"], ["adam"], length="longer")

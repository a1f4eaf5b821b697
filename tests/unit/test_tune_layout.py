"""The layout level's ranking: the leaders of the first pass run again, and a layout counts by the median of its
runs (one sample job's end-to-end figure is mostly start-up and moves by ~10% between runs on the H200). The
batch jobs themselves are real in tests/integration/test_tune.py; here each job's figure is scripted, so the
ranking can be checked against a first run that flatters the wrong layout."""

from __future__ import annotations

import pytest
import yaml

from yoloray.config import Profile
from yoloray.tune import layout as level

# end to end images/s of each layout's runs, in order (calls per actor -> runs)
SCRIPT = {1: [50.0, 52.0, 51.0], 2: [100.0, 70.0, 75.0], 3: [95.0, 96.0, 94.0], 4: [60.0]}


@pytest.fixture
def scripted(monkeypatch):
    calls: list[int] = []

    def run_layout(profile, shards, work):
        calls.append(profile.calls_per_actor)
        figures = SCRIPT[profile.calls_per_actor]
        e2e = figures[sum(c == profile.calls_per_actor for c in calls) - 1]
        return {"status": "ok", "reason": "", "images": 100, "images_per_s": e2e, "steady_images_per_s": 2 * e2e,
                "first_result_s": 1.0}

    monkeypatch.setattr(level, "run_layout", run_layout)
    return calls


def run(done=None, **kw):
    default = Profile(device="cpu", calls_per_actor=1)
    engine = Profile(device="cpu", batch_size=4)
    points = [{"calls_per_actor": c} for c in (2, 3, 4)]
    return level.run_level([("e1", engine)], default, points, [], None, done=done, log=lambda line: None, **kw)


def test_the_two_leaders_run_twice_more_and_the_best_median_wins(scripted):
    rows = run()
    # first pass: the default profile (calls=1) and the three layouts; then calls=2 (100) and calls=3 (95) again
    assert scripted == [1, 2, 3, 4, 2, 2, 3, 3]
    assert [(r["layout"], r["run"]) for r in rows] == [
        ("default profile", 1), ("calls=2", 1), ("calls=3", 1), ("calls=4", 1),
        ("calls=2", 2), ("calls=2", 3), ("calls=3", 2), ("calls=3", 3)]
    summary = level.layout_summary(rows)
    assert list(summary["layout"]) == ["default profile", "calls=2", "calls=3", "calls=4"]  # first-run order
    assert list(summary["runs"]) == [1, 3, 3, 1]
    assert list(summary["images_per_s"]) == [50.0, 75.0, 95.0, 60.0]  # medians
    assert list(summary["steady_images_per_s"]) == [100.0, 150.0, 190.0, 120.0]
    best = summary.loc[summary["images_per_s"].idxmax()]
    assert best["layout"] == "calls=3" and Profile.model_validate(yaml.safe_load(best["profile"])).calls_per_actor == 3


def test_a_resumed_level_runs_nothing_twice(scripted):
    rows = run()
    scripted.clear()
    again = run(done=level.saved_runs(rows[:6]))  # died after six runs
    assert scripted == [3, 3] and again[:6] == rows[:6]  # the saved rows kept as they were
    assert [(r["layout"], r["run"]) for r in again] == [(r["layout"], r["run"]) for r in rows]


def test_a_lone_candidate_is_not_run_again(scripted):
    rows = level.run_level([], Profile(device="cpu", calls_per_actor=1), [], [], None, log=lambda line: None)
    assert scripted == [1] and [r["run"] for r in rows] == [1]


def test_failed_runs_do_not_count_in_the_median():
    rows = [{"engine": "e", "layout": "a", "run": 1, "status": "ok", "images_per_s": 10.0},
            {"engine": "e", "layout": "a", "run": 2, "status": "failed", "reason": "actor died"},
            {"engine": "e", "layout": "a", "run": 3, "status": "ok", "images_per_s": 30.0},
            {"engine": "e", "layout": "b", "status": "failed", "reason": "too many actors"}]  # saved before `run`
    summary = level.layout_summary(rows)
    assert list(summary["images_per_s"].fillna(-1)) == [20.0, -1]
    assert list(summary["runs"]) == [3, 1] and list(summary["status"]) == ["ok", "failed"]


def test_a_row_saved_before_runs_were_numbered_is_run_one():
    old = {"engine": "e", "layout": "a", "status": "ok", "images_per_s": 10.0}
    saved = level.saved_runs([old, {**old, "layout": "b", "run": float("nan")}, {**old, "layout": "b", "run": 2.0}])
    assert list(saved) == [("e", "a", 1), ("e", "b", 1), ("e", "b", 2)] and saved["e", "a", 1] is old

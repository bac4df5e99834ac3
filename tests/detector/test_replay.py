import math

import pyarrow.parquet as pq
import pytest

from opdwatch.detector.replay import collapse_step, replay, replay_rows, train_rows
from opdwatch.detector.settings import DetectorSettings, PolicySettings
from opdwatch.detector.simulate import TraceSpec, simulate
from opdwatch.detector.synthetic_run import write_synthetic_run
from opdwatch.reader import open_run


def test_replay_of_a_recorded_collapse_warns_before_it(collapsing_run):
    r = replay(open_run(collapsing_run))
    assert r.collapse_step is not None and r.first_warning is not None
    assert r.first_warning < r.collapse_step and r.episodes[0] == r.first_warning
    assert r.lead_time == r.collapse_step - r.warning_before_collapse > 0
    assert r.first_alarm is not None and r.first_alarm >= r.first_warning
    assert r.frame.height == 50 and {"step", "level", "cusum/rep_share", "z/loop"} <= set(r.frame.columns)
    assert r.decisions and r.decisions[0].action == "raise"
    summary = r.summary()
    assert summary["transitions"][0]["level"] == "warning" and summary["transitions"][0]["evidence"]


def test_replay_of_a_stable_run_stays_quiet(stable_run):
    r = replay(open_run(stable_run))
    assert r.collapse_step is None and r.first_warning is None and r.transitions == []


def test_settings_change_the_replay():
    rows = simulate(TraceSpec(steps=120, onset=80, width=3, seed=4))
    default = replay_rows(rows)
    deaf = replay_rows(rows, DetectorSettings(h=60, cap_factor=1.0, warn_truncation=0.9, alarm_truncation=0.95),
                       PolicySettings())
    assert default.first_warning is not None and default.first_warning < default.collapse_step
    assert deaf.first_warning is None or deaf.first_warning > default.first_warning


def test_collapse_step_is_the_first_step_reaching_half_truncation():
    rows = [(1, {"rollout/truncation_rate": 0.2}), (2, {}), (3, {"rollout/truncation_rate": 0.5}),
            (4, {"rollout/truncation_rate": 0.9})]
    assert collapse_step(rows) == 3
    assert collapse_step(rows[:2]) is None


def test_train_rows_backfill_metrics_an_older_recorder_did_not_write(tmp_path):
    run_dir = write_synthetic_run(tmp_path / "old", steps=12, onset=8, seed=4)
    recorded = dict(train_rows(open_run(run_dir)))
    assert all(math.isfinite(m["rollout/length_cv"]) for m in recorded.values())
    # Make it an older run: drop the column from every steps file, as a recorder before length_cv wrote them.
    for path in (run_dir / "steps").rglob("*.parquet"):
        table = pq.read_table(path)
        pq.write_table(table.drop_columns(["rollout/length_cv"]), path)
    run = open_run(run_dir)
    assert "rollout/length_cv" not in run.steps("train").collect().columns
    backfilled = dict(train_rows(run))
    assert backfilled.keys() == recorded.keys()
    for step, metrics in recorded.items():
        assert backfilled[step]["rollout/length_cv"] == pytest.approx(metrics["rollout/length_cv"], rel=1e-12)
    assert replay(run).frame["z/length_cv"].drop_nulls().drop_nans().len() > 0  # the signal is watched

from opdwatch.detector.replay import collapse_step, replay, replay_rows
from opdwatch.detector.settings import DetectorSettings, PolicySettings
from opdwatch.detector.simulate import TraceSpec, simulate
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

"""Health verdicts of recorded runs over their whole history: every designed story gets its label and onset.

The runs are written by the Recorder from synthetic token streams (tests/synthetic_runs.py: case()) and
read back through step_series, as `opdwatch analyze` does. Seeds 3 and 4 are from the held-out part
(the settings were fixed on seeds 0-2: benchmarks/verdict_eval.py, docs/analysis.md).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from opdwatch.reader import open_run
from opdwatch.series import step_series
from opdwatch.verdict import (
    COLLAPSED,
    DEGRADED,
    HEALTHY,
    INFLATING,
    LABELS,
    NO_TRUNCATION,
    RECOVERED,
    RECOVERING,
    Verdict,
    detector_story,
    verdict,
)
from tests.synthetic_runs import FAMILIES, make_run, recorded_case

CASES = [(f, s) for f in FAMILIES for s in ((3,) if f == "slow" else (3, 4))]


@pytest.fixture(scope="session")
def case_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "verdict-cases"  # shared with test_episodes.py


def _verdict(path: Path) -> Verdict:
    return verdict(step_series(open_run(path)))


@pytest.mark.parametrize(("family", "seed"), CASES)
def test_every_designed_story_gets_its_label_and_onset(case_root: Path, family: str, seed: int) -> None:
    path, c = recorded_case(case_root, family, seed)
    v = _verdict(path)
    assert v.label == c.label, v.reasons
    if c.onset is None:
        assert v.onset.step is None, v.onset.evidence
    else:
        assert v.onset.step is not None and abs(v.onset.step - c.onset) <= 2, v.onset.evidence
        assert any(r.startswith(f"onset at step {v.onset.step}") for r in v.reasons)
    assert any(r.startswith("now: truncation rate") for r in v.reasons)  # the current level, always
    if v.kind == COLLAPSED:
        assert v.episodes and any(f"peak {v.episodes[0].peak:.2f}" in r for r in v.reasons)
    else:
        assert not v.episodes
    if family == "running":
        assert open_run(path).status == "running"


def test_stable_runs_have_no_onset_and_no_episode(case_root: Path) -> None:
    for family in ("spike", "noisy"):
        v = _verdict(recorded_case(case_root, family, 3)[0])
        assert v.label == HEALTHY and v.onset.step is None and not v.episodes, v.reasons
        assert len(v.regimes) == 1  # the lone spike is no regime; stationary noise is one regime


def test_labels_and_json_fields(case_root: Path) -> None:
    v = _verdict(recorded_case(case_root, "partial", 3)[0])
    assert v.label == RECOVERING and v.kind == COLLAPSED and v.label in LABELS
    d = v.as_dict()
    assert d["label"] == RECOVERING and d["verdict_kind"] == COLLAPSED
    (ep,) = d["episodes"]
    assert ep["start"] >= v.onset.step and ep["end"] is not None and ep["peak"] >= 0.9
    assert ep["start"] <= ep["peak_step"] <= ep["end"]
    assert 0.2 <= d["current"]["level"] < 0.5 and d["current"]["since"] > ep["end"]
    assert [r["start"] for r in d["regimes"]][0] == 1


def test_collapsed_keeps_the_old_reasons(tmp_path: Path) -> None:
    v = _verdict(make_run(tmp_path / "opd", steps=30, collapse_at=15, seed=1))
    assert v.label == COLLAPSED and v.episodes[-1].end is None
    assert v.onset.step is not None
    assert any("median of the last" in r for r in v.reasons)
    assert any(r.startswith(f"onset at step {v.onset.step}") for r in v.reasons)


def test_chronic_leak_below_collapse_is_degraded(tmp_path: Path) -> None:
    # was "inflating" when only the last 5 steps were read; 16 steps at ~0.4 is a chronic regime
    v = _verdict(make_run(tmp_path / "leak", steps=30, collapse_at=15, collapse_share=0.4, seed=2))
    assert v.label == DEGRADED, v.reasons
    assert v.onset.step is not None and abs(v.onset.step - 15) <= 2


def test_healthy(tmp_path: Path) -> None:
    v = _verdict(make_run(tmp_path / "stable", steps=30, seed=3))
    assert v.label == HEALTHY, v.reasons
    assert v.onset.step is None
    assert any("validation accuracy" in r for r in v.reasons)
    assert v.as_dict()["label"] == HEALTHY


def test_recovered_and_short_runs() -> None:
    frame = pl.DataFrame({"step": range(1, 41), "rollout/count": [32] * 40,
                          "rollout/truncation_rate": [0.03] * 12 + [0.95] * 10 + [0.03] * 18})
    v = verdict(frame)
    assert v.label == RECOVERED and v.onset.step == 13
    assert [(e.start, e.end) for e in v.episodes] == [(13, 22)]
    short = verdict(pl.DataFrame({"step": [1, 2], "rollout/truncation_rate": [0.0, 0.1]}))
    assert short.label == HEALTHY and short.onset.step is None
    # no truncation rate at any step (no column, or every value NaN/null): nothing to judge, not "healthy"
    for frame in (pl.DataFrame({"step": [1, 2]}),
                  pl.DataFrame({"step": [1, 2], "rollout/truncation_rate": [float("nan"), None]})):
        unknown = verdict(frame)
        assert unknown.label == NO_TRUNCATION and unknown.kind == "unknown" and unknown.episodes == ()
        assert unknown.reasons[0].startswith("no truncation data")


def test_a_rise_still_going_is_inflating() -> None:
    frame = pl.DataFrame({"step": range(1, 31), "rollout/count": [64] * 30,
                          "rollout/truncation_rate": [0.02] * 24 + [0.2, 0.25, 0.3, 0.34, 0.38, 0.42]})
    v = verdict(frame)
    assert v.label == INFLATING and not v.episodes, v.reasons


def test_detector_and_verdict_tell_one_story(case_root: Path) -> None:
    v = _verdict(recorded_case(case_root, "partial", 3)[0])
    story, differ = detector_story(v, "alarm", first_alarm=v.onset.step)
    assert not differ and story.startswith(f"detector: alarm at step {v.onset.step}; verdict: {RECOVERING}")
    story, differ = detector_story(v, "ok", first_alarm=v.onset.step)
    assert differ and "stepped down" in story and "keeps the history" in story
    story, differ = detector_story(v, "warmup")
    assert differ and "warm-up" in story
    healthy = _verdict(recorded_case(case_root, "noisy", 3)[0])
    assert detector_story(healthy, "ok") == ("detector: ok; verdict: healthy", False)
    assert detector_story(healthy, "alarm", first_alarm=7)[1]

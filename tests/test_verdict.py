"""Health verdicts of recorded runs: healthy, inflating, collapsed, each with its reasons."""

from __future__ import annotations

from pathlib import Path

from opdwatch.reader import open_run
from opdwatch.series import step_series
from opdwatch.verdict import COLLAPSED, HEALTHY, INFLATING, verdict
from tests.synthetic_runs import make_run


def _verdict(path: Path):
    return verdict(step_series(open_run(path)))


def test_collapsed(tmp_path: Path) -> None:
    v = _verdict(make_run(tmp_path / "opd", steps=30, collapse_at=15, seed=1))
    assert v.label == COLLAPSED
    assert v.onset.step is not None
    assert any("median of the last" in r for r in v.reasons)
    assert any(r.startswith(f"onset at step {v.onset.step}") for r in v.reasons)


def test_inflating_below_collapse(tmp_path: Path) -> None:
    v = _verdict(make_run(tmp_path / "leak", steps=30, collapse_at=15, collapse_share=0.4, seed=2))
    assert v.label == INFLATING, v.reasons
    assert v.onset.step is not None


def test_healthy(tmp_path: Path) -> None:
    v = _verdict(make_run(tmp_path / "stable", steps=30, seed=3))
    assert v.label == HEALTHY, v.reasons
    assert v.onset.step is None
    assert any("validation accuracy" in r for r in v.reasons)
    assert v.as_dict()["label"] == HEALTHY

"""The onset finder on recorded runs with a known injected transition, and on stationary noisy runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from opdwatch.onset import LENGTH, TRUNCATION, find_onset
from opdwatch.reader import open_run
from opdwatch.series import step_series
from tests.synthetic_runs import make_run


def _series(path: Path) -> pl.DataFrame:
    return step_series(open_run(path))


@pytest.mark.parametrize(("seed", "collapse_at", "ramp"), [(0, 12, 0), (1, 25, 0), (2, 30, 2), (3, 18, 3)])
def test_finds_the_injected_transition(tmp_path: Path, seed: int, collapse_at: int, ramp: int) -> None:
    run = make_run(tmp_path / "opd", steps=40, collapse_at=collapse_at, ramp=ramp, seed=seed, val_every=0)
    onset = find_onset(_series(run))
    assert onset.step is not None and abs(onset.step - collapse_at) <= 2, onset.evidence
    assert onset.series == TRUNCATION
    assert onset.after >= 0.3 > onset.before
    assert onset.jump_sigma >= 4.0
    assert f"step {onset.change_point}" in onset.evidence
    # The evidence names the token-level signature at the same split (Fig. 4): repetitive share jumps.
    before, after = onset.supporting["token/repetitive_share"]
    assert after > before


@pytest.mark.parametrize(("seed", "base_truncation"), [(4, 0.04), (5, 0.15), (6, 0.4)])
def test_names_no_onset_on_stationary_runs(tmp_path: Path, seed: int, base_truncation: float) -> None:
    run = make_run(tmp_path / "stable", steps=40, seed=seed, base_truncation=base_truncation, val_every=0)
    onset = find_onset(_series(run))
    assert onset.step is None, onset.evidence
    assert onset.evidence.startswith("no onset")


def _frame(truncation: np.ndarray, length: np.ndarray | None = None) -> pl.DataFrame:
    data = {"step": np.arange(len(truncation)), TRUNCATION: truncation}
    if length is not None:
        data[LENGTH] = length
    return pl.DataFrame(data)


def test_a_transient_spike_is_not_an_onset() -> None:
    rng = np.random.default_rng(0)
    y = np.clip(rng.normal(0.03, 0.02, 60), 0, 1)
    y[30] = 0.35  # Stable-OPD's single recovered spike
    assert find_onset(_frame(y)).step is None


def test_a_ramp_is_dated_at_its_start() -> None:
    y = np.r_[np.full(20, 0.06), [0.19, 0.56, 0.95], np.full(15, 0.95)]
    assert find_onset(_frame(y)).step == 20


def test_length_inflation_without_truncation() -> None:
    rng = np.random.default_rng(1)
    length = np.r_[rng.normal(100, 5, 25), rng.normal(180, 5, 25)]
    onset = find_onset(_frame(np.zeros(50), length))
    assert onset.series == LENGTH and abs(onset.step - 25) <= 1


def test_too_short_or_empty() -> None:
    assert find_onset(_frame(np.array([0.0, 1.0, 1.0]))).step is None
    assert find_onset(pl.DataFrame({"step": [1, 2]})).step is None

"""Collapse episodes of recorded runs: start, peak and end where the story put them, none for spikes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from opdwatch.changepoints import Regime
from opdwatch.episodes import find_episodes, spans
from opdwatch.reader import open_run
from opdwatch.series import step_series
from opdwatch.verdict import verdict
from tests.synthetic_runs import recorded_case


@pytest.fixture(scope="session")
def case_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "verdict-cases"  # shared with test_verdict.py


@pytest.mark.parametrize(("family", "seed"), [("abrupt", 3), ("recovery", 3), ("recovery", 4), ("partial", 3),
                                              ("partial", 4), ("slow", 3)])
def test_episodes_where_designed(case_root: Path, family: str, seed: int) -> None:
    path, c = recorded_case(case_root, family, seed)
    series = step_series(open_run(path))
    v = verdict(series)
    assert len(v.episodes) == len(c.episodes) == 1, [e.describe() for e in v.episodes]
    (ep,), ((start, end),) = v.episodes, c.episodes
    assert abs(ep.start - start) <= 2 and ep.start >= v.onset.step  # the onset is the first raised step
    if end is None:
        assert ep.end is None and ep.ongoing
    else:
        assert ep.end is not None and abs(ep.end - end) <= 3, (ep, end)
    last = ep.end if ep.end is not None else int(series["step"].max())
    assert ep.start <= ep.peak_step <= last and ep.peak >= 0.9
    rate = dict(zip(series["step"].to_list(), series["rollout/truncation_rate"].to_list()))
    assert rate[ep.peak_step] == ep.peak
    assert spans(v.episodes) == [(ep.start, ep.end, ep.describe())]


@pytest.mark.parametrize("family", ["spike", "noisy", "chronic", "running"])
def test_no_episode_without_a_sustained_collapse(case_root: Path, family: str) -> None:
    v = verdict(step_series(open_run(recorded_case(case_root, family, 3)[0])))
    assert v.episodes == ()


def test_one_step_spike_to_one_is_no_episode() -> None:
    steps = np.arange(1, 41)
    values = np.full(40, 0.03)
    values[20] = 1.0
    from opdwatch.changepoints import segment_rate

    regimes = segment_rate(steps, values, np.full(40, 64))
    assert len(regimes) == 1 and find_episodes(steps, values, regimes) == []


def test_two_episodes_and_their_ends() -> None:
    steps = np.arange(1, 31)
    values = np.r_[np.full(8, 0.02), np.full(6, 0.9), np.full(6, 0.02), np.full(10, 0.8)]
    regimes = [Regime(1, 8, 8, 0.02, 0.0), Regime(9, 14, 6, 0.9, 0.0), Regime(15, 20, 6, 0.02, 0.0),
               Regime(21, 30, 10, 0.8, 0.0)]
    first, second = find_episodes(steps, values, regimes)
    assert (first.start, first.end, first.peak_step) == (9, 14, 9)
    assert (second.start, second.end) == (21, None) and "since step 21" in second.describe()
    assert first.as_dict() == {"start": 9, "peak_step": 9, "peak": 0.9, "end": 14, "level": 0.9}

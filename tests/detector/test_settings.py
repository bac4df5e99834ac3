import dataclasses
from pathlib import Path

import pytest

from opdwatch.detector.settings import DetectorSettings, PolicySettings, WandbSettings, WatchConfig, with_overrides
from opdwatch.errors import OpdwatchError

DOC = (Path(__file__).parents[2] / "docs" / "detector.md").read_text()


@pytest.mark.parametrize("cls", [DetectorSettings, PolicySettings, WandbSettings, WatchConfig])
def test_every_setting_is_documented_with_its_default(cls):
    for f in dataclasses.fields(cls):
        assert f"`{f.name}`" in DOC, f"{cls.__name__}.{f.name} missing from docs/detector.md"


def test_documented_warmup_matches_the_default():
    assert f"**Warm-up: {DetectorSettings().warmup_steps} steps**" in DOC


def test_with_overrides_coerces_types_and_validates():
    s = with_overrides(DetectorSettings(), {"h": "6", "warmup_steps": "8", "signals": "truncation,rep_share"})
    assert (s.h, s.warmup_steps, s.signal_names) == (6.0, 8, ("truncation", "rep_share"))
    p = with_overrides(PolicySettings(), {"restore_on_alarm": "true"})
    assert p.restore_on_alarm is True
    for bad in ({"nope": 1}, {"h": "x"}, {"warmup_steps": "1"}, {"restore_on_alarm": "maybe"}):
        with pytest.raises(OpdwatchError):
            with_overrides(DetectorSettings() if "restore_on_alarm" not in bad else PolicySettings(), bad)


def test_settings_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        DetectorSettings().h = 3  # type: ignore[misc]

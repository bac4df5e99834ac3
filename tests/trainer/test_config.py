"""Config loading, overrides and one-line validation errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from opdwatch.errors import OpdwatchError
from trainer.cli_entry import train_main
from trainer.config import config_to_dict, load_config, parse_overrides

PRESETS = Path(__file__).resolve().parents[2] / "trainer" / "configs"


@pytest.mark.parametrize("name", ["demo_opd", "demo_stable_opd", "slow_onset_opd"])
def test_presets_load(name: str) -> None:
    config = load_config(PRESETS / f"{name}.yaml")
    assert config.run.name == name
    assert config_to_dict(config)["opd"]["lr"] == config.opd.lr


def test_stable_preset_differs_only_in_beta_alpha() -> None:
    plain = config_to_dict(load_config(PRESETS / "demo_opd.yaml"))
    stable = config_to_dict(load_config(PRESETS / "demo_stable_opd.yaml"))
    diff = {
        (section, key)
        for section in plain
        for key in plain[section]
        if plain[section][key] != stable[section][key]
    }
    assert diff == {("run", "name"), ("opd", "beta"), ("opd", "alpha")}
    assert load_config(PRESETS / "slow_onset_opd.yaml").opd.lr == 1e-3


def test_dotted_overrides() -> None:
    config = load_config(
        PRESETS / "demo_opd.yaml", ["opd.lr=1e-3", "demo.teacher.copy_steps=7", "run.name=x"]
    )
    assert (config.opd.lr, config.demo.teacher.copy_steps, config.run.name) == (1e-3, 7, "x")
    assert parse_overrides(["a.b=1", "a.c=hi"]) == {"a": {"b": 1, "c": "hi"}}


@pytest.mark.parametrize(
    "override",
    [
        "opd.lr=-1",
        "opd.lr=abc",
        "rollout.top_p=1.5",
        "rollout.temperature=0",
        "opd.clip_eps=0",
        "opd.minibatches=99",
        "opd.steps=ten",
        "opd.nope=1",
        "nosection.x=1",
        "opd=3",
        "justtext",
        "data.source=/no/such/file.jsonl",
        "demo.student.hidden=30",
        "recorder.tail_threshold=0",
        "run.threads=0",
    ],
)
def test_bad_values_raise_one_line(override: str) -> None:
    with pytest.raises(OpdwatchError) as info:
        load_config(PRESETS / "demo_opd.yaml", [override])
    message = str(info.value)
    assert message and "\n" not in message


def test_bad_config_fails_before_models_load(tmp_path: Path) -> None:
    with pytest.raises(OpdwatchError):
        train_main(
            str(PRESETS / "demo_opd.yaml"), [f"models.cache_dir={tmp_path}/cache", "opd.lr=0"], resume=False
        )
    assert not (tmp_path / "cache").exists()
    with pytest.raises(OpdwatchError, match="not found"):
        train_main(str(tmp_path / "missing.yaml"), [], resume=False)
    bad = tmp_path / "bad.yaml"
    bad.write_text("opd: [1, 2\n")
    with pytest.raises(OpdwatchError):
        load_config(bad)


def test_existing_run_dir_is_refused_early(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "x"
    run_dir.mkdir(parents=True)
    (run_dir / "manifest.json").write_text("{}")
    overrides = [f"run.output_dir={tmp_path / 'runs'}", "run.name=x", f"models.cache_dir={tmp_path}/cache"]
    with pytest.raises(OpdwatchError, match="already recorded"):
        train_main(str(PRESETS / "demo_opd.yaml"), overrides, resume=False)
    with pytest.raises(OpdwatchError, match="no checkpoint"):
        train_main(str(PRESETS / "demo_opd.yaml"), overrides, resume=True)
    assert not (tmp_path / "cache").exists()

"""Config loading, overrides and one-line validation errors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from opdwatch.errors import OpdwatchError
from opdwatch.trainer.cli_entry import train_main
from opdwatch.trainer.config import config_to_dict, load_config, parse_overrides

PRESETS = Path(__file__).resolve().parents[2] / "trainer" / "recipes" / "demo" / "configs"  # the demo presets


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
    with pytest.raises(OpdwatchError, match="already recorded here: --resume continues it .* --overwrite replaces"):
        train_main(str(PRESETS / "demo_opd.yaml"), overrides, resume=False)
    nothing = [*overrides[:1], "run.name=y", *overrides[2:]]
    with pytest.raises(OpdwatchError, match="no run is recorded here to resume: start it without --resume"):
        train_main(str(PRESETS / "demo_opd.yaml"), nothing, resume=True)
    assert not (tmp_path / "cache").exists()


def test_train_resume_and_overwrite_exclude_each_other(capsys) -> None:
    from opdwatch.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["train", "demo_opd", "--resume", "--overwrite"])
    assert exc.value.code == 2 and "not allowed with" in capsys.readouterr().err


def _one_line(info: pytest.ExceptionInfo[OpdwatchError]) -> str:
    message = str(info.value)
    assert message and "\n" not in message
    return message


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("- run\n- opd\n", "must be a mapping"),  # top level is a list
        ("just a string\n", "must be a mapping"),
        ("42\n", "must be a mapping"),
        ("0\n", "must be a mapping"),  # falsy scalars are not "no config" either
        ("false\n", "must be a mapping"),
        ("opd: [1, 2]\n", "'opd' must be a mapping"),  # a section that is a list
        ("run: hello\n", "'run' must be a mapping"),
        ("demo:\n  student: [1]\n", "'demo.student' must be a mapping"),
        ("1: 2\n", "unknown config key"),  # keys YAML reads as numbers
        ("opd:\n  1: 2\n", "unknown config key"),
        ("opd: [1, 2\n", "not valid YAML"),
        ("run: {name: a}\n---\nopd: {lr: 1}\n", "not valid YAML"),  # two documents
    ],
)
def test_non_mapping_yaml_is_a_one_line_error(tmp_path: Path, text: str, needle: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(OpdwatchError) as info:
        load_config(bad)
    assert needle in _one_line(info)


def test_unreadable_config_files_are_one_line_errors(tmp_path: Path) -> None:
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(OpdwatchError) as info:
        load_config(binary)
    assert str(binary) in _one_line(info)
    with pytest.raises(OpdwatchError) as info:
        load_config(tmp_path)  # a directory
    assert str(tmp_path) in _one_line(info)


def test_empty_config_file_means_defaults(tmp_path: Path) -> None:
    for text in ("", "# only a comment\n", "{}\n"):
        (tmp_path / "empty.yaml").write_text(text)
        assert load_config(tmp_path / "empty.yaml") == load_config(None)


@pytest.mark.parametrize("text", ["- a\n- b\n", "opd: [1, 2]\n", "7\n"])
def test_opdwatch_train_with_a_non_mapping_config_exits_2(tmp_path: Path, capsys, text: str) -> None:
    from opdwatch.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    assert main(["train", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("opdwatch: error: ") and err.count("\n") == 1


@pytest.mark.parametrize("name", ["..", ".", ".hidden", "a/b", "../escape", "/abs", "a\\b", "", "   ", "a\x00b",
                                  "two\nlines"])
def test_run_name_must_be_one_plain_path_component(tmp_path: Path, name: str) -> None:
    config = tmp_path / "c.yaml"  # through YAML, so that NUL and newline get in (argv cannot carry NUL)
    config.write_text(f"run:\n  name: {json.dumps(name)}\n  output_dir: {json.dumps(str(tmp_path / 'runs'))}\n")
    with pytest.raises(OpdwatchError) as info:
        load_config(config)
    assert _one_line(info).startswith("run.name=")


@pytest.mark.parametrize("name", ["exp[seed]", "my-run_1.2", "opd seed 3", "ü"])
def test_ordinary_run_names_are_accepted(tmp_path: Path, name: str) -> None:
    config = load_config(None, [f"run.name={name}", f"run.output_dir={tmp_path}"])
    assert config.run_dir.parent == tmp_path and config.run_dir.name == name


def test_run_name_dotdot_exits_2_and_writes_nothing(tmp_path: Path, model_cache: Path, capsys) -> None:
    from opdwatch.cli import main

    from .conftest import TINY

    # tiny and 0 steps: before the fix this trained and recorded the run into tmp_path, the parent of runs/
    assert main(["train", "demo_opd", *TINY, "opd.steps=0", "val.every=0", "run.name=..",
                 f"run.output_dir={tmp_path / 'runs'}", f"models.cache_dir={model_cache}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("opdwatch: error: run.name='..'") and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("field", ["run.output_dir", "data.source", "data.val_path", "models.student",
                                   "models.teacher", "models.reference", "models.cache_dir"])
def test_nul_in_a_path_field_is_a_one_line_error(tmp_path: Path, field: str) -> None:
    section, key = field.split(".")
    config = tmp_path / "c.yaml"
    config.write_text(f'{section}:\n  {key}: "x\\0y"\n')
    with pytest.raises(OpdwatchError) as info:
        load_config(config)
    assert _one_line(info).startswith(f"{field}=")


def test_config_imports_no_torch_and_nothing_of_the_trainer_that_could_import_it_back() -> None:
    # trainer.config once imported trainer.engines (-> components -> demo_teacher -> config) to validate engine.kind:
    # a circle, and torch for a config check. Loading and validating a config needs neither.
    import subprocess
    import sys

    code = ("import sys, opdwatch.trainer.config as c; c.load_config('demo_opd_watch', ['engine.kind=vllm']); "
            "print('torch' in sys.modules, sorted(m for m in sys.modules if m.startswith(('trainer', "
            "'opdwatch.trainer'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False ['opdwatch.trainer', 'opdwatch.trainer.config']"


def test_presets_are_found_by_name_in_both_folders() -> None:
    from opdwatch.trainer.config import DEMO_PRESETS_DIR, PRESETS_DIR, resolve_preset

    assert resolve_preset("demo_opd") == DEMO_PRESETS_DIR / "demo_opd.yaml"  # the demo recipe's
    assert resolve_preset("gpu_qwen1p5b_r1distill7b.yaml") == PRESETS_DIR / "gpu_qwen1p5b_r1distill7b.yaml"
    with pytest.raises(OpdwatchError, match=r"presets: .*demo_opd.*gpu_qwen1p5b_r1distill7b"):
        resolve_preset("no_such_preset")


def test_the_names_config_validates_against_are_the_registries_keys() -> None:
    from opdwatch.trainer.config import ENGINE_KINDS, ESTIMATOR_NAMES
    from opdwatch.trainer.objectives.variants import ESTIMATORS
    from opdwatch.trainer.rollout.engines import ENGINES

    assert set(ENGINE_KINDS) == set(ENGINES) and set(ESTIMATOR_NAMES) == set(ESTIMATORS)


def test_recorder_section_is_the_recorders_own_settings() -> None:
    from opdwatch.recorder import RecorderSettings

    config = load_config(None, ["recorder.loop_min_run=8", "recorder.token_rollout_fraction=0"])
    assert isinstance(config.recorder, RecorderSettings)
    # the trainer's defaults differ on purpose (short demo responses); the rest are the recorder's
    assert (config.recorder.tail_window, config.recorder.tail_threshold) == (64, 0.5)
    assert (config.recorder.loop_min_run, config.recorder.ngram_n) == (8, RecorderSettings().ngram_n)
    with pytest.raises(OpdwatchError) as info:  # bounds are RecorderSettings.validate's, named by dotted key
        load_config(None, ["recorder.tail_window=0"])
    assert _one_line(info).startswith("recorder.tail_window must be >= 1")


@pytest.mark.parametrize(("override", "start"), [
    ("opd.lr=-1", "opd.lr="),
    ("opd.minibatches=99", "opd.minibatches=99"),  # a check across sections, in TrainConfig.validate
    ("demo.teacher.hidden=30", "demo.teacher.hidden=30"),
    ("watch.mode=loud", "watch.mode must be"),
    ("watch.detector.warmup_steps=1", "watch.detector.warmup_steps must be >= 2"),
    ("watch.policy.relax_factor=2", "watch.policy.beta_factor, alpha_factor, relax_factor"),
    ("engine.kind=tpu", "engine.kind='tpu'"),
    ("opd.steps=ten", "opd.steps='ten': expected int"),
])
def test_each_section_validates_itself_and_errors_name_the_dotted_key(override: str, start: str) -> None:
    with pytest.raises(OpdwatchError) as info:
        load_config(None, [override])
    assert _one_line(info).startswith(start)


def test_one_override_path_and_yaml_12_booleans() -> None:
    from opdwatch.trainer.config import with_overrides

    base = load_config(None)
    assert with_overrides(base, ["opd.lr=1e-3", "watch.policy.cooldown_steps=3"]) == load_config(
        None, ["opd.lr=1e-3", "watch.policy.cooldown_steps=3"])
    assert with_overrides(base, {"opd.lr": 1e-3}).opd.lr == 1e-3
    # `off` is the text "off" (YAML 1.1 made it False: watch.mode=off failed); switches still take yes/no/on/off
    config = load_config(None, ["watch.mode=off", "run.progress=no", "log.wandb.enabled=on"])
    assert (config.watch.mode, config.run.progress, config.log.wandb.enabled) == ("off", False, True)


def test_a_section_given_in_part_keeps_the_parents_default_for_the_rest() -> None:
    from opdwatch.trainer.config import TrainConfig

    defaults = TrainConfig()
    config = load_config(None, ["demo.teacher.copy_steps=7", "recorder.ngram_n=4"])
    # the teacher stays the teacher (not the student's architecture), the recorder keeps the trainer's window
    assert config.demo.teacher == dataclasses.replace(defaults.demo.teacher, copy_steps=7)
    assert config.recorder == dataclasses.replace(defaults.recorder, ngram_n=4)

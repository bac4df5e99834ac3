"""The demo's models: shipped as files with a manifest (recipe version, key, sha256 per file) that is verified on
load; `opdwatch demo --rebuild-models` trains them from scratch (here at the tests' reduced size); a damaged or
mismatched directory is a one-line error, never used silently."""

from __future__ import annotations

import fnmatch
import json
import shutil
from pathlib import Path

import pytest

import opdwatch.trainer.recipes.demo.demo_teacher as demo_teacher
from opdwatch import open_run
from opdwatch.cli import main
from opdwatch.errors import OpdwatchError
from opdwatch.trainer.config import load_config
from opdwatch.trainer.data.models import load_causal_lm, num_params
from opdwatch.trainer.recipes.demo.model_files import MANIFEST_NAME, read_manifest

from .trainer.conftest import TINY

ROOT = Path(__file__).resolve().parents[1]
TINY_NO_BETA = [o for o in TINY if not o.startswith(("opd.beta", "opd.alpha"))]


def _no_training(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("a demo model was trained")

    monkeypatch.setattr(demo_teacher, "build_demo_model", refuse)
    monkeypatch.setattr(demo_teacher, "finetune_demo_model", refuse)


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """`opdwatch demo --rebuild-models` at reduced size: (cache, output dir)."""
    base = tmp_path_factory.mktemp("rebuild")
    cache, out = base / "cache", base / "runs"
    code = main(["demo", "--rebuild-models", "--steps", "1", "--threads", "1", "--seed", "2",
                 "--cache-dir", str(cache), "--output-dir", str(out), *TINY_NO_BETA, "val.every=0"])
    assert code == 0
    return cache, out


def test_rebuild_trains_the_demo_roles_and_the_runs_use_them(rebuilt, monkeypatch) -> None:
    cache, out = rebuilt
    names = sorted(p.name.split("-")[0] for p in cache.iterdir() if not p.name.startswith("."))
    assert names == ["student", "teacher", "teacher"]  # the teacher and its SFT stage (teacher_sft)
    config = load_config(None, [*TINY, f"models.cache_dir={cache}"])
    for role in ("student", "teacher_sft", "teacher"):
        manifest = read_manifest(cache / demo_teacher.model_dir_name(config, role))
        assert manifest["recipe_version"] == demo_teacher.RECIPE_VERSION
        assert set(manifest["files"]) >= {"model.safetensors", "config.json", "tokenizer.json"}
        assert manifest["recipe"]["model"]["copy_steps"] == {"teacher": 5}.get(role, 0)
    for run in ("demo_opd-seed2", "demo_stable_opd-seed2"):
        assert open_run(out / run).manifest["status"] == "finished"
    _no_training(monkeypatch)  # found in the cache from now on, verified
    assert demo_teacher.ensure_demo_model(config, "teacher").parent == cache


def test_every_role_and_the_same_recipe_by_config_share_a_directory(rebuilt, monkeypatch) -> None:
    cache, _ = rebuilt
    config = load_config(None, [*TINY, f"models.cache_dir={cache}"])
    weak = demo_teacher.ensure_demo_model(config, "teacher_weak")  # built now: the SFT stage is reused
    assert read_manifest(weak)["recipe"]["model"]["copy_steps"] == 1  # a quarter of the teacher's 5
    _no_training(monkeypatch)
    as_sft = load_config(None, [*TINY, f"models.cache_dir={cache}", "demo.teacher.copy_steps=0"])
    assert demo_teacher.ensure_demo_model(as_sft, "teacher") == demo_teacher.ensure_demo_model(config, "teacher_sft")
    with pytest.raises(OpdwatchError, match="role 'teacher_x'"):
        demo_teacher.ensure_demo_model(config, "teacher_x")


@pytest.mark.parametrize("damage", ["byte", "missing", "key", "no-manifest"])
def test_a_damaged_model_directory_is_a_one_line_error(rebuilt, tmp_path, damage, capsys) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(rebuilt[0], cache)
    config = load_config(None, [*TINY, f"models.cache_dir={cache}"])
    model = cache / demo_teacher.model_dir_name(config, "teacher")
    weights = model / "model.safetensors"
    if damage == "byte":
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 1
        weights.write_bytes(bytes(data))
    elif damage == "missing":
        weights.unlink()
    elif damage == "key":
        manifest = json.loads((model / MANIFEST_NAME).read_text())
        manifest["key"] = "0123456789ab"
        (model / MANIFEST_NAME).write_text(json.dumps(manifest))
    else:
        (model / MANIFEST_NAME).unlink()
    code = main(["demo", "--steps", "1", "--threads", "1", "--cache-dir", str(cache),
                 "--output-dir", str(tmp_path / "runs"), *TINY_NO_BETA, "val.every=0"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("opdwatch: error: demo model") and "--rebuild-models" in err
    assert {"byte": "does not match its sha256", "missing": "is missing", "key": "made by recipe",
            "no-manifest": f"no {MANIFEST_NAME}"}[damage] in err


def test_the_shipped_models_verify_and_load_without_training(tmp_path, monkeypatch) -> None:
    _no_training(monkeypatch)
    config = load_config("demo_opd", [f"models.cache_dir={tmp_path / 'empty-cache'}"])
    names = {role: demo_teacher.model_dir_name(config, role) for role in demo_teacher.ROLES}
    ablation_student = demo_teacher.model_dir_name(load_config("ablation_opd"), "student")  # the larger student
    on_disk = {p.name for p in demo_teacher.SHIPPED_DIR.iterdir() if p.is_dir()}
    assert on_disk <= {*names.values(), ablation_student}  # no directory of another recipe or version left behind
    assert num_params(load_causal_lm(str(demo_teacher.SHIPPED_DIR / ablation_student), trainable=False)) > 300_000
    shipped = [role for role, name in names.items() if name in on_disk]
    assert shipped == list(demo_teacher.ROLES)  # every role ships: `opdwatch demo` trains nothing
    sizes = {}
    for role in shipped:
        path = demo_teacher.ensure_demo_model(config, role)  # verified against its manifest
        assert path == demo_teacher.SHIPPED_DIR / names[role]
        sizes[role] = num_params(load_causal_lm(str(path), trainable=False))
    assert 80_000 < sizes["student"] < 100_000
    assert all(800_000 < n < 900_000 for role, n in sizes.items() if role != "student")
    files = [p for p in demo_teacher.SHIPPED_DIR.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 16_000_000  # a few MB


def test_pyproject_ships_every_model_file() -> None:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    patterns = data["opdwatch.trainer.recipes.demo"]
    files = [p.relative_to(demo_teacher.SHIPPED_DIR.parent).as_posix()
             for p in demo_teacher.SHIPPED_DIR.rglob("*") if p.is_file()]
    assert files and all(any(fnmatch.fnmatch(f, pat) for pat in patterns) for f in files), files


def test_ablation_presets_differ_only_in_beta_and_alpha() -> None:
    from opdwatch.trainer.config import config_to_dict
    from opdwatch.trainer.recipes.demo.demo import ABLATION_PRESETS

    trees = [config_to_dict(load_config(name)) for name in ABLATION_PRESETS]
    assert [(t["opd"]["beta"], t["opd"]["alpha"]) for t in trees] == [(0.0, 0.0), (0.2, 0.0), (0.2, 1.0)]
    for t in trees:
        assert t["val"]["greedy_too"] and t["val"]["temperature"] == 1.0
        assert t["demo"]["student"]["hidden"] > load_config("demo_opd").demo.student.hidden
        for key in ("opd", "run"):
            for field in ("beta", "alpha", "name"):
                t[key].pop(field, None)
    assert trees[0] == trees[1] == trees[2]


def test_ablation_demo_runs_three_arms_with_greedy_validation(rebuilt, tmp_path, capsys, monkeypatch) -> None:
    from opdwatch.trainer.recipes.demo.demo import run_demo

    _no_training(monkeypatch)  # TINY's student and teacher are the rebuilt ones
    runs = run_demo(output_dir=str(tmp_path), seed=3, threads=1, steps=2, cache_dir=str(rebuilt[0]),
                    overrides=TINY_NO_BETA, ablation=True)
    assert [r.name for r in runs] == ["ablation_opd-seed3", "ablation_kl-seed3", "ablation_stable-seed3"]
    capsys.readouterr()
    assert main(["analyze", *map(str, runs), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["comparison"]
    assert [(r["beta"], r["alpha"]) for r in rows] == [(0.0, 0.0), (0.2, 0.0), (0.2, 1.0)]
    for r in rows:  # validated at steps 0 and 2, sampled and greedy
        assert r["val_accuracy_first_step"] == 0 and r["val_accuracy_final_step"] == 2
        assert r["greedy_accuracy_final"] is not None and 0.0 <= r["greedy_accuracy_final"] <= 1.0

"""The wheel: installed import names cannot collide with other packages, every source file and preset ships, and
the torch-free core never imports the trainer.

The repository keeps trainer/ as a top-level folder, but it installs as `opdwatch.trainer` (pyproject.toml
`package-dir`). A top-level `trainer` (or `dashboards`) package would collide with anything of that name in a
user's environment; here the built wheel is installed into a fresh venv next to dummy packages of those names.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest's own dependency
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
# installed name -> repository folder, e.g. {"opdwatch": "opdwatch", "opdwatch.trainer": "trainer"}
PACKAGE_DIR: dict[str, str] = SETUPTOOLS["package-dir"]
RENAMED = {folder for name, folder in PACKAGE_DIR.items() if name != folder}  # {"trainer", "dashboards"}
SOURCE_FOLDERS = ("opdwatch", "trainer", "dashboards")


def _installed_path(repo_path: Path) -> str:
    """Where a repository file lands in the wheel: trainer/loop/loop.py -> opdwatch/trainer/loop/loop.py."""
    rel = repo_path.relative_to(ROOT).as_posix()
    for name, folder in sorted(PACKAGE_DIR.items(), key=lambda kv: -len(kv[1])):
        if rel.startswith(f"{folder}/"):
            return name.replace(".", "/") + rel[len(folder):]
    return rel


def _shipped_sources() -> set[str]:
    """Every .py file, preset and stylesheet of the installed folders, as wheel paths."""
    files = {p for folder in SOURCE_FOLDERS for pattern in ("*.py", "*.yaml", "*.css")
             for p in (ROOT / folder).rglob(pattern) if "__pycache__" not in p.parts}
    return {_installed_path(p) for p in files}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from a copy of the sources (so the build leaves no build/ or egg-info in the repository)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    for name in ("pyproject.toml", "README.md"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes((ROOT / name).read_bytes())
    for folder in SOURCE_FOLDERS:
        for p in (ROOT / folder).rglob("*"):
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc":
                target = src / p.relative_to(ROOT)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(p.read_bytes())
    # no isolation: the build uses this venv's setuptools, so it needs no network
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                           "-q", "-w", str(tmp / "dist"), str(src)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = (tmp / "dist").glob("opdwatch-*.whl")
    return path


def test_the_wheel_installs_no_top_level_trainer_and_ships_every_source_file(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    tops = {n.split("/")[0] for n in names if ".dist-info/" not in n}
    assert tops == {"opdwatch"}  # no top-level trainer or dashboards package
    assert {"trainer", "dashboards"} == RENAMED
    assert "opdwatch/trainer/loop/loop.py" in names
    missing = _shipped_sources() - names  # e.g. a new sub-package not added to pyproject's `packages` list
    assert not missing, sorted(missing)
    presets = {n for n in names if n.endswith(".yaml")}
    assert {"opdwatch/trainer/configs/gpu_qwen1p5b_r1distill7b.yaml",
            "opdwatch/trainer/recipes/demo/configs/demo_opd.yaml",
            "opdwatch/trainer/recipes/demo/configs/demo_stable_opd.yaml"} <= presets


CHECKS = '''
import sys, sysconfig
from pathlib import Path

site = Path(sysconfig.get_path("purelib")).resolve()
assert not any("editable" in type(f).__module__ for f in sys.meta_path), sys.meta_path  # the repo is not loaded
assert not any(Path(p).resolve() == ROOT for p in sys.path if p), sys.path

import trainer, dashboards
assert trainer.DUMMY and dashboards.DUMMY  # someone else's packages of those names stay importable

import opdwatch, opdwatch.trainer.config as config
assert Path(opdwatch.__file__).resolve().is_relative_to(site)
assert Path(config.__file__).resolve() == site / "opdwatch" / "trainer" / "config.py"
assert "torch" not in sys.modules  # validating a config needs no torch
cfg = config.load_config("demo_opd", ["run.name=x"])  # a preset from the wheel, found by name
assert cfg.run.name == "x" and config.resolve_preset("gpu_qwen1p5b_r1distill7b").is_relative_to(site)
assert "torch" not in sys.modules

import opdwatch.trainer.cli_entry, opdwatch.trainer.loop.loop  # the whole trainer imports from the wheel
assert "opdwatch.trainer.recipes.demo.demo" not in sys.modules  # and the demo recipe only when it is used

import opdwatch.dashboards.app as app  # the dashboard too, with its pages and assets from the wheel
assert Path(app.__file__).resolve() == site / "opdwatch" / "dashboards" / "app.py"
assert (app.PAGES / "runs.py").is_file() and (app.HERE / "assets" / "opdwatch.css").is_file()
print("ok")
'''


@pytest.mark.timeout(60)
def test_the_installed_wheel_imports_as_opdwatch_trainer_next_to_packages_named_trainer(
        wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               capture_output=True, text=True, check=True).stdout.strip())
    zipfile.ZipFile(wheel).extractall(site)  # a pure-Python wheel unzipped is its installed layout
    # the dependencies (polars, torch, ...) from this venv: a .pth line only adds the path; the .pth files in it
    # (this venv's editable finder for the repository) are not executed, so the repository is not importable
    (site / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    user = tmp_path / "user-packages"  # another project's packages, first on the path
    for name in ("trainer", "dashboards"):
        (user / name).mkdir(parents=True)
        (user / name / "__init__.py").write_text("DUMMY = True\n")
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    code = f"ROOT = __import__('pathlib').Path({str(ROOT)!r})\n" + textwrap.dedent(CHECKS)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(user), "PYTHONNOUSERSITE": "1", "HOME": str(tmp_path)}
    proc = subprocess.run([str(python), "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


def test_the_core_never_imports_the_trainer_or_torch() -> None:
    # every module of the core (recorder, reader, analysis, detector, CLI parsers, ...): the trainer is imported
    # only by `opdwatch train` / `opdwatch demo` when they run
    code = ("import importlib, pkgutil, sys, opdwatch\n"
            "names = [m.name for m in pkgutil.walk_packages(opdwatch.__path__, 'opdwatch.')\n"
            "         if not m.name.endswith('__main__') and not m.name.startswith('opdwatch.trainer')]\n"
            "for name in names: importlib.import_module(name)\n"
            "import opdwatch.cli; opdwatch.cli.build_parser()\n"
            "print(len(names), sorted({m for m in sys.modules if m.split('.')[0] in ('torch', 'trainer')\n"
            "                          or m.startswith('opdwatch.trainer')}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT.parent)
    count, imported = out.stdout.strip().split(" ", 1)
    assert int(count) > 30 and imported == "[]"

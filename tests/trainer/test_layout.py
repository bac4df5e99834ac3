"""The trainer's layout holds: no import circles, layers import downwards only, real runs never load the demo recipe."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from opdwatch.trainer.loop.components import model_path

from .conftest import TINY

TRAINER = Path(__file__).resolve().parents[2] / "trainer"
PACKAGE = "opdwatch.trainer"
# Each group may import its own layer and the ones below. config is torch-free and imports no other group.
LAYER = {"__init__": 0, "config": 0, "data": 1, "parallel": 1, "rollout": 2, "objectives": 3, "loop": 4,
         "recipes": 5, "cli_entry": 6}
# The one upward edge: loop/components.py resolves `models.*: demo` through the demo recipe, imported on use only
ALLOWED_UP = {("opdwatch.trainer.loop.components", "opdwatch.trainer.recipes.demo.demo_teacher")}


def _module(path: Path) -> str:
    parts = path.relative_to(TRAINER).with_suffix("").parts
    return ".".join((PACKAGE, *(parts[:-1] if parts[-1] == "__init__" else parts)))


def _imports() -> dict[str, set[str]]:
    """module -> trainer modules it imports anywhere: at the top, inside functions, under TYPE_CHECKING."""
    modules = {_module(p): p for p in TRAINER.rglob("*.py")}
    edges: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            else:
                assert not isinstance(node, ast.ImportFrom) or not node.level, f"{path}: relative import"
                continue
            edges[name] |= {t for t in targets if t in modules and t != name}
    return edges


def _group(module: str) -> str:
    rest = module.removeprefix(PACKAGE).lstrip(".")
    return rest.split(".")[0] or "__init__"


def test_no_import_circle_in_the_trainer() -> None:
    edges = _imports()
    assert sum(map(len, edges.values())) > 50  # the scan sees the imports

    def circle_from(start: str) -> list[str] | None:
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in edges.get(node, ()):
                if nxt == start:
                    return [*path, start]
                if nxt not in path:
                    stack.append((nxt, [*path, nxt]))
        return None

    circles = [c for c in map(circle_from, list(edges)) if c]
    assert not circles, " -> ".join(circles[0])


def test_groups_import_downwards_only() -> None:
    upward = sorted((a, b) for a, bs in _imports().items() for b in bs
                    if LAYER[_group(b)] > LAYER[_group(a)] and (a, b) not in ALLOWED_UP)
    assert upward == []


def test_a_run_with_real_model_paths_never_imports_the_demo_recipe(tiny_config, tmp_path: Path) -> None:
    config = tiny_config()
    student, teacher = model_path(config, "student"), model_path(config, "teacher")  # plain HF model directories
    overrides = [*TINY, f"models.student={student}", f"models.teacher={teacher}", f"run.output_dir={tmp_path}",
                 "opd.steps=1", "val.every=0", "checkpoint.every=0"]
    code = ("import sys; from opdwatch.trainer.cli_entry import train_main; "
            f"train_main(None, {overrides!r}, resume=False); "
            "print(sorted(m for m in sys.modules if m.startswith('opdwatch.trainer.recipes')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"

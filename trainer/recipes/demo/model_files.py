"""The demo models' files: a manifest of recipe version, recipe key and sha256 per file, written with every build
and checked on every load.

Each demo model directory (in the user's cache, or shipped with the package under `models/`) holds the usual
`config.json`, `model.safetensors` and tokenizer files plus MANIFEST_NAME. A directory whose manifest is missing,
names another recipe, or whose files do not hash to what it recorded is never used silently: `verify_model_dir`
raises one `OpdwatchError` line that says which file and how to rebuild.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from opdwatch.atomic import write_json
from opdwatch.errors import OpdwatchError

MANIFEST_NAME = "opdwatch_model.json"
REBUILD_HINT = "run `opdwatch demo --rebuild-models` to train the demo models from scratch"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(model_dir: Path, *, role: str, key: str, recipe_version: int, recipe: dict[str, Any]) -> None:
    """Record what made `model_dir` and the sha256 of every file in it (written last, once the files are final)."""
    files = {p.name: sha256_file(p) for p in sorted(model_dir.iterdir()) if p.is_file() and p.name != MANIFEST_NAME}
    manifest = {"role": role, "key": key, "recipe_version": recipe_version, "recipe": recipe, "files": files}
    write_json(manifest, model_dir / MANIFEST_NAME)


def read_manifest(model_dir: Path) -> dict[str, Any]:
    path = model_dir / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise OpdwatchError(f"demo model {model_dir}: no {MANIFEST_NAME} (an incomplete or foreign directory); "
                            f"{REBUILD_HINT}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OpdwatchError(f"demo model {model_dir}: {MANIFEST_NAME} cannot be read ({type(exc).__name__}); "
                            f"{REBUILD_HINT}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise OpdwatchError(f"demo model {model_dir}: {MANIFEST_NAME} has no file list; {REBUILD_HINT}")
    return manifest


def verify_model_dir(model_dir: Path, *, key: str, recipe_version: int) -> None:
    """Raise OpdwatchError unless `model_dir` was made by recipe `key` at `recipe_version` and is byte-intact."""
    manifest = read_manifest(model_dir)
    if manifest.get("key") != key or manifest.get("recipe_version") != recipe_version:
        raise OpdwatchError(
            f"demo model {model_dir}: made by recipe {manifest.get('key')!r} version {manifest.get('recipe_version')}, "
            f"expected {key!r} version {recipe_version}; {REBUILD_HINT}")
    files: dict[str, str] = manifest["files"]
    if "model.safetensors" not in files or "config.json" not in files:
        raise OpdwatchError(f"demo model {model_dir}: {MANIFEST_NAME} lists no weights; {REBUILD_HINT}")
    for name, expected in sorted(files.items()):
        path = model_dir / name
        if not path.is_file():
            raise OpdwatchError(f"demo model {model_dir}: {name} is missing; {REBUILD_HINT}")
        if sha256_file(path) != expected:
            raise OpdwatchError(f"demo model {model_dir}: {name} does not match its sha256 in {MANIFEST_NAME} "
                                f"(damaged or edited); {REBUILD_HINT}")


def copy_model_dir(src: Path, dest: Path, *, role: str, key: str, recipe_version: int, recipe: dict[str, Any]) -> None:
    """Copy the model files of `src` (not its manifest) to a new directory `dest` and write `dest`'s manifest."""
    dest.mkdir(parents=True, exist_ok=False)
    for p in sorted(src.iterdir()):
        if p.is_file() and p.name != MANIFEST_NAME and not p.name.startswith("."):
            (dest / p.name).write_bytes(p.read_bytes())
    write_manifest(dest, role=role, key=key, recipe_version=recipe_version, recipe=recipe)

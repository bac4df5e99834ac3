"""The probe's models: a local directory or hub id, a demo model by name, or an in-memory (model, tokenizer).

Demo names are the demo recipe's roles (trainer/recipes/demo/demo_teacher.py ROLES; shipped, cached, or trained
on first use by its `ensure_demo_model`): `demo-teacher` (golden SFT + copy-prior fine-tune, the demo's own
teacher), `demo-teacher-clean` (role teacher_sft: golden SFT only, the same teacher before its copy-prior
fine-tune), `demo-teacher-weak` (role teacher_weak: a quarter of the copy-prior fine-tune). torch and
transformers are imported on use.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opdwatch.errors import OpdwatchError

# demo name -> the demo recipe's role
DEMO_MODELS: dict[str, str] = {
    "demo-student": "student",
    "demo-teacher": "teacher",
    "demo-teacher-clean": "teacher_sft",
    "demo-teacher-weak": "teacher_weak",
}
DTYPES = ("float32", "bfloat16", "float16", "float64")


@dataclass
class LoadedModel:
    model: Any  # a transformers causal LM, frozen, in eval mode
    tokenizer: Any  # its tokenizer (EOS and pad ids set)
    name: str  # what the user named it (path, hub id, demo name or "<in-memory>")


def demo_model_dir(name: str, cache_dir: str | None = None) -> Path:
    """The cached directory of demo model `name` (trained on first use)."""
    from opdwatch.trainer.config import load_config
    from opdwatch.trainer.recipes.demo.demo_teacher import ensure_demo_model

    extra = [f"models.cache_dir={cache_dir}"] if cache_dir else []
    return ensure_demo_model(load_config("demo_opd", extra), DEMO_MODELS[name])


def _is_local(spec: str) -> bool:
    return spec.startswith(("/", ".", "~")) or Path(spec).exists()


def resolve_path(spec: str, cache_dir: str | None = None) -> str:
    """The directory or hub id to load `spec` from; a local path that does not exist is refused here."""
    if spec in DEMO_MODELS:
        return str(demo_model_dir(spec, cache_dir))
    if _is_local(spec):
        path = Path(spec).expanduser()
        if not (path / "config.json").is_file():
            why = "no such directory" if not path.exists() else "no config.json in it"
            raise OpdwatchError(f"model {spec}: {why} (or a demo model: {', '.join(DEMO_MODELS)})")
        return str(path)
    return spec  # a hub id


def load_model(spec: str | tuple[Any, Any], *, device: str = "cpu", dtype: str = "float32",
               cache_dir: str | None = None) -> LoadedModel:
    """Load a model for scoring. `spec`: path, hub id, demo name, or an in-memory (model, tokenizer) pair (used as
    it is: its device and dtype are the caller's)."""
    if isinstance(spec, tuple):
        model, tokenizer = spec
        return LoadedModel(model, tokenizer, "<in-memory>")
    if dtype not in DTYPES:
        raise OpdwatchError(f"dtype {dtype!r}: one of {', '.join(DTYPES)}")
    import torch

    from opdwatch.trainer.data.models import load_causal_lm, load_tokenizer

    path = resolve_path(spec, cache_dir)
    tokenizer = load_tokenizer(path)
    model = load_causal_lm(path, trainable=False)
    try:
        model = model.to(device=torch.device(device), dtype=getattr(torch, dtype))
    except (RuntimeError, AssertionError) as exc:  # no such device, CUDA not compiled in
        raise OpdwatchError(f"--device {device}: {str(exc).splitlines()[0]}") from None
    return LoadedModel(model, tokenizer, spec)

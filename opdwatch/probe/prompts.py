"""The probe's prompt set: prompts with (optional) golden solutions, from the demo task or a JSONL/Parquet file.

A record needs a prompt under `prompt`, `question` or `problem`; `solution` is needed only when the probe
extends golden solutions (`--responses golden`). The demo set is the held-out validation split of the
synthetic task, the prompts the demo runs validate on and never train on. Torch-free.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from opdwatch.errors import OpdwatchError

PROMPT_FIELDS = ("prompt", "question", "problem")
DEMO_SET = "demo"  # --prompts value naming the demo task's validation prompts


@dataclass(frozen=True)
class ProbePrompt:
    prompt: str  # user prompt text (the chat template, if any, is applied when tokenizing)
    solution: str | None = None  # golden solution text, when known


def _rows(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's input at fault
            raise OpdwatchError(f"{path}: not a readable Parquet file ({type(exc).__name__})") from None
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise OpdwatchError(f"{path}: cannot be read ({type(exc).__name__})") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise OpdwatchError(f"{path}:{n}: not a JSON object") from None
        if not isinstance(row, dict):
            raise OpdwatchError(f"{path}:{n}: not a JSON object")
        rows.append(row)
    return rows


def load_prompts(path: str | Path) -> list[ProbePrompt]:
    """Prompts (and solutions) from a JSONL or Parquet file; refuses a missing file and an empty set."""
    path = Path(path)
    if not path.is_file():
        raise OpdwatchError(f"prompt set {path}: no such file")
    out = []
    for i, row in enumerate(_rows(path)):
        prompt = next((row[f] for f in PROMPT_FIELDS if f in row), None)
        if prompt is None:
            raise OpdwatchError(f"{path}: record {i} has no prompt (one of {', '.join(PROMPT_FIELDS)})")
        solution = row.get("solution")
        out.append(ProbePrompt(str(prompt), None if solution is None else str(solution)))
    return check_prompts(out, str(path))


def check_prompts(prompts: list[ProbePrompt], where: str) -> list[ProbePrompt]:
    if not prompts or not any(p.prompt.strip() for p in prompts):
        raise OpdwatchError(f"prompt set {where} is empty")
    return prompts


def demo_prompts(n: int, data_seed: int = 1234) -> list[ProbePrompt]:
    """The first `n` validation prompts of the demo task (trainer defaults), with their golden solutions."""
    from opdwatch.trainer.config import DataConfig
    from opdwatch.trainer.data.task import make_splits

    data = DataConfig(seed=data_seed, val_size=max(n, DataConfig().val_size))
    return [ProbePrompt(ex.question, ex.solution) for ex in make_splits(data).val[:n]]

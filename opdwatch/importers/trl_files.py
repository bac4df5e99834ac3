"""TRL after the fact: ``trainer_state.json``'s ``log_history`` and the ``log_completions`` Parquet files.

- ``transformers`` ``TrainerState.save_to_json`` (``trainer_callback.py``): ``log_history`` holds one dict per
  ``Trainer.log`` call with ``step`` (the global step) and the logged scalars; ``checkpoint-*/trainer_state.json``
  holds the history up to that checkpoint, ``output_dir/trainer_state.json`` the whole run when saved at the end.
- ``trl/trainer/distillation_trainer.py`` ``_generate_and_score_completions``: ``completions/{mean,min,max}_length``,
  ``completions/clipped_ratio`` (the last token not EOS or pad); ``log_completions=True`` writes
  ``output_dir/completions/completions_{global_step:05d}.parquet`` with columns step, prompt, completion (texts).
- In wandb, transformers' ``WandbCallback`` logs the same names with a ``train/`` prefix (``integrations/
  integration_utils.py`` ``rewrite_logs``) and ``train/global_step``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from opdwatch.errors import OpdwatchError
from opdwatch.importers.jsonl import as_int
from opdwatch.importers.metric_map import numeric_items
from opdwatch.importers.model import Framework, ImportedRun, ImportOptions, MetricRule
from opdwatch.importers.registry import Importer
from opdwatch.metric_defs import MAX_LENGTH, MEAN_LENGTH, TRUNCATION_RATE

_TRL = "trl/trainer/distillation_trainer.py"
FRAMEWORK = Framework(
    "trl",
    rules=(
        MetricRule(r"completions/clipped_ratio", TRUNCATION_RATE, _TRL,
                   note="TRL: the completion's last token is not EOS or pad"),
        MetricRule(r"completions/mean_length", MEAN_LENGTH, _TRL),
        MetricRule(r"completions/max_length", MAX_LENGTH, _TRL),
    ),
    # in wandb every name carries transformers' train/ prefix
    signature=(r"train/(loss|grad_norm|learning_rate|epoch|global_step|entropy|num_tokens)",
               r"train/completions/(mean|min|max|clipped_ratio|mean_terminated|min_terminated|max_terminated).*"),
    wandb_step_keys=("train/global_step",),
    strip_prefix="train/",
)
_CHECKPOINT = re.compile(r"checkpoint-(\d+)")


def state_file(src: Path) -> Path:
    """SRC's trainer_state.json: the file, output_dir's own, or the newest checkpoint's."""
    if src.is_file():
        return src
    if (src / "trainer_state.json").is_file():
        return src / "trainer_state.json"
    checkpoints = sorted((int(m.group(1)), p) for p in src.glob("checkpoint-*")
                         if (m := _CHECKPOINT.fullmatch(p.name)) and (p / "trainer_state.json").is_file())
    if not checkpoints:
        raise OpdwatchError(f"{src}: no trainer_state.json (in it or in a checkpoint-*/ folder)")
    return checkpoints[-1][1] / "trainer_state.json"


def output_dir(src: Path, state: Path) -> Path:
    folder = src if src.is_dir() else state.parent
    return folder.parent if _CHECKPOINT.fullmatch(folder.name) else folder


def read(src: Path, options: ImportOptions) -> ImportedRun:
    path = state_file(src)
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OpdwatchError(f"{path}: not a readable trainer_state.json ({type(exc).__name__})") from None
    history = state.get("log_history") if isinstance(state, dict) else None
    if not isinstance(history, list):
        raise OpdwatchError(f"{path}: no log_history list")
    run = ImportedRun(FRAMEWORK, src, files=[str(path)],
                      config={k: state[k] for k in ("global_step", "max_steps", "train_batch_size") if k in state})
    stepless = 0
    for row in history:
        step = as_int(row.get("step")) if isinstance(row, dict) else None
        if step is None:
            stepless += 1
            continue
        # eval rows (eval_*) and the final train summary (train_runtime, ...) are kept under trl/ as well
        run.step(step).metrics.update(numeric_items({k: v for k, v in row.items() if k != "step"}))
    if stepless:
        run.warnings.append(f"{path.name}: {stepless} log_history entries without a step were left out")
    _completions(output_dir(src, path) / "completions", run)
    return run


def _completions(folder: Path, run: ImportedRun) -> None:
    if not folder.is_dir():
        return
    import pyarrow.parquet as pq

    bad = []
    for path in sorted(folder.glob("completions_*.parquet")):
        try:
            table = pq.read_table(path, columns=["step", "completion"])
        except Exception:  # noqa: BLE001 - a torn or foreign Parquet file: skip it, say so
            bad.append(path.name)
            continue
        by_step: dict[int, list[str]] = {}
        for step, text in zip(table["step"].to_pylist(), table["completion"].to_pylist(), strict=True):
            by_step.setdefault(int(step), []).append("" if text is None else str(text))
        for step, texts in by_step.items():
            run.step(step).texts = texts
        run.files.append(str(path))
    if bad:
        run.warnings.append(f"skipped {len(bad)} unreadable completions files ({', '.join(bad[:3])})")


IMPORTER = Importer("trl", FRAMEWORK, read, src="output_dir/, a checkpoint-*/ or its trainer_state.json",
                    records="step metrics; completion texts from log_completions")

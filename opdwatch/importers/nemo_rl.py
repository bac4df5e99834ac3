"""NeMo-RL: ``{log_dir}/train_data_step{N}.jsonl`` per step, plus the step metrics of its wandb run.

- ``nemo_rl/utils/logger.py`` ``Logger.log_batched_dict_as_jsonl``: one line per sample, the batch's fields
  plus ``idx``. Distillation (``nemo_rl/algorithms/distillation.py``) dumps ``content`` (the sample's
  message contents, a list: the response is the last) and ``input_lengths``: texts only. GRPO
  (``nemo_rl/algorithms/grpo.py``) adds ``token_ids`` (prompt + response, padded), ``token_loss_mask``,
  ``generation_logprobs``, ``advantages``: with ``--eos-token-id`` those give token records.
- Metrics go to the enabled backends only (wandb, tensorboard, mlflow, swanlab), ``prefix="train"``:
  ``train/truncation_rate`` etc. from ``nemo_rl/experience/rollouts.py``. A wandb run under
  ``{log_dir}/wandb/`` is read automatically; ``--metrics`` names another.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from opdwatch.errors import OpdwatchError
from opdwatch.importers.jsonl import read_jsonl, skipped_warning
from opdwatch.importers.model import Framework, ImportedRun, ImportOptions, MetricRule, Rollouts
from opdwatch.importers.registry import Importer
from opdwatch.importers.sources import merge_metrics
from opdwatch.metric_defs import MAX_LENGTH, MEAN_LENGTH, TRUNCATION_RATE

_ROLLOUTS = "nemo_rl/experience/rollouts.py"
FRAMEWORK = Framework(
    "nemo-rl",
    rules=(
        MetricRule(r"train/truncation_rate", TRUNCATION_RATE, _ROLLOUTS,
                   note="NeMo-RL: the generation backend's truncated flag (max_tokens hit without a stop token)"),
        MetricRule(r"train/mean_gen_tokens_per_sample", MEAN_LENGTH, _ROLLOUTS,
                   note="assistant tokens over all turns of a sample"),
        MetricRule(r"train/max_gen_tokens_per_sample", MAX_LENGTH, _ROLLOUTS),
    ),
    signature=(r"train/(truncation_rate|natural_termination_rate|mean_gen_tokens_per_sample|"
               r"max_gen_tokens_per_sample|avg_turns_per_sample|max_turns_reached_rate|mean_total_tokens_per_sample)",
               r"timing/train/.+"),
)
_FILE = re.compile(r"train_data_step(\d+)\.jsonl")


def _response_text(content: Any) -> str:
    if isinstance(content, list):
        return str(content[-1]) if content else ""
    return "" if content is None else str(content)


def _token_rollouts(rows: list[dict[str, Any]], eos: set[int]) -> Rollouts | None:
    """GRPO-style rows with token_ids and a loss mask -> rollouts (finish from EOS), else None."""
    if not eos or not rows or not all("token_ids" in r and "token_loss_mask" in r for r in rows):
        return None
    ids, student, texts = [], [], []
    for row in rows:
        n = int(row.get("input_lengths") or len(row["token_ids"]))
        tokens = np.asarray(row["token_ids"][:n], dtype=np.int64)
        mask = np.asarray(row["token_loss_mask"][:n], dtype=bool)
        ids.append(tokens[mask])
        logp = row.get("generation_logprobs")
        student.append(np.asarray(logp[:n], dtype=np.float64)[mask] if isinstance(logp, list) and len(logp) >= n
                       else np.full(int(mask.sum()), np.nan))
        texts.append(_response_text(row.get("content")))
    reasons = ["eos" if len(t) and int(t[-1]) in eos else "length" for t in ids]
    return Rollouts(ids, reasons, texts, student_logp=student)


def read(src: Path, options: ImportOptions) -> ImportedRun:
    folder = src if src.is_dir() else src.parent
    files = sorted((int(m.group(1)), p) for p in folder.glob("train_data_step*.jsonl")
                   if (m := _FILE.fullmatch(p.name)))
    if src.is_file():
        files = [(s, p) for s, p in files if p == src]
    if not files:
        raise OpdwatchError(f"{src}: no train_data_step{{N}}.jsonl (give NeMo-RL's log_dir)")
    run = ImportedRun(FRAMEWORK, src)
    skipped: list[str] = []
    eos = set(options.eos_token_ids)
    token_rows = False
    for step, path in files:
        rows = list(read_jsonl(path, skipped))
        token_rows = token_rows or any("token_ids" in r for r in rows)
        if not rows:
            continue
        sd = run.step(step)
        sd.rollouts = _token_rollouts(rows, eos)
        if sd.rollouts is None:
            sd.texts = [_response_text(r.get("content")) for r in rows]
        run.files.append(str(path))
    if (warning := skipped_warning("train-data lines", skipped)) is not None:
        run.warnings.append(warning)
    if not eos and token_rows:
        run.warnings.append("the dumps carry token ids: give --eos-token-id to recompute truncation from them")
    if options.metrics is None and (folder / "wandb").is_dir():
        options = replace(options, metrics=folder / "wandb")
    merge_metrics(run, options)
    return run


IMPORTER = Importer("nemo-rl", FRAMEWORK, read, src="log_dir/ (train_data_step{N}.jsonl; wandb/ or --metrics)",
                    records="response texts (GRPO dumps: tokens, with --eos-token-id); metrics from wandb")

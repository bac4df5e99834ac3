"""slime: its debug rollout dumps (tokens, rollout and teacher log-probs, loss mask, status), plus the step
metrics of its wandb run (``--metrics``), and an in-process hook (:mod:`opdwatch.importers.slime_hook`).

- ``slime/observability/rollout_data_utils.py`` ``save_debug_rollout_data``: ``torch.save({"rollout_id": id,
  "samples": [Sample.to_dict(), ...]}, path)``, at ``--save-debug-rollout-data`` (a ``{rollout_id}`` template;
  eval dumps get ``eval_`` before the id) or ``--dump-details DIR`` -> ``DIR/rollout_data/{rollout_id}.pt``
  (``slime/utils/arguments.py``).
- ``slime/utils/types.py`` ``Sample``: ``tokens`` (prompt + response), ``response_length``, ``response``,
  ``loss_mask``, ``rollout_log_probs`` and ``teacher_log_probs`` (response-aligned; the teacher's are filled by
  ``slime/rollout/on_policy_distillation.py`` ``post_process_rewards`` from SGLang's ``input_token_logprobs``),
  ``status`` (``truncated`` when SGLang's finish reason is ``length``: ``Sample.update_from_meta_info``).
- Metrics (``slime/observability/rollout_metrics.py``, ``train_metric_utils.py``) go to wandb only
  (``logging_utils.log``), with ``rollout/step`` as their step.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from opdwatch.errors import OpdwatchError
from opdwatch.importers.model import Framework, ImportedRun, ImportOptions, MetricRule, Rollouts
from opdwatch.importers.registry import Importer
from opdwatch.importers.sources import merge_metrics
from opdwatch.metric_defs import MAX_LENGTH, MEAN_LENGTH, REPETITION_RATE, TRUNCATION_RATE

_ROLLOUT = "slime/observability/rollout_metrics.py"
_TRAIN = "slime/observability/train_metric_utils.py"
RAW_CLIP_NOTE = ("slime before #203 compared raw_response_lengths > rollout_max_response_len, which no response "
                 "can exceed: always 0 (fixed to >= in e61b2d2)")

FRAMEWORK = Framework(
    "slime",
    rules=(
        MetricRule(r"rollout/truncated_ratio", TRUNCATION_RATE, _ROLLOUT),
        MetricRule(r"multi_turn/raw_response_length/response_length_clip_ratio", TRUNCATION_RATE, _TRAIN,
                   note=RAW_CLIP_NOTE),
        MetricRule(r"rollout/repetition_frac", REPETITION_RATE, _ROLLOUT,
                   note="slime: len(text) > 10000 and compression > 10x on the last 10,000 characters"),
        MetricRule(r"rollout/response_len/mean", MEAN_LENGTH, _ROLLOUT,
                   note="slime: effective_response_length, the loss-masked tokens"),
        MetricRule(r"rollout/response_len/max", MAX_LENGTH, _ROLLOUT),
    ),
    signature=(r"rollout/truncated_ratio", r"rollout/repetition_frac", r"rollout/response_len/(mean|median|max|min)",
               r"rollout/opd_reverse_kl", r"rollout/teacher_log_probs", r"rollout/rollout_log_probs",
               r"multi_turn/raw_response_length/.+", r"perf/rollout_time", r"train/opd_reverse_kl"),
    wandb_step_keys=("rollout/step", "eval/step"),
    # slime/backends/megatron_utils/model.py logs train/* with train/step, the optimizer-step counter, not the
    # rollout id that every other row (and the dumps) are keyed by
    other_clocks=("train/step",),
)

_EVAL = re.compile(r"(^|[^a-z])eval_")


def _ints(values: Any) -> np.ndarray:
    return np.asarray(values.tolist() if hasattr(values, "tolist") else list(values or []), dtype=np.int64)


def _floats(values: Any) -> np.ndarray | None:
    if values is None:
        return None
    return np.asarray(values.tolist() if hasattr(values, "tolist") else list(values), dtype=np.float64)


def rollouts_from_samples(samples: Sequence[dict[str, Any]], eos_ids: Sequence[int] = ()) -> tuple[Rollouts, list[str]]:
    """slime ``Sample.to_dict()`` records -> our rollouts, and what did not fit (one phrase per problem).

    The response is the last ``response_length`` tokens. Finish: "length" for status ``truncated`` (or, with
    ``eos_ids``, recomputed: the response does not end on one of them), else "eos". Log-prob arrays that do
    not have one value per response token are dropped for the batch (said in the problems).
    """
    ids, reasons, texts, prompts, masks = [], [], [], [], []
    student: list[np.ndarray | None] = []
    teacher: list[np.ndarray | None] = []
    problems: list[str] = []
    eos = set(int(t) for t in eos_ids)
    for s in samples:
        tokens = _ints(s.get("tokens"))
        n = int(s.get("response_length") or 0)
        resp = tokens[len(tokens) - n:] if 0 < n <= len(tokens) else tokens[:0]
        ids.append(resp)
        if eos:
            reasons.append("eos" if len(resp) and int(resp[-1]) in eos else "length")
        else:
            reasons.append("length" if str(s.get("status", "")).lower() == "truncated" else "eos")
        texts.append(str(s.get("response") or ""))
        prompt = s.get("prompt")
        prompts.append(prompt if isinstance(prompt, str) else None)
        mask = s.get("loss_mask")
        masks.append(np.ones(len(resp), bool) if mask is None else _ints(mask).astype(bool))
        student.append(_floats(s.get("rollout_log_probs")))
        teacher.append(_floats(s.get("teacher_log_probs")))
    if bad := sum(len(m) != len(r) for m, r in zip(masks, ids, strict=True)):
        problems.append(f"{bad} loss masks not of response length (taken as all ones)")
        masks = [m if len(m) == len(r) else np.ones(len(r), bool) for m, r in zip(masks, ids, strict=True)]
    out = Rollouts(ids, reasons, texts, loss_mask=masks, prompt_texts=prompts)
    for name, values in (("rollout_log_probs", student), ("teacher_log_probs", teacher)):
        if all(v is None for v in values):
            continue
        if all(v is not None and len(v) == len(r) for v, r in zip(values, ids, strict=True)):
            setattr(out, "student_logp" if name == "rollout_log_probs" else "teacher_logp", values)
        else:
            problems.append(f"{name} missing or not of response length in some samples (left out)")
    return out, problems


def dump_files(src: Path) -> list[Path]:
    if src.is_file():
        return [src]
    for folder in (src / "rollout_data", src):
        files = sorted(folder.glob("*.pt"))
        if files:
            return files
    raise OpdwatchError(f"{src}: no slime rollout dumps (*.pt; --dump-details DIR has them in DIR/rollout_data/)")


def load_dump(path: Path, allow_pickle: bool) -> dict[str, Any]:
    import pickle

    try:
        import torch  # slime writes with torch.save; torch is only needed to read its dumps
    except ModuleNotFoundError:
        raise OpdwatchError("reading slime's torch.save dumps needs torch (pip install torch, or "
                            "'opdwatch[train]')") from None
    try:
        data = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError as exc:
        if allow_pickle:
            raise
        raise OpdwatchError(f"{path}: holds objects beyond plain data ({str(exc).splitlines()[0][:120]}); "
                            "pass --allow-pickle to load it with full pickle (only for files you trust)") from None
    if not isinstance(data, dict) or not isinstance(data.get("samples"), list):
        raise ValueError("not a slime rollout dump (no 'samples' list)")
    return data


def read(src: Path, options: ImportOptions) -> ImportedRun:
    run = ImportedRun(FRAMEWORK, src)
    unreadable: list[str] = []
    problems: set[str] = set()
    for path in dump_files(src):
        try:
            data = load_dump(path, options.allow_pickle)
        except OpdwatchError:
            raise
        except Exception:  # noqa: BLE001 - a torn or foreign .pt: skip it, say so once
            unreadable.append(path.name)
            continue
        step = data.get("rollout_id")
        if not isinstance(step, int):
            unreadable.append(path.name)
            continue
        rollouts, found = rollouts_from_samples(data["samples"], options.eos_token_ids)
        problems.update(found)
        phase = "val" if _EVAL.search(path.stem) else "train"
        run.step(step, phase).rollouts = rollouts
        run.files.append(str(path))
    if unreadable:
        run.warnings.append(f"skipped {len(unreadable)} unreadable dumps ({', '.join(unreadable[:3])})")
    run.warnings.extend(sorted(problems))
    merge_metrics(run, options)
    return run


IMPORTER = Importer("slime", FRAMEWORK, read, src="--dump-details DIR, its rollout_data/, or one .pt (+ --metrics)",
                    records="tokens, rollout and teacher log-probs, loss mask, status; metrics from wandb")

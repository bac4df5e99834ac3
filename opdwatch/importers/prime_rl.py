"""prime-rl: its file monitor's ``output_dir/metrics.jsonl`` and ``output_dir/rollouts/step_{N}/train/{subset}/
traces.jsonl`` (on by default: ``packages/prime-rl-configs/src/prime_rl/configs/monitors.py``).

- ``src/prime_rl/monitors/file.py`` ``FileMonitor``: metrics as ``{"step", "time", **metrics}`` per line;
  episodes as ``episode.to_record()`` per line (verifiers' ``verifiers/v1/episode.py``: the pydantic dump
  of the ``Episode`` with its ``traces``).
- A trace (``verifiers/v1/trace.py``) holds ``nodes``: each with ``token_ids``, ``mask`` (True on sampled
  tokens), ``logprobs`` and ``reference_logprobs`` over the sampled tokens (the teacher's, in OPD:
  ``src/prime_rl/orchestrator/algo/opd.py`` -> ``algo/routing.py::assign_reference_logprobs``); ``calls``
  with ``finish_reason``; ``stop_condition``. ``Trace.is_truncated``: a limit stop condition, or the last
  call without an error finished on ``length``; we apply the same rule to the record.
- Metrics: ``src/prime_rl/orchestrator/metrics.py`` ``TraceMetrics.to_dict`` under
  ``train/agg/{all,effective}/{agent}/...`` (``src/prime_rl/orchestrator/orchestrator.py``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from opdwatch.errors import OpdwatchError
from opdwatch.importers.jsonl import read_jsonl, skipped_warning
from opdwatch.importers.model import Framework, ImportedRun, ImportOptions, MetricRule, Rollouts
from opdwatch.importers.registry import Importer
from opdwatch.importers.sources import metrics_jsonl
from opdwatch.metric_defs import MAX_LENGTH, MEAN_LENGTH, TRUNCATION_RATE

_METRICS = "src/prime_rl/orchestrator/metrics.py"
# verifiers/v1/trace.py Trace.is_truncated
LIMIT_STOPS = ("max_turns", "max_input_tokens", "max_output_tokens", "max_total_tokens", "context_length")

FRAMEWORK = Framework(
    "prime-rl",
    rules=(
        MetricRule(r"train/agg/effective/[^/]+/is_truncated/mean", TRUNCATION_RATE, _METRICS,
                   note="prime-rl: per trace, a limit stop condition or a last call finished on length"),
        MetricRule(r"train/agg/effective/num_output_tokens/mean", MEAN_LENGTH, _METRICS,
                   note="per episode: all traces' sampled tokens"),
        MetricRule(r"train/agg/effective/num_output_tokens/max", MAX_LENGTH, _METRICS),
    ),
    signature=(r"train/agg/(all|effective)/.+", r"progress/(tokens|input_tokens|output_tokens|rollouts|tasks|"
               r"total_tokens|total_rollouts)", r"mismatch_kl/.+"),
)
_STEP_DIR = re.compile(r"step_(\d+)")


def is_truncated(trace: dict[str, Any]) -> bool:
    if trace.get("stop_condition") in LIMIT_STOPS:
        return True
    calls = [c for c in trace.get("calls") or [] if isinstance(c, dict) and c.get("error") is None]
    return bool(calls) and calls[-1].get("finish_reason") == "length"


def _content(message: Any) -> str:
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, list):  # content parts
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


def trace_rollout(trace: dict[str, Any]) -> tuple[np.ndarray, list[float], list[float] | None, str]:
    """(sampled tokens, their log-probs, the reference's or None, sampled text) of one trace, over all turns."""
    ids: list[int] = []
    logp: list[float] = []
    ref: list[float] | None = []
    text = []
    for node in trace.get("nodes") or []:
        mask = node.get("mask") or []
        if not any(mask):
            continue
        tokens = [t for t, m in zip(node.get("token_ids") or [], mask, strict=False) if m]
        ids.extend(tokens)
        lp = node.get("logprobs") or []
        logp.extend(lp if len(lp) == len(tokens) else [float("nan")] * len(tokens))
        rl = node.get("reference_logprobs")
        if ref is not None and rl is not None and len(rl) == len(tokens):
            ref.extend(rl)
        else:
            ref = None
        text.append(_content(node.get("message")))
    return np.asarray(ids, dtype=np.int64), logp, (ref if ref else None), "".join(text)


def _steps(src: Path) -> list[tuple[int, Path]]:
    out = []
    for folder in (src / "rollouts").glob("step_*"):
        match = _STEP_DIR.fullmatch(folder.name)
        if not match:
            continue
        for subset in ("effective", "all"):  # the shipped cohort if logged, else everything that arrived
            path = folder / "train" / subset / "traces.jsonl"
            if path.is_file():
                out.append((int(match.group(1)), path))
                break
    return sorted(out)


def read(src: Path, options: ImportOptions) -> ImportedRun:
    if not src.is_dir():
        raise OpdwatchError(f"{src}: give prime-rl's output_dir (with metrics.jsonl and rollouts/)")
    run = ImportedRun(FRAMEWORK, src)
    if (src / "metrics.jsonl").is_file():
        metrics_jsonl(src / "metrics.jsonl", run)
    skipped: list[str] = []
    eos = set(options.eos_token_ids)
    for step, path in _steps(src):
        ids, reasons, texts, student, teacher = [], [], [], [], []
        for episode in read_jsonl(path, skipped):
            for trace in episode.get("traces") or []:
                if not isinstance(trace, dict) or not (trace.get("agent") or {}).get("trainable", True):
                    continue
                tokens, logp, ref, text = trace_rollout(trace)
                ids.append(tokens)
                truncated = (not (len(tokens) and int(tokens[-1]) in eos)) if eos else is_truncated(trace)
                reasons.append("length" if truncated else "eos")
                texts.append(text)
                student.append(np.asarray(logp, dtype=np.float64))
                teacher.append(None if ref is None else np.asarray(ref, dtype=np.float64))
        if ids:
            have_ref = all(t is not None for t in teacher)
            run.step(step).rollouts = Rollouts(ids, reasons, texts, student_logp=student,
                                               teacher_logp=teacher if have_ref else None)
            run.files.append(str(path))
    if (warning := skipped_warning("trace lines", skipped)) is not None:
        run.warnings.append(warning)
    return run


IMPORTER = Importer("prime-rl", FRAMEWORK, read,
                    src="output_dir/ (metrics.jsonl, rollouts/step_N/train/*/traces.jsonl)",
                    records="step metrics; tokens, log-probs, reference (teacher) log-probs, finish")

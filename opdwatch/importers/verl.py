"""verl: its ``file`` logger's metrics JSONL, and the ``trainer.rollout_data_dir`` generation dumps.

- ``verl/utils/tracking.py`` ``FileLogger.log``: ``{"step": step, "data": {...}}`` per line, into
  ``$VERL_FILE_LOGGER_ROOT/{project}/{experiment}.jsonl`` (or ``$VERL_FILE_LOGGER_PATH``).
- ``verl/trainer/ppo/ray_trainer.py`` ``_dump_generations``: ``{dir}/{global_steps}.jsonl``, one line per
  rollout with ``input``, ``output``, ``gts``, ``score``, ``step`` (+ reward extras): texts, no tokens, no
  log-probs, no finish reason. They give our text repetition rule, never truncation.
- ``verl/trainer/ppo/metric_utils.py`` ``compute_data_metrics``: ``response_length/clip_ratio`` is the share of
  responses whose length equals ``batch["responses"].shape[-1]``, the batch's padded width, not the budget;
  with ``--max-response-length`` the import checks the two against each other.
"""

from __future__ import annotations

from pathlib import Path

from opdwatch.errors import OpdwatchError
from opdwatch.importers.jsonl import as_int, read_jsonl, skipped_warning
from opdwatch.importers.model import Framework, ImportedRun, ImportOptions, MetricRule
from opdwatch.importers.registry import Importer
from opdwatch.importers.sources import metrics_jsonl
from opdwatch.metric_defs import MAX_LENGTH, MEAN_LENGTH, TRUNCATION_RATE

_METRICS = "verl/trainer/ppo/metric_utils.py"
CLIP_NOTE = ("verl counts responses whose length equals the batch's padded width (responses.shape[-1]), not the "
             "budget, and misses responses cut by max_model_len below it")

FRAMEWORK = Framework(
    "verl",
    rules=(
        MetricRule(r"response_length/clip_ratio", TRUNCATION_RATE, _METRICS, note=CLIP_NOTE),
        MetricRule(r"response_length/mean", MEAN_LENGTH, _METRICS),
        MetricRule(r"response_length/max", MAX_LENGTH, _METRICS),
    ),
    signature=(r"response_length/(mean|max|min|clip_ratio)", r"response_length_non_aborted/.+",
               r"response/aborted_ratio", r"critic/(score|rewards|advantages|returns)/(mean|max|min)",
               r"actor/(pg_clipfrac|ppo_kl|pg_clipfrac_lower|entropy|pg_loss|grad_norm)", r"timing_s/.+",
               r"prompt_length/(mean|max|min|clip_ratio)"),
)


def _unwrap(row: dict) -> dict:
    return row.get("data") if isinstance(row.get("data"), dict) else {}


def read(src: Path, options: ImportOptions) -> ImportedRun:
    if src.is_dir():
        files = sorted(src.glob("*.jsonl"))
        if len(files) != 1:
            raise OpdwatchError(f"{src}: expected one file-logger {'{experiment}'}.jsonl, found {len(files)}; name it")
        src = files[0]
    run = ImportedRun(FRAMEWORK, src)
    metrics_jsonl(src, run, unwrap=_unwrap)
    if options.rollouts is not None:
        _generations(options.rollouts, run)
    if options.max_response_length is not None:
        run.findings.extend(clip_ratio_checks(run, options.max_response_length))
    return run


def _generations(folder: Path, run: ImportedRun) -> None:
    if not folder.is_dir():
        raise OpdwatchError(f"{folder}: not a directory (verl's trainer.rollout_data_dir)")
    skipped: list[str] = []
    for path in sorted(folder.glob("*.jsonl"), key=lambda p: (len(p.stem), p.stem)):
        step = as_int(path.stem)
        if step is None:
            continue
        texts = [str(row.get("output", "")) for row in read_jsonl(path, skipped)]
        if texts:
            run.step(step).texts = texts
            run.files.append(str(path))
    if (warning := skipped_warning("generation lines", skipped)) is not None:
        run.warnings.append(warning)


def clip_ratio_checks(run: ImportedRun, budget: int) -> list[str]:
    """Steps whose clip ratio cannot be a truncation rate under a ``budget``-token limit."""
    padded, missed = [], []
    for (step, _), sd in sorted(run.steps.items()):
        clip, longest = sd.metrics.get("response_length/clip_ratio"), sd.metrics.get("response_length/max")
        if clip is None or longest is None:
            continue
        if clip > 0 and longest < budget:
            padded.append(step)      # counted at the padded width: no response reached the budget
        if clip == 0 and longest >= budget:
            missed.append(step)      # a response reached the budget, none counted
    out = []
    if padded:
        out.append(f"response_length/clip_ratio > 0 at {len(padded)} steps (first {padded[0]}) where no response "
                   f"reached the {budget}-token budget (response_length/max below it): verl counted responses at "
                   "the batch's padded width, not truncated ones")
    if missed:
        out.append(f"response_length/clip_ratio = 0 at {len(missed)} steps (first {missed[0]}) where "
                   f"response_length/max reached the {budget}-token budget: truncated responses were not counted")
    return out


IMPORTER = Importer("verl", FRAMEWORK, read, src="the file logger's {experiment}.jsonl (+ --rollouts DIR)",
                    records="step metrics; response texts from rollout_data_dir")

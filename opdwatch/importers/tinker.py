"""tinker-cookbook: ``{log_path}/metrics.jsonl`` (step metrics only).

Written by ``tinker_cookbook/utils/ml_log.py`` (``JsonLogger.log_metrics`` ->
``stores/training_store.py::write_metrics``: ``{"step": step, **metrics}`` per line). The on-policy
distillation metrics come from ``distillation/train_on_policy.py`` and ``rl/metric_util.py``. The files
hold no per-rollout records and no truncation figure, so an import gives length and advantage only.
"""

from __future__ import annotations

from pathlib import Path

from opdwatch.errors import OpdwatchError
from opdwatch.importers.model import Framework, ImportedRun, ImportOptions, MetricRule
from opdwatch.importers.registry import Importer
from opdwatch.importers.sources import metrics_jsonl
from opdwatch.metric_defs import ADVANTAGE_MEAN, MEAN_LENGTH

_OPD = "tinker_cookbook/distillation/train_on_policy.py"
_RL = "tinker_cookbook/rl/metric_util.py"

FRAMEWORK = Framework(
    "tinker",
    rules=(
        # incorporate_kl_penalty: teacher_kl = sum((sampled_logp - teacher_logp) * mask) / sum(mask), the
        # masked mean of student - teacher; our advantage is teacher - student, so the sign flips
        MetricRule(r"teacher_kl", ADVANTAGE_MEAN, _OPD, transform=lambda v: -v,
                   note="-teacher_kl: the masked mean of teacher - sampled log-prob"),
        # _compute_trajectory_metrics: action tokens / turns; one turn per episode in single-turn OPD
        MetricRule(r"env/all/ac_tokens_per_turn", MEAN_LENGTH, _RL,
                   note="tokens per turn: equals the response length for single-turn episodes"),
    ),
    signature=(r"teacher_kl(/dataset_\d+)?", r"env/all/ac_tokens_per_turn", r"env/all/ob_tokens_per_turn",
               r"env/all/turns_per_episode", r"by_group/frac_(mixed|all_good|all_bad)"),
)


def read(src: Path, options: ImportOptions) -> ImportedRun:
    path = src / "metrics.jsonl" if src.is_dir() else src
    if not path.is_file():
        raise OpdwatchError(f"{src}: no metrics.jsonl (give tinker-cookbook's log_path or the file)")
    run = ImportedRun(FRAMEWORK, src)
    metrics_jsonl(path, run)
    return run


IMPORTER = Importer("tinker", FRAMEWORK, read, src="log_path/ or log_path/metrics.jsonl",
                    records="step metrics (no truncation figure)")

"""Record a slime run live: a rollout-log function for slime's ``--custom-rollout-log-function-path``.

    OPDWATCH_RUN_DIR=runs/slime-opd python train.py ... \\
        --custom-rollout-log-function-path opdwatch.importers.slime_hook.log_rollout

slime calls it after every rollout (``slime/observability/rollout_metrics.py`` ``log_rollout_data``) with
``(rollout_id, args, samples, rollout_extra_metrics, rollout_time)``. It records the samples through the
Recorder with the same mapping as the dump import (:func:`opdwatch.importers.slime.rollouts_from_samples`) and
returns False, so slime goes on logging its own metrics. ``OPDWATCH_EOS_TOKEN_IDS=2,7`` recomputes each
rollout's finish from its tokens. A restarted job resumes the run directory before the rollout it restarts at.
"""

from __future__ import annotations

import atexit
import os
from pathlib import Path
from typing import Any

from opdwatch.errors import OpdwatchError
from opdwatch.format import MANIFEST
from opdwatch.importers.metric_map import numeric_items
from opdwatch.importers.slime import FRAMEWORK, rollouts_from_samples
from opdwatch.recorder import Recorder

_RECORDERS: dict[str, Recorder] = {}  # run dir -> its open recorder (one per process; slime logs on one)


def _recorder(run_dir: str, rollout_id: int) -> Recorder:
    rec = _RECORDERS.get(run_dir)
    if rec is None:
        resume = rollout_id - 1 if (Path(run_dir) / MANIFEST).exists() else None
        rec = Recorder.create(run_dir, config={"imported_from": {"format": "slime", "live": True}},
                              tokenizer_info={"eos_token_ids": list(_eos_ids())}, resume_from_step=resume)
        _RECORDERS[run_dir] = rec
        atexit.register(rec.close)
    return rec


def _eos_ids() -> tuple[int, ...]:
    text = os.environ.get("OPDWATCH_EOS_TOKEN_IDS", "")
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise OpdwatchError(f"OPDWATCH_EOS_TOKEN_IDS={text!r}: expected comma-separated token ids") from None


def _as_dict(sample: Any) -> dict[str, Any]:
    if isinstance(sample, dict):
        return sample
    return sample.to_dict() if hasattr(sample, "to_dict") else dict(vars(sample))


def log_rollout(rollout_id: int, args: Any, samples: list[Any], rollout_extra_metrics: dict | None = None,
                rollout_time: float | None = None, *, run_dir: str | None = None) -> bool:
    """slime's custom rollout-log function: record this rollout's samples. Returns False (slime logs too)."""
    run_dir = run_dir or getattr(args, "opdwatch_run_dir", None) or os.environ.get("OPDWATCH_RUN_DIR")
    if not run_dir:
        raise OpdwatchError("slime hook: set OPDWATCH_RUN_DIR (or args.opdwatch_run_dir) to the run directory")
    flat = _flatten(samples)
    rollouts, _ = rollouts_from_samples([_as_dict(s) for s in flat], _eos_ids())
    extra = {f"{FRAMEWORK.name}/{k}": v for k, v in numeric_items(rollout_extra_metrics or {}).items()}
    if rollout_time is not None:
        extra["time/rollout"] = float(rollout_time)
    _recorder(str(run_dir), int(rollout_id)).record_step(
        int(rollout_id), token_ids=rollouts.token_ids, finish_reasons=rollouts.finish_reasons, texts=rollouts.texts,
        student_logp=rollouts.student_logp, teacher_logp=rollouts.teacher_logp, loss_mask=rollouts.loss_mask,
        prompt_texts=rollouts.prompt_texts, metrics=extra)
    return False


def _flatten(samples: Any) -> list[Any]:
    """slime hands a flat list; grouped rollouts (list per prompt) are flattened too."""
    out: list[Any] = []
    for s in samples:
        out.extend(_flatten(s) if isinstance(s, list) else [s])
    return out


def close(run_dir: str | None = None) -> None:
    """Close the recorder(s) now (normally done at exit)."""
    for key in [run_dir] if run_dir else list(_RECORDERS):
        rec = _RECORDERS.pop(str(key), None)
        if rec is not None:
            rec.close()

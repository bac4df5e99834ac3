"""The one writer every import goes through: framework steps -> a run directory, via the Recorder.

Per (step, phase): with token records, the Recorder derives every health field itself (truncation from the
rollouts' finish, zlib repetition, advantage = teacher - student) and the framework's own figures are kept
beside ours and compared; with texts only, the repetition figures come from our text rules
(:mod:`opdwatch.metrics`); with metrics only, the framework's figures stand in for ours through the mapping
table. Every framework metric is also stored under ``<framework>/<its name>``.

The run is written to a hidden temp directory next to RUN_DIR and renamed into place at the end, so a failed
import leaves no half run (the temp name carries our pid: the next writer sweeps a killed import's leftovers).
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from opdwatch import metrics as m
from opdwatch.detector.signals import SIGNALS
from opdwatch.errors import OpdwatchError
from opdwatch.importers.metric_map import mapped, stored
from opdwatch.importers.model import ImportedRun, ImportOptions, StepData
from opdwatch.metric_defs import ADVANTAGE_MEAN, REPETITION_RATE, ROLLOUT_COUNT, TRUNCATION_RATE, ZLIB_TAIL_RATIO_MEAN
from opdwatch.recorder import Recorder, RecorderSettings

# Figures we recompute from records and compare with the framework's: key -> tolerance(n rollouts, theirs).
# Rates differ by at least one rollout in n when they really differ; means are float32 sums.
_COMPARED: dict[str, Callable[[int, float], float]] = {
    TRUNCATION_RATE: lambda n, _: 0.5 / n if n else 1e-6,  # n = 0: two logged figures, no rollouts behind them
    REPETITION_RATE: lambda n, _: 0.5 / n if n else 1e-6,
    ADVANTAGE_MEAN: lambda n, theirs: 1e-3 * max(1.0, abs(theirs)),
}
Progress = Callable[[int, int], None]


@dataclass
class Disagreement:
    metric: str                  # our key
    framework_key: str           # the framework's name for it
    steps: list[int] = field(default_factory=list)
    ours: list[float] = field(default_factory=list)
    theirs: list[float] = field(default_factory=list)
    compared: int = 0            # steps where both figures exist
    note: str = ""
    against: str = "ours"        # what `ours` is: our recomputation, or (no records) the framework's first figure

    def line(self, framework: str) -> str:
        return (f"{self.metric}: {self.against} {self.ours[0]:.4g} vs {framework}'s {self.framework_key} "
                f"{self.theirs[0]:.4g} at step {self.steps[0]}; they disagree at {len(self.steps)} of "
                f"{self.compared} steps"
                + (f" ({self.note})" if self.note else ""))


@dataclass
class ImportReport:
    format: str
    framework: str
    source: str
    run_dir: str
    steps: int = 0
    rollouts: int = 0
    tokens: int = 0
    matched: str | None = None
    recomputed: list[str] = field(default_factory=list)           # our keys computed from records
    from_framework: dict[str, str] = field(default_factory=dict)  # our key -> the framework name it came from
    disagreements: list[Disagreement] = field(default_factory=list)
    signals: list[str] = field(default_factory=list)              # detector signals the run can feed
    warnings: list[str] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "format": self.format, "framework": self.framework, "source": self.source, "run_dir": self.run_dir,
            "steps": self.steps, "rollouts": self.rollouts, "tokens": self.tokens, "matched": self.matched,
            "recomputed": self.recomputed, "from_framework": self.from_framework,
            "disagreements": [{"metric": d.metric, "framework_key": d.framework_key, "steps": d.steps,
                               "ours": d.ours, "theirs": d.theirs, "compared": d.compared, "note": d.note,
                               "against": d.against}
                              for d in self.disagreements],
            "signals": self.signals, "warnings": self.warnings, "findings": self.findings, "files": self.files,
        }


def write_run(run: ImportedRun, run_dir: str | os.PathLike[str], options: ImportOptions, fmt: str,
              progress: Progress | None = None) -> ImportReport:
    """Write ``run`` as a new run directory ``run_dir`` (missing or empty) and report what was imported."""
    if not run.steps:
        raise OpdwatchError(f"{run.source}: no step metrics or rollouts found for format {fmt!r}")
    target = Path(run_dir)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise OpdwatchError(f"{target}: already exists and is not an empty directory (choose a new RUN_DIR)")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.import.tmp-{os.getpid()}-", dir=target.parent))
    try:
        report = _write(run, tmp, target, options, fmt, progress)
        if target.exists():
            target.rmdir()
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report


def _write(run: ImportedRun, tmp: Path, target: Path, options: ImportOptions, fmt: str,
           progress: Progress | None) -> ImportReport:
    fw = run.framework
    settings = RecorderSettings(tail_window=options.tail_window, tail_threshold=options.tail_threshold)
    config = {"imported_from": {"format": fmt, "framework": fw.name, "source": str(run.source),
                                "matched": run.matched}, "framework_config": run.config}
    rec = Recorder.create(tmp, config=config, settings=settings, run_id=f"{target.name}-{uuid.uuid4().hex[:8]}",
                          tokenizer_info={"eos_token_ids": [int(t) for t in options.eos_token_ids]},
                          live=False)  # written to a temp dir, renamed into place when complete
    report = ImportReport(fmt, fw.name, str(run.source), str(target), matched=run.matched,
                          warnings=list(run.warnings), findings=list(run.findings), files=list(run.files))
    finite: set[str] = set()
    recomputed: set[str] = set()
    disagreements: dict[tuple[str, str], Disagreement] = {}
    keys = sorted(run.steps)
    written = 0
    for done, key in enumerate(keys, start=1):
        sd = run.steps[key]
        ours, n = _ours(rec, sd, settings, stored(fw, sd.metrics))
        recomputed.update(k for k, v in ours.items()
                          if math.isfinite(v) and not k.startswith(("time/", f"{fw.name}/")))
        figures = mapped(fw, sd.metrics)
        rest = {k: entries[0][0] for k, entries in figures.items() if k not in ours}
        for k, entries in figures.items():
            reference, against = (ours.get(k), "ours") if k in ours else (entries[0][0], entries[0][1])
            if k not in ours:
                report.from_framework.setdefault(k, entries[0][1])
                entries = entries[1:]  # without records: the framework's other figures against its first one
            if k not in _COMPARED or reference is None or not math.isfinite(reference):
                continue
            for theirs, name, rule in entries:
                d = disagreements.setdefault((k, name), Disagreement(k, name, note=rule.note, against=against))
                d.compared += 1
                if abs(reference - theirs) > _COMPARED[k](n, theirs):
                    d.steps.append(sd.step)
                    d.ours.append(float(reference))
                    d.theirs.append(float(theirs))
        row = {**rest, **({} if sd.rollouts else {**ours, **stored(fw, sd.metrics)})}
        if row:
            rec.log_metrics(sd.step, sd.phase, row)
        written += bool(row) or bool(sd.rollouts)
        finite.update(k for k, v in {**ours, **rest}.items() if math.isfinite(v))
        report.steps += sd.phase == "train"
        report.rollouts += n if sd.rollouts else 0
        report.tokens += sum(len(t) for t in sd.rollouts.token_ids) if sd.rollouts else 0
        if progress is not None:
            progress(done, len(keys))
    if not written:
        raise OpdwatchError(f"{run.source}: no numeric step metrics or rollouts in the {fmt} files")
    report.disagreements = [d for d in disagreements.values() if d.steps]
    for d in report.disagreements:
        rec.event("warning", step=d.steps[0], message=f"import: {d.line(fw.name)}", metric=d.metric,
                  framework_key=d.framework_key, steps=d.steps[:100], ours=d.ours[:100], theirs=d.theirs[:100])
    for finding in report.findings:
        rec.event("info", message=f"import: {finding}")
    rec.close()
    report.recomputed = sorted(recomputed)
    report.signals = [name for name, spec in SIGNALS.items() if all(k in finite for k in spec.keys)]
    return report


def _ours(rec: Recorder, sd: StepData, settings: RecorderSettings,
          framework_metrics: dict[str, float]) -> tuple[dict[str, float], int]:
    """Our figures for one step (from token records or texts) and the number of rollouts behind them."""
    r = sd.rollouts
    if r is not None and len(r):
        result = rec.record_step(sd.step, phase=sd.phase, token_ids=r.token_ids, finish_reasons=r.finish_reasons,
                                 texts=r.texts, student_logp=r.student_logp, teacher_logp=r.teacher_logp,
                                 loss_mask=r.loss_mask, prompt_texts=r.prompt_texts, metrics=framework_metrics)
        return {k: v for k, v in result.items() if k not in framework_metrics}, len(r)
    if sd.texts:
        return text_metrics(sd.texts, settings), len(sd.texts)
    return {}, 0


def text_metrics(texts: list[str], settings: RecorderSettings) -> dict[str, float]:
    """The rollout figures a response text alone gives: the zlib tail rule (paper Sec. 3.2)."""
    ratios = [m.zlib_tail_ratio(t, settings.tail_window) for t in texts]
    return {ROLLOUT_COUNT: float(len(texts)),
            REPETITION_RATE: m.repetition_rate(texts, settings.tail_window, settings.tail_threshold),
            ZLIB_TAIL_RATIO_MEAN: float(np.mean(ratios))}

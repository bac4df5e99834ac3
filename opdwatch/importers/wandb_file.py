"""wandb: a local run's ``run-<id>.wandb`` file (or its run folder, or a ``wandb/`` folder), read offline.

The history carries the metric names of whichever framework logged them; they are recognised against every
format's signature (:func:`opdwatch.importers.metric_map.recognise`) and mapped with that framework's table.
Which one matched, and on which names, is part of the report.
"""

from __future__ import annotations

from pathlib import Path

from opdwatch.errors import OpdwatchError
from opdwatch.importers import registry, wandb_records
from opdwatch.importers.jsonl import as_int
from opdwatch.importers.metric_map import numeric_items, recognise
from opdwatch.importers.model import Framework, ImportedRun, ImportOptions

# wandb's own bookkeeping in every history row, not metrics
_BOOKKEEPING = ("_step", "_runtime", "_timestamp")
# A run whose names match no framework: kept under "wandb/" with no mapping (step metrics only)
GENERIC = Framework("wandb", rules=(), signature=())


def find_run_file(src: Path) -> Path:
    """The ``.wandb`` file of SRC: the file itself, the one in a run folder, or the latest run of a wandb dir."""
    if src.is_file():
        return src
    for folder in (src, src / "latest-run", src / "wandb" / "latest-run", src / "wandb"):
        files = sorted(folder.glob("run-*.wandb")) if folder.is_dir() else []
        if len(files) == 1:
            return files[0]
        if len(files) > 1:
            raise OpdwatchError(f"{folder}: holds {len(files)} .wandb files; name one of them")
    runs = sorted(p for p in src.glob("*run-*") if p.is_dir() and list(p.glob("run-*.wandb")))
    if len(runs) == 1:
        return find_run_file(runs[0])
    if runs:
        raise OpdwatchError(f"{src}: holds {len(runs)} wandb runs ({runs[0].name}, ...); name one of them")
    raise OpdwatchError(f"{src}: no run-*.wandb file here (give the file, its run folder or the wandb/ folder)")


def history_steps(wrun: wandb_records.WandbRun, fw: Framework) -> tuple[dict[int, dict[str, float]], int]:
    """step -> numeric metrics, the step taken from the framework's own step key where the row has one (slime
    logs rollout and train metrics in separate rows, each with its own step key; `_step` counts the rows), and
    how many rows were left out because they count steps on another clock."""
    steps: dict[int, dict[str, float]] = {}
    other = 0
    clocks = (*fw.wandb_step_keys, *fw.other_clocks)
    for row in wrun.rows:
        step = next((s for k in fw.wandb_step_keys if (s := as_int(row.get(k))) is not None), None)
        if step is None and any(k in row for k in fw.other_clocks):
            other += 1
            continue
        step = as_int(row.get("_step")) if step is None else step
        if step is None:
            continue
        values = numeric_items({k: v for k, v in row.items() if k not in _BOOKKEEPING and k not in clocks})
        steps.setdefault(step, {}).update(values)
    return steps, other


def add_history(run: ImportedRun, wrun: wandb_records.WandbRun) -> None:
    """Merge a wandb run's history into ``run`` (keyed by ``run.framework``'s step), saying what was left out."""
    if (warning := problem_warning(wrun)) is not None:
        run.warnings.append(warning)
    steps, other = history_steps(wrun, run.framework)
    for step, metrics in sorted(steps.items()):
        run.step(step).metrics.update(metrics)
    if other:
        clocks = ", ".join(run.framework.other_clocks)
        run.findings.append(f"{other} wandb rows counted on {run.framework.name}'s {clocks} (another step counter) "
                            "were left out")
    run.files.append(str(wrun.path))


def read_history(path: Path, options: ImportOptions) -> wandb_records.WandbRun:
    return wandb_records.read(find_run_file(path), any_version=options.any_wandb_version)


def problem_warning(wrun: wandb_records.WandbRun) -> str | None:
    if wrun.problem is None:
        return None
    return f"{wrun.path.name}: {wrun.problem}; read the {wrun.records} whole records before it"


def read(src: Path, options: ImportOptions) -> ImportedRun:
    wrun = read_history(src, options)
    names = {k for row in wrun.rows for k in numeric_items(row)}
    if options.framework is not None:
        fw, matched = registry.framework(options.framework), f"{options.framework} (given with --framework)"
    else:
        found, matched = recognise(names, registry.frameworks())
        fw = found or GENERIC
    run = ImportedRun(fw, src, config=wrun.config, matched=matched)
    add_history(run, wrun)
    if not run.steps:
        raise OpdwatchError(f"{wrun.path}: no history rows with metrics ({wrun.records} records read"
                            + (f"; {wrun.problem}" if wrun.problem else "") + ")")
    return run


IMPORTER = registry.Importer("wandb", None, read, src="a run-*.wandb file, its run folder, or a wandb/ folder",
                             records="step metrics (of the framework that logged them)")

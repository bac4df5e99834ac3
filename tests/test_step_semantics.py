"""One set of semantics for damaged or odd step tables, the same answer from every command.

Each case is a run recorded with the real Recorder (tests/synthetic_runs.py), then damaged: a step written
twice, steps written out of order, a row in another step's folder, a gap, a NaN truncation rate at the
collapse step (with and without the step's rollouts), an all-NaN truncation column. Every case goes
through ``opdwatch info``, ``analyze`` and ``detect`` (text and ``--json``, in-process) and through the
dashboard's data path (its registry's LiveRun, the run list row and the run page's meta line): the train
steps, last step, missing steps, collapse step, steps with an unknown truncation rate and the onset are the
same everywhere, every command exits 0, and the step table's warning is one line, printed once per command
(even with Python's warnings filter at "always", so no registry dedupe hides a second emission), with the
same text in the dashboard. The semantics themselves: opdwatch/step_table.py, docs/run-format.md.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from opdwatch.cli import main
from opdwatch.live import LiveRun
from opdwatch.reader import open_run
from opdwatch.recorder import Recorder
from opdwatch.run_files import StepTableWarning
from opdwatch.series import step_series
from opdwatch.step_table import facts_of, read_rows, resolve
from tests.synthetic_runs import EOS_ID, SETTINGS, _batch, make_run

STEPS, COLLAPSE = 24, 12
FACT_KEYS = ("steps", "first_step", "last_step", "missing_steps", "truncation_unknown", "collapse_step")


# ------------------------------------------------------------------------------------------------ building
def _record(path: Path, order: list[int], *, collapse_at: int = COLLAPSE, seed: int = 0) -> Path:
    """A run recorded in exactly this step order (8 rollouts a step; 85% loop from ``collapse_at`` on)."""
    rng = np.random.default_rng(seed)
    rec = Recorder.create(path, tokenizer_info={"eos_token_ids": [EOS_ID], "special_token_ids": [EOS_ID]},
                          settings=SETTINGS, run_id=path.name)
    for step in order:
        batch = _batch(rng, 8, 48, 0.85 if step >= collapse_at else 0.0, 0.04)
        rec.record_step(step, phase="train", **batch, metrics={"loss/total": float(rng.normal(0.5, 0.05))})
    rec.close("finished")
    return path


def _run(path: Path) -> Path:
    return make_run(path, steps=STEPS, collapse_at=COLLAPSE, rollouts=8, budget=48, val_every=6, seed=3)


def _file(run: Path, table: str, step: int, name: str = "train") -> Path:
    return run / table / f"step={step:06d}" / "rank=00000" / f"{name}.parquet"


def _set(path: Path, column: str, value: float) -> None:
    table = pq.read_table(path)
    i = table.schema.get_field_index(column)
    values = pa.array([value] * table.num_rows, pa.float64())
    pq.write_table(table.append_column(column, values) if i < 0 else table.set_column(i, column, values), path)


def _duplicate(d: Path) -> Path:
    run = _run(d / "run")
    copy = _file(run, "steps", COLLAPSE, "train-1")
    shutil.copy(_file(run, "steps", COLLAPSE), copy)
    _set(copy, "loss/total", 99.0)  # the rewrite: newer, and it says so
    return run


def _misplaced(d: Path) -> Path:
    run = _run(d / "run")
    shutil.copy(_file(run, "steps", 20), _file(run, "steps", 5))  # step 5's folder now holds step 20's row
    return run


def _nan_at_collapse(d: Path) -> Path:
    run = _run(d / "run")
    _set(_file(run, "steps", COLLAPSE), "rollout/truncation_rate", math.nan)
    shutil.rmtree(run / "rollouts" / f"step={COLLAPSE:06d}")  # nothing can recompute it: unknown
    return run


def _nan_with_rollouts(d: Path) -> Path:
    run = _run(d / "run")
    _set(_file(run, "steps", COLLAPSE), "rollout/truncation_rate", math.nan)  # the rollouts still have it
    return run


def _all_nan(d: Path) -> Path:
    run = _run(d / "run")
    for path in (run / "steps").rglob("*.parquet"):
        _set(path, "rollout/truncation_rate", math.nan)
    shutil.rmtree(run / "rollouts")
    return run


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[Path], Path]
    facts: dict[str, Any]              # the step facts every command must report
    warning: str | None = None         # a substring of the one warning line (None: no warning at all)
    verdict: str | None = None         # the verdict label analyze and the dashboard must give, when fixed


def _facts(steps: int = STEPS, first: int = 1, last: int = STEPS, missing: int = 0, unknown: int = 0,
           collapse: int | None = COLLAPSE) -> dict[str, Any]:
    return dict(zip(FACT_KEYS, (steps, first, last, missing, unknown, collapse), strict=True))


OUT_OF_ORDER = [*range(1, 10), 14, 10, 11, 12, 13, *range(15, STEPS + 1)]  # 10 and 11 written after 14
CASES = [
    Case("duplicate step", _duplicate, _facts(),
         f"step {COLLAPSE} (train) is recorded twice: read from steps/step={COLLAPSE:06d}/rank=00000/train-1.parquet "
         "(the newest file)"),
    Case("steps out of order", lambda d: _record(d / "run", OUT_OF_ORDER), _facts(),
         "2 train steps were written after later ones (steps 10, 11, step 10 after step 14"),
    Case("row in another step's folder", _misplaced, _facts(steps=STEPS - 1, missing=1),
         "steps/step=000005/rank=00000/train.parquet holds a row of step 20, not of step 5"),
    Case("gap in steps", lambda d: _record(d / "run", [*range(1, 4), *range(7, STEPS + 1)]),  # 4-6 missing
         _facts(steps=STEPS - 3, missing=3)),
    Case("NaN truncation at the collapse step", _nan_at_collapse, _facts(unknown=1, collapse=COLLAPSE + 1),
         f"truncation rate unknown (NaN or missing) at 1 train step ({COLLAPSE}): left out of the collapse step"),
    Case("NaN truncation, rollouts recorded", _nan_with_rollouts, _facts()),
    Case("all-NaN truncation column", _all_nan, _facts(unknown=STEPS, collapse=None),
         f"no truncation data: the truncation rate is unknown (NaN or missing) at all {STEPS} train steps",
         verdict="no truncation data"),
]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("step-semantics")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for case in CASES:
            (base / _name(case)).mkdir()
            case.build(base / _name(case))
    return base


def _name(case: Case) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in case.id)


# ------------------------------------------------------------------------------------------------ running
@dataclass
class Result:
    code: int
    out: str
    warnings: list[str]   # the stderr lines "opdwatch: warning: ..."
    other: list[str]      # any other stderr line


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> Result:
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # every emission reaches stderr: the reader itself must warn once
        code = main(argv)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    warned = [line for line in lines if line.startswith("opdwatch: warning: ")]
    return Result(code, out, warned, [line for line in lines if line not in warned and not line.startswith("report: ")])


@pytest.fixture
def wide(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "1000")  # no wrapping inside a temp path
    monkeypatch.delenv("FORCE_COLOR", raising=False)


COMMANDS = {"info --json": ["info", "--json"], "analyze --json": ["analyze", "--no-report", "--json"],
            "detect --json": ["detect", "--json"], "info": ["info"], "analyze": ["analyze", "--no-report"],
            "detect": ["detect"]}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_every_command_gives_the_same_answer(case: Case, root: Path, wide: None,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    path = root / _name(case) / "run"
    results = {name: _cli([argv[0], str(path), *argv[1:]], capsys) for name, argv in COMMANDS.items()}
    first = results["info --json"].warnings
    for name, r in results.items():
        assert r.code == 0 and not r.other, (name, r.other)
        assert "Traceback" not in r.out
        if case.warning is None:
            assert r.warnings == [], (name, r.warnings)
        else:  # one line, once per command, the same text from every command
            assert len(r.warnings) == 1 and r.warnings == first, (name, r.warnings)
            assert r.warnings[0].startswith(f"opdwatch: warning: {path}: ") and case.warning in r.warnings[0]

    info = json.loads(results["info --json"].out)
    (analyze,) = json.loads(results["analyze --json"].out)["runs"]
    detect = json.loads(results["detect --json"].out)
    for name, data in (("info", info), ("analyze", analyze), ("detect", detect)):
        assert {k: data[k] for k in FACT_KEYS} == case.facts, name
    assert analyze["collapse_step"] == detect["collapse_step"] == info["collapse_step"]
    if case.verdict is not None:
        assert analyze["verdict"] == case.verdict and analyze["verdict_kind"] == "unknown" and analyze["episodes"] == []
        assert analyze["reasons"][0].startswith("no truncation data")
        # the onset falls back to mean response length, which the run still has
        assert analyze["onset_step"] is None or analyze["onset"]["series"] == "rollout/mean_length"
        assert detect["note"].startswith("no truncation data")
    else:  # a real collapse, found over the known steps
        assert analyze["onset_step"] is not None and analyze["onset_step"] <= COLLAPSE + 1

    f = case.facts
    missing = f", {f['missing_steps']} missing" if f["missing_steps"] else ""
    collapse = (f"collapse at step {f['collapse_step']}" if f["collapse_step"] is not None
                else "collapse unknown (no truncation data)")
    assert f"{f['steps']} train steps (steps 1-{STEPS}{missing}), last step {STEPS}, {collapse}" in results["info"].out
    assert f"{f['steps']} (steps 1-{STEPS}{missing})" in results["analyze"].out
    assert f"replayed {f['steps']} train steps" in results["detect"].out
    detect_collapse = f"step {f['collapse_step']}" if f["collapse_step"] is not None else "unknown (no truncation data)"
    assert f"collapse (truncation >= 0.5): {detect_collapse}" in results["detect"].out


# ---------------------------------------------------------------------------------------------- dashboard
def _text(component: Any) -> str:  # noqa: ANN401 - a dash component tree, a string or None
    if component is None:
        return ""
    if isinstance(component, (str, int, float)):
        return str(component)
    if isinstance(component, (list, tuple)):
        return " ".join(_text(c) for c in component)
    return _text(getattr(component, "children", None))


@pytest.fixture(scope="module")
def app(root: Path) -> Iterator[Any]:
    pytest.importorskip("dash")
    from opdwatch.dashboards.app import create_app

    yield create_app(root)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_the_dashboard_says_the_same(case: Case, root: Path, app: Any, wide: None,  # noqa: ANN401
                                     capsys: pytest.CaptureFixture[str]) -> None:
    import sys

    from opdwatch.dashboards.state import registry

    path = root / _name(case) / "run"
    (analyze,) = json.loads(_cli(["analyze", str(path), "--no-report", "--json"], capsys).out)["runs"]
    runs, run = sys.modules["pages.runs"], sys.modules["pages.run"]  # Dash runs the page files as pages.<name>
    name = path.relative_to(root).as_posix()
    with warnings.catch_warnings(record=True) as caught, app.server.test_request_context():
        warnings.simplefilter("always")
        watched = registry().get(name)
        for _ in range(3):  # ticks with nothing new: nothing is warned again
            watched = registry().get(name)
        row = runs.run_row(registry(), name)
        meta = _text(run.meta(watched))
        page_verdict = run.run_verdict(watched)
    said = [str(w.message) for w in caught if issubclass(w.category, StepTableWarning)]

    facts = watched.live.step_facts().as_dict()
    assert {k: facts[k] for k in FACT_KEYS} == case.facts
    assert _text(row[2]) == str(analyze["last_step"])  # the run list's step column
    assert page_verdict.onset.step == analyze["onset_step"] and page_verdict.label == analyze["verdict"]
    note = watched.live.step_note()
    if case.warning is None:
        assert note is None and said == [] and "warning:" not in meta and "warning:" not in _text(row[3])
    else:  # the CLI's line, without the server's path, on the run page and in the run list; warned once
        assert case.warning in note
        assert said == [f"{watched.live.path}: {note}"]
        assert f"warning: {note}" in meta and f"warning: {note}" in _text(row[3])
    steps_words = f"{case.facts['steps']} train steps (steps 1-{STEPS}"
    assert steps_words in meta


# ------------------------------------------------------------------------------------------- the semantics
def test_the_newest_file_of_a_duplicated_step_is_read(root: Path) -> None:
    run = root / _name(CASES[0]) / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frame = open_run(run).steps("train").collect()
    assert frame["step"].to_list() == list(range(1, STEPS + 1))  # one row per step
    assert frame.filter(frame["step"] == COLLAPSE)["loss/total"].to_list() == [99.0]  # train-1.parquet: newer
    rows = read_rows(open_run(run).parts("steps"))
    original, copy = _file(run, "steps", COLLAPSE), _file(run, "steps", COLLAPSE, "train-1")
    newer = os.stat(copy).st_mtime_ns + 10**9
    os.utime(original, ns=(newer, newer))  # now train.parquet is the rewrite
    try:
        table = resolve(rows, root=run)
        assert table.frame.filter(table.frame["step"] == COLLAPSE)["loss/total"].to_list() != [99.0]
        assert table.duplicates[0].kept == f"steps/step={COLLAPSE:06d}/rank=00000/train.parquet"
    finally:
        os.utime(copy, ns=(newer + 10**9, newer + 10**9))


def test_resolving_does_not_depend_on_row_order(root: Path) -> None:
    """LiveRun keeps rows by folder and concatenates them in tick order; the table must not care."""
    for case in CASES:
        run = root / _name(case) / "run"
        rows = read_rows(open_run(run).parts("steps"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            a = resolve(rows, root=run)
            b = resolve(rows.reverse(), root=run)
        assert a.frame.equals(b.frame) and a.describe() == b.describe(), case.id


def test_a_nan_metric_with_rollouts_is_the_rollouts_rate(root: Path) -> None:
    run = open_run(root / _name(CASES[5]) / "run")
    table = run.steps("train").collect()
    series = step_series(run)
    at = table.filter(table["step"] == COLLAPSE)["rollout/truncation_rate"].item()
    assert at == series.filter(series["step"] == COLLAPSE)["rollout/truncation_rate"].item() >= 0.5


def test_a_late_rewrite_inside_the_recorders_window_is_not_out_of_order(tmp_path: Path) -> None:
    """The recorder merges late metrics into the two steps before its newest: not a step out of order."""
    run = _record(tmp_path / "run", [1, 2, 3, 5, 4, 6])
    table = resolve(read_rows(open_run(run).parts("steps")), root=run)
    assert table.late == () and table.describe() is None


def test_live_run_equals_a_full_read_of_a_damaged_run(root: Path) -> None:
    """The incremental reader resolves its rows as Run does: the same frame, the same facts."""
    for case in CASES:
        run = root / _name(case) / "run"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            live, full = LiveRun(run), open_run(run)
            assert live.steps().collect().equals(full.steps().collect()), case.id
            assert live.step_facts() == full.step_facts() == facts_of(full.steps().collect()), case.id
            assert live.series().equals(step_series(full)), case.id

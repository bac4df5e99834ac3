"""One corpus of damaged and odd run directories, through every reading command and the dashboard.

Each case is built with the real Recorder (then damaged) and run through ``opdwatch info``, ``analyze``
(``--no-report``, and once writing a report) and ``detect``, each with and without ``--json``, in-process;
a handful also as real processes; and through the dashboard's start-up over a root holding every case next to
a good run. The contract, for every case and command:

- exit 2 with exactly one stderr line (``opdwatch: error: ...``), or
- exit 0 with at most one ``opdwatch: warning: ...`` line per distinct problem of the case, and the right
  output (the steps of *that* run for glob-like paths, run ids and paths printed verbatim, strict JSON);
- for the odd step tables (a step recorded twice, out of order, in another step's folder, a gap, NaN
  truncation): exit 0 from every command, exactly the step table's one warning line (none for a gap), and
  the same step facts (train steps, last step, missing steps, unknown truncation, collapse step) in every
  JSON output (the semantics: opdwatch/step_table.py; tests/test_step_semantics.py checks them in depth);
- never a traceback, never ``internal error`` (exit 1); the dashboard answers 200 and still lists the good run.

``pytest -rA tests/test_malformed_corpus.py`` shows the case x command table (``test_summary``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from opdwatch.cli import main
from opdwatch.recorder import Recorder, RecorderSettings
from tests.synthetic_runs import make_run

STEPS = 5              # train steps of a corpus run (1..5, val at 2 and 4)
SIBLING_STEPS = 3      # train steps of the run a glob pattern would match instead
MARKUP_IDS = ("[/] [red]x", "[link=https://evil.example]x[/link]")
COMMANDS: dict[str, list[str]] = {      # column name -> arguments after RUN_DIR ({report} is filled in)
    "info": ["info"],
    "info --json": ["info", "--json"],
    "analyze": ["analyze", "--no-report"],
    "analyze --json": ["analyze", "--no-report", "--json"],
    "analyze report": ["analyze", "--json", "--out", "{report}"],
    "detect": ["detect"],
    "detect --json": ["detect", "--json"],
}
# case id -> column -> exit code (or a note); filled by the tests, printed by test_summary
TABLE: dict[str, dict[str, object]] = {}
PROBLEMS: list[str] = []  # tracebacks and internal errors seen anywhere in the corpus


# ------------------------------------------------------------------------------------------ damage helpers
def _run(path: Path, steps: int = STEPS) -> Path:
    return make_run(path, steps=steps, collapse_at=3, val_every=2, rollouts=8, budget=48, seed=len(path.name))


def _file(run: Path, table: str, step: int, phase: str = "train") -> Path:
    return run / table / f"step={step:06d}" / "rank=00000" / f"{phase}.parquet"


def _retype(path: Path, column: str) -> None:
    """Rewrite ``column`` of one Parquet file as strings (the wrong type for every column retyped here)."""
    table = pq.read_table(path)
    i = table.schema.get_field_index(column)
    pq.write_table(table.set_column(i, column, pc.cast(table[column], pa.string())), path)


def _set_metric(path: Path, column: str, value: float) -> None:
    table = pq.read_table(path)
    values = pa.array([value] * table.num_rows, pa.float64())
    i = table.schema.get_field_index(column)
    table = table.append_column(column, values) if i < 0 else table.set_column(i, column, values)
    pq.write_table(table, path)


def _edit_manifest(run: Path, **changes: object) -> Path:
    manifest = json.loads((run / "manifest.json").read_text())
    manifest.update(changes)
    (run / "manifest.json").write_text(json.dumps(manifest))
    return run


def _record(path: Path, steps: list[int], *, phase: str = "train") -> Path:
    """A run recorded with the Recorder in exactly this step order (8 rollouts a step, half of them loop)."""
    rng = np.random.default_rng(0)
    rec = Recorder.create(path, settings=RecorderSettings(tail_window=8, tail_threshold=0.5),
                          tokenizer_info={"eos_token_ids": [0]}, run_id=path.name)
    for step in steps:
        ids = [np.resize(np.array([5, 6, 7]), 24) if i % 2 else np.array([3, 4, 5, 0]) for i in range(8)]
        rec.record_step(step, phase=phase, token_ids=ids,
                        finish_reasons=["length" if i % 2 else "eos" for i in range(8)],
                        texts=["abc" * 8 if i % 2 else "abc" for i in range(8)],
                        student_logp=[rng.normal(-1, 0.2, len(x)) for x in ids],
                        teacher_logp=[rng.normal(-1, 0.2, len(x)) for x in ids], metrics={"loss/total": 0.5})
        rec.event("info", step=step, message=f"step {step}")
    rec.close()
    return path


# ---------------------------------------------------------------------------------------------- the cases
@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[Path], Path]      # builds the case in its own directory; returns the RUN_DIR to give
    expect: str = "any"                # "ok": every command exits 0; "error": every command exits 2
    problems: int = 0                  # distinct problems: the most warning lines a command may print
    steps: int | None = None           # the train steps `info --json` must count
    run_id: str | None = None          # the run id every JSON output must name
    shown: str | None = None           # text the human-readable info/analyze outputs must contain verbatim
    shown_path: bool = False           # ... and the RUN_DIR itself
    other_user: bool = False           # permissions: run as an unprivileged user (root reads anything)
    check: Callable[[str, int, str, str], None] | None = None  # (column, code, out, err) extra assertions
    warned: int | None = None          # exactly this many warning lines from every command (None: <= problems)
    facts: dict[str, object] | None = None  # step facts every JSON output (info, analyze, detect) must report


def _glob(name: str, sibling: str) -> Case:
    def build(d: Path) -> Path:
        _run(d / sibling, steps=SIBLING_STEPS)  # what the name matches when read as a pattern
        return _run(d / name)
    return Case(f"glob {name}", build, expect="ok", steps=STEPS, run_id=name)


def _markup_id(markup: str) -> Case:
    return Case(f"markup id {markup}", lambda d: _edit_manifest(_run(d / "run"), run_id=markup), expect="ok",
                steps=STEPS, run_id=markup, shown=markup)


def _markup_path(markup: str) -> Case:
    # a '/' in the markup makes subdirectories: the path still ends in the markup text
    return Case(f"markup path {markup}", lambda d: _run(d / markup), expect="ok", steps=STEPS, shown_path=True)


def _wrong_type(table: str, column: str) -> Case:
    def build(d: Path) -> Path:
        run = _run(d / "run")
        _retype(_file(run, table, 2), column)
        return run
    return Case(f"wrong type {table}.{column}", build, problems=1, steps=STEPS - 1 if table == "steps" else STEPS,
                check=_warns_about(repr(column)))


def _warns_about(text: str) -> Callable[[str, int, str, str], None]:
    def check(column: str, code: int, out: str, err: str) -> None:
        assert all(text in line for line in err.splitlines() if line.startswith("opdwatch: warning: ")), err
    return check


def _step_facts(*, steps: int = STEPS, last: int = STEPS, missing: int = 0, unknown: int = 0,
                collapse: int | None) -> dict[str, object]:
    return {"steps": steps, "first_step": 1, "last_step": last, "missing_steps": missing,
            "truncation_unknown": unknown, "collapse_step": collapse}


def _check_no_truncation_data(column: str, code: int, out: str, err: str) -> None:
    _warns_about("no truncation data")(column, code, out, err)
    if column in ("analyze --json", "analyze report"):
        assert _strict(out)["runs"][0]["verdict"] == "no truncation data", out[:300]
    if column == "detect --json":
        assert _strict(out)["note"].startswith("no truncation data"), out[:300]
    if column == "detect":
        assert "collapse (truncation >= 0.5): unknown (no truncation data)" in out, out[:300]


def _nonfinite(d: Path) -> Path:
    run = _run(d / "run")
    last = _file(run, "steps", STEPS)
    for column, value in (("loss/total", math.inf), ("loss/opd", -math.inf), ("control/beta", math.nan),
                          ("token/teacher_logp_mean", -math.inf)):
        _set_metric(last, column, value)
    tokens = _file(run, "tokens", STEPS)  # a -inf teacher log-prob in the token rows: the series becomes -inf
    table = pq.read_table(tokens)
    teacher = table["teacher_logp"].to_numpy().copy()
    teacher[0] = -np.inf
    i = table.schema.get_field_index("teacher_logp")
    pq.write_table(table.set_column(i, "teacher_logp", pa.array(teacher, pa.float32())), tokens)
    return run


def _check_nonfinite(column: str, code: int, out: str, err: str) -> None:
    if column == "info --json":
        data = _strict(out)
        assert data["last_train"]["loss/total"] is None and data["last_train"]["control/beta"] is None
        assert {"path": ["last_train", "loss/total"], "value": "Infinity"} in data["nonfinite"]
        assert {"path": ["last_train", "loss/opd"], "value": "-Infinity"} in data["nonfinite"]
    # (analyze's series may ignore non-finite token values: that it prints strict JSON is checked for every case)


def _torn_events(d: Path) -> Path:
    run = _run(d / "run")
    with open(run / "events" / "rank=00000.jsonl", "a") as fh:
        fh.write('{"time": 1, "kind": "inf')
    return run


def _odd_events(lines: list[str]) -> Callable[[Path], Path]:
    def build(d: Path) -> Path:
        run = _run(d / "run")
        with open(run / "events" / "rank=00000.jsonl", "a") as fh:
            fh.writelines(line + "\n" for line in lines)
        return run
    return build


def _temp_file(d: Path) -> Path:
    run = _run(d / "run")
    (_file(run, "steps", 3).parent / ".train.parquet.tmp-99999").write_bytes(b"PAR1\x00\x00garbage")
    return run


def _truncated(d: Path) -> Path:
    run = _run(d / "run")
    victim = _file(run, "rollouts", 2)
    victim.write_bytes(victim.read_bytes()[:40])
    return run


def _not_parquet(d: Path) -> Path:
    run = _run(d / "run")
    _file(run, "tokens", 3).write_text("this is not a Parquet file\n")
    return run


def _missing_manifest(d: Path) -> Path:
    run = _run(d / "run")
    (run / "manifest.json").unlink()
    return run


def _garbage_manifest(d: Path) -> Path:
    run = _run(d / "run")
    (run / "manifest.json").write_text("{not json at all")
    return run


def _empty_dir(d: Path) -> Path:
    (d / "run").mkdir()
    return d / "run"


def _a_file(d: Path) -> Path:
    (d / "run").write_text("not a run\n")
    return d / "run"


def _no_steps(d: Path) -> Path:
    Recorder.create(d / "run", run_id="run").close()
    return d / "run"


def _only_val(d: Path) -> Path:
    return _record(d / "run", [2, 4], phase="val")


def _empty_steps_file(d: Path) -> Path:
    run = _run(d / "run")
    path = _file(run, "steps", 3)
    pq.write_table(pq.read_table(path).slice(0, 0), path)
    return run


def _duplicate_step(d: Path) -> Path:
    run = _run(d / "run")
    shutil.copy(_file(run, "steps", 3), _file(run, "steps", 3, "train-1"))  # a second file for (3, train)
    return run


def _step_mismatch(d: Path) -> Path:
    run = _run(d / "run")
    shutil.copy(_file(run, "steps", 5), _file(run, "steps", 3))  # step=000003 holds the row of step 5
    return run


def _nan_truncation(d: Path) -> Path:
    run = _run(d / "run")
    _set_metric(_file(run, "steps", 3), "rollout/truncation_rate", math.nan)
    shutil.rmtree(run / "rollouts" / "step=000003")  # so no table can recompute it
    return run


def _all_nan_truncation(d: Path) -> Path:
    run = _run(d / "run")
    for path in (run / "steps").rglob("*.parquet"):
        _set_metric(path, "rollout/truncation_rate", math.nan)
    shutil.rmtree(run / "rollouts")
    return run


def _unreadable(target: str, mode: int) -> Callable[[Path], Path]:
    def build(d: Path) -> Path:
        run = _run(d / "run")
        (run / target).chmod(mode)
        return run
    return build


CASES: list[Case] = [
    # glob characters in the path, each next to the run the pattern would match
    _glob("run[12]", "run1"), _glob("exp[seed]", "exps"), _glob("a*", "ab"), _glob("q?", "qx"),
    _glob("x{1,2}", "x1"),
    # markup in run ids and paths
    *[_markup_id(m) for m in MARKUP_IDS], *[_markup_path(m) for m in MARKUP_IDS],
    # wrong-typed columns in every table
    _wrong_type("steps", "step"), _wrong_type("steps", "rollout/truncation_rate"),
    _wrong_type("rollouts", "num_tokens"), _wrong_type("tokens", "advantage"),
    # permissions
    Case("unreadable run dir", _unreadable(".", 0o000), expect="error", other_user=True),
    Case("unreadable step partition", _unreadable("steps/step=000002", 0o000), problems=1, steps=STEPS - 1,
         other_user=True, check=_warns_about("permission denied")),
    Case("unreadable events file", _unreadable("events/rank=00000.jsonl", 0o000), problems=1, steps=STEPS,
         other_user=True, check=_warns_about("permission denied")),
    # non-finite metrics
    Case("Infinity/-Infinity/NaN metrics", _nonfinite, expect="ok", steps=STEPS, check=_check_nonfinite),
    # already handled
    Case("torn last events line", _torn_events, problems=1, steps=STEPS, check=_warns_about("torn")),
    # one warning per events file, however many of its lines are skipped
    Case("events line not an object", _odd_events(["[1, 2]", '"alarm"', "3"]), problems=1, steps=STEPS),
    Case("events with wrong-typed fields", _odd_events(['{"time": "soon", "kind": "alarm"}', '{"step": "x"}',
                                                        '{"rank": [0]}', '{"step": 1e400}',
                                                        '{"time": 1, "step": 99999999999999999999}']),
         problems=1, steps=STEPS),
    Case("half-written .tmp file", _temp_file, expect="ok", steps=STEPS),
    Case("truncated Parquet file", _truncated, problems=1, steps=STEPS),
    Case("non-Parquet *.parquet", _not_parquet, problems=1, steps=STEPS),
    Case("missing manifest", _missing_manifest, expect="error"),
    Case("garbage manifest JSON", _garbage_manifest, expect="error"),
    Case("newer format version", lambda d: _edit_manifest(_run(d / "run"), format_version=2), expect="error"),
    Case("empty directory", _empty_dir, expect="error"),
    Case("a file, not a directory", _a_file, expect="error"),
    Case("nonexistent path", lambda d: d / "missing", expect="error"),
    Case("no steps", _no_steps, steps=0),
    Case("only validation steps", _only_val, steps=0),
    Case("empty steps file (0 rows)", _empty_steps_file, steps=STEPS - 1),
    # odd step tables: one answer from every command, one warning line (opdwatch/step_table.py)
    Case("duplicate step", _duplicate_step, expect="ok", problems=1, warned=1, steps=STEPS,
         facts=_step_facts(collapse=3), check=_warns_about("step 3 (train) is recorded twice")),
    # step=000003 holds step 5's row: it is step 5 (a second row of it, losing to step 5's own file); step 3
    # has no metrics row left
    Case("step column disagrees with its partition", _step_mismatch, expect="ok", problems=1, warned=1,
         steps=STEPS - 1, facts=_step_facts(steps=STEPS - 1, missing=1, collapse=4),
         check=_warns_about("holds a row of step 5, not of step 3")),
    # step 2 written after step 5 (more than the recorder's two-step rewrite window)
    Case("steps out of order", lambda d: _record(d / "run", [1, 5, 2, 3, 4]), expect="ok", problems=1, warned=1,
         steps=5, facts=_step_facts(collapse=1), check=_warns_about("step 2 was written after step 5")),
    Case("gap in steps", lambda d: _record(d / "run", [1, 2, 3, 7, 8]), expect="ok", warned=0, steps=5,
         facts=_step_facts(last=8, missing=3, collapse=1)),
    # NaN at the collapse step (3), no rollouts to recompute it: the collapse is the first *known* step >= 0.5
    Case("NaN truncation in a step", _nan_truncation, expect="ok", problems=1, warned=1, steps=STEPS,
         facts=_step_facts(unknown=1, collapse=4), check=_warns_about("truncation rate unknown (NaN or missing) at "
                                                                     "1 train step (3)")),
    Case("all-NaN truncation column", _all_nan_truncation, expect="ok", problems=1, warned=1, steps=STEPS,
         facts=_step_facts(unknown=STEPS, collapse=None), check=_check_no_truncation_data),
]
IDS = [c.id for c in CASES]
assert len(set(IDS)) == len(IDS)


def _dirname(case: Case) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in case.id)


@dataclass
class Corpus:
    root: Path                      # world-traversable: the permission cases run as another user
    paths: dict[str, Path] = field(default_factory=dict)
    good: Path | None = None


@pytest.fixture(scope="module")
def corpus() -> Iterator[Corpus]:
    root = Path(tempfile.mkdtemp(prefix="opdwatch-corpus-"))
    root.chmod(0o755)
    out = Corpus(root)
    out.good = _run(root / "good")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for case in CASES:
            directory = root / _dirname(case)
            directory.mkdir()
            out.paths[case.id] = case.build(directory)
    (root / "reports").mkdir(mode=0o777)
    (root / "reports").chmod(0o777)  # the unprivileged user writes its reports here
    yield out
    for directory, dirs, files in os.walk(root):  # give back what the permission cases took, then clean up
        for name in dirs + files:
            os.chmod(os.path.join(directory, name), 0o755, follow_symlinks=False)
    shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------------------------------- the contract
def _strict(text: str) -> dict:
    def refuse(name: str) -> None:
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def _argv(column: str, path: Path, report: Path) -> list[str]:
    command, *rest = COMMANDS[column]
    return [command, str(path), *(str(report) if a == "{report}" else a for a in rest)]


def _note_problems(where: str, code: int, err: str) -> None:
    if "Traceback (most recent call last)" in err or "internal error" in err or code == 1:
        PROBLEMS.append(f"{where}: exit {code}: {err.strip()[-300:]}")


def _assert_contract(case: Case, column: str, path: Path, code: int, out: str, err: str) -> None:
    where = f"{case.id} / {column}"
    lines = err.strip().splitlines()
    assert "Traceback (most recent call last)" not in err and "internal error" not in err, f"{where}: {err}"
    assert code in (0, 2), f"{where}: exit {code}: {err}"
    if case.expect == "ok":
        assert code == 0, f"{where}: {err}"
    if case.expect == "error":
        assert code == 2, f"{where}: exit 0: {out[:300]}"
    if code == 2:
        assert len(lines) == 1 and lines[0].startswith("opdwatch: error: "), f"{where}: {lines}"
        return
    report = column == "analyze report"
    warning_lines = [line for line in lines if not (report and line.startswith("report: "))]
    assert all(line.startswith("opdwatch: warning: ") for line in warning_lines), f"{where}: {lines}"
    assert len(warning_lines) <= case.problems, f"{where}: {len(warning_lines)} warnings: {lines}"
    if case.warned is not None:
        assert len(warning_lines) == case.warned, f"{where}: {len(warning_lines)} warnings: {lines}"
    if "--json" in column or report:
        data = _strict(out)
        runs = data["runs"] if column.startswith("analyze") else [data]
        if case.run_id is not None:
            assert [r["run_id"] for r in runs] == [case.run_id], where
        if case.steps is not None and column == "info --json":
            assert data["steps"] == case.steps, f"{where}: {data['steps']} steps"
        if case.steps is not None and (column.startswith("analyze") or column == "detect --json"):
            # analyze and detect count the train steps of the step table, as info does
            assert runs[0]["steps"] == case.steps, f"{where}: {runs[0]['steps']} steps"
        if case.facts is not None:
            for facts in runs:  # info --json, detect --json, or analyze's one run
                assert {k: facts[k] for k in case.facts} == case.facts, f"{where}: {facts}"
        if column == "detect --json" and case.steps:
            assert data["first_step"] == 1, where
        if report:
            assert Path(data["report"]).is_file(), where
            Path(data["report"]).unlink()  # 4 MB each (plotly.js is embedded)
    else:
        for shown in (case.shown, str(path) if case.shown_path else None):
            if shown is not None and column != "detect":  # detect names the run by its id only
                assert shown in out, f"{where}: {shown!r} not in {out[:500]!r}"
        if column == "detect" and case.run_id is not None:
            assert case.run_id in out, f"{where}: {out[:300]}"
        if column == "detect" and case.steps is not None:
            assert f"replayed {case.steps} train steps" in out, f"{where}: {out[:300]}"
    if case.check is not None:
        case.check(column, code, out, err)


def _run_in_process(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    # a fresh warnings registry per call, as each CLI call is its own process in real use
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def wide(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "1000")  # no wrapping inside a long temp path or run id
    monkeypatch.delenv("OPDWATCH_DEBUG", raising=False)
    monkeypatch.delenv("FORCE_COLOR", raising=False)


@pytest.mark.parametrize("case", [c for c in CASES if not c.other_user], ids=lambda c: c.id)
def test_cli(case: Case, corpus: Corpus, wide: None, capsys: pytest.CaptureFixture[str]) -> None:
    path = corpus.paths[case.id]
    row = TABLE.setdefault(case.id, {})
    failures = []
    for column in COMMANDS:
        code, out, err = _run_in_process(_argv(column, path, corpus.root / "reports" / f"{_dirname(case)}.html"),
                                         capsys)
        row[column] = code
        _note_problems(f"{case.id} / {column}", code, err)
        try:
            _assert_contract(case, column, path, code, out, err)
        except AssertionError as exc:
            failures.append(str(exc))
    assert not failures, "\n".join(failures)


EVENT_CASES = ["torn last events line", "events line not an object", "events with wrong-typed fields"]


@pytest.mark.parametrize("case_id", EVENT_CASES)
def test_both_readers_parse_events_alike(case_id: str, corpus: Corpus) -> None:
    """Run.events() (the full read) and LiveRun.events() (the incremental tail) share one parser: the same
    rows, and one warning each for the same lines."""
    from polars.testing import assert_frame_equal

    from opdwatch.live import LiveRun
    from opdwatch.reader import RunReadWarning, open_run

    path = corpus.paths[case_id]
    seen = {}
    for kind, read in (("run", lambda: open_run(path).events()), ("live", lambda: LiveRun(path).events())):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            seen[kind] = read()
        messages = [str(w.message) for w in caught if issubclass(w.category, RunReadWarning)]
        assert len(messages) == (1 if kind == "run" or case_id != "torn last events line" else 0), messages
        if kind == "run":
            expected = messages
        elif messages:  # a torn *last* line is not read by the tail: it waits for the rest of the line
            assert messages == expected
    assert_frame_equal(seen["live"], seen["run"])
    assert seen["run"].height == 2  # make_run's warning and alarm; none of the damaged lines


# ------------------------------------------------------------------------- permissions: another user
def _other_user() -> list[str] | None:
    """A command prefix that runs a process as an unprivileged user ([] when we are not root)."""
    if os.geteuid() != 0:
        return []
    try:
        import pwd

        pwd.getpwnam("nobody")
    except KeyError:
        return None
    if shutil.which("setpriv"):
        return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    if shutil.which("runuser"):
        return ["runuser", "-u", "nobody", "--"]
    return None


# Runs each argv list through opdwatch.cli.main in one process (as the unprivileged user), as capsys would.
_DRIVER = """
import io, json, sys, warnings
from contextlib import redirect_stderr, redirect_stdout
from opdwatch.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with warnings.catch_warnings(), redirect_stdout(out), redirect_stderr(err):
        warnings.simplefilter("default")
        code = main(argv)
    results.append([code, out.getvalue(), err.getvalue()])
print(json.dumps(results))
"""


def test_cli_as_another_user(corpus: Corpus, wide: None) -> None:
    cases = [c for c in CASES if c.other_user]
    prefix = _other_user()
    if prefix is None:
        for case in cases:
            TABLE.setdefault(case.id, {}).update(dict.fromkeys(COMMANDS, "skipped"))
        pytest.skip("running as root without setpriv/runuser or a 'nobody' user: cannot drop privileges")
    argvs = [_argv(column, corpus.paths[case.id], corpus.root / "reports" / f"{_dirname(case)}.html")
             for case in cases for column in COMMANDS]
    proc = subprocess.run([*prefix, sys.executable, "-c", _DRIVER, json.dumps(argvs)], capture_output=True,
                          text=True, cwd=corpus.root, timeout=120)
    if proc.returncode != 0 and "ModuleNotFoundError" in proc.stderr:
        pytest.skip(f"the unprivileged user cannot import opdwatch: {proc.stderr.strip()[-200:]}")
    assert proc.returncode == 0, proc.stderr
    results = iter(json.loads(proc.stdout))
    failures = []
    for case in cases:
        for column in COMMANDS:
            code, out, err = next(results)
            TABLE.setdefault(case.id, {})[column] = code
            _note_problems(f"{case.id} / {column} (as nobody)", code, err)
            try:
                _assert_contract(case, column, corpus.paths[case.id], code, out, err)
            except AssertionError as exc:
                failures.append(str(exc))
    assert not failures, "\n".join(failures)


# -------------------------------------------------------------------------------------- real processes
REAL_PROCESS = [
    ("glob run[12]", "info --json"), ("markup id [link=https://evil.example]x[/link]", "detect"),
    ("truncated Parquet file", "analyze"), ("garbage manifest JSON", "info"),
    ("all-NaN truncation column", "detect --json"),
]


def test_real_processes(corpus: Corpus) -> None:
    """A few cases through ``python -m opdwatch.cli``: nothing but the promised lines reach a real stderr."""
    env = {k: v for k, v in os.environ.items() if k != "OPDWATCH_DEBUG"} | {"COLUMNS": "1000"}
    cases = {c.id: c for c in CASES}
    procs = []
    for case_id, column in REAL_PROCESS:
        argv = _argv(column, corpus.paths[case_id], corpus.root / "reports" / "real.html")
        procs.append((cases[case_id], column, subprocess.Popen(
            [sys.executable, "-m", "opdwatch.cli", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=env, cwd=corpus.root)))
    failures = []
    for case, column, proc in procs:
        out, err = proc.communicate(timeout=120)
        TABLE.setdefault(case.id, {})["real process"] = f"{column}: {proc.returncode}"
        _note_problems(f"{case.id} / {column} (process)", proc.returncode, err)
        try:
            _assert_contract(case, column, corpus.paths[case.id], proc.returncode, out, err)
        except AssertionError as exc:
            failures.append(str(exc))
    assert not failures, "\n".join(failures)


# ---------------------------------------------------------------------------------------------- dashboard
@dataclass
class Served:
    base: str
    app: object
    listed: str        # the run-list callback's answer over the whole corpus, as JSON text
    list_status: int
    tracebacks: list[str]  # server log records with a traceback, for the whole time it serves


@pytest.fixture(scope="module")
def served(corpus: Corpus) -> Iterator[Served]:
    """The dashboard over the corpus root (every case next to the good run) on a real loopback socket. The
    run list is asked for once: every case is in it, and each later call would only tick the same runs."""
    pytest.importorskip("dash")
    from opdwatch.dashboards.app import create_app
    from tests.dashboards.served import call, get, serve

    app = create_app(corpus.root)
    logged = _Tracebacks()
    logging.getLogger().addHandler(logged)
    try:
        with warnings.catch_warnings(), serve(app) as base:
            warnings.simplefilter("ignore")  # the damaged runs' RunReadWarnings (the CLI tests count those)
            assert get(base, "/")[0] == 200
            status, listed = call(base, app, "runs-table", {"runs-tick.n_intervals": 1})
            yield Served(base, app, json.dumps(listed), status, logged.messages)
    finally:
        logging.getLogger().removeHandler(logged)


class _Tracebacks(logging.Handler):
    """Collects the log records that carry a traceback (the run list logs any exception of one run so)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.messages.append(record.getMessage())


def _listable(case: Case, corpus: Corpus) -> bool:
    """Whether the run list must show the case: a run with a manifest at most 3 levels under the root."""
    path = corpus.paths[case.id]
    rel = path.relative_to(corpus.root)
    return case.expect != "error" and len(rel.parts) <= 3 and (path / "manifest.json").is_file()


@pytest.mark.filterwarnings("ignore::opdwatch.reader.RunReadWarning")
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_dashboard(case: Case, corpus: Corpus, served: Served, caplog: pytest.LogCaptureFixture) -> None:
    from tests.dashboards.served import call, get

    base, app = served.base, served.app
    name = corpus.paths[case.id].relative_to(corpus.root).as_posix()
    query = urlencode({"run": name})
    with caplog.at_level(logging.WARNING):
        pages = [get(base, "/")[0], served.list_status, get(base, f"/run?{query}")[0]]
        status, page = call(base, app, "_pages_content", {"_pages_location.pathname": "/run",
                                                          "_pages_location.search": f"?{query}"})
        pages.append(status)
        status, _ = call(base, app, "run-meta", {"run-tick.n_intervals": 1, "run-name.data": name})
        pages.append(status)
    TABLE.setdefault(case.id, {})["dashboard"] = "/".join(map(str, pages))
    # a traceback in the server log is an error no check named (the run list catches and logs any exception)
    broken = [r.getMessage() for r in caplog.records if r.exc_info] + served.tracebacks
    PROBLEMS.extend(f"{case.id} / dashboard: {message}" for message in broken)
    served.tracebacks.clear()
    assert pages[:4] == [200] * 4 and pages[4] in (200, 204), (pages, page)
    assert '"href": "/run?run=good"' in served.listed  # one damaged run never hides the others
    if _listable(case, corpus):
        assert json.dumps(f"/run?{query}") in served.listed, name
    assert "Traceback" not in json.dumps(page)
    assert not broken, broken


# ------------------------------------------------------------------------------------------------ summary
def test_summary() -> None:
    """The case x command table of exit codes (shown with -rA), and no traceback or internal error anywhere."""
    columns = [*COMMANDS, "real process", "dashboard"]
    width = max(len(i) for i in IDS)
    lines = [" | ".join([f"{'case':<{width}}", *columns[:-2], f"{columns[-2]:<22}", columns[-1]])]
    counts = {0: 0, 2: 0}
    for case_id in IDS:
        row = TABLE.get(case_id, {})
        cells = []
        for c in columns:
            value = row.get(c, "")
            code = value if isinstance(value, int) else None
            if isinstance(value, str) and value and c == "real process":
                code = int(value.rsplit(": ", 1)[1])
            if code is not None:
                counts[code] = counts.get(code, 0) + 1
            cells.append(f"{value!s:^{len(c)}}" if c != "real process" else f"{value!s:<22}")
        lines.append(" | ".join([f"{case_id:<{width}}", *cells]))
    lines.append(f"{len(TABLE)} cases; CLI exit codes: {counts}; dashboard: / , run list, /run, page callback, "
                 f"refresh callback (HTTP status); tracebacks / internal errors: {len(PROBLEMS)}")
    print("\n".join(lines))
    assert not PROBLEMS, "\n".join(PROBLEMS)
    assert set(counts) <= {0, 2}, counts

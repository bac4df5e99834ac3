"""The damaged and odd run directories of tests/test_malformed_corpus.py: how each case is built, what every
command must answer for it (`Case`), and `build_corpus`, which builds them all with the real Recorder next to one
good run. The contract checks themselves stay in the test module."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from opdwatch.recorder import Recorder, RecorderSettings
from tests.synthetic_runs import make_run

STEPS = 5              # train steps of a corpus run (1..5, val at 2 and 4)
SIBLING_STEPS = 3      # train steps of the run a glob pattern would match instead
MARKUP_IDS = ("[/] [red]x", "[link=https://evil.example]x[/link]")


def strict_json(text: str) -> dict:
    """JSON as the strict parsers of other tools read it: NaN and Infinity constants are refused."""
    def refuse(name: str) -> None:
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


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
        assert strict_json(out)["runs"][0]["verdict"] == "no truncation data", out[:300]
    if column == "detect --json":
        assert strict_json(out)["note"].startswith("no truncation data"), out[:300]
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
        data = strict_json(out)
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


def case_dirname(case: Case) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in case.id)


@dataclass
class Corpus:
    root: Path                      # world-traversable: the permission cases run as another user
    paths: dict[str, Path] = field(default_factory=dict)
    good: Path | None = None


def build_corpus() -> Iterator[Corpus]:
    """Every case in its own directory of a fresh world-traversable root; cleans up after the last use."""
    root = Path(tempfile.mkdtemp(prefix="opdwatch-corpus-"))
    root.chmod(0o755)
    out = Corpus(root)
    out.good = _run(root / "good")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for case in CASES:
            directory = root / case_dirname(case)
            directory.mkdir()
            out.paths[case.id] = case.build(directory)
    (root / "reports").mkdir(mode=0o777)
    (root / "reports").chmod(0o777)  # the unprivileged user writes its reports here
    yield out
    for directory, dirs, files in os.walk(root):  # give back what the permission cases took, then clean up
        for name in dirs + files:
            os.chmod(os.path.join(directory, name), 0o755, follow_symlinks=False)
    shutil.rmtree(root, ignore_errors=True)


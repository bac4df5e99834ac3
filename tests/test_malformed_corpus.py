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
import os
import shutil
import subprocess
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import pytest

from opdwatch.cli import main
from tests.malformed_cases import CASES, IDS, Case, Corpus, build_corpus, case_dirname, strict_json

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


@pytest.fixture(scope="module")
def corpus() -> Iterator[Corpus]:
    yield from build_corpus()


# ---------------------------------------------------------------------------------------- the contract
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
        data = strict_json(out)
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
        code, out, err = _run_in_process(_argv(column, path, corpus.root / "reports" / f"{case_dirname(case)}.html"),
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
    argvs = [_argv(column, corpus.paths[case.id], corpus.root / "reports" / f"{case_dirname(case)}.html")
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

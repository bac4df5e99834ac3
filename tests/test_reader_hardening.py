"""Reader hardening: run paths with glob characters, wrong-typed columns, files the reader may not read.

Every reader path (``open_run``, ``LiveRun``, the series and drill-down functions, the replay and the CLI)
must read exactly the run it was given, and a file it cannot use must be skipped with one
``RunReadWarning`` that names it, never hide the rest of the run or end in a traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from polars.testing import assert_frame_equal

from opdwatch.cli import main
from opdwatch.detector.replay import train_rows
from opdwatch.drilldown import first_repetitive_rollouts, rollout_tokens
from opdwatch.errors import OpdwatchError
from opdwatch.live import LiveRun
from opdwatch.reader import RunReadWarning, open_run
from opdwatch.series import length_distribution, step_series
from tests.synthetic_runs import make_run
from tests.test_reader import small_run

# (run directory name, a sibling that the name matches when read as a glob pattern / URL / ~user)
AWKWARD_NAMES = [
    ("run[12]", "run1"),
    ("exp[seed]", "exps"),
    ("exp*", "expA"),
    ("a?b", "axb"),
    ("x{1,2}", "x1"),
    ("~", None),          # polars expands a leading ~ to $HOME (pointed at the sibling below)
    ("file:", None),      # ... and reads a relative "file:/..." as a URL
]


def _run_views(path: str | Path, step: int, rollout: int) -> dict[str, object]:
    """Everything a user can read of a run through the reader, the analysis and the drill-down."""
    run = open_run(path)
    return {
        "steps": run.steps().collect(), "rollouts": run.rollouts().collect(), "tokens": run.tokens().collect(),
        "series": step_series(run), "lengths": length_distribution(run),
        "first_repetitive": first_repetitive_rollouts(run, n=3),
        "replay_rows": pl.DataFrame([{"step": step, **m} for step, m in train_rows(run)]),  # NaN-safe compare
        "rollout_tokens": rollout_tokens(run, step=step, rollout=rollout, rank=0),
    }


def _live_views(path: str | Path, step: int, rollout: int) -> dict[str, object]:
    live = LiveRun(path)
    return {
        "steps": live.steps().collect(), "series": live.series(), "lengths": live.lengths(),
        "rollouts": live.step_rollouts(step), "prompt_history": live.prompt_history("p0"),
        "rollout_tokens": live.rollout_tokens(step, rank=0, phase="train", rollout=rollout),
    }


def _assert_same(actual: dict[str, object], expected: dict[str, object]) -> None:
    for key, value in expected.items():
        try:
            assert_frame_equal(actual[key], value)  # type: ignore[arg-type]
        except AssertionError as exc:
            raise AssertionError(f"{key}: {exc}") from None


@pytest.mark.parametrize("relative", [False, True], ids=["absolute", "relative"])
@pytest.mark.parametrize(("name", "sibling"), AWKWARD_NAMES, ids=[n for n, _ in AWKWARD_NAMES])
def test_run_paths_with_glob_characters_read_that_run(tmp_path, monkeypatch, capsys, name, sibling, relative):
    parent = tmp_path / "D"
    parent.mkdir()
    run_dir = make_run(parent / name, steps=4, collapse_at=2, seed=1, val_every=2)
    other = make_run(parent / (sibling or "other"), steps=2, seed=2)
    monkeypatch.setenv("HOME", str(other))
    plain = Path(shutil.copytree(run_dir, tmp_path / "plain"))  # the same run under a harmless name
    if relative:
        monkeypatch.chdir(parent)
        path = name
    else:
        path = str(run_dir)

    row = first_repetitive_rollouts(open_run(plain), n=1).row(0, named=True)  # a rollout to drill into
    expected = _run_views(plain, row["step"], row["rollout"])
    assert expected["steps"].height > 4  # train and val rows  # type: ignore[attr-defined]
    _assert_same(_run_views(path, row["step"], row["rollout"]), expected)
    _assert_same(_live_views(path, row["step"], row["rollout"]), _live_views(plain, row["step"], row["rollout"]))

    assert main(["info", path, "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert main(["info", str(plain), "--json"]) == 0
    want = json.loads(capsys.readouterr().out)
    assert got["steps"] == want["steps"] == 4
    assert got["last_train"] == want["last_train"] and got["last_val"] == want["last_val"]

    assert main(["detect", path, "--json"]) == 0  # exp[seed] used to replay as "no train steps"
    got = json.loads(capsys.readouterr().out)
    assert main(["detect", str(plain), "--json"]) == 0
    want = json.loads(capsys.readouterr().out)
    assert {k: v for k, v in got.items() if k not in ("run_id", "path")} == \
        {k: v for k, v in want.items() if k not in ("run_id", "path")}


# ----------------------------------------------------------------------------------- wrong types
def _retype(path: Path, column: str) -> str:
    """Rewrite ``column`` of the Parquet file at ``path`` with a wrong type; returns the polars name of it."""
    table = pq.read_table(path)
    i = table.schema.get_field_index(column)
    if pa.types.is_string(table.schema.field(column).type):
        values, name = pa.array([0] * table.num_rows, pa.int64()), "Int64"
    else:
        values, name = pc.cast(table[column], pa.string()), "String"
    pq.write_table(table.set_column(i, column, values), path)
    return name


def _read_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, RunReadWarning)]


WRONG_TYPES = [
    ("steps", "step"), ("steps", "rollout/truncation_rate"), ("steps", "phase"),
    ("rollouts", "num_tokens"), ("rollouts", "step"), ("rollouts", "repetitive"),
    ("tokens", "advantage"), ("tokens", "position"), ("tokens", "step"),
]


@pytest.mark.parametrize(("table", "column"), WRONG_TYPES, ids=[f"{t}:{c}" for t, c in WRONG_TYPES])
def test_a_file_with_a_wrong_typed_column_is_skipped_with_one_warning(tmp_path, capsys, table, column):
    path = small_run(tmp_path / "r", steps=4)
    bad = path / table / "step=000001" / "rank=00000" / "train.parquet"
    wrong = _retype(bad, column)
    complete = {"steps": [0, 1, 2, 3], "rollouts": [0, 1, 2, 3], "tokens": [0, 1, 2, 3]}
    expected = {**complete, table: [0, 2, 3]}

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = open_run(path)
        got = {"steps": run.steps().collect(), "rollouts": run.rollouts().collect(), "tokens": run.tokens().collect()}
        step_series(run)
    messages = _read_warnings(caught)
    assert len(messages) == 1, messages
    assert str(bad) in messages[0] and repr(column) in messages[0] and wrong in messages[0]
    assert {t: sorted(set(f["step"].to_list())) for t, f in got.items()} == expected

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        live = LiveRun(path)
        live_steps = sorted(set(live.steps().collect()["step"].to_list()))
        series = live.series()
        rollouts = live.step_rollouts(1)
        assert live.tick().changed is False  # the skipped file is not re-read (nor re-warned) every tick
    messages = _read_warnings(caught)
    assert len(messages) == 1 and str(bad) in messages[0] and repr(column) in messages[0], messages
    assert live_steps == expected["steps"]
    assert live.rollout_steps() == expected["rollouts"]
    assert rollouts.height == (0 if table == "rollouts" else 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RunReadWarning)
        assert_frame_equal(series, step_series(open_run(path)))

    for command in ("info", "detect"):  # they read the steps table (detect maybe the rollouts), never tokens
        with warnings.catch_warnings():  # a fresh registry: each CLI call is its own process in real use
            code = main([command, str(path), "--json"])
        err = capsys.readouterr().err
        assert code == 0, err
        lines = err.strip().splitlines()
        assert len(lines) == (1 if table == "steps" else len(lines)) <= 1, lines
        assert all(line.startswith("opdwatch: warning: ") and repr(column) in line for line in lines), lines


def test_null_typed_and_extra_columns_are_not_wrong_types(tmp_path):
    path = small_run(tmp_path / "r", steps=2)
    victim = path / "rollouts" / "step=000001" / "rank=00000" / "train.parquet"
    table = pq.read_table(victim)
    i = table.schema.get_field_index("prompt_id")
    table = table.set_column(i, "prompt_id", pa.nulls(table.num_rows))  # an all-null column, null-typed
    pq.write_table(table.append_column("extra", pa.array(["x"] * table.num_rows)), victim)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RunReadWarning)
        frame = open_run(path).rollouts().collect()
    assert frame["step"].to_list() == [0, 0, 1, 1] and frame["prompt_id"].null_count() == 4


# ----------------------------------------------------------------------------------- permissions
def _as_other_user() -> list[str] | None:
    """A command prefix that runs a process as an unprivileged user (root ignores permission bits)."""
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


@pytest.fixture
def unprivileged():
    """(command prefix, a fresh directory that the unprivileged user can traverse and read)."""
    prefix = _as_other_user()
    if prefix is None:
        pytest.skip("running as root without setpriv/runuser or a 'nobody' user: cannot drop privileges")
    # pytest's tmp dirs are private to root (0700), so use a world-traversable one of our own
    root = Path(tempfile.mkdtemp(prefix="opdwatch-perm-", dir=tempfile.gettempdir()))
    root.chmod(0o755)
    probe = subprocess.run([*prefix, sys.executable, "-c", "import os, sys, opdwatch.reader; os.listdir(sys.argv[1])",
                            str(root)], capture_output=True, text=True)
    if probe.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"the unprivileged user cannot run opdwatch on {root}: {probe.stderr.strip()[-200:]}")
    yield prefix, root
    for directory, dirs, files in os.walk(root):  # give back every permission we took, then clean up
        for name in dirs + files:
            os.chmod(os.path.join(directory, name), 0o755, follow_symlinks=False)
    shutil.rmtree(root, ignore_errors=True)


_READ_ALL = """
import json, sys, warnings
from opdwatch.errors import OpdwatchError
from opdwatch.live import LiveRun
from opdwatch.reader import RunReadWarning, open_run
from opdwatch.series import step_series

out = {}
for kind in ("run", "live"):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if kind == "run":
                run = open_run(sys.argv[1])
                frames = {"steps": run.steps().collect(), "rollouts": run.rollouts().collect(),
                          "tokens": run.tokens().collect()}
                events = run.events().height
                step_series(run)
            else:
                live = LiveRun(sys.argv[1])
                live.series()
                live.tick()
                frames = {"steps": live.steps().collect()}
                events = live.events().height
            res = {t: sorted(set(f["step"].to_list())) for t, f in frames.items()}
            res["rollouts"] = res["rollouts"] if kind == "run" else live.rollout_steps()
            res["events"] = events
        except OpdwatchError as exc:
            res = {"error": str(exc)}
    res["warnings"] = [str(w.message) for w in caught if issubclass(w.category, RunReadWarning)]
    out[kind] = res
print(json.dumps(out))
"""


def _read_as(prefix: list[str], path: Path) -> dict[str, dict]:
    proc = subprocess.run([*prefix, sys.executable, "-c", _READ_ALL, str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _info_as(prefix: list[str], path: Path) -> tuple[int, str, list[str]]:
    proc = subprocess.run([*prefix, sys.executable, "-m", "opdwatch.cli", "info", str(path), "--json"],
                          capture_output=True, text=True)
    return proc.returncode, proc.stdout, proc.stderr.strip().splitlines()


# (what to make unreadable, its mode, steps/rollouts the readers then see)
UNREADABLE = [
    ("steps/step=000002", 0o000, {"steps": [0, 1, 3], "rollouts": [0, 1, 2, 3]}),
    ("steps/step=000002/rank=00000", 0o000, {"steps": [0, 1, 3], "rollouts": [0, 1, 2, 3]}),
    ("steps/step=000003/rank=00000/train.parquet", 0o000, {"steps": [0, 1, 2], "rollouts": [0, 1, 2, 3]}),
    ("steps/step=000001/rank=00000", 0o444, {"steps": [0, 2, 3], "rollouts": [0, 1, 2, 3]}),  # listable, no x
    ("rollouts", 0o000, {"steps": [0, 1, 2, 3], "rollouts": []}),
]


@pytest.mark.parametrize(("target", "mode", "seen"), UNREADABLE, ids=[f"{t}:{m:o}" for t, m, _ in UNREADABLE])
def test_unreadable_partitions_are_skipped_with_a_warning(unprivileged, target, mode, seen):
    prefix, root = unprivileged
    path = small_run(root / "run", steps=4)
    (path / target).chmod(mode)
    result = _read_as(prefix, path)
    for kind in ("run", "live"):
        res = result[kind]
        assert "error" not in res, res
        assert res["steps"] == seen["steps"], (kind, res)
        assert res["rollouts"] == seen["rollouts"], (kind, res)
        assert res["warnings"], (kind, res)
        assert all("permission denied" in w for w in res["warnings"]), res["warnings"]
        assert any(str(path / target) in w for w in res["warnings"]), res["warnings"]
    code, out, err = _info_as(prefix, path)
    assert code == 0, err
    assert len(seen["steps"]) == json.loads(out)["steps"]
    assert err and all(line.startswith("opdwatch: warning: ") and "permission denied" in line for line in err), err


def test_unreadable_events_file_is_skipped_with_a_warning(unprivileged):
    prefix, root = unprivileged
    path = small_run(root / "run", steps=4)
    events = path / "events" / "rank=00000.jsonl"
    events.chmod(0o000)
    result = _read_as(prefix, path)
    for kind in ("run", "live"):
        res = result[kind]
        assert res["steps"] == [0, 1, 2, 3] and res["events"] == 0, res
        assert res["warnings"] and all(str(events) in w and "permission denied" in w for w in res["warnings"]), res


@pytest.mark.parametrize("mode", [0o000, 0o744], ids=["no-access", "listable-not-traversable"])
def test_unreadable_run_directory_is_one_line_error(unprivileged, mode):
    prefix, root = unprivileged
    path = small_run(root / "run", steps=2)
    path.chmod(mode)
    result = _read_as(prefix, path)
    for kind in ("run", "live"):
        assert result[kind].get("error") == f"{path}: permission denied", result
    code, out, err = _info_as(prefix, path)
    assert code == 2 and out == ""
    assert err == [f"opdwatch: error: {path}: permission denied"]


def test_permission_denied_is_an_opdwatch_error_in_process(tmp_path, monkeypatch):
    """The same mapping without a second user: the manifest read raising PermissionError."""
    path = small_run(tmp_path / "r", steps=1)
    real_stat = Path.stat

    def deny(self, *args, **kwargs):
        if self.name == "manifest.json":
            raise PermissionError(13, "Permission denied", str(self))
        return real_stat(self, *args, **kwargs)

    monkeypatch.setattr(Path, "stat", deny)
    for make in (open_run, LiveRun):
        with pytest.raises(OpdwatchError, match=r"permission denied$"):
            make(path)

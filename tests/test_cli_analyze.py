"""`opdwatch analyze` in-process: summary table, --json (no report file unless --out), --out, live runs, and
one-line errors (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from opdwatch.cli import main
from tests.synthetic_runs import make_run


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("cli")
    return make_run(base / "opd", steps=20, collapse_at=10), make_run(base / "stable", steps=20, seed=1)


def test_table_and_report(runs, tmp_path: Path, capsys) -> None:
    out = tmp_path / "r.html"
    assert main(["analyze", str(runs[0]), str(runs[1]), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "onset step" in text and "collapsed" in text and "healthy" in text
    assert f"report: {out}" in text.replace("\n", "")
    assert out.stat().st_size > 1_000_000  # plotly.js inlined


def test_json(runs, tmp_path: Path, capsys) -> None:
    assert main(["analyze", str(runs[0]), str(runs[1]), "--json", "--out", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    data = json.loads(out)
    assert err.strip() == f"report: {tmp_path / 'report.html'}"  # stdout is only the JSON
    opd, stable = data["runs"]
    assert opd["verdict"] == "collapsed" and abs(opd["onset_step"] - 10) <= 2
    assert stable["verdict"] == "healthy" and stable["onset_step"] is None
    assert opd["steps"] == 20 and opd["latest"]["rollout/truncation_rate"]["step"] == 20
    assert data["report"] == str(tmp_path / "report.html") and Path(data["report"]).exists()
    assert data["nonfinite"] == []
    # the verdict over the whole history: its kind, collapse episodes, where the run is now
    (episode,) = opd["episodes"]
    assert opd["verdict_kind"] == "collapsed" and episode["start"] >= opd["onset_step"] and episode["end"] is None
    assert opd["current"]["level"] >= 0.5 and opd["regimes"][0]["start"] == 1
    assert stable["episodes"] == [] and stable["verdict_kind"] == "healthy"


def test_json_names_a_partial_recovery(tmp_path: Path, capsys) -> None:
    from tests.synthetic_runs import recorded_case

    path, case = recorded_case(tmp_path, "partial", 3)
    assert main(["analyze", str(path), "--json"]) == 0
    (run,) = json.loads(capsys.readouterr().out)["runs"]
    assert run["verdict"] == "collapsed, recovering" and abs(run["onset_step"] - case.onset) <= 2
    (episode,) = run["episodes"]
    assert episode["start"] >= run["onset_step"] and episode["end"] is not None and episode["peak"] >= 0.9
    assert run["current"]["level"] < 0.5 and any(r.startswith("now: truncation rate") for r in run["reasons"])
    assert main(["analyze", str(path), "--no-report"]) == 0
    text = capsys.readouterr().out
    assert "collapsed, recovering" in text and "collapse episode" in text


def test_json_writes_no_report_without_out(runs, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["analyze", str(runs[0]), "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["report"] is None and err == "" and list(tmp_path.iterdir()) == []


def test_run_still_being_written(tmp_path: Path, capsys) -> None:
    run = make_run(tmp_path / "live", steps=6, close=False)
    assert main(["analyze", str(run), "--json", "--no-report"]) == 0
    (summary,) = json.loads(capsys.readouterr().out)["runs"]
    assert summary["status"] == "running" and summary["steps"] == 6


def _one_line_error(capsys, argv: list[str], needle: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("opdwatch: error:") and needle in err, err


def test_not_a_run(tmp_path: Path, capsys) -> None:
    _one_line_error(capsys, ["analyze", str(tmp_path), "--no-report"], "not an opdwatch run")
    _one_line_error(capsys, ["analyze", str(tmp_path / "missing"), "--no-report"], "no such directory")


def test_empty_run(tmp_path: Path, capsys) -> None:
    run = make_run(tmp_path / "empty", steps=0)
    _one_line_error(capsys, ["analyze", str(run), "--no-report"], "empty run")


def test_corrupt_files(tmp_path: Path, capsys) -> None:
    run = make_run(tmp_path / "corrupt", steps=4, val_every=0)
    (run / "tokens" / "step=000002" / "rank=00000" / "train.parquet").write_bytes(b"not parquet at all")
    _one_line_error(capsys, ["analyze", str(run), "--no-report"], "unreadable")
    assert main(["analyze", str(run), "--no-report", "--skip-corrupt", "--json"]) == 0
    (summary,) = json.loads(capsys.readouterr().out)["runs"]
    assert "; 1 step recorder step metrics" in summary["token_series"]  # "1 step", not "1 steps"
    (run / "manifest.json").write_text("{ torn", encoding="utf-8")
    _one_line_error(capsys, ["analyze", str(run), "--no-report"], "unreadable manifest")


def test_unknown_format_version(tmp_path: Path, capsys) -> None:
    run = make_run(tmp_path / "future", steps=2)
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["format_version"] = 99
    (run / "manifest.json").write_text(json.dumps(manifest))
    _one_line_error(capsys, ["analyze", str(run), "--no-report"], "format version 99")

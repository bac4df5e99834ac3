"""CLI hardening: run ids and paths are printed as data (never as rich markup), `--json` is strict JSON,
`analyze --json` writes no file unasked, and OS errors on the user's paths are one-line errors (exit 2)."""

from __future__ import annotations

import json
import math
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from opdwatch.cli import main
from opdwatch.reader import open_run
from opdwatch.recorder import Recorder
from tests.synthetic_runs import SETTINGS, _batch, make_run

MARKUP = ["[bold]", "[/]", "[red]x", "[link=https://evil.example]x[/link]", "exp:smile:"]
OSC8 = "\x1b]8;"  # a terminal hyperlink
SGR = re.compile(r"\x1b\[[0-9;]*m")  # colour codes: the highlighter may colour parts of a line


def _set_run_id(run: Path, run_id: str) -> Path:
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["run_id"] = run_id
    (run / "manifest.json").write_text(json.dumps(manifest))
    return run


@pytest.fixture(scope="module")
def marked_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A collapsing run per markup string, with that string as its run id (plain directory names)."""
    base = tmp_path_factory.mktemp("ids")
    return {m: _set_run_id(make_run(base / f"run{i}", steps=12, collapse_at=6), m) for i, m in enumerate(MARKUP)}


@pytest.fixture(scope="module")
def marked_paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A run per markup string, at a path that ends in that string (a `/` in it makes subdirectories)."""
    base = tmp_path_factory.mktemp("paths")
    return {m: make_run(base / m, steps=4) for m in MARKUP}


@pytest.fixture
def wide(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "1000")  # no wrapping inside a long temp path
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.delenv("NO_COLOR", raising=False)


def _run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    return out, err


@pytest.mark.parametrize("markup", MARKUP)
@pytest.mark.parametrize("command", ["info", "analyze", "detect"])
def test_run_id_is_printed_verbatim(command, markup, marked_runs, wide, capsys) -> None:
    argv = [command, str(marked_runs[markup]), *(["--no-report"] if command == "analyze" else [])]
    out, err = _run(capsys, argv)
    assert markup in out and "Traceback" not in err


@pytest.mark.parametrize("markup", MARKUP)
@pytest.mark.parametrize("command", ["info", "analyze"])
def test_run_path_is_printed_verbatim(command, markup, marked_paths, wide, capsys) -> None:
    path = marked_paths[markup]
    out, _ = _run(capsys, [command, str(path), *(["--no-report"] if command == "analyze" else [])])
    assert str(path) in out


def test_run_at_a_bracketed_path_is_read(tmp_path, capsys) -> None:
    data = _strict(_run(capsys, ["info", str(make_run(tmp_path / "exp[seed]", steps=4)), "--json"])[0])
    assert data["steps"] == 4


def _forced(command: str, run: Path, text: str, capsys) -> None:
    out, err = _run(capsys, [command, str(run), *(["--no-report"] if command == "analyze" else [])])
    assert OSC8 not in out + err and "Traceback" not in err and "MarkupError" not in err
    assert text in SGR.sub("", out)


@pytest.mark.parametrize("markup", MARKUP)
@pytest.mark.parametrize("command", ["info", "analyze", "detect"])
def test_forced_colour_prints_run_ids_as_text(command, markup, marked_runs, wide, monkeypatch, capsys) -> None:
    monkeypatch.setenv("FORCE_COLOR", "1")  # as in a terminal: styles, hyperlinks and analyze's progress bar
    _forced(command, marked_runs[markup], markup, capsys)


@pytest.mark.parametrize("markup", MARKUP)
@pytest.mark.parametrize("command", ["info", "analyze"])
def test_forced_colour_prints_paths_as_text(command, markup, marked_paths, wide, monkeypatch, capsys) -> None:
    monkeypatch.setenv("FORCE_COLOR", "1")
    _forced(command, marked_paths[markup], str(marked_paths[markup]), capsys)


def test_run_ids_made_unique_keep_their_markup_as_text(marked_runs, tmp_path, wide, capsys) -> None:
    twin = _set_run_id(make_run(tmp_path / "[red]twin", steps=4), "[/]")  # same id: the label adds the name
    out, _ = _run(capsys, ["analyze", str(marked_runs["[/]"]), str(twin), "--no-report"])
    assert "[/] ([red]twin)" in out


# ------------------------------------------------------------------------------------------ strict JSON
def _strict(text: str) -> dict:
    def refuse(name: str) -> None:
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def nonfinite_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Trainer metrics that are +inf, -inf and NaN, and a -inf teacher log-prob in every step's token rows."""
    path = tmp_path_factory.mktemp("nonfinite") / "run"
    rng = np.random.default_rng(0)
    rec = Recorder.create(path, tokenizer_info={"eos_token_ids": [0]}, settings=SETTINGS, run_id="nf")
    for step in (1, 2, 3):
        batch = _batch(rng, 8, 32, 0.0, 0.0)
        batch["teacher_logp"][0][0] = -np.inf
        rec.record_step(step, phase="train", **batch,
                        metrics={"loss/total": float("inf"), "loss/opd": float("-inf"), "loss/kl": float("nan")})
    rec.close()
    return path


def test_info_json_is_strict(nonfinite_run, capsys) -> None:
    out, _ = _run(capsys, ["info", str(nonfinite_run), "--json"])
    data = _strict(out)
    assert data["last_train"]["loss/total"] is None and data["last_train"]["loss/opd"] is None
    assert data["last_train"]["loss/kl"] is None  # NaN: the recorder's "no value", null like a missing metric
    assert {"path": ["last_train", "loss/total"], "value": "Infinity"} in data["nonfinite"]
    assert {"path": ["last_train", "loss/opd"], "value": "-Infinity"} in data["nonfinite"]
    assert data["steps"] == 3


def test_analyze_json_is_strict(nonfinite_run, capsys) -> None:
    out, _ = _run(capsys, ["analyze", str(nonfinite_run), "--json"])
    data = _strict(out)
    (summary,) = data["runs"]
    # A -inf log-prob is ignored in token means, by the recorder and the analysis alike (opdwatch.metric_defs),
    # so the series value is the finite mean of the other tokens and equals the recorder's step metric.
    value = summary["latest"]["token/teacher_logp_mean"]["value"]
    recorded = open_run(nonfinite_run).steps("train").collect()["token/teacher_logp_mean"].to_list()[-1]
    assert value is not None and math.isfinite(value) and value == pytest.approx(recorded, rel=1e-12)
    assert not any(e["path"][-2:] == ["token/teacher_logp_mean", "value"] for e in data["nonfinite"])


def test_analyze_json_of_finite_runs_lists_nothing(marked_runs, capsys) -> None:
    data = _strict(_run(capsys, ["analyze", str(marked_runs["[bold]"]), "--json"])[0])
    assert data["nonfinite"] == [] and data["runs"][0]["run_id"] == "[bold]"


def test_detect_json_is_strict(marked_runs, capsys) -> None:
    # an unbounded policy (beta raised to infinity) is the detector's way to non-finite numbers in the summary
    out, _ = _run(capsys, ["detect", str(marked_runs["[bold]"]), "--json", "--policy", "beta_floor=inf",
                           "--policy", "beta_max=inf"])
    data = _strict(out)
    raised = [i for i, d in enumerate(data["decisions"]) if d["action"] == "raise"]
    assert raised and data["decisions"][raised[0]]["beta"] is None
    assert {"path": ["decisions", raised[0], "beta"], "value": "Infinity"} in data["nonfinite"]


# ----------------------------------------------------------------------------- where analyze writes
def test_analyze_json_writes_no_report_unless_asked(marked_runs, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    run = str(marked_runs["[bold]"])
    data = _strict(_run(capsys, ["analyze", run, "--json"])[0])
    assert data["report"] is None and not (tmp_path / "report.html").exists()
    out = tmp_path / "asked.html"
    text, err = _run(capsys, ["analyze", run, "--json", "--out", str(out)])
    assert _strict(text)["report"] == str(out) and out.exists()
    assert err.strip() == f"report: {out}"  # a report written while --json is on is said on stderr


def test_analyze_without_json_still_writes_report_html_and_says_so(marked_runs, tmp_path, monkeypatch, wide,
                                                                    capsys) -> None:
    monkeypatch.chdir(tmp_path)
    out, _ = _run(capsys, ["analyze", str(marked_runs["[bold]"])])
    assert (tmp_path / "report.html").exists() and "report: report.html" in out


# ------------------------------------------------------------------------------ OS errors on user paths
@pytest.fixture
def unwritable_dir(tmp_path: Path) -> Path:
    """A directory this process cannot create files in (root ignores modes: then sysfs, which refuses all)."""
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        tmp_path.chmod(0o500)
        yield tmp_path
        tmp_path.chmod(0o700)
        return
    probe = Path("/sys/kernel/opdwatch-probe")
    try:
        probe.write_text("")
    except PermissionError:
        yield probe.parent
        return
    except OSError:
        pass
    else:
        probe.unlink()
    pytest.skip("no directory here refuses writes to this process")


def test_unwritable_out_is_a_one_line_error(marked_runs, unwritable_dir, capsys) -> None:
    code = main(["analyze", str(marked_runs["[bold]"]), "--out", str(unwritable_dir / "r.html")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith(f"opdwatch: error: {unwritable_dir}")
    assert err.rstrip().endswith(": permission denied")


@pytest.mark.parametrize("exc", [OSError("no filename"), RuntimeError("a bug"),
                                 ValueError("another bug")])
def test_other_exceptions_stay_internal_errors(exc, monkeypatch, capsys) -> None:
    import opdwatch.cli.info as info

    def boom(args) -> int:
        raise exc

    monkeypatch.setattr(info, "handle", boom)
    monkeypatch.delenv("OPDWATCH_DEBUG", raising=False)
    assert main(["info", "whatever"]) == 1
    assert capsys.readouterr().err.startswith("opdwatch: internal error: ")


def test_error_lines_stay_one_line_for_odd_paths(tmp_path, capsys) -> None:
    odd = tmp_path / "two\nlines\x1b]8;;https://evil.example\x1b\\"
    assert main(["info", str(odd)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "\x1b" not in err and err.startswith("opdwatch: error: ")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX paths")
def test_control_characters_in_a_run_id_are_shown_not_sent(tmp_path, wide, monkeypatch, capsys) -> None:
    run = _set_run_id(make_run(tmp_path / "ctl", steps=4), "x\x1b]8;;https://evil.example\x1b\\y")
    monkeypatch.setenv("FORCE_COLOR", "1")
    for command in (["info"], ["analyze", "--no-report"]):
        out, err = _run(capsys, [command[0], str(run), *command[1:]])
        assert OSC8 not in out + err and "\\x1b]8;;https://evil.example" in SGR.sub("", out)

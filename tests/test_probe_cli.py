"""`opdwatch probe` on tiny model directories saved here: JSON output, the HTML report, and one-line refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from opdwatch.cli import main
from opdwatch.trainer.data.models import save_model_dir
from opdwatch.trainer.recipes.demo.tokenizer import build_char_tokenizer
from tests.test_probe_scoring import other_eos_tokenizer, tiny_model


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("probe-models")
    tok, other = build_char_tokenizer(), other_eos_tokenizer()
    out = {"student": root / "student", "teacher": root / "teacher", "other_eos": root / "other_eos",
           "other_vocab": root / "other_vocab"}
    save_model_dir(tiny_model(len(tok), seed=1), tok, out["student"])
    save_model_dir(tiny_model(len(tok), seed=2), tok, out["teacher"])
    save_model_dir(tiny_model(len(other), seed=3, eos_id=other.eos_token_id), other, out["other_eos"])
    shuffled = build_char_tokenizer("9876543210+-=?Q:. \\boxed{}")  # same characters, other ids
    save_model_dir(tiny_model(len(shuffled), seed=4), shuffled, out["other_vocab"])
    prompts = root / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"question": q, "solution": s}) for q, s in
                                 [("Q:1+2=?", "1+2=3. \\boxed{3}"), ("Q:5-1=?", "5-1=4. \\boxed{4}")]) + "\n")
    (root / "empty.jsonl").write_text("\n")
    out["prompts"], out["empty"] = prompts, root / "empty.jsonl"
    return out


def _probe(dirs: dict[str, Path], *extra: str, teacher: str = "teacher") -> list[str]:
    return ["probe", "--student", str(dirs["student"]), "--teacher", str(dirs[teacher]), "--prompts",
            str(dirs["prompts"]), "--copies", "3", *extra]


def test_json_and_report(dirs, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "probe.html"
    assert main(_probe(dirs, "--json", "--out", str(out))) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["risk"] in ("low", "medium", "high") and result["rows"] == 2 and result["reasons"]
    assert [c["copy"] for c in result["per_copy"]] == [0, 1, 2, 3]
    assert [e["repeats"] for e in result["eos"]] == [0, 1, 2]
    assert "probe/loop_incentive" in result["metrics"] and result["eos_mapping"] is None
    assert "plotly" in out.read_text()
    # a teacher whose EOS is another id: accepted with --eos-map auto, and the mapping is reported
    assert main(_probe(dirs, "--json", "--no-report", "--eos-map", "auto", teacher="other_eos")) == 0
    assert json.loads(capsys.readouterr().out)["eos_mapping"]["teacher_eos_id"] == len(build_char_tokenizer())


def test_text_output(dirs, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(_probe(dirs, "--responses", "student", "--max-new-tokens", "8", "--chunk", "window")) == 0
    text = capsys.readouterr().out
    assert "risk:" in text and "loop incentive" in text and (tmp_path / "probe-report.html").exists()


@pytest.mark.parametrize("case, expected", [
    ("missing_model", "no such directory"),
    ("other_vocab", "vocabularies differ on ordinary tokens"),
    ("other_eos", "EOS differs"),
    ("empty", "is empty"),
    ("no_file", "no such file"),
    ("copies", "--copies 1: must be >= 2"),
])
def test_bad_inputs_exit_2_with_one_line(dirs, case: str, expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    args = {"missing_model": _probe(dirs) + ["--teacher", str(dirs["student"].parent / "nope")],
            "other_vocab": _probe(dirs, teacher="other_vocab"),
            "other_eos": _probe(dirs, teacher="other_eos"),
            "empty": _probe(dirs) + ["--prompts", str(dirs["empty"])],
            "no_file": _probe(dirs) + ["--prompts", str(dirs["empty"].parent / "missing.jsonl")],
            "copies": _probe(dirs) + ["--copies", "1"]}[case]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("opdwatch: error: ") and expected in err and err.count("\n") == 1, err

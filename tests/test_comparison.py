"""The comparison table of `opdwatch analyze` on several runs (Table 2 layout): final and best validation accuracy
(sampled and greedy), peak truncation with its step, onset per arm; in the terminal, report.html and --json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from opdwatch.analysis import analyze_run
from opdwatch.cli import main
from opdwatch.comparison import comparison_rows, series_facts
from opdwatch.reader import open_run
from opdwatch.recorder import Recorder
from tests.synthetic_runs import SETTINGS, make_run


def _arm(path: Path, *, beta: float, alpha: float, truncation: list[float],
         val: dict[int, tuple[float, float]]) -> Path:
    """A run whose step s has rollout truncation `truncation[s-1]` and, at the steps in `val`, validation with
    (sampled, greedy) accuracy: 10 rollouts each, so every rate is a multiple of 0.1."""
    rec = Recorder.create(path, config={"opd": {"beta": beta, "alpha": alpha}}, settings=SETTINGS, run_id=path.name,
                          tokenizer_info={"eos_token_ids": [0]})

    def batch(n_trunc: int, n_correct: int) -> dict:
        ids = [np.array([1, 2, 3] * 6, dtype=np.int64) if i < n_trunc else np.array([4, 5, 0], dtype=np.int64)
               for i in range(10)]
        return {"token_ids": ids, "student_logp": [np.full(len(t), -1.0) for t in ids],
                "teacher_logp": [np.full(len(t), -1.2) for t in ids],
                "finish_reasons": ["length" if i < n_trunc else "eos" for i in range(10)],
                "texts": ["abc" * 6 if i < n_trunc else "de" for i in range(10)],
                "correct": [i >= 10 - n_correct for i in range(10)]}

    for step in range(0, len(truncation) + 1):
        if step:
            rec.record_step(step, phase="train", **batch(round(truncation[step - 1] * 10), 0))
        if step in val:
            sampled, greedy = val[step]
            rec.record_step(step, phase="val", **batch(0, round(sampled * 10)))
            rec.log_metrics(step, "val", {"greedy/accuracy": greedy})
    rec.close("finished")
    return path


@pytest.fixture(scope="module")
def arms(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("arms")
    opd = _arm(base / "opd", beta=0.0, alpha=0.0, truncation=[0.0] * 6 + [0.9, 1.0, 0.8, 0.9],
               val={0: (0.3, 0.4), 5: (0.5, 0.6), 10: (0.1, 0.2)})
    stable = _arm(base / "stable", beta=0.2, alpha=1.0, truncation=[0.1, 0.0, 0.2, 0.0, 0.0, 0.1, 0.0, 0.0, 0.0, 0.0],
                  val={0: (0.3, 0.4), 5: (0.4, 0.5), 10: (0.6, 0.7)})
    return opd, stable


def test_series_facts_first_final_best_with_steps() -> None:
    import polars as pl

    s = pl.DataFrame({"step": [0, 1, 2, 3, 4], "x": [0.2, None, 0.5, float("nan"), 0.5]})
    assert series_facts(s, "x") == {"first": 0.2, "first_step": 0, "final": 0.5, "final_step": 4, "best": 0.5,
                                    "best_step": 2}  # a tie goes to the earliest step; NaN and null are skipped
    assert series_facts(s, "missing")["final"] is None


def test_rows_hold_each_arms_accuracy_truncation_onset(arms) -> None:
    opd, stable = (comparison_rows([analyze_run(open_run(p))])[0] for p in arms)
    assert (opd["beta"], opd["alpha"], stable["beta"], stable["alpha"]) == (0.0, 0.0, 0.2, 1.0)
    assert opd["val_accuracy_first"] == pytest.approx(0.3) and opd["val_accuracy_final"] == pytest.approx(0.1)
    assert opd["val_accuracy_best"] == pytest.approx(0.5) and opd["val_accuracy_best_step"] == 5
    assert opd["greedy_accuracy_final"] == pytest.approx(0.2) and opd["greedy_accuracy_best_step"] == 5
    assert opd["peak_truncation"] == pytest.approx(1.0) and opd["peak_truncation_step"] == 8
    assert opd["onset_step"] is not None and 5 <= opd["onset_step"] <= 8
    assert stable["val_accuracy_final"] == pytest.approx(0.6) and stable["val_accuracy_best_step"] == 10
    assert stable["greedy_accuracy_final"] == pytest.approx(0.7)
    assert stable["peak_truncation"] == pytest.approx(0.2) and stable["peak_truncation_step"] == 3
    assert stable["onset_step"] is None


def test_cli_table_report_and_json(arms, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # one line per row
    out = tmp_path / "r.html"
    assert main(["analyze", str(arms[0]), str(arms[1]), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "comparison (Table 2 layout)" in text and "val acc (greedy)" in text
    assert "0.30 → 0.10 (best 0.50 @5)" in text and "1.00 @8" in text  # opd's sampled accuracy, peak truncation
    page = out.read_text()
    assert "id='comparison'" in page and "0.700 (step 10)" in page  # stable's final greedy accuracy
    assert main(["analyze", str(arms[0]), str(arms[1]), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    rows = {r["arm"]: r for r in data["comparison"]}
    assert set(rows) == {"opd", "stable"}
    assert rows["stable"]["val_accuracy_final"] == pytest.approx(0.6) and rows["opd"]["onset_step"] is not None


def test_runs_without_greedy_validation_show_no_greedy_columns(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    a, b = make_run(tmp_path / "a", steps=10), make_run(tmp_path / "b", steps=10, seed=1)
    assert main(["analyze", str(a), str(b), "--no-report"]) == 0
    text = capsys.readouterr().out
    assert "val acc (sampled)" in text and "val acc (greedy)" not in text and "β / α" not in text

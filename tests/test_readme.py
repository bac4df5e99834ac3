"""The README's recorder example runs as written and produces a readable run."""

from __future__ import annotations

import re
from pathlib import Path

from opdwatch import open_run

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_recorder_example_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    example = next(b for b in blocks if "Recorder.create" in b)
    assert len(example.strip().splitlines()) <= 17  # "a 15-line example", give or take the imports
    monkeypatch.chdir(tmp_path)
    exec(compile(example, "README.md", "exec"), {})
    run = open_run(tmp_path / "runs" / "my-opd")
    steps = run.steps().collect()
    assert steps["step"].to_list() == [0, 1, 2]
    assert steps["rollout/truncation_rate"].to_list() == [0.5, 0.5, 0.5]
    assert run.events().filter(run.events()["kind"] == "warning").height == 3
    assert run.status == "finished"

"""The notebooks run top to bottom against small recorded runs, and are stored without outputs."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.synthetic_runs import make_run

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("nb")
    return make_run(base / "opd", steps=20, collapse_at=10), make_run(base / "stable-opd", steps=20, seed=1)


def _execute(name: str, tmp_path: Path) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    return nb


def _outputs(nb: nbformat.NotebookNode) -> str:
    return "\n".join(str(o) for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs)


def test_failure_walkthrough(runs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPDWATCH_RUN", str(runs[0]))
    text = _outputs(_execute("01_failure_walkthrough.ipynb", tmp_path))
    assert "verdict collapsed" in text and "onset step:" in text
    assert "application/vnd.plotly.v1+json" in text  # the figures rendered


def test_compare_runs(runs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPDWATCH_RUNS", f"{runs[0]},{runs[1]}")
    text = _outputs(_execute("02_compare_runs.ipynb", tmp_path))
    assert "opd: collapsed" in text and "stable-opd: healthy" in text


@pytest.mark.parametrize("name", ["01_failure_walkthrough.ipynb", "02_compare_runs.ipynb"])
def test_stored_without_outputs(name: str) -> None:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None

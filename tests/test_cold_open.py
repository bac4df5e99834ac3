"""Cold opens of a compacted run list and open only the segment: no step folder, no footer, no token row."""

from __future__ import annotations

from pathlib import Path

import pytest

import opdwatch.run_files as run_files
import opdwatch.segments as segments
from opdwatch.compaction import compact
from opdwatch.live import LiveRun
from opdwatch.reader import open_run
from opdwatch.series import step_series
from opdwatch.summary import run_summary
from tests.synthetic_runs import make_run


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Every footer read and every file scanned from here on."""
    seen: dict[str, list[str]] = {"footers": [], "scans": []}
    read_part, scan_files = run_files.read_part, segments.scan_files

    def counting_read_part(path, table):  # noqa: ANN001, ANN202
        seen["footers"].append(str(path))
        return read_part(path, table)

    def counting_scan(paths, schema, **kw):  # noqa: ANN001, ANN202, ANN003
        paths = list(paths)
        seen["scans"] += [str(p) for p in paths]
        return scan_files(paths, schema, **kw)

    for module in ("opdwatch.reader", "opdwatch.live.incremental"):
        monkeypatch.setattr(f"{module}.read_part", counting_read_part)
    monkeypatch.setattr(segments, "scan_files", counting_scan)
    return seen


def test_series_info_and_dashboard_of_a_compacted_run_read_no_token_file(tmp_path: Path,
                                                                         opened: dict[str, list[str]]) -> None:
    run_dir = make_run(tmp_path / "run", steps=10, collapse_at=6, val_every=4)
    before = step_series(open_run(run_dir))
    assert any("tokens" in p for p in opened["scans"])  # an uncompacted run aggregates its token files
    assert len(opened["footers"]) == len(list(run_dir.rglob("*.parquet")))  # and reads every footer
    compact(run_dir)
    opened["footers"].clear()
    opened["scans"].clear()
    summary = run_summary(open_run(run_dir))
    assert summary["steps"] == 10 and opened["footers"] == []
    series = step_series(open_run(run_dir))
    live = LiveRun(run_dir)
    live.series()
    live.lengths()
    assert opened["footers"] == []  # the segment's index says what its files hold
    assert not any("tokens-" in p for p in opened["scans"])  # the token aggregates come from the sidecar
    assert {Path(p).parent.parent.name for p in opened["scans"]} == {"compacted"}
    assert series.drop("time", "val/time", "time/record", "val/time/record", strict=False).equals(
        before.drop("time", "val/time", "time/record", "val/time/record", strict=False))
    # the drill-down reads one step's slice of the segment's token file
    row = live.step_rollouts(7).row(0, named=True)
    assert live.rollout_tokens(7, rank=0, phase="train", rollout=row["rollout"]).height == row["num_tokens"]

"""report.html: self-contained, every figure, onsets and events marked, runs overlaid."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from opdwatch.analysis import analyze_run
from opdwatch.reader import open_run
from opdwatch.report import FIGURE_IDS, render_report, write_report
from tests.synthetic_runs import make_run


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list]:
    base = tmp_path_factory.mktemp("report")
    analyses = [analyze_run(open_run(make_run(base / "opd", steps=20, collapse_at=10, seed=0)), label="OPD"),
                analyze_run(open_run(make_run(base / "stable", steps=20, seed=1)), label="Stable-OPD")]
    path = write_report(analyses, base / "report.html")
    return path.read_text(encoding="utf-8"), analyses


def test_contains_every_figure(report) -> None:
    html, _ = report
    for fig_id in FIGURE_IDS:
        assert f"<section id='{fig_id}'" in html
        assert re.search(rf'id="{fig_id}-0"', html), f"{fig_id} has no plotly div"
    assert html.count("Plotly.newPlot") >= len(FIGURE_IDS) + 1  # one length figure per run


def test_works_offline(report) -> None:
    html, _ = report
    from plotly.offline import get_plotlyjs

    assert not re.search(r"<script[^>]*\bsrc=", html)  # nothing loaded from elsewhere
    assert get_plotlyjs()[:2000] in html  # the library itself is inlined


def test_marks_onsets_events_and_verdicts(report) -> None:
    html, analyses = report
    opd = analyses[0]
    assert opd.onset.step is not None
    assert f"onset OPD: step {opd.onset.step}" in html
    assert "class='v-collapsed'>collapsed" in html and "class='v-healthy'>healthy" in html
    assert "truncation collapse &lt;script&gt;" in html  # the alarm, escaped, in the events table
    assert "<script>alert(1)</script>" not in html


def test_marks_collapse_episodes(report, tmp_path: Path) -> None:
    html, analyses = report
    opd = analyses[0]
    (episode,) = opd.verdict.episodes
    assert episode.end is None and f"collapse since step {episode.start}" in html  # summary table
    assert '"type":"rect"' in html and f"OPD: {episode.describe()}" in html  # shaded band with its hover text
    from tests.synthetic_runs import recorded_case

    partial = analyze_run(open_run(recorded_case(tmp_path, "partial", 3)[0]), label="partial")
    page = render_report([partial])
    (ep,) = partial.verdict.episodes
    assert "class='v-collapsed'>collapsed, recovering" in page
    assert f"collapse steps {ep.start}-{ep.end}" in page and page.count('"type":"rect"') >= 4


def test_report_into_missing_directory_is_a_user_error(report, tmp_path: Path) -> None:
    from opdwatch.errors import OpdwatchError

    with pytest.raises(OpdwatchError, match="no such directory"):
        write_report(report[1], tmp_path / "nope" / "r.html")

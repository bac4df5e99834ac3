"""Browser tests of the dashboard: dash[testing]'s ``dash_duo`` driving headless Chromium.

Plain ``pytest`` runs them: :func:`pytest_setup_options` (a hook of dash's pytest plugin, called before
each webdriver starts) always asks for headless Chromium with a fixed window, so no ``--headless`` flag is
needed; dash's plugin itself adds ``--no-sandbox --disable-gpu --disable-dev-shm-usage`` (needed as root
and in containers). Debian's chromium/chromedriver are used (selenium 4.2 cannot fetch drivers); the
tests are skipped when chromedriver or dash[testing] is missing. Screenshots go to
``tests/dashboards/screenshots/``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from opdwatch.recorder import Recorder, RecorderSettings

SCREENSHOTS = Path(__file__).resolve().parent / "screenshots"
WINDOW = "1400,1000"
EOS = 2
SETTINGS = RecorderSettings(tail_window=24, tail_threshold=0.6, ngram_n=3, loop_min_run=4)
WORDS = ["The ", "sum ", "is ", "x ", "+ ", "2 ", "so ", "we ", "get ", "4. "]


def pytest_setup_options():
    from selenium.webdriver.chrome.options import Options

    options = Options()
    options.add_argument("--headless=new")
    options.add_argument(f"--window-size={WINDOW}")
    for flag in ("--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):  # also added by dash; harmless
        options.add_argument(flag)
    if Path("/usr/bin/chromium").exists():
        options.binary_location = "/usr/bin/chromium"
    return options


def pytest_collection_modifyitems(config, items):
    missing = None
    try:
        import dash.testing  # noqa: F401
        import selenium  # noqa: F401
    except ImportError:
        missing = "dash[testing] is not installed"
    if missing is None and shutil.which("chromedriver") is None:
        missing = "chromedriver is not on PATH (apt-get install chromium chromium-driver)"
    if missing:
        for item in items:
            if "dash_duo" in getattr(item, "fixturenames", ()):
                item.add_marker(pytest.mark.skip(reason=missing))


def rollouts(rng: np.random.Generator, step: int, *, collapse_at: int, n: int = 4, html_text: bool = False):
    """n rollouts of a step; from ``collapse_at`` half of them loop until the budget."""
    ids, texts, ends, reasons = [], [], [], []
    for i in range(n):
        if html_text and i == 0:
            pieces = ["<script>", "alert(1)", "</script>", "<b>", "x", "</b>", ""]
            seq = np.array([30, 31, 32, 33, 34, 35, EOS])
            reason = "eos"
        elif step >= collapse_at and i % 2 == 0:
            seq = np.resize(np.array([5, 6, 7]), 40)
            pieces = [WORDS[int(t)] for t in seq]
            reason = "length"
        else:
            seq = np.concatenate([rng.integers(0, len(WORDS), size=int(rng.integers(4, 9))), [EOS]])
            pieces = ["" if t == EOS else WORDS[int(t)] for t in seq]
            reason = "eos"
        ids.append(seq)
        texts.append("".join(pieces))
        ends.append(np.cumsum([len(p) for p in pieces]))
        reasons.append(reason)
    s = [rng.normal(-1.0, 0.3, size=len(x)) for x in ids]
    t = [rng.normal(-1.2, 0.5, size=len(x)) for x in ids]
    return dict(token_ids=ids, student_logp=s, teacher_logp=t, finish_reasons=reasons, texts=texts, char_ends=ends,
                prompt_ids=[f"p{i // 2}" for i in range(n)], sample_index=[i % 2 for i in range(n)],
                prompt_texts=[f"What is {i // 2} + 2?" for i in range(n)])


class RunWriter:
    """A Recorder that writes synthetic steps (the test appends steps while the dashboard watches)."""

    def __init__(self, path: Path, *, collapse_at: int = 8, seed: int = 0) -> None:
        self.rec = Recorder.create(path, config={"name": path.name}, tokenizer_info={"eos_token_ids": [EOS]},
                                   settings=SETTINGS)
        self.rng = np.random.default_rng(seed)
        self.collapse_at = collapse_at
        self.next_step = 0

    def steps(self, count: int, *, html_text_at: int | None = None) -> None:
        for _ in range(count):
            step = self.next_step
            self.rec.record_step(step, **rollouts(self.rng, step, collapse_at=self.collapse_at,
                                                  html_text=step == html_text_at),
                                 correct=[True, False, True, None])
            if step % 4 == 0:
                self.rec.record_step(step, phase="val", **rollouts(self.rng, step, collapse_at=self.collapse_at))
            if step == self.collapse_at + 1:
                self.rec.event("alarm", step=step, message="truncation rate 0.50 >= 0.3")
            self.next_step += 1


@pytest.fixture()
def run_writer() -> type[RunWriter]:
    """``run_writer(path, collapse_at=8).steps(n)`` records n synthetic steps into a run directory."""
    return RunWriter


@pytest.fixture()
def runs_root(tmp_path) -> Path:
    root = tmp_path / "runs"
    root.mkdir()
    return root


@pytest.fixture(scope="session")
def screenshots() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS

"""Save a PNG of each dashboard page for the runs under a directory (for the README and docs).

    python -m opdwatch.dashboards.screenshot RUNS_ROOT OUT_DIR [--run NAME] [--width 1400]

Serves the app on a free localhost port in this process, opens each page in headless Chromium (Debian's
chromium + chromedriver, through selenium from dash[testing]), waits until its figures have drawn, and
writes ``runs.png``, ``run.png``, ``compare.png`` and ``tokens.png`` to OUT_DIR. The run page and the
drill-down show ``--run`` (default: the first run listed); the comparison overlays the first eight runs;
the drill-down opens the run's last step, longest rollout first.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import threading
import time
from pathlib import Path

from opdwatch.dashboards.app import create_app
from opdwatch.dashboards.components import href, run_href, tokens_href
from opdwatch.errors import OpdwatchError
from opdwatch.web_paths import check_runs_root, list_runs

MAX_HEIGHT = 5000
TIMEOUT_S = 60


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs_root", type=Path, metavar="RUNS_ROOT")
    ap.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    ap.add_argument("--run", default=None, help="run shown on the run and token pages (default: the first)")
    ap.add_argument("--width", type=int, default=1400)
    args = ap.parse_args(argv)
    try:
        paths = screenshots(args.runs_root, args.out_dir, run=args.run, width=args.width)
    except OpdwatchError as exc:
        print(f"screenshot: error: {exc}", file=sys.stderr)
        return 2
    for p in paths:
        print(p)
    return 0


def screenshots(runs_root: Path, out_dir: Path, *, run: str | None = None, width: int = 1400) -> list[Path]:
    root = check_runs_root(runs_root)
    names = list_runs(root)
    if not names:
        raise OpdwatchError(f"{root}: no runs to show")
    run = run or names[0]
    if run not in names:
        raise OpdwatchError(f"{run!r} is not a run under {root} (runs: {', '.join(names[:10])})")
    out_dir.mkdir(parents=True, exist_ok=True)
    pages = {
        "runs": ("/", "#runs-list a", 0),  # the list fills in after a callback
        "run": (run_href(run), "#run-fig-trunc .js-plotly-plot", 5),
        "compare": (href("/compare", runs=",".join(names[:8])), "#compare-fig-trunc .js-plotly-plot", 4),
        "tokens": (tokens_href(run), "#tokens-figure .js-plotly-plot", 1),
    }
    server, url = _serve(create_app(root))
    driver = _driver(width)
    written = []
    try:
        for name, (path, ready, graphs) in pages.items():
            driver.get(url + path)
            _wait(driver, ready, graphs)
            height = min(MAX_HEIGHT, max(600, int(driver.execute_script("return document.body.scrollHeight")) + 40))
            driver.set_window_size(width, height)
            time.sleep(1.0)  # plotly redraws at the new size
            target = out_dir / f"{name}.png"
            driver.save_screenshot(str(target))
            written.append(target)
    finally:
        driver.quit()
        server.shutdown()
    return written


def _serve(app) -> tuple[object, str]:  # noqa: ANN001 - a dash.Dash
    import logging

    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request

    server = make_server("127.0.0.1", 0, app.server, threaded=True)  # port 0: the OS picks a free one
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}"


def _driver(width: int):  # noqa: ANN202 - a selenium webdriver
    try:
        from selenium import webdriver
    except ImportError:
        raise OpdwatchError("screenshots need selenium: pip install 'dash[testing]'") from None
    if shutil.which("chromedriver") is None:
        raise OpdwatchError("chromedriver is not on PATH (Debian: apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 f"--window-size={width},1000", "--hide-scrollbars"):
        options.add_argument(flag)
    if Path("/usr/bin/chromium").exists():
        options.binary_location = "/usr/bin/chromium"
    return webdriver.Chrome(options=options)


def _wait(driver, selector: str, graphs: int) -> None:  # noqa: ANN001
    """Until ``selector`` exists and at least ``graphs`` plotly figures hold data (callbacks are done)."""
    deadline = time.monotonic() + TIMEOUT_S
    script = ("return [document.querySelectorAll(arguments[0]).length, Array.from("
              "document.querySelectorAll('.js-plotly-plot')).filter(g => g.data && g.data.length).length];")
    while time.monotonic() < deadline:
        found, drawn = driver.execute_script(script, selector)
        if found and drawn >= graphs:
            return
        time.sleep(0.2)
    raise OpdwatchError(f"{driver.current_url}: the page did not finish drawing in {TIMEOUT_S} s")


if __name__ == "__main__":
    sys.exit(main())

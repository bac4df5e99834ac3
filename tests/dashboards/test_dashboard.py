"""The dashboard in a real headless Chromium: run list, live updates, drill-down, escaping, path safety."""

from __future__ import annotations

import time

from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.by import By

from opdwatch.dashboards.app import create_app

REFRESH_MS = 300
HTML_TEXT = "<script>alert(1)</script><b>x</b>"  # what the synthetic run's first rollout says at one step
TIMEOUT = 15


def points(dash_duo, graph_id: str) -> int:
    """Number of x values of the first trace of a dcc.Graph, as the browser has it."""
    return dash_duo.driver.execute_script(
        "const gd = document.querySelector(arguments[0] + ' .js-plotly-plot');"
        # _fullData: plotly ships numpy arrays as typed-array specs, which plotly.js decodes there
        "return gd && gd._fullData && gd._fullData.length ? gd._fullData[0].x.length : -1;", f"#{graph_id}")


def wait_for(condition, timeout: float = TIMEOUT, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def shot(dash_duo, screenshots, name: str, height: int = 1000) -> None:
    dash_duo.driver.set_window_size(1400, height)
    time.sleep(0.5)  # let plotly finish resizing to the new window
    dash_duo.driver.save_screenshot(str(screenshots / f"{name}.png"))


def test_run_list_shows_runs(dash_duo, run_writer, runs_root, screenshots):
    run_writer(runs_root / "opd-baseline", collapse_at=6).steps(12)
    run_writer(runs_root / "group" / "stable-opd", collapse_at=100).steps(5)
    dash_duo.start_server(create_app(runs_root, refresh_ms=REFRESH_MS))
    dash_duo.wait_for_element("#runs-list", timeout=TIMEOUT)
    dash_duo.wait_for_contains_text("#runs-list", "opd-baseline", timeout=TIMEOUT)
    text = dash_duo.find_element("#runs-list").text
    assert "group/stable-opd" in text and "running" in text
    assert "collapsed" in text or "inflating" in text  # the verdict of the collapsing run
    assert "alarm" in text  # its last alert
    shot(dash_duo, screenshots, "runs", 600)
    dash_duo.find_element("#runs-list a").click()  # the first run listed: group/stable-opd
    dash_duo.wait_for_text_to_equal("#run-title", "group/stable-opd", timeout=TIMEOUT)
    wait_for(lambda: points(dash_duo, "run-fig-trunc") == 5, what="the run's figures")


def test_live_view_gains_new_points(dash_duo, run_writer, runs_root, screenshots):
    writer = run_writer(runs_root / "live", collapse_at=10)
    writer.steps(6)
    dash_duo.start_server(create_app(runs_root, refresh_ms=REFRESH_MS))
    dash_duo.wait_for_page(f"{dash_duo.server_url}/run?run=live", timeout=TIMEOUT)
    wait_for(lambda: points(dash_duo, "run-fig-trunc") == 6, what="the first 6 steps")
    writer.steps(8)  # the run goes on while the page is open
    wait_for(lambda: points(dash_duo, "run-fig-trunc") == 14, what="the 8 appended steps")
    wait_for(lambda: "alarm" in dash_duo.find_element("#run-events").text, what="the alarm event")
    dash_duo.wait_for_contains_text("#run-meta", "last step 13", timeout=TIMEOUT)
    shot(dash_duo, screenshots, "run", 2600)
    assert dash_duo.get_logs() == [] or all("favicon" in e["message"] for e in dash_duo.get_logs())


def test_click_on_a_point_opens_the_steps_rollouts(dash_duo, run_writer, runs_root):
    run_writer(runs_root / "r", collapse_at=4).steps(8)
    dash_duo.start_server(create_app(runs_root, refresh_ms=REFRESH_MS))
    dash_duo.wait_for_page(f"{dash_duo.server_url}/run?run=r", timeout=TIMEOUT)
    wait_for(lambda: points(dash_duo, "run-fig-logp") == 8, what="the figure")
    # what plotly emits on a click on the point of step 5 (the shared figures carry the step in customdata)
    dash_duo.driver.execute_script(
        "const gd = document.querySelector('#run-fig-logp .js-plotly-plot');"
        "gd.emit('plotly_click', {points: [{x: 5, y: 0, curveNumber: 0, pointNumber: 5, customdata: [5]}]});")
    dash_duo.wait_for_element("#tokens-list", timeout=TIMEOUT)
    assert "step=5" in dash_duo.driver.current_url
    dash_duo.wait_for_contains_text("#tokens-selected h4", "step 5", timeout=TIMEOUT)


def test_drill_down_shows_tokens_and_escapes_model_text(dash_duo, run_writer, runs_root, screenshots):
    writer = run_writer(runs_root / "r", collapse_at=3)
    writer.steps(4)
    writer.steps(1, html_text_at=4)
    dash_duo.start_server(create_app(runs_root, refresh_ms=REFRESH_MS))
    # the looping rollout is listed first (longest) and shown by default, tokens and all
    dash_duo.wait_for_page(f"{dash_duo.server_url}/tokens?run=r&step=3", timeout=TIMEOUT)
    dash_duo.wait_for_element("#tokens-figure .js-plotly-plot", timeout=TIMEOUT)
    first_row = dash_duo.find_elements("#tokens-list tbody tr")[0].text
    assert "length" in first_row and " 40 " in f" {first_row} "
    bars = dash_duo.driver.execute_script(
        "return document.querySelector('#tokens-figure .js-plotly-plot').data[0].text.length;")
    assert bars == 40
    assert dash_duo.find_element("#tokens-text").text.startswith("2 so we 2 so we")  # the loop
    dash_duo.wait_for_element("#tokens-history", timeout=TIMEOUT)
    shot(dash_duo, screenshots, "tokens", 1800)
    # a rollout whose text is HTML: shown as text, nothing executed or rendered as markup
    dash_duo.wait_for_page(f"{dash_duo.server_url}/tokens?run=r&step=4&order=advantage", timeout=TIMEOUT)
    dash_duo.find_element("#tokens-pick-0-0").click()
    dash_duo.wait_for_text_to_equal("#tokens-text", HTML_TEXT, timeout=TIMEOUT)
    assert dash_duo.driver.find_elements(By.CSS_SELECTOR, "#tokens-text b") == []
    assert dash_duo.driver.find_elements(By.CSS_SELECTOR, "#tokens-selected script") == []
    labels = dash_duo.driver.execute_script(
        "return document.querySelector('#tokens-figure .js-plotly-plot').data[0].text;")
    assert "&lt;script&gt;" in labels  # the figure escapes what plotly would otherwise render
    try:
        dash_duo.driver.switch_to.alert.dismiss()
        raise AssertionError("the model's <script> ran")
    except NoAlertPresentException:
        pass


def test_compare_overlays_runs(dash_duo, run_writer, runs_root, screenshots):
    run_writer(runs_root / "opd", collapse_at=5, seed=1).steps(12)
    run_writer(runs_root / "stable-opd", collapse_at=100, seed=2).steps(12)
    dash_duo.start_server(create_app(runs_root, refresh_ms=REFRESH_MS))
    dash_duo.wait_for_page(f"{dash_duo.server_url}/compare?runs=opd,stable-opd", timeout=TIMEOUT)
    wait_for(lambda: dash_duo.driver.execute_script(
        "const gd = document.querySelector('#compare-fig-trunc .js-plotly-plot');"
        "return gd && gd.data ? new Set(gd.data.map(t => t.legendgroup)).size : 0;") == 2, what="two runs")
    shot(dash_duo, screenshots, "compare", 2400)


def test_paths_outside_the_root_are_refused(dash_duo, run_writer, runs_root, tmp_path):
    run_writer(tmp_path / "secret").steps(2)  # a real run, but outside RUNS_ROOT
    run_writer(runs_root / "ok").steps(2)
    (runs_root / "escape").symlink_to(tmp_path / "secret")
    dash_duo.start_server(create_app(runs_root, refresh_ms=REFRESH_MS))
    for url in ("/run?run=../secret", "/run?run=escape", f"/run?run={tmp_path / 'secret'}",
                "/tokens?run=..%2Fsecret&step=0", "/run?run=ok/../../secret"):
        dash_duo.wait_for_page(f"{dash_duo.server_url}{url}", timeout=TIMEOUT)
        dash_duo.wait_for_element("#run-refused, #tokens-refused", timeout=TIMEOUT)
        assert "Cannot open this run" in dash_duo.find_element(".opd-page, #run-refused, #tokens-refused").text
        assert dash_duo.driver.find_elements(By.CSS_SELECTOR, "#run-fig-trunc, #tokens-list") == []
    dash_duo.wait_for_page(f"{dash_duo.server_url}/compare?runs=../secret,ok", timeout=TIMEOUT)
    wait_for(lambda: points(dash_duo, "compare-fig-trunc") == 2, what="the one allowed run")
    assert "secret" not in dash_duo.find_element("#compare-runs").text


def csp_problems(dash_duo) -> list[str]:
    """Console errors about the Content-Security-Policy since the last call, plus the violations the page
    itself recorded (see WATCH_CSP)."""
    logs = [e["message"] for e in dash_duo.get_logs()
            if "Content Security Policy" in e["message"] or "Refused to" in e["message"]]
    dash_duo.reset_log_timestamp()
    seen = dash_duo.driver.execute_script("return window.__csp || [];")
    return logs + [f"{v['directive']}: {v['blocked']}" for v in seen]


# Violations after the page loaded (async chunks, plotly drawing, callbacks) are recorded by the page.
WATCH_CSP = ("window.__csp = window.__csp || [];"
             "document.addEventListener('securitypolicyviolation', e => window.__csp.push("
             "{directive: e.violatedDirective, blocked: e.blockedURI}));")


def test_pages_render_under_the_csp(dash_duo, run_writer, runs_root):
    """Every page under the dashboard's real Content-Security-Policy: no violation, graphs drawn."""
    import urllib.request

    writer = run_writer(runs_root / "r", collapse_at=3)
    writer.steps(5)
    writer.steps(1, html_text_at=5)
    run_writer(runs_root / "s", collapse_at=100, seed=3).steps(6)
    dash_duo.start_server(create_app(runs_root, refresh_ms=REFRESH_MS))
    with urllib.request.urlopen(dash_duo.server_url + "/") as resp:  # the policy is on (loopback only)
        csp = resp.headers["Content-Security-Policy"]
        assert "script-src 'self' 'sha256-" in csp and "unsafe-eval" not in csp
        assert resp.headers["X-Frame-Options"] == "DENY"
    pages = [("/", "#runs-list", None), ("/run?run=r", "#run-events-table", "run-fig-trunc"),
             ("/compare?runs=r,s", "#compare-links a", "compare-fig-logp"),
             ("/tokens?run=r&step=3", "#tokens-list", "tokens-figure")]
    for url, ready, graph_id in pages:
        dash_duo.wait_for_page(f"{dash_duo.server_url}{url}", timeout=TIMEOUT)
        dash_duo.driver.execute_script(WATCH_CSP)
        dash_duo.wait_for_element(ready, timeout=TIMEOUT)
        if graph_id:
            wait_for(lambda g=graph_id: dash_duo.driver.execute_script(
                "const gd = document.querySelector('#' + arguments[0] + ' .js-plotly-plot');"
                "return gd && gd._fullData && gd._fullData.length > 0 && !!gd.querySelector('.main-svg');", g),
                what=f"{graph_id} drawn")
        time.sleep(3 * REFRESH_MS / 1000)  # a few live refreshes (callbacks, patches) under the policy
        assert csp_problems(dash_duo) == [], url
    # a click still navigates (plotly events, dcc.Location) under the policy
    dash_duo.wait_for_page(f"{dash_duo.server_url}/run?run=r", timeout=TIMEOUT)
    wait_for(lambda: points(dash_duo, "run-fig-logp") == 6, what="the figure")
    dash_duo.driver.execute_script(
        "const gd = document.querySelector('#run-fig-logp .js-plotly-plot');"
        "gd.emit('plotly_click', {points: [{x: 4, y: 0, curveNumber: 0, pointNumber: 4, customdata: [4]}]});")
    dash_duo.wait_for_contains_text("#tokens-selected h4", "step 4", timeout=TIMEOUT)
    assert csp_problems(dash_duo) == []


def test_the_csp_blocks_an_injected_inline_script(dash_duo, run_writer, runs_root):
    """The policy is enforced, and the checks above would see a violation: an inline script added to the
    page does not run, and it is reported both on the console and to the page's listener."""
    run_writer(runs_root / "r").steps(2)
    dash_duo.start_server(create_app(runs_root, refresh_ms=REFRESH_MS))
    dash_duo.wait_for_page(f"{dash_duo.server_url}/", timeout=TIMEOUT)
    dash_duo.wait_for_element("#runs-list", timeout=TIMEOUT)
    dash_duo.driver.execute_script(WATCH_CSP)
    ran = dash_duo.driver.execute_script(
        "const s = document.createElement('script'); s.textContent = 'window.__injected = 1';"
        "document.body.appendChild(s); return window.__injected === 1;")
    assert ran is False
    wait_for(lambda: dash_duo.driver.execute_script("return (window.__csp || []).length") >= 1,
             what="the page's violation report")
    assert any("Content Security Policy" in e["message"] for e in dash_duo.get_logs())

"""The dashboard's web boundary through real HTTP requests to its server on 127.0.0.1 (no browser).

Host-header check (DNS rebinding), security headers, callbacks sent values of the wrong type, one broken
run among good ones, runs reached through symlinks, steps beyond int32.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("dash")

from opdwatch.dashboards.app import create_app  # noqa: E402
from opdwatch.recorder import Recorder  # noqa: E402
from tests.dashboards.conftest import EOS, SETTINGS  # noqa: E402
from tests.dashboards.served import call, get, serve  # noqa: E402

SECRET = "SECRET-OUTSIDE-THE-ROOT"


def page(base: str, app, path: str, search: str = "") -> tuple[int, str]:  # noqa: ANN001
    """What the page-routing callback answers for a URL (the layout a browser would render), as text."""
    get(base, "/")  # the first request registers the pages' callbacks
    status, out = call(base, app, "_pages_content", {"_pages_location.pathname": path,
                                                      "_pages_location.search": search})
    return status, json.dumps(out)


def text_run(path, text: str, *, steps=(0,)) -> None:  # noqa: ANN001
    """A small run whose rollouts (and prompts) all say ``text``."""
    rec = Recorder.create(path, config={}, tokenizer_info={"eos_token_ids": [EOS]}, settings=SETTINGS)
    for step in steps:
        ids = [np.array([5, 6, EOS]), np.array([7, EOS])]
        rec.record_step(step, token_ids=ids, finish_reasons=["eos", "eos"], texts=[text, text],
                        student_logp=[np.full(len(i), -1.0) for i in ids],
                        teacher_logp=[np.full(len(i), -1.5) for i in ids],
                        prompt_ids=["p0", "p1"], prompt_texts=[f"{text} prompt"] * 2)
        rec.event("warning", step=step, message=f"{text} event")
    rec.close()


# ----------------------------------------------------------------------------------------- host header
def test_foreign_host_header_is_refused(runs_root, run_writer):
    run_writer(runs_root / "r").steps(2)
    app = create_app(runs_root)
    with serve(app) as base:
        port = base.rsplit(":", 1)[1]
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "localhost", "LOCALHOST."):
            assert get(base, "/", host=host)[0] == 200, host
        for host in (f"evil.example:{port}", "evil.example", f"localhost.evil.example:{port}", "127.0.0.2",
                     f"[::2]:{port}", "", "local host", "localhost:99999"):
            status, _, body = get(base, "/", host=host)
            assert status == 400, host
            assert b"--allow-host" in body and b"<" not in body  # one line of plain text, nothing echoed as HTML
        # callbacks too: a DNS-rebinding page would POST them from its own origin
        assert call(base, app, "runs-table", {"runs-tick.n_intervals": 1}, host=f"evil.example:{port}")[0] == 400
        assert call(base, app, "runs-table", {"runs-tick.n_intervals": 1}, host=f"127.0.0.1:{port}")[0] == 200


def test_allowed_hosts_are_configurable(runs_root):
    app = create_app(runs_root, allowed_hosts=["dash.example.org", "10.0.0.5:8050", "fe80::1"])
    with serve(app) as base:
        for host in ("dash.example.org", "DASH.example.org:443", "10.0.0.5:8050", "[fe80::1]:8050", "localhost"):
            assert get(base, "/", host=host)[0] == 200, host
        assert get(base, "/", host="other.example.org")[0] == 400


# --------------------------------------------------------------------------------------------- headers
def test_security_headers_on_pages_callbacks_assets_and_errors(runs_root, run_writer):
    run_writer(runs_root / "r").steps(2)
    app = create_app(runs_root)
    with serve(app) as base:
        _, _, index = get(base, "/")
        asset = next(p for p in index.decode().split('"') if p.startswith("/_dash-component-suites/"))
        responses = [get(base, "/"), get(base, "/run?run=r"), get(base, asset), get(base, "/_dash-layout"),
                     get(base, "/no-such-file.js"), get(base, "/", host="evil.example")]
        for status, headers, _ in responses:
            assert status in (200, 400, 404)
            assert headers["x-frame-options"] == "DENY"
            assert headers["x-content-type-options"] == "nosniff"
            assert headers["referrer-policy"] == "no-referrer"
            csp = headers["content-security-policy"]
            assert "frame-ancestors 'none'" in csp and "object-src 'none'" in csp
            assert "default-src 'self'" in csp
            script_src = next(d for d in csp.split(";") if d.strip().startswith("script-src"))
            assert "'unsafe-inline'" not in script_src  # inline scripts only by hash
        status, headers, _ = call_headers(base, app)
        assert status == 200 and headers["x-frame-options"] == "DENY"


def call_headers(base, app):  # noqa: ANN001
    from tests.dashboards.served import callback_spec, outputs_of, request

    key, _ = callback_spec(app, "runs-table")
    body = {"output": key, "outputs": outputs_of(key), "inputs": [{"id": "runs-tick", "property": "n_intervals",
                                                                   "value": 1}],
            "changedPropIds": ["runs-tick.n_intervals"], "state": []}
    return request(base, "/_dash-update-component", method="POST", body=json.dumps(body).encode(),
                   headers={"Content-Type": "application/json"})


def test_csp_hashes_cover_every_inline_script(runs_root):
    """Every inline script of the index page is allowed by its hash (else the page would be blank)."""
    import base64
    import hashlib
    import re

    app = create_app(runs_root)
    with serve(app) as base:
        _, headers, body = get(base, "/")
    csp = headers["content-security-policy"]
    html = re.sub(r"<!--.*?-->", "", body.decode(), flags=re.S)  # Dash's <!--[if IE]> warning never runs
    inline = re.findall(r"<script(?![^>]*\bsrc=)([^>]*)>(.*?)</script>", html, flags=re.S)
    executed = [code for attrs, code in inline if "application/json" not in attrs]
    assert len(executed) >= 2  # Dash's renderer start-up and the pages' clientside callback at least
    for code in executed:
        digest = base64.b64encode(hashlib.sha256(code.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in csp


# --------------------------------------------------------------------------------- wrong-typed values
@pytest.mark.parametrize("value", [3, [1, 2], None, [["r"]], {"a": 1}, "r", [None, "r"], 1.5, True, [{"x": 1}]])
def test_compare_callback_answers_wrong_typed_run_values(runs_root, run_writer, value):
    run_writer(runs_root / "r").steps(3)
    app = create_app(runs_root)
    with serve(app) as base:
        get(base, "/compare")
        status, out = call(base, app, "compare-error", {"compare-runs.value": value, "compare-tick.n_intervals": 1,
                                                        "compare-version.data": None})
    assert status in (200, 204), out
    if status == 200:
        error = out["response"]["compare-error"]["children"]
        assert "\n" not in error
        if value in (3, 1.5, True, {"a": 1}):
            assert "ignored" in error


def test_compare_callback_answers_a_wrong_typed_version_state(runs_root, run_writer):
    run_writer(runs_root / "r").steps(3)
    app = create_app(runs_root)
    with serve(app) as base:
        get(base, "/compare")
        for shown in (3, "x", [[1]], {"a": [1]}):
            status, _ = call(base, app, "compare-error", {"compare-runs.value": ["r"], "compare-version.data": shown})
            assert status in (200, 204)


def test_run_callback_answers_a_wrong_typed_store(runs_root, run_writer):
    run_writer(runs_root / "r").steps(3)
    app = create_app(runs_root)
    with serve(app) as base:
        get(base, "/run?run=r")
        for name, shown in (("r", 3), ("r", "x"), ("r", [1]), (3, None), (["r"], None), ({"a": 1}, {"version": []})):
            status, _ = call(base, app, "run-meta", {"run-tick.n_intervals": 1, "run-name.data": name,
                                                     "run-version.data": shown})
            assert status in (200, 204), (name, shown)


@pytest.mark.parametrize(("path", "search"), [
    ("/compare", "?runs=r&runs=r"),              # a repeated key reaches the layout as a list
    ("/compare", "?runs="),
    ("/tokens", "?run=r&step=1&step=2"),
    ("/tokens", "?run=r&order=length&order=advantage"),
    ("/tokens", "?run=r&phase=train&phase=val"),
    ("/tokens", "?run=r&rank=0&rank=1&rollout=1&rollout=2"),
    ("/tokens", "?run=r&run=r"),
    ("/run", "?run=r&run=r"),
])
def test_pages_answer_repeated_query_keys(runs_root, run_writer, path, search):
    run_writer(runs_root / "r").steps(3)
    app = create_app(runs_root)
    with serve(app) as base:
        status, out = page(base, app, path, search)
    assert status == 200, out


@pytest.mark.parametrize("click", [5, "x", [1], {"points": 3}, {"points": [3]}, {"points": [{"x": [1]}]},
                                   {"points": [{"x": 2.5}]}, {"points": [{"customdata": {"a": 1}}]}])
def test_click_callback_answers_malformed_click_data(runs_root, run_writer, click):
    run_writer(runs_root / "r").steps(3)
    app = create_app(runs_root)
    with serve(app) as base:
        get(base, "/run?run=r")
        status, _ = call(base, app, "run-nav", {"run-fig-trunc.clickData": click, "run-name.data": "r"})
    assert status in (200, 204)


# ------------------------------------------------------------------------------------------ big steps
def test_click_on_a_step_beyond_int32_opens_that_step(runs_root, run_writer):
    big = 10**15
    writer = run_writer(runs_root / "big", collapse_at=100)
    writer.steps(2)
    writer.next_step = big
    writer.steps(1)
    app = create_app(runs_root)
    with serve(app) as base:
        get(base, "/run?run=big")
        status, out = call(base, app, "run-meta", {"run-tick.n_intervals": 1, "run-name.data": "big"})
        assert status == 200
        trace = out["response"]["run-fig-trunc"]["figure"]["data"][0]
        assert trace["x"] == [0, 1, big]  # JSON numbers, not an int32 typed array
        point = {"x": trace["x"][-1], "customdata": trace["customdata"][-1], "curveNumber": 0, "pointNumber": 2}
        status, out = call(base, app, "run-nav", {"run-fig-trunc.clickData": {"points": [point]},
                                                  "run-name.data": "big"})
    assert status == 200
    assert f"step={big}&" in out["response"]["run-nav"]["href"] + "&"


# ------------------------------------------------------------------------------------------ run lists
def broken_runs(runs_root, run_writer) -> None:  # noqa: ANN001
    run_writer(runs_root / "good").steps(3)
    bad = runs_root / "garbage-manifest"
    run_writer(bad).steps(2)
    (bad / "manifest.json").write_text("{not json at all")
    typed = runs_root / "string-step"
    run_writer(typed).steps(3)
    for f in sorted((typed / "steps").rglob("*.parquet"))[:1]:
        table = pq.read_table(f)
        i = table.schema.get_field_index("step")
        pq.write_table(table.set_column(i, "step", pa.array([str(v) for v in table["step"].to_pylist()])), f)


def test_run_list_shows_the_good_runs_next_to_broken_ones(runs_root, run_writer, monkeypatch):
    broken_runs(runs_root, run_writer)
    run_writer(runs_root / "explodes").steps(1)
    import opdwatch.dashboards.state

    real = opdwatch.dashboards.state.LiveRun

    def live_run(path, **kwargs):  # noqa: ANN001, ANN202 - any exception from one run, not only known ones
        if path.name == "explodes":
            raise RuntimeError("boom\nsecond line")
        return real(path, **kwargs)

    monkeypatch.setattr(opdwatch.dashboards.state, "LiveRun", live_run)
    app = create_app(runs_root)
    with serve(app) as base:
        get(base, "/")
        status, out = call(base, app, "runs-table", {"runs-tick.n_intervals": 1})
        assert status == 200, out
        text = json.dumps(out)
        rows = out["response"]["runs-table"]["children"]["props"]["children"][1]["props"]["children"]
        cells = {json.dumps(r["props"]["children"][0]): r for r in rows}
        assert len(rows) == 4
        assert any('"href": "/run?run=good"' in c for c in cells)
        assert "garbage-manifest" in text and "string-step" in text and "explodes" in text
        assert "boom" in text and "second line" not in text  # a short error in the run's row
        # the compare page overlays the good run and names the ones it could not open
        status, out = call(base, app, "compare-error", {
            "compare-runs.value": ["good", "garbage-manifest", "string-step", "explodes"]})
        assert status == 200, out
        assert out["response"]["compare-links"]["children"][0]["props"]["children"] == "good"
        assert "explodes" in out["response"]["compare-error"]["children"]


# ------------------------------------------------------------------------------------------- symlinks
@pytest.mark.parametrize("linked", ["rollouts", "tokens", "steps", "events", "step-dir", "file"])
def test_symlinks_out_of_the_root_are_not_followed(runs_root, tmp_path, linked):
    outside = tmp_path / "outside"
    text_run(outside, SECRET, steps=(7,))
    inside = runs_root / "inside"
    text_run(inside, "harmless text", steps=(0,))
    if linked in ("rollouts", "tokens", "steps", "events"):
        target = inside / linked
        import shutil

        shutil.rmtree(target)
        target.symlink_to(outside / linked, target_is_directory=True)
    elif linked == "step-dir":
        step_dir = next((inside / "rollouts").iterdir())
        import shutil

        shutil.rmtree(step_dir)
        step_dir.symlink_to(outside / "rollouts" / step_dir.name, target_is_directory=True)
    else:
        f = next((inside / "rollouts").rglob("*.parquet"))
        f.unlink()
        f.symlink_to(next((outside / "rollouts").rglob("*.parquet")))
    app = create_app(runs_root)
    with pytest.warns(UserWarning, match="outside the runs root"), serve(app) as base:
        shown = [page(base, app, "/tokens", "?run=inside&step=0"), page(base, app, "/run", "?run=inside")]
        get(base, "/run?run=inside")
        shown.append(call(base, app, "run-meta", {"run-tick.n_intervals": 1, "run-name.data": "inside"}))
        shown.append(call(base, app, "runs-table", {"runs-tick.n_intervals": 1}))
        shown.append(call(base, app, "compare-error", {"compare-runs.value": ["inside"]}))
    for status, body in shown:
        assert status in (200, 204)
        assert SECRET not in json.dumps(body)
    live = app.server.extensions["opdwatch"].get("inside").live  # what the pages read from
    root = runs_root.resolve()
    for table in ("steps", "rollouts", "tokens"):
        assert all(p.path.resolve().is_relative_to(root) for p in live.table_parts(table))
    assert 7 not in live.steps().collect()["step"].to_list() and 7 not in live.rollout_steps()
    assert not live.events()["message"].str.contains(SECRET).any()


def test_symlinks_inside_the_root_still_work(runs_root):
    text_run(runs_root / "a", "text of run a")
    inside = runs_root / "b"
    text_run(inside, "text of run b")
    import shutil

    shutil.rmtree(inside / "rollouts")
    (inside / "rollouts").symlink_to(runs_root / "a" / "rollouts", target_is_directory=True)
    app = create_app(runs_root)
    with serve(app) as base:
        status, body = page(base, app, "/tokens", "?run=b&step=0")
    assert status == 200 and "text of run a" in body


# ---------------------------------------------------------------------------------------- run labels
def test_a_run_is_labelled_by_its_canonical_name_whatever_opened_it(runs_root, run_writer):
    run_writer(runs_root / "group" / "real").steps(2)
    (runs_root / "alias").symlink_to(runs_root / "group" / "real", target_is_directory=True)
    app = create_app(runs_root)
    with serve(app) as base:
        get(base, "/compare")
        status, out = call(base, app, "compare-error", {"compare-runs.value": ["alias"]})
        assert status == 200
        assert out["response"]["compare-links"]["children"][0]["props"]["children"] == "group/real"
        assert out["response"]["compare-version"]["data"][0][0] == "group/real"
        legend = {t.get("legendgroup") for t in out["response"]["compare-fig-trunc"]["figure"]["data"]}
        assert legend == {"group/real"}
        for path, search in (("/run", "?run=alias"), ("/tokens", "?run=group/./real")):
            status, body = page(base, app, path, search)  # titles, links and stores use the canonical name
            assert status == 200 and "group/real" in body
            assert "alias" not in body and "/./" not in body
    reg = app.server.extensions["opdwatch"]
    for name in ("group/./real", "alias", "group/real", "alias/."):
        assert reg.get(name).name == "group/real"

"""The dashboard's Flask server on a real loopback socket, and raw HTTP requests to it (no browser).

    with serve(create_app(root)) as base:                # "http://127.0.0.1:<free port>"
        status, headers, body = get(base, "/", host="evil.example")
        status, out = call(base, app, "compare-error", {"compare-runs.value": 3})

:func:`call` builds the body Dash's renderer POSTs to ``/_dash-update-component`` (``output``, ``outputs``,
``inputs``, ``changedPropIds``, ``state``) from the app's callback map, so a test can send values of any
type, as a hostile page could.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from werkzeug.serving import make_server


@contextmanager
def serve(app: Any) -> Iterator[str]:  # noqa: ANN401 - a dash.Dash
    """Serve ``app.server`` on 127.0.0.1 (a free port) in a thread; yields the base URL."""
    server = make_server("127.0.0.1", 0, app.server, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


def request(base: str, path: str, *, method: str = "GET", body: bytes | None = None,
            host: str | None = None, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """(status, headers with lower-case names, body) of one request; ``host`` forges the Host header."""
    url = urlsplit(base)
    assert url.hostname in ("127.0.0.1", "::1", "localhost")  # these tests only ever talk to loopback
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    sent = dict(headers or {})
    if host is not None:
        sent["Host"] = host  # http.client then leaves out its own Host header
    try:
        conn.request(method, path, body=body, headers=sent)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def get(base: str, path: str, **kwargs: Any) -> tuple[int, dict[str, str], bytes]:
    return request(base, path, **kwargs)


def outputs_of(key: str) -> list[dict[str, str]]:
    """The outputs named by a callback-map key: "id.prop", or "..id.prop...id2.prop2.." for several."""
    parts = key[2:-2].split("...") if key.startswith("..") else [key]
    return [dict(zip(("id", "property"), part.rsplit(".", 1), strict=True)) for part in parts]


def callback_spec(app: Any, output_id: str) -> tuple[str, dict[str, Any]]:  # noqa: ANN401
    """The callback-map key and spec of the callback that writes component ``output_id`` (the map is
    filled on the first request, so GET a page before calling this)."""
    for key, spec in app.callback_map.items():
        if any(o["id"] == output_id for o in outputs_of(key)):
            return key, spec
    raise KeyError(output_id)


def call(base: str, app: Any, output_id: str, values: dict[str, Any], *,  # noqa: ANN401
         changed: list[str] | None = None, host: str | None = None) -> tuple[int, Any]:
    """POST a callback request as Dash's renderer encodes it. ``values`` maps "id.property" of the
    callback's inputs and states to what to send (missing ones are sent as None); ``changed`` defaults to
    every input given. Returns (status, parsed JSON body or the raw text, or None when empty)."""
    key, spec = callback_spec(app, output_id)
    outputs = outputs_of(key)

    def entries(items: list[dict[str, str]]) -> list[dict[str, Any]]:
        return [{**item, "value": values.get(f"{item['id']}.{item['property']}")} for item in items]

    inputs = entries(spec["inputs"])
    if changed is None:
        changed = [f"{i['id']}.{i['property']}" for i in inputs if f"{i['id']}.{i['property']}" in values]
    body = {"output": key, "outputs": outputs if key.startswith("..") else outputs[0], "inputs": inputs,
            "changedPropIds": changed, "state": entries(spec["state"])}
    status, _headers, raw = request(base, "/_dash-update-component", method="POST", host=host,
                                    body=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    if not raw:
        return status, None
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode("utf-8", "replace")

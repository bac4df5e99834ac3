"""The dashboard's HTTP hardening: a Host-header allow list and security headers on every response.

    install_security(app, allowed_hosts("127.0.0.1"))   # a dash.Dash; hooks on its Flask server

* Requests whose ``Host`` is not an allowed name get HTTP 400 before Dash sees them (DNS rebinding:
  see :mod:`dashboards.hosts`).
* Every response, errors included, carries :data:`HEADERS` and a Content-Security-Policy (:func:`csp`):
  scripts only from this origin plus Dash's own inline start-up scripts, allowed by their sha256 hashes
  (``dash.Dash.csp_hashes``), so an injected inline script would not run; no framing, no plugins, no
  requests to other origins.
"""

from __future__ import annotations

from collections.abc import Collection

import dash
from flask import Response, request

from opdwatch.dashboards.hosts import host_name

HEADERS = {
    "X-Frame-Options": "DENY",                  # no clickjacking through a frame (older browsers)
    "X-Content-Type-Options": "nosniff",        # callback JSON is never run as a script
    "Referrer-Policy": "no-referrer",           # run names in URLs do not leak to other sites
    "Cross-Origin-Resource-Policy": "same-origin",  # other sites cannot embed our responses
}
# Measured in headless Chromium (tests/dashboards/test_dashboard.py::test_pages_render_under_the_csp):
# Dash 4 / plotly.js need no 'unsafe-eval'; plotly writes <style> elements and style attributes, hence
# style-src 'unsafe-inline' (styles cannot run code); plotly's modebar and image export use data: images.
POLICY = {
    "default-src": ["'self'"],
    "script-src": ["'self'"],                   # + the hashes of Dash's inline scripts, see csp()
    "style-src": ["'self'", "'unsafe-inline'"],
    "img-src": ["'self'", "data:"],
    "font-src": ["'self'", "data:"],
    "connect-src": ["'self'"],
    "object-src": ["'none'"],
    "base-uri": ["'self'"],
    "form-action": ["'self'"],
    "frame-ancestors": ["'none'"],
}


def csp(app: dash.Dash) -> str:
    """The Content-Security-Policy header value for ``app``'s pages."""
    # Computed per response: Dash adds the inline scripts of clientside callbacks when it sets the server
    # up (first request), so a policy computed at start-up could miss some. Hashing them costs microseconds.
    policy = {**POLICY, "script-src": [*POLICY["script-src"], *app.csp_hashes()]}
    return "; ".join(f"{name} {' '.join(values)}" for name, values in policy.items())


def install_security(app: dash.Dash, hosts: Collection[str]) -> None:
    """Refuse requests for other host names (400) and add the security headers to every response."""
    server = app.server
    allowed = frozenset(hosts)

    def check_host() -> Response | None:
        raw = request.environ.get("HTTP_HOST")
        if host_name(raw) in allowed:
            return None
        # plain text, and the header value is not echoed: nothing a browser could render
        return Response("opdwatch dashboard: this host name is not allowed; serve with --allow-host NAME to "
                        "allow it\n", status=400, mimetype="text/plain")

    def add_headers(response: Response) -> Response:
        for name, value in HEADERS.items():
            response.headers.setdefault(name, value)
        response.headers.setdefault("Content-Security-Policy", csp(app))
        return response

    # First in line: a foreign Host is refused before any other hook (Dash's server set-up included) runs.
    server.before_request_funcs.setdefault(None, []).insert(0, check_host)
    server.after_request(add_headers)


__all__ = ["HEADERS", "POLICY", "csp", "install_security"]

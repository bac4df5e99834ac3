"""The dashboard app shell: navigation, the page container and the runs root.

    app = create_app(Path("runs"))      # a dash.Dash; pages live in dashboards/pages/
    serve(Path("runs"), host="127.0.0.1", port=8050, debug=False)

Pages (one module each, registered with ``dash.register_page``): ``/`` run list, ``/run`` live run view,
``/compare`` several runs overlaid, ``/tokens`` the token drill-down. Runs are named in URLs by their path
relative to the runs root; every name goes through :func:`opdwatch.web_paths.resolve_run`. Only the allowed
host names are answered and every response carries security headers (:mod:`dashboards.security`; the
security model is in docs/dashboard.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import dash
from dash import dcc, html

from opdwatch.dashboards.components import REFRESH_MS
from opdwatch.dashboards.hosts import allowed_hosts as host_allow_list
from opdwatch.dashboards.security import install_security
from opdwatch.dashboards.state import install
from opdwatch.web_paths import check_runs_root

HERE = Path(__file__).resolve().parent
PAGES = HERE / "pages"
CONFIG_REFRESH = "OPDWATCH_REFRESH_MS"


def create_app(runs_root: Path, *, refresh_ms: int = REFRESH_MS, allowed_hosts: Iterable[str] = ()) -> dash.Dash:
    """A Dash app serving the runs under ``runs_root`` (checked now; nothing else is read until a page
    asks). ``refresh_ms`` is the live views' polling period; requests are answered for localhost,
    127.0.0.1, [::1] and the ``allowed_hosts`` names only (ValueError on a value that is no host name)."""
    hosts = host_allow_list(None, allowed_hosts)
    root = check_runs_root(runs_root)
    # Dash executes the page files anew for every app (as modules "pages.<page>"), so each app gets
    # its own copy of the pages' callbacks. Folders are given explicitly: Dash's guess from the package
    # fails when an editable install maps ``dashboards`` as a namespace package.
    app = dash.Dash(__name__, use_pages=True, pages_folder=str(PAGES), assets_folder=str(HERE / "assets"),
                    suppress_callback_exceptions=True, title="opdwatch", update_title=None)
    install(app.server, root)
    install_security(app, hosts)
    app.server.config[CONFIG_REFRESH] = int(refresh_ms)
    app.layout = html.Div([
        html.Nav([
            html.Span("opdwatch", className="opd-brand"),
            dcc.Link("runs", href="/", id="nav-runs"),
            dcc.Link("compare", href="/compare", id="nav-compare"),
            html.Span(str(root), className="opd-root", title="runs root"),
        ], className="opd-nav"),
        dash.page_container,
    ], className="opd-shell")
    return app


def serve(runs_root: Path, host: str = "127.0.0.1", port: int = 8050, debug: bool = False, *,
          allow_hosts: Iterable[str] = ()) -> None:
    """Serve the dashboard (blocking). Binds ``host`` (localhost by default: run data is not public) and
    answers requests for the loopback names, ``host`` when it names one interface, and ``allow_hosts``."""
    app = create_app(runs_root, allowed_hosts=host_allow_list(host, allow_hosts))
    app.run(host=host, port=port, debug=debug)

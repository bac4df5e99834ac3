"""`opdwatch dashboard RUNS_ROOT`: serve the live dashboard of the runs under RUNS_ROOT (dash, localhost)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from opdwatch.errors import OpdwatchError
from opdwatch.web_paths import check_runs_root


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs_root", metavar="RUNS_ROOT", help="directory holding run directories (searched 3 levels)")
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to bind (default 127.0.0.1; 0.0.0.0 exposes run data to the network)")
    p.add_argument("--port", type=int, default=8050, help="port (default 8050)")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="also answer requests whose Host header names NAME (repeatable), e.g. the public name "
                   "of a reverse proxy in front of the dashboard; others get HTTP 400 (DNS rebinding)")
    p.add_argument("--debug", action="store_true", help="Dash debug mode (reloader, dev tools); never on a shared host")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    root = check_runs_root(args.runs_root)  # one-line error before dash is even imported
    if not 0 < args.port < 65536:
        raise OpdwatchError(f"--port must be in 1..65535, got {args.port}")
    from opdwatch.dashboards.hosts import allowed_hosts, is_loopback  # plain Python: no dash import yet

    try:
        allowed_hosts(args.host, args.allow_host)
    except ValueError as exc:
        raise OpdwatchError(f"--host/--allow-host: {exc}") from None
    try:
        from opdwatch.dashboards.app import serve
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in ("dash", "flask", "plotly"):
            raise OpdwatchError("the dashboard needs dash: pip install 'opdwatch[dash]'") from None
        raise
    if not is_loopback(args.host):
        # The dashboard has no login: whoever reaches the port reads every run's texts.
        print(f"opdwatch dashboard: warning: --host {args.host} is not a loopback address: the runs' texts "
              "(prompts, rollouts) and metrics become readable from the network, without a login",
              file=sys.stderr)
    print(f"opdwatch dashboard: serving {root} on http://{args.host}:{args.port}/ (Ctrl+C stops)")
    serve(Path(root), host=args.host, port=args.port, debug=args.debug, allow_hosts=args.allow_host)
    return 0

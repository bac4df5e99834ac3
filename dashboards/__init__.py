"""The opdwatch dashboard (a Dash app): ``opdwatch dashboard RUNS_ROOT``.

Importing this package imports nothing heavy; ``dashboards.app`` imports dash (install ``opdwatch[dash]``).
"""

"""Follow a run while it is being written, reading only what is new (the dashboard's data layer).

    from opdwatch.live import LiveRun
    live = LiveRun("runs/exp1")
    live.tick(); live.series(); live.step_rollouts(40)

One module per job: :mod:`~opdwatch.live.incremental` lists the table files that can have changed,
:mod:`~opdwatch.live.tail` follows the events files, :mod:`~opdwatch.live.splice` recomputes the changed
steps' series rows over a :class:`RunView` and splices them in, :mod:`~opdwatch.live.run` is the
:class:`LiveRun` that ties them together. Path safety for names that come from a URL is the web
boundary's (:mod:`opdwatch.web_paths`).
"""

from __future__ import annotations

from opdwatch.live.incremental import RESCAN_BACK
from opdwatch.live.run import ROLLOUT_ORDERS, LiveRun, TickResult, order_rollouts
from opdwatch.live.splice import RunView

# Compatibility: the web-path checks lived here before they moved to the web boundary; new code imports
# them from opdwatch.web_paths.
from opdwatch.web_paths import check_runs_root, list_runs, resolve_run

__all__ = ["RESCAN_BACK", "ROLLOUT_ORDERS", "LiveRun", "RunView", "TickResult", "check_runs_root", "list_runs",
           "order_rollouts", "resolve_run"]

"""Alerts a person acts on, sent without ever hurting the run (docs/alerts.md).

* settings: ``watch.alerts`` (console, webhook, Slack, e-mail; secrets from environment variables only);
* :mod:`~opdwatch.alerts.recommend`: the alert from the evidence, quoting docs/playbook.md;
* :mod:`~opdwatch.alerts.dispatch`: rate limits, a bounded queue and a daemon thread;
* :mod:`~opdwatch.alerts.boundary`: exceptions of the recorder, detector, policy or a channel become ``error``
  events, and training continues.

The only package of opdwatch that imports network libraries (tests/test_network_imports.py). Names are
imported on first use, so ``opdwatch.detector.settings`` can use the settings without a cycle.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "AlertsConfig": "settings", "ConsoleSettings": "settings", "EmailSettings": "settings",
    "SlackSettings": "settings", "WebhookSettings": "settings", "Boundary": "boundary",
    "AlertMessage": "message", "AlertContext": "recommend", "build_alert": "recommend",
    "Dispatcher": "dispatch", "Outcome": "dispatch", "build_channels": "channels", "DeliveryError": "channels",
    "playbook": "playbook", "WandbSink": "wandb_sink",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'opdwatch.alerts' has no attribute {name!r}")
    return getattr(importlib.import_module(f"opdwatch.alerts.{_WHERE[name]}"), name)

"""Alert channels and the table that builds them from ``watch.alerts``.

    channels, secrets = build_channels(AlertsConfig(slack=SlackSettings(enabled=True)))
    channels[0].send(msg, timeout=5.0)      # -> "HTTP 200" or raises DeliveryError("HTTP 500 ...")

A channel has a ``name``, a ``min_level`` and ``send(msg, timeout)``, which returns a short note of what the
other side said, raises :class:`DeliveryError` when the other side refused or could not be reached, and
anything else is a bug (the dispatcher records both: a failed delivery, and for a bug also an ``error``
event). Secrets (URLs, passwords) are read from the environment here, once, and returned so that anything
recorded can be scrubbed of them; they are never part of a config.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Protocol

from opdwatch.alerts.message import AlertMessage
from opdwatch.alerts.settings import AlertsConfig
from opdwatch.errors import OpdwatchError


class DeliveryError(Exception):
    """The channel's other side refused the alert or could not be reached (the reason, without secrets)."""


class Channel(Protocol):
    name: str
    min_level: str

    def send(self, msg: AlertMessage, timeout: float) -> str: ...


def secret_from_env(var: str, what: str) -> str:
    """The value of environment variable ``var``, or a one-line OpdwatchError saying which one to set."""
    value = os.environ.get(var, "").strip()
    if not value:
        raise OpdwatchError(f"{what}: environment variable {var} is not set (it holds the secret, which a config "
                            "never does)")
    return value


def _console(config: AlertsConfig) -> tuple[Any, tuple[str, ...]]:
    from opdwatch.alerts.console import ConsoleChannel

    return ConsoleChannel(min_level=config.console.min_level), ()


def _webhook(config: AlertsConfig) -> tuple[Any, tuple[str, ...]]:
    from opdwatch.alerts.webhooks import WebhookChannel

    s = config.webhook
    url = secret_from_env(s.url_env, "watch.alerts.webhook")
    return WebhookChannel(url, body=s.body, min_level=s.min_level, url_env=s.url_env), (url,)


def _slack(config: AlertsConfig) -> tuple[Any, tuple[str, ...]]:
    from opdwatch.alerts.webhooks import SlackChannel

    s = config.slack
    url = secret_from_env(s.url_env, "watch.alerts.slack")
    return SlackChannel(url, min_level=s.min_level, url_env=s.url_env), (url,)


def _email(config: AlertsConfig) -> tuple[Any, tuple[str, ...]]:
    from opdwatch.alerts.smtp import EmailChannel

    s = config.email
    user = secret_from_env(s.username_env, "watch.alerts.email") if s.username_env else ""
    password = secret_from_env(s.password_env, "watch.alerts.email") if s.password_env else ""
    return EmailChannel(s, user=user, password=password), tuple(x for x in (password,) if x)


# channel name -> (is it enabled?, builder); a builder returns the channel and the secrets it read
CHANNELS: dict[str, tuple[Callable[[AlertsConfig], bool], Callable[[AlertsConfig], tuple[Any, tuple[str, ...]]]]] = {
    "console": (lambda c: c.console.enabled, _console),
    "webhook": (lambda c: c.webhook.enabled, _webhook),
    "slack": (lambda c: c.slack.enabled, _slack),
    "email": (lambda c: c.email.enabled, _email),
}


def build_channels(config: AlertsConfig) -> tuple[list[Any], tuple[str, ...]]:
    """The enabled channels and the secrets they hold (for scrubbing); a missing secret is a one-line
    OpdwatchError naming its variable."""
    channels, secrets = [], []
    for enabled, build in CHANNELS.values():
        if enabled(config):
            channel, found = build(config)
            channels.append(channel)
            secrets += found
    return channels, tuple(secrets)

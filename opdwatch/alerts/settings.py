"""Settings of the alert channels: the ``watch.alerts`` section of a watch config (opdwatch.config_tree).

Secrets never appear here: a channel names the *environment variable* that holds its URL or password
(``url_env: SLACK_WEBHOOK_URL``), so a config, and the run manifest it is copied into, carries only that
name. Torch-free and free of network imports (the channels import those when they are built).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from opdwatch.errors import OpdwatchError

LEVELS = ("WARN", "ERROR")  # alert levels, lowest first (warning -> WARN, alarm -> ERROR)
# The fields of an alert a webhook body template may use as $name (opdwatch.alerts.message.AlertMessage)
TEMPLATE_FIELDS = ("run", "step", "level", "state", "title", "summary", "signal", "family", "recommendation",
                   "acted", "dashboard", "text", "evidence", "worst_rollouts", "actions")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PLACEHOLDER = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?")


def _check_env(name: str, value: str, *, required: bool) -> None:
    if (value or required) and not _ENV_NAME.match(value):
        raise OpdwatchError(f"{name}={value!r}: must be the name of an environment variable (e.g. SLACK_WEBHOOK_URL),"
                            " never the secret itself")


def _check_level(level: str) -> None:
    if level not in LEVELS:
        raise OpdwatchError(f"min_level must be one of {LEVELS}, got {level!r}")


@dataclass(frozen=True)
class ConsoleSettings:
    # A rich panel on stderr for every alert (no network)
    enabled: bool = False  # print each alert to stderr
    min_level: str = "WARN"  # lowest level sent here: WARN (warnings and alarms) or ERROR (alarms only)

    def validate(self) -> None:
        _check_level(self.min_level)


@dataclass(frozen=True)
class WebhookSettings:
    # A generic webhook: POST of a JSON body to the URL held by the environment variable `url_env`
    enabled: bool = False  # send each alert to the webhook
    url_env: str = "OPDWATCH_WEBHOOK_URL"  # environment variable holding the URL (the URL is never stored)
    # JSON template of the body; string values may hold $field placeholders (opdwatch.alerts.settings
    # TEMPLATE_FIELDS), a value that is exactly "$evidence" (or another structured field) becomes that structure.
    # "" = the whole alert as one JSON object.
    body: str = ""
    min_level: str = "WARN"  # lowest level sent here

    def validate(self) -> None:
        _check_env("url_env", self.url_env, required=True)
        _check_level(self.min_level)
        if self.body:
            check_template(self.body)


@dataclass(frozen=True)
class SlackSettings:
    # A Slack incoming webhook (https://api.slack.com/messaging/webhooks)
    enabled: bool = False  # send each alert to Slack
    url_env: str = "SLACK_WEBHOOK_URL"  # environment variable holding the incoming-webhook URL
    min_level: str = "WARN"  # lowest level sent here

    def validate(self) -> None:
        _check_env("url_env", self.url_env, required=True)
        _check_level(self.min_level)


@dataclass(frozen=True)
class EmailSettings:
    # E-mail over SMTP
    enabled: bool = False  # send each alert by e-mail
    host: str = "localhost"  # SMTP server
    port: int = 25  # SMTP port (587 with starttls, 465 with ssl)
    sender: str = "opdwatch@localhost"  # From:
    to: str = ""  # comma-separated recipients
    starttls: bool = False  # upgrade the connection with STARTTLS before logging in
    ssl: bool = False  # connect with SSL from the start (SMTPS)
    username_env: str = ""  # environment variable holding the SMTP user ("" = no login)
    password_env: str = ""  # environment variable holding the SMTP password
    min_level: str = "ERROR"  # lowest level sent here (mail only on alarms by default)

    @property
    def recipients(self) -> tuple[str, ...]:
        return tuple(a.strip() for a in self.to.split(",") if a.strip())

    def validate(self) -> None:
        if self.enabled and not self.recipients:
            raise OpdwatchError("to: give at least one recipient address")
        if not 0 < self.port < 65536:
            raise OpdwatchError(f"port={self.port}: must be in 1..65535")
        _check_env("username_env", self.username_env, required=False)
        _check_env("password_env", self.password_env, required=False)
        _check_level(self.min_level)


@dataclass(frozen=True)
class AlertsConfig:
    # Where alerts go besides the run's event log (always written) and wandb (watch.wandb)
    console: ConsoleSettings = field(default_factory=ConsoleSettings)  # rich panel on stderr
    webhook: WebhookSettings = field(default_factory=WebhookSettings)  # any JSON webhook
    slack: SlackSettings = field(default_factory=SlackSettings)  # Slack incoming webhook
    email: EmailSettings = field(default_factory=EmailSettings)  # SMTP
    # Delivery: a daemon thread works off a bounded queue, so training never waits on a channel
    timeout_seconds: float = 5.0  # per delivery (connect + reply); also the most close() waits for the queue
    queue_size: int = 32  # deliveries waiting at most; when full the oldest is dropped (and counted)
    min_steps: int = 10  # rate limit: at most one alert per channel and level per this many steps
    worst_rollouts: int = 3  # rollouts named in an alert (the worst at its step by the signal that fired)
    dashboard_url: str = ""  # base URL of `opdwatch dashboard` to link (e.g. http://127.0.0.1:8050); "" = no link

    def validate(self) -> None:
        if not self.timeout_seconds > 0 or self.queue_size < 1 or self.min_steps < 0 or self.worst_rollouts < 0:
            raise OpdwatchError("timeout_seconds, queue_size, min_steps, worst_rollouts: need timeout_seconds > 0, "
                                "queue_size >= 1, min_steps >= 0, worst_rollouts >= 0")

    @property
    def any_enabled(self) -> bool:
        return any(s.enabled for s in (self.console, self.webhook, self.slack, self.email))


def check_template(body: str) -> dict:
    """The parsed webhook body template, or a one-line OpdwatchError (not JSON, not an object, unknown field)."""
    try:
        tree = json.loads(body)
    except ValueError as exc:
        raise OpdwatchError(f"body: not valid JSON ({exc})") from None
    if not isinstance(tree, dict):
        raise OpdwatchError("body: the template must be a JSON object")
    unknown = sorted({name for text in _strings(tree) for name in _PLACEHOLDER.findall(text)}
                     - set(TEMPLATE_FIELDS))
    if unknown:
        raise OpdwatchError(f"body: unknown placeholder(s) {', '.join('$' + u for u in unknown)} "
                            f"(known: {', '.join(TEMPLATE_FIELDS)})")
    return tree


def _strings(node: object) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return []

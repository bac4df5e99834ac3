"""HTTP channels: a generic JSON webhook and a Slack incoming webhook (urllib from the standard library).

Both POST JSON with a bounded timeout. Failures become a :class:`~opdwatch.alerts.channels.DeliveryError`
whose message never holds the URL (it is a secret: Slack's URL is its token): "HTTP 500 Internal Server
Error", "cannot connect: [Errno 111] Connection refused", "timed out after 2s".
"""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any

from opdwatch.alerts.channels import DeliveryError
from opdwatch.alerts.message import AlertMessage, describe_rollout
from opdwatch.alerts.template import jsonable, render_body

_REPLY_BYTES = 2048  # of a reply we read at most this much (the status is what counts)
_SLACK_TEXT = 2900  # Slack's section text limit is 3000 characters


def post_json(url: str, body: bytes, timeout: float, *, url_env: str) -> str:
    """POST ``body``; returns "HTTP <status>" or raises DeliveryError without the URL in it."""
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json", "User-Agent": "opdwatch-alerts"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            reply.read(_REPLY_BYTES)
            return f"HTTP {reply.status}"
    except urllib.error.HTTPError as exc:
        raise DeliveryError(f"HTTP {exc.code} {exc.reason} from ${url_env}") from None
    except TimeoutError:
        raise DeliveryError(f"timed out after {timeout:g}s waiting for ${url_env}") from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, TimeoutError):
            raise DeliveryError(f"timed out after {timeout:g}s waiting for ${url_env}") from None
        raise DeliveryError(f"cannot connect to ${url_env}: {reason}".replace(url, "<url>")) from None
    except (OSError, ValueError) as exc:  # a reset connection, a malformed URL (without echoing it)
        raise DeliveryError(f"{type(exc).__name__} talking to ${url_env}: {exc}".replace(url, "<url>")) from None


class WebhookChannel:
    name = "webhook"

    def __init__(self, url: str, *, body: str = "", min_level: str = "WARN", url_env: str = "") -> None:
        self._url, self._body, self.min_level, self._env = url, body, min_level, url_env

    def send(self, msg: AlertMessage, timeout: float) -> str:
        return post_json(self._url, render_body(self._body, msg.as_dict()), timeout, url_env=self._env)


class SlackChannel:
    name = "slack"

    def __init__(self, url: str, *, min_level: str = "WARN", url_env: str = "") -> None:
        self._url, self.min_level, self._env = url, min_level, url_env

    def send(self, msg: AlertMessage, timeout: float) -> str:
        return post_json(self._url, render_body("", slack_payload(msg)), timeout, url_env=self._env)


def slack_payload(msg: AlertMessage) -> dict[str, Any]:
    """Slack Block Kit message of the alert; ``text`` is the notification fallback."""
    def section(text: str) -> dict[str, Any]:
        return {"type": "section", "text": {"type": "mrkdwn", "text": _escape(text)[:_SLACK_TEXT]}}

    icon = ":red_circle:" if msg.level == "ERROR" else ":warning:"
    blocks = [
        {"type": "header", "text": {"type": "plain_text", "text": msg.title[:150]}},
        section(f"*What fired:* {msg.summary}"),
        section(f"*What the watch did:* {msg.acted}"),
        section(f"*What to do ({msg.family} playbook):* {msg.recommendation}"),
    ]
    if msg.actions:
        blocks.append(section("*In this run:*\n" + "\n".join(f"• {a}" for a in msg.actions)))
    worst = "".join(f"\n• {describe_rollout(r)}" for r in msg.worst_rollouts)
    blocks.append(section(f"*Where to look:* {msg.dashboard}{worst}"))
    return jsonable({"text": f"{icon} {msg.title}: {msg.summary}"[:_SLACK_TEXT], "blocks": blocks})


def _escape(text: str) -> str:
    # Slack mrkdwn's three control characters (model text may hold them)
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

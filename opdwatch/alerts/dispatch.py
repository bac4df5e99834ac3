"""Delivery without blocking the run: rate limits at submission, a bounded queue, one daemon thread.

    d = Dispatcher(channels, timeout=5.0, queue_size=32, min_steps=10)
    d.submit(msg)            # training thread: rate-limit per channel and level, enqueue; never waits
    for o in d.drain(): ...  # outcomes since the last drain (delivered / failed / suppressed / dropped)
    d.close()                # waits at most `timeout` seconds in total for what is queued, then gives up

* **Rate limit** (as the wandb sink's): at most one alert per channel and level every ``min_steps`` steps.
  Alerts only come on escalation (warning -> WARN, alarm -> ERROR), and the limit is per level, so an alarm
  is never held back by the warning before it. A channel's ``min_level`` routes: e-mail only alarms, say.
* **Queue**: at most ``queue_size`` deliveries wait per channel; a new one pushes out the oldest, which is reported as
  ``dropped`` with the running count.
* **Threads**: one daemon thread per channel, started with its first delivery, sends one at a time with
  ``timeout`` per delivery (a hanging webhook never delays the e-mail); the training thread only appends.
  Outcomes are collected for the caller to record (the run's event log has one writer, the training thread).
* **Close**: waits at most ``timeout`` seconds in total, and starts no new attempt on a channel whose last
  delivery failed; what is left is reported as failed.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from opdwatch.alerts.channels import DeliveryError
from opdwatch.alerts.message import AlertMessage
from opdwatch.alerts.settings import LEVELS


@dataclass(frozen=True)
class Outcome:
    step: int           # the alert's step
    channel: str        # console | webhook | slack | email | wandb
    level: str          # WARN | ERROR
    title: str          # the alert's title
    status: str         # delivered | failed | suppressed | dropped
    why: str            # the other side's reply, the failure, the rate limit or the drop count
    seconds: float = 0.0    # time the delivery took (0 when it was not attempted)
    traceback: str = ""     # a channel's unexpected exception (also recorded as an error event)


class Dispatcher:
    def __init__(self, channels: Sequence[Any], *, timeout: float, queue_size: int, min_steps: int,
                 scrub: tuple[str, ...] = ()) -> None:
        self.channels = list(channels)
        self.timeout, self.queue_size, self.min_steps = float(timeout), int(queue_size), int(min_steps)
        self.scrub = tuple(s for s in scrub if s)
        self.last: dict[str, int] = {}  # "channel/level" -> step of the last alert sent there (the rate limit)
        self.dropped = 0
        # One lane per channel (its queue, its daemon thread), so a hanging webhook never delays the e-mail.
        self._queues: dict[str, deque[AlertMessage]] = {c.name: deque() for c in self.channels}
        self._inflight: dict[str, AlertMessage] = {}  # channel -> the alert being sent
        self._failing: dict[str, str] = {}  # channel -> why its last delivery failed (not retried at close)
        self._threads: dict[str, threading.Thread] = {}
        self._outcomes: list[Outcome] = []
        self._cond = threading.Condition()
        self._closing = False

    # --------------------------------------------------------------------------- training thread
    def submit(self, msg: AlertMessage) -> None:
        """Queue ``msg`` for every channel whose level and rate limit let it through."""
        for channel in self.channels:
            if LEVELS.index(msg.level) < LEVELS.index(channel.min_level):
                continue  # routed elsewhere: not this channel's business
            key = f"{channel.name}/{msg.level}"
            last = self.last.get(key)
            if last is not None and msg.step - last < self.min_steps:
                self._note(Outcome(msg.step, channel.name, msg.level, msg.title, "suppressed",
                                   f"rate limit: the last {msg.level} alert to {channel.name} was at step {last}, "
                                   f"at most one per {self.min_steps} steps"))
                continue
            self.last[key] = msg.step
            self._enqueue(msg, channel)

    def drain(self) -> list[Outcome]:
        with self._cond:
            out, self._outcomes = self._outcomes, []
        return out

    def close(self) -> list[Outcome]:
        """Wait at most ``timeout`` seconds in total for the queues; what is left is reported as failed. A
        channel whose last delivery failed gets no new attempt, so a hanging endpoint costs the wait for the
        delivery already in flight only: less than ``timeout``, since it started before close."""
        deadline = time.monotonic() + self.timeout
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            while self._pending() and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)
            waited = self.timeout - max(0.0, deadline - time.monotonic())
            for name, queue in self._queues.items():
                for msg in queue:
                    self._outcomes.append(Outcome(msg.step, name, msg.level, msg.title, "failed",
                                                  f"not delivered: still queued when the watch closed ({waited:.1f}s)"))
                queue.clear()
            for name, msg in self._inflight.items():
                self._outcomes.append(Outcome(msg.step, name, msg.level, msg.title, "failed",
                                              f"still in flight when the watch closed after {waited:.1f}s (left to "
                                              "its daemon thread)"))
            self._inflight = {}
        return self.drain()

    def state_dict(self) -> dict[str, Any]:
        return {"last": dict(self.last), "dropped": self.dropped}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.last = {str(k): int(v) for k, v in state.get("last", {}).items()}
        self.dropped = int(state.get("dropped", 0))

    def _pending(self) -> bool:
        return bool(self._inflight) or any(self._queues.values())

    def _note(self, outcome: Outcome) -> None:
        with self._cond:
            self._outcomes.append(outcome)

    def _enqueue(self, msg: AlertMessage, channel: Any) -> None:
        with self._cond:
            queue = self._queues[channel.name]
            if len(queue) >= self.queue_size:
                old = queue.popleft()
                self.dropped += 1
                self._outcomes.append(Outcome(old.step, channel.name, old.level, old.title, "dropped",
                                              f"queue full ({self.queue_size}): dropped the oldest delivery, "
                                              f"{self.dropped} dropped so far"))
            queue.append(msg)
            self._cond.notify_all()
            if channel.name not in self._threads and not self._closing:
                thread = threading.Thread(target=self._work, args=(channel,), name=f"opdwatch-alerts-{channel.name}",
                                          daemon=True)
                self._threads[channel.name] = thread
                thread.start()

    # ----------------------------------------------------------------------------- worker threads
    def _work(self, channel: Any) -> None:
        queue = self._queues[channel.name]
        while True:
            with self._cond:
                while not queue and not self._closing:
                    self._cond.wait()
                if not queue:
                    return
                msg = queue.popleft()
                if self._closing and channel.name in self._failing:
                    # it would most likely fail again, and the training loop is waiting for close()
                    self._outcomes.append(Outcome(msg.step, channel.name, msg.level, msg.title, "failed",
                                                  f"not attempted: the watch was closing and {channel.name}'s "
                                                  f"last delivery had failed ({self._failing[channel.name]})"))
                    self._cond.notify_all()
                    continue
                self._inflight[channel.name] = msg
            outcome = self._deliver(msg, channel)
            with self._cond:
                if self._inflight.pop(channel.name, None) is None:
                    return  # close() gave up on it and reported it already
                self._outcomes.append(outcome)
                if outcome.status == "failed":
                    self._failing[channel.name] = outcome.why
                else:
                    self._failing.pop(channel.name, None)
                self._cond.notify_all()

    def _deliver(self, msg: AlertMessage, channel: Any) -> Outcome:
        t0 = time.perf_counter()
        status, tb = "delivered", ""
        try:
            why = channel.send(msg, self.timeout)
        except DeliveryError as exc:
            status, why = "failed", str(exc)
        except Exception as exc:  # a bug in a channel: the run goes on, the error is recorded with its traceback
            status, why = "failed", f"{type(exc).__name__}: {exc}"
            tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        return Outcome(msg.step, channel.name, msg.level, msg.title, status, self._clean(why),
                       time.perf_counter() - t0, self._clean(tb))

    def _clean(self, text: str) -> str:
        for secret in self.scrub:
            text = text.replace(secret, "<redacted>")
        return text

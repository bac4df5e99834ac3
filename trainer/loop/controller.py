"""The trainer's beta/alpha holder: the same class as a foreign loop's (opdwatch/detector/knobs.py, torch-free).

The loop reads `controller.beta` / `controller.alpha` at every step, so a change applies from the next step on.
The trainer's controller has no recorder: its events (changes by the watch or a step hook, restores) wait in
`drain()` until the loop writes them on rank 0, after the distributed sync (trainer/loop/loop.py).
"""

from opdwatch.detector.knobs import ControlEvent, Controller, record_events

__all__ = ["ControlEvent", "Controller", "record_events"]

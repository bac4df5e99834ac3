"""Early warning for OPD truncation collapse: an online detector, an intervention policy, alert sinks and a
replay of recorded runs. Torch-free; wandb is imported only when its sink is used. See docs/detector.md."""

from opdwatch.detector.alerts import Alert, LocalSink, WandbSink, alert_for
from opdwatch.detector.cusum import Cusum, PageHinkley, cusum_update, page_hinkley_update
from opdwatch.detector.detector import Detector, DetectorState, Evidence
from opdwatch.detector.knobs import ControlEvent, Controller, record_events
from opdwatch.detector.policy import Decision, InterventionPolicy
from opdwatch.detector.replay import Replay, collapse_step, replay, replay_rows
from opdwatch.detector.settings import DetectorSettings, PolicySettings, WandbSettings, WatchConfig
from opdwatch.detector.signals import DEFAULT_SIGNALS, SIGNALS, SignalSpec
from opdwatch.detector.watcher import Watcher

__all__ = [
    "DEFAULT_SIGNALS", "SIGNALS", "Alert", "ControlEvent", "Controller", "Cusum", "Decision", "Detector",
    "DetectorSettings", "DetectorState", "Evidence", "InterventionPolicy", "LocalSink", "PageHinkley",
    "PolicySettings", "Replay", "SignalSpec", "WandbSettings", "WandbSink", "WatchConfig", "Watcher", "alert_for",
    "collapse_step", "cusum_update", "page_hinkley_update", "record_events", "replay", "replay_rows",
]

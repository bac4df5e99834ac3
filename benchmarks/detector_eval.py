"""How early does the detector warn, and how often does it cry wolf? Compared with simple baselines.

    python benchmarks/detector_eval.py                 # simulated + synthetic-recorder + cached real runs
    python benchmarks/detector_eval.py --generate-real # first train the real tiny OPD runs (needs trainer/)
    python benchmarks/detector_eval.py --json out.json

Corpus (each run is a sequence of train-step metric dicts, exactly what the trainer feeds the detector):
  sim-fast / sim-slow   simulated traces with the CPU study's shapes (opdwatch.detector.simulate): abrupt
                        collapses 10-30 steps in (lr 3e-3 like) and late ones after 150-300 quiet steps
                        (lr 1e-3 like), precursors leading by 6-8 (rep. share) and 4-5 (EOS adv.) steps
  sim-stress            collapses with no precursor at all (only the outcome moves): a stress case
  sim-stable            noise, benign drift, one-step truncation spikes that recover
  recorder-*            run directories written by the Recorder from synthetic token streams
  real-*                tiny OPD runs from the trainer, cached in benchmarks/.corpus/real/ (--generate-real)
The collapse step of a run is the first step with rollout truncation rate >= 0.5; a run without one is stable.

Detectors: ours (opdwatch.detector, warning and alarm levels) and baselines implemented here from their
documented rules, all on the raw truncation rate: a fixed threshold; Lightning's SpikeDetection (running
mean over `window` values, spike when the value is not an improvement on the last one and differs from the
mean by >= atol and >= rtol * mean; Lightning stops training at the first spike); river's PageHinkley
(opdwatch.detector.cusum.page_hinkley_update reproduces river's update; its docstring example is a test).

Scoring. A "fire" is a detector going from quiet to firing (for ours: ok -> warning/alarm). On a collapsing
run the lead time is collapse step minus the start of the last fire at or before the collapse, if it started
within HORIZON steps of it; fires earlier than that are false alarms. A run "collapses inside the warm-up"
when its collapse step is within our detector's warm-up; such runs are listed, not scored. False alarms are
counted on runs set up to be stable (Stable-OPD, stable simulations) that never reach 0.5; a run set up to
collapse (plain OPD) that had not collapsed when it ended is "censored": its fires are listed separately
("censored fires"), since they may be early warnings of a collapse beyond the recorded steps.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from opdwatch.detector.cusum import PageHinkley, page_hinkley_update
from opdwatch.detector.detector import Detector
from opdwatch.detector.replay import collapse_step, train_rows
from opdwatch.detector.settings import DetectorSettings
from opdwatch.detector.signals import SIGNALS, signal_values
from opdwatch.detector.simulate import random_collapse, random_stable, simulate
from opdwatch.detector.synthetic_run import write_synthetic_run
from opdwatch.metric_defs import TRUNCATION_RATE
from opdwatch.reader import open_run

CORPUS = Path(__file__).parent / ".corpus"
HORIZON = 30          # a fire more than this many steps before the collapse is a false alarm, not a warning
LEAD_TARGET = 5       # steps of warning the issue asks for
Rows = list[tuple[int, dict[str, float]]]


@dataclass
class Item:
    name: str
    group: str
    rows: Rows
    designed: str = "collapse"   # what the run was set up to do: "collapse" (plain OPD) or "stable"
    collapse: int | None = field(init=False)

    def __post_init__(self) -> None:
        self.collapse = collapse_step(self.rows)


# ----------------------------------------------------------------------------------------------- detectors
def ours(level: str, settings: DetectorSettings | None = None) -> Callable[[Rows], list[int]]:
    wanted = ("warning", "alarm") if level == "warning" else ("alarm",)

    def fires(rows: Rows) -> list[int]:
        det, out, active = Detector(settings or DetectorSettings()), [], False
        for step, m in rows:
            now = det.update(step, m).level in wanted
            if now and not active:
                out.append(step)
            active = now
        return out
    return fires


def _trunc(rows: Rows) -> Iterable[tuple[int, float]]:
    for step, m in rows:
        v = m.get(TRUNCATION_RATE, math.nan)
        if math.isfinite(v):
            yield step, v


def fixed_threshold(threshold: float) -> Callable[[Rows], list[int]]:
    def fires(rows: Rows) -> list[int]:
        out, active = [], False
        for step, v in _trunc(rows):
            now = v >= threshold
            if now and not active:
                out.append(step)
            active = now
        return out
    return fires


def lightning_spike(window: int = 10, warmup: int = 1, atol: float | None = None,
                    rtol: float | None = 2.0) -> Callable[[Rows], list[int]]:
    """Lightning's SpikeDetection(mode="min"): it raises at the first spike (training stops), so there is at
    most one fire per run; we keep scanning after it (as if the user resumed skipping the batch) so that false
    alarms per step are comparable, counting every spike."""
    def fires(rows: Rows) -> list[int]:
        out, history, last = [], [], 0.0
        for i, (step, v) in enumerate(_trunc(rows)):
            spike = False
            if i >= warmup and history:
                mean = sum(history[-window:]) / len(history[-window:])
                worse = v - last > 0.0  # mode "min": an increase is not an improvement
                spike = worse and (atol is None or abs(v - mean) >= abs(atol)) \
                    and (rtol is None or abs(v - mean) >= abs(rtol * mean))
            if spike:
                out.append(step)  # Lightning does not add a spike to its running mean
            else:
                history.append(v)
                last = v
        return out
    return fires


def page_hinkley(**kw: float) -> Callable[[Rows], list[int]]:
    def fires(rows: Rows) -> list[int]:
        out, state = [], PageHinkley()
        for step, v in _trunc(rows):
            state = page_hinkley_update(state, v, mode="up", **kw)
            if state.drift:
                out.append(step)
        return out
    return fires


# ----------------------------------------------------------------------------------------------- scoring
@dataclass
class Score:
    evaluated: int = 0
    early: int = 0                 # warned >= LEAD_TARGET steps ahead
    leads: list[int] = field(default_factory=list)
    missed: list[str] = field(default_factory=list)     # no warning within HORIZON before the collapse
    late: list[str] = field(default_factory=list)       # warned, but < LEAD_TARGET steps ahead
    stable_fires: int = 0
    stable_steps: int = 0
    pre_fires: int = 0             # false alarms on collapsing runs (more than HORIZON before the collapse)
    pre_steps: int = 0
    censored_fires: int = 0        # runs set up to collapse that had not collapsed when they ended
    censored_steps: int = 0

    def row(self) -> dict[str, object]:
        return {"evaluated": self.evaluated, "early": self.early,
                "median_lead": statistics.median(self.leads) if self.leads else None,
                "min_lead": min(self.leads) if self.leads else None, "missed": len(self.missed),
                "stable_steps": self.stable_steps, "stable_fires": self.stable_fires,
                "fa_per_1k_stable": 1000 * self.stable_fires / self.stable_steps if self.stable_steps else None,
                "fa_per_1k_pre": 1000 * self.pre_fires / self.pre_steps if self.pre_steps else None,
                "censored_steps": self.censored_steps, "censored_fires": self.censored_fires}

    def line(self, name: str) -> str:
        r = self.row()
        early = f"{self.early}/{self.evaluated}" if self.evaluated else "-"
        return (f"{name:46s} {early:>10s} {_f(r['median_lead']):>8s} {_f(r['min_lead']):>4s} "
                f"{len(self.missed) if self.evaluated else '-':>6} {_f(r['fa_per_1k_stable'], 2):>12s} "
                f"{_f(r['fa_per_1k_pre'], 2):>9s} {self._censored():>14s}")

    def _censored(self) -> str:
        return f"{self.censored_fires} in {self.censored_steps}" if self.censored_steps else "-"


def score(items: list[Item], fires_of: Callable[[Rows], list[int]], warmup: int) -> Score:
    s = Score()
    for it in items:
        fires = fires_of(it.rows)
        if it.collapse is None and it.designed == "stable":
            s.stable_fires += len(fires)
            s.stable_steps += len(it.rows)
            continue
        if it.collapse is None:
            s.censored_fires += len(fires)
            s.censored_steps += len(it.rows)
            continue
        first = it.rows[0][0]
        if it.collapse <= first + warmup - 1:
            continue  # collapsed inside the warm-up: reported separately
        s.evaluated += 1
        s.pre_steps += sum(1 for step, _ in it.rows if step < it.collapse - HORIZON)
        s.pre_fires += sum(1 for f in fires if f < it.collapse - HORIZON)
        before = [f for f in fires if f <= it.collapse]
        if not before or before[-1] < it.collapse - HORIZON:
            s.missed.append(it.name)
            continue
        lead = it.collapse - before[-1]
        s.leads.append(lead)
        if lead >= LEAD_TARGET:
            s.early += 1
        else:
            s.late.append(f"{it.name}(lead {lead})")
    return s


def oracle_leads(items: list[Item], warmup: int) -> list[tuple[Item, int | None, str]]:
    """An upper bound no detector on these signals can beat without false alarms: for every signal, a threshold
    fitted *in hindsight* just beyond the range it took on the stable runs of `items` (after the warm-up); a
    collapsing run's oracle lead is its collapse step minus the first step any signal crossed its threshold.
    Returns (run, lead or None, signal) for every collapsing run after the warm-up."""
    names = list(SIGNALS)
    values = {it.name: [(step, signal_values(m, names)) for step, m in it.rows] for it in items}
    hi, lo = {}, {}
    for n in names:
        xs = [v[n] for it in items if it.designed == "stable" and it.collapse is None
              for step, v in values[it.name] if step > warmup and math.isfinite(v[n])]
        hi[n], lo[n] = (max(xs), min(xs)) if xs else (math.inf, -math.inf)
    out = []
    for it in items:
        if it.collapse is None or it.collapse <= it.rows[0][0] + warmup - 1:
            continue
        first: tuple[int, str] | None = None
        for step, v in values[it.name]:
            if step <= warmup or step > it.collapse:
                continue
            d = SIGNALS
            crossed = [n for n in names if math.isfinite(v[n]) and (
                (d[n].direction in ("up", "both") and v[n] > hi[n]) or (d[n].direction in ("down", "both")
                                                                          and v[n] < lo[n]))]
            if crossed:
                first = (step, crossed[0])
                break
        out.append((it, None if first is None else it.collapse - first[0], "" if first is None else first[1]))
    return out


# ----------------------------------------------------------------------------------------------- corpus
def simulated(n_fast: int, n_slow: int, n_stress: int, n_stable: int, seed: int = 0) -> list[Item]:
    rng = np.random.default_rng(seed)
    items = []
    for regime, n in (("fast", n_fast), ("slow", n_slow), ("stress", n_stress)):
        for i in range(n):
            items.append(Item(f"sim-{regime}-{i}", f"sim-{regime}",
                              simulate(random_collapse(rng, regime=regime, seed=seed * 10_000 + len(items)))))
    for i in range(n_stable):
        items.append(Item(f"sim-stable-{i}", "sim-stable",
                          simulate(random_stable(rng, seed=seed * 10_000 + 5000 + i)), designed="stable"))
    return items


def recorder_runs(root: Path) -> list[Item]:
    """Synthetic run directories written through the Recorder (cached: ~2 s each to write)."""
    specs = [("collapse-a", 60, 40, 1.0, 6), ("collapse-b", 80, 55, 2.5, 7), ("collapse-c", 120, 90, 4.0, 8),
             ("stable-a", 80, None, 1.0, 0), ("stable-b", 120, None, 1.0, 0), ("stable-c", 150, None, 1.0, 0)]
    items = []
    for i, (name, steps, onset, width, lead) in enumerate(specs):
        path = root / name
        if not (path / "manifest.json").exists():
            write_synthetic_run(path, steps=steps, onset=onset, width=width, precursor_lead=lead, seed=100 + i)
        kind = "stable" if onset is None else "collapse"
        items.append(Item(f"recorder-{name}", f"recorder-{kind}", run_rows(path), designed=kind))
    return items


def run_rows(path: Path) -> Rows:
    return train_rows(open_run(path))


def real_runs(root: Path) -> list[Item]:
    items = []
    for manifest in sorted(root.glob("*/manifest.json")):
        run = open_run(manifest.parent)
        if run.status != "finished":
            continue  # an interrupted generation: regenerate it
        group = manifest.parent.name.split("__")[0]
        designed = "stable" if group.startswith("stable") else "collapse"
        items.append(Item(f"real-{manifest.parent.name}", f"real-{group}", run_rows(manifest.parent), designed))
    return items


# Real tiny OPD runs: (group, preset, overrides). Groups are named by regime; seeds vary the trajectory.
REAL_RUNS = [
    *[("opd-fast", "demo_opd", [f"run.seed={s}", "opd.steps=50"]) for s in (0, 1, 2)],
    *[("opd-fast", "demo_opd", [f"run.seed={s}", "opd.steps=50", "opd.lr=2e-3"]) for s in (3,)],
    *[("opd-mid", "demo_opd", [f"run.seed={s}", "opd.steps=80", f"opd.lr={lr}"])
      for lr in ("1.2e-3", "1.5e-3") for s in (0, 1)],
    *[("stable-opd", "demo_stable_opd", [f"run.seed={s}", "opd.steps=80"]) for s in (0, 1, 2)],
    *[("opd-slow", "slow_onset_opd", [f"run.seed={s}", "opd.steps=320"]) for s in (0, 1)],
    *[("stable-slow", "slow_onset_opd", [f"run.seed={s}", "opd.steps=250", "opd.beta=0.1", "opd.alpha=0.5"])
      for s in (0,)],
]


def generate_real(root: Path, only: str | None = None) -> None:
    """Train the real corpus runs that are not cached yet (one at a time: the machine is shared)."""
    from rich.progress import Progress

    todo = [(g, p, o) for g, p, o in REAL_RUNS if only is None or g == only]
    with Progress() as progress:
        task = progress.add_task("real runs", total=len(todo))
        for group, preset, overrides in todo:
            name = f"{group}__{preset}__" + "_".join(o.replace("=", "-").replace("run.", "").replace("opd.", "")
                                                     for o in overrides)
            if (root / name / "manifest.json").exists() and open_run(root / name).status == "finished":
                progress.advance(task)
                continue
            # One thread: the machine is shared (the trajectory depends on the thread count; any is a real run).
            # the preset by name (trainer/recipes/demo/configs), so the command works from any directory
            cmd = [sys.executable, "-m", "opdwatch.cli", "train", preset,
                   f"run.output_dir={root}", f"run.name={name}", "run.progress=false", "run.threads=1",
                   "val.every=0", "checkpoint.every=0", *overrides]
            progress.console.print(f"[bold]{name}[/]: {' '.join(cmd[3:])}")
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, cwd=Path(__file__).parent.parent)
            progress.console.print(f"  done in {time.perf_counter() - t0:.0f} s")
            progress.advance(task)


# ----------------------------------------------------------------------------------------------- report
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--generate-real", action="store_true", help="train missing real runs first (slow)")
    ap.add_argument("--only", help="with --generate-real: only this group")
    ap.add_argument("--real-dir", type=Path, default=CORPUS / "real",
                    help="directory of real run directories named GROUP__... (default benchmarks/.corpus/real)")
    ap.add_argument("--sims", type=int, default=40, help="simulated runs per collapsing regime")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    if args.generate_real:
        generate_real(args.real_dir, args.only)

    settings = DetectorSettings()
    warmup = settings.warmup_steps
    items = simulated(args.sims, args.sims, args.sims // 2, 2 * args.sims)
    items += recorder_runs(CORPUS / "synthetic")
    items += real_runs(args.real_dir)

    detectors: dict[str, Callable[[Rows], list[int]]] = {
        "opdwatch detector (warning)": ours("warning", settings),
        "opdwatch detector (alarm)": ours("alarm", settings),
        "fixed threshold trunc>=0.1": fixed_threshold(0.1),
        "fixed threshold trunc>=0.2": fixed_threshold(0.2),
        "Lightning SpikeDetection (window 10, rtol 2)": lightning_spike(),
        "Lightning SpikeDetection (+atol 0.05)": lightning_spike(atol=0.05),
        "river PageHinkley (thr 0.5, min_inst 30)": page_hinkley(threshold=0.5),
        "river PageHinkley (thr 0.5, min_inst 5)": page_hinkley(threshold=0.5, min_instances=5),
    }
    groups = sorted({it.group for it in items})
    print(f"corpus: {len(items)} runs; groups: " + ", ".join(
        f"{g} {sum(it.group == g for it in items)} ({sum(it.group == g and it.collapse is not None for it in items)}"
        f" collapse)" for g in groups))
    inside = [it for it in items if it.collapse is not None and it.collapse <= it.rows[0][0] + warmup - 1]
    print(f"detector warm-up: {warmup} steps (first statistical verdict at step {warmup + 1}); "
          f"runs collapsing inside it: {', '.join(f'{it.name}@{it.collapse}' for it in inside) or 'none'}")
    tight = [it for it in items if it.collapse is not None and it not in inside
             and it.collapse < it.rows[0][0] + warmup + LEAD_TARGET]
    print(f"runs collapsing before step {warmup + LEAD_TARGET + 1} (a {LEAD_TARGET}-step lead would need a verdict "
          f"inside the warm-up; scored, and counted as late): {', '.join(f'{it.name}@{it.collapse}' for it in tight)}")
    print(f"lead time = collapse step (truncation >= 0.5) - start of the last fire within {HORIZON} steps before it;"
          f" target >= {LEAD_TARGET}")
    results: dict[str, dict[str, object]] = {}
    header = f"{'detector':46s} {'warned>=5':>10s} {'med lead':>8s} {'min':>4s} {'missed':>6s} " \
             f"{'FA/1k stable':>12s} {'FA/1k pre':>9s} {'censored fires':>14s}"
    print("\nALL RUNS\n" + header)
    for name, fn in detectors.items():
        s = score(items, fn, warmup)
        results[name] = {"all": s.row(), "late": s.late, "missed": s.missed}
        print(s.line(name))
    for group_prefix in ("sim-fast", "sim-slow", "sim-stress", "sim-stable", "recorder", "real"):
        subset = [it for it in items if it.group.startswith(group_prefix)]
        if not subset:
            continue
        stable_steps = sum(len(it.rows) for it in subset if it.collapse is None and it.designed == "stable")
        print(f"\n{group_prefix}: {len(subset)} runs, {sum(it.collapse is not None for it in subset)} collapsing, "
              f"{stable_steps} stable steps\n" + header)
        for name, fn in detectors.items():
            s = score(subset, fn, warmup)
            results[name][group_prefix] = s.row()
            print(s.line(name))
    ours_w = results["opdwatch detector (warning)"]
    print("\nopdwatch warning: late (<5 steps) runs: " + (", ".join(ours_w["late"]) or "none"))
    print("opdwatch warning: missed runs: " + (", ".join(ours_w["missed"]) or "none"))
    real = [it for it in items if it.group.startswith("real")]
    if real:
        print("\nreal runs (collapse step, our first warning / alarm):")
        for it in real:
            w, a = ours("warning", settings)(it.rows), ours("alarm", settings)(it.rows)
            print(f"  {it.name:70s} collapse {_f(it.collapse):>5s}  warning {w[:3]}  alarm {a[:3]}")
        bound = oracle_leads(real, warmup)
        print(f"\nreal runs, hindsight bound: thresholds fitted on the stable real runs' own range, any one signal "
              f"(a single-signal threshold that never fires on them cannot warn earlier); "
              f"{sum(lead is not None and lead >= LEAD_TARGET for _, lead, _ in bound)}/{len(bound)} "
              f"could be warned >= {LEAD_TARGET} steps ahead:")
        for it, lead, signal in bound:
            print(f"  {it.name:70s} collapse {_f(it.collapse):>5s}  oracle lead {_f(lead):>3s} ({signal or '-'})")
        results["oracle_real"] = {it.name: lead for it, lead, _ in bound}
    else:
        print("\nno real runs cached in benchmarks/.corpus/real (run with --generate-real once trainer/ works)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


def _f(v: object, digits: int | None = None) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}" if digits is not None else f"{v:g}"
    return str(v)


if __name__ == "__main__":
    sys.exit(main())
